//! The IO-free MQTT session state machine: given packets and time, it says what to send,
//! which store records are delivered, and what must be made durable first.
//!
//! It owns no socket, reads no clock (every input carries `now`) and never calls the store.
//! An event loop feeds it the packets it decodes ([`Session::handle_incoming`]), wakes it at
//! [`Session::next_deadline`] ([`Session::handle_tick`]), offers it store records
//! ([`Session::offer`]) and carries out the [`Action`]s it returns, **in order**. The full
//! contract (inputs, outputs, what the caller must persist before it continues, and why) is
//! in `docs/mqtt.md`.
//!
//! # Invariants
//!
//! - **Records are keyed by our sequence numbers.** A packet id is only a name for a record
//!   while it is in flight; it is allocated from the free ids (1..=65535) at the record's
//!   first write and freed when the record is done. No two records in flight share one.
//! - **A record is reported [`Action::Acked`] only after the PUBACK (QoS 1) or PUBCOMP
//!   (QoS 2) for its own packet id, received on a connection on which it was written.** A
//!   QoS 0 record is acked right after its PUBLISH is emitted. A record the broker refuses
//!   (reason code 0x80 or above) is reported [`Action::Rejected`] once and never retried.
//! - **Resend order.** Records are kept in the order they were offered (after a restart,
//!   restored QoS 2 records among the records offered again, by sequence number). After
//!   every CONNACK, whatever `session_present` says, every record not yet acked is written
//!   again in that order before any newer one, within the window.
//! - **Durable before the wire.** A [`Action::Qos2Progress`] always comes before the packet
//!   it describes: the caller records it durably, then writes what follows. So after a crash
//!   the recorded packet id and stage are never behind what the broker saw.
//! - **Window.** At most `min(config.window, broker Receive Maximum)` QoS 1/2 records are in
//!   flight on a connection (a QoS 2 record counts until its PUBCOMP).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::packet::{
    reason, Ack, Codec, ConnAck, Connect, Disconnect, Packet, Protocol, Publish, QoS, SubAck,
    Subscribe, SubscribeFilter, UnsubAck, Unsubscribe,
};
use crate::topic::{validate_topic_filter, validate_topic_name, TopicError};

/// The largest window we accept: packet ids are 16 bits and shared by PUBLISH, SUBSCRIBE and
/// UNSUBSCRIBE, so we keep 535 ids free for subscriptions whatever the window.
pub const WINDOW_MAX: u16 = 65_000;

/// Default window: enough to keep a 50 ms RTT link busy at a few thousand messages/s
/// (research section 9 asks for >= 64), small enough that a reconnect resends little.
pub const WINDOW_DEFAULT: u16 = 256;

/// Restored records are spaced this far apart in the order of slots, so that records offered
/// after a restart can be put between them by sequence number (see [`Session::restore`]).
/// Larger than any number of records the session can hold.
const RESTORED_ORD_GAP: u64 = 1 << 20;
const _: () = assert!(RESTORED_ORD_GAP > WINDOW_MAX as u64);

/// Receive Maximum when an MQTT 5 broker announces none (the protocol's default).
const BROKER_RECEIVE_MAXIMUM_DEFAULT: u16 = 65_535;
/// The in-flight limit assumed of an MQTT 3.1.1 broker, which cannot announce one: Mosquitto's
/// default `max_inflight_messages`. Mosquitto 2.0 answers a 3.1.1 client that goes over it with
/// a PUBACK that looks like success while it drops the message ("quota exceeded", a reason
/// code a 3.1.1 PUBACK cannot carry), then closes the connection; so the window of a 3.1.1
/// connection is at most this.
pub const V311_RECEIVE_MAXIMUM: u16 = 20;

/// Default MQTT 5 session expiry: a day, so that a device offline overnight finds its QoS 2
/// transactions and subscriptions kept by the broker.
pub const SESSION_EXPIRY_DEFAULT_S: u32 = 24 * 3600;

/// Default keep alive: short enough that a NAT or a cellular link does not drop an idle
/// connection silently (many time out after 60 s or more), long enough to cost little.
pub const KEEP_ALIVE_DEFAULT: Duration = Duration::from_secs(30);

/// Default time to wait for an answer to PINGREQ: a few round trips on a slow cellular link.
pub const PING_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// Default time to wait for CONNACK (TLS and authentication happen before it on the broker).
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// Default MQTT 5 Receive Maximum we announce: how many incoming QoS 1/2 messages may wait
/// for the caller to store them; bounds the memory of a slow inbox.
pub const INBOUND_RECEIVE_MAXIMUM_DEFAULT: u16 = 64;

/// The largest incoming packet we accept by default (MQTT allows 256 MiB; an edge device
/// must not be made to buffer that).
pub const INCOMING_PACKET_BYTES_DEFAULT: usize = 1 << 20;

/// How the session connects and behaves. Build with [`SessionConfig::new`] and adjust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// MQTT 3.1.1 or 5.
    pub protocol: Protocol,
    /// Client identifier; must be non-empty (a persistent session is tied to it).
    pub client_id: String,
    /// Keep alive sent in CONNECT (whole seconds, at most 65535 s); zero turns pings off.
    /// Default [`KEEP_ALIVE_DEFAULT`]. A broker's MQTT 5 Server Keep Alive overrides it.
    pub keep_alive: Duration,
    /// How long to wait after a PINGREQ for any packet before declaring the link dead.
    /// Default [`PING_TIMEOUT_DEFAULT`].
    pub ping_timeout: Duration,
    /// How long to wait for CONNACK after CONNECT. Default [`CONNECT_TIMEOUT_DEFAULT`].
    pub connect_timeout: Duration,
    /// Start a new broker session at every connect (MQTT 5 Clean Start, MQTT 3.1.1 Clean
    /// Session) instead of resuming the one the broker kept. Default false. With it, every
    /// CONNECT of this session asks for a clean start, the MQTT 5 session expiry sent is 0
    /// (`session_expiry_s` is not used: the broker keeps nothing after a disconnect), and every
    /// CONNACK says `session_present = false`. Nothing stored is lost: every record not yet
    /// acked is written again after each CONNACK as always, but a QoS 2 record that was in
    /// flight is published again (a possible duplicate, counted), the broker forgets our
    /// subscriptions and what was queued for us while we were away (they are subscribed again
    /// after each CONNACK), and exactly-once across a reconnect is no longer possible.
    pub clean_start: bool,
    /// MQTT 5 session expiry interval in seconds. Default [`SESSION_EXPIRY_DEFAULT_S`]. Not
    /// used with `clean_start` (0 is sent).
    pub session_expiry_s: u32,
    /// How many QoS 1/2 records may be in flight (and how many records the session holds).
    /// Default [`WINDOW_DEFAULT`], at most [`WINDOW_MAX`].
    pub window: u16,
    /// MQTT 5 Receive Maximum we announce: how many QoS 1/2 messages the broker may have
    /// unacknowledged towards us (bounds what waits for `ack_incoming`). Default
    /// [`INBOUND_RECEIVE_MAXIMUM_DEFAULT`].
    pub inbound_receive_maximum: u16,
    /// The in-flight limit assumed of an MQTT 3.1.1 broker, which cannot announce its Receive
    /// Maximum. Default [`V311_RECEIVE_MAXIMUM`] (Mosquitto's default); raise it only for a
    /// broker configured to take more (Mosquitto's `max_inflight_messages`).
    pub v311_receive_maximum: u16,
    /// What happens to a record whose TTL (`OutRecord::expires_at`) passed before it was
    /// ever written. Default [`ExpiredPolicy::Drop`].
    pub expired: ExpiredPolicy,
    /// User name, if the broker wants one.
    pub username: Option<String>,
    /// Password, if the broker wants one.
    pub password: Option<String>,
}

/// What happens to a record whose TTL passed before it was ever written to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ExpiredPolicy {
    /// Drop it: the session reports [`Action::Expired`] (the caller removes and counts it),
    /// and the outbox gives the record's TTL to the engine, which drops the records that
    /// expire while they wait in the store. Default.
    #[default]
    Drop,
    /// Send it anyway, late. The TTL then only sets the MQTT 5 message expiry interval of a
    /// record written in time (the remaining time); a record written after its TTL goes
    /// without one (an interval of 0 or less does not exist, and a short one would make the
    /// broker discard the message it was just asked to deliver). The outbox keeps the TTL in
    /// a header instead of giving it to the engine, so nothing is dropped in the store either.
    Send,
}

impl SessionConfig {
    /// A configuration with the documented defaults.
    pub fn new(protocol: Protocol, client_id: impl Into<String>) -> SessionConfig {
        SessionConfig {
            protocol,
            client_id: client_id.into(),
            keep_alive: KEEP_ALIVE_DEFAULT,
            ping_timeout: PING_TIMEOUT_DEFAULT,
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
            clean_start: false,
            session_expiry_s: SESSION_EXPIRY_DEFAULT_S,
            window: WINDOW_DEFAULT,
            inbound_receive_maximum: INBOUND_RECEIVE_MAXIMUM_DEFAULT,
            v311_receive_maximum: V311_RECEIVE_MAXIMUM,
            expired: ExpiredPolicy::Drop,
            username: None,
            password: None,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.client_id.is_empty() {
            return Err(ConfigError::EmptyClientId);
        }
        if self.client_id.len() > usize::from(u16::MAX) {
            return Err(ConfigError::ClientIdTooLong {
                len: self.client_id.len(),
            });
        }
        if self.keep_alive.as_secs() > u64::from(u16::MAX) {
            return Err(ConfigError::KeepAliveTooLong {
                secs: self.keep_alive.as_secs(),
            });
        }
        if self.window == 0 || self.window > WINDOW_MAX {
            return Err(ConfigError::Window {
                window: self.window,
            });
        }
        if self.inbound_receive_maximum == 0 || self.v311_receive_maximum == 0 {
            return Err(ConfigError::ZeroReceiveMaximum);
        }
        if !self.keep_alive.is_zero() && self.ping_timeout.is_zero() {
            return Err(ConfigError::ZeroPingTimeout);
        }
        if self.connect_timeout.is_zero() {
            return Err(ConfigError::ZeroConnectTimeout);
        }
        Ok(())
    }
}

/// A bad [`SessionConfig`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A persistent session needs a client id.
    #[error("client id is empty; a persistent session needs a stable, non-empty client id")]
    EmptyClientId,
    /// Longer than MQTT can carry.
    #[error("client id is {len} bytes long; MQTT allows at most 65535 (brokers often 23)")]
    ClientIdTooLong {
        /// Length in bytes.
        len: usize,
    },
    /// Keep alive is a 16-bit number of seconds.
    #[error("keep alive of {secs} s is too long; MQTT allows at most 65535 s (0 turns it off)")]
    KeepAliveTooLong {
        /// Seconds asked for.
        secs: u64,
    },
    /// Window out of range.
    #[error("window of {window} is out of range; use 1 to 65000 messages in flight")]
    Window {
        /// The value given.
        window: u16,
    },
    /// Receive maximum 0 is a protocol error.
    #[error(
        "a receive maximum (inbound_receive_maximum or v311_receive_maximum) is 0; use 1 to 65535"
    )]
    ZeroReceiveMaximum,
    /// With keep alive on, a zero ping timeout would fire at once.
    #[error("ping timeout is 0 while keep alive is on; give the broker time to answer (e.g. 10s)")]
    ZeroPingTimeout,
    /// A zero connect timeout would fire at once.
    #[error("connect timeout is 0; give the broker time to answer CONNECT (e.g. 10s)")]
    ZeroConnectTimeout,
}

/// Why the restored QoS 2 state given to [`Session::restore`] cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// The configuration itself is bad.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Packet id 0 is not a valid id.
    #[error("restored record {seq} has packet id 0; the recorded QoS 2 progress is damaged")]
    PacketIdZero {
        /// Sequence number.
        seq: u64,
    },
    /// Two records with one packet id.
    #[error(
        "packet id {packet_id} is recorded for two records; the recorded QoS 2 progress is damaged"
    )]
    DuplicatePacketId {
        /// The id.
        packet_id: u16,
    },
    /// One record twice.
    #[error("record {seq} is restored twice")]
    DuplicateSeq {
        /// Sequence number.
        seq: u64,
    },
    /// Only QoS 2 records have recorded progress.
    #[error("record {seq} is restored with QoS 2 progress but is not a QoS 2 record")]
    NotQos2 {
        /// Sequence number.
        seq: u64,
    },
}

/// A record of the outbox, as the session needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    /// The store's sequence number: the record's only identity.
    pub seq: u64,
    /// Topic name to publish to.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// Delivery guarantee.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
    /// When the record stops being worth sending. A record not yet written by then is
    /// reported [`Action::Expired`] instead (under [`ExpiredPolicy::Drop`]; under
    /// [`ExpiredPolicy::Send`] it is written late, without a message expiry interval); once
    /// written it is finished normally, and MQTT 5 resends carry the remaining time as the
    /// message expiry interval.
    pub expires_at: Option<Instant>,
    /// MQTT 5 user properties (ignored by MQTT 3.1.1).
    pub user_properties: Vec<(String, String)>,
}

/// Where an outgoing QoS 2 transaction is, as the caller must record it durably.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Qos2State {
    /// The PUBLISH with this packet id is (about to be) on the wire; no PUBREC yet.
    Published,
    /// PUBREC received; the PUBREL with this packet id is (about to be) on the wire.
    Released,
}

/// An in-flight QoS 2 record and its recorded progress, to resume after a process restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qos2Restore {
    /// The record (read back from the store).
    pub record: OutRecord,
    /// The packet id recorded with [`Action::Qos2Progress`].
    pub packet_id: u16,
    /// The stage recorded with [`Action::Qos2Progress`].
    pub state: Qos2State,
}

/// Names one incoming QoS 1/2 message until the caller has stored it; give it back to
/// [`Session::ack_incoming`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InboundToken {
    epoch: u64,
    conn: u64,
    id: u64,
    packet_id: u16,
    qos: QoS,
}

impl InboundToken {
    /// The broker's packet id of the message.
    pub fn packet_id(&self) -> u16 {
        self.packet_id
    }
}

/// An incoming application message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingPublish {
    /// The PUBLISH as received.
    pub publish: Publish,
    /// For QoS 1/2: nothing is acknowledged to the broker until this token is given to
    /// [`Session::ack_incoming`] (store first, then ack). `None` for QoS 0.
    pub token: Option<InboundToken>,
}

/// What the caller must do, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write this packet to the connection.
    Send(Packet),
    /// Record durably that QoS 2 record `seq` uses `packet_id` and is at `state`, **before**
    /// writing any packet that follows this action. Replaces any earlier progress of `seq`.
    Qos2Progress {
        /// Record.
        seq: u64,
        /// Packet id it uses.
        packet_id: u16,
        /// Stage.
        state: Qos2State,
    },
    /// The record is delivered: the store may delete it (and its QoS 2 progress).
    Acked {
        /// Record.
        seq: u64,
    },
    /// The broker refused the record (reason code 0x80 or above in PUBACK/PUBREC), or it can
    /// never be sent (larger than the broker's maximum packet size). It will not be retried:
    /// dead-letter it and count it.
    Rejected {
        /// Record.
        seq: u64,
        /// MQTT 5 reason code.
        reason: u8,
        /// Broker's reason string, if any.
        reason_string: Option<String>,
    },
    /// The broker turned the record away for now (PUBACK/PUBREC 0x97 "quota exceeded": a
    /// limit of the broker's that passes, such as a full queue): hand it back to the outbox
    /// to be offered again after a pause, and count it. Not a refusal: nothing is
    /// dead-lettered for a condition that passes.
    Deferred {
        /// Record.
        seq: u64,
    },
    /// The record's TTL ran out before it was ever written: drop it and count it (only under
    /// [`ExpiredPolicy::Drop`], the default).
    Expired {
        /// Record.
        seq: u64,
    },
    /// The record is being written again after it may already have reached subscribers (a
    /// QoS 1 resend, or a QoS 2 resend after the broker lost the session): count it.
    PossibleDuplicate {
        /// Record.
        seq: u64,
        /// Its QoS.
        qos: QoS,
    },
    /// CONNACK accepted the connection.
    Connected {
        /// Whether the broker kept our session.
        session_present: bool,
    },
    /// A message arrived on a subscription.
    Incoming(IncomingPublish),
    /// SUBACK for one filter: the granted QoS, or the failure reason code (the filter is then
    /// forgotten and not re-sent).
    Subscribed {
        /// The filter.
        filter: String,
        /// Granted QoS or failure reason code.
        result: Result<QoS, u8>,
    },
    /// UNSUBACK for one filter (reason code: 0 in MQTT 3.1.1).
    Unsubscribed {
        /// The filter.
        filter: String,
        /// Reason code.
        reason: u8,
    },
}

/// Why the broker refused a connection (CONNACK reason code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectRefusal {
    /// 0x86 / 3.1.1 code 4.
    #[error("bad user name or password; check the credentials in the configuration")]
    BadCredentials,
    /// 0x87 / 3.1.1 code 5.
    #[error("not authorized; the broker's access control refuses this client")]
    NotAuthorized,
    /// 0x88 / 3.1.1 code 3.
    #[error("server unavailable; retry later")]
    ServerUnavailable,
    /// 0x89.
    #[error("server busy; retry later")]
    ServerBusy,
    /// 0x8A.
    #[error("this client is banned by the broker")]
    Banned,
    /// 0x85 / 3.1.1 code 2.
    #[error("client id rejected; choose another client id")]
    ClientIdRejected,
    /// 0x84 / 3.1.1 code 1.
    #[error("protocol version not supported by the broker; try the other MQTT version")]
    UnsupportedProtocolVersion,
    /// 0x8C.
    #[error("bad authentication method")]
    BadAuthenticationMethod,
    /// 0x9C / 0x9D.
    #[error("the broker asks to use another server")]
    UseAnotherServer,
    /// 0x97.
    #[error("quota exceeded; retry later")]
    QuotaExceeded,
    /// 0x9F.
    #[error("connection rate exceeded; back off before retrying")]
    ConnectionRateExceeded,
    /// 0x95.
    #[error("CONNECT packet too large for the broker")]
    PacketTooLarge,
    /// Anything else (0x80 unspecified, 0x81 malformed, 0x82 protocol error...).
    #[error("refused with reason code {0:#04x}")]
    Other(u8),
}

impl ConnectRefusal {
    /// The refusal for a CONNACK reason code in MQTT 5 numbering (not 0).
    pub fn from_reason(code: u8) -> ConnectRefusal {
        match code {
            0x86 => ConnectRefusal::BadCredentials,
            0x87 => ConnectRefusal::NotAuthorized,
            0x88 => ConnectRefusal::ServerUnavailable,
            0x89 => ConnectRefusal::ServerBusy,
            0x8A => ConnectRefusal::Banned,
            0x85 => ConnectRefusal::ClientIdRejected,
            0x84 => ConnectRefusal::UnsupportedProtocolVersion,
            0x8C => ConnectRefusal::BadAuthenticationMethod,
            0x9C | 0x9D => ConnectRefusal::UseAnotherServer,
            0x97 => ConnectRefusal::QuotaExceeded,
            0x9F => ConnectRefusal::ConnectionRateExceeded,
            0x95 => ConnectRefusal::PacketTooLarge,
            other => ConnectRefusal::Other(other),
        }
    }

    /// Whether retrying with the same configuration cannot help (credentials, ban, client
    /// id, protocol): the event loop should retry on its slow lane and say so loudly.
    pub fn is_configuration_problem(self) -> bool {
        matches!(
            self,
            ConnectRefusal::BadCredentials
                | ConnectRefusal::NotAuthorized
                | ConnectRefusal::Banned
                | ConnectRefusal::ClientIdRejected
                | ConnectRefusal::UnsupportedProtocolVersion
                | ConnectRefusal::BadAuthenticationMethod
                | ConnectRefusal::PacketTooLarge
        )
    }
}

/// The connection must be closed (the session is already back in its disconnected state and
/// keeps every record; call [`Session::connect`] on the next connection).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// CONNACK refused the connection.
    #[error("the broker refused the connection: {refusal}{}", fmt_reason(reason_string.as_ref()))]
    ConnectRefused {
        /// Why.
        refusal: ConnectRefusal,
        /// Broker's reason string (MQTT 5).
        reason_string: Option<String>,
        /// Another server to use (MQTT 5).
        server_reference: Option<String>,
    },
    /// No CONNACK in time.
    #[error("no CONNACK within {timeout_ms} ms of CONNECT; close the connection and reconnect")]
    ConnAckTimeout {
        /// The timeout.
        timeout_ms: u64,
    },
    /// No answer to a PINGREQ in time: the link is half-open or the broker is stuck.
    #[error("no packet from the broker within {timeout_ms} ms of PINGREQ: the link is half-open; close it and reconnect")]
    KeepAliveTimeout {
        /// The timeout.
        timeout_ms: u64,
    },
    /// The broker sent DISCONNECT.
    #[error("the broker closed the connection with reason code {reason:#04x}{}", fmt_reason(reason_string.as_ref()))]
    ServerDisconnected {
        /// Reason code (0 in MQTT 3.1.1, where only a broker bug sends DISCONNECT).
        reason: u8,
        /// Broker's reason string.
        reason_string: Option<String>,
        /// Another server to use.
        server_reference: Option<String>,
    },
    /// The broker broke the protocol.
    #[error("protocol violation by the broker: {what}; close the connection")]
    Protocol {
        /// What happened.
        what: String,
    },
}

fn fmt_reason(reason_string: Option<&String>) -> String {
    reason_string.map_or_else(String::new, |s| format!(" ({s})"))
}

/// Why [`Session::offer`] refused a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OfferError {
    /// The session already holds `window` records; wait for acks ([`Session::free_slots`]).
    #[error("the session already holds {held} records (window {window}); offer more after acks")]
    Full {
        /// Records held.
        held: usize,
        /// Window.
        window: u16,
    },
    /// The record's topic can never be published: dead-letter it.
    #[error("record {seq} cannot be published: {source}")]
    Topic {
        /// Record.
        seq: u64,
        /// Why.
        source: TopicError,
    },
    /// The session already holds this sequence number.
    #[error("record {seq} is already held by the session")]
    DuplicateSeq {
        /// Record.
        seq: u64,
    },
}

/// Why [`Session::subscribe`] or [`Session::unsubscribe`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// A bad filter.
    #[error(transparent)]
    Topic(#[from] TopicError),
    /// No filter given.
    #[error("no topic filter given")]
    Empty,
    /// Every packet id is in use.
    #[error("no free packet id; wait for acknowledgements")]
    NoPacketId,
}

/// Counters since the session was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionStats {
    /// Records reported [`Action::Acked`].
    pub acked: u64,
    /// Records reported [`Action::Rejected`].
    pub rejected: u64,
    /// Records reported [`Action::Deferred`].
    pub deferred: u64,
    /// Records reported [`Action::Expired`].
    pub expired: u64,
    /// Records reported [`Action::PossibleDuplicate`].
    pub possible_duplicates: u64,
    /// PUBLISH or PUBREL packets written again after a reconnect.
    pub resent: u64,
    /// Successful CONNACKs.
    pub connects: u64,
    /// Incoming QoS 2 re-deliveries not handed to the caller again.
    pub inbound_duplicates_suppressed: u64,
    /// Acks for packet ids we have nothing in flight under (ignored).
    pub unexpected_acks: u64,
    /// Round trips of QoS 1 records: last PUBLISH written to PUBACK.
    pub ack_qos1: AckRoundTrips,
    /// Round trips of QoS 2 records: last PUBLISH (or PUBREL, after a reconnect) written to
    /// PUBCOMP.
    pub ack_qos2: AckRoundTrips,
}

/// Upper bounds (seconds) of the ack round-trip histogram's buckets.
pub const ACK_BUCKETS_S: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A histogram of ack round trips (successful acks of records written on this connection).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AckRoundTrips {
    /// Observations at most [`ACK_BUCKETS_S`]`[i]` (not cumulative).
    pub buckets: [u64; ACK_BUCKETS_S.len()],
    /// Observations above the last bound.
    pub over: u64,
    /// Sum of the observations in microseconds.
    pub sum_us: u64,
}

impl AckRoundTrips {
    /// Records one round trip.
    pub fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        match ACK_BUCKETS_S.iter().position(|&b| s <= b) {
            Some(i) => self.buckets[i] += 1,
            None => self.over += 1,
        }
        self.sum_us = self
            .sum_us
            .saturating_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    /// How many round trips were recorded.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum::<u64>() + self.over
    }

    /// Cumulative (bound in seconds, observations at most it), as Prometheus writes them.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut n = 0;
        ACK_BUCKETS_S
            .iter()
            .zip(self.buckets)
            .map(|(&b, c)| {
                n += c;
                (b, n)
            })
            .collect()
    }
}

/// The connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// No connection; records wait.
    Disconnected,
    /// CONNECT written, waiting for CONNACK.
    Connecting,
    /// CONNACK accepted.
    Connected,
    /// [`Session::disconnect`] was called: nothing is sent until [`Session::connect`].
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Next write is the PUBLISH.
    Publish,
    /// PUBREC received; next write is the PUBREL.
    Release,
}

#[derive(Debug)]
struct Slot {
    record: OutRecord,
    /// 0 until the record is first written (QoS 1/2).
    packet_id: u16,
    stage: Stage,
    /// Written at least once (on any connection, or before a restart).
    written: bool,
    /// Written on the current connection and counted in `in_flight` (QoS 1/2).
    on_wire: bool,
    /// The next PUBLISH write must be reported as a possible duplicate.
    possible_duplicate: bool,
    /// What the caller was last told to record (QoS 2).
    recorded: Option<Qos2State>,
    /// When its last PUBLISH/PUBREL was written on the current connection.
    written_at: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InboundQos2 {
    /// Handed to the caller, PUBREC not sent yet.
    Pending,
    /// PUBREC sent (or caller stored it); waiting for PUBREL.
    Received,
}

#[derive(Debug)]
struct InboundEntry {
    id: u64,
    packet_id: u16,
    qos: QoS,
    ready: bool,
}

/// Free/used packet ids, 1..=65535.
#[derive(Debug)]
struct PacketIds {
    used: Vec<u64>,
    next: u16,
}

impl PacketIds {
    fn new() -> PacketIds {
        PacketIds {
            used: vec![0; 1024],
            next: 1,
        }
    }

    fn is_used(&self, id: u16) -> bool {
        self.used[usize::from(id / 64)] & (1 << (id % 64)) != 0
    }

    /// Marks `id` used; false if it already was (or is 0).
    fn reserve(&mut self, id: u16) -> bool {
        if id == 0 || self.is_used(id) {
            return false;
        }
        self.used[usize::from(id / 64)] |= 1 << (id % 64);
        true
    }

    fn free(&mut self, id: u16) {
        debug_assert!(id == 0 || self.is_used(id), "freeing unused packet id {id}");
        self.used[usize::from(id / 64)] &= !(1 << (id % 64));
    }

    /// The next free id after the last one handed out (round robin, so that a late ack of
    /// a just-freed id cannot be mistaken for the ack of its next user).
    fn allocate(&mut self) -> Option<u16> {
        let mut id = self.next;
        for _ in 0..u16::MAX {
            if id != 0 && !self.is_used(id) {
                self.reserve(id);
                self.next = id.wrapping_add(1);
                return Some(id);
            }
            id = id.wrapping_add(1);
        }
        None
    }
}

/// The MQTT session: see the module documentation.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    codec: Codec,
    state: ConnectionState,

    // Outgoing records, in offer order (restored QoS 2 records among them by seq).
    slots: BTreeMap<u64, Slot>,
    next_ord: u64,
    /// After [`Session::restore`] and until the first connect: the restored records
    /// (sequence number, ord) and how many records were put before each, so that records
    /// offered again keep their original order with the restored ones.
    restored: Vec<(u64, u64, u64)>,
    by_packet_id: HashMap<u16, u64>,
    by_seq: HashMap<u64, u64>,
    packet_ids: PacketIds,
    /// Every slot below this ord was written on the current connection.
    cursor: u64,
    /// Slots written on the current connection and not done (QoS 1/2).
    in_flight: usize,

    // Connection parameters from CONNACK.
    broker_receive_maximum: u16,
    broker_max_packet_bytes: Option<u32>,
    broker_max_qos: QoS,
    broker_retain_available: bool,
    keep_alive: Duration,

    // Time.
    connect_sent_at: Option<Instant>,
    last_write: Option<Instant>,
    last_read: Option<Instant>,
    ping_sent_at: Option<Instant>,

    // Identity of the connection and of the broker session, for inbound tokens.
    conn_id: u64,
    broker_epoch: u64,

    // Subscriptions.
    subscriptions: Vec<SubscribeFilter>,
    pending_subscribe: HashMap<u16, Vec<SubscribeFilter>>,
    to_unsubscribe: Vec<String>,
    pending_unsubscribe: HashMap<u16, Vec<String>>,

    // Inbound.
    inbound_order: VecDeque<InboundEntry>,
    inbound_next_id: u64,
    inbound_qos2: HashMap<u16, InboundQos2>,

    stats: SessionStats,
}

impl Session {
    /// A new session with nothing in flight.
    pub fn new(config: SessionConfig) -> Result<Session, ConfigError> {
        config.validate()?;
        let codec = Codec::new(config.protocol, INCOMING_PACKET_BYTES_DEFAULT);
        let keep_alive = Duration::from_secs(config.keep_alive.as_secs());
        Ok(Session {
            config,
            codec,
            state: ConnectionState::Disconnected,
            slots: BTreeMap::new(),
            next_ord: 0,
            restored: Vec::new(),
            by_packet_id: HashMap::new(),
            by_seq: HashMap::new(),
            packet_ids: PacketIds::new(),
            cursor: 0,
            in_flight: 0,
            broker_receive_maximum: BROKER_RECEIVE_MAXIMUM_DEFAULT,
            broker_max_packet_bytes: None,
            broker_max_qos: QoS::ExactlyOnce,
            broker_retain_available: true,
            keep_alive,
            connect_sent_at: None,
            last_write: None,
            last_read: None,
            ping_sent_at: None,
            conn_id: 0,
            broker_epoch: 0,
            subscriptions: Vec::new(),
            pending_subscribe: HashMap::new(),
            to_unsubscribe: Vec::new(),
            pending_unsubscribe: HashMap::new(),
            inbound_order: VecDeque::new(),
            inbound_next_id: 0,
            inbound_qos2: HashMap::new(),
            stats: SessionStats::default(),
        })
    }

    /// A session after a process restart: `inflight` are the QoS 2 records whose progress was
    /// recorded ([`Action::Qos2Progress`]) and that were not acked. They keep their packet
    /// ids and are finished on the next connection: PUBREL for [`Qos2State::Released`] when
    /// the broker kept the session, PUBLISH with DUP otherwise.
    ///
    /// The caller then offers its other unacked records as usual (not these again), before
    /// calling [`Session::connect`]: each one offered then is placed before the first
    /// restored record with a larger sequence number, so that the original order holds across
    /// the restart (records offered after the first connect come after all of them).
    pub fn restore(
        config: SessionConfig,
        mut inflight: Vec<Qos2Restore>,
    ) -> Result<Session, RestoreError> {
        let mut session = Session::new(config)?;
        inflight.sort_by_key(|r| r.record.seq);
        for r in inflight {
            let seq = r.record.seq;
            if r.record.qos != QoS::ExactlyOnce {
                return Err(RestoreError::NotQos2 { seq });
            }
            if r.packet_id == 0 {
                return Err(RestoreError::PacketIdZero { seq });
            }
            if session.by_seq.contains_key(&seq) {
                return Err(RestoreError::DuplicateSeq { seq });
            }
            if !session.packet_ids.reserve(r.packet_id) {
                return Err(RestoreError::DuplicatePacketId {
                    packet_id: r.packet_id,
                });
            }
            let ord = (session.restored.len() as u64 + 1) * RESTORED_ORD_GAP;
            session.next_ord = ord + RESTORED_ORD_GAP;
            session.restored.push((seq, ord, 0));
            session.by_seq.insert(seq, ord);
            session.by_packet_id.insert(r.packet_id, ord);
            session.slots.insert(
                ord,
                Slot {
                    record: r.record,
                    packet_id: r.packet_id,
                    stage: match r.state {
                        Qos2State::Published => Stage::Publish,
                        Qos2State::Released => Stage::Release,
                    },
                    written: true,
                    on_wire: false,
                    possible_duplicate: false,
                    recorded: Some(r.state),
                    written_at: None,
                },
            );
        }
        Ok(session)
    }

    // -----------------------------------------------------------------------------------
    // Queries

    /// The connection state.
    pub fn state(&self) -> ConnectionState {
        self.state
    }

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// Records held (offered or restored, not yet acked, rejected or expired).
    pub fn held(&self) -> usize {
        self.slots.len()
    }

    /// QoS 1/2 records written on this connection and not done.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The window in force: the configured one, bounded by the broker's Receive Maximum.
    pub fn window(&self) -> u16 {
        self.config.window.min(self.broker_receive_maximum)
    }

    /// How many more records [`Session::offer`] accepts now ("may I send more?").
    pub fn free_slots(&self) -> usize {
        usize::from(self.config.window).saturating_sub(self.slots.len())
    }

    /// Packet ids of the records in flight or waiting, by sequence number (for diagnostics
    /// and tests).
    pub fn packet_ids(&self) -> Vec<(u64, u16)> {
        self.slots
            .values()
            .filter(|s| s.packet_id != 0)
            .map(|s| (s.record.seq, s.packet_id))
            .collect()
    }

    /// The filters that are re-sent after every reconnect.
    pub fn subscriptions(&self) -> &[SubscribeFilter] {
        &self.subscriptions
    }

    /// When [`Session::handle_tick`] must be called next (keep alive, ping and CONNACK
    /// timeouts, the TTL of a record waiting to be written); `None` if nothing is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut due: Option<Instant> = None;
        let mut consider = |t: Instant| due = Some(due.map_or(t, |d| d.min(t)));
        match self.state {
            ConnectionState::Connecting => {
                if let Some(t) = self.connect_sent_at {
                    consider(t + self.config.connect_timeout);
                }
            }
            ConnectionState::Connected if !self.keep_alive.is_zero() => {
                if let Some(t) = self.ping_sent_at {
                    consider(t + self.config.ping_timeout);
                } else if let (Some(w), Some(r)) = (self.last_write, self.last_read) {
                    consider(w.min(r) + self.keep_alive);
                }
            }
            _ => {}
        }
        if self.state != ConnectionState::Closed && self.config.expired == ExpiredPolicy::Drop {
            for slot in self.slots.values().filter(|s| !s.written) {
                if let Some(t) = slot.record.expires_at {
                    consider(t);
                }
            }
        }
        due
    }

    // -----------------------------------------------------------------------------------
    // Connection life cycle

    /// Starts a connection: returns the CONNECT packet to write first. Any connection in
    /// progress is considered lost.
    pub fn connect(&mut self, now: Instant) -> Packet {
        if self.state != ConnectionState::Disconnected {
            self.connection_lost();
        }
        // From now on, offers go to the end.
        self.restored.clear();
        self.state = ConnectionState::Connecting;
        self.connect_sent_at = Some(now);
        self.last_write = Some(now);
        self.last_read = Some(now);
        let v5 = self.config.protocol == Protocol::V5;
        Packet::Connect(Connect {
            protocol: self.config.protocol,
            client_id: self.config.client_id.clone(),
            keep_alive_s: self.config.keep_alive.as_secs() as u16,
            // Our delivery guarantee does not depend on the broker's session, but exactly-once
            // across a restart and subscriptions kept while offline do: resumed unless the
            // configuration asks for a clean start, which then holds for every connect (and
            // with expiry 0 the broker keeps nothing of ours in between).
            clean_start: self.config.clean_start,
            session_expiry_s: v5.then_some(if self.config.clean_start {
                0
            } else {
                self.config.session_expiry_s
            }),
            receive_maximum: v5.then_some(self.config.inbound_receive_maximum),
            username: self.config.username.clone(),
            password: self.config.password.clone(),
        })
    }

    /// The connection broke (socket error, EOF, or the caller closed it after an [`Error`]).
    /// Every record is kept and will be written again on the next connection.
    pub fn connection_lost(&mut self) {
        if self.state == ConnectionState::Closed {
            return;
        }
        self.state = ConnectionState::Disconnected;
        self.drop_connection_state();
    }

    fn drop_connection_state(&mut self) {
        self.reset_wire();
        self.connect_sent_at = None;
        self.ping_sent_at = None;
        for (id, _) in self.pending_subscribe.drain() {
            self.packet_ids.free(id);
        }
        for (id, _) in self.pending_unsubscribe.drain() {
            self.packet_ids.free(id);
        }
        // Tokens of this connection become stale: the broker re-delivers what we did not ack.
        self.inbound_order.clear();
        self.conn_id += 1;
    }

    /// A deliberate disconnect: returns the DISCONNECT to write (if connected) and enters
    /// [`ConnectionState::Closed`], where nothing is sent or resent until
    /// [`Session::connect`] is called again. Records stay held (they are in the store).
    pub fn disconnect(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if self.state == ConnectionState::Connected {
            self.send(&mut out, now, Packet::Disconnect(Disconnect::default()));
        }
        if self.state != ConnectionState::Closed {
            self.drop_connection_state();
        }
        self.state = ConnectionState::Closed;
        out
    }

    // -----------------------------------------------------------------------------------
    // Outgoing records

    /// Hands a record to the session. It is written at once if connected and the window
    /// allows, otherwise kept (in offer order) until it can be.
    pub fn offer(&mut self, record: OutRecord, now: Instant) -> Result<Vec<Action>, OfferError> {
        if self.slots.len() >= usize::from(self.config.window) {
            return Err(OfferError::Full {
                held: self.slots.len(),
                window: self.config.window,
            });
        }
        if let Err(source) = validate_topic_name(&record.topic) {
            return Err(OfferError::Topic {
                seq: record.seq,
                source,
            });
        }
        if self.by_seq.contains_key(&record.seq) {
            return Err(OfferError::DuplicateSeq { seq: record.seq });
        }
        let ord = self.ord_for_offer(record.seq);
        self.by_seq.insert(record.seq, ord);
        self.slots.insert(
            ord,
            Slot {
                record,
                packet_id: 0,
                stage: Stage::Publish,
                written: false,
                on_wire: false,
                possible_duplicate: false,
                recorded: None,
                written_at: None,
            },
        );
        let mut out = Vec::new();
        self.pump(&mut out, now);
        Ok(out)
    }

    /// Where an offered record goes in the order of slots: at the end, except between a
    /// restore and the first connect (see [`Session::restore`]).
    fn ord_for_offer(&mut self, seq: u64) -> u64 {
        if let Some(i) = self.restored.iter().position(|&(r, _, _)| r > seq) {
            // Before restored record i: after restored record i-1 (or 0) and after the
            // records already put there.
            let (_, before, placed) = self.restored[i];
            let ord = before - RESTORED_ORD_GAP + 1 + placed;
            self.restored[i].2 += 1;
            return ord;
        }
        let ord = self.next_ord;
        self.next_ord += 1;
        ord
    }

    fn remove_slot(&mut self, ord: u64) -> Option<Slot> {
        let slot = self.slots.remove(&ord)?;
        self.by_seq.remove(&slot.record.seq);
        if slot.packet_id != 0 {
            self.by_packet_id.remove(&slot.packet_id);
            self.packet_ids.free(slot.packet_id);
        }
        if slot.on_wire {
            self.in_flight -= 1;
        }
        Some(slot)
    }

    /// Nothing is on the wire any more (a new connection starts from the first record).
    fn reset_wire(&mut self) {
        self.cursor = 0;
        self.in_flight = 0;
        for slot in self.slots.values_mut() {
            slot.on_wire = false;
        }
    }

    fn send(&mut self, out: &mut Vec<Action>, now: Instant, packet: Packet) {
        self.last_write = Some(now);
        out.push(Action::Send(packet));
    }

    /// Writes the records the window allows, in order.
    fn pump(&mut self, out: &mut Vec<Action>, now: Instant) {
        if self.state != ConnectionState::Connected {
            return;
        }
        let window = usize::from(self.window());
        while self.in_flight < window {
            let Some((&ord, _)) = self.slots.range(self.cursor..).next() else {
                break;
            };
            self.cursor = ord + 1;
            if !self.write_slot(ord, out, now) {
                self.cursor = ord;
                break;
            }
        }
    }

    /// Writes (or expires, or rejects) one record; false if it must wait (no packet id).
    fn write_slot(&mut self, ord: u64, out: &mut Vec<Action>, now: Instant) -> bool {
        let v5 = self.config.protocol == Protocol::V5;
        let policy = self.config.expired;
        let Some(slot) = self.slots.get_mut(&ord) else {
            return true;
        };
        let seq = slot.record.seq;
        let qos = slot.record.qos;
        if Session::is_expired(policy, slot, now) {
            self.slots.remove(&ord);
            self.by_seq.remove(&seq);
            self.stats.expired += 1;
            out.push(Action::Expired { seq });
            return true;
        }
        if qos != QoS::AtMostOnce && slot.packet_id == 0 {
            let Some(id) = self.packet_ids.allocate() else {
                // Cannot happen (the window leaves ids free); wait for acks rather than reuse.
                return false;
            };
            slot.packet_id = id;
            self.by_packet_id.insert(id, ord);
        }
        let packet_id = slot.packet_id;

        if slot.stage == Stage::Release {
            // PUBREC was received (and recorded) on an earlier connection of this session.
            slot.written = true;
            slot.on_wire = true;
            slot.written_at = Some(now);
            self.in_flight += 1;
            self.stats.resent += 1;
            self.send(out, now, Packet::PubRel(Ack::success(packet_id)));
            return true;
        }

        let send_late = policy == ExpiredPolicy::Send;
        let message_expiry_s = if v5 {
            slot.record.expires_at.and_then(|t| {
                let left = t.saturating_duration_since(now);
                if left.is_zero() && send_late {
                    // Sent late on purpose: with no expiry interval, as a message that was
                    // never given one (the broker would discard it at once otherwise).
                    return None;
                }
                // Round up, at least 1: 0 would mean "expired" to some brokers.
                let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
                Some(u32::try_from(secs.max(1)).unwrap_or(u32::MAX))
            })
        } else {
            None
        };
        let publish = Publish {
            topic: slot.record.topic.clone(),
            payload: slot.record.payload.clone(),
            qos,
            retain: slot.record.retain,
            dup: slot.written && qos != QoS::AtMostOnce,
            packet_id,
            message_expiry_s,
            user_properties: if v5 {
                slot.record.user_properties.clone()
            } else {
                Vec::new()
            },
        };
        let packet = Packet::Publish(publish);
        // What the broker announced it cannot take would make it close the connection, and
        // the record would be resent after every reconnect: refuse it here instead.
        let refusal = if qos > self.broker_max_qos {
            Some((
                reason::QOS_NOT_SUPPORTED,
                format!(
                    "the record has QoS {}, the broker accepts at most QoS {}",
                    qos as u8, self.broker_max_qos as u8
                ),
            ))
        } else if slot.record.retain && !self.broker_retain_available {
            Some((
                reason::RETAIN_NOT_SUPPORTED,
                "the record is retained, the broker does not accept retained messages".to_owned(),
            ))
        } else {
            self.broker_max_packet_bytes.and_then(|max| {
                let len = self.codec.encoded_len(&packet);
                (len > max as usize).then(|| {
                    (
                        reason::PACKET_TOO_LARGE,
                        format!("the PUBLISH is {len} bytes, the broker accepts at most {max}"),
                    )
                })
            })
        };
        if let Some((code, why)) = refusal {
            self.remove_slot(ord);
            self.stats.rejected += 1;
            out.push(Action::Rejected {
                seq,
                reason: code,
                reason_string: Some(why),
            });
            return true;
        }
        let Some(slot) = self.slots.get_mut(&ord) else {
            return true;
        };
        if slot.written {
            self.stats.resent += 1;
        }
        if slot.possible_duplicate {
            slot.possible_duplicate = false;
            self.stats.possible_duplicates += 1;
            out.push(Action::PossibleDuplicate { seq, qos });
        }
        if qos == QoS::ExactlyOnce && slot.recorded != Some(Qos2State::Published) {
            slot.recorded = Some(Qos2State::Published);
            out.push(Action::Qos2Progress {
                seq,
                packet_id,
                state: Qos2State::Published,
            });
        }
        slot.written = true;
        slot.on_wire = qos != QoS::AtMostOnce;
        slot.written_at = Some(now);
        self.send(out, now, packet);
        if qos == QoS::AtMostOnce {
            self.slots.remove(&ord);
            self.by_seq.remove(&seq);
            self.stats.acked += 1;
            out.push(Action::Acked { seq });
        } else {
            self.in_flight += 1;
        }
        true
    }

    /// Whether `slot` must be reported [`Action::Expired`] at `now`: never written, past its
    /// TTL, and the policy drops such records.
    fn is_expired(policy: ExpiredPolicy, slot: &Slot, now: Instant) -> bool {
        policy == ExpiredPolicy::Drop
            && !slot.written
            && slot.record.expires_at.is_some_and(|t| t <= now)
    }

    /// The slot in flight on this connection under `packet_id`, if any.
    fn in_flight_slot(&self, packet_id: u16) -> Option<u64> {
        let ord = *self.by_packet_id.get(&packet_id)?;
        self.slots.get(&ord)?.on_wire.then_some(ord)
    }

    fn finish(&mut self, ord: u64, ack: Ack, out: &mut Vec<Action>, now: Instant) {
        let Some(slot) = self.remove_slot(ord) else {
            return;
        };
        let seq = slot.record.seq;
        if ack.reason < reason::FIRST_FAILURE {
            self.stats.acked += 1;
            if let Some(t) = slot.written_at {
                let rtt = now.saturating_duration_since(t);
                match slot.record.qos {
                    QoS::AtLeastOnce => self.stats.ack_qos1.observe(rtt),
                    QoS::ExactlyOnce => self.stats.ack_qos2.observe(rtt),
                    QoS::AtMostOnce => {}
                }
            }
            out.push(Action::Acked { seq });
        } else if ack.reason == reason::QUOTA_EXCEEDED {
            self.stats.deferred += 1;
            out.push(Action::Deferred { seq });
        } else {
            self.stats.rejected += 1;
            out.push(Action::Rejected {
                seq,
                reason: ack.reason,
                reason_string: ack.reason_string,
            });
        }
    }

    // -----------------------------------------------------------------------------------
    // Incoming packets

    /// Handles one packet from the broker. `Err` means: close the connection (the session is
    /// already disconnected and keeps its records).
    pub fn handle_incoming(&mut self, packet: Packet, now: Instant) -> Result<Vec<Action>, Error> {
        if self.state == ConnectionState::Closed || self.state == ConnectionState::Disconnected {
            // Bytes still buffered from a connection we gave up on.
            return Ok(Vec::new());
        }
        self.last_read = Some(now);
        self.ping_sent_at = None;
        if self.state == ConnectionState::Connecting {
            return match packet {
                Packet::ConnAck(connack) => self.handle_connack(connack, now),
                // Some brokers answer a CONNECT they refuse with DISCONNECT.
                Packet::Disconnect(d) => Err(self.fail(Error::ServerDisconnected {
                    reason: d.reason,
                    reason_string: d.reason_string,
                    server_reference: d.server_reference,
                })),
                other => Err(self.fail(Error::Protocol {
                    what: format!("expected CONNACK, received {}", packet_name(&other)),
                })),
            };
        }
        let mut out = Vec::new();
        match packet {
            Packet::PubAck(ack) => match self.in_flight_slot(ack.packet_id) {
                Some(ord)
                    if self.slots[&ord].record.qos == QoS::AtLeastOnce
                        && self.slots[&ord].stage == Stage::Publish =>
                {
                    self.finish(ord, ack, &mut out, now);
                    self.pump(&mut out, now);
                }
                _ => self.stats.unexpected_acks += 1,
            },
            Packet::PubRec(ack) => self.handle_pubrec(ack, &mut out, now),
            Packet::PubComp(ack) => match self.in_flight_slot(ack.packet_id) {
                Some(ord)
                    if self.slots[&ord].record.qos == QoS::ExactlyOnce
                        && self.slots[&ord].stage == Stage::Release =>
                {
                    // 0x92 "packet id not found": the broker finished this transaction
                    // already (we restarted between its PUBCOMP and our record): delivered.
                    let ack = Ack {
                        reason: reason::SUCCESS,
                        ..ack
                    };
                    self.finish(ord, ack, &mut out, now);
                    self.pump(&mut out, now);
                }
                _ => self.stats.unexpected_acks += 1,
            },
            Packet::Publish(publish) => self.handle_publish(publish, &mut out, now)?,
            Packet::PubRel(ack) => match self.inbound_qos2.get(&ack.packet_id) {
                Some(InboundQos2::Received) => {
                    self.inbound_qos2.remove(&ack.packet_id);
                    self.send(&mut out, now, Packet::PubComp(Ack::success(ack.packet_id)));
                }
                // We have not sent PUBREC: the caller is still storing it. Ignore; the
                // broker repeats PUBREL after our PUBREC.
                Some(InboundQos2::Pending) => {}
                None => {
                    // Unknown (e.g. we restarted): complete it so the broker can free it.
                    let ack = Ack {
                        packet_id: ack.packet_id,
                        reason: reason::PACKET_ID_NOT_FOUND,
                        reason_string: None,
                    };
                    self.send(&mut out, now, Packet::PubComp(ack));
                }
            },
            Packet::SubAck(suback) => self.handle_suback(suback, &mut out)?,
            Packet::UnsubAck(unsuback) => self.handle_unsuback(unsuback, &mut out),
            Packet::PingResp => {}
            Packet::Disconnect(d) => {
                return Err(self.fail(Error::ServerDisconnected {
                    reason: d.reason,
                    reason_string: d.reason_string,
                    server_reference: d.server_reference,
                }));
            }
            other @ (Packet::Connect(_)
            | Packet::ConnAck(_)
            | Packet::Subscribe(_)
            | Packet::Unsubscribe(_)
            | Packet::PingReq) => {
                return Err(self.fail(Error::Protocol {
                    what: format!("a broker does not send {}", packet_name(&other)),
                }));
            }
        }
        Ok(out)
    }

    fn fail(&mut self, error: Error) -> Error {
        self.connection_lost();
        error
    }

    fn handle_connack(&mut self, connack: ConnAck, now: Instant) -> Result<Vec<Action>, Error> {
        if connack.reason != reason::SUCCESS {
            return Err(self.fail(Error::ConnectRefused {
                refusal: ConnectRefusal::from_reason(connack.reason),
                reason_string: connack.reason_string,
                server_reference: connack.server_reference,
            }));
        }
        if connack.receive_maximum == Some(0) {
            return Err(self.fail(Error::Protocol {
                what: "CONNACK announces a Receive Maximum of 0".to_owned(),
            }));
        }
        self.state = ConnectionState::Connected;
        self.connect_sent_at = None;
        self.stats.connects += 1;
        self.broker_receive_maximum = match self.config.protocol {
            Protocol::V5 => connack
                .receive_maximum
                .unwrap_or(BROKER_RECEIVE_MAXIMUM_DEFAULT),
            Protocol::V311 => self.config.v311_receive_maximum,
        };
        self.broker_max_packet_bytes = connack.maximum_packet_bytes;
        self.broker_max_qos = connack
            .maximum_qos
            .and_then(QoS::from_u8)
            .unwrap_or(QoS::ExactlyOnce);
        self.broker_retain_available = connack.retain_available.unwrap_or(true);
        self.keep_alive = Duration::from_secs(u64::from(
            connack
                .server_keep_alive_s
                .unwrap_or(self.config.keep_alive.as_secs() as u16),
        ));
        let session_present = connack.session_present;
        if !session_present {
            // A new broker session: its packet ids of inbound QoS 2 messages start afresh,
            // and tokens of the old session must not mark the new one's ids.
            self.inbound_qos2.clear();
            self.broker_epoch += 1;
        }
        for slot in self.slots.values_mut().filter(|s| s.written) {
            match slot.record.qos {
                QoS::AtLeastOnce => slot.possible_duplicate = true,
                QoS::ExactlyOnce if !session_present => {
                    // The broker forgot the transaction: only a new PUBLISH delivers it, and
                    // it may have reached subscribers already.
                    slot.stage = Stage::Publish;
                    slot.possible_duplicate = true;
                }
                _ => {}
            }
        }
        let mut out = vec![Action::Connected { session_present }];
        if !self.subscriptions.is_empty() {
            if let Some(id) = self.packet_ids.allocate() {
                let filters = self.subscriptions.clone();
                self.pending_subscribe.insert(id, filters.clone());
                self.send(
                    &mut out,
                    now,
                    Packet::Subscribe(Subscribe {
                        packet_id: id,
                        filters,
                    }),
                );
            }
        }
        if !self.to_unsubscribe.is_empty() {
            if let Some(id) = self.packet_ids.allocate() {
                let filters = self.to_unsubscribe.clone();
                self.pending_unsubscribe.insert(id, filters.clone());
                self.send(
                    &mut out,
                    now,
                    Packet::Unsubscribe(Unsubscribe {
                        packet_id: id,
                        filters,
                    }),
                );
            }
        }
        self.reset_wire();
        self.pump(&mut out, now);
        Ok(out)
    }

    fn handle_pubrec(&mut self, ack: Ack, out: &mut Vec<Action>, now: Instant) {
        let Some(ord) = self.in_flight_slot(ack.packet_id) else {
            // Not ours (any more): release it so the broker can free the id.
            self.stats.unexpected_acks += 1;
            let rel = Ack {
                packet_id: ack.packet_id,
                reason: reason::PACKET_ID_NOT_FOUND,
                reason_string: None,
            };
            self.send(out, now, Packet::PubRel(rel));
            return;
        };
        let slot = &self.slots[&ord];
        if slot.record.qos != QoS::ExactlyOnce {
            self.stats.unexpected_acks += 1;
            return;
        }
        if ack.reason >= reason::FIRST_FAILURE {
            // A failed PUBREC ends the transaction (MQTT 5 4.3.3): no PUBREL.
            self.finish(ord, ack, out, now);
            self.pump(out, now);
            return;
        }
        let packet_id = slot.packet_id;
        let seq = slot.record.seq;
        let Some(slot) = self.slots.get_mut(&ord) else {
            return;
        };
        slot.stage = Stage::Release;
        if slot.recorded != Some(Qos2State::Released) {
            slot.recorded = Some(Qos2State::Released);
            out.push(Action::Qos2Progress {
                seq,
                packet_id,
                state: Qos2State::Released,
            });
        }
        self.send(out, now, Packet::PubRel(Ack::success(packet_id)));
    }

    fn handle_publish(
        &mut self,
        publish: Publish,
        out: &mut Vec<Action>,
        now: Instant,
    ) -> Result<(), Error> {
        if validate_topic_name(&publish.topic).is_err() {
            return Err(self.fail(Error::Protocol {
                what: format!("PUBLISH to an invalid topic name {:?}", publish.topic),
            }));
        }
        match publish.qos {
            QoS::AtMostOnce => {
                out.push(Action::Incoming(IncomingPublish {
                    publish,
                    token: None,
                }));
            }
            QoS::AtLeastOnce => {
                let token = self.enqueue_inbound(publish.packet_id, QoS::AtLeastOnce);
                out.push(Action::Incoming(IncomingPublish {
                    publish,
                    token: Some(token),
                }));
            }
            QoS::ExactlyOnce => match self.inbound_qos2.get(&publish.packet_id) {
                Some(InboundQos2::Received) => {
                    // Stored already; the broker missed our PUBREC.
                    self.stats.inbound_duplicates_suppressed += 1;
                    self.send(out, now, Packet::PubRec(Ack::success(publish.packet_id)));
                }
                Some(InboundQos2::Pending) => {
                    // Handed to the caller already, not stored yet: do not hand it again; its
                    // PUBREC goes out when that token is acked.
                    self.stats.inbound_duplicates_suppressed += 1;
                    let queued = self
                        .inbound_order
                        .iter()
                        .any(|e| e.qos == QoS::ExactlyOnce && e.packet_id == publish.packet_id);
                    if queued {
                        return Ok(());
                    }
                    let id = self.inbound_next_id;
                    self.inbound_next_id += 1;
                    self.inbound_order.push_back(InboundEntry {
                        id,
                        packet_id: publish.packet_id,
                        qos: QoS::ExactlyOnce,
                        ready: false,
                    });
                }
                None => {
                    self.inbound_qos2
                        .insert(publish.packet_id, InboundQos2::Pending);
                    let token = self.enqueue_inbound(publish.packet_id, QoS::ExactlyOnce);
                    out.push(Action::Incoming(IncomingPublish {
                        publish,
                        token: Some(token),
                    }));
                }
            },
        }
        Ok(())
    }

    fn enqueue_inbound(&mut self, packet_id: u16, qos: QoS) -> InboundToken {
        let id = self.inbound_next_id;
        self.inbound_next_id += 1;
        self.inbound_order.push_back(InboundEntry {
            id,
            packet_id,
            qos,
            ready: false,
        });
        InboundToken {
            epoch: self.broker_epoch,
            conn: self.conn_id,
            id,
            packet_id,
            qos,
        }
    }

    /// The caller has stored the incoming message of `token` durably: the session may now
    /// acknowledge it (PUBACK for QoS 1, PUBREC for QoS 2). Acks go out in the order the
    /// messages arrived (MQTT 4.6), so this may release several or none.
    pub fn ack_incoming(&mut self, token: InboundToken, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if token.epoch != self.broker_epoch {
            // The broker has lost that session: it will not re-deliver, nothing to ack.
            return out;
        }
        if token.qos == QoS::ExactlyOnce {
            if let Some(state) = self.inbound_qos2.get_mut(&token.packet_id) {
                *state = InboundQos2::Received;
            }
        }
        if token.conn == self.conn_id {
            if let Ok(i) = self.inbound_order.binary_search_by_key(&token.id, |e| e.id) {
                self.inbound_order[i].ready = true;
            }
        } else if token.qos == QoS::ExactlyOnce {
            // Stored, but handed out on an earlier connection: if the broker has re-delivered
            // it on this one, that re-delivery's PUBREC may go now.
            if let Some(e) = self
                .inbound_order
                .iter_mut()
                .find(|e| e.qos == QoS::ExactlyOnce && e.packet_id == token.packet_id)
            {
                e.ready = true;
            }
        }
        if self.state != ConnectionState::Connected {
            return out;
        }
        while self.inbound_order.front().is_some_and(|e| e.ready) {
            let Some(e) = self.inbound_order.pop_front() else {
                break;
            };
            let ack = Ack::success(e.packet_id);
            let packet = if e.qos == QoS::ExactlyOnce {
                Packet::PubRec(ack)
            } else {
                Packet::PubAck(ack)
            };
            self.send(&mut out, now, packet);
        }
        out
    }

    // -----------------------------------------------------------------------------------
    // Subscriptions

    /// Subscribes to `filters` (remembered and re-sent after every reconnect until
    /// unsubscribed or refused). Sends SUBSCRIBE now if connected.
    pub fn subscribe(
        &mut self,
        filters: Vec<SubscribeFilter>,
        now: Instant,
    ) -> Result<Vec<Action>, SubscribeError> {
        if filters.is_empty() {
            return Err(SubscribeError::Empty);
        }
        for f in &filters {
            validate_topic_filter(&f.filter)?;
        }
        let mut out = Vec::new();
        if self.state == ConnectionState::Connected {
            let id = self
                .packet_ids
                .allocate()
                .ok_or(SubscribeError::NoPacketId)?;
            self.pending_subscribe.insert(id, filters.clone());
            self.send(
                &mut out,
                now,
                Packet::Subscribe(Subscribe {
                    packet_id: id,
                    filters: filters.clone(),
                }),
            );
        }
        for f in filters {
            self.to_unsubscribe.retain(|u| *u != f.filter);
            match self.subscriptions.iter_mut().find(|s| s.filter == f.filter) {
                Some(existing) => existing.qos = f.qos,
                None => self.subscriptions.push(f),
            }
        }
        Ok(out)
    }

    /// Unsubscribes from `filters` (forgotten at once; UNSUBSCRIBE is sent now if connected,
    /// and again after a reconnect until the broker acknowledges it).
    pub fn unsubscribe(
        &mut self,
        filters: Vec<String>,
        now: Instant,
    ) -> Result<Vec<Action>, SubscribeError> {
        if filters.is_empty() {
            return Err(SubscribeError::Empty);
        }
        for f in &filters {
            validate_topic_filter(f)?;
        }
        let mut out = Vec::new();
        if self.state == ConnectionState::Connected {
            let id = self
                .packet_ids
                .allocate()
                .ok_or(SubscribeError::NoPacketId)?;
            self.pending_unsubscribe.insert(id, filters.clone());
            self.send(
                &mut out,
                now,
                Packet::Unsubscribe(Unsubscribe {
                    packet_id: id,
                    filters: filters.clone(),
                }),
            );
        }
        for f in filters {
            self.subscriptions.retain(|s| s.filter != f);
            if !self.to_unsubscribe.contains(&f) {
                self.to_unsubscribe.push(f);
            }
        }
        Ok(out)
    }

    fn handle_suback(&mut self, suback: SubAck, out: &mut Vec<Action>) -> Result<(), Error> {
        let Some(filters) = self.pending_subscribe.remove(&suback.packet_id) else {
            self.stats.unexpected_acks += 1;
            return Ok(());
        };
        self.packet_ids.free(suback.packet_id);
        if filters.len() != suback.codes.len() {
            return Err(self.fail(Error::Protocol {
                what: format!(
                    "SUBACK has {} codes for {} filters",
                    suback.codes.len(),
                    filters.len()
                ),
            }));
        }
        for (f, code) in filters.into_iter().zip(suback.codes) {
            let result = if let Some(qos) = QoS::from_u8(code) {
                Ok(qos)
            } else {
                self.subscriptions.retain(|s| s.filter != f.filter);
                Err(code)
            };
            out.push(Action::Subscribed {
                filter: f.filter,
                result,
            });
        }
        Ok(())
    }

    fn handle_unsuback(&mut self, unsuback: UnsubAck, out: &mut Vec<Action>) {
        let Some(filters) = self.pending_unsubscribe.remove(&unsuback.packet_id) else {
            self.stats.unexpected_acks += 1;
            return;
        };
        self.packet_ids.free(unsuback.packet_id);
        for (i, f) in filters.into_iter().enumerate() {
            self.to_unsubscribe.retain(|u| *u != f);
            let reason = unsuback.codes.get(i).copied().unwrap_or(reason::SUCCESS);
            out.push(Action::Unsubscribed { filter: f, reason });
        }
    }

    // -----------------------------------------------------------------------------------
    // Time

    /// Lets time pass: keep alive (PINGREQ when the link was idle for the keep alive),
    /// half-open detection (no packet within the ping timeout after PINGREQ), the CONNACK
    /// timeout, and the TTL of records waiting to be written. `Err` means: close the
    /// connection.
    pub fn handle_tick(&mut self, now: Instant) -> Result<Vec<Action>, Error> {
        let mut out = Vec::new();
        if self.state == ConnectionState::Closed {
            return Ok(out);
        }
        // The timeouts first: an error returns no actions, so nothing may be decided before
        // it (an expiry taken out of the slots and dropped with the error would leave its
        // record leased in the store until the next restart).
        match self.state {
            ConnectionState::Connecting => {
                if let Some(t) = self.connect_sent_at {
                    if now.saturating_duration_since(t) >= self.config.connect_timeout {
                        return Err(self.fail(Error::ConnAckTimeout {
                            timeout_ms: self.config.connect_timeout.as_millis() as u64,
                        }));
                    }
                }
            }
            ConnectionState::Connected if !self.keep_alive.is_zero() => {
                if let Some(t) = self.ping_sent_at {
                    if now.saturating_duration_since(t) >= self.config.ping_timeout {
                        return Err(self.fail(Error::KeepAliveTimeout {
                            timeout_ms: self.config.ping_timeout.as_millis() as u64,
                        }));
                    }
                }
            }
            _ => {}
        }
        // Records that waited (offline, or behind the window) past their TTL (under
        // `ExpiredPolicy::Send` they wait for their turn instead).
        let expired: Vec<u64> = self
            .slots
            .iter()
            .filter(|(_, s)| Session::is_expired(self.config.expired, s, now))
            .map(|(&ord, _)| ord)
            .collect();
        for ord in expired {
            if let Some(slot) = self.remove_slot(ord) {
                self.stats.expired += 1;
                out.push(Action::Expired {
                    seq: slot.record.seq,
                });
            }
        }
        // Keep alive: a PINGREQ when the link was idle that long.
        if self.state == ConnectionState::Connected
            && !self.keep_alive.is_zero()
            && self.ping_sent_at.is_none()
        {
            let idle_since = match (self.last_write, self.last_read) {
                (Some(w), Some(r)) => w.min(r),
                (Some(t), None) | (None, Some(t)) => t,
                (None, None) => now,
            };
            if now.saturating_duration_since(idle_since) >= self.keep_alive {
                self.ping_sent_at = Some(now);
                self.send(&mut out, now, Packet::PingReq);
            }
        }
        Ok(out)
    }
}

fn packet_name(packet: &Packet) -> &'static str {
    match packet {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect(_) => "DISCONNECT",
    }
}

#[cfg(test)]
mod tests;
