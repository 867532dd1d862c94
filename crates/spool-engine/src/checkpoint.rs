//! Checkpoints: the whole in-memory state, written every `checkpoint_bytes` of log or
//! `checkpoint_interval` (and at a clean close), so that opening a store replays only the log
//! written since, whatever the backlog. A checkpoint is a shortcut, never a second source of
//! truth: it is exactly the state the log up to its position rebuilds, taken under the store
//! lock at a frame boundary, and written only once that log is durable.
//!
//! Payload (inside a `ckpt.0`/`ckpt.1` slot, see `ckpt.rs` and `docs/format.md`): version u32,
//! then the log position it covers (segment u64, offset u64, next LSN u64), then the state
//! (`State::encode`).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::ckpt::CkptWriter;
use crate::codec::{Dec, DecResult, Enc};
use crate::entry::{decode_entries_at, Entry};
use crate::error::{Error, Result};
use crate::frame::{check_frame, find_next_frame, segment_file_name, FrameCheck};
use crate::lanes::{index_entry, IndexStore};
use crate::recovery::DamagedRange;
use crate::state::{At, State};
use crate::vfs::{OpenMode, Vfs};
use crate::writer::Shared;

/// Version of the payload encoding.
const PAYLOAD_VERSION: u32 = 1;

/// The end of the log a checkpoint covers: replay resumes there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Covers {
    pub seg: u64,
    pub off: u64,
    pub next_lsn: u64,
}

pub(crate) fn encode(state: &State, covers: Covers) -> Vec<u8> {
    let mut e = Enc::default();
    e.u32(PAYLOAD_VERSION);
    e.u64(covers.seg);
    e.u64(covers.off);
    e.u64(covers.next_lsn);
    state.encode(&mut e);
    e.buf
}

pub(crate) fn decode(payload: &[u8], ix: IndexStore) -> DecResult<(Covers, State)> {
    let mut d = Dec::new(payload);
    let v = d.u32()?;
    if v != PAYLOAD_VERSION {
        return Err(format!("payload version {v} is not {PAYLOAD_VERSION}"));
    }
    let covers = Covers {
        seg: d.u64()?,
        off: d.u64()?,
        next_lsn: d.u64()?,
    };
    let state = State::decode(&mut d, ix)?;
    d.done()?;
    Ok((covers, state))
}

/// The checkpoint bookkeeping of an open store.
#[derive(Debug)]
pub(crate) struct CkptState {
    pub writer: CkptWriter,
    /// What the newest durable checkpoint covers (`None`: none yet).
    pub covers: Option<Covers>,
    pub at: Instant,
}

/// Bytes of log between two positions (approximate across segments: whole segments count
/// `segment_bytes`).
pub(crate) fn log_distance(from: Option<Covers>, to: (u64, u64), segment_bytes: u64) -> u64 {
    match from {
        None => u64::MAX,
        Some(f) if f.seg == to.0 => to.1.saturating_sub(f.off),
        Some(f) => (to.0.saturating_sub(f.seg)).saturating_mul(segment_bytes) + to.1,
    }
}

/// What [`take`] did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Taken {
    pub gen: u64,
    /// Segments deleted after it.
    pub deleted: u64,
}

/// Takes a checkpoint now (if the log moved since the last one), then deletes the segments it
/// no longer needs: a prefix of the log, before the segment it ends in, with nothing live.
pub(crate) fn take(shared: &Arc<Shared>) -> Result<Option<Taken>> {
    let existing = crate::recovery::list_segments(shared.vfs.as_ref(), &shared.log_dir)?;
    let mut guard = shared
        .ckpt
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(ck) = guard.as_mut() else {
        return Ok(None);
    };
    // 1. The state at a frame boundary, under the store lock.
    let (payload, covers, ticket, deletable, dead_blobs) = {
        let mut core = shared.lock_core();
        if let Some(cause) = &core.poisoned {
            return Err(Error::Poisoned {
                cause: cause.clone(),
            });
        }
        // No transaction may join the last pending frame now: the checkpoint ends with it.
        core.close_back_frame();
        // Streams in their canonical form (dead ids at their front passed by the floor), so
        // that what is written does not depend on what was read before.
        core.state.normalize_streams(0)?;
        let end = core.log_end();
        let covers = Covers {
            seg: end.seg,
            off: end.off,
            next_lsn: end.lsn,
        };
        if ck.covers == Some(covers) {
            return Ok(None);
        }
        let payload = encode(&core.state, covers);
        // Segments only ever deleted as a prefix: an ENQUEUE in a kept segment always has its
        // later REMOVE in a kept segment too, so a replay of what is kept loses nothing.
        let mut deletable = Vec::new();
        for &seg in &existing {
            let empty = core.state.seg_live.get(&seg).is_none_or(|l| l.records == 0);
            if seg < covers.seg && empty {
                deletable.push(seg);
            } else {
                break;
            }
        }
        let dead_blobs: Vec<u64> = core.state.dead_blobs.iter().copied().collect();
        (payload, covers, core.last_ticket, deletable, dead_blobs)
    };
    // 2. The log it covers must be durable first.
    shared.wait_ticket(ticket)?;
    if shared.options.durability != crate::Durability::Sync {
        let path = shared.log_dir.join(segment_file_name(covers.seg));
        let f = shared
            .vfs
            .open(&path, OpenMode::ReadWrite)
            .map_err(|e| Error::io("open segment", &path, e))?;
        if let Err(e) = f.sync_data() {
            let cause = Error::io("sync", &path, e).to_string();
            shared.poison(cause.clone());
            return Err(Error::Poisoned { cause });
        }
    }
    // 3. Write it; a failure poisons the store like any failed write.
    let gen = match ck.writer.write(shared.vfs.as_ref(), &payload) {
        Ok(gen) => {
            ck.covers = Some(covers);
            ck.at = Instant::now();
            gen
        }
        Err(e) => {
            let cause = e.to_string();
            shared.poison(cause.clone());
            return Err(Error::Poisoned { cause });
        }
    };
    // 4. The segments it no longer needs. A deletion a crash undoes is redone next time
    //    (recovery never reads segments before the checkpoint's), so the directory is not
    //    synced for it.
    let mut deleted = 0;
    // A segment whose records are being read (handed out just before they died or moved)
    // stays, with every later one, until the next checkpoint.
    let mut deletable = deletable;
    if let Some(i) = deletable.iter().position(|&s| shared.reader.pinned(s)) {
        deletable.truncate(i);
    }
    if let Some(last) = deletable.last() {
        if let Err(e) = crate::segment::write_first(shared.vfs.as_ref(), &shared.log_dir, last + 1)
        {
            let cause = e.to_string();
            shared.poison(cause.clone());
            return Err(Error::Poisoned { cause });
        }
    }
    for seg in deletable {
        for path in [
            shared.log_dir.join(segment_file_name(seg)),
            crate::segindex::idx_path(&shared.log_dir, seg),
        ] {
            match shared.vfs.remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    let cause = Error::io("delete segment", &path, e).to_string();
                    shared.poison(cause.clone());
                    return Err(Error::Poisoned { cause });
                }
            }
        }
        shared.reader.forget(seg);
        let mut core = shared.lock_core();
        core.state.ix.forget(seg);
        core.state.seg_live.remove(&seg);
        deleted += 1;
    }
    // 5. Blobs no live message refers to, now that a durable checkpoint says so.
    for b in dead_blobs {
        if let Err(e) = crate::blob::remove_blob(shared.vfs.as_ref(), &shared.store_dir, b) {
            let cause = e.to_string();
            shared.poison(cause.clone());
            return Err(Error::Poisoned { cause });
        }
        shared.lock_core().state.dead_blobs.remove(&b);
    }
    Ok(Some(Taken { gen, deleted }))
}

/// Builds the RAM index of the part of segment `seg` before `upto` (replay starts there, after
/// a checkpoint, and does not apply those entries again), reading it in chunks. Damaged frames
/// are skipped and returned, for recovery to report (and refuse, by default): their records
/// were live when the checkpoint was taken.
pub(crate) fn index_prefix(
    vfs: &dyn Vfs,
    log_dir: &Path,
    seg: u64,
    upto: u64,
    next_lsn: u64,
    ix: &mut IndexStore,
) -> Result<Vec<DamagedRange>> {
    const CHUNK: usize = 4 << 20;
    let path = log_dir.join(segment_file_name(seg));
    let f = vfs
        .open(&path, OpenMode::Read)
        .map_err(|e| Error::io("open segment", &path, e))?;
    let read = |buf: &mut Vec<u8>, at: u64, len: usize| -> Result<()> {
        buf.resize(len, 0);
        f.read_exact_at(buf, at)
            .map_err(|e| Error::io("read segment", &path, e))
    };
    let mut damaged = Vec::new();
    let mut pos = crate::frame::SEGMENT_HEADER_LEN as u64;
    let mut last_lsn = 0u64;
    let mut buf: Vec<u8> = Vec::new();
    // The next read's size: a chunk, or a whole frame larger than a chunk.
    let mut window = CHUNK;
    'chunks: while pos < upto {
        let want = usize::try_from(upto - pos).unwrap_or(window).min(window);
        window = CHUNK;
        read(&mut buf, pos, want)?;
        let mut at = 0usize;
        while at < buf.len() {
            match check_frame(&buf[at..]) {
                FrameCheck::Valid {
                    lsn, entries, len, ..
                } => {
                    last_lsn = lsn;
                    let base = at + entries.start;
                    let body = &buf[base..at + entries.end];
                    let file_base = pos + base as u64;
                    let _ = decode_entries_at(body, 0, |e, off, elen| {
                        if let Entry::Enqueue(q) = &e {
                            let at = At {
                                seg,
                                off: (file_base + off as u64) as u32,
                                len: elen as u32,
                                crc: crc32c::crc32c(&body[off..off + elen]),
                            };
                            if let Some((key, ie)) = index_entry(q, at) {
                                ix.append_prefix(seg, key, ie);
                            }
                        }
                    });
                    at += len;
                }
                FrameCheck::Truncated
                    if crate::frame::frame_total_len(&buf[at..]).is_some_and(|need| {
                        (pos + at as u64).saturating_add(need as u64) <= upto
                    }) =>
                {
                    // The frame goes on past this window but ends before `upto`: read it
                    // whole next (a frame may be larger than a chunk).
                    let need = crate::frame::frame_total_len(&buf[at..]).unwrap_or(CHUNK);
                    window = need.max(CHUNK);
                    pos += at as u64;
                    continue 'chunks;
                }
                FrameCheck::Truncated if at > 0 => break,
                FrameCheck::Truncated | FrameCheck::Invalid(_) => {
                    let bad_at = pos + at as u64;
                    let why = match check_frame(&buf[at..]) {
                        FrameCheck::Invalid(w) => w.to_string(),
                        _ => "frame cut short".to_string(),
                    };
                    // Damage: look at the rest whole for the next valid frame.
                    let rest_len = usize::try_from(upto - bad_at).unwrap_or(usize::MAX);
                    read(&mut buf, bad_at, rest_len)?;
                    let next = find_next_frame(&buf, 1, last_lsn);
                    damaged.push(DamagedRange {
                        segment: seg,
                        offset: bad_at,
                        lsn_from: last_lsn + 1,
                        lsn_to: next
                            .map_or(next_lsn.saturating_sub(1), |f| f.lsn.saturating_sub(1)),
                        bytes: next.map_or(rest_len, |f| f.offset) as u64,
                        reason: format!("{why} (before the checkpoint's position)"),
                    });
                    match next {
                        Some(f) => {
                            pos = bad_at + f.offset as u64;
                            continue 'chunks;
                        }
                        None => break 'chunks,
                    }
                }
            }
        }
        if at == 0 {
            break;
        }
        pos += at as u64;
    }
    Ok(damaged)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use crate::reader::SegPins;
    use crate::vfs::{MemVfs, Vfs};
    use crate::{Maintenance, Options, Push, Store};

    #[test]
    fn a_segment_with_records_being_read_is_not_deleted_until_the_read_ends() {
        let vfs = Arc::new(MemVfs::new());
        let s = Store::open_with_vfs(
            vfs.clone(),
            "/s",
            Options {
                segment_bytes: 8192,
                maintenance: Maintenance::Manual,
                ..Options::default()
            },
        )
        .unwrap();
        for i in 0..200 {
            s.push("q", Push::new(format!("message {i} {}", "x".repeat(40))))
                .unwrap();
        }
        let seg1 = Path::new("/s/log/00000000000000000001.seg");
        // A reader that was handed records of segment 1 (say a lease, just before a compaction
        // moved them or an ack made them dead) and has not read them yet.
        let pins = SegPins::new(&s.inner.shared, std::iter::once(1));
        let all = s.lease("q", 1000, None).unwrap();
        let receipts: Vec<_> = all.iter().filter_map(|m| m.receipt).collect();
        s.ack_batch("q", &receipts).unwrap();
        for _ in 0..3 {
            s.maintain().unwrap();
        }
        assert!(vfs.exists(seg1).unwrap(), "deleted while pinned");
        drop(pins);
        // The next checkpoint (when the log has moved on) deletes it.
        s.push("q", Push::new("later")).unwrap();
        let mut deleted = 0;
        for _ in 0..3 {
            deleted += s.maintain().unwrap().segments_deleted;
        }
        assert!(deleted > 0);
        assert!(!vfs.exists(seg1).unwrap(), "deleted once the read ended");
    }
}
