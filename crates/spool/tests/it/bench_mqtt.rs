//! `spool bench mqtt --quick --json`: the smoke run completes against a real Mosquitto and
//! every figure is there and sane (presence and sign, never timings).

use serde_json::Value;

const MEASURED: [&str; 8] = [
    "rumqttc QoS 1, no persistence",
    "spool client QoS 1, durable outbox",
    "spool client latency @100 msg/s, p50",
    "spool client latency @100 msg/s, p99",
    "backlog drain after an outage",
    "agent RSS, idle client",
    "agent RSS, with backlog",
    "agent start-up, with backlog",
];

/// Not measured in --quick (no Python in the smoke run), but present with the reason.
const PYTHON: [&str; 2] = ["PersistMQ QoS 1", "robmqtt QoS 1"];

#[test]
fn bench_mqtt_quick_reports_every_figure() {
    let dir = tempfile::tempdir().unwrap();
    let bench_dir = dir.path().join("bench");
    std::fs::create_dir_all(&bench_dir).unwrap();
    let out = super::ok(
        dir.path(),
        &[
            "bench",
            "mqtt",
            "--quick",
            "--json",
            "--bench-dir",
            bench_dir.to_str().unwrap(),
        ],
    );
    let json: Value = serde_json::from_str(&out).expect("one JSON object");
    assert_eq!(json["title"], "spool bench mqtt");
    let figures = json["figures"].as_array().unwrap();
    let by = |name: &str| -> &Value {
        figures
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("no figure {name:?} in {out}"))
    };
    for name in MEASURED {
        let v = by(name)["value"].as_f64();
        assert!(v.is_some_and(|v| v.is_finite() && v > 0.0), "{name}: {v:?}");
    }
    for (name, baseline) in [
        (
            "spool client QoS 1, durable outbox",
            "rumqttc QoS 1, no persistence",
        ),
        (
            "backlog drain after an outage",
            "spool client QoS 1, durable outbox",
        ),
    ] {
        let f = by(name);
        assert_eq!(f["ratio_to"], baseline);
        assert!(f["ratio"].as_f64().is_some_and(|r| r > 0.0), "{name}: {f}");
        assert!(
            f["status"] == "pass" || f["status"] == "miss",
            "{name}: {f}"
        );
    }
    for name in [
        "agent RSS, idle client",
        "agent RSS, with backlog",
        "agent start-up, with backlog",
    ] {
        assert!(by(name)["target"].is_string(), "{name} has no target");
    }
    let p50 = by("spool client latency @100 msg/s, p50")["value"]
        .as_f64()
        .unwrap();
    let p99 = by("spool client latency @100 msg/s, p99")["value"]
        .as_f64()
        .unwrap();
    assert!(p50 <= p99, "p50 {p50} > p99 {p99}");
    for name in PYTHON {
        let f = by(name);
        assert!(f["value"].is_null(), "{name} measured in --quick: {f}");
        assert!(
            f["note"]
                .as_str()
                .is_some_and(|n| n.contains("not measured") && n.contains("pip install")),
            "{name}: {f}"
        );
    }
    for name in ["spool client vs PersistMQ", "spool client vs robmqtt"] {
        assert_eq!(by(name)["status"], "unknown", "{name}");
    }
    assert!(json["context"]["broker"]
        .as_str()
        .is_some_and(|b| b.contains("mosquitto")));
    // The scratch directory (stores, broker) is gone.
    assert!(std::fs::read_dir(&bench_dir).unwrap().next().is_none());
}
