//! spool's MQTT client side.
//!
//! Today this crate holds the foundation: an **IO-free session state machine**
//! ([`Session`]) for MQTT 3.1.1 and MQTT 5, our own packet vocabulary over a well-kept codec
//! ([`packet`]), and topic names, filters and matching ([`topic`]). The async event loop,
//! TLS, the store-and-forward outbox on the engine, the local listener and the agent come
//! next and will sit on top of it (the split rumqttc uses: the state machine decides, one
//! event loop owns the socket).
//!
//! The contract of the session (what goes in, what comes out, what the caller must persist
//! before it continues, and why) is in `docs/mqtt.md`.
//!
//! Architecture invariants of this crate:
//! - **The session does no I/O and reads no clock.** Every input carries `now`; outputs are
//!   [`Action`]s carried out in order by the caller.
//! - **Records are named by the store's sequence numbers**; MQTT packet ids are borrowed for
//!   the time a record is in flight.
//! - **No store access here.** The session says "record this progress", "this record is
//!   delivered"; the outbox does it.

pub mod backoff;
pub mod client;
pub mod outbox;
pub mod packet;
pub mod session;
pub mod topic;

pub use backoff::Backoff;
pub use client::{
    Client, ClientBuilder, ClientConfig, ClientError, ClientStats, ConnectionError, Delivery,
    DropCounts, DropReason, Event, LinkState, Subscription, TlsConfig,
};
pub use outbox::{OutMessage, Outbox, OutboxConfig, OutboxError, OutboxStats};
pub use packet::{Codec, CodecError, Packet, Protocol, Publish, QoS, SubscribeFilter};
pub use session::{
    Action, ConfigError, ConnectRefusal, ConnectionState, Error, InboundToken, IncomingPublish,
    OfferError, OutRecord, Qos2Restore, Qos2State, RestoreError, Session, SessionConfig,
    SessionStats, SubscribeError,
};
pub use spool_engine::Overflow;
pub use topic::{topic_matches, validate_topic_filter, validate_topic_name, TopicError};
