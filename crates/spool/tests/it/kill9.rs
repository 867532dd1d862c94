//! A real process killed with SIGKILL while pushing under load: every push it reported as
//! durable (printed id) must be in the store afterwards, exactly once, and nothing else.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::spool;

/// How many times the child is killed (the issue asks for at least 50).
const KILLS: usize = 60;

#[test]
fn sigkill_during_pushes_loses_nothing_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    // payload -> id, for everything the children reported as durable
    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut sent_total = 0usize;
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    for round in 0..KILLS {
        let mut child = spool(&dir)
            .args(["push", "q", "--lines"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn spool");
        let mut stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let stop = Arc::new(AtomicBool::new(false));
        // Feed lines as fast as the child takes them, in bursts of varying size.
        let feeder_stop = stop.clone();
        let feeder = std::thread::spawn(move || {
            let mut sent = Vec::new();
            let mut i = 0usize;
            while !feeder_stop.load(Ordering::Relaxed) {
                let mut burst = String::new();
                for k in 0..=(i % 97) {
                    let _ = writeln!(burst, "r{round}-m{}", i + k);
                }
                if stdin.write_all(burst.as_bytes()).is_err() {
                    break;
                }
                let n = 1 + i % 97;
                sent.extend((i..i + n).map(|k| format!("r{round}-m{k}")));
                i += n;
            }
            sent
        });
        let reader = std::thread::spawn(move || {
            let mut ids = Vec::new();
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) => ids.push(l.trim().parse::<u64>().expect("ids are numbers")),
                    Err(_) => break,
                }
            }
            ids
        });
        // Kill at a random moment: early (during open or recovery) to late (mid-stream).
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let wait_ms = 5 + rng % 150;
        std::thread::sleep(Duration::from_millis(wait_ms));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        stop.store(true, Ordering::Relaxed);
        let sent = feeder.join().expect("feeder");
        let ids = reader.join().expect("reader");
        assert!(
            ids.len() <= sent.len(),
            "round {round}: more ids than lines"
        );
        // The i-th printed id is the i-th line (push --lines keeps order).
        for (payload, id) in sent.iter().zip(&ids) {
            assert!(acked.insert(payload.clone(), *id).is_none());
        }
        sent_total += sent.len();
    }
    let present = super::check_acknowledged(&dir, "q", &acked);
    assert!(
        acked.len() > KILLS,
        "the children acknowledged too few pushes ({}) to mean anything",
        acked.len()
    );
    eprintln!(
        "kill -9 x{KILLS}: {} lines sent, {} acknowledged, {} present",
        sent_total,
        acked.len(),
        present
    );
}
