//! The agent's logs (`tracing-subscriber`): human-readable lines by default, one JSON object
//! per line with `log.format = "json"` or `--log-format json`; the level from `log.level`,
//! unless `RUST_LOG` is set (an operator's quick override that needs no file edit). Logs go
//! to stderr (journald takes them from there under systemd).

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// `log.level` or `RUST_LOG` is not a filter `EnvFilter` reads.
    #[error("{origin} = {value:?} is not a log filter ({reason}); use a level (error, warn, info, debug, trace) or directives such as \"info,spool_mqtt=debug\"")]
    Filter {
        /// `log.level` or `RUST_LOG`.
        origin: &'static str,
        /// The value.
        value: String,
        /// Why.
        reason: String,
    },
    /// A global subscriber was already installed.
    #[error("logging was already set up")]
    AlreadySet,
}

/// Installs the global subscriber.
pub fn init(format: LogFormat, level: &str) -> Result<(), LogError> {
    let (origin, value) = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => ("RUST_LOG", v),
        _ => ("log.level", level.to_owned()),
    };
    let filter = EnvFilter::builder()
        .parse(&value)
        .map_err(|e| LogError::Filter {
            origin,
            value: value.clone(),
            reason: e.to_string(),
        })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let res = match format {
        LogFormat::Human => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    res.map_err(|_| LogError::AlreadySet)
}
