//! The in-memory state of a store. It changes only through [`State::apply`], called with each
//! log entry both on the live path (right after the entry is encoded into the pending frame)
//! and during recovery (for each entry read back from the log), so a restart rebuilds exactly
//! what was committed.
//!
//! **Messages are not held in memory.** A message's bytes stay in its log record (its
//! `ENQUEUE` entry); the state keeps where the record is ([`RecRef`]) and what deciding needs.
//! Per queue and priority, a *lane* holds:
//! - a **stream** of the messages never handed out, in id order, with a *floor* (every such
//!   message at or below it has left the stream) and a small *dead* set (messages that left
//!   out of order, e.g. deleted by id);
//! - the **returned** set: messages that were leased (or delayed) and are ready again.
//!
//! A message leased once, or pushed with a delay, becomes *touched*: it leaves the stream and
//! gets an entry in the queue's `touched` map (receive count, lease generation, state). Touched
//! messages are bounded by what consumers hold; the stream is what grows with the backlog.
//!
//! `apply` never fails and never panics on entries that refer to things that do not exist
//! (possible after `RecoveryPolicy::Skip` dropped damaged frames): such entries are ignored.
//! It never reads the clock and never does I/O.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use crate::codec::{Dec, DecResult, Enc, REC_LEN};
use crate::entry::{decode_record, Enqueue, Entry, RecRef, RemoveReason};
use crate::error::Result;
use crate::lanes::{index_entry, IndexStore, Released, Stream, StreamEntry};
use crate::options::{QueueConfig, TopicConfig};
use crate::segindex::{LaneKey, SIZE_CARRIED};
use crate::signal::Signal;
use rustc_hash::FxHashMap;

/// Where a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageState {
    /// Can be leased now.
    Ready,
    /// Becomes ready at this time (ms).
    Delayed(u64),
    /// Leased until this time (ms).
    Leased(u64),
}

/// Where an entry that is a record (`ENQUEUE`, `PUBLISH`) sits in the log: given to `apply`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct At {
    pub seg: u64,
    pub off: u32,
    pub len: u32,
    pub crc: u32,
}

/// The bytes a message counts against its queue's capacity.
pub(crate) fn message_size(e: &Enqueue) -> u64 {
    (e.blob.map_or(e.payload.len(), |(_, len)| len as usize)
        + e.subject.as_ref().map_or(0, String::len)
        + e.headers
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()) as u64
}

/// A message that left its lane's stream: leased at least once, or pushed with a delay.
#[derive(Debug, Clone)]
pub(crate) struct Touched {
    pub rec: RecRef,
    /// Its priority now (a nack may change it); `rec.prio` is the lane it was pushed to.
    pub priority: u8,
    pub receive_count: u32,
    pub lease_gen: u32,
    pub first_received_ms: u64,
    pub state: MessageState,
    /// A lease handed out the current `lease_gen` and no nack withdrew it since: only then
    /// does a receipt with that generation count (a nack bumps the generation without
    /// handing it to anyone).
    pub delivered: bool,
}

/// One priority of a queue.
#[derive(Debug, Default)]
pub(crate) struct Lane {
    /// Messages never handed out (their entries are in the segment indexes).
    pub stream: Stream,
    /// Touched messages of this priority that are ready, by id.
    pub returned: BTreeSet<u64>,
}

/// Totals of a queue, rebuilt from the log at open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounters {
    pub pushed: u64,
    pub acked: u64,
    pub popped: u64,
    pub deleted: u64,
    pub expired: u64,
    pub evicted: u64,
    pub purged: u64,
    /// Moved out to the dead-letter queue (max receives passed, or `dead`).
    pub dead_lettered: u64,
    /// Moved in from a dead-letter queue by `redrive`.
    pub redriven: u64,
    /// Moved in as a dead letter from another queue.
    pub dead_letters_received: u64,
    /// Pushes refused because the queue was full (since the store was opened; not logged).
    pub rejected_full: u64,
}

/// A message never handed out, as its index entry says.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Untouched {
    pub rec: RecRef,
}

/// A message as the state sees it: in its lane's stream, or touched (a copy).
#[derive(Debug, Clone)]
pub(crate) enum Found {
    Stream(Untouched),
    Touched(Touched),
}

impl Found {
    pub fn rec(&self) -> RecRef {
        match self {
            Found::Stream(u) => u.rec,
            Found::Touched(t) => t.rec,
        }
    }
    pub fn expired(&self, now: u64) -> bool {
        let e = self.rec().expires_ms;
        e != 0 && e <= now
    }
    /// The record carries a dead letter's history.
    pub fn carried(&self) -> bool {
        self.rec().size & SIZE_CARRIED != 0
    }
}

fn lane_key(queue: u32, prio: u8) -> LaneKey {
    LaneKey::Queue { queue, prio }
}

fn untouched(e: &StreamEntry, prio: u8) -> Untouched {
    Untouched {
        rec: RecRef {
            seg: e.seg,
            off: e.e.off,
            len: e.e.len,
            size: e.e.size,
            crc: e.e.crc,
            prio,
            expires_ms: e.e.expires_ms,
            enqueued_ms: e.e.enqueued_ms,
        },
    }
}

#[derive(Debug)]
pub(crate) struct Queue {
    pub id: u32,
    pub name: String,
    pub config: QueueConfig,
    /// Lanes by priority, highest first.
    pub lanes: BTreeMap<Reverse<u8>, Lane>,
    pub touched: FxHashMap<u64, Touched>,
    touched_bytes: u64,
    delayed: BTreeSet<(u64, u64)>,
    leased: BTreeSet<(u64, u64)>,
    pub counters: QueueCounters,
    pub signal: Arc<Signal>,
}

impl Queue {
    fn new(id: u32, name: String, config: QueueConfig) -> Self {
        Self {
            id,
            name,
            config,
            lanes: BTreeMap::new(),
            touched: FxHashMap::default(),
            touched_bytes: 0,
            delayed: BTreeSet::new(),
            leased: BTreeSet::new(),
            counters: QueueCounters::default(),
            signal: Arc::new(Signal::default()),
        }
    }

    pub fn n_delayed(&self) -> u64 {
        self.delayed.len() as u64
    }
    pub fn n_leased(&self) -> u64 {
        self.leased.len() as u64
    }
    /// Messages that can be leased now (expired ones not yet dropped included).
    pub fn n_ready(&self) -> u64 {
        self.lanes
            .values()
            .map(|l| l.stream.live + l.returned.len() as u64)
            .sum()
    }
    /// All messages held.
    pub fn len(&self) -> u64 {
        self.lanes.values().map(|l| l.stream.live).sum::<u64>() + self.touched.len() as u64
    }
    /// Bytes held (payloads, subjects, headers).
    pub fn bytes(&self) -> u64 {
        self.lanes
            .values()
            .map(|l| l.stream.live_bytes)
            .sum::<u64>()
            + self.touched_bytes
    }

    /// A message by id, in any state.
    pub fn find(&self, ix: &mut IndexStore, id: u64) -> Result<Option<Found>> {
        if let Some(t) = self.touched.get(&id) {
            return Ok(Some(Found::Touched(t.clone())));
        }
        for (Reverse(p), lane) in &self.lanes {
            if let Some(e) = lane.stream.get(lane_key(self.id, *p), ix, id)? {
                return Ok(Some(Found::Stream(untouched(&e, *p))));
            }
        }
        Ok(None)
    }

    fn lane(&mut self, prio: u8) -> &mut Lane {
        self.lanes.entry(Reverse(prio)).or_default()
    }

    /// Takes a touched message out of its state structure.
    fn detach(&mut self, id: u64) {
        let Some(t) = self.touched.get(&id) else {
            return;
        };
        let (state, prio) = (t.state, t.priority);
        match state {
            MessageState::Ready => {
                if let Some(l) = self.lanes.get_mut(&Reverse(prio)) {
                    l.returned.remove(&id);
                }
            }
            MessageState::Delayed(at) => {
                self.delayed.remove(&(at, id));
            }
            MessageState::Leased(until) => {
                self.leased.remove(&(until, id));
            }
        }
    }

    /// Puts a touched message (already detached, or new) into `state`.
    fn attach(&mut self, id: u64, state: MessageState) {
        let Some(t) = self.touched.get_mut(&id) else {
            return;
        };
        t.state = state;
        let prio = t.priority;
        match state {
            MessageState::Ready => {
                self.lane(prio).returned.insert(id);
            }
            MessageState::Delayed(at) => {
                self.delayed.insert((at, id));
            }
            MessageState::Leased(until) => {
                self.leased.insert((until, id));
            }
        }
    }

    fn add_touched(&mut self, id: u64, t: Touched) {
        let state = t.state;
        self.touched_bytes += u64::from(t.rec.size & !SIZE_CARRIED);
        self.touched.insert(id, t);
        self.attach(id, state);
    }

    fn remove_touched(&mut self, id: u64) -> Option<RecRef> {
        if !self.touched.contains_key(&id) {
            return None;
        }
        self.detach(id);
        let t = self.touched.remove(&id)?;
        self.touched_bytes -= u64::from(t.rec.size & !SIZE_CARRIED);
        Some(t.rec)
    }

    /// Makes due delayed messages and expired leases ready. Called before every read.
    pub fn promote(&mut self, now: u64) {
        while let Some(&(at, id)) = self.delayed.first() {
            if at > now {
                break;
            }
            self.delayed.pop_first();
            self.attach(id, MessageState::Ready);
        }
        while let Some(&(until, id)) = self.leased.first() {
            if until > now {
                break;
            }
            self.leased.pop_first();
            self.attach(id, MessageState::Ready);
        }
    }

    /// The earliest time (ms) at which a delayed message or an expired lease becomes ready.
    pub fn next_due(&self) -> Option<u64> {
        let d = self.delayed.first().map(|&(at, _)| at);
        let l = self.leased.first().map(|&(at, _)| at);
        match (d, l) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next ready message in delivery order (priority desc, id asc), or with
    /// `lowest_first` from the lowest priority up; only lanes of priority <= `max_prio`.
    /// Whether it is at the front of its lane's stream (else it is touched) comes with it.
    pub fn next_ready(
        &mut self,
        ix: &mut IndexStore,
        lowest_first: bool,
        max_prio: u8,
    ) -> Result<Option<(u64, Found)>> {
        let qid = self.id;
        let mut prios: Vec<u8> = self
            .lanes
            .keys()
            .map(|k| k.0)
            .filter(|&p| p <= max_prio)
            .collect();
        if lowest_first {
            prios.reverse();
        }
        let Queue { lanes, touched, .. } = self;
        for p in prios {
            let Some(lane) = lanes.get_mut(&Reverse(p)) else {
                continue;
            };
            let s = lane
                .stream
                .front(lane_key(qid, p), ix, &|id| touched.contains_key(&id))?;
            let r = lane.returned.first().copied();
            let pick_stream = match (&s, r) {
                (Some(a), Some(b)) => a.id < b,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => continue,
            };
            if pick_stream {
                if let Some(e) = s {
                    return Ok(Some((e.id, Found::Stream(untouched(&e, p)))));
                }
            } else if let Some(id) = r {
                if let Some(t) = touched.get(&id) {
                    return Ok(Some((id, Found::Touched(t.clone()))));
                }
            }
        }
        Ok(None)
    }

    /// Visits the ready messages of one lane in id order (stream and returned merged) until
    /// `f` returns false; returns false if `f` did.
    pub fn walk_lane(
        &self,
        ix: &mut IndexStore,
        prio: u8,
        f: &mut dyn FnMut(u64, Found) -> bool,
    ) -> Result<bool> {
        let Some(lane) = self.lanes.get(&Reverse(prio)) else {
            return Ok(true);
        };
        let mut returned = lane
            .returned
            .iter()
            .filter_map(|id| self.touched.get(id).map(|t| (*id, t)))
            .peekable();
        let mut go_on = true;
        let gone = |id: u64| self.touched.contains_key(&id);
        lane.stream.walk(lane_key(self.id, prio), ix, &gone, |e| {
            while let Some((id, t)) = returned.next_if(|(id, _)| *id < e.id) {
                if !f(id, Found::Touched(t.clone())) {
                    go_on = false;
                    return false;
                }
            }
            if !f(e.id, Found::Stream(untouched(&e, prio))) {
                go_on = false;
                return false;
            }
            true
        })?;
        if !go_on {
            return Ok(false);
        }
        for (id, t) in returned {
            if !f(id, Found::Touched(t.clone())) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Visits the ready messages in delivery order (priority desc, id asc) until `f` returns
    /// false.
    pub fn walk_ready(
        &self,
        ix: &mut IndexStore,
        f: &mut dyn FnMut(u64, Found) -> bool,
    ) -> Result<()> {
        for Reverse(p) in self.lanes.keys() {
            if !self.walk_lane(ix, *p, f)? {
                break;
            }
        }
        Ok(())
    }

    /// Up to `limit` messages with ids above `after`, in id order, in any state.
    pub fn page(&self, ix: &mut IndexStore, after: u64, limit: usize) -> Result<Vec<(u64, Found)>> {
        let mut v: Vec<(u64, Found)> = Vec::new();
        for (Reverse(p), lane) in &self.lanes {
            let mut n = 0;
            let gone = |id: u64| self.touched.contains_key(&id);
            lane.stream
                .walk_from(lane_key(self.id, *p), ix, after, &gone, |e| {
                    v.push((e.id, Found::Stream(untouched(&e, *p))));
                    n += 1;
                    n < limit
                })?;
        }
        v.extend(
            self.touched
                .iter()
                .filter(|(id, _)| **id > after)
                .map(|(id, t)| (*id, Found::Touched(t.clone()))),
        );
        v.sort_unstable_by_key(|(id, _)| *id);
        v.truncate(limit);
        Ok(v)
    }

    /// Every message, in id order (for inspection).
    pub fn all(&self, ix: &mut IndexStore) -> Result<Vec<(u64, Found)>> {
        let mut v: Vec<(u64, Found)> = Vec::new();
        for (Reverse(p), lane) in &self.lanes {
            let gone = |id: u64| self.touched.contains_key(&id);
            lane.stream.walk(lane_key(self.id, *p), ix, &gone, |e| {
                v.push((e.id, Found::Stream(untouched(&e, *p))));
                true
            })?;
        }
        v.extend(
            self.touched
                .iter()
                .map(|(id, t)| (*id, Found::Touched(t.clone()))),
        );
        v.sort_unstable_by_key(|(id, _)| *id);
        Ok(v)
    }

    /// Messages whose records are in segment `seg`: (id, record), for compaction.
    pub fn records_in(&self, ix: &mut IndexStore, seg: u64) -> Result<Vec<(u64, RecRef)>> {
        let mut out: Vec<(u64, RecRef)> = self
            .touched
            .iter()
            .filter(|(_, t)| t.rec.seg == seg)
            .map(|(id, t)| (*id, t.rec))
            .collect();
        let gone = |id: u64| self.touched.contains_key(&id);
        for (Reverse(p), lane) in &self.lanes {
            for e in lane
                .stream
                .entries_in(seg, lane_key(self.id, *p), ix, &gone)?
            {
                out.push((e.id, untouched(&e, *p).rec));
            }
        }
        out.sort_unstable_by_key(|(id, _)| *id);
        Ok(out)
    }

    /// When the oldest message was pushed (any state), without a scan.
    pub fn oldest_enqueued(&mut self, ix: &mut IndexStore) -> Result<Option<u64>> {
        let qid = self.id;
        let mut oldest = self.touched.values().map(|t| t.rec.enqueued_ms).min();
        let Queue { lanes, touched, .. } = self;
        for (Reverse(p), lane) in lanes {
            if let Some(t) = lane
                .stream
                .oldest(lane_key(qid, *p), ix, &|id| touched.contains_key(&id))?
            {
                oldest = Some(oldest.map_or(t, |o| o.min(t)));
            }
        }
        Ok(oldest)
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct TopicMsg {
    pub seq: u64,
    pub published_ms: u64,
    pub rec: RecRef,
}

/// Totals of a topic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopicCounters {
    pub published: u64,
    /// Messages dropped by retention (age, count or bytes).
    pub expired: u64,
}

#[derive(Debug)]
pub(crate) struct Topic {
    pub name: String,
    pub config: TopicConfig,
    pub msgs: VecDeque<TopicMsg>,
    pub next_seq: u64,
    pub bytes: u64,
    pub cursors: BTreeMap<String, u64>,
    /// Messages below this sequence number are known trimmed by the log (a `TopicTrim`
    /// entry); an age trim beyond it is logged by the next write to the topic.
    pub logged_trim_seq: u64,
    pub counters: TopicCounters,
    pub signal: Arc<Signal>,
}

impl Topic {
    /// Drops messages past the retention limits: age (by the clock, so only operations call
    /// this, never `apply`) and count and bytes. Returns the records dropped.
    pub fn trim(&mut self, now: u64) -> Vec<RecRef> {
        self.trim_where(|published_ms, age_ms| published_ms.saturating_add(age_ms) <= now)
    }

    /// Drops every message below `seq` (a logged trim).
    fn trim_below(&mut self, seq: u64) -> Vec<RecRef> {
        let mut gone = Vec::new();
        while let Some(front) = self.msgs.front() {
            if front.seq >= seq {
                break;
            }
            self.bytes -= u64::from(front.rec.size);
            gone.push(front.rec);
            self.msgs.pop_front();
            self.counters.expired += 1;
        }
        self.logged_trim_seq = self.logged_trim_seq.max(seq);
        gone
    }

    /// The sequence number below which messages are trimmed now (in memory) but not yet by the
    /// log, if any: what a `TopicTrim` entry must record.
    pub fn unlogged_trim(&self) -> Option<u64> {
        let front = self.msgs.front().map_or(self.next_seq, |m| m.seq);
        (front > self.logged_trim_seq).then_some(front)
    }

    /// Drops messages past the count and byte limits (what `apply` may do: it depends on the
    /// log alone).
    fn trim_size(&mut self) -> Vec<RecRef> {
        self.trim_where(|_, _| false)
    }

    fn trim_where(&mut self, too_old: impl Fn(u64, u64) -> bool) -> Vec<RecRef> {
        let age_ms = self.config.retention.as_millis() as u64;
        let mut gone = Vec::new();
        while let Some(front) = self.msgs.front() {
            let too_old = too_old(front.published_ms, age_ms);
            let too_many =
                self.config.max_messages != 0 && self.msgs.len() as u64 > self.config.max_messages;
            let too_big = self.config.max_bytes != 0 && self.bytes > self.config.max_bytes;
            if !(too_old || too_many || too_big) {
                break;
            }
            self.bytes -= u64::from(front.rec.size);
            gone.push(front.rec);
            self.msgs.pop_front();
            self.counters.expired += 1;
        }
        gone
    }

    /// The position of the oldest retained message with `seq >= from`. Sequence numbers
    /// increase but may have gaps (frames skipped by `RecoveryPolicy::Skip`), hence a search.
    pub fn position(&self, from: u64) -> Option<usize> {
        let idx = self.msgs.partition_point(|m| m.seq < from);
        (idx < self.msgs.len()).then_some(idx)
    }
}

/// How much of a segment is still needed: live records located in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SegLive {
    pub records: u64,
    pub bytes: u64,
    /// Bytes of every record ever written to the segment (live or not).
    pub total_bytes: u64,
}

/// The whole in-memory state.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub queues: FxHashMap<u32, Queue>,
    pub queue_ids: FxHashMap<String, u32>,
    pub topics: FxHashMap<u32, Topic>,
    pub topic_ids: FxHashMap<String, u32>,
    pub next_queue_id: u32,
    pub next_topic_id: u32,
    pub next_msg_id: u64,
    /// Live records per segment (what segment deletion and compaction go by).
    pub seg_live: BTreeMap<u64, SegLive>,
    /// Notified when a topic is created (wakes readers waiting on a topic that did not exist).
    pub created: Arc<Signal>,
    /// Entries applied since the state was created (recovery reports it).
    pub entries_applied: u64,
    /// The segment indexes (stream entries).
    pub ix: IndexStore,
    /// Messages whose payload is in a blob file: (queue, id) -> blob id.
    pub msg_blob: FxHashMap<(u32, u64), u64>,
    /// Live messages per blob (a dead letter's copy shares its original's blob).
    pub blob_refs: HashMap<u64, u32>,
    /// Blobs no live message refers to any more: deleted once a checkpoint covers that.
    pub dead_blobs: BTreeSet<u64>,
}

fn rec_of(e: &Enqueue, at: At) -> RecRef {
    RecRef {
        seg: at.seg,
        off: at.off,
        len: at.len,
        size: message_size(e) as u32 | if e.carried.is_some() { SIZE_CARRIED } else { 0 },
        crc: at.crc,
        prio: e.priority,
        expires_ms: e.expires_ms,
        enqueued_ms: e.enqueued_ms,
    }
}

impl State {
    pub fn new(ix: IndexStore) -> Self {
        Self {
            next_queue_id: 1,
            next_topic_id: 1,
            next_msg_id: 1,
            ix,
            ..Self::default()
        }
    }

    /// Moves the floor of every stream whose dead set holds more than `threshold` ids past the
    /// dead ids at its front (reads the indexes: recovery calls it while replaying).
    pub fn normalize_streams(&mut self, threshold: usize) -> Result<()> {
        let Self { queues, ix, .. } = self;
        for q in queues.values_mut() {
            let qid = q.id;
            let Queue { lanes, touched, .. } = q;
            for (Reverse(p), lane) in lanes {
                if lane.stream.dead_len() > threshold {
                    lane.stream
                        .front(lane_key(qid, *p), ix, &|id| touched.contains_key(&id))?;
                }
            }
        }
        Ok(())
    }

    /// Message `id` of queue `qid`, in any state.
    pub fn find(&mut self, qid: u32, id: u64) -> Result<Option<Found>> {
        let Self { queues, ix, .. } = self;
        match queues.get(&qid) {
            Some(q) => q.find(ix, id),
            None => Ok(None),
        }
    }

    pub fn queue_by_name(&self, name: &str) -> Option<&Queue> {
        self.queue_ids.get(name).and_then(|id| self.queues.get(id))
    }
    pub fn queue_by_name_mut(&mut self, name: &str) -> Option<&mut Queue> {
        let id = *self.queue_ids.get(name)?;
        self.queues.get_mut(&id)
    }
    pub fn topic_by_name(&self, name: &str) -> Option<&Topic> {
        self.topic_ids.get(name).and_then(|id| self.topics.get(id))
    }

    /// Trims topic `tid` by age (and size) at `now`, in memory (see `Topic::trim`).
    pub fn trim_topic(&mut self, tid: u32, now: u64) {
        let Some(t) = self.topics.get_mut(&tid) else {
            return;
        };
        for rec in t.trim(now) {
            self.live_sub(&rec);
        }
    }

    fn live_add(&mut self, rec: &RecRef) {
        // Records nearly always go to the newest segment: its entry is the last one.
        let s = match self.seg_live.last_entry() {
            Some(e) if *e.key() == rec.seg => e.into_mut(),
            _ => self.seg_live.entry(rec.seg).or_default(),
        };
        s.records += 1;
        s.bytes += u64::from(rec.len);
        s.total_bytes += u64::from(rec.len);
    }

    pub(crate) fn live_sub(&mut self, rec: &RecRef) {
        self.live_sub_n(rec.seg, 1, u64::from(rec.len));
    }

    fn live_sub_n(&mut self, seg: u64, records: u64, bytes: u64) {
        if let Some(s) = self.seg_live.get_mut(&seg) {
            s.records = s.records.saturating_sub(records);
            s.bytes = s.bytes.saturating_sub(bytes);
        }
    }

    fn ref_blob(&mut self, queue: u32, id: u64, blob: u64) {
        if self.msg_blob.insert((queue, id), blob).is_none() {
            *self.blob_refs.entry(blob).or_default() += 1;
            self.dead_blobs.remove(&blob);
        }
    }

    fn unref_blob(&mut self, queue: u32, id: u64) {
        if self.msg_blob.is_empty() {
            return;
        }
        let Some(blob) = self.msg_blob.remove(&(queue, id)) else {
            return;
        };
        if let Some(n) = self.blob_refs.get_mut(&blob) {
            *n -= 1;
            if *n == 0 {
                self.blob_refs.remove(&blob);
                self.dead_blobs.insert(blob);
            }
        }
    }

    fn release(&mut self, r: &Released) {
        for &(seg, n, len) in &r.per_seg {
            self.live_sub_n(seg, n, len);
        }
    }

    /// Applies one committed (or about to be committed) entry. `at` is where the entry sits
    /// in the log (needed for records: `ENQUEUE`, `PUBLISH`). Deliberately no clock: replay
    /// must rebuild the same state whatever the time at reopen (decisions that depend on time
    /// are made by operations, lazily: `Queue::promote`, `Topic::trim`).
    pub fn apply(&mut self, entry: Entry, at: Option<At>) {
        self.entries_applied += 1;
        match entry {
            Entry::QueueDef {
                queue,
                name,
                config,
            } => {
                self.next_queue_id = self.next_queue_id.max(queue.saturating_add(1));
                if let Some(q) = self.queues.get_mut(&queue) {
                    q.config = config;
                } else {
                    self.queue_ids.insert(name.clone(), queue);
                    self.queues.insert(queue, Queue::new(queue, name, config));
                }
            }
            Entry::QueueDrop { queue } => {
                let blobs: Vec<u64> = self
                    .msg_blob
                    .keys()
                    .filter(|(q, _)| *q == queue)
                    .map(|(_, id)| *id)
                    .collect();
                for id in blobs {
                    self.unref_blob(queue, id);
                }
                if let Some(q) = self.queues.remove(&queue) {
                    self.queue_ids.remove(&q.name);
                    for lane in q.lanes.values() {
                        let r = lane.stream.release_all();
                        self.release(&r);
                    }
                    for t in q.touched.values() {
                        self.live_sub(&t.rec);
                    }
                    q.signal.notify();
                }
            }
            Entry::Enqueue(e) => {
                if let Some(at) = at {
                    self.apply_enqueue(e, at);
                }
            }
            Entry::Lease {
                queue,
                id,
                receive_count,
                lease_gen,
                until_ms,
                first_received_ms,
                rec,
            } => {
                let Some(q) = self.queues.get_mut(&queue) else {
                    return;
                };
                if q.touched.contains_key(&id) {
                    q.detach(id);
                } else {
                    // First lease: the message leaves its lane's stream, from the front.
                    let Some(rec) = rec else { return };
                    let taken = q.lanes.get_mut(&Reverse(rec.prio)).is_some_and(|l| {
                        l.stream
                            .take(id, rec.seg, rec.size, rec.len, rec.enqueued_ms)
                    });
                    if !taken {
                        return;
                    }
                    // Not attached anywhere yet: `attach` below puts it in the leased set.
                    q.touched_bytes += rec.bytes();
                    q.touched.insert(
                        id,
                        Touched {
                            rec,
                            priority: rec.prio,
                            receive_count: 0,
                            lease_gen: 0,
                            first_received_ms: 0,
                            state: MessageState::Leased(until_ms),
                            delivered: false,
                        },
                    );
                }
                if let Some(t) = q.touched.get_mut(&id) {
                    t.receive_count = receive_count;
                    t.lease_gen = lease_gen;
                    t.first_received_ms = first_received_ms;
                    t.delivered = true;
                }
                q.attach(id, MessageState::Leased(until_ms));
            }
            Entry::Nack {
                queue,
                id,
                lease_gen,
                visible_ms,
                priority,
            } => {
                let Some(q) = self.queues.get_mut(&queue) else {
                    return;
                };
                if !q.touched.contains_key(&id) {
                    return;
                }
                q.detach(id);
                if let Some(t) = q.touched.get_mut(&id) {
                    t.lease_gen = lease_gen;
                    t.priority = priority;
                    t.delivered = false;
                }
                let state = if visible_ms > 0 {
                    MessageState::Delayed(visible_ms)
                } else {
                    MessageState::Ready
                };
                q.attach(id, state);
            }
            Entry::Remove {
                queue,
                id,
                reason,
                rec,
            } => {
                let Some(q) = self.queues.get_mut(&queue) else {
                    return;
                };
                let rec = match (q.remove_touched(id), rec) {
                    (Some(r), _) => r,
                    (None, Some(r)) => {
                        let taken = q.lanes.get_mut(&Reverse(r.prio)).is_some_and(|l| {
                            l.stream.take(id, r.seg, r.size, r.len, r.enqueued_ms)
                        });
                        if !taken {
                            return;
                        }
                        r
                    }
                    (None, None) => return,
                };
                let c = &mut q.counters;
                match reason {
                    RemoveReason::Acked => c.acked += 1,
                    RemoveReason::Popped => c.popped += 1,
                    RemoveReason::Deleted => c.deleted += 1,
                    RemoveReason::Expired => c.expired += 1,
                    RemoveReason::Evicted => c.evicted += 1,
                    RemoveReason::DeadLettered => c.dead_lettered += 1,
                    // Counted on the queue it goes back to.
                    RemoveReason::Redriven => {}
                }
                self.live_sub(&rec);
                self.unref_blob(queue, id);
            }
            Entry::Purge { queue, below_id } => {
                let Some(q) = self.queues.get_mut(&queue) else {
                    return;
                };
                let mut gone: Vec<RecRef> = Vec::new();
                let ids: Vec<u64> = q
                    .touched
                    .keys()
                    .copied()
                    .filter(|&i| i < below_id)
                    .collect();
                for id in ids {
                    if let Some(rec) = q.remove_touched(id) {
                        gone.push(rec);
                    }
                }
                let mut released = Vec::new();
                for lane in q.lanes.values_mut() {
                    released.push(lane.stream.purge_below(below_id));
                }
                q.counters.purged +=
                    gone.len() as u64 + released.iter().map(|r| r.count).sum::<u64>();
                let blobs: Vec<u64> = self
                    .msg_blob
                    .keys()
                    .filter(|(q, id)| *q == queue && *id < below_id)
                    .map(|(_, id)| *id)
                    .collect();
                for id in blobs {
                    self.unref_blob(queue, id);
                }
                for rec in gone {
                    self.live_sub(&rec);
                }
                for r in &released {
                    self.release(r);
                }
            }
            Entry::TopicDef {
                topic,
                name,
                config,
            } => {
                self.next_topic_id = self.next_topic_id.max(topic.saturating_add(1));
                if let Some(t) = self.topics.get_mut(&topic) {
                    t.config = config;
                    let gone = t.trim_size();
                    for rec in gone {
                        self.live_sub(&rec);
                    }
                } else {
                    self.topic_ids.insert(name.clone(), topic);
                    self.topics.insert(
                        topic,
                        Topic {
                            name,
                            config,
                            msgs: VecDeque::new(),
                            next_seq: 1,
                            bytes: 0,
                            cursors: BTreeMap::new(),
                            logged_trim_seq: 0,
                            counters: TopicCounters::default(),
                            signal: Arc::new(Signal::default()),
                        },
                    );
                }
            }
            Entry::TopicDrop { topic } => {
                if let Some(t) = self.topics.remove(&topic) {
                    self.topic_ids.remove(&t.name);
                    for m in &t.msgs {
                        self.live_sub(&m.rec);
                    }
                    t.signal.notify();
                }
            }
            Entry::Publish {
                topic,
                seq,
                published_ms,
                payload,
            } => {
                let Some(at) = at else { return };
                let Some(t) = self.topics.get_mut(&topic) else {
                    return;
                };
                if seq < t.next_seq {
                    return;
                }
                let rec = RecRef {
                    seg: at.seg,
                    off: at.off,
                    len: at.len,
                    size: payload.len() as u32,
                    crc: at.crc,
                    prio: 0,
                    expires_ms: 0,
                    enqueued_ms: published_ms,
                };
                t.next_seq = seq + 1;
                t.bytes += payload.len() as u64;
                t.counters.published += 1;
                t.msgs.push_back(TopicMsg {
                    seq,
                    published_ms,
                    rec,
                });
                let gone = t.trim_size();
                self.live_add(&rec);
                for rec in gone {
                    self.live_sub(&rec);
                }
            }
            Entry::Cursor { topic, name, seq } => {
                if let Some(t) = self.topics.get_mut(&topic) {
                    t.cursors.insert(name, seq);
                }
            }
            Entry::TopicTrim { topic, below_seq } => {
                if let Some(t) = self.topics.get_mut(&topic) {
                    let gone = t.trim_below(below_seq);
                    for rec in gone {
                        self.live_sub(&rec);
                    }
                }
            }
            Entry::Catalog {
                next_msg_id,
                next_queue_id,
                next_topic_id,
                topic_seqs,
            } => {
                self.next_msg_id = self.next_msg_id.max(next_msg_id);
                self.next_queue_id = self.next_queue_id.max(next_queue_id);
                self.next_topic_id = self.next_topic_id.max(next_topic_id);
                for (topic, seq) in topic_seqs {
                    if let Some(t) = self.topics.get_mut(&topic) {
                        t.next_seq = t.next_seq.max(seq);
                    }
                }
            }
        }
    }

    /// The entries that restate the catalog (see `Entry::Catalog`), as of now.
    pub fn catalog_entries(&self) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut qids: Vec<&u32> = self.queues.keys().collect();
        qids.sort_unstable();
        for qid in qids {
            let q = &self.queues[qid];
            out.push(Entry::QueueDef {
                queue: *qid,
                name: q.name.clone(),
                config: q.config.clone(),
            });
        }
        let mut tids: Vec<&u32> = self.topics.keys().collect();
        tids.sort_unstable();
        let mut topic_seqs = Vec::new();
        for tid in tids {
            let t = &self.topics[tid];
            out.push(Entry::TopicDef {
                topic: *tid,
                name: t.name.clone(),
                config: t.config.clone(),
            });
            for (name, seq) in &t.cursors {
                out.push(Entry::Cursor {
                    topic: *tid,
                    name: name.clone(),
                    seq: *seq,
                });
            }
            topic_seqs.push((*tid, t.next_seq));
        }
        out.push(Entry::Catalog {
            next_msg_id: self.next_msg_id,
            next_queue_id: self.next_queue_id,
            next_topic_id: self.next_topic_id,
            topic_seqs,
        });
        out
    }

    fn apply_enqueue(&mut self, e: Enqueue, at: At) {
        self.next_msg_id = self.next_msg_id.max(e.id.saturating_add(1));
        let entry = index_entry(&e, at);
        if let Some((key, ie)) = entry {
            // The index holds every record of the segment (it is rebuilt from it).
            self.ix.append(at.seg, key, ie);
        }
        let Some(q) = self.queues.get_mut(&e.queue) else {
            return;
        };
        let rec = rec_of(&e, at);
        if let Some((from_seg, from_off, from_len)) = e.relocated_from {
            // Compaction's copy: the message moves here, nothing else changes.
            if let Some(t) = q.touched.get_mut(&e.id) {
                let old = t.rec;
                if (old.seg, old.off) == (from_seg, from_off) {
                    t.rec = rec;
                    self.live_sub(&old);
                    self.live_add(&rec);
                }
                return;
            }
            if let Some((_, ie)) = entry {
                let moved = q
                    .lanes
                    .get_mut(&Reverse(e.priority))
                    .is_some_and(|l| l.stream.relocate(e.id, from_seg, at.seg, &ie));
                if moved {
                    self.live_sub_n(from_seg, 1, u64::from(from_len));
                    self.live_add(&rec);
                    return;
                }
            }
            // Not known here: its original record is gone (the whole log is replayed after
            // the segments before this one were deleted). It is a message like any other
            // (its delivery history, in the deleted segments, is lost: it is redelivered).
        }
        if q.touched.contains_key(&e.id) {
            return;
        }
        let added = if let Some((_, ie)) = entry {
            q.lane(e.priority).stream.push(at.seg, &ie)
        } else {
            // Delayed at push: out of the stream from the start.
            let c = e.carried;
            q.add_touched(
                e.id,
                Touched {
                    rec,
                    priority: e.priority,
                    receive_count: c.map_or(0, |c| c.receive_count),
                    lease_gen: c.map_or(0, |c| c.lease_gen),
                    first_received_ms: c.map_or(0, |c| c.first_received_ms),
                    state: MessageState::Delayed(e.visible_ms),
                    delivered: false,
                },
            );
            true
        };
        if !added {
            return;
        }
        if let Some((blob, _)) = e.blob {
            self.ref_blob(e.queue, e.id, blob);
        }
        let Some(q) = self.queues.get_mut(&e.queue) else {
            return;
        };
        if e.relocated_from.is_some() {
            // Counted when it was pushed.
        } else if e.carried.is_some() {
            q.counters.dead_letters_received += 1;
        } else if e.redrive {
            q.counters.redriven += 1;
        } else {
            q.counters.pushed += 1;
        }
        self.live_add(&rec);
    }

    /// After recovery: leases open at the crash are released (their receive counts kept).
    pub fn release_all_leases(&mut self) -> usize {
        let mut n = 0;
        for q in self.queues.values_mut() {
            let leased: Vec<(u64, u64)> = std::mem::take(&mut q.leased).into_iter().collect();
            for (_, id) in leased {
                q.attach(id, MessageState::Ready);
                n += 1;
            }
        }
        n
    }
}

// --- checkpoint encoding -------------------------------------------------------------------

fn encode_config_entry(e: &mut Enc, entry: &Entry) {
    let mut b = Vec::new();
    entry.encode(&mut b);
    e.bytes(&b);
}

fn state_tag(s: MessageState) -> (u8, u64) {
    match s {
        MessageState::Ready => (0, 0),
        MessageState::Delayed(at) => (1, at),
        MessageState::Leased(until) => (2, until),
    }
}

fn counters_of(c: &QueueCounters) -> [u64; 10] {
    [
        c.pushed,
        c.acked,
        c.popped,
        c.deleted,
        c.expired,
        c.evicted,
        c.purged,
        c.dead_lettered,
        c.redriven,
        c.dead_letters_received,
    ]
}

impl State {
    /// The checkpoint encoding of the whole state (indexes excepted: they are in their files,
    /// or rebuilt from the segments).
    pub fn encode(&self, e: &mut Enc) {
        e.u32(self.next_queue_id);
        e.u32(self.next_topic_id);
        e.u64(self.next_msg_id);
        e.u64(self.ix.sealed_through());
        e.len(self.seg_live.len());
        for (seg, l) in &self.seg_live {
            e.u64(*seg);
            e.u64(l.records);
            e.u64(l.bytes);
            e.u64(l.total_bytes);
        }
        let mut blobs: Vec<(&(u32, u64), &u64)> = self.msg_blob.iter().collect();
        blobs.sort_unstable();
        e.len(blobs.len());
        for ((q, id), b) in blobs {
            e.u32(*q);
            e.u64(*id);
            e.u64(*b);
        }
        e.len(self.dead_blobs.len());
        for b in &self.dead_blobs {
            e.u64(*b);
        }
        let mut qids: Vec<&u32> = self.queues.keys().collect();
        qids.sort_unstable();
        e.len(qids.len());
        for qid in qids {
            let q = &self.queues[qid];
            encode_config_entry(
                e,
                &Entry::QueueDef {
                    queue: q.id,
                    name: q.name.clone(),
                    config: q.config.clone(),
                },
            );
            for c in counters_of(&q.counters) {
                e.u64(c);
            }
            // Lanes whose stream is empty are left out (a lane exists in memory once a message
            // of that priority was seen, even by a read): what is written must not depend on
            // what was read.
            let lanes: Vec<(&u8, &Lane)> = q
                .lanes
                .iter()
                .filter(|(_, l)| !l.stream.is_empty())
                .map(|(Reverse(p), l)| (p, l))
                .collect();
            e.len(lanes.len());
            for (p, lane) in lanes {
                e.u8(*p);
                lane.stream.encode(e);
            }
            let mut ids: Vec<&u64> = q.touched.keys().collect();
            ids.sort_unstable();
            e.len(ids.len());
            for id in ids {
                let t = &q.touched[id];
                e.u64(*id);
                e.rec(&t.rec);
                e.u8(t.priority);
                e.u32(t.receive_count);
                e.u32(t.lease_gen);
                e.u64(t.first_received_ms);
                let (tag, at) = state_tag(t.state);
                e.u8(tag);
                e.u64(at);
                e.u8(u8::from(t.delivered));
            }
        }
        let mut tids: Vec<&u32> = self.topics.keys().collect();
        tids.sort_unstable();
        e.len(tids.len());
        for tid in tids {
            let t = &self.topics[tid];
            encode_config_entry(
                e,
                &Entry::TopicDef {
                    topic: *tid,
                    name: t.name.clone(),
                    config: t.config.clone(),
                },
            );
            e.u64(t.next_seq);
            e.u64(t.bytes);
            e.u64(t.logged_trim_seq);
            e.u64(t.counters.published);
            e.u64(t.counters.expired);
            e.len(t.cursors.len());
            for (name, seq) in &t.cursors {
                e.str(name);
                e.u64(*seq);
            }
            e.len(t.msgs.len());
            for m in &t.msgs {
                e.u64(m.seq);
                e.u64(m.published_ms);
                e.rec(&m.rec);
            }
        }
    }

    /// Decodes a checkpoint's state; `ix` reads the segment indexes.
    pub fn decode(d: &mut Dec<'_>, mut ix: IndexStore) -> DecResult<State> {
        let next_queue_id = d.u32()?;
        let next_topic_id = d.u32()?;
        let next_msg_id = d.u64()?;
        ix.set_sealed_through(d.u64()?);
        let mut seg_live = BTreeMap::new();
        for _ in 0..d.len(32)? {
            seg_live.insert(
                d.u64()?,
                SegLive {
                    records: d.u64()?,
                    bytes: d.u64()?,
                    total_bytes: d.u64()?,
                },
            );
        }
        let mut state = State {
            next_queue_id,
            next_topic_id,
            next_msg_id,
            seg_live,
            ix,
            ..State::default()
        };
        for _ in 0..d.len(20)? {
            let (q, id, b) = (d.u32()?, d.u64()?, d.u64()?);
            state.ref_blob(q, id, b);
        }
        for _ in 0..d.len(8)? {
            state.dead_blobs.insert(d.u64()?);
        }
        for _ in 0..d.len(8)? {
            let Ok(Entry::QueueDef {
                queue: id,
                name,
                config,
            }) = decode_record(d.bytes()?)
            else {
                return Err("a queue definition is damaged".into());
            };
            let mut q = Queue::new(id, name.clone(), config);
            let mut c = [0u64; 10];
            for v in &mut c {
                *v = d.u64()?;
            }
            q.counters = QueueCounters {
                pushed: c[0],
                acked: c[1],
                popped: c[2],
                deleted: c[3],
                expired: c[4],
                evicted: c[5],
                purged: c[6],
                dead_lettered: c[7],
                redriven: c[8],
                dead_letters_received: c[9],
                rejected_full: 0,
            };
            for _ in 0..d.len(1)? {
                let p = d.u8()?;
                let stream = Stream::decode(d)?;
                q.lanes.insert(
                    Reverse(p),
                    Lane {
                        stream,
                        returned: BTreeSet::new(),
                    },
                );
            }
            for _ in 0..d.len(8 + REC_LEN)? {
                let id = d.u64()?;
                let rec = d.rec()?;
                let priority = d.u8()?;
                let receive_count = d.u32()?;
                let lease_gen = d.u32()?;
                let first_received_ms = d.u64()?;
                let tag = d.u8()?;
                let at = d.u64()?;
                let state = match tag {
                    0 => MessageState::Ready,
                    1 => MessageState::Delayed(at),
                    2 => MessageState::Leased(at),
                    _ => return Err("unknown message state".into()),
                };
                let delivered = d.u8()? != 0;
                q.add_touched(
                    id,
                    Touched {
                        rec,
                        priority,
                        receive_count,
                        lease_gen,
                        first_received_ms,
                        state,
                        delivered,
                    },
                );
            }
            state.queue_ids.insert(name, id);
            state.queues.insert(id, q);
        }
        for _ in 0..d.len(8)? {
            let Ok(Entry::TopicDef {
                topic: id,
                name,
                config,
            }) = decode_record(d.bytes()?)
            else {
                return Err("a topic definition is damaged".into());
            };
            let next_seq = d.u64()?;
            let bytes = d.u64()?;
            let logged_trim_seq = d.u64()?;
            let counters = TopicCounters {
                published: d.u64()?,
                expired: d.u64()?,
            };
            let mut cursors = BTreeMap::new();
            for _ in 0..d.len(16)? {
                let n = d.str()?;
                cursors.insert(n, d.u64()?);
            }
            let n = d.len(16 + REC_LEN)?;
            let mut msgs = VecDeque::with_capacity(n);
            for _ in 0..n {
                msgs.push_back(TopicMsg {
                    seq: d.u64()?,
                    published_ms: d.u64()?,
                    rec: d.rec()?,
                });
            }
            state.topic_ids.insert(name.clone(), id);
            state.topics.insert(
                id,
                Topic {
                    name,
                    config,
                    msgs,
                    next_seq,
                    bytes,
                    cursors,
                    logged_trim_seq,
                    counters,
                    signal: Arc::new(Signal::default()),
                },
            );
        }
        Ok(state)
    }
}
