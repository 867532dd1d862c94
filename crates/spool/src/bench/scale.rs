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
//! 4. **A 64 MiB payload pushed and leased** (a blob file): a fresh child process
//!    (`spool bench reopen-probe DIR --blob-mib 64`) creates a store, pushes one payload with
//!    `Store::push_stream` from a reader that generates it on the fly, leases it and streams it
//!    back with `Store::open_payload` into a sink that checks every byte, and prints the times
//!    and its `VmRSS`/`VmHWM` as one JSON line. The parent then measures the raw sequential
//!    write bandwidth of the same directory ([`baseline::sequential_write`], as
//!    `spool bench engine` does) to compare with. This scenario runs first, on a disk that has
//!    not just absorbed the gigabytes of the others, but is reported last.
//!
//! Every store lives in a scratch directory removed when the command ends, error or not.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use clap::Args;
use serde::{Deserialize, Serialize};
use spool_engine::{
    Durability, MaintainReport, Maintenance, Options, Push, QueueConfig, Receipt, Store,
};

use super::{
    baseline, names, payload, procio, BenchConfig, Figure, IoCounters, MemoryUsage, Report,
    Scratch, Target,
};
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
    /// Instead of probing: create a store in DIR, push one payload of this many MiB with
    /// `push_stream`, lease it and read it back, and print the times and the RSS
    #[arg(
        long,
        value_name = "MIB",
        hide = true,
        conflicts_with = "crash_after_mib"
    )]
    pub blob_mib: Option<u64>,
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
/// At most this many `maintain` rounds in the disk-use scenario. Compaction copies one sparse
/// segment (at most 8 MiB) per round: the full size, with about 100 MiB live in 17 segments,
/// takes 16 rounds with work and a 17th that finds none.
const MAINTAIN_ROUNDS_MAX: usize = 64;
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
    pub const BLOB_PUSH: &str = "large payload: push";
    pub const BLOB_LEASE_READ: &str = "large payload: lease + read";
    pub const BLOB_ROUND_TRIP: &str = "large payload: push + lease + read";
    pub const BLOB_RSS: &str = "large payload: RSS growth";
    /// The same figure as `spool bench engine`'s.
    pub const RAW_SEQ_WRITE: &str = super::names::RAW_SEQ_WRITE;
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
    /// MiB of the payload of the large-payload scenario (at most 256, the engine's limit).
    pub blob_mib: u64,
    /// The raw sequential write it is compared with: block size ...
    pub seq_block_size: usize,
    /// ... stop after this many bytes ...
    pub seq_max_bytes: u64,
    /// ... or after this long (checked at sync points) ...
    pub seq_budget: Duration,
    /// ... with an fdatasync every this many bytes: `spool bench engine`'s settings.
    pub seq_sync_every: u64,
    /// Print a line to stderr before each step.
    pub progress: bool,
}

impl ScaleConfig {
    pub fn full() -> Self {
        let raw = BenchConfig::full();
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
            blob_mib: 64,
            seq_block_size: raw.seq_block_size,
            seq_max_bytes: raw.seq_max_bytes,
            seq_budget: raw.seq_budget,
            seq_sync_every: raw.seq_sync_every,
            progress: false,
        }
    }

    /// Same shapes, small: a 4 MiB segment size keeps several sealed segments.
    pub fn quick() -> Self {
        let raw = BenchConfig::quick();
        ScaleConfig {
            backlog_messages: 200_000,
            segment_bytes: 4 << 20,
            probes: 1,
            recovery_mib: vec![0, 2, 8],
            disk_messages: 20_000,
            blob_mib: 8,
            seq_block_size: raw.seq_block_size,
            seq_max_bytes: raw.seq_max_bytes,
            seq_budget: raw.seq_budget,
            seq_sync_every: raw.seq_sync_every,
            ..ScaleConfig::full()
        }
    }

    fn step(&self, what: &str) {
        if self.progress {
            eprintln!("bench scale: {what}...");
        }
    }
}

/// `spool bench scale`: the four scenarios in a scratch directory under `--bench-dir` (else
/// under the parent of `--dir`, else the current directory), printed as a table or JSON.
pub fn run_scale_command(store_dir: Option<&Path>, args: &BenchArgs) -> Result<()> {
    let scratch = Scratch::for_command(store_dir, args, "scale")?;
    let mut cfg = if args.quick {
        ScaleConfig::quick()
    } else {
        ScaleConfig::full()
    };
    cfg.progress = !args.json;
    let exe = std::env::current_exe().context("finding this executable to run probes")?;
    let report = run_scale(&scratch.0, &cfg, &exe)?;
    drop(scratch);
    super::print_report(&report, args.json);
    Ok(())
}

/// Runs the four scenarios in `dir` (which must exist; their stores are removed afterwards).
/// `exe` is the `spool` binary that runs the child processes (`bench reopen-probe`).
pub fn run_scale(dir: &Path, cfg: &ScaleConfig, exe: &Path) -> Result<Report> {
    let mut report = Report::new("spool bench scale");
    describe(&mut report, dir, cfg);
    // First, while the disk is quiet (the others leave gigabytes behind them to flush and
    // delete); its figures go last.
    let blob = blob_scenario(dir, cfg, exe)?;
    {
        let store = Scratch::create(dir.join("backlog"))?;
        reopen_scenario(&store.0, cfg, exe, &mut report)?;
        recovery_scenario(&store.0, cfg, exe, &mut report)?;
    }
    {
        let store = Scratch::create(dir.join("disk"))?;
        disk_scenario(&store.0, cfg, &mut report)?;
    }
    report.extend(blob);
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
             with {}% acked, {} reopen probe(s), large payload {} MiB",
            cfg.backlog_messages,
            cfg.payload_size,
            cfg.segment_bytes >> 20,
            cfg.recovery_mib,
            cfg.disk_messages,
            cfg.disk_payload_size,
            cfg.ack_percent,
            cfg.probes,
            cfg.blob_mib
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
    Ok(segment_files(store)?.1)
}

/// Number and bytes of the segment files (`log/*.seg`) of a store.
fn segment_files(store: &Path) -> Result<(u64, u64)> {
    let log = store.join("log");
    let (mut count, mut total) = (0, 0);
    for entry in std::fs::read_dir(&log).with_context(|| format!("listing {}", log.display()))? {
        let entry = entry?;
        if entry.path().extension().is_some_and(|e| e == "seg") {
            count += 1;
            total += entry.metadata()?.len();
        }
    }
    Ok((count, total))
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
    let segments_before = segment_files(store)?.0;

    cfg.step("disk use: maintenance");
    let mut rounds = 0;
    let mut done = MaintainReport::default();
    let (mut checkpoints, mut idle) = (0, false);
    for _ in 0..MAINTAIN_ROUNDS_MAX {
        rounds += 1;
        let r = s.maintain()?;
        if r == MaintainReport::default() {
            idle = true;
            break;
        }
        done.indexes_written += r.indexes_written;
        done.records_relocated += r.records_relocated;
        done.segments_deleted += r.segments_deleted;
        checkpoints += u64::from(r.checkpoint.is_some());
    }
    let disk = procio::dir_size(store)?;
    let (segments, log) = segment_files(store)?;
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
                "every file under the store directory after {rounds} maintain round(s){}: \
                 {} records relocated, {} segments deleted, {} index file(s) written, \
                 {checkpoints} checkpoint(s) in all; now {segments} segment file(s) of \
                 {:.1} MiB; before maintain {segments_before} segment file(s), {:.0} MiB of \
                 files in all",
                if idle {
                    " (the last one found no work)"
                } else {
                    " (stopped at the cap: work was left)"
                },
                done.records_relocated,
                done.segments_deleted,
                done.indexes_written,
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

// --- scenario 4: one large payload --------------------------------------------------------

/// Scenario 4 (run first, reported last: see [`run_scale`]): a child process pushes, leases
/// and reads back one `cfg.blob_mib` MiB payload, then the raw sequential write of the same
/// directory is measured. Returns a report holding the figures.
fn blob_scenario(dir: &Path, cfg: &ScaleConfig, exe: &Path) -> Result<Report> {
    let mut report = Report::new("large payload");
    cfg.step(&format!(
        "large payload: {} MiB pushed, leased and read back",
        cfg.blob_mib
    ));
    let p = {
        let store = Scratch::create(dir.join("blob"))?;
        let p: BlobProbeOutput = run_child(
            exe,
            &store.0,
            &[
                "--blob-mib".to_owned(),
                cfg.blob_mib.to_string(),
                "--segment-bytes".to_owned(),
                cfg.segment_bytes.to_string(),
            ],
        )?
        .parse_json_line("large-payload probe")?;
        p
    };
    anyhow::ensure!(
        p.bytes == cfg.blob_mib << 20,
        "the large-payload probe read back {} bytes, {} were pushed",
        p.bytes,
        cfg.blob_mib << 20
    );

    cfg.step("large payload: raw sequential write");
    let seq = baseline::sequential_write(
        &dir.join(format!(".raw-sequential-{}.dat", std::process::id())),
        cfg.seq_block_size,
        cfg.seq_max_bytes,
        cfg.seq_budget,
        cfg.seq_sync_every,
    )
    .context("raw sequential write")?;

    report.add(
        Figure::new(sn::RAW_SEQ_WRITE, seq.mib_per_sec(), "MiB/s").note(format!(
            "as in `spool bench engine`: {} KiB blocks, fdatasync every {} MiB and at end, \
             {} MiB in {:.2} s (time-bound), right after the large-payload probe",
            cfg.seq_block_size >> 10,
            cfg.seq_sync_every >> 20,
            seq.bytes >> 20,
            seq.elapsed.as_secs_f64()
        )),
    );
    let payload_mib = mib(p.bytes);
    report.add(
        Figure::new(sn::BLOB_PUSH, payload_mib / (p.push_ms / 1000.0), "MiB/s")
            .ratio_to(sn::RAW_SEQ_WRITE)
            .target(Target::AtLeastRatio(0.5))
            .note(format!(
                "one {payload_mib:.0} MiB payload, Store::push_stream from a reader generating \
                 it 1 MiB at a time, in {:.1} ms until durable (blob file written in 1 MiB \
                 chunks, one fdatasync, renamed, blob/ fsynced; then its log entry, \
                 Durability::Sync); fresh child process, fresh store",
                p.push_ms
            )),
    );
    report.add(
        Figure::new(
            sn::BLOB_LEASE_READ,
            payload_mib / (p.lease_read_ms / 1000.0),
            "MiB/s",
        )
        .note(format!(
            "lease 1 (durable lease) {:.1} ms, then Store::open_payload read to the end into a \
             sink checking every byte against the pattern, {:.1} ms; the blob was just \
             written, so it is read from the page cache",
            p.lease_ms,
            p.lease_read_ms - p.lease_ms
        )),
    );
    report.add(
        Figure::new(
            sn::BLOB_ROUND_TRIP,
            payload_mib / ((p.push_ms + p.lease_read_ms) / 1000.0),
            "MiB/s",
        )
        .ratio_to(sn::RAW_SEQ_WRITE)
        .target(Target::AtLeastRatio(0.5))
        .note(format!(
            "payload MiB / (push + lease + read time: {:.1} ms): the target \"pushed and leased \
             at >= 0.5x raw write bandwidth\" read as the whole round trip",
            p.push_ms + p.lease_read_ms
        )),
    );
    let growth = p.peak_kb.saturating_sub(p.rss_before_kb) * 1024;
    let peak_note = if p.hwm_reset {
        "peak = VmHWM after the read, reset to the current RSS right before the push (5 to \
         /proc/self/clear_refs), so the peak of the push, lease and read"
    } else {
        "peak = VmHWM of the whole process (it could not be reset before the push: \
         /proc/self/clear_refs refused), an upper bound"
    };
    report.add(
        Figure::new(sn::BLOB_RSS, growth as f64 / 1e6, "MB")
            .target(Target::AtMost(16.0))
            .note(format!(
                "peak VmRSS during push + lease + read minus VmRSS before the push, in MB of \
                 10^6 B as the target is ({:.2} MiB): {:.1} MiB before (after Store::open and \
                 create_queue), {:.1} MiB after the push, peak {:.1} MiB, {:.1} MiB after the \
                 read; {peak_note}; store files after the push: {:.1} MiB",
                mib(growth),
                kib_to_mib(p.rss_before_kb),
                kib_to_mib(p.rss_after_push_kb),
                kib_to_mib(p.peak_kb),
                kib_to_mib(p.rss_after_kb),
                mib(p.store_bytes_after_push)
            )),
    );
    Ok(report)
}

/// What the large-payload probe (`bench reopen-probe DIR --blob-mib N`) prints (one JSON line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlobProbeOutput {
    /// Payload bytes pushed, and read back (checked against the pattern).
    pub bytes: u64,
    /// Wall time of `push_stream`, ms (until durable).
    pub push_ms: f64,
    /// Wall time of the `lease` call alone, ms.
    pub lease_ms: f64,
    /// Wall time of the lease plus reading the payload to its end, ms.
    pub lease_read_ms: f64,
    /// VmRSS right before the push (after `Store::open` and `create_queue`), kB.
    pub rss_before_kb: u64,
    /// VmRSS right after the push, kB.
    pub rss_after_push_kb: u64,
    /// Bytes of every file of the store right after the push.
    pub store_bytes_after_push: u64,
    /// VmRSS after the read, kB.
    pub rss_after_kb: u64,
    /// VmHWM after the read, kB: the peak since the reset before the push when `hwm_reset`,
    /// since the process started otherwise.
    pub peak_kb: u64,
    /// Whether VmHWM was reset to the current RSS right before the push.
    pub hwm_reset: bool,
}

/// Resets VmHWM to the current RSS (Linux: writing 5 to `/proc/self/clear_refs`). Whether it
/// could.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The child side of scenario 4: in a fresh store in `dir`, push one `mib` MiB payload from a
/// [`PatternReader`], lease it, read it back into a [`PatternSink`]; measure.
pub fn blob_probe(dir: &Path, segment_bytes: u64, mib: u64) -> Result<BlobProbeOutput> {
    anyhow::ensure!(
        !dir.join("FORMAT").exists(),
        "{} already holds a store: the large-payload probe wants a fresh one",
        dir.display()
    );
    let len = mib << 20;
    let store = Store::open(
        dir,
        Options {
            segment_bytes,
            ..Options::default()
        },
    )
    .with_context(|| format!("creating a store in {}", dir.display()))?;
    store.create_queue(
        QUEUE,
        QueueConfig {
            max_payload_bytes: usize::try_from(len)
                .context("payload size")?
                .max(QueueConfig::default().max_payload_bytes),
            ..QueueConfig::default()
        },
    )?;

    let before = MemoryUsage::read().context("reading /proc/self/status")?;
    let hwm_reset = reset_peak_rss();
    let started = Instant::now();
    let id = store.push_stream(QUEUE, Push::default(), &mut PatternReader::new(len))?;
    let push_ms = started.elapsed().as_secs_f64() * 1000.0;
    let pushed = MemoryUsage::read().context("reading /proc/self/status")?;
    let store_bytes_after_push = procio::dir_size(dir)?;

    let started = Instant::now();
    let msgs = store.lease(QUEUE, 1, Some(LEASE_VISIBILITY))?;
    let lease_ms = started.elapsed().as_secs_f64() * 1000.0;
    let msg = msgs.first().context("the lease returned nothing")?;
    anyhow::ensure!(msg.id == id, "leased message {}, pushed {id}", msg.id);
    let blob = msg.blob.context("the leased message has no blob")?;
    anyhow::ensure!(
        blob.len == len,
        "the blob holds {} bytes, {len} were pushed",
        blob.len
    );
    let mut reader = store.open_payload(msg)?;
    let mut sink = PatternSink::default();
    let read = std::io::copy(&mut reader, &mut sink).context("reading the payload back")?;
    let lease_read_ms = started.elapsed().as_secs_f64() * 1000.0;
    let after = MemoryUsage::read().context("reading /proc/self/status")?;
    drop(reader);
    anyhow::ensure!(
        read == len && sink.bytes() == len,
        "read back {read} bytes, {len} were pushed"
    );
    if let Some(r) = msg.receipt {
        store.ack(QUEUE, r)?;
    }
    store.close()?;
    Ok(BlobProbeOutput {
        bytes: sink.bytes(),
        push_ms,
        lease_ms,
        lease_read_ms,
        rss_before_kb: before.rss_bytes / 1024,
        rss_after_push_kb: pushed.rss_bytes / 1024,
        store_bytes_after_push,
        rss_after_kb: after.rss_bytes / 1024,
        peak_kb: after.hwm_bytes / 1024,
        hwm_reset,
    })
}

/// The 8 bytes at `8 * index..8 * index + 8` of the generated payload (splitmix64 of the
/// index: incompressible-looking, and any byte can be checked from its position alone).
fn pattern_word(index: u64) -> [u8; 8] {
    let mut z = index.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)).to_le_bytes()
}

/// Fills `buf` with the payload bytes at positions `start..start + buf.len()`.
fn fill_pattern(start: u64, buf: &mut [u8]) {
    let mut pos = start;
    let head = usize::try_from((8 - pos % 8) % 8)
        .unwrap_or(0)
        .min(buf.len());
    let (first, rest) = buf.split_at_mut(head);
    if !first.is_empty() {
        let word = pattern_word(pos / 8);
        let skip = (pos % 8) as usize;
        first.copy_from_slice(&word[skip..skip + head]);
        pos += head as u64;
    }
    // `pos` is a multiple of 8 from here on.
    let mut chunks = rest.chunks_exact_mut(8);
    for c in &mut chunks {
        c.copy_from_slice(&pattern_word(pos / 8));
        pos += 8;
    }
    let tail = chunks.into_remainder();
    let n = tail.len();
    tail.copy_from_slice(&pattern_word(pos / 8)[..n]);
}

/// Whether `data` is the payload at positions `start..start + data.len()`.
fn matches_pattern(start: u64, data: &[u8]) -> bool {
    let mut pos = start;
    let head = usize::try_from((8 - pos % 8) % 8)
        .unwrap_or(0)
        .min(data.len());
    let (first, rest) = data.split_at(head);
    if !first.is_empty() {
        let skip = (pos % 8) as usize;
        if pattern_word(pos / 8)[skip..skip + head] != *first {
            return false;
        }
        pos += head as u64;
    }
    let mut chunks = rest.chunks_exact(8);
    for c in &mut chunks {
        if pattern_word(pos / 8) != *c {
            return false;
        }
        pos += 8;
    }
    let tail = chunks.remainder();
    pattern_word(pos / 8)[..tail.len()] == *tail
}

/// A `Read` that generates a payload of `len` bytes on the fly (nothing held but a position).
#[derive(Debug, Clone)]
pub struct PatternReader {
    pos: u64,
    len: u64,
}

impl PatternReader {
    pub fn new(len: u64) -> Self {
        PatternReader { pos: 0, len }
    }
}

impl Read for PatternReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = usize::try_from(self.len - self.pos)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        fill_pattern(self.pos, &mut buf[..n]);
        self.pos += n as u64;
        Ok(n)
    }
}

/// A `Write` that checks that what it is given is the [`PatternReader`] payload, in order, and
/// counts it; a byte that differs fails the write (`InvalidData`, with its position).
#[derive(Debug, Clone, Default)]
pub struct PatternSink {
    pos: u64,
}

impl PatternSink {
    /// Bytes checked so far.
    pub fn bytes(&self) -> u64 {
        self.pos
    }
}

impl Write for PatternSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !matches_pattern(self.pos, buf) {
            let mut expected = vec![0u8; buf.len()];
            fill_pattern(self.pos, &mut expected);
            let at = expected
                .iter()
                .zip(buf)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "payload byte {} differs from what was pushed",
                    self.pos + at as u64
                ),
            ));
        }
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
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
/// of the recovery scenario instead; with `--blob-mib`: the large-payload probe
/// ([`BlobProbeOutput`]).
pub fn run_probe(a: &ProbeArgs) -> Result<()> {
    if let Some(mib) = a.crash_after_mib {
        return crash_writer(a, mib);
    }
    if let Some(mib) = a.blob_mib {
        let out = blob_probe(&a.store, a.segment_bytes, mib)?;
        let line = serde_json::to_string(&out)?;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{line}")?;
        stdout.flush()?;
        return Ok(());
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
    fn pattern_reader_and_sink_agree() {
        // Read in odd pieces: the same bytes as in one read, whatever the split.
        let len = 10_000u64;
        let mut whole = vec![0u8; 12_000];
        let n = PatternReader::new(len).read(&mut whole).unwrap();
        assert_eq!(n as u64, len);
        whole.truncate(n);
        for piece in [1usize, 3, 7, 8, 13, 4096] {
            let mut r = PatternReader::new(len);
            let mut got = Vec::new();
            let mut buf = vec![0u8; piece];
            loop {
                let n = r.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(got, whole, "pieces of {piece}");
            // Written to the sink in odd pieces too.
            let mut sink = PatternSink::default();
            for c in got.chunks(piece + 2) {
                sink.write_all(c).unwrap();
            }
            assert_eq!(sink.bytes(), len);
        }
        // Not a constant or a short cycle.
        assert!(whole[..64].windows(2).any(|w| w[0] != w[1]));
        assert_ne!(whole[..4096], whole[4096..8192]);
        // Streams through io::copy; an empty payload is fine.
        let mut sink = PatternSink::default();
        let copied = std::io::copy(&mut PatternReader::new(3 << 20 | 5), &mut sink).unwrap();
        assert_eq!((copied, sink.bytes()), (3 << 20 | 5, 3 << 20 | 5));
        assert_eq!(PatternReader::new(0).read(&mut [0u8; 8]).unwrap(), 0);
        // A changed byte is found, with its position, also in a piece that starts mid-word.
        let mut bad = whole.clone();
        bad[5003] ^= 1;
        let mut sink = PatternSink::default();
        sink.write_all(&bad[..4999]).unwrap();
        let err = sink.write_all(&bad[4999..]).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("byte 5003"), "{err}");
        // Out of order: the bytes of another position do not match.
        let mut sink = PatternSink::default();
        assert!(sink.write_all(&whole[8..16]).is_err());
    }

    #[test]
    fn blob_probe_pushes_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("s");
        let out = blob_probe(&store, 4 << 20, 2).unwrap();
        assert_eq!(out.bytes, 2 << 20);
        assert!(out.push_ms > 0.0 && out.lease_read_ms >= out.lease_ms);
        assert!(out.rss_before_kb > 0 && out.peak_kb > 0);
        let line = serde_json::to_string(&out).unwrap();
        let child = ChildOutput {
            stdout: format!("{line}\n"),
            stderr: String::new(),
        };
        let back: BlobProbeOutput = child.parse_json_line("blob probe").unwrap();
        assert_eq!(back.bytes, out.bytes);
        // The message is acked: the store holds nothing. A second probe wants a fresh store.
        let s = Store::open(&store, Options::default()).unwrap();
        assert_eq!(s.stats(QUEUE).unwrap().messages, 0);
        s.close().unwrap();
        assert!(blob_probe(&store, 4 << 20, 1).is_err());
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
