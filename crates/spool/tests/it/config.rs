//! `spool config check` and `spool config example` as an operator runs them: the real binary,
//! real files, variables in its environment, exit codes and messages.

use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Exit code of an invalid configuration (README, "Exit codes").
const EXIT_CONFIG: i32 = 7;

/// Runs `spool config ARGS` with exactly `vars` as its `SPOOL_` environment.
fn config(args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_spool"));
    c.arg("config").args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SPOOL_") {
            c.env_remove(k);
        }
    }
    c.envs(vars.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c.output().expect("run spool")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn packaged() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/agent.toml")
}

#[test]
fn example_is_the_packaged_file_and_checks_ok() {
    let out = config(&["example"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let file = std::fs::read_to_string(packaged()).expect("packaging/agent.toml");
    assert!(
        text(&out.stdout) == file,
        "`spool config example` differs from packaging/agent.toml: regenerate it"
    );
    let p = packaged();
    let out = config(&["check", p.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with(&format!("ok: {}\n", p.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains("upstream:      mqtt://localhost:1883, MQTT 5"),
        "{stdout}"
    );
    assert!(stdout.contains("listener:      127.0.0.1:1884"), "{stdout}");
}

#[test]
fn check_with_env_overrides_and_secrets_masked() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("agent.toml");
    std::fs::write(
        &f,
        "[upstream]\nhost = \"file-host\"\nclient_id = \"gw-17\"\nusername = \"dev\"\npassword = \"hunter2\"\n",
    )
    .unwrap();
    let f = f.to_str().unwrap();
    let vars = [
        ("SPOOL_UPSTREAM__HOST", "env-host"),
        ("SPOOL_UPSTREAM__PORT", "1999"),
    ];
    let out = config(&["check", f], &vars);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("mqtt://env-host:1999"), "{stdout}");
    assert!(stdout.contains("password ***"), "{stdout}");
    assert!(
        stdout.contains("environment:   SPOOL_UPSTREAM__HOST, SPOOL_UPSTREAM__PORT"),
        "{stdout}"
    );
    assert!(!stdout.contains("hunter2"), "{stdout}");

    let out = config(&["check", f, "--json"], &vars);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["upstream"]["host"], "env-host");
    assert_eq!(json["upstream"]["port"], 1999);
    assert_eq!(json["upstream"]["password"], "***");
    assert_eq!(json["upstream"]["keepalive"], "30s");
    assert_eq!(json["outbox"]["max_bytes"], "256MiB");
    assert_eq!(json["listener"]["bind"], "127.0.0.1:1884");
    assert!(!text(&out.stdout).contains("hunter2"));
}

#[test]
fn a_bad_file_lists_every_problem_and_exits_7() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.toml");
    std::fs::write(
        &f,
        "[upstream]\nhost = \"b\"\nport = 70000\nhots = \"x\"\n\n[upstream.backoff]\nmin = \"10s\"\nmax = \"5s\"\n\n[listener]\nbind = \"0.0.0.0:1884\"\n",
    )
    .unwrap();
    let fs = f.to_str().unwrap();
    let out = config(&["check", fs], &[("SPOOL_OUTBOX__MAX_BYTE", "1")]);
    assert_eq!(
        out.status.code(),
        Some(EXIT_CONFIG),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    for want in [
        &format!("error: invalid configuration {fs}: 5 problems") as &str,
        &format!("upstream.port = 70000: must be an integer in 1..=65535 ({fs} line 3)"),
        &format!("unknown key upstream.hots ({fs} line 4): did you mean upstream.host?"),
        &format!(
            "upstream.backoff.max = \"5s\": must be at least upstream.backoff.min (\"10s\") ({fs} line 8)"
        ),
        "listener.bind = \"0.0.0.0:1884\": must be a loopback address",
        "unknown configuration variable SPOOL_OUTBOX__MAX_BYTE: did you mean SPOOL_OUTBOX__MAX_BYTES?",
    ] {
        assert!(err.contains(want), "stderr should contain {want:?}:\n{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_bad_env_value_names_the_variable() {
    let p = packaged();
    let out = config(
        &["check", p.to_str().unwrap()],
        &[("SPOOL_UPSTREAM__KEEPALIVE", "30")],
    );
    assert_eq!(out.status.code(), Some(EXIT_CONFIG));
    let err = text(&out.stderr);
    assert!(
        err.contains("upstream.keepalive = \"30\": must be a duration")
            && err.contains("(from SPOOL_UPSTREAM__KEEPALIVE)"),
        "{err}"
    );
}

#[test]
fn unreadable_and_malformed_files_exit_7() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let out = config(&["check", missing.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG));
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot read") && err.contains("missing.toml"),
        "{err}"
    );

    let f = dir.path().join("broken.toml");
    std::fs::write(&f, "[upstream\nhost = 1\n").unwrap();
    let out = config(&["check", f.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG));
    let err = text(&out.stderr);
    assert!(
        err.contains("not valid TOML") && err.contains("line 1"),
        "{err}"
    );
}
