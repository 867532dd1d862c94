//! End-to-end tests of the `spool` binary (one integration binary per crate).

mod agent;
mod bench_mqtt;
mod cli;
mod config;
mod inspect;
mod kill9;
mod serve;
mod serve_auth;
mod serve_http;
mod serve_kill;
mod serve_python;

use std::path::Path;
use std::process::{Command, Output, Stdio};

/// The binary under test.
pub fn spool(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_spool"));
    c.arg("--dir").arg(dir).env_remove("SPOOL_DIR");
    c
}

/// Runs the binary with `args` (and `stdin`), returning its output.
pub fn run(dir: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut c = spool(dir);
    c.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn spool");
    if let Some(input) = stdin {
        use std::io::Write;
        let mut s = child.stdin.take().expect("stdin");
        s.write_all(input).expect("write stdin");
    }
    child.wait_with_output().expect("wait spool")
}

/// Runs and expects success; returns stdout as text.
pub fn ok(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, args, None);
    assert!(
        out.status.success(),
        "spool {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// After a process holding the store in `dir` was killed: reopens it and checks that every
/// push in `acked` (payload -> id, as the process reported it) is in `queue` under that id,
/// exactly once, and that nothing there is invented (payloads `r<round>-...-m<n>`). Returns
/// how many messages the queue holds.
pub fn check_acknowledged<S: std::hash::BuildHasher>(
    dir: &Path,
    queue: &str,
    acked: &std::collections::HashMap<String, u64, S>,
) -> usize {
    let store = spool_engine::Store::open(dir, spool_engine::Options::default())
        .expect("reopen after the kills");
    let msgs = store.messages(queue).expect("the queue exists");
    let mut seen = std::collections::HashMap::new();
    for m in &msgs {
        let p = String::from_utf8(m.payload.to_vec()).expect("utf-8 payload");
        assert!(
            p.starts_with('r') && p.contains("-m"),
            "invented message {p:?}"
        );
        assert!(
            seen.insert(p.clone(), m.id).is_none(),
            "duplicate message {p:?}"
        );
    }
    for (payload, id) in acked {
        assert_eq!(
            seen.get(payload),
            Some(id),
            "acknowledged push {payload:?} (id {id}) is missing after SIGKILL"
        );
    }
    msgs.len()
}
