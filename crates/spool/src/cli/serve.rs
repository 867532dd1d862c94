//! `spool serve`: the queue server (Redis protocol) on a store directory, until SIGTERM or
//! SIGINT. Argument checks here (the loopback rule); the server is `spool_server`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use spool_server::http::{HttpConfig, HttpServer};
use spool_server::{Server, ServerConfig, Service};

use super::agent::{runtime, Signals};
use super::Cli;
use crate::config::LogFormat;

/// The Redis-protocol port of the design (`shared/design/server.md`).
pub const BIND_DEFAULT: &str = "127.0.0.1:7411";
/// The HTTP/JSON port of the design.
pub const HTTP_DEFAULT: &str = "127.0.0.1:7412";

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
    /// Address of the HTTP/JSON listener; loopback unless --allow-unauthenticated
    #[arg(long, value_name = "ADDR", default_value = HTTP_DEFAULT)]
    pub http: SocketAddr,
    /// Do not start the HTTP/JSON listener
    #[arg(long)]
    pub no_http: bool,
}

/// Why a bind address is refused: authentication is not there yet.
fn check_bind(a: &ServeArgs) -> Result<()> {
    if !a.bind.ip().is_loopback() && !a.allow_unauthenticated {
        anyhow::bail!(
            "refusing to listen on {}: the queue server has no authentication yet, so anyone who can reach that address could read and delete every message. Bind to a loopback address (the default, {BIND_DEFAULT}), or pass --allow-unauthenticated if the network is trusted",
            a.bind
        );
    }
    if !a.no_http && !a.http.ip().is_loopback() && !a.allow_unauthenticated {
        anyhow::bail!(
            "refusing to serve HTTP on {}: the queue server has no authentication yet, so anyone who can reach that address could read and delete every message. Use a loopback address (the default, {HTTP_DEFAULT}), --no-http, or pass --allow-unauthenticated if the network is trusted",
            a.http
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
    let store = cli.open()?;
    let mut config = ServerConfig::new(a.bind);
    config.max_connections = a.max_connections;
    let rt = runtime()?;
    rt.block_on(async {
        let mut signals = Signals::new()?;
        let svc = Service::open(store);
        let server = Server::start(config, svc.clone())
            .await
            .context("cannot start the queue server")?;
        let http = if a.no_http {
            None
        } else {
            let h = HttpServer::start(HttpConfig::new(a.http), svc)
                .await
                .context(
                    "cannot start the HTTP listener (pick another --http ADDR, or --no-http)",
                )?;
            tracing::info!("spool serve: HTTP/JSON on http://{}", h.local_addr());
            Some(h)
        };
        tracing::info!(
            "spool serve: listening on {} (Redis protocol), store {}",
            server.local_addr(),
            cli.dir().display()
        );
        let name = signals.next().await;
        tracing::info!("{name}: stopping");
        server.shutdown().await;
        if let Some(h) = http {
            h.shutdown().await;
        }
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
            http: HTTP_DEFAULT.parse().expect("an address"),
            no_http: false,
        }
    }

    #[test]
    fn only_loopback_without_the_explicit_flag() {
        assert!(check_bind(&args("127.0.0.1:7411", false)).is_ok());
        assert!(check_bind(&args("[::1]:7411", false)).is_ok());
        let e = check_bind(&args("0.0.0.0:7411", false)).expect_err("refused");
        assert!(e.to_string().contains("--allow-unauthenticated"), "{e}");
        assert!(check_bind(&args("0.0.0.0:7411", true)).is_ok());
        let mut h = args("127.0.0.1:7411", false);
        h.http = "0.0.0.0:7412".parse().expect("an address");
        let e = check_bind(&h).expect_err("refused");
        assert!(e.to_string().contains("--no-http"), "{e}");
        h.no_http = true;
        assert!(check_bind(&h).is_ok());
    }
}
