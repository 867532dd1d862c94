//! Work-queue operations. Each one checks its input and the queue state first, then emits its
//! log entries through a transaction (see `store.rs`), then waits for the commit. Semantics in
//! `ARCHITECTURE.md` and `../shared/design/engine.md` §2; errors as in `error.rs`.

use std::time::{Duration, Instant};

use crate::entry::{Enqueue, Entry, MoveReason, RemoveReason};
use crate::error::{Error, Result};
use crate::message::{Message, Push, Receipt};
use crate::name;
use crate::options::{Overflow, QueueConfig, BATCH_LEN_MAX, DURATION_MAX, FRAME_BODY_MAX};
use crate::state::{MessageState, Queue, QueueCounters, State};
use crate::store::{Committed, Store, Txn};

/// The most messages one lease, pop or peek call returns.
pub const READ_COUNT_MAX: usize = 10_000;
/// Headers per message, and bytes of one header name (u16 length in the log).
pub const HEADERS_MAX: usize = 64;
/// Bytes of a subject or header name.
pub const SUBJECT_LEN_MAX: usize = 4096;

/// Counts of a queue, as returned by [`Store::stats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStats {
    pub name: String,
    /// Ready to be leased now.
    pub visible: u64,
    /// Waiting for their delay (or nack delay) to pass.
    pub delayed: u64,
    /// Leased and not yet acked.
    pub leased: u64,
    /// Messages in this queue's dead-letter queue (0 without one).
    pub dead: u64,
    /// All messages held.
    pub messages: u64,
    /// Bytes held (payloads, subjects and headers).
    pub bytes: u64,
    /// Age of the oldest message in ms (0 when empty).
    pub oldest_age_ms: u64,
    pub dead_letter_queue: Option<String>,
    pub counters: QueueCounters,
    pub config: QueueConfig,
}

fn check_count(n: usize) -> Result<()> {
    if n == 0 || n > READ_COUNT_MAX {
        return Err(Error::InvalidArgument(format!(
            "count {n} is out of range: use 1 to {READ_COUNT_MAX}"
        )));
    }
    Ok(())
}

fn check_duration(what: &str, d: Duration) -> Result<u64> {
    if d > DURATION_MAX {
        return Err(Error::InvalidArgument(format!(
            "{what} of {} s is longer than the maximum of 30 days",
            d.as_secs()
        )));
    }
    Ok(d.as_millis() as u64)
}

fn check_visibility(d: Duration) -> Result<u64> {
    let ms = check_duration("visibility", d)?;
    if ms == 0 {
        return Err(Error::InvalidArgument(
            "visibility must be at least 1 ms".into(),
        ));
    }
    Ok(ms)
}

fn unknown(name: &str) -> Error {
    Error::UnknownQueue {
        name: name.to_string(),
    }
}

impl State {
    fn queue_id(&self, queue: &str) -> Result<u32> {
        self.queue_ids
            .get(queue)
            .copied()
            .ok_or_else(|| unknown(queue))
    }
}

/// Finds the queue's id, or emits its creation (after everything else was checked).
fn ensure_queue(txn: &mut Txn<'_>, name: &str, config: &QueueConfig) -> u32 {
    if let Some(&id) = txn.core.state.queue_ids.get(name) {
        return id;
    }
    let id = txn.core.state.next_queue_id;
    txn.emit(Entry::QueueDef {
        queue: id,
        name: name.to_string(),
        config: config.clone(),
    });
    // Wakes `lease_wait` calls waiting for this queue to exist.
    let created = txn.core.state.created.clone();
    txn.touch(&created);
    id
}

/// The dead-letter queue of `q`: its id, emitting its creation when missing.
fn ensure_dlq(txn: &mut Txn<'_>, qid: u32, default: &QueueConfig) -> Option<u32> {
    let q = txn.core.state.queues.get(&qid)?;
    let dlq = q.config.dead_letter_queue_of(&q.name)?;
    if dlq == q.name {
        return None;
    }
    let config = QueueConfig {
        max_receives: 0,
        dead_letter_queue: None,
        ..default.clone()
    };
    Some(ensure_queue(txn, &dlq, &config))
}

fn origin_name(state: &State, m: &crate::state::Msg) -> Option<String> {
    m.origin()
        .and_then(|(qid, _)| state.queues.get(&qid))
        .map(|q| q.name.clone())
}

/// Checks a receipt against the message it names.
fn check_receipt(q: &Queue, receipt: Receipt) -> Result<()> {
    let m = q.msgs.get(receipt.id).ok_or_else(|| Error::NotFound {
        queue: q.name.clone(),
        id: receipt.id,
    })?;
    // The generation must be the one the last lease handed out, and still in force: leased,
    // or ready again because that lease expired and nobody leased it since (SQS-like
    // leniency). A nack bumps the generation without handing it out (`delivered` false).
    let current = m.delivered
        && m.lease_gen == receipt.generation
        && matches!(m.state, MessageState::Leased(_) | MessageState::Ready);
    if !current {
        return Err(Error::LeaseLost {
            queue: q.name.clone(),
            id: receipt.id,
            receipt: receipt.to_string(),
        });
    }
    Ok(())
}

impl Store {
    // --- queue management ------------------------------------------------------------------

    /// Creates a queue. Returns `true` if it was created, `false` if it already existed with
    /// the same config; a different config is [`Error::Exists`]. A queue with `max_receives`
    /// or `dead_letter_queue` gets its dead-letter queue created too.
    pub fn create_queue(&self, queue: &str, config: QueueConfig) -> Result<bool> {
        name::validate(queue)?;
        config.validate()?;
        let default = self.shared().options.default_queue.clone();
        self.commit(|txn| {
            if let Some(q) = txn.core.state.queue_by_name(queue) {
                if q.config == config {
                    return Ok(false);
                }
                return Err(Error::Exists {
                    kind: "queue",
                    name: queue.to_string(),
                });
            }
            let id = ensure_queue(txn, queue, &config);
            ensure_dlq(txn, id, &default);
            Ok(true)
        })
    }

    /// Replaces the config of an existing queue.
    pub fn configure_queue(&self, queue: &str, config: QueueConfig) -> Result<()> {
        name::validate(queue)?;
        config.validate()?;
        let default = self.shared().options.default_queue.clone();
        self.commit(|txn| {
            let id = txn.core.state.queue_id(queue)?;
            txn.emit(Entry::QueueDef {
                queue: id,
                name: queue.to_string(),
                config,
            });
            ensure_dlq(txn, id, &default);
            Ok(())
        })
    }

    /// Deletes a queue and all its messages. Returns whether it existed.
    pub fn drop_queue(&self, queue: &str) -> Result<bool> {
        name::validate(queue)?;
        self.commit(|txn| {
            let Some(&id) = txn.core.state.queue_ids.get(queue) else {
                return Ok(false);
            };
            let signal = txn.core.state.queues.get(&id).map(|q| q.signal.clone());
            txn.emit(Entry::QueueDrop { queue: id });
            if let Some(s) = signal {
                txn.touch(&s);
            }
            Ok(true)
        })
    }

    /// Names of all queues, sorted.
    pub fn queues(&self) -> Vec<String> {
        let core = self.shared().lock_core();
        let mut v: Vec<String> = core.state.queue_ids.keys().cloned().collect();
        v.sort();
        v
    }

    /// The config of a queue.
    pub fn queue_config(&self, queue: &str) -> Result<QueueConfig> {
        let core = self.shared().lock_core();
        core.state
            .queue_by_name(queue)
            .map(|q| q.config.clone())
            .ok_or_else(|| unknown(queue))
    }

    // --- push ------------------------------------------------------------------------------

    /// Pushes one message; returns its id once it is durable.
    pub fn push(&self, queue: &str, msg: Push) -> Result<u64> {
        let ids = self.push_batch(queue, vec![msg])?;
        ids.first().copied().ok_or(Error::EmptyBatch)
    }

    /// Pushes messages atomically (all or none survive a crash); returns their ids, in order,
    /// once they are durable.
    pub fn push_batch(&self, queue: &str, msgs: Vec<Push>) -> Result<Vec<u64>> {
        name::validate(queue)?;
        self.commit(|txn| push_txn(txn, queue, msgs, &self.shared().options))
    }

    /// [`Store::push`] for async callers: the future resolves once the message is durable.
    pub fn push_async(&self, queue: &str, msg: Push) -> Committed<Vec<u64>> {
        self.push_batch_async(queue, vec![msg])
    }

    /// [`Store::push_batch`] for async callers.
    pub fn push_batch_async(&self, queue: &str, msgs: Vec<Push>) -> Committed<Vec<u64>> {
        let opts = &self.shared().options;
        self.commit_async(|txn| {
            name::validate(queue)?;
            push_txn(txn, queue, msgs, opts)
        })
    }

    // --- lease and friends -----------------------------------------------------------------

    /// Leases up to `n` visible messages (priority desc, then id), hiding each for
    /// `visibility` (the queue default when `None`). Each comes with a [`Receipt`] for
    /// ack/nack/extend/dead. The leases are durable before this returns, so receive counts
    /// survive a crash and a poison message does reach its dead-letter queue.
    pub fn lease(
        &self,
        queue: &str,
        n: usize,
        visibility: Option<Duration>,
    ) -> Result<Vec<Message>> {
        check_count(n)?;
        let vis = visibility.map(check_visibility).transpose()?;
        let default = self.shared().options.default_queue.clone();
        self.commit(|txn| lease_txn(txn, queue, n, vis, &default))
    }

    /// [`Store::lease`] for async callers (it never blocks on an empty queue; the future
    /// resolves once the leases are durable).
    pub fn lease_async(
        &self,
        queue: &str,
        n: usize,
        visibility: Option<Duration>,
    ) -> Committed<Vec<Message>> {
        let default = self.shared().options.default_queue.clone();
        self.commit_async(|txn| {
            check_count(n)?;
            let vis = visibility.map(check_visibility).transpose()?;
            lease_txn(txn, queue, n, vis, &default)
        })
    }

    /// Like [`Store::lease`], but when nothing is visible waits up to `timeout` for a push, an
    /// expiring delay or an expiring lease (woken by them, no polling). Returns an empty vector
    /// on timeout. With `auto_create` on, a queue that does not exist yet is waited for (a
    /// worker may start before its producer); with it off, that is [`Error::UnknownQueue`].
    pub fn lease_wait(
        &self,
        queue: &str,
        n: usize,
        visibility: Option<Duration>,
        timeout: Duration,
    ) -> Result<Vec<Message>> {
        check_count(n)?;
        let vis = visibility.map(check_visibility).transpose()?;
        let timeout_ms = check_duration("wait timeout", timeout)?;
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        name::validate(queue)?;
        let default = self.shared().options.default_queue.clone();
        let auto_create = self.shared().options.auto_create;
        loop {
            let mut wait_for = None;
            let (got, ticket) = self.txn(|txn| {
                // Read a signal's version under the lock: a commit after this point wakes us.
                let state = &txn.core.state;
                if state.queue_by_name(queue).is_none() && auto_create {
                    wait_for = Some((state.created.clone(), state.created.version(), None));
                    return Ok(Vec::new());
                }
                let got = lease_txn(txn, queue, n, vis, &default)?;
                if got.is_empty() {
                    let q = txn
                        .core
                        .state
                        .queue_by_name(queue)
                        .ok_or_else(|| unknown(queue))?;
                    wait_for = Some((q.signal.clone(), q.signal.version(), q.next_due()));
                }
                Ok(got)
            })?;
            self.wait(ticket)?;
            if !got.is_empty() {
                return Ok(got);
            }
            let Some((signal, seen, due)) = wait_for else {
                return Ok(got);
            };
            let now_wall = Instant::now();
            if now_wall >= deadline {
                return Ok(Vec::new());
            }
            let mut until = deadline;
            if let Some(due) = due {
                let in_ms = due.saturating_sub(self.now());
                until = until.min(now_wall + Duration::from_millis(in_ms));
            }
            signal.wait(seen, until);
        }
    }

    /// Acknowledges a leased message: it is removed for good. [`Error::LeaseLost`] when the
    /// receipt is stale, [`Error::NotFound`] when the message is gone (acked twice, expired,
    /// purged). An ack after the lease expired still succeeds if nobody leased it since.
    pub fn ack(&self, queue: &str, receipt: Receipt) -> Result<()> {
        let mut r = self.ack_batch(queue, &[receipt])?;
        r.pop().unwrap_or(Ok(()))
    }

    /// Acknowledges several receipts in one commit; one result per receipt.
    pub fn ack_batch(&self, queue: &str, receipts: &[Receipt]) -> Result<Vec<Result<()>>> {
        self.commit(|txn| ack_txn(txn, queue, receipts))
    }

    /// [`Store::ack_batch`] for async callers.
    pub fn ack_batch_async(&self, queue: &str, receipts: &[Receipt]) -> Committed<Vec<Result<()>>> {
        self.commit_async(|txn| ack_txn(txn, queue, receipts))
    }

    /// Releases a lease early: the message is visible again after `delay` (its receive count is
    /// kept, the receipt becomes stale). `priority` replaces the message's priority if given.
    pub fn nack(
        &self,
        queue: &str,
        receipt: Receipt,
        delay: Duration,
        priority: Option<u8>,
    ) -> Result<()> {
        let delay = check_duration("delay", delay)?;
        self.commit(|txn| {
            let qid = txn.core.state.queue_id(queue)?;
            let q = txn
                .core
                .state
                .queues
                .get(&qid)
                .ok_or_else(|| unknown(queue))?;
            check_receipt(q, receipt)?;
            let m = q.msgs.get(receipt.id).ok_or_else(|| unknown(queue))?;
            let entry = Entry::Nack {
                queue: qid,
                id: receipt.id,
                lease_gen: m.lease_gen + 1,
                visible_ms: if delay == 0 { 0 } else { txn.now + delay },
                priority: priority.unwrap_or(m.priority),
            };
            let signal = q.signal.clone();
            txn.emit(entry);
            txn.touch(&signal);
            Ok(())
        })
    }

    /// Extends a lease: the message stays hidden until now + `visibility`. The receipt stays
    /// valid. Returns the new visible-at time (ms).
    pub fn extend(&self, queue: &str, receipt: Receipt, visibility: Duration) -> Result<u64> {
        let vis = check_visibility(visibility)?;
        self.commit(|txn| {
            let qid = txn.core.state.queue_id(queue)?;
            let q = txn
                .core
                .state
                .queues
                .get(&qid)
                .ok_or_else(|| unknown(queue))?;
            check_receipt(q, receipt)?;
            let m = q.msgs.get(receipt.id).ok_or_else(|| unknown(queue))?;
            let until = txn.now + vis;
            let entry = Entry::Lease {
                queue: qid,
                id: receipt.id,
                receive_count: m.receive_count,
                lease_gen: m.lease_gen,
                until_ms: until,
                first_received_ms: m.first_received_ms,
            };
            txn.emit(entry);
            Ok(until)
        })
    }

    /// Moves a leased message to the queue's dead-letter queue at once (a consumer's verdict:
    /// it can never be processed). Returns its id in the dead-letter queue.
    pub fn dead(&self, queue: &str, receipt: Receipt) -> Result<u64> {
        let default = self.shared().options.default_queue.clone();
        self.commit(|txn| {
            let qid = txn.core.state.queue_id(queue)?;
            let q = txn
                .core
                .state
                .queues
                .get(&qid)
                .ok_or_else(|| unknown(queue))?;
            check_receipt(q, receipt)?;
            if q.config
                .dead_letter_queue_of(&q.name)
                .is_none_or(|d| d == q.name)
            {
                return Err(Error::NoDeadLetterQueue {
                    queue: queue.to_string(),
                });
            }
            let dlq = ensure_dlq(txn, qid, &default).ok_or_else(|| Error::NoDeadLetterQueue {
                queue: queue.to_string(),
            })?;
            let new_id = txn.core.state.next_msg_id;
            txn.emit(Entry::Move {
                src: qid,
                id: receipt.id,
                dst: dlq,
                new_id,
                reason: MoveReason::Rejected,
                at_ms: txn.now,
            });
            if let Some(s) = txn.core.state.queues.get(&dlq).map(|q| q.signal.clone()) {
                txn.touch(&s);
            }
            Ok(new_id)
        })
    }

    /// Moves up to `n` messages from dead-letter queue `dlq` back to the queues they came from
    /// (with fresh ids and counters). Messages whose source queue no longer exists stay.
    /// Returns how many moved.
    pub fn redrive(&self, dlq: &str, n: usize) -> Result<usize> {
        check_count(n)?;
        self.commit(|txn| {
            let qid = txn.core.state.queue_id(dlq)?;
            let now = txn.now;
            let q = txn
                .core
                .state
                .queues
                .get_mut(&qid)
                .ok_or_else(|| unknown(dlq))?;
            q.promote(now);
            let mut ids: Vec<(u64, u32)> = q
                .msgs
                .values()
                .filter(|m| m.state == MessageState::Ready)
                .filter_map(|m| m.origin().map(|(src, _)| (m.id, src)))
                .collect();
            ids.sort_unstable();
            let mut moved = 0;
            for (id, src) in ids {
                if moved >= n {
                    break;
                }
                let Some(signal) = txn.core.state.queues.get(&src).map(|q| q.signal.clone()) else {
                    continue;
                };
                let new_id = txn.core.state.next_msg_id;
                txn.emit(Entry::Move {
                    src: qid,
                    id,
                    dst: src,
                    new_id,
                    reason: MoveReason::Redrive,
                    at_ms: now,
                });
                txn.touch(&signal);
                moved += 1;
            }
            Ok(moved)
        })
    }

    // --- at-most-once and reads ------------------------------------------------------------

    /// Removes and returns up to `n` visible messages (at-most-once: a crash after this returns
    /// cannot bring them back; a crash before it returns may).
    pub fn pop(&self, queue: &str, n: usize) -> Result<Vec<Message>> {
        check_count(n)?;
        self.commit(|txn| {
            let qid = txn.core.state.queue_id(queue)?;
            let now = txn.now;
            let mut out = Vec::new();
            while out.len() < n {
                let Some(id) = next_deliverable(txn, qid) else {
                    break;
                };
                let state = &txn.core.state;
                let Some(m) = state.queues.get(&qid).and_then(|q| q.msgs.get(id)) else {
                    break;
                };
                let mut msg = Message::from_msg(m, None, origin_name(state, m));
                msg.receive_count += 1;
                msg.first_received_at.get_or_insert(now);
                txn.emit(Entry::Remove {
                    queue: qid,
                    id,
                    reason: RemoveReason::Popped,
                });
                out.push(msg);
            }
            Ok(out)
        })
    }

    /// Up to `n` visible messages in delivery order, without changing anything.
    pub fn peek(&self, queue: &str, n: usize) -> Result<Vec<Message>> {
        check_count(n)?;
        let committed = self.committed();
        let now = self.now();
        let mut core = self.shared().lock_core();
        let state = &mut core.state;
        let q = state
            .queue_by_name_mut(queue)
            .ok_or_else(|| unknown(queue))?;
        q.promote(now);
        let ids = q.ready_in_order(n, |m| m.ticket <= committed && !m.expired(now));
        let q = state.queue_by_name(queue).ok_or_else(|| unknown(queue))?;
        Ok(ids
            .iter()
            .filter_map(|id| q.msgs.get(*id))
            .map(|m| Message::from_msg(m, None, origin_name(state, m)))
            .collect())
    }

    /// One message by id, in any state, without changing it.
    pub fn get(&self, queue: &str, id: u64) -> Result<Message> {
        let committed = self.committed();
        let now = self.now();
        let mut core = self.shared().lock_core();
        core.state
            .queue_by_name_mut(queue)
            .ok_or_else(|| unknown(queue))?
            .promote(now);
        let q = core
            .state
            .queue_by_name(queue)
            .ok_or_else(|| unknown(queue))?;
        q.msgs
            .get(id)
            .filter(|m| m.ticket <= committed)
            .map(|m| Message::from_msg(m, None, origin_name(&core.state, m)))
            .ok_or_else(|| Error::NotFound {
                queue: queue.to_string(),
                id,
            })
    }

    /// Every message of a queue in id order, in any state (for inspection and tests).
    pub fn messages(&self, queue: &str) -> Result<Vec<Message>> {
        let committed = self.committed();
        let now = self.now();
        let mut core = self.shared().lock_core();
        let q = core
            .state
            .queue_by_name_mut(queue)
            .ok_or_else(|| unknown(queue))?;
        q.promote(now);
        let q = core
            .state
            .queue_by_name(queue)
            .ok_or_else(|| unknown(queue))?;
        let mut v: Vec<Message> = q
            .msgs
            .values()
            .filter(|m| m.ticket <= committed)
            .map(|m| Message::from_msg(m, None, origin_name(&core.state, m)))
            .collect();
        v.sort_by_key(|m| m.id);
        Ok(v)
    }

    /// Deletes a message by id, whatever its state.
    pub fn delete(&self, queue: &str, id: u64) -> Result<()> {
        self.commit(|txn| {
            let qid = txn.core.state.queue_id(queue)?;
            let q = txn
                .core
                .state
                .queues
                .get(&qid)
                .ok_or_else(|| unknown(queue))?;
            if !q.msgs.contains_key(id) {
                return Err(Error::NotFound {
                    queue: queue.to_string(),
                    id,
                });
            }
            txn.emit(Entry::Remove {
                queue: qid,
                id,
                reason: RemoveReason::Deleted,
            });
            Ok(())
        })
    }

    /// Deletes every message of a queue (the queue and its config stay). Returns how many.
    pub fn purge(&self, queue: &str) -> Result<u64> {
        self.commit(|txn| {
            let qid = txn.core.state.queue_id(queue)?;
            let q = txn
                .core
                .state
                .queues
                .get(&qid)
                .ok_or_else(|| unknown(queue))?;
            let n = q.msgs.len() as u64;
            if n > 0 {
                let below_id = txn.core.state.next_msg_id;
                txn.emit(Entry::Purge {
                    queue: qid,
                    below_id,
                });
            }
            Ok(n)
        })
    }

    /// Counts of a queue.
    pub fn stats(&self, queue: &str) -> Result<QueueStats> {
        let now = self.now();
        let mut core = self.shared().lock_core();
        let q = core
            .state
            .queue_by_name_mut(queue)
            .ok_or_else(|| unknown(queue))?;
        q.promote(now);
        let q = core
            .state
            .queue_by_name(queue)
            .ok_or_else(|| unknown(queue))?;
        let dlq_name = q.config.dead_letter_queue_of(&q.name);
        let dead = dlq_name
            .as_deref()
            .and_then(|d| core.state.queue_by_name(d))
            .map_or(0, |d| d.msgs.len() as u64);
        let oldest = q.msgs.values().map(|m| m.enqueued_ms).min();
        Ok(QueueStats {
            name: q.name.clone(),
            visible: q.n_ready,
            delayed: q.n_delayed(),
            leased: q.n_leased(),
            dead,
            messages: q.msgs.len() as u64,
            bytes: q.bytes,
            oldest_age_ms: oldest.map_or(0, |o| now.saturating_sub(o)),
            dead_letter_queue: dlq_name,
            counters: q.counters,
            config: q.config.clone(),
        })
    }
}

fn push_txn(
    txn: &mut Txn<'_>,
    queue: &str,
    msgs: Vec<Push>,
    opts: &crate::options::Options,
) -> Result<Vec<u64>> {
    if msgs.is_empty() {
        return Err(Error::EmptyBatch);
    }
    if msgs.len() > BATCH_LEN_MAX {
        return Err(Error::BatchTooLarge {
            what: "the message count",
            size: msgs.len(),
            max: BATCH_LEN_MAX,
        });
    }
    let existing = txn.core.state.queue_ids.get(queue).copied();
    if existing.is_none() && !opts.auto_create {
        return Err(unknown(queue));
    }
    let config = existing
        .and_then(|id| txn.core.state.queues.get(&id))
        .map_or_else(|| opts.default_queue.clone(), |q| q.config.clone());
    // Check every message before anything is emitted.
    let mut encoded = 0usize;
    let mut new_bytes = 0u64;
    let mut min_prio = u8::MAX;
    let mut plans = Vec::with_capacity(msgs.len());
    for m in &msgs {
        if m.payload.len() > config.max_payload_bytes {
            return Err(Error::PayloadTooLarge {
                target: queue.to_string(),
                size: m.payload.len(),
                max: config.max_payload_bytes,
            });
        }
        if m.subject
            .as_ref()
            .is_some_and(|s| s.len() > SUBJECT_LEN_MAX)
        {
            return Err(Error::InvalidArgument(format!(
                "subject longer than {SUBJECT_LEN_MAX} bytes"
            )));
        }
        if m.headers.len() > HEADERS_MAX
            || m.headers
                .iter()
                .any(|(k, v)| k.len() > SUBJECT_LEN_MAX || v.len() > config.max_payload_bytes)
        {
            return Err(Error::InvalidArgument(format!(
                "at most {HEADERS_MAX} headers, names up to {SUBJECT_LEN_MAX} bytes, values up to max_payload_bytes"
            )));
        }
        let delay = check_duration("delay", m.delay.unwrap_or(config.delay))?;
        let ttl = match m.ttl {
            Some(t) => Some(check_duration("ttl", t)?),
            None => config.retention.map(|r| r.as_millis() as u64),
        };
        encoded += Entry::enqueue_len(m.payload.len(), m.subject.as_deref(), &m.headers);
        new_bytes += (m.payload.len()
            + m.subject.as_ref().map_or(0, String::len)
            + m.headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()) as u64;
        min_prio = min_prio.min(m.priority);
        plans.push((delay, ttl));
    }
    // Headroom for the queue definition and evictions sharing the frame.
    if encoded > FRAME_BODY_MAX - (1 << 20) {
        return Err(Error::BatchTooLarge {
            what: "the encoded batch",
            size: encoded,
            max: FRAME_BODY_MAX - (1 << 20),
        });
    }
    // Capacity.
    let n_new = msgs.len() as u64;
    let mut evict = Vec::new();
    if config.max_messages != 0 || config.max_bytes != 0 {
        let (count, bytes) = existing
            .and_then(|id| txn.core.state.queues.get(&id))
            .map_or((0, 0), |q| (q.msgs.len() as u64, q.bytes));
        let over = |c: u64, b: u64| {
            (config.max_messages != 0 && c + n_new > config.max_messages)
                || (config.max_bytes != 0 && b + new_bytes > config.max_bytes)
        };
        if over(count, bytes) {
            let limit = format!(
                "{count} messages, {bytes} bytes; limits {} messages, {} bytes",
                config.max_messages, config.max_bytes
            );
            let full = || Error::Full {
                queue: queue.to_string(),
                limit: limit.clone(),
            };
            if config.overflow == Overflow::Reject || over(0, 0) {
                if let Some(q) = existing.and_then(|id| txn.core.state.queues.get_mut(&id)) {
                    q.counters.rejected_full += n_new;
                }
                return Err(full());
            }
            // Plan evictions: ready messages from the lowest priorities up to the lowest
            // priority being pushed, oldest first.
            let Some(q) = existing.and_then(|id| txn.core.state.queues.get_mut(&id)) else {
                return Err(full());
            };
            q.promote(txn.now);
            let (mut c, mut b) = (count, bytes);
            let mut lanes: Vec<u8> = q
                .msgs
                .values()
                .filter(|m| m.state == MessageState::Ready && m.priority <= min_prio)
                .map(|m| m.priority)
                .collect();
            lanes.sort_unstable();
            lanes.dedup();
            'plan: for p in lanes {
                let ids = q.ready_in_order(usize::MAX, |m| m.priority == p);
                for id in ids {
                    if !over(c, b) {
                        break 'plan;
                    }
                    if let Some(m) = q.msgs.get(id) {
                        c -= 1;
                        b -= m.size();
                        evict.push(id);
                    }
                }
            }
            if over(c, b) {
                q.counters.rejected_full += n_new;
                return Err(full());
            }
        }
    }
    // Everything is checked: emit.
    let qid = ensure_queue(txn, queue, &config);
    for id in evict {
        txn.emit(Entry::Remove {
            queue: qid,
            id,
            reason: RemoveReason::Evicted,
        });
    }
    let now = txn.now;
    let mut ids = Vec::with_capacity(msgs.len());
    for (m, (delay, ttl)) in msgs.into_iter().zip(plans) {
        let id = txn.core.state.next_msg_id;
        txn.emit(Entry::Enqueue(Enqueue {
            queue: qid,
            id,
            priority: m.priority,
            enqueued_ms: now,
            expires_ms: ttl.map_or(0, |t| now.saturating_add(t).max(1)),
            visible_ms: if delay == 0 { 0 } else { now + delay },
            subject: m.subject,
            headers: m.headers,
            payload: m.payload,
        }));
        ids.push(id);
    }
    if let Some(s) = txn.core.state.queues.get(&qid).map(|q| q.signal.clone()) {
        txn.touch(&s);
    }
    Ok(ids)
}

/// The next message of queue `qid` that can be handed out now (priority desc, then id), after
/// promoting due delays and expired leases; expired messages met on the way are dropped (and
/// counted) in the same transaction.
fn next_deliverable(txn: &mut Txn<'_>, qid: u32) -> Option<u64> {
    let now = txn.now;
    loop {
        let q = txn.core.state.queues.get_mut(&qid)?;
        q.promote(now);
        let id = q.next_ready(false, u8::MAX)?;
        if !q.msgs.get(id)?.expired(now) {
            return Some(id);
        }
        txn.emit(Entry::Remove {
            queue: qid,
            id,
            reason: RemoveReason::Expired,
        });
    }
}

fn lease_txn(
    txn: &mut Txn<'_>,
    queue: &str,
    n: usize,
    vis: Option<u64>,
    default: &QueueConfig,
) -> Result<Vec<Message>> {
    let qid = txn.core.state.queue_id(queue)?;
    let now = txn.now;
    let mut out = Vec::new();
    while out.len() < n {
        let Some(id) = next_deliverable(txn, qid) else {
            break;
        };
        let Some(q) = txn.core.state.queues.get(&qid) else {
            break;
        };
        let vis = vis.unwrap_or(q.config.visibility.as_millis() as u64);
        let max_receives = q.config.max_receives;
        let Some(m) = q.msgs.get(id) else { break };
        let (receive_count, lease_gen, first_received_ms) =
            (m.receive_count, m.lease_gen, m.first_received_ms);
        if max_receives > 0 && receive_count >= max_receives {
            if let Some(dlq) = ensure_dlq(txn, qid, default) {
                let new_id = txn.core.state.next_msg_id;
                txn.emit(Entry::Move {
                    src: qid,
                    id,
                    dst: dlq,
                    new_id,
                    reason: MoveReason::MaxReceives,
                    at_ms: now,
                });
                if let Some(s) = txn.core.state.queues.get(&dlq).map(|q| q.signal.clone()) {
                    txn.touch(&s);
                }
                continue;
            }
        }
        let receipt = Receipt {
            id,
            generation: lease_gen + 1,
        };
        let entry = Entry::Lease {
            queue: qid,
            id,
            receive_count: receive_count + 1,
            lease_gen: lease_gen + 1,
            until_ms: now + vis,
            first_received_ms: if first_received_ms == 0 {
                now
            } else {
                first_received_ms
            },
        };
        txn.emit(entry);
        let state = &txn.core.state;
        if let Some(m) = state.queues.get(&qid).and_then(|q| q.msgs.get(id)) {
            out.push(Message::from_msg(m, Some(receipt), origin_name(state, m)));
        }
    }
    Ok(out)
}

fn ack_txn(txn: &mut Txn<'_>, queue: &str, receipts: &[Receipt]) -> Result<Vec<Result<()>>> {
    let qid = txn.core.state.queue_id(queue)?;
    let mut out = Vec::with_capacity(receipts.len());
    for &r in receipts {
        let q = txn
            .core
            .state
            .queues
            .get(&qid)
            .ok_or_else(|| unknown(queue))?;
        match check_receipt(q, r) {
            Ok(()) => {
                txn.emit(Entry::Remove {
                    queue: qid,
                    id: r.id,
                    reason: RemoveReason::Acked,
                });
                out.push(Ok(()));
            }
            Err(e) => out.push(Err(e)),
        }
    }
    Ok(out)
}
