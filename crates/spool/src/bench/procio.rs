//! Process counters from Linux `/proc`: I/O accounting (`/proc/self/io`), resident memory
//! (`VmRSS`/`VmHWM` in `/proc/self/status`), the mount a path lives on (`/proc/self/mounts`),
//! and a [`WriteMeter`] that turns I/O deltas into "bytes written to disk per payload byte".
//!
//! Caveats of `write_bytes`: the kernel charges it to the task that *dirties* a page cache page
//! (in whole pages) or submits direct I/O, so rewriting a page that is still dirty is not counted
//! again; calling `fdatasync` after each commit cleans the pages so the next write is counted,
//! which is what a durable queue does anyway. File system journal writes (jbd2) and device-level
//! amplification are not counted. The counters are per process (all threads), so anything else
//! the process writes concurrently (other tests in the same test binary) is included. Some
//! kernels, file systems (tmpfs, some FUSE/overlay setups) and containers report 0; the meter
//! then reports "n/a" and falls back to clearly labelled substitutes.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::report::Figure;

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// The counters of `/proc/self/io`, in bytes (and syscall counts for `syscr`/`syscw`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct IoCounters {
    /// Bytes passed to read-like syscalls.
    pub rchar: u64,
    /// Bytes passed to write-like syscalls (page cache or not).
    pub wchar: u64,
    pub syscr: u64,
    pub syscw: u64,
    /// Bytes the process caused to be fetched from the block layer.
    pub read_bytes: u64,
    /// Bytes the process caused to be sent to the block layer (see the module caveats).
    pub write_bytes: u64,
    /// Dirty bytes that were truncated/deleted before reaching the disk.
    pub cancelled_write_bytes: u64,
}

impl IoCounters {
    /// Read `/proc/self/io`.
    pub fn read() -> io::Result<Self> {
        Self::parse(&fs::read_to_string("/proc/self/io")?)
    }

    /// Parse the text of a `/proc/<pid>/io` file; unknown keys are ignored, missing ones are 0.
    pub fn parse(text: &str) -> io::Result<Self> {
        let mut c = IoCounters::default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let (key, value) = line
                .split_once(':')
                .ok_or_else(|| invalid(format!("bad /proc io line: {line:?}")))?;
            let value: u64 = value
                .trim()
                .parse()
                .map_err(|e| invalid(format!("bad /proc io value in {line:?}: {e}")))?;
            match key.trim() {
                "rchar" => c.rchar = value,
                "wchar" => c.wchar = value,
                "syscr" => c.syscr = value,
                "syscw" => c.syscw = value,
                "read_bytes" => c.read_bytes = value,
                "write_bytes" => c.write_bytes = value,
                "cancelled_write_bytes" => c.cancelled_write_bytes = value,
                _ => {}
            }
        }
        Ok(c)
    }

    /// Counter deltas from `earlier` to `self` (saturating at 0).
    #[must_use]
    pub fn since(&self, earlier: &IoCounters) -> IoCounters {
        IoCounters {
            rchar: self.rchar.saturating_sub(earlier.rchar),
            wchar: self.wchar.saturating_sub(earlier.wchar),
            syscr: self.syscr.saturating_sub(earlier.syscr),
            syscw: self.syscw.saturating_sub(earlier.syscw),
            read_bytes: self.read_bytes.saturating_sub(earlier.read_bytes),
            write_bytes: self.write_bytes.saturating_sub(earlier.write_bytes),
            cancelled_write_bytes: self
                .cancelled_write_bytes
                .saturating_sub(earlier.cancelled_write_bytes),
        }
    }

    /// `write_bytes - cancelled_write_bytes`: what actually went to the block layer.
    pub fn disk_write_bytes(&self) -> u64 {
        self.write_bytes.saturating_sub(self.cancelled_write_bytes)
    }
}

/// Resident memory of this process from `/proc/self/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MemoryUsage {
    /// `VmRSS`: resident set size now.
    pub rss_bytes: u64,
    /// `VmHWM`: peak resident set size ("high water mark") since the process started.
    pub hwm_bytes: u64,
}

impl MemoryUsage {
    /// Read `/proc/self/status`.
    pub fn read() -> io::Result<Self> {
        Self::parse(&fs::read_to_string("/proc/self/status")?)
    }

    /// Parse the text of a `/proc/<pid>/status` file (`VmRSS:` and `VmHWM:` lines, in kB).
    pub fn parse(text: &str) -> io::Result<Self> {
        let field = |name: &str| -> io::Result<u64> {
            let line = text
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .ok_or_else(|| invalid(format!("no {name} in /proc status")))?;
            let kb = line
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .map_err(|e| invalid(format!("bad {name} value {line:?}: {e}")))?;
            Ok(kb * 1024)
        };
        Ok(MemoryUsage {
            rss_bytes: field("VmRSS:")?,
            hwm_bytes: field("VmHWM:")?,
        })
    }
}

/// The mount a path lives on, from `/proc/self/mounts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MountInfo {
    pub device: String,
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub options: String,
}

/// The mount holding `path` (the longest mount point that is a prefix of its canonical form).
pub fn mount_of(path: &Path) -> io::Result<Option<MountInfo>> {
    let path = path.canonicalize()?;
    let mounts = fs::read_to_string("/proc/self/mounts")?;
    Ok(parse_mounts(&mounts)
        .into_iter()
        .filter(|m| path.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.as_os_str().len()))
}

fn parse_mounts(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|line| {
            let mut it = line.split_whitespace();
            Some(MountInfo {
                device: unescape_mount(it.next()?),
                mount_point: PathBuf::from(unescape_mount(it.next()?)),
                fs_type: it.next()?.to_owned(),
                options: it.next().unwrap_or_default().to_owned(),
            })
        })
        .collect()
}

/// `/proc/self/mounts` escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mount(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            if let Some(code) = s
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(code);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Total apparent size (`len`) of the regular files under `path` (recursively).
pub fn dir_size(path: &Path) -> io::Result<u64> {
    let meta = fs::symlink_metadata(path)?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    if !meta.is_dir() {
        return Ok(0);
    }
    let mut total = 0;
    for entry in fs::read_dir(path)? {
        let entry = entry?;
        match dir_size(&entry.path()) {
            Ok(n) => total += n,
            // A file removed while we walk (e.g. a WAL being deleted) is simply not counted.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

/// Measures how much a workload writes, three ways: `/proc/self/io` `write_bytes` (the real
/// figure), `wchar` (bytes handed to write syscalls) and growth of the files under a directory.
/// Call [`WriteMeter::sample`] at points where the directory is at its largest (e.g. after the
/// push phase), then [`WriteMeter::finish`].
#[derive(Debug)]
pub struct WriteMeter {
    dir: PathBuf,
    start_io: Option<IoCounters>,
    start_size: u64,
    peak_size: u64,
}

impl WriteMeter {
    /// Start measuring writes of this process and growth of the files under `dir`.
    pub fn start(dir: &Path) -> io::Result<Self> {
        let start_size = dir_size(dir)?;
        Ok(WriteMeter {
            dir: dir.to_path_buf(),
            start_io: IoCounters::read().ok(),
            start_size,
            peak_size: start_size,
        })
    }

    /// Record the current size of the directory (the peak is kept).
    pub fn sample(&mut self) -> io::Result<()> {
        self.peak_size = self.peak_size.max(dir_size(&self.dir)?);
        Ok(())
    }

    /// Stop measuring (samples the directory once more).
    pub fn finish(mut self) -> io::Result<WriteVolume> {
        self.sample()?;
        let io = match (self.start_io, IoCounters::read().ok()) {
            (Some(a), Some(b)) => Some(b.since(&a)),
            _ => None,
        };
        Ok(WriteVolume {
            disk_bytes: io.map(|d| d.disk_write_bytes()).filter(|&n| n > 0),
            syscall_bytes: io.map(|d| d.wchar).filter(|&n| n > 0),
            file_growth_bytes: self.peak_size.saturating_sub(self.start_size),
        })
    }
}

/// What a [`WriteMeter`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WriteVolume {
    /// `write_bytes - cancelled_write_bytes`; `None` when `/proc/self/io` is unreadable or the
    /// counter did not move (accounting not available here).
    pub disk_bytes: Option<u64>,
    /// `wchar`: bytes passed to write syscalls; `None` when unavailable.
    pub syscall_bytes: Option<u64>,
    /// Peak growth of the apparent size of the files in the directory.
    pub file_growth_bytes: u64,
}

impl WriteVolume {
    /// Figures for a report: first `name` (disk bytes per payload byte, or "n/a"), then, only when
    /// the disk figure is not available, the labelled fallbacks from `wchar` and file growth.
    pub fn figures(&self, name: &str, payload_bytes: u64) -> Vec<Figure> {
        let per = |bytes: u64| bytes as f64 / payload_bytes.max(1) as f64;
        if let Some(b) = self.disk_bytes {
            vec![Figure::new(name, per(b), "B/B").note(format!(
                "/proc/self/io write_bytes: {b} B for {payload_bytes} payload B"
            ))]
        } else {
            let mut figs = vec![Figure::unavailable(
                name,
                "B/B",
                "/proc/self/io write_bytes unavailable or 0 here; see fallbacks",
            )];
            if let Some(w) = self.syscall_bytes {
                figs.push(
                    Figure::new(format!("{name} [fallback: write() bytes]"), per(w), "B/B")
                        .note("wchar: bytes passed to write syscalls, not disk writes"),
                );
            }
            figs.push(
                Figure::new(
                    format!("{name} [fallback: file size growth]"),
                    per(self.file_growth_bytes),
                    "B/B",
                )
                .note("peak growth of file sizes; misses rewrites and reused space"),
            );
            figs
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_io() {
        let text = "rchar: 6976\nwchar: 10\nsyscr: 10\nsyscw: 1\nread_bytes: 4096\n\
                    write_bytes: 8192\ncancelled_write_bytes: 4096\n";
        let c = IoCounters::parse(text).unwrap();
        assert_eq!(c.rchar, 6976);
        assert_eq!(c.write_bytes, 8192);
        assert_eq!(c.disk_write_bytes(), 4096);
        let later = IoCounters {
            write_bytes: 10_000,
            ..c
        };
        assert_eq!(later.since(&c).write_bytes, 10_000 - 8192);
        assert_eq!(c.since(&later).write_bytes, 0);
        assert!(IoCounters::parse("rchar 5").is_err());
    }

    #[test]
    fn parse_status() {
        let text = "Name:\tx\nVmHWM:\t    2152 kB\nVmRSS:\t    2000 kB\nThreads: 1\n";
        let m = MemoryUsage::parse(text).unwrap();
        assert_eq!(m.rss_bytes, 2000 * 1024);
        assert_eq!(m.hwm_bytes, 2152 * 1024);
        assert!(MemoryUsage::parse("Name: x\n").is_err());
    }

    #[test]
    fn live_counters() {
        let m = MemoryUsage::read().unwrap();
        assert!(m.rss_bytes > 0 && m.hwm_bytes >= m.rss_bytes / 2);
        IoCounters::read().unwrap();
        let mount = mount_of(Path::new("/")).unwrap().unwrap();
        assert_eq!(mount.mount_point, Path::new("/"));
    }

    #[test]
    fn mounts() {
        let text = "/dev/vda / ext4 rw 0 0\ntmpfs /my\\040dir tmpfs rw 0 0\n";
        let m = parse_mounts(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].mount_point, Path::new("/my dir"));
        assert_eq!(m[1].fs_type, "tmpfs");
    }

    #[test]
    fn write_volume_fallback() {
        let v = WriteVolume {
            disk_bytes: None,
            syscall_bytes: Some(300),
            file_growth_bytes: 200,
        };
        let f = v.figures("x", 100);
        assert_eq!(f.len(), 3);
        assert_eq!(f[0].value, None);
        assert_eq!(f[1].value, Some(3.0));
        assert_eq!(f[2].value, Some(2.0));
        let v = WriteVolume {
            disk_bytes: Some(400),
            ..v
        };
        assert_eq!(v.figures("x", 100)[0].value, Some(4.0));
        assert_eq!(v.figures("x", 100).len(), 1);
    }
}
