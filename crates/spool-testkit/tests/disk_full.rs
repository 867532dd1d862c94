//! The free-space reserve (`Options::min_free_bytes`) on the simulated file system with a
//! space limit: a push that would eat into the reserve fails with `Error::DiskFull` before
//! anything is written, the store stays usable (no poison), what was acknowledged is all
//! there, acks still find room, and pushes work again once consuming freed space.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use spool_engine::{Error, Maintenance, ManualClock, Options, Push, Store};
use spool_testkit::SimVfs;

const DIR: &str = "/d/store";
const LIMIT: u64 = 6 << 20;
const RESERVE: u64 = 1 << 20;

fn fresh() -> SimVfs {
    let vfs = SimVfs::new();
    vfs.create_dir_all_durable(std::path::Path::new("/d"));
    vfs
}

/// The store's clock: the free space is probed again once 200 ms of it passed.
fn open(vfs: &SimVfs, clock: &ManualClock, segment_bytes: u64) -> Store {
    Store::open_with_vfs(
        Arc::new(vfs.clone()),
        DIR,
        Options {
            clock: Arc::new(clock.clone()),
            segment_bytes,
            checkpoint_bytes: 512 << 10,
            min_free_bytes: RESERVE,
            maintenance: Maintenance::Manual,
            // The space accounting of these tests counts the log alone.
            segment_prep: spool_engine::SegmentPrep::Off,
            ..Options::default()
        },
    )
    .expect("open")
}

fn batch(from: usize) -> Vec<Push> {
    (from..from + 50)
        .map(|i| Push::new(Bytes::from(format!("{i:08}-{}", "x".repeat(1000)))))
        .collect()
}

/// Pushes batches until one is refused; returns how many messages were acknowledged and the
/// refusal.
fn fill(s: &Store, from: usize) -> (usize, Error) {
    let mut n = from;
    loop {
        match s.push_batch("q", batch(n)) {
            Ok(ids) => n += ids.len(),
            Err(e) => return (n - from, e),
        }
        assert!(n - from < 100_000, "never refused: is the reserve checked?");
    }
}

#[test]
fn a_full_disk_refuses_pushes_cleanly_and_consuming_makes_room_again() {
    full_then_consumed(256 << 10);
}

/// A disk smaller than one segment (the default 64 MiB): the refusal seals the active segment
/// early, so that once its messages are consumed it can be deleted.
#[test]
fn a_disk_smaller_than_a_segment_gets_its_space_back_too() {
    full_then_consumed(Options::default().segment_bytes);
}

fn full_then_consumed(segment_bytes: u64) {
    let vfs = fresh();
    vfs.set_space_limit(LIMIT);
    let clock = ManualClock::new(1_000_000);
    let s = open(&vfs, &clock, segment_bytes);
    let (stored, err) = fill(&s, 0);
    assert!(stored > 1000, "{stored} stored before the refusal");
    let Error::DiskFull { free, reserve, .. } = &err else {
        panic!("expected DiskFull, got {err:?}");
    };
    assert_eq!(*reserve, RESERVE);
    assert!(*free < RESERVE + 60_000, "{free}");
    let text = err.to_string();
    assert!(
        text.contains("min_free_bytes") && text.contains("free"),
        "{text}"
    );
    // Refused again, still cleanly: the store is not poisoned, and nothing hit ENOSPC.
    assert!(matches!(
        s.push_batch("q", batch(999_000)),
        Err(Error::DiskFull { .. })
    ));
    assert_eq!(s.stats("q").unwrap().messages, stored as u64);

    // Acks still find room (they are what frees space), and everything acknowledged is
    // there, in order.
    let mut seen = 0;
    loop {
        let got = s.lease("q", 500, Some(Duration::from_secs(60))).unwrap();
        if got.is_empty() {
            break;
        }
        for m in &got {
            assert!(m.payload.starts_with(format!("{seen:08}-").as_bytes()));
            seen += 1;
        }
        let receipts: Vec<_> = got.iter().filter_map(|m| m.receipt).collect();
        for r in s.ack_batch("q", &receipts).unwrap() {
            r.unwrap();
        }
    }
    assert_eq!(seen, stored);

    // Housekeeping deletes the consumed segments; the next probe sees the space.
    s.maintain().unwrap();
    s.checkpoint().unwrap();
    s.maintain().unwrap();
    clock.advance(250);
    let (again, err) = fill(&s, 1_000_000);
    assert!(again > 1000, "{again} stored after consuming");
    assert!(matches!(err, Error::DiskFull { .. }), "{err:?}");
    s.close().unwrap();

    // A reopen finds exactly what was acknowledged since.
    vfs.clear_space_limit();
    let s = open(&vfs, &clock, segment_bytes);
    assert_eq!(s.stats("q").unwrap().messages, again as u64);
}

#[test]
fn a_reserve_of_zero_leaves_the_disk_to_enospc() {
    let vfs = fresh();
    vfs.set_space_limit(LIMIT);
    let s = Store::open_with_vfs(
        Arc::new(vfs.clone()),
        DIR,
        Options {
            min_free_bytes: 0,
            maintenance: Maintenance::Manual,
            // The space accounting of these tests counts the log alone.
            segment_prep: spool_engine::SegmentPrep::Off,
            ..Options::default()
        },
    )
    .expect("open");
    let (_, err) = fill(&s, 0);
    // The write itself fails: the old behaviour, the store poisoned until reopened.
    assert!(!matches!(err, Error::DiskFull { .. }), "{err:?}");
    assert!(matches!(
        s.push_batch("q", batch(0)),
        Err(Error::Poisoned { .. })
    ));
}
