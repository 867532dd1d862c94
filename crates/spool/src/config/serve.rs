//! The queue server's configuration (`spool serve --config serve.toml`): a sibling of the
//! agent's schema, with the same conventions: TOML, errors that name the line, unknown keys
//! refused with the closest valid one, every key overridable by an environment variable, a
//! bad configuration exits 7 (the errors are [`ConfigErrors`]).
//!
//! Precedence: command-line flags over `SPOOL_SERVE__<SECTION>__<KEY>` variables over the
//! file over the defaults. A variable's value is read as a TOML value when it is one
//! (`true`, `100`, `"text"`), as text otherwise. The agent ignores `SPOOL_SERVE__` variables.
//!
//! The whole schema is documented key by key in `docs/serve.md`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use spool_server::auth::{Access, Permission, UserConfig};
use toml::{Table, Value};

use super::units::{parse_duration, ByteSize};
use super::{ConfigError, ConfigErrors, Origin};

/// The prefix of the server's environment variables.
pub const ENV_PREFIX: &str = "SPOOL_SERVE__";

/// `[store]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// The store directory (`--dir` and `$SPOOL_DIR` win over it).
    pub dir: Option<PathBuf>,
    /// When a write is acknowledged: `sync` (default), `interval:<duration>`, `none`.
    pub durability: Option<super::Durability>,
}

/// `[resp]`: the Redis-protocol listener.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RespSection {
    pub bind: Option<String>,
    pub max_connections: Option<usize>,
    /// `"5m"`; `"0s"` or absent: off.
    pub idle_timeout: Option<String>,
    /// The slow-client timeout: how long one reply may take to be written.
    pub write_timeout: Option<String>,
    /// The largest argument (payload) accepted.
    pub max_payload: Option<ByteSize>,
}

/// `[http]`: the HTTP/JSON listener.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    pub bind: Option<String>,
    pub enabled: Option<bool>,
    /// Connections at once; past it `503 BUSY`.
    pub max_connections: Option<usize>,
    /// Largest request head (request line and headers); above it `431`.
    pub max_header_size: Option<ByteSize>,
    /// How long a request's head may take to arrive (also the keep-alive idle time).
    pub header_timeout: Option<String>,
    /// How long a request body may take to arrive (`408`).
    pub body_timeout: Option<String>,
    /// How long a reply (or an SSE event) may wait for a client that does not read.
    pub write_timeout: Option<String>,
}

/// `[dsmq]`: the dsmq-compatible listener (docs/dsmq.md).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DsmqSection {
    pub bind: Option<String>,
    pub enabled: Option<bool>,
    /// The configured user whose permissions dsmq connections have (dsmq's client sends
    /// no credentials). Unset: anonymous.
    pub user: Option<String>,
    /// Whether dsmq's `shutdown` may stop the server (and then only for a user with admin
    /// access). Default false.
    pub allow_shutdown: Option<bool>,
}

/// `[tls]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
    /// PEM CA certificates that client certificates must chain to (mutual TLS).
    pub client_ca: Option<PathBuf>,
    /// `required` or `optional` (with `client_ca`; default `required`).
    pub client_auth: Option<String>,
}

/// `[policy]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    pub auto_create: Option<bool>,
    pub max_queues: Option<usize>,
}

/// `[[users.permissions]]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PermissionSection {
    pub pattern: String,
    pub access: String,
}

/// `[[users]]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UserSection {
    pub name: String,
    pub password_hash: Option<String>,
    /// Hex SHA-256 hashes of the user's tokens (`spool serve new-token`).
    #[serde(default)]
    pub tokens: Vec<String>,
    #[serde(default)]
    pub permissions: Vec<PermissionSection>,
}

/// The file as written.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServeFile {
    #[serde(default)]
    pub store: StoreSection,
    #[serde(default)]
    pub resp: RespSection,
    #[serde(default)]
    pub http: HttpSection,
    #[serde(default)]
    pub dsmq: DsmqSection,
    #[serde(default)]
    pub tls: TlsSection,
    #[serde(default)]
    pub policy: PolicySection,
    #[serde(default)]
    pub users: Vec<UserSection>,
}

/// Whether TLS client certificates are demanded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    Required,
    Optional,
}

/// The TLS settings, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
}

/// The configuration, checked and typed (the defaults filled in by the caller).
#[derive(Debug, Clone, Default)]
pub struct ServeConfig {
    pub file: ServeFile,
    pub idle_timeout: Option<Duration>,
    pub write_timeout: Option<Duration>,
    /// `[http]`'s timeouts, when set.
    pub http_header_timeout: Option<Duration>,
    pub http_body_timeout: Option<Duration>,
    pub http_write_timeout: Option<Duration>,
    pub tls: Option<TlsConfig>,
    pub users: Vec<UserConfig>,
}

/// Reads `path` (when given) and the `SPOOL_SERVE__` variables of `vars`.
pub fn load_serve(
    path: Option<&Path>,
    vars: &[(String, String)],
) -> Result<ServeConfig, ConfigErrors> {
    let file = path.map_or_else(PathBuf::new, Path::to_path_buf);
    let fail = |errors: Vec<ConfigError>| ConfigErrors {
        file: file.clone(),
        errors,
    };
    let text = match path {
        Some(p) => std::fs::read_to_string(p).map_err(|source| {
            fail(vec![ConfigError::Read {
                path: p.to_path_buf(),
                source,
            }])
        })?,
        None => String::new(),
    };
    // First the file alone, so that its errors name their line.
    toml::from_str::<ServeFile>(&text).map_err(|e| fail(vec![syntax(&e.to_string())]))?;
    let mut table: Table = toml::from_str(&text).map_err(|e| fail(vec![syntax(&e.to_string())]))?;
    let mut errs = Vec::new();
    for (var, raw) in vars {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let segs: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        let value = toml::from_str::<Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| Value::String(raw.clone()));
        let [section, key] = segs.as_slice() else {
            errs.push(ConfigError::Invalid {
                key: var.clone(),
                value: raw.clone(),
                allowed: format!(
                    "variables are {ENV_PREFIX}<SECTION>__<KEY>, e.g. {ENV_PREFIX}RESP__BIND"
                ),
                origin: Origin::Env { var: var.clone() },
            });
            continue;
        };
        let entry = table
            .entry(section.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        if let Value::Table(t) = entry {
            t.insert(key.clone(), value);
        }
    }
    if !errs.is_empty() {
        return Err(fail(errs));
    }
    let parsed: ServeFile = Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| {
            fail(vec![syntax(&format!(
                "{} (in a {ENV_PREFIX} variable)",
                e.message()
            ))])
        })?;
    check(parsed, &file).map_err(fail)
}

/// A TOML or schema error; an unknown key gets the closest valid one ("did you mean").
fn syntax(message: &str) -> ConfigError {
    let mut message = message.trim().to_owned();
    if let Some(hint) = did_you_mean(&message) {
        message = format!("{message}\ndid you mean {hint}?");
    }
    ConfigError::Syntax { message }
}

/// From serde's "unknown field `x`, expected one of `a`, `b`": the expected name closest
/// to `x`, when one is close enough to be a likely typo.
fn did_you_mean(message: &str) -> Option<String> {
    let rest = message.split("unknown field `").nth(1)?;
    let (unknown, rest) = rest.split_once('`')?;
    let expected = rest.split("expected").nth(1)?;
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|c| (strsim::jaro_winkler(unknown, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c.to_owned())
}

fn invalid(key: &str, value: &str, allowed: &str) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        value: value.to_owned(),
        allowed: allowed.to_owned(),
        origin: Origin::Default,
    }
}

/// The checks beyond the types: durations, TLS pairs, users.
fn check(f: ServeFile, file: &Path) -> Result<ServeConfig, Vec<ConfigError>> {
    let mut errs = Vec::new();
    let base = file.parent().unwrap_or(Path::new("."));
    let mut duration = |key: &str, v: &Option<String>| -> Option<Duration> {
        let v = v.as_ref()?;
        match parse_duration(v) {
            Ok(d) if d.is_zero() => None,
            Ok(d) => Some(d),
            Err(e) => {
                errs.push(invalid(key, v, &e));
                None
            }
        }
    };
    let idle_timeout = duration("resp.idle_timeout", &f.resp.idle_timeout);
    let write_timeout = duration("resp.write_timeout", &f.resp.write_timeout);
    // The HTTP listener's timeouts cannot be off: each bounds what one client may hold.
    let mut http_timeout = |key: &str, v: &Option<String>| -> Option<Duration> {
        let v = v.as_ref()?;
        match parse_duration(v) {
            Ok(d) if d < Duration::from_millis(1) => {
                errs.push(invalid(
                    key,
                    v,
                    "at least 1ms, e.g. \"30s\" (it cannot be off)",
                ));
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                errs.push(invalid(key, v, &e));
                None
            }
        }
    };
    let http_header_timeout = http_timeout("http.header_timeout", &f.http.header_timeout);
    let http_body_timeout = http_timeout("http.body_timeout", &f.http.body_timeout);
    let http_write_timeout = http_timeout("http.write_timeout", &f.http.write_timeout);
    if f.http.max_connections == Some(0) {
        errs.push(invalid("http.max_connections", "0", "at least 1"));
    }
    if let Some(h) = f.http.max_header_size {
        if h.bytes() < 1024 || h.bytes() > 1 << 20 {
            errs.push(invalid(
                "http.max_header_size",
                &h.to_string(),
                "between 1KiB and 1MiB, e.g. \"16KiB\"",
            ));
        }
    }
    if let Some(super::Durability::Interval(d)) = f.store.durability {
        if d < Duration::from_millis(1) || d > super::validate::SYNC_INTERVAL_MAX {
            errs.push(invalid(
                "store.durability",
                &format!("interval:{d:?}"),
                "an interval of at least 1ms and at most 1m (\"sync\" for no window, \"none\" for none at all)",
            ));
        }
    }
    if f.resp.max_payload.is_some_and(|p| p.bytes() == 0) {
        errs.push(invalid(
            "resp.max_payload",
            "0",
            "at least 1 byte, e.g. \"1MiB\"",
        ));
    }
    if f.resp.max_connections == Some(0) {
        errs.push(invalid("resp.max_connections", "0", "at least 1"));
    }
    let rel = |p: &PathBuf| {
        if p.is_absolute() {
            p.clone()
        } else {
            base.join(p)
        }
    };
    let tls = match (&f.tls.cert, &f.tls.key) {
        (Some(cert), Some(key)) => {
            let client_auth = match f.tls.client_auth.as_deref() {
                None | Some("required") => ClientAuth::Required,
                Some("optional") => ClientAuth::Optional,
                Some(other) => {
                    errs.push(invalid(
                        "tls.client_auth",
                        other,
                        "\"required\" or \"optional\"",
                    ));
                    ClientAuth::Required
                }
            };
            Some(TlsConfig {
                cert: rel(cert),
                key: rel(key),
                client_ca: f.tls.client_ca.as_ref().map(rel),
                client_auth,
            })
        }
        (None, None) => {
            if f.tls.client_ca.is_some() || f.tls.client_auth.is_some() {
                errs.push(invalid(
                    "tls.client_ca",
                    "set",
                    "tls.cert and tls.key are needed for TLS; set them too",
                ));
            }
            None
        }
        _ => {
            errs.push(invalid(
                "tls.cert",
                "one of cert and key",
                "set both tls.cert and tls.key (PEM files), or neither",
            ));
            None
        }
    };
    let mut users = Vec::new();
    for (i, u) in f.users.iter().enumerate() {
        let mut permissions = Vec::new();
        for (j, p) in u.permissions.iter().enumerate() {
            match Access::parse(&p.access) {
                Some(access) => permissions.push(Permission {
                    pattern: p.pattern.clone(),
                    access,
                }),
                None => errs.push(invalid(
                    &format!("users[{i}].permissions[{j}].access"),
                    &p.access,
                    "\"read\", \"write\" or \"admin\" (admin includes write, write includes read)",
                )),
            }
        }
        users.push(UserConfig {
            name: u.name.clone(),
            password_hash: u.password_hash.clone(),
            token_hashes: u.tokens.clone(),
            permissions,
        });
    }
    if let Err(e) = spool_server::auth::Auth::new(users.clone()) {
        errs.push(invalid("users", "", &e.to_string()));
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(ServeConfig {
        file: f,
        idle_timeout,
        write_timeout,
        http_header_timeout,
        http_body_timeout,
        http_write_timeout,
        tls,
        users,
    })
}

/// An example configuration, every key with a comment (`spool serve example-config`).
pub const SERVE_EXAMPLE: &str = r#"# spool serve --config serve.toml (docs/serve.md)
[store]
# dir = "/var/lib/spool"          # --dir and $SPOOL_DIR win over this
durability = "sync"               # a reply after fdatasync; "interval:100ms" or "none" trade
                                  # what a power cut may lose for speed

[resp]
bind = "127.0.0.1:7411"           # a non-loopback address needs [[users]]
max_connections = 10000
idle_timeout = "0s"               # close a connection silent this long; 0s: never
write_timeout = "30s"             # a client that stops reading is closed after this
max_payload = "1MiB"                # larger arguments get -TOOBIG

[http]
enabled = true                    # the HTTP/JSON listener (docs/http.md); or --no-http
bind = "127.0.0.1:7412"           # or --http ADDR; a non-loopback address needs [[users]]
max_connections = 10000           # more get 503 BUSY
max_header_size = "16KiB"         # a larger request head gets 431
header_timeout = "30s"            # a request head must arrive within this (keep-alive idle too)
body_timeout = "60s"              # a request body must arrive within this (else 408)
write_timeout = "30s"             # a client that stops reading a reply or stream is closed

[dsmq]
enabled = false                   # the dsmq-compatible listener (docs/dsmq.md); or --dsmq ADDR
bind = "127.0.0.1:30008"
# user = "dsmq"                   # whose permissions dsmq clients get (they send no credentials)
allow_shutdown = false            # dsmq's shutdown stops the server (the user needs admin)

[tls]
# cert = "server.crt"             # PEM chain; with key, the listeners speak TLS only
# key = "server.key"
# client_ca = "clients-ca.crt"    # mutual TLS
# client_auth = "required"        # or "optional"

[policy]
auto_create = true
max_queues = 0                    # 0: no limit

# [[users]]
# name = "worker"
# password_hash = "$argon2id$v=19$..."   # spool serve hash-password
# tokens = ["<sha-256 hex>"]             # spool serve new-token
# permissions = [{ pattern = "jobs.*", access = "write" }]
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("serve.toml");
        std::fs::write(&p, text).expect("write");
        (d, p)
    }

    #[test]
    fn the_example_loads() {
        let (_d, p) = write(SERVE_EXAMPLE);
        let c = load_serve(Some(&p), &[]).expect("valid");
        assert_eq!(c.file.resp.bind.as_deref(), Some("127.0.0.1:7411"));
        assert_eq!(c.idle_timeout, None);
        assert_eq!(c.write_timeout, Some(Duration::from_secs(30)));
        assert!(c.users.is_empty());
    }

    #[test]
    fn unknown_keys_name_the_line_and_the_valid_ones() {
        let (_d, p) = write("[resp]\nbind = \"127.0.0.1:1\"\nbnd = \"x\"\n");
        let e = load_serve(Some(&p), &[])
            .expect_err("unknown key")
            .to_string();
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("bnd") && e.contains("did you mean bind?"), "{e}");
    }

    #[test]
    fn env_overrides_the_file() {
        let (_d, p) = write("[resp]\nbind = \"127.0.0.1:1\"\n[policy]\nmax_queues = 3\n");
        let vars = vec![
            (
                "SPOOL_SERVE__RESP__BIND".to_owned(),
                "127.0.0.1:2".to_owned(),
            ),
            ("SPOOL_SERVE__POLICY__MAX_QUEUES".to_owned(), "9".to_owned()),
            ("SPOOL_DIR".to_owned(), "ignored".to_owned()),
        ];
        let c = load_serve(Some(&p), &vars).expect("valid");
        assert_eq!(c.file.resp.bind.as_deref(), Some("127.0.0.1:2"));
        assert_eq!(c.file.policy.max_queues, Some(9));
        let bad = vec![("SPOOL_SERVE__RESP__NOPE".to_owned(), "1".to_owned())];
        let e = load_serve(Some(&p), &bad).expect_err("unknown").to_string();
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn bad_values_are_reported() {
        let (_d, p) = write(
            "[resp]\nidle_timeout = \"10\"\n[tls]\ncert = \"a.pem\"\n[[users]]\nname = \"u\"\npassword_hash = \"plain\"\npermissions = [{ pattern = \"*\", access = \"rw\" }]\n",
        );
        let e = load_serve(Some(&p), &[]).expect_err("invalid").to_string();
        assert!(e.contains("resp.idle_timeout"), "{e}");
        assert!(e.contains("tls.key"), "{e}");
        assert!(e.contains("users[0].permissions[0].access"), "{e}");
    }

    #[test]
    fn http_limits_and_durability_load_and_bad_ones_are_reported() {
        let (_d, p) = write(
            "[store]\ndurability = \"interval:50ms\"\n[http]\nmax_connections = 7\nmax_header_size = \"8KiB\"\nheader_timeout = \"5s\"\nbody_timeout = \"9s\"\nwrite_timeout = \"2s\"\n",
        );
        let c = load_serve(Some(&p), &[]).expect("valid");
        assert_eq!(
            c.file.store.durability,
            Some(crate::config::Durability::Interval(Duration::from_millis(
                50
            )))
        );
        assert_eq!(c.file.http.max_connections, Some(7));
        assert_eq!(c.file.http.max_header_size.map(ByteSize::bytes), Some(8192));
        assert_eq!(c.http_header_timeout, Some(Duration::from_secs(5)));
        assert_eq!(c.http_body_timeout, Some(Duration::from_secs(9)));
        assert_eq!(c.http_write_timeout, Some(Duration::from_secs(2)));
        let env = vec![(
            "SPOOL_SERVE__STORE__DURABILITY".to_owned(),
            "none".to_owned(),
        )];
        let c = load_serve(Some(&p), &env).expect("valid");
        assert_eq!(
            c.file.store.durability,
            Some(crate::config::Durability::None)
        );

        let (_d, p) = write(
            "[store]\ndurability = \"interval:5m\"\n[http]\nmax_connections = 0\nmax_header_size = \"100\"\nwrite_timeout = \"0s\"\n",
        );
        let e = load_serve(Some(&p), &[]).expect_err("invalid").to_string();
        for key in [
            "store.durability",
            "http.max_connections",
            "http.max_header_size",
            "http.write_timeout",
        ] {
            assert!(e.contains(key), "{key} in {e}");
        }
        let (_d, p) = write("[store]\ndurability = \"fsync\"\n");
        let e = load_serve(Some(&p), &[]).expect_err("invalid").to_string();
        assert!(e.contains("interval:<duration>"), "{e}");
    }
}
