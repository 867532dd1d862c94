//! `spool serve`: the queue server (Redis protocol) on a store directory, until SIGTERM or
//! SIGINT; `spool serve hash-password` and `spool serve new-token` make the secrets of its
//! `[[users]]`. Settings come from flags over `SPOOL_SERVE__` variables over the
//! `--config` file (`config/serve.rs`); the server is `spool_server`.

use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use spool_server::auth::Auth;
use spool_server::dsmq::{DsmqConfig, DsmqServer};
use spool_server::http::{HttpConfig, HttpServer};
use spool_server::{Policy, Server, ServerConfig, Service};

use super::agent::{runtime, Signals};
use super::Cli;
use crate::config::serve::{load_serve, ClientAuth, ServeConfig};
use crate::config::LogFormat;

/// The Redis-protocol port of the design (`shared/design/server.md`).
pub const BIND_DEFAULT: &str = "127.0.0.1:7411";
/// The HTTP/JSON port of the design.
pub const HTTP_DEFAULT: &str = "127.0.0.1:7412";

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ServeArgs {
    #[command(subcommand)]
    pub action: Option<ServeAction>,
    /// The server's configuration file (TOML; docs/serve.md). Flags win over
    /// SPOOL_SERVE__<SECTION>__<KEY> variables, which win over the file
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address of the Redis-protocol listener [default: 127.0.0.1:7411]; a non-loopback
    /// address needs [[users]] in the configuration, or --allow-unauthenticated
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<SocketAddr>,
    /// Listen on a non-loopback address with no users configured: anyone who can reach it
    /// can read and delete every message
    #[arg(long)]
    pub allow_unauthenticated: bool,
    /// Connections served at once; more are refused with an error reply [default: 10000]
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Address of the HTTP/JSON listener [default: 127.0.0.1:7412]; the loopback rule
    /// applies as for --bind
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// Do not start the HTTP/JSON listener
    #[arg(long)]
    pub no_http: bool,
    /// Also serve dsmq's Python client (WebSocket + JSON) on this address, e.g.
    /// 127.0.0.1:30008 (dsmq's port; docs/dsmq.md); the loopback rule applies
    #[arg(long, value_name = "ADDR")]
    pub dsmq: Option<SocketAddr>,
}

#[derive(Debug, Subcommand)]
pub enum ServeAction {
    /// Read a password (prompted without echo, or one line of stdin) and print its argon2id
    /// hash, for a user's password_hash
    HashPassword,
    /// Print a new random bearer token and the SHA-256 hash to put in a user's tokens
    NewToken,
    /// Check a configuration file (exit 7 with every problem when it is invalid)
    Check {
        /// The file
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Print an example configuration, every key commented
    ExampleConfig,
}

/// Everything `run` needs, from flags, variables and the file.
#[derive(Debug)]
struct Settings {
    bind: SocketAddr,
    max_connections: usize,
    config: ServeConfig,
}

fn settings(a: &ServeArgs) -> Result<Settings> {
    let vars: Vec<(String, String)> = std::env::vars().collect();
    let config = load_serve(a.config.as_deref(), &vars)?;
    let bind = match (a.bind, &config.file.resp.bind) {
        (Some(b), _) => b,
        (None, Some(s)) => s.parse().map_err(|e| crate::config::ConfigErrors {
            file: a.config.clone().unwrap_or_default(),
            errors: vec![crate::config::ConfigError::Invalid {
                key: "resp.bind".into(),
                value: s.clone(),
                allowed: format!("an address and port such as {BIND_DEFAULT} ({e})"),
                origin: crate::config::Origin::Default,
            }],
        })?,
        (None, None) => BIND_DEFAULT.parse().context("the default address")?,
    };
    let max_connections = a
        .max_connections
        .or(config.file.resp.max_connections)
        .unwrap_or(spool_server::MAX_CONNECTIONS_DEFAULT);
    Ok(Settings {
        bind,
        max_connections,
        config,
    })
}

/// The loopback rule: a non-loopback bind needs users (or the explicit flag); without TLS
/// it is allowed with a warning (passwords would cross the network in the clear).
fn check_bind(
    bind: SocketAddr,
    has_users: bool,
    tls: bool,
    allow: bool,
    max_connections: usize,
) -> Result<Option<String>> {
    if max_connections == 0 {
        anyhow::bail!("--max-connections must be at least 1");
    }
    if bind.ip().is_loopback() {
        return Ok(None);
    }
    if !has_users && !allow {
        anyhow::bail!(
            "refusing to listen on {bind}: no users are configured, so anyone who can reach that address could read and delete every message. Add [[users]] to the configuration (docs/serve.md; `spool serve hash-password` makes a password hash), bind to a loopback address (the default, {BIND_DEFAULT}), or pass --allow-unauthenticated if the network is trusted"
        );
    }
    Ok((!tls).then(|| {
        format!("listening on {bind} without TLS: passwords and messages cross the network in the clear; set [tls] cert and key (docs/serve.md)")
    }))
}

/// `spool serve ...`.
pub fn run(cli: &Cli, a: &ServeArgs) -> Result<()> {
    match &a.action {
        Some(ServeAction::HashPassword) => return hash_password(),
        Some(ServeAction::NewToken) => {
            let token = spool_server::auth::new_token();
            println!("token: {token}");
            println!("hash:  {}", spool_server::auth::token_hash(&token));
            eprintln!("Give the token to the client (HTTP: Authorization: Bearer <token>); put the hash in the user's tokens = [...]. The token is not stored anywhere: keep it now.");
            return Ok(());
        }
        Some(ServeAction::Check { file }) => {
            let vars: Vec<(String, String)> = std::env::vars().collect();
            load_serve(Some(file), &vars)?;
            println!("{}: valid", file.display());
            return Ok(());
        }
        Some(ServeAction::ExampleConfig) => {
            print!("{}", crate::config::serve::SERVE_EXAMPLE);
            return Ok(());
        }
        None => {}
    }
    let s = settings(a)?;
    let auth = Auth::new(s.config.users.clone()).context("the configured users")?;
    let warning = check_bind(
        s.bind,
        auth.is_required(),
        s.config.tls.is_some(),
        a.allow_unauthenticated,
        s.max_connections,
    )?;
    crate::agent::logging::init(LogFormat::Human, "info")?;
    if let Some(w) = warning {
        tracing::warn!("{w}");
    }
    let tls = match &s.config.tls {
        Some(t) => Some(
            spool_server::tls::Tls::load(&spool_server::tls::TlsFiles {
                cert: t.cert.clone(),
                key: t.key.clone(),
                client_ca: t.client_ca.clone(),
                client_auth: match t.client_auth {
                    ClientAuth::Required => spool_server::tls::ClientAuth::Required,
                    ClientAuth::Optional => spool_server::tls::ClientAuth::Optional,
                },
            })
            .context("cannot set up TLS ([tls] in the configuration)")?,
        ),
        None => None,
    };
    // --dir and $SPOOL_DIR (both in `cli.dir`) win over the file's [store] dir.
    let dir = match (&cli.dir, &s.config.file.store.dir) {
        (None, Some(dir)) => dir.clone(),
        _ => cli.dir(),
    };
    let mut policy = Policy::default();
    if let Some(v) = s.config.file.policy.auto_create {
        policy.auto_create = v;
    }
    if let Some(v) = s.config.file.policy.max_queues {
        policy.max_queues = v;
    }
    // A server runs for long: its log moves to a prepared segment right after start-up, so
    // that every group commit overwrites instead of appending (format.md, "Rolling"). The
    // engine creates queues on writes only as the policy says (a queue dropped between the
    // policy's check and the push is not recreated behind its back).
    let store = Cli::open_in(
        &dir,
        spool_engine::Options {
            segment_prep: spool_engine::SegmentPrep::Eager,
            auto_create: policy.auto_create,
            durability: s
                .config
                .file
                .store
                .durability
                .unwrap_or_default()
                .to_engine(),
            ..spool_engine::Options::default()
        },
    )?;
    let durability = s.config.file.store.durability.unwrap_or_default();
    if durability != crate::config::Durability::Sync {
        tracing::warn!(
            "[store] durability = \"{durability}\": a reply means written, not on disk; a power cut can lose what was acknowledged in that window"
        );
    }
    let mut config = ServerConfig::new(s.bind);
    config.max_connections = s.max_connections;
    if let Some(t) = s.config.write_timeout {
        config.write_timeout = t;
    }
    config.idle_timeout = s.config.idle_timeout;
    config.tls.clone_from(&tls);
    if let Some(p) = s.config.file.resp.max_payload {
        let max = usize::try_from(p.bytes()).unwrap_or(usize::MAX);
        config.limits.bulk_max = max;
        // Up to twice the limit is read and dropped (answered -TOOBIG, connection kept).
        config.limits.bulk_discard_max = config.limits.bulk_discard_max.max(max.saturating_mul(2));
    }
    let tls_on = config.tls.is_some();
    let dsmq = dsmq_settings(a, &s, &auth)?;
    let http = http_settings(a, &s, &auth, tls.clone(), &config)?;
    let rt = runtime()?;
    rt.block_on(async {
        let mut signals = Signals::new()?;
        let svc = Service::new(store, auth.clone(), policy);
        let server = Server::start(config, svc.clone())
            .await
            .context("cannot start the queue server")?;
        let http = match http {
            Some(h) => {
                let server = HttpServer::start(h, svc.clone()).await.context(
                    "cannot start the HTTP listener (pick another --http ADDR, or --no-http)",
                )?;
                tracing::info!(
                    "spool serve: HTTP/JSON on {}://{}",
                    if tls_on { "https" } else { "http" },
                    server.local_addr()
                );
                Some(server)
            }
            None => None,
        };
        let shutdown_asked = dsmq.as_ref().map(|d| d.on_shutdown.clone());
        let dsmq = match dsmq {
            Some(d) => {
                let server = DsmqServer::start(d, svc.clone())
                    .await
                    .context("cannot start the dsmq listener")?;
                tracing::info!("spool serve: dsmq clients on {}", server.local_addr());
                Some(server)
            }
            None => None,
        };
        tracing::info!(
            "spool serve: listening on {} (Redis protocol{}), store {}, {}",
            server.local_addr(),
            if tls_on { " over TLS" } else { "" },
            dir.display(),
            if auth.is_required() {
                "users required"
            } else {
                "no authentication"
            }
        );
        let asked = async {
            match &shutdown_asked {
                Some(n) => n.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            name = signals.next() => tracing::info!("{name}: stopping"),
            () = asked => tracing::info!("shutdown asked by a dsmq client: stopping"),
        }
        if let Some(d) = dsmq {
            d.shutdown().await;
        }
        if let Some(h) = http {
            h.shutdown().await;
        }
        server.shutdown().await;
        Ok::<_, anyhow::Error>(())
    })?;
    // A `QGET ... WAIT` still blocked in the engine is not waited for (nothing was handed
    // out to anyone by it; a lease it takes now only hides a message until its VT passes).
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// The HTTP listener's settings, unless it is off (`--no-http`, or `[http] enabled = false`):
/// on `--http`, else `[http] bind`, else 127.0.0.1:7412, over TLS when `[tls]` is set, with
/// the Redis listener's payload limit.
fn http_settings(
    a: &ServeArgs,
    s: &Settings,
    auth: &Auth,
    tls: Option<spool_server::tls::Tls>,
    resp: &ServerConfig,
) -> Result<Option<HttpConfig>> {
    let file = &s.config.file.http;
    if a.no_http || (a.http.is_none() && file.enabled == Some(false)) {
        return Ok(None);
    }
    let bind = match (a.http, &file.bind) {
        (Some(b), _) => b,
        (None, Some(b)) => b.parse().with_context(|| {
            format!("[http] bind {b:?} is not an address and port such as {HTTP_DEFAULT}")
        })?,
        (None, None) => HTTP_DEFAULT.parse().context("the default HTTP address")?,
    };
    if let Some(w) = check_bind(
        bind,
        auth.is_required(),
        tls.is_some(),
        a.allow_unauthenticated,
        1,
    )? {
        tracing::warn!("HTTP: {w}");
    }
    let mut config = HttpConfig::new(bind);
    config.tls = tls;
    if let Some(n) = file.max_connections {
        config.max_connections = n;
    }
    if let Some(h) = file.max_header_size {
        config.header_max = usize::try_from(h.bytes()).unwrap_or(usize::MAX);
    }
    if let Some(t) = s.config.http_header_timeout {
        config.header_timeout = t;
    }
    if let Some(t) = s.config.http_body_timeout {
        config.body_timeout = t;
    }
    if let Some(t) = s.config.http_write_timeout {
        config.write_timeout = t;
    }
    // A JSON envelope around the largest payload (base64 makes it 4/3 as long).
    config.body_max = config
        .body_max
        .max(resp.limits.bulk_max / 3 * 4 + (64 << 10));
    Ok(Some(config))
}

/// The dsmq listener's settings, when it is on (`--dsmq ADDR`, or `[dsmq] enabled`).
fn dsmq_settings(a: &ServeArgs, s: &Settings, auth: &Auth) -> Result<Option<DsmqConfig>> {
    let file = &s.config.file.dsmq;
    let bind = match (a.dsmq, file.enabled.unwrap_or(false), &file.bind) {
        (Some(b), _, _) => b,
        (None, false, _) => return Ok(None),
        (None, true, Some(b)) => b.parse().with_context(|| {
            format!("[dsmq] bind {b:?} is not an address and port such as 127.0.0.1:30008")
        })?,
        (None, true, None) => {
            SocketAddr::from(([127, 0, 0, 1], spool_server::dsmq::DSMQ_PORT_DEFAULT))
        }
    };
    check_bind(bind, auth.is_required(), false, a.allow_unauthenticated, 1)?;
    let mut config = DsmqConfig::new(bind);
    config.max_connections = s.max_connections;
    config.allow_shutdown = file.allow_shutdown.unwrap_or(false);
    if let Some(user) = &file.user {
        config.identity = auth.identity_of(user).with_context(|| {
            format!("[dsmq] user {user:?} is not one of the configured [[users]]")
        })?;
    }
    Ok(Some(config))
}

/// `spool serve hash-password`: the password never comes from the command line (it would
/// be in the shell history and `ps`). On a terminal it is asked for twice, without echo.
fn hash_password() -> Result<()> {
    let stdin = std::io::stdin();
    let password = if stdin.is_terminal() {
        let first = prompt_hidden("password: ")?;
        let again = prompt_hidden("again: ")?;
        if first != again {
            anyhow::bail!("the two passwords differ; nothing was printed, try again");
        }
        first
    } else {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from stdin")?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    };
    if password.is_empty() {
        anyhow::bail!("the password is empty: type one, or pipe one line to stdin");
    }
    println!(
        "{}",
        spool_server::auth::hash_password(password.as_bytes())?
    );
    Ok(())
}

/// Reads a line from the terminal with echo off (restored afterwards).
fn prompt_hidden(prompt: &str) -> Result<String> {
    use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
    let stdin = std::io::stdin();
    let saved = tcgetattr(&stdin).context("cannot read the terminal's settings")?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    eprint!("{prompt}");
    std::io::stderr().flush().ok();
    tcsetattr(&stdin, OptionalActions::Now, &quiet).context("cannot turn off echo")?;
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    tcsetattr(&stdin, OptionalActions::Now, &saved).context("cannot restore the terminal")?;
    eprintln!();
    read.context("cannot read the password")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(bind: &str, users: bool, tls: bool, allow: bool) -> Result<Option<String>> {
        check_bind(bind.parse().expect("an address"), users, tls, allow, 10)
    }

    #[test]
    fn only_loopback_without_users_or_the_explicit_flag() {
        assert_eq!(
            check("127.0.0.1:7411", false, false, false).expect("ok"),
            None
        );
        assert_eq!(check("[::1]:7411", false, false, false).expect("ok"), None);
        let e = check("0.0.0.0:7411", false, false, false).expect_err("refused");
        assert!(e.to_string().contains("--allow-unauthenticated"), "{e}");
        assert!(e.to_string().contains("[[users]]"), "{e}");
        // Users: allowed, with a TLS warning unless TLS is on.
        let w = check("0.0.0.0:7411", true, false, false).expect("allowed");
        assert!(w.is_some_and(|w| w.contains("TLS")));
        assert_eq!(
            check("0.0.0.0:7411", true, true, false).expect("allowed"),
            None
        );
        assert!(check("0.0.0.0:7411", false, false, true).is_ok());
    }
}
