//! An async (tokio) client of spool's queue server (`spool serve`), over the Redis protocol
//! with spool's own codec (`spool-resp`): typed operations named after the server's commands,
//! typed results, and one error variant per error code of the server.
//!
//! ```no_run
//! use std::time::Duration;
//! use spool_client::{Client, Error, LeaseOptions};
//!
//! # async fn run() -> Result<(), Error> {
//! let client = Client::connect("127.0.0.1:7411").await?;
//!
//! // Producer: the id comes back once the message is durable.
//! let id = client.push("jobs", "resize photo 42").priority(5).await?;
//!
//! // Worker: lease (waiting up to 20 s), process, ack.
//! let opts = LeaseOptions::default().count(10).wait(Duration::from_secs(20));
//! for msg in client.lease("jobs", opts).await? {
//!     let Some(receipt) = msg.receipt else { continue };
//!     // ... process msg.payload ...
//!     match client.ack("jobs", receipt).await {
//!         Ok(()) => {}
//!         // Someone else leased it after our lease ran out: they will finish it.
//!         Err(Error::LeaseLost(_)) => {}
//!         Err(e) => return Err(e),
//!     }
//! }
//! # let _ = id;
//! # Ok(())
//! # }
//! ```
//!
//! - **Connections.** [`Client`] is `Clone + Send + Sync`; clones share one connection, on
//!   which the requests of concurrent tasks are pipelined (so concurrent pushes share the
//!   server's group commits). Blocking reads (a [`Client::lease`] with a wait, [`Client::wait`])
//!   use spare connections so they hold nobody up. When a connection breaks, the requests in
//!   flight fail with [`Error::Disconnected`], which says whether each may have been applied;
//!   nothing is retried behind the caller's back, and the next request reconnects.
//! - **Delivery** is at-least-once: a leased message not acked within its visibility timeout
//!   is handed out again, so make processing idempotent. [`Client::pop`] is at-most-once.
//! - **Priorities** are 0-255 and **higher is served first**; ties in push order.
//! - **Times** are Unix milliseconds; durations are sent in whole milliseconds.
//! - **Errors.** The server's refusals ([`Error::NoQueue`] ... [`Error::NoPerm`],
//!   [`Error::Server`]) carry its message and leave the connection usable. Nothing the server
//!   sends makes the client panic: a reply of the wrong shape is [`Error::Protocol`].
//! - **TLS** (feature `tls`, on by default): `TlsOptions` with a CA file or root store and an
//!   optional client certificate, passed in `Options::tls`.
//!
//! The commands and their exact semantics: the queue-semantics research, section 8, and the
//! server's command reference.

mod client;
mod conn;
mod error;
mod reply;
#[cfg(feature = "tls")]
mod tls;
mod types;

pub use bytes::Bytes;
pub use client::{
    Client, Options, Push, PushMany, CONNECT_TIMEOUT_DEFAULT, MAX_REPLY_BYTES_DEFAULT,
};
pub use error::Error;
#[cfg(feature = "tls")]
pub use tls::TlsOptions;
pub use types::{
    LeaseOptions, Message, NackOptions, Overflow, QueueConfig, QueueStats, Receipt,
    ReceiptParseError, TopicConfig, TopicMessage, TopicStats,
};
