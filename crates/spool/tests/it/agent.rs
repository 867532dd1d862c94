//! `spool agent` and `spool publish` as an operator runs them: the real binary, a real
//! Mosquitto on free ports (`spool_testkit::mosquitto`), HTTP probes over a plain socket,
//! signals and SIGKILL. No test asserts a timing: every wait is "until this holds", bounded
//! only so that a broken build fails instead of hanging.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use spool_testkit::mosquitto::{self, Broker, BrokerConfig, ClientOptions, Subscriber};

/// Exit code of an invalid configuration (README, "Exit codes").
const EXIT_CONFIG: i32 = 7;
/// Bound of every wait below (a failing build, not a slow machine, reaches it).
const WAIT: Duration = Duration::from_secs(15);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A test directory with an agent configuration in it.
struct Setup {
    dir: tempfile::TempDir,
    http: SocketAddr,
    listener: SocketAddr,
}

impl Setup {
    /// `agent.toml` for a broker on `broker_port`; `extra` is appended (whole sections).
    fn new(broker_port: u16, listener: bool, extra: &str) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let lst: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let id = dir
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().replace('.', ""))
            .unwrap_or_default();
        let text = format!(
            r#"[store]
dir = "store"
[upstream]
host = "127.0.0.1"
port = {broker_port}
client_id = "agent-test-{id}"
keepalive = "5s"
connect_timeout = "2s"
drain_timeout = "5s"
[upstream.backoff]
min = "50ms"
max = "300ms"
[listener]
enabled = {listener}
bind = "{lst}"
[http]
bind = "{http}"
[http.ready]
disconnected_for = "300ms"
{extra}"#
        );
        std::fs::write(dir.path().join("agent.toml"), text).expect("write agent.toml");
        Setup {
            dir,
            http,
            listener: lst,
        }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("agent.toml")
    }

    /// Starts `spool agent` (stderr to `agent.log` in the test directory).
    fn start(&self) -> Agent {
        Agent::spawn(
            &self.config(),
            &self.dir.path().join("agent.log"),
            self.http,
        )
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// `spool publish TOPIC PAYLOAD ARGS.. --config agent.toml`.
    fn publish(&self, topic: &str, payload: &str, args: &[&str]) -> Output {
        spool_publish(&self.config(), topic, payload, args)
    }

    /// `mosquitto_pub` to the agent's local listener.
    fn local_client(&self) -> ClientOptions {
        ClientOptions::new(self.listener.port())
    }
}

fn spool_publish(config: &Path, topic: &str, payload: &str, args: &[&str]) -> Output {
    spool_cmd()
        .args(["publish", topic, payload])
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .expect("run spool publish")
}

/// The binary with no `SPOOL_` or `RUST_LOG` variables from the test's environment.
fn spool_cmd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_spool"));
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("SPOOL_") || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    c
}

struct Agent {
    child: Child,
    http: SocketAddr,
}

impl Agent {
    fn spawn(config: &Path, log: &Path, http: SocketAddr) -> Agent {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("agent.log");
        let child = spool_cmd()
            .arg("agent")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn spool agent");
        Agent { child, http }
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid")
    }

    fn signal(&self, sig: i32) {
        assert!(send_signal(self.pid(), sig), "kill -{sig} failed");
    }

    /// Waits for the process to exit; its status.
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let until = Instant::now() + WAIT;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            assert!(Instant::now() < until, "the agent did not exit");
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits until `/health/live` answers 200.
    fn wait_live(&mut self, setup: &Setup) {
        wait_for("/health/live 200", || {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                panic!("the agent exited ({s}) during start-up:\n{}", setup.log());
            }
            get(self.http, "/health/live").is_some_and(|(c, _)| c == 200)
        });
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `kill -SIG PID` through the `kill` program (the workspace forbids `unsafe`, which
/// `libc::kill` needs).
fn send_signal(pid: i32, sig: i32) -> bool {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success())
}

/// One HTTP/1.1 GET: (status, body), or `None` when nothing answers.
fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn broker() -> Broker {
    Broker::start(BrokerConfig::default()).expect("start mosquitto")
}

/// A subscriber with a persistent session (it keeps its queue across broker restarts).
fn subscriber(broker: &Broker, filter: &str, qos: u8) -> Subscriber {
    let id = format!("checker-{}", free_port());
    let sub =
        Subscriber::start(&broker.client().persistent(&id), filter, qos).expect("mosquitto_sub");
    sub.wait_subscribed(1, WAIT).expect("subscribed");
    sub
}

/// Payloads received until every one of `want` arrived (or the wait ran out): counts by
/// payload.
fn receive_all(sub: &Subscriber, want: &[String]) -> BTreeMap<String, usize> {
    receive_all_within(sub, want, WAIT)
}

fn receive_all_within(
    sub: &Subscriber,
    want: &[String],
    wait: Duration,
) -> BTreeMap<String, usize> {
    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    let until = Instant::now() + wait;
    while want.iter().any(|w| !got.contains_key(w)) && Instant::now() < until {
        if let Some((_, p)) = sub.next_message(Duration::from_millis(100)) {
            *got.entry(text(&p)).or_default() += 1;
        }
    }
    got
}

#[test]
fn health_metrics_and_stats_and_readiness_follow_the_broker() {
    let mut broker = broker();
    let setup = Setup::new(broker.port(), false, "");
    let mut agent = setup.start();
    agent.wait_live(&setup);
    wait_for("/health/ready 200 once connected", || {
        get(setup.http, "/health/ready").is_some_and(|(c, _)| c == 200)
    });

    let (code, body) = get(setup.http, "/metrics").expect("/metrics");
    assert_eq!(code, 200);
    for name in spool::agent::ops::METRIC_NAMES {
        assert!(
            body.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{body}"
        );
    }
    assert!(body.contains("spool_mqtt_connected 1\n"), "{body}");
    assert!(
        body.contains("spool_mqtt_dropped_total{reason=\"expired\"} 0\n"),
        "{body}"
    );

    let (code, body) = get(setup.http, "/stats").expect("/stats");
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("/stats is JSON");
    assert_eq!(v["connection"]["state"], "connected", "{v}");
    assert_eq!(v["ready"], true, "{v}");
    assert!(v["outbox"]["messages"].is_u64(), "{v}");

    broker.stop().expect("stop the broker");
    let mut reason = String::new();
    wait_for("/health/ready 503 after the broker stopped", || {
        match get(setup.http, "/health/ready") {
            Some((503, body)) => {
                reason = body;
                true
            }
            _ => false,
        }
    });
    assert!(
        reason.contains("disconnected from the broker for"),
        "{reason}"
    );
    assert!(reason.contains("http.ready.disconnected_for"), "{reason}");
    // Live does not depend on the broker.
    assert_eq!(get(setup.http, "/health/live").map(|r| r.0), Some(200));

    broker.restart().expect("restart the broker");
    wait_for("/health/ready 200 after the broker came back", || {
        get(setup.http, "/health/ready").is_some_and(|(c, _)| c == 200)
    });
    let (_, body) = get(setup.http, "/metrics").expect("/metrics");
    assert!(!body.contains("spool_mqtt_reconnects_total 0\n"), "{body}");

    // A scraper's idle keep-alive connection does not hold the exit.
    let mut idle = TcpStream::connect(setup.http).expect("connect");
    write!(idle, "GET /health/live HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    agent.signal(15);
    let status = agent.wait_exit();
    assert!(status.success(), "{status}:\n{}", setup.log());
}

#[test]
fn publish_without_an_agent_is_stored_and_sent_at_the_next_start() {
    let broker = broker();
    let sub = subscriber(&broker, "cli/#", 1);
    let setup = Setup::new(broker.port(), false, "");

    let out = setup.publish("cli/a", "first", &["--qos", "1", "--priority", "3"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.starts_with("stored: seq "), "{said}");
    assert!(said.contains("sent when the agent starts"), "{said}");

    // From stdin.
    let mut c = spool_cmd()
        .args(["publish", "cli/b", "--config"])
        .arg(setup.config())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    c.stdin.take().unwrap().write_all(b"second").unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));

    let mut agent = setup.start();
    agent.wait_live(&setup);
    let got = receive_all(&sub, &["first".into(), "second".into()]);
    assert!(
        got.contains_key("first") && got.contains_key("second"),
        "{got:?}"
    );

    // The agent holds the store and its listener is off: a clear error, no hang.
    let out = setup.publish("cli/c", "third", &[]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("listener.enabled = false"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    agent.signal(2);
    assert!(agent.wait_exit().success(), "{}", setup.log());
}

#[test]
fn sigterm_drains_what_was_queued_and_exits_0() {
    let mut broker = broker();
    let sub = subscriber(&broker, "drain/#", 1);
    let setup = Setup::new(broker.port(), false, "");
    // Queued while no agent and no broker run.
    broker.stop().expect("stop");
    let want: Vec<String> = (0..20).map(|i| format!("d{i}")).collect();
    for w in &want {
        let out = setup.publish("drain/x", w, &[]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let mut agent = setup.start();
    agent.wait_live(&setup);
    broker.restart().expect("restart");
    // SIGTERM at once: the agent keeps delivering until the outbox is empty (or 5s).
    agent.signal(15);
    let status = agent.wait_exit();
    assert!(status.success(), "{status}:\n{}", setup.log());
    let log = setup.log();
    assert!(log.contains("SIGTERM: stopping"), "{log}");
    assert!(log.contains("draining the outbox"), "{log}");
    // Whatever the drain did not send before its deadline is sent by the next start.
    let mut again = setup.start();
    again.wait_live(&setup);
    let got = receive_all(&sub, &want);
    let missing: Vec<&String> = want.iter().filter(|w| !got.contains_key(*w)).collect();
    assert!(missing.is_empty(), "missing {missing:?}\n{}", setup.log());
}

#[test]
fn bad_config_values_exit_7_naming_the_key() {
    let setup = Setup::new(1, false, "[outbox]\ndefault_qos = 3\n");
    let out = spool_cmd()
        .args(["agent", "--config"])
        .arg(setup.config())
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(EXIT_CONFIG),
        "{}",
        text(&out.stderr)
    );
    let err = text(&out.stderr);
    assert!(err.contains("outbox.default_qos"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let out = spool_cmd()
        .args(["agent", "--config", "/nonexistent/agent.toml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(EXIT_CONFIG));

    let out = spool_cmd()
        .args(["agent", "--log-format", "xml", "--config"])
        .arg(setup.config())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "clap refuses a bad flag value");
}

#[test]
fn unreachable_broker_is_a_readiness_reason_not_a_crash() {
    // Nothing listens on this port.
    let setup = Setup::new(free_port(), false, "");
    let mut agent = setup.start();
    agent.wait_live(&setup);
    let mut body = String::new();
    wait_for("/health/ready 503", || {
        match get(setup.http, "/health/ready") {
            Some((503, b)) => {
                body = b;
                true
            }
            _ => false,
        }
    });
    assert!(body.contains("cannot connect to 127.0.0.1"), "{body}");
    let log = setup.log();
    assert!(log.contains("cannot connect"), "{log}");
    agent.signal(15);
    assert!(agent.wait_exit().success(), "{}", setup.log());
}

#[test]
fn wrong_password_is_a_clear_error_in_the_log_and_the_readiness_reason() {
    let broker = Broker::start(BrokerConfig::default().user("dev", "right")).expect("mosquitto");
    let setup = Setup::new(
        broker.port(),
        false,
        "", // credentials are set through the environment below
    );
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(setup.dir.path().join("agent.log"))
        .unwrap();
    let child = spool_cmd()
        .args(["agent", "--log-format", "json", "--config"])
        .arg(setup.config())
        .env("SPOOL_UPSTREAM__USERNAME", "dev")
        .env("SPOOL_UPSTREAM__PASSWORD", "wrong")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut agent = Agent {
        child,
        http: setup.http,
    };
    agent.wait_live(&setup);
    let mut body = String::new();
    wait_for("/health/ready 503", || {
        match get(setup.http, "/health/ready") {
            Some((503, b)) => {
                body = b;
                true
            }
            _ => false,
        }
    });
    let lower = body.to_lowercase();
    assert!(
        lower.contains("password") || lower.contains("not authorized"),
        "{body}"
    );
    // JSON log lines; the password never appears.
    let log = setup.log();
    assert!(log.lines().all(|l| l.starts_with('{')), "{log}");
    assert!(!log.contains("wrong"), "{log}");
    agent.signal(15);
    assert!(agent.wait_exit().success(), "{}", setup.log());
}

/// The packaged systemd unit runs a command line the binary accepts, and gives the drain
/// deadline time to finish before systemd's SIGKILL.
#[test]
fn systemd_unit_matches_the_cli_and_the_drain_deadline() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/spool-agent.service"),
    )
    .expect("packaging/spool-agent.service");
    let value = |key: &str| -> String {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key}= missing"))
            .trim()
            .to_owned()
    };
    let exec = value("ExecStart");
    let words: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(words[0], "/usr/bin/spool", "{exec}");
    assert_eq!(words[1], "agent", "{exec}");
    // `--help` after the same flags: clap parses them (a flag it does not know fails).
    let out = spool_cmd()
        .args(&words[1..])
        .arg("--help")
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let help = text(&out.stdout);
    for flag in words.iter().filter(|w| w.starts_with("--")) {
        assert!(help.contains(flag), "{flag} not in `spool agent --help`");
    }
    let config = words
        .iter()
        .position(|w| *w == "--config")
        .map(|i| words[i + 1])
        .expect("--config in ExecStart");
    assert_eq!(config, spool::cli::agent::CONFIG_DEFAULT);

    assert_eq!(value("KillSignal"), "SIGTERM");
    assert_eq!(value("Restart"), "always");
    let stop: u64 = value("TimeoutStopSec")
        .parse()
        .expect("TimeoutStopSec in seconds");
    let drain = spool::config::DRAIN_TIMEOUT_DEFAULT;
    assert!(
        Duration::from_secs(stop) > drain + Duration::from_secs(5),
        "TimeoutStopSec={stop} leaves no margin over the {drain:?} drain"
    );
    // The store default is where systemd puts the state directory, and the only writable path.
    assert_eq!(value("StateDirectory"), "spool");
    assert_eq!(
        Path::new(&value("ReadWritePaths")),
        Path::new(spool::config::STORE_DIR_DEFAULT)
    );
    assert_eq!(value("ProtectSystem"), "strict");
    assert_eq!(value("NoNewPrivileges"), "yes");
}

#[test]
fn local_clients_publish_through_the_listener_and_spool_publish_uses_it() {
    let broker = broker();
    let sub = subscriber(&broker, "local/#", 1);
    let setup = Setup::new(broker.port(), true, "");
    let mut agent = setup.start();
    agent.wait_live(&setup);

    // An unmodified client (mosquitto_pub at QoS 1: exit 0 once the agent sent PUBACK).
    mosquitto::publish(&setup.local_client(), "local/a", b"from-mosquitto_pub", 1)
        .expect("mosquitto_pub to the agent");
    // The command while the agent holds the store: through the listener.
    let out = setup.publish(
        "local/b",
        "from-spool-publish",
        &["--qos", "2", "--ttl", "1h"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.starts_with("acknowledged by the agent at "), "{said}");

    let want = [
        "from-mosquitto_pub".to_owned(),
        "from-spool-publish".to_owned(),
    ];
    let got = receive_all(&sub, &want);
    assert!(want.iter().all(|w| got.contains_key(w)), "{got:?}");

    let (_, body) = get(setup.http, "/metrics").expect("/metrics");
    for name in spool::agent::ops::LISTENER_METRIC_NAMES {
        assert!(
            body.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{body}"
        );
    }
    let (_, body) = get(setup.http, "/stats").expect("/stats");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert!(v["listener"]["stored"].as_u64() >= Some(2), "{v}");

    agent.signal(15);
    assert!(agent.wait_exit().success(), "{}", setup.log());
}

#[test]
fn broker_down_while_publishing_then_up_everything_arrives() {
    let mut broker = broker();
    let sub = subscriber(&broker, "outage/#", 1);
    let setup = Setup::new(broker.port(), true, "");
    let mut agent = setup.start();
    agent.wait_live(&setup);
    wait_for("connected", || {
        get(setup.http, "/health/ready").is_some_and(|(c, _)| c == 200)
    });

    broker.stop().expect("stop the broker");
    let mut want = Vec::new();
    for i in 0..30 {
        let p = format!("o{i}");
        if i % 3 == 0 {
            let out = setup.publish("outage/x", &p, &[]);
            assert!(out.status.success(), "{}", text(&out.stderr));
        } else {
            mosquitto::publish(&setup.local_client(), "outage/x", p.as_bytes(), 1)
                .expect("mosquitto_pub to the agent while the broker is down");
        }
        want.push(p);
    }
    let (_, body) = get(setup.http, "/stats").expect("/stats");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["outbox"]["messages"], 30, "{v}");

    broker.restart().expect("restart the broker");
    let got = receive_all(&sub, &want);
    let missing: Vec<&String> = want.iter().filter(|w| !got.contains_key(*w)).collect();
    assert!(missing.is_empty(), "missing {missing:?}\n{}", setup.log());
    agent.signal(15);
    assert!(agent.wait_exit().success(), "{}", setup.log());
}

#[test]
fn clean_start_relaxed_durability_and_late_sending_are_acted_on() {
    let mut broker = broker();
    let sub = subscriber(&broker, "late/#", 1);
    let setup = Setup::new(broker.port(), true, "[outbox]\nexpired = \"send\"\n");
    // `Setup` writes [store] and [upstream]: the settings go into them.
    let text_of = std::fs::read_to_string(setup.config()).expect("agent.toml");
    let edited = text_of
        .replacen(
            "dir = \"store\"\n",
            "dir = \"store\"\ndurability = \"interval:50ms\"\n",
            1,
        )
        .replacen("[upstream]\n", "[upstream]\nclean_start = true\n", 1);
    assert_ne!(edited, text_of);
    std::fs::write(setup.config(), edited).expect("write agent.toml");

    // No agent yet: written into the store with a TTL that passes before the agent starts.
    let out = setup.publish("late/x", "stored-late", &["--ttl", "1s"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A wait for the TTL to pass, not a timing check.
    thread::sleep(Duration::from_millis(1500));
    let mut agent = setup.start();
    agent.wait_live(&setup);
    let got = receive_all(&sub, &["stored-late".into()]);
    assert!(got.contains_key("stored-late"), "{got:?}\n{}", setup.log());
    wait_for("connected", || {
        get(setup.http, "/health/ready").is_some_and(|(c, _)| c == 200)
    });

    // Through the listener while the broker is down (MQTT 5 message expiry 1 s), kept past
    // its TTL, then sent.
    broker.stop().expect("stop the broker");
    let out = setup.publish("late/x", "listener-late", &["--ttl", "1s"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    thread::sleep(Duration::from_millis(1500));
    let (_, body) = get(setup.http, "/stats").expect("/stats");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["dropped"]["expired"], 0, "{v}");
    assert_eq!(v["outbox"]["messages"], 1, "{v}");
    broker.restart().expect("restart the broker");
    let got = receive_all(&sub, &["listener-late".into()]);
    assert!(
        got.contains_key("listener-late"),
        "{got:?}\n{}",
        setup.log()
    );

    // The broker kept its sessions across the restart (persistence), but not ours: every
    // connect asked for a clean start.
    wait_for("the reconnect in the log", || {
        setup.log().contains("reconnected")
    });
    let log = setup.log();
    assert!(!log.contains("session_present=true"), "{log}");
    assert!(log.contains("session_present=false"), "{log}");
    // None of the three is reported as ignored any more.
    for key in ["clean_start", "store.durability", "outbox.expired"] {
        assert!(!log.contains(key), "{key}:\n{log}");
    }
    agent.signal(15);
    assert!(agent.wait_exit().success(), "{}", setup.log());
}

/// xorshift64*: the kill moments, replayable from the printed seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

fn seed() -> u64 {
    let seed = std::env::var("SPOOL_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    eprintln!("seed {seed} (replay the kill moments with SPOOL_TEST_SEED={seed})");
    seed
}

/// Producers that publish without pause until stopped, each recording the payloads whose
/// publish was acknowledged (exit 0).
struct Producers {
    acked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Producers {
    /// `mosquitto_pub` to the listener at `qos` (exit 0: PUBACK or PUBCOMP came, so the
    /// message is durable), and `spool publish` too when `cli`.
    fn start(setup: &Setup, qos: u8, cli: bool) -> Producers {
        let acked = Arc::new(Mutex::new(Vec::<String>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        if cli {
            let (acked, stop, config) = (acked.clone(), stop.clone(), setup.config());
            threads.push(thread::spawn(move || {
                let q = qos.to_string();
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let p = format!("cli-{n}");
                    n += 1;
                    let out = spool_publish(&config, "k9/cli", &p, &["--qos", &q]);
                    if out.status.success() {
                        acked.lock().unwrap().push(p);
                    }
                }
            }));
        }
        let (acked2, stop2, opts) = (acked.clone(), stop.clone(), setup.local_client());
        threads.push(thread::spawn(move || {
            let mut n = 0u64;
            while !stop2.load(Ordering::SeqCst) {
                let p = format!("pub-{n}");
                n += 1;
                if mosquitto::publish(&opts, "k9/pub", p.as_bytes(), qos).is_ok() {
                    acked2.lock().unwrap().push(p);
                } else {
                    thread::sleep(Duration::from_millis(10));
                }
            }
        }));
        Producers {
            acked,
            stop,
            threads,
        }
    }

    fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().expect("producer");
        }
        let acked = self.acked.lock().unwrap().clone();
        acked
    }
}

/// Starts the agent and SIGKILLs it after a random delay (during start-up too), `rounds`
/// times; with `broker_down_every = Some(n)`, every n-th round runs with the broker stopped.
fn kill_rounds(
    setup: &Setup,
    broker: &mut Broker,
    rounds: u64,
    rng: &mut Rng,
    broker_down_every: Option<u64>,
) {
    for round in 0..rounds {
        let broker_down = broker_down_every.is_some_and(|n| round % n == 1);
        if broker_down {
            broker.stop().expect("stop the broker");
        }
        let mut agent = setup.start();
        thread::sleep(Duration::from_millis(30 + rng.below(400)));
        agent.kill9();
        if broker_down {
            broker.restart().expect("restart the broker");
        }
    }
}

/// Starts the agent once more and collects until every acknowledged payload arrived; fails
/// naming the missing ones. Returns the counts by payload.
fn check_all_arrive(
    setup: &Setup,
    sub: &Subscriber,
    want: &[String],
    seed: u64,
) -> BTreeMap<String, usize> {
    let mut agent = setup.start();
    agent.wait_live(setup);
    let got = receive_all_within(sub, want, Duration::from_secs(30));
    let missing: Vec<&String> = want.iter().filter(|w| !got.contains_key(*w)).collect();
    let duplicates: usize = got.values().map(|n| n - 1).sum();
    eprintln!(
        "{} acknowledged ({} via spool publish, {} via mosquitto_pub), {} received, {duplicates} duplicates",
        want.len(),
        want.iter().filter(|w| w.starts_with("cli-")).count(),
        want.iter().filter(|w| w.starts_with("pub-")).count(),
        got.len()
    );
    assert!(!want.is_empty(), "no producer got an acknowledgement");
    let extra: Vec<&String> = got.keys().filter(|g| !want.contains(g)).collect();
    assert!(
        missing.is_empty(),
        "seed {seed}: {} acknowledged messages never arrived: {:?} (received without an acknowledgement: {:?})\n/stats: {}\n{}",
        missing.len(),
        &missing[..missing.len().min(20)],
        &extra[..extra.len().min(20)],
        get(setup.http, "/stats").map(|r| r.1).unwrap_or_default(),
        setup.log()
    );
    agent.signal(15);
    assert!(agent.wait_exit().success(), "{}", setup.log());
    got
}

/// Producers publish without pause at QoS 1, through both ways in (`spool publish`, which goes
/// through the listener or straight into the store, and `mosquitto_pub` to the listener),
/// while the agent is SIGKILLed at random moments 24 times, every third time with the broker
/// stopped. Every message a producer saw acknowledged must reach the broker; duplicates are
/// allowed at QoS 1, and counted.
#[test]
fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    let seed = seed();
    let mut rng = Rng(seed);
    let mut broker = broker();
    let sub = subscriber(&broker, "k9/#", 1);
    let setup = Setup::new(broker.port(), true, "");
    let producers = Producers::start(&setup, 1, true);
    kill_rounds(&setup, &mut broker, 24, &mut rng, Some(3));
    let want = producers.finish();
    check_all_arrive(&setup, &sub, &want, seed);
}

/// At QoS 2 with the broker up (it keeps the agent's session): 20 SIGKILLs at random moments,
/// every acknowledged message arrives, and none twice. The producer is `mosquitto_pub -q 2`,
/// which does not retry a publish whose connection broke, so a second copy could only come
/// from the agent's side (a QoS 2 transaction restarted as a new message).
#[test]
fn sigkill_at_qos_2_with_the_session_kept_delivers_each_message_once() {
    let seed = seed();
    let mut rng = Rng(seed);
    let mut broker = broker();
    let sub = subscriber(&broker, "k9/#", 2);
    let setup = Setup::new(broker.port(), true, "");
    let producers = Producers::start(&setup, 2, false);
    kill_rounds(&setup, &mut broker, 20, &mut rng, None);
    let want = producers.finish();
    let got = check_all_arrive(&setup, &sub, &want, seed);
    let twice: Vec<(&String, &usize)> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "seed {seed}: delivered more than once at QoS 2: {:?}\n{}",
        &twice[..twice.len().min(20)],
        setup.log()
    );
}

#[test]
fn downlink_messages_reach_a_local_subscriber_through_the_inbox() {
    let broker = broker();
    let setup = Setup::new(
        broker.port(),
        true,
        "[[subscriptions]]\nfilter = \"down/#\"\nqos = 1\nqueue = \"inbox\"\n",
    );
    let mut agent = setup.start();
    agent.wait_live(&setup);
    let local = Subscriber::start(&setup.local_client(), "down/#", 1).expect("mosquitto_sub");
    local
        .wait_subscribed(1, WAIT)
        .expect("subscribed to the agent");
    // The agent subscribes upstream right after it connects; publish until its subscription
    // is in place (a message before it is not for us).
    let mut got = None;
    let until = Instant::now() + WAIT;
    let mut i = 0;
    while got.is_none() && Instant::now() < until {
        mosquitto::publish(
            &broker.client(),
            "down/cmd",
            format!("cmd-{i}").as_bytes(),
            1,
        )
        .expect("publish to the broker");
        i += 1;
        got = local.next_message(Duration::from_millis(200));
    }
    let (topic, payload) = got.expect("a downlink message reached the local subscriber");
    assert_eq!(topic, "down/cmd");
    assert!(text(&payload).starts_with("cmd-"), "{}", text(&payload));
    let (_, body) = get(setup.http, "/stats").expect("/stats");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert!(
        v["listener"]["downlink_received"].as_u64() >= Some(1),
        "{v}"
    );
    agent.signal(15);
    assert!(agent.wait_exit().success(), "{}", setup.log());
}

#[test]
fn a_second_agent_on_the_same_store_exits_3_naming_the_holder() {
    let broker = broker();
    let setup = Setup::new(broker.port(), false, "");
    let mut agent = setup.start();
    agent.wait_live(&setup);
    // Same store; other ports, so that only the store can be the conflict.
    let other = setup.dir.path().join("other.toml");
    let text_cfg = std::fs::read_to_string(setup.config()).unwrap().replace(
        &setup.http.to_string(),
        &format!("127.0.0.1:{}", free_port()),
    );
    std::fs::write(&other, text_cfg).unwrap();
    let out = spool_cmd()
        .args(["agent", "--config"])
        .arg(&other)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("locked by process"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    agent.signal(15);
    assert!(agent.wait_exit().success(), "{}", setup.log());
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. "24m") on `at`; `None` when not root (the test is then
    /// skipped, loudly): mounting needs root, which the test command's apt-get needs anyway.
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        let uid = Command::new("id").arg("-u").output().expect("run id -u");
        if text(&uid.stdout).trim() != "0" {
            eprintln!("SKIPPED: mounting a small tmpfs needs root");
            return None;
        }
        std::fs::create_dir_all(at).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("run mount");
        assert!(out.status.success(), "mount a tmpfs: {}", text(&out.stderr));
        Some(Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

/// A full disk: the store on a 24 MiB tmpfs, 8 MiB kept free (`store.min_free`), the broker
/// down. Publishes are stored until the reserve is reached, then refused with the reason (the
/// store's "N bytes free" message, through the listener's MQTT 5 PUBACK); the agent stays up;
/// everything acknowledged arrives once the broker is back; and publishes are accepted again
/// once the delivered messages' space is given back (the refusal sealed the segment early, so
/// that the next checkpoint lets it be deleted).
#[test]
fn a_full_disk_refuses_publishes_clearly_and_loses_nothing() {
    let mut broker = broker();
    let sub = subscriber(&broker, "full/#", 1);
    let setup = Setup::new(broker.port(), true, "");
    let Some(_tmpfs) = Tmpfs::mount(&setup.dir.path().join("store"), "24m") else {
        return;
    };
    let cfg = std::fs::read_to_string(setup.config()).expect("agent.toml");
    let cfg = cfg.replacen(
        "dir = \"store\"\n",
        "dir = \"store\"\nmin_free = \"8MiB\"\n",
        1,
    );
    std::fs::write(setup.config(), cfg).expect("agent.toml");
    let mut agent = setup.start();
    agent.wait_live(&setup);
    wait_for("connected", || {
        get(setup.http, "/health/ready").is_some_and(|(c, _)| c == 200)
    });
    broker.stop().expect("stop the broker");

    // One argument holds at most 128 KiB.
    let filler = "x".repeat(100_000);
    let mut want = Vec::new();
    let mut refusal = None;
    for i in 0..400 {
        let p = format!("{i:04}-{filler}");
        let out = setup.publish("full/x", &p, &[]);
        if out.status.success() {
            want.push(p);
        } else {
            refusal = Some(text(&out.stderr));
            break;
        }
    }
    let refusal = refusal.expect("a 24 MiB disk never refused 40 MB");
    assert!(
        want.len() >= 40,
        "only {} stored before the refusal",
        want.len()
    );
    assert!(
        refusal.contains("bytes free") && refusal.contains("min_free"),
        "{refusal}"
    );
    assert_eq!(
        get(setup.http, "/health/live").map(|(c, _)| c),
        Some(200),
        "the agent stays up"
    );
    let (_, body) = get(setup.http, "/stats").expect("/stats");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["outbox"]["messages"], want.len() as u64, "{v}");

    broker.restart().expect("restart the broker");
    let got = receive_all(&sub, &want);
    let missing: Vec<&str> = want
        .iter()
        .filter(|w| !got.contains_key(*w))
        .map(|w| &w[..4])
        .collect();
    assert!(missing.is_empty(), "missing {missing:?}\n{}", setup.log());

    // Delivered, checkpointed, the sealed segment deleted: room again (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = setup.publish("full/again", &format!("again-{filler}"), &[]);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still refused a minute after the backlog was delivered: {}\n{}",
            text(&out.stderr),
            setup.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    agent.signal(15);
    assert!(agent.wait_exit().success(), "{}", setup.log());
}
