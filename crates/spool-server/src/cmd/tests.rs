//! The command layer without sockets: requests in, reply frames out, against an in-memory
//! store. The wire itself is tested end to end with redis-cli (`crates/spool/tests/it/serve.rs`).

use std::sync::Arc;

use bytes::Bytes;
use spool_engine::vfs::MemVfs;
use spool_engine::{ManualClock, Options, Store};
use spool_resp::{Frame, Protocol};

use super::{execute, ConnState};
use crate::auth::Auth;
use crate::service::{Policy, Service};

mod admin;
mod policy;
mod topics;

struct Fixture {
    svc: Service,
    conn: ConnState,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::with_policy(Policy::default())
    }

    /// A server with this policy over an in-memory store.
    fn with_policy(policy: Policy) -> Fixture {
        let svc = Service::new(
            Store::in_memory().expect("in-memory store"),
            Auth::open(),
            policy,
        );
        Fixture {
            conn: ConnState::open(7, &svc),
            svc,
        }
    }

    /// A server whose store reads `clock` (leases and delays run out when it is moved).
    fn with_clock(clock: &ManualClock) -> Fixture {
        let options = Options {
            clock: Arc::new(clock.clone()),
            ..Options::default()
        };
        let store = Store::open_with_vfs(Arc::new(MemVfs::new()), "/spool", options)
            .expect("in-memory store");
        let svc = Service::open(store);
        Fixture {
            conn: ConnState::open(7, &svc),
            svc,
        }
    }

    /// Another connection to the same server, opened now.
    fn connect(&self, id: u64) -> ConnState {
        ConnState::open(id, &self.svc)
    }

    async fn run(&mut self, words: &[&str]) -> Frame {
        execute(&self.svc, &mut self.conn, request(words)).await
    }

    /// Runs a request on another connection.
    async fn run_on(&self, conn: &mut ConnState, words: &[&str]) -> Frame {
        execute(&self.svc, conn, request(words)).await
    }
}

fn request(words: &[&str]) -> Vec<Frame> {
    words
        .iter()
        .map(|w| Frame::Bulk(Bytes::copy_from_slice(w.as_bytes())))
        .collect()
}

/// The value of `key` in a map reply, or panics with the frame.
fn field(f: &Frame, key: &str) -> Frame {
    let Frame::Map(pairs) = f else {
        panic!("expected a map, got {f:?}");
    };
    pairs
        .iter()
        .find(|(k, _)| *k == bulk(key))
        .map_or_else(|| panic!("no {key:?} in {f:?}"), |(_, v)| v.clone())
}

fn bulk(s: &str) -> Frame {
    Frame::Bulk(Bytes::copy_from_slice(s.as_bytes()))
}

/// The error code (first word) of an error reply, or panics with the frame.
fn code(f: &Frame) -> String {
    match f {
        Frame::Error(e) => String::from_utf8_lossy(e)
            .split(' ')
            .next()
            .unwrap_or_default()
            .to_string(),
        other => panic!("expected an error, got {other:?}"),
    }
}

fn text(f: &Frame) -> String {
    match f {
        Frame::Bulk(b) | Frame::Simple(b) | Frame::Error(b) => String::from_utf8_lossy(b).into(),
        other => panic!("expected a string, got {other:?}"),
    }
}

fn items(f: Frame) -> Vec<Frame> {
    match f {
        Frame::Array(v) => v,
        other => panic!("expected an array, got {other:?}"),
    }
}

#[tokio::test]
async fn push_get_ack_round_trip_with_the_record_shape() {
    let mut t = Fixture::new();
    let id = t.run(&["QPUSH", "jobs", "hello", "PRI", "5"]).await;
    assert_eq!(id, bulk("1"));
    let got = items(t.run(&["QGET", "jobs", "VT", "30000"]).await);
    assert_eq!(got.len(), 1);
    let rec = items(got[0].clone());
    assert_eq!(rec.len(), 8);
    assert_eq!(rec[0], bulk("1"));
    let receipt = text(&rec[1]);
    assert_eq!(receipt, "1:1");
    assert_eq!(rec[2], bulk("hello"));
    assert_eq!(rec[3], Frame::Integer(5));
    let Frame::Integer(enqueued) = rec[4] else {
        panic!("enqueued_at_ms: {:?}", rec[4]);
    };
    assert!(matches!(rec[5], Frame::Integer(_)), "first_received_at_ms");
    assert_eq!(rec[6], Frame::Integer(1));
    let Frame::Integer(visible) = rec[7] else {
        panic!("visible_at_ms: {:?}", rec[7]);
    };
    assert!(visible >= enqueued + 30_000, "leased for 30 s");
    // Hidden while leased.
    assert_eq!(t.run(&["QGET", "jobs"]).await, Frame::Array(vec![]));
    assert_eq!(t.run(&["QACK", "jobs", &receipt]).await, Frame::Integer(1));
    assert_eq!(code(&t.run(&["QACK", "jobs", &receipt]).await), "NOTFOUND");
}

#[tokio::test]
async fn a_stale_receipt_is_leaselost() {
    let mut t = Fixture::new();
    t.run(&["QPUSH", "q", "x"]).await;
    let rec = items(items(t.run(&["QGET", "q"]).await)[0].clone());
    let receipt = text(&rec[1]);
    assert_eq!(t.run(&["QNACK", "q", &receipt]).await, Frame::Integer(1));
    assert_eq!(code(&t.run(&["QACK", "q", &receipt]).await), "LEASELOST");
    // Leased again: the new receipt works, and the count went on.
    let rec = items(items(t.run(&["QGET", "q"]).await)[0].clone());
    assert_eq!(rec[6], Frame::Integer(2));
    assert_eq!(
        t.run(&["QACK", "q", &text(&rec[1])]).await,
        Frame::Integer(1)
    );
}

#[tokio::test]
async fn several_receipts_get_one_result_each() {
    let mut t = Fixture::new();
    t.run(&["QPUSHMANY", "q", "--", "a", "b"]).await;
    let got = items(t.run(&["QGET", "q", "COUNT", "10"]).await);
    assert_eq!(got.len(), 2);
    let r0 = text(&items(got[0].clone())[1]);
    let reply = items(t.run(&["QACK", "q", &r0, "nonsense", "99:1"]).await);
    assert_eq!(reply[0], Frame::Integer(1));
    assert_eq!(code(&reply[1]), "BADARG");
    assert_eq!(code(&reply[2]), "NOTFOUND");
}

#[tokio::test]
async fn arguments_are_checked_with_badarg() {
    let mut t = Fixture::new();
    for req in [
        &["QPUSH", "q"][..],
        &["QPUSH", "q", "x", "PRI", "256"],
        &["QPUSH", "q", "x", "PRI", "high"],
        &["QPUSH", "q", "x", "DELAY", "604800001"],
        &["QPUSH", "q", "x", "TTL", "0"],
        &["QPUSH", "q", "x", "COLOUR", "red"],
        &["QGET", "q", "VT", "0"],
        &["QGET", "q", "VT", "43200001"],
        &["QGET", "q", "COUNT", "0"],
        &["QGET", "q", "COUNT", "1001"],
        &["QGET", "q", "WAIT", "60001"],
        &["QGET", "q", "VT"],
        &["QACK", "q"],
        &["QACK", "q", "12"],
        &["QNACK", "q", "1:0"],
        &["QPUSHMANY", "q", "a", "b"],
        &["QPUSHMANY", "q", "--"],
        &["QPOP", "q", "WAIT", "60001"],
        &["QPOP", "q", "VT", "10"],
        &["QPEEK", "q", "WAIT", "10"],
    ] {
        assert_eq!(code(&t.run(req).await), "BADARG", "{req:?}");
    }
    // Bounds themselves are accepted.
    assert_eq!(
        t.run(&["QPUSH", "q", "x", "PRI", "255", "DELAY", "0"])
            .await,
        bulk("1")
    );
    assert_eq!(
        items(t.run(&["QGET", "q", "VT", "1", "COUNT", "1000"]).await).len(),
        1
    );
}

#[tokio::test]
async fn bad_names_are_badname_and_unknown_queues_read_empty() {
    let mut t = Fixture::new();
    for name in ["", "-lead", "has space", "a/b", &"x".repeat(129)] {
        assert_eq!(
            code(&t.run(&["QPUSH", name, "x"]).await),
            "BADNAME",
            "{name:?}"
        );
        assert_eq!(code(&t.run(&["QGET", name]).await), "BADNAME", "{name:?}");
    }
    assert_eq!(t.run(&["QGET", "nothing.yet"]).await, Frame::Array(vec![]));
    assert_eq!(t.run(&["QPOP", "nothing.yet"]).await, Frame::Array(vec![]));
    assert_eq!(t.run(&["QPEEK", "nothing.yet"]).await, Frame::Array(vec![]));
    assert_eq!(code(&t.run(&["QSTATS", "nothing.yet"]).await), "NOQUEUE");
    assert_eq!(
        code(&t.run(&["QACK", "nothing.yet", "1:1"]).await),
        "NOQUEUE"
    );
}

#[tokio::test]
async fn pop_peek_priority_order_and_peek_by_id() {
    let mut t = Fixture::new();
    t.run(&["QPUSH", "q", "low"]).await;
    t.run(&["QPUSH", "q", "high", "PRI", "9"]).await;
    t.run(&["QPUSH", "q", "later", "DELAY", "600000"]).await;
    let peeked = items(t.run(&["QPEEK", "q", "COUNT", "10"]).await);
    let payloads: Vec<Frame> = peeked.iter().map(|r| items(r.clone())[2].clone()).collect();
    assert_eq!(payloads, vec![bulk("high"), bulk("low")]);
    let delayed = items(t.run(&["QPEEK", "q", "ID", "3"]).await);
    assert_eq!(delayed[2], bulk("later"));
    assert_eq!(code(&t.run(&["QPEEK", "q", "ID", "99"]).await), "NOTFOUND");
    let popped = items(t.run(&["QPOP", "q"]).await);
    let rec = items(popped[0].clone());
    assert_eq!(rec[2], bulk("high"));
    assert_eq!(rec[1], Frame::Null, "a pop has no receipt");
    assert_eq!(rec[6], Frame::Integer(1));
    let Frame::Map(stats) = t.run(&["QSTATS", "q"]).await else {
        panic!("QSTATS is a map");
    };
    let get = |k: &str| {
        stats
            .iter()
            .find(|(n, _)| *n == bulk(k))
            .map(|(_, v)| v.clone())
    };
    assert_eq!(get("visible"), Some(Frame::Integer(1)));
    assert_eq!(get("delayed"), Some(Frame::Integer(1)));
    assert_eq!(get("total_pushed"), Some(Frame::Integer(3)));
}

#[tokio::test]
async fn qlist_filters_with_a_glob() {
    let mut t = Fixture::new();
    for q in ["jobs.a", "jobs.b", "mail"] {
        t.run(&["QPUSH", q, "x"]).await;
    }
    assert_eq!(
        t.run(&["QLIST"]).await,
        Frame::Array(vec![bulk("jobs.a"), bulk("jobs.b"), bulk("mail")])
    );
    assert_eq!(
        t.run(&["QLIST", "jobs.*"]).await,
        Frame::Array(vec![bulk("jobs.a"), bulk("jobs.b")])
    );
    assert_eq!(
        t.run(&["qlist", "m?il"]).await,
        Frame::Array(vec![bulk("mail")])
    );
}

#[tokio::test]
async fn an_oversize_argument_is_toobig() {
    let mut t = Fixture::new();
    let args = vec![bulk("QPUSH"), bulk("q"), Frame::Oversize { len: 3 << 20 }];
    let reply = execute(&t.svc, &mut t.conn, args).await;
    assert_eq!(code(&reply), "TOOBIG");
    assert_eq!(
        t.svc.store().queues(),
        Vec::<String>::new(),
        "nothing was pushed"
    );
}

#[tokio::test]
async fn unknown_commands_get_redis_wording() {
    let mut t = Fixture::new();
    assert_eq!(
        text(&t.run(&["FOO", "a", "b"]).await),
        "ERR unknown command 'FOO', with args beginning with: 'a' 'b' "
    );
    assert_eq!(
        text(&t.run(&["nope"]).await),
        "ERR unknown command 'nope', with args beginning with: "
    );
}

#[tokio::test]
async fn connection_commands_answer_as_redis_does() {
    let mut t = Fixture::new();
    assert_eq!(
        t.run(&["PING"]).await,
        Frame::Simple(Bytes::from_static(b"PONG"))
    );
    assert_eq!(t.run(&["ping", "hi"]).await, bulk("hi"));
    assert_eq!(t.run(&["ECHO", "x"]).await, bulk("x"));
    assert_eq!(text(&t.run(&["SELECT", "0"]).await), "OK");
    assert_eq!(
        text(&t.run(&["SELECT", "1"]).await),
        "ERR DB index is out of range"
    );
    assert_eq!(text(&t.run(&["CLIENT", "SETNAME", "w1"]).await), "OK");
    assert_eq!(t.run(&["CLIENT", "GETNAME"]).await, bulk("w1"));
    assert_eq!(
        text(&t.run(&["CLIENT", "SETINFO", "LIB-NAME", "redis-py"]).await),
        "OK"
    );
    assert_eq!(t.run(&["COMMAND", "DOCS"]).await, Frame::Array(vec![]));
    assert_eq!(code(&t.run(&["HELLO", "4"]).await), "NOPROTO");
    assert_eq!(t.conn.protocol, Protocol::Resp2);
    let Frame::Map(hello) = t
        .run(&["HELLO", "3", "AUTH", "default", "pw", "SETNAME", "n"])
        .await
    else {
        panic!("HELLO replies with a map");
    };
    assert!(hello.contains(&(bulk("proto"), Frame::Integer(3))));
    assert_eq!(t.conn.protocol, Protocol::Resp3);
    assert_eq!(t.conn.name.as_deref(), Some(&b"n"[..]));
    assert_eq!(
        code(&t.run(&["HELLO", "3", "AUTH", "bob", "pw"]).await),
        "WRONGPASS"
    );
    assert!(!t.conn.closing);
    assert_eq!(text(&t.run(&["QUIT"]).await), "OK");
    assert!(t.conn.closing);
}

#[test]
fn glob_matches_stars_and_question_marks() {
    use super::queue::glob;
    for (p, t, m) in [
        ("*", "", true),
        ("a*", "abc", true),
        ("*c", "abc", true),
        ("a?c", "abc", true),
        ("a*b*c", "axxbyyc", true),
        ("a*d", "abc", false),
        ("abc", "ab", false),
        ("", "a", false),
    ] {
        assert_eq!(glob(p.as_bytes(), t.as_bytes()), m, "{p:?} {t:?}");
    }
}

#[tokio::test]
async fn start_applies_a_push_before_its_reply_is_awaited() {
    let t = Fixture::new();
    let args = vec![bulk("QPUSH"), bulk("q"), bulk("x")];
    let first = super::start(&t.svc, &t.conn, &args).expect("QPUSH is started");
    let second = super::start(&t.svc, &t.conn, &args).expect("QPUSH is started");
    // Both applied in request order before either reply was awaited: one group commit.
    assert_eq!(t.svc.store().queues(), vec!["q".to_string()]);
    assert_eq!(second.await, bulk("2"));
    assert_eq!(first.await, bulk("1"));
    assert!(super::start(&t.svc, &t.conn, &[bulk("QGET"), bulk("q")]).is_none());
    let bad = super::start(
        &t.svc,
        &t.conn,
        &[bulk("QPUSH"), bulk("bad name"), bulk("x")],
    )
    .expect("started");
    assert_eq!(code(&bad.await), "BADNAME");
}

#[tokio::test]
async fn qget_wait_is_woken_by_a_push() {
    let t = Fixture::new();
    let svc = t.svc.clone();
    let waiter = tokio::spawn(async move {
        let mut conn = ConnState::new(1);
        let args = ["QGET", "later", "WAIT", "60000"]
            .iter()
            .map(|w| bulk(w))
            .collect();
        execute(&svc, &mut conn, args).await
    });
    let mut conn = ConnState::new(2);
    let push = vec![bulk("QPUSH"), bulk("later"), bulk("wake up")];
    assert_eq!(execute(&t.svc, &mut conn, push).await, bulk("1"));
    let got = items(waiter.await.expect("the waiter task"));
    assert_eq!(got.len(), 1);
    assert_eq!(items(got[0].clone())[2], bulk("wake up"));
}
