//! Store options and per-queue / per-topic configuration, with their defaults documented next to
//! the fields. Configs are logged (`QDEF`/`TDEF` entries), so they survive restarts.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};

/// The largest encoded size of one transaction (an atomic batch). Every transaction lies in
/// one frame, so a torn tail never leaves half a batch.
pub const TXN_BYTES_MAX: usize = 64 << 20;
/// The most `group_bytes_max` may be set to.
pub const GROUP_BYTES_LIMIT: usize = 32 << 20;
/// The largest body of one log frame, checked before anything is allocated when reading: a
/// frame takes transactions until it holds `group_bytes_max`, and the last one may be a full
/// transaction (plus its evictions).
pub const FRAME_BODY_MAX: usize = 128 << 20;
/// The largest segment size accepted (record offsets are 32-bit).
pub const SEGMENT_BYTES_MAX: u64 = 1 << 30;
/// The largest payload a queue may be configured to accept (256 MiB). Payloads from
/// `Options::blob_threshold` on are kept in blob files, streamed, never whole in a frame.
pub const PAYLOAD_MAX: usize = 256 << 20;
/// The largest topic payload (topic messages are not stored as blobs).
pub const TOPIC_PAYLOAD_MAX: usize = 32 << 20;
/// The largest number of messages in one `push_batch` (bounds the work done under the lock).
pub const BATCH_LEN_MAX: usize = 100_000;
/// The largest visibility timeout, delay or TTL accepted: 30 days. Longer values are almost
/// certainly unit mistakes (seconds passed as milliseconds).
pub const DURATION_MAX: Duration = Duration::from_secs(30 * 24 * 3600);

/// When a write is acknowledged to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// After `fdatasync` of the frame holding it (group commit): survives power loss. Default.
    #[default]
    Sync,
    /// After the `write` to the file (survives a crash of the process, not of the machine);
    /// `fdatasync` runs at most this many milliseconds later. Power loss may lose that window.
    Interval(u64),
    /// After the `write`; `fdatasync` only when a segment is sealed and at close.
    None,
}

/// Who runs the store's housekeeping: writing the index files of sealed segments (and, as they
/// come, checkpoints, segment deletion and compaction).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Maintenance {
    /// A background thread of the store. Default.
    #[default]
    Background,
    /// Only [`Store::maintain`](crate::Store::maintain) calls: deterministic, for tests and
    /// simulations (and for callers that want to choose when the disk is busy).
    Manual,
}

/// What recovery does when it finds damage in the middle of the log (a bad frame followed by
/// valid ones). A torn tail (a bad frame with nothing valid after it) is always truncated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryPolicy {
    /// Refuse to open, report the damaged LSN ranges, change nothing. Default.
    #[default]
    Refuse,
    /// Skip the damaged frames (their effects are lost), report them, and open.
    Skip,
}

/// How the next log segment is made ready before the active one fills (format.md, "Rolling
/// to a new segment"). A segment file whose blocks were already written once syncs an overwrite
/// without the file-size and block-allocation metadata an append needs: on the disks measured
/// (docs/performance.md) a 100 KB write + `fdatasync` runs 1.5-2x as often on such a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SegmentPrep {
    /// Segments grow by appending. What [`Store::in_memory`](crate::Store::in_memory) uses.
    Off,
    /// Once the active segment is half full, the writer thread itself writes the next file
    /// (zeros, `segment_bytes` long, synced) before its next group commit: deterministic, for
    /// the crash simulation.
    Inline,
    /// As `Inline`, on a short-lived thread of its own, off the commit path. Default.
    #[default]
    Background,
    /// As `Background`, and started when the store opens: once the file is ready, the next
    /// frame goes to it (the segment the store opened on is sealed early), so every group
    /// commit from then on is an overwrite. For long-running servers; it writes
    /// `segment_bytes` of zeros at every open, which a short-lived process (or flash storage)
    /// may not want.
    Eager,
}

/// Options of a store, fixed at open.
#[derive(Clone)]
pub struct Options {
    /// When writes are acknowledged. Default [`Durability::Sync`].
    pub durability: Durability,
    /// What to do with damage in the middle of the log. Default [`RecoveryPolicy::Refuse`].
    pub recovery: RecoveryPolicy,
    /// Size at which the active segment is sealed and a new one started. Default 64 MiB.
    pub segment_bytes: u64,
    /// Bytes the writer gathers into one group commit at most. Default 8 MiB.
    pub group_bytes_max: usize,
    /// Create a queue (or topic) with the default config on the first push (publish) to it.
    /// Reads never create. Default true.
    pub auto_create: bool,
    /// Config given to auto-created queues.
    pub default_queue: QueueConfig,
    /// Config given to auto-created topics.
    pub default_topic: TopicConfig,
    /// The clock. Default the system clock.
    pub clock: Arc<dyn Clock>,
    /// Who runs the housekeeping. Default [`Maintenance::Background`].
    pub maintenance: Maintenance,
    /// A checkpoint is taken once this many bytes of log were written since the last one (or
    /// `checkpoint_interval` passed), and at a clean close: opening replays only the log since
    /// the last checkpoint. 0 turns checkpoints off (opening then replays the whole log).
    /// Default 32 MiB.
    pub checkpoint_bytes: u64,
    /// See `checkpoint_bytes`. Default 10 s.
    pub checkpoint_interval: Duration,
    /// Queue payloads of at least this many bytes are stored in blob files (streamed in with
    /// [`Store::push_stream`](crate::Store::push_stream), or moved there by `push`). Default
    /// 1 MiB.
    pub blob_threshold: usize,
    /// Free space kept on the store's file system for the writes that free space (acks,
    /// checkpoints, compaction, segment deletion): a push or publish that would leave less
    /// fails with [`crate::Error::DiskFull`] and writes nothing, so a full disk never poisons
    /// the store and a backlog can still drain. 0 turns the check off. Default 16 MiB.
    pub min_free_bytes: u64,
    /// How the next segment is prepared. Default [`SegmentPrep::Background`]; skipped while
    /// the file system has less than two segments' worth of free space.
    pub segment_prep: SegmentPrep,
}

/// Default [`Options::min_free_bytes`]: room for many checkpoints and a compaction round.
pub const MIN_FREE_BYTES_DEFAULT: u64 = 16 << 20;

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("durability", &self.durability)
            .field("recovery", &self.recovery)
            .field("segment_bytes", &self.segment_bytes)
            .field("group_bytes_max", &self.group_bytes_max)
            .field("auto_create", &self.auto_create)
            .field("maintenance", &self.maintenance)
            .field("segment_prep", &self.segment_prep)
            .finish_non_exhaustive()
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            durability: Durability::Sync,
            recovery: RecoveryPolicy::Refuse,
            segment_bytes: 64 << 20,
            group_bytes_max: 8 << 20,
            auto_create: true,
            default_queue: QueueConfig::default(),
            default_topic: TopicConfig::default(),
            clock: Arc::new(SystemClock),
            maintenance: Maintenance::Background,
            checkpoint_bytes: 32 << 20,
            checkpoint_interval: Duration::from_secs(10),
            blob_threshold: 1 << 20,
            min_free_bytes: MIN_FREE_BYTES_DEFAULT,
            segment_prep: SegmentPrep::Background,
        }
    }
}

impl Options {
    pub(crate) fn validate(&self) -> Result<()> {
        if self.segment_bytes < 4096 || self.segment_bytes > SEGMENT_BYTES_MAX {
            return Err(Error::InvalidArgument(format!(
                "segment_bytes {} is out of range: use 4096 to {SEGMENT_BYTES_MAX}",
                self.segment_bytes
            )));
        }
        if self.group_bytes_max == 0 || self.group_bytes_max > GROUP_BYTES_LIMIT {
            return Err(Error::InvalidArgument(format!(
                "group_bytes_max {} is out of range: use 1 to {GROUP_BYTES_LIMIT}",
                self.group_bytes_max
            )));
        }
        if let Durability::Interval(0) = self.durability {
            return Err(Error::InvalidArgument(
                "durability interval must be at least 1 ms (use Durability::Sync for 0)".into(),
            ));
        }
        self.default_queue.validate()?;
        self.default_topic.validate()
    }
}

/// What a queue does when a push would pass its capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// The push fails with [`Error::Full`]. Default.
    #[default]
    Reject,
    /// Messages are dropped from the head of the lowest non-empty priority (never one of a
    /// higher priority than the message pushed, never a leased one), each counted as evicted.
    EvictLowestPriority,
}

/// Configuration of a work queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// Visibility timeout of a lease when the caller gives none. Default 30 s.
    pub visibility: Duration,
    /// Delay of a push when the caller gives none. Default 0.
    pub delay: Duration,
    /// Age after which an unconsumed message is dropped (its TTL when the push gives none);
    /// `None` keeps messages forever. Default 4 days.
    pub retention: Option<Duration>,
    /// A message leased more than this many times goes to the dead-letter queue instead of
    /// being delivered again; 0 = no limit. Default 0.
    pub max_receives: u32,
    /// Dead-letter queue; when `None` and `max_receives > 0`, `<name>.dlq` is used.
    pub dead_letter_queue: Option<String>,
    /// Most messages the queue holds; 0 = unbounded. Default 0.
    pub max_messages: u64,
    /// Most bytes (payload, subject and headers) the queue holds; 0 = unbounded. Default 0.
    pub max_bytes: u64,
    /// What happens at capacity. Default [`Overflow::Reject`].
    pub overflow: Overflow,
    /// Largest payload accepted. Default 1 MiB, at most [`PAYLOAD_MAX`].
    pub max_payload_bytes: usize,
    /// Most messages held in memory one by one: leased, delayed (pushed with a delay or nacked
    /// with one) or ready again after a lease; 0 = unbounded. The backlog never handed out is
    /// not counted (it stays on disk). At the bound, `lease` of a new message and `push` with
    /// a delay fail with [`Error::InFlightLimit`](crate::Error::InFlightLimit). Default
    /// 100,000 (about 10 MB).
    pub max_in_flight: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            visibility: Duration::from_secs(30),
            delay: Duration::ZERO,
            retention: Some(Duration::from_secs(4 * 24 * 3600)),
            max_receives: 0,
            dead_letter_queue: None,
            max_messages: 0,
            max_bytes: 0,
            overflow: Overflow::Reject,
            max_payload_bytes: 1 << 20,
            max_in_flight: 100_000,
        }
    }
}

fn check_duration(what: &str, d: Duration) -> Result<()> {
    if d > DURATION_MAX {
        return Err(Error::InvalidArgument(format!(
            "{what} of {} s is longer than the maximum of 30 days",
            d.as_secs()
        )));
    }
    Ok(())
}

impl QueueConfig {
    /// Checks the ranges of every field.
    pub fn validate(&self) -> Result<()> {
        check_duration("visibility", self.visibility)?;
        if self.visibility.is_zero() {
            return Err(Error::InvalidArgument(
                "visibility must be at least 1 ms".into(),
            ));
        }
        check_duration("delay", self.delay)?;
        if let Some(r) = self.retention {
            check_duration("retention", r)?;
        }
        if let Some(dlq) = &self.dead_letter_queue {
            crate::name::validate(dlq)?;
        }
        if self.max_payload_bytes > PAYLOAD_MAX {
            return Err(Error::InvalidArgument(format!(
                "max_payload_bytes {} is above the engine's limit of {PAYLOAD_MAX}",
                self.max_payload_bytes
            )));
        }
        Ok(())
    }

    /// [`QueueConfig::validate`], and that the dead-letter queue this config gives queue `name`
    /// (`<name>.dlq` with `max_receives` and no `dead_letter_queue`) is a valid name.
    pub fn validate_for(&self, name: &str) -> Result<()> {
        self.validate()?;
        if let Some(dlq) = self.dead_letter_queue_of(name) {
            if crate::name::validate(&dlq).is_err() {
                return Err(Error::InvalidName {
                    name: name.chars().take(crate::name::NAME_LEN_MAX + 8).collect(),
                    reason: "its dead-letter queue <name>.dlq would be longer than 128 \
                             characters: use a name of at most 124 characters, or name the \
                             dead-letter queue (dead_letter_queue)",
                });
            }
        }
        Ok(())
    }

    /// The dead-letter queue of queue `name`, if it has one.
    pub fn dead_letter_queue_of(&self, name: &str) -> Option<String> {
        match (&self.dead_letter_queue, self.max_receives) {
            (Some(d), _) => Some(d.clone()),
            (None, 0) => None,
            (None, _) => Some(format!("{name}.dlq")),
        }
    }
}

/// Configuration of a topic (a retained log read through cursors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    /// Messages older than this are dropped. Default 600 s (dsmq's).
    pub retention: Duration,
    /// Most messages retained; 0 = unbounded. Default 10,000.
    pub max_messages: u64,
    /// Most payload bytes retained; 0 = unbounded. Default 64 MiB.
    pub max_bytes: u64,
    /// Largest payload accepted. Default 1 MiB, at most [`PAYLOAD_MAX`].
    pub max_payload_bytes: usize,
}

impl Default for TopicConfig {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(600),
            max_messages: 10_000,
            max_bytes: 64 << 20,
            max_payload_bytes: 1 << 20,
        }
    }
}

impl TopicConfig {
    /// Checks the ranges of every field.
    pub fn validate(&self) -> Result<()> {
        check_duration("retention", self.retention)?;
        if self.max_payload_bytes > TOPIC_PAYLOAD_MAX {
            return Err(Error::InvalidArgument(format!(
                "max_payload_bytes {} is above the engine's limit of {TOPIC_PAYLOAD_MAX} for topics",
                self.max_payload_bytes
            )));
        }
        Ok(())
    }
}
