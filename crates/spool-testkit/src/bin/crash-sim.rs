//! `crash-sim`: long runs of the seeded crash simulation (`spool_testkit::crash`).
//!
//! ```text
//! cargo run --release -p spool-testkit --bin crash-sim -- --seeds 1000000 --start 0
//! cargo run --release -p spool-testkit --bin crash-sim -- --seed 1234      # one seed, with its trace
//! cargo run --release -p spool-testkit --bin crash-sim -- --seeds 20000
//! ```
//!
//! `--lenient` turns off the checks listed in `crash::Settings` (on by default). The exit code
//! is 0 when every seed passed, 1 when one failed, 2 on bad arguments.

use std::process::ExitCode;

use spool_testkit::crash::{run_seed_with, run_seeds, Settings, DEFAULT_SEEDS};

const USAGE: &str = "usage: crash-sim [--seeds N] [--start N] [--threads N] [--lenient] [--seed N]";

struct Args {
    seeds: u64,
    start: u64,
    threads: usize,
    lenient: bool,
    one: Option<u64>,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        seeds: DEFAULT_SEEDS,
        start: 0,
        threads: std::thread::available_parallelism().map_or(2, std::num::NonZero::get),
        lenient: false,
        one: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut number = |name: &str| -> Result<u64, String> {
            let v = it.next().ok_or_else(|| format!("{name} needs a value"))?;
            v.parse()
                .map_err(|_| format!("{name} {v:?} is not a number"))
        };
        match flag.as_str() {
            "--seeds" => args.seeds = number("--seeds")?,
            "--start" => args.start = number("--start")?,
            "--threads" => args.threads = number("--threads")?.max(1) as usize,
            "--seed" => args.one = Some(number("--seed")?),
            "--lenient" => args.lenient = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("crash-sim: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let settings = if args.lenient {
        Settings::lenient()
    } else {
        Settings::strict()
    };
    if let Some(seed) = args.one {
        return match run_seed_with(seed, settings) {
            Ok(report) => {
                println!("seed {seed} passed: {report:?}");
                ExitCode::SUCCESS
            }
            Err(failure) => {
                eprintln!("{failure}");
                ExitCode::FAILURE
            }
        };
    }
    let total = args.seeds;
    let summary = run_seeds(args.start, total, args.threads, settings, &|done| {
        if done % 10_000 == 0 {
            eprintln!("crash-sim: {done}/{total} seeds");
        }
    });
    for f in &summary.failures {
        eprintln!("{f}\n");
    }
    println!(
        "crash-sim: seeds {}..{}: {summary}",
        args.start,
        args.start + total
    );
    if summary.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
