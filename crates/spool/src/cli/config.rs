//! `spool config check FILE` and `spool config example`: the agent's configuration file
//! (`crate::config`), checked and explained without starting anything.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use crate::config::{example, AgentConfig, Environment};

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Load a configuration file with the SPOOL_... environment laid over it, and validate it
    #[command(
        after_help = "Prints `ok: FILE` and a summary of the effective configuration (secrets masked), or every problem found, each with its key, value, what is allowed and where it came from. Exits with 0 when valid, 7 when not.\n\nExamples:\n  spool config check /etc/spool/agent.toml\n  SPOOL_UPSTREAM__HOST=broker.lan spool config check agent.toml --json"
    )]
    Check(CheckArgs),
    /// Print an example agent.toml: every key, its default and a one-line explanation
    #[command(after_help = "Example:\n  spool config example > /etc/spool/agent.toml")]
    Example,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The configuration file
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Print the effective configuration as JSON (secrets masked) instead of a summary
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: &ConfigCommand) -> Result<()> {
    match cmd {
        ConfigCommand::Check(a) => check(a),
        ConfigCommand::Example => {
            print!("{}", example());
            Ok(())
        }
    }
}

fn check(a: &CheckArgs) -> Result<()> {
    let env = Environment::from_process();
    let cfg = AgentConfig::load(&a.file, &env)?;
    if a.json {
        let json =
            serde_json::to_string_pretty(&cfg).context("writing the configuration as JSON")?;
        println!("{json}");
        return Ok(());
    }
    println!("ok: {}", a.file.display());
    print!("{}", cfg.summary());
    let overrides: Vec<&str> = env.overrides().collect();
    if !overrides.is_empty() {
        println!("environment:   {}", overrides.join(", "));
    }
    Ok(())
}
