//! Reading records back from the log: a message's bytes live in its `ENQUEUE` (or `PUBLISH`)
//! entry, and the state only knows where that is ([`RecRef`]). Reads happen after the record
//! is committed (written, and synced in `Durability::Sync`), usually outside the store lock.
//! Every record read is checked against the CRC32C the state took when it was written, so a
//! bit flip at rest is reported ([`Error::DamagedRecord`]), never delivered.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::entry::RecRef;
use crate::error::{Error, Result};
use crate::frame::segment_file_name;
use crate::vfs::{OpenMode, Vfs, VfsFile};

/// Segment files kept open for reading at most (opened again when needed).
const OPEN_FILES_MAX: usize = 64;
/// Records closer than this in one segment are read with one `pread`.
const COALESCE_GAP: u64 = 16 << 10;
/// ... up to this many bytes per read.
const COALESCE_MAX: u64 = 1 << 20;

#[derive(Debug)]
pub(crate) struct LogReader {
    vfs: Arc<dyn Vfs>,
    log_dir: PathBuf,
    files: Mutex<HashMap<u64, Arc<dyn VfsFile>>>,
    /// Segments with records handed out and not read yet (see [`SegPins`]): the checkpoint
    /// does not delete them.
    pins: Mutex<HashMap<u64, u32>>,
}

/// Segments pinned against deletion while the records a transaction handed out are read:
/// pinned under the store lock by the transaction that handed them out, unpinned when this is
/// dropped. A compaction may move a leased message's record, or a pop or ack make it dead, the
/// moment the lock is released; the checkpoint that would then delete the old segment stops
/// at a pinned one (deletion is a prefix), so a read that started with the old location
/// always finds it.
pub(crate) struct SegPins {
    shared: Arc<crate::writer::Shared>,
    segs: Vec<u64>,
}

impl SegPins {
    /// Pins the segments of `recs`. Call it under the store lock, in the transaction (or the
    /// locked read) that found them.
    pub fn new(shared: &Arc<crate::writer::Shared>, recs: impl Iterator<Item = u64>) -> Self {
        let mut segs: Vec<u64> = recs.collect();
        segs.sort_unstable();
        segs.dedup();
        if !segs.is_empty() {
            let mut pins = shared
                .reader
                .pins
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for &s in &segs {
                *pins.entry(s).or_default() += 1;
            }
        }
        Self {
            shared: shared.clone(),
            segs,
        }
    }
}

impl Drop for SegPins {
    fn drop(&mut self) {
        if self.segs.is_empty() {
            return;
        }
        let mut pins = self
            .shared
            .reader
            .pins
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for s in &self.segs {
            if let Some(n) = pins.get_mut(s) {
                *n -= 1;
                if *n == 0 {
                    pins.remove(s);
                }
            }
        }
    }
}

impl std::fmt::Debug for SegPins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegPins")
            .field("segs", &self.segs)
            .finish_non_exhaustive()
    }
}

impl LogReader {
    pub fn new(vfs: Arc<dyn Vfs>, log_dir: &Path) -> Self {
        Self {
            vfs,
            log_dir: log_dir.to_path_buf(),
            files: Mutex::new(HashMap::new()),
            pins: Mutex::new(HashMap::new()),
        }
    }

    fn file(&self, seg: u64) -> Result<Arc<dyn VfsFile>> {
        let mut files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = files.get(&seg) {
            return Ok(f.clone());
        }
        let path = self.log_dir.join(segment_file_name(seg));
        let f = self
            .vfs
            .open(&path, OpenMode::Read)
            .map_err(|e| Error::io("open segment", &path, e))?;
        if files.len() >= OPEN_FILES_MAX {
            files.clear();
        }
        files.insert(seg, f.clone());
        Ok(f)
    }

    /// Whether records of `seg` are being read (it must not be deleted now).
    pub fn pinned(&self, seg: u64) -> bool {
        self.pins
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&seg)
    }

    /// Forgets an open segment (it was deleted).
    pub fn forget(&self, seg: u64) {
        self.files
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&seg);
    }

    fn check(rec: &RecRef, bytes: &[u8]) -> Result<()> {
        if crc32c::crc32c(bytes) != rec.crc {
            return Err(Error::DamagedRecord {
                segment: rec.seg,
                offset: u64::from(rec.off),
                reason: "checksum mismatch".into(),
            });
        }
        Ok(())
    }

    /// Reads one record's bytes (checked).
    pub fn read(&self, rec: &RecRef) -> Result<Vec<u8>> {
        let f = self.file(rec.seg)?;
        let mut buf = vec![0u8; rec.len as usize];
        f.read_exact_at(&mut buf, u64::from(rec.off))
            .map_err(|e| self.read_error(rec, &e))?;
        Self::check(rec, &buf)?;
        Ok(buf)
    }

    fn read_error(&self, rec: &RecRef, e: &std::io::Error) -> Error {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::DamagedRecord {
                segment: rec.seg,
                offset: u64::from(rec.off),
                reason: "the segment ends before the record".into(),
            }
        } else {
            Error::io(
                "read",
                self.log_dir.join(segment_file_name(rec.seg)),
                std::io::Error::new(e.kind(), e.to_string()),
            )
        }
    }

    /// Reads several records (checked), in the order given. Records close to each other in
    /// the same segment share one read.
    pub fn read_many(&self, recs: &[RecRef]) -> Result<Vec<bytes::Bytes>> {
        let mut order: Vec<usize> = (0..recs.len()).collect();
        order.sort_unstable_by_key(|&i| (recs[i].seg, recs[i].off));
        let mut out: Vec<bytes::Bytes> = vec![bytes::Bytes::new(); recs.len()];
        let mut i = 0;
        while i < order.len() {
            let first = recs[order[i]];
            let start = u64::from(first.off);
            let mut end = start + u64::from(first.len);
            let mut j = i + 1;
            while j < order.len() {
                let r = recs[order[j]];
                let (off, len) = (u64::from(r.off), u64::from(r.len));
                if r.seg != first.seg
                    || off > end + COALESCE_GAP
                    || off + len - start > COALESCE_MAX
                {
                    break;
                }
                end = end.max(off + len);
                j += 1;
            }
            let f = self.file(first.seg)?;
            let mut buf = vec![0u8; (end - start) as usize];
            f.read_exact_at(&mut buf, start)
                .map_err(|e| self.read_error(&first, &e))?;
            // One buffer for the group: each record is a slice of it (no copy).
            let buf = bytes::Bytes::from(buf);
            for &k in &order[i..j] {
                let r = recs[k];
                let from = (u64::from(r.off) - start) as usize;
                let bytes = buf.slice(from..from + r.len as usize);
                Self::check(&r, &bytes)?;
                out[k] = bytes;
            }
            i = j;
        }
        Ok(out)
    }
}
