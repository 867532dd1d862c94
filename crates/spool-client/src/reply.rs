//! Reply frames into typed values. Total: any frame the server sends gives a value or an
//! [`Error`] (a refusal for an error reply, [`Error::Protocol`] for a shape the command does
//! not return), never a panic. RESP2 and RESP3 forms are both accepted (a map or a flat
//! array; `$-1`, `*-1` or `_` for nil).

use std::time::Duration;

use bytes::Bytes;
use spool_resp::Frame;

use crate::error::Error;
use crate::types::{
    Message, Overflow, QueueConfig, QueueStats, Receipt, TopicConfig, TopicMessage, TopicStats,
};

fn unexpected(what: &str, f: &Frame) -> Error {
    let mut shown = format!("{f:?}");
    if shown.len() > 200 {
        let mut cut = 200;
        while !shown.is_char_boundary(cut) {
            cut -= 1;
        }
        shown.truncate(cut);
        shown.push_str("...");
    }
    Error::Protocol(format!("expected {what}, got {shown}"))
}

/// The reply, or the server's refusal.
pub(crate) fn ok(f: Frame) -> Result<Frame, Error> {
    match f {
        Frame::Error(e) => Err(Error::from_reply(&e)),
        f => Ok(f),
    }
}

pub(crate) fn is_nil(f: &Frame) -> bool {
    matches!(f, Frame::Null | Frame::NullArray)
}

/// A non-negative number: an integer, or decimal text (ids are sent as strings).
pub(crate) fn u64_of(f: &Frame) -> Result<u64, Error> {
    match f {
        Frame::Integer(n) => u64::try_from(*n).map_err(|_| unexpected("a number >= 0", f)),
        Frame::Bulk(b) | Frame::Simple(b) | Frame::BigNumber(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| unexpected("a decimal number", f)),
        _ => Err(unexpected("a number", f)),
    }
}

pub(crate) fn u64_reply(f: Frame) -> Result<u64, Error> {
    u64_of(&ok(f)?)
}

/// `:1` / `:0` (or `+OK`, true).
pub(crate) fn bool_reply(f: Frame) -> Result<bool, Error> {
    match ok(f)? {
        Frame::Integer(n) => Ok(n != 0),
        Frame::Boolean(b) => Ok(b),
        Frame::Simple(s) if s.eq_ignore_ascii_case(b"OK") => Ok(true),
        f => Err(unexpected(":1 or :0", &f)),
    }
}

/// Any reply that is not an error.
pub(crate) fn unit_reply(f: Frame) -> Result<(), Error> {
    ok(f).map(|_| ())
}

fn items(f: Frame, what: &str) -> Result<Vec<Frame>, Error> {
    match f {
        Frame::Array(v) | Frame::Set(v) => Ok(v),
        f if is_nil(&f) => Ok(Vec::new()),
        f => Err(unexpected(what, &f)),
    }
}

fn text(f: Frame) -> Result<String, Error> {
    match f {
        Frame::Bulk(b) | Frame::Simple(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
        Frame::Verbatim { text, .. } => Ok(String::from_utf8_lossy(&text).into_owned()),
        f => Err(unexpected("a string", &f)),
    }
}

pub(crate) fn ids_reply(f: Frame) -> Result<Vec<u64>, Error> {
    items(ok(f)?, "an array of ids")?
        .iter()
        .map(u64_of)
        .collect()
}

pub(crate) fn names_reply(f: Frame) -> Result<Vec<String>, Error> {
    items(ok(f)?, "an array of names")?
        .into_iter()
        .map(text)
        .collect()
}

fn payload(f: Frame) -> Result<Bytes, Error> {
    match f {
        Frame::Bulk(b) | Frame::Simple(b) => Ok(b),
        f => Err(unexpected("a payload (bulk string)", &f)),
    }
}

fn opt_u64(f: &Frame) -> Result<Option<u64>, Error> {
    if is_nil(f) {
        Ok(None)
    } else {
        u64_of(f).map(Some)
    }
}

/// `[id, receipt|nil, payload, priority, enqueued_at_ms, first_received_at_ms|nil,
/// receive_count, visible_at_ms]`.
pub(crate) fn message(f: Frame) -> Result<Message, Error> {
    let shape = "a message record [id, receipt, payload, priority, enqueued_at_ms, first_received_at_ms, receive_count, visible_at_ms]";
    let v = match f {
        Frame::Array(v) if v.len() == 8 => v,
        f => return Err(unexpected(shape, &f)),
    };
    let mut it = v.into_iter();
    let mut next = || it.next().unwrap_or(Frame::Null);
    let id = u64_of(&next())?;
    let receipt = match next() {
        f if is_nil(&f) => None,
        f => {
            let t = text(f)?;
            Some(
                t.parse::<Receipt>()
                    .map_err(|e| Error::Protocol(e.to_string()))?,
            )
        }
    };
    let payload = payload(next())?;
    let pri = next();
    let priority = u8::try_from(u64_of(&pri)?).map_err(|_| unexpected("a priority 0-255", &pri))?;
    let enqueued_at_ms = u64_of(&next())?;
    let first_received_at_ms = opt_u64(&next())?;
    let rc = next();
    let receive_count =
        u32::try_from(u64_of(&rc)?).map_err(|_| unexpected("a receive count", &rc))?;
    let visible_at_ms = u64_of(&next())?;
    Ok(Message {
        id,
        receipt,
        payload,
        priority,
        enqueued_at_ms,
        first_received_at_ms,
        receive_count,
        visible_at_ms,
    })
}

pub(crate) fn messages_reply(f: Frame) -> Result<Vec<Message>, Error> {
    items(ok(f)?, "an array of message records")?
        .into_iter()
        .map(message)
        .collect()
}

/// `[seq, payload, published_at_ms, next_cursor, skipped]` or nil.
pub(crate) fn topic_message_reply(f: Frame) -> Result<Option<TopicMessage>, Error> {
    let v = match ok(f)? {
        f if is_nil(&f) => return Ok(None),
        Frame::Array(v) if v.len() == 5 => v,
        f => {
            return Err(unexpected(
                "a topic record [seq, payload, published_at_ms, next_cursor, skipped] or nil",
                &f,
            ))
        }
    };
    let mut it = v.into_iter();
    let mut next = || it.next().unwrap_or(Frame::Null);
    Ok(Some(TopicMessage {
        seq: u64_of(&next())?,
        payload: payload(next())?,
        published_at_ms: u64_of(&next())?,
        next_cursor: u64_of(&next())?,
        skipped: u64_of(&next())?,
    }))
}

/// A map (RESP3) or a flat array of keys and values (RESP2), as `(key, value)` pairs.
fn pairs(f: Frame) -> Result<Vec<(String, Frame)>, Error> {
    let pairs: Vec<(Frame, Frame)> = match ok(f)? {
        Frame::Map(p) => p,
        Frame::Array(v) if v.len() % 2 == 0 => {
            let mut p = Vec::with_capacity(v.len() / 2);
            let mut it = v.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                p.push((k, v));
            }
            p
        }
        f => return Err(unexpected("a map", &f)),
    };
    pairs.into_iter().map(|(k, v)| Ok((text(k)?, v))).collect()
}

fn millis(f: &Frame) -> Result<Duration, Error> {
    u64_of(f).map(Duration::from_millis)
}

/// A queue config key the server reports (`QSTATS`, `QCONFIG q`); `false` if `key` is not one.
fn queue_config_field(c: &mut QueueConfig, key: &str, v: &Frame) -> Result<bool, Error> {
    match key {
        "vt_ms" => c.visibility = Some(millis(v)?),
        "delay_ms" => c.delay = Some(millis(v)?),
        "maxsize" => c.max_size = Some(u64_of(v)?),
        "maxlen" => c.max_len = Some(u64_of(v)?),
        "maxreceives" => {
            c.max_receives = Some(u32::try_from(u64_of(v)?).map_err(|_| unexpected("a u32", v))?);
        }
        // nil: none, which `DLQ ""` sets.
        "dlq" if is_nil(v) => c.dlq = Some(String::new()),
        "dlq" => c.dlq = Some(text(v.clone())?),
        "retention_ms" => c.retention = Some(millis(v)?),
        "maxbytes" => c.max_bytes = Some(u64_of(v)?),
        "overflow" => {
            c.overflow = Some(match text(v.clone())?.to_ascii_lowercase().as_str() {
                "reject" => Overflow::Reject,
                "evict" => Overflow::Evict,
                _ => return Err(unexpected("reject or evict", v)),
            });
        }
        "maxinflight" => c.max_in_flight = Some(u64_of(v)?),
        _ => return Ok(false),
    }
    Ok(true)
}

/// A topic config key the server reports (`TSTATS`, `TCONFIG t`); `false` if `key` is not one.
fn topic_config_field(c: &mut TopicConfig, key: &str, v: &Frame) -> Result<bool, Error> {
    match key {
        "ttl_ms" => c.ttl = Some(millis(v)?),
        "maxlen" => c.max_len = Some(u64_of(v)?),
        "maxsize" => c.max_size = Some(u64_of(v)?),
        "maxbytes" => c.max_bytes = Some(u64_of(v)?),
        _ => return Ok(false),
    }
    Ok(true)
}

// Keys a newer server adds are ignored, not errors.

pub(crate) fn queue_stats_reply(f: Frame, queue: &str) -> Result<QueueStats, Error> {
    let mut s = QueueStats {
        config: QueueConfig::new(queue),
        ..QueueStats::default()
    };
    for (k, v) in pairs(f)? {
        let n = || u64_of(&v);
        match k.as_str() {
            "visible" => s.visible = n()?,
            "delayed" => s.delayed = n()?,
            "leased" => s.leased = n()?,
            "dead" => s.dead = n()?,
            "messages" => s.messages = n()?,
            "bytes" => s.bytes = n()?,
            "total_pushed" => s.total_pushed = n()?,
            "total_acked" => s.total_acked = n()?,
            "total_dead" => s.total_dead = n()?,
            "oldest_age_ms" => s.oldest_age_ms = n()?,
            "newest_age_ms" => s.newest_age_ms = Some(n()?),
            k => {
                queue_config_field(&mut s.config, k, &v)?;
            }
        }
    }
    Ok(s)
}

pub(crate) fn queue_config_reply(f: Frame, queue: &str) -> Result<QueueConfig, Error> {
    let mut c = QueueConfig::new(queue);
    for (k, v) in pairs(f)? {
        queue_config_field(&mut c, &k, &v)?;
    }
    Ok(c)
}

pub(crate) fn topic_stats_reply(f: Frame, topic: &str) -> Result<TopicStats, Error> {
    let mut s = TopicStats {
        config: TopicConfig::new(topic),
        ..TopicStats::default()
    };
    for (k, v) in pairs(f)? {
        let n = || u64_of(&v);
        match k.as_str() {
            "last_seq" => s.last_seq = n()?,
            "retained" => s.retained = n()?,
            "oldest_age_ms" => s.oldest_age_ms = n()?,
            "subscribers" => s.subscribers = n()?,
            "bytes" => s.bytes = n()?,
            "total_published" => s.total_published = n()?,
            "total_expired" => s.total_expired = n()?,
            k => {
                topic_config_field(&mut s.config, k, &v)?;
            }
        }
    }
    Ok(s)
}

pub(crate) fn topic_config_reply(f: Frame, topic: &str) -> Result<TopicConfig, Error> {
    let mut c = TopicConfig::new(topic);
    for (k, v) in pairs(f)? {
        topic_config_field(&mut c, &k, &v)?;
    }
    Ok(c)
}

/// Per-receipt results of a `QACK` of several receipts (`:1` or an error each); a single
/// receipt is answered with a bare `:1` or error.
pub(crate) fn ack_results(f: Frame, n: usize) -> Result<Vec<Result<(), Error>>, Error> {
    let one = |f: Frame| match f {
        Frame::Error(e) => Ok(Err(Error::from_reply(&e))),
        Frame::Integer(1) => Ok(Ok(())),
        f => Err(unexpected(":1 or an error", &f)),
    };
    if n == 1 {
        return Ok(vec![one(f)?]);
    }
    let v = items(ok(f)?, "an array of per-receipt results")?;
    if v.len() != n {
        return Err(Error::Protocol(format!(
            "{} results for {n} receipts",
            v.len()
        )));
    }
    v.into_iter().map(one).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Frame {
        Frame::Bulk(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn record() -> Vec<Frame> {
        vec![
            bulk("7"),
            bulk("7:1"),
            bulk("hello"),
            Frame::Integer(3),
            Frame::Integer(1000),
            Frame::Integer(1001),
            Frame::Integer(1),
            Frame::Integer(31_000),
        ]
    }

    #[test]
    fn a_record_becomes_a_message() {
        let m = message(Frame::Array(record())).expect("record");
        assert_eq!(m.id, 7);
        assert_eq!(m.receipt.map(|r| r.to_string()).as_deref(), Some("7:1"));
        assert_eq!(&m.payload[..], b"hello");
        assert_eq!(m.priority, 3);
        assert_eq!(m.first_received_at_ms, Some(1001));
        assert_eq!(m.receive_count, 1);
        assert_eq!(m.visible_at_ms, 31_000);
    }

    #[test]
    fn malformed_records_are_protocol_errors_not_panics() {
        let mut short = record();
        short.pop();
        let mut bad_pri = record();
        bad_pri[3] = Frame::Integer(256);
        let mut bad_receipt = record();
        bad_receipt[1] = bulk("7");
        let mut negative = record();
        negative[4] = Frame::Integer(-1);
        for f in [
            Frame::Array(short),
            Frame::Array(bad_pri),
            Frame::Array(bad_receipt),
            Frame::Array(negative),
            Frame::Integer(1),
            Frame::Map(Vec::new()),
        ] {
            assert!(matches!(message(f), Err(Error::Protocol(_))));
        }
        assert!(matches!(
            messages_reply(Frame::Simple(Bytes::from_static(b"OK"))),
            Err(Error::Protocol(_))
        ));
    }

    #[test]
    fn stats_read_the_same_from_a_map_and_a_flat_array() {
        let pairs = vec![
            (bulk("visible"), Frame::Integer(2)),
            (bulk("leased"), Frame::Integer(1)),
            (bulk("something_new"), Frame::Integer(9)),
        ];
        let flat: Vec<Frame> = pairs
            .iter()
            .flat_map(|(k, v)| [k.clone(), v.clone()])
            .collect();
        let a = queue_stats_reply(Frame::Map(pairs), "q").expect("map");
        let b = queue_stats_reply(Frame::Array(flat), "q").expect("array");
        assert_eq!(a, b);
        assert_eq!(a.visible, 2);
        assert_eq!(a.leased, 1);
        assert_eq!(a.newest_age_ms, None);
        assert_eq!(a.config, QueueConfig::new("q"), "no config reported");
    }

    #[test]
    fn the_config_in_stats_is_read() {
        let f = Frame::Map(vec![
            (bulk("visible"), Frame::Integer(0)),
            (bulk("vt_ms"), Frame::Integer(5000)),
            (bulk("maxreceives"), Frame::Integer(3)),
            (bulk("dlq"), bulk("q.dlq")),
            (bulk("overflow"), bulk("evict")),
            (bulk("retention_ms"), Frame::Integer(0)),
        ]);
        let s = queue_stats_reply(f, "q").expect("stats");
        assert_eq!(s.config.visibility, Some(Duration::from_secs(5)));
        assert_eq!(s.config.max_receives, Some(3));
        assert_eq!(s.config.dlq.as_deref(), Some("q.dlq"));
        assert_eq!(s.config.overflow, Some(Overflow::Evict));
        assert_eq!(s.config.retention, Some(Duration::ZERO));
        let none =
            queue_config_reply(Frame::Map(vec![(bulk("dlq"), Frame::Null)]), "q").expect("config");
        assert_eq!(none.dlq.as_deref(), Some(""), "nil: no DLQ");
        let bad = Frame::Map(vec![(bulk("overflow"), bulk("sideways"))]);
        assert!(matches!(
            queue_config_reply(bad, "q"),
            Err(Error::Protocol(_))
        ));
    }

    #[test]
    fn ack_results_are_per_receipt() {
        let r = ack_results(
            Frame::Array(vec![
                Frame::Integer(1),
                Frame::Error(Bytes::from_static(b"LEASELOST stale")),
            ]),
            2,
        )
        .expect("results");
        assert!(r[0].is_ok());
        assert!(matches!(r[1], Err(Error::LeaseLost(_))));
        let one =
            ack_results(Frame::Error(Bytes::from_static(b"NOTFOUND gone")), 1).expect("one result");
        assert!(matches!(one[0], Err(Error::NotFound(_))));
        assert!(matches!(
            ack_results(Frame::Array(vec![Frame::Integer(1)]), 2),
            Err(Error::Protocol(_))
        ));
    }

    /// Frames a server could send, biased towards the shapes the parsers look for (records of
    /// 8 and 5 fields, maps of counts) so that their inner checks are reached.
    fn frame() -> impl proptest::strategy::Strategy<Value = Frame> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            any::<i64>().prop_map(Frame::Integer),
            (0i64..300).prop_map(Frame::Integer),
            proptest::collection::vec(any::<u8>(), 0..12).prop_map(|v| Frame::Bulk(v.into())),
            (0u64..1000, 0u32..5).prop_map(|(i, g)| bulk(&format!("{i}:{g}"))),
            (0u64..1000).prop_map(|n| bulk(&n.to_string())),
            proptest::collection::vec(any::<u8>(), 0..12).prop_map(|v| Frame::Error(v.into())),
            Just(Frame::Error(Bytes::from_static(b"LEASELOST stale"))),
            Just(Frame::Simple(Bytes::from_static(b"OK"))),
            Just(Frame::Null),
            Just(Frame::NullArray),
            any::<bool>().prop_map(Frame::Boolean),
            any::<f64>().prop_map(Frame::Double),
        ];
        leaf.prop_recursive(3, 48, 9, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..10).prop_map(Frame::Array),
                proptest::collection::vec(inner.clone(), 8).prop_map(Frame::Array),
                proptest::collection::vec(inner.clone(), 5).prop_map(Frame::Array),
                proptest::collection::vec((inner.clone(), inner.clone()), 0..4)
                    .prop_map(Frame::Map),
                proptest::collection::vec(inner, 0..4).prop_map(Frame::Push),
            ]
        })
    }

    proptest::proptest! {
        /// Nothing the server sends makes a parser panic.
        #[test]
        fn every_parser_is_total(f in frame(), n in 0usize..4) {
            let _ = ok(f.clone());
            let _ = u64_reply(f.clone());
            let _ = bool_reply(f.clone());
            let _ = unit_reply(f.clone());
            let _ = ids_reply(f.clone());
            let _ = names_reply(f.clone());
            let _ = message(f.clone());
            let _ = messages_reply(f.clone());
            let _ = topic_message_reply(f.clone());
            let _ = queue_stats_reply(f.clone(), "q");
            let _ = queue_config_reply(f.clone(), "q");
            let _ = topic_stats_reply(f.clone(), "t");
            let _ = topic_config_reply(f.clone(), "t");
            let _ = ack_results(f, n);
        }
    }

    #[test]
    fn topic_records_and_nil() {
        assert_eq!(topic_message_reply(Frame::Null).expect("nil"), None);
        assert_eq!(topic_message_reply(Frame::NullArray).expect("nil"), None);
        let m = topic_message_reply(Frame::Array(vec![
            Frame::Integer(5),
            bulk("x"),
            Frame::Integer(99),
            Frame::Integer(6),
            Frame::Integer(2),
        ]))
        .expect("record")
        .expect("some");
        assert_eq!((m.seq, m.next_cursor, m.skipped), (5, 6, 2));
    }
}
