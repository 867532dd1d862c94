//! The agent's configuration (`spool agent --config agent.toml`): one TOML file, every key
//! overridable by an environment variable `SPOOL_<SECTION>__<KEY>`, validated at start.
//!
//! The way of a value: file text -> `toml::Table` with the line of every key (`load`) ->
//! environment variables laid over it, typed by the key table (`keys`) -> every key and value
//! checked against that table (unknown keys get the closest valid one) -> serde into the
//! structs of `schema` -> cross-field and file checks, derived values filled in (`validate`).
//! Every problem is collected and reported together, each naming the dotted key, the bad
//! value, what is allowed and where the value came from (file line, variable or flag).
//!
//! This module reads files (the configuration, and the TLS and password files it names, to
//! prove them readable) and nothing else: it opens no store and no socket, and it does not
//! depend on the MQTT client; the agent maps [`AgentConfig`] onto the client's options.

mod error;
mod example;
pub mod keys;
mod load;
mod schema;
pub mod serve;
mod summary;
pub mod units;
mod validate;

use std::path::Path;

pub use error::{ConfigError, ConfigErrors, Origin};
pub use example::example;
pub use schema::*;
pub use units::ByteSize;
pub use validate::check_filter;

/// The environment a configuration is loaded in: the `SPOOL_` variables, command-line flags
/// that set keys (laid over the variables), and the host name (for the default client id).
/// Passed explicitly so that tests need not touch the process's environment.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// Variables, sorted by name (so that errors come in a stable order).
    vars: Vec<(String, String)>,
    /// `SPOOL_` variables whose value is not UTF-8 (an error).
    not_unicode: Vec<String>,
    /// `(key, value, flag)`, in the order given.
    flags: Vec<(String, String, String)>,
    hostname: Option<String>,
}

impl Environment {
    /// The process's `SPOOL_` variables and the machine's host name.
    pub fn from_process() -> Self {
        let mut env = Self::default();
        for (k, v) in std::env::vars_os() {
            let Some(k) = k.to_str().filter(|k| k.starts_with("SPOOL_")) else {
                continue;
            };
            match v.into_string() {
                Ok(v) => env.vars.push((k.to_owned(), v)),
                Err(_) => env.not_unicode.push(k.to_owned()),
            }
        }
        env.vars.sort();
        env.not_unicode.sort();
        env.hostname = read_hostname();
        env
    }

    /// Exactly these variables (any not starting with `SPOOL_` are ignored), no host name.
    pub fn from_vars<K: Into<String>, V: Into<String>>(
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let mut vars: Vec<(String, String)> = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .filter(|(k, _)| k.starts_with("SPOOL_"))
            .collect();
        vars.sort();
        Self {
            vars,
            ..Self::default()
        }
    }

    /// Sets the host name the default client id is made from.
    #[must_use]
    pub fn with_hostname(mut self, host: impl Into<String>) -> Self {
        self.hostname = Some(host.into());
        self
    }

    /// A command-line flag that sets `key` (dotted, e.g. `log.format` for `--log-format json`):
    /// applied after the variables, with the same rules; errors name `flag`.
    #[must_use]
    pub fn with_flag(mut self, key: &str, value: impl Into<String>, flag: &str) -> Self {
        self.flags
            .push((key.to_owned(), value.into(), flag.to_owned()));
        self
    }

    /// The `SPOOL_` variables that override configuration keys (for a summary).
    pub fn overrides(&self) -> impl Iterator<Item = &str> {
        self.vars
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| k.contains("__"))
    }
}

/// The kernel's host name (Linux), else `/etc/hostname`.
fn read_hostname() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
        .find(|s| !s.is_empty())
}

impl AgentConfig {
    /// Reads `path`, lays `env` over it and validates the result. On success every derived
    /// value is filled in: `upstream.port`, `upstream.client_id`, `upstream.password` (from
    /// `password_file`), and relative paths of the file resolved against its directory.
    pub fn load(path: &Path, env: &Environment) -> Result<Self, ConfigErrors> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_toml_str(&text, path, env),
            Err(source) => Err(ConfigErrors {
                file: path.to_owned(),
                errors: vec![ConfigError::Read {
                    path: path.to_owned(),
                    source,
                }],
            }),
        }
    }

    /// As [`AgentConfig::load`], from text; `file` names it in errors and anchors relative
    /// paths.
    pub fn from_toml_str(text: &str, file: &Path, env: &Environment) -> Result<Self, ConfigErrors> {
        let mut origins = load::Origins::new();
        let mut errors = Vec::new();
        let mut flagged = std::collections::BTreeSet::new();
        let merged = load::merge(text, file, env, &mut origins, &mut errors, &mut flagged);
        if let Some(mut cfg) = merged {
            let mut later = Vec::new();
            validate::validate(&mut cfg, file, env, &origins, &mut later);
            // A key already reported (and so left at its default) is not reported again.
            later.retain(|e| e.key().is_none_or(|k| !flagged.contains(k)));
            errors.append(&mut later);
            if errors.is_empty() {
                return Ok(cfg);
            }
        }
        errors.sort_by_key(ConfigError::order);
        Err(ConfigErrors {
            file: file.to_owned(),
            errors,
        })
    }
}

#[cfg(test)]
mod tests;
