//! `spool bench engine`, engine half: the same scenarios as the SQLite baseline, run against
//! `spool_engine::Store` on the same disk in the same run, with each figure's ratio to its
//! baseline and the target from the issue. Sync-bound scenarios run right after the sync-bound
//! baselines and before anything bulky (see `bench/mod.rs` for why).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use spool_engine::{Options, Push, Store};

use super::{names, payload, BenchConfig, Figure, Report, Target, Throughput, WriteMeter};
use crate::cli::BenchArgs;

/// Names of the engine figures.
pub mod engine_names {
    pub const PUSH_SINGLE: &str = "engine push, 1/call, 1 producer";
    pub const PUSH_CONCURRENT: &str = "engine push, 1/call, N producers";
    pub const PUSH_CONCURRENT_ASYNC: &str = "engine push, 1/call, N async producers";
    pub const PUSH_BATCH: &str = "engine push, batched";
    pub const PUSH_LARGE: &str = "engine push, large payloads";
    pub const LEASE_ACK: &str = "engine lease+ack, batched";
    pub const WRITE_AMP: &str = "engine disk bytes/payload byte";
}
use engine_names as en;

const QUEUE: &str = "bench";

fn open(dir: &Path) -> Result<Store> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    Store::open(dir, Options::default())
        .with_context(|| format!("opening a store in {}", dir.display()))
}

fn batch(payload: &[u8], n: usize) -> Vec<Push> {
    (0..n).map(|_| Push::new(payload.to_vec())).collect()
}

/// One producer, one message per call, for `duration`.
pub fn push_single(dir: &Path, payload: &[u8], duration: Duration) -> Result<Throughput> {
    let store = open(dir)?;
    let payload = bytes::Bytes::copy_from_slice(payload);
    let start = Instant::now();
    let mut ops = 0u64;
    while start.elapsed() < duration {
        store.push(QUEUE, Push::new(payload.clone()))?;
        ops += 1;
    }
    let elapsed = start.elapsed();
    store.close()?;
    Ok(Throughput::new(ops, ops * payload.len() as u64, elapsed))
}

/// `producers` threads, one message per call each, for `duration`: group commit at work.
pub fn push_concurrent(
    dir: &Path,
    producers: usize,
    payload: &[u8],
    duration: Duration,
) -> Result<Throughput> {
    let store = open(dir)?;
    let payload = bytes::Bytes::copy_from_slice(payload);
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..producers)
        .map(|_| {
            let (store, stop, count, payload) =
                (store.clone(), stop.clone(), count.clone(), payload.clone());
            std::thread::spawn(move || -> Result<()> {
                while !stop.load(Ordering::Relaxed) {
                    store.push(QUEUE, Push::new(payload.clone()))?;
                    count.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("producer thread panicked"))??;
    }
    let elapsed = start.elapsed();
    let ops = count.load(Ordering::Relaxed);
    store.close()?;
    Ok(Throughput::new(ops, ops * payload.len() as u64, elapsed))
}

/// `producers` concurrent single-message pushes through the async API (`push_async`), driven
/// by as many OS threads as there are CPUs, each polling its share of the futures: the way an
/// async server drives the engine, without one OS thread per producer.
pub fn push_concurrent_async(
    dir: &Path,
    producers: usize,
    payload: &[u8],
    duration: Duration,
) -> Result<Throughput> {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll, Wake, Waker};

    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    type Pending = Pin<Box<spool_engine::Committed<Vec<u64>>>>;

    let store = open(dir)?;
    let payload = bytes::Bytes::copy_from_slice(payload);
    let threads = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let share = producers / threads + usize::from(t < producers % threads);
            let (store, stop, count, payload) =
                (store.clone(), stop.clone(), count.clone(), payload.clone());
            std::thread::spawn(move || -> Result<()> {
                let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
                let mut cx = Context::from_waker(&waker);
                let push =
                    || -> Pending { Box::pin(store.push_async(QUEUE, Push::new(payload.clone()))) };
                let mut pending: Vec<Pending> = (0..share).map(|_| push()).collect();
                while !stop.load(Ordering::Relaxed) {
                    let mut progressed = false;
                    for f in &mut pending {
                        if let Poll::Ready(r) = f.as_mut().poll(&mut cx) {
                            r?;
                            count.fetch_add(1, Ordering::Relaxed);
                            *f = push();
                            progressed = true;
                        }
                    }
                    if !progressed {
                        std::thread::park_timeout(Duration::from_millis(5));
                    }
                }
                Ok(())
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("producer thread panicked"))??;
    }
    let elapsed = start.elapsed();
    let ops = count.load(Ordering::Relaxed);
    store.close()?;
    Ok(Throughput::new(ops, ops * payload.len() as u64, elapsed))
}

/// Batches of `n` per call, one producer, for `duration`.
pub fn push_batched(
    dir: &Path,
    payload: &[u8],
    n: usize,
    duration: Duration,
) -> Result<Throughput> {
    let store = open(dir)?;
    let payload = bytes::Bytes::copy_from_slice(payload);
    let start = Instant::now();
    let mut ops = 0u64;
    while start.elapsed() < duration {
        let msgs = (0..n).map(|_| Push::new(payload.clone())).collect();
        store.push_batch(QUEUE, msgs)?;
        ops += n as u64;
    }
    let elapsed = start.elapsed();
    store.close()?;
    Ok(Throughput::new(ops, ops * payload.len() as u64, elapsed))
}

fn prefill(store: &Store, payload: &[u8], count: u64, batch_size: usize) -> Result<()> {
    let mut left = count;
    while left > 0 {
        let n = left.min(batch_size as u64) as usize;
        store.push_batch(QUEUE, batch(payload, n))?;
        left -= n as u64;
    }
    Ok(())
}

/// Lease `n` and ack them in one call each, until the queue is empty or `duration` passed.
fn lease_ack_loop(store: &Store, n: usize, duration: Duration) -> Result<Throughput> {
    let start = Instant::now();
    let mut ops = 0u64;
    let mut bytes = 0u64;
    while start.elapsed() < duration {
        let msgs = store.lease(QUEUE, n, None)?;
        if msgs.is_empty() {
            break;
        }
        let receipts: Vec<_> = msgs.iter().filter_map(|m| m.receipt).collect();
        for r in store.ack_batch(QUEUE, &receipts)? {
            r?;
        }
        ops += msgs.len() as u64;
        bytes += msgs.iter().map(|m| m.payload.len() as u64).sum::<u64>();
    }
    Ok(Throughput::new(ops, bytes, start.elapsed()))
}

/// The sync-bound engine scenarios (run right after `run_latency_baselines`).
pub fn run_latency(dir: &Path, cfg: &BenchConfig, report: &mut Report) -> Result<()> {
    let small = payload(cfg.payload_size, 4);
    progress(cfg, en::PUSH_SINGLE);
    let t = push_single(&dir.join("engine-single"), &small, cfg.single_duration)?;
    report.add(
        Figure::new(en::PUSH_SINGLE, t.per_sec(), "msg/s")
            .ratio_to(names::RAW_FDATASYNC)
            .target(Target::AtLeastRatio(0.8))
            .note(format!(
                "{} B, {} msgs, durable (fdatasync) before each call returns",
                cfg.payload_size, t.ops
            )),
    );
    progress(cfg, en::PUSH_CONCURRENT);
    let t = push_concurrent(
        &dir.join("engine-concurrent"),
        cfg.producers,
        &small,
        cfg.concurrent_duration,
    )?;
    report.add(
        Figure::new(en::PUSH_CONCURRENT, t.per_sec(), "msg/s")
            .ratio_to(en::PUSH_SINGLE)
            .target(Target::AtLeastRatio(40.0))
            .note(format!(
                "{} producer threads, 1 msg per call, {} msgs",
                cfg.producers, t.ops
            )),
    );
    progress(cfg, en::PUSH_CONCURRENT_ASYNC);
    let t = push_concurrent_async(
        &dir.join("engine-concurrent-async"),
        cfg.producers,
        &small,
        cfg.concurrent_duration,
    )?;
    report.add(
        Figure::new(en::PUSH_CONCURRENT_ASYNC, t.per_sec(), "msg/s")
            .ratio_to(en::PUSH_SINGLE)
            .target(Target::AtLeastRatio(40.0))
            .note(format!(
                "{} concurrent push_async calls, 1 msg each, polled by one thread per CPU, {} msgs",
                cfg.producers, t.ops
            )),
    );
    Ok(())
}

/// Before each bulk scenario (baseline or engine alike): wait, for at most 20 s, until the disk
/// syncs at its normal rate again, so that a figure is not the price of the scenario before it
/// (virtual disks flush for seconds after a large write or delete).
fn settle(dir: &Path, cfg: &BenchConfig, report: &Report) -> Result<()> {
    let Some(reference) = report.value(names::RAW_FDATASYNC) else {
        return Ok(());
    };
    let probe = (cfg.sync_duration / 8).max(Duration::from_millis(50));
    super::baseline::settle(dir, reference, probe, Duration::from_secs(20))
        .context("waiting for the disk to settle")?;
    Ok(())
}

/// The large-payload scenario, run right before the raw sequential write it is compared with
/// (both on a disk that has not just absorbed gigabytes of other scenarios' writes).
pub fn run_large(dir: &Path, cfg: &BenchConfig, report: &mut Report) -> Result<()> {
    let large = payload(cfg.large_payload_size, 5);
    progress(cfg, en::PUSH_LARGE);
    let t = push_batched(
        &dir.join("engine-large"),
        &large,
        cfg.large_batch_size,
        cfg.large_duration,
    )?;
    report.add(
        Figure::new(en::PUSH_LARGE, t.mib_per_sec(), "MiB/s")
            .ratio_to(names::RAW_SEQ_WRITE)
            .target(Target::AtLeastRatio(0.7))
            .note(format!(
                "{} KiB, {}/call, {} MiB",
                cfg.large_payload_size >> 10,
                cfg.large_batch_size,
                t.bytes >> 20
            )),
    );

    Ok(())
}

/// Batched push of small messages (compared with [`names::SQLITE_PUSH_BATCH`]).
pub fn run_batch(dir: &Path, cfg: &BenchConfig, report: &mut Report) -> Result<()> {
    let small = payload(cfg.payload_size, 4);
    progress(cfg, en::PUSH_BATCH);
    let t = push_batched(
        &dir.join("engine-batch"),
        &small,
        cfg.batch_size,
        cfg.batch_duration,
    )?;
    report.add(
        Figure::new(en::PUSH_BATCH, t.per_sec(), "msg/s")
            .ratio_to(names::SQLITE_PUSH_BATCH)
            .target(Target::AtLeast(2_000_000.0))
            .target(Target::AtLeastRatio(2.5))
            .note(format!(
                "{} B, {}/call, {} msgs",
                cfg.payload_size, cfg.batch_size, t.ops
            )),
    );

    Ok(())
}

/// Batched lease + ack (compared with [`names::SQLITE_LEASE_ACK`]).
pub fn run_lease_ack(dir: &Path, cfg: &BenchConfig, report: &mut Report) -> Result<()> {
    let small = payload(cfg.payload_size, 4);
    progress(cfg, en::LEASE_ACK);
    let store = open(&dir.join("engine-lease"))?;
    prefill(&store, &small, cfg.lease_prefill, cfg.batch_size)?;
    let t = lease_ack_loop(&store, cfg.lease_batch_size, cfg.lease_duration)?;
    store.close()?;
    report.add(
        Figure::new(en::LEASE_ACK, t.per_sec(), "msg/s")
            .ratio_to(names::SQLITE_LEASE_ACK)
            .target(Target::AtLeast(1_000_000.0))
            .note(format!(
                "lease {n}/call + ack {n}/call, each durable, {} of {} prefilled msgs",
                t.ops,
                cfg.lease_prefill,
                n = cfg.lease_batch_size
            )),
    );

    Ok(())
}

/// Disk bytes per payload byte for push + lease + ack (compared with
/// [`names::SQLITE_WRITE_AMP`]).
pub fn run_write_amp(dir: &Path, cfg: &BenchConfig, report: &mut Report) -> Result<()> {
    let small = payload(cfg.payload_size, 4);
    progress(cfg, en::WRITE_AMP);
    let amp_dir = dir.join("engine-amp");
    let store = open(&amp_dir)?;
    let mut meter = WriteMeter::start(&amp_dir)?;
    prefill(&store, &small, cfg.amplification_messages, cfg.batch_size)?;
    meter.sample()?;
    let drained = lease_ack_loop(&store, cfg.lease_batch_size, Duration::MAX)?;
    store.close()?;
    let volume = meter.finish()?;
    super::add_write_amp(
        report,
        cfg,
        en::WRITE_AMP,
        &volume,
        drained.ops,
        "/call, then close (checkpoint and index files included)",
        |f| {
            f.ratio_to(names::SQLITE_WRITE_AMP)
                .target(Target::AtMostRatio(1.0))
        },
    )
}

fn progress(cfg: &BenchConfig, what: &str) {
    super::progress_fn(cfg)(what);
}

/// `spool bench engine`: baselines and engine in one run, printed as a table or JSON.
pub fn run_engine_command(store_dir: Option<&Path>, args: &BenchArgs) -> Result<()> {
    let scratch = super::Scratch::for_command(store_dir, args, "engine")?;
    let mut cfg = if args.quick {
        BenchConfig::quick()
    } else {
        BenchConfig::full()
    };
    cfg.progress = !args.json;
    let report = run_all(&scratch.0, &cfg)?;
    drop(scratch);
    super::print_report(&report, args.json);
    Ok(())
}

/// An engine bulk scenario.
type EngineScenario = fn(&Path, &BenchConfig, &mut Report) -> Result<()>;

/// Baselines and engine in one run. The sync-bound scenarios come first (a bulk write slows
/// every fdatasync after it on virtual disks); then each bulk engine scenario runs right next
/// to the baseline it is compared with, with the disk settled before each one.
pub fn run_all(dir: &Path, cfg: &BenchConfig) -> Result<Report> {
    use super::BulkBaseline as B;
    let mut report = super::new_report(dir, cfg)?;
    report.context(
        "engine durability",
        "Sync (fdatasync before every call returns)",
    );
    report.note(
        "bulk scenarios: each engine scenario runs right after its baseline, and before each \
         one (baseline or engine) the benchmark waits, up to 20 s, until fdatasync runs at 80% \
         of its initial rate again",
    );
    super::run_latency_baselines(dir, cfg, &mut report)?;
    run_latency(dir, cfg, &mut report)?;
    let steps: [(B, Option<EngineScenario>); 5] = [
        (B::RawSequentialWrite, Some(run_large)),
        (B::SqlitePushLarge, None),
        (B::SqlitePushBatched, Some(run_batch)),
        (B::SqliteLeaseAck, Some(run_lease_ack)),
        (B::SqliteWriteAmplification, Some(run_write_amp)),
    ];
    for (baseline, engine) in steps {
        settle(dir, cfg, &report)?;
        super::run_bulk_baseline(dir, cfg, &mut report, baseline)?;
        if let Some(e) = engine {
            settle(dir, cfg, &report)?;
            e(dir, cfg, &mut report)?;
        }
    }
    Ok(report)
}
