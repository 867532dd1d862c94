//! Raw-disk baselines, the physical limits the engine is measured against: how many
//! `fdatasync`s per second a file on this disk sustains when each one makes a small appended
//! record durable (the ceiling for a 1-producer durable push), and the sequential write
//! bandwidth of large blocks including their syncs (the ceiling for large payloads).
//! Only std I/O is used: `File::sync_data` is `fdatasync(2)` on Linux.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Number of equal windows an fdatasync loop is split into, to report a median rate that a
/// transient stall of a shared (virtual) disk does not drag down.
pub const SYNC_WINDOWS: u32 = 8;

/// Result of an fdatasync loop.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncRate {
    pub syncs: u64,
    pub elapsed: Duration,
    /// Rate (syncs/s) of each of the [`SYNC_WINDOWS`] windows, in time order.
    pub window_rates: Vec<f64>,
    /// Median latency of one write + fdatasync.
    pub p50: Duration,
    /// 99th percentile latency of one write + fdatasync.
    pub p99: Duration,
}

impl SyncRate {
    /// Mean rate over the whole loop.
    pub fn per_sec(&self) -> f64 {
        self.syncs as f64 / self.elapsed.as_secs_f64()
    }

    /// Median of the window rates (the mean rate when there are no windows).
    pub fn median_per_sec(&self) -> f64 {
        let mut rates = self.window_rates.clone();
        if rates.is_empty() {
            return self.per_sec();
        }
        rates.sort_by(f64::total_cmp);
        let mid = rates.len() / 2;
        if rates.len().is_multiple_of(2) {
            f64::midpoint(rates[mid - 1], rates[mid])
        } else {
            rates[mid]
        }
    }

    /// Lowest and highest window rate.
    pub fn window_range(&self) -> (f64, f64) {
        self.window_rates
            .iter()
            .fold((f64::INFINITY, 0.0_f64), |(lo, hi), &r| {
                (lo.min(r), hi.max(r))
            })
    }
}

/// How the records of [`fdatasync_rate`] are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Append to a new file: every sync also makes the new file size (metadata) durable, as a
    /// plain append-only log does.
    Append,
    /// Overwrite, in order, a file that was written and synced beforehand (`prealloc` bytes,
    /// wrapping around): no size change, so fdatasync only flushes data. The ceiling for a log
    /// with preallocated segments.
    Preallocated {
        /// Size of the preallocated file.
        prealloc: u64,
    },
}

/// Write `record` bytes then `fdatasync`, repeatedly, for `duration` (at least once), to a new
/// file at `path` (removed afterwards). The rate is also recorded per window of
/// `duration / SYNC_WINDOWS`.
pub fn fdatasync_rate(
    path: &Path,
    record: usize,
    duration: Duration,
    mode: SyncMode,
) -> io::Result<SyncRate> {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)?;
    let result = sync_loop(&mut file, record, duration, mode);
    drop(file);
    fs::remove_file(path)?;
    result
}

fn sync_loop(
    file: &mut File,
    record: usize,
    duration: Duration,
    mode: SyncMode,
) -> io::Result<SyncRate> {
    let buf = super::payload(record, 1);
    let wrap = match mode {
        SyncMode::Append => None,
        SyncMode::Preallocated { prealloc } => {
            let block = super::payload(1 << 20, 2);
            let mut written = 0u64;
            while written < prealloc {
                let n = (prealloc - written).min(block.len() as u64) as usize;
                file.write_all(&block[..n])?;
                written += n as u64;
            }
            file.sync_all()?;
            // Whole records only, and at least one.
            Some((prealloc / record as u64).max(1) * record as u64)
        }
    };
    // Directory entry and first block durable before timing, as a real log would have them.
    file.sync_all()?;

    let mut latencies = Vec::with_capacity(1 << 16);
    let mut offset = 0u64;
    let window = duration / SYNC_WINDOWS;
    let mut window_rates = Vec::with_capacity(SYNC_WINDOWS as usize);
    let (mut window_start, mut window_syncs) = (Instant::now(), 0u64);
    let start = window_start;
    loop {
        let t = Instant::now();
        match wrap {
            None => file.write_all(&buf)?,
            Some(limit) => {
                if offset + record as u64 > limit {
                    offset = 0;
                }
                file.write_all_at(&buf, offset)?;
                offset += record as u64;
            }
        }
        file.sync_data()?;
        latencies.push(t.elapsed());
        window_syncs += 1;
        let in_window = window_start.elapsed();
        if in_window >= window && !window.is_zero() {
            window_rates.push(window_syncs as f64 / in_window.as_secs_f64());
            (window_start, window_syncs) = (Instant::now(), 0);
        }
        if start.elapsed() >= duration {
            break;
        }
    }
    // A last window cut short by the end of the loop counts if it is at least half a window.
    let in_window = window_start.elapsed();
    if window_syncs > 0 && in_window >= window / 2 && !window.is_zero() {
        window_rates.push(window_syncs as f64 / in_window.as_secs_f64());
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    Ok(SyncRate {
        syncs: latencies.len() as u64,
        elapsed,
        window_rates,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
    })
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Wait for the disk under `dir` to sync at its normal rate again: probe appending + fdatasync
/// in windows of `probe` until one runs at >= 80% of `reference` syncs/s (typically the
/// [`names::RAW_FDATASYNC`](super::names::RAW_FDATASYNC) figure measured earlier), for at most
/// `timeout`. Virtual disks flush their host-side cache for seconds after a large write or
/// delete, which slows every fdatasync meanwhile; call this before a sync-bound scenario that
/// follows bulk work. Returns the time waited, or `None` if the disk did not settle in time.
pub fn settle(
    dir: &Path,
    reference: f64,
    probe: Duration,
    timeout: Duration,
) -> io::Result<Option<Duration>> {
    let path = dir.join(format!(".spool-bench-settle-{}.dat", std::process::id()));
    let start = Instant::now();
    loop {
        let rate = fdatasync_rate(&path, 100, probe, SyncMode::Append)?.per_sec();
        if rate >= 0.8 * reference {
            return Ok(Some(start.elapsed()));
        }
        if start.elapsed() >= timeout {
            return Ok(None);
        }
    }
}

/// Result of a sequential write.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeqWrite {
    pub bytes: u64,
    /// Including the final fdatasync.
    pub elapsed: Duration,
}

impl SeqWrite {
    pub fn mib_per_sec(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / self.elapsed.as_secs_f64()
    }
}

/// Write `block`-sized blocks sequentially to a new file at `path` (removed afterwards) until
/// `max_bytes` are written or `budget` has elapsed (checked at each sync point, at least one sync
/// interval is written), with an `fdatasync` every `sync_every` bytes and at the end.
pub fn sequential_write(
    path: &Path,
    block: usize,
    max_bytes: u64,
    budget: Duration,
    sync_every: u64,
) -> io::Result<SeqWrite> {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)?;
    let result = seq_loop(&mut file, block, max_bytes, budget, sync_every);
    drop(file);
    fs::remove_file(path)?;
    result
}

fn seq_loop(
    file: &mut File,
    block: usize,
    max_bytes: u64,
    budget: Duration,
    sync_every: u64,
) -> io::Result<SeqWrite> {
    let buf = super::payload(block.max(1), 3);
    file.sync_all()?;
    let sync_every = sync_every.max(buf.len() as u64);
    let mut bytes = 0u64;
    let mut since_sync = 0u64;
    let start = Instant::now();
    while bytes < max_bytes {
        file.write_all(&buf)?;
        bytes += buf.len() as u64;
        since_sync += buf.len() as u64;
        if since_sync >= sync_every {
            file.sync_data()?;
            since_sync = 0;
            if start.elapsed() >= budget {
                break;
            }
        }
    }
    file.sync_data()?;
    Ok(SeqWrite {
        bytes,
        elapsed: start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_modes_and_seq_write() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let short = Duration::from_millis(30);
        for mode in [SyncMode::Append, SyncMode::Preallocated { prealloc: 250 }] {
            let r = fdatasync_rate(&p, 100, short, mode).unwrap();
            assert!(r.syncs >= 1 && r.per_sec() > 0.0 && r.p99 >= r.p50);
            assert!(r.median_per_sec() > 0.0);
            assert!(!p.exists());
        }
        // Bounded by bytes, not time (a busy machine must not change what is checked).
        let w =
            sequential_write(&p, 64 << 10, 1 << 20, Duration::from_secs(600), 256 << 10).unwrap();
        assert_eq!(w.bytes, 1 << 20);
        assert!(w.mib_per_sec() > 0.0);
        assert!(!p.exists());
    }

    #[test]
    fn median_of_windows() {
        let mut r = SyncRate {
            syncs: 10,
            elapsed: Duration::from_secs(1),
            window_rates: vec![],
            p50: Duration::ZERO,
            p99: Duration::ZERO,
        };
        assert!((r.median_per_sec() - 10.0).abs() < 1e-9);
        r.window_rates = vec![5.0, 1.0, 3.0];
        assert!((r.median_per_sec() - 3.0).abs() < 1e-9);
        r.window_rates.push(9.0);
        assert!((r.median_per_sec() - 4.0).abs() < 1e-9);
        assert_eq!(r.window_range(), (1.0, 9.0));
    }

    #[test]
    fn settle_returns() {
        let dir = tempfile::tempdir().unwrap();
        let ms = Duration::from_millis(5);
        assert!(settle(dir.path(), 0.0, ms, ms).unwrap().is_some());
        assert!(settle(dir.path(), f64::INFINITY, ms, ms).unwrap().is_none());
        assert!(fs::read_dir(dir.path()).unwrap().next().is_none());
    }

    #[test]
    fn percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 0.5), Duration::from_millis(51));
        assert_eq!(percentile(&v, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }
}
