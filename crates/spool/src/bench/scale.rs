//! `spool bench scale`: the engine with a large backlog. Three scenarios, each figure printed
//! with its target (issue 3) through the same [`Report`] as `spool bench engine`:
//!
//! 1. **Reopen with a large backlog** (10,000,000 messages of 100 B, about 1 GiB of log): the
//!    store is built and closed cleanly (so a checkpoint covers the whole log), then opened by
//!    a *fresh child process* (`spool bench reopen-probe DIR`, this same executable) which
//!    prints, as one JSON line, how long `Store::open` took, its `VmRSS`/`VmHWM` from
//!    `/proc/self/status` after a `peek` and a `stats`, what it read (`/proc/self/io`) and the
//!    recovery report. A child, so that the memory measured is the reopen's own and not what
//!    building the store left in the allocator.
//! 2. **Recovery time against the log written since the last checkpoint**: for each size, a
//!    checkpoint is taken, a child process pushes that many MiB (durably, `Durability::Sync`,
//!    no automatic checkpoint, manual maintenance) and exits without closing the store (a
//!    crash: no checkpoint at close), then a reopen probe measures the recovery.
//! 3. **Disk use after acking 90% of a 1 GiB backlog in random order**, once maintenance (and
//!    compaction, where it exists) has run: bytes of every file under the store directory
//!    against the live bytes of the queue.
//!
//! Every store lives in a scratch directory removed when the command ends, error or not.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use clap::Args;
use serde::{Deserialize, Serialize};
use spool_engine::{Durability, MaintainReport, Maintenance, Options, Push, Receipt, Store};

use super::{payload, procio, Figure, IoCounters, MemoryUsage, Report, Target};
use crate::cli::BenchArgs;

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The store to open
    #[arg(value_name = "DIR")]
    pub store: PathBuf,
    /// Instead of probing: open the store, push this many MiB of log durably, and exit without
    /// closing it (a crash: no checkpoint at close)
    #[arg(long, value_name = "MIB", hide = true)]
    pub crash_after_mib: Option<u64>,
    /// Segment size to open the store with
    #[arg(long, value_name = "BYTES", hide = true, default_value_t = 64 << 20)]
    pub segment_bytes: u64,
}

/// The queue every scenario uses.
const QUEUE: &str = "scale";
/// Messages per `push_batch` (and per `ack_batch`).
const BATCH: usize = 1000;
/// Messages per lease call (the engine's maximum).
const LEASE_BATCH: usize = 10_000;
/// Visibility of the leases of the disk-use scenario: nothing expires while it runs.
const LEASE_VISIBILITY: Duration = Duration::from_secs(3600);
/// At most this many `maintain` rounds in the disk-use scenario.
const MAINTAIN_ROUNDS_MAX: usize = 16;
const MIB: f64 = 1024.0 * 1024.0;

/// Names of the figures (sizes are in the notes and the context, so names stay stable).
pub mod scale_names {
    pub const REOPEN_TIME: &str = "reopen with backlog: open time";
    pub const REOPEN_RSS: &str = "reopen with backlog: RSS after open";
    pub const REOPEN_HWM: &str = "reopen with backlog: peak RSS";
    pub const REOPEN_BACKLOG: &str = "reopen with backlog: messages";
    pub const REOPEN_LOG: &str = "reopen with backlog: log size";
    pub const REOPEN_READ: &str = "reopen with backlog: bytes read by open";
    pub const REPLAY_RATE: &str = "recovery: replay rate";
    pub const DISK_LIVE: &str = "disk use: live bytes (10% of backlog)";
    pub const DISK_STORE: &str = "disk use: store files after maintain";
}
use scale_names as sn;

/// Sizes of the scenarios. [`ScaleConfig::full`] is the issue's; [`ScaleConfig::quick`] the same
/// shapes at a small size (a smoke test).
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleConfig {
    /// Messages in the reopen scenario's backlog (also the base of the recovery scenario).
    pub backlog_messages: u64,
    /// Payload size of the backlog and of the recovery scenario's pushes.
    pub payload_size: usize,
    /// Segment size of every store.
    pub segment_bytes: u64,
    /// Reopen probes in scenario 1 (the median by open time is reported).
    pub probes: usize,
    /// MiB of log written after the checkpoint, one recovery row each.
    pub recovery_mib: Vec<u64>,
    /// Messages pushed in the disk-use scenario ...
    pub disk_messages: u64,
    /// ... of this payload size.
    pub disk_payload_size: usize,
    /// Percentage of them acked (in random order).
    pub ack_percent: u64,
    /// Seed of the random ack order.
    pub seed: u64,
    /// Print a line to stderr before each step.
    pub progress: bool,
}

impl ScaleConfig {
    pub fn full() -> Self {
        ScaleConfig {
            backlog_messages: 10_000_000,
            payload_size: 100,
            segment_bytes: Options::default().segment_bytes,
            probes: 3,
            recovery_mib: vec![0, 8, 32, 128],
            disk_messages: 1_000_000,
            disk_payload_size: 1024,
            ack_percent: 90,
            seed: 0x5EED,
            progress: false,
        }
    }

    /// Same shapes, small: a 4 MiB segment size keeps several sealed segments.
    pub fn quick() -> Self {
        ScaleConfig {
            backlog_messages: 200_000,
            segment_bytes: 4 << 20,
            probes: 1,
            recovery_mib: vec![0, 2, 8],
            disk_messages: 20_000,
            ..ScaleConfig::full()
        }
    }

    fn step(&self, what: &str) {
        if self.progress {
            eprintln!("bench scale: {what}...");
        }
    }
}

/// A scratch directory, removed (best effort) when dropped, error or not.
struct Scratch(PathBuf);

impl Scratch {
    fn create(path: PathBuf) -> Result<Self> {
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("clearing {}", path.display()))?;
        }
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Scratch(path))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `spool bench scale`: the three scenarios in a scratch directory under `--bench-dir` (else
/// under the parent of `--dir`, else the current directory), printed as a table or JSON.
pub fn run_scale_command(store_dir: Option<&Path>, args: &BenchArgs) -> Result<()> {
    let parent = match (&args.bench_dir, store_dir) {
        (Some(d), _) => d.clone(),
        (None, Some(d)) => d
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
        (None, None) => PathBuf::from("."),
    };
    let scratch =
        Scratch::create(parent.join(format!(".spool-bench-scale-{}", std::process::id())))?;
    let mut cfg = if args.quick {
        ScaleConfig::quick()
    } else {
        ScaleConfig::full()
    };
    cfg.progress = !args.json;
    let exe = std::env::current_exe().context("finding this executable to run probes")?;
    let report = run_scale(&scratch.0, &cfg, &exe)?;
    drop(scratch);
    if args.json {
        println!("{}", report.to_json_string());
    } else {
        println!("{report}");
    }
    Ok(())
}

/// Runs the three scenarios in `dir` (which must exist; their stores are removed afterwards).
/// `exe` is the `spool` binary that runs the child processes (`bench reopen-probe`).
pub fn run_scale(dir: &Path, cfg: &ScaleConfig, exe: &Path) -> Result<Report> {
    let mut report = Report::new("spool bench scale");
    describe(&mut report, dir, cfg);
    {
        let store = Scratch::create(dir.join("backlog"))?;
        reopen_scenario(&store.0, cfg, exe, &mut report)?;
        recovery_scenario(&store.0, cfg, exe, &mut report)?;
    }
    {
        let store = Scratch::create(dir.join("disk"))?;
        disk_scenario(&store.0, cfg, &mut report)?;
    }
    Ok(report)
}

fn describe(report: &mut Report, dir: &Path, cfg: &ScaleConfig) {
    let shown = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    report.context("dir", shown.display().to_string());
    if let Ok(Some(m)) = procio::mount_of(dir) {
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
    if let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        report.context("kernel", release.trim().to_owned());
    }
    if let Ok(n) = std::thread::available_parallelism() {
        report.context("cpus", n.to_string());
    }
    // Other work on the machine skews every figure; record how busy it was at the start.
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        let load: Vec<&str> = load.split_whitespace().take(3).collect();
        report.context("load average at start", load.join(" "));
    }
    report.context(
        "build",
        if cfg!(debug_assertions) {
            "debug (figures are not representative)"
        } else {
            "release"
        },
    );
    report.context(
        "config",
        format!(
            "backlog {} x {} B, segments {} MiB, recovery after {:?} MiB, disk use {} x {} B \
             with {}% acked, {} reopen probe(s)",
            cfg.backlog_messages,
            cfg.payload_size,
            cfg.segment_bytes >> 20,
            cfg.recovery_mib,
            cfg.disk_messages,
            cfg.disk_payload_size,
            cfg.ack_percent,
            cfg.probes
        ),
    );
    report.note(
        "open time, RSS and bytes read are measured in a fresh child process \
         (`spool bench reopen-probe DIR`): Store::open, then peek 1 + stats; RSS = VmRSS, \
         peak RSS = VmHWM of /proc/self/status (the whole process, executable included); \
         bytes read = rchar of /proc/self/io during open",
    );
    report.note(
        "the store files were just written, so the reopen reads them from the page cache \
         (a warm reopen; a cold one adds the disk reads of what 'bytes read' shows)",
    );
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB
}

/// Bytes of the segment files (`log/*.seg`) of a store.
fn log_bytes(store: &Path) -> Result<u64> {
    let log = store.join("log");
    let mut total = 0;
    for entry in std::fs::read_dir(&log).with_context(|| format!("listing {}", log.display()))? {
        let entry = entry?;
        if entry.path().extension().is_some_and(|e| e == "seg") {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}

fn backlog_options(cfg: &ScaleConfig) -> Options {
    Options {
        durability: Durability::None,
        segment_bytes: cfg.segment_bytes,
        ..Options::default()
    }
}

/// Push `count` messages of `payload` in batches of [`BATCH`].
fn push_many(store: &Store, payload: &Bytes, count: u64) -> Result<()> {
    let mut left = count;
    while left > 0 {
        let n = left.min(BATCH as u64) as usize;
        let msgs = (0..n).map(|_| Push::new(payload.clone())).collect();
        store.push_batch(QUEUE, msgs)?;
        left -= n as u64;
    }
    Ok(())
}

/// Scenario 1: build the backlog, close cleanly, reopen in child processes.
fn reopen_scenario(store: &Path, cfg: &ScaleConfig, exe: &Path, report: &mut Report) -> Result<()> {
    cfg.step(&format!(
        "building a backlog of {} messages",
        cfg.backlog_messages
    ));
    let started = Instant::now();
    let s = Store::open(store, backlog_options(cfg))
        .with_context(|| format!("creating a store in {}", store.display()))?;
    push_many(
        &s,
        &Bytes::from(payload(cfg.payload_size, 11)),
        cfg.backlog_messages,
    )?;
    // What the background maintenance has not done yet (index files of the last sealed
    // segments), as a store that ran for a while would have done it.
    s.maintain()?;
    s.close()?;
    let build_s = started.elapsed().as_secs_f64();
    let log = log_bytes(store)?;
    let total = procio::dir_size(store)?;

    let mut runs = Vec::with_capacity(cfg.probes.max(1));
    for i in 0..cfg.probes.max(1) {
        cfg.step(&format!("reopen probe {}", i + 1));
        runs.push(run_probe_child(exe, store, cfg.segment_bytes)?);
    }
    let times: Vec<f64> = runs.iter().map(|r| r.open_ms).collect();
    runs.sort_by(|a, b| a.open_ms.total_cmp(&b.open_ms));
    let p = &runs[runs.len() / 2];
    let range = if times.len() > 1 {
        let lo = times.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = times.iter().copied().fold(0.0, f64::max);
        format!(
            "median of {} probes (min {lo:.0}, max {hi:.0} ms); ",
            times.len()
        )
    } else {
        String::new()
    };
    let rec = &p.recovery;
    report.add(
        Figure::new(sn::REOPEN_TIME, p.open_ms, "ms")
            .target(Target::AtMost(1000.0))
            .note(format!(
                "{range}Store::open; recovery {} ms from checkpoint {}, replayed {} frames / \
                 {} B, {} index(es) rebuilt; then peek 1 + stats {:.1} ms",
                rec.duration_ms,
                rec.checkpoint
                    .map_or_else(|| "none".to_owned(), |g| g.to_string()),
                rec.frames,
                rec.bytes,
                rec.indexes_rebuilt,
                p.read_ms
            )),
    );
    report.add(
        Figure::new(sn::REOPEN_RSS, kib_to_mib(p.rss_kb), "MiB")
            .target(Target::AtMost(64.0))
            .note(format!(
                "VmRSS after open + peek + stats ({:.1} MiB right after open, {:.1} MiB \
                 before open); target 64 MB read as MiB",
                kib_to_mib(p.rss_open_kb),
                kib_to_mib(p.rss_before_kb)
            )),
    );
    report.add(
        Figure::new(sn::REOPEN_HWM, kib_to_mib(p.hwm_kb), "MiB")
            .target(Target::AtMost(64.0))
            .note("VmHWM: the most the probe process was resident at any time"),
    );
    report.add(
        Figure::new(sn::REOPEN_BACKLOG, p.messages as f64, "msgs").note(format!(
            "{} B payloads ({:.0} MiB live per stats), pushed {}/call with Durability::None \
             in {build_s:.1} s, then maintain + close",
            cfg.payload_size,
            mib(p.bytes),
            BATCH
        )),
    );
    report.add(Figure::new(sn::REOPEN_LOG, mib(log), "MiB").note(format!(
        "segment files; all store files {:.0} MiB",
        mib(total)
    )));
    report.add(
        Figure::new(sn::REOPEN_READ, mib(p.read_syscall_bytes), "MiB").note(format!(
            "rchar during Store::open ({} B from the block layer: read_bytes)",
            p.read_disk_bytes
        )),
    );
    anyhow::ensure!(
        p.messages == cfg.backlog_messages,
        "the reopened store holds {} messages, {} were pushed",
        p.messages,
        cfg.backlog_messages
    );
    Ok(())
}

fn kib_to_mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn recovery_name(mib: u64) -> String {
    format!("recovery: open after {mib} MiB of log since checkpoint")
}

/// Scenario 2: on the backlog store, for each size: checkpoint, a child writes that many MiB
/// and "crashes", a probe child reopens.
fn recovery_scenario(
    store: &Path,
    cfg: &ScaleConfig,
    exe: &Path,
    report: &mut Report,
) -> Result<()> {
    let mut points: Vec<(f64, f64)> = Vec::new();
    for &size in &cfg.recovery_mib {
        cfg.step(&format!("recovery after {size} MiB since the checkpoint"));
        let s = Store::open(store, writer_options(cfg.segment_bytes))
            .with_context(|| format!("opening {}", store.display()))?;
        s.checkpoint()?;
        s.close()?;
        let written = if size > 0 {
            let out = run_child(
                exe,
                store,
                &[
                    "--crash-after-mib".to_owned(),
                    size.to_string(),
                    "--segment-bytes".to_owned(),
                    cfg.segment_bytes.to_string(),
                ],
            )?;
            Some(out.parse_json_line::<CrashWrite>("crash writer")?)
        } else {
            None
        };
        let p = run_probe_child(exe, store, cfg.segment_bytes)?;
        let rec = &p.recovery;
        points.push((mib(rec.bytes), p.open_ms));
        let wrote = written.map_or_else(String::new, |w| {
            format!(
                "child pushed {} msgs ({:.1} MiB of log) durably, exited without close; ",
                w.messages,
                mib(w.log_bytes)
            )
        });
        report.add(
            Figure::new(recovery_name(size), p.open_ms, "ms").note(format!(
                "{wrote}replayed {:.1} MiB / {} frames / {} entries from checkpoint {} in {} ms \
                 ({} index(es) rebuilt); backlog {} msgs; RSS {:.1} MiB, peak {:.1} MiB",
                mib(rec.bytes),
                rec.frames,
                rec.entries,
                rec.checkpoint
                    .map_or_else(|| "none".to_owned(), |g| g.to_string()),
                rec.duration_ms,
                rec.indexes_rebuilt,
                p.messages,
                kib_to_mib(p.rss_kb),
                kib_to_mib(p.hwm_kb)
            )),
        );
    }
    // The slope between the smallest and the largest replay.
    let lo = points.iter().copied().min_by(|a, b| a.0.total_cmp(&b.0));
    let hi = points.iter().copied().max_by(|a, b| a.0.total_cmp(&b.0));
    if let (Some(lo), Some(hi)) = (lo, hi) {
        if hi.0 > lo.0 && hi.1 > lo.1 {
            report.add(
                Figure::new(
                    sn::REPLAY_RATE,
                    (hi.0 - lo.0) / ((hi.1 - lo.1) / 1000.0),
                    "MiB/s",
                )
                .note(format!(
                    "(replayed MiB difference) / (open time difference) between the rows \
                         with {:.1} and {:.1} MiB replayed",
                    lo.0, hi.0
                )),
            );
        }
    }
    Ok(())
}

/// Options of the crash writer (and of the parent's checkpoint step): durable pushes, no
/// automatic checkpoint, maintenance only when called.
fn writer_options(segment_bytes: u64) -> Options {
    Options {
        durability: Durability::Sync,
        segment_bytes,
        maintenance: Maintenance::Manual,
        checkpoint_bytes: 1 << 60,
        checkpoint_interval: Duration::from_secs(365 * 24 * 3600),
        ..Options::default()
    }
}

/// What the crash writer child prints before exiting.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct CrashWrite {
    messages: u64,
    log_bytes: u64,
}

/// The child side of scenario 2: push `mib` MiB of log (durably), print what was written, and
/// exit without closing the store.
fn crash_writer(a: &ProbeArgs, mib: u64) -> Result<()> {
    let store = Store::open(&a.store, writer_options(a.segment_bytes))
        .with_context(|| format!("opening {}", a.store.display()))?;
    let before = log_bytes(&a.store)?;
    let target = mib << 20;
    let body = Bytes::from(payload(100, 12));
    let mut messages = 0u64;
    loop {
        push_many(&store, &body, BATCH as u64)?;
        messages += BATCH as u64;
        let grown = log_bytes(&a.store)?.saturating_sub(before);
        if grown >= target {
            let line = serde_json::to_string(&CrashWrite {
                messages,
                log_bytes: grown,
            })?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{line}")?;
            out.flush()?;
            // No close, no drop: the store is left as a crash leaves it (every push above was
            // durable before it returned).
            std::process::exit(0);
        }
    }
}

/// Scenario 3: push, lease everything, ack a random share, maintain, compare file bytes with
/// live bytes.
fn disk_scenario(store: &Path, cfg: &ScaleConfig, report: &mut Report) -> Result<()> {
    cfg.step(&format!(
        "disk use: pushing {} x {} B",
        cfg.disk_messages, cfg.disk_payload_size
    ));
    let s = Store::open(
        store,
        Options {
            durability: Durability::None,
            segment_bytes: cfg.segment_bytes,
            maintenance: Maintenance::Manual,
            ..Options::default()
        },
    )
    .with_context(|| format!("creating a store in {}", store.display()))?;
    push_many(
        &s,
        &Bytes::from(payload(cfg.disk_payload_size, 13)),
        cfg.disk_messages,
    )?;

    cfg.step("disk use: leasing everything");
    let mut receipts: Vec<Receipt> = Vec::with_capacity(cfg.disk_messages as usize);
    loop {
        let msgs = s.lease(QUEUE, LEASE_BATCH, Some(LEASE_VISIBILITY))?;
        if msgs.is_empty() {
            break;
        }
        receipts.extend(msgs.iter().filter_map(|m| m.receipt));
    }
    anyhow::ensure!(
        receipts.len() as u64 == cfg.disk_messages,
        "leased {} of {} messages",
        receipts.len(),
        cfg.disk_messages
    );

    cfg.step(&format!(
        "disk use: acking {}% in random order",
        cfg.ack_percent
    ));
    shuffle(&mut receipts, cfg.seed);
    let acked = (receipts.len() as u64 * cfg.ack_percent / 100) as usize;
    for chunk in receipts[..acked].chunks(BATCH) {
        for r in s.ack_batch(QUEUE, chunk)? {
            r?;
        }
    }
    let before_maintain = procio::dir_size(store)?;

    cfg.step("disk use: maintenance");
    let mut rounds = 0;
    let mut last = MaintainReport::default();
    for _ in 0..MAINTAIN_ROUNDS_MAX {
        rounds += 1;
        let r = s.maintain()?;
        if r == MaintainReport::default() {
            break;
        }
        last = r;
    }
    let disk = procio::dir_size(store)?;
    let log = log_bytes(store)?;
    let stats = s.stats(QUEUE)?;
    s.close()?;
    anyhow::ensure!(
        stats.messages == cfg.disk_messages - acked as u64,
        "{} messages left, expected {}",
        stats.messages,
        cfg.disk_messages - acked as u64
    );

    report.add(
        Figure::new(sn::DISK_LIVE, mib(stats.bytes), "MiB").note(format!(
            "stats().bytes: {} messages left of {} x {} B pushed (Durability::None), all \
             leased for 1 h, {acked} acked in random order (seed {:#x}, {BATCH}/call)",
            stats.messages, cfg.disk_messages, cfg.disk_payload_size, cfg.seed
        )),
    );
    report.add(
        Figure::new(sn::DISK_STORE, mib(disk), "MiB")
            .ratio_to(sn::DISK_LIVE)
            .target(Target::AtMostRatio(2.0))
            .note(format!(
                "every file under the store directory after {rounds} maintain round(s) (last \
                 with work: {last:?}); segments {:.0} MiB; {:.0} MiB before maintain",
                mib(log),
                mib(before_maintain)
            )),
    );
    Ok(())
}

/// Fisher-Yates with xorshift64* (seeded: the same order every run).
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    for i in (1..items.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

// --- the probe ----------------------------------------------------------------------------

/// What a reopen probe prints (one JSON line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeOutput {
    /// Wall time of `Store::open`, ms.
    pub open_ms: f64,
    /// Wall time of the peek and the stats after it, ms.
    pub read_ms: f64,
    /// VmRSS before the open, kB.
    pub rss_before_kb: u64,
    /// VmRSS right after the open, kB.
    pub rss_open_kb: u64,
    /// VmRSS after the open, peek and stats, kB.
    pub rss_kb: u64,
    /// VmHWM (peak resident set) at the end, kB.
    pub hwm_kb: u64,
    /// `rchar` during the open: bytes returned by read syscalls.
    pub read_syscall_bytes: u64,
    /// `read_bytes` during the open: bytes fetched from the block layer.
    pub read_disk_bytes: u64,
    /// Queues in the store.
    pub queues: u64,
    /// Messages in all queues (stats).
    pub messages: u64,
    /// Bytes held by all queues (stats).
    pub bytes: u64,
    /// Messages the peek returned (1 unless the first queue is empty).
    pub peeked: u64,
    pub recovery: ProbeRecovery,
}

/// The figures of the store's [`spool_engine::RecoveryReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeRecovery {
    pub checkpoint: Option<u64>,
    pub segments: u64,
    pub frames: u64,
    pub entries: u64,
    pub bytes: u64,
    pub indexes_rebuilt: u64,
    pub duration_ms: u64,
}

/// `spool bench reopen-probe DIR`: open an existing store, peek 1 message and read its stats,
/// print a [`ProbeOutput`] as one JSON line, close. With `--crash-after-mib`: the crash writer
/// of the recovery scenario instead.
pub fn run_probe(a: &ProbeArgs) -> Result<()> {
    if let Some(mib) = a.crash_after_mib {
        return crash_writer(a, mib);
    }
    let (out, store) = probe(&a.store, a.segment_bytes)?;
    let line = serde_json::to_string(&out)?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()?;
    store.close()?;
    Ok(())
}

/// Opens the store in `dir` and measures it (see [`ProbeOutput`]). Returns the open store.
pub fn probe(dir: &Path, segment_bytes: u64) -> Result<(ProbeOutput, Store)> {
    anyhow::ensure!(
        dir.join("FORMAT").exists(),
        "no spool store in {}",
        dir.display()
    );
    let options = Options {
        segment_bytes,
        // Nothing runs in the background while the open is measured.
        maintenance: Maintenance::Manual,
        ..Options::default()
    };
    let before = MemoryUsage::read().context("reading /proc/self/status")?;
    let io_before = IoCounters::read().ok();
    let started = Instant::now();
    let store = Store::open(dir, options).with_context(|| format!("opening {}", dir.display()))?;
    let open_ms = started.elapsed().as_secs_f64() * 1000.0;
    let io = match (io_before, IoCounters::read().ok()) {
        (Some(a), Some(b)) => b.since(&a),
        _ => IoCounters::default(),
    };
    let opened = MemoryUsage::read().context("reading /proc/self/status")?;

    let started = Instant::now();
    let queues = store.queues();
    let mut peeked = 0;
    if let Some(first) = queues.first() {
        peeked = store.peek(first, 1)?.len() as u64;
    }
    let (mut messages, mut bytes) = (0, 0);
    for q in &queues {
        let s = store.stats(q)?;
        messages += s.messages;
        bytes += s.bytes;
    }
    let read_ms = started.elapsed().as_secs_f64() * 1000.0;
    let after = MemoryUsage::read().context("reading /proc/self/status")?;

    let r = store.recovery_report();
    let out = ProbeOutput {
        open_ms,
        read_ms,
        rss_before_kb: before.rss_bytes / 1024,
        rss_open_kb: opened.rss_bytes / 1024,
        rss_kb: after.rss_bytes / 1024,
        hwm_kb: after.hwm_bytes / 1024,
        read_syscall_bytes: io.rchar,
        read_disk_bytes: io.read_bytes,
        queues: queues.len() as u64,
        messages,
        bytes,
        peeked,
        recovery: ProbeRecovery {
            checkpoint: r.checkpoint,
            segments: r.segments,
            frames: r.frames,
            entries: r.entries,
            bytes: r.bytes,
            indexes_rebuilt: r.indexes_rebuilt,
            duration_ms: r.duration_ms,
        },
    };
    Ok((out, store))
}

/// What a child process printed.
#[derive(Debug, Clone, Default)]
struct ChildOutput {
    stdout: String,
    stderr: String,
}

impl ChildOutput {
    /// The tails of both streams, for an error message.
    fn describe(&self) -> String {
        fn tail(s: &str) -> &str {
            let s = s.trim();
            let mut start = s.len().saturating_sub(2000);
            while !s.is_char_boundary(start) {
                start += 1;
            }
            &s[start..]
        }
        format!(
            "its stderr: {:?}; its stdout: {:?}",
            tail(&self.stderr),
            tail(&self.stdout)
        )
    }

    /// Parses the last non-empty line of stdout as `T`; the error quotes both streams.
    fn parse_json_line<T: serde::de::DeserializeOwned>(&self, what: &str) -> Result<T> {
        let line = self.stdout.lines().rev().find(|l| !l.trim().is_empty());
        match line.map(|l| serde_json::from_str::<T>(l.trim())) {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(anyhow::anyhow!(
                "the {what} printed no valid JSON line ({e}); {}",
                self.describe()
            )),
            None => Err(anyhow::anyhow!(
                "the {what} printed nothing; {}",
                self.describe()
            )),
        }
    }
}

/// Runs `exe bench reopen-probe <store> <extra...>` and returns what it printed; an error
/// (quoting its stderr) if it cannot start or fails.
fn run_child(exe: &Path, store: &Path, extra: &[String]) -> Result<ChildOutput> {
    let output = Command::new(exe)
        .arg("bench")
        .arg("reopen-probe")
        .arg(store)
        .args(extra)
        .output()
        .with_context(|| format!("starting {}", exe.display()))?;
    let out = ChildOutput {
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    anyhow::ensure!(
        output.status.success(),
        "`{} bench reopen-probe {} {}` failed ({}); {}",
        exe.display(),
        store.display(),
        extra.join(" "),
        output.status,
        out.describe()
    );
    Ok(out)
}

fn run_probe_child(exe: &Path, store: &Path, segment_bytes: u64) -> Result<ProbeOutput> {
    run_child(
        exe,
        store,
        &["--segment-bytes".to_owned(), segment_bytes.to_string()],
    )?
    .parse_json_line("reopen probe")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_measures_a_small_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("s");
        let s = Store::open(&store, Options::default()).unwrap();
        push_many(&s, &Bytes::from(payload(100, 1)), 2500).unwrap();
        s.close().unwrap();
        let (out, s) = probe(&store, 64 << 20).unwrap();
        s.close().unwrap();
        assert_eq!(out.messages, 2500);
        assert_eq!(out.peeked, 1);
        assert_eq!(out.queues, 1);
        assert!(out.recovery.checkpoint.is_some());
        assert!(out.open_ms >= 0.0 && out.rss_kb > 0 && out.hwm_kb > 0);
        // What the parent parses is what the child prints.
        let line = serde_json::to_string(&out).unwrap();
        let child = ChildOutput {
            stdout: format!("noise\n{line}\n"),
            stderr: String::new(),
        };
        let back: ProbeOutput = child.parse_json_line("probe").unwrap();
        // Floats through JSON may differ in their last bit.
        assert!((back.open_ms - out.open_ms).abs() < 1e-9);
        assert!((back.read_ms - out.read_ms).abs() < 1e-9);
        let (mut a, mut b) = (back.clone(), out.clone());
        (a.open_ms, a.read_ms, b.open_ms, b.read_ms) = (0.0, 0.0, 0.0, 0.0);
        assert_eq!(a, b);
        assert!(probe(&dir.path().join("missing"), 64 << 20).is_err());
    }

    #[test]
    fn child_output_errors_quote_stderr() {
        let child = |stdout: &str, stderr: &str| ChildOutput {
            stdout: stdout.to_owned(),
            stderr: stderr.to_owned(),
        };
        let err = child("not json\n", "boom: no store")
            .parse_json_line::<ProbeOutput>("probe")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no valid JSON") && err.contains("boom: no store"),
            "{err}"
        );
        let err = child("", "")
            .parse_json_line::<ProbeOutput>("probe")
            .unwrap_err()
            .to_string();
        assert!(err.contains("printed nothing"), "{err}");
        let w: CrashWrite = child("{\"messages\":3,\"log_bytes\":9}\n", "")
            .parse_json_line("w")
            .unwrap();
        assert_eq!((w.messages, w.log_bytes), (3, 9));
        // A child that fails: its stderr is in the error.
        let dir = tempfile::tempdir().unwrap();
        let err = run_child(Path::new("/bin/sh"), dir.path(), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("failed") && err.contains("stderr"), "{err}");
    }

    #[test]
    fn shuffle_is_seeded_and_a_permutation() {
        let mut a: Vec<u32> = (0..1000).collect();
        let mut b = a.clone();
        shuffle(&mut a, 7);
        shuffle(&mut b, 7);
        assert_eq!(a, b);
        assert_ne!(a, (0..1000).collect::<Vec<_>>());
        b.sort_unstable();
        assert_eq!(b, (0..1000).collect::<Vec<_>>());
    }
}
