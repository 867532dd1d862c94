//! Model test of the downlink: a broker model publishes QoS 1 and QoS 2 messages to the
//! session, links drop, the broker keeps or loses its session, and the caller stores the
//! messages it is handed in any order and at any time (also after the connection they came
//! on is gone).
//!
//! Checked:
//! - the session acknowledges a message (PUBACK, PUBREC) only after the caller stored it;
//! - a QoS 2 message is handed to the caller once, unless the broker lost the session while
//!   it was in flight;
//! - once the link is stable and the caller has stored everything, every message the broker
//!   still has is completed (PUBACK, or PUBREC/PUBREL/PUBCOMP), and every message was stored
//!   at least once.

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone)]
enum Op {
    /// The broker publishes a new message (QoS 1 or 2).
    Publish(bool),
    /// The next packet from the broker reaches the session.
    Deliver,
    /// The caller finishes storing one of the messages it was handed (index, modulo).
    Store(u8),
    /// The link drops.
    Drop,
    /// Connect with this session_present.
    Connect(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<bool>().prop_map(Op::Publish),
        8 => Just(Op::Deliver),
        5 => any::<u8>().prop_map(Op::Store),
        1 => Just(Op::Drop),
        2 => any::<bool>().prop_map(Op::Connect),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// PUBLISH sent (or to be sent on the next connection), no ack yet.
    Published,
    /// PUBREC received, PUBREL sent.
    Released,
}

struct Message {
    id: u64,
    qos: QoS,
    packet_id: u16,
    stage: Stage,
}

struct World {
    clock: Clock,
    session: Session,
    connected: bool,
    /// The broker's session: messages not completed.
    in_flight: Vec<Message>,
    next_id: u64,
    next_packet_id: u16,
    /// Packets on their way to the session (TCP keeps the order).
    to_client: VecDeque<Packet>,
    /// Messages handed to the caller and not stored yet.
    handed: Vec<(u64, Option<InboundToken>)>,
    stored: HashMap<u64, u32>,
    handed_qos2: HashMap<u64, u32>,
    exposed_to_session_loss: HashSet<u64>,
    published: Vec<(u64, QoS)>,
}

fn id_of(p: &Publish) -> u64 {
    seq_of(p)
}

impl World {
    fn new(protocol: Protocol) -> World {
        World {
            clock: Clock::new(),
            session: Session::new(SessionConfig::new(protocol, "down")).unwrap(),
            connected: false,
            in_flight: Vec::new(),
            next_id: 1,
            next_packet_id: 1,
            to_client: VecDeque::new(),
            handed: Vec::new(),
            stored: HashMap::new(),
            handed_qos2: HashMap::new(),
            exposed_to_session_loss: HashSet::new(),
            published: Vec::new(),
        }
    }

    fn now(&self) -> Instant {
        self.clock.at(0)
    }

    fn publish_packet(m: &Message, dup: bool) -> Packet {
        Packet::Publish(Publish {
            topic: "down/x".into(),
            payload: Bytes::from(m.id.to_be_bytes().to_vec()),
            qos: m.qos,
            retain: false,
            dup,
            packet_id: m.packet_id,
            message_expiry_s: None,
            user_properties: Vec::new(),
        })
    }

    /// What the session wrote reaches the broker.
    fn carry_out(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Incoming(i) => {
                    let id = id_of(&i.publish);
                    if i.publish.qos == QoS::ExactlyOnce {
                        *self.handed_qos2.entry(id).or_default() += 1;
                    }
                    self.handed.push((id, i.token));
                }
                Action::Send(p) => self.broker_receive(&p),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    fn broker_receive(&mut self, p: &Packet) {
        let (packet_id, is_rec) = match p {
            Packet::PubAck(a) => (a.packet_id, false),
            Packet::PubRec(a) => (a.packet_id, true),
            Packet::PubComp(a) => {
                self.in_flight
                    .retain(|m| !(m.packet_id == a.packet_id && m.stage == Stage::Released));
                return;
            }
            other => panic!("the session sent {other:?}"),
        };
        let Some(i) = self.in_flight.iter().position(|m| m.packet_id == packet_id) else {
            return; // A late ack for something the broker forgot with its session.
        };
        let m = &self.in_flight[i];
        assert!(
            self.stored.contains_key(&m.id),
            "message {} acknowledged before the caller stored it",
            m.id
        );
        if is_rec {
            assert_eq!(m.qos, QoS::ExactlyOnce);
            self.in_flight[i].stage = Stage::Released;
            self.to_client
                .push_back(Packet::PubRel(Ack::success(packet_id)));
        } else {
            assert_eq!(m.qos, QoS::AtLeastOnce);
            self.in_flight.remove(i);
        }
    }

    fn connect(&mut self, session_present: bool) {
        if self.connected {
            return;
        }
        if !session_present {
            for m in self.in_flight.drain(..) {
                self.exposed_to_session_loss.insert(m.id);
            }
        }
        self.connected = true;
        self.to_client.clear();
        let _ = self.session.connect(self.now());
        let out = self
            .session
            .handle_incoming(
                Packet::ConnAck(ConnAck {
                    session_present,
                    ..ConnAck::default()
                }),
                self.now(),
            )
            .unwrap();
        for a in out {
            assert!(matches!(a, Action::Connected { .. }), "{a:?}");
        }
        // The broker resumes its session: everything not completed goes again.
        for m in &self.in_flight {
            self.to_client.push_back(match m.stage {
                Stage::Published => World::publish_packet(m, true),
                Stage::Released => Packet::PubRel(Ack::success(m.packet_id)),
            });
        }
    }

    fn drop_link(&mut self) {
        self.connected = false;
        self.to_client.clear();
        self.session.connection_lost();
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Publish(qos2) => {
                let qos = if qos2 {
                    QoS::ExactlyOnce
                } else {
                    QoS::AtLeastOnce
                };
                let m = Message {
                    id: self.next_id,
                    qos,
                    packet_id: self.next_packet_id,
                    stage: Stage::Published,
                };
                self.next_id += 1;
                self.next_packet_id = self.next_packet_id % 60_000 + 1;
                self.published.push((m.id, qos));
                if self.connected {
                    self.to_client.push_back(World::publish_packet(&m, false));
                }
                self.in_flight.push(m);
            }
            Op::Deliver => {
                if let Some(p) = self.to_client.pop_front() {
                    let out = self.session.handle_incoming(p, self.now()).unwrap();
                    self.carry_out(out);
                }
            }
            Op::Store(i) => {
                if !self.handed.is_empty() {
                    let (id, token) = self.handed.remove(usize::from(i) % self.handed.len());
                    *self.stored.entry(id).or_default() += 1;
                    if let Some(token) = token {
                        let out = self.session.ack_incoming(token, self.now());
                        self.carry_out(out);
                    }
                }
            }
            Op::Drop => self.drop_link(),
            Op::Connect(present) => self.connect(present),
        }
    }

    fn settle(&mut self) {
        for _ in 0..200 {
            if !self.connected {
                self.connect(true);
            }
            while let Some(p) = self.to_client.pop_front() {
                let out = self.session.handle_incoming(p, self.now()).unwrap();
                self.carry_out(out);
            }
            while !self.handed.is_empty() {
                self.step(Op::Store(0));
            }
            if self.in_flight.is_empty() && self.to_client.is_empty() {
                return;
            }
        }
        panic!("did not settle: {} in flight", self.in_flight.len());
    }
}

proptest! {
    // 256 cases by default; PROPTEST_CASES=N for a longer run.
    #[test]
    fn incoming_messages_are_stored_before_acked_and_qos2_is_handed_once(
        v5 in any::<bool>(),
        ops in proptest::collection::vec(op(), 1..150),
    ) {
        let mut w = World::new(if v5 { Protocol::V5 } else { Protocol::V311 });
        for op in ops {
            w.step(op);
        }
        w.settle();
        for &(id, qos) in &w.published {
            if w.exposed_to_session_loss.contains(&id) {
                continue;
            }
            prop_assert!(w.stored.get(&id).copied().unwrap_or(0) >= 1, "message {} never stored", id);
            if qos == QoS::ExactlyOnce {
                prop_assert_eq!(w.handed_qos2.get(&id).copied(), Some(1), "QoS 2 message {} handed out more than once", id);
            }
        }
    }
}
