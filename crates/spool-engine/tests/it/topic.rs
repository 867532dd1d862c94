use std::time::Duration;

use spool_engine::{CursorStart, TopicConfig};

use crate::Env;

#[test]
fn a_subscriber_sees_only_what_is_published_after_it_subscribed() {
    let env = Env::new();
    let s = env.open();
    s.publish("t", "before").unwrap();
    let mut c = s.subscribe("t").unwrap();
    assert!(s.topic_next(&mut c).unwrap().is_none());
    let seq = s.publish("t", "after").unwrap();
    let m = s.topic_next(&mut c).unwrap().unwrap();
    assert_eq!(m.seq, seq);
    assert_eq!(m.payload, "after");
    assert_eq!(m.skipped, 0);
    assert!(s.topic_next(&mut c).unwrap().is_none());
}

#[test]
fn latest_skips_and_counts() {
    let env = Env::new();
    let s = env.open();
    let mut c = s.subscribe("t").unwrap();
    for i in 0..5 {
        s.publish("t", format!("m{i}")).unwrap();
    }
    let m = s.topic_latest(&mut c).unwrap().unwrap();
    assert_eq!(m.payload, "m4");
    assert_eq!(m.skipped, 4);
    assert!(s.topic_next(&mut c).unwrap().is_none());
}

#[test]
fn retention_by_age_reports_expired_unseen() {
    let env = Env::new();
    let s = env.open();
    let mut c = s.subscribe("t").unwrap();
    s.publish("t", "old").unwrap();
    env.clock.advance(600_000);
    s.publish("t", "new").unwrap();
    let m = s.topic_next(&mut c).unwrap().unwrap();
    assert_eq!(m.payload, "new");
    assert_eq!(m.skipped, 1);
}

#[test]
fn retention_by_count() {
    let env = Env::new();
    let s = env.open();
    s.create_topic(
        "t",
        TopicConfig {
            max_messages: 2,
            ..TopicConfig::default()
        },
    )
    .unwrap();
    let mut c = s.subscribe("t").unwrap();
    for i in 0..4 {
        s.publish("t", format!("m{i}")).unwrap();
    }
    let m = s.topic_next(&mut c).unwrap().unwrap();
    assert_eq!(m.payload, "m2");
    assert_eq!(m.skipped, 2);
    assert_eq!(s.topic_stats("t").unwrap().retained, 2);
}

#[test]
fn named_cursors_survive_a_restart() {
    let env = Env::new();
    {
        let s = env.open();
        s.create_topic("t", TopicConfig::default()).unwrap();
        let mut c = s.durable_cursor("t", "r1", CursorStart::Now).unwrap();
        s.publish("t", "a").unwrap();
        s.publish("t", "b").unwrap();
        assert_eq!(s.topic_next(&mut c).unwrap().unwrap().payload, "a");
        s.commit_cursor(&c).unwrap();
        s.close().unwrap();
    }
    let s = env.open();
    let mut c = s.durable_cursor("t", "r1", CursorStart::Now).unwrap();
    assert_eq!(s.topic_next(&mut c).unwrap().unwrap().payload, "b");
}

#[test]
fn wait_is_woken_by_publish_even_before_the_topic_exists() {
    let tmp = tempfile::tempdir().unwrap();
    let s =
        spool_engine::Store::open(tmp.path().join("s"), spool_engine::Options::default()).unwrap();
    let mut c = s.subscribe("t").unwrap();
    let s2 = s.clone();
    let th = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        s2.publish("t", "hello").unwrap();
    });
    let m = s
        .topic_wait(&mut c, Duration::from_secs(30))
        .unwrap()
        .unwrap();
    assert_eq!(m.payload, "hello");
    th.join().unwrap();
    assert!(s
        .topic_wait(&mut c, Duration::from_millis(10))
        .unwrap()
        .is_none());
}
