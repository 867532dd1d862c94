//! `spool config example`: a commented `agent.toml` with every key, written from the key table
//! (explanations) and `AgentConfig::default()` (values), so that it cannot drift from either.
//! `packaging/agent.toml` is a copy; a test keeps them equal.

use std::fmt::Write as _;

use toml::Value;

use super::keys::{KeyDef, ARRAY_SECTIONS, KEYS, SECTIONS};
use super::schema::AgentConfig;

const HEADER: &str = "\
# spool agent configuration: `spool agent --config /etc/spool/agent.toml`.
# Written by `spool config example`; check a file with `spool config check FILE`.
#
# Every key can be overridden by an environment variable SPOOL_<SECTION>__<KEY>
# (upper case, double underscore between levels), e.g. SPOOL_UPSTREAM__HOST=broker.lan,
# SPOOL_UPSTREAM__TLS__CA_FILE=/etc/ssl/ca.pem, SPOOL_SUBSCRIPTIONS__0__FILTER='cmd/#'.
# Durations: \"500ms\", \"30s\", \"5m\", \"1h\", \"1d\". Sizes: a number of bytes, or
# \"512KiB\", \"64MiB\", \"1GiB\" (powers of 1024), \"500KB\", \"1GB\" (powers of 1000).
# Keys shown commented out have no default; the values shown are the defaults.
";

/// The example configuration file.
pub fn example() -> String {
    let defaults = Value::try_from(AgentConfig::default())
        .expect("the default configuration serializes to TOML");
    let mut out = String::from(HEADER);
    for (section, doc) in SECTIONS {
        let array = ARRAY_SECTIONS.contains(section);
        out.push('\n');
        for line in doc.lines() {
            let _ = writeln!(out, "# {line}");
        }
        if array {
            let _ = writeln!(out, "# [[{section}]]");
        } else {
            let _ = writeln!(out, "[{section}]");
        }
        for k in KEYS.iter().filter(|k| parent(k) == *section) {
            let value = lookup(&defaults, k.path).filter(|_| !array);
            for line in k.doc.lines() {
                let _ = writeln!(out, "# {line}");
            }
            match (value, k.sample) {
                // A required key with an empty default: shown with its sample, uncommented.
                (Some(Value::String(s)), Some(sample)) if s.is_empty() => {
                    let _ = writeln!(out, "{} = {sample}", leaf(k));
                }
                (Some(v), _) => {
                    let _ = writeln!(out, "{} = {v}", leaf(k));
                }
                (None, Some(sample)) => {
                    let _ = writeln!(out, "# {} = {sample}", leaf(k));
                }
                (None, None) => unreachable!("{}: a key with no default needs a sample", k.path),
            }
        }
    }
    out
}

fn parent(k: &KeyDef) -> &'static str {
    k.path.rsplit_once('.').map_or("", |(p, _)| p)
}

fn leaf(k: &KeyDef) -> &'static str {
    k.path.rsplit_once('.').map_or(k.path, |(_, l)| l)
}

fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, seg| v.get(seg))
}
