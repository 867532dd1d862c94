//! `spool bench engine`, baseline half: measures, in one run and in a directory on the disk the
//! engine will use, the physical limits (raw fdatasync rate, raw sequential write bandwidth) and
//! SQLite doing the same queue work the way peer tools do (WAL, `synchronous=FULL`, same
//! batching), and returns them as a [`Report`] to which the engine figures are then added with
//! ratios and targets (design doc section 6). [`names`] holds the figure names to refer to.
//! Sync-bound scenarios run before bulk ones ([`run_latency_baselines`], then
//! [`run_bulk_baselines`]), since on a virtual disk a large write slows later fdatasyncs; the
//! engine scenarios are best interleaved the same way.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use spool::bench::{self, names, BenchConfig, Figure, Target};
//! use std::{path::Path, time::Duration};
//! let (dir, cfg) = (Path::new("/var/tmp/spool-bench"), BenchConfig::full());
//! let mut report = bench::new_report(dir, &cfg)?;
//! bench::run_latency_baselines(dir, &cfg, &mut report)?;
//! // ... engine sync-bound scenarios (1 producer, 64 producers) here ...
//! bench::run_bulk_baselines(dir, &cfg, &mut report)?;
//! // ... engine bulk scenarios here; before any further sync-bound one:
//! let raw = report.value(names::RAW_FDATASYNC).unwrap_or(0.0);
//! bench::baseline::settle(dir, raw, Duration::from_millis(200), Duration::from_secs(20))?;
//! # let v = 1.0;
//! report.add(
//!     Figure::new("engine push, batch=1000", v, "msg/s")
//!         .ratio_to(names::SQLITE_PUSH_BATCH)
//!         .target(Target::AtLeast(2_000_000.0))
//!         .target(Target::AtLeastRatio(2.5)),
//! );
//! println!("{report}"); // or report.to_json_string() for --json
//! // bench::run_baselines(dir, &cfg) does new_report + both phases in one call.
//! # Ok(()) }
//! ```

pub mod baseline;
pub mod dsmq;
pub mod engine;
pub mod mqtt;
pub mod procio;
pub mod report;
pub mod scale;
pub mod server;
pub mod sqlite;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};

pub use procio::{IoCounters, MemoryUsage, WriteMeter, WriteVolume};
pub use report::{Figure, Report, Row, Status, Target};

use baseline::SyncMode;

/// Names of the figures [`run_baselines`] produces (parameters are in each figure's note and in
/// the report context, so the names stay stable when the configuration changes).
pub mod names {
    /// Appending a small record + fdatasync, per second (median of windows): the ceiling of an
    /// append-only log whose every sync also makes the new file size durable.
    pub const RAW_FDATASYNC: &str = "raw fdatasync, append";
    /// Median latency of one append + fdatasync.
    pub const RAW_FDATASYNC_P50: &str = "raw fdatasync, append, p50 latency";
    /// 99th percentile latency of one append + fdatasync.
    pub const RAW_FDATASYNC_P99: &str = "raw fdatasync, append, p99 latency";
    /// Overwriting a preallocated, already written file + fdatasync, per second (median of
    /// windows): no metadata to sync, so usually faster than append. This is what SQLite's WAL
    /// does once it wraps, and what an engine with preallocated segments can reach.
    pub const RAW_FDATASYNC_PREALLOC: &str = "raw fdatasync, preallocated overwrite";
    /// Sequential large-block writes including periodic and final fdatasync, MiB/s.
    pub const RAW_SEQ_WRITE: &str = "raw sequential write";
    /// SQLite, small payloads, batches in one transaction each, msg/s.
    pub const SQLITE_PUSH_BATCH: &str = "sqlite push, batched";
    /// SQLite, one message per transaction, one producer, msg/s.
    pub const SQLITE_PUSH_SINGLE: &str = "sqlite push, 1/txn, 1 producer";
    /// SQLite, one message per transaction, many producer threads, msg/s.
    pub const SQLITE_PUSH_CONCURRENT: &str = "sqlite push, 1/txn, N producers";
    /// Same, the producers sharing one connection behind a mutex (no busy-handler sleeps).
    pub const SQLITE_PUSH_CONCURRENT_SHARED: &str = "sqlite push, 1/txn, N producers, shared conn";
    /// SQLite, large payloads in batches, MiB/s of payload.
    pub const SQLITE_PUSH_LARGE: &str = "sqlite push, large payloads";
    /// SQLite, lease a batch + ack it (two transactions), msg/s.
    pub const SQLITE_LEASE_ACK: &str = "sqlite lease+ack, batched";
    /// SQLite, disk bytes written per payload byte for push + lease + ack.
    pub const SQLITE_WRITE_AMP: &str = "sqlite disk bytes/payload byte";
}

/// Durations and sizes of the baseline scenarios. [`BenchConfig::full`] is the default;
/// [`BenchConfig::quick`] keeps each scenario well under a second (tests, smoke runs).
#[derive(Debug, Clone, PartialEq)]
pub struct BenchConfig {
    /// Small payload / record size in bytes (100).
    pub payload_size: usize,
    /// Duration of each raw fdatasync loop.
    pub sync_duration: Duration,
    /// Size of the preallocated file for the overwrite fdatasync loop.
    pub sync_prealloc_bytes: u64,
    /// Block size of the sequential write (64 KiB).
    pub seq_block_size: usize,
    /// Stop the sequential write after this many bytes ...
    pub seq_max_bytes: u64,
    /// ... or after this long (checked at sync points).
    pub seq_budget: Duration,
    /// fdatasync every this many bytes during the sequential write (4 MiB).
    pub seq_sync_every: u64,
    /// Messages per transaction for batched pushes (1000).
    pub batch_size: usize,
    /// Duration of the SQLite batched push.
    pub batch_duration: Duration,
    /// Duration of the SQLite 1-per-transaction, 1-producer push.
    pub single_duration: Duration,
    /// Number of concurrent producers (64).
    pub producers: usize,
    /// Duration of each SQLite concurrent push (own connections, shared connection).
    pub concurrent_duration: Duration,
    /// Large payload size (64 KiB).
    pub large_payload_size: usize,
    /// Large payloads per transaction (64: 4 MiB per durable call, the raw sequential write's
    /// sync interval, so that both are measured at the same durability granularity; at 1 MiB
    /// per fdatasync this disk's raw rate is about a quarter of its 4 MiB rate).
    pub large_batch_size: usize,
    /// Duration of the SQLite large-payload push.
    pub large_duration: Duration,
    /// Messages per lease and per ack transaction (1000).
    pub lease_batch_size: usize,
    /// Messages pushed (untimed) before the lease + ack scenario.
    pub lease_prefill: u64,
    /// Time limit of the lease + ack scenario (it also stops when the queue is empty).
    pub lease_duration: Duration,
    /// Messages pushed, leased and acked to measure bytes written per payload byte.
    pub amplification_messages: u64,
    /// Print a line to stderr before each scenario.
    pub progress: bool,
}

impl BenchConfig {
    /// The default preset: about 30 s in all on a 2-core VM.
    pub fn full() -> Self {
        BenchConfig {
            payload_size: 100,
            sync_duration: Duration::from_secs(2),
            sync_prealloc_bytes: 16 << 20,
            seq_block_size: 64 << 10,
            // Time-bound, as long as the large-payload scenarios it is compared with: a short
            // burst (it was 512 MiB, ~0.35 s) fits the virtual disk's host-side cache and
            // reports ~1.4 GB/s where 3 s of the same writes sustain a third of that.
            seq_max_bytes: 64 << 30,
            seq_budget: Duration::from_secs(3),
            seq_sync_every: 4 << 20,
            batch_size: 1000,
            batch_duration: Duration::from_secs(3),
            single_duration: Duration::from_secs(2),
            producers: 64,
            concurrent_duration: Duration::from_secs(3),
            large_payload_size: 64 << 10,
            large_batch_size: 64,
            large_duration: Duration::from_secs(3),
            lease_batch_size: 1000,
            lease_prefill: 1_000_000,
            lease_duration: Duration::from_secs(3),
            amplification_messages: 100_000,
            progress: false,
        }
    }

    /// Every scenario well under a second; same shapes (batch sizes, producers) as `full`.
    pub fn quick() -> Self {
        BenchConfig {
            sync_duration: Duration::from_millis(100),
            sync_prealloc_bytes: 1 << 20,
            seq_max_bytes: 16 << 20,
            seq_budget: Duration::from_millis(200),
            batch_duration: Duration::from_millis(150),
            single_duration: Duration::from_millis(100),
            concurrent_duration: Duration::from_millis(150),
            large_duration: Duration::from_millis(150),
            lease_prefill: 5_000,
            lease_duration: Duration::from_millis(150),
            amplification_messages: 5_000,
            ..BenchConfig::full()
        }
    }
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig::full()
    }
}

/// Operations and payload bytes done in a measured time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throughput {
    pub ops: u64,
    pub bytes: u64,
    pub elapsed: Duration,
}

impl Throughput {
    pub fn new(ops: u64, bytes: u64, elapsed: Duration) -> Self {
        Throughput {
            ops,
            bytes,
            elapsed,
        }
    }

    /// Operations (messages) per second.
    pub fn per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    /// Payload MiB per second.
    pub fn mib_per_sec(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / self.elapsed.as_secs_f64()
    }
}

/// Deterministic, incompressible-looking filler (xorshift64*), so no layer can cheat by
/// compressing zeros.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The scratch directory of one benchmark command (`tag`: engine, scale, mqtt), removed (best
/// effort) when dropped, error or not: under `--bench-dir`, else under the parent of `--dir`,
/// else the current directory. Cleared first if a run of the same process left it.
pub(crate) struct Scratch(pub(crate) PathBuf);

impl Scratch {
    pub(crate) fn for_command(
        store_dir: Option<&Path>,
        args: &crate::cli::BenchArgs,
        tag: &str,
    ) -> Result<Self> {
        let parent = match (&args.bench_dir, store_dir) {
            (Some(d), _) => d.clone(),
            (None, Some(d)) => d
                .parent()
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
            (None, None) => PathBuf::from("."),
        };
        Scratch::create(parent.join(format!(".spool-bench-{tag}-{}", std::process::id())))
    }

    /// `path`, emptied if it exists, created if not.
    pub(crate) fn create(path: PathBuf) -> Result<Self> {
        if path.exists() {
            fs::remove_dir_all(&path).with_context(|| format!("clearing {}", path.display()))?;
        }
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Scratch(path))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Prints a benchmark's report: a table, or one JSON object with `--json`.
pub(crate) fn print_report(report: &Report, json: bool) {
    if json {
        println!("{}", report.to_json_string());
    } else {
        println!("{report}");
    }
}

/// A scratch directory under the benchmark directory, removed (best effort) when dropped.
struct WorkDir(PathBuf);

impl WorkDir {
    fn create(parent: &Path) -> Result<Self> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = parent.join(format!(
            "spool-bench-baselines-{}-{nanos}",
            std::process::id()
        ));
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(WorkDir(path))
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn sync_note(cfg: &BenchConfig, r: &baseline::SyncRate, how: &str) -> String {
    let (lo, hi) = r.window_range();
    format!(
        "{} B {how} + fdatasync; median of {} windows (min {lo:.0}, max {hi:.0}), mean {:.0}, {} syncs",
        cfg.payload_size,
        r.window_rates.len(),
        r.per_sec(),
        r.syncs
    )
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Run every baseline (see [`run_latency_baselines`] and [`run_bulk_baselines`], in that order)
/// in a scratch directory under `dir` (created if needed, removed afterwards) and return their
/// figures (see [`names`]) in a report made by [`new_report`].
pub fn run_baselines(dir: &Path, cfg: &BenchConfig) -> Result<Report> {
    let mut report = new_report(dir, cfg)?;
    run_latency_baselines(dir, cfg, &mut report)?;
    run_bulk_baselines(dir, cfg, &mut report)?;
    Ok(report)
}

/// An empty report titled "spool bench engine" with the directory's mount, kernel, CPUs, SQLite
/// version and the parameters as context, and the notes explaining ratios and disk bytes.
pub fn new_report(dir: &Path, cfg: &BenchConfig) -> Result<Report> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut report = Report::new("spool bench engine");
    describe_environment(&mut report, dir, cfg);
    report.note("ratio = value / value of the figure in column 'vs'");
    report.note(
        "disk bytes come from /proc/self/io write_bytes: pages dirtied by this process (whole \
         pages; fs journal and device amplification not included); 'n/a' where the counter \
         does not move, with labelled fallbacks",
    );
    report.note(
        "sync-bound figures were measured before any bulk write: on virtual disks a large write \
         or delete can slow every fdatasync for seconds afterwards",
    );
    Ok(report)
}

/// The sync-bound baselines, which a preceding bulk write would distort (run them first):
/// raw fdatasync rate (append and preallocated overwrite, with latencies) and SQLite pushes of one
/// message per transaction, by 1 producer and by `cfg.producers` producers (own connections,
/// then one shared connection). Adds the figures to `report`.
pub fn run_latency_baselines(dir: &Path, cfg: &BenchConfig, report: &mut Report) -> Result<()> {
    let work = WorkDir::create(dir)?;
    let progress = progress_fn(cfg);
    let small = payload(cfg.payload_size, 4);

    progress("raw fdatasync, append");
    let append = baseline::fdatasync_rate(
        &work.file("fdatasync-append.dat"),
        cfg.payload_size,
        cfg.sync_duration,
        SyncMode::Append,
    )
    .context("raw fdatasync (append)")?;
    report.add(
        Figure::new(names::RAW_FDATASYNC, append.median_per_sec(), "syncs/s")
            .note(sync_note(cfg, &append, "append")),
    );
    report.add(Figure::new(
        names::RAW_FDATASYNC_P50,
        micros(append.p50),
        "µs",
    ));
    report.add(Figure::new(
        names::RAW_FDATASYNC_P99,
        micros(append.p99),
        "µs",
    ));

    progress("raw fdatasync, preallocated");
    let prealloc = baseline::fdatasync_rate(
        &work.file("fdatasync-prealloc.dat"),
        cfg.payload_size,
        cfg.sync_duration,
        SyncMode::Preallocated {
            prealloc: cfg.sync_prealloc_bytes,
        },
    )
    .context("raw fdatasync (preallocated)")?;
    report.add(
        Figure::new(
            names::RAW_FDATASYNC_PREALLOC,
            prealloc.median_per_sec(),
            "syncs/s",
        )
        .ratio_to(names::RAW_FDATASYNC)
        .note(format!(
            "{}, p99 {:.0} µs",
            sync_note(cfg, &prealloc, "overwrite of a written file"),
            micros(prealloc.p99)
        )),
    );

    progress("sqlite push, 1/txn, 1 producer");
    let db = work.file("push-single.db");
    let t = sqlite::push_single(&mut sqlite::open(&db)?, &small, cfg.single_duration)
        .context("sqlite single push")?;
    sqlite::remove(&db)?;
    report.add(
        Figure::new(names::SQLITE_PUSH_SINGLE, t.per_sec(), "msg/s")
            .ratio_to(names::RAW_FDATASYNC)
            .note(format!("{} B, {} msgs", cfg.payload_size, t.ops)),
    );

    for (mode, name, how) in [
        (
            sqlite::Producers::OwnConnections,
            names::SQLITE_PUSH_CONCURRENT,
            "own connection each (busy_timeout)",
        ),
        (
            sqlite::Producers::SharedConnection,
            names::SQLITE_PUSH_CONCURRENT_SHARED,
            "one connection behind a mutex",
        ),
    ] {
        progress(name);
        let db = work.file("push-concurrent.db");
        drop(sqlite::open(&db)?);
        let t = sqlite::push_concurrent(&db, cfg.producers, mode, &small, cfg.concurrent_duration)
            .with_context(|| name.to_owned())?;
        sqlite::remove(&db)?;
        report.add(
            Figure::new(name, t.per_sec(), "msg/s")
                .ratio_to(names::SQLITE_PUSH_SINGLE)
                .note(format!(
                    "{} producer threads, {how}, {} msgs",
                    cfg.producers, t.ops
                )),
        );
    }
    Ok(())
}

/// The bandwidth-bound baselines: raw sequential write, SQLite batched push, large-payload
/// push, batched lease + ack, and disk bytes per payload byte for push + lease + ack. Adds the
/// figures to `report`. Sync-bound measurements taken right after this are distorted on virtual
/// disks; see [`baseline::settle`]. [`run_bulk_baseline`] runs one of them, so that each can be
/// measured right next to the engine scenario compared with it.
pub fn run_bulk_baselines(dir: &Path, cfg: &BenchConfig, report: &mut Report) -> Result<()> {
    for step in BulkBaseline::ALL {
        run_bulk_baseline(dir, cfg, report, step)?;
    }
    Ok(())
}

/// One bandwidth-bound baseline scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkBaseline {
    /// [`names::RAW_SEQ_WRITE`].
    RawSequentialWrite,
    /// [`names::SQLITE_PUSH_BATCH`].
    SqlitePushBatched,
    /// [`names::SQLITE_PUSH_LARGE`].
    SqlitePushLarge,
    /// [`names::SQLITE_LEASE_ACK`].
    SqliteLeaseAck,
    /// [`names::SQLITE_WRITE_AMP`].
    SqliteWriteAmplification,
}

impl BulkBaseline {
    /// Every bulk baseline, in the order [`run_bulk_baselines`] runs them.
    pub const ALL: [BulkBaseline; 5] = [
        BulkBaseline::RawSequentialWrite,
        BulkBaseline::SqlitePushBatched,
        BulkBaseline::SqlitePushLarge,
        BulkBaseline::SqliteLeaseAck,
        BulkBaseline::SqliteWriteAmplification,
    ];
}

/// Runs one bulk baseline (see [`BulkBaseline`]) and adds its figures to `report`.
pub fn run_bulk_baseline(
    dir: &Path,
    cfg: &BenchConfig,
    report: &mut Report,
    step: BulkBaseline,
) -> Result<()> {
    let work = WorkDir::create(dir)?;
    let progress = progress_fn(cfg);
    let small = payload(cfg.payload_size, 4);
    let large = payload(cfg.large_payload_size, 5);
    match step {
        BulkBaseline::RawSequentialWrite => {
            progress("raw sequential write");
            let seq = baseline::sequential_write(
                &work.file("sequential.dat"),
                cfg.seq_block_size,
                cfg.seq_max_bytes,
                cfg.seq_budget,
                cfg.seq_sync_every,
            )
            .context("raw sequential write")?;
            report.add(
                Figure::new(names::RAW_SEQ_WRITE, seq.mib_per_sec(), "MiB/s").note(format!(
                    "{} KiB blocks, fdatasync every {} MiB and at end, {} MiB",
                    cfg.seq_block_size >> 10,
                    cfg.seq_sync_every >> 20,
                    seq.bytes >> 20
                )),
            );
        }
        BulkBaseline::SqlitePushBatched => {
            progress("sqlite push, batched");
            let db = work.file("push-batch.db");
            let t = sqlite::push_batched(
                &mut sqlite::open(&db)?,
                &small,
                cfg.batch_size,
                cfg.batch_duration,
            )
            .context("sqlite batched push")?;
            sqlite::remove(&db)?;
            report.add(
                Figure::new(names::SQLITE_PUSH_BATCH, t.per_sec(), "msg/s").note(format!(
                    "{} B, {}/txn, {} msgs",
                    cfg.payload_size, cfg.batch_size, t.ops
                )),
            );
        }
        BulkBaseline::SqlitePushLarge => {
            progress("sqlite push, large payloads");
            let db = work.file("push-large.db");
            let t = sqlite::push_batched(
                &mut sqlite::open(&db)?,
                &large,
                cfg.large_batch_size,
                cfg.large_duration,
            )
            .context("sqlite large push")?;
            sqlite::remove(&db)?;
            report.add(
                Figure::new(names::SQLITE_PUSH_LARGE, t.mib_per_sec(), "MiB/s")
                    .ratio_to(names::RAW_SEQ_WRITE)
                    .note(format!(
                        "{} KiB, {}/txn, {} MiB",
                        cfg.large_payload_size >> 10,
                        cfg.large_batch_size,
                        t.bytes >> 20
                    )),
            );
        }
        BulkBaseline::SqliteLeaseAck => {
            progress("sqlite lease+ack, batched");
            let db = work.file("lease-ack.db");
            let mut conn = sqlite::open(&db)?;
            prefill(&mut conn, &small, cfg.lease_prefill, cfg.batch_size)?;
            sqlite::checkpoint(&conn)?;
            let t = sqlite::lease_ack_batched(&mut conn, cfg.lease_batch_size, cfg.lease_duration)
                .context("sqlite lease+ack")?;
            drop(conn);
            sqlite::remove(&db)?;
            report.add(
                Figure::new(names::SQLITE_LEASE_ACK, t.per_sec(), "msg/s").note(format!(
                    "{}/txn lease + {}/txn ack, {} of {} prefilled msgs",
                    cfg.lease_batch_size, cfg.lease_batch_size, t.ops, cfg.lease_prefill
                )),
            );
        }
        BulkBaseline::SqliteWriteAmplification => {
            progress("sqlite bytes written per payload byte");
            let amp_dir = work.file("amplification");
            fs::create_dir_all(&amp_dir)?;
            let db = amp_dir.join("amp.db");
            let mut conn = sqlite::open(&db)?;
            let mut meter = WriteMeter::start(&amp_dir)?;
            prefill(
                &mut conn,
                &small,
                cfg.amplification_messages,
                cfg.batch_size,
            )?;
            meter.sample()?;
            let drained =
                sqlite::lease_ack_batched(&mut conn, cfg.lease_batch_size, Duration::MAX)?;
            sqlite::checkpoint(&conn)?;
            let volume = meter.finish()?;
            drop(conn);
            sqlite::remove(&db)?;
            add_write_amp(
                report,
                cfg,
                names::SQLITE_WRITE_AMP,
                &volume,
                drained.ops,
                "/txn + final checkpoint",
                |f| f,
            )?;
        }
    }
    Ok(())
}

/// Checks that an amplification run (push, then lease + ack of everything) drained all its
/// messages, and adds its figures under `name`: the disk bytes per payload byte (its measured
/// note kept, the workload described before it, then shaped by `shape`), or the labelled
/// fallbacks where the counter is unavailable.
fn add_write_amp(
    report: &mut Report,
    cfg: &BenchConfig,
    name: &str,
    volume: &WriteVolume,
    drained: u64,
    per: &str,
    shape: impl FnOnce(Figure) -> Figure,
) -> Result<()> {
    anyhow::ensure!(
        drained == cfg.amplification_messages,
        "{name}: the run drained {drained} of {} messages",
        cfg.amplification_messages
    );
    let payload_bytes = cfg.amplification_messages * cfg.payload_size as u64;
    let mut shape = Some(shape);
    for f in volume.figures(name, payload_bytes) {
        report.add(match (f.value.is_some(), shape.take()) {
            (true, Some(shape)) => {
                let measured = f.note.clone().unwrap_or_default();
                shape(f.note(format!(
                    "push {} + lease/ack {}{per}, {} msgs; {measured}",
                    cfg.batch_size, cfg.lease_batch_size, cfg.amplification_messages
                )))
            }
            _ => f,
        });
    }
    Ok(())
}

fn progress_fn(cfg: &BenchConfig) -> impl Fn(&str) + '_ {
    move |what: &str| {
        if cfg.progress {
            eprintln!("bench: {what}...");
        }
    }
}

/// Push `count` messages in batches of `batch` (untimed setup).
fn prefill(
    conn: &mut rusqlite::Connection,
    payload: &[u8],
    count: u64,
    batch: usize,
) -> Result<()> {
    let batch = batch.max(1) as u64;
    let mut left = count;
    while left > 0 {
        let n = left.min(batch);
        sqlite::push_batch(conn, payload, n as usize)?;
        left -= n;
    }
    Ok(())
}

fn describe_environment(report: &mut Report, dir: &Path, cfg: &BenchConfig) {
    let shown = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    report.context("dir", shown.display().to_string());
    if let Ok(Some(m)) = procio::mount_of(dir) {
        report.context(
            "file system",
            format!(
                "{} on {} ({}, {})",
                m.fs_type,
                m.device,
                m.mount_point.display(),
                m.options
            ),
        );
    }
    if let Ok(release) = fs::read_to_string("/proc/sys/kernel/osrelease") {
        report.context("kernel", release.trim().to_owned());
    }
    if let Ok(n) = std::thread::available_parallelism() {
        report.context("cpus", n.to_string());
    }
    // Other work on the machine skews every figure; record how busy it was at the start.
    if let Ok(load) = fs::read_to_string("/proc/loadavg") {
        let load: Vec<&str> = load.split_whitespace().take(3).collect();
        report.context("load average at start", load.join(" "));
    }
    report.context(
        "sqlite",
        format!(
            "{} (rusqlite, bundled), journal_mode=WAL, synchronous=FULL",
            rusqlite::version()
        ),
    );
    report.context(
        "config",
        format!(
            "payload {} B, batch {}, producers {}, large {} KiB x {}/txn, lease batch {}",
            cfg.payload_size,
            cfg.batch_size,
            cfg.producers,
            cfg.large_payload_size >> 10,
            cfg.large_batch_size,
            cfg.lease_batch_size
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_baselines_produce_all_figures() {
        let dir = tempfile::tempdir().unwrap();
        let report = run_baselines(dir.path(), &BenchConfig::quick()).unwrap();
        println!("{report}");

        for name in [
            names::RAW_FDATASYNC,
            names::RAW_FDATASYNC_P50,
            names::RAW_FDATASYNC_P99,
            names::RAW_FDATASYNC_PREALLOC,
            names::RAW_SEQ_WRITE,
            names::SQLITE_PUSH_BATCH,
            names::SQLITE_PUSH_SINGLE,
            names::SQLITE_PUSH_CONCURRENT,
            names::SQLITE_PUSH_CONCURRENT_SHARED,
            names::SQLITE_PUSH_LARGE,
            names::SQLITE_LEASE_ACK,
        ] {
            let v = report.value(name);
            assert!(v.is_some_and(|v| v.is_finite() && v > 0.0), "{name}: {v:?}");
        }
        // The amplification figure may be n/a on hosts without I/O accounting, but then a
        // fallback figure is present.
        let amp: Vec<_> = report
            .figures()
            .iter()
            .filter(|f| f.name.starts_with(names::SQLITE_WRITE_AMP))
            .collect();
        assert!(amp[0].name == names::SQLITE_WRITE_AMP);
        assert!(amp
            .iter()
            .any(|f| f.value.is_some_and(|v| v.is_finite() && v > 0.0)));

        // Scratch files are gone.
        assert!(fs::read_dir(dir.path()).unwrap().next().is_none());

        let table = report.render_table();
        for f in report.figures() {
            assert!(table.contains(&f.name), "{} not in table", f.name);
        }
        assert!(table.contains("ratio") && table.contains("vs"));

        let json: serde_json::Value = serde_json::from_str(&report.to_json_string()).unwrap();
        let figures = json["figures"].as_array().unwrap();
        assert_eq!(figures.len(), report.figures().len());
        let single = figures
            .iter()
            .find(|f| f["name"] == names::SQLITE_PUSH_SINGLE)
            .unwrap();
        assert_eq!(single["ratio_to"], names::RAW_FDATASYNC);
        assert!(single["ratio"].as_f64().is_some_and(|r| r > 0.0));
        let concurrent = figures
            .iter()
            .find(|f| f["name"] == names::SQLITE_PUSH_CONCURRENT)
            .unwrap();
        assert!(concurrent["ratio"].as_f64().is_some_and(|r| r > 0.0));
        assert!(json["context"]["sqlite"].is_string());
    }

    /// The full preset, for trying it by hand:
    /// `SPOOL_BENCH_DIR=/some/dir cargo test -p spool --release -- --ignored --nocapture full_baselines`
    #[test]
    #[ignore = "takes about half a minute; run by hand"]
    fn full_baselines() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = std::env::var_os("SPOOL_BENCH_DIR")
            .map_or_else(|| tmp.path().to_owned(), PathBuf::from);
        let cfg = BenchConfig {
            progress: true,
            ..BenchConfig::full()
        };
        let started = std::time::Instant::now();
        let report = run_baselines(&dir, &cfg).unwrap();
        println!("{report}");
        println!("{}", report.to_json_string());
        println!("total {:.1} s", started.elapsed().as_secs_f64());
    }

    #[test]
    fn engine_figures_can_be_added_with_targets() {
        let mut report = Report::new("x");
        report.add(Figure::new(names::SQLITE_PUSH_BATCH, 400_000.0, "msg/s"));
        report.add(
            Figure::new("engine push, batch=1000", 1_200_000.0, "msg/s")
                .ratio_to(names::SQLITE_PUSH_BATCH)
                .target(Target::AtLeast(2_000_000.0))
                .target(Target::AtLeastRatio(2.5)),
        );
        let row = &report.rows()[1];
        assert_eq!(row.ratio, Some(3.0));
        assert_eq!(row.status, Some(Status::Miss));
    }

    #[test]
    fn payload_is_deterministic() {
        assert_eq!(payload(100, 7), payload(100, 7));
        assert_ne!(payload(100, 7), payload(100, 8));
        assert_eq!(payload(13, 1).len(), 13);
        assert!(payload(0, 1).is_empty());
    }
}
