//! Topics: dsmq's behaviours (history cutoff at connect, fan-out, FIFO across writers,
//! `get_latest`), cursors, expiry reported as `skipped`, and topic management.

use super::*;

/// `[seq, payload, published_at_ms, next_cursor, skipped]`.
fn msg(f: Frame) -> (i64, Frame, i64, i64) {
    let v = items(f);
    assert_eq!(v.len(), 5, "{v:?}");
    let int = |f: &Frame| match f {
        Frame::Integer(n) => *n,
        other => panic!("expected an integer, got {other:?}"),
    };
    assert!(int(&v[2]) > 0, "published_at_ms");
    (int(&v[0]), v[1].clone(), int(&v[3]), int(&v[4]))
}

#[tokio::test]
async fn a_connection_sees_only_what_was_published_after_it_connected() {
    let t = Fixture::new();
    let mut writer = t.connect(1);
    t.run_on(&mut writer, &["TPUB", "news", "before"]).await;
    let mut reader = t.connect(2);
    assert_eq!(t.run_on(&mut reader, &["TGET", "news"]).await, Frame::Null);
    t.run_on(&mut writer, &["TPUB", "news", "after"]).await;
    let (seq, payload, next, skipped) = msg(t.run_on(&mut reader, &["TGET", "news"]).await);
    assert_eq!((seq, payload, next, skipped), (2, bulk("after"), 3, 0));
    assert_eq!(t.run_on(&mut reader, &["TGET", "news"]).await, Frame::Null);
    // A topic created after the reader connected: everything in it is new to the reader.
    t.run_on(&mut writer, &["TPUB", "late", "first"]).await;
    assert_eq!(
        msg(t.run_on(&mut reader, &["TGET", "late"]).await).1,
        bulk("first")
    );
    // A reader connecting now sees none of it.
    let mut newcomer = t.connect(3);
    assert_eq!(
        t.run_on(&mut newcomer, &["TGET", "late"]).await,
        Frame::Null
    );
    assert_eq!(
        t.run_on(&mut newcomer, &["TGET", "news"]).await,
        Frame::Null
    );
}

#[tokio::test]
async fn two_readers_both_receive_in_fifo_order_across_writers() {
    let t = Fixture::new();
    let (mut r1, mut r2) = (t.connect(1), t.connect(2));
    let (mut w1, mut w2) = (t.connect(3), t.connect(4));
    t.run_on(&mut w1, &["TPUB", "t", "a"]).await;
    t.run_on(&mut w2, &["TPUB", "t", "b"]).await;
    t.run_on(&mut w1, &["TPUB", "t", "c"]).await;
    for r in [&mut r1, &mut r2] {
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(msg(t.run_on(r, &["TGET", "t"]).await).1);
        }
        assert_eq!(got, vec![bulk("a"), bulk("b"), bulk("c")]);
        assert_eq!(t.run_on(r, &["TGET", "t"]).await, Frame::Null);
    }
    // Topics are independent.
    assert_eq!(t.run_on(&mut r1, &["TGET", "other"]).await, Frame::Null);
}

#[tokio::test]
async fn tlatest_skips_to_the_newest_then_nil() {
    let mut t = Fixture::new();
    for i in 0..5 {
        t.run(&["TPUB", "t", &format!("m{i}")]).await;
    }
    let (seq, payload, next, skipped) = msg(t.run(&["TLATEST", "t"]).await);
    assert_eq!((seq, payload, next, skipped), (5, bulk("m4"), 6, 4));
    assert_eq!(t.run(&["TGET", "t"]).await, Frame::Null);
    assert_eq!(t.run(&["TLATEST", "t"]).await, Frame::Null);
}

#[tokio::test]
async fn tsub_and_explicit_cursors() {
    let mut t = Fixture::new();
    for p in ["a", "b", "c"] {
        t.run(&["TPUB", "t", p]).await;
    }
    // An explicit cursor reads from anywhere and leaves the connection's cursor alone.
    let (seq, payload, next, _) = msg(t.run(&["TGET", "t", "CURSOR", "1"]).await);
    assert_eq!((seq, payload, next), (1, bulk("a"), 2));
    assert_eq!(
        msg(t.run(&["TLATEST", "t", "CURSOR", "1"]).await).1,
        bulk("c")
    );
    assert_eq!(msg(t.run(&["TGET", "t"]).await).1, bulk("a"));
    assert_eq!(t.run(&["TGET", "t", "CURSOR", "4"]).await, Frame::Null);
    for bad in [
        &["TGET", "t", "CURSOR", "5"][..],
        &["TGET", "t", "CURSOR", "0"],
        &["TGET", "t", "CURSOR", "x"],
        &["TGET", "t", "FROM", "1"],
        &["TSUB", "t", "extra"],
        &["TGET", "missing", "CURSOR", "2"],
        &["TWAIT", "missing", "TIMEOUT", "60000", "CURSOR", "2"],
    ] {
        assert_eq!(code(&t.run(bad).await), "BADARG", "{bad:?}");
    }
    // TSUB: "from now", and the connection's cursor follows.
    assert_eq!(t.run(&["TSUB", "t"]).await, Frame::Integer(4));
    assert_eq!(t.run(&["TGET", "t"]).await, Frame::Null);
    t.run(&["TPUB", "t", "d"]).await;
    assert_eq!(msg(t.run(&["TGET", "t"]).await).1, bulk("d"));
    assert_eq!(t.run(&["TSUB", "new.topic"]).await, Frame::Integer(1));
    assert_eq!(code(&t.run(&["TGET", "bad name"]).await), "BADNAME");
}

#[tokio::test]
async fn expired_messages_are_reported_as_skipped() {
    let mut t = Fixture::new();
    t.run(&["TCREATE", "t", "MAXLEN", "2"]).await;
    for i in 1..=5 {
        t.run(&["TPUB", "t", &format!("m{i}")]).await;
    }
    let (seq, payload, _, skipped) = msg(t.run(&["TGET", "t"]).await);
    assert_eq!((seq, payload, skipped), (4, bulk("m4"), 3));
    let (seq, _, _, skipped) = msg(t.run(&["TGET", "t"]).await);
    assert_eq!((seq, skipped), (5, 0));
}

#[tokio::test]
async fn twait_is_woken_by_a_publish_on_another_connection() {
    let t = Fixture::new();
    let svc = t.svc.clone();
    let mut reader = t.connect(1);
    let waiter = tokio::spawn(async move {
        let r = execute(
            &svc,
            &mut reader,
            request(&["TWAIT", "alerts", "TIMEOUT", "60000"]),
        )
        .await;
        (r, reader)
    });
    let mut writer = t.connect(2);
    // Once the wait holds the reader's cursor, the publish wakes it (had it come first, the
    // reader would still see it: it was published after the reader connected).
    until_subscribers(&t, "alerts", 1).await;
    assert_eq!(
        t.run_on(&mut writer, &["TPUB", "alerts", "fire"]).await,
        Frame::Integer(1)
    );
    let (got, mut reader) = waiter.await.expect("the waiter task");
    assert_eq!(msg(got).1, bulk("fire"));
    assert_eq!(
        t.run_on(&mut reader, &["TGET", "alerts"]).await,
        Frame::Null
    );
}

#[tokio::test]
async fn twait_arguments_and_a_timeout_is_nil() {
    let mut t = Fixture::new();
    for bad in [
        &["TWAIT", "t"][..],
        &["TWAIT", "t", "TIMEOUT"],
        &["TWAIT", "t", "TIMEOUT", "60001"],
        &["TGET", "t", "TIMEOUT", "10"],
    ] {
        assert_eq!(code(&t.run(bad).await), "BADARG", "{bad:?}");
    }
    assert_eq!(t.run(&["TWAIT", "t", "TIMEOUT", "1"]).await, Frame::Null);
    t.run(&["TPUB", "t", "x"]).await;
    assert_eq!(
        msg(t.run(&["TWAIT", "t", "TIMEOUT", "0", "CURSOR", "1"]).await).1,
        bulk("x")
    );
}

#[tokio::test]
async fn tstats_counts_connections_holding_a_cursor() {
    let mut t = Fixture::new();
    t.run(&["TPUB", "t", "x"]).await;
    let subs = |t: &Fixture| t.svc.registry().subscribers("t");
    assert_eq!(subs(&t), 0);
    t.run(&["TSUB", "t"]).await;
    let mut other = t.connect(2);
    t.run_on(&mut other, &["TGET", "t"]).await;
    // A stateless read (CURSOR) holds nothing.
    let mut third = t.connect(3);
    t.run_on(&mut third, &["TGET", "t", "CURSOR", "1"]).await;
    let stats = t.run(&["TSTATS", "t"]).await;
    assert_eq!(field(&stats, "subscribers"), Frame::Integer(2));
    assert_eq!(field(&stats, "last_seq"), Frame::Integer(1));
    assert_eq!(field(&stats, "retained"), Frame::Integer(1));
    assert_eq!(field(&stats, "total_published"), Frame::Integer(1));
    assert_eq!(field(&stats, "ttl_ms"), Frame::Integer(600_000));
    assert_eq!(field(&stats, "maxlen"), Frame::Integer(10_000));
    assert!(matches!(field(&stats, "oldest_age_ms"), Frame::Integer(_)));
    drop(other);
    assert_eq!(subs(&t), 1, "a closed connection no longer counts");
    assert_eq!(code(&t.run(&["TSTATS", "missing"]).await), "NOTOPIC");
}

#[tokio::test]
async fn topic_management_round_trip() {
    let mut t = Fixture::new();
    assert_eq!(t.run(&["TCREATE", "t"]).await, Frame::Integer(1));
    assert_eq!(t.run(&["TCREATE", "t"]).await, Frame::Integer(0));
    let e = t.run(&["TCREATE", "t", "TTL", "5000"]).await;
    assert_eq!(code(&e), "EXISTS");
    assert!(text(&e).contains("TCONFIG"), "{e:?}");
    for bad in [
        &["TCREATE", "u", "TTL", "0"][..],
        &["TCREATE", "u", "TTL", "2592000001"],
        &["TCREATE", "u", "MAXSIZE", "0"],
        &["TCREATE", "u", "MAXSIZE", "1048577"],
        &["TCREATE", "u", "VT", "10"],
        &["TCONFIG", "t", "MAXLEN", "-1"],
    ] {
        assert_eq!(code(&t.run(bad).await), "BADARG", "{bad:?}");
    }
    assert_eq!(
        text(&t.run(&["TCONFIG", "t", "MAXLEN", "3", "TTL", "1000"]).await),
        "OK"
    );
    let c = t.run(&["TCONFIG", "t"]).await;
    assert_eq!(field(&c, "maxlen"), Frame::Integer(3));
    assert_eq!(field(&c, "ttl_ms"), Frame::Integer(1000));
    assert_eq!(
        code(&t.run(&["TCONFIG", "missing", "MAXLEN", "3"]).await),
        "NOTOPIC"
    );
    t.run(&["TCREATE", "small", "MAXSIZE", "4"]).await;
    assert_eq!(t.run(&["TPUB", "small", "1234"]).await, Frame::Integer(1));
    assert_eq!(code(&t.run(&["TPUB", "small", "12345"]).await), "TOOBIG");
    assert_eq!(
        t.run(&["TLIST"]).await,
        Frame::Array(vec![bulk("small"), bulk("t")])
    );
    assert_eq!(
        t.run(&["TLIST", "s*"]).await,
        Frame::Array(vec![bulk("small")])
    );
    assert_eq!(t.run(&["TDROP", "t"]).await, Frame::Integer(1));
    assert_eq!(t.run(&["TDROP", "t"]).await, Frame::Integer(0));
    assert_eq!(code(&t.run(&["TPUB", "bad/name", "x"]).await), "BADNAME");
}

#[tokio::test]
async fn a_dropped_and_recreated_topic_is_read_from_its_start() {
    let mut t = Fixture::new();
    for p in ["a", "b", "c"] {
        t.run(&["TPUB", "t", p]).await;
    }
    t.run(&["TGET", "t"]).await;
    t.run(&["TGET", "t"]).await;
    t.run(&["TGET", "t"]).await;
    t.run(&["TDROP", "t"]).await;
    t.run(&["TPUB", "t", "fresh"]).await;
    let (seq, payload, _, _) = msg(t.run(&["TGET", "t"]).await);
    assert_eq!((seq, payload), (1, bulk("fresh")));
}

#[tokio::test]
async fn pipelined_publishes_are_applied_in_order_before_their_replies() {
    let t = Fixture::new();
    let first = super::super::start(&t.svc, &t.conn, &request(&["TPUB", "t", "1"]))
        .expect("TPUB is started");
    let second = super::super::start(&t.svc, &t.conn, &request(&["TPUB", "t", "2"]))
        .expect("TPUB is started");
    assert_eq!(second.await, Frame::Integer(2));
    assert_eq!(first.await, Frame::Integer(1));
}

/// Yields until `topic` has `n` subscribers; fails (rather than hangs) if it never does.
async fn until_subscribers(t: &Fixture, topic: &str, n: usize) {
    for _ in 0..100_000 {
        if t.svc.registry().subscribers(topic) == n {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!(
        "{topic} has {} subscribers, never {n}",
        t.svc.registry().subscribers(topic)
    );
}

#[tokio::test]
async fn a_stateless_twait_counts_as_a_subscriber_only_while_it_waits() {
    let t = Fixture::new();
    let svc = t.svc.clone();
    let waiter = tokio::spawn(async move {
        let mut conn = ConnState::open(9, &svc);
        execute(
            &svc,
            &mut conn,
            request(&["TWAIT", "t", "TIMEOUT", "60000", "CURSOR", "1"]),
        )
        .await
    });
    until_subscribers(&t, "t", 1).await;
    let mut writer = t.connect(2);
    t.run_on(&mut writer, &["TPUB", "t", "x"]).await;
    assert_eq!(msg(waiter.await.expect("task")).1, bulk("x"));
    assert_eq!(t.svc.registry().subscribers("t"), 0);
    // A wait whose client went away (its future dropped) no longer counts either.
    let svc = t.svc.clone();
    let gone = tokio::spawn(async move {
        let mut conn = ConnState::open(10, &svc);
        execute(
            &svc,
            &mut conn,
            request(&["TWAIT", "t", "TIMEOUT", "60000", "CURSOR", "2"]),
        )
        .await
    });
    until_subscribers(&t, "t", 1).await;
    gone.abort();
    assert!(gone.await.is_err(), "aborted");
    assert_eq!(t.svc.registry().subscribers("t"), 0);
}
