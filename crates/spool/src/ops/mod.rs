//! The operations endpoint of the long-running commands (the MQTT agent now, the queue server
//! next): `GET /health/live`, `/health/ready`, `/metrics` (Prometheus text) and `/stats`
//! (JSON), served by axum on their own listener (loopback by default: it has no
//! authentication).
//!
//! What is reported comes from an [`OpsSource`], read when a request comes in: the counters
//! stay where the work happens (engine queue counters, the MQTT client's statistics).

pub mod prom;

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// What the endpoint reports.
pub trait OpsSource: Send + Sync + 'static {
    /// `None` when ready to do its job (200), else why not (503), e.g. "disconnected from the
    /// broker for 6m 10s (more than 5m)".
    fn not_ready(&self) -> Option<String>;
    /// Writes the metrics.
    fn metrics(&self, out: &mut prom::PromText);
    /// The `/stats` document.
    fn stats(&self) -> serde_json::Value;
}

/// The routes, over `source`.
pub fn router(source: Arc<dyn OpsSource>) -> Router {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/stats", get(stats))
        .fallback(not_found)
        .with_state(source)
}

/// Serves the endpoint on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    source: Arc<dyn OpsSource>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(source))
        .with_graceful_shutdown(shutdown)
        .await
}

type Src = State<Arc<dyn OpsSource>>;

/// Live: the process answers (its runtime is not wedged).
async fn live() -> Response {
    json(StatusCode::OK, &serde_json::json!({ "status": "live" }))
}

async fn ready(State(src): Src) -> Response {
    match src.not_ready() {
        None => json(StatusCode::OK, &serde_json::json!({ "status": "ready" })),
        Some(reason) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "status": "not ready", "reason": reason }),
        ),
    }
}

async fn metrics(State(src): Src) -> Response {
    let mut page = prom::PromText::new();
    src.metrics(&mut page);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        page.finish(),
    )
        .into_response()
}

async fn stats(State(src): Src) -> Response {
    json(StatusCode::OK, &src.stats())
}

async fn not_found() -> Response {
    json(
        StatusCode::NOT_FOUND,
        &serde_json::json!({
            "error": "no such endpoint",
            "endpoints": ["/health/live", "/health/ready", "/metrics", "/stats"],
        }),
    )
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response {
    let mut body = v.to_string();
    body.push('\n');
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A source whose readiness and counter the test moves.
    #[derive(Default)]
    struct Probe {
        down: AtomicBool,
        sent: AtomicU64,
    }

    impl OpsSource for Probe {
        fn not_ready(&self) -> Option<String> {
            self.down
                .load(Ordering::SeqCst)
                .then(|| "disconnected from the broker".to_string())
        }
        fn metrics(&self, out: &mut prom::PromText) {
            out.counter(
                "spool_sent_total",
                "Messages sent.",
                &[],
                self.sent.load(Ordering::SeqCst),
            );
        }
        fn stats(&self) -> serde_json::Value {
            serde_json::json!({ "sent": self.sent.load(Ordering::SeqCst) })
        }
    }

    /// One HTTP/1.1 GET over a real socket: (status, content type, body).
    async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let ctype = head
            .lines()
            .find_map(|l| l.strip_prefix("content-type: "))
            .unwrap_or_default()
            .to_string();
        (status, ctype, body.to_string())
    }

    #[tokio::test]
    async fn endpoints_answer_over_http() {
        let probe = Arc::new(Probe::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, probe.clone(), async {
            let _ = stopped.await;
        }));

        let (code, ctype, body) = get(addr, "/health/live").await;
        assert_eq!((code, ctype.as_str()), (200, "application/json"));
        assert!(body.contains("\"live\""), "{body}");

        assert_eq!(get(addr, "/health/ready").await.0, 200);
        probe.down.store(true, Ordering::SeqCst);
        let (code, _, body) = get(addr, "/health/ready").await;
        assert_eq!(code, 503);
        assert!(body.contains("disconnected from the broker"), "{body}");
        // Live does not depend on readiness.
        assert_eq!(get(addr, "/health/live").await.0, 200);

        probe.sent.store(42, Ordering::SeqCst);
        let (code, ctype, body) = get(addr, "/metrics").await;
        assert_eq!(code, 200);
        assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
        assert!(
            body.contains("# TYPE spool_sent_total counter\nspool_sent_total 42\n"),
            "{body}"
        );

        let (code, _, body) = get(addr, "/stats").await;
        assert_eq!(code, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["sent"], 42);

        let (code, _, body) = get(addr, "/nope").await;
        assert_eq!(code, 404);
        assert!(body.contains("/health/ready"), "{body}");

        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
