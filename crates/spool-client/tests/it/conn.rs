//! Connections: the handshake (RESP3, AUTH), broken connections and reconnecting, servers
//! that send what they should not.

use std::time::Duration;

use spool_client::{Client, Error, LeaseOptions, Options};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::Fixture;

#[tokio::test]
async fn resp3_gives_the_same_results() {
    let f = Fixture::start().await;
    let c = f.client_with(Options::resp3).await;
    assert!(c.options().resp3);
    let ids = c.push_many("r3", ["a", "b"]).await.expect("push_many");
    let stats = c.stats("r3").await.expect("stats (a map on RESP3)");
    assert_eq!(stats.visible, 2);
    assert_eq!(stats.total_pushed, 2);
    let leased = c
        .lease("r3", LeaseOptions::default().count(5))
        .await
        .expect("lease");
    assert_eq!(leased.len(), 2);
    assert!(leased[0].receipt.is_some());
    assert!(leased[0].first_received_at_ms.is_some());
    let peeked = c.peek_id("r3", ids[1]).await.expect("peek id");
    assert_eq!(&peeked.payload[..], b"b");
    let popped = c.pop("empty", 1).await.expect("pop");
    assert!(popped.is_empty());
    let err = c.peek_id("r3", 999_999).await.expect_err("no such id");
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    f.server.shutdown().await;
}

#[tokio::test]
async fn authentication_is_sent_and_a_refusal_is_typed() {
    let f = Fixture::start().await;
    // The server without users takes `default` with any password (as Redis does).
    let c = f.client_with(|o| o.auth("default", "secret")).await;
    c.ping().await.expect("ping");
    let c3 = f.client_with(|o| o.auth("default", "secret").resp3()).await;
    c3.ping().await.expect("ping");
    for opts in [
        Options::new(f.addr()).auth("bob", "secret"),
        Options::new(f.addr()).auth("bob", "secret").resp3(),
    ] {
        let err = Client::connect_with(opts).await.expect_err("unknown user");
        assert!(matches!(err, Error::WrongPass(_)), "{err:?}");
    }
    f.server.shutdown().await;
}

#[tokio::test]
async fn connecting_to_nothing_is_an_io_error() {
    // Bind then drop: a port nobody listens on.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let err = Client::connect(addr.to_string())
        .await
        .expect_err("nothing listens");
    assert!(
        matches!(&err, Error::Io { addr: a, .. } if *a == addr.to_string()),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_server_going_away_mid_request_is_a_typed_disconnect_then_the_client_reconnects() {
    let f = Fixture::start().await;
    let c = f.client().await;
    let id = c.push("keep", "before").await.expect("push");
    // A blocking read that returns at once leaves its connection as a spare.
    c.push("warm", "x").await.expect("push");
    let wait = LeaseOptions::default().wait(Duration::from_secs(60));
    assert_eq!(c.lease("warm", wait).await.expect("lease").len(), 1);

    // A lease that waits at the server (on the spare connection) when the server stops.
    let lease = c.lease("idle", wait);
    tokio::pin!(lease);
    tokio::select! {
        biased;
        r = &mut lease => panic!("nothing to lease yet: {r:?}"),
        () = std::future::ready(()) => {}
    }
    // The request is queued on the connection; let its writer send it.
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
    let ((store, config), leased) = tokio::join!(f.stop(), lease);
    let err = leased.expect_err("server gone");
    assert!(
        matches!(
            err,
            Error::Disconnected {
                maybe_applied: true,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("may have been applied"), "{err}");
    // The engine still waits for a message on behalf of the lost request (its wait runs on
    // the blocking pool, which the runtime waits for at the end): give it one. Leased for a
    // request nobody hears from, it comes back after its visibility timeout.
    store
        .push(
            "idle",
            spool_engine::Push::new(bytes::Bytes::from_static(b"x")),
        )
        .expect("push");

    // While the server is down: at most one request can still go to the dead connection
    // (sent as it broke); the next one tries to reconnect and is refused.
    let mut refused = false;
    for _ in 0..2 {
        match c.ping().await {
            Err(Error::Io { .. }) => {
                refused = true;
                break;
            }
            Err(Error::Disconnected { .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(refused, "the second request reconnects (and is refused)");

    let f = crate::Fixture::restart(store, config).await;
    // The next request reconnects, and the data is there.
    let m = c.peek_id("keep", id).await.expect("reconnected");
    assert_eq!(&m.payload[..], b"before");
    c.reconnect().await.expect("explicit reconnect");
    c.push("keep", "after").await.expect("push after reconnect");
    assert_eq!(c.stats("keep").await.expect("stats").messages, 2);
    f.server.shutdown().await;
}

#[tokio::test]
async fn close_fails_later_requests_with_closed() {
    let f = Fixture::start().await;
    let c = f.client().await;
    let clone = c.clone();
    c.close();
    assert!(matches!(clone.ping().await, Err(Error::Closed)));
    assert!(matches!(c.reconnect().await, Err(Error::Closed)));
    f.server.shutdown().await;
}

/// A scripted server: accepts one connection, reads one request, then runs `then`.
async fn scripted<F, Fut>(then: F) -> String
where
    F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.expect("accept");
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).await.expect("read");
        assert!(n > 0, "a request");
        then(s).await;
    });
    addr
}

#[tokio::test]
async fn a_connection_closed_before_the_reply_is_a_maybe_applied_disconnect() {
    let addr = scripted(|s| async move { drop(s) }).await;
    let c = Client::connect(addr)
        .await
        .expect("connect (nothing sent yet)");
    let err = c.push("q", "x").await.expect_err("no reply");
    assert!(
        matches!(&err, Error::Disconnected { maybe_applied: true, reason } if reason.contains("closed")),
        "{err:?}"
    );
    assert!(err.to_string().contains("may have been applied"), "{err}");
}

#[tokio::test]
async fn a_reply_that_is_not_resp_breaks_the_connection_without_a_panic() {
    let addr = scripted(|mut s| async move {
        s.write_all(b"?garbage\r\n").await.expect("write");
        // Keep the socket open: the client must give up on its own.
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
    })
    .await;
    let c = Client::connect(addr).await.expect("connect");
    let err = c.push("q", "x").await.expect_err("bad reply");
    assert!(
        matches!(&err, Error::Disconnected { maybe_applied: true, reason } if reason.contains("RESP")),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_reply_of_the_wrong_shape_is_a_protocol_error_and_the_connection_stays_in_step() {
    let addr = scripted(|mut s| async move {
        // The push gets `+OK` (not an id), then a second request gets `:5`.
        s.write_all(b"+OK\r\n").await.expect("write");
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await;
        s.write_all(b":5\r\n").await.expect("write");
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
    })
    .await;
    let c = Client::connect(addr).await.expect("connect");
    let err = c.push("q", "x").await.expect_err("wrong shape");
    assert!(matches!(err, Error::Protocol(_)), "{err:?}");
    assert_eq!(c.push("q", "y").await.expect("next reply"), 5);
}

#[tokio::test]
async fn a_connect_that_never_answers_the_handshake_times_out() {
    // Accepts and reads, never answers: the HELLO of a RESP3 client waits forever.
    let addr = scripted(|mut s| async move {
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
    })
    .await;
    let err = Client::connect_with(
        Options::new(addr)
            .resp3()
            .connect_timeout(Duration::from_millis(200)),
    )
    .await
    .expect_err("no answer");
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
}
