//! What the agent reports on its HTTP endpoint (`crate::ops`): readiness with a reason,
//! Prometheus metrics and the `/stats` document, all read from the client's [`ClientStats`]
//! (and the local listener's counters) when a request comes in.
//!
//! Readiness needs "disconnected since when", which a snapshot does not say: [`watch`]
//! follows the client's events (and looks at its state a few times a second, so that a
//! lagging event receiver cannot leave a stale answer) and records when the link went down.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use spool_mqtt::ingress::IngressStats;
use spool_mqtt::{Client, ClientStats, LinkState};

use crate::config::{units::format_duration, Ready};
use crate::ops::prom::PromText;
use crate::ops::OpsSource;

/// How often [`watch`] looks at the connection state between events.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// One counter or gauge of the local listener, by name (without the `spool_listener_` prefix).
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerMetric {
    /// Metric name after `spool_listener_` (`_total` included for counters).
    pub name: &'static str,
    /// Help text.
    pub help: &'static str,
    /// Counter (monotonic) or gauge.
    pub counter: bool,
    /// One label, if any (`("qos", "1")`).
    pub label: Option<(&'static str, &'static str)>,
    /// Value.
    pub value: u64,
}

/// The listener's counters as metrics.
pub fn listener_metrics(s: &IngressStats) -> Vec<ListenerMetric> {
    let m = |name, help, counter, value| ListenerMetric {
        name,
        help,
        counter,
        label: None,
        value,
    };
    let mut v = vec![
        m(
            "connections",
            "Local MQTT connections open now.",
            false,
            s.connections as u64,
        ),
        m(
            "connections_total",
            "Local MQTT connections accepted.",
            true,
            s.connections_total,
        ),
        m(
            "connections_refused_total",
            "Local connections refused (too many, bad protocol version, bad CONNECT).",
            true,
            s.connections_refused,
        ),
    ];
    for (qos, n) in ["0", "1", "2"].into_iter().zip(s.publishes_received) {
        v.push(ListenerMetric {
            name: "publishes_received_total",
            help: "PUBLISH packets received from local clients, by QoS (resends included).",
            counter: true,
            label: Some(("qos", qos)),
            value: n,
        });
    }
    v.extend([
        m(
            "stored_total",
            "Local PUBLISHes stored durably in the outbox (then acknowledged).",
            true,
            s.stored,
        ),
        m(
            "store_failures_total",
            "Local PUBLISHes the outbox refused or failed to store (not acknowledged).",
            true,
            s.store_failures,
        ),
        m(
            "oversize_closed_total",
            "Local connections closed for a packet over listener.max_packet_size.",
            true,
            s.oversize_closed,
        ),
        m(
            "downlink_received_total",
            "Upstream messages written to an inbox queue (then acked to the broker).",
            true,
            s.downlink_received,
        ),
        m(
            "downlink_store_failures_total",
            "Inbox writes that failed (the broker sends the message again).",
            true,
            s.downlink_store_failures,
        ),
        m(
            "downlink_delivered_total",
            "Inbox messages delivered to every matching local subscriber.",
            true,
            s.downlink_delivered,
        ),
        m(
            "downlink_pending",
            "Messages waiting in the inbox queues.",
            false,
            s.downlink_pending,
        ),
    ]);
    v
}

/// Reads the local listener's counters (set once the listener started).
pub type ListenerStats = Arc<dyn Fn() -> Vec<ListenerMetric> + Send + Sync>;

/// The agent's [`OpsSource`].
pub struct AgentOps {
    client: Client,
    ready: Ready,
    link: Mutex<Link>,
    listener: Mutex<Option<ListenerStats>>,
    started: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Link {
    /// When the link was last seen going down (or the start, before the first connect);
    /// `None` while connected.
    down_since: Option<Instant>,
    stopping: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl AgentOps {
    /// A source over `client`, ready per `ready`.
    pub fn new(client: Client, ready: Ready) -> AgentOps {
        AgentOps {
            client,
            ready,
            link: Mutex::new(Link {
                down_since: Some(Instant::now()),
                stopping: false,
            }),
            listener: Mutex::new(None),
            started: Instant::now(),
        }
    }

    /// Adds the listener's counters to the reports.
    pub fn set_listener(&self, stats: ListenerStats) {
        *lock(&self.listener) = Some(stats);
    }

    /// The agent is stopping: not ready from now on.
    pub fn set_stopping(&self) {
        lock(&self.link).stopping = true;
    }

    /// Records the connection state seen now.
    fn observe(&self, state: LinkState, now: Instant) {
        let mut l = lock(&self.link);
        match state {
            LinkState::Connected => l.down_since = None,
            _ => {
                if l.down_since.is_none() {
                    l.down_since = Some(now);
                }
            }
        }
    }

    /// How long the link has been down (zero while connected).
    fn down_for(&self, now: Instant) -> Option<Duration> {
        lock(&self.link)
            .down_since
            .map(|t| now.saturating_duration_since(t))
    }

    fn listener_metrics(&self) -> Vec<ListenerMetric> {
        let f = lock(&self.listener).clone();
        f.map(|f| f()).unwrap_or_default()
    }

    /// Why the agent is not ready, given a stats snapshot (`None`: ready).
    fn reason(&self, stats: &ClientStats, now: Instant) -> Option<String> {
        let link = *lock(&self.link);
        if link.stopping {
            return Some("the agent is stopping (draining the outbox)".into());
        }
        let mut why = Vec::new();
        let threshold = self.ready.disconnected_for;
        if stats.state != LinkState::Connected && !threshold.is_zero() {
            let down = link
                .down_since
                .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
            if down >= threshold {
                let mut s = format!(
                    "disconnected from the broker for {} (more than http.ready.disconnected_for = {})",
                    format_duration(round_ms(down)),
                    format_duration(threshold)
                );
                if let Some(e) = &stats.last_error {
                    let _ = write!(s, "; last error: {e}");
                }
                why.push(s);
            }
        }
        let hw = self.ready.outbox_high_water_messages;
        if hw > 0 && stats.outbox.depth > hw {
            why.push(format!(
                "the outbox holds {} messages (more than http.ready.outbox_high_water_messages = {hw})",
                stats.outbox.depth
            ));
        }
        let hwb = self.ready.outbox_high_water_bytes;
        if hwb.0 > 0 && stats.outbox.bytes > hwb.0 {
            why.push(format!(
                "the outbox holds {} bytes (more than http.ready.outbox_high_water_bytes = {hwb})",
                stats.outbox.bytes
            ));
        }
        (!why.is_empty()).then(|| why.join("; "))
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Follows the client's connection state into `ops` until the client closes.
pub async fn watch(client: Client, ops: Arc<AgentOps>) {
    let mut events = client.events();
    loop {
        tokio::select! {
            ev = events.recv() => {
                if matches!(ev, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                    return;
                }
            }
            () = tokio::time::sleep(WATCH_INTERVAL) => {}
        }
        match client.stats() {
            Ok(s) => {
                if s.state == LinkState::Closed {
                    return;
                }
                ops.observe(s.state, Instant::now());
            }
            Err(e) => tracing::debug!("stats: {e}"),
        }
    }
}

fn state_name(s: LinkState) -> &'static str {
    match s {
        LinkState::Disconnected => "disconnected",
        LinkState::Connecting => "connecting",
        LinkState::Connected => "connected",
        LinkState::Closed => "closed",
    }
}

const STATES: [LinkState; 4] = [
    LinkState::Disconnected,
    LinkState::Connecting,
    LinkState::Connected,
    LinkState::Closed,
];

/// The metric names `/metrics` writes (documented in the README; a test checks both).
pub const METRIC_NAMES: &[&str] = &[
    "spool_up",
    "spool_ready",
    "spool_uptime_seconds",
    "spool_mqtt_connected",
    "spool_mqtt_connection_state",
    "spool_mqtt_disconnected_seconds",
    "spool_mqtt_connects_total",
    "spool_mqtt_reconnects_total",
    "spool_mqtt_connection_errors_total",
    "spool_mqtt_in_flight",
    "spool_mqtt_held",
    "spool_mqtt_published_total",
    "spool_mqtt_acked_total",
    "spool_mqtt_possible_duplicates_total",
    "spool_mqtt_deferred_total",
    "spool_mqtt_dropped_total",
    "spool_mqtt_ack_round_trip_seconds",
    "spool_outbox_messages",
    "spool_outbox_bytes",
    "spool_outbox_oldest_age_seconds",
    "spool_outbox_dead_letter_messages",
    "spool_outbox_pushed_total",
];

/// The metric names the local listener adds when it runs.
pub const LISTENER_METRIC_NAMES: &[&str] = &[
    "spool_listener_connections",
    "spool_listener_connections_total",
    "spool_listener_connections_refused_total",
    "spool_listener_publishes_received_total",
    "spool_listener_stored_total",
    "spool_listener_store_failures_total",
    "spool_listener_oversize_closed_total",
    "spool_listener_downlink_received_total",
    "spool_listener_downlink_store_failures_total",
    "spool_listener_downlink_delivered_total",
    "spool_listener_downlink_pending",
];

impl OpsSource for AgentOps {
    fn not_ready(&self) -> Option<String> {
        match self.client.stats() {
            Ok(s) => {
                self.observe(s.state, Instant::now());
                self.reason(&s, Instant::now())
            }
            Err(e) => Some(format!("cannot read the client's statistics: {e}")),
        }
    }

    fn metrics(&self, out: &mut PromText) {
        let now = Instant::now();
        out.gauge("spool_up", "1 while the agent runs.", &[], 1.0);
        out.gauge(
            "spool_uptime_seconds",
            "Seconds since the agent started.",
            &[],
            self.started.elapsed().as_secs_f64(),
        );
        let stats = match self.client.stats() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("metrics: cannot read the client's statistics: {e}");
                out.gauge("spool_ready", "1 when /health/ready answers 200.", &[], 0.0);
                return;
            }
        };
        self.observe(stats.state, now);
        let ready = self.reason(&stats, now).is_none();
        out.gauge(
            "spool_ready",
            "1 when /health/ready answers 200.",
            &[],
            f64::from(u8::from(ready)),
        );
        out.gauge(
            "spool_mqtt_connected",
            "1 while connected to the broker (CONNACK accepted).",
            &[],
            f64::from(u8::from(stats.state == LinkState::Connected)),
        );
        for s in STATES {
            out.gauge(
                "spool_mqtt_connection_state",
                "The connection state: 1 for the current one.",
                &[("state", state_name(s))],
                f64::from(u8::from(stats.state == s)),
            );
        }
        out.gauge(
            "spool_mqtt_disconnected_seconds",
            "Seconds since the link to the broker went down; 0 while connected.",
            &[],
            self.down_for(now).unwrap_or_default().as_secs_f64(),
        );
        out.counter(
            "spool_mqtt_connects_total",
            "Connections accepted by the broker.",
            &[],
            stats.connects,
        );
        out.counter(
            "spool_mqtt_reconnects_total",
            "Connections after the first one.",
            &[],
            stats.reconnects,
        );
        out.counter(
            "spool_mqtt_connection_errors_total",
            "Failed connection attempts and lost connections.",
            &[],
            stats.connection_errors,
        );
        out.gauge(
            "spool_mqtt_in_flight",
            "QoS 1/2 messages sent and not yet acknowledged by the broker.",
            &[],
            stats.in_flight as f64,
        );
        out.gauge(
            "spool_mqtt_held",
            "Messages held by the session (in flight or waiting for the window).",
            &[],
            stats.held as f64,
        );
        out.counter(
            "spool_mqtt_published_total",
            "Messages stored in the outbox through this agent since it started.",
            &[],
            stats.published,
        );
        out.counter(
            "spool_mqtt_acked_total",
            "Messages acknowledged by the broker and removed since the agent started.",
            &[],
            stats.acked,
        );
        out.counter(
            "spool_mqtt_possible_duplicates_total",
            "Messages sent again after they may already have reached subscribers.",
            &[],
            stats.possible_duplicates,
        );
        out.counter(
            "spool_mqtt_deferred_total",
            "Messages the broker turned away for now (quota exceeded), kept and sent again.",
            &[],
            stats.deferred_by_broker,
        );
        let d = stats.dropped;
        for (reason, n) in [
            ("expired", d.expired),
            ("evicted", d.evicted),
            ("rejected_full", d.rejected_full),
            ("rejected_by_broker", d.rejected_by_broker),
            ("malformed", d.malformed),
        ] {
            out.counter(
                "spool_mqtt_dropped_total",
                "Messages dropped or refused, by reason.",
                &[("reason", reason)],
                n,
            );
        }
        for (qos, h) in [("1", &stats.ack_qos1), ("2", &stats.ack_qos2)] {
            out.histogram(
                "spool_mqtt_ack_round_trip_seconds",
                "From a PUBLISH written to the broker to its PUBACK (QoS 1) or PUBCOMP (QoS 2).",
                &[("qos", qos)],
                &h.cumulative(),
                h.sum_us as f64 / 1e6,
                h.count(),
            );
        }
        let o = &stats.outbox;
        out.gauge(
            "spool_outbox_messages",
            "Messages in the outbox (waiting, in flight). Not split by priority: the client reports totals.",
            &[],
            o.depth as f64,
        );
        out.gauge(
            "spool_outbox_bytes",
            "Bytes in the outbox.",
            &[],
            o.bytes as f64,
        );
        out.gauge(
            "spool_outbox_oldest_age_seconds",
            "Age of the oldest message in the outbox.",
            &[],
            o.oldest_age_ms as f64 / 1000.0,
        );
        out.gauge(
            "spool_outbox_dead_letter_messages",
            "Messages refused by the broker or unreadable, kept in the dead-letter queue.",
            &[],
            o.dead as f64,
        );
        out.counter(
            "spool_outbox_pushed_total",
            "Messages stored in the outbox since the store was created.",
            &[],
            o.pushed,
        );
        for m in self.listener_metrics() {
            let name = format!("spool_listener_{}", m.name);
            let labels: Vec<(&str, &str)> = m.label.into_iter().collect();
            if m.counter {
                out.counter(&name, m.help, &labels, m.value);
            } else {
                out.gauge(&name, m.help, &labels, m.value as f64);
            }
        }
    }

    fn stats(&self) -> Value {
        let now = Instant::now();
        let mut doc = match self.client.stats() {
            Ok(s) => {
                self.observe(s.state, now);
                client_json(&s, self.down_for(now), self.reason(&s, now))
            }
            Err(e) => json!({ "error": e.to_string() }),
        };
        let listener = self.listener_metrics();
        doc["listener"] = if lock(&self.listener).is_some() {
            let mut m = serde_json::Map::new();
            for x in listener {
                let key = x.name.trim_end_matches("_total");
                match x.label {
                    // Labelled counters become an object: {"publishes_received": {"0": n, ..}}.
                    Some((_, l)) => {
                        let e = m.entry(key.to_owned()).or_insert_with(|| json!({}));
                        e[l] = x.value.into();
                    }
                    None => {
                        m.insert(key.to_owned(), x.value.into());
                    }
                }
            }
            Value::Object(m)
        } else {
            Value::Null
        };
        doc["uptime_s"] = self.started.elapsed().as_secs().into();
        doc
    }
}

fn client_json(s: &ClientStats, down_for: Option<Duration>, not_ready: Option<String>) -> Value {
    let d = s.dropped;
    let o = &s.outbox;
    json!({
        "ready": not_ready.is_none(),
        "not_ready_reason": not_ready,
        "connection": {
            "state": state_name(s.state),
            "disconnected_ms": down_for.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            "connects": s.connects,
            "reconnects": s.reconnects,
            "errors": s.connection_errors,
            "last_error": s.last_error.as_ref().map(ToString::to_string),
        },
        "in_flight": s.in_flight,
        "held": s.held,
        "published": s.published,
        "acked": s.acked,
        "possible_duplicates": s.possible_duplicates,
        "dropped": {
            "expired": d.expired,
            "evicted": d.evicted,
            "rejected_full": d.rejected_full,
            "rejected_by_broker": d.rejected_by_broker,
            "malformed": d.malformed,
        },
        "outbox": {
            "messages": o.depth,
            "bytes": o.bytes,
            "oldest_age_ms": o.oldest_age_ms,
            "pushed": o.pushed,
            "dead_letter": o.dead,
        },
    })
}
