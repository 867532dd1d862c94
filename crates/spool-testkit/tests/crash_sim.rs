//! The seeded crash simulation (see `spool_testkit::crash`): thousands of seeds of a random
//! workload with a power loss, an I/O error, a failed fsync or a full disk injected, crashes
//! during recovery, and the invariant checker run on every recovered store.
//!
//! `SPOOL_CRASH_SEEDS` (default 2000) and `SPOOL_CRASH_SEED_START` (default 0) choose the
//! seeds; `SPOOL_CRASH_SEED=<n>` replays one seed; `SPOOL_CRASH_THREADS` sets the parallelism.

use spool_testkit::crash::{
    run_seed_with, run_seeds, Settings, DEFAULT_SEEDS, ENV_SEED, ENV_SEEDS, ENV_SEED_START,
    ENV_THREADS,
};

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
    )
}

#[test]
fn crash_simulation() {
    if let Some(seed) = env_u64(ENV_SEED) {
        match run_seed_with(seed, Settings::from_env()) {
            Ok(report) => println!("seed {seed} passed: {report:?}"),
            Err(failure) => panic!("{failure:#}"),
        }
        return;
    }
    let start = env_u64(ENV_SEED_START).unwrap_or(0);
    let count = env_u64(ENV_SEEDS).unwrap_or(DEFAULT_SEEDS);
    let threads = env_u64(ENV_THREADS).map_or_else(
        || std::thread::available_parallelism().map_or(2, std::num::NonZero::get),
        |t| t as usize,
    );
    let summary = run_seeds(start, count, threads, Settings::from_env(), &|done| {
        eprintln!("crash simulation: {done}/{count} seeds");
    });
    println!("crash simulation: {summary}");
    if !summary.failures.is_empty() {
        for f in &summary.failures {
            eprintln!("{f}\n");
        }
        panic!(
            "{} of {} seeds failed (first: {}); replay one with {ENV_SEED}=<seed>",
            summary.failed, summary.seeds, summary.failures[0].seed
        );
    }
}

mod fsyncgate_regressions {
    use std::path::Path;

    use spool_testkit::crash::{run_seed_with, Settings};

    fn strict_seed(seed: u64) {
        if let Err(failure) = run_seed_with(seed, Settings::strict()) {
            panic!("{failure:#}");
        }
    }

    /// The smallest seed of the random simulation that hits the failed-fsync bug (the fsync
    /// of the third step fails).
    #[test]
    fn seed_22_failed_fsync_then_reopen() {
        strict_seed(22);
    }

    /// Seeds of the random simulation that hit the failed-directory-fsync bug: 1669 while the
    /// store is created, 1365 as a segment rolls.
    #[test]
    fn seeds_1669_1365_failed_dir_sync_then_reopen() {
        strict_seed(1669);
        strict_seed(1365);
    }
    use std::sync::Arc;

    use spool_engine::{Options, Push, Store};
    use spool_testkit::{Fault, SimVfs};

    fn open(vfs: &SimVfs) -> spool_engine::Result<Store> {
        Store::open_with_vfs(Arc::new(vfs.clone()), "/d/store", Options::default())
    }

    fn open_small_segments(vfs: &SimVfs) -> spool_engine::Result<Store> {
        let options = Options {
            segment_bytes: 4096,
            maintenance: spool_engine::Maintenance::Manual,
            segment_prep: spool_engine::SegmentPrep::Inline,
            ..Options::default()
        };
        Store::open_with_vfs(Arc::new(vfs.clone()), "/d/store", options)
    }

    fn payloads(store: &Store, queue: &str) -> Vec<bytes::Bytes> {
        store
            .messages(queue)
            .expect("messages")
            .into_iter()
            .map(|m| m.payload)
            .collect()
    }

    /// When a segment rolls, the new segment's directory entry is made durable by an fsync of
    /// `log/`. If that fsync fails the store is poisoned, as it should be; but reopened on the
    /// same machine it appends to the new segment and never fsyncs `log/` again, so a power loss
    /// can take the segment's directory entry, and all the acknowledged work in it, away.
    /// (Recovery should fsync the directories it relies on before it appends.)
    #[test]
    fn power_loss_after_reopen_following_a_failed_dir_sync() {
        let big = vec![7u8; 3000];
        // Find the directory fsync of the roll that the third big push makes (a segment takes
        // frames until it has reached its size: the second push still goes into the first).
        let probe = SimVfs::new();
        probe.create_dir_all_durable(Path::new("/d"));
        let store = open_small_segments(&probe).expect("open");
        store.push("q", Push::new(big.clone())).expect("push 1");
        store.push("q", Push::new(big.clone())).expect("push 2");
        let (from, to) = (probe.op_count() + 1, {
            store.push("q", Push::new(big.clone())).expect("push 3");
            probe.op_count()
        });
        drop(store);
        let mut hit = false;
        for k in from..=to {
            let vfs = SimVfs::new();
            vfs.create_dir_all_durable(Path::new("/d"));
            vfs.fail_op(k, Fault::Eio);
            let store = open_small_segments(&vfs).expect("open");
            store.push("q", Push::new(big.clone())).expect("push 1");
            store.push("q", Push::new(big.clone())).expect("push 2");
            let Err(e) = store.push("q", Push::new(big.clone())) else {
                continue;
            };
            if !e.to_string().contains("sync directory") {
                continue;
            }
            hit = true;
            drop(store);
            let store = open_small_segments(&vfs).expect("reopen on the same machine");
            store.push("q", Push::new("acknowledged")).expect("push 4");
            drop(store);
            for seed in 0..20 {
                let image = vfs.crash_image(seed);
                let store = open_small_segments(&image)
                    .unwrap_or_else(|e| panic!("power-loss image {seed}: {e}"));
                let held = payloads(&store, "q");
                assert!(
                    held.contains(&"acknowledged".into()),
                    "power-loss image {seed}: the acknowledged push 4 is lost ({} messages left)",
                    held.len()
                );
            }
        }
        assert!(hit, "no operation of the roll was the fsync of log/");
    }

    /// After a failed fsync, the frame it was meant to make durable stays in the page cache but
    /// never reaches the disk (Linux marks the pages clean: fsyncgate). Reopening the store on
    /// the same machine replays that frame from the page cache as if it were durable; frames
    /// appended after it are synced; a power loss then leaves a hole in the middle of the log
    /// and the store refuses to open (`Error::Corrupt`), so acknowledged work is unreachable.
    #[test]
    fn power_loss_after_reopen_following_a_failed_fsync() {
        let vfs = SimVfs::new();
        vfs.create_dir_all_durable(Path::new("/d"));
        let store = open(&vfs).expect("open");
        store.push("q", Push::new("a")).expect("push a");
        vfs.fail_sync_once();
        store
            .push("q", Push::new("b"))
            .expect_err("the push whose fsync failed must fail");
        drop(store);
        // Same machine: "b" is in the page cache, not on disk.
        let store = open(&vfs).expect("reopen");
        store
            .push("q", Push::new("c"))
            .expect("push c is acknowledged");
        drop(store);
        for seed in 0..20 {
            let image = vfs.crash_image(seed);
            let store = open(&image).unwrap_or_else(|e| {
                panic!("power-loss image {seed}: acknowledged pushes a and c are unreachable: {e}")
            });
            let held = payloads(&store, "q");
            assert!(
                held.contains(&"a".into()) && held.contains(&"c".into()),
                "{held:?}"
            );
        }
    }
}
