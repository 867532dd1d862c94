//! Work-queue operations. Each one checks its input and the queue state first, then emits its
//! log entries through a transaction (see `store.rs`), then waits for the commit. Semantics in
//! `ARCHITECTURE.md` and `../shared/design/engine.md` §2; errors as in `error.rs`.

use std::io::Read;
use std::time::{Duration, Instant};

use crate::entry::{decode_record, Carried, Enqueue, Entry, RecRef, RemoveReason};
use crate::error::{Error, Result};
use crate::message::{read_messages, Counts, Message, Out, Push, Receipt};
use crate::name;
use crate::options::{Overflow, QueueConfig, BATCH_LEN_MAX, DURATION_MAX, TXN_BYTES_MAX};
use crate::reader::SegPins;
use crate::state::{Found, MessageState, Queue, QueueCounters, State, Touched};
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

/// Bytes of copied messages (dead-letter moves, redrives) one transaction emits at most; the
/// rest waits for the next call.
const MOVE_BYTES_BUDGET: usize = 16 << 20;

/// Checks a receipt against the message it names in queue `qid`; returns the message.
fn check_receipt(state: &mut State, qid: u32, receipt: Receipt) -> Result<Touched> {
    let name = state
        .queues
        .get(&qid)
        .map(|q| q.name.clone())
        .unwrap_or_default();
    let lost = || Error::LeaseLost {
        queue: name.clone(),
        id: receipt.id,
        receipt: receipt.to_string(),
    };
    let t = match state.find(qid, receipt.id)? {
        Some(Found::Touched(t)) => t,
        // Never leased.
        Some(Found::Stream(_)) => return Err(lost()),
        None => {
            return Err(Error::NotFound {
                queue: name.clone(),
                id: receipt.id,
            })
        }
    };
    // The generation must be the one the last lease handed out, and still in force: leased,
    // or ready again because that lease expired and nobody leased it since (SQS-like
    // leniency). A nack bumps the generation without handing it out (`delivered` false).
    let current = t.delivered
        && t.lease_gen == receipt.generation
        && matches!(t.state, MessageState::Leased(_) | MessageState::Ready);
    if !current {
        return Err(lost());
    }
    Ok(t)
}

/// A message's counters for moving it: (receive count, lease generation, first received).
/// A message never handed out carries its counters in its record when it is a dead letter.
fn counters_of(f: &Found, record: &Enqueue) -> (u32, u32, u64) {
    match f {
        Found::Touched(t) => (t.receive_count, t.lease_gen, t.first_received_ms),
        Found::Stream(_) => record.carried.map_or((0, 0, 0), |c| {
            (c.receive_count, c.lease_gen, c.first_received_ms)
        }),
    }
}

/// Reads a message's record under the lock. `Ok(None)` when it is not committed yet (then it
/// is not visible to this operation).
fn read_record(txn: &Txn<'_>, rec: &RecRef, id: u64) -> Result<Option<Enqueue>> {
    let Some(bytes) = txn.read_committed(rec) else {
        return Ok(None);
    };
    let bad = |reason: String| Error::DamagedRecord {
        segment: rec.seg,
        offset: u64::from(rec.off),
        reason,
    };
    match decode_record(&bytes?) {
        Ok(Entry::Enqueue(e)) if e.id == id => Ok(Some(e)),
        Ok(_) => Err(bad(format!("not the record of message {id}"))),
        Err(e) => Err(bad(e.to_string())),
    }
}

/// Moves message `id` of queue `src` to queue `dst` under a new id, in one frame: `REMOVE`
/// from the source and an `ENQUEUE` (a copy of the record) into the destination. A dead
/// letter carries its origin and counters; a redrive starts afresh. `Ok(None)` when the
/// record is not committed yet.
fn move_message(
    txn: &mut Txn<'_>,
    src: u32,
    id: u64,
    dst: u32,
    reason: RemoveReason,
) -> Result<Option<u64>> {
    let f = txn
        .core
        .state
        .find(src, id)?
        .ok_or_else(|| Error::NotFound {
            queue: String::new(),
            id,
        })?;
    let rec = f.rec();
    let priority = match &f {
        Found::Touched(t) => t.priority,
        Found::Stream(e) => e.rec.prio,
    };
    let Some(record) = read_record(txn, &rec, id)? else {
        return Ok(None);
    };
    let (receive_count, lease_gen, first_received_ms) = counters_of(&f, &record);
    let from_stream = Some(f.rec());
    let redrive = reason == RemoveReason::Redriven;
    let new_id = txn.core.state.next_msg_id;
    txn.emit(Entry::Remove {
        queue: src,
        id,
        reason,
        rec: from_stream,
    });
    txn.emit(Entry::Enqueue(Enqueue {
        queue: dst,
        id: new_id,
        priority,
        enqueued_ms: record.enqueued_ms,
        expires_ms: record.expires_ms,
        visible_ms: 0,
        subject: record.subject,
        headers: record.headers,
        payload: record.payload,
        carried: (!redrive).then_some(Carried {
            origin_queue: src,
            origin_id: id,
            receive_count,
            lease_gen,
            first_received_ms,
        }),
        redrive,
        relocated_from: None,
        blob: record.blob,
    }));
    if let Some(s) = txn.core.state.queues.get(&dst).map(|q| q.signal.clone()) {
        txn.touch(&s);
    }
    Ok(Some(new_id))
}

fn queue_id_of(queues: &rustc_hash::FxHashMap<u32, Queue>, name: &str) -> Result<u32> {
    queues
        .iter()
        .find(|(_, q)| q.name == name)
        .map(|(id, _)| *id)
        .ok_or_else(|| unknown(name))
}

fn is_committed(committed: (u64, u64), r: &RecRef) -> bool {
    (r.seg, u64::from(r.off) + u64::from(r.len)) <= committed
}

fn out_of(id: u64, f: &Found, receipt: Option<Receipt>) -> Out {
    match f {
        Found::Touched(t) => Out {
            id,
            rec: t.rec,
            receipt,
            priority: t.priority,
            counts: Counts::Known {
                receive_count: t.receive_count,
                first_received_ms: t.first_received_ms,
            },
            state: t.state,
        },
        Found::Stream(e) => Out {
            id,
            rec: e.rec,
            receipt,
            priority: e.rec.prio,
            counts: Counts::FromRecord {
                add: 0,
                first_if_none: 0,
            },
            state: MessageState::Ready,
        },
    }
}

impl Store {
    // --- queue management ------------------------------------------------------------------

    /// Creates a queue. Returns `true` if it was created, `false` if it already existed with
    /// the same config; a different config is [`Error::Exists`]. A queue with `max_receives`
    /// or `dead_letter_queue` gets its dead-letter queue created too.
    pub fn create_queue(&self, queue: &str, config: QueueConfig) -> Result<bool> {
        name::validate(queue)?;
        config.validate_for(queue)?;
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
        config.validate_for(queue)?;
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
        let (msgs, blobs) = self.spill_large(msgs)?;
        let r = self.commit(|txn| push_txn(txn, queue, msgs, &blobs, &self.shared().options));
        if r.is_err() {
            self.drop_blobs(&blobs);
        }
        r
    }

    /// Pushes one message whose payload is streamed from `reader` into a blob file (up to
    /// 256 MiB, never held whole in memory); `meta` gives its priority, delay, TTL, subject
    /// and headers (its payload must be empty). Returns its id once it is durable: the blob
    /// file is synced and in place before the log entry that refers to it is written. Read it
    /// back with [`Store::open_payload`].
    pub fn push_stream(&self, queue: &str, meta: Push, reader: &mut dyn Read) -> Result<u64> {
        name::validate(queue)?;
        if !meta.payload.is_empty() {
            return Err(Error::InvalidArgument(
                "push_stream takes its payload from the reader: leave Push::payload empty".into(),
            ));
        }
        let limit = self.payload_limit(queue);
        let blob = self.write_blob(reader, limit, queue)?;
        let blobs = vec![Some(blob)];
        let r = self.commit(|txn| push_txn(txn, queue, vec![meta], &blobs, &self.shared().options));
        match r {
            Ok(ids) => ids.first().copied().ok_or(Error::EmptyBatch),
            Err(e) => {
                self.drop_blobs(&blobs);
                Err(e)
            }
        }
    }

    /// A reader of a message's payload: its blob file, streamed and checked chunk by chunk,
    /// or its bytes.
    pub fn open_payload(&self, msg: &Message) -> Result<Box<dyn Read + Send>> {
        match msg.blob {
            None => Ok(Box::new(std::io::Cursor::new(msg.payload.clone()))),
            Some(b) => {
                let sh = self.shared();
                let r =
                    crate::blob::BlobReader::open(sh.vfs.clone(), &sh.store_dir, sh.store_id, b.id)
                        .map_err(crate::store::blob_err)?;
                Ok(Box::new(r))
            }
        }
    }

    /// The largest payload queue `queue` takes (its config, or the default one).
    fn payload_limit(&self, queue: &str) -> usize {
        let core = self.shared().lock_core();
        core.state
            .queue_by_name(queue)
            .map_or(self.shared().options.default_queue.max_payload_bytes, |q| {
                q.config.max_payload_bytes
            })
    }

    /// Streams `reader` into a new blob file (durable when this returns).
    fn write_blob(&self, reader: &mut dyn Read, limit: usize, queue: &str) -> Result<(u64, u64)> {
        let sh = self.shared();
        // The reserve, before the blob file takes any space (its size is known only once it
        // is written: a blob that fills the disk fails with an I/O error and is removed).
        sh.lock_core()
            .check_space(sh.options.blob_threshold as u64)?;
        let id = sh
            .next_blob
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut w = crate::blob::BlobWriter::create(sh.vfs.clone(), &sh.store_dir, sh.store_id, id)
            .map_err(crate::store::blob_err)?;
        let mut limited = reader.take(limit as u64 + 1);
        let n = w.write_from(&mut limited).map_err(crate::store::blob_err)?;
        if n > limit as u64 {
            w.abort();
            return Err(Error::PayloadTooLarge {
                target: queue.to_string(),
                size: usize::try_from(n).unwrap_or(usize::MAX),
                max: limit,
            });
        }
        let info = w.finish().map_err(crate::store::blob_err)?;
        Ok((info.id, info.len))
    }

    /// Moves payloads of at least `blob_threshold` bytes to blob files (before the
    /// transaction: a blob is durable before the entry that refers to it).
    fn spill_large(&self, mut msgs: Vec<Push>) -> Result<(Vec<Push>, Vec<BlobSlot>)> {
        let threshold = self.shared().options.blob_threshold;
        if msgs.iter().all(|m| m.payload.len() < threshold) {
            return Ok((msgs, Vec::new()));
        }
        let mut blobs = Vec::with_capacity(msgs.len());
        for m in &mut msgs {
            if m.payload.len() < threshold {
                blobs.push(None);
                continue;
            }
            let payload = std::mem::take(&mut m.payload);
            match self.write_blob(&mut payload.as_ref(), usize::MAX - 1, "") {
                Ok(b) => blobs.push(Some(b)),
                Err(e) => {
                    self.drop_blobs(&blobs);
                    return Err(e);
                }
            }
        }
        Ok((msgs, blobs))
    }

    /// Removes blob files written for a push that failed (best effort: open removes orphans).
    fn drop_blobs(&self, blobs: &[Option<(u64, u64)>]) {
        let sh = self.shared();
        for (id, _) in blobs.iter().flatten() {
            let _ = crate::blob::remove_blob(sh.vfs.as_ref(), &sh.store_dir, *id);
        }
    }

    /// [`Store::push`] for async callers: the future resolves once the message is durable.
    pub fn push_async(&self, queue: &str, msg: Push) -> Committed<Vec<u64>> {
        self.push_batch_async(queue, vec![msg])
    }

    /// [`Store::push_batch`] for async callers.
    pub fn push_batch_async(&self, queue: &str, msgs: Vec<Push>) -> Committed<Vec<u64>> {
        let opts = &self.shared().options;
        // Large payloads are written to blob files first (on the calling thread).
        let spilled = self.spill_large(msgs);
        self.commit_async(|txn| {
            name::validate(queue)?;
            let (msgs, blobs) = spilled?;
            push_txn(txn, queue, msgs, &blobs, opts)
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
        self.commit_read(|txn| lease_txn(txn, queue, n, vis, &default))
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
        let shared = self.inner.shared.clone();
        self.commit_async_then(
            move |txn| {
                check_count(n)?;
                let vis = visibility.map(check_visibility).transpose()?;
                let outs = lease_txn(txn, queue, n, vis, &default)?;
                let pins = SegPins::new(&shared, outs.iter().map(|o| o.rec.seg));
                Ok((outs, pins))
            },
            |shared, (outs, _pins)| read_messages(shared, &outs),
        )
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
            let mut committed = (0, 0);
            let mut pins = None;
            let (got, ticket) = self.txn(|txn| {
                committed = txn.core.committed_pos;
                // Read a signal's version under the lock: a commit after this point wakes us.
                let state = &txn.core.state;
                if state.queue_by_name(queue).is_none() && auto_create {
                    wait_for = Some((state.created.clone(), state.created.version(), None));
                    return Ok(Vec::new());
                }
                let got = lease_txn(txn, queue, n, vis, &default)?;
                pins = Some(SegPins::new(
                    &self.inner.shared,
                    got.iter().map(|o| o.rec.seg),
                ));
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
            if !got.is_empty() {
                let msgs = self.read_then_wait(&got, committed, ticket);
                drop(pins);
                return msgs;
            }
            self.wait(ticket)?;
            let Some((signal, seen, due)) = wait_for else {
                return Ok(Vec::new());
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
            let t = check_receipt(&mut txn.core.state, qid, receipt)?;
            let entry = Entry::Nack {
                queue: qid,
                id: receipt.id,
                lease_gen: t.lease_gen + 1,
                visible_ms: if delay == 0 { 0 } else { txn.now + delay },
                priority: priority.unwrap_or(t.priority),
            };
            let signal = txn
                .core
                .state
                .queues
                .get(&qid)
                .ok_or_else(|| unknown(queue))?
                .signal
                .clone();
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
            let t = check_receipt(&mut txn.core.state, qid, receipt)?;
            let until = txn.now + vis;
            let entry = Entry::Lease {
                queue: qid,
                id: receipt.id,
                receive_count: t.receive_count,
                lease_gen: t.lease_gen,
                until_ms: until,
                first_received_ms: t.first_received_ms,
                rec: Some(t.rec),
            };
            txn.emit(entry);
            Ok(until)
        })
    }

    /// Moves a leased message to the queue's dead-letter queue at once (a consumer's verdict:
    /// it can never be processed). Returns its id in the dead-letter queue.
    pub fn dead(&self, queue: &str, receipt: Receipt) -> Result<u64> {
        let default = self.shared().options.default_queue.clone();
        loop {
            let moved = self.commit(|txn| {
                let qid = txn.core.state.queue_id(queue)?;
                check_receipt(&mut txn.core.state, qid, receipt)?;
                let q = txn
                    .core
                    .state
                    .queues
                    .get(&qid)
                    .ok_or_else(|| unknown(queue))?;
                if q.config
                    .dead_letter_queue_of(&q.name)
                    .is_none_or(|d| d == q.name)
                {
                    return Err(Error::NoDeadLetterQueue {
                        queue: queue.to_string(),
                    });
                }
                let dlq =
                    ensure_dlq(txn, qid, &default).ok_or_else(|| Error::NoDeadLetterQueue {
                        queue: queue.to_string(),
                    })?;
                move_message(txn, qid, receipt.id, dlq, RemoveReason::DeadLettered)
            })?;
            if let Some(id) = moved {
                return Ok(id);
            }
            // Its record is not durable yet (pushed a moment ago): wait, then move it.
            self.wait_for_pending()?;
        }
    }

    /// Moves up to `n` messages from dead-letter queue `dlq` back to the queues they came from
    /// (with fresh ids and counters). Messages whose source queue no longer exists stay.
    /// Returns how many moved.
    pub fn redrive(&self, dlq: &str, n: usize) -> Result<usize> {
        self.redrive_where(dlq, n, |_| true)
    }

    /// [`Store::redrive`] of only the dead letters whose source queue's name `allow`s (for a
    /// server whose caller may write to some queues and not others); the others stay.
    pub fn redrive_where(
        &self,
        dlq: &str,
        n: usize,
        allow: impl Fn(&str) -> bool,
    ) -> Result<usize> {
        check_count(n)?;
        self.wait_for_pending()?;
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
            // Ready dead letters (they carry their origin), oldest id first.
            let mut candidates: Vec<(u64, RecRef)> = Vec::new();
            let State { queues, ix, .. } = &mut txn.core.state;
            let q = queues.get(&qid).ok_or_else(|| unknown(dlq))?;
            q.walk_ready(ix, &mut |id, f| {
                if f.carried() {
                    candidates.push((id, f.rec()));
                }
                true
            })?;
            candidates.sort_unstable_by_key(|(id, _)| *id);
            let mut moved = 0;
            for (id, rec) in candidates {
                if moved >= n || txn.emitted_bytes() > MOVE_BYTES_BUDGET {
                    break;
                }
                let Some(record) = read_record(txn, &rec, id)? else {
                    continue;
                };
                let Some(src) = record.carried.map(|c| c.origin_queue) else {
                    continue;
                };
                match txn.core.state.queues.get(&src) {
                    Some(q) if allow(&q.name) => {}
                    _ => continue,
                }
                if move_message(txn, qid, id, src, RemoveReason::Redriven)?.is_some() {
                    moved += 1;
                }
            }
            Ok(moved)
        })
    }

    // --- at-most-once and reads ------------------------------------------------------------

    /// Removes and returns up to `n` visible messages (at-most-once: a crash after this returns
    /// cannot bring them back; a crash before it returns may).
    pub fn pop(&self, queue: &str, n: usize) -> Result<Vec<Message>> {
        check_count(n)?;
        self.commit_read(|txn| {
            let qid = txn.core.state.queue_id(queue)?;
            let now = txn.now;
            let mut out = Vec::new();
            while out.len() < n {
                let Some((id, f)) = next_deliverable(txn, qid)? else {
                    break;
                };
                let mut o = out_of(id, &f, None);
                o.counts = match o.counts {
                    Counts::Known {
                        receive_count,
                        first_received_ms,
                    } => Counts::Known {
                        receive_count: receive_count + 1,
                        first_received_ms: if first_received_ms == 0 {
                            now
                        } else {
                            first_received_ms
                        },
                    },
                    Counts::FromRecord { .. } => Counts::FromRecord {
                        add: 1,
                        first_if_none: now,
                    },
                };
                let rec = Some(f.rec());
                txn.emit(Entry::Remove {
                    queue: qid,
                    id,
                    reason: RemoveReason::Popped,
                    rec,
                });
                out.push(o);
            }
            Ok(out)
        })
    }

    /// Up to `n` visible messages in delivery order, without changing anything.
    pub fn peek(&self, queue: &str, n: usize) -> Result<Vec<Message>> {
        check_count(n)?;
        let now = self.now();
        let (outs, _pins) = {
            let mut core = self.shared().lock_core();
            let core = &mut *core;
            let q = core
                .state
                .queue_by_name_mut(queue)
                .ok_or_else(|| unknown(queue))?;
            q.promote(now);
            let committed = core.committed_pos;
            let State { queues, ix, .. } = &mut core.state;
            let q = queues
                .get(&queue_id_of(queues, queue)?)
                .ok_or_else(|| unknown(queue))?;
            let mut outs = Vec::new();
            q.walk_ready(ix, &mut |id, f| {
                let r = f.rec();
                if !f.expired(now) && is_committed(committed, &r) {
                    outs.push(out_of(id, &f, None));
                }
                outs.len() < n
            })?;
            let pins = SegPins::new(&self.inner.shared, outs.iter().map(|o| o.rec.seg));
            (outs, pins)
        };
        read_messages(self.shared(), &outs)
    }

    /// One message by id, in any state, without changing it.
    pub fn get(&self, queue: &str, id: u64) -> Result<Message> {
        let now = self.now();
        let (out, _pins) = {
            let mut core = self.shared().lock_core();
            let core = &mut *core;
            core.state
                .queue_by_name_mut(queue)
                .ok_or_else(|| unknown(queue))?
                .promote(now);
            let committed = core.committed_pos;
            let qid = core.state.queue_id(queue)?;
            let out = core
                .state
                .find(qid, id)?
                .filter(|f| is_committed(committed, &f.rec()))
                .map(|f| out_of(id, &f, None))
                .ok_or_else(|| Error::NotFound {
                    queue: queue.to_string(),
                    id,
                })?;
            let pins = SegPins::new(&self.inner.shared, std::iter::once(out.rec.seg));
            (out, pins)
        };
        let mut v = read_messages(self.shared(), &[out])?;
        v.pop().ok_or(Error::NotFound {
            queue: queue.to_string(),
            id,
        })
    }

    /// Up to `limit` messages of a queue with ids above `after_id`, in id order, in any state:
    /// a page of a queue of any size (`messages` holds them all). Start with `after_id` 0 and
    /// go on from the last id returned.
    pub fn messages_page(&self, queue: &str, after_id: u64, limit: usize) -> Result<Vec<Message>> {
        check_count(limit)?;
        let now = self.now();
        let (outs, _pins) = {
            let mut core = self.shared().lock_core();
            let core = &mut *core;
            core.state
                .queue_by_name_mut(queue)
                .ok_or_else(|| unknown(queue))?
                .promote(now);
            let committed = core.committed_pos;
            let State { queues, ix, .. } = &mut core.state;
            let q = queues
                .get(&queue_id_of(queues, queue)?)
                .ok_or_else(|| unknown(queue))?;
            let outs = q
                .page(ix, after_id, limit)?
                .into_iter()
                .filter(|(_, f)| is_committed(committed, &f.rec()))
                .map(|(id, f)| out_of(id, &f, None))
                .collect::<Vec<Out>>();
            let pins = SegPins::new(&self.inner.shared, outs.iter().map(|o| o.rec.seg));
            (outs, pins)
        };
        read_messages(self.shared(), &outs)
    }

    /// Every message of a queue in id order, in any state (for inspection and tests).
    pub fn messages(&self, queue: &str) -> Result<Vec<Message>> {
        let now = self.now();
        let (outs, _pins) = {
            let mut core = self.shared().lock_core();
            let core = &mut *core;
            core.state
                .queue_by_name_mut(queue)
                .ok_or_else(|| unknown(queue))?
                .promote(now);
            let committed = core.committed_pos;
            let State { queues, ix, .. } = &mut core.state;
            let q = queues
                .get(&queue_id_of(queues, queue)?)
                .ok_or_else(|| unknown(queue))?;
            let outs = q
                .all(ix)?
                .into_iter()
                .filter(|(_, f)| is_committed(committed, &f.rec()))
                .map(|(id, f)| out_of(id, &f, None))
                .collect::<Vec<Out>>();
            let pins = SegPins::new(&self.inner.shared, outs.iter().map(|o| o.rec.seg));
            (outs, pins)
        };
        read_messages(self.shared(), &outs)
    }

    /// Deletes a message by id, whatever its state.
    pub fn delete(&self, queue: &str, id: u64) -> Result<()> {
        self.commit(|txn| {
            let qid = txn.core.state.queue_id(queue)?;
            let f = txn
                .core
                .state
                .find(qid, id)?
                .ok_or_else(|| Error::NotFound {
                    queue: queue.to_string(),
                    id,
                })?;
            let rec = Some(f.rec());
            txn.emit(Entry::Remove {
                queue: qid,
                id,
                reason: RemoveReason::Deleted,
                rec,
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
            let n = q.len();
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
        let qid = core.state.queue_id(queue)?;
        let State { queues, ix, .. } = &mut core.state;
        let q = queues.get_mut(&qid).ok_or_else(|| unknown(queue))?;
        q.promote(now);
        let oldest = q.oldest_enqueued(ix)?;
        let q = core.state.queues.get(&qid).ok_or_else(|| unknown(queue))?;
        let dlq_name = q.config.dead_letter_queue_of(&q.name);
        let dead = dlq_name
            .as_deref()
            .and_then(|d| core.state.queue_by_name(d))
            .map_or(0, Queue::len);

        Ok(QueueStats {
            name: q.name.clone(),
            visible: q.n_ready(),
            delayed: q.n_delayed(),
            leased: q.n_leased(),
            dead,
            messages: q.len(),
            bytes: q.bytes(),
            oldest_age_ms: oldest.map_or(0, |o| now.saturating_sub(o)),
            dead_letter_queue: dlq_name,
            counters: q.counters,
            config: q.config.clone(),
        })
    }
}

/// Per message of a push: the blob its payload was written to (id, length), if any.
type BlobSlot = Option<(u64, u64)>;

fn push_txn(
    txn: &mut Txn<'_>,
    queue: &str,
    msgs: Vec<Push>,
    blobs: &[Option<(u64, u64)>],
    opts: &crate::options::Options,
) -> Result<Vec<u64>> {
    let blob_of = |i: usize| blobs.get(i).copied().flatten();
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
    if existing.is_none() {
        opts.default_queue.validate_for(queue)?;
    }
    let config = existing
        .and_then(|id| txn.core.state.queues.get(&id))
        .map_or_else(|| opts.default_queue.clone(), |q| q.config.clone());
    // Check every message before anything is emitted.
    let mut encoded = 0usize;
    let mut new_bytes = 0u64;
    let mut min_prio = u8::MAX;
    let mut plans = Vec::with_capacity(msgs.len());
    for (i, m) in msgs.iter().enumerate() {
        let plen = blob_of(i).map_or(m.payload.len(), |(_, len)| len as usize);
        if plen > config.max_payload_bytes {
            return Err(Error::PayloadTooLarge {
                target: queue.to_string(),
                size: plen,
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
        encoded += Entry::enqueue_len(
            if blob_of(i).is_some() { 16 } else { plen },
            m.subject.as_deref(),
            &m.headers,
            false,
        );
        new_bytes += (plen
            + m.subject.as_ref().map_or(0, String::len)
            + m.headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()) as u64;
        min_prio = min_prio.min(m.priority);
        plans.push((delay, ttl));
    }
    // Delayed messages are held in memory one by one: bounded by max_in_flight.
    if config.max_in_flight > 0 {
        let delayed = plans.iter().filter(|(delay, _)| *delay > 0).count() as u64;
        let held = existing
            .and_then(|id| txn.core.state.queues.get(&id))
            .map_or(0, |q| q.touched.len() as u64);
        if delayed > 0 && held + delayed > config.max_in_flight {
            return Err(Error::InFlightLimit {
                queue: queue.to_string(),
                limit: config.max_in_flight,
            });
        }
    }
    // The free-space reserve, before anything is emitted (a blob's file is checked before it
    // is written, in `push_stream`).
    txn.core.check_space(encoded as u64)?;
    // Headroom for the queue definition and evictions sharing the frame.
    let limit = TXN_BYTES_MAX - (1 << 20);
    if encoded > limit {
        return Err(Error::BatchTooLarge {
            what: "the encoded batch",
            size: encoded,
            max: limit,
        });
    }
    // Capacity.
    let n_new = msgs.len() as u64;
    let mut evict: Vec<(u64, Option<RecRef>)> = Vec::new();
    if config.max_messages != 0 || config.max_bytes != 0 {
        let (count, bytes) = existing
            .and_then(|id| txn.core.state.queues.get(&id))
            .map_or((0, 0), |q| (q.len(), q.bytes()));
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
            let now = txn.now;
            let State { queues, ix, .. } = &mut txn.core.state;
            let Some(q) = existing.and_then(|id| queues.get_mut(&id)) else {
                return Err(full());
            };
            q.promote(now);
            let (mut c, mut b) = (count, bytes);
            let lanes: Vec<u8> = q
                .lanes
                .keys()
                .rev()
                .map(|k| k.0)
                .filter(|&p| p <= min_prio)
                .collect();
            for p in lanes {
                if !over(c, b) {
                    break;
                }
                q.walk_lane(ix, p, &mut |id, f| {
                    if !over(c, b) {
                        return false;
                    }
                    c -= 1;
                    b -= f.rec().bytes();
                    evict.push((id, Some(f.rec())));
                    true
                })?;
            }
            if over(c, b) {
                q.counters.rejected_full += n_new;
                return Err(full());
            }
        }
    }
    // Everything is checked: emit.
    let qid = ensure_queue(txn, queue, &config);
    for (id, rec) in evict {
        txn.emit(Entry::Remove {
            queue: qid,
            id,
            reason: RemoveReason::Evicted,
            rec,
        });
    }
    let now = txn.now;
    let mut ids = Vec::with_capacity(msgs.len());
    for (i, (m, (delay, ttl))) in msgs.into_iter().zip(plans).enumerate() {
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
            carried: None,
            redrive: false,
            relocated_from: None,
            blob: blob_of(i),
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
fn next_deliverable(txn: &mut Txn<'_>, qid: u32) -> Result<Option<(u64, Found)>> {
    let now = txn.now;
    loop {
        let State { queues, ix, .. } = &mut txn.core.state;
        let Some(q) = queues.get_mut(&qid) else {
            return Ok(None);
        };
        q.promote(now);
        let Some((id, f)) = q.next_ready(ix, false, u8::MAX)? else {
            return Ok(None);
        };
        if !f.expired(now) {
            return Ok(Some((id, f)));
        }
        let rec = Some(f.rec());
        txn.emit(Entry::Remove {
            queue: qid,
            id,
            reason: RemoveReason::Expired,
            rec,
        });
    }
}

fn lease_txn(
    txn: &mut Txn<'_>,
    queue: &str,
    n: usize,
    vis: Option<u64>,
    default: &QueueConfig,
) -> Result<Vec<Out>> {
    let qid = txn.core.state.queue_id(queue)?;
    let now = txn.now;
    let mut out = Vec::new();
    while out.len() < n {
        let Some((id, f)) = next_deliverable(txn, qid)? else {
            break;
        };
        let Some(q) = txn.core.state.queues.get(&qid) else {
            break;
        };
        let vis = vis.unwrap_or(q.config.visibility.as_millis() as u64);
        let max_receives = q.config.max_receives;
        let limit = q.config.max_in_flight;
        if limit > 0 && matches!(f, Found::Stream(_)) && q.touched.len() as u64 >= limit {
            // A new message would be held in memory one by one: the bound is reached.
            if out.is_empty() {
                return Err(Error::InFlightLimit {
                    queue: queue.to_string(),
                    limit,
                });
            }
            break;
        }
        let rec = f.rec();
        let from_stream = Some(f.rec());
        let (mut receive_count, mut lease_gen, mut first_received_ms, priority) = match &f {
            Found::Touched(t) => (
                t.receive_count,
                t.lease_gen,
                t.first_received_ms,
                t.priority,
            ),
            Found::Stream(e) => (0, 0, 0, e.rec.prio),
        };
        if matches!(f, Found::Stream(_)) && f.carried() {
            // A dead letter never handed out in this queue: its counters are in its record.
            match read_record(txn, &rec, id) {
                Ok(Some(record)) => {
                    if let Some(c) = record.carried {
                        (receive_count, lease_gen, first_received_ms) =
                            (c.receive_count, c.lease_gen, c.first_received_ms);
                    }
                }
                Err(e) if out.is_empty() => return Err(e),
                // Not durable yet (not visible to a lease yet), or unreadable: stop here.
                Ok(None) | Err(_) => break,
            }
        }
        if max_receives > 0 && receive_count >= max_receives {
            if let Some(dlq) = ensure_dlq(txn, qid, default) {
                if txn.emitted_bytes() > MOVE_BYTES_BUDGET {
                    break;
                }
                match move_message(txn, qid, id, dlq, RemoveReason::DeadLettered) {
                    Ok(Some(_)) => continue,
                    Err(e) if out.is_empty() => return Err(e),
                    Ok(None) | Err(_) => break,
                }
            }
        }
        let receipt = Receipt {
            id,
            generation: lease_gen + 1,
        };
        let first = if first_received_ms == 0 {
            now
        } else {
            first_received_ms
        };
        txn.emit(Entry::Lease {
            queue: qid,
            id,
            receive_count: receive_count + 1,
            lease_gen: lease_gen + 1,
            until_ms: now + vis,
            first_received_ms: first,
            rec: from_stream,
        });
        out.push(Out {
            id,
            rec,
            receipt: Some(receipt),
            priority,
            counts: Counts::Known {
                receive_count: receive_count + 1,
                first_received_ms: first,
            },
            state: MessageState::Leased(now + vis),
        });
    }
    Ok(out)
}

fn ack_txn(txn: &mut Txn<'_>, queue: &str, receipts: &[Receipt]) -> Result<Vec<Result<()>>> {
    let qid = txn.core.state.queue_id(queue)?;
    let mut out = Vec::with_capacity(receipts.len());
    for &r in receipts {
        match check_receipt(&mut txn.core.state, qid, r) {
            Ok(t) => {
                txn.emit(Entry::Remove {
                    queue: qid,
                    id: r.id,
                    reason: RemoveReason::Acked,
                    rec: Some(t.rec),
                });
                out.push(Ok(()));
            }
            Err(e) => out.push(Err(e)),
        }
    }
    Ok(out)
}
