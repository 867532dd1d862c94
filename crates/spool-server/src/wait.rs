//! Blocking reads, for every front end: a lease, a pop or a topic read that waits until
//! something is there or its time is up (`QGET ... WAIT`, `QPOP ... WAIT`, `TWAIT`, HTTP
//! long-poll and SSE). Front ends call these and nothing else to wait, so how a wait is
//! woken is decided in one place.
//!
//! Today each wait runs the engine's blocking call (woken by pushes, expiring delays and
//! expiring leases; no polling) on tokio's blocking pool, at most [`WAITING_MAX`] at once.

use std::time::Duration;

use spool_engine::{Cursor, Error as EngineError, Message, Store, TopicMessage};

/// Waits blocked in the engine at once (process-wide). Each holds a thread of tokio's
/// blocking pool (512 by default); this leaves room for the other blocking calls, which must
/// never queue behind minute-long waits.
pub const WAITING_MAX: usize = 256;
static WAITERS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(WAITING_MAX);

/// Runs a blocking engine call on tokio's blocking pool.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
) -> Result<T, EngineError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(EngineError::InvalidArgument(format!(
            "engine task failed: {e}"
        )))
    })
}

/// Runs `f` (a blocking engine wait of at most `wait`) once a waiting slot is free; when no
/// slot frees up within `wait`, runs `now` instead (the same read without waiting).
async fn with_slot<T: Send + 'static>(
    wait: Duration,
    f: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
    now: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
) -> Result<T, EngineError> {
    match tokio::time::timeout(wait, WAITERS.acquire()).await {
        Ok(Ok(permit)) => {
            let r = blocking(f).await;
            drop(permit);
            r
        }
        _ => blocking(now).await,
    }
}

/// Leases up to `count` messages of `queue`, waiting up to `wait` for one to be visible
/// (`wait` zero: no wait).
pub async fn lease(
    store: &Store,
    queue: &str,
    count: usize,
    visibility: Option<Duration>,
    wait: Duration,
) -> Result<Vec<Message>, EngineError> {
    if wait.is_zero() {
        return store.lease_async(queue, count, visibility).await;
    }
    let (s, s2) = (store.clone(), store.clone());
    let (q, q2) = (queue.to_string(), queue.to_string());
    with_slot(
        wait,
        move || s.lease_wait(&q, count, visibility, wait),
        move || s2.lease(&q2, count, visibility),
    )
    .await
}

/// Reads the topic message at or after `cursor`, waiting up to `wait` for one to be
/// published; advances the cursor past what it returns.
pub async fn topic_next(
    store: &Store,
    cursor: &mut Cursor,
    wait: Duration,
) -> Result<Option<TopicMessage>, EngineError> {
    let (s, s2) = (store.clone(), store.clone());
    let (mut c, mut c2) = (cursor.clone(), cursor.clone());
    let (got, c) = if wait.is_zero() {
        blocking(move || s.topic_next(&mut c).map(|m| (m, c))).await?
    } else {
        with_slot(
            wait,
            move || s.topic_wait(&mut c, wait).map(|m| (m, c)),
            move || s2.topic_next(&mut c2).map(|m| (m, c2)),
        )
        .await?
    };
    *cursor = c;
    Ok(got)
}
