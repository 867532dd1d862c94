//! Log entries: every mutation of the store is one of these, encoded into a frame. The same
//! [`Entry`] values are applied to the in-memory state on the live path and during recovery,
//! so what a restart rebuilds is, by construction, what the live store held.
//!
//! Encoding (little-endian): `kind u8 | len u32 | body[len]`. The length lets a reader skip an
//! entry; an unknown kind is a format error (the format version gates new kinds).
//! `docs/format.md` has the byte-level layout of every kind.

use std::time::Duration;

use bytes::Bytes;

use crate::options::{Overflow, QueueConfig, TopicConfig};

/// Why a message left its queue (kept in `Remove` entries and counted in stats).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RemoveReason {
    /// Acknowledged by a consumer holding its lease.
    Acked = 1,
    /// Handed out by `pop` (at-most-once).
    Popped = 2,
    /// Deleted by id.
    Deleted = 3,
    /// Its TTL passed before it was consumed.
    Expired = 4,
    /// Evicted to make room for a push (overflow policy `EvictLowestPriority`).
    Evicted = 5,
    /// Moved to the dead-letter queue (max receives passed, or `dead`); the dead-letter
    /// queue's `ENQUEUE` in the same frame carries it on.
    DeadLettered = 6,
    /// Moved back from a dead-letter queue to its source queue by `redrive`.
    Redriven = 7,
}

impl RemoveReason {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Acked,
            2 => Self::Popped,
            3 => Self::Deleted,
            4 => Self::Expired,
            5 => Self::Evicted,
            6 => Self::DeadLettered,
            7 => Self::Redriven,
            _ => return None,
        })
    }
}

/// One message as pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueue {
    pub queue: u32,
    pub id: u64,
    pub priority: u8,
    pub enqueued_ms: u64,
    /// 0 = never expires.
    pub expires_ms: u64,
    /// 0 = visible at once.
    pub visible_ms: u64,
    pub subject: Option<String>,
    pub headers: Vec<(String, Bytes)>,
    pub payload: Bytes,
    /// For a dead letter: where it came from and its delivery history, carried on.
    pub carried: Option<Carried>,
    /// Moved back from a dead-letter queue by `redrive` (counted as redriven, not pushed).
    pub redrive: bool,
    /// A copy made by compaction of the record at this location (segment, offset, length):
    /// the message moves there, nothing else changes.
    pub relocated_from: Option<(u64, u32, u32)>,
    /// The payload is in blob file `blob/<id>.blob` (id, length); `payload` is then empty.
    pub blob: Option<(u64, u64)>,
}

/// What a dead letter carries from the queue it left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Carried {
    pub origin_queue: u32,
    pub origin_id: u64,
    pub receive_count: u32,
    pub lease_gen: u32,
    pub first_received_ms: u64,
}

/// Where a queue message's record (its `ENQUEUE` entry) is, and what the state needs of it.
/// An entry that takes a message out of its lane (lease, remove) names it, so that replay
/// never has to look the record up (it may be in a segment whose index is on disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecRef {
    /// Segment and byte offset of the record's entry header, and its length in bytes.
    pub seg: u64,
    pub off: u32,
    pub len: u32,
    /// Bytes accounted against the queue's capacity (payload, subject, headers).
    pub size: u32,
    /// CRC32C of the record's bytes, checked whenever it is read back.
    pub crc: u32,
    /// The priority lane the record is in (its priority when pushed).
    pub prio: u8,
    pub expires_ms: u64,
    pub enqueued_ms: u64,
}

impl RecRef {
    /// The bytes the message counts against capacity (`size` without its flag bit).
    pub fn bytes(&self) -> u64 {
        u64::from(self.size & !crate::segindex::SIZE_CARRIED)
    }
}

/// A log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A queue is created (or its config replaced).
    QueueDef {
        queue: u32,
        name: String,
        config: QueueConfig,
    },
    /// A queue and all its messages are dropped.
    QueueDrop { queue: u32 },
    /// A message is pushed.
    Enqueue(Enqueue),
    /// A message is leased (also written by `extend`, with the same generation).
    Lease {
        queue: u32,
        id: u64,
        receive_count: u32,
        lease_gen: u32,
        until_ms: u64,
        first_received_ms: u64,
        /// The message's record. Always written; replay then never looks it up, and applies a
        /// lease correctly even when an earlier entry was lost to skipped damage.
        rec: Option<RecRef>,
    },
    /// A lease is released early; the message is visible again at `visible_ms`.
    Nack {
        queue: u32,
        id: u64,
        lease_gen: u32,
        visible_ms: u64,
        priority: u8,
    },
    /// A message leaves its queue.
    Remove {
        queue: u32,
        id: u64,
        reason: RemoveReason,
        /// The message's record (always written, see `Lease`).
        rec: Option<RecRef>,
    },
    /// Every message of the queue with an id below `below_id` is removed.
    Purge { queue: u32, below_id: u64 },
    /// A topic is created (or its config replaced).
    TopicDef {
        topic: u32,
        name: String,
        config: TopicConfig,
    },
    /// A topic and its retained messages are dropped.
    TopicDrop { topic: u32 },
    /// A message is published to a topic.
    Publish {
        topic: u32,
        seq: u64,
        published_ms: u64,
        payload: Bytes,
    },
    /// A named durable cursor is moved.
    Cursor { topic: u32, name: String, seq: u64 },
    /// Retained messages of a topic below `below_seq` are dropped (retention by age, decided
    /// by the clock, hence logged so that replay does not depend on the clock).
    TopicTrim { topic: u32, below_seq: u64 },
    /// The counters a store never reuses, written at the start of every segment together with
    /// the definitions of every queue, topic and named cursor: a replay of the log from any
    /// segment (after the ones before it were deleted) knows them all.
    Catalog {
        next_msg_id: u64,
        next_queue_id: u32,
        next_topic_id: u32,
        /// (topic, next sequence number).
        topic_seqs: Vec<(u32, u64)>,
    },
}

pub(crate) mod kind {
    pub const QUEUE_DEF: u8 = 1;
    pub const QUEUE_DROP: u8 = 2;
    pub const ENQUEUE: u8 = 3;
    pub const LEASE: u8 = 4;
    pub const NACK: u8 = 5;
    pub const REMOVE: u8 = 6;
    // 7 was MOVE in format 1 (a dead-letter move is now REMOVE + ENQUEUE in one frame).
    pub const PURGE: u8 = 8;
    pub const TOPIC_DEF: u8 = 9;
    pub const TOPIC_DROP: u8 = 10;
    pub const PUBLISH: u8 = 11;
    pub const CURSOR: u8 = 12;
    pub const TOPIC_TRIM: u8 = 13;
    pub const CATALOG: u8 = 14;
}

/// Bytes of an entry header (`kind u8 | len u32`).
pub const ENTRY_HEADER_LEN: usize = 5;

/// Why an entry could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad entry at byte {offset}: {reason}")]
pub struct DecodeError {
    pub offset: usize,
    pub reason: &'static str,
}

// --- encoding ------------------------------------------------------------------------------

fn put_u8(out: &mut Vec<u8>, v: u8) {
    out.push(v);
}
fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}
/// Short strings (names): u8 length. Names are at most 128 bytes (checked before encoding).
fn put_str8(out: &mut Vec<u8>, s: &str) {
    debug_assert!(u8::try_from(s.len()).is_ok());
    put_u8(out, s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}
fn put_bytes16(out: &mut Vec<u8>, b: &[u8]) {
    debug_assert!(u16::try_from(b.len()).is_ok());
    put_u16(out, b.len() as u16);
    out.extend_from_slice(b);
}
fn put_bytes32(out: &mut Vec<u8>, b: &[u8]) {
    debug_assert!(u32::try_from(b.len()).is_ok());
    put_u32(out, b.len() as u32);
    out.extend_from_slice(b);
}
fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// `flag u8` (0 none, 1 present) then seg u64, off u32, len u32, size u32, crc u32, prio u8,
/// expires_ms u64, enqueued_ms u64.
fn put_rec(out: &mut Vec<u8>, rec: Option<&RecRef>) {
    match rec {
        None => put_u8(out, 0),
        Some(r) => {
            put_u8(out, 1);
            put_u64(out, r.seg);
            put_u32(out, r.off);
            put_u32(out, r.len);
            put_u32(out, r.size);
            put_u32(out, r.crc);
            put_u8(out, r.prio);
            put_u64(out, r.expires_ms);
            put_u64(out, r.enqueued_ms);
        }
    }
}

fn put_queue_config(out: &mut Vec<u8>, c: &QueueConfig) {
    put_u64(out, ms(c.visibility));
    put_u64(out, ms(c.delay));
    put_u64(out, c.retention.map_or(0, ms));
    put_u32(out, c.max_receives);
    put_str8(out, c.dead_letter_queue.as_deref().unwrap_or(""));
    put_u64(out, c.max_messages);
    put_u64(out, c.max_bytes);
    put_u8(
        out,
        match c.overflow {
            Overflow::Reject => 0,
            Overflow::EvictLowestPriority => 1,
        },
    );
    put_u32(out, c.max_payload_bytes as u32);
    put_u64(out, c.max_in_flight);
}

fn put_topic_config(out: &mut Vec<u8>, c: &TopicConfig) {
    put_u64(out, ms(c.retention));
    put_u64(out, c.max_messages);
    put_u64(out, c.max_bytes);
    put_u32(out, c.max_payload_bytes as u32);
}

impl Entry {
    /// Appends the encoded entry to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; ENTRY_HEADER_LEN]);
        let kind = match self {
            Entry::QueueDef {
                queue,
                name,
                config,
            } => {
                put_u32(out, *queue);
                put_str8(out, name);
                put_queue_config(out, config);
                kind::QUEUE_DEF
            }
            Entry::QueueDrop { queue } => {
                put_u32(out, *queue);
                kind::QUEUE_DROP
            }
            Entry::Enqueue(e) => {
                put_u32(out, e.queue);
                put_u64(out, e.id);
                put_u8(out, e.priority);
                put_u64(out, e.enqueued_ms);
                put_u64(out, e.expires_ms);
                put_u64(out, e.visible_ms);
                let flags = u8::from(e.subject.is_some())
                    | (u8::from(e.carried.is_some()) << 1)
                    | (u8::from(e.redrive) << 2)
                    | (u8::from(e.relocated_from.is_some()) << 3)
                    | (u8::from(e.blob.is_some()) << 4);
                put_u8(out, flags);
                if let Some((seg, off, len)) = e.relocated_from {
                    put_u64(out, seg);
                    put_u32(out, off);
                    put_u32(out, len);
                }
                if let Some(s) = &e.subject {
                    put_bytes16(out, s.as_bytes());
                }
                if let Some(c) = &e.carried {
                    put_u32(out, c.origin_queue);
                    put_u64(out, c.origin_id);
                    put_u32(out, c.receive_count);
                    put_u32(out, c.lease_gen);
                    put_u64(out, c.first_received_ms);
                }
                put_u16(out, e.headers.len() as u16);
                for (k, v) in &e.headers {
                    put_bytes16(out, k.as_bytes());
                    put_bytes32(out, v);
                }
                match e.blob {
                    // The payload field holds the blob's id and length instead.
                    Some((id, len)) => {
                        put_u32(out, 16);
                        put_u64(out, id);
                        put_u64(out, len);
                    }
                    None => put_bytes32(out, &e.payload),
                }
                kind::ENQUEUE
            }
            Entry::Lease {
                queue,
                id,
                receive_count,
                lease_gen,
                until_ms,
                first_received_ms,
                rec,
            } => {
                put_u32(out, *queue);
                put_u64(out, *id);
                put_u32(out, *receive_count);
                put_u32(out, *lease_gen);
                put_u64(out, *until_ms);
                put_u64(out, *first_received_ms);
                put_rec(out, rec.as_ref());
                kind::LEASE
            }
            Entry::Nack {
                queue,
                id,
                lease_gen,
                visible_ms,
                priority,
            } => {
                put_u32(out, *queue);
                put_u64(out, *id);
                put_u32(out, *lease_gen);
                put_u64(out, *visible_ms);
                put_u8(out, *priority);
                kind::NACK
            }
            Entry::Remove {
                queue,
                id,
                reason,
                rec,
            } => {
                put_u32(out, *queue);
                put_u64(out, *id);
                put_u8(out, *reason as u8);
                put_rec(out, rec.as_ref());
                kind::REMOVE
            }
            Entry::Purge { queue, below_id } => {
                put_u32(out, *queue);
                put_u64(out, *below_id);
                kind::PURGE
            }
            Entry::TopicDef {
                topic,
                name,
                config,
            } => {
                put_u32(out, *topic);
                put_str8(out, name);
                put_topic_config(out, config);
                kind::TOPIC_DEF
            }
            Entry::TopicDrop { topic } => {
                put_u32(out, *topic);
                kind::TOPIC_DROP
            }
            Entry::Publish {
                topic,
                seq,
                published_ms,
                payload,
            } => {
                put_u32(out, *topic);
                put_u64(out, *seq);
                put_u64(out, *published_ms);
                put_bytes32(out, payload);
                kind::PUBLISH
            }
            Entry::Cursor { topic, name, seq } => {
                put_u32(out, *topic);
                put_str8(out, name);
                put_u64(out, *seq);
                kind::CURSOR
            }
            Entry::TopicTrim { topic, below_seq } => {
                put_u32(out, *topic);
                put_u64(out, *below_seq);
                kind::TOPIC_TRIM
            }
            Entry::Catalog {
                next_msg_id,
                next_queue_id,
                next_topic_id,
                topic_seqs,
            } => {
                put_u64(out, *next_msg_id);
                put_u32(out, *next_queue_id);
                put_u32(out, *next_topic_id);
                put_u32(out, topic_seqs.len() as u32);
                for (t, seq) in topic_seqs {
                    put_u32(out, *t);
                    put_u64(out, *seq);
                }
                kind::CATALOG
            }
        };
        let len = (out.len() - start - ENTRY_HEADER_LEN) as u32;
        out[start] = kind;
        out[start + 1..start + ENTRY_HEADER_LEN].copy_from_slice(&len.to_le_bytes());
    }

    /// The encoded size of an enqueue entry, without encoding it (for batch-size checks).
    pub fn enqueue_len(
        payload: usize,
        subject: Option<&str>,
        headers: &[(String, Bytes)],
        carried: bool,
    ) -> usize {
        ENTRY_HEADER_LEN
            + 4
            + 8
            + 1
            + 24
            + 1
            + subject.map_or(0, |s| 2 + s.len())
            + if carried { 28 } else { 0 }
            + 2
            + headers
                .iter()
                .map(|(k, v)| 6 + k.len() + v.len())
                .sum::<usize>()
            + 4
            + payload
    }
}

// --- decoding ------------------------------------------------------------------------------

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
    /// The buffer `buf` lies in, when payloads may share it instead of being copied.
    src: Option<&'a Bytes>,
}

impl<'a> Reader<'a> {
    fn err(&self, reason: &'static str) -> DecodeError {
        DecodeError {
            offset: self.base + self.pos,
            reason,
        }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() - self.pos < n {
            return Err(self.err("entry ends early"));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn string(&mut self, n: usize) -> Result<String, DecodeError> {
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err("string is not UTF-8"))
    }
    fn str8(&mut self) -> Result<String, DecodeError> {
        let n = self.u8()? as usize;
        self.string(n)
    }
    fn bytes16(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u16()? as usize;
        self.take(n)
    }
    fn bytes32(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    /// `b` (a slice of this reader's buffer) as `Bytes`: sharing the source buffer when
    /// there is one, else copied.
    fn shared(&self, b: &[u8]) -> Bytes {
        match self.src {
            Some(src) => src.slice_ref(b),
            None => Bytes::copy_from_slice(b),
        }
    }
    fn rec(&mut self) -> Result<Option<RecRef>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(RecRef {
                seg: self.u64()?,
                off: self.u32()?,
                len: self.u32()?,
                size: self.u32()?,
                crc: self.u32()?,
                prio: self.u8()?,
                expires_ms: self.u64()?,
                enqueued_ms: self.u64()?,
            })),
            _ => Err(self.err("bad record flag")),
        }
    }
    fn name(&mut self) -> Result<String, DecodeError> {
        let s = self.str8()?;
        if crate::name::validate(&s).is_err() {
            return Err(self.err("invalid queue or topic name"));
        }
        Ok(s)
    }
    fn done(&self) -> Result<(), DecodeError> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(self.err("entry has trailing bytes"))
        }
    }
}

fn dur(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn queue_config(r: &mut Reader<'_>) -> Result<QueueConfig, DecodeError> {
    let visibility = dur(r.u64()?);
    let delay = dur(r.u64()?);
    let retention = match r.u64()? {
        0 => None,
        v => Some(dur(v)),
    };
    let max_receives = r.u32()?;
    let dlq = r.str8()?;
    let max_messages = r.u64()?;
    let max_bytes = r.u64()?;
    let overflow = match r.u8()? {
        0 => Overflow::Reject,
        1 => Overflow::EvictLowestPriority,
        _ => return Err(r.err("unknown overflow policy")),
    };
    let max_payload_bytes = r.u32()? as usize;
    let max_in_flight = r.u64()?;
    Ok(QueueConfig {
        visibility,
        delay,
        retention,
        max_receives,
        dead_letter_queue: if dlq.is_empty() { None } else { Some(dlq) },
        max_messages,
        max_bytes,
        overflow,
        max_payload_bytes,
        max_in_flight,
    })
}

fn topic_config(r: &mut Reader<'_>) -> Result<TopicConfig, DecodeError> {
    Ok(TopicConfig {
        retention: dur(r.u64()?),
        max_messages: r.u64()?,
        max_bytes: r.u64()?,
        max_payload_bytes: r.u32()? as usize,
    })
}

/// Decodes the entries of a frame body (after the frame's own header fields), calling `f` for
/// each. `base` is the body's offset in its file, for error messages.
pub fn decode_entries(
    buf: &[u8],
    base: usize,
    mut f: impl FnMut(Entry),
) -> Result<usize, DecodeError> {
    decode_entries_at(buf, base, |e, _, _| f(e))
}

/// [`decode_entries`], also giving each entry's offset in `buf` and its encoded length.
pub fn decode_entries_at(
    mut buf: &[u8],
    base: usize,
    mut f: impl FnMut(Entry, usize, usize),
) -> Result<usize, DecodeError> {
    let mut pos = 0;
    let mut n = 0;
    while !buf.is_empty() {
        if buf.len() < ENTRY_HEADER_LEN {
            return Err(DecodeError {
                offset: base + pos,
                reason: "entry header ends early",
            });
        }
        let kind = buf[0];
        let len = u32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if buf.len() - ENTRY_HEADER_LEN < len {
            return Err(DecodeError {
                offset: base + pos,
                reason: "entry length runs past the frame",
            });
        }
        let body = &buf[ENTRY_HEADER_LEN..ENTRY_HEADER_LEN + len];
        f(
            decode_one(kind, body, base + pos + ENTRY_HEADER_LEN)?,
            pos,
            ENTRY_HEADER_LEN + len,
        );
        n += 1;
        pos += ENTRY_HEADER_LEN + len;
        buf = &buf[ENTRY_HEADER_LEN + len..];
    }
    Ok(n)
}

/// Decodes one entry from its encoded bytes (header included), e.g. a record read back by
/// its [`RecRef`].
pub fn decode_record(bytes: &[u8]) -> Result<Entry, DecodeError> {
    let mut n = 0;
    let mut out = None;
    decode_entries(bytes, 0, |e| {
        n += 1;
        out = Some(e);
    })?;
    match (n, out) {
        (1, Some(e)) => Ok(e),
        _ => Err(DecodeError {
            offset: 0,
            reason: "not exactly one entry",
        }),
    }
}

fn decode_one(kind: u8, body: &[u8], base: usize) -> Result<Entry, DecodeError> {
    decode_one_in(kind, body, base, None)
}

/// [`decode_record`] of a record held in `bytes`: its payload and header values share that
/// buffer instead of being copied.
pub fn decode_record_shared(bytes: &Bytes) -> Result<Entry, DecodeError> {
    let b: &[u8] = bytes;
    if b.len() < ENTRY_HEADER_LEN {
        return Err(DecodeError {
            offset: 0,
            reason: "entry header ends early",
        });
    }
    let len = u32::from_le_bytes([b[1], b[2], b[3], b[4]]) as usize;
    if b.len() - ENTRY_HEADER_LEN != len {
        return Err(DecodeError {
            offset: 0,
            reason: "not exactly one entry",
        });
    }
    decode_one_in(b[0], &b[ENTRY_HEADER_LEN..], ENTRY_HEADER_LEN, Some(bytes))
}

fn decode_one_in(
    kind: u8,
    body: &[u8],
    base: usize,
    src: Option<&Bytes>,
) -> Result<Entry, DecodeError> {
    let mut r = Reader {
        buf: body,
        pos: 0,
        base,
        src,
    };
    let e = match kind {
        kind::QUEUE_DEF => Entry::QueueDef {
            queue: r.u32()?,
            name: r.name()?,
            config: queue_config(&mut r)?,
        },
        kind::QUEUE_DROP => Entry::QueueDrop { queue: r.u32()? },
        kind::ENQUEUE => {
            let queue = r.u32()?;
            let id = r.u64()?;
            let priority = r.u8()?;
            let enqueued_ms = r.u64()?;
            let expires_ms = r.u64()?;
            let visible_ms = r.u64()?;
            let flags = r.u8()?;
            if flags & !0b1_1111 != 0 {
                return Err(r.err("unknown enqueue flags"));
            }
            let relocated_from = if flags & 8 != 0 {
                Some((r.u64()?, r.u32()?, r.u32()?))
            } else {
                None
            };
            let subject = if flags & 1 != 0 {
                let b = r.bytes16()?;
                Some(String::from_utf8(b.to_vec()).map_err(|_| r.err("subject is not UTF-8"))?)
            } else {
                None
            };
            let carried = if flags & 2 != 0 {
                Some(Carried {
                    origin_queue: r.u32()?,
                    origin_id: r.u64()?,
                    receive_count: r.u32()?,
                    lease_gen: r.u32()?,
                    first_received_ms: r.u64()?,
                })
            } else {
                None
            };
            let n_headers = r.u16()?;
            let mut headers = Vec::with_capacity(usize::from(n_headers.min(64)));
            for _ in 0..n_headers {
                let k = r.bytes16()?;
                let k =
                    String::from_utf8(k.to_vec()).map_err(|_| r.err("header name is not UTF-8"))?;
                let v = r.bytes32()?;
                let v = r.shared(v);
                headers.push((k, v));
            }
            let raw = r.bytes32()?;
            let (payload, blob) = if flags & 16 != 0 {
                if raw.len() != 16 {
                    return Err(r.err("a blob reference is not 16 bytes"));
                }
                let mut a = [0u8; 8];
                a.copy_from_slice(&raw[..8]);
                let id = u64::from_le_bytes(a);
                a.copy_from_slice(&raw[8..]);
                (Bytes::new(), Some((id, u64::from_le_bytes(a))))
            } else {
                (r.shared(raw), None)
            };
            Entry::Enqueue(Enqueue {
                queue,
                id,
                priority,
                enqueued_ms,
                expires_ms,
                visible_ms,
                subject,
                headers,
                payload,
                carried,
                redrive: flags & 4 != 0,
                relocated_from,
                blob,
            })
        }
        kind::LEASE => Entry::Lease {
            queue: r.u32()?,
            id: r.u64()?,
            receive_count: r.u32()?,
            lease_gen: r.u32()?,
            until_ms: r.u64()?,
            first_received_ms: r.u64()?,
            rec: r.rec()?,
        },
        kind::NACK => Entry::Nack {
            queue: r.u32()?,
            id: r.u64()?,
            lease_gen: r.u32()?,
            visible_ms: r.u64()?,
            priority: r.u8()?,
        },
        kind::REMOVE => {
            let queue = r.u32()?;
            let id = r.u64()?;
            let reason =
                RemoveReason::from_u8(r.u8()?).ok_or_else(|| r.err("unknown remove reason"))?;
            let rec = r.rec()?;
            Entry::Remove {
                queue,
                id,
                reason,
                rec,
            }
        }
        kind::PURGE => Entry::Purge {
            queue: r.u32()?,
            below_id: r.u64()?,
        },
        kind::TOPIC_DEF => Entry::TopicDef {
            topic: r.u32()?,
            name: r.name()?,
            config: topic_config(&mut r)?,
        },
        kind::TOPIC_DROP => Entry::TopicDrop { topic: r.u32()? },
        kind::PUBLISH => Entry::Publish {
            topic: r.u32()?,
            seq: r.u64()?,
            published_ms: r.u64()?,
            payload: {
                let p = r.bytes32()?;
                r.shared(p)
            },
        },
        kind::CURSOR => Entry::Cursor {
            topic: r.u32()?,
            name: r.name()?,
            seq: r.u64()?,
        },
        kind::TOPIC_TRIM => Entry::TopicTrim {
            topic: r.u32()?,
            below_seq: r.u64()?,
        },
        kind::CATALOG => {
            let next_msg_id = r.u64()?;
            let next_queue_id = r.u32()?;
            let next_topic_id = r.u32()?;
            let n = r.u32()? as usize;
            if n > body.len() / 12 {
                return Err(r.err("catalog count larger than the entry"));
            }
            let mut topic_seqs = Vec::with_capacity(n);
            for _ in 0..n {
                topic_seqs.push((r.u32()?, r.u64()?));
            }
            Entry::Catalog {
                next_msg_id,
                next_queue_id,
                next_topic_id,
                topic_seqs,
            }
        }
        _ => return Err(r.err("unknown entry kind")),
    };
    r.done()?;
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Entry> {
        vec![
            Entry::QueueDef {
                queue: 1,
                name: "jobs".into(),
                config: QueueConfig {
                    max_receives: 3,
                    dead_letter_queue: Some("jobs.dead".into()),
                    retention: None,
                    overflow: Overflow::EvictLowestPriority,
                    ..QueueConfig::default()
                },
            },
            Entry::QueueDrop { queue: 7 },
            Entry::Enqueue(Enqueue {
                queue: 1,
                id: 42,
                priority: 9,
                enqueued_ms: 1000,
                expires_ms: 5000,
                visible_ms: 0,
                subject: Some("sensors/a".into()),
                headers: vec![("qos".into(), Bytes::from_static(b"1"))],
                payload: Bytes::from_static(b"hello"),
                carried: Some(Carried {
                    origin_queue: 4,
                    origin_id: 17,
                    receive_count: 3,
                    lease_gen: 5,
                    first_received_ms: 900,
                }),
                redrive: false,
                relocated_from: None,
                blob: None,
            }),
            Entry::Enqueue(Enqueue {
                queue: 1,
                id: 43,
                priority: 0,
                enqueued_ms: 1,
                expires_ms: 0,
                visible_ms: 0,
                subject: None,
                headers: vec![],
                payload: Bytes::new(),
                carried: None,
                redrive: true,
                relocated_from: Some((3, 4096, 77)),
                blob: Some((9, 64 << 20)),
            }),
            Entry::Lease {
                queue: 1,
                id: 42,
                receive_count: 2,
                lease_gen: 3,
                until_ms: 9,
                first_received_ms: 4,
                rec: Some(RecRef {
                    seg: 3,
                    off: 64,
                    len: 70,
                    size: 5,
                    crc: 0xdead_beef,
                    prio: 9,
                    expires_ms: 5000,
                    enqueued_ms: 1000,
                }),
            },
            Entry::Lease {
                queue: 1,
                id: 42,
                receive_count: 3,
                lease_gen: 4,
                until_ms: 10,
                first_received_ms: 4,
                rec: None,
            },
            Entry::Nack {
                queue: 1,
                id: 42,
                lease_gen: 4,
                visible_ms: 10,
                priority: 2,
            },
            Entry::Remove {
                queue: 1,
                id: 42,
                reason: RemoveReason::Evicted,
                rec: None,
            },
            Entry::Remove {
                queue: 1,
                id: 43,
                reason: RemoveReason::DeadLettered,
                rec: Some(RecRef {
                    seg: 1,
                    off: 100,
                    len: 60,
                    size: 0,
                    crc: 1,
                    prio: 0,
                    expires_ms: 0,
                    enqueued_ms: 1,
                }),
            },
            Entry::Purge {
                queue: 1,
                below_id: 100,
            },
            Entry::TopicDef {
                topic: 3,
                name: "greetings".into(),
                config: TopicConfig::default(),
            },
            Entry::TopicDrop { topic: 3 },
            Entry::Publish {
                topic: 3,
                seq: 1,
                published_ms: 5,
                payload: Bytes::from_static(b"hi"),
            },
            Entry::Cursor {
                topic: 3,
                name: "reader-1".into(),
                seq: 2,
            },
            Entry::TopicTrim {
                topic: 3,
                below_seq: 9,
            },
            Entry::Catalog {
                next_msg_id: 77,
                next_queue_id: 4,
                next_topic_id: 2,
                topic_seqs: vec![(1, 10), (3, 1)],
            },
        ]
    }

    #[test]
    fn every_kind_round_trips() {
        let mut buf = Vec::new();
        for e in samples() {
            e.encode(&mut buf);
        }
        let mut back = Vec::new();
        let n = decode_entries(&buf, 0, |e| back.push(e)).unwrap();
        assert_eq!(n, samples().len());
        assert_eq!(back, samples());
    }

    #[test]
    fn enqueue_len_matches_the_encoding() {
        for e in samples() {
            if let Entry::Enqueue(q) = &e {
                let mut buf = Vec::new();
                e.encode(&mut buf);
                assert_eq!(
                    buf.len(),
                    Entry::enqueue_len(
                        q.payload.len(),
                        q.subject.as_deref(),
                        &q.headers,
                        q.carried.is_some()
                    ) + if q.relocated_from.is_some() { 16 } else { 0 }
                        + if q.blob.is_some() { 16 } else { 0 }
                );
            }
        }
    }

    #[test]
    fn truncation_at_every_byte_is_an_error_not_a_panic() {
        let mut buf = Vec::new();
        for e in samples() {
            e.encode(&mut buf);
        }
        for cut in 0..buf.len() {
            let r = decode_entries(&buf[..cut], 0, |_| {});
            // A cut at an entry boundary decodes fewer entries; anywhere else is an error.
            if let Ok(n) = r {
                assert!(n < samples().len());
            }
        }
    }
}
