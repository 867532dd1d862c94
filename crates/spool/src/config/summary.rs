//! The short account of an effective configuration that `spool config check` prints (secrets
//! masked: the password is only ever shown as `***`).

use std::fmt::Write as _;

use super::schema::{AgentConfig, Protocol};
use super::units::format_duration;

impl AgentConfig {
    /// A few lines, one per section, of what the agent would run with.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let u = &self.upstream;
        let scheme = if u.tls.enabled { "mqtts" } else { "mqtt" };
        let version = match u.protocol {
            Protocol::V311 => "3.1.1",
            Protocol::V5 => "5",
        };
        let _ = write!(
            s,
            "upstream:      {scheme}://{}:{}, MQTT {version}, client id {:?}",
            u.host,
            u.effective_port(),
            u.client_id.as_deref().unwrap_or("")
        );
        if let Some(user) = &u.username {
            let _ = write!(s, ", user {user:?}");
        }
        if let Some(pw) = &u.password {
            let _ = write!(s, ", password {pw}");
        }
        if u.tls.cert_file.is_some() {
            s.push_str(", client certificate");
        }
        let _ = writeln!(
            s,
            ", keep alive {}, session {}",
            format_duration(u.keepalive),
            if u.clean_start {
                "clean".to_owned()
            } else {
                format!("kept {}", format_duration(u.session_expiry))
            }
        );
        let _ = writeln!(
            s,
            "store:         {} (durability {})",
            self.store.dir.display(),
            self.store.durability
        );
        let o = &self.outbox;
        let limit = |n: u64, shown: String| {
            if n == 0 {
                "unlimited".to_owned()
            } else {
                shown
            }
        };
        let _ = writeln!(
            s,
            "outbox:        max_bytes {}, max_messages {}, overflow {}, default qos {}",
            limit(o.max_bytes.bytes(), o.max_bytes.to_string()),
            limit(o.max_messages, o.max_messages.to_string()),
            serde_plain(&o.overflow),
            o.default_qos
        );
        let l = &self.listener;
        if l.enabled {
            let _ = writeln!(
                s,
                "listener:      {} ({} connections, packets up to {})",
                l.bind, l.max_connections, l.max_packet_size
            );
        } else {
            let _ = writeln!(s, "listener:      off");
        }
        if self.subscriptions.is_empty() {
            let _ = writeln!(s, "subscriptions: none");
        } else {
            let subs: Vec<String> = self
                .subscriptions
                .iter()
                .map(|x| format!("{} (qos {} -> {})", x.filter, x.qos, x.queue))
                .collect();
            let _ = writeln!(s, "subscriptions: {}", subs.join(", "));
        }
        if self.http.enabled {
            let _ = writeln!(s, "http:          {}", self.http.bind);
        } else {
            let _ = writeln!(s, "http:          off");
        }
        let _ = writeln!(
            s,
            "log:           {}, {}",
            serde_plain(&self.log.format),
            self.log.level
        );
        s
    }
}

/// A unit enum's serde name (`evict-lowest-priority`).
fn serde_plain<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}
