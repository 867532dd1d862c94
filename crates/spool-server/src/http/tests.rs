//! The router without a socket (`tower::ServiceExt::oneshot`), over an in-memory store.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::Value;
use spool_engine::Store;
use tower::ServiceExt as _;

use super::*;

fn app() -> Router {
    router(Service::open(Store::in_memory().expect("in-memory store")))
}

async fn call(app: &Router, method: Method, uri: &str, body: Body) -> (StatusCode, Vec<u8>) {
    call_with(app, method, uri, body, true).await
}

/// A request; the reply's body is read when `read` (an SSE stream's never ends).
async fn call_with(
    app: &Router,
    method: Method,
    uri: &str,
    body: Body,
    read: bool,
) -> (StatusCode, Vec<u8>) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(body)
        .expect("a request");
    let res = app.clone().oneshot(req).await.expect("infallible");
    let status = res.status();
    if !read {
        return (status, Vec::new());
    }
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .expect("body");
    (status, bytes.to_vec())
}

fn json(b: &[u8]) -> Value {
    serde_json::from_slice(b).expect("a JSON body")
}

/// The `.route("path", method(...)...)` calls of the router's source files.
fn served_routes() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for src in [
        include_str!("queues.rs"),
        include_str!("topics.rs"),
        include_str!("ops.rs"),
        include_str!("mod.rs"),
    ] {
        let flat = src
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .replace("( ", "(");
        for part in flat.split(".route(\"").skip(1) {
            let Some((path, rest)) = part.split_once('"') else {
                continue;
            };
            // The method chain runs up to the closing parenthesis of `.route(`.
            let mut depth = 1;
            let mut end = rest.len();
            for (i, c) in rest.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            end = i;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            for m in ["get", "put", "post", "patch", "delete"] {
                let called = rest[..end].contains(&format!(" {m}("))
                    || rest[..end].contains(&format!(".{m}("))
                    || rest[..end].contains(&format!("::{m}("));
                if called {
                    out.push((m.to_string(), path.to_string()));
                }
            }
        }
    }
    out.sort();
    out
}

fn documented_routes() -> Vec<(String, String)> {
    let doc = openapi_document();
    let mut out = Vec::new();
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for m in ops.as_object().expect("operations").keys() {
            out.push((m.clone(), path.clone()));
        }
    }
    out.sort();
    out
}

#[test]
fn the_openapi_document_lists_exactly_the_routes_served() {
    let served = served_routes();
    assert!(served.len() > 25, "the route scan found {served:?}");
    assert_eq!(served, documented_routes());
}

#[tokio::test]
async fn every_documented_route_is_answered_by_its_handler() {
    let app = app();
    for (m, path) in documented_routes() {
        let uri = path
            .replace("{q}", "probe")
            .replace("{t}", "probe")
            .replace("{id}", "1:1")
            .replace("{receipt}", "1:1");
        let method = Method::from_bytes(m.to_uppercase().as_bytes()).expect("a method");
        let read = !path.ends_with("/stream");
        let (status, body) = call_with(&app, method, &uri, Body::empty(), read).await;
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{m} {path}");
        let text = String::from_utf8_lossy(&body);
        assert!(!text.contains("no such route"), "{m} {path}: {text}");
    }
    let (status, body) = call(&app, Method::GET, "/v1/nothing", Body::empty()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(String::from_utf8_lossy(&body).contains("openapi.json"));
}

#[tokio::test]
async fn push_lease_ack_round_trip_with_binary_payloads() {
    let app = app();
    let (s, b) = call(
        &app,
        Method::POST,
        "/v1/queues/jobs/messages?priority=3",
        Body::from(vec![0xff, 0x00]),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    let id = json(&b)["id"].as_u64().expect("an id");
    let (s, b) = call(
        &app,
        Method::POST,
        "/v1/queues/jobs/lease?vt=60000",
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let v = json(&b);
    let m = &v["messages"][0];
    assert_eq!(m["id"].as_u64(), Some(id));
    assert_eq!(m["payload"], "/wA=");
    assert_eq!(m["encoding"], "base64");
    assert_eq!(m["priority"], 3);
    assert_eq!(m["receive_count"], 1);
    let receipt = m["receipt"].as_str().expect("a receipt").to_string();
    let uri = format!("/v1/queues/jobs/messages/{receipt}");
    let (s, b) = call(&app, Method::DELETE, &uri, Body::empty()).await;
    assert_eq!((s, json(&b)["acked"].as_u64()), (StatusCode::OK, Some(1)));
    let (s, b) = call(&app, Method::DELETE, &uri, Body::empty()).await;
    assert_eq!(
        (s, json(&b)["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("NOTFOUND"))
    );
}

#[tokio::test]
async fn a_body_over_the_limit_is_toobig_with_the_limit() {
    let app = router_with(
        Service::open(Store::in_memory().expect("store")),
        &HttpConfig {
            body_max: 10,
            ..HttpConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)))
        },
    );
    let (s, b) = call(
        &app,
        Method::POST,
        "/v1/queues/q/messages",
        Body::from(vec![b'x'; 11]),
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    let v = json(&b);
    assert_eq!(v["error"], "TOOBIG");
    assert!(
        v["message"].as_str().expect("message").contains("10 bytes"),
        "{v}"
    );
}

/// A request with an `Authorization: Bearer` header (or none); status and JSON body.
async fn call_as(
    app: &Router,
    token: Option<&str>,
    method: Method,
    uri: &str,
    body: &'static str,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::from(body)).expect("a request"))
        .await
        .expect("infallible");
    let status = res.status();
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Users, tokens and permissions over HTTP: `NOAUTH` without a token, `WRONGPASS` with a bad
/// one, `NOPERM` outside the user's patterns, lists cut to what the user may read.
#[tokio::test]
async fn bearer_tokens_and_permissions_give_the_auth_codes() {
    use crate::auth::{token_hash, Access, Auth, Permission, UserConfig};
    let auth = Auth::new(vec![UserConfig {
        name: "worker".into(),
        password_hash: None,
        token_hashes: vec![token_hash("tok-worker")],
        permissions: vec![Permission {
            pattern: "jobs.*".into(),
            access: Access::Write,
        }],
    }])
    .expect("users");
    let store = Store::in_memory().expect("store");
    store
        .push("orders", spool_engine::Push::new("secret"))
        .expect("push");
    let app = router(Service::new(store, auth, crate::Policy::default()));

    let (s, b) = call_as(
        &app,
        None,
        Method::POST,
        "/v1/queues/jobs.email/messages",
        "hi",
    )
    .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("NOAUTH")),
        "{b}"
    );
    let (s, b) = call_as(
        &app,
        Some("nope"),
        Method::POST,
        "/v1/queues/jobs.email/messages",
        "hi",
    )
    .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("WRONGPASS")),
        "{b}"
    );
    let (s, b) = call_as(
        &app,
        Some("tok-worker"),
        Method::POST,
        "/v1/queues/jobs.email/messages",
        "hi",
    )
    .await;
    assert!(s.is_success(), "{s} {b}");
    for (method, uri) in [
        (Method::POST, "/v1/queues/orders/messages"),
        (Method::POST, "/v1/queues/orders/lease"),
        (Method::GET, "/v1/queues/orders"),
        (Method::DELETE, "/v1/queues/jobs.email"),
    ] {
        let (s, b) = call_as(&app, Some("tok-worker"), method.clone(), uri, "x").await;
        assert_eq!(
            (s, b["error"].as_str()),
            (StatusCode::FORBIDDEN, Some("NOPERM")),
            "{method} {uri}: {b}"
        );
    }
    let (s, b) = call_as(&app, Some("tok-worker"), Method::GET, "/v1/queues", "").await;
    assert!(s.is_success(), "{b}");
    let listed = b.to_string();
    assert!(
        listed.contains("jobs.email") && !listed.contains("orders"),
        "{listed}"
    );
}

/// FULL (MAXLEN reached) and NODLQ (dead-lettering without a dead-letter queue) over HTTP.
#[tokio::test]
async fn full_and_nodlq_have_their_statuses() {
    let app = app();
    let (s, b) = call_as(
        &app,
        None,
        Method::PUT,
        "/v1/queues/small",
        r#"{"max_messages": 1}"#,
    )
    .await;
    assert!(s.is_success(), "create: {s} {b}");
    let (s, _) = call_as(&app, None, Method::POST, "/v1/queues/small/messages", "one").await;
    assert!(s.is_success());
    let (s, b) = call_as(&app, None, Method::POST, "/v1/queues/small/messages", "two").await;
    assert_eq!(
        (s.as_u16(), b["error"].as_str()),
        (507, Some("FULL")),
        "{b}"
    );

    let (s, _) = call_as(&app, None, Method::POST, "/v1/queues/plain/messages", "x").await;
    assert!(s.is_success());
    let (s, b) = call_as(&app, None, Method::POST, "/v1/queues/plain/lease", "").await;
    assert!(s.is_success(), "{b}");
    let receipt = b["messages"][0]["receipt"]
        .as_str()
        .expect("a receipt")
        .to_owned();
    let uri = format!("/v1/queues/plain/messages/{receipt}/dead");
    let res = app
        .clone()
        .oneshot(
            Request::builder()
                .method(Method::POST)
                .uri(uri)
                .body(Body::empty())
                .expect("req"),
        )
        .await
        .expect("infallible");
    let status = res.status();
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .expect("body");
    let b: Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(
        (status, b["error"].as_str()),
        (StatusCode::CONFLICT, Some("NODLQ")),
        "{b}"
    );
}

/// A request with a JSON body (`Content-Type: application/json`): status and JSON reply.
async fn call_json(app: &Router, method: Method, uri: &str, body: Value) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("a request");
    let res = app.clone().oneshot(req).await.expect("infallible");
    let status = res.status();
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The server policy holds over HTTP as over RESP: with `auto_create` off a missing queue
/// or topic is `NOQUEUE`/`NOTOPIC` for reads and writes; `max_queues` refuses a creation,
/// a push that would create a queue and a config that would create a dead-letter queue.
#[tokio::test]
async fn the_server_policy_holds_over_http() {
    use crate::service::Policy;
    let store = Store::open_with_vfs(
        std::sync::Arc::new(spool_engine::vfs::MemVfs::new()),
        "/s",
        spool_engine::Options {
            auto_create: false,
            ..spool_engine::Options::default()
        },
    )
    .expect("store");
    let app = router(Service::new(
        store,
        crate::auth::Auth::open(),
        Policy {
            auto_create: false,
            max_queues: 2,
        },
    ));
    let code = |r: (StatusCode, Vec<u8>)| (r.0, json(&r.1)["error"].as_str().map(str::to_owned));
    let noqueue = (StatusCode::NOT_FOUND, Some("NOQUEUE".to_owned()));
    let notopic = (StatusCode::NOT_FOUND, Some("NOTOPIC".to_owned()));
    let full = (StatusCode::INSUFFICIENT_STORAGE, Some("FULL".to_owned()));
    for (m, uri) in [
        (Method::POST, "/v1/queues/a/messages"),
        (Method::POST, "/v1/queues/a/lease"),
        (Method::POST, "/v1/queues/a/pop"),
        (Method::GET, "/v1/queues/a/messages"),
    ] {
        assert_eq!(
            code(call(&app, m, uri, Body::from("x")).await),
            noqueue,
            "{uri}"
        );
    }
    for (m, uri) in [
        (Method::POST, "/v1/topics/t/messages"),
        (Method::POST, "/v1/topics/t/subscriptions"),
        (Method::GET, "/v1/topics/t/messages?cursor=1"),
        (Method::GET, "/v1/topics/t/latest?cursor=1"),
        (Method::GET, "/v1/topics/t/stream"),
    ] {
        assert_eq!(
            code(call(&app, m, uri, Body::empty()).await),
            notopic,
            "{uri}"
        );
    }
    // Created, they work.
    let (s, _) = call(&app, Method::PUT, "/v1/queues/a", Body::empty()).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = call(&app, Method::POST, "/v1/queues/a/messages", Body::from("x")).await;
    assert_eq!(s, StatusCode::CREATED);
    // A second queue with a dead-letter queue would make three.
    let (s, v) = call_json(
        &app,
        Method::PUT,
        "/v1/queues/b",
        serde_json::json!({"max_receives": 3, "dead_letter_queue": "b.dead"}),
    )
    .await;
    assert_eq!((s, v["error"].as_str()), (full.0, Some("FULL")), "{v}");
    let (s, _) = call(&app, Method::PUT, "/v1/queues/b", Body::empty()).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, v) = call_json(
        &app,
        Method::PATCH,
        "/v1/queues/b",
        serde_json::json!({"max_receives": 3, "dead_letter_queue": "b.dead"}),
    )
    .await;
    assert_eq!((s, v["error"].as_str()), (full.0, Some("FULL")), "{v}");
    assert_eq!(
        code(call(&app, Method::PUT, "/v1/queues/c", Body::empty()).await),
        full
    );
}

#[tokio::test]
async fn with_auto_create_max_queues_refuses_a_push_that_would_create_one() {
    use crate::service::Policy;
    let app = router(Service::new(
        Store::in_memory().expect("store"),
        crate::auth::Auth::open(),
        Policy {
            auto_create: true,
            max_queues: 1,
        },
    ));
    let (s, _) = call(&app, Method::POST, "/v1/queues/a/messages", Body::from("x")).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, b) = call(&app, Method::POST, "/v1/queues/b/messages", Body::from("x")).await;
    assert_eq!(
        (s, json(&b)["error"].as_str()),
        (StatusCode::INSUFFICIENT_STORAGE, Some("FULL"))
    );
    // A read of a missing queue is empty (auto_create on), not an error, and creates nothing.
    let (s, b) = call(&app, Method::POST, "/v1/queues/b/lease", Body::empty()).await;
    assert_eq!(
        (s, json(&b)["messages"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(0))
    );
}

/// A failed `fdatasync` poisons the store: the write that hit it and every write after it
/// are `500 ERR` (never a success that was not made durable), and `/health/ready` turns 503.
#[tokio::test]
async fn a_failed_sync_is_err_500_and_the_server_turns_unready() {
    let vfs = spool_testkit::sim_vfs::SimVfs::new();
    let store = Store::open_with_vfs(
        std::sync::Arc::new(vfs.clone()),
        "/s",
        spool_engine::Options {
            segment_prep: spool_engine::SegmentPrep::Off,
            ..spool_engine::Options::default()
        },
    )
    .expect("store");
    let app = router(Service::open(store));
    let (s, _) = call(
        &app,
        Method::POST,
        "/v1/queues/q/messages",
        Body::from("ok"),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = call(&app, Method::GET, "/health/ready", Body::empty()).await;
    assert_eq!(s, StatusCode::OK);
    vfs.fail_sync_once();
    for payload in ["lost", "after"] {
        let (s, b) = call(
            &app,
            Method::POST,
            "/v1/queues/q/messages",
            Body::from(payload),
        )
        .await;
        assert_eq!(
            (s, json(&b)["error"].as_str()),
            (StatusCode::INTERNAL_SERVER_ERROR, Some("ERR")),
            "{payload}"
        );
    }
    let (s, b) = call(&app, Method::POST, "/v1/topics/t/messages", Body::from("x")).await;
    assert_eq!(
        (s, json(&b)["error"].as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, Some("ERR"))
    );
    let (s, _) = call(&app, Method::GET, "/health/ready", Body::empty()).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn a_topic_batch_is_published_whole_with_consecutive_seqs() {
    let app = app();
    let (s, v) = call_json(
        &app,
        Method::POST,
        "/v1/topics/t/messages",
        serde_json::json!({"messages": [{"payload": "a"}, {"payload": "Yg==", "encoding": "base64"}, {"payload": "c"}]}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["seqs"], serde_json::json!([1, 2, 3]));
    // One bad message: nothing is published.
    let (s, v) = call_json(
        &app,
        Method::POST,
        "/v1/topics/t/messages",
        serde_json::json!({"messages": [{"payload": "d"}, {"payload": "!!", "encoding": "base64"}]}),
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("BADARG")),
        "{v}"
    );
    let (s, v) = call_json(
        &app,
        Method::POST,
        "/v1/topics/t/messages",
        serde_json::json!({"messages": []}),
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("BADARG")),
        "{v}"
    );
    let (_, b) = call(
        &app,
        Method::GET,
        "/v1/topics/t/messages?cursor=2",
        Body::empty(),
    )
    .await;
    let v = json(&b);
    assert_eq!(v["message"]["payload"], "b");
    assert_eq!(v["next_cursor"], 3);
    let (_, b) = call(&app, Method::GET, "/v1/topics/t", Body::empty()).await;
    assert_eq!(json(&b)["last_seq"], 3);
}

#[tokio::test]
async fn dead_takes_a_reason_and_refuses_unknown_parameters() {
    let app = app();
    let (s, _) = call_json(
        &app,
        Method::PUT,
        "/v1/queues/q",
        serde_json::json!({"max_receives": 5}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    call(
        &app,
        Method::POST,
        "/v1/queues/q/messages",
        Body::from("bad"),
    )
    .await;
    let (_, b) = call(&app, Method::POST, "/v1/queues/q/lease", Body::empty()).await;
    let receipt = json(&b)["messages"][0]["receipt"]
        .as_str()
        .expect("receipt")
        .to_owned();
    let (s, b) = call(
        &app,
        Method::POST,
        &format!("/v1/queues/q/messages/{receipt}/dead?bogus=1"),
        Body::empty(),
    )
    .await;
    assert_eq!(
        (s, json(&b)["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("BADARG"))
    );
    let (s, b) = call(
        &app,
        Method::POST,
        &format!("/v1/queues/q/messages/{receipt}/dead?reason=cannot%20parse"),
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let (_, b) = call(
        &app,
        Method::GET,
        "/v1/queues/q.dlq/messages",
        Body::empty(),
    )
    .await;
    assert_eq!(json(&b)["messages"][0]["payload"], "bad");
}
