//! What the connections and requests of one server share beyond the store: who is reading
//! each topic (`TSTATS`'s `subscribers`), and the server policy's gate on writes that create
//! a queue or topic (`auto_create`, `max_queues`). Front-end neutral: the RESP layer and the
//! HTTP layer call the same gate, so both refuse with the same codes.
//!
//! The `max_queues` check is exact without holding a lock across engine I/O: a creation
//! first *reserves* its queues under a short lock (the store's count plus reservations in
//! flight must stay within the limit), then runs, then releases the reservation. While a
//! creation runs its queue may be counted twice (created and still reserved), so a
//! concurrent creation at the very edge of the limit can be refused; the limit itself is
//! never passed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::service::Service;

/// Locks a mutex whose data stays consistent whatever a panicking holder did (counters).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The shared state of a server's front ends (one per [`Service`]).
#[derive(Debug, Default)]
pub struct Registry {
    subscribers: Arc<Mutex<HashMap<String, usize>>>,
    /// Queues being created right now, not yet counted by the store.
    reserved: Mutex<usize>,
    /// Serializes read-modify-write config changes (`QCONFIG`, `TCONFIG`): two updates of
    /// the same queue never lose one another's keys.
    configuring: Mutex<()>,
}

impl Registry {
    /// Registers a reader of `topic` until the returned guard is dropped: a connection that
    /// holds a cursor on it, or a request waiting on it (a long poll, a stream).
    pub fn subscribe(&self, topic: &str) -> Subscription {
        Subscription::new(self.subscribers.clone(), topic.to_string())
    }

    /// Readers of `topic` registered now.
    pub fn subscribers(&self, topic: &str) -> usize {
        lock(&self.subscribers).get(topic).copied().unwrap_or(0)
    }

    /// Holds off other config changes while the caller reads, changes and writes a config.
    pub fn configuring(&self) -> MutexGuard<'_, ()> {
        lock(&self.configuring)
    }
}

/// One registered topic reader (see [`Registry::subscribe`]); cloning registers another.
#[derive(Debug)]
pub struct Subscription {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    topic: String,
}

impl Subscription {
    fn new(counts: Arc<Mutex<HashMap<String, usize>>>, topic: String) -> Subscription {
        *lock(&counts).entry(topic.clone()).or_insert(0) += 1;
        Subscription { counts, topic }
    }

    /// The topic it reads.
    pub fn topic(&self) -> &str {
        &self.topic
    }
}

impl Clone for Subscription {
    fn clone(&self) -> Subscription {
        Subscription::new(self.counts.clone(), self.topic.clone())
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        if let Some(n) = counts.get_mut(&self.topic) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.topic);
            }
        }
    }
}

/// Why the server's policy refused a request (section 8.5 codes `NOQUEUE`, `NOTOPIC`, `FULL`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refused {
    /// A write to a queue that does not exist, with `auto_create` off.
    #[error("unknown queue {0:?}: this server does not create queues on first use (auto_create is off); create it first (QCREATE, or PUT /v1/queues/<name>)")]
    NoQueue(String),
    /// A publish to a topic that does not exist, with `auto_create` off.
    #[error("unknown topic {0:?}: this server does not create topics on first use (auto_create is off); create it first (TCREATE, or PUT /v1/topics/<name>)")]
    NoTopic(String),
    /// A redrive of a queue that is no queue's dead-letter queue.
    #[error("queue {0:?} is not the dead-letter queue of any queue; name a DLQ (a queue with max_receives has <name>.dlq)")]
    NotDeadLetterQueue(String),
    /// Creating `adding` more queues would pass `max_queues`.
    #[error("cannot create queue {queue:?}: the server holds {have} queues and its limit is {max} (max_queues); drop queues no longer used (QDROP), or raise max_queues in the server config")]
    TooManyQueues {
        queue: String,
        have: usize,
        max: usize,
    },
}

impl Refused {
    /// The reply code.
    pub fn code(&self) -> &'static str {
        match self {
            Refused::NoQueue(_) => "NOQUEUE",
            Refused::NoTopic(_) => "NOTOPIC",
            Refused::TooManyQueues { .. } => "FULL",
            Refused::NotDeadLetterQueue(_) => "NODLQ",
        }
    }
}

/// A reservation of queues being created; released when dropped.
#[derive(Debug)]
pub struct Reservation<'a> {
    reserved: &'a Mutex<usize>,
    n: usize,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut r = lock(self.reserved);
        *r = r.saturating_sub(self.n);
    }
}

impl Service {
    /// The shared state of the front ends.
    pub fn registry(&self) -> &Registry {
        self.registry_ref()
    }

    /// Whether the queue exists now.
    fn queue_exists(&self, queue: &str) -> bool {
        self.store().queue_config(queue).is_ok()
    }

    /// Reserves room for `adding` new queues (the first of them named `queue`) under
    /// `max_queues`; hold the reservation until the creation is applied.
    pub fn reserve_queues(&self, queue: &str, adding: usize) -> Result<Reservation<'_>, Refused> {
        let reserved = &self.registry_ref().reserved;
        let max = self.policy().max_queues;
        let mut r = lock(reserved);
        if max > 0 && adding > 0 {
            let have = self.store().queues().len() + *r;
            if have + adding > max {
                return Err(Refused::TooManyQueues {
                    queue: queue.to_string(),
                    have,
                    max,
                });
            }
        }
        *r += adding;
        Ok(Reservation {
            reserved,
            n: adding,
        })
    }

    /// Runs `write`, a push to `queue` (which creates it when missing), under the policy:
    /// `NOQUEUE` when it is missing and `auto_create` is off, `FULL` when creating it would
    /// pass `max_queues`. `write` must apply the push before it returns (the engine's
    /// `push_async` does; its future only waits for durability).
    pub fn queue_write<T>(&self, queue: &str, write: impl FnOnce() -> T) -> Result<T, Refused> {
        let p = self.policy();
        if p.auto_create && p.max_queues == 0 {
            return Ok(write());
        }
        if self.queue_exists(queue) {
            return Ok(write());
        }
        if !p.auto_create {
            return Err(Refused::NoQueue(queue.to_string()));
        }
        let _room = self.reserve_queues(queue, 1)?;
        Ok(write())
    }

    /// Runs `write`, a publish to `topic`, under the policy: `NOTOPIC` when the topic is
    /// missing and `auto_create` is off. (Topics do not count against `max_queues`.)
    pub fn topic_write<T>(&self, topic: &str, write: impl FnOnce() -> T) -> Result<T, Refused> {
        if !self.policy().auto_create && self.store().topic_stats(topic).is_err() {
            return Err(Refused::NoTopic(topic.to_string()));
        }
        Ok(write())
    }

    /// A read of `queue`: fine when it exists, or when a missing queue reads as empty
    /// ([`Service::missing_reads_empty`]); else `NOQUEUE`.
    pub fn queue_readable(&self, queue: &str) -> Result<(), Refused> {
        if self.missing_reads_empty() || self.queue_exists(queue) {
            return Ok(());
        }
        Err(Refused::NoQueue(queue.to_string()))
    }

    /// A read of `topic`: as [`Service::queue_readable`], `NOTOPIC`.
    pub fn topic_readable(&self, topic: &str) -> Result<(), Refused> {
        if self.missing_reads_empty() || self.store().topic_stats(topic).is_ok() {
            return Ok(());
        }
        Err(Refused::NoTopic(topic.to_string()))
    }

    /// Whether a read of a missing queue is an empty reply (`auto_create` on: a worker may
    /// start before its producer) rather than `NOQUEUE`.
    pub fn missing_reads_empty(&self) -> bool {
        self.policy().auto_create
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_count_until_dropped_and_clones_count_too() {
        let r = Registry::default();
        let a = r.subscribe("news");
        let b = a.clone();
        let c = r.subscribe("other");
        assert_eq!(r.subscribers("news"), 2);
        assert_eq!(r.subscribers("other"), 1);
        drop(a);
        assert_eq!(r.subscribers("news"), 1);
        drop((b, c));
        assert_eq!(r.subscribers("news"), 0);
        assert_eq!(r.subscribers("other"), 0);
    }
}
