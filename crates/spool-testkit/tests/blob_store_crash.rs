//! Blob payloads through the store on the crash simulator: a power loss at every operation of
//! a `push_stream` of a ~3 MiB payload, then of its ack and the checkpoint that deletes the
//! blob. After every crash and recovery: an acknowledged push is there with its payload
//! byte-identical; an unacknowledged one is there whole or not at all; an acknowledged ack
//! keeps it gone; and no blob file is left that no message refers to.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use spool_engine::vfs::Vfs;
use spool_engine::{Maintenance, ManualClock, Options, Push, QueueConfig, SegmentPrep, Store};
use spool_testkit::SimVfs;

const SEEDS: u64 = 4;

fn options() -> Options {
    Options {
        maintenance: Maintenance::Manual,
        clock: Arc::new(ManualClock::new(1_700_000_000_000)),
        default_queue: QueueConfig {
            max_payload_bytes: 8 << 20,
            ..QueueConfig::default()
        },
        // Deterministic file operations (a background preparation would move crash points).
        segment_prep: SegmentPrep::Off,
        ..Options::default()
    }
}

fn payload() -> Vec<u8> {
    (0..(3 << 20) + 4097)
        .map(|i: usize| (i as u8).wrapping_mul(13).wrapping_add(5))
        .collect()
}

fn open(vfs: &SimVfs) -> spool_engine::Result<Store> {
    Store::open_with_vfs(Arc::new(vfs.clone()), "/d/store", options())
}

fn blob_files(vfs: &SimVfs) -> usize {
    vfs.read_dir(Path::new("/d/store/blob"))
        .map_or(0, |v| v.len())
}

/// How far the workload got before the power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Got {
    /// The push was not acknowledged.
    Nothing,
    /// The push was acknowledged; the ack not attempted.
    Pushed,
    /// The ack was attempted, not acknowledged (it may or may not have happened).
    AckUncertain,
    /// The ack was acknowledged.
    Acked,
}

/// The workload: push the big payload, lease it, ack it, take a checkpoint (which deletes
/// the blob).
fn workload(vfs: &SimVfs, data: &[u8]) -> Got {
    let Ok(s) = open(vfs) else {
        return Got::Nothing;
    };
    if s.push_stream("q", Push::default(), &mut &data[..]).is_err() {
        return Got::Nothing;
    }
    let Ok(mut got) = s.lease("q", 1, None) else {
        return Got::Pushed;
    };
    let Some(m) = got.pop() else {
        return Got::Pushed;
    };
    if s.ack("q", m.receipt.expect("receipt")).is_err() {
        return Got::AckUncertain;
    }
    let _ = s.maintain();
    drop(s);
    Got::Acked
}

fn check(image: &SimVfs, data: &[u8], got: Got, what: &str) {
    let s = open(image).unwrap_or_else(|e| panic!("{what}: reopen: {e}"));
    let msgs = s.messages("q").unwrap_or_default();
    match got {
        Got::Acked => assert!(msgs.is_empty(), "{what}: an acknowledged ack came undone"),
        Got::Pushed => assert_eq!(msgs.len(), 1, "{what}: an acknowledged push is lost"),
        Got::Nothing | Got::AckUncertain => assert!(msgs.len() <= 1, "{what}: invented"),
    }
    for m in &msgs {
        let mut back = Vec::new();
        s.open_payload(m)
            .unwrap_or_else(|e| panic!("{what}: the payload cannot be read: {e}"))
            .read_to_end(&mut back)
            .unwrap_or_else(|e| panic!("{what}: the payload cannot be read: {e}"));
        assert_eq!(back, data, "{what}: the payload differs");
    }
    assert_eq!(
        blob_files(image),
        msgs.len(),
        "{what}: blob files left that no message refers to"
    );
}

#[test]
fn a_power_loss_anywhere_in_a_blob_push_ack_and_deletion_loses_nothing_and_leaks_nothing() {
    let data = payload();
    // Count the operations of the whole workload.
    let counting = SimVfs::new();
    counting.create_dir_all_durable(Path::new("/d"));
    assert_eq!(workload(&counting, &data), Got::Acked);
    let total = counting.op_count();
    assert!(total > 20);
    for n in 1..=total {
        for seed in 0..SEEDS {
            let vfs = SimVfs::new();
            vfs.create_dir_all_durable(Path::new("/d"));
            vfs.set_crash_at(n, seed);
            let got = workload(&vfs, &data);
            let image = vfs
                .take_crash_image()
                .unwrap_or_else(|| vfs.crash_image(seed));
            check(
                &image,
                &data,
                got,
                &format!("crash at op {n}/{total}, seed {seed}"),
            );
        }
    }
}
