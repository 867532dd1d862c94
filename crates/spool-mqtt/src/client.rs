//! The MQTT client: a thin tokio event loop over the IO-free [`Session`] and the durable
//! [`Outbox`].
//!
//! One task owns the connection, the session and the outbox (the split rumqttc uses; the
//! contract it follows is `docs/mqtt.md`, "How the event loop drives it"). The [`Client`]
//! handle talks to it through a channel, except [`Client::publish`], which writes the record to
//! the store itself (durable when it returns) and only wakes the task.
//!
//! Invariants:
//! - **No packet that follows a `Qos2Progress` action reaches the socket before that progress
//!   is durable.** The loop encodes a batch of actions into one buffer, submits every progress
//!   record of the batch (one group commit), awaits them, and only then writes the buffer.
//! - **A record is removed from the store only after the packet that delivered it was read**
//!   (PUBACK/PUBCOMP), or, for QoS 0, after its PUBLISH was written.
//! - **An incoming QoS 1/2 message is acknowledged only after every subscriber it was given to
//!   called [`Delivery::ack`]** (the agent acks once it stored the message in its inbox).
//! - **No executor thread blocks on a disk sync**: the store is reached through its
//!   future-returning calls, or `spawn_blocking`.
//! - Nothing in here panics on network, file or configuration input: errors are typed, logged
//!   with `tracing`, counted in [`ClientStats`] and sent as [`Event`]s, and the connection is
//!   retried per the [`Backoff`].

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use spool_engine::{Durability, Options, Overflow, Store};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::backoff::{Backoff, BACKOFF_MAX_DEFAULT, BACKOFF_MIN_DEFAULT};
use crate::outbox::{self, OutMessage, Outbox, OutboxConfig, OutboxError, OutboxStats};
use crate::packet::{Codec, Packet, Protocol, QoS, SubscribeFilter};
use crate::session::{
    AckRoundTrips, Action, ConfigError, ConnectionState, Error as SessionError, ExpiredPolicy,
    InboundToken, OfferError, OutRecord, Session, SessionConfig, SubscribeError,
    INCOMING_PACKET_BYTES_DEFAULT,
};
use crate::topic::{topic_matches, validate_topic_filter};

/// A connection that stayed up this long resets the backoff: the next loss reconnects quickly.
pub const STABLE_CONNECTION: Duration = Duration::from_secs(10);

/// Events kept for a slow [`Client::events`] receiver before it starts missing some.
const EVENT_CAPACITY: usize = 256;
/// How long a record the broker turned away with "quota exceeded" (PUBACK/PUBREC 0x97) waits
/// in the outbox before it is offered again.
pub const DEFER_PAUSE: Duration = Duration::from_secs(1);

/// Bytes read from the socket at once (grows for a larger packet).
const READ_BUFFER_BYTES: usize = 16 << 10;

/// The most free window slots the loop waits for before leasing more records (a lease is a
/// durable commit; batching them keeps it off the per-message path).
const REFILL_MAX: usize = 64;

/// Stale QoS 2 progress records gathered before they are deleted in one go.
const TIDY_BATCH: usize = 64;

/// How long a write may take when keep alive is off (with keep alive, keep alive plus the
/// ping timeout: the link is dead by then anyway).
const WRITE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Configuration

/// TLS towards the broker (rustls). The CA file is required: there is no built-in root store
/// on purpose (an edge device trusts the CA of its broker, not the whole web PKI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM file with the CA certificate(s) that sign the broker's certificate.
    pub ca_file: PathBuf,
    /// PEM certificate chain and PKCS#8/PKCS#1/SEC1 key for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Name checked against the broker's certificate and sent as SNI; default: the host of
    /// the broker address.
    pub server_name: Option<String>,
}

impl TlsConfig {
    /// TLS trusting the CA certificates in `ca_file`.
    pub fn new(ca_file: impl Into<PathBuf>) -> TlsConfig {
        TlsConfig {
            ca_file: ca_file.into(),
            client_cert: None,
            server_name: None,
        }
    }

    /// Mutual TLS with this certificate chain and key.
    #[must_use]
    pub fn client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> TlsConfig {
        self.client_cert = Some((cert.into(), key.into()));
        self
    }

    /// The server name to check and send as SNI.
    #[must_use]
    pub fn server_name(mut self, name: impl Into<String>) -> TlsConfig {
        self.server_name = Some(name.into());
        self
    }
}

/// Everything the client needs; build it with [`Client::builder`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Broker host name or IP address.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Store directory (the outbox lives there; one client per directory).
    pub store_dir: PathBuf,
    /// When the store counts a write as done, and so what [`Client::publish`] returning
    /// means. Default [`Durability::Sync`]: after `fdatasync`, a published record survives a
    /// power cut. With [`Durability::Interval`] or [`Durability::None`] it returns once the
    /// record is written to the file: it survives a crash of the process, but a power cut
    /// (or a kernel crash) can lose what was published in the last interval (with `None`,
    /// everything since the last segment was sealed).
    pub durability: Durability,
    /// Free space the store keeps on its file system for acks and checkpoints: a publish that
    /// would leave less fails with a clear error ([`spool_engine::Error::DiskFull`] inside
    /// [`OutboxError::Store`]) and nothing is written, so a full disk never stops the outbox
    /// from draining. 0 turns the check off. Default
    /// [`spool_engine::options::MIN_FREE_BYTES_DEFAULT`] (16 MiB).
    pub min_free_bytes: u64,
    /// The session's settings: protocol, client id, keep alive, clean start, credentials,
    /// session expiry, window, what happens to expired records (see [`SessionConfig`] for the
    /// defaults).
    pub session: SessionConfig,
    /// Shortest wait before a reconnect. Default [`BACKOFF_MIN_DEFAULT`].
    pub backoff_min: Duration,
    /// Longest wait before a reconnect. Default [`BACKOFF_MAX_DEFAULT`].
    pub backoff_max: Duration,
    /// Reconnect at once (no backoff) after the broker closed the connection with a
    /// DISCONNECT (a clean close: a broker restarting, a session taken over). Default off:
    /// a broker that disconnects on purpose is not hammered.
    pub reconnect_immediately_on_server_disconnect: bool,
    /// TLS; `None` is plain TCP.
    pub tls: Option<TlsConfig>,
    /// Capacity of the outbox.
    pub outbox: OutboxConfig,
}

/// Builds a [`Client`]; every setter has a documented default.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    config: ClientConfig,
    broker: String,
}

impl ClientBuilder {
    /// MQTT 3.1.1 or 5. Default 5.
    #[must_use]
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.config.session.protocol = protocol;
        self
    }

    /// Keep alive (zero turns it off, and with it half-open detection).
    #[must_use]
    pub fn keep_alive(mut self, keep_alive: Duration) -> Self {
        self.config.session.keep_alive = keep_alive;
        self
    }

    /// How long to wait for any packet after a PINGREQ before the link is declared dead.
    #[must_use]
    pub fn ping_timeout(mut self, timeout: Duration) -> Self {
        self.config.session.ping_timeout = timeout;
        self
    }

    /// How long the TCP connect, the TLS handshake and the CONNACK may each take.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.session.connect_timeout = timeout;
        self
    }

    /// User name and password.
    #[must_use]
    pub fn credentials(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.config.session.username = Some(username.into());
        self.config.session.password = Some(password.into());
        self
    }

    /// MQTT 5 session expiry: how long the broker keeps our session after a disconnect (not
    /// used with [`ClientBuilder::clean_start`]).
    #[must_use]
    pub fn session_expiry(mut self, expiry: Duration) -> Self {
        self.config.session.session_expiry_s = u32::try_from(expiry.as_secs()).unwrap_or(u32::MAX);
        self
    }

    /// Start a new broker session at every connect instead of resuming the kept one. Default
    /// off. See [`SessionConfig::clean_start`] for what it costs (QoS 2 in flight is sent
    /// again, subscriptions and what the broker queued for us are forgotten at each
    /// disconnect); nothing in the outbox is lost.
    #[must_use]
    pub fn clean_start(mut self, on: bool) -> Self {
        self.config.session.clean_start = on;
        self
    }

    /// What happens to a record whose TTL passed before it was written: dropped and counted
    /// ([`ExpiredPolicy::Drop`], the default) or sent late ([`ExpiredPolicy::Send`]).
    #[must_use]
    pub fn expired(mut self, policy: ExpiredPolicy) -> Self {
        self.config.session.expired = policy;
        self
    }

    /// When a publish counts as durable (the store's [`Durability`]). Default
    /// [`Durability::Sync`]; see [`ClientConfig::durability`] for what the others risk.
    #[must_use]
    pub fn durability(mut self, durability: Durability) -> Self {
        self.config.durability = durability;
        self
    }

    /// Free space kept for acks and checkpoints (see [`ClientConfig::min_free_bytes`]).
    #[must_use]
    pub fn min_free_bytes(mut self, bytes: u64) -> Self {
        self.config.min_free_bytes = bytes;
        self
    }

    /// How many QoS 1/2 records may be in flight at once.
    #[must_use]
    pub fn window(mut self, window: u16) -> Self {
        self.config.session.window = window;
        self
    }

    /// The in-flight limit assumed of an MQTT 3.1.1 broker (which cannot announce one).
    /// Default [`crate::session::V311_RECEIVE_MAXIMUM`], Mosquitto's default; raise it only
    /// for a broker configured to take more.
    #[must_use]
    pub fn v311_receive_maximum(mut self, n: u16) -> Self {
        self.config.session.v311_receive_maximum = n;
        self
    }

    /// Reconnect backoff bounds (full jitter between them).
    #[must_use]
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.config.backoff_min = min;
        self.config.backoff_max = max;
        self
    }

    /// Reconnect at once after a broker's DISCONNECT.
    #[must_use]
    pub fn reconnect_immediately_on_server_disconnect(mut self, on: bool) -> Self {
        self.config.reconnect_immediately_on_server_disconnect = on;
        self
    }

    /// TLS (rustls).
    #[must_use]
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.config.tls = Some(tls);
        self
    }

    /// Outbox capacity: most messages and bytes (0 = unbounded), and what happens at
    /// capacity.
    #[must_use]
    pub fn capacity(mut self, max_messages: u64, max_bytes: u64, overflow: Overflow) -> Self {
        self.config.outbox.max_messages = max_messages;
        self.config.outbox.max_bytes = max_bytes;
        self.config.outbox.overflow = overflow;
        self
    }

    /// The outbox configuration as a whole.
    #[must_use]
    pub fn outbox(mut self, outbox: OutboxConfig) -> Self {
        self.config.outbox = outbox;
        self
    }

    /// The resulting configuration (the broker address is checked here).
    pub fn config(mut self) -> Result<ClientConfig, ClientError> {
        let (host, port) = parse_addr(&self.broker)?;
        self.config.host = host;
        self.config.port = port;
        Ok(self.config)
    }

    /// Opens the store, recovers what a previous process left in flight, and starts the
    /// event loop (which connects at once). Must be called within a tokio runtime.
    pub async fn start(self) -> Result<Client, ClientError> {
        Client::start(self.config()?).await
    }
}

fn parse_addr(addr: &str) -> Result<(String, u16), ClientError> {
    let bad =
        |why: &str| ClientError::Config(format!("broker address {addr:?}: {why}; use host:port"));
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port: u16 = port.parse().map_err(|_| bad("bad port"))?;
    if port == 0 {
        return Err(bad("port 0"));
    }
    Ok((host.to_string(), port))
}

// ---------------------------------------------------------------------------------------------
// Errors, events, stats

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A bad setting.
    #[error("bad client config: {0}")]
    Config(String),
    /// A bad session setting.
    #[error("bad client config: {0}")]
    Session(#[from] ConfigError),
    /// A TLS file cannot be used.
    #[error("TLS setup: {path}: {reason}")]
    TlsFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The TLS configuration is refused by rustls.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The outbox refused the record or failed (full, payload too large, bad topic, store).
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// A bad subscription.
    #[error(transparent)]
    Subscribe(#[from] SubscribeError),
    /// The client was shut down or disconnected, or its event loop ended.
    #[error(
        "the client is closed (shutdown, disconnect, or its event loop ended); start a new one"
    )]
    Closed,
}

/// Why a connection could not be made or was lost. Cloneable: it goes to every [`Event`]
/// receiver and into [`ClientStats::last_error`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The broker's address does not resolve.
    #[error("cannot resolve {addr}: {reason}")]
    Resolve {
        /// host:port.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The TCP connection failed (refused, unreachable...).
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// host:port.
        addr: String,
        /// The I/O error kind.
        kind: io::ErrorKind,
        /// Why.
        reason: String,
    },
    /// A step took too long.
    #[error("{what} took longer than {timeout_ms} ms")]
    Timeout {
        /// Which step.
        what: &'static str,
        /// The limit.
        timeout_ms: u64,
    },
    /// The TLS handshake failed or the TLS layer reported an error (unknown CA, expired
    /// certificate, name mismatch, a client certificate refused by the broker).
    #[error("TLS with {addr} failed: {reason}; check the CA file, the server name and the client certificate")]
    Tls {
        /// host:port.
        addr: String,
        /// rustls's reason.
        reason: String,
    },
    /// The session closed the connection: CONNACK refusal (bad credentials, not
    /// authorized...), keep alive timeout (half-open link), broker DISCONNECT, protocol error.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The broker closed the TCP connection.
    #[error("the broker closed the connection")]
    Closed,
    /// Reading or writing failed.
    #[error("connection I/O: {reason}")]
    Io {
        /// The I/O error kind.
        kind: io::ErrorKind,
        /// Why.
        reason: String,
    },
    /// The broker sent bytes that are not MQTT.
    #[error("bad packet from the broker: {0}")]
    Codec(String),
    /// The store failed while the connection was up (the connection is closed and retried).
    #[error("outbox store failed: {0}")]
    Store(String),
}

impl ConnectionError {
    /// Whether retrying soon cannot help (bad credentials, not authorized...): such errors
    /// use the slow lane of the backoff.
    pub fn is_configuration_problem(&self) -> bool {
        matches!(self, ConnectionError::Session(SessionError::ConnectRefused { refusal, .. }) if refusal.is_configuration_problem())
    }

    fn from_io(addr: &str, e: &io::Error) -> ConnectionError {
        if let Some(tls) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return ConnectionError::Tls {
                addr: addr.to_string(),
                reason: tls.to_string(),
            };
        }
        if e.kind() == io::ErrorKind::UnexpectedEof {
            return ConnectionError::Closed;
        }
        ConnectionError::Io {
            kind: e.kind(),
            reason: e.to_string(),
        }
    }
}

/// Why a record left the outbox without being delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Its TTL ran out before it was written.
    Expired,
    /// The broker refused it (MQTT 5 reason code); it is in the dead-letter queue.
    Rejected(u8),
}

/// What happened, for whoever listens ([`Client::events`]). Also logged.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// CONNACK accepted.
    Connected {
        /// Whether the broker kept our session.
        session_present: bool,
    },
    /// A connection attempt failed; the next one is in `retry_in`.
    ConnectFailed {
        /// Why.
        error: ConnectionError,
        /// Wait before the next attempt.
        retry_in: Duration,
    },
    /// An established connection was lost; the next attempt is in `retry_in`.
    ConnectionLost {
        /// Why.
        error: ConnectionError,
        /// Wait before the next attempt.
        retry_in: Duration,
    },
    /// SUBACK for a filter: granted QoS or failure reason code.
    Subscribed {
        /// The filter.
        filter: String,
        /// Granted QoS or failure code.
        result: Result<QoS, u8>,
    },
    /// A record was dropped.
    Dropped {
        /// Its sequence number.
        seq: u64,
        /// Why.
        reason: DropReason,
    },
    /// The event loop ended (disconnect, shutdown, or every handle dropped).
    Closed,
}

/// The connection as the client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Waiting before the next attempt.
    Disconnected,
    /// TCP/TLS/CONNECT under way.
    Connecting,
    /// CONNACK accepted.
    Connected,
    /// Disconnected on purpose, shut down, or aborted.
    Closed,
}

/// Records dropped, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounts {
    /// TTL ran out (in the store or in the session).
    pub expired: u64,
    /// Evicted at capacity (evict-lowest-priority).
    pub evicted: u64,
    /// Publishes refused because the outbox was full (reject).
    pub rejected_full: u64,
    /// Refused by the broker (dead-lettered).
    pub rejected_by_broker: u64,
    /// Unreadable records (dead-lettered).
    pub malformed: u64,
}

/// A snapshot of the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientStats {
    /// The connection.
    pub state: LinkState,
    /// Successful connections (CONNACK accepted).
    pub connects: u64,
    /// Connections after the first one.
    pub reconnects: u64,
    /// Failed connection attempts and lost connections.
    pub connection_errors: u64,
    /// The last connection error.
    pub last_error: Option<ConnectionError>,
    /// QoS 1/2 records written and not yet acknowledged.
    pub in_flight: usize,
    /// Records held by the session (in flight or waiting for the window).
    pub held: usize,
    /// Records published through this handle (durable) since start.
    pub published: u64,
    /// Records delivered and removed since start.
    pub acked: u64,
    /// Records written again after they may already have reached subscribers.
    pub possible_duplicates: u64,
    /// Drops by reason.
    pub dropped: DropCounts,
    /// Outbox depth, bytes and engine counters.
    pub outbox: OutboxStats,
    /// Records the broker turned away for now ("quota exceeded") and that were offered again
    /// after [`DEFER_PAUSE`] (not drops: they are still in the outbox), since start.
    pub deferred_by_broker: u64,
    /// Ack round trips of QoS 1 records (PUBLISH written to PUBACK), since start.
    pub ack_qos1: AckRoundTrips,
    /// Ack round trips of QoS 2 records (PUBLISH written to PUBCOMP), since start.
    pub ack_qos2: AckRoundTrips,
}

#[derive(Debug)]
struct Shared {
    state: LinkState,
    connects: u64,
    connection_errors: u64,
    last_error: Option<ConnectionError>,
    in_flight: usize,
    held: usize,
    acked: u64,
    possible_duplicates: u64,
    session_expired: u64,
    rejected_by_broker: u64,
    deferred_by_broker: u64,
    malformed: u64,
    counters: outbox::OutboxCounters,
    ack_qos1: AckRoundTrips,
    ack_qos2: AckRoundTrips,
}

// ---------------------------------------------------------------------------------------------
// Subscriptions

/// An incoming application message given to a subscriber.
pub struct Delivery {
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS it arrived with.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
    /// MQTT 5 user properties.
    pub user_properties: Vec<(String, String)>,
    ack: Option<Arc<AckShared>>,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("topic", &self.topic)
            .field("qos", &self.qos)
            .field("payload_len", &self.payload.len())
            .finish_non_exhaustive()
    }
}

struct AckShared {
    remaining: AtomicUsize,
    token: InboundToken,
    cmd: mpsc::UnboundedSender<Command>,
}

impl Delivery {
    /// Tells the client the message is handled (stored): once every subscriber it was given
    /// to acked it, the PUBACK/PUBREC goes to the broker. A QoS 1/2 delivery dropped without
    /// `ack` is never acknowledged on this connection: the broker sends it again after the
    /// next reconnect (and later acks wait behind it, as MQTT requires acks in order).
    pub fn ack(mut self) {
        if let Some(shared) = self.ack.take() {
            if shared.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                let _ = shared.cmd.send(Command::Ack(shared.token));
            }
        }
    }

    /// Whether the broker waits for [`Delivery::ack`] (QoS 1/2).
    pub fn needs_ack(&self) -> bool {
        self.ack.is_some()
    }
}

/// The receiving end of a subscription ([`Client::subscribe`]).
#[derive(Debug)]
pub struct Subscription {
    filter: String,
    rx: mpsc::UnboundedReceiver<Delivery>,
}

impl Subscription {
    /// The next message; `None` once the client is closed.
    pub async fn recv(&mut self) -> Option<Delivery> {
        self.rx.recv().await
    }

    /// A message that already arrived, without waiting.
    pub fn try_recv(&mut self) -> Option<Delivery> {
        self.rx.try_recv().ok()
    }

    /// The filter.
    pub fn filter(&self) -> &str {
        &self.filter
    }
}

// ---------------------------------------------------------------------------------------------
// The handle

enum Command {
    Subscribe {
        filter: SubscribeFilter,
        sink: mpsc::UnboundedSender<Delivery>,
        reply: oneshot::Sender<Result<(), SubscribeError>>,
    },
    Unsubscribe {
        filter: String,
        reply: oneshot::Sender<Result<(), SubscribeError>>,
    },
    Ack(InboundToken),
    Disconnect {
        reply: oneshot::Sender<()>,
    },
    Shutdown {
        deadline: Instant,
        reply: oneshot::Sender<bool>,
    },
    Abort {
        reply: oneshot::Sender<()>,
    },
}

struct Inner {
    store: Store,
    max_payload: usize,
    expired: ExpiredPolicy,
    cmd: mpsc::UnboundedSender<Command>,
    wake: Arc<Notify>,
    shared: Arc<Mutex<Shared>>,
    events: broadcast::Sender<Event>,
    accepting: AtomicBool,
    published: AtomicU64,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// A store-and-forward MQTT client. Cheap to clone; the event loop ends when the last handle
/// is dropped (like a process exit: nothing is lost, the outbox is durable), or at
/// [`Client::disconnect`] / [`Client::shutdown`].
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("store", &self.inner.store.dir())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Client {
    /// A builder: `broker` is `host:port`; MQTT 5, clean start off, durability sync, expired
    /// records dropped, the documented defaults.
    pub fn builder(
        broker: impl Into<String>,
        client_id: impl Into<String>,
        store_dir: impl AsRef<Path>,
    ) -> ClientBuilder {
        ClientBuilder {
            broker: broker.into(),
            config: ClientConfig {
                host: String::new(),
                port: 0,
                store_dir: store_dir.as_ref().to_path_buf(),
                durability: Durability::Sync,
                min_free_bytes: spool_engine::options::MIN_FREE_BYTES_DEFAULT,
                session: SessionConfig::new(Protocol::V5, client_id),
                backoff_min: BACKOFF_MIN_DEFAULT,
                backoff_max: BACKOFF_MAX_DEFAULT,
                reconnect_immediately_on_server_disconnect: false,
                tls: None,
                outbox: OutboxConfig::default(),
            },
        }
    }

    /// Starts a client from a whole configuration (see [`ClientBuilder::start`]).
    pub async fn start(config: ClientConfig) -> Result<Client, ClientError> {
        if config.host.is_empty() || config.port == 0 {
            return Err(ClientError::Config(
                "the broker address is missing: set host and port".into(),
            ));
        }
        // Validates the session settings before anything is opened.
        Session::new(config.session.clone())?;
        let tls = match &config.tls {
            Some(t) => Some(tls_connector(t, &config.host)?),
            None => None,
        };
        let dir = config.store_dir.clone();
        let options = Options {
            durability: config.durability,
            min_free_bytes: config.min_free_bytes,
            ..Options::default()
        };
        let store = tokio::task::spawn_blocking(move || Store::open(dir, options))
            .await
            .map_err(|e| ClientError::Config(format!("opening the store: {e}")))?
            .map_err(|e| ClientError::Outbox(OutboxError::Store(e)))?;
        let outbox_config = config.outbox.clone();
        let session_config = config.session.clone();
        let store2 = store.clone();
        let (outbox, session) = tokio::task::spawn_blocking(move || {
            let mut outbox = Outbox::open(store2, &outbox_config)?;
            let recovered = outbox.recover(std::time::Instant::now())?;
            let restored = recovered.inflight.len();
            let session = Session::restore(session_config, recovered.inflight)
                .map_err(|e| ClientError::Config(format!("restoring QoS 2 progress: {e}")))?;
            if restored > 0 {
                tracing::info!(restored, "QoS 2 transactions restored from the outbox");
            }
            Ok::<_, ClientError>((outbox, session))
        })
        .await
        .map_err(|e| ClientError::Config(format!("recovering the outbox: {e}")))??;

        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let wake = Arc::new(Notify::new());
        let shared = Arc::new(Mutex::new(Shared {
            state: LinkState::Disconnected,
            connects: 0,
            connection_errors: 0,
            last_error: None,
            in_flight: 0,
            held: 0,
            acked: 0,
            possible_duplicates: 0,
            session_expired: 0,
            rejected_by_broker: 0,
            deferred_by_broker: 0,
            malformed: 0,
            counters: outbox::OutboxCounters::default(),
            ack_qos1: AckRoundTrips::default(),
            ack_qos2: AckRoundTrips::default(),
        }));
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let max_payload = outbox.max_payload();
        let expired = config.session.expired;
        let backoff = Backoff::new(config.backoff_min, config.backoff_max);
        let ev = EventLoop {
            addr: format!("{}:{}", config.host, config.port),
            codec: Codec::new(config.session.protocol, INCOMING_PACKET_BYTES_DEFAULT),
            config,
            tls,
            session,
            outbox,
            cmd_rx,
            cmd_tx: cmd_tx.downgrade(),
            wake: wake.clone(),
            shared: shared.clone(),
            events: events.clone(),
            backoff,
            rng: jitter_rng(),
            subs: Vec::new(),
            backlog: VecDeque::new(),
            shutdown: None,
            closed: false,
            ever_connected: false,
            retry_at: None,
        };
        let task = tokio::spawn(ev.run());
        Ok(Client {
            inner: Arc::new(Inner {
                store,
                max_payload,
                expired,
                cmd: cmd_tx,
                wake,
                shared,
                events,
                accepting: AtomicBool::new(true),
                published: AtomicU64::new(0),
                task: Mutex::new(Some(task)),
            }),
        })
    }

    /// Stores a message durably for the broker and returns its sequence number once it is
    /// durable (the engine's group commit; no executor thread waits on the disk): on disk
    /// with the default [`Durability::Sync`], only written to the file with the others (see
    /// [`ClientConfig::durability`]). Fails with
    /// [`OutboxError::Full`] at capacity under reject, [`OutboxError::PayloadTooLarge`],
    /// [`OutboxError::Topic`] for a bad topic name.
    pub async fn publish(
        &self,
        topic: impl Into<String>,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
        priority: u8,
        ttl: Option<Duration>,
    ) -> Result<u64, ClientError> {
        self.publish_message(OutMessage {
            topic: topic.into(),
            payload: payload.into(),
            qos,
            retain,
            priority,
            ttl,
        })
        .await
    }

    /// [`Client::publish`] with the message as one value.
    pub async fn publish_message(&self, msg: OutMessage) -> Result<u64, ClientError> {
        self.publish_with_properties(msg, &[]).await
    }

    /// [`Client::publish_message`] with MQTT 5 user properties, sent with the message on an
    /// MQTT 5 connection (MQTT 3.1.1 has none: they are dropped there).
    pub async fn publish_with_properties(
        &self,
        msg: OutMessage,
        user_properties: &[(String, String)],
    ) -> Result<u64, ClientError> {
        self.publish_start(&msg, user_properties)?.await
    }

    /// Enters `msg` in the outbox now and returns a future that resolves to its sequence
    /// number once it is durable. The order of the outbox is the order of these calls, not
    /// of the awaits: a caller may start several publishes one after the other and await
    /// them together (they share one group commit). Refusals known at once (outbox full
    /// under reject, payload too large, bad topic, closed client) are returned here.
    pub fn publish_start(
        &self,
        msg: &OutMessage,
        user_properties: &[(String, String)],
    ) -> Result<impl Future<Output = Result<u64, ClientError>> + Send + 'static, ClientError> {
        if !self.inner.accepting.load(Ordering::Acquire) {
            return Err(ClientError::Closed);
        }
        let durable = Outbox::push_start_with(
            &self.inner.store,
            self.inner.max_payload,
            msg,
            user_properties,
            self.inner.expired,
        )?;
        let inner = Arc::clone(&self.inner);
        Ok(async move {
            let seq = durable.await?;
            inner.published.fetch_add(1, Ordering::Relaxed);
            inner.wake.notify_one();
            Ok(seq)
        })
    }

    /// Subscribes to `filter` (`+` and `#` allowed); messages arrive on the returned
    /// [`Subscription`]. The subscription is sent again after every reconnect. Returns once
    /// the event loop has taken it (the SUBACK comes as [`Event::Subscribed`]).
    pub async fn subscribe(
        &self,
        filter: impl Into<String>,
        qos: QoS,
    ) -> Result<Subscription, ClientError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let filter = filter.into();
        self.subscribe_into(filter.clone(), qos, tx).await?;
        Ok(Subscription { filter, rx })
    }

    /// Subscribes with a caller-supplied sink (for example the agent's inbox writer): each
    /// message is sent to `sink`, and acknowledged to the broker once [`Delivery::ack`] was
    /// called.
    pub async fn subscribe_into(
        &self,
        filter: String,
        qos: QoS,
        sink: mpsc::UnboundedSender<Delivery>,
    ) -> Result<(), ClientError> {
        validate_topic_filter(&filter).map_err(SubscribeError::from)?;
        let (reply, rx) = oneshot::channel();
        self.send(Command::Subscribe {
            filter: SubscribeFilter { filter, qos },
            sink,
            reply,
        })?;
        rx.await.map_err(|_| ClientError::Closed)??;
        Ok(())
    }

    /// Subscribes with a handler called for each message on a task of its own; the message
    /// is acknowledged to the broker after the handler returned.
    pub async fn subscribe_with<F>(
        &self,
        filter: impl Into<String>,
        qos: QoS,
        mut handler: F,
    ) -> Result<(), ClientError>
    where
        F: FnMut(&Delivery) + Send + 'static,
    {
        let mut sub = self.subscribe(filter, qos).await?;
        tokio::spawn(async move {
            while let Some(d) = sub.recv().await {
                handler(&d);
                d.ack();
            }
        });
        Ok(())
    }

    /// Unsubscribes from `filter` (every sink of it).
    pub async fn unsubscribe(&self, filter: impl Into<String>) -> Result<(), ClientError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Unsubscribe {
            filter: filter.into(),
            reply,
        })?;
        rx.await.map_err(|_| ClientError::Closed)??;
        Ok(())
    }

    /// A snapshot of the connection, the outbox and the counters.
    pub fn stats(&self) -> Result<ClientStats, ClientError> {
        let s = lock(&self.inner.shared);
        let outbox = outbox::stats(&self.inner.store, s.counters)?;
        Ok(ClientStats {
            state: s.state,
            connects: s.connects,
            reconnects: s.connects.saturating_sub(1),
            connection_errors: s.connection_errors,
            last_error: s.last_error.clone(),
            in_flight: s.in_flight,
            held: s.held,
            published: self.inner.published.load(Ordering::Relaxed),
            acked: s.acked,
            possible_duplicates: s.possible_duplicates + s.counters.possible_duplicates,
            dropped: DropCounts {
                expired: s.session_expired + outbox.expired_in_store,
                evicted: outbox.evicted,
                rejected_full: outbox.rejected_full,
                rejected_by_broker: s.rejected_by_broker,
                malformed: s.malformed,
            },
            outbox,
            deferred_by_broker: s.deferred_by_broker,
            ack_qos1: s.ack_qos1,
            ack_qos2: s.ack_qos2,
        })
    }

    /// Events from now on (connection changes, errors, drops, SUBACKs).
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// The store (for inspection; the outbox queues are named in [`crate::outbox`]).
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// A deliberate disconnect: DISCONNECT is sent, the connection closed and never
    /// re-established by this client. Unsent records stay in the store for the next start.
    pub async fn disconnect(&self) {
        self.inner.accepting.store(false, Ordering::Release);
        let (reply, rx) = oneshot::channel();
        if self.send(Command::Disconnect { reply }).is_ok() {
            let _ = rx.await;
        }
        self.join().await;
    }

    /// Graceful stop: refuses new publishes, keeps delivering what the outbox holds until it is
    /// empty and nothing is in flight, or until `deadline` passed; then disconnects. Returns
    /// whether everything was delivered (nothing is lost either way: the outbox is durable).
    pub async fn shutdown(&self, deadline: Duration) -> bool {
        self.inner.accepting.store(false, Ordering::Release);
        let (reply, rx) = oneshot::channel();
        let drained = if self
            .send(Command::Shutdown {
                deadline: after(deadline),
                reply,
            })
            .is_ok()
        {
            rx.await.unwrap_or(false)
        } else {
            false
        };
        self.join().await;
        drained
    }

    /// Stops the event loop at once, as a process exit would at this point: no DISCONNECT, no
    /// waiting for acknowledgements, the socket simply closed. The store is released when
    /// the last handle is dropped. For tests of restarts, and for callers that must stop now.
    pub async fn abort(&self) {
        self.inner.accepting.store(false, Ordering::Release);
        let (reply, rx) = oneshot::channel();
        if self.send(Command::Abort { reply }).is_ok() {
            let _ = rx.await;
        }
        self.join().await;
    }

    fn send(&self, cmd: Command) -> Result<(), ClientError> {
        self.inner.cmd.send(cmd).map_err(|_| ClientError::Closed)
    }

    async fn join(&self) {
        let task = lock(&self.inner.task).take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TLS

fn tls_connector(
    cfg: &TlsConfig,
    host: &str,
) -> Result<(TlsConnector, ServerName<'static>), ClientError> {
    let file_err = |path: &Path, e: &dyn fmt::Display| ClientError::TlsFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs =
        CertificateDer::pem_file_iter(&cfg.ca_file).map_err(|e| file_err(&cfg.ca_file, &e))?;
    for cert in certs {
        let cert = cert.map_err(|e| file_err(&cfg.ca_file, &e))?;
        roots.add(cert).map_err(|e| file_err(&cfg.ca_file, &e))?;
    }
    if roots.is_empty() {
        return Err(file_err(&cfg.ca_file, &"no certificate in the file"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let config = match &cfg.client_cert {
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .map_err(|e| file_err(cert, &e))?
                .collect::<Result<_, _>>()
                .map_err(|e| file_err(cert, &e))?;
            if chain.is_empty() {
                return Err(file_err(cert, &"no certificate in the file"));
            }
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, &e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ClientError::Tls(e.to_string()))?
        }
        None => builder.with_no_client_auth(),
    };
    let name = cfg.server_name.as_deref().unwrap_or(host).to_string();
    let server_name = ServerName::try_from(name.clone())
        .map_err(|e| ClientError::Config(format!("TLS server name {name:?}: {e}")))?;
    Ok((TlsConnector::from(Arc::new(config)), server_name))
}

// ---------------------------------------------------------------------------------------------
// The event loop

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// How a connection ended.
enum End {
    /// Lost: reconnect after a backoff.
    Lost(ConnectionError),
    /// Stop the event loop (disconnect, shutdown, abort, every handle gone).
    Stop,
}

/// What woke the loop.
enum Wake {
    Cmd(Option<Command>),
    Read(io::Result<usize>),
    Tick,
    Outbox,
    Timer,
}

struct EventLoop {
    config: ClientConfig,
    addr: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    codec: Codec,
    session: Session,
    outbox: Outbox,
    cmd_rx: mpsc::UnboundedReceiver<Command>,
    cmd_tx: mpsc::WeakUnboundedSender<Command>,
    wake: Arc<Notify>,
    shared: Arc<Mutex<Shared>>,
    events: broadcast::Sender<Event>,
    backoff: Backoff,
    rng: StdRng,
    subs: Vec<(String, mpsc::UnboundedSender<Delivery>)>,
    /// Leased records the session had no room for (offered first next time).
    backlog: VecDeque<OutRecord>,
    /// Graceful stop under way: its deadline and who waits.
    shutdown: Option<(Instant, oneshot::Sender<bool>)>,
    closed: bool,
    ever_connected: bool,
    /// Records the broker turned away for now ("quota exceeded") are back in the outbox,
    /// visible again from then: lease again at that time.
    retry_at: Option<Instant>,
}

/// What a batch of actions needs done after its packets were encoded.
#[derive(Default)]
struct Batch {
    out: BytesMut,
    progress: Vec<(u64, spool_engine::Committed<Vec<u64>>)>,
    acked: Vec<u64>,
    rejected: Vec<(u64, u8)>,
    expired: Vec<u64>,
    deferred: Vec<u64>,
}

impl EventLoop {
    async fn run(mut self) {
        let mut delay = Duration::ZERO;
        while !self.closed {
            if !delay.is_zero() && !self.wait_offline(delay).await {
                break;
            }
            if self.closed || self.shutdown_due() {
                break;
            }
            self.set_state(LinkState::Connecting);
            let end = match self.open().await {
                Ok(io) => {
                    let since = Instant::now();
                    let end = self.connection(io).await;
                    if since.elapsed() >= STABLE_CONNECTION {
                        self.backoff.reset();
                    }
                    end
                }
                Err(e) => {
                    self.session.connection_lost();
                    End::Lost(e)
                }
            };
            match end {
                End::Stop => break,
                End::Lost(error) => {
                    let was_connected = self.session_was_connected();
                    delay = self.retry_delay(&error);
                    self.report_loss(error, delay, was_connected);
                }
            }
        }
        self.finish().await;
    }

    fn session_was_connected(&mut self) -> bool {
        let mut s = lock(&self.shared);
        let was = s.state == LinkState::Connected;
        s.state = LinkState::Disconnected;
        was
    }

    fn retry_delay(&mut self, error: &ConnectionError) -> Duration {
        retry_delay(
            self.config.reconnect_immediately_on_server_disconnect,
            error,
            &mut self.backoff,
            &mut self.rng,
        )
    }

    fn report_loss(&mut self, error: ConnectionError, retry_in: Duration, was_connected: bool) {
        {
            let mut s = lock(&self.shared);
            s.connection_errors += 1;
            s.last_error = Some(error.clone());
        }
        let retry_ms = retry_in.as_millis() as u64;
        if was_connected {
            tracing::warn!(broker = %self.addr, retry_ms, "connection lost: {error}");
            let _ = self.events.send(Event::ConnectionLost { error, retry_in });
        } else {
            tracing::warn!(broker = %self.addr, retry_ms, "cannot connect: {error}");
            let _ = self.events.send(Event::ConnectFailed { error, retry_in });
        }
    }

    fn set_state(&self, state: LinkState) {
        lock(&self.shared).state = state;
    }

    fn shutdown_due(&self) -> bool {
        self.shutdown
            .as_ref()
            .is_some_and(|(d, _)| Instant::now() >= *d)
    }

    /// Whether a graceful stop has nothing left to deliver.
    fn drained(&self) -> bool {
        self.session.held() == 0
            && self.backlog.is_empty()
            && !self.outbox.maybe_more()
            && self.retry_at.is_none()
    }

    async fn finish(&mut self) {
        if !self.closed {
            self.session.disconnect(Instant::now().into_std());
        }
        if let Err(e) = self.outbox.finish_tidy().await {
            tracing::warn!("deleting stale QoS 2 progress records: {e}");
        }
        let drained = self.drained();
        if let Some((_, reply)) = self.shutdown.take() {
            let _ = reply.send(drained);
        }
        self.set_state(LinkState::Closed);
        self.publish_stats();
        let _ = self.events.send(Event::Closed);
        tracing::info!(broker = %self.addr, "client closed");
    }

    /// Waits `delay` before the next attempt while serving commands and filling the session.
    /// False: stop the loop.
    async fn wait_offline(&mut self, delay: Duration) -> bool {
        let until = after(delay);
        loop {
            // In bulk mode records wait in the store while the link is down, so that the next
            // connection leases the whole backlog at once and packs it (a lease per publish
            // would hand the session one record at a time).
            let filled = if self.outbox.bulk() {
                self.outbox
                    .check_waiting()
                    .map_err(|e| ConnectionError::Store(e.to_string()))
            } else {
                self.fill().await
            };
            if let Err(e) = filled {
                tracing::warn!("outbox: {e}");
            }
            let mut wake_at = until;
            if let Some(d) = self.session.next_deadline() {
                wake_at = wake_at.min(Instant::from_std(d));
            }
            if let Some((d, _)) = &self.shutdown {
                wake_at = wake_at.min(*d);
            }
            let w = tokio::select! {
                c = self.cmd_rx.recv() => Wake::Cmd(c),
                () = self.wake.notified() => Wake::Outbox,
                () = tokio::time::sleep_until(wake_at) => Wake::Timer,
            };
            match w {
                Wake::Cmd(None) => return false,
                Wake::Cmd(Some(cmd)) => {
                    let mut batch = Batch::default();
                    let stop = self.command(cmd, &mut batch);
                    // Offline: nothing is written.
                    batch.out.clear();
                    if let Err(e) = self.settle(&mut batch).await {
                        tracing::warn!("outbox: {e}");
                    }
                    if stop || (self.shutdown.is_some() && self.drained()) {
                        return false;
                    }
                }
                Wake::Outbox => self.outbox.more(),
                Wake::Timer | Wake::Tick | Wake::Read(_) => {
                    let now = Instant::now();
                    if let Ok(actions) = self.session.handle_tick(now.into_std()) {
                        let mut batch = Batch::default();
                        self.actions(actions, &mut batch);
                        if let Err(e) = self.settle(&mut batch).await {
                            tracing::warn!("outbox: {e}");
                        }
                    }
                    if self.shutdown_due() {
                        return false;
                    }
                    if now >= until {
                        return true;
                    }
                }
            }
        }
    }

    /// TCP connect and TLS handshake, bounded by the connect timeout.
    async fn open(&mut self) -> Result<Box<dyn Io>, ConnectionError> {
        let timeout = self.config.session.connect_timeout;
        let timeout_ms = timeout.as_millis() as u64;
        let addr = self.addr.clone();
        let tcp = tokio::time::timeout(
            timeout,
            TcpStream::connect((self.config.host.as_str(), self.config.port)),
        )
        .await
        .map_err(|_| ConnectionError::Timeout {
            what: "TCP connect",
            timeout_ms,
        })?
        .map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound || e.kind() == io::ErrorKind::InvalidInput {
                ConnectionError::Resolve {
                    addr: addr.clone(),
                    reason: e.to_string(),
                }
            } else {
                ConnectionError::Connect {
                    addr: addr.clone(),
                    kind: e.kind(),
                    reason: e.to_string(),
                }
            }
        })?;
        let _ = tcp.set_nodelay(true);
        let Some((connector, name)) = &self.tls else {
            return Ok(Box::new(tcp));
        };
        let tls = tokio::time::timeout(timeout, connector.connect(name.clone(), tcp))
            .await
            .map_err(|_| ConnectionError::Timeout {
                what: "TLS handshake",
                timeout_ms,
            })?
            .map_err(|e| match ConnectionError::from_io(&addr, &e) {
                ConnectionError::Tls { .. } | ConnectionError::Timeout { .. } => {
                    ConnectionError::from_io(&addr, &e)
                }
                other => ConnectionError::Tls {
                    addr: addr.clone(),
                    reason: other.to_string(),
                },
            })?;
        Ok(Box::new(tls))
    }

    fn write_timeout(&self) -> Duration {
        let ka = self.session.config().keep_alive;
        if ka.is_zero() {
            WRITE_TIMEOUT_DEFAULT
        } else {
            ka + self.session.config().ping_timeout
        }
    }

    /// Drives one connection until it ends, then settles what the session decided on it
    /// (records acked by packets read just before a write failed are still removed).
    async fn connection(&mut self, io: Box<dyn Io>) -> End {
        let mut batch = Batch::default();
        let end = self.connection_inner(io, &mut batch).await;
        batch.out.clear();
        if let Err(e) = self.settle(&mut batch).await {
            tracing::error!("outbox: {e}");
        }
        end
    }

    async fn connection_inner(&mut self, io: Box<dyn Io>, batch: &mut Batch) -> End {
        let (mut rd, mut wr) = tokio::io::split(io);
        let mut rbuf = BytesMut::with_capacity(READ_BUFFER_BYTES);
        let connect = self.session.connect(Instant::now().into_std());
        if let Err(e) = self.codec.encode(&connect, &mut batch.out) {
            return self.lost(ConnectionError::Codec(e.to_string()));
        }
        if let Err(e) = self.flush(&mut wr, batch).await {
            return self.lost(e);
        }
        loop {
            // Give the session what it has room for, and write what that produced.
            if let Err(e) = self.fill_into(batch).await {
                return self.lost(e);
            }
            if let Err(e) = self.flush(&mut wr, batch).await {
                return self.lost(e);
            }
            if let Some((_, _)) = &self.shutdown {
                if self.drained() && self.session.state() == ConnectionState::Connected {
                    return self.close(&mut wr).await;
                }
                if self.shutdown_due() {
                    return self.close(&mut wr).await;
                }
            }
            let deadline = self.session.next_deadline().map(Instant::from_std);
            let shutdown_at = self.shutdown.as_ref().map(|(d, _)| *d);
            let w = tokio::select! {
                c = self.cmd_rx.recv() => Wake::Cmd(c),
                r = rd.read_buf(&mut rbuf) => Wake::Read(r),
                () = sleep_opt(deadline) => Wake::Tick,
                () = self.wake.notified() => Wake::Outbox,
                () = sleep_opt(shutdown_at) => Wake::Timer,
                () = sleep_opt(self.retry_at) => Wake::Timer,
            };
            match w {
                Wake::Cmd(None) => return self.abort_now(),
                Wake::Cmd(Some(cmd)) => {
                    if let Command::Disconnect { reply } = cmd {
                        let end = self.close(&mut wr).await;
                        let _ = reply.send(());
                        return end;
                    }
                    if let Command::Abort { reply } = cmd {
                        let _ = reply.send(());
                        return self.abort_now();
                    }
                    self.command(cmd, batch);
                }
                Wake::Read(Ok(0)) => return self.lost(ConnectionError::Closed),
                Wake::Read(Ok(_)) => loop {
                    match self.codec.decode(&mut rbuf) {
                        Ok(Some(packet)) => {
                            match self
                                .session
                                .handle_incoming(packet, Instant::now().into_std())
                            {
                                Ok(actions) => self.actions(actions, batch),
                                Err(e) => return self.lost(ConnectionError::Session(e)),
                            }
                        }
                        Ok(None) => break,
                        Err(e) => return self.lost(ConnectionError::Codec(e.to_string())),
                    }
                },
                Wake::Read(Err(e)) => {
                    return self.lost(ConnectionError::from_io(&self.addr, &e));
                }
                Wake::Tick => match self.session.handle_tick(Instant::now().into_std()) {
                    Ok(actions) => self.actions(actions, batch),
                    Err(e) => return self.lost(ConnectionError::Session(e)),
                },
                Wake::Outbox => self.outbox.more(),
                Wake::Timer => {}
            }
        }
    }

    fn lost(&mut self, error: ConnectionError) -> End {
        self.session.connection_lost();
        self.publish_stats();
        End::Lost(error)
    }

    fn abort_now(&mut self) -> End {
        self.session.connection_lost();
        self.closed = true;
        End::Stop
    }

    /// A deliberate close: DISCONNECT, then stop.
    async fn close(&mut self, wr: &mut tokio::io::WriteHalf<Box<dyn Io>>) -> End {
        let actions = self.session.disconnect(Instant::now().into_std());
        let mut batch = Batch::default();
        self.actions(actions, &mut batch);
        let _ = self.flush(wr, &mut batch).await;
        let _ = wr.shutdown().await;
        self.closed = true;
        tracing::info!(broker = %self.addr, "disconnected on request");
        End::Stop
    }

    /// Handles a command. True: stop the loop.
    fn command(&mut self, cmd: Command, batch: &mut Batch) -> bool {
        let now = Instant::now().into_std();
        match cmd {
            Command::Subscribe {
                filter,
                sink,
                reply,
            } => {
                let name = filter.filter.clone();
                match self.session.subscribe(vec![filter], now) {
                    Ok(actions) => {
                        self.subs.push((name, sink));
                        self.actions(actions, batch);
                        let _ = reply.send(Ok(()));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::Unsubscribe { filter, reply } => {
                match self.session.unsubscribe(vec![filter.clone()], now) {
                    Ok(actions) => {
                        self.subs.retain(|(f, _)| *f != filter);
                        self.actions(actions, batch);
                        let _ = reply.send(Ok(()));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::Ack(token) => {
                let actions = self.session.ack_incoming(token, now);
                self.actions(actions, batch);
            }
            Command::Disconnect { reply } => {
                self.session.disconnect(now);
                self.closed = true;
                let _ = reply.send(());
                return true;
            }
            Command::Abort { reply } => {
                self.session.connection_lost();
                self.closed = true;
                let _ = reply.send(());
                return true;
            }
            Command::Shutdown { deadline, reply } => {
                self.shutdown = Some((deadline, reply));
            }
        }
        false
    }

    /// Leases records while the session has room, and offers them (offline too: the session
    /// keeps them in order for the next connection).
    async fn fill_into(&mut self, batch: &mut Batch) -> Result<(), ConnectionError> {
        let now = std::time::Instant::now();
        if self.retry_at.is_some_and(|t| t.into_std() <= now) {
            // Deferred records are visible again.
            self.retry_at = None;
            self.outbox.more();
        }
        while let Some(record) = self.backlog.pop_front() {
            if self.session.free_slots() == 0 {
                self.backlog.push_front(record);
                return Ok(());
            }
            self.offer(record, now, batch);
        }
        // A lease is a durable commit: refill in batches (a quarter of the window, at most
        // REFILL_MAX at a time) rather than one record per PUBACK, unless the session is empty.
        let refill_at = (usize::from(self.session.config().window) / 4).clamp(1, REFILL_MAX);
        while self.session.free_slots() > 0
            && self.outbox.maybe_more()
            && (self.session.free_slots() >= refill_at || self.session.held() == 0)
        {
            let n = self.session.free_slots();
            let records = self
                .outbox
                .lease(n, now)
                .await
                .map_err(|e| ConnectionError::Store(e.to_string()))?;
            if records.is_empty() {
                break;
            }
            for record in records {
                if self.session.free_slots() == 0 {
                    self.backlog.push_back(record);
                } else {
                    self.offer(record, now, batch);
                }
            }
        }
        self.publish_stats();
        Ok(())
    }

    async fn fill(&mut self) -> Result<(), ConnectionError> {
        let mut batch = Batch::default();
        self.fill_into(&mut batch).await?;
        // Offline, the session writes nothing; settle what it decided (expired records).
        batch.out.clear();
        self.settle(&mut batch).await
    }

    fn offer(&mut self, record: OutRecord, now: std::time::Instant, batch: &mut Batch) {
        let seq = record.seq;
        match self.session.offer(record, now) {
            Ok(actions) => self.actions(actions, batch),
            Err(OfferError::Topic { .. }) => {
                // Checked at publish; a record from elsewhere: the broker would refuse it.
                batch.rejected.push((seq, 0x90));
            }
            Err(e) => tracing::error!(seq, "the session refused a record: {e}"),
        }
    }

    /// Turns actions into packets in the write buffer and store work in the batch.
    fn actions(&mut self, actions: Vec<Action>, batch: &mut Batch) {
        for action in actions {
            match action {
                Action::Send(packet) => {
                    if let Err(e) = self.codec.encode(&packet, &mut batch.out) {
                        tracing::error!("cannot encode {}: {e}", packet_name(&packet));
                    }
                }
                Action::Qos2Progress {
                    seq,
                    packet_id,
                    state,
                } => {
                    let fut = self.outbox.record_progress(seq, packet_id, state);
                    batch.progress.push((seq, fut));
                }
                Action::Acked { seq } => batch.acked.push(seq),
                Action::Rejected {
                    seq,
                    reason,
                    reason_string,
                } => {
                    tracing::warn!(
                        seq,
                        reason,
                        reason_string = reason_string.as_deref().unwrap_or(""),
                        "the broker refused a record: dead-lettered"
                    );
                    batch.rejected.push((seq, reason));
                }
                Action::Expired { seq } => batch.expired.push(seq),
                Action::Deferred { seq } => batch.deferred.push(seq),
                Action::PossibleDuplicate { seq, qos } => {
                    tracing::debug!(seq, ?qos, "possible duplicate");
                    let n = self.outbox.record_count(&[seq]) as u64;
                    lock(&self.shared).possible_duplicates += n;
                }
                Action::Connected { session_present } => {
                    {
                        let mut s = lock(&self.shared);
                        s.state = LinkState::Connected;
                        s.connects += 1;
                    }
                    if self.ever_connected {
                        tracing::info!(broker = %self.addr, session_present, "reconnected");
                    } else {
                        tracing::info!(broker = %self.addr, session_present, "connected");
                    }
                    self.ever_connected = true;
                    let _ = self.events.send(Event::Connected { session_present });
                }
                Action::Incoming(incoming) => self.route(incoming),
                Action::Subscribed { filter, result } => {
                    if let Err(code) = result {
                        tracing::warn!(%filter, code, "the broker refused a subscription");
                        self.subs.retain(|(f, _)| *f != filter);
                    }
                    let _ = self.events.send(Event::Subscribed { filter, result });
                }
                Action::Unsubscribed { .. } => {}
            }
        }
    }

    /// Gives an incoming message to every matching subscriber; acks it once all acked.
    fn route(&mut self, incoming: crate::session::IncomingPublish) {
        let p = incoming.publish;
        self.subs.retain(|(_, tx)| !tx.is_closed());
        let targets: Vec<&mpsc::UnboundedSender<Delivery>> = self
            .subs
            .iter()
            .filter(|(f, _)| topic_matches(f, &p.topic))
            .map(|(_, tx)| tx)
            .collect();
        let shared = match (incoming.token, self.cmd_tx.upgrade()) {
            (Some(token), Some(cmd)) if !targets.is_empty() => Some(Arc::new(AckShared {
                remaining: AtomicUsize::new(targets.len()),
                token,
                cmd,
            })),
            (Some(token), _) => {
                // Nobody wants it (a subscription the broker kept from before): ack it.
                let _ = self.cmd_tx.upgrade().map(|c| c.send(Command::Ack(token)));
                None
            }
            (None, _) => None,
        };
        for tx in targets {
            let d = Delivery {
                topic: p.topic.clone(),
                payload: p.payload.clone(),
                qos: p.qos,
                retain: p.retain,
                user_properties: p.user_properties.clone(),
                ack: shared.clone(),
            };
            if let Err(mpsc::error::SendError(d)) = tx.send(d) {
                // The receiver went away just now: count it as handled.
                d.ack();
            }
        }
    }

    /// Makes the batch's QoS 2 progress durable, then writes its packets, then does its store
    /// work (acks, drops). The order is the durability rule of `docs/mqtt.md`.
    async fn flush(
        &mut self,
        wr: &mut tokio::io::WriteHalf<Box<dyn Io>>,
        batch: &mut Batch,
    ) -> Result<(), ConnectionError> {
        self.progress_durable(batch).await?;
        if !batch.out.is_empty() {
            let timeout = self.write_timeout();
            let write = async {
                wr.write_all(&batch.out).await?;
                wr.flush().await
            };
            match tokio::time::timeout(timeout, write).await {
                Ok(Ok(())) => batch.out.clear(),
                Ok(Err(e)) => return Err(ConnectionError::from_io(&self.addr, &e)),
                Err(_) => {
                    return Err(ConnectionError::Timeout {
                        what: "writing to the broker",
                        timeout_ms: timeout.as_millis() as u64,
                    })
                }
            }
        }
        self.settle(batch).await
    }

    async fn progress_durable(&mut self, batch: &mut Batch) -> Result<(), ConnectionError> {
        // Every progress record of the batch was submitted when its action was seen: they
        // share one group commit. Await them all before anything is written.
        for (seq, fut) in batch.progress.drain(..) {
            let ids = fut
                .await
                .map_err(|e| ConnectionError::Store(e.to_string()))?;
            self.outbox.progress_recorded(seq, &ids);
        }
        Ok(())
    }

    /// Store work decided by the session: delivered records, drops.
    async fn settle(&mut self, batch: &mut Batch) -> Result<(), ConnectionError> {
        let store_err = |e: OutboxError| ConnectionError::Store(e.to_string());
        self.progress_durable(batch).await?;
        if !batch.acked.is_empty() {
            let acked = std::mem::take(&mut batch.acked);
            // Counted first: a reader that sees the store empty also sees the count (a pack
            // counts its records).
            lock(&self.shared).acked += self.outbox.record_count(&acked) as u64;
            self.outbox.acked(&acked).await.map_err(store_err)?;
        }
        for seq in std::mem::take(&mut batch.expired) {
            for seq in self.outbox.expired(seq).await.map_err(store_err)? {
                lock(&self.shared).session_expired += 1;
                tracing::debug!(seq, "record expired before it was sent");
                let _ = self.events.send(Event::Dropped {
                    seq,
                    reason: DropReason::Expired,
                });
            }
        }
        for seq in std::mem::take(&mut batch.deferred) {
            let n = self
                .outbox
                .deferred(seq, DEFER_PAUSE)
                .await
                .map_err(store_err)?;
            lock(&self.shared).deferred_by_broker += n as u64;
            tracing::debug!(
                seq,
                "the broker's quota is exceeded: the record waits and goes again"
            );
            self.retry_at = Some(after(DEFER_PAUSE));
        }
        for (seq, reason) in std::mem::take(&mut batch.rejected) {
            for seq in self.outbox.rejected(seq, reason).await.map_err(store_err)? {
                lock(&self.shared).rejected_by_broker += 1;
                let _ = self.events.send(Event::Dropped {
                    seq,
                    reason: DropReason::Rejected(reason),
                });
            }
        }
        if self.outbox.stale_progress() >= TIDY_BATCH {
            self.outbox.tidy_in_background();
        }
        self.publish_stats();
        Ok(())
    }

    fn publish_stats(&self) {
        let mut s = lock(&self.shared);
        s.in_flight = self.session.in_flight();
        s.held = self.session.held();
        s.counters = self.outbox.counters();
        s.malformed = self.outbox.counters().malformed;
        let session = self.session.stats();
        s.ack_qos1 = session.ack_qos1;
        s.ack_qos2 = session.ack_qos2;
    }
}

/// Now plus `d`, saturating far in the future (a configured `Duration::MAX` must not panic).
fn after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// The randomness of the backoff's jitter: from the OS, or (should the OS refuse) from the
/// clock, which still spreads a fleet's retries.
fn jitter_rng() -> StdRng {
    StdRng::try_from_os_rng().unwrap_or_else(|_| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        StdRng::seed_from_u64(nanos ^ u64::from(std::process::id()))
    })
}

/// The wait before the next attempt after `error`: none after a broker's DISCONNECT when so
/// configured, the slow lane for refusals retrying cannot fix, the backoff otherwise.
fn retry_delay(
    immediately_on_server_disconnect: bool,
    error: &ConnectionError,
    backoff: &mut Backoff,
    rng: &mut impl rand::Rng,
) -> Duration {
    if immediately_on_server_disconnect
        && matches!(
            error,
            ConnectionError::Session(SessionError::ServerDisconnected { .. })
        )
    {
        return Duration::ZERO;
    }
    if error.is_configuration_problem() {
        backoff.slow_delay(rng)
    } else {
        backoff.next_delay(rng)
    }
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

fn packet_name(p: &Packet) -> &'static str {
    match p {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect(_) => "DISCONNECT",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_addresses_are_checked() {
        assert_eq!(
            parse_addr("localhost:1883").unwrap(),
            ("localhost".into(), 1883)
        );
        assert_eq!(parse_addr("[::1]:8883").unwrap(), ("::1".into(), 8883));
        for bad in ["localhost", ":1883", "h:0", "h:x", "h:70000"] {
            assert!(parse_addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn huge_durations_do_not_overflow() {
        assert!(after(Duration::MAX) > Instant::now());
    }

    #[test]
    fn io_errors_are_classified() {
        let tls = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::Expired),
        );
        assert!(matches!(
            ConnectionError::from_io("h:1", &tls),
            ConnectionError::Tls { reason, .. } if reason.to_lowercase().contains("expired")
        ));
        let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert_eq!(
            ConnectionError::from_io("h:1", &eof),
            ConnectionError::Closed
        );
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert!(matches!(
            ConnectionError::from_io("h:1", &reset),
            ConnectionError::Io {
                kind: io::ErrorKind::ConnectionReset,
                ..
            }
        ));
    }

    #[test]
    fn retry_delays_follow_the_error() {
        let mut rng = StdRng::seed_from_u64(5);
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(10);
        let server_disconnect = ConnectionError::Session(SessionError::ServerDisconnected {
            reason: 0x8B,
            reason_string: None,
            server_reference: None,
        });
        let mut b = Backoff::new(min, max);
        assert_eq!(
            retry_delay(true, &server_disconnect, &mut b, &mut rng),
            Duration::ZERO
        );
        let d = retry_delay(false, &server_disconnect, &mut b, &mut rng);
        assert_eq!(d, min, "the first backoff delay");
        let refused = ConnectionError::Session(SessionError::ConnectRefused {
            refusal: crate::ConnectRefusal::BadCredentials,
            reason_string: None,
            server_reference: None,
        });
        assert!(refused.is_configuration_problem());
        for _ in 0..20 {
            let d = retry_delay(true, &refused, &mut b, &mut rng);
            assert!(d >= max / 2 && d <= max, "slow lane {d:?}");
        }
        let closed = ConnectionError::Closed;
        assert!(!closed.is_configuration_problem());
        let mut b = Backoff::new(min, max);
        for _ in 0..20 {
            let d = retry_delay(true, &closed, &mut b, &mut rng);
            assert!(d >= min && d <= max, "{d:?}");
        }
    }

    #[tokio::test]
    async fn bad_settings_are_errors_before_anything_opens() {
        let dir = tempfile::tempdir().unwrap();
        let err = Client::builder("localhost:1883", "", dir.path())
            .start()
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Session(_)), "{err}");
        let err = Client::builder("localhost:1883", "c", dir.path())
            .tls(TlsConfig::new(dir.path().join("missing.pem")))
            .start()
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::TlsFile { .. }), "{err}");
        let err = Client::builder("nohost", "c", dir.path())
            .start()
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Config(_)), "{err}");
    }
}
