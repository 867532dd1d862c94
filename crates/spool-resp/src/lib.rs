//! spool's Redis protocol codec: RESP2 and RESP3 frames, an incremental decoder and an encoder.
//!
//! The queue server (issue 5) and its Rust client speak RESP; this crate is the part of both
//! that does no I/O (the mini-redis and rumqttc split: the codec decides, a thin loop owns the
//! socket). Written by hand rather than taken from a crate: the server must check a bulk
//! string's length **from its prefix, before the body is read** (a payload over the limit is
//! skipped as it arrives and answered `-TOOBIG`; one over the hard cap closes the
//! connection), which none of the RESP crates we looked at exposes; and the codec is small.
//!
//! - [`Decoder`] takes bytes as they arrive ([`Decoder::decode`] consumes what it used from
//!   the buffer) and keeps its place between calls: a frame split anywhere, even inside a
//!   length prefix, decodes the same; nothing is parsed twice. Requests come as arrays of bulk
//!   strings (what every Redis client sends) or as inline commands (a line of words, what
//!   `telnet` sends).
//! - [`Limits`] bound everything a peer controls: bulk length, aggregate length, nesting
//!   depth, line length. A malformed or over-limit frame is a [`RespError`], after which the
//!   connection is closed; the server keeps serving everyone else.
//! - [`encode`] writes a [`Frame`] for the protocol version a connection negotiated (`HELLO
//!   3`): RESP3 types are written as their RESP2 equivalents on a RESP2 connection.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// A RESP value (RESP2 and RESP3).
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// `+OK`: a short, binary-unsafe string.
    Simple(Bytes),
    /// `-ERR message`: an error reply (RESP3's blob error `!` decodes to this too).
    Error(Bytes),
    /// `:42`.
    Integer(i64),
    /// `$3\r\nfoo`: a binary-safe string.
    Bulk(Bytes),
    /// A bulk string longer than [`Limits::bulk_max`] (and at most [`Limits::bulk_discard_max`]):
    /// its bytes were read and dropped; the server answers the command `-TOOBIG` and goes on.
    Oversize {
        /// Its length.
        len: usize,
    },
    /// RESP2 `$-1`, RESP3 `_`.
    Null,
    /// RESP2 `*-1`.
    NullArray,
    /// `*n`.
    Array(Vec<Frame>),
    /// RESP3 `%n`: key, value pairs in order.
    Map(Vec<(Frame, Frame)>),
    /// RESP3 `~n`.
    Set(Vec<Frame>),
    /// RESP3 `>n`: an out-of-band message.
    Push(Vec<Frame>),
    /// RESP3 `#t` / `#f`.
    Boolean(bool),
    /// RESP3 `,1.5` (also `inf`, `-inf`, `nan`).
    Double(f64),
    /// RESP3 `(123...`: digits, kept as text.
    BigNumber(Bytes),
    /// RESP3 `=n\r\ntxt:...`: a bulk string with a three-letter format.
    Verbatim {
        /// `txt`, `mkd`, ...
        format: [u8; 3],
        /// The text.
        text: Bytes,
    },
}

/// Protocol version of a connection: RESP2 until `HELLO 3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// RESP2 (every client's default).
    #[default]
    Resp2,
    /// RESP3 (after `HELLO 3`).
    Resp3,
}

/// What a peer may send. The defaults suit a server whose largest payload is 1 MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest bulk string kept. Default 1 MiB (the server's max payload).
    pub bulk_max: usize,
    /// Longest bulk string read at all: one longer than [`Limits::bulk_max`] and at most
    /// this is read and dropped ([`Frame::Oversize`]); one longer is an error (close the
    /// connection rather than read that much). Default 2 MiB.
    pub bulk_discard_max: usize,
    /// Most elements of an aggregate (array, set, push; pairs of a map). Default 1,048,576.
    pub aggregate_max: usize,
    /// Deepest nesting of aggregates. Default 8 (requests are flat; replies nest a little).
    pub depth_max: usize,
    /// Longest line: a simple string, error, number or inline command. Default 64 KiB.
    pub line_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            bulk_max: 1 << 20,
            bulk_discard_max: 2 << 20,
            aggregate_max: 1 << 20,
            depth_max: 8,
            line_max: 64 << 10,
        }
    }
}

/// A frame the decoder cannot accept. The connection cannot be resynchronised after one:
/// answer it (Redis sends `-ERR Protocol error: ...`) and close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    /// Not RESP: an unknown type byte, a bad number, a missing CRLF.
    #[error("Protocol error: {0}")]
    Protocol(String),
    /// Over a [`Limits`] bound.
    #[error("Protocol error: {what} of {size} is over the limit of {max}")]
    TooLarge {
        /// Which bound.
        what: &'static str,
        /// What the peer announced (or sent).
        size: usize,
        /// The bound.
        max: usize,
    },
}

fn protocol(msg: impl Into<String>) -> RespError {
    RespError::Protocol(msg.into())
}

/// An aggregate being filled.
#[derive(Debug)]
struct Partial {
    kind: Aggregate,
    /// Frames still to come.
    left: usize,
    items: Vec<Frame>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Aggregate {
    Array,
    Map,
    Set,
    Push,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BulkKind {
    Bulk,
    Verbatim,
    BlobError,
}

/// A bulk string whose header was read.
#[derive(Debug, Clone, Copy)]
struct PendingBulk {
    kind: BulkKind,
    len: usize,
    /// Over `bulk_max`: the body is dropped as it arrives; bytes (body and CRLF) still to drop.
    discard_left: Option<usize>,
}

/// The incremental decoder of one connection.
#[derive(Debug, Default)]
pub struct Decoder {
    limits: Limits,
    stack: Vec<Partial>,
    bulk: Option<PendingBulk>,
}

impl Decoder {
    /// A decoder with `limits`.
    pub fn new(limits: Limits) -> Decoder {
        Decoder {
            limits,
            stack: Vec::new(),
            bulk: None,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether a frame is under way (some of it read): a connection closed now ends mid-frame.
    pub fn in_frame(&self) -> bool {
        !self.stack.is_empty() || self.bulk.is_some()
    }

    /// Decodes the next complete frame from `buf`, consuming what it used; `Ok(None)` when
    /// more bytes are needed (what was read so far is kept, here or in `buf`).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, RespError> {
        loop {
            let Some(frame) = self.next_scalar(buf)? else {
                return Ok(None);
            };
            if let Some(done) = self.fold(frame) {
                return Ok(Some(done));
            }
        }
    }

    /// Puts `frame` into the aggregates being filled; returns the outermost frame once it is
    /// complete.
    fn fold(&mut self, mut frame: Frame) -> Option<Frame> {
        loop {
            let Some(top) = self.stack.last_mut() else {
                return Some(frame);
            };
            top.items.push(frame);
            top.left -= 1;
            if top.left > 0 {
                return None;
            }
            let done = self.stack.pop()?;
            frame = build(done.kind, done.items);
        }
    }

    /// The next scalar frame, or an empty aggregate; an aggregate header with elements is
    /// pushed on the stack and the loop goes on.
    fn next_scalar(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, RespError> {
        loop {
            if let Some(b) = self.bulk {
                return self.bulk_body(b, buf);
            }
            let Some(line) = self.line(buf)? else {
                return Ok(None);
            };
            let Some((&kind, rest)) = line.split_first() else {
                if self.stack.is_empty() {
                    // An empty inline command: Redis ignores it.
                    continue;
                }
                return Err(protocol("empty line inside an aggregate"));
            };
            let rest = Bytes::copy_from_slice(rest);
            let frame = match kind {
                b'+' => Frame::Simple(rest),
                b'-' => Frame::Error(rest),
                b':' => Frame::Integer(int(&rest, "invalid integer")?),
                b'_' if rest.is_empty() => Frame::Null,
                b'#' => match &rest[..] {
                    b"t" => Frame::Boolean(true),
                    b"f" => Frame::Boolean(false),
                    _ => return Err(protocol("invalid boolean")),
                },
                b',' => Frame::Double(double(&rest)?),
                b'(' => {
                    let digits = rest.strip_prefix(b"-").unwrap_or(&rest);
                    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                        return Err(protocol("invalid big number"));
                    }
                    Frame::BigNumber(rest)
                }
                b'$' | b'=' | b'!' => {
                    let kind = match kind {
                        b'$' => BulkKind::Bulk,
                        b'=' => BulkKind::Verbatim,
                        _ => BulkKind::BlobError,
                    };
                    let n = int(&rest, "invalid bulk length")?;
                    if n == -1 && kind == BulkKind::Bulk {
                        Frame::Null
                    } else {
                        let len =
                            usize::try_from(n).map_err(|_| protocol("invalid bulk length"))?;
                        if len > self.limits.bulk_discard_max {
                            return Err(RespError::TooLarge {
                                what: "a bulk string",
                                size: len,
                                max: self.limits.bulk_discard_max,
                            });
                        }
                        let discard_left = (len > self.limits.bulk_max).then_some(len + 2);
                        self.bulk = Some(PendingBulk {
                            kind,
                            len,
                            discard_left,
                        });
                        continue;
                    }
                }
                b'*' | b'%' | b'~' | b'>' => {
                    let agg = match kind {
                        b'*' => Aggregate::Array,
                        b'%' => Aggregate::Map,
                        b'~' => Aggregate::Set,
                        _ => Aggregate::Push,
                    };
                    let n = int(&rest, "invalid multibulk length")?;
                    if n == -1 && agg == Aggregate::Array {
                        Frame::NullArray
                    } else {
                        let len =
                            usize::try_from(n).map_err(|_| protocol("invalid multibulk length"))?;
                        if len > self.limits.aggregate_max {
                            return Err(RespError::TooLarge {
                                what: "an aggregate",
                                size: len,
                                max: self.limits.aggregate_max,
                            });
                        }
                        if len == 0 {
                            build(agg, Vec::new())
                        } else {
                            if self.stack.len() >= self.limits.depth_max {
                                return Err(RespError::TooLarge {
                                    what: "nesting",
                                    size: self.stack.len() + 1,
                                    max: self.limits.depth_max,
                                });
                            }
                            let left = if agg == Aggregate::Map { 2 * len } else { len };
                            self.stack.push(Partial {
                                kind: agg,
                                left,
                                // Grown as elements arrive: a peer's count reserves nothing.
                                items: Vec::new(),
                            });
                            continue;
                        }
                    }
                }
                b'|' => return Err(protocol("attribute frames are not supported")),
                _ if self.stack.is_empty() => inline(&line),
                _ => {
                    return Err(protocol(format!(
                        "expected a RESP type byte, got {:?}",
                        char::from(kind)
                    )))
                }
            };
            return Ok(Some(frame));
        }
    }

    /// The body of a bulk string whose header was read.
    fn bulk_body(
        &mut self,
        b: PendingBulk,
        buf: &mut BytesMut,
    ) -> Result<Option<Frame>, RespError> {
        if let Some(left) = b.discard_left {
            let n = left.min(buf.len());
            buf.advance(n);
            let left = left - n;
            if left > 0 {
                self.bulk = Some(PendingBulk {
                    discard_left: Some(left),
                    ..b
                });
                return Ok(None);
            }
            // The CRLF was dropped with the body; not checked (it went with the payload).
            self.bulk = None;
            return Ok(Some(Frame::Oversize { len: b.len }));
        }
        if buf.len() < b.len + 2 {
            return Ok(None);
        }
        let body = buf.split_to(b.len).freeze();
        if &buf[..2] != b"\r\n" {
            return Err(protocol("a bulk string is not followed by CRLF"));
        }
        buf.advance(2);
        self.bulk = None;
        Ok(Some(match b.kind {
            BulkKind::Bulk => Frame::Bulk(body),
            BulkKind::BlobError => Frame::Error(body),
            BulkKind::Verbatim => {
                if body.len() < 4 || body[3] != b':' {
                    return Err(protocol(
                        "a verbatim string needs a 3-letter format and ':'",
                    ));
                }
                let format = [body[0], body[1], body[2]];
                Frame::Verbatim {
                    format,
                    text: body.slice(4..),
                }
            }
        }))
    }

    /// The next line without its CRLF (consumed from `buf`), or `None` if it is not complete.
    fn line(&self, buf: &mut BytesMut) -> Result<Option<BytesMut>, RespError> {
        let limit = self.limits.line_max.min(buf.len());
        match buf[..limit].windows(2).position(|w| w == b"\r\n") {
            Some(end) => {
                let line = buf.split_to(end);
                buf.advance(2);
                Ok(Some(line))
            }
            None if buf.len() > self.limits.line_max => Err(RespError::TooLarge {
                what: "a line",
                size: buf.len(),
                max: self.limits.line_max,
            }),
            None => Ok(None),
        }
    }
}

fn build(kind: Aggregate, items: Vec<Frame>) -> Frame {
    match kind {
        Aggregate::Array => Frame::Array(items),
        Aggregate::Set => Frame::Set(items),
        Aggregate::Push => Frame::Push(items),
        Aggregate::Map => {
            let mut pairs = Vec::with_capacity(items.len() / 2);
            let mut it = items.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                pairs.push((k, v));
            }
            Frame::Map(pairs)
        }
    }
}

fn int(text: &[u8], what: &str) -> Result<i64, RespError> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| protocol(what))
}

fn double(text: &[u8]) -> Result<f64, RespError> {
    let s = std::str::from_utf8(text).map_err(|_| protocol("invalid double"))?;
    match s {
        "inf" => Ok(f64::INFINITY),
        "-inf" => Ok(f64::NEG_INFINITY),
        _ => s.parse::<f64>().map_err(|_| protocol("invalid double")),
    }
}

/// An inline command: words separated by spaces or tabs (no quoting), as an array of bulk
/// strings, the shape of a RESP request.
fn inline(line: &[u8]) -> Frame {
    Frame::Array(
        line.split(|&b| b == b' ' || b == b'\t')
            .filter(|w| !w.is_empty())
            .map(|w| Frame::Bulk(Bytes::copy_from_slice(w)))
            .collect(),
    )
}

/// The arguments of a request (an array of bulk strings: the command name first), or why it
/// is not one. An [`Frame::Oversize`] argument stays in place for the server to answer.
pub fn request_args(frame: Frame) -> Result<Vec<Frame>, RespError> {
    let Frame::Array(items) = frame else {
        return Err(protocol("expected an array of bulk strings"));
    };
    if items.is_empty() {
        return Err(protocol("an empty request"));
    }
    if items
        .iter()
        .any(|f| !matches!(f, Frame::Bulk(_) | Frame::Oversize { .. }))
    {
        return Err(protocol("a request holds bulk strings only"));
    }
    Ok(items)
}

/// Writes `frame` for a connection speaking `proto`: on RESP2, RESP3-only types become their
/// RESP2 equivalents (map: a flat array of keys and values; set and push: an array; null: a
/// null bulk; boolean: 1 or 0; double and big number: a bulk string; verbatim: its text).
/// [`Frame::Oversize`] is a decoder's marker and is written as a null.
pub fn encode(frame: &Frame, proto: Protocol, out: &mut BytesMut) {
    let resp3 = proto == Protocol::Resp3;
    match frame {
        Frame::Simple(s) => line(out, b'+', s),
        Frame::Error(e) => line(out, b'-', e),
        Frame::Integer(n) => line(out, b':', n.to_string().as_bytes()),
        Frame::Bulk(b) => bulk(out, b'$', b),
        Frame::Null | Frame::Oversize { .. } => {
            if resp3 {
                out.put_slice(b"_\r\n");
            } else {
                out.put_slice(b"$-1\r\n");
            }
        }
        Frame::NullArray => {
            if resp3 {
                out.put_slice(b"_\r\n");
            } else {
                out.put_slice(b"*-1\r\n");
            }
        }
        Frame::Array(items) => aggregate(out, b'*', items, proto),
        Frame::Set(items) => aggregate(out, if resp3 { b'~' } else { b'*' }, items, proto),
        Frame::Push(items) => aggregate(out, if resp3 { b'>' } else { b'*' }, items, proto),
        Frame::Map(pairs) => {
            if resp3 {
                line(out, b'%', pairs.len().to_string().as_bytes());
            } else {
                line(out, b'*', (pairs.len() * 2).to_string().as_bytes());
            }
            for (k, v) in pairs {
                encode(k, proto, out);
                encode(v, proto, out);
            }
        }
        Frame::Boolean(b) => {
            if resp3 {
                out.put_slice(if *b { b"#t\r\n" } else { b"#f\r\n" });
            } else {
                out.put_slice(if *b { b":1\r\n" } else { b":0\r\n" });
            }
        }
        Frame::Double(d) => {
            let text = if d.is_infinite() {
                if *d > 0.0 { "inf" } else { "-inf" }.to_owned()
            } else {
                // Rust's shortest round-trip form ("nan" for NaN).
                format!("{d:?}").to_ascii_lowercase()
            };
            if resp3 {
                line(out, b',', text.as_bytes());
            } else {
                bulk(out, b'$', text.as_bytes());
            }
        }
        Frame::BigNumber(n) => {
            if resp3 {
                line(out, b'(', n);
            } else {
                bulk(out, b'$', n);
            }
        }
        Frame::Verbatim { format, text } => {
            if resp3 {
                line(out, b'=', (text.len() + 4).to_string().as_bytes());
                out.put_slice(format);
                out.put_u8(b':');
                out.put_slice(text);
                out.put_slice(b"\r\n");
            } else {
                bulk(out, b'$', text);
            }
        }
    }
}

fn line(out: &mut BytesMut, kind: u8, text: &[u8]) {
    out.reserve(text.len() + 3);
    out.put_u8(kind);
    // A line cannot hold CR or LF: they would end it early and desynchronise the peer.
    out.extend(
        text.iter()
            .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.put_slice(b"\r\n");
}

fn bulk(out: &mut BytesMut, kind: u8, body: &[u8]) {
    line(out, kind, body.len().to_string().as_bytes());
    out.put_slice(body);
    out.put_slice(b"\r\n");
}

fn aggregate(out: &mut BytesMut, kind: u8, items: &[Frame], proto: Protocol) {
    line(out, kind, items.len().to_string().as_bytes());
    for f in items {
        encode(f, proto, out);
    }
}

#[cfg(test)]
mod tests;
