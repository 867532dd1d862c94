use std::time::Duration;

use spool_engine::{Push, QueueConfig, Store};

use crate::Env;

#[test]
fn everything_survives_a_reopen() {
    let env = Env::new();
    let (a, b, c);
    {
        let s = env.open();
        s.create_queue(
            "q",
            QueueConfig {
                max_receives: 3,
                ..QueueConfig::default()
            },
        )
        .unwrap();
        a = s
            .push(
                "q",
                Push::new("a").priority(2).subject("x/y").header("k", "v"),
            )
            .unwrap();
        b = s.push("q", Push::new("b")).unwrap();
        c = s.push("q", Push::new("c")).unwrap();
        let m = s.lease("q", 2, None).unwrap();
        s.ack("q", m[1].receipt.unwrap()).unwrap(); // acks b
        s.publish("t", "p").unwrap();
        drop(s);
    }
    let s = env.open();
    let report = s.recovery_report().clone();
    assert_eq!(report.leases_released, 1);
    assert!(report.torn_tail.is_none());
    let msgs = s.messages("q").unwrap();
    assert_eq!(msgs.iter().map(|m| m.id).collect::<Vec<_>>(), vec![a, c]);
    assert_eq!(msgs[0].receive_count, 1, "receive count survives");
    assert_eq!(msgs[0].subject.as_deref(), Some("x/y"));
    assert_eq!(msgs[0].headers[0].0, "k");
    assert_eq!(s.queue_config("q").unwrap().max_receives, 3);
    assert_eq!(s.stats("q").unwrap().counters.acked, 1);
    let _ = b;
    let next = s.push("q", Push::new("d")).unwrap();
    assert!(next > c, "ids continue after a restart");
    assert_eq!(s.topic_stats("t").unwrap().last_seq, 1);
    // The lease open at the "crash" is visible again.
    let m = s.lease("q", 1, Some(Duration::from_secs(1))).unwrap();
    assert_eq!(m[0].id, a);
    assert_eq!(m[0].receive_count, 2);
}

fn many_segments(checkpoint_bytes: u64) -> (Store, Vec<u64>) {
    let env = Env::new();
    let mut opts = env.options();
    opts.segment_bytes = 4096;
    opts.checkpoint_bytes = checkpoint_bytes;
    let ids: Vec<u64>;
    {
        let s = env.open_with(opts.clone());
        let mut v = Vec::new();
        for i in 0..500 {
            v.push(s.push("q", Push::new(format!("message {i}"))).unwrap());
        }
        ids = v;
        for m in s.lease("q", 250, None).unwrap() {
            s.ack("q", m.receipt.unwrap()).unwrap();
        }
    }
    (env.open_with(opts), ids)
}

#[test]
fn many_segments_roll_and_replay() {
    let (s, ids) = many_segments(0);
    assert!(s.recovery_report().segments > 10);
    assert_eq!(s.recovery_report().checkpoint, None);
    let left: Vec<u64> = s.messages("q").unwrap().iter().map(|m| m.id).collect();
    assert_eq!(left, ids[250..]);
}

#[test]
fn a_clean_close_leaves_a_checkpoint_and_the_next_open_replays_only_the_last_segment() {
    let (s, ids) = many_segments(32 << 20);
    let r = s.recovery_report();
    assert!(r.checkpoint.is_some(), "{r:?}");
    assert!(r.checkpoint_problems.is_empty(), "{r:?}");
    assert_eq!(
        r.segments, 1,
        "only the segment the checkpoint ends in: {r:?}"
    );
    let left: Vec<u64> = s.messages("q").unwrap().iter().map(|m| m.id).collect();
    assert_eq!(left, ids[250..]);
    // And it works on: lease the rest in order.
    let got: Vec<u64> = s
        .lease("q", 1000, None)
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(got, ids[250..]);
}

#[test]
fn a_segment_numbered_beyond_the_maximum_is_damage_and_skip_keeps_the_store_usable() {
    use spool_engine::frame::segment_file_name;
    use spool_engine::vfs::Vfs;
    use spool_engine::{Error, RecoveryPolicy};
    use std::path::Path;

    let env = Env::new();
    let mut opts = env.options();
    opts.segment_bytes = 4096;
    {
        let s = env.open_with(opts.clone());
        for i in 0..200 {
            s.push("q", Push::new(format!("m{i}"))).unwrap();
        }
    }
    let log = Path::new("/s/log");
    let last = *env
        .vfs
        .read_dir(log)
        .unwrap()
        .iter()
        .filter_map(|n| spool_engine::frame::parse_segment_file_name(n))
        .collect::<Vec<_>>()
        .last()
        .unwrap();
    env.vfs
        .rename(
            &log.join(segment_file_name(last)),
            &log.join(segment_file_name(u64::MAX)),
        )
        .unwrap();
    assert!(matches!(
        Store::open_with_vfs(env.vfs.clone(), "/s", opts.clone()),
        Err(Error::Corrupt { .. })
    ));
    opts.recovery = RecoveryPolicy::Skip;
    for round in 0..3 {
        let s = Store::open_with_vfs(env.vfs.clone(), "/s", opts.clone())
            .unwrap_or_else(|e| panic!("skip open {round}: {e}"));
        assert!(!s.recovery_report().damaged.is_empty());
        s.push("q", Push::new(format!("after {round}"))).unwrap();
    }
}
