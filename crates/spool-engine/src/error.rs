//! The engine's error type. Every variant carries the context a user needs, and its message
//! says what to do next (lower-case, no trailing period, in the style of std's errors).

use std::io;
use std::path::PathBuf;

use crate::recovery::DamagedRange;

/// Result alias for engine calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything an engine call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A queue or topic name does not match `[A-Za-z0-9][A-Za-z0-9._-]{0,127}`.
    #[error("invalid name {name:?}: {reason}; names are 1-128 characters of A-Z a-z 0-9 . _ - and start with a letter or digit")]
    InvalidName { name: String, reason: &'static str },

    /// A payload is larger than the queue's or topic's `max_payload_bytes`.
    #[error("payload of {size} bytes is larger than the limit of {max} bytes for {target:?}; split it, or raise max_payload_bytes in the queue config")]
    PayloadTooLarge {
        target: String,
        size: usize,
        max: usize,
    },

    /// `push_batch` with no messages.
    #[error("empty batch: push_batch needs at least one message")]
    EmptyBatch,

    /// A batch is larger than one atomic log frame can hold.
    #[error(
        "batch too large: {what} is {size}, the limit is {max}; split it into smaller batches"
    )]
    BatchTooLarge {
        what: &'static str,
        size: usize,
        max: usize,
    },

    /// The queue does not exist.
    #[error("unknown queue {name:?}: create it first (create_queue, or push with auto_create on)")]
    UnknownQueue { name: String },

    /// The topic does not exist.
    #[error(
        "unknown topic {name:?}: create it first (create_topic, or publish with auto_create on)"
    )]
    UnknownTopic { name: String },

    /// `create_queue`/`create_topic` with a config different from the existing one.
    #[error(
        "{kind} {name:?} already exists with a different config; use configure_{kind} to change it"
    )]
    Exists { kind: &'static str, name: String },

    /// The receipt's lease generation is stale: the message was re-leased or released since.
    #[error("lease lost for message {id} in {queue:?}: receipt {receipt} is stale (the lease expired and the message was leased again, or it was nacked); lease it again")]
    LeaseLost {
        queue: String,
        id: u64,
        receipt: String,
    },

    /// No message with this id (already acked, expired, purged or never pushed).
    #[error("message {id} not found in {queue:?}: it was acked, deleted, expired, purged or never existed")]
    NotFound { queue: String, id: u64 },

    /// The queue is at its capacity and its policy is `reject`.
    #[error("queue {queue:?} is full ({limit}); consume or purge it, raise its capacity, or set overflow to evict-lowest-priority")]
    Full { queue: String, limit: String },

    /// The queue holds `max_in_flight` messages in memory one by one (leased, delayed, or
    /// ready again after a lease).
    #[error("queue {queue:?} has {limit} messages leased, delayed or waiting for redelivery (its max_in_flight); ack or nack leased messages, or raise max_in_flight in the queue config")]
    InFlightLimit { queue: String, limit: u64 },

    /// `dead`/`redrive` on a queue without a dead-letter queue.
    #[error("queue {queue:?} has no dead-letter queue; set dead_letter_queue (or max_receives) in its config")]
    NoDeadLetterQueue { queue: String },

    /// An argument is out of range or malformed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// An earlier write or fsync failed; the handle refuses everything until the store is
    /// reopened (reopening runs recovery).
    #[error("store is poisoned by an earlier I/O failure ({cause}); close it and open it again to recover")]
    Poisoned { cause: String },

    /// Another process (or handle) owns the store directory.
    #[error("store {dir:?} is locked by {}; stop that process or use another directory", holder(.pid.as_ref()))]
    Locked { dir: PathBuf, pid: Option<u32> },

    /// The directory is not a spool store, or one of an incompatible format version.
    #[error("{path:?} is not a usable spool store: {reason}")]
    Format { path: PathBuf, reason: String },

    /// Damage in the middle of the log, found at open with `RecoveryPolicy::Refuse`.
    #[error("log damaged in {} range(s), first: {}; nothing was changed. Run `spool inspect verify`, then open with recovery policy `skip` to drop the damaged frames (or salvage the store)", .ranges.len(), first_range(.ranges))]
    Corrupt { ranges: Vec<DamagedRange> },

    /// A message's record failed its checksum (or is cut short) when it was read back.
    #[error("the record at segment {segment} offset {offset} is damaged ({reason}); run `spool inspect verify` to see the extent, then delete the message or salvage the store")]
    DamagedRecord {
        segment: u64,
        offset: u64,
        reason: String,
    },

    /// The file system holding the store has less free space than the store keeps in
    /// reserve (`Options::min_free_bytes`) for the writes that free space: acks, checkpoints,
    /// compaction. Nothing was written; the store stays usable.
    #[error("the file system of store {dir:?} has {free} bytes free, less than the {reserve} bytes (plus this write) spool keeps for acks and checkpoints; nothing was stored. Free space on it (consuming messages frees theirs), or lower min_free_bytes")]
    DiskFull {
        dir: PathBuf,
        free: u64,
        reserve: u64,
    },

    /// The store was closed.
    #[error("store is closed")]
    Closed,

    /// An I/O call failed.
    #[error("{op} {path:?}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn holder(pid: Option<&u32>) -> String {
    match pid {
        Some(pid) => format!("process {pid}"),
        None => "another process".to_string(),
    }
}

fn first_range(ranges: &[DamagedRange]) -> String {
    ranges
        .first()
        .map_or_else(|| "none".to_string(), ToString::to_string)
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
