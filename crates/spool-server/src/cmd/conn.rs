//! Connection commands, answered as Redis answers them (clients send these on connect and
//! match on the replies): `PING`, `ECHO`, `HELLO`, `AUTH`, `SELECT`, `CLIENT`, `COMMAND`.
//!
//! With no users configured, the server answers `AUTH` like a Redis whose `default` user has
//! no password: the user `default` with any password is accepted, other users are refused.
//! With users ([`Auth::is_required`]), `AUTH [user] password` and `HELLO ... AUTH user
//! password` check the password and set the connection's identity (the password is checked
//! on the blocking pool: argon2 costs tens of milliseconds of CPU by design).

use bytes::Bytes;
use spool_resp::{Frame, Protocol};

use super::access::refusal;
use super::{err, ok, Args, ConnState, Reply};
use crate::auth::{Auth, AuthError, Identity};

/// The server name and version `HELLO` reports.
const SERVER_NAME: &str = "spool";
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn arity(cmd: &str) -> Reply {
    err(
        "ERR",
        &format!("wrong number of arguments for '{cmd}' command"),
    )
}

fn bulk(s: &str) -> Frame {
    Frame::Bulk(Bytes::copy_from_slice(s.as_bytes()))
}

/// `PING [message]`: `+PONG`, or the message as a bulk string.
pub(super) fn ping(a: &mut Args<'_>) -> Reply {
    match a.len() {
        0 => Frame::Simple(Bytes::from_static(b"PONG")),
        1 => Frame::Bulk(a.next().unwrap_or_default()),
        _ => arity("ping"),
    }
}

/// `ECHO message`.
pub(super) fn echo(a: &mut Args<'_>) -> Reply {
    if a.len() != 1 {
        return arity("echo");
    }
    Frame::Bulk(a.next().unwrap_or_default())
}

/// `HELLO [protover [AUTH username password] [SETNAME clientname]]`: switches the reply
/// protocol and answers with the server's properties (a map; a flat array on RESP2).
pub(super) async fn hello(auth: &Auth, conn: &mut ConnState, a: &mut Args<'_>) -> Reply {
    let mut proto = conn.protocol;
    if let Some(v) = a.next() {
        proto = match &v[..] {
            b"2" => Protocol::Resp2,
            b"3" => Protocol::Resp3,
            _ if std::str::from_utf8(&v).is_ok_and(|s| s.parse::<i64>().is_ok()) => {
                return err("NOPROTO", "unsupported protocol version");
            }
            _ => return err("ERR", "Protocol version is not an integer or out of range"),
        };
    }
    let mut name = None;
    let mut credentials = None;
    while let Some(opt) = a.keyword() {
        match opt.as_str() {
            "AUTH" if a.len() >= 2 => {
                let user = a.next().unwrap_or_default();
                let password = a.next().unwrap_or_default();
                credentials = Some((user, password));
            }
            "SETNAME" if !a.is_empty() => name = a.next(),
            _ => return err("ERR", &format!("Syntax error in HELLO option '{opt}'")),
        }
    }
    if let Some((user, password)) = credentials {
        if auth.is_required() {
            match login(auth, user, password).await {
                Ok(id) => conn.identity = id,
                Err(e) => return refusal(&e),
            }
        } else if let Some(e) = check_user(&user) {
            return e;
        }
    }
    if auth.is_required() && conn.identity.user().is_none() {
        // Redis's words (`helloCommand`).
        return err(
            "NOAUTH",
            "HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
        );
    }
    conn.protocol = proto;
    if name.is_some() {
        conn.name = name;
    }
    let version = match proto {
        Protocol::Resp2 => 2,
        Protocol::Resp3 => 3,
    };
    Frame::Map(vec![
        (bulk("server"), bulk(SERVER_NAME)),
        (bulk("version"), bulk(VERSION)),
        (bulk("proto"), Frame::Integer(version)),
        (
            bulk("id"),
            Frame::Integer(i64::try_from(conn.id).unwrap_or(i64::MAX)),
        ),
        (bulk("mode"), bulk("standalone")),
        (bulk("role"), bulk("master")),
        (bulk("modules"), Frame::Array(Vec::new())),
    ])
}

/// Redis's answer for a user other than `default` when no users are configured.
fn check_user(user: &[u8]) -> Option<Reply> {
    (user != b"default").then(|| {
        err(
            "WRONGPASS",
            "invalid username-password pair or user is disabled.",
        )
    })
}

/// Password checks running at once, server-wide. Each argon2 verification takes ~19 MiB and
/// tens of milliseconds of a core by design: unbounded, a flood of `AUTH` attempts would
/// fill the blocking pool and the memory; bounded, it only queues behind itself.
const LOGINS_MAX: usize = 4;
static LOGINS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(LOGINS_MAX);

/// Checks a password on the blocking pool (at most [`LOGINS_MAX`] at once).
async fn login(auth: &Auth, user: Bytes, password: Bytes) -> Result<Identity, AuthError> {
    let Ok(_permit) = LOGINS.acquire().await else {
        return Err(AuthError::WrongPass);
    };
    let auth = auth.clone();
    let user = String::from_utf8_lossy(&user).into_owned();
    tokio::task::spawn_blocking(move || auth.login(&user, &password))
        .await
        .unwrap_or(Err(AuthError::WrongPass))
}

/// `AUTH [username] password`. A failed `AUTH` leaves the connection as it was (as Redis
/// does): authenticated connections stay authenticated as before.
pub(super) async fn auth(auth: &Auth, conn: &mut ConnState, a: &mut Args<'_>) -> Reply {
    if auth.is_required() {
        let (user, password) = match a.len() {
            1 => (Bytes::from_static(b"default"), a.next().unwrap_or_default()),
            2 => (a.next().unwrap_or_default(), a.next().unwrap_or_default()),
            _ => return arity("auth"),
        };
        return match login(auth, user, password).await {
            Ok(id) => {
                conn.identity = id;
                ok()
            }
            Err(e) => refusal(&e),
        };
    }
    match a.len() {
        1 => err(
            "ERR",
            "AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
        ),
        2 => {
            let user = a.next().unwrap_or_default();
            check_user(&user).unwrap_or_else(ok)
        }
        _ => arity("auth"),
    }
}

/// `SELECT 0` (the only database).
pub(super) fn select(a: &mut Args<'_>) -> Reply {
    if a.len() != 1 {
        return arity("select");
    }
    let db = a.next().unwrap_or_default();
    match std::str::from_utf8(&db)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
    {
        Some(0) => ok(),
        Some(_) => err("ERR", "DB index is out of range"),
        None => err("ERR", "value is not an integer or out of range"),
    }
}

/// `CLIENT SETNAME name | GETNAME | SETINFO attr value | ID`.
pub(super) fn client(conn: &mut ConnState, a: &mut Args<'_>) -> Reply {
    let Some(sub) = a.keyword() else {
        return arity("client");
    };
    match (sub.as_str(), a.len()) {
        ("SETNAME", 1) => {
            let name = a.next().unwrap_or_default();
            if name.iter().any(|&b| b <= b' ' || b > b'~') {
                return err(
                    "ERR",
                    "Client names cannot contain spaces, newlines or special characters.",
                );
            }
            conn.name = (!name.is_empty()).then_some(name);
            ok()
        }
        ("GETNAME", 0) => conn.name.clone().map_or(Frame::Null, Frame::Bulk),
        ("SETINFO", 2) => {
            let attr = a.keyword().unwrap_or_default();
            if attr == "LIB-NAME" || attr == "LIB-VER" {
                ok()
            } else {
                err("ERR", &format!("Unrecognized option '{attr}'"))
            }
        }
        ("ID", 0) => Frame::Integer(i64::try_from(conn.id).unwrap_or(i64::MAX)),
        ("SETNAME" | "GETNAME" | "SETINFO" | "ID", _) => {
            arity(&format!("client|{}", sub.to_ascii_lowercase()))
        }
        _ => err(
            "ERR",
            &format!(
                "unknown subcommand '{}'. Try CLIENT HELP.",
                sub.to_ascii_lowercase()
            ),
        ),
    }
}

/// `COMMAND`, `COMMAND DOCS`, `COMMAND COUNT`: clients (redis-cli's hints) ask for these;
/// the command table is not published yet, so they get an empty one.
pub(super) fn command(a: &mut Args<'_>) -> Reply {
    match a.keyword().as_deref() {
        None | Some("DOCS" | "INFO") => Frame::Array(Vec::new()),
        Some("COUNT") => Frame::Integer(0),
        Some(other) => err(
            "ERR",
            &format!(
                "unknown subcommand '{}'. Try COMMAND HELP.",
                other.to_ascii_lowercase()
            ),
        ),
    }
}
