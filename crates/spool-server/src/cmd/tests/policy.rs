//! The server policy: `auto_create` off (`NOQUEUE`/`NOTOPIC`) and `max_queues` (`FULL`).

use super::*;

fn no_auto_create() -> Fixture {
    Fixture::with_policy(Policy {
        auto_create: false,
        max_queues: 0,
    })
}

#[tokio::test]
async fn without_auto_create_writes_and_reads_of_missing_queues_are_noqueue() {
    let mut t = no_auto_create();
    for req in [
        &["QPUSH", "q", "x"][..],
        &["QPUSHMANY", "q", "--", "x"],
        &["QGET", "q"],
        &["QGET", "q", "WAIT", "60000"],
        &["QPOP", "q"],
        &["QPOP", "q", "WAIT", "60000"],
        &["QPEEK", "q"],
    ] {
        let e = t.run(req).await;
        assert_eq!(code(&e), "NOQUEUE", "{req:?}");
        assert!(text(&e).contains("QCREATE"), "says what to do: {e:?}");
    }
    // The pipelined path refuses the same way.
    let started = super::super::start(&t.svc, &t.conn, &request(&["QPUSH", "q", "x"]))
        .expect("QPUSH is started");
    assert_eq!(code(&started.await), "NOQUEUE");
    assert_eq!(t.svc.store().queues(), Vec::<String>::new());
    // Created explicitly, it works.
    assert_eq!(t.run(&["QCREATE", "q"]).await, Frame::Integer(1));
    assert_eq!(t.run(&["QPUSH", "q", "x"]).await, bulk("1"));
    assert_eq!(items(t.run(&["QPOP", "q"]).await).len(), 1);
    assert_eq!(t.run(&["QGET", "q"]).await, Frame::Array(vec![]));
}

#[tokio::test]
async fn without_auto_create_topic_writes_and_reads_of_missing_topics_are_notopic() {
    let mut t = no_auto_create();
    for req in [
        &["TPUB", "t", "x"][..],
        &["TSUB", "t"],
        &["TGET", "t"],
        &["TLATEST", "t"],
        &["TWAIT", "t", "TIMEOUT", "60000"],
    ] {
        let e = t.run(req).await;
        assert_eq!(code(&e), "NOTOPIC", "{req:?}");
        assert!(text(&e).contains("TCREATE"), "says what to do: {e:?}");
    }
    assert_eq!(t.svc.store().topics(), Vec::<String>::new());
    assert_eq!(t.run(&["TCREATE", "t"]).await, Frame::Integer(1));
    assert_eq!(t.run(&["TPUB", "t", "x"]).await, Frame::Integer(1));
    assert_eq!(items(t.run(&["TGET", "t"]).await)[1], bulk("x"));
}

#[tokio::test]
async fn max_queues_makes_one_more_queue_full_whichever_way_it_is_created() {
    let mut t = Fixture::with_policy(Policy {
        auto_create: true,
        max_queues: 3,
    });
    t.run(&["QPUSH", "a", "x"]).await;
    t.run(&["QCREATE", "b"]).await;
    // A queue with a DLQ needs two: one left is not enough.
    let e = t.run(&["QCREATE", "c", "MAXRECEIVES", "1"]).await;
    assert_eq!(code(&e), "FULL");
    assert!(text(&e).contains("max_queues"), "{e:?}");
    assert!(text(&e).contains("limit is 3"), "names the limit: {e:?}");
    t.run(&["QPUSH", "c", "x"]).await;
    for req in [
        &["QPUSH", "d", "x"][..],
        &["QPUSHMANY", "d", "--", "x"],
        &["QCREATE", "d"],
        &["QCONFIG", "a", "MAXRECEIVES", "1"],
    ] {
        assert_eq!(code(&t.run(req).await), "FULL", "{req:?}");
    }
    assert_eq!(t.svc.store().queues(), vec!["a", "b", "c"]);
    // Existing queues take pushes, and QCREATE of an existing one is no creation.
    assert_eq!(t.run(&["QPUSH", "a", "y"]).await, bulk("3"));
    assert_eq!(t.run(&["QCREATE", "b"]).await, Frame::Integer(0));
    // Topics do not count.
    assert_eq!(t.run(&["TPUB", "news", "x"]).await, Frame::Integer(1));
    // Room made, room used.
    t.run(&["QDROP", "b"]).await;
    assert_eq!(t.run(&["QCREATE", "d"]).await, Frame::Integer(1));
}
