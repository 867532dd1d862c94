//! `spool serve`'s HTTP/JSON front end as a user drives it: the real binary on free ports,
//! the real `curl`. No timing assertions: waits are "until this holds", bounded only so that a
//! broken build fails instead of hanging.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(15);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

struct Serve {
    dir: tempfile::TempDir,
    child: Child,
    base: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    fn start() -> Serve {
        Serve::start_with_env(&[])
    }

    /// With `SPOOL_SERVE__` variables; its log goes to `serve.log` in [`Serve::dir`].
    fn start_with_env(env: &[(&str, &str)]) -> Serve {
        let dir = tempfile::tempdir().expect("tempdir");
        let (resp, http) = (free_port(), free_port());
        let log = std::fs::File::create(dir.path().join("serve.log")).expect("log file");
        let child = super::spool(&dir.path().join("store"))
            .args(["serve", "--bind", &format!("127.0.0.1:{resp}")])
            .args(["--http", &format!("127.0.0.1:{http}")])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn spool serve");
        let s = Serve {
            dir,
            child,
            base: format!("http://127.0.0.1:{http}"),
        };
        let deadline = Instant::now() + WAIT;
        while s.curl(&["/health/live"]).0 != 200 {
            assert!(Instant::now() < deadline, "spool serve did not answer HTTP");
            thread::sleep(Duration::from_millis(20));
        }
        s
    }

    /// `curl` with `args` (the first one that starts with `/` is the path): (status, body).
    fn curl(&self, args: &[&str]) -> (u16, String) {
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                if a.starts_with('/') {
                    format!("{}{a}", self.base)
                } else {
                    (*a).to_string()
                }
            })
            .collect();
        let out = Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", "--max-time", "30"])
            .args(&args)
            .output()
            .expect("curl (apt-get install curl; scripts/test installs it)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    fn json(&self, args: &[&str]) -> (u16, serde_json::Value) {
        let (s, b) = self.curl(args);
        (
            s,
            serde_json::from_str(&b).unwrap_or(serde_json::Value::String(b)),
        )
    }
}

#[test]
fn http_errors_carry_the_section_8_5_codes_and_statuses() {
    let s = Serve::start();
    let cases: Vec<(Vec<&str>, u16, &str)> = vec![
        (
            vec!["-X", "POST", "/v1/queues/bad!name/messages", "-d", "x"],
            400,
            "BADNAME",
        ),
        (
            vec!["-X", "POST", "/v1/queues/q/lease?count=0"],
            400,
            "BADARG",
        ),
        (
            vec!["-X", "POST", "/v1/queues/q/lease?bogus=1"],
            400,
            "BADARG",
        ),
        (vec!["/v1/queues/nothere"], 404, "NOQUEUE"),
        (vec!["/v1/topics/nothere"], 404, "NOTOPIC"),
        (
            vec!["-X", "DELETE", "/v1/queues/q/messages/nonsense"],
            400,
            "BADARG",
        ),
        (
            vec!["-X", "POST", "/v1/queues/q/messages/1:1/dead"],
            404,
            "NOQUEUE",
        ),
    ];
    for (args, status, code) in cases {
        let (got, v) = s.json(&args);
        assert_eq!(
            (got, v["error"].as_str()),
            (status, Some(code)),
            "{args:?}: {v}"
        );
    }
    // NOTFOUND and LEASELOST on acks; EXISTS on a create with another config; TOOBIG.
    s.curl(&["-X", "POST", "/v1/queues/q/messages", "-d", "one"]);
    let (_, v) = s.json(&["-X", "POST", "/v1/queues/q/lease?vt=1"]);
    let r1 = v["messages"][0]["receipt"]
        .as_str()
        .expect("receipt")
        .to_string();
    let deadline = Instant::now() + WAIT;
    let r2 = loop {
        let (_, v) = s.json(&["-X", "POST", "/v1/queues/q/lease?vt=60000&wait=1000"]);
        if let Some(r) = v["messages"][0]["receipt"].as_str() {
            break r.to_string();
        }
        assert!(Instant::now() < deadline, "the 1 ms lease never expired");
    };
    let (st, v) = s.json(&["-X", "DELETE", &format!("/v1/queues/q/messages/{r1}")]);
    assert_eq!((st, v["error"].as_str()), (409, Some("LEASELOST")), "{v}");
    let (st, _) = s.json(&["-X", "DELETE", &format!("/v1/queues/q/messages/{r2}")]);
    assert_eq!(st, 200);
    let (st, v) = s.json(&["-X", "DELETE", &format!("/v1/queues/q/messages/{r2}")]);
    assert_eq!((st, v["error"].as_str()), (404, Some("NOTFOUND")), "{v}");
    let json = ["-H", "content-type: application/json"];
    let (st, _) = s.json(&[
        json[0],
        json[1],
        "-X",
        "PUT",
        "/v1/queues/c",
        "-d",
        "{\"visibility_ms\":1000}",
    ]);
    assert_eq!(st, 201);
    let (st, v) = s.json(&[
        json[0],
        json[1],
        "-X",
        "PUT",
        "/v1/queues/c",
        "-d",
        "{\"visibility_ms\":2000}",
    ]);
    assert_eq!((st, v["error"].as_str()), (409, Some("EXISTS")), "{v}");
    let big = s.dir.path().join("big");
    std::fs::write(&big, vec![b'x'; 2 << 20]).expect("write a big body");
    let at = format!("@{}", big.display());
    let (st, v) = s.json(&["-X", "POST", "/v1/queues/q/messages", "--data-binary", &at]);
    assert_eq!((st, v["error"].as_str()), (413, Some("TOOBIG")), "{v}");
}

#[test]
fn a_long_poll_is_woken_by_a_push_from_another_client() {
    let s = Serve::start();
    let base = s.base.clone();
    let waiter = thread::spawn(move || {
        let out = Command::new("curl")
            .args(["-s", "-X", "POST", "--max-time", "70"])
            .arg(format!("{base}/v1/queues/wake/lease?wait=60000"))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    });
    // Push until the waiter has taken one (a push before it waits is simply leased at once).
    let deadline = Instant::now() + WAIT;
    while !waiter.is_finished() {
        assert!(Instant::now() < deadline, "the long-poll never returned");
        let (st, _) = s.curl(&["-X", "POST", "/v1/queues/wake/messages", "-d", "hello"]);
        assert_eq!(st, 201);
        thread::sleep(Duration::from_millis(200));
    }
    let got: serde_json::Value =
        serde_json::from_str(&waiter.join().expect("waiter")).expect("JSON");
    assert_eq!(got["messages"][0]["payload"], "hello", "{got}");
}

#[test]
fn sse_stream_resumes_after_last_event_id_and_openapi_health_metrics_answer() {
    let s = Serve::start();
    for p in ["a", "b", "c"] {
        let (st, _) = s.curl(&["-X", "POST", "/v1/topics/news/messages", "-d", p]);
        assert_eq!(st, 201);
    }
    // Resume after seq 1: the stream sends 2 and 3 (curl stops at --max-time; the stream
    // itself never ends).
    let out = Command::new("curl")
        .args(["-sN", "--max-time", "3", "-H", "Last-Event-ID: 1"])
        .arg(format!("{}/v1/topics/news/stream", s.base))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("id: 1\n") && !text.contains("id:1\n"),
        "{text}"
    );
    assert!(text.contains("id: 2") || text.contains("id:2"), "{text}");
    assert!(
        text.contains("\\\"payload\\\":\\\"c\\\"") || text.contains("\"payload\":\"c\""),
        "{text}"
    );
    let (st, doc) = s.json(&["/v1/openapi.json"]);
    assert_eq!(st, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/v1/topics/{t}/stream"]["get"].is_object());
    assert_eq!(s.curl(&["/health/ready"]).0, 200);
    let (st, m) = s.curl(&["/metrics"]);
    assert_eq!(st, 200);
    assert!(m.contains("spool_topic_last_seq{topic=\"news\"} 3"), "{m}");
    assert!(m.contains("spool_http_requests_total{method=\"POST\",route=\"/v1/topics/{t}/messages\",status=\"201\"} 3"), "{m}");
}

#[test]
fn http_limits_and_durability_come_from_the_configuration() {
    let s = Serve::start_with_env(&[
        ("SPOOL_SERVE__HTTP__MAX_CONNECTIONS", "1"),
        ("SPOOL_SERVE__HTTP__MAX_HEADER_SIZE", "4KiB"),
        ("SPOOL_SERVE__STORE__DURABILITY", "interval:20ms"),
    ]);
    let log = std::fs::read_to_string(s.dir.path().join("serve.log")).expect("log");
    assert!(log.contains("durability = \"interval:20ms\""), "{log}");
    // A head over 4 KiB: 431.
    let big = format!("x-pad: {}", "a".repeat(6000));
    assert_eq!(s.curl(&["-H", &big, "/health/live"]).0, 431);
    // One keep-alive connection held open: the next one is refused with BUSY.
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut held = std::net::TcpStream::connect(&addr).expect("connect");
    held.write_all(b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n")
        .expect("send");
    let mut buf = [0u8; 512];
    let n = held.read(&mut buf).expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let (status, busy) = s.json(&["/health/live"]);
    assert_eq!(
        (status, &busy["error"]),
        (503, &serde_json::json!("BUSY")),
        "{busy}"
    );
    // Its slot comes back when it closes.
    drop(held);
    let deadline = Instant::now() + WAIT;
    while s.curl(&["/health/live"]).0 != 200 {
        assert!(
            Instant::now() < deadline,
            "the closed connection kept its slot"
        );
        thread::sleep(Duration::from_millis(20));
    }
}
