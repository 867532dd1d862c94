//! The agent's local MQTT listener: unmodified applications (mosquitto_pub, paho) publish to
//! it, and every PUBLISH is **durable in the outbox before it is acknowledged**; upstream
//! messages of the configured subscriptions are **durable in an inbox queue before the broker
//! gets its acknowledgement**, then delivered to the local subscribers whose filters match.
//!
//! Layout (the client side's split): `conn` is the IO-free state machine of one local
//! connection (packets and store results in, actions out); this module owns the sockets, one
//! thin tokio task per connection, the inbox writers and the downlink dispatchers.
//!
//! Rules (see `docs/mqtt.md`, "Local ingress and downlink"):
//! - QoS 0, 1 and 2 PUBLISHes are all stored through [`Client::publish_start`]; the PUBACK
//!   (QoS 1) or PUBREC (QoS 2) is written only after its future resolved, i.e. once the record
//!   is durable. A QoS 2 PUBLISH re-sent before PUBREL is not stored again.
//! - A store failure is a v5 PUBACK/PUBREC with 0x97 (quota exceeded: outbox full or payload
//!   over its limit) or 0x80 (anything else); on 3.1.1, which cannot refuse in a PUBACK, the
//!   connection is closed without an acknowledgement, so the client sends it again.
//! - A connection's PUBLISHes are stored in the order they arrived, pipelined (up to 64
//!   stores running, sharing a group commit); no packet is written before the stores ahead
//!   of it are durable.
//! - Downlink: an inbox record is acked once every local subscriber matching it at dispatch
//!   time has it (QoS 0: written to the socket; QoS 1/2: PUBACK/PUBCOMP received). A record no
//!   local subscription matches stays in the inbox, parked (kept leased, up to [`PARKED_MAX`])
//!   and handed out at the first local SUBSCRIBE that matches it, or until the inbox queue's
//!   retention drops it.

mod conn;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use spool_engine::{Error as EngineError, Message, Push, QueueConfig, Receipt, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::client::{Client, ClientError, Delivery};
use crate::outbox::OutboxError;
use crate::packet::{Codec, CodecError, ConnAck, Disconnect, Packet, Protocol, QoS};
use crate::topic::validate_topic_filter;
use conn::{AfterStore, CloseReason, Conn, ConnAction, ConnSettings, SniffError, StoreFailure};

pub use conn::PRIORITY_PROPERTY;

/// How long a new connection may take to send its CONNECT: a socket that says nothing must
/// not hold a connection slot for long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Stores one connection may have running at once (PUBLISHes read ahead of their acks); at
/// the bound the connection stops reading until the oldest is durable.
const PIPELINED_STORES_MAX: usize = 64;
/// Read buffer growth step.
const READ_CHUNK: usize = 8 * 1024;
/// Inbox records (per inbox queue) no local subscription matches that the dispatcher keeps
/// leased and remembers (topic, QoS, receipt: about 100 bytes each, no payload), to hand
/// them out the moment a local SUBSCRIBE matches one.
pub const PARKED_MAX: usize = 4096;
/// Lease of a parked record, extended at half-time: each parked record costs one small
/// commit per 5 minutes.
const PARK_VISIBILITY: Duration = Duration::from_secs(10 * 60);
/// With [`PARKED_MAX`] records parked, a further unmatched record goes back to the inbox for
/// this long before it is looked at again.
pub const PARK_DELAY: Duration = Duration::from_secs(5);
/// Lease visibility of an inbox record being delivered: a local client that has not
/// acknowledged it by then gets it again (at-least-once).
const DELIVERY_VISIBILITY: Duration = Duration::from_secs(60);
/// Inbox records a dispatcher has out to local clients at once (bounds memory and the
/// records held leased by a slow client).
const DISPATCH_IN_FLIGHT_MAX: usize = 256;
/// Inbox records leased per dispatcher round.
const DISPATCH_BATCH: usize = 32;
/// How long a dispatcher waits for an inbox record before it checks for shutdown.
const DISPATCH_WAIT: Duration = Duration::from_millis(250);
/// MQTT 3.1.1 CONNACK "unacceptable protocol version", sent to an MQTT 3.1 client.
const CONNACK_BAD_VERSION_V311: [u8; 4] = [0x20, 0x02, 0x00, 0x01];
/// Header of an inbox record: the QoS it arrived with (one byte).
pub const INBOX_HEADER_QOS: &str = "mqtt-qos";
/// Header of an inbox record: the retain flag it arrived with (one byte, 0 or 1).
pub const INBOX_HEADER_RETAIN: &str = "mqtt-retain";

/// One upstream subscription of the downlink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownlinkSubscription {
    /// Upstream topic filter (`+` and `#` allowed).
    pub filter: String,
    /// QoS asked of the broker.
    pub qos: QoS,
    /// The engine queue its messages are written to (created with the default
    /// [`QueueConfig`] when missing; an existing queue keeps its config).
    pub inbox: String,
}

/// Configuration of the local listener.
#[derive(Debug, Clone)]
pub struct IngressConfig {
    /// Address to listen on (port 0 picks a free one; see [`Ingress::local_addr`]). Whether a
    /// non-loopback address is allowed is the caller's decision: the listener has no
    /// authentication.
    pub bind: SocketAddr,
    /// Most local connections at once; more are refused (CONNACK quota exceeded / server
    /// unavailable). Default 64.
    pub max_connections: usize,
    /// Largest packet accepted from a local client, in bytes (announced in a v5 CONNACK); a
    /// bigger one closes that connection. Default 1 MiB.
    pub max_packet_size: u32,
    /// Outbox priority of a local PUBLISH (a v5 user property [`PRIORITY_PROPERTY`] with a
    /// value 0..=255 overrides it). Default 0.
    pub default_priority: u8,
    /// Upstream QoS of a local **QoS 0** PUBLISH (QoS 1 and 2 keep theirs). The ingress stores
    /// QoS 0 durably too; the default 1 keeps that guarantee up to the broker. Default 1.
    pub default_qos: QoS,
    /// TTL of a local PUBLISH that carries no MQTT 5 message expiry (every 3.1.1 one).
    /// Default `None`: such messages never expire.
    pub default_ttl: Option<Duration>,
    /// Upstream subscriptions whose messages local clients may SUBSCRIBE to.
    pub subscriptions: Vec<DownlinkSubscription>,
}

impl IngressConfig {
    /// The defaults, listening on `bind`.
    pub fn new(bind: SocketAddr) -> IngressConfig {
        IngressConfig {
            bind,
            max_connections: 64,
            max_packet_size: 1 << 20,
            default_priority: 0,
            default_qos: QoS::AtLeastOnce,
            default_ttl: None,
            subscriptions: Vec::new(),
        }
    }

    /// Adds an upstream subscription written to `inbox`.
    #[must_use]
    pub fn subscribe(
        mut self,
        filter: impl Into<String>,
        qos: QoS,
        inbox: impl Into<String>,
    ) -> IngressConfig {
        self.subscriptions.push(DownlinkSubscription {
            filter: filter.into(),
            qos,
            inbox: inbox.into(),
        });
        self
    }
}

/// Why the ingress could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngressError {
    /// A bad setting.
    #[error("bad ingress config: {0}")]
    Config(String),
    /// The listening socket cannot be bound.
    #[error("cannot listen on {addr}: {source}; is another process using the port?")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// An inbox queue cannot be created.
    #[error("cannot create the inbox queue {queue:?}: {source}")]
    Inbox {
        /// The queue.
        queue: String,
        /// Why.
        source: EngineError,
    },
    /// An upstream subscription was refused by the client.
    #[error("cannot subscribe upstream to {filter:?}: {source}")]
    Subscribe {
        /// The filter.
        filter: String,
        /// Why.
        source: ClientError,
    },
}

/// Counters of the ingress ([`Ingress::stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct IngressStats {
    /// Local connections open now.
    pub connections: usize,
    /// Local connections accepted since start.
    pub connections_total: u64,
    /// Connections refused (over `max_connections`, bad protocol version, bad CONNECT).
    pub connections_refused: u64,
    /// PUBLISH packets received, by QoS (0, 1, 2), resends included.
    pub publishes_received: [u64; 3],
    /// PUBLISHes stored durably in the outbox.
    pub stored: u64,
    /// PUBLISHes the outbox refused or failed to store (refused in a v5 ack, or the 3.1.1
    /// connection closed).
    pub store_failures: u64,
    /// Connections closed for an oversize packet.
    pub oversize_closed: u64,
    /// Upstream messages written to an inbox (and acked to the broker).
    pub downlink_received: u64,
    /// Inbox writes that failed (the message is not acked: the broker sends it again).
    pub downlink_store_failures: u64,
    /// Inbox records delivered to every matching local subscriber (and acked in the inbox).
    pub downlink_delivered: u64,
    /// Records waiting in the inbox queues (not yet delivered).
    pub downlink_pending: u64,
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicUsize,
    connections_total: AtomicU64,
    connections_refused: AtomicU64,
    publishes_received: [AtomicU64; 3],
    stored: AtomicU64,
    store_failures: AtomicU64,
    oversize_closed: AtomicU64,
    downlink_received: AtomicU64,
    downlink_store_failures: AtomicU64,
    downlink_delivered: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A downlink record handed to a connection task.
#[derive(Debug)]
struct Downlink {
    topic: String,
    payload: Bytes,
    qos: QoS,
    retain: bool,
    pending: Arc<Pending>,
}

/// One leased inbox record and the local subscribers that still have to take it.
#[derive(Debug)]
struct Pending {
    store: Store,
    queue: String,
    receipt: Receipt,
    remaining: AtomicUsize,
    failed: AtomicBool,
    counters: Arc<Counters>,
    /// The dispatcher's in-flight slot, given back when the record is done.
    _permit: OwnedSemaphorePermit,
}

impl Pending {
    /// One subscriber took it (`ok`) or lost it (its connection ended first). When the last
    /// one answered: acked if all took it, else released at once for a new dispatch.
    fn complete(self: &Arc<Self>, ok: bool) {
        if !ok {
            self.failed.store(true, Ordering::Release);
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            if this.failed.load(Ordering::Acquire) {
                release(&this.store, &this.queue, this.receipt, Duration::ZERO).await;
            } else {
                match this
                    .store
                    .ack_batch_async(&this.queue, &[this.receipt])
                    .await
                {
                    Ok(_) => bump(&this.counters.downlink_delivered),
                    Err(e) => {
                        tracing::warn!(queue = %this.queue, error = %e, "inbox ack failed; the record will be delivered again");
                    }
                }
            }
        });
    }
}

/// Nacks an inbox record (a blocking store call, off the executor).
async fn release(store: &Store, queue: &str, receipt: Receipt, delay: Duration) {
    let store = store.clone();
    let queue = queue.to_owned();
    let r = tokio::task::spawn_blocking(move || store.nack(&queue, receipt, delay, None)).await;
    if let Ok(Err(e)) = r {
        tracing::debug!(error = %e, "inbox nack failed; the lease expires instead");
    }
}

/// What the dispatchers know of a local connection.
#[derive(Debug)]
struct ConnEntry {
    subscriptions: Vec<(String, QoS)>,
    tx: mpsc::UnboundedSender<Downlink>,
}

#[derive(Debug)]
struct Shared {
    client: Client,
    settings: ConnSettings,
    max_connections: usize,
    counters: Arc<Counters>,
    registry: Mutex<HashMap<u64, ConnEntry>>,
    inboxes: Vec<String>,
    /// Local SUBSCRIBEs so far: a dispatcher that sees it change looks at its parked records.
    subscribes: AtomicU64,
}

/// The running listener. Dropping it without [`Ingress::shutdown`] stops accepting and
/// aborts the tasks (nothing acknowledged is lost either way: acks follow durability).
#[derive(Debug)]
pub struct Ingress {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    accept: Option<JoinHandle<()>>,
    downlink: Vec<JoinHandle<()>>,
}

impl Ingress {
    /// Binds `config.bind`, subscribes upstream for the downlink, and starts serving.
    pub async fn start(config: IngressConfig, client: Client) -> Result<Ingress, IngressError> {
        if config.max_connections == 0 {
            return Err(IngressError::Config(
                "max_connections is 0: allow at least one local connection".into(),
            ));
        }
        if config.max_packet_size < 64 {
            return Err(IngressError::Config(format!(
                "max_packet_size of {} bytes is too small for MQTT; use at least 64",
                config.max_packet_size
            )));
        }
        for s in &config.subscriptions {
            validate_topic_filter(&s.filter).map_err(|e| {
                IngressError::Config(format!("downlink filter {:?}: {e}", s.filter))
            })?;
        }
        let store = client.store().clone();
        let mut inboxes: Vec<String> = Vec::new();
        for s in &config.subscriptions {
            if inboxes.contains(&s.inbox) {
                continue;
            }
            match store.create_queue(&s.inbox, QueueConfig::default()) {
                Ok(_) | Err(EngineError::Exists { .. }) => {}
                Err(source) => {
                    return Err(IngressError::Inbox {
                        queue: s.inbox.clone(),
                        source,
                    })
                }
            }
            inboxes.push(s.inbox.clone());
        }
        let listener =
            TcpListener::bind(config.bind)
                .await
                .map_err(|source| IngressError::Bind {
                    addr: config.bind,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| IngressError::Bind {
            addr: config.bind,
            source,
        })?;
        let counters = Arc::new(Counters::default());
        let shared = Arc::new(Shared {
            client: client.clone(),
            settings: ConnSettings {
                default_priority: config.default_priority,
                qos0_upstream: config.default_qos,
                max_packet_bytes: config.max_packet_size,
                default_ttl: config.default_ttl,
            },
            max_connections: config.max_connections,
            counters: Arc::clone(&counters),
            registry: Mutex::new(HashMap::new()),
            inboxes: inboxes.clone(),
            subscribes: AtomicU64::new(0),
        });
        let (stop, stop_rx) = watch::channel(false);
        let mut downlink = Vec::new();
        // Every upstream subscription first: a refusal leaves no task behind. Deliveries
        // wait in their channel (unacked) until their writer runs.
        let mut sinks = Vec::new();
        for s in &config.subscriptions {
            let (tx, rx) = mpsc::unbounded_channel();
            client
                .subscribe_into(s.filter.clone(), s.qos, tx)
                .await
                .map_err(|source| IngressError::Subscribe {
                    filter: s.filter.clone(),
                    source,
                })?;
            sinks.push((s.inbox.clone(), rx));
        }
        // The inbox may hold records from before a restart: its dispatcher starts at once.
        for queue in &inboxes {
            downlink.push(tokio::spawn(dispatch(
                Arc::clone(&shared),
                queue.clone(),
                stop_rx.clone(),
            )));
        }
        for (inbox, rx) in sinks {
            downlink.push(tokio::spawn(write_inbox(
                store.clone(),
                inbox,
                rx,
                Arc::clone(&counters),
                stop_rx.clone(),
            )));
        }
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared), stop_rx));
        Ok(Ingress {
            local_addr,
            shared,
            stop,
            accept: Some(accept),
            downlink,
        })
    }

    /// The address the listener is bound to (the real port when `bind` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> IngressStats {
        let c = &self.shared.counters;
        let store = self.shared.client.store();
        let downlink_pending = self
            .shared
            .inboxes
            .iter()
            .filter_map(|q| store.stats(q).ok())
            .map(|s| s.messages)
            .sum();
        IngressStats {
            connections: c.connections.load(Ordering::Relaxed),
            connections_total: c.connections_total.load(Ordering::Relaxed),
            connections_refused: c.connections_refused.load(Ordering::Relaxed),
            publishes_received: [
                c.publishes_received[0].load(Ordering::Relaxed),
                c.publishes_received[1].load(Ordering::Relaxed),
                c.publishes_received[2].load(Ordering::Relaxed),
            ],
            stored: c.stored.load(Ordering::Relaxed),
            store_failures: c.store_failures.load(Ordering::Relaxed),
            oversize_closed: c.oversize_closed.load(Ordering::Relaxed),
            downlink_received: c.downlink_received.load(Ordering::Relaxed),
            downlink_store_failures: c.downlink_store_failures.load(Ordering::Relaxed),
            downlink_delivered: c.downlink_delivered.load(Ordering::Relaxed),
            downlink_pending,
        }
    }

    /// Stops accepting, lets every connection finish the store it is in (and send its ack),
    /// closes the connections (a v5 client gets DISCONNECT "server shutting down"), and stops
    /// the downlink. Records leased for local delivery and not yet acknowledged stay in the
    /// inbox. The [`Client`] is not shut down (it is the caller's).
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(accept) = self.accept.take() {
            let _ = accept.await;
        }
        // Dispatchers and inbox writers end by themselves (a lease wait is short, a write
        // in progress is finished and acked).
        for t in self.downlink.drain(..) {
            let _ = t.await;
        }
    }
}

impl Drop for Ingress {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(a) = self.accept.take() {
            a.abort();
        }
        for t in &self.downlink {
            t.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Accepting

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tasks = tokio::task::JoinSet::new();
    let mut next_id: u64 = 0;
    let refusing = Arc::new(AtomicUsize::new(0));
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a moment, keep serving.
                        tracing::warn!(error = %e, "local accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                next_id += 1;
                let c = &shared.counters;
                // Reserve a slot; give it back if over the limit.
                if c.connections.fetch_add(1, Ordering::AcqRel) >= shared.max_connections {
                    c.connections.fetch_sub(1, Ordering::AcqRel);
                    bump(&c.connections_refused);
                    tracing::info!(%peer, "local connection refused: max_connections reached");
                    // Refusals are answered by as many tasks as there are connection slots;
                    // beyond that the socket is just closed (a flood costs nothing to hold).
                    if refusing.fetch_add(1, Ordering::AcqRel) < shared.max_connections {
                        let refusing = Arc::clone(&refusing);
                        tasks.spawn(async move {
                            refuse(stream).await;
                            refusing.fetch_sub(1, Ordering::AcqRel);
                        });
                    } else {
                        refusing.fetch_sub(1, Ordering::AcqRel);
                    }
                    continue;
                }
                bump(&c.connections_total);
                let slot = Slot(Arc::clone(&shared.counters));
                tasks.spawn(serve(stream, Arc::clone(&shared), next_id, stop.clone(), slot));
            }
        }
    }
    drop(listener);
    while tasks.join_next().await.is_some() {}
}

/// Gives the connection slot back when the connection task ends.
struct Slot(Arc<Counters>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Reads the CONNECT of a connection over the limit and answers "quota exceeded" (v5) /
/// "server unavailable" (3.1.1), then closes.
async fn refuse(mut stream: TcpStream) {
    let mut buf = BytesMut::new();
    let Ok(Ok(Some(protocol))) =
        tokio::time::timeout(CONNECT_TIMEOUT, read_protocol(&mut stream, &mut buf)).await
    else {
        return;
    };
    let mut out = BytesMut::new();
    // 0x97 maps to "server unavailable" (3) in a 3.1.1 CONNACK.
    let ack = ConnAck {
        reason: conn::QUOTA_EXCEEDED,
        ..ConnAck::default()
    };
    if Codec::new(protocol, 0)
        .encode(&Packet::ConnAck(ack), &mut out)
        .is_ok()
    {
        let _ = stream.write_all(&out).await;
    }
    let _ = stream.shutdown().await;
}

/// Reads until the CONNECT's protocol level is known.
async fn read_protocol(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
) -> std::io::Result<Option<Protocol>> {
    loop {
        match conn::sniff_protocol(buf) {
            Ok(Some(p)) => return Ok(Some(p)),
            Ok(None) => {}
            Err(SniffError::UnsupportedVersion) => {
                let _ = stream.write_all(&CONNACK_BAD_VERSION_V311).await;
                return Ok(None);
            }
            Err(SniffError::NotConnect) => return Ok(None),
        }
        buf.reserve(READ_CHUNK);
        if stream.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One connection

/// What the connection task waits for.
enum Wake {
    Read(std::io::Result<usize>),
    Idle,
    Stored(Result<u64, ClientError>),
    Downlink(Downlink),
    Stop,
}

/// A store started for a local PUBLISH: durable when it resolves.
type StoreFuture = Pin<Box<dyn Future<Output = Result<u64, ClientError>> + Send>>;

/// One step of a connection's pipeline, carried out strictly in order: a packet is written
/// only once every store before it is durable (and its own ack written).
enum Step {
    /// Wait for this store, then give its result to the state machine.
    Store(StoreFuture, AfterStore),
    /// Carry out this action.
    Now(ConnAction),
}

/// The task of one local connection: reads packets, feeds the state machine, and carries out
/// its actions in order. Stores are started as soon as their PUBLISH is read (several may run
/// at once and share a group commit; the outbox order is the order they were started in), but
/// each ack waits for its own store, and nothing after it is written before it.
#[allow(clippy::too_many_lines)] // one event loop, read top to bottom
async fn serve(
    mut stream: TcpStream,
    shared: Arc<Shared>,
    id: u64,
    mut stop: watch::Receiver<bool>,
    _slot: Slot,
) {
    let counters = Arc::clone(&shared.counters);
    let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
    let Ok(Ok(Some(protocol))) =
        tokio::time::timeout(CONNECT_TIMEOUT, read_protocol(&mut stream, &mut rbuf)).await
    else {
        bump(&counters.connections_refused);
        return;
    };
    let max_packet = usize::try_from(shared.settings.max_packet_bytes).unwrap_or(usize::MAX);
    let codec = Codec::new(protocol, max_packet);
    let mut conn = Conn::new(protocol, shared.settings.clone(), id);
    let (tx, mut rx) = mpsc::unbounded_channel::<Downlink>();
    lock(&shared.registry).insert(
        id,
        ConnEntry {
            subscriptions: Vec::new(),
            tx,
        },
    );
    // Downlink records handed to the local client and not acknowledged yet, by token.
    let mut handed: HashMap<u64, Arc<Pending>> = HashMap::new();
    let mut next_token: u64 = 0;
    let mut wbuf = BytesMut::new();
    let mut connected = false;
    // Set when no more packets are read: the server stops (`true`: tell the client) or the
    // client closed its side (`false`). The steps still run out: stores already started
    // finish and are counted (and acked, when the socket still takes it).
    let mut stopping: Option<bool> = None;
    let mut last_rx = tokio::time::Instant::now();
    let mut steps: VecDeque<Step> = VecDeque::new();
    let mut stores_running = 0usize;
    let mut held: VecDeque<Downlink> = VecDeque::new();
    'conn: loop {
        // 0. Downlink records waiting for room in the client's Receive Maximum, in order.
        while held.front().is_some_and(|d| conn.can_deliver(d.qos)) {
            let Some(d) = held.pop_front() else {
                break;
            };
            next_token += 1;
            let token = next_token;
            if let Some(out) = conn.deliver(token, d.topic, d.payload, d.qos, d.retain) {
                handed.insert(token, d.pending);
                steps.extend(out.into_iter().map(Step::Now));
            } else {
                // Every packet id in use (65,535 unacknowledged): another dispatch later.
                d.pending.complete(false);
            }
        }
        // 1. Carry out the steps that wait for nothing.
        while let Some(Step::Now(_)) = steps.front() {
            let Some(Step::Now(action)) = steps.pop_front() else {
                break;
            };
            match action {
                ConnAction::Send(p) => {
                    if matches!(&p, Packet::ConnAck(a) if a.reason == 0) {
                        connected = true;
                    }
                    if !send_now(&codec, &mut stream, &mut wbuf, &p).await {
                        break 'conn;
                    }
                }
                store @ ConnAction::Store { .. } => {
                    // (Stores are started when they are queued; this keeps any other path
                    // right.) The store is now the front: nothing after it before it is done.
                    steps.push_front(start_store(&shared, store, &mut stores_running));
                    break;
                }
                ConnAction::Delivered(token) => {
                    if let Some(p) = handed.remove(&token) {
                        p.complete(true);
                    }
                }
                ConnAction::Close(why) => {
                    if why != CloseReason::ClientDisconnect {
                        tracing::debug!(conn = id, ?why, "local connection closed");
                    }
                    if why == CloseReason::Refused {
                        bump(&counters.connections_refused);
                    }
                    break 'conn;
                }
            }
        }
        if let (Some(tell), true) = (stopping, steps.is_empty()) {
            if tell {
                let out = conn.shutdown();
                run_sends(&codec, &mut stream, &mut wbuf, out).await;
            }
            break 'conn;
        }
        // 2. Whole packets already read, while the pipeline has room.
        // (After the client closed its side, what it sent before is still taken.)
        let room = stores_running < PIPELINED_STORES_MAX;
        let reading = stopping.is_none() && room;
        if room && stopping != Some(true) {
            match codec.decode(&mut rbuf) {
                Ok(Some(p)) => {
                    if let Packet::Publish(pb) = &p {
                        counters.publishes_received[pb.qos as usize]
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    let is_sub = matches!(p, Packet::Subscribe(_) | Packet::Unsubscribe(_));
                    for action in conn.handle(p) {
                        steps.push_back(start_store(&shared, action, &mut stores_running));
                    }
                    if is_sub {
                        if let Some(e) = lock(&shared.registry).get_mut(&id) {
                            e.subscriptions = conn.subscriptions().to_vec();
                        }
                        shared.subscribes.fetch_add(1, Ordering::AcqRel);
                    }
                    continue 'conn;
                }
                Ok(None) => {}
                Err(e) => {
                    if matches!(e, CodecError::TooLarge { .. }) {
                        bump(&counters.oversize_closed);
                        if protocol == Protocol::V5 && connected {
                            let bye = disconnect(crate::packet::reason::PACKET_TOO_LARGE);
                            send_now(&codec, &mut stream, &mut wbuf, &bye).await;
                        }
                    }
                    tracing::debug!(conn = id, error = %e, "local connection closed: bad packet");
                    break 'conn;
                }
            }
        }
        // 3. Wait: for the store at the front, more bytes, silence, a downlink record, a stop.
        // Silence is measured from the last bytes the client sent (downlink traffic to it
        // does not keep a dead client alive); before CONNACK, the CONNECT timeout.
        let idle = if connected {
            conn.idle_limit()
        } else {
            Some(CONNECT_TIMEOUT)
        };
        let front_store = match steps.front_mut() {
            Some(Step::Store(f, _)) => Some(f),
            _ => None,
        };
        let wake = tokio::select! {
            r = async {
                match front_store {
                    Some(f) => f.await,
                    None => std::future::pending().await,
                }
            } => Wake::Stored(r),
            r = stream.read_buf(&mut rbuf), if reading => Wake::Read(r),
            // (Not while the pipeline is full: the client is not the one who is slow.)
            () = sleep_until_or_forever(idle.map(|d| last_rx + d)), if reading => Wake::Idle,
            Some(d) = rx.recv(), if stopping.is_none() => Wake::Downlink(d),
            _ = stop.changed(), if stopping.is_none() => Wake::Stop,
        };
        match wake {
            Wake::Stored(result) => {
                let Some(Step::Store(_, then)) = steps.pop_front() else {
                    break 'conn;
                };
                if stores_running == PIPELINED_STORES_MAX {
                    // Reading was paused for the store, not for the client: its silence
                    // counts from now.
                    last_rx = tokio::time::Instant::now();
                }
                stores_running -= 1;
                let result = match result {
                    Ok(_) => {
                        bump(&counters.stored);
                        Ok(())
                    }
                    Err(e) => {
                        bump(&counters.store_failures);
                        tracing::warn!(conn = id, error = %e, "a local PUBLISH could not be stored");
                        Err((store_failure(&e), e.to_string()))
                    }
                };
                // Its consequences come before everything that was behind it.
                for action in conn.stored(then, result).into_iter().rev() {
                    steps.push_front(Step::Now(action));
                }
            }
            Wake::Read(Ok(0) | Err(_)) => stopping = Some(false),
            Wake::Read(Ok(_)) => {
                last_rx = tokio::time::Instant::now();
                rbuf.reserve(READ_CHUNK);
            }
            Wake::Idle => {
                tracing::debug!(conn = id, "local connection closed: keep alive");
                if protocol == Protocol::V5 && connected {
                    let bye = disconnect(conn::KEEP_ALIVE_TIMEOUT);
                    send_now(&codec, &mut stream, &mut wbuf, &bye).await;
                }
                break 'conn;
            }
            // Stores already started finish and are acked; then DISCONNECT.
            Wake::Stop => stopping = Some(true),
            Wake::Downlink(d) => held.push_back(d),
        }
    }
    lock(&shared.registry).remove(&id);
    // Records queued for this connection but never handed over, and those handed over but not
    // acknowledged, go back to the inbox for another dispatch.
    rx.close();
    while let Ok(d) = rx.try_recv() {
        d.pending.complete(false);
    }
    for d in held.drain(..) {
        d.pending.complete(false);
    }
    for (_, p) in handed.drain() {
        p.complete(false);
    }
    let _ = stream.shutdown().await;
}

/// Starts the store of a [`ConnAction::Store`] at once (its place in the outbox is taken now;
/// its ack waits for its turn in the steps); any other action is kept for its turn.
fn start_store(shared: &Shared, action: ConnAction, running: &mut usize) -> Step {
    match action {
        ConnAction::Store {
            msg,
            user_properties,
            then,
        } => {
            *running += 1;
            let fut: StoreFuture = match shared.client.publish_start(&msg, &user_properties) {
                Ok(f) => Box::pin(f),
                Err(e) => Box::pin(std::future::ready(Err(e))),
            };
            Step::Store(fut, then)
        }
        other => Step::Now(other),
    }
}

async fn run_sends(
    codec: &Codec,
    stream: &mut TcpStream,
    wbuf: &mut BytesMut,
    out: Vec<ConnAction>,
) {
    for a in out {
        if let ConnAction::Send(p) = a {
            if !send_now(codec, stream, wbuf, &p).await {
                return;
            }
        }
    }
}

/// Encodes and writes one packet; `false` when that failed (the connection is done).
async fn send_now(codec: &Codec, stream: &mut TcpStream, wbuf: &mut BytesMut, p: &Packet) -> bool {
    wbuf.clear();
    codec.encode(p, wbuf).is_ok() && stream.write_all(wbuf).await.is_ok()
}

fn disconnect(reason: u8) -> Packet {
    Packet::Disconnect(Disconnect {
        reason,
        ..Disconnect::default()
    })
}

async fn sleep_until_or_forever(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

fn store_failure(e: &ClientError) -> StoreFailure {
    match e {
        ClientError::Outbox(
            OutboxError::Full { .. }
            | OutboxError::PayloadTooLarge { .. }
            | OutboxError::Store(spool_engine::Error::DiskFull { .. }),
        ) => StoreFailure::Quota,
        _ => StoreFailure::Other,
    }
}

// ---------------------------------------------------------------------------------------------
// Downlink

/// Writes each upstream message to the inbox, and only then acks it to the broker.
async fn write_inbox(
    store: Store,
    queue: String,
    mut rx: mpsc::UnboundedReceiver<Delivery>,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        // A write in progress is finished (and acked) before a stop is looked at.
        let d = tokio::select! {
            d = rx.recv() => d,
            _ = stop.changed() => None,
        };
        let Some(d) = d else {
            return;
        };
        let push = Push::new(d.payload.clone())
            .subject(d.topic.clone())
            .header(INBOX_HEADER_QOS, Bytes::from(vec![d.qos as u8]))
            .header(INBOX_HEADER_RETAIN, Bytes::from(vec![u8::from(d.retain)]));
        match store.push_async(&queue, push).await {
            Ok(_) => {
                bump(&counters.downlink_received);
                d.ack();
            }
            Err(e) => {
                // Not acked: the broker sends it again after the next reconnect.
                bump(&counters.downlink_store_failures);
                tracing::warn!(%queue, topic = %d.topic, error = %e, "an upstream message could not be written to the inbox");
            }
        }
    }
}

/// An inbox record no local subscription matched: kept leased (hidden from other leases) and
/// remembered without its payload, to be handed out as soon as a local SUBSCRIBE matches it.
#[derive(Debug)]
struct Parked {
    id: u64,
    receipt: Receipt,
    meta: InboxMeta,
    /// When its lease is extended again.
    renew_at: tokio::time::Instant,
}

/// What the dispatcher needs of an inbox record besides its payload.
#[derive(Debug, Clone)]
struct InboxMeta {
    topic: String,
    qos: QoS,
    retain: bool,
}

impl InboxMeta {
    fn of(m: &Message) -> InboxMeta {
        let header = |k: &str| {
            m.headers
                .iter()
                .find(|(h, _)| h == k)
                .and_then(|(_, v)| v.first().copied())
        };
        InboxMeta {
            topic: m.subject.clone().unwrap_or_default(),
            qos: header(INBOX_HEADER_QOS)
                .and_then(QoS::from_u8)
                .unwrap_or(QoS::AtLeastOnce),
            retain: header(INBOX_HEADER_RETAIN) == Some(1),
        }
    }
}

/// Whether the ingress is stopping (or its handle is gone).
fn stopped(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow() || stop.has_changed().is_err()
}

/// Runs a blocking store call off the executor.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
) -> Result<T, EngineError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(EngineError::InvalidArgument(format!(
            "store task failed: {e}"
        )))
    })
}

/// Leases inbox records and hands each to the local connections whose subscriptions match.
/// At most [`DISPATCH_IN_FLIGHT_MAX`] records are out at once (a slow local client holds
/// records in the store, not in memory). Records nobody local wants are parked (up to
/// [`PARKED_MAX`], their leases extended) and handed out when a local SUBSCRIBE comes.
async fn dispatch(shared: Arc<Shared>, queue: String, mut stop: watch::Receiver<bool>) {
    let store = shared.client.store().clone();
    let permits = Arc::new(Semaphore::new(DISPATCH_IN_FLIGHT_MAX));
    let mut parked: VecDeque<Parked> = VecDeque::new();
    let mut seen_subscribes = u64::MAX;
    loop {
        if stopped(&stop) {
            // Parked records go back to the inbox now (they would anyway at the next open).
            for p in parked.drain(..) {
                release(&store, &queue, p.receipt, Duration::ZERO).await;
            }
            return;
        }
        let subscribes = shared.subscribes.load(Ordering::Acquire);
        if subscribes != seen_subscribes {
            seen_subscribes = subscribes;
            unpark(&shared, &store, &queue, &permits, &mut parked).await;
        }
        renew(&store, &queue, &mut parked).await;
        let free = permits.available_permits();
        if free == 0 {
            tokio::select! {
                p = Arc::clone(&permits).acquire_owned() => drop(p),
                _ = stop.changed() => {}
            }
            continue;
        }
        let (s, q) = (store.clone(), queue.clone());
        let n = free.min(DISPATCH_BATCH);
        let leased =
            blocking(move || s.lease_wait(&q, n, Some(DELIVERY_VISIBILITY), DISPATCH_WAIT)).await;
        let msgs = match leased {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(%queue, error = %e, "inbox lease failed");
                tokio::time::sleep(DISPATCH_WAIT).await;
                continue;
            }
        };
        for m in msgs {
            let Some(receipt) = m.receipt else {
                continue;
            };
            let meta = InboxMeta::of(&m);
            let permit = match Arc::clone(&permits).try_acquire_owned() {
                Ok(p) if !stopped(&stop) => p,
                // Stopping (or out of permits, which the count above rules out): back to the
                // inbox at once.
                _ => {
                    release(&store, &queue, receipt, Duration::ZERO).await;
                    continue;
                }
            };
            if !hand_out(&shared, &store, &queue, &meta, &m.payload, receipt, permit) {
                park(&store, &queue, &mut parked, m.id, receipt, meta).await;
            }
        }
    }
}

/// Keeps a record nobody local wants: its lease is extended and it is remembered; when the
/// parked set is full, it goes back to the inbox for [`PARK_DELAY`] instead.
async fn park(
    store: &Store,
    queue: &str,
    parked: &mut VecDeque<Parked>,
    id: u64,
    receipt: Receipt,
    meta: InboxMeta,
) {
    if parked.len() >= PARKED_MAX {
        release(store, queue, receipt, PARK_DELAY).await;
        return;
    }
    let (s, q) = (store.clone(), queue.to_owned());
    match blocking(move || s.extend(&q, receipt, PARK_VISIBILITY)).await {
        Ok(_) => parked.push_back(Parked {
            id,
            receipt,
            meta,
            renew_at: tokio::time::Instant::now() + PARK_VISIBILITY / 2,
        }),
        Err(e) => {
            tracing::debug!(%queue, error = %e, "cannot park an inbox record; its lease expires instead");
        }
    }
}

/// Extends the leases of parked records that are due (a lost lease: the record is forgotten
/// here, and the next lease returns it).
async fn renew(store: &Store, queue: &str, parked: &mut VecDeque<Parked>) {
    let now = tokio::time::Instant::now();
    let mut kept = VecDeque::with_capacity(parked.len());
    for mut p in parked.drain(..) {
        if p.renew_at <= now {
            let (s, q, r) = (store.clone(), queue.to_owned(), p.receipt);
            if blocking(move || s.extend(&q, r, PARK_VISIBILITY))
                .await
                .is_err()
            {
                continue;
            }
            p.renew_at = now + PARK_VISIBILITY / 2;
        }
        kept.push_back(p);
    }
    *parked = kept;
}

/// After a local SUBSCRIBE: hands out the parked records it (or any) now matches, in order.
async fn unpark(
    shared: &Shared,
    store: &Store,
    queue: &str,
    permits: &Arc<Semaphore>,
    parked: &mut VecDeque<Parked>,
) {
    let mut kept = VecDeque::with_capacity(parked.len());
    for p in parked.drain(..) {
        if targets(shared, &p.meta).is_empty() {
            kept.push_back(p);
            continue;
        }
        let Ok(permit) = Arc::clone(permits).try_acquire_owned() else {
            // Out of slots: left parked; the next SUBSCRIBE or restart retries it.
            kept.push_back(p);
            continue;
        };
        let (s, q, id) = (store.clone(), queue.to_owned(), p.id);
        let Ok(m) = blocking(move || s.get(&q, id)).await else {
            // Gone (expired by the inbox's retention, purged): nothing to deliver.
            continue;
        };
        if !hand_out(shared, store, queue, &p.meta, &m.payload, p.receipt, permit) {
            kept.push_back(p);
        }
    }
    *parked = kept;
}

/// The local connections a record goes to, with the QoS for each.
fn targets(shared: &Shared, meta: &InboxMeta) -> Vec<(QoS, mpsc::UnboundedSender<Downlink>)> {
    lock(&shared.registry)
        .values()
        .filter_map(|e| {
            conn::delivery_qos(&e.subscriptions, &meta.topic, meta.qos).map(|q| (q, e.tx.clone()))
        })
        .collect()
}

/// Hands a leased record to every matching local connection; `false` (and nothing done) when
/// none matches.
fn hand_out(
    shared: &Shared,
    store: &Store,
    queue: &str,
    meta: &InboxMeta,
    payload: &Bytes,
    receipt: Receipt,
    permit: OwnedSemaphorePermit,
) -> bool {
    let targets = targets(shared, meta);
    if targets.is_empty() {
        return false;
    }
    let pending = Arc::new(Pending {
        store: store.clone(),
        queue: queue.to_owned(),
        receipt,
        remaining: AtomicUsize::new(targets.len()),
        failed: AtomicBool::new(false),
        counters: Arc::clone(&shared.counters),
        _permit: permit,
    });
    for (qos, tx) in targets {
        let d = Downlink {
            topic: meta.topic.clone(),
            payload: payload.clone(),
            qos,
            retain: meta.retain,
            pending: Arc::clone(&pending),
        };
        if let Err(mpsc::error::SendError(d)) = tx.send(d) {
            d.pending.complete(false);
        }
    }
    true
}
