//! `spool inspect`: look inside a store, and get messages out of it.
//!
//! - `verify`: the full checksum and LSN walk of the engine's `verify` module, printed;
//! - `dump`: messages as JSON lines, page by page (never a whole queue in memory);
//! - `stats`: per queue and topic counts plus store-level figures;
//! - `export` / `import`: queues, topics, configs and messages as JSON lines, and back;
//! - `salvage`: every readable message of a (damaged) store into a fresh one.
//!
//! The JSON lines formats and the exit codes are documented in `docs/inspect.md`.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use bytes::Bytes;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Map, Value};
use spool_engine::ckpt::SlotStatus;
use spool_engine::verify::{self, VerifyReport};
use spool_engine::vfs::{OsVfs, Vfs};
use spool_engine::{
    Cursor, Error as EngineError, Maintenance, Message, MessageState, Options, Overflow, Push,
    QueueConfig, RecoveryPolicy, RecoveryReport, Store, TopicConfig, TopicStats,
};

use super::output::{dump_message_json, dump_topic_message_json, stats_json};
use super::Cli;

/// Messages read per page (dump, export, salvage).
const PAGE: usize = 1000;
/// Messages pushed per batch by import and salvage at most (one durable write each).
const BATCH_LEN: usize = 1000;
/// Payload bytes per batch at most.
const BATCH_BYTES: usize = 8 << 20;
/// Version of the export format (the header line's `spool_export`).
const EXPORT_VERSION: u64 = 1;
/// The longest delay or TTL the engine accepts (30 days).
const DURATION_MAX_MS: u64 = 30 * 24 * 3600 * 1000;

#[derive(Debug, Subcommand)]
pub enum InspectCommand {
    /// Walk every checksum and LSN of the store and check its checkpoints and index files
    #[command(
        after_help = "Exits with 0 when the store is sound, 6 when problems were found (each is printed).\n\nExamples:\n  spool inspect verify\n  spool --dir /var/lib/spool inspect verify --json"
    )]
    Verify(VerifyArgs),
    /// Print messages as JSON lines, one object per message, without changing anything
    #[command(
        after_help = "Examples:\n  spool inspect dump\n  spool inspect dump --queue jobs --from-id 1000 --limit 10\n  spool inspect dump --topic events | jq .payload"
    )]
    Dump(DumpArgs),
    /// Counts of every queue and topic, and store-level figures: segments, index files,
    /// checkpoint, what the open's recovery did
    #[command(after_help = "Examples:\n  spool inspect stats\n  spool inspect stats --json")]
    Stats(StatsArgs),
    /// Write queues, topics, their configs and messages as JSON lines (read back by import)
    #[command(
        after_help = "Examples:\n  spool inspect export --out backup.jsonl\n  spool inspect export | gzip > backup.jsonl.gz"
    )]
    Export(ExportArgs),
    /// Read an export back into a store (created if missing); leased messages come back ready
    #[command(
        after_help = "Examples:\n  spool --dir new-store inspect import backup.jsonl\n  gunzip -c backup.jsonl.gz | spool --dir new-store inspect import"
    )]
    Import(ImportArgs),
    /// Copy every readable message of a damaged store (--dir) into a new store at DEST
    #[command(
        after_help = "The source is opened with recovery policy skip: damaged frames are skipped, records that fail their checksum are counted as unreadable.\n\nExample:\n  spool --dir broken-store inspect salvage rescued-store"
    )]
    Salvage(SalvageArgs),
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Print one JSON object instead of lines
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DumpArgs {
    /// Only this queue (repeatable) [default: every queue and topic]
    #[arg(long, value_name = "QUEUE")]
    pub queue: Vec<String>,
    /// Only this topic (repeatable)
    #[arg(long, value_name = "TOPIC")]
    pub topic: Vec<String>,
    /// Start at this message id (for topics: this sequence number)
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub from_id: u64,
    /// Print at most N messages in all
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Print one JSON object instead of tables
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Write to this file instead of stdout (replaced if it exists)
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The export to read [default: stdin]
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SalvageArgs {
    /// Directory of the new store (must not hold a store yet)
    #[arg(value_name = "DEST")]
    pub dest: PathBuf,
}

/// `spool inspect verify` found problems: the exit code is 6 (see `main.rs`).
#[derive(Debug)]
pub struct ProblemsFound {
    pub problems: usize,
    pub dir: PathBuf,
}

impl fmt::Display for ProblemsFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} problem{} found in the store in {} (listed above); see docs/inspect.md, and `spool inspect salvage DEST` copies every readable message into a new store",
            self.problems,
            if self.problems == 1 { "" } else { "s" },
            self.dir.display()
        )
    }
}

impl std::error::Error for ProblemsFound {}

/// Runs an inspect command.
pub fn run(cli: &Cli, c: &InspectCommand) -> Result<()> {
    match c {
        InspectCommand::Verify(a) => verify_cmd(cli, a),
        InspectCommand::Dump(a) => dump(cli, a),
        InspectCommand::Stats(a) => stats(cli, a),
        InspectCommand::Export(a) => export(cli, a),
        InspectCommand::Import(a) => import(cli, a),
        InspectCommand::Salvage(a) => salvage(cli, a),
    }
}

// --- helpers ---------------------------------------------------------------------------------

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The store directory of a command that only reads: it must hold a store (a mistyped `--dir`
/// must not create one).
fn source_dir(cli: &Cli) -> Result<PathBuf> {
    let dir = cli.dir();
    if !dir.join("FORMAT").exists() && !dir.join("log").exists() {
        bail!(
            "no spool store in {}: check --dir (or $SPOOL_DIR)",
            dir.display()
        );
    }
    Ok(dir)
}

/// Opens the store of a command that reads, with manual maintenance (no background work).
fn open_source(cli: &Cli, recovery: RecoveryPolicy) -> Result<Store> {
    let dir = source_dir(cli)?;
    Store::open(
        &dir,
        Options {
            recovery,
            maintenance: Maintenance::Manual,
            ..Options::default()
        },
    )
    .with_context(|| format!("cannot open the store in {}", dir.display()))
}

/// A progress bar on stderr when it is a terminal; hidden otherwise (scripts, tests).
fn progress_bar(what: &str, len: Option<u64>, bytes: bool) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let (pb, template) = match len {
        Some(n) if bytes => (
            ProgressBar::new(n),
            "{msg} [{bar:40}] {bytes}/{total_bytes} ({eta})",
        ),
        Some(n) => (ProgressBar::new(n), "{msg} [{bar:40}] {pos}/{len} ({eta})"),
        None if bytes => (ProgressBar::new_spinner(), "{spinner} {msg} {bytes}"),
        None => (ProgressBar::new_spinner(), "{spinner} {msg} {pos}"),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_string());
    pb
}

fn hex_id(id: u64) -> String {
    format!("{id:#018x}")
}

fn rfc3339(ms: u64) -> String {
    // humantime formats years up to 9999 only (a damaged time must not panic).
    if ms >= 253_402_300_800_000 {
        return format!("{ms} ms after 1970");
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// `1 segment`, `2 segments` (`entry`: `entries`).
fn plural(n: u64, what: &str) -> String {
    match (n, what.strip_suffix('y')) {
        (1, _) => format!("1 {what}"),
        (_, Some(stem)) => format!("{n} {stem}ies"),
        _ => format!("{n} {what}s"),
    }
}

fn ms_of(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

// --- verify ----------------------------------------------------------------------------------

fn verify_cmd(cli: &Cli, a: &VerifyArgs) -> Result<()> {
    let dir = source_dir(cli)?;
    let pb = progress_bar("verifying", Some(0), true);
    let report = verify::verify_dir(&dir, &mut |done, total| {
        pb.set_length(total);
        pb.set_position(done);
    })
    .with_context(|| format!("cannot verify the store in {}", dir.display()))?;
    pb.finish_and_clear();
    let mut out = io::stdout().lock();
    if a.json {
        writeln!(out, "{}", verify_json(&report))?;
    } else {
        print_verify(&mut out, &report)?;
    }
    out.flush()?;
    if report.is_ok() {
        Ok(())
    } else {
        Err(ProblemsFound {
            problems: report.problems.len(),
            dir,
        }
        .into())
    }
}

fn slot_json(s: &spool_engine::ckpt::SlotState) -> Value {
    match &s.status {
        SlotStatus::Missing => json!({"slot": s.slot, "status": "missing"}),
        SlotStatus::Empty => json!({"slot": s.slot, "status": "empty"}),
        SlotStatus::Valid { gen, payload_len } => json!({
            "slot": s.slot, "status": "valid", "generation": gen, "payload_bytes": payload_len,
        }),
        SlotStatus::Invalid { reason } => {
            json!({"slot": s.slot, "status": "invalid", "reason": reason})
        }
    }
}

fn checkpoint_json(c: &verify::CheckpointInfo) -> Value {
    json!({
        "slot": c.slot,
        "generation": c.generation,
        "payload_bytes": c.payload_bytes,
        "covers": c.covers.map(|p| json!({
            "segment": p.segment, "offset": p.offset, "next_lsn": p.next_lsn,
        })),
        "ok": c.ok,
    })
}

fn verify_json(r: &VerifyReport) -> Value {
    let problems: Vec<Value> = r
        .problems
        .iter()
        .map(|p| {
            json!({
                "kind": p.kind.as_str(),
                "file": p.file,
                "message": p.message,
                "damage": p.range.as_ref().map(|d| json!({
                    "segment": d.segment,
                    "offset": d.offset,
                    "lsn_from": d.lsn_from,
                    "lsn_to": d.lsn_to,
                    "bytes": d.bytes,
                    "reason": d.reason,
                })),
            })
        })
        .collect();
    json!({
        "ok": r.is_ok(),
        "dir": r.dir.display().to_string(),
        "store_id": r.store_id.map(hex_id),
        "created_at": r.created_ms,
        "segments": r.segments,
        "bytes": r.bytes,
        "frames": r.frames,
        "frame_bytes": r.frame_bytes,
        "entries": r.entries,
        "first_lsn": r.first_lsn,
        "last_lsn": r.last_lsn,
        "index_files": {
            "ok": r.index_files_ok,
            "missing": r.index_files_missing,
            "stale": r.index_files_stale,
            "damaged": r.index_files_bad,
        },
        "checkpoint_slots": r.checkpoint_slots.iter().map(slot_json).collect::<Vec<_>>(),
        "checkpoints": r.checkpoints.iter().map(checkpoint_json).collect::<Vec<_>>(),
        "torn_tail": r.torn_tail.as_ref().map(|t| json!({
            "segment": t.segment,
            "offset": t.offset,
            "bytes": t.bytes_discarded,
            "valid_frames_discarded": t.valid_frames_discarded,
        })),
        "problems": problems,
        "notes": r.notes,
        "stray_files": r.stray_files,
    })
}

fn print_verify(out: &mut impl Write, r: &VerifyReport) -> io::Result<()> {
    let id = r.store_id.map_or_else(|| "unknown".to_string(), hex_id);
    let created = r
        .created_ms
        .map_or_else(String::new, |ms| format!(", created {}", rfc3339(ms)));
    writeln!(out, "store        {} (id {id}{created})", r.dir.display())?;
    let lsns = if r.frames == 0 {
        "no frames".to_string()
    } else {
        format!("{} frames, LSN {}..={}", r.frames, r.first_lsn, r.last_lsn)
    };
    writeln!(
        out,
        "log          {}, {}; {lsns}; {}",
        plural(r.segments, "segment"),
        size(r.bytes),
        plural(r.entries, "entry")
    )?;
    writeln!(
        out,
        "index files  {} ok, {} missing, {} stale, {} damaged",
        r.index_files_ok, r.index_files_missing, r.index_files_stale, r.index_files_bad
    )?;
    for s in &r.checkpoint_slots {
        let mut line = format!("ckpt.{}       {}", s.slot, s.status);
        if let SlotStatus::Valid { gen, .. } = s.status {
            if let Some(c) = r.checkpoints.iter().find(|c| c.generation == gen) {
                if let Some(p) = c.covers {
                    let _ = write!(
                        line,
                        "; covers the log up to segment {} offset {} (next LSN {})",
                        p.segment, p.offset, p.next_lsn
                    );
                }
                line.push_str(if c.ok { ": ok" } else { ": NOT OK" });
            }
        }
        writeln!(out, "{line}")?;
    }
    for n in &r.notes {
        writeln!(out, "note: {n}")?;
    }
    for s in &r.stray_files {
        writeln!(
            out,
            "stray file: {s} (not part of a store; spool ignores it)"
        )?;
    }
    for p in &r.problems {
        writeln!(out, "PROBLEM [{}] {p}", p.kind.as_str())?;
    }
    if r.is_ok() {
        writeln!(out, "ok: no problems found")?;
    } else {
        writeln!(
            out,
            "{} problem{} found",
            r.problems.len(),
            if r.problems.len() == 1 { "" } else { "s" }
        )?;
    }
    Ok(())
}

// --- dump ------------------------------------------------------------------------------------

fn dump(cli: &Cli, a: &DumpArgs) -> Result<()> {
    let store = open_source(cli, RecoveryPolicy::Refuse)?;
    let (queues, topics) = if a.queue.is_empty() && a.topic.is_empty() {
        (store.queues(), store.topics())
    } else {
        (a.queue.clone(), a.topic.clone())
    };
    let mut left = a.limit.unwrap_or(u64::MAX);
    let mut out = BufWriter::new(io::stdout().lock());
    for q in &queues {
        let mut after = a.from_id.saturating_sub(1);
        while left > 0 {
            let n = usize::try_from(left).map_or(PAGE, |l| l.min(PAGE));
            let mut page = store
                .messages_page(q, after, n)
                .with_context(|| format!("cannot read queue {q:?}"))?;
            inline_blobs(&store, &mut page)?;
            for m in &page {
                writeln!(out, "{}", dump_message_json(q, m))?;
                after = m.id;
            }
            left -= page.len() as u64;
            if page.len() < n {
                break;
            }
        }
    }
    for t in &topics {
        let s = store
            .topic_stats(t)
            .with_context(|| format!("cannot read topic {t:?}"))?;
        if a.from_id > s.last_seq {
            continue;
        }
        let mut cursor = store.cursor_at(t, a.from_id)?;
        while left > 0 {
            let Some(m) = store
                .topic_next(&mut cursor)
                .with_context(|| format!("cannot read topic {t:?}"))?
            else {
                break;
            };
            writeln!(out, "{}", dump_topic_message_json(t, &m))?;
            left -= 1;
        }
    }
    out.flush()?;
    drop(out);
    store.close()?;
    Ok(())
}

// --- stats -----------------------------------------------------------------------------------

/// Files of one kind in `log/`: how many and how many bytes.
#[derive(Debug, Default, Clone, Copy)]
struct Files {
    count: u64,
    bytes: u64,
}

fn log_files(dir: &Path) -> Result<(Files, Files)> {
    let log = dir.join("log");
    let mut segs = Files::default();
    let mut idx = Files::default();
    for e in std::fs::read_dir(&log).with_context(|| format!("cannot list {}", log.display()))? {
        let e = e.with_context(|| format!("cannot list {}", log.display()))?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        let len = e.metadata().map_or(0, |m| m.len());
        if spool_engine::frame::parse_segment_file_name(&name).is_some() {
            segs.count += 1;
            segs.bytes += len;
        } else if spool_engine::segindex::parse_idx_file_name(&name).is_some() {
            idx.count += 1;
            idx.bytes += len;
        }
    }
    Ok((segs, idx))
}

fn topic_stats_json(s: &TopicStats) -> Value {
    json!({
        "topic": s.name,
        "last_seq": s.last_seq,
        "retained": s.retained,
        "bytes": s.bytes,
        "oldest_age_ms": s.oldest_age_ms,
        "cursors": s.cursors.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<Map<_, _>>(),
        "totals": {"published": s.counters.published, "expired": s.counters.expired},
    })
}

fn recovery_json(r: &RecoveryReport) -> Value {
    json!({
        "checkpoint": r.checkpoint,
        "segments": r.segments,
        "frames": r.frames,
        "entries": r.entries,
        "bytes": r.bytes,
        "torn_tail": r.torn_tail.as_ref().map(|t| json!({
            "segment": t.segment,
            "offset": t.offset,
            "bytes": t.bytes_discarded,
            "valid_frames_discarded": t.valid_frames_discarded,
        })),
        "removed_segments": r.removed_segments,
        "damaged": r.damaged.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "leases_released": r.leases_released,
        "rewritten_bytes": r.rewritten_bytes,
        "checkpoint_problems": r.checkpoint_problems,
        "indexes_rebuilt": r.indexes_rebuilt,
        "duration_ms": r.duration_ms,
    })
}

fn stats(cli: &Cli, a: &StatsArgs) -> Result<()> {
    let store = open_source(cli, RecoveryPolicy::Refuse)?;
    let dir = store.dir().to_path_buf();
    let (segs, idx) = log_files(&dir)?;
    let vfs: Arc<dyn Vfs> = Arc::new(OsVfs);
    let ckpts = verify::read_checkpoints(&vfs, &dir, store.store_id())
        .context("cannot read the checkpoint slots")?;
    let mut queues = Vec::new();
    for q in store.queues() {
        queues.push(
            store
                .stats(&q)
                .with_context(|| format!("cannot read the stats of queue {q:?}"))?,
        );
    }
    let mut topics = Vec::new();
    for t in store.topics() {
        topics.push(
            store
                .topic_stats(&t)
                .with_context(|| format!("cannot read the stats of topic {t:?}"))?,
        );
    }
    let rec = store.recovery_report().clone();
    let newest = ckpts.checkpoints.first();
    let mut out = io::stdout().lock();
    if a.json {
        let v = json!({
            "store": {
                "dir": dir.display().to_string(),
                "store_id": hex_id(store.store_id()),
                "segments": segs.count,
                "segment_bytes": segs.bytes,
                "index_files": idx.count,
                "index_bytes": idx.bytes,
                "checkpoint": newest.map(checkpoint_json),
                "checkpoint_slots": ckpts.slots.iter().map(slot_json).collect::<Vec<_>>(),
            },
            "recovery": recovery_json(&rec),
            "queues": queues.iter().map(stats_json).collect::<Vec<_>>(),
            "topics": topics.iter().map(topic_stats_json).collect::<Vec<_>>(),
        });
        writeln!(out, "{v}")?;
    } else {
        writeln!(
            out,
            "store       {} (id {})",
            dir.display(),
            hex_id(store.store_id())
        )?;
        writeln!(
            out,
            "log         {}, {}; {}, {}",
            plural(segs.count, "segment"),
            size(segs.bytes),
            plural(idx.count, "index file"),
            size(idx.bytes)
        )?;
        match newest {
            Some(c) => {
                let covers = c.covers.map_or_else(
                    || "its content does not decode".to_string(),
                    |p| {
                        format!(
                            "covers the log up to segment {} offset {} (next LSN {})",
                            p.segment, p.offset, p.next_lsn
                        )
                    },
                );
                writeln!(
                    out,
                    "checkpoint  generation {} in ckpt.{} ({}), {covers}",
                    c.generation,
                    c.slot,
                    size(c.payload_bytes)
                )?;
            }
            None => writeln!(out, "checkpoint  none")?,
        }
        let from = rec.checkpoint.map_or_else(
            || "the whole log".to_string(),
            |g| format!("checkpoint {g}"),
        );
        writeln!(
            out,
            "opened      from {from}, replayed {}, {}, {} in {} ms; {} released, {} rebuilt",
            plural(rec.segments, "segment"),
            plural(rec.frames, "frame"),
            plural(rec.entries, "entry"),
            rec.duration_ms,
            plural(rec.leases_released, "lease"),
            plural(rec.indexes_rebuilt, "index file")
        )?;
        if let Some(t) = &rec.torn_tail {
            writeln!(
                out,
                "            cut a torn tail: {} bytes at segment {} offset {}",
                t.bytes_discarded, t.segment, t.offset
            )?;
        }
        for p in &rec.checkpoint_problems {
            writeln!(out, "            checkpoint problem: {p}")?;
        }
        writeln!(out)?;
        writeln!(
            out,
            "{:<32} {:>10} {:>8} {:>8} {:>8} {:>12} {:>10} {:>10}",
            "QUEUE", "VISIBLE", "DELAYED", "LEASED", "DEAD", "BYTES", "PUSHED", "ACKED"
        )?;
        for s in &queues {
            writeln!(
                out,
                "{:<32} {:>10} {:>8} {:>8} {:>8} {:>12} {:>10} {:>10}",
                s.name,
                s.visible,
                s.delayed,
                s.leased,
                s.dead,
                s.bytes,
                s.counters.pushed,
                s.counters.acked
            )?;
        }
        if !topics.is_empty() {
            writeln!(out)?;
            writeln!(
                out,
                "{:<32} {:>10} {:>10} {:>12} {:>10}",
                "TOPIC", "LAST_SEQ", "RETAINED", "BYTES", "CURSORS"
            )?;
            for t in &topics {
                writeln!(
                    out,
                    "{:<32} {:>10} {:>10} {:>12} {:>10}",
                    t.name,
                    t.last_seq,
                    t.retained,
                    t.bytes,
                    t.cursors.len()
                )?;
            }
        }
    }
    drop(out);
    store.close()?;
    Ok(())
}

// --- configs as JSON -------------------------------------------------------------------------

fn queue_config_json(c: &QueueConfig) -> Value {
    json!({
        "visibility_ms": ms_of(c.visibility),
        "delay_ms": ms_of(c.delay),
        "retention_ms": c.retention.map(ms_of),
        "max_receives": c.max_receives,
        "dead_letter_queue": c.dead_letter_queue,
        "max_messages": c.max_messages,
        "max_bytes": c.max_bytes,
        "overflow": match c.overflow {
            Overflow::Reject => "reject",
            Overflow::EvictLowestPriority => "evict_lowest_priority",
        },
        "max_payload_bytes": c.max_payload_bytes,
        "max_in_flight": c.max_in_flight,
    })
}

fn topic_config_json(c: &TopicConfig) -> Value {
    json!({
        "retention_ms": ms_of(c.retention),
        "max_messages": c.max_messages,
        "max_bytes": c.max_bytes,
        "max_payload_bytes": c.max_payload_bytes,
    })
}

/// A JSON object's fields, read one by one; unknown fields are refused (typos).
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    what: &'static str,
}

impl<'a> Fields<'a> {
    fn new(v: &'a Value, what: &'static str) -> Result<Self> {
        let obj = v
            .as_object()
            .ok_or_else(|| anyhow!("{what} must be a JSON object"))?;
        Ok(Self { obj, what })
    }
    fn only(&self, known: &[&str]) -> Result<()> {
        if let Some(k) = self.obj.keys().find(|k| !known.contains(&k.as_str())) {
            bail!(
                "unknown field {k:?} in {}; known fields: {}",
                self.what,
                known.join(", ")
            );
        }
        Ok(())
    }
    fn get(&self, k: &str) -> Option<&'a Value> {
        self.obj.get(k).filter(|v| !v.is_null())
    }
    fn u64(&self, k: &str) -> Result<Option<u64>> {
        self.get(k)
            .map(|v| {
                v.as_u64()
                    .ok_or_else(|| anyhow!("{k} in {} must be a non-negative integer", self.what))
            })
            .transpose()
    }
    fn str(&self, k: &str) -> Result<Option<&'a str>> {
        self.get(k)
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| anyhow!("{k} in {} must be a string", self.what))
            })
            .transpose()
    }
}

fn queue_config_of(v: &Value) -> Result<QueueConfig> {
    let f = Fields::new(v, "a queue config")?;
    f.only(&[
        "visibility_ms",
        "delay_ms",
        "retention_ms",
        "max_receives",
        "dead_letter_queue",
        "max_messages",
        "max_bytes",
        "overflow",
        "max_payload_bytes",
        "max_in_flight",
    ])?;
    let d = QueueConfig::default();
    let c = QueueConfig {
        visibility: f
            .u64("visibility_ms")?
            .map_or(d.visibility, Duration::from_millis),
        delay: f.u64("delay_ms")?.map_or(d.delay, Duration::from_millis),
        // Absent or null: kept forever (an export always writes the field).
        retention: f.u64("retention_ms")?.map(Duration::from_millis),
        max_receives: f
            .u64("max_receives")?
            .map(u32::try_from)
            .transpose()
            .context("max_receives is too large")?
            .unwrap_or(d.max_receives),
        dead_letter_queue: f.str("dead_letter_queue")?.map(str::to_string),
        max_messages: f.u64("max_messages")?.unwrap_or(d.max_messages),
        max_bytes: f.u64("max_bytes")?.unwrap_or(d.max_bytes),
        overflow: match f.str("overflow")? {
            None | Some("reject") => Overflow::Reject,
            Some("evict_lowest_priority") => Overflow::EvictLowestPriority,
            Some(o) => bail!("overflow {o:?} is not \"reject\" or \"evict_lowest_priority\""),
        },
        max_payload_bytes: f
            .u64("max_payload_bytes")?
            .map(usize::try_from)
            .transpose()
            .context("max_payload_bytes is too large")?
            .unwrap_or(d.max_payload_bytes),
        max_in_flight: f.u64("max_in_flight")?.unwrap_or(d.max_in_flight),
    };
    c.validate()?;
    Ok(c)
}

fn topic_config_of(v: &Value) -> Result<TopicConfig> {
    let f = Fields::new(v, "a topic config")?;
    f.only(&[
        "retention_ms",
        "max_messages",
        "max_bytes",
        "max_payload_bytes",
    ])?;
    let d = TopicConfig::default();
    Ok(TopicConfig {
        retention: f
            .u64("retention_ms")?
            .map_or(d.retention, Duration::from_millis),
        max_messages: f.u64("max_messages")?.unwrap_or(d.max_messages),
        max_bytes: f.u64("max_bytes")?.unwrap_or(d.max_bytes),
        max_payload_bytes: f
            .u64("max_payload_bytes")?
            .map(usize::try_from)
            .transpose()
            .context("max_payload_bytes is too large")?
            .unwrap_or(d.max_payload_bytes),
    })
}

fn payload_of(f: &Fields<'_>) -> Result<Bytes> {
    match (f.str("payload")?, f.str("payload_base64")?) {
        (Some(p), None) => Ok(Bytes::copy_from_slice(p.as_bytes())),
        (None, Some(b)) => Ok(Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(b)
                .context("payload_base64 is not valid base64")?,
        )),
        (Some(_), Some(_)) => bail!("a message has either payload or payload_base64, not both"),
        (None, None) => bail!("a message needs payload (UTF-8 text) or payload_base64"),
    }
}

fn headers_of(f: &Fields<'_>) -> Result<Vec<(String, Bytes)>> {
    if let Some(list) = f.get("header_list") {
        let list = list
            .as_array()
            .ok_or_else(|| anyhow!("header_list must be an array"))?;
        return list
            .iter()
            .map(|h| {
                let h = Fields::new(h, "a header_list item")?;
                h.only(&["name", "value", "value_base64"])?;
                let name = h
                    .str("name")?
                    .ok_or_else(|| anyhow!("a header_list item needs a name"))?;
                let value = match (h.str("value")?, h.str("value_base64")?) {
                    (Some(v), None) => Bytes::copy_from_slice(v.as_bytes()),
                    (None, Some(b)) => Bytes::from(
                        base64::engine::general_purpose::STANDARD
                            .decode(b)
                            .context("value_base64 is not valid base64")?,
                    ),
                    _ => bail!("a header_list item has value or value_base64 (one of them)"),
                };
                Ok((name.to_string(), value))
            })
            .collect();
    }
    let Some(h) = f.get("headers") else {
        return Ok(Vec::new());
    };
    let h = h
        .as_object()
        .ok_or_else(|| anyhow!("headers must be an object of strings"))?;
    h.iter()
        .map(|(k, v)| {
            let v = v
                .as_str()
                .ok_or_else(|| anyhow!("header {k:?} must be a string"))?;
            Ok((k.clone(), Bytes::copy_from_slice(v.as_bytes())))
        })
        .collect()
}

// --- copying into a store: import and salvage ------------------------------------------------

/// Reads the payloads kept in blob files into the messages (export, dump and salvage print
/// or copy them whole).
fn inline_blobs(store: &Store, msgs: &mut [Message]) -> Result<()> {
    for m in msgs.iter_mut() {
        if m.blob.is_some() {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut store.open_payload(m)?, &mut buf)
                .with_context(|| format!("reading the payload of message {}", m.id))?;
            m.payload = Bytes::from(buf);
            m.blob = None;
        }
    }
    Ok(())
}

/// A message to put into the destination store.
struct Msg {
    priority: u8,
    subject: Option<String>,
    headers: Vec<(String, Bytes)>,
    payload: Bytes,
    expires_at: Option<u64>,
    /// Delayed until then (a leased message comes back ready).
    visible_at: Option<u64>,
}

impl Msg {
    fn of(m: Message) -> Self {
        Self {
            priority: m.priority,
            subject: m.subject,
            headers: m.headers,
            payload: m.payload,
            expires_at: m.expires_at,
            visible_at: match m.state {
                MessageState::Delayed(t) => Some(t),
                MessageState::Ready | MessageState::Leased(_) => None,
            },
        }
    }
}

/// A named cursor of a topic being copied: its position in the source, and in the destination
/// once a message at or after it was published.
struct CursorMap {
    name: String,
    old: u64,
    new: Option<u64>,
}

/// What was copied.
#[derive(Debug, Default, Clone, Copy)]
struct Copied {
    queues: u64,
    topics: u64,
    messages: u64,
    topic_messages: u64,
    /// Messages whose TTL had passed when they were to be pushed (not copied).
    expired: u64,
}

/// Puts queues, topics and messages into a store, in batches (one durable write each).
///
/// Queues are created with their config but no retention while messages go in, so that a
/// message without an expiry stays without one (the engine gives a message pushed without a
/// TTL the queue's retention); [`Copier::finish`] sets the real configs.
struct Copier<'a> {
    store: &'a Store,
    queues: BTreeMap<String, QueueConfig>,
    topics: BTreeMap<String, Vec<CursorMap>>,
    batch: Vec<Push>,
    batch_queue: String,
    batch_bytes: usize,
    batch_from: u64,
    tbatch: Vec<(u64, Bytes)>,
    tbatch_topic: String,
    tbatch_bytes: usize,
    tbatch_from: u64,
    copied: Copied,
    /// Where the items come from, for errors ("line", or "message").
    unit: &'static str,
}

impl<'a> Copier<'a> {
    fn new(store: &'a Store, unit: &'static str) -> Self {
        Self {
            store,
            queues: BTreeMap::new(),
            topics: BTreeMap::new(),
            batch: Vec::new(),
            batch_queue: String::new(),
            batch_bytes: 0,
            batch_from: 0,
            tbatch: Vec::new(),
            tbatch_topic: String::new(),
            tbatch_bytes: 0,
            tbatch_from: 0,
            copied: Copied::default(),
            unit,
        }
    }

    fn span(&self, from: u64, to: u64) -> String {
        if from == to {
            format!("{} {from}", self.unit)
        } else {
            format!("{}s {from}-{to}", self.unit)
        }
    }

    fn define_queue(&mut self, name: &str, config: QueueConfig) -> Result<()> {
        self.flush()?;
        let loading = QueueConfig {
            retention: None,
            ..config.clone()
        };
        match self.store.create_queue(name, loading.clone()) {
            Ok(_) => {}
            Err(EngineError::Exists { .. }) => self
                .store
                .configure_queue(name, loading)
                .with_context(|| format!("cannot configure queue {name:?}"))?,
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("cannot create queue {name:?}")))
            }
        }
        if self.queues.insert(name.to_string(), config).is_none() {
            self.copied.queues += 1;
        }
        Ok(())
    }

    fn define_topic(
        &mut self,
        name: &str,
        config: TopicConfig,
        cursors: Vec<(String, u64)>,
    ) -> Result<()> {
        self.flush()?;
        match self.store.create_topic(name, config.clone()) {
            Ok(_) => {}
            Err(EngineError::Exists { .. }) => self
                .store
                .configure_topic(name, config)
                .with_context(|| format!("cannot configure topic {name:?}"))?,
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("cannot create topic {name:?}")))
            }
        }
        let cursors = cursors
            .into_iter()
            .map(|(name, old)| CursorMap {
                name,
                old,
                new: None,
            })
            .collect();
        if self.topics.insert(name.to_string(), cursors).is_none() {
            self.copied.topics += 1;
        }
        Ok(())
    }

    fn message(&mut self, queue: &str, m: Msg, at: u64) -> Result<()> {
        if !self.queues.contains_key(queue) {
            bail!("message of queue {queue:?}, which is not defined before it");
        }
        let now = now_ms();
        let ttl = match m.expires_at {
            Some(t) if t <= now => {
                self.copied.expired += 1;
                return Ok(());
            }
            Some(t) => Some(Duration::from_millis((t - now).min(DURATION_MAX_MS))),
            None => None,
        };
        let delay = m
            .visible_at
            .filter(|&t| t > now)
            .map_or(0, |t| (t - now).min(DURATION_MAX_MS));
        if self.batch_queue != queue
            || self.batch.len() >= BATCH_LEN
            || self.batch_bytes >= BATCH_BYTES
        {
            self.flush_queue()?;
        }
        if self.batch.is_empty() {
            self.batch_queue = queue.to_string();
            self.batch_from = at;
        }
        self.batch_bytes += m.payload.len()
            + m.headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        self.batch.push(Push {
            payload: m.payload,
            priority: m.priority,
            delay: Some(Duration::from_millis(delay)),
            ttl,
            subject: m.subject,
            headers: m.headers,
        });
        Ok(())
    }

    fn topic_message(
        &mut self,
        topic: &str,
        old_seq: Option<u64>,
        payload: Bytes,
        at: u64,
    ) -> Result<()> {
        if !self.topics.contains_key(topic) {
            bail!("message of topic {topic:?}, which is not defined before it");
        }
        if self.tbatch_topic != topic
            || self.tbatch.len() >= BATCH_LEN
            || self.tbatch_bytes >= BATCH_BYTES
        {
            self.flush_topic()?;
        }
        if self.tbatch.is_empty() {
            self.tbatch_topic = topic.to_string();
            self.tbatch_from = at;
        }
        self.tbatch_bytes += payload.len();
        self.tbatch.push((old_seq.unwrap_or(0), payload));
        Ok(())
    }

    fn flush_queue(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        let n = batch.len() as u64;
        self.batch_bytes = 0;
        let span = self.span(self.batch_from, self.batch_from + n - 1);
        self.store
            .push_batch(&self.batch_queue, batch)
            .with_context(|| format!("{span}: cannot push to queue {:?}", self.batch_queue))?;
        self.copied.messages += n;
        Ok(())
    }

    fn flush_topic(&mut self) -> Result<()> {
        if self.tbatch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.tbatch);
        self.tbatch_bytes = 0;
        let n = batch.len() as u64;
        let span = self.span(self.tbatch_from, self.tbatch_from + n - 1);
        let (olds, payloads): (Vec<u64>, Vec<Bytes>) = batch.into_iter().unzip();
        let seqs = self
            .store
            .publish_batch(&self.tbatch_topic, payloads)
            .with_context(|| format!("{span}: cannot publish to topic {:?}", self.tbatch_topic))?;
        if let Some(cursors) = self.topics.get_mut(&self.tbatch_topic) {
            for (old, new) in olds.into_iter().zip(seqs) {
                for c in cursors.iter_mut() {
                    if c.new.is_none() && c.old <= old {
                        c.new = Some(new);
                    }
                }
            }
        }
        self.copied.topic_messages += n;
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.flush_queue()?;
        self.flush_topic()
    }

    /// Pushes what is pending, sets the named cursors and the queues' real configs.
    fn finish(&mut self) -> Result<Copied> {
        self.flush()?;
        for (topic, cursors) in &self.topics {
            if cursors.is_empty() {
                continue;
            }
            let end = self.store.topic_stats(topic)?.last_seq + 1;
            for c in cursors {
                let cursor = Cursor {
                    topic: topic.clone(),
                    next: c.new.unwrap_or(end),
                    name: Some(c.name.clone()),
                };
                self.store.commit_cursor(&cursor).with_context(|| {
                    format!("cannot set cursor {:?} of topic {topic:?}", c.name)
                })?;
            }
        }
        self.restore_configs()?;
        Ok(self.copied)
    }

    /// Gives every queue its real config (with its retention). Also run after an error.
    fn restore_configs(&self) -> Result<()> {
        for (name, config) in &self.queues {
            self.store
                .configure_queue(name, config.clone())
                .with_context(|| format!("cannot configure queue {name:?}"))?;
        }
        Ok(())
    }
}

// --- export ----------------------------------------------------------------------------------

fn export(cli: &Cli, a: &ExportArgs) -> Result<()> {
    let store = open_source(cli, RecoveryPolicy::Refuse)?;
    let out: Box<dyn Write> = match &a.out {
        Some(p) => {
            Box::new(File::create(p).with_context(|| format!("cannot create {}", p.display()))?)
        }
        None => Box::new(io::stdout().lock()),
    };
    let mut out = BufWriter::with_capacity(1 << 16, out);
    let queues = store.queues();
    let topics = store.topics();
    let mut total = 0u64;
    let mut defs = Vec::new();
    for q in &queues {
        let s = store
            .stats(q)
            .with_context(|| format!("cannot read queue {q:?}"))?;
        total += s.messages;
        defs.push(json!({"type": "queue", "name": q, "config": queue_config_json(&s.config)}));
    }
    for t in &topics {
        let s = store
            .topic_stats(t)
            .with_context(|| format!("cannot read topic {t:?}"))?;
        total += s.retained;
        let cursors: Map<String, Value> = s
            .cursors
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        defs.push(json!({
            "type": "topic", "name": t, "config": topic_config_json(&s.config), "cursors": cursors,
        }));
    }
    let pb = progress_bar("exporting", Some(total), false);
    writeln!(
        out,
        "{}",
        json!({
            "spool_export": EXPORT_VERSION,
            "spool_version": env!("CARGO_PKG_VERSION"),
            "store_id": hex_id(store.store_id()),
            "exported_at": now_ms(),
        })
    )?;
    for d in &defs {
        writeln!(out, "{d}")?;
    }
    let (mut messages, mut topic_messages) = (0u64, 0u64);
    for q in &queues {
        let mut after = 0;
        loop {
            let mut page = store
                .messages_page(q, after, PAGE)
                .with_context(|| format!("cannot read queue {q:?} (to copy what is readable of a damaged store, use `spool inspect salvage`)"))?;
            inline_blobs(&store, &mut page)?;
            for m in &page {
                writeln!(out, "{}", dump_message_json(q, m))?;
                after = m.id;
            }
            messages += page.len() as u64;
            pb.inc(page.len() as u64);
            if page.len() < PAGE {
                break;
            }
        }
    }
    for t in &topics {
        let mut cursor = store.cursor_at(t, 1)?;
        while let Some(m) = store
            .topic_next(&mut cursor)
            .with_context(|| format!("cannot read topic {t:?} (to copy what is readable of a damaged store, use `spool inspect salvage`)"))?
        {
            writeln!(out, "{}", dump_topic_message_json(t, &m))?;
            topic_messages += 1;
            pb.inc(1);
        }
    }
    writeln!(
        out,
        "{}",
        json!({
            "type": "end",
            "queues": queues.len(),
            "topics": topics.len(),
            "messages": messages,
            "topic_messages": topic_messages,
        })
    )?;
    out.flush()?;
    drop(out);
    pb.finish_and_clear();
    store.close()?;
    if a.out.is_some() {
        eprintln!(
            "exported {} queues, {} topics, {messages} messages, {topic_messages} topic messages",
            queues.len(),
            topics.len()
        );
    }
    Ok(())
}

// --- import ----------------------------------------------------------------------------------

/// Counts of the lines of each type read, to compare with the end line.
#[derive(Debug, Default)]
struct Seen {
    queues: u64,
    topics: u64,
    messages: u64,
    topic_messages: u64,
}

fn import(cli: &Cli, a: &ImportArgs) -> Result<()> {
    let (input, len): (Box<dyn io::Read>, Option<u64>) = match &a.file {
        Some(p) => {
            let f = File::open(p).with_context(|| format!("cannot open {}", p.display()))?;
            let len = f.metadata().ok().map(|m| m.len());
            (Box::new(f), len)
        }
        None => (Box::new(io::stdin().lock()), None),
    };
    let name = a
        .file
        .as_ref()
        .map_or_else(|| "stdin".to_string(), |p| p.display().to_string());
    let pb = progress_bar("importing", len, true);
    let mut lines = Lines {
        input: BufReader::with_capacity(1 << 16, input),
        buf: Vec::new(),
        n: 0,
        pb: &pb,
    };
    // The header is checked before the store is opened (or created).
    read_header(&mut lines).with_context(|| format!("cannot import {name}"))?;
    let store = cli.open()?;
    let mut copier = Copier::new(&store, "line");
    let result =
        import_lines(&mut lines, &mut copier).with_context(|| format!("cannot import {name}"));
    pb.finish_and_clear();
    let copied = match result {
        Ok(()) => copier.finish(),
        Err(e) => {
            // What was imported stays; its queues get their real configs.
            let _ = copier.flush();
            let _ = copier.restore_configs();
            drop(copier);
            let _ = store.close();
            return Err(e);
        }
    };
    drop(copier);
    let copied = copied?;
    store.close()?;
    println!(
        "imported {} queues, {} topics, {} messages, {} topic messages into {}{}",
        copied.queues,
        copied.topics,
        copied.messages,
        copied.topic_messages,
        cli.dir().display(),
        if copied.expired > 0 {
            format!(
                " ({} messages had expired and were left out)",
                copied.expired
            )
        } else {
            String::new()
        }
    );
    Ok(())
}

/// The lines of an export, numbered from 1.
struct Lines<'a, R> {
    input: R,
    buf: Vec<u8>,
    /// The number of the line last read.
    n: u64,
    pb: &'a ProgressBar,
}

impl<R: BufRead> Lines<'_, R> {
    /// The next line that is not blank, as JSON; `None` at the end.
    fn next(&mut self) -> Result<Option<Value>> {
        loop {
            self.buf.clear();
            let read = self
                .input
                .read_until(b'\n', &mut self.buf)
                .context("reading the input")?;
            if read == 0 {
                return Ok(None);
            }
            self.n += 1;
            self.pb.inc(read as u64);
            let n = self.n;
            let line = std::str::from_utf8(&self.buf)
                .map_err(|_| anyhow!("line {n}: not UTF-8 text (an export is JSON lines)"))?
                .trim();
            if line.is_empty() {
                continue;
            }
            return serde_json::from_str(line)
                .map(Some)
                .with_context(|| format!("line {n}: not a JSON object"));
        }
    }
}

fn read_header<R: BufRead>(lines: &mut Lines<'_, R>) -> Result<()> {
    let Some(v) = lines.next()? else {
        bail!("the input is empty: expected a spool export");
    };
    let n = lines.n;
    match v.get("spool_export").and_then(Value::as_u64) {
        Some(EXPORT_VERSION) => Ok(()),
        Some(other) => bail!(
            "line {n}: export format version {other}; this spool reads version {EXPORT_VERSION}"
        ),
        None => bail!(
            "line {n}: not a spool export (its first line must be the {{\"spool_export\": 1, ...}} header written by `spool inspect export`)"
        ),
    }
}

fn import_lines<R: BufRead>(lines: &mut Lines<'_, R>, copier: &mut Copier<'_>) -> Result<()> {
    let mut seen = Seen::default();
    while let Some(v) = lines.next()? {
        let n = lines.n;
        import_line(&v, n, copier, &mut seen).with_context(|| format!("line {n}"))?;
        if v.get("type").and_then(Value::as_str) == Some("end") {
            if lines.next()?.is_some() {
                bail!("line {}: data after the end line", lines.n);
            }
            return Ok(());
        }
    }
    bail!(
        "the input ends at line {} without the end line ({{\"type\": \"end\", ...}}): it was cut short; what was before it was imported",
        lines.n
    )
}

fn import_line(v: &Value, n: u64, copier: &mut Copier<'_>, seen: &mut Seen) -> Result<()> {
    let f = Fields::new(v, "a line")?;
    let kind = f.str("type")?.ok_or_else(|| {
        anyhow!("no \"type\" field (queue, topic, message, topic_message or end)")
    })?;
    match kind {
        "queue" => {
            f.only(&["type", "name", "config"])?;
            let name = f
                .str("name")?
                .ok_or_else(|| anyhow!("a queue line needs a name"))?;
            let config = match f.get("config") {
                Some(c) => queue_config_of(c)?,
                None => QueueConfig::default(),
            };
            seen.queues += 1;
            copier.define_queue(name, config)
        }
        "topic" => {
            f.only(&["type", "name", "config", "cursors"])?;
            let name = f
                .str("name")?
                .ok_or_else(|| anyhow!("a topic line needs a name"))?;
            let config = match f.get("config") {
                Some(c) => topic_config_of(c)?,
                None => TopicConfig::default(),
            };
            let mut cursors = Vec::new();
            if let Some(c) = f.get("cursors") {
                let c = c
                    .as_object()
                    .ok_or_else(|| anyhow!("cursors must be an object of sequence numbers"))?;
                for (k, v) in c {
                    let seq = v
                        .as_u64()
                        .ok_or_else(|| anyhow!("cursor {k:?} must be a sequence number"))?;
                    cursors.push((k.clone(), seq));
                }
            }
            seen.topics += 1;
            copier.define_topic(name, config, cursors)
        }
        "message" => {
            let queue = f
                .str("queue")?
                .ok_or_else(|| anyhow!("a message line needs a queue"))?;
            let priority = match f.u64("priority")? {
                None => 0,
                Some(p) => u8::try_from(p).map_err(|_| anyhow!("priority {p} is not 0-255"))?,
            };
            let visible_at = match f.str("state")? {
                None | Some("ready" | "leased") => None,
                Some("delayed") => f.u64("visible_at")?,
                Some(s) => bail!("state {s:?} is not ready, delayed or leased"),
            };
            let m = Msg {
                priority,
                subject: f.str("subject")?.map(str::to_string),
                headers: headers_of(&f)?,
                payload: payload_of(&f)?,
                expires_at: f.u64("expires_at")?,
                visible_at,
            };
            seen.messages += 1;
            copier.message(queue, m, n)
        }
        "topic_message" => {
            let topic = f
                .str("topic")?
                .ok_or_else(|| anyhow!("a topic_message line needs a topic"))?;
            let payload = payload_of(&f)?;
            seen.topic_messages += 1;
            copier.topic_message(topic, f.u64("seq")?, payload, n)
        }
        "end" => {
            let expect = [
                ("queues", seen.queues),
                ("topics", seen.topics),
                ("messages", seen.messages),
                ("topic_messages", seen.topic_messages),
            ];
            for (k, got) in expect {
                if let Some(want) = f.u64(k)? {
                    if want != got {
                        bail!(
                            "the end line says {want} {k} but {got} were read: the export is incomplete or was edited (what was read was imported)"
                        );
                    }
                }
            }
            Ok(())
        }
        other => bail!(
            "unknown line type {other:?} (expected queue, topic, message, topic_message or end)"
        ),
    }
}

// --- salvage ---------------------------------------------------------------------------------

fn is_damaged(e: &EngineError) -> Option<(u64, u64)> {
    match e {
        EngineError::DamagedRecord {
            segment, offset, ..
        } => Some((*segment, *offset)),
        _ => None,
    }
}

/// The id of the damaged message of `queue`: the first one after `after`, whose record (at
/// `at`) fails its checksum. `messages_page(x, 1)` fails on that record exactly while
/// `after <= x < id`, so the id is found by exponential, then binary, search (a few dozen
/// reads of one message).
fn find_damaged(store: &Store, queue: &str, after: u64, at: (u64, u64)) -> Result<u64> {
    let same = |x: u64| -> Result<bool> {
        match store.messages_page(queue, x, 1) {
            Ok(_) => Ok(false),
            Err(e) if is_damaged(&e).is_some() => Ok(is_damaged(&e) == Some(at)),
            Err(e) => Err(anyhow::Error::new(e).context(format!("cannot read queue {queue:?}"))),
        }
    };
    let mut lo = after;
    let mut step = 1u64;
    let mut hi = after.saturating_add(step);
    while same(hi)? {
        if hi == u64::MAX {
            bail!("cannot find the id of the damaged message of queue {queue:?} after id {after}");
        }
        lo = hi;
        step = step.saturating_mul(2);
        hi = after.saturating_add(step);
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if same(mid)? {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(hi)
}

/// Reads every message of `queue` in id order, handing each readable one to `f`. A page that
/// fails on a damaged record is read again one message at a time; a damaged message is found
/// by id ([`find_damaged`]) and confirmed with `Store::get`. Returns the ids of the unreadable
/// messages.
fn salvage_queue(
    store: &Store,
    queue: &str,
    mut f: impl FnMut(Message) -> Result<()>,
) -> Result<Vec<u64>> {
    let mut after = 0u64;
    let mut bad = Vec::new();
    // Messages still to read one by one after a page failed.
    let mut single = 0usize;
    loop {
        let n = if single > 0 { 1 } else { PAGE };
        match store.messages_page(queue, after, n) {
            Ok(mut page) => {
                let len = page.len();
                inline_blobs(store, &mut page)?;
                for m in page {
                    after = m.id;
                    f(m)?;
                }
                single = single.saturating_sub(len);
                if len < n {
                    break;
                }
            }
            Err(e) => {
                let Some(at) = is_damaged(&e) else {
                    return Err(
                        anyhow::Error::new(e).context(format!("cannot read queue {queue:?}"))
                    );
                };
                if single == 0 {
                    single = PAGE;
                    continue;
                }
                let id = find_damaged(store, queue, after, at)?;
                match store.get(queue, id) {
                    Ok(m) => f(m)?,
                    Err(e) if is_damaged(&e).is_some() => bad.push(id),
                    Err(EngineError::NotFound { .. }) => {}
                    Err(e) => {
                        return Err(
                            anyhow::Error::new(e).context(format!("cannot read queue {queue:?}"))
                        )
                    }
                }
                after = id;
                single -= 1;
            }
        }
    }
    Ok(bad)
}

/// Reads every retained message of a topic, handing each readable one to `f`. Returns the
/// sequence numbers of the unreadable ones.
fn salvage_topic(
    store: &Store,
    topic: &str,
    mut f: impl FnMut(spool_engine::TopicMessage) -> Result<()>,
) -> Result<Vec<u64>> {
    let mut bad = Vec::new();
    let mut cursor = store.cursor_at(topic, 1)?;
    loop {
        match store.topic_next(&mut cursor) {
            Ok(Some(m)) => f(m)?,
            Ok(None) => break,
            Err(e) if is_damaged(&e).is_some() => {
                // The message read was the oldest retained at or after the cursor.
                let s = store.topic_stats(topic)?;
                let front = (s.last_seq + 1).saturating_sub(s.retained);
                let seq = cursor.next.max(front);
                bad.push(seq);
                cursor.next = seq + 1;
                if cursor.next > s.last_seq {
                    break;
                }
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("cannot read topic {topic:?}")))
            }
        }
    }
    Ok(bad)
}

fn salvage(cli: &Cli, a: &SalvageArgs) -> Result<()> {
    let src_dir = source_dir(cli)?;
    let dest = &a.dest;
    if dest.join("FORMAT").exists() {
        bail!(
            "{} already holds a spool store: salvage writes into a new or empty directory",
            dest.display()
        );
    }
    if let (Ok(s), Ok(d)) = (src_dir.canonicalize(), dest.canonicalize()) {
        if s == d {
            bail!("the destination is the source store: give another directory");
        }
    }
    let src = open_source(cli, RecoveryPolicy::Skip)?;
    let dst = Store::open(dest, Options::default())
        .with_context(|| format!("cannot create the store in {}", dest.display()))?;
    let queues = src.queues();
    let topics = src.topics();
    let mut total = 0u64;
    let mut copier = Copier::new(&dst, "message");
    for q in &queues {
        let s = src
            .stats(q)
            .with_context(|| format!("cannot read queue {q:?}"))?;
        total += s.messages;
        copier.define_queue(q, s.config)?;
    }
    for t in &topics {
        let s = src
            .topic_stats(t)
            .with_context(|| format!("cannot read topic {t:?}"))?;
        total += s.retained;
        copier.define_topic(t, s.config, s.cursors)?;
    }
    let pb = progress_bar("salvaging", Some(total), false);
    let mut unreadable: Vec<String> = Vec::new();
    let mut n_bad = 0u64;
    let mut count = 0u64;
    let result = (|| -> Result<()> {
        for q in &queues {
            let bad = salvage_queue(&src, q, |m| {
                count += 1;
                pb.inc(1);
                copier.message(q, Msg::of(m), count)
            })?;
            if !bad.is_empty() {
                n_bad += bad.len() as u64;
                pb.inc(bad.len() as u64);
                unreadable.push(format!("queue {q:?}: ids {}", list(&bad)));
            }
        }
        for t in &topics {
            let bad = salvage_topic(&src, t, |m| {
                count += 1;
                pb.inc(1);
                copier.topic_message(t, Some(m.seq), m.payload, count)
            })?;
            if !bad.is_empty() {
                n_bad += bad.len() as u64;
                pb.inc(bad.len() as u64);
                unreadable.push(format!("topic {t:?}: sequence numbers {}", list(&bad)));
            }
        }
        Ok(())
    })();
    pb.finish_and_clear();
    if let Err(e) = result {
        let _ = copier.flush();
        let _ = copier.restore_configs();
        return Err(e);
    }
    let copied = copier.finish()?;
    drop(copier);
    let report = src.recovery_report().clone();
    dst.close()
        .with_context(|| format!("cannot close the store in {}", dest.display()))?;
    src.close()?;
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "salvaged {} into {}: {} queues, {} topics; {} messages and {} topic messages copied; {n_bad} unreadable",
        src_dir.display(),
        dest.display(),
        copied.queues,
        copied.topics,
        copied.messages,
        copied.topic_messages
    )?;
    for u in &unreadable {
        writeln!(out, "unreadable (record fails its checksum): {u}")?;
    }
    if copied.expired > 0 {
        writeln!(
            out,
            "expired before they could be copied (not copied): {}",
            copied.expired
        )?;
    }
    if report.damaged.is_empty() {
        writeln!(out, "recovery of the source skipped no damage")?;
    } else {
        writeln!(
            out,
            "recovery of the source skipped {} damaged range(s) of its log (what was written in them is lost: messages pushed there are missing, acks there are undone):",
            report.damaged.len()
        )?;
        for d in &report.damaged {
            writeln!(out, "  {d}")?;
        }
    }
    Ok(())
}

/// The first few numbers of a list, for a one-line report.
fn list(v: &[u64]) -> String {
    const SHOWN: usize = 20;
    let mut s = v
        .iter()
        .take(SHOWN)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if v.len() > SHOWN {
        let _ = write!(s, " and {} more", v.len() - SHOWN);
    }
    s
}
