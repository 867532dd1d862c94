//! `spool serve` with real Python clients: the unmodified dsmq client (`pip install dsmq`)
//! against `--dsmq`, and redis-py used the way psmq users use a queue (push, get with a
//! visibility timeout, delete), in RESP2 and RESP3. The interpreter comes from
//! `SPOOL_TEST_PYTHON` (a virtual environment `scripts/test` creates with both packages);
//! without it these tests say so and pass, so that a bare `cargo test` still runs.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

fn python() -> Option<PathBuf> {
    let p = std::env::var_os("SPOOL_TEST_PYTHON").map(PathBuf::from);
    if p.is_none() {
        eprintln!(
            "skipped: SPOOL_TEST_PYTHON is not set (scripts/test creates target/pyenv with dsmq \
             and redis-py and sets it)"
        );
    }
    p
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `spool serve` with the dsmq listener on; SIGKILLed when dropped.
struct Serve {
    _dir: tempfile::TempDir,
    child: Child,
    port: u16,
    dsmq: u16,
}

impl Serve {
    fn start(extra: &[&str], config: Option<&str>) -> Serve {
        let dir = tempfile::tempdir().expect("tempdir");
        let (port, dsmq) = (free_port(), free_port());
        let mut c = super::spool(&dir.path().join("store"));
        c.args(["serve", "--no-http", "--bind", &format!("127.0.0.1:{port}")])
            .args(["--dsmq", &format!("127.0.0.1:{dsmq}")])
            .args(extra);
        if let Some(text) = config {
            let path = dir.path().join("serve.toml");
            std::fs::write(&path, text).expect("write the config");
            c.arg("--config").arg(&path);
        }
        let child = c
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn spool serve");
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", dsmq)).is_err()
            || TcpStream::connect(("127.0.0.1", port)).is_err()
        {
            assert!(Instant::now() < deadline, "spool serve did not listen");
            thread::sleep(Duration::from_millis(20));
        }
        Serve {
            _dir: dir,
            child,
            port,
            dsmq,
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `script` with `python`, arguments `args`; panics with its output unless it exits 0.
fn run_python(python: &Path, script: &str, args: &[String]) -> String {
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("run python");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the Python client failed:\n{text}");
    text
}

const DSMQ_SCRIPT: &str = r#"
import sys
from dsmq.client import connect

port = int(sys.argv[1])
w = connect("127.0.0.1", port)
r = connect("127.0.0.1", port)

# Nothing there: "".
assert r.get("test") == "", "empty get"
w.put("test", "test_msg")
assert r.get_wait("test") == "test_msg", "a reader gets what a writer put"
assert r.get("test") == "", "read once"

# dsmq's history cutoff: a connection sees only what came after it connected.
late = connect("127.0.0.1", port)
assert late.get("test") == "", "published before it connected"
w.put("test", "after")
assert late.get_wait("test") == "after", "the late reader"
assert r.get_wait("test") == "after", "two readers both receive"

# FIFO across writers, per topic; topics independent.
w2 = connect("127.0.0.1", port)
for i in range(5):
    w.put("fifo", f"a{i}")
assert w.get("fifo") == "a0", "a writer reads its own puts (published after it connected)"
got = [r.get_wait("fifo") for _ in range(5)]
assert got == [f"a{i}" for i in range(5)], got
w2.put("fifo", "b0")
assert r.get_wait("fifo") == "b0"
w.put("test_A", "A")
w.put("test_B", "B")
assert r.get_wait("test_B") == "B" and r.get_wait("test_A") == "A", "multitopics"

# get_latest skips to the newest; then nothing.
for i in range(5):
    w.put("latest", f"test_msg {i}")
assert w.get_latest("latest") == "test_msg 4", "newest"
assert w.get_latest("latest") == "", "older ones skipped"

# Non-ASCII text and an empty message round-trip.
w.put("text", "grüße ✓")
w.put("text", "")
assert r.get_wait("text") == "grüße ✓"

# A shutdown this listener does not allow is refused: the server goes on.
w.shutdown_server()
w.put("after_shutdown", "still here")
assert r.get_wait("after_shutdown") == "still here", "the server kept serving"
for c in (w, w2, r, late):
    c.close()
print("dsmq ok")
"#;

#[test]
fn the_dsmq_python_client_works_against_spool() {
    let Some(python) = python() else { return };
    let s = Serve::start(&[], None);
    let out = run_python(&python, DSMQ_SCRIPT, &[s.dsmq.to_string()]);
    assert!(out.contains("dsmq ok"), "{out}");
    // The messages are durable topic messages: the Redis-protocol side sees them too.
    let stats = Command::new("redis-cli")
        .args(["-p", &s.port.to_string(), "TSTATS", "fifo"])
        .output()
        .expect("redis-cli");
    let text = String::from_utf8_lossy(&stats.stdout);
    assert!(text.contains("last_seq\n6"), "{text}");
}

const SHUTDOWN_SCRIPT: &str = r#"
import sys
from dsmq.client import connect

c = connect("127.0.0.1", int(sys.argv[1]))
c.put("t", "x")
c.shutdown_server()
print("asked")
"#;

#[test]
fn dsmq_shutdown_stops_the_server_only_for_an_allowed_admin() {
    let Some(python) = python() else { return };
    let hash = {
        let mut c = Command::new(env!("CARGO_BIN_EXE_spool"))
            .args(["serve", "hash-password"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spool serve hash-password");
        c.stdin
            .take()
            .expect("stdin")
            .write_all(b"secret\n")
            .expect("write");
        let out = c.wait_with_output().expect("wait");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let config = format!(
        "[dsmq]\nuser = \"ops\"\nallow_shutdown = true\n\n[[users]]\nname = \"ops\"\n\
         password_hash = \"{hash}\"\npermissions = [{{ pattern = \"*\", access = \"admin\" }}]\n"
    );
    let mut s = Serve::start(&[], Some(&config));
    run_python(&python, SHUTDOWN_SCRIPT, &[s.dsmq.to_string()]);
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = s.child.try_wait().expect("try_wait") {
            assert!(status.success(), "a clean stop: {status}");
            break;
        }
        assert!(Instant::now() < deadline, "the server did not stop");
        thread::sleep(Duration::from_millis(20));
    }

    // The same shutdown, from a user without admin: refused, the server serves on.
    let config = config.replace("access = \"admin\"", "access = \"write\"");
    let s = Serve::start(&[], Some(&config));
    run_python(&python, SHUTDOWN_SCRIPT, &[s.dsmq.to_string()]);
    thread::sleep(Duration::from_millis(200));
    assert!(
        TcpStream::connect(("127.0.0.1", s.dsmq)).is_ok(),
        "a write-only user cannot stop the server"
    );
}

const PSMQ_SCRIPT: &str = r#"
import sys, time
import redis

port, protocol = int(sys.argv[1]), int(sys.argv[2])
r = redis.Redis(host="127.0.0.1", port=port, protocol=protocol)
assert r.ping()

# push
msg_id = r.execute_command("QPUSH", "jobs", "resize photo 17")
# get with a visibility timeout of 200 ms: [id, receipt, payload, priority, enqueued_at,
# first_received_at, receive_count, visible_at]
[rec] = r.execute_command("QGET", "jobs", "VT", "200")
assert rec[0] == msg_id and rec[2] == b"resize photo 17" and rec[6] == 1, rec
first_receipt = rec[1]
# hidden while leased
assert r.execute_command("QGET", "jobs") == [], "hidden during its visibility timeout"
time.sleep(0.4)
# back after the timeout, received a second time (also for a message older than the VT)
[rec] = r.execute_command("QGET", "jobs", "VT", "30000")
assert rec[0] == msg_id and rec[6] == 2, rec
# the first receipt is stale now
try:
    r.execute_command("QACK", "jobs", first_receipt)
    raise AssertionError("a stale receipt was accepted")
except redis.ResponseError as e:
    assert str(e).startswith("LEASELOST"), e
# delete
assert r.execute_command("QDEL", "jobs", rec[1]) == 1
try:
    r.execute_command("QDEL", "jobs", rec[1])
    raise AssertionError("deleted twice")
except redis.ResponseError as e:
    assert str(e).startswith("NOTFOUND"), e
assert r.execute_command("QGET", "jobs") == []
print("psmq-style ok", protocol)
"#;

#[test]
fn redis_py_works_psmq_style_in_resp2_and_resp3() {
    let Some(python) = python() else { return };
    let s = Serve::start(&[], None);
    for protocol in ["2", "3"] {
        let out = run_python(
            &python,
            PSMQ_SCRIPT,
            &[s.port.to_string(), protocol.to_string()],
        );
        assert!(out.contains("psmq-style ok"), "{out}");
    }
}
