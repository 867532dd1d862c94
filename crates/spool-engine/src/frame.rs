//! Frames and file headers: the checksummed units of the log.
//!
//! A frame is the group-commit unit: the writer gathers whatever entries are waiting into one
//! frame, writes it, and calls `fdatasync` once. Its LSN is store-wide and grows by exactly one
//! per frame, so stale bytes, a missing frame or a frame from another place in the log are
//! detected even when their checksum is valid. Every atomic batch lies inside one frame, so a
//! torn tail never leaves half a batch. Layout in `docs/format.md`.

use crate::options::FRAME_BODY_MAX;

/// `b"SPFR"` read as a little-endian u32: lets a scanner find the next frame after damage.
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"SPFR");
/// `magic u32 | body_len u32 | crc32c u32`.
pub const FRAME_HEADER_LEN: usize = 12;
/// `lsn u64 | synced_lsn u64 | n_entries u32` at the start of the body.
pub const BODY_PREFIX_LEN: usize = 20;
/// Header plus body prefix: the bytes a frame buffer reserves before its entries.
pub const FRAME_OVERHEAD: usize = FRAME_HEADER_LEN + BODY_PREFIX_LEN;

const _: () = assert!(FRAME_BODY_MAX < u32::MAX as usize);

/// A frame being filled with entries. Entries are appended to `buf` after the reserved
/// header; [`FrameBuf::seal`] writes the header and checksum.
#[derive(Debug)]
pub struct FrameBuf {
    pub buf: Vec<u8>,
    pub n_entries: u32,
}

impl FrameBuf {
    /// An empty frame with room for `capacity` bytes of entries.
    pub fn with_capacity(capacity: usize) -> Self {
        Self::reuse(Vec::with_capacity(FRAME_OVERHEAD + capacity))
    }
    /// An empty frame in a recycled buffer (its capacity is kept: no new pages to fault in).
    pub fn reuse(mut buf: Vec<u8>) -> Self {
        buf.clear();
        buf.resize(FRAME_OVERHEAD, 0);
        Self { buf, n_entries: 0 }
    }
    /// Bytes of entries in the frame.
    pub fn entries_len(&self) -> usize {
        self.buf.len() - FRAME_OVERHEAD
    }
    /// Writes the header: LSN, the LSN through which the log is known durable (see
    /// `docs/format.md`: it tells a torn tail from damage), entry count, length and checksum.
    /// Returns the whole frame.
    pub fn seal(&mut self, lsn: u64, synced_lsn: u64) -> &[u8] {
        let body_len = (self.buf.len() - FRAME_HEADER_LEN) as u32;
        self.buf[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
        self.buf[4..8].copy_from_slice(&body_len.to_le_bytes());
        self.buf[12..20].copy_from_slice(&lsn.to_le_bytes());
        self.buf[20..28].copy_from_slice(&synced_lsn.to_le_bytes());
        self.buf[28..32].copy_from_slice(&self.n_entries.to_le_bytes());
        let crc = frame_crc(&self.buf[4..8], &self.buf[FRAME_HEADER_LEN..]);
        self.buf[8..12].copy_from_slice(&crc.to_le_bytes());
        &self.buf
    }
}

fn frame_crc(len_bytes: &[u8], body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(len_bytes), body)
}

/// What is found at an offset of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameCheck {
    /// A valid frame. `entries` is the byte range of its entries within the buffer given.
    Valid {
        lsn: u64,
        /// Every frame up to this LSN was durable when this frame was written.
        synced_lsn: u64,
        n_entries: u32,
        entries: std::ops::Range<usize>,
        /// Total bytes of the frame (header and body).
        len: usize,
    },
    /// The buffer ends before the frame does (a short tail).
    Truncated,
    /// Not a valid frame here.
    Invalid(&'static str),
}

/// The whole length of the frame starting at `buf[0]`, read from its header: `None` when the
/// header is incomplete, not a frame header, or its length is out of range.
pub fn frame_total_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < FRAME_HEADER_LEN {
        return None;
    }
    let magic = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let body_len = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    (magic == FRAME_MAGIC && (BODY_PREFIX_LEN..=FRAME_BODY_MAX).contains(&body_len))
        .then_some(FRAME_HEADER_LEN + body_len)
}

/// Checks the frame starting at `buf[0]`. Never allocates: the length field is bounded before
/// anything else is done with it.
pub fn check_frame(buf: &[u8]) -> FrameCheck {
    if buf.len() < FRAME_HEADER_LEN {
        return if buf.iter().all(|&b| b == 0) {
            FrameCheck::Invalid("zeroes")
        } else {
            FrameCheck::Truncated
        };
    }
    let magic = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if magic != FRAME_MAGIC {
        return FrameCheck::Invalid("bad frame magic");
    }
    let body_len = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    if !(BODY_PREFIX_LEN..=FRAME_BODY_MAX).contains(&body_len) {
        return FrameCheck::Invalid("frame length out of range");
    }
    let total = FRAME_HEADER_LEN + body_len;
    if buf.len() < total {
        return FrameCheck::Truncated;
    }
    let crc = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
    if frame_crc(&buf[4..8], &buf[FRAME_HEADER_LEN..total]) != crc {
        return FrameCheck::Invalid("frame checksum mismatch");
    }
    let u64_at = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&buf[i..i + 8]);
        u64::from_le_bytes(a)
    };
    let n_entries = u32::from_le_bytes([buf[28], buf[29], buf[30], buf[31]]);
    FrameCheck::Valid {
        lsn: u64_at(12),
        synced_lsn: u64_at(20),
        n_entries,
        entries: FRAME_OVERHEAD..total,
        len: total,
    }
}

/// A valid frame found by scanning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FoundFrame {
    pub offset: usize,
    pub lsn: u64,
    pub synced_lsn: u64,
    pub len: usize,
}

/// Finds the first valid frame at or after `from` with an LSN above `min_lsn` (used to tell a
/// torn tail from damage in the middle).
pub fn find_next_frame(buf: &[u8], from: usize, min_lsn: u64) -> Option<FoundFrame> {
    let magic = FRAME_MAGIC.to_le_bytes();
    let mut at = from;
    while at + FRAME_HEADER_LEN <= buf.len() {
        let rel = buf[at..].windows(4).position(|w| w == magic)?;
        at += rel;
        if let FrameCheck::Valid {
            lsn,
            synced_lsn,
            len,
            ..
        } = check_frame(&buf[at..])
        {
            if lsn > min_lsn {
                return Some(FoundFrame {
                    offset: at,
                    lsn,
                    synced_lsn,
                    len,
                });
            }
        }
        at += 1;
    }
    None
}

/// Every valid frame at or after `from` with an LSN above `min_lsn`, in file order.
pub fn valid_frames_after(buf: &[u8], from: usize, min_lsn: u64) -> Vec<FoundFrame> {
    let mut out = Vec::new();
    let mut at = from;
    while let Some(f) = find_next_frame(buf, at, min_lsn) {
        at = f.offset + f.len;
        out.push(f);
    }
    out
}

// --- segment header ------------------------------------------------------------------------

/// `b"SPOOLSEG"`.
pub const SEGMENT_MAGIC: [u8; 8] = *b"SPOOLSEG";
/// Bytes of a segment header.
pub const SEGMENT_HEADER_LEN: usize = 64;
/// The segment format version this engine writes and reads.
pub const SEGMENT_VERSION: u16 = 1;

/// The header at the start of every segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The store this segment belongs to (from `FORMAT`): a segment copied from another store
    /// is detected.
    pub store_id: u64,
    /// Equals the number in the file name; strictly increasing, never reused.
    pub seg_id: u64,
    /// LSN of the first frame in the segment.
    pub base_lsn: u64,
    pub created_ms: u64,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..10].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
        // 10..12 flags, 12..16 reserved
        b[16..24].copy_from_slice(&self.store_id.to_le_bytes());
        b[24..32].copy_from_slice(&self.seg_id.to_le_bytes());
        b[32..40].copy_from_slice(&self.base_lsn.to_le_bytes());
        b[40..48].copy_from_slice(&self.created_ms.to_le_bytes());
        // 48..60 reserved
        let crc = crc32c::crc32c(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, &'static str> {
        if b.len() < SEGMENT_HEADER_LEN {
            return Err("segment shorter than its header");
        }
        if b[0..8] != SEGMENT_MAGIC {
            return Err("bad segment magic");
        }
        let crc = u32::from_le_bytes([b[60], b[61], b[62], b[63]]);
        if crc32c::crc32c(&b[..60]) != crc {
            return Err("segment header checksum mismatch");
        }
        if u16::from_le_bytes([b[8], b[9]]) != SEGMENT_VERSION {
            return Err("unsupported segment version");
        }
        let u = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        Ok(Self {
            store_id: u(16),
            seg_id: u(24),
            base_lsn: u(32),
            created_ms: u(40),
        })
    }
}

/// The largest segment id the engine writes or accepts (far beyond any real store: a segment
/// per second for 292 billion years), so that "the next segment" never overflows. A file with
/// a larger number is damage.
pub const SEGMENT_ID_MAX: u64 = u64::MAX >> 1;

/// The file name of segment `seg_id`.
pub fn segment_file_name(seg_id: u64) -> String {
    format!("{seg_id:020}.seg")
}

/// The segment id of a file name, if it is one.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".seg")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

// --- FORMAT file ---------------------------------------------------------------------------

/// `b"SPOOLFMT"`.
pub const FORMAT_MAGIC: [u8; 8] = *b"SPOOLFMT";
/// The store format version.
pub const FORMAT_VERSION: u32 = 2;
/// Bytes of the FORMAT file.
pub const FORMAT_LEN: usize = 36;

/// The contents of `<dir>/FORMAT`, written once when the store is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormatFile {
    pub version: u32,
    pub store_id: u64,
    pub created_ms: u64,
}

impl FormatFile {
    pub fn encode(&self) -> [u8; FORMAT_LEN] {
        let mut b = [0u8; FORMAT_LEN];
        b[0..8].copy_from_slice(&FORMAT_MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        // 12..16 flags
        b[16..24].copy_from_slice(&self.store_id.to_le_bytes());
        b[24..32].copy_from_slice(&self.created_ms.to_le_bytes());
        let crc = crc32c::crc32c(&b[..32]);
        b[32..36].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, String> {
        if b.len() != FORMAT_LEN || b[0..8] != FORMAT_MAGIC {
            return Err("FORMAT file is not a spool FORMAT file".into());
        }
        let crc = u32::from_le_bytes([b[32], b[33], b[34], b[35]]);
        if crc32c::crc32c(&b[..32]) != crc {
            return Err("FORMAT file checksum mismatch".into());
        }
        let version = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        if version != FORMAT_VERSION {
            return Err(format!(
                "format version {version} is not supported by this spool (which reads version {FORMAT_VERSION})"
            ));
        }
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[16..24]);
        let store_id = u64::from_le_bytes(a);
        a.copy_from_slice(&b[24..32]);
        Ok(Self {
            version,
            store_id,
            created_ms: u64::from_le_bytes(a),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(lsn: u64, entries: &[u8]) -> Vec<u8> {
        let mut f = FrameBuf::with_capacity(entries.len());
        f.buf.extend_from_slice(entries);
        f.n_entries = 1;
        f.seal(lsn, lsn - 1).to_vec()
    }

    #[test]
    fn a_sealed_frame_checks_valid() {
        let f = frame(7, b"abcdef");
        match check_frame(&f) {
            FrameCheck::Valid {
                lsn,
                synced_lsn,
                n_entries,
                entries,
                len,
            } => {
                assert_eq!(lsn, 7);
                assert_eq!(synced_lsn, 6);
                assert_eq!(n_entries, 1);
                assert_eq!(&f[entries], b"abcdef");
                assert_eq!(len, f.len());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let f = frame(3, b"payload bytes");
        for i in 0..f.len() * 8 {
            let mut g = f.clone();
            g[i / 8] ^= 1 << (i % 8);
            assert!(
                !matches!(check_frame(&g), FrameCheck::Valid { .. }),
                "flip of bit {i} went unnoticed"
            );
        }
    }

    #[test]
    fn a_huge_length_is_rejected_before_allocation() {
        let mut f = frame(1, b"x");
        f[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            check_frame(&f),
            FrameCheck::Invalid("frame length out of range")
        );
    }

    #[test]
    fn a_short_tail_is_truncated_and_zeroes_are_invalid() {
        let f = frame(1, b"abc");
        assert_eq!(check_frame(&f[..f.len() - 1]), FrameCheck::Truncated);
        assert_eq!(check_frame(&f[..5]), FrameCheck::Truncated);
        assert!(matches!(check_frame(&[0; 8]), FrameCheck::Invalid(_)));
    }

    #[test]
    fn the_scanner_finds_the_next_frame_past_garbage() {
        let mut buf = frame(1, b"a");
        let garbage_at = buf.len();
        buf.extend_from_slice(b"SPFR garbage that looks like a frame start");
        let second = buf.len();
        buf.extend_from_slice(&frame(2, b"b"));
        let found = find_next_frame(&buf, garbage_at, 1).unwrap();
        assert_eq!((found.offset, found.lsn, found.synced_lsn), (second, 2, 1));
        assert_eq!(find_next_frame(&buf, garbage_at, 2), None);
        assert_eq!(valid_frames_after(&buf, 0, 0).len(), 2);
    }

    #[test]
    fn headers_round_trip_and_detect_damage() {
        let h = SegmentHeader {
            store_id: 9,
            seg_id: 4,
            base_lsn: 100,
            created_ms: 5,
        };
        let mut b = h.encode();
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        b[30] ^= 1;
        assert!(SegmentHeader::decode(&b).is_err());

        let f = FormatFile {
            version: FORMAT_VERSION,
            store_id: 1,
            created_ms: 2,
        };
        let mut b = f.encode();
        assert_eq!(FormatFile::decode(&b), Ok(f));
        b[20] ^= 1;
        assert!(FormatFile::decode(&b).is_err());
    }

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(segment_file_name(12), "00000000000000000012.seg");
        assert_eq!(parse_segment_file_name(&segment_file_name(12)), Some(12));
        assert_eq!(parse_segment_file_name("12.seg"), None);
        assert_eq!(parse_segment_file_name("00000000000000000012.idx"), None);
    }
}
