//! Work-queue message commands (queue-semantics research, section 8.3): `QPUSH`,
//! `QPUSHMANY`, `QGET`, `QACK`, `QNACK`, `QEXTEND` (`QTOUCH`), `QDEAD`, `QPOP`, `QPEEK`,
//! `QSTATS`, `QLIST`. Creating, configuring and removing queues is `admin.rs`.
//!
//! Every read replies with message records, `[id, receipt|nil, payload, priority,
//! enqueued_at_ms, first_received_at_ms|nil, receive_count, visible_at_ms]`. What the engine
//! does not keep: the time a *ready* message became visible, so `visible_at_ms` of a ready
//! message (`QPEEK`, `QPOP`) is its `enqueued_at_ms`; of a leased one it is the lease's end.
//! Priorities are the engine's 0-255 (higher first), not the research's i32.
//!
//! The server policy applies ([`crate::Policy`]): with `auto_create` on, a push creates its
//! queue and a read of a queue that does not exist yet answers an empty array (a worker may
//! start before its producer); with it off, both are `-NOQUEUE`. A push that would create
//! one queue more than `max_queues` is `-FULL`. A bad name is always `-BADNAME`.

use std::io::Read as _;
use std::time::Duration;

use bytes::Bytes;
use spool_engine::{name, Error as EngineError, Message, MessageState, Push, Receipt, Store};
use spool_resp::Frame;

use crate::limits::{
    ACK_RECEIPTS_MAX, COUNT_MAX, DELAY_MS_MAX, TTL_MS_MAX, VT_MS_MAX, WAIT_MS_MAX,
};
use crate::registry::Refused;
use crate::service::Service;
use crate::wait::blocking;

use super::{badarg, engine_err, err, number, ready, Args, Durable, Reply};

/// The queue name argument, checked against the name rule (`-BADNAME`).
pub(super) fn queue_name(a: &mut Args<'_>) -> Result<String, Reply> {
    let q = a.required("queue name")?;
    let q = String::from_utf8(q.to_vec()).map_err(|_| {
        err(
            "BADNAME",
            "queue names are 1-128 characters of A-Z a-z 0-9 . _ - and start with a letter or digit",
        )
    })?;
    name::validate(&q).map_err(|e| engine_err(&e))?;
    Ok(q)
}

pub(super) fn receipt(b: &[u8]) -> Result<Receipt, Reply> {
    std::str::from_utf8(b)
        .map_err(|_| badarg("a receipt is <id>:<generation>, e.g. 42:1"))?
        .parse::<Receipt>()
        .map_err(|e| engine_err(&e))
}

pub(super) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `PRI p` and `DELAY ms` (shared by `QPUSH` and `QPUSHMANY`), `TTL ms` when `ttl` is allowed.
#[derive(Debug, Default)]
struct PushOpts {
    priority: u8,
    delay: Option<Duration>,
    ttl: Option<Duration>,
}

impl PushOpts {
    /// Parses options until the arguments end, or `--` when `until_dashes`.
    fn parse(a: &mut Args<'_>, ttl: bool, until_dashes: bool) -> Result<PushOpts, Reply> {
        let mut o = PushOpts::default();
        loop {
            let Some(k) = a.keyword() else {
                if until_dashes {
                    return Err(badarg("missing '--' before the payloads"));
                }
                return Ok(o);
            };
            match k.as_str() {
                "--" if until_dashes => return Ok(o),
                "PRI" => o.priority = number(&a.required("PRI value")?, "PRI", 0, 255)? as u8,
                "DELAY" => {
                    o.delay = Some(ms(number(
                        &a.required("DELAY value")?,
                        "DELAY",
                        0,
                        DELAY_MS_MAX,
                    )?));
                }
                "TTL" if ttl => {
                    o.ttl = Some(ms(number(&a.required("TTL value")?, "TTL", 1, TTL_MS_MAX)?));
                }
                _ => return Err(badarg(&format!("unknown option {k:?}"))),
            }
        }
    }

    fn apply(&self, payload: Bytes) -> Push {
        let mut p = Push::new(payload).priority(self.priority);
        p.delay = self.delay;
        p.ttl = self.ttl;
        p
    }
}

pub(super) fn id_frame(id: u64) -> Frame {
    Frame::Bulk(Bytes::from(id.to_string()))
}

/// An integer reply (counts, times and sequence numbers fit an `i64` in practice).
pub(super) fn int(n: u64) -> Frame {
    Frame::Integer(i64::try_from(n).unwrap_or(i64::MAX))
}

/// A map key.
pub(super) fn key(k: &'static str) -> Frame {
    Frame::Bulk(Bytes::from_static(k.as_bytes()))
}

/// The reply to a request the server policy refused.
pub(super) fn refused(r: &Refused) -> Reply {
    err(r.code(), &r.to_string())
}

/// `-NOQUEUE` for a read of a missing queue when the server does not auto-create.
fn check_readable(svc: &Service, queue: &str) -> Result<(), Reply> {
    svc.queue_readable(queue).map_err(|r| refused(&r))
}

/// `QPUSH q payload [PRI p] [DELAY ms] [TTL ms]` -> the id, once the message is durable.
/// The push is applied when this is called; the returned future waits for its commit.
pub(super) fn push(svc: &Service, a: &mut Args<'_>) -> Durable {
    let parsed = (|| {
        let q = queue_name(a)?;
        let payload = a.required("payload")?;
        let opts = PushOpts::parse(a, true, false)?;
        svc.queue_write(&q, || svc.store().push_async(&q, opts.apply(payload)))
            .map_err(|r| refused(&r))
    })();
    match parsed {
        Err(r) => ready(r),
        Ok(committed) => Box::pin(async move {
            match committed.await {
                Ok(ids) => ids
                    .first()
                    .copied()
                    .map_or_else(|| err("ERR", "the engine returned no id"), id_frame),
                Err(e) => engine_err(&e),
            }
        }),
    }
}

/// `QPUSHMANY q [PRI p] [DELAY ms] -- payload...` -> the ids; all or none are stored.
pub(super) fn push_many(svc: &Service, a: &mut Args<'_>) -> Durable {
    let parsed = (|| {
        let q = queue_name(a)?;
        let opts = PushOpts::parse(a, false, true)?;
        let mut msgs = Vec::with_capacity(a.len());
        while let Some(p) = a.next() {
            msgs.push(opts.apply(p));
        }
        if msgs.is_empty() {
            return Err(badarg("no payloads after '--'"));
        }
        svc.queue_write(&q, || svc.store().push_batch_async(&q, msgs))
            .map_err(|r| refused(&r))
    })();
    match parsed {
        Err(r) => ready(r),
        Ok(committed) => Box::pin(async move {
            match committed.await {
                Ok(ids) => Frame::Array(ids.into_iter().map(id_frame).collect()),
                Err(e) => engine_err(&e),
            }
        }),
    }
}

/// `QGET q [VT ms] [COUNT n] [WAIT ms]` -> leased records (an empty array when none).
pub(super) async fn get(svc: &Service, a: &mut Args<'_>) -> Reply {
    match get_inner(svc, a).await {
        Ok(r) | Err(r) => r,
    }
}

async fn get_inner(svc: &Service, a: &mut Args<'_>) -> Result<Reply, Reply> {
    let store = svc.store();
    let q = queue_name(a)?;
    let mut vt = None;
    let mut count = 1;
    let mut wait = 0;
    while let Some(k) = a.keyword() {
        match k.as_str() {
            "VT" => vt = Some(ms(number(&a.required("VT value")?, "VT", 1, VT_MS_MAX)?)),
            "COUNT" => {
                count = number(&a.required("COUNT value")?, "COUNT", 1, COUNT_MAX)? as usize;
            }
            "WAIT" => wait = number(&a.required("WAIT value")?, "WAIT", 0, WAIT_MS_MAX)?,
            _ => return Err(badarg(&format!("unknown option {k:?}"))),
        }
    }
    check_readable(svc, &q)?;
    let leased = crate::wait::lease(store, &q, count, vt, ms(wait)).await;
    let msgs = empty_if_unknown(svc, leased)?;
    records(store, msgs).await
}

/// A read of a queue that does not exist yet is empty (with `auto_create` on).
fn empty_if_unknown(
    svc: &Service,
    r: Result<Vec<Message>, EngineError>,
) -> Result<Vec<Message>, Reply> {
    match r {
        Ok(v) => Ok(v),
        Err(EngineError::UnknownQueue { .. }) if svc.missing_reads_empty() => Ok(Vec::new()),
        Err(EngineError::UnknownQueue { name }) => Err(refused(&Refused::NoQueue(name))),
        Err(e) => Err(engine_err(&e)),
    }
}

/// `QACK q receipt [receipt ...]` -> `:1` (one receipt), or one result per receipt. The
/// acks are applied when this is called; the returned future waits for their commit.
pub(super) fn ack(store: &Store, a: &mut Args<'_>) -> Durable {
    let q = match queue_name(a) {
        Ok(q) => q,
        Err(r) => return ready(r),
    };
    if a.is_empty() {
        return ready(badarg("missing receipt"));
    }
    if a.len() > ACK_RECEIPTS_MAX {
        return ready(badarg(&format!(
            "{} receipts in one QACK: at most {ACK_RECEIPTS_MAX}",
            a.len()
        )));
    }
    // Malformed receipts are answered in place; the well-formed ones go in one commit.
    let parsed: Vec<Result<Receipt, Reply>> = std::iter::from_fn(|| a.next())
        .map(|b| receipt(&b))
        .collect();
    let good: Vec<Receipt> = parsed
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .copied()
        .collect();
    let committed = (!good.is_empty()).then(|| store.ack_batch_async(&q, &good));
    Box::pin(async move {
        let results = match committed {
            None => Vec::new(),
            Some(c) => match c.await {
                Ok(r) => r,
                Err(e) => return engine_err(&e),
            },
        };
        let mut results = results.into_iter();
        let mut replies: Vec<Reply> = parsed
            .into_iter()
            .map(|p| match p {
                Err(r) => r,
                Ok(_) => match results.next() {
                    Some(Ok(())) => Frame::Integer(1),
                    Some(Err(e)) => engine_err(&e),
                    None => err("ERR", "the engine returned fewer results than receipts"),
                },
            })
            .collect();
        if replies.len() == 1 {
            return replies.pop().unwrap_or(Frame::Null);
        }
        Frame::Array(replies)
    })
}

/// `QNACK q receipt [DELAY ms] [PRI p]` -> `:1`.
pub(super) async fn nack(store: &Store, a: &mut Args<'_>) -> Reply {
    match nack_inner(store, a).await {
        Ok(r) | Err(r) => r,
    }
}

async fn nack_inner(store: &Store, a: &mut Args<'_>) -> Result<Reply, Reply> {
    let q = queue_name(a)?;
    let r = receipt(&a.required("receipt")?)?;
    let mut delay = Duration::ZERO;
    let mut pri = None;
    while let Some(k) = a.keyword() {
        match k.as_str() {
            "DELAY" => {
                delay = ms(number(
                    &a.required("DELAY value")?,
                    "DELAY",
                    0,
                    DELAY_MS_MAX,
                )?);
            }
            "PRI" => pri = Some(number(&a.required("PRI value")?, "PRI", 0, 255)? as u8),
            _ => return Err(badarg(&format!("unknown option {k:?}"))),
        }
    }
    let s = store.clone();
    blocking(move || s.nack(&q, r, delay, pri))
        .await
        .map_err(|e| engine_err(&e))?;
    Ok(Frame::Integer(1))
}

/// `COUNT n` (both), `WAIT ms` (when `wait` is allowed: `QPOP`).
fn count_wait(a: &mut Args<'_>, wait: bool) -> Result<(usize, u64), Reply> {
    let mut count = 1;
    let mut wait_ms = 0;
    while let Some(k) = a.keyword() {
        match k.as_str() {
            "COUNT" => {
                count = number(&a.required("COUNT value")?, "COUNT", 1, COUNT_MAX)? as usize;
            }
            "WAIT" if wait => {
                wait_ms = number(&a.required("WAIT value")?, "WAIT", 0, WAIT_MS_MAX)?;
            }
            _ => return Err(badarg(&format!("unknown option {k:?}"))),
        }
    }
    Ok((count, wait_ms))
}

/// `QPOP q [COUNT n] [WAIT ms]` -> records without receipts, removed (at-most-once); with
/// `WAIT`, blocks until a message is there or the time is up (then an empty array).
pub(super) async fn pop(svc: &Service, a: &mut Args<'_>) -> Reply {
    match pop_inner(svc, a).await {
        Ok(r) | Err(r) => r,
    }
}

async fn pop_inner(svc: &Service, a: &mut Args<'_>) -> Result<Reply, Reply> {
    let q = queue_name(a)?;
    let (count, wait) = count_wait(a, true)?;
    check_readable(svc, &q)?;
    let popped = crate::wait::pop(svc.store(), &q, count, ms(wait)).await;
    let msgs = empty_if_unknown(svc, popped)?;
    records(svc.store(), msgs).await
}

/// `QPEEK q [COUNT n]` -> the next visible records, unchanged; `QPEEK q ID id` -> that
/// message in any state, or `-NOTFOUND`.
pub(super) async fn peek(svc: &Service, a: &mut Args<'_>) -> Reply {
    match peek_inner(svc, a).await {
        Ok(r) | Err(r) => r,
    }
}

async fn peek_inner(svc: &Service, a: &mut Args<'_>) -> Result<Reply, Reply> {
    let store = svc.store();
    let q = queue_name(a)?;
    let s = store.clone();
    if a.peek_keyword().as_deref() == Some("ID") {
        a.next();
        let id = number(&a.required("ID value")?, "ID", 0, u64::MAX)?;
        if !a.is_empty() {
            return Err(badarg("QPEEK q ID id takes no other option"));
        }
        let m = blocking(move || s.get(&q, id))
            .await
            .map_err(|e| engine_err(&e))?;
        let mut r = records(store, vec![m]).await?;
        if let Frame::Array(v) = &mut r {
            return Ok(v.pop().unwrap_or(Frame::Null));
        }
        return Ok(r);
    }
    let (count, _) = count_wait(a, false)?;
    check_readable(svc, &q)?;
    let msgs = empty_if_unknown(svc, blocking(move || s.peek(&q, count)).await)?;
    records(store, msgs).await
}

/// `QSTATS q` -> a map (a flat array on RESP2): the counts, then the config under the
/// names `QCREATE`/`QCONFIG` take (`vt_ms`, `delay_ms`, ...; see [`super::admin`]).
pub(super) fn stats(store: &Store, a: &mut Args<'_>) -> Reply {
    let q = match queue_name(a) {
        Ok(q) => q,
        Err(r) => return r,
    };
    if !a.is_empty() {
        return badarg("QSTATS takes one queue name");
    }
    let s = match store.stats(&q) {
        Ok(s) => s,
        Err(e) => return engine_err(&e),
    };
    let mut m = vec![
        (key("visible"), int(s.visible)),
        (key("delayed"), int(s.delayed)),
        (key("leased"), int(s.leased)),
        (key("dead"), int(s.dead)),
        (key("messages"), int(s.messages)),
        (key("bytes"), int(s.bytes)),
        (key("total_pushed"), int(s.counters.pushed)),
        (key("total_acked"), int(s.counters.acked)),
        (key("total_dead"), int(s.counters.dead_lettered)),
        (key("oldest_age_ms"), int(s.oldest_age_ms)),
    ];
    m.extend(super::admin::config_pairs(&q, &s.config));
    Frame::Map(m)
}

/// `QEXTEND q receipt VT ms` (alias `QTOUCH`) -> the new `visible_at_ms`: the lease now ends
/// `ms` from now, and the receipt stays valid.
pub(super) async fn extend(store: &Store, a: &mut Args<'_>) -> Reply {
    let parsed = (|| {
        let q = queue_name(a)?;
        let r = receipt(&a.required("receipt")?)?;
        match a.keyword().as_deref() {
            Some("VT") => {}
            _ => return Err(badarg("QEXTEND q receipt VT ms: VT is required")),
        }
        let vt = number(&a.required("VT value")?, "VT", 1, VT_MS_MAX)?;
        if !a.is_empty() {
            return Err(badarg("QEXTEND takes a queue, a receipt and VT ms"));
        }
        Ok::<_, Reply>((q, r, vt))
    })();
    let (q, r, vt) = match parsed {
        Ok(p) => p,
        Err(r) => return r,
    };
    let s = store.clone();
    match blocking(move || s.extend(&q, r, ms(vt))).await {
        Ok(until) => int(until),
        Err(e) => engine_err(&e),
    }
}

/// `QDEAD q receipt [REASON text]` -> the message's id in the dead-letter queue (beanstalkd's
/// `bury`). The reason is logged, not stored (the engine keeps no per-message notes).
pub(super) async fn dead(store: &Store, a: &mut Args<'_>) -> Reply {
    let parsed = (|| {
        let q = queue_name(a)?;
        let r = receipt(&a.required("receipt")?)?;
        let mut reason = None;
        while let Some(k) = a.keyword() {
            match k.as_str() {
                "REASON" => reason = Some(a.required("REASON text")?),
                _ => return Err(badarg(&format!("unknown option {k:?}"))),
            }
        }
        Ok::<_, Reply>((q, r, reason))
    })();
    let (q, r, reason) = match parsed {
        Ok(p) => p,
        Err(r) => return r,
    };
    let s = store.clone();
    let queue = q.clone();
    match blocking(move || s.dead(&q, r)).await {
        Ok(id) => {
            if let Some(reason) = reason {
                tracing::info!(
                    queue,
                    receipt = %r,
                    dead_letter_id = id,
                    reason = %String::from_utf8_lossy(&reason),
                    "QDEAD"
                );
            }
            id_frame(id)
        }
        Err(e) => engine_err(&e),
    }
}

/// `QLIST [pattern]` -> queue names, sorted; the pattern is a glob with `*` and `?`.
pub(super) fn list(store: &Store, a: &mut Args<'_>) -> Reply {
    let pattern = a.next();
    if !a.is_empty() {
        return badarg("QLIST takes at most one pattern");
    }
    Frame::Array(
        store
            .queues()
            .into_iter()
            .filter(|n| pattern.as_deref().is_none_or(|p| glob(p, n.as_bytes())))
            .map(|n| Frame::Bulk(Bytes::from(n)))
            .collect(),
    )
}

/// Whether `text` matches `pattern` (`*` any run, `?` one byte, everything else itself).
pub(crate) fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Message records; payloads kept in blob files are read on the blocking pool.
async fn records(store: &Store, mut msgs: Vec<Message>) -> Result<Reply, Reply> {
    if msgs.iter().any(|m| m.blob.is_some()) {
        let s = store.clone();
        msgs = blocking(move || {
            for m in &mut msgs {
                if m.blob.is_some() {
                    let mut buf = Vec::new();
                    s.open_payload(m)?.read_to_end(&mut buf).map_err(|e| {
                        EngineError::InvalidArgument(format!("reading a payload: {e}"))
                    })?;
                    m.payload = Bytes::from(buf);
                }
            }
            Ok(msgs)
        })
        .await
        .map_err(|e| engine_err(&e))?;
    }
    Ok(Frame::Array(msgs.iter().map(record).collect()))
}

/// `[id, receipt|nil, payload, priority, enqueued_at_ms, first_received_at_ms|nil,
/// receive_count, visible_at_ms]`.
fn record(m: &Message) -> Frame {
    let visible_at = match m.state {
        MessageState::Leased(t) | MessageState::Delayed(t) => t,
        MessageState::Ready => m.enqueued_at,
    };
    Frame::Array(vec![
        id_frame(m.id),
        m.receipt
            .map_or(Frame::Null, |r| Frame::Bulk(Bytes::from(r.to_string()))),
        Frame::Bulk(m.payload.clone()),
        Frame::Integer(i64::from(m.priority)),
        int(m.enqueued_at),
        m.first_received_at.map_or(Frame::Null, int),
        Frame::Integer(i64::from(m.receive_count)),
        int(visible_at),
    ])
}
