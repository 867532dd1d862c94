//! dsmq compatibility: the listener the unmodified dsmq Python client talks to
//! (`dsmq.client.connect(host, port)`): WebSocket on any path, one JSON text message per
//! request, `{"action": "put" | "get" | "get_latest" | "shutdown", "topic": ..., "message": ...}`.
//! `put` has no reply; `get` and `get_latest` answer `{"message": <text>}`, `""` when there is
//! nothing to read. (`get_wait` is the client's own loop of `get`s.)
//!
//! Each connection is a connection of the command layer, so dsmq's semantics are the topics'
//! (`cmd/topic.rs`): a connection reads what was published after it connected (dsmq's history
//! cutoff), in order, per topic; `get_latest` skips to the newest; topics are created by their
//! first `put`. What spool adds: messages are durable, and a `put` is applied when it arrives,
//! in order, and made durable before the same connection's next `get` is answered (so a client
//! reads its own writes). `shutdown` stops the server only for a connection allowed to (see
//! [`DsmqConfig`]); dsmq lets any client do it.
//!
//! dsmq has no error replies. A request spool refuses (a topic name outside spool's rule, a
//! permission) closes the connection with a WebSocket close frame whose reason says why, and is
//! logged; a malformed request closes it the same way.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use spool_resp::Frame;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;

use crate::auth::{Access, Identity};
use crate::cmd::{execute, start, ConnState, Durable};
use crate::server::ServerError;
use crate::service::Service;

/// dsmq's own default port.
pub const DSMQ_PORT_DEFAULT: u16 = 30008;

/// What [`DsmqServer::start`] needs.
#[derive(Debug, Clone)]
pub struct DsmqConfig {
    /// Address to listen on (port 0: any free port).
    pub bind: SocketAddr,
    /// Connections served at once; more are refused at the handshake.
    pub max_connections: usize,
    /// Who a dsmq connection is (dsmq's client sends no credentials): its permissions are
    /// checked on every `put` (write) and `get` (read). Anonymous by default, which is
    /// everything when the server has no users, and nothing when it has.
    pub identity: Identity,
    /// Whether `shutdown` may stop the server: only if this is set *and* the identity has
    /// admin access (with no users configured, admin is everyone: hence the explicit switch).
    pub allow_shutdown: bool,
    /// Notified when an allowed `shutdown` arrives (the binary stops the whole server).
    pub on_shutdown: Arc<Notify>,
    /// The largest WebSocket message accepted (a payload plus its JSON envelope).
    pub max_message_bytes: usize,
}

impl DsmqConfig {
    /// Defaults for `bind`: anonymous, no shutdown, 1 MiB payloads.
    pub fn new(bind: SocketAddr) -> DsmqConfig {
        DsmqConfig {
            bind,
            max_connections: crate::MAX_CONNECTIONS_DEFAULT,
            identity: Identity::anonymous(),
            allow_shutdown: false,
            on_shutdown: Arc::new(Notify::new()),
            max_message_bytes: 2 << 20,
        }
    }
}

/// A running dsmq listener. Dropping it does not stop it: call [`DsmqServer::shutdown`].
#[derive(Debug)]
pub struct DsmqServer {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl DsmqServer {
    /// Binds `config.bind` and starts serving (on the current tokio runtime).
    pub async fn start(config: DsmqConfig, svc: Service) -> Result<DsmqServer, ServerError> {
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
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, config, svc, stopped));
        Ok(DsmqServer {
            local_addr,
            stop,
            task,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting and closes every connection, then returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    config: DsmqConfig,
    svc: Service,
    mut stopped: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let ids = AtomicU64::new(1 << 62);
    let config = Arc::new(config);
    let mut conns = JoinSet::new();
    loop {
        let (socket, peer) = tokio::select! {
            _ = stopped.changed() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("dsmq: accept failed: {e}");
                    tokio::task::yield_now().await;
                    continue;
                }
            },
        };
        while conns.try_join_next().is_some() {}
        let _ = socket.set_nodelay(true);
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!("dsmq: connection from {peer} refused: max_connections reached");
            continue;
        };
        let id = ids.fetch_add(1, Ordering::Relaxed);
        let (svc, config, stopped) = (svc.clone(), config.clone(), stopped.clone());
        conns.spawn(async move {
            if let Err(e) = serve(socket, svc, id, &config, stopped).await {
                tracing::debug!("dsmq connection {id} from {peer}: {e}");
            }
            drop(permit);
        });
    }
    drop(listener);
    conns.shutdown().await;
}

/// Why a connection ended early.
type ConnError = Box<dyn std::error::Error + Send + Sync>;

/// One dsmq request, parsed.
enum Request {
    Put { topic: String, payload: Bytes },
    Get { topic: String, latest: bool },
    Shutdown,
}

/// Parses one request; `Err` says what is wrong with it.
fn parse(text: &str) -> Result<Request, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("a request is a JSON object: {e}"))?;
    let action = v
        .get("action")
        .and_then(serde_json::Value::as_str)
        .ok_or("a request needs \"action\": put, get, get_latest or shutdown")?;
    let topic = || {
        v.get("topic")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("{action} needs a \"topic\" string"))
    };
    match action {
        "put" => {
            // dsmq stores the message as text; a non-string message is kept as its JSON.
            let payload = match v.get("message") {
                Some(serde_json::Value::String(s)) => Bytes::from(s.clone()),
                Some(other) => Bytes::from(other.to_string()),
                None => return Err("put needs a \"message\"".into()),
            };
            Ok(Request::Put {
                topic: topic()?,
                payload,
            })
        }
        "get" => Ok(Request::Get {
            topic: topic()?,
            latest: false,
        }),
        "get_latest" => Ok(Request::Get {
            topic: topic()?,
            latest: true,
        }),
        "shutdown" => Ok(Request::Shutdown),
        other => Err(format!(
            "unknown action {other:?}: dsmq's actions are put, get, get_latest and shutdown"
        )),
    }
}

fn bulk(s: &str) -> Frame {
    Frame::Bulk(Bytes::copy_from_slice(s.as_bytes()))
}

/// The text of an error reply of the command layer, if `reply` is one.
fn error_text(reply: &Frame) -> Option<String> {
    match reply {
        Frame::Error(e) => Some(String::from_utf8_lossy(e).into_owned()),
        _ => None,
    }
}

async fn serve(
    socket: TcpStream,
    svc: Service,
    id: u64,
    config: &DsmqConfig,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), ConnError> {
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(config.max_message_bytes))
        .max_frame_size(Some(config.max_message_bytes));
    let mut ws = tokio_tungstenite::accept_async_with_config(socket, Some(ws_config)).await?;
    // The command layer's connection: its topic cursors start now (dsmq's cutoff).
    let mut conn = ConnState::open(id, &svc);
    conn.identity = config.identity.clone();
    // Puts applied and not yet durable: made durable before the next reply.
    let mut puts: VecDeque<Durable> = VecDeque::new();
    let refuse = |why: String| {
        tracing::warn!("dsmq connection {id}: {why}");
        Message::Close(Some(CloseFrame {
            code: CloseCode::Policy,
            reason: why.chars().take(120).collect::<String>().into(),
        }))
    };
    loop {
        let msg = tokio::select! {
            _ = stopped.changed() => break,
            m = ws.next() => m,
        };
        let text: String = match msg {
            None | Some(Ok(Message::Close(_))) => break,
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(Message::Text(t))) => t.as_str().to_owned(),
            Some(Ok(Message::Binary(b))) => {
                let Ok(t) = String::from_utf8(b.to_vec()) else {
                    ws.send(refuse("a binary message that is not UTF-8 JSON".into()))
                        .await?;
                    break;
                };
                t
            }
            Some(Ok(_)) => continue,
        };
        let request = match parse(&text) {
            Ok(r) => r,
            Err(why) => {
                ws.send(refuse(why)).await?;
                break;
            }
        };
        match request {
            Request::Put { topic, payload } => {
                let args = vec![bulk("TPUB"), bulk(&topic), Frame::Bulk(payload)];
                let Some(d) = start(&svc, &conn, &args) else {
                    ws.send(refuse("internal error: a put could not be started".into()))
                        .await?;
                    break;
                };
                puts.push_back(d);
            }
            Request::Get { topic, latest } => {
                // The connection's puts first: durable, and visible to this read.
                if let Some(why) = settle(&mut puts).await {
                    ws.send(refuse(why)).await?;
                    break;
                }
                let cmd = if latest { "TLATEST" } else { "TGET" };
                let reply = execute(&svc, &mut conn, vec![bulk(cmd), bulk(&topic)]).await;
                if let Some(why) = error_text(&reply) {
                    ws.send(refuse(format!("{cmd} {topic}: {why}"))).await?;
                    break;
                }
                let message = match reply {
                    // [seq, payload, published_at_ms, next_cursor, skipped]
                    Frame::Array(fields) => match fields.get(1) {
                        Some(Frame::Bulk(p)) => String::from_utf8_lossy(p).into_owned(),
                        _ => String::new(),
                    },
                    _ => String::new(),
                };
                let answer = serde_json::json!({ "message": message }).to_string();
                ws.send(Message::Text(answer.into())).await?;
            }
            Request::Shutdown => {
                if let Some(why) = settle(&mut puts).await {
                    ws.send(refuse(why)).await?;
                    break;
                }
                let allowed = config.allow_shutdown
                    && svc.auth().check(&conn.identity, Access::Admin, "").is_ok();
                if allowed {
                    tracing::info!("dsmq connection {id}: shutdown requested");
                    config.on_shutdown.notify_one();
                } else {
                    // dsmq's client reads no reply to a shutdown: the refusal is logged,
                    // and the connection goes on.
                    tracing::warn!(
                        "dsmq connection {id}: shutdown refused (not allowed for this listener: see [dsmq] allow_shutdown in docs/dsmq.md)"
                    );
                }
            }
        }
    }
    // What the client put before it left is made durable all the same.
    settle(&mut puts).await;
    let _ = ws.close(None).await;
    Ok(())
}

/// Waits for the puts, in order; the first refusal's text, if any.
async fn settle(puts: &mut VecDeque<Durable>) -> Option<String> {
    let mut first = None;
    while let Some(d) = puts.pop_front() {
        let reply = d.await;
        if first.is_none() {
            first = error_text(&reply).map(|e| format!("put refused: {e}"));
        }
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_as_dsmq_sends_them() {
        match parse(r#"{"action": "put", "topic": "t", "message": "hi"}"#) {
            Ok(Request::Put { topic, payload }) => {
                assert_eq!(topic, "t");
                assert_eq!(&payload[..], b"hi");
            }
            _ => panic!("put"),
        }
        match parse(r#"{"action": "put", "topic": "t", "message": {"a": 1}}"#) {
            Ok(Request::Put { payload, .. }) => assert_eq!(&payload[..], br#"{"a":1}"#),
            _ => panic!("put of an object"),
        }
        assert!(matches!(
            parse(r#"{"action": "get_latest", "topic": "t"}"#),
            Ok(Request::Get { latest: true, .. })
        ));
        assert!(matches!(
            parse(r#"{"action": "shutdown", "topic": ""}"#),
            Ok(Request::Shutdown)
        ));
        for bad in [
            "not json",
            r#"{"topic": "t"}"#,
            r#"{"action": "get"}"#,
            r#"{"action": "put", "topic": "t"}"#,
            r#"{"action": "fly", "topic": "t"}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
