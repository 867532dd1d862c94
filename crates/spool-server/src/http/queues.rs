//! Work-queue routes (queue-semantics research, section 8.3). The forms the research gives
//! are kept (`PUT /v1/queues/{q}`, `POST .../messages`, `POST .../lease`,
//! `DELETE .../messages/{receipt}`, `POST .../messages/{receipt}/nack`); the others follow
//! them (see `docs/http.md`).
//!
//! As over RESP, reads of a queue that does not exist yet are empty, not `NOQUEUE` (a
//! worker may start before its producer).

use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use spool_engine::{name, Error as EngineError, Message, Overflow, Push, QueueConfig, Receipt};

use super::record::{self, Encoding};
use super::{allow, body, ApiError, ApiResult, App, Waiting};
use crate::auth::Access;
use crate::limits::{
    ACK_RECEIPTS_MAX, COUNT_MAX, DELAY_MS_MAX, TTL_MS_MAX, VT_MS_MAX, WAIT_MS_MAX,
};
use crate::wait::blocking;

pub(super) fn routes() -> Router<App> {
    Router::new()
        .route("/v1/queues", get(list))
        .route(
            "/v1/queues/{q}",
            put(create).patch(configure).delete(drop_queue).get(stats),
        )
        .route("/v1/queues/{q}/purge", post(purge))
        .route("/v1/queues/{q}/messages", post(push).get(peek))
        .route("/v1/queues/{q}/messages/{id}", get(get_by_id).delete(ack))
        .route("/v1/queues/{q}/messages/{receipt}/nack", post(nack))
        .route("/v1/queues/{q}/messages/{receipt}/extend", post(extend))
        .route("/v1/queues/{q}/messages/{receipt}/dead", post(dead))
        .route("/v1/queues/{q}/lease", post(lease))
        .route("/v1/queues/{q}/pop", post(pop))
        .route("/v1/queues/{q}/ack", post(ack_many))
        .route("/v1/queues/{q}/redrive", post(redrive))
}

/// The query string as `T`; a bad or unknown parameter is `400 BADARG`.
pub(super) fn query<T>(q: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::badarg(format!("bad query parameters: {}", e.body_text())))
}

/// Checks that `v` is in `lo..=hi` (`400 BADARG` naming the parameter otherwise).
pub(super) fn range(v: u64, what: &str, lo: u64, hi: u64) -> ApiResult<u64> {
    if v < lo || v > hi {
        return Err(ApiError::badarg(format!(
            "{what} is {v}: it must be between {lo} and {hi}"
        )));
    }
    Ok(v)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn checked_name(q: &str) -> ApiResult<()> {
    name::validate(q).map_err(ApiError::from)
}

fn receipt(s: &str) -> ApiResult<Receipt> {
    s.parse::<Receipt>().map_err(ApiError::from)
}

/// A read of a queue that does not exist yet is empty.
fn empty_if_unknown(r: Result<Vec<Message>, EngineError>) -> ApiResult<Vec<Message>> {
    match r {
        Ok(v) => Ok(v),
        Err(EngineError::UnknownQueue { .. }) => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

fn priority(p: Option<u64>) -> ApiResult<Option<u8>> {
    p.map(|p| range(p, "priority", 0, 255).map(|p| u8::try_from(p).unwrap_or(u8::MAX)))
        .transpose()
}

// ---- management -------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    pattern: Option<String>,
}

/// `GET /v1/queues?pattern=` -> `{"queues": [names]}`: the queues the caller may read.
async fn list(
    State(app): State<App>,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let q = query(q)?;
    let who = super::identity(&app.svc, &headers)?;
    let names: Vec<String> = app
        .svc
        .store()
        .queues()
        .into_iter()
        .filter(|n| {
            q.pattern
                .as_deref()
                .is_none_or(|p| crate::cmd::glob(p.as_bytes(), n.as_bytes()))
        })
        .filter(|n| app.svc.auth().check(&who, Access::Read, n).is_ok())
        .collect();
    Ok(Json(json!({ "queues": names })))
}

/// A queue's configuration in JSON (every field optional; absent ones keep the default on
/// `PUT`, the current value on `PATCH`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigBody {
    visibility_ms: Option<u64>,
    delay_ms: Option<u64>,
    /// 0: keep messages forever.
    retention_ms: Option<u64>,
    max_receives: Option<u32>,
    dead_letter_queue: Option<String>,
    max_messages: Option<u64>,
    max_bytes: Option<u64>,
    overflow: Option<String>,
    max_payload_bytes: Option<usize>,
    max_in_flight: Option<u64>,
}

impl ConfigBody {
    fn parse(b: &[u8]) -> ApiResult<ConfigBody> {
        if b.iter().all(u8::is_ascii_whitespace) {
            return Ok(ConfigBody::default());
        }
        record::parse_json(b)
    }

    fn apply(self, mut c: QueueConfig) -> ApiResult<QueueConfig> {
        if let Some(v) = self.visibility_ms {
            c.visibility = ms(range(v, "visibility_ms", 1, VT_MS_MAX)?);
        }
        if let Some(v) = self.delay_ms {
            c.delay = ms(range(v, "delay_ms", 0, DELAY_MS_MAX)?);
        }
        if let Some(v) = self.retention_ms {
            c.retention = (v > 0).then(|| ms(v));
        }
        if let Some(v) = self.max_receives {
            c.max_receives = v;
        }
        if let Some(v) = self.dead_letter_queue {
            c.dead_letter_queue = Some(v);
        }
        if let Some(v) = self.max_messages {
            c.max_messages = v;
        }
        if let Some(v) = self.max_bytes {
            c.max_bytes = v;
        }
        if let Some(v) = self.overflow {
            c.overflow = match v.as_str() {
                "reject" => Overflow::Reject,
                "evict_lowest_priority" => Overflow::EvictLowestPriority,
                _ => {
                    return Err(ApiError::badarg(format!(
                        "overflow is {v:?}: use \"reject\" or \"evict_lowest_priority\""
                    )))
                }
            };
        }
        if let Some(v) = self.max_payload_bytes {
            c.max_payload_bytes = v;
        }
        if let Some(v) = self.max_in_flight {
            c.max_in_flight = v;
        }
        Ok(c)
    }
}

pub(super) fn config_json(c: &QueueConfig) -> Value {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    json!({
        "visibility_ms": ms(c.visibility),
        "delay_ms": ms(c.delay),
        "retention_ms": c.retention.map_or(0, ms),
        "max_receives": c.max_receives,
        "dead_letter_queue": c.dead_letter_queue,
        "max_messages": c.max_messages,
        "max_bytes": c.max_bytes,
        "overflow": match c.overflow {
            Overflow::Reject => "reject",
            Overflow::EvictLowestPriority => "evict_lowest_priority",
        },
        "max_payload_bytes": c.max_payload_bytes,
        "max_in_flight": c.max_in_flight,
    })
}

/// `PUT /v1/queues/{q}` with a JSON config (or none: the defaults) -> `201 {"created":
/// true}`, or `200 {"created": false}` when it exists with the same config; `409 EXISTS`
/// when it exists with another (use `PATCH`).
async fn create(
    State(app): State<App>,
    Path(q): Path<String>,
    headers: HeaderMap,
    b: Body,
) -> ApiResult<Response> {
    allow(&app.svc, &headers, Access::Admin, &q)?;
    checked_name(&q)?;
    let change = ConfigBody::parse(&body(&app, b).await?)?;
    let svc = app.svc.clone();
    let created = blocking(move || Ok(svc.create_queue(&q, |base| change.apply(base)))).await??;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!({ "created": created }))).into_response())
}

/// `PATCH /v1/queues/{q}` with the fields to change -> `{"config": ...}`; `404 NOQUEUE`.
async fn configure(
    State(app): State<App>,
    Path(q): Path<String>,
    headers: HeaderMap,
    b: Body,
) -> ApiResult<Json<Value>> {
    allow(&app.svc, &headers, Access::Admin, &q)?;
    checked_name(&q)?;
    let change = ConfigBody::parse(&body(&app, b).await?)?;
    let svc = app.svc.clone();
    let config = blocking(move || Ok(svc.configure_queue(&q, |old| change.apply(old)))).await??;
    Ok(Json(json!({ "config": config_json(&config) })))
}

/// `DELETE /v1/queues/{q}` -> `{"dropped": true|false}`.
async fn drop_queue(
    State(app): State<App>,
    Path(q): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    allow(&app.svc, &headers, Access::Admin, &q)?;
    let s = app.svc.store().clone();
    let dropped = blocking(move || s.drop_queue(&q)).await?;
    Ok(Json(json!({ "dropped": dropped })))
}

/// `POST /v1/queues/{q}/purge` -> `{"purged": n}`.
async fn purge(
    State(app): State<App>,
    Path(q): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    allow(&app.svc, &headers, Access::Admin, &q)?;
    checked_name(&q)?;
    let s = app.svc.store().clone();
    let purged = blocking(move || s.purge(&q)).await?;
    Ok(Json(json!({ "purged": purged })))
}

/// `GET /v1/queues/{q}` -> the queue's counts and config; `404 NOQUEUE`.
async fn stats(
    State(app): State<App>,
    Path(q): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    allow(&app.svc, &headers, Access::Read, &q)?;
    checked_name(&q)?;
    let s = app.svc.store().stats(&q)?;
    Ok(Json(json!({
        "name": s.name,
        "visible": s.visible,
        "delayed": s.delayed,
        "leased": s.leased,
        "dead": s.dead,
        "messages": s.messages,
        "bytes": s.bytes,
        "total_pushed": s.counters.pushed,
        "total_acked": s.counters.acked,
        "total_dead": s.counters.dead_lettered,
        "oldest_age_ms": s.oldest_age_ms,
        "dead_letter_queue": s.dead_letter_queue,
        "config": config_json(&s.config),
    })))
}

// ---- push ---------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PushQuery {
    priority: Option<u64>,
    delay_ms: Option<u64>,
    ttl_ms: Option<u64>,
}

/// One message of a JSON push.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PushBody {
    payload: String,
    encoding: Option<String>,
    priority: Option<u64>,
    delay_ms: Option<u64>,
    ttl_ms: Option<u64>,
}

/// A JSON push: one message, or `{"messages": [...]}` (atomic batch).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PushJson {
    Batch { messages: Vec<PushBody> },
    One(PushBody),
}

fn push_of(
    payload: bytes::Bytes,
    pri: Option<u64>,
    delay: Option<u64>,
    ttl: Option<u64>,
) -> ApiResult<Push> {
    let mut p = Push::new(payload).priority(priority(pri)?.unwrap_or(0));
    if let Some(d) = delay {
        p.delay = Some(ms(range(d, "delay_ms", 0, DELAY_MS_MAX)?));
    }
    if let Some(t) = ttl {
        p.ttl = Some(ms(range(t, "ttl_ms", 1, TTL_MS_MAX)?));
    }
    Ok(p)
}

/// `POST /v1/queues/{q}/messages`: the raw body is the payload (`?priority=&delay_ms=
/// &ttl_ms=`), or with `Content-Type: application/json` `{"payload", "encoding"?,
/// "priority"?, "delay_ms"?, "ttl_ms"?}` -> `201 {"id": n}`, or `{"messages": [...]}` ->
/// `201 {"ids": [...]}` (all stored or none). Answered once the push is durable.
async fn push(
    State(app): State<App>,
    Path(q): Path<String>,
    headers: HeaderMap,
    pq: Result<Query<PushQuery>, QueryRejection>,
    b: Body,
) -> ApiResult<Response> {
    let pq = query(pq)?;
    allow(&app.svc, &headers, Access::Write, &q)?;
    checked_name(&q)?;
    let raw = body(&app, b).await?;
    let store = app.svc.store();
    if !record::is_json(&headers) {
        let p = push_of(raw, pq.priority, pq.delay_ms, pq.ttl_ms)?;
        let ids = app.svc.queue_write(&q, || store.push_async(&q, p))?.await?;
        let id = ids
            .first()
            .copied()
            .ok_or_else(|| ApiError::new("ERR", "the engine returned no id"))?;
        return Ok((StatusCode::CREATED, Json(json!({ "id": id }))).into_response());
    }
    if pq.priority.is_some() || pq.delay_ms.is_some() || pq.ttl_ms.is_some() {
        return Err(ApiError::badarg(
            "a JSON push carries priority, delay_ms and ttl_ms in the body, not the query",
        ));
    }
    let one = |m: PushBody| {
        let payload = record::decode_payload(&m.payload, m.encoding.as_deref())?;
        push_of(payload, m.priority, m.delay_ms, m.ttl_ms)
    };
    match record::parse_json::<PushJson>(&raw)? {
        PushJson::One(m) => {
            let m = one(m)?;
            let ids = app.svc.queue_write(&q, || store.push_async(&q, m))?.await?;
            let id = ids
                .first()
                .copied()
                .ok_or_else(|| ApiError::new("ERR", "the engine returned no id"))?;
            Ok((StatusCode::CREATED, Json(json!({ "id": id }))).into_response())
        }
        PushJson::Batch { messages } => {
            if messages.is_empty() {
                return Err(ApiError::badarg("\"messages\" is empty: push at least one"));
            }
            let msgs = messages
                .into_iter()
                .map(one)
                .collect::<ApiResult<Vec<_>>>()?;
            let ids = app
                .svc
                .queue_write(&q, || store.push_batch_async(&q, msgs))?
                .await?;
            Ok((StatusCode::CREATED, Json(json!({ "ids": ids }))).into_response())
        }
    }
}

// ---- reads --------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseQuery {
    vt: Option<u64>,
    count: Option<u64>,
    wait: Option<u64>,
    #[serde(default)]
    encoding: Encoding,
}

/// `POST /v1/queues/{q}/lease?vt=&count=&wait=` -> `{"messages": [records]}` (empty when
/// none came within `wait` ms). Long-polls through `crate::wait`.
async fn lease(
    State(app): State<App>,
    Path(q): Path<String>,
    headers: HeaderMap,
    lq: Result<Query<LeaseQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let lq = query(lq)?;
    allow(&app.svc, &headers, Access::Write, &q)?;
    checked_name(&q)?;
    app.svc.queue_readable(&q)?;
    let vt = lq
        .vt
        .map(|v| range(v, "vt", 1, VT_MS_MAX))
        .transpose()?
        .map(ms);
    let count = range(lq.count.unwrap_or(1), "count", 1, COUNT_MAX)?;
    let wait = range(lq.wait.unwrap_or(0), "wait", 0, WAIT_MS_MAX)?;
    let store = app.svc.store();
    let leased = {
        let _w = Waiting::enter(&app.metrics.waiting);
        crate::wait::lease(store, &q, usize::try_from(count).unwrap_or(1), vt, ms(wait)).await
    };
    let msgs = empty_if_unknown(leased)?;
    Ok(Json(
        json!({ "messages": record::messages(store, msgs, lq.encoding).await? }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CountQuery {
    count: Option<u64>,
    wait: Option<u64>,
    #[serde(default)]
    encoding: Encoding,
}

/// `POST /v1/queues/{q}/pop?count=` -> `{"messages": [records without receipts]}`, removed
/// (at-most-once).
async fn pop(
    State(app): State<App>,
    Path(q): Path<String>,
    headers: HeaderMap,
    cq: Result<Query<CountQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let cq = query(cq)?;
    allow(&app.svc, &headers, Access::Write, &q)?;
    checked_name(&q)?;
    app.svc.queue_readable(&q)?;
    let wait = range(cq.wait.unwrap_or(0), "wait", 0, WAIT_MS_MAX)?;
    let count = usize::try_from(range(cq.count.unwrap_or(1), "count", 1, COUNT_MAX)?).unwrap_or(1);
    let msgs = empty_if_unknown(
        crate::wait::pop(app.svc.store(), &q, count, Duration::from_millis(wait)).await,
    )?;
    Ok(Json(
        json!({ "messages": record::messages(app.svc.store(), msgs, cq.encoding).await? }),
    ))
}

/// `GET /v1/queues/{q}/messages?count=` -> `{"messages": [the next visible records]}`,
/// unchanged.
async fn peek(
    State(app): State<App>,
    Path(q): Path<String>,
    headers: HeaderMap,
    cq: Result<Query<CountQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let cq = query(cq)?;
    allow(&app.svc, &headers, Access::Read, &q)?;
    checked_name(&q)?;
    app.svc.queue_readable(&q)?;
    if cq.wait.is_some() {
        return Err(ApiError::badarg("peek does not wait"));
    }
    let count = usize::try_from(range(cq.count.unwrap_or(1), "count", 1, COUNT_MAX)?).unwrap_or(1);
    let s = app.svc.store().clone();
    let msgs = empty_if_unknown(blocking(move || s.peek(&q, count)).await)?;
    Ok(Json(
        json!({ "messages": record::messages(app.svc.store(), msgs, cq.encoding).await? }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EncodingQuery {
    #[serde(default)]
    encoding: Encoding,
}

/// `GET /v1/queues/{q}/messages/{id}` -> that message's record in any state; `404
/// NOTFOUND`.
async fn get_by_id(
    State(app): State<App>,
    Path((q, id)): Path<(String, String)>,
    headers: HeaderMap,
    eq: Result<Query<EncodingQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let eq = query(eq)?;
    allow(&app.svc, &headers, Access::Read, &q)?;
    checked_name(&q)?;
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::badarg(format!("message id {id:?} is not a number")))?;
    let s = app.svc.store().clone();
    let m = blocking(move || s.get(&q, id)).await?;
    let mut v = record::messages(app.svc.store(), vec![m], eq.encoding).await?;
    Ok(Json(
        v.as_array_mut().and_then(Vec::pop).unwrap_or(Value::Null),
    ))
}

// ---- settling leases ----------------------------------------------------------------------

/// `DELETE /v1/queues/{q}/messages/{receipt}` -> `{"acked": 1}`; `404 NOTFOUND` (already
/// acked: clients may count it as done), `409 LEASELOST`.
async fn ack(
    State(app): State<App>,
    Path((q, r)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    allow(&app.svc, &headers, Access::Write, &q)?;
    checked_name(&q)?;
    let r = receipt(&r)?;
    let mut results = app.svc.store().ack_batch_async(&q, &[r]).await?;
    match results.pop() {
        Some(Ok(())) => Ok(Json(json!({ "acked": 1 }))),
        Some(Err(e)) => Err(e.into()),
        None => Err(ApiError::new("ERR", "the engine returned no result")),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AckBody {
    receipts: Vec<String>,
}

/// `POST /v1/queues/{q}/ack` `{"receipts": [...]}` -> `{"acked": n, "results": [{"ok":
/// true} | {"error", "message"}]}`, one result per receipt, in order.
async fn ack_many(
    State(app): State<App>,
    Path(q): Path<String>,
    headers: HeaderMap,
    b: Body,
) -> ApiResult<Json<Value>> {
    allow(&app.svc, &headers, Access::Write, &q)?;
    checked_name(&q)?;
    let req: AckBody = record::parse_json(&body(&app, b).await?)?;
    if req.receipts.is_empty() {
        return Err(ApiError::badarg("\"receipts\" is empty"));
    }
    if req.receipts.len() > ACK_RECEIPTS_MAX {
        return Err(ApiError::badarg(format!(
            "{} receipts in one ack: at most {ACK_RECEIPTS_MAX}",
            req.receipts.len()
        )));
    }
    let parsed: Vec<ApiResult<Receipt>> = req.receipts.iter().map(|r| receipt(r)).collect();
    let good: Vec<Receipt> = parsed
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .copied()
        .collect();
    let mut done = if good.is_empty() {
        Vec::new()
    } else {
        app.svc.store().ack_batch_async(&q, &good).await?
    }
    .into_iter();
    let mut acked = 0u64;
    let results: Vec<Value> = parsed
        .into_iter()
        .map(|p| {
            let r = match p {
                Err(e) => Err(e),
                Ok(_) => match done.next() {
                    Some(Ok(())) => Ok(()),
                    Some(Err(e)) => Err(e.into()),
                    None => Err(ApiError::new("ERR", "the engine returned fewer results")),
                },
            };
            match r {
                Ok(()) => {
                    acked += 1;
                    json!({ "ok": true })
                }
                Err(e) => json!({ "error": e.code, "message": e.message }),
            }
        })
        .collect();
    Ok(Json(json!({ "acked": acked, "results": results })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NackQuery {
    delay_ms: Option<u64>,
    priority: Option<u64>,
}

/// `POST /v1/queues/{q}/messages/{receipt}/nack?delay_ms=&priority=` -> `{"nacked": 1}`.
async fn nack(
    State(app): State<App>,
    Path((q, r)): Path<(String, String)>,
    headers: HeaderMap,
    nq: Result<Query<NackQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let nq = query(nq)?;
    allow(&app.svc, &headers, Access::Write, &q)?;
    checked_name(&q)?;
    let r = receipt(&r)?;
    let delay = ms(range(
        nq.delay_ms.unwrap_or(0),
        "delay_ms",
        0,
        DELAY_MS_MAX,
    )?);
    let pri = priority(nq.priority)?;
    let s = app.svc.store().clone();
    blocking(move || s.nack(&q, r, delay, pri)).await?;
    Ok(Json(json!({ "nacked": 1 })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtendQuery {
    vt: Option<u64>,
}

/// `POST /v1/queues/{q}/messages/{receipt}/extend?vt=` -> `{"visible_at_ms": t}`; the
/// receipt stays valid.
async fn extend(
    State(app): State<App>,
    Path((q, r)): Path<(String, String)>,
    headers: HeaderMap,
    xq: Result<Query<ExtendQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let xq = query(xq)?;
    allow(&app.svc, &headers, Access::Write, &q)?;
    checked_name(&q)?;
    let r = receipt(&r)?;
    let vt = xq
        .vt
        .ok_or_else(|| ApiError::badarg("extend needs ?vt=<ms>, the new visibility timeout"))?;
    let vt = ms(range(vt, "vt", 1, VT_MS_MAX)?);
    let s = app.svc.store().clone();
    let until = blocking(move || s.extend(&q, r, vt)).await?;
    Ok(Json(json!({ "visible_at_ms": until })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadQuery {
    reason: Option<String>,
}

/// `POST /v1/queues/{q}/messages/{receipt}/dead?reason=` -> `{"id": its id in the
/// dead-letter queue}`; `409 NODLQ` when the queue has none. The reason is written to the
/// server log, as `QDEAD ... REASON` (the engine keeps no per-message notes).
async fn dead(
    State(app): State<App>,
    Path((q, r)): Path<(String, String)>,
    headers: HeaderMap,
    dq: Result<Query<DeadQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let dq = query(dq)?;
    allow(&app.svc, &headers, Access::Write, &q)?;
    checked_name(&q)?;
    let r = receipt(&r)?;
    let s = app.svc.store().clone();
    let name = q.clone();
    let id = blocking(move || s.dead(&name, r)).await?;
    if let Some(reason) = dq.reason {
        tracing::info!(
            queue = %q,
            dead_letter_id = id,
            reason = %reason,
            "a consumer dead-lettered a message"
        );
    }
    Ok(Json(json!({ "id": id })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedriveQuery {
    count: Option<u64>,
}

/// `POST /v1/queues/{dlq}/redrive?count=` -> `{"moved": n}`: dead letters back to the
/// queues they came from (all without `count`); only those whose source queue the caller
/// may write to. `409 NODLQ` when `dlq` is no queue's dead-letter queue.
async fn redrive(
    State(app): State<App>,
    Path(q): Path<String>,
    headers: HeaderMap,
    rq: Result<Query<RedriveQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let rq = query(rq)?;
    let who = allow(&app.svc, &headers, Access::Admin, &q)?;
    checked_name(&q)?;
    let count = rq
        .count
        .map(|c| range(c, "count", 1, u64::MAX))
        .transpose()?;
    let svc = app.svc.clone();
    let moved = blocking(move || Ok(svc.redrive::<ApiError>(&q, count, &who))).await??;
    Ok(Json(json!({ "moved": moved })))
}
