//! The IO-free state machine of one local connection (the server side of MQTT).
//!
//! Packets and store results go in, [`ConnAction`]s come out, to be carried out **in order** by
//! the connection task. The rule that makes the ingress safe is encoded here: a PUBLISH that
//! needs an acknowledgement yields [`ConnAction::Store`] and nothing else; the PUBACK/PUBREC
//! is only produced by [`Conn::stored`], which the task calls once the store said the record
//! is durable. The machine does no I/O, reads no clock and touches no store.

use std::collections::HashMap;
use std::time::Duration;

use crate::outbox::OutMessage;
use crate::packet::{
    reason, Ack, ConnAck, Connect, Disconnect, Packet, Protocol, Publish, QoS, SubAck, Subscribe,
    UnsubAck, Unsubscribe,
};
use crate::topic::{topic_matches, validate_topic_filter, validate_topic_name};

/// MQTT 5 reason: the topic name is not valid.
pub(crate) const TOPIC_NAME_INVALID: u8 = 0x90;
/// MQTT 5 reason: quota exceeded (the outbox is full, too many connections).
pub(crate) const QUOTA_EXCEEDED: u8 = 0x97;
/// MQTT 5 reason: the client identifier is not valid.
const CLIENT_ID_NOT_VALID: u8 = 0x85;
/// MQTT 5 reason: protocol error.
const PROTOCOL_ERROR: u8 = 0x82;
/// MQTT 5 SUBACK/UNSUBACK reason: the topic filter is not valid.
const TOPIC_FILTER_INVALID: u8 = 0x8F;
/// MQTT 5 DISCONNECT reason: the server is shutting down.
pub(crate) const SERVER_SHUTTING_DOWN: u8 = 0x8B;
/// MQTT 5 DISCONNECT reason: keep alive timeout.
pub(crate) const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;

/// The v5 user property that sets a message's outbox priority (`0..=255`).
pub const PRIORITY_PROPERTY: &str = "spool-priority";

/// What the connection needs from the ingress configuration.
#[derive(Debug, Clone)]
pub(crate) struct ConnSettings {
    pub default_priority: u8,
    pub qos0_upstream: QoS,
    pub max_packet_bytes: u32,
    /// TTL of a PUBLISH without an MQTT 5 message expiry (3.1.1 ones included).
    pub default_ttl: Option<Duration>,
}

/// Why a store failed, as far as the client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreFailure {
    /// The outbox is at capacity (reject policy), or the payload is over its limit.
    Quota,
    /// Anything else (I/O, closed client).
    Other,
}

/// What to do once a store is durable (or failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AfterStore {
    qos: QoS,
    packet_id: u16,
}

/// One thing for the connection task to do.
#[derive(Debug)]
pub(crate) enum ConnAction {
    /// Write this packet.
    Send(Packet),
    /// Store this message (with its MQTT 5 user properties) durably, then call
    /// [`Conn::stored`] with `then` and the result. Nothing after it in the same batch.
    Store {
        msg: OutMessage,
        user_properties: Vec<(String, String)>,
        then: AfterStore,
    },
    /// A downlink delivery is complete (QoS 0 written, PUBACK or PUBCOMP received).
    Delivered(u64),
    /// Close the connection (after writing what came before).
    Close(CloseReason),
}

/// Why a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// The client sent DISCONNECT.
    ClientDisconnect,
    /// A protocol violation (packet before CONNECT, second CONNECT, unexpected packet).
    Protocol,
    /// A PUBLISH to an invalid topic name.
    InvalidTopic,
    /// A store failed on MQTT 3.1.1, where a PUBACK cannot say so: the client resends.
    StoreFailed,
    /// The CONNECT was refused.
    Refused,
}

#[derive(Debug)]
enum Phase {
    AwaitConnect,
    Connected,
    Closed,
}

/// A downlink message in flight to the local client.
#[derive(Debug)]
struct OutFlight {
    token: u64,
    /// QoS 2: PUBREC received, PUBREL sent.
    released: bool,
}

/// The state of one local connection.
#[derive(Debug)]
pub(crate) struct Conn {
    settings: ConnSettings,
    protocol: Protocol,
    phase: Phase,
    keep_alive_s: u16,
    /// MQTT 5: how many QoS 1/2 downlink publications the client takes at once.
    receive_maximum: u16,
    /// QoS 2 packet ids being stored (`false`) or stored and PUBREC'd, awaiting PUBREL
    /// (`true`): a resend is not stored again.
    qos2_in: HashMap<u16, bool>,
    /// Local subscriptions: filter -> granted QoS.
    subscriptions: Vec<(String, QoS)>,
    /// Downlink publications awaiting PUBACK/PUBREC/PUBCOMP, by packet id.
    outgoing: HashMap<u16, OutFlight>,
    next_packet_id: u16,
    assigned_ids: u64,
}

impl Conn {
    /// A connection speaking `protocol`, waiting for its CONNECT.
    pub(crate) fn new(protocol: Protocol, settings: ConnSettings, conn_number: u64) -> Conn {
        Conn {
            settings,
            protocol,
            phase: Phase::AwaitConnect,
            keep_alive_s: 0,
            receive_maximum: u16::MAX,
            qos2_in: HashMap::new(),
            subscriptions: Vec::new(),
            outgoing: HashMap::new(),
            next_packet_id: 1,
            assigned_ids: conn_number,
        }
    }

    /// How long the connection may stay silent before it is closed (1.5 × keep alive), or
    /// `None` when keep alive is off or no CONNECT was accepted yet.
    pub(crate) fn idle_limit(&self) -> Option<Duration> {
        match self.phase {
            Phase::Connected if self.keep_alive_s > 0 => {
                Some(Duration::from_millis(u64::from(self.keep_alive_s) * 1500))
            }
            _ => None,
        }
    }

    /// The local subscriptions (filter, granted QoS).
    pub(crate) fn subscriptions(&self) -> &[(String, QoS)] {
        &self.subscriptions
    }

    /// A packet from the client.
    pub(crate) fn handle(&mut self, packet: Packet) -> Vec<ConnAction> {
        match self.phase {
            Phase::Closed => Vec::new(),
            Phase::AwaitConnect => match packet {
                Packet::Connect(c) => self.connect(c),
                _ => self.close(CloseReason::Protocol, PROTOCOL_ERROR),
            },
            Phase::Connected => self.connected(packet),
        }
    }

    fn connect(&mut self, c: Connect) -> Vec<ConnAction> {
        let mut ack = ConnAck::default();
        if c.client_id.is_empty() {
            if !c.clean_start {
                // Nothing to resume under an empty id (MQTT 3.1.1 [MQTT-3.1.3-8]).
                ack.reason = CLIENT_ID_NOT_VALID;
                self.phase = Phase::Closed;
                return vec![
                    ConnAction::Send(Packet::ConnAck(ack)),
                    ConnAction::Close(CloseReason::Refused),
                ];
            }
            if self.protocol == Protocol::V5 {
                ack.assigned_client_id = Some(format!("spool-local-{}", self.assigned_ids));
            }
        }
        if self.protocol == Protocol::V5 {
            ack.maximum_packet_bytes = Some(self.settings.max_packet_bytes);
        }
        self.keep_alive_s = c.keep_alive_s;
        // 0 is a protocol error; taken as "no limit" rather than "never send".
        self.receive_maximum = c.receive_maximum.filter(|n| *n > 0).unwrap_or(u16::MAX);
        self.phase = Phase::Connected;
        vec![ConnAction::Send(Packet::ConnAck(ack))]
    }

    fn connected(&mut self, packet: Packet) -> Vec<ConnAction> {
        match packet {
            Packet::Publish(p) => self.publish(p),
            Packet::PubRel(a) => {
                // Only a stored id is released (PUBREL before our PUBREC is a client bug: the
                // id stays until its store finishes).
                let known = self.qos2_in.get(&a.packet_id) == Some(&true);
                if known {
                    self.qos2_in.remove(&a.packet_id);
                }
                let mut comp = Ack::success(a.packet_id);
                if !known && self.protocol == Protocol::V5 {
                    comp.reason = reason::PACKET_ID_NOT_FOUND;
                }
                vec![ConnAction::Send(Packet::PubComp(comp))]
            }
            // The end of a QoS 1 or 2 delivery (one packet id space for both).
            Packet::PubAck(a) | Packet::PubComp(a) => match self.outgoing.remove(&a.packet_id) {
                Some(f) => vec![ConnAction::Delivered(f.token)],
                None => Vec::new(),
            },
            Packet::PubRec(a) => {
                let Some(f) = self.outgoing.get_mut(&a.packet_id) else {
                    let mut rel = Ack::success(a.packet_id);
                    if self.protocol == Protocol::V5 {
                        rel.reason = reason::PACKET_ID_NOT_FOUND;
                    }
                    return vec![ConnAction::Send(Packet::PubRel(rel))];
                };
                if a.reason >= reason::FIRST_FAILURE {
                    // The client refused it: the exchange ends; count it as handed over
                    // (re-sending the same refused message would loop).
                    let token = f.token;
                    self.outgoing.remove(&a.packet_id);
                    return vec![ConnAction::Delivered(token)];
                }
                f.released = true;
                vec![ConnAction::Send(Packet::PubRel(Ack::success(a.packet_id)))]
            }
            Packet::Subscribe(s) => self.subscribe(s),
            Packet::Unsubscribe(u) => self.unsubscribe(u),
            Packet::PingReq => vec![ConnAction::Send(Packet::PingResp)],
            Packet::Disconnect(_) => {
                self.phase = Phase::Closed;
                vec![ConnAction::Close(CloseReason::ClientDisconnect)]
            }
            Packet::Connect(_)
            | Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp => self.close(CloseReason::Protocol, PROTOCOL_ERROR),
        }
    }

    fn publish(&mut self, p: Publish) -> Vec<ConnAction> {
        if validate_topic_name(&p.topic).is_err() {
            if self.protocol == Protocol::V5 && p.qos != QoS::AtMostOnce {
                let mut ack = Ack::success(p.packet_id);
                ack.reason = TOPIC_NAME_INVALID;
                return vec![ConnAction::Send(match p.qos {
                    QoS::ExactlyOnce => Packet::PubRec(ack),
                    _ => Packet::PubAck(ack),
                })];
            }
            return self.close(CloseReason::InvalidTopic, TOPIC_NAME_INVALID);
        }
        if p.qos == QoS::ExactlyOnce {
            match self.qos2_in.get(&p.packet_id) {
                // The same QoS 2 message again (DUP) before PUBREL: it is stored already.
                Some(true) => {
                    return vec![ConnAction::Send(Packet::PubRec(Ack::success(p.packet_id)))];
                }
                // Its store is still running: the PUBREC that follows it answers both.
                Some(false) => return Vec::new(),
                None => {
                    self.qos2_in.insert(p.packet_id, false);
                }
            }
        }
        // The priority property is ours: read (the last one wins) and not sent upstream.
        let mut priority = self.settings.default_priority;
        let mut user_properties = p.user_properties;
        user_properties.retain(|(k, v)| {
            if k != PRIORITY_PROPERTY {
                return true;
            }
            if let Ok(n) = v.trim().parse::<u8>() {
                priority = n;
            }
            false
        });
        let upstream_qos = match p.qos {
            QoS::AtMostOnce => self.settings.qos0_upstream,
            q => q,
        };
        let msg = OutMessage {
            topic: p.topic,
            payload: p.payload,
            qos: upstream_qos,
            retain: p.retain,
            priority,
            ttl: p
                .message_expiry_s
                .filter(|s| *s > 0)
                .map(|s| Duration::from_secs(u64::from(s)))
                .or(self.settings.default_ttl),
        };
        vec![ConnAction::Store {
            msg,
            user_properties,
            then: AfterStore {
                qos: p.qos,
                packet_id: p.packet_id,
            },
        }]
    }

    /// The store asked for by [`ConnAction::Store`] finished: the acknowledgement, or what to
    /// do about the failure.
    pub(crate) fn stored(
        &mut self,
        then: AfterStore,
        result: Result<(), (StoreFailure, String)>,
    ) -> Vec<ConnAction> {
        match (then.qos, result) {
            (QoS::AtMostOnce, _) => Vec::new(),
            (QoS::AtLeastOnce, Ok(())) => {
                vec![ConnAction::Send(Packet::PubAck(Ack::success(
                    then.packet_id,
                )))]
            }
            (QoS::ExactlyOnce, Ok(())) => {
                self.qos2_in.insert(then.packet_id, true);
                vec![ConnAction::Send(Packet::PubRec(Ack::success(
                    then.packet_id,
                )))]
            }
            (qos, Err((failure, why))) => {
                if qos == QoS::ExactlyOnce {
                    // A refused QoS 2 exchange ends here: a resend is a new attempt.
                    self.qos2_in.remove(&then.packet_id);
                }
                if self.protocol == Protocol::V311 {
                    // A 3.1.1 PUBACK cannot refuse: close without acking, the client resends.
                    self.phase = Phase::Closed;
                    return vec![ConnAction::Close(CloseReason::StoreFailed)];
                }
                let mut ack = Ack::success(then.packet_id);
                ack.reason = match failure {
                    StoreFailure::Quota => QUOTA_EXCEEDED,
                    StoreFailure::Other => reason::UNSPECIFIED_ERROR,
                };
                // What went wrong, for the publisher's log (the store's own message: "the
                // outbox is full ...", "the file system ... has N bytes free ...").
                ack.reason_string = (!why.is_empty()).then_some(why);
                vec![ConnAction::Send(if qos == QoS::ExactlyOnce {
                    Packet::PubRec(ack)
                } else {
                    Packet::PubAck(ack)
                })]
            }
        }
    }

    fn subscribe(&mut self, s: Subscribe) -> Vec<ConnAction> {
        let mut codes = Vec::with_capacity(s.filters.len());
        for f in s.filters {
            if validate_topic_filter(&f.filter).is_err() {
                codes.push(if self.protocol == Protocol::V5 {
                    TOPIC_FILTER_INVALID
                } else {
                    reason::UNSPECIFIED_ERROR
                });
                continue;
            }
            codes.push(f.qos as u8);
            match self.subscriptions.iter_mut().find(|(x, _)| *x == f.filter) {
                Some(existing) => existing.1 = f.qos,
                None => self.subscriptions.push((f.filter, f.qos)),
            }
        }
        vec![ConnAction::Send(Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            codes,
        }))]
    }

    fn unsubscribe(&mut self, u: Unsubscribe) -> Vec<ConnAction> {
        let mut codes = Vec::new();
        for f in &u.filters {
            let before = self.subscriptions.len();
            self.subscriptions.retain(|(x, _)| x != f);
            codes.push(if self.subscriptions.len() < before {
                reason::SUCCESS
            } else {
                reason::NO_SUBSCRIPTION_EXISTED
            });
        }
        if self.protocol == Protocol::V311 {
            codes.clear();
        }
        vec![ConnAction::Send(Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            codes,
        }))]
    }

    /// A downlink message for this client, at the QoS [`Conn::delivery_qos`] gave. Returns
    /// the PUBLISH to write (and, for QoS 0, that the delivery is complete once written);
    /// `None` when every packet id is in use (the caller retries later).
    /// Whether a downlink publication at `qos` can be sent now: QoS 0 always; QoS 1/2 while
    /// fewer than the client's Receive Maximum (MQTT 5) are awaiting its acknowledgement.
    pub(crate) fn can_deliver(&self, qos: QoS) -> bool {
        qos == QoS::AtMostOnce || self.outgoing.len() < usize::from(self.receive_maximum)
    }

    pub(crate) fn deliver(
        &mut self,
        token: u64,
        topic: String,
        payload: bytes::Bytes,
        qos: QoS,
        retain: bool,
    ) -> Option<Vec<ConnAction>> {
        let mut publish = Publish {
            topic,
            payload,
            qos,
            retain,
            dup: false,
            packet_id: 0,
            message_expiry_s: None,
            user_properties: Vec::new(),
        };
        if qos == QoS::AtMostOnce {
            return Some(vec![
                ConnAction::Send(Packet::Publish(publish)),
                ConnAction::Delivered(token),
            ]);
        }
        let id = self.free_packet_id()?;
        publish.packet_id = id;
        self.outgoing.insert(
            id,
            OutFlight {
                token,
                released: false,
            },
        );
        Some(vec![ConnAction::Send(Packet::Publish(publish))])
    }

    fn free_packet_id(&mut self) -> Option<u16> {
        for _ in 0..=u16::MAX {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if id != 0 && !self.outgoing.contains_key(&id) {
                return Some(id);
            }
        }
        None
    }

    /// The ingress is stopping: a v5 client is told why.
    pub(crate) fn shutdown(&mut self) -> Vec<ConnAction> {
        let mut out = Vec::new();
        if matches!(self.phase, Phase::Connected) && self.protocol == Protocol::V5 {
            out.push(ConnAction::Send(Packet::Disconnect(Disconnect {
                reason: SERVER_SHUTTING_DOWN,
                ..Disconnect::default()
            })));
        }
        self.phase = Phase::Closed;
        out
    }

    /// A v5 DISCONNECT with `code` (nothing on 3.1.1), then close.
    fn close(&mut self, why: CloseReason, code: u8) -> Vec<ConnAction> {
        let mut out = Vec::new();
        if matches!(self.phase, Phase::Connected) && self.protocol == Protocol::V5 {
            out.push(ConnAction::Send(Packet::Disconnect(Disconnect {
                reason: code,
                ..Disconnect::default()
            })));
        }
        self.phase = Phase::Closed;
        out.push(ConnAction::Close(why));
        out
    }
}

/// The QoS a message on `topic` published at `qos` is delivered at to a client with
/// `subscriptions`, `None` when none matches (the highest granted QoS of the matching filters
/// wins, never above the message's own).
pub(crate) fn delivery_qos(subscriptions: &[(String, QoS)], topic: &str, qos: QoS) -> Option<QoS> {
    subscriptions
        .iter()
        .filter(|(f, _)| topic_matches(f, topic))
        .map(|(_, g)| *g)
        .max()
        .map(|g| g.min(qos))
}

/// The protocol level of the CONNECT at the front of `buf`: `Ok(None)` until enough bytes
/// are there, `Err` when the bytes are not a CONNECT of MQTT 3.1.1 or 5 (the level is in the
/// error for a CONNACK "unacceptable protocol version").
pub(crate) fn sniff_protocol(buf: &[u8]) -> Result<Option<Protocol>, SniffError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first != 0x10 {
        return Err(SniffError::NotConnect);
    }
    // Skip the remaining length (1..=4 bytes).
    let mut at = 1;
    loop {
        let Some(&b) = buf.get(at) else {
            return Ok(None);
        };
        at += 1;
        if b & 0x80 == 0 {
            break;
        }
        if at > 4 {
            return Err(SniffError::NotConnect);
        }
    }
    let Some(len) = buf.get(at..at + 2) else {
        return Ok(None);
    };
    let name_len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    let Some(&level) = buf.get(at + 2 + name_len) else {
        return Ok(None);
    };
    match (&buf[at + 2..at + 2 + name_len], level) {
        (b"MQTT", 4) => Ok(Some(Protocol::V311)),
        (b"MQTT", 5) => Ok(Some(Protocol::V5)),
        _ => Err(SniffError::UnsupportedVersion),
    }
}

/// The first bytes are not a usable CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SniffError {
    /// Not a CONNECT packet at all.
    NotConnect,
    /// A CONNECT of a protocol version spool does not speak (MQTT 3.1 and older).
    UnsupportedVersion,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{Codec, SubscribeFilter};
    use bytes::{Bytes, BytesMut};
    use std::collections::HashSet;

    fn settings() -> ConnSettings {
        ConnSettings {
            default_priority: 3,
            qos0_upstream: QoS::AtLeastOnce,
            max_packet_bytes: 1024,
            default_ttl: None,
        }
    }

    fn connected(protocol: Protocol) -> Conn {
        let mut c = Conn::new(protocol, settings(), 7);
        let out = c.handle(Packet::Connect(Connect {
            protocol,
            client_id: String::new(),
            keep_alive_s: 10,
            clean_start: true,
            session_expiry_s: None,
            receive_maximum: None,
            username: None,
            password: None,
        }));
        let [ConnAction::Send(Packet::ConnAck(ack))] = out.as_slice() else {
            panic!("{out:?}");
        };
        assert_eq!(ack.reason, 0);
        if protocol == Protocol::V5 {
            assert_eq!(ack.assigned_client_id.as_deref(), Some("spool-local-7"));
            assert_eq!(ack.maximum_packet_bytes, Some(1024));
        }
        c
    }

    fn publish(qos: QoS, id: u16, dup: bool) -> Packet {
        Packet::Publish(Publish {
            topic: "a/b".into(),
            payload: Bytes::from_static(b"x"),
            qos,
            retain: true,
            dup,
            packet_id: id,
            message_expiry_s: Some(60),
            user_properties: vec![(PRIORITY_PROPERTY.into(), "9".into())],
        })
    }

    fn store_of(out: Vec<ConnAction>) -> (OutMessage, AfterStore) {
        match <[ConnAction; 1]>::try_from(out) {
            Ok([ConnAction::Store { msg, then, .. }]) => (msg, then),
            Ok([other]) => panic!("{other:?}"),
            Err(out) => panic!("{out:?}"),
        }
    }

    #[test]
    fn a_publish_without_message_expiry_takes_the_default_ttl() {
        let mut c = connected(Protocol::V311);
        c.settings.default_ttl = Some(Duration::from_secs(30));
        let mut p = publish(QoS::AtLeastOnce, 1, false);
        if let Packet::Publish(p) = &mut p {
            p.message_expiry_s = None;
        }
        let (msg, _) = store_of(c.handle(p));
        assert_eq!(msg.ttl, Some(Duration::from_secs(30)));
        // A message expiry of its own wins.
        let mut c = connected(Protocol::V5);
        c.settings.default_ttl = Some(Duration::from_secs(30));
        let (msg, _) = store_of(c.handle(publish(QoS::AtLeastOnce, 2, false)));
        assert_eq!(msg.ttl, Some(Duration::from_secs(60)));
    }

    #[test]
    fn a_qos1_publish_is_acked_only_after_the_store() {
        let mut c = connected(Protocol::V5);
        let (msg, then) = store_of(c.handle(publish(QoS::AtLeastOnce, 5, false)));
        assert_eq!(msg.priority, 9);
        assert_eq!(msg.ttl, Some(Duration::from_secs(60)));
        assert!(msg.retain);
        let out = c.stored(then, Ok(()));
        assert!(
            matches!(out.as_slice(), [ConnAction::Send(Packet::PubAck(a))] if a.packet_id == 5 && a.reason == 0)
        );
    }

    #[test]
    fn a_qos2_resend_before_pubrel_is_not_stored_twice() {
        let mut c = connected(Protocol::V311);
        let (_, then) = store_of(c.handle(publish(QoS::ExactlyOnce, 9, false)));
        // Resent while its store runs: nothing (the PUBREC after the store answers both), and
        // a PUBREL that comes too early does not forget the id.
        assert!(c.handle(publish(QoS::ExactlyOnce, 9, true)).is_empty());
        let out = c.handle(Packet::PubRel(Ack::success(9)));
        assert!(matches!(
            out.as_slice(),
            [ConnAction::Send(Packet::PubComp(_))]
        ));
        let out = c.stored(then, Ok(()));
        assert!(
            matches!(out.as_slice(), [ConnAction::Send(Packet::PubRec(a))] if a.packet_id == 9)
        );
        let out = c.handle(publish(QoS::ExactlyOnce, 9, true));
        assert!(
            matches!(out.as_slice(), [ConnAction::Send(Packet::PubRec(a))] if a.packet_id == 9)
        );
        let out = c.handle(Packet::PubRel(Ack::success(9)));
        assert!(
            matches!(out.as_slice(), [ConnAction::Send(Packet::PubComp(a))] if a.packet_id == 9)
        );
        // After PUBREL the id is free: the same id is a new message.
        store_of(c.handle(publish(QoS::ExactlyOnce, 9, false)));
    }

    #[test]
    fn store_failures_refuse_on_v5_and_close_on_v311() {
        let mut c = connected(Protocol::V5);
        let (_, then) = store_of(c.handle(publish(QoS::AtLeastOnce, 1, false)));
        let out = c.stored(then, Err((StoreFailure::Quota, String::new())));
        assert!(
            matches!(out.as_slice(), [ConnAction::Send(Packet::PubAck(a))] if a.reason == QUOTA_EXCEEDED)
        );
        let (_, then) = store_of(c.handle(publish(QoS::ExactlyOnce, 2, false)));
        let out = c.stored(then, Err((StoreFailure::Other, String::new())));
        assert!(
            matches!(out.as_slice(), [ConnAction::Send(Packet::PubRec(a))] if a.reason == 0x80)
        );
        // A refused QoS 2 is not awaiting PUBREL: its resend is stored.
        store_of(c.handle(publish(QoS::ExactlyOnce, 2, true)));

        let mut c = connected(Protocol::V311);
        let (_, then) = store_of(c.handle(publish(QoS::AtLeastOnce, 1, false)));
        let out = c.stored(then, Err((StoreFailure::Quota, String::new())));
        assert!(matches!(
            out.as_slice(),
            [ConnAction::Close(CloseReason::StoreFailed)]
        ));
    }

    #[test]
    fn invalid_topics_are_refused_on_v5_and_close_on_v311() {
        let bad = |qos| {
            Packet::Publish(Publish {
                topic: "a/+".into(),
                payload: Bytes::new(),
                qos,
                retain: false,
                dup: false,
                packet_id: 3,
                message_expiry_s: None,
                user_properties: Vec::new(),
            })
        };
        let mut c = connected(Protocol::V5);
        let out = c.handle(bad(QoS::AtLeastOnce));
        assert!(
            matches!(out.as_slice(), [ConnAction::Send(Packet::PubAck(a))] if a.reason == TOPIC_NAME_INVALID)
        );
        let mut c = connected(Protocol::V311);
        let out = c.handle(bad(QoS::AtLeastOnce));
        assert!(matches!(
            out.as_slice(),
            [ConnAction::Close(CloseReason::InvalidTopic)]
        ));
    }

    #[test]
    fn qos0_goes_upstream_at_the_configured_qos_and_is_never_acked() {
        let mut c = connected(Protocol::V311);
        let (msg, then) = store_of(c.handle(publish(QoS::AtMostOnce, 0, false)));
        assert_eq!(msg.qos, QoS::AtLeastOnce);
        assert!(c.stored(then, Ok(())).is_empty());
    }

    #[test]
    fn connect_rules() {
        let mut c = Conn::new(Protocol::V311, settings(), 1);
        let out = c.handle(Packet::PingReq);
        assert!(matches!(
            out.as_slice(),
            [ConnAction::Close(CloseReason::Protocol)]
        ));
        let mut c = Conn::new(Protocol::V311, settings(), 1);
        let out = c.handle(Packet::Connect(Connect {
            protocol: Protocol::V311,
            client_id: String::new(),
            keep_alive_s: 0,
            clean_start: false,
            session_expiry_s: None,
            receive_maximum: None,
            username: None,
            password: None,
        }));
        assert!(matches!(
            out.as_slice(),
            [ConnAction::Send(Packet::ConnAck(a)), ConnAction::Close(CloseReason::Refused)] if a.reason == CLIENT_ID_NOT_VALID
        ));
        let c = connected(Protocol::V311);
        assert_eq!(c.idle_limit(), Some(Duration::from_secs(15)));
    }

    #[test]
    fn downlink_qos_and_acks() {
        let mut c = connected(Protocol::V5);
        let out = c.handle(Packet::Subscribe(Subscribe {
            packet_id: 4,
            filters: vec![
                SubscribeFilter {
                    filter: "d/#".into(),
                    qos: QoS::ExactlyOnce,
                },
                SubscribeFilter {
                    filter: "d/+/#/x".into(),
                    qos: QoS::AtMostOnce,
                },
            ],
        }));
        assert!(
            matches!(out.as_slice(), [ConnAction::Send(Packet::SubAck(s))] if s.codes == vec![2, TOPIC_FILTER_INVALID])
        );
        assert_eq!(
            delivery_qos(c.subscriptions(), "d/1", QoS::AtLeastOnce),
            Some(QoS::AtLeastOnce)
        );
        assert_eq!(
            delivery_qos(c.subscriptions(), "e/1", QoS::AtLeastOnce),
            None
        );
        let out = c
            .deliver(77, "d/1".into(), Bytes::new(), QoS::ExactlyOnce, false)
            .unwrap();
        let [ConnAction::Send(Packet::Publish(p))] = out.as_slice() else {
            panic!("{out:?}");
        };
        let id = p.packet_id;
        let out = c.handle(Packet::PubRec(Ack::success(id)));
        assert!(matches!(
            out.as_slice(),
            [ConnAction::Send(Packet::PubRel(_))]
        ));
        let out = c.handle(Packet::PubComp(Ack::success(id)));
        assert!(matches!(out.as_slice(), [ConnAction::Delivered(77)]));
        let out = c.handle(Packet::Unsubscribe(Unsubscribe {
            packet_id: 5,
            filters: vec!["d/#".into()],
        }));
        assert!(
            matches!(out.as_slice(), [ConnAction::Send(Packet::UnsubAck(u))] if u.codes == vec![0])
        );
        assert_eq!(
            delivery_qos(c.subscriptions(), "d/1", QoS::AtLeastOnce),
            None
        );
    }

    #[test]
    fn downlink_respects_the_clients_receive_maximum() {
        let mut c = Conn::new(Protocol::V5, settings(), 1);
        c.handle(Packet::Connect(Connect {
            protocol: Protocol::V5,
            client_id: "r".into(),
            keep_alive_s: 0,
            clean_start: true,
            session_expiry_s: None,
            receive_maximum: Some(1),
            username: None,
            password: None,
        }));
        assert!(c.can_deliver(QoS::AtLeastOnce));
        let out = c
            .deliver(1, "t".into(), Bytes::new(), QoS::AtLeastOnce, false)
            .unwrap();
        let [ConnAction::Send(Packet::Publish(p))] = out.as_slice() else {
            panic!("{out:?}");
        };
        assert!(!c.can_deliver(QoS::AtLeastOnce));
        assert!(c.can_deliver(QoS::AtMostOnce));
        let id = p.packet_id;
        c.handle(Packet::PubAck(Ack::success(id)));
        assert!(c.can_deliver(QoS::ExactlyOnce));
    }

    #[test]
    fn the_protocol_is_read_from_the_connect() {
        for protocol in [Protocol::V311, Protocol::V5] {
            let mut buf = BytesMut::new();
            Codec::new(protocol, 1024)
                .encode(
                    &Packet::Connect(Connect {
                        protocol,
                        client_id: "x".into(),
                        keep_alive_s: 5,
                        clean_start: true,
                        session_expiry_s: None,
                        receive_maximum: None,
                        username: None,
                        password: None,
                    }),
                    &mut buf,
                )
                .unwrap();
            for cut in 0..9 {
                assert_eq!(sniff_protocol(&buf[..cut]), Ok(None), "{cut}");
            }
            assert_eq!(sniff_protocol(&buf), Ok(Some(protocol)));
        }
        assert_eq!(sniff_protocol(&[0x30, 0]), Err(SniffError::NotConnect));
        let v31 = [0x10, 0x10, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3];
        assert_eq!(sniff_protocol(&v31), Err(SniffError::UnsupportedVersion));
    }

    mod model {
        use super::*;
        use proptest::prelude::*;
        use std::collections::VecDeque;

        #[derive(Debug, Clone)]
        enum Op {
            Publish {
                qos: u8,
                id: u16,
                dup: bool,
            },
            PubRel(u16),
            /// Finish the oldest running store (in order, as the task does), ok or not.
            Finish(bool),
            Ping,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (0u8..3, 1u16..4, any::<bool>()).prop_map(|(qos, id, dup)| Op::Publish {
                    qos,
                    id,
                    dup
                }),
                (1u16..4).prop_map(Op::PubRel),
                any::<bool>().prop_map(Op::Finish),
                Just(Op::Ping),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

            /// Whatever the client sends and however stores end: a successful PUBACK/PUBREC
            /// for an id only follows a successful store of that id (or repeats the PUBREC of
            /// a stored QoS 2 id not yet released), and a QoS 2 id is stored at most once
            /// between its PUBRELs.
            #[test]
            fn acks_follow_durable_stores(
                v5 in any::<bool>(),
                ops in proptest::collection::vec(op(), 1..60),
            ) {
                let protocol = if v5 { Protocol::V5 } else { Protocol::V311 };
                let mut c = connected(protocol);
                let mut running: VecDeque<AfterStore> = VecDeque::new();
                // QoS 2 ids stored and not released (model).
                let mut held: HashSet<u16> = HashSet::new();
                // Successful stores per QoS 2 id since its last release.
                let mut stores2: HashMap<u16, u32> = HashMap::new();
                let mut closed = false;
                for op in ops {
                    if closed {
                        break;
                    }
                    let (out, finished) = match op {
                        Op::Publish { qos, id, dup } => {
                            let qos = QoS::from_u8(qos).unwrap();
                            let id = if qos == QoS::AtMostOnce { 0 } else { id };
                            (c.handle(publish(qos, id, dup)), None)
                        }
                        Op::PubRel(id) => {
                            let out = c.handle(Packet::PubRel(Ack::success(id)));
                            if held.remove(&id) {
                                stores2.remove(&id);
                            }
                            (out, None)
                        }
                        Op::Finish(ok) => match running.pop_front() {
                            Some(then) => {
                                let r = if ok { Ok(()) } else { Err((StoreFailure::Quota, String::new())) };
                                (c.stored(then, r), Some((then, ok)))
                            }
                            None => (Vec::new(), None),
                        },
                        Op::Ping => (c.handle(Packet::PingReq), None),
                    };
                    if let Some((then, true)) = finished {
                        if then.qos == QoS::ExactlyOnce {
                            let n = stores2.entry(then.packet_id).or_default();
                            *n += 1;
                            prop_assert!(*n <= 1, "QoS 2 id {} stored twice", then.packet_id);
                            held.insert(then.packet_id);
                        }
                    }
                    for a in out {
                        match a {
                            ConnAction::Store { then, .. } => running.push_back(then),
                            ConnAction::Send(Packet::PubAck(a)) if a.reason == 0 => {
                                prop_assert!(
                                    matches!(finished, Some((t, true)) if t.packet_id == a.packet_id),
                                    "PUBACK {} without its store", a.packet_id
                                );
                            }
                            ConnAction::Send(Packet::PubRec(a)) if a.reason == 0 => {
                                let just_stored = matches!(finished, Some((t, true)) if t.packet_id == a.packet_id);
                                prop_assert!(
                                    just_stored || held.contains(&a.packet_id),
                                    "PUBREC {} without its store", a.packet_id
                                );
                            }
                            ConnAction::Close(_) => closed = true,
                            _ => {}
                        }
                    }
                }
            }
        }
    }
}
