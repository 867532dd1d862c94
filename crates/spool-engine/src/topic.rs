//! Topics: an append-only retained log per topic, read through cursors (dsmq's model). A
//! subscriber sees only what is published after it subscribed; a read reports how many
//! messages expired before it could see them; named cursors persist their position.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::entry::Entry;
use crate::error::{Error, Result};
use crate::name;
use crate::options::{TopicConfig, DURATION_MAX};
use crate::reader::SegPins;
use crate::state::{Topic, TopicCounters, TopicMsg};
use crate::store::{Committed, Store, Txn};

/// A reader's position in a topic: the next sequence number to read. Cheap to copy and keep;
/// a cursor with a `name` can be saved with [`Store::commit_cursor`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub topic: String,
    /// The next sequence number to read.
    pub next: u64,
    /// Set for named durable cursors.
    pub name: Option<String>,
}

/// Where a new named cursor starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorStart {
    /// After the newest message: sees only what is published from now on.
    Now,
    /// At the oldest retained message.
    Earliest,
    /// At this sequence number.
    Seq(u64),
}

/// A message read from a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMessage {
    pub seq: u64,
    pub payload: Bytes,
    /// Unix ms when it was published.
    pub published_at: u64,
    /// Messages between the cursor and this one that expired before they could be read.
    pub skipped: u64,
}

/// Counts of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicStats {
    pub name: String,
    /// Sequence number of the newest message (0 when none was ever published).
    pub last_seq: u64,
    /// Messages retained.
    pub retained: u64,
    /// Bytes retained.
    pub bytes: u64,
    /// Age of the oldest retained message in ms.
    pub oldest_age_ms: u64,
    /// Named durable cursors and their positions.
    pub cursors: Vec<(String, u64)>,
    pub counters: TopicCounters,
    pub config: TopicConfig,
}

fn unknown(name: &str) -> Error {
    Error::UnknownTopic {
        name: name.to_string(),
    }
}

fn ensure_topic(txn: &mut Txn<'_>, name: &str, config: &TopicConfig) -> u32 {
    if let Some(&id) = txn.core.state.topic_ids.get(name) {
        return id;
    }
    let id = txn.core.state.next_topic_id;
    txn.emit(Entry::TopicDef {
        topic: id,
        name: name.to_string(),
        config: config.clone(),
    });
    let created = txn.core.state.created.clone();
    txn.touch(&created);
    id
}

/// Trims topic `tid` by age now and logs the trim if it moved past what the log knows, so that
/// replay (which never reads the clock) drops the same messages whatever the config later.
fn log_trim(txn: &mut Txn<'_>, tid: u32) {
    let now = txn.now;
    txn.core.state.trim_topic(tid, now);
    let Some(t) = txn.core.state.topics.get(&tid) else {
        return;
    };
    if let Some(below_seq) = t.unlogged_trim() {
        txn.emit(Entry::TopicTrim {
            topic: tid,
            below_seq,
        });
    }
}

fn publish_txn(
    txn: &mut Txn<'_>,
    topic: &str,
    payloads: Vec<Bytes>,
    auto: bool,
    default: &TopicConfig,
) -> Result<Vec<u64>> {
    let existing = txn.core.state.topic_ids.get(topic).copied();
    if existing.is_none() && !auto {
        return Err(unknown(topic));
    }
    let config = existing
        .and_then(|id| txn.core.state.topics.get(&id))
        .map_or_else(|| default.clone(), |t| t.config.clone());
    if payloads.is_empty() {
        return Err(Error::EmptyBatch);
    }
    let mut total = 0usize;
    for p in &payloads {
        if p.len() > config.max_payload_bytes {
            return Err(Error::PayloadTooLarge {
                target: topic.to_string(),
                size: p.len(),
                max: config.max_payload_bytes,
            });
        }
        total += p.len() + 32;
    }
    let limit = crate::options::TXN_BYTES_MAX - (1 << 20);
    if total > limit {
        return Err(Error::BatchTooLarge {
            what: "the encoded batch",
            size: total,
            max: limit,
        });
    }
    txn.core.check_space(total as u64)?;
    let tid = ensure_topic(txn, topic, &config);
    let now = txn.now;
    log_trim(txn, tid);
    let mut seqs = Vec::with_capacity(payloads.len());
    for payload in payloads {
        let seq = txn.core.state.topics.get(&tid).map_or(1, |t| t.next_seq);
        txn.emit(Entry::Publish {
            topic: tid,
            seq,
            published_ms: now,
            payload,
        });
        seqs.push(seq);
    }
    if let Some(s) = txn.core.state.topics.get(&tid).map(|t| t.signal.clone()) {
        txn.touch(&s);
    }
    Ok(seqs)
}

impl Store {
    /// Creates a topic; `true` if created, `false` if it existed with the same config.
    pub fn create_topic(&self, topic: &str, config: TopicConfig) -> Result<bool> {
        name::validate(topic)?;
        config.validate()?;
        self.commit(|txn| {
            if let Some(t) = txn.core.state.topic_by_name(topic) {
                if t.config == config {
                    return Ok(false);
                }
                return Err(Error::Exists {
                    kind: "topic",
                    name: topic.to_string(),
                });
            }
            ensure_topic(txn, topic, &config);
            Ok(true)
        })
    }

    /// Replaces the config of an existing topic (retention applies at once).
    pub fn configure_topic(&self, topic: &str, config: TopicConfig) -> Result<()> {
        name::validate(topic)?;
        config.validate()?;
        self.commit(|txn| {
            let id = *txn
                .core
                .state
                .topic_ids
                .get(topic)
                .ok_or_else(|| unknown(topic))?;
            // Trim under the old config first: what readers no longer see must stay gone.
            log_trim(txn, id);
            txn.emit(Entry::TopicDef {
                topic: id,
                name: topic.to_string(),
                config,
            });
            Ok(())
        })
    }

    /// Deletes a topic, its messages and its cursors. Returns whether it existed.
    pub fn drop_topic(&self, topic: &str) -> Result<bool> {
        name::validate(topic)?;
        self.commit(|txn| {
            let Some(&id) = txn.core.state.topic_ids.get(topic) else {
                return Ok(false);
            };
            txn.emit(Entry::TopicDrop { topic: id });
            Ok(true)
        })
    }

    /// Names of all topics, sorted.
    pub fn topics(&self) -> Vec<String> {
        let core = self.shared().lock_core();
        let mut v: Vec<String> = core.state.topic_ids.keys().cloned().collect();
        v.sort();
        v
    }

    /// Publishes a message; returns its sequence number once durable. Creates the topic with
    /// the default config when missing and `auto_create` is on.
    pub fn publish(&self, topic: &str, payload: impl Into<Bytes>) -> Result<u64> {
        let mut seqs = self.publish_batch(topic, vec![payload.into()])?;
        seqs.pop().ok_or(Error::EmptyBatch)
    }

    /// Publishes several messages atomically; returns their sequence numbers.
    pub fn publish_batch(&self, topic: &str, payloads: Vec<Bytes>) -> Result<Vec<u64>> {
        name::validate(topic)?;
        let opts = &self.shared().options;
        self.commit(|txn| publish_txn(txn, topic, payloads, opts.auto_create, &opts.default_topic))
    }

    /// [`Store::publish`] for async callers.
    pub fn publish_async(&self, topic: &str, payload: impl Into<Bytes>) -> Committed<Vec<u64>> {
        self.publish_batch_async(topic, vec![payload.into()])
    }

    /// [`Store::publish_batch`] for async callers: applied now, the future resolves once
    /// durable.
    pub fn publish_batch_async(&self, topic: &str, payloads: Vec<Bytes>) -> Committed<Vec<u64>> {
        let opts = &self.shared().options;
        self.commit_async(|txn| {
            name::validate(topic)?;
            publish_txn(txn, topic, payloads, opts.auto_create, &opts.default_topic)
        })
    }

    /// A cursor that sees only what is published from now on (the topic need not exist yet).
    pub fn subscribe(&self, topic: &str) -> Result<Cursor> {
        name::validate(topic)?;
        let core = self.shared().lock_core();
        let next = core.state.topic_by_name(topic).map_or(1, |t| t.next_seq);
        Ok(Cursor {
            topic: topic.to_string(),
            next,
            name: None,
        })
    }

    /// A cursor at sequence number `seq`.
    pub fn cursor_at(&self, topic: &str, seq: u64) -> Result<Cursor> {
        name::validate(topic)?;
        Ok(Cursor {
            topic: topic.to_string(),
            next: seq.max(1),
            name: None,
        })
    }

    /// A named durable cursor: where it was last committed, or at `start` if it is new.
    pub fn durable_cursor(
        &self,
        topic: &str,
        cursor_name: &str,
        start: CursorStart,
    ) -> Result<Cursor> {
        name::validate(topic)?;
        name::validate(cursor_name)?;
        let now = self.now();
        let mut core = self.shared().lock_core();
        let tid = *core
            .state
            .topic_ids
            .get(topic)
            .ok_or_else(|| unknown(topic))?;
        core.state.trim_topic(tid, now);
        let t = core.state.topics.get(&tid).ok_or_else(|| unknown(topic))?;
        let next = match t.cursors.get(cursor_name) {
            Some(&seq) => seq,
            None => match start {
                CursorStart::Now => t.next_seq,
                CursorStart::Earliest => t.msgs.front().map_or(t.next_seq, |m| m.seq),
                CursorStart::Seq(s) => s.max(1),
            },
        };
        Ok(Cursor {
            topic: topic.to_string(),
            next,
            name: Some(cursor_name.to_string()),
        })
    }

    /// Saves a named cursor's position durably.
    pub fn commit_cursor(&self, cursor: &Cursor) -> Result<()> {
        let Some(cursor_name) = &cursor.name else {
            return Err(Error::InvalidArgument(
                "only named cursors (from durable_cursor) can be committed".into(),
            ));
        };
        self.commit(|txn| {
            let id = *txn
                .core
                .state
                .topic_ids
                .get(&cursor.topic)
                .ok_or_else(|| unknown(&cursor.topic))?;
            txn.emit(Entry::Cursor {
                topic: id,
                name: cursor_name.clone(),
                seq: cursor.next,
            });
            Ok(())
        })
    }

    fn topic_read(&self, cursor: &mut Cursor, latest: bool) -> Result<Option<TopicMessage>> {
        let now = self.now();
        let found = {
            let mut core = self.shared().lock_core();
            let core = &mut *core;
            let Some(&tid) = core.state.topic_ids.get(&cursor.topic) else {
                return Ok(None);
            };
            core.state.trim_topic(tid, now);
            let Some(t) = core.state.topics.get(&tid) else {
                return Ok(None);
            };
            let found = find_at(t, cursor, latest, core.committed_pos)?;
            let pins = SegPins::new(&self.inner.shared, found.iter().map(|f| f.msg.rec.seg));
            (found, pins)
        };
        let (found, _pins) = found;
        found
            .map(|f| self.read_topic_message(cursor, f))
            .transpose()
    }

    /// Reads a found topic message's record and advances the cursor past it.
    fn read_topic_message(&self, cursor: &mut Cursor, f: FoundMsg) -> Result<TopicMessage> {
        let bytes = self.shared().reader.read(&f.msg.rec)?;
        let payload = match crate::entry::decode_record(&bytes) {
            Ok(Entry::Publish { seq, payload, .. }) if seq == f.msg.seq => payload,
            Ok(_) => {
                return Err(Error::DamagedRecord {
                    segment: f.msg.rec.seg,
                    offset: u64::from(f.msg.rec.off),
                    reason: format!("not the record of topic message {}", f.msg.seq),
                })
            }
            Err(e) => {
                return Err(Error::DamagedRecord {
                    segment: f.msg.rec.seg,
                    offset: u64::from(f.msg.rec.off),
                    reason: e.to_string(),
                })
            }
        };
        cursor.next = f.msg.seq + 1;
        Ok(TopicMessage {
            seq: f.msg.seq,
            payload,
            published_at: f.msg.published_ms,
            skipped: f.skipped,
        })
    }

    /// The oldest retained message at or after the cursor; advances the cursor past it.
    /// `Ok(None)` when there is nothing new (or the topic does not exist).
    pub fn topic_next(&self, cursor: &mut Cursor) -> Result<Option<TopicMessage>> {
        self.topic_read(cursor, false)
    }

    /// The newest message at or after the cursor, skipping (and counting) the rest.
    pub fn topic_latest(&self, cursor: &mut Cursor) -> Result<Option<TopicMessage>> {
        self.topic_read(cursor, true)
    }

    /// Like [`Store::topic_next`], but waits up to `timeout` for a message to be published.
    pub fn topic_wait(
        &self,
        cursor: &mut Cursor,
        timeout: Duration,
    ) -> Result<Option<TopicMessage>> {
        if timeout > DURATION_MAX {
            return Err(Error::InvalidArgument(
                "wait timeout is longer than the maximum of 30 days".into(),
            ));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let (signal, seen, found) = {
                let now = self.now();
                let mut core = self.shared().lock_core();
                let core = &mut *core;
                if let Some(cause) = &core.poisoned {
                    return Err(Error::Poisoned {
                        cause: cause.clone(),
                    });
                }
                match core.state.topic_ids.get(&cursor.topic).copied() {
                    Some(tid) => {
                        core.state.trim_topic(tid, now);
                        let t = core
                            .state
                            .topics
                            .get(&tid)
                            .ok_or_else(|| unknown(&cursor.topic))?;
                        let found = find_at(t, cursor, false, core.committed_pos)?;
                        let pins =
                            SegPins::new(&self.inner.shared, found.iter().map(|f| f.msg.rec.seg));
                        (
                            t.signal.clone(),
                            t.signal.version(),
                            found.map(|f| (f, pins)),
                        )
                    }
                    // Not created yet: wait for a topic to be created.
                    None => (
                        core.state.created.clone(),
                        core.state.created.version(),
                        None,
                    ),
                }
            };
            if let Some((f, _pins)) = found {
                return self.read_topic_message(cursor, f).map(Some);
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            signal.wait(seen, deadline);
        }
    }

    /// Counts of a topic.
    pub fn topic_stats(&self, topic: &str) -> Result<TopicStats> {
        let now = self.now();
        let mut core = self.shared().lock_core();
        let tid = *core
            .state
            .topic_ids
            .get(topic)
            .ok_or_else(|| unknown(topic))?;
        core.state.trim_topic(tid, now);
        let t = core.state.topics.get(&tid).ok_or_else(|| unknown(topic))?;
        Ok(TopicStats {
            name: t.name.clone(),
            last_seq: t.next_seq - 1,
            retained: t.msgs.len() as u64,
            bytes: t.bytes,
            oldest_age_ms: t
                .msgs
                .front()
                .map_or(0, |m| now.saturating_sub(m.published_ms)),
            cursors: t.cursors.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            counters: t.counters,
            config: t.config.clone(),
        })
    }
}

/// A topic message found under the lock, to be read once the lock is released.
struct FoundMsg {
    msg: TopicMsg,
    skipped: u64,
}

fn find_at(
    t: &Topic,
    cursor: &Cursor,
    latest: bool,
    committed: (u64, u64),
) -> Result<Option<FoundMsg>> {
    if cursor.next > t.next_seq {
        return Err(Error::InvalidArgument(format!(
            "cursor {} is past the end of topic {:?} (next sequence number {})",
            cursor.next, t.name, t.next_seq
        )));
    }
    let Some(start) = t.position(cursor.next) else {
        return Ok(None);
    };
    // Only committed messages are visible; they form a prefix of the retained ones.
    let visible_end = start
        + t.msgs
            .range(start..)
            .take_while(|m| (m.rec.seg, u64::from(m.rec.off) + u64::from(m.rec.len)) <= committed)
            .count();
    if visible_end == start {
        return Ok(None);
    }
    let idx = if latest { visible_end - 1 } else { start };
    let m = t.msgs[idx];
    Ok(Some(FoundMsg {
        msg: m,
        skipped: m.seq - cursor.next,
    }))
}
