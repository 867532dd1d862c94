//! The in-memory state of a store: queues with their messages, topics with their retained
//! messages. It changes only through [`State::apply`], called with each log entry both on the
//! live path (right after the entry is encoded into the pending frame) and during recovery
//! (for each entry read back from the log), so a restart rebuilds exactly what was committed.
//!
//! `apply` never fails and never panics on entries that refer to things that do not exist
//! (possible after `RecoveryPolicy::Skip` dropped damaged frames): such entries are ignored.
//!
//! Per queue, a message is in exactly one state: ready (in a priority lane), delayed (in
//! `delayed`, keyed by visible-at) or leased (in `leased`, keyed by lease expiry). A lane keeps
//! freshly pushed ids in a `VecDeque` (they arrive in id order) and ids that became ready again
//! (nack, lease expiry, delay over) in a `BTreeSet`; the next message is the smaller of the two
//! fronts, which is FIFO by id within the priority. Lane entries are checked when reached and
//! skipped when stale (the message left, or is no longer ready in this lane), so removing a
//! message from the middle of a lane is O(1).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use crate::msgtable::MsgTable;
use bytes::Bytes;

use crate::entry::{Enqueue, Entry, MoveReason, RemoveReason};
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

#[derive(Debug, Clone)]
pub(crate) struct Msg {
    pub id: u64,
    pub priority: u8,
    pub enqueued_ms: u64,
    pub expires_ms: u64,
    pub payload: Bytes,
    pub receive_count: u32,
    pub lease_gen: u32,
    pub first_received_ms: u64,
    pub state: MessageState,
    /// The commit ticket of the entry that put the message here; readers that do not write
    /// (peek, get) only show messages whose ticket is committed.
    pub ticket: u64,
    /// A lease handed out the current `lease_gen` and no nack withdrew it since: only then
    /// does a receipt with that generation count (a nack bumps the generation without
    /// handing it to anyone).
    pub delivered: bool,
    /// Rarely used fields, boxed so that a plain message stays small (one per message is
    /// held in memory).
    pub extra: Option<Box<MsgExtra>>,
}

/// The fields most messages do not have.
#[derive(Debug, Clone, Default)]
pub(crate) struct MsgExtra {
    pub subject: Option<String>,
    pub headers: Vec<(String, Bytes)>,
    /// For a dead-lettered message: the queue it came from and its id there.
    pub origin: Option<(u32, u64)>,
}

impl Msg {
    pub fn size(&self) -> u64 {
        (self.payload.len()
            + self.subject().map_or(0, str::len)
            + self
                .headers()
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()) as u64
    }
    pub fn subject(&self) -> Option<&str> {
        self.extra.as_ref().and_then(|x| x.subject.as_deref())
    }
    pub fn headers(&self) -> &[(String, Bytes)] {
        self.extra.as_ref().map_or(&[], |x| &x.headers)
    }
    pub fn origin(&self) -> Option<(u32, u64)> {
        self.extra.as_ref().and_then(|x| x.origin)
    }
    fn set_origin(&mut self, origin: Option<(u32, u64)>) {
        match (&mut self.extra, origin) {
            (Some(x), o) => x.origin = o,
            (None, None) => {}
            (None, Some(o)) => {
                self.extra = Some(Box::new(MsgExtra {
                    origin: Some(o),
                    ..MsgExtra::default()
                }));
            }
        }
    }
    pub fn expired(&self, now: u64) -> bool {
        self.expires_ms != 0 && self.expires_ms <= now
    }
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

#[derive(Debug, Default)]
pub(crate) struct Lane {
    fresh: VecDeque<u64>,
    returned: BTreeSet<u64>,
}

#[derive(Debug)]
pub(crate) struct Queue {
    pub name: String,
    pub config: QueueConfig,
    /// Messages by id (sorted deque, see `msgtable.rs`).
    pub msgs: MsgTable,
    /// Lanes by priority, highest first.
    lanes: BTreeMap<Reverse<u8>, Lane>,
    delayed: BTreeSet<(u64, u64)>,
    leased: BTreeSet<(u64, u64)>,
    pub n_ready: u64,
    pub bytes: u64,
    pub counters: QueueCounters,
    pub signal: Arc<Signal>,
}

impl Queue {
    fn new(name: String, config: QueueConfig) -> Self {
        Self {
            name,
            config,
            msgs: MsgTable::default(),
            lanes: BTreeMap::new(),
            delayed: BTreeSet::new(),
            leased: BTreeSet::new(),
            n_ready: 0,
            bytes: 0,
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

    /// Takes a message out of its state structure (lanes are cleaned lazily).
    fn detach(&mut self, id: u64) {
        let Some(m) = self.msgs.get(id) else { return };
        match m.state {
            MessageState::Ready => {
                self.n_ready -= 1;
                if let Some(l) = self.lanes.get_mut(&Reverse(m.priority)) {
                    // Usually the message leaves from the front of its lane: drop it there
                    // now rather than finding it stale later.
                    // It can be in both (a replayed lease of a message not at the front, expired
                    // since): clear both.
                    if l.fresh.front() == Some(&id) {
                        l.fresh.pop_front();
                    }
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

    /// Puts a message (already detached, or new) into `state`. `fresh` is for pushes, which
    /// arrive in id order and go to the back of their lane.
    fn attach(&mut self, id: u64, state: MessageState, fresh: bool) {
        let Some(m) = self.msgs.get_mut(id) else {
            return;
        };
        m.state = state;
        match state {
            MessageState::Ready => {
                self.n_ready += 1;
                let lane = self.lanes.entry(Reverse(m.priority)).or_default();
                if fresh {
                    lane.fresh.push_back(id);
                } else {
                    lane.returned.insert(id);
                }
            }
            MessageState::Delayed(at) => {
                self.delayed.insert((at, id));
            }
            MessageState::Leased(until) => {
                self.leased.insert((until, id));
            }
        }
    }

    /// Adds a message in the state it carries (a delayed one stays delayed until `promote`
    /// finds it due: `apply` never reads the clock, so replay does not depend on it).
    fn insert(&mut self, m: Msg) {
        let id = m.id;
        let state = match m.state {
            MessageState::Delayed(at) => MessageState::Delayed(at),
            _ => MessageState::Ready,
        };
        self.bytes += m.size();
        self.msgs.insert(id, m);
        self.attach(id, state, true);
    }

    fn take(&mut self, id: u64) -> Option<Msg> {
        self.detach(id);
        let m = self.msgs.remove(id)?;
        self.bytes -= m.size();
        Some(m)
    }

    /// Makes due delayed messages and expired leases ready. Called before every read.
    pub fn promote(&mut self, now: u64) {
        while let Some(&(at, id)) = self.delayed.first() {
            if at > now {
                break;
            }
            self.delayed.pop_first();
            if let Some(m) = self.msgs.get_mut(id) {
                m.state = MessageState::Ready;
            }
            self.attach(id, MessageState::Ready, false);
        }
        while let Some(&(until, id)) = self.leased.first() {
            if until > now {
                break;
            }
            self.leased.pop_first();
            self.attach(id, MessageState::Ready, false);
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

    /// The next ready message of the lane of priority `prio` (lowest id first), cleaning stale
    /// lane entries on the way. Does not change the message.
    fn lane_front(&mut self, prio: u8) -> Option<u64> {
        let lane = self.lanes.get_mut(&Reverse(prio))?;
        while let Some(&id) = lane.fresh.front() {
            match self.msgs.get(id) {
                Some(m) if m.state == MessageState::Ready && m.priority == prio => break,
                _ => {
                    lane.fresh.pop_front();
                }
            }
        }
        while let Some(&id) = lane.returned.first() {
            match self.msgs.get(id) {
                Some(m) if m.state == MessageState::Ready && m.priority == prio => break,
                _ => {
                    lane.returned.pop_first();
                }
            }
        }
        let f = lane.fresh.front().copied();
        let r = lane.returned.first().copied();
        match (f, r) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next ready message in delivery order (priority desc, id asc), or with
    /// `lowest_first` from the lowest priority up; only lanes of priority <= `max_prio`.
    /// Lanes found empty are removed. No allocation: this runs once per message leased.
    pub fn next_ready(&mut self, lowest_first: bool, max_prio: u8) -> Option<u64> {
        use std::ops::Bound::{Excluded, Unbounded};
        let mut after: Option<Reverse<u8>> = None;
        loop {
            let key = {
                let mut range = match after {
                    None => self.lanes.range(..),
                    Some(k) if lowest_first => self.lanes.range(..k),
                    Some(k) => self.lanes.range((Excluded(k), Unbounded)),
                };
                let next = if lowest_first {
                    range.next_back()
                } else {
                    range.next()
                };
                *next?.0
            };
            after = Some(key);
            let p = key.0;
            if p > max_prio {
                continue;
            }
            if let Some(id) = self.lane_front(p) {
                return Some(id);
            }
            if self
                .lanes
                .get(&key)
                .is_some_and(|l| l.fresh.is_empty() && l.returned.is_empty())
            {
                self.lanes.remove(&key);
            }
        }
    }

    /// Ready messages in delivery order without changing anything (for peek), at most `n`,
    /// skipping those `skip` rejects.
    pub fn ready_in_order(&self, n: usize, mut keep: impl FnMut(&Msg) -> bool) -> Vec<u64> {
        let mut out = Vec::new();
        for (Reverse(prio), lane) in &self.lanes {
            let fresh = lane.fresh.iter().filter(|id| {
                self.msgs
                    .get(**id)
                    .is_some_and(|m| m.state == MessageState::Ready && m.priority == *prio)
            });
            // Merge the two id-ordered sequences.
            let mut fresh = fresh.peekable();
            let mut returned = lane.returned.iter().peekable();
            loop {
                if out.len() >= n {
                    return out;
                }
                let next = match (fresh.peek(), returned.peek()) {
                    (Some(&&f), Some(&&r)) if f == r => {
                        fresh.next();
                        returned.next()
                    }
                    (Some(&&f), Some(&&r)) => {
                        if f < r {
                            fresh.next()
                        } else {
                            returned.next()
                        }
                    }
                    (Some(_), None) => fresh.next(),
                    (None, Some(_)) => returned.next(),
                    (None, None) => break,
                };
                let Some(&id) = next else { break };
                if let Some(m) = self.msgs.get(id) {
                    if keep(m) {
                        out.push(id);
                    }
                }
            }
        }
        out
    }
}

#[derive(Debug, Clone)]
pub(crate) struct TopicMsg {
    pub seq: u64,
    pub published_ms: u64,
    pub payload: Bytes,
    pub ticket: u64,
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
    /// this, never `apply`) and count and bytes.
    pub fn trim(&mut self, now: u64) {
        self.trim_where(|published_ms, age_ms| published_ms.saturating_add(age_ms) <= now);
    }

    /// Drops every message below `seq` (a logged trim).
    pub fn trim_below(&mut self, seq: u64) {
        while let Some(front) = self.msgs.front() {
            if front.seq >= seq {
                break;
            }
            self.bytes -= front.payload.len() as u64;
            self.msgs.pop_front();
            self.counters.expired += 1;
        }
        self.logged_trim_seq = self.logged_trim_seq.max(seq);
    }

    /// The sequence number below which messages are trimmed now (in memory) but not yet by the
    /// log, if any: what a `TopicTrim` entry must record.
    pub fn unlogged_trim(&self) -> Option<u64> {
        let front = self.msgs.front().map_or(self.next_seq, |m| m.seq);
        (front > self.logged_trim_seq).then_some(front)
    }

    /// Drops messages past the count and byte limits (what `apply` may do: it depends on the
    /// log alone).
    pub fn trim_size(&mut self) {
        self.trim_where(|_, _| false);
    }

    fn trim_where(&mut self, too_old: impl Fn(u64, u64) -> bool) {
        let age_ms = self.config.retention.as_millis() as u64;
        while let Some(front) = self.msgs.front() {
            let too_old = too_old(front.published_ms, age_ms);
            let too_many =
                self.config.max_messages != 0 && self.msgs.len() as u64 > self.config.max_messages;
            let too_big = self.config.max_bytes != 0 && self.bytes > self.config.max_bytes;
            if !(too_old || too_many || too_big) {
                break;
            }
            self.bytes -= front.payload.len() as u64;
            self.msgs.pop_front();
            self.counters.expired += 1;
        }
    }

    /// The position of the oldest retained message with `seq >= from`. Sequence numbers
    /// increase but may have gaps (frames skipped by `RecoveryPolicy::Skip`), hence a search.
    pub fn position(&self, from: u64) -> Option<usize> {
        let idx = self.msgs.partition_point(|m| m.seq < from);
        (idx < self.msgs.len()).then_some(idx)
    }
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
    /// Notified when a topic is created (wakes readers waiting on a topic that did not exist).
    pub created: Arc<Signal>,
    /// Entries applied since the state was created (recovery reports it).
    pub entries_applied: u64,
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
    pub fn topic_by_name_mut(&mut self, name: &str) -> Option<&mut Topic> {
        let id = *self.topic_ids.get(name)?;
        self.topics.get_mut(&id)
    }
    pub fn topic_by_name(&self, name: &str) -> Option<&Topic> {
        self.topic_ids.get(name).and_then(|id| self.topics.get(id))
    }

    /// Applies one committed (or about to be committed) entry. `ticket` is the commit ticket
    /// of the frame holding it. Deliberately no clock: replay must rebuild the same state
    /// whatever the time at reopen (decisions that depend on time are made by operations,
    /// lazily: `Queue::promote`, `Topic::trim`).
    pub fn apply(&mut self, entry: Entry, ticket: u64) {
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
                    q.signal.notify();
                }
            }
            Entry::Enqueue(e) => self.apply_enqueue(e, ticket),
            Entry::Lease {
                queue,
                id,
                receive_count,
                lease_gen,
                until_ms,
                first_received_ms,
            } => {
                let Some(q) = self.queues.get_mut(&queue) else {
                    return;
                };
                if !q.msgs.contains_key(id) {
                    return;
                }
                q.detach(id);
                if let Some(m) = q.msgs.get_mut(id) {
                    m.receive_count = receive_count;
                    m.lease_gen = lease_gen;
                    m.first_received_ms = first_received_ms;
                    m.delivered = true;
                }
                q.attach(id, MessageState::Leased(until_ms), false);
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
                if !q.msgs.contains_key(id) {
                    return;
                }
                q.detach(id);
                if let Some(m) = q.msgs.get_mut(id) {
                    m.lease_gen = lease_gen;
                    m.priority = priority;
                }
                let state = if visible_ms > 0 {
                    MessageState::Delayed(visible_ms)
                } else {
                    MessageState::Ready
                };
                if let Some(m) = q.msgs.get_mut(id) {
                    m.delivered = false;
                }
                q.attach(id, state, false);
            }
            Entry::Remove { queue, id, reason } => {
                let Some(q) = self.queues.get_mut(&queue) else {
                    return;
                };
                if q.take(id).is_none() {
                    return;
                }
                let c = &mut q.counters;
                match reason {
                    RemoveReason::Acked => c.acked += 1,
                    RemoveReason::Popped => c.popped += 1,
                    RemoveReason::Deleted => c.deleted += 1,
                    RemoveReason::Expired => c.expired += 1,
                    RemoveReason::Evicted => c.evicted += 1,
                }
            }
            Entry::Move {
                src,
                id,
                dst,
                new_id,
                reason,
                at_ms: _,
            } => {
                self.next_msg_id = self.next_msg_id.max(new_id.saturating_add(1));
                if !self.queues.contains_key(&dst) {
                    return;
                }
                let Some(mut m) = self.queues.get_mut(&src).and_then(|q| q.take(id)) else {
                    return;
                };
                if let Some(q) = self.queues.get_mut(&src) {
                    if reason == MoveReason::Redrive {
                        // counted on the destination
                    } else {
                        q.counters.dead_lettered += 1;
                    }
                }
                m.id = new_id;
                m.ticket = ticket;
                // Nobody holds a lease on it in its new queue.
                m.delivered = false;
                if reason == MoveReason::Redrive {
                    m.receive_count = 0;
                    m.lease_gen = 0;
                    m.first_received_ms = 0;
                    m.set_origin(None);
                } else {
                    m.set_origin(Some((src, id)));
                }
                m.state = MessageState::Ready;
                if let Some(q) = self.queues.get_mut(&dst) {
                    if reason == MoveReason::Redrive {
                        q.counters.redriven += 1;
                    } else {
                        q.counters.dead_letters_received += 1;
                    }
                    q.insert(m);
                }
            }
            Entry::Purge { queue, below_id } => {
                let Some(q) = self.queues.get_mut(&queue) else {
                    return;
                };
                let ids: Vec<u64> = q.msgs.keys().copied().filter(|&i| i < below_id).collect();
                for id in ids {
                    q.take(id);
                    q.counters.purged += 1;
                }
                q.lanes.clear();
                // Re-seat what stays (messages pushed after the purge in the same frame).
                let mut ready: Vec<u64> = q
                    .msgs
                    .values()
                    .filter(|m| m.state == MessageState::Ready)
                    .map(|m| m.id)
                    .collect();
                ready.sort_unstable();
                for id in ready {
                    if let Some(m) = q.msgs.get(id) {
                        let p = m.priority;
                        q.lanes.entry(Reverse(p)).or_default().returned.insert(id);
                    }
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
                    t.trim_size();
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
                    t.signal.notify();
                }
            }
            Entry::Publish {
                topic,
                seq,
                published_ms,
                payload,
            } => {
                let Some(t) = self.topics.get_mut(&topic) else {
                    return;
                };
                if seq < t.next_seq {
                    return;
                }
                t.next_seq = seq + 1;
                t.bytes += payload.len() as u64;
                t.counters.published += 1;
                t.msgs.push_back(TopicMsg {
                    seq,
                    published_ms,
                    payload,
                    ticket,
                });
                t.trim_size();
            }
            Entry::Cursor { topic, name, seq } => {
                if let Some(t) = self.topics.get_mut(&topic) {
                    t.cursors.insert(name, seq);
                }
            }
            Entry::TopicTrim { topic, below_seq } => {
                if let Some(t) = self.topics.get_mut(&topic) {
                    t.trim_below(below_seq);
                }
            }
        }
    }

    fn apply_enqueue(&mut self, e: Enqueue, ticket: u64) {
        self.next_msg_id = self.next_msg_id.max(e.id.saturating_add(1));
        let Some(q) = self.queues.get_mut(&e.queue) else {
            return;
        };
        if q.msgs.contains_key(e.id) {
            return;
        }
        q.counters.pushed += 1;
        let state = if e.visible_ms > 0 {
            MessageState::Delayed(e.visible_ms)
        } else {
            MessageState::Ready
        };
        q.insert(Msg {
            id: e.id,
            priority: e.priority,
            enqueued_ms: e.enqueued_ms,
            expires_ms: e.expires_ms,
            extra: (e.subject.is_some() || !e.headers.is_empty()).then(|| {
                Box::new(MsgExtra {
                    subject: e.subject,
                    headers: e.headers,
                    origin: None,
                })
            }),
            payload: e.payload,
            receive_count: 0,
            lease_gen: 0,
            first_received_ms: 0,
            state,
            ticket,
            delivered: false,
        });
    }

    /// After recovery: leases open at the crash are released (their receive counts kept).
    pub fn release_all_leases(&mut self) -> usize {
        let mut n = 0;
        for q in self.queues.values_mut() {
            let leased: Vec<(u64, u64)> = std::mem::take(&mut q.leased).into_iter().collect();
            for (_, id) in leased {
                q.attach(id, MessageState::Ready, false);
                n += 1;
            }
        }
        n
    }
}
