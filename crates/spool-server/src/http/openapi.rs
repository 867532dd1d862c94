//! The OpenAPI 3.1 document of the HTTP front end, served at `/v1/openapi.json`. Built from
//! one table of operations below; a test checks it against the routes the router serves.

use axum::Json;
use serde_json::{json, Map, Value};

/// One operation: method, path, summary, query parameters, request body, success status.
struct Op {
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    query: &'static [(&'static str, &'static str)],
    body: Option<&'static str>,
    ok: &'static str,
}

const ENC: (&str, &str) = (
    "encoding",
    "`base64`: every payload as base64 (default: UTF-8 text when it is, else base64)",
);

const OPS: &[Op] = &[
    Op { method: "get", path: "/v1/queues", summary: "List the queues the caller may read (`{queues}`)", query: &[("pattern", "glob with * and ?")], body: None, ok: "200" },
    Op { method: "put", path: "/v1/queues/{q}", summary: "Create a queue (`{created}`: 201 created, 200 same config exists; 409 EXISTS otherwise)", query: &[], body: Some("QueueConfig"), ok: "201" },
    Op { method: "patch", path: "/v1/queues/{q}", summary: "Change a queue's config (`{config}`)", query: &[], body: Some("QueueConfig"), ok: "200" },
    Op { method: "delete", path: "/v1/queues/{q}", summary: "Drop a queue and its messages (`{dropped}`)", query: &[], body: None, ok: "200" },
    Op { method: "get", path: "/v1/queues/{q}", summary: "Queue stats and config", query: &[], body: None, ok: "200" },
    Op { method: "post", path: "/v1/queues/{q}/purge", summary: "Delete every message, keep the queue (`{purged}`)", query: &[], body: None, ok: "200" },
    Op { method: "post", path: "/v1/queues/{q}/messages", summary: "Push: raw body = payload, or JSON `{payload, encoding?, priority?, delay_ms?, ttl_ms?}` (`{id}`), or `{messages: [...]}` (atomic, `{ids}`); answered once durable", query: &[("priority", "0-255, higher first (raw body only)"), ("delay_ms", "0 to 7 days"), ("ttl_ms", "1 ms to 30 days")], body: Some("Push"), ok: "201" },
    Op { method: "get", path: "/v1/queues/{q}/messages", summary: "Peek at the next visible messages (`{messages}`), unchanged", query: &[("count", "1-1000, default 1"), ENC], body: None, ok: "200" },
    Op { method: "get", path: "/v1/queues/{q}/messages/{id}", summary: "One message by id, in any state", query: &[ENC], body: None, ok: "200" },
    Op { method: "delete", path: "/v1/queues/{q}/messages/{id}", summary: "Ack: `{id}` is the receipt of a lease (`{acked: 1}`)", query: &[], body: None, ok: "200" },
    Op { method: "post", path: "/v1/queues/{q}/messages/{receipt}/nack", summary: "Release a lease early (`{nacked: 1}`)", query: &[("delay_ms", "visible again after this, default 0"), ("priority", "new priority 0-255")], body: None, ok: "200" },
    Op { method: "post", path: "/v1/queues/{q}/messages/{receipt}/extend", summary: "Extend a lease to now + vt (`{visible_at_ms}`)", query: &[("vt", "required, 1 ms to 12 h")], body: None, ok: "200" },
    Op { method: "post", path: "/v1/queues/{q}/messages/{receipt}/dead", summary: "Move a leased message to the dead-letter queue (`{id}` there); the reason is logged", query: &[("reason", "free text, written to the server log")], body: None, ok: "200" },
    Op { method: "post", path: "/v1/queues/{q}/lease", summary: "Lease messages (`{messages}` with receipts), long-polling up to `wait` ms", query: &[("vt", "visibility timeout, 1 ms to 12 h, default the queue's"), ("count", "1-1000, default 1"), ("wait", "0-60000 ms, default 0"), ENC], body: None, ok: "200" },
    Op { method: "post", path: "/v1/queues/{q}/pop", summary: "Take and remove messages, at most once (`{messages}`); `wait` long-polls", query: &[("count", "1-1000, default 1"), ("wait", "ms, 0-60000: wait for a message"), ENC], body: None, ok: "200" },
    Op { method: "post", path: "/v1/queues/{q}/ack", summary: "Ack many receipts: `{receipts: [...]}` -> `{acked, results}`", query: &[], body: Some("AckMany"), ok: "200" },
    Op { method: "post", path: "/v1/queues/{q}/redrive", summary: "Move dead letters of dead-letter queue {q} back (`{moved}`)", query: &[("count", "at most this many; default all")], body: None, ok: "200" },
    Op { method: "get", path: "/v1/topics", summary: "List the topics the caller may read (`{topics}`)", query: &[("pattern", "glob with * and ?")], body: None, ok: "200" },
    Op { method: "put", path: "/v1/topics/{t}", summary: "Create a topic (`{created}`)", query: &[], body: Some("TopicConfig"), ok: "201" },
    Op { method: "patch", path: "/v1/topics/{t}", summary: "Change a topic's config (`{config}`)", query: &[], body: Some("TopicConfig"), ok: "200" },
    Op { method: "delete", path: "/v1/topics/{t}", summary: "Drop a topic (`{dropped}`)", query: &[], body: None, ok: "200" },
    Op { method: "get", path: "/v1/topics/{t}", summary: "Topic stats and config", query: &[], body: None, ok: "200" },
    Op { method: "post", path: "/v1/topics/{t}/messages", summary: "Publish: raw body = payload, or JSON `{payload, encoding?}` (`{seq}`), or `{messages: [...]}` (atomic, `{seqs}`); answered once durable", query: &[], body: Some("Publish"), ok: "201" },
    Op { method: "get", path: "/v1/topics/{t}/messages", summary: "The next message at or after the cursor (`{message|null, next_cursor}`), long-polling up to `wait` ms", query: &[("cursor", "required: from a subscription, then each reply's next_cursor"), ("wait", "0-60000 ms, default 0"), ENC], body: None, ok: "200" },
    Op { method: "get", path: "/v1/topics/{t}/latest", summary: "The newest message at or after the cursor (`{message|null, next_cursor}`)", query: &[("cursor", "required"), ENC], body: None, ok: "200" },
    Op { method: "post", path: "/v1/topics/{t}/subscriptions", summary: "A cursor that sees what is published from now on (`{cursor}`)", query: &[], body: None, ok: "201" },
    Op { method: "get", path: "/v1/topics/{t}/stream", summary: "Server-Sent Events: `id:` = seq, `data:` = the message record; resumes after `Last-Event-ID`, or at `?cursor=`, else from now", query: &[("cursor", "where to start"), ENC], body: None, ok: "200" },
    Op { method: "get", path: "/v1/openapi.json", summary: "This document", query: &[], body: None, ok: "200" },
    Op { method: "get", path: "/health/live", summary: "200 while the process serves", query: &[], body: None, ok: "200" },
    Op { method: "get", path: "/health/ready", summary: "200 while the store takes writes, 503 once it refuses them", query: &[], body: None, ok: "200" },
    Op { method: "get", path: "/metrics", summary: "Prometheus text: requests, waits, queue and topic gauges", query: &[], body: None, ok: "200" },
];

fn operation(op: &Op) -> Value {
    let mut params: Vec<Value> = op
        .path
        .split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    params.extend(op.query.iter().map(|(n, d)| {
        json!({"name": n, "in": "query", "required": *n == "vt" && op.path.ends_with("extend"),
               "description": d, "schema": {"type": if *n == "pattern" || *n == "encoding" { "string" } else { "integer" }}})
    }));
    let mut o = Map::new();
    o.insert("summary".into(), json!(op.summary));
    o.insert("parameters".into(), Value::Array(params));
    if let Some(schema) = op.body {
        let mut content = Map::new();
        content.insert(
            "application/json".into(),
            json!({"schema": {"$ref": format!("#/components/schemas/{schema}")}}),
        );
        if matches!(schema, "Push" | "Publish") {
            content.insert(
                "application/octet-stream".into(),
                json!({"schema": {"type": "string", "format": "binary"}}),
            );
        }
        o.insert("requestBody".into(), json!({"content": content}));
    }
    o.insert(
        "responses".into(),
        json!({
            op.ok: {"description": "success"},
            "default": {"description": "an error of section 8.5",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
        }),
    );
    Value::Object(o)
}

/// The document.
pub fn document() -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for op in OPS {
        let entry = paths.entry(op.path).or_insert_with(|| json!({}));
        if let Value::Object(m) = entry {
            m.insert(op.method.into(), operation(op));
        }
    }
    let int = json!({"type": "integer"});
    json!({
        "openapi": "3.1.0",
        "info": {"title": "spool queue server", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Work queues and topics over HTTP/JSON. Reference: docs/http.md."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error", "message"], "properties": {
                    "error": {"type": "string", "enum": ["NOQUEUE", "NOTOPIC", "BADNAME", "TOOBIG", "BADARG", "NOTFOUND", "LEASELOST", "EXISTS", "NODLQ", "FULL", "NOAUTH", "WRONGPASS", "NOPERM", "BUSY", "ERR"]},
                    "message": {"type": "string"}}},
                "Message": {"type": "object", "properties": {
                    "id": int, "receipt": {"type": ["string", "null"]}, "payload": {"type": "string"},
                    "encoding": {"type": "string", "enum": ["base64"]}, "priority": int,
                    "enqueued_at_ms": int, "first_received_at_ms": {"type": ["integer", "null"]},
                    "receive_count": int, "visible_at_ms": int}},
                "TopicMessage": {"type": "object", "properties": {
                    "seq": int, "payload": {"type": "string"}, "encoding": {"type": "string", "enum": ["base64"]},
                    "published_at_ms": int, "next_cursor": int, "skipped": int}},
                "Push": {"type": "object", "properties": {
                    "payload": {"type": "string"}, "encoding": {"type": "string", "enum": ["base64"]},
                    "priority": int, "delay_ms": int, "ttl_ms": int,
                    "messages": {"type": "array", "items": {"type": "object"}}}},
                "Publish": {"type": "object", "properties": {
                    "payload": {"type": "string"}, "encoding": {"type": "string", "enum": ["base64"]},
                    "messages": {"type": "array", "items": {"type": "object"}}}},
                "AckMany": {"type": "object", "required": ["receipts"], "properties": {
                    "receipts": {"type": "array", "items": {"type": "string"}}}},
                "QueueConfig": {"type": "object", "properties": {
                    "visibility_ms": int, "delay_ms": int, "retention_ms": int, "max_receives": int,
                    "dead_letter_queue": {"type": "string"}, "max_messages": int, "max_bytes": int,
                    "overflow": {"type": "string", "enum": ["reject", "evict_lowest_priority"]},
                    "max_payload_bytes": int, "max_in_flight": int}},
                "TopicConfig": {"type": "object", "properties": {
                    "retention_ms": int, "max_messages": int, "max_bytes": int, "max_payload_bytes": int}},
            }
        },
        "security": [{}, {"bearer": []}],
        "paths": paths,
    })
}

/// `GET /v1/openapi.json`.
pub(super) async fn serve() -> Json<Value> {
    Json(document())
}
