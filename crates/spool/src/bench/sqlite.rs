//! SQLite baseline: a message queue the way the peer tools (psmq, persist-queue, litequeue...)
//! build one, through rusqlite with the bundled SQLite, `journal_mode=WAL` and
//! `synchronous=FULL` (every commit is fdatasync'ed), one table with an index on
//! `(queue, priority DESC, id)`. The scenarios mirror the engine's: batched and single-message
//! pushes, many concurrent producers (each with its own connection, serialized by SQLite's write
//! lock and `busy_timeout`), large payloads, and batched lease + ack.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, ensure, Context as _, Result};
use rusqlite::{params, Connection, TransactionBehavior};

use super::Throughput;

/// Queue name used by every scenario.
pub const QUEUE: &str = "bench";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    queue         TEXT NOT NULL,
    priority      INT NOT NULL DEFAULT 0,
    payload       BLOB NOT NULL,
    enqueued_at   INT NOT NULL,
    visible_at    INT NOT NULL,
    receive_count INT NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_by_queue ON messages (queue, priority DESC, id);
";

const INSERT: &str = "INSERT INTO messages (queue, priority, payload, enqueued_at, visible_at) \
                      VALUES (?1, 0, ?2, ?3, ?3)";

const LEASE: &str = "UPDATE messages SET visible_at = ?1, receive_count = receive_count + 1 \
                     WHERE id IN (SELECT id FROM messages WHERE queue = ?2 AND visible_at <= ?3 \
                     ORDER BY priority DESC, id LIMIT ?4) RETURNING id, payload";

const ACK: &str = "DELETE FROM messages WHERE id = ?1";

/// Lease duration set on leased messages.
const LEASE_MS: i64 = 30_000;

/// Milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Open (creating if needed) a queue database at `path`: WAL, synchronous=FULL, schema.
pub fn open(path: &Path) -> Result<Connection> {
    let conn =
        Connection::open(path).with_context(|| format!("opening sqlite {}", path.display()))?;
    conn.busy_timeout(Duration::from_secs(60))?;
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    ensure!(
        mode.eq_ignore_ascii_case("wal"),
        "sqlite refused WAL mode (got {mode})"
    );
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

/// Remove a database and its `-wal`/`-shm` companions (missing files are fine).
pub fn remove(path: &Path) -> Result<()> {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", Path::new(&p).display()))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Insert `count` messages with `payload` in one transaction.
pub fn push_batch(conn: &mut Connection, payload: &[u8], count: usize) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let now = now_ms();
        let mut stmt = tx.prepare_cached(INSERT)?;
        for _ in 0..count {
            stmt.execute(params![QUEUE, payload, now])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Push batches of `batch` messages (one transaction each) for `duration` (at least one batch).
pub fn push_batched(
    conn: &mut Connection,
    payload: &[u8],
    batch: usize,
    duration: Duration,
) -> Result<Throughput> {
    let batch = batch.max(1);
    let mut ops = 0u64;
    let start = Instant::now();
    loop {
        push_batch(conn, payload, batch)?;
        ops += batch as u64;
        if start.elapsed() >= duration {
            break;
        }
    }
    Ok(Throughput::new(
        ops,
        ops * payload.len() as u64,
        start.elapsed(),
    ))
}

/// Push one message per transaction for `duration` (at least one).
pub fn push_single(
    conn: &mut Connection,
    payload: &[u8],
    duration: Duration,
) -> Result<Throughput> {
    push_batched(conn, payload, 1, duration)
}

/// How concurrent producers reach the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Producers {
    /// Each thread has its own connection; SQLite's write lock serializes them and a thread
    /// that finds it taken sleeps in the `busy_timeout` handler (the usual setup).
    OwnConnections,
    /// All threads share one connection behind a mutex (persist-queue's multithreading mode):
    /// serialized without busy sleeps.
    SharedConnection,
}

/// `producers` threads push one message per transaction for `duration` each, to the database
/// at `path` (which must exist, see [`open`]). The elapsed time runs from the common start
/// until the last producer finished its last transaction.
pub fn push_concurrent(
    path: &Path,
    producers: usize,
    mode: Producers,
    payload: &[u8],
    duration: Duration,
) -> Result<Throughput> {
    let producers = producers.max(1);
    let payload: Arc<[u8]> = Arc::from(payload);
    let mut workers: Vec<Box<dyn FnMut() -> Result<()> + Send>> = Vec::with_capacity(producers);
    match mode {
        Producers::OwnConnections => {
            for _ in 0..producers {
                let mut conn = open(path)?;
                let payload = Arc::clone(&payload);
                workers.push(Box::new(move || push_batch(&mut conn, &payload, 1)));
            }
        }
        Producers::SharedConnection => {
            let shared = Arc::new(Mutex::new(open(path)?));
            for _ in 0..producers {
                let shared = Arc::clone(&shared);
                let payload = Arc::clone(&payload);
                workers.push(Box::new(move || {
                    let mut conn = shared
                        .lock()
                        .map_err(|_| anyhow!("shared connection mutex poisoned"))?;
                    push_batch(&mut conn, &payload, 1)
                }));
            }
        }
    }
    let (ops, elapsed) = drive(workers, duration).context("concurrent sqlite producers")?;
    Ok(Throughput::new(ops, ops * payload.len() as u64, elapsed))
}

/// Run each worker in its own thread, repeatedly, for `duration` (at least once each), all
/// released together. Returns the total number of calls and the time from the release until the
/// last call ended.
fn drive(
    workers: Vec<Box<dyn FnMut() -> Result<()> + Send>>,
    duration: Duration,
) -> Result<(u64, Duration)> {
    // Workers block on a read lock of the gate while this thread holds the write lock; `abort`
    // tells them to leave without working when not every thread could be spawned.
    let gate = Arc::new(RwLock::new(()));
    let abort = Arc::new(AtomicBool::new(false));
    let closed = gate.write().map_err(|_| anyhow!("start gate poisoned"))?;
    let mut handles = Vec::with_capacity(workers.len());
    let mut spawn_err = None;
    for (i, mut work) in workers.into_iter().enumerate() {
        let (start_gate, aborted) = (Arc::clone(&gate), Arc::clone(&abort));
        let spawned = thread::Builder::new()
            .name(format!("bench-producer-{i}"))
            .spawn(move || -> Result<u64> {
                drop(start_gate.read());
                if aborted.load(Ordering::Acquire) {
                    return Ok(0);
                }
                let deadline = Instant::now() + duration;
                let mut ops = 0u64;
                loop {
                    work()?;
                    ops += 1;
                    if Instant::now() >= deadline {
                        return Ok(ops);
                    }
                }
            });
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                spawn_err = Some(anyhow::Error::from(e).context("spawning producer thread"));
                abort.store(true, Ordering::Release);
                break;
            }
        }
    }
    let start = Instant::now();
    drop(closed);
    let mut ops = 0u64;
    let mut first_err = spawn_err;
    for h in handles {
        match h.join() {
            Ok(Ok(n)) => ops += n,
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert(anyhow!("producer thread panicked"));
            }
        }
    }
    let elapsed = start.elapsed();
    match first_err {
        Some(e) => Err(e),
        None => Ok((ops, elapsed)),
    }
}

/// Lease up to `batch` visible messages in one transaction (set the lease deadline, bump
/// `receive_count`, read the payloads). Returns `(id, payload length)` of each.
pub fn lease(conn: &mut Connection, batch: usize) -> Result<Vec<(i64, usize)>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let leased = {
        let now = now_ms();
        let mut stmt = tx.prepare_cached(LEASE)?;
        let rows = stmt.query_map(
            params![
                now + LEASE_MS,
                QUEUE,
                now,
                i64::try_from(batch).unwrap_or(i64::MAX)
            ],
            |row| {
                let id: i64 = row.get(0)?;
                let len = row.get_ref(1)?.as_blob()?.len();
                Ok((id, len))
            },
        )?;
        rows.collect::<rusqlite::Result<Vec<_>>>()?
    };
    tx.commit()?;
    Ok(leased)
}

/// Delete (acknowledge) the messages `ids` in one transaction.
pub fn ack(conn: &mut Connection, ids: impl IntoIterator<Item = i64>) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut stmt = tx.prepare_cached(ACK)?;
        for id in ids {
            stmt.execute([id])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Lease a batch then ack it (two transactions), repeatedly, until `duration` has elapsed or
/// the queue is empty. Counts each message leased and acked once.
pub fn lease_ack_batched(
    conn: &mut Connection,
    batch: usize,
    duration: Duration,
) -> Result<Throughput> {
    let batch = batch.max(1);
    let (mut ops, mut bytes) = (0u64, 0u64);
    let start = Instant::now();
    loop {
        let leased = lease(conn, batch)?;
        if leased.is_empty() {
            break;
        }
        ops += leased.len() as u64;
        bytes += leased.iter().map(|&(_, len)| len as u64).sum::<u64>();
        ack(conn, leased.into_iter().map(|(id, _)| id))?;
        if start.elapsed() >= duration {
            break;
        }
    }
    Ok(Throughput::new(ops, bytes, start.elapsed()))
}

/// Checkpoint the WAL into the database file and truncate it.
pub fn checkpoint(conn: &Connection) -> Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(())
}

/// Number of messages in the queue.
pub fn count(conn: &Connection) -> Result<u64> {
    let n: i64 = conn.query_row(
        "SELECT count(*) FROM messages WHERE queue = ?1",
        [QUEUE],
        |r| r.get(0),
    )?;
    Ok(n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let mut conn = open(&path).unwrap();
        push_batch(&mut conn, b"hello", 10).unwrap();
        let t = push_single(&mut conn, b"x", Duration::ZERO).unwrap();
        assert_eq!(t.ops, 1);
        assert_eq!(count(&conn).unwrap(), 11);
        let leased = lease(&mut conn, 4).unwrap();
        assert_eq!(leased.len(), 4);
        assert!(leased.iter().all(|&(_, len)| len == 5));
        // Leased messages are invisible until the lease expires.
        assert_eq!(lease(&mut conn, 100).unwrap().len(), 7);
        assert!(lease(&mut conn, 100).unwrap().is_empty());
        ack(&mut conn, leased.iter().map(|&(id, _)| id)).unwrap();
        assert_eq!(count(&conn).unwrap(), 7);
        for mode in [Producers::OwnConnections, Producers::SharedConnection] {
            let c = push_concurrent(&path, 4, mode, b"y", Duration::ZERO).unwrap();
            assert_eq!(c.ops, 4);
        }
        assert_eq!(count(&conn).unwrap(), 15);
        checkpoint(&conn).unwrap();
        drop(conn);
        remove(&path).unwrap();
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }
}
