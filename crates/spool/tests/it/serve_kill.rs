//! `spool serve` killed with SIGKILL while clients push under load: every push the server
//! answered with an id (its reply is sent once the push is durable) must be in the store
//! afterwards, exactly once, under that id, and nothing else. Clients pipeline bursts of
//! `QPUSH`es over several connections, so the replies come out of shared group commits.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use spool_resp::{Decoder, Frame, Limits};

/// Server kills (each after a random time under load).
const KILLS: usize = 20;
/// Client connections per round.
const CLIENTS: usize = 6;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn qpush(queue: &str, payload: &str) -> Vec<u8> {
    let words: [&[u8]; 3] = [b"QPUSH", queue.as_bytes(), payload.as_bytes()];
    let mut v = format!("*{}\r\n", words.len()).into_bytes();
    for w in words {
        v.extend_from_slice(format!("${}\r\n", w.len()).as_bytes());
        v.extend_from_slice(w);
        v.extend_from_slice(b"\r\n");
    }
    v
}

/// One client: pipelines bursts of pushes until the connection breaks; returns every
/// (payload, id) the server answered.
fn client(port: u16, round: usize, c: usize, stop: &AtomicBool) -> Vec<(String, u64)> {
    let mut acked = Vec::new();
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return acked;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut decoder = Decoder::new(Limits::default());
    let mut buf = BytesMut::new();
    let mut i = 0usize;
    let mut chunk = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        let burst = 1 + (i * 7 + c) % 32;
        let payloads: Vec<String> = (i..i + burst)
            .map(|k| format!("r{round}-c{c}-m{k}"))
            .collect();
        i += burst;
        let mut out = Vec::new();
        for p in &payloads {
            out.extend(qpush("q", p));
        }
        if s.write_all(&out).is_err() {
            return acked;
        }
        for p in payloads {
            let reply = loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(f)) => break f,
                    Ok(None) => {}
                    Err(e) => panic!("round {round}: the server sent bad RESP: {e}"),
                }
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => return acked,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            match reply {
                Frame::Bulk(b) => {
                    let id = std::str::from_utf8(&b)
                        .ok()
                        .and_then(|t| t.parse::<u64>().ok())
                        .unwrap_or_else(|| panic!("round {round}: QPUSH answered {b:?}"));
                    acked.push((p, id));
                }
                other => panic!("round {round}: QPUSH of {p} answered {other:?}"),
            }
        }
    }
    acked
}

#[test]
fn sigkill_under_load_loses_no_acknowledged_push() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("store");
    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    for round in 0..KILLS {
        let port = free_port();
        let mut child = super::spool(&dir)
            .args(["serve", "--no-http", "--bind", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn spool serve");
        // Until it listens (it recovers the store first).
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "round {round}: spool serve did not listen"
            );
            thread::sleep(Duration::from_millis(10));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let stop = stop.clone();
                thread::spawn(move || client(port, round, c, &stop))
            })
            .collect();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        thread::sleep(Duration::from_millis(20 + rng % 300));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            for (p, id) in c.join().expect("client thread") {
                assert!(
                    acked.insert(p, id).is_none(),
                    "a payload acknowledged twice"
                );
            }
        }
    }
    let present = super::check_acknowledged(&dir, "q", &acked);
    assert!(
        acked.len() > KILLS * CLIENTS,
        "too few pushes were acknowledged ({}) to mean anything",
        acked.len()
    );
    eprintln!(
        "spool serve kill -9 x{KILLS}: {} pushes acknowledged, {} present",
        acked.len(),
        present
    );
}
