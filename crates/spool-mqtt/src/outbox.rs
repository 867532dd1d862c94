//! The durable outbox: the records waiting for the broker, in an engine queue.
//!
//! Design constraints (the whole of `docs/mqtt.md`, "The outbox"):
//! - **A record is durable before `publish` returns** (the engine's group commit), and leaves
//!   the store only when the session says `Acked` (PUBACK, PUBCOMP, or a QoS 0 PUBLISH
//!   written), `Expired` (its TTL ran out before it was written) or `Rejected` (moved to the
//!   dead-letter queue).
//! - **Records are named by the engine's message ids** (our sequence numbers), never by MQTT
//!   packet ids.
//! - **QoS 2 progress is recorded in a second, small queue** ([`PROGRESS_QUEUE`]): one
//!   12-byte record per `(seq, packet id, stage)`, the newest per seq wins. It is pushed (and
//!   durable) before any packet that follows it reaches the socket; the event loop awaits the
//!   [`Outbox::record_progress`] future before flushing.
//! - **Leases are the outbox's, not the session's.** The sender leases records for 30 days
//!   (the engine's longest visibility): while the process runs, nothing comes back by itself.
//!   At start, [`Outbox::recover`] finds the records leased by the previous process and hands
//!   them back at once, in their original order, instead of waiting for their leases to expire.
//! - Capacity (messages and bytes, reject or evict-lowest-priority) is the engine queue's
//!   config; every drop is counted by the engine (evicted, expired, rejected pushes) or here
//!   (expired in the session, dead-lettered, malformed).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use spool_engine::{
    options::DURATION_MAX, Error as EngineError, Message, Overflow, Push, QueueConfig, Receipt,
    Store,
};

use crate::bulk::{self, BulkConfig, BulkFormat, BulkWhen, Pack};
use crate::packet::QoS;
use crate::session::{ExpiredPolicy, OutRecord, Qos2Restore, Qos2State};
use crate::topic::{validate_topic_name, TopicError};

/// The engine queue holding the records for the broker.
pub const OUTBOX_QUEUE: &str = "mqtt.outbox";
/// The engine queue holding the QoS 2 progress records.
pub const PROGRESS_QUEUE: &str = "mqtt.outbox.qos2";
/// The engine queue where records the broker refused are kept for an operator.
pub const DEAD_QUEUE: &str = "mqtt.outbox.dead";

/// Header carrying a record's QoS (one byte: 0, 1 or 2).
const HEADER_QOS: &str = "mqtt-qos";
/// Header carrying a record's retain flag (one byte: 0 or 1).
const HEADER_RETAIN: &str = "mqtt-retain";
/// Header carrying a record's MQTT 5 user properties, when it has any: for each, in order,
/// the name and the value, each a u16 big-endian length then UTF-8 bytes (the MQTT string
/// layout). Absent on records written without properties (and by older versions).
const HEADER_USER_PROPERTIES: &str = "mqtt-user-properties";
/// Header on a dead letter: the broker's reason code (one byte).
const HEADER_REASON: &str = "mqtt-reason";
/// Header carrying when a record stored under [`ExpiredPolicy::Send`] stops being worth
/// sending (unix ms, u64 big-endian): its TTL is kept here instead of as the engine's, so the
/// store never drops it, and the session still knows it.
const HEADER_EXPIRES_AT: &str = "mqtt-expires-at";

/// How long a lease of the sender lasts: the engine's longest. Records come back through
/// [`Outbox::recover`] at the next start, never by a lease expiring under a running sender.
const LEASE_VISIBILITY: Duration = DURATION_MAX;

/// The most records one lease asks for (the engine's limit per call).
const LEASE_MAX: usize = 10_000;

/// Progress records read per page at start.
const RECOVER_PAGE: usize = 1000;

/// Version byte of a progress record; bumped if its layout changes.
const PROGRESS_VERSION: u8 = 1;
/// Bytes of a progress record: version, seq (u64 BE), packet id (u16 BE), stage.
const PROGRESS_LEN: usize = 12;
/// Version byte of the progress record of a pack (bulk mode), see [`encode_pack_progress`].
const PROGRESS_VERSION_PACK: u8 = 2;

/// The largest payload the outbox accepts by default: MQTT allows 256 MiB, an edge device's
/// messages are small, and a record must stay below the engine's blob threshold (1 MiB) so it
/// is read back in one piece.
pub const MAX_PAYLOAD_BYTES_DEFAULT: usize = 256 << 10;
/// The largest `max_payload_bytes` allowed (just below the engine's blob threshold).
pub const MAX_PAYLOAD_BYTES_LIMIT: usize = (1 << 20) - 1;

/// Capacity of the outbox (the engine queue's config). Defaults: unbounded, reject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxConfig {
    /// Most records held; 0 = unbounded.
    pub max_messages: u64,
    /// Most bytes held (payload, topic and headers); 0 = unbounded.
    pub max_bytes: u64,
    /// At capacity: [`Overflow::Reject`] (publish fails with [`OutboxError::Full`]) or
    /// [`Overflow::EvictLowestPriority`] (the oldest record of the lowest priority is dropped
    /// and counted as evicted).
    pub overflow: Overflow,
    /// Largest payload accepted. Default [`MAX_PAYLOAD_BYTES_DEFAULT`], at most
    /// [`MAX_PAYLOAD_BYTES_LIMIT`].
    pub max_payload_bytes: usize,
    /// Bulk mode: consecutive records packed into one MQTT message ([`crate::bulk`]).
    /// Default `None`: one record per message.
    pub bulk: Option<BulkConfig>,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            max_messages: 0,
            max_bytes: 0,
            overflow: Overflow::Reject,
            max_payload_bytes: MAX_PAYLOAD_BYTES_DEFAULT,
            bulk: None,
        }
    }
}

impl OutboxConfig {
    fn queue_config(&self) -> QueueConfig {
        QueueConfig {
            // Records stay until delivered, whatever their age (a TTL is per record).
            retention: None,
            max_messages: self.max_messages,
            max_bytes: self.max_bytes,
            overflow: self.overflow,
            max_payload_bytes: self.max_payload_bytes,
            ..QueueConfig::default()
        }
    }
}

/// What went wrong in the outbox.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// The outbox is at capacity and its policy is reject.
    #[error("the outbox is full ({limit}); wait for the broker to take records, raise max_messages/max_bytes, or use evict-lowest-priority")]
    Full {
        /// Which limit.
        limit: String,
    },
    /// The payload is larger than the outbox takes.
    #[error("payload of {size} bytes is larger than the outbox's max_payload_bytes of {max}")]
    PayloadTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Not a valid topic name to publish to.
    #[error("cannot publish to {topic:?}: {source}")]
    Topic {
        /// The topic.
        topic: String,
        /// Why.
        source: TopicError,
    },
    /// A bad outbox config.
    #[error("bad outbox config: {0}")]
    Config(String),
    /// The store failed (I/O, damage, closed).
    #[error("outbox store: {0}")]
    Store(#[from] EngineError),
    /// A progress record cannot be read (written by another version, or damaged).
    #[error("QoS 2 progress record {id} is damaged ({reason}); its record is sent again as a new message")]
    DamagedProgress {
        /// Its id in the progress queue.
        id: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// A blocking store call could not run.
    #[error("outbox task failed: {0}")]
    Task(String),
}

fn from_engine(e: EngineError) -> OutboxError {
    match e {
        EngineError::Full { limit, .. } => OutboxError::Full { limit },
        EngineError::PayloadTooLarge { size, max, .. } => {
            OutboxError::PayloadTooLarge { size, max }
        }
        other => OutboxError::Store(other),
    }
}

/// A message for the broker, as the application gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutMessage {
    /// Topic name (no wildcards).
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
    /// Priority (higher goes first; FIFO within one priority).
    pub priority: u8,
    /// Dropped (and counted) if not written to the broker within this time; under
    /// [`ExpiredPolicy::Send`], sent late instead.
    pub ttl: Option<Duration>,
}

impl OutMessage {
    /// A QoS 1 message, priority 0, no TTL.
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>) -> OutMessage {
        OutMessage {
            topic: topic.into(),
            payload: payload.into(),
            qos: QoS::AtLeastOnce,
            retain: false,
            priority: 0,
            ttl: None,
        }
    }

    fn to_push(
        &self,
        max_payload: usize,
        user_properties: &[(String, String)],
    ) -> Result<Push, OutboxError> {
        validate_topic_name(&self.topic).map_err(|source| OutboxError::Topic {
            topic: self.topic.clone(),
            source,
        })?;
        if self.payload.len() > max_payload {
            return Err(OutboxError::PayloadTooLarge {
                size: self.payload.len(),
                max: max_payload,
            });
        }
        let mut push = Push::new(self.payload.clone())
            .priority(self.priority)
            .subject(self.topic.clone())
            .header(HEADER_QOS, Bytes::from(vec![self.qos as u8]))
            .header(HEADER_RETAIN, Bytes::from(vec![u8::from(self.retain)]));
        if let Some(ttl) = self.ttl {
            push = push.ttl(ttl);
        }
        if !user_properties.is_empty() {
            push = push.header(HEADER_USER_PROPERTIES, encode_properties(user_properties)?);
        }
        Ok(push)
    }
}

/// What [`Outbox::recover`] found of the previous process: give `inflight` to
/// [`Session::restore`](crate::Session::restore), then lease and offer records as usual
/// before the first connect (the previous process's leases were released when the store
/// opened, so the first leases return its unacked records, in their original order).
#[derive(Debug, Default)]
pub struct Recovered {
    /// QoS 2 records with recorded progress.
    pub inflight: Vec<Qos2Restore>,
}

/// Counters kept by the outbox (the engine counts the rest: evicted, expired in the store,
/// pushes refused because full).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxCounters {
    /// Records delivered and removed.
    pub acked: u64,
    /// Records whose TTL ran out while held by the session.
    pub expired: u64,
    /// Records the broker refused, moved to the dead-letter queue.
    pub dead_lettered: u64,
    /// Records that could not be read back as MQTT messages (dead-lettered).
    pub malformed: u64,
    /// QoS 0/1 records leased again after a restart of the process (they may have been
    /// written before it): possible duplicates. QoS 2 records are counted by the session.
    pub possible_duplicates: u64,
}

/// Depth and drop counts of the outbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// Records held (waiting, leased by the sender, in flight).
    pub depth: u64,
    /// Bytes held.
    pub bytes: u64,
    /// Age of the oldest record in ms.
    pub oldest_age_ms: u64,
    /// Records pushed since the store was created.
    pub pushed: u64,
    /// Records evicted at capacity (evict-lowest-priority).
    pub evicted: u64,
    /// Records whose TTL ran out in the store (before they were leased).
    pub expired_in_store: u64,
    /// Publishes refused because the outbox was full (reject; since open).
    pub rejected_full: u64,
    /// Records in the dead-letter queue.
    pub dead: u64,
    /// Counters of this process.
    pub counters: OutboxCounters,
}

/// The outbox of one client: owned by its event loop.
#[derive(Debug)]
pub struct Outbox {
    store: Store,
    max_payload: usize,
    /// Receipts of the records leased by this process, by seq.
    receipts: HashMap<u64, Receipt>,
    /// Every seq handed to the session and not finished (leased now or at recovery).
    held: HashSet<u64>,
    /// Ids of the progress records of each seq (all but the newest are stale).
    progress_ids: HashMap<u64, Vec<u64>>,
    /// Progress record ids to delete (stale or of finished records).
    stale_progress: Vec<u64>,
    counters: OutboxCounters,
    /// `false` once a lease came back short: nothing more until `more()`.
    maybe_more: bool,
    /// A background deletion of stale progress records.
    tidying: Option<tokio::task::JoinHandle<()>>,
    /// Bulk mode, when on.
    bulk: Option<BulkConfig>,
    /// The packs handed to the session, by their seq (their first member's).
    packs: HashMap<u64, Pack>,
}

impl Outbox {
    /// Opens (creating when missing) the outbox queues of `store` with `config`.
    pub fn open(store: Store, config: &OutboxConfig) -> Result<Outbox, OutboxError> {
        if config.max_payload_bytes == 0 || config.max_payload_bytes > MAX_PAYLOAD_BYTES_LIMIT {
            return Err(OutboxError::Config(format!(
                "max_payload_bytes {} is out of range: use 1 to {MAX_PAYLOAD_BYTES_LIMIT}",
                config.max_payload_bytes
            )));
        }
        if let Some(b) = &config.bulk {
            b.validate().map_err(OutboxError::Config)?;
        }
        let qc = config.queue_config();
        ensure_queue(&store, OUTBOX_QUEUE, qc)?;
        let side = QueueConfig {
            retention: None,
            max_payload_bytes: MAX_PAYLOAD_BYTES_LIMIT,
            ..QueueConfig::default()
        };
        ensure_queue(&store, PROGRESS_QUEUE, side.clone())?;
        ensure_queue(&store, DEAD_QUEUE, side)?;
        Ok(Outbox {
            store,
            max_payload: config.max_payload_bytes,
            receipts: HashMap::new(),
            held: HashSet::new(),
            progress_ids: HashMap::new(),
            stale_progress: Vec::new(),
            counters: OutboxCounters::default(),
            maybe_more: true,
            tidying: None,
            bulk: config.bulk.clone(),
            packs: HashMap::new(),
        })
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Stores `msg` durably; resolves to its sequence number once it is durable. Usable
    /// without the outbox itself (the client's `publish` calls it from any task).
    pub async fn push(
        store: &Store,
        max_payload: usize,
        msg: &OutMessage,
    ) -> Result<u64, OutboxError> {
        Outbox::push_with_properties(store, max_payload, msg, &[]).await
    }

    /// [`Outbox::push`] with MQTT 5 user properties, sent with the message on an MQTT 5
    /// connection (dropped on MQTT 3.1.1, which has none).
    pub async fn push_with_properties(
        store: &Store,
        max_payload: usize,
        msg: &OutMessage,
        user_properties: &[(String, String)],
    ) -> Result<u64, OutboxError> {
        Outbox::push_start(store, max_payload, msg, user_properties)?.await
    }

    /// Enters `msg` in the outbox now (its place in the order is taken by this call) and
    /// returns a future that resolves once it is durable. Several calls made one after the
    /// other keep their order even when their futures are awaited together, and share the
    /// store's group commit: the local ingress pipelines a connection's PUBLISHes this way.
    pub fn push_start(
        store: &Store,
        max_payload: usize,
        msg: &OutMessage,
        user_properties: &[(String, String)],
    ) -> Result<impl Future<Output = Result<u64, OutboxError>> + Send + 'static, OutboxError> {
        Outbox::push_start_with(
            store,
            max_payload,
            msg,
            user_properties,
            ExpiredPolicy::Drop,
        )
    }

    /// [`Outbox::push_start`] under an expiry policy: with [`ExpiredPolicy::Send`], the TTL
    /// of `msg` is kept in a header instead of as the engine's TTL, so that the store never
    /// drops the record (the session sends it late instead).
    pub fn push_start_with(
        store: &Store,
        max_payload: usize,
        msg: &OutMessage,
        user_properties: &[(String, String)],
        expired: ExpiredPolicy,
    ) -> Result<impl Future<Output = Result<u64, OutboxError>> + Send + 'static, OutboxError> {
        let mut push = msg.to_push(max_payload, user_properties)?;
        if expired == ExpiredPolicy::Send {
            if let Some(ttl) = push.ttl.take() {
                let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
                let at = unix_ms().saturating_add(ttl_ms);
                push = push.header(HEADER_EXPIRES_AT, Bytes::from(at.to_be_bytes().to_vec()));
            }
        }
        let committed = store.push_async(OUTBOX_QUEUE, push);
        Ok(async move {
            let ids = committed.await.map_err(from_engine)?;
            ids.first()
                .copied()
                .ok_or(OutboxError::Store(EngineError::EmptyBatch))
        })
    }

    /// The largest payload accepted.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Reads what the previous process left in flight: its QoS 2 progress, with the records
    /// it belongs to. Call once, at start, before the first lease. Blocking (store reads): call
    /// it before the event loop runs, or from `spawn_blocking`.
    pub fn recover(&mut self, now: Instant) -> Result<Recovered, OutboxError> {
        let mut out = Recovered::default();
        // 1. Progress: newest record per seq wins.
        let mut progress: HashMap<u64, Progress> = HashMap::new();
        let mut after = 0;
        loop {
            let page = self
                .store
                .messages_page(PROGRESS_QUEUE, after, RECOVER_PAGE)?;
            let Some(last) = page.last() else { break };
            after = last.id;
            for m in &page {
                match decode_progress(&m.payload) {
                    Ok(mut p) => {
                        let seq = p.seq();
                        self.progress_ids.entry(seq).or_default().push(m.id);
                        let newer = progress.get(&seq).is_none_or(|q| q.id < m.id);
                        if newer {
                            p.id = m.id;
                            progress.insert(seq, p);
                        }
                    }
                    Err(reason) => {
                        tracing::warn!("{}", OutboxError::DamagedProgress { id: m.id, reason });
                        self.stale_progress.push(m.id);
                    }
                }
            }
        }
        // 2. The records of that progress. Opening the store released the previous
        // process's leases, so they are all ready again, in their lanes in their original
        // order: the first leases return them first. The QoS 2 ones with progress go to the
        // session's `restore` instead (and are skipped when a lease returns them).
        let now_ms = unix_ms();
        let mut seqs: Vec<u64> = progress.keys().copied().collect();
        seqs.sort_unstable();
        for seq in seqs {
            let Some(p) = progress.remove(&seq) else {
                continue;
            };
            let (packet_id, state) = (p.packet_id, p.state);
            if let Some((members, format, suffix)) = p.pack {
                self.recover_pack(
                    &members, format, &suffix, packet_id, state, now, now_ms, &mut out,
                )?;
                continue;
            }
            let m = match self.store.get(OUTBOX_QUEUE, seq) {
                Ok(m) => m,
                Err(EngineError::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            match to_record(&m, now, now_ms) {
                Some(record) if record.qos == QoS::ExactlyOnce => {
                    self.held.insert(seq);
                    out.inflight.push(Qos2Restore {
                        record,
                        packet_id,
                        state,
                    });
                }
                // Not a QoS 2 record: its progress is meaningless; it is leased as usual.
                _ => {
                    if let Some(ids) = self.progress_ids.remove(&seq) {
                        self.stale_progress.extend(ids);
                    }
                }
            }
        }
        // Progress of records no longer held (acked before the crash deleted its progress,
        // or expired in the store): stale.
        for seq in progress.into_keys() {
            if let Some(ids) = self.progress_ids.remove(&seq) {
                self.stale_progress.extend(ids);
            }
        }
        Ok(out)
    }

    /// Rebuilds a QoS 2 pack of the previous process from its members, byte for byte (see
    /// [`crate::bulk`]). When a member is gone or changed (which an atomic ack batch rules
    /// out, but a damaged store may not), the pack cannot be resumed: its progress is stale and
    /// the members left are sent again as new records, counted as possible duplicates.
    #[allow(clippy::too_many_arguments)]
    fn recover_pack(
        &mut self,
        members: &[u64],
        format: BulkFormat,
        suffix: &str,
        packet_id: u16,
        state: Qos2State,
        now: Instant,
        now_ms: u64,
        out: &mut Recovered,
    ) -> Result<(), OutboxError> {
        let lead = members[0];
        let mut records = Vec::with_capacity(members.len());
        for &seq in members {
            match self.store.get(OUTBOX_QUEUE, seq) {
                Ok(m) => {
                    if let Some(r) =
                        to_record(&m, now, now_ms).filter(|r| r.qos == QoS::ExactlyOnce)
                    {
                        records.push(r);
                    }
                }
                Err(EngineError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if records.len() == members.len() {
            let (record, pack) = bulk::join(records, format, suffix);
            for m in members {
                self.held.insert(*m);
            }
            if let Some(pack) = pack {
                self.packs.insert(lead, pack);
            }
            out.inflight.push(Qos2Restore {
                record,
                packet_id,
                state,
            });
            return Ok(());
        }
        if !records.is_empty() {
            tracing::warn!(
                pack = lead,
                members = members.len(),
                left = records.len(),
                "a QoS 2 pack in flight lost members; the rest are sent again as new records"
            );
            self.counters.possible_duplicates += records.len() as u64;
        }
        if let Some(ids) = self.progress_ids.remove(&lead) {
            self.stale_progress.extend(ids);
        }
        Ok(())
    }

    /// Whether bulk mode is on.
    pub fn bulk(&self) -> bool {
        self.bulk.is_some()
    }

    /// Notes when nothing waits to be leased (what a short lease would tell), without leasing.
    pub fn check_waiting(&mut self) -> Result<(), OutboxError> {
        if self.maybe_more && self.store.stats(OUTBOX_QUEUE)?.visible == 0 {
            self.maybe_more = false;
        }
        Ok(())
    }

    /// Whether a lease may find records (after a short lease, only once [`Outbox::more`]).
    pub fn maybe_more(&self) -> bool {
        self.maybe_more
    }

    /// Something was pushed: the next lease may find it.
    pub fn more(&mut self) {
        self.maybe_more = true;
    }

    /// Leases up to `n` records in delivery order (priority, then FIFO), for the session.
    /// Records that cannot be read back as MQTT messages are dead-lettered and counted.
    pub async fn lease(&mut self, n: usize, now: Instant) -> Result<Vec<OutRecord>, OutboxError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        // In bulk mode one session slot can take a pack of up to max_records records: lease
        // enough to fill them (the caller keeps what the session has no room for yet).
        let per_slot = self.bulk.as_ref().map_or(1, |b| b.max_records);
        let n = n.saturating_mul(per_slot).min(LEASE_MAX);
        let msgs = self
            .store
            .lease_async(OUTBOX_QUEUE, n, Some(LEASE_VISIBILITY))
            .await?;
        if msgs.len() < n {
            self.maybe_more = false;
        }
        let leased = msgs.len();
        let now_ms = unix_ms();
        let mut out = Vec::with_capacity(msgs.len());
        for m in msgs {
            if self.held.contains(&m.id) {
                // Restored at start with its QoS 2 progress: the session holds it already;
                // keep the receipt for the ack.
                if let Some(r) = m.receipt {
                    self.receipts.insert(m.id, r);
                }
                continue;
            }
            let Some(record) = to_record(&m, now, now_ms) else {
                self.counters.malformed += 1;
                let store = self.store.clone();
                blocking(move || dead_letter(&store, &m, 0)).await?;
                continue;
            };
            if let Some(r) = m.receipt {
                self.receipts.insert(m.id, r);
            }
            // Leased by an earlier process and not acked: it may have reached the broker. A
            // QoS 2 record without progress was never written (progress comes first).
            if m.receive_count > 1 && record.qos != QoS::ExactlyOnce {
                self.counters.possible_duplicates += 1;
            }
            self.held.insert(m.id);
            out.push(record);
        }
        if let Some(b) = self.bulk.clone() {
            if self.packing(&b, leased)? {
                let packed = bulk::pack(out, &b);
                out = Vec::with_capacity(packed.len());
                for (record, pack) in packed {
                    if let Some(pack) = pack {
                        self.packs.insert(record.seq, pack);
                    }
                    out.push(record);
                }
            }
        }
        Ok(out)
    }

    /// Whether to pack now: always, or while more than `min` records wait.
    fn packing(&self, b: &BulkConfig, leased: usize) -> Result<bool, OutboxError> {
        Ok(match b.when {
            BulkWhen::Always => true,
            BulkWhen::Backlog(min) => {
                leased as u64 > min || self.store.stats(OUTBOX_QUEUE)?.messages > min
            }
        })
    }

    /// How many records `seqs` stand for (a pack counts its members).
    pub fn record_count(&self, seqs: &[u64]) -> usize {
        seqs.iter()
            .map(|s| self.packs.get(s).map_or(1, |p| p.members.len()))
            .sum()
    }

    /// The records `seqs` stand for, each pack replaced by its members (and forgotten).
    fn expand(&mut self, seqs: &[u64]) -> Vec<u64> {
        let mut all = Vec::with_capacity(seqs.len());
        for &seq in seqs {
            match self.packs.remove(&seq) {
                Some(p) => all.extend(p.members.iter().map(|m| m.seq)),
                None => all.push(seq),
            }
        }
        all
    }

    /// Records QoS 2 progress durably: the returned future resolves once it is durable. Do
    /// not write any packet that follows the `Qos2Progress` action before then.
    pub fn record_progress(
        &mut self,
        seq: u64,
        packet_id: u16,
        state: Qos2State,
    ) -> spool_engine::Committed<Vec<u64>> {
        let payload = match self.packs.get(&seq) {
            Some(pack) => encode_pack_progress(pack, packet_id, state),
            None => encode_progress(seq, packet_id, state),
        };
        self.store.push_async(PROGRESS_QUEUE, Push::new(payload))
    }

    /// Notes the id of a durable progress record of `seq` (earlier ones become stale).
    pub fn progress_recorded(&mut self, seq: u64, ids: &[u64]) {
        let list = self.progress_ids.entry(seq).or_default();
        self.stale_progress.append(list);
        list.extend_from_slice(ids);
    }

    /// Removes delivered records (`Acked`; a pack's members together, in one atomic ack
    /// batch), then their progress records. Returns how many records left.
    pub async fn acked(&mut self, seqs: &[u64]) -> Result<usize, OutboxError> {
        let all = self.expand(seqs);
        self.counters.acked += all.len() as u64;
        self.remove(&all).await?;
        Ok(all.len())
    }

    /// Removes finished records from the store (their progress becomes stale).
    async fn remove(&mut self, seqs: &[u64]) -> Result<(), OutboxError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let mut receipts = Vec::with_capacity(seqs.len());
        let mut no_receipt = Vec::new();
        for &seq in seqs {
            self.held.remove(&seq);
            match self.receipts.remove(&seq) {
                Some(r) => receipts.push(r),
                None => no_receipt.push(seq),
            }
            if let Some(ids) = self.progress_ids.remove(&seq) {
                self.stale_progress.extend(ids);
            }
        }
        if !receipts.is_empty() {
            let results = self.store.ack_batch_async(OUTBOX_QUEUE, &receipts).await?;
            for (r, receipt) in results.into_iter().zip(&receipts) {
                match r {
                    Ok(()) | Err(EngineError::NotFound { .. }) => {}
                    // A stale receipt: delete by id (the record is delivered either way).
                    Err(EngineError::LeaseLost { .. }) => no_receipt.push(receipt.id),
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if !no_receipt.is_empty() {
            let store = self.store.clone();
            blocking(move || delete_all(&store, OUTBOX_QUEUE, &no_receipt)).await?;
        }
        Ok(())
    }

    /// Drops a record whose TTL ran out in the session (counted). Of a pack, only the
    /// members whose own TTL ran out are dropped; the others go back to the outbox (leased
    /// again, and packed again, at the next lease). Returns the seqs dropped.
    pub async fn expired(&mut self, seq: u64) -> Result<Vec<u64>, OutboxError> {
        let Some(pack) = self.packs.remove(&seq) else {
            self.counters.expired += 1;
            self.remove(&[seq]).await?;
            return Ok(vec![seq]);
        };
        let now = Instant::now();
        let (gone, keep): (Vec<bulk::Member>, Vec<bulk::Member>) = pack
            .members
            .iter()
            .partition(|m| m.expires_at.is_some_and(|t| t <= now));
        let gone: Vec<u64> = gone.iter().map(|m| m.seq).collect();
        self.counters.expired += gone.len() as u64;
        self.remove(&gone).await?;
        self.release(keep.iter().map(|m| m.seq).collect(), Duration::ZERO)
            .await?;
        Ok(gone)
    }

    /// Hands a record the broker turned away for now (a pack: its members) back to the
    /// outbox, visible again after `pause`. Returns how many records.
    pub async fn deferred(&mut self, seq: u64, pause: Duration) -> Result<usize, OutboxError> {
        let all = self.expand(&[seq]);
        let n = all.len();
        self.release(all, pause).await?;
        Ok(n)
    }

    /// Hands leased records back to the outbox (visible again after `delay`, for a later
    /// lease).
    async fn release(&mut self, seqs: Vec<u64>, delay: Duration) -> Result<(), OutboxError> {
        let mut receipts = Vec::with_capacity(seqs.len());
        for seq in seqs {
            self.held.remove(&seq);
            if let Some(ids) = self.progress_ids.remove(&seq) {
                self.stale_progress.extend(ids);
            }
            if let Some(r) = self.receipts.remove(&seq) {
                receipts.push(r);
            }
        }
        if receipts.is_empty() {
            return Ok(());
        }
        self.maybe_more = true;
        let store = self.store.clone();
        blocking(move || {
            for r in receipts {
                match store.nack(OUTBOX_QUEUE, r, delay, None) {
                    Ok(()) | Err(EngineError::NotFound { .. } | EngineError::LeaseLost { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        })
        .await
    }

    /// Moves a record the broker refused to the dead-letter queue (counted; a pack's members
    /// each). Returns the seqs dead-lettered.
    pub async fn rejected(&mut self, seq: u64, reason: u8) -> Result<Vec<u64>, OutboxError> {
        let all = self.expand(&[seq]);
        for seq in &all {
            self.held.remove(seq);
            self.receipts.remove(seq);
            if let Some(ids) = self.progress_ids.remove(seq) {
                self.stale_progress.extend(ids);
            }
        }
        self.counters.dead_lettered += all.len() as u64;
        let store = self.store.clone();
        let seqs = all.clone();
        blocking(move || {
            for seq in seqs {
                match store.get(OUTBOX_QUEUE, seq) {
                    Ok(m) => dead_letter(&store, &m, reason)?,
                    Err(EngineError::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        })
        .await?;
        Ok(all)
    }

    /// Deletes stale progress records (space only: the newest record per seq wins, and the
    /// progress of a record no longer in the outbox is ignored at start).
    pub async fn tidy(&mut self) -> Result<(), OutboxError> {
        if self.stale_progress.is_empty() {
            return Ok(());
        }
        let ids = std::mem::take(&mut self.stale_progress);
        let store = self.store.clone();
        blocking(move || delete_all(&store, PROGRESS_QUEUE, &ids)).await
    }

    /// Starts deleting the stale progress records on a blocking thread without waiting for it
    /// (one at a time: nothing is started while an earlier one runs). Deleting is for space
    /// only, so the event loop does not wait for those commits.
    pub fn tidy_in_background(&mut self) {
        if self.stale_progress.is_empty() || self.tidying.as_ref().is_some_and(|t| !t.is_finished())
        {
            return;
        }
        let ids = std::mem::take(&mut self.stale_progress);
        let store = self.store.clone();
        self.tidying = Some(tokio::task::spawn_blocking(move || {
            if let Err(e) = delete_all(&store, PROGRESS_QUEUE, &ids) {
                tracing::warn!("deleting stale QoS 2 progress records: {e}");
            }
        }));
    }

    /// Waits for a background tidy, then deletes what is left (at a clean stop).
    pub async fn finish_tidy(&mut self) -> Result<(), OutboxError> {
        if let Some(t) = self.tidying.take() {
            let _ = t.await;
        }
        self.tidy().await
    }

    /// How many stale progress records wait for [`Outbox::tidy`].
    pub fn stale_progress(&self) -> usize {
        self.stale_progress.len()
    }

    /// Counters of this process.
    pub fn counters(&self) -> OutboxCounters {
        self.counters
    }

    /// Depth, bytes and drops.
    pub fn stats(&self) -> Result<OutboxStats, OutboxError> {
        stats(&self.store, self.counters)
    }
}

/// Depth, bytes and drops of the outbox in `store`.
pub fn stats(store: &Store, counters: OutboxCounters) -> Result<OutboxStats, OutboxError> {
    let s = store.stats(OUTBOX_QUEUE)?;
    let dead = store.stats(DEAD_QUEUE)?.messages;
    Ok(OutboxStats {
        depth: s.messages,
        bytes: s.bytes,
        oldest_age_ms: s.oldest_age_ms,
        pushed: s.counters.pushed,
        evicted: s.counters.evicted,
        expired_in_store: s.counters.expired,
        rejected_full: s.counters.rejected_full,
        dead,
        counters,
    })
}

fn ensure_queue(store: &Store, name: &str, config: QueueConfig) -> Result<(), OutboxError> {
    match store.create_queue(name, config.clone()) {
        Ok(_) => Ok(()),
        // Created earlier with another capacity: the new config wins.
        Err(EngineError::Exists { .. }) => Ok(store.configure_queue(name, config)?),
        Err(e) => Err(e.into()),
    }
}

/// Runs a blocking store call off the executor threads.
async fn blocking<F>(f: F) -> Result<(), OutboxError>
where
    F: FnOnce() -> Result<(), OutboxError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| OutboxError::Task(e.to_string()))?
}

fn delete_all(store: &Store, queue: &str, ids: &[u64]) -> Result<(), OutboxError> {
    for &id in ids {
        match store.delete(queue, id) {
            Ok(()) | Err(EngineError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Copies `m` into the dead-letter queue (with the broker's reason code), then deletes it.
fn dead_letter(store: &Store, m: &Message, reason: u8) -> Result<(), OutboxError> {
    let mut push = Push::new(m.payload.clone())
        .priority(m.priority)
        .header(HEADER_REASON, Bytes::from(vec![reason]));
    if let Some(s) = &m.subject {
        push = push.subject(s.clone());
    }
    for (k, v) in &m.headers {
        push = push.header(k.clone(), v.clone());
    }
    store.push(DEAD_QUEUE, push)?;
    delete_all(store, OUTBOX_QUEUE, &[m.id])
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn header<'a>(m: &'a Message, name: &str) -> Option<&'a [u8]> {
    m.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_ref())
}

/// The MQTT record of an engine message; `None` when it is not one of ours (no topic, bad
/// QoS, payload in a blob file).
fn to_record(m: &Message, now: Instant, now_ms: u64) -> Option<OutRecord> {
    let topic = m.subject.clone()?;
    let qos = match header(m, HEADER_QOS)? {
        [q] => QoS::from_u8(*q)?,
        _ => return None,
    };
    let retain = matches!(header(m, HEADER_RETAIN), Some([1]));
    if m.blob.is_some() {
        return None;
    }
    let expires_at = m
        .expires_at
        .or_else(|| {
            header(m, HEADER_EXPIRES_AT)?
                .try_into()
                .ok()
                .map(u64::from_be_bytes)
        })
        .map(|ms| now + Duration::from_millis(ms.saturating_sub(now_ms)));
    Some(OutRecord {
        seq: m.id,
        topic,
        payload: m.payload.clone(),
        qos,
        retain,
        expires_at,
        user_properties: header(m, HEADER_USER_PROPERTIES)
            .and_then(decode_properties)
            .unwrap_or_default(),
    })
}

/// The [`HEADER_USER_PROPERTIES`] value of `props`.
fn encode_properties(props: &[(String, String)]) -> Result<Bytes, OutboxError> {
    let mut b = Vec::new();
    for s in props.iter().flat_map(|(k, v)| [k, v]) {
        let n = u16::try_from(s.len()).map_err(|_| {
            OutboxError::Config(format!(
                "a user property of {} bytes is over the MQTT limit of 65,535",
                s.len()
            ))
        })?;
        b.extend_from_slice(&n.to_be_bytes());
        b.extend_from_slice(s.as_bytes());
    }
    Ok(Bytes::from(b))
}

/// The user properties of a [`HEADER_USER_PROPERTIES`] value; `None` when it is damaged (the
/// record is then sent without them rather than not at all).
fn decode_properties(mut b: &[u8]) -> Option<Vec<(String, String)>> {
    let string = |b: &mut &[u8]| -> Option<String> {
        let (len, rest) = b.split_first_chunk::<2>()?;
        let n = usize::from(u16::from_be_bytes(*len));
        let s = std::str::from_utf8(rest.get(..n)?).ok()?.to_owned();
        *b = &rest[n..];
        Some(s)
    };
    let mut out = Vec::new();
    while !b.is_empty() {
        let k = string(&mut b)?;
        let v = string(&mut b)?;
        out.push((k, v));
    }
    Some(out)
}

fn encode_progress(seq: u64, packet_id: u16, state: Qos2State) -> Bytes {
    let mut b = Vec::with_capacity(PROGRESS_LEN);
    b.push(PROGRESS_VERSION);
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend_from_slice(&packet_id.to_be_bytes());
    b.push(encode_stage(state));
    Bytes::from(b)
}

/// A decoded progress record.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Progress {
    /// Its id in the progress queue (0 until read from the store).
    id: u64,
    packet_id: u16,
    state: Qos2State,
    /// The single record's seq (0 for a pack).
    seq: u64,
    /// A pack's members, format and topic suffix.
    pack: Option<(Vec<u64>, BulkFormat, String)>,
}

impl Progress {
    /// The seq the session knows it by (a pack's first member).
    fn seq(&self) -> u64 {
        self.pack.as_ref().map_or(self.seq, |(m, _, _)| m[0])
    }
}

fn encode_stage(state: Qos2State) -> u8 {
    match state {
        Qos2State::Published => 1,
        Qos2State::Released => 2,
    }
}

fn decode_stage(b: u8) -> Result<Qos2State, &'static str> {
    match b {
        1 => Ok(Qos2State::Published),
        2 => Ok(Qos2State::Released),
        _ => Err("unknown stage"),
    }
}

/// The progress record of a pack (`docs/mqtt.md`): version 2, packet id (u16 BE), stage,
/// format, member count (u16 BE), the members' seqs (u64 BE each, in order), the topic
/// suffix (u16 BE length, UTF-8).
fn encode_pack_progress(pack: &Pack, packet_id: u16, state: Qos2State) -> Bytes {
    let mut b = Vec::with_capacity(9 + 8 * pack.members.len() + pack.topic_suffix.len());
    b.push(PROGRESS_VERSION_PACK);
    b.extend_from_slice(&packet_id.to_be_bytes());
    b.push(encode_stage(state));
    b.push(pack.format.to_u8());
    // A pack has at most `max_records` members, which the config bounds to u16.
    b.extend_from_slice(&(pack.members.len() as u16).to_be_bytes());
    for m in &pack.members {
        b.extend_from_slice(&m.seq.to_be_bytes());
    }
    b.extend_from_slice(&(pack.topic_suffix.len() as u16).to_be_bytes());
    b.extend_from_slice(pack.topic_suffix.as_bytes());
    Bytes::from(b)
}

fn decode_progress(b: &[u8]) -> Result<Progress, &'static str> {
    if b.first() == Some(&PROGRESS_VERSION_PACK) {
        return decode_pack_progress(b);
    }
    let (seq, packet_id, state) = decode_single_progress(b)?;
    Ok(Progress {
        id: 0,
        packet_id,
        state,
        seq,
        pack: None,
    })
}

fn decode_pack_progress(b: &[u8]) -> Result<Progress, &'static str> {
    let take = |b: &mut &[u8], n: usize| -> Result<Vec<u8>, &'static str> {
        if b.len() < n {
            return Err("truncated");
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head.to_vec())
    };
    let mut r = &b[1..];
    let pid = take(&mut r, 2)?;
    let packet_id = u16::from_be_bytes([pid[0], pid[1]]);
    if packet_id == 0 {
        return Err("packet id 0");
    }
    let state = decode_stage(take(&mut r, 1)?[0])?;
    let format = BulkFormat::from_u8(take(&mut r, 1)?[0]).ok_or("unknown bulk format")?;
    let n = take(&mut r, 2)?;
    let n = usize::from(u16::from_be_bytes([n[0], n[1]]));
    if n < 2 {
        return Err("a pack of fewer than 2 records");
    }
    let mut members = Vec::with_capacity(n);
    for _ in 0..n {
        let s = take(&mut r, 8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(&s);
        members.push(u64::from_be_bytes(a));
    }
    let len = take(&mut r, 2)?;
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    let suffix = String::from_utf8(take(&mut r, len)?).map_err(|_| "topic suffix not UTF-8")?;
    if !r.is_empty() {
        return Err("trailing bytes");
    }
    Ok(Progress {
        id: 0,
        packet_id,
        state,
        seq: 0,
        pack: Some((members, format, suffix)),
    })
}

fn decode_single_progress(b: &[u8]) -> Result<(u64, u16, Qos2State), &'static str> {
    if b.len() != PROGRESS_LEN {
        return Err("wrong length");
    }
    if b[0] != PROGRESS_VERSION {
        return Err("unknown version");
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&b[1..9]);
    let packet_id = u16::from_be_bytes([b[9], b[10]]);
    if packet_id == 0 {
        return Err("packet id 0");
    }
    let state = decode_stage(b[11])?;
    Ok((u64::from_be_bytes(seq), packet_id, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &std::path::Path) -> Outbox {
        let store = Store::open(dir, spool_engine::Options::default()).unwrap();
        Outbox::open(store, &OutboxConfig::default()).unwrap()
    }

    #[test]
    fn progress_round_trips_and_rejects_damage() {
        for state in [Qos2State::Published, Qos2State::Released] {
            let b = encode_progress(u64::MAX - 3, 65535, state);
            assert_eq!(decode_single_progress(&b), Ok((u64::MAX - 3, 65535, state)));
        }
        assert!(decode_progress(&[1, 2, 3]).is_err());
        let mut b = encode_progress(1, 1, Qos2State::Published).to_vec();
        b[11] = 9;
        assert!(decode_progress(&b).is_err());
        let b = encode_progress(1, 0, Qos2State::Published);
        assert!(decode_progress(&b).is_err());
    }

    #[test]
    fn user_properties_round_trip_and_damage_drops_them() {
        let props = vec![
            ("a".to_string(), "1".to_string()),
            (String::new(), "é".to_string()),
            ("a".to_string(), String::new()),
        ];
        let b = encode_properties(&props).unwrap();
        assert_eq!(decode_properties(&b), Some(props));
        assert_eq!(decode_properties(&[]), Some(Vec::new()));
        assert_eq!(decode_properties(&b[..b.len() - 1]), None);
        assert_eq!(decode_properties(&[0, 1, 0xFF, 0, 0]), None);
    }

    #[tokio::test]
    async fn leased_records_come_back_at_restart_in_order_with_their_progress() {
        let dir = tempfile::tempdir().unwrap();
        let now = Instant::now();
        let mut seqs = Vec::new();
        {
            let mut ob = open(dir.path());
            for (i, qos) in [QoS::AtLeastOnce, QoS::ExactlyOnce, QoS::AtMostOnce]
                .into_iter()
                .enumerate()
            {
                let mut m = OutMessage::new(format!("t/{i}"), vec![i as u8]);
                m.qos = qos;
                seqs.push(
                    Outbox::push(ob.store(), ob.max_payload(), &m)
                        .await
                        .unwrap(),
                );
            }
            let got = ob.lease(10, now).await.unwrap();
            assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), seqs);
            let ids = ob
                .record_progress(seqs[1], 7, Qos2State::Published)
                .await
                .unwrap();
            ob.progress_recorded(seqs[1], &ids);
            let ids = ob
                .record_progress(seqs[1], 7, Qos2State::Released)
                .await
                .unwrap();
            ob.progress_recorded(seqs[1], &ids);
            // Dropped without acking: a crash.
        }
        let mut ob = open(dir.path());
        let rec = ob.recover(now).unwrap();
        assert_eq!(rec.inflight.len(), 1);
        assert_eq!(rec.inflight[0].record.seq, seqs[1]);
        assert_eq!(rec.inflight[0].packet_id, 7);
        assert_eq!(rec.inflight[0].state, Qos2State::Released);
        // The others come back first, in order; the restored one is not offered twice.
        let again = ob.lease(10, now).await.unwrap();
        assert_eq!(
            again.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![seqs[0], seqs[2]]
        );
        ob.acked(&seqs).await.unwrap();
        ob.tidy().await.unwrap();
        let s = ob.stats().unwrap();
        assert_eq!(s.depth, 0);
        assert_eq!(ob.store().stats(PROGRESS_QUEUE).unwrap().messages, 0);
    }

    fn open_bulk(dir: &std::path::Path, when: BulkWhen) -> Outbox {
        let store = Store::open(dir, spool_engine::Options::default()).unwrap();
        let config = OutboxConfig {
            bulk: Some(BulkConfig {
                when,
                ..BulkConfig::new(BulkFormat::JsonArray)
            }),
            ..OutboxConfig::default()
        };
        Outbox::open(store, &config).unwrap()
    }

    async fn push_n(ob: &Outbox, n: usize, qos: QoS, ttl: Option<Duration>) -> Vec<u64> {
        let mut seqs = Vec::new();
        for i in 0..n {
            let mut m = OutMessage::new("t", format!("{{\"n\":{i}}}"));
            m.qos = qos;
            m.ttl = ttl;
            seqs.push(
                Outbox::push(ob.store(), ob.max_payload(), &m)
                    .await
                    .unwrap(),
            );
        }
        seqs
    }

    #[tokio::test]
    async fn bulk_packs_a_lease_and_a_pack_ack_removes_every_member() {
        let dir = tempfile::tempdir().unwrap();
        let now = Instant::now();
        let mut ob = open_bulk(dir.path(), BulkWhen::Always);
        let seqs = push_n(&ob, 5, QoS::AtLeastOnce, None).await;
        // One session slot: one pack of all five.
        let got = ob.lease(1, now).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].seq, seqs[0]);
        let v: serde_json::Value = serde_json::from_slice(&got[0].payload).unwrap();
        assert_eq!(
            v,
            serde_json::json!([{"n":0},{"n":1},{"n":2},{"n":3},{"n":4}])
        );
        assert_eq!(ob.record_count(&[seqs[0]]), 5);
        assert_eq!(ob.acked(&[seqs[0]]).await.unwrap(), 5);
        assert_eq!(ob.stats().unwrap().depth, 0);
        assert_eq!(ob.counters().acked, 5);
    }

    #[tokio::test]
    async fn bulk_backlog_mode_packs_only_above_the_threshold() {
        let dir = tempfile::tempdir().unwrap();
        let now = Instant::now();
        let mut ob = open_bulk(dir.path(), BulkWhen::Backlog(3));
        push_n(&ob, 3, QoS::AtLeastOnce, None).await;
        let got = ob.lease(10, now).await.unwrap();
        assert_eq!(got.len(), 3, "3 waiting is not more than 3: one by one");
        assert!(got.iter().all(|r| r.user_properties.is_empty()));
        ob.acked(&got.iter().map(|r| r.seq).collect::<Vec<_>>())
            .await
            .unwrap();
        ob.more();
        push_n(&ob, 4, QoS::AtLeastOnce, None).await;
        let got = ob.lease(10, now).await.unwrap();
        assert_eq!(got.len(), 1, "4 waiting: packed");
        assert_eq!(
            got[0].user_properties,
            [(crate::BULK_PROPERTY.to_owned(), "4".to_owned())]
        );
    }

    #[tokio::test]
    async fn a_qos2_pack_in_flight_is_rebuilt_byte_for_byte_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let now = Instant::now();
        let (seqs, sent) = {
            let mut ob = open_bulk(dir.path(), BulkWhen::Always);
            let seqs = push_n(&ob, 3, QoS::ExactlyOnce, None).await;
            let got = ob.lease(1, now).await.unwrap();
            assert_eq!(got.len(), 1);
            let ids = ob
                .record_progress(seqs[0], 41, Qos2State::Published)
                .await
                .unwrap();
            ob.progress_recorded(seqs[0], &ids);
            (seqs, got[0].clone())
            // Dropped without acking: a crash.
        };
        let mut ob = open_bulk(dir.path(), BulkWhen::Always);
        let rec = ob.recover(now).unwrap();
        assert_eq!(rec.inflight.len(), 1);
        let r = &rec.inflight[0];
        assert_eq!((r.packet_id, r.state), (41, Qos2State::Published));
        assert_eq!(r.record.payload, sent.payload, "the same PUBLISH is resent");
        assert_eq!(r.record.topic, sent.topic);
        assert_eq!(r.record.user_properties, sent.user_properties);
        // Its members are held: a lease does not offer them again, and they leave together.
        assert!(ob.lease(10, now).await.unwrap().is_empty());
        assert_eq!(ob.acked(&[seqs[0]]).await.unwrap(), 3);
        ob.tidy().await.unwrap();
        assert_eq!(ob.stats().unwrap().depth, 0);
        assert_eq!(ob.store().stats(PROGRESS_QUEUE).unwrap().messages, 0);
    }

    #[tokio::test]
    async fn a_pack_that_expires_drops_only_its_expired_members() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = open_bulk(dir.path(), BulkWhen::Always);
        let short = push_n(&ob, 2, QoS::AtLeastOnce, Some(Duration::from_millis(30))).await;
        let long = push_n(&ob, 2, QoS::AtLeastOnce, None).await;
        let got = ob.lease(1, Instant::now()).await.unwrap();
        assert_eq!((got.len(), ob.record_count(&[got[0].seq])), (1, 4));
        assert!(got[0].expires_at.is_some());
        tokio::time::sleep(Duration::from_millis(60)).await;
        let dropped = ob.expired(got[0].seq).await.unwrap();
        assert_eq!(dropped, short);
        assert_eq!(ob.counters().expired, 2);
        // The others are in the outbox again, and lease again (packed again).
        let again = ob.lease(1, Instant::now()).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].seq, long[0]);
        assert_eq!(ob.record_count(&[long[0]]), 2);
    }

    #[tokio::test]
    async fn a_refused_pack_dead_letters_every_member() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = open_bulk(dir.path(), BulkWhen::Always);
        let seqs = push_n(&ob, 3, QoS::AtLeastOnce, None).await;
        let got = ob.lease(1, Instant::now()).await.unwrap();
        assert_eq!(ob.rejected(got[0].seq, 0x87).await.unwrap(), seqs);
        assert_eq!(ob.stats().unwrap().depth, 0);
        assert_eq!(ob.store().stats(DEAD_QUEUE).unwrap().messages, 3);
    }

    #[test]
    fn pack_progress_round_trips_and_rejects_damage() {
        let pack = Pack {
            members: [5u64, 9, 12]
                .iter()
                .map(|&seq| bulk::Member {
                    seq,
                    expires_at: None,
                })
                .collect(),
            format: BulkFormat::Ndjson,
            topic_suffix: "/bulk".into(),
        };
        let b = encode_pack_progress(&pack, 300, Qos2State::Released);
        let p = decode_progress(&b).unwrap();
        assert_eq!(p.seq(), 5);
        assert_eq!((p.packet_id, p.state), (300, Qos2State::Released));
        assert_eq!(
            p.pack,
            Some((vec![5, 9, 12], BulkFormat::Ndjson, "/bulk".to_owned()))
        );
        for cut in 1..b.len() {
            assert!(decode_progress(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = b.to_vec();
        long.push(0);
        assert!(decode_progress(&long).is_err());
    }

    #[tokio::test]
    async fn priority_first_then_fifo_and_capacity_policies() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), spool_engine::Options::default()).unwrap();
        let config = OutboxConfig {
            max_messages: 3,
            ..OutboxConfig::default()
        };
        let mut ob = Outbox::open(store, &config).unwrap();
        let push = |p: u8, i: u8| {
            let mut m = OutMessage::new("t", vec![i]);
            m.priority = p;
            m
        };
        let a = push(0, 0);
        let b = push(5, 1);
        let c = push(0, 2);
        for m in [&a, &b, &c] {
            Outbox::push(ob.store(), ob.max_payload(), m).await.unwrap();
        }
        let err = Outbox::push(ob.store(), ob.max_payload(), &push(9, 3))
            .await
            .unwrap_err();
        assert!(matches!(err, OutboxError::Full { .. }), "{err}");
        let got = ob.lease(10, Instant::now()).await.unwrap();
        let payloads: Vec<u8> = got.iter().map(|r| r.payload[0]).collect();
        assert_eq!(payloads, vec![1, 0, 2]);
        assert_eq!(ob.stats().unwrap().rejected_full, 1);
    }

    #[tokio::test]
    async fn bad_topics_and_large_payloads_are_refused_before_storing() {
        let dir = tempfile::tempdir().unwrap();
        let ob = open(dir.path());
        let err = Outbox::push(ob.store(), ob.max_payload(), &OutMessage::new("a/+", "x"))
            .await
            .unwrap_err();
        assert!(matches!(err, OutboxError::Topic { .. }), "{err}");
        let big = OutMessage::new("a", vec![0; MAX_PAYLOAD_BYTES_DEFAULT + 1]);
        let err = Outbox::push(ob.store(), ob.max_payload(), &big)
            .await
            .unwrap_err();
        assert!(matches!(err, OutboxError::PayloadTooLarge { .. }), "{err}");
        assert_eq!(ob.stats().unwrap().depth, 0);
    }
}
