//! `spool inspect verify`: a read-only walk of a whole store directory that checks every byte
//! the format protects, and says precisely what is wrong and where.
//!
//! What is checked (layouts in `docs/format.md`):
//! - `FORMAT`: length, magic, checksum, version;
//! - both checkpoint slots (`ckpt.0`, `ckpt.1`): header and payload checksums; the payload of
//!   every valid slot is decoded, and the log position it covers must be a frame boundary of
//!   the log whose frame has the LSN it names (or the end of the log);
//! - every segment, in order: its header (magic, checksum, this store, its own number, its base
//!   LSN continuing the previous segment), segment numbers without gaps, and every frame
//!   (magic, length bound, CRC32C, LSN exactly one above the previous one, entries that
//!   decode, entry count). A bad frame is a damaged range (segment, offset, LSN range, bytes,
//!   reason) exactly as recovery would report it, except a **torn tail** (the end of the last
//!   segment, with no later frame proving it durable), which is informational: recovery cuts it
//!   and nothing in it was acknowledged;
//! - the index file of every sealed segment, validated in full against the segment as it is
//!   now, and compared lane by lane with the records the walk found. A missing or stale index
//!   is informational (the engine rebuilds it); a damaged one is a problem;
//! - files that do not belong to a store.
//!
//! The walk takes the store's lock (so it never races a writer: an open store is
//! [`Error::Locked`]), changes nothing, holds at most one frame (plus a 1 MiB window) of a
//! segment in memory, never panics on any bytes, and reports progress as it reads.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::checkpoint;
use crate::ckpt::{self, CkptError, SlotState, SlotStatus};
use crate::entry::{decode_entries_at, Entry};
use crate::error::{Error, Result};
use crate::frame::{
    check_frame, parse_segment_file_name, segment_file_name, FormatFile, FrameCheck, SegmentHeader,
    FORMAT_LEN, FRAME_HEADER_LEN, FRAME_MAGIC, SEGMENT_HEADER_LEN, SEGMENT_ID_MAX,
};
use crate::lanes::{index_entry, IndexStore};
use crate::recovery::{DamagedRange, TornTail};
use crate::segindex::{self, Expect, IdxEntry, IdxError, IdxFile, LaneKey};
use crate::state::At;
use crate::vfs::{LockError, OpenMode, OsVfs, Vfs, VfsFile, VfsLock};

/// Bytes read at a time from a segment (a frame longer than this is read whole).
const CHUNK: usize = 1 << 20;
/// The progress callback is called about once per this many bytes.
const PROGRESS_STEP: u64 = 1 << 20;
/// How long a held lock is retried (a child process may briefly hold a copy of the lock's
/// descriptor, see `Store::lock_dir`).
const LOCK_RETRY: Duration = Duration::from_millis(250);
/// Index entries compared per read.
const IDX_READ: usize = 4096;

/// What kind of thing a [`Problem`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProblemKind {
    /// `FORMAT` is missing, damaged or of another version.
    Format,
    /// A checkpoint slot is damaged, or a valid checkpoint does not decode or does not match
    /// the log.
    Checkpoint,
    /// Segments are missing, a segment header is bad, or a segment's LSNs do not continue the
    /// previous segment's.
    Segment,
    /// Frames inside a segment are damaged (length, checksum, LSN or entries).
    Frames,
    /// An index file is damaged or does not match its segment.
    Index,
}

impl ProblemKind {
    /// A short lower-case name (`format`, `checkpoint`, `segment`, `frames`, `index`).
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::Format => "format",
            ProblemKind::Checkpoint => "checkpoint",
            ProblemKind::Segment => "segment",
            ProblemKind::Frames => "frames",
            ProblemKind::Index => "index",
        }
    }
}

/// Something wrong in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub kind: ProblemKind,
    /// The file concerned, relative to the store directory (`log/00000000000000000003.seg`).
    pub file: String,
    /// What is wrong, and what it means.
    pub message: String,
    /// For damage in the log: the stretch lost, as recovery reports it.
    pub range: Option<DamagedRange>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.message)
    }
}

/// A position in the log: where replay resumes after a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPosition {
    pub segment: u64,
    pub offset: u64,
    /// The LSN of the frame at that position.
    pub next_lsn: u64,
}

/// A valid checkpoint slot and what its content says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointInfo {
    pub slot: u8,
    pub generation: u64,
    pub payload_bytes: u64,
    /// The end of the log it covers (`None` when its content does not decode).
    pub covers: Option<LogPosition>,
    /// Its content decodes and (in a [`VerifyReport`]) the position it covers is a frame
    /// boundary of the log with the LSN it names, or the end of the log.
    pub ok: bool,
}

/// The checkpoint slots of a store (see [`read_checkpoints`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointScan {
    /// Both slots, slot 0 first.
    pub slots: Vec<SlotState>,
    /// The valid slots, newest first.
    pub checkpoints: Vec<CheckpointInfo>,
    /// Damaged slots, and valid slots whose content does not decode.
    pub problems: Vec<Problem>,
    /// Informational findings (a slot wiped after a failed write).
    pub notes: Vec<String>,
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VerifyReport {
    /// The store directory.
    pub dir: PathBuf,
    /// From `FORMAT` (or, when it is damaged, from the first segment header).
    pub store_id: Option<u64>,
    /// When the store was created (Unix ms), from `FORMAT`.
    pub created_ms: Option<u64>,
    /// Segment files walked.
    pub segments: u64,
    /// Bytes of the segment files.
    pub bytes: u64,
    /// Valid frames (a torn tail's frames are not counted).
    pub frames: u64,
    /// Bytes of the valid frames.
    pub frame_bytes: u64,
    /// Entries in the valid frames.
    pub entries: u64,
    /// LSN of the first frame of the log (0 when it has none).
    pub first_lsn: u64,
    /// LSN of the last valid frame (0 when there is none).
    pub last_lsn: u64,
    /// Index files of sealed segments that are sound and match their segment.
    pub index_files_ok: u64,
    /// Sealed segments without an index file (informational: rebuilt by the engine).
    pub index_files_missing: u64,
    /// Index files of another state of their segment (informational: rebuilt by the engine).
    pub index_files_stale: u64,
    /// Index files damaged, or not matching their segment's records.
    pub index_files_bad: u64,
    /// Both checkpoint slots, slot 0 first (empty when the store id is unknown).
    pub checkpoint_slots: Vec<SlotState>,
    /// The valid checkpoints, newest first.
    pub checkpoints: Vec<CheckpointInfo>,
    /// The torn tail the next open cuts, if any (informational).
    pub torn_tail: Option<TornTail>,
    /// Everything wrong. Empty means the store is sound.
    pub problems: Vec<Problem>,
    /// Informational findings: nothing is lost, the engine deals with them.
    pub notes: Vec<String>,
    /// Files (relative to the store directory) that are not part of a store. The engine
    /// ignores them; they are reported so that they can be looked at and removed.
    pub stray_files: Vec<String>,
}

impl VerifyReport {
    /// Whether nothing is wrong (notes and stray files do not count).
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// The damaged stretches of the log, as recovery reports them.
    pub fn damaged(&self) -> impl Iterator<Item = &DamagedRange> {
        self.problems.iter().filter_map(|p| p.range.as_ref())
    }
}

/// [`verify`] on the real file system.
pub fn verify_dir(dir: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<VerifyReport> {
    let vfs: Arc<dyn Vfs> = Arc::new(OsVfs);
    verify(&vfs, dir, progress)
}

/// Walks the store in `dir` and checks everything (see the module documentation). Takes the
/// store's lock for the duration ([`Error::Locked`] when the store is open elsewhere) and
/// changes nothing. `progress` is called now and then with (bytes done, bytes in total).
///
/// Errors are for what prevents the walk (not a store, locked, an I/O error); everything
/// found in the files is in the report.
pub fn verify(
    vfs: &Arc<dyn Vfs>,
    dir: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<VerifyReport> {
    let v = vfs.as_ref();
    let log_dir = dir.join("log");
    let has_format = exists(v, &dir.join("FORMAT"))?;
    let has_log = exists(v, &log_dir)?;
    if !has_format && !has_log {
        return Err(Error::Format {
            path: dir.to_path_buf(),
            reason: "there is no FORMAT file and no log/ directory: check the path".into(),
        });
    }
    let _lock = lock(v, dir)?;
    let mut w = Verifier {
        vfs: vfs.clone(),
        dir: dir.to_path_buf(),
        log_dir,
        report: VerifyReport {
            dir: dir.to_path_buf(),
            ..VerifyReport::default()
        },
        progress,
        seg_done: 0,
        idx_done: 0,
        total: 0,
        reported: 0,
        wanted: Vec::new(),
        seen: Vec::new(),
    };
    w.run(has_log)?;
    Ok(w.report)
}

/// Reads and checks the checkpoint slots of store `store_id` in `dir`, and decodes each valid
/// one (what `spool inspect stats` shows). Takes no lock: call it while holding the store open
/// with manual maintenance, or on a closed store.
pub fn read_checkpoints(vfs: &Arc<dyn Vfs>, dir: &Path, store_id: u64) -> Result<CheckpointScan> {
    let v = vfs.as_ref();
    let log_dir = dir.join("log");
    let loaded = ckpt::load(v, dir, store_id).map_err(|e| ckpt_err(dir, e))?;
    let mut scan = CheckpointScan {
        slots: loaded.slots.to_vec(),
        checkpoints: Vec::new(),
        problems: Vec::new(),
        notes: Vec::new(),
    };
    for s in &loaded.slots {
        if let SlotStatus::Invalid { reason } = &s.status {
            let file = format!("ckpt.{}", s.slot);
            if reason.starts_with("header is all zeroes") {
                scan.notes.push(format!(
                    "{file}: {reason}: a checkpoint write failed and was wiped; the next checkpoint goes there"
                ));
            } else {
                scan.problems.push(Problem {
                    kind: ProblemKind::Checkpoint,
                    file,
                    message: format!(
                        "invalid: {reason}; opening uses the other slot or replays the whole log (nothing is lost), and the next checkpoint overwrites this slot"
                    ),
                    range: None,
                });
            }
        }
    }
    let candidates = loaded.candidates();
    let mut best = loaded.best;
    for (slot, generation) in candidates {
        let payload = match best.take() {
            Some((g, p)) if g == generation => Some(p),
            other => {
                best = other;
                ckpt::load_slot(v, dir, store_id, slot)
                    .map_err(|e| ckpt_err(dir, e))?
                    .map(|(_, p)| p)
            }
        };
        let Some(payload) = payload else { continue };
        let ix = IndexStore::new(vfs.clone(), &log_dir, store_id);
        let decoded = checkpoint::decode(&payload, ix).map(|(covers, _state)| covers);
        let mut info = CheckpointInfo {
            slot,
            generation,
            payload_bytes: payload.len() as u64,
            covers: None,
            ok: false,
        };
        match decoded {
            Ok(c) => {
                info.covers = Some(LogPosition {
                    segment: c.seg,
                    offset: c.off,
                    next_lsn: c.next_lsn,
                });
                info.ok = true;
            }
            Err(why) => scan.problems.push(Problem {
                kind: ProblemKind::Checkpoint,
                file: format!("ckpt.{slot}"),
                message: format!(
                    "checkpoint generation {generation} passes its checksums but its content does not decode ({why}); opening falls back to the other slot or to the whole log"
                ),
                range: None,
            }),
        }
        scan.checkpoints.push(info);
    }
    Ok(scan)
}

// ---------------------------------------------------------------------------------------------

fn exists(v: &dyn Vfs, path: &Path) -> Result<bool> {
    v.exists(path).map_err(|e| Error::io("stat", path, e))
}

fn lock(v: &dyn Vfs, dir: &Path) -> Result<Box<dyn VfsLock>> {
    let path = dir.join("LOCK");
    let deadline = Instant::now() + LOCK_RETRY;
    let mut pause = Duration::from_millis(1);
    loop {
        match v.lock(&path) {
            Ok(l) => return Ok(l),
            Err(LockError::Held { pid }) => {
                if Instant::now() >= deadline {
                    return Err(Error::Locked {
                        dir: dir.to_path_buf(),
                        pid,
                    });
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(LockError::Io(e)) => return Err(Error::io("lock", path, e)),
        }
    }
}

fn ckpt_err(dir: &Path, e: CkptError) -> Error {
    match e {
        CkptError::Io { op, path, source } => Error::io(op, path, source),
        other => Error::Format {
            path: dir.to_path_buf(),
            reason: other.to_string(),
        },
    }
}

fn seg_file(id: u64) -> String {
    format!("log/{}", segment_file_name(id))
}

fn idx_file(id: u64) -> String {
    format!("log/{}", segindex::idx_file_name(id))
}

/// A segment as listed, before it is walked.
struct SegInfo {
    id: u64,
    path: PathBuf,
    len: u64,
    /// The header as decoded (checksum and magic), before it is compared with the store.
    header: std::result::Result<SegmentHeader, String>,
}

/// A window over a file: at most one chunk, or one frame, in memory.
struct Reader {
    file: Arc<dyn VfsFile>,
    path: PathBuf,
    len: u64,
    buf: Vec<u8>,
    start: u64,
}

impl Reader {
    /// Up to `n` bytes at `pos` (fewer at the end of the file).
    fn get(&mut self, pos: u64, n: usize) -> Result<&[u8]> {
        if pos >= self.len {
            return Ok(&[]);
        }
        let end = pos.saturating_add(n as u64).min(self.len);
        let want = usize::try_from(end - pos).unwrap_or(usize::MAX);
        let held_end = self.start + self.buf.len() as u64;
        if pos < self.start || end > held_end {
            let fill = usize::try_from((self.len - pos).min(want.max(CHUNK) as u64))
                .unwrap_or(want.max(CHUNK));
            self.buf.clear();
            if self.buf.capacity() > 4 * CHUNK && fill <= CHUNK {
                // A large frame was read before: give that memory back.
                self.buf.shrink_to(CHUNK);
            }
            self.buf.resize(fill, 0);
            self.file
                .read_exact_at(&mut self.buf, pos)
                .map_err(|e| Error::io("read segment", &self.path, e))?;
            self.start = pos;
        }
        let s = usize::try_from(pos - self.start).unwrap_or(0);
        Ok(&self.buf[s..s + want])
    }
}

/// A frame whose checksum is valid.
struct FrameInfo {
    lsn: u64,
    synced_lsn: u64,
    len: u64,
    entries: u64,
    /// The index entries of its records, or why its entries do not decode.
    records: std::result::Result<Vec<(LaneKey, IdxEntry)>, String>,
}

enum Frame {
    Valid(FrameInfo),
    Bad(String),
}

/// Checks the frame at `pos` of segment `seg`; with `decode`, decodes its entries too.
fn frame_at(rd: &mut Reader, seg: u64, pos: u64, decode: bool) -> Result<Frame> {
    let body_len = {
        let head = rd.get(pos, FRAME_HEADER_LEN)?;
        if head.len() < FRAME_HEADER_LEN {
            return Ok(Frame::Bad(match check_frame(head) {
                FrameCheck::Invalid(w) => w.to_string(),
                _ => "frame cut short".to_string(),
            }));
        }
        if let FrameCheck::Invalid(w) = check_frame(head) {
            return Ok(Frame::Bad(w.to_string()));
        }
        u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize
    };
    let bytes = rd.get(pos, FRAME_HEADER_LEN + body_len)?;
    match check_frame(bytes) {
        FrameCheck::Valid {
            lsn,
            synced_lsn,
            n_entries,
            entries,
            len,
        } => {
            let records = if decode {
                let body = &bytes[entries.clone()];
                let base = pos + entries.start as u64;
                let mut recs = Vec::new();
                let decoded = decode_entries_at(
                    body,
                    usize::try_from(base).unwrap_or(usize::MAX),
                    |e, off, elen| {
                        if let Entry::Enqueue(q) = &e {
                            let at = At {
                                seg,
                                off: u32::try_from(base + off as u64).unwrap_or(u32::MAX),
                                len: elen as u32,
                                crc: crc32c::crc32c(&body[off..off + elen]),
                            };
                            if let Some(ke) = index_entry(q, at) {
                                recs.push(ke);
                            }
                        }
                    },
                );
                match decoded {
                    Ok(n) if n as u64 == u64::from(n_entries) => Ok(recs),
                    Ok(_) => Err("frame entry count mismatch".to_string()),
                    Err(e) => Err(e.to_string()),
                }
            } else {
                Ok(Vec::new())
            };
            Ok(Frame::Valid(FrameInfo {
                lsn,
                synced_lsn,
                len: len as u64,
                entries: u64::from(n_entries),
                records,
            }))
        }
        FrameCheck::Truncated => Ok(Frame::Bad("frame cut short".to_string())),
        FrameCheck::Invalid(w) => Ok(Frame::Bad(w.to_string())),
    }
}

/// A valid frame found by scanning.
#[derive(Clone, Copy)]
struct Found {
    offset: u64,
    lsn: u64,
}

/// Whether every byte from `from` to the end is zero (a prepared segment's unused part).
fn all_zero(rd: &mut Reader, from: u64) -> Result<bool> {
    let mut at = from;
    while at < rd.len {
        let n = usize::try_from((rd.len - at).min(CHUNK as u64)).unwrap_or(CHUNK);
        if rd.get(at, n)?.iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

/// The first valid frame at or after `from` with an LSN above `min_lsn` (as recovery's scanner,
/// reading a chunk at a time).
fn scan_next(rd: &mut Reader, seg: u64, from: u64, min_lsn: u64) -> Result<Option<Found>> {
    let magic = FRAME_MAGIC.to_le_bytes();
    let mut at = from;
    while at.saturating_add(FRAME_HEADER_LEN as u64) <= rd.len {
        let hit = {
            let chunk = rd.get(at, CHUNK)?;
            chunk.windows(4).position(|w| w == magic).ok_or(chunk.len())
        };
        match hit {
            Ok(rel) => {
                let c = at + rel as u64;
                if let Frame::Valid(f) = frame_at(rd, seg, c, false)? {
                    if f.lsn > min_lsn {
                        return Ok(Some(Found {
                            offset: c,
                            lsn: f.lsn,
                        }));
                    }
                }
                at = c + 1;
            }
            Err(n) => {
                if n < 4 {
                    break;
                }
                at += (n - 3) as u64;
            }
        }
    }
    Ok(None)
}

/// What the records of one lane of a segment add up to (to compare with its index file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct LaneSum {
    n: u64,
    first: u64,
    last: u64,
    crc: u32,
}

impl LaneSum {
    fn add(&mut self, e: &IdxEntry) {
        if self.n > 0 && e.id <= self.last {
            // As the engine builds it: ids strictly increase.
            return;
        }
        if self.n == 0 {
            self.first = e.id;
        }
        self.n += 1;
        self.last = e.id;
        self.crc = crc32c::crc32c_append(self.crc, &e.encode());
    }
}

/// A bad frame in the last segment, not yet known to be damage or a torn tail.
struct Pending {
    range: DamagedRange,
    lsn: u64,
    /// The highest `synced_lsn` of a valid frame after it.
    max_synced: u64,
    /// Counters when it was found (restored if it is a torn tail).
    frames: u64,
    frame_bytes: u64,
    entries: u64,
    last_lsn: u64,
    seen: usize,
}

struct Verifier<'a> {
    vfs: Arc<dyn Vfs>,
    dir: PathBuf,
    log_dir: PathBuf,
    report: VerifyReport,
    progress: &'a mut dyn FnMut(u64, u64),
    seg_done: u64,
    idx_done: u64,
    total: u64,
    reported: u64,
    /// The positions valid checkpoints cover (index into `report.checkpoints`).
    wanted: Vec<(usize, LogPosition)>,
    /// Checkpoint positions met by the walk: (index into `wanted`, LSN of the frame there).
    seen: Vec<(usize, u64)>,
}

impl Verifier<'_> {
    fn problem(&mut self, kind: ProblemKind, file: String, message: String) {
        self.report.problems.push(Problem {
            kind,
            file,
            message,
            range: None,
        });
    }

    fn damage(&mut self, kind: ProblemKind, file: String, range: DamagedRange) {
        self.report.problems.push(Problem {
            kind,
            file,
            message: range.to_string(),
            range: Some(range),
        });
    }

    /// The walk has read `seg_done` bytes of segments (index files are counted as they are
    /// checked).
    fn tick(&mut self, seg_done: u64) {
        self.seg_done = seg_done;
        let done = (seg_done + self.idx_done).min(self.total);
        if done > self.reported && (done >= self.reported + PROGRESS_STEP || done == self.total) {
            self.reported = done;
            (self.progress)(done, self.total);
        }
    }

    /// The walk is at `pos` in segment `seg`, where LSN `lsn` is due.
    fn boundary(&mut self, seg: u64, pos: u64, lsn: u64) {
        for (i, (_, w)) in self.wanted.iter().enumerate() {
            if w.segment == seg && w.offset == pos {
                self.seen.push((i, lsn));
            }
        }
    }

    fn run(&mut self, has_log: bool) -> Result<()> {
        let v = self.vfs.clone();
        let v = v.as_ref();
        let format = self.check_format()?;

        // --- what the directories hold
        for name in v
            .read_dir(&self.dir)
            .map_err(|e| Error::io("list", &self.dir, e))?
        {
            match name.as_str() {
                "LOCK" | "FORMAT" | "ckpt.0" | "ckpt.1" | "log" | "blob" | "tmp" => {}
                "FORMAT.tmp" => {
                    self.report.stray_files.push(name);
                    self.report.notes.push(
                        "FORMAT.tmp: left by a store creation a crash interrupted; it can be removed"
                            .into(),
                    );
                }
                _ => self.report.stray_files.push(name),
            }
        }
        let mut seg_ids = Vec::new();
        let mut idx_ids = Vec::new();
        let mut sync_failed = false;
        if has_log {
            for name in v
                .read_dir(&self.log_dir)
                .map_err(|e| Error::io("list", &self.log_dir, e))?
            {
                if let Some(id) = parse_segment_file_name(&name) {
                    seg_ids.push(id);
                } else if let Some(id) = segindex::parse_idx_file_name(&name) {
                    idx_ids.push(id);
                } else if name == crate::segment::SYNC_FAILED_FILE {
                    sync_failed = true;
                } else if name == crate::segment::PREP_FILE {
                    // The next segment being prepared (removed by the next open).
                } else {
                    self.report.stray_files.push(format!("log/{name}"));
                }
            }
        } else {
            self.problem(
                ProblemKind::Segment,
                "log".into(),
                "the log/ directory is missing: every message is gone".into(),
            );
        }
        seg_ids.sort_unstable();
        idx_ids.sort_unstable();

        // --- segment headers and sizes (64 bytes each)
        let mut segs = Vec::with_capacity(seg_ids.len());
        for &id in &seg_ids {
            let path = self.log_dir.join(segment_file_name(id));
            let f = v
                .open(&path, OpenMode::Read)
                .map_err(|e| Error::io("open segment", &path, e))?;
            let len = f.len().map_err(|e| Error::io("stat segment", &path, e))?;
            let mut h = vec![0u8; SEGMENT_HEADER_LEN.min(usize::try_from(len).unwrap_or(0))];
            f.read_exact_at(&mut h, 0)
                .map_err(|e| Error::io("read segment", &path, e))?;
            let header = SegmentHeader::decode(&h).map_err(ToString::to_string);
            segs.push(SegInfo {
                id,
                path,
                len,
                header,
            });
        }
        let store_id = format.map(|f| f.store_id).or_else(|| {
            segs.iter()
                .find_map(|s| s.header.as_ref().ok().map(|h| h.store_id))
        });
        self.report.store_id = store_id;
        self.report.created_ms = format.map(|f| f.created_ms);
        if sync_failed {
            let note = match crate::segment::read_sync_failure(v, &self.log_dir) {
                Some((seg, off)) => format!(
                    "log/SYNC_FAILED: a write or fsync failed in the last session; the next open writes segment {seg} again from offset {off} and syncs it"
                ),
                None => "log/SYNC_FAILED: a failure marker that does not parse; the next open removes it".into(),
            };
            self.report.notes.push(note);
        }

        // --- checkpoints
        match store_id {
            Some(id) => {
                let scan = read_checkpoints(&self.vfs, &self.dir, id)?;
                self.report.checkpoint_slots = scan.slots;
                self.report.problems.extend(scan.problems);
                self.report.notes.extend(scan.notes);
                self.report.checkpoints = scan.checkpoints;
                self.wanted = self
                    .report
                    .checkpoints
                    .iter()
                    .enumerate()
                    .filter_map(|(i, c)| c.covers.map(|p| (i, p)))
                    .collect();
            }
            None => self.report.notes.push(
                "the store id is unknown (no readable FORMAT and no readable segment header): checkpoints were not checked".into(),
            ),
        }

        // --- progress total: the segments and the index files of sealed segments
        self.total = segs.iter().map(|s| s.len).sum();
        let last_seg = seg_ids.last().copied();
        for &id in &idx_ids {
            if seg_ids.binary_search(&id).is_ok() && Some(id) != last_seg {
                let path = segindex::idx_path(&self.log_dir, id);
                if let Ok(f) = v.open(&path, OpenMode::Read) {
                    self.total += f.len().unwrap_or(0);
                }
            }
        }
        (self.progress)(0, self.total);

        // --- the log
        self.walk(&segs, store_id)?;

        // --- index files without a sealed segment
        for &id in &idx_ids {
            if seg_ids.binary_search(&id).is_err() {
                self.report.stray_files.push(idx_file(id));
                self.report.notes.push(format!(
                    "{}: the index of segment {id}, which does not exist; it can be removed",
                    idx_file(id)
                ));
            } else if Some(id) == last_seg {
                self.report.notes.push(format!(
                    "{}: an index of the active (last) segment, so stale; it is written again when the segment is sealed",
                    idx_file(id)
                ));
            }
        }

        // --- what the checkpoints cover
        self.resolve_checkpoints(&segs);
        if self.reported < self.total {
            self.reported = self.total;
            (self.progress)(self.total, self.total);
        }
        Ok(())
    }

    fn check_format(&mut self) -> Result<Option<FormatFile>> {
        let v = self.vfs.clone();
        let path = self.dir.join("FORMAT");
        if !exists(v.as_ref(), &path)? {
            self.problem(
                ProblemKind::Format,
                "FORMAT".into(),
                "missing: the store cannot be opened (nor salvaged) without it; restore it from a backup of this store".into(),
            );
            return Ok(None);
        }
        let f = v
            .open(&path, OpenMode::Read)
            .map_err(|e| Error::io("open", &path, e))?;
        let len = f.len().map_err(|e| Error::io("stat", &path, e))?;
        if len != FORMAT_LEN as u64 {
            self.problem(
                ProblemKind::Format,
                "FORMAT".into(),
                format!("it has {len} bytes instead of {FORMAT_LEN}: the store cannot be opened (nor salvaged) without a sound FORMAT; restore it from a backup of this store"),
            );
            return Ok(None);
        }
        let mut b = [0u8; FORMAT_LEN];
        f.read_exact_at(&mut b, 0)
            .map_err(|e| Error::io("read", &path, e))?;
        match FormatFile::decode(&b) {
            Ok(fmt) => Ok(Some(fmt)),
            Err(reason) => {
                self.problem(
                    ProblemKind::Format,
                    "FORMAT".into(),
                    format!("{reason}: the store cannot be opened (nor salvaged) without a sound FORMAT; restore it from a backup of this store"),
                );
                Ok(None)
            }
        }
    }

    /// Whether a valid checkpoint covers the log up to segment `seg` (so earlier segments may
    /// have been deleted).
    fn covered_by_checkpoint(&self, seg: u64) -> bool {
        self.wanted.iter().any(|(_, p)| p.segment >= seg)
    }

    fn header_check(
        seg: &SegInfo,
        store_id: Option<u64>,
    ) -> std::result::Result<SegmentHeader, String> {
        let h = seg.header.clone()?;
        if store_id.is_some_and(|id| id != h.store_id) {
            return Err(format!(
                "the header belongs to another store (store id {:#018x})",
                h.store_id
            ));
        }
        if h.seg_id != seg.id {
            return Err(format!(
                "the header says segment {} but the file is segment {}",
                h.seg_id, seg.id
            ));
        }
        if seg.id == 0 {
            return Err("segment number 0 is never used".into());
        }
        if seg.id > SEGMENT_ID_MAX {
            return Err(format!(
                "segment number {} is above the largest one used ({SEGMENT_ID_MAX})",
                seg.id
            ));
        }
        if h.base_lsn == 0 {
            return Err("the header says the segment starts at LSN 0".into());
        }
        Ok(h)
    }

    fn walk(&mut self, segs: &[SegInfo], store_id: Option<u64>) -> Result<()> {
        if segs.is_empty() {
            self.report
                .notes
                .push("the log holds no segment: the next open creates segment 1".into());
            return Ok(());
        }
        let mut expected: Option<u64> = None;
        let mut prev: Option<&SegInfo> = None;
        let mut seg_base = 0u64;
        for (i, seg) in segs.iter().enumerate() {
            let is_last = i + 1 == segs.len();
            let next_base = segs
                .get(i + 1)
                .and_then(|s| s.header.as_ref().ok())
                .map(|h| h.base_lsn);
            self.report.segments += 1;
            self.report.bytes += seg.len;
            let header = Self::header_check(seg, store_id);
            // --- segment numbers run without gaps
            match prev {
                Some(p) if seg.id > p.id + 1 => {
                    let from = expected.unwrap_or(0);
                    let range = DamagedRange {
                        segment: p.id + 1,
                        offset: 0,
                        lsn_from: from,
                        lsn_to: header
                            .as_ref()
                            .map_or(from, |h| h.base_lsn.saturating_sub(1).max(from)),
                        bytes: 0,
                        reason: format!("segment(s) {}..={} missing", p.id + 1, seg.id - 1),
                    };
                    self.damage(ProblemKind::Segment, seg_file(p.id + 1), range);
                }
                None if seg.id > 1 => {
                    if self.covered_by_checkpoint(seg.id) {
                        self.report.notes.push(format!(
                            "segments 1..={} are gone; a checkpoint covers the log after them",
                            seg.id - 1
                        ));
                    } else {
                        self.problem(
                            ProblemKind::Segment,
                            seg_file(1),
                            format!(
                                "segment(s) 1..={} missing, and no checkpoint covers them: the start of the log is lost",
                                seg.id - 1
                            ),
                        );
                    }
                }
                _ => {}
            }
            prev = Some(seg);
            let file = self
                .vfs
                .open(&seg.path, OpenMode::Read)
                .map_err(|e| Error::io("open segment", &seg.path, e))?;
            let mut rd = Reader {
                file,
                path: seg.path.clone(),
                len: seg.len,
                buf: Vec::new(),
                start: 0,
            };
            let first_frame = (SEGMENT_HEADER_LEN as u64).min(seg.len);
            // --- the header
            let h = match header {
                Ok(h) => h,
                Err(why) => {
                    if is_last && scan_next(&mut rd, seg.id, first_frame, 0)?.is_none() {
                        self.report.notes.push(format!(
                            "{}: {why}, and it holds no valid frame: its creation was cut by a crash (nothing in it was acknowledged); the next open removes it",
                            seg_file(seg.id)
                        ));
                    } else {
                        let mut max_lsn = 0;
                        let mut at = first_frame;
                        while let Some(f) = scan_next(&mut rd, seg.id, at, 0)? {
                            max_lsn = max_lsn.max(f.lsn);
                            at = f.offset + 1;
                        }
                        let from = expected.unwrap_or(0);
                        let range = DamagedRange {
                            segment: seg.id,
                            offset: 0,
                            lsn_from: from,
                            lsn_to: next_base.map_or(max_lsn, |b| b.saturating_sub(1)).max(from),
                            bytes: seg.len,
                            reason: why,
                        };
                        self.damage(ProblemKind::Segment, seg_file(seg.id), range);
                    }
                    expected = None;
                    seg_base += seg.len;
                    self.tick(seg_base);
                    continue;
                }
            };
            // --- its LSNs continue the previous segment's
            match expected {
                Some(e) if h.base_lsn > e => {
                    let (pid, plen) = prev_of(segs, i);
                    let range = DamagedRange {
                        segment: pid,
                        offset: plen,
                        lsn_from: e,
                        lsn_to: h.base_lsn - 1,
                        bytes: 0,
                        reason: format!(
                            "frames {e}..={} missing at the end of segment {pid}",
                            h.base_lsn - 1
                        ),
                    };
                    self.damage(ProblemKind::Segment, seg_file(pid), range);
                }
                Some(e) if h.base_lsn < e => {
                    let range = DamagedRange {
                        segment: seg.id,
                        offset: 0,
                        lsn_from: h.base_lsn,
                        lsn_to: e - 1,
                        bytes: 0,
                        reason: format!(
                            "segment starts at LSN {} but LSN {e} was expected (it overlaps frames already read)",
                            h.base_lsn
                        ),
                    };
                    self.damage(ProblemKind::Segment, seg_file(seg.id), range);
                }
                None if i == 0 && seg.id == 1 && h.base_lsn != 1 => {
                    let range = DamagedRange {
                        segment: seg.id,
                        offset: 0,
                        lsn_from: 1,
                        lsn_to: h.base_lsn - 1,
                        bytes: 0,
                        reason: format!("the log starts at LSN {} instead of 1", h.base_lsn),
                    };
                    self.damage(ProblemKind::Segment, seg_file(seg.id), range);
                }
                _ => {}
            }
            if self.report.first_lsn == 0 {
                self.report.first_lsn = h.base_lsn;
            }
            // --- the frames
            let mut lanes = BTreeMap::new();
            let (lsn_end, damaged) = self.walk_frames(
                &mut rd, seg, seg_base, h.base_lsn, is_last, next_base, &mut lanes,
            )?;
            drop(rd);
            expected = Some(lsn_end);
            seg_base += seg.len;
            self.tick(seg_base);
            // --- its index file
            if !is_last {
                if let Some(store_id) = store_id {
                    self.check_index(seg, store_id, next_base, &lanes, damaged)?;
                }
            }
        }
        Ok(())
    }

    /// Walks the frames of one segment from its header on. Returns the LSN due after its last
    /// frame and whether damage was found in it.
    #[allow(clippy::too_many_arguments)]
    fn walk_frames(
        &mut self,
        rd: &mut Reader,
        seg: &SegInfo,
        seg_base: u64,
        base_lsn: u64,
        is_last: bool,
        next_base: Option<u64>,
        lanes: &mut BTreeMap<LaneKey, LaneSum>,
    ) -> Result<(u64, bool)> {
        let mut pos = SEGMENT_HEADER_LEN as u64;
        let mut lsn_next = base_lsn;
        let mut damaged = false;
        let mut pendings: Vec<Pending> = Vec::new();
        loop {
            self.boundary(seg.id, pos, lsn_next);
            self.tick(seg_base + pos);
            if pos >= rd.len {
                break;
            }
            let reason = match frame_at(rd, seg.id, pos, true)? {
                Frame::Valid(f) => {
                    for p in &mut pendings {
                        p.max_synced = p.max_synced.max(f.synced_lsn);
                    }
                    match f.records {
                        _ if f.lsn != lsn_next => {
                            format!("frame has LSN {} where LSN {lsn_next} was expected", f.lsn)
                        }
                        Err(why) => why,
                        Ok(recs) => {
                            let r = &mut self.report;
                            r.frames += 1;
                            r.frame_bytes += f.len;
                            r.entries += f.entries;
                            r.last_lsn = f.lsn;
                            for (key, e) in &recs {
                                lanes.entry(*key).or_default().add(e);
                            }
                            lsn_next += 1;
                            pos += f.len;
                            continue;
                        }
                    }
                }
                Frame::Bad(why) => why,
            };
            // A bad frame at `pos`, where LSN `lsn_next` is due: the stretch up to the next
            // valid frame (or the end of the segment) is lost.
            let resume = scan_next(rd, seg.id, pos + 1, lsn_next.saturating_sub(1))?;
            let lsn_to = match resume {
                Some(f) => f.lsn - 1,
                None => next_base.map_or(lsn_next, |b| b.saturating_sub(1).max(lsn_next)),
            };
            let range = DamagedRange {
                segment: seg.id,
                offset: pos,
                lsn_from: lsn_next,
                lsn_to,
                bytes: resume.map_or(rd.len, |f| f.offset) - pos,
                reason,
            };
            if is_last {
                let r = &self.report;
                pendings.push(Pending {
                    range,
                    lsn: lsn_next,
                    max_synced: 0,
                    frames: r.frames,
                    frame_bytes: r.frame_bytes,
                    entries: r.entries,
                    last_lsn: r.last_lsn,
                    seen: self.seen.len(),
                });
            } else {
                self.damage(ProblemKind::Frames, seg_file(seg.id), range);
                damaged = true;
            }
            if let Some(f) = resume {
                pos = f.offset;
                lsn_next = f.lsn;
            } else {
                if !is_last {
                    lsn_next = next_base.unwrap_or(lsn_next);
                }
                break;
            }
        }
        // In the last segment, a bad frame is damage only if a later frame proves it durable
        // (its synced_lsn covers it); the first one that is not proven starts a torn tail.
        // (If one is proven, so are all before it: the proof comes after them too.)
        let torn = pendings.iter().position(|p| p.max_synced < p.lsn);
        let cut = torn.unwrap_or(pendings.len());
        let mut pendings = pendings.into_iter();
        for p in pendings.by_ref().take(cut) {
            self.damage(ProblemKind::Frames, seg_file(seg.id), p.range);
            damaged = true;
        }
        if let Some(p) = pendings.next() {
            let r = &mut self.report;
            let discarded = r.frames - p.frames;
            r.frames = p.frames;
            r.frame_bytes = p.frame_bytes;
            r.entries = p.entries;
            r.last_lsn = p.last_lsn;
            self.seen.truncate(p.seen);
            if discarded == 0 && all_zero(rd, p.range.offset)? {
                // As recovery: the unused part of a prepared segment, not a tear.
                self.report.notes.push(format!(
                    "{}: {} bytes of zeros after the last frame at offset {}: the unused part of a prepared segment (the store did not close cleanly); nothing is lost and the next open keeps them",
                    seg_file(seg.id),
                    rd.len - p.range.offset,
                    p.range.offset
                ));
                return Ok((p.lsn, damaged));
            }
            let tail = TornTail {
                segment: seg.id,
                offset: p.range.offset,
                bytes_discarded: rd.len - p.range.offset,
                valid_frames_discarded: discarded,
            };
            self.report.notes.push(format!(
                "{}: torn tail at offset {} ({} bytes, {}): a write a crash cut short, never acknowledged in Sync mode; the next open cuts it",
                seg_file(seg.id),
                tail.offset,
                tail.bytes_discarded,
                p.range.reason
            ));
            self.report.torn_tail = Some(tail);
            lsn_next = p.lsn;
        }
        Ok((lsn_next, damaged))
    }

    fn check_index(
        &mut self,
        seg: &SegInfo,
        store_id: u64,
        next_base: Option<u64>,
        lanes: &BTreeMap<LaneKey, LaneSum>,
        damaged: bool,
    ) -> Result<()> {
        let expect = Expect {
            store_id,
            seg_id: seg.id,
            seg_len: seg.len,
            last_lsn: next_base.map_or(0, |b| b.saturating_sub(1)),
        };
        let file = idx_file(seg.id);
        match IdxFile::open(self.vfs.as_ref(), &self.log_dir, expect) {
            Ok(idx) => {
                let len = 64 + 40 * (idx.lanes().len() as u64 + idx.total_entries()) + 4;
                self.idx_done += len;
                self.tick(self.seg_done);
                if damaged {
                    // The walk skipped records the index lists: not comparable.
                    self.report.index_files_ok += 1;
                    return Ok(());
                }
                match compare_index(&idx, lanes) {
                    Ok(None) => self.report.index_files_ok += 1,
                    Ok(Some(why)) => {
                        self.report.index_files_bad += 1;
                        self.problem(
                            ProblemKind::Index,
                            file,
                            format!(
                                "sound but does not match segment {}: {why}; delete it and the next open rebuilds it",
                                seg.id
                            ),
                        );
                    }
                    Err(IdxError::Io { op, path, source }) => {
                        return Err(Error::io(op, path, source))
                    }
                    Err(e) => {
                        self.report.index_files_bad += 1;
                        self.problem(ProblemKind::Index, file, e.to_string());
                    }
                }
            }
            Err(IdxError::Missing { .. }) => {
                self.report.index_files_missing += 1;
                self.report.notes.push(format!(
                    "{file}: missing (segment {} is sealed): the engine builds it from the segment",
                    seg.id
                ));
            }
            Err(IdxError::Stale { reason, .. }) => {
                self.report.index_files_stale += 1;
                self.report.notes.push(format!(
                    "{file}: stale ({reason}): the engine rebuilds it from the segment"
                ));
            }
            Err(IdxError::Corrupt { reason, .. }) => {
                self.report.index_files_bad += 1;
                self.problem(
                    ProblemKind::Index,
                    file,
                    format!(
                        "damaged: {reason}; the engine rebuilds it in memory whenever it reads it; delete it and the next open writes it again from segment {}",
                        seg.id
                    ),
                );
            }
            Err(IdxError::Invalid { reason, .. }) => {
                self.report.index_files_bad += 1;
                self.problem(ProblemKind::Index, file, reason);
            }
            Err(IdxError::Io { op, path, source }) => return Err(Error::io(op, path, source)),
        }
        Ok(())
    }

    fn resolve_checkpoints(&mut self, segs: &[SegInfo]) {
        let wanted = std::mem::take(&mut self.wanted);
        for (wi, (ci, pos)) in wanted.iter().enumerate() {
            let met: Vec<u64> = self
                .seen
                .iter()
                .filter(|(i, _)| *i == wi)
                .map(|(_, lsn)| *lsn)
                .collect();
            let gen = self.report.checkpoints[*ci].generation;
            let slot = self.report.checkpoints[*ci].slot;
            let why = if met.contains(&pos.next_lsn) {
                None
            } else if let Some(lsn) = met.first() {
                Some(format!("the log has LSN {lsn} there, not {}", pos.next_lsn))
            } else {
                Some(match segs.iter().find(|s| s.id == pos.segment) {
                    None => format!("segment {} does not exist", pos.segment),
                    Some(s) if s.len < pos.offset => {
                        format!("segment {} has only {} bytes", pos.segment, s.len)
                    }
                    Some(_) => {
                        "that is not the start of a valid frame nor the end of the log".into()
                    }
                })
            };
            if let Some(why) = why {
                self.report.checkpoints[*ci].ok = false;
                self.problem(
                    ProblemKind::Checkpoint,
                    format!("ckpt.{slot}"),
                    format!(
                        "checkpoint generation {gen} covers the log up to segment {} offset {} (next LSN {}), but {why}; opening from it would replay from the wrong place",
                        pos.segment, pos.offset, pos.next_lsn
                    ),
                );
            }
        }
    }
}

/// The id and length of the segment before `segs[i]`.
fn prev_of(segs: &[SegInfo], i: usize) -> (u64, u64) {
    i.checked_sub(1)
        .and_then(|j| segs.get(j))
        .map_or((0, 0), |p| (p.id, p.len))
}

/// Compares an index file with the records of its segment: `None` when they match.
fn compare_index(
    idx: &IdxFile,
    lanes: &BTreeMap<LaneKey, LaneSum>,
) -> std::result::Result<Option<String>, IdxError> {
    let mut listed = 0usize;
    for meta in idx.lanes() {
        if meta.n_entries == 0 {
            continue;
        }
        listed += 1;
        let Some(ours) = lanes.get(&meta.key) else {
            return Ok(Some(format!(
                "it lists {} entries for {}, which has no record in the segment",
                meta.n_entries, meta.key
            )));
        };
        if (ours.n, ours.first, ours.last) != (meta.n_entries, meta.first_id, meta.last_id) {
            return Ok(Some(format!(
                "for {} it lists {} entries (ids {}..={}), the segment has {} (ids {}..={})",
                meta.key,
                meta.n_entries,
                meta.first_id,
                meta.last_id,
                ours.n,
                ours.first,
                ours.last
            )));
        }
        let mut crc = 0u32;
        let mut from = 0u64;
        while from < meta.n_entries {
            let entries = idx.read_entries(meta, from, IDX_READ)?;
            if entries.is_empty() {
                break;
            }
            for e in &entries {
                crc = crc32c::crc32c_append(crc, &e.encode());
            }
            from += entries.len() as u64;
        }
        if crc != ours.crc {
            return Ok(Some(format!(
                "the entries of {} differ from the segment's records (offsets, sizes, checksums or times)",
                meta.key
            )));
        }
    }
    let ours = lanes.values().filter(|l| l.n > 0).count();
    if ours != listed {
        return Ok(Some(format!(
            "the segment has records in {ours} lanes, the index lists {listed}"
        )));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::{Maintenance, Options, QueueConfig};
    use crate::vfs::MemVfs;
    use crate::{Push, Store};

    const DIR: &str = "/store";

    fn options() -> Options {
        Options {
            segment_bytes: 4096,
            maintenance: Maintenance::Manual,
            ..Options::default()
        }
    }

    /// A store of several segments with index files and a checkpoint (taken at close).
    fn build() -> Arc<dyn Vfs> {
        let vfs: Arc<dyn Vfs> = Arc::new(MemVfs::new());
        let s = Store::open_with_vfs(vfs.clone(), DIR, options()).unwrap();
        s.create_queue("b", QueueConfig::default()).unwrap();
        for i in 0..160u32 {
            let q = if i % 3 == 0 { "b" } else { "a" };
            s.push(
                q,
                Push::new(format!("message {i} {}", "x".repeat((i as usize * 7) % 90)))
                    .priority((i % 4) as u8),
            )
            .unwrap();
            if i % 10 == 0 {
                s.publish("t", format!("topic {i}")).unwrap();
            }
        }
        let leased = s.lease("a", 5, None).unwrap();
        s.ack("a", leased[0].receipt.unwrap()).unwrap();
        s.maintain().unwrap();
        s.close().unwrap();
        vfs
    }

    fn run(vfs: &Arc<dyn Vfs>) -> VerifyReport {
        verify(vfs, Path::new(DIR), &mut |_, _| {}).unwrap()
    }

    fn seg_path(id: u64) -> PathBuf {
        Path::new(DIR).join("log").join(segment_file_name(id))
    }

    fn read_all(vfs: &Arc<dyn Vfs>, path: &Path) -> Vec<u8> {
        let f = vfs.open(path, OpenMode::Read).unwrap();
        let mut b = vec![0u8; f.len().unwrap() as usize];
        f.read_exact_at(&mut b, 0).unwrap();
        b
    }

    fn flip(vfs: &Arc<dyn Vfs>, path: &Path, at: u64) {
        let f = vfs.open(path, OpenMode::ReadWrite).unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x40], at).unwrap();
    }

    /// (offset, lsn, len) of every frame of a segment.
    fn frames(vfs: &Arc<dyn Vfs>, id: u64) -> Vec<(u64, u64, u64)> {
        let data = read_all(vfs, &seg_path(id));
        let mut pos = SEGMENT_HEADER_LEN;
        let mut out = Vec::new();
        while let FrameCheck::Valid { lsn, len, .. } = check_frame(&data[pos..]) {
            out.push((pos as u64, lsn, len as u64));
            pos += len;
        }
        out
    }

    fn segment_count(vfs: &Arc<dyn Vfs>) -> u64 {
        vfs.read_dir(&Path::new(DIR).join("log"))
            .unwrap()
            .iter()
            .filter(|n| parse_segment_file_name(n).is_some())
            .count() as u64
    }

    #[test]
    fn a_clean_store_verifies_ok() {
        let vfs = build();
        let mut calls = Vec::new();
        let r = verify(&vfs, Path::new(DIR), &mut |d, t| calls.push((d, t))).unwrap();
        assert!(r.is_ok(), "{:#?}", r.problems);
        let n = segment_count(&vfs);
        assert!(n >= 4, "only {n} segments");
        assert_eq!(r.segments, n);
        assert_eq!(r.index_files_ok, n - 1, "{:#?}", r.notes);
        assert_eq!(
            r.index_files_bad + r.index_files_missing + r.index_files_stale,
            0
        );
        assert!(r.frames > 150 && r.entries >= r.frames);
        assert_eq!(r.first_lsn, 1);
        assert_eq!(r.last_lsn, r.frames);
        assert!(r.torn_tail.is_none());
        assert!(!r.checkpoints.is_empty() && r.checkpoints.iter().all(|c| c.ok));
        assert!(r.stray_files.is_empty(), "{:?}", r.stray_files);
        let (d, t) = *calls.last().unwrap();
        assert_eq!(d, t);
        assert!(calls.windows(2).all(|w| w[0].0 <= w[1].0));
        // Verifying changes nothing: the store still opens and verifies the same.
        assert_eq!(run(&vfs).frames, r.frames);
    }

    #[test]
    fn a_flipped_byte_in_a_middle_frame_is_damage_with_its_lsn() {
        let vfs = build();
        let fr = frames(&vfs, 2);
        let (off, lsn, len) = fr[fr.len() / 2];
        flip(&vfs, &seg_path(2), off + len - 3);
        let r = run(&vfs);
        assert!(!r.is_ok());
        let ranges: Vec<_> = r.damaged().cloned().collect();
        assert_eq!(ranges.len(), 1, "{:#?}", r.problems);
        let d = &ranges[0];
        assert_eq!(
            (d.segment, d.offset, d.lsn_from, d.lsn_to, d.bytes),
            (2, off, lsn, lsn, len)
        );
        assert!(d.reason.contains("checksum"), "{}", d.reason);
        assert_eq!(r.problems[0].kind, ProblemKind::Frames);
        assert_eq!(r.problems[0].file, seg_file(2));
        // The rest of the log was walked.
        assert_eq!(r.segments, segment_count(&vfs));
    }

    #[test]
    fn a_truncated_middle_segment_is_damage_up_to_the_next_segment() {
        let vfs = build();
        let fr = frames(&vfs, 2);
        let (off, lsn, _) = fr[fr.len() / 2];
        let next_base = frames(&vfs, 3)[0].1;
        let f = vfs.open(&seg_path(2), OpenMode::ReadWrite).unwrap();
        f.set_len(off + 10).unwrap();
        let r = run(&vfs);
        let ranges: Vec<_> = r.damaged().cloned().collect();
        assert_eq!(ranges.len(), 1, "{:#?}", r.problems);
        let d = &ranges[0];
        assert_eq!(
            (d.segment, d.offset, d.lsn_from, d.lsn_to, d.bytes),
            (2, off, lsn, next_base - 1, 10)
        );
        assert_eq!(d.reason, "frame cut short");
        // Its index describes the segment as it was: stale, informational.
        assert_eq!(r.index_files_stale, 1);
        assert!(r.torn_tail.is_none());
    }

    #[test]
    fn a_corrupt_checkpoint_slot_is_reported() {
        let vfs = build();
        let r = run(&vfs);
        let c = r.checkpoints[0].clone();
        let path = ckpt::slot_path(Path::new(DIR), c.slot);
        flip(&vfs, &path, 64 + c.payload_bytes / 2);
        let r = run(&vfs);
        assert_eq!(r.problems.len(), 1, "{:#?}", r.problems);
        let p = &r.problems[0];
        assert_eq!(p.kind, ProblemKind::Checkpoint);
        assert_eq!(p.file, format!("ckpt.{}", c.slot));
        assert!(
            p.message.contains("payload checksum mismatch"),
            "{}",
            p.message
        );
        assert!(r.checkpoints.iter().all(|x| x.generation != c.generation));
    }

    #[test]
    fn a_checkpoint_that_covers_no_frame_boundary_is_reported() {
        let vfs = build();
        let r = run(&vfs);
        let c = r.checkpoints[0].clone();
        let cov = c.covers.unwrap();
        // Rewrite the checkpoint with a position one byte off (valid checksums).
        let path = ckpt::slot_path(Path::new(DIR), c.slot);
        let data = read_all(&vfs, &path);
        let mut payload = data[64..64 + c.payload_bytes as usize].to_vec();
        payload[12..20].copy_from_slice(&(cov.offset + 1).to_le_bytes());
        let f = vfs.open(&path, OpenMode::ReadWrite).unwrap();
        f.set_len(0).unwrap();
        drop(f);
        // Generation order: rewrite the same generation into its own slot.
        let mut w = ckpt::CkptWriter::new(
            Path::new(DIR),
            r.store_id.unwrap(),
            &ckpt::load(vfs.as_ref(), Path::new(DIR), r.store_id.unwrap()).unwrap(),
            None,
        )
        .unwrap();
        let gen = w.write(vfs.as_ref(), &payload).unwrap();
        let r = run(&vfs);
        let p: Vec<_> = r
            .problems
            .iter()
            .filter(|p| p.kind == ProblemKind::Checkpoint)
            .collect();
        assert_eq!(p.len(), 1, "{:#?}", r.problems);
        assert!(
            p[0].message.contains(&format!("generation {gen}")),
            "{}",
            p[0].message
        );
        // One byte past the position: inside the next frame, or past the segment's end when
        // the close marker went to a new segment.
        assert!(
            p[0].message.contains("not the start of a valid frame")
                || p[0].message.contains("has only"),
            "{}",
            p[0].message
        );
    }

    #[test]
    fn a_corrupt_index_file_is_reported() {
        let vfs = build();
        let path = segindex::idx_path(&Path::new(DIR).join("log"), 2);
        let len = vfs.open(&path, OpenMode::Read).unwrap().len().unwrap();
        flip(&vfs, &path, len - 10);
        let r = run(&vfs);
        assert_eq!(r.index_files_bad, 1);
        assert_eq!(r.problems.len(), 1, "{:#?}", r.problems);
        assert_eq!(r.problems[0].kind, ProblemKind::Index);
        assert_eq!(r.problems[0].file, idx_file(2));
        assert!(
            r.problems[0].message.contains("damaged"),
            "{}",
            r.problems[0].message
        );
    }

    #[test]
    fn a_sound_index_that_does_not_match_its_segment_is_reported() {
        let vfs = build();
        let log_dir = Path::new(DIR).join("log");
        let path = segindex::idx_path(&log_dir, 2);
        let mut idx = segindex::SegmentIndex::decode(&read_all(&vfs, &path)).unwrap();
        idx.lanes[0].entries[0].crc ^= 1;
        segindex::write_file(vfs.as_ref(), &log_dir, &idx).unwrap();
        let r = run(&vfs);
        assert_eq!(r.index_files_bad, 1);
        assert_eq!(r.problems.len(), 1, "{:#?}", r.problems);
        assert!(
            r.problems[0].message.contains("does not match segment 2"),
            "{}",
            r.problems[0].message
        );
    }

    #[test]
    fn missing_index_files_and_a_torn_tail_are_informational() {
        let vfs = build();
        vfs.remove_file(&segindex::idx_path(&Path::new(DIR).join("log"), 1))
            .unwrap();
        let last = segment_count(&vfs);
        let f = vfs.open(&seg_path(last), OpenMode::ReadWrite).unwrap();
        let len = f.len().unwrap();
        f.write_all_at(b"SPFR\x40\x00\x00\x00garbage", len).unwrap();
        let r = run(&vfs);
        assert!(r.is_ok(), "{:#?}", r.problems);
        assert_eq!(r.index_files_missing, 1);
        let t = r.torn_tail.clone().unwrap();
        assert_eq!((t.segment, t.offset, t.bytes_discarded), (last, len, 15));
        assert!(
            r.notes.iter().any(|n| n.contains("torn tail")),
            "{:?}",
            r.notes
        );
    }

    #[test]
    fn stray_files_are_listed() {
        let vfs = build();
        vfs.open(&Path::new(DIR).join("log/notes.txt"), OpenMode::Create)
            .unwrap();
        let r = run(&vfs);
        assert!(r.is_ok());
        assert_eq!(r.stray_files, vec!["log/notes.txt".to_string()]);
    }

    #[test]
    fn an_open_store_is_locked_and_a_non_store_is_refused() {
        let vfs = build();
        let s = Store::open_with_vfs(vfs.clone(), DIR, options()).unwrap();
        assert!(matches!(
            verify(&vfs, Path::new(DIR), &mut |_, _| {}),
            Err(Error::Locked { .. })
        ));
        drop(s);
        vfs.create_dir_all(Path::new("/empty")).unwrap();
        assert!(matches!(
            verify(&vfs, Path::new("/empty"), &mut |_, _| {}),
            Err(Error::Format { .. })
        ));
    }

    #[test]
    fn a_missing_segment_and_a_bad_header_are_damage() {
        let vfs = build();
        vfs.remove_file(&seg_path(3)).unwrap();
        flip(&vfs, &seg_path(2), 20);
        let r = run(&vfs);
        let kinds: Vec<_> = r
            .problems
            .iter()
            .map(|p| (p.kind, p.file.clone()))
            .collect();
        assert!(
            kinds.contains(&(ProblemKind::Segment, seg_file(2))),
            "{kinds:?}"
        );
        assert!(
            kinds.contains(&(ProblemKind::Segment, seg_file(3))),
            "{kinds:?}"
        );
    }

    #[test]
    fn no_bytes_make_it_panic() {
        let pristine = build();
        let files: Vec<PathBuf> = vfs_files(&pristine);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..60 {
            let vfs: Arc<dyn Vfs> = Arc::new(MemVfs::new());
            for p in &files {
                vfs.create_dir_all(p.parent().unwrap()).unwrap();
                let f = vfs.open(p, OpenMode::Create).unwrap();
                f.write_all_at(&read_all(&pristine, p), 0).unwrap();
            }
            for _ in 0..=next() % 6 {
                let p = &files[(next() % files.len() as u64) as usize];
                let f = vfs.open(p, OpenMode::ReadWrite).unwrap();
                let len = f.len().unwrap();
                if len == 0 {
                    continue;
                }
                match next() % 3 {
                    0 => f.set_len(next() % len).unwrap(),
                    1 => f.write_all_at(&next().to_le_bytes(), next() % len).unwrap(),
                    _ => f.write_all_at(&[0u8; 300], next() % len).unwrap(),
                }
            }
            let _ = verify(&vfs, Path::new(DIR), &mut |_, _| {}).unwrap();
        }
    }

    fn vfs_files(vfs: &Arc<dyn Vfs>) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for d in [PathBuf::from(DIR), Path::new(DIR).join("log")] {
            for n in vfs.read_dir(&d).unwrap() {
                let p = d.join(&n);
                if n != "log" && n != "LOCK" {
                    out.push(p);
                }
            }
        }
        out
    }
}
