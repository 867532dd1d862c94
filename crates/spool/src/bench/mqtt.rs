//! `spool bench mqtt`: the MQTT store-and-forward client (`spool-mqtt`) against a local
//! Mosquitto, with the baselines measured in the same run (issue 4, design doc
//! `mqtt.md` "Performance targets"). Every figure goes through the same [`Report`] as
//! `spool bench engine`.
//!
//! The benchmark starts its own `mosquitto` (a generated minimal config: one plain listener on
//! a free 127.0.0.1 port, no persistence, no limits on in-flight or queued messages so that a
//! fast subscriber never loses one) and one subscriber (rumqttc, QoS 1 on `bench/#`) which
//! counts every distinct message it receives by the index carried in the first 8 bytes of the
//! payload. Throughput is end to end: from the first publish until the subscriber holds every
//! message *and* the publisher has every PUBACK. Scenarios 1, 2 and 4 run in rounds (three in
//! the full run, one in `--quick`), interleaved, and each figure is the median of its rounds:
//! on a shared machine the load moves between runs of a second or two.
//!
//! 1. **Bare rumqttc** (`AsyncClient`, MQTT 3.1.1, QoS 1, no persistence): N messages of 100 B
//!    pipelined through its in-flight window (set to the spool client's window). The baseline.
//! 2. **spool client** (`spool_mqtt::Client`, MQTT 3.1.1, QoS 1, durable outbox with the
//!    engine's default `Durability::Sync`): the same N messages published by several tasks at
//!    once (each `publish` returns once its message is durable: group commit). Ratio to 1.
//! 3. **Publish-to-subscriber latency at 100 msg/s** through the spool client (p50, p99): the
//!    payload carries its send time; the subscriber computes the latency on receipt.
//! 4. **Backlog drain**: the broker is killed, D messages are published into the outbox, the
//!    broker is started again; time from the broker listening again until every record is
//!    PUBACKed (`stats().acked`). Ratio to the live rate of 2.
//! 5. **Memory and start-up**, each in a fresh child process (`spool bench mqtt-probe`, this
//!    same executable) so that nothing the benchmark itself allocated is counted: an idle
//!    client connected to the broker with an empty outbox, and a client started on a store
//!    holding a B-message backlog (built beforehand with the outbox's own `push`, without
//!    fdatasync) with its broker unreachable. `VmRSS`/`VmHWM` of `/proc/self/status`; start-up
//!    is `Client::start` (store open + outbox recovery).
//! 6. **PersistMQ and robmqtt** (Python, QoS 1, the same 100 B messages), when the
//!    interpreter in `SPOOL_BENCH_PERSISTMQ_PYTHON` / `SPOOL_BENCH_ROBMQTT_PYTHON` (default
//!    `python3` on PATH) can import them; otherwise reported as not measured with the pip
//!    command. Never in `--quick` (the smoke run stays free of Python). The two cannot share an
//!    environment: PersistMQ needs paho-mqtt 2, robmqtt pins paho-mqtt < 2.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};
use clap::Args;
use serde::{Deserialize, Serialize};
use spool_engine::{Durability, Options, Store};
use spool_mqtt::{Client, LinkState, OutMessage, Outbox, OutboxConfig, Protocol, QoS};
use tokio::sync::watch;

use super::{payload, Figure, MemoryUsage, Report, Target};
use crate::cli::BenchArgs;

/// Names of the figures (parameters are in the notes and the context).
pub mod names {
    pub const RUMQTTC: &str = "rumqttc QoS 1, no persistence";
    pub const SPOOL: &str = "spool client QoS 1, durable outbox";
    pub const LATENCY_P50: &str = "spool client latency @100 msg/s, p50";
    pub const LATENCY_P99: &str = "spool client latency @100 msg/s, p99";
    pub const DRAIN: &str = "backlog drain after an outage";
    pub const RSS_IDLE: &str = "agent RSS, idle client";
    pub const RSS_BACKLOG: &str = "agent RSS, with backlog";
    pub const STARTUP_BACKLOG: &str = "agent start-up, with backlog";
    pub const PERSISTMQ: &str = "PersistMQ QoS 1";
    pub const ROBMQTT: &str = "robmqtt QoS 1";
    pub const SPOOL_VS_PERSISTMQ: &str = "spool client vs PersistMQ";
    pub const SPOOL_VS_ROBMQTT: &str = "spool client vs robmqtt";
}

/// Every figure name, in report order (the test checks each is present).
pub const ALL_FIGURES: [&str; 12] = [
    names::RUMQTTC,
    names::SPOOL,
    names::LATENCY_P50,
    names::LATENCY_P99,
    names::DRAIN,
    names::RSS_IDLE,
    names::RSS_BACKLOG,
    names::STARTUP_BACKLOG,
    names::PERSISTMQ,
    names::ROBMQTT,
    names::SPOOL_VS_PERSISTMQ,
    names::SPOOL_VS_ROBMQTT,
];

/// All subscriptions of the benchmark's subscriber; each scenario has a topic of its own.
const TOPIC_FILTER: &str = "bench/#";
const MB: f64 = 1e6;

/// Sizes of the scenarios. [`MqttConfig::full`] is the default, [`MqttConfig::quick`] a smoke
/// run of a few seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttConfig {
    /// Payload size in bytes (100; at least 16: index and send time).
    pub payload_size: usize,
    /// Messages of the throughput scenarios (bare rumqttc and spool client).
    pub messages: u64,
    /// Tasks publishing concurrently through the spool client.
    pub publishers: usize,
    /// In-flight window of both clients.
    pub window: u16,
    /// Rounds of the throughput scenarios (rumqttc, spool live, drain); each figure is the
    /// median of its rounds.
    pub rounds: usize,
    /// Messages of the latency scenario, published at `latency_rate` per second.
    pub latency_messages: u64,
    pub latency_rate: u32,
    /// Backlog published during the outage, then drained.
    pub drain_messages: u64,
    /// Backlog of the memory / start-up probe.
    pub backlog_messages: u64,
    /// Run the Python clients (never in quick mode).
    pub python: bool,
    /// Messages offered to each Python client ...
    pub python_messages: u64,
    /// ... and the longest its measurement may take (the rate is then over what arrived).
    pub python_budget: Duration,
    /// The longest any single wait may take before the benchmark gives up with an error.
    pub timeout: Duration,
    /// Progress lines on stderr.
    pub progress: bool,
}

impl MqttConfig {
    pub fn full() -> Self {
        MqttConfig {
            payload_size: 100,
            messages: 100_000,
            publishers: 64,
            rounds: 3,
            window: spool_mqtt::session::WINDOW_DEFAULT,
            latency_messages: 500,
            latency_rate: 100,
            drain_messages: 100_000,
            backlog_messages: 1_000_000,
            python: true,
            python_messages: 5_000,
            python_budget: Duration::from_secs(20),
            timeout: Duration::from_secs(300),
            progress: false,
        }
    }

    pub fn quick() -> Self {
        MqttConfig {
            messages: 2_000,
            rounds: 1,
            latency_messages: 20,
            drain_messages: 2_000,
            backlog_messages: 100_000,
            python: false,
            timeout: Duration::from_secs(60),
            ..MqttConfig::full()
        }
    }
}

/// `spool bench mqtt`: every scenario in a scratch directory under `--bench-dir` (else under the
/// parent of `--dir`, else the current directory), printed as a table or JSON.
pub fn run_mqtt_command(store_dir: Option<&Path>, args: &BenchArgs) -> Result<()> {
    let scratch = super::Scratch::for_command(store_dir, args, "mqtt")?;
    let mut cfg = if args.quick {
        MqttConfig::quick()
    } else {
        MqttConfig::full()
    };
    cfg.progress = !args.json;
    let exe = std::env::current_exe().context("finding this executable to run probes")?;
    let report = run_mqtt(&scratch.0, &cfg, &exe)?;
    drop(scratch);
    super::print_report(&report, args.json);
    Ok(())
}

/// Runs every scenario in `dir` (created if needed; what is made there is removed by the
/// caller). `exe` is the `spool` binary that runs the probes (`bench mqtt-probe`).
pub fn run_mqtt(dir: &Path, cfg: &MqttConfig, exe: &Path) -> Result<Report> {
    anyhow::ensure!(cfg.payload_size >= 16, "payload_size must be at least 16");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(run_scenarios(dir, cfg, exe))
}

async fn run_scenarios(dir: &Path, cfg: &MqttConfig, exe: &Path) -> Result<Report> {
    let progress = |what: &str| {
        if cfg.progress {
            eprintln!("bench: {what}...");
        }
    };
    let mut report = Report::new("spool bench mqtt");
    let mut broker = Mosquitto::start(&dir.join("broker"))?;
    describe(&mut report, dir, cfg, &broker);
    let sub = Subscriber::start(broker.port, cfg.timeout).await?;

    // The throughput scenarios run in rounds (rumqttc, spool live, drain, then again), and
    // each figure is the median of its rounds: on a shared machine the load moves between
    // runs of a second or two, and interleaving spreads it over all three alike.
    let (mut bare, mut live, mut drains) = (Vec::new(), Vec::new(), Vec::new());
    let mut latency_ms = None;
    for round in 0..cfg.rounds.max(1) {
        progress(&format!("round {}: bare rumqttc", round + 1));
        bare.push(
            bare_rumqttc(broker.port, cfg, &sub, round)
                .await
                .context("bare rumqttc")?
                .rate(cfg.messages),
        );

        progress(&format!("round {}: spool client, live", round + 1));
        let live_dir = dir.join("live");
        let id = format!("spool-bench-live-{round}");
        let client = start_client(&live_dir, broker.port, cfg, &id).await?;
        wait_connected(&client, cfg.timeout).await?;
        let topic = format!("bench/spool/{round}");
        live.push(
            spool_throughput(&client, &topic, cfg.messages, cfg, &sub)
                .await
                .context("spool client throughput")?,
        );
        if round == 0 {
            progress("spool client, latency at 100 msg/s");
            let lat = latency(&client, cfg, &sub).await.context("latency")?;
            latency_ms = Some(lat);
        }
        client.shutdown(Duration::from_secs(10)).await;
        drop(client);
        let _ = std::fs::remove_dir_all(&live_dir);

        progress(&format!(
            "round {}: backlog drain after an outage",
            round + 1
        ));
        drains.push(
            backlog_drain(&mut broker, dir, cfg, &sub, round)
                .await
                .context("backlog drain")?,
        );
    }
    // The median of some rounds: its index and a note listing every round.
    let rounds = |rates: &[f64]| {
        let mut order: Vec<usize> = (0..rates.len()).collect();
        order.sort_by(|&a, &b| rates[a].total_cmp(&rates[b]));
        let shown: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
        (
            order[(order.len() - 1) / 2],
            format!("median of {} rounds: {}", rates.len(), shown.join(", ")),
        )
    };

    let (median, bare_rounds) = rounds(&bare);
    let bare_rate = bare[median];
    report.add(
        Figure::new(names::RUMQTTC, bare_rate, "msg/s").note(format!(
            "{} msgs of {} B, in-flight window {}, one publishing task; until every PUBACK and \
             every delivery; {bare_rounds}",
            cfg.messages, cfg.payload_size, cfg.window
        )),
    );

    let live_rates: Vec<f64> = live
        .iter()
        .map(|l| l.end_to_end.rate(cfg.messages))
        .collect();
    let (median, live_rounds) = rounds(&live_rates);
    let (live_rate, typical) = (live_rates[median], &live[median]);
    report.add(
        Figure::new(names::SPOOL, live_rate, "msg/s")
            .ratio_to(names::RUMQTTC)
            .target(Target::AtLeastRatio(0.5))
            .note(format!(
                "same msgs, {} publishing tasks, Durability::Sync; {live_rounds}; in the median \
                 round every publish was durable after {:.2} s, every PUBACK in after {:.2} s, \
                 every delivery after {:.2} s",
                cfg.publishers,
                typical.published.as_secs_f64(),
                typical.acked.as_secs_f64(),
                typical.delivered.as_secs_f64()
            )),
    );

    if let Some((p50, p99)) = latency_ms {
        let note = format!(
            "publish call to delivery at the subscriber (via the broker), {} msgs at {} msg/s, \
             one task per publish",
            cfg.latency_messages, cfg.latency_rate
        );
        report.add(Figure::new(names::LATENCY_P50, p50, "ms").note(note.clone()));
        report.add(Figure::new(names::LATENCY_P99, p99, "ms").note(note));
    }

    let drain_rates: Vec<f64> = drains.iter().map(|d| d.rate).collect();
    let (median, drain_rounds) = rounds(&drain_rates);
    let (drain_rate, drain) = (drain_rates[median], &drains[median]);
    report.add(
        Figure::new(names::DRAIN, drain_rate, "msg/s")
            .ratio_to(names::SPOOL)
            .target(Target::AtLeastRatio(0.8))
            .note(format!(
                "{} msgs published while the broker was down ({:.0} msg/s into the outbox), \
                 then from the broker listening again until every PUBACK; {drain_rounds}; in \
                 the median round the client reconnected after {:.0} ms and the subscriber \
                 (reconnecting too) got {} of them",
                cfg.drain_messages,
                drain.offline_publish_rate,
                drain.reconnect.as_secs_f64() * 1000.0,
                drain.delivered
            )),
    );

    progress("memory: idle client");
    let idle_dir = dir.join("idle");
    let idle = run_probe_child(exe, &idle_dir, &format!("127.0.0.1:{}", broker.port), true)?;
    let _ = std::fs::remove_dir_all(&idle_dir);
    report.add(
        Figure::new(names::RSS_IDLE, idle.rss_kb as f64 * 1024.0 / MB, "MB")
            .target(Target::AtMost(20.0))
            .note(format!(
                "fresh process (`spool bench mqtt-probe`), connected, empty outbox, VmRSS after \
                 {} ms idle (peak {:.1} MB, {:.1} MB before the client started)",
                PROBE_SETTLE.as_millis(),
                idle.hwm_kb as f64 * 1024.0 / MB,
                idle.rss_before_kb as f64 * 1024.0 / MB
            )),
    );

    progress("memory: client with a backlog");
    let backlog_dir = dir.join("backlog");
    let built = build_backlog(&backlog_dir, cfg).await?;
    // A port nothing listens on: the client holds its backlog, as during an outage.
    let dead = free_port()?;
    let probe = run_probe_child(exe, &backlog_dir, &format!("127.0.0.1:{dead}"), false)?;
    let _ = std::fs::remove_dir_all(&backlog_dir);
    anyhow::ensure!(
        probe.depth == cfg.backlog_messages,
        "the probe saw {} records in the outbox, expected {}",
        probe.depth,
        cfg.backlog_messages
    );
    report.add(
        Figure::new(names::RSS_BACKLOG, probe.rss_kb as f64 * 1024.0 / MB, "MB")
            .target(Target::AtMost(40.0))
            .note(format!(
                "{} msgs of {} B in the outbox ({:.0} MB store), broker unreachable; VmRSS {} ms \
                 after start (peak {:.1} MB)",
                cfg.backlog_messages,
                cfg.payload_size,
                built as f64 / MB,
                PROBE_SETTLE.as_millis(),
                probe.hwm_kb as f64 * 1024.0 / MB
            )),
    );
    report.add(
        Figure::new(names::STARTUP_BACKLOG, probe.start_ms / 1000.0, "s")
            .target(Target::AtMost(1.0))
            .note(format!(
                "Client::start (store open + outbox recovery) with {} msgs; the whole child \
                 process, exec to exit, {:.0} ms including the {} ms it waits before reading \
                 its memory",
                cfg.backlog_messages,
                probe.wall_ms,
                PROBE_SETTLE.as_millis()
            )),
    );

    for py in [&PERSISTMQ, &ROBMQTT] {
        progress(py.name);
        let figure = python_client(py, broker.port, dir, cfg, &sub).await?;
        report.add(figure);
    }
    for (name, base, ratio) in [
        (names::SPOOL_VS_PERSISTMQ, names::PERSISTMQ, 100.0),
        (names::SPOOL_VS_ROBMQTT, names::ROBMQTT, 10.0),
    ] {
        report.add(
            Figure::new(name, live_rate, "msg/s")
                .ratio_to(base)
                .target(Target::AtLeastRatio(ratio))
                .note(format!(
                    "the '{}' figure again, against {base}",
                    names::SPOOL
                )),
        );
    }
    sub.stop().await;
    broker.stop();
    report.note("ratio = value / value of the figure in column 'vs'");
    report.note(
        "throughput is end to end: first publish until the subscriber has every message and \
         the publisher every PUBACK (the broker acks after routing, so both end together)",
    );
    Ok(report)
}

fn describe(report: &mut Report, dir: &Path, cfg: &MqttConfig, broker: &Mosquitto) {
    let shown = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    report.context("dir", shown.display().to_string());
    if let Ok(Some(m)) = super::procio::mount_of(dir) {
        report.context(
            "file system",
            format!(
                "{} on {} ({})",
                m.fs_type,
                m.device,
                m.mount_point.display()
            ),
        );
    }
    if let Ok(n) = std::thread::available_parallelism() {
        report.context("cpus", n.to_string());
    }
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        let load: Vec<&str> = load.split_whitespace().take(3).collect();
        report.context("load average at start", load.join(" "));
    }
    report.context(
        "broker",
        format!(
            "{} on 127.0.0.1:{} (no persistence, unlimited in-flight and queued messages)",
            broker.version, broker.port
        ),
    );
    report.context(
        "config",
        format!(
            "payload {} B, {} msgs, {} rounds, window {}, {} publishing tasks, drain {} msgs, \
             backlog {} msgs, MQTT 3.1.1 for every client, subscriber QoS 1",
            cfg.payload_size,
            cfg.messages,
            cfg.rounds,
            cfg.window,
            cfg.publishers,
            cfg.drain_messages,
            cfg.backlog_messages
        ),
    );
}

// ---------------------------------------------------------------------------------------------
// Messages

/// The payload of message `index`: the index (8 bytes BE), the send time in ns since the
/// subscriber's base instant (8 bytes BE, 0 when not measured), filler.
fn message(filler: &[u8], index: u64, sent_ns: u64) -> Vec<u8> {
    let mut p = filler.to_vec();
    p[..8].copy_from_slice(&index.to_be_bytes());
    p[8..16].copy_from_slice(&sent_ns.to_be_bytes());
    p
}

/// A duration from the start of a scenario.
#[derive(Debug, Clone, Copy)]
struct Elapsed(Duration);

impl Elapsed {
    fn rate(self, n: u64) -> f64 {
        n as f64 / self.0.as_secs_f64()
    }
}

// ---------------------------------------------------------------------------------------------
// The broker

/// A `mosquitto` child process with a generated config; killed when dropped.
struct Mosquitto {
    program: PathBuf,
    dir: PathBuf,
    port: u16,
    version: String,
    child: Option<Child>,
}

impl Mosquitto {
    fn start(dir: &Path) -> Result<Mosquitto> {
        let program = [
            "mosquitto",
            "/usr/sbin/mosquitto",
            "/usr/local/sbin/mosquitto",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| {
            Command::new(p)
                .arg("-h")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok()
        })
        .ok_or_else(|| {
            anyhow!(
                "spool bench mqtt needs the Mosquitto broker: install the package mosquitto \
                     (Debian/Ubuntu: apt-get install mosquitto)"
            )
        })?;
        let version = Command::new(&program)
            .arg("-h")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .map(|l| l.trim().to_owned())
            })
            .unwrap_or_else(|| "mosquitto".to_owned());
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut broker = Mosquitto {
            program,
            dir: dir.to_path_buf(),
            port: free_port()?,
            version,
            child: None,
        };
        broker.spawn()?;
        Ok(broker)
    }

    /// Writes the config, starts the process, waits until the port accepts connections.
    fn spawn(&mut self) -> Result<()> {
        let config = self.dir.join("mosquitto.conf");
        let text = format!(
            "# generated by spool bench mqtt\nuser root\nper_listener_settings false\n\
             allow_anonymous true\npersistence false\nlog_dest stderr\nlog_type error\n\
             log_type warning\nmax_inflight_messages 0\nmax_queued_messages 0\n\
             set_tcp_nodelay true\nlistener {} 127.0.0.1\n",
            self.port
        );
        std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        let log = std::fs::File::create(self.dir.join("output.log"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let child = Command::new(&self.program)
                .arg("-c")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log.try_clone()?)
                .spawn()
                .with_context(|| format!("starting {}", self.program.display()))?;
            self.child = Some(child);
            loop {
                let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return Ok(());
                }
                let exited = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                if exited.is_some() || Instant::now() >= deadline {
                    self.stop();
                    let output =
                        std::fs::read_to_string(self.dir.join("output.log")).unwrap_or_default();
                    // A port taken in the meantime (or in TIME_WAIT): try again until the
                    // deadline.
                    if exited.is_some()
                        && output.contains("Address already in use")
                        && Instant::now() < deadline
                    {
                        std::thread::sleep(Duration::from_millis(100));
                        break;
                    }
                    anyhow::bail!(
                        "mosquitto did not start listening on 127.0.0.1:{} ({}); its output: {}",
                        self.port,
                        exited.map_or_else(|| "timed out".to_owned(), |s| s.to_string()),
                        output.trim()
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// SIGKILL (an outage: nothing is kept, the broker has no persistence anyway).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(super) fn free_port() -> Result<u16> {
    let l = TcpListener::bind(("127.0.0.1", 0)).context("looking for a free port")?;
    Ok(l.local_addr()?.port())
}

// ---------------------------------------------------------------------------------------------
// The subscriber

/// What the subscriber saw on one topic.
struct Track {
    seen: Vec<bool>,
    distinct: u64,
    last: Option<Instant>,
    /// The instant the send times in the payloads count from (latency scenario).
    base: Option<Instant>,
    latencies_ms: Vec<f64>,
    count: watch::Sender<u64>,
}

type Tracks = Arc<Mutex<HashMap<String, Track>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A rumqttc client subscribed (QoS 1) to [`TOPIC_FILTER`], resubscribing after every
/// reconnect, counting distinct messages per topic.
struct Subscriber {
    client: rumqttc::AsyncClient,
    tracks: Tracks,
    task: tokio::task::JoinHandle<()>,
    /// SUBACKs so far (one per (re)connection).
    subacked: watch::Receiver<u64>,
    timeout: Duration,
}

impl Subscriber {
    async fn start(port: u16, timeout: Duration) -> Result<Subscriber> {
        let mut opts = rumqttc::MqttOptions::new("spool-bench-subscriber", "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true);
        let (client, mut ev) = rumqttc::AsyncClient::new(opts, 64);
        let tracks: Tracks = Arc::default();
        let (subacks, mut subacked) = watch::channel(0u64);
        let (t, c) = (tracks.clone(), client.clone());
        let task = tokio::spawn(async move {
            loop {
                match ev.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        record(&t, &p.topic, &p.payload);
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                        let _ = c.try_subscribe(TOPIC_FILTER, rumqttc::QoS::AtLeastOnce);
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        subacks.send_modify(|n| *n += 1);
                    }
                    Ok(_) => {}
                    // The broker is down (outage scenario): try again shortly.
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        });
        tokio::time::timeout(timeout, subacked.wait_for(|n| *n > 0))
            .await
            .map_err(|_| anyhow!("the subscriber got no SUBACK within {timeout:?}"))?
            .map_err(|_| anyhow!("the subscriber's event loop ended"))?;
        Ok(Subscriber {
            client,
            tracks,
            task,
            subacked,
            timeout,
        })
    }

    /// Waits until the subscriber has more than `n` SUBACKs (it resubscribed after a
    /// reconnect).
    async fn wait_subacks(&self, n: u64) -> Result<()> {
        let mut rx = self.subacked.clone();
        tokio::time::timeout(self.timeout, rx.wait_for(|c| *c > n))
            .await
            .map_err(|_| {
                anyhow!(
                    "the subscriber did not resubscribe within {:?}",
                    self.timeout
                )
            })?
            .map_err(|_| anyhow!("the subscriber's event loop ended"))?;
        Ok(())
    }

    fn subacks(&self) -> u64 {
        *self.subacked.borrow()
    }

    /// Starts counting messages `0..n` on `topic`.
    fn expect(&self, topic: &str, n: u64, base: Option<Instant>) -> watch::Receiver<u64> {
        let (count, rx) = watch::channel(0);
        lock(&self.tracks).insert(
            topic.to_owned(),
            Track {
                seen: vec![false; n as usize],
                distinct: 0,
                last: None,
                base,
                latencies_ms: Vec::new(),
                count,
            },
        );
        rx
    }

    /// Waits until `n` distinct messages arrived on `topic` (error after `limit`, or the
    /// subscriber's timeout); returns the instant of the last new one.
    async fn wait_all(
        &self,
        topic: &str,
        rx: &mut watch::Receiver<u64>,
        n: u64,
        limit: Option<Duration>,
    ) -> Result<Instant> {
        let limit = limit.unwrap_or(self.timeout);
        let ok = matches!(
            tokio::time::timeout(limit, rx.wait_for(|c| *c >= n)).await,
            Ok(Ok(_))
        );
        if !ok {
            anyhow::bail!(
                "the subscriber received {} of {n} messages on {topic} within {limit:?}",
                *rx.borrow()
            );
        }
        lock(&self.tracks)
            .get(topic)
            .and_then(|t| t.last)
            .ok_or_else(|| anyhow!("no delivery time on {topic}"))
    }

    /// Distinct messages received on `topic` so far, and the instant of the last new one.
    fn received(&self, topic: &str) -> (u64, Option<Instant>) {
        lock(&self.tracks)
            .get(topic)
            .map_or((0, None), |t| (t.distinct, t.last))
    }

    fn latencies(&self, topic: &str) -> Vec<f64> {
        lock(&self.tracks)
            .get(topic)
            .map(|t| t.latencies_ms.clone())
            .unwrap_or_default()
    }

    async fn stop(self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.client.disconnect()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.task.abort();
    }
}

fn record(tracks: &Tracks, topic: &str, payload: &[u8]) {
    let now = Instant::now();
    let mut tracks = lock(tracks);
    let Some(t) = tracks.get_mut(topic) else {
        return;
    };
    let Some(index) = payload
        .get(..8)
        .map(|b| u64::from_be_bytes(b.try_into().unwrap_or_default()))
    else {
        return;
    };
    let Some(seen) = t.seen.get_mut(index as usize) else {
        return;
    };
    if *seen {
        return;
    }
    *seen = true;
    t.distinct += 1;
    t.last = Some(now);
    if let (Some(base), Some(sent)) = (t.base, payload.get(8..16)) {
        let sent = Duration::from_nanos(u64::from_be_bytes(sent.try_into().unwrap_or_default()));
        let latency = now.duration_since(base).saturating_sub(sent);
        t.latencies_ms.push(latency.as_secs_f64() * 1000.0);
    }
    t.count.send_replace(t.distinct);
}

// ---------------------------------------------------------------------------------------------
// Scenarios

async fn bare_rumqttc(
    port: u16,
    cfg: &MqttConfig,
    sub: &Subscriber,
    round: usize,
) -> Result<Elapsed> {
    let topic = format!("bench/rumqttc/{round}");
    let mut opts =
        rumqttc::MqttOptions::new(format!("spool-bench-rumqttc-{round}"), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_inflight(cfg.window);
    let (client, mut ev) = rumqttc::AsyncClient::new(opts, 1024);
    // Connected before the clock starts.
    tokio::time::timeout(cfg.timeout, async {
        loop {
            match ev.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(anyhow!("rumqttc could not connect: {e}")),
            }
        }
    })
    .await
    .map_err(|_| anyhow!("rumqttc: no CONNACK within {:?}", cfg.timeout))??;

    let n = cfg.messages;
    let mut delivered = sub.expect(&topic, n, None);
    let (acked_tx, mut acked_rx) = watch::channel(None::<Instant>);
    let events = tokio::spawn(async move {
        let mut acks = 0u64;
        loop {
            match ev.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                    acks += 1;
                    if acks == n {
                        acked_tx.send_replace(Some(Instant::now()));
                    }
                }
                Ok(_) => {}
                Err(_) => return acks,
            }
        }
    });
    let filler = payload(cfg.payload_size, 11);
    let start = Instant::now();
    let publisher = {
        let (client, topic) = (client.clone(), topic.clone());
        tokio::spawn(async move {
            for i in 0..n {
                client
                    .publish(
                        topic.clone(),
                        rumqttc::QoS::AtLeastOnce,
                        false,
                        message(&filler, i, 0),
                    )
                    .await?;
            }
            Ok::<_, rumqttc::ClientError>(())
        })
    };
    publisher.await??;
    let acked = tokio::time::timeout(cfg.timeout, acked_rx.wait_for(Option::is_some))
        .await
        .map_err(|_| anyhow!("rumqttc: not every PUBACK within {:?}", cfg.timeout))?
        .map_err(|_| anyhow!("rumqttc: its event loop ended before every PUBACK"))?
        .unwrap_or_else(Instant::now);
    let last = sub.wait_all(&topic, &mut delivered, n, None).await?;
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), events).await;
    Ok(Elapsed(acked.max(last) - start))
}

async fn start_client(dir: &Path, port: u16, cfg: &MqttConfig, id: &str) -> Result<Client> {
    Client::builder(format!("127.0.0.1:{port}"), id, dir)
        .protocol(Protocol::V311)
        .window(cfg.window)
        // The benchmark's broker takes any number in flight (max_inflight_messages 0), as
        // rumqttc is told too.
        .v311_receive_maximum(cfg.window)
        .backoff(Duration::from_millis(10), Duration::from_millis(100))
        .start()
        .await
        .with_context(|| format!("starting a spool client on {}", dir.display()))
}

async fn wait_connected(client: &Client, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = client.stats()?;
        if s.state == LinkState::Connected {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the spool client did not connect within {timeout:?} (last error: {:?})",
            s.last_error
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until the client has `n` more records acked than `base`; returns when.
async fn wait_acked(client: &Client, base: u64, n: u64, timeout: Duration) -> Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = client.stats()?;
        if s.acked >= base + n {
            return Ok(Instant::now());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the spool client had {} of {n} records acked after {timeout:?} (outbox depth {}, \
             last error {:?})",
            s.acked - base,
            s.outbox.depth,
            s.last_error
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Publishes messages `0..n` on `topic` from `cfg.publishers` tasks; returns when every publish
/// returned (every message durable).
async fn publish_all(client: &Client, topic: &str, n: u64, cfg: &MqttConfig) -> Result<()> {
    let filler = Arc::new(payload(cfg.payload_size, 12));
    let tasks = cfg.publishers.max(1) as u64;
    let mut handles = Vec::new();
    for k in 0..tasks {
        let (client, filler, topic) = (client.clone(), filler.clone(), topic.to_owned());
        handles.push(tokio::spawn(async move {
            let mut i = k;
            while i < n {
                client
                    .publish(
                        topic.clone(),
                        message(&filler, i, 0),
                        QoS::AtLeastOnce,
                        false,
                        0,
                        None,
                    )
                    .await?;
                i += tasks;
            }
            Ok::<_, spool_mqtt::ClientError>(())
        }));
    }
    for h in handles {
        h.await??;
    }
    Ok(())
}

struct Live {
    end_to_end: Elapsed,
    published: Duration,
    acked: Duration,
    delivered: Duration,
}

async fn spool_throughput(
    client: &Client,
    topic: &str,
    n: u64,
    cfg: &MqttConfig,
    sub: &Subscriber,
) -> Result<Live> {
    let mut delivered = sub.expect(topic, n, None);
    let base = client.stats()?.acked;
    let start = Instant::now();
    publish_all(client, topic, n, cfg).await?;
    let published = start.elapsed();
    let last = sub.wait_all(topic, &mut delivered, n, None).await?;
    let acked = wait_acked(client, base, n, cfg.timeout).await?;
    Ok(Live {
        end_to_end: Elapsed(acked.max(last) - start),
        published,
        acked: acked - start,
        delivered: last - start,
    })
}

/// p50 and p99 (ms) of publish-to-delivery at `cfg.latency_rate` msg/s.
async fn latency(client: &Client, cfg: &MqttConfig, sub: &Subscriber) -> Result<(f64, f64)> {
    let topic = "bench/latency";
    let n = cfg.latency_messages.max(1);
    let base = Instant::now();
    let mut delivered = sub.expect(topic, n, Some(base));
    let filler = payload(cfg.payload_size, 13);
    let mut tick = tokio::time::interval(Duration::from_secs(1) / cfg.latency_rate.max(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut handles = Vec::new();
    for i in 0..n {
        tick.tick().await;
        let sent = base.elapsed().as_nanos() as u64;
        let (client, msg) = (client.clone(), message(&filler, i, sent));
        // One task per message, so that a slow fsync does not delay the next send.
        handles.push(tokio::spawn(async move {
            client
                .publish(topic, msg, QoS::AtLeastOnce, false, 0, None)
                .await
        }));
    }
    for h in handles {
        h.await??;
    }
    sub.wait_all(topic, &mut delivered, n, None).await?;
    let mut l = sub.latencies(topic);
    l.sort_by(f64::total_cmp);
    Ok((percentile(&l, 0.50), percentile(&l, 0.99)))
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

struct Drain {
    rate: f64,
    offline_publish_rate: f64,
    reconnect: Duration,
    delivered: u64,
}

async fn backlog_drain(
    broker: &mut Mosquitto,
    dir: &Path,
    cfg: &MqttConfig,
    sub: &Subscriber,
    round: usize,
) -> Result<Drain> {
    let topic = format!("bench/drain/{round}");
    let topic = topic.as_str();
    let n = cfg.drain_messages;
    let store = dir.join("drain");
    let id = format!("spool-bench-drain-{round}");
    let client = start_client(&store, broker.port, cfg, &id).await?;
    wait_connected(&client, cfg.timeout).await?;
    tokio::task::block_in_place(|| broker.stop());
    let _delivered = sub.expect(topic, n, None);
    let started = Instant::now();
    publish_all(&client, topic, n, cfg).await?;
    let offline_publish_rate = n as f64 / started.elapsed().as_secs_f64();
    // The client saw the connection close when the broker died (at once: the kernel closes
    // its sockets); give it a moment all the same.
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.stats()?.state == LinkState::Connected {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the client still reports a connection 5 s after the broker was stopped"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut events = client.events();
    let connected = tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(spool_mqtt::Event::Connected { .. }) => return Some(Instant::now()),
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return None,
            }
        }
    });
    let base = client.stats()?.acked;
    let subacks = sub.subacks();
    tokio::task::block_in_place(|| broker.spawn())?;
    let up = Instant::now();
    let acked = wait_acked(&client, base, n, cfg.timeout).await?;
    let reconnect = match tokio::time::timeout(Duration::from_secs(1), connected).await {
        Ok(Ok(Some(at))) => at.saturating_duration_since(up),
        _ => Duration::ZERO,
    };
    // The subscriber is back for the scenarios after this one; it missed what the broker
    // routed before it resubscribed (counted in the note).
    sub.wait_subacks(subacks).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (delivered, _) = sub.received(topic);
    client.shutdown(Duration::from_secs(10)).await;
    drop(client);
    let _ = std::fs::remove_dir_all(&store);
    Ok(Drain {
        rate: n as f64 / (acked - up).as_secs_f64(),
        offline_publish_rate,
        reconnect,
        delivered,
    })
}

/// Fills a client store in `dir` with `cfg.backlog_messages` records through the outbox's own
/// `push` (the store opened with `Durability::None`: setup, not measured); returns the size of
/// the store in bytes.
async fn build_backlog(dir: &Path, cfg: &MqttConfig) -> Result<u64> {
    let options = Options {
        durability: Durability::None,
        ..Options::default()
    };
    let store = Store::open(dir, options).with_context(|| format!("opening {}", dir.display()))?;
    let outbox = Outbox::open(store.clone(), &OutboxConfig::default())?;
    let max = outbox.max_payload();
    drop(outbox);
    let filler = Arc::new(payload(cfg.payload_size, 14));
    let n = cfg.backlog_messages;
    let tasks = 64u64;
    let mut handles = Vec::new();
    for k in 0..tasks {
        let (store, filler) = (store.clone(), filler.clone());
        handles.push(tokio::spawn(async move {
            let mut i = k;
            while i < n {
                let msg = OutMessage::new("bench/backlog", message(&filler, i, 0));
                Outbox::push(&store, max, &msg).await?;
                i += tasks;
            }
            Ok::<_, spool_mqtt::OutboxError>(())
        }));
    }
    for h in handles {
        h.await??;
    }
    tokio::task::block_in_place(|| store.close()).context("closing the backlog store")?;
    Ok(super::procio::dir_size(dir).unwrap_or(0))
}

// ---------------------------------------------------------------------------------------------
// The probe (a child process)

/// How long the probe lets the client run before it reads its memory.
const PROBE_SETTLE: Duration = Duration::from_millis(500);

#[derive(Debug, Args)]
pub struct MqttProbeArgs {
    /// The client's store directory
    #[arg(value_name = "DIR")]
    pub store: PathBuf,
    /// Broker address, host:port
    #[arg(long, value_name = "ADDR")]
    pub broker: String,
    /// Wait until the client is connected before the memory is read
    #[arg(long)]
    pub wait_connected: bool,
}

/// What `spool bench mqtt-probe` prints, as one JSON line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MqttProbeOutput {
    /// Wall time of `Client::start` (store open, outbox recovery, event loop started), ms.
    pub start_ms: f64,
    /// VmRSS before the client started, kB.
    pub rss_before_kb: u64,
    /// VmRSS after the settle time, kB.
    pub rss_kb: u64,
    /// VmHWM at the end, kB.
    pub hwm_kb: u64,
    /// Records in the outbox.
    pub depth: u64,
    /// Set by the parent: spawn to report, ms.
    #[serde(default)]
    pub wall_ms: f64,
}

/// `spool bench mqtt-probe DIR --broker ADDR [--wait-connected]`: starts a client on the store,
/// lets it run, prints a [`MqttProbeOutput`], aborts the client.
pub fn run_probe(a: &MqttProbeArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let out = rt.block_on(async {
        let before = MemoryUsage::read().context("reading /proc/self/status")?;
        let started = Instant::now();
        let client = Client::builder(a.broker.clone(), "spool-bench-probe", &a.store)
            .protocol(Protocol::V311)
            .start()
            .await?;
        let start_ms = started.elapsed().as_secs_f64() * 1000.0;
        if a.wait_connected {
            wait_connected(&client, Duration::from_secs(30)).await?;
        }
        tokio::time::sleep(PROBE_SETTLE).await;
        let mem = MemoryUsage::read().context("reading /proc/self/status")?;
        let depth = client.stats()?.outbox.depth;
        client.abort().await;
        Ok::<_, anyhow::Error>(MqttProbeOutput {
            start_ms,
            rss_before_kb: before.rss_bytes / 1024,
            rss_kb: mem.rss_bytes / 1024,
            hwm_kb: mem.hwm_bytes / 1024,
            depth,
            wall_ms: 0.0,
        })
    })?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", serde_json::to_string(&out)?)?;
    stdout.flush()?;
    Ok(())
}

fn run_probe_child(
    exe: &Path,
    store: &Path,
    broker: &str,
    connected: bool,
) -> Result<MqttProbeOutput> {
    let mut c = Command::new(exe);
    c.args(["bench", "mqtt-probe"])
        .arg(store)
        .args(["--broker", broker]);
    if connected {
        c.arg("--wait-connected");
    }
    let started = Instant::now();
    let output = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {}", exe.display()))?;
    let wall_ms = started.elapsed().as_secs_f64() * 1000.0;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    anyhow::ensure!(
        output.status.success(),
        "`{} bench mqtt-probe {}` failed ({}): {}",
        exe.display(),
        store.display(),
        output.status,
        stderr.trim()
    );
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let mut out: MqttProbeOutput = serde_json::from_str(line.trim()).with_context(|| {
        format!(
            "the mqtt probe printed {line:?}; stderr {:?}",
            stderr.trim()
        )
    })?;
    out.wall_ms = wall_ms;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Python clients

struct PythonClient {
    name: &'static str,
    figure: &'static str,
    module: &'static str,
    env: &'static str,
    install: &'static str,
    script: &'static str,
}

/// Prints "ready" once connected, publishes argv[4] messages (index + filler, 100 B), then
/// waits for stdin to close and stops the client.
const PERSISTMQ: PythonClient = PythonClient {
    name: "PersistMQ",
    figure: names::PERSISTMQ,
    module: "persistmq.client",
    env: "SPOOL_BENCH_PERSISTMQ_PYTHON",
    install: "pip install persistmq (needs paho-mqtt 2: a virtual env of its own), then run with \
              SPOOL_BENCH_PERSISTMQ_PYTHON=<venv>/bin/python",
    script: r#"
import sys, time, struct
from pathlib import Path
from persistmq.client import PersistClient
host, port, topic, n, size, cache = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
c = PersistClient(client_id="spool-bench-persistmq", cache_path=Path(cache))
c.connect_async(mqtt_host=host, mqtt_port=port)
deadline = time.time() + 30
while not c.get_status().get("connected") and time.time() < deadline:
    time.sleep(0.01)
print("ready" if c.get_status().get("connected") else "not connected", flush=True)
filler = bytes(size)
for i in range(n):
    c.publish(topic, struct.pack(">QQ", i, 0) + filler[16:], qos=1)
sys.stdin.read()
c.stop()
"#,
};

const ROBMQTT: PythonClient = PythonClient {
    name: "robmqtt",
    figure: names::ROBMQTT,
    module: "robmqtt",
    env: "SPOOL_BENCH_ROBMQTT_PYTHON",
    install: "pip install robmqtt (pins paho-mqtt < 2: a virtual env of its own), then run with \
              SPOOL_BENCH_ROBMQTT_PYTHON=<venv>/bin/python",
    script: r#"
import sys, time, struct, os
from robmqtt import ProductionMQTTClient
host, port, topic, n, size, cache = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
c = ProductionMQTTClient(client_id="spool-bench-robmqtt", broker_host=host, broker_port=port,
    db_path=os.path.join(cache, "robmqtt.db"), log_dir=os.path.join(cache, "logs"), log_level="ERROR")
c.connect()
c.start()
deadline = time.time() + 30
while not c.is_connected and time.time() < deadline:
    time.sleep(0.01)
print("ready" if c.is_connected else "not connected", flush=True)
filler = bytes(size)
for i in range(n):
    c.publish(topic, struct.pack(">QQ", i, 0) + filler[16:], qos=1)
sys.stdin.read()
c.stop()
"#,
};

/// Kills the child (and waits) when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        // Closing stdin asks the script to stop its client; kill it if it has not.
        drop(self.0.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn python_client(
    py: &PythonClient,
    port: u16,
    dir: &Path,
    cfg: &MqttConfig,
    sub: &Subscriber,
) -> Result<Figure> {
    if !cfg.python {
        return Ok(Figure::unavailable(
            py.figure,
            "msg/s",
            format!(
                "not measured in --quick (no Python in the smoke run); {}",
                py.install
            ),
        ));
    }
    let python = std::env::var(py.env).unwrap_or_else(|_| "python3".to_owned());
    let importable = Command::new(&python)
        .args(["-c", &format!("import {}", py.module)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !importable {
        return Ok(Figure::unavailable(
            py.figure,
            "msg/s",
            format!(
                "not measured: `{python}` cannot import {}; install with {}",
                py.module, py.install
            ),
        ));
    }
    let topic = format!("bench/{}", py.name.to_lowercase());
    let cache = dir.join(format!("python-{}", py.name.to_lowercase()));
    std::fs::create_dir_all(&cache)?;
    let n = cfg.python_messages;
    let mut delivered = sub.expect(&topic, n, None);
    let child = Command::new(&python)
        .args(["-c", py.script, "127.0.0.1", &port.to_string(), &topic])
        .arg(n.to_string())
        .arg(cfg.payload_size.to_string())
        .arg(&cache)
        .current_dir(&cache)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {python}"))?;
    let mut child = Reaped(child);
    let stdout = child.0.stdout.take().context("the script's stdout")?;
    let ready = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        let mut r = BufReader::new(stdout);
        r.read_line(&mut line)
            .ok()
            .filter(|_| line.trim() == "ready")
    });
    let ready = tokio::time::timeout(Duration::from_secs(60), ready)
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    let Some(_) = ready else {
        return Ok(Figure::unavailable(
            py.figure,
            "msg/s",
            format!("not measured: the {} script did not connect", py.name),
        ));
    };
    let start = Instant::now();
    let done = sub
        .wait_all(&topic, &mut delivered, n, Some(cfg.python_budget))
        .await;
    let (received, last) = sub.received(&topic);
    let elapsed = match (&done, last) {
        (Ok(at), _) => *at - start,
        (Err(_), _) => start.elapsed(),
    };
    let version = Command::new(&python)
        .args([
            "-c",
            &format!(
                "import importlib.metadata as m; print(m.version('{}'))",
                py.module.split('.').next().unwrap_or(py.module)
            ),
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    drop(child);
    let _ = std::fs::remove_dir_all(&cache);
    if received == 0 {
        return Ok(Figure::unavailable(
            py.figure,
            "msg/s",
            format!(
                "not measured: {} ({python}) connected but the subscriber received none of its \
                 messages within {:?}",
                py.name, cfg.python_budget
            ),
        ));
    }
    Ok(
        Figure::new(py.figure, received as f64 / elapsed.as_secs_f64(), "msg/s").note(format!(
        "{} {version} (`{python}`), QoS 1, {received} of {n} msgs of {} B delivered in {:.1} s{}",
        py.name,
        cfg.payload_size,
        elapsed.as_secs_f64(),
        if done.is_ok() { "" } else { " (time budget reached)" }
    )),
    )
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_carries_index_and_send_time() {
        let filler = payload(100, 1);
        let m = message(&filler, 42, 7);
        assert_eq!(m.len(), 100);
        assert_eq!(u64::from_be_bytes(m[..8].try_into().unwrap()), 42);
        assert_eq!(u64::from_be_bytes(m[8..16].try_into().unwrap()), 7);
    }

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert!((percentile(&v, 0.5) - 50.0).abs() < 1e-9);
        assert!((percentile(&v, 0.99) - 99.0).abs() < 1e-9);
        assert!((percentile(&[3.0], 0.99) - 3.0).abs() < 1e-9);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn subscriber_counts_distinct_messages() {
        let tracks: Tracks = Arc::default();
        let (count, rx) = watch::channel(0);
        lock(&tracks).insert(
            "t".into(),
            Track {
                seen: vec![false; 3],
                distinct: 0,
                last: None,
                base: None,
                latencies_ms: Vec::new(),
                count,
            },
        );
        let filler = payload(100, 1);
        for i in [0, 1, 1, 2, 9] {
            record(&tracks, "t", &message(&filler, i, 0));
        }
        record(&tracks, "other", &message(&filler, 0, 0));
        record(&tracks, "t", b"short");
        assert_eq!(*rx.borrow(), 3);
    }
}
