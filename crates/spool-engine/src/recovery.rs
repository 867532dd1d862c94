//! Recovery: rebuilding the state by replaying the log, and deciding what a bad frame means.
//!
//! Every segment is read in order and every frame checked (magic, length bound, CRC32C, and an
//! LSN exactly one above the previous frame's). At the first bad frame the scanner looks for
//! any later valid frame, in the same segment or in a later segment:
//! - none: the bad bytes are a **torn tail** (a write cut by a crash, never acknowledged).
//!   The segment is truncated to the end of the last good frame and synced; later segments,
//!   which then hold no valid frame, are removed.
//! - one: it is **damage in the middle**. The lost LSN range is reported; with
//!   [`RecoveryPolicy::Refuse`] (the default) the store does not open and nothing is changed,
//!   with [`RecoveryPolicy::Skip`] replay resumes at the next valid frame.
//!
//! Recovery changes files only to cut a torn tail, and that is idempotent: a crash during
//! recovery leaves a log that recovers to the same state.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::checkpoint::{self, Covers};
use crate::ckpt;
use crate::entry::{decode_entries_at, Entry};
use crate::error::{Error, Result};
use crate::frame::{
    check_frame, find_next_frame, parse_segment_file_name, valid_frames_after, FrameCheck,
    SegmentHeader, SEGMENT_HEADER_LEN, SEGMENT_ID_MAX,
};
use crate::lanes::IndexStore;
use crate::options::RecoveryPolicy;
use crate::segindex;
use crate::segment::ActiveSegment;
use crate::state::{At, State};
use crate::vfs::{OpenMode, Vfs};

/// Dead ids a stream may collect while the log is replayed before its front is read.
const DEAD_IDS_REPLAY_MAX: usize = 65_536;

/// A stretch of the log that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedRange {
    /// Segment holding the first bad byte.
    pub segment: u64,
    /// Offset of the first bad byte in that segment.
    pub offset: u64,
    /// First LSN lost.
    pub lsn_from: u64,
    /// Last LSN lost (inclusive).
    pub lsn_to: u64,
    /// Bytes skipped.
    pub bytes: u64,
    /// What was wrong.
    pub reason: String,
}

impl fmt::Display for DamagedRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "LSN {}..={} ({} bytes) at segment {} offset {}: {}",
            self.lsn_from, self.lsn_to, self.bytes, self.segment, self.offset, self.reason
        )
    }
}

/// A torn tail that recovery cut off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub segment: u64,
    pub offset: u64,
    pub bytes_discarded: u64,
    /// Valid frames found after the tear and discarded with it (written after the last
    /// fdatasync, out of order by the page cache; never acknowledged in `Durability::Sync`).
    pub valid_frames_discarded: u64,
}

/// What recovery found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: u64,
    pub frames: u64,
    pub entries: u64,
    pub bytes: u64,
    /// The torn tail cut off, if any.
    pub torn_tail: Option<TornTail>,
    /// Segments removed because they held no valid frame after a torn tail.
    pub removed_segments: Vec<u64>,
    /// Damage skipped (only with `RecoveryPolicy::Skip`).
    pub damaged: Vec<DamagedRange>,
    /// Leases open at the crash, released.
    pub leases_released: u64,
    /// Bytes at the end of the log written again and synced because a write or fsync of
    /// them had failed (see `segment::record_sync_failure`).
    pub rewritten_bytes: u64,
    /// The checkpoint recovery started from (its generation), if any.
    pub checkpoint: Option<u64>,
    /// Checkpoints found unusable (both bad means the whole log was replayed: nothing is lost,
    /// but look at why).
    pub checkpoint_problems: Vec<String>,
    /// Index files of sealed segments found missing or bad and rebuilt.
    pub indexes_rebuilt: u64,
    /// Blob files no live message refers to, removed (a push cut by a crash before it was
    /// durable, or a deletion cut short).
    pub orphan_blobs_removed: u64,
    /// Milliseconds recovery took.
    pub duration_ms: u64,
}

pub(crate) struct Recovered {
    pub state: State,
    pub active: ActiveSegment,
    pub report: RecoveryReport,
    /// The checkpoints found, and the generation used (for the next checkpoint's generation).
    pub checkpoints: Option<(ckpt::Loaded, Option<u64>, Option<Covers>)>,
}

struct Seg {
    id: u64,
    path: PathBuf,
    /// The segment's bytes while it is replayed (empty before and after). Before `from` (where
    /// replay starts in it, after a checkpoint) it holds zeroes: pages never touched, so they
    /// cost no memory.
    data: Vec<u8>,
    len: u64,
    header: Result<SegmentHeader, &'static str>,
}

/// Reads a segment's header and its bytes from `from` on (zeroes before `from`, except the
/// header).
fn read_segment(vfs: &dyn Vfs, path: &Path, from: u64) -> Result<Vec<u8>> {
    let f = vfs
        .open(path, OpenMode::Read)
        .map_err(|e| Error::io("open segment", path, e))?;
    let len = f.len().map_err(|e| Error::io("stat segment", path, e))?;
    let len = usize::try_from(len).map_err(|_| Error::Format {
        path: path.to_path_buf(),
        reason: "segment larger than memory can address".into(),
    })?;
    let mut data = vec![0u8; len];
    let from = usize::try_from(from).unwrap_or(len).min(len);
    let head = SEGMENT_HEADER_LEN.min(len).min(from);
    f.read_exact_at(&mut data[..head], 0)
        .map_err(|e| Error::io("read segment", path, e))?;
    f.read_exact_at(&mut data[from..], from as u64)
        .map_err(|e| Error::io("read segment", path, e))?;
    Ok(data)
}

/// A segment's length and header, without reading it.
fn probe_segment(vfs: &dyn Vfs, path: &Path) -> Result<(u64, Result<SegmentHeader, &'static str>)> {
    let f = vfs
        .open(path, OpenMode::Read)
        .map_err(|e| Error::io("open segment", path, e))?;
    let len = f.len().map_err(|e| Error::io("stat segment", path, e))?;
    let mut h = vec![0u8; SEGMENT_HEADER_LEN.min(usize::try_from(len).unwrap_or(0))];
    f.read_exact_at(&mut h, 0)
        .map_err(|e| Error::io("read segment", path, e))?;
    Ok((len, SegmentHeader::decode(&h)))
}

/// Lists the segment ids in `log_dir`, sorted.
pub(crate) fn list_segments(vfs: &dyn Vfs, log_dir: &Path) -> Result<Vec<u64>> {
    let names = vfs
        .read_dir(log_dir)
        .map_err(|e| Error::io("list", log_dir, e))?;
    let mut ids: Vec<u64> = names
        .iter()
        .filter_map(|n| parse_segment_file_name(n))
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

/// Whether a segment holds at least one valid frame.
fn has_valid_frame(seg: &Seg) -> bool {
    seg.data.len() > SEGMENT_HEADER_LEN
        && find_next_frame(&seg.data, SEGMENT_HEADER_LEN, 0).is_some()
}

/// The highest LSN of any valid frame in a segment (0 if none).
fn max_frame_lsn(seg: &Seg) -> u64 {
    valid_frames_after(&seg.data, SEGMENT_HEADER_LEN.min(seg.data.len()), 0)
        .iter()
        .map(|f| f.lsn)
        .max()
        .unwrap_or(0)
}

fn state_entries(state: &State) -> u64 {
    state.entries_applied
}

/// Checks the frame at `pos` (it must have LSN `lsn`), decodes its entries and applies them.
/// Returns the frame's length and `synced_lsn`, or why it is not a good frame (then nothing was
/// applied).
fn replay_frame(
    seg_id: u64,
    data: &[u8],
    pos: usize,
    lsn: u64,
    state: &mut State,
) -> Result<(usize, u64), String> {
    match check_frame(&data[pos..]) {
        FrameCheck::Valid {
            lsn: found,
            synced_lsn,
            n_entries,
            entries,
            len,
        } if found == lsn => {
            let base = pos + entries.start;
            let body = &data[base..pos + entries.end];
            let mut batch = Vec::new();
            decode_entries_at(body, base, |e, off, len| batch.push((e, off, len)))
                .map_err(|e| e.to_string())?;
            if batch.len() as u64 != u64::from(n_entries) {
                return Err("frame entry count mismatch".to_string());
            }
            for (e, off, len) in batch {
                let at = matches!(e, Entry::Enqueue(_) | Entry::Publish { .. }).then(|| At {
                    seg: seg_id,
                    off: (base + off) as u32,
                    len: len as u32,
                    crc: crc32c::crc32c(&body[off..off + len]),
                });
                state.apply(e, at);
            }
            Ok((len, synced_lsn))
        }
        FrameCheck::Valid { lsn: found, .. } => Err(format!(
            "frame has LSN {found} where LSN {lsn} was expected"
        )),
        FrameCheck::Truncated => Err("frame cut short".to_string()),
        FrameCheck::Invalid(why) => Err(why.to_string()),
    }
}

/// Replays the log in `log_dir` into a fresh state.
#[allow(clippy::too_many_arguments)]
pub(crate) fn recover(
    vfs: &Arc<dyn Vfs>,
    dir: &Path,
    log_dir: &Path,
    store_id: u64,
    policy: RecoveryPolicy,
    segment_bytes: u64,
    checkpoints: bool,
    now_ms: u64,
) -> Result<Recovered> {
    let started = std::time::Instant::now();
    let mut report = RecoveryReport::default();
    let all_ids = list_segments(vfs.as_ref(), log_dir)?;

    // --- the newest usable checkpoint: replay starts where it ends
    let mut loaded = None;
    let mut start: Option<(u64, Covers, State)> = None;
    if checkpoints {
        ckpt::create_slots(vfs.as_ref(), dir).map_err(ckpt_err)?;
        let l = ckpt::load(vfs.as_ref(), dir, store_id).map_err(ckpt_err)?;
        for (slot, gen) in l.candidates() {
            let payload = match &l.best {
                Some((g, p)) if *g == gen => Some(p.clone()),
                _ => ckpt::load_slot(vfs.as_ref(), dir, store_id, slot)
                    .map_err(ckpt_err)?
                    .map(|(_, p)| p),
            };
            let Some(payload) = payload else { continue };
            let ix = IndexStore::new(vfs.clone(), log_dir, store_id);
            match checkpoint::decode(&payload, ix) {
                Ok((covers, st)) => match usable(vfs.as_ref(), log_dir, &all_ids, covers) {
                    Ok(()) => {
                        start = Some((gen, covers, st));
                        break;
                    }
                    Err(why) => report
                        .checkpoint_problems
                        .push(format!("checkpoint {gen}: {why}")),
                },
                Err(why) => report
                    .checkpoint_problems
                    .push(format!("checkpoint {gen}: its content is damaged: {why}")),
            }
        }
        for st in &l.slots {
            if let ckpt::SlotStatus::Invalid { reason } = &st.status {
                report
                    .checkpoint_problems
                    .push(format!("ckpt.{}: {reason}", st.slot));
            }
        }
        loaded = Some(l);
    }
    // Damage found rebuilding the index file of a segment the checkpoint relies on.
    let mut index_damage: Vec<DamagedRange> = Vec::new();
    let (mut state, start_at) = match start {
        Some((gen, covers, mut st)) => {
            report.checkpoint = Some(gen);
            report.indexes_rebuilt += check_indexes(
                vfs.as_ref(),
                log_dir,
                store_id,
                &mut st,
                covers.seg,
                &mut index_damage,
            )?;
            (st, Some(covers))
        }
        None => (
            State::new(IndexStore::new(vfs.clone(), log_dir, store_id)),
            None,
        ),
    };

    // Where the log starts: segment 1, or (once segments were deleted) what log/FIRST says.
    let first_seg = match crate::segment::read_first(vfs.as_ref(), log_dir) {
        Ok(f) => f.unwrap_or(0),
        Err(why) => {
            // Cannot tell a deleted prefix from a lost one: take the log as it is, and say so.
            if start_at.is_none() {
                report.checkpoint_problems.push(format!(
                    "{why}: the log is replayed from its first segment present"
                ));
            }
            all_ids.first().copied().unwrap_or(1)
        }
    };
    let ids: Vec<u64> = all_ids
        .into_iter()
        .filter(|&id| start_at.map_or(id >= first_seg, |c| id >= c.seg))
        .collect();
    let failed_from = crate::segment::read_sync_failure(vfs.as_ref(), log_dir);
    let mut segs = Vec::with_capacity(ids.len());
    for id in ids {
        let path = log_dir.join(crate::frame::segment_file_name(id));
        let (len, header) = probe_segment(vfs.as_ref(), &path)?;
        segs.push(Seg {
            id,
            path,
            data: Vec::new(),
            len,
            header,
        });
    }

    let mut damaged: Vec<DamagedRange> = Vec::new();
    // Records damage; with `Refuse` the open stops here, before any file is changed.
    let damaged_count = std::cell::Cell::new(0usize);
    let mut damage = |d: DamagedRange| -> Result<()> {
        damaged.push(d);
        damaged_count.set(damaged_count.get() + 1);
        if policy == RecoveryPolicy::Refuse {
            return Err(Error::Corrupt {
                ranges: damaged.clone(),
            });
        }
        Ok(())
    };
    for d in index_damage {
        damage(d)?;
    }
    // The next LSN the log must hold; `None` after skipped damage (the next segment's header
    // says where the log resumes).
    let mut expected: Option<u64> = start_at.map(|c| c.next_lsn);
    // The highest LSN that exists anywhere (replayed or skipped): new frames go above it, so an
    // LSN is never written twice.
    let mut ceiling = start_at.map_or(0, |c| c.next_lsn.saturating_sub(1));
    // Where the log ends: (segment index, offset) to append at.
    let mut end: Option<(usize, u64)> = None;
    // The last segment ends in zeros (a prepared segment), not in a torn write.
    let mut zero_tail = false;
    // Segments are deleted as a prefix (once a durable checkpoint no longer needs them): the
    // log starts at the first segment there is. Each segment restates the catalog (queues,
    // topics, counters) in its first frame, so a replay from there knows them all.
    let mut prev_id = start_at.map_or(first_seg.saturating_sub(1), |c| c.seg.saturating_sub(1));
    let first_seg = first_seg.max(1);
    for i in 0..segs.len() {
        // Replay reads one segment at a time (the last one is kept for the tail's cut).
        if i > 0 {
            segs[i - 1].data = Vec::new();
        }
        let resume = start_at.filter(|_| i == 0);
        let from = resume.map_or(0, |c| c.off);
        segs[i].data = read_segment(vfs.as_ref(), &segs[i].path, from)?;
        let seg = &segs[i];
        let damaged_before = damaged_count.get();
        report.segments += 1;
        let is_last = i + 1 == segs.len();
        let from = expected.unwrap_or(ceiling + 1);
        // --- every segment id from 1 must be there
        let gap = seg.id > prev_id + 1;
        if gap {
            damage(DamagedRange {
                segment: prev_id + 1,
                offset: 0,
                lsn_from: from,
                lsn_to: seg
                    .header
                    .as_ref()
                    .map_or(from, |h| h.base_lsn.saturating_sub(1).max(from)),
                bytes: 0,
                reason: format!("segment(s) {}..={} missing", prev_id + 1, seg.id - 1),
            })?;
        }
        prev_id = seg.id;
        // --- the segment header
        let header = match &seg.header {
            Err(why) => Err((*why).to_string()),
            Ok(h) if h.store_id != store_id => {
                Err("segment belongs to another store (store id mismatch)".to_string())
            }
            Ok(h) if h.seg_id != seg.id => Err(format!(
                "header says segment {} but the file is {}",
                h.seg_id, seg.id
            )),
            Ok(h) if resume.is_some_and(|c| h.base_lsn > c.next_lsn) => Err(format!(
                "segment starts at LSN {} but the checkpoint covers up to LSN {}",
                h.base_lsn,
                resume.map_or(0, |c| c.next_lsn - 1)
            )),
            Ok(h) if resume.is_none() && expected.is_some_and(|e| h.base_lsn < e) => Err(format!(
                "segment starts at LSN {} but LSN {from} was expected (it overlaps frames already read)",
                h.base_lsn
            )),
            Ok(h) if h.base_lsn == 0 => Err("segment starts at LSN 0".to_string()),
            Ok(_) if seg.id == 0 => Err("segment number 0 is never used".to_string()),
            Ok(_) if seg.id > SEGMENT_ID_MAX => Err(format!(
                "segment number {} is above the largest one used ({SEGMENT_ID_MAX})",
                seg.id
            )),
            Ok(h) => Ok(*h),
        };
        let header = match header {
            Ok(h) => h,
            Err(problem) => {
                if is_last && !has_valid_frame(seg) {
                    // A segment whose creation was cut by the crash (nothing in it can have
                    // been acknowledged: its header and directory entry are synced before
                    // any frame is written): removed below.
                    end = Some((i, 0));
                    break;
                }
                let seg_max = max_frame_lsn(seg);
                ceiling = ceiling.max(seg_max);
                let next_base = segs
                    .get(i + 1)
                    .and_then(|s| s.header.as_ref().ok())
                    .map(|h| h.base_lsn.saturating_sub(1));
                let lsn_to = next_base.unwrap_or(seg_max).max(from);
                damage(DamagedRange {
                    segment: seg.id,
                    offset: 0,
                    lsn_from: from,
                    lsn_to,
                    bytes: seg.data.len() as u64,
                    reason: problem,
                })?;
                // Every LSN the report names stays unused: a later open reports the same range.
                ceiling = ceiling.max(lsn_to);
                expected = None;
                end = None;
                continue;
            }
        };
        // --- LSNs must continue from the previous segment
        match expected {
            Some(e) if header.base_lsn > e && !gap => damage(DamagedRange {
                segment: seg.id - 1,
                offset: segs[i - 1].len,
                lsn_from: e,
                lsn_to: header.base_lsn - 1,
                bytes: 0,
                reason: format!(
                    "frames {e}..={} missing at the end of segment {}",
                    header.base_lsn - 1,
                    seg.id - 1
                ),
            })?,
            None if i == 0 && first_seg == 1 && header.base_lsn != 1 => damage(DamagedRange {
                segment: seg.id,
                offset: 0,
                lsn_from: 1,
                lsn_to: header.base_lsn - 1,
                bytes: 0,
                reason: format!("the log starts at LSN {} instead of 1", header.base_lsn),
            })?,
            _ => {}
        }
        let mut lsn_next = header.base_lsn;
        let mut pos = SEGMENT_HEADER_LEN;
        if let Some(c) = resume {
            // After a checkpoint: replay resumes at its position. The index of the part before
            // it is rebuilt when this segment's is in RAM (it is the last one, or its file is
            // not sound).
            lsn_next = c.next_lsn;
            pos = usize::try_from(c.off).unwrap_or(usize::MAX);
            // (The whole file is checked: a file whose writing a crash cut has a sound header.)
            let sealed = !is_last
                && segindex::IdxFile::open(
                    vfs.as_ref(),
                    log_dir,
                    crate::lanes::expect_for(vfs.as_ref(), log_dir, store_id, seg.id)?,
                )
                .is_ok();
            if !sealed {
                let bad = checkpoint::index_prefix(
                    vfs.as_ref(),
                    log_dir,
                    seg.id,
                    c.off,
                    c.next_lsn,
                    &mut state.ix,
                )?;
                for d in bad {
                    damage(d)?;
                }
            }
        }
        ceiling = ceiling.max(lsn_next - 1);
        // --- the frames
        while pos < seg.data.len() {
            let problem = match replay_frame(seg.id, &seg.data, pos, lsn_next, &mut state) {
                Ok((len, _synced_lsn)) => {
                    if report.frames % 1024 == 0 {
                        // Streams consumed in the replayed log collect dead ids until a read
                        // of their front passes them: keep that bounded.
                        state.normalize_streams(DEAD_IDS_REPLAY_MAX)?;
                    }
                    report.frames += 1;
                    report.bytes += len as u64;
                    ceiling = ceiling.max(lsn_next);
                    lsn_next += 1;
                    pos += len;
                    continue;
                }
                Err(problem) => problem,
            };
            report.entries = state_entries(&state);
            // A bad frame at `pos`, where LSN `lsn_next` should be. Torn tail or damage?
            // - a later segment exists: this one was synced before the roll, so its bytes were
            //   durable: damage;
            // - a later valid frame in this segment says (synced_lsn) that LSN `lsn_next` was
            //   durable when it was written: damage;
            // - otherwise every byte from here on was written after the last fdatasync: a torn
            //   tail (valid frames after a hole are possible, the page cache writes back in
            //   any order), never acknowledged in Sync mode.
            let later = valid_frames_after(&seg.data, pos + 1, lsn_next - 1);
            let proven_durable = later.iter().any(|f| f.synced_lsn >= lsn_next);
            if !is_last || proven_durable {
                let resume = later.first().copied();
                damage(DamagedRange {
                    segment: seg.id,
                    offset: pos as u64,
                    lsn_from: lsn_next,
                    lsn_to: match resume {
                        Some(f) => f.lsn - 1,
                        None => segs
                            .get(i + 1)
                            .and_then(|s| s.header.as_ref().ok())
                            .map_or(lsn_next, |h| h.base_lsn.saturating_sub(1).max(lsn_next)),
                    },
                    bytes: (resume.map_or(seg.data.len(), |f| f.offset) - pos) as u64,
                    reason: problem,
                })?;
                if let Some(f) = resume {
                    // Skip: resume replay at the next valid frame.
                    lsn_next = f.lsn;
                    pos = f.offset;
                    continue;
                }
                // Skip: the rest of this segment is lost; the next segment says where the
                // log resumes.
                pos = seg.data.len();
                lsn_next = segs
                    .get(i + 1)
                    .and_then(|s| s.header.as_ref().ok())
                    .map_or(lsn_next, |h| h.base_lsn);
                break;
            }
            // Zeros to the end: the unused part of a prepared segment (a crash came before
            // a clean close cut it off), not a tear. Kept: appends overwrite it.
            if later.is_empty() && seg.data[pos..].iter().all(|&b| b == 0) {
                zero_tail = true;
                break;
            }
            report.torn_tail = Some(TornTail {
                segment: seg.id,
                offset: pos as u64,
                bytes_discarded: (seg.data.len() - pos) as u64,
                valid_frames_discarded: later.len() as u64,
            });
            break;
        }
        expected = Some(lsn_next);
        end = Some((i, pos.min(seg.data.len()) as u64));
        if !is_last {
            // Sealed: its index is complete. Keep it in RAM only if its file must be written
            // (missing or stale, or the segment has damage that was skipped: a file written
            // before the damage would list records that were not replayed).
            if let Some(idx) =
                state
                    .ix
                    .seal(seg.id, seg.data.len() as u64, lsn_next.saturating_sub(1))
            {
                let damaged_here = damaged_count.get() > damaged_before;
                let fresh = !damaged_here
                    && segindex::IdxFile::open(vfs.as_ref(), log_dir, idx.expect()).is_ok();
                if fresh {
                    state.ix.written(&idx);
                }
            }
        }
    }
    report.entries = state_entries(&state);

    // --- cut the tail (only the last segment is ever cut or removed)
    let mut active = None;
    if let Some((idx, offset)) = end {
        let seg = &segs[idx];
        if offset == 0 {
            // The segment's own creation was torn: remove it, the writer recreates it.
            vfs.remove_file(&seg.path)
                .map_err(|e| Error::io("remove torn segment", &seg.path, e))?;
            vfs.sync_dir(log_dir)
                .map_err(|e| Error::io("sync directory", log_dir, e))?;
            report.removed_segments.push(seg.id);
        } else {
            let file = vfs
                .open(&seg.path, OpenMode::ReadWrite)
                .map_err(|e| Error::io("open segment", &seg.path, e))?;
            if offset < seg.data.len() as u64 && !zero_tail {
                file.set_len(offset)
                    .map_err(|e| Error::io("truncate torn tail", &seg.path, e))?;
            }
            // What was replayed may still be only in the page cache (a process crash in
            // Durability::None): sync it before anything is appended after it, so that the
            // synced_lsn stamped into new frames is true. After a failed write or fsync (the
            // marker says from where), the kernel may consider those pages clean although they
            // never reached the disk: write them again first.
            if let Some(from) = failed_from.filter(|&(s, _)| s == seg.id).map(|(_, o)| o) {
                // From 0 when the segment's own creation failed: its header too.
                let from = from.min(offset);
                if from < offset {
                    file.write_all_at(&seg.data[from as usize..offset as usize], from)
                        .map_err(|e| Error::io("rewrite unsynced tail", &seg.path, e))?;
                    report.rewritten_bytes = offset - from;
                }
            }
            file.sync_data()
                .map_err(|e| Error::io("sync", &seg.path, e))?;
            let next = expected.unwrap_or(ceiling + 1);
            active = Some(ActiveSegment {
                vfs: vfs.clone(),
                log_dir: log_dir.to_path_buf(),
                store_id,
                seg_id: seg.id,
                file,
                path: seg.path.clone(),
                offset,
                next_lsn: next,
                segment_bytes,
                unsynced: false,
                synced_lsn: next - 1,
                synced_offset: offset,
                failed_next: None,
                appended: false,
                prep: crate::segment::Prep::default(),
                from_prep: false,
            });
        }
    }
    let active = if let Some(a) = active {
        a
    } else {
        let seg_id = match end {
            Some((idx, _)) => segs[idx].id,
            // Past the last file in range (ids above SEGMENT_ID_MAX are damage, left alone).
            None => segs
                .iter()
                .map(|s| s.id)
                .filter(|&id| id <= SEGMENT_ID_MAX)
                .max()
                .map_or(1, |id| id + 1),
        };
        let next = expected.unwrap_or(ceiling + 1).max(ceiling + 1);
        ActiveSegment::create(
            vfs.clone(),
            log_dir,
            store_id,
            seg_id,
            next,
            now_ms,
            segment_bytes,
        )
        .inspect_err(|_| {
            // Its header may sit in the page cache only: the next recovery writes it again.
            let _ = crate::segment::record_sync_failure(vfs.as_ref(), log_dir, seg_id, 0);
        })?
    };

    // The tail a failed sync left is durable now (rewritten and synced above): the marker can
    // go. A crash before this point simply rewrites it again.
    let marker = log_dir.join(crate::segment::SYNC_FAILED_FILE);
    if vfs
        .exists(&marker)
        .map_err(|e| Error::io("stat", &marker, e))?
    {
        vfs.remove_file(&marker)
            .map_err(|e| Error::io("remove", &marker, e))?;
        vfs.sync_dir(log_dir)
            .map_err(|e| Error::io("sync directory", log_dir, e))?;
    }
    report.damaged = damaged;
    report.indexes_rebuilt += state.ix.rebuilt;
    state.normalize_streams(0)?;
    report.leases_released = state.release_all_leases() as u64;
    report.duration_ms = started.elapsed().as_millis() as u64;
    let report_gen = report.checkpoint;
    Ok(Recovered {
        state,
        active,
        report,
        checkpoints: loaded.map(|l| (l, report_gen, start_at)),
    })
}

fn ckpt_err(e: ckpt::CkptError) -> Error {
    match e {
        ckpt::CkptError::Io { op, path, source } => Error::io(op, path, source),
        other => Error::Format {
            path: PathBuf::new(),
            reason: other.to_string(),
        },
    }
}

/// Whether replay can start where a checkpoint ends: its segment exists and is long enough.
fn usable(
    vfs: &dyn Vfs,
    log_dir: &Path,
    ids: &[u64],
    c: Covers,
) -> std::result::Result<(), String> {
    if !ids.contains(&c.seg) {
        return Err(format!("it ends in segment {}, which is missing", c.seg));
    }
    let path = log_dir.join(crate::frame::segment_file_name(c.seg));
    let len = vfs
        .open(&path, OpenMode::Read)
        .and_then(|f| f.len())
        .map_err(|e| format!("segment {}: {e}", c.seg))?;
    if len < c.off {
        return Err(format!(
            "it ends at offset {} of segment {}, which has only {len} bytes",
            c.off, c.seg
        ));
    }
    Ok(())
}

/// After a checkpoint is loaded: the index file of every sealed segment its streams rely on
/// is checked (header only), and rebuilt into RAM, to be written by the maintenance, when
/// it is missing or stale. Returns how many were rebuilt.
fn check_indexes(
    vfs: &dyn Vfs,
    log_dir: &Path,
    store_id: u64,
    state: &mut State,
    first_replayed: u64,
    damaged: &mut Vec<DamagedRange>,
) -> Result<u64> {
    let mut segs: Vec<u64> = state
        .queues
        .values()
        .flat_map(|q| q.lanes.values().flat_map(|l| l.stream.segments()))
        .filter(|&s| s < first_replayed)
        .collect();
    segs.sort_unstable();
    segs.dedup();
    let mut n = 0;
    for seg in segs {
        let expect = crate::lanes::expect_for(vfs, log_dir, store_id, seg)?;
        if segindex::probe_header(vfs, log_dir, expect).is_err() {
            let (idx, damage) = crate::lanes::rebuild(vfs, log_dir, store_id, seg)?;
            damaged.extend(damage);
            state.ix.adopt(idx);
            n += 1;
        }
    }
    Ok(n)
}
