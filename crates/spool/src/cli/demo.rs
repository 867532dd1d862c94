//! `spool demo`: the main job on a fresh machine. It pushes messages through a store in a local
//! directory, leases and acks them, shows what a crash-safe queue does, and prints what it did.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use spool_engine::{Push, QueueConfig};

use super::Cli;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many messages to push
    #[arg(long, default_value_t = 10_000)]
    pub messages: usize,
}

pub fn run(cli: &Cli, a: &DemoArgs) -> Result<()> {
    let dir = cli.dir();
    let store = cli.open()?;
    let mut out = io::stdout().lock();
    writeln!(out, "spool demo: store in {}", dir.display())?;
    let report = store.recovery_report();
    writeln!(
        out,
        "  opened: replayed {} frames from {} segment(s) in {} ms",
        report.frames, report.segments, report.duration_ms
    )?;
    let queue = "demo.jobs";
    store
        .create_queue(
            queue,
            QueueConfig {
                max_receives: 3,
                ..QueueConfig::default()
            },
        )
        .or_else(|e| match e {
            spool_engine::Error::Exists { .. } => Ok(false),
            e => Err(e),
        })?;
    let before = store.stats(queue)?.messages;

    let started = Instant::now();
    let mut pushed = 0;
    while pushed < a.messages {
        let n = (a.messages - pushed).min(1000);
        let batch = (0..n)
            .map(|i| Push::new(format!("job {}", pushed + i)).priority(((pushed + i) % 3) as u8))
            .collect();
        store.push_batch(queue, batch).context("pushing")?;
        pushed += n;
    }
    let push_time = started.elapsed();
    writeln!(
        out,
        "  pushed {pushed} messages in batches of 1000, each batch durable (fdatasync) before it returned: {:.0} msg/s",
        pushed as f64 / push_time.as_secs_f64()
    )?;

    let started = Instant::now();
    let mut acked = 0;
    let mut first = None;
    loop {
        let msgs = store.lease(queue, 1000, Some(Duration::from_secs(30)))?;
        if msgs.is_empty() {
            break;
        }
        first.get_or_insert_with(|| msgs[0].clone());
        let receipts: Vec<_> = msgs.iter().filter_map(|m| m.receipt).collect();
        for r in store.ack_batch(queue, &receipts)? {
            r?;
            acked += 1;
        }
    }
    let lease_time = started.elapsed();
    writeln!(
        out,
        "  leased and acked {acked} messages (highest priority first): {:.0} msg/s",
        acked as f64 / lease_time.as_secs_f64()
    )?;
    if let Some(m) = first {
        writeln!(
            out,
            "  first delivered: id {} priority {} payload {:?}",
            m.id,
            m.priority,
            String::from_utf8_lossy(&m.payload)
        )?;
    }
    let s = store.stats(queue)?;
    writeln!(
        out,
        "  queue {queue}: {} left ({} were there before), totals: pushed {} acked {}",
        s.messages, before, s.counters.pushed, s.counters.acked
    )?;
    // The binary as it was started (after `cargo run`, `spool` is not on the PATH).
    let me = std::env::args()
        .next()
        .unwrap_or_else(|| "spool".to_string());
    writeln!(
        out,
        "  try: {me} --dir {d} push {queue} hello && {me} --dir {d} lease {queue} --json",
        d = dir.display()
    )?;
    store.close()?;
    Ok(())
}
