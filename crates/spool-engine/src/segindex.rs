//! Sealed-segment indexes: `log/<seg_id:020>.idx`.
//!
//! For every *lane* (a queue's priority level, or a topic) the records of a segment form a run
//! of [`IdxEntry`]s sorted by id. While a segment is active its index lives in RAM; when the
//! segment is sealed the index is written once next to it ([`write_file`]), and readers then
//! page through it ([`IdxFile`]) a few hundred entries at a time instead of holding one entry
//! per message in RAM.
//!
//! An index is **derived data**: the engine can always rebuild it from its segment. It is
//! therefore written in place without any fsync ordering, and a file that is missing, torn,
//! damaged or describes another version of the segment is *detected* ([`IdxError::Missing`],
//! [`IdxError::Corrupt`], [`IdxError::Stale`]) and never trusted. [`IdxFile::open`] validates
//! the whole file (both checksums, every count, every lane's ids) while streaming through it in
//! 64 KiB chunks; afterwards reads trust the content but still fail cleanly (never panic) if
//! the file shrank underneath. Layout: `docs/format.md`, "Segment index".

use std::convert::Infallible;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::vfs::{OpenMode, Vfs, VfsFile};

/// `b"SPOOLIDX"`.
pub const IDX_MAGIC: [u8; 8] = *b"SPOOLIDX";
/// The index format version this engine writes and reads.
pub const IDX_VERSION: u16 = 1;
/// Bytes of the file header.
pub const IDX_HEADER_LEN: usize = 64;
/// Bytes of one lane-table record.
pub const IDX_LANE_LEN: usize = 40;
/// Bytes of one entry.
pub const IDX_ENTRY_LEN: usize = 40;
/// Bytes of the trailer (the crc32c of everything between the header and the trailer).
pub const IDX_TRAILER_LEN: usize = 4;

const _: () = assert!(IDX_LANE_LEN == IDX_ENTRY_LEN);
/// Lane-table records and entries have the same size, so the body of the file (from the header
/// to the trailer) is a plain sequence of 40-byte records.
const REC: usize = IDX_ENTRY_LEN;
/// Records per chunk when streaming a file (65,520 bytes: chunks never split a record).
const CHUNK_RECORDS: usize = 1638;
const CHUNK_BYTES: usize = CHUNK_RECORDS * REC;
/// A binary search reads single ids until at most this many candidates remain, then reads
/// them in one go (2,560 bytes).
const SEARCH_WINDOW: u64 = 64;

const KIND_QUEUE: u8 = 1;
const KIND_TOPIC: u8 = 2;

// ---------------------------------------------------------------------------------------------
// Types

/// One record of a segment, as a reader of its lane needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IdxEntry {
    /// Message id (queue lanes) or sequence number (topic lanes).
    pub id: u64,
    /// Byte offset of the record inside the segment.
    pub off: u32,
    /// Byte length of the record.
    pub len: u32,
    /// Accounted bytes (what counts against the queue's or topic's byte limits).
    pub size: u32,
    /// crc32c of the record bytes.
    pub crc: u32,
    /// Expiry time (Unix ms, 0 = never); for topic lanes the publication time.
    pub expires_ms: u64,
    /// When the message was pushed (Unix ms; a dead letter keeps its original time).
    pub enqueued_ms: u64,
}

/// The top bit of [`IdxEntry::size`]: the record carries a dead letter's history (read the
/// record for its counters). Sizes stay far below 2^31 (a transaction is at most 64 MiB).
pub const SIZE_CARRIED: u32 = 1 << 31;

impl IdxEntry {
    /// The 40-byte encoding.
    pub fn encode(&self) -> [u8; IDX_ENTRY_LEN] {
        let mut b = [0u8; IDX_ENTRY_LEN];
        b[0..8].copy_from_slice(&self.id.to_le_bytes());
        b[8..12].copy_from_slice(&self.off.to_le_bytes());
        b[12..16].copy_from_slice(&self.len.to_le_bytes());
        b[16..20].copy_from_slice(&self.size.to_le_bytes());
        b[20..24].copy_from_slice(&self.crc.to_le_bytes());
        b[24..32].copy_from_slice(&self.expires_ms.to_le_bytes());
        b[32..40].copy_from_slice(&self.enqueued_ms.to_le_bytes());
        b
    }

    /// Decodes the first 40 bytes of `b` (`None` if it is shorter). Every bit pattern is an
    /// entry; the ordering rules are checked by the file-level validation.
    pub fn decode(b: &[u8]) -> Option<Self> {
        let b = b.get(..IDX_ENTRY_LEN)?;
        Some(Self {
            id: u64_at(b, 0),
            off: u32_at(b, 8),
            len: u32_at(b, 12),
            size: u32_at(b, 16),
            crc: u32_at(b, 20),
            expires_ms: u64_at(b, 24),
            enqueued_ms: u64_at(b, 32),
        })
    }
}

/// Which run of records a lane holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LaneKey {
    /// One priority level of a queue.
    Queue { queue: u32, prio: u8 },
    /// A topic.
    Topic { topic: u32 },
}

impl fmt::Display for LaneKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LaneKey::Queue { queue, prio } => write!(f, "queue {queue} priority {prio}"),
            LaneKey::Topic { topic } => write!(f, "topic {topic}"),
        }
    }
}

/// The entries of one lane of a segment, sorted by id (strictly increasing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneIndex {
    pub key: LaneKey,
    pub entries: Vec<IdxEntry>,
}

/// The whole index of one sealed segment, in RAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentIndex {
    /// The store the segment belongs to.
    pub store_id: u64,
    /// The segment this index describes.
    pub seg_id: u64,
    /// Bytes of the segment this index describes.
    pub seg_len: u64,
    /// LSN of the last frame in the segment.
    pub last_lsn: u64,
    /// One lane per key (a key appears at most once), in file order.
    pub lanes: Vec<LaneIndex>,
}

/// A lane as recorded in the lane table of an index file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneMeta {
    pub key: LaneKey,
    /// Id of the lane's first entry (0 when the lane is empty).
    pub first_id: u64,
    /// Id of the lane's last entry (0 when the lane is empty).
    pub last_id: u64,
    pub n_entries: u64,
    /// File offset of the lane's first entry.
    pub entries_off: u64,
}

/// What an index file must describe to be usable: the segment as it is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expect {
    pub store_id: u64,
    pub seg_id: u64,
    pub seg_len: u64,
    pub last_lsn: u64,
}

/// Why an index could not be read or written. `Missing`, `Corrupt` and `Stale` all mean the
/// same to the engine: rebuild the index from its segment.
#[derive(Debug, thiserror::Error)]
pub enum IdxError {
    /// An I/O call failed.
    #[error("{op} {path:?}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The bytes are not a valid index (torn, damaged, or not an index at all).
    #[error("segment index {} is damaged: {reason}; it must be rebuilt from its segment", shown(.path))]
    Corrupt { path: PathBuf, reason: String },
    /// A valid index, but of another state of the segment (or of another segment or store).
    #[error("segment index {path:?} is stale: {reason}; it must be rebuilt from its segment")]
    Stale { path: PathBuf, reason: String },
    /// There is no index file.
    #[error("segment index {path:?} does not exist; it must be built from its segment")]
    Missing { path: PathBuf },
    /// The caller handed over something that breaks the format's rules (an index with
    /// unsorted ids or a duplicate lane to [`write_file`], a lane of another file to
    /// [`IdxFile`]): a bug in the caller. Nothing was written.
    #[error("segment index {path:?}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

fn shown(path: &Path) -> String {
    if path.as_os_str().is_empty() {
        "(bytes in memory)".to_string()
    } else {
        format!("\"{}\"", path.display())
    }
}

// ---------------------------------------------------------------------------------------------
// File names

/// The file name of the index of segment `seg_id`.
pub fn idx_file_name(seg_id: u64) -> String {
    format!("{seg_id:020}.idx")
}

/// The segment id of an index file name, if it is one.
pub fn parse_idx_file_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".idx")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// `<log_dir>/<seg_id:020>.idx`.
pub fn idx_path(log_dir: &Path, seg_id: u64) -> PathBuf {
    log_dir.join(idx_file_name(seg_id))
}

// ---------------------------------------------------------------------------------------------
// Little-endian helpers (callers pass in-bounds offsets of fixed-size records)

fn u32_at(b: &[u8], i: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[i..i + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(a)
}

// ---------------------------------------------------------------------------------------------
// Header

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    store_id: u64,
    seg_id: u64,
    seg_len: u64,
    last_lsn: u64,
    n_lanes: u32,
}

impl Header {
    fn encode(&self) -> [u8; IDX_HEADER_LEN] {
        let mut b = [0u8; IDX_HEADER_LEN];
        b[0..8].copy_from_slice(&IDX_MAGIC);
        b[8..10].copy_from_slice(&IDX_VERSION.to_le_bytes());
        // 10..12 flags = 0, 12..16 reserved
        b[16..24].copy_from_slice(&self.store_id.to_le_bytes());
        b[24..32].copy_from_slice(&self.seg_id.to_le_bytes());
        b[32..40].copy_from_slice(&self.seg_len.to_le_bytes());
        b[40..48].copy_from_slice(&self.last_lsn.to_le_bytes());
        b[48..52].copy_from_slice(&self.n_lanes.to_le_bytes());
        // 52..60 reserved
        let crc = crc32c::crc32c(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Result<Self, String> {
        if b.len() < IDX_HEADER_LEN {
            return Err(format!(
                "{} bytes, shorter than the {IDX_HEADER_LEN}-byte header",
                b.len()
            ));
        }
        if b[0..8] != IDX_MAGIC {
            return Err("bad magic (not a spool segment index)".into());
        }
        if crc32c::crc32c(&b[..60]) != u32_at(b, 60) {
            return Err("header checksum mismatch".into());
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        if version != IDX_VERSION {
            return Err(format!(
                "version {version} (this engine reads version {IDX_VERSION})"
            ));
        }
        if b[10..16].iter().chain(&b[52..60]).any(|&x| x != 0) {
            return Err("non-zero header flags or reserved bytes".into());
        }
        Ok(Self {
            store_id: u64_at(b, 16),
            seg_id: u64_at(b, 24),
            seg_len: u64_at(b, 32),
            last_lsn: u64_at(b, 40),
            n_lanes: u32_at(b, 48),
        })
    }

    /// Why this header does not describe the segment `expect` describes, if it does not.
    fn stale_reason(&self, expect: &Expect) -> Option<String> {
        let fields = [
            ("store id", self.store_id, expect.store_id),
            ("segment id", self.seg_id, expect.seg_id),
            ("segment length", self.seg_len, expect.seg_len),
            ("last LSN", self.last_lsn, expect.last_lsn),
        ];
        let diffs: Vec<String> = fields
            .iter()
            .filter(|(_, got, want)| got != want)
            .map(|(what, got, want)| format!("{what} {got} (the segment's is {want})"))
            .collect();
        (!diffs.is_empty()).then(|| format!("it describes {}", diffs.join(", ")))
    }
}

// ---------------------------------------------------------------------------------------------
// Lane-table records

fn encode_lane(m: &LaneMeta) -> [u8; IDX_LANE_LEN] {
    let mut b = [0u8; IDX_LANE_LEN];
    let (kind, prio, owner) = match m.key {
        LaneKey::Queue { queue, prio } => (KIND_QUEUE, prio, queue),
        LaneKey::Topic { topic } => (KIND_TOPIC, 0, topic),
    };
    b[0] = kind;
    b[1] = prio;
    // 2..4 reserved
    b[4..8].copy_from_slice(&owner.to_le_bytes());
    b[8..16].copy_from_slice(&m.first_id.to_le_bytes());
    b[16..24].copy_from_slice(&m.last_id.to_le_bytes());
    b[24..32].copy_from_slice(&m.n_entries.to_le_bytes());
    b[32..40].copy_from_slice(&m.entries_off.to_le_bytes());
    b
}

/// Decodes lane record `i` and checks it on its own (kind, reserved bytes, id range against
/// the count); `entries_off` is checked by the [`Validator`].
fn decode_lane(b: &[u8], i: usize) -> Result<LaneMeta, String> {
    let owner = u32_at(b, 4);
    let key = match (b[0], b[1]) {
        (KIND_QUEUE, prio) => LaneKey::Queue { queue: owner, prio },
        (KIND_TOPIC, 0) => LaneKey::Topic { topic: owner },
        (KIND_TOPIC, prio) => return Err(format!("lane {i}: topic lane with priority {prio}")),
        (kind, _) => return Err(format!("lane {i}: unknown lane kind {kind}")),
    };
    if b[2..4] != [0, 0] {
        return Err(format!("lane {i} ({key}): non-zero reserved bytes"));
    }
    let m = LaneMeta {
        key,
        first_id: u64_at(b, 8),
        last_id: u64_at(b, 16),
        n_entries: u64_at(b, 24),
        entries_off: u64_at(b, 32),
    };
    if m.n_entries == 0 {
        if m.first_id != 0 || m.last_id != 0 {
            return Err(format!(
                "lane {i} ({key}): no entries but first/last id {}/{}",
                m.first_id, m.last_id
            ));
        }
    } else if m.last_id < m.first_id || m.last_id - m.first_id < m.n_entries - 1 {
        // n strictly increasing ids span at least n - 1.
        return Err(format!(
            "lane {i} ({key}): {} entries cannot have ids from {} to {}",
            m.n_entries, m.first_id, m.last_id
        ));
    }
    Ok(m)
}

// ---------------------------------------------------------------------------------------------
// Validation, shared by `SegmentIndex::decode` (bytes in RAM) and `IdxFile::open` (streamed)

/// Checks the body of an index file record by record: first `n_lanes` lane records, then the
/// entries. Every count is checked against the file length before it is used, and nothing is
/// allocated beyond what the records fed in occupy.
struct Validator {
    n_lanes: usize,
    file_len: u64,
    lanes: Vec<LaneMeta>,
    /// Lane indexes sorted by key (set once the table is complete).
    by_key: Vec<usize>,
    /// Where the next lane's entries must start (while reading the table).
    next_off: u64,
    /// The next lane to enter, the current one (an index into `lanes`), the entries left in
    /// it, how many of its entries were seen, and the last id seen.
    next_lane: usize,
    cur: usize,
    left: u64,
    seen: u64,
    prev_id: u64,
}

impl Validator {
    /// Checks the length arithmetic of the header against `file_len`, the length of the whole
    /// file.
    fn new(h: &Header, file_len: u64) -> Result<Self, String> {
        let fixed = (IDX_HEADER_LEN + IDX_TRAILER_LEN) as u64;
        let Some(body) = file_len.checked_sub(fixed) else {
            return Err(format!(
                "{file_len} bytes, shorter than a header and a trailer"
            ));
        };
        if body % REC as u64 != 0 {
            return Err(format!(
                "length {file_len} is not a header, 40-byte records and a trailer"
            ));
        }
        let table = u64::from(h.n_lanes) * IDX_LANE_LEN as u64;
        if table > body {
            return Err(format!(
                "{} lanes do not fit in a file of {file_len} bytes",
                h.n_lanes
            ));
        }
        let mut v = Self {
            n_lanes: h.n_lanes as usize,
            file_len,
            // Bounded by the file length (checked just above), and capped so that nothing is
            // reserved ahead of the records actually read.
            lanes: Vec::with_capacity((h.n_lanes as usize).min(CHUNK_RECORDS)),
            by_key: Vec::new(),
            next_off: IDX_HEADER_LEN as u64 + table,
            next_lane: 0,
            cur: 0,
            left: 0,
            seen: 0,
            prev_id: 0,
        };
        if v.n_lanes == 0 {
            v.table_done()?;
        }
        Ok(v)
    }

    fn table_done(&mut self) -> Result<(), String> {
        let want = self.next_off + IDX_TRAILER_LEN as u64;
        if want != self.file_len {
            return Err(format!(
                "the lane table accounts for {want} bytes, the file has {}",
                self.file_len
            ));
        }
        let mut by_key: Vec<usize> = (0..self.lanes.len()).collect();
        by_key.sort_unstable_by_key(|&i| (self.lanes[i].key, i));
        if let Some(w) = by_key
            .windows(2)
            .find(|w| self.lanes[w[0]].key == self.lanes[w[1]].key)
        {
            return Err(format!(
                "lanes {} and {} have the same key ({})",
                w[0], w[1], self.lanes[w[0]].key
            ));
        }
        self.by_key = by_key;
        Ok(())
    }

    /// Feeds the next 40-byte record. Returns the lane index and the entry when it was an
    /// entry, `None` when it was a lane record.
    fn record(&mut self, rec: &[u8]) -> Result<Option<(usize, IdxEntry)>, String> {
        if self.lanes.len() < self.n_lanes {
            let i = self.lanes.len();
            let m = decode_lane(rec, i)?;
            if m.entries_off != self.next_off {
                return Err(format!(
                    "lane {i} ({}): entries at offset {}, expected {}",
                    m.key, m.entries_off, self.next_off
                ));
            }
            self.next_off = m
                .n_entries
                .checked_mul(IDX_ENTRY_LEN as u64)
                .and_then(|n| n.checked_add(self.next_off))
                .filter(|&end| end <= self.file_len)
                .ok_or_else(|| {
                    format!(
                        "lane {i} ({}): {} entries do not fit in the file",
                        m.key, m.n_entries
                    )
                })?;
            self.lanes.push(m);
            if self.lanes.len() == self.n_lanes {
                self.table_done()?;
            }
            return Ok(None);
        }
        let Some(e) = IdxEntry::decode(rec) else {
            return Err("short record".into());
        };
        while self.left == 0 {
            let Some(m) = self.lanes.get(self.next_lane) else {
                return Err("more entries than the lane table counts".into());
            };
            self.cur = self.next_lane;
            self.next_lane += 1;
            self.left = m.n_entries;
            self.seen = 0;
        }
        let (i, m) = (self.cur, &self.lanes[self.cur]);
        if self.seen == 0 {
            if e.id != m.first_id {
                return Err(format!(
                    "lane {i} ({}): first entry has id {}, the lane table says {}",
                    m.key, e.id, m.first_id
                ));
            }
        } else if e.id <= self.prev_id {
            return Err(format!(
                "lane {i} ({}): entry {} has id {} after id {} (ids must increase)",
                m.key, self.seen, e.id, self.prev_id
            ));
        }
        self.left -= 1;
        self.seen += 1;
        self.prev_id = e.id;
        if self.left == 0 && e.id != m.last_id {
            return Err(format!(
                "lane {i} ({}): last entry has id {}, the lane table says {}",
                m.key, e.id, m.last_id
            ));
        }
        Ok(Some((i, e)))
    }

    /// After the last record: everything the lane table counts was seen.
    fn finish(self) -> Result<(Vec<LaneMeta>, Vec<usize>), String> {
        if self.lanes.len() < self.n_lanes {
            return Err("the file ends inside the lane table".into());
        }
        let rest = self.lanes.get(self.next_lane..).unwrap_or_default();
        if self.left != 0 || rest.iter().any(|m| m.n_entries != 0) {
            return Err("fewer entries than the lane table counts".into());
        }
        Ok((self.lanes, self.by_key))
    }
}

// ---------------------------------------------------------------------------------------------
// SegmentIndex: the whole index in RAM

impl SegmentIndex {
    /// The lane with this key (a linear search: the engine builds `lanes` in any order).
    pub fn lane(&self, key: LaneKey) -> Option<&LaneIndex> {
        self.lanes.iter().find(|l| l.key == key)
    }

    /// Entries over all lanes.
    pub fn total_entries(&self) -> u64 {
        self.lanes.iter().map(|l| l.entries.len() as u64).sum()
    }

    /// Bytes of the encoding.
    pub fn encoded_len(&self) -> u64 {
        (IDX_HEADER_LEN + IDX_TRAILER_LEN) as u64
            + self.lanes.len() as u64 * IDX_LANE_LEN as u64
            + self.total_entries() * IDX_ENTRY_LEN as u64
    }

    /// What [`IdxFile::open`] must find for this index to be used: this segment, as it is
    /// described here.
    pub fn expect(&self) -> Expect {
        Expect {
            store_id: self.store_id,
            seg_id: self.seg_id,
            seg_len: self.seg_len,
            last_lsn: self.last_lsn,
        }
    }

    /// Whether the index keeps the format's rules (what [`SegmentIndex::decode`] and
    /// [`IdxFile::open`] check): at most `u32::MAX` lanes, each key at most once, ids strictly
    /// increasing within each lane. [`write_file`] refuses an index that does not.
    pub fn check(&self) -> Result<(), String> {
        if u32::try_from(self.lanes.len()).is_err() {
            return Err(format!("{} lanes (at most {})", self.lanes.len(), u32::MAX));
        }
        let mut keys: Vec<LaneKey> = self.lanes.iter().map(|l| l.key).collect();
        keys.sort_unstable();
        if let Some([dup, ..]) = keys.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("lane {dup} appears twice"));
        }
        for l in &self.lanes {
            if let Some(w) = l.entries.windows(2).find(|w| w[1].id <= w[0].id) {
                return Err(format!(
                    "lane {}: id {} follows id {} (ids must increase)",
                    l.key, w[1].id, w[0].id
                ));
            }
        }
        Ok(())
    }

    /// The lane table this index encodes to.
    fn metas(&self) -> Vec<LaneMeta> {
        let mut off = (IDX_HEADER_LEN + self.lanes.len() * IDX_LANE_LEN) as u64;
        self.lanes
            .iter()
            .map(|l| {
                let n = l.entries.len() as u64;
                let m = LaneMeta {
                    key: l.key,
                    first_id: l.entries.first().map_or(0, |e| e.id),
                    last_id: l.entries.last().map_or(0, |e| e.id),
                    n_entries: n,
                    entries_off: off,
                };
                off += n * IDX_ENTRY_LEN as u64;
                m
            })
            .collect()
    }

    /// Produces the encoding in pieces of at most about 64 KiB, in order, so that a large
    /// index can be written without a second copy of it in RAM.
    fn encode_chunks<E>(&self, mut emit: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        let header = Header {
            store_id: self.store_id,
            seg_id: self.seg_id,
            seg_len: self.seg_len,
            last_lsn: self.last_lsn,
            n_lanes: self.lanes.len() as u32,
        };
        let cap = usize::try_from(self.encoded_len()).map_or(CHUNK_BYTES, |n| n.min(CHUNK_BYTES));
        // Never longer than a chunk (the header counts towards the first one).
        let mut buf = Vec::with_capacity(cap);
        buf.extend_from_slice(&header.encode());
        // The trailer covers everything after the header.
        let mut crc_from = IDX_HEADER_LEN;
        let mut crc = 0u32;
        let mut flush = |buf: &mut Vec<u8>, crc_from: &mut usize| -> Result<(), E> {
            crc = crc32c::crc32c_append(crc, &buf[*crc_from..]);
            *crc_from = 0;
            emit(buf)?;
            buf.clear();
            Ok(())
        };
        let records = self.metas().into_iter().map(|m| encode_lane(&m)).chain(
            self.lanes
                .iter()
                .flat_map(|l| l.entries.iter().map(IdxEntry::encode)),
        );
        for rec in records {
            if buf.len() + REC > CHUNK_BYTES {
                flush(&mut buf, &mut crc_from)?;
            }
            buf.extend_from_slice(&rec);
        }
        flush(&mut buf, &mut crc_from)?;
        emit(&crc.to_le_bytes())
    }

    /// The bytes of the index file (layout in `docs/format.md`, "Segment index"). An index that fails
    /// [`SegmentIndex::check`] encodes to bytes that `decode` rejects.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(usize::try_from(self.encoded_len()).unwrap_or(0));
        let Ok(()) = self.encode_chunks(|piece| {
            out.extend_from_slice(piece);
            Ok::<(), Infallible>(())
        });
        out
    }

    /// Decodes and fully validates the bytes of an index file: magic, version, both
    /// checksums, the exact length, the lane table (kinds, offsets, counts, unique keys) and
    /// every lane's ids (strictly increasing, matching the table's first and last id). Counts
    /// are checked against `bytes.len()` before anything is allocated. The encoding is
    /// canonical: what decodes re-encodes to the same bytes.
    pub fn decode(bytes: &[u8]) -> Result<SegmentIndex, IdxError> {
        Self::decode_inner(bytes).map_err(|reason| IdxError::Corrupt {
            path: PathBuf::new(),
            reason,
        })
    }

    fn decode_inner(b: &[u8]) -> Result<SegmentIndex, String> {
        let h = Header::decode(b)?;
        let mut v = Validator::new(&h, b.len() as u64)?;
        // `Validator::new` checked that the length is header + records + trailer.
        let body = &b[IDX_HEADER_LEN..b.len() - IDX_TRAILER_LEN];
        if crc32c::crc32c(body) != u32_at(b, b.len() - IDX_TRAILER_LEN) {
            return Err("checksum mismatch".into());
        }
        let mut lanes: Vec<LaneIndex> = Vec::new();
        for rec in body.chunks_exact(REC) {
            let Some((i, e)) = v.record(rec)? else {
                continue;
            };
            if lanes.is_empty() {
                // The table is complete (entries come after it); each lane's count was
                // checked against the file length.
                lanes = v
                    .lanes
                    .iter()
                    .map(|m| LaneIndex {
                        key: m.key,
                        entries: Vec::with_capacity(m.n_entries as usize),
                    })
                    .collect();
            }
            lanes[i].entries.push(e);
        }
        let (metas, _) = v.finish()?;
        if lanes.is_empty() {
            // No entries at all: every lane is empty.
            lanes = metas
                .iter()
                .map(|m| LaneIndex {
                    key: m.key,
                    entries: Vec::new(),
                })
                .collect();
        }
        Ok(SegmentIndex {
            store_id: h.store_id,
            seg_id: h.seg_id,
            seg_len: h.seg_len,
            last_lsn: h.last_lsn,
            lanes,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Writing

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> IdxError + 'a {
    move |source| IdxError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes the index of a sealed segment to `<log_dir>/<seg_id:020>.idx` (created, or replaced
/// in place), in chunks of about 64 KiB, then `fdatasync`s it. No directory fsync and no
/// ordering with anything else: the file is derived data, and a torn or lost one is detected
/// by [`IdxFile::open`] and rebuilt. An index that fails [`SegmentIndex::check`] is refused
/// ([`IdxError::Invalid`]) before the file is touched.
///
/// The file is rewritten in place: an [`IdxFile`] open on the same path at that moment may
/// read the new bytes, or fail; rewrite only an index nobody has open (one that failed to open).
pub fn write_file(vfs: &dyn Vfs, log_dir: &Path, idx: &SegmentIndex) -> Result<(), IdxError> {
    let path = idx_path(log_dir, idx.seg_id);
    idx.check().map_err(|reason| IdxError::Invalid {
        path: path.clone(),
        reason: format!("refusing to write an invalid index: {reason}"),
    })?;
    let file = vfs
        .open(&path, OpenMode::Create)
        .map_err(io_err("create segment index", &path))?;
    file.set_len(0)
        .map_err(io_err("truncate segment index", &path))?;
    let mut at = 0u64;
    idx.encode_chunks(|piece| {
        file.write_all_at(piece, at)?;
        at += piece.len() as u64;
        Ok(())
    })
    .map_err(io_err("write segment index", &path))?;
    file.sync_data()
        .map_err(io_err("sync segment index", &path))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Reading: IdxFile

/// An open, validated index file. Holds the lane table (about 50 bytes of RAM a lane) and the
/// file handle; entries are read on demand with positional reads, so one `IdxFile` can serve
/// several threads (it is `Send + Sync`; no shared cursor).
#[derive(Debug)]
pub struct IdxFile {
    file: Arc<dyn VfsFile>,
    path: PathBuf,
    header: Header,
    lanes: Vec<LaneMeta>,
    /// Indexes into `lanes`, sorted by key.
    by_key: Vec<usize>,
}

/// Checks only the header of the index file for `expect` (64 bytes read): `Ok` when it is an
/// index of this segment in this state. What recovery uses to decide whether an index file
/// must be written again without reading every index in full (a body damaged behind a sound
/// header is found when the file is opened for reading, and rebuilt then).
pub fn probe_header(vfs: &dyn Vfs, log_dir: &Path, expect: Expect) -> Result<(), IdxError> {
    let path = idx_path(log_dir, expect.seg_id);
    let file = match vfs.open(&path, OpenMode::Read) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(IdxError::Missing { path });
        }
        Err(e) => return Err(io_err("open segment index", &path)(e)),
    };
    let len = file.len().map_err(io_err("stat segment index", &path))?;
    if len < IDX_HEADER_LEN as u64 {
        return Err(IdxError::Corrupt {
            path,
            reason: format!("{len} bytes, shorter than the {IDX_HEADER_LEN}-byte header"),
        });
    }
    let mut hb = [0u8; IDX_HEADER_LEN];
    read_exact(&*file, &path, &mut hb, 0)?;
    let header = Header::decode(&hb).map_err(|reason| IdxError::Corrupt {
        path: path.clone(),
        reason,
    })?;
    if let Some(reason) = header.stale_reason(&expect) {
        return Err(IdxError::Stale { path, reason });
    }
    Ok(())
}

impl IdxFile {
    /// Opens `<log_dir>/<expect.seg_id:020>.idx` and validates all of it: the header (then
    /// against `expect`: an index of another state of the segment is [`IdxError::Stale`]),
    /// the lane table, the length, every lane's ids and the trailer checksum, streaming
    /// through the entries in 64 KiB chunks (the entries are never all in RAM).
    pub fn open(vfs: &dyn Vfs, log_dir: &Path, expect: Expect) -> Result<IdxFile, IdxError> {
        let path = idx_path(log_dir, expect.seg_id);
        let file = match vfs.open(&path, OpenMode::Read) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(IdxError::Missing { path });
            }
            Err(e) => return Err(io_err("open segment index", &path)(e)),
        };
        let corrupt = |reason: String| IdxError::Corrupt {
            path: path.clone(),
            reason,
        };
        let len = file.len().map_err(io_err("stat segment index", &path))?;
        if len < IDX_HEADER_LEN as u64 {
            return Err(corrupt(format!(
                "{len} bytes, shorter than the {IDX_HEADER_LEN}-byte header"
            )));
        }
        let mut hb = [0u8; IDX_HEADER_LEN];
        read_exact(&*file, &path, &mut hb, 0)?;
        let header = Header::decode(&hb).map_err(corrupt)?;
        if let Some(reason) = header.stale_reason(&expect) {
            return Err(IdxError::Stale { path, reason });
        }
        let mut v = Validator::new(&header, len).map_err(corrupt)?;
        let body_end = len - IDX_TRAILER_LEN as u64;
        let mut at = IDX_HEADER_LEN as u64;
        let mut crc = 0u32;
        let mut buf =
            vec![0u8; usize::try_from(body_end - at).map_or(CHUNK_BYTES, |n| n.min(CHUNK_BYTES))];
        while at < body_end {
            let n = usize::try_from(body_end - at).map_or(CHUNK_BYTES, |n| n.min(CHUNK_BYTES));
            let chunk = &mut buf[..n];
            read_exact(&*file, &path, chunk, at)?;
            crc = crc32c::crc32c_append(crc, chunk);
            for rec in chunk.chunks_exact(REC) {
                v.record(rec).map_err(corrupt)?;
            }
            at += n as u64;
        }
        let mut trailer = [0u8; IDX_TRAILER_LEN];
        read_exact(&*file, &path, &mut trailer, body_end)?;
        if u32::from_le_bytes(trailer) != crc {
            return Err(corrupt("checksum mismatch".into()));
        }
        let (lanes, by_key) = v.finish().map_err(corrupt)?;
        Ok(IdxFile {
            file,
            path,
            header,
            lanes,
            by_key,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn store_id(&self) -> u64 {
        self.header.store_id
    }
    pub fn seg_id(&self) -> u64 {
        self.header.seg_id
    }
    pub fn seg_len(&self) -> u64 {
        self.header.seg_len
    }
    pub fn last_lsn(&self) -> u64 {
        self.header.last_lsn
    }
    /// Entries over all lanes.
    pub fn total_entries(&self) -> u64 {
        self.lanes.iter().map(|m| m.n_entries).sum()
    }

    /// The lane table, in file order.
    pub fn lanes(&self) -> &[LaneMeta] {
        &self.lanes
    }

    /// The lane with this key (binary search).
    pub fn lane(&self, key: LaneKey) -> Option<&LaneMeta> {
        let j = self
            .by_key
            .binary_search_by(|&i| self.lanes[i].key.cmp(&key))
            .ok()?;
        Some(&self.lanes[self.by_key[j]])
    }

    /// `lane` must be a lane of this file (from [`IdxFile::lanes`] or [`IdxFile::lane`]).
    fn own(&self, lane: &LaneMeta) -> Result<&LaneMeta, IdxError> {
        match self.lane(lane.key) {
            Some(m) if m == lane => Ok(m),
            _ => Err(IdxError::Invalid {
                path: self.path.clone(),
                reason: format!("{lane:?} is not a lane of this index"),
            }),
        }
    }

    /// Up to `max` entries of `lane` from entry number `from` on (empty at or past the end),
    /// in one positional read.
    pub fn read_entries(
        &self,
        lane: &LaneMeta,
        from: u64,
        max: usize,
    ) -> Result<Vec<IdxEntry>, IdxError> {
        let lane = self.own(lane)?;
        if from >= lane.n_entries {
            return Ok(Vec::new());
        }
        let n = (lane.n_entries - from).min(max as u64);
        self.read_range(lane, from, n)
    }

    /// Entries `from..from + n` of `lane` (in range: checked by the callers).
    fn read_range(&self, lane: &LaneMeta, from: u64, n: u64) -> Result<Vec<IdxEntry>, IdxError> {
        // Within the validated file, so `n * 40` is at most its length.
        let mut buf = vec![0u8; n as usize * IDX_ENTRY_LEN];
        let off = lane.entries_off + from * IDX_ENTRY_LEN as u64;
        read_exact(&*self.file, &self.path, &mut buf, off)?;
        Ok(buf
            .chunks_exact(IDX_ENTRY_LEN)
            .filter_map(IdxEntry::decode)
            .collect())
    }

    fn read_id(&self, lane: &LaneMeta, index: u64) -> Result<u64, IdxError> {
        let mut b = [0u8; 8];
        let off = lane.entries_off + index * IDX_ENTRY_LEN as u64;
        read_exact(&*self.file, &self.path, &mut b, off)?;
        Ok(u64::from_le_bytes(b))
    }

    /// The number of the first entry of `lane` whose id is `>= id` (`n_entries` when there is
    /// none). A binary search with positional reads: about log2(n / 64) reads of one id, then
    /// one read of at most 64 entries.
    pub fn lower_bound(&self, lane: &LaneMeta, id: u64) -> Result<u64, IdxError> {
        let lane = self.own(lane)?;
        if lane.n_entries == 0 || id <= lane.first_id {
            return Ok(0);
        }
        if id > lane.last_id {
            return Ok(lane.n_entries);
        }
        Ok(self.search(lane, id)?.0)
    }

    /// The entry of `lane` with this id, and its number.
    pub fn find(&self, lane: &LaneMeta, id: u64) -> Result<Option<(u64, IdxEntry)>, IdxError> {
        let lane = self.own(lane)?;
        if lane.n_entries == 0 || id < lane.first_id || id > lane.last_id {
            return Ok(None);
        }
        Ok(match self.search(lane, id)? {
            (i, Some(e)) if e.id == id => Some((i, e)),
            _ => None,
        })
    }

    /// Lower bound of `id` in a non-empty lane with `id <= last_id`, and the entry there.
    fn search(&self, lane: &LaneMeta, id: u64) -> Result<(u64, Option<IdxEntry>), IdxError> {
        // The answer lies in lo..=hi: entry hi has an id >= `id` (the last one does), and
        // every entry before lo has a smaller one.
        let (mut lo, mut hi) = (0u64, lane.n_entries - 1);
        if id <= lane.first_id {
            hi = 0;
        }
        while hi - lo > SEARCH_WINDOW {
            let mid = lo + (hi - lo) / 2;
            if self.read_id(lane, mid)? >= id {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        let window = self.read_range(lane, lo, hi - lo + 1)?;
        let p = window.partition_point(|e| e.id < id);
        Ok((lo + p as u64, window.get(p).copied()))
    }
}

/// `read_exact_at`, where a short read means the file shrank after it was validated.
fn read_exact(file: &dyn VfsFile, path: &Path, buf: &mut [u8], at: u64) -> Result<(), IdxError> {
    file.read_exact_at(buf, at).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            IdxError::Corrupt {
                path: path.to_path_buf(),
                reason: format!(
                    "the file ends before offset {} (it was truncated or replaced)",
                    at + buf.len() as u64
                ),
            }
        } else {
            io_err("read segment index", path)(e)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfs::{MemVfs, OsVfs};

    const Q0: LaneKey = LaneKey::Queue { queue: 1, prio: 0 };
    const Q5: LaneKey = LaneKey::Queue { queue: 1, prio: 5 };
    const Q9: LaneKey = LaneKey::Queue { queue: 2, prio: 9 };
    const T1: LaneKey = LaneKey::Topic { topic: 1 };
    const T7: LaneKey = LaneKey::Topic { topic: 7 };

    fn entry(id: u64) -> IdxEntry {
        IdxEntry {
            id,
            off: (id as u32).wrapping_mul(3),
            len: 40 + (id % 100) as u32,
            size: 10 + (id % 7) as u32,
            crc: (id as u32) ^ 0xdead_beef,
            expires_ms: id * 11,
            enqueued_ms: id * 3 + (id % 4),
        }
    }

    /// Lanes with the given sizes; ids grow in steps of 3 (so the ids in between are absent),
    /// starting at a different base in each lane.
    fn sample(lanes: &[(LaneKey, usize)]) -> SegmentIndex {
        SegmentIndex {
            store_id: 0x5eed,
            seg_id: 42,
            seg_len: 64 << 20,
            last_lsn: 9_001,
            lanes: lanes
                .iter()
                .enumerate()
                .map(|(i, &(key, n))| LaneIndex {
                    key,
                    entries: (0..n as u64)
                        .map(|k| entry(100 * i as u64 + 5 + 3 * k))
                        .collect(),
                })
                .collect(),
        }
    }

    fn small() -> SegmentIndex {
        sample(&[(Q5, 3), (T1, 2), (Q0, 0), (Q9, 4)])
    }

    fn large() -> SegmentIndex {
        sample(&[(Q0, 4000), (Q5, 1700), (T7, 0), (T1, 2500), (Q9, 1)])
    }

    /// Recomputes both checksums after a deliberate change.
    fn reseal(b: &mut [u8]) {
        let crc = crc32c::crc32c(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        let end = b.len() - 4;
        let crc = crc32c::crc32c(&b[64..end]);
        b[end..].copy_from_slice(&crc.to_le_bytes());
    }

    fn log_dir() -> PathBuf {
        PathBuf::from("/store/log")
    }

    fn mem() -> MemVfs {
        let vfs = MemVfs::new();
        vfs.create_dir_all(&log_dir()).unwrap();
        vfs
    }

    /// Puts raw bytes where the index of `seg_id` belongs.
    fn put(vfs: &dyn Vfs, dir: &Path, seg_id: u64, bytes: &[u8]) {
        let f = vfs.open(&idx_path(dir, seg_id), OpenMode::Create).unwrap();
        f.set_len(0).unwrap();
        f.write_all_at(bytes, 0).unwrap();
    }

    fn read_back(vfs: &dyn Vfs, dir: &Path, seg_id: u64) -> Vec<u8> {
        let f = vfs.open(&idx_path(dir, seg_id), OpenMode::Read).unwrap();
        let mut b = vec![0u8; f.len().unwrap() as usize];
        f.read_exact_at(&mut b, 0).unwrap();
        b
    }

    /// Everything `file` says equals `idx`, through every reading call.
    fn assert_same(file: &IdxFile, idx: &SegmentIndex) {
        assert_eq!(file.store_id(), idx.store_id);
        assert_eq!(file.seg_id(), idx.seg_id);
        assert_eq!(file.seg_len(), idx.seg_len);
        assert_eq!(file.last_lsn(), idx.last_lsn);
        assert_eq!(file.total_entries(), idx.total_entries());
        assert_eq!(file.lanes().len(), idx.lanes.len());
        for (m, l) in file.lanes().iter().zip(&idx.lanes) {
            assert_eq!(m.key, l.key);
            assert_eq!(m.n_entries, l.entries.len() as u64);
            assert_eq!(file.lane(l.key), Some(m));
            let all = file.read_entries(m, 0, usize::MAX).unwrap();
            assert_eq!(all, l.entries);
        }
    }

    fn with_each_vfs(f: impl Fn(&dyn Vfs, &Path)) {
        f(&mem(), &log_dir());
        let tmp = tempfile::tempdir().unwrap();
        f(&OsVfs, tmp.path());
    }

    #[test]
    fn an_open_file_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<IdxFile>();
        shareable::<IdxError>();
    }

    #[test]
    fn file_names_round_trip() {
        assert_eq!(idx_file_name(12), "00000000000000000012.idx");
        assert_eq!(parse_idx_file_name(&idx_file_name(12)), Some(12));
        assert_eq!(
            parse_idx_file_name(&idx_file_name(u64::MAX)),
            Some(u64::MAX)
        );
        assert_eq!(parse_idx_file_name("00000000000000000012.seg"), None);
        assert_eq!(parse_idx_file_name("12.idx"), None);
        assert_eq!(
            idx_path(Path::new("/s/log"), 3),
            PathBuf::from("/s/log/00000000000000000003.idx")
        );
    }

    #[test]
    fn the_layout_is_pinned() {
        let idx = sample(&[(Q5, 2), (T7, 1)]);
        let b = idx.encode();
        assert_eq!(b.len(), 64 + 2 * 40 + 3 * 40 + 4);
        assert_eq!(b.len() as u64, idx.encoded_len());
        assert_eq!(&b[0..8], b"SPOOLIDX");
        assert_eq!(&b[8..16], &[1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(u64_at(&b, 16), 0x5eed);
        assert_eq!(u64_at(&b, 24), 42);
        assert_eq!(u64_at(&b, 32), 64 << 20);
        assert_eq!(u64_at(&b, 40), 9_001);
        assert_eq!(u32_at(&b, 48), 2);
        assert_eq!(&b[52..60], &[0; 8]);
        assert_eq!(u32_at(&b, 60), crc32c::crc32c(&b[..60]));
        // lane 0: queue 1, priority 5, two entries with ids 5 and 8, right after the table
        assert_eq!(&b[64..72], &[1, 5, 0, 0, 1, 0, 0, 0]);
        assert_eq!(
            (
                u64_at(&b, 72),
                u64_at(&b, 80),
                u64_at(&b, 88),
                u64_at(&b, 96)
            ),
            (5, 8, 2, 144)
        );
        // lane 1: topic 7
        assert_eq!(&b[104..112], &[2, 0, 0, 0, 7, 0, 0, 0]);
        assert_eq!(
            (
                u64_at(&b, 112),
                u64_at(&b, 120),
                u64_at(&b, 128),
                u64_at(&b, 136)
            ),
            (105, 105, 1, 224)
        );
        // the first entry
        let e = entry(5);
        assert_eq!(u64_at(&b, 144), 5);
        assert_eq!(
            [
                u32_at(&b, 152),
                u32_at(&b, 156),
                u32_at(&b, 160),
                u32_at(&b, 164)
            ],
            [e.off, e.len, e.size, e.crc]
        );
        assert_eq!(u64_at(&b, 168), e.expires_ms);
        assert_eq!(u64_at(&b, 176), e.enqueued_ms);
        assert_eq!(IdxEntry::decode(&b[144..]), Some(e));
        // the trailer
        let end = b.len() - 4;
        assert_eq!(u32_at(&b, end), crc32c::crc32c(&b[64..end]));
    }

    #[test]
    fn an_empty_index_round_trips() {
        let idx = sample(&[]);
        let b = idx.encode();
        assert_eq!(b.len(), 68);
        assert_eq!(SegmentIndex::decode(&b).unwrap(), idx);
        with_each_vfs(|vfs, dir| {
            write_file(vfs, dir, &idx).unwrap();
            let f = IdxFile::open(vfs, dir, idx.expect()).unwrap();
            assert_same(&f, &idx);
            assert!(f.lanes().is_empty());
            assert_eq!(f.lane(Q0), None);
        });
    }

    #[test]
    fn empty_lanes_round_trip() {
        let idx = sample(&[(Q0, 0), (T1, 0)]);
        assert_eq!(SegmentIndex::decode(&idx.encode()).unwrap(), idx);
        let vfs = mem();
        write_file(&vfs, &log_dir(), &idx).unwrap();
        let f = IdxFile::open(&vfs, &log_dir(), idx.expect()).unwrap();
        assert_same(&f, &idx);
        let m = *f.lane(T1).unwrap();
        assert_eq!((m.first_id, m.last_id, m.n_entries), (0, 0, 0));
        assert_eq!(f.find(&m, 0).unwrap(), None);
        assert_eq!(f.lower_bound(&m, 7).unwrap(), 0);
        assert!(f.read_entries(&m, 0, 10).unwrap().is_empty());
    }

    #[test]
    fn lanes_round_trip_in_memory_and_on_disk() {
        for idx in [small(), large()] {
            let b = idx.encode();
            assert_eq!(b.len() as u64, idx.encoded_len());
            assert_eq!(SegmentIndex::decode(&b).unwrap(), idx);
            with_each_vfs(|vfs, dir| {
                write_file(vfs, dir, &idx).unwrap();
                // written in chunks: the very same bytes as `encode`
                assert_eq!(read_back(vfs, dir, idx.seg_id), b);
                let f = IdxFile::open(vfs, dir, idx.expect()).unwrap();
                assert_same(&f, &idx);
                assert_eq!(f.path(), idx_path(dir, idx.seg_id));
                assert_eq!(f.lane(LaneKey::Queue { queue: 1, prio: 1 }), None);
                assert_eq!(f.lane(LaneKey::Topic { topic: 2 }), None);
            });
        }
    }

    #[test]
    fn lane_lookup_by_key() {
        let idx = large();
        for l in &idx.lanes {
            assert_eq!(idx.lane(l.key), Some(l));
        }
        assert_eq!(idx.lane(LaneKey::Topic { topic: 99 }), None);
    }

    #[test]
    fn read_entries_in_windows() {
        let idx = large();
        let vfs = mem();
        write_file(&vfs, &log_dir(), &idx).unwrap();
        let f = IdxFile::open(&vfs, &log_dir(), idx.expect()).unwrap();
        for l in &idx.lanes {
            let m = *f.lane(l.key).unwrap();
            for window in [1usize, 7, 300, 1638, 5000] {
                let mut got = Vec::new();
                let mut from = 0u64;
                loop {
                    let part = f.read_entries(&m, from, window).unwrap();
                    if part.is_empty() {
                        break;
                    }
                    assert!(part.len() <= window);
                    assert_eq!(
                        part[..],
                        l.entries[from as usize..from as usize + part.len()]
                    );
                    from += part.len() as u64;
                    got.extend(part);
                }
                assert_eq!(got, l.entries);
            }
            assert!(f.read_entries(&m, m.n_entries, 10).unwrap().is_empty());
            assert!(f.read_entries(&m, u64::MAX, 10).unwrap().is_empty());
            assert!(f.read_entries(&m, 0, 0).unwrap().is_empty());
        }
    }

    #[test]
    fn find_and_lower_bound_at_every_position() {
        let idx = large();
        with_each_vfs(|vfs, dir| {
            write_file(vfs, dir, &idx).unwrap();
            let f = IdxFile::open(vfs, dir, idx.expect()).unwrap();
            for l in &idx.lanes {
                let m = *f.lane(l.key).unwrap();
                let n = l.entries.len() as u64;
                for (i, e) in l.entries.iter().enumerate() {
                    let i = i as u64;
                    assert_eq!(f.find(&m, e.id).unwrap(), Some((i, *e)));
                    // ids go in steps of 3: the neighbours are absent
                    assert_eq!(f.find(&m, e.id - 1).unwrap(), None);
                    assert_eq!(f.find(&m, e.id + 1).unwrap(), None);
                    assert_eq!(f.lower_bound(&m, e.id).unwrap(), i);
                    assert_eq!(f.lower_bound(&m, e.id - 1).unwrap(), i);
                    assert_eq!(f.lower_bound(&m, e.id + 1).unwrap(), i + 1);
                }
                assert_eq!(f.lower_bound(&m, 0).unwrap(), 0);
                assert_eq!(f.lower_bound(&m, u64::MAX).unwrap(), n);
                assert_eq!(f.find(&m, 0).unwrap(), None);
                assert_eq!(f.find(&m, u64::MAX).unwrap(), None);
            }
        });
    }

    /// Returns the reason.
    fn assert_corrupt_bytes(b: &[u8], what: &str) -> String {
        match SegmentIndex::decode(b) {
            Err(IdxError::Corrupt { reason, .. }) => reason,
            other => panic!("{what}: decode gave {other:?}"),
        }
    }

    /// Returns the reason.
    fn assert_corrupt_file(vfs: &dyn Vfs, b: &[u8], expect: Expect, what: &str) -> String {
        put(vfs, &log_dir(), expect.seg_id, b);
        match IdxFile::open(vfs, &log_dir(), expect) {
            Err(IdxError::Corrupt { reason, .. }) => reason,
            other => panic!("{what}: open gave {other:?}"),
        }
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let idx = small();
        let b = idx.encode();
        let vfs = mem();
        for bit in 0..b.len() * 8 {
            let mut g = b.clone();
            g[bit / 8] ^= 1 << (bit % 8);
            let what = format!("flip of bit {bit}");
            assert_corrupt_bytes(&g, &what);
            assert_corrupt_file(&vfs, &g, idx.expect(), &what);
        }
    }

    #[test]
    fn byte_damage_anywhere_in_a_large_index_is_detected() {
        let idx = large();
        let b = idx.encode();
        let table_end = 64 + 40 * idx.lanes.len();
        // every region and its edges, the first chunk boundary, and a spread of positions
        let mut at: Vec<usize> = (0..b.len()).step_by(997).collect();
        at.extend([0, 8, 48, 59, 60, 63, 64, 65, table_end - 1, table_end]);
        at.extend([64 + CHUNK_BYTES - 1, 64 + CHUNK_BYTES, b.len() - 5]);
        at.extend(b.len() - 4..b.len());
        let vfs = mem();
        for &i in &at {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut g = b.clone();
                g[i] ^= mask;
                let what = format!("byte {i} ^ {mask:#x}");
                assert_corrupt_bytes(&g, &what);
                assert_corrupt_file(&vfs, &g, idx.expect(), &what);
            }
        }
    }

    #[test]
    fn truncated_and_extended_files_are_corrupt() {
        let vfs = mem();
        let idx = small();
        let b = idx.encode();
        for cut in 0..b.len() {
            let what = format!("cut at {cut}");
            assert_corrupt_bytes(&b[..cut], &what);
            assert_corrupt_file(&vfs, &b[..cut], idx.expect(), &what);
        }
        let big = large();
        let bb = big.encode();
        for cut in [68, 104, 1000, 64 + CHUNK_BYTES, bb.len() - 40, bb.len() - 1] {
            let what = format!("cut at {cut}");
            assert_corrupt_bytes(&bb[..cut], &what);
            assert_corrupt_file(&vfs, &bb[..cut], big.expect(), &what);
        }
        for extra in [1usize, 4, 39, 40, 41, 4096] {
            for fill in [0u8, 0xa5] {
                let mut g = b.clone();
                g.resize(b.len() + extra, fill);
                let what = format!("{extra} bytes of {fill:#x} appended");
                assert_corrupt_bytes(&g, &what);
                assert_corrupt_file(&vfs, &g, idx.expect(), &what);
            }
        }
    }

    type Edit = Box<dyn Fn(&mut Vec<u8>)>;

    /// Damage that keeps both checksums valid: each rule of the format is checked on its own.
    #[test]
    fn broken_rules_with_valid_checksums_are_corrupt() {
        let idx = small(); // lanes: Q5 (3 entries), T1 (2), Q0 (0), Q9 (4)
        let b = idx.encode();
        let lane = |i: usize| 64 + 40 * i;
        let first_entry = lane(4);
        let set64 = |at: usize, v: u64| -> Edit {
            Box::new(move |g: &mut Vec<u8>| g[at..at + 8].copy_from_slice(&v.to_le_bytes()))
        };
        let set32 = |at: usize, v: u32| -> Edit {
            Box::new(move |g: &mut Vec<u8>| g[at..at + 4].copy_from_slice(&v.to_le_bytes()))
        };
        let set8 = |at: usize, v: u8| -> Edit { Box::new(move |g: &mut Vec<u8>| g[at] = v) };
        let cases: Vec<(&str, Edit)> = vec![
            ("version 2", set8(8, 2)),
            ("header flags", set8(10, 1)),
            ("reserved header bytes", set8(13, 1)),
            ("reserved header tail", set8(55, 1)),
            ("one lane more", set32(48, 5)),
            ("one lane fewer", set32(48, 3)),
            ("no lanes", set32(48, 0)),
            ("absurd lane count", set32(48, u32::MAX)),
            ("lane kind 0", set8(lane(0), 0)),
            ("lane kind 3", set8(lane(0), 3)),
            ("topic lane with a priority", set8(lane(1) + 1, 4)),
            ("reserved lane bytes", set8(lane(0) + 3, 1)),
            (
                "duplicate key",
                // Q9 (queue 2, priority 9) becomes queue 1, priority 5: Q5 again
                Box::new(move |g: &mut Vec<u8>| {
                    g[lane(3) + 1] = 5;
                    g[lane(3) + 4] = 1;
                }),
            ),
            ("duplicate key (owner)", {
                // Q9 (queue 2) becomes queue 1 priority 9: unique; then Q5's priority 9: duplicate
                Box::new(move |g: &mut Vec<u8>| {
                    g[lane(3) + 4..lane(3) + 8].copy_from_slice(&1u32.to_le_bytes());
                    g[lane(0) + 1] = 9;
                })
            }),
            ("first id", set64(lane(0) + 8, 4)),
            ("last id", set64(lane(0) + 16, 9)),
            ("last id below first", set64(lane(0) + 16, 1)),
            ("empty lane with ids", set64(lane(2) + 8, 7)),
            ("one entry more", set64(lane(0) + 24, 4)),
            ("one entry fewer", set64(lane(0) + 24, 2)),
            ("absurd entry count", set64(lane(0) + 24, u64::MAX)),
            (
                "absurd entry count / 40",
                set64(lane(0) + 24, u64::MAX / 40),
            ),
            ("entry count 2^40", set64(lane(0) + 24, 1 << 40)),
            (
                "entry count 2^40 with ids to match",
                Box::new(move |g: &mut Vec<u8>| {
                    g[lane(0) + 16..lane(0) + 24].copy_from_slice(&u64::MAX.to_le_bytes());
                    g[lane(0) + 24..lane(0) + 32].copy_from_slice(&(1u64 << 40).to_le_bytes());
                }),
            ),
            ("last lane: one entry more", set64(lane(3) + 24, 5)),
            ("last lane: one entry fewer", set64(lane(3) + 24, 3)),
            (
                "entries offset",
                set64(lane(1) + 32, (first_entry + 3 * 40 + 40) as u64),
            ),
            ("entries offset overflow", set64(lane(0) + 32, u64::MAX)),
            ("unsorted ids", {
                Box::new(move |g: &mut Vec<u8>| {
                    // swap the 2nd and 3rd entry of lane 0
                    let (a, c) = (first_entry + 40, first_entry + 80);
                    let second: Vec<u8> = g[a..a + 40].to_vec();
                    g.copy_within(c..c + 40, a);
                    g[c..c + 40].copy_from_slice(&second);
                })
            }),
            ("repeated id", {
                Box::new(move |g: &mut Vec<u8>| {
                    g.copy_within(first_entry..first_entry + 8, first_entry + 40);
                })
            }),
            ("first entry id", set64(first_entry, 4)),
            ("last entry id", set64(first_entry + 80, 12)),
            (
                "entries moved between lanes",
                // lane 0 claims 4 entries and lane 1 one, at consistent offsets
                Box::new(move |g: &mut Vec<u8>| {
                    g[lane(0) + 24..lane(0) + 32].copy_from_slice(&4u64.to_le_bytes());
                    g[lane(1) + 24..lane(1) + 32].copy_from_slice(&1u64.to_le_bytes());
                    let off = (first_entry + 160) as u64;
                    g[lane(1) + 32..lane(1) + 40].copy_from_slice(&off.to_le_bytes());
                }),
            ),
        ];
        let vfs = mem();
        for (what, edit) in &cases {
            let mut g = b.clone();
            edit(&mut g);
            assert_ne!(g, b, "{what}: no change");
            reseal(&mut g);
            let in_ram = assert_corrupt_bytes(&g, what);
            let streamed = assert_corrupt_file(&vfs, &g, idx.expect(), what);
            // each case is caught by a rule, not by a checksum
            assert!(!in_ram.contains("checksum"), "{what}: {in_ram}");
            assert!(!streamed.contains("checksum"), "{what}: {streamed}");
        }
    }

    #[test]
    fn absurd_counts_in_a_tiny_file_are_rejected_without_allocating() {
        let vfs = mem();
        for n_lanes in [1, 1000, u32::MAX] {
            let mut g = sample(&[]).encode();
            g[48..52].copy_from_slice(&n_lanes.to_le_bytes());
            reseal(&mut g);
            assert_corrupt_bytes(&g, "lanes");
            assert_corrupt_file(&vfs, &g, sample(&[]).expect(), "lanes");
        }
        // a lane that claims every entry there could be
        let mut g = sample(&[(Q0, 0)]).encode();
        for n in [u64::MAX, u64::MAX / 40, 1 << 50] {
            g[64 + 24..64 + 32].copy_from_slice(&n.to_le_bytes());
            g[64 + 16..64 + 24].copy_from_slice(&u64::MAX.to_le_bytes());
            reseal(&mut g);
            assert_corrupt_bytes(&g, "entries");
            assert_corrupt_file(&vfs, &g, sample(&[]).expect(), "entries");
        }
    }

    #[test]
    fn a_stale_index_is_stale() {
        let idx = small();
        let vfs = mem();
        write_file(&vfs, &log_dir(), &idx).unwrap();
        let e = idx.expect();
        for (what, expect) in [
            ("store", Expect { store_id: 1, ..e }),
            (
                "length",
                Expect {
                    seg_len: e.seg_len + 1,
                    ..e
                },
            ),
            (
                "lsn",
                Expect {
                    last_lsn: e.last_lsn - 1,
                    ..e
                },
            ),
        ] {
            match IdxFile::open(&vfs, &log_dir(), expect) {
                Err(IdxError::Stale { reason, .. }) => assert!(!reason.is_empty(), "{what}"),
                other => panic!("{what}: {other:?}"),
            }
        }
        // an index of another segment under this segment's name
        put(&vfs, &log_dir(), 43, &idx.encode());
        match IdxFile::open(&vfs, &log_dir(), Expect { seg_id: 43, ..e }) {
            Err(e @ IdxError::Stale { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("segment id 42 (the segment's is 43)"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
        IdxFile::open(&vfs, &log_dir(), e).unwrap();
    }

    #[test]
    fn a_missing_index_is_missing() {
        with_each_vfs(|vfs, dir| {
            let e = small().expect();
            match IdxFile::open(vfs, dir, e) {
                Err(IdxError::Missing { path }) => assert_eq!(path, idx_path(dir, e.seg_id)),
                other => panic!("{other:?}"),
            }
        });
        // a missing directory too
        let e = small().expect();
        assert!(matches!(
            IdxFile::open(&MemVfs::new(), Path::new("/nowhere"), e),
            Err(IdxError::Missing { .. })
        ));
    }

    #[test]
    fn write_file_replaces_a_longer_file() {
        with_each_vfs(|vfs, dir| {
            let idx = small();
            put(vfs, dir, idx.seg_id, &vec![0x5a; 300_000]);
            write_file(vfs, dir, &idx).unwrap();
            assert_eq!(read_back(vfs, dir, idx.seg_id), idx.encode());
            assert_same(&IdxFile::open(vfs, dir, idx.expect()).unwrap(), &idx);
        });
    }

    #[test]
    fn write_file_refuses_an_invalid_index() {
        let vfs = mem();
        let mut unsorted = small();
        unsorted.lanes[0].entries.swap(0, 1);
        let mut repeated = small();
        repeated.lanes[0].entries[1].id = repeated.lanes[0].entries[0].id;
        let mut duplicate = small();
        duplicate.lanes[1].key = duplicate.lanes[0].key;
        for bad in [unsorted, repeated, duplicate] {
            assert!(bad.check().is_err());
            match write_file(&vfs, &log_dir(), &bad) {
                Err(IdxError::Invalid { .. }) => {}
                other => panic!("{other:?}"),
            }
            assert!(!vfs.exists(&idx_path(&log_dir(), bad.seg_id)).unwrap());
            // what encode makes of it is rejected on the way back
            assert_corrupt_bytes(&bad.encode(), "invalid index");
        }
        small().check().unwrap();
        large().check().unwrap();
    }

    #[test]
    fn reads_after_the_file_shrank_fail_cleanly() {
        let idx = large();
        let vfs = mem();
        write_file(&vfs, &log_dir(), &idx).unwrap();
        let f = IdxFile::open(&vfs, &log_dir(), idx.expect()).unwrap();
        let m = *f.lane(Q0).unwrap();
        let other = vfs
            .open(&idx_path(&log_dir(), idx.seg_id), OpenMode::ReadWrite)
            .unwrap();
        other.set_len(m.entries_off + 100 * 40).unwrap();
        assert_eq!(f.read_entries(&m, 0, 100).unwrap().len(), 100);
        for res in [
            f.read_entries(&m, 0, 101).map(|_| ()),
            f.read_entries(&m, 3000, 10).map(|_| ()),
            f.find(&m, m.last_id).map(|_| ()),
            f.lower_bound(&m, m.last_id).map(|_| ()),
        ] {
            match res {
                Err(IdxError::Corrupt { reason, .. }) => assert!(reason.contains("ends before")),
                other => panic!("{other:?}"),
            }
        }
        other.set_len(0).unwrap();
        assert!(f.find(&m, m.first_id + 3).is_err());
        assert!(f.lower_bound(&m, m.first_id + 3).is_err());
    }

    #[test]
    fn a_lane_of_another_file_is_refused() {
        let vfs = mem();
        let a = small();
        let b = large();
        let mut b = SegmentIndex { seg_id: 7, ..b };
        b.lanes.truncate(2);
        write_file(&vfs, &log_dir(), &a).unwrap();
        write_file(&vfs, &log_dir(), &b).unwrap();
        let fa = IdxFile::open(&vfs, &log_dir(), a.expect()).unwrap();
        let fb = IdxFile::open(&vfs, &log_dir(), b.expect()).unwrap();
        let foreign = *fb.lane(Q5).unwrap();
        assert!(fa.lane(Q5).is_some());
        assert!(matches!(
            fa.read_entries(&foreign, 0, 1),
            Err(IdxError::Invalid { .. })
        ));
        assert!(matches!(
            fa.find(&foreign, 5),
            Err(IdxError::Invalid { .. })
        ));
        assert!(matches!(
            fa.lower_bound(&foreign, 5),
            Err(IdxError::Invalid { .. })
        ));
    }

    #[test]
    fn error_messages_say_what_happened() {
        let e = SegmentIndex::decode(b"not an index").unwrap_err();
        assert_eq!(
            e.to_string(),
            "segment index (bytes in memory) is damaged: 12 bytes, shorter than the 64-byte \
             header; it must be rebuilt from its segment"
        );
        let mut g = small().encode();
        g[0] = b'X';
        assert!(SegmentIndex::decode(&g)
            .unwrap_err()
            .to_string()
            .contains("bad magic"));
        let vfs = mem();
        let e = IdxFile::open(&vfs, &log_dir(), small().expect()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "segment index \"/store/log/00000000000000000042.idx\" does not exist; it must be \
             built from its segment"
        );
    }
}
