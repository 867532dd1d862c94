//! [`Store`]: opening a store directory, the transaction helper every operation goes through,
//! closing, and the future returned by the `*_async` calls. The operations themselves are in
//! `queue.rs` and `topic.rs`.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;

use crate::entry::{Entry, RecRef};
use crate::error::{Error, Result};
use crate::frame::{FormatFile, FORMAT_LEN, FORMAT_VERSION};
use crate::options::Options;
use crate::reader::LogReader;
use crate::recovery::{self, RecoveryReport};
use crate::signal::Signal;
use crate::state::At;
use crate::vfs::{LockError, MemVfs, OpenMode, OsVfs, Vfs, VfsLock};
use crate::writer::{self, CommitState, Core, Shared};

/// A crash-safe store of queues and topics in one directory. Cheap to clone; every clone is a
/// handle to the same store, usable from any thread. The store closes when the last handle is
/// dropped (or at [`Store::close`]).
#[derive(Clone, Debug)]
pub struct Store {
    pub(crate) inner: Arc<Handle>,
}

#[derive(Debug)]
pub(crate) struct Handle {
    pub shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
    maint: Mutex<Option<JoinHandle<()>>>,
    dir: PathBuf,
    report: RecoveryReport,
    store_id: u64,
    _lock: Box<dyn VfsLock>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

impl Handle {
    fn shutdown(&self) -> Result<()> {
        // A clean close leaves a checkpoint at the end of the log: the next open replays
        // (almost) nothing.
        let poisoned = self.shared.lock_core().poisoned.is_some();
        let checkpoint = if poisoned || self.shared.lock_core().closing {
            Ok(None)
        } else {
            // The index files of the segments sealed since the last housekeeping, then the
            // checkpoint: a cleanly closed store has everything in place.
            crate::maint::write_indexes(&self.shared)
                .and_then(|_| crate::checkpoint::take(&self.shared))
        };
        {
            let mut core = self.shared.lock_core();
            core.closing = true;
        }
        self.shared.work_cv.notify_all();
        self.shared.maint_cv.notify_all();
        let maint = self
            .maint
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(h) = maint {
            let _ = h.join();
        }
        let handle = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
        let c = self.shared.lock_commit();
        if let Some(e) = &c.close_error {
            return Err(Error::Poisoned { cause: e.clone() });
        }
        checkpoint.map(|_| ())
    }
}

pub(crate) fn blob_err(e: crate::blob::BlobError) -> Error {
    use crate::blob::BlobError;
    match e {
        BlobError::Io { op, path, source } => Error::io(op, path, source),
        other => Error::Format {
            path: std::path::PathBuf::new(),
            reason: other.to_string(),
        },
    }
}

/// How long `open` retries a held lock before it reports [`Error::Locked`].
const LOCK_RETRY: std::time::Duration = std::time::Duration::from_millis(250);

/// A random-enough store id: only used to tell segments of different stores apart.
fn new_store_id(now_ms: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ms);
    h.write_u32(std::process::id());
    h.finish() | 1
}

impl Store {
    /// Opens (creating when missing) the store in directory `dir` on the real file system.
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<Store> {
        Self::open_with_vfs(Arc::new(OsVfs), dir, options)
    }

    /// A store held in memory (same code, an in-memory file system): for tests and caches.
    pub fn in_memory() -> Result<Store> {
        // No prepared segments: in memory they would only hold megabytes of zeros.
        let options = Options {
            segment_prep: crate::options::SegmentPrep::Off,
            ..Options::default()
        };
        Self::open_with_vfs(Arc::new(MemVfs::new()), "/spool", options)
    }

    /// Opens a store on any [`Vfs`] (the crash simulator of `spool-testkit`, for instance).
    pub fn open_with_vfs(
        vfs: Arc<dyn Vfs>,
        dir: impl AsRef<Path>,
        options: Options,
    ) -> Result<Store> {
        options.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let now = options.clock.now_ms();
        let existed = vfs.exists(&dir).map_err(|e| Error::io("stat", &dir, e))?;
        if !existed {
            vfs.create_dir_all(&dir)
                .map_err(|e| Error::io("create directory", &dir, e))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                vfs.sync_dir(parent)
                    .map_err(|e| Error::io("sync directory", parent, e))?;
            }
        }
        let lock = Self::lock_dir(vfs.as_ref(), &dir)?;
        let format = Self::read_or_create_format(vfs.as_ref(), &dir, now)?;
        let log_dir = dir.join("log");
        if !vfs
            .exists(&log_dir)
            .map_err(|e| Error::io("stat", &log_dir, e))?
        {
            vfs.create_dir_all(&log_dir)
                .map_err(|e| Error::io("create directory", &log_dir, e))?;
            vfs.sync_dir(&dir)
                .map_err(|e| Error::io("sync directory", &dir, e))?;
        }
        let recovered = recovery::recover(
            &vfs,
            &dir,
            &log_dir,
            format.store_id,
            options.recovery,
            options.segment_bytes,
            options.checkpoint_bytes > 0,
            now,
        )?;
        let ckpt_state = match &recovered.checkpoints {
            Some((loaded, kept, covers)) => Some(crate::checkpoint::CkptState {
                writer: crate::ckpt::CkptWriter::new(&dir, format.store_id, loaded, *kept)
                    .map_err(|e| Error::Format {
                        path: dir.clone(),
                        reason: e.to_string(),
                    })?,
                covers: *covers,
                at: std::time::Instant::now(),
            }),
            None => None,
        };
        // Directory entries: an earlier fsync of a directory may have failed (the store was
        // poisoned, its caller told), leaving a segment, `log/` or the store itself not durable.
        // Sync them again before anything new is acknowledged.
        for d in [Some(log_dir.as_path()), Some(dir.as_path()), dir.parent()]
            .into_iter()
            .flatten()
            .filter(|p| !p.as_os_str().is_empty())
        {
            vfs.sync_dir(d)
                .map_err(|e| Error::io("sync directory", d, e))?;
        }
        // Blobs: what a crash left half written goes; a blob no live message refers to (written
        // for a push that never became durable, or whose deletion a crash cut short) goes too.
        let mut recovered = recovered;
        crate::blob::wipe_tmp(vfs.as_ref(), &dir).map_err(blob_err)?;
        // A segment prepared by the last run may be half written: made again when needed.
        let prep = log_dir.join(crate::segment::PREP_FILE);
        if vfs.exists(&prep).map_err(|e| Error::io("stat", &prep, e))? {
            vfs.remove_file(&prep)
                .map_err(|e| Error::io("remove prepared segment", &prep, e))?;
        }
        let blobs = crate::blob::list_blobs(vfs.as_ref(), &dir).map_err(blob_err)?;
        let next_blob = blobs.iter().max().map_or(1, |m| m + 1);
        for b in blobs {
            if !recovered.state.blob_refs.contains_key(&b) {
                crate::blob::remove_blob(vfs.as_ref(), &dir, b).map_err(blob_err)?;
                recovered.report.orphan_blobs_removed += 1;
            }
        }
        recovered.state.dead_blobs.clear();
        let mut active = recovered.active;
        active.prep = crate::segment::Prep::new(options.segment_prep);
        let tail = (active.seg_id, active.offset);
        let shared = Arc::new(Shared {
            core: Mutex::new(Core {
                state: recovered.state,
                pending: std::collections::VecDeque::new(),
                last_ticket: 0,
                poisoned: None,
                closing: false,
                writer_waiting: false,
                spare: Vec::new(),
                waiting: Vec::new(),
                tail,
                next_lsn: active.next_lsn,
                committed_pos: tail,
                segment_bytes: options.segment_bytes,
                maint_wanted: false,
                pending_seal: None,
                back_closed: false,
                roll_early: false,
                roll_prepared: false,
                disk: crate::writer::DiskSpace::new(
                    vfs.clone(),
                    dir.clone(),
                    options.clock.clone(),
                    options.min_free_bytes,
                ),
            }),
            reader: LogReader::new(vfs.clone(), &log_dir),
            vfs: vfs.clone(),
            store_dir: dir.clone(),
            log_dir: log_dir.clone(),
            store_id: format.store_id,
            next_blob: AtomicU64::new(next_blob),
            maint_cv: Condvar::new(),
            ckpt: Mutex::new(ckpt_state),
            work_cv: Condvar::new(),
            commit: Mutex::new(CommitState::default()),
            ended: std::sync::atomic::AtomicBool::new(false),
            committed: AtomicU64::new(0),
            options,
        });
        let w = shared.clone();
        let writer = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer::run(&w, active))
            .map_err(|e| Error::io("spawn writer thread", &dir, e))?;
        let maint = if shared.options.maintenance == crate::options::Maintenance::Background {
            let m = shared.clone();
            Some(
                std::thread::Builder::new()
                    .name("spool-maint".into())
                    .spawn(move || crate::maint::run(&m))
                    .map_err(|e| Error::io("spawn maintenance thread", &dir, e))?,
            )
        } else {
            None
        };
        Ok(Store {
            inner: Arc::new(Handle {
                shared,
                writer: Mutex::new(Some(writer)),
                maint: Mutex::new(maint),
                dir,
                report: recovered.report,
                store_id: format.store_id,
                _lock: lock,
            }),
        })
    }

    /// Takes the store's exclusive lock. A lock that is held is retried for a moment
    /// (`LOCK_RETRY`): when any thread of this process spawns a child, the child holds copies
    /// of every open descriptor, our `flock`ed LOCK file among them, until its `exec` closes
    /// them; a store closed and reopened in that window would otherwise see itself as locked.
    fn lock_dir(vfs: &dyn Vfs, dir: &Path) -> Result<Box<dyn VfsLock>> {
        let path = dir.join("LOCK");
        let deadline = std::time::Instant::now() + LOCK_RETRY;
        let mut pause = std::time::Duration::from_millis(1);
        loop {
            match vfs.lock(&path) {
                Ok(l) => return Ok(l),
                Err(LockError::Held { pid }) => {
                    if std::time::Instant::now() >= deadline {
                        return Err(Error::Locked {
                            dir: dir.to_path_buf(),
                            pid,
                        });
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_millis(50));
                }
                Err(LockError::Io(e)) => return Err(Error::io("lock", path, e)),
            }
        }
    }

    fn read_or_create_format(vfs: &dyn Vfs, dir: &Path, now: u64) -> Result<FormatFile> {
        let path = dir.join("FORMAT");
        if vfs.exists(&path).map_err(|e| Error::io("stat", &path, e))? {
            let f = vfs
                .open(&path, OpenMode::Read)
                .map_err(|e| Error::io("open", &path, e))?;
            let len = f.len().map_err(|e| Error::io("stat", &path, e))?;
            if len != FORMAT_LEN as u64 {
                return Err(Error::Format {
                    path,
                    reason: format!("FORMAT file has {len} bytes, expected {FORMAT_LEN}"),
                });
            }
            let mut b = [0u8; FORMAT_LEN];
            f.read_exact_at(&mut b, 0)
                .map_err(|e| Error::io("read", &path, e))?;
            return FormatFile::decode(&b).map_err(|reason| Error::Format { path, reason });
        }
        // A new store, or one whose creation was cut before FORMAT became durable. FORMAT is
        // made durable before anything else is written, so a log without it is not ours.
        let log_dir = dir.join("log");
        if vfs
            .exists(&log_dir)
            .map_err(|e| Error::io("stat", &log_dir, e))?
            && !recovery::list_segments(vfs, &log_dir)?.is_empty()
        {
            return Err(Error::Format {
                path,
                reason: "the FORMAT file is missing but log segments exist; restore FORMAT or salvage the store".into(),
            });
        }
        let others: Vec<String> = vfs
            .read_dir(dir)
            .map_err(|e| Error::io("list", dir, e))?
            .into_iter()
            .filter(|n| !matches!(n.as_str(), "LOCK" | "log" | "FORMAT.tmp"))
            .collect();
        if !others.is_empty() {
            return Err(Error::Format {
                path: dir.to_path_buf(),
                reason: format!(
                    "the directory is not empty and is not a spool store (it holds {}); use an empty or new directory",
                    others.join(", ")
                ),
            });
        }
        let format = FormatFile {
            version: FORMAT_VERSION,
            store_id: new_store_id(now),
            created_ms: now,
        };
        let tmp = dir.join("FORMAT.tmp");
        let f = vfs
            .open(&tmp, OpenMode::Create)
            .map_err(|e| Error::io("create", &tmp, e))?;
        f.set_len(0).map_err(|e| Error::io("truncate", &tmp, e))?;
        f.write_all_at(&format.encode(), 0)
            .map_err(|e| Error::io("write", &tmp, e))?;
        f.sync_data().map_err(|e| Error::io("sync", &tmp, e))?;
        drop(f);
        vfs.rename(&tmp, &path)
            .map_err(|e| Error::io("rename", &tmp, e))?;
        vfs.sync_dir(dir)
            .map_err(|e| Error::io("sync directory", dir, e))?;
        Ok(format)
    }

    /// Closes the store: waits for pending writes, syncs the log, stops the writer thread, and
    /// releases the directory lock once the last handle is gone. Other handles get
    /// [`Error::Closed`] afterwards.
    pub fn close(self) -> Result<()> {
        self.inner.shutdown()
    }

    /// Why the store refuses writes, if it does: a write or `fdatasync` failed, and from then
    /// on every write is refused until the store is opened again (which recovers it). For
    /// health checks.
    pub fn poisoned(&self) -> Option<String> {
        self.shared().lock_core().poisoned.clone()
    }

    /// The configuration a queue gets when it is created without one
    /// ([`Options::default_queue`]): what a front end starts from when asked to create a queue
    /// with some settings given.
    pub fn default_queue_config(&self) -> crate::QueueConfig {
        self.shared().options.default_queue.clone()
    }

    /// The configuration a topic gets when it is created without one
    /// ([`Options::default_topic`]).
    pub fn default_topic_config(&self) -> crate::TopicConfig {
        self.shared().options.default_topic.clone()
    }

    /// What recovery found when the store was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.inner.report
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The id written in `FORMAT` when the store was created.
    pub fn store_id(&self) -> u64 {
        self.inner.store_id
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    pub(crate) fn now(&self) -> u64 {
        self.inner.shared.options.clock.now_ms()
    }

    /// Runs `f` under the store lock. Entries `f` emits are encoded into the pending frame and
    /// applied to the state at once; the returned ticket (if any was emitted) is what the
    /// caller waits on before answering. `f` must check everything before it emits anything.
    pub(crate) fn txn<R>(
        &self,
        f: impl FnOnce(&mut Txn<'_>) -> Result<R>,
    ) -> Result<(R, Option<u64>)> {
        self.txn_with(f, true)
    }

    /// [`Store::txn`]; `park` registers the calling thread to be unparked when the ticket is
    /// committed (for [`Store::wait`]; futures are woken through their wakers instead).
    fn txn_with<R>(
        &self,
        f: impl FnOnce(&mut Txn<'_>) -> Result<R>,
        park: bool,
    ) -> Result<(R, Option<u64>)> {
        txn_on(&self.inner.shared, f, park)
    }

    /// Waits until `ticket` (if any) is committed.
    pub(crate) fn wait(&self, ticket: Option<u64>) -> Result<()> {
        match ticket {
            Some(t) => self.inner.shared.wait_committed(t),
            None => Ok(()),
        }
    }

    /// Runs a transaction and waits for it to be committed.
    pub(crate) fn commit<R>(&self, f: impl FnOnce(&mut Txn<'_>) -> Result<R>) -> Result<R> {
        let (r, ticket) = self.txn(f)?;
        self.wait(ticket)?;
        Ok(r)
    }

    /// Runs a transaction that hands out messages, and reads their records. When every one of
    /// those records is committed already (usual: a backlog), they are read while the writer
    /// syncs the transaction, overlapping its `fdatasync` instead of following it; a record
    /// still in a pending frame (pushed a moment ago) may not be in the file yet, so then the
    /// read waits for the commit (which covers the record: its frame comes first). Either way
    /// the messages are returned only once the transaction is committed.
    pub(crate) fn commit_read(
        &self,
        f: impl FnOnce(&mut Txn<'_>) -> Result<Vec<crate::message::Out>>,
    ) -> Result<Vec<crate::message::Message>> {
        let shared = &self.inner.shared;
        let ((outs, committed, pins), ticket) = self.txn(|txn| {
            let committed = txn.core.committed_pos;
            let outs = f(txn)?;
            let pins = crate::reader::SegPins::new(shared, outs.iter().map(|o| o.rec.seg));
            Ok((outs, committed, pins))
        })?;
        let msgs = self.read_then_wait(&outs, committed, ticket);
        drop(pins);
        msgs
    }

    /// The second half of [`Store::commit_read`]: `committed` is the committed position read in
    /// the transaction that handed out `outs`, `ticket` that transaction's.
    pub(crate) fn read_then_wait(
        &self,
        outs: &[crate::message::Out],
        committed: (u64, u64),
        ticket: Option<u64>,
    ) -> Result<Vec<crate::message::Message>> {
        let on_disk = outs
            .iter()
            .all(|o| (o.rec.seg, u64::from(o.rec.off) + u64::from(o.rec.len)) <= committed);
        if on_disk {
            let msgs = crate::message::read_messages(&self.inner.shared, outs);
            self.wait(ticket)?;
            msgs
        } else {
            self.wait(ticket)?;
            crate::message::read_messages(&self.inner.shared, outs)
        }
    }

    /// Runs a transaction and returns a future completed when it is committed.
    pub(crate) fn commit_async<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Txn<'_>) -> Result<R>,
    ) -> Committed<R> {
        self.commit_async_then(f, |_, r| Ok(r))
    }

    /// [`Store::commit_async`], with `then` run on the transaction's result once it is
    /// committed (reading the records of leased messages, for instance).
    pub(crate) fn commit_async_then<T: Send + 'static, R: 'static>(
        &self,
        f: impl FnOnce(&mut Txn<'_>) -> Result<T>,
        then: fn(&Shared, T) -> Result<R>,
    ) -> Committed<R> {
        match self.txn_with(f, false) {
            Ok((t, ticket)) => Committed {
                shared: self.inner.shared.clone(),
                ticket,
                value: Some(Ok(Box::new(move |s: &Shared| then(s, t)))),
            },
            Err(e) => Committed {
                shared: self.inner.shared.clone(),
                ticket: None,
                value: Some(Err(e)),
            },
        }
    }

    /// Waits until everything emitted so far (by any handle) is committed.
    pub(crate) fn wait_for_pending(&self) -> Result<()> {
        let shared = &self.inner.shared;
        let ticket = {
            let mut core = shared.lock_core();
            let t = core.last_ticket;
            if shared.committed.load(Ordering::Acquire) >= t {
                return Ok(());
            }
            core.waiting.push((t, std::thread::current()));
            t
        };
        shared.wait_committed(ticket)
    }
}

/// Runs `f` as a transaction on the store behind `shared` (see [`Store::txn`]); `park`
/// registers the calling thread to be unparked when its ticket is committed.
pub(crate) fn txn_on<R>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&mut Txn<'_>) -> Result<R>,
    park: bool,
) -> Result<(R, Option<u64>)> {
    let mut core = shared.lock_core();

    if let Some(cause) = &core.poisoned {
        return Err(Error::Poisoned {
            cause: cause.clone(),
        });
    }
    if core.closing {
        return Err(Error::Closed);
    }
    let ticket = core.last_ticket + 1;
    let now = shared.options.clock.now_ms();
    let group_max = shared.options.group_bytes_max;
    // A transaction joins the last pending frame while it is below the group size; a
    // frame's placement is fixed when it is opened (entries' locations are final at once).
    if core.back_closed
        || core
            .pending
            .back()
            .is_none_or(|f| f.frame.entries_len() >= group_max)
    {
        core.open_frame();
    }
    let mut txn = Txn {
        core: &mut core,
        reader: &shared.reader,
        now,
        emitted: 0,
        emitted_bytes: 0,
        signals: Vec::new(),
    };
    let result = f(&mut txn);
    if txn.emitted > 0 && txn.core.pending_seal.is_some() {
        // The first transaction in a new segment: it restates the catalog, so that a replay
        // starting at this segment knows every queue, topic and counter.
        for e in txn.core.state.catalog_entries() {
            txn.emit(e);
        }
    }
    let emitted = txn.emitted;
    let signals = std::mem::take(&mut txn.signals);
    if emitted == 0 {
        core.drop_empty_frame();
        return result.map(|r| (r, None));
    }
    core.last_ticket = ticket;
    core.frame_used();
    if park {
        core.waiting.push((ticket, std::thread::current()));
    }
    if let Some(back) = core.pending.back_mut() {
        back.last_ticket = ticket;
        for s in signals {
            if !back.signals.iter().any(|x| Arc::ptr_eq(x, &s)) {
                back.signals.push(s);
            }
        }
    }
    let wake = core.writer_waiting;
    let maint = core.maint_wanted;
    drop(core);
    if wake {
        shared.work_cv.notify_one();
    }
    if maint {
        shared.maint_cv.notify_one();
    }
    result.map(|r| (r, Some(ticket)))
}

/// One operation's access to the state and the pending log frame.
pub(crate) struct Txn<'a> {
    pub core: &'a mut Core,
    /// For the rare operations that read a (committed) record under the lock: dead-letter
    /// moves and redrives copy the message.
    pub reader: &'a LogReader,
    pub now: u64,
    emitted: u32,
    emitted_bytes: usize,
    signals: Vec<Arc<Signal>>,
}

impl Txn<'_> {
    /// Writes `entry` to the pending frame and applies it to the state.
    pub fn emit(&mut self, entry: Entry) {
        let mut at = None;
        if let Some(back) = self.core.pending.back_mut() {
            let start = back.frame.buf.len();
            entry.encode(&mut back.frame.buf);
            back.frame.n_entries += 1;
            let len = back.frame.buf.len() - start;
            self.emitted_bytes += len;
            if matches!(entry, Entry::Enqueue(_) | Entry::Publish { .. }) {
                at = Some(At {
                    seg: back.at.seg,
                    off: (back.at.off + start as u64) as u32,
                    len: len as u32,
                    crc: crc32c::crc32c(&back.frame.buf[start..]),
                });
            }
        }
        self.emitted += 1;
        self.core.state.apply(entry, at);
    }

    /// Bytes emitted so far (operations that copy messages bound themselves by it).
    pub fn emitted_bytes(&self) -> usize {
        self.emitted_bytes
    }

    /// Reads a record under the lock, if it is committed (else `None`: not visible yet).
    pub fn read_committed(&self, rec: &RecRef) -> Option<Result<Vec<u8>>> {
        if !self
            .core
            .is_committed(rec.seg, u64::from(rec.off) + u64::from(rec.len))
        {
            return None;
        }
        Some(self.reader.read(rec))
    }

    /// Wakes waiters on this queue or topic once the transaction is committed.
    pub fn touch(&mut self, signal: &Arc<Signal>) {
        if !self.signals.iter().any(|s| Arc::ptr_eq(s, signal)) {
            self.signals.push(signal.clone());
        }
    }
}

/// The future returned by the `*_async` calls: resolves once the operation's log frame is
/// durable (per the store's [`Durability`](crate::Durability)). It needs no async runtime: the
/// writer thread wakes it.
#[must_use = "the operation is applied at once, but only durable when this future completes"]
pub struct Committed<R> {
    shared: Arc<Shared>,
    ticket: Option<u64>,
    value: Option<Result<Finish<R>>>,
}

type Finish<R> = Box<dyn FnOnce(&Shared) -> Result<R> + Send>;

impl<R> std::fmt::Debug for Committed<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committed")
            .field("ticket", &self.ticket)
            .finish_non_exhaustive()
    }
}

impl<R> Committed<R> {
    /// Whether the transaction was refused when it was applied (bad input, a full queue, a
    /// poisoned store...): then nothing was written, and awaiting gives the error at once.
    /// Lets a caller that batched several requests into one transaction fall back to applying
    /// them one by one, in order, before it applies anything after them.
    pub fn is_refused(&self) -> bool {
        self.ticket.is_none() && matches!(self.value, Some(Err(_)))
    }
}

impl<R> Future for Committed<R> {
    type Output = Result<R>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<R>> {
        let this = &mut *self;
        if let Some(t) = this.ticket {
            match this.shared.poll_committed(t, cx.waker()) {
                None => return Poll::Pending,
                Some(Err(e)) => {
                    this.value = None;
                    return Poll::Ready(Err(e));
                }
                Some(Ok(())) => {}
            }
        }
        match this.value.take() {
            Some(Ok(finish)) => Poll::Ready(finish(&this.shared)),
            Some(Err(e)) => Poll::Ready(Err(e)),
            None => Poll::Ready(Err(Error::Closed)),
        }
    }
}
