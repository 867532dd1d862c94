//! `spool serve`: the queue server (Redis protocol) on a store directory, until SIGTERM or
//! SIGINT. Argument checks here (the loopback rule); the server is `spool_server`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use spool_server::{Server, ServerConfig, Service};

use super::agent::{runtime, Signals};
use super::Cli;
use crate::config::LogFormat;

/// The Redis-protocol port of the design (`shared/design/server.md`).
pub const BIND_DEFAULT: &str = "127.0.0.1:7411";

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address of the Redis-protocol listener; loopback unless --allow-unauthenticated
    #[arg(long, value_name = "ADDR", default_value = BIND_DEFAULT)]
    pub bind: SocketAddr,
    /// Listen on a non-loopback address although the server has no authentication yet:
    /// anyone who can reach it can read and delete every message
    #[arg(long)]
    pub allow_unauthenticated: bool,
    /// Connections served at once; more are refused with an error reply
    #[arg(long, value_name = "N", default_value_t = spool_server::MAX_CONNECTIONS_DEFAULT)]
    pub max_connections: usize,
}

/// Why a bind address is refused: authentication is not there yet.
fn check_bind(a: &ServeArgs) -> Result<()> {
    if !a.bind.ip().is_loopback() && !a.allow_unauthenticated {
        anyhow::bail!(
            "refusing to listen on {}: the queue server has no authentication yet, so anyone who can reach that address could read and delete every message. Bind to a loopback address (the default, {BIND_DEFAULT}), or pass --allow-unauthenticated if the network is trusted",
            a.bind
        );
    }
    if a.max_connections == 0 {
        anyhow::bail!("--max-connections must be at least 1");
    }
    Ok(())
}

/// `spool serve`.
pub fn run(cli: &Cli, a: &ServeArgs) -> Result<()> {
    check_bind(a)?;
    crate::agent::logging::init(LogFormat::Human, "info")?;
    // A server runs for long: its log moves to a prepared segment right after start-up, so
    // that every group commit overwrites instead of appending (format.md, "Rolling").
    let store = cli.open_with(spool_engine::Options {
        segment_prep: spool_engine::SegmentPrep::Eager,
        ..spool_engine::Options::default()
    })?;
    let mut config = ServerConfig::new(a.bind);
    config.max_connections = a.max_connections;
    let rt = runtime()?;
    rt.block_on(async {
        let mut signals = Signals::new()?;
        let server = Server::start(config, Service::open(store))
            .await
            .context("cannot start the queue server")?;
        tracing::info!(
            "spool serve: listening on {} (Redis protocol), store {}",
            server.local_addr(),
            cli.dir().display()
        );
        let name = signals.next().await;
        tracing::info!("{name}: stopping");
        server.shutdown().await;
        Ok::<_, anyhow::Error>(())
    })?;
    // A `QGET ... WAIT` still blocked in the engine is not waited for (nothing was handed
    // out to anyone by it; a lease it takes now only hides a message until its VT passes).
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(bind: &str, allow: bool) -> ServeArgs {
        ServeArgs {
            bind: bind.parse().expect("an address"),
            allow_unauthenticated: allow,
            max_connections: 10,
        }
    }

    #[test]
    fn only_loopback_without_the_explicit_flag() {
        assert!(check_bind(&args("127.0.0.1:7411", false)).is_ok());
        assert!(check_bind(&args("[::1]:7411", false)).is_ok());
        let e = check_bind(&args("0.0.0.0:7411", false)).expect_err("refused");
        assert!(e.to_string().contains("--allow-unauthenticated"), "{e}");
        assert!(check_bind(&args("0.0.0.0:7411", true)).is_ok());
    }
}
