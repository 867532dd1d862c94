//! The command layer: one request (the arguments of a RESP array) in, one reply frame out.
//! No sockets here: the listener (`server.rs`) decodes, calls [`execute`], encodes. Engine
//! calls that write are awaited through the engine's `*_async` futures (the reply to a push
//! is made only once the push is durable) or, for calls with no async form (nack, pop, peek,
//! a blocking `WAIT`), run on tokio's blocking pool, so no executor thread waits on the disk.
//!
//! Error replies carry the codes of the queue-semantics research, section 8.5 (`-BADNAME`,
//! `-NOQUEUE`, `-TOOBIG`, `-BADARG`, `-NOTFOUND`, `-LEASELOST`, `-FULL`, ...), followed by the
//! engine's message; connection commands answer as Redis does, word for word, because client
//! libraries match on those words (a `HELLO` fallback, an `AUTH` check).

mod access;
mod admin;
mod conn;
mod queue;
mod run;
mod topic;

pub(crate) use queue::glob;

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use spool_engine::Error as EngineError;
use spool_resp::{Frame, Protocol};

use crate::auth::Identity;
use crate::service::Service;

pub use run::{plain_push, PushRun, Started};
pub use topic::TopicCursors;

/// What a connection remembers between requests.
#[derive(Debug, Clone)]
pub struct ConnState {
    /// The connection's id (`CLIENT ID`, `HELLO`'s `id`).
    pub id: u64,
    /// The protocol its replies are encoded in: RESP2 until `HELLO 3`.
    pub protocol: Protocol,
    /// `CLIENT SETNAME` / `HELLO ... SETNAME`.
    pub name: Option<Bytes>,
    /// Set by `QUIT`: the listener sends the reply, then closes.
    pub closing: bool,
    /// The longest argument the decoder keeps (named in `-TOOBIG` replies).
    pub arg_max: usize,
    /// Who the connection is authenticated as (`AUTH`, `HELLO ... AUTH`).
    pub identity: Identity,
    /// Its cursors on topics (`TSUB`, `TGET`...): each starts where its topic was when the
    /// connection was opened.
    pub topics: TopicCursors,
}

impl ConnState {
    /// A new connection, speaking RESP2. Its topic cursors are placed at its first request
    /// run through [`execute`]; use [`ConnState::open`] to place them when it connects.
    pub fn new(id: u64) -> ConnState {
        ConnState {
            id,
            protocol: Protocol::Resp2,
            name: None,
            closing: false,
            arg_max: spool_resp::Limits::default().bulk_max,
            identity: Identity::anonymous(),
            topics: TopicCursors::default(),
        }
    }

    /// A connection opened now: it will read, on every topic, exactly what is published
    /// from now on (dsmq's history cutoff), including topics created later.
    pub fn open(id: u64, svc: &Service) -> ConnState {
        ConnState {
            topics: TopicCursors::opened_now(svc.store()),
            ..ConnState::new(id)
        }
    }
}

/// The reply to one request.
pub type Reply = Frame;

/// Runs one request: `args[0]` is the command name (any case), the rest its arguments (bulk
/// strings; an [`Frame::Oversize`] argument is answered `-TOOBIG` without running anything).
pub async fn execute(svc: &Service, conn: &mut ConnState, args: Vec<Frame>) -> Reply {
    let store = svc.store();
    if let Some(len) = args.iter().find_map(|a| match a {
        Frame::Oversize { len } => Some(*len),
        _ => None,
    }) {
        return err(
            "TOOBIG",
            &format!(
                "an argument of {len} bytes is larger than the limit of {} bytes; nothing was done",
                conn.arg_max
            ),
        );
    }
    let Some(Frame::Bulk(name)) = args.first() else {
        return err("ERR", "Protocol error: expected an array of bulk strings");
    };
    let name = String::from_utf8_lossy(name).to_ascii_uppercase();
    if let Err(refused) = access::check(svc, &conn.identity, &name, &args[1..]) {
        return refused;
    }
    let mut a = Args::new(&args[1..]);
    if conn.topics.needs_snapshot() {
        conn.topics = TopicCursors::opened_now(store);
    }
    match name.as_str() {
        "PING" => conn::ping(&mut a),
        "ECHO" => conn::echo(&mut a),
        "HELLO" => conn::hello(svc.auth(), conn, &mut a).await,
        "AUTH" => conn::auth(svc.auth(), conn, &mut a).await,
        "SELECT" => conn::select(&mut a),
        "CLIENT" => conn::client(conn, &mut a),
        "COMMAND" => conn::command(&mut a),
        "QUIT" => {
            conn.closing = true;
            ok()
        }
        "QPUSH" => queue::push(svc, &mut a).await,
        "QPUSHMANY" => queue::push_many(svc, &mut a).await,
        "QGET" => queue::get(svc, &mut a).await,
        "QACK" | "QDEL" => queue::ack(store, &mut a).await,
        "QNACK" => queue::nack(store, &mut a).await,
        "QEXTEND" | "QTOUCH" => queue::extend(store, &mut a).await,
        "QDEAD" => queue::dead(store, &mut a).await,
        "QPOP" => queue::pop(svc, &mut a).await,
        "QPEEK" => queue::peek(svc, &mut a).await,
        "QSTATS" => queue::stats(store, &mut a),
        "QLIST" => access::readable(svc, &conn.identity, queue::list(store, &mut a)),
        "QCREATE" => admin::create(svc, conn.arg_max, &mut a).await,
        "QCONFIG" => admin::config(svc, conn.arg_max, &mut a).await,
        "QDROP" => admin::drop_queue(store, &mut a).await,
        "QPURGE" => admin::purge(store, &mut a).await,
        "QREDRIVE" => admin::redrive(svc, &conn.identity, &mut a).await,
        "TCREATE" => topic::create(svc, conn.arg_max, &mut a).await,
        "TCONFIG" => topic::config(svc, conn.arg_max, &mut a).await,
        "TDROP" => topic::drop_topic(store, &mut a).await,
        "TPUB" => topic::publish(svc, &mut a).await,
        "TSUB" => topic::subscribe(svc, &mut conn.topics, &mut a),
        "TGET" => topic::read(svc, &mut conn.topics, topic::Read::Next, &mut a).await,
        "TLATEST" => topic::read(svc, &mut conn.topics, topic::Read::Latest, &mut a).await,
        "TWAIT" => topic::read(svc, &mut conn.topics, topic::Read::Wait, &mut a).await,
        "TSTATS" => topic::stats(svc, &mut a),
        "TLIST" => access::readable(svc, &conn.identity, topic::list(store, &mut a)),
        _ => unknown_command(&args),
    }
}

/// The reply to a write the engine has applied and is making durable: awaiting it waits
/// for the commit. Owns everything it needs (`'static`), so a connection can hold several.
pub type Durable = Pin<Box<dyn Future<Output = Reply> + Send>>;

/// For the writes whose reply only waits for durability (`QPUSH`, `QPUSHMANY`, `QACK`,
/// `TPUB`):
/// applies the write now and returns its reply-to-be; `None` for every other request (run
/// it with [`execute`]). A connection that starts a pipelined burst of pushes this way and
/// awaits the replies afterwards lets them share one group commit, where awaiting each in
/// turn would cost one `fdatasync` per push. Requests started in order are applied in order.
pub fn start(svc: &Service, conn: &ConnState, args: &[Frame]) -> Option<Durable> {
    let store = svc.store();
    if args.iter().any(|a| matches!(a, Frame::Oversize { .. })) {
        return None;
    }
    let Some(Frame::Bulk(name)) = args.first() else {
        return None;
    };
    let started = |c: &[u8]| {
        ["QPUSH", "QPUSHMANY", "TPUB", "QACK", "QDEL"]
            .iter()
            .any(|n| c.eq_ignore_ascii_case(n.as_bytes()))
    };
    if !started(name) {
        return None;
    }
    if svc.auth().is_required() {
        let upper = String::from_utf8_lossy(name).to_ascii_uppercase();
        if let Err(refused) = access::check(svc, &conn.identity, &upper, &args[1..]) {
            return Some(ready(refused));
        }
    }
    let mut a = Args::new(&args[1..]);
    if name.eq_ignore_ascii_case(b"QPUSH") {
        Some(queue::push(svc, &mut a))
    } else if name.eq_ignore_ascii_case(b"QPUSHMANY") {
        Some(queue::push_many(svc, &mut a))
    } else if name.eq_ignore_ascii_case(b"TPUB") {
        Some(topic::publish(svc, &mut a))
    } else if name.eq_ignore_ascii_case(b"QACK") || name.eq_ignore_ascii_case(b"QDEL") {
        Some(queue::ack(store, &mut a))
    } else {
        None
    }
}

/// A [`Durable`] that is already decided (an argument error).
fn ready(r: Reply) -> Durable {
    Box::pin(std::future::ready(r))
}

/// Redis's exact wording (`server.c`, `processCommand`): the name and the first arguments,
/// each quoted and followed by a space, cut at about 128 bytes.
fn unknown_command(args: &[Frame]) -> Reply {
    let text = |f: &Frame| match f {
        Frame::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
        _ => String::new(),
    };
    let name: String = args.first().map(text).unwrap_or_default();
    let name: String = name.chars().take(128).collect();
    let mut list = String::new();
    for a in &args[1..] {
        if list.len() >= 128 {
            break;
        }
        let room = 128 - list.len();
        let t: String = text(a).chars().take(room).collect();
        list.push('\'');
        list.push_str(&t);
        list.push_str("' ");
    }
    err(
        "ERR",
        &format!("unknown command '{name}', with args beginning with: {list}"),
    )
}

/// `+OK`.
fn ok() -> Reply {
    Frame::Simple(Bytes::from_static(b"OK"))
}

/// `-CODE message`.
fn err(code: &str, msg: &str) -> Reply {
    Frame::Error(Bytes::from(format!("{code} {msg}")))
}

/// The error code of the research's section 8.5 for an engine error, with its message.
fn engine_err(e: &EngineError) -> Reply {
    err(crate::error::code(e), &e.to_string())
}

/// A `-BADARG` reply.
fn badarg(msg: &str) -> Reply {
    err("BADARG", msg)
}

/// The arguments of one request, consumed front to back.
#[derive(Debug)]
struct Args<'a> {
    rest: &'a [Frame],
}

impl<'a> Args<'a> {
    fn new(rest: &'a [Frame]) -> Args<'a> {
        Args { rest }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn len(&self) -> usize {
        self.rest.len()
    }

    /// The next argument's bytes (arguments are bulk strings: `execute` checked them).
    fn next(&mut self) -> Option<Bytes> {
        let (first, rest) = self.rest.split_first()?;
        self.rest = rest;
        match first {
            Frame::Bulk(b) => Some(b.clone()),
            _ => Some(Bytes::new()),
        }
    }

    /// The next argument, required, named `what` in the error.
    fn required(&mut self, what: &str) -> Result<Bytes, Reply> {
        self.next()
            .ok_or_else(|| badarg(&format!("missing {what}")))
    }

    /// The next argument as upper-case text, not consumed.
    fn peek_keyword(&self) -> Option<String> {
        match self.rest.first()? {
            Frame::Bulk(b) => Some(String::from_utf8_lossy(b).to_ascii_uppercase()),
            _ => None,
        }
    }

    /// The next argument as upper-case text (an option keyword).
    fn keyword(&mut self) -> Option<String> {
        self.next()
            .map(|b| String::from_utf8_lossy(&b).to_ascii_uppercase())
    }
}

/// A decimal number in `min..=max`, named `what` in the error (`-BADARG`).
fn number(b: &[u8], what: &str, min: u64, max: u64) -> Result<u64, Reply> {
    let n = std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| {
            badarg(&format!(
                "{what} {:?} is not a whole number",
                String::from_utf8_lossy(b)
            ))
        })?;
    if n < min || n > max {
        return Err(badarg(&format!(
            "{what} {n} is out of range: use {min} to {max}"
        )));
    }
    Ok(n)
}

#[cfg(test)]
mod tests;
