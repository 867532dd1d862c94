//! The typed values of the operations: what goes in (options, configurations) and what comes
//! back (message records, receipts, statistics). Times are Unix epoch milliseconds and
//! durations are whole milliseconds on the wire (finer durations are truncated).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;

/// The ack authority of a lease: `<id>:<generation>` (displayed and parsed in that form).
/// Every lease and every nack of the message makes a new generation, so a receipt acks only
/// the lease it came from ([`Error::LeaseLost`](crate::Error::LeaseLost) otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Receipt {
    /// The message id.
    pub id: u64,
    /// The lease generation.
    pub generation: u32,
}

impl fmt::Display for Receipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.id, self.generation)
    }
}

/// A receipt that is not `<id>:<generation>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("receipt {0:?} is malformed: expected <id>:<generation> as returned by lease, e.g. 42:1")]
pub struct ReceiptParseError(pub String);

impl FromStr for Receipt {
    type Err = ReceiptParseError;

    fn from_str(s: &str) -> Result<Receipt, ReceiptParseError> {
        let bad = || ReceiptParseError(s.to_owned());
        let (id, generation) = s.split_once(':').ok_or_else(bad)?;
        Ok(Receipt {
            id: id.parse().map_err(|_| bad())?,
            generation: generation.parse().map_err(|_| bad())?,
        })
    }
}

/// A message record, as every queue read returns it (research section 8.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The id: unique in the server, increasing, never reused.
    pub id: u64,
    /// What acks, nacks or extends this lease; `None` for reads that take no lease
    /// ([`Client::pop`](crate::Client::pop), [`Client::peek`](crate::Client::peek)).
    pub receipt: Option<Receipt>,
    /// The payload, as pushed.
    pub payload: Bytes,
    /// 0-255, **higher is served first**; ties in push order.
    pub priority: u8,
    /// When it was pushed.
    pub enqueued_at_ms: u64,
    /// When it was first leased, `None` if never.
    pub first_received_at_ms: Option<u64>,
    /// How many times it was handed out (this delivery included).
    pub receive_count: u32,
    /// Leased: when the lease ends and it becomes visible again. Delayed: when it becomes
    /// visible. Ready: when it was pushed.
    pub visible_at_ms: u64,
}

/// How [`Client::lease`](crate::Client::lease) takes messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct LeaseOptions {
    /// Messages at most (1-1000). Default 1.
    pub count: u32,
    /// How long the messages stay invisible to other workers before they are handed out
    /// again unless acked (1 ms - 12 h). `None`: the queue's default (30 s unless
    /// configured).
    pub visibility: Option<Duration>,
    /// How long the server waits for a message when none is visible (up to 60 s). `None` or
    /// zero: answer at once (an empty vector when there is nothing).
    pub wait: Option<Duration>,
}

impl Default for LeaseOptions {
    fn default() -> LeaseOptions {
        LeaseOptions {
            count: 1,
            visibility: None,
            wait: None,
        }
    }
}

impl LeaseOptions {
    /// Up to `count` messages.
    pub fn count(mut self, count: u32) -> LeaseOptions {
        self.count = count;
        self
    }

    /// A lease of `visibility`.
    pub fn visibility(mut self, visibility: Duration) -> LeaseOptions {
        self.visibility = Some(visibility);
        self
    }

    /// Wait up to `wait` for a message.
    pub fn wait(mut self, wait: Duration) -> LeaseOptions {
        self.wait = Some(wait);
        self
    }
}

/// How [`Client::nack`](crate::Client::nack) releases a lease.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NackOptions {
    /// Visible again after this (up to 7 days). Default: at once.
    pub delay: Option<Duration>,
    /// A new priority (0-255). Default: unchanged.
    pub priority: Option<u8>,
}

/// A queue's counts ([`Client::stats`](crate::Client::stats)). A count the server does not
/// report is 0.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Ready to be leased.
    pub visible: u64,
    /// Waiting for their delay.
    pub delayed: u64,
    /// Leased and not acked.
    pub leased: u64,
    /// In the dead-letter queue.
    pub dead: u64,
    /// Every message kept (visible, delayed and leased).
    pub messages: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// Pushed since the queue was created.
    pub total_pushed: u64,
    /// Acked since the queue was created.
    pub total_acked: u64,
    /// Moved to the dead-letter queue since the queue was created.
    pub total_dead: u64,
    /// Age of the oldest message (0 when empty).
    pub oldest_age_ms: u64,
    /// Age of the newest message, when the server reports it.
    pub newest_age_ms: Option<u64>,
    /// The queue's configuration as the server reports it with the counts (fields it does not
    /// report are `None`).
    pub config: QueueConfig,
}

/// A queue's configuration for [`Client::create_queue`](crate::Client::create_queue) and
/// [`Client::configure`](crate::Client::configure): fields left `None` take the server's
/// defaults (on create) or stay as they are (on configure).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueConfig {
    /// The queue.
    pub name: String,
    /// Default lease time (`VT`; server default 30 s).
    pub visibility: Option<Duration>,
    /// Default delay of a push (`DELAY`; default 0).
    pub delay: Option<Duration>,
    /// Largest payload in bytes (`MAXSIZE`; default the server's limit).
    pub max_size: Option<u64>,
    /// Most messages kept; a push beyond is `FULL` (`MAXLEN`; default 0 = unbounded).
    pub max_len: Option<u64>,
    /// Deliveries before a message moves to the dead-letter queue (`MAXRECEIVES`; default 0 =
    /// never).
    pub max_receives: Option<u32>,
    /// The dead-letter queue (`DLQ`; default `<name>.dlq` when `max_receives` is set; `""`
    /// for none).
    pub dlq: Option<String>,
    /// How long a message is kept at most (`RETENTION`; default 4 days; zero: forever).
    pub retention: Option<Duration>,
    /// Most payload bytes kept (`MAXBYTES`; default 0 = unbounded).
    pub max_bytes: Option<u64>,
    /// What a push to a full queue does (`OVERFLOW`; default [`Overflow::Reject`]).
    pub overflow: Option<Overflow>,
    /// Most messages leased at once (`MAXINFLIGHT`; server default 100,000; 0 = unbounded).
    pub max_in_flight: Option<u64>,
}

/// What a push to a queue at its `max_len` or `max_bytes` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Refuse it with [`Error::Full`](crate::Error::Full).
    Reject,
    /// Make room by dropping the oldest message of the lowest priority.
    Evict,
}

impl Overflow {
    fn word(self) -> &'static str {
        match self {
            Overflow::Reject => "reject",
            Overflow::Evict => "evict",
        }
    }
}

impl QueueConfig {
    /// The configuration of `name` with every field left to the server.
    pub fn new(name: impl Into<String>) -> QueueConfig {
        QueueConfig {
            name: name.into(),
            ..QueueConfig::default()
        }
    }

    /// The `key value` pairs of the fields that are set.
    pub(crate) fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut v = Vec::new();
        if let Some(d) = self.visibility {
            v.push(("VT", ms(d).to_string()));
        }
        if let Some(d) = self.delay {
            v.push(("DELAY", ms(d).to_string()));
        }
        if let Some(n) = self.max_size {
            v.push(("MAXSIZE", n.to_string()));
        }
        if let Some(n) = self.max_len {
            v.push(("MAXLEN", n.to_string()));
        }
        if let Some(n) = self.max_receives {
            v.push(("MAXRECEIVES", n.to_string()));
        }
        if let Some(q) = &self.dlq {
            v.push(("DLQ", q.clone()));
        }
        if let Some(d) = self.retention {
            v.push(("RETENTION", ms(d).to_string()));
        }
        if let Some(n) = self.max_bytes {
            v.push(("MAXBYTES", n.to_string()));
        }
        if let Some(o) = self.overflow {
            v.push(("OVERFLOW", o.word().to_owned()));
        }
        if let Some(n) = self.max_in_flight {
            v.push(("MAXINFLIGHT", n.to_string()));
        }
        v
    }
}

/// A topic's configuration for [`Client::create_topic`](crate::Client::create_topic).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicConfig {
    /// The topic.
    pub name: String,
    /// How long a message is kept (`TTL`; server default 600 s).
    pub ttl: Option<Duration>,
    /// Most messages kept, the oldest dropped first (`MAXLEN`; default 10,000).
    pub max_len: Option<u64>,
    /// Largest payload in bytes (`MAXSIZE`; default the server's limit).
    pub max_size: Option<u64>,
    /// Most payload bytes kept, the oldest dropped first (`MAXBYTES`; default 0 = unbounded).
    pub max_bytes: Option<u64>,
}

impl TopicConfig {
    /// The configuration of `name` with every field left to the server.
    pub fn new(name: impl Into<String>) -> TopicConfig {
        TopicConfig {
            name: name.into(),
            ..TopicConfig::default()
        }
    }

    /// The `key value` pairs of the fields that are set.
    pub(crate) fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut v = Vec::new();
        if let Some(d) = self.ttl {
            v.push(("TTL", ms(d).to_string()));
        }
        if let Some(n) = self.max_len {
            v.push(("MAXLEN", n.to_string()));
        }
        if let Some(n) = self.max_size {
            v.push(("MAXSIZE", n.to_string()));
        }
        if let Some(n) = self.max_bytes {
            v.push(("MAXBYTES", n.to_string()));
        }
        v
    }
}

/// A message read from a topic ([`Client::next`](crate::Client::next) and friends).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMessage {
    /// Its sequence number in the topic (from 1).
    pub seq: u64,
    /// The payload, as published.
    pub payload: Bytes,
    /// When it was published.
    pub published_at_ms: u64,
    /// The cursor to pass to the next read.
    pub next_cursor: u64,
    /// Messages between the cursor and this one that expired before they were read (or, for
    /// [`Client::latest`](crate::Client::latest), that were skipped).
    pub skipped: u64,
}

/// A topic's counts ([`Client::topic_stats`](crate::Client::topic_stats)). A count the
/// server does not report is 0.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicStats {
    /// The sequence of the newest message (0: none yet).
    pub last_seq: u64,
    /// Messages kept.
    pub retained: u64,
    /// Age of the oldest one.
    pub oldest_age_ms: u64,
    /// Connections holding cursors, plus waiting reads.
    pub subscribers: u64,
    /// Payload bytes kept.
    pub bytes: u64,
    /// Published since the topic was created.
    pub total_published: u64,
    /// Dropped by age or size limits before everyone read them.
    pub total_expired: u64,
    /// The topic's configuration as the server reports it with the counts.
    pub config: TopicConfig,
}

/// Whole milliseconds (saturating), the wire's unit.
pub(crate) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_round_trips_through_its_text() {
        let r = Receipt {
            id: 42,
            generation: 3,
        };
        assert_eq!(r.to_string(), "42:3");
        assert_eq!("42:3".parse::<Receipt>(), Ok(r));
        for bad in ["", "42", "42:", ":3", "a:1", "1:b", "1:2:3", "-1:2"] {
            assert!(bad.parse::<Receipt>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_queue_config_sends_only_what_is_set() {
        assert!(QueueConfig::new("q").pairs().is_empty());
        let c = QueueConfig {
            visibility: Some(Duration::from_secs(5)),
            max_receives: Some(3),
            dlq: Some("dead".into()),
            ..QueueConfig::new("q")
        };
        assert_eq!(
            c.pairs(),
            vec![
                ("VT", "5000".to_owned()),
                ("MAXRECEIVES", "3".to_owned()),
                ("DLQ", "dead".to_owned())
            ]
        );
    }
}
