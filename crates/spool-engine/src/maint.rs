//! Housekeeping: the work that keeps memory, start-up time and disk bounded but is not on any
//! caller's path: writing the index files of sealed segments (after which their RAM index is
//! dropped), and checkpoints (every `checkpoint_bytes` of log or `checkpoint_interval`).
//!
//! A failed write poisons the store, as a failed log write does.
//!
//! It runs on a background thread ([`Maintenance::Background`](crate::Maintenance), the
//! default), or only when [`Store::maintain`] is called (`Maintenance::Manual`: deterministic,
//! which is what the crash simulation needs). Every step is safe to interrupt by a crash at any
//! point: what it writes is either derived data (index files, checked when read) or made
//! durable before anything relies on it.

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use crate::error::Result;
use crate::segindex;
use crate::store::Store;
use crate::writer::Shared;

/// A sealed segment whose live records take less than this share of it is compacted.
const COMPACT_LIVE_RATIO: f64 = 0.25;
/// Bytes of records one compaction transaction copies at most (the rest waits for the next
/// round): the copy is done under the store lock.
const COMPACT_BYTES_MAX: u64 = 8 << 20;

/// How often the background thread looks for work when nobody woke it.
const IDLE_WAKE: Duration = Duration::from_millis(500);

/// What one [`Store::maintain`] call did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaintainReport {
    /// Index files of sealed segments written.
    pub indexes_written: u64,
    /// The generation of the checkpoint written, if one was.
    pub checkpoint: Option<u64>,
    /// Records copied forward out of sparse segments (compaction).
    pub records_relocated: u64,
    /// Segments deleted (nothing live in them, and a durable checkpoint no longer needs them).
    pub segments_deleted: u64,
}

/// The oldest sealed segment worth compacting: its live records take less than
/// `COMPACT_LIVE_RATIO` of the records ever written to it, and no topic keeps a retained message in it (topics are
/// trimmed by age, from the oldest: they free their segments themselves).
fn compaction_target(shared: &Shared) -> Option<u64> {
    let core = shared.lock_core();
    let st = &core.state;
    let sealed = st.ix.sealed_through();
    let topic_segs: std::collections::BTreeSet<u64> = st
        .topics
        .values()
        .flat_map(|t| t.msgs.iter().map(|m| m.rec.seg))
        .collect();

    st.seg_live
        .iter()
        .filter(|(seg, l)| {
            **seg <= sealed
                && l.records > 0
                && (l.bytes as f64) < (l.total_bytes as f64) * COMPACT_LIVE_RATIO
                && !topic_segs.contains(seg)
        })
        .map(|(seg, _)| *seg)
        .next()
}

/// Copies the live records of segment `seg` to the end of the log (`ENQUEUE` entries marked
/// as relocations: same id, same content), in one transaction, up to `COMPACT_BYTES_MAX`.
/// Returns how many.
fn compact(shared: &Arc<Shared>, seg: u64) -> Result<u64> {
    let (n, ticket) = crate::store::txn_on(
        shared,
        |txn| {
            let mut todo: Vec<(u32, u64, crate::entry::RecRef)> = Vec::new();
            {
                let st = &mut txn.core.state;
                let crate::state::State { queues, ix, .. } = st;
                let mut qids: Vec<u32> = queues.keys().copied().collect();
                qids.sort_unstable();
                for qid in qids {
                    if let Some(q) = queues.get(&qid) {
                        for (id, rec) in q.records_in(ix, seg)? {
                            todo.push((qid, id, rec));
                        }
                    }
                }
            }
            let mut n = 0;
            let mut bytes = 0u64;
            // At most an eighth of a segment per round (small segments, as in the tests, are
            // compacted over several rounds too).
            let budget = (shared.options.segment_bytes / 8).clamp(1, COMPACT_BYTES_MAX);
            for (qid, id, rec) in todo {
                if bytes >= budget {
                    break;
                }
                // A sealed segment is written: its records are readable.
                let Some(read) = txn.read_committed(&rec) else {
                    break;
                };
                let Ok(crate::entry::Entry::Enqueue(mut e)) = crate::entry::decode_record(&read?)
                else {
                    return Err(crate::Error::DamagedRecord {
                        segment: rec.seg,
                        offset: u64::from(rec.off),
                        reason: format!("not the record of message {id}"),
                    });
                };
                if e.id != id || e.queue != qid {
                    return Err(crate::Error::DamagedRecord {
                        segment: rec.seg,
                        offset: u64::from(rec.off),
                        reason: format!("not the record of message {id}"),
                    });
                }
                e.relocated_from = Some((rec.seg, rec.off, rec.len));
                txn.emit(crate::entry::Entry::Enqueue(e));
                bytes += u64::from(rec.len);
                n += 1;
            }
            Ok(n)
        },
        true,
    )?;
    if let Some(t) = ticket {
        shared.wait_committed(t)?;
    }
    Ok(n)
}

/// Whether a checkpoint is due: the log moved by `checkpoint_bytes`, or it moved at all and
/// `checkpoint_interval` passed (`forced`: it moved at all).
fn checkpoint_due(shared: &Shared, forced: bool) -> bool {
    let ck = shared.ckpt.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(ck) = ck.as_ref() else {
        return false;
    };
    let end = shared.lock_core().log_end();
    let moved = ck
        .covers
        .is_none_or(|c| (c.seg, c.off) != (end.seg, end.off));
    if !moved {
        return false;
    }
    let o = &shared.options;
    forced
        || crate::checkpoint::log_distance(ck.covers, (end.seg, end.off), o.segment_bytes)
            >= o.checkpoint_bytes
        || ck.at.elapsed() >= o.checkpoint_interval
}

/// Writes the index files of sealed segments whose index is only in RAM. Returns how many.
pub(crate) fn write_indexes(shared: &Shared) -> Result<u64> {
    let todo = {
        let mut core = shared.lock_core();
        core.maint_wanted = false;
        // Only segments the writer has finished: once the RAM copy is dropped, a reader
        // checks the file against the segment's length, which must be final by then.
        let done_before = core.committed_pos.0;
        let mut v = core.state.ix.unwritten();
        v.retain(|i| i.seg_id < done_before);
        v
    };
    let mut n = 0;
    for idx in todo {
        // Derived data, but a disk that fails a write is not trusted with the log either: the
        // store is poisoned, as for a failed log write (reopening recovers, and rebuilds a
        // torn index from its segment).
        if let Err(e) = segindex::write_file(shared.vfs.as_ref(), &shared.log_dir, &idx) {
            let cause = e.to_string();
            shared.poison(cause.clone());
            return Err(crate::Error::Poisoned { cause });
        }
        shared.lock_core().state.ix.written(&idx);
        n += 1;
    }
    Ok(n)
}

/// One round of housekeeping. `forced`: take a checkpoint if the log moved at all.
pub(crate) fn step(shared: &Arc<Shared>, forced: bool) -> Result<MaintainReport> {
    let mut report = MaintainReport {
        indexes_written: write_indexes(shared)?,
        ..MaintainReport::default()
    };
    // Compaction: the oldest sparse segment's live records are copied forward; the segment is
    // deleted once a checkpoint no longer needs it (below).
    if shared.options.checkpoint_bytes > 0 {
        if let Some(seg) = compaction_target(shared) {
            report.records_relocated += compact(shared, seg)?;
        }
    }
    if checkpoint_due(shared, forced || report.records_relocated > 0) {
        let done = crate::checkpoint::take(shared)?;
        report.checkpoint = done.map(|d| d.gen);
        report.segments_deleted += done.map_or(0, |d| d.deleted);
    }
    Ok(report)
}

/// The background thread's loop. Returns when the store closes.
pub(crate) fn run(shared: &Arc<Shared>) {
    loop {
        {
            let core = shared.lock_core();
            if core.closing || core.poisoned.is_some() {
                return;
            }
            if !core.maint_wanted {
                let (core, _) = shared
                    .maint_cv
                    .wait_timeout(core, IDLE_WAKE)
                    .unwrap_or_else(PoisonError::into_inner);
                if core.closing || core.poisoned.is_some() {
                    return;
                }
            }
        }
        let _ = step(shared, false);
    }
}

impl Store {
    /// Runs one round of housekeeping now: index files of sealed segments, and a checkpoint
    /// if anything was written since the last one. With
    /// [`Maintenance::Manual`](crate::Maintenance) this is the only way it runs; with the
    /// default background thread it is rarely needed.
    pub fn maintain(&self) -> Result<MaintainReport> {
        let shared = self.shared();
        if let Some(cause) = &shared.lock_core().poisoned {
            return Err(crate::Error::Poisoned {
                cause: cause.clone(),
            });
        }
        step(shared, true)
    }

    /// Takes a checkpoint now (if anything was written since the last one), so that the next
    /// open replays nothing before this point. Returns its generation. `Ok(None)` also when
    /// checkpoints are off (`checkpoint_bytes` = 0).
    pub fn checkpoint(&self) -> Result<Option<u64>> {
        Ok(crate::checkpoint::take(self.shared())?.map(|t| t.gen))
    }
}
