//! The MQTT test harness against the real thing: a Mosquitto broker from the distribution's
//! packages, the real `mosquitto_pub`/`mosquitto_sub`, the fault-injecting proxy and
//! certificates generated here. If Mosquitto is missing these tests fail and say to run
//! `scripts/test` (which installs it); nothing is skipped.

use std::time::Duration;

use spool_testkit::certs::{CertFiles, Pki};
use spool_testkit::mosquitto::{
    publish, register_subscription, subscribe_collect, Broker, BrokerConfig, ClientOptions, Error,
    Subscriber, TlsListener,
};
use spool_testkit::proxy::Proxy;

/// Bound on every wait: generous, because a loaded CI machine is slow; never a timing check.
const WAIT: Duration = Duration::from_secs(15);

fn start(config: BrokerConfig) -> Broker {
    Broker::start(config).unwrap_or_else(|e| panic!("{e}"))
}

fn subscribe(opts: &ClientOptions, filter: &str, qos: u8) -> Subscriber {
    Subscriber::start(opts, filter, qos).unwrap_or_else(|e| panic!("{e}"))
}

fn publish_ok(opts: &ClientOptions, topic: &str, payload: &[u8], qos: u8) {
    publish(opts, topic, payload, qos).unwrap_or_else(|e| panic!("{e}"));
}

fn message(topic: &str, payload: &[u8]) -> (String, Vec<u8>) {
    (topic.to_string(), payload.to_vec())
}

/// The client must fail, and say `expected` (its own explanation of why).
fn assert_refused(result: Result<(), Error>, expected: &str) {
    match result {
        Err(Error::Client { output, .. }) => {
            assert!(
                output.contains(expected),
                "expected {expected:?} in: {output}"
            );
        }
        other => panic!("expected the client to fail with {expected:?}, got {other:?}"),
    }
}

/// What Mosquitto's clients print when the TLS handshake fails on their side.
const TLS_ERROR: &str = "A TLS error occurred";

#[test]
fn pub_sub_roundtrip_with_the_real_clients() {
    let broker = start(BrokerConfig::default());
    let sub = subscribe(&broker.client(), "t/#", 1);
    // Payloads with newlines, spaces and any byte come back exactly.
    let payloads: [&[u8]; 3] = [b"hello", b"two\nlines and spaces ", &[0, 255, 10, 32, 39]];
    for (i, payload) in payloads.iter().enumerate() {
        publish_ok(&broker.client(), &format!("t/{i}"), payload, 1);
    }
    for (i, payload) in payloads.iter().enumerate() {
        assert_eq!(
            sub.next_message(WAIT),
            Some(message(&format!("t/{i}"), payload))
        );
    }
    assert_eq!(sub.connect_attempts(), 1);
}

#[test]
fn through_the_proxy() {
    let broker = start(BrokerConfig::default().persistence(false));
    let proxy = Proxy::start(broker.addr()).unwrap();
    let via_proxy = broker.client().port(proxy.port());
    let sub = subscribe(&via_proxy, "p/#", 0);
    publish_ok(&via_proxy, "p/x", b"proxied", 0);
    assert_eq!(sub.next_message(WAIT), Some(message("p/x", b"proxied")));
    let stats = proxy.wait_until(WAIT, |s| s.held_bytes() == 0).unwrap();
    assert!(stats.accepted >= 2, "{stats:?}");
    assert!(stats.client_to_upstream.forwarded > 0, "{stats:?}");
    assert!(stats.upstream_to_client.forwarded > 0, "{stats:?}");
}

#[test]
fn proxy_drop_makes_a_connected_subscriber_lose_its_connection() {
    let broker = start(BrokerConfig::default().persistence(false));
    let proxy = Proxy::start(broker.addr()).unwrap();
    let sub = subscribe(&broker.client().port(proxy.port()), "d/#", 1);
    assert_eq!(proxy.drop_connections(), 1);
    // mosquitto_sub notices, connects again and subscribes again.
    assert!(sub.wait_connect_attempts(2, WAIT), "{}", sub.stderr());
    sub.wait_subscribed(2, WAIT).unwrap();
    publish_ok(&broker.client(), "d/after", b"resumed", 1);
    assert_eq!(sub.next_message(WAIT), Some(message("d/after", b"resumed")));
    assert_eq!(proxy.stats().dropped, 1);
}

#[test]
fn refusing_proxy_keeps_the_client_out_until_lifted() {
    let broker = start(BrokerConfig::default().persistence(false));
    let proxy = Proxy::start(broker.addr()).unwrap();
    let sub = subscribe(&broker.client().port(proxy.port()), "r/#", 1);
    proxy.set_refusing(true);
    proxy.drop_connections();
    proxy
        .wait_until(WAIT, |s| s.refused >= 1)
        .expect("the client should have tried to reconnect");
    assert_eq!(sub.subscriptions(), 1);
    proxy.set_refusing(false);
    sub.wait_subscribed(2, WAIT).unwrap();
    publish_ok(&broker.client(), "r/back", b"in", 1);
    assert_eq!(sub.next_message(WAIT), Some(message("r/back", b"in")));
}

#[test]
fn stall_keeps_the_socket_open_but_passes_no_bytes() {
    let broker = start(BrokerConfig::default().persistence(false));
    let proxy = Proxy::start(broker.addr()).unwrap();
    let sub = subscribe(&broker.client().port(proxy.port()), "s/#", 1);
    // Counters settle just after the bytes are written: wait until nothing is on its way.
    let before = proxy.wait_until(WAIT, |s| s.held_bytes() == 0).unwrap();
    proxy.set_stalled(true);
    // Published straight to the broker, which sends it down the stalled link.
    publish_ok(&broker.client(), "s/held", b"held back", 1);
    let during = proxy
        .wait_until(WAIT, |s| {
            s.upstream_to_client.received > before.upstream_to_client.received
        })
        .expect("the broker should have sent the message into the proxy");
    assert_eq!(
        during.upstream_to_client.forwarded,
        before.upstream_to_client.forwarded
    );
    assert_eq!(during.open, 1, "the stalled connection must stay open");
    assert_eq!(sub.try_message(), None);
    assert_eq!(sub.connect_attempts(), 1);
    proxy.set_stalled(false);
    assert_eq!(
        sub.next_message(WAIT),
        Some(message("s/held", b"held back"))
    );
    assert_eq!(sub.connect_attempts(), 1);
}

#[test]
fn a_stall_is_a_half_open_link_that_keepalive_detects() {
    let broker = start(BrokerConfig::default().persistence(false));
    let proxy = Proxy::start(broker.addr()).unwrap();
    // Keepalive 5 s (mosquitto_sub's minimum): the client pings after 5 s of silence and gives
    // up when the answer has not come by the next keepalive.
    let opts = broker.client().port(proxy.port()).keepalive(5);
    let sub = subscribe(&opts, "h/#", 1);
    proxy.set_stalled(true);
    // About 10 s; the bound leaves room for a loaded machine.
    assert!(
        sub.wait_connect_attempts(2, 6 * WAIT),
        "the client never noticed the stalled link: {}",
        sub.stderr()
    );
    proxy.set_stalled(false);
    sub.wait_subscribed(2, WAIT).unwrap();
    publish_ok(&broker.client(), "h/after", b"alive", 1);
    assert_eq!(sub.next_message(WAIT), Some(message("h/after", b"alive")));
}

#[test]
fn mqtt_v5_clients_work_too() {
    let broker = start(BrokerConfig::default().persistence(false));
    let v5 = broker.client().protocol("mqttv5");
    let sub = subscribe(&v5, "v5/#", 2);
    publish_ok(&v5, "v5/a", b"five", 2);
    assert_eq!(sub.next_message(WAIT), Some(message("v5/a", b"five")));
}

#[test]
fn slow_link_delivers_everything() {
    let broker = start(BrokerConfig::default().persistence(false));
    let proxy = Proxy::start(broker.addr()).unwrap();
    proxy.set_bandwidth(Some(50_000));
    proxy.set_latency(Duration::from_millis(2));
    let sub = subscribe(&broker.client().port(proxy.port()), "slow/#", 1);
    let payload: Vec<u8> = (0..8_000u32).map(|i| (i % 253) as u8).collect();
    publish_ok(&broker.client(), "slow/big", &payload, 1);
    let got = sub
        .next_message(WAIT)
        .expect("no message through the slow link");
    assert_eq!(got.0, "slow/big");
    assert!(got.1 == payload, "payload differs ({} bytes)", got.1.len());
}

fn tls_broker(pki: &Pki, server: &CertFiles, mutual: bool) -> Broker {
    let tls = TlsListener::from_certs(&pki.ca, server, mutual);
    start(BrokerConfig::default().persistence(false).tls(tls))
}

#[test]
fn tls_roundtrip_and_wrong_ca_fails() {
    let pki = Pki::generate().unwrap();
    let broker = tls_broker(&pki, &pki.server, false);
    let tls = broker.tls_client(&pki.ca.cert);
    let sub = subscribe(&tls, "tls/#", 1);
    publish_ok(&tls, "tls/a", b"secret", 1);
    assert_eq!(sub.next_message(WAIT), Some(message("tls/a", b"secret")));
    let wrong_ca = broker.tls_client(&pki.other_ca.cert);
    assert_refused(publish(&wrong_ca, "tls/a", b"x", 1), TLS_ERROR);
    // The plain listener is still there.
    publish_ok(&broker.client(), "tls/plain", b"p", 1);
    assert_eq!(sub.next_message(WAIT), Some(message("tls/plain", b"p")));
}

#[test]
fn mutual_tls_needs_a_client_certificate_from_the_ca() {
    let pki = Pki::generate().unwrap();
    let broker = tls_broker(&pki, &pki.server, true);
    let with_cert = broker
        .tls_client(&pki.ca.cert)
        .client_cert(&pki.client.cert, &pki.client.key);
    let sub = subscribe(&with_cert, "m/#", 1);
    publish_ok(&with_cert, "m/a", b"mutual", 1);
    assert_eq!(sub.next_message(WAIT), Some(message("m/a", b"mutual")));

    let no_cert = publish(&broker.tls_client(&pki.ca.cert), "m/a", b"x", 1);
    assert_refused(no_cert, "Error");
    let other = &pki.other_client;
    let wrong_ca = broker
        .tls_client(&pki.ca.cert)
        .client_cert(&other.cert, &other.key);
    assert_refused(publish(&wrong_ca, "m/a", b"x", 1), "Error");
    let expired = &pki.expired_client;
    let expired = broker
        .tls_client(&pki.ca.cert)
        .client_cert(&expired.cert, &expired.key);
    assert_refused(publish(&expired, "m/a", b"x", 1), "Error");
    // With TLS 1.3 the client learns only that the broker closed the connection; the
    // broker's log says why.
    let log = broker.log();
    assert!(log.contains("peer did not return a certificate"), "{log}");
    assert!(
        log.matches("certificate verify failed").count() >= 2,
        "{log}"
    );
}

#[test]
fn expired_server_certificate_fails() {
    let pki = Pki::generate().unwrap();
    let broker = tls_broker(&pki, &pki.expired_server, false);
    // The same CA and names as `pki.server`, which the other tests accept: only the dates differ.
    let trusted = broker.tls_client(&pki.ca.cert);
    assert_refused(publish(&trusted, "e/a", b"x", 1), TLS_ERROR);
}

#[test]
fn password_auth_accepts_the_right_password_only() {
    let broker = start(
        BrokerConfig::default()
            .persistence(false)
            .user("alice", "s3cret")
            .user("bob", "hunter2"),
    );
    let alice = broker.client().auth("alice", "s3cret");
    let sub = subscribe(&alice, "a/#", 1);
    publish_ok(&broker.client().auth("bob", "hunter2"), "a/b", b"ok", 1);
    assert_eq!(sub.next_message(WAIT), Some(message("a/b", b"ok")));
    let wrong_password = broker.client().auth("alice", "wrong");
    assert_refused(publish(&wrong_password, "a/b", b"x", 1), "not authorised");
    assert_refused(publish(&broker.client(), "a/b", b"x", 1), "not authorised");
}

#[test]
fn restart_keeps_a_persistent_sessions_queued_qos1_message() {
    let mut broker = start(BrokerConfig::default());
    let session = broker.client().persistent("harness-session");
    register_subscription(&session, "q/#", 1).unwrap();
    // The session is offline: the broker queues the message for it.
    publish_ok(&broker.client(), "q/1", b"kept across restart", 1);
    let port = broker.port();
    broker.restart().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(broker.port(), port);
    let got = subscribe_collect(&session, "q/#", 1, 1, WAIT).unwrap();
    assert_eq!(
        got,
        vec![("q/1".to_string(), b"kept across restart".to_vec())]
    );
}

#[test]
fn killed_broker_restarts_on_the_same_port() {
    let mut broker = start(BrokerConfig::default().persistence(false));
    // A connected client: the broker's side of it is left in TIME_WAIT by the kill.
    let sub = subscribe(&broker.client(), "k/#", 1);
    broker.kill().unwrap();
    assert!(!broker.is_running());
    assert_refused(
        publish(&broker.client(), "k/x", b"x", 1),
        "Connection refused",
    );
    broker.restart().unwrap_or_else(|e| panic!("{e}"));
    // mosquitto_sub reconnects by itself to the same port.
    sub.wait_subscribed(2, WAIT).unwrap();
    publish_ok(&broker.client(), "k/x", b"back", 1);
    assert_eq!(sub.next_message(WAIT), Some(message("k/x", b"back")));
    broker.stop().unwrap();
    assert!(!broker.is_running());
}

#[test]
fn a_bad_config_fails_with_the_brokers_log() {
    let err = Broker::start(BrokerConfig::default().extra("no_such_option 1")).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Exited { .. }), "{text}");
    assert!(text.contains("no_such_option"), "{text}");
}

#[test]
fn a_missing_broker_says_how_to_install_it() {
    let text = Error::NotInstalled {
        program: "mosquitto",
    }
    .to_string();
    assert!(text.contains("scripts/test"), "{text}");
    assert!(
        text.contains("apt-get install mosquitto mosquitto-clients"),
        "{text}"
    );
}
