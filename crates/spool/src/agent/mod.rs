//! The MQTT agent (`spool agent --config agent.toml`): a long-running process that owns one
//! store directory and runs, over a validated [`AgentConfig`]:
//!
//! - the store-and-forward MQTT client towards the broker ([`spool_mqtt::Client`], mapped from
//!   the configuration in [`upstream`]);
//! - the local MQTT listener for unmodified applications, with the downlink subscriptions
//!   (`spool_mqtt::ingress`), when `listener.enabled`;
//! - the operations HTTP endpoint (`crate::ops`) over an [`ops::AgentOps`] source: readiness,
//!   Prometheus metrics and JSON stats;
//! - a watcher that follows the connection state (for readiness: "disconnected for how long").
//!
//! Start order: client (opens the store: nothing else may hold it), HTTP (so that a probe sees
//! the agent as live while it connects), listener. Stop order is the reverse of who produces
//! work: the listener stops taking local publishes first, then the client drains what is in
//! flight and queued up to `upstream.drain_timeout`, then HTTP stops. Nothing is lost when the
//! drain is cut short, or when the process is killed instead: a message is acknowledged to
//! its producer only once it is durable in the outbox, and the next start sends it.
//!
//! Architecture invariants: this module logs connection changes (through the client) and
//! lifecycle steps at info/warn, never one line per message at info; it does not print (the
//! binary does); it returns typed errors ([`AgentError`]), not `anyhow`.

pub mod logging;
pub mod ops;
pub mod publish;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use spool_mqtt::ingress::{Ingress, IngressConfig, IngressError};
use spool_mqtt::{Client, ClientError, OutboxError, QoS};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::AgentConfig;

/// How long the agent waits for the store when another process holds it at start (a
/// `spool publish` writing straight into the store while no agent ran holds it for a few
/// milliseconds; a second agent holds it for ever and gets a clear error after this).
pub const STORE_LOCK_WAIT: Duration = Duration::from_secs(5);
/// How long the HTTP endpoint may take to close its connections at stop (an idle keep-alive
/// connection of a scraper would otherwise hold the exit).
const HTTP_STOP_WAIT: Duration = Duration::from_secs(2);
/// How often the store is tried again within [`STORE_LOCK_WAIT`].
const STORE_LOCK_RETRY: Duration = Duration::from_millis(100);

/// Why the agent could not start or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The configuration cannot be mapped onto the client (a file it names is unusable...).
    #[error("{0}")]
    Setup(String),
    /// The MQTT client refused to start (bad settings, TLS files, the store).
    #[error("cannot start the MQTT client: {0}")]
    Client(ClientError),
    /// Another process holds the store.
    #[error("{error} (waited {}s for it)", STORE_LOCK_WAIT.as_secs())]
    Locked {
        /// The store directory.
        dir: String,
        /// The engine's error (names the holder's pid when known).
        error: spool_engine::Error,
    },
    /// A socket could not be bound.
    #[error(
        "cannot listen on {addr} ({what}): {source}; is another agent running, or change {key}"
    )]
    Bind {
        /// What the socket is for.
        what: &'static str,
        /// The configuration key of its address.
        key: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The local listener could not start.
    #[error("cannot start the local MQTT listener: {0}")]
    Listener(String),
}

impl AgentError {
    /// The engine error under this one, if any (the binary maps it to an exit code).
    pub fn engine(&self) -> Option<&spool_engine::Error> {
        match self {
            AgentError::Locked { error, .. } => Some(error),
            AgentError::Client(ClientError::Outbox(OutboxError::Store(e))) => Some(e),
            _ => None,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Everything held was delivered before the deadline.
    Drained,
    /// The deadline passed with messages still queued or in flight (they stay in the store).
    DeadlinePassed,
    /// A second signal cut the drain short (the messages stay in the store).
    Forced,
}

/// A running agent.
pub struct Agent {
    client: Client,
    ops: Arc<ops::AgentOps>,
    watcher: JoinHandle<()>,
    http: Option<Http>,
    listener: Option<ListenerHandle>,
    drain_timeout: Duration,
}

struct Http {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("http", &self.http.as_ref().map(|h| h.addr))
            .field("listener", &self.listener_addr())
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// Starts everything the configuration asks for. Must be called within a tokio runtime.
    pub async fn start(cfg: &AgentConfig) -> Result<Agent, AgentError> {
        let client_cfg = upstream::client_config(cfg)?;
        let client = start_client(client_cfg).await?;
        tracing::info!(
            store = %cfg.store.dir.display(),
            broker = %format!("{}:{}", cfg.upstream.host, cfg.upstream.effective_port()),
            client_id = cfg.upstream.client_id.as_deref().unwrap_or(""),
            "agent started"
        );

        let ops = Arc::new(ops::AgentOps::new(client.clone(), cfg.http.ready));
        let watcher = tokio::spawn(ops::watch(client.clone(), ops.clone()));

        let http = if cfg.http.enabled {
            match start_http(cfg.http.bind, ops.clone()).await {
                Ok(h) => Some(h),
                Err(e) => {
                    client.abort().await;
                    watcher.abort();
                    return Err(e);
                }
            }
        } else {
            None
        };

        let listener = if cfg.listener.enabled {
            match ListenerHandle::start(cfg, client.clone()).await {
                Ok(l) => {
                    ops.set_listener(l.stats_source());
                    Some(l)
                }
                Err(e) => {
                    if let Some(h) = http {
                        let _ = h.stop.send(());
                    }
                    client.abort().await;
                    watcher.abort();
                    return Err(e);
                }
            }
        } else {
            None
        };

        Ok(Agent {
            client,
            ops,
            watcher,
            http,
            listener,
            drain_timeout: cfg.upstream.drain_timeout,
        })
    }

    /// The HTTP endpoint's address (its port when `http.bind` had port 0).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|h| h.addr)
    }

    /// The local MQTT listener's address.
    pub fn listener_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().map(ListenerHandle::local_addr)
    }

    /// The client (for tests and the binary's start-up line).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs until `stop` resolves (the first SIGTERM/SIGINT), then stops: the listener at
    /// once, then a drain of the outbox up to the configured deadline, cut short when `force`
    /// resolves (a second signal).
    pub async fn run_until(
        self,
        stop: impl std::future::Future<Output = ()>,
        force: impl std::future::Future<Output = ()>,
    ) -> Stopped {
        stop.await;
        self.stop(force).await
    }

    /// Stops as [`Agent::run_until`] does once its `stop` resolved.
    pub async fn stop(mut self, force: impl std::future::Future<Output = ()>) -> Stopped {
        let deadline = self.drain_timeout;
        self.ops.set_stopping();
        if let Some(l) = self.listener.take() {
            l.shutdown().await;
            tracing::info!("local listener closed: no new local publishes");
        }
        let held = self
            .client
            .stats()
            .map(|s| s.outbox.depth)
            .unwrap_or_default();
        tracing::info!(
            held,
            deadline_ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
            "draining the outbox before exit"
        );
        let stopped = tokio::select! {
            drained = self.client.shutdown(deadline) => {
                if drained { Stopped::Drained } else { Stopped::DeadlinePassed }
            }
            () = force => {
                tracing::warn!("second signal: stopping at once (undelivered messages stay in the store)");
                self.client.abort().await;
                Stopped::Forced
            }
        };
        let left = self
            .client
            .stats()
            .map(|s| s.outbox.depth)
            .unwrap_or_default();
        match stopped {
            Stopped::Drained => tracing::info!("drained: everything was delivered"),
            Stopped::DeadlinePassed => tracing::warn!(
                left,
                "drain deadline passed; the rest stays in the store for the next start"
            ),
            Stopped::Forced => {}
        }
        if let Some(h) = self.http.take() {
            let _ = h.stop.send(());
            // A graceful stop waits for open connections (a scraper's keep-alive): bounded.
            let mut task = h.task;
            if tokio::time::timeout(HTTP_STOP_WAIT, &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
        self.watcher.abort();
        stopped
    }
}

/// Starts the client, waiting up to [`STORE_LOCK_WAIT`] for a store held by a short-lived
/// process (`spool publish`).
async fn start_client(cfg: spool_mqtt::ClientConfig) -> Result<Client, AgentError> {
    let until = tokio::time::Instant::now() + STORE_LOCK_WAIT;
    loop {
        match Client::start(cfg.clone()).await {
            Ok(c) => return Ok(c),
            Err(ClientError::Outbox(OutboxError::Store(
                e @ spool_engine::Error::Locked { .. },
            ))) => {
                if tokio::time::Instant::now() >= until {
                    return Err(AgentError::Locked {
                        dir: cfg.store_dir.display().to_string(),
                        error: e,
                    });
                }
                tokio::time::sleep(STORE_LOCK_RETRY).await;
            }
            Err(e) => return Err(AgentError::Client(e)),
        }
    }
}

async fn start_http(bind: SocketAddr, ops: Arc<ops::AgentOps>) -> Result<Http, AgentError> {
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|source| AgentError::Bind {
            what: "HTTP endpoint",
            key: "http.bind",
            addr: bind,
            source,
        })?;
    let addr = listener.local_addr().unwrap_or(bind);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(crate::ops::serve(listener, ops, async {
        let _ = stopped.await;
    }));
    tracing::info!(%addr, "HTTP endpoint: /health/live, /health/ready, /metrics, /stats");
    Ok(Http { addr, stop, task })
}

/// The local MQTT listener (`spool_mqtt::ingress`) with the downlink subscriptions. Held
/// behind a lock so that the metrics can read its counters while `stop` takes it out to shut it
/// down.
struct ListenerHandle {
    addr: SocketAddr,
    ingress: Arc<Mutex<Option<Ingress>>>,
}

impl ListenerHandle {
    async fn start(cfg: &AgentConfig, client: Client) -> Result<ListenerHandle, AgentError> {
        let l = &cfg.listener;
        let mut ic = IngressConfig::new(l.bind);
        ic.max_connections = l.max_connections as usize;
        ic.max_packet_size = u32::try_from(l.max_packet_size.0).unwrap_or(u32::MAX);
        ic.default_priority = cfg.outbox.default_priority;
        // The upstream QoS of a local QoS 0 PUBLISH ("messages that do not say").
        ic.default_qos = QoS::from_u8(cfg.outbox.default_qos).unwrap_or(QoS::AtLeastOnce);
        // "TTL of messages that do not say": a local PUBLISH without a message expiry.
        ic.default_ttl = (!cfg.outbox.default_ttl.is_zero()).then_some(cfg.outbox.default_ttl);
        for s in &cfg.subscriptions {
            ic = ic.subscribe(
                s.filter.clone(),
                QoS::from_u8(s.qos).unwrap_or(QoS::AtLeastOnce),
                s.queue.clone(),
            );
        }
        let ingress = Ingress::start(ic, client).await.map_err(|e| match e {
            IngressError::Bind { addr, source } => AgentError::Bind {
                what: "local MQTT listener",
                key: "listener.bind",
                addr,
                source,
            },
            e => AgentError::Listener(e.to_string()),
        })?;
        let addr = ingress.local_addr();
        tracing::info!(
            %addr,
            subscriptions = cfg.subscriptions.len(),
            "local MQTT listener started"
        );
        Ok(ListenerHandle {
            addr,
            ingress: Arc::new(Mutex::new(Some(ingress))),
        })
    }

    fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    fn stats_source(&self) -> ops::ListenerStats {
        let ingress = self.ingress.clone();
        Arc::new(move || {
            let guard = ingress.lock().unwrap_or_else(PoisonError::into_inner);
            guard
                .as_ref()
                .map(|i| ops::listener_metrics(&i.stats()))
                .unwrap_or_default()
        })
    }

    async fn shutdown(self) {
        let taken = self
            .ingress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(i) = taken {
            i.shutdown().await;
        }
    }
}
