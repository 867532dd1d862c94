//! Work-queue operations end to end: what a producer and a worker rely on.

use std::collections::BTreeSet;
use std::time::Duration;

use spool_client::{Error, LeaseOptions, NackOptions, Receipt};

use crate::Fixture;

fn all(count: u32) -> LeaseOptions {
    LeaseOptions::default().count(count)
}

#[tokio::test]
async fn push_lease_ack_round_trip() {
    let f = Fixture::start().await;
    let c = f.client().await;
    let id = c.push("jobs", "hello").priority(7).await.expect("push");

    let leased = c.lease("jobs", all(10)).await.expect("lease");
    assert_eq!(leased.len(), 1);
    let m = &leased[0];
    assert_eq!(m.id, id);
    assert_eq!(&m.payload[..], b"hello");
    assert_eq!(m.priority, 7);
    assert_eq!(m.receive_count, 1);
    assert!(m.first_received_at_ms.is_some());
    assert!(
        m.visible_at_ms > m.enqueued_at_ms,
        "leased: visible again later"
    );
    let receipt = m.receipt.expect("a lease has a receipt");
    assert_eq!(receipt.id, id);
    assert_eq!(receipt.to_string(), format!("{id}:{}", receipt.generation));

    // Leased: invisible to others.
    assert!(c.lease("jobs", all(10)).await.expect("lease").is_empty());
    c.ack("jobs", receipt).await.expect("ack");
    let stats = c.stats("jobs").await.expect("stats");
    assert_eq!(stats.total_pushed, 1);
    assert_eq!(stats.total_acked, 1);
    assert_eq!(stats.messages, 0);
    assert!(c.peek("jobs", 10).await.expect("peek").is_empty());
    assert_eq!(c.list(None).await.expect("list"), vec!["jobs".to_owned()]);
    f.server.shutdown().await;
}

#[tokio::test]
async fn an_empty_payload_and_binary_bytes_round_trip() {
    let f = Fixture::start().await;
    let c = f.client().await;
    let binary: Vec<u8> = (0..=255).collect();
    c.push("b", Vec::new()).await.expect("empty push");
    c.push("b", binary.clone()).await.expect("binary push");
    let got = c.pop("b", 10).await.expect("pop");
    assert_eq!(got.len(), 2);
    assert!(got[0].payload.is_empty());
    assert_eq!(got[1].payload[..], binary[..]);
    assert!(
        got.iter().all(|m| m.receipt.is_none()),
        "pop takes no lease"
    );
    f.server.shutdown().await;
}

#[tokio::test]
async fn higher_priority_is_served_first_then_push_order() {
    let f = Fixture::start().await;
    let c = f.client().await;
    let low = c.push_many("p", ["a", "b"]).await.expect("push_many");
    assert_eq!(low.len(), 2);
    assert!(low[0] < low[1]);
    let high = c.push("p", "urgent").priority(200).await.expect("push");
    let order: Vec<u64> = c
        .lease("p", all(10))
        .await
        .expect("lease")
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(order, vec![high, low[0], low[1]]);
    assert!(c
        .push_many("p", Vec::<Vec<u8>>::new())
        .await
        .expect("nothing")
        .is_empty());
    f.server.shutdown().await;
}

#[tokio::test]
async fn a_delayed_push_is_not_visible_yet() {
    let f = Fixture::start().await;
    let c = f.client().await;
    let id = c
        .push("d", "later")
        .delay(Duration::from_secs(3600))
        .ttl(Duration::from_secs(7200))
        .await
        .expect("push");
    assert!(c.lease("d", all(1)).await.expect("lease").is_empty());
    assert_eq!(c.stats("d").await.expect("stats").delayed, 1);
    let m = c.peek_id("d", id).await.expect("peek by id");
    assert!(m.visible_at_ms >= m.enqueued_at_ms + 3_600_000);
    f.server.shutdown().await;
}

#[tokio::test]
async fn an_ack_after_nack_is_lease_lost() {
    let f = Fixture::start().await;
    let c = f.client().await;
    c.push("n", "x").await.expect("push");
    let first = c.lease("n", all(1)).await.expect("lease");
    let old = first[0].receipt.expect("receipt");
    c.nack("n", old, NackOptions::default())
        .await
        .expect("nack");
    let err = c.ack("n", old).await.expect_err("stale receipt");
    assert!(matches!(err, Error::LeaseLost(_)), "{err:?}");
    assert!(err.is_refusal());
    // Handed out again, counted twice, with a new receipt that works.
    let again = c.lease("n", all(1)).await.expect("lease");
    assert_eq!(again[0].receive_count, 2);
    let new = again[0].receipt.expect("receipt");
    assert_ne!(new, old);
    c.ack("n", new).await.expect("ack");
    f.server.shutdown().await;
}

#[tokio::test]
async fn a_second_ack_is_not_found() {
    let f = Fixture::start().await;
    let c = f.client().await;
    c.push("a", "x").await.expect("push");
    let r = c.lease("a", all(1)).await.expect("lease")[0]
        .receipt
        .expect("receipt");
    c.ack("a", r).await.expect("first ack");
    let err = c.ack("a", r).await.expect_err("second ack");
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    let err = c.peek_id("a", r.id).await.expect_err("gone");
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    f.server.shutdown().await;
}

#[tokio::test]
async fn ack_many_answers_per_receipt() {
    let f = Fixture::start().await;
    let c = f.client().await;
    c.push_many("m", ["1", "2", "3"]).await.expect("push");
    let receipts: Vec<Receipt> = c
        .lease("m", all(3))
        .await
        .expect("lease")
        .iter()
        .filter_map(|m| m.receipt)
        .collect();
    assert_eq!(receipts.len(), 3);
    c.ack("m", receipts[0]).await.expect("ack");
    let results = c.ack_many("m", &receipts).await.expect("ack_many");
    assert_eq!(results.len(), 3);
    assert!(matches!(results[0], Err(Error::NotFound(_))), "{results:?}");
    assert!(results[1].is_ok());
    assert!(results[2].is_ok());
    assert!(c.ack_many("m", &[]).await.expect("nothing").is_empty());
    f.server.shutdown().await;
}

#[tokio::test]
async fn a_payload_over_the_limit_is_too_big_and_the_connection_goes_on() {
    let f = Fixture::start_with(|c| c.limits.bulk_max = 1024).await;
    let c = f.client().await;
    c.push("t", vec![b'x'; 1024]).await.expect("at the limit");
    let err = c.push("t", vec![b'x'; 1025]).await.expect_err("over");
    assert!(
        matches!(&err, Error::TooBig(m) if m.contains("1024")),
        "{err:?}"
    );
    c.ping().await.expect("still connected");
    assert_eq!(c.stats("t").await.expect("stats").messages, 1);
    f.server.shutdown().await;
}

#[tokio::test]
async fn bad_names_and_arguments_are_refused_with_their_codes() {
    let f = Fixture::start().await;
    let c = f.client().await;
    for name in ["", "has space", "-dash-first", &"x".repeat(129)] {
        let err = c.push(name, "x").await.expect_err(name);
        assert!(matches!(err, Error::BadName(_)), "{name:?}: {err:?}");
    }
    let err = c.lease("q", all(0)).await.expect_err("count 0");
    assert!(
        matches!(&err, Error::BadArg(m) if m.contains("COUNT")),
        "{err:?}"
    );
    let err = c
        .lease("q", all(1).visibility(Duration::from_micros(10)))
        .await
        .expect_err("a visibility under 1 ms");
    assert!(matches!(err, Error::BadArg(_)), "{err:?}");
    let err = c.stats("never-pushed").await.expect_err("no queue");
    assert!(matches!(err, Error::NoQueue(_)), "{err:?}");
    // A worker may start before its producer: an unknown queue leases nothing.
    assert!(c
        .lease("never-pushed", all(1))
        .await
        .expect("lease")
        .is_empty());
    f.server.shutdown().await;
}

#[tokio::test]
async fn concurrent_pushes_over_one_client_are_all_stored() {
    const TASKS: usize = 32;
    const EACH: usize = 50;
    let f = Fixture::start().await;
    let c = f.client().await;
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let c = c.clone();
        tasks.spawn(async move {
            let mut ids = Vec::new();
            for i in 0..EACH {
                ids.push(c.push("many", format!("{t}-{i}")).await.expect("push"));
            }
            ids
        });
    }
    let mut acked = BTreeSet::new();
    while let Some(ids) = tasks.join_next().await {
        for id in ids.expect("task") {
            assert!(acked.insert(id), "id {id} returned twice");
        }
    }
    assert_eq!(acked.len(), TASKS * EACH);
    let mut stored = BTreeSet::new();
    let mut payloads = BTreeSet::new();
    loop {
        let batch = c.pop("many", 1000).await.expect("pop");
        if batch.is_empty() {
            break;
        }
        for m in batch {
            stored.insert(m.id);
            payloads.insert(m.payload);
        }
    }
    assert_eq!(
        stored, acked,
        "every acknowledged push is there, nothing else"
    );
    assert_eq!(payloads.len(), TASKS * EACH);
    f.server.shutdown().await;
}

#[tokio::test]
async fn a_waiting_lease_does_not_hold_up_other_requests() {
    let f = Fixture::start().await;
    let c = f.client().await;
    let waiter = {
        let c = c.clone();
        tokio::spawn(async move {
            c.lease("w", all(1).wait(Duration::from_secs(60)))
                .await
                .expect("lease")
        })
    };
    // These go over the shared connection while the lease waits on its own.
    for i in 0..20 {
        c.push("other", format!("{i}")).await.expect("push");
    }
    assert_eq!(c.stats("other").await.expect("stats").messages, 20);
    assert!(!waiter.is_finished(), "nothing was pushed to w yet");
    let id = c.push("w", "wake").await.expect("push");
    let got = waiter.await.expect("task");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, id);
    f.server.shutdown().await;
}
