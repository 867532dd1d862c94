//! The active end of the log: appending sealed frames to the current segment and rolling to a
//! new segment when it is full. Owned by the writer thread alone.
//!
//! Rolling is ordered for crash safety: the old segment is `fdatasync`ed (in every durability
//! mode: a sealed segment is always complete on disk), the new file is created with its header,
//! synced, and the `log/` directory is fsynced, before any frame in it can be acknowledged.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::frame::{segment_file_name, FrameBuf, SegmentHeader, SEGMENT_HEADER_LEN};
use crate::vfs::{OpenMode, Vfs, VfsFile};

/// The segment frames are appended to.
#[derive(Debug)]
pub(crate) struct ActiveSegment {
    pub vfs: Arc<dyn Vfs>,
    pub log_dir: PathBuf,
    pub store_id: u64,
    pub seg_id: u64,
    pub file: Arc<dyn VfsFile>,
    pub path: PathBuf,
    /// Where the next frame goes (the end of the last valid frame).
    pub offset: u64,
    /// LSN of the next frame.
    pub next_lsn: u64,
    /// Size at which to roll.
    pub segment_bytes: u64,
    /// Bytes written since the last `fdatasync`.
    pub unsynced: bool,
    /// Every frame up to this LSN is durable (stamped into each new frame as `synced_lsn`).
    pub synced_lsn: u64,
    /// Whether a frame was appended since the store was opened.
    pub appended: bool,
}

impl ActiveSegment {
    /// Creates segment `seg_id` whose first frame will have LSN `base_lsn`, durably (file
    /// synced, directory synced).
    pub fn create(
        vfs: Arc<dyn Vfs>,
        log_dir: &Path,
        store_id: u64,
        seg_id: u64,
        base_lsn: u64,
        now_ms: u64,
        segment_bytes: u64,
    ) -> Result<Self> {
        let path = log_dir.join(segment_file_name(seg_id));
        let file = vfs
            .open(&path, OpenMode::CreateNew)
            .map_err(|e| Error::io("create segment", &path, e))?;
        let header = SegmentHeader {
            store_id,
            seg_id,
            base_lsn,
            created_ms: now_ms,
        };
        file.write_all_at(&header.encode(), 0)
            .map_err(|e| Error::io("write segment header", &path, e))?;
        file.sync_data()
            .map_err(|e| Error::io("sync segment", &path, e))?;
        vfs.sync_dir(log_dir)
            .map_err(|e| Error::io("sync directory", log_dir, e))?;
        Ok(Self {
            vfs,
            log_dir: log_dir.to_path_buf(),
            store_id,
            seg_id,
            file,
            path,
            offset: SEGMENT_HEADER_LEN as u64,
            next_lsn: base_lsn,
            segment_bytes,
            unsynced: false,
            synced_lsn: base_lsn.saturating_sub(1),
            appended: false,
        })
    }

    /// Seals `frame` with the next LSN and appends it (rolling first when the segment is full).
    pub fn append(&mut self, frame: &mut FrameBuf, now_ms: u64) -> Result<()> {
        if self.offset + frame.buf.len() as u64 > self.segment_bytes
            && self.offset > SEGMENT_HEADER_LEN as u64
        {
            self.roll(now_ms)?;
        }
        let frame = frame.seal(self.next_lsn, self.synced_lsn);
        self.file
            .write_all_at(frame, self.offset)
            .map_err(|e| Error::io("write", &self.path, e))?;
        self.offset += frame.len() as u64;
        self.next_lsn += 1;
        self.unsynced = true;
        self.appended = true;
        Ok(())
    }

    /// At a clean close: syncs, then appends an empty frame whose `synced_lsn` proves that the
    /// whole log before it is durable (so later damage to the last frames is reported as damage
    /// instead of being cut as a torn tail), and syncs it. Only if something was written since
    /// the store was opened, so that opening and closing a store does not grow its log.
    pub fn close(&mut self, now_ms: u64) -> Result<()> {
        self.sync()?;
        if self.appended {
            let mut marker = FrameBuf::with_capacity(0);
            self.append(&mut marker, now_ms)?;
            self.sync()?;
        }
        Ok(())
    }

    /// `fdatasync` of the active segment, if anything was written since the last one.
    pub fn sync(&mut self) -> Result<()> {
        if self.unsynced {
            self.file
                .sync_data()
                .map_err(|e| Error::io("sync", &self.path, e))?;
            self.unsynced = false;
            self.synced_lsn = self.next_lsn - 1;
        }
        Ok(())
    }

    fn roll(&mut self, now_ms: u64) -> Result<()> {
        self.sync()?;
        let next = Self::create(
            self.vfs.clone(),
            &self.log_dir.clone(),
            self.store_id,
            self.seg_id + 1,
            self.next_lsn,
            now_ms,
            self.segment_bytes,
        )?;
        let appended = self.appended;
        *self = next;
        self.appended = appended;
        Ok(())
    }
}
