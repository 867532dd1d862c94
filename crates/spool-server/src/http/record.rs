//! Message records as JSON, and payloads in and out: UTF-8 text as is, anything else (or
//! everything, with `?encoding=base64`) as base64 with `"encoding": "base64"`.

use std::io::Read as _;

use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use spool_engine::{Error as EngineError, Message, MessageState, Store, TopicMessage};

use super::{ApiError, ApiResult};
use crate::wait::blocking;

/// `?encoding=`: how payloads are written in replies.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// UTF-8 text when the payload is valid UTF-8, base64 otherwise. Default.
    #[default]
    Auto,
    /// Always base64.
    Base64,
}

/// Writes `payload` into `obj` as `"payload"` (and `"encoding": "base64"` when encoded).
pub fn put_payload(obj: &mut Map<String, Value>, payload: &[u8], enc: Encoding) {
    if let (Encoding::Auto, Ok(text)) = (enc, std::str::from_utf8(payload)) {
        obj.insert("payload".into(), Value::String(text.to_string()));
    } else {
        obj.insert(
            "payload".into(),
            Value::String(base64::engine::general_purpose::STANDARD.encode(payload)),
        );
        obj.insert("encoding".into(), Value::String("base64".into()));
    }
}

/// A queue message record (section 8.3): `id`, `receipt` (null unless leased), `payload`,
/// `priority`, `enqueued_at_ms`, `first_received_at_ms`, `receive_count`, `visible_at_ms`.
pub fn message(m: &Message, enc: Encoding) -> Value {
    let visible_at = match m.state {
        MessageState::Leased(t) | MessageState::Delayed(t) => t,
        MessageState::Ready => m.enqueued_at,
    };
    let mut o = Map::new();
    o.insert("id".into(), json!(m.id));
    o.insert("receipt".into(), json!(m.receipt.map(|r| r.to_string())));
    put_payload(&mut o, &m.payload, enc);
    o.insert("priority".into(), json!(m.priority));
    o.insert("enqueued_at_ms".into(), json!(m.enqueued_at));
    o.insert("first_received_at_ms".into(), json!(m.first_received_at));
    o.insert("receive_count".into(), json!(m.receive_count));
    o.insert("visible_at_ms".into(), json!(visible_at));
    Value::Object(o)
}

/// A topic message record (section 8.4): `seq`, `payload`, `published_at_ms`,
/// `next_cursor`, `skipped`.
pub fn topic_message(m: &TopicMessage, next_cursor: u64, enc: Encoding) -> Value {
    let mut o = Map::new();
    o.insert("seq".into(), json!(m.seq));
    put_payload(&mut o, &m.payload, enc);
    o.insert("published_at_ms".into(), json!(m.published_at));
    o.insert("next_cursor".into(), json!(next_cursor));
    o.insert("skipped".into(), json!(m.skipped));
    Value::Object(o)
}

/// Records of `msgs`; payloads kept in blob files are read on the blocking pool.
pub async fn messages(store: &Store, mut msgs: Vec<Message>, enc: Encoding) -> ApiResult<Value> {
    if msgs.iter().any(|m| m.blob.is_some()) {
        let s = store.clone();
        msgs = blocking(move || {
            for m in &mut msgs {
                if m.blob.is_some() {
                    let mut buf = Vec::new();
                    s.open_payload(m)?.read_to_end(&mut buf).map_err(|e| {
                        EngineError::InvalidArgument(format!("reading a payload: {e}"))
                    })?;
                    m.payload = Bytes::from(buf);
                }
            }
            Ok(msgs)
        })
        .await?;
    }
    Ok(Value::Array(msgs.iter().map(|m| message(m, enc)).collect()))
}

/// A payload in a JSON body: `"payload"` text, base64 with `"encoding": "base64"`.
pub fn decode_payload(payload: &str, encoding: Option<&str>) -> ApiResult<Bytes> {
    match encoding {
        None | Some("utf-8" | "utf8" | "text") => Ok(Bytes::from(payload.to_string())),
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(payload)
            .map(Bytes::from)
            .map_err(|e| ApiError::badarg(format!("the payload is not valid base64: {e}"))),
        Some(other) => Err(ApiError::badarg(format!(
            "unknown encoding {other:?}: use \"base64\", or leave it out for UTF-8 text"
        ))),
    }
}

/// Whether a request body is JSON (by its `Content-Type`).
pub fn is_json(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        })
}

/// Parses a JSON body into `T` (`400 BADARG` saying what is wrong).
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| ApiError::badarg(format!("bad JSON body: {e}")))
}
