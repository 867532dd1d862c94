//! The local ingress with a real Mosquitto upstream and real local clients (`mosquitto_pub`,
//! `mosquitto_sub`, raw packets through our [`Codec`]). Waits are bounded generously and poll
//! for a state; nothing asserts a timing.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use spool_mqtt::outbox::OUTBOX_QUEUE;
use spool_mqtt::packet::{Ack, Connect, Publish};
use spool_mqtt::{
    Client, ClientStats, Codec, Ingress, IngressConfig, IngressStats, LinkState, Packet, Protocol,
    QoS,
};
use spool_testkit::mosquitto::{publish, Broker, BrokerConfig, ClientOptions, Subscriber};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound on every wait (a loaded machine is slow); never a timing check.
const WAIT: Duration = Duration::from_secs(20);
const MS: Duration = Duration::from_millis(1);

fn start(config: BrokerConfig) -> Broker {
    Broker::start(config).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs blocking harness calls (mosquitto_pub, broker restarts) off the runtime's workers.
fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

async fn client(addr: impl std::fmt::Display, id: &str, dir: &Path) -> Client {
    Client::builder(addr.to_string(), id, dir)
        .backoff(20 * MS, 200 * MS)
        .start()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn ingress(config: IngressConfig, client: &Client) -> Ingress {
    Ingress::start(config, client.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn wait_until<T: std::fmt::Debug>(
    what: &str,
    mut probe: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = probe();
        if done(&v) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {v:#?}"
        );
        tokio::time::sleep(10 * MS).await;
    }
}

async fn wait_client(c: &Client, what: &str, done: impl Fn(&ClientStats) -> bool) -> ClientStats {
    wait_until(what, || c.stats().unwrap(), done).await
}

async fn wait_ingress(
    i: &Ingress,
    what: &str,
    done: impl Fn(&IngressStats) -> bool,
) -> IngressStats {
    wait_until(what, || i.stats(), done).await
}

fn outbox_depth(c: &Client) -> u64 {
    c.store().stats(OUTBOX_QUEUE).unwrap().messages
}

/// Our own client as an upstream subscriber with a session the broker keeps across its
/// restarts: every (topic, payload) it got, in arrival order.
async fn collector(
    broker: &Broker,
    id: &str,
    filter: &str,
) -> (Client, tempfile::TempDir, Arc<Mutex<Vec<(String, String)>>>) {
    let dir = tempfile::tempdir().unwrap();
    let c = Client::builder(broker.addr().to_string(), id, dir.path())
        .backoff(20 * MS, 200 * MS)
        .session_expiry(Duration::from_secs(600))
        .start()
        .await
        .unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    c.subscribe_with(filter, QoS::AtLeastOnce, move |d| {
        sink.lock().unwrap().push((
            d.topic.clone(),
            String::from_utf8_lossy(&d.payload).into_owned(),
        ));
    })
    .await
    .unwrap();
    wait_client(&c, "the collector connected", |s| {
        s.state == LinkState::Connected
    })
    .await;
    (c, dir, got)
}

/// A raw local connection speaking packets through our codec.
struct Raw {
    stream: TcpStream,
    codec: Codec,
    buf: BytesMut,
}

impl Raw {
    async fn connect(addr: SocketAddr, protocol: Protocol, id: &str) -> (Raw, Option<Packet>) {
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut raw = Raw {
            stream,
            codec: Codec::new(protocol, 1 << 20),
            buf: BytesMut::new(),
        };
        raw.send(&Packet::Connect(Connect {
            protocol,
            client_id: id.into(),
            keep_alive_s: 30,
            clean_start: true,
            session_expiry_s: None,
            receive_maximum: None,
            username: None,
            password: None,
        }))
        .await;
        let ack = raw.recv().await;
        (raw, ack)
    }

    async fn send(&mut self, p: &Packet) {
        let mut out = BytesMut::new();
        self.codec.encode(p, &mut out).unwrap();
        self.stream.write_all(&out).await.unwrap();
    }

    async fn send_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// The next packet, `None` when the connection is closed.
    async fn recv(&mut self) -> Option<Packet> {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(p) = self.codec.decode(&mut self.buf).unwrap() {
                    return Some(p);
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("no packet and no close")
    }
}

fn publish_packet(topic: &str, payload: &'static [u8], qos: QoS, id: u16, dup: bool) -> Packet {
    Packet::Publish(Publish {
        topic: topic.into(),
        payload: Bytes::from_static(payload),
        qos,
        retain: false,
        dup,
        packet_id: id,
        message_expiry_s: None,
        user_properties: Vec::new(),
    })
}

/// A port nothing listens on: the client's sending is stopped, the outbox keeps everything.
fn dead_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pub_at_every_qos_and_both_versions_reaches_the_broker() {
    let broker = start(BrokerConfig::default());
    let (_col, _cdir, got) = collector(&broker, "col-all", "t/#").await;
    let dir = tempfile::tempdir().unwrap();
    let c = client(broker.addr(), "agent-all", dir.path()).await;
    let ing = ingress(IngressConfig::new(loopback()), &c).await;
    let local = ClientOptions::new(ing.local_addr().port());
    let mut want = Vec::new();
    for version in ["mqttv311", "mqttv5"] {
        for qos in 0..=2u8 {
            let topic = format!("t/{version}/{qos}");
            let payload = format!("hello {version} q{qos}");
            block(|| {
                publish(
                    &local.clone().protocol(version),
                    &topic,
                    payload.as_bytes(),
                    qos,
                )
            })
            .unwrap_or_else(|e| panic!("{e}"));
            want.push((topic, payload));
        }
    }
    wait_until(
        "every message upstream",
        || got.lock().unwrap().clone(),
        |g| want.iter().all(|w| g.contains(w)),
    )
    .await;
    let s = ing.stats();
    assert_eq!(s.publishes_received, [2, 2, 2]);
    assert_eq!(s.stored, 6);
    assert_eq!(s.store_failures, 0);
    assert_eq!(s.connections_total, 6);
    ing.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_is_acked_once_durable_and_forwarded_when_the_broker_is_back() {
    let mut broker = start(BrokerConfig::default().persistence(true));
    let (_col, _cdir, got) = collector(&broker, "col-down", "down/#").await;
    let dir = tempfile::tempdir().unwrap();
    let c = client(broker.addr(), "agent-down", dir.path()).await;
    let ing = ingress(IngressConfig::new(loopback()), &c).await;
    block(|| broker.stop()).unwrap();
    wait_client(&c, "the client lost its broker", |s| {
        s.state != LinkState::Connected
    })
    .await;
    let local = ClientOptions::new(ing.local_addr().port());
    let mut want = Vec::new();
    for (i, version) in ["mqttv311", "mqttv5", "mqttv311"].into_iter().enumerate() {
        let payload = format!("m{i}");
        block(|| {
            publish(
                &local.clone().protocol(version),
                "down/x",
                payload.as_bytes(),
                1,
            )
        })
        .unwrap_or_else(|e| panic!("{e}"));
        // mosquitto_pub returned, so it had its PUBACK: the record is in the outbox already.
        assert_eq!(outbox_depth(&c), i as u64 + 1);
        want.push(("down/x".to_string(), payload));
    }
    block(|| broker.restart()).unwrap();
    wait_until(
        "everything upstream",
        || got.lock().unwrap().clone(),
        |g| want.iter().all(|w| g.contains(w)),
    )
    .await;
    ing.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos2_resend_before_pubrel_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let c = client(dead_port(), "agent-dup", dir.path()).await;
    let ing = ingress(IngressConfig::new(loopback()), &c).await;
    for protocol in [Protocol::V311, Protocol::V5] {
        let before = outbox_depth(&c);
        let (mut raw, ack) = Raw::connect(ing.local_addr(), protocol, "dup").await;
        assert!(matches!(ack, Some(Packet::ConnAck(a)) if a.reason == 0));
        raw.send(&publish_packet("q2/a", b"once", QoS::ExactlyOnce, 7, false))
            .await;
        assert!(matches!(raw.recv().await, Some(Packet::PubRec(a)) if a.packet_id == 7));
        assert_eq!(outbox_depth(&c), before + 1);
        raw.send(&publish_packet("q2/a", b"once", QoS::ExactlyOnce, 7, true))
            .await;
        assert!(matches!(raw.recv().await, Some(Packet::PubRec(a)) if a.packet_id == 7));
        raw.send(&Packet::PubRel(Ack::success(7))).await;
        assert!(matches!(raw.recv().await, Some(Packet::PubComp(a)) if a.packet_id == 7));
        assert_eq!(outbox_depth(&c), before + 1);
        // After PUBREL the id is free again: the same id is a new message.
        raw.send(&publish_packet(
            "q2/a",
            b"twice",
            QoS::ExactlyOnce,
            7,
            false,
        ))
        .await;
        assert!(matches!(raw.recv().await, Some(Packet::PubRec(a)) if a.packet_id == 7));
        assert_eq!(outbox_depth(&c), before + 2);
        raw.send(&Packet::Disconnect(
            spool_mqtt::packet::Disconnect::default(),
        ))
        .await;
        assert!(raw.recv().await.is_none());
    }
    let s = ing.stats();
    assert_eq!(s.stored, 4);
    assert_eq!(s.publishes_received[2], 6);
    ing.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_packet_closes_only_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let c = client(dead_port(), "agent-big", dir.path()).await;
    let mut config = IngressConfig::new(loopback());
    config.max_packet_size = 256;
    let ing = ingress(config, &c).await;
    let (mut keep, ack) = Raw::connect(ing.local_addr(), Protocol::V5, "keep").await;
    assert!(matches!(ack, Some(Packet::ConnAck(a)) if a.maximum_packet_bytes == Some(256)));
    for protocol in [Protocol::V311, Protocol::V5] {
        let (mut big, _) = Raw::connect(ing.local_addr(), protocol, "big").await;
        // Only the fixed header of a 1000-byte PUBLISH: the limit is enforced from it.
        let _ = big.send_bytes(&[0x32, 0xE8, 0x07]).await;
        match big.recv().await {
            None => {}
            Some(Packet::Disconnect(d)) => {
                assert_eq!(protocol, Protocol::V5);
                assert_eq!(d.reason, 0x95);
                assert!(big.recv().await.is_none());
            }
            Some(other) => panic!("{other:?}"),
        }
    }
    keep.send(&Packet::PingReq).await;
    assert_eq!(keep.recv().await, Some(Packet::PingResp));
    keep.send(&publish_packet(
        "small/a",
        b"ok",
        QoS::AtLeastOnce,
        1,
        false,
    ))
    .await;
    assert!(matches!(keep.recv().await, Some(Packet::PubAck(a)) if a.packet_id == 1));
    let s = ing.stats();
    assert_eq!(s.oversize_closed, 2);
    assert_eq!(s.stored, 1);
    ing.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = client(dead_port(), "agent-max", dir.path()).await;
    let mut config = IngressConfig::new(loopback());
    config.max_connections = 1;
    let ing = ingress(config, &c).await;
    let (mut first, ack) = Raw::connect(ing.local_addr(), Protocol::V311, "first").await;
    assert!(matches!(ack, Some(Packet::ConnAck(a)) if a.reason == 0));
    let (mut v5, ack) = Raw::connect(ing.local_addr(), Protocol::V5, "second").await;
    assert!(
        matches!(&ack, Some(Packet::ConnAck(a)) if a.reason == 0x97),
        "{ack:?}"
    );
    assert!(v5.recv().await.is_none());
    let (_, ack) = Raw::connect(ing.local_addr(), Protocol::V311, "third").await;
    // 3.1.1 has no "quota exceeded": "server unavailable" (3), 0x88 in MQTT 5 numbering.
    assert!(
        matches!(&ack, Some(Packet::ConnAck(a)) if a.reason == 0x88),
        "{ack:?}"
    );
    assert_eq!(ing.stats().connections_refused, 2);
    assert_eq!(ing.stats().connections, 1);
    first
        .send(&Packet::Disconnect(
            spool_mqtt::packet::Disconnect::default(),
        ))
        .await;
    assert!(first.recv().await.is_none());
    wait_ingress(&ing, "the slot given back", |s| s.connections == 0).await;
    let (_, ack) = Raw::connect(ing.local_addr(), Protocol::V5, "fourth").await;
    assert!(matches!(ack, Some(Packet::ConnAck(a)) if a.reason == 0));
    ing.shutdown().await;
}

fn local_sub(ing: &Ingress, filter: &str, version: &'static str) -> Subscriber {
    let opts = ClientOptions::new(ing.local_addr().port()).protocol(version);
    block(|| Subscriber::start(&opts, filter, 1)).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downlink_reaches_local_subscribers_now_and_later() {
    let broker = start(BrokerConfig::default());
    let dir = tempfile::tempdir().unwrap();
    let c = client(broker.addr(), "agent-dl", dir.path()).await;
    let config = IngressConfig::new(loopback()).subscribe("cmd/#", QoS::AtLeastOnce, "inbox");
    let ing = ingress(config, &c).await;
    wait_client(&c, "connected", |s| s.state == LinkState::Connected).await;
    let upstream = broker.client();
    for version in ["mqttv311", "mqttv5"] {
        let sub = local_sub(&ing, "cmd/#", version);
        let payload = format!("now {version}");
        // The upstream subscription may still be on its way: publish until it arrives.
        let got = wait_until(
            "a live downlink message",
            || {
                block(|| publish(&upstream, "cmd/live", payload.as_bytes(), 1)).unwrap();
                sub.next_message(Duration::from_millis(200))
            },
            // (Copies from an earlier round, parked in the inbox, may come first.)
            |m| m.as_ref().is_some_and(|(_, p)| p == payload.as_bytes()),
        )
        .await;
        assert_eq!(got.map(|(t, _)| t).as_deref(), Some("cmd/live"));
        drop(sub);
    }
    // Nobody local subscribes: the message waits in the inbox.
    wait_ingress(&ing, "no local connection", |s| s.connections == 0).await;
    let received = ing.stats().downlink_received;
    block(|| publish(&upstream, "cmd/later", b"for whoever comes", 1)).unwrap();
    wait_ingress(&ing, "the message in the inbox", |s| {
        s.downlink_received > received && s.downlink_pending >= 1
    })
    .await;
    let sub = local_sub(&ing, "cmd/later", "mqttv5");
    let m = block(|| sub.next_message(WAIT));
    assert_eq!(
        m,
        Some(("cmd/later".to_string(), b"for whoever comes".to_vec()))
    );
    ing.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_keeps_a_message_across_an_agent_restart() {
    let broker = start(BrokerConfig::default());
    let dir = tempfile::tempdir().unwrap();
    let config = IngressConfig::new(loopback()).subscribe("cfg/#", QoS::AtLeastOnce, "inbox");
    {
        let c = client(broker.addr(), "agent-rs", dir.path()).await;
        let ing = ingress(config.clone(), &c).await;
        wait_client(&c, "connected", |s| s.state == LinkState::Connected).await;
        // The SUBSCRIBE may still be on its way: publish until the inbox has something.
        let upstream = broker.client();
        wait_until(
            "a message in the inbox",
            || {
                block(|| publish(&upstream, "cfg/a", b"kept", 1)).unwrap();
                std::thread::sleep(Duration::from_millis(100));
                ing.stats()
            },
            |s| s.downlink_received >= 1,
        )
        .await;
        ing.shutdown().await;
        c.abort().await;
    }
    let c = client(broker.addr(), "agent-rs", dir.path()).await;
    let ing = ingress(config, &c).await;
    assert!(ing.stats().downlink_pending >= 1);
    let sub = local_sub(&ing, "cfg/#", "mqttv311");
    let m = block(|| sub.next_message(WAIT));
    assert_eq!(m, Some(("cfg/a".to_string(), b"kept".to_vec())));
    ing.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_user_properties_go_upstream_and_spool_priority_is_taken() {
    let broker = start(BrokerConfig::default());
    let dir = tempfile::tempdir().unwrap();
    let col_dir = tempfile::tempdir().unwrap();
    let col = client(broker.addr(), "col-props", col_dir.path()).await;
    let mut sub = col.subscribe("props/#", QoS::AtLeastOnce).await.unwrap();
    wait_client(&col, "the collector connected", |s| {
        s.state == LinkState::Connected
    })
    .await;
    // The ingress's client stays away until the record is inspected.
    let c = client(dead_port(), "agent-props", dir.path()).await;
    let ing = ingress(IngressConfig::new(loopback()), &c).await;
    let (mut raw, _) = Raw::connect(ing.local_addr(), Protocol::V5, "props").await;
    let Packet::Publish(mut p) = publish_packet("props/a", b"p", QoS::AtLeastOnce, 3, false) else {
        unreachable!()
    };
    p.user_properties = vec![
        ("k".into(), "v".into()),
        (spool_mqtt::PRIORITY_PROPERTY.into(), "200".into()),
    ];
    p.message_expiry_s = Some(3600);
    raw.send(&Packet::Publish(p)).await;
    assert!(matches!(raw.recv().await, Some(Packet::PubAck(a)) if a.reason == 0));
    let stored = c.store().messages(OUTBOX_QUEUE).unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].priority, 200);
    assert!(stored[0].expires_at.is_some());
    drop(c);
    ing.shutdown().await;
    // The same store, now with the broker: the record goes up with its properties.
    tokio::time::sleep(100 * MS).await;
    let c = client(broker.addr(), "agent-props", dir.path()).await;
    let d = tokio::time::timeout(WAIT, sub.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.topic, "props/a");
    assert_eq!(d.user_properties, vec![("k".to_string(), "v".to_string())]);
    d.ack();
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_is_refused_in_v5_and_closes_a_v311_connection_unacked() {
    let dir = tempfile::tempdir().unwrap();
    let c = Client::builder(dead_port().to_string(), "agent-full", dir.path())
        .capacity(1, 1 << 20, spool_mqtt::Overflow::Reject)
        .start()
        .await
        .unwrap();
    let ing = ingress(IngressConfig::new(loopback()), &c).await;
    let (mut v5, _) = Raw::connect(ing.local_addr(), Protocol::V5, "full5").await;
    v5.send(&publish_packet("f/a", b"fits", QoS::AtLeastOnce, 1, false))
        .await;
    assert!(matches!(v5.recv().await, Some(Packet::PubAck(a)) if a.reason == 0));
    v5.send(&publish_packet("f/a", b"over", QoS::AtLeastOnce, 2, false))
        .await;
    assert!(
        matches!(v5.recv().await, Some(Packet::PubAck(a)) if a.packet_id == 2 && a.reason == 0x97)
    );
    v5.send(&publish_packet("f/a", b"over", QoS::ExactlyOnce, 3, false))
        .await;
    assert!(
        matches!(v5.recv().await, Some(Packet::PubRec(a)) if a.packet_id == 3 && a.reason == 0x97)
    );
    // The connection stays usable.
    v5.send(&Packet::PingReq).await;
    assert_eq!(v5.recv().await, Some(Packet::PingResp));

    let (mut v3, _) = Raw::connect(ing.local_addr(), Protocol::V311, "full3").await;
    v3.send(&publish_packet("f/a", b"over", QoS::AtLeastOnce, 1, false))
        .await;
    assert_eq!(v3.recv().await, None, "closed without a PUBACK");
    let s = ing.stats();
    assert_eq!(s.stored, 1);
    assert_eq!(s.store_failures, 3);
    assert_eq!(outbox_depth(&c), 1);
    ing.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_closed_after_one_and_a_half_keep_alives() {
    let dir = tempfile::tempdir().unwrap();
    let c = client(dead_port(), "agent-ka", dir.path()).await;
    let ing = ingress(IngressConfig::new(loopback()), &c).await;
    for protocol in [Protocol::V311, Protocol::V5] {
        let mut raw = Raw {
            stream: TcpStream::connect(ing.local_addr()).await.unwrap(),
            codec: Codec::new(protocol, 1 << 20),
            buf: BytesMut::new(),
        };
        raw.send(&Packet::Connect(Connect {
            protocol,
            client_id: String::new(),
            keep_alive_s: 1,
            clean_start: true,
            session_expiry_s: None,
            receive_maximum: None,
            username: None,
            password: None,
        }))
        .await;
        let ack = raw.recv().await;
        assert!(
            matches!(&ack, Some(Packet::ConnAck(a)) if a.reason == 0),
            "{ack:?}"
        );
        if protocol == Protocol::V5 {
            assert!(matches!(&ack, Some(Packet::ConnAck(a)) if a.assigned_client_id.is_some()));
        }
        raw.send(&Packet::PingReq).await;
        assert_eq!(raw.recv().await, Some(Packet::PingResp));
        // Then silence: closed (v5: DISCONNECT "keep alive timeout" first).
        let started = tokio::time::Instant::now();
        match raw.recv().await {
            None => assert_eq!(protocol, Protocol::V311),
            Some(Packet::Disconnect(d)) => {
                assert_eq!(d.reason, 0x8D);
                assert!(raw.recv().await.is_none());
            }
            Some(other) => panic!("{other:?}"),
        }
        assert!(started.elapsed() >= Duration::from_secs(1));
    }
    ing.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_and_tells_v5_clients() {
    let dir = tempfile::tempdir().unwrap();
    let c = client(dead_port(), "agent-stop", dir.path()).await;
    let ing = ingress(IngressConfig::new(loopback()), &c).await;
    let addr = ing.local_addr();
    let (mut v5, _) = Raw::connect(addr, Protocol::V5, "s5").await;
    let (mut v3, _) = Raw::connect(addr, Protocol::V311, "s3").await;
    v5.send(&publish_packet("s/a", b"x", QoS::AtLeastOnce, 1, false))
        .await;
    assert!(matches!(v5.recv().await, Some(Packet::PubAck(_))));
    ing.shutdown().await;
    assert!(matches!(v5.recv().await, Some(Packet::Disconnect(d)) if d.reason == 0x8B));
    assert!(v5.recv().await.is_none());
    assert!(v3.recv().await.is_none());
    assert!(TcpStream::connect(addr).await.is_err());
    assert_eq!(outbox_depth(&c), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_publishes_are_stored_in_order_and_acked_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let c = client(dead_port(), "agent-pipe", dir.path()).await;
    let ing = ingress(IngressConfig::new(loopback()), &c).await;
    let (mut raw, _) = Raw::connect(ing.local_addr(), Protocol::V311, "pipe").await;
    // 300 QoS 1 PUBLISHes (more than the pipeline holds) and a QoS 2 one with its DUP resend,
    // all in one write.
    let mut out = BytesMut::new();
    for i in 1..=300u16 {
        let p = Packet::Publish(Publish {
            topic: "pipe/a".into(),
            payload: Bytes::from(i.to_string()),
            qos: QoS::AtLeastOnce,
            retain: false,
            dup: false,
            packet_id: i,
            message_expiry_s: None,
            user_properties: Vec::new(),
        });
        raw.codec.encode(&p, &mut out).unwrap();
    }
    for dup in [false, true] {
        let p = publish_packet("pipe/b", b"q2", QoS::ExactlyOnce, 1000, dup);
        raw.codec.encode(&p, &mut out).unwrap();
    }
    raw.send_bytes(&out).await.unwrap();
    for i in 1..=300u16 {
        assert!(matches!(raw.recv().await, Some(Packet::PubAck(a)) if a.packet_id == i));
    }
    assert!(matches!(raw.recv().await, Some(Packet::PubRec(a)) if a.packet_id == 1000));
    raw.send(&Packet::PubRel(Ack::success(1000))).await;
    // The DUP sent while the first store ran got no answer of its own: the next packet is
    // the PUBCOMP.
    assert!(matches!(raw.recv().await, Some(Packet::PubComp(a)) if a.packet_id == 1000));
    let stored = c.store().messages(OUTBOX_QUEUE).unwrap();
    let payloads: Vec<String> = stored
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    let mut want: Vec<String> = (1..=300).map(|i: u16| i.to_string()).collect();
    want.push("q2".into());
    assert_eq!(payloads, want);
    assert_eq!(ing.stats().stored, 301);
    ing.shutdown().await;
}

/// A raw local subscriber: CONNECT, SUBSCRIBE `filter` at `qos`, SUBACK.
async fn raw_sub(addr: SocketAddr, protocol: Protocol, id: &str, filter: &str, qos: QoS) -> Raw {
    let (mut raw, ack) = Raw::connect(addr, protocol, id).await;
    assert!(matches!(ack, Some(Packet::ConnAck(a)) if a.reason == 0));
    raw.send(&Packet::Subscribe(spool_mqtt::packet::Subscribe {
        packet_id: 1,
        filters: vec![spool_mqtt::SubscribeFilter {
            filter: filter.into(),
            qos,
        }],
    }))
    .await;
    let suback = raw.recv().await;
    assert!(
        matches!(&suback, Some(Packet::SubAck(s)) if s.codes == vec![qos as u8]),
        "{suback:?}"
    );
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbox_record_is_acked_only_once_the_local_subscriber_acked_it() {
    let broker = start(BrokerConfig::default());
    let dir = tempfile::tempdir().unwrap();
    let c = client(broker.addr(), "agent-ack", dir.path()).await;
    let config = IngressConfig::new(loopback()).subscribe("ev/#", QoS::ExactlyOnce, "inbox");
    let ing = ingress(config, &c).await;
    wait_client(&c, "connected", |s| s.state == LinkState::Connected).await;
    let upstream = broker.client();
    // Into the inbox first (publish until the upstream SUBSCRIBE is in place).
    wait_until(
        "a message in the inbox",
        || {
            if ing.stats().downlink_received == 0 {
                block(|| publish(&upstream, "ev/1", b"e", 2)).unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
            ing.stats()
        },
        |s| s.downlink_received >= 1,
    )
    .await;
    let received = ing.stats().downlink_received;

    // A QoS 1 subscriber that never sends its PUBACK: the record stays in the inbox.
    let mut lazy = raw_sub(
        ing.local_addr(),
        Protocol::V311,
        "lazy",
        "ev/#",
        QoS::AtLeastOnce,
    )
    .await;
    let Some(Packet::Publish(p)) = lazy.recv().await else {
        panic!("no downlink PUBLISH");
    };
    assert_eq!((p.topic.as_str(), p.qos), ("ev/1", QoS::AtLeastOnce));
    tokio::time::sleep(200 * MS).await;
    let s = ing.stats();
    assert_eq!(s.downlink_delivered, 0);
    assert_eq!(s.downlink_pending, received);
    drop(lazy);

    // A QoS 2 subscriber gets it again; the record goes once PUBCOMP is in.
    let mut q2 = raw_sub(
        ing.local_addr(),
        Protocol::V5,
        "q2",
        "ev/+",
        QoS::ExactlyOnce,
    )
    .await;
    let mut ids = Vec::new();
    while ing.stats().downlink_pending > 0 || !ids.is_empty() {
        match q2.recv().await {
            Some(Packet::Publish(p)) => {
                assert_eq!(p.topic, "ev/1");
                assert_eq!(p.qos, QoS::ExactlyOnce);
                q2.send(&Packet::PubRec(Ack::success(p.packet_id))).await;
                ids.push(p.packet_id);
            }
            Some(Packet::PubRel(a)) => {
                assert_eq!(ing.stats().downlink_delivered, 0, "acked before PUBCOMP");
                ids.retain(|i| *i != a.packet_id);
                q2.send(&Packet::PubComp(Ack::success(a.packet_id))).await;
                wait_ingress(&ing, "the inbox record acked", |s| {
                    s.downlink_delivered >= 1
                })
                .await;
            }
            other => panic!("{other:?}"),
        }
    }
    let s = ing.stats();
    assert_eq!(s.downlink_pending, 0);
    assert_eq!(s.downlink_delivered, received);
    ing.shutdown().await;
}
