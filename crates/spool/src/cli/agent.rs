//! `spool agent` (the MQTT store-and-forward daemon) and `spool publish` (one message into
//! its outbox): argument parsing and printing over `crate::agent`.

use std::io::Read as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use spool_mqtt::QoS;

use crate::agent::publish::{self, Published};
use crate::agent::{self, Agent, Stopped};
use crate::config::{AgentConfig, Environment};

/// Where the packaged configuration lives (`packaging/spool-agent.service`).
pub const CONFIG_DEFAULT: &str = "/etc/spool/agent.toml";

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The configuration file (see `spool config example`)
    #[arg(long, value_name = "FILE", env = "SPOOL_CONFIG", default_value = CONFIG_DEFAULT)]
    pub config: PathBuf,
    /// Log format; overrides log.format
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormatArg>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormatArg {
    Human,
    Json,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Topic name (no wildcards)
    pub topic: String,
    /// Payload; read from stdin when absent
    pub payload: Option<String>,
    /// QoS towards the broker: 0, 1 or 2 [default: outbox.default_qos]
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: Option<u8>,
    /// Priority, 0..=255, higher is sent first [default: outbox.default_priority]
    #[arg(long)]
    pub priority: Option<u8>,
    /// Ask the broker to retain the message
    #[arg(long)]
    pub retain: bool,
    /// Drop the message (counted) if not sent within this time, e.g. 30s, 5m; with outbox.expired = "send" it is sent late instead [default: outbox.default_ttl]
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
    pub ttl: Option<Duration>,
    /// The agent's configuration file (store.dir, listener.bind and the outbox defaults)
    #[arg(long, value_name = "FILE", env = "SPOOL_CONFIG", default_value = CONFIG_DEFAULT)]
    pub config: PathBuf,
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = crate::config::units::parse_duration(s)?;
    if d.is_zero() {
        return Err("a TTL must be above 0 (leave --ttl out for no TTL)".into());
    }
    if d > crate::config::TTL_MAX {
        return Err("a TTL must be at most 30d".into());
    }
    Ok(d)
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// `spool agent`.
pub fn run_agent(a: &AgentArgs) -> Result<()> {
    let mut env = Environment::from_process();
    if let Some(f) = a.log_format {
        let v = match f {
            LogFormatArg::Human => "human",
            LogFormatArg::Json => "json",
        };
        env = env.with_flag("log.format", v, "--log-format");
    }
    let cfg = AgentConfig::load(&a.config, &env)?;
    agent::logging::init(cfg.log.format, &cfg.log.level)?;
    let rt = runtime()?;
    let stopped = rt.block_on(async {
        // Handlers first: a SIGTERM during start-up then stops the agent cleanly too.
        let mut signals = Signals::new()?;
        let agent = Agent::start(&cfg).await?;
        let name = signals.next().await;
        tracing::info!("{name}: stopping (a second signal stops at once)");
        let stopped = agent
            .stop(async move {
                let name = signals.next().await;
                tracing::warn!("{name} again");
            })
            .await;
        Ok::<_, anyhow::Error>(stopped)
    })?;
    // Do not wait for blocking store tasks still finishing (all of them are durable writes
    // that either completed or never acknowledged anything).
    rt.shutdown_timeout(Duration::from_secs(1));
    match stopped {
        Stopped::Drained | Stopped::DeadlinePassed | Stopped::Forced => Ok(()),
    }
}

/// SIGTERM and SIGINT, as one stream.
pub(crate) struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub(crate) fn new() -> Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
        })
    }

    pub(crate) async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// `spool publish`.
pub fn run_publish(a: &PublishArgs) -> Result<()> {
    let cfg = AgentConfig::load(&a.config, &Environment::from_process())?;
    let payload = if let Some(p) = &a.payload {
        Bytes::from(p.clone().into_bytes())
    } else {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading the payload from stdin")?;
        Bytes::from(buf)
    };
    let qos = a.qos.unwrap_or(cfg.outbox.default_qos);
    let req = publish::Request {
        topic: a.topic.clone(),
        payload,
        qos: QoS::from_u8(qos).context("QoS must be 0, 1 or 2")?,
        retain: a.retain,
        priority: a.priority.unwrap_or(cfg.outbox.default_priority),
        ttl: a
            .ttl
            .or((!cfg.outbox.default_ttl.is_zero()).then_some(cfg.outbox.default_ttl)),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let done = rt.block_on(publish::publish(&cfg, &req))?;
    match done {
        Published::Stored { dir, seq } => println!(
            "stored: seq {seq} in the outbox of {} (no agent running: it is sent when the agent starts)",
            dir.display()
        ),
        Published::ViaAgent { addr } => {
            println!("acknowledged by the agent at {addr}: durable in its outbox");
        }
    }
    Ok(())
}
