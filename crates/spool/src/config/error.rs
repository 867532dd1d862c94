//! What can be wrong with a configuration, and where each value came from.

use std::fmt;
use std::path::PathBuf;

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A line of the configuration file.
    File { path: PathBuf, line: usize },
    /// An environment variable.
    Env { var: String },
    /// A command-line flag (`--log-format`), laid over the variables.
    Flag { flag: String },
    /// Not set anywhere: the default.
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line } => write!(f, "{} line {line}", path.display()),
            Origin::Env { var } => write!(f, "from {var}"),
            Origin::Flag { flag } => write!(f, "from {flag}"),
            Origin::Default => f.write_str("the default"),
        }
    }
}

/// One problem with the configuration. `Display` names the key (dotted path), the bad value,
/// what is allowed, and where the value came from.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not valid TOML: {message}")]
    Syntax { message: String },
    #[error("unknown key {key} ({origin}){}", did_you_mean(suggestion.as_deref()))]
    UnknownKey {
        key: String,
        origin: Origin,
        suggestion: Option<String>,
    },
    #[error(
        "unknown configuration variable {var}{}",
        did_you_mean(suggestion.as_deref())
    )]
    UnknownVar {
        var: String,
        suggestion: Option<String>,
    },
    #[error("{var} is not valid UTF-8")]
    NotUnicode { var: String },
    /// `value` is as written (TOML syntax), or `***` for a secret.
    #[error("{key} = {value}: {allowed} ({origin})")]
    Invalid {
        key: String,
        value: String,
        allowed: String,
        origin: Origin,
    },
    #[error("{key} is not set: {allowed}")]
    Missing { key: String, allowed: String },
}

fn did_you_mean(s: Option<&str>) -> String {
    s.map(|s| format!(": did you mean {s}?"))
        .unwrap_or_default()
}

impl ConfigError {
    /// The dotted key the error is about, if it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::UnknownKey { key, .. }
            | ConfigError::Invalid { key, .. }
            | ConfigError::Missing { key, .. } => Some(key),
            _ => None,
        }
    }
}

impl ConfigError {
    /// Errors are listed in file order, then those from the environment, then the rest.
    pub(crate) fn order(&self) -> (u8, usize) {
        match self {
            ConfigError::UnknownKey { origin, .. } | ConfigError::Invalid { origin, .. } => {
                match origin {
                    Origin::File { line, .. } => (1, *line),
                    Origin::Env { .. } | Origin::Flag { .. } => (2, 0),
                    Origin::Default => (3, 0),
                }
            }
            ConfigError::UnknownVar { .. } | ConfigError::NotUnicode { .. } => (2, 0),
            ConfigError::Missing { .. } => (3, 0),
            ConfigError::Read { .. } | ConfigError::Syntax { .. } => (0, 0),
        }
    }
}

/// Every problem found in one configuration (a load reports all of them, not the first).
#[derive(Debug)]
pub struct ConfigErrors {
    /// The configuration file.
    pub file: PathBuf,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        match self.errors.as_slice() {
            [one] => write!(f, "invalid configuration {file}: {one}"),
            many => {
                write!(f, "invalid configuration {file}: {} problems", many.len())?;
                for e in many {
                    write!(f, "\n  - {e}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigErrors {}
