//! Queue commands: push, lease, ack, nack, pop, peek, stats, queues.

use std::io::{self, BufRead, Write};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use spool_engine::{Push, Receipt};

use super::output::{print_messages, stats_json};
use super::{parse_duration, Cli};

/// Lines pushed per batch by `push --lines` at most (each batch is one atomic, durable write).
const LINES_BATCH_MAX: usize = 1000;

#[derive(Debug, Args)]
pub struct PushArgs {
    /// Queue name
    pub queue: String,
    /// Payload; read from stdin when absent
    pub payload: Option<String>,
    /// One message per stdin line; prints each id as soon as it is durable
    #[arg(long, conflicts_with = "payload")]
    pub lines: bool,
    /// Priority 0-255, higher is served first
    #[arg(long, default_value_t = 0)]
    pub priority: u8,
    /// Not visible before this delay (e.g. 30s)
    #[arg(long, value_parser = parse_duration)]
    pub delay: Option<Duration>,
    /// Dropped when not consumed within this time (e.g. 1h)
    #[arg(long, value_parser = parse_duration)]
    pub ttl: Option<Duration>,
    /// Subject (e.g. an MQTT topic)
    #[arg(long)]
    pub subject: Option<String>,
    /// Stream the payload from this file (any size up to the queue's max_payload_bytes, at
    /// most 256 MiB; never held whole in memory: it goes to a blob file)
    #[arg(long, value_name = "PATH", conflicts_with_all = ["payload", "lines", "stream"])]
    pub file: Option<std::path::PathBuf>,
    /// Stream the payload from stdin into a blob file instead of reading it into memory
    #[arg(long, conflicts_with_all = ["payload", "lines"])]
    pub stream: bool,
}

impl PushArgs {
    fn message(&self, payload: Vec<u8>) -> Push {
        let mut p = Push::new(payload).priority(self.priority);
        p.delay = self.delay;
        p.ttl = self.ttl;
        p.subject.clone_from(&self.subject);
        p
    }
}

pub fn push(cli: &Cli, a: &PushArgs) -> Result<()> {
    let store = cli.open()?;
    let stdout = io::stdout();
    let mut out = stdout.lock();
    if a.lines {
        let mut input = io::BufReader::with_capacity(1 << 16, io::stdin().lock());
        let mut line = Vec::new();
        loop {
            // Block for one line, then take whatever more is already buffered: a fast producer
            // gets big batches (one fdatasync each), a slow one gets each line pushed at once.
            line.clear();
            if input
                .read_until(b'\n', &mut line)
                .context("reading stdin")?
                == 0
            {
                break;
            }
            let mut batch = vec![a.message(trim_newline(&line).to_vec())];
            while batch.len() < LINES_BATCH_MAX && input.buffer().contains(&b'\n') {
                line.clear();
                input
                    .read_until(b'\n', &mut line)
                    .context("reading stdin")?;
                batch.push(a.message(trim_newline(&line).to_vec()));
            }
            let ids = store
                .push_batch(&a.queue, batch)
                .with_context(|| format!("cannot push to queue {:?}", a.queue))?;
            for id in ids {
                writeln!(out, "{id}")?;
            }
            out.flush()?;
        }
        store.close()?;
        return Ok(());
    }
    let id = if let Some(path) = &a.file {
        let mut f = std::fs::File::open(path)
            .with_context(|| format!("cannot read the payload file {}", path.display()))?;
        store
            .push_stream(&a.queue, a.message(Vec::new()), &mut f)
            .with_context(|| format!("cannot push to queue {:?}", a.queue))?
    } else if a.stream {
        store
            .push_stream(&a.queue, a.message(Vec::new()), &mut io::stdin().lock())
            .with_context(|| format!("cannot push to queue {:?}", a.queue))?
    } else {
        let payload = super::payload_or_stdin(a.payload.as_deref())?;
        store
            .push(&a.queue, a.message(payload))
            .with_context(|| format!("cannot push to queue {:?}", a.queue))?
    };
    writeln!(out, "{id}")?;
    store.close()?;
    Ok(())
}

fn trim_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[derive(Debug, Args)]
pub struct LeaseArgs {
    /// Queue name
    pub queue: String,
    /// How many messages at most
    #[arg(long, short = 'n', default_value_t = 1)]
    pub count: usize,
    /// How long leased messages stay hidden [default: the queue's, 30s]
    #[arg(long, value_parser = parse_duration)]
    pub visibility: Option<Duration>,
    /// Wait up to this long for a message when none is visible
    #[arg(long, value_parser = parse_duration)]
    pub wait: Option<Duration>,
    /// One JSON object per message
    #[arg(long)]
    pub json: bool,
    /// Write the message's payload to this file, streamed (a large payload is never whole in
    /// memory); with --count 1
    #[arg(long, value_name = "PATH")]
    pub payload_to: Option<std::path::PathBuf>,
}

pub fn lease(cli: &Cli, a: &LeaseArgs) -> Result<()> {
    check_payload_to(a.payload_to.as_deref(), a.count)?;
    let store = cli.open_existing()?;
    let msgs = match a.wait {
        Some(w) => store.lease_wait(&a.queue, a.count, a.visibility, w),
        None => store.lease(&a.queue, a.count, a.visibility),
    }
    .with_context(|| format!("cannot lease from queue {:?}", a.queue))?;
    write_payload_to(&store, &msgs, a.payload_to.as_deref())?;
    print_messages(&mut io::stdout().lock(), &msgs, a.json)?;
    store.close()?;
    Ok(())
}

#[derive(Debug, Args)]
pub struct AckArgs {
    /// Queue name
    pub queue: String,
    /// Receipts as printed by lease (ID:GENERATION)
    #[arg(required = true)]
    pub receipts: Vec<String>,
}

fn parse_receipts(v: &[String]) -> Result<Vec<Receipt>> {
    v.iter()
        .map(|s| s.parse::<Receipt>().map_err(anyhow::Error::from))
        .collect()
}

pub fn ack(cli: &Cli, a: &AckArgs) -> Result<()> {
    let receipts = parse_receipts(&a.receipts)?;
    let store = cli.open_existing()?;
    let results = store
        .ack_batch(&a.queue, &receipts)
        .with_context(|| format!("cannot ack in queue {:?}", a.queue))?;
    store.close()?;
    let mut failed = Vec::new();
    for (r, res) in receipts.iter().zip(results) {
        if let Err(e) = res {
            if receipts.len() == 1 {
                // Keep the engine error in the chain: it decides the exit code.
                return Err(anyhow::Error::new(e).context(format!("cannot ack {r}")));
            }
            failed.push(format!("{r}: {e}"));
        }
    }
    if failed.is_empty() {
        return Ok(());
    }
    bail!(
        "{} of {} receipts were not acked (the others were):\n  {}",
        failed.len(),
        receipts.len(),
        failed.join("\n  ")
    )
}

#[derive(Debug, Args)]
pub struct NackArgs {
    /// Queue name
    pub queue: String,
    /// Receipt as printed by lease (ID:GENERATION)
    pub receipt: String,
    /// Visible again only after this delay
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub delay: Duration,
}

pub fn nack(cli: &Cli, a: &NackArgs) -> Result<()> {
    let receipt: Receipt = a.receipt.parse()?;
    let store = cli.open_existing()?;
    store
        .nack(&a.queue, receipt, a.delay, None)
        .with_context(|| format!("cannot nack in queue {:?}", a.queue))?;
    store.close()?;
    Ok(())
}

#[derive(Debug, Args)]
pub struct ReadArgs {
    /// Queue name
    pub queue: String,
    /// How many messages at most
    #[arg(long, short = 'n', default_value_t = 1)]
    pub count: usize,
    /// One JSON object per message
    #[arg(long)]
    pub json: bool,
    /// Write the message's payload to this file, streamed (a large payload is never whole in
    /// memory); with --count 1
    #[arg(long, value_name = "PATH")]
    pub payload_to: Option<std::path::PathBuf>,
}

/// Checks `--payload-to` against `--count` before anything changes.
fn check_payload_to(payload_to: Option<&std::path::Path>, count: usize) -> Result<()> {
    if payload_to.is_some() && count != 1 {
        anyhow::bail!("--payload-to writes one message's payload: use it with --count 1");
    }
    Ok(())
}

/// Streams the payload of the (single) message to `--payload-to`.
fn write_payload_to(
    store: &spool_engine::Store,
    msgs: &[spool_engine::Message],
    payload_to: Option<&std::path::Path>,
) -> Result<()> {
    let (Some(path), Some(m)) = (payload_to, msgs.first()) else {
        return Ok(());
    };
    let mut f =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut r = store
        .open_payload(m)
        .with_context(|| format!("cannot read the payload of message {}", m.id))?;
    io::copy(&mut r, &mut f).with_context(|| format!("writing {}", path.display()))?;
    f.sync_all()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

pub fn pop(cli: &Cli, a: &ReadArgs) -> Result<()> {
    check_payload_to(a.payload_to.as_deref(), a.count)?;
    let store = cli.open_existing()?;
    let msgs = store
        .pop(&a.queue, a.count)
        .with_context(|| format!("cannot pop from queue {:?}", a.queue))?;
    write_payload_to(&store, &msgs, a.payload_to.as_deref())?;
    print_messages(&mut io::stdout().lock(), &msgs, a.json)?;
    store.close()?;
    Ok(())
}

pub fn peek(cli: &Cli, a: &ReadArgs) -> Result<()> {
    check_payload_to(a.payload_to.as_deref(), a.count)?;
    let store = cli.open_existing()?;
    let msgs = store
        .peek(&a.queue, a.count)
        .with_context(|| format!("cannot peek into queue {:?}", a.queue))?;
    write_payload_to(&store, &msgs, a.payload_to.as_deref())?;
    print_messages(&mut io::stdout().lock(), &msgs, a.json)?;
    store.close()?;
    Ok(())
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Queue name [default: all queues]
    pub queue: Option<String>,
    /// One JSON object per queue
    #[arg(long)]
    pub json: bool,
}

pub fn stats(cli: &Cli, a: &StatsArgs) -> Result<()> {
    let store = cli.open_existing()?;
    let names = match &a.queue {
        Some(q) => vec![q.clone()],
        None => store.queues(),
    };
    let mut out = io::stdout().lock();
    if !a.json {
        writeln!(
            out,
            "{:<32} {:>10} {:>8} {:>8} {:>8} {:>12} {:>10}",
            "QUEUE", "VISIBLE", "DELAYED", "LEASED", "DEAD", "BYTES", "OLDEST"
        )?;
    }
    for name in names {
        let s = store
            .stats(&name)
            .with_context(|| format!("cannot read the stats of queue {name:?}"))?;
        if a.json {
            writeln!(out, "{}", stats_json(&s))?;
        } else {
            writeln!(
                out,
                "{:<32} {:>10} {:>8} {:>8} {:>8} {:>12} {:>10}",
                s.name,
                s.visible,
                s.delayed,
                s.leased,
                s.dead,
                s.bytes,
                humantime::format_duration(Duration::from_secs(s.oldest_age_ms / 1000))
            )?;
        }
    }
    store.close()?;
    Ok(())
}

#[derive(Debug, Args)]
pub struct QueuesArgs {
    /// A JSON array of names
    #[arg(long)]
    pub json: bool,
}

pub fn queues(cli: &Cli, a: &QueuesArgs) -> Result<()> {
    let store = cli.open_existing()?;
    let names = store.queues();
    let mut out = io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string(&names)?)?;
    } else {
        for n in names {
            writeln!(out, "{n}")?;
        }
    }
    store.close()?;
    Ok(())
}
