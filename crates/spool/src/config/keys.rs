//! The table of every configuration key: its dotted path, its type (what the file and the
//! environment may hold), a one-line explanation. This table is what finds unknown keys (and the
//! closest valid one), turns environment strings into typed values, type-checks every value
//! before serde sees it (so that all bad values are reported, not the first), and writes the
//! example file. A unit test keeps it and the serde structs in `schema.rs` in step.

use toml::Value;

use super::schema::{Durability, WINDOW_MAX};
use super::units::{self, DURATION_FORMS, SIZE_FORMS};

/// What a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    Str,
    Path,
    Bool,
    /// An integer in `min..=max`.
    Int {
        min: i64,
        max: i64,
    },
    Duration,
    Size,
    Durability,
    SocketAddr,
    OneOf(&'static [&'static str]),
}

impl Ty {
    /// What is allowed, for error messages ("must be ...").
    pub fn allowed(self) -> String {
        match self {
            Ty::Str => "a string".into(),
            Ty::Path => "a file path (a string)".into(),
            Ty::Bool => "true or false".into(),
            Ty::Int { min, max } => format!("an integer in {min}..={max}"),
            Ty::Duration => DURATION_FORMS.into(),
            Ty::Size => SIZE_FORMS.into(),
            Ty::Durability => Durability::FORMS.into(),
            Ty::SocketAddr => {
                "an IP address and port such as \"127.0.0.1:1884\" or \"[::1]:1884\"".into()
            }
            Ty::OneOf(vs) => {
                let quoted: Vec<String> = vs.iter().map(|v| format!("{v:?}")).collect();
                format!("one of {}", quoted.join(", "))
            }
        }
    }

    /// Checks a value's type (and the range of an integer). `Err(Some(hint))` carries the
    /// parser's reason when it says more than [`Ty::allowed`].
    pub fn check(self, v: &Value) -> Result<(), Option<String>> {
        let ok = match (self, v) {
            (Ty::Str | Ty::Path, Value::String(_)) | (Ty::Bool, Value::Boolean(_)) => true,
            (Ty::Int { min, max }, Value::Integer(n)) => (min..=max).contains(n),
            (Ty::Duration, Value::String(s)) => {
                return units::parse_duration(s).map(drop).map_err(Some)
            }
            (Ty::Size, Value::Integer(n)) => *n >= 0,
            (Ty::Size, Value::String(s)) => return units::parse_size(s).map(drop).map_err(Some),
            (Ty::Durability, Value::String(s)) => {
                return Durability::parse(s).map(drop).map_err(Some)
            }
            (Ty::SocketAddr, Value::String(s)) => s.parse::<std::net::SocketAddr>().is_ok(),
            (Ty::OneOf(vs), Value::String(s)) => vs.contains(&s.as_str()),
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(None)
        }
    }

    /// The value an environment variable stands for: the same rules as the file, where the
    /// file's quotes are implied by the key's type (`SPOOL_UPSTREAM__PORT=8883` is an integer,
    /// `SPOOL_UPSTREAM__CLIENT_ID=1234` a string).
    pub fn from_env(self, s: &str) -> Value {
        let fallback = || Value::String(s.to_owned());
        match self {
            Ty::Bool => match s {
                "true" => Value::Boolean(true),
                "false" => Value::Boolean(false),
                _ => fallback(),
            },
            Ty::Int { .. } => s.trim().parse().map_or_else(|_| fallback(), Value::Integer),
            Ty::Size if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                s.parse().map_or_else(|_| fallback(), Value::Integer)
            }
            _ => fallback(),
        }
    }
}

/// One configuration key.
#[derive(Debug, Clone, Copy)]
pub struct KeyDef {
    /// Dotted path; keys of `[[subscriptions]]` entries are `subscriptions.<key>`.
    pub path: &'static str,
    pub ty: Ty,
    /// One line for the example file.
    pub doc: &'static str,
    /// TOML text shown in the example for a key with no default (commented out), or for a
    /// required key (as the value).
    pub sample: Option<&'static str>,
    /// Masked in errors and output.
    pub secret: bool,
}

impl KeyDef {
    const fn new(path: &'static str, ty: Ty, doc: &'static str) -> Self {
        Self {
            path,
            ty,
            doc,
            sample: None,
            secret: false,
        }
    }

    const fn sample(mut self, toml: &'static str) -> Self {
        self.sample = Some(toml);
        self
    }

    const fn secret(mut self) -> Self {
        self.secret = true;
        self
    }

    /// The environment variable that overrides this key (`SPOOL_UPSTREAM__TLS__CA_FILE`;
    /// subscription keys take an index: `SPOOL_SUBSCRIPTIONS__0__FILTER`).
    pub fn env_var(&self) -> String {
        let mut s = String::from("SPOOL");
        for (i, seg) in self.path.split('.').enumerate() {
            s.push_str("__");
            s.push_str(&seg.to_ascii_uppercase());
            if i == 0 && self.path.starts_with("subscriptions.") {
                s.push_str("__0");
            }
        }
        s.replacen("SPOOL__", "SPOOL_", 1)
    }
}

const fn int(min: i64, max: i64) -> Ty {
    Ty::Int { min, max }
}

/// Sections, in file order, with a one-line explanation (written above the section in the
/// example). `subscriptions` is an array of tables.
pub const SECTIONS: &[(&str, &str)] = &[
    ("store", "The durable store on this device."),
    ("upstream", "The MQTT broker everything is forwarded to."),
    ("upstream.backoff", "Reconnect delays: exponential from min to max, with full jitter."),
    ("upstream.tls", "TLS to the broker (rustls). There is no option to skip certificate checks."),
    ("outbox", "Messages waiting for the broker. Limits of 0 mean unlimited."),
    ("outbox.bulk", "Several records packed into one MQTT message on slow links."),
    ("listener", "Local MQTT listener: unmodified applications publish through it."),
    (
        "subscriptions",
        "Downlink: messages on these upstream topic filters are written to a durable inbox queue\nbefore the broker gets its ack. One [[subscriptions]] block per filter; none by default.",
    ),
    ("http", "Health, metrics and stats: /health/live, /health/ready, /metrics, /stats."),
    ("http.ready", "When /health/ready answers 503. 0 turns a check off."),
    ("log", "Logging."),
];

/// Array-of-tables sections.
pub const ARRAY_SECTIONS: &[&str] = &["subscriptions"];

/// Every key, in file order (a section's own keys before its subsections).
pub const KEYS: &[KeyDef] = &[
    KeyDef::new("store.dir", Ty::Path, "Store directory, owned by one process (relative: to this file's directory)."),
    KeyDef::new("store.min_free", Ty::Size, "Free space kept on the store's file system for acks and checkpoints: a publish that would\nleave less is refused (v5 clients: PUBACK \"quota exceeded\"), so the backlog can always drain; 0 = off."),
    KeyDef::new("store.durability", Ty::Durability, "\"sync\": a message counts as stored (the listener's PUBACK) after fdatasync;\n\"interval:100ms\": once written, fdatasync at most that late; \"none\": once written.\nNot \"sync\": a PUBACK does not mean \"on disk\" (a power cut can lose up to the interval)."),
    KeyDef::new("upstream.host", Ty::Str, "Broker host name or IP address (required).").sample("\"localhost\""),
    KeyDef::new("upstream.port", Ty::Int { min: 1, max: 65_535 }, "Broker port; default 1883, or 8883 when TLS is enabled.").sample("1883"),
    KeyDef::new("upstream.protocol", Ty::OneOf(&["3.1.1", "5"]), "MQTT version: \"5\" or \"3.1.1\"."),
    KeyDef::new("upstream.client_id", Ty::Str, "Client id; default \"spool-<hostname>\" (stable, as a persistent session needs).").sample("\"spool-gateway-17\""),
    KeyDef::new("upstream.username", Ty::Str, "User name, if the broker wants one.").sample("\"device-17\""),
    KeyDef::new("upstream.password", Ty::Str, "Password (prefer password_file, which keeps it out of this file).").sample("\"secret\"").secret(),
    KeyDef::new("upstream.password_file", Ty::Path, "File holding the password (e.g. a systemd credential); its last line end is ignored.").sample("\"/etc/spool/password\""),
    KeyDef::new("upstream.keepalive", Ty::Duration, "Keep alive, 1s..=65535s in whole seconds: how soon a half-open link is noticed."),
    KeyDef::new("upstream.clean_start", Ty::Bool, "Start a new session at every connect; the broker keeps none (MQTT 5 session expiry 0).\nNothing stored is lost, but QoS 2 in flight is sent again, and nothing is queued for us offline."),
    KeyDef::new("upstream.session_expiry", Ty::Duration, "How long the broker keeps our session after a disconnect (MQTT 5; not used with clean_start)."),
    KeyDef::new("upstream.connect_timeout", Ty::Duration, "Time allowed for TCP, TLS and CONNACK together."),
    KeyDef::new("upstream.reconnect_immediately_after_clean_disconnect", Ty::Bool, "Reconnect at once (not after the backoff) when the broker disconnects us normally."),
    KeyDef::new("upstream.window", int(1, WINDOW_MAX as i64), "Messages in flight at most (the broker's Receive Maximum may lower it; with protocol 3.1.1, which has none, at most 20: Mosquitto's default)."),
    KeyDef::new("upstream.drain_timeout", Ty::Duration, "On SIGTERM: how long to keep delivering before exiting (nothing is lost either way)."),
    KeyDef::new("upstream.backoff.min", Ty::Duration, "First reconnect delay (upper bound of the jitter)."),
    KeyDef::new("upstream.backoff.max", Ty::Duration, "Largest reconnect delay."),
    KeyDef::new("upstream.tls.enabled", Ty::Bool, "Connect with TLS."),
    KeyDef::new("upstream.tls.ca_file", Ty::Path, "CA certificates (PEM) to trust; default: the system's trust store.").sample("\"/etc/spool/ca.pem\""),
    KeyDef::new("upstream.tls.cert_file", Ty::Path, "Client certificate (PEM) for mutual TLS; needs key_file.").sample("\"/etc/spool/client.pem\""),
    KeyDef::new("upstream.tls.key_file", Ty::Path, "Client private key (PEM) for mutual TLS; needs cert_file.").sample("\"/etc/spool/client.key\""),
    KeyDef::new("upstream.tls.server_name", Ty::Str, "Name checked against the broker's certificate and sent as SNI; default: host.").sample("\"broker.example.com\""),
    KeyDef::new("outbox.max_bytes", Ty::Size, "Capacity in bytes; 0 = unlimited (then only the disk limits it)."),
    KeyDef::new("outbox.max_messages", Ty::Int { min: 0, max: i64::MAX }, "Capacity in messages; 0 = unlimited."),
    KeyDef::new("outbox.overflow", Ty::OneOf(&["reject", "evict-lowest-priority"]), "When full: \"reject\" new messages, or \"evict-lowest-priority\" (counted)."),
    KeyDef::new("outbox.default_qos", int(0, 2), "QoS of messages that do not say (0, 1 or 2)."),
    KeyDef::new("outbox.default_priority", int(0, 255), "Priority of messages that do not say (0..=255, higher is sent first)."),
    KeyDef::new("outbox.default_ttl", Ty::Duration, "TTL of messages that do not say (spool publish without --ttl, a local PUBLISH without an MQTT 5 message expiry); 0 = never expire; at most 30d."),
    KeyDef::new("outbox.expired", Ty::OneOf(&["drop", "send"]), "A message whose TTL passed before it was sent: \"drop\" it (counted),\nor \"send\" it late (never dropped; sent without an MQTT 5 message expiry)."),
    KeyDef::new("outbox.bulk.mode", Ty::OneOf(&["off", "json-array", "ndjson"]), "\"off\", \"json-array\" (one JSON array of payloads) or \"ndjson\" (one payload per line)."),
    KeyDef::new("outbox.bulk.max_records", int(2, 10_000), "Records per pack at most."),
    KeyDef::new("outbox.bulk.max_bytes", Ty::Size, "Bytes per pack at most."),
    KeyDef::new("outbox.bulk.when", Ty::OneOf(&["always", "backlog"]), "\"always\", or \"backlog\": only while more than min_backlog messages wait."),
    KeyDef::new("outbox.bulk.min_backlog", Ty::Int { min: 0, max: i64::MAX }, "Backlog (messages) above which packing starts, with when = \"backlog\"."),
    KeyDef::new("outbox.bulk.topic_suffix", Ty::Str, "Appended to the records' topic for a pack (\"\" = the same topic; with MQTT 3.1.1 the only way a consumer tells a pack from a record)."),
    KeyDef::new("listener.enabled", Ty::Bool, "Run the local MQTT listener."),
    KeyDef::new("listener.bind", Ty::SocketAddr, "Address and port to listen on."),
    KeyDef::new("listener.allow_remote", Ty::Bool, "Allow a non-loopback bind: the listener has no authentication or TLS."),
    KeyDef::new("listener.max_connections", int(1, 65_535), "Local clients connected at once at most."),
    KeyDef::new("listener.max_packet_size", Ty::Size, "Largest MQTT packet accepted from a local client."),
    KeyDef::new("subscriptions.filter", Ty::Str, "Topic filter; + matches one level, # the rest (last level only).").sample("\"devices/gateway-17/commands/#\""),
    KeyDef::new("subscriptions.qos", int(0, 2), "QoS of the subscription.").sample("1"),
    KeyDef::new("subscriptions.queue", Ty::Str, "Inbox queue the messages are written to.").sample("\"inbox\""),
    KeyDef::new("http.enabled", Ty::Bool, "Serve the HTTP endpoints."),
    KeyDef::new("http.bind", Ty::SocketAddr, "Address and port; loopback by default, as nothing here asks for a password."),
    KeyDef::new("http.ready.disconnected_for", Ty::Duration, "Not ready once disconnected from the broker this long; 0 = off."),
    KeyDef::new("http.ready.outbox_high_water_messages", Ty::Int { min: 0, max: i64::MAX }, "Not ready while the outbox holds more messages than this; 0 = off."),
    KeyDef::new("http.ready.outbox_high_water_bytes", Ty::Size, "Not ready while the outbox holds more bytes than this; 0 = off."),
    KeyDef::new("log.format", Ty::OneOf(&["human", "json"]), "\"human\" or \"json\" (one object per line)."),
    KeyDef::new("log.level", Ty::Str, "\"error\", \"warn\", \"info\", \"debug\", \"trace\", or directives such as \"info,spool_mqtt=debug\"."),
];

/// The key at `path` (schema form: `subscriptions.filter`, no index).
pub fn key(path: &str) -> Option<&'static KeyDef> {
    KEYS.iter().find(|k| k.path == path)
}

/// Whether `path` is a section (a table holding keys).
pub fn is_section(path: &str) -> bool {
    SECTIONS.iter().any(|(s, _)| *s == path)
}

/// The closest valid key or section to a mistyped `path`, if any is close enough to be a
/// likely typo.
pub fn closest(path: &str) -> Option<String> {
    let candidates: Vec<&str> = KEYS
        .iter()
        .map(|k| k.path)
        .chain(SECTIONS.iter().map(|(s, _)| *s))
        .collect();
    closest_among(path, &candidates).map(str::to_owned)
}

/// The closest valid variable to a mistyped `SPOOL_...` name.
pub fn closest_var(var: &str) -> Option<String> {
    let rest = var.strip_prefix("SPOOL_").unwrap_or(var);
    let path = rest.to_ascii_lowercase().replace("__", ".");
    // An index of [[subscriptions]] is not part of the key's path.
    let path: Vec<&str> = path
        .split('.')
        .filter(|s| s.parse::<usize>().is_err())
        .collect();
    let candidates: Vec<&str> = KEYS.iter().map(|k| k.path).collect();
    let found = closest_among(&path.join("."), &candidates)?;
    key(found).map(KeyDef::env_var)
}

/// Jaro-Winkler similarity from which a name counts as a likely typo of another. Tuned on the
/// typos in the tests (a swapped or missing letter, a single underscore for a double).
const SIMILAR: f64 = 0.85;

/// In order: a near name in the same section (`upstream.hots`); the same name in another
/// section (`upstream.max_bytes` is `outbox.max_bytes`); a near full path (`upstrem.host`,
/// `upstream_host`).
fn closest_among<'a>(path: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let (parent, last) = path.rsplit_once('.').unwrap_or(("", path));
    let best = |score: &dyn Fn(&str) -> f64| {
        candidates
            .iter()
            .map(|c| (score(c), *c))
            .filter(|(s, _)| *s >= SIMILAR)
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, c)| c)
    };
    best(&|c| {
        let (p, l) = split_str(c);
        if p == parent {
            strsim::jaro_winkler(last, l)
        } else {
            0.0
        }
    })
    .or_else(|| candidates.iter().copied().find(|c| split_str(c).1 == last))
    .or_else(|| best(&|c| strsim::jaro_winkler(path, c)))
}

fn split_str(p: &str) -> (&str, &str) {
    p.rsplit_once('.').unwrap_or(("", p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_var_names() {
        assert_eq!(
            key("upstream.host").unwrap().env_var(),
            "SPOOL_UPSTREAM__HOST"
        );
        assert_eq!(
            key("upstream.tls.ca_file").unwrap().env_var(),
            "SPOOL_UPSTREAM__TLS__CA_FILE"
        );
        assert_eq!(
            key("subscriptions.filter").unwrap().env_var(),
            "SPOOL_SUBSCRIPTIONS__0__FILTER"
        );
    }

    #[test]
    fn suggestions_for_typos() {
        assert_eq!(closest("upstream.hots").as_deref(), Some("upstream.host"));
        assert_eq!(
            closest("upstream.max_bytes").as_deref(),
            Some("outbox.max_bytes")
        );
        assert_eq!(closest("upstream.tsl").as_deref(), Some("upstream.tls"));
        assert_eq!(
            closest("outbox.max_byte").as_deref(),
            Some("outbox.max_bytes")
        );
        assert_eq!(closest("something.else.entirely"), None);
        assert_eq!(
            closest_var("SPOOL_UPSTREAM_HOST").as_deref(),
            Some("SPOOL_UPSTREAM__HOST")
        );
        assert_eq!(
            closest_var("SPOOL_UPSTRAEM__PORT").as_deref(),
            Some("SPOOL_UPSTREAM__PORT")
        );
    }

    #[test]
    fn every_key_is_in_a_known_section() {
        for k in KEYS {
            let section = k.path.rsplit_once('.').unwrap().0;
            assert!(is_section(section), "{}", k.path);
        }
    }
}
