//! Checkpoints: opening replays only the log written since the last one; a damaged or unusable
//! checkpoint falls back to the other one, then to a replay of the whole log, and never loses
//! anything; index files are rebuilt when missing; damage in what a checkpoint covers is
//! reported when the record is read.

use std::path::Path;
use std::time::Duration;

use spool_engine::vfs::{OpenMode, Vfs};
use spool_engine::{Error, Maintenance, Options, Push, Store};

use crate::Env;

fn opts(env: &Env) -> Options {
    Options {
        segment_bytes: 8192,
        maintenance: Maintenance::Manual,
        ..env.options()
    }
}

/// Pushes `n` messages to "q" (ids returned), leasing and acking every third.
fn fill(s: &Store, n: usize) -> Vec<u64> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(
            s.push(
                "q",
                Push::new(format!("payload {i} {}", "x".repeat(i % 50))),
            )
            .unwrap(),
        );
    }
    ids
}

fn ids(s: &Store) -> Vec<u64> {
    s.messages("q").unwrap().iter().map(|m| m.id).collect()
}

fn flip(env: &Env, path: &str, at: u64) {
    let f = env.vfs.open(Path::new(path), OpenMode::ReadWrite).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x5a;
    f.write_all_at(&b, at).unwrap();
}

fn file_len(env: &Env, path: &str) -> u64 {
    env.vfs
        .open(Path::new(path), OpenMode::Read)
        .unwrap()
        .len()
        .unwrap()
}

#[test]
fn the_next_open_replays_only_what_follows_the_last_checkpoint() {
    let env = Env::new();
    let s = env.open_with(opts(&env));
    let all = fill(&s, 400);
    let first = s.maintain().unwrap();
    assert!(first.checkpoint.is_some());
    assert!(first.indexes_written > 3, "{first:?}");
    let more = fill(&s, 5);
    drop(s);
    let s = env.open_with(opts(&env));
    let r = s.recovery_report().clone();
    assert!(r.checkpoint.is_some(), "{r:?}");
    assert!(r.segments <= 2, "replay starts at the checkpoint: {r:?}");
    let want: Vec<u64> = all.iter().chain(&more).copied().collect();
    assert_eq!(ids(&s), want);
    // Everything is deliverable, in order.
    let got: Vec<u64> = s
        .lease("q", 1000, None)
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(got, want);
}

#[test]
fn a_damaged_newest_checkpoint_falls_back_to_the_older_one() {
    let env = Env::new();
    let s = env.open_with(opts(&env));
    let a = fill(&s, 100);
    let g1 = s.maintain().unwrap().checkpoint.unwrap();
    let b = fill(&s, 100);
    let g2 = s.maintain().unwrap().checkpoint.unwrap();
    assert_eq!(g2, g1 + 1);
    drop(s); // the close writes generation g2 + 1
    let newest = g2 + 1;
    flip(&env, &format!("/s/ckpt.{}", newest % 2), 100);
    let s = env.open_with(opts(&env));
    let r = s.recovery_report().clone();
    assert_eq!(r.checkpoint, Some(g2), "{r:?}");
    assert!(
        r.checkpoint_problems
            .iter()
            .any(|p| p.contains(&format!("ckpt.{}", newest % 2))),
        "{r:?}"
    );
    let want: Vec<u64> = a.iter().chain(&b).copied().collect();
    assert_eq!(ids(&s), want);
    // The next checkpoint does not overwrite the one in use... and is usable.
    s.push("q", Push::new("after")).unwrap();
    s.maintain().unwrap();
    drop(s);
    let s = env.open_with(opts(&env));
    assert!(s.recovery_report().checkpoint_problems.is_empty());
    assert_eq!(ids(&s).len(), 201);
}

#[test]
fn with_both_checkpoints_damaged_the_whole_log_is_replayed_and_nothing_is_lost() {
    let env = Env::new();
    let s = env.open_with(opts(&env));
    let a = fill(&s, 150);
    s.maintain().unwrap();
    let m = s.lease("q", 10, Some(Duration::from_secs(60))).unwrap();
    for msg in &m[..5] {
        s.ack("q", msg.receipt.unwrap()).unwrap();
    }
    drop(s);
    flip(&env, "/s/ckpt.0", 70);
    flip(&env, "/s/ckpt.1", 70);
    let s = env.open_with(opts(&env));
    let r = s.recovery_report().clone();
    assert_eq!(r.checkpoint, None, "{r:?}");
    assert_eq!(r.checkpoint_problems.len(), 2, "both reported: {r:?}");
    assert!(r.frames > 150, "the whole log replayed: {r:?}");
    assert_eq!(ids(&s), a[5..].to_vec());
    // The five leased and not acked are back (with their receive counts).
    let back = s.get("q", a[5]).unwrap();
    assert_eq!(back.receive_count, 1);
}

#[test]
fn a_checkpoint_beyond_the_end_of_its_segment_is_not_used() {
    let env = Env::new();
    let s = env.open_with(opts(&env));
    let a = fill(&s, 50);
    drop(s); // close: a checkpoint at the end of the log
             // Cut the last segment short: the checkpoint covers bytes that are gone.
    let log: Vec<String> = env.vfs.read_dir(Path::new("/s/log")).unwrap();
    let last = log
        .iter()
        .filter(|n| Path::new(n).extension().is_some_and(|e| e == "seg"))
        .max()
        .unwrap()
        .clone();
    let path = format!("/s/log/{last}");
    let len = file_len(&env, &path);
    let f = env.vfs.open(Path::new(&path), OpenMode::ReadWrite).unwrap();
    // The close marker (an empty 32-byte frame) follows the checkpoint's position: cut into
    // what the checkpoint covers.
    f.set_len(len - 32 - 10).unwrap();
    let s = env.open_with(opts(&env));
    let r = s.recovery_report().clone();
    assert!(
        r.checkpoint_problems.iter().any(|p| p.contains("bytes")),
        "{r:?}"
    );
    // What the cut frames held is lost (the close marker at least); every push survives.
    let got = ids(&s);
    assert!(got.len() >= a.len() - 1, "{r:?}");
    assert!(got.iter().all(|id| a.contains(id)));
}

#[test]
fn missing_index_files_are_rebuilt_and_nothing_is_lost() {
    let env = Env::new();
    let s = env.open_with(opts(&env));
    let a = fill(&s, 300);
    s.maintain().unwrap();
    drop(s);
    let idx: Vec<String> = env
        .vfs
        .read_dir(Path::new("/s/log"))
        .unwrap()
        .into_iter()
        .filter(|n| Path::new(n).extension().is_some_and(|e| e == "idx"))
        .collect();
    assert!(idx.len() > 2);
    for n in &idx {
        env.vfs.remove_file(&Path::new("/s/log").join(n)).unwrap();
    }
    let s = env.open_with(opts(&env));
    let r = s.recovery_report().clone();
    assert!(r.indexes_rebuilt >= idx.len() as u64 - 1, "{r:?}");
    assert_eq!(ids(&s), a);
    let w = s.maintain().unwrap();
    assert!(
        w.indexes_written > 0,
        "the rebuilt indexes are written back: {w:?}"
    );
    let got: Vec<u64> = s
        .lease("q", 1000, None)
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(got, a);
}

#[test]
fn damage_in_a_record_a_checkpoint_covers_is_reported_when_it_is_read() {
    let env = Env::new();
    let s = env.open_with(opts(&env));
    let a = fill(&s, 300);
    s.maintain().unwrap();
    drop(s);
    // A bit of the first message's payload, in segment 1, covered by the close's checkpoint.
    let seg = "/s/log/00000000000000000001.seg";
    let data = {
        let f = env.vfs.open(Path::new(seg), OpenMode::Read).unwrap();
        let mut d = vec![0u8; f.len().unwrap() as usize];
        f.read_exact_at(&mut d, 0).unwrap();
        d
    };
    let at = data
        .windows(b"payload 0 ".len())
        .position(|w| w == b"payload 0 ")
        .unwrap();
    flip(&env, seg, at as u64 + 3);
    let s = env.open_with(opts(&env));
    assert!(s.recovery_report().checkpoint.is_some());
    // Opening does not read it; reading it finds it.
    let e = s.get("q", a[0]).unwrap_err();
    assert!(matches!(e, Error::DamagedRecord { .. }), "{e}");
    assert!(e.to_string().contains("inspect verify"), "{e}");
    // The others are fine.
    assert_eq!(s.get("q", a[1]).unwrap().id, a[1]);
    // And the damaged one can be deleted.
    s.delete("q", a[0]).unwrap();
    assert_eq!(ids(&s), a[1..].to_vec());
}

#[test]
fn damage_before_the_checkpoint_in_the_segment_replay_starts_in_is_refused_or_skipped() {
    let env = Env::new();
    let s = env.open_with(opts(&env));
    let a = fill(&s, 30);
    drop(s);
    let seg = "/s/log/00000000000000000001.seg";
    let data = {
        let f = env.vfs.open(Path::new(seg), OpenMode::Read).unwrap();
        let mut d = vec![0u8; f.len().unwrap() as usize];
        f.read_exact_at(&mut d, 0).unwrap();
        d
    };
    let at = data
        .windows(b"payload 7 ".len())
        .position(|w| w == b"payload 7 ")
        .unwrap();
    flip(&env, seg, at as u64 + 3);
    let e = Store::open_with_vfs(env.vfs.clone(), "/s", opts(&env)).unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    let s = env.open_with(Options {
        recovery: spool_engine::RecoveryPolicy::Skip,
        ..opts(&env)
    });
    let r = s.recovery_report().clone();
    assert_eq!(r.damaged.len(), 1, "{r:?}");
    let want: Vec<u64> = a.iter().copied().filter(|&id| id != a[7]).collect();
    // The damaged message is reported, not invented; the others are all there.
    let got = ids(&s);
    assert!(want.iter().all(|id| got.contains(id)), "{got:?}");
}

fn store_bytes(env: &Env) -> u64 {
    let mut total = 0;
    for dir in ["/s", "/s/log"] {
        for n in env.vfs.read_dir(Path::new(dir)).unwrap() {
            let p = Path::new(dir).join(&n);
            if let Ok(f) = env.vfs.open(&p, OpenMode::Read) {
                total += f.len().unwrap_or(0);
            }
        }
    }
    total
}

#[test]
fn acking_most_of_a_backlog_in_random_order_gives_the_disk_back_after_compaction() {
    let env = Env::new();
    let s = env.open_with(opts(&env));
    let n = 2000;
    let payload = |i: usize| format!("m{i:05}-{}", "p".repeat(200));
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        s.push_batch("q", chunk.iter().map(|&i| Push::new(payload(i))).collect())
            .unwrap();
    }
    let mut leased = Vec::new();
    loop {
        let got = s.lease("q", 500, Some(Duration::from_secs(3600))).unwrap();
        if got.is_empty() {
            break;
        }
        leased.extend(got);
    }
    assert_eq!(leased.len(), n);
    // Ack 90% in a scattered order; keep every tenth.
    let mut kept = Vec::new();
    let mut order: Vec<usize> = (0..n).collect();
    let mut x = 0x9E37_79B9u64;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    for &i in &order {
        if i % 10 == 0 {
            kept.push(leased[i].id);
        } else {
            s.ack("q", leased[i].receipt.unwrap()).unwrap();
        }
    }
    kept.sort_unstable();
    let before = store_bytes(&env);
    let mut relocated = 0;
    let mut deleted = 0;
    // Each round copies at most an eighth of a segment: enough rounds to finish.
    for _ in 0..2000 {
        let r = s.maintain().unwrap();
        relocated += r.records_relocated;
        deleted += r.segments_deleted;
        if r.records_relocated == 0 && r.segments_deleted == 0 && r.checkpoint.is_none() {
            break;
        }
    }
    let after = store_bytes(&env);
    let live = s.stats("q").unwrap().bytes;
    assert!(relocated > 0 && deleted > 0, "{relocated} {deleted}");
    assert!(
        after < before / 3,
        "compaction and deletion give the disk back: {before} -> {after} bytes ({live} live)"
    );
    // The kept messages are intact, still leased, and their receipts still work.
    assert_eq!(ids(&s), kept);
    let first = leased.iter().find(|m| m.id == kept[0]).unwrap();
    assert_eq!(s.get("q", kept[0]).unwrap().payload, first.payload);
    s.ack("q", first.receipt.unwrap()).unwrap();
    drop(s);
    // And after a reopen.
    let s = env.open_with(opts(&env));
    assert_eq!(ids(&s), kept[1..].to_vec());
    for id in &kept[1..] {
        let m = s.get("q", *id).unwrap();
        assert_eq!(
            m.payload,
            leased.iter().find(|l| l.id == *id).unwrap().payload
        );
    }
}

#[test]
fn low_priority_stragglers_are_compacted_and_still_delivered_in_order() {
    let env = Env::new();
    let s = env.open_with(opts(&env));
    let mut low = Vec::new();
    for i in 0..600 {
        let prio = if i % 10 == 0 { 0 } else { 5 };
        let id = s
            .push(
                "q",
                Push::new(format!("{i}:{}", "x".repeat(150))).priority(prio),
            )
            .unwrap();
        if prio == 0 {
            low.push(id);
        }
    }
    // Consume every high-priority message: each old segment keeps a few low ones.
    loop {
        let got = s.lease("q", 100, None).unwrap();
        let high: Vec<_> = got.iter().filter(|m| m.priority == 5).collect();
        for m in &got {
            if m.priority == 5 {
                s.ack("q", m.receipt.unwrap()).unwrap();
            } else {
                s.nack("q", m.receipt.unwrap(), Duration::ZERO, None)
                    .unwrap();
            }
        }
        if high.is_empty() {
            break;
        }
    }
    let mut relocated = 0;
    for _ in 0..50 {
        let r = s.maintain().unwrap();
        relocated += r.records_relocated;
        if r.records_relocated == 0 && r.segments_deleted == 0 && r.checkpoint.is_none() {
            break;
        }
    }
    assert!(relocated > 0);
    let segs = env
        .vfs
        .read_dir(Path::new("/s/log"))
        .unwrap()
        .into_iter()
        .filter(|n| Path::new(n).extension().is_some_and(|e| e == "seg"))
        .count();
    assert!(segs <= 3, "old segments were deleted: {segs} left");
    drop(s);
    let s = env.open_with(opts(&env));
    let got: Vec<u64> = s
        .lease("q", 1000, None)
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(got, low, "the low-priority messages, in push order");
}

#[test]
fn with_both_checkpoints_damaged_after_segments_were_deleted_nothing_is_lost() {
    let env = Env::new();
    let s = env.open_with(opts(&env));
    s.create_queue(
        "q",
        spool_engine::QueueConfig {
            max_receives: 5,
            ..spool_engine::QueueConfig::default()
        },
    )
    .unwrap();
    let all = fill(&s, 400);
    // Consume the first 300: their segments go.
    let mut left = all.clone();
    while left.len() > 100 {
        for m in s.pop("q", 50).unwrap() {
            left.retain(|id| *id != m.id);
        }
    }
    for _ in 0..10 {
        s.maintain().unwrap();
    }
    s.publish("t", "after").unwrap();
    drop(s);
    assert!(env.vfs.exists(Path::new("/s/log/FIRST")).unwrap());
    flip(&env, "/s/ckpt.0", 70);
    flip(&env, "/s/ckpt.1", 70);
    let s = env.open_with(opts(&env));
    let r = s.recovery_report().clone();
    assert_eq!(r.checkpoint, None, "{r:?}");
    assert!(
        r.damaged.is_empty(),
        "a deleted prefix is not damage: {r:?}"
    );
    assert_eq!(ids(&s), left);
    // The queue's config and the counters survived (restated at each segment's start).
    assert_eq!(s.queue_config("q").unwrap().max_receives, 5);
    let id = s.push("q", Push::new("new")).unwrap();
    assert!(id > *all.last().unwrap(), "ids are never reused");
}

#[test]
fn a_frame_larger_than_the_read_window_before_the_checkpoint_is_indexed_on_reopen() {
    // Regression: a batch frame above 4 MiB in the segment replay starts in made the
    // prefix indexer read the same window forever.
    let env = Env::new();
    let o = Options {
        segment_bytes: 64 << 20,
        ..opts(&env)
    };
    let s = env.open_with(o.clone());
    let payloads: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 600 << 10]).collect();
    let batch: Vec<Push> = payloads.iter().map(|p| Push::new(p.clone())).collect();
    let big = s.push_batch("q", batch).unwrap();
    let small = s.push("q", Push::new("after")).unwrap();
    assert!(s.maintain().unwrap().checkpoint.is_some());
    let last = s.push("q", Push::new("tail")).unwrap();
    drop(s);
    for _ in 0..2 {
        let s = env.open_with(o.clone());
        assert!(s.recovery_report().checkpoint.is_some());
        let want: Vec<u64> = big.iter().copied().chain([small, last]).collect();
        assert_eq!(ids(&s), want);
        let got = s.peek("q", 20).unwrap();
        for (m, p) in got.iter().zip(&payloads) {
            assert_eq!(&m.payload[..], &p[..]);
        }
    }
}

#[test]
fn damage_found_rebuilding_a_missing_index_file_is_reported_not_silently_skipped() {
    let env = Env::new();
    let s = env.open_with(opts(&env));
    let a = fill(&s, 300);
    s.maintain().unwrap();
    drop(s);
    // Damage a message in segment 1 (covered by the close's checkpoint) and remove the
    // segment's index file: the index must be rebuilt from the segment, which finds it.
    let seg = "/s/log/00000000000000000001.seg";
    let data = {
        let f = env.vfs.open(Path::new(seg), OpenMode::Read).unwrap();
        let mut d = vec![0u8; f.len().unwrap() as usize];
        f.read_exact_at(&mut d, 0).unwrap();
        d
    };
    let at = data
        .windows(b"payload 5 ".len())
        .position(|w| w == b"payload 5 ")
        .unwrap();
    flip(&env, seg, at as u64 + 3);
    env.vfs
        .remove_file(Path::new("/s/log/00000000000000000001.idx"))
        .unwrap();
    // Refused by default, with the place of the damage.
    let e = Store::open_with_vfs(env.vfs.clone(), "/s", opts(&env)).unwrap_err();
    let Error::Corrupt { ranges } = &e else {
        panic!("{e}")
    };
    assert_eq!(ranges.len(), 1, "{ranges:?}");
    assert_eq!(ranges[0].segment, 1);
    assert!(ranges[0].offset <= at as u64, "{ranges:?}");
    assert!(e.to_string().contains("index"), "{e}");
    // Skip opens it, reports it, and everything else is there.
    let s = env.open_with(Options {
        recovery: spool_engine::RecoveryPolicy::Skip,
        ..opts(&env)
    });
    let r = s.recovery_report().clone();
    assert_eq!(r.damaged.len(), 1, "{r:?}");
    assert!(r.indexes_rebuilt >= 1, "{r:?}");
    let got: Vec<u64> = s
        .lease("q", 1000, None)
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    let want: Vec<u64> = a.iter().copied().filter(|&id| id != a[5]).collect();
    assert_eq!(got, want);
}

#[test]
fn an_index_file_lost_while_open_and_rebuilt_over_damage_fails_the_read_loudly() {
    let env = Env::new();
    let s = env.open_with(opts(&env));
    fill(&s, 300);
    s.maintain().unwrap();
    drop(s);
    let s = env.open_with(opts(&env));
    let seg = "/s/log/00000000000000000001.seg";
    let data = {
        let f = env.vfs.open(Path::new(seg), OpenMode::Read).unwrap();
        let mut d = vec![0u8; f.len().unwrap() as usize];
        f.read_exact_at(&mut d, 0).unwrap();
        d
    };
    let at = data
        .windows(b"payload 5 ".len())
        .position(|w| w == b"payload 5 ")
        .unwrap();
    flip(&env, seg, at as u64 + 3);
    env.vfs
        .remove_file(Path::new("/s/log/00000000000000000001.idx"))
        .unwrap();
    let e = s.lease("q", 1000, None).unwrap_err();
    assert!(matches!(e, Error::DamagedRecord { segment: 1, .. }), "{e}");
    assert!(e.to_string().contains("index file"), "{e}");
}

#[test]
fn a_consumer_at_the_front_of_a_segment_compacted_over_several_rounds_gets_every_message_once() {
    // Regression: while a segment's live records were copied forward over several rounds,
    // both the old segment's index and the new run listed the copied ids; a consumer leasing
    // from the front took stale copies, and later messages were never delivered.
    let env = Env::new();
    let o = Options {
        segment_bytes: 64 << 10,
        ..opts(&env)
    };
    let s = env.open_with(o.clone());
    let mut all = Vec::new();
    for b in 0..60 {
        let batch: Vec<Push> = (0..100)
            .map(|i| Push::new(format!("m {b} {i} {}", "x".repeat(40))))
            .collect();
        all.extend(s.push_batch("q", batch).unwrap());
    }
    let mut got = Vec::new();
    let mut relocated = 0;
    let mut round = 0;
    loop {
        let m = s.lease("q", 50, None).unwrap();
        if m.is_empty() {
            break;
        }
        let r: Vec<_> = m.iter().map(|m| m.receipt.unwrap()).collect();
        got.extend(m.iter().map(|m| m.id));
        s.ack_batch("q", &r).unwrap();
        round += 1;
        if round % 3 == 0 {
            relocated += s.maintain().unwrap().records_relocated;
        }
        if round % 40 == 0 {
            // And across reopens, from whatever checkpoint the last round left.
            drop(s);
            let s2 = env.open_with(o.clone());
            return finish(&s2, got, &all, relocated);
        }
    }
    finish(&s, got, &all, relocated);
}

/// Drains the queue, then checks that every message came once, in order.
fn finish(s: &Store, mut got: Vec<u64>, all: &[u64], relocated: u64) {
    loop {
        let m = s.lease("q", 50, None).unwrap();
        if m.is_empty() {
            break;
        }
        let r: Vec<_> = m.iter().map(|m| m.receipt.unwrap()).collect();
        got.extend(m.iter().map(|m| m.id));
        s.ack_batch("q", &r).unwrap();
        s.maintain().unwrap();
    }
    assert!(relocated > 0, "the test must compact");
    assert_eq!(got, all, "every message once, in order");
    assert_eq!(s.stats("q").unwrap().messages, 0);
}

#[test]
fn a_copy_into_a_segment_whose_run_already_spans_its_id_is_listed_once() {
    // Regression (crash simulation, seed 16647): a first compaction round copied some ids into
    // the active segment, pushes extended that run past the ids still waiting to be copied,
    // and the next round put each of those into a second, overlapping run: listed twice.
    let env = Env::new();
    let o = Options {
        segment_bytes: 64 << 10,
        ..opts(&env)
    };
    let s = env.open_with(o.clone());
    let payload = |i: usize| format!("m{i:05}-{}", "p".repeat(60));
    let mut ids = Vec::new();
    for i in 0..400 {
        ids.push(s.push("q", Push::new(payload(i))).unwrap());
    }
    // Another queue's messages fill the rest of the segment and open the next one: the
    // queue's only run is in segment 1, and what comes next lands in the active segment.
    while s.maintain().unwrap().indexes_written == 0 {
        s.push("other", Push::new(payload(0))).unwrap();
    }
    s.purge("other").unwrap();
    // Keep every fifth message of the sealed segment (out of order deletes, never leased), not
    // the first: the copies' run then starts above the old run's start.
    let mut kept = Vec::new();
    for (i, &id) in ids.iter().enumerate() {
        if i % 5 == 2 {
            kept.push(id);
        } else {
            s.delete("q", id).unwrap();
        }
    }
    let mut relocated = Vec::new();
    for round in 0..40 {
        let r = s.maintain().unwrap();
        relocated.push(r.records_relocated);
        // New pushes between rounds land in the active segment, after the copies.
        kept.push(s.push("q", Push::new(payload(2000 + round))).unwrap());
        let listed: Vec<u64> = ids_of(&s);
        let mut sorted = listed.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(
            listed, sorted,
            "round {round}: each message listed once, in id order"
        );
        assert_eq!(listed, kept, "round {round}");
    }
    assert!(
        relocated.iter().filter(|&&n| n > 0).count() >= 2,
        "compaction must take several rounds: {relocated:?}"
    );
    let got: Vec<u64> = s
        .lease("q", 1000, None)
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(got, kept);
    drop(s);
    let s = env.open_with(o);
    assert_eq!(ids_of(&s), kept);
}

fn ids_of(s: &Store) -> Vec<u64> {
    s.messages("q").unwrap().iter().map(|m| m.id).collect()
}
