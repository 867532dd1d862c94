//! Operations routes: `/health/live` (200 while the process serves), `/health/ready` (503
//! once the store refuses writes) and `/metrics` (Prometheus text format).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::App;

/// Counters of the HTTP front end.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    /// Requests served, by (method, route, status).
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    /// Long-polls and SSE streams waiting now.
    pub waiting: AtomicU64,
    /// Requests being served now.
    pub in_flight: AtomicU64,
}

impl Metrics {
    pub fn request(&self, method: &str, route: &str, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((method.to_string(), route.to_string(), status))
                .or_insert(0) += 1;
        }
    }
}

pub(super) fn routes() -> Router<App> {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
}

/// `GET /health/live` -> 200 `{"status": "live"}`.
async fn live() -> Json<serde_json::Value> {
    Json(json!({ "status": "live" }))
}

/// `GET /health/ready` -> 200 `{"status": "ready"}`, or 503 while the store refuses writes (a
/// write or fsync failed: the engine refuses every write until it is opened again; restart
/// the server, which recovers the store).
async fn ready(State(app): State<App>) -> Response {
    if let Some(cause) = app.svc.store().poisoned() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "not ready",
                "message": format!("the store refuses writes ({cause}): restart spool serve"),
            })),
        )
            .into_response();
    }
    Json(json!({ "status": "ready" })).into_response()
}

/// A label value, escaped for the Prometheus text format.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `GET /metrics`: requests by route and status, requests in flight, waiting long-polls,
/// per-queue visible/leased/delayed/dead and per-topic last_seq.
async fn metrics(State(app): State<App>) -> Response {
    let mut out = String::new();
    let m = &app.metrics;
    out.push_str("# HELP spool_http_requests_total HTTP requests served, by route and status.\n");
    out.push_str("# TYPE spool_http_requests_total counter\n");
    if let Ok(reqs) = m.requests.lock() {
        for ((method, route, status), n) in reqs.iter() {
            let _ = writeln!(
                out,
                "spool_http_requests_total{{method=\"{}\",route=\"{}\",status=\"{status}\"}} {n}",
                label(method),
                label(route)
            );
        }
    }
    let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    };
    gauge(
        &mut out,
        "spool_http_requests_in_flight",
        "HTTP requests being served now (long-polls and streams included).",
        m.in_flight.load(Ordering::Relaxed),
    );
    gauge(
        &mut out,
        "spool_http_waiting",
        "HTTP long-polls and SSE streams waiting for a message now.",
        m.waiting.load(Ordering::Relaxed),
    );
    let store = app.svc.store();
    let mut queues = Vec::new();
    for q in store.queues() {
        if let Ok(s) = store.stats(&q) {
            queues.push(s);
        }
    }
    for (name, help, f) in [
        (
            "spool_queue_visible",
            "Messages ready to be leased.",
            (|s: &spool_engine::QueueStats| s.visible) as fn(&spool_engine::QueueStats) -> u64,
        ),
        (
            "spool_queue_leased",
            "Messages leased and not yet acked.",
            |s| s.leased,
        ),
        (
            "spool_queue_delayed",
            "Messages waiting for their delay.",
            |s| s.delayed,
        ),
        (
            "spool_queue_dead",
            "Messages in the queue's dead-letter queue.",
            |s| s.dead,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for s in &queues {
            let _ = writeln!(out, "{name}{{queue=\"{}\"}} {}", label(&s.name), f(s));
        }
    }
    out.push_str("# HELP spool_topic_last_seq Sequence number of the newest message.\n");
    out.push_str("# TYPE spool_topic_last_seq gauge\n");
    for t in store.topics() {
        if let Ok(s) = store.topic_stats(&t) {
            let _ = writeln!(
                out,
                "spool_topic_last_seq{{topic=\"{}\"}} {}",
                label(&t),
                s.last_seq
            );
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}
