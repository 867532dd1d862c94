//! `spool serve` as a user runs it: the real binary on a free port, driven by the real
//! `redis-cli` (Debian's `redis-tools`) and, for a malformed frame, a plain socket. No test
//! asserts a timing: every wait is "until this holds", bounded only so that a broken build
//! fails instead of hanging.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Bound of every wait below (a failing build, not a slow machine, reaches it).
const WAIT: Duration = Duration::from_secs(15);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A running `spool serve` on a store in a temp directory; SIGKILLed when dropped.
struct Serve {
    dir: tempfile::TempDir,
    child: Child,
    port: u16,
}

impl Serve {
    fn start() -> Serve {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let child = super::spool(&dir.path().join("store"))
            .args(["serve", "--no-http", "--bind", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn spool serve");
        let s = Serve { dir, child, port };
        let deadline = Instant::now() + WAIT;
        while s.cli(&["PING"]) != "PONG" {
            assert!(Instant::now() < deadline, "spool serve did not answer PING");
            thread::sleep(Duration::from_millis(20));
        }
        s
    }

    /// `redis-cli -p PORT args...`: stdout and stderr, trimmed (raw output: one value a line).
    fn cli(&self, args: &[&str]) -> String {
        self.cli_with(&[], args, None)
    }

    fn cli_with(&self, opts: &[&str], args: &[&str], stdin: Option<&[u8]>) -> String {
        let mut c = Command::new("redis-cli");
        c.args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(opts)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c
            .spawn()
            .expect("redis-cli (apt-get install redis-tools; scripts/test installs it)");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input)
                .expect("write redis-cli stdin");
        }
        let out = child.wait_with_output().expect("wait redis-cli");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        text.trim().to_string()
    }

    fn lines(&self, args: &[&str]) -> Vec<String> {
        self.cli(args).lines().map(str::to_string).collect()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A request as RESP (what `redis-cli --pipe` sends as is).
fn resp(words: &[&[u8]]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", words.len()).into_bytes();
    for w in words {
        v.extend_from_slice(format!("${}\r\n", w.len()).as_bytes());
        v.extend_from_slice(w);
        v.extend_from_slice(b"\r\n");
    }
    v
}

#[test]
fn push_lease_ack_and_a_stale_receipt_is_leaselost() {
    let s = Serve::start();
    assert_eq!(
        s.cli(&["QPUSH", "jobs", "resize photo 17", "PRI", "5"]),
        "1"
    );
    // [id, receipt, payload, priority, enqueued_at_ms, first_received_at_ms, receive_count,
    //  visible_at_ms]
    let rec = s.lines(&["QGET", "jobs", "VT", "60000"]);
    assert_eq!(rec.len(), 8, "{rec:?}");
    assert_eq!(rec[0], "1");
    assert_eq!(rec[1], "1:1");
    assert_eq!(rec[2], "resize photo 17");
    assert_eq!(rec[3], "5");
    assert_eq!(rec[6], "1");
    let enqueued: u64 = rec[4].parse().expect("enqueued_at_ms");
    let visible: u64 = rec[7].parse().expect("visible_at_ms");
    assert!(visible >= enqueued + 60_000, "{rec:?}");
    // Hidden while leased.
    assert_eq!(s.cli(&["QGET", "jobs"]), "");
    assert_eq!(s.cli(&["QACK", "jobs", "1:1"]), "1");
    assert!(s.cli(&["QACK", "jobs", "1:1"]).starts_with("NOTFOUND"));

    // A lease that runs out: the message comes back with receive_count 2 and a new receipt;
    // the old receipt is stale.
    assert_eq!(s.cli(&["QPUSH", "jobs", "again"]), "2");
    let first = s.lines(&["QGET", "jobs", "VT", "1"]);
    assert_eq!(first[1], "2:1");
    let deadline = Instant::now() + WAIT;
    let second = loop {
        let r = s.lines(&["QGET", "jobs", "VT", "60000"]);
        if !r.is_empty() {
            break r;
        }
        assert!(Instant::now() < deadline, "the lease never ran out");
        thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(second[1], "2:2");
    assert_eq!(second[6], "2");
    let stale = s.cli(&["QACK", "jobs", "2:1"]);
    assert!(stale.starts_with("LEASELOST "), "{stale}");
    assert_eq!(s.cli(&["QACK", "jobs", "2:2"]), "1");
}

#[test]
fn qget_wait_blocks_until_a_push_arrives() {
    let s = Serve::start();
    let waiter = Command::new("redis-cli")
        .args(["-p", &s.port.to_string(), "QGET", "inbox", "WAIT", "30000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("redis-cli");
    assert_eq!(s.cli(&["QPUSH", "inbox", "news"]), "1");
    let out = waiter.wait_with_output().expect("wait redis-cli");
    let rec: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(rec.len(), 8, "{rec:?}");
    assert_eq!(rec[2], "news");
}

#[test]
fn errors_use_the_documented_codes_and_redis_wording() {
    let s = Serve::start();
    assert_eq!(
        s.cli(&["NOSUCH", "a", "b"]),
        "ERR unknown command 'NOSUCH', with args beginning with: 'a' 'b'"
    );
    assert!(s.cli(&["QPUSH", "bad name", "x"]).starts_with("BADNAME "));
    assert!(s.cli(&["QGET", "jobs", "VT", "0"]).starts_with("BADARG "));
    assert!(s.cli(&["QSTATS", "missing"]).starts_with("NOQUEUE "));
    assert_eq!(s.cli(&["QGET", "not.created.yet"]), "");
    assert_eq!(s.cli(&["SELECT", "0"]), "OK");
}

#[test]
fn pipelined_requests_all_get_replies_in_order() {
    let s = Serve::start();
    let mut input = Vec::new();
    for i in 0..200 {
        input.extend(resp(&[b"QPUSH", b"bulk", format!("m{i}").as_bytes()]));
    }
    let out = s.cli_with(&["--pipe"], &[], Some(&input));
    assert!(out.contains("errors: 0, replies: 200"), "{out}");
    let popped = s.lines(&["QPOP", "bulk", "COUNT", "1000"]);
    assert_eq!(popped.len(), 200 * 8);
    let payloads: Vec<&str> = popped.chunks(8).map(|r| r[2].as_str()).collect();
    let expected: Vec<String> = (0..200).map(|i| format!("m{i}")).collect();
    assert_eq!(payloads, expected, "FIFO within a priority");
}

#[test]
fn pipelined_publishes_all_get_their_sequence_numbers_in_order() {
    let s = Serve::start();
    let mut input = Vec::new();
    for i in 1..=100 {
        input.extend(resp(&[b"TPUB", b"ticks", format!("t{i}").as_bytes()]));
    }
    let out = s.cli_with(&["--pipe"], &[], Some(&input));
    assert!(out.contains("errors: 0, replies: 100"), "{out}");
    let first = s.lines(&["TGET", "ticks", "CURSOR", "1"]);
    assert_eq!(first[..2], ["1", "t1"]);
    let last = s.lines(&["TLATEST", "ticks", "CURSOR", "1"]);
    assert_eq!(last[..2], ["100", "t100"]);
    assert_eq!(last[4], "99", "skipped");
}

#[test]
fn an_oversize_payload_is_toobig_and_the_connection_goes_on() {
    let s = Serve::start();
    let big = vec![b'x'; (1 << 20) + 1];
    let mut input = resp(&[b"QPUSH", b"q", &big]);
    input.extend(resp(&[b"QPUSH", b"q", b"small"]));
    let out = s.cli_with(&["--pipe"], &[], Some(&input));
    assert!(out.contains("TOOBIG"), "{out}");
    assert!(out.contains("limit of 1048576 bytes"), "{out}");
    assert!(out.contains("errors: 1, replies: 2"), "{out}");
    assert_eq!(s.lines(&["QPEEK", "q"])[2], "small");
}

#[test]
fn a_protocol_error_closes_that_connection_only() {
    let s = Serve::start();
    let mut bad = TcpStream::connect(("127.0.0.1", s.port)).expect("connect");
    bad.set_read_timeout(Some(WAIT)).expect("timeout");
    bad.write_all(b"*1\r\n$x\r\n").expect("write");
    let mut reply = String::new();
    bad.read_to_string(&mut reply)
        .expect("the server closes the connection");
    assert!(reply.starts_with("-ERR Protocol error: "), "{reply:?}");
    assert_eq!(s.cli(&["PING"]), "PONG");
}

#[test]
fn hello_3_switches_to_resp3_replies() {
    let s = Serve::start();
    let hello = s.cli(&["-3", "HELLO", "3"]);
    assert!(hello.contains("proto") && hello.contains('3'), "{hello}");
    // A raw RESP3 exchange: HELLO's map, then QSTATS as a map too.
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).expect("connect");
    c.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut req = resp(&[b"HELLO", b"3"]);
    req.extend(resp(&[b"QPUSH", b"q", b"x"]));
    req.extend(resp(&[b"QSTATS", b"q"]));
    req.extend(resp(&[b"QUIT"]));
    c.write_all(&req).expect("write");
    let mut out = String::new();
    c.read_to_string(&mut out).expect("read until QUIT closes");
    assert!(out.starts_with("%7\r\n"), "{out:?}");
    assert!(out.contains("$5\r\nproto\r\n:3\r\n"), "{out:?}");
    // Ten counts, then the ten config keys.
    assert!(out.contains("%20\r\n$7\r\nvisible\r\n:1\r\n"), "{out:?}");
    assert!(out.contains("$5\r\nvt_ms\r\n:30000\r\n"), "{out:?}");
    assert!(out.ends_with("+OK\r\n"), "{out:?}");
}

#[test]
fn sigterm_stops_it_and_the_messages_stay() {
    let mut s = Serve::start();
    assert_eq!(s.cli(&["QPUSH", "kept", "durable"]), "1");
    let pid = s.child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + WAIT;
    let code = loop {
        if let Some(st) = s.child.try_wait().expect("try_wait") {
            break st;
        }
        assert!(Instant::now() < deadline, "spool serve ignored SIGTERM");
        thread::sleep(Duration::from_millis(20));
    };
    assert!(code.success(), "{code:?}");
    let store = s.dir.path().join("store");
    let out = super::ok(&store, &["peek", "kept"]);
    assert!(out.contains("durable"), "{out}");
}

#[test]
fn sigterm_stops_it_while_a_qget_waits() {
    let mut s = Serve::start();
    let mut waiter = TcpStream::connect(("127.0.0.1", s.port)).expect("connect");
    waiter.set_read_timeout(Some(WAIT)).expect("timeout");
    waiter.write_all(&resp(&[b"PING"])).expect("write");
    let mut pong = [0u8; 7];
    waiter.read_exact(&mut pong).expect("PONG");
    waiter
        .write_all(&resp(&[b"QGET", b"idle", b"WAIT", b"60000"]))
        .expect("write");
    // Another client's round trip: by its end the waiting QGET has almost surely been read.
    // (If not, the test still passes, proving less; it cannot fail for that reason.)
    assert_eq!(s.cli(&["PING"]), "PONG");
    let pid = s.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(st) = s.child.try_wait().expect("try_wait") {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "spool serve did not stop while a QGET was waiting"
        );
        thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let mut rest = Vec::new();
    let _ = waiter.read_to_end(&mut rest);
}

/// A raw connection that has been served one request (so the server has opened it: its
/// topic cursors stand where the topics were then).
fn served_connection(port: u16) -> TcpStream {
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    c.set_read_timeout(Some(WAIT)).expect("timeout");
    c.write_all(&resp(&[b"PING"])).expect("write");
    let mut pong = [0u8; 7];
    c.read_exact(&mut pong).expect("PONG");
    assert_eq!(&pong, b"+PONG\r\n");
    c
}

/// Reads from `c` until `want` is a suffix of what arrived (bounded by the read timeout).
fn read_until(c: &mut TcpStream, want: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).ends_with(want) {
        let n = c.read(&mut buf).expect("a reply before the read timeout");
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn twait_on_one_connection_is_woken_by_tpub_on_another() {
    let s = Serve::start();
    assert_eq!(s.cli(&["TPUB", "alerts", "old news"]), "1");
    let mut reader = served_connection(s.port);
    reader
        .write_all(&resp(&[b"TWAIT", b"alerts", b"TIMEOUT", b"30000"]))
        .expect("write");
    // Published after the reader connected: it is the reader's next message, whether the
    // TWAIT was already waiting or not.
    assert_eq!(s.cli(&["TPUB", "alerts", "fire"]), "2");
    let reply = read_until(&mut reader, ":0\r\n");
    // [seq, payload, published_at_ms, next_cursor, skipped]
    assert!(
        reply.starts_with("*5\r\n:2\r\n$4\r\nfire\r\n:"),
        "{reply:?}"
    );
    assert!(reply.ends_with(":3\r\n:0\r\n"), "{reply:?}");
    // A newcomer sees neither (dsmq's history cutoff); with a cursor, anyone reads both.
    assert_eq!(s.cli(&["TGET", "alerts"]), "");
    assert_eq!(s.lines(&["TGET", "alerts", "CURSOR", "1"])[1], "old news");
    assert_eq!(s.lines(&["TLATEST", "alerts", "CURSOR", "1"])[1], "fire");
    let stats = s.lines(&["TSTATS", "alerts"]);
    let at = |k: &str| {
        let i = stats.iter().position(|l| l == k).expect(k);
        stats[i + 1].clone()
    };
    assert_eq!(at("last_seq"), "2");
    assert_eq!(at("subscribers"), "1", "the waiting reader's connection");
}

#[test]
fn qpop_wait_blocks_until_a_push_arrives() {
    let s = Serve::start();
    let waiter = Command::new("redis-cli")
        .args(["-p", &s.port.to_string(), "QPOP", "inbox", "WAIT", "30000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("redis-cli");
    assert_eq!(s.cli(&["QPUSH", "inbox", "once"]), "1");
    let out = waiter.wait_with_output().expect("wait redis-cli");
    let rec: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(rec.len(), 8, "{rec:?}");
    assert_eq!(rec[1], "", "no receipt: at-most-once");
    assert_eq!(rec[2], "once");
    assert_eq!(s.cli(&["QPOP", "inbox"]), "", "popped means gone");
}

#[test]
fn queue_management_round_trip_with_redis_cli() {
    let s = Serve::start();
    assert_eq!(
        s.cli(&["QCREATE", "jobs", "MAXRECEIVES", "3", "VT", "60000"]),
        "1"
    );
    assert_eq!(
        s.cli(&["QCREATE", "jobs", "MAXRECEIVES", "3", "VT", "60000"]),
        "0"
    );
    let e = s.cli(&["QCREATE", "jobs"]);
    assert!(e.starts_with("EXISTS ") && e.contains("QCONFIG"), "{e}");
    assert_eq!(s.lines(&["QLIST", "jobs*"]), vec!["jobs", "jobs.dlq"]);
    assert_eq!(s.cli(&["QCONFIG", "jobs", "MAXLEN", "100"]), "OK");
    let config = s.lines(&["QCONFIG", "jobs"]);
    assert_eq!(
        config[..10],
        [
            "vt_ms",
            "60000",
            "delay_ms",
            "0",
            "maxsize",
            "1048576",
            "maxlen",
            "100",
            "maxreceives",
            "3"
        ]
    );
    assert_eq!(s.cli(&["QPUSH", "jobs", "broken job"]), "1");
    let rec = s.lines(&["QGET", "jobs"]);
    let receipt = rec[1].clone();
    let until: u64 = s
        .cli(&["QEXTEND", "jobs", &receipt, "VT", "120000"])
        .parse()
        .expect("visible_at_ms");
    let leased: u64 = rec[7].parse().expect("visible_at_ms");
    assert!(until > leased, "{until} {leased}");
    assert_eq!(
        s.cli(&["QDEAD", "jobs", &receipt, "REASON", "cannot parse"]),
        "2"
    );
    let e = s.cli(&["QACK", "jobs", &receipt]);
    assert!(e.starts_with("NOTFOUND "), "{e}");
    let e = s.cli(&["QREDRIVE", "jobs"]);
    assert!(e.starts_with("NODLQ "), "{e}");
    assert_eq!(s.cli(&["QREDRIVE", "jobs.dlq"]), "1");
    assert_eq!(s.lines(&["QPEEK", "jobs"])[2], "broken job");
    assert_eq!(s.cli(&["QPURGE", "jobs"]), "1");
    assert_eq!(s.cli(&["QDROP", "jobs"]), "1");
    assert_eq!(s.cli(&["QDROP", "jobs"]), "0");
    let e = s.cli(&["QPURGE", "jobs"]);
    assert!(e.starts_with("NOQUEUE "), "{e}");
    // Topics.
    assert_eq!(
        s.cli(&["TCREATE", "feed", "TTL", "60000", "MAXLEN", "2"]),
        "1"
    );
    assert_eq!(s.cli(&["TSUB", "feed"]), "1");
    assert_eq!(s.lines(&["TLIST"]), vec!["feed"]);
    assert_eq!(s.cli(&["TDROP", "feed"]), "1");
}

#[test]
fn error_replies_as_redis_cli_prints_them() {
    let s = Serve::start();
    // Interactive form: "(error) CODE message".
    let e = s.cli_with(&["--no-raw"], &["QCREATE", "q", "VT", "0"], None);
    assert!(e.starts_with("(error) BADARG VT 0 is out of range"), "{e}");
    let e = s.cli_with(&["--no-raw"], &["TWAIT", "t"], None);
    assert!(e.starts_with("(error) BADARG TWAIT needs TIMEOUT"), "{e}");
    assert_eq!(s.cli_with(&["--no-raw"], &["TGET", "t"], None), "(nil)");
    s.cli(&["QCREATE", "small", "MAXSIZE", "3"]);
    let e = s.cli(&["QPUSH", "small", "four"]);
    assert!(
        e.starts_with("TOOBIG ") && e.contains("limit of 3 bytes"),
        "{e}"
    );
    assert!(s.cli(&["TSTATS", "none"]).starts_with("NOTOPIC "));
    assert!(s.cli(&["TGET", "t", "CURSOR", "9"]).starts_with("BADARG "));
    assert!(s
        .cli(&["QEXTEND", "small", "1:1", "VT", "10"])
        .starts_with("NOTFOUND "));
}

#[test]
fn a_non_loopback_bind_is_refused_without_the_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = super::run(
        dir.path(),
        &["serve", "--bind", &format!("0.0.0.0:{}", free_port())],
        None,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no users are configured"), "{err}");
    assert!(err.contains("--allow-unauthenticated"), "{err}");
}
