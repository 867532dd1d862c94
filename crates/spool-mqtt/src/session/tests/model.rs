//! Model test: random interleavings of offers, broker replies, dropped links, reconnects
//! (session kept or lost) and process crashes (in the middle of carrying out a batch of
//! actions, then a restore from what was recorded) against a small broker model.
//!
//! Checked after every step and at the end:
//! - every offered record is reported `Acked` exactly once, eventually;
//! - `Acked` is never reported for a record whose PUBLISH was not written;
//! - the packet ids of the records held are unique and never 0;
//! - on every connection, records are published in their original (offer) order, resends
//!   first, also across a restart;
//! - the broker saw every acked QoS 1/2 record at least once, and every QoS 2 record
//!   exactly once unless it was in flight when the broker lost the session (exactly-once
//!   across crashes);
//! - nothing is rejected or expired (the broker model accepts everything, no TTLs).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone)]
enum Op {
    /// Offer a new record with this QoS (0..=2) if there is room.
    Offer(u8),
    /// The broker's pending reply at this index (modulo) reaches the session.
    Reply(u16),
    /// The link drops.
    Drop,
    /// Connect (if disconnected) with this session_present; false = the broker lost it.
    Connect(bool),
    /// The process dies after carrying out this many actions of the next batch (or now if
    /// there is no next batch); then it restarts from what was recorded, its packet id
    /// allocator starting anywhere (ids are not deterministic across a restart).
    Crash(u8, u16),
    /// Time passes (keep alive).
    Tick(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..3).prop_map(Op::Offer),
        8 => any::<u16>().prop_map(Op::Reply),
        1 => Just(Op::Drop),
        2 => any::<bool>().prop_map(Op::Connect),
        1 => (0u8..6, 1u16..=u16::MAX).prop_map(|(n, id)| Op::Crash(n, id)),
        1 => (0u16..20_000).prop_map(Op::Tick),
    ]
}

/// A broker holding a QoS 2 id from its PUBLISH until PUBREL (MQTT "method B").
#[derive(Default)]
struct Broker {
    /// Replies not yet delivered, on the current connection.
    pending: Vec<Packet>,
    /// QoS 2 packet id -> seq received and not yet released (part of the broker session).
    qos2: HashMap<u16, u64>,
    /// How many times each record reached subscribers.
    delivered: HashMap<u64, u32>,
    connected: bool,
    /// The last record published on this connection: records are offered in sequence
    /// order, so every connection must see them in increasing order (resends included).
    last_seq: Option<u64>,
}

impl Broker {
    fn receive(&mut self, packet: &Packet) {
        if !self.connected {
            return;
        }
        match packet {
            Packet::Publish(p) => {
                let seq = seq_of(p);
                assert!(
                    self.last_seq.is_none_or(|last| seq > last),
                    "{seq} published after {:?} on one connection",
                    self.last_seq
                );
                self.last_seq = Some(seq);
                match p.qos {
                    QoS::AtMostOnce => *self.delivered.entry(seq).or_default() += 1,
                    QoS::AtLeastOnce => {
                        *self.delivered.entry(seq).or_default() += 1;
                        self.pending.push(Packet::PubAck(Ack::success(p.packet_id)));
                    }
                    QoS::ExactlyOnce => {
                        if !self.qos2.contains_key(&p.packet_id) {
                            *self.delivered.entry(seq).or_default() += 1;
                            self.qos2.insert(p.packet_id, seq);
                        }
                        self.pending.push(Packet::PubRec(Ack::success(p.packet_id)));
                    }
                }
            }
            Packet::PubRel(a) => {
                self.qos2.remove(&a.packet_id);
                self.pending
                    .push(Packet::PubComp(Ack::success(a.packet_id)));
            }
            Packet::PingReq => self.pending.push(Packet::PingResp),
            _ => {}
        }
    }
}

struct World {
    protocol: Protocol,
    clock: Clock,
    now_ms: u64,
    session: Session,
    broker: Broker,
    /// Every record offered (the store's unacked set is `offered - acked`).
    offered: BTreeMap<u64, QoS>,
    next_seq: u64,
    /// Reported acks (only those the caller carried out before any crash).
    acked: BTreeSet<u64>,
    /// Records whose PUBLISH was written at least once.
    written: HashSet<u64>,
    /// What the store recorded of QoS 2 progress.
    recorded: BTreeMap<u64, (u16, Qos2State)>,
    crash_after: Option<usize>,
    /// Where the packet id allocator starts after the next restart.
    restart_next_id: u16,
    /// Records written and not acked when the broker lost the session: a QoS 2 duplicate is
    /// allowed (and counted by the session) for those only.
    exposed_to_session_loss: HashSet<u64>,
}

fn model_config(protocol: Protocol) -> SessionConfig {
    let mut cfg = SessionConfig::new(protocol, "model");
    cfg.window = 8;
    cfg.keep_alive = Duration::from_secs(5);
    cfg.ping_timeout = Duration::from_secs(2);
    cfg
}

impl World {
    fn new(protocol: Protocol) -> World {
        World {
            protocol,
            clock: Clock::new(),
            now_ms: 0,
            session: Session::new(model_config(protocol)).unwrap(),
            broker: Broker::default(),
            offered: BTreeMap::new(),
            next_seq: 1,
            acked: BTreeSet::new(),
            written: HashSet::new(),
            recorded: BTreeMap::new(),
            crash_after: None,
            restart_next_id: 1,
            exposed_to_session_loss: HashSet::new(),
        }
    }

    fn now(&self) -> Instant {
        self.clock.at(self.now_ms)
    }

    /// Carries out actions in order, like an event loop; may crash midway.
    fn carry_out(&mut self, actions: Vec<Action>) {
        for (i, a) in actions.into_iter().enumerate() {
            if self.crash_after == Some(i) {
                self.crash_after = None;
                self.restart();
                return;
            }
            match a {
                Action::Send(p) => {
                    if let Packet::Publish(publish) = &p {
                        self.written.insert(seq_of(publish));
                    }
                    self.broker.receive(&p);
                }
                Action::Qos2Progress {
                    seq,
                    packet_id,
                    state,
                } => {
                    self.recorded.insert(seq, (packet_id, state));
                }
                Action::Acked { seq } => {
                    assert!(self.offered.contains_key(&seq), "ack of unknown {seq}");
                    assert!(self.written.contains(&seq), "ack of unsent {seq}");
                    assert!(self.acked.insert(seq), "{seq} acked twice");
                    self.recorded.remove(&seq);
                }
                Action::Rejected { seq, .. } => panic!("{seq} rejected"),
                Action::Deferred { seq } => panic!("{seq} deferred"),
                Action::Expired { seq } => panic!("{seq} expired"),
                Action::PossibleDuplicate { .. }
                | Action::Connected { .. }
                | Action::Incoming(_)
                | Action::Subscribed { .. }
                | Action::Unsubscribed { .. } => {}
            }
        }
        if self.crash_after.is_some() {
            self.crash_after = None;
            self.restart();
        }
    }

    /// The process dies and starts again on the same store.
    fn restart(&mut self) {
        self.broker.connected = false;
        self.broker.pending.clear();
        let restore: Vec<Qos2Restore> = self
            .recorded
            .iter()
            .map(|(&seq, &(packet_id, state))| Qos2Restore {
                record: record(seq, QoS::ExactlyOnce),
                packet_id,
                state,
            })
            .collect();
        self.session = Session::restore(model_config(self.protocol), restore).unwrap();
        self.session.packet_ids.next = self.restart_next_id;
        // The outbox offers every other unacked record again, in order.
        let again: Vec<(u64, QoS)> = self
            .offered
            .iter()
            .filter(|(seq, _)| !self.acked.contains(seq) && !self.recorded.contains_key(seq))
            .map(|(&s, &q)| (s, q))
            .collect();
        for (seq, qos) in again {
            let out = self.session.offer(record(seq, qos), self.now()).unwrap();
            assert!(out.is_empty(), "offline: nothing sent");
        }
    }

    fn connect(&mut self, session_present: bool) {
        if self.session.state() != ConnectionState::Disconnected {
            return;
        }
        if !session_present {
            self.broker.qos2.clear();
            let exposed: Vec<u64> = self
                .written
                .iter()
                .filter(|s| !self.acked.contains(s))
                .copied()
                .collect();
            self.exposed_to_session_loss.extend(exposed);
        }
        self.broker.connected = true;
        self.broker.pending.clear();
        self.broker.last_seq = None;
        let _ = self.session.connect(self.now());
        let out = self
            .session
            .handle_incoming(
                Packet::ConnAck(ConnAck {
                    session_present,
                    // MQTT 3.1.1 has no Receive Maximum: the configured window (8) holds.
                    receive_maximum: (self.protocol == Protocol::V5).then_some(5),
                    ..ConnAck::default()
                }),
                self.now(),
            )
            .unwrap();
        self.carry_out(out);
    }

    fn drop_link(&mut self) {
        self.broker.connected = false;
        self.broker.pending.clear();
        self.session.connection_lost();
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Offer(q) => {
                if self.session.free_slots() > 0 {
                    let qos = QoS::from_u8(q).unwrap();
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    self.offered.insert(seq, qos);
                    let out = self.session.offer(record(seq, qos), self.now()).unwrap();
                    self.carry_out(out);
                }
            }
            Op::Reply(i) => {
                if !self.broker.pending.is_empty() {
                    let p = self
                        .broker
                        .pending
                        .remove(usize::from(i) % self.broker.pending.len());
                    match self.session.handle_incoming(p, self.now()) {
                        Ok(out) => self.carry_out(out),
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            Op::Drop => self.drop_link(),
            Op::Connect(present) => self.connect(present),
            Op::Crash(n, next_id) => {
                self.restart_next_id = next_id;
                if self.session.state() == ConnectionState::Connected {
                    self.crash_after = Some(usize::from(n));
                } else {
                    self.restart();
                }
            }
            Op::Tick(ms) => {
                self.now_ms += u64::from(ms);
                match self.session.handle_tick(self.now()) {
                    Ok(out) => self.carry_out(out),
                    Err(Error::KeepAliveTimeout { .. }) => {
                        self.broker.connected = false;
                        self.broker.pending.clear();
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }
        self.check();
    }

    fn check(&self) {
        let ids = self.session.packet_ids();
        let unique: HashSet<u16> = ids.iter().map(|&(_, id)| id).collect();
        assert_eq!(unique.len(), ids.len(), "packet ids shared: {ids:?}");
        assert!(!unique.contains(&0));
        assert!(self.session.in_flight() <= usize::from(self.session.window()));
    }

    /// Reconnect with the session kept and let the broker answer everything.
    fn settle(&mut self) {
        self.crash_after = None;
        for _ in 0..1000 {
            if self.session.state() != ConnectionState::Connected {
                self.drop_link();
                self.connect(true);
                continue;
            }
            if self.broker.pending.is_empty() {
                break;
            }
            let p = self.broker.pending.remove(0);
            let out = self.session.handle_incoming(p, self.now()).unwrap();
            self.carry_out(out);
        }
        assert!(self.broker.pending.is_empty(), "did not settle");
    }
}

proptest! {
    // 256 cases by default; PROPTEST_CASES=N for a longer run.
    #[test]
    fn every_record_is_acked_exactly_once(
        v5 in any::<bool>(),
        ops in proptest::collection::vec(op(), 1..150),
    ) {
        let mut w = World::new(if v5 { Protocol::V5 } else { Protocol::V311 });
        for op in ops {
            w.step(op);
        }
        w.settle();
        let offered: BTreeSet<u64> = w.offered.keys().copied().collect();
        prop_assert_eq!(&w.acked, &offered, "every offered record acked");
        prop_assert_eq!(w.session.held(), 0);
        prop_assert!(w.recorded.is_empty(), "no QoS 2 progress left behind");
        for (&seq, &qos) in &w.offered {
            let n = w.broker.delivered.get(&seq).copied().unwrap_or(0);
            if qos != QoS::AtMostOnce {
                prop_assert!(n >= 1, "{} (QoS {:?}) never reached the broker", seq, qos);
            }
            if qos == QoS::ExactlyOnce && !w.exposed_to_session_loss.contains(&seq) {
                prop_assert_eq!(n, 1, "QoS 2 record {} delivered {} times", seq, n);
            }
        }
    }
}
