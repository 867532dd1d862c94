//! `spool bench dsmq`: dsmq's own server against `spool serve --dsmq`, both driven by the
//! unmodified dsmq Python client in one run (issue 5: put+get pairs per second, target 100x).
//!
//! Each server is a child process on a free 127.0.0.1 port: dsmq's (`dsmq.server.serve`, its
//! in-memory SQLite) and `spool serve --dsmq` on a fresh store with the default durability
//! (every put on disk before the same connection's next reply). The workload is dsmq's own
//! client in `clients` processes at once, each running `put(topic, msg)` then `get(topic)` on
//! its own topic for a few seconds; the figure is pairs per second over all processes, from the
//! first process starting its loop to the last one finishing, counting a pair when the message
//! put was read back. Each client then reads back what is left and counts the messages it put
//! and never got back: dsmq's server drops a put when
//! its SQLite table is locked by another connection, which several clients at once provoke.
//! Two shapes: one client (the latency of a pair) and several clients (concurrency).
//!
//! The interpreter: `SPOOL_BENCH_PYTHON`, else `SPOOL_TEST_PYTHON`, else `target/pyenv/bin/python`
//! when it exists, else `python3`; it must import `dsmq` (`pip install dsmq`), or the figures
//! are reported as not measured with the command that makes it work.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use super::{Figure, Report, Target};
use crate::cli::BenchArgs;

/// Names of the figures.
pub mod names {
    pub const DSMQ_1: &str = "dsmq server, 1 client, put+get pairs";
    pub const SPOOL_1: &str = "spool --dsmq, 1 client, put+get pairs";
    pub const DSMQ_N: &str = "dsmq server, N clients, put+get pairs";
    pub const SPOOL_N: &str = "spool --dsmq, N clients, put+get pairs";
}

/// Sizes of one run.
#[derive(Debug, Clone)]
pub struct DsmqBenchConfig {
    /// Seconds each client process runs its loop.
    pub secs: f64,
    /// Client processes of the concurrent shape.
    pub clients: usize,
    pub progress: bool,
}

/// The client side: for `secs` seconds, `put` then `get` on topic `bench<index>`; then reads
/// what is left (for up to 2 s) and prints: pairs done, messages put, messages read back,
/// first and last timestamps of the timed loop.
const CLIENT: &str = r#"
import sys, time
from dsmq.client import connect
port, index, secs = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
mq = connect("127.0.0.1", port)
topic = "bench" + index
mq.get(topic)
sys.stdout.write("ready\n"); sys.stdout.flush()
sys.stdin.readline()
t0 = time.time(); put = 0; got = 0
while time.time() - t0 < secs:
    mq.put(topic, "m%d" % put)
    put += 1
    if mq.get(topic) != "":
        got += 1
t1 = time.time()
deadline = time.time() + 2.0
while got < put and time.time() < deadline:
    if mq.get(topic) != "":
        got += 1
    else:
        time.sleep(0.01)
sys.stdout.write("%d %d %d %f %f\n" % (put, put, got, t0, t1)); sys.stdout.flush()
mq.close()
"#;

/// `spool bench dsmq`.
pub fn run_dsmq_command(store_dir: Option<&Path>, args: &BenchArgs) -> Result<()> {
    let scratch = super::Scratch::for_command(store_dir, args, "dsmq")?;
    let cfg = DsmqBenchConfig {
        secs: if args.quick { 0.3 } else { 3.0 },
        clients: 4,
        progress: !args.json,
    };
    let exe = std::env::current_exe().context("finding this executable to start the server")?;
    let report = run_dsmq(&scratch.0, &cfg, &exe)?;
    drop(scratch);
    super::print_report(&report, args.json);
    Ok(())
}

fn python() -> PathBuf {
    for var in ["SPOOL_BENCH_PYTHON", "SPOOL_TEST_PYTHON"] {
        if let Some(p) = std::env::var_os(var) {
            return PathBuf::from(p);
        }
    }
    let venv = PathBuf::from("target/pyenv/bin/python");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("python3")
}

/// Runs both servers and both shapes; figures unavailable (with the fix) without dsmq.
pub fn run_dsmq(dir: &Path, cfg: &DsmqBenchConfig, exe: &Path) -> Result<Report> {
    let mut report = Report::new("spool bench dsmq");
    let py = python();
    report.context("python", py.display().to_string());
    report.context(
        "workload",
        format!(
            "dsmq's Python client: put then get on its own topic, for {} s; 1 client, then {} clients at once",
            cfg.secs, cfg.clients
        ),
    );
    let importable = Command::new(&py)
        .args(["-c", "import dsmq.client, dsmq.server"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !importable {
        let why = format!(
            "{} cannot import dsmq: python3 -m venv target/pyenv && target/pyenv/bin/pip install dsmq (or set SPOOL_BENCH_PYTHON)",
            py.display()
        );
        for name in [names::DSMQ_1, names::SPOOL_1, names::DSMQ_N, names::SPOOL_N] {
            report.add(Figure::unavailable(name, "pairs/s", why.clone()));
        }
        return Ok(report);
    }
    let progress = |what: &str| {
        if cfg.progress {
            eprintln!("bench: {what}...");
        }
    };
    let mut results = Vec::new();
    for (label, spool) in [("dsmq", false), ("spool", true)] {
        let server = if spool {
            Child2::spool(exe, &dir.join("spool"))?
        } else {
            Child2::dsmq(&py, &dir.join("dsmq"))?
        };
        progress(&format!("{label}: 1 client"));
        let one = drive(&py, server.port, 1, cfg.secs)?;
        progress(&format!("{label}: {} clients", cfg.clients));
        let many = drive(&py, server.port, cfg.clients, cfg.secs)?;
        results.push((one, many));
    }
    let (d1, dn) = results[0];
    let (s1, sn) = results[1];
    let lost = |d: &Drive| {
        let fate = if d.lost == 0 {
            "every message put was read back".to_owned()
        } else {
            format!(
                "{} of {} messages put were never read back (lost)",
                d.lost, d.put
            )
        };
        format!("{fate}; {:.0} put+get round trips/s in all", d.ops)
    };
    report.add(
        Figure::new(names::DSMQ_1, d1.rate, "pairs/s")
            .note(format!("in-memory SQLite, nothing durable; {}", lost(&d1))),
    );
    report.add(
        Figure::new(names::SPOOL_1, s1.rate, "pairs/s")
            .ratio_to(names::DSMQ_1)
            .note(format!(
                "every put on disk before the get is answered; {}",
                lost(&s1)
            )),
    );
    report.add(Figure::new(names::DSMQ_N, dn.rate, "pairs/s").note(lost(&dn)));
    report.add(
        Figure::new(names::SPOOL_N, sn.rate, "pairs/s")
            .ratio_to(names::DSMQ_N)
            .target(Target::AtLeastRatio(100.0))
            .note(format!(
                "the Python client processes share the 2 vCPUs with the server; {}",
                lost(&sn)
            )),
    );
    Ok(report)
}

/// What the clients of one shape did.
#[derive(Debug, Clone, Copy)]
struct Drive {
    /// Completed pairs per second over all clients: a put whose message the get returned.
    rate: f64,
    /// put+get round trips per second, whatever the get returned.
    ops: f64,
    put: u64,
    lost: u64,
}

/// Starts `clients` client processes, releases them together, and sums what they did.
fn drive(py: &Path, port: u16, clients: usize, secs: f64) -> Result<Drive> {
    use std::io::{BufRead, BufReader, Write};
    let mut procs = Vec::new();
    for i in 0..clients {
        let mut c = Command::new(py)
            .args([
                "-c",
                CLIENT,
                &port.to_string(),
                &i.to_string(),
                &secs.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", py.display()))?;
        let mut out = BufReader::new(c.stdout.take().context("client stdout")?);
        let mut line = String::new();
        out.read_line(&mut line)?;
        if line.trim() != "ready" {
            let _ = c.kill();
            bail!("a dsmq client did not connect: {line:?}");
        }
        procs.push((c, out));
    }
    for (c, _) in &mut procs {
        if let Some(stdin) = c.stdin.as_mut() {
            stdin.write_all(b"go\n")?;
        }
    }
    let (mut pairs, mut put, mut got) = (0u64, 0u64, 0u64);
    let (mut first, mut last) = (f64::MAX, 0f64);
    for (mut c, mut out) in procs {
        let mut line = String::new();
        out.read_line(&mut line)?;
        let status = c.wait()?;
        let mut err = String::new();
        if let Some(mut e) = c.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        if !status.success() {
            bail!("a dsmq client failed ({status}): {}", err.trim());
        }
        let f: Vec<f64> = line
            .split_whitespace()
            .filter_map(|t| t.parse::<f64>().ok())
            .collect();
        let [p, n, g, t0, t1] = f[..] else {
            bail!("a dsmq client printed {line:?}");
        };
        pairs += p as u64;
        put += n as u64;
        got += g as u64;
        first = first.min(t0);
        last = last.max(t1);
    }
    let elapsed = (last - first).max(1e-9);
    Ok(Drive {
        rate: got.min(pairs) as f64 / elapsed,
        ops: pairs as f64 / elapsed,
        put,
        lost: put.saturating_sub(got),
    })
}

/// A server child process, killed when dropped.
struct Child2 {
    child: Child,
    port: u16,
}

impl Child2 {
    fn dsmq(py: &Path, dir: &Path) -> Result<Child2> {
        std::fs::create_dir_all(dir)?;
        let port = super::mqtt::free_port()?;
        let child = Command::new(py)
            .args([
                "-c",
                "import sys; from dsmq.server import serve; serve('127.0.0.1', int(sys.argv[1]))",
                &port.to_string(),
            ])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting dsmq's server")?;
        Child2::wait(child, port)
    }

    fn spool(exe: &Path, dir: &Path) -> Result<Child2> {
        std::fs::create_dir_all(dir)?;
        let (port, resp) = (super::mqtt::free_port()?, super::mqtt::free_port()?);
        let child = Command::new(exe)
            .arg("--dir")
            .arg(dir.join("store"))
            .args(["serve", "--no-http", "--bind", &format!("127.0.0.1:{resp}")])
            .args(["--dsmq", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting spool serve --dsmq")?;
        Child2::wait(child, port)
    }

    fn wait(mut child: Child, port: u16) -> Result<Child2> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                bail!("the server exited before listening ({status})");
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                bail!("the server did not listen on {addr} within 20 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Child2 { child, port })
    }
}

impl Drop for Child2 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
