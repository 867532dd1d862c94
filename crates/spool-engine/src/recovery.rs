//! Recovery: rebuilding the state by replaying the log, and deciding what a bad frame means.
//!
//! Every segment is read in order and every frame checked (magic, length bound, CRC32C, and an
//! LSN exactly one above the previous frame's). At the first bad frame the scanner looks for
//! any later valid frame, in the same segment or in a later segment:
//! - none: the bad bytes are a **torn tail** (a write cut by a crash, never acknowledged).
//!   The segment is truncated to the end of the last good frame and synced; later segments,
//!   which then hold no valid frame, are removed.
//! - one: it is **damage in the middle**. The lost LSN range is reported; with
//!   [`RecoveryPolicy::Refuse`] (the default) the store does not open and nothing is changed,
//!   with [`RecoveryPolicy::Skip`] replay resumes at the next valid frame.
//!
//! Recovery changes files only to cut a torn tail, and that is idempotent: a crash during
//! recovery leaves a log that recovers to the same state.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::entry::decode_entries;
use crate::error::{Error, Result};
use crate::frame::{
    check_frame, find_next_frame, parse_segment_file_name, FrameCheck, SegmentHeader,
    SEGMENT_HEADER_LEN,
};
use crate::options::RecoveryPolicy;
use crate::segment::ActiveSegment;
use crate::state::State;
use crate::vfs::{OpenMode, Vfs};

/// A stretch of the log that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedRange {
    /// Segment holding the first bad byte.
    pub segment: u64,
    /// Offset of the first bad byte in that segment.
    pub offset: u64,
    /// First LSN lost.
    pub lsn_from: u64,
    /// Last LSN lost (inclusive).
    pub lsn_to: u64,
    /// Bytes skipped.
    pub bytes: u64,
    /// What was wrong.
    pub reason: String,
}

impl fmt::Display for DamagedRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "LSN {}..={} ({} bytes) at segment {} offset {}: {}",
            self.lsn_from, self.lsn_to, self.bytes, self.segment, self.offset, self.reason
        )
    }
}

/// A torn tail that recovery cut off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub segment: u64,
    pub offset: u64,
    pub bytes_discarded: u64,
}

/// What recovery found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: u64,
    pub frames: u64,
    pub entries: u64,
    pub bytes: u64,
    /// The torn tail cut off, if any.
    pub torn_tail: Option<TornTail>,
    /// Segments removed because they held no valid frame after a torn tail.
    pub removed_segments: Vec<u64>,
    /// Damage skipped (only with `RecoveryPolicy::Skip`).
    pub damaged: Vec<DamagedRange>,
    /// Leases open at the crash, released.
    pub leases_released: u64,
    /// Milliseconds recovery took.
    pub duration_ms: u64,
}

pub(crate) struct Recovered {
    pub state: State,
    pub active: ActiveSegment,
    pub report: RecoveryReport,
}

struct Seg {
    id: u64,
    path: PathBuf,
    data: Vec<u8>,
    header: Result<SegmentHeader, &'static str>,
}

fn read_segment(vfs: &dyn Vfs, path: &Path) -> Result<Vec<u8>> {
    let f = vfs
        .open(path, OpenMode::Read)
        .map_err(|e| Error::io("open segment", path, e))?;
    let len = f.len().map_err(|e| Error::io("stat segment", path, e))?;
    let len = usize::try_from(len).map_err(|_| Error::Format {
        path: path.to_path_buf(),
        reason: "segment larger than memory can address".into(),
    })?;
    let mut data = vec![0u8; len];
    f.read_exact_at(&mut data, 0)
        .map_err(|e| Error::io("read segment", path, e))?;
    Ok(data)
}

/// Lists the segment ids in `log_dir`, sorted.
pub(crate) fn list_segments(vfs: &dyn Vfs, log_dir: &Path) -> Result<Vec<u64>> {
    let names = vfs
        .read_dir(log_dir)
        .map_err(|e| Error::io("list", log_dir, e))?;
    let mut ids: Vec<u64> = names
        .iter()
        .filter_map(|n| parse_segment_file_name(n))
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

/// Whether a segment holds at least one valid frame.
fn has_valid_frame(seg: &Seg) -> bool {
    seg.data.len() > SEGMENT_HEADER_LEN
        && find_next_frame(&seg.data, SEGMENT_HEADER_LEN, 0).is_some()
}

/// Replays the log in `log_dir` into a fresh state.
#[allow(clippy::too_many_arguments)]
pub(crate) fn recover(
    vfs: &Arc<dyn Vfs>,
    log_dir: &Path,
    store_id: u64,
    policy: RecoveryPolicy,
    segment_bytes: u64,
    now_ms: u64,
) -> Result<Recovered> {
    let started = std::time::Instant::now();
    let mut state = State::new();
    let mut report = RecoveryReport::default();

    let ids = list_segments(vfs.as_ref(), log_dir)?;
    let mut segs = Vec::with_capacity(ids.len());
    for id in ids {
        let path = log_dir.join(crate::frame::segment_file_name(id));
        let data = read_segment(vfs.as_ref(), &path)?;
        let header = SegmentHeader::decode(&data);
        segs.push(Seg {
            id,
            path,
            data,
            header,
        });
    }

    let mut damaged: Vec<DamagedRange> = Vec::new();
    let mut next_lsn: Option<u64> = None;
    // The highest LSN replayed: a new segment after skipped damage continues above it.
    let mut max_lsn = 0u64;
    // Where the log ends: (segment index, offset).
    let mut end: Option<(usize, u64)> = None;
    let mut i = 0;
    'segments: while i < segs.len() {
        let seg = &segs[i];
        report.segments += 1;
        // --- the segment header
        let header_problem = match &seg.header {
            Err(why) => Some((*why).to_string()),
            Ok(h) if h.store_id != store_id => {
                Some("segment belongs to another store (store id mismatch)".into())
            }
            Ok(h) if h.seg_id != seg.id => Some(format!(
                "header says segment {} but the file is {}",
                h.seg_id, seg.id
            )),
            Ok(h) if next_lsn.is_some_and(|n| n != h.base_lsn) => Some(format!(
                "segment starts at LSN {} but LSN {} was expected",
                h.base_lsn,
                next_lsn.unwrap_or_default()
            )),
            Ok(_) => None,
        };
        if i > 0 && seg.id != segs[i - 1].id + 1 {
            damaged.push(DamagedRange {
                segment: segs[i - 1].id + 1,
                offset: 0,
                lsn_from: next_lsn.unwrap_or(0),
                lsn_to: seg
                    .header
                    .as_ref()
                    .map_or(0, |h| h.base_lsn.saturating_sub(1)),
                bytes: 0,
                reason: format!("segment(s) {}..={} missing", segs[i - 1].id + 1, seg.id - 1),
            });
            if policy == RecoveryPolicy::Refuse {
                return Err(Error::Corrupt { ranges: damaged });
            }
            if let Ok(h) = &seg.header {
                next_lsn = Some(h.base_lsn);
            }
        }
        if let Some(problem) = header_problem {
            let is_last = i + 1 == segs.len();
            if is_last && !has_valid_frame(seg) {
                // A segment whose creation was cut by the crash: nothing in it was ever
                // acknowledged (its directory entry is synced before any frame is written).
                end = Some((i, 0));
                break 'segments;
            }
            damaged.push(DamagedRange {
                segment: seg.id,
                offset: 0,
                lsn_from: next_lsn.unwrap_or(0),
                lsn_to: segs
                    .get(i + 1)
                    .and_then(|s| s.header.as_ref().ok())
                    .map_or(u64::MAX, |h| h.base_lsn.saturating_sub(1)),
                bytes: seg.data.len() as u64,
                reason: problem,
            });
            if policy == RecoveryPolicy::Refuse {
                return Err(Error::Corrupt { ranges: damaged });
            }
            next_lsn = None;
            end = None;
            i += 1;
            continue;
        }
        let base = seg.header.as_ref().map_or(0, |h| h.base_lsn);
        let mut expected = next_lsn.unwrap_or(base);
        let mut pos = SEGMENT_HEADER_LEN;
        // --- the frames
        while pos < seg.data.len() {
            let check = check_frame(&seg.data[pos..]);
            let problem = match check {
                FrameCheck::Valid {
                    lsn,
                    n_entries,
                    entries,
                    len,
                } if lsn == expected => {
                    let body = &seg.data[pos + entries.start..pos + entries.end];
                    let mut count = 0u64;
                    let mut batch = Vec::new();
                    let decoded = decode_entries(body, pos + entries.start, |e| {
                        count += 1;
                        batch.push(e);
                    });
                    match decoded {
                        Ok(_) if count == u64::from(n_entries) => {
                            for e in batch {
                                state.apply(e, 0, now_ms);
                            }
                            report.frames += 1;
                            max_lsn = max_lsn.max(lsn);
                            report.entries += count;
                            report.bytes += len as u64;
                            expected += 1;
                            pos += len;
                            continue;
                        }
                        Ok(_) => "frame entry count mismatch".to_string(),
                        Err(e) => e.to_string(),
                    }
                }
                FrameCheck::Valid { lsn, .. } => {
                    format!("frame has LSN {lsn} where LSN {expected} was expected")
                }
                FrameCheck::Truncated => "frame cut short".to_string(),
                FrameCheck::Invalid(why) => why.to_string(),
            };
            // A bad frame at `pos`: torn tail or damage in the middle?
            let min = expected.saturating_sub(1);
            if let Some((at, lsn)) = find_next_frame(&seg.data, pos + 1, min) {
                damaged.push(DamagedRange {
                    segment: seg.id,
                    offset: pos as u64,
                    lsn_from: expected,
                    lsn_to: lsn.saturating_sub(1),
                    bytes: (at - pos) as u64,
                    reason: problem,
                });
                if policy == RecoveryPolicy::Refuse {
                    return Err(Error::Corrupt { ranges: damaged });
                }
                expected = lsn;
                pos = at;
                continue;
            }
            if let Some(later) = segs[i + 1..].iter().find(|s| has_valid_frame(s)) {
                damaged.push(DamagedRange {
                    segment: seg.id,
                    offset: pos as u64,
                    lsn_from: expected,
                    lsn_to: later
                        .header
                        .as_ref()
                        .map_or(u64::MAX, |h| h.base_lsn.saturating_sub(1)),
                    bytes: (seg.data.len() - pos) as u64,
                    reason: problem,
                });
                if policy == RecoveryPolicy::Refuse {
                    return Err(Error::Corrupt { ranges: damaged });
                }
                next_lsn = None;
                end = None;
                i += 1;
                continue 'segments;
            }
            // Torn tail: nothing valid follows anywhere.
            report.torn_tail = Some(TornTail {
                segment: seg.id,
                offset: pos as u64,
                bytes_discarded: (seg.data.len() - pos) as u64,
            });
            end = Some((i, pos as u64));
            next_lsn = Some(expected);
            break 'segments;
        }
        next_lsn = Some(expected);
        end = Some((i, pos as u64));
        i += 1;
    }

    // --- cut the tail: truncate the last segment, remove the empty ones after it.
    let mut active = None;
    if let Some((idx, offset)) = end {
        for seg in &segs[idx + 1..] {
            vfs.remove_file(&seg.path)
                .map_err(|e| Error::io("remove empty segment", &seg.path, e))?;
            report.removed_segments.push(seg.id);
        }
        let seg = &segs[idx];
        if offset == 0 {
            // The segment's own creation was torn: remove it, the writer recreates it.
            vfs.remove_file(&seg.path)
                .map_err(|e| Error::io("remove torn segment", &seg.path, e))?;
            report.removed_segments.push(seg.id);
        } else {
            let file = vfs
                .open(&seg.path, OpenMode::ReadWrite)
                .map_err(|e| Error::io("open segment", &seg.path, e))?;
            if offset < seg.data.len() as u64 {
                file.set_len(offset)
                    .map_err(|e| Error::io("truncate torn tail", &seg.path, e))?;
                file.sync_data()
                    .map_err(|e| Error::io("sync", &seg.path, e))?;
            }
            active = Some(ActiveSegment {
                vfs: vfs.clone(),
                log_dir: log_dir.to_path_buf(),
                store_id,
                seg_id: seg.id,
                file,
                path: seg.path.clone(),
                offset,
                next_lsn: next_lsn.unwrap_or(max_lsn + 1),
                segment_bytes,
                unsynced: false,
            });
        }
        if !report.removed_segments.is_empty() {
            vfs.sync_dir(log_dir)
                .map_err(|e| Error::io("sync directory", log_dir, e))?;
        }
    }
    let active = if let Some(a) = active {
        a
    } else {
        let seg_id = match end {
            Some((idx, _)) => segs[idx].id,
            None => segs.last().map_or(1, |s| s.id + 1),
        };
        ActiveSegment::create(
            vfs.clone(),
            log_dir,
            store_id,
            seg_id,
            next_lsn.unwrap_or(max_lsn + 1).max(max_lsn + 1),
            now_ms,
            segment_bytes,
        )?
    };

    report.damaged = damaged;
    report.leases_released = state.release_all_leases() as u64;
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(Recovered {
        state,
        active,
        report,
    })
}
