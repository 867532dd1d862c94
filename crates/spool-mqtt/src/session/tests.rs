//! Unit tests of the session: packets and time in, actions out. No network, no clock read
//! (time is a base `Instant` plus offsets).

use super::*;
use crate::packet::{ConnAck, Disconnect, SubAck, UnsubAck};

mod inbound_model;
mod model;

const V311: Protocol = Protocol::V311;
const V5: Protocol = Protocol::V5;

fn config(protocol: Protocol) -> SessionConfig {
    SessionConfig::new(protocol, "dev-1")
}

fn record(seq: u64, qos: QoS) -> OutRecord {
    OutRecord {
        seq,
        topic: format!("dev/{seq}"),
        payload: Bytes::from(seq.to_be_bytes().to_vec()),
        qos,
        retain: false,
        expires_at: None,
        user_properties: Vec::new(),
    }
}

/// The sequence number a test record was published with (its payload).
fn seq_of(p: &Publish) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&p.payload);
    u64::from_be_bytes(b)
}

struct Clock {
    t0: Instant,
}

impl Clock {
    fn new() -> Clock {
        Clock { t0: Instant::now() }
    }
    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }
}

fn connack(session_present: bool) -> Packet {
    Packet::ConnAck(ConnAck {
        session_present,
        ..ConnAck::default()
    })
}

/// CONNECT + a successful CONNACK; returns the CONNACK's actions.
fn connect(s: &mut Session, now: Instant, session_present: bool) -> Vec<Action> {
    let _ = s.connect(now);
    s.handle_incoming(connack(session_present), now)
        .expect("connack accepted")
}

fn sent(actions: &[Action]) -> Vec<Packet> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(p) => Some(p.clone()),
            _ => None,
        })
        .collect()
}

/// (seq, packet id, dup) of every PUBLISH sent.
fn publishes(actions: &[Action]) -> Vec<(u64, u16, bool)> {
    sent(actions)
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some((seq_of(p), p.packet_id, p.dup)),
            _ => None,
        })
        .collect()
}

fn acked(actions: &[Action]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Acked { seq } => Some(*seq),
            _ => None,
        })
        .collect()
}

fn possible_duplicates(actions: &[Action]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::PossibleDuplicate { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect()
}

fn puback(packet_id: u16) -> Packet {
    Packet::PubAck(Ack::success(packet_id))
}

fn offer(s: &mut Session, r: OutRecord, now: Instant) -> Vec<Action> {
    s.offer(r, now).expect("offer accepted")
}

// ---------------------------------------------------------------------------------------
// CONNECT

#[test]
fn connect_asks_for_a_persistent_session_in_both_versions() {
    let c = Clock::new();
    let mut cfg = config(V311);
    cfg.username = Some("user".into());
    cfg.password = Some("secret".into());
    cfg.keep_alive = Duration::from_secs(45);
    let mut s = Session::new(cfg.clone()).unwrap();
    let Packet::Connect(connect) = s.connect(c.at(0)) else {
        panic!("not CONNECT")
    };
    assert_eq!(connect.protocol, V311);
    assert!(!connect.clean_start, "3.1.1: clean session off");
    assert_eq!(connect.session_expiry_s, None);
    assert_eq!(connect.keep_alive_s, 45);
    assert_eq!(connect.client_id, "dev-1");
    assert_eq!(connect.username.as_deref(), Some("user"));
    assert_eq!(connect.password.as_deref(), Some("secret"));
    assert_eq!(s.state(), ConnectionState::Connecting);

    cfg.protocol = V5;
    cfg.session_expiry_s = 7200;
    let mut s = Session::new(cfg).unwrap();
    let Packet::Connect(connect) = s.connect(c.at(0)) else {
        panic!("not CONNECT")
    };
    assert!(!connect.clean_start, "5: clean start off");
    assert_eq!(connect.session_expiry_s, Some(7200));
    assert_eq!(connect.receive_maximum, Some(64));
}

#[test]
fn clean_start_is_asked_at_every_connect_and_unacked_records_still_go_again() {
    for protocol in [V311, V5] {
        let c = Clock::new();
        let mut cfg = config(protocol);
        cfg.clean_start = true;
        cfg.session_expiry_s = 7200;
        let mut s = Session::new(cfg).unwrap();
        for round in 0..2 {
            let Packet::Connect(connect) = s.connect(c.at(round * 10)) else {
                panic!("not CONNECT")
            };
            assert!(connect.clean_start, "{protocol:?} connect {round}");
            // MQTT 5: expiry 0, so that the broker keeps nothing of ours between connects.
            let expiry = (protocol == V5).then_some(0);
            assert_eq!(connect.session_expiry_s, expiry, "{protocol:?}");
            let out = s.handle_incoming(connack(false), c.at(round * 10)).unwrap();
            assert_eq!(
                out[0],
                Action::Connected {
                    session_present: false
                }
            );
            if round == 0 {
                // One QoS 1 record and one QoS 2 record after its PUBREC, both in flight
                // when the link drops.
                let id1 = publishes(&offer(&mut s, record(1, QoS::AtLeastOnce), c.at(1)))[0].1;
                let id2 = publishes(&offer(&mut s, record(2, QoS::ExactlyOnce), c.at(1)))[0].1;
                s.handle_incoming(Packet::PubRec(Ack::success(id2)), c.at(2))
                    .unwrap();
                s.connection_lost();
                assert!(id1 != 0 && id2 != 0);
            } else {
                // Both are written again (the QoS 2 one as a new PUBLISH: the broker has no
                // transaction to release), counted as possible duplicates, and acked.
                let p = publishes(&out);
                assert_eq!(
                    p.iter().map(|&(seq, _, _)| seq).collect::<Vec<_>>(),
                    vec![1, 2]
                );
                assert_eq!(possible_duplicates(&out), vec![1, 2]);
                let mut done = acked(&s.handle_incoming(puback(p[0].1), c.at(11)).unwrap());
                s.handle_incoming(Packet::PubRec(Ack::success(p[1].1)), c.at(11))
                    .unwrap();
                done.extend(acked(
                    &s.handle_incoming(Packet::PubComp(Ack::success(p[1].1)), c.at(11))
                        .unwrap(),
                ));
                assert_eq!(done, vec![1, 2]);
                assert_eq!(s.held(), 0);
            }
        }
    }
}

#[test]
fn bad_configurations_are_refused_with_typed_errors() {
    let mut cfg = config(V5);
    cfg.client_id.clear();
    assert_eq!(Session::new(cfg).unwrap_err(), ConfigError::EmptyClientId);
    let mut cfg = config(V5);
    cfg.window = 0;
    assert!(matches!(Session::new(cfg), Err(ConfigError::Window { .. })));
    let mut cfg = config(V5);
    cfg.window = WINDOW_MAX + 1;
    assert!(matches!(Session::new(cfg), Err(ConfigError::Window { .. })));
    let mut cfg = config(V5);
    cfg.keep_alive = Duration::from_secs(70_000);
    assert!(matches!(
        Session::new(cfg),
        Err(ConfigError::KeepAliveTooLong { .. })
    ));
    let mut cfg = config(V5);
    cfg.ping_timeout = Duration::ZERO;
    assert_eq!(Session::new(cfg).unwrap_err(), ConfigError::ZeroPingTimeout);
}

#[test]
fn connack_refusals_map_to_typed_errors() {
    let c = Clock::new();
    let cases = [
        (0x86, ConnectRefusal::BadCredentials),
        (0x87, ConnectRefusal::NotAuthorized),
        (0x88, ConnectRefusal::ServerUnavailable),
        (0x89, ConnectRefusal::ServerBusy),
        (0x8A, ConnectRefusal::Banned),
        (0x85, ConnectRefusal::ClientIdRejected),
        (0x84, ConnectRefusal::UnsupportedProtocolVersion),
        (0x9C, ConnectRefusal::UseAnotherServer),
        (0x9F, ConnectRefusal::ConnectionRateExceeded),
        (0x80, ConnectRefusal::Other(0x80)),
    ];
    for (code, refusal) in cases {
        let mut s = Session::new(config(V5)).unwrap();
        offer(&mut s, record(1, QoS::AtLeastOnce), c.at(0));
        let _ = s.connect(c.at(0));
        let err = s
            .handle_incoming(
                Packet::ConnAck(ConnAck {
                    reason: code,
                    reason_string: Some("go away".into()),
                    ..ConnAck::default()
                }),
                c.at(1),
            )
            .unwrap_err();
        let Error::ConnectRefused {
            refusal: got,
            reason_string,
            ..
        } = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!(*got, refusal);
        assert_eq!(reason_string.as_deref(), Some("go away"));
        assert!(err.to_string().contains("go away"));
        assert_eq!(s.state(), ConnectionState::Disconnected);
        assert_eq!(s.held(), 1, "a refused connection keeps the records");
    }
    assert!(ConnectRefusal::BadCredentials.is_configuration_problem());
    assert!(!ConnectRefusal::ServerUnavailable.is_configuration_problem());
    assert!(ConnectRefusal::BadCredentials
        .to_string()
        .contains("check the credentials"));
}

#[test]
fn a_v311_bad_password_is_bad_credentials() {
    // Wire bytes of a 3.1.1 CONNACK with return code 4, through the codec.
    let codec = Codec::new(V311, 1024);
    let mut buf = bytes::BytesMut::from(&[0x20, 0x02, 0x00, 0x04][..]);
    let packet = codec.decode(&mut buf).unwrap().unwrap();
    let c = Clock::new();
    let mut s = Session::new(config(V311)).unwrap();
    let _ = s.connect(c.at(0));
    assert!(matches!(
        s.handle_incoming(packet, c.at(1)),
        Err(Error::ConnectRefused {
            refusal: ConnectRefusal::BadCredentials,
            ..
        })
    ));
}

#[test]
fn a_disconnect_instead_of_connack_is_a_server_disconnect() {
    let c = Clock::new();
    let mut s = Session::new(config(V5)).unwrap();
    let _ = s.connect(c.at(0));
    assert!(matches!(
        s.handle_incoming(
            Packet::Disconnect(Disconnect {
                reason: 0x89,
                ..Disconnect::default()
            }),
            c.at(1)
        ),
        Err(Error::ServerDisconnected { reason: 0x89, .. })
    ));
    assert_eq!(s.state(), ConnectionState::Disconnected);
}

#[test]
fn anything_but_connack_first_is_a_protocol_error() {
    let c = Clock::new();
    let mut s = Session::new(config(V311)).unwrap();
    let _ = s.connect(c.at(0));
    assert!(matches!(
        s.handle_incoming(puback(1), c.at(1)),
        Err(Error::Protocol { .. })
    ));
    assert_eq!(s.state(), ConnectionState::Disconnected);
}

// ---------------------------------------------------------------------------------------
// Delivery

#[test]
fn qos1_is_acked_only_by_the_puback_of_its_own_packet_id() {
    let c = Clock::new();
    for protocol in [V311, V5] {
        let mut s = Session::new(config(protocol)).unwrap();
        connect(&mut s, c.at(0), false);
        let a = offer(&mut s, record(10, QoS::AtLeastOnce), c.at(1));
        let b = offer(&mut s, record(11, QoS::AtLeastOnce), c.at(1));
        let (_, id10, dup) = publishes(&a)[0];
        let (_, id11, _) = publishes(&b)[0];
        assert!(!dup);
        assert_ne!(id10, id11);
        assert!(acked(&a).is_empty());
        // An ack for an id nobody uses changes nothing.
        let unknown = if id11 == 500 { 501 } else { 500 };
        let out = s.handle_incoming(puback(unknown), c.at(2)).unwrap();
        assert!(acked(&out).is_empty());
        assert_eq!(s.stats().unexpected_acks, 1);
        let out = s.handle_incoming(puback(id11), c.at(2)).unwrap();
        assert_eq!(acked(&out), vec![11]);
        // A second PUBACK for the same id is not a second ack.
        let out = s.handle_incoming(puback(id11), c.at(2)).unwrap();
        assert!(acked(&out).is_empty());
        let out = s.handle_incoming(puback(id10), c.at(3)).unwrap();
        assert_eq!(acked(&out), vec![10]);
        assert_eq!(s.held(), 0);
        assert_eq!(s.in_flight(), 0);
    }
}

#[test]
fn qos0_counts_as_delivered_once_written() {
    let c = Clock::new();
    let mut s = Session::new(config(V311)).unwrap();
    // Offline: kept.
    assert!(offer(&mut s, record(1, QoS::AtMostOnce), c.at(0)).is_empty());
    assert_eq!(s.held(), 1);
    let out = connect(&mut s, c.at(1), false);
    assert_eq!(publishes(&out), vec![(1, 0, false)]);
    assert_eq!(acked(&out), vec![1]);
    // The ack comes after the packet it depends on.
    let send_at = out
        .iter()
        .position(|a| matches!(a, Action::Send(Packet::Publish(_))))
        .unwrap();
    let ack_at = out
        .iter()
        .position(|a| matches!(a, Action::Acked { .. }))
        .unwrap();
    assert!(send_at < ack_at);
    assert_eq!(s.held(), 0);
}

#[test]
fn records_offered_offline_go_out_in_order_on_connect() {
    let c = Clock::new();
    let mut s = Session::new(config(V5)).unwrap();
    for seq in 1..=5 {
        assert!(offer(&mut s, record(seq, QoS::AtLeastOnce), c.at(0)).is_empty());
    }
    let out = connect(&mut s, c.at(1), false);
    let order: Vec<u64> = publishes(&out).iter().map(|p| p.0).collect();
    assert_eq!(order, vec![1, 2, 3, 4, 5]);
    assert!(
        publishes(&out).iter().all(|p| !p.2),
        "first writes have no DUP"
    );
    assert!(possible_duplicates(&out).is_empty());
}

fn resend_after_reconnect(protocol: Protocol, session_present: bool) {
    let c = Clock::new();
    let mut s = Session::new(config(protocol)).unwrap();
    connect(&mut s, c.at(0), false);
    let mut ids = HashMap::new();
    for seq in 1..=5 {
        let out = offer(&mut s, record(seq, QoS::AtLeastOnce), c.at(1));
        ids.insert(seq, publishes(&out)[0].1);
    }
    // 2 and 4 are acked; 1, 3, 5 are not when the link drops.
    s.handle_incoming(puback(ids[&2]), c.at(2)).unwrap();
    s.handle_incoming(puback(ids[&4]), c.at(2)).unwrap();
    s.connection_lost();
    assert_eq!(s.state(), ConnectionState::Disconnected);
    // A newer record offered while offline.
    assert!(offer(&mut s, record(6, QoS::AtLeastOnce), c.at(3)).is_empty());

    let out = connect(&mut s, c.at(4), session_present);
    assert_eq!(out[0], Action::Connected { session_present });
    let p = publishes(&out);
    assert_eq!(
        p,
        vec![
            (1, ids[&1], true),
            (3, ids[&3], true),
            (5, ids[&5], true),
            (6, p[3].1, false)
        ],
        "old records first, in order, same ids, DUP set; then the new one"
    );
    assert_eq!(possible_duplicates(&out), vec![1, 3, 5]);
    assert_eq!(s.stats().possible_duplicates, 3);
    assert_eq!(s.stats().resent, 3);
    // Every one is acked by its PUBACK on the new connection.
    let mut done = Vec::new();
    for (seq, id, _) in p {
        done.extend(acked(&s.handle_incoming(puback(id), c.at(5)).unwrap()));
        assert!(done.contains(&seq));
    }
    assert_eq!(done, vec![1, 3, 5, 6]);
}

#[test]
fn unacked_records_are_resent_in_order_when_the_broker_kept_the_session() {
    resend_after_reconnect(V311, true);
    resend_after_reconnect(V5, true);
}

#[test]
fn unacked_records_are_resent_in_order_when_the_broker_lost_the_session() {
    resend_after_reconnect(V311, false);
    resend_after_reconnect(V5, false);
}

#[test]
fn a_puback_from_the_old_connection_does_not_ack_before_the_resend() {
    let c = Clock::new();
    let mut cfg = config(V5);
    cfg.window = 4;
    let mut s = Session::new(cfg).unwrap();
    connect(&mut s, c.at(0), true);
    let out = offer(&mut s, record(1, QoS::AtLeastOnce), c.at(0));
    let id = publishes(&out)[0].1;
    s.connection_lost();
    // Still disconnected: a stray ack is ignored.
    assert!(s.handle_incoming(puback(id), c.at(1)).unwrap().is_empty());
    let _ = s.connect(c.at(2));
    // Before CONNACK it is a protocol error, not an ack.
    assert!(s.handle_incoming(puback(id), c.at(2)).is_err());
    assert_eq!(s.held(), 1);
}

#[test]
fn packet_ids_are_never_zero_never_shared_and_are_freed() {
    let c = Clock::new();
    let mut cfg = config(V311);
    cfg.window = 3;
    let mut s = Session::new(cfg).unwrap();
    connect(&mut s, c.at(0), false);
    let mut in_use = Vec::new();
    for seq in 1..=3 {
        let out = offer(&mut s, record(seq, QoS::AtLeastOnce), c.at(0));
        in_use.push(publishes(&out)[0].1);
    }
    assert!(in_use.iter().all(|&id| id != 0));
    let mut sorted = in_use.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 3);
    // Full: a fourth is refused until something is acked.
    assert!(matches!(
        s.offer(record(4, QoS::AtLeastOnce), c.at(0)),
        Err(OfferError::Full { held: 3, window: 3 })
    ));
    assert_eq!(s.free_slots(), 0);
    s.handle_incoming(puback(in_use[1]), c.at(1)).unwrap();
    assert_eq!(s.free_slots(), 1);
    let out = offer(&mut s, record(4, QoS::AtLeastOnce), c.at(1));
    let id4 = publishes(&out)[0].1;
    assert!(
        id4 != in_use[0] && id4 != in_use[2],
        "never an id in flight"
    );
}

#[test]
fn packet_id_allocation_wraps_and_skips_ids_in_use() {
    let mut ids = PacketIds::new();
    ids.next = 65_534;
    assert!(ids.reserve(1));
    assert_eq!(ids.allocate(), Some(65_534));
    assert_eq!(ids.allocate(), Some(65_535));
    assert_eq!(ids.allocate(), Some(2), "0 is skipped, 1 is in use");
    ids.free(65_534);
    assert!(!ids.reserve(0));
    assert!(!ids.reserve(1));
    // Exhaustion is a None, never a reuse.
    let mut ids = PacketIds::new();
    for _ in 0..65_535 {
        assert!(ids.allocate().is_some());
    }
    assert_eq!(ids.allocate(), None);
    ids.free(777);
    assert_eq!(ids.allocate(), Some(777));
}

#[test]
fn the_window_is_bounded_by_the_brokers_receive_maximum() {
    let c = Clock::new();
    let mut cfg = config(V5);
    cfg.window = 5;
    let mut s = Session::new(cfg).unwrap();
    for seq in 1..=5 {
        offer(&mut s, record(seq, QoS::AtLeastOnce), c.at(0));
    }
    let _ = s.connect(c.at(0));
    let out = s
        .handle_incoming(
            Packet::ConnAck(ConnAck {
                receive_maximum: Some(2),
                ..ConnAck::default()
            }),
            c.at(1),
        )
        .unwrap();
    assert_eq!(s.window(), 2);
    let p = publishes(&out);
    assert_eq!(p.iter().map(|p| p.0).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(s.in_flight(), 2);
    // Each ack lets exactly one more go, in order.
    let out = s.handle_incoming(puback(p[1].1), c.at(2)).unwrap();
    assert_eq!(acked(&out), vec![2]);
    assert_eq!(
        publishes(&out).iter().map(|p| p.0).collect::<Vec<_>>(),
        vec![3]
    );
    let out = s.handle_incoming(puback(p[0].1), c.at(2)).unwrap();
    assert_eq!(
        publishes(&out).iter().map(|p| p.0).collect::<Vec<_>>(),
        vec![4]
    );
    assert_eq!(s.in_flight(), 2);
    // The configured window also holds when the broker allows more.
    let mut cfg = config(V311);
    cfg.window = 2;
    let mut s = Session::new(cfg).unwrap();
    connect(&mut s, c.at(0), false);
    assert_eq!(s.window(), 2);
}

#[test]
fn a_311_connection_keeps_at_most_mosquittos_default_in_flight() {
    // MQTT 3.1.1 has no Receive Maximum; Mosquitto drops (and acks as if delivered) what a
    // 3.1.1 client sends over its max_inflight_messages, 20 by default.
    let c = Clock::new();
    let mut cfg = config(V311);
    cfg.window = 256;
    let mut s = Session::new(cfg).unwrap();
    for seq in 1..=30 {
        offer(&mut s, record(seq, QoS::AtLeastOnce), c.at(0));
    }
    let _ = s.connect(c.at(0));
    let out = s.handle_incoming(connack(false), c.at(1)).unwrap();
    assert_eq!(s.window(), crate::session::V311_RECEIVE_MAXIMUM);
    assert_eq!(publishes(&out).len(), 20);
    assert_eq!(s.in_flight(), 20);
    // MQTT 5 without a Receive Maximum in CONNACK: the configured window.
    let mut cfg = config(V5);
    cfg.window = 256;
    let mut s = Session::new(cfg).unwrap();
    for seq in 1..=30 {
        offer(&mut s, record(seq, QoS::AtLeastOnce), c.at(0));
    }
    let _ = s.connect(c.at(0));
    let out = s.handle_incoming(connack(false), c.at(1)).unwrap();
    assert_eq!(publishes(&out).len(), 30);
}

#[test]
fn a_smaller_receive_maximum_after_reconnect_limits_the_resend() {
    let c = Clock::new();
    let mut cfg = config(V5);
    cfg.window = 4;
    let mut s = Session::new(cfg).unwrap();
    connect(&mut s, c.at(0), true);
    for seq in 1..=4 {
        offer(&mut s, record(seq, QoS::AtLeastOnce), c.at(0));
    }
    assert_eq!(s.in_flight(), 4);
    s.connection_lost();
    let _ = s.connect(c.at(1));
    let out = s
        .handle_incoming(
            Packet::ConnAck(ConnAck {
                session_present: true,
                receive_maximum: Some(1),
                ..ConnAck::default()
            }),
            c.at(1),
        )
        .unwrap();
    let p = publishes(&out);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].0, 1);
    let out = s.handle_incoming(puback(p[0].1), c.at(2)).unwrap();
    assert_eq!(publishes(&out)[0].0, 2);
    assert!(publishes(&out)[0].2, "a resend keeps its DUP flag");
}

// ---------------------------------------------------------------------------------------
// QoS 2

fn progress(actions: &[Action]) -> Vec<(u64, u16, Qos2State)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Qos2Progress {
                seq,
                packet_id,
                state,
            } => Some((*seq, *packet_id, *state)),
            _ => None,
        })
        .collect()
}

/// Asserts that every `Qos2Progress` comes before the packet it announces.
fn assert_progress_before_packet(actions: &[Action]) {
    for (i, a) in actions.iter().enumerate() {
        let wanted = match a {
            Action::Send(Packet::Publish(p)) if p.qos == QoS::ExactlyOnce => {
                Some((p.packet_id, Qos2State::Published))
            }
            Action::Send(Packet::PubRel(r)) => Some((r.packet_id, Qos2State::Released)),
            _ => None,
        };
        let Some((id, state)) = wanted else { continue };
        let announced = actions[..i].iter().any(|b| {
            matches!(b, Action::Qos2Progress { packet_id, state: st, .. }
                if *packet_id == id && *st == state)
        });
        // A progress already recorded on an earlier call needs no new announcement; the
        // tests below call this only where it is the first time.
        assert!(
            announced,
            "no Qos2Progress before packet {i} in {actions:?}"
        );
    }
}

#[test]
fn qos2_reports_progress_before_each_packet_and_acks_on_pubcomp() {
    let c = Clock::new();
    for protocol in [V311, V5] {
        let mut s = Session::new(config(protocol)).unwrap();
        connect(&mut s, c.at(0), false);
        let out = offer(&mut s, record(7, QoS::ExactlyOnce), c.at(1));
        assert_progress_before_packet(&out);
        let id = publishes(&out)[0].1;
        assert_eq!(progress(&out), vec![(7, id, Qos2State::Published)]);
        let out = s
            .handle_incoming(Packet::PubRec(Ack::success(id)), c.at(2))
            .unwrap();
        assert_progress_before_packet(&out);
        assert_eq!(progress(&out), vec![(7, id, Qos2State::Released)]);
        assert_eq!(sent(&out), vec![Packet::PubRel(Ack::success(id))]);
        assert!(acked(&out).is_empty(), "PUBREC is not delivery");
        // A repeated PUBREC gets the PUBREL again, no new progress.
        let out = s
            .handle_incoming(Packet::PubRec(Ack::success(id)), c.at(2))
            .unwrap();
        assert!(progress(&out).is_empty());
        assert_eq!(sent(&out), vec![Packet::PubRel(Ack::success(id))]);
        // A PUBACK for a QoS 2 id is not an ack.
        let out = s.handle_incoming(puback(id), c.at(3)).unwrap();
        assert!(acked(&out).is_empty());
        let out = s
            .handle_incoming(Packet::PubComp(Ack::success(id)), c.at(3))
            .unwrap();
        assert_eq!(acked(&out), vec![7]);
        assert_eq!(s.held(), 0);
    }
}

#[test]
fn qos2_pubrel_is_resent_with_the_same_id_when_the_session_was_kept() {
    let c = Clock::new();
    let mut s = Session::new(config(V5)).unwrap();
    connect(&mut s, c.at(0), false);
    let out = offer(&mut s, record(1, QoS::ExactlyOnce), c.at(0));
    let id1 = publishes(&out)[0].1;
    let out = offer(&mut s, record(2, QoS::ExactlyOnce), c.at(0));
    let id2 = publishes(&out)[0].1;
    s.handle_incoming(Packet::PubRec(Ack::success(id1)), c.at(1))
        .unwrap();
    s.connection_lost();
    let out = connect(&mut s, c.at(2), true);
    assert_eq!(
        sent(&out)[..2],
        [
            Packet::PubRel(Ack::success(id1)),
            Packet::Publish(Publish {
                dup: true,
                ..publish_of(&record(2, QoS::ExactlyOnce), id2)
            })
        ]
    );
    assert!(progress(&out).is_empty(), "nothing changed");
    assert!(
        possible_duplicates(&out).is_empty(),
        "the broker dedups by id"
    );
    let out = s
        .handle_incoming(Packet::PubComp(Ack::success(id1)), c.at(3))
        .unwrap();
    assert_eq!(acked(&out), vec![1]);
}

fn publish_of(r: &OutRecord, packet_id: u16) -> Publish {
    Publish {
        topic: r.topic.clone(),
        payload: r.payload.clone(),
        qos: r.qos,
        retain: r.retain,
        dup: false,
        packet_id,
        message_expiry_s: None,
        user_properties: Vec::new(),
    }
}

#[test]
fn qos2_publish_is_resent_and_counted_when_the_broker_lost_the_session() {
    let c = Clock::new();
    let mut s = Session::new(config(V311)).unwrap();
    connect(&mut s, c.at(0), false);
    let out = offer(&mut s, record(1, QoS::ExactlyOnce), c.at(0));
    let id = publishes(&out)[0].1;
    s.handle_incoming(Packet::PubRec(Ack::success(id)), c.at(1))
        .unwrap();
    s.connection_lost();
    let out = connect(&mut s, c.at(2), false);
    assert_eq!(possible_duplicates(&out), vec![1]);
    // The recorded stage goes back to Published before the PUBLISH is written.
    assert_eq!(progress(&out), vec![(1, id, Qos2State::Published)]);
    assert_progress_before_packet(&out);
    assert_eq!(publishes(&out), vec![(1, id, true)]);
    // And the transaction runs again to the end.
    let out = s
        .handle_incoming(Packet::PubRec(Ack::success(id)), c.at(3))
        .unwrap();
    assert_eq!(progress(&out), vec![(1, id, Qos2State::Released)]);
    let out = s
        .handle_incoming(Packet::PubComp(Ack::success(id)), c.at(3))
        .unwrap();
    assert_eq!(acked(&out), vec![1]);
}

/// What a durable store would hold: the last progress per record, removed on ack.
#[derive(Default)]
struct Recorded(BTreeMap<u64, (u16, Qos2State)>);

impl Recorded {
    fn apply(&mut self, actions: &[Action]) {
        for a in actions {
            match a {
                Action::Qos2Progress {
                    seq,
                    packet_id,
                    state,
                } => {
                    self.0.insert(*seq, (*packet_id, *state));
                }
                Action::Acked { seq } | Action::Rejected { seq, .. } => {
                    self.0.remove(seq);
                }
                _ => {}
            }
        }
    }

    fn restore(&self) -> Vec<Qos2Restore> {
        self.0
            .iter()
            .map(|(&seq, &(packet_id, state))| Qos2Restore {
                record: record(seq, QoS::ExactlyOnce),
                packet_id,
                state,
            })
            .collect()
    }
}

#[test]
fn qos2_finishes_with_the_same_packet_ids_after_a_process_restart() {
    let c = Clock::new();
    let mut recorded = Recorded::default();
    let mut s = Session::new(config(V5)).unwrap();
    recorded.apply(&connect(&mut s, c.at(0), false));
    let out = offer(&mut s, record(1, QoS::ExactlyOnce), c.at(0));
    recorded.apply(&out);
    let id1 = publishes(&out)[0].1;
    let out = offer(&mut s, record(2, QoS::ExactlyOnce), c.at(0));
    recorded.apply(&out);
    let id2 = publishes(&out)[0].1;
    recorded.apply(
        &s.handle_incoming(Packet::PubRec(Ack::success(id1)), c.at(1))
            .unwrap(),
    );
    // The process dies here: 1 is Released, 2 is Published.
    drop(s);
    assert_eq!(
        recorded.0,
        BTreeMap::from([
            (1, (id1, Qos2State::Released)),
            (2, (id2, Qos2State::Published))
        ])
    );

    let mut s = Session::restore(config(V5), recorded.restore()).unwrap();
    assert_eq!(s.held(), 2);
    // A newer record offered after the restart takes a different id.
    assert!(offer(&mut s, record(3, QoS::ExactlyOnce), c.at(2)).is_empty());
    let out = connect(&mut s, c.at(3), true);
    recorded.apply(&out);
    let pkts = sent(&out);
    assert_eq!(pkts[0], Packet::PubRel(Ack::success(id1)));
    let Packet::Publish(p2) = &pkts[1] else {
        panic!("{pkts:?}")
    };
    assert_eq!((seq_of(p2), p2.packet_id, p2.dup), (2, id2, true));
    let Packet::Publish(p3) = &pkts[2] else {
        panic!("{pkts:?}")
    };
    assert_eq!(seq_of(p3), 3);
    assert!(p3.packet_id != id1 && p3.packet_id != id2);
    assert!(possible_duplicates(&out).is_empty());

    let out = s
        .handle_incoming(Packet::PubComp(Ack::success(id1)), c.at(4))
        .unwrap();
    assert_eq!(acked(&out), vec![1]);
    recorded.apply(&out);
    assert!(!recorded.0.contains_key(&1));
}

#[test]
fn records_offered_again_after_a_restart_keep_their_order_with_the_restored_ones() {
    // In flight at the crash: 5 (QoS 1), 6 (QoS 2, recorded), 7 (QoS 1), 8 (QoS 2, recorded).
    let c = Clock::new();
    let restored = vec![
        Qos2Restore {
            record: record(8, QoS::ExactlyOnce),
            packet_id: 80,
            state: Qos2State::Published,
        },
        Qos2Restore {
            record: record(6, QoS::ExactlyOnce),
            packet_id: 60,
            state: Qos2State::Released,
        },
    ];
    let mut s = Session::restore(config(V5), restored).unwrap();
    // The outbox offers the rest again, in order, before connecting.
    for seq in [5, 7, 9] {
        assert!(offer(&mut s, record(seq, QoS::AtLeastOnce), c.at(0)).is_empty());
    }
    let out = connect(&mut s, c.at(1), true);
    // One more after the connect goes last.
    let later = offer(&mut s, record(4, QoS::AtLeastOnce), c.at(2));
    let order: Vec<String> = sent(&out)
        .iter()
        .chain(sent(&later).iter())
        .map(|p| match p {
            Packet::Publish(p) => format!("P{}", seq_of(p)),
            Packet::PubRel(a) => format!("R{}", a.packet_id),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(order, ["P5", "R60", "P7", "P8", "P9", "P4"]);
}

#[test]
fn what_the_broker_announced_it_cannot_take_is_rejected_not_resent_forever() {
    let c = Clock::new();
    let mut s = Session::new(config(V5)).unwrap();
    let _ = s.connect(c.at(0));
    s.handle_incoming(
        Packet::ConnAck(ConnAck {
            maximum_qos: Some(1),
            retain_available: Some(false),
            ..ConnAck::default()
        }),
        c.at(0),
    )
    .unwrap();
    let out = offer(&mut s, record(1, QoS::ExactlyOnce), c.at(1));
    assert!(matches!(
        &out[..],
        [Action::Rejected { seq: 1, reason: reason::QOS_NOT_SUPPORTED, reason_string: Some(why) }]
            if why.contains("at most QoS 1")
    ));
    let mut retained = record(2, QoS::AtLeastOnce);
    retained.retain = true;
    let out = offer(&mut s, retained, c.at(1));
    assert!(matches!(
        out[..],
        [Action::Rejected {
            seq: 2,
            reason: reason::RETAIN_NOT_SUPPORTED,
            ..
        }]
    ));
    // QoS 1, not retained: fine.
    let out = offer(&mut s, record(3, QoS::AtLeastOnce), c.at(1));
    assert_eq!(publishes(&out).len(), 1);
    assert_eq!(s.stats().rejected, 2);
    assert_eq!(s.held(), 1);
}

#[test]
fn a_restored_release_the_broker_no_longer_knows_still_completes() {
    // The broker completed the transaction, we died before deleting the record: its
    // PUBCOMP says "packet id not found", which still means delivered.
    let c = Clock::new();
    let restored = vec![Qos2Restore {
        record: record(9, QoS::ExactlyOnce),
        packet_id: 42,
        state: Qos2State::Released,
    }];
    let mut s = Session::restore(config(V5), restored).unwrap();
    let out = connect(&mut s, c.at(0), true);
    assert_eq!(sent(&out), vec![Packet::PubRel(Ack::success(42))]);
    let out = s
        .handle_incoming(
            Packet::PubComp(Ack {
                packet_id: 42,
                reason: reason::PACKET_ID_NOT_FOUND,
                reason_string: None,
            }),
            c.at(1),
        )
        .unwrap();
    assert_eq!(acked(&out), vec![9]);
}

#[test]
fn a_restored_release_is_republished_when_the_session_is_gone() {
    let c = Clock::new();
    let restored = vec![Qos2Restore {
        record: record(9, QoS::ExactlyOnce),
        packet_id: 42,
        state: Qos2State::Released,
    }];
    let mut s = Session::restore(config(V311), restored).unwrap();
    let out = connect(&mut s, c.at(0), false);
    assert_eq!(progress(&out), vec![(9, 42, Qos2State::Published)]);
    assert_eq!(publishes(&out), vec![(9, 42, true)]);
    assert_eq!(possible_duplicates(&out), vec![9]);
}

#[test]
fn damaged_restore_state_is_refused() {
    let r = |seq, packet_id, qos| Qos2Restore {
        record: record(seq, qos),
        packet_id,
        state: Qos2State::Published,
    };
    assert_eq!(
        Session::restore(
            config(V5),
            vec![r(1, 5, QoS::ExactlyOnce), r(2, 5, QoS::ExactlyOnce)]
        )
        .unwrap_err(),
        RestoreError::DuplicatePacketId { packet_id: 5 }
    );
    assert_eq!(
        Session::restore(config(V5), vec![r(1, 0, QoS::ExactlyOnce)]).unwrap_err(),
        RestoreError::PacketIdZero { seq: 1 }
    );
    assert_eq!(
        Session::restore(config(V5), vec![r(1, 3, QoS::AtLeastOnce)]).unwrap_err(),
        RestoreError::NotQos2 { seq: 1 }
    );
    assert_eq!(
        Session::restore(
            config(V5),
            vec![r(1, 3, QoS::ExactlyOnce), r(1, 4, QoS::ExactlyOnce)]
        )
        .unwrap_err(),
        RestoreError::DuplicateSeq { seq: 1 }
    );
}

// ---------------------------------------------------------------------------------------
// MQTT 5 reason codes and properties

#[test]
fn puback_failure_codes_reject_the_record_once_and_success_codes_ack_it() {
    let c = Clock::new();
    let mut s = Session::new(config(V5)).unwrap();
    connect(&mut s, c.at(0), false);
    let id1 = publishes(&offer(&mut s, record(1, QoS::AtLeastOnce), c.at(0)))[0].1;
    let id2 = publishes(&offer(&mut s, record(2, QoS::AtLeastOnce), c.at(0)))[0].1;
    let out = s
        .handle_incoming(
            Packet::PubAck(Ack {
                packet_id: id1,
                reason: reason::NO_MATCHING_SUBSCRIBERS,
                reason_string: None,
            }),
            c.at(1),
        )
        .unwrap();
    assert_eq!(acked(&out), vec![1], "0x10 is a success");
    let out = s
        .handle_incoming(
            Packet::PubAck(Ack {
                packet_id: id2,
                reason: 0x87,
                reason_string: Some("no publishing to dev/2".into()),
            }),
            c.at(1),
        )
        .unwrap();
    assert_eq!(
        out,
        vec![Action::Rejected {
            seq: 2,
            reason: 0x87,
            reason_string: Some("no publishing to dev/2".into())
        }]
    );
    assert_eq!(s.stats().rejected, 1);
    // Not retried after a reconnect.
    s.connection_lost();
    let out = connect(&mut s, c.at(2), true);
    assert!(publishes(&out).is_empty());
    assert_eq!(s.held(), 0);
}

#[test]
fn a_failed_pubrec_ends_the_qos2_transaction() {
    let c = Clock::new();
    let mut s = Session::new(config(V5)).unwrap();
    connect(&mut s, c.at(0), false);
    let id = publishes(&offer(&mut s, record(1, QoS::ExactlyOnce), c.at(0)))[0].1;
    let out = s
        .handle_incoming(
            Packet::PubRec(Ack {
                packet_id: id,
                reason: 0x87,
                reason_string: None,
            }),
            c.at(1),
        )
        .unwrap();
    assert!(sent(&out).is_empty(), "no PUBREL after a failed PUBREC");
    assert!(matches!(
        out[..],
        [Action::Rejected {
            seq: 1,
            reason: 0x87,
            ..
        }]
    ));
}

#[test]
fn quota_exceeded_defers_the_record_instead_of_refusing_it() {
    let c = Clock::new();
    let mut s = Session::new(config(V5)).unwrap();
    connect(&mut s, c.at(0), false);
    let out = offer(&mut s, record(1, QoS::AtLeastOnce), c.at(0));
    let id1 = publishes(&out)[0].1;
    let out = offer(&mut s, record(2, QoS::ExactlyOnce), c.at(0));
    let id2 = publishes(&out)[0].1;
    let quota = |packet_id| Ack {
        packet_id,
        reason: 0x97,
        reason_string: Some("queue full".into()),
    };
    let out = s
        .handle_incoming(Packet::PubAck(quota(id1)), c.at(1))
        .unwrap();
    assert_eq!(out, vec![Action::Deferred { seq: 1 }]);
    let out = s
        .handle_incoming(Packet::PubRec(quota(id2)), c.at(1))
        .unwrap();
    assert!(sent(&out).is_empty(), "no PUBREL after a failed PUBREC");
    assert_eq!(out, vec![Action::Deferred { seq: 2 }]);
    let st = s.stats();
    assert_eq!((st.deferred, st.rejected, st.acked), (2, 0, 0));
    assert_eq!(s.held(), 0, "handed back to the caller");
    // Offered again later, they go as new messages (new packet ids are fine).
    let out = offer(&mut s, record(1, QoS::AtLeastOnce), c.at(1000));
    let p = publishes(&out);
    assert_eq!(p.len(), 1);
    let out = s.handle_incoming(puback(p[0].1), c.at(1001)).unwrap();
    assert_eq!(acked(&out), vec![1]);
}

#[test]
fn message_expiry_carries_the_remaining_ttl_and_late_records_expire() {
    let c = Clock::new();
    let mut s = Session::new(config(V5)).unwrap();
    let mut r1 = record(1, QoS::AtLeastOnce);
    r1.expires_at = Some(c.at(60_500));
    let mut r2 = record(2, QoS::AtLeastOnce);
    r2.expires_at = Some(c.at(5_000));
    offer(&mut s, r1, c.at(0));
    offer(&mut s, r2, c.at(0));
    assert_eq!(s.next_deadline(), Some(c.at(5_000)));
    // Offline past record 2's TTL: it expires without ever being written.
    let out = s.handle_tick(c.at(5_000)).unwrap();
    assert_eq!(out, vec![Action::Expired { seq: 2 }]);
    let out = connect(&mut s, c.at(10_000), false);
    let Packet::Publish(p) = &sent(&out)[0] else {
        panic!()
    };
    assert_eq!(p.message_expiry_s, Some(51), "50.5 s left, rounded up");
    // Once written it is finished normally even after its TTL.
    s.connection_lost();
    let out = connect(&mut s, c.at(70_000), true);
    let Packet::Publish(p) = &sent(&out)[0] else {
        panic!()
    };
    assert_eq!(p.message_expiry_s, Some(1));
    assert_eq!(s.stats().expired, 1);

    // MQTT 3.1.1 has no expiry property, but the TTL still applies before the first write.
    let mut s = Session::new(config(V311)).unwrap();
    let mut r = record(3, QoS::AtLeastOnce);
    r.expires_at = Some(c.at(100));
    offer(&mut s, r, c.at(0));
    let out = connect(&mut s, c.at(200), false);
    assert_eq!(acked(&out), Vec::<u64>::new());
    assert!(out.contains(&Action::Expired { seq: 3 }));
    assert!(publishes(&out).is_empty());
}

#[test]
fn under_send_late_records_are_written_without_a_message_expiry() {
    for protocol in [V311, V5] {
        let c = Clock::new();
        let mut cfg = config(protocol);
        cfg.expired = ExpiredPolicy::Send;
        let mut s = Session::new(cfg).unwrap();
        let mut late = record(1, QoS::AtLeastOnce);
        late.expires_at = Some(c.at(5_000));
        let mut in_time = record(2, QoS::AtLeastOnce);
        in_time.expires_at = Some(c.at(60_500));
        offer(&mut s, late, c.at(0));
        offer(&mut s, in_time, c.at(0));
        // Nothing to wake up for: a TTL drops nothing under this policy.
        assert_eq!(s.next_deadline(), None);
        assert!(s.handle_tick(c.at(6_000)).unwrap().is_empty());
        let out = connect(&mut s, c.at(10_000), false);
        assert!(!out.iter().any(|a| matches!(a, Action::Expired { .. })));
        let written: Vec<Publish> = sent(&out)
            .into_iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some(p),
                _ => None,
            })
            .collect();
        assert_eq!(written.len(), 2, "{protocol:?}: {out:?}");
        assert_eq!(seq_of(&written[0]), 1);
        assert_eq!(
            written[0].message_expiry_s, None,
            "late: no expiry interval"
        );
        let in_time_expiry = (protocol == V5).then_some(51);
        assert_eq!(written[1].message_expiry_s, in_time_expiry, "50.5 s left");
        assert_eq!(s.stats().expired, 0);
        // A resend after the TTL passed goes without one too.
        s.connection_lost();
        let out = connect(&mut s, c.at(70_000), true);
        let Packet::Publish(p) = &sent(&out)[1] else {
            panic!()
        };
        assert_eq!(seq_of(p), 2);
        assert_eq!(p.message_expiry_s, None);
    }
}

#[test]
fn user_properties_pass_through_in_v5_only() {
    let c = Clock::new();
    for (protocol, expect) in [(V5, 1), (V311, 0)] {
        let mut s = Session::new(config(protocol)).unwrap();
        connect(&mut s, c.at(0), false);
        let mut r = record(1, QoS::AtLeastOnce);
        r.user_properties = vec![("producer".into(), "dev-1".into())];
        let out = offer(&mut s, r, c.at(0));
        let Packet::Publish(p) = &sent(&out)[0] else {
            panic!()
        };
        assert_eq!(p.user_properties.len(), expect);
    }
}

#[test]
fn a_record_over_the_brokers_maximum_packet_size_is_rejected_not_looped() {
    let c = Clock::new();
    let mut s = Session::new(config(V5)).unwrap();
    let _ = s.connect(c.at(0));
    s.handle_incoming(
        Packet::ConnAck(ConnAck {
            maximum_packet_bytes: Some(64),
            ..ConnAck::default()
        }),
        c.at(0),
    )
    .unwrap();
    let mut big = record(1, QoS::AtLeastOnce);
    big.payload = Bytes::from(vec![0u8; 100]);
    let out = offer(&mut s, big, c.at(1));
    assert!(matches!(
        out[..],
        [Action::Rejected {
            seq: 1,
            reason: reason::PACKET_TOO_LARGE,
            ..
        }]
    ));
    assert_eq!(s.in_flight(), 0);
    assert!(s.packet_ids().is_empty(), "its packet id is free again");
    let out = offer(&mut s, record(2, QoS::AtLeastOnce), c.at(1));
    assert_eq!(publishes(&out).len(), 1);
}

#[test]
fn a_server_disconnect_closes_the_connection_and_keeps_the_records() {
    let c = Clock::new();
    let mut s = Session::new(config(V5)).unwrap();
    connect(&mut s, c.at(0), false);
    offer(&mut s, record(1, QoS::AtLeastOnce), c.at(0));
    let err = s
        .handle_incoming(
            Packet::Disconnect(Disconnect {
                reason: 0x8B,
                reason_string: Some("shutting down".into()),
                server_reference: None,
            }),
            c.at(1),
        )
        .unwrap_err();
    assert!(matches!(
        err,
        Error::ServerDisconnected { reason: 0x8B, .. }
    ));
    assert!(err.to_string().contains("shutting down"));
    assert_eq!(s.state(), ConnectionState::Disconnected);
    let out = connect(&mut s, c.at(2), true);
    assert_eq!(publishes(&out).len(), 1);
}

#[test]
fn an_invalid_topic_is_refused_at_offer() {
    let c = Clock::new();
    let mut s = Session::new(config(V5)).unwrap();
    let mut r = record(1, QoS::AtLeastOnce);
    r.topic = "a/+".into();
    assert!(matches!(
        s.offer(r, c.at(0)),
        Err(OfferError::Topic { seq: 1, .. })
    ));
    offer(&mut s, record(2, QoS::AtLeastOnce), c.at(0));
    assert_eq!(
        s.offer(record(2, QoS::AtLeastOnce), c.at(0)),
        Err(OfferError::DuplicateSeq { seq: 2 })
    );
}

// ---------------------------------------------------------------------------------------
// Deliberate disconnect

#[test]
fn a_deliberate_disconnect_sends_disconnect_and_then_nothing() {
    let c = Clock::new();
    let mut s = Session::new(config(V5)).unwrap();
    connect(&mut s, c.at(0), false);
    offer(&mut s, record(1, QoS::AtLeastOnce), c.at(0));
    let out = s.disconnect(c.at(1));
    assert_eq!(sent(&out), vec![Packet::Disconnect(Disconnect::default())]);
    assert_eq!(s.state(), ConnectionState::Closed);
    assert!(offer(&mut s, record(2, QoS::AtLeastOnce), c.at(2)).is_empty());
    assert!(s.handle_tick(c.at(100_000)).unwrap().is_empty());
    assert_eq!(s.next_deadline(), None);
    s.connection_lost();
    assert_eq!(s.state(), ConnectionState::Closed, "no reconnect by itself");
    assert!(s.disconnect(c.at(3)).is_empty(), "already closed");
    // Only an explicit connect resumes, with everything still in order.
    let out = connect(&mut s, c.at(4), true);
    assert_eq!(
        publishes(&out)
            .iter()
            .map(|p| (p.0, p.2))
            .collect::<Vec<_>>(),
        vec![(1, true), (2, false)]
    );
}

// ---------------------------------------------------------------------------------------
// Keep alive

#[test]
fn an_idle_link_is_pinged_and_a_silent_one_is_declared_half_open() {
    let c = Clock::new();
    let mut cfg = config(V311);
    cfg.keep_alive = Duration::from_secs(10);
    cfg.ping_timeout = Duration::from_secs(3);
    let mut s = Session::new(cfg).unwrap();
    connect(&mut s, c.at(0), false);
    assert_eq!(s.next_deadline(), Some(c.at(10_000)));
    assert!(s.handle_tick(c.at(9_999)).unwrap().is_empty());
    let out = s.handle_tick(c.at(10_000)).unwrap();
    assert_eq!(sent(&out), vec![Packet::PingReq]);
    assert_eq!(s.next_deadline(), Some(c.at(13_000)));
    // No second PINGREQ while one is outstanding.
    assert!(s.handle_tick(c.at(11_000)).unwrap().is_empty());
    // PINGRESP: fine again, next ping a keep alive later.
    s.handle_incoming(Packet::PingResp, c.at(11_000)).unwrap();
    assert_eq!(s.next_deadline(), Some(c.at(20_000)));
    let out = s.handle_tick(c.at(20_000)).unwrap();
    assert_eq!(sent(&out), vec![Packet::PingReq]);
    // Silence: half-open.
    let err = s.handle_tick(c.at(23_000)).unwrap_err();
    assert_eq!(err, Error::KeepAliveTimeout { timeout_ms: 3000 });
    assert_eq!(s.state(), ConnectionState::Disconnected);
}

#[test]
fn traffic_in_both_directions_postpones_the_ping() {
    let c = Clock::new();
    let mut cfg = config(V5);
    cfg.keep_alive = Duration::from_secs(10);
    let mut s = Session::new(cfg).unwrap();
    connect(&mut s, c.at(0), false);
    // We keep writing but the broker says nothing: still pinged (half-open detection does
    // not depend on our own writes).
    let id = publishes(&offer(&mut s, record(1, QoS::AtLeastOnce), c.at(8_000)))[0].1;
    let out = s.handle_tick(c.at(10_000)).unwrap();
    assert_eq!(sent(&out), vec![Packet::PingReq]);
    // Any packet from the broker counts as an answer.
    s.handle_incoming(puback(id), c.at(10_500)).unwrap();
    assert_eq!(s.next_deadline(), Some(c.at(20_000)));
}

#[test]
fn the_brokers_server_keep_alive_wins_and_zero_turns_pings_off() {
    let c = Clock::new();
    let mut s = Session::new(config(V5)).unwrap();
    let _ = s.connect(c.at(0));
    s.handle_incoming(
        Packet::ConnAck(ConnAck {
            server_keep_alive_s: Some(5),
            ..ConnAck::default()
        }),
        c.at(0),
    )
    .unwrap();
    assert_eq!(s.next_deadline(), Some(c.at(5_000)));

    let mut cfg = config(V311);
    cfg.keep_alive = Duration::ZERO;
    let mut s = Session::new(cfg).unwrap();
    connect(&mut s, c.at(0), false);
    assert_eq!(s.next_deadline(), None);
    assert!(s.handle_tick(c.at(1_000_000)).unwrap().is_empty());
}

#[test]
fn no_connack_in_time_is_an_error() {
    let c = Clock::new();
    let mut s = Session::new(config(V5)).unwrap();
    let _ = s.connect(c.at(0));
    assert_eq!(s.next_deadline(), Some(c.at(10_000)));
    assert!(s.handle_tick(c.at(9_000)).unwrap().is_empty());
    assert_eq!(
        s.handle_tick(c.at(10_000)).unwrap_err(),
        Error::ConnAckTimeout { timeout_ms: 10_000 }
    );
    assert_eq!(s.state(), ConnectionState::Disconnected);
}

#[test]
fn a_timeout_in_the_same_tick_as_an_expiry_does_not_lose_the_expiry() {
    // Regression: the expiry was decided (its slot removed) and then dropped with the
    // timeout's error: the record stayed leased in the store until the next restart.
    let c = Clock::new();
    let mut s = Session::new(config(V5)).unwrap();
    let mut r = record(7, QoS::AtLeastOnce);
    r.expires_at = Some(c.at(5_000));
    offer(&mut s, r, c.at(0));
    let _ = s.connect(c.at(0));
    // Both are due at 10 s: the CONNACK timeout wins, and the record is still there...
    assert_eq!(
        s.handle_tick(c.at(10_000)).unwrap_err(),
        Error::ConnAckTimeout { timeout_ms: 10_000 }
    );
    // ...to be reported expired by the next tick.
    assert_eq!(
        s.handle_tick(c.at(10_001)).unwrap(),
        vec![Action::Expired { seq: 7 }]
    );
    assert_eq!(s.stats().expired, 1);
}

// ---------------------------------------------------------------------------------------
// Subscriptions

fn filter(f: &str, qos: QoS) -> SubscribeFilter {
    SubscribeFilter {
        filter: f.into(),
        qos,
    }
}

#[test]
fn subscriptions_are_acknowledged_remembered_and_restored_after_reconnect() {
    let c = Clock::new();
    for protocol in [V311, V5] {
        let mut s = Session::new(config(protocol)).unwrap();
        // Offline: remembered, sent on connect.
        assert!(s
            .subscribe(vec![filter("cmd/dev-1/#", QoS::AtLeastOnce)], c.at(0))
            .unwrap()
            .is_empty());
        let out = connect(&mut s, c.at(0), false);
        let Packet::Subscribe(sub) = &sent(&out)[0] else {
            panic!("{out:?}")
        };
        assert_eq!(sub.filters, vec![filter("cmd/dev-1/#", QoS::AtLeastOnce)]);
        let out = s
            .handle_incoming(
                Packet::SubAck(SubAck {
                    packet_id: sub.packet_id,
                    codes: vec![1],
                }),
                c.at(1),
            )
            .unwrap();
        assert_eq!(
            out,
            vec![Action::Subscribed {
                filter: "cmd/dev-1/#".into(),
                result: Ok(QoS::AtLeastOnce)
            }]
        );
        // Online: sent at once; one refused.
        let out = s
            .subscribe(
                vec![
                    filter("cfg/+", QoS::ExactlyOnce),
                    filter("secret/#", QoS::AtMostOnce),
                ],
                c.at(2),
            )
            .unwrap();
        let Packet::Subscribe(sub) = &sent(&out)[0] else {
            panic!()
        };
        let out = s
            .handle_incoming(
                Packet::SubAck(SubAck {
                    packet_id: sub.packet_id,
                    codes: vec![2, 0x80],
                }),
                c.at(3),
            )
            .unwrap();
        assert_eq!(
            out[1],
            Action::Subscribed {
                filter: "secret/#".into(),
                result: Err(0x80)
            }
        );
        // Reconnect: the accepted filters are sent again, the refused one is not.
        s.connection_lost();
        let out = connect(&mut s, c.at(4), true);
        let Packet::Subscribe(sub) = &sent(&out)[0] else {
            panic!()
        };
        assert_eq!(
            sub.filters,
            vec![
                filter("cmd/dev-1/#", QoS::AtLeastOnce),
                filter("cfg/+", QoS::ExactlyOnce)
            ]
        );
    }
}

#[test]
fn unsubscribe_forgets_the_filter_and_repeats_until_acknowledged() {
    let c = Clock::new();
    let mut s = Session::new(config(V5)).unwrap();
    s.subscribe(
        vec![
            filter("a/#", QoS::AtLeastOnce),
            filter("b", QoS::AtMostOnce),
        ],
        c.at(0),
    )
    .unwrap();
    connect(&mut s, c.at(0), false);
    let out = s.unsubscribe(vec!["a/#".into()], c.at(1)).unwrap();
    assert!(matches!(&sent(&out)[0], Packet::Unsubscribe(u) if u.filters == ["a/#"]));
    assert_eq!(s.subscriptions(), &[filter("b", QoS::AtMostOnce)]);
    // The link drops before UNSUBACK: the UNSUBSCRIBE is sent again.
    s.connection_lost();
    let out = connect(&mut s, c.at(2), true);
    let pkts = sent(&out);
    assert!(
        matches!(&pkts[0], Packet::Subscribe(sub) if sub.filters == [filter("b", QoS::AtMostOnce)])
    );
    let Packet::Unsubscribe(u) = &pkts[1] else {
        panic!("{pkts:?}")
    };
    let out = s
        .handle_incoming(
            Packet::UnsubAck(UnsubAck {
                packet_id: u.packet_id,
                codes: vec![0],
            }),
            c.at(3),
        )
        .unwrap();
    assert_eq!(
        out,
        vec![Action::Unsubscribed {
            filter: "a/#".into(),
            reason: 0
        }]
    );
    s.connection_lost();
    let out = connect(&mut s, c.at(4), true);
    assert!(!sent(&out)
        .iter()
        .any(|p| matches!(p, Packet::Unsubscribe(_))));
}

#[test]
fn bad_filters_are_refused_with_typed_errors() {
    let c = Clock::new();
    let mut s = Session::new(config(V5)).unwrap();
    assert!(matches!(
        s.subscribe(vec![filter("a/#/b", QoS::AtMostOnce)], c.at(0)),
        Err(SubscribeError::Topic(TopicError::MisplacedHash { .. }))
    ));
    assert_eq!(s.subscribe(vec![], c.at(0)), Err(SubscribeError::Empty));
    assert!(matches!(
        s.unsubscribe(vec!["a+".into()], c.at(0)),
        Err(SubscribeError::Topic(TopicError::MisplacedPlus { .. }))
    ));
    assert!(s.subscriptions().is_empty());
}

// ---------------------------------------------------------------------------------------
// Incoming messages (downlink)

fn incoming(qos: QoS, packet_id: u16, dup: bool) -> Packet {
    Packet::Publish(Publish {
        topic: "cmd/dev-1".into(),
        payload: Bytes::from_static(b"reboot"),
        qos,
        retain: false,
        dup,
        packet_id,
        message_expiry_s: None,
        user_properties: Vec::new(),
    })
}

fn tokens(actions: &[Action]) -> Vec<Option<InboundToken>> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Incoming(i) => Some(i.token),
            _ => None,
        })
        .collect()
}

#[test]
fn incoming_qos1_is_acked_only_after_the_caller_stored_it_in_arrival_order() {
    let c = Clock::new();
    for protocol in [V311, V5] {
        let mut s = Session::new(config(protocol)).unwrap();
        connect(&mut s, c.at(0), false);
        let out = s
            .handle_incoming(incoming(QoS::AtMostOnce, 0, false), c.at(1))
            .unwrap();
        assert_eq!(tokens(&out), vec![None]);
        assert!(sent(&out).is_empty());
        let t1 = tokens(
            &s.handle_incoming(incoming(QoS::AtLeastOnce, 1, false), c.at(1))
                .unwrap(),
        )[0]
        .unwrap();
        let t2 = tokens(
            &s.handle_incoming(incoming(QoS::AtLeastOnce, 2, false), c.at(1))
                .unwrap(),
        )[0]
        .unwrap();
        assert_eq!(t2.packet_id(), 2);
        // The second is stored first: its PUBACK waits for the first one's.
        assert!(s.ack_incoming(t2, c.at(2)).is_empty());
        let out = s.ack_incoming(t1, c.at(3));
        assert_eq!(sent(&out), vec![puback(1), puback(2)]);
    }
}

#[test]
fn incoming_qos2_is_delivered_once_and_completed() {
    let c = Clock::new();
    let mut s = Session::new(config(V5)).unwrap();
    connect(&mut s, c.at(0), false);
    let out = s
        .handle_incoming(incoming(QoS::ExactlyOnce, 7, false), c.at(1))
        .unwrap();
    let t = tokens(&out)[0].unwrap();
    assert!(
        sent(&out).is_empty(),
        "no PUBREC before the caller stored it"
    );
    // Re-delivered before the caller is done: not handed out again.
    let out = s
        .handle_incoming(incoming(QoS::ExactlyOnce, 7, true), c.at(2))
        .unwrap();
    assert!(out.is_empty());
    let out = s.ack_incoming(t, c.at(3));
    assert_eq!(sent(&out), vec![Packet::PubRec(Ack::success(7))]);
    // Re-delivered after our PUBREC (it was lost): PUBREC again, not delivered again.
    let out = s
        .handle_incoming(incoming(QoS::ExactlyOnce, 7, true), c.at(4))
        .unwrap();
    assert_eq!(out, vec![Action::Send(Packet::PubRec(Ack::success(7)))]);
    assert_eq!(s.stats().inbound_duplicates_suppressed, 2);
    let out = s
        .handle_incoming(Packet::PubRel(Ack::success(7)), c.at(5))
        .unwrap();
    assert_eq!(sent(&out), vec![Packet::PubComp(Ack::success(7))]);
    // After PUBCOMP the id is free: the same id is a new message.
    let out = s
        .handle_incoming(incoming(QoS::ExactlyOnce, 7, false), c.at(6))
        .unwrap();
    assert_eq!(tokens(&out).len(), 1);
    // A PUBREL for an id we do not know is completed (we may have restarted).
    let out = s
        .handle_incoming(Packet::PubRel(Ack::success(99)), c.at(7))
        .unwrap();
    assert!(matches!(&sent(&out)[0], Packet::PubComp(a)
        if a.packet_id == 99 && a.reason == reason::PACKET_ID_NOT_FOUND));
}

#[test]
fn incoming_qos2_stored_across_a_reconnect_is_not_delivered_twice() {
    let c = Clock::new();
    let mut s = Session::new(config(V311)).unwrap();
    connect(&mut s, c.at(0), false);
    let t = tokens(
        &s.handle_incoming(incoming(QoS::ExactlyOnce, 3, false), c.at(1))
            .unwrap(),
    )[0]
    .unwrap();
    s.connection_lost();
    // The caller finishes storing while offline.
    assert!(s.ack_incoming(t, c.at(2)).is_empty());
    connect(&mut s, c.at(3), true);
    // The broker re-delivers (session kept): PUBREC at once, no second delivery.
    let out = s
        .handle_incoming(incoming(QoS::ExactlyOnce, 3, true), c.at(4))
        .unwrap();
    assert_eq!(out, vec![Action::Send(Packet::PubRec(Ack::success(3)))]);

    // Same story, but the re-delivery arrives before the caller is done.
    let t = tokens(
        &s.handle_incoming(incoming(QoS::ExactlyOnce, 4, false), c.at(5))
            .unwrap(),
    )[0]
    .unwrap();
    s.connection_lost();
    connect(&mut s, c.at(6), true);
    let out = s
        .handle_incoming(incoming(QoS::ExactlyOnce, 4, true), c.at(7))
        .unwrap();
    assert!(out.is_empty(), "held back until the caller is done");
    let out = s.ack_incoming(t, c.at(8));
    assert_eq!(sent(&out), vec![Packet::PubRec(Ack::success(4))]);
}

#[test]
fn a_lost_broker_session_forgets_inbound_qos2_ids() {
    let c = Clock::new();
    let mut s = Session::new(config(V5)).unwrap();
    connect(&mut s, c.at(0), false);
    let t = tokens(
        &s.handle_incoming(incoming(QoS::ExactlyOnce, 3, false), c.at(1))
            .unwrap(),
    )[0]
    .unwrap();
    s.ack_incoming(t, c.at(1));
    s.connection_lost();
    connect(&mut s, c.at(2), false);
    // A new session may use id 3 for a new message: it must be delivered.
    let out = s
        .handle_incoming(incoming(QoS::ExactlyOnce, 3, false), c.at(3))
        .unwrap();
    assert_eq!(tokens(&out).len(), 1);
}

#[test]
fn an_invalid_incoming_topic_is_a_protocol_error() {
    let c = Clock::new();
    let mut s = Session::new(config(V5)).unwrap();
    connect(&mut s, c.at(0), false);
    let Packet::Publish(mut p) = incoming(QoS::AtMostOnce, 0, false) else {
        unreachable!()
    };
    p.topic = "a/#".into();
    assert!(matches!(
        s.handle_incoming(Packet::Publish(p), c.at(1)),
        Err(Error::Protocol { .. })
    ));
}

#[test]
fn ack_round_trips_are_measured_from_the_write_per_qos() {
    let c = Clock::new();
    let mut s = Session::new(config(V5)).unwrap();
    connect(&mut s, c.at(0), false);
    let out = offer(&mut s, record(1, QoS::AtLeastOnce), c.at(0));
    let (_, pid1, _) = publishes(&out)[0];
    let out = offer(&mut s, record(2, QoS::ExactlyOnce), c.at(10));
    let (_, pid2, _) = publishes(&out)[0];
    let out = s.handle_incoming(puback(pid1), c.at(30)).unwrap();
    assert_eq!(acked(&out), vec![1]);
    let _ = s
        .handle_incoming(Packet::PubRec(Ack::success(pid2)), c.at(12))
        .unwrap();
    let out = s
        .handle_incoming(Packet::PubComp(Ack::success(pid2)), c.at(2010))
        .unwrap();
    assert_eq!(acked(&out), vec![2]);
    let st = s.stats();
    // 30 ms: the 0.05 s bucket; 2 s: the 2.5 s bucket.
    let i = |b: f64| {
        crate::session::ACK_BUCKETS_S
            .iter()
            .position(|&x| (x - b).abs() < 1e-9)
            .unwrap()
    };
    assert_eq!(st.ack_qos1.count(), 1);
    assert_eq!(st.ack_qos1.buckets[i(0.05)], 1);
    assert_eq!(st.ack_qos1.sum_us, 30_000);
    assert_eq!(st.ack_qos2.count(), 1);
    assert_eq!(st.ack_qos2.buckets[i(2.5)], 1);
    assert_eq!(st.ack_qos2.sum_us, 2_000_000);
    let cum = st.ack_qos2.cumulative();
    assert_eq!(cum.last(), Some(&(10.0, 1)));
    assert_eq!(cum[i(1.0)], (1.0, 0));
}
