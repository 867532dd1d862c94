//! Topic routes (queue-semantics research, section 8.4): a topic is a retained log read
//! through cursors that the client keeps (`POST .../subscriptions` -> `{cursor}` "from
//! now", then `?cursor=` on every read), plus the Server-Sent Events stream
//! `GET /v1/topics/{t}/stream` (`id:` = seq; resume with `Last-Event-ID` or `?cursor=`).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use spool_engine::{name, Cursor, Store, TopicConfig};
use tokio::sync::mpsc;

use super::ops::Metrics;
use super::queues::{query, range};
use super::record::{self, Encoding};
use super::{allow, body, ApiError, ApiResult, App, Waiting};
use crate::auth::Access;
use crate::limits::WAIT_MS_MAX;
use crate::wait::blocking;

pub(super) fn routes() -> Router<App> {
    Router::new()
        .route("/v1/topics", get(list))
        .route(
            "/v1/topics/{t}",
            put(create).patch(configure).delete(drop_topic).get(stats),
        )
        .route("/v1/topics/{t}/messages", post(publish).get(next))
        .route("/v1/topics/{t}/latest", get(latest))
        .route("/v1/topics/{t}/subscriptions", post(subscribe))
        .route("/v1/topics/{t}/stream", get(stream))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn checked_name(t: &str) -> ApiResult<()> {
    name::validate(t).map_err(ApiError::from)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    pattern: Option<String>,
}

/// `GET /v1/topics?pattern=` -> `{"topics": [names]}`: the topics the caller may read.
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
        .topics()
        .into_iter()
        .filter(|n| {
            q.pattern
                .as_deref()
                .is_none_or(|p| crate::cmd::glob(p.as_bytes(), n.as_bytes()))
        })
        .filter(|n| app.svc.auth().check(&who, Access::Read, n).is_ok())
        .collect();
    Ok(Json(json!({ "topics": names })))
}

/// A topic's configuration in JSON (absent fields: the default on `PUT`, the current value
/// on `PATCH`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigBody {
    retention_ms: Option<u64>,
    max_messages: Option<u64>,
    max_bytes: Option<u64>,
    max_payload_bytes: Option<usize>,
}

impl ConfigBody {
    fn parse(b: &[u8]) -> ApiResult<ConfigBody> {
        if b.iter().all(u8::is_ascii_whitespace) {
            return Ok(ConfigBody::default());
        }
        record::parse_json(b)
    }

    fn apply(self, mut c: TopicConfig) -> ApiResult<TopicConfig> {
        if let Some(v) = self.retention_ms {
            c.retention = ms(range(v, "retention_ms", 1, crate::limits::TTL_MS_MAX)?);
        }
        if let Some(v) = self.max_messages {
            c.max_messages = v;
        }
        if let Some(v) = self.max_bytes {
            c.max_bytes = v;
        }
        if let Some(v) = self.max_payload_bytes {
            c.max_payload_bytes = v;
        }
        Ok(c)
    }
}

fn config_json(c: &TopicConfig) -> Value {
    json!({
        "retention_ms": u64::try_from(c.retention.as_millis()).unwrap_or(u64::MAX),
        "max_messages": c.max_messages,
        "max_bytes": c.max_bytes,
        "max_payload_bytes": c.max_payload_bytes,
    })
}

/// `PUT /v1/topics/{t}` with a JSON config -> `201 {"created": true}`, `200 {"created":
/// false}` (same config), `409 EXISTS` (another config: use `PATCH`).
async fn create(
    State(app): State<App>,
    Path(t): Path<String>,
    headers: HeaderMap,
    b: Body,
) -> ApiResult<Response> {
    allow(&app.svc, &headers, Access::Admin, &t)?;
    checked_name(&t)?;
    let change = ConfigBody::parse(&body(&app, b).await?)?;
    let svc = app.svc.clone();
    let created = blocking(move || Ok(svc.create_topic(&t, |base| change.apply(base)))).await??;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!({ "created": created }))).into_response())
}

/// `PATCH /v1/topics/{t}` with the fields to change -> `{"config": ...}`; `404 NOTOPIC`.
async fn configure(
    State(app): State<App>,
    Path(t): Path<String>,
    headers: HeaderMap,
    b: Body,
) -> ApiResult<Json<Value>> {
    allow(&app.svc, &headers, Access::Admin, &t)?;
    checked_name(&t)?;
    let change = ConfigBody::parse(&body(&app, b).await?)?;
    let svc = app.svc.clone();
    let config = blocking(move || Ok(svc.configure_topic(&t, |old| change.apply(old)))).await??;
    Ok(Json(json!({ "config": config_json(&config) })))
}

/// `DELETE /v1/topics/{t}` -> `{"dropped": true|false}`.
async fn drop_topic(
    State(app): State<App>,
    Path(t): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    allow(&app.svc, &headers, Access::Admin, &t)?;
    let s = app.svc.store().clone();
    let dropped = blocking(move || s.drop_topic(&t)).await?;
    Ok(Json(json!({ "dropped": dropped })))
}

/// `GET /v1/topics/{t}` -> `last_seq`, `retained`, `bytes`, `oldest_age_ms`, `config`;
/// `404 NOTOPIC`.
async fn stats(
    State(app): State<App>,
    Path(t): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    allow(&app.svc, &headers, Access::Read, &t)?;
    checked_name(&t)?;
    let s = app.svc.store().topic_stats(&t)?;
    Ok(Json(json!({
        "name": s.name,
        "last_seq": s.last_seq,
        "retained": s.retained,
        "bytes": s.bytes,
        "oldest_age_ms": s.oldest_age_ms,
        "config": config_json(&s.config),
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    payload: String,
    encoding: Option<String>,
}

/// A JSON publish: one message, or `{"messages": [...]}` (atomic batch).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PublishJson {
    Batch { messages: Vec<PublishBody> },
    One(PublishBody),
}

/// `POST /v1/topics/{t}/messages`: the raw body is the payload, or with `Content-Type:
/// application/json` `{"payload", "encoding"?}` -> `201 {"seq": n}`, or `{"messages":
/// [...]}` -> `201 {"seqs": [...]}` (all published or none, consecutive). Answered once
/// durable.
async fn publish(
    State(app): State<App>,
    Path(t): Path<String>,
    headers: HeaderMap,
    b: Body,
) -> ApiResult<Response> {
    allow(&app.svc, &headers, Access::Write, &t)?;
    checked_name(&t)?;
    let raw = body(&app, b).await?;
    let (payloads, batch) = if record::is_json(&headers) {
        let one = |m: PublishBody| record::decode_payload(&m.payload, m.encoding.as_deref());
        match record::parse_json::<PublishJson>(&raw)? {
            PublishJson::One(m) => (vec![one(m)?], false),
            PublishJson::Batch { messages } => {
                if messages.is_empty() {
                    return Err(ApiError::badarg(
                        "\"messages\" is empty: publish at least one",
                    ));
                }
                let p = messages
                    .into_iter()
                    .map(one)
                    .collect::<ApiResult<Vec<_>>>()?;
                (p, true)
            }
        }
    } else {
        (vec![raw], false)
    };
    let store = app.svc.store();
    let seqs = app
        .svc
        .topic_write(&t, || store.publish_batch_async(&t, payloads))?
        .await?;
    if batch {
        return Ok((StatusCode::CREATED, Json(json!({ "seqs": seqs }))).into_response());
    }
    let seq = seqs
        .first()
        .copied()
        .ok_or_else(|| ApiError::new("ERR", "the engine returned no sequence number"))?;
    Ok((StatusCode::CREATED, Json(json!({ "seq": seq }))).into_response())
}

/// `POST /v1/topics/{t}/subscriptions` -> `201 {"cursor": last_seq + 1}`: reads from this
/// cursor see what is published from now on.
async fn subscribe(
    State(app): State<App>,
    Path(t): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    allow(&app.svc, &headers, Access::Write, &t)?;
    checked_name(&t)?;
    app.svc.topic_readable(&t)?;
    let c = app.svc.store().subscribe(&t)?;
    Ok((StatusCode::CREATED, Json(json!({ "cursor": c.next }))).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadQuery {
    cursor: Option<u64>,
    wait: Option<u64>,
    #[serde(default)]
    encoding: Encoding,
}

fn cursor_of(store: &Store, t: &str, c: Option<u64>) -> ApiResult<Cursor> {
    let c = c.ok_or_else(|| {
        ApiError::badarg(
            "missing ?cursor=: get one from POST /v1/topics/{t}/subscriptions, then pass the \
             next_cursor of each reply",
        )
    })?;
    Ok(store.cursor_at(t, c)?)
}

/// `GET /v1/topics/{t}/messages?cursor=&wait=` -> `{"message": record | null,
/// "next_cursor": n}`: the oldest retained message at or after the cursor, waiting up to
/// `wait` ms for one (long-poll).
async fn next(
    State(app): State<App>,
    Path(t): Path<String>,
    headers: HeaderMap,
    rq: Result<Query<ReadQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let rq = query(rq)?;
    allow(&app.svc, &headers, Access::Read, &t)?;
    checked_name(&t)?;
    app.svc.topic_readable(&t)?;
    let wait = range(rq.wait.unwrap_or(0), "wait", 0, WAIT_MS_MAX)?;
    let store = app.svc.store();
    let mut cursor = cursor_of(store, &t, rq.cursor)?;
    let got = {
        let _w = Waiting::enter(&app.metrics.waiting);
        crate::wait::topic_next(store, &mut cursor, ms(wait)).await?
    };
    Ok(Json(read_reply(got.as_ref(), cursor.next, rq.encoding)))
}

fn read_reply(m: Option<&spool_engine::TopicMessage>, next: u64, enc: Encoding) -> Value {
    json!({
        "message": m.map(|m| record::topic_message(m, next, enc)),
        "next_cursor": next,
    })
}

/// `GET /v1/topics/{t}/latest?cursor=` -> `{"message": the newest at or after the cursor |
/// null, "next_cursor"}` (older ones are skipped and counted in `skipped`).
async fn latest(
    State(app): State<App>,
    Path(t): Path<String>,
    headers: HeaderMap,
    rq: Result<Query<ReadQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let rq = query(rq)?;
    allow(&app.svc, &headers, Access::Read, &t)?;
    checked_name(&t)?;
    app.svc.topic_readable(&t)?;
    if rq.wait.is_some() {
        return Err(ApiError::badarg("latest does not wait; use messages?wait="));
    }
    let mut cursor = cursor_of(app.svc.store(), &t, rq.cursor)?;
    let s = app.svc.store().clone();
    let (got, cursor) = blocking(move || s.topic_latest(&mut cursor).map(|m| (m, cursor))).await?;
    Ok(Json(read_reply(got.as_ref(), cursor.next, rq.encoding)))
}

/// How long one engine wait of a stream lasts before it looks whether the client is still
/// there (keep-alive comments go out meanwhile).
const STREAM_WAIT: Duration = Duration::from_secs(15);

/// The events of one stream, fed by its task.
struct Events(mpsc::Receiver<Event>);

impl futures_core::Stream for Events {
    type Item = Result<Event, Infallible>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|e| e.map(Ok))
    }
}

/// `GET /v1/topics/{t}/stream[?cursor=]`: Server-Sent Events, one `data:` record per
/// message with `id:` = its seq. It starts after `Last-Event-ID` when the client resumes,
/// else at `?cursor=`, else from now. An `event: error` with the JSON error ends it.
async fn stream(
    State(app): State<App>,
    Path(t): Path<String>,
    headers: HeaderMap,
    rq: Result<Query<ReadQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let rq = query(rq)?;
    allow(&app.svc, &headers, Access::Read, &t)?;
    checked_name(&t)?;
    app.svc.topic_readable(&t)?;
    if rq.wait.is_some() {
        return Err(ApiError::badarg(
            "a stream has no wait: it waits until closed",
        ));
    }
    let store = app.svc.store().clone();
    let last_id = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::badarg("Last-Event-ID must be a sequence number"))
        })
        .transpose()?;
    let cursor = match (last_id, rq.cursor) {
        (Some(id), _) => store.cursor_at(&t, id.saturating_add(1))?,
        (None, Some(c)) => store.cursor_at(&t, c)?,
        (None, None) => store.subscribe(&t)?,
    };
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(feed(store, cursor, tx, app.metrics.clone(), rq.encoding));
    Ok(Sse::new(Events(rx))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// Reads the topic through `crate::wait` and sends each message as an event, until the
/// client is gone or the read fails.
async fn feed(
    store: Store,
    mut cursor: Cursor,
    tx: mpsc::Sender<Event>,
    metrics: Arc<Metrics>,
    enc: Encoding,
) {
    let _w = Waiting::enter(&metrics.waiting);
    while !tx.is_closed() {
        match crate::wait::topic_next(&store, &mut cursor, STREAM_WAIT).await {
            Ok(None) => {}
            Ok(Some(m)) => {
                let data = record::topic_message(&m, cursor.next, enc).to_string();
                let ev = Event::default().id(m.seq.to_string()).data(data);
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                let e = ApiError::from(e);
                let data = json!({ "error": e.code, "message": e.message }).to_string();
                let _ = tx.send(Event::default().event("error").data(data)).await;
                return;
            }
        }
    }
}
