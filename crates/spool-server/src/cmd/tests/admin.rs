//! Queue management (`QCREATE`, `QCONFIG`, `QDROP`, `QPURGE`, `QREDRIVE`) and the message
//! commands that change a lease or a message's place (`QEXTEND`, `QDEAD`, `QPOP ... WAIT`).

use spool_engine::ManualClock;

use super::*;

/// The record of the one message `QGET q [opts]` leases.
async fn lease_one(t: &mut Fixture, words: &[&str]) -> Vec<Frame> {
    let mut got = items(t.run(words).await);
    assert_eq!(got.len(), 1, "{words:?} leased {got:?}");
    items(got.remove(0))
}

#[tokio::test]
async fn qcreate_is_idempotent_reports_its_defaults_and_a_different_config_is_exists() {
    let mut t = Fixture::new();
    assert_eq!(t.run(&["QCREATE", "jobs"]).await, Frame::Integer(1));
    assert_eq!(t.run(&["QCREATE", "jobs"]).await, Frame::Integer(0));
    let e = t.run(&["QCREATE", "jobs", "VT", "1000"]).await;
    assert_eq!(code(&e), "EXISTS");
    assert!(text(&e).contains("QCONFIG"), "{e:?}");
    let stats = t.run(&["QSTATS", "jobs"]).await;
    for (k, v) in [
        ("vt_ms", 30_000),
        ("delay_ms", 0),
        ("maxsize", 1 << 20),
        ("maxlen", 0),
        ("maxreceives", 0),
        ("retention_ms", 4 * 24 * 3600 * 1000),
        ("maxbytes", 0),
        ("maxinflight", 100_000),
    ] {
        assert_eq!(field(&stats, k), Frame::Integer(v), "{k}");
    }
    assert_eq!(field(&stats, "dlq"), Frame::Null);
    assert_eq!(field(&stats, "overflow"), bulk("reject"));
    // A queue auto-created by a push has the same defaults: QCREATE of it is :0.
    t.run(&["QPUSH", "auto", "x"]).await;
    assert_eq!(t.run(&["QCREATE", "auto"]).await, Frame::Integer(0));
}

#[tokio::test]
async fn qcreate_takes_every_option_and_maxreceives_creates_the_dlq() {
    let mut t = Fixture::new();
    let created = t
        .run(&[
            "QCREATE",
            "jobs",
            "VT",
            "5000",
            "DELAY",
            "10",
            "MAXSIZE",
            "100",
            "MAXLEN",
            "50",
            "MAXRECEIVES",
            "3",
            "RETENTION",
            "0",
            "MAXBYTES",
            "4096",
            "OVERFLOW",
            "evict",
            "MAXINFLIGHT",
            "7",
        ])
        .await;
    assert_eq!(created, Frame::Integer(1));
    assert_eq!(
        t.run(&["QLIST"]).await,
        Frame::Array(vec![bulk("jobs"), bulk("jobs.dlq")])
    );
    let c = t.run(&["QCONFIG", "jobs"]).await;
    for (k, v) in [
        ("vt_ms", 5000),
        ("delay_ms", 10),
        ("maxsize", 100),
        ("maxlen", 50),
        ("maxreceives", 3),
        ("retention_ms", 0),
        ("maxbytes", 4096),
        ("maxinflight", 7),
    ] {
        assert_eq!(field(&c, k), Frame::Integer(v), "{k}");
    }
    assert_eq!(field(&c, "dlq"), bulk("jobs.dlq"));
    assert_eq!(field(&c, "overflow"), bulk("evict"));
    // The DLQ has the defaults and no DLQ of its own.
    let d = t.run(&["QCONFIG", "jobs.dlq"]).await;
    assert_eq!(field(&d, "maxreceives"), Frame::Integer(0));
    assert_eq!(field(&d, "dlq"), Frame::Null);
    // A named DLQ is created instead of <q>.dlq.
    assert_eq!(
        t.run(&["QCREATE", "mail", "MAXRECEIVES", "2", "DLQ", "graveyard"])
            .await,
        Frame::Integer(1)
    );
    assert_eq!(
        t.run(&["QLIST", "[gm]*"]).await,
        Frame::Array(vec![]),
        "globs know * and ? only"
    );
    assert_eq!(
        t.run(&["QLIST", "*a*"]).await,
        Frame::Array(vec![bulk("graveyard"), bulk("mail")])
    );
}

#[tokio::test]
async fn queue_options_out_of_range_are_badarg_and_names_are_checked() {
    let mut t = Fixture::new();
    for req in [
        &["QCREATE", "q", "VT", "0"][..],
        &["QCREATE", "q", "VT", "43200001"],
        &["QCREATE", "q", "DELAY", "604800001"],
        &["QCREATE", "q", "MAXSIZE", "0"],
        &["QCREATE", "q", "MAXSIZE", "1048577"],
        &["QCREATE", "q", "MAXLEN", "-1"],
        &["QCREATE", "q", "MAXRECEIVES", "4294967296"],
        &["QCREATE", "q", "RETENTION", "2592000001"],
        &["QCREATE", "q", "OVERFLOW", "sideways"],
        &["QCREATE", "q", "COLOUR", "red"],
        &["QCREATE", "q", "VT"],
        &["QCREATE", "q", "DLQ", "q"],
        &["QCONFIG", "q", "VT", "0"],
    ] {
        assert_eq!(code(&t.run(req).await), "BADARG", "{req:?}");
    }
    assert_eq!(
        t.svc.store().queues(),
        Vec::<String>::new(),
        "nothing created"
    );
    // The bounds themselves are accepted.
    assert_eq!(
        t.run(&[
            "QCREATE",
            "q",
            "VT",
            "43200000",
            "DELAY",
            "604800000",
            "MAXSIZE",
            "1048576",
            "RETENTION",
            "2592000000",
            "MAXRECEIVES",
            "4294967295",
        ])
        .await,
        Frame::Integer(1)
    );
    assert_eq!(code(&t.run(&["QCREATE", "bad name"]).await), "BADNAME");
    assert_eq!(
        code(&t.run(&["QCREATE", "q2", "DLQ", "bad/dlq"]).await),
        "BADNAME"
    );
    // <q>.dlq must be a valid name: with MAXRECEIVES and no DLQ, 124 characters at most.
    let long = "x".repeat(125);
    let e = t.run(&["QCREATE", &long, "MAXRECEIVES", "1"]).await;
    assert_eq!(code(&e), "BADNAME");
    assert!(text(&e).contains("124"), "{e:?}");
    assert_eq!(
        t.run(&["QCREATE", &long[..124], "MAXRECEIVES", "1"]).await,
        Frame::Integer(1)
    );
    assert_eq!(
        t.run(&["QCREATE", &long, "MAXRECEIVES", "1", "DLQ", "short.dlq"])
            .await,
        Frame::Integer(1)
    );
}

#[tokio::test]
async fn maxsize_is_accepted_and_one_byte_more_is_toobig() {
    let mut t = Fixture::new();
    t.run(&["QCREATE", "small", "MAXSIZE", "10"]).await;
    assert_eq!(t.run(&["QPUSH", "small", "0123456789"]).await, bulk("1"));
    let e = t.run(&["QPUSH", "small", "0123456789A"]).await;
    assert_eq!(code(&e), "TOOBIG");
    assert!(text(&e).contains("10 bytes"), "names the limit: {e:?}");
    // The empty payload round-trips.
    assert_eq!(t.run(&["QPUSH", "small", ""]).await, bulk("2"));
    let popped = items(t.run(&["QPOP", "small", "COUNT", "2"]).await);
    assert_eq!(items(popped[1].clone())[2], bulk(""));
}

#[tokio::test]
async fn maxlen_is_full_and_a_batch_that_does_not_fit_stores_nothing() {
    let mut t = Fixture::new();
    t.run(&["QCREATE", "q", "MAXLEN", "2"]).await;
    t.run(&["QPUSH", "q", "a"]).await;
    let e = t.run(&["QPUSHMANY", "q", "--", "b", "c"]).await;
    assert_eq!(code(&e), "FULL");
    assert_eq!(t.run(&["QPUSH", "q", "b"]).await, bulk("2"));
    assert_eq!(code(&t.run(&["QPUSH", "q", "c"]).await), "FULL");
    assert_eq!(
        field(&t.run(&["QSTATS", "q"]).await, "messages"),
        Frame::Integer(2)
    );
}

#[tokio::test]
async fn qconfig_changes_every_key_or_none_and_needs_the_queue() {
    let mut t = Fixture::new();
    assert_eq!(
        code(&t.run(&["QCONFIG", "missing", "VT", "10"]).await),
        "NOQUEUE"
    );
    assert_eq!(code(&t.run(&["QCONFIG", "missing"]).await), "NOQUEUE");
    t.run(&["QCREATE", "q"]).await;
    assert_eq!(
        text(&t.run(&["QCONFIG", "q", "VT", "5000", "DELAY", "20"]).await),
        "OK"
    );
    // One bad pair: nothing changes.
    assert_eq!(
        code(
            &t.run(&["QCONFIG", "q", "VT", "9000", "MAXLEN", "many"])
                .await
        ),
        "BADARG"
    );
    let c = t.run(&["QCONFIG", "q"]).await;
    assert_eq!(field(&c, "vt_ms"), Frame::Integer(5000));
    assert_eq!(field(&c, "delay_ms"), Frame::Integer(20));
    assert_eq!(field(&c, "maxlen"), Frame::Integer(0));
    // A new lease uses the new default VT.
    t.run(&["QCONFIG", "q", "DELAY", "0"]).await;
    t.run(&["QPUSH", "q", "x"]).await;
    let rec = lease_one(&mut t, &["QGET", "q"]).await;
    let (Frame::Integer(first), Frame::Integer(until)) = (&rec[5], &rec[7]) else {
        panic!("{rec:?}");
    };
    assert!(until - first >= 5000, "{rec:?}");
    // Giving a queue MAXRECEIVES creates its DLQ; DLQ "" takes it away again.
    t.run(&["QCONFIG", "q", "MAXRECEIVES", "2"]).await;
    assert!(t.svc.store().queues().contains(&"q.dlq".to_string()));
    t.run(&["QCONFIG", "q", "MAXRECEIVES", "0", "DLQ", ""])
        .await;
    assert_eq!(field(&t.run(&["QCONFIG", "q"]).await, "dlq"), Frame::Null);
}

#[tokio::test]
async fn qpurge_empties_and_qdrop_removes() {
    let mut t = Fixture::new();
    assert_eq!(code(&t.run(&["QPURGE", "missing"]).await), "NOQUEUE");
    assert_eq!(t.run(&["QDROP", "missing"]).await, Frame::Integer(0));
    t.run(&["QCREATE", "q", "VT", "1000"]).await;
    t.run(&["QPUSHMANY", "q", "--", "a", "b", "c"]).await;
    assert_eq!(t.run(&["QPURGE", "q"]).await, Frame::Integer(3));
    let stats = t.run(&["QSTATS", "q"]).await;
    assert_eq!(field(&stats, "messages"), Frame::Integer(0));
    assert_eq!(field(&stats, "vt_ms"), Frame::Integer(1000), "config kept");
    assert_eq!(t.run(&["QDROP", "q"]).await, Frame::Integer(1));
    assert_eq!(t.run(&["QDROP", "q"]).await, Frame::Integer(0));
    assert_eq!(code(&t.run(&["QSTATS", "q"]).await), "NOQUEUE");
    assert_eq!(code(&t.run(&["QDROP", "a", "b"]).await), "BADARG");
}

#[tokio::test]
async fn qextend_moves_the_lease_end_and_keeps_the_receipt_valid() {
    let clock = ManualClock::new(1_000_000);
    let mut t = Fixture::with_clock(&clock);
    t.run(&["QPUSH", "q", "slow job"]).await;
    let rec = lease_one(&mut t, &["QGET", "q", "VT", "1000"]).await;
    let receipt = text(&rec[1]);
    clock.advance(900);
    assert_eq!(
        t.run(&["QEXTEND", "q", &receipt, "VT", "60000"]).await,
        Frame::Integer(1_000_900 + 60_000)
    );
    // Past the first lease's end, still hidden: the extension holds.
    clock.advance(5_000);
    assert_eq!(t.run(&["QGET", "q"]).await, Frame::Array(vec![]));
    assert_eq!(
        t.run(&["QTOUCH", "q", &receipt, "VT", "1"]).await,
        Frame::Integer(1_005_901)
    );
    for bad in [
        &["QEXTEND", "q", &receipt][..],
        &["QEXTEND", "q", &receipt, "VT", "0"],
        &["QEXTEND", "q", &receipt, "VT", "43200001"],
        &["QEXTEND", "q", "nonsense", "VT", "10"],
    ] {
        assert_eq!(code(&t.run(bad).await), "BADARG", "{bad:?}");
    }
    assert_eq!(t.run(&["QACK", "q", &receipt]).await, Frame::Integer(1));
    assert_eq!(
        code(&t.run(&["QEXTEND", "q", &receipt, "VT", "10"]).await),
        "NOTFOUND"
    );
    // A receipt made stale by a nack is LEASELOST.
    t.run(&["QPUSH", "q", "again"]).await;
    let rec = lease_one(&mut t, &["QGET", "q"]).await;
    let receipt = text(&rec[1]);
    t.run(&["QNACK", "q", &receipt]).await;
    assert_eq!(
        code(&t.run(&["QEXTEND", "q", &receipt, "VT", "10"]).await),
        "LEASELOST"
    );
    assert_eq!(
        code(&t.run(&["QEXTEND", "nope", &receipt, "VT", "10"]).await),
        "NOQUEUE"
    );
}

#[tokio::test]
async fn a_message_received_more_than_maxreceives_times_moves_to_the_dlq() {
    let clock = ManualClock::new(1_000_000);
    let mut t = Fixture::with_clock(&clock);
    t.run(&["QCREATE", "jobs", "MAXRECEIVES", "2", "VT", "1000"])
        .await;
    t.run(&["QPUSH", "jobs", "poison"]).await;
    for n in 1..=2 {
        let rec = lease_one(&mut t, &["QGET", "jobs"]).await;
        assert_eq!(rec[6], Frame::Integer(n));
        clock.advance(1_000);
    }
    // The third receive would pass MAXRECEIVES: moved, not delivered.
    assert_eq!(t.run(&["QGET", "jobs"]).await, Frame::Array(vec![]));
    let stats = t.run(&["QSTATS", "jobs"]).await;
    assert_eq!(field(&stats, "dead"), Frame::Integer(1));
    assert_eq!(field(&stats, "messages"), Frame::Integer(0));
    assert_eq!(field(&stats, "total_dead"), Frame::Integer(1));
    let dead = items(t.run(&["QPEEK", "jobs.dlq"]).await);
    let rec = items(dead[0].clone());
    assert_eq!(rec[2], bulk("poison"));
    assert_eq!(rec[6], Frame::Integer(2), "it keeps its counters");
}

#[tokio::test]
async fn qdead_then_qredrive_is_a_round_trip() {
    let mut t = Fixture::new();
    t.run(&["QCREATE", "jobs", "MAXRECEIVES", "5"]).await;
    t.run(&["QPUSH", "jobs", "cannot parse", "PRI", "7"]).await;
    let rec = lease_one(&mut t, &["QGET", "jobs"]).await;
    let receipt = text(&rec[1]);
    let dead_id = t
        .run(&["QDEAD", "jobs", &receipt, "REASON", "bad input"])
        .await;
    assert_eq!(dead_id, bulk("2"), "a new id in the DLQ");
    assert_eq!(code(&t.run(&["QACK", "jobs", &receipt]).await), "NOTFOUND");
    assert_eq!(
        field(&t.run(&["QSTATS", "jobs"]).await, "dead"),
        Frame::Integer(1)
    );
    // Only a dead-letter queue is redriven.
    assert_eq!(code(&t.run(&["QREDRIVE", "jobs"]).await), "NODLQ");
    assert_eq!(code(&t.run(&["QREDRIVE", "nope"]).await), "NOQUEUE");
    assert_eq!(
        code(&t.run(&["QREDRIVE", "jobs.dlq", "COUNT", "0"]).await),
        "BADARG"
    );
    assert_eq!(t.run(&["QREDRIVE", "jobs.dlq"]).await, Frame::Integer(1));
    assert_eq!(t.run(&["QREDRIVE", "jobs.dlq"]).await, Frame::Integer(0));
    let rec = lease_one(&mut t, &["QGET", "jobs"]).await;
    assert_eq!(rec[2], bulk("cannot parse"));
    assert_eq!(rec[3], Frame::Integer(7), "priority kept");
    assert_eq!(rec[6], Frame::Integer(1), "counters start afresh");
    // QDEAD without a DLQ is NODLQ, and the message stays leased.
    t.run(&["QPUSH", "plain", "x"]).await;
    let rec = lease_one(&mut t, &["QGET", "plain"]).await;
    let receipt = text(&rec[1]);
    assert_eq!(code(&t.run(&["QDEAD", "plain", &receipt]).await), "NODLQ");
    assert_eq!(t.run(&["QACK", "plain", &receipt]).await, Frame::Integer(1));
}

#[tokio::test]
async fn qredrive_count_moves_at_most_that_many() {
    let mut t = Fixture::new();
    t.run(&["QCREATE", "jobs", "MAXRECEIVES", "1"]).await;
    t.run(&["QPUSHMANY", "jobs", "--", "a", "b", "c"]).await;
    let got = items(t.run(&["QGET", "jobs", "COUNT", "3"]).await);
    for r in got {
        let receipt = text(&items(r)[1]);
        t.run(&["QDEAD", "jobs", &receipt]).await;
    }
    assert_eq!(
        t.run(&["QREDRIVE", "jobs.dlq", "COUNT", "2"]).await,
        Frame::Integer(2)
    );
    assert_eq!(
        field(&t.run(&["QSTATS", "jobs"]).await, "visible"),
        Frame::Integer(2)
    );
    assert_eq!(t.run(&["QREDRIVE", "jobs.dlq"]).await, Frame::Integer(1));
}

#[tokio::test]
async fn qpop_wait_is_woken_by_a_push_on_another_connection() {
    let t = Fixture::new();
    let svc = t.svc.clone();
    let waiter = tokio::spawn(async move {
        let mut conn = ConnState::open(1, &svc);
        execute(
            &svc,
            &mut conn,
            request(&["QPOP", "later", "WAIT", "60000"]),
        )
        .await
    });
    let mut producer = t.connect(2);
    assert_eq!(
        t.run_on(&mut producer, &["QPUSH", "later", "wake up"])
            .await,
        bulk("1")
    );
    let got = items(waiter.await.expect("the waiter task"));
    assert_eq!(got.len(), 1);
    let rec = items(got[0].clone());
    assert_eq!(rec[2], bulk("wake up"));
    assert_eq!(rec[1], Frame::Null, "a pop has no receipt");
    assert!(
        t.svc.store().peek("later", 1).expect("peek").is_empty(),
        "popped means gone"
    );
}

#[tokio::test]
async fn qpop_wait_that_runs_out_is_an_empty_array() {
    let mut t = Fixture::new();
    assert_eq!(
        t.run(&["QPOP", "idle", "WAIT", "1"]).await,
        Frame::Array(vec![])
    );
    t.run(&["QPUSH", "idle", "x"]).await;
    assert_eq!(
        items(t.run(&["QPOP", "idle", "COUNT", "5", "WAIT", "1"]).await).len(),
        1
    );
}
