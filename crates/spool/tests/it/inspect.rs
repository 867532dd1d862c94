//! `spool inspect`: verify, dump, stats, export/import and salvage, through the real binary.
//!
//! Stores with many segments are built with the engine directly (small segments, manual
//! maintenance so that every sealed segment has its index file, a checkpoint at close), then
//! damaged on disk and handed to the binary.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use spool_engine::entry::{decode_entries_at, Entry};
use spool_engine::frame::{check_frame, segment_file_name, FrameCheck, SEGMENT_HEADER_LEN};
use spool_engine::{
    CursorStart, Durability, Maintenance, Options, Overflow, Push, QueueConfig, Store, TopicConfig,
};

use crate::{ok, run};

fn json_lines(s: &str) -> Vec<Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

fn options() -> Options {
    Options {
        segment_bytes: 4096,
        maintenance: Maintenance::Manual,
        durability: Durability::None,
        ..Options::default()
    }
}

/// A store of several segments: queues `jobs` and `mail`, topic `events`. Returns the
/// payloads pushed to `jobs`, by id.
fn build(dir: &Path) -> Vec<(u64, String)> {
    let s = Store::open(dir, options()).unwrap();
    let mut jobs = Vec::new();
    for i in 0..120u32 {
        let payload = format!("job {i} {}", "x".repeat((i as usize * 13) % 80));
        let id = s
            .push("jobs", Push::new(payload.clone()).priority((i % 3) as u8))
            .unwrap();
        jobs.push((id, payload));
        if i % 4 == 0 {
            s.push("mail", Push::new(format!("mail {i}"))).unwrap();
        }
        if i % 10 == 0 {
            s.publish("events", format!("event {i}")).unwrap();
        }
    }
    s.maintain().unwrap();
    s.close().unwrap();
    jobs
}

fn seg_path(dir: &Path, id: u64) -> PathBuf {
    dir.join("log").join(segment_file_name(id))
}

/// (offset, lsn, length) of every frame of a segment.
fn frames(dir: &Path, id: u64) -> Vec<(usize, u64, usize)> {
    let data = std::fs::read(seg_path(dir, id)).unwrap();
    let mut pos = SEGMENT_HEADER_LEN;
    let mut out = Vec::new();
    while let FrameCheck::Valid { lsn, len, .. } = check_frame(&data[pos..]) {
        out.push((pos, lsn, len));
        pos += len;
    }
    out
}

fn flip(path: &Path, at: usize) {
    let mut data = std::fs::read(path).unwrap();
    data[at] ^= 0x20;
    std::fs::write(path, data).unwrap();
}

fn segments(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("log"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".seg")
        })
        .count()
}

#[test]
fn verify_a_clean_store_exits_0() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("s");
    build(&d);
    assert!(segments(&d) >= 4);
    let out = ok(&d, &["inspect", "verify"]);
    assert!(out.contains("ok: no problems found"), "{out}");
    let v: Value = serde_json::from_str(ok(&d, &["inspect", "verify", "--json"]).trim()).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["segments"], segments(&d) as u64);
    assert_eq!(v["index_files"]["ok"], segments(&d) as u64 - 1);
    assert!(v["problems"].as_array().unwrap().is_empty());
}

#[test]
fn verify_names_the_segment_and_lsns_of_a_flipped_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("s");
    build(&d);
    let fr = frames(&d, 2);
    let (off, lsn, len) = fr[fr.len() / 2];
    flip(&seg_path(&d, 2), off + len / 2);
    let out = run(&d, &["inspect", "verify"], None);
    assert_eq!(out.status.code(), Some(6));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("PROBLEM"))
        .unwrap_or_else(|| panic!("no problem line:\n{stdout}"));
    assert!(line.contains(&format!("LSN {lsn}..={lsn}")), "{line}");
    assert!(line.contains(&format!("segment 2 offset {off}")), "{line}");
    assert!(line.contains("00000000000000000002.seg"), "{line}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1 problem found"), "{err}");
    let out = run(&d, &["inspect", "verify", "--json"], None);
    assert_eq!(out.status.code(), Some(6));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    let dmg = &v["problems"][0]["damage"];
    assert_eq!(
        (
            dmg["segment"].as_u64(),
            dmg["lsn_from"].as_u64(),
            dmg["lsn_to"].as_u64()
        ),
        (Some(2), Some(lsn), Some(lsn))
    );
}

#[test]
fn verify_of_an_open_store_is_locked_and_a_missing_store_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("s");
    build(&d);
    let s = Store::open(&d, options()).unwrap();
    let out = run(&d, &["inspect", "verify"], None);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.close().unwrap();
    let typo = tmp.path().join("typo");
    let out = run(&typo, &["inspect", "verify"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no spool store"));
    assert!(!typo.exists());
}

#[test]
fn dump_prints_json_lines_with_ids_and_payloads() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("s");
    let mut ids = Vec::new();
    for i in 0..5 {
        let id: u64 = ok(
            &d,
            &["push", "q", &format!("m{i}"), "--priority", &i.to_string()],
        )
        .trim()
        .parse()
        .unwrap();
        ids.push(id);
    }
    assert!(run(&d, &["push", "bin"], Some(&[0xff, 0x01]))
        .status
        .success());
    ok(&d, &["topic", "publish", "t", "hello"]);
    let all = json_lines(&ok(&d, &["inspect", "dump"]));
    assert_eq!(all.len(), 7);
    // Queues in name order, then topics.
    assert_eq!(all[0]["queue"], "bin");
    assert_eq!(all[0]["payload_base64"], "/wE=");
    assert!(all[0].get("payload").is_none());
    for (i, (m, id)) in all[1..6].iter().zip(&ids).enumerate() {
        assert_eq!(m["type"], "message");
        assert_eq!(m["queue"], "q");
        assert_eq!(m["id"], *id);
        assert_eq!(m["payload"], format!("m{i}"));
        assert_eq!(m["priority"], i);
        assert_eq!(m["state"], "ready");
        assert!(m.get("receipt").is_none());
    }
    assert_eq!(all[6]["type"], "topic_message");
    assert_eq!(all[6]["topic"], "t");
    assert_eq!(all[6]["seq"], 1);
    assert_eq!(all[6]["payload"], "hello");
    let some = json_lines(&ok(
        &d,
        &[
            "inspect",
            "dump",
            "--queue",
            "q",
            "--from-id",
            &ids[2].to_string(),
            "--limit",
            "2",
        ],
    ));
    let got: Vec<u64> = some.iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert_eq!(got, ids[2..4]);
    let t = json_lines(&ok(&d, &["inspect", "dump", "--topic", "t"]));
    assert_eq!(t.len(), 1);
    let missing = run(&d, &["inspect", "dump", "--queue", "nope"], None);
    assert_eq!(missing.status.code(), Some(4));
}

#[test]
fn stats_shows_store_figures() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("s");
    build(&d);
    let v: Value = serde_json::from_str(ok(&d, &["inspect", "stats", "--json"]).trim()).unwrap();
    assert_eq!(v["store"]["segments"], segments(&d) as u64);
    assert!(v["store"]["checkpoint"]["generation"].as_u64().unwrap() >= 1);
    assert!(v["recovery"]["checkpoint"].as_u64().is_some());
    let queues: Vec<&str> = v["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["queue"].as_str().unwrap())
        .collect();
    assert_eq!(queues, ["jobs", "mail"]);
    assert_eq!(v["queues"][0]["visible"], 120);
    assert_eq!(v["topics"][0]["topic"], "events");
    let human = ok(&d, &["inspect", "stats"]);
    assert!(human.contains("checkpoint  generation"), "{human}");
    assert!(human.contains("jobs"), "{human}");
}

/// What a message is, independently of its id and times.
fn shape(m: &spool_engine::Message) -> (Bytes, u8, Option<String>, Vec<(String, Bytes)>, bool) {
    (
        m.payload.clone(),
        m.priority,
        m.subject.clone(),
        m.headers.clone(),
        m.expires_at.is_some(),
    )
}

#[test]
fn export_then_import_gives_the_same_store() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let s = Store::open(&a, options()).unwrap();
    let forever = QueueConfig {
        retention: None,
        max_receives: 3,
        visibility: Duration::from_secs(7),
        ..QueueConfig::default()
    };
    let bounded = QueueConfig {
        max_messages: 1000,
        overflow: Overflow::EvictLowestPriority,
        max_payload_bytes: 4096,
        ..QueueConfig::default()
    };
    s.create_queue("forever", forever.clone()).unwrap();
    s.create_queue("bounded", bounded.clone()).unwrap();
    for i in 0..30u32 {
        s.push(
            "forever",
            Push::new(format!("f{i}"))
                .priority((i % 5) as u8)
                .subject(format!("sensors/{i}"))
                .header("qos", "1")
                .header("raw", Bytes::from(vec![0xff, i as u8]))
                .header("qos", "2"),
        )
        .unwrap();
        s.push(
            "bounded",
            Push::new(vec![0u8, 159, 146, 150, i as u8]).ttl(Duration::from_secs(3600)),
        )
        .unwrap();
    }
    s.push(
        "bounded",
        Push::new("later").delay(Duration::from_secs(600)),
    )
    .unwrap();
    // A leased message comes back ready.
    let leased = s.lease("forever", 1, None).unwrap();
    assert_eq!(leased.len(), 1);
    let topic = TopicConfig {
        retention: Duration::from_secs(3600),
        max_messages: 500,
        ..TopicConfig::default()
    };
    s.create_topic("events", topic.clone()).unwrap();
    for i in 0..10 {
        s.publish("events", format!("e{i}")).unwrap();
    }
    let mut c = s
        .durable_cursor("events", "reader", CursorStart::Earliest)
        .unwrap();
    for _ in 0..4 {
        s.topic_next(&mut c).unwrap();
    }
    s.commit_cursor(&c).unwrap();
    s.close().unwrap();

    let file = tmp.path().join("export.jsonl");
    let file_s = file.to_str().unwrap();
    let out = run(&a, &["inspect", "export", "--out", file_s], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&std::fs::read_to_string(&file).unwrap());
    assert_eq!(lines[0]["spool_export"], 1);
    assert_eq!(lines.last().unwrap()["type"], "end");
    // Export to stdout is the same (but for the export time).
    let stdout = json_lines(&ok(&a, &["inspect", "export"]));
    assert_eq!(stdout[1..], lines[1..]);

    let b = tmp.path().join("b");
    let imported = ok(&b, &["inspect", "import", file_s]);
    assert!(
        imported.contains("3 queues, 1 topics, 61 messages, 10 topic messages"),
        "{imported}"
    );

    let sa = Store::open(&a, options()).unwrap();
    let sb = Store::open(&b, options()).unwrap();
    assert_eq!(sa.queues(), sb.queues());
    assert_eq!(sa.topics(), sb.topics());
    for q in sa.queues() {
        assert_eq!(
            sa.queue_config(&q).unwrap(),
            sb.queue_config(&q).unwrap(),
            "{q}"
        );
        let ma = sa.messages(&q).unwrap();
        let mb = sb.messages(&q).unwrap();
        assert_eq!(
            ma.iter().map(shape).collect::<Vec<_>>(),
            mb.iter().map(shape).collect::<Vec<_>>(),
            "{q}"
        );
        for (x, y) in ma.iter().zip(&mb) {
            // Remaining TTLs are kept (to the second), delays too.
            if let (Some(ex), Some(ey)) = (x.expires_at, y.expires_at) {
                assert!(ex.abs_diff(ey) < 2000, "{ex} {ey}");
            }
            assert_eq!(
                matches!(x.state, spool_engine::MessageState::Delayed(_)),
                matches!(y.state, spool_engine::MessageState::Delayed(_))
            );
        }
    }
    assert_eq!(sb.queue_config("forever").unwrap(), forever);
    assert_eq!(sb.queue_config("bounded").unwrap(), bounded);
    let ta = sa.topic_stats("events").unwrap();
    let tb = sb.topic_stats("events").unwrap();
    assert_eq!(ta.config, tb.config);
    assert_eq!(tb.config, topic);
    assert_eq!((ta.retained, ta.last_seq), (tb.retained, tb.last_seq));
    assert_eq!(ta.cursors, tb.cursors);
    let read = |s: &Store| {
        let mut c = s.cursor_at("events", 1).unwrap();
        let mut v = Vec::new();
        while let Some(m) = s.topic_next(&mut c).unwrap() {
            v.push(m.payload);
        }
        v
    };
    assert_eq!(read(&sa), read(&sb));
    sa.close().unwrap();
    sb.close().unwrap();
}

#[test]
fn import_names_the_line_of_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("s");
    let header = r#"{"spool_export":1}"#;
    let queue = r#"{"type":"queue","name":"q","config":{}}"#;
    let cases: &[(String, &str)] = &[
        ("hello\n".to_string(), "line 1: not a JSON object"),
        (r#"{"a":1}"#.to_string() + "\n", "line 1: not a spool export"),
        (
            format!("{header}\n{queue}\n{{\"type\":\"message\",\"queue\":\"q\"}}\n"),
            "line 3: a message needs payload",
        ),
        (
            format!("{header}\n{{\"type\":\"message\",\"queue\":\"q\",\"payload\":\"x\"}}\n"),
            "line 2: message of queue \"q\", which is not defined",
        ),
        (
            format!("{header}\n{queue}\n{{\"type\":\"message\",\"queue\":\"q\",\"payload\":\"x\",\"priority\":300}}\n"),
            "line 3: priority 300",
        ),
        (
            format!("{header}\n{{\"type\":\"queue\",\"name\":\"q\",\"config\":{{\"visibilty_ms\":1}}}}\n"),
            "line 2: unknown field \"visibilty_ms\"",
        ),
        (format!("{header}\n{queue}\n"), "without the end line"),
    ];
    for (input, needle) in cases {
        let out = run(&d, &["inspect", "import"], Some(input.as_bytes()));
        assert!(!out.status.success(), "{input}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{input}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        if needle.starts_with("line 1") {
            assert!(!d.exists(), "a bad header must not create a store");
        }
    }
}

#[test]
fn salvage_copies_everything_readable_and_counts_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("s");
    let jobs = build(&d);
    // Damage the payload of one message in the middle of segment 2. A checkpoint covers it,
    // so opening does not look there: reading that record fails its checksum.
    let data = std::fs::read(seg_path(&d, 2)).unwrap();
    let mut victim = None;
    for (off, _, len) in frames(&d, 2).into_iter().skip(3) {
        let FrameCheck::Valid { entries, .. } = check_frame(&data[off..off + len]) else {
            unreachable!()
        };
        let base = off + entries.start;
        decode_entries_at(&data[base..off + entries.end], 0, |e, eoff, elen| {
            if let Entry::Enqueue(q) = e {
                if victim.is_none() && q.payload.starts_with(b"job") {
                    victim = Some((q.id, base + eoff + elen - 2));
                }
            }
        })
        .unwrap();
        if victim.is_some() {
            break;
        }
    }
    let (victim_id, at) = victim.expect("a job in segment 2");
    flip(&seg_path(&d, 2), at);

    let dest = tmp.path().join("rescued");
    let out = ok(&d, &["inspect", "salvage", dest.to_str().unwrap()]);
    assert!(out.contains("1 unreadable"), "{out}");
    assert!(out.contains(&format!("ids {victim_id}")), "{out}");
    assert!(out.contains("2 queues, 1 topics"), "{out}");
    let s = Store::open(&dest, options()).unwrap();
    let got: Vec<String> = s
        .messages("jobs")
        .unwrap()
        .iter()
        .map(|m| String::from_utf8(m.payload.to_vec()).unwrap())
        .collect();
    let want: Vec<String> = jobs
        .iter()
        .filter(|(id, _)| *id != victim_id)
        .map(|(_, p)| p.clone())
        .collect();
    assert_eq!(got, want);
    assert_eq!(s.messages("mail").unwrap().len(), 30);
    assert_eq!(s.topic_stats("events").unwrap().retained, 12);
    s.close().unwrap();

    // A second salvage into the same place is refused.
    let again = run(&d, &["inspect", "salvage", dest.to_str().unwrap()], None);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a spool store"));
}

#[test]
fn salvage_reports_the_damage_recovery_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("s");
    // No checkpoint: opening replays the whole log and meets the damage.
    let s = Store::open(
        &d,
        Options {
            checkpoint_bytes: 0,
            ..options()
        },
    )
    .unwrap();
    for i in 0..100 {
        s.push("q", Push::new(format!("message {i} {}", "y".repeat(40))))
            .unwrap();
    }
    s.close().unwrap();
    let fr = frames(&d, 2);
    let (off, lsn, len) = fr[fr.len() / 2];
    flip(&seg_path(&d, 2), off + len - 2);
    let refused = run(&d, &["inspect", "dump"], None);
    assert_eq!(refused.status.code(), Some(5));
    let dest = tmp.path().join("rescued");
    let out = ok(&d, &["inspect", "salvage", dest.to_str().unwrap()]);
    assert!(out.contains("99 messages"), "{out}");
    assert!(out.contains("0 unreadable"), "{out}");
    assert!(out.contains("skipped 1 damaged range"), "{out}");
    assert!(out.contains(&format!("LSN {lsn}..={lsn}")), "{out}");
    assert!(ok(&dest, &["inspect", "verify"]).contains("ok: no problems found"));
}

#[test]
fn every_inspect_subcommand_help_has_an_example() {
    let tmp = tempfile::tempdir().unwrap();
    for sub in ["verify", "dump", "stats", "export", "import", "salvage"] {
        let out = ok(tmp.path(), &["inspect", sub, "--help"]);
        assert!(
            out.contains("Example"),
            "{sub} --help has no example:\n{out}"
        );
    }
}
