//! spool's MQTT client side.
//!
//! - [`Client`] ([`client`]): a store-and-forward MQTT client. `publish` returns once the
//!   message is durable in the [`Outbox`] (an engine queue); a thin tokio event loop sends it
//!   over TCP or TLS (rustls), reconnects with a jittered [`Backoff`], and removes it from the
//!   store only on PUBACK/PUBCOMP. Subscriptions are acked to the broker only after the
//!   subscriber acked each [`Delivery`].
//! - [`Session`] ([`session`]): the **IO-free session state machine** for MQTT 3.1.1 and 5
//!   under it (the split rumqttc uses: the state machine decides, one event loop owns the
//!   socket), our packet vocabulary over a well-kept codec ([`packet`]), and topic names,
//!   filters and matching ([`topic`]).
//!
//! The contract of the session (what goes in, what comes out, what the caller must persist
//! before it continues, and why), the outbox's design and the event loop are in
//! `docs/mqtt.md`.
//! - [`Ingress`] ([`ingress`]): the agent's local MQTT listener, built on [`Client`]: a local
//!   PUBLISH is acked only once it is durable in the outbox; upstream subscriptions are written
//!   to durable inbox queues before the broker is acked, then delivered to local subscribers.
//!
//! Architecture invariants of this crate:
//! - **The session does no I/O and reads no clock.** Every input carries `now`; outputs are
//!   [`Action`]s carried out in order by the caller.
//! - **Records are named by the store's sequence numbers**; MQTT packet ids are borrowed for
//!   the time a record is in flight.
//! - **No store access in the session.** The session says "record this progress", "this
//!   record is delivered"; the outbox does it, and the event loop writes no packet that
//!   follows a progress record before it is durable.

pub mod backoff;
pub mod bulk;
pub mod client;
pub mod ingress;
pub mod outbox;
pub mod packet;
pub mod session;
pub mod topic;

pub use backoff::Backoff;
pub use bulk::{BulkConfig, BulkFormat, BulkWhen, BULK_PROPERTY};
pub use client::{
    Client, ClientBuilder, ClientConfig, ClientError, ClientStats, ConnectionError, Delivery,
    DropCounts, DropReason, Event, LinkState, Subscription, TlsConfig,
};
pub use ingress::{
    DownlinkSubscription, Ingress, IngressConfig, IngressError, IngressStats, PRIORITY_PROPERTY,
};
pub use outbox::{OutMessage, Outbox, OutboxConfig, OutboxError, OutboxStats};
pub use packet::{Codec, CodecError, Packet, Protocol, Publish, QoS, SubscribeFilter};
pub use session::{
    AckRoundTrips, Action, ConfigError, ConnectRefusal, ConnectionState, Error, ExpiredPolicy,
    InboundToken, IncomingPublish, OfferError, OutRecord, Qos2Restore, Qos2State, RestoreError,
    Session, SessionConfig, SessionStats, SubscribeError, ACK_BUCKETS_S,
};
pub use spool_engine::{Durability, Overflow};
pub use topic::{topic_matches, validate_topic_filter, validate_topic_name, TopicError};
