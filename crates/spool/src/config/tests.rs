//! Unit tests of the configuration: every test goes through `load` (text + variables) and looks
//! at the typed result or at the printed errors, as an operator would.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::keys::{self, KEYS};
use super::*;

/// The smallest valid file.
const MIN: &str = "[upstream]\nhost = \"broker.lan\"\n";

fn env(vars: &[(&str, &str)]) -> Environment {
    Environment::from_vars(vars.iter().copied()).with_hostname("gw-17")
}

fn load_at(text: &str, file: &Path, vars: &[(&str, &str)]) -> Result<AgentConfig, ConfigErrors> {
    AgentConfig::from_toml_str(text, file, &env(vars))
}

fn load(text: &str, vars: &[(&str, &str)]) -> Result<AgentConfig, ConfigErrors> {
    load_at(text, Path::new("agent.toml"), vars)
}

#[track_caller]
fn ok(text: &str, vars: &[(&str, &str)]) -> AgentConfig {
    match load(text, vars) {
        Ok(c) => c,
        Err(e) => panic!("expected a valid configuration, got: {e}"),
    }
}

#[track_caller]
fn errors(text: &str, vars: &[(&str, &str)]) -> Vec<String> {
    match load(text, vars) {
        Ok(c) => panic!("expected errors, got a valid configuration: {c:?}"),
        Err(e) => e.errors.iter().map(ToString::to_string).collect(),
    }
}

/// Expects an error about `key` whose text holds every one of `says` (value, what is allowed,
/// origin).
#[track_caller]
fn check_err(text: &str, vars: &[(&str, &str)], key: &str, says: &[&str]) {
    let errs = match load(text, vars) {
        Ok(c) => panic!("expected an error about {key}, got a valid configuration: {c:?}"),
        Err(e) => e,
    };
    let Some(e) = errs.errors.iter().find(|e| e.key() == Some(key)) else {
        panic!("no error about {key} in: {errs}");
    };
    let shown = e.to_string();
    for s in says {
        assert!(
            shown.contains(s),
            "error about {key} should say {s:?}: {shown}"
        );
    }
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n";
const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIBfake\n-----END PRIVATE KEY-----\n";

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

// ---- the example file ----

#[test]
fn example_is_the_packaged_file() {
    let packaged = include_str!("../../../../packaging/agent.toml");
    assert!(
        example() == packaged,
        "packaging/agent.toml differs from `spool config example`: regenerate it with\n  cargo run -p spool -- config example > packaging/agent.toml"
    );
}

#[test]
fn example_validates_and_holds_the_defaults() {
    let cfg = ok(&example(), &[]);
    let mut want = AgentConfig::default();
    want.upstream.host = "localhost".into();
    want.upstream.port = Some(1883);
    want.upstream.client_id = Some("spool-gw-17".into());
    assert_eq!(cfg, want);
}

#[test]
fn example_names_every_key() {
    let text = example();
    for k in KEYS {
        let leaf = k.path.rsplit('.').next().unwrap();
        assert!(
            text.lines().any(|l| l
                .trim_start_matches("# ")
                .starts_with(&format!("{leaf} = "))),
            "the example has no line for {}",
            k.path
        );
    }
}

// ---- the key table and the structs agree ----

/// A value of each key's type that passes the type check (its sample or, for keys with a
/// default, the default as the example writes it).
fn sample_table() -> toml::Table {
    let defaults = toml::Value::try_from(AgentConfig::default()).unwrap();
    let mut root = toml::Table::new();
    for k in KEYS {
        let value = k.sample.map_or_else(
            || {
                k.path
                    .split('.')
                    .try_fold(&defaults, |v, s| v.get(s))
                    .cloned()
                    .unwrap_or_else(|| panic!("{} has neither a default nor a sample", k.path))
            },
            |s| {
                s.parse::<toml::Value>()
                    .unwrap_or_else(|_| toml::Value::String(s.trim_matches('"').into()))
            },
        );
        assert!(
            k.ty.check(&value).is_ok(),
            "{}: sample {value} fails its own type",
            k.path
        );
        let segs: Vec<&str> = k.path.split('.').collect();
        let mut t = &mut root;
        if segs[0] == "subscriptions" {
            let arr = t.entry("subscriptions").or_insert_with(|| {
                toml::Value::Array(vec![toml::Value::Table(toml::Table::new())])
            });
            t = arr.as_array_mut().unwrap()[0].as_table_mut().unwrap();
            t.insert(segs[1].into(), value);
            continue;
        }
        for s in &segs[..segs.len() - 1] {
            t = t
                .entry(*s)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .unwrap();
        }
        t.insert(segs[segs.len() - 1].into(), value);
    }
    root
}

/// The leaf paths of a serialized configuration (subscription keys without index).
fn walk(v: &toml::Value, path: &str, out: &mut Vec<String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                walk(v, &p, out);
            }
        }
        toml::Value::Array(items) if path == "subscriptions" => {
            for item in items {
                walk(item, path, out);
            }
        }
        _ => out.push(path.to_owned()),
    }
}

#[test]
fn every_key_in_the_table_is_a_field_and_every_field_a_key() {
    let table = sample_table();
    // deny_unknown_fields: a key of the table that is no field fails here.
    let cfg: AgentConfig = toml::Value::Table(table)
        .try_into()
        .expect("every key is a field");
    // A field missing from the table shows up as a leaf of the serialized configuration.
    let back = toml::Value::try_from(&cfg).unwrap();
    let mut leaves = Vec::new();
    walk(&back, "", &mut leaves);
    for leaf in &leaves {
        assert!(
            keys::key(leaf).is_some(),
            "field {leaf} is missing from the key table"
        );
    }
    assert_eq!(leaves.len(), KEYS.len(), "{leaves:?}");
}

#[test]
fn every_allowed_value_of_an_enum_key_parses() {
    for k in KEYS {
        if let keys::Ty::OneOf(values) = k.ty {
            for v in values {
                let text = set(k.path, &format!("{v:?}"));
                load(&text, &[("SPOOL_UPSTREAM__HOST", "b")])
                    .unwrap_or_else(|e| panic!("{} = {v:?}: {e}", k.path));
            }
        }
    }
}

/// TOML text setting one key (a `[[subscriptions]]` key in a new block with a filter).
fn set(path: &str, value: &str) -> String {
    let (section, leaf) = path.rsplit_once('.').unwrap();
    if section == "subscriptions" {
        let filter = if leaf == "filter" {
            String::new()
        } else {
            "filter = \"a/b\"\n".into()
        };
        format!("[[subscriptions]]\n{filter}{leaf} = {value}\n")
    } else {
        format!("[{section}]\n{leaf} = {value}\n")
    }
}

// ---- defaults and derived values ----

#[test]
fn defaults_and_derived_values() {
    let c = ok(MIN, &[]);
    assert_eq!(c.store.dir, PathBuf::from("/var/lib/spool"));
    assert_eq!(c.store.durability, Durability::Sync);
    assert_eq!(c.upstream.port, Some(1883));
    assert_eq!(c.upstream.client_id.as_deref(), Some("spool-gw-17"));
    assert_eq!(c.upstream.keepalive, Duration::from_secs(30));
    assert!(!c.upstream.clean_start);
    assert_eq!(c.listener.bind.to_string(), "127.0.0.1:1884");
    assert_eq!(c.http.bind.to_string(), "127.0.0.1:9184");
    assert_eq!(c.outbox.max_bytes, ByteSize(256 << 20));
    assert_eq!(c.outbox.overflow, Overflow::Reject);
}

#[test]
fn tls_changes_the_default_port_not_an_explicit_one() {
    let c = ok(&format!("{MIN}[upstream.tls]\nenabled = true\n"), &[]);
    assert_eq!(c.upstream.port, Some(8883));
    let c = ok(
        &format!("{MIN}port = 443\n[upstream.tls]\nenabled = true\n"),
        &[],
    );
    assert_eq!(c.upstream.port, Some(443));
}

#[test]
fn client_id_from_an_odd_hostname_and_without_one() {
    let c = AgentConfig::from_toml_str(
        MIN,
        Path::new("a.toml"),
        &Environment::from_vars::<&str, &str>([]).with_hostname("gw 17.local\n"),
    )
    .unwrap();
    assert_eq!(c.upstream.client_id.as_deref(), Some("spool-gw-17-local"));
    let e = AgentConfig::from_toml_str(
        MIN,
        Path::new("a.toml"),
        &Environment::from_vars::<&str, &str>([]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("upstream.client_id is not set") && e.contains("host name could not be read"),
        "{e}"
    );
}

#[test]
fn durations_and_sizes_in_the_file() {
    let c = ok(
        &format!(
            "[store]\ndurability = \"interval:250ms\"\n{MIN}keepalive = \"1m\"\n[outbox]\nmax_bytes = \"1GB\"\ndefault_ttl = \"1h30m\"\n[listener]\nmax_packet_size = 65536\n"
        ),
        &[],
    );
    assert_eq!(
        c.store.durability,
        Durability::Interval(Duration::from_millis(250))
    );
    assert_eq!(
        c.store.durability.to_engine(),
        spool_engine::Durability::Interval(250)
    );
    assert_eq!(c.upstream.keepalive, Duration::from_secs(60));
    assert_eq!(c.outbox.max_bytes, ByteSize(1_000_000_000));
    assert_eq!(c.outbox.default_ttl, Duration::from_secs(5400));
    assert_eq!(c.listener.max_packet_size, ByteSize(65536));
}

#[test]
fn relative_paths_of_the_file_are_relative_to_its_directory() {
    let dir = tmp();
    write(dir.path(), "ca.pem", CERT);
    let text = format!(
        "[store]\ndir = \"data\"\n{MIN}[upstream.tls]\nenabled = true\nca_file = \"ca.pem\"\n"
    );
    let c = load_at(&text, &dir.path().join("agent.toml"), &[]).unwrap();
    assert_eq!(c.store.dir, dir.path().join("data"));
    assert_eq!(c.upstream.tls.ca_file, Some(dir.path().join("ca.pem")));
    // From the environment: as given (relative to the working directory).
    let c = load_at(
        MIN,
        &dir.path().join("agent.toml"),
        &[("SPOOL_STORE__DIR", "here")],
    )
    .unwrap();
    assert_eq!(c.store.dir, PathBuf::from("here"));
}

// ---- the environment ----

#[test]
fn env_overrides_nested_keys_with_the_file_rules() {
    let dir = tmp();
    let ca = write(dir.path(), "ca.pem", CERT);
    let c = ok(
        "[upstream]\nhost = \"file-host\"\nport = 1883\n",
        &[
            ("SPOOL_UPSTREAM__HOST", "env-host"),
            ("SPOOL_UPSTREAM__PORT", "8884"),
            ("SPOOL_UPSTREAM__CLIENT_ID", "1234"),
            ("SPOOL_UPSTREAM__CLEAN_START", "true"),
            ("SPOOL_UPSTREAM__KEEPALIVE", "45s"),
            ("SPOOL_UPSTREAM__BACKOFF__MAX", "5m"),
            ("SPOOL_UPSTREAM__TLS__ENABLED", "true"),
            ("SPOOL_UPSTREAM__TLS__CA_FILE", ca.to_str().unwrap()),
            ("SPOOL_OUTBOX__MAX_BYTES", "1048576"),
            ("SPOOL_OUTBOX__MAX_MESSAGES", "500"),
            ("SPOOL_OUTBOX__BULK__MODE", "ndjson"),
            ("SPOOL_LOG__FORMAT", "json"),
        ],
    );
    assert_eq!(c.upstream.host, "env-host");
    assert_eq!(c.upstream.port, Some(8884));
    assert_eq!(
        c.upstream.client_id.as_deref(),
        Some("1234"),
        "a numeric string stays a string"
    );
    assert!(c.upstream.clean_start);
    assert_eq!(c.upstream.keepalive, Duration::from_secs(45));
    assert_eq!(c.upstream.backoff.max, Duration::from_secs(300));
    assert!(c.upstream.tls.enabled);
    assert_eq!(c.upstream.tls.ca_file, Some(ca));
    assert_eq!(c.outbox.max_bytes, ByteSize(1 << 20));
    assert_eq!(c.outbox.max_messages, 500);
    assert_eq!(c.outbox.bulk.mode, BulkMode::Ndjson);
    assert_eq!(c.log.format, LogFormat::Json);
}

#[test]
fn env_sets_a_key_the_file_does_not_have() {
    let c = ok("", &[("SPOOL_UPSTREAM__HOST", "only-env")]);
    assert_eq!(c.upstream.host, "only-env");
}

#[test]
fn env_subscriptions_by_index() {
    let c = ok(
        &format!("{MIN}[[subscriptions]]\nfilter = \"a/#\"\n"),
        &[
            ("SPOOL_SUBSCRIPTIONS__0__QOS", "2"),
            ("SPOOL_SUBSCRIPTIONS__1__FILTER", "b/+"),
            ("SPOOL_SUBSCRIPTIONS__1__QUEUE", "commands"),
        ],
    );
    assert_eq!(c.subscriptions.len(), 2);
    assert_eq!(c.subscriptions[0].qos, 2);
    assert_eq!(c.subscriptions[1].filter, "b/+");
    assert_eq!(c.subscriptions[1].queue, "commands");
    // Entries are added in index order, not in the variables' name order.
    let vars: Vec<(String, String)> = (0..12)
        .map(|i| {
            (
                format!("SPOOL_SUBSCRIPTIONS__{i}__FILTER"),
                format!("f/{i}"),
            )
        })
        .collect();
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let c = ok(MIN, &vars);
    assert_eq!(c.subscriptions.len(), 12);
    assert_eq!(c.subscriptions[10].filter, "f/10");
    // Without an index: an error naming the indexed form, not silently ignored.
    let all = errors(MIN, &[("SPOOL_SUBSCRIPTIONS__FILTER", "a/#")]).join("\n");
    assert!(
        all.contains("SPOOL_SUBSCRIPTIONS__FILTER: did you mean SPOOL_SUBSCRIPTIONS__0__FILTER?"),
        "{all}"
    );
    check_err(
        MIN,
        &[("SPOOL_SUBSCRIPTIONS__3__FILTER", "x")],
        "subscriptions[3]",
        &["index must be 0..=0", "from SPOOL_SUBSCRIPTIONS__3__FILTER"],
    );
}

#[test]
fn env_bad_value_names_the_variable() {
    check_err(
        MIN,
        &[("SPOOL_UPSTREAM__PORT", "eighty")],
        "upstream.port",
        &[
            "upstream.port = \"eighty\"",
            "an integer in 1..=65535",
            "from SPOOL_UPSTREAM__PORT",
        ],
    );
    check_err(
        MIN,
        &[("SPOOL_UPSTREAM__CLEAN_START", "yes")],
        "upstream.clean_start",
        &[
            "\"yes\"",
            "true or false",
            "from SPOOL_UPSTREAM__CLEAN_START",
        ],
    );
    check_err(
        MIN,
        &[("SPOOL_OUTBOX__MAX_BYTES", "64M")],
        "outbox.max_bytes",
        &[
            "\"64M\"",
            "a size such as",
            "unknown unit",
            "from SPOOL_OUTBOX__MAX_BYTES",
        ],
    );
}

#[test]
fn unknown_env_variables_are_errors_with_the_closest_name() {
    let errs = errors(
        MIN,
        &[
            ("SPOOL_UPSTREAM_HOST", "x"),
            ("SPOOL_UPSTRAEM__PORT", "1"),
            ("SPOOL_OUTBOX__MAX_BYTE", "1"),
            ("SPOOL_NOTHING__LIKE__IT", "1"),
        ],
    );
    let all = errs.join("\n");
    assert!(all.contains("unknown configuration variable SPOOL_UPSTREAM_HOST: did you mean SPOOL_UPSTREAM__HOST?"), "{all}");
    assert!(
        all.contains("SPOOL_UPSTRAEM__PORT: did you mean SPOOL_UPSTREAM__PORT?"),
        "{all}"
    );
    assert!(
        all.contains("SPOOL_OUTBOX__MAX_BYTE: did you mean SPOOL_OUTBOX__MAX_BYTES?"),
        "{all}"
    );
    // Nothing close: no suggestion.
    assert!(
        errs.iter()
            .any(|e| e == "unknown configuration variable SPOOL_NOTHING__LIKE__IT"),
        "{all}"
    );
    assert_eq!(errs.len(), 4, "{all}");
}

#[test]
fn spool_variables_that_are_not_config_keys_are_left_alone() {
    ok(
        MIN,
        &[
            ("SPOOL_DIR", "/tmp/x"),
            ("SPOOL_CRASH_SEEDS", "10"),
            ("OTHER__THING", "1"),
        ],
    );
}

#[test]
fn flags_override_variables_with_the_same_rules() {
    let e = Environment::from_vars([("SPOOL_LOG__FORMAT", "human")])
        .with_hostname("h")
        .with_flag("log.format", "json", "--log-format");
    let c = AgentConfig::from_toml_str(MIN, Path::new("a.toml"), &e).unwrap();
    assert_eq!(c.log.format, LogFormat::Json);
    let e = Environment::default()
        .with_hostname("h")
        .with_flag("log.format", "xml", "--log-format")
        .with_flag("log.formt", "json", "--formt");
    let errs = AgentConfig::from_toml_str(MIN, Path::new("a.toml"), &e)
        .unwrap_err()
        .to_string();
    assert!(
        errs.contains(
            "log.format = \"xml\": must be one of \"human\", \"json\" (from --log-format)"
        ),
        "{errs}"
    );
    assert!(
        errs.contains("unknown key log.formt (from --formt): did you mean log.format?"),
        "{errs}"
    );
}

// ---- the file ----

#[test]
fn unknown_keys_in_the_file_name_their_line_and_the_closest_key() {
    let text = "[upstream]\nhost = \"b\"\nhots = \"x\"\nmax_bytes = 5\n[upstream.tsl]\nenabled = true\n[nonsense]\n";
    let all = errors(text, &[]).join("\n");
    assert!(
        all.contains("unknown key upstream.hots (agent.toml line 3): did you mean upstream.host?"),
        "{all}"
    );
    assert!(
        all.contains(
            "unknown key upstream.max_bytes (agent.toml line 4): did you mean outbox.max_bytes?"
        ),
        "{all}"
    );
    assert!(
        all.contains("unknown key upstream.tsl (agent.toml line 5): did you mean upstream.tls?"),
        "{all}"
    );
    assert!(
        all.contains("unknown key nonsense (agent.toml line 7)"),
        "{all}"
    );
}

#[test]
fn a_value_where_a_section_belongs() {
    check_err(
        "upstream = \"broker\"\n",
        &[],
        "upstream",
        &["must be a section", "[upstream]", "line 1"],
    );
    check_err(
        &format!("{MIN}subscriptions = \"a/#\"\n"),
        &[],
        "upstream.subscriptions",
        &["unknown key", "did you mean subscriptions?"],
    );
    check_err(
        &format!("subscriptions = 3\n{MIN}"),
        &[],
        "subscriptions",
        &["[[subscriptions]]"],
    );
}

#[test]
fn syntax_errors_say_where() {
    let all = errors("[upstream\nhost = 1\n", &[]).join("\n");
    assert!(
        all.contains("not valid TOML") && all.contains("line 1"),
        "{all}"
    );
}

#[test]
fn all_problems_are_reported_together_in_file_order() {
    let text = "[upstream]\nhost = \"b\"\nport = 0\nwindow = 0\nkeepalive = \"0s\"\n[outbox]\ndefault_qos = 3\n[listener]\nbind = \"0.0.0.0:1\"\n";
    let errs = errors(
        text,
        &[("SPOOL_LOG__LEVEL", "loud"), ("SPOOL_UPSTREAM__HOTS", "x")],
    );
    let starts = [
        "upstream.port = 0",
        "upstream.window = 0",
        "upstream.keepalive = \"0s\"",
        "outbox.default_qos = 3",
        "listener.bind = \"0.0.0.0:1\"",
        "unknown configuration variable SPOOL_UPSTREAM__HOTS",
        "log.level = \"loud\"",
    ];
    assert_eq!(errs.len(), starts.len(), "{errs:#?}");
    for (e, want) in errs.iter().zip(starts) {
        assert!(
            e.starts_with(want),
            "{e} should start with {want}; all: {errs:#?}"
        );
    }
}

#[test]
fn a_bad_value_is_reported_once() {
    // A host of the wrong type is not also "not set", a port of the wrong type not also
    // re-checked with the TLS default.
    let errs = errors("[upstream]\nhost = 5\n", &[]);
    assert_eq!(
        errs,
        ["upstream.host = 5: must be a string (agent.toml line 2)"]
    );
}

#[test]
fn read_errors_name_the_file() {
    let e = AgentConfig::load(Path::new("/nonexistent/agent.toml"), &env(&[])).unwrap_err();
    let shown = e.to_string();
    assert!(
        shown.contains("cannot read /nonexistent/agent.toml") && shown.contains("No such file"),
        "{shown}"
    );
}

// ---- each validation rule: key, value, what is allowed, origin ----

#[test]
fn host_rules() {
    check_err(
        "",
        &[],
        "upstream.host",
        &["upstream.host is not set", "SPOOL_UPSTREAM__HOST"],
    );
    check_err(
        "[upstream]\nhost = \"\"\n",
        &[],
        "upstream.host",
        &["upstream.host = \"\"", "line 2"],
    );
    check_err(
        "[upstream]\nhost = \"mqtts://broker:8883\"\n",
        &[],
        "upstream.host",
        &["\"mqtts://broker:8883\"", "no scheme", "upstream.port"],
    );
    check_err(
        "[upstream]\nhost = \"broker:8883\"\n",
        &[],
        "upstream.host",
        &["the port goes in upstream.port"],
    );
    ok("[upstream]\nhost = \"::1\"\n", &[]);
}

#[test]
fn port_and_window_ranges() {
    check_err(
        &format!("{MIN}port = 70000\n"),
        &[],
        "upstream.port",
        &[
            "upstream.port = 70000",
            "an integer in 1..=65535",
            "agent.toml line 3",
        ],
    );
    check_err(
        &format!("{MIN}port = 0\n"),
        &[],
        "upstream.port",
        &["= 0", "1..=65535"],
    );
    check_err(
        &format!("{MIN}window = 0\n"),
        &[],
        "upstream.window",
        &["upstream.window = 0", "1..=65000"],
    );
    check_err(
        &format!("{MIN}port = \"1883\"\n"),
        &[],
        "upstream.port",
        &["\"1883\"", "an integer"],
    );
}

#[test]
fn protocol_and_enum_values() {
    check_err(
        &format!("{MIN}protocol = \"4\"\n"),
        &[],
        "upstream.protocol",
        &["\"4\"", "one of \"3.1.1\", \"5\""],
    );
    check_err(
        "[outbox]\noverflow = \"evict\"\n",
        &[],
        "outbox.overflow",
        &["\"evict\"", "\"evict-lowest-priority\""],
    );
    check_err(
        "[outbox.bulk]\nmode = \"json\"\n",
        &[],
        "outbox.bulk.mode",
        &["\"json-array\"", "\"ndjson\""],
    );
    check_err(
        "[log]\nformat = \"text\"\n",
        &[],
        "log.format",
        &["\"human\", \"json\""],
    );
    check_err(
        "[store]\ndurability = \"fsync\"\n",
        &[],
        "store.durability",
        &["\"fsync\"", "interval:<duration>"],
    );
}

#[test]
fn durations_need_units_and_sane_values() {
    check_err(
        &format!("{MIN}keepalive = 30\n"),
        &[],
        "upstream.keepalive",
        &["= 30", "a duration with a unit"],
    );
    check_err(
        &format!("{MIN}keepalive = \"30\"\n"),
        &[],
        "upstream.keepalive",
        &["no unit", "\"30s\""],
    );
    check_err(
        &format!("{MIN}keepalive = \"0s\"\n"),
        &[],
        "upstream.keepalive",
        &["\"0s\"", "at least 1s", "half-open"],
    );
    check_err(
        &format!("{MIN}keepalive = \"1d\"\n"),
        &[],
        "upstream.keepalive",
        &["\"1d\"", "at most 65535s"],
    );
    check_err(
        &format!("{MIN}keepalive = \"1500ms\"\n"),
        &[],
        "upstream.keepalive",
        &["\"1500ms\"", "whole number of seconds"],
    );
    check_err(
        &format!("{MIN}connect_timeout = \"0s\"\n"),
        &[],
        "upstream.connect_timeout",
        &["above 0"],
    );
    check_err(
        &format!("{MIN}session_expiry = \"200y\"\n"),
        &[],
        "upstream.session_expiry",
        &["4294967295s"],
    );
    check_err(
        "[store]\ndurability = \"interval:0ms\"\n",
        &[],
        "store.durability",
        &["at least 1ms"],
    );
    check_err(
        "[store]\ndurability = \"interval:500us\"\n",
        &[],
        "store.durability",
        &["at least 1ms"],
    );
    check_err(
        "[outbox]\ndefault_ttl = \"31d\"\n",
        &[],
        "outbox.default_ttl",
        &["\"31d\"", "at most 30d"],
    );
}

#[test]
fn backoff_min_must_not_exceed_max() {
    check_err(
        &format!("{MIN}[upstream.backoff]\nmin = \"10s\"\nmax = \"5s\"\n"),
        &[],
        "upstream.backoff.max",
        &[
            "upstream.backoff.max = \"5s\"",
            "at least upstream.backoff.min (\"10s\")",
            "line 5",
        ],
    );
    check_err(
        &format!("{MIN}[upstream.backoff]\nmin = \"0s\"\n"),
        &[],
        "upstream.backoff.min",
        &["above 0"],
    );
    ok(
        &format!("{MIN}[upstream.backoff]\nmin = \"5s\"\nmax = \"5s\"\n"),
        &[],
    );
}

#[test]
fn tls_cert_and_key_go_together_and_must_be_readable_pem() {
    let dir = tmp();
    let cert = write(dir.path(), "client.pem", CERT);
    let key = write(dir.path(), "client.key", KEY);
    let tls = |body: &str| format!("{MIN}[upstream.tls]\nenabled = true\n{body}");
    let q = |p: &Path| format!("{:?}", p.to_str().unwrap());
    check_err(
        &tls(&format!("cert_file = {}\n", q(&cert))),
        &[],
        "upstream.tls.cert_file",
        &["needs upstream.tls.key_file"],
    );
    check_err(
        &tls(&format!("key_file = {}\n", q(&key))),
        &[],
        "upstream.tls.key_file",
        &["needs upstream.tls.cert_file"],
    );
    ok(
        &tls(&format!(
            "cert_file = {}\nkey_file = {}\n",
            q(&cert),
            q(&key)
        )),
        &[],
    );
    check_err(
        &tls("ca_file = \"/nonexistent/ca.pem\"\n"),
        &[],
        "upstream.tls.ca_file",
        &[
            "\"/nonexistent/ca.pem\"",
            "cannot be read",
            "No such file",
            "PEM file of CA certificates",
            "line 5",
        ],
    );
    // A key given as the certificate: no CERTIFICATE block in it.
    check_err(
        &tls(&format!(
            "cert_file = {}\nkey_file = {}\n",
            q(&key),
            q(&key)
        )),
        &[],
        "upstream.tls.cert_file",
        &["no PEM block", "CERTIFICATE"],
    );
    check_err(
        &tls(&format!("ca_file = {}\n", q(dir.path()))),
        &[],
        "upstream.tls.ca_file",
        &["directory"],
    );
    check_err(
        &format!("{MIN}[upstream.tls]\nca_file = {}\n", q(&cert)),
        &[],
        "upstream.tls.enabled",
        &["upstream.tls.ca_file is set but TLS is off"],
    );
    check_err(
        &tls("server_name = \"\"\n"),
        &[],
        "upstream.tls.server_name",
        &["DNS name"],
    );
}

#[test]
fn password_file_is_read_and_checked() {
    let dir = tmp();
    let pw = write(dir.path(), "pw", "s3cret\n");
    let q = format!("{:?}", pw.to_str().unwrap());
    let c = ok(
        &format!("{MIN}username = \"u\"\npassword_file = {q}\n"),
        &[],
    );
    assert_eq!(
        c.upstream.password.as_ref().map(Secret::expose),
        Some("s3cret")
    );
    check_err(
        &format!("{MIN}password = \"x\"\npassword_file = {q}\n"),
        &[],
        "upstream.password_file",
        &["together with upstream.password"],
    );
    let empty = write(dir.path(), "empty", "\n");
    check_err(
        &format!("{MIN}password_file = {:?}\n", empty.to_str().unwrap()),
        &[],
        "upstream.password_file",
        &["is empty"],
    );
    check_err(
        &format!("{MIN}password_file = \"/nonexistent/pw\"\n"),
        &[],
        "upstream.password_file",
        &["cannot be read"],
    );
    check_err(
        &format!("{MIN}protocol = \"3.1.1\"\npassword = \"x\"\n"),
        &[],
        "upstream.password",
        &["needs upstream.username", "3.1.1"],
    );
    ok(&format!("{MIN}password = \"x\"\n"), &[]); // MQTT 5 allows a password alone
    check_err(
        &format!("{MIN}username = \"\"\n"),
        &[],
        "upstream.username",
        &["must not be empty"],
    );
    check_err(
        MIN,
        &[("SPOOL_UPSTREAM__PASSWORD", "")],
        "upstream.password",
        &[
            "upstream.password = \"\": must not be empty",
            "from SPOOL_UPSTREAM__PASSWORD",
        ],
    );
    check_err(
        &format!("{MIN}client_id = \"\"\n"),
        &[],
        "upstream.client_id",
        &["must not be empty"],
    );
}

#[test]
fn listener_must_be_loopback_unless_allowed() {
    check_err(
        &format!("{MIN}[listener]\nbind = \"0.0.0.0:1884\"\n"),
        &[],
        "listener.bind",
        &[
            "listener.bind = \"0.0.0.0:1884\"",
            "loopback",
            "no authentication",
            "allow_remote = true",
        ],
    );
    ok(
        &format!("{MIN}[listener]\nbind = \"0.0.0.0:1884\"\nallow_remote = true\n"),
        &[],
    );
    ok(&format!("{MIN}[listener]\nbind = \"[::1]:1884\"\n"), &[]);
    ok(
        &format!("{MIN}[listener]\nenabled = false\nbind = \"0.0.0.0:1884\"\n"),
        &[],
    );
    check_err(
        &format!("{MIN}[listener]\nbind = \"localhost\"\n"),
        &[],
        "listener.bind",
        &["\"localhost\"", "an IP address and port"],
    );
    check_err(
        &format!("{MIN}[listener]\nmax_connections = 0\n"),
        &[],
        "listener.max_connections",
        &["1..=65535"],
    );
    check_err(
        &format!("{MIN}[listener]\nmax_packet_size = \"1GiB\"\n"),
        &[],
        "listener.max_packet_size",
        &["\"1GiB\"", "1KiB..=256MiB"],
    );
    check_err(
        &format!("{MIN}[http]\nbind = \"127.0.0.1:1884\"\n"),
        &[],
        "http.bind",
        &["must differ from listener.bind"],
    );
}

#[test]
fn subscription_filters() {
    let sub = |filter: &str| format!("{MIN}[[subscriptions]]\nfilter = {filter:?}\n");
    ok(&sub("a/+/b/#"), &[]);
    ok(&sub("#"), &[]);
    ok(&sub("+"), &[]);
    check_err(
        &sub("a/#/b"),
        &[],
        "subscriptions[0].filter",
        &["\"a/#/b\"", "'#' only as a whole last level", "line 4"],
    );
    check_err(&sub("a/b#"), &[], "subscriptions[0].filter", &["'#' only"]);
    check_err(
        &sub("a/+b"),
        &[],
        "subscriptions[0].filter",
        &["'+' only as a whole level"],
    );
    check_err(
        &sub(""),
        &[],
        "subscriptions[0].filter",
        &["must be a topic filter"],
    );
    check_err(
        &format!("{MIN}[[subscriptions]]\nqos = 1\n"),
        &[],
        "subscriptions[0].filter",
        &["is not set"],
    );
    check_err(
        &format!("{MIN}[[subscriptions]]\nfilter = \"a/#\"\nqos = 3\n"),
        &[],
        "subscriptions[0].qos",
        &["= 3", "0..=2"],
    );
    check_err(
        &format!("{MIN}[[subscriptions]]\nfilter = \"a/#\"\nqueue = \"no spaces\"\n"),
        &[],
        "subscriptions[0].queue",
        &["\"no spaces\"", "queue name"],
    );
    check_err(
        &format!("{MIN}[[subscriptions]]\nfilter = \"a/#\"\n[[subscriptions]]\nfilter = \"a/#\"\nqos = 2\n"),
        &[],
        "subscriptions[1].filter",
        &["same filter as subscriptions[0]", "line 6"],
    );
    check_err(
        &format!("{MIN}[[subscriptions]]\nfiltre = \"a/#\"\n"),
        &[],
        "subscriptions[0].filtre",
        &["unknown key", "did you mean subscriptions.filter?"],
    );
}

#[test]
fn outbox_limits_zero_is_unlimited_and_high_water_fits() {
    let c = ok(
        &format!("{MIN}[outbox]\nmax_bytes = 0\nmax_messages = 0\n"),
        &[],
    );
    assert_eq!(c.outbox.max_bytes, ByteSize(0));
    check_err(
        &format!("{MIN}[outbox]\nmax_bytes = \"1MiB\"\n[http.ready]\noutbox_high_water_bytes = \"2MiB\"\n"),
        &[],
        "http.ready.outbox_high_water_bytes",
        &["\"2MiB\"", "at most outbox.max_bytes (\"1MiB\")"],
    );
    check_err(
        &format!(
            "{MIN}[outbox]\nmax_messages = 10\n[http.ready]\noutbox_high_water_messages = 11\n"
        ),
        &[],
        "http.ready.outbox_high_water_messages",
        &["= 11", "at most outbox.max_messages (10)"],
    );
    ok(
        &format!(
            "{MIN}[outbox]\nmax_bytes = 0\n[http.ready]\noutbox_high_water_bytes = \"2MiB\"\n"
        ),
        &[],
    );
    check_err(
        &format!("{MIN}[outbox.bulk]\nmax_bytes = 0\n"),
        &[],
        "outbox.bulk.max_bytes",
        &["above 0"],
    );
    check_err(
        &format!("{MIN}[outbox.bulk]\ntopic_suffix = \"/bulk/#\"\n"),
        &[],
        "outbox.bulk.topic_suffix",
        &["wildcard"],
    );
    check_err(
        &format!("{MIN}[outbox.bulk]\nmax_records = 1\n"),
        &[],
        "outbox.bulk.max_records",
        &["2"],
    );
    check_err(
        &format!("{MIN}[outbox]\ndefault_priority = 256\n"),
        &[],
        "outbox.default_priority",
        &["0..=255"],
    );
}

#[test]
fn log_levels() {
    ok(
        &format!("{MIN}[log]\nlevel = \"info,spool_mqtt=debug\"\n"),
        &[],
    );
    ok(&format!("{MIN}[log]\nlevel = \"WARN\"\n"), &[]);
    check_err(
        &format!("{MIN}[log]\nlevel = \"verbose\"\n"),
        &[],
        "log.level",
        &["\"verbose\"", "\"debug\""],
    );
    check_err(
        &format!("{MIN}[log]\nlevel = \"info,=debug\"\n"),
        &[],
        "log.level",
        &["directives"],
    );
}

// ---- secrets ----

#[test]
fn secrets_are_masked_everywhere_but_expose() {
    let c = ok(
        &format!("{MIN}username = \"u\"\npassword = \"hunter2\"\n"),
        &[],
    );
    assert_eq!(c.upstream.password.as_ref().unwrap().expose(), "hunter2");
    let debug = format!("{c:?}");
    let json = serde_json::to_string(&c).unwrap();
    let summary = c.summary();
    for (what, text) in [("Debug", &debug), ("JSON", &json), ("summary", &summary)] {
        assert!(
            !text.contains("hunter2"),
            "{what} shows the password: {text}"
        );
        assert!(
            text.contains("***"),
            "{what} does not show the mask: {text}"
        );
    }
    // Nor in an error about it.
    let all = errors(
        &format!("{MIN}protocol = \"3.1.1\"\npassword = \"hunter2\"\n"),
        &[("SPOOL_UPSTREAM__PASSWORD", "hunter3")],
    )
    .join("\n");
    assert!(!all.contains("hunter"), "{all}");
    assert!(all.contains("upstream.password = ***"), "{all}");
    check_err(
        &format!("{MIN}password = 12345\n"),
        &[],
        "upstream.password",
        &["upstream.password = ***: must be a string"],
    );
}
