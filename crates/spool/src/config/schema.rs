//! The agent's configuration as plain data: one struct per TOML section, every field with its
//! default (documented here, next to the field, and in the generated example file). Nothing in
//! here reads files or the environment; `load` fills these and `validate` checks them.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::units::{self, ByteSize};

/// Default store directory. The agent is a daemon: under systemd (`StateDirectory=spool` in
/// `packaging/`) its working directory is `/`, so the CLI's `./spool-data` would put the store
/// at `/spool-data`. `/var/lib` is where the FHS puts state that must survive a reboot.
pub const STORE_DIR_DEFAULT: &str = "/var/lib/spool";
/// MQTT over TCP (IANA).
pub const PORT_MQTT: u16 = 1883;
/// MQTT over TLS (IANA).
pub const PORT_MQTTS: u16 = 8883;
/// Default local listener: loopback only (it has no authentication), next to the broker's 1883
/// so that it is easy to remember and does not clash with a local Mosquitto.
pub const LISTENER_BIND_DEFAULT: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1884));
/// Default HTTP endpoint (health, metrics, stats): loopback, because it has no authentication;
/// 9184 echoes the listener's 1884 and lies in the range Prometheus exporters use.
pub const HTTP_BIND_DEFAULT: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9184));

/// The whole agent configuration (`agent.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    pub store: StoreConfig,
    pub upstream: UpstreamConfig,
    pub outbox: OutboxConfig,
    pub listener: ListenerConfig,
    pub subscriptions: Vec<Subscription>,
    pub http: HttpConfig,
    pub log: LogConfig,
}

/// `[store]`: where the durable store lives and when a write counts as done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Store directory (default [`STORE_DIR_DEFAULT`]). Relative paths in the file are relative
    /// to the file's directory; in an environment variable, to the working directory.
    pub dir: PathBuf,
    /// `sync` (default: acknowledged after fdatasync), `interval:<duration>`, or `none` (both
    /// acknowledged once written: a power cut can lose what was acknowledged since the last
    /// fdatasync). The MQTT client opens the store with it.
    pub durability: Durability,
    /// Free space kept on the store's file system for acks and checkpoints: a publish that
    /// would leave less is refused (nothing stored), so the outbox can always drain. 0 = off.
    pub min_free: ByteSize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from(STORE_DIR_DEFAULT),
            durability: Durability::Sync,
            min_free: ByteSize::mib(16),
        }
    }
}

/// When a stored message counts as durable; maps onto `spool_engine::Durability`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// After `fdatasync`: survives power loss. Default.
    #[default]
    Sync,
    /// After the write; `fdatasync` at most this long after. Power loss may lose that window.
    Interval(Duration),
    /// After the write; synced only when a segment is sealed and at close.
    None,
}

impl Durability {
    /// What may be written (quoted in error messages).
    pub const FORMS: &'static str =
        "\"sync\", \"none\" or \"interval:<duration>\" (e.g. \"interval:100ms\")";

    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "sync" => Ok(Self::Sync),
            "none" => Ok(Self::None),
            t => match t.strip_prefix("interval:") {
                Some(d) => units::parse_duration(d).map(Self::Interval),
                None => Err(format!("{s:?} is not a durability; use {}", Self::FORMS)),
            },
        }
    }

    /// The engine's durability option.
    pub fn to_engine(self) -> spool_engine::Durability {
        match self {
            Self::Sync => spool_engine::Durability::Sync,
            Self::Interval(d) => {
                spool_engine::Durability::Interval(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            }
            Self::None => spool_engine::Durability::None,
        }
    }
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sync => f.write_str("sync"),
            Self::Interval(d) => write!(f, "interval:{}", units::format_duration(*d)),
            Self::None => f.write_str("none"),
        }
    }
}

impl Serialize for Durability {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Durability {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d).map_err(|_| serde::de::Error::custom(Self::FORMS))?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A secret (the broker password). `Debug`, `Display` and `Serialize` all print `***`, so it
/// cannot leak through logs, `spool config check --json` or an error message;
/// [`Secret::expose`] is the one way to the value.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub const MASK: &'static str = "***";

    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(Self::MASK)
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(Self::MASK)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(Self::MASK)
    }
}

/// `[upstream]`: the broker everything is forwarded to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Broker host name or IP address. Required.
    pub host: String,
    /// Broker port; after loading always set: 1883, or 8883 when `tls.enabled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// MQTT protocol version.
    pub protocol: Protocol,
    /// Client id; after loading always set: default `spool-<hostname>` (stable across
    /// restarts, which a persistent session needs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// After loading, also holds the content of `password_file` (its last line end removed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// A file holding the password (e.g. a systemd credential); not together with `password`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Keep alive (whole seconds, 1s..=65535s); also how soon a half-open link is noticed.
    #[serde(with = "units::duration")]
    pub keepalive: Duration,
    /// Ask for a clean start at every connect (MQTT 5 Clean Start with session expiry 0, MQTT
    /// 3.1.1 Clean Session): the broker never resumes or keeps our session. Nothing in the
    /// outbox is lost, but QoS 2 in flight at a disconnect is published again and what the
    /// broker would have queued for our subscriptions while we were away is not kept. Default
    /// false.
    pub clean_start: bool,
    /// How long the broker keeps the session after a disconnect (MQTT 5; 3.1.1 brokers keep it
    /// until the next clean start; not used with `clean_start`). Default 1 day.
    #[serde(with = "units::duration")]
    pub session_expiry: Duration,
    /// Time allowed for TCP, TLS and CONNACK together.
    #[serde(with = "units::duration")]
    pub connect_timeout: Duration,
    /// Reconnect delays: exponential from `min` to `max`, full jitter.
    pub backoff: Backoff,
    /// After a DISCONNECT sent by the broker with reason "normal", reconnect at once instead
    /// of after the backoff. Default false (a broker that disconnects us on purpose, e.g. a
    /// client id taken over, must not be hammered).
    pub reconnect_immediately_after_clean_disconnect: bool,
    /// Messages in flight at most (also bounded by the broker's Receive Maximum).
    pub window: u32,
    /// On SIGTERM/SIGINT: how long the agent keeps delivering what it holds before it exits
    /// (nothing is lost after that either: the outbox is durable). Default
    /// [`DRAIN_TIMEOUT_DEFAULT`]; the systemd unit's `TimeoutStopSec` must be longer.
    #[serde(with = "units::duration")]
    pub drain_timeout: Duration,
    pub tls: Tls,
}

/// Default drain deadline at SIGTERM: long enough to empty a window of in-flight messages over
/// a slow link, short enough for a reboot not to wait on it (systemd's `TimeoutStopSec` in
/// `packaging/spool-agent.service` is 30 s).
pub const DRAIN_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// The session's default window (`spool_mqtt::session::WINDOW_DEFAULT`): enough to keep a
/// 50 ms RTT link busy at a few thousand messages/s, small enough that a reconnect resends little.
pub const WINDOW_DEFAULT: u32 = 256;
/// The largest window: packet ids are 16 bits and shared with SUBSCRIBE/UNSUBSCRIBE
/// (`spool_mqtt::session::WINDOW_MAX`).
pub const WINDOW_MAX: u32 = 65_000;

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            host: String::new(),
            port: None,
            protocol: Protocol::V5,
            client_id: None,
            username: None,
            password: None,
            password_file: None,
            keepalive: Duration::from_secs(30),
            clean_start: false,
            session_expiry: Duration::from_secs(24 * 3600),
            connect_timeout: Duration::from_secs(10),
            backoff: Backoff::default(),
            reconnect_immediately_after_clean_disconnect: false,
            window: WINDOW_DEFAULT,
            drain_timeout: DRAIN_TIMEOUT_DEFAULT,
            tls: Tls::default(),
        }
    }
}

impl UpstreamConfig {
    /// The port to connect to: the configured one, else the protocol's default.
    pub fn effective_port(&self) -> u16 {
        self.port.unwrap_or(if self.tls.enabled {
            PORT_MQTTS
        } else {
            PORT_MQTT
        })
    }
}

/// MQTT protocol version. Default 5: session expiry, Receive Maximum and reason codes are
/// what the store-and-forward guarantees lean on; "3.1.1" for brokers that lack 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Protocol {
    #[serde(rename = "3.1.1")]
    V311,
    #[default]
    #[serde(rename = "5")]
    V5,
}

/// `[upstream.backoff]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Backoff {
    #[serde(with = "units::duration")]
    pub min: Duration,
    #[serde(with = "units::duration")]
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            min: Duration::from_secs(1),
            max: Duration::from_secs(120),
        }
    }
}

/// `[upstream.tls]`. There is deliberately no option to skip certificate verification.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tls {
    pub enabled: bool,
    /// CA certificates (PEM) to trust; unset: the system's trust store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) for mutual TLS; needs `key_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS; needs `cert_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Name to verify the broker's certificate against and send as SNI; unset: `upstream.host`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

/// `[outbox]`: the durable queue of messages waiting for the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxConfig {
    /// Capacity in bytes; 0 = unlimited (then only the disk limits it).
    pub max_bytes: ByteSize,
    /// Capacity in messages; 0 = unlimited.
    pub max_messages: u64,
    /// What a full outbox does with a new message.
    pub overflow: Overflow,
    pub default_qos: u8,
    /// 0..=255, higher is sent first (the engine's rule).
    pub default_priority: u8,
    /// 0 = messages do not expire.
    #[serde(with = "units::duration")]
    pub default_ttl: Duration,
    /// What happens to a message whose TTL passed before it was sent.
    pub expired: Expired,
    pub bulk: Bulk,
}

/// Default outbox capacity: bounded, so that a long outage cannot fill an SD card and starve
/// the rest of the device, and large enough for a day of 100-byte messages at 25/s.
pub const OUTBOX_MAX_BYTES_DEFAULT: ByteSize = ByteSize::mib(256);
/// The longest TTL the engine accepts.
pub const TTL_MAX: Duration = Duration::from_secs(30 * 24 * 3600);

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            max_bytes: OUTBOX_MAX_BYTES_DEFAULT,
            max_messages: 0,
            overflow: Overflow::Reject,
            default_qos: 1,
            default_priority: 0,
            default_ttl: Duration::ZERO,
            expired: Expired::Drop,
            bulk: Bulk::default(),
        }
    }
}

/// What a full outbox does. Default `reject`: nothing stored is ever dropped unless asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Overflow {
    #[default]
    Reject,
    EvictLowestPriority,
}

/// What happens to a message whose TTL passed before it was sent; maps onto
/// `spool_mqtt::ExpiredPolicy`. Default `drop` (and counted, reason `expired`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Expired {
    #[default]
    Drop,
    /// Send it anyway, late (without an MQTT 5 message expiry interval); nothing is dropped
    /// for its TTL, in the store or later.
    Send,
}

/// `[outbox.bulk]`: several records packed into one MQTT message on slow links.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Bulk {
    pub mode: BulkMode,
    /// Records per pack at most.
    pub max_records: u32,
    /// Bytes per pack at most (payloads and framing).
    pub max_bytes: ByteSize,
    pub when: BulkWhen,
    /// With `when = "backlog"`: pack only while more than this many messages wait.
    pub min_backlog: u64,
    /// Appended to the records' topic for a pack (empty: the same topic).
    pub topic_suffix: String,
}

impl Default for Bulk {
    fn default() -> Self {
        Self {
            mode: BulkMode::Off,
            max_records: 100,
            max_bytes: ByteSize::kib(64),
            when: BulkWhen::Backlog,
            min_backlog: 1000,
            topic_suffix: String::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BulkMode {
    #[default]
    Off,
    /// One JSON array of the payloads (each must be JSON).
    JsonArray,
    /// The payloads, one per line.
    Ndjson,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BulkWhen {
    Always,
    /// Only while the backlog is above `min_backlog` (catching up after an outage).
    #[default]
    Backlog,
}

/// `[listener]`: the local MQTT ingress for unmodified applications.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerConfig {
    pub enabled: bool,
    pub bind: SocketAddr,
    /// Accept a bind address other than loopback. The listener has no authentication and no
    /// TLS: anyone who reaches it can publish through the agent.
    pub allow_remote: bool,
    pub max_connections: u32,
    /// Largest MQTT packet accepted from a local client.
    pub max_packet_size: ByteSize,
}

/// The largest packet MQTT can encode (remaining length 268,435,455 plus the fixed header).
pub const MQTT_PACKET_MAX: u64 = 268_435_460;

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bind: LISTENER_BIND_DEFAULT,
            allow_remote: false,
            max_connections: 64,
            // As the session's INCOMING_PACKET_BYTES_DEFAULT: an edge device must not be made
            // to buffer MQTT's 256 MiB maximum.
            max_packet_size: ByteSize::mib(1),
        }
    }
}

/// One `[[subscriptions]]` entry: an upstream filter whose messages go to a durable inbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Subscription {
    /// Topic filter, `+` and `#` wildcards allowed. Required.
    pub filter: String,
    pub qos: u8,
    /// The engine queue the messages are written to before the broker gets its ack.
    pub queue: String,
}

/// Default inbox queue of a subscription.
pub const INBOX_DEFAULT: &str = "inbox";

impl Default for Subscription {
    fn default() -> Self {
        Self {
            filter: String::new(),
            qos: 1,
            queue: INBOX_DEFAULT.into(),
        }
    }
}

/// `[http]`: `/health/live`, `/health/ready`, `/metrics`, `/stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub enabled: bool,
    pub bind: SocketAddr,
    pub ready: Ready,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bind: HTTP_BIND_DEFAULT,
            ready: Ready::default(),
        }
    }
}

/// `[http.ready]`: when `/health/ready` answers 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ready {
    /// Not ready once disconnected from the broker this long; 0 = never for this reason.
    #[serde(with = "units::duration")]
    pub disconnected_for: Duration,
    /// Not ready while the outbox holds more than this many messages; 0 = off.
    pub outbox_high_water_messages: u64,
    /// Not ready while the outbox holds more than this many bytes; 0 = off.
    pub outbox_high_water_bytes: ByteSize,
}

impl Default for Ready {
    fn default() -> Self {
        Self {
            disconnected_for: Duration::from_secs(300),
            outbox_high_water_messages: 0,
            outbox_high_water_bytes: ByteSize(0),
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A level (`error`, `warn`, `info`, `debug`, `trace`) or comma-separated
    /// `target=level` directives, as tracing's `EnvFilter` reads them.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}
