//! `spool serve` with users, as an operator sets it up: hashes made by `spool serve
//! hash-password` and `new-token`, a configuration file with an environment override, the
//! real binary on a free port, the real `redis-cli` logging in with `-a`, `--user/--pass`
//! and `AUTH`. No timing assertions: every wait is "until this holds", bounded.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(15);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `redis-cli -p PORT opts... args...` (commands on stdin when given): stdout and stderr.
fn cli(port: u16, opts: &[&str], args: &[&str], stdin: Option<&str>) -> String {
    let mut c = Command::new("redis-cli");
    c.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "--no-auth-warning",
    ])
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
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write redis-cli stdin");
    }
    let out = child.wait_with_output().expect("wait redis-cli");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    text.trim().to_string()
}

/// A password hash made the way the docs say: the password on stdin.
fn hash_password(dir: &Path, password: &str) -> String {
    let out = super::run(
        dir,
        &["serve", "hash-password"],
        Some(format!("{password}\n").as_bytes()),
    );
    assert!(out.status.success(), "{out:?}");
    let h = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(h.starts_with("$argon2id$"), "{h}");
    h
}

/// A token and its hash, from `spool serve new-token`.
fn new_token(dir: &Path) -> (String, String) {
    let out = super::run(dir, &["serve", "new-token"], None);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .expect("a field")
    };
    (field("token:"), field("hash:"))
}

struct Serve {
    _dir: tempfile::TempDir,
    child: Child,
    port: u16,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server with two users: `default` (admin on everything, password `adminpw`) and
/// `alice` (write on `jobs.*`, password `alicepw`). The file names a wrong port; the
/// `SPOOL_SERVE__RESP__BIND` variable overrides it with the free one.
fn start() -> Serve {
    start_with("", &[])
}

/// [`start`] with more configuration (`extra`, appended to the file) and the redis-cli
/// options that reach it (`opts`, e.g. `--tls`).
fn start_with(extra: &str, opts: &[&str]) -> Serve {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let admin = hash_password(&store, "adminpw");
    let alice = hash_password(&store, "alicepw");
    let (_token, token_hash) = new_token(&store);
    let config = dir.path().join("serve.toml");
    std::fs::write(
        &config,
        format!(
            r#"[resp]
bind = "127.0.0.1:1"

[[users]]
name = "default"
password_hash = "{admin}"
permissions = [{{ pattern = "*", access = "admin" }}]

[[users]]
name = "alice"
password_hash = "{alice}"
tokens = ["{token_hash}"]
permissions = [{{ pattern = "jobs.*", access = "write" }}]
{extra}"#
        ),
    )
    .expect("write config");
    let port = free_port();
    let child = super::spool(&store)
        .args(["serve", "--no-http", "--config"])
        .arg(&config)
        .env("SPOOL_SERVE__RESP__BIND", format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn spool serve");
    let s = Serve {
        _dir: dir,
        child,
        port,
    };
    let deadline = Instant::now() + WAIT;
    let mut login = opts.to_vec();
    login.extend(["-a", "adminpw"]);
    while cli(port, &login, &["PING"], None) != "PONG" {
        assert!(Instant::now() < deadline, "spool serve did not answer PING");
        thread::sleep(Duration::from_millis(20));
    }
    s
}

#[test]
fn users_log_in_and_are_held_to_their_permissions() {
    let s = start();
    let p = s.port;
    // Nothing before AUTH, in Redis's words.
    assert_eq!(
        cli(p, &[], &["PING"], None),
        "NOAUTH Authentication required."
    );
    assert_eq!(
        cli(p, &[], &["QPUSH", "jobs.email", "x"], None),
        "NOAUTH Authentication required."
    );
    // `-a` is `AUTH password` for the user default.
    assert_eq!(
        cli(p, &["-a", "adminpw"], &["QPUSH", "orders", "o1"], None),
        "1"
    );
    // A wrong password: WRONGPASS, and the command then runs unauthenticated.
    let wrong = cli(p, &["-a", "nope"], &["PING"], None);
    assert!(
        wrong.contains("WRONGPASS invalid username-password pair or user is disabled."),
        "{wrong}"
    );
    assert!(wrong.contains("NOAUTH"), "{wrong}");
    // --user/--pass: alice writes jobs.*, nothing else.
    let alice = ["--user", "alice", "--pass", "alicepw"];
    assert_eq!(cli(p, &alice, &["QPUSH", "jobs.email", "hi"], None), "2");
    let denied = cli(p, &alice, &["QPUSH", "orders", "x"], None);
    assert!(
        denied.starts_with("NOPERM user alice has no write permission on \"orders\""),
        "{denied}"
    );
    let denied = cli(p, &alice, &["QGET", "orders"], None);
    assert!(denied.starts_with("NOPERM"), "{denied}");
    // write includes read, not admin.
    let stats = cli(p, &alice, &["QSTATS", "jobs.email"], None);
    assert!(!stats.starts_with("NOPERM"), "{stats}");
    let lease = cli(p, &alice, &["QGET", "jobs.email"], None);
    assert!(lease.contains("hi"), "{lease}");
    // AUTH inside a session, then HELLO 3 AUTH.
    let session = cli(
        p,
        &[],
        &[],
        Some("QPUSH jobs.a x\nAUTH alice wrong\nAUTH alice alicepw\nQPUSH jobs.a y\n"),
    );
    let lines: Vec<&str> = session.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 4, "{session}");
    assert_eq!(lines[0], "NOAUTH Authentication required.");
    assert!(lines[1].starts_with("WRONGPASS"), "{session}");
    assert_eq!(lines[2], "OK");
    assert_eq!(lines[3], "3");
    let hello = cli(
        p,
        &[],
        &[],
        Some("HELLO 3 AUTH alice alicepw\nQPUSH jobs.a z\n"),
    );
    assert!(
        hello.contains("spool") && hello.trim_end().ends_with('4'),
        "{hello}"
    );
}

#[test]
fn a_public_bind_without_users_is_refused_and_a_bad_config_exits_7() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let out = super::run(&store, &["serve", "--bind", "0.0.0.0:0"], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no users are configured"), "{err}");
    assert!(err.contains("--allow-unauthenticated"), "{err}");

    let config = dir.path().join("serve.toml");
    std::fs::write(&config, "[resp]\nbnd = \"0.0.0.0:7411\"\n").expect("write");
    let out = super::run(
        &store,
        &["serve", "--config", config.to_str().expect("utf-8")],
        None,
    );
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bnd") && err.contains("line 2"), "{err}");

    std::fs::write(
        &config,
        "[[users]]\nname = \"u\"\npassword_hash = \"hunter2\"\n",
    )
    .expect("write");
    let out = super::run(
        &store,
        &["serve", "check", config.to_str().expect("utf-8")],
        None,
    );
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hash-password"), "{err}");
}

#[test]
fn tls_and_mutual_tls_with_redis_cli() {
    let pki = spool_testkit::certs::Pki::generate().expect("pki");
    let path = |p: &Path| p.to_str().expect("utf-8").to_string();
    let (ca, cert, key) = (
        path(&pki.ca.cert),
        path(&pki.server.cert),
        path(&pki.server.key),
    );
    let tls = ["--tls", "--cacert", ca.as_str()];
    let s = start_with(
        &format!("[tls]\ncert = \"{cert}\"\nkey = \"{key}\"\n"),
        &tls,
    );
    let mut opts = tls.to_vec();
    opts.extend(["--user", "alice", "--pass", "alicepw"]);
    assert_eq!(
        cli(s.port, &opts, &["QPUSH", "jobs.tls", "secret"], None),
        "1"
    );
    // A plain-text client gets nothing, and the server goes on.
    let plain = cli(s.port, &["-a", "adminpw"], &["PING"], None);
    assert_ne!(plain, "PONG");
    assert_eq!(
        cli(s.port, &opts, &["QPOP", "jobs.tls"], None)
            .lines()
            .nth(2),
        Some("secret")
    );
    drop(s);

    // Mutual TLS, required: a client certificate from the client CA or no connection.
    let s = start_with(
        &format!("[tls]\ncert = \"{cert}\"\nkey = \"{key}\"\nclient_ca = \"{ca}\"\n"),
        &[
            "--tls",
            "--cacert",
            &ca,
            "--cert",
            &path(&pki.client.cert),
            "--key",
            &path(&pki.client.key),
        ],
    );
    let with_cert = cli(
        s.port,
        &[
            "--tls",
            "--cacert",
            &ca,
            "--cert",
            &path(&pki.client.cert),
            "--key",
            &path(&pki.client.key),
            "-a",
            "adminpw",
        ],
        &["PING"],
        None,
    );
    assert_eq!(with_cert, "PONG");
    let without = cli(
        s.port,
        &["--tls", "--cacert", &ca, "-a", "adminpw"],
        &["PING"],
        None,
    );
    assert_ne!(without, "PONG");
    let stranger = cli(
        s.port,
        &[
            "--tls",
            "--cacert",
            &ca,
            "--cert",
            &path(&pki.other_client.cert),
            "--key",
            &path(&pki.other_client.key),
            "-a",
            "adminpw",
        ],
        &["PING"],
        None,
    );
    assert_ne!(stranger, "PONG");
}
