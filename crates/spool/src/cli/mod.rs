//! The command line: argument definitions (clap) and one function per command. Arguments are
//! parsed raw by clap, then checked here into engine calls; every error becomes a one-line
//! cause plus a hint in `main.rs`.

pub mod agent;
pub mod config;
mod demo;
pub mod inspect;
mod output;
mod queue;
pub mod serve;
mod topic;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use spool_engine::{Options, Store};

/// spool: never lose a message between the device that produces it and the program that
/// consumes it.
#[derive(Debug, Parser)]
#[command(name = "spool", version, about, long_about = None)]
pub struct Cli {
    /// Store directory [default: $SPOOL_DIR, else ./spool-data]
    #[arg(long, global = true, env = "SPOOL_DIR", value_name = "DIR")]
    pub dir: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Push a message (or one per stdin line with --lines); prints each id once it is durable
    #[command(
        after_help = "Examples:\n  spool push jobs 'resize photo 17' --priority 5\n  echo hello | spool push jobs\n  tail -f sensor.log | spool push readings --lines"
    )]
    Push(queue::PushArgs),
    /// Lease messages: they are hidden until acked, nacked, or the visibility timeout passes
    #[command(
        after_help = "Examples:\n  spool lease jobs --count 10 --visibility 30s\n  spool lease jobs --wait 20s --json"
    )]
    Lease(queue::LeaseArgs),
    /// Acknowledge leased messages by receipt (they are deleted)
    #[command(after_help = "Example:\n  spool ack jobs 42:1 43:1")]
    Ack(queue::AckArgs),
    /// Release a lease early, optionally after a delay
    #[command(after_help = "Example:\n  spool nack jobs 42:1 --delay 10s")]
    Nack(queue::NackArgs),
    /// Remove and print messages (at-most-once)
    #[command(after_help = "Example:\n  spool pop jobs --count 5")]
    Pop(queue::ReadArgs),
    /// Print the next visible messages without changing anything
    #[command(after_help = "Example:\n  spool peek jobs --count 5 --json")]
    Peek(queue::ReadArgs),
    /// Counts of one queue or of all queues
    #[command(after_help = "Examples:\n  spool stats\n  spool stats jobs --json")]
    Stats(queue::StatsArgs),
    /// List queues
    #[command(after_help = "Example:\n  spool queues --json")]
    Queues(queue::QueuesArgs),
    /// Topics: publish and read retained pub/sub messages
    #[command(subcommand)]
    Topic(topic::TopicCommand),
    /// Run a short demo: push, lease and ack through a store in a local directory
    #[command(after_help = "Example:\n  spool demo")]
    Demo(demo::DemoArgs),
    /// Benchmarks with ratios against baselines measured in the same run
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Look inside a store: verify, dump, stats, export, import, salvage
    #[command(subcommand)]
    Inspect(inspect::InspectCommand),
    /// The agent's configuration file: check one, or print an example with every key
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Run the MQTT store-and-forward agent: outbox to the broker, local listener, HTTP health
    #[command(
        after_help = "Stops on SIGTERM/SIGINT: the local listener closes, messages in flight and queued are delivered for up to upstream.drain_timeout (default 10s), then it exits 0; nothing is lost either way (the outbox is durable). A second signal stops at once. Exits with 7 when the configuration is invalid (every problem is printed), 3 when another process holds the store.\n\nExamples:\n  spool agent --config /etc/spool/agent.toml\n  SPOOL_UPSTREAM__HOST=broker.lan spool agent --config agent.toml --log-format json"
    )]
    Agent(agent::AgentArgs),
    /// Publish one MQTT message through the agent's outbox (prints a confirmation once durable)
    #[command(
        after_help = "With an agent running (the store is locked), the message goes through its local listener (listener.bind), which acknowledges once it is durable; with no agent running, it is written into the store's outbox and sent when the agent starts.\n\nExamples:\n  spool publish sensors/t1 '{\"c\":21.5}' --qos 1 --config /etc/spool/agent.toml\n  cat report.json | spool publish reports/daily --priority 9 --ttl 1h"
    )]
    Publish(agent::PublishArgs),
    /// Run the queue server: the store's queues over the Redis protocol (redis-cli works)
    #[command(
        after_help = "Listens on 127.0.0.1:7411 by default. A non-loopback --bind is refused unless users are configured (--config, [[users]]; docs/serve.md) or --allow-unauthenticated is given. Exits with 7 when the configuration is invalid. Replies to pushes are sent once the message is durable. Stops on SIGTERM/SIGINT. Commands so far: PING, HELLO, QPUSH, QPUSHMANY, QGET, QACK, QNACK, QPOP, QPEEK, QSTATS, QLIST (README, \"The queue server\").\n\nExamples:\n  spool serve --dir /var/lib/spool\n  redis-cli -p 7411 QPUSH jobs 'resize photo 17'\n  redis-cli -p 7411 QGET jobs VT 30000\n  spool serve --config /etc/spool/serve.toml\n  spool serve hash-password < password.txt"
    )]
    Serve(serve::ServeArgs),
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// The engine against the raw disk (fdatasync rate, write bandwidth) and SQLite
    #[command(after_help = "Examples:\n  spool bench engine\n  spool bench engine --quick --json")]
    Engine(BenchArgs),
    /// The engine at scale: reopen time and memory with a large backlog, recovery time
    /// against the log since the last checkpoint, disk use after compaction
    #[command(after_help = "Examples:\n  spool bench scale\n  spool bench scale --quick --json")]
    Scale(BenchArgs),
    /// The MQTT client against a local Mosquitto: QoS 1 throughput through the durable
    /// outbox against bare rumqttc, latency, backlog drain, memory, PersistMQ and robmqtt
    #[command(after_help = "Examples:\n  spool bench mqtt\n  spool bench mqtt --quick --json")]
    Mqtt(BenchArgs),
    /// The queue server against a real Redis, both driven by redis-benchmark: QPUSH with 50
    /// clients and pipelined, QGET+QACK round trip p99 beside Redis RPOP
    #[command(after_help = "Examples:\n  spool bench server\n  spool bench server --quick --json")]
    Server(BenchArgs),
    /// dsmq's own server against spool serve --dsmq, both driven by the dsmq Python client:
    /// put+get pairs per second, one client and several
    #[command(
        after_help = "Examples:\n  spool bench dsmq\n  SPOOL_BENCH_PYTHON=venv/bin/python spool bench dsmq --quick --json"
    )]
    Dsmq(BenchArgs),
    /// (internal) Opens a store and prints the time and memory it took, as JSON
    #[command(hide = true)]
    ReopenProbe(crate::bench::scale::ProbeArgs),
    /// (internal) Starts an MQTT client on a store and prints its start-up time and memory
    #[command(hide = true)]
    MqttProbe(crate::bench::mqtt::MqttProbeArgs),
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Print one JSON object instead of a table
    #[arg(long)]
    pub json: bool,
    /// Short runs (seconds instead of a minute), for a smoke test
    #[arg(long)]
    pub quick: bool,
    /// Directory to measure in (on the disk you care about) [default: a temporary directory under --dir's parent]
    #[arg(long, value_name = "DIR")]
    pub bench_dir: Option<PathBuf>,
}

impl Cli {
    fn dir(&self) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("spool-data"))
    }

    /// Opens the store, creating it when missing (commands that write: push, publish, demo).
    fn open(&self) -> Result<Store> {
        Self::open_in(&self.dir(), Options::default())
    }

    /// [`Cli::open`] on `dir` (`spool serve`'s `[store] dir`) with `options`.
    fn open_in(dir: &std::path::Path, options: Options) -> Result<Store> {
        let store = Store::open(dir, options)
            .with_context(|| format!("cannot open the store in {}", dir.display()))?;
        // Recovery could not use a checkpoint (nothing is lost: the log was replayed), or
        // could not tell a deleted prefix from a lost one: say so, loudly, once.
        for p in &store.recovery_report().checkpoint_problems {
            eprintln!("warning: {p}");
        }
        if !store.recovery_report().checkpoint_problems.is_empty()
            && store.recovery_report().checkpoint.is_none()
        {
            eprintln!(
                "warning: no usable checkpoint: the whole log was replayed; run `spool inspect verify`"
            );
        }
        Ok(store)
    }

    /// Opens an existing store (commands that only read or act on what is there): a mistyped
    /// `--dir` must not quietly create an empty store and report "nothing there".
    fn open_existing(&self) -> Result<Store> {
        let dir = self.dir();
        let is_store = dir.join("FORMAT").exists();
        let has_files = std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some());
        if !is_store && !has_files {
            anyhow::bail!(
                "no spool store in {}: check --dir (or $SPOOL_DIR); `spool push` creates a store",
                dir.display()
            );
        }
        // A directory with other files is refused by `Store::open` with the reason.
        self.open()
    }
}

/// Runs a parsed command line.
pub fn run(cli: &Cli) -> Result<()> {
    match &cli.command {
        Command::Push(a) => queue::push(cli, a),
        Command::Lease(a) => queue::lease(cli, a),
        Command::Ack(a) => queue::ack(cli, a),
        Command::Nack(a) => queue::nack(cli, a),
        Command::Pop(a) => queue::pop(cli, a),
        Command::Peek(a) => queue::peek(cli, a),
        Command::Stats(a) => queue::stats(cli, a),
        Command::Queues(a) => queue::queues(cli, a),
        Command::Topic(c) => topic::run(cli, c),
        Command::Demo(a) => demo::run(cli, a),
        Command::Bench(BenchCommand::Engine(a)) => {
            crate::bench::engine::run_engine_command(cli.dir.as_deref(), a)
        }
        Command::Bench(BenchCommand::Scale(a)) => {
            crate::bench::scale::run_scale_command(cli.dir.as_deref(), a)
        }
        Command::Bench(BenchCommand::Mqtt(a)) => {
            crate::bench::mqtt::run_mqtt_command(cli.dir.as_deref(), a)
        }
        Command::Bench(BenchCommand::Dsmq(a)) => {
            crate::bench::dsmq::run_dsmq_command(cli.dir.as_deref(), a)
        }
        Command::Bench(BenchCommand::Server(a)) => {
            crate::bench::server::run_server_command(cli.dir.as_deref(), a)
        }
        Command::Bench(BenchCommand::ReopenProbe(a)) => crate::bench::scale::run_probe(a),
        Command::Bench(BenchCommand::MqttProbe(a)) => crate::bench::mqtt::run_probe(a),
        Command::Inspect(c) => inspect::run(cli, c),
        Command::Config(c) => config::run(c),
        Command::Agent(a) => agent::run_agent(a),
        Command::Publish(a) => agent::run_publish(a),
        Command::Serve(a) => serve::run(cli, a),
    }
}

/// Parses a duration like `30s`, `500ms`, `5m`, `1h30m`, `2d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty() {
        return Err(format!(
            "{s:?} has no unit: write e.g. {s}s for seconds or {s}ms for milliseconds"
        ));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration ({e}); examples: 500ms, 30s, 5m, 1h30m, 2d"))
}

/// The payload given on the command line, else all of stdin.
fn payload_or_stdin(arg: Option<&str>) -> Result<Vec<u8>> {
    if let Some(p) = arg {
        return Ok(p.as_bytes().to_vec());
    }
    let mut buf = Vec::new();
    std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
        .context("reading the payload from stdin")?;
    Ok(buf)
}
