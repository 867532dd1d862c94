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

use crate::entry::{Enqueue, Entry, RecRef, RemoveReason};
use crate::options::{QueueConfig, TopicConfig};
use crate::signal::Signal;

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
    (e.payload.len()
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
    /// The record carries a dead letter's history (origin, counters).
    pub carried: bool,
}

/// A message in its lane's stream: never handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamEntry {
    pub id: u64,
    pub rec: RecRef,
    /// The receive count it carries (a dead letter keeps the count it had).
    pub rc: u32,
    /// The record carries a dead letter's history: read it for the full counters.
    pub carried: bool,
}

/// The messages of a lane never handed out, in id order.
#[derive(Debug, Default)]
pub(crate) struct Stream {
    entries: VecDeque<StreamEntry>,
    /// Every stream message with an id at or below this has left the stream.
    floor: u64,
    /// Stream messages above the floor that left out of order.
    dead: BTreeSet<u64>,
    pub live: u64,
    pub live_bytes: u64,
}

impl Stream {
    fn is_live(&self, id: u64) -> bool {
        id > self.floor && !self.dead.contains(&id)
    }

    /// Adds a pushed message (ids normally arrive in increasing order; an older id, possible
    /// only after damaged frames were skipped, is inserted in place). Returns false if the id
    /// is already there or below the floor (then the message does not exist).
    fn push(&mut self, e: StreamEntry) -> bool {
        if !self.is_live(e.id) {
            return false;
        }
        match self.entries.back() {
            Some(b) if b.id >= e.id => {
                let i = self.entries.partition_point(|x| x.id < e.id);
                if self.entries.get(i).is_some_and(|x| x.id == e.id) {
                    return false;
                }
                self.entries.insert(i, e);
            }
            _ => self.entries.push_back(e),
        }
        self.live += 1;
        self.live_bytes += u64::from(e.rec.size);
        true
    }

    /// The first message still in the stream (drops what left from the front).
    pub fn front(&mut self) -> Option<StreamEntry> {
        while let Some(e) = self.entries.front() {
            let id = e.id;
            if id <= self.floor {
                self.entries.pop_front();
            } else if self.dead.remove(&id) {
                self.floor = id;
                self.entries.pop_front();
            } else {
                return Some(*e);
            }
        }
        None
    }

    pub fn get(&self, id: u64) -> Option<&StreamEntry> {
        if !self.is_live(id) {
            return None;
        }
        let i = self.entries.partition_point(|x| x.id < id);
        self.entries.get(i).filter(|e| e.id == id)
    }

    /// The message leaves the stream (leased, popped, removed). Returns it, if it was there.
    fn take(&mut self, id: u64) -> Option<StreamEntry> {
        let e = *self.get(id)?;
        if self.front().is_some_and(|f| f.id == id) {
            self.floor = id;
            self.entries.pop_front();
        } else {
            self.dead.insert(id);
        }
        self.live -= 1;
        self.live_bytes -= u64::from(e.rec.size);
        Some(e)
    }

    /// Messages still in the stream, in id order.
    pub fn iter(&self) -> impl Iterator<Item = &StreamEntry> + '_ {
        self.entries.iter().filter(|e| self.is_live(e.id))
    }

    /// Every message below `below` leaves; returns them.
    fn purge_below(&mut self, below: u64) -> Vec<StreamEntry> {
        let gone: Vec<StreamEntry> = self.iter().filter(|e| e.id < below).copied().collect();
        for e in &gone {
            self.live -= 1;
            self.live_bytes -= u64::from(e.rec.size);
        }
        let floor = below.saturating_sub(1);
        if floor > self.floor {
            self.floor = floor;
            self.dead = self.dead.split_off(&below);
        }
        while self.entries.front().is_some_and(|e| e.id <= self.floor) {
            self.entries.pop_front();
        }
        gone
    }
}

/// One priority of a queue.
#[derive(Debug, Default)]
pub(crate) struct Lane {
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

/// A message as the state sees it: in its lane's stream, or touched.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Found<'a> {
    Stream(&'a StreamEntry),
    Touched(&'a Touched),
}

impl Found<'_> {
    pub fn rec(&self) -> RecRef {
        match self {
            Found::Stream(e) => e.rec,
            Found::Touched(t) => t.rec,
        }
    }
    pub fn expired(&self, now: u64) -> bool {
        let e = self.rec().expires_ms;
        e != 0 && e <= now
    }
}

#[derive(Debug)]
pub(crate) struct Queue {
    pub name: String,
    pub config: QueueConfig,
    /// Lanes by priority, highest first.
    pub lanes: BTreeMap<Reverse<u8>, Lane>,
    pub touched: HashMap<u64, Touched>,
    touched_bytes: u64,
    delayed: BTreeSet<(u64, u64)>,
    leased: BTreeSet<(u64, u64)>,
    pub counters: QueueCounters,
    pub signal: Arc<Signal>,
}

impl Queue {
    fn new(name: String, config: QueueConfig) -> Self {
        Self {
            name,
            config,
            lanes: BTreeMap::new(),
            touched: HashMap::new(),
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
    pub fn find(&self, id: u64) -> Option<Found<'_>> {
        if let Some(t) = self.touched.get(&id) {
            return Some(Found::Touched(t));
        }
        self.lanes
            .values()
            .find_map(|l| l.stream.get(id))
            .map(Found::Stream)
    }

    pub fn contains(&self, id: u64) -> bool {
        self.find(id).is_some()
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
        self.touched_bytes += u64::from(t.rec.size);
        self.touched.insert(id, t);
        self.attach(id, state);
    }

    /// Removes a message in any state; returns its record.
    fn take(&mut self, id: u64) -> Option<RecRef> {
        if self.touched.contains_key(&id) {
            self.detach(id);
            let t = self.touched.remove(&id)?;
            self.touched_bytes -= u64::from(t.rec.size);
            return Some(t.rec);
        }
        self.lanes
            .values_mut()
            .find_map(|l| l.stream.take(id))
            .map(|e| e.rec)
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
    pub fn next_ready(&mut self, lowest_first: bool, max_prio: u8) -> Option<u64> {
        let visit = |lane: &mut Lane| -> Option<u64> {
            let s = lane.stream.front().map(|e| e.id);
            let r = lane.returned.first().copied();
            match (s, r) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        };
        if lowest_first {
            for (Reverse(p), lane) in self.lanes.iter_mut().rev() {
                if *p <= max_prio {
                    if let Some(id) = visit(lane) {
                        return Some(id);
                    }
                }
            }
        } else {
            for (Reverse(p), lane) in &mut self.lanes {
                if *p <= max_prio {
                    if let Some(id) = visit(lane) {
                        return Some(id);
                    }
                }
            }
        }
        None
    }

    /// Ready messages of one lane in id order (stream and returned merged).
    pub fn lane_ready(&self, prio: u8) -> impl Iterator<Item = (u64, Found<'_>)> + '_ {
        let lane = self.lanes.get(&Reverse(prio));
        let mut stream = lane.into_iter().flat_map(|l| l.stream.iter()).peekable();
        let mut returned = lane
            .into_iter()
            .flat_map(|l| l.returned.iter())
            .filter_map(|id| self.touched.get(id).map(|t| (*id, t)))
            .peekable();
        std::iter::from_fn(move || {
            let take_stream = match (stream.peek(), returned.peek()) {
                (Some(s), Some((r, _))) => s.id < *r,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => return None,
            };
            if take_stream {
                stream.next().map(|e| (e.id, Found::Stream(e)))
            } else {
                returned.next().map(|(id, t)| (id, Found::Touched(t)))
            }
        })
    }

    /// Ready messages in delivery order (priority desc, id asc).
    pub fn ready_in_order(&self) -> impl Iterator<Item = (u64, Found<'_>)> + '_ {
        self.lanes
            .keys()
            .flat_map(move |Reverse(p)| self.lane_ready(*p))
    }

    /// Every message, in id order (for inspection).
    pub fn all(&self) -> Vec<(u64, Found<'_>)> {
        let mut v: Vec<(u64, Found<'_>)> = self
            .lanes
            .values()
            .flat_map(|l| l.stream.iter().map(|e| (e.id, Found::Stream(e))))
            .chain(self.touched.iter().map(|(id, t)| (*id, Found::Touched(t))))
            .collect();
        v.sort_unstable_by_key(|(id, _)| *id);
        v
    }

    /// Records of every message (for the per-segment accounting when the queue is dropped).
    fn records(&self) -> Vec<RecRef> {
        self.lanes
            .values()
            .flat_map(|l| l.stream.iter().map(|e| e.rec))
            .chain(self.touched.values().map(|t| t.rec))
            .collect()
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
}

/// The whole in-memory state.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub queues: HashMap<u32, Queue>,
    pub queue_ids: HashMap<String, u32>,
    pub topics: HashMap<u32, Topic>,
    pub topic_ids: HashMap<String, u32>,
    pub next_queue_id: u32,
    pub next_topic_id: u32,
    pub next_msg_id: u64,
    /// Live records per segment (what segment deletion and compaction go by).
    pub seg_live: BTreeMap<u64, SegLive>,
    /// Notified when a topic is created (wakes readers waiting on a topic that did not exist).
    pub created: Arc<Signal>,
    /// Entries applied since the state was created (recovery reports it).
    pub entries_applied: u64,
}

fn rec_of(e: &Enqueue, at: At) -> RecRef {
    RecRef {
        seg: at.seg,
        off: at.off,
        len: at.len,
        size: message_size(e) as u32,
        crc: at.crc,
        prio: e.priority,
        expires_ms: e.expires_ms,
        enqueued_ms: e.enqueued_ms,
    }
}

impl State {
    pub fn new() -> Self {
        Self {
            next_queue_id: 1,
            next_topic_id: 1,
            next_msg_id: 1,
            ..Self::default()
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
        let s = self.seg_live.entry(rec.seg).or_default();
        s.records += 1;
        s.bytes += u64::from(rec.len);
    }

    pub(crate) fn live_sub(&mut self, rec: &RecRef) {
        if let Some(s) = self.seg_live.get_mut(&rec.seg) {
            s.records = s.records.saturating_sub(1);
            s.bytes = s.bytes.saturating_sub(u64::from(rec.len));
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
                    self.queues.insert(queue, Queue::new(name, config));
                }
            }
            Entry::QueueDrop { queue } => {
                if let Some(q) = self.queues.remove(&queue) {
                    self.queue_ids.remove(&q.name);
                    for rec in q.records() {
                        self.live_sub(&rec);
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
                    // First lease: the message leaves its lane's stream.
                    let Some(rec) = rec else { return };
                    let Some(e) = q
                        .lanes
                        .get_mut(&Reverse(rec.prio))
                        .and_then(|l| l.stream.take(id))
                    else {
                        return;
                    };
                    q.add_touched(
                        id,
                        Touched {
                            rec: e.rec,
                            priority: e.rec.prio,
                            receive_count: 0,
                            lease_gen: 0,
                            first_received_ms: 0,
                            state: MessageState::Leased(until_ms),
                            delivered: false,
                            carried: e.carried,
                        },
                    );
                    q.detach(id);
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
                rec: _,
            } => {
                let Some(q) = self.queues.get_mut(&queue) else {
                    return;
                };
                let Some(rec) = q.take(id) else {
                    return;
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
                    if let Some(rec) = q.take(id) {
                        gone.push(rec);
                    }
                }
                for lane in q.lanes.values_mut() {
                    gone.extend(lane.stream.purge_below(below_id).iter().map(|e| e.rec));
                }
                q.counters.purged += gone.len() as u64;
                for rec in gone {
                    self.live_sub(&rec);
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
        }
    }

    fn apply_enqueue(&mut self, e: Enqueue, at: At) {
        self.next_msg_id = self.next_msg_id.max(e.id.saturating_add(1));
        let Some(q) = self.queues.get_mut(&e.queue) else {
            return;
        };
        if q.contains(e.id) {
            return;
        }
        let rec = rec_of(&e, at);
        let added = if e.visible_ms > 0 {
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
                    carried: c.is_some(),
                },
            );
            true
        } else {
            q.lane(e.priority).stream.push(StreamEntry {
                id: e.id,
                rec,
                rc: e.carried.map_or(0, |c| c.receive_count),
                carried: e.carried.is_some(),
            })
        };
        if !added {
            return;
        }
        if e.carried.is_some() {
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
