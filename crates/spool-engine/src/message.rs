//! The public shapes of messages: what a producer pushes ([`Push`]), what a consumer gets
//! ([`Message`]) and the proof of a lease it acks with ([`Receipt`]).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;

use crate::entry::{decode_record_shared, Entry, RecRef};
use crate::error::Error;
use crate::state::MessageState;
use crate::writer::Shared;

/// A message to push. Build with [`Push::new`] and the setters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Push {
    pub payload: Bytes,
    /// 0-255, higher is served first. Default 0.
    pub priority: u8,
    /// Not visible before this delay passes; `None` = the queue's default delay.
    pub delay: Option<Duration>,
    /// Dropped (counted as expired) once this old; `None` = the queue's retention.
    pub ttl: Option<Duration>,
    /// Optional subject (e.g. the MQTT topic it came from or goes to).
    pub subject: Option<String>,
    /// Small key/value metadata (QoS, content type, user properties).
    pub headers: Vec<(String, Bytes)>,
}

impl Push {
    /// A message with this payload and default settings.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Self {
            payload: payload.into(),
            ..Self::default()
        }
    }
    #[must_use]
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = priority;
        self
    }
    #[must_use]
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }
    #[must_use]
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }
    #[must_use]
    pub fn header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push((key.into(), value.into()));
        self
    }
}

/// Proof of a lease: the message id and the lease generation it was handed out with. Printed
/// and parsed as `"<id>:<generation>"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Receipt {
    pub id: u64,
    pub generation: u32,
}

impl fmt::Display for Receipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.id, self.generation)
    }
}

impl FromStr for Receipt {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || {
            Error::InvalidArgument(format!(
                "receipt {s:?} is malformed: expected <id>:<generation> as printed by lease, e.g. 42:1"
            ))
        };
        let (id, generation) = s.split_once(':').ok_or_else(bad)?;
        let id = id.parse().map_err(|_| bad())?;
        let generation: u32 = generation.parse().map_err(|_| bad())?;
        if generation == 0 {
            return Err(bad());
        }
        Ok(Self { id, generation })
    }
}

/// A message as read from a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: u64,
    /// Present on messages handed out by `lease`.
    pub receipt: Option<Receipt>,
    pub payload: Bytes,
    pub priority: u8,
    pub subject: Option<String>,
    pub headers: Vec<(String, Bytes)>,
    /// Unix ms when it was pushed.
    pub enqueued_at: u64,
    /// Unix ms when it expires, if it does.
    pub expires_at: Option<u64>,
    /// How many times it was leased (or popped).
    pub receive_count: u32,
    /// Unix ms of its first lease, if any.
    pub first_received_at: Option<u64>,
    /// Where it is now.
    pub state: MessageState,
    /// For a dead letter: the queue it came from and its id there.
    pub dead_letter_of: Option<(String, u64)>,
    /// When the payload is in a blob file (large payloads): its length; `payload` is then
    /// empty, and [`Store::open_payload`](crate::Store::open_payload) streams it.
    pub blob: Option<BlobRef>,
}

/// A payload kept in a blob file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobRef {
    pub id: u64,
    pub len: u64,
}

/// How a read message's counters are known: from the state (touched), or from its record
/// (never handed out: a dead letter carries its counters in its record, others have none).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Counts {
    Known {
        receive_count: u32,
        first_received_ms: u64,
    },
    FromRecord {
        /// Added to the carried receive count (1 for a pop).
        add: u32,
        /// First-received time when the record carries none (0 = none).
        first_if_none: u64,
    },
}

/// A message picked under the store lock, to be read from the log once the lock is released
/// (and, for a lease or pop, once its entries are committed).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Out {
    pub id: u64,
    pub rec: RecRef,
    pub receipt: Option<Receipt>,
    pub priority: u8,
    pub counts: Counts,
    pub state: MessageState,
}

fn damaged(rec: &RecRef, reason: String) -> Error {
    Error::DamagedRecord {
        segment: rec.seg,
        offset: u64::from(rec.off),
        reason,
    }
}

/// Reads the records of `outs` and builds the messages, in order.
pub(crate) fn read_messages(shared: &Shared, outs: &[Out]) -> Result<Vec<Message>, Error> {
    if outs.is_empty() {
        return Ok(Vec::new());
    }
    let recs: Vec<RecRef> = outs.iter().map(|o| o.rec).collect();
    let bytes = shared.reader.read_many(&recs)?;
    let mut msgs = Vec::with_capacity(outs.len());
    let mut origins = Vec::with_capacity(outs.len());
    for (o, b) in outs.iter().zip(bytes) {
        let e = match decode_record_shared(&b) {
            Ok(Entry::Enqueue(e)) if e.id == o.id => e,
            Ok(Entry::Enqueue(e)) => {
                return Err(damaged(
                    &o.rec,
                    format!("found message {} where message {} was expected", e.id, o.id),
                ))
            }
            Ok(_) => return Err(damaged(&o.rec, "not a message record".into())),
            Err(e) => return Err(damaged(&o.rec, e.to_string())),
        };
        let (receive_count, first) = match o.counts {
            Counts::Known {
                receive_count,
                first_received_ms,
            } => (receive_count, first_received_ms),
            Counts::FromRecord { add, first_if_none } => (
                e.carried.map_or(0, |c| c.receive_count) + add,
                e.carried
                    .map(|c| c.first_received_ms)
                    .filter(|&f| f != 0)
                    .unwrap_or(first_if_none),
            ),
        };
        origins.push(e.carried.map(|c| (c.origin_queue, c.origin_id)));
        msgs.push(Message {
            id: o.id,
            receipt: o.receipt,
            payload: e.payload,
            priority: o.priority,
            subject: e.subject,
            headers: e.headers,
            enqueued_at: e.enqueued_ms,
            expires_at: (e.expires_ms != 0).then_some(e.expires_ms),
            receive_count,
            first_received_at: (first != 0).then_some(first),
            state: o.state,
            dead_letter_of: None,
            blob: e.blob.map(|(id, len)| BlobRef { id, len }),
        });
    }
    if origins.iter().any(Option::is_some) {
        let core = shared.lock_core();
        for (m, o) in msgs.iter_mut().zip(origins) {
            if let Some((q, id)) = o {
                m.dead_letter_of = core.state.queues.get(&q).map(|q| (q.name.clone(), id));
            }
        }
    }
    Ok(msgs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_print_and_parse() {
        let r = Receipt {
            id: 42,
            generation: 3,
        };
        assert_eq!(r.to_string(), "42:3");
        assert_eq!("42:3".parse::<Receipt>().unwrap(), r);
        for bad in ["", "42", "42:", ":3", "a:1", "42:0", "42:-1", "1:2:3"] {
            assert!(bad.parse::<Receipt>().is_err(), "{bad}");
        }
    }
}
