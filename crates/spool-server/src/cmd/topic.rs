//! Topic (pub/sub) commands (queue-semantics research, section 8.4): `TCREATE`, `TCONFIG`,
//! `TDROP`, `TPUB`, `TSUB`, `TGET`, `TLATEST`, `TWAIT`, `TSTATS`, `TLIST`.
//!
//! A topic is a retained log read through cursors; a cursor is the next sequence number to
//! read. Reads that name no `CURSOR` use the connection's own cursor on that topic
//! ([`TopicCursors`]): until the connection moves it (`TSUB`, or a read), it stands where the
//! topic was when the connection was opened, so a connection sees exactly what was published
//! after it connected, on every topic, including topics created later (dsmq's history
//! cutoff). A read with `CURSOR c` is stateless (what HTTP clients do) and leaves the
//! connection's cursor alone.
//!
//! A read replies `[seq, payload, published_at_ms, next_cursor, skipped]` or nil, where
//! `skipped` counts the messages between the cursor and `seq` that the reader will never see
//! (expired before it read them, or passed over by `TLATEST`).

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use spool_engine::options::TOPIC_PAYLOAD_MAX;
use spool_engine::{name, Cursor, Error as EngineError, Store, TopicConfig, TopicMessage};
use spool_resp::Frame;

use crate::limits::{TTL_MS_MAX, WAIT_MS_MAX};
use crate::registry::Subscription;
use crate::service::Service;
use crate::wait::blocking;

use super::queue::{glob, int, key};
use super::{badarg, engine_err, err, number, ready, Args, Durable, Reply};

/// A connection's cursors on topics.
#[derive(Debug, Clone, Default)]
pub struct TopicCursors {
    /// Each topic's next sequence number when the connection was opened (topics never
    /// published to are left out: their cursor is 1). `None` until taken.
    opened: Option<HashMap<String, u64>>,
    /// Cursors the connection moved (`TSUB`, reads), each counted as a subscriber of its
    /// topic for as long as the connection holds it.
    held: HashMap<String, Held>,
}

#[derive(Debug, Clone)]
struct Held {
    next: u64,
    _reader: Subscription,
}

impl TopicCursors {
    /// The cursors of a connection opened now: a snapshot of every topic's position (one
    /// short engine lock per topic that has messages).
    pub fn opened_now(store: &Store) -> TopicCursors {
        let opened = store
            .topics()
            .into_iter()
            .filter_map(|t| {
                let next = store.subscribe(&t).ok()?.next;
                (next > 1).then_some((t, next))
            })
            .collect();
        TopicCursors {
            opened: Some(opened),
            held: HashMap::new(),
        }
    }

    /// Whether the open-time snapshot is still to be taken.
    pub(super) fn needs_snapshot(&self) -> bool {
        self.opened.is_none()
    }

    /// The connection's cursor on `topic`. One past the topic's end means the topic was
    /// dropped (and maybe created again) since: every message it has now came later, so the
    /// cursor starts over at 1.
    fn implicit(&self, store: &Store, topic: &str) -> Result<u64, EngineError> {
        let c = self
            .held
            .get(topic)
            .map(|h| h.next)
            .or_else(|| self.opened.as_ref().and_then(|o| o.get(topic).copied()))
            .unwrap_or(1);
        let end = store.subscribe(topic)?.next;
        Ok(if c > end { 1 } else { c })
    }

    /// Moves the connection's cursor on `topic` to `next`.
    fn hold(&mut self, svc: &Service, topic: &str, next: u64) {
        match self.held.get_mut(topic) {
            Some(h) => h.next = next,
            None => {
                self.held.insert(
                    topic.to_string(),
                    Held {
                        next,
                        _reader: svc.registry().subscribe(topic),
                    },
                );
            }
        }
    }
}

/// The topic name argument, checked against the name rule (`-BADNAME`).
fn topic_name(a: &mut Args<'_>) -> Result<String, Reply> {
    let t = a.required("topic name")?;
    let t = String::from_utf8(t.to_vec()).map_err(|_| {
        err(
            "BADNAME",
            "topic names are 1-128 characters of A-Z a-z 0-9 . _ - and start with a letter or digit",
        )
    })?;
    name::validate(&t).map_err(|e| engine_err(&e))?;
    Ok(t)
}

/// `NOTOPIC` for a read of a missing topic when the server does not auto-create (with
/// auto-create on, such a read is empty).
fn check_readable(svc: &Service, topic: &str) -> Result<(), Reply> {
    svc.topic_readable(topic)
        .map_err(|r| super::queue::refused(&r))
}

/// Applies `KEY value` pairs to a topic config: `TTL ms`, `MAXLEN n`, and spool's
/// `MAXSIZE bytes` (largest payload) and `MAXBYTES bytes` (retained payload bytes).
fn topic_options(a: &mut Args<'_>, c: &mut TopicConfig, arg_max: usize) -> Result<(), Reply> {
    let size_max = arg_max.min(TOPIC_PAYLOAD_MAX) as u64;
    while let Some(k) = a.keyword() {
        let v = a.required(&format!("{k} value"))?;
        match k.as_str() {
            "TTL" => c.retention = Duration::from_millis(number(&v, "TTL", 1, TTL_MS_MAX)?),
            "MAXLEN" => c.max_messages = number(&v, "MAXLEN", 0, u64::MAX)?,
            "MAXBYTES" => c.max_bytes = number(&v, "MAXBYTES", 0, u64::MAX)?,
            "MAXSIZE" => {
                c.max_payload_bytes =
                    usize::try_from(number(&v, "MAXSIZE", 1, size_max)?).unwrap_or(usize::MAX);
            }
            _ => {
                return Err(badarg(&format!(
                    "unknown option {k:?}: topics take TTL, MAXLEN, MAXSIZE, MAXBYTES"
                )))
            }
        }
    }
    Ok(())
}

/// A topic config as a map (`TCONFIG t` without changes, and within `TSTATS`).
fn config_pairs(c: &TopicConfig) -> Vec<(Frame, Frame)> {
    vec![
        (
            key("ttl_ms"),
            int(u64::try_from(c.retention.as_millis()).unwrap_or(u64::MAX)),
        ),
        (key("maxlen"), int(c.max_messages)),
        (key("maxbytes"), int(c.max_bytes)),
        (key("maxsize"), int(c.max_payload_bytes as u64)),
    ]
}

/// `TCREATE t [TTL ms] [MAXLEN n] [MAXSIZE b] [MAXBYTES b]` -> `:1` created, `:0` it exists
/// with this config, `-EXISTS` it exists with another (change it with `TCONFIG`).
pub(super) async fn create(svc: &Service, arg_max: usize, a: &mut Args<'_>) -> Reply {
    let parsed = (|| {
        let t = topic_name(a)?;
        // Checked against a throwaway config here; applied to the store's defaults below.
        let pairs: Vec<Frame> = std::iter::from_fn(|| a.next()).map(Frame::Bulk).collect();
        topic_options(&mut Args::new(&pairs), &mut TopicConfig::default(), arg_max)?;
        Ok::<_, Reply>((t, pairs))
    })();
    let (t, pairs) = match parsed {
        Ok(p) => p,
        Err(r) => return r,
    };
    let svc = svc.clone();
    let name = t.clone();
    let r = blocking(move || {
        Ok(svc.create_topic(&t, |mut c| {
            topic_options(&mut Args::new(&pairs), &mut c, arg_max).map(|()| c)
        }))
    })
    .await;
    match r {
        Ok(Ok(created)) => Frame::Integer(i64::from(created)),
        Ok(Err(e)) => super::admin::managed(e, "topic", &name, "T"),
        Err(e) => engine_err(&e),
    }
}

/// `TCONFIG t key value ...` -> `+OK`, every key or none applied; `TCONFIG t` -> the config.
pub(super) async fn config(svc: &Service, arg_max: usize, a: &mut Args<'_>) -> Reply {
    let t = match topic_name(a) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let store = svc.store();
    if a.is_empty() {
        return match store.topic_stats(&t) {
            Ok(s) => Frame::Map(config_pairs(&s.config)),
            Err(e) => engine_err(&e),
        };
    }
    // Check the pairs against a throwaway config first: a bad pair changes nothing.
    let pairs: Vec<Frame> = std::iter::from_fn(|| a.next()).map(Frame::Bulk).collect();
    if let Err(r) = topic_options(&mut Args::new(&pairs), &mut TopicConfig::default(), arg_max) {
        return r;
    }
    let svc = svc.clone();
    let name = t.clone();
    let r = blocking(move || {
        Ok(svc.configure_topic(&t, |mut c| {
            topic_options(&mut Args::new(&pairs), &mut c, arg_max).map(|()| c)
        }))
    })
    .await;
    match r {
        Ok(Ok(_)) => super::ok(),
        Ok(Err(e)) => super::admin::managed(e, "topic", &name, "T"),
        Err(e) => engine_err(&e),
    }
}

/// `TDROP t` -> `:1` dropped (with its messages), `:0` there was none.
pub(super) async fn drop_topic(store: &Store, a: &mut Args<'_>) -> Reply {
    let t = match topic_name(a) {
        Ok(t) if a.is_empty() => t,
        Ok(_) => return badarg("TDROP takes one topic name"),
        Err(r) => return r,
    };
    let s = store.clone();
    match blocking(move || s.drop_topic(&t)).await {
        Ok(dropped) => Frame::Integer(i64::from(dropped)),
        Err(e) => engine_err(&e),
    }
}

/// `TPUB t payload` -> `:seq`, once the message is durable. Applied when this is called;
/// the returned future waits for the commit (so pipelined publishes share one).
pub(super) fn publish(svc: &Service, a: &mut Args<'_>) -> Durable {
    let parsed = (|| {
        let t = topic_name(a)?;
        let payload = a.required("payload")?;
        if !a.is_empty() {
            return Err(badarg("TPUB takes a topic and one payload"));
        }
        svc.topic_write(&t, || svc.store().publish_async(&t, payload))
            .map_err(|r| err(r.code(), &r.to_string()))
    })();
    match parsed {
        Err(r) => ready(r),
        Ok(committed) => Box::pin(async move {
            match committed.await {
                Ok(seqs) => seqs.first().map_or_else(
                    || err("ERR", "the engine returned no sequence number"),
                    |&s| int(s),
                ),
                Err(e) => engine_err(&e),
            }
        }),
    }
}

/// `TSUB t` -> the cursor "from now" (the topic's last sequence number + 1), which also
/// becomes the connection's cursor on `t`.
pub(super) fn subscribe(svc: &Service, conn: &mut TopicCursors, a: &mut Args<'_>) -> Reply {
    let t = match topic_name(a) {
        Ok(t) if a.is_empty() => t,
        Ok(_) => return badarg("TSUB takes one topic name"),
        Err(r) => return r,
    };
    if let Err(r) = check_readable(svc, &t) {
        return r;
    }
    match svc.store().subscribe(&t) {
        Ok(c) => {
            conn.hold(svc, &t, c.next);
            int(c.next)
        }
        Err(e) => engine_err(&e),
    }
}

/// Which read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Read {
    /// `TGET t [CURSOR c]`: the oldest message at or after the cursor.
    Next,
    /// `TLATEST t [CURSOR c]`: the newest, skipping the rest.
    Latest,
    /// `TWAIT t TIMEOUT ms [CURSOR c]`: `TGET` that waits for a message.
    Wait,
}

/// `TGET`, `TLATEST`, `TWAIT` -> `[seq, payload, published_at_ms, next_cursor, skipped]` or
/// nil.
pub(super) async fn read(
    svc: &Service,
    cursors: &mut TopicCursors,
    how: Read,
    a: &mut Args<'_>,
) -> Reply {
    match read_inner(svc, cursors, how, a).await {
        Ok(r) | Err(r) => r,
    }
}

async fn read_inner(
    svc: &Service,
    cursors: &mut TopicCursors,
    how: Read,
    a: &mut Args<'_>,
) -> Result<Reply, Reply> {
    let t = topic_name(a)?;
    let mut explicit = None;
    let mut timeout = None;
    while let Some(k) = a.keyword() {
        match k.as_str() {
            "CURSOR" => {
                explicit = Some(number(&a.required("CURSOR value")?, "CURSOR", 1, u64::MAX)?);
            }
            "TIMEOUT" if how == Read::Wait => {
                timeout = Some(number(
                    &a.required("TIMEOUT value")?,
                    "TIMEOUT",
                    0,
                    WAIT_MS_MAX,
                )?);
            }
            _ => return Err(badarg(&format!("unknown option {k:?}"))),
        }
    }
    let wait = match (how, timeout) {
        (Read::Wait, None) => {
            return Err(badarg(
                "TWAIT needs TIMEOUT ms (0 to 60000): TWAIT topic TIMEOUT ms [CURSOR c]",
            ))
        }
        (_, t) => Duration::from_millis(t.unwrap_or(0)),
    };
    check_readable(svc, &t)?;
    let store = svc.store();
    let next = match explicit {
        Some(c) => {
            // Also for a topic that does not exist (yet): its end is 1.
            let end = store.subscribe(&t).map_err(|e| engine_err(&e))?.next;
            if c > end {
                return Err(badarg(&format!(
                    "cursor {c} is past the end of topic {t:?} (its next sequence number is {end}); use the cursor TSUB returned, or a read's next_cursor"
                )));
            }
            c
        }
        None => cursors.implicit(store, &t).map_err(|e| engine_err(&e))?,
    };
    // A waiting call is a reader of the topic: the connection's own cursor counts it from
    // now on; a stateless wait (CURSOR given) counts while it waits.
    let _waiting = match explicit {
        None => {
            cursors.hold(svc, &t, next);
            None
        }
        Some(_) => (how == Read::Wait).then(|| svc.registry().subscribe(&t)),
    };
    let mut cursor = Cursor {
        topic: t.clone(),
        next,
        name: None,
    };
    let got = match how {
        Read::Next | Read::Wait => crate::wait::topic_next(store, &mut cursor, wait).await,
        Read::Latest => {
            let s = store.clone();
            let mut c = cursor.clone();
            blocking(move || s.topic_latest(&mut c).map(|m| (m, c)))
                .await
                .map(|(m, c)| {
                    cursor = c;
                    m
                })
        }
    }
    .map_err(|e| engine_err(&e))?;
    if explicit.is_none() {
        cursors.hold(svc, &t, cursor.next);
    }
    Ok(got.map_or(Frame::Null, |m| message(&m, cursor.next)))
}

/// `[seq, payload, published_at_ms, next_cursor, skipped]`.
fn message(m: &TopicMessage, next: u64) -> Frame {
    Frame::Array(vec![
        int(m.seq),
        Frame::Bulk(m.payload.clone()),
        int(m.published_at),
        int(next),
        int(m.skipped),
    ])
}

/// `TSTATS t` -> a map of `last_seq`, `retained`, `bytes`, `oldest_age_ms`, `subscribers`,
/// `total_published`, `total_expired`, and the config (`ttl_ms`, `maxlen`, `maxbytes`,
/// `maxsize`).
pub(super) fn stats(svc: &Service, a: &mut Args<'_>) -> Reply {
    let t = match topic_name(a) {
        Ok(t) if a.is_empty() => t,
        Ok(_) => return badarg("TSTATS takes one topic name"),
        Err(r) => return r,
    };
    let s = match svc.store().topic_stats(&t) {
        Ok(s) => s,
        Err(e) => return engine_err(&e),
    };
    let mut m = vec![
        (key("last_seq"), int(s.last_seq)),
        (key("retained"), int(s.retained)),
        (key("bytes"), int(s.bytes)),
        (key("oldest_age_ms"), int(s.oldest_age_ms)),
        (
            key("subscribers"),
            int(svc.registry().subscribers(&t) as u64),
        ),
        (key("total_published"), int(s.counters.published)),
        (key("total_expired"), int(s.counters.expired)),
    ];
    m.extend(config_pairs(&s.config));
    Frame::Map(m)
}

/// `TLIST [pattern]` -> topic names, sorted; the pattern is a glob with `*` and `?`.
pub(super) fn list(store: &Store, a: &mut Args<'_>) -> Reply {
    let pattern: Option<Bytes> = a.next();
    if !a.is_empty() {
        return badarg("TLIST takes at most one pattern");
    }
    Frame::Array(
        store
            .topics()
            .into_iter()
            .filter(|n| pattern.as_deref().is_none_or(|p| glob(p, n.as_bytes())))
            .map(|n| Frame::Bulk(Bytes::from(n)))
            .collect(),
    )
}
