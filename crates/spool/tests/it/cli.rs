//! The command line as a user and a script rely on it: output shapes, errors, exit codes.

use std::fmt::Write as _;

use serde_json::Value;

use crate::{ok, run};

fn json_lines(s: &str) -> Vec<Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

#[test]
fn push_lease_ack_from_the_shell() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("s");
    let id: u64 = ok(&d, &["push", "jobs", "hello", "--priority", "3"])
        .trim()
        .parse()
        .unwrap();
    let out = run(&d, &["push", "jobs"], Some(b"from stdin"));
    assert!(out.status.success());
    let leased = json_lines(&ok(&d, &["lease", "jobs", "--count", "5", "--json"]));
    assert_eq!(leased.len(), 2);
    assert_eq!(leased[0]["id"], id);
    assert_eq!(leased[0]["payload"], "hello");
    assert_eq!(leased[0]["priority"], 3);
    assert_eq!(leased[0]["receive_count"], 1);
    assert_eq!(leased[1]["payload"], "from stdin");
    let r0 = leased[0]["receipt"].as_str().unwrap().to_string();
    let r1 = leased[1]["receipt"].as_str().unwrap().to_string();
    ok(&d, &["ack", "jobs", &r0]);
    ok(&d, &["nack", "jobs", &r1]);
    // Acking again: a clear error and the not-found exit code.
    let again = run(&d, &["ack", "jobs", &r0], None);
    assert_eq!(again.status.code(), Some(4));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("not found"), "{err}");
    let stats: Value = serde_json::from_str(ok(&d, &["stats", "jobs", "--json"]).trim()).unwrap();
    assert_eq!(stats["visible"], 1);
    assert_eq!(stats["leased"], 0);
    assert_eq!(stats["totals"]["acked"], 1);
    assert_eq!(ok(&d, &["queues"]).trim(), "jobs");
}

#[test]
fn human_lease_output_is_receipt_tab_payload() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("s");
    ok(&d, &["push", "q", "line one\nline two"]);
    let out = ok(&d, &["lease", "q"]);
    let (receipt, payload) = out.trim_end().split_once('\t').unwrap();
    assert!(receipt.contains(':'));
    assert_eq!(payload, "line one\\nline two");
}

#[test]
fn push_lines_prints_one_id_per_line_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("s");
    let mut input = String::new();
    for i in 0..2500 {
        writeln!(input, "m{i}").unwrap();
    }
    let out = run(&d, &["push", "q", "--lines"], Some(input.as_bytes()));
    assert!(out.status.success());
    let ids: Vec<u64> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(ids.len(), 2500);
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    let popped = json_lines(&ok(&d, &["pop", "q", "--count", "3", "--json"]));
    assert_eq!(popped[0]["payload"], "m0");
    assert_eq!(popped[2]["payload"], "m2");
    assert!(popped[0]["receipt"].is_null());
}

#[test]
fn peek_changes_nothing_and_pop_removes() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("s");
    ok(&d, &["push", "q", "a"]);
    ok(&d, &["peek", "q"]);
    ok(&d, &["peek", "q"]);
    assert_eq!(
        json_lines(&ok(&d, &["pop", "q", "--json"]))[0]["payload"],
        "a"
    );
    assert_eq!(ok(&d, &["pop", "q"]), "");
}

#[test]
fn delay_and_ttl_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("s");
    ok(&d, &["push", "q", "later", "--delay", "1h"]);
    ok(&d, &["push", "q", "now", "--ttl", "1h", "--subject", "a/b"]);
    let m = json_lines(&ok(&d, &["lease", "q", "--count", "5", "--json"]));
    assert_eq!(m.len(), 1);
    assert_eq!(m[0]["payload"], "now");
    assert_eq!(m[0]["subject"], "a/b");
    assert!(m[0]["expires_at"].as_u64().unwrap() > m[0]["enqueued_at"].as_u64().unwrap());
    let s: Value = serde_json::from_str(ok(&d, &["stats", "q", "--json"]).trim()).unwrap();
    assert_eq!(s["delayed"], 1);
}

#[test]
fn topics_from_the_shell() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("s");
    assert_eq!(ok(&d, &["topic", "publish", "t", "one"]).trim(), "1");
    assert_eq!(ok(&d, &["topic", "publish", "t", "two"]).trim(), "2");
    let all = json_lines(&ok(&d, &["topic", "read", "t", "--json"]));
    assert_eq!(all.len(), 2);
    assert_eq!(all[1]["seq"], 2);
    assert_eq!(all[1]["payload"], "two");
    let from = ok(&d, &["topic", "read", "t", "--from", "2"]);
    assert_eq!(from, "2\ttwo\n");
}

#[test]
fn binary_payloads_are_base64_in_json() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("s");
    let out = run(&d, &["push", "q"], Some(&[0xff, 0x00, 0x10]));
    assert!(out.status.success());
    let m = json_lines(&ok(&d, &["peek", "q", "--json"]));
    assert_eq!(m[0]["payload_base64"], "/wAQ");
    assert!(m[0].get("payload").is_none());
}

#[test]
fn bad_input_gets_one_line_cause_and_hint() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("s");
    let cases: &[(&[&str], &str)] = &[
        (&["push", "bad name", "x"], "names are"),
        (&["lease", "missing"], "unknown queue"),
        (&["ack", "q", "nonsense"], "expected <id>:<generation>"),
        (&["push", "q", "x", "--delay", "10"], "has no unit"),
    ];
    for (args, needle) in cases {
        let out = run(&d, args, None);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn a_directory_that_is_not_a_store_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("precious.txt"), "do not touch").unwrap();
    let out = run(tmp.path(), &["push", "q", "x"], None);
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a spool store"));
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("precious.txt")).unwrap(),
        "do not touch"
    );
}

#[test]
fn every_subcommand_help_has_an_example() {
    let tmp = tempfile::tempdir().unwrap();
    for sub in [
        &["push"][..],
        &["lease"],
        &["ack"],
        &["nack"],
        &["pop"],
        &["peek"],
        &["stats"],
        &["queues"],
        &["topic", "publish"],
        &["topic", "read"],
        &["demo"],
        &["bench", "engine"],
    ] {
        let mut args = sub.to_vec();
        args.push("--help");
        let out = ok(tmp.path(), &args);
        assert!(
            out.contains("Example"),
            "{sub:?} --help has no example:\n{out}"
        );
    }
}

#[test]
fn the_demo_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("s");
    let out = ok(&d, &["demo", "--messages", "3000"]);
    assert!(out.contains("pushed 3000 messages"), "{out}");
    assert!(out.contains("leased and acked 3000 messages"), "{out}");
}

#[test]
fn spool_dir_env_is_the_default_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("from-env");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spool"))
        .args(["push", "q", "x"])
        .env("SPOOL_DIR", &d)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(d.join("FORMAT").exists());
}

#[test]
fn read_only_commands_do_not_create_a_store_for_a_mistyped_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("typo");
    for args in [
        &["stats"][..],
        &["queues"],
        &["peek", "q"],
        &["lease", "q"],
        &["topic", "read", "t"],
    ] {
        let out = run(&d, args, None);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no spool store"), "{args:?}: {err}");
        assert!(!d.exists(), "{args:?} created {}", d.display());
    }
    ok(&d, &["push", "q", "x"]);
    assert!(ok(&d, &["stats"]).contains('q'));
}

#[test]
fn a_large_payload_is_streamed_from_a_file_and_survives_export_and_import() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("s");
    // The default queue takes payloads up to 1 MiB: a queue that takes more, via import.
    let file = tmp.path().join("big.bin");
    let data: Vec<u8> = (0..(3 << 20) + 5).map(|i: usize| (i % 251) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    let too_big = run(&d, &["push", "big", "--file", file.to_str().unwrap()], None);
    assert!(!too_big.status.success(), "the default limit is 1 MiB");
    assert!(String::from_utf8_lossy(&too_big.stderr).contains("max_payload_bytes"));
    // A store whose queue takes it: create it through the library.
    {
        let s = spool_engine::Store::open(&d, spool_engine::Options::default()).unwrap();
        s.create_queue(
            "big",
            spool_engine::QueueConfig {
                max_payload_bytes: 8 << 20,
                ..spool_engine::QueueConfig::default()
            },
        )
        .unwrap();
        s.close().unwrap();
    }
    let id: u64 = ok(&d, &["push", "big", "--file", file.to_str().unwrap()])
        .trim()
        .parse()
        .unwrap();
    let peeked = json_lines(&ok(&d, &["peek", "big", "--json"]));
    assert_eq!(peeked[0]["id"], id);
    assert_eq!(peeked[0]["payload_blob_bytes"], data.len());
    // Streamed out to a file by a lease (one message at a time).
    let out_file = tmp.path().join("out.bin");
    let bad = run(
        &d,
        &["lease", "big", "--count", "2", "--payload-to", "x"],
        None,
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--count 1"));
    ok(
        &d,
        &[
            "lease",
            "big",
            "--visibility",
            "1ms",
            "--payload-to",
            out_file.to_str().unwrap(),
        ],
    );
    assert_eq!(std::fs::read(&out_file).unwrap(), data);
    std::thread::sleep(std::time::Duration::from_millis(5));
    // Export and import into a fresh store: the payload comes through whole.
    let export = ok(&d, &["inspect", "export"]);
    let d2 = tmp.path().join("s2");
    let out = run(&d2, &["inspect", "import"], Some(export.as_bytes()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dumped = json_lines(&ok(&d2, &["inspect", "dump", "--queue", "big"]));
    assert_eq!(dumped.len(), 1);
    let b64 = dumped[0]["payload_base64"].as_str().unwrap();
    let back = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).unwrap();
    assert_eq!(back, data);
}
