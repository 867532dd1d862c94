//! The `spool` binary: parses the command line and maps errors to a one-line cause, a hint and
//! an exit code. Everything else lives in the library (`spool::cli`, `spool::bench`).

use std::process::ExitCode;

use clap::Parser;
use spool::cli::{self, Cli};

/// Exit codes (documented in the README).
mod exit {
    pub const ERROR: u8 = 1;
    pub const LOCKED: u8 = 3;
    pub const NOT_FOUND: u8 = 4;
    pub const CORRUPT: u8 = 5;
    /// `spool inspect verify` ran and found problems (they are printed).
    pub const PROBLEMS: u8 = 6;
    /// The agent's configuration is invalid (every problem is printed).
    pub const CONFIG: u8 = 7;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli::run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A closed stdout (e.g. `spool peek q | head -1`) is not a failure.
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::BrokenPipe {
                    return ExitCode::SUCCESS;
                }
            }
            eprintln!("error: {e:#}");
            if e.downcast_ref::<spool::config::ConfigErrors>().is_some() {
                return ExitCode::from(exit::CONFIG);
            }
            if e.downcast_ref::<cli::inspect::ProblemsFound>().is_some() {
                return ExitCode::from(exit::PROBLEMS);
            }
            let engine = e
                .chain()
                .find_map(|c| c.downcast_ref::<spool_engine::Error>())
                .or_else(|| {
                    e.chain()
                        .find_map(|c| c.downcast_ref::<spool::agent::AgentError>())
                        .and_then(spool::agent::AgentError::engine)
                });
            ExitCode::from(match engine {
                Some(spool_engine::Error::Locked { .. }) => exit::LOCKED,
                Some(
                    spool_engine::Error::NotFound { .. }
                    | spool_engine::Error::UnknownQueue { .. }
                    | spool_engine::Error::UnknownTopic { .. }
                    | spool_engine::Error::LeaseLost { .. },
                ) => exit::NOT_FOUND,
                Some(spool_engine::Error::Corrupt { .. } | spool_engine::Error::Format { .. }) => {
                    exit::CORRUPT
                }
                _ => exit::ERROR,
            })
        }
    }
}
