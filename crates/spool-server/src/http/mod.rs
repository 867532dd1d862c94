//! The HTTP/JSON front end (`shared/design/server.md`, "Front ends" 2): the operations of the
//! queue-semantics research, sections 8.3 and 8.4, as REST routes under `/v1`, over the same
//! [`Service`] as the RESP listener. Reference of every route: `docs/http.md`; the machine
//! readable form is served at `/v1/openapi.json`.
//!
//! - `queues`: work-queue routes; `topics`: topic routes and the SSE stream;
//! - `ops`: `/health/live`, `/health/ready`, `/metrics`; `openapi`: the OpenAPI document;
//! - here: the listener ([`HttpServer`]), the [`router`], errors as JSON
//!   (`{"error": CODE, "message": ...}` with the section 8.5 status) and authentication
//!   (`Authorization: Bearer <token>`, checked before every operation).

mod listen;
mod openapi;
mod ops;
mod queues;
mod record;
mod topics;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use spool_engine::Error as EngineError;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::{Access, AuthError, Identity};
use crate::error::{code, http_status};
use crate::server::ServerError;
use crate::service::Service;

pub use openapi::document as openapi_document;

/// Largest request body by default: the engine's largest queue payload (1 MiB by default
/// config) as base64 in a JSON envelope, with room to spare.
pub const BODY_MAX_DEFAULT: usize = (1 << 20) * 4 / 3 + 64 * 1024;

/// What [`HttpServer::start`] needs.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Address to listen on (port 0: any free port; see [`HttpServer::local_addr`]).
    pub bind: SocketAddr,
    /// Largest request body in bytes; a larger one is `413 TOOBIG`.
    pub body_max: usize,
    /// Serve HTTPS (`tls.rs`): every connection's TLS handshake first.
    pub tls: Option<crate::tls::Tls>,
    /// Connections served at once; past it a connection gets `503 BUSY` and is closed.
    pub max_connections: usize,
    /// Largest request head (request line and headers) in bytes; above it `431`.
    pub header_max: usize,
    /// How long a client may take to send a request's head, counted from when the
    /// connection is ready for one: also how long an idle keep-alive connection stays open.
    pub header_timeout: Duration,
    /// How long a request body may take to arrive (`408` after it).
    pub body_timeout: Duration,
    /// How long a write of a reply (or of an SSE event) may stay pending: a client that
    /// stops reading is disconnected after it.
    pub write_timeout: Duration,
}

/// [`HttpConfig::header_max`] by default.
pub const HEADER_MAX_DEFAULT: usize = 16 * 1024;
/// [`HttpConfig::header_timeout`] by default.
pub const HEADER_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// [`HttpConfig::body_timeout`] by default.
pub const BODY_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);

impl HttpConfig {
    /// Defaults for `bind`.
    pub fn new(bind: SocketAddr) -> HttpConfig {
        HttpConfig {
            bind,
            body_max: BODY_MAX_DEFAULT,
            tls: None,
            max_connections: crate::server::MAX_CONNECTIONS_DEFAULT,
            header_max: HEADER_MAX_DEFAULT,
            header_timeout: HEADER_TIMEOUT_DEFAULT,
            body_timeout: BODY_TIMEOUT_DEFAULT,
            write_timeout: crate::server::WRITE_TIMEOUT_DEFAULT,
        }
    }
}

/// A running HTTP listener. Dropping it does not stop it: call [`HttpServer::shutdown`].
#[derive(Debug)]
pub struct HttpServer {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    /// Binds `config.bind` and serves [`router_with`] on it (on the current tokio runtime).
    pub async fn start(config: HttpConfig, svc: Service) -> Result<HttpServer, ServerError> {
        let listener =
            TcpListener::bind(config.bind)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.bind,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: config.bind,
            source,
        })?;
        let app = router_with(svc, &config);
        let (stop, stopped) = watch::channel(false);
        let task = if let Some(tls) = config.tls.clone() {
            let listener = crate::tls::TlsListener::from_tcp(listener, tls).map_err(|e| {
                ServerError::Bind {
                    addr: config.bind,
                    source: std::io::Error::other(e.to_string()),
                }
            })?;
            tokio::spawn(listen::serve(listener, app, config, stopped))
        } else {
            tokio::spawn(listen::serve(listener, app, config, stopped))
        };
        Ok(HttpServer {
            local_addr,
            stop,
            task,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets running requests finish for up to 2 s, then returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        // The task cuts its connections off after the grace itself; this is a backstop.
        if tokio::time::timeout(listen::SHUTDOWN_GRACE * 2, &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

/// Shared state of the handlers.
#[derive(Clone)]
pub(crate) struct App {
    pub svc: Service,
    pub body_max: usize,
    pub body_timeout: Duration,
    pub metrics: Arc<ops::Metrics>,
}

/// The HTTP routes over `svc`, with the default [`HttpConfig`] limits (for a listener of
/// one's own, e.g. over TLS).
pub fn router(svc: Service) -> Router {
    router_with(svc, &HttpConfig::new(SocketAddr::from(([127, 0, 0, 1], 0))))
}

/// The HTTP routes over `svc` with `config`'s limits.
pub fn router_with(svc: Service, config: &HttpConfig) -> Router {
    let app = App {
        svc,
        body_max: config.body_max,
        body_timeout: config.body_timeout,
        metrics: Arc::new(ops::Metrics::default()),
    };
    routes()
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(app.clone(), count))
        // Bodies are read by `body()` below, which answers `TOOBIG` itself.
        .layer(DefaultBodyLimit::disable())
        .with_state(app)
}

/// Every route (the OpenAPI test compares this with the document).
fn routes() -> Router<App> {
    Router::new()
        .merge(queues::routes())
        .merge(topics::routes())
        .merge(ops::routes())
        .route("/v1/openapi.json", axum::routing::get(openapi::serve))
}

async fn not_found() -> ApiError {
    ApiError::new(
        "NOTFOUND",
        "no such route; the routes are listed at /v1/openapi.json and in docs/http.md",
    )
    .status(StatusCode::NOT_FOUND)
}

/// Counts requests by route and status for `/metrics`.
async fn count(State(app): State<App>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = req.method().as_str().to_string();
    app.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
    let res = next.run(req).await;
    app.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
    app.metrics.request(&method, &route, res.status().as_u16());
    res
}

/// An error reply: the section 8.5 code, its status and a JSON body.
#[derive(Debug)]
pub(crate) struct ApiError {
    code: &'static str,
    message: String,
    status: Option<StatusCode>,
}

impl ApiError {
    pub fn new(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            status: None,
        }
    }

    pub fn badarg(message: impl Into<String>) -> ApiError {
        ApiError::new("BADARG", message)
    }

    fn status(mut self, s: StatusCode) -> ApiError {
        self.status = Some(s);
        self
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        ApiError::new(code(&e), e.to_string())
    }
}

impl From<crate::registry::Refused> for ApiError {
    fn from(r: crate::registry::Refused) -> ApiError {
        ApiError::new(r.code(), r.to_string())
    }
}

impl From<crate::Manage<ApiError>> for ApiError {
    fn from(m: crate::Manage<ApiError>) -> ApiError {
        match m {
            crate::Manage::Engine(e) => e.into(),
            crate::Manage::Refused(r) => r.into(),
            crate::Manage::Invalid(e) => e,
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        ApiError::new(e.code(), e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status.unwrap_or_else(|| {
            StatusCode::from_u16(http_status(self.code))
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        });
        let body = serde_json::json!({"error": self.code, "message": self.message});
        let mut res = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        res
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// Who sent the request: anonymous when the server has no users, else the owner of the
/// `Authorization: Bearer` token (`401 NOAUTH` without one).
pub(crate) fn identity(svc: &Service, headers: &HeaderMap) -> ApiResult<Identity> {
    let auth = svc.auth();
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or(""));
    match header {
        None if !auth.is_required() => Ok(Identity::anonymous()),
        None => Err(AuthError::Required.into()),
        Some(h) => {
            let token = h
                .strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
                .ok_or_else(|| {
                    ApiError::new(
                        "WRONGPASS",
                        "the Authorization header must be 'Bearer <token>'",
                    )
                })?;
            Ok(auth.bearer(token.trim())?)
        }
    }
}

/// [`identity`], then whether it may do `access` on `name`.
pub(crate) fn allow(
    svc: &Service,
    headers: &HeaderMap,
    access: Access,
    name: &str,
) -> ApiResult<Identity> {
    let who = identity(svc, headers)?;
    svc.auth().check(&who, access, name)?;
    Ok(who)
}

/// Reads a request body of at most `app.body_max` bytes (`413 TOOBIG` above) that arrives
/// within `app.body_timeout` (`408` after it).
pub(crate) async fn body(app: &App, b: Body) -> ApiResult<Bytes> {
    let max = app.body_max;
    let read = tokio::time::timeout(app.body_timeout, axum::body::to_bytes(b, max)).await;
    let Ok(read) = read else {
        return Err(ApiError::badarg(format!(
            "the request body did not arrive within {:?} ([http] body_timeout)",
            app.body_timeout
        ))
        .status(StatusCode::REQUEST_TIMEOUT));
    };
    read.map_err(|e| {
        // axum wraps http-body-util's `LengthLimitError`, which it does not re-export.
        let too_big = e.to_string().contains("length limit");
        if too_big {
            ApiError::new(
                "TOOBIG",
                format!("the request body is larger than the limit of {max} bytes"),
            )
        } else {
            ApiError::badarg(format!("cannot read the request body: {e}"))
        }
    })
}

/// A counter of waits under way (long-polls, SSE streams), for `/metrics`.
pub(crate) struct Waiting<'a>(&'a AtomicU64);

impl<'a> Waiting<'a> {
    pub fn enter(g: &'a AtomicU64) -> Waiting<'a> {
        g.fetch_add(1, Ordering::Relaxed);
        Waiting(g)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
