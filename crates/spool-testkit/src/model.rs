//! A reference model of the engine's queue and topic semantics: plain, slow and obviously
//! correct (`BTreeMap`s and linear scans), driven by an explicit `now_ms` on every call (no
//! clock inside), deterministic and `Clone`. Tests run the same operations against a real
//! [`Store`] and a [`Model`] and compare every answer and the normalized [`ModelSnapshot`] of
//! both; the crash checker compares a recovered store with the model's snapshot taken with or
//! without the last uncertain operation.
//!
//! # What the model owns
//!
//! - **Ids** are store-wide, strictly increasing and allocated in operation order: one per
//!   pushed message, and one per move (dead-lettering and redrive give the moved message a new
//!   id). Queue and topic ids are allocated the same way (a dead letter refers to its source
//!   queue by id, so a source queue that is dropped and created again is a different queue).
//! - **Messages** are in one of three states: ready, delayed until a time, leased until a
//!   time. Delivery order is priority descending, then id ascending. Expired messages (TTL
//!   passed) are kept until a lease or pop reaches them, then dropped and counted; peek skips
//!   them; stats, get, messages and eviction still see them.
//! - **Receipts** are valid when the message exists (else `NotFound`), its `lease_gen` equals
//!   the receipt's generation, that generation was handed out by a lease and not withdrawn by a
//!   nack or a move since, and the message is leased or ready (an ack after the lease expired
//!   succeeds if nobody leased it since); else `LeaseLost`. `lease_gen` increments on every
//!   lease and every nack.
//! - **Capacity**: a push over `max_messages`/`max_bytes` fails with `Full` under
//!   `Overflow::Reject` (or when the batch alone is too big); under `EvictLowestPriority` ready
//!   messages of priority at most the lowest pushed are evicted, lowest priority first, then
//!   lowest id, only as many as needed; if that is not enough, `Full` and nothing is evicted.
//!   Moves (dead-lettering, redrive) ignore capacity.
//! - **Topics**: a retained log with sequence numbers from 1, trimmed from the front by age,
//!   count and bytes; cursors are plain [`Cursor`] values held by the caller; named cursors
//!   are stored positions.
//!
//! # Time
//!
//! Every call takes `now_ms`, and the model first brings the whole state to that instant:
//! delays and leases that are due become ready, topics are trimmed to their retention. The
//! engine does the same lazily, for the queue or topic a call touches (and in `messages`,
//! `stats`, `topic_stats`). The two agree whenever the store was observed (with
//! [`snapshot_store`]) after each clock change, as the proptest does. The clock may jump back
//! (a device without a real-time clock): nothing is made un-ready or un-trimmed, and times
//! compare as they do in the engine.
//!
//! # Not modelled
//!
//! Blocking and async calls (`lease_wait`, `topic_wait`, `*_async`: same semantics as their
//! synchronous forms), durability, IO errors, poisoning, and the encoded-size limit of a topic
//! batch beyond the engine's own formula.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use spool_engine::entry::Entry;
use spool_engine::options::{BATCH_LEN_MAX, DURATION_MAX, PAYLOAD_MAX, TXN_BYTES_MAX};
use spool_engine::{
    Cursor, CursorStart, Error, Message, MessageState, Options, Overflow, Push, QueueConfig,
    QueueCounters, QueueStats, Receipt, Store, TopicConfig, TopicCounters, TopicMessage,
    TopicStats,
};

/// The most messages one lease, pop, peek or redrive asks for (the engine's `READ_COUNT_MAX`,
/// which it does not export).
pub const READ_COUNT_MAX: usize = 10_000;
/// Most headers per message (the engine's `HEADERS_MAX`).
const HEADERS_MAX: usize = 64;
/// Longest subject or header name in bytes (the engine's `SUBJECT_LEN_MAX`).
const SUBJECT_LEN_MAX: usize = 4096;
/// Longest queue or topic name in bytes (the engine's `name::NAME_LEN_MAX`).
const NAME_LEN_MAX: usize = 128;
/// Room left in a frame for the queue definition and evictions sharing it with a batch.
const FRAME_HEADROOM: usize = 1 << 20;
/// What the engine counts per topic message when it bounds a publish batch.
const TOPIC_ENTRY_OVERHEAD: usize = 32;

/// The kind of an engine error, without its context: what the model answers and what a test
/// compares. [`kind`] maps a [`spool_engine::Error`] to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    InvalidName,
    PayloadTooLarge,
    EmptyBatch,
    BatchTooLarge,
    UnknownQueue,
    UnknownTopic,
    Exists,
    LeaseLost,
    NotFound,
    Full,
    NoDeadLetterQueue,
    InvalidArgument,
    Poisoned,
    Locked,
    Format,
    Corrupt,
    Closed,
    Io,
    /// A variant added to the engine after this model was written.
    Other,
}

/// The kind of an engine error.
pub fn kind(e: &Error) -> ErrorKind {
    match e {
        Error::InvalidName { .. } => ErrorKind::InvalidName,
        Error::PayloadTooLarge { .. } => ErrorKind::PayloadTooLarge,
        Error::EmptyBatch => ErrorKind::EmptyBatch,
        Error::BatchTooLarge { .. } => ErrorKind::BatchTooLarge,
        Error::UnknownQueue { .. } => ErrorKind::UnknownQueue,
        Error::UnknownTopic { .. } => ErrorKind::UnknownTopic,
        Error::Exists { .. } => ErrorKind::Exists,
        Error::LeaseLost { .. } => ErrorKind::LeaseLost,
        Error::NotFound { .. } => ErrorKind::NotFound,
        Error::Full { .. } => ErrorKind::Full,
        Error::NoDeadLetterQueue { .. } => ErrorKind::NoDeadLetterQueue,
        Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
        Error::Poisoned { .. } => ErrorKind::Poisoned,
        Error::Locked { .. } => ErrorKind::Locked,
        Error::Format { .. } => ErrorKind::Format,
        Error::Corrupt { .. } => ErrorKind::Corrupt,
        Error::Closed => ErrorKind::Closed,
        Error::Io { .. } => ErrorKind::Io,
        _ => ErrorKind::Other,
    }
}

/// The model's result type.
pub type ModelResult<T> = Result<T, ErrorKind>;

// --- snapshots ------------------------------------------------------------------------------

/// Where a message is, without its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StateKind {
    Ready,
    Delayed,
    Leased,
}

impl From<MessageState> for StateKind {
    fn from(s: MessageState) -> Self {
        match s {
            MessageState::Ready => StateKind::Ready,
            MessageState::Delayed(_) => StateKind::Delayed,
            MessageState::Leased(_) => StateKind::Leased,
        }
    }
}

/// One message of a [`QueueSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageSnapshot {
    pub id: u64,
    pub payload: Bytes,
    pub priority: u8,
    pub receive_count: u32,
    pub state: StateKind,
    pub dead_letter_of: Option<(String, u64)>,
}

impl MessageSnapshot {
    fn of(m: &Message) -> Self {
        Self {
            id: m.id,
            payload: m.payload.clone(),
            priority: m.priority,
            receive_count: m.receive_count,
            state: m.state.into(),
            dead_letter_of: m.dead_letter_of.clone(),
        }
    }
}

/// One queue of a [`ModelSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSnapshot {
    /// Every message, in id order.
    pub messages: Vec<MessageSnapshot>,
    /// The counters rebuilt from the log; `rejected_full` (not logged) is always 0 here.
    pub counters: QueueCounters,
}

/// One topic of a [`ModelSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSnapshot {
    /// Sequence number of the newest message ever published (0 when none).
    pub last_seq: u64,
    /// Retained messages: (seq, payload), oldest first.
    pub retained: Vec<(u64, Bytes)>,
    /// Named durable cursors and their positions, by name.
    pub cursors: Vec<(String, u64)>,
    pub counters: TopicCounters,
}

/// The normalized, durable-relevant shape of a whole store (or model), comparable with `==`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModelSnapshot {
    pub queues: BTreeMap<String, QueueSnapshot>,
    pub topics: BTreeMap<String, TopicSnapshot>,
}

fn logged(mut c: QueueCounters) -> QueueCounters {
    c.rejected_full = 0;
    c
}

/// The snapshot of a real store, through its public API. Reading brings the store's queues
/// and topics to its clock's now (due delays and expired leases become ready, topics are
/// trimmed), as any read of them does. Queues or topics dropped while this runs are left out.
pub fn snapshot_store(store: &Store) -> ModelSnapshot {
    let mut snap = ModelSnapshot::default();
    for q in store.queues() {
        let (Ok(msgs), Ok(stats)) = (store.messages(&q), store.stats(&q)) else {
            continue;
        };
        snap.queues.insert(
            q,
            QueueSnapshot {
                messages: msgs.iter().map(MessageSnapshot::of).collect(),
                counters: logged(stats.counters),
            },
        );
    }
    for t in store.topics() {
        let Ok(stats) = store.topic_stats(&t) else {
            continue;
        };
        // Read every retained message through a cursor at the oldest one.
        let mut retained = Vec::new();
        if let Ok(mut cursor) = store.cursor_at(&t, stats.last_seq + 1 - stats.retained) {
            while let Ok(Some(m)) = store.topic_next(&mut cursor) {
                retained.push((m.seq, m.payload));
            }
        }
        snap.topics.insert(
            t,
            TopicSnapshot {
                last_seq: stats.last_seq,
                retained,
                cursors: stats.cursors,
                counters: stats.counters,
            },
        );
    }
    snap
}

// --- the model's state ----------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Msg {
    id: u64,
    priority: u8,
    enqueued_ms: u64,
    /// 0 = never expires.
    expires_ms: u64,
    subject: Option<String>,
    headers: Vec<(String, Bytes)>,
    payload: Bytes,
    receive_count: u32,
    lease_gen: u32,
    /// The current `lease_gen` was handed out by a lease (a nack or a move withdraws it).
    delivered: bool,
    /// 0 = never received.
    first_received_ms: u64,
    state: MessageState,
    /// For a dead letter: the source queue's id and the message's id there.
    origin: Option<(u32, u64)>,
}

impl Msg {
    fn size(&self) -> u64 {
        (self.payload.len()
            + self.subject.as_ref().map_or(0, String::len)
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()) as u64
    }
    fn expired(&self, now: u64) -> bool {
        self.expires_ms != 0 && self.expires_ms <= now
    }
    fn ready(&self) -> bool {
        self.state == MessageState::Ready
    }
}

#[derive(Debug, Clone)]
struct Queue {
    id: u32,
    config: QueueConfig,
    msgs: BTreeMap<u64, Msg>,
    counters: QueueCounters,
}

impl Queue {
    fn bytes(&self) -> u64 {
        self.msgs.values().map(Msg::size).sum()
    }
    /// The next message in delivery order: highest priority, then lowest id.
    fn next_ready(&self) -> Option<u64> {
        self.ready_in_order().first().copied()
    }
    /// Ready messages in delivery order.
    fn ready_in_order(&self) -> Vec<u64> {
        let mut v: Vec<(u8, u64)> = self
            .msgs
            .values()
            .filter(|m| m.ready())
            .map(|m| (m.priority, m.id))
            .collect();
        v.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        v.into_iter().map(|(_, id)| id).collect()
    }
}

#[derive(Debug, Clone)]
struct TopicMsg {
    seq: u64,
    published_ms: u64,
    payload: Bytes,
}

#[derive(Debug, Clone)]
struct Topic {
    config: TopicConfig,
    msgs: VecDeque<TopicMsg>,
    next_seq: u64,
    cursors: BTreeMap<String, u64>,
    counters: TopicCounters,
}

impl Topic {
    fn bytes(&self) -> u64 {
        self.msgs.iter().map(|m| m.payload.len() as u64).sum()
    }
    /// Drops messages from the front while the oldest is too old, or there are too many, or
    /// too many bytes.
    fn trim(&mut self, now: u64) {
        let age_ms = self.config.retention.as_millis() as u64;
        while let Some(front) = self.msgs.front() {
            let too_old = front.published_ms.saturating_add(age_ms) <= now;
            let too_many =
                self.config.max_messages != 0 && self.msgs.len() as u64 > self.config.max_messages;
            let too_big = self.config.max_bytes != 0 && self.bytes() > self.config.max_bytes;
            if !(too_old || too_many || too_big) {
                break;
            }
            self.msgs.pop_front();
            self.counters.expired += 1;
        }
    }
}

/// The reference model of a store. See the module documentation.
#[derive(Debug, Clone)]
pub struct Model {
    default_queue: QueueConfig,
    default_topic: TopicConfig,
    auto_create: bool,
    now_ms: u64,
    next_msg_id: u64,
    next_queue_id: u32,
    queues: BTreeMap<String, Queue>,
    topics: BTreeMap<String, Topic>,
}

// --- argument checks (the engine's, in the engine's order) ----------------------------------

fn validate_name(name: &str) -> ModelResult<()> {
    let ok = name.len() <= NAME_LEN_MAX
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ErrorKind::InvalidName)
    }
}

fn check_duration(d: Duration) -> ModelResult<u64> {
    if d > DURATION_MAX {
        return Err(ErrorKind::InvalidArgument);
    }
    Ok(d.as_millis() as u64)
}

fn check_visibility(d: Duration) -> ModelResult<u64> {
    match check_duration(d)? {
        0 => Err(ErrorKind::InvalidArgument),
        ms => Ok(ms),
    }
}

fn check_count(n: usize) -> ModelResult<()> {
    if n == 0 || n > READ_COUNT_MAX {
        return Err(ErrorKind::InvalidArgument);
    }
    Ok(())
}

fn validate_queue_config(c: &QueueConfig) -> ModelResult<()> {
    check_visibility(c.visibility)?;
    check_duration(c.delay)?;
    if let Some(r) = c.retention {
        check_duration(r)?;
    }
    if let Some(d) = &c.dead_letter_queue {
        validate_name(d)?;
    }
    if c.max_payload_bytes > PAYLOAD_MAX {
        return Err(ErrorKind::InvalidArgument);
    }
    Ok(())
}

fn validate_topic_config(c: &TopicConfig) -> ModelResult<()> {
    check_duration(c.retention)?;
    if c.max_payload_bytes > PAYLOAD_MAX {
        return Err(ErrorKind::InvalidArgument);
    }
    Ok(())
}

impl Model {
    /// An empty store with the defaults of `options` (auto-create, default queue and topic
    /// configs; the clock is ignored).
    pub fn new(options: &Options) -> Self {
        Self {
            default_queue: options.default_queue.clone(),
            default_topic: options.default_topic.clone(),
            auto_create: options.auto_create,
            now_ms: 0,
            next_msg_id: 1,
            next_queue_id: 1,
            queues: BTreeMap::new(),
            topics: BTreeMap::new(),
        }
    }

    /// The latest time the model was told of.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Moves the model's time to `now_ms`: due delays and expired leases become ready, topics
    /// are trimmed. Every operation does this first; call it alone when the clock moves.
    pub fn tick(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
        for q in self.queues.values_mut() {
            for m in q.msgs.values_mut() {
                match m.state {
                    MessageState::Delayed(t) | MessageState::Leased(t) if t <= now_ms => {
                        m.state = MessageState::Ready;
                    }
                    _ => {}
                }
            }
        }
        for t in self.topics.values_mut() {
            t.trim(now_ms);
        }
    }

    /// What a restart does to leases: every leased message becomes ready, keeping its
    /// receive count and lease generation (so its last receipt still acks it). Returns how
    /// many were released.
    pub fn release_all_leases(&mut self) -> usize {
        let mut n = 0;
        for q in self.queues.values_mut() {
            for m in q.msgs.values_mut() {
                if matches!(m.state, MessageState::Leased(_)) {
                    m.state = MessageState::Ready;
                    n += 1;
                }
            }
        }
        n
    }

    /// Everything a restart does: releases leases and forgets the counters that are not
    /// logged (`rejected_full`).
    pub fn restart(&mut self) {
        self.release_all_leases();
        for q in self.queues.values_mut() {
            q.counters.rejected_full = 0;
        }
    }

    /// The normalized snapshot at the model's current time (see [`ModelSnapshot`]). To compare
    /// with a store whose clock moved since the last call (a reopened one), [`Model::tick`] to
    /// the store's time first (and [`Model::restart`] for a reopen).
    pub fn snapshot(&self) -> ModelSnapshot {
        let queues = self
            .queues
            .keys()
            .map(|name| {
                let q = &self.queues[name];
                let messages = q
                    .msgs
                    .values()
                    .map(|m| MessageSnapshot::of(&self.message(m, None)))
                    .collect();
                let snap = QueueSnapshot {
                    messages,
                    counters: logged(q.counters),
                };
                (name.clone(), snap)
            })
            .collect();
        let topics = self
            .topics
            .iter()
            .map(|(name, t)| {
                let snap = TopicSnapshot {
                    last_seq: t.next_seq - 1,
                    retained: t.msgs.iter().map(|m| (m.seq, m.payload.clone())).collect(),
                    cursors: t.cursors.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                    counters: t.counters,
                };
                (name.clone(), snap)
            })
            .collect();
        ModelSnapshot { queues, topics }
    }

    // --- helpers ----------------------------------------------------------------------------

    fn queue_name_by_id(&self, id: u32) -> Option<&str> {
        self.queues
            .iter()
            .find(|(_, q)| q.id == id)
            .map(|(n, _)| n.as_str())
    }

    fn message(&self, m: &Msg, receipt: Option<Receipt>) -> Message {
        let origin_name = m
            .origin
            .and_then(|(qid, _)| self.queue_name_by_id(qid))
            .map(str::to_string);
        Message {
            id: m.id,
            receipt,
            payload: m.payload.clone(),
            priority: m.priority,
            subject: m.subject.clone(),
            headers: m.headers.clone(),
            enqueued_at: m.enqueued_ms,
            expires_at: (m.expires_ms != 0).then_some(m.expires_ms),
            receive_count: m.receive_count,
            first_received_at: (m.first_received_ms != 0).then_some(m.first_received_ms),
            state: m.state,
            dead_letter_of: origin_name.zip(m.origin.map(|(_, id)| id)),
            blob: None,
        }
    }

    fn queue(&self, name: &str) -> ModelResult<&Queue> {
        self.queues.get(name).ok_or(ErrorKind::UnknownQueue)
    }

    fn queue_mut(&mut self, name: &str) -> ModelResult<&mut Queue> {
        self.queues.get_mut(name).ok_or(ErrorKind::UnknownQueue)
    }

    fn topic(&self, name: &str) -> ModelResult<&Topic> {
        self.topics.get(name).ok_or(ErrorKind::UnknownTopic)
    }

    fn alloc_msg_id(&mut self) -> u64 {
        let id = self.next_msg_id;
        self.next_msg_id += 1;
        id
    }

    /// Creates queue `name` with `config` unless it exists.
    fn ensure_queue(&mut self, name: &str, config: &QueueConfig) {
        if !self.queues.contains_key(name) {
            let id = self.next_queue_id;
            self.next_queue_id += 1;
            self.queues.insert(
                name.to_string(),
                Queue {
                    id,
                    config: config.clone(),
                    msgs: BTreeMap::new(),
                    counters: QueueCounters::default(),
                },
            );
        }
    }

    /// The dead-letter queue of `queue` (creating it with the default config, without a
    /// dead-letter queue of its own, when missing), or `None` when it has none or names
    /// itself.
    fn ensure_dlq(&mut self, queue: &str) -> Option<String> {
        let q = self.queues.get(queue)?;
        let dlq = q.config.dead_letter_queue_of(queue)?;
        if dlq == queue {
            return None;
        }
        let config = QueueConfig {
            max_receives: 0,
            dead_letter_queue: None,
            ..self.default_queue.clone()
        };
        self.ensure_queue(&dlq, &config);
        Some(dlq)
    }

    fn check_receipt(q: &Queue, r: Receipt) -> ModelResult<()> {
        let m = q.msgs.get(&r.id).ok_or(ErrorKind::NotFound)?;
        let current = m.delivered
            && m.lease_gen == r.generation
            && matches!(m.state, MessageState::Leased(_) | MessageState::Ready);
        if current {
            Ok(())
        } else {
            Err(ErrorKind::LeaseLost)
        }
    }

    /// Moves message `id` of `src` to `dst` under a new id. A redrive resets its delivery
    /// history; a dead-lettering records where it came from.
    fn move_msg(&mut self, src: &str, id: u64, dst: &str, redrive: bool) -> u64 {
        let new_id = self.alloc_msg_id();
        let src_q = self
            .queues
            .get_mut(src)
            .expect("move from an existing queue");
        let src_qid = src_q.id;
        let mut m = src_q.msgs.remove(&id).expect("move of an existing message");
        if !redrive {
            src_q.counters.dead_lettered += 1;
        }
        m.id = new_id;
        m.state = MessageState::Ready;
        m.delivered = false;
        if redrive {
            m.receive_count = 0;
            m.lease_gen = 0;
            m.first_received_ms = 0;
            m.origin = None;
        } else {
            m.origin = Some((src_qid, id));
        }
        let dst_q = self.queues.get_mut(dst).expect("move to an existing queue");
        if redrive {
            dst_q.counters.redriven += 1;
        } else {
            dst_q.counters.dead_letters_received += 1;
        }
        dst_q.msgs.insert(new_id, m);
        new_id
    }

    // --- queue management -------------------------------------------------------------------

    /// [`Store::create_queue`].
    pub fn create_queue(
        &mut self,
        now_ms: u64,
        name: &str,
        config: QueueConfig,
    ) -> ModelResult<bool> {
        self.tick(now_ms);
        validate_name(name)?;
        validate_queue_config(&config)?;
        if let Some(q) = self.queues.get(name) {
            return if q.config == config {
                Ok(false)
            } else {
                Err(ErrorKind::Exists)
            };
        }
        self.ensure_queue(name, &config);
        self.ensure_dlq(name);
        Ok(true)
    }

    /// [`Store::configure_queue`].
    pub fn configure_queue(
        &mut self,
        now_ms: u64,
        name: &str,
        config: QueueConfig,
    ) -> ModelResult<()> {
        self.tick(now_ms);
        validate_name(name)?;
        validate_queue_config(&config)?;
        self.queue_mut(name)?.config = config;
        self.ensure_dlq(name);
        Ok(())
    }

    /// [`Store::drop_queue`].
    pub fn drop_queue(&mut self, now_ms: u64, name: &str) -> ModelResult<bool> {
        self.tick(now_ms);
        validate_name(name)?;
        Ok(self.queues.remove(name).is_some())
    }

    /// [`Store::queues`].
    pub fn queues(&self) -> Vec<String> {
        self.queues.keys().cloned().collect()
    }

    /// Whether message `id` is in `queue`, in any state (no time passes).
    pub fn contains(&self, queue: &str, id: u64) -> bool {
        self.queues
            .get(queue)
            .is_some_and(|q| q.msgs.contains_key(&id))
    }

    /// [`Store::queue_config`].
    pub fn queue_config(&self, name: &str) -> ModelResult<QueueConfig> {
        self.queue(name).map(|q| q.config.clone())
    }

    // --- push -------------------------------------------------------------------------------

    /// [`Store::push`].
    pub fn push(&mut self, now_ms: u64, queue: &str, msg: Push) -> ModelResult<u64> {
        let ids = self.push_batch(now_ms, queue, vec![msg])?;
        ids.first().copied().ok_or(ErrorKind::EmptyBatch)
    }

    /// [`Store::push_batch`]: all or nothing.
    pub fn push_batch(
        &mut self,
        now_ms: u64,
        queue: &str,
        msgs: Vec<Push>,
    ) -> ModelResult<Vec<u64>> {
        self.tick(now_ms);
        validate_name(queue)?;
        if msgs.is_empty() {
            return Err(ErrorKind::EmptyBatch);
        }
        if msgs.len() > BATCH_LEN_MAX {
            return Err(ErrorKind::BatchTooLarge);
        }
        let existing = self.queues.get(queue);
        if existing.is_none() && !self.auto_create {
            return Err(ErrorKind::UnknownQueue);
        }
        let config = existing.map_or_else(|| self.default_queue.clone(), |q| q.config.clone());
        let mut encoded = 0usize;
        let mut new_bytes = 0u64;
        let mut min_prio = u8::MAX;
        let mut plans = Vec::with_capacity(msgs.len());
        for m in &msgs {
            if m.payload.len() > config.max_payload_bytes {
                return Err(ErrorKind::PayloadTooLarge);
            }
            if m.subject
                .as_ref()
                .is_some_and(|s| s.len() > SUBJECT_LEN_MAX)
            {
                return Err(ErrorKind::InvalidArgument);
            }
            if m.headers.len() > HEADERS_MAX
                || m.headers
                    .iter()
                    .any(|(k, v)| k.len() > SUBJECT_LEN_MAX || v.len() > config.max_payload_bytes)
            {
                return Err(ErrorKind::InvalidArgument);
            }
            let delay = check_duration(m.delay.unwrap_or(config.delay))?;
            let ttl = match m.ttl {
                Some(t) => Some(check_duration(t)?),
                None => config.retention.map(|r| r.as_millis() as u64),
            };
            encoded += Entry::enqueue_len(m.payload.len(), m.subject.as_deref(), &m.headers, false);
            new_bytes += (m.payload.len()
                + m.subject.as_ref().map_or(0, String::len)
                + m.headers
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>()) as u64;
            min_prio = min_prio.min(m.priority);
            plans.push((delay, ttl));
        }
        if encoded > TXN_BYTES_MAX - FRAME_HEADROOM {
            return Err(ErrorKind::BatchTooLarge);
        }
        let evict = self.plan_evictions(queue, &config, msgs.len() as u64, new_bytes, min_prio)?;
        // Everything is checked: apply.
        self.ensure_queue(queue, &config);
        let q = self.queues.get_mut(queue).expect("just ensured");
        for id in evict {
            q.msgs.remove(&id);
            q.counters.evicted += 1;
        }
        let mut ids = Vec::with_capacity(msgs.len());
        for (m, (delay, ttl)) in msgs.into_iter().zip(plans) {
            let id = self.next_msg_id;
            self.next_msg_id += 1;
            let q = self.queues.get_mut(queue).expect("just ensured");
            q.counters.pushed += 1;
            q.msgs.insert(
                id,
                Msg {
                    id,
                    priority: m.priority,
                    enqueued_ms: now_ms,
                    expires_ms: ttl.map_or(0, |t| now_ms.saturating_add(t).max(1)),
                    subject: m.subject,
                    headers: m.headers,
                    payload: m.payload,
                    receive_count: 0,
                    lease_gen: 0,
                    delivered: false,
                    first_received_ms: 0,
                    state: if delay == 0 {
                        MessageState::Ready
                    } else {
                        MessageState::Delayed(now_ms + delay)
                    },
                    origin: None,
                },
            );
            ids.push(id);
        }
        Ok(ids)
    }

    /// The messages to evict so that `n_new` messages of `new_bytes` fit, or `Full` (counted
    /// as rejected on an existing queue).
    fn plan_evictions(
        &mut self,
        queue: &str,
        config: &QueueConfig,
        n_new: u64,
        new_bytes: u64,
        min_prio: u8,
    ) -> ModelResult<Vec<u64>> {
        if config.max_messages == 0 && config.max_bytes == 0 {
            return Ok(Vec::new());
        }
        let over = |c: u64, b: u64| {
            (config.max_messages != 0 && c + n_new > config.max_messages)
                || (config.max_bytes != 0 && b + new_bytes > config.max_bytes)
        };
        let Some(q) = self.queues.get_mut(queue) else {
            // A new queue is empty.
            return if over(0, 0) {
                Err(ErrorKind::Full)
            } else {
                Ok(Vec::new())
            };
        };
        let (mut c, mut b) = (q.msgs.len() as u64, q.bytes());
        if !over(c, b) {
            return Ok(Vec::new());
        }
        if config.overflow == Overflow::Reject || over(0, 0) {
            q.counters.rejected_full += n_new;
            return Err(ErrorKind::Full);
        }
        let mut candidates: Vec<&Msg> = q
            .msgs
            .values()
            .filter(|m| m.ready() && m.priority <= min_prio)
            .collect();
        candidates.sort_by_key(|m| (m.priority, m.id));
        let mut evict = Vec::new();
        for m in candidates {
            if !over(c, b) {
                break;
            }
            c -= 1;
            b -= m.size();
            evict.push(m.id);
        }
        if over(c, b) {
            q.counters.rejected_full += n_new;
            return Err(ErrorKind::Full);
        }
        Ok(evict)
    }

    // --- lease and friends ------------------------------------------------------------------

    /// [`Store::lease_wait`] with a zero timeout: like `lease`, except that with `auto_create`
    /// a queue that does not exist yet is waited for (so: nothing), after the name is checked.
    pub fn lease_wait(
        &mut self,
        now_ms: u64,
        queue: &str,
        n: usize,
        visibility: Option<Duration>,
    ) -> ModelResult<Vec<Message>> {
        self.tick(now_ms);
        check_count(n)?;
        visibility.map(check_visibility).transpose()?;
        validate_name(queue)?;
        if self.auto_create && !self.queues.contains_key(queue) {
            return Ok(Vec::new());
        }
        self.lease(now_ms, queue, n, visibility)
    }

    /// [`Store::lease`].
    pub fn lease(
        &mut self,
        now_ms: u64,
        queue: &str,
        n: usize,
        visibility: Option<Duration>,
    ) -> ModelResult<Vec<Message>> {
        self.tick(now_ms);
        check_count(n)?;
        let vis = visibility.map(check_visibility).transpose()?;
        self.queue(queue)?;
        let mut out = Vec::new();
        while out.len() < n {
            let q = self.queue(queue)?;
            let Some(id) = q.next_ready() else { break };
            let vis = vis.unwrap_or(q.config.visibility.as_millis() as u64);
            let max_receives = q.config.max_receives;
            let m = &q.msgs[&id];
            let (expired, receive_count) = (m.expired(now_ms), m.receive_count);
            if expired {
                let q = self.queue_mut(queue)?;
                q.msgs.remove(&id);
                q.counters.expired += 1;
                continue;
            }
            if max_receives > 0 && receive_count >= max_receives {
                if let Some(dlq) = self.ensure_dlq(queue) {
                    self.move_msg(queue, id, &dlq, false);
                    continue;
                }
            }
            let q = self.queue_mut(queue)?;
            let m = q.msgs.get_mut(&id).expect("the next ready message exists");
            m.receive_count += 1;
            m.lease_gen += 1;
            m.delivered = true;
            if m.first_received_ms == 0 {
                m.first_received_ms = now_ms;
            }
            m.state = MessageState::Leased(now_ms + vis);
            let receipt = Receipt {
                id,
                generation: m.lease_gen,
            };
            let m = &self.queue(queue)?.msgs[&id];
            out.push(self.message(m, Some(receipt)));
        }
        Ok(out)
    }

    /// [`Store::ack`].
    pub fn ack(&mut self, now_ms: u64, queue: &str, receipt: Receipt) -> ModelResult<()> {
        let mut r = self.ack_batch(now_ms, queue, &[receipt])?;
        r.pop().unwrap_or(Ok(()))
    }

    /// [`Store::ack_batch`]: one result per receipt, in order.
    pub fn ack_batch(
        &mut self,
        now_ms: u64,
        queue: &str,
        receipts: &[Receipt],
    ) -> ModelResult<Vec<ModelResult<()>>> {
        self.tick(now_ms);
        let q = self.queue_mut(queue)?;
        Ok(receipts
            .iter()
            .map(|&r| {
                Self::check_receipt(q, r)?;
                q.msgs.remove(&r.id);
                q.counters.acked += 1;
                Ok(())
            })
            .collect())
    }

    /// [`Store::nack`].
    pub fn nack(
        &mut self,
        now_ms: u64,
        queue: &str,
        receipt: Receipt,
        delay: Duration,
        priority: Option<u8>,
    ) -> ModelResult<()> {
        self.tick(now_ms);
        let delay = check_duration(delay)?;
        let q = self.queue_mut(queue)?;
        Self::check_receipt(q, receipt)?;
        let m = q.msgs.get_mut(&receipt.id).expect("checked");
        m.lease_gen += 1;
        m.delivered = false;
        if let Some(p) = priority {
            m.priority = p;
        }
        m.state = if delay == 0 {
            MessageState::Ready
        } else {
            MessageState::Delayed(now_ms + delay)
        };
        Ok(())
    }

    /// [`Store::extend`]: returns the new end of the lease.
    pub fn extend(
        &mut self,
        now_ms: u64,
        queue: &str,
        receipt: Receipt,
        visibility: Duration,
    ) -> ModelResult<u64> {
        self.tick(now_ms);
        let vis = check_visibility(visibility)?;
        let q = self.queue_mut(queue)?;
        Self::check_receipt(q, receipt)?;
        let until = now_ms + vis;
        q.msgs.get_mut(&receipt.id).expect("checked").state = MessageState::Leased(until);
        Ok(until)
    }

    /// [`Store::dead`]: returns the message's id in the dead-letter queue.
    pub fn dead(&mut self, now_ms: u64, queue: &str, receipt: Receipt) -> ModelResult<u64> {
        self.tick(now_ms);
        let q = self.queue(queue)?;
        Self::check_receipt(q, receipt)?;
        let dlq = self.ensure_dlq(queue).ok_or(ErrorKind::NoDeadLetterQueue)?;
        Ok(self.move_msg(queue, receipt.id, &dlq, false))
    }

    /// [`Store::redrive`]: moves up to `n` ready dead letters of `dlq`, lowest id first, back
    /// to their source queues when those still exist. Returns how many moved.
    pub fn redrive(&mut self, now_ms: u64, dlq: &str, n: usize) -> ModelResult<usize> {
        self.tick(now_ms);
        check_count(n)?;
        let q = self.queue(dlq)?;
        let candidates: Vec<(u64, u32)> = q
            .msgs
            .values()
            .filter(|m| m.ready())
            .filter_map(|m| m.origin.map(|(src, _)| (m.id, src)))
            .collect();
        let mut moved = 0;
        for (id, src) in candidates {
            if moved >= n {
                break;
            }
            let Some(src_name) = self.queue_name_by_id(src).map(str::to_string) else {
                continue;
            };
            self.move_msg(dlq, id, &src_name, true);
            moved += 1;
        }
        Ok(moved)
    }

    // --- at-most-once and reads -------------------------------------------------------------

    /// [`Store::pop`].
    pub fn pop(&mut self, now_ms: u64, queue: &str, n: usize) -> ModelResult<Vec<Message>> {
        self.tick(now_ms);
        check_count(n)?;
        self.queue(queue)?;
        let mut out = Vec::new();
        while out.len() < n {
            let q = self.queue(queue)?;
            let Some(id) = q.next_ready() else { break };
            let m = &q.msgs[&id];
            if m.expired(now_ms) {
                let q = self.queue_mut(queue)?;
                q.msgs.remove(&id);
                q.counters.expired += 1;
                continue;
            }
            let mut msg = self.message(m, None);
            msg.receive_count += 1;
            msg.first_received_at.get_or_insert(now_ms);
            let q = self.queue_mut(queue)?;
            q.msgs.remove(&id);
            q.counters.popped += 1;
            out.push(msg);
        }
        Ok(out)
    }

    /// [`Store::peek`]: the first `n` ready, unexpired messages in delivery order.
    pub fn peek(&mut self, now_ms: u64, queue: &str, n: usize) -> ModelResult<Vec<Message>> {
        self.tick(now_ms);
        check_count(n)?;
        let q = self.queue(queue)?;
        Ok(q.ready_in_order()
            .into_iter()
            .map(|id| &q.msgs[&id])
            .filter(|m| !m.expired(now_ms))
            .take(n)
            .map(|m| self.message(m, None))
            .collect())
    }

    /// [`Store::get`].
    pub fn get(&mut self, now_ms: u64, queue: &str, id: u64) -> ModelResult<Message> {
        self.tick(now_ms);
        let q = self.queue(queue)?;
        let m = q.msgs.get(&id).ok_or(ErrorKind::NotFound)?;
        Ok(self.message(m, None))
    }

    /// [`Store::messages`]: every message in id order.
    pub fn messages(&mut self, now_ms: u64, queue: &str) -> ModelResult<Vec<Message>> {
        self.tick(now_ms);
        let q = self.queue(queue)?;
        Ok(q.msgs.values().map(|m| self.message(m, None)).collect())
    }

    /// [`Store::delete`].
    pub fn delete(&mut self, now_ms: u64, queue: &str, id: u64) -> ModelResult<()> {
        self.tick(now_ms);
        let q = self.queue_mut(queue)?;
        q.msgs.remove(&id).ok_or(ErrorKind::NotFound)?;
        q.counters.deleted += 1;
        Ok(())
    }

    /// [`Store::purge`]: returns how many messages were removed.
    pub fn purge(&mut self, now_ms: u64, queue: &str) -> ModelResult<u64> {
        self.tick(now_ms);
        let q = self.queue_mut(queue)?;
        let n = q.msgs.len() as u64;
        q.msgs.clear();
        q.counters.purged += n;
        Ok(n)
    }

    /// [`Store::stats`].
    pub fn stats(&mut self, now_ms: u64, queue: &str) -> ModelResult<QueueStats> {
        self.tick(now_ms);
        let q = self.queue(queue)?;
        let count =
            |f: fn(&MessageState) -> bool| q.msgs.values().filter(|m| f(&m.state)).count() as u64;
        let dead_letter_queue = q.config.dead_letter_queue_of(queue);
        let dead = dead_letter_queue
            .as_deref()
            .and_then(|d| self.queues.get(d))
            .map_or(0, |d| d.msgs.len() as u64);
        let oldest = q.msgs.values().map(|m| m.enqueued_ms).min();
        Ok(QueueStats {
            name: queue.to_string(),
            visible: count(|s| *s == MessageState::Ready),
            delayed: count(|s| matches!(s, MessageState::Delayed(_))),
            leased: count(|s| matches!(s, MessageState::Leased(_))),
            dead,
            messages: q.msgs.len() as u64,
            bytes: q.bytes(),
            oldest_age_ms: oldest.map_or(0, |o| now_ms.saturating_sub(o)),
            dead_letter_queue,
            counters: q.counters,
            config: q.config.clone(),
        })
    }

    // --- topics -----------------------------------------------------------------------------

    fn ensure_topic(&mut self, name: &str, config: &TopicConfig) {
        if !self.topics.contains_key(name) {
            self.topics.insert(
                name.to_string(),
                Topic {
                    config: config.clone(),
                    msgs: VecDeque::new(),
                    next_seq: 1,
                    cursors: BTreeMap::new(),
                    counters: TopicCounters::default(),
                },
            );
        }
    }

    /// [`Store::create_topic`].
    pub fn create_topic(
        &mut self,
        now_ms: u64,
        name: &str,
        config: TopicConfig,
    ) -> ModelResult<bool> {
        self.tick(now_ms);
        validate_name(name)?;
        validate_topic_config(&config)?;
        if let Some(t) = self.topics.get(name) {
            return if t.config == config {
                Ok(false)
            } else {
                Err(ErrorKind::Exists)
            };
        }
        self.ensure_topic(name, &config);
        Ok(true)
    }

    /// [`Store::configure_topic`]: the new retention applies at once.
    pub fn configure_topic(
        &mut self,
        now_ms: u64,
        name: &str,
        config: TopicConfig,
    ) -> ModelResult<()> {
        self.tick(now_ms);
        validate_name(name)?;
        validate_topic_config(&config)?;
        let t = self.topics.get_mut(name).ok_or(ErrorKind::UnknownTopic)?;
        t.config = config;
        t.trim(now_ms);
        Ok(())
    }

    /// [`Store::drop_topic`].
    pub fn drop_topic(&mut self, now_ms: u64, name: &str) -> ModelResult<bool> {
        self.tick(now_ms);
        validate_name(name)?;
        Ok(self.topics.remove(name).is_some())
    }

    /// [`Store::topics`].
    pub fn topics(&self) -> Vec<String> {
        self.topics.keys().cloned().collect()
    }

    /// [`Store::publish`].
    pub fn publish(
        &mut self,
        now_ms: u64,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> ModelResult<u64> {
        let mut seqs = self.publish_batch(now_ms, topic, vec![payload.into()])?;
        seqs.pop().ok_or(ErrorKind::EmptyBatch)
    }

    /// [`Store::publish_batch`]: all or nothing; returns the sequence numbers.
    pub fn publish_batch(
        &mut self,
        now_ms: u64,
        topic: &str,
        payloads: Vec<Bytes>,
    ) -> ModelResult<Vec<u64>> {
        self.tick(now_ms);
        validate_name(topic)?;
        let existing = self.topics.get(topic);
        if existing.is_none() && !self.auto_create {
            return Err(ErrorKind::UnknownTopic);
        }
        let config = existing.map_or_else(|| self.default_topic.clone(), |t| t.config.clone());
        if payloads.is_empty() {
            return Err(ErrorKind::EmptyBatch);
        }
        let mut total = 0usize;
        for p in &payloads {
            if p.len() > config.max_payload_bytes {
                return Err(ErrorKind::PayloadTooLarge);
            }
            total += p.len() + TOPIC_ENTRY_OVERHEAD;
        }
        if total > TXN_BYTES_MAX - FRAME_HEADROOM {
            return Err(ErrorKind::BatchTooLarge);
        }
        self.ensure_topic(topic, &config);
        let t = self.topics.get_mut(topic).expect("just ensured");
        let mut seqs = Vec::with_capacity(payloads.len());
        for payload in payloads {
            let seq = t.next_seq;
            t.next_seq += 1;
            t.counters.published += 1;
            t.msgs.push_back(TopicMsg {
                seq,
                published_ms: now_ms,
                payload,
            });
            t.trim(now_ms);
            seqs.push(seq);
        }
        Ok(seqs)
    }

    /// [`Store::subscribe`]: a cursor after the newest message (at 1 for a missing topic).
    pub fn subscribe(&mut self, now_ms: u64, topic: &str) -> ModelResult<Cursor> {
        self.tick(now_ms);
        validate_name(topic)?;
        Ok(Cursor {
            topic: topic.to_string(),
            next: self.topics.get(topic).map_or(1, |t| t.next_seq),
            name: None,
        })
    }

    /// [`Store::cursor_at`].
    pub fn cursor_at(&mut self, now_ms: u64, topic: &str, seq: u64) -> ModelResult<Cursor> {
        self.tick(now_ms);
        validate_name(topic)?;
        Ok(Cursor {
            topic: topic.to_string(),
            next: seq.max(1),
            name: None,
        })
    }

    /// [`Store::durable_cursor`]: where it was committed, else at `start`.
    pub fn durable_cursor(
        &mut self,
        now_ms: u64,
        topic: &str,
        cursor_name: &str,
        start: CursorStart,
    ) -> ModelResult<Cursor> {
        self.tick(now_ms);
        validate_name(topic)?;
        validate_name(cursor_name)?;
        let t = self.topic(topic)?;
        let next = match (t.cursors.get(cursor_name), start) {
            (Some(&seq), _) => seq,
            (None, CursorStart::Now) => t.next_seq,
            (None, CursorStart::Earliest) => t.msgs.front().map_or(t.next_seq, |m| m.seq),
            (None, CursorStart::Seq(s)) => s.max(1),
        };
        Ok(Cursor {
            topic: topic.to_string(),
            next,
            name: Some(cursor_name.to_string()),
        })
    }

    /// [`Store::commit_cursor`].
    pub fn commit_cursor(&mut self, now_ms: u64, cursor: &Cursor) -> ModelResult<()> {
        self.tick(now_ms);
        let name = cursor.name.as_ref().ok_or(ErrorKind::InvalidArgument)?;
        let t = self
            .topics
            .get_mut(&cursor.topic)
            .ok_or(ErrorKind::UnknownTopic)?;
        t.cursors.insert(name.clone(), cursor.next);
        Ok(())
    }

    /// [`Store::topic_next`].
    pub fn topic_next(
        &mut self,
        now_ms: u64,
        cursor: &mut Cursor,
    ) -> ModelResult<Option<TopicMessage>> {
        self.topic_read(now_ms, cursor, false)
    }

    /// [`Store::topic_latest`].
    pub fn topic_latest(
        &mut self,
        now_ms: u64,
        cursor: &mut Cursor,
    ) -> ModelResult<Option<TopicMessage>> {
        self.topic_read(now_ms, cursor, true)
    }

    fn topic_read(
        &mut self,
        now_ms: u64,
        cursor: &mut Cursor,
        latest: bool,
    ) -> ModelResult<Option<TopicMessage>> {
        self.tick(now_ms);
        let Some(t) = self.topics.get(&cursor.topic) else {
            return Ok(None);
        };
        if cursor.next > t.next_seq {
            return Err(ErrorKind::InvalidArgument);
        }
        // Retained messages at or after the cursor.
        let mut at_or_after = t.msgs.iter().filter(|m| m.seq >= cursor.next);
        let m = if latest {
            at_or_after.next_back()
        } else {
            at_or_after.next()
        };
        let Some(m) = m else { return Ok(None) };
        let out = TopicMessage {
            seq: m.seq,
            payload: m.payload.clone(),
            published_at: m.published_ms,
            skipped: m.seq - cursor.next,
        };
        cursor.next = m.seq + 1;
        Ok(Some(out))
    }

    /// [`Store::topic_stats`].
    pub fn topic_stats(&mut self, now_ms: u64, topic: &str) -> ModelResult<TopicStats> {
        self.tick(now_ms);
        let t = self.topic(topic)?;
        Ok(TopicStats {
            name: topic.to_string(),
            last_seq: t.next_seq - 1,
            retained: t.msgs.len() as u64,
            bytes: t.bytes(),
            oldest_age_ms: t
                .msgs
                .front()
                .map_or(0, |m| now_ms.saturating_sub(m.published_ms)),
            cursors: t.cursors.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            counters: t.counters,
            config: t.config.clone(),
        })
    }
}
