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

/// How often the background thread looks for work when nobody woke it.
const IDLE_WAKE: Duration = Duration::from_millis(500);

/// What one [`Store::maintain`] call did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaintainReport {
    /// Index files of sealed segments written.
    pub indexes_written: u64,
    /// The generation of the checkpoint written, if one was.
    pub checkpoint: Option<u64>,
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

/// One round of housekeeping. `forced`: take a checkpoint if the log moved at all.
pub(crate) fn step(shared: &Arc<Shared>, forced: bool) -> Result<MaintainReport> {
    let mut report = MaintainReport::default();
    let todo = {
        let mut core = shared.lock_core();
        core.maint_wanted = false;
        core.state.ix.unwritten()
    };
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
        report.indexes_written += 1;
    }
    if checkpoint_due(shared, forced) {
        report.checkpoint = crate::checkpoint::take(shared)?;
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
        crate::checkpoint::take(self.shared())
    }
}
