//! Checkpoint slots on the crash simulator: a power cut at every operation of a sequence of
//! checkpoint writes (and of `create_slots`), with any subset of unsynced writes lost and torn
//! sectors of 512 B and 4 KiB, never loses an acknowledged checkpoint and never yields a
//! corrupted one; an EIO or ENOSPC on any operation fails that write and keeps the previous
//! checkpoint, and the writer recovers by retrying.

use std::path::{Path, PathBuf};

use spool_engine::ckpt::{self, CkptError, CkptWriter, SlotStatus};
use spool_testkit::sim_vfs::{is_power_loss, SplitMix64};
use spool_testkit::{CrashModel, Fault, SimVfs};

const STORE_ID: u64 = 0x0123_4567_89AB_CDEF;

fn dir() -> PathBuf {
    PathBuf::from("/d/store")
}

fn fresh() -> SimVfs {
    let vfs = SimVfs::new();
    vfs.create_dir_all_durable(&dir());
    vfs
}

/// Payloads for generations 1..=k (index gen - 1): random sizes below `max_len` and random
/// content from `seed`, with an empty one and one that fits in the header's sector.
fn plan(seed: u64, k: usize, max_len: u64) -> Vec<Vec<u8>> {
    let mut rng = SplitMix64::new(seed);
    (0..k)
        .map(|i| {
            let len = match i {
                1 => 0,
                2 => rng.below(448),
                _ => rng.below(max_len),
            };
            let mut p = vec![0u8; len as usize];
            rng.fill(&mut p);
            p
        })
        .collect()
}

fn is_crash(e: &CkptError) -> bool {
    matches!(e, CkptError::Io { source, .. } if is_power_loss(source))
}

/// What a workload got to before it stopped.
#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    /// The last generation whose write returned Ok.
    acked: Option<u64>,
    /// The last generation passed to a write (acknowledged or not).
    attempted: Option<u64>,
    /// Writes and create_slots calls that failed with an injected fault.
    faults: u32,
    /// The machine died.
    crashed: bool,
}

/// Creates the slots and writes every planned checkpoint through a `CkptWriter`; a failed call
/// is retried (an injected fault fails one operation only), a power loss ends the run.
/// `after_fault` runs on the live file system right after each failed write.
fn workload(
    vfs: &SimVfs,
    payloads: &[Vec<u8>],
    mut after_fault: impl FnMut(&SimVfs, Progress),
) -> Progress {
    let mut pr = Progress::default();
    let d = dir();
    loop {
        match ckpt::create_slots(vfs, &d) {
            Ok(()) => break,
            Err(e) if is_crash(&e) => {
                pr.crashed = true;
                return pr;
            }
            Err(_) => pr.faults += 1,
        }
    }
    let loaded = match ckpt::load(vfs, &d, STORE_ID) {
        Ok(l) => l,
        Err(e) => {
            assert!(is_crash(&e), "load: {e}");
            pr.crashed = true;
            return pr;
        }
    };
    assert_eq!(loaded.best, None);
    let mut w = CkptWriter::new(&d, STORE_ID, &loaded, None).expect("writer");
    while w.next_gen() <= payloads.len() as u64 {
        let gen = w.next_gen();
        pr.attempted = Some(gen);
        match w.write(vfs, &payloads[gen as usize - 1]) {
            Ok(g) => {
                assert_eq!(g, gen);
                pr.acked = Some(g);
            }
            Err(e) if is_crash(&e) => {
                pr.crashed = true;
                return pr;
            }
            Err(e) => {
                assert!(matches!(e, CkptError::Io { .. }), "{e}");
                assert_eq!(w.next_gen(), gen, "a failed write must be retried");
                assert_eq!(w.kept(), pr.acked);
                pr.faults += 1;
                after_fault(vfs, pr);
            }
        }
    }
    pr
}

/// The invariant on a file system after a crash (or a fault): loading returns the last
/// acknowledged checkpoint or the one being written, byte for byte; never anything older,
/// never corrupted content. Then the store must be usable: the slots re-created, a new
/// checkpoint written and loaded.
fn check_image(image: &SimVfs, payloads: &[Vec<u8>], pr: Progress, what: &str) {
    let d = dir();
    let loaded = ckpt::load(image, &d, STORE_ID).unwrap_or_else(|e| panic!("{what}: load: {e}"));
    match &loaded.best {
        None => assert_eq!(
            pr.acked, None,
            "{what}: acknowledged checkpoint lost: {:?}",
            loaded.slots
        ),
        Some((gen, payload)) => {
            assert!(
                Some(*gen) == pr.acked || Some(*gen) == pr.attempted,
                "{what}: loaded generation {gen}, acknowledged {:?}, attempted {:?}",
                pr.acked,
                pr.attempted
            );
            assert!(
                *payload == payloads[*gen as usize - 1],
                "{what}: generation {gen} loaded with wrong content"
            );
        }
    }
    if pr.acked.is_none() && pr.attempted.is_none() {
        // Crash before any checkpoint write: slots missing or empty, nothing invalid.
        for s in &loaded.slots {
            assert!(
                matches!(s.status, SlotStatus::Missing | SlotStatus::Empty),
                "{what}: {s}"
            );
        }
    }

    // Recovery: the store keeps working after the crash.
    ckpt::create_slots(image, &d).unwrap_or_else(|e| panic!("{what}: create_slots: {e}"));
    let mut w = CkptWriter::new(&d, STORE_ID, &loaded, loaded.best_gen()).expect("writer");
    let gen = w
        .write(image, b"after the crash")
        .unwrap_or_else(|e| panic!("{what}: write after the crash: {e}"));
    assert_eq!(gen, loaded.next_gen(loaded.best_gen()), "{what}");
    if let Some(best) = loaded.best_gen() {
        assert_eq!(gen, best + 1, "{what}");
    }
    let survivor = image.crash_image_with(7, &CrashModel::lose_all_pending());
    let again = ckpt::load(&survivor, &d, STORE_ID).expect("load");
    assert_eq!(
        again.best,
        Some((gen, b"after the crash".to_vec())),
        "{what}: the checkpoint written after the crash did not survive"
    );
}

fn models() -> Vec<(&'static str, CrashModel)> {
    vec![
        ("power loss, 512 B sectors", CrashModel::power_loss()),
        (
            "power loss, 4 KiB sectors",
            CrashModel::power_loss().with_sector_bytes(4096),
        ),
        ("process kill", CrashModel::process_kill()),
        ("lose all pending", CrashModel::lose_all_pending()),
    ]
}

fn ops_of(payloads: &[Vec<u8>]) -> u64 {
    let vfs = fresh();
    let pr = workload(&vfs, payloads, |_, _| panic!("no fault was injected"));
    assert_eq!(pr.acked, Some(payloads.len() as u64));
    vfs.op_count()
}

#[test]
fn power_loss_at_every_operation_keeps_the_last_acknowledged_checkpoint() {
    let mut images = 0u32;
    let mut saw_in_flight = 0u32;
    for plan_seed in [1u64, 2] {
        let payloads = plan(plan_seed, 6, 200 << 10);
        let total = ops_of(&payloads);
        for n in 1..=total {
            for (name, model) in models() {
                let seeds = if model.torn_writes { 0..8 } else { 0..1 };
                for seed in seeds {
                    let vfs = fresh();
                    vfs.set_crash_model(model);
                    vfs.set_crash_at(n, seed);
                    let pr = workload(&vfs, &payloads, |_, _| panic!("no fault was injected"));
                    assert!(pr.crashed, "op {n} never came");
                    let image = vfs.take_crash_image().expect("image");
                    let what =
                        format!("plan {plan_seed}, crash at op {n}/{total}, {name}, seed {seed}");
                    let best = ckpt::load(&image, &dir(), STORE_ID)
                        .expect("load")
                        .best_gen();
                    if best.is_some() && best == pr.attempted && best != pr.acked {
                        saw_in_flight += 1;
                    }
                    check_image(&image, &payloads, pr, &what);
                    images += 1;
                }
            }
        }
    }
    // The simulation did exercise both outcomes of an interrupted write.
    assert!(saw_in_flight > 0, "no image ever kept the write in flight");
    assert!(images > 500, "{images}");
}

#[test]
fn crash_during_create_slots_leaves_a_store_that_create_slots_completes() {
    // create_slots alone: 2 opens, 2 fdatasyncs, 1 directory fsync.
    for n in 1..=5 {
        for seed in 0..20 {
            let vfs = fresh();
            vfs.set_crash_at(n, seed);
            let err = ckpt::create_slots(&vfs, &dir()).unwrap_err();
            assert!(is_crash(&err), "{err}");
            let image = vfs.take_crash_image().expect("image");
            let loaded = ckpt::load(&image, &dir(), STORE_ID).expect("load");
            assert_eq!(loaded.best, None);
            check_image(
                &image,
                &[],
                Progress::default(),
                &format!("op {n} seed {seed}"),
            );
        }
    }
    // Completed, the slot names are durable: a power cut right after keeps them.
    let vfs = fresh();
    ckpt::create_slots(&vfs, &dir()).unwrap();
    let image = vfs.crash_image_with(0, &CrashModel::lose_all_pending());
    let loaded = ckpt::load(&image, &dir(), STORE_ID).unwrap();
    assert!(loaded.slots.iter().all(|s| s.status == SlotStatus::Empty));
}

/// Checks the state right after a failed write: live, the previous checkpoint is what loads
/// (the failed slot's header was wiped), a write of the following generation is refused, and
/// every crash image holds the previous checkpoint or the failed one, intact.
fn check_after_fault(vfs: &SimVfs, payloads: &[Vec<u8>], pr: Progress, what: &str) {
    let d = dir();
    let live = ckpt::load(vfs, &d, STORE_ID).expect("live load");
    assert_eq!(
        live.best_gen(),
        pr.acked,
        "{what}: live view after the fault"
    );
    if let Some(g) = pr.attempted {
        // Skipping the failed generation would overwrite the acknowledged checkpoint.
        if g >= 2 {
            let err = ckpt::write(vfs, &d, STORE_ID, g + 1, b"skip").unwrap_err();
            assert!(
                matches!(err, CkptError::OutOfOrder { expected, .. } if expected == g),
                "{what}: {err}"
            );
        }
    }
    for (name, model) in models() {
        for seed in 0..4 {
            let image = vfs.crash_image_with(seed, &model);
            check_image(
                &image,
                payloads,
                pr,
                &format!("{what}, then crash ({name}, seed {seed})"),
            );
        }
    }
}

#[test]
fn eio_or_enospc_on_any_operation_fails_the_write_and_keeps_the_previous_checkpoint() {
    let payloads = plan(3, 5, 64 << 10);
    let total = ops_of(&payloads);
    for n in 1..=total {
        for fault in [Fault::Eio, Fault::Enospc] {
            let what = format!("{fault:?} at op {n}/{total}");
            let vfs = fresh();
            vfs.fail_op(n, fault);
            let pr = workload(&vfs, &payloads, |v, pr| {
                check_after_fault(v, &payloads, pr, &what);
            });
            assert!(!pr.crashed);
            assert_eq!(pr.faults, 1, "{what}");
            assert_eq!(pr.acked, Some(payloads.len() as u64), "{what}");
            // The retried writes are durable.
            let image = vfs.crash_image_with(1, &CrashModel::lose_all_pending());
            let loaded = ckpt::load(&image, &dir(), STORE_ID).unwrap();
            assert_eq!(
                loaded.best,
                Some((payloads.len() as u64, payloads[payloads.len() - 1].clone())),
                "{what}"
            );
        }
    }
}

#[test]
fn power_loss_after_a_fault_and_during_the_retry() {
    let payloads = plan(4, 4, 12 << 10);
    let total = ops_of(&payloads);
    let mut runs = 0;
    for fail_at in 1..=total {
        let fault = if fail_at % 2 == 0 {
            Fault::Eio
        } else {
            Fault::Enospc
        };
        // The faulted run has more operations (the wipe, the retry); crash at each of them.
        let probe = fresh();
        probe.fail_op(fail_at, fault);
        workload(&probe, &payloads, |_, _| {});
        for crash_at in fail_at + 1..=probe.op_count() {
            let model = if crash_at % 2 == 0 {
                CrashModel::power_loss()
            } else {
                CrashModel::power_loss().with_sector_bytes(4096)
            };
            let vfs = fresh();
            vfs.set_crash_model(model);
            vfs.fail_op(fail_at, fault);
            vfs.set_crash_at(crash_at, crash_at ^ fail_at);
            let pr = workload(&vfs, &payloads, |_, _| {});
            assert!(pr.crashed);
            let image = vfs.take_crash_image().expect("image");
            check_image(
                &image,
                &payloads,
                pr,
                &format!("{fault:?} at op {fail_at}, crash at op {crash_at}"),
            );
            runs += 1;
        }
    }
    assert!(runs > 100, "{runs}");
}

#[test]
fn full_disk_fails_a_growing_checkpoint_and_a_smaller_one_then_succeeds() {
    let vfs = fresh();
    let d: &Path = &dir();
    ckpt::create_slots(&vfs, d).unwrap();
    let loaded = ckpt::load(&vfs, d, STORE_ID).unwrap();
    let mut w = CkptWriter::new(d, STORE_ID, &loaded, None).unwrap();
    w.write(&vfs, &vec![1u8; 10_000]).unwrap();
    w.write(&vfs, &vec![2u8; 10_000]).unwrap();
    vfs.set_space_limit(2 * (64 + 10_000) + 5_000);
    let err = w.write(&vfs, &vec![3u8; 20_000]).unwrap_err();
    assert!(
        matches!(&err, CkptError::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull),
        "{err}"
    );
    assert!(err.to_string().contains("ckpt.1"), "{err}");
    for seed in 0..20 {
        let image = vfs.crash_image(seed);
        let l = ckpt::load(&image, d, STORE_ID).unwrap();
        assert_eq!(l.best, Some((2, vec![2u8; 10_000])), "seed {seed}");
    }
    assert_eq!(w.next_gen(), 3);
    assert_eq!(w.write(&vfs, &vec![3u8; 12_000]).unwrap(), 3);
    let image = vfs.crash_image_with(0, &CrashModel::lose_all_pending());
    let l = ckpt::load(&image, d, STORE_ID).unwrap();
    assert_eq!(l.best, Some((3, vec![3u8; 12_000])));
    assert_eq!(l.candidates(), vec![(1, 3), (0, 2)]);
}
