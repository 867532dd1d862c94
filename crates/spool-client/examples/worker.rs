//! A worker: leases jobs (waiting for them server-side), processes each, acks it when done or
//! nacks it (back in the queue after a pause) when processing fails. Stops on Ctrl-C after
//! the batch in hand.
//!
//! ```text
//! spool serve &
//! redis-cli -p 7411 QPUSH jobs "hello"
//! redis-cli -p 7411 QPUSH jobs "fail: not today"
//! cargo run -p spool-client --example worker -- 127.0.0.1:7411 jobs
//! ```

use std::time::Duration;

use spool_client::{Client, Error, LeaseOptions, Message, NackOptions};

/// Jobs leased per request.
const BATCH: u32 = 16;
/// How long a job may take before another worker gets it.
const VISIBILITY: Duration = Duration::from_secs(60);
/// How long each lease request waits at the server for a job (at most 60 s).
const WAIT: Duration = Duration::from_secs(20);
/// Pause after a connection error before trying again.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// The work itself: here, a payload starting with `fail` fails. (Real work that waits on
/// I/O would be `async`.)
fn process(msg: &Message) -> Result<(), String> {
    let text = String::from_utf8_lossy(&msg.payload);
    if text.starts_with("fail") {
        return Err(format!("cannot process {text:?}"));
    }
    println!("job {} (delivery {}): {text}", msg.id, msg.receive_count);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7411".to_owned());
    let queue = args.next().unwrap_or_else(|| "jobs".to_owned());
    let client = Client::connect(&addr).await?;
    println!("leasing from {queue} at {addr}; Ctrl-C to stop");

    let lease = LeaseOptions::default()
        .count(BATCH)
        .visibility(VISIBILITY)
        .wait(WAIT);
    loop {
        let batch = tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            r = client.lease(&queue, lease) => r,
        };
        let batch = match batch {
            Ok(b) => b,
            // The server went away: the client reconnects on the next request.
            Err(e @ (Error::Disconnected { .. } | Error::Io { .. } | Error::Timeout { .. })) => {
                eprintln!("{e}; retrying");
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        for msg in batch {
            let Some(receipt) = msg.receipt else { continue };
            let outcome = match process(&msg) {
                Ok(()) => client.ack(&queue, receipt).await,
                Err(why) => {
                    eprintln!("job {}: {why}; back in the queue in 5 s", msg.id);
                    let later = NackOptions {
                        delay: Some(Duration::from_secs(5)),
                        priority: None,
                    };
                    client.nack(&queue, receipt, later).await
                }
            };
            match outcome {
                // Done; or it took longer than the visibility timeout and someone else has it
                // now; or already acked by a retry. Either way nothing is left to do here.
                Ok(()) | Err(Error::LeaseLost(_) | Error::NotFound(_)) => {}
                Err(e) => eprintln!("job {}: {e}", msg.id),
            }
        }
    }
    println!("stopped");
    Ok(())
}
