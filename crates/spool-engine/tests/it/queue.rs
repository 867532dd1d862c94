use std::time::Duration;

use spool_engine::{Error, MessageState, Overflow, Push, QueueConfig, Receipt};

use crate::Env;

#[test]
fn push_lease_ack_round_trip() {
    let env = Env::new();
    let s = env.open();
    let id = s.push("jobs", Push::new("a")).unwrap();
    let got = s.lease("jobs", 10, None).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, id);
    assert_eq!(&got[0].payload[..], b"a");
    assert_eq!(got[0].receive_count, 1);
    let r = got[0].receipt.unwrap();
    assert!(
        s.lease("jobs", 10, None).unwrap().is_empty(),
        "leased message is hidden"
    );
    s.ack("jobs", r).unwrap();
    assert!(matches!(s.ack("jobs", r), Err(Error::NotFound { .. })));
    let st = s.stats("jobs").unwrap();
    assert_eq!(st.messages, 0);
    assert_eq!(st.counters.pushed, 1);
    assert_eq!(st.counters.acked, 1);
}

#[test]
fn priority_then_fifo() {
    let env = Env::new();
    let s = env.open();
    let a = s.push("q", Push::new("a").priority(1)).unwrap();
    let b = s.push("q", Push::new("b").priority(5)).unwrap();
    let c = s.push("q", Push::new("c").priority(1)).unwrap();
    let d = s.push("q", Push::new("d").priority(5)).unwrap();
    let ids: Vec<u64> = s
        .lease("q", 10, None)
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(ids, vec![b, d, a, c]);
}

#[test]
fn visibility_timeout_makes_a_lease_visible_again_with_its_count() {
    let env = Env::new();
    let s = env.open();
    s.push("q", Push::new("x")).unwrap();
    let first = s.lease("q", 1, Some(Duration::from_secs(10))).unwrap();
    env.clock.advance(9_999);
    assert!(s.lease("q", 1, None).unwrap().is_empty());
    env.clock.advance(1);
    let second = s.lease("q", 1, None).unwrap();
    assert_eq!(second[0].receive_count, 2);
    assert_eq!(second[0].first_received_at, first[0].first_received_at);
    // The first receipt is stale now.
    assert!(matches!(
        s.ack("q", first[0].receipt.unwrap()),
        Err(Error::LeaseLost { .. })
    ));
    s.ack("q", second[0].receipt.unwrap()).unwrap();
}

#[test]
fn ack_after_expiry_succeeds_when_nobody_leased_it_since() {
    let env = Env::new();
    let s = env.open();
    s.push("q", Push::new("x")).unwrap();
    let m = s.lease("q", 1, Some(Duration::from_secs(1))).unwrap();
    env.clock.advance(5_000);
    s.ack("q", m[0].receipt.unwrap()).unwrap();
    assert_eq!(s.stats("q").unwrap().messages, 0);
}

#[test]
fn nack_with_delay_and_new_priority() {
    let env = Env::new();
    let s = env.open();
    let a = s.push("q", Push::new("a")).unwrap();
    let b = s.push("q", Push::new("b")).unwrap();
    let m = s.lease("q", 1, None).unwrap();
    assert_eq!(m[0].id, a);
    s.nack("q", m[0].receipt.unwrap(), Duration::from_secs(5), Some(9))
        .unwrap();
    assert!(matches!(
        s.ack("q", m[0].receipt.unwrap()),
        Err(Error::LeaseLost { .. })
    ));
    let m = s.lease("q", 5, None).unwrap();
    assert_eq!(m.iter().map(|m| m.id).collect::<Vec<_>>(), vec![b]);
    env.clock.advance(5_000);
    let m = s.lease("q", 5, None).unwrap();
    assert_eq!(m[0].id, a);
    assert_eq!(m[0].priority, 9);
    assert_eq!(m[0].receive_count, 2);
}

#[test]
fn delay_and_ttl() {
    let env = Env::new();
    let s = env.open();
    s.push("q", Push::new("later").delay(Duration::from_secs(3)))
        .unwrap();
    s.push("q", Push::new("short").ttl(Duration::from_secs(1)))
        .unwrap();
    assert_eq!(s.stats("q").unwrap().delayed, 1);
    env.clock.advance(1_000);
    assert!(
        s.lease("q", 10, None).unwrap().is_empty(),
        "expired one is dropped"
    );
    assert_eq!(s.stats("q").unwrap().counters.expired, 1);
    env.clock.advance(2_000);
    let m = s.lease("q", 10, None).unwrap();
    assert_eq!(&m[0].payload[..], b"later");
}

#[test]
fn max_receives_moves_to_the_dead_letter_queue_and_redrive_brings_it_back() {
    let env = Env::new();
    let s = env.open();
    s.create_queue(
        "q",
        QueueConfig {
            max_receives: 2,
            ..QueueConfig::default()
        },
    )
    .unwrap();
    assert!(s.queues().contains(&"q.dlq".to_string()));
    let id = s.push("q", Push::new("poison")).unwrap();
    for _ in 0..2 {
        let m = s.lease("q", 1, Some(Duration::from_secs(1))).unwrap();
        assert_eq!(m.len(), 1);
        env.clock.advance(1_000);
    }
    assert!(s.lease("q", 1, None).unwrap().is_empty());
    let dead = s.messages("q.dlq").unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].receive_count, 2);
    assert_eq!(dead[0].dead_letter_of, Some(("q".to_string(), id)));
    assert_eq!(s.stats("q").unwrap().dead, 1);
    assert_eq!(s.redrive("q.dlq", 10).unwrap(), 1);
    let m = s.lease("q", 1, None).unwrap();
    assert_eq!(m[0].receive_count, 1);
    assert_eq!(&m[0].payload[..], b"poison");
}

#[test]
fn a_name_too_long_for_its_dead_letter_queue_is_refused() {
    let env = Env::new();
    let s = env.open();
    let cfg = QueueConfig {
        max_receives: 2,
        ..QueueConfig::default()
    };
    let long = "q".repeat(125);
    let e = s.create_queue(&long, cfg.clone()).unwrap_err();
    assert!(matches!(e, Error::InvalidName { .. }), "{e}");
    assert!(e.to_string().contains("124"), "{e}");
    assert!(s.queues().is_empty(), "nothing was created");
    // 124 characters leave room for ".dlq"; a named dead-letter queue needs no room at all.
    assert!(s.create_queue(&"q".repeat(124), cfg.clone()).unwrap());
    let named = QueueConfig {
        dead_letter_queue: Some("dead".into()),
        ..cfg
    };
    assert!(s.create_queue(&"r".repeat(128), named).unwrap());
}

#[test]
fn dead_needs_a_dead_letter_queue() {
    let env = Env::new();
    let s = env.open();
    s.push("q", Push::new("x")).unwrap();
    let m = s.lease("q", 1, None).unwrap();
    assert!(matches!(
        s.dead("q", m[0].receipt.unwrap()),
        Err(Error::NoDeadLetterQueue { .. })
    ));
    let mut cfg = s.queue_config("q").unwrap();
    cfg.dead_letter_queue = Some("graveyard".into());
    s.configure_queue("q", cfg).unwrap();
    let new_id = s.dead("q", m[0].receipt.unwrap()).unwrap();
    assert_eq!(s.get("graveyard", new_id).unwrap().payload, "x");
}

#[test]
fn capacity_reject_and_evict_lowest_priority() {
    let env = Env::new();
    let s = env.open();
    s.create_queue(
        "r",
        QueueConfig {
            max_messages: 2,
            ..QueueConfig::default()
        },
    )
    .unwrap();
    s.push("r", Push::new("1")).unwrap();
    s.push("r", Push::new("2")).unwrap();
    assert!(matches!(
        s.push("r", Push::new("3")),
        Err(Error::Full { .. })
    ));
    assert_eq!(s.stats("r").unwrap().counters.rejected_full, 1);

    s.create_queue(
        "e",
        QueueConfig {
            max_messages: 2,
            overflow: Overflow::EvictLowestPriority,
            ..QueueConfig::default()
        },
    )
    .unwrap();
    let low = s.push("e", Push::new("low").priority(1)).unwrap();
    let high = s.push("e", Push::new("high").priority(9)).unwrap();
    let mid = s.push("e", Push::new("mid").priority(5)).unwrap();
    let ids: Vec<u64> = s.messages("e").unwrap().iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![high, mid]);
    assert!(!ids.contains(&low));
    assert_eq!(s.stats("e").unwrap().counters.evicted, 1);
    // Never evicts a higher priority to admit a lower one.
    assert!(matches!(
        s.push("e", Push::new("lowest").priority(0)),
        Err(Error::Full { .. })
    ));
}

#[test]
fn pop_peek_get_delete_purge() {
    let env = Env::new();
    let s = env.open();
    let ids = s
        .push_batch("q", vec![Push::new("a"), Push::new("b"), Push::new("c")])
        .unwrap();
    let peeked = s.peek("q", 2).unwrap();
    assert_eq!(peeked.iter().map(|m| m.id).collect::<Vec<_>>(), ids[..2]);
    assert_eq!(s.peek("q", 10).unwrap().len(), 3, "peek changes nothing");
    let popped = s.pop("q", 1).unwrap();
    assert_eq!(popped[0].id, ids[0]);
    assert_eq!(popped[0].receive_count, 1);
    assert!(popped[0].receipt.is_none());
    assert_eq!(s.get("q", ids[1]).unwrap().state, MessageState::Ready);
    s.delete("q", ids[1]).unwrap();
    assert!(matches!(s.get("q", ids[1]), Err(Error::NotFound { .. })));
    assert!(matches!(s.delete("q", ids[1]), Err(Error::NotFound { .. })));
    assert_eq!(s.purge("q").unwrap(), 1);
    assert_eq!(s.stats("q").unwrap().messages, 0);
    let after = s.push("q", Push::new("d")).unwrap();
    assert!(after > ids[2], "ids are never reused");
    assert_eq!(s.lease("q", 5, None).unwrap()[0].id, after);
}

#[test]
fn bad_input_gets_typed_errors() {
    let env = Env::new();
    let s = env.open();
    assert!(matches!(
        s.push("bad name", Push::new("x")),
        Err(Error::InvalidName { .. })
    ));
    assert!(matches!(s.push_batch("q", vec![]), Err(Error::EmptyBatch)));
    assert!(matches!(
        s.push("q", Push::new(vec![0u8; (1 << 20) + 1])),
        Err(Error::PayloadTooLarge { .. })
    ));
    s.push("q", Push::new(vec![0u8; 1 << 20])).unwrap();
    assert!(matches!(
        s.lease("nope", 1, None),
        Err(Error::UnknownQueue { .. })
    ));
    assert!(matches!(
        s.lease("q", 0, None),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        s.ack(
            "q",
            Receipt {
                id: 999,
                generation: 1
            }
        ),
        Err(Error::NotFound { .. })
    ));
    let e = s.push("bad name", Push::new("x")).unwrap_err().to_string();
    assert!(e.contains("names are"), "{e}");
}

#[test]
fn lease_wait_is_woken_by_a_push_from_another_thread() {
    let tmp = tempfile::tempdir().unwrap();
    let s =
        spool_engine::Store::open(tmp.path().join("s"), spool_engine::Options::default()).unwrap();
    s.create_queue("q", QueueConfig::default()).unwrap();
    let s2 = s.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        s2.push("q", Push::new("wake")).unwrap();
    });
    let started = std::time::Instant::now();
    let got = s.lease_wait("q", 1, None, Duration::from_secs(30)).unwrap();
    assert_eq!(&got[0].payload[..], b"wake");
    assert!(started.elapsed() < Duration::from_secs(30));
    t.join().unwrap();
    // Times out with nothing.
    let got = s
        .lease_wait("q", 1, None, Duration::from_millis(20))
        .unwrap();
    assert!(got.is_empty());
}

#[test]
fn lease_wait_is_woken_by_an_expiring_lease() {
    let tmp = tempfile::tempdir().unwrap();
    let s =
        spool_engine::Store::open(tmp.path().join("s"), spool_engine::Options::default()).unwrap();
    s.push("q", Push::new("x")).unwrap();
    s.lease("q", 1, Some(Duration::from_millis(100))).unwrap();
    let got = s.lease_wait("q", 1, None, Duration::from_secs(30)).unwrap();
    assert_eq!(got[0].receive_count, 2);
}

#[test]
fn a_second_opener_gets_a_clear_lock_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    let _s = spool_engine::Store::open(&dir, spool_engine::Options::default()).unwrap();
    let err = spool_engine::Store::open(&dir, spool_engine::Options::default()).unwrap_err();
    assert!(matches!(err, Error::Locked { pid: Some(p), .. } if p == std::process::id()));
    assert!(err
        .to_string()
        .contains(&format!("process {}", std::process::id())));
}

#[test]
fn async_push_completes_without_a_runtime() {
    let env = Env::new();
    let s = env.open();
    let fut = s.push_async("q", Push::new("a"));
    let ids = block_on(fut).unwrap();
    assert_eq!(s.get("q", ids[0]).unwrap().payload, "a");
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    struct ThreadWaker(std::thread::Thread);
    impl Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

#[test]
fn lease_wait_waits_for_a_queue_that_does_not_exist_yet() {
    let tmp = tempfile::tempdir().unwrap();
    let s =
        spool_engine::Store::open(tmp.path().join("s"), spool_engine::Options::default()).unwrap();
    let s2 = s.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        s2.push("later", Push::new("first")).unwrap();
    });
    let got = s
        .lease_wait("later", 1, None, Duration::from_secs(30))
        .unwrap();
    assert_eq!(&got[0].payload[..], b"first");
    t.join().unwrap();
    // Without auto_create, an unknown queue is an error at once.
    drop(s);
    let s = spool_engine::Store::open(
        tmp.path().join("s2"),
        spool_engine::Options {
            auto_create: false,
            ..spool_engine::Options::default()
        },
    )
    .unwrap();
    assert!(matches!(
        s.lease_wait("nope", 1, None, Duration::from_secs(30)),
        Err(Error::UnknownQueue { .. })
    ));
}

#[test]
fn lease_wait_is_woken_by_an_expiring_delay() {
    let tmp = tempfile::tempdir().unwrap();
    let s =
        spool_engine::Store::open(tmp.path().join("s"), spool_engine::Options::default()).unwrap();
    s.push("q", Push::new("later").delay(Duration::from_millis(100)))
        .unwrap();
    assert!(s.lease("q", 1, None).unwrap().is_empty(), "not visible yet");
    let got = s.lease_wait("q", 1, None, Duration::from_secs(30)).unwrap();
    assert_eq!(&got[0].payload[..], b"later");
}

#[test]
fn messages_page_walks_a_queue_in_id_order_in_pages() {
    let env = crate::Env::new();
    let s = env.open();
    for i in 0..100u32 {
        s.push("q", Push::new(format!("m{i}")).priority((i % 4) as u8))
            .unwrap();
    }
    // Some leased, one nacked with a delay, some acked: every state shows up.
    let got = s.lease("q", 10, None).unwrap();
    s.ack("q", got[0].receipt.unwrap()).unwrap();
    s.nack("q", got[1].receipt.unwrap(), Duration::from_secs(60), None)
        .unwrap();
    let all = s.messages("q").unwrap();
    assert_eq!(all.len(), 99);
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = s.messages_page("q", after, 7).unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 7);
        after = page.last().unwrap().id;
        paged.extend(page);
    }
    assert_eq!(paged, all);
}

/// Producers and consumers at once with the background maintenance sealing, indexing and
/// checkpointing: everything pushed is leased. (It once stranded messages: the maintenance
/// wrote a sealed segment's index while the writer was still finishing the segment, a reader
/// then checked the file against the segment's unfinished length and rebuilt a partial index.
/// The window is narrow, so this stresses it rather than catching it every time.)
#[test]
fn everything_pushed_is_leased_with_the_background_maintenance_racing_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3 {
        let path = dir.path().join(format!("s{round}"));
        let s = spool_engine::Store::open(
            &path,
            spool_engine::Options {
                segment_bytes: 64 << 10,
                ..spool_engine::Options::default()
            },
        )
        .unwrap();
        let n = 40_000;
        s.create_queue("q", QueueConfig::default()).unwrap();
        let producer = {
            let s = s.clone();
            std::thread::spawn(move || {
                for b in 0..n / 500 {
                    s.push_batch(
                        "q",
                        (0..500)
                            .map(|i| Push::new(format!("{b}-{i}-{}", "x".repeat(60))))
                            .collect(),
                    )
                    .unwrap();
                }
            })
        };
        let mut got = 0;
        let mut idle = 0;
        while got < n && idle < 2000 {
            let m = s.lease("q", 1000, Some(Duration::from_secs(600))).unwrap();
            if m.is_empty() {
                idle += 1;
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            idle = 0;
            let r: Vec<Receipt> = m.iter().map(|m| m.receipt.unwrap()).collect();
            got += r.len();
            s.ack_batch("q", &r).unwrap();
        }
        producer.join().unwrap();
        let st = s.stats("q").unwrap();
        assert_eq!((got, st.messages), (n, 0), "round {round}: {st:?}");
    }
}

#[test]
fn messages_held_in_memory_one_by_one_are_bounded_with_a_clear_error() {
    let env = crate::Env::new();
    let s = env.open();
    s.create_queue(
        "q",
        QueueConfig {
            max_in_flight: 3,
            ..QueueConfig::default()
        },
    )
    .unwrap();
    for i in 0..5 {
        s.push("q", Push::new(format!("m{i}"))).unwrap();
    }
    // A lease stops at the bound; the next one is refused with a clear error.
    let got = s.lease("q", 10, None).unwrap();
    assert_eq!(got.len(), 3);
    let e = s.lease("q", 1, None).unwrap_err();
    assert!(matches!(e, Error::InFlightLimit { limit: 3, .. }), "{e}");
    assert!(e.to_string().contains("max_in_flight"), "{e}");
    // A push with a delay would add one more: refused, nothing pushed.
    let e = s
        .push("q", Push::new("later").delay(Duration::from_secs(5)))
        .unwrap_err();
    assert!(matches!(e, Error::InFlightLimit { .. }), "{e}");
    assert_eq!(s.stats("q").unwrap().messages, 5);
    // A nacked message is already held: it can be leased again at the bound.
    s.nack("q", got[0].receipt.unwrap(), Duration::ZERO, None)
        .unwrap();
    assert_eq!(s.lease("q", 10, None).unwrap().len(), 1);
    // An ack frees a place.
    s.ack("q", got[1].receipt.unwrap()).unwrap();
    assert_eq!(s.lease("q", 10, None).unwrap().len(), 1);
}
