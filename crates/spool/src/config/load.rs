//! From text and environment to an unvalidated `AgentConfig`: parse the file (keeping the line
//! of every key), lay the `SPOOL_...` variables over it, check every key and value against the
//! key table, then hand the merged `toml::Table` to serde.
//!
//! Hand-written rather than `figment` or `config`: both map `SPOOL_A__B` onto keys without
//! knowing the schema, so a mistyped variable is silently ignored and `SPOOL_X__CLIENT_ID=1234`
//! may become an integer; both report the first bad value, not all of them. The overlay here
//! is about 150 lines over `toml::Table` and knows each key's type.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::{Table, Value};

use super::error::{ConfigError, Origin};
use super::keys::{self, ARRAY_SECTIONS, SECTIONS};
use super::schema::AgentConfig;
use super::Environment;

/// Origin of each value that was set, by concrete path (`subscriptions[1].filter`).
pub type Origins = BTreeMap<String, Origin>;

/// Parses, overlays and type-checks. Errors are pushed to `errs`; the keys they are about are
/// put in `flagged` and left out, so that the configuration built from the rest can still be
/// checked (every problem reported in one round, none twice). `None` when the text is not TOML.
pub fn merge(
    text: &str,
    file: &Path,
    env: &Environment,
    origins: &mut Origins,
    errs: &mut Vec<ConfigError>,
    flagged: &mut BTreeSet<String>,
) -> Option<AgentConfig> {
    let mut table: Table = match toml::from_str(text) {
        Ok(t) => t,
        Err(e) => {
            errs.push(ConfigError::Syntax {
                message: e.to_string().trim_end().to_owned(),
            });
            return None;
        }
    };
    record_lines(text, file, origins);
    overlay_env(&mut table, env, origins, errs);
    overlay_flags(&mut table, env, origins, errs);
    check_table(&mut table, "", "", origins, errs, flagged);
    match AgentConfig::deserialize(Value::Table(table)) {
        Ok(c) => Some(c),
        Err(e) => {
            // The key table and the structs disagree (a test guards against it): still a
            // clear error rather than a panic.
            errs.push(ConfigError::Syntax {
                message: e.message().to_owned(),
            });
            None
        }
    }
}

/// The file line of every key, from the parser's spans.
fn record_lines(text: &str, file: &Path, origins: &mut Origins) {
    let Ok(doc) = toml::de::DeTable::parse(text) else {
        return;
    };
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let mut stack: Vec<(String, &toml::de::DeTable<'_>)> = vec![(String::new(), doc.get_ref())];
    while let Some((prefix, table)) = stack.pop() {
        for (k, v) in table {
            let path = join(&prefix, k.get_ref());
            let origin = |offset| Origin::File {
                path: file.to_owned(),
                line: line_of(offset),
            };
            origins.insert(path.clone(), origin(k.span().start));
            match v.get_ref() {
                toml::de::DeValue::Table(t) => stack.push((path, t)),
                toml::de::DeValue::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        let item_path = format!("{path}[{i}]");
                        origins.insert(item_path.clone(), origin(item.span().start));
                        if let toml::de::DeValue::Table(t) = item.get_ref() {
                            stack.push((item_path, t));
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Whether a `SPOOL_` variable names a configuration key: it has a `__`, or it starts with a
/// section name and `_` (`SPOOL_UPSTREAM_HOST`, a likely typo). Other `SPOOL_` variables
/// (`SPOOL_DIR` of the CLI, the test knobs) are not ours to judge.
fn is_config_var(rest: &str) -> bool {
    let lower = rest.to_ascii_lowercase();
    // `SPOOL_SERVE__...` configures `spool serve` (config/serve.rs), not the agent.
    if lower.starts_with("serve__") {
        return false;
    }
    lower.contains("__")
        || SECTIONS
            .iter()
            .filter(|(s, _)| !s.contains('.'))
            .any(|(s, _)| lower.starts_with(&format!("{s}_")) || lower == *s)
}

/// Lays every `SPOOL_<SECTION>__<KEY>` variable over the file's table.
fn overlay_env(
    table: &mut Table,
    env: &Environment,
    origins: &mut Origins,
    errs: &mut Vec<ConfigError>,
) {
    for var in &env.not_unicode {
        errs.push(ConfigError::NotUnicode { var: var.clone() });
    }
    // Parsed first, then applied with the [[subscriptions]] entries in index order (a name
    // order would put __10__ before __2__, and an entry can only be added at the next index).
    let mut parsed = Vec::new();
    for (var, raw) in &env.vars {
        let Some(rest) = var.strip_prefix("SPOOL_") else {
            continue;
        };
        if !is_config_var(rest) {
            continue;
        }
        let segs: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        // `SPOOL_SUBSCRIPTIONS__<N>__<KEY>`: the N-th [[subscriptions]] entry.
        let (schema_path, index) = match segs.as_slice() {
            [section, n, k] if ARRAY_SECTIONS.contains(&section.as_str()) => {
                (format!("{section}.{k}"), n.parse::<usize>().ok())
            }
            _ => (segs.join("."), None),
        };
        let array = ARRAY_SECTIONS.contains(&segs[0].as_str());
        match keys::key(&schema_path) {
            // An array key needs its index; any other key must not have one.
            Some(def) if array == index.is_some() => {
                parsed.push((index, var, raw, segs, schema_path, def));
            }
            _ => errs.push(ConfigError::UnknownVar {
                var: var.clone(),
                suggestion: keys::closest_var(var),
            }),
        }
    }
    parsed.sort_by_key(|(index, var, ..)| (*index, *var));
    for (index, var, raw, segs, schema_path, def) in parsed {
        let value = def.ty.from_env(raw);
        let origin = Origin::Env { var: var.clone() };
        match index {
            None => {
                if insert_at(table, &segs, value) {
                    origins.insert(schema_path, origin);
                }
            }
            Some(i) => {
                let section = &segs[0];
                let leaf = &segs[2];
                let arr = table
                    .entry(section.clone())
                    .or_insert_with(|| Value::Array(Vec::new()));
                let Value::Array(items) = arr else { continue };
                if i > items.len() {
                    errs.push(ConfigError::Invalid {
                        key: format!("{section}[{i}]"),
                        value: raw.clone(),
                        allowed: format!(
                            "there are {} [[{section}]] entries, so the index must be 0..={} (the next index adds an entry)",
                            items.len(),
                            items.len()
                        ),
                        origin,
                    });
                    continue;
                }
                if i == items.len() {
                    items.push(Value::Table(Table::new()));
                }
                if let Value::Table(t) = &mut items[i] {
                    t.insert(leaf.clone(), value);
                    origins.insert(format!("{section}[{i}].{leaf}"), origin);
                }
            }
        }
    }
}

/// Lays command-line flags over the file and the variables (`--log-format json` sets
/// `log.format`). Keys of `[[subscriptions]]` are not settable this way.
fn overlay_flags(
    table: &mut Table,
    env: &Environment,
    origins: &mut Origins,
    errs: &mut Vec<ConfigError>,
) {
    for (key, raw, flag) in &env.flags {
        let origin = Origin::Flag { flag: flag.clone() };
        let def = keys::key(key).filter(|_| !ARRAY_SECTIONS.iter().any(|a| key.starts_with(a)));
        let Some(def) = def else {
            errs.push(ConfigError::UnknownKey {
                key: key.clone(),
                origin,
                suggestion: keys::closest(key),
            });
            continue;
        };
        let segs: Vec<String> = key.split('.').map(str::to_owned).collect();
        if insert_at(table, &segs, def.ty.from_env(raw)) {
            origins.insert(key.clone(), origin);
        }
    }
}

/// Sets the value at `segs` (creating sections), unless the file has a value where a section
/// belongs (reported by the check that follows).
fn insert_at(table: &mut Table, segs: &[String], value: Value) -> bool {
    match segs {
        [] => false,
        [leaf] => {
            table.insert(leaf.clone(), value);
            true
        }
        [first, rest @ ..] => match table
            .entry(first.clone())
            .or_insert_with(|| Value::Table(Table::new()))
        {
            Value::Table(inner) => insert_at(inner, rest, value),
            _ => false,
        },
    }
}

/// Checks every key of `table` against the key table: unknown keys (with the closest valid
/// one), sections given as values, and each value's type. `path` is the concrete path
/// (`subscriptions[0]`), `schema` the key table's (`subscriptions`). A key found bad is removed
/// (so that serde, and the checks after it, see its default) and its path added to `flagged`.
fn check_table(
    table: &mut Table,
    path: &str,
    schema: &str,
    origins: &Origins,
    errs: &mut Vec<ConfigError>,
    flagged: &mut BTreeSet<String>,
) {
    table.retain(|k, v| {
        let here = join(path, k);
        let here_schema = join(schema, k);
        let origin = || origins.get(&here).cloned().unwrap_or(Origin::Default);
        let error = if let Some(def) = keys::key(&here_schema) {
            def.ty.check(v).err().map(|hint| {
                let mut allowed = format!("must be {}", def.ty.allowed());
                if let Some(h) = hint {
                    allowed = format!("{allowed} ({h})");
                }
                ConfigError::Invalid {
                    key: here.clone(),
                    value: show_value(v, def.secret),
                    allowed,
                    origin: origin(),
                }
            })
        } else if ARRAY_SECTIONS.contains(&here_schema.as_str()) {
            if let Value::Array(items) = v {
                let mut i = 0;
                items.retain_mut(|item| {
                    let item_path = format!("{here}[{i}]");
                    i += 1;
                    if let Value::Table(t) = item {
                        check_table(t, &item_path, &here_schema, origins, errs, flagged);
                        return true;
                    }
                    let origin = origins.get(&item_path).cloned().unwrap_or(Origin::Default);
                    errs.push(section_expected(&item_path, item, true, origin));
                    flagged.insert(item_path);
                    false
                });
                None
            } else {
                Some(section_expected(&here, v, true, origin()))
            }
        } else if keys::is_section(&here_schema) {
            if let Value::Table(t) = v {
                check_table(t, &here, &here_schema, origins, errs, flagged);
                None
            } else {
                Some(section_expected(&here, v, false, origin()))
            }
        } else {
            Some(ConfigError::UnknownKey {
                key: here.clone(),
                origin: origin(),
                suggestion: keys::closest(&here_schema),
            })
        };
        match error {
            Some(e) => {
                errs.push(e);
                flagged.insert(here);
                false
            }
            None => true,
        }
    });
}

fn section_expected(path: &str, v: &Value, array: bool, origin: Origin) -> ConfigError {
    let name = path.split('[').next().unwrap_or(path);
    let allowed = if array {
        format!("must be a list of tables, written as [[{name}]] blocks")
    } else {
        format!("must be a section, written as [{name}] with its keys below it")
    };
    ConfigError::Invalid {
        key: path.to_owned(),
        value: show_value(v, false),
        allowed,
        origin,
    }
}

/// A value as TOML would write it, short; `***` for a secret.
pub fn show_value(v: &Value, secret: bool) -> String {
    const SHOWN_MAX: usize = 200;
    if secret {
        return super::schema::Secret::MASK.to_owned();
    }
    let s = match v {
        Value::Table(_) => "{ ... }".to_owned(),
        Value::Array(_) => "[ ... ]".to_owned(),
        other => other.to_string(),
    };
    if s.chars().count() > SHOWN_MAX {
        let cut: String = s.chars().take(SHOWN_MAX).collect();
        format!("{cut}...")
    } else {
        s
    }
}

/// A path value of the file is relative to the file's directory; one from the environment (or
/// the default) is left as given, relative to the working directory.
pub fn resolve_path(p: &Path, origin: Option<&Origin>, file: &Path) -> PathBuf {
    match origin {
        Some(Origin::File { .. }) if p.is_relative() => match file.parent() {
            Some(dir) => dir.join(p),
            None => p.to_owned(),
        },
        _ => p.to_owned(),
    }
}
