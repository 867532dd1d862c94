//! Topic commands: publish and read.

use std::io::{self, Write};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use super::output::{payload_text, topic_message_json};
use super::{parse_duration, Cli};

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Publish a message; prints its sequence number once durable
    #[command(
        after_help = "Examples:\n  spool topic publish greetings 'hello world'\n  date | spool topic publish clock"
    )]
    Publish(PublishArgs),
    /// Read retained messages from a sequence number on (default: the oldest retained)
    #[command(
        after_help = "Examples:\n  spool topic read greetings --count 10\n  spool topic read greetings --from 42 --json\n  spool topic read greetings --from 43 --wait 30s"
    )]
    Read(ReadArgs),
    /// List topics
    List,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Topic name
    pub topic: String,
    /// Payload; read from stdin when absent
    pub payload: Option<String>,
}

#[derive(Debug, Args)]
pub struct ReadArgs {
    /// Topic name
    pub topic: String,
    /// First sequence number to read
    #[arg(long, value_name = "SEQ")]
    pub from: Option<u64>,
    /// How many messages at most
    #[arg(long, short = 'n', default_value_t = 100)]
    pub count: usize,
    /// When nothing is there, wait up to this long for the next message
    #[arg(long, value_parser = parse_duration)]
    pub wait: Option<Duration>,
    /// One JSON object per message
    #[arg(long)]
    pub json: bool,
}

pub fn run(cli: &Cli, c: &TopicCommand) -> Result<()> {
    let store = match c {
        TopicCommand::Publish(_) => cli.open()?,
        TopicCommand::Read(_) | TopicCommand::List => cli.open_existing()?,
    };
    let mut out = io::stdout().lock();
    match c {
        TopicCommand::Publish(a) => {
            let payload = super::payload_or_stdin(a.payload.as_deref())?;
            let seq = store
                .publish(&a.topic, payload)
                .with_context(|| format!("cannot publish to topic {:?}", a.topic))?;
            writeln!(out, "{seq}")?;
        }
        TopicCommand::Read(a) => {
            let mut cursor = store.cursor_at(&a.topic, a.from.unwrap_or(1))?;
            let mut n = 0;
            while n < a.count {
                let m = match (n, a.wait) {
                    (0, Some(w)) => store.topic_wait(&mut cursor, w)?,
                    _ => store.topic_next(&mut cursor)?,
                };
                let Some(m) = m else { break };
                if a.json {
                    writeln!(out, "{}", topic_message_json(&a.topic, &m))?;
                } else {
                    writeln!(out, "{}\t{}", m.seq, payload_text(&m.payload))?;
                }
                n += 1;
            }
        }
        TopicCommand::List => {
            for t in store.topics() {
                writeln!(out, "{t}")?;
            }
        }
    }
    store.close()?;
    Ok(())
}
