//! Corruption at rest, on the real file system (storage research §7 items 11-15).
//!
//! A store is built once with a known workload (several queues, priorities, acks, nacks, leases
//! left open, dead letters, pops, deletes, a purge, a topic) and small segments, so the log has
//! many segment files. Each test copies those files into a fresh directory, damages them (bit
//! flips, zeroed regions, truncation, missing, foreign and duplicated segments, a huge frame
//! length, checksummed frames with lying contents, random bytes) and opens the store again.
//!
//! The oracle is the log itself: the pristine segments are parsed with the engine's public
//! frame and entry decoders, and a small model replays every frame except those the damage
//! destroyed. So, beyond "it did not panic", the tests check that:
//! - under `RecoveryPolicy::Refuse`, damage is `Error::Corrupt` naming the segment, offset and
//!   exact LSN range actually lost, and no file changed;
//! - under `RecoveryPolicy::Skip` the store holds exactly what the model keeps: nothing
//!   outside the damage is lost (replay resumes at the next valid frame or segment), nothing
//!   is invented, queues and topics the damage did not touch are identical to the undamaged
//!   store (a topic is read as a subscriber reads it: one cursor from its first sequence
//!   number); after Skip, new writes never reuse a lost LSN and the damage stays reported;
//! - a bad frame in the last segment with no later valid frame proving it durable (a
//!   `synced_lsn` at or above its LSN; a clean close appends an empty marker frame that proves
//!   the whole log) is a torn tail: cut, reported with the valid frames it discarded, and
//!   everything before it intact. A gap in segment ids, a missing first segment, and a bad
//!   frame or header in a sealed segment are damage.
//!
//! Every open runs under `catch_unwind`: a panic is a failure whatever the test expects.

use std::collections::btree_map::Entry as MapEntry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::RangeInclusive;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use spool_engine::entry::{decode_entries, Entry};
use spool_engine::frame::{
    check_frame, parse_segment_file_name, segment_file_name, FrameBuf, FrameCheck, SegmentHeader,
    FORMAT_LEN, FRAME_OVERHEAD, SEGMENT_HEADER_LEN,
};
use spool_engine::RemoveReason;
use spool_engine::{
    DamagedRange, Durability, Error, ManualClock, Message, Options, Push, QueueConfig,
    RecoveryPolicy, Store, TopicConfig,
};

/// Small segments, so the workload spreads over many files.
const SEGMENT_BYTES: u64 = 8192;
/// The (fixed) clock of every store here: nothing expires, no lease runs out.
const T0: u64 = 1_700_000_000_000;
/// The payload of the workload's very last push: the last frame of the log.
const LAST_PAYLOAD: &str = "orders: the last word";
/// Size of the "4 KiB region" of the zero-fill tests.
const ZERO_REGION: usize = 4096;

// --- the workload and its files ---------------------------------------------------------------

/// Checkpoints are off: these tests are about what a replay of the log finds (what recovery
/// falls back to when no checkpoint is usable). Damage in what a checkpoint covers is found
/// when a record is read, and by `spool inspect verify` (see `checkpoint.rs` tests).
fn options(recovery: RecoveryPolicy) -> Options {
    Options {
        recovery,
        segment_bytes: SEGMENT_BYTES,
        clock: Arc::new(ManualClock::new(T0)),
        checkpoint_bytes: 0,
        ..Options::default()
    }
}

fn payload(tag: &str, i: u32) -> String {
    // Distinct and of varied length (frames from ~70 to ~250 bytes).
    format!("{tag}:{i}:{}", "x".repeat((i as usize * 37) % 150))
}

/// The workload. Deterministic (fixed clock, sequential calls): two stores built with it have
/// byte-identical frames.
fn workload(s: &Store) {
    const QUEUES: [&str; 3] = ["orders", "events", "jobs"];
    s.create_queue("orders", QueueConfig::default()).unwrap();
    s.create_queue(
        "events",
        QueueConfig {
            max_receives: 3,
            ..QueueConfig::default()
        },
    )
    .unwrap();
    s.create_queue("jobs", QueueConfig::default()).unwrap();
    s.create_topic("news", TopicConfig::default()).unwrap();
    let mut last_job = 0;
    for i in 0..300u32 {
        let queue = QUEUES[i as usize % 3];
        let mut push = Push::new(payload(queue, i)).priority((i % 4) as u8);
        if i % 5 == 0 {
            push = push
                .subject(format!("sub/{i}"))
                .header("k", format!("v{i}"));
        }
        let id = s.push(queue, push).unwrap();
        if queue == "jobs" {
            last_job = id;
        }
        if i % 10 == 9 {
            let batch = (0..4).map(|k| Push::new(payload("jobs-batch", i * 10 + k)));
            s.push_batch("jobs", batch.collect()).unwrap();
        }
        if i % 7 == 6 {
            s.publish("news", payload("news", i)).unwrap();
        }
        if i % 12 == 11 {
            // Ack one, nack one to a higher priority, keep one leased (open at close).
            let m = s.lease("orders", 3, None).unwrap();
            if let [a, b, ..] = &m[..] {
                s.ack("orders", a.receipt.unwrap()).unwrap();
                s.nack("orders", b.receipt.unwrap(), Duration::ZERO, Some(9))
                    .unwrap();
            }
        }
        if i % 15 == 14 {
            if let Some(m) = s.lease("events", 1, None).unwrap().first() {
                s.dead("events", m.receipt.unwrap()).unwrap();
            }
        }
        if i % 20 == 19 {
            s.pop("jobs", 2).unwrap();
        }
        if i % 25 == 24 {
            match s.delete("jobs", last_job) {
                Ok(()) | Err(Error::NotFound { .. }) => {}
                Err(e) => panic!("workload delete: {e}"),
            }
        }
        if i % 40 == 39 {
            // Several entries in one frame.
            let receipts: Vec<_> = s
                .lease("jobs", 4, None)
                .unwrap()
                .iter()
                .map(|m| m.receipt.unwrap())
                .collect();
            s.ack_batch("jobs", &receipts).unwrap();
        }
    }
    let scratch = (0..6).map(|k| Push::new(payload("scratch", k)));
    s.push_batch("scratch", scratch.collect()).unwrap();
    s.purge("scratch").unwrap();
    s.push("scratch", Push::new("scratch: after the purge"))
        .unwrap();
    s.lease("jobs", 2, None).unwrap();
    s.push("orders", Push::new(LAST_PAYLOAD)).unwrap();
}

/// Builds a store with the workload and returns its files (`FORMAT` and `log/*`).
fn build_store_files() -> BTreeMap<String, Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(
        dir.path(),
        Options {
            // Fast to build; close syncs everything.
            durability: Durability::None,
            ..options(RecoveryPolicy::Refuse)
        },
    )
    .unwrap();
    workload(&s);
    s.close().unwrap();
    read_store_files(dir.path())
}

/// `FORMAT` and every file of `log/`, by path relative to the store directory. `LOCK` (whose
/// content is the owner's business) is left out.
fn read_store_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    if let Ok(b) = std::fs::read(dir.join("FORMAT")) {
        files.insert("FORMAT".to_string(), b);
    }
    if let Ok(entries) = std::fs::read_dir(dir.join("log")) {
        for e in entries {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            files.insert(format!("log/{name}"), std::fs::read(e.path()).unwrap());
        }
    }
    files
}

fn seg_file(id: u64) -> String {
    format!("log/{}", segment_file_name(id))
}

// --- the pristine log, parsed -----------------------------------------------------------------

/// One frame of the pristine log.
#[derive(Debug, Clone)]
struct Frame {
    seg: u64,
    offset: usize,
    len: usize,
    lsn: u64,
    /// Every frame up to this LSN was durable when this frame was written.
    synced_lsn: u64,
    entries: Vec<Entry>,
}

impl Frame {
    fn end(&self) -> usize {
        self.offset + self.len
    }
    /// Offset in the frame of a byte in the middle of its payload (its last entry must be a
    /// push: the payload is the last field of an enqueue entry).
    fn payload_byte(&self) -> usize {
        match self.entries.last() {
            Some(Entry::Enqueue(e)) if !e.payload.is_empty() => {
                self.len - e.payload.len() + e.payload.len() / 2
            }
            other => panic!("frame {} does not end with a push: {other:?}", self.lsn),
        }
    }
}

/// What the tests compare: per queue, id -> payload; per topic, (seq, payload) in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Contents {
    queues: BTreeMap<String, BTreeMap<u64, Bytes>>,
    topics: BTreeMap<String, Vec<(u64, Bytes)>>,
}

/// A store as its public API shows it.
#[derive(Debug, Clone, PartialEq)]
struct Snapshot {
    queues: BTreeMap<String, Vec<Message>>,
    topics: BTreeMap<String, Vec<(u64, Bytes)>>,
}

impl Snapshot {
    fn of(s: &Store) -> Self {
        let queues = s
            .queues()
            .into_iter()
            .map(|q| {
                let msgs = s.messages(&q).unwrap();
                (q, msgs)
            })
            .collect();
        let topics = s
            .topics()
            .into_iter()
            .map(|t| {
                let v = retained(s, &t);
                (t, v)
            })
            .collect();
        Self { queues, topics }
    }
    fn contents(&self) -> Contents {
        Contents {
            queues: self
                .queues
                .iter()
                .map(|(q, msgs)| {
                    let m = msgs.iter().map(|m| (m.id, m.payload.clone())).collect();
                    (q.clone(), m)
                })
                .collect(),
            topics: self.topics.clone(),
        }
    }
}

/// Every message a topic retains, in order, as a subscriber reads it: one cursor from sequence
/// number 1 to the end (after `Skip` dropped publishes, the sequence numbers have gaps).
fn retained(s: &Store, topic: &str) -> Vec<(u64, Bytes)> {
    let mut c = s.cursor_at(topic, 1).unwrap();
    let mut v = Vec::new();
    while let Some(m) = s.topic_next(&mut c).unwrap() {
        v.push((m.seq, m.payload));
    }
    v
}

/// What the model derives from a set of frames.
struct Replay {
    contents: Contents,
    /// Every (queue, id, payload) a message ever had.
    ever: BTreeSet<(String, u64, Bytes)>,
    queue_names: HashMap<u32, String>,
    topic_names: HashMap<u32, String>,
}

/// Replays `frames` in order, with the engine's rules for entries that refer to things
/// that do not exist (ignored).
fn replay<'a>(frames: impl IntoIterator<Item = &'a Frame>) -> Replay {
    type Queue = (String, BTreeMap<u64, Bytes>);
    /// Name, next sequence number, retained messages.
    type Topic = (String, u64, Vec<(u64, Bytes)>);
    let mut queues: BTreeMap<u32, Queue> = BTreeMap::new();
    let mut topics: BTreeMap<u32, Topic> = BTreeMap::new();
    let mut ever = BTreeSet::new();
    let mut queue_names = HashMap::new();
    let mut topic_names = HashMap::new();
    for f in frames {
        for e in &f.entries {
            match e {
                Entry::QueueDef { queue, name, .. } => {
                    queue_names.insert(*queue, name.clone());
                    queues
                        .entry(*queue)
                        .or_insert_with(|| (name.clone(), BTreeMap::new()));
                }
                Entry::QueueDrop { queue } => {
                    queues.remove(queue);
                }
                Entry::Enqueue(e) => {
                    if let Some((name, msgs)) = queues.get_mut(&e.queue) {
                        if let MapEntry::Vacant(v) = msgs.entry(e.id) {
                            v.insert(e.payload.clone());
                            ever.insert((name.clone(), e.id, e.payload.clone()));
                        }
                    }
                }
                Entry::Remove { queue, id, .. } => {
                    if let Some((_, msgs)) = queues.get_mut(queue) {
                        msgs.remove(id);
                    }
                }
                Entry::Purge { queue, below_id } => {
                    if let Some((_, msgs)) = queues.get_mut(queue) {
                        msgs.retain(|id, _| id >= below_id);
                    }
                }
                Entry::TopicDef { topic, name, .. } => {
                    topic_names.insert(*topic, name.clone());
                    topics
                        .entry(*topic)
                        .or_insert_with(|| (name.clone(), 1, Vec::new()));
                }
                Entry::TopicDrop { topic } => {
                    topics.remove(topic);
                }
                Entry::Publish {
                    topic,
                    seq,
                    payload,
                    ..
                } => {
                    if let Some((_, next, msgs)) = topics.get_mut(topic) {
                        if seq >= next {
                            *next = seq + 1;
                            msgs.push((*seq, payload.clone()));
                        }
                    }
                }
                Entry::TopicTrim { topic, below_seq } => {
                    if let Some((_, _, msgs)) = topics.get_mut(topic) {
                        msgs.retain(|(seq, _)| seq >= below_seq);
                    }
                }
                // Leases, nacks and cursors change no membership.
                Entry::Lease { .. }
                | Entry::Nack { .. }
                | Entry::Cursor { .. }
                | Entry::Catalog { .. } => {}
            }
        }
    }
    Replay {
        contents: Contents {
            queues: queues.into_values().collect(),
            topics: topics.into_values().map(|(n, _, m)| (n, m)).collect(),
        },
        ever,
        queue_names,
        topic_names,
    }
}

/// The undamaged store: its files, its log parsed, and what it holds.
struct Pristine {
    files: BTreeMap<String, Vec<u8>>,
    /// Segment ids, in order.
    segs: Vec<u64>,
    frames: Vec<Frame>,
    snapshot: Snapshot,
    full: Replay,
    /// Leases the clean open released (left open by the workload).
    leases_released: u64,
}

impl Pristine {
    fn seg_frames(&self, seg: u64) -> Vec<&Frame> {
        self.frames.iter().filter(|f| f.seg == seg).collect()
    }
    fn seg_lsns(&self, seg: u64) -> RangeInclusive<u64> {
        let f = self.seg_frames(seg);
        f[0].lsn..=f[f.len() - 1].lsn
    }
    fn last_lsn(&self) -> u64 {
        self.frames[self.frames.len() - 1].lsn
    }
    /// A segment in the middle of the log.
    fn middle_seg(&self) -> u64 {
        self.segs[self.segs.len() / 2]
    }
    fn last_seg(&self) -> u64 {
        self.segs[self.segs.len() - 1]
    }
    /// A single-push frame in the middle of a middle segment (neither its first nor its last).
    fn middle_push(&self) -> &Frame {
        let frames = self.seg_frames(self.middle_seg());
        let single_push = |f: &&Frame| matches!(&f.entries[..], [Entry::Enqueue(_)]);
        let mid = frames.len() / 2;
        frames[1..frames.len() - 1]
            .iter()
            .copied()
            .filter(single_push)
            .min_by_key(|f| f.offset.abs_diff(frames[mid].offset))
            .expect("a push in the middle segment")
    }
    fn last_frame(&self) -> &Frame {
        &self.frames[self.frames.len() - 1]
    }
    /// The frames a damage at `seg`, bytes `from..to`, destroys.
    fn frames_in(&self, seg: u64, from: usize, to: usize) -> Vec<u64> {
        self.frames
            .iter()
            .filter(|f| f.seg == seg && f.offset < to && f.end() > from)
            .map(|f| f.lsn)
            .collect()
    }
}

fn parse_log(files: &BTreeMap<String, Vec<u8>>) -> (Vec<u64>, Vec<Frame>) {
    let mut segs = Vec::new();
    let mut frames: Vec<Frame> = Vec::new();
    for (name, data) in files {
        let Some(seg) = name.strip_prefix("log/").and_then(parse_segment_file_name) else {
            continue;
        };
        let header = SegmentHeader::decode(data).expect("pristine segment header");
        assert_eq!(header.seg_id, seg);
        segs.push(seg);
        let mut pos = SEGMENT_HEADER_LEN;
        while pos < data.len() {
            let FrameCheck::Valid {
                lsn,
                synced_lsn,
                n_entries,
                entries,
                len,
            } = check_frame(&data[pos..])
            else {
                panic!("pristine segment {seg} unreadable at offset {pos}");
            };
            let mut v = Vec::new();
            let body = &data[pos + entries.start..pos + entries.end];
            decode_entries(body, 0, |e| v.push(e)).expect("pristine entries");
            assert_eq!(v.len(), n_entries as usize);
            let expected = frames.last().map_or(1, |f| f.lsn + 1);
            assert_eq!(lsn, expected, "pristine LSNs run 1, 2, 3...");
            if pos == SEGMENT_HEADER_LEN {
                assert_eq!(header.base_lsn, lsn);
            }
            frames.push(Frame {
                seg,
                offset: pos,
                len,
                lsn,
                synced_lsn,
                entries: v,
            });
            pos += len;
        }
    }
    assert_eq!(
        segs,
        (1..=segs.len() as u64).collect::<Vec<_>>(),
        "segment ids run 1, 2, 3..."
    );
    (segs, frames)
}

impl Pristine {
    /// Parses the files of an undamaged store, opens them and checks that the model agrees
    /// with the engine.
    fn of(files: BTreeMap<String, Vec<u8>>) -> Self {
        let (segs, frames) = parse_log(&files);
        let case = Case::with_files(&files);
        let s = case
            .open(RecoveryPolicy::Refuse, "the pristine store")
            .unwrap();
        let r = s.recovery_report().clone();
        assert!(r.torn_tail.is_none(), "{r:?}");
        assert!(r.damaged.is_empty(), "{r:?}");
        let leases_released = r.leases_released;
        let snapshot = Snapshot::of(&s);
        s.close().unwrap();
        assert!(
            case.files() == files,
            "a clean open and close changed no file"
        );
        let full = replay(&frames);
        assert_eq!(
            full.contents,
            snapshot.contents(),
            "the test's model agrees with the engine on the undamaged log"
        );
        let last = &frames[frames.len() - 1];
        assert!(
            last.entries.is_empty() && last.synced_lsn == last.lsn - 1,
            "a clean close ends the log with an empty marker frame that proves it durable"
        );
        Pristine {
            files,
            segs,
            frames,
            snapshot,
            full,
            leases_released,
        }
    }
}

/// The store the tests damage: the workload, written with `Durability::None`.
fn pristine() -> &'static Pristine {
    static PRISTINE: OnceLock<Pristine> = OnceLock::new();
    PRISTINE.get_or_init(|| {
        let p = Pristine::of(build_store_files());
        assert!(
            p.segs.len() >= 6,
            "the workload spans {} segments",
            p.segs.len()
        );
        assert!(p.leases_released > 0, "the workload leaves leases open");
        assert!(
            p.snapshot.queues.len() >= 5,
            "{:?}",
            p.snapshot.queues.keys()
        );
        assert!(p.snapshot.queues["events.dlq"].len() > 3);
        assert!(!p.snapshot.topics["news"].is_empty());
        p
    })
}

/// The files of a second store built with the same workload: byte-identical frames, another
/// store id.
fn foreign_files() -> &'static BTreeMap<String, Vec<u8>> {
    static FOREIGN: OnceLock<BTreeMap<String, Vec<u8>>> = OnceLock::new();
    FOREIGN.get_or_init(build_store_files)
}

// --- a damaged copy ---------------------------------------------------------------------------

/// A copy of a store's files in a fresh directory.
struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new() -> Self {
        Self::with_files(&pristine().files)
    }
    fn with_files(files: &BTreeMap<String, Vec<u8>>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("log")).unwrap();
        for (name, data) in files {
            std::fs::write(dir.path().join(name), data).unwrap();
        }
        Self { dir }
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    fn read(&self, rel: &str) -> Vec<u8> {
        std::fs::read(self.path(rel)).unwrap()
    }
    fn write(&self, rel: &str, data: &[u8]) {
        std::fs::write(self.path(rel), data).unwrap();
    }
    fn remove(&self, rel: &str) {
        std::fs::remove_file(self.path(rel)).unwrap();
    }
    /// XORs one byte of a file.
    fn xor(&self, rel: &str, offset: usize, mask: u8) {
        assert_ne!(mask, 0);
        let mut b = self.read(rel);
        b[offset] ^= mask;
        self.write(rel, &b);
    }
    fn put(&self, rel: &str, offset: usize, bytes: &[u8]) {
        let mut b = self.read(rel);
        b[offset..offset + bytes.len()].copy_from_slice(bytes);
        self.write(rel, &b);
    }
    fn truncate(&self, rel: &str, len: usize) {
        let b = self.read(rel);
        self.write(rel, &b[..len]);
    }
    fn files(&self) -> BTreeMap<String, Vec<u8>> {
        read_store_files(self.dir.path())
    }
    /// Opens the store; a panic fails the test, whatever was expected.
    fn open(&self, policy: RecoveryPolicy, what: &str) -> Result<Store, Error> {
        let dir = self.dir.path();
        catch_unwind(AssertUnwindSafe(|| Store::open(dir, options(policy)))).unwrap_or_else(|p| {
            panic!(
                "{what}: Store::open ({policy:?}) panicked: {}",
                panic_text(&p)
            )
        })
    }
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(ToString::to_string))
        .unwrap_or_else(|| "a non-string panic".into())
}

// --- checks -----------------------------------------------------------------------------------

/// What a damage in the middle of the log must be reported as, and what it loses.
#[derive(Debug, Clone)]
struct Want {
    /// `DamagedRange::segment` of the first range.
    segment: u64,
    /// `DamagedRange::offset` of the first range.
    offset: u64,
    /// `DamagedRange::lsn_from..=lsn_to` of the first range.
    lsns: RangeInclusive<u64>,
    /// LSNs of the frames the damage destroyed: what Skip may not keep, and all it may lose.
    lost: Vec<u64>,
}

impl Want {
    /// Damage to the frames `lost` (consecutive LSNs, in segment `segment` from `offset`).
    fn frames(segment: u64, offset: usize, lost: Vec<u64>) -> Self {
        assert!(!lost.is_empty());
        Self {
            segment,
            offset: offset as u64,
            lsns: lost[0]..=lost[lost.len() - 1],
            lost,
        }
    }
    /// A stray segment `seg` after the last, holding only stale frames (LSNs the log already
    /// has): nothing is lost, the range is reported from the next LSN.
    fn stray(seg: u64) -> Self {
        let next = pristine().last_lsn() + 1;
        Self {
            segment: seg,
            offset: 0,
            lsns: next..=next,
            lost: Vec::new(),
        }
    }
    /// Damage that loses the whole segment `seg`.
    fn segment(seg: u64) -> Self {
        let lsns = pristine().seg_lsns(seg);
        Self {
            segment: seg,
            offset: 0,
            lsns: lsns.clone(),
            lost: lsns.collect(),
        }
    }
}

fn check_range(r: &DamagedRange, want: &Want, what: &str) {
    assert_eq!(r.segment, want.segment, "{what}: wrong segment in {r}");
    assert_eq!(r.offset, want.offset, "{what}: wrong offset in {r}");
    assert_eq!(
        r.lsn_from..=r.lsn_to,
        want.lsns,
        "{what}: wrong LSNs in {r}"
    );
}

/// The store holds exactly what replaying every frame but `lost` gives: nothing invented,
/// nothing lost beyond the damage, untouched queues and topics identical to the pristine ones.
fn check_contents(s: &Store, lost: &[u64], what: &str) {
    check_contents_in(pristine(), s, lost, what);
}

/// [`check_contents`] for a copy of the store `p`.
fn check_contents_in(p: &Pristine, s: &Store, lost: &[u64], what: &str) {
    let snap = Snapshot::of(s);
    for (q, msgs) in &snap.queues {
        for m in msgs {
            assert!(
                p.full.ever.contains(&(q.clone(), m.id, m.payload.clone())),
                "{what}: message {} in {q:?} ({:?}) was never pushed: invented by recovery",
                m.id,
                m.payload
            );
        }
    }
    let lost: BTreeSet<u64> = lost.iter().copied().collect();
    let want = replay(p.frames.iter().filter(|f| !lost.contains(&f.lsn))).contents;
    let got = snap.contents();
    assert!(
        got == want,
        "{what}: the store does not hold what the log minus LSNs {lost:?} holds:\n{}",
        diff(&got, &want)
    );
    // Queues and topics no lost entry refers to are untouched, to the last field.
    let (queues, topics) = touched(p, &lost);
    for (q, msgs) in &p.snapshot.queues {
        if queues.contains(q) {
            continue;
        }
        let got = snap.queues.get(q).map_or(&[][..], Vec::as_slice);
        let changed: Vec<String> = msgs
            .iter()
            .filter(|m| !got.contains(m))
            .map(|m| match got.iter().find(|g| g.id == m.id) {
                Some(g) => format!("{g:?}\n    was {m:?}"),
                None => format!("{} missing", m.id),
            })
            .collect();
        assert!(
            changed.is_empty() && got.len() == msgs.len(),
            "{what}: queue {q:?}, which no lost entry touched, changed:\n  {}",
            changed.join("\n  ")
        );
    }
    for (t, msgs) in &p.snapshot.topics {
        if !topics.contains(t) {
            assert!(
                snap.topics.get(t) == Some(msgs),
                "{what}: topic {t:?} changed"
            );
        }
    }
}

/// Names of the queues and topics the entries of frames `lost` refer to.
fn touched(p: &Pristine, lost: &BTreeSet<u64>) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut q = BTreeSet::new();
    let mut t = BTreeSet::new();
    for f in p.frames.iter().filter(|f| lost.contains(&f.lsn)) {
        for e in &f.entries {
            let (qs, ts): (Vec<u32>, Vec<u32>) = match e {
                Entry::QueueDef { queue, .. }
                | Entry::QueueDrop { queue }
                | Entry::Lease { queue, .. }
                | Entry::Nack { queue, .. }
                | Entry::Remove { queue, .. }
                | Entry::Purge { queue, .. } => (vec![*queue], vec![]),
                Entry::Enqueue(e) => (vec![e.queue], vec![]),
                Entry::TopicDef { topic, .. }
                | Entry::TopicDrop { topic }
                | Entry::Publish { topic, .. }
                | Entry::Cursor { topic, .. }
                | Entry::TopicTrim { topic, .. } => (vec![], vec![*topic]),
                Entry::Catalog { .. } => (vec![], vec![]),
            };
            q.extend(
                qs.iter()
                    .filter_map(|id| p.full.queue_names.get(id).cloned()),
            );
            t.extend(
                ts.iter()
                    .filter_map(|id| p.full.topic_names.get(id).cloned()),
            );
        }
    }
    // Messages carry their history when they move (a dead letter keeps its receive count):
    // a queue that receives messages from a touched queue is touched too.
    loop {
        let before = q.len();
        for f in &p.frames {
            // A move is a REMOVE (dead-lettered or redriven) followed by the ENQUEUE of the copy.
            for pair in f.entries.windows(2) {
                if let [Entry::Remove {
                    queue: src,
                    reason: RemoveReason::DeadLettered | RemoveReason::Redriven,
                    ..
                }, Entry::Enqueue(e)] = pair
                {
                    let dst = &e.queue;
                    let src = p.full.queue_names.get(src);
                    if let (Some(src), Some(dst)) = (src, p.full.queue_names.get(dst)) {
                        if q.contains(src) {
                            q.insert(dst.clone());
                        }
                    }
                }
            }
        }
        if q.len() == before {
            break;
        }
    }
    (q, t)
}

/// A short account of how two contents differ.
fn diff(got: &Contents, want: &Contents) -> String {
    let mut out = Vec::new();
    let names: BTreeSet<&String> = got.queues.keys().chain(want.queues.keys()).collect();
    for q in names {
        let (g, w) = (got.queues.get(q), want.queues.get(q));
        match (g, w) {
            (None, Some(_)) => out.push(format!("queue {q:?} missing")),
            (Some(_), None) => out.push(format!("queue {q:?} should not exist")),
            (Some(g), Some(w)) => {
                let missing: Vec<_> = w.keys().filter(|id| !g.contains_key(id)).collect();
                let extra: Vec<_> = g.keys().filter(|id| !w.contains_key(id)).collect();
                let changed: Vec<_> = g
                    .iter()
                    .filter(|(id, p)| w.get(id).is_some_and(|wp| wp != *p))
                    .map(|(id, _)| id)
                    .collect();
                for (label, ids) in [("missing", missing), ("extra", extra), ("changed", changed)] {
                    if !ids.is_empty() {
                        out.push(format!("queue {q:?}: {} {label}: {ids:?}", ids.len()));
                    }
                }
            }
            (None, None) => {}
        }
    }
    if got.topics != want.topics {
        out.push(format!(
            "topics differ: got {:?}, want {:?}",
            got.topics
                .iter()
                .map(|(t, m)| (t, m.len()))
                .collect::<Vec<_>>(),
            want.topics
                .iter()
                .map(|(t, m)| (t, m.len()))
                .collect::<Vec<_>>()
        ));
    }
    out.join("\n")
}

/// Damage in the middle of the log: `Refuse` fails with `Corrupt` naming it and changes no
/// file; `Skip` opens, reports it, and keeps everything but the lost frames. Returns the store
/// opened with `Skip`.
fn check_middle_damage(case: &Case, what: &str, want: &Want) -> Store {
    check_middle_damage_in(pristine(), case, what, want)
}

/// [`check_middle_damage`] for a copy of the store `p`.
fn check_middle_damage_in(p: &Pristine, case: &Case, what: &str, want: &Want) -> Store {
    let before = case.files();
    match case.open(RecoveryPolicy::Refuse, what) {
        Err(Error::Corrupt { ranges }) => {
            assert!(!ranges.is_empty(), "{what}: Corrupt without a range");
            check_range(&ranges[0], want, what);
        }
        Err(e) => panic!("{what}: expected Error::Corrupt under Refuse, got: {e}"),
        Ok(s) => panic!(
            "{what}: Refuse opened a log damaged in the middle; report: {:?}",
            s.recovery_report()
        ),
    }
    assert_files_unchanged(case, &before, what);
    let s = case
        .open(RecoveryPolicy::Skip, what)
        .unwrap_or_else(|e| panic!("{what}: Skip failed to open: {e}"));
    let r = s.recovery_report().clone();
    assert!(
        !r.damaged.is_empty(),
        "{what}: Skip reported no damage: {r:?}"
    );
    check_range(&r.damaged[0], want, what);
    assert!(r.torn_tail.is_none(), "{what}: {r:?}");
    check_contents_in(p, &s, &want.lost, what);
    s
}

fn assert_files_unchanged(case: &Case, before: &BTreeMap<String, Vec<u8>>, what: &str) {
    let after = case.files();
    let changed: Vec<&String> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(
        changed.is_empty(),
        "{what}: the refused open changed {changed:?}"
    );
}

/// Where a torn tail must be cut, and what it loses.
struct Torn {
    seg: u64,
    /// Offset of the first bad byte's frame: the segment is cut there.
    offset: usize,
    /// LSNs of the frames cut off.
    lost: Vec<u64>,
    /// How many of them are valid frames after the bad one.
    valid_frames_discarded: u64,
}

impl Torn {
    /// A bad frame at `seg`/`offset` with no valid frame after it.
    fn nothing_after(seg: u64, offset: usize, lost: Vec<u64>) -> Self {
        Self {
            seg,
            offset,
            lost,
            valid_frames_discarded: 0,
        }
    }
}

/// Damage with nothing after it proving it durable: under either policy the store opens,
/// reports the torn tail (where, how many bytes, how many valid frames it discarded), and
/// keeps everything but the frames `lost`; a second open finds a clean log holding the same.
fn check_torn_tail(damage: &dyn Fn(&Case), what: &str, want: &Torn) {
    check_torn_tail_in(pristine(), damage, what, want);
}

/// [`check_torn_tail`] for a copy of the store `p`.
fn check_torn_tail_in(p: &Pristine, damage: &dyn Fn(&Case), what: &str, want: &Torn) {
    for policy in [RecoveryPolicy::Refuse, RecoveryPolicy::Skip] {
        let what = format!("{what} ({policy:?})");
        let case = Case::with_files(&p.files);
        damage(&case);
        let damaged_len = case.read(&seg_file(want.seg)).len();
        let s = case
            .open(policy, &what)
            .unwrap_or_else(|e| panic!("{what}: a torn tail must not stop the open: {e}"));
        let r = s.recovery_report().clone();
        let torn = r
            .torn_tail
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: no torn tail reported: {r:?}"));
        assert_eq!(torn.segment, want.seg, "{what}: {torn:?}");
        assert_eq!(torn.offset, want.offset as u64, "{what}: {torn:?}");
        assert_eq!(
            torn.bytes_discarded,
            (damaged_len - want.offset) as u64,
            "{what}: {torn:?}"
        );
        assert_eq!(
            torn.valid_frames_discarded, want.valid_frames_discarded,
            "{what}: {torn:?}"
        );
        assert!(r.damaged.is_empty(), "{what}: {r:?}");
        assert_eq!(
            case.read(&seg_file(want.seg)).len(),
            want.offset,
            "{what}: the segment is cut at the torn frame"
        );
        check_contents_in(p, &s, &want.lost, &what);
        s.close().unwrap();
        let s = case.open(RecoveryPolicy::Refuse, &what).unwrap();
        let r = s.recovery_report();
        assert!(
            r.torn_tail.is_none(),
            "{what}: the cut is not durable: {r:?}"
        );
        assert!(r.damaged.is_empty(), "{what}: {r:?}");
        check_contents_in(p, &s, &want.lost, &format!("{what}, second open"));
        s.close().unwrap();
    }
}

// --- 1. bit flips -----------------------------------------------------------------------------

/// Byte offsets in a frame worth flipping, by name.
fn frame_spots(f: &Frame) -> Vec<(&'static str, usize)> {
    vec![
        ("frame magic", 1),
        ("frame length field", 5),
        ("frame checksum", 9),
        ("frame LSN", 12),
        ("frame synced LSN", 20),
        ("frame entry count", 28),
        ("entry kind", FRAME_OVERHEAD),
        ("entry length", FRAME_OVERHEAD + 2),
        ("payload", f.payload_byte()),
        ("frame's last byte", f.len - 1),
    ]
}

/// The spots of an empty frame (the marker a clean close appends).
fn empty_frame_spots() -> Vec<(&'static str, usize)> {
    vec![
        ("frame magic", 1),
        ("frame length field", 5),
        ("frame checksum", 9),
        ("frame LSN", 12),
        ("frame synced LSN", 20),
        ("frame entry count", 28),
        ("frame's last byte", FRAME_OVERHEAD - 1),
    ]
}

#[test]
fn a_flipped_bit_in_a_middle_frame_is_refused_and_skip_loses_only_that_frame() {
    let p = pristine();
    let f = p.middle_push();
    for (spot, at) in frame_spots(f) {
        let what = format!(
            "bit flip in the {spot} of LSN {} (segment {})",
            f.lsn, f.seg
        );
        let case = Case::new();
        case.xor(&seg_file(f.seg), f.offset + at, 0x10);
        check_middle_damage(&case, &what, &Want::frames(f.seg, f.offset, vec![f.lsn]))
            .close()
            .unwrap();
    }
}

#[test]
fn a_flipped_bit_in_the_last_frame_of_a_sealed_segment_is_damage_not_a_torn_tail() {
    let p = pristine();
    for seg in [p.segs[0], p.middle_seg()] {
        let frames = p.seg_frames(seg);
        let f = frames[frames.len() - 1];
        for (spot, at) in [("frame checksum", 9), ("frame's last byte", f.len - 1)] {
            let what = format!(
                "bit flip in the {spot} of LSN {}, last of segment {seg}",
                f.lsn
            );
            let case = Case::new();
            case.xor(&seg_file(seg), f.offset + at, 0x01);
            check_middle_damage(&case, &what, &Want::frames(seg, f.offset, vec![f.lsn]))
                .close()
                .unwrap();
        }
    }
}

#[test]
fn a_flipped_bit_in_the_close_marker_is_a_torn_tail_and_nothing_is_lost() {
    let p = pristine();
    let f = p.last_frame();
    assert!(
        f.entries.is_empty(),
        "a clean close ends the log with an empty marker frame"
    );
    for (spot, at) in empty_frame_spots() {
        let what = format!("bit flip in the {spot} of the close marker (LSN {})", f.lsn);
        check_torn_tail(
            &|c| c.xor(&seg_file(f.seg), f.offset + at, 0x10),
            &what,
            &Torn::nothing_after(f.seg, f.offset, vec![f.lsn]),
        );
    }
}

#[test]
fn a_flipped_bit_in_the_last_push_before_a_clean_close_is_damage_not_a_torn_tail() {
    let p = pristine();
    // The frame before the close marker: the log after it proves it was durable.
    let f = &p.frames[p.frames.len() - 2];
    let case = Case::new();
    case.xor(&seg_file(f.seg), f.offset + f.payload_byte(), 0x10);
    check_middle_damage(
        &case,
        "last push flipped",
        &Want::frames(f.seg, f.offset, vec![f.lsn]),
    )
    .close()
    .unwrap();
    let case = Case::new();
    case.xor(&seg_file(f.seg), f.offset + f.payload_byte(), 0x10);
    let s = case
        .open(RecoveryPolicy::Skip, "last push flipped, skipped")
        .unwrap();
    let orders = s.messages("orders").unwrap();
    assert!(orders.iter().all(|m| m.payload != LAST_PAYLOAD));
    assert_eq!(orders.len() + 1, p.snapshot.queues["orders"].len());
}

/// Byte offsets in a segment header worth flipping, by name.
const HEADER_SPOTS: [(&str, usize); 8] = [
    ("magic", 0),
    ("version", 8),
    ("store id", 17),
    ("segment id", 24),
    ("base LSN", 33),
    ("creation time", 41),
    ("reserved bytes", 50),
    ("checksum", 61),
];

#[test]
fn a_flipped_bit_in_a_segment_header_is_refused_and_skip_loses_only_that_segment() {
    let p = pristine();
    // The first segment too: its range starts at LSN 1, though nothing was read before it.
    for seg in [p.segs[0], p.segs[1], p.middle_seg()] {
        for (spot, at) in HEADER_SPOTS {
            let what = format!("bit flip in the {spot} of segment {seg}'s header");
            let case = Case::new();
            case.xor(&seg_file(seg), at, 0x04);
            check_middle_damage(&case, &what, &Want::segment(seg))
                .close()
                .unwrap();
        }
    }
}

#[test]
fn a_flipped_bit_in_the_last_segments_header_is_refused_since_valid_frames_follow() {
    let seg = pristine().last_seg();
    for (spot, at) in HEADER_SPOTS {
        let what = format!("bit flip in the {spot} of the last segment's ({seg}) header");
        let case = Case::new();
        case.xor(&seg_file(seg), at, 0x04);
        // No later segment bounds the range: it ends at the segment's last valid frame.
        check_middle_damage(&case, &what, &Want::segment(seg))
            .close()
            .unwrap();
    }
}

#[test]
fn a_damaged_or_missing_format_file_is_refused_under_both_policies_and_left_alone() {
    type Damage = Box<dyn Fn(&Case)>;
    let format = pristine().files["FORMAT"].clone();
    assert_eq!(format.len(), FORMAT_LEN);
    let mut cases: Vec<(String, Damage)> = Vec::new();
    for at in 0..FORMAT_LEN {
        cases.push((
            format!("bit flip in FORMAT byte {at}"),
            Box::new(move |c: &Case| c.xor("FORMAT", at, 0x01)),
        ));
    }
    cases.push((
        "FORMAT cut short".into(),
        Box::new(|c: &Case| c.truncate("FORMAT", FORMAT_LEN - 1)),
    ));
    let longer = [format.clone(), vec![0]].concat();
    cases.push((
        "FORMAT with a byte appended".into(),
        Box::new(move |c: &Case| c.write("FORMAT", &longer)),
    ));
    cases.push((
        "FORMAT missing".into(),
        Box::new(|c: &Case| c.remove("FORMAT")),
    ));
    for (what, damage) in &cases {
        let case = Case::new();
        damage(&case);
        let before = case.files();
        for policy in [RecoveryPolicy::Refuse, RecoveryPolicy::Skip] {
            match case.open(policy, what) {
                Err(Error::Format { .. }) => {}
                Err(e) => panic!("{what} ({policy:?}): expected Error::Format, got: {e}"),
                Ok(_) => panic!("{what} ({policy:?}): opened a store with a bad FORMAT"),
            }
            assert_files_unchanged(&case, &before, &format!("{what} ({policy:?})"));
        }
    }
}

// --- 2. zeroed regions ------------------------------------------------------------------------

#[test]
fn a_zeroed_4k_region_in_a_middle_segment_is_refused_and_skip_loses_only_the_frames_it_covers() {
    let p = pristine();
    let seg = p.middle_seg();
    let len = p.files[&seg_file(seg)].len();
    let from = 2048;
    let to = from + ZERO_REGION;
    assert!(to + 200 < len, "segment {seg} has {len} bytes");
    let lost = p.frames_in(seg, from, to);
    let first = p.frames.iter().find(|f| f.lsn == lost[0]).unwrap();
    let case = Case::new();
    case.put(&seg_file(seg), from, &[0; ZERO_REGION]);
    let what = format!("4 KiB of zeroes at segment {seg} offset {from}");
    check_middle_damage(&case, &what, &Want::frames(seg, first.offset, lost))
        .close()
        .unwrap();
}

#[test]
fn a_zeroed_4k_region_at_the_tail_is_a_torn_tail() {
    let p = pristine();
    let seg = p.last_seg();
    let len = p.files[&seg_file(seg)].len();
    let from = len.saturating_sub(ZERO_REGION).max(SEGMENT_HEADER_LEN);
    let lost = p.frames_in(seg, from, len);
    let first = p.frames.iter().find(|f| f.lsn == lost[0]).unwrap();
    let zeroes = vec![0; len - from];
    check_torn_tail(
        &|c| c.put(&seg_file(seg), from, &zeroes),
        &format!("the last {} bytes of segment {seg} zeroed", len - from),
        &Torn::nothing_after(seg, first.offset, lost),
    );
}

#[test]
fn zeroes_after_the_last_frame_are_prepared_space_kept_until_a_clean_close() {
    // What a crash leaves of a prepared segment (`SegmentPrep`): frames, then zeros.
    let p = pristine();
    let seg = p.last_seg();
    let data = &p.files[&seg_file(seg)];
    let longer = [data.clone(), vec![0; ZERO_REGION]].concat();
    for policy in [RecoveryPolicy::Refuse, RecoveryPolicy::Skip] {
        let what = format!("4 KiB of zeroes after the last frame ({policy:?})");
        let case = Case::with_files(&p.files);
        case.write(&seg_file(seg), &longer);
        let s = case
            .open(policy, &what)
            .unwrap_or_else(|e| panic!("{what}: must open: {e}"));
        let r = s.recovery_report().clone();
        assert!(r.torn_tail.is_none(), "{what}: not a tear: {r:?}");
        assert!(r.damaged.is_empty(), "{what}: {r:?}");
        assert_eq!(
            case.read(&seg_file(seg)).len(),
            longer.len(),
            "{what}: kept, appends overwrite them"
        );
        check_contents_in(p, &s, &[], &what);
        s.close().unwrap();
        assert_eq!(
            case.read(&seg_file(seg)).len(),
            data.len(),
            "{what}: a clean close cuts them"
        );
        let s = case.open(RecoveryPolicy::Refuse, &what).unwrap();
        check_contents_in(p, &s, &[], &what);
    }
}

#[test]
fn zeroes_after_a_torn_frame_are_still_a_torn_tail() {
    let p = pristine();
    let seg = p.last_seg();
    let data = &p.files[&seg_file(seg)];
    let mut longer = [data.clone(), vec![0; ZERO_REGION]].concat();
    // A frame header's first bytes, then nothing: a write cut short inside prepared space.
    longer[data.len()..data.len() + 4].copy_from_slice(&0x5246_5053u32.to_le_bytes());
    check_torn_tail(
        &|c| c.write(&seg_file(seg), &longer),
        "a torn frame start, then zeroes",
        &Torn::nothing_after(seg, data.len(), vec![]),
    );
}

// --- 3. truncated, missing, extra, foreign and duplicated segments ----------------------------

#[test]
fn a_middle_segment_cut_inside_a_frame_is_refused_and_skip_keeps_the_other_segments() {
    let p = pristine();
    let f = p.middle_push();
    let case = Case::new();
    case.truncate(&seg_file(f.seg), f.offset + f.len / 2);
    let lost: Vec<u64> = (f.lsn..=*p.seg_lsns(f.seg).end()).collect();
    let what = format!("segment {} cut inside LSN {}", f.seg, f.lsn);
    check_middle_damage(&case, &what, &Want::frames(f.seg, f.offset, lost))
        .close()
        .unwrap();
}

#[test]
fn a_middle_segment_cut_inside_its_header_is_refused_and_skip_loses_only_that_segment() {
    let seg = pristine().middle_seg();
    let case = Case::new();
    case.truncate(&seg_file(seg), SEGMENT_HEADER_LEN / 2);
    let what = format!("segment {seg} cut inside its header");
    check_middle_damage(&case, &what, &Want::segment(seg))
        .close()
        .unwrap();
}

#[test]
fn a_middle_segment_cut_at_a_frame_boundary_is_refused_and_skip_loses_only_the_cut_frames() {
    // No bad byte, only missing frames: the next segment's base LSN no longer follows. The
    // range is named at the end of the cut segment, and Skip resumes at the next segment.
    let p = pristine();
    let f = p.middle_push();
    let case = Case::new();
    case.truncate(&seg_file(f.seg), f.offset);
    let lost: Vec<u64> = (f.lsn..=*p.seg_lsns(f.seg).end()).collect();
    let what = format!("segment {} cut just before LSN {}", f.seg, f.lsn);
    check_middle_damage(&case, &what, &Want::frames(f.seg, f.offset, lost))
        .close()
        .unwrap();
}

#[test]
fn the_last_segment_cut_inside_a_frame_is_a_torn_tail() {
    let p = pristine();
    let f = p.last_frame();
    check_torn_tail(
        &|c| c.truncate(&seg_file(f.seg), f.offset + f.len / 2),
        "the last segment cut inside its last frame",
        &Torn::nothing_after(f.seg, f.offset, vec![f.lsn]),
    );
    // Cut inside an earlier frame of the last segment: that frame and the rest are lost.
    let frames = p.seg_frames(f.seg);
    if frames.len() >= 3 {
        let g = frames[frames.len() - 3];
        let lost: Vec<u64> = (g.lsn..=f.lsn).collect();
        check_torn_tail(
            &|c| c.truncate(&seg_file(g.seg), g.offset + 7),
            "the last segment cut inside its third last frame",
            &Torn::nothing_after(g.seg, g.offset, lost),
        );
    }
}

#[test]
fn a_missing_middle_segment_is_refused_and_skip_loses_only_its_frames() {
    let seg = pristine().middle_seg();
    let case = Case::new();
    case.remove(&seg_file(seg));
    check_middle_damage(
        &case,
        &format!("segment {seg} missing"),
        &Want::segment(seg),
    )
    .close()
    .unwrap();
}

#[test]
fn a_missing_first_segment_is_refused() {
    let case = Case::new();
    case.remove(&seg_file(1));
    check_middle_damage(&case, "segment 1 missing", &Want::segment(1))
        .close()
        .unwrap();
}

#[test]
fn files_in_log_that_are_not_segments_are_ignored() {
    let p = pristine();
    let case = Case::new();
    let garbage: Vec<u8> = (0..3000u32).map(|i| (i * 7 + 3) as u8).collect();
    let extra = [
        ("log/garbage.bin", garbage.clone()),
        ("log/README", b"not a segment".to_vec()),
        (
            "log/00000000000000000002.seg.bak",
            p.files[&seg_file(2)].clone(),
        ),
        ("log/2.seg", garbage),
        ("log/00000000000000000002.seg~", Vec::new()),
    ];
    for (name, data) in &extra {
        case.write(name, data);
    }
    let s = case
        .open(RecoveryPolicy::Refuse, "garbage files in log/")
        .unwrap();
    let r = s.recovery_report().clone();
    assert!(r.damaged.is_empty(), "{r:?}");
    assert!(r.torn_tail.is_none(), "{r:?}");
    check_contents(&s, &[], "garbage files in log/");
    s.close().unwrap();
    for (name, data) in &extra {
        assert_eq!(&case.read(name), data, "{name} was changed");
    }
}

#[test]
fn a_garbage_file_named_as_the_next_segment_is_dropped_as_a_torn_creation() {
    let p = pristine();
    let next = p.last_seg() + 1;
    for (what, data) in [
        (
            "garbage",
            (0..3000u32).map(|i| (i * 13 + 1) as u8).collect(),
        ),
        (
            "a half-written header",
            p.files[&seg_file(1)][..20].to_vec(),
        ),
        ("an empty file", Vec::new()),
    ] {
        let what = format!("{what} as segment {next}");
        let case = Case::new();
        case.write(&seg_file(next), &data);
        let s = case.open(RecoveryPolicy::Refuse, &what).unwrap();
        let r = s.recovery_report().clone();
        assert!(r.damaged.is_empty(), "{what}: {r:?}");
        assert_eq!(r.removed_segments, vec![next], "{what}: {r:?}");
        check_contents(&s, &[], &what);
        // New writes go on after the last real frame.
        let id = s.push("orders", Push::new("after the garbage")).unwrap();
        s.close().unwrap();
        let s = case.open(RecoveryPolicy::Refuse, &what).unwrap();
        assert!(s.recovery_report().damaged.is_empty(), "{what}");
        assert_eq!(s.get("orders", id).unwrap().payload, "after the garbage");
        s.close().unwrap();
    }
}

#[test]
fn a_segment_from_another_store_is_refused_even_with_the_same_number_and_lsns() {
    let p = pristine();
    let foreign = foreign_files();
    let seg = p.middle_seg();
    let (ours, theirs) = (&p.files[&seg_file(seg)], &foreign[&seg_file(seg)]);
    assert_eq!(ours[SEGMENT_HEADER_LEN..], theirs[SEGMENT_HEADER_LEN..]);
    assert_ne!(ours[..SEGMENT_HEADER_LEN], theirs[..SEGMENT_HEADER_LEN]);
    let case = Case::new();
    case.write(&seg_file(seg), theirs);
    let what = format!("segment {seg} replaced by the other store's segment {seg}");
    check_middle_damage(&case, &what, &Want::segment(seg))
        .close()
        .unwrap();
}

#[test]
fn a_segment_from_another_store_after_the_last_is_refused_and_skip_loses_nothing() {
    let p = pristine();
    let next = p.last_seg() + 1;
    let case = Case::new();
    case.write(&seg_file(next), &foreign_files()[&seg_file(2)]);
    let what = format!("the other store's segment 2 added as segment {next}");
    check_middle_damage(&case, &what, &Want::stray(next))
        .close()
        .unwrap();
}

#[test]
fn a_segment_duplicated_under_the_next_number_is_refused_and_skip_loses_nothing() {
    let p = pristine();
    let next = p.last_seg() + 1;
    let case = Case::new();
    case.write(&seg_file(next), &p.files[&seg_file(2)]);
    let what = format!("segment 2 copied as segment {next}");
    check_middle_damage(&case, &what, &Want::stray(next))
        .close()
        .unwrap();
}

#[test]
fn a_segment_copied_over_its_successor_is_refused_and_skip_loses_only_the_successor() {
    let p = pristine();
    let seg = p.middle_seg();
    let case = Case::new();
    case.write(&seg_file(seg + 1), &p.files[&seg_file(seg)]);
    let what = format!("segment {seg} copied over segment {}", seg + 1);
    check_middle_damage(&case, &what, &Want::segment(seg + 1))
        .close()
        .unwrap();
}

#[test]
fn a_segment_duplicated_under_a_lower_number_is_refused_and_skip_loses_nothing() {
    let p = pristine();
    let case = Case::new();
    case.write(&seg_file(0), &p.files[&seg_file(3)]);
    let what = "segment 3 copied as segment 0";
    let before = case.files();
    match case.open(RecoveryPolicy::Refuse, what) {
        Err(Error::Corrupt { ranges }) => assert_eq!(ranges[0].segment, 0, "{}", ranges[0]),
        Err(e) => panic!("{what}: expected Error::Corrupt, got: {e}"),
        Ok(_) => panic!("{what}: Refuse opened a log with a stray segment"),
    }
    assert_files_unchanged(&case, &before, what);
    let s = case.open(RecoveryPolicy::Skip, what).unwrap();
    let r = s.recovery_report().clone();
    assert_eq!(r.damaged.len(), 1, "{r:?}");
    assert_eq!(r.damaged[0].segment, 0, "{r:?}");
    check_contents(&s, &[], what);
    s.close().unwrap();
}

// --- 4. a huge frame length -------------------------------------------------------------------

/// Runs `body` in a child process whose address space is limited to 1 GiB (Linux), so an
/// allocation sized from a damaged length field aborts the child instead of passing silently
/// (a lazily-zeroed 4 GiB allocation would otherwise succeed). `test` is this test's path.
fn with_memory_limit(test: &str, body: impl FnOnce()) {
    const CHILD: &str = "SPOOL_CORRUPTION_MEMORY_LIMITED";
    if !cfg!(target_os = "linux") || std::env::var_os(CHILD).is_some() {
        body();
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 1048576 && exec \"$0\" \"$@\"")
        .arg(&exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .expect("run the test binary under a memory limit");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the memory-limited child failed ({}):\n{text}",
        out.status
    );
    assert!(text.contains("1 passed"), "the child ran no test:\n{text}");
}

#[test]
fn a_huge_frame_length_is_rejected_without_a_huge_allocation() {
    with_memory_limit(
        "corruption::a_huge_frame_length_is_rejected_without_a_huge_allocation",
        || {
            let p = pristine();
            let huge = 0xFFFF_FFF0u32.to_le_bytes();
            let f = p.middle_push();
            let case = Case::new();
            case.put(&seg_file(f.seg), f.offset + 4, &huge);
            let what = format!("body_len 0xFFFF_FFF0 in LSN {}", f.lsn);
            check_middle_damage(&case, &what, &Want::frames(f.seg, f.offset, vec![f.lsn]))
                .close()
                .unwrap();
            let f = p.last_frame();
            check_torn_tail(
                &|c| c.put(&seg_file(f.seg), f.offset + 4, &huge),
                "body_len 0xFFFF_FFF0 in the last frame",
                &Torn::nothing_after(f.seg, f.offset, vec![f.lsn]),
            );
        },
    );
}

/// Rewrites frame `f` of a case as a checksum-valid frame with entry bytes `entries`, `n`
/// entries and LSN `lsn`.
fn forge_frame(case: &Case, f: &Frame, lsn: u64, n: u32, entries: &[u8]) {
    let rel = seg_file(f.seg);
    let data = case.read(&rel);
    let mut fb = FrameBuf::with_capacity(entries.len());
    fb.buf.extend_from_slice(entries);
    fb.n_entries = n;
    let forged = fb.seal(lsn, lsn - 1).to_vec();
    let out = [&data[..f.offset], &forged[..], &data[f.end()..]].concat();
    case.write(&rel, &out);
}

#[test]
fn a_checksummed_frame_with_lying_contents_is_damage_not_a_panic() {
    with_memory_limit(
        "corruption::a_checksummed_frame_with_lying_contents_is_damage_not_a_panic",
        || {
            let p = pristine();
            let f = p.middle_push();
            let data = &p.files[&seg_file(f.seg)];
            let entries = data[f.offset + FRAME_OVERHEAD..f.end()].to_vec();
            let with = |at: usize, bytes: &[u8]| {
                let mut e = entries.clone();
                e[at..at + bytes.len()].copy_from_slice(bytes);
                e
            };
            let huge = 0xFFFF_FFF0u32.to_le_bytes();
            // The payload length is the u32 before the payload, at the end of the entry.
            let Entry::Enqueue(enq) = &f.entries[0] else {
                unreachable!()
            };
            let payload_len_at = entries.len() - enq.payload.len() - 4;
            let cases: Vec<(&str, u64, u32, Vec<u8>)> = vec![
                ("an entry length of 0xFFFF_FFF0", f.lsn, 1, with(1, &huge)),
                (
                    "a payload length of 0xFFFF_FFF0",
                    f.lsn,
                    1,
                    with(payload_len_at, &huge),
                ),
                ("an unknown entry kind", f.lsn, 1, with(0, &[0xEE])),
                ("a zero-length entry", f.lsn, 1, with(1, &[0, 0, 0, 0])),
                ("an entry count of 2 for 1 entry", f.lsn, 2, entries.clone()),
                (
                    "an entry count of u32::MAX",
                    f.lsn,
                    u32::MAX,
                    entries.clone(),
                ),
                ("an entry count of 0", f.lsn, 0, entries.clone()),
                (
                    "a stale LSN (the previous frame's)",
                    f.lsn - 1,
                    1,
                    entries.clone(),
                ),
                ("an LSN from the future", f.lsn + 1000, 1, entries.clone()),
            ];
            for (what, lsn, n, bytes) in cases {
                let what = format!("LSN {} forged with {what}", f.lsn);
                let case = Case::new();
                forge_frame(&case, f, lsn, n, &bytes);
                // The forged frame may be shorter: the next one moves, the offset does not.
                check_middle_damage(&case, &what, &Want::frames(f.seg, f.offset, vec![f.lsn]))
                    .close()
                    .unwrap();
            }
        },
    );
}

// --- 5. random single-byte corruption ---------------------------------------------------------

/// SplitMix64: a tiny seeded generator, so a failing case replays from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

#[test]
fn random_single_byte_corruption_never_panics_loses_or_invents_messages() {
    // SPOOL_CORRUPTION_SEED replays a failure; SPOOL_CORRUPTION_ITERATIONS runs longer.
    let seed = env_u64("SPOOL_CORRUPTION_SEED").unwrap_or(0x5EED_C0DE);
    let iterations = env_u64("SPOOL_CORRUPTION_ITERATIONS").unwrap_or(300);
    let p = pristine();
    let names: Vec<&String> = p.files.keys().collect();
    let last = seg_file(p.last_seg());
    let mut rng = Rng(seed);
    // How often each outcome was seen: the run must exercise them all.
    let mut seen: BTreeMap<&str, u64> = BTreeMap::new();
    for i in 0..iterations {
        // A random byte of a random file; one time in eight, one of the log's last 256 bytes
        // (a torn tail), which uniform picks would almost never reach.
        let (name, at) = if rng.below(8) == 0 {
            let len = p.files[&last].len();
            (&last, len - 1 - rng.below(256))
        } else {
            let name = names[rng.below(names.len())];
            (name, rng.below(p.files[name].len()))
        };
        let mask = (rng.below(255) + 1) as u8;
        let policy = if rng.below(2) == 0 {
            RecoveryPolicy::Refuse
        } else {
            RecoveryPolicy::Skip
        };
        let what = format!(
            "seed {seed:#x} iteration {i}: byte {at} of {name} xor {mask:#04x}, {policy:?} \
             (replay with SPOOL_CORRUPTION_SEED={seed:#x})"
        );
        let case = Case::new();
        case.xor(name, at, mask);
        let before = case.files();
        let result = case.open(policy, &what);
        // What the damage must be taken for.
        if std::path::Path::new(name)
            .extension()
            .is_some_and(|e| e == "idx")
        {
            // Derived data: detected, rebuilt from its segment, nothing lost.
            let s = result.unwrap_or_else(|e| {
                panic!("{what}: a damaged index must be rebuilt, not refused: {e}")
            });
            check_contents_in(p, &s, &[], &what);
            *seen.entry("index").or_default() += 1;
            continue;
        }
        let Some(seg) = name.strip_prefix("log/").and_then(parse_segment_file_name) else {
            assert!(
                matches!(result, Err(Error::Format { .. })),
                "{what}: expected Error::Format, got {:?}",
                result.map(|s| s.recovery_report().clone())
            );
            assert_files_unchanged(&case, &before, &what);
            *seen.entry("format").or_default() += 1;
            continue;
        };
        let (want, torn) = if at < SEGMENT_HEADER_LEN {
            (Want::segment(seg), None)
        } else {
            let f = p
                .frames
                .iter()
                .find(|f| f.seg == seg && f.offset <= at && at < f.end())
                .expect("every byte after the header is in a frame");
            let torn = (f.lsn == p.last_lsn()).then_some(f.offset);
            (Want::frames(seg, f.offset, vec![f.lsn]), torn)
        };
        match (result, torn, policy) {
            (Ok(s), Some(offset), _) => {
                let r = s.recovery_report();
                let t = r
                    .torn_tail
                    .as_ref()
                    .unwrap_or_else(|| panic!("{what}: {r:?}"));
                assert_eq!((t.segment, t.offset), (seg, offset as u64), "{what}");
                assert_eq!(t.valid_frames_discarded, 0, "{what}: {t:?}");
                check_contents(&s, &want.lost, &what);
                s.close().unwrap();
                *seen.entry("torn tail").or_default() += 1;
            }
            (Err(Error::Corrupt { ranges }), None, RecoveryPolicy::Refuse) => {
                check_range(&ranges[0], &want, &what);
                assert_files_unchanged(&case, &before, &what);
                *seen.entry("refused").or_default() += 1;
            }
            (Ok(s), None, RecoveryPolicy::Skip) => {
                let r = s.recovery_report().clone();
                assert!(!r.damaged.is_empty(), "{what}: {r:?}");
                check_range(&r.damaged[0], &want, &what);
                check_contents(&s, &want.lost, &what);
                *seen.entry("skipped").or_default() += 1;
                if i % 5 == 0 {
                    let id = s.push("jobs", Push::new("after the damage")).unwrap();
                    s.close().unwrap();
                    let s = case.open(RecoveryPolicy::Skip, &what).unwrap();
                    assert_eq!(
                        s.get("jobs", id).unwrap().payload,
                        "after the damage",
                        "{what}"
                    );
                    s.close().unwrap();
                } else {
                    s.close().unwrap();
                }
            }
            (Ok(s), None, RecoveryPolicy::Refuse) => panic!(
                "{what}: Refuse opened a log damaged in the middle: {:?}",
                s.recovery_report()
            ),
            (Err(e), _, _) => panic!("{what}: unexpected error: {e:?}"),
        }
    }
    if iterations >= 300 {
        for outcome in ["format", "torn tail", "refused", "skipped"] {
            assert!(
                seen.contains_key(outcome),
                "seed {seed:#x}: no {outcome} case in {iterations} iterations: {seen:?}"
            );
        }
    }
}

// --- 6. a store opened with Skip stays usable -------------------------------------------------

/// Opens a damaged case with Skip, uses it (push, lease, ack, publish), closes it, and opens it
/// again with Skip, twice: what was done after the damage survives, the damage is still
/// reported exactly as at first, and Refuse still refuses. The frames written after the damage
/// have consecutive LSNs above every LSN the damaged log held; the caller checks with
/// [`AfterSkip::check_lsns_above_the_report`] that they are above every LSN the report names as
/// lost too (the writer never reuses the LSN of a skipped frame).
fn check_usable_after_skip(damage: &dyn Fn(&Case), what: &str, want: &Want) -> AfterSkip {
    let case = Case::new();
    damage(&case);
    let damaged_files = case.files();
    let s = check_middle_damage(&case, what, want);
    let damaged = s.recovery_report().damaged.clone();
    // New ids are new: none of them is the id of a message the store still holds.
    let held: BTreeSet<u64> = Snapshot::of(&s)
        .queues
        .values()
        .flatten()
        .map(|m| m.id)
        .collect();
    let top = s
        .push("orders", Push::new("after damage: acked").priority(200))
        .unwrap();
    let kept = s.push("orders", Push::new("after damage: kept")).unwrap();
    let fresh = s
        .push("fresh", Push::new("after damage: new queue"))
        .unwrap();
    for id in [top, kept, fresh] {
        assert!(
            !held.contains(&id),
            "{what}: new message got the id {id} of an old one"
        );
    }
    let leased = s.lease("orders", 1, None).unwrap();
    assert_eq!(
        leased[0].id, top,
        "{what}: the highest priority is served first"
    );
    s.ack("orders", leased[0].receipt.unwrap()).unwrap();
    s.publish("news", "after damage: news").unwrap();
    s.close().unwrap();
    for round in 0..2 {
        let what = format!("{what}, reopen {round}");
        let s = case
            .open(RecoveryPolicy::Skip, &what)
            .unwrap_or_else(|e| panic!("{what}: Skip failed to reopen: {e}"));
        let r = s.recovery_report().clone();
        assert!(r.torn_tail.is_none(), "{what}: {r:?}");
        assert_eq!(
            r.damaged, damaged,
            "{what}: the damage is reported as it was at first"
        );
        assert!(
            matches!(s.get("orders", top), Err(Error::NotFound { .. })),
            "{what}"
        );
        assert_eq!(
            s.get("orders", kept).unwrap().payload,
            "after damage: kept",
            "{what}"
        );
        assert_eq!(s.messages("fresh").unwrap()[0].id, fresh, "{what}");
        let news = &Snapshot::of(&s).topics["news"];
        assert_eq!(news[news.len() - 1].1, "after damage: news", "{what}");
        s.close().unwrap();
    }
    assert!(
        matches!(
            case.open(RecoveryPolicy::Refuse, what),
            Err(Error::Corrupt { .. })
        ),
        "{what}: Refuse still refuses"
    );
    let old = frame_lsns(&damaged_files, &BTreeMap::new());
    let new = frame_lsns(&case.files(), &damaged_files);
    assert!(!new.is_empty(), "{what}: no frame written after the damage");
    assert!(
        new.windows(2).all(|w| w[1] == w[0] + 1),
        "{what}: the LSNs written after the damage are not consecutive: {new:?}"
    );
    let top = old.iter().copied().max().unwrap_or(0);
    assert!(
        new[0] > top,
        "{what}: the frames written after Skip start at LSN {}, but the damaged log holds LSN \
         {top}",
        new[0]
    );
    AfterSkip {
        what: what.to_string(),
        damaged,
        first_new_lsn: new[0],
    }
}

/// What [`check_usable_after_skip`] found.
struct AfterSkip {
    what: String,
    /// The damage Skip reported (the same at every open).
    damaged: Vec<DamagedRange>,
    /// The LSN of the first frame written after the damage.
    first_new_lsn: u64,
}

impl AfterSkip {
    /// No LSN the report names as lost was written after the damage.
    fn check_lsns_above_the_report(&self) {
        let what = &self.what;
        for d in &self.damaged {
            assert!(
                self.first_new_lsn > d.lsn_to,
                "{what}: the frames written after Skip start at LSN {}, in the range reported \
                 lost: {d}",
                self.first_new_lsn
            );
        }
    }
}

/// The LSN of every checksum-valid frame in the segment files of `files`, whatever their
/// header, in file order; only past the first `skip[name].len()` bytes of a file `skip` has.
fn frame_lsns(files: &BTreeMap<String, Vec<u8>>, skip: &BTreeMap<String, Vec<u8>>) -> Vec<u64> {
    let mut out = Vec::new();
    for (name, data) in files {
        if !name.starts_with("log/") {
            continue;
        }
        let mut pos = skip.get(name).map_or(0, Vec::len).max(SEGMENT_HEADER_LEN);
        while pos < data.len() {
            match check_frame(&data[pos..]) {
                FrameCheck::Valid { lsn, len, .. } => {
                    out.push(lsn);
                    pos += len;
                }
                _ => pos += 1,
            }
        }
    }
    out
}

#[test]
fn after_skipping_a_damaged_frame_the_store_is_usable_and_reopens() {
    let f = pristine().middle_push();
    check_usable_after_skip(
        &|c| c.xor(&seg_file(f.seg), f.offset + f.payload_byte(), 0x20),
        "payload flip in a middle frame",
        &Want::frames(f.seg, f.offset, vec![f.lsn]),
    )
    .check_lsns_above_the_report();
}

#[test]
fn after_skipping_a_damaged_segment_header_the_store_is_usable_and_reopens() {
    let seg = pristine().middle_seg();
    check_usable_after_skip(
        &|c| c.xor(&seg_file(seg), 33, 0x01),
        "base LSN flip in a middle segment header",
        &Want::segment(seg),
    )
    .check_lsns_above_the_report();
}

#[test]
fn after_skipping_a_missing_segment_the_store_is_usable_and_reopens() {
    let seg = pristine().middle_seg();
    check_usable_after_skip(
        &|c| c.remove(&seg_file(seg)),
        "a missing middle segment",
        &Want::segment(seg),
    )
    .check_lsns_above_the_report();
}

#[test]
fn after_skipping_a_damaged_last_segment_the_store_is_usable_and_reopens() {
    // The skipped segment's LSNs stay reported, and new frames go above them.
    let seg = pristine().last_seg();
    check_usable_after_skip(
        &|c| c.xor(&seg_file(seg), 17, 0x01),
        "store id flip in the last segment's header",
        &Want::segment(seg),
    )
    .check_lsns_above_the_report();
}

#[test]
fn after_skipping_a_foreign_segment_the_store_is_usable_and_reopens() {
    let next = pristine().last_seg() + 1;
    // The stray segment holds only stale frames, so its reported range is the one LSN after
    // the last (`Want::stray`); new frames must go above it.
    check_usable_after_skip(
        &|c| c.write(&seg_file(next), &foreign_files()[&seg_file(2)]),
        "a foreign segment after the last",
        &Want::stray(next),
    )
    .check_lsns_above_the_report();
}

// --- topics after Skip ------------------------------------------------------------------------

#[test]
fn a_topic_reader_gets_every_retained_message_after_skip() {
    // Skipping segment 2 drops publishes: the retained sequence numbers have a gap. A cursor
    // from any sequence number (in the gap too) reads every retained message from there on,
    // once, in order.
    let p = pristine();
    let seg = p.segs[1];
    let lost: BTreeSet<u64> = p.seg_lsns(seg).collect();
    let want = replay(p.frames.iter().filter(|f| !lost.contains(&f.lsn)))
        .contents
        .topics["news"]
        .clone();
    let seqs: Vec<u64> = want.iter().map(|(seq, _)| *seq).collect();
    let last = seqs[seqs.len() - 1];
    assert!(
        (seqs.len() as u64) < last,
        "segment {seg} holds publishes: {seqs:?}"
    );
    let case = Case::new();
    case.xor(&seg_file(seg), 0, 0x04);
    let s = case
        .open(RecoveryPolicy::Skip, "segment 2's header damaged")
        .unwrap();
    assert_eq!(
        retained(&s, "news"),
        want,
        "a cursor from seq 1 reads every retained message once"
    );
    for from in 1..=last + 1 {
        let mut c = s.cursor_at("news", from).unwrap();
        let mut read = Vec::new();
        while let Some(m) = s.topic_next(&mut c).unwrap() {
            read.push(m.seq);
        }
        let expected: Vec<u64> = seqs.iter().copied().filter(|&q| q >= from).collect();
        assert_eq!(read, expected, "a cursor at seq {from}");
    }
    s.close().unwrap();
}

// --- 7. torn tail or damage: what the frames after a bad one prove ----------------------------

/// A small store written with `Durability::Sync` by one thread: each frame is synced before
/// the next is written, so each frame's `synced_lsn` is the LSN of the frame before it.
fn sync_pristine() -> &'static Pristine {
    static SYNC: OnceLock<Pristine> = OnceLock::new();
    SYNC.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(
            dir.path(),
            Options {
                durability: Durability::Sync,
                ..options(RecoveryPolicy::Refuse)
            },
        )
        .unwrap();
        for i in 0..24u32 {
            let queue = ["left", "right"][i as usize % 2];
            s.push(queue, Push::new(payload(queue, i))).unwrap();
        }
        s.close().unwrap();
        let p = Pristine::of(read_store_files(dir.path()));
        for f in &p.frames {
            assert_eq!(
                f.synced_lsn,
                f.lsn - 1,
                "with Durability::Sync and one thread, frame {} proves the one before it",
                f.lsn
            );
        }
        p
    })
}

/// Cuts the empty frame a clean close appended off the end of the log of a copy of `p`, as if
/// the store had stopped without closing.
fn cut_close_marker(case: &Case, p: &Pristine) {
    let marker = p.last_frame();
    assert!(marker.entries.is_empty(), "{marker:?}");
    case.truncate(&seg_file(marker.seg), marker.offset);
}

#[test]
fn a_bad_frame_a_later_frame_proves_durable_is_damage_even_without_a_close_marker() {
    let p = sync_pristine();
    let marker = p.last_frame();
    let frames = p.seg_frames(marker.seg);
    let n = frames.len();
    assert!(n >= 5, "{n} frames in the last segment");
    // Without the marker, `c` ends the log; its synced_lsn is `b`'s LSN, `b`'s is `a`'s.
    let (a, b, c) = (frames[n - 4], frames[n - 3], frames[n - 2]);
    let rel = seg_file(marker.seg);

    // A flipped byte in the second last frame: the last one proves it durable.
    let case = Case::with_files(&p.files);
    cut_close_marker(&case, p);
    case.xor(&rel, b.offset + b.payload_byte(), 0x10);
    let what = format!(
        "no close marker, payload flip in LSN {} of {}",
        b.lsn, c.lsn
    );
    check_middle_damage_in(p, &case, &what, &Want::frames(b.seg, b.offset, vec![b.lsn]))
        .close()
        .unwrap();

    // Zeroes from the middle of the third last frame to the middle of the second last.
    let case = Case::with_files(&p.files);
    cut_close_marker(&case, p);
    let (from, to) = (a.offset + a.len / 2, b.offset + b.len / 2);
    case.put(&rel, from, &vec![0; to - from]);
    let what = format!(
        "no close marker, bytes {from}..{to} (LSNs {}-{}) zeroed",
        a.lsn, b.lsn
    );
    let want = Want::frames(a.seg, a.offset, vec![a.lsn, b.lsn]);
    check_middle_damage_in(p, &case, &what, &want)
        .close()
        .unwrap();

    // The same flip in the last frame: nothing after it proves it durable, a torn tail.
    check_torn_tail_in(
        p,
        &|case| {
            cut_close_marker(case, p);
            case.xor(&rel, c.offset + c.payload_byte(), 0x10);
        },
        &format!(
            "no close marker, payload flip in the last frame (LSN {})",
            c.lsn
        ),
        &Torn::nothing_after(c.seg, c.offset, vec![c.lsn, marker.lsn]),
    );
}

#[test]
fn a_bad_frame_no_later_frame_proves_durable_is_a_torn_tail_that_takes_the_frames_after_it() {
    // Written with Durability::None: the frames of the last segment carry the synced_lsn of the
    // segment's creation, below all of them. Only the close marker proves them durable.
    let p = pristine();
    let marker = p.last_frame();
    let frames = p.seg_frames(marker.seg);
    let n = frames.len();
    assert!(n >= 5, "{n} frames in the last segment");
    let (bad, next) = (frames[(n - 1) / 2], frames[(n - 1) / 2 + 1]);
    for f in &frames[..n - 1] {
        assert!(f.synced_lsn < bad.lsn, "{f:?}");
    }
    let rel = seg_file(marker.seg);
    let spot = bad.offset + 9;

    // With the close marker, the flipped checksum is damage.
    let case = Case::new();
    case.xor(&rel, spot, 0x10);
    let what = format!("checksum flip in LSN {}", bad.lsn);
    check_middle_damage(
        &case,
        &what,
        &Want::frames(bad.seg, bad.offset, vec![bad.lsn]),
    )
    .close()
    .unwrap();

    // Without it, a torn tail: the bad frame and every frame after it are cut off.
    let lost: Vec<u64> = (bad.lsn..=marker.lsn).collect();
    check_torn_tail(
        &|case| {
            cut_close_marker(case, p);
            case.xor(&rel, spot, 0x10);
        },
        &format!("no close marker, checksum flip in LSN {}", bad.lsn),
        &Torn {
            seg: bad.seg,
            offset: bad.offset,
            lost: lost.clone(),
            valid_frames_discarded: marker.lsn - 1 - bad.lsn,
        },
    );

    // Zeroes from the middle of the bad frame to the middle of the next: both bad.
    let (from, to) = (bad.offset + bad.len / 2, next.offset + next.len / 2);
    check_torn_tail(
        &|case| {
            cut_close_marker(case, p);
            case.put(&rel, from, &vec![0; to - from]);
        },
        &format!(
            "no close marker, bytes {from}..{to} (LSNs {}-{}) zeroed",
            bad.lsn, next.lsn
        ),
        &Torn {
            seg: bad.seg,
            offset: bad.offset,
            lost,
            valid_frames_discarded: marker.lsn - 1 - next.lsn,
        },
    );
}
