//! The writer thread and group commit.
//!
//! Callers never write files. Under the store lock an operation checks its input, then encodes
//! its entries into the last pending frame and applies them to the in-memory state (so log
//! order is apply order), and receives a *ticket*. The writer thread takes every pending frame
//! (up to `group_bytes_max`), writes them, calls **one** `fdatasync` for all of them, then
//! publishes the highest ticket it covered as committed and wakes the callers waiting on it.
//!
//! Why apply before the write is durable: a later operation may depend on an earlier one (a
//! lease of a message pushed a moment ago). Its entries come later in the log, and its caller
//! is answered only once its own ticket is committed, which implies every earlier ticket is.
//! Calls that only read (peek, get, topic reads) skip anything whose ticket is not committed.
//! If a write or fsync fails the store is poisoned: every waiter and every later call gets
//! [`Error::Poisoned`], and only a reopen (which replays the log) brings it back.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::frame::FrameBuf;
use crate::options::{Durability, Options};
use crate::segment::{ActiveSegment, Placement};
use crate::signal::Signal;
use crate::state::State;

/// A frame waiting for the writer.
#[derive(Debug)]
pub(crate) struct PendingFrame {
    pub frame: FrameBuf,
    /// Where it will be written (decided when it is opened, so that every entry's location
    /// is known when it is applied).
    pub at: Placement,
    /// The highest ticket whose entries are in this frame.
    pub last_ticket: u64,
    /// Queues and topics to wake once the frame is committed.
    pub signals: Vec<Arc<Signal>>,
}

/// Everything behind the store lock.
#[derive(Debug)]
#[allow(clippy::struct_excessive_bools)] // independent flags, each with its own reader
pub(crate) struct Core {
    pub state: State,
    pub pending: VecDeque<PendingFrame>,
    /// The last ticket handed out.
    pub last_ticket: u64,
    pub poisoned: Option<String>,
    pub closing: bool,
    pub writer_waiting: bool,
    /// Frame buffers the writer has written, kept for reuse (see `SPARE_BUFFERS_MAX`).
    pub spare: Vec<Vec<u8>>,
    /// Threads waiting for their ticket to be committed. A transaction registers its thread
    /// here under the store lock it already holds, and the writer takes out the ones a commit
    /// covers when it takes the store lock anyway: no second lock on either side (with many
    /// producers, a separate waiters lock was a contended hand-off per message).
    pub waiting: Vec<(u64, std::thread::Thread)>,
    /// Where the frame after the last one the writer took goes (segment, offset).
    pub tail: (u64, u64),
    /// The LSN of the next frame opened.
    pub next_lsn: u64,
    /// The log is written (and in `Sync` mode synced) up to here (segment, offset): records
    /// before it can be read back from the files.
    pub committed_pos: (u64, u64),
    /// Segment size at which new frames go to the next segment.
    pub segment_bytes: u64,
    /// Housekeeping is waiting (a segment was sealed): the maintenance thread is woken.
    pub maint_wanted: bool,
    /// The segment the last opened frame leaves behind, to seal once that frame is used:
    /// (segment, length, last LSN).
    pub pending_seal: Option<(u64, u64, u64)>,
    /// The last pending frame takes no more transactions (a checkpoint ends with it).
    pub back_closed: bool,
    /// Free space on the store's file system, for the reserve check of pushes.
    pub disk: DiskSpace,
    /// The next frame starts a new segment even though this one is not full (set when a push
    /// was refused for lack of space: a full segment of consumed messages can only be deleted
    /// once sealed, and on a disk smaller than a few segments it would never fill).
    pub roll_early: bool,
    /// The writer has a prepared segment for a store opened with `SegmentPrep::Eager`: the next
    /// frame goes there, whatever this segment's fill.
    pub roll_prepared: bool,
}

/// An early roll ([`Core::roll_early`]) only seals a segment at least this long, so that
/// refusals in a row do not leave a trail of tiny segments.
const ROLL_EARLY_MIN: u64 = 1 << 20;

/// How often (ms of the store's clock) the free space is read again, by the writer after a
/// group or by a push that the estimate would refuse. The store's clock, so that simulations
/// replay exactly.
const DISK_PROBE_INTERVAL_MS: u64 = 200;

/// Free space on the store's file system, probed now and then and lowered by what the log
/// grew since: a push that would leave less than `reserve` is refused before anything is
/// applied (`Error::DiskFull`), so a full disk never fails a write halfway and poisons the
/// store, and acks (which free space) still find room.
#[derive(Debug)]
pub(crate) struct DiskSpace {
    vfs: Arc<dyn crate::vfs::Vfs>,
    dir: std::path::PathBuf,
    clock: Arc<dyn crate::clock::Clock>,
    reserve: u64,
    /// Free bytes at the last probe; `None` when unknown (no check).
    free: Option<u64>,
    /// Bytes written to the log since that probe.
    used_since: u64,
    probed_ms: u64,
}

impl DiskSpace {
    pub fn new(
        vfs: Arc<dyn crate::vfs::Vfs>,
        dir: std::path::PathBuf,
        clock: Arc<dyn crate::clock::Clock>,
        reserve: u64,
    ) -> DiskSpace {
        let mut d = DiskSpace {
            vfs,
            dir,
            clock,
            reserve,
            free: None,
            used_since: 0,
            probed_ms: 0,
        };
        d.probe();
        d
    }

    /// Whether the last probe is old (either way: a clock set back must not stop probes).
    fn stale(&self) -> bool {
        self.clock.now_ms().abs_diff(self.probed_ms) >= DISK_PROBE_INTERVAL_MS
    }

    /// Reads the free space again (a failed read turns the check off until the next one).
    pub fn probe(&mut self) {
        if self.reserve == 0 {
            return;
        }
        self.free = self.vfs.free_bytes(&self.dir).ok().flatten();
        self.used_since = 0;
        self.probed_ms = self.clock.now_ms();
    }

    /// The writer wrote `bytes` more to the log; probes again when the last probe is old.
    pub fn wrote(&mut self, bytes: u64) {
        self.used_since = self.used_since.saturating_add(bytes);
        if self.reserve != 0 && self.stale() {
            self.probe();
        }
    }

    fn estimate(&self) -> Option<u64> {
        self.free.map(|f| f.saturating_sub(self.used_since))
    }

    /// Whether `bytes` more may be written by a push: `Err(DiskFull)` when that would leave
    /// less than the reserve (after a fresh probe, if the last one is old).
    pub fn check(&mut self, bytes: u64) -> Result<()> {
        if self.reserve == 0 {
            return Ok(());
        }
        let need = self.reserve.saturating_add(bytes);
        let fits = |e: Option<u64>| e.is_none_or(|f| f >= need);
        if fits(self.estimate()) {
            return Ok(());
        }
        if self.stale() {
            self.probe();
            if fits(self.estimate()) {
                return Ok(());
            }
        }
        Err(Error::DiskFull {
            dir: self.dir.clone(),
            free: self.estimate().unwrap_or(0),
            reserve: self.reserve,
        })
    }
}

impl Core {
    /// Opens a new pending frame at the end of the log: after the last pending frame, in the
    /// next segment once the current one has reached `segment_bytes`.
    pub fn open_frame(&mut self) {
        let frame = match self.spare.pop() {
            Some(buf) => FrameBuf::reuse(buf),
            None => FrameBuf::with_capacity(4096),
        };
        let at = self.next_placement();
        let prev_end = match self.pending.back() {
            Some(f) => (f.at.seg, f.at.off + f.frame.buf.len() as u64),
            None => self.tail,
        };
        if at.seg != prev_end.0 {
            // The previous segment is full: once a transaction writes into this frame, it is
            // sealed (nothing more goes into it) and its index can be written to a file.
            self.pending_seal = Some((prev_end.0, prev_end.1, at.lsn - 1));
            self.roll_early = false;
            self.roll_prepared = false;
        }
        self.next_lsn += 1;
        self.back_closed = false;
        self.pending.push_back(PendingFrame {
            frame,
            at,
            last_ticket: 0,
            signals: Vec::new(),
        });
    }

    /// The free-space reserve check of a push of `bytes`; a refusal also asks for an early
    /// segment roll, so that the space of consumed messages can be given back.
    pub fn check_space(&mut self, bytes: u64) -> Result<()> {
        let r = self.disk.check(bytes);
        if r.is_err() {
            self.roll_early = true;
        }
        r
    }

    /// Where a frame opened now would go.
    pub fn next_placement(&self) -> Placement {
        let (seg, off) = match self.pending.back() {
            Some(f) => (f.at.seg, f.at.off + f.frame.buf.len() as u64),
            None => self.tail,
        };
        let header = crate::frame::SEGMENT_HEADER_LEN as u64;
        let full = off >= self.segment_bytes
            || (self.roll_early && off >= ROLL_EARLY_MIN)
            || self.roll_prepared;
        let (seg, off) = if full && off > header {
            (seg + 1, header)
        } else {
            (seg, off)
        };
        Placement {
            seg,
            off,
            lsn: self.next_lsn,
        }
    }

    /// No transaction joins the last pending frame any more.
    pub fn close_back_frame(&mut self) {
        self.back_closed = true;
    }

    /// The end of the log, including pending frames: where the next frame would start (before
    /// any roll), and its LSN.
    pub fn log_end(&self) -> Placement {
        let (seg, off) = match self.pending.back() {
            Some(f) => (f.at.seg, f.at.off + f.frame.buf.len() as u64),
            None => self.tail,
        };
        Placement {
            seg,
            off,
            lsn: self.next_lsn,
        }
    }

    /// A transaction wrote into the last frame: if it is the first in a new segment, the
    /// previous segment is sealed.
    pub fn frame_used(&mut self) {
        if let Some((seg, len, last_lsn)) = self.pending_seal.take() {
            self.state.ix.seal(seg, len, last_lsn);
            self.maint_wanted = true;
        }
    }

    /// Drops the last pending frame if it holds nothing (a transaction opened it for nothing).
    pub fn drop_empty_frame(&mut self) {
        if self.pending.back().is_some_and(|f| f.frame.n_entries == 0) {
            if let Some(f) = self.pending.pop_back() {
                self.pending_seal = None;
                self.next_lsn -= 1;
                if self.spare.len() < SPARE_BUFFERS_MAX {
                    self.spare.push(f.frame.buf);
                }
            }
        }
    }

    /// Whether a record ending at `(seg, end)` is committed (readable from the files).
    pub fn is_committed(&self, seg: u64, end: u64) -> bool {
        (seg, end) <= self.committed_pos
    }
}

/// The adaptive linger waits at most this fraction of the last fsync's duration...
const LINGER_FRACTION: u32 = 1;
/// ...and never longer than this.
const LINGER_MAX: Duration = Duration::from_millis(1);

/// Written frame buffers kept for reuse: enough for the writer's group plus the one being
/// filled. Reuse matters: a fresh buffer of a few MiB costs a page fault per 4 KiB.
pub(crate) const SPARE_BUFFERS_MAX: usize = 4;
/// Buffers larger than this are not kept (one huge batch must not pin its memory).
pub(crate) const SPARE_BUFFER_BYTES_MAX: usize = 16 << 20;

#[derive(Debug, Default)]
pub(crate) struct CommitState {
    pub committed: u64,
    pub failed: Option<String>,
    pub wakers: Vec<Waker>,
    pub writer_done: bool,
    pub close_error: Option<String>,
}

/// State shared by store handles and the writer thread.
#[derive(Debug)]
pub(crate) struct Shared {
    pub core: Mutex<Core>,
    /// The writer waits on it for work.
    pub work_cv: Condvar,
    pub commit: Mutex<CommitState>,
    /// Reads records back from the log files.
    pub reader: crate::reader::LogReader,
    pub vfs: Arc<dyn crate::vfs::Vfs>,
    pub store_dir: std::path::PathBuf,
    pub log_dir: std::path::PathBuf,
    pub store_id: u64,
    /// The next blob id (blob files are named by it; never reused while the store is open,
    /// and above every blob file found at open).
    pub next_blob: AtomicU64,
    /// The maintenance thread waits on it.
    pub maint_cv: Condvar,
    /// Checkpoint bookkeeping (`None` when checkpoints are off).
    pub ckpt: Mutex<Option<crate::checkpoint::CkptState>>,
    /// Set once no ticket will ever be committed again (poisoned, or the writer stopped).
    pub ended: std::sync::atomic::AtomicBool,
    /// Mirror of `commit.committed`, readable under the store lock without taking `commit`.
    pub committed: AtomicU64,
    pub options: Options,
}

impl Shared {
    pub fn lock_core(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }
    pub fn lock_commit(&self) -> MutexGuard<'_, CommitState> {
        self.commit.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Blocks until `ticket` is committed. The calling thread must have registered itself in
    /// `Core::waiting` in the transaction that got the ticket; it parks until the writer unparks
    /// it (only when its ticket is covered, or the store failed or closed).
    pub fn wait_committed(&self, ticket: u64) -> Result<()> {
        loop {
            if self.committed.load(Ordering::Acquire) >= ticket {
                return Ok(());
            }
            if self.ended.load(Ordering::Acquire) {
                let c = self.lock_commit();
                if let Some(r) = Self::settled(&c, ticket) {
                    return r;
                }
            }
            std::thread::park();
        }
    }

    /// The outcome for `ticket` if it is known: committed, or never will be.
    fn settled(c: &CommitState, ticket: u64) -> Option<Result<()>> {
        if c.committed >= ticket {
            return Some(Ok(()));
        }
        if let Some(cause) = &c.failed {
            return Some(Err(Error::Poisoned {
                cause: cause.clone(),
            }));
        }
        if c.writer_done {
            return Some(Err(Error::Closed));
        }
        None
    }

    /// Blocks until `ticket` is committed, registering the calling thread to be woken.
    pub fn wait_ticket(&self, ticket: u64) -> Result<()> {
        {
            let mut core = self.lock_core();
            if self.committed.load(Ordering::Acquire) >= ticket {
                return Ok(());
            }
            core.waiting.push((ticket, std::thread::current()));
        }
        self.wait_committed(ticket)
    }

    /// Non-blocking check for futures: `Some` when done, else registers the waker.
    pub fn poll_committed(&self, ticket: u64, waker: &Waker) -> Option<Result<()>> {
        if self.committed.load(Ordering::Acquire) >= ticket {
            return Some(Ok(()));
        }
        let mut c = self.lock_commit();
        if let Some(r) = Self::settled(&c, ticket) {
            return Some(r);
        }
        if !c.wakers.iter().any(|w| w.will_wake(waker)) {
            c.wakers.push(waker.clone());
        }
        None
    }

    /// Publishes `ticket` as committed and wakes the futures waiting (threads are woken by the
    /// writer loop, see `Core::waiting`).
    fn complete(&self, ticket: u64) {
        let wakers = {
            let mut c = self.lock_commit();
            c.committed = ticket;
            self.committed.store(ticket, Ordering::Release);
            std::mem::take(&mut c.wakers)
        };
        for w in wakers {
            w.wake();
        }
    }

    /// After a failure or the writer's end: every waiter learns its outcome.
    fn wake_all(&self, mut c: MutexGuard<'_, CommitState>) {
        self.ended.store(true, Ordering::Release);
        let wakers = std::mem::take(&mut c.wakers);
        drop(c);
        let threads = std::mem::take(&mut self.lock_core().waiting);
        for (_, t) in threads {
            t.unpark();
        }
        for w in wakers {
            w.wake();
        }
    }

    pub(crate) fn poison(&self, cause: String) {
        {
            let mut core = self.lock_core();
            if core.poisoned.is_none() {
                core.poisoned = Some(cause.clone());
            }
            core.pending.clear();
            // Wake every blocked reader so it sees the poison.
            for q in core.state.queues.values() {
                q.signal.notify();
            }
            for t in core.state.topics.values() {
                t.signal.notify();
            }
        }
        let mut c = self.lock_commit();
        if c.failed.is_none() {
            c.failed = Some(cause);
        }
        self.wake_all(c);
    }

    fn finish(&self, close_error: Option<String>) {
        let mut c = self.lock_commit();
        c.writer_done = true;
        c.close_error = close_error;
        self.wake_all(c);
    }
}

/// The writer thread's loop. Returns when the store closes.
pub(crate) fn run(shared: &Arc<Shared>, mut seg: ActiveSegment) {
    if let Err(e) = seg.prepare_at_open() {
        shared.poison(e.to_string());
    }
    let durability = shared.options.durability;
    let interval = match durability {
        Durability::Interval(ms) => Some(Duration::from_millis(ms)),
        _ => None,
    };
    let mut last_sync = Instant::now();
    // For the adaptive linger: how long the last write + fsync took, how many transactions the
    // last group held, and the last ticket taken.
    let mut last_sync_duration = Duration::ZERO;
    let mut last_group = 0u64;
    let mut taken = 0u64;
    let mut core = shared.lock_core();
    loop {
        if core.pending.is_empty() {
            if core.closing || core.poisoned.is_some() {
                break;
            }
            core.writer_waiting = true;
            match interval {
                Some(iv) if seg.unsynced => {
                    let due = last_sync + iv;
                    let now = Instant::now();
                    if now < due {
                        core = shared
                            .work_cv
                            .wait_timeout(core, due - now)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0;
                    }
                    core.writer_waiting = false;
                    if core.pending.is_empty() && Instant::now() >= due {
                        drop(core);
                        if let Err(e) = seg.sync() {
                            let _ = seg.record_sync_failure();
                            shared.poison(e.to_string());
                        }
                        last_sync = Instant::now();
                        core = shared.lock_core();
                    }
                }
                _ => {
                    core = shared
                        .work_cv
                        .wait(core)
                        .unwrap_or_else(PoisonError::into_inner);
                    core.writer_waiting = false;
                }
            }
            continue;
        }
        // Adaptive linger (Sync only): when the last group held several transactions and fewer
        // are waiting now, wait a moment for the rest. Producers answered by the last commit
        // come back one by one; taking only the first would split them over two fsyncs and
        // halve the group size. Bounded by a fraction of the last fsync's duration; a lone
        // producer (groups of one) never waits.
        if durability == Durability::Sync && last_group > 1 {
            let deadline = Instant::now() + (last_sync_duration / LINGER_FRACTION).min(LINGER_MAX);
            while core.last_ticket - taken < last_group && !core.closing {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                core.writer_waiting = true;
                core = shared
                    .work_cv
                    .wait_timeout(core, deadline - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                core.writer_waiting = false;
            }
        }
        // Take a group: every waiting frame, up to the byte bound (at least one).
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        while let Some(f) = core.pending.front() {
            let len = f.frame.buf.len();
            if !batch.is_empty() && bytes + len > shared.options.group_bytes_max {
                break;
            }
            bytes += len;
            if let Some(f) = core.pending.pop_front() {
                batch.push(f);
            }
        }
        let group_end = batch.last().map_or(taken, |f| f.last_ticket);
        last_group = group_end - taken;
        taken = group_end;
        if let Some(f) = batch.last() {
            core.tail = (f.at.seg, f.at.off + f.frame.buf.len() as u64);
        }
        let group_pos = core.tail;
        drop(core);

        let now = shared.options.clock.now_ms();
        let sync_started = Instant::now();
        let mut result = Ok(());
        for f in &mut batch {
            if let Err(e) = seg.append(&mut f.frame, f.at, now) {
                result = Err(e);
                break;
            }
        }
        if result.is_ok() {
            let sync_now = match durability {
                Durability::Sync => true,
                Durability::Interval(_) => interval.is_some_and(|iv| last_sync.elapsed() >= iv),
                Durability::None => false,
            };
            if sync_now {
                result = seg.sync();
                last_sync = Instant::now();
                last_sync_duration = sync_started.elapsed();
            }
        }
        match result {
            Ok(()) => {
                // The position first (under the store lock), then the ticket: a caller answered
                // by this commit that reads right away must find its records readable.
                core = shared.lock_core();
                core.committed_pos = group_pos;
                core.disk.wrote(bytes as u64);
                let done: Vec<(u64, std::thread::Thread)> =
                    if core.waiting.iter().any(|(t, _)| *t <= group_end) {
                        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut core.waiting)
                            .into_iter()
                            .partition(|(t, _)| *t <= group_end);
                        core.waiting = waiting;
                        done
                    } else {
                        Vec::new()
                    };
                drop(core);
                // Waiters first, then the committers: once a push has returned, every wait
                // on its queue has been woken (a caller never sees its push ahead of that).
                for f in &batch {
                    for s in &f.signals {
                        s.notify();
                    }
                }
                shared.complete(group_end);
                for (_, t) in done {
                    t.unpark();
                }
            }
            Err(e) => {
                let _ = seg.record_sync_failure();
                shared.poison(e.to_string());
            }
        }
        core = shared.lock_core();
        // `SegmentPrep::Eager`: the prepared file is ready; the next frame opened goes there
        // (unless frames are already placed past this segment).
        if core.log_end().seg == seg.seg_id && seg.wants_prepared_roll() {
            core.roll_prepared = true;
        }
        for f in batch {
            if core.spare.len() < SPARE_BUFFERS_MAX
                && f.frame.buf.capacity() <= SPARE_BUFFER_BYTES_MAX
            {
                core.spare.push(f.frame.buf);
            }
        }
    }
    let poisoned = core.poisoned.is_some();
    // The close marker ends the current segment even when it is full (a segment may exceed
    // its size by one frame): a new segment just for it would leave the last one unsealed.
    let marker = core.log_end();
    drop(core);
    // Closing: a sealed log is a synced log, in every durability mode.
    let close_error = if poisoned {
        None
    } else {
        seg.close(Some(marker), shared.options.clock.now_ms())
            .err()
            .map(|e| e.to_string())
    };
    shared.finish(close_error);
}
