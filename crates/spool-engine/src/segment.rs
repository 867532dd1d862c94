//! The active end of the log: appending sealed frames to the current segment and rolling to a
//! new segment when it is full. Owned by the writer thread alone.
//!
//! Rolling is ordered for crash safety: the old segment is `fdatasync`ed (in every durability
//! mode: a sealed segment is always complete on disk), the new file is created with its header,
//! synced, and the `log/` directory is fsynced, before any frame in it can be acknowledged.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::frame::{segment_file_name, FrameBuf, SegmentHeader, SEGMENT_HEADER_LEN};
use crate::options::SegmentPrep;
use crate::vfs::{OpenMode, Vfs, VfsFile};

/// Where a frame goes: segment, byte offset, LSN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Placement {
    pub seg: u64,
    pub off: u64,
    pub lsn: u64,
}

/// What a new segment is: its header's fields and the size it rolls at.
struct NewSegment {
    store_id: u64,
    seg_id: u64,
    base_lsn: u64,
    now_ms: u64,
    segment_bytes: u64,
}

/// The segment frames are appended to.
#[derive(Debug)]
pub(crate) struct ActiveSegment {
    pub vfs: Arc<dyn Vfs>,
    pub log_dir: PathBuf,
    pub store_id: u64,
    pub seg_id: u64,
    pub file: Arc<dyn VfsFile>,
    pub path: PathBuf,
    /// Where the next frame goes (the end of the last valid frame).
    pub offset: u64,
    /// LSN of the next frame.
    pub next_lsn: u64,
    /// Size at which to roll.
    pub segment_bytes: u64,
    /// Bytes written since the last `fdatasync`.
    pub unsynced: bool,
    /// Every frame up to this LSN is durable (stamped into each new frame as `synced_lsn`).
    pub synced_lsn: u64,
    /// Every byte of the segment before this offset is durable.
    pub synced_offset: u64,
    /// Set when creating the next segment failed: (its id, 0), what a failure marker must
    /// name instead of this segment.
    pub failed_next: Option<(u64, u64)>,
    /// Whether a frame was appended since the store was opened.
    pub appended: bool,
    /// The next segment's file, made ready ahead of the roll.
    pub prep: Prep,
    /// Whether this segment was made from a prepared file (its commits overwrite).
    pub from_prep: bool,
}

/// The name of the next segment's file while it is being prepared (zeros, `segment_bytes`
/// long). A roll renames it to the next segment's name. Never a segment: recovery ignores it
/// and an open removes it.
pub(crate) const PREP_FILE: &str = "next.seg.prep";
/// Zeros written per call while preparing (and between checks of the cancel flag).
const PREP_CHUNK: usize = 1 << 20;

/// The preparation of the next segment's file ([`SegmentPrep`]).
#[derive(Debug, Default)]
pub(crate) struct Prep {
    mode: SegmentPrep,
    state: PrepState,
}

#[derive(Debug, Default)]
enum PrepState {
    /// Not started for the next roll.
    #[default]
    Idle,
    /// Not for this segment (too little free space, or preparing failed): append.
    Skipped,
    /// Being written on its own thread; the thread answers whether the file is complete.
    Running {
        handle: std::thread::JoinHandle<bool>,
        cancel: Arc<AtomicBool>,
    },
    /// `PREP_FILE` is complete and synced.
    Ready,
}

impl Prep {
    pub(crate) fn new(mode: SegmentPrep) -> Prep {
        Prep {
            mode,
            state: PrepState::Idle,
        }
    }

    /// Whether a complete prepared file is there, without taking it.
    fn is_ready(&mut self) -> bool {
        if let PrepState::Running { handle, .. } = &self.state {
            if !handle.is_finished() {
                return false;
            }
            if let PrepState::Running { handle, .. } = std::mem::take(&mut self.state) {
                self.state = if handle.join().unwrap_or(false) {
                    PrepState::Ready
                } else {
                    PrepState::Skipped
                };
            }
        }
        matches!(self.state, PrepState::Ready)
    }

    /// Whether a complete prepared file is there (waits for nothing: a preparation still
    /// running is left running for a later roll).
    fn take_ready(&mut self) -> bool {
        if let PrepState::Running { handle, .. } = &self.state {
            if !handle.is_finished() {
                return false;
            }
        }
        match std::mem::take(&mut self.state) {
            PrepState::Ready => true,
            PrepState::Running { handle, .. } => handle.join().unwrap_or(false),
            PrepState::Idle | PrepState::Skipped => false,
        }
    }

    /// Stops a preparation under way and waits for its thread.
    fn stop(&mut self) {
        if let PrepState::Running { handle, cancel } = std::mem::take(&mut self.state) {
            cancel.store(true, Ordering::Relaxed);
            let _ = handle.join();
        }
    }
}

impl Drop for Prep {
    fn drop(&mut self) {
        // Not joined (a writer thread ending on a poisoned store must not wait): the thread
        // stops within one chunk, and the file it leaves is removed by the next open.
        if let PrepState::Running { cancel, .. } = &self.state {
            cancel.store(true, Ordering::Relaxed);
        }
    }
}

/// Writes `PREP_FILE` in `log_dir`: `len` bytes of zeros, synced. `Ok(false)` when
/// cancelled. On failure or cancel the file is removed (the roll then appends instead).
fn prepare_file(
    vfs: &dyn Vfs,
    log_dir: &Path,
    len: u64,
    cancel: &AtomicBool,
) -> std::io::Result<bool> {
    let path = log_dir.join(PREP_FILE);
    let write = || -> std::io::Result<bool> {
        let f = vfs.open(&path, OpenMode::Create)?;
        f.set_len(0)?;
        let zeros = vec![0u8; PREP_CHUNK];
        let mut off = 0u64;
        while off < len {
            if cancel.load(Ordering::Relaxed) {
                return Ok(false);
            }
            let n = (len - off).min(PREP_CHUNK as u64) as usize;
            f.write_all_at(&zeros[..n], off)?;
            off += n as u64;
        }
        f.sync_data()?;
        Ok(true)
    };
    let r = write();
    if !matches!(r, Ok(true)) {
        let _ = vfs.remove_file(&path);
    }
    r
}

impl ActiveSegment {
    /// Creates segment `seg_id` whose first frame will have LSN `base_lsn`, durably (file
    /// synced, directory synced).
    pub fn create(
        vfs: Arc<dyn Vfs>,
        log_dir: &Path,
        store_id: u64,
        seg_id: u64,
        base_lsn: u64,
        now_ms: u64,
        segment_bytes: u64,
    ) -> Result<Self> {
        let path = log_dir.join(segment_file_name(seg_id));
        let file = vfs
            .open(&path, OpenMode::CreateNew)
            .map_err(|e| Error::io("create segment", &path, e))?;
        let new = NewSegment {
            store_id,
            seg_id,
            base_lsn,
            now_ms,
            segment_bytes,
        };
        Self::init(vfs, log_dir, &new, file, path, false)
    }

    /// Like [`ActiveSegment::create`], from the prepared file: renamed to the segment's name,
    /// its header written, synced, the directory synced. `Ok(None)` when a file of that name
    /// is in the way (nothing changed; `create` reports it).
    fn create_prepared(
        vfs: Arc<dyn Vfs>,
        log_dir: &Path,
        new: &NewSegment,
    ) -> Result<Option<Self>> {
        let prep = log_dir.join(PREP_FILE);
        let path = log_dir.join(segment_file_name(new.seg_id));
        // A rename replaces its target; creating a segment must never replace one (`create`
        // then reports the file that is in the way).
        if vfs
            .exists(&path)
            .map_err(|e| Error::io("stat segment", &path, e))?
        {
            return Ok(None);
        }
        vfs.rename(&prep, &path)
            .map_err(|e| Error::io("rename prepared segment", &prep, e))?;
        let file = vfs
            .open(&path, OpenMode::ReadWrite)
            .map_err(|e| Error::io("open segment", &path, e))?;
        Self::init(vfs, log_dir, new, file, path, true).map(Some)
    }

    /// A new segment's file made durable: its header written and synced, the directory synced.
    fn init(
        vfs: Arc<dyn Vfs>,
        log_dir: &Path,
        new: &NewSegment,
        file: Arc<dyn VfsFile>,
        path: PathBuf,
        from_prep: bool,
    ) -> Result<Self> {
        let header = SegmentHeader {
            store_id: new.store_id,
            seg_id: new.seg_id,
            base_lsn: new.base_lsn,
            created_ms: new.now_ms,
        };
        file.write_all_at(&header.encode(), 0)
            .map_err(|e| Error::io("write segment header", &path, e))?;
        file.sync_data()
            .map_err(|e| Error::io("sync segment", &path, e))?;
        vfs.sync_dir(log_dir)
            .map_err(|e| Error::io("sync directory", log_dir, e))?;
        Ok(Self {
            vfs,
            log_dir: log_dir.to_path_buf(),
            store_id: new.store_id,
            seg_id: new.seg_id,
            file,
            path,
            offset: SEGMENT_HEADER_LEN as u64,
            next_lsn: new.base_lsn,
            segment_bytes: new.segment_bytes,
            unsynced: false,
            synced_lsn: new.base_lsn.saturating_sub(1),
            synced_offset: SEGMENT_HEADER_LEN as u64,
            failed_next: None,
            appended: false,
            prep: Prep::default(),
            from_prep,
        })
    }

    /// With [`SegmentPrep::Eager`], at open: starts the preparation now.
    pub fn prepare_at_open(&mut self) -> Result<()> {
        if self.prep.mode == SegmentPrep::Eager {
            self.start_prep(true)?;
        }
        Ok(())
    }

    /// Whether the next frame should go to the next segment now: `Eager`, this segment was not
    /// prepared, and the prepared file is ready.
    pub fn wants_prepared_roll(&mut self) -> bool {
        self.prep.mode == SegmentPrep::Eager && !self.from_prep && self.prep.is_ready()
    }

    /// Starts preparing the next segment's file once this one is half full. Only `Inline`
    /// fails (its file operations are the writer's own, as the crash simulation expects of
    /// every file operation); a background preparation that fails is given up.
    fn maybe_prepare(&mut self) -> Result<()> {
        self.start_prep(false)
    }

    /// Starts the preparation if it is due (`now`: whatever this segment's fill).
    fn start_prep(&mut self, now: bool) -> Result<()> {
        if self.prep.mode == SegmentPrep::Off
            || !matches!(self.prep.state, PrepState::Idle)
            || (!now && self.offset < self.segment_bytes / 2)
        {
            return Ok(());
        }
        // Never at the cost of the space kept for acks and checkpoints.
        let room = self.segment_bytes.saturating_mul(2);
        if matches!(self.vfs.free_bytes(&self.log_dir), Ok(Some(free)) if free < room) {
            self.prep.state = PrepState::Skipped;
            return Ok(());
        }
        let len = self.segment_bytes;
        self.prep.state = match self.prep.mode {
            SegmentPrep::Off => PrepState::Skipped,
            SegmentPrep::Inline => {
                self.prep.state = PrepState::Skipped;
                prepare_file(
                    self.vfs.as_ref(),
                    &self.log_dir,
                    len,
                    &AtomicBool::new(false),
                )
                .map_err(|e| Error::io("prepare segment", self.log_dir.join(PREP_FILE), e))?;
                PrepState::Ready
            }
            SegmentPrep::Background | SegmentPrep::Eager => {
                let cancel = Arc::new(AtomicBool::new(false));
                let (vfs, dir, c) = (self.vfs.clone(), self.log_dir.clone(), cancel.clone());
                match std::thread::Builder::new()
                    .name("spool-prep".into())
                    .spawn(move || prepare_file(vfs.as_ref(), &dir, len, &c).unwrap_or(false))
                {
                    Ok(handle) => PrepState::Running { handle, cancel },
                    Err(_) => PrepState::Skipped,
                }
            }
        };
        Ok(())
    }

    /// Seals `frame` with its LSN and appends it at its placement (decided when the frame was
    /// opened, see `writer::Core::open_frame`): the next segment means rolling first.
    pub fn append(&mut self, frame: &mut FrameBuf, at: Placement, now_ms: u64) -> Result<()> {
        if at.seg != self.seg_id {
            if at.seg != self.seg_id + 1 || at.off != SEGMENT_HEADER_LEN as u64 {
                return Err(self.misplaced(at));
            }
            self.roll(now_ms)?;
        }
        if at.off != self.offset || at.lsn != self.next_lsn {
            return Err(self.misplaced(at));
        }
        let frame = frame.seal(self.next_lsn, self.synced_lsn);
        self.file
            .write_all_at(frame, self.offset)
            .map_err(|e| Error::io("write", &self.path, e))?;
        self.offset += frame.len() as u64;
        self.next_lsn += 1;
        self.unsynced = true;
        self.appended = true;
        self.maybe_prepare()
    }

    fn misplaced(&self, at: Placement) -> Error {
        Error::Format {
            path: self.path.clone(),
            reason: format!(
                "internal error: a frame placed at segment {} offset {} LSN {} does not follow the log end (segment {} offset {} LSN {})",
                at.seg, at.off, at.lsn, self.seg_id, self.offset, self.next_lsn
            ),
        }
    }

    /// At a clean close: syncs, then appends an empty frame (placed by the caller at the log
    /// end) whose `synced_lsn` proves that the whole log before it is durable (so later damage
    /// to the last frames is reported as damage instead of being cut as a torn tail), and syncs
    /// it. Only if something was written since the store was opened, so that opening and
    /// closing a store does not grow its log.
    pub fn close(&mut self, marker: Option<Placement>, now_ms: u64) -> Result<()> {
        self.prep.stop();
        self.sync()?;
        if let (true, Some(at)) = (self.appended, marker) {
            let mut frame = FrameBuf::with_capacity(0);
            self.append(&mut frame, at, now_ms)?;
            self.prep.stop();
            self.sync()?;
        }
        // The prepared zeros after the last frame: a reopen need not read them.
        let len = self
            .file
            .len()
            .map_err(|e| Error::io("stat", &self.path, e))?;
        if len > self.offset {
            self.file
                .set_len(self.offset)
                .map_err(|e| Error::io("truncate", &self.path, e))?;
            self.file
                .sync_data()
                .map_err(|e| Error::io("sync", &self.path, e))?;
        }
        let prep = self.log_dir.join(PREP_FILE);
        if self
            .vfs
            .exists(&prep)
            .map_err(|e| Error::io("stat", &prep, e))?
        {
            self.vfs
                .remove_file(&prep)
                .map_err(|e| Error::io("remove prepared segment", &prep, e))?;
        }
        Ok(())
    }

    /// `fdatasync` of the active segment, if anything was written since the last one.
    pub fn sync(&mut self) -> Result<()> {
        if self.unsynced {
            self.file
                .sync_data()
                .map_err(|e| Error::io("sync", &self.path, e))?;
            self.unsynced = false;
            self.synced_lsn = self.next_lsn - 1;
            self.synced_offset = self.offset;
        }
        Ok(())
    }

    fn roll(&mut self, now_ms: u64) -> Result<()> {
        self.sync()?;
        let next_id = self
            .seg_id
            .checked_add(1)
            .filter(|&id| id <= crate::frame::SEGMENT_ID_MAX + 1)
            .ok_or_else(|| Error::Format {
                path: self.path.clone(),
                reason: "segment numbers exhausted".into(),
            })?;
        // A sealed segment ends at its last frame (an early roll leaves prepared zeros).
        let len = self
            .file
            .len()
            .map_err(|e| Error::io("stat", &self.path, e))?;
        if len > self.offset {
            self.file
                .set_len(self.offset)
                .map_err(|e| Error::io("truncate", &self.path, e))?;
            self.file
                .sync_data()
                .map_err(|e| Error::io("sync", &self.path, e))?;
        }
        let dir = self.log_dir.clone();
        let prepared = if self.prep.take_ready() {
            let new = NewSegment {
                store_id: self.store_id,
                seg_id: next_id,
                base_lsn: self.next_lsn,
                now_ms,
                segment_bytes: self.segment_bytes,
            };
            Self::create_prepared(self.vfs.clone(), &dir, &new)
        } else {
            Ok(None)
        };
        let next = match prepared {
            Ok(Some(next)) => Ok(next),
            Ok(None) => Self::create(
                self.vfs.clone(),
                &dir,
                self.store_id,
                next_id,
                self.next_lsn,
                now_ms,
                self.segment_bytes,
            ),
            Err(e) => Err(e),
        }
        .inspect_err(|_| {
            // Its header may sit in the page cache only (a failed fsync): recovery must write
            // it again (nothing in it was acknowledged).
            self.failed_next = Some((next_id, 0));
        })?;
        let appended = self.appended;
        let prep = std::mem::take(&mut self.prep);
        *self = next;
        self.appended = appended;
        // A preparation still running carries over to the next roll.
        self.prep = prep;
        Ok(())
    }
}

/// Name of the marker a failed write or fsync leaves in `log/` (see [`record_sync_failure`]).
pub(crate) const SYNC_FAILED_FILE: &str = "SYNC_FAILED";
/// Bytes of the marker: seg_id u64, offset u64, crc32c u32.
const SYNC_FAILED_LEN: usize = 20;

impl ActiveSegment {
    /// After a write or `fdatasync` of the active segment failed: records, in a small file of
    /// its own, from which offset the segment is not known to be durable. The pages of a failed
    /// fsync are marked clean by the kernel although they never reached the disk (fsyncgate),
    /// so a reopen on the same machine would read them back and build on them; recovery uses
    /// this marker to write that region again and sync it before anything is appended. Only
    /// bytes that were never acknowledged are rewritten, so a crash during the rewrite loses
    /// nothing that was. Best effort: if the disk refuses this too, it is gone for good anyway.
    pub fn record_sync_failure(&self) -> Result<()> {
        let (seg_id, from) = self
            .failed_next
            .unwrap_or((self.seg_id, self.synced_offset));
        record_sync_failure(self.vfs.as_ref(), &self.log_dir, seg_id, from)
    }
}

/// Writes the failure marker: segment `seg_id` is not known durable from offset `from` on.
pub(crate) fn record_sync_failure(
    vfs: &dyn Vfs,
    log_dir: &Path,
    seg_id: u64,
    from: u64,
) -> Result<()> {
    {
        let mut b = [0u8; SYNC_FAILED_LEN];
        b[0..8].copy_from_slice(&seg_id.to_le_bytes());
        b[8..16].copy_from_slice(&from.to_le_bytes());
        let crc = crc32c::crc32c(&b[..16]);
        b[16..20].copy_from_slice(&crc.to_le_bytes());
        let path = log_dir.join(SYNC_FAILED_FILE);
        let f = vfs
            .open(&path, OpenMode::Create)
            .map_err(|e| Error::io("create", &path, e))?;
        f.set_len(0).map_err(|e| Error::io("truncate", &path, e))?;
        f.write_all_at(&b, 0)
            .map_err(|e| Error::io("write", &path, e))?;
        f.sync_data().map_err(|e| Error::io("sync", &path, e))?;
        vfs.sync_dir(log_dir)
            .map_err(|e| Error::io("sync directory", log_dir, e))
    }
}

/// Reads the marker left by [`ActiveSegment::record_sync_failure`]: (segment, offset).
pub(crate) fn read_sync_failure(vfs: &dyn Vfs, log_dir: &Path) -> Option<(u64, u64)> {
    let path = log_dir.join(SYNC_FAILED_FILE);
    let f = vfs.open(&path, OpenMode::Read).ok()?;
    let mut b = [0u8; SYNC_FAILED_LEN];
    f.read_exact_at(&mut b, 0).ok()?;
    let crc = u32::from_le_bytes([b[16], b[17], b[18], b[19]]);
    if crc32c::crc32c(&b[..16]) != crc {
        return None;
    }
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[0..8]);
    let seg = u64::from_le_bytes(a);
    a.copy_from_slice(&b[8..16]);
    Some((seg, u64::from_le_bytes(a)))
}

/// Name of the file that records where the log starts once segments were deleted.
pub(crate) const FIRST_FILE: &str = "FIRST";

/// Records, durably, that the log starts at segment `seg` (the ones before it are about to be
/// deleted): a replay of the whole log (when no checkpoint is usable) then knows a missing
/// prefix was deleted, not lost. 12 bytes: seg_id u64, crc32c u32.
pub(crate) fn write_first(vfs: &dyn Vfs, log_dir: &Path, seg: u64) -> Result<()> {
    let mut b = [0u8; 12];
    b[0..8].copy_from_slice(&seg.to_le_bytes());
    let crc = crc32c::crc32c(&b[..8]);
    b[8..12].copy_from_slice(&crc.to_le_bytes());
    let path = log_dir.join(FIRST_FILE);
    let f = vfs
        .open(&path, OpenMode::Create)
        .map_err(|e| Error::io("create", &path, e))?;
    f.write_all_at(&b, 0)
        .map_err(|e| Error::io("write", &path, e))?;
    f.sync_data().map_err(|e| Error::io("sync", &path, e))?;
    vfs.sync_dir(log_dir)
        .map_err(|e| Error::io("sync directory", log_dir, e))
}

/// Where the log starts (see [`write_first`]): `Ok(None)` when no segment was ever deleted,
/// `Err` with a reason when the file is damaged.
pub(crate) fn read_first(
    vfs: &dyn Vfs,
    log_dir: &Path,
) -> std::result::Result<Option<u64>, String> {
    let path = log_dir.join(FIRST_FILE);
    let f = match vfs.open(&path, OpenMode::Read) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("log/{FIRST_FILE}: {e}")),
    };
    let mut b = [0u8; 12];
    f.read_exact_at(&mut b, 0)
        .map_err(|e| format!("log/{FIRST_FILE}: {e}"))?;
    let crc = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
    if crc32c::crc32c(&b[..8]) != crc {
        return Err(format!("log/{FIRST_FILE} is damaged (checksum mismatch)"));
    }
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    Ok(Some(u64::from_le_bytes(a)))
}
