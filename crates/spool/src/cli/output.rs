//! How messages and stats are printed: a compact human line, or one JSON object per line
//! (`--json`). The JSON field names are part of the CLI's contract (see README).

use std::io::Write;

use base64::Engine as _;
use serde_json::{json, Map, Value};
use spool_engine::{Message, MessageState, QueueStats, TopicMessage};

/// The payload as JSON: a string when it is UTF-8, else base64 under `payload_base64`.
fn put_payload(obj: &mut Map<String, Value>, payload: &[u8]) {
    match std::str::from_utf8(payload) {
        Ok(s) => {
            obj.insert("payload".into(), Value::String(s.to_string()));
        }
        Err(_) => {
            obj.insert(
                "payload_base64".into(),
                Value::String(base64::engine::general_purpose::STANDARD.encode(payload)),
            );
        }
    }
}

pub fn message_json(m: &Message) -> Value {
    let mut o = Map::new();
    o.insert("id".into(), json!(m.id));
    o.insert(
        "receipt".into(),
        m.receipt
            .map_or(Value::Null, |r| Value::String(r.to_string())),
    );
    match m.blob {
        // A large payload stays in its blob file: `spool inspect dump` prints it whole.
        Some(b) => {
            o.insert("payload_blob_bytes".into(), json!(b.len));
        }
        None => put_payload(&mut o, &m.payload),
    }
    o.insert("priority".into(), json!(m.priority));
    o.insert("subject".into(), json!(m.subject));
    let headers: Map<String, Value> = m
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                Value::String(String::from_utf8_lossy(v).into_owned()),
            )
        })
        .collect();
    o.insert("headers".into(), Value::Object(headers));
    o.insert("enqueued_at".into(), json!(m.enqueued_at));
    o.insert("expires_at".into(), json!(m.expires_at));
    o.insert("receive_count".into(), json!(m.receive_count));
    o.insert("first_received_at".into(), json!(m.first_received_at));
    let (state, until) = match m.state {
        MessageState::Ready => ("ready", None),
        MessageState::Delayed(t) => ("delayed", Some(t)),
        MessageState::Leased(t) => ("leased", Some(t)),
    };
    o.insert("state".into(), json!(state));
    o.insert("visible_at".into(), json!(until));
    if let Some((q, id)) = &m.dead_letter_of {
        o.insert("dead_letter_of".into(), json!({"queue": q, "id": id}));
    }
    Value::Object(o)
}

/// Payload bytes for a human line: UTF-8 with newlines and tabs escaped.
pub fn payload_text(p: &[u8]) -> String {
    String::from_utf8_lossy(p)
        .replace('\\', "\\\\")
        .replace('\n', "\\n")
        .replace('\t', "\\t")
}

pub fn print_messages(out: &mut impl Write, msgs: &[Message], json: bool) -> std::io::Result<()> {
    for m in msgs {
        if json {
            writeln!(out, "{}", message_json(m))?;
        } else {
            let key = m
                .receipt
                .map_or_else(|| m.id.to_string(), |r| r.to_string());
            match m.blob {
                Some(b) => writeln!(out, "{key}\t<payload of {} bytes in a blob file>", b.len)?,
                None => writeln!(out, "{key}\t{}", payload_text(&m.payload))?,
            }
        }
    }
    Ok(())
}

pub fn stats_json(s: &QueueStats) -> Value {
    let c = &s.counters;
    json!({
        "queue": s.name,
        "visible": s.visible,
        "delayed": s.delayed,
        "leased": s.leased,
        "dead": s.dead,
        "messages": s.messages,
        "bytes": s.bytes,
        "oldest_age_ms": s.oldest_age_ms,
        "dead_letter_queue": s.dead_letter_queue,
        "totals": {
            "pushed": c.pushed,
            "acked": c.acked,
            "popped": c.popped,
            "deleted": c.deleted,
            "expired": c.expired,
            "evicted": c.evicted,
            "purged": c.purged,
            "dead_lettered": c.dead_lettered,
            "redriven": c.redriven,
            "rejected_full": c.rejected_full,
        },
    })
}

pub fn topic_message_json(topic: &str, m: &TopicMessage) -> Value {
    let mut o = Map::new();
    o.insert("topic".into(), json!(topic));
    o.insert("seq".into(), json!(m.seq));
    put_payload(&mut o, &m.payload);
    o.insert("published_at".into(), json!(m.published_at));
    o.insert("skipped".into(), json!(m.skipped));
    Value::Object(o)
}

/// A queue message as `spool inspect dump` and `export` print it (`docs/inspect.md`): the
/// `--json` shape of `peek` without `receipt`, plus `type` (`"message"`) and `queue`. When
/// `headers` (an object of UTF-8 strings) cannot hold the headers exactly (a value that is not
/// UTF-8, a repeated name, or names out of order), `header_list` holds them all, in order:
/// `[{"name": .., "value": ..}]`, with `value_base64` instead of `value` for binary values.
pub fn dump_message_json(queue: &str, m: &Message) -> Value {
    let mut v = message_json(m);
    if let Value::Object(o) = &mut v {
        o.remove("receipt");
        o.insert("type".into(), json!("message"));
        o.insert("queue".into(), json!(queue));
        let exact = m.headers.windows(2).all(|w| w[0].0 < w[1].0)
            && m.headers
                .iter()
                .all(|(_, v)| std::str::from_utf8(v).is_ok());
        if !exact {
            let list: Vec<Value> = m
                .headers
                .iter()
                .map(|(k, v)| match std::str::from_utf8(v) {
                    Ok(s) => json!({"name": k, "value": s}),
                    Err(_) => json!({
                        "name": k,
                        "value_base64": base64::engine::general_purpose::STANDARD.encode(v),
                    }),
                })
                .collect();
            o.insert("header_list".into(), Value::Array(list));
        }
    }
    v
}

/// A topic message as `spool inspect dump` and `export` print it: the `--json` shape of
/// `topic read` plus `type` (`"topic_message"`).
pub fn dump_topic_message_json(topic: &str, m: &TopicMessage) -> Value {
    let mut v = topic_message_json(topic, m);
    if let Value::Object(o) = &mut v {
        o.insert("type".into(), json!("topic_message"));
    }
    v
}
