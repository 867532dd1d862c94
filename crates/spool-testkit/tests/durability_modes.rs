//! The documented loss windows of the durability modes, checked on the crash simulator:
//! `Sync` loses nothing acknowledged; `Interval(ms)` survives a process crash at once and a
//! power cut once the interval has passed; `None` survives a process crash, and a power cut
//! only after a clean close.

use std::sync::Arc;
use std::time::Duration;

use spool_engine::{Durability, Options, Push, Store};
use spool_testkit::{CrashModel, SimVfs};

fn open(vfs: &SimVfs, durability: Durability) -> Store {
    Store::open_with_vfs(
        Arc::new(vfs.clone()),
        "/d/store",
        Options {
            durability,
            maintenance: spool_engine::Maintenance::Manual,
            segment_prep: spool_engine::SegmentPrep::Off,
            ..Options::default()
        },
    )
    .expect("open")
}

fn fresh() -> SimVfs {
    let vfs = SimVfs::new();
    vfs.create_dir_all_durable(std::path::Path::new("/d"));
    vfs
}

/// Messages of queue "q" after reopening `image`.
fn survivors(image: &SimVfs) -> Vec<String> {
    let s = open(image, Durability::Sync);
    s.messages("q").map_or_else(
        |_| Vec::new(),
        |m| {
            m.iter()
                .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
                .collect()
        },
    )
}

#[test]
fn sync_survives_a_power_cut_that_drops_every_unsynced_write() {
    let vfs = fresh();
    let s = open(&vfs, Durability::Sync);
    s.push("q", Push::new("a")).unwrap();
    let image = vfs.crash_image_with(1, &CrashModel::lose_all_pending());
    assert_eq!(survivors(&image), vec!["a"]);
}

#[test]
fn interval_survives_a_process_crash_at_once_and_a_power_cut_after_the_interval() {
    let vfs = fresh();
    let s = open(&vfs, Durability::Interval(20));
    s.push("q", Push::new("a")).unwrap();
    // A process crash (the page cache survives) keeps what push returned for.
    let killed = vfs.crash_image_with(1, &CrashModel::process_kill());
    assert_eq!(survivors(&killed), vec!["a"]);
    // Once the interval has passed the writer syncs: a power cut keeps it too. (Waits for
    // that to happen, up to a generous bound; nothing here measures how fast.)
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut seed = 2;
    loop {
        let cut = vfs.crash_image_with(seed, &CrashModel::lose_all_pending());
        if survivors(&cut) == vec!["a"] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Interval(20) did not sync within 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
        seed += 1;
    }
}

#[test]
fn none_survives_a_process_crash_but_a_power_cut_only_after_close() {
    let vfs = fresh();
    let s = open(&vfs, Durability::None);
    s.push("q", Push::new("a")).unwrap();
    let killed = vfs.crash_image_with(1, &CrashModel::process_kill());
    assert_eq!(survivors(&killed), vec!["a"]);
    // The documented window: nothing is synced before close (or a segment roll).
    std::thread::sleep(Duration::from_millis(100));
    let cut = vfs.crash_image_with(2, &CrashModel::lose_all_pending());
    assert!(survivors(&cut).is_empty(), "None mode synced before close?");
    s.close().unwrap();
    let after_close = vfs.crash_image_with(3, &CrashModel::lose_all_pending());
    assert_eq!(survivors(&after_close), vec!["a"]);
}
