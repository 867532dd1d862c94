//! `spool publish`: one message into the agent's outbox, by whichever way is open.
//!
//! The store directory belongs to one process at a time (an exclusive lock). So:
//! - **no agent holds the store**: the message is written straight into the outbox queue
//!   (`spool_mqtt::Outbox::push`, with the configured capacity), durable when this returns;
//!   the next agent start sends it. This works with the agent stopped, which is when a
//!   command-line way in matters most (a boot script, a maintenance job).
//! - **an agent holds it** (the store says "locked"): the message goes through the agent's
//!   local MQTT listener (`listener.bind`) as an ordinary MQTT 5 client would send it; the
//!   agent acknowledges (PUBACK, or PUBREC for QoS 2) only once the message is durable in its
//!   outbox. At QoS 0 nothing is acknowledged, so a QoS 0 publish through the agent is sent
//!   at QoS 1 to the listener (and so forwarded at QoS 1: stronger than asked, never weaker),
//!   which makes "published" mean "durable" whichever way the message went.
//!
//! The store is tried first because "locked" is a definite answer (an agent runs), while a
//! refused connection could be anything. The two can race (an agent starts or dies between
//! the tries): both are tried again until [`PUBLISH_TIMEOUT`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use spool_engine::{Options, Store};
use spool_mqtt::packet::{Ack, Connect, Disconnect, Publish};
use spool_mqtt::{Codec, OutMessage, Outbox, OutboxConfig, OutboxError, Packet, Protocol, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::AgentConfig;

/// How long `spool publish` keeps trying the store and the listener before it gives up.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between tries when the agent is between states (starting, dying).
const RETRY: Duration = Duration::from_millis(100);
/// The largest packet read back from the listener (acks are a few bytes).
const MAX_REPLY_BYTES: usize = 64 << 10;

/// User property naming a message's priority (0..=255) on the local listener.
pub use spool_mqtt::ingress::PRIORITY_PROPERTY;

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Request {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub priority: u8,
    pub ttl: Option<Duration>,
}

/// Where the message went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// Written into the outbox of the store in `dir` (no agent ran); `seq` is its sequence
    /// number there.
    Stored { dir: PathBuf, seq: u64 },
    /// Acknowledged by the running agent's listener at `addr` (durable in its outbox).
    ViaAgent { addr: SocketAddr },
}

/// Why the message could not be published.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The outbox refused it (full, too large, bad topic) or the store failed.
    #[error("{0}")]
    Outbox(#[from] OutboxError),
    /// The store cannot be opened (other than locked).
    #[error("cannot open the store in {dir}: {source}")]
    Store {
        dir: PathBuf,
        #[source]
        source: spool_engine::Error,
    },
    /// An agent holds the store and its listener is off.
    #[error("the store {dir} is held by a running agent and its local listener is disabled (listener.enabled = false): enable the listener, or stop the agent to write into the store directly")]
    ListenerDisabled {
        dir: PathBuf,
        #[source]
        source: spool_engine::Error,
    },
    /// Neither way worked within the time allowed.
    #[error("no way in within {}s: the store {dir} is held by another process, and the agent's listener at {addr} {reason}; check that `spool agent` runs with this configuration (listener.bind)", timeout.as_secs())]
    Unreachable {
        dir: PathBuf,
        addr: SocketAddr,
        reason: String,
        timeout: Duration,
    },
    /// The agent refused the message.
    #[error("the agent at {addr} refused the message: {reason}")]
    Refused { addr: SocketAddr, reason: String },
}

/// Publishes `req` per the module's rules.
pub async fn publish(cfg: &AgentConfig, req: &Request) -> Result<Published, PublishError> {
    let dir = cfg.store.dir.clone();
    let deadline = tokio::time::Instant::now() + PUBLISH_TIMEOUT;
    // Straight into the store: always synced (a one-shot command has no later fsync), with
    // the agent's free-space reserve.
    let options = Options {
        min_free_bytes: cfg.store.min_free.bytes(),
        ..Options::default()
    };
    loop {
        let d = dir.clone();
        let o = options.clone();
        let opened = tokio::task::spawn_blocking(move || Store::open(d, o))
            .await
            .map_err(|e| OutboxError::Task(e.to_string()))?;
        let locked = match opened {
            Ok(store) => return store_directly(cfg, store, req).await,
            Err(e @ spool_engine::Error::Locked { .. }) => e,
            Err(source) => return Err(PublishError::Store { dir, source }),
        };
        if !cfg.listener.enabled {
            return Err(PublishError::ListenerDisabled {
                dir,
                source: locked,
            });
        }
        let addr = cfg.listener.bind;
        match via_listener(addr, req).await {
            Ok(()) => return Ok(Published::ViaAgent { addr }),
            Err(Attempt::Refused(reason)) => return Err(PublishError::Refused { addr, reason }),
            Err(Attempt::Retry(reason)) => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(PublishError::Unreachable {
                        dir,
                        addr,
                        reason,
                        timeout: PUBLISH_TIMEOUT,
                    });
                }
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

async fn store_directly(
    cfg: &AgentConfig,
    store: Store,
    req: &Request,
) -> Result<Published, PublishError> {
    let oc = OutboxConfig {
        max_messages: cfg.outbox.max_messages,
        max_bytes: cfg.outbox.max_bytes.0,
        overflow: match cfg.outbox.overflow {
            crate::config::Overflow::Reject => spool_mqtt::Overflow::Reject,
            crate::config::Overflow::EvictLowestPriority => {
                spool_mqtt::Overflow::EvictLowestPriority
            }
        },
        ..OutboxConfig::default()
    };
    let s = store.clone();
    let outbox = tokio::task::spawn_blocking(move || Outbox::open(s, &oc))
        .await
        .map_err(|e| OutboxError::Task(e.to_string()))??;
    let msg = OutMessage {
        topic: req.topic.clone(),
        payload: req.payload.clone(),
        qos: req.qos,
        retain: req.retain,
        priority: req.priority,
        ttl: req.ttl,
    };
    // Stored as the agent's client stores it: under `outbox.expired = "send"` the TTL does
    // not become the engine's (the store would drop the record at its TTL).
    let policy = super::upstream::expired_policy(cfg.outbox.expired);
    let seq = Outbox::push_start_with(&store, outbox.max_payload(), &msg, &[], policy)?.await?;
    drop(outbox);
    let dir = store.dir().to_path_buf();
    // Closing flushes and releases the lock before the command exits (the push was durable
    // already).
    let _ = tokio::task::spawn_blocking(move || store.close()).await;
    Ok(Published::Stored { dir, seq })
}

enum Attempt {
    /// Worth another try (nobody listens, the connection broke).
    Retry(String),
    /// The agent answered no.
    Refused(String),
}

/// One MQTT 5 session with the listener: CONNECT, PUBLISH, the acks of its QoS, DISCONNECT.
async fn via_listener(addr: SocketAddr, req: &Request) -> Result<(), Attempt> {
    let io = |what: &str, e: std::io::Error| Attempt::Retry(format!("{what}: {e}"));
    let mut sock = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
        .await
        .map_err(|_| Attempt::Retry("did not accept a connection within 2s".into()))?
        .map_err(|e| io("cannot be reached", e))?;
    let codec = Codec::new(Protocol::V5, MAX_REPLY_BYTES);
    let mut conn = Conn {
        sock: &mut sock,
        codec: &codec,
        buf: BytesMut::new(),
    };
    conn.send(&Packet::Connect(Connect {
        protocol: Protocol::V5,
        client_id: format!("spool-publish-{}", std::process::id()),
        keep_alive_s: 30,
        clean_start: true,
        session_expiry_s: None,
        receive_maximum: None,
        username: None,
        password: None,
    }))
    .await?;
    match conn.recv().await? {
        Packet::ConnAck(c) if c.reason == 0 => {}
        Packet::ConnAck(c) => {
            return Err(Attempt::Refused(format!(
                "CONNACK reason {:#04x}{}",
                c.reason,
                c.reason_string
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default()
            )))
        }
        p => return Err(Attempt::Retry(format!("answered CONNECT with {p:?}"))),
    }
    // QoS 0 has no acknowledgement: the listener is asked for QoS 1 so that "published"
    // means "durable in the agent's outbox".
    let wire_qos = if req.qos == QoS::AtMostOnce {
        QoS::AtLeastOnce
    } else {
        req.qos
    };
    // Always sent: the command already applied outbox.default_priority.
    let user_properties = vec![(PRIORITY_PROPERTY.to_owned(), req.priority.to_string())];
    let packet_id = 1;
    conn.send(&Packet::Publish(Publish {
        topic: req.topic.clone(),
        payload: req.payload.clone(),
        qos: wire_qos,
        retain: req.retain,
        dup: false,
        packet_id,
        message_expiry_s: req
            .ttl
            .map(|t| u32::try_from(t.as_secs().max(1)).unwrap_or(u32::MAX)),
        user_properties,
    }))
    .await?;
    let refused = |what: &str, a: &Ack| {
        Attempt::Refused(format!(
            "{what} reason {:#04x}{}",
            a.reason,
            a.reason_string
                .as_ref()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default()
        ))
    };
    loop {
        match conn.recv().await? {
            Packet::PubAck(a) if a.packet_id == packet_id => {
                if a.reason >= 0x80 {
                    return Err(refused("PUBACK", &a));
                }
                break;
            }
            Packet::PubRec(a) if a.packet_id == packet_id => {
                if a.reason >= 0x80 {
                    return Err(refused("PUBREC", &a));
                }
                // Durable once PUBREC came; PUBREL/PUBCOMP finish the exchange.
                conn.send(&Packet::PubRel(Ack::success(packet_id))).await?;
            }
            Packet::PubComp(a) if a.packet_id == packet_id => break,
            Packet::Disconnect(d) => {
                return Err(Attempt::Refused(format!(
                    "DISCONNECT reason {:#04x}{}",
                    d.reason,
                    d.reason_string
                        .map(|s| format!(" ({s})"))
                        .unwrap_or_default()
                )))
            }
            _ => {}
        }
    }
    let _ = conn.send(&Packet::Disconnect(Disconnect::default())).await;
    Ok(())
}

struct Conn<'a> {
    sock: &'a mut TcpStream,
    codec: &'a Codec,
    buf: BytesMut,
}

impl Conn<'_> {
    async fn send(&mut self, p: &Packet) -> Result<(), Attempt> {
        let mut out = BytesMut::new();
        self.codec
            .encode(p, &mut out)
            .map_err(|e| Attempt::Refused(format!("cannot encode the message: {e}")))?;
        self.sock
            .write_all(&out)
            .await
            .map_err(|e| Attempt::Retry(format!("write failed: {e}")))
    }

    async fn recv(&mut self) -> Result<Packet, Attempt> {
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(p)) => return Ok(p),
                Ok(None) => {}
                Err(e) => return Err(Attempt::Retry(format!("sent a bad packet: {e}"))),
            }
            let n = tokio::time::timeout(PUBLISH_TIMEOUT, self.sock.read_buf(&mut self.buf))
                .await
                .map_err(|_| Attempt::Retry("did not answer within the time allowed".into()))?
                .map_err(|e| Attempt::Retry(format!("read failed: {e}")))?;
            if n == 0 {
                return Err(Attempt::Retry("closed the connection".into()));
            }
        }
    }
}
