//! `spool bench server`: the queue server (`spool serve`, Redis protocol) against a real Redis
//! (the distribution's `redis-server`), both driven by the same `redis-benchmark` in one run
//! (issue 5, design doc `server.md` "Performance").
//!
//! Every server is a child process started for the run, on a free 127.0.0.1 port, with its
//! data in the scratch directory: `spool serve` on a fresh store with the default durability
//! (every reply after its `fdatasync`), Redis with persistence off (`--save '' --appendonly
//! no`) and Redis with `--appendonly yes --appendfsync always` (Redis's durable mode: the AOF
//! is fsynced before the replies of an event-loop turn go out). Each client request is the
//! same shape on both: a custom `redis-benchmark` command `QPUSH q <100 B>` against spool,
//! `LPUSH q <100 B>` against Redis.
//!
//! 1. **Push, 50 clients** (`-c 50`, one request in flight per client): spool durable QPUSH
//!    against Redis LPUSH with `appendfsync always` (target >= 1.0x) and without persistence
//!    (target >= 0.5x).
//! 2. **Pipelined push** (`-c 50 -P 16`): spool against Redis without persistence (>= 0.5x).
//! 3. **Lease and ack round trip under load**: 50 connections each run `QGET q` then
//!    `QACK q <receipt>` in a loop over a prefilled queue (this program's own small RESP client
//!    on `spool-resp`: `redis-benchmark` cannot feed one reply into the next request); p50/p99
//!    of the pair, beside `redis-benchmark`'s p99 of `RPOP` (50 clients) on both Redis modes.
//!    Reported, no target.
//!
//! Each figure is the median of its rounds (three in the full run, one in `--quick`), the
//! scenarios interleaved round by round: on a shared machine the load moves between runs.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use bytes::{Bytes, BytesMut};
use spool_resp::{encode, Decoder, Frame, Limits, Protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Figure, Report, Target};
use crate::cli::BenchArgs;

/// Names of the figures (parameters are in the notes and the context).
pub mod names {
    pub const REDIS_PUSH: &str = "redis LPUSH, no persistence, 50 clients";
    pub const REDIS_AOF_PUSH: &str = "redis LPUSH, appendfsync always, 50 clients";
    pub const SPOOL_PUSH: &str = "spool QPUSH, durable, 50 clients";
    pub const SPOOL_PUSH_VS_REDIS: &str = "spool QPUSH vs redis no persistence";
    pub const REDIS_PIPELINED: &str = "redis LPUSH, no persistence, -P 16";
    pub const SPOOL_PIPELINED: &str = "spool QPUSH, durable, -P 16";
    pub const SPOOL_LEASE_ACK: &str = "spool QGET+QACK pairs, 50 connections";
    pub const SPOOL_LEASE_ACK_P50: &str = "spool QGET+QACK round trip, p50";
    pub const SPOOL_LEASE_ACK_P99: &str = "spool QGET+QACK round trip, p99";
    pub const REDIS_RPOP_P99: &str = "redis RPOP, no persistence, p99";
    pub const REDIS_AOF_RPOP_P99: &str = "redis RPOP, appendfsync always, p99";
}

/// Every figure name, in report order.
pub const ALL_FIGURES: [&str; 11] = [
    names::REDIS_PUSH,
    names::REDIS_AOF_PUSH,
    names::SPOOL_PUSH,
    names::SPOOL_PUSH_VS_REDIS,
    names::REDIS_PIPELINED,
    names::SPOOL_PIPELINED,
    names::SPOOL_LEASE_ACK,
    names::SPOOL_LEASE_ACK_P50,
    names::SPOOL_LEASE_ACK_P99,
    names::REDIS_RPOP_P99,
    names::REDIS_AOF_RPOP_P99,
];

/// Sizes of one run.
#[derive(Debug, Clone)]
pub struct ServerBenchConfig {
    /// Payload bytes per message (100).
    pub payload_size: usize,
    /// Client connections (50).
    pub clients: usize,
    /// Pipeline depth of the pipelined scenario (16).
    pub pipeline: usize,
    /// Requests per `redis-benchmark` push run.
    pub requests: u64,
    /// Requests per pipelined run.
    pub pipelined_requests: u64,
    /// Messages leased and acked per round of scenario 3 (and RPOPs per Redis run).
    pub pairs: u64,
    /// Rounds; each figure is the median.
    pub rounds: usize,
    /// Print a line to stderr before each step.
    pub progress: bool,
}

impl ServerBenchConfig {
    /// About a minute and a half on a 2-core VM.
    pub fn full() -> Self {
        ServerBenchConfig {
            payload_size: 100,
            clients: 50,
            pipeline: 16,
            requests: 100_000,
            pipelined_requests: 1_000_000,
            pairs: 50_000,
            rounds: 3,
            progress: false,
        }
    }

    /// A smoke run: same shapes, a few thousand requests.
    pub fn quick() -> Self {
        ServerBenchConfig {
            requests: 2_000,
            pipelined_requests: 8_000,
            pairs: 1_000,
            rounds: 1,
            ..ServerBenchConfig::full()
        }
    }
}

/// `spool bench server`.
pub fn run_server_command(store_dir: Option<&Path>, args: &BenchArgs) -> Result<()> {
    let scratch = super::Scratch::for_command(store_dir, args, "server")?;
    let mut cfg = if args.quick {
        ServerBenchConfig::quick()
    } else {
        ServerBenchConfig::full()
    };
    cfg.progress = !args.json;
    let exe = std::env::current_exe().context("finding this executable to start the server")?;
    let report = run_server(&scratch.0, &cfg, &exe)?;
    drop(scratch);
    super::print_report(&report, args.json);
    Ok(())
}

/// Runs every scenario with servers whose data is under `dir`; `exe` is the `spool` binary.
pub fn run_server(dir: &Path, cfg: &ServerBenchConfig, exe: &Path) -> Result<Report> {
    let bench = find_program("redis-benchmark", "redis-tools")?;
    let redis = find_program("redis-server", "redis-server")?;
    let payload = "x".repeat(cfg.payload_size);
    let mut report = Report::new("spool bench server");
    report.context("redis", version(&redis));
    report.context("payload", format!("{} B", cfg.payload_size));
    report.context("clients", cfg.clients.to_string());
    report.context(
        "requests",
        format!(
            "{} per push run, {} per pipelined run, {} lease+ack pairs",
            cfg.requests, cfg.pipelined_requests, cfg.pairs
        ),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;

    let progress = |what: &str| {
        if cfg.progress {
            eprintln!("bench: {what}...");
        }
    };
    let mut r = Rounds::default();
    for round in 0..cfg.rounds.max(1) {
        let n = round + 1;
        // Fresh servers every round: the same empty start for each.
        let plain = ChildServer::redis(&redis, &dir.join(format!("redis-{round}")), false)?;
        let aof = ChildServer::redis(&redis, &dir.join(format!("redis-aof-{round}")), true)?;
        let spool = ChildServer::spool(exe, &dir.join(format!("spool-{round}")))?;
        let push = |port: u16, cmd: &str, p: usize, n: u64| {
            let q = format!("bench{round}");
            run_benchmark(&bench, port, cfg.clients, p, n, &[cmd, &q, &payload])
        };

        progress(&format!("round {n}: redis LPUSH, no persistence"));
        r.redis_push
            .push(push(plain.port, "LPUSH", 1, cfg.requests)?);
        progress(&format!("round {n}: redis LPUSH, appendfsync always"));
        r.aof_push.push(push(aof.port, "LPUSH", 1, cfg.requests)?);
        progress(&format!("round {n}: spool QPUSH"));
        r.spool_push
            .push(push(spool.port, "QPUSH", 1, cfg.requests)?);
        progress(&format!("round {n}: redis LPUSH -P {}", cfg.pipeline));
        r.redis_pipe.push(push(
            plain.port,
            "LPUSH",
            cfg.pipeline,
            cfg.pipelined_requests,
        )?);
        progress(&format!("round {n}: spool QPUSH -P {}", cfg.pipeline));
        r.spool_pipe.push(push(
            spool.port,
            "QPUSH",
            cfg.pipeline,
            cfg.pipelined_requests,
        )?);

        progress(&format!("round {n}: spool QGET+QACK"));
        let q = format!("work{round}");
        let fill = [q.as_str(), payload.as_str()];
        let fill = |cmd: &str, port: u16| {
            let args: Vec<&str> = std::iter::once(cmd).chain(fill).collect();
            run_benchmark(&bench, port, cfg.clients, cfg.pipeline, cfg.pairs, &args)
        };
        fill("QPUSH", spool.port)?;
        r.lease_ack
            .push(rt.block_on(lease_ack(spool.port, &q, cfg.clients, cfg.pairs))?);
        progress(&format!("round {n}: redis RPOP"));
        fill("LPUSH", plain.port)?;
        r.rpop.push(run_benchmark(
            &bench,
            plain.port,
            cfg.clients,
            1,
            cfg.pairs,
            &["RPOP", &q],
        )?);
        fill("LPUSH", aof.port)?;
        r.aof_rpop.push(run_benchmark(
            &bench,
            aof.port,
            cfg.clients,
            1,
            cfg.pairs,
            &["RPOP", &q],
        )?);
    }
    r.report(cfg, &mut report);
    Ok(report)
}

/// The figures of every round.
#[derive(Debug, Default)]
struct Rounds {
    redis_push: Vec<BenchResult>,
    aof_push: Vec<BenchResult>,
    spool_push: Vec<BenchResult>,
    redis_pipe: Vec<BenchResult>,
    spool_pipe: Vec<BenchResult>,
    lease_ack: Vec<PairResult>,
    rpop: Vec<BenchResult>,
    aof_rpop: Vec<BenchResult>,
}

/// The median of `values` and a note listing every round.
fn median(values: &[f64]) -> (f64, String) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let shown: Vec<String> = values
        .iter()
        .map(|v| super::report::format_value(*v))
        .collect();
    (
        sorted
            .get((sorted.len().max(1) - 1) / 2)
            .copied()
            .unwrap_or(0.0),
        format!("median of {} rounds: {}", values.len(), shown.join(", ")),
    )
}

impl Rounds {
    fn report(&self, cfg: &ServerBenchConfig, report: &mut Report) {
        let rps = |v: &[BenchResult]| median(&v.iter().map(|b| b.rps).collect::<Vec<_>>());
        let p99 = |v: &[BenchResult]| median(&v.iter().map(|b| b.p99_ms).collect::<Vec<_>>());
        let (v, note) = rps(&self.redis_push);
        report.add(Figure::new(names::REDIS_PUSH, v, "req/s").note(note));
        let (v, note) = rps(&self.aof_push);
        report.add(Figure::new(names::REDIS_AOF_PUSH, v, "req/s").note(note));
        let (v, note) = rps(&self.spool_push);
        report.add(
            Figure::new(names::SPOOL_PUSH, v, "req/s")
                .ratio_to(names::REDIS_AOF_PUSH)
                .target(Target::AtLeastRatio(1.0))
                .note(format!(
                    "every reply after the push is on disk (fdatasync, group commit); {note}"
                )),
        );
        report.add(
            Figure::new(names::SPOOL_PUSH_VS_REDIS, v, "req/s")
                .ratio_to(names::REDIS_PUSH)
                .target(Target::AtLeastRatio(0.5))
                .note("the same figure against Redis without persistence"),
        );
        let (v, note) = rps(&self.redis_pipe);
        report.add(Figure::new(names::REDIS_PIPELINED, v, "req/s").note(note));
        let (v, note) = rps(&self.spool_pipe);
        report.add(
            Figure::new(names::SPOOL_PIPELINED, v, "req/s")
                .ratio_to(names::REDIS_PIPELINED)
                .target(Target::AtLeastRatio(0.5))
                .note(format!(
                    "durable, {} in flight per client; {note}",
                    cfg.pipeline
                )),
        );
        let rates: Vec<f64> = self.lease_ack.iter().map(|p| p.rate).collect();
        let (v, note) = median(&rates);
        report.add(
            Figure::new(names::SPOOL_LEASE_ACK, v, "pairs/s").note(format!(
                "each connection: QGET then QACK of its receipt, both durable; {note}"
            )),
        );
        let (v, note) = median(&self.lease_ack.iter().map(|p| p.p50_ms).collect::<Vec<_>>());
        report.add(Figure::new(names::SPOOL_LEASE_ACK_P50, v, "ms").note(note));
        let (v, note) = median(&self.lease_ack.iter().map(|p| p.p99_ms).collect::<Vec<_>>());
        report.add(
            Figure::new(names::SPOOL_LEASE_ACK_P99, v, "ms").note(format!(
                "the QGET request sent to the QACK reply read; {note}"
            )),
        );
        let (v, note) = p99(&self.rpop);
        report.add(
            Figure::new(names::REDIS_RPOP_P99, v, "ms")
                .note(format!("redis-benchmark, one RPOP per request; {note}")),
        );
        let (v, note) = p99(&self.aof_rpop);
        report.add(Figure::new(names::REDIS_AOF_RPOP_P99, v, "ms").note(note));
    }
}

/// A program on PATH (or in /usr/sbin), or an error naming its package.
fn find_program(name: &str, package: &str) -> Result<PathBuf> {
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/bin")]);
    for dir in candidates {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "spool bench server needs {name}: install the package {package} (Debian/Ubuntu: \
         apt-get install {package})"
    )
}

fn version(program: &Path) -> String {
    Command::new(program)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// One `redis-benchmark` run: requests per second and latency percentiles (its `--csv` line).
#[derive(Debug, Clone, Copy)]
struct BenchResult {
    rps: f64,
    p99_ms: f64,
}

fn run_benchmark(
    bench: &Path,
    port: u16,
    clients: usize,
    pipeline: usize,
    requests: u64,
    command: &[&str],
) -> Result<BenchResult> {
    let out = Command::new(bench)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-c", &clients.to_string(), "-P", &pipeline.to_string()])
        .args(["-n", &requests.to_string(), "--csv"])
        .args(command)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", bench.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "redis-benchmark {} failed ({}): {}{}",
        command.first().copied().unwrap_or_default(),
        out.status,
        text.trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    parse_csv(&text).with_context(|| {
        format!(
            "reading redis-benchmark's output for {}",
            command.first().copied().unwrap_or_default()
        )
    })
}

/// The numbers of `redis-benchmark --csv`: a header line, then
/// `"<test>","rps","avg","min","p50","p95","p99","max"` (Redis 7).
fn parse_csv(text: &str) -> Result<BenchResult> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next().ok_or_else(|| anyhow!("no output"))?;
    let fields = |l: &str| -> Vec<String> {
        l.split("\",\"")
            .map(|f| f.trim_matches('"').to_owned())
            .collect()
    };
    let names = fields(header);
    let row = lines
        .next_back()
        .map(fields)
        .ok_or_else(|| anyhow!("no result line after the header {header:?}"))?;
    let get = |name: &str| -> Result<f64> {
        let i = names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| anyhow!("no column {name} in {header:?}"))?;
        row.get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("column {name} is not a number in {row:?}"))
    };
    Ok(BenchResult {
        rps: get("rps")?,
        p99_ms: get("p99_latency_ms")?,
    })
}

/// A server child process on a free port, killed when dropped.
struct ChildServer {
    child: Child,
    port: u16,
}

impl ChildServer {
    fn redis(program: &Path, dir: &Path, aof: bool) -> Result<ChildServer> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let persistence: &[&str] = if aof {
            &["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            &["--appendonly", "no"]
        };
        ChildServer::start(dir, |port| {
            let mut c = Command::new(program);
            c.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--daemonize", "no", "--protected-mode", "yes"])
                .args(persistence)
                .arg("--dir")
                .arg(dir);
            c
        })
    }

    fn spool(exe: &Path, dir: &Path) -> Result<ChildServer> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let store = dir.join("store");
        ChildServer::start(dir, |port| {
            let mut c = Command::new(exe);
            c.arg("--dir").arg(&store).args([
                "serve",
                "--no-http",
                "--bind",
                &format!("127.0.0.1:{port}"),
            ]);
            c
        })
    }

    /// Starts `command(port)` until it listens (a port taken in the meantime: another port).
    fn start(dir: &Path, command: impl Fn(u16) -> Command) -> Result<ChildServer> {
        let log_path = dir.join("output.log");
        let mut last = String::new();
        for _ in 0..5 {
            let port = super::mqtt::free_port()?;
            let log = std::fs::File::create(&log_path)
                .with_context(|| format!("creating {}", log_path.display()))?;
            let mut child = command(port)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("starting a server")?;
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return Ok(ChildServer { child, port });
                }
                if let Ok(Some(status)) = child.try_wait() {
                    last = format!(
                        "exited ({status}): {}",
                        std::fs::read_to_string(&log_path)
                            .unwrap_or_default()
                            .trim()
                    );
                    break;
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    "did not listen within 20 s".clone_into(&mut last);
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        bail!("a benchmark server did not start: {last}")
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Scenario 3's result.
#[derive(Debug, Clone, Copy)]
struct PairResult {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// `clients` connections lease one message and ack it, in a loop, until `pairs` pairs are done
/// between them; the latency of each pair from the QGET sent to the QACK reply read.
async fn lease_ack(port: u16, queue: &str, clients: usize, pairs: u64) -> Result<PairResult> {
    let left = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(pairs));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let left = left.clone();
        let queue = queue.to_owned();
        tasks.spawn(async move {
            let mut c = RespConn::connect(port).await?;
            let mut lat = Vec::new();
            while left
                .fetch_update(
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                    |n| n.checked_sub(1),
                )
                .is_ok()
            {
                let t = Instant::now();
                let reply = c.call(&["QGET", &queue]).await?;
                let receipt = first_receipt(&reply)
                    .ok_or_else(|| anyhow!("QGET found the queue empty or failed: {reply:?}"))?;
                let acked = c.call(&["QACK", &queue, &receipt]).await?;
                anyhow::ensure!(acked == Frame::Integer(1), "QACK answered {acked:?}");
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<_, anyhow::Error>(lat)
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r.context("a lease+ack task")??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    Ok(PairResult {
        rate: all.len() as f64 / elapsed.max(f64::EPSILON),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    })
}

/// The receipt (second field) of the first record of a `QGET` reply.
fn first_receipt(reply: &Frame) -> Option<String> {
    let Frame::Array(records) = reply else {
        return None;
    };
    let Some(Frame::Array(fields)) = records.first() else {
        return None;
    };
    match fields.get(1) {
        Some(Frame::Bulk(r)) => Some(String::from_utf8_lossy(r).into_owned()),
        _ => None,
    }
}

/// A minimal RESP2 connection: one request, one reply.
struct RespConn {
    stream: tokio::net::TcpStream,
    decoder: Decoder,
    buf: BytesMut,
    out: BytesMut,
}

impl RespConn {
    async fn connect(port: u16) -> Result<RespConn> {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
        stream.set_nodelay(true)?;
        Ok(RespConn {
            stream,
            decoder: Decoder::new(Limits::default()),
            buf: BytesMut::with_capacity(16 << 10),
            out: BytesMut::new(),
        })
    }

    async fn call(&mut self, words: &[&str]) -> Result<Frame> {
        let req = Frame::Array(
            words
                .iter()
                .map(|w| Frame::Bulk(Bytes::copy_from_slice(w.as_bytes())))
                .collect(),
        );
        self.out.clear();
        encode(&req, Protocol::Resp2, &mut self.out);
        self.stream.write_all(&self.out).await?;
        loop {
            if let Some(f) = self.decoder.decode(&mut self.buf)? {
                return Ok(f);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                bail!("the server closed the connection");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_csv_of_redis_benchmark_7_is_read() {
        let text = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\
                    \"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                    \"LPUSH q abc\",\"111111.11\",\"0.291\",\"0.040\",\"0.199\",\"0.439\",\
                    \"3.615\",\"5.135\"\n";
        let r = parse_csv(text).expect("parsed");
        assert!((r.rps - 111_111.11).abs() < 1e-6);
        assert!((r.p99_ms - 3.615).abs() < 1e-9);
        assert!(parse_csv("").is_err());
        assert!(parse_csv("\"test\",\"rps\"\n").is_err());
    }

    #[test]
    fn the_receipt_is_the_second_field_of_the_first_record() {
        let rec = Frame::Array(vec![
            Frame::Bulk(Bytes::from_static(b"7")),
            Frame::Bulk(Bytes::from_static(b"7:1")),
        ]);
        assert_eq!(
            first_receipt(&Frame::Array(vec![rec])).as_deref(),
            Some("7:1")
        );
        assert_eq!(first_receipt(&Frame::Array(vec![])), None);
        assert_eq!(first_receipt(&Frame::Null), None);
    }

    #[test]
    fn the_median_is_the_middle_round() {
        assert!((median(&[3.0, 1.0, 2.0]).0 - 2.0).abs() < f64::EPSILON);
        assert!((median(&[5.0]).0 - 5.0).abs() < f64::EPSILON);
        assert!(median(&[]).0.abs() < f64::EPSILON);
    }
}
