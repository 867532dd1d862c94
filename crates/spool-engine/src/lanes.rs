//! The streams of queue lanes, kept out of memory.
//!
//! A lane's **stream** is every message of that queue and priority never handed out, in id
//! order. Its entries (id, where the record is, size, expiry) live in the index of the segment
//! the record is in: in RAM for the active segment (built by `apply`), in a `.idx` file once
//! the segment is sealed (written by the maintenance thread, rebuilt from the segment when it
//! is missing, stale or damaged). The stream itself holds only:
//! - **runs**: per segment holding some of its records, the id range and live counts (about
//!   64 bytes per segment touched, not per message);
//! - a **floor**: every stream message with an id at or below it has left;
//! - a **dead** set: ids above the floor that left out of order (deleted by id, redriven);
//! - per run a small read-ahead window of entries.
//!
//! `apply` never reads an index (it stays free of I/O): a message that leaves the stream (its
//! `LEASE` or `REMOVE` names its record) goes into the dead set, and the floor moves up only
//! when a read of the stream's front finds dead ids there. (Moving the floor straight to a
//! message taken from the front would be shorter, but wrong after damaged frames were
//! skipped: a lost `LEASE` would leave an earlier message in the stream, and the floor would
//! hide it.) The live path reads the front before every lease, so the dead set stays tiny;
//! recovery normalizes streams whose dead set grows while it replays.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use rustc_hash::FxHashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::codec::{Dec, DecResult, Enc};
use crate::entry::{decode_entries_at, Enqueue, Entry};
use crate::error::{Error, Result};
use crate::frame::{
    check_frame, find_next_frame, segment_file_name, FrameCheck, SegmentHeader, SEGMENT_HEADER_LEN,
};
use crate::recovery::DamagedRange;
use crate::segindex::{
    Expect, IdxEntry, IdxError, IdxFile, LaneIndex, LaneKey, SegmentIndex, SIZE_CARRIED,
};
use crate::state::{message_size, At};
use crate::vfs::{OpenMode, Vfs};

/// Entries read ahead per run.
const READ_AHEAD: usize = 256;
/// Index files kept open at most.
const OPEN_INDEXES_MAX: usize = 64;

/// The index entry of a pushed message, if it joins its lane's stream (a message pushed with a
/// delay does not: it is tracked as touched from the start).
pub(crate) fn index_entry(e: &Enqueue, at: At) -> Option<(LaneKey, IdxEntry)> {
    if e.visible_ms > 0 {
        return None;
    }
    let carried = if e.carried.is_some() { SIZE_CARRIED } else { 0 };
    Some((
        LaneKey::Queue {
            queue: e.queue,
            prio: e.priority,
        },
        IdxEntry {
            id: e.id,
            off: at.off,
            len: at.len,
            size: message_size(e) as u32 | carried,
            crc: at.crc,
            expires_ms: e.expires_ms,
            enqueued_ms: e.enqueued_ms,
        },
    ))
}

/// One segment's index held in RAM.
#[derive(Debug)]
enum RamSeg {
    /// The active segment's: grows with every push.
    Building(FxHashMap<LaneKey, BuildingLane>),
    /// A sealed segment's, until the maintenance writes its file (`true`), or rebuilt by a
    /// reader because its file was damaged (`false`: kept in RAM for this session, so that
    /// what the disk sees never depends on what was read; the next open rebuilds it).
    Frozen(Arc<SegmentIndex>, bool),
}

/// A lane's entries in the active segment. Pushes come in id order; a compaction's copies
/// (older ids) do not: they are appended and the lane is sorted when it is next read, once
/// for a whole compaction round instead of one insertion (moving every later entry) each.
#[derive(Debug, Default)]
struct BuildingLane {
    entries: Vec<IdxEntry>,
    unsorted: bool,
}

impl BuildingLane {
    fn settle(&mut self) {
        if self.unsorted {
            // Stable: of two entries with the same id, the first one written stays.
            self.entries.sort_by_key(|e| e.id);
            self.entries.dedup_by_key(|e| e.id);
            self.unsorted = false;
        }
    }
}

/// Where stream entries are read from: segment indexes in RAM or in `.idx` files.
#[derive(Debug, Default)]
pub(crate) struct IndexStore {
    io: Option<(Arc<dyn Vfs>, PathBuf, u64)>,
    ram: BTreeMap<u64, RamSeg>,
    files: HashMap<u64, Arc<IdxFile>>,
    /// Segments up to this one are sealed (their index is complete, in a file or frozen).
    sealed_through: u64,
    /// Index files rebuilt from their segment since the store was opened (reported).
    pub rebuilt: u64,
}

impl IndexStore {
    pub fn new(vfs: Arc<dyn Vfs>, log_dir: &Path, store_id: u64) -> Self {
        Self {
            io: Some((vfs, log_dir.to_path_buf(), store_id)),
            ..Self::default()
        }
    }

    /// Adds a stream entry of segment `seg` (the active one).
    pub fn append(&mut self, seg: u64, key: LaneKey, e: IdxEntry) {
        let RamSeg::Building(lanes) = self
            .ram
            .entry(seg)
            .or_insert_with(|| RamSeg::Building(FxHashMap::default()))
        else {
            // A sealed segment never gets new records.
            return;
        };
        let lane = lanes.entry(key).or_default();
        if lane.entries.last().is_some_and(|l| l.id >= e.id) {
            lane.unsorted = true;
        }
        lane.entries.push(e);
    }

    /// Sorts the active segment's lane `key` if out-of-order entries were appended to it.
    fn settle(&mut self, seg: u64, key: LaneKey) {
        if let Some(RamSeg::Building(lanes)) = self.ram.get_mut(&seg) {
            if let Some(lane) = lanes.get_mut(&key) {
                lane.settle();
            }
        }
    }

    /// Freezes the RAM index of segment `seg` (sealed: no record will be added to it) so that
    /// its file can be written. Returns it, for the writing.
    pub fn seal(&mut self, seg: u64, seg_len: u64, last_lsn: u64) -> Option<Arc<SegmentIndex>> {
        if seg <= self.sealed_through {
            // Already sealed (a transaction that opened the next segment's first frame may
            // have emitted nothing; the next one seals again).
            return None;
        }
        self.sealed_through = seg;
        let store_id = self.io.as_ref().map_or(0, |io| io.2);
        let lanes = match self.ram.remove(&seg) {
            Some(RamSeg::Building(lanes)) => lanes,
            Some(frozen @ RamSeg::Frozen(..)) => {
                self.ram.insert(seg, frozen);
                return None;
            }
            None => FxHashMap::default(),
        };
        let mut lanes: Vec<LaneIndex> = lanes
            .into_iter()
            .map(|(key, mut lane)| {
                lane.settle();
                LaneIndex {
                    key,
                    entries: lane.entries,
                }
            })
            .collect();
        lanes.sort_by_key(|l| l.key);
        let idx = Arc::new(SegmentIndex {
            store_id,
            seg_id: seg,
            seg_len,
            last_lsn,
            lanes,
        });
        self.ram.insert(seg, RamSeg::Frozen(idx.clone(), true));
        Some(idx)
    }

    /// Sealed segments whose index is only in RAM (the maintenance thread writes them).
    pub fn unwritten(&self) -> Vec<Arc<SegmentIndex>> {
        self.ram
            .values()
            .filter_map(|r| match r {
                RamSeg::Frozen(i, true) => Some(i.clone()),
                RamSeg::Frozen(_, false) | RamSeg::Building(_) => None,
            })
            .collect()
    }

    /// The index of `seg` is on disk now: drop the RAM copy (if it is still that one).
    pub fn written(&mut self, idx: &Arc<SegmentIndex>) {
        if let Some(RamSeg::Frozen(i, _)) = self.ram.get(&idx.seg_id) {
            if Arc::ptr_eq(i, idx) {
                self.ram.remove(&idx.seg_id);
            }
        }
    }

    fn file(&mut self, seg: u64) -> Result<Option<Arc<IdxFile>>> {
        if let Some(f) = self.files.get(&seg) {
            return Ok(Some(f.clone()));
        }
        let Some((vfs, log_dir, store_id)) = self.io.clone() else {
            return Ok(None);
        };
        let expect = expect_for(vfs.as_ref(), &log_dir, store_id, seg)?;
        let opened = IdxFile::open(vfs.as_ref(), &log_dir, expect);
        let f = match opened {
            Ok(f) => f,
            Err(IdxError::Io { op, path, source }) => {
                return Err(Error::io(op, path, source));
            }
            Err(_) => {
                // Missing, stale or damaged: rebuild it from the segment, into RAM (recovery
                // checks the index files it relies on, so this is rare).
                let (idx, damaged) = rebuild(vfs.as_ref(), &log_dir, store_id, seg)?;
                if let Some(d) = damaged.first() {
                    // Messages in the damaged frames would silently be missing from the
                    // stream: fail loudly instead, as reading a damaged record does.
                    return Err(Error::DamagedRecord {
                        segment: d.segment,
                        offset: d.offset,
                        reason: format!(
                            "{} frame(s) of this segment are damaged and its index file had \
                             to be rebuilt: {d}",
                            damaged.len()
                        ),
                    });
                }
                self.rebuilt += 1;
                self.ram.insert(seg, RamSeg::Frozen(Arc::new(idx), false));
                return Ok(None);
            }
        };
        if self.files.len() >= OPEN_INDEXES_MAX {
            self.files.clear();
        }
        let f = Arc::new(f);
        self.files.insert(seg, f.clone());
        Ok(Some(f))
    }

    /// Up to `max` entries of lane `key` in segment `seg`, from entry number `from`.
    pub fn read(&mut self, seg: u64, key: LaneKey, from: u64, max: usize) -> Result<Vec<IdxEntry>> {
        self.settle(seg, key);
        if let Some(v) = self.ram_lane(seg, key) {
            let from = (from as usize).min(v.len());
            return Ok(v[from..(from + max).min(v.len())].to_vec());
        }
        if self.ram.contains_key(&seg) {
            return Ok(Vec::new());
        }
        let Some(f) = self.file(seg)? else {
            return match self.ram_lane(seg, key) {
                Some(v) => {
                    let from = (from as usize).min(v.len());
                    Ok(v[from..(from + max).min(v.len())].to_vec())
                }
                None => Ok(Vec::new()),
            };
        };
        let Some(lane) = f.lane(key).copied() else {
            return Ok(Vec::new());
        };
        f.read_entries(&lane, from, max).map_err(idx_err)
    }

    /// The number of the first entry of lane `key` in segment `seg` with an id >= `id`.
    pub fn lower_bound(&mut self, seg: u64, key: LaneKey, id: u64) -> Result<u64> {
        self.settle(seg, key);
        if let Some(v) = self.ram_lane(seg, key) {
            return Ok(v.partition_point(|e| e.id < id) as u64);
        }
        if self.ram.contains_key(&seg) {
            return Ok(0);
        }
        let Some(f) = self.file(seg)? else {
            return Ok(self
                .ram_lane(seg, key)
                .map_or(0, |v| v.partition_point(|e| e.id < id) as u64));
        };
        let Some(lane) = f.lane(key).copied() else {
            return Ok(0);
        };
        f.lower_bound(&lane, id).map_err(idx_err)
    }

    /// The entry with id `id` of lane `key` in segment `seg`.
    pub fn find(&mut self, seg: u64, key: LaneKey, id: u64) -> Result<Option<IdxEntry>> {
        let i = self.lower_bound(seg, key, id)?;
        Ok(self.read(seg, key, i, 1)?.pop().filter(|e| e.id == id))
    }

    fn ram_lane(&self, seg: u64, key: LaneKey) -> Option<&[IdxEntry]> {
        match self.ram.get(&seg)? {
            RamSeg::Building(l) => Some(l.get(&key).map_or(&[][..], |l| l.entries.as_slice())),
            RamSeg::Frozen(i, _) => Some(i.lane(key).map_or(&[][..], |l| l.entries.as_slice())),
        }
    }
}

fn idx_err(e: IdxError) -> Error {
    match e {
        IdxError::Io { op, path, source } => Error::io(op, path, source),
        other => Error::Format {
            path: PathBuf::new(),
            reason: other.to_string(),
        },
    }
}

/// What the index file of sealed segment `seg` must say: the segment's length and the LSN of
/// its last frame (one below the next segment's first).
pub(crate) fn expect_for(vfs: &dyn Vfs, log_dir: &Path, store_id: u64, seg: u64) -> Result<Expect> {
    let path = log_dir.join(segment_file_name(seg));
    let f = vfs
        .open(&path, OpenMode::Read)
        .map_err(|e| Error::io("open segment", &path, e))?;
    let seg_len = f.len().map_err(|e| Error::io("stat segment", &path, e))?;
    let next = log_dir.join(segment_file_name(seg + 1));
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    let last_lsn = match vfs.open(&next, OpenMode::Read) {
        Ok(f) => match f.read_exact_at(&mut h, 0) {
            Ok(()) => SegmentHeader::decode(&h).map_or(0, |h| h.base_lsn.saturating_sub(1)),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(Error::io("read segment header", &next, e)),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(Error::io("open segment", &next, e)),
    };
    Ok(Expect {
        store_id,
        seg_id: seg,
        seg_len,
        last_lsn,
    })
}

/// Builds the index of segment `seg` by scanning its valid frames (what `apply` built).
pub(crate) fn rebuild(
    vfs: &dyn Vfs,
    log_dir: &Path,
    store_id: u64,
    seg: u64,
) -> Result<(SegmentIndex, Vec<DamagedRange>)> {
    let path = log_dir.join(segment_file_name(seg));
    let f = vfs
        .open(&path, OpenMode::Read)
        .map_err(|e| Error::io("open segment", &path, e))?;
    let len = f.len().map_err(|e| Error::io("stat segment", &path, e))?;
    let mut data = vec![0u8; usize::try_from(len).unwrap_or(0)];
    f.read_exact_at(&mut data, 0)
        .map_err(|e| Error::io("read segment", &path, e))?;
    let expect = expect_for(vfs, log_dir, store_id, seg)?;
    let mut lanes: HashMap<LaneKey, Vec<IdxEntry>> = HashMap::new();
    let mut damaged = Vec::new();
    let mut last_lsn = 0u64;
    let mut pos = SEGMENT_HEADER_LEN.min(data.len());
    while pos < data.len() {
        let (entries, len) = match check_frame(&data[pos..]) {
            FrameCheck::Valid {
                lsn, entries, len, ..
            } => {
                last_lsn = lsn;
                (entries, len)
            }
            FrameCheck::Truncated | FrameCheck::Invalid(_) => {
                // A sealed segment is frames from end to end: this is damage (which a skipped
                // open may have accepted already). The records in it cannot be indexed: say
                // so, and go on at the next valid frame.
                let why = match check_frame(&data[pos..]) {
                    FrameCheck::Invalid(w) => w.to_string(),
                    _ => "frame cut short".to_string(),
                };
                let next = find_next_frame(&data, pos + 1, last_lsn);
                damaged.push(DamagedRange {
                    segment: seg,
                    offset: pos as u64,
                    lsn_from: last_lsn + 1,
                    lsn_to: next.map_or(expect.last_lsn, |f| f.lsn.saturating_sub(1)),
                    bytes: next.map_or(data.len(), |f| f.offset).saturating_sub(pos) as u64,
                    reason: format!(
                        "{why} (found rebuilding the segment's missing or stale index file)"
                    ),
                });
                match next {
                    Some(f) => {
                        pos = f.offset;
                        continue;
                    }
                    None => break,
                }
            }
        };
        let base = pos + entries.start;
        let body = &data[base..pos + entries.end];
        let _ = decode_entries_at(body, base, |e, off, elen| {
            if let Entry::Enqueue(q) = &e {
                let at = At {
                    seg,
                    off: (base + off) as u32,
                    len: elen as u32,
                    crc: crc32c::crc32c(&body[off..off + elen]),
                };
                if let Some((key, ie)) = index_entry(q, at) {
                    lanes.entry(key).or_default().push(ie);
                }
            }
        });
        pos += len;
    }
    // In id order (a compaction's copies come after newer records); one entry per id.
    let mut lanes: Vec<LaneIndex> = lanes
        .into_iter()
        .map(|(key, mut entries)| {
            entries.sort_by_key(|e| e.id);
            entries.dedup_by_key(|e| e.id);
            LaneIndex { key, entries }
        })
        .collect();
    lanes.sort_by_key(|l| l.key);
    Ok((
        SegmentIndex {
            store_id,
            seg_id: seg,
            seg_len: expect.seg_len,
            last_lsn: expect.last_lsn,
            lanes,
        },
        damaged,
    ))
}

/// A stream message, as its index entry says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamEntry {
    pub id: u64,
    pub seg: u64,
    pub e: IdxEntry,
}

/// Some of a stream's records, in one segment.
#[derive(Debug)]
struct Run {
    seg: u64,
    lo: u64,
    hi: u64,
    /// Stream messages still in the stream.
    live: u64,
    live_bytes: u64,
    live_len: u64,
    /// Number of the next entry to load into `buf` (`None`: find it from the floor).
    pos: Option<u64>,
    buf: VecDeque<IdxEntry>,
}

impl Run {
    /// The first entry of the run above `floor` (dead ones included), loading more when
    /// needed. Only ids in the run's range count: the segment's index lists every record of
    /// the lane in that segment, also those that left before the run began (a stream dropped
    /// from a checkpoint when it was empty starts again with a new run).
    fn head(&mut self, floor: u64, key: LaneKey, ix: &mut IndexStore) -> Result<Option<IdxEntry>> {
        let from = floor.max(self.lo.saturating_sub(1));
        loop {
            while self.buf.front().is_some_and(|e| e.id <= from) {
                self.buf.pop_front();
            }
            if let Some(e) = self.buf.front() {
                if e.id > self.hi {
                    return Ok(None);
                }
                return Ok(Some(*e));
            }
            let pos = match self.pos {
                Some(p) => p,
                None => ix.lower_bound(self.seg, key, from.saturating_add(1))?,
            };
            let got = ix.read(self.seg, key, pos, READ_AHEAD)?;
            if got.is_empty() {
                self.pos = Some(pos);
                return Ok(None);
            }
            self.pos = Some(pos + got.len() as u64);
            self.buf.extend(got);
        }
    }
}

impl Stream {
    /// Checkpoint encoding (the read-ahead windows are not kept: they are reloaded).
    pub fn encode(&self, e: &mut Enc) {
        e.u64(self.floor);
        e.u64(self.max_enqueued);
        e.u64(self.live);
        e.u64(self.live_bytes);
        e.len(self.dead.len());
        for id in &self.dead {
            e.u64(*id);
        }
        e.len(self.descents.len());
        for (t, id) in &self.descents {
            e.u64(*t);
            e.u64(*id);
        }
        e.len(self.runs.len());
        for r in &self.runs {
            e.u64(r.seg);
            e.u64(r.lo);
            e.u64(r.hi);
            e.u64(r.live);
            e.u64(r.live_bytes);
            e.u64(r.live_len);
        }
    }

    pub fn decode(d: &mut Dec<'_>) -> DecResult<Self> {
        let floor = d.u64()?;
        let max_enqueued = d.u64()?;
        let live = d.u64()?;
        let live_bytes = d.u64()?;
        let mut dead = BTreeSet::new();
        for _ in 0..d.len(8)? {
            dead.insert(d.u64()?);
        }
        let mut descents = BTreeSet::new();
        for _ in 0..d.len(16)? {
            descents.insert((d.u64()?, d.u64()?));
        }
        let n = d.len(48)?;
        let mut runs = Vec::with_capacity(n);
        for _ in 0..n {
            runs.push(Run {
                seg: d.u64()?,
                lo: d.u64()?,
                hi: d.u64()?,
                live: d.u64()?,
                live_bytes: d.u64()?,
                live_len: d.u64()?,
                pos: None,
                buf: VecDeque::new(),
            });
        }
        if runs.windows(2).any(|w| w[0].lo > w[1].lo) {
            return Err("stream runs out of order".into());
        }
        Ok(Self {
            runs,
            floor,
            dead,
            live,
            live_bytes,
            max_enqueued,
            descents,
        })
    }

    /// Whether nothing is left in the stream (a checkpoint leaves it out: new pushes have
    /// higher ids than anything it remembers).
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Segments this stream has live records in.
    pub fn segments(&self) -> impl Iterator<Item = u64> + '_ {
        self.runs.iter().map(|r| r.seg)
    }
}

impl IndexStore {
    /// Segments up to this one are sealed.
    pub fn sealed_through(&self) -> u64 {
        self.sealed_through
    }

    /// After a checkpoint is loaded: segments up to `seg` are sealed.
    pub fn set_sealed_through(&mut self, seg: u64) {
        self.sealed_through = seg;
    }

    /// Adds an entry while rebuilding the RAM index of a segment that replay starts in the
    /// middle of (the part before the checkpoint's position is not applied again).
    pub fn append_prefix(&mut self, seg: u64, key: LaneKey, e: IdxEntry) {
        self.append(seg, key, e);
    }

    /// Forgets segment `seg` (deleted).
    pub fn forget(&mut self, seg: u64) {
        self.ram.remove(&seg);
        self.files.remove(&seg);
    }

    /// Takes an index rebuilt by recovery: kept in RAM until the maintenance writes it.
    pub fn adopt(&mut self, idx: SegmentIndex) {
        self.files.remove(&idx.seg_id);
        self.ram
            .insert(idx.seg_id, RamSeg::Frozen(Arc::new(idx), true));
    }
}

/// Live records a stream gave up, per segment (for the segment accounting).
#[derive(Debug, Default)]
pub(crate) struct Released {
    pub per_seg: Vec<(u64, u64, u64)>,
    pub count: u64,
    pub bytes: u64,
}

/// A lane's messages never handed out, in id order, kept out of memory.
#[derive(Debug, Default)]
pub(crate) struct Stream {
    runs: Vec<Run>,
    floor: u64,
    dead: BTreeSet<u64>,
    pub live: u64,
    pub live_bytes: u64,
    /// The latest push time seen in this stream...
    max_enqueued: u64,
    /// ...and the messages pushed with an older time than one before them (a dead letter or a
    /// redriven message keeps its original time; the clock may be set back): with the front,
    /// they give the oldest message without a scan. (enqueued_ms, id).
    descents: BTreeSet<(u64, u64)>,
}

impl Stream {
    fn is_live(&self, id: u64) -> bool {
        id > self.floor && !self.dead.contains(&id)
    }

    /// Adds a pushed message (`apply`). False if it cannot be in the stream (at or below the
    /// floor, or already taken out of order: only after damaged frames were skipped).
    pub fn push(&mut self, seg: u64, e: &IdxEntry) -> bool {
        if !self.is_live(e.id) {
            return false;
        }
        let size = u64::from(e.size & !SIZE_CARRIED);
        let i = match self.runs.last() {
            Some(r) if r.seg == seg && e.id > r.hi => self.runs.len() - 1,
            _ => {
                let at = self.runs.partition_point(|r| r.lo < e.id);
                self.runs.insert(
                    at,
                    Run {
                        seg,
                        lo: e.id,
                        hi: e.id,
                        live: 0,
                        live_bytes: 0,
                        live_len: 0,
                        pos: None,
                        buf: VecDeque::new(),
                    },
                );
                at
            }
        };
        if e.enqueued_ms < self.max_enqueued {
            self.descents.insert((e.enqueued_ms, e.id));
        } else {
            self.max_enqueued = e.enqueued_ms;
        }
        let r = &mut self.runs[i];
        r.hi = r.hi.max(e.id);
        r.live += 1;
        r.live_bytes += size;
        r.live_len += u64::from(e.len);
        self.live += 1;
        self.live_bytes += size;
        true
    }

    /// The message leaves the stream (`apply` of a lease or remove naming its record): the
    /// dead set takes it until a read of the front moves the floor past it. Returns false if
    /// it was not in the stream.
    pub fn take(&mut self, id: u64, seg: u64, size: u32, len: u32, enqueued_ms: u64) -> bool {
        if !self.is_live(id) {
            return false;
        }
        let Some(ri) = self
            .runs
            .iter()
            .position(|r| r.seg == seg && r.lo <= id && id <= r.hi)
        else {
            return false;
        };
        // The usual case on the live path: the message is the front a read just found (every
        // run that could hold a smaller id has its read-ahead past it). The floor moves to it
        // directly. Otherwise (replay, or out of order) the dead set takes it.
        let at_front = self.runs[ri].buf.front().is_some_and(|e| e.id == id)
            && self
                .runs
                .iter()
                .all(|r| r.lo > id || r.buf.front().is_some_and(|e| e.id >= id));
        if at_front {
            self.floor = id;
            self.runs[ri].buf.pop_front();
            if self.dead.first().is_some_and(|&d| d <= id) {
                self.dead = self.dead.split_off(&id.saturating_add(1));
            }
        } else {
            self.dead.insert(id);
        }
        self.descents.remove(&(enqueued_ms, id));
        let size = u64::from(size & !SIZE_CARRIED);
        let r = &mut self.runs[ri];
        r.live = r.live.saturating_sub(1);
        r.live_bytes = r.live_bytes.saturating_sub(size);
        r.live_len = r.live_len.saturating_sub(u64::from(len));
        if r.live == 0 {
            let (lo, hi) = (r.lo, r.hi);
            self.runs.remove(ri);
            // Every id of the run has left: its dead ids are of no use any more (unless another
            // run holds ids in the same range), and if no run starts below its end, the floor
            // moves past it.
            if !self.runs.iter().any(|o| o.lo <= hi && lo <= o.hi) {
                let above = self.dead.split_off(&lo);
                let mut rest = above;
                let keep = rest.split_off(&hi.saturating_add(1));
                // `rest` held the ids in [lo, hi]: dropped.
                drop(rest);
                self.dead.extend(keep);
                if self.runs.first().is_none_or(|f| f.lo > hi) && hi > self.floor {
                    self.floor = hi;
                    self.dead = self.dead.split_off(&hi.saturating_add(1));
                }
            }
        }
        self.live = self.live.saturating_sub(1);
        self.live_bytes = self.live_bytes.saturating_sub(size);
        true
    }

    /// Compaction copied the record of stream message `id` from segment `from_seg` to segment
    /// `seg`: the message stays in the stream, its run changes. False if it was not there.
    pub fn relocate(&mut self, id: u64, from_seg: u64, seg: u64, e: &IdxEntry) -> bool {
        if !self.is_live(id) {
            return false;
        }
        let Some(ri) = self
            .runs
            .iter()
            .position(|r| r.seg == from_seg && r.lo <= id && id <= r.hi)
        else {
            return false;
        };
        let size = u64::from(e.size & !SIZE_CARRIED);
        // The new run first (so that the old run's removal sees the overlap), then the old.
        // A run of the target segment whose range spans `id` already (pushes after an earlier
        // copy extended it) takes it as it is: a second run there would list `id` twice.
        let existing = self
            .runs
            .iter()
            .position(|r| r.seg == seg && r.lo <= id && id <= r.hi)
            .or_else(|| {
                self.runs.iter().rposition(|r| {
                    r.seg == seg && r.hi < id && self.runs_between_clear(r.hi, id, seg)
                })
            });
        let at = if let Some(i) = existing {
            i
        } else {
            let at = self.runs.partition_point(|r| r.lo < id);
            self.runs.insert(
                at,
                Run {
                    seg,
                    lo: id,
                    hi: id,
                    live: 0,
                    live_bytes: 0,
                    live_len: 0,
                    pos: None,
                    buf: VecDeque::new(),
                },
            );
            at
        };
        {
            let r = &mut self.runs[at];
            r.hi = r.hi.max(id);
            r.live += 1;
            r.live_bytes += size;
            r.live_len += u64::from(e.len);
        }
        let ri = if at <= ri { ri + 1 } else { ri };
        let ri = if self
            .runs
            .get(ri)
            .is_some_and(|r| r.seg == from_seg && r.lo <= id && id <= r.hi)
        {
            ri
        } else {
            match self
                .runs
                .iter()
                .position(|r| r.seg == from_seg && r.lo <= id && id <= r.hi)
            {
                Some(i) => i,
                None => return true,
            }
        };
        let r = &mut self.runs[ri];
        r.live = r.live.saturating_sub(1);
        r.live_bytes = r.live_bytes.saturating_sub(size);
        r.live_len = r.live_len.saturating_sub(u64::from(e.len));
        // Compaction copies a segment's records in id order, so every stream message of this
        // run below `id` was copied before it (or has left): the old run starts above it now.
        // Without this, the old segment's index (which still lists the copied records) and the
        // new run would both hold `id` until the old segment's last record was copied: a read
        // of the front could take the stale copy, and the new run's count would never fall.
        r.lo = r.lo.max(id.saturating_add(1));
        if r.live == 0 || r.lo > r.hi {
            self.runs.remove(ri);
        } else if self
            .runs
            .get(ri + 1)
            .is_some_and(|n| n.lo < self.runs[ri].lo)
        {
            // Runs are kept in order of their first id (reads and pushes rely on it).
            self.runs.sort_by_key(|r| r.lo);
        }
        // Every cursor is reloaded: the copy is inserted among the segment's entries.
        for r in &mut self.runs {
            r.pos = None;
            r.buf.clear();
        }
        true
    }

    /// The stream's messages whose records are in segment `seg` (for compaction).
    pub fn entries_in(
        &self,
        seg: u64,
        key: LaneKey,
        ix: &mut IndexStore,
        gone: &dyn Fn(u64) -> bool,
    ) -> Result<Vec<StreamEntry>> {
        let mut out = Vec::new();
        for r in self.runs.iter().filter(|r| r.seg == seg) {
            let from = self.floor.max(r.lo.saturating_sub(1));
            let mut pos = ix.lower_bound(seg, key, from.saturating_add(1))?;
            'run: loop {
                let got = ix.read(seg, key, pos, READ_AHEAD)?;
                if got.is_empty() {
                    break;
                }
                pos += got.len() as u64;
                for e in got {
                    if e.id > r.hi {
                        break 'run;
                    }
                    if !self.dead.contains(&e.id) && !gone(e.id) {
                        out.push(StreamEntry { id: e.id, seg, e });
                    }
                }
            }
        }
        Ok(out)
    }

    /// No other run of segment `seg` holds ids in (lo, hi): a run can grow over that range.
    fn runs_between_clear(&self, lo: u64, hi: u64, seg: u64) -> bool {
        !self
            .runs
            .iter()
            .any(|r| r.seg == seg && r.lo > lo && r.lo < hi)
    }

    /// Every message below `below` leaves (a purge: all existing ids are below it).
    pub fn purge_below(&mut self, below: u64) -> Released {
        let mut out = Released::default();
        let floor = below.saturating_sub(1);
        if floor <= self.floor {
            return out;
        }
        self.floor = floor;
        self.dead = self.dead.split_off(&below);
        self.descents.retain(|&(_, id)| id >= below);
        self.runs.retain(|r| {
            if r.hi < below {
                out.per_seg.push((r.seg, r.live, r.live_len));
                out.count += r.live;
                out.bytes += r.live_bytes;
                false
            } else {
                true
            }
        });
        for r in &mut self.runs {
            r.pos = None;
            r.buf.clear();
        }
        self.live -= out.count.min(self.live);
        self.live_bytes -= out.bytes.min(self.live_bytes);
        out
    }

    /// The push time of the oldest message in the stream.
    pub fn oldest(
        &mut self,
        key: LaneKey,
        ix: &mut IndexStore,
        gone: &dyn Fn(u64) -> bool,
    ) -> Result<Option<u64>> {
        let front = self.front(key, ix, gone)?.map(|e| e.e.enqueued_ms);
        let descent = self.descents.first().map(|&(t, _)| t);
        Ok(match (front, descent) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// Ids that left out of order and are not yet passed by the floor.
    pub fn dead_len(&self) -> usize {
        self.dead.len()
    }

    /// Everything leaves (the queue is dropped).
    pub fn release_all(&self) -> Released {
        let mut out = Released::default();
        for r in &self.runs {
            out.per_seg.push((r.seg, r.live, r.live_len));
            out.count += r.live;
            out.bytes += r.live_bytes;
        }
        out
    }

    /// The first message of the stream. `gone` says which ids are known to have left it
    /// (messages touched since: a relocated copy of one may be listed in an index).
    pub fn front(
        &mut self,
        key: LaneKey,
        ix: &mut IndexStore,
        gone: &dyn Fn(u64) -> bool,
    ) -> Result<Option<StreamEntry>> {
        loop {
            let mut best: Option<(usize, IdxEntry)> = None;
            for i in 0..self.runs.len() {
                if best.is_some_and(|(_, b)| self.runs[i].lo > b.id) {
                    break;
                }
                if let Some(h) = self.runs[i].head(self.floor, key, ix)? {
                    if best.is_none_or(|(_, b)| h.id < b.id) {
                        best = Some((i, h));
                    }
                }
            }
            let Some((i, h)) = best else {
                return Ok(None);
            };
            if self.dead.remove(&h.id) || gone(h.id) {
                // Taken out of order earlier, and everything before it is gone: the floor
                // moves past it.
                self.floor = h.id;
                continue;
            }
            return Ok(Some(StreamEntry {
                id: h.id,
                seg: self.runs[i].seg,
                e: h,
            }));
        }
    }

    /// The stream message with id `id`, if it is in the stream.
    pub fn get(&self, key: LaneKey, ix: &mut IndexStore, id: u64) -> Result<Option<StreamEntry>> {
        if !self.is_live(id) {
            return Ok(None);
        }
        for r in self.runs.iter().filter(|r| r.lo <= id && id <= r.hi) {
            if let Some(e) = ix.find(r.seg, key, id)? {
                return Ok(Some(StreamEntry { id, seg: r.seg, e }));
            }
        }
        Ok(None)
    }

    /// Visits the stream's messages in id order until `f` returns false.
    pub fn walk(
        &self,
        key: LaneKey,
        ix: &mut IndexStore,
        gone: &dyn Fn(u64) -> bool,
        f: impl FnMut(StreamEntry) -> bool,
    ) -> Result<()> {
        self.walk_from(key, ix, 0, gone, f)
    }

    /// [`Stream::walk`] from the first message with an id above `after`.
    pub fn walk_from(
        &self,
        key: LaneKey,
        ix: &mut IndexStore,
        after: u64,
        gone: &dyn Fn(u64) -> bool,
        mut f: impl FnMut(StreamEntry) -> bool,
    ) -> Result<()> {
        // A k-way merge over the runs, each read through a window of its own.
        struct W {
            seg: u64,
            lo: u64,
            hi: u64,
            pos: u64,
            buf: VecDeque<IdxEntry>,
            done: bool,
        }
        let floor = self.floor.max(after);
        let mut ws: Vec<W> = self
            .runs
            .iter()
            .filter(|r| r.hi > floor)
            .map(|r| W {
                seg: r.seg,
                lo: r.lo,
                hi: r.hi,
                pos: u64::MAX,
                buf: VecDeque::new(),
                done: false,
            })
            .collect();
        loop {
            let mut best: Option<(usize, IdxEntry)> = None;
            for (i, w) in ws.iter_mut().enumerate() {
                if best.is_some_and(|(_, b)| w.lo > b.id) {
                    break;
                }
                if w.buf.is_empty() && !w.done {
                    let from = floor.max(w.lo.saturating_sub(1));
                    if w.pos == u64::MAX {
                        w.pos = ix.lower_bound(w.seg, key, from.saturating_add(1))?;
                    }
                    let got = ix.read(w.seg, key, w.pos, READ_AHEAD)?;
                    w.pos += got.len() as u64;
                    w.done = got.is_empty();
                    let hi = w.hi;
                    w.buf.extend(got.into_iter().filter(|e| e.id <= hi));
                    if w.buf.is_empty() {
                        w.done = true;
                    }
                }
                if let Some(h) = w.buf.front() {
                    if best.is_none_or(|(_, b)| h.id < b.id) {
                        best = Some((i, *h));
                    }
                }
            }
            let Some((i, h)) = best else {
                return Ok(());
            };
            ws[i].buf.pop_front();
            if h.id <= floor || self.dead.contains(&h.id) || gone(h.id) {
                continue;
            }
            if !f(StreamEntry {
                id: h.id,
                seg: ws[i].seg,
                e: h,
            }) {
                return Ok(());
            }
        }
    }
}
