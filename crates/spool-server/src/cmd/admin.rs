//! Queue management (queue-semantics research, section 8.3): `QCREATE`, `QCONFIG`, `QDROP`,
//! `QPURGE`, `QREDRIVE`.
//!
//! A queue's config, as `QCREATE` and `QCONFIG` take it and `QSTATS` (or `QCONFIG q` alone)
//! reports it, maps onto the engine's [`QueueConfig`]:
//!
//! | key | engine field | range, default |
//! |---|---|---|
//! | `VT ms` | `visibility` | 1 ms to 12 h, 30 s |
//! | `DELAY ms` | `delay` | 0 to 7 d, 0 |
//! | `MAXSIZE bytes` | `max_payload_bytes` | 1 to the server's payload limit, 1 MiB |
//! | `MAXLEN n` | `max_messages` | 0 (unbounded) or more, 0 |
//! | `MAXRECEIVES n` | `max_receives` | 0 (no limit) to 2^32-1, 0 |
//! | `DLQ name` | `dead_letter_queue` | a queue name, `""` for none; default `<q>.dlq` when MAXRECEIVES > 0 |
//! | `RETENTION ms` | `retention` | 0 (keep forever) to 30 d, 4 d |
//! | `MAXBYTES bytes` | `max_bytes` | 0 (unbounded) or more, 0 (spool's) |
//! | `OVERFLOW reject\|evict` | `overflow` | `reject` (spool's: `evict` drops the lowest priority's oldest) |
//! | `MAXINFLIGHT n` | `max_in_flight` | 0 (unbounded) or more, 100,000 (spool's) |
//!
//! A queue with `MAXRECEIVES` and no `DLQ` gets `<q>.dlq` (created with it, with the default
//! config and no DLQ of its own), so its name is limited to 124 characters.

use std::time::Duration;

use bytes::Bytes;
use spool_engine::options::PAYLOAD_MAX;
use spool_engine::{name, Error as EngineError, Overflow, QueueConfig, Store};
use spool_resp::Frame;

use crate::auth::Identity;
use crate::limits::{COUNT_MAX, DELAY_MS_MAX, TTL_MS_MAX, VT_MS_MAX};
use crate::service::Service;
use crate::wait::blocking;
use crate::Manage;

use super::queue::{int, key, queue_name, refused};
use super::{badarg, engine_err, err, number, Args, Reply};

/// The longest queue name that can have the automatic `<q>.dlq` (names are at most 128).
const NAME_WITH_DLQ_MAX: usize = 128 - ".dlq".len();

/// Config keys given to `QCREATE` or `QCONFIG`, checked; applied to a config with
/// [`Changes::apply`].
#[derive(Debug, Default, Clone)]
struct Changes {
    visibility_ms: Option<u64>,
    delay_ms: Option<u64>,
    max_payload_bytes: Option<usize>,
    max_messages: Option<u64>,
    max_bytes: Option<u64>,
    max_receives: Option<u32>,
    /// `Some("")`: `DLQ ""`, no dead-letter queue.
    dead_letter_queue: Option<String>,
    /// `Some(0)`: keep forever.
    retention_ms: Option<u64>,
    overflow: Option<Overflow>,
    max_in_flight: Option<u64>,
}

impl Changes {
    fn parse(q: &str, a: &mut Args<'_>, arg_max: usize) -> Result<Changes, Reply> {
        let size_max = arg_max.min(PAYLOAD_MAX) as u64;
        let mut c = Changes::default();
        while let Some(k) = a.keyword() {
            let v = a.required(&format!("{k} value"))?;
            match k.as_str() {
                "VT" => c.visibility_ms = Some(number(&v, "VT", 1, VT_MS_MAX)?),
                "DELAY" => c.delay_ms = Some(number(&v, "DELAY", 0, DELAY_MS_MAX)?),
                "MAXSIZE" => {
                    c.max_payload_bytes = Some(
                        usize::try_from(number(&v, "MAXSIZE", 1, size_max)?)
                            .unwrap_or(usize::MAX),
                    );
                }
                "MAXLEN" => c.max_messages = Some(number(&v, "MAXLEN", 0, u64::MAX)?),
                "MAXBYTES" => c.max_bytes = Some(number(&v, "MAXBYTES", 0, u64::MAX)?),
                "MAXRECEIVES" => {
                    c.max_receives = Some(
                        u32::try_from(number(&v, "MAXRECEIVES", 0, u64::from(u32::MAX))?)
                            .unwrap_or(u32::MAX),
                    );
                }
                "DLQ" => c.dead_letter_queue = Some(dlq_name(q, &v)?),
                "RETENTION" => c.retention_ms = Some(number(&v, "RETENTION", 0, TTL_MS_MAX)?),
                "OVERFLOW" => {
                    c.overflow = Some(match String::from_utf8_lossy(&v).to_ascii_uppercase().as_str() {
                        "REJECT" => Overflow::Reject,
                        "EVICT" => Overflow::EvictLowestPriority,
                        other => {
                            return Err(badarg(&format!(
                                "OVERFLOW {other:?}: use REJECT (a push to a full queue is FULL) or EVICT (the oldest of the lowest priority makes room)"
                            )))
                        }
                    });
                }
                "MAXINFLIGHT" => c.max_in_flight = Some(number(&v, "MAXINFLIGHT", 0, u64::MAX)?),
                _ => {
                    return Err(badarg(&format!(
                        "unknown option {k:?}: queues take VT, DELAY, MAXSIZE, MAXLEN, MAXRECEIVES, DLQ, RETENTION, MAXBYTES, OVERFLOW, MAXINFLIGHT"
                    )))
                }
            }
        }
        Ok(c)
    }

    /// The config with these changes, checked as a whole (the automatic DLQ's name).
    fn apply(&self, q: &str, mut c: QueueConfig) -> Result<QueueConfig, Reply> {
        let ms = Duration::from_millis;
        if let Some(v) = self.visibility_ms {
            c.visibility = ms(v);
        }
        if let Some(v) = self.delay_ms {
            c.delay = ms(v);
        }
        if let Some(v) = self.max_payload_bytes {
            c.max_payload_bytes = v;
        }
        if let Some(v) = self.max_messages {
            c.max_messages = v;
        }
        if let Some(v) = self.max_bytes {
            c.max_bytes = v;
        }
        if let Some(v) = self.max_receives {
            c.max_receives = v;
        }
        if let Some(v) = &self.dead_letter_queue {
            c.dead_letter_queue = (!v.is_empty()).then(|| v.clone());
        }
        if let Some(v) = self.retention_ms {
            c.retention = (v > 0).then(|| ms(v));
        }
        if let Some(v) = self.overflow {
            c.overflow = v;
        }
        if let Some(v) = self.max_in_flight {
            c.max_in_flight = v;
        }
        if c.max_receives > 0 && c.dead_letter_queue.is_none() && q.len() > NAME_WITH_DLQ_MAX {
            return Err(err(
                "BADNAME",
                &format!(
                    "queue name {q:?} is {} characters: a queue with MAXRECEIVES and no DLQ gets the dead-letter queue <name>.dlq, so its name is at most {NAME_WITH_DLQ_MAX}; shorten it or name a DLQ",
                    q.len()
                ),
            ));
        }
        Ok(c)
    }
}

/// `DLQ name`: a queue name other than `q` itself, or `""` for none.
fn dlq_name(q: &str, v: &[u8]) -> Result<String, Reply> {
    if v.is_empty() {
        return Ok(String::new());
    }
    let d = String::from_utf8_lossy(v).into_owned();
    name::validate(&d).map_err(|e| engine_err(&e))?;
    if d == q {
        return Err(badarg(&format!(
            "queue {q:?} cannot be its own dead-letter queue"
        )));
    }
    Ok(d)
}

/// A queue config as map pairs (in `QSTATS` and `QCONFIG q`): `vt_ms`, `delay_ms`,
/// `maxsize`, `maxlen`, `maxreceives`, `dlq` (nil for none), `retention_ms` (0: forever),
/// `maxbytes`, `overflow`, `maxinflight`.
pub(super) fn config_pairs(q: &str, c: &QueueConfig) -> Vec<(Frame, Frame)> {
    let ms = |d: Duration| int(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    vec![
        (key("vt_ms"), ms(c.visibility)),
        (key("delay_ms"), ms(c.delay)),
        (key("maxsize"), int(c.max_payload_bytes as u64)),
        (key("maxlen"), int(c.max_messages)),
        (key("maxreceives"), int(u64::from(c.max_receives))),
        (
            key("dlq"),
            c.dead_letter_queue_of(q)
                .map_or(Frame::Null, |d| Frame::Bulk(Bytes::from(d))),
        ),
        (key("retention_ms"), c.retention.map_or(int(0), ms)),
        (key("maxbytes"), int(c.max_bytes)),
        (
            key("overflow"),
            key(match c.overflow {
                Overflow::Reject => "reject",
                Overflow::EvictLowestPriority => "evict",
            }),
        ),
        (key("maxinflight"), int(c.max_in_flight)),
    ]
}

/// `QCREATE q [KEY value ...]` -> `:1` created, `:0` it exists with this very config,
/// `-EXISTS` it exists with another (change it with `QCONFIG`). Keys: see the module docs.
pub(super) async fn create(svc: &Service, arg_max: usize, a: &mut Args<'_>) -> Reply {
    let parsed = (|| {
        let q = queue_name(a)?;
        let c = Changes::parse(&q, a, arg_max)?;
        Ok::<_, Reply>((q, c))
    })();
    let (q, changes) = match parsed {
        Ok(p) => p,
        Err(r) => return r,
    };
    let svc = svc.clone();
    let name = q.clone();
    let r = blocking(move || Ok(svc.create_queue(&q, |base| changes.apply(&q, base)))).await;
    match r {
        Ok(Ok(created)) => Frame::Integer(i64::from(created)),
        Ok(Err(e)) => managed(e, "queue", &name, "Q"),
        Err(e) => engine_err(&e),
    }
}

/// The reply to a creation or change that was not applied.
pub(super) fn managed(e: Manage<Reply>, kind: &str, name: &str, cmd: &str) -> Reply {
    match e {
        Manage::Engine(EngineError::Exists { .. }) => exists(kind, name, cmd),
        Manage::Engine(e) => engine_err(&e),
        Manage::Refused(r) => refused(&r),
        Manage::Invalid(r) => r,
    }
}

/// `-EXISTS` in the words of this front end (the engine's names its own API).
pub(super) fn exists(kind: &str, name: &str, cmd: &str) -> Reply {
    err(
        "EXISTS",
        &format!("{kind} {name:?} already exists with a different config; change it with {cmd}CONFIG, or drop it with {cmd}DROP and create it again"),
    )
}

/// `QCONFIG q key value ...` -> `+OK`: every key applied, or none (and concurrent `QCONFIG`s
/// of this server apply one after the other). `QCONFIG q` alone -> the config, as a map.
pub(super) async fn config(svc: &Service, arg_max: usize, a: &mut Args<'_>) -> Reply {
    let q = match queue_name(a) {
        Ok(q) => q,
        Err(r) => return r,
    };
    if a.is_empty() {
        return match svc.store().queue_config(&q) {
            Ok(c) => Frame::Map(config_pairs(&q, &c)),
            Err(e) => engine_err(&e),
        };
    }
    let changes = match Changes::parse(&q, a, arg_max) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let svc = svc.clone();
    let name = q.clone();
    let r = blocking(move || Ok(svc.configure_queue(&q, |old| changes.apply(&q, old)))).await;
    match r {
        Ok(Ok(_)) => super::ok(),
        Ok(Err(e)) => managed(e, "queue", &name, "Q"),
        Err(e) => engine_err(&e),
    }
}

/// `QDROP q` -> `:1` dropped with all its messages, `:0` there was none. Its dead-letter
/// queue stays (drop it too if it is not wanted).
pub(super) async fn drop_queue(store: &Store, a: &mut Args<'_>) -> Reply {
    let q = match queue_name(a) {
        Ok(q) if a.is_empty() => q,
        Ok(_) => return badarg("QDROP takes one queue name"),
        Err(r) => return r,
    };
    let s = store.clone();
    match blocking(move || s.drop_queue(&q)).await {
        Ok(dropped) => Frame::Integer(i64::from(dropped)),
        Err(e) => engine_err(&e),
    }
}

/// `QPURGE q` -> how many messages were deleted (the queue and its config stay).
pub(super) async fn purge(store: &Store, a: &mut Args<'_>) -> Reply {
    let q = match queue_name(a) {
        Ok(q) if a.is_empty() => q,
        Ok(_) => return badarg("QPURGE takes one queue name"),
        Err(r) => return r,
    };
    let s = store.clone();
    match blocking(move || s.purge(&q)).await {
        Ok(n) => int(n),
        Err(e) => engine_err(&e),
    }
}

/// `QREDRIVE dlq [COUNT n]` -> how many dead letters moved back to the queues they came
/// from (all of them without `COUNT`), with fresh ids and counters. `-NODLQ` when `dlq` is
/// not the dead-letter queue of any queue. A dead letter whose queue was dropped stays, and
/// so does one whose queue the caller may not write to (a redrive writes to each source).
pub(super) async fn redrive(svc: &Service, who: &Identity, a: &mut Args<'_>) -> Reply {
    let parsed = (|| {
        let d = queue_name(a)?;
        let mut count = None;
        while let Some(k) = a.keyword() {
            match k.as_str() {
                "COUNT" => {
                    count = Some(number(&a.required("COUNT value")?, "COUNT", 1, COUNT_MAX)?);
                }
                _ => return Err(badarg(&format!("unknown option {k:?}"))),
            }
        }
        Ok::<_, Reply>((d, count))
    })();
    let (d, count) = match parsed {
        Ok(p) => p,
        Err(r) => return r,
    };
    let (svc, who) = (svc.clone(), who.clone());
    match blocking(move || Ok(svc.redrive::<Reply>(&d, count, &who))).await {
        Ok(Ok(n)) => int(n),
        Ok(Err(e)) => managed(e, "queue", "", "Q"),
        Err(e) => engine_err(&e),
    }
}
