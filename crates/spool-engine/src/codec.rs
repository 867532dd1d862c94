//! A small little-endian encoder/decoder for checkpoint payloads. The decoder checks every
//! length against the bytes left before it allocates, and fails with a reason instead of
//! panicking (a checkpoint is checksummed, but a bug or a crafted file must not crash a
//! reader).

use crate::entry::RecRef;

#[derive(Debug, Default)]
pub(crate) struct Enc {
    pub buf: Vec<u8>,
}

impl Enc {
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn len(&mut self, n: usize) {
        self.u64(n as u64);
    }
    pub fn bytes(&mut self, b: &[u8]) {
        self.len(b.len());
        self.buf.extend_from_slice(b);
    }
    pub fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    pub fn rec(&mut self, r: &RecRef) {
        self.u64(r.seg);
        self.u32(r.off);
        self.u32(r.len);
        self.u32(r.size);
        self.u32(r.crc);
        self.u8(r.prio);
        self.u64(r.expires_ms);
        self.u64(r.enqueued_ms);
    }
}

#[derive(Debug)]
pub(crate) struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

pub(crate) type DecResult<T> = std::result::Result<T, String>;

impl<'a> Dec<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }
    fn take(&mut self, n: usize) -> DecResult<&'a [u8]> {
        if self.buf.len() - self.pos < n {
            return Err(format!("ends early at byte {}", self.pos));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub fn u8(&mut self) -> DecResult<u8> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> DecResult<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn u64(&mut self) -> DecResult<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    /// A count of items of at least `min_item` bytes each: bounded by the bytes left.
    pub fn len(&mut self, min_item: usize) -> DecResult<usize> {
        let n = self.u64()?;
        let left = (self.buf.len() - self.pos) as u64;
        if n.saturating_mul(min_item.max(1) as u64) > left {
            return Err(format!(
                "count {n} at byte {} is larger than the payload",
                self.pos
            ));
        }
        Ok(n as usize)
    }
    pub fn bytes(&mut self) -> DecResult<&'a [u8]> {
        let n = self.len(1)?;
        self.take(n)
    }
    pub fn str(&mut self) -> DecResult<String> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| "a string is not UTF-8".to_string())
    }
    pub fn rec(&mut self) -> DecResult<RecRef> {
        Ok(RecRef {
            seg: self.u64()?,
            off: self.u32()?,
            len: self.u32()?,
            size: self.u32()?,
            crc: self.u32()?,
            prio: self.u8()?,
            expires_ms: self.u64()?,
            enqueued_ms: self.u64()?,
        })
    }
    pub fn done(&self) -> DecResult<()> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(format!("{} bytes left over", self.buf.len() - self.pos))
        }
    }
}

/// Bytes of an encoded `RecRef`.
pub(crate) const REC_LEN: usize = 41;
