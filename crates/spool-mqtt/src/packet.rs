//! Our packet vocabulary and the codec behind it.
//!
//! The session state machine speaks one [`Packet`] enum for MQTT 3.1.1 and MQTT 5. Bytes are
//! turned into packets and back by the `mqttbytes` modules that `rumqttc` exports
//! (`rumqttc::mqttbytes::v4`, `rumqttc::v5::mqttbytes::v5`); this module only maps between
//! their two sets of types and ours (see `ARCHITECTURE.md`, "Dependencies and why").
//!
//! What is kept: the fields and properties the session uses (reason codes, session present,
//! receive maximum, server keep alive, maximum packet size and QoS, message expiry, user
//! properties, reason strings, server reference). Other MQTT 5 properties of incoming packets
//! (content type, correlation data, subscription identifiers...) are dropped on decode.
//!
//! Reason codes are kept as the raw MQTT 5 byte. A MQTT 3.1.1 CONNACK return code is
//! translated to its MQTT 5 equivalent on decode (and back on encode), so that the session
//! maps every refusal through one table ([`crate::ConnectRefusal`]).

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::{self as mb4, v4};
use rumqttc::v5::mqttbytes::{self as mb5, v5};

/// The MQTT protocol version a session speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5.0 (protocol level 5).
    V5,
}

/// Quality of service of a publication or a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    /// 0: fire and forget.
    AtMostOnce = 0,
    /// 1: PUBLISH, PUBACK. May be delivered more than once.
    AtLeastOnce = 1,
    /// 2: PUBLISH, PUBREC, PUBREL, PUBCOMP.
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for its wire value, `None` for anything above 2.
    pub fn from_u8(value: u8) -> Option<QoS> {
        match value {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// MQTT 5 reason codes the session looks at (the others are kept as numbers).
pub mod reason {
    /// Success (and "granted QoS 0" in a SUBACK, "normal disconnection" in a DISCONNECT).
    pub const SUCCESS: u8 = 0x00;
    /// PUBACK/PUBREC: the broker accepted the message but nobody subscribes to it.
    pub const NO_MATCHING_SUBSCRIBERS: u8 = 0x10;
    /// UNSUBACK: there was no such subscription.
    pub const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
    /// Codes from this one on are failures.
    pub const FIRST_FAILURE: u8 = 0x80;
    /// Unspecified error.
    pub const UNSPECIFIED_ERROR: u8 = 0x80;
    /// PUBREL/PUBCOMP: the packet identifier is not known.
    pub const PACKET_ID_NOT_FOUND: u8 = 0x92;
    /// PUBACK/PUBREC: an implementation or administrative limit was exceeded (a full queue
    /// on the broker, a rate limit): a condition that passes.
    pub const QUOTA_EXCEEDED: u8 = 0x97;
    /// PUBACK/PUBREC or DISCONNECT: the packet is larger than allowed.
    pub const PACKET_TOO_LARGE: u8 = 0x95;
    /// The broker does not accept retained messages.
    pub const RETAIN_NOT_SUPPORTED: u8 = 0x9A;
    /// The broker does not accept this QoS.
    pub const QOS_NOT_SUPPORTED: u8 = 0x9B;
}

/// CONNECT (sent by the session; decoded too, for the local listener and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Protocol level written in the packet.
    pub protocol: Protocol,
    /// Client identifier (never empty for a persistent session).
    pub client_id: String,
    /// Keep alive in seconds, 0 = off.
    pub keep_alive_s: u16,
    /// Clean start (MQTT 5) / clean session (MQTT 3.1.1).
    pub clean_start: bool,
    /// MQTT 5 session expiry interval in seconds.
    pub session_expiry_s: Option<u32>,
    /// MQTT 5: how many QoS 1/2 publications the broker may have in flight to us.
    pub receive_maximum: Option<u16>,
    /// User name; the codec treats an empty one as absent.
    pub username: Option<String>,
    /// Password; the codec treats an empty one as absent.
    pub password: Option<String>,
}

/// CONNACK.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnAck {
    /// Whether the broker resumed a session it kept for this client id.
    pub session_present: bool,
    /// Reason code in MQTT 5 numbering (0 = accepted).
    pub reason: u8,
    /// MQTT 5: how many QoS 1/2 publications we may have in flight (65535 when absent).
    pub receive_maximum: Option<u16>,
    /// MQTT 5: a keep alive the broker imposes, in seconds.
    pub server_keep_alive_s: Option<u16>,
    /// MQTT 5: the largest packet the broker accepts, in bytes.
    pub maximum_packet_bytes: Option<u32>,
    /// MQTT 5: the highest QoS the broker accepts.
    pub maximum_qos: Option<u8>,
    /// MQTT 5: whether the broker accepts retained messages (absent = yes).
    pub retain_available: Option<bool>,
    /// MQTT 5: the client id the broker chose, when we sent none.
    pub assigned_client_id: Option<String>,
    /// MQTT 5: a human readable reason.
    pub reason_string: Option<String>,
    /// MQTT 5: another server to use.
    pub server_reference: Option<String>,
}

/// PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Topic name (no wildcards).
    pub topic: String,
    /// Application payload.
    pub payload: Bytes,
    /// Delivery guarantee.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
    /// DUP flag: this is a re-delivery of an earlier attempt.
    pub dup: bool,
    /// Packet identifier, 0 for QoS 0.
    pub packet_id: u16,
    /// MQTT 5 message expiry interval in seconds.
    pub message_expiry_s: Option<u32>,
    /// MQTT 5 user properties, in order.
    pub user_properties: Vec<(String, String)>,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP: a packet id and a reason code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The packet identifier acknowledged.
    pub packet_id: u16,
    /// MQTT 5 reason code; always 0 in MQTT 3.1.1.
    pub reason: u8,
    /// MQTT 5 reason string.
    pub reason_string: Option<String>,
}

impl Ack {
    /// A successful acknowledgement of `packet_id`.
    pub fn success(packet_id: u16) -> Ack {
        Ack {
            packet_id,
            reason: reason::SUCCESS,
            reason_string: None,
        }
    }
}

/// One filter of a SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeFilter {
    /// Topic filter (may hold `+` and `#`).
    pub filter: String,
    /// Maximum QoS requested.
    pub qos: QoS,
}

/// SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet identifier.
    pub packet_id: u16,
    /// Filters, at least one.
    pub filters: Vec<SubscribeFilter>,
}

/// SUBACK: one code per filter, in order (0..=2 granted QoS, 0x80 and above a failure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// Packet identifier of the SUBSCRIBE.
    pub packet_id: u16,
    /// One code per filter.
    pub codes: Vec<u8>,
}

/// UNSUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet identifier.
    pub packet_id: u16,
    /// Filters to remove.
    pub filters: Vec<String>,
}

/// UNSUBACK: one code per filter in MQTT 5, none in MQTT 3.1.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    /// Packet identifier of the UNSUBSCRIBE.
    pub packet_id: u16,
    /// One code per filter (MQTT 5 only).
    pub codes: Vec<u8>,
}

/// DISCONNECT (from either side; reason and properties are MQTT 5 only).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disconnect {
    /// Reason code, 0 = normal disconnection.
    pub reason: u8,
    /// Human readable reason.
    pub reason_string: Option<String>,
    /// Another server to use.
    pub server_reference: Option<String>,
}

/// An MQTT control packet, the same for both protocol versions.
///
/// AUTH (MQTT 5 enhanced authentication) is not supported: decoding one is an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT.
    Connect(Connect),
    /// CONNACK.
    ConnAck(ConnAck),
    /// PUBLISH.
    Publish(Publish),
    /// PUBACK (QoS 1 done).
    PubAck(Ack),
    /// PUBREC (QoS 2, first step).
    PubRec(Ack),
    /// PUBREL (QoS 2, second step).
    PubRel(Ack),
    /// PUBCOMP (QoS 2 done).
    PubComp(Ack),
    /// SUBSCRIBE.
    Subscribe(Subscribe),
    /// SUBACK.
    SubAck(SubAck),
    /// UNSUBSCRIBE.
    Unsubscribe(Unsubscribe),
    /// UNSUBACK.
    UnsubAck(UnsubAck),
    /// PINGREQ.
    PingReq,
    /// PINGRESP.
    PingResp,
    /// DISCONNECT.
    Disconnect(Disconnect),
}

/// Errors of the codec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The bytes are not a valid packet of this protocol version: close the connection.
    #[error("malformed MQTT packet: {detail}; close the connection")]
    Malformed {
        /// What the decoder said.
        detail: String,
    },
    /// The packet announces more bytes than we accept.
    #[error("MQTT packet of {size} bytes is over the {max} byte limit")]
    TooLarge {
        /// Announced size.
        size: usize,
        /// Our limit.
        max: usize,
    },
    /// A packet spool does not implement (MQTT 5 AUTH).
    #[error("MQTT packet type {what} is not supported by spool")]
    Unsupported {
        /// Which packet.
        what: &'static str,
    },
    /// The packet cannot be encoded (a string over 65535 bytes, a payload over 256 MiB...).
    #[error("cannot encode the MQTT packet: {detail}")]
    Encode {
        /// What the encoder said.
        detail: String,
    },
}

/// Turns bytes into [`Packet`]s and back, for one protocol version.
///
/// Decoding works on a partial buffer: [`Codec::decode`] returns `Ok(None)` until a whole
/// packet is there, and consumes exactly one packet's bytes when it returns one. A PUBLISH
/// payload is a slice of the read buffer (no copy).
#[derive(Debug, Clone)]
pub struct Codec {
    protocol: Protocol,
    max_incoming_bytes: usize,
}

impl Codec {
    /// A codec for `protocol` that refuses incoming packets larger than `max_incoming_bytes`.
    pub fn new(protocol: Protocol, max_incoming_bytes: usize) -> Codec {
        Codec {
            protocol,
            max_incoming_bytes,
        }
    }

    /// The protocol version.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Takes the next whole packet from the front of `buf`; `Ok(None)` when more bytes are
    /// needed (nothing consumed).
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Packet>, CodecError> {
        // The whole packet is cut from the stream before it is parsed: "need more bytes"
        // never consumes anything, and a packet never consumes more or less than its own
        // length (rumqttc 0.25 returned "insufficient bytes" after consuming part of some
        // well-formed MQTT 5 DISCONNECTs, found by the mqtt_decoder fuzz target).
        let Some(total) = frame_len(buf)? else {
            return Ok(None);
        };
        if total > self.max_incoming_bytes {
            return Err(CodecError::TooLarge {
                size: total,
                max: self.max_incoming_bytes,
            });
        }
        if buf.len() < total {
            return Ok(None);
        }
        let mut frame = buf.split_to(total);
        let cut_short = || malformed(&"the packet is shorter than its remaining length says");
        match self.protocol {
            Protocol::V311 => match v4::Packet::read(&mut frame, usize::MAX) {
                Ok(packet) => Ok(Some(from_v4(packet))),
                Err(mb4::Error::InsufficientBytes(_)) => Err(cut_short()),
                Err(e) => Err(malformed(&e)),
            },
            Protocol::V5 => {
                // DISCONNECT is read here: MQTT 5 allows short forms (no reason code, or no
                // properties) that rumqttc 0.25 refuses or misreads.
                if frame[0] == 0xE0 {
                    let header = total - frame_body_len(&frame);
                    return decode_v5_disconnect(&frame[header..])
                        .map(|d| Some(Packet::Disconnect(d)));
                }
                match v5::Packet::read(&mut frame, None) {
                    Ok(packet) => from_v5(packet).map(Some),
                    Err(mb5::Error::InsufficientBytes(_)) => Err(cut_short()),
                    Err(e) => Err(malformed(&e)),
                }
            }
        }
    }

    /// Appends `packet` to `buf`.
    pub fn encode(&self, packet: &Packet, buf: &mut BytesMut) -> Result<(), CodecError> {
        match self.protocol {
            Protocol::V311 => to_v4(packet)
                .write(buf, usize::MAX)
                .map(|_| ())
                .map_err(|e| CodecError::Encode {
                    detail: e.to_string(),
                }),
            Protocol::V5 => {
                if let Packet::Disconnect(d) = packet {
                    // rumqttc 0.25 writes a DISCONNECT without properties with a remaining
                    // length one byte short (found by the mqtt_decoder fuzz target).
                    return encode_v5_disconnect(d, buf);
                }
                to_v5(packet)
                    .write(buf, None)
                    .map(|_| ())
                    .map_err(|e| CodecError::Encode {
                        detail: e.to_string(),
                    })
            }
        }
    }

    /// The number of bytes `packet` takes on the wire.
    pub fn encoded_len(&self, packet: &Packet) -> usize {
        match self.protocol {
            Protocol::V311 => to_v4(packet).size(),
            Protocol::V5 => to_v5(packet).size(),
        }
    }
}

/// The whole length (fixed header included) of the packet at the front of `buf`, once its
/// fixed header is complete; an error when the remaining length is not a valid variable byte
/// integer (more than 4 bytes).
fn frame_len(buf: &[u8]) -> Result<Option<usize>, CodecError> {
    let mut len = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        len |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some(2 + i + len));
        }
    }
    Err(malformed(&"remaining length longer than 4 bytes"))
}

/// The remaining length of a whole packet (its body after the fixed header).
fn frame_body_len(frame: &[u8]) -> usize {
    let mut len = 0usize;
    for (i, &b) in frame.iter().skip(1).take(4).enumerate() {
        len |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            break;
        }
    }
    len
}

/// Writes an MQTT 5 DISCONNECT: the short form for a normal disconnection without properties,
/// else the reason code and the properties (reason string, server reference).
fn encode_v5_disconnect(d: &Disconnect, buf: &mut BytesMut) -> Result<(), CodecError> {
    let mut props = Vec::new();
    for (id, value) in [(0x1F, &d.reason_string), (0x1C, &d.server_reference)] {
        if let Some(v) = value {
            let n = u16::try_from(v.len()).map_err(|_| CodecError::Encode {
                detail: "a DISCONNECT property longer than 65,535 bytes".into(),
            })?;
            props.push(id);
            props.extend_from_slice(&n.to_be_bytes());
            props.extend_from_slice(v.as_bytes());
        }
    }
    if d.reason == 0 && props.is_empty() {
        buf.extend_from_slice(&[0xE0, 0x00]);
        return Ok(());
    }
    let mut body = vec![d.reason];
    put_varint(&mut body, props.len());
    body.extend_from_slice(&props);
    buf.extend_from_slice(&[0xE0]);
    let mut len = Vec::new();
    put_varint(&mut len, body.len());
    buf.extend_from_slice(&len);
    buf.extend_from_slice(&body);
    Ok(())
}

fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let b = (n & 0x7F) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// An MQTT 5 DISCONNECT body: nothing (normal disconnection), a reason code, or a reason code
/// and properties (session expiry, reason string, server reference, user properties).
fn decode_v5_disconnect(body: &[u8]) -> Result<Disconnect, CodecError> {
    let bad = |what: &str| malformed(&format!("DISCONNECT: {what}"));
    let Some((&reason, rest)) = body.split_first() else {
        return Ok(Disconnect::default());
    };
    let mut d = Disconnect {
        reason,
        ..Disconnect::default()
    };
    if rest.is_empty() {
        return Ok(d);
    }
    let mut plen = 0usize;
    let mut at = 0usize;
    loop {
        let b = *rest
            .get(at)
            .ok_or_else(|| bad("property length cut short"))?;
        plen |= usize::from(b & 0x7F) << (7 * at);
        at += 1;
        if b & 0x80 == 0 {
            break;
        }
        if at == 4 {
            return Err(bad("property length longer than 4 bytes"));
        }
    }
    let props = rest
        .get(at..)
        .filter(|p| p.len() == plen)
        .ok_or_else(|| bad("the property length does not match the packet"))?;
    let string = |p: &[u8], i: usize| -> Result<(String, usize), CodecError> {
        let n = p
            .get(i..i + 2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
            .ok_or_else(|| bad("string length cut short"))?;
        let bytes = p
            .get(i + 2..i + 2 + n)
            .ok_or_else(|| bad("string cut short"))?;
        let s = std::str::from_utf8(bytes).map_err(|_| bad("string is not UTF-8"))?;
        Ok((s.to_string(), i + 2 + n))
    };
    let mut i = 0;
    while i < props.len() {
        let id = props[i];
        i += 1;
        match id {
            0x11 => {
                if props.len() < i + 4 {
                    return Err(bad("session expiry cut short"));
                }
                i += 4;
            }
            0x1F => {
                let (s, next) = string(props, i)?;
                d.reason_string = Some(s);
                i = next;
            }
            0x1C => {
                let (s, next) = string(props, i)?;
                d.server_reference = Some(s);
                i = next;
            }
            0x26 => {
                let (_, next) = string(props, i)?;
                let (_, next) = string(props, next)?;
                i = next;
            }
            other => return Err(bad(&format!("property 0x{other:02x} is not allowed"))),
        }
    }
    Ok(d)
}

fn malformed(e: &dyn std::fmt::Display) -> CodecError {
    CodecError::Malformed {
        detail: e.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// MQTT 3.1.1

fn qos_to_v4(qos: QoS) -> mb4::QoS {
    match qos {
        QoS::AtMostOnce => mb4::QoS::AtMostOnce,
        QoS::AtLeastOnce => mb4::QoS::AtLeastOnce,
        QoS::ExactlyOnce => mb4::QoS::ExactlyOnce,
    }
}

fn qos_from_v4(qos: mb4::QoS) -> QoS {
    match qos {
        mb4::QoS::AtMostOnce => QoS::AtMostOnce,
        mb4::QoS::AtLeastOnce => QoS::AtLeastOnce,
        mb4::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

/// 3.1.1 return code -> the MQTT 5 reason code with the same meaning.
fn connack_v4_to_reason(code: v4::ConnectReturnCode) -> u8 {
    match code {
        v4::ConnectReturnCode::Success => 0x00,
        v4::ConnectReturnCode::RefusedProtocolVersion => 0x84,
        v4::ConnectReturnCode::BadClientId => 0x85,
        v4::ConnectReturnCode::ServiceUnavailable => 0x88,
        v4::ConnectReturnCode::BadUserNamePassword => 0x86,
        v4::ConnectReturnCode::NotAuthorized => 0x87,
    }
}

fn connack_reason_to_v4(reason: u8) -> v4::ConnectReturnCode {
    match reason {
        0x00 => v4::ConnectReturnCode::Success,
        0x84 => v4::ConnectReturnCode::RefusedProtocolVersion,
        0x85 => v4::ConnectReturnCode::BadClientId,
        0x86 => v4::ConnectReturnCode::BadUserNamePassword,
        0x87 => v4::ConnectReturnCode::NotAuthorized,
        _ => v4::ConnectReturnCode::ServiceUnavailable,
    }
}

fn login_v4(c: &Connect) -> Option<v4::Login> {
    if c.username.is_none() && c.password.is_none() {
        return None;
    }
    Some(v4::Login::new(
        c.username.clone().unwrap_or_default(),
        c.password.clone().unwrap_or_default(),
    ))
}

fn to_v4(packet: &Packet) -> v4::Packet {
    match packet {
        Packet::Connect(c) => v4::Packet::Connect(v4::Connect {
            protocol: mb4::Protocol::V4,
            keep_alive: c.keep_alive_s,
            client_id: c.client_id.clone(),
            clean_session: c.clean_start,
            last_will: None,
            login: login_v4(c),
        }),
        Packet::ConnAck(c) => v4::Packet::ConnAck(v4::ConnAck::new(
            connack_reason_to_v4(c.reason),
            c.session_present,
        )),
        Packet::Publish(p) => v4::Packet::Publish(v4::Publish {
            dup: p.dup,
            qos: qos_to_v4(p.qos),
            retain: p.retain,
            topic: p.topic.clone(),
            pkid: p.packet_id,
            payload: p.payload.clone(),
        }),
        Packet::PubAck(a) => v4::Packet::PubAck(v4::PubAck::new(a.packet_id)),
        Packet::PubRec(a) => v4::Packet::PubRec(v4::PubRec::new(a.packet_id)),
        Packet::PubRel(a) => v4::Packet::PubRel(v4::PubRel::new(a.packet_id)),
        Packet::PubComp(a) => v4::Packet::PubComp(v4::PubComp::new(a.packet_id)),
        Packet::Subscribe(s) => v4::Packet::Subscribe(v4::Subscribe {
            pkid: s.packet_id,
            filters: s
                .filters
                .iter()
                .map(|f| v4::SubscribeFilter::new(f.filter.clone(), qos_to_v4(f.qos)))
                .collect(),
        }),
        Packet::SubAck(s) => v4::Packet::SubAck(v4::SubAck::new(
            s.packet_id,
            s.codes
                .iter()
                .map(|&c| match QoS::from_u8(c) {
                    Some(q) => v4::SubscribeReasonCode::Success(qos_to_v4(q)),
                    None => v4::SubscribeReasonCode::Failure,
                })
                .collect(),
        )),
        Packet::Unsubscribe(u) => v4::Packet::Unsubscribe(v4::Unsubscribe {
            pkid: u.packet_id,
            topics: u.filters.clone(),
        }),
        Packet::UnsubAck(u) => v4::Packet::UnsubAck(v4::UnsubAck::new(u.packet_id)),
        Packet::PingReq => v4::Packet::PingReq,
        Packet::PingResp => v4::Packet::PingResp,
        Packet::Disconnect(_) => v4::Packet::Disconnect,
    }
}

fn from_v4(packet: v4::Packet) -> Packet {
    match packet {
        v4::Packet::Connect(c) => {
            let (username, password) = match c.login {
                Some(l) => (
                    Some(l.username).filter(|u| !u.is_empty()),
                    Some(l.password).filter(|p| !p.is_empty()),
                ),
                None => (None, None),
            };
            Packet::Connect(Connect {
                protocol: Protocol::V311,
                client_id: c.client_id,
                keep_alive_s: c.keep_alive,
                clean_start: c.clean_session,
                session_expiry_s: None,
                receive_maximum: None,
                username,
                password,
            })
        }
        v4::Packet::ConnAck(c) => Packet::ConnAck(ConnAck {
            session_present: c.session_present,
            reason: connack_v4_to_reason(c.code),
            ..ConnAck::default()
        }),
        v4::Packet::Publish(p) => Packet::Publish(Publish {
            topic: p.topic,
            payload: p.payload,
            qos: qos_from_v4(p.qos),
            retain: p.retain,
            dup: p.dup,
            packet_id: p.pkid,
            message_expiry_s: None,
            user_properties: Vec::new(),
        }),
        v4::Packet::PubAck(a) => Packet::PubAck(Ack::success(a.pkid)),
        v4::Packet::PubRec(a) => Packet::PubRec(Ack::success(a.pkid)),
        v4::Packet::PubRel(a) => Packet::PubRel(Ack::success(a.pkid)),
        v4::Packet::PubComp(a) => Packet::PubComp(Ack::success(a.pkid)),
        v4::Packet::Subscribe(s) => Packet::Subscribe(Subscribe {
            packet_id: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| SubscribeFilter {
                    filter: f.path,
                    qos: qos_from_v4(f.qos),
                })
                .collect(),
        }),
        v4::Packet::SubAck(s) => Packet::SubAck(SubAck {
            packet_id: s.pkid,
            codes: s
                .return_codes
                .into_iter()
                .map(|c| match c {
                    v4::SubscribeReasonCode::Success(q) => qos_from_v4(q) as u8,
                    v4::SubscribeReasonCode::Failure => reason::UNSPECIFIED_ERROR,
                })
                .collect(),
        }),
        v4::Packet::Unsubscribe(u) => Packet::Unsubscribe(Unsubscribe {
            packet_id: u.pkid,
            filters: u.topics,
        }),
        v4::Packet::UnsubAck(u) => Packet::UnsubAck(UnsubAck {
            packet_id: u.pkid,
            codes: Vec::new(),
        }),
        v4::Packet::PingReq => Packet::PingReq,
        v4::Packet::PingResp => Packet::PingResp,
        v4::Packet::Disconnect => Packet::Disconnect(Disconnect::default()),
    }
}

// ---------------------------------------------------------------------------------------
// MQTT 5

fn qos_to_v5(qos: QoS) -> mb5::QoS {
    match qos {
        QoS::AtMostOnce => mb5::QoS::AtMostOnce,
        QoS::AtLeastOnce => mb5::QoS::AtLeastOnce,
        QoS::ExactlyOnce => mb5::QoS::ExactlyOnce,
    }
}

fn qos_from_v5(qos: mb5::QoS) -> QoS {
    match qos {
        mb5::QoS::AtMostOnce => QoS::AtMostOnce,
        mb5::QoS::AtLeastOnce => QoS::AtLeastOnce,
        mb5::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn connack_from_v5(code: v5::ConnectReturnCode) -> u8 {
    use v5::ConnectReturnCode as C;
    match code {
        C::Success => 0x00,
        C::UnspecifiedError => 0x80,
        C::MalformedPacket => 0x81,
        C::ProtocolError => 0x82,
        C::ImplementationSpecificError => 0x83,
        C::UnsupportedProtocolVersion | C::RefusedProtocolVersion => 0x84,
        C::ClientIdentifierNotValid | C::BadClientId => 0x85,
        C::BadUserNamePassword => 0x86,
        C::NotAuthorized => 0x87,
        C::ServerUnavailable | C::ServiceUnavailable => 0x88,
        C::ServerBusy => 0x89,
        C::Banned => 0x8A,
        C::BadAuthenticationMethod => 0x8C,
        C::TopicNameInvalid => 0x90,
        C::PacketTooLarge => 0x95,
        C::QuotaExceeded => 0x97,
        C::PayloadFormatInvalid => 0x99,
        C::RetainNotSupported => 0x9A,
        C::QoSNotSupported => 0x9B,
        C::UseAnotherServer => 0x9C,
        C::ServerMoved => 0x9D,
        C::ConnectionRateExceeded => 0x9F,
    }
}

fn connack_to_v5(reason: u8) -> v5::ConnectReturnCode {
    use v5::ConnectReturnCode as C;
    match reason {
        0x00 => C::Success,
        0x81 => C::MalformedPacket,
        0x82 => C::ProtocolError,
        0x83 => C::ImplementationSpecificError,
        0x84 => C::UnsupportedProtocolVersion,
        0x85 => C::ClientIdentifierNotValid,
        0x86 => C::BadUserNamePassword,
        0x87 => C::NotAuthorized,
        0x88 => C::ServerUnavailable,
        0x89 => C::ServerBusy,
        0x8A => C::Banned,
        0x8C => C::BadAuthenticationMethod,
        0x90 => C::TopicNameInvalid,
        0x95 => C::PacketTooLarge,
        0x97 => C::QuotaExceeded,
        0x99 => C::PayloadFormatInvalid,
        0x9A => C::RetainNotSupported,
        0x9B => C::QoSNotSupported,
        0x9C => C::UseAnotherServer,
        0x9D => C::ServerMoved,
        0x9F => C::ConnectionRateExceeded,
        _ => C::UnspecifiedError,
    }
}

fn puback_from_v5(r: v5::PubAckReason) -> u8 {
    use v5::PubAckReason as R;
    match r {
        R::Success => 0x00,
        R::NoMatchingSubscribers => 0x10,
        R::UnspecifiedError => 0x80,
        R::ImplementationSpecificError => 0x83,
        R::NotAuthorized => 0x87,
        R::TopicNameInvalid => 0x90,
        R::PacketIdentifierInUse => 0x91,
        R::QuotaExceeded => 0x97,
        R::PayloadFormatInvalid => 0x99,
    }
}

fn puback_to_v5(code: u8) -> v5::PubAckReason {
    use v5::PubAckReason as R;
    match code {
        0x00 => R::Success,
        0x10 => R::NoMatchingSubscribers,
        0x83 => R::ImplementationSpecificError,
        0x87 => R::NotAuthorized,
        0x90 => R::TopicNameInvalid,
        0x91 => R::PacketIdentifierInUse,
        0x97 => R::QuotaExceeded,
        0x99 => R::PayloadFormatInvalid,
        _ => R::UnspecifiedError,
    }
}

fn pubrec_from_v5(r: v5::PubRecReason) -> u8 {
    use v5::PubRecReason as R;
    match r {
        R::Success => 0x00,
        R::NoMatchingSubscribers => 0x10,
        R::UnspecifiedError => 0x80,
        R::ImplementationSpecificError => 0x83,
        R::NotAuthorized => 0x87,
        R::TopicNameInvalid => 0x90,
        R::PacketIdentifierInUse => 0x91,
        R::QuotaExceeded => 0x97,
        R::PayloadFormatInvalid => 0x99,
    }
}

fn pubrec_to_v5(code: u8) -> v5::PubRecReason {
    use v5::PubRecReason as R;
    match code {
        0x00 => R::Success,
        0x10 => R::NoMatchingSubscribers,
        0x83 => R::ImplementationSpecificError,
        0x87 => R::NotAuthorized,
        0x90 => R::TopicNameInvalid,
        0x91 => R::PacketIdentifierInUse,
        0x97 => R::QuotaExceeded,
        0x99 => R::PayloadFormatInvalid,
        _ => R::UnspecifiedError,
    }
}

fn suback_from_v5(c: v5::SubscribeReasonCode) -> u8 {
    use v5::SubscribeReasonCode as R;
    match c {
        R::Success(q) => qos_from_v5(q) as u8,
        R::Failure | R::Unspecified => 0x80,
        R::ImplementationSpecific => 0x83,
        R::NotAuthorized => 0x87,
        R::TopicFilterInvalid => 0x8F,
        R::PkidInUse => 0x91,
        R::QuotaExceeded => 0x97,
        R::SharedSubscriptionsNotSupported => 0x9E,
        R::SubscriptionIdNotSupported => 0xA1,
        R::WildcardSubscriptionsNotSupported => 0xA2,
    }
}

fn suback_to_v5(code: u8) -> v5::SubscribeReasonCode {
    use v5::SubscribeReasonCode as R;
    match code {
        0..=2 => R::Success(qos_to_v5(QoS::from_u8(code).unwrap_or(QoS::AtMostOnce))),
        0x83 => R::ImplementationSpecific,
        0x87 => R::NotAuthorized,
        0x8F => R::TopicFilterInvalid,
        0x91 => R::PkidInUse,
        0x97 => R::QuotaExceeded,
        0x9E => R::SharedSubscriptionsNotSupported,
        0xA1 => R::SubscriptionIdNotSupported,
        0xA2 => R::WildcardSubscriptionsNotSupported,
        _ => R::Unspecified,
    }
}

fn unsuback_from_v5(r: v5::UnsubAckReason) -> u8 {
    use v5::UnsubAckReason as R;
    match r {
        R::Success => 0x00,
        R::NoSubscriptionExisted => 0x11,
        R::UnspecifiedError => 0x80,
        R::ImplementationSpecificError => 0x83,
        R::NotAuthorized => 0x87,
        R::TopicFilterInvalid => 0x8F,
        R::PacketIdentifierInUse => 0x91,
    }
}

fn unsuback_to_v5(code: u8) -> v5::UnsubAckReason {
    use v5::UnsubAckReason as R;
    match code {
        0x00 => R::Success,
        0x11 => R::NoSubscriptionExisted,
        0x83 => R::ImplementationSpecificError,
        0x87 => R::NotAuthorized,
        0x8F => R::TopicFilterInvalid,
        0x91 => R::PacketIdentifierInUse,
        _ => R::UnspecifiedError,
    }
}

fn to_v5(packet: &Packet) -> v5::Packet {
    match packet {
        Packet::Connect(c) => {
            let properties = v5::ConnectProperties {
                session_expiry_interval: c.session_expiry_s,
                receive_maximum: c.receive_maximum,
                ..v5::ConnectProperties::new()
            };
            let login = if c.username.is_none() && c.password.is_none() {
                None
            } else {
                Some(v5::Login::new(
                    c.username.clone().unwrap_or_default(),
                    c.password.clone().unwrap_or_default(),
                ))
            };
            v5::Packet::Connect(
                v5::Connect {
                    keep_alive: c.keep_alive_s,
                    client_id: c.client_id.clone(),
                    clean_start: c.clean_start,
                    properties: Some(properties),
                },
                None,
                login,
            )
        }
        Packet::ConnAck(c) => v5::Packet::ConnAck(v5::ConnAck {
            session_present: c.session_present,
            code: connack_to_v5(c.reason),
            properties: Some(v5::ConnAckProperties {
                session_expiry_interval: None,
                receive_max: c.receive_maximum,
                max_qos: c.maximum_qos,
                retain_available: c.retain_available.map(u8::from),
                max_packet_size: c.maximum_packet_bytes,
                assigned_client_identifier: c.assigned_client_id.clone(),
                topic_alias_max: None,
                reason_string: c.reason_string.clone(),
                user_properties: Vec::new(),
                wildcard_subscription_available: None,
                subscription_identifiers_available: None,
                shared_subscription_available: None,
                server_keep_alive: c.server_keep_alive_s,
                response_information: None,
                server_reference: c.server_reference.clone(),
                authentication_method: None,
                authentication_data: None,
            }),
        }),
        Packet::Publish(p) => {
            let properties = if p.message_expiry_s.is_none() && p.user_properties.is_empty() {
                None
            } else {
                Some(v5::PublishProperties {
                    message_expiry_interval: p.message_expiry_s,
                    user_properties: p.user_properties.clone(),
                    ..v5::PublishProperties::default()
                })
            };
            v5::Packet::Publish(v5::Publish {
                dup: p.dup,
                qos: qos_to_v5(p.qos),
                retain: p.retain,
                topic: Bytes::copy_from_slice(p.topic.as_bytes()),
                pkid: p.packet_id,
                payload: p.payload.clone(),
                properties,
            })
        }
        Packet::PubAck(a) => v5::Packet::PubAck(v5::PubAck {
            pkid: a.packet_id,
            reason: puback_to_v5(a.reason),
            properties: a.reason_string.clone().map(|s| v5::PubAckProperties {
                reason_string: Some(s),
                user_properties: Vec::new(),
            }),
        }),
        Packet::PubRec(a) => v5::Packet::PubRec(v5::PubRec {
            pkid: a.packet_id,
            reason: pubrec_to_v5(a.reason),
            properties: a.reason_string.clone().map(|s| v5::PubRecProperties {
                reason_string: Some(s),
                user_properties: Vec::new(),
            }),
        }),
        Packet::PubRel(a) => v5::Packet::PubRel(v5::PubRel {
            pkid: a.packet_id,
            reason: if a.reason == reason::PACKET_ID_NOT_FOUND {
                v5::PubRelReason::PacketIdentifierNotFound
            } else {
                v5::PubRelReason::Success
            },
            properties: None,
        }),
        Packet::PubComp(a) => v5::Packet::PubComp(v5::PubComp {
            pkid: a.packet_id,
            reason: if a.reason == reason::PACKET_ID_NOT_FOUND {
                v5::PubCompReason::PacketIdentifierNotFound
            } else {
                v5::PubCompReason::Success
            },
            properties: None,
        }),
        Packet::Subscribe(s) => v5::Packet::Subscribe(v5::Subscribe {
            pkid: s.packet_id,
            filters: s
                .filters
                .iter()
                .map(|f| v5::Filter {
                    path: f.filter.clone(),
                    qos: qos_to_v5(f.qos),
                    nolocal: false,
                    preserve_retain: false,
                    // The session re-sends its subscriptions after every reconnect: the
                    // broker should not replay retained messages for a subscription it
                    // already had.
                    retain_forward_rule: v5::RetainForwardRule::OnNewSubscribe,
                })
                .collect(),
            properties: None,
        }),
        Packet::SubAck(s) => v5::Packet::SubAck(v5::SubAck {
            pkid: s.packet_id,
            return_codes: s.codes.iter().map(|&c| suback_to_v5(c)).collect(),
            properties: None,
        }),
        Packet::Unsubscribe(u) => v5::Packet::Unsubscribe(v5::Unsubscribe {
            pkid: u.packet_id,
            filters: u.filters.clone(),
            properties: None,
        }),
        Packet::UnsubAck(u) => v5::Packet::UnsubAck(v5::UnsubAck {
            pkid: u.packet_id,
            reasons: u.codes.iter().map(|&c| unsuback_to_v5(c)).collect(),
            properties: None,
        }),
        Packet::PingReq => v5::Packet::PingReq(v5::PingReq),
        Packet::PingResp => v5::Packet::PingResp(v5::PingResp),
        Packet::Disconnect(d) => v5::Packet::Disconnect(v5::Disconnect {
            reason_code: v5::DisconnectReasonCode::try_from(d.reason)
                .unwrap_or(v5::DisconnectReasonCode::UnspecifiedError),
            properties: if d.reason_string.is_none() && d.server_reference.is_none() {
                None
            } else {
                Some(v5::DisconnectProperties {
                    session_expiry_interval: None,
                    reason_string: d.reason_string.clone(),
                    user_properties: Vec::new(),
                    server_reference: d.server_reference.clone(),
                })
            },
        }),
    }
}

fn from_v5(packet: v5::Packet) -> Result<Packet, CodecError> {
    Ok(match packet {
        v5::Packet::Auth(_) => return Err(CodecError::Unsupported { what: "AUTH" }),
        v5::Packet::Connect(c, _will, login) => {
            let props = c.properties.unwrap_or_default();
            let (username, password) = match login {
                Some(l) => (
                    Some(l.username).filter(|u| !u.is_empty()),
                    Some(l.password).filter(|p| !p.is_empty()),
                ),
                None => (None, None),
            };
            Packet::Connect(Connect {
                protocol: Protocol::V5,
                client_id: c.client_id,
                keep_alive_s: c.keep_alive,
                clean_start: c.clean_start,
                session_expiry_s: props.session_expiry_interval,
                receive_maximum: props.receive_maximum,
                username,
                password,
            })
        }
        v5::Packet::ConnAck(c) => {
            let mut out = ConnAck {
                session_present: c.session_present,
                reason: connack_from_v5(c.code),
                ..ConnAck::default()
            };
            if let Some(p) = c.properties {
                out.receive_maximum = p.receive_max;
                out.server_keep_alive_s = p.server_keep_alive;
                out.maximum_packet_bytes = p.max_packet_size;
                out.maximum_qos = p.max_qos;
                out.retain_available = p.retain_available.map(|r| r != 0);
                out.assigned_client_id = p.assigned_client_identifier;
                out.reason_string = p.reason_string;
                out.server_reference = p.server_reference;
            }
            Packet::ConnAck(out)
        }
        v5::Packet::Publish(p) => {
            let topic = String::from_utf8(p.topic.to_vec()).map_err(|_| CodecError::Malformed {
                detail: "topic name is not UTF-8".to_owned(),
            })?;
            let (message_expiry_s, user_properties) = match p.properties {
                Some(props) => (props.message_expiry_interval, props.user_properties),
                None => (None, Vec::new()),
            };
            Packet::Publish(Publish {
                topic,
                payload: p.payload,
                qos: qos_from_v5(p.qos),
                retain: p.retain,
                dup: p.dup,
                packet_id: p.pkid,
                message_expiry_s,
                user_properties,
            })
        }
        v5::Packet::PubAck(a) => Packet::PubAck(Ack {
            packet_id: a.pkid,
            reason: puback_from_v5(a.reason),
            reason_string: a.properties.and_then(|p| p.reason_string),
        }),
        v5::Packet::PubRec(a) => Packet::PubRec(Ack {
            packet_id: a.pkid,
            reason: pubrec_from_v5(a.reason),
            reason_string: a.properties.and_then(|p| p.reason_string),
        }),
        v5::Packet::PubRel(a) => Packet::PubRel(Ack {
            packet_id: a.pkid,
            reason: match a.reason {
                v5::PubRelReason::Success => reason::SUCCESS,
                v5::PubRelReason::PacketIdentifierNotFound => reason::PACKET_ID_NOT_FOUND,
            },
            reason_string: a.properties.and_then(|p| p.reason_string),
        }),
        v5::Packet::PubComp(a) => Packet::PubComp(Ack {
            packet_id: a.pkid,
            reason: match a.reason {
                v5::PubCompReason::Success => reason::SUCCESS,
                v5::PubCompReason::PacketIdentifierNotFound => reason::PACKET_ID_NOT_FOUND,
            },
            reason_string: a.properties.and_then(|p| p.reason_string),
        }),
        v5::Packet::Subscribe(s) => Packet::Subscribe(Subscribe {
            packet_id: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| SubscribeFilter {
                    filter: f.path,
                    qos: qos_from_v5(f.qos),
                })
                .collect(),
        }),
        v5::Packet::SubAck(s) => Packet::SubAck(SubAck {
            packet_id: s.pkid,
            codes: s.return_codes.into_iter().map(suback_from_v5).collect(),
        }),
        v5::Packet::Unsubscribe(u) => Packet::Unsubscribe(Unsubscribe {
            packet_id: u.pkid,
            filters: u.filters,
        }),
        v5::Packet::UnsubAck(u) => Packet::UnsubAck(UnsubAck {
            packet_id: u.pkid,
            codes: u.reasons.into_iter().map(unsuback_from_v5).collect(),
        }),
        v5::Packet::PingReq(_) => Packet::PingReq,
        v5::Packet::PingResp(_) => Packet::PingResp,
        v5::Packet::Disconnect(d) => {
            let (reason_string, server_reference) = match d.properties {
                Some(p) => (p.reason_string, p.server_reference),
                None => (None, None),
            };
            Packet::Disconnect(Disconnect {
                reason: d.reason_code as u8,
                reason_string,
                server_reference,
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(protocol: Protocol, packet: &Packet) -> Packet {
        let codec = Codec::new(protocol, 1 << 20);
        let mut buf = BytesMut::new();
        codec.encode(packet, &mut buf).expect("encode");
        assert_eq!(buf.len(), codec.encoded_len(packet));
        // Every strict prefix is "need more bytes", and consumes nothing.
        for cut in 0..buf.len() {
            let mut part = BytesMut::from(&buf[..cut]);
            assert_eq!(codec.decode(&mut part), Ok(None), "prefix of {cut} bytes");
            assert_eq!(part.len(), cut);
        }
        let decoded = codec
            .decode(&mut buf)
            .expect("decode")
            .expect("whole packet");
        assert!(buf.is_empty());
        decoded
    }

    fn publish(qos: QoS, packet_id: u16) -> Publish {
        Publish {
            topic: "plant/line1/temp".to_owned(),
            payload: Bytes::from_static(b"21.5"),
            qos,
            retain: false,
            dup: true,
            packet_id,
            message_expiry_s: None,
            user_properties: Vec::new(),
        }
    }

    #[test]
    fn both_versions_roundtrip_the_packets_the_session_uses() {
        for protocol in [Protocol::V311, Protocol::V5] {
            let packets = vec![
                Packet::Connect(Connect {
                    protocol,
                    client_id: "dev-1".to_owned(),
                    keep_alive_s: 30,
                    clean_start: false,
                    session_expiry_s: (protocol == Protocol::V5).then_some(3600),
                    receive_maximum: (protocol == Protocol::V5).then_some(100),
                    username: Some("u".to_owned()),
                    password: Some("p".to_owned()),
                }),
                Packet::ConnAck(ConnAck {
                    session_present: true,
                    ..ConnAck::default()
                }),
                Packet::Publish(publish(QoS::AtLeastOnce, 7)),
                Packet::Publish(publish(QoS::ExactlyOnce, 65535)),
                Packet::PubAck(Ack::success(1)),
                Packet::PubRec(Ack::success(2)),
                Packet::PubRel(Ack::success(3)),
                Packet::PubComp(Ack::success(4)),
                Packet::Subscribe(Subscribe {
                    packet_id: 9,
                    filters: vec![SubscribeFilter {
                        filter: "a/+/#".to_owned(),
                        qos: QoS::ExactlyOnce,
                    }],
                }),
                Packet::SubAck(SubAck {
                    packet_id: 9,
                    codes: vec![2, 0x80],
                }),
                Packet::Unsubscribe(Unsubscribe {
                    packet_id: 10,
                    filters: vec!["a/+/#".to_owned()],
                }),
                Packet::PingReq,
                Packet::PingResp,
                Packet::Disconnect(Disconnect::default()),
            ];
            for p in &packets {
                assert_eq!(&roundtrip(protocol, p), p, "{protocol:?}");
            }
        }
    }

    #[test]
    fn v5_properties_and_reason_codes_survive() {
        let mut p = publish(QoS::AtLeastOnce, 3);
        p.message_expiry_s = Some(60);
        p.user_properties = vec![("seq".to_owned(), "42".to_owned())];
        let p = Packet::Publish(p);
        assert_eq!(roundtrip(Protocol::V5, &p), p);

        let ack = Packet::PubAck(Ack {
            packet_id: 5,
            reason: 0x87,
            reason_string: Some("not authorized".to_owned()),
        });
        assert_eq!(roundtrip(Protocol::V5, &ack), ack);

        let connack = Packet::ConnAck(ConnAck {
            session_present: false,
            reason: 0x86,
            receive_maximum: Some(20),
            server_keep_alive_s: Some(10),
            maximum_packet_bytes: Some(1024),
            maximum_qos: Some(1),
            retain_available: Some(false),
            assigned_client_id: None,
            reason_string: Some("bad password".to_owned()),
            server_reference: None,
        });
        assert_eq!(roundtrip(Protocol::V5, &connack), connack);

        let unsuback = Packet::UnsubAck(UnsubAck {
            packet_id: 4,
            codes: vec![0, 0x11],
        });
        assert_eq!(roundtrip(Protocol::V5, &unsuback), unsuback);
    }

    #[test]
    fn v311_connack_codes_map_to_v5_numbering() {
        for (v4_code, v5_code) in [(1u8, 0x84u8), (2, 0x85), (3, 0x88), (4, 0x86), (5, 0x87)] {
            let mut buf = BytesMut::from(&[0x20, 0x02, 0x00, v4_code][..]);
            let codec = Codec::new(Protocol::V311, 1024);
            let Some(Packet::ConnAck(c)) = codec.decode(&mut buf).expect("decode") else {
                panic!("not a CONNACK");
            };
            assert_eq!(c.reason, v5_code);
        }
    }

    #[test]
    fn v5_disconnect_forms_decode_whole_and_alone() {
        let codec = Codec::new(Protocol::V5, 1024);
        let cases: [(&[u8], Disconnect); 4] = [
            (
                &[0xE0, 0x01, 0x8B],
                Disconnect {
                    reason: 0x8B,
                    ..Disconnect::default()
                },
            ),
            // Reason and an empty property list: what Mosquitto sends when it shuts down (the
            // fuzz target found rumqttc consuming 3 of these 4 bytes, then asking for more).
            (
                &[0xE0, 0x02, 0x8B, 0x00],
                Disconnect {
                    reason: 0x8B,
                    ..Disconnect::default()
                },
            ),
            (
                &[
                    0xE0, 0x0B, 0x9C, 0x09, 0x1C, 0x00, 0x01, b'b', 0x1F, 0x00, 0x02, b'n', b'o',
                ],
                Disconnect {
                    reason: 0x9C,
                    reason_string: Some("no".into()),
                    server_reference: Some("b".into()),
                },
            ),
            (
                &[0xE0, 0x07, 0x00, 0x05, 0x11, 0, 0, 0, 9],
                Disconnect::default(),
            ),
        ];
        for (bytes, want) in cases {
            // Followed by a PINGRESP: exactly the DISCONNECT is consumed.
            let mut buf = BytesMut::from(bytes);
            buf.extend_from_slice(&[0xD0, 0x00]);
            assert_eq!(
                codec.decode(&mut buf),
                Ok(Some(Packet::Disconnect(want))),
                "{bytes:02x?}"
            );
            assert_eq!(&buf[..], &[0xD0, 0x00]);
            // Any prefix is "need more bytes", and consumes nothing.
            for cut in 0..bytes.len() {
                let mut buf = BytesMut::from(&bytes[..cut]);
                assert_eq!(codec.decode(&mut buf), Ok(None), "{cut}");
                assert_eq!(buf.len(), cut);
            }
        }
        // A property a DISCONNECT may not carry, and a property list longer than the packet.
        for bad in [
            &[0xE0, 0x04, 0x00, 0x02, 0x01, 0x00][..],
            &[0xE0, 0x03, 0x00, 0x05, 0x11],
        ] {
            let mut buf = BytesMut::from(bad);
            assert!(
                matches!(codec.decode(&mut buf), Err(CodecError::Malformed { .. })),
                "{bad:02x?}"
            );
        }
    }

    #[test]
    fn v5_disconnects_encode_to_what_decodes_back() {
        let codec = Codec::new(Protocol::V5, 1024);
        for d in [
            Disconnect::default(),
            Disconnect {
                reason: 0x8B,
                ..Disconnect::default()
            },
            Disconnect {
                reason: 0x9C,
                reason_string: Some("moved".into()),
                server_reference: Some("other:1883".into()),
            },
        ] {
            let mut buf = BytesMut::new();
            codec
                .encode(&Packet::Disconnect(d.clone()), &mut buf)
                .expect("encode");
            assert_eq!(codec.decode(&mut buf), Ok(Some(Packet::Disconnect(d))));
            assert!(buf.is_empty());
        }
        let mut buf = BytesMut::new();
        codec
            .encode(&Packet::Disconnect(Disconnect::default()), &mut buf)
            .expect("encode");
        assert_eq!(&buf[..], &[0xE0, 0x00]);
    }

    #[test]
    fn a_packet_too_large_is_refused_from_its_header() {
        // Remaining length 2,097,152 announced; only the header has arrived.
        for protocol in [Protocol::V311, Protocol::V5] {
            let codec = Codec::new(protocol, 1 << 20);
            let mut buf = BytesMut::from(&[0x30, 0x80, 0x80, 0x80, 0x01][..]);
            assert!(matches!(
                codec.decode(&mut buf),
                Err(CodecError::TooLarge { .. })
            ));
            // A remaining length of five bytes is malformed.
            let mut buf = BytesMut::from(&[0x30, 0x80, 0x80, 0x80, 0x80, 0x01][..]);
            assert!(matches!(
                codec.decode(&mut buf),
                Err(CodecError::Malformed { .. })
            ));
        }
    }

    #[test]
    fn v5_short_forms_decode() {
        let codec = Codec::new(Protocol::V5, 1024);
        // DISCONNECT with remaining length 0 = normal disconnection.
        let mut buf = BytesMut::from(&[0xE0, 0x00][..]);
        assert_eq!(
            codec.decode(&mut buf),
            Ok(Some(Packet::Disconnect(Disconnect::default())))
        );
        // PUBACK with only a packet id = success.
        let mut buf = BytesMut::from(&[0x40, 0x02, 0x00, 0x07][..]);
        assert_eq!(
            codec.decode(&mut buf),
            Ok(Some(Packet::PubAck(Ack::success(7))))
        );
    }

    #[test]
    fn garbage_and_oversize_are_errors_not_panics() {
        let codec = Codec::new(Protocol::V311, 16);
        let mut buf = BytesMut::from(&[0x00, 0x00][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(CodecError::Malformed { .. })
        ));
        let mut buf = BytesMut::from(&[0x30, 0x7f][..]);
        assert!(codec.decode(&mut buf).is_err());
        let codec = Codec::new(Protocol::V5, 1024);
        let mut buf = BytesMut::from(&[0xF0, 0x00][..]);
        assert!(codec.decode(&mut buf).is_err());
    }
}

#[cfg(test)]
mod fuzz_like {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        // 20,000 cases by default (cheap); PROPTEST_CASES=N for a longer run.
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(20_000),
            ..ProptestConfig::default()
        })]

        /// Whatever the broker sends, decoding returns a packet, "need more" or an error;
        /// it never panics, and a decoded packet re-encodes to something that decodes to it.
        #[test]
        fn decoding_arbitrary_bytes_never_panics(
            first in prop_oneof![
                any::<u8>(),
                proptest::sample::select(vec![
                    0x10u8, 0x20, 0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x3B, 0x40, 0x50, 0x62,
                    0x70, 0x82, 0x90, 0xA2, 0xB0, 0xC0, 0xD0, 0xE0, 0xF0,
                ]),
            ],
            len in 0u8..64,
            body in proptest::collection::vec(any::<u8>(), 0..64),
            v5 in any::<bool>(),
            exact in any::<bool>(),
        ) {
            let protocol = if v5 { Protocol::V5 } else { Protocol::V311 };
            let codec = Codec::new(protocol, 1 << 16);
            let mut buf = BytesMut::new();
            // Half the cases announce exactly the bytes that follow (a complete packet).
            let len = if exact { body.len() as u8 } else { len };
            buf.extend_from_slice(&[first, len]);
            buf.extend_from_slice(&body);
            if let Ok(Some(packet)) = codec.decode(&mut buf) {
                let mut again = BytesMut::new();
                if codec.encode(&packet, &mut again).is_ok() {
                    let _ = codec.decode(&mut again);
                }
            }
        }
    }
}
