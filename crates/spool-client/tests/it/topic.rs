//! Queue management, `QPOP ... WAIT` and topics, against the real server (sections 8.3, 8.4
//! of the queue-semantics research).

use std::time::Duration;

use spool_client::{Error, LeaseOptions, Overflow, QueueConfig, TopicConfig};

use crate::Fixture;

#[tokio::test]
async fn queue_management_round_trip() {
    let f = Fixture::start().await;
    let c = f.client().await;
    let config = QueueConfig {
        visibility: Some(Duration::from_secs(60)),
        max_receives: Some(2),
        ..QueueConfig::new("managed")
    };
    assert!(c.create_queue(&config).await.expect("create"));
    assert!(!c.create_queue(&config).await.expect("same config again"));
    let other = QueueConfig {
        visibility: Some(Duration::from_secs(5)),
        overflow: Some(Overflow::Reject),
        ..QueueConfig::new("managed")
    };
    let err = c
        .create_queue(&other)
        .await
        .expect_err("conflicting config");
    assert!(matches!(err, Error::Exists(_)), "{err:?}");
    c.configure(&other).await.expect("configure");
    let now = c.queue_config("managed").await.expect("config");
    assert_eq!(now.visibility, Some(Duration::from_secs(5)));
    assert_eq!(now.max_receives, Some(2));
    assert_eq!(now.dlq.as_deref(), Some("managed.dlq"));
    let stats = c.stats("managed").await.expect("stats");
    assert_eq!(stats.config, now, "QSTATS reports the same config");

    c.push("managed", "a").await.expect("push");
    let m = c
        .lease("managed", LeaseOptions::default())
        .await
        .expect("lease")
        .pop()
        .expect("a message");
    let r = m.receipt.expect("receipt");
    let until = c
        .extend("managed", r, Duration::from_secs(600))
        .await
        .expect("extend");
    assert!(until > m.visible_at_ms);
    let dead_id = c
        .dead("managed", r, Some("cannot parse"))
        .await
        .expect("dead");
    assert_eq!(
        &c.peek_id("managed.dlq", dead_id)
            .await
            .expect("in the DLQ")
            .payload[..],
        b"a"
    );
    assert_eq!(c.redrive("managed.dlq", None).await.expect("redrive"), 1);
    assert_eq!(c.purge("managed").await.expect("purge"), 1);
    assert!(c.drop_queue("managed").await.expect("drop"));
    assert!(!c.drop_queue("managed").await.expect("drop again"));
    let err = c.queue_config("managed").await.expect_err("dropped");
    assert!(matches!(err, Error::NoQueue(_)), "{err:?}");

    c.push("plain", "b").await.expect("push");
    let r = c
        .lease("plain", LeaseOptions::default())
        .await
        .expect("lease")[0]
        .receipt
        .expect("receipt");
    let err = c.dead("plain", r, None).await.expect_err("no DLQ");
    assert!(matches!(err, Error::NoDlq(_)), "{err:?}");
    f.server.shutdown().await;
}

#[tokio::test]
async fn a_waiting_pop_takes_the_next_push() {
    let f = Fixture::start().await;
    let c = f.client().await;
    let waiter = {
        let c = c.clone();
        tokio::spawn(async move { c.pop_wait("pw", 1, Duration::from_secs(60)).await })
    };
    let id = c.push("pw", "x").await.expect("push");
    let got = waiter.await.expect("task").expect("pop");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, id);
    assert!(got[0].receipt.is_none());
    f.server.shutdown().await;
}

#[tokio::test]
async fn topics_round_trip() {
    let f = Fixture::start().await;
    let c = f.client().await;
    assert!(c
        .create_topic(&TopicConfig::new("news"))
        .await
        .expect("create"));
    c.publish("news", "before").await.expect("publish");
    let cursor = c.subscribe("news").await.expect("subscribe");
    assert!(c.next("news", cursor).await.expect("next").is_none());
    let s1 = c.publish("news", "one").await.expect("publish");
    let s2 = c.publish("news", "two").await.expect("publish");
    assert!(s2 > s1);
    let m = c.next("news", cursor).await.expect("next").expect("one");
    assert_eq!((m.seq, &m.payload[..]), (s1, &b"one"[..]));
    let m = c
        .next("news", m.next_cursor)
        .await
        .expect("next")
        .expect("two");
    assert_eq!(m.seq, s2);
    let latest = c
        .latest("news", cursor)
        .await
        .expect("latest")
        .expect("two");
    assert_eq!(latest.seq, s2);
    assert_eq!(latest.skipped, 1);

    let waiter = {
        let c = c.clone();
        let from = latest.next_cursor;
        tokio::spawn(async move { c.wait("news", from, Duration::from_secs(60)).await })
    };
    let s3 = c.publish("news", "three").await.expect("publish");
    let got = waiter.await.expect("task").expect("wait").expect("three");
    assert_eq!(got.seq, s3);

    let stats = c.topic_stats("news").await.expect("stats");
    assert_eq!(stats.last_seq, s3);
    assert_eq!(stats.total_published, 4);
    let changed = TopicConfig {
        ttl: Some(Duration::from_secs(60)),
        ..TopicConfig::new("news")
    };
    c.configure_topic(&changed).await.expect("configure");
    let config = c.topic_config("news").await.expect("config");
    assert_eq!(config.ttl, Some(Duration::from_secs(60)));
    assert_eq!(
        c.topic_stats("news").await.expect("stats").config,
        config,
        "TSTATS reports the same config"
    );
    assert_eq!(
        c.topics(Some("n*")).await.expect("list"),
        vec!["news".to_owned()]
    );
    assert!(c.drop_topic("news").await.expect("drop"));
    let err = c.topic_stats("news").await.expect_err("no topic");
    assert!(matches!(err, Error::NoTopic(_)), "{err:?}");
    f.server.shutdown().await;
}
