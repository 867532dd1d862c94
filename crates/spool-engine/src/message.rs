//! The public shapes of messages: what a producer pushes ([`Push`]), what a consumer gets
//! ([`Message`]) and the proof of a lease it acks with ([`Receipt`]).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;

use crate::error::Error;
use crate::state::{MessageState, Msg};

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
}

impl Message {
    pub(crate) fn from_msg(m: &Msg, receipt: Option<Receipt>, origin_name: Option<String>) -> Self {
        Self {
            id: m.id,
            receipt,
            payload: m.payload.clone(),
            priority: m.priority,
            subject: m.subject().map(str::to_string),
            headers: m.headers().to_vec(),
            enqueued_at: m.enqueued_ms,
            expires_at: (m.expires_ms != 0).then_some(m.expires_ms),
            receive_count: m.receive_count,
            first_received_at: (m.first_received_ms != 0).then_some(m.first_received_ms),
            state: m.state,
            dead_letter_of: origin_name.zip(m.origin().map(|(_, id)| id)),
        }
    }
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
