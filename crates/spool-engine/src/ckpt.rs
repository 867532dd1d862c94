//! Checkpoint slots: where an opaque checkpoint payload is kept, crash-safely, with the
//! ping-pong pattern (as redb's commit slots).
//!
//! A store has two slot files, `ckpt.0` and `ckpt.1`, created empty (and made durable, names
//! included) with the store by [`create_slots`]. Checkpoint generation `g` is written in place
//! over slot `g % 2`, which holds the older of the two checkpoints, and `fdatasync`ed; the
//! other slot, holding generation `g - 1`, is not touched. [`load`] takes the valid slot with
//! the highest generation. A write cut by a crash leaves its slot invalid (the checksums see
//! it) or still holding the old content, and the other slot untouched, so loading returns
//! either the newest acknowledged checkpoint or the one that was being written, never less.
//! There is no rename and no directory fsync per checkpoint: the names are durable from the
//! start and only file data changes.
//!
//! What the payload means is not this module's business; it stores bytes. Layout:
//! `docs/format.md` ("Checkpoints").
//!
//! # Choosing the generation
//!
//! The ping-pong pattern is only safe if the slot being overwritten never holds the checkpoint
//! the caller relies on. Generations therefore go up by exactly one from the checkpoint kept:
//! after using generation `k`, the next write is `k + 1` (into the other slot), and after a
//! failed write the retry uses the same generation again (same slot). [`CkptWriter`] does this
//! bookkeeping; [`write`] checks what it can from the slot headers (see [`CkptError::OutOfOrder`])
//! but cannot know which checkpoint a caller decided to keep.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::vfs::{OpenMode, Vfs, VfsFile};

/// `b"SPOOLCKP"`.
pub const CKPT_MAGIC: [u8; 8] = *b"SPOOLCKP";
/// The checkpoint slot format version this engine writes and reads.
pub const CKPT_VERSION: u16 = 1;
/// Bytes of a slot header; the payload follows it.
pub const CKPT_HEADER_LEN: usize = 64;
/// The largest payload written or accepted. Checked before anything is allocated, so a damaged
/// length field never makes a reader allocate more.
pub const CKPT_PAYLOAD_MAX: u64 = 1 << 30;
/// The largest generation written or accepted, so that "the next generation" never overflows.
/// A header with a larger generation is invalid.
pub const CKPT_GEN_MAX: u64 = u64::MAX >> 1;

/// Payloads are read (and checksummed) in pieces of this size.
const READ_CHUNK: usize = 1 << 20;

/// The two slots.
const SLOTS: [u8; 2] = [0, 1];

/// Why a checkpoint could not be written or read. I/O errors are errors; a slot whose content
/// is damaged is not (it is reported as [`SlotStatus::Invalid`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CkptError {
    /// An I/O call failed.
    #[error("{op} {path:?}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The payload is larger than [`CKPT_PAYLOAD_MAX`].
    #[error("checkpoint payload of {len} bytes is larger than the limit of {max} bytes; the checkpoint producer must write less")]
    PayloadTooLarge { len: u64, max: u64 },

    /// The generation is 0 or above [`CKPT_GEN_MAX`].
    #[error("checkpoint generation {gen} is out of range: generations are 1 to {max}")]
    GenOutOfRange { gen: u64, max: u64 },

    /// Writing this generation could overwrite the newest checkpoint (generations must go up
    /// by one from the checkpoint kept).
    #[error("checkpoint generation {gen} cannot be written: the newest checkpoint header (slot {slot}) has generation {found}, so the next generation is {expected}; write that one instead (CkptWriter and Loaded::next_gen pick it), another could overwrite the newest checkpoint")]
    OutOfOrder {
        gen: u64,
        slot: u8,
        found: u64,
        expected: u64,
    },

    /// The slot file does not exist.
    #[error("checkpoint slot {path:?} does not exist; create_slots must run when the store is created or opened")]
    SlotMissing { path: PathBuf },

    /// A slot number other than 0 or 1.
    #[error("no checkpoint slot {slot}: the slots are 0 and 1")]
    NoSuchSlot { slot: u8 },

    /// [`CkptWriter::new`] was told to keep a checkpoint that is not valid.
    #[error("checkpoint generation {gen} is not a valid checkpoint of this store; keep one of Loaded::candidates(), or none")]
    NotACandidate { gen: u64 },
}

fn io_err(op: &'static str, path: &Path, source: io::Error) -> CkptError {
    CkptError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The path of checkpoint slot `slot` (0 or 1): `<store_dir>/ckpt.<slot>`.
pub fn slot_path(store_dir: &Path, slot: u8) -> PathBuf {
    store_dir.join(format!("ckpt.{slot}"))
}

/// Creates both slot files, empty, where missing, makes their data durable and fsyncs the
/// store directory so that their names are durable too. Existing slots are kept as they are.
/// Idempotent: run it when the store is created and again at every open (a crash in the
/// middle of a run leaves slots that the next run completes; [`load`] reads a missing slot as
/// [`SlotStatus::Missing`], not as an error).
pub fn create_slots(vfs: &dyn Vfs, store_dir: &Path) -> Result<(), CkptError> {
    for slot in SLOTS {
        let path = slot_path(store_dir, slot);
        let file = vfs
            .open(&path, OpenMode::Create)
            .map_err(|e| io_err("create", &path, e))?;
        file.sync_data()
            .map_err(|e| io_err("fdatasync", &path, e))?;
    }
    vfs.sync_dir(store_dir)
        .map_err(|e| io_err("fsync directory", store_dir, e))
}

// --- header ----------------------------------------------------------------------------------

/// The fields of a slot header that vary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    store_id: u64,
    gen: u64,
    payload_len: u64,
    payload_crc: u32,
}

impl Header {
    fn encode(&self) -> [u8; CKPT_HEADER_LEN] {
        let mut b = [0u8; CKPT_HEADER_LEN];
        b[0..8].copy_from_slice(&CKPT_MAGIC);
        b[8..10].copy_from_slice(&CKPT_VERSION.to_le_bytes());
        // 10..12 flags = 0, 12..16 reserved
        b[16..24].copy_from_slice(&self.store_id.to_le_bytes());
        b[24..32].copy_from_slice(&self.gen.to_le_bytes());
        b[32..40].copy_from_slice(&self.payload_len.to_le_bytes());
        b[40..44].copy_from_slice(&self.payload_crc.to_le_bytes());
        // 44..60 reserved
        let crc = crc32c::crc32c(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Checks everything the header alone can tell for slot `slot` of store `store_id`.
    fn decode(b: &[u8; CKPT_HEADER_LEN], store_id: u64, slot: u8) -> Result<Self, String> {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        if b[0..8] != CKPT_MAGIC {
            return Err(if b.iter().all(|&x| x == 0) {
                "header is all zeroes (a write that never completed)".to_string()
            } else {
                "bad magic: not a checkpoint header".to_string()
            });
        }
        if crc32c::crc32c(&b[..60]) != u32_at(60) {
            return Err("header checksum mismatch (torn or damaged)".to_string());
        }
        let version = u16_at(8);
        if version != CKPT_VERSION {
            return Err(format!(
                "unsupported checkpoint version {version} (this engine reads {CKPT_VERSION})"
            ));
        }
        let flags = u16_at(10);
        if flags != 0 {
            return Err(format!("unknown header flags {flags:#06x}"));
        }
        let h = Self {
            store_id: u64_at(16),
            gen: u64_at(24),
            payload_len: u64_at(32),
            payload_crc: u32_at(40),
        };
        if h.store_id != store_id {
            return Err(format!(
                "belongs to store {:#018x}, not to this store ({store_id:#018x})",
                h.store_id
            ));
        }
        if !(1..=CKPT_GEN_MAX).contains(&h.gen) {
            return Err(format!("generation {} out of range", h.gen));
        }
        if h.gen % 2 != u64::from(slot) {
            return Err(format!(
                "generation {} does not belong in slot {slot} (generation g lives in slot g % 2)",
                h.gen
            ));
        }
        if h.payload_len > CKPT_PAYLOAD_MAX {
            return Err(format!(
                "payload length {} above the limit of {CKPT_PAYLOAD_MAX}",
                h.payload_len
            ));
        }
        Ok(h)
    }
}

// --- reading ---------------------------------------------------------------------------------

/// What one slot holds, for diagnostics (`spool inspect verify`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotStatus {
    /// No slot file (a store created before checkpoints existed, or a crash during
    /// [`create_slots`]).
    Missing,
    /// An empty slot file: no checkpoint was written to it yet.
    Empty,
    /// A complete, checksum-verified checkpoint.
    Valid { gen: u64, payload_len: u64 },
    /// Something else: a write cut by a crash, or damage. `reason` says what was found.
    Invalid { reason: String },
}

/// One slot and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotState {
    pub slot: u8,
    pub status: SlotStatus,
}

impl fmt::Display for SlotStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SlotStatus::Missing => f.write_str("missing"),
            SlotStatus::Empty => f.write_str("empty"),
            SlotStatus::Valid { gen, payload_len } => {
                write!(f, "valid: generation {gen}, {payload_len} payload bytes")
            }
            SlotStatus::Invalid { reason } => write!(f, "invalid: {reason}"),
        }
    }
}

impl fmt::Display for SlotState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ckpt.{}: {}", self.slot, self.status)
    }
}

/// What [`load`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The valid checkpoint with the highest generation, and its payload.
    pub best: Option<(u64, Vec<u8>)>,
    /// Both slots, slot 0 first.
    pub slots: [SlotState; 2],
    /// The generation in each slot's header when the header itself is sound (payload not
    /// considered): what [`Loaded::next_gen`] must step over.
    header_gens: [Option<u64>; 2],
}

impl Loaded {
    /// The generation of [`Loaded::best`].
    pub fn best_gen(&self) -> Option<u64> {
        self.best.as_ref().map(|(gen, _)| *gen)
    }

    /// The valid checkpoints as `(slot, generation)`, newest first. The first is `best`; if the
    /// caller rejects its content, the second (if any) is read with [`load_slot`]. Only the best
    /// payload is held in memory, so that a store with tens of MiB of checkpoint does not need
    /// twice that to open.
    pub fn candidates(&self) -> Vec<(u8, u64)> {
        let mut out: Vec<(u8, u64)> = self
            .slots
            .iter()
            .filter_map(|s| match s.status {
                SlotStatus::Valid { gen, .. } => Some((s.slot, gen)),
                _ => None,
            })
            .collect();
        out.sort_by_key(|&(_, gen)| std::cmp::Reverse(gen));
        out
    }

    /// The generation the next checkpoint must have when the caller keeps (relies on)
    /// checkpoint `kept` (`None`: none, e.g. every candidate was rejected): `kept + 1`, which
    /// goes to the other slot, or one above every generation any header names. Writing another
    /// generation could overwrite `kept`.
    pub fn next_gen(&self, kept: Option<u64>) -> u64 {
        match kept {
            Some(k) => k.saturating_add(1),
            None => self.header_gens.iter().flatten().max().map_or(1, |m| m + 1),
        }
    }
}

/// A slot file opened for reading, with its length and header.
struct Opened {
    file: Arc<dyn VfsFile>,
    len: u64,
    header: Result<Header, String>,
}

enum Probe {
    Missing,
    Empty,
    Present(Opened),
}

impl Probe {
    fn header_gen(&self) -> Option<u64> {
        match self {
            Probe::Present(Opened { header: Ok(h), .. }) => Some(h.gen),
            _ => None,
        }
    }
}

fn read_header(
    file: &dyn VfsFile,
    len: u64,
    path: &Path,
    store_id: u64,
    slot: u8,
) -> Result<Result<Header, String>, CkptError> {
    if len < CKPT_HEADER_LEN as u64 {
        return Ok(Err(format!(
            "file is {len} bytes, shorter than the {CKPT_HEADER_LEN}-byte header"
        )));
    }
    let mut b = [0u8; CKPT_HEADER_LEN];
    match file.read_exact_at(&mut b, 0) {
        Ok(()) => Ok(Header::decode(&b, store_id, slot)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            Ok(Err("file ended inside the header".to_string()))
        }
        Err(e) => Err(io_err("read", path, e)),
    }
}

fn probe(vfs: &dyn Vfs, store_dir: &Path, store_id: u64, slot: u8) -> Result<Probe, CkptError> {
    let path = slot_path(store_dir, slot);
    let file = match vfs.open(&path, OpenMode::Read) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Probe::Missing),
        Err(e) => return Err(io_err("open", &path, e)),
    };
    let len = file.len().map_err(|e| io_err("stat", &path, e))?;
    if len == 0 {
        return Ok(Probe::Empty);
    }
    let header = read_header(file.as_ref(), len, &path, store_id, slot)?;
    Ok(Probe::Present(Opened { file, len, header }))
}

/// Fully checks a probed slot. With `keep`, a valid slot's payload is returned; without, it is
/// only checksummed (one chunk in memory at a time).
fn verify(
    probe: &Probe,
    path: &Path,
    keep: bool,
) -> Result<(SlotStatus, Option<Vec<u8>>), CkptError> {
    let opened = match probe {
        Probe::Missing => return Ok((SlotStatus::Missing, None)),
        Probe::Empty => return Ok((SlotStatus::Empty, None)),
        Probe::Present(o) => o,
    };
    let invalid = |reason: String| Ok((SlotStatus::Invalid { reason }, None));
    let h = match &opened.header {
        Ok(h) => *h,
        Err(reason) => return invalid(reason.clone()),
    };
    let need = CKPT_HEADER_LEN as u64 + h.payload_len;
    if opened.len < need {
        return invalid(format!(
            "file is {} bytes, shorter than header + payload ({need} bytes): a write cut short",
            opened.len
        ));
    }
    // payload_len <= CKPT_PAYLOAD_MAX (checked by decode), so this fits and is bounded.
    let Ok(len) = usize::try_from(h.payload_len) else {
        return invalid(format!(
            "payload length {} does not fit in memory",
            h.payload_len
        ));
    };
    let mut payload = Vec::new();
    let mut chunk = Vec::new();
    if keep {
        payload.resize(len, 0);
    } else {
        chunk.resize(len.min(READ_CHUNK), 0);
    }
    let mut crc = 0u32;
    let mut done = 0usize;
    while done < len {
        let n = (len - done).min(READ_CHUNK);
        let buf = if keep {
            &mut payload[done..done + n]
        } else {
            &mut chunk[..n]
        };
        match opened
            .file
            .read_exact_at(buf, (CKPT_HEADER_LEN + done) as u64)
        {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return invalid("file ended inside the payload".to_string());
            }
            Err(e) => return Err(io_err("read", path, e)),
        }
        crc = crc32c::crc32c_append(crc, buf);
        done += n;
    }
    if crc != h.payload_crc {
        return invalid(format!(
            "payload checksum mismatch (generation {}, {} bytes): torn or damaged",
            h.gen, h.payload_len
        ));
    }
    let status = SlotStatus::Valid {
        gen: h.gen,
        payload_len: h.payload_len,
    };
    Ok((status, keep.then_some(payload)))
}

/// Reads and verifies both slots and returns the valid checkpoint with the highest generation
/// (its payload is the only one held in memory; the other valid slot, if any, is verified and
/// listed by [`Loaded::candidates`], to be read with [`load_slot`] when needed). Damage is
/// reported per slot in [`Loaded::slots`]; only I/O errors (other than a missing file) are
/// errors.
pub fn load(vfs: &dyn Vfs, store_dir: &Path, store_id: u64) -> Result<Loaded, CkptError> {
    let probes = [
        probe(vfs, store_dir, store_id, 0)?,
        probe(vfs, store_dir, store_id, 1)?,
    ];
    let header_gens = [probes[0].header_gen(), probes[1].header_gen()];
    // The slot whose header promises the higher generation is read first; it is the best one
    // unless its payload turns out bad.
    let order: [usize; 2] = if header_gens[1] > header_gens[0] {
        [1, 0]
    } else {
        [0, 1]
    };
    let mut statuses = [SlotStatus::Missing, SlotStatus::Missing];
    let mut best = None;
    for i in order {
        let path = slot_path(store_dir, SLOTS[i]);
        let (status, payload) = verify(&probes[i], &path, best.is_none())?;
        if let (SlotStatus::Valid { gen, .. }, Some(payload)) = (&status, payload) {
            best = Some((*gen, payload));
        }
        statuses[i] = status;
    }
    let [s0, s1] = statuses;
    Ok(Loaded {
        best,
        slots: [
            SlotState {
                slot: 0,
                status: s0,
            },
            SlotState {
                slot: 1,
                status: s1,
            },
        ],
        header_gens,
    })
}

/// Reads and verifies one slot: its generation and payload when it is valid, `None` when it
/// is missing, empty or invalid. For falling back to the second of [`Loaded::candidates`].
pub fn load_slot(
    vfs: &dyn Vfs,
    store_dir: &Path,
    store_id: u64,
    slot: u8,
) -> Result<Option<(u64, Vec<u8>)>, CkptError> {
    if !SLOTS.contains(&slot) {
        return Err(CkptError::NoSuchSlot { slot });
    }
    let p = probe(vfs, store_dir, store_id, slot)?;
    match verify(&p, &slot_path(store_dir, slot), true)? {
        (SlotStatus::Valid { gen, .. }, Some(payload)) => Ok(Some((gen, payload))),
        _ => Ok(None),
    }
}

// --- writing ---------------------------------------------------------------------------------

/// Refuses a generation that could overwrite the newest checkpoint, judging by the headers:
/// `target` is the generation in the header of the slot to be written, `other` that of the
/// other slot (`None`: no sound header).
///
/// Allowed: one above the other slot's generation (the normal case; also a caller that keeps
/// the other slot's checkpoint and rejected the target's), and, when the other slot holds no
/// sound header, any generation into a slot without one or the same generation as the target's
/// (a retry of a write cut short). Everything else would overwrite the newest header, or write
/// a checkpoint that would never be loaded.
fn check_order(gen: u64, target: Option<u64>, other: Option<u64>) -> Result<(), CkptError> {
    let slot = (gen % 2) as u8;
    let ok = match (other, target) {
        (Some(o), _) => o + 1 == gen,
        (None, Some(t)) => t == gen,
        (None, None) => true,
    };
    if ok {
        return Ok(());
    }
    let (found, in_slot) = match (other, target) {
        (Some(o), Some(t)) if t > o => (t, slot),
        (Some(o), _) => (o, 1 - slot),
        (None, t) => (t.unwrap_or(0), slot),
    };
    Err(CkptError::OutOfOrder {
        gen,
        slot: in_slot,
        found,
        expected: found + 1,
    })
}

/// Writes checkpoint generation `gen` into slot `gen % 2` and returns once it is durable
/// (after the `fdatasync`). The slot must exist ([`create_slots`]). `gen` must be one above
/// the checkpoint the caller keeps, or a retry of a generation whose write failed: see the
/// module documentation, [`CkptWriter`] (which does this bookkeeping) and
/// [`CkptError::OutOfOrder`] (what is checked here).
///
/// When a write fails after the slot was touched, the slot's header is overwritten with zeros
/// (best effort) so that the half-written checkpoint is not taken for a valid one, not even by
/// a reader that sees the page cache after a failed `fdatasync` dropped the data from
/// durability.
pub fn write(
    vfs: &dyn Vfs,
    store_dir: &Path,
    store_id: u64,
    gen: u64,
    payload: &[u8],
) -> Result<(), CkptError> {
    if !(1..=CKPT_GEN_MAX).contains(&gen) {
        return Err(CkptError::GenOutOfRange {
            gen,
            max: CKPT_GEN_MAX,
        });
    }
    let payload_len = payload.len() as u64;
    if payload_len > CKPT_PAYLOAD_MAX {
        return Err(CkptError::PayloadTooLarge {
            len: payload_len,
            max: CKPT_PAYLOAD_MAX,
        });
    }
    let slot = (gen % 2) as u8;
    let path = slot_path(store_dir, slot);
    let file = match vfs.open(&path, OpenMode::ReadWrite) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(CkptError::SlotMissing { path })
        }
        Err(e) => return Err(io_err("open", &path, e)),
    };
    let len = file.len().map_err(|e| io_err("stat", &path, e))?;
    let target = read_header(file.as_ref(), len, &path, store_id, slot)?
        .ok()
        .map(|h| h.gen);
    let other = probe(vfs, store_dir, store_id, 1 - slot)?.header_gen();
    check_order(gen, target, other)?;

    let header = Header {
        store_id,
        gen,
        payload_len,
        payload_crc: crc32c::crc32c(payload),
    }
    .encode();
    let result = write_slot(file.as_ref(), &path, &header, payload);
    if result.is_err() {
        // Best effort: the error returned is the first one.
        let _ = file
            .write_all_at(&[0u8; CKPT_HEADER_LEN], 0)
            .and_then(|()| file.sync_data());
    }
    result
}

/// The writes of one checkpoint.
///
/// Ordering: the payload is written first and the header last, then the file is cut to size
/// and synced once. Correctness does not depend on that order: until the `fdatasync` returns,
/// any subset of these writes may be lost in a power cut (writeback and the disk cache reorder
/// pages freely) and each may be torn at a sector boundary, so a slot is trusted only when the
/// header checksum and the payload checksum recorded in it both match; an interrupted write
/// leaves the slot invalid or with its old checkpoint (generation `gen - 2`), and the other
/// slot, untouched, still holds `gen - 1`. Payload first costs nothing (no copy of a payload
/// of tens of MiB into a combined buffer) and adds one guarantee for a process crash, where
/// the page cache survives in write order: a new header is never seen over an old payload.
/// The header is 64 bytes at offset 0, inside one sector, so it is never torn by itself.
/// A single `fdatasync` suffices because nothing is ordered against anything else on disk.
fn write_slot(
    file: &dyn VfsFile,
    path: &Path,
    header: &[u8; CKPT_HEADER_LEN],
    payload: &[u8],
) -> Result<(), CkptError> {
    if !payload.is_empty() {
        file.write_all_at(payload, CKPT_HEADER_LEN as u64)
            .map_err(|e| io_err("write", path, e))?;
    }
    file.write_all_at(header, 0)
        .map_err(|e| io_err("write", path, e))?;
    // A smaller checkpoint over a larger one: drop the old tail (readers tolerate it anyway).
    file.set_len(CKPT_HEADER_LEN as u64 + payload.len() as u64)
        .map_err(|e| io_err("truncate", path, e))?;
    file.sync_data().map_err(|e| io_err("fdatasync", path, e))
}

/// Writes checkpoints with the generation bookkeeping that keeps the ping-pong pattern safe:
/// every write goes to the slot that does not hold the checkpoint kept, and a failed write is
/// retried (by the next [`CkptWriter::write`]) with the same generation, into the same slot.
/// Without this, a write failing (say, its `fdatasync` returning EIO) followed by a write of the
/// next generation would overwrite the last acknowledged checkpoint while the other slot holds
/// nothing durable.
#[derive(Debug, Clone)]
pub struct CkptWriter {
    store_dir: PathBuf,
    store_id: u64,
    kept: Option<u64>,
    next: u64,
}

impl CkptWriter {
    /// A writer for the store at `store_dir` after `loaded`, keeping checkpoint `kept`: the
    /// generation the caller uses (normally `loaded.best_gen()`; the second candidate if it
    /// rejected the best one's content; `None` if it uses none).
    pub fn new(
        store_dir: &Path,
        store_id: u64,
        loaded: &Loaded,
        kept: Option<u64>,
    ) -> Result<Self, CkptError> {
        if let Some(gen) = kept {
            if !loaded.candidates().iter().any(|&(_, g)| g == gen) {
                return Err(CkptError::NotACandidate { gen });
            }
        }
        Ok(Self {
            store_dir: store_dir.to_path_buf(),
            store_id,
            kept,
            next: loaded.next_gen(kept),
        })
    }

    /// The newest checkpoint known durable: the one kept at the start or the last one written.
    pub fn kept(&self) -> Option<u64> {
        self.kept
    }

    /// The generation the next [`CkptWriter::write`] writes.
    pub fn next_gen(&self) -> u64 {
        self.next
    }

    /// Writes `payload` as the next generation and returns that generation once it is durable.
    /// After an error the next call retries the same generation.
    pub fn write(&mut self, vfs: &dyn Vfs, payload: &[u8]) -> Result<u64, CkptError> {
        let gen = self.next;
        write(vfs, &self.store_dir, self.store_id, gen, payload)?;
        self.kept = Some(gen);
        self.next = gen + 1;
        Ok(gen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfs::{MemVfs, OsVfs};

    const STORE: u64 = 0x5EED_0000_0000_0001;

    fn payload(gen: u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u64).wrapping_mul(31).wrapping_add(gen * 7) as u8)
            .collect()
    }

    fn mem_store() -> (MemVfs, PathBuf) {
        let vfs = MemVfs::new();
        let dir = PathBuf::from("/store");
        vfs.create_dir_all(&dir).unwrap();
        create_slots(&vfs, &dir).unwrap();
        (vfs, dir)
    }

    fn read_file(vfs: &dyn Vfs, path: &Path) -> Vec<u8> {
        let f = vfs.open(path, OpenMode::Read).unwrap();
        let mut b = vec![0u8; f.len().unwrap() as usize];
        f.read_exact_at(&mut b, 0).unwrap();
        b
    }

    fn put_file(vfs: &dyn Vfs, path: &Path, bytes: &[u8]) {
        let f = vfs.open(path, OpenMode::Create).unwrap();
        f.set_len(0).unwrap();
        f.write_all_at(bytes, 0).unwrap();
    }

    fn status(l: &Loaded, slot: usize) -> &SlotStatus {
        &l.slots[slot].status
    }

    fn is_invalid(s: &SlotStatus, needle: &str) -> bool {
        matches!(s, SlotStatus::Invalid { reason } if reason.contains(needle))
    }

    fn round_trip(vfs: &dyn Vfs, dir: &Path) {
        vfs.create_dir_all(dir).unwrap();
        let l = load(vfs, dir, STORE).unwrap();
        assert_eq!(l.best, None);
        assert_eq!(*status(&l, 0), SlotStatus::Missing);
        create_slots(vfs, dir).unwrap();
        create_slots(vfs, dir).unwrap(); // idempotent
        let l = load(vfs, dir, STORE).unwrap();
        assert_eq!(l.best, None);
        assert_eq!(*status(&l, 0), SlotStatus::Empty);
        assert_eq!(*status(&l, 1), SlotStatus::Empty);
        assert_eq!(l.next_gen(None), 1);
        assert!(l.candidates().is_empty());

        let p1 = payload(1, 3000);
        write(vfs, dir, STORE, 1, &p1).unwrap();
        let l = load(vfs, dir, STORE).unwrap();
        assert_eq!(l.best, Some((1, p1.clone())));
        assert_eq!(
            *status(&l, 1),
            SlotStatus::Valid {
                gen: 1,
                payload_len: 3000
            }
        );
        assert_eq!(*status(&l, 0), SlotStatus::Empty);
        assert_eq!(read_file(vfs, &slot_path(dir, 1)).len(), 64 + 3000);
        // create_slots keeps existing content.
        create_slots(vfs, dir).unwrap();
        assert_eq!(load(vfs, dir, STORE).unwrap().best, Some((1, p1)));

        // A larger one, then a smaller one over a larger one, then an empty one.
        let p2 = payload(2, READ_CHUNK * 2 + 17);
        write(vfs, dir, STORE, 2, &p2).unwrap();
        let p3 = payload(3, 10);
        write(vfs, dir, STORE, 3, &p3).unwrap();
        let l = load(vfs, dir, STORE).unwrap();
        assert_eq!(l.best, Some((3, p3)));
        assert_eq!(l.candidates(), vec![(1, 3), (0, 2)]);
        assert_eq!(load_slot(vfs, dir, STORE, 0).unwrap(), Some((2, p2)));
        write(vfs, dir, STORE, 4, &[]).unwrap();
        let p5 = payload(5, 100);
        write(vfs, dir, STORE, 5, &p5).unwrap();
        let l = load(vfs, dir, STORE).unwrap();
        assert_eq!(l.best, Some((5, p5)));
        assert_eq!(
            load_slot(vfs, dir, STORE, 0).unwrap(),
            Some((4, Vec::new()))
        );
        assert_eq!(read_file(vfs, &slot_path(dir, 0)).len(), 64);
        assert_eq!(l.next_gen(l.best_gen()), 6);
    }

    #[test]
    fn round_trip_on_mem_vfs() {
        round_trip(&MemVfs::new(), Path::new("/store"));
    }

    #[test]
    fn round_trip_on_os_vfs() {
        let tmp = tempfile::tempdir().unwrap();
        round_trip(&OsVfs, &tmp.path().join("store"));
    }

    #[test]
    fn alternating_generations_pick_the_newest() {
        let (vfs, dir) = mem_store();
        let mut w = CkptWriter::new(&dir, STORE, &load(&vfs, &dir, STORE).unwrap(), None).unwrap();
        for gen in 1..=9u64 {
            let p = payload(gen, (gen as usize * 997) % 5000);
            assert_eq!(w.write(&vfs, &p).unwrap(), gen);
            let l = load(&vfs, &dir, STORE).unwrap();
            assert_eq!(l.best, Some((gen, p)));
            assert_eq!(l.candidates().len(), if gen == 1 { 1 } else { 2 });
            assert_eq!(w.kept(), Some(gen));
            assert_eq!(w.next_gen(), gen + 1);
        }
    }

    /// Slot 0 holds gen 2, slot 1 gen 3; `damage` spoils slot 1 and load must fall back.
    fn falls_back(damage: impl Fn(&MemVfs, &Path, Vec<u8>), reason: &str) {
        let (vfs, dir) = mem_store();
        let p2 = payload(2, 5000);
        let p3 = payload(3, 7000);
        write(&vfs, &dir, STORE, 1, &payload(1, 1)).unwrap();
        write(&vfs, &dir, STORE, 2, &p2).unwrap();
        write(&vfs, &dir, STORE, 3, &p3).unwrap();
        let s1 = slot_path(&dir, 1);
        damage(&vfs, &s1, read_file(&vfs, &s1));
        let l = load(&vfs, &dir, STORE).unwrap();
        assert!(is_invalid(status(&l, 1), reason), "{:?}", l.slots);
        assert_eq!(l.best, Some((2, p2.clone())));
        assert_eq!(l.candidates(), vec![(0, 2)]);
        assert_eq!(load_slot(&vfs, &dir, STORE, 1).unwrap(), None);
        // Keeping 2, the next write goes over the damaged slot.
        let mut w = CkptWriter::new(&dir, STORE, &l, l.best_gen()).unwrap();
        assert_eq!(w.next_gen(), 3);
        assert_eq!(w.write(&vfs, b"again").unwrap(), 3);
        assert_eq!(
            load(&vfs, &dir, STORE).unwrap().best,
            Some((3, b"again".to_vec()))
        );

        // Both bad: nothing.
        let (vfs, dir) = mem_store();
        write(&vfs, &dir, STORE, 1, &payload(1, 1)).unwrap();
        write(&vfs, &dir, STORE, 2, &p2).unwrap();
        write(&vfs, &dir, STORE, 3, &p3).unwrap();
        let s1 = slot_path(&dir, 1);
        let s0 = slot_path(&dir, 0);
        damage(&vfs, &s1, read_file(&vfs, &s1));
        put_file(&vfs, &s0, b"junk");
        let l = load(&vfs, &dir, STORE).unwrap();
        assert_eq!(l.best, None);
        assert!(is_invalid(status(&l, 0), "shorter than the 64-byte header"));
        assert!(is_invalid(status(&l, 1), reason));
    }

    /// Rewrites a header field (and the header checksum, so only that field is wrong).
    fn with_field(mut b: Vec<u8>, at: usize, value: &[u8]) -> Vec<u8> {
        b[at..at + value.len()].copy_from_slice(value);
        let crc = crc32c::crc32c(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    #[test]
    fn bit_flip_in_header() {
        for at in [0usize, 9, 17, 25, 33, 41, 50, 61] {
            falls_back(
                |v, p, mut b| {
                    b[at] ^= 0x10;
                    put_file(v, p, &b);
                },
                if at == 0 { "magic" } else { "header checksum" },
            );
        }
    }

    #[test]
    fn bit_flip_in_payload() {
        for at in [64usize, 64 + 4095, 64 + 6999] {
            falls_back(
                |v, p, mut b| {
                    b[at] ^= 1;
                    put_file(v, p, &b);
                },
                "payload checksum",
            );
        }
    }

    #[test]
    fn truncated_file() {
        falls_back(|v, p, b| put_file(v, p, &b[..b.len() - 1]), "shorter");
        falls_back(|v, p, b| put_file(v, p, &b[..64]), "shorter");
        falls_back(|v, p, b| put_file(v, p, &b[..40]), "shorter");
    }

    #[test]
    fn zeroed_header() {
        falls_back(
            |v, p, mut b| {
                b[..64].fill(0);
                put_file(v, p, &b);
            },
            "all zeroes",
        );
    }

    #[test]
    fn wrong_store_id() {
        falls_back(
            |v, p, b| put_file(v, p, &with_field(b, 16, &7u64.to_le_bytes())),
            "belongs to store",
        );
        // A whole store's slots read with another id: nothing valid.
        let (vfs, dir) = mem_store();
        write(&vfs, &dir, STORE, 1, b"x").unwrap();
        let l = load(&vfs, &dir, STORE + 1).unwrap();
        assert_eq!(l.best, None);
        assert!(is_invalid(status(&l, 1), "belongs to store"));
    }

    #[test]
    fn bad_generations() {
        falls_back(
            |v, p, b| put_file(v, p, &with_field(b, 24, &0u64.to_le_bytes())),
            "generation 0 out of range",
        );
        falls_back(
            |v, p, b| put_file(v, p, &with_field(b, 24, &u64::MAX.to_le_bytes())),
            "out of range",
        );
        // An odd generation read from slot 1 written as even: wrong slot.
        falls_back(
            |v, p, b| put_file(v, p, &with_field(b, 24, &4u64.to_le_bytes())),
            "does not belong in slot 1",
        );
    }

    #[test]
    fn absurd_lengths() {
        falls_back(
            |v, p, b| put_file(v, p, &with_field(b, 32, &u64::MAX.to_le_bytes())),
            "above the limit",
        );
        falls_back(
            |v, p, b| {
                let len = CKPT_PAYLOAD_MAX + 1;
                put_file(v, p, &with_field(b, 32, &len.to_le_bytes()));
            },
            "above the limit",
        );
        // Within the limit but beyond the file.
        falls_back(
            |v, p, b| put_file(v, p, &with_field(b, 32, &CKPT_PAYLOAD_MAX.to_le_bytes())),
            "shorter than header + payload",
        );
    }

    #[test]
    fn version_and_flags() {
        falls_back(
            |v, p, b| put_file(v, p, &with_field(b, 8, &2u16.to_le_bytes())),
            "unsupported checkpoint version 2",
        );
        falls_back(
            |v, p, b| put_file(v, p, &with_field(b, 10, &1u16.to_le_bytes())),
            "unknown header flags",
        );
    }

    #[test]
    fn longer_file_is_tolerated() {
        let (vfs, dir) = mem_store();
        write(&vfs, &dir, STORE, 1, b"short").unwrap();
        let f = vfs.open(&slot_path(&dir, 1), OpenMode::ReadWrite).unwrap();
        f.write_all_at(&[0xAB; 1000], 69).unwrap();
        let l = load(&vfs, &dir, STORE).unwrap();
        assert_eq!(l.best, Some((1, b"short".to_vec())));
    }

    #[test]
    fn header_layout_is_pinned() {
        let h = Header {
            store_id: 0x0102_0304_0506_0708,
            gen: 9,
            payload_len: 3,
            payload_crc: crc32c::crc32c(b"abc"),
        };
        let b = h.encode();
        assert_eq!(&b[0..8], b"SPOOLCKP");
        assert_eq!(&b[8..16], &[1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[16..24], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&b[24..32], &9u64.to_le_bytes());
        assert_eq!(&b[32..40], &3u64.to_le_bytes());
        assert_eq!(&b[40..44], &0x364B_3FB7u32.to_le_bytes()); // crc32c("abc")
        assert_eq!(&b[44..60], &[0u8; 16]);
        assert_eq!(&b[60..64], &crc32c::crc32c(&b[..60]).to_le_bytes());
        assert_eq!(Header::decode(&b, h.store_id, 1), Ok(h));
    }

    #[test]
    fn write_refuses_what_could_overwrite_the_newest() {
        let (vfs, dir) = mem_store();
        let err = write(&vfs, &dir, STORE, 0, b"x").unwrap_err();
        assert!(
            matches!(err, CkptError::GenOutOfRange { gen: 0, .. }),
            "{err}"
        );
        let err = write(&vfs, &dir, STORE, CKPT_GEN_MAX + 1, b"x").unwrap_err();
        assert!(matches!(err, CkptError::GenOutOfRange { .. }), "{err}");

        write(&vfs, &dir, STORE, 1, b"one").unwrap();
        // Rewriting the same generation (a retry) is allowed; gen 3 over the only checkpoint
        // is not.
        write(&vfs, &dir, STORE, 1, b"one").unwrap();
        let err = write(&vfs, &dir, STORE, 3, b"three").unwrap_err();
        assert!(
            matches!(
                err,
                CkptError::OutOfOrder {
                    gen: 3,
                    slot: 1,
                    found: 1,
                    expected: 2
                }
            ),
            "{err}"
        );
        write(&vfs, &dir, STORE, 2, b"two").unwrap();
        write(&vfs, &dir, STORE, 3, b"three").unwrap();
        // A gap (5 would overwrite 3, the newest) and going back.
        for gen in [5, 2, 1] {
            let err = write(&vfs, &dir, STORE, gen, b"x").unwrap_err();
            assert!(
                matches!(err, CkptError::OutOfOrder { expected: 4, .. }),
                "{gen}: {err}"
            );
            assert!(err.to_string().contains("write that one instead"));
        }
        assert_eq!(
            load(&vfs, &dir, STORE).unwrap().best,
            Some((3, b"three".to_vec()))
        );

        let err = write(&MemVfs::new(), Path::new("/nowhere"), STORE, 1, b"x").unwrap_err();
        assert!(matches!(err, CkptError::SlotMissing { .. }), "{err}");
        assert!(err.to_string().contains("create_slots"));
        let err = write(
            &vfs,
            &dir,
            STORE,
            4,
            &vec![0; usize::try_from(CKPT_PAYLOAD_MAX).unwrap() + 1],
        )
        .unwrap_err();
        assert!(matches!(err, CkptError::PayloadTooLarge { .. }), "{err}");
        assert!(matches!(
            load_slot(&vfs, &dir, STORE, 2),
            Err(CkptError::NoSuchSlot { slot: 2 })
        ));
    }

    #[test]
    fn writer_keeping_the_older_candidate() {
        let (vfs, dir) = mem_store();
        for gen in 1..=5 {
            write(&vfs, &dir, STORE, gen, &payload(gen, 50)).unwrap();
        }
        let l = load(&vfs, &dir, STORE).unwrap();
        assert_eq!(l.candidates(), vec![(1, 5), (0, 4)]);
        // The caller rejects 5's content and keeps 4: the next write goes over 5.
        let (slot, gen) = l.candidates()[1];
        assert_eq!(
            load_slot(&vfs, &dir, STORE, slot).unwrap(),
            Some((4, payload(4, 50)))
        );
        let mut w = CkptWriter::new(&dir, STORE, &l, Some(gen)).unwrap();
        assert_eq!(w.next_gen(), 5);
        w.write(&vfs, b"new five").unwrap();
        let l = load(&vfs, &dir, STORE).unwrap();
        assert_eq!(l.best, Some((5, b"new five".to_vec())));
        assert_eq!(
            load_slot(&vfs, &dir, STORE, 0).unwrap(),
            Some((4, payload(4, 50)))
        );
        assert!(matches!(
            CkptWriter::new(&dir, STORE, &l, Some(3)),
            Err(CkptError::NotACandidate { gen: 3 })
        ));
        // Keeping nothing: one above every header.
        assert_eq!(l.next_gen(None), 6);
    }

    #[test]
    fn next_gen_steps_over_a_torn_header() {
        let (vfs, dir) = mem_store();
        write(&vfs, &dir, STORE, 1, b"one").unwrap();
        // A write of 2 whose payload never arrived: a sound header, a bad payload.
        write(&vfs, &dir, STORE, 2, b"two").unwrap();
        let s0 = slot_path(&dir, 0);
        let mut b = read_file(&vfs, &s0);
        b[64] ^= 0xFF;
        put_file(&vfs, &s0, &b);
        let l = load(&vfs, &dir, STORE).unwrap();
        assert_eq!(l.best_gen(), Some(1));
        assert_eq!(l.next_gen(Some(1)), 2);
        assert_eq!(l.next_gen(None), 3);
    }

    #[test]
    fn statuses_display_for_diagnostics() {
        let (vfs, dir) = mem_store();
        write(&vfs, &dir, STORE, 1, b"abc").unwrap();
        let l = load(&vfs, &dir, STORE).unwrap();
        assert_eq!(l.slots[0].to_string(), "ckpt.0: empty");
        assert_eq!(
            l.slots[1].to_string(),
            "ckpt.1: valid: generation 1, 3 payload bytes"
        );
    }

    #[test]
    fn io_errors_are_errors_not_invalid_slots() {
        // A directory where a slot file should be: opening or reading it fails with an error
        // other than NotFound.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        OsVfs.create_dir_all(&slot_path(&dir, 0)).unwrap();
        let err = load(&OsVfs, &dir, STORE).unwrap_err();
        assert!(matches!(err, CkptError::Io { .. }), "{err}");
        assert!(err.to_string().contains("ckpt.0"), "{err}");
    }
}
