//! Blocking reads, for every front end: a lease, a pop or a topic read that waits until
//! something is there or its time is up (`QGET ... WAIT`, `QPOP ... WAIT`, `TWAIT`, HTTP
//! long-poll and SSE). Front ends call these and nothing else to wait, so how a wait is
//! woken is decided in one place.
//!
//! A wait takes the engine's [`Watch`](spool_engine::Watch) on the queue or topic, tries its
//! read, and when that finds nothing awaits the watch (woken by the writer thread after a
//! commit to that queue or topic: a push, a nack, a publish) or a timer for the next delay or
//! lease to come due, or its deadline, whichever is first; then tries again. No polling, no
//! thread held: a waiting request is a parked task. It is also cancel-safe: dropping the
//! future (the client went away) takes nothing; only a read that found something changes
//! state, and its reply goes out at once.

use std::time::Duration;

use spool_engine::{Cursor, Error as EngineError, Message, Store, TopicMessage, Watch};
use tokio::time::Instant;

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

/// Waits for the watch to fire, for the next due time it names, or for `deadline`. False
/// when the deadline had already passed (the caller's last try was its last).
async fn changed_or_due(watch: &Watch, deadline: Instant) -> bool {
    let now = Instant::now();
    if now >= deadline {
        return false;
    }
    // The engine's clock counts whole milliseconds: one more keeps a wake-up from landing
    // just before the message is due (and trying again for nothing).
    let until = watch.due_in().map_or(deadline, |d| {
        deadline.min(now + d + Duration::from_millis(1))
    });
    tokio::select! {
        () = watch.changed() => {}
        () = tokio::time::sleep_until(until) => {}
    }
    true
}

/// Leases up to `count` messages of `queue`, waiting up to `wait` for one to be visible
/// (`wait` zero: no wait). A queue that does not exist yet is waited for when the store
/// auto-creates queues.
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
    let deadline = Instant::now() + wait;
    loop {
        let watch = store.queue_watch(queue)?;
        match store.lease_async(queue, count, visibility).await {
            Ok(got) if !got.is_empty() => return Ok(got),
            Ok(_) => {}
            Err(EngineError::UnknownQueue { .. }) if !watch.exists() => {}
            Err(e) => return Err(e),
        }
        if !changed_or_due(&watch, deadline).await {
            return Ok(Vec::new());
        }
    }
}

/// Pops (at-most-once) up to `count` messages of `queue`, waiting up to `wait` for one.
pub async fn pop(
    store: &Store,
    queue: &str,
    count: usize,
    wait: Duration,
) -> Result<Vec<Message>, EngineError> {
    let deadline = Instant::now() + wait;
    loop {
        let watch = if wait.is_zero() {
            None
        } else {
            Some(store.queue_watch(queue)?)
        };
        let (s, q) = (store.clone(), queue.to_string());
        match blocking(move || s.pop(&q, count)).await {
            Ok(got) if !got.is_empty() => return Ok(got),
            Ok(got) if watch.is_none() => return Ok(got),
            Ok(_) => {}
            Err(EngineError::UnknownQueue { .. })
                if watch.as_ref().is_some_and(|w| !w.exists()) => {}
            Err(e) => return Err(e),
        }
        let Some(watch) = watch else {
            return Ok(Vec::new());
        };
        if !changed_or_due(&watch, deadline).await {
            return Ok(Vec::new());
        }
    }
}

/// Reads the topic message at or after `cursor`, waiting up to `wait` for one to be
/// published; advances the cursor past what it returns.
pub async fn topic_next(
    store: &Store,
    cursor: &mut Cursor,
    wait: Duration,
) -> Result<Option<TopicMessage>, EngineError> {
    let deadline = Instant::now() + wait;
    loop {
        let watch = if wait.is_zero() {
            None
        } else {
            Some(store.topic_watch(&cursor.topic)?)
        };
        let (s, mut c) = (store.clone(), cursor.clone());
        let (got, c) = blocking(move || s.topic_next(&mut c).map(|m| (m, c))).await?;
        *cursor = c;
        if got.is_some() {
            return Ok(got);
        }
        let Some(watch) = watch else {
            return Ok(None);
        };
        if !changed_or_due(&watch, deadline).await {
            return Ok(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spool_engine::Push;

    fn store() -> Store {
        Store::in_memory().expect("store")
    }

    #[tokio::test]
    async fn a_lease_wait_is_woken_by_a_push_and_takes_it() {
        let s = store();
        let s2 = s.clone();
        let waiter =
            tokio::spawn(async move { lease(&s2, "q", 1, None, Duration::from_secs(60)).await });
        tokio::task::yield_now().await;
        s.push_async("q", Push::new("hello")).await.expect("push");
        let got = waiter.await.expect("task").expect("lease");
        assert_eq!(got.len(), 1);
        assert_eq!(&got[0].payload[..], b"hello");
    }

    #[tokio::test]
    async fn a_lease_wait_is_woken_by_an_expiring_delay() {
        let s = store();
        s.push("q", Push::new("later").delay(Duration::from_millis(50)))
            .expect("push");
        let got = lease(&s, "q", 1, None, Duration::from_secs(60))
            .await
            .expect("lease");
        assert_eq!(got.len(), 1, "delivered when its delay ran out");
    }

    #[tokio::test]
    async fn a_lease_wait_is_woken_by_an_expiring_lease() {
        let s = store();
        s.push("q", Push::new("x")).expect("push");
        let first = s
            .lease("q", 1, Some(Duration::from_millis(50)))
            .expect("lease");
        assert_eq!(first.len(), 1);
        let again = lease(&s, "q", 1, None, Duration::from_secs(60))
            .await
            .expect("lease");
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].receive_count, 2);
    }

    #[tokio::test]
    async fn a_wait_that_times_out_is_empty_and_a_dropped_wait_takes_nothing() {
        let s = store();
        let got = lease(&s, "q", 1, None, Duration::from_millis(20))
            .await
            .expect("lease");
        assert!(got.is_empty());
        // A waiter whose client went away: its future is dropped before anything arrives.
        let s2 = s.clone();
        let waiter =
            tokio::spawn(async move { lease(&s2, "q", 1, None, Duration::from_secs(60)).await });
        tokio::task::yield_now().await;
        waiter.abort();
        let _ = waiter.await;
        s.push("q", Push::new("for someone else")).expect("push");
        let got = s.lease("q", 1, None).expect("lease");
        assert_eq!(
            got.len(),
            1,
            "the message was not leased by the abandoned wait"
        );
        assert_eq!(got[0].receive_count, 1);
    }

    #[tokio::test]
    async fn a_pop_wait_and_a_topic_wait_are_woken() {
        let s = store();
        let (s2, s3) = (s.clone(), s.clone());
        let popper = tokio::spawn(async move { pop(&s2, "q", 5, Duration::from_secs(60)).await });
        let mut cursor = s.subscribe("news").expect("subscribe");
        let reader = tokio::spawn(async move {
            let got = topic_next(&s3, &mut cursor, Duration::from_secs(60)).await;
            (got, cursor)
        });
        tokio::task::yield_now().await;
        s.push_async("q", Push::new("p")).await.expect("push");
        s.publish("news", "headline").expect("publish");
        let popped = popper.await.expect("task").expect("pop");
        assert_eq!(popped.len(), 1);
        assert!(s.peek("q", 1).expect("peek").is_empty(), "popped is gone");
        let (got, cursor) = reader.await.expect("task");
        let got = got.expect("read").expect("a message");
        assert_eq!(&got.payload[..], b"headline");
        assert_eq!(cursor.next, got.seq + 1);
    }
}
