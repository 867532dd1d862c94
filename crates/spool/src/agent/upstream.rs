//! The configuration's `[upstream]` and `[outbox]` sections mapped onto the MQTT client's
//! [`ClientConfig`]. The configuration was validated when it was loaded; what can still fail
//! here is what only the client knows (the broker address form, a TLS trust store to find).

use std::path::{Path, PathBuf};

use spool_mqtt::{
    BulkConfig, BulkFormat, BulkWhen, Client, ClientConfig, ExpiredPolicy, Overflow, Protocol,
    TlsConfig,
};

use super::AgentError;
use crate::config::{self, AgentConfig, BulkMode, Expired};

/// Where distributions keep the system's CA bundle (Debian/Ubuntu/Alpine, Fedora/RHEL,
/// openSUSE): `upstream.tls.ca_file` unset means "the system's trust store", and the client
/// takes a PEM file, so the agent looks for the bundle in these places, in order.
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// The client's configuration for `cfg`.
pub fn client_config(cfg: &AgentConfig) -> Result<ClientConfig, AgentError> {
    let u = &cfg.upstream;
    let host = if u.host.contains(':') && !u.host.starts_with('[') {
        // An IPv6 literal: the client's address form is `[addr]:port`.
        format!("[{}]", u.host)
    } else {
        u.host.clone()
    };
    let broker = format!("{host}:{}", u.effective_port());
    let client_id = u.client_id.clone().unwrap_or_default();
    let window = u16::try_from(u.window).unwrap_or(u16::MAX);
    let mut builder = Client::builder(broker, client_id, &cfg.store.dir)
        .protocol(match u.protocol {
            config::Protocol::V311 => Protocol::V311,
            config::Protocol::V5 => Protocol::V5,
        })
        .durability(cfg.store.durability.to_engine())
        .min_free_bytes(cfg.store.min_free.bytes())
        .keep_alive(u.keepalive)
        .connect_timeout(u.connect_timeout)
        .clean_start(u.clean_start)
        .session_expiry(u.session_expiry)
        .window(window)
        .backoff(u.backoff.min, u.backoff.max)
        .reconnect_immediately_on_server_disconnect(u.reconnect_immediately_after_clean_disconnect)
        .expired(expired_policy(cfg.outbox.expired))
        .capacity(
            cfg.outbox.max_messages,
            cfg.outbox.max_bytes.0,
            match cfg.outbox.overflow {
                config::Overflow::Reject => Overflow::Reject,
                config::Overflow::EvictLowestPriority => Overflow::EvictLowestPriority,
            },
        );
    if u.tls.enabled {
        let ca = match &u.tls.ca_file {
            Some(f) => f.clone(),
            None => system_ca_bundle().ok_or_else(|| {
                AgentError::Setup(format!(
                    "upstream.tls.ca_file is not set and no system CA bundle was found (looked in {}): set upstream.tls.ca_file to the PEM file of the CA that signs the broker's certificate",
                    SYSTEM_CA_BUNDLES.join(", ")
                ))
            })?,
        };
        let mut tls = TlsConfig::new(ca);
        if let (Some(cert), Some(key)) = (&u.tls.cert_file, &u.tls.key_file) {
            tls = tls.client_cert(cert, key);
        }
        if let Some(name) = &u.tls.server_name {
            tls = tls.server_name(name);
        }
        builder = builder.tls(tls);
    }
    let mut client = builder
        .config()
        .map_err(|e| AgentError::Setup(format!("upstream: {e}")))?;
    // A user name without a password is allowed by MQTT (the builder's `credentials` takes
    // both), and `password` holds `password_file`'s content after loading.
    client.session.username.clone_from(&u.username);
    client.session.password = u.password.as_ref().map(|p| p.expose().to_owned());
    client.outbox.bulk = bulk_config(&cfg.outbox.bulk);
    Ok(client)
}

/// `[outbox.bulk]` as the outbox's bulk mode (`None` when off).
fn bulk_config(b: &config::Bulk) -> Option<BulkConfig> {
    let format = match b.mode {
        BulkMode::Off => return None,
        BulkMode::JsonArray => BulkFormat::JsonArray,
        BulkMode::Ndjson => BulkFormat::Ndjson,
    };
    Some(BulkConfig {
        format,
        max_records: b.max_records as usize,
        max_bytes: usize::try_from(b.max_bytes.bytes()).unwrap_or(usize::MAX),
        when: match b.when {
            config::BulkWhen::Always => BulkWhen::Always,
            config::BulkWhen::Backlog => BulkWhen::Backlog(b.min_backlog),
        },
        topic_suffix: b.topic_suffix.clone(),
    })
}

/// The client's policy for `outbox.expired`.
pub fn expired_policy(expired: Expired) -> ExpiredPolicy {
    match expired {
        Expired::Drop => ExpiredPolicy::Drop,
        Expired::Send => ExpiredPolicy::Send,
    }
}

fn system_ca_bundle() -> Option<PathBuf> {
    SYSTEM_CA_BUNDLES
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .map(Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use spool_mqtt::Durability;

    use super::*;
    use crate::config::Environment;

    fn load(text: &str) -> AgentConfig {
        AgentConfig::from_toml_str(
            text,
            Path::new("/etc/spool/agent.toml"),
            &Environment::default().with_hostname("gw"),
        )
        .expect("valid")
    }

    #[test]
    fn every_section_reaches_the_client() {
        let cfg = load(
            r#"
[store]
dir = "/tmp/x"
durability = "interval:100ms"
[upstream]
host = "broker.lan"
port = 1999
protocol = "3.1.1"
username = "dev"
password = "pw"
keepalive = "15s"
clean_start = true
session_expiry = "1h"
connect_timeout = "3s"
window = 17
[upstream.backoff]
min = "200ms"
max = "9s"
[outbox]
max_messages = 10
max_bytes = "1KiB"
overflow = "evict-lowest-priority"
expired = "send"
"#,
        );
        let c = client_config(&cfg).unwrap();
        assert_eq!((c.host.as_str(), c.port), ("broker.lan", 1999));
        assert_eq!(c.store_dir, Path::new("/tmp/x"));
        assert_eq!(c.durability, Durability::Interval(100));
        assert_eq!(c.session.protocol, Protocol::V311);
        assert_eq!(c.session.client_id, "spool-gw");
        assert_eq!(c.session.username.as_deref(), Some("dev"));
        assert_eq!(c.session.password.as_deref(), Some("pw"));
        assert_eq!(c.session.keep_alive, Duration::from_secs(15));
        assert!(c.session.clean_start);
        assert_eq!(c.session.session_expiry_s, 3600);
        assert_eq!(c.session.expired, ExpiredPolicy::Send);
        assert_eq!(c.session.connect_timeout, Duration::from_secs(3));
        assert_eq!(c.session.window, 17);
        assert_eq!(c.backoff_min, Duration::from_millis(200));
        assert_eq!(c.backoff_max, Duration::from_secs(9));
        assert_eq!(c.outbox.max_messages, 10);
        assert_eq!(c.outbox.max_bytes, 1024);
        assert_eq!(c.outbox.overflow, Overflow::EvictLowestPriority);
        assert!(c.tls.is_none());
    }

    #[test]
    fn the_defaults_resume_the_session_sync_and_drop_expired_messages() {
        let c = client_config(&load("[upstream]\nhost = \"h\"\n")).unwrap();
        assert_eq!(c.durability, Durability::Sync);
        assert!(!c.session.clean_start);
        assert_eq!(c.session.session_expiry_s, 24 * 3600);
        assert_eq!(c.session.expired, ExpiredPolicy::Drop);
        let c = client_config(&load(
            "[store]\ndurability = \"none\"\n[upstream]\nhost = \"h\"\n",
        ))
        .unwrap();
        assert_eq!(c.durability, Durability::None);
    }

    #[test]
    fn a_user_name_alone_is_sent_without_a_password() {
        let cfg = load("[upstream]\nhost = \"h\"\nusername = \"u\"\n");
        let c = client_config(&cfg).unwrap();
        assert_eq!(c.session.username.as_deref(), Some("u"));
        assert_eq!(c.session.password, None);
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        let cfg = load("[upstream]\nhost = \"::1\"\n");
        let c = client_config(&cfg).unwrap();
        assert_eq!((c.host.as_str(), c.port), ("::1", 1883));
    }

    #[test]
    fn bulk_settings_reach_the_outbox() {
        let c = client_config(&load("[upstream]\nhost = \"h\"\n")).unwrap();
        assert_eq!(c.outbox.bulk, None, "off by default");
        let cfg = load(
            "[upstream]\nhost = \"h\"\n[outbox.bulk]\nmode = \"json-array\"\nmax_records = 50\nmax_bytes = \"8KiB\"\nwhen = \"always\"\ntopic_suffix = \"/bulk\"\n",
        );
        let b = client_config(&cfg).unwrap().outbox.bulk.expect("on");
        assert_eq!(b.format, BulkFormat::JsonArray);
        assert_eq!((b.max_records, b.max_bytes), (50, 8192));
        assert_eq!(b.when, BulkWhen::Always);
        assert_eq!(b.topic_suffix, "/bulk");
        let cfg =
            load("[upstream]\nhost = \"h\"\n[outbox.bulk]\nmode = \"ndjson\"\nmin_backlog = 7\n");
        let b = client_config(&cfg).unwrap().outbox.bulk.expect("on");
        assert_eq!(
            (b.format, b.when),
            (BulkFormat::Ndjson, BulkWhen::Backlog(7))
        );
        assert!(b.validate().is_ok());
    }
}
