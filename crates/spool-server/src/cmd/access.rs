//! What each command needs before it runs: the [`Access`] and which argument names the
//! queue or topic it is checked on. One table for every command of the queue-semantics
//! research (sections 8.3 and 8.4) and of the server design, whether its handler exists yet
//! or not, so a command added to the dispatch is checked from its first day.
//!
//! The rules, as Redis applies them (`processCommand`, `CMD_NO_AUTH`):
//! - `AUTH`, `HELLO` and `QUIT` run before authentication (they are how a client gets in or
//!   out); every other known command is `-NOAUTH Authentication required.` until then.
//! - A name the table does not know is answered as Redis does, `-ERR unknown command`, even
//!   before authentication (Redis looks the command up before it checks authentication).
//!   A unit test reads the dispatch in `cmd/mod.rs` and fails when a command there has no
//!   line here, so no command can run unchecked.
//! - `QLIST` and `TLIST` need an authenticated identity; their output is filtered to the
//!   names it may read ([`crate::auth::Auth::may`]).

use spool_resp::Frame;

use super::{err, Reply};
use crate::auth::{Access, AuthError, Identity};
use crate::service::Service;

/// What a command needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// Runs before authentication: `AUTH`, `HELLO`, `QUIT`.
    Nothing,
    /// An authenticated connection, no permission: `PING`, `CLIENT`, ... and the list
    /// commands (whose output is filtered).
    Authenticated,
    /// `access` on the name in the first argument.
    OnName(Access),
    /// `access` server-wide (checked on the name `""`).
    Server(Access),
}

/// The table. `None`: not a command of ours (the dispatch answers `unknown command`).
// One arm per family of commands (queues, topics) reads as the table it is.
#[allow(clippy::match_same_arms)]
pub(crate) fn need(cmd: &str) -> Option<Need> {
    use Access::{Admin, Read, Write};
    Some(match cmd {
        "AUTH" | "HELLO" | "QUIT" => Need::Nothing,
        "PING" | "ECHO" | "SELECT" | "CLIENT" | "COMMAND" | "RESET" => Need::Authenticated,
        // Listing: filtered to what the identity may read.
        "QLIST" | "TLIST" => Need::Authenticated,
        // Work queues (8.3): reading without consuming.
        "QPEEK" | "QSTATS" => Need::OnName(Read),
        // Consuming and producing: messages change.
        "QPUSH" | "QPUSHMANY" | "QGET" | "QACK" | "QDEL" | "QNACK" | "QPOP" | "QEXTEND"
        | "QTOUCH" | "QDEAD" => Need::OnName(Write),
        // The queue itself changes. QREDRIVE is checked on the dead-letter queue it names.
        "QCREATE" | "QCONFIG" | "QDROP" | "QPURGE" | "QREDRIVE" => Need::OnName(Admin),
        // Topics (8.4): a subscription's cursor is the subscriber's own, so reading it is read.
        "TSUB" | "TGET" | "TLATEST" | "TWAIT" | "TSTATS" => Need::OnName(Read),
        "TPUB" => Need::OnName(Write),
        "TCREATE" | "TCONFIG" | "TDROP" => Need::OnName(Admin),
        // Server operations.
        "SHUTDOWN" => Need::Server(Admin),
        _ => return None,
    })
}

/// Checks a request (`cmd` upper-case, `rest` its arguments) against the connection's
/// identity. A command the table does not know is let through, to get the dispatch's
/// `unknown command` reply.
pub(crate) fn check(
    svc: &Service,
    identity: &Identity,
    cmd: &str,
    rest: &[Frame],
) -> Result<(), Reply> {
    let auth = svc.auth();
    if !auth.is_required() {
        return Ok(());
    }
    let Some(need) = need(cmd) else {
        return Ok(());
    };
    let result = match need {
        Need::Nothing => Ok(()),
        Need::Authenticated => {
            if identity.user().is_some() {
                Ok(())
            } else {
                Err(AuthError::Required)
            }
        }
        Need::OnName(access) => match rest.first() {
            Some(Frame::Bulk(name)) => auth.check(identity, access, &String::from_utf8_lossy(name)),
            // No name: the command's own argument check answers; only anonymity is refused.
            _ if identity.user().is_some() => Ok(()),
            _ => Err(AuthError::Required),
        },
        Need::Server(access) => auth.check(identity, access, ""),
    };
    result.map_err(|e| refusal(&e))
}

/// A list reply (`QLIST`, `TLIST`: an array of names) cut to the names `identity` may read.
pub(crate) fn readable(svc: &Service, identity: &Identity, reply: Reply) -> Reply {
    let auth = svc.auth();
    if !auth.is_required() {
        return reply;
    }
    match reply {
        Frame::Array(names) => Frame::Array(
            names
                .into_iter()
                .filter(|f| match f {
                    Frame::Bulk(n) => auth.may(identity, Access::Read, &String::from_utf8_lossy(n)),
                    _ => false,
                })
                .collect(),
        ),
        other => other,
    }
}

/// The reply to a refused request, in Redis's words for `NOAUTH` and `WRONGPASS`.
pub(crate) fn refusal(e: &AuthError) -> Reply {
    err(e.code(), &e.to_string())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use spool_engine::Store;
    use spool_resp::Frame;

    use super::need;
    use crate::auth::{hash_password, Access, Auth, Permission, UserConfig};
    use crate::cmd::{execute, start, ConnState};
    use crate::service::{Policy, Service};

    fn service() -> Service {
        let auth = Auth::new(vec![
            UserConfig {
                name: "default".into(),
                password_hash: Some(hash_password(b"dpw").expect("hash")),
                token_hashes: vec![],
                permissions: vec![Permission {
                    pattern: "*".into(),
                    access: Access::Admin,
                }],
            },
            UserConfig {
                name: "alice".into(),
                password_hash: Some(hash_password(b"apw").expect("hash")),
                token_hashes: vec![],
                permissions: vec![Permission {
                    pattern: "jobs.*".into(),
                    access: Access::Write,
                }],
            },
        ])
        .expect("users");
        let store = Store::in_memory().expect("in-memory store");
        Service::new(store, auth, Policy::default())
    }

    fn frames(words: &[&str]) -> Vec<Frame> {
        words
            .iter()
            .map(|w| Frame::Bulk(Bytes::copy_from_slice(w.as_bytes())))
            .collect()
    }

    async fn run(svc: &Service, conn: &mut ConnState, words: &[&str]) -> String {
        match execute(svc, conn, frames(words)).await {
            Frame::Error(b) | Frame::Simple(b) | Frame::Bulk(b) => {
                String::from_utf8_lossy(&b).into_owned()
            }
            other => format!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn nothing_runs_before_auth_but_auth_hello_quit() {
        let svc = service();
        let mut c = ConnState::new(1);
        let noauth = "NOAUTH Authentication required.";
        assert_eq!(run(&svc, &mut c, &["PING"]).await, noauth);
        assert_eq!(run(&svc, &mut c, &["QPUSH", "jobs.a", "x"]).await, noauth);
        assert_eq!(run(&svc, &mut c, &["QLIST"]).await, noauth);
        // The pipelined path refuses too, in order.
        let refused = start(&svc, &c, &frames(&["QPUSH", "jobs.a", "x"])).expect("decided");
        assert!(matches!(refused.await, Frame::Error(e) if e.starts_with(b"NOAUTH")));
        // Unknown commands get Redis's unknown-command reply, as Redis looks them up first.
        assert!(run(&svc, &mut c, &["NOSUCH"])
            .await
            .starts_with("ERR unknown command"));
        assert!(run(&svc, &mut c, &["HELLO", "3"])
            .await
            .starts_with("NOAUTH HELLO must be called"));
        assert_eq!(
            run(&svc, &mut c, &["AUTH", "wrong"]).await,
            "WRONGPASS invalid username-password pair or user is disabled."
        );
        assert_eq!(
            run(&svc, &mut c, &["AUTH", "alice", "dpw"]).await,
            "WRONGPASS invalid username-password pair or user is disabled."
        );
        assert_eq!(run(&svc, &mut c, &["PING"]).await, noauth);
        assert_eq!(run(&svc, &mut c, &["QUIT"]).await, "OK");
    }

    #[tokio::test]
    async fn auth_with_and_without_user_and_hello_auth() {
        let svc = service();
        let mut c = ConnState::new(1);
        assert_eq!(run(&svc, &mut c, &["AUTH", "dpw"]).await, "OK");
        assert_eq!(c.identity.user(), Some("default"));
        assert_eq!(run(&svc, &mut c, &["PING"]).await, "PONG");

        let mut c = ConnState::new(2);
        assert_eq!(run(&svc, &mut c, &["AUTH", "alice", "apw"]).await, "OK");
        assert_eq!(c.identity.user(), Some("alice"));
        // A failed AUTH keeps the identity.
        assert!(run(&svc, &mut c, &["AUTH", "alice", "no"])
            .await
            .starts_with("WRONGPASS"));
        assert_eq!(c.identity.user(), Some("alice"));

        let mut c = ConnState::new(3);
        let reply = execute(
            &svc,
            &mut c,
            frames(&["HELLO", "3", "AUTH", "alice", "apw"]),
        )
        .await;
        assert!(matches!(reply, Frame::Map(_)), "{reply:?}");
        assert_eq!(c.identity.user(), Some("alice"));
        let mut c = ConnState::new(4);
        assert!(run(&svc, &mut c, &["HELLO", "3", "AUTH", "alice", "x"])
            .await
            .starts_with("WRONGPASS"));
        assert_eq!(c.identity.user(), None);
    }

    #[tokio::test]
    async fn permissions_are_checked_on_the_name() {
        let svc = service();
        let mut c = ConnState::new(1);
        assert_eq!(run(&svc, &mut c, &["AUTH", "alice", "apw"]).await, "OK");
        let id = run(&svc, &mut c, &["QPUSH", "jobs.email", "hi"]).await;
        assert!(!id.starts_with("NOPERM"), "{id}");
        let denied = run(&svc, &mut c, &["QPUSH", "orders", "hi"]).await;
        assert!(
            denied.starts_with("NOPERM user alice has no write permission on \"orders\""),
            "{denied}"
        );
        // Every write the pipelined path starts is checked too.
        for words in [
            &["QPUSH", "orders", "x"][..],
            &["QPUSHMANY", "orders", "--", "x"],
            &["TPUB", "orders", "x"],
            &["QACK", "orders", "1:1"],
            &["QDEL", "orders", "1:1"],
        ] {
            let refused = start(&svc, &c, &frames(words)).expect("decided");
            assert!(
                matches!(refused.await, Frame::Error(ref e) if e.starts_with(b"NOPERM")),
                "{words:?}"
            );
        }
        // write implies read; not admin.
        assert!(!run(&svc, &mut c, &["QSTATS", "jobs.email"])
            .await
            .starts_with("NOPERM"));
        assert!(run(&svc, &mut c, &["QSTATS", "orders"])
            .await
            .starts_with("NOPERM"));
        assert!(run(&svc, &mut c, &["QDROP", "jobs.email"])
            .await
            .starts_with("NOPERM"));
    }

    /// Every command name the dispatch of `execute` and `start` matches on has a line in the
    /// table: a command added there without one fails here instead of running unchecked.
    #[test]
    fn every_dispatched_command_is_in_the_table() {
        let src = include_str!("mod.rs");
        let mut names = Vec::new();
        for line in src.lines() {
            let line = line.trim();
            let Some(arms) = line.split("=>").next().filter(|_| line.contains("=>")) else {
                continue;
            };
            for word in arms.split('|') {
                let w = word.trim();
                if w.len() > 2 && w.starts_with('"') && w.ends_with('"') {
                    names.push(w.trim_matches('"').to_string());
                }
            }
        }
        for line in src
            .lines()
            .filter(|l| l.contains("eq_ignore_ascii_case(b\""))
        {
            for part in line.split("eq_ignore_ascii_case(b\"").skip(1) {
                if let Some(name) = part.split('"').next() {
                    names.push(name.to_string());
                }
            }
        }
        assert!(names.len() > 10, "the dispatch was not found: {names:?}");
        for n in &names {
            assert!(
                need(n).is_some(),
                "command {n} is dispatched but has no access line"
            );
        }
    }
}
