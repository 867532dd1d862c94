//! Large payloads in blob files: streamed in and out, durable before the entry that refers to
//! them, deleted once a checkpoint covers their removal, orphans removed at open.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use spool_engine::vfs::Vfs;
use spool_engine::{Maintenance, Options, Push, QueueConfig};

use crate::Env;

fn opts(env: &Env) -> Options {
    Options {
        maintenance: Maintenance::Manual,
        default_queue: QueueConfig {
            max_payload_bytes: 64 << 20,
            ..QueueConfig::default()
        },
        ..env.options()
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn blobs(env: &Env) -> Vec<String> {
    env.vfs.read_dir(Path::new("/s/blob")).unwrap_or_default()
}

#[test]
fn a_streamed_payload_goes_to_a_blob_and_comes_back_whole() {
    let env = Env::new();
    let s = env.open_with(opts(&env));
    let data = pattern((5 << 20) + 123, 7);
    let id = s
        .push_stream("big", Push::default().priority(3), &mut data.as_slice())
        .unwrap();
    assert_eq!(blobs(&env).len(), 1);
    let m = s
        .lease("big", 1, Some(Duration::from_secs(60)))
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(m.id, id);
    assert!(m.payload.is_empty());
    assert_eq!(m.blob.unwrap().len, data.len() as u64);
    let mut back = Vec::new();
    s.open_payload(&m).unwrap().read_to_end(&mut back).unwrap();
    assert_eq!(back, data);
    assert_eq!(s.stats("big").unwrap().bytes, data.len() as u64);
    // Survives a reopen.
    drop(s);
    let s = env.open_with(opts(&env));
    let m2 = s.get("big", id).unwrap();
    let mut back = Vec::new();
    s.open_payload(&m2).unwrap().read_to_end(&mut back).unwrap();
    assert_eq!(back, data);
    // Acked: the blob goes once a checkpoint covers the ack.
    let m = s.lease("big", 1, None).unwrap().pop().unwrap();
    s.ack("big", m.receipt.unwrap()).unwrap();
    assert_eq!(blobs(&env).len(), 1, "not before a checkpoint");
    s.maintain().unwrap();
    assert!(blobs(&env).is_empty(), "deleted after the checkpoint");
}

#[test]
fn a_large_pushed_payload_is_moved_to_a_blob_and_too_large_is_refused() {
    let env = Env::new();
    let s = env.open_with(opts(&env));
    let data = pattern(2 << 20, 1);
    let id = s.push("big", Push::new(data.clone())).unwrap();
    assert_eq!(blobs(&env).len(), 1);
    let m = s.get("big", id).unwrap();
    let mut back = Vec::new();
    s.open_payload(&m).unwrap().read_to_end(&mut back).unwrap();
    assert_eq!(back, data);
    // Over the queue's limit: refused, and no blob left behind.
    s.create_queue(
        "small",
        QueueConfig {
            max_payload_bytes: 1 << 20,
            ..QueueConfig::default()
        },
    )
    .unwrap();
    let e = s
        .push_stream(
            "small",
            Push::default(),
            &mut pattern(3 << 20, 2).as_slice(),
        )
        .unwrap_err();
    assert!(
        matches!(e, spool_engine::Error::PayloadTooLarge { .. }),
        "{e}"
    );
    assert_eq!(blobs(&env).len(), 1);
    // A dead letter shares its blob; the blob stays while either lives.
    s.create_queue(
        "work",
        QueueConfig {
            max_payload_bytes: 64 << 20,
            max_receives: 1,
            ..QueueConfig::default()
        },
    )
    .unwrap();
    let big = pattern(1 << 20, 9);
    s.push_stream("work", Push::default(), &mut big.as_slice())
        .unwrap();
    let m = s
        .lease("work", 1, Some(Duration::from_millis(1)))
        .unwrap()
        .pop()
        .unwrap();
    let dead = s.dead("work", m.receipt.unwrap()).unwrap();
    s.maintain().unwrap();
    let d = s.get("work.dlq", dead).unwrap();
    let mut back = Vec::new();
    s.open_payload(&d).unwrap().read_to_end(&mut back).unwrap();
    assert_eq!(back, big);
}

#[test]
fn orphan_and_half_written_blobs_are_removed_at_open() {
    let env = Env::new();
    let s = env.open_with(opts(&env));
    s.push_stream("q", Push::default(), &mut pattern(1 << 20, 3).as_slice())
        .unwrap();
    drop(s);
    // A blob a crash left without its entry, and a half-written one in tmp/.
    let f = env
        .vfs
        .open(
            Path::new("/s/blob/00000000000000000999.blob"),
            spool_engine::vfs::OpenMode::Create,
        )
        .unwrap();
    f.write_all_at(b"whatever", 0).unwrap();
    env.vfs.create_dir_all(Path::new("/s/tmp")).unwrap();
    let f = env
        .vfs
        .open(
            Path::new("/s/tmp/00000000000000001000.blob.tmp"),
            spool_engine::vfs::OpenMode::Create,
        )
        .unwrap();
    f.write_all_at(b"half", 0).unwrap();
    let s = env.open_with(opts(&env));
    assert_eq!(s.recovery_report().orphan_blobs_removed, 1);
    assert_eq!(blobs(&env).len(), 1);
    assert!(env.vfs.read_dir(Path::new("/s/tmp")).unwrap().is_empty());
    assert_eq!(s.messages("q").unwrap().len(), 1);
}
