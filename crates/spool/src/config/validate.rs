//! Checks of values that are well typed but wrong, alone or together (backoff min above max, a
//! certificate without its key, a file that cannot be read, a listener open to the network...),
//! and the values that loading derives (port, client id, paths, the password from its file).
//! Every problem is collected; each names the key, the value, what is allowed and its origin.

use std::fmt::Display;
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::{ConfigError, Origin};
use super::load::{resolve_path, Origins};
use super::schema::{AgentConfig, Protocol, Secret, MQTT_PACKET_MAX, TTL_MAX};
use super::units::{format_duration, ByteSize};
use super::Environment;

/// MQTT counts keep alive in seconds in two bytes.
const KEEPALIVE_MAX: Duration = Duration::from_secs(65_535);
/// MQTT 5 session expiry is four bytes of seconds.
const SESSION_EXPIRY_MAX: Duration = Duration::from_secs(u32::MAX as u64);
/// Beyond this a connect attempt is hung, not slow.
const CONNECT_TIMEOUT_MAX: Duration = Duration::from_secs(300);
/// The longest drain at SIGTERM: a stop that waits longer is a hang to an operator (and
/// systemd kills at `TimeoutStopSec` anyway).
const DRAIN_TIMEOUT_MAX: Duration = Duration::from_secs(600);
/// A device that waits longer than a day between reconnect attempts looks dead.
const BACKOFF_MAX: Duration = Duration::from_secs(24 * 3600);
/// Past this an `interval` durability is `none` in all but name.
pub(crate) const SYNC_INTERVAL_MAX: Duration = Duration::from_secs(60);
/// MQTT's limit on strings (client id, topic filter): a two-byte length.
const MQTT_STRING_MAX: usize = 65_535;
/// The smallest listener packet limit that still holds a CONNECT with a long client id.
const LISTENER_PACKET_MIN: u64 = 1024;
/// A password file larger than this is not a password file.
const PASSWORD_FILE_MAX: u64 = 64 * 1024;
/// How much of a PEM file is read to find its first block: CA bundles run to a few hundred
/// KiB (Mozilla's is about 220 KiB), and the block we look for is near the start anyway.
const PEM_READ_MAX: u64 = 1 << 20;

struct Checker<'a> {
    file: &'a Path,
    origins: &'a Origins,
    errs: Vec<ConfigError>,
}

impl Checker<'_> {
    fn origin(&self, key: &str) -> Origin {
        self.origins.get(key).cloned().unwrap_or(Origin::Default)
    }

    fn bad(&mut self, key: &str, value: impl Display, allowed: impl Into<String>) {
        let origin = self.origin(key);
        self.errs.push(ConfigError::Invalid {
            key: key.to_owned(),
            value: value.to_string(),
            allowed: allowed.into(),
            origin,
        });
    }

    fn path(&self, key: &str, p: &Path) -> PathBuf {
        resolve_path(p, self.origins.get(key), self.file)
    }

    /// Opens `p` to prove it is readable; returns its start (up to `max` bytes).
    fn readable(&mut self, key: &str, p: &Path, max: u64, what: &str) -> Option<Vec<u8>> {
        let shown = quoted(p);
        let result = std::fs::File::open(p).and_then(|f| {
            if f.metadata()?.is_dir() {
                return Err(std::io::Error::other("it is a directory"));
            }
            let mut buf = Vec::new();
            f.take(max).read_to_end(&mut buf)?;
            Ok(buf)
        });
        match result {
            Ok(b) => Some(b),
            Err(e) => {
                self.bad(key, shown, format!("cannot be read ({e}): must be {what}"));
                None
            }
        }
    }

    /// A readable PEM file holding a block whose label contains `label`.
    fn pem(&mut self, key: &str, p: &Path, label: &str, what: &str) {
        let Some(bytes) = self.readable(key, p, PEM_READ_MAX, what) else {
            return;
        };
        let text = String::from_utf8_lossy(&bytes);
        let found = text
            .lines()
            .any(|l| l.starts_with("-----BEGIN ") && l.contains(label));
        if !found {
            self.bad(
                key,
                quoted(p),
                format!("holds no PEM block \"-----BEGIN ...{label}-----\": must be {what}"),
            );
        }
    }
}

fn quoted(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

fn dur(d: Duration) -> String {
    format!("\"{}\"", format_duration(d))
}

fn size(s: ByteSize) -> String {
    let shown = s.to_string();
    if shown.bytes().all(|b| b.is_ascii_digit()) {
        shown
    } else {
        format!("\"{shown}\"")
    }
}

/// Validates `cfg` and fills in what loading derives. Problems are appended to `errs`.
pub fn validate(
    cfg: &mut AgentConfig,
    file: &Path,
    env: &Environment,
    origins: &Origins,
    errs: &mut Vec<ConfigError>,
) {
    let mut c = Checker {
        file,
        origins,
        errs: Vec::new(),
    };
    store(&mut c, cfg);
    upstream(&mut c, cfg, env);
    outbox(&mut c, cfg);
    listener_and_http(&mut c, cfg);
    subscriptions(&mut c, cfg);
    log(&mut c, cfg);
    errs.append(&mut c.errs);
}

fn store(c: &mut Checker<'_>, cfg: &mut AgentConfig) {
    let s = &mut cfg.store;
    if s.dir.as_os_str().is_empty() {
        c.bad(
            "store.dir",
            "\"\"",
            "must not be empty: the store directory",
        );
    } else {
        s.dir = c.path("store.dir", &s.dir);
    }
    if let super::Durability::Interval(d) = s.durability {
        // The engine counts the interval in whole milliseconds.
        if d < Duration::from_millis(1) || d > SYNC_INTERVAL_MAX {
            c.bad(
                "store.durability",
                format!("\"{}\"", s.durability),
                format!(
                    "the interval must be at least 1ms and at most {} (use \"sync\" for no window, \"none\" for none at all)",
                    format_duration(SYNC_INTERVAL_MAX)
                ),
            );
        }
    }
}

fn upstream(c: &mut Checker<'_>, cfg: &mut AgentConfig, env: &Environment) {
    let u = &mut cfg.upstream;
    let host = u.host.trim();
    if host.is_empty() {
        if c.origins.contains_key("upstream.host") {
            c.bad(
                "upstream.host",
                "\"\"",
                "must be the broker's host name or IP address, e.g. \"broker.example.com\"",
            );
        } else {
            c.errs.push(ConfigError::Missing {
                key: "upstream.host".into(),
                allowed: "the broker's host name or IP address, e.g. host = \"broker.example.com\" in [upstream], or SPOOL_UPSTREAM__HOST".into(),
            });
        }
    } else if host.contains("://") || host.contains('/') || host.chars().any(char::is_whitespace) {
        c.bad(
            "upstream.host",
            format!("{:?}", u.host),
            "must be a host name or IP address only: no scheme, path or spaces (the port goes in upstream.port, TLS in [upstream.tls])",
        );
    } else if host.parse::<std::net::Ipv6Addr>().is_err() && host.contains(':') {
        c.bad(
            "upstream.host",
            format!("{:?}", u.host),
            "must be a host name or IP address only (an IPv6 address without brackets): the port goes in upstream.port",
        );
    }
    u.port = Some(u.effective_port());

    match &u.client_id {
        Some(id) if id.is_empty() => c.bad(
            "upstream.client_id",
            "\"\"",
            "must not be empty: a persistent session needs a stable id (remove the key for the default \"spool-<hostname>\")",
        ),
        Some(id) if id.len() > MQTT_STRING_MAX => c.bad(
            "upstream.client_id",
            format!("\"{}...\"", id.chars().take(20).collect::<String>()),
            format!("must be at most {MQTT_STRING_MAX} bytes"),
        ),
        Some(_) => {}
        None => match env.hostname.as_deref().map(client_id_from_hostname) {
            Some(id) if id.len() > "spool-".len() => u.client_id = Some(id),
            _ => c.errs.push(ConfigError::Missing {
                key: "upstream.client_id".into(),
                allowed: "the host name could not be read to make the default \"spool-<hostname>\": set a stable client id".into(),
            }),
        },
    }

    if let Some(name) = &u.username {
        if name.is_empty() {
            c.bad(
                "upstream.username",
                "\"\"",
                "must not be empty: remove the key to connect without a user name",
            );
        }
    }
    if u.password.as_ref().is_some_and(|p| p.expose().is_empty()) {
        c.bad(
            "upstream.password",
            "\"\"",
            "must not be empty: remove the key to connect without a password",
        );
    }
    if u.password.is_some() && u.password_file.is_some() {
        c.bad(
            "upstream.password_file",
            quoted(u.password_file.as_deref().unwrap_or(Path::new(""))),
            "cannot be set together with upstream.password: keep one of them",
        );
    } else if let Some(pf) = u.password_file.clone() {
        let pf = c.path("upstream.password_file", &pf);
        u.password_file = Some(pf.clone());
        if let Some(bytes) = c.readable(
            "upstream.password_file",
            &pf,
            PASSWORD_FILE_MAX,
            "a readable file holding the password",
        ) {
            match String::from_utf8(bytes) {
                Ok(mut s) => {
                    // One line end is the editor's, not the password's.
                    if s.ends_with('\n') {
                        s.pop();
                        if s.ends_with('\r') {
                            s.pop();
                        }
                    }
                    if s.is_empty() {
                        c.bad(
                            "upstream.password_file",
                            quoted(&pf),
                            "is empty: must hold the password",
                        );
                    } else {
                        u.password = Some(Secret::new(s));
                    }
                }
                Err(_) => c.bad(
                    "upstream.password_file",
                    quoted(&pf),
                    "is not UTF-8 text: MQTT passwords here are text",
                ),
            }
        }
    }
    if u.password.is_some() && u.username.is_none() && u.protocol == Protocol::V311 {
        let key = if u.password_file.is_some() {
            "upstream.password_file"
        } else {
            "upstream.password"
        };
        c.bad(
            key,
            Secret::MASK,
            "needs upstream.username: MQTT 3.1.1 allows a password only with a user name",
        );
    }

    if u.keepalive.is_zero() {
        c.bad("upstream.keepalive", dur(u.keepalive), "must be at least 1s: 0 turns keep alive off, and with it the detection of a half-open link");
    } else if u.keepalive > KEEPALIVE_MAX {
        c.bad(
            "upstream.keepalive",
            dur(u.keepalive),
            "must be at most 65535s (18h12m15s), MQTT's limit",
        );
    } else if u.keepalive.subsec_nanos() != 0 {
        c.bad(
            "upstream.keepalive",
            dur(u.keepalive),
            "must be a whole number of seconds (MQTT counts keep alive in seconds)",
        );
    }
    if u.session_expiry > SESSION_EXPIRY_MAX || u.session_expiry.subsec_nanos() != 0 {
        c.bad(
            "upstream.session_expiry",
            dur(u.session_expiry),
            "must be whole seconds, at most 4294967295s (MQTT 5's limit)",
        );
    }
    if u.connect_timeout.is_zero() || u.connect_timeout > CONNECT_TIMEOUT_MAX {
        c.bad(
            "upstream.connect_timeout",
            dur(u.connect_timeout),
            format!(
                "must be above 0 and at most {}",
                format_duration(CONNECT_TIMEOUT_MAX)
            ),
        );
    }
    if u.drain_timeout > DRAIN_TIMEOUT_MAX {
        c.bad(
            "upstream.drain_timeout",
            dur(u.drain_timeout),
            format!(
                "must be at most {} (0 exits at once; nothing is lost either way)",
                format_duration(DRAIN_TIMEOUT_MAX)
            ),
        );
    }
    let b = u.backoff;
    if b.min.is_zero() {
        c.bad(
            "upstream.backoff.min",
            dur(b.min),
            "must be above 0: an exponential backoff from 0 stays at 0 and hammers the broker",
        );
    }
    if b.max > BACKOFF_MAX {
        c.bad(
            "upstream.backoff.max",
            dur(b.max),
            format!("must be at most {}", format_duration(BACKOFF_MAX)),
        );
    }
    if b.min > b.max {
        c.bad(
            "upstream.backoff.max",
            dur(b.max),
            format!("must be at least upstream.backoff.min ({})", dur(b.min)),
        );
    }

    let t = &mut u.tls;
    if !t.enabled {
        let set: Vec<&str> = [
            ("ca_file", t.ca_file.is_some()),
            ("cert_file", t.cert_file.is_some()),
            ("key_file", t.key_file.is_some()),
            ("server_name", t.server_name.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, s)| s.then_some(k))
        .collect();
        if !set.is_empty() {
            c.bad(
                "upstream.tls.enabled",
                "false",
                format!("upstream.tls.{} is set but TLS is off: set enabled = true, or remove the TLS keys", set.join(", ")),
            );
        }
    }
    match (&t.cert_file, &t.key_file) {
        (Some(cert), None) => c.bad(
            "upstream.tls.cert_file",
            quoted(cert),
            "needs upstream.tls.key_file too: mutual TLS takes a certificate and its private key",
        ),
        (None, Some(key)) => c.bad(
            "upstream.tls.key_file",
            quoted(key),
            "needs upstream.tls.cert_file too: mutual TLS takes a certificate and its private key",
        ),
        _ => {}
    }
    for (key, field, label, what) in [
        (
            "upstream.tls.ca_file",
            &mut t.ca_file,
            "CERTIFICATE",
            "a PEM file of CA certificates",
        ),
        (
            "upstream.tls.cert_file",
            &mut t.cert_file,
            "CERTIFICATE",
            "a PEM file of the client certificate (chain)",
        ),
        (
            "upstream.tls.key_file",
            &mut t.key_file,
            "PRIVATE KEY",
            "a PEM file of the client's private key",
        ),
    ] {
        if let Some(p) = field {
            let resolved = c.path(key, p);
            c.pem(key, &resolved, label, what);
            *p = resolved;
        }
    }
    if let Some(sn) = &t.server_name {
        if sn.is_empty() || sn.chars().any(char::is_whitespace) {
            c.bad(
                "upstream.tls.server_name",
                format!("{sn:?}"),
                "must be a DNS name or IP address (remove the key to use upstream.host)",
            );
        }
    }
}

fn outbox(c: &mut Checker<'_>, cfg: &AgentConfig) {
    let o = &cfg.outbox;
    if o.default_ttl > TTL_MAX {
        c.bad(
            "outbox.default_ttl",
            dur(o.default_ttl),
            format!(
                "must be at most {} (the engine's limit); 0 means never expire",
                format_duration(TTL_MAX)
            ),
        );
    }
    let b = &o.bulk;
    if b.max_bytes.bytes() == 0 || b.max_bytes.bytes() > MQTT_PACKET_MAX {
        c.bad(
            "outbox.bulk.max_bytes",
            size(b.max_bytes),
            "must be above 0 and at most 256MiB (MQTT's largest packet)",
        );
    }
    if b.topic_suffix.contains(['+', '#', '\0']) {
        c.bad(
            "outbox.bulk.topic_suffix",
            format!("{:?}", b.topic_suffix),
            "must not hold a wildcard (+, #) or NUL: it becomes part of a topic name",
        );
    }
    let ready = &cfg.http.ready;
    if o.max_bytes.bytes() != 0 && ready.outbox_high_water_bytes > o.max_bytes {
        c.bad(
            "http.ready.outbox_high_water_bytes",
            size(ready.outbox_high_water_bytes),
            format!(
                "must be at most outbox.max_bytes ({}): the outbox can never hold more",
                size(o.max_bytes)
            ),
        );
    }
    if o.max_messages != 0 && ready.outbox_high_water_messages > o.max_messages {
        c.bad(
            "http.ready.outbox_high_water_messages",
            ready.outbox_high_water_messages,
            format!(
                "must be at most outbox.max_messages ({}): the outbox can never hold more",
                o.max_messages
            ),
        );
    }
}

fn listener_and_http(c: &mut Checker<'_>, cfg: &AgentConfig) {
    let l = &cfg.listener;
    if l.enabled && !l.allow_remote && !l.bind.ip().is_loopback() {
        c.bad(
            "listener.bind",
            format!("\"{}\"", l.bind),
            "must be a loopback address (127.0.0.1 or ::1): the local listener has no authentication and no TLS, so any host that reaches it could publish through the agent; set listener.allow_remote = true to accept that",
        );
    }
    if l.max_packet_size.bytes() < LISTENER_PACKET_MIN
        || l.max_packet_size.bytes() > MQTT_PACKET_MAX
    {
        c.bad(
            "listener.max_packet_size",
            size(l.max_packet_size),
            "must be in 1KiB..=256MiB (MQTT's largest packet)",
        );
    }
    let h = &cfg.http;
    if l.enabled && h.enabled && same_port(l.bind, h.bind) {
        c.bad(
            "http.bind",
            format!("\"{}\"", h.bind),
            format!(
                "must differ from listener.bind (\"{}\"): both cannot listen there",
                l.bind
            ),
        );
    }
}

/// Whether two binds would collide (same port and the same or a wildcard address).
fn same_port(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn subscriptions(c: &mut Checker<'_>, cfg: &AgentConfig) {
    let mut seen: Vec<(&str, usize)> = Vec::new();
    for (i, s) in cfg.subscriptions.iter().enumerate() {
        let key = format!("subscriptions[{i}].filter");
        if s.filter.is_empty() {
            if c.origins.contains_key(&key) {
                c.bad(
                    &key,
                    "\"\"",
                    "must be a topic filter such as \"devices/+/commands/#\"",
                );
            } else {
                c.errs.push(ConfigError::Missing {
                    key,
                    allowed: "every [[subscriptions]] entry needs a filter, e.g. filter = \"devices/+/commands/#\"".into(),
                });
            }
        } else if let Err(why) = check_filter(&s.filter) {
            c.bad(
                &key,
                format!("{:?}", s.filter),
                format!("must be a topic filter: {why}"),
            );
        } else if let Some((_, j)) = seen.iter().find(|(f, _)| *f == s.filter) {
            c.bad(&key, format!("{:?}", s.filter), format!("is the same filter as subscriptions[{j}]: each filter once (one filter, one QoS, one queue)"));
        } else {
            seen.push((&s.filter, i));
        }
        if let Err(e) = spool_engine::name::validate(&s.queue) {
            let qkey = format!("subscriptions[{i}].queue");
            c.bad(
                &qkey,
                format!("{:?}", s.queue),
                format!("must be a queue name: {e}"),
            );
        }
    }
}

/// MQTT's topic filter rules: `+` is a whole level, `#` a whole level and the last.
pub fn check_filter(f: &str) -> Result<(), &'static str> {
    if f.len() > MQTT_STRING_MAX {
        return Err("it is longer than 65535 bytes");
    }
    if f.contains('\0') {
        return Err("it contains a NUL character");
    }
    let levels: Vec<&str> = f.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err("'#' only as a whole last level, as in \"sensors/#\"");
        }
        if level.contains('+') && *level != "+" {
            return Err("'+' only as a whole level, as in \"sensors/+/temperature\"");
        }
    }
    Ok(())
}

const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];

fn log(c: &mut Checker<'_>, cfg: &AgentConfig) {
    let level = &cfg.log.level;
    let ok = !level.trim().is_empty()
        && level.split(',').all(|d| {
            let d = d.trim();
            let (target, lvl) = d.rsplit_once('=').unwrap_or(("x", d));
            LEVELS.contains(&lvl.to_ascii_lowercase().as_str())
                && !target.is_empty()
                && target
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
        });
    if !ok {
        c.bad(
            "log.level",
            format!("{level:?}"),
            "must be one of \"error\", \"warn\", \"info\", \"debug\", \"trace\", \"off\", or comma-separated target=level directives such as \"info,spool_mqtt=debug\"",
        );
    }
}

/// `spool-<hostname>`, with what MQTT brokers may refuse in a client id replaced by `-`.
pub fn client_id_from_hostname(host: &str) -> String {
    let clean: String = host
        .trim()
        .chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() || ch == '-' || ch == '_' {
                ch
            } else {
                '-'
            }
        })
        .collect();
    format!("spool-{clean}")
}
