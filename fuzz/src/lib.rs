//! Shared code of spool's fuzz targets (see `README.md`).
//!
//! - [`check_log_bytes`]: the body of `frame_decoder`, reading arbitrary bytes as a segment, a
//!   frame or a FORMAT file and checking the decoders' contracts.
//! - [`Pristine`], [`apply_ops`], [`check_recovery`]: the body of `recovery_scanner`, which
//!   damages the segment files of a small real store and checks that recovery neither panics
//!   nor invents messages.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use spool_engine::entry::decode_entries;
use spool_engine::frame::{
    check_frame, find_next_frame, parse_segment_file_name, segment_file_name, FormatFile,
    FrameCheck, SegmentHeader, FORMAT_LEN, FRAME_MAGIC, FRAME_OVERHEAD, SEGMENT_HEADER_LEN,
};
use spool_engine::vfs::{MemVfs, OpenMode, Vfs};
use spool_engine::{Error, ManualClock, Options, Push, QueueConfig, RecoveryPolicy, Store};

// =============================================================================================
// frame_decoder

/// Decodes the entries of one frame body and checks the round trip: what decodes re-encodes to
/// the very same bytes (the encoding is canonical) and decodes again to the same entries.
pub fn check_entries(body: &[u8], base: usize) {
    let mut entries = Vec::new();
    let decoded = decode_entries(body, base, |e| entries.push(e));
    // Every entry handed to the callback before an error was decoded from well-formed bytes,
    // so it must round-trip too.
    let mut encoded = Vec::new();
    for e in &entries {
        e.encode(&mut encoded);
    }
    let mut again = Vec::new();
    let n = decode_entries(&encoded, 0, |e| again.push(e))
        .unwrap_or_else(|e| panic!("re-encoded entries do not decode: {e}\n{entries:#?}"));
    assert_eq!(n, entries.len());
    assert_eq!(again, entries, "entries changed across encode/decode");
    match decoded {
        Ok(n) => {
            assert_eq!(
                n,
                entries.len(),
                "decode_entries count differs from callbacks"
            );
            assert_eq!(
                encoded.as_slice(),
                body,
                "a body that decodes does not re-encode to the same bytes"
            );
        }
        Err(e) => {
            // The decoded prefix is a prefix of the body, byte for byte.
            assert!(
                body.starts_with(&encoded),
                "the entries decoded before an error do not re-encode to the body's prefix"
            );
            assert!(
                e.offset >= base + encoded.len() && e.offset <= base + body.len(),
                "error offset {} outside the undecoded rest [{}, {}]",
                e.offset,
                base + encoded.len(),
                base + body.len()
            );
        }
    }
}

/// Checks `check_frame` at `buf[0]`, returning the frame's length when it is valid.
fn check_one_frame(buf: &[u8], base: usize) -> Option<usize> {
    match check_frame(buf) {
        FrameCheck::Valid { entries, len, .. } => {
            assert!(len <= buf.len(), "valid frame longer than the buffer");
            assert_eq!(entries.start, FRAME_OVERHEAD);
            assert_eq!(entries.end, len);
            check_entries(&buf[entries], base + FRAME_OVERHEAD);
            Some(len)
        }
        FrameCheck::Truncated | FrameCheck::Invalid(_) => None,
    }
}

/// The whole `frame_decoder` property set on one input.
pub fn check_log_bytes(data: &[u8]) {
    // The headers: must not panic; what decodes re-encodes to the same bytes.
    if let Ok(h) = SegmentHeader::decode(data) {
        assert_eq!(&h.encode()[..], &data[..SEGMENT_HEADER_LEN]);
    }
    if let Ok(f) = FormatFile::decode(data) {
        assert_eq!(&f.encode()[..], data);
    }
    if data.len() >= FORMAT_LEN {
        if let Ok(f) = FormatFile::decode(&data[..FORMAT_LEN]) {
            assert_eq!(&f.encode()[..], &data[..FORMAT_LEN]);
        }
    }

    // The frame at offset 0, whatever the rest is.
    check_one_frame(data, 0);

    // find_next_frame's contract, from a few starting points and minimum LSNs.
    for (from, min_lsn) in [
        (0, 0),
        (1, 0),
        (SEGMENT_HEADER_LEN, 0),
        (0, 1),
        (0, u64::MAX - 1),
    ] {
        if let Some(found) = find_next_frame(data, from, min_lsn) {
            assert!(found.offset >= from, "find_next_frame went backwards");
            assert!(
                found.lsn > min_lsn,
                "find_next_frame returned a frame at or below min_lsn"
            );
            match check_frame(&data[found.offset..]) {
                FrameCheck::Valid {
                    lsn,
                    synced_lsn,
                    len,
                    ..
                } => assert_eq!(
                    (lsn, synced_lsn, len),
                    (found.lsn, found.synced_lsn, found.len),
                    "find_next_frame disagrees with check_frame"
                ),
                other => panic!("find_next_frame returned an offset that checks {other:?}"),
            }
        }
    }

    // Walk the input as a segment would be walked by recovery: header (if any), then frames,
    // resynchronising on the next valid frame after anything bad.
    let mut pos = if SegmentHeader::decode(data).is_ok() {
        SEGMENT_HEADER_LEN
    } else {
        0
    };
    let mut steps = 0;
    while pos < data.len() && steps < 10_000 {
        steps += 1;
        if let Some(len) = check_one_frame(&data[pos..], pos) {
            pos += len;
            continue;
        }
        match find_next_frame(data, pos + 1, 0) {
            Some(found) => {
                assert!(found.offset > pos);
                pos = found.offset;
            }
            None => break,
        }
    }
}

// =============================================================================================
// recovery_scanner

/// The store directory inside the in-memory file system.
pub const STORE_DIR: &str = "/s";
/// Segments are rolled at this size (the engine's minimum), so the small store has several.
pub const SEGMENT_BYTES: u64 = 4096;
/// The fixed time of the store's clock.
pub const NOW_MS: u64 = 1_700_000_000_000;
/// The store id written into FORMAT and every segment header of the pristine store, replacing
/// the random one, so that a crashing input reproduces in another process.
pub const STORE_ID: u64 = 0x5EED_0000_5EED_0001;

/// A message as the pristine store's history could legitimately have it: queue, id, payload,
/// subject, headers.
pub type QueueMsg = (String, u64, Bytes, Option<String>, Vec<(String, Bytes)>);

/// The pristine store: its files, and every message that ever legitimately existed in it.
#[derive(Debug)]
pub struct Pristine {
    /// Every file under [`STORE_DIR`] (FORMAT, LOCK if any, log segments), by path.
    pub files: BTreeMap<PathBuf, Vec<u8>>,
    /// Every (queue, id, ...) a message was ever pushed or dead-lettered as.
    pub queue_msgs: BTreeSet<QueueMsg>,
    /// Every (topic, seq, payload) ever published.
    pub topic_msgs: BTreeSet<(String, u64, Bytes)>,
    /// The exact bytes of every valid frame in the pristine log.
    pub frames: BTreeSet<Vec<u8>>,
}

/// Checkpoints off: the target is the recovery scanner, which replays the whole log (what a
/// store falls back to without a usable checkpoint); housekeeping only on request, so that a
/// run is deterministic.
fn options(policy: RecoveryPolicy) -> Options {
    Options {
        recovery: policy,
        segment_bytes: SEGMENT_BYTES,
        clock: Arc::new(ManualClock::new(NOW_MS)),
        checkpoint_bytes: 0,
        maintenance: spool_engine::Maintenance::Manual,
        ..Options::default()
    }
}

fn payload(tag: &str, i: usize, len: usize) -> Bytes {
    let mut v = format!("<{tag}:{i:03}>").into_bytes();
    while v.len() < len {
        v.push(b'a' + (v.len() % 26) as u8);
    }
    Bytes::from(v)
}

/// Every file under `dir` (one level of sub-directories, as a store has).
pub fn snapshot(vfs: &MemVfs, dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(names) = vfs.read_dir(&d) else {
            continue;
        };
        for n in names {
            let p = d.join(&n);
            match vfs.open(&p, OpenMode::Read) {
                Ok(f) => {
                    let len = f.len().expect("len") as usize;
                    let mut b = vec![0u8; len];
                    f.read_exact_at(&mut b, 0).expect("read");
                    out.insert(p, b);
                }
                Err(_) => dirs.push(p),
            }
        }
    }
    out
}

/// A fresh in-memory file system holding exactly `files`.
pub fn restore(files: &BTreeMap<PathBuf, Vec<u8>>) -> MemVfs {
    let vfs = MemVfs::new();
    vfs.create_dir_all(&Path::new(STORE_DIR).join("log"))
        .expect("mkdir");
    for (p, b) in files {
        if let Some(parent) = p.parent() {
            vfs.create_dir_all(parent).expect("mkdir");
        }
        let f = vfs.open(p, OpenMode::Create).expect("create");
        f.set_len(0).expect("truncate");
        f.write_all_at(b, 0).expect("write");
    }
    vfs
}

/// Every valid frame in `data` (anywhere, not only on the frame chain).
pub fn all_valid_frames(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut from = 0;
    // Independent of find_next_frame (whose min_lsn would hide a frame with LSN 0).
    let magic = FRAME_MAGIC.to_le_bytes();
    while let Some(rel) = data
        .get(from..)
        .and_then(|d| d.windows(4).position(|w| w == magic))
    {
        let at = from + rel;
        if let FrameCheck::Valid { len, .. } = check_frame(&data[at..]) {
            out.push(&data[at..at + len]);
        }
        from = at + 1;
    }
    out
}

fn build_pristine() -> Pristine {
    let vfs = MemVfs::new();
    let store = Store::open_with_vfs(
        Arc::new(vfs.clone()),
        STORE_DIR,
        options(RecoveryPolicy::Refuse),
    )
    .expect("open a new store");
    let mut queue_msgs = BTreeSet::new();
    let mut topic_msgs = BTreeSet::new();
    let mut record = |queue: &str, id: u64, p: &Push| {
        queue_msgs.insert((
            queue.to_string(),
            id,
            p.payload.clone(),
            p.subject.clone(),
            p.headers.clone(),
        ));
    };

    store
        .create_queue(
            "jobs",
            QueueConfig {
                dead_letter_queue: Some("jobs.dead".into()),
                ..QueueConfig::default()
            },
        )
        .expect("create queue");
    let mut pushed = Vec::new();
    for i in 0..14 {
        let mut p = Push::new(payload("jobs", i, 180 + 37 * (i % 5))).priority((i % 3) as u8);
        if i % 4 == 1 {
            p = p.subject(format!("sensors/{i}"));
        }
        if i % 5 == 2 {
            p = p
                .header("qos", Bytes::from_static(b"1"))
                .header("ct", Bytes::from_static(b"text/plain"));
        }
        let id = store.push("jobs", p.clone()).expect("push");
        record("jobs", id, &p);
        pushed.push((id, p));
    }
    // An atomic batch: one frame holding three entries.
    let batch: Vec<Push> = (0..3)
        .map(|i| Push::new(payload("batch", i, 120)))
        .collect();
    let ids = store.push_batch("jobs", batch.clone()).expect("push batch");
    for (id, p) in ids.iter().zip(&batch) {
        record("jobs", *id, p);
    }
    // Some consumption, so the log holds lease, remove, nack and move entries too.
    let leased = store
        .lease("jobs", 4, Some(Duration::from_secs(60)))
        .expect("lease");
    store
        .ack("jobs", leased[0].receipt.expect("receipt"))
        .expect("ack");
    store
        .nack(
            "jobs",
            leased[1].receipt.expect("receipt"),
            Duration::ZERO,
            None,
        )
        .expect("nack");
    let dead_id = store
        .dead("jobs", leased[2].receipt.expect("receipt"))
        .expect("dead");
    let orig = pushed
        .iter()
        .find(|(id, _)| *id == leased[2].id)
        .map(|(_, p)| p.clone())
        .expect("the dead-lettered message was pushed");
    record("jobs.dead", dead_id, &orig);
    let _ = store.pop("jobs", 1).expect("pop");

    for i in 0..3 {
        let p = Push::new(payload("other", i, 400));
        let id = store.push("other", p.clone()).expect("push");
        record("other", id, &p);
    }
    let first = store.messages("other").expect("messages")[0].id;
    store.delete("other", first).expect("delete");

    for i in 0..5 {
        let p = payload("events", i, 150);
        let seq = store.publish("events", p.clone()).expect("publish");
        topic_msgs.insert(("events".to_string(), seq, p));
    }
    let mut c = store
        .durable_cursor("events", "reader", spool_engine::CursorStart::Earliest)
        .expect("cursor");
    let _ = store.topic_next(&mut c).expect("read");
    store.commit_cursor(&c).expect("commit cursor");
    store.close().expect("close");

    // Replace the random store id (and so every header checksum) by a fixed one.
    let mut files = snapshot(&vfs, Path::new(STORE_DIR));
    for (p, b) in &mut files {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name == "FORMAT" {
            let mut f = FormatFile::decode(b).expect("FORMAT decodes");
            f.store_id = STORE_ID;
            *b = f.encode().to_vec();
        } else if parse_segment_file_name(name).is_some() {
            let mut h = SegmentHeader::decode(b).expect("segment header decodes");
            h.store_id = STORE_ID;
            b[..SEGMENT_HEADER_LEN].copy_from_slice(&h.encode());
        }
    }
    let mut frames = BTreeSet::new();
    for (p, b) in &files {
        if is_segment(p) {
            for f in all_valid_frames(b) {
                frames.insert(f.to_vec());
            }
        }
    }
    let pristine = Pristine {
        files,
        queue_msgs,
        topic_msgs,
        frames,
    };
    // The pristine store must open cleanly and hold only what was recorded.
    let state = open_and_read(&pristine.files, RecoveryPolicy::Refuse)
        .0
        .expect("the pristine store opens");
    assert!(state.damaged.is_empty());
    assert!(state.queue_msgs.len() > 10 && state.topic_msgs.len() == 5);
    check_known(&pristine, &state);
    assert!(
        pristine.segments().len() >= 3,
        "the pristine store should span several segments"
    );
    pristine
}

fn is_segment(p: &Path) -> bool {
    p.parent() == Some(&Path::new(STORE_DIR).join("log"))
        && p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| parse_segment_file_name(n).is_some())
}

impl Pristine {
    /// The pristine store, built once per process.
    pub fn get() -> &'static Pristine {
        static P: OnceLock<Pristine> = OnceLock::new();
        P.get_or_init(build_pristine)
    }

    /// Paths of the segment files, in order.
    pub fn segments(&self) -> Vec<PathBuf> {
        self.files
            .keys()
            .filter(|p| is_segment(p))
            .cloned()
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Damage operations, read from the fuzz input.
//
// The input is a sequence of operations, each an opcode byte followed by its arguments
// (little-endian). `file` picks a segment by index (modulo their number, in name order);
// offsets are taken modulo the file's length + 1. Missing bytes at the end read as 0.
//
//   0 overwrite  file u8, off u16, n u8 (1..=32), n bytes
//   1 flip bit   file u8, bit u16 (modulo the file's bits)
//   2 truncate   file u8, len u16 (modulo len + 1)
//   3 append     file u8, n u8 (1..=64), n bytes
//   4 copy       src u8, src_off u16, dst u8, dst_off u16, n u16 (1..=1024): moves real frames
//   5 remove     file u8
//   6 zero       file u8, off u16, n u16 (1..=1024)
//   7 clone      file u8, delta u8: copies the segment to id last+1+delta (a stray segment)
//   8 rename     file u8, kind u8, v u64: renames the segment to id (by kind % 4) u64::MAX - v%4,
//                v % 16, last + 1 + v%4, or v

/// What one damage operation did (for debugging output).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Overwrite {
        file: usize,
        off: usize,
        bytes: Vec<u8>,
    },
    FlipBit {
        file: usize,
        bit: usize,
    },
    Truncate {
        file: usize,
        len: usize,
    },
    Append {
        file: usize,
        bytes: Vec<u8>,
    },
    Copy {
        src: usize,
        src_off: usize,
        dst: usize,
        dst_off: usize,
        n: usize,
    },
    Remove {
        file: usize,
    },
    Zero {
        file: usize,
        off: usize,
        n: usize,
    },
    Clone {
        file: usize,
        delta: u64,
    },
    Rename {
        file: usize,
        kind: u8,
        v: u64,
    },
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        u64::from(self.u16())
            | u64::from(self.u16()) << 16
            | u64::from(self.u16()) << 32
            | u64::from(self.u16()) << 48
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a.to_vec()
    }
}

/// Parses the fuzz input into at most 16 operations.
pub fn parse_ops(data: &[u8]) -> Vec<Op> {
    let mut inp = Input(data);
    let mut ops = Vec::new();
    while !inp.0.is_empty() && ops.len() < 16 {
        let op = match inp.u8() % 9 {
            0 => {
                let file = inp.u8() as usize;
                let off = inp.u16() as usize;
                let n = (inp.u8() % 32) as usize + 1;
                Op::Overwrite {
                    file,
                    off,
                    bytes: inp.bytes(n),
                }
            }
            1 => Op::FlipBit {
                file: inp.u8() as usize,
                bit: inp.u16() as usize,
            },
            2 => Op::Truncate {
                file: inp.u8() as usize,
                len: inp.u16() as usize,
            },
            3 => {
                let file = inp.u8() as usize;
                let n = (inp.u8() % 64) as usize + 1;
                Op::Append {
                    file,
                    bytes: inp.bytes(n),
                }
            }
            4 => Op::Copy {
                src: inp.u8() as usize,
                src_off: inp.u16() as usize,
                dst: inp.u8() as usize,
                dst_off: inp.u16() as usize,
                n: (inp.u16() % 1024) as usize + 1,
            },
            5 => Op::Remove {
                file: inp.u8() as usize,
            },
            6 => Op::Zero {
                file: inp.u8() as usize,
                off: inp.u16() as usize,
                n: (inp.u16() % 1024) as usize + 1,
            },
            7 => Op::Clone {
                file: inp.u8() as usize,
                delta: u64::from(inp.u8() % 4),
            },
            _ => Op::Rename {
                file: inp.u8() as usize,
                kind: inp.u8(),
                v: inp.u64(),
            },
        };
        ops.push(op);
    }
    ops
}

/// Applies the operations to the segment files of `files`.
pub fn apply_ops(files: &mut BTreeMap<PathBuf, Vec<u8>>, ops: &[Op]) {
    for op in ops {
        let segs: Vec<PathBuf> = files.keys().filter(|p| is_segment(p)).cloned().collect();
        if segs.is_empty() {
            return;
        }
        let pick = |i: usize| segs[i % segs.len()].clone();
        match op {
            Op::Overwrite { file, off, bytes } => {
                let b = files.get_mut(&pick(*file)).expect("segment");
                let off = off % (b.len() + 1);
                if b.len() < off + bytes.len() {
                    b.resize(off + bytes.len(), 0);
                }
                b[off..off + bytes.len()].copy_from_slice(bytes);
            }
            Op::FlipBit { file, bit } => {
                let b = files.get_mut(&pick(*file)).expect("segment");
                if !b.is_empty() {
                    let bit = bit % (b.len() * 8);
                    b[bit / 8] ^= 1 << (bit % 8);
                }
            }
            Op::Truncate { file, len } => {
                let b = files.get_mut(&pick(*file)).expect("segment");
                let len = len % (b.len() + 1);
                b.truncate(len);
            }
            Op::Append { file, bytes } => {
                files
                    .get_mut(&pick(*file))
                    .expect("segment")
                    .extend_from_slice(bytes);
            }
            Op::Copy {
                src,
                src_off,
                dst,
                dst_off,
                n,
            } => {
                let s = &files[&pick(*src)];
                let so = src_off % (s.len() + 1);
                let chunk = s[so..(so + n).min(s.len())].to_vec();
                let d = files.get_mut(&pick(*dst)).expect("segment");
                let dof = dst_off % (d.len() + 1);
                if d.len() < dof + chunk.len() {
                    d.resize(dof + chunk.len(), 0);
                }
                d[dof..dof + chunk.len()].copy_from_slice(&chunk);
            }
            Op::Remove { file } => {
                files.remove(&pick(*file));
            }
            Op::Zero { file, off, n } => {
                let b = files.get_mut(&pick(*file)).expect("segment");
                let off = off % (b.len() + 1);
                let end = (off + n).min(b.len());
                b[off..end].fill(0);
            }
            Op::Clone { file, delta } => {
                let last = segs
                    .iter()
                    .filter_map(|p| parse_segment_file_name(p.file_name()?.to_str()?))
                    .max()
                    .unwrap_or(0);
                let b = files[&pick(*file)].clone();
                let p = Path::new(STORE_DIR)
                    .join("log")
                    .join(segment_file_name(last.saturating_add(1 + delta)));
                files.insert(p, b);
            }
            Op::Rename { file, kind, v } => {
                let last = segs
                    .iter()
                    .filter_map(|p| parse_segment_file_name(p.file_name()?.to_str()?))
                    .max()
                    .unwrap_or(0);
                let id = match kind % 4 {
                    0 => u64::MAX - v % 4,
                    1 => v % 16,
                    2 => last.saturating_add(1 + v % 4),
                    _ => *v,
                };
                let from = pick(*file);
                let b = files.remove(&from).expect("segment");
                let to = Path::new(STORE_DIR).join("log").join(segment_file_name(id));
                files.insert(to, b);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Opening the damaged store and checking what it holds.

/// What an opened store held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contents {
    pub queue_msgs: BTreeSet<QueueMsg>,
    pub topic_msgs: BTreeSet<(String, u64, Bytes)>,
    pub damaged: Vec<spool_engine::DamagedRange>,
}

fn read_contents(store: &Store) -> Contents {
    let mut queue_msgs = BTreeSet::new();
    let damage_skipped = !store.recovery_report().damaged.is_empty();
    for q in store.queues() {
        let msgs = match store.messages(&q) {
            Ok(m) => m,
            // After damage was skipped, a record of a frame the scan took as valid may still
            // fail its checksum when read: reported, never delivered.
            Err(Error::DamagedRecord { .. }) if damage_skipped => continue,
            Err(e) => panic!("messages of a listed queue: {e}"),
        };
        for m in msgs {
            queue_msgs.insert((q.clone(), m.id, m.payload, m.subject, m.headers));
        }
    }
    let mut topic_msgs = BTreeSet::new();
    for t in store.topics() {
        let mut c = store.cursor_at(&t, 1).expect("cursor");
        for _ in 0..10_000 {
            match store
                .topic_next(&mut c)
                .expect("topic_next on a listed topic")
            {
                Some(m) => {
                    topic_msgs.insert((t.clone(), m.seq, m.payload));
                }
                None => break,
            }
        }
    }
    Contents {
        queue_msgs,
        topic_msgs,
        damaged: store.recovery_report().damaged.clone(),
    }
}

/// Opens a store holding `files` with `policy`; returns what it held (or the error) and the
/// files as they are after the store was closed.
pub fn open_and_read(
    files: &BTreeMap<PathBuf, Vec<u8>>,
    policy: RecoveryPolicy,
) -> (Result<Contents, Error>, BTreeMap<PathBuf, Vec<u8>>) {
    let vfs = restore(files);
    let result =
        Store::open_with_vfs(Arc::new(vfs.clone()), STORE_DIR, options(policy)).map(|store| {
            let c = read_contents(&store);
            store.close().expect("close after recovery");
            c
        });
    (result, snapshot(&vfs, Path::new(STORE_DIR)))
}

/// Asserts that every message in `c` is one the pristine store's history had.
pub fn check_known(p: &Pristine, c: &Contents) {
    for m in &c.queue_msgs {
        assert!(
            p.queue_msgs.contains(m),
            "recovery produced a queue message that was never pushed: {m:?}"
        );
    }
    for m in &c.topic_msgs {
        assert!(
            p.topic_msgs.contains(m),
            "recovery produced a topic message that was never published: {m:?}"
        );
    }
}

fn log_files(files: &BTreeMap<PathBuf, Vec<u8>>) -> BTreeMap<PathBuf, Vec<u8>> {
    files
        .iter()
        .filter(|(p, _)| is_segment(p))
        .map(|(p, b)| (p.clone(), b.clone()))
        .collect()
}

/// The whole `recovery_scanner` property set on one input.
pub fn check_recovery(data: &[u8]) {
    let p = Pristine::get();
    let ops = parse_ops(data);
    let mut files = p.files.clone();
    apply_ops(&mut files, &ops);

    // A frame with a valid checksum that is not one of the pristine frames can only come from
    // the fuzzer forging a checksum (libFuzzer can, through its comparison tracing): such a
    // frame is indistinguishable from real data, so the "no invented messages" check is off.
    let forged = files
        .iter()
        .filter(|(path, _)| is_segment(path))
        .any(|(_, b)| all_valid_frames(b).iter().any(|f| !p.frames.contains(*f)));

    // Refuse: opens (possibly cutting a torn tail) or refuses without changing the log.
    let (refuse, after_refuse) = open_and_read(&files, RecoveryPolicy::Refuse);
    match &refuse {
        Ok(c) => {
            assert!(
                c.damaged.is_empty(),
                "Refuse opened and reported damage: {:?}",
                c.damaged
            );
            if !forged {
                check_known(p, c);
            }
        }
        Err(Error::Corrupt { ranges }) => {
            assert!(!ranges.is_empty(), "Corrupt with no damaged range");
            assert_eq!(
                log_files(&after_refuse),
                log_files(&files),
                "Refuse failed with Corrupt but changed the log"
            );
        }
        Err(_) => {}
    }

    // Skip: opens unless the damage is outside the log (or unreadable); never invents.
    let (skip, after_skip) = open_and_read(&files, RecoveryPolicy::Skip);
    if let Ok(c) = &skip {
        if !forged {
            check_known(p, c);
        }
    }
    match (&refuse, &skip) {
        (Ok(r), Ok(s)) => assert_eq!(r, s, "Refuse and Skip disagree on an undamaged log"),
        (Ok(_), Err(e)) => panic!("Refuse opened but Skip failed: {e}"),
        _ => {}
    }

    // Recovery is idempotent: reopening what Skip left gives the same contents.
    if let Ok(s) = &skip {
        let (again, _) = open_and_read(&after_skip, RecoveryPolicy::Skip);
        match again {
            Ok(a) => assert_eq!(
                (&a.queue_msgs, &a.topic_msgs),
                (&s.queue_msgs, &s.topic_msgs),
                "a second recovery gives different contents"
            ),
            Err(e) => panic!("the store Skip opened and closed does not open again: {e}"),
        }
    }
}

// =============================================================================================
// Seed corpora

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).expect("write seed");
}

/// Writes the seed corpora `<root>/frame_decoder/` (the pristine store's segments, FORMAT and
/// single frames) and `<root>/recovery_scanner/` (meaningful damage operations), replacing
/// what was there. Deterministic. Returns how many seeds each got.
pub fn write_seeds(root: &Path) -> (usize, usize) {
    use std::fs;
    let p = Pristine::get();

    // --- frame_decoder: whole segments, FORMAT, and single frames of every shape.
    let fd = root.join("frame_decoder");
    let _ = fs::remove_dir_all(&fd);
    fs::create_dir_all(&fd).expect("mkdir");
    let mut n_frames = 0;
    for (path, bytes) in &p.files {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if parse_segment_file_name(name).is_some() {
            write(&fd, &format!("segment-{name}"), bytes);
            for f in all_valid_frames(bytes) {
                if n_frames < 40 {
                    write(&fd, &format!("frame-{n_frames:02}"), f);
                    n_frames += 1;
                }
            }
        } else if bytes.len() == FORMAT_LEN {
            write(&fd, "format", bytes);
        }
    }

    // --- recovery_scanner: damage operations (format in `spool_fuzz::parse_ops`).
    let rs = root.join("recovery_scanner");
    let _ = fs::remove_dir_all(&rs);
    fs::create_dir_all(&rs).expect("mkdir");
    // `file` arguments pick a segment by index modulo their number: `last` is the last one.
    let last = u8::try_from(p.segments().len() - 1).expect("few segments");
    let seeds: &[(&str, Vec<u8>)] = &[
        ("none", vec![]),
        // flip a bit in the first frame of the first segment
        ("flip-first-frame", vec![1, 0, 0x00, 0x04]),
        // flip a bit in the last segment
        ("flip-last-segment", vec![1, last, 0x00, 0x10]),
        // truncate the last segment inside a frame (a torn tail)
        ("truncate-last", vec![2, last, 0x90, 0x01]),
        // truncate the second segment to its header (64 bytes)
        ("truncate-to-header", vec![2, 1, 64, 0]),
        // append garbage that starts like a frame to the last segment
        ("append-garbage", {
            let mut v = vec![3, last, 19];
            v.extend_from_slice(b"SPFR\x20\x00\x00\x00garbage-garbage-gar");
            v
        }),
        // copy 600 bytes of the first segment (real frames) over the middle of the second
        ("copy-frames", vec![4, 0, 64, 0, 1, 0x00, 0x02, 0x58, 0x02]),
        // remove the second segment (a missing segment in the middle)
        ("remove-middle", vec![5, 1]),
        // remove the first segment
        ("remove-first", vec![5, 0]),
        // zero 257 bytes in the first segment after its header
        ("zero-range", vec![6, 0, 0x80, 0x00, 0x00, 0x01]),
        // clone the first segment as a stray segment after the last
        ("clone-stray", vec![7, 0, 0]),
        // overwrite the second segment header's store id
        (
            "overwrite-header",
            vec![0, 1, 16, 0, 3, 0xde, 0xad, 0xbe, 0xef],
        ),
        // rename the last segment to id 1000 (a gap before it)
        (
            "rename-last-far",
            vec![8, last, 3, 0xe8, 0x03, 0, 0, 0, 0, 0, 0],
        ),
        // rename the second segment past the last one (a gap, and a header that disagrees)
        ("rename-gap", vec![8, 1, 2, 1, 0, 0, 0, 0, 0, 0, 0]),
        // two ops: tear the tail, then damage the middle
        ("tear-and-flip", vec![2, last, 0x00, 0x02, 1, 1, 0x00, 0x08]),
    ];
    for (name, bytes) in seeds {
        write(&rs, name, bytes);
    }
    (
        fs::read_dir(&fd).map(Iterator::count).unwrap_or(0),
        seeds.len(),
    )
}

/// The fuzz targets' init hook: with `SPOOL_FUZZ_WRITE_SEEDS=<dir>` in the environment, writes
/// the seed corpora there and exits, so the instrumented binary itself generates its seeds
/// (`.ci/fuzz-smoke` uses this instead of building `gen_seeds` separately).
pub fn seeds_from_env() {
    if let Some(dir) = std::env::var_os("SPOOL_FUZZ_WRITE_SEEDS") {
        let (a, b) = write_seeds(Path::new(&dir));
        eprintln!(
            "wrote {a} frame_decoder and {b} recovery_scanner seeds under {}",
            Path::new(&dir).display()
        );
        std::process::exit(0);
    }
}
