//! # spool-engine
//!
//! A crash-safe, embedded store of **queues** (work queues with priorities, leases, ack/nack,
//! retries, dead-letter queues, TTL, delays and capacity limits) and **topics** (retained
//! pub/sub logs read through cursors), in one directory owned by one process.
//!
//! Every mutation is an entry in one store-wide log of CRC32C-checked frames written by one
//! writer thread with group commit: many concurrent producers share one `fdatasync`. In the
//! default [`Durability::Sync`] a call returns only once its entries are on stable storage.
//! Recovery replays the log; a torn tail is cut, damage in the middle is reported.
//!
//! The engine has no async runtime and no network code. Its API is synchronous and
//! thread-safe; the `*_async` calls return futures completed by the writer thread, so async
//! callers never block an executor thread on the disk.
//!
//! ```
//! use spool_engine::{Push, Store};
//! let store = Store::in_memory()?;
//! let id = store.push("jobs", Push::new("resize photo 17").priority(5))?;
//! let leased = store.lease("jobs", 10, None)?;
//! assert_eq!(leased[0].id, id);
//! store.ack("jobs", leased[0].receipt.expect("leases carry receipts"))?;
//! # Ok::<(), spool_engine::Error>(())
//! ```

#[doc(hidden)]
pub mod blob;
mod checkpoint;
#[doc(hidden)]
pub mod ckpt;
pub mod clock;
mod codec;
pub mod entry;
pub mod error;
pub mod frame;
mod lanes;
mod maint;
mod message;
pub mod name;
pub mod options;
mod queue;
mod reader;
pub mod recovery;
#[doc(hidden)]
pub mod segindex;
mod segment;
mod signal;
mod state;
mod store;
mod topic;
#[doc(hidden)]
pub mod verify;
pub mod vfs;
mod watch;
mod writer;

pub use clock::{Clock, ManualClock, SystemClock};
pub use entry::RemoveReason;
pub use error::{Error, Result};
pub use maint::MaintainReport;
pub use message::{BlobRef, Message, Push, Receipt};
pub use options::{
    Durability, Maintenance, Options, Overflow, QueueConfig, RecoveryPolicy, SegmentPrep,
    TopicConfig,
};
pub use queue::QueueStats;
pub use recovery::{DamagedRange, RecoveryReport, TornTail};
pub use state::{MessageState, QueueCounters, TopicCounters};
pub use store::{Committed, Store};
pub use topic::{Cursor, CursorStart, TopicMessage, TopicStats};
pub use watch::{Changed, Watch};
