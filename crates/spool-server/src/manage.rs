//! Creating and changing queues and topics, the same way from every front end: starting from
//! the store's defaults ([`spool_engine::Options::default_queue`]), under the server policy
//! (`max_queues` counts the queue and a dead-letter queue it names that does not exist yet),
//! and one read-modify-write of a config at a time (two changes of one queue never lose each
//! other's keys). Each call does engine I/O: run it on the blocking pool.

use spool_engine::{Error as EngineError, QueueConfig, Store, TopicConfig};

use crate::registry::Refused;
use crate::service::Service;

/// Why a creation or a change was not applied.
#[derive(Debug)]
pub enum Manage<E> {
    /// The engine refused it (`Exists`, `UnknownQueue`, an invalid config, I/O).
    Engine(EngineError),
    /// The server policy refused it (`max_queues`).
    Refused(Refused),
    /// The front end's own changes did not apply (its error, e.g. a reply).
    Invalid(E),
}

impl<E> From<EngineError> for Manage<E> {
    fn from(e: EngineError) -> Manage<E> {
        Manage::Engine(e)
    }
}

/// How many queues creating or reconfiguring `q` with `config` adds: `q` itself when it is
/// new, and its dead-letter queue when it names one that does not exist (the engine creates
/// it).
fn queues_added(store: &Store, q: &str, config: &QueueConfig, q_exists: bool) -> usize {
    let missing = |n: &str| store.queue_config(n).is_err();
    let dlq = config
        .dead_letter_queue_of(q)
        .filter(|d| d != q && missing(d));
    usize::from(!q_exists) + usize::from(dlq.is_some())
}

impl Service {
    /// Creates `queue` with `build(the store's default config)`: `true` created, `false` it
    /// exists with this very config, `Engine(Exists)` it exists with another.
    pub fn create_queue<E>(
        &self,
        queue: &str,
        build: impl FnOnce(QueueConfig) -> Result<QueueConfig, E>,
    ) -> Result<bool, Manage<E>> {
        let store = self.store();
        let config = build(store.default_queue_config()).map_err(Manage::Invalid)?;
        let exists = store.queue_config(queue).is_ok();
        let adding = queues_added(store, queue, &config, exists);
        let _room = self
            .reserve_queues(queue, adding)
            .map_err(Manage::Refused)?;
        Ok(store.create_queue(queue, config)?)
    }

    /// Changes `queue`'s config to `change(its config)`; the new config.
    pub fn configure_queue<E>(
        &self,
        queue: &str,
        change: impl FnOnce(QueueConfig) -> Result<QueueConfig, E>,
    ) -> Result<QueueConfig, Manage<E>> {
        let _one_at_a_time = self.registry().configuring();
        let store = self.store();
        let new = change(store.queue_config(queue)?).map_err(Manage::Invalid)?;
        let adding = queues_added(store, queue, &new, true);
        let _room = self
            .reserve_queues(queue, adding)
            .map_err(Manage::Refused)?;
        store.configure_queue(queue, new.clone())?;
        Ok(new)
    }

    /// Creates `topic` with `build(the store's default config)`: as [`Service::create_queue`].
    pub fn create_topic<E>(
        &self,
        topic: &str,
        build: impl FnOnce(TopicConfig) -> Result<TopicConfig, E>,
    ) -> Result<bool, Manage<E>> {
        let store = self.store();
        let config = build(store.default_topic_config()).map_err(Manage::Invalid)?;
        Ok(store.create_topic(topic, config)?)
    }

    /// Changes `topic`'s config to `change(its config)`; the new config.
    pub fn configure_topic<E>(
        &self,
        topic: &str,
        change: impl FnOnce(TopicConfig) -> Result<TopicConfig, E>,
    ) -> Result<TopicConfig, Manage<E>> {
        let _one_at_a_time = self.registry().configuring();
        let store = self.store();
        let new = change(store.topic_stats(topic)?.config).map_err(Manage::Invalid)?;
        store.configure_topic(topic, new.clone())?;
        Ok(new)
    }
}

impl Service {
    /// Moves up to `count` (all without it) dead letters of `dlq` back to the queues they
    /// came from, only those whose source queue `who` may write to (the others stay: a
    /// redrive is a write to each source); how many moved. `NODLQ` when `dlq` is no queue's
    /// dead-letter queue.
    pub fn redrive<E>(
        &self,
        dlq: &str,
        count: Option<u64>,
        who: &crate::auth::Identity,
    ) -> Result<u64, Manage<E>> {
        let store = self.store();
        store.queue_config(dlq)?;
        let is_dlq = store.queues().iter().any(|q| {
            store
                .queue_config(q)
                .is_ok_and(|c| c.dead_letter_queue_of(q).as_deref() == Some(dlq))
        });
        if !is_dlq {
            return Err(Manage::Refused(Refused::NotDeadLetterQueue(
                dlq.to_string(),
            )));
        }
        let auth = self.auth();
        let allow = |src: &str| auth.may(who, crate::auth::Access::Write, src);
        // One engine call moves a bounded batch: go on until the count is reached or nothing
        // more can move.
        let mut left = count.unwrap_or(u64::MAX);
        let mut moved = 0u64;
        while left > 0 {
            let batch = usize::try_from(left.min(crate::limits::COUNT_MAX)).unwrap_or(1);
            let n = store.redrive_where(dlq, batch, allow)? as u64;
            if n == 0 {
                break;
            }
            moved += n;
            left = left.saturating_sub(n);
        }
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::Policy;
    use spool_engine::Options;

    fn service(max_queues: usize, default_queue: QueueConfig) -> Service {
        let store = Store::open_with_vfs(
            std::sync::Arc::new(spool_engine::vfs::MemVfs::new()),
            "/s",
            Options {
                default_queue,
                ..Options::default()
            },
        )
        .expect("store");
        Service::new(
            store,
            crate::auth::Auth::open(),
            Policy {
                auto_create: true,
                max_queues,
            },
        )
    }

    #[test]
    fn a_created_queue_starts_from_the_store_defaults() {
        let defaults = QueueConfig {
            max_receives: 7,
            ..QueueConfig::default()
        };
        let svc = service(0, defaults);
        let created = svc.create_queue("q", Ok::<_, ()>).expect("created");
        assert!(created);
        assert_eq!(svc.store().queue_config("q").expect("q").max_receives, 7);
    }

    #[test]
    fn max_queues_counts_a_new_dead_letter_queue_and_holds_on_every_path() {
        let svc = service(2, QueueConfig::default());
        assert!(svc.create_queue("a", Ok::<_, ()>).expect("a"));
        // "b" with a DLQ: two more queues, one over the limit.
        let with_dlq = |c: QueueConfig| {
            Ok::<_, ()>(QueueConfig {
                max_receives: 3,
                dead_letter_queue: Some("b.dead".into()),
                ..c
            })
        };
        assert!(matches!(
            svc.create_queue("b", with_dlq),
            Err(Manage::Refused(Refused::TooManyQueues { .. }))
        ));
        assert!(svc.create_queue("b", Ok::<_, ()>).expect("b"));
        // Giving "b" a DLQ later would make a third queue.
        assert!(matches!(
            svc.configure_queue("b", with_dlq),
            Err(Manage::Refused(Refused::TooManyQueues { .. }))
        ));
        assert_eq!(svc.store().queues().len(), 2);
        assert!(matches!(
            svc.configure_queue("nothere", Ok::<_, ()>),
            Err(Manage::Engine(EngineError::UnknownQueue { .. }))
        ));
    }

    #[test]
    fn a_redrive_moves_back_only_what_the_caller_may_write_to() {
        use crate::auth::{token_hash, Access, Auth, Permission, UserConfig};
        use spool_engine::Push;
        let store = Store::in_memory().expect("store");
        let auth = Auth::new(vec![UserConfig {
            name: "ops".into(),
            password_hash: None,
            token_hashes: vec![token_hash("tok")],
            permissions: vec![
                Permission {
                    pattern: "dead".into(),
                    access: Access::Admin,
                },
                Permission {
                    pattern: "a".into(),
                    access: Access::Write,
                },
            ],
        }])
        .expect("users");
        let svc = Service::new(store.clone(), auth, Policy::default());
        for q in ["a", "b"] {
            let c = QueueConfig {
                max_receives: 5,
                dead_letter_queue: Some("dead".into()),
                ..QueueConfig::default()
            };
            store.create_queue(q, c).expect("queue");
            store
                .push(q, Push::new(q.as_bytes().to_vec()))
                .expect("push");
            let m = store
                .lease(q, 1, None)
                .expect("lease")
                .pop()
                .expect("a message");
            store.dead(q, m.receipt.expect("a receipt")).expect("dead");
        }
        let ops = svc.auth().bearer("tok").expect("token");
        let moved = svc.redrive::<()>("dead", None, &ops).expect("redrive");
        assert_eq!(moved, 1);
        assert_eq!(store.peek("a", 10).expect("a").len(), 1);
        assert_eq!(store.peek("b", 10).expect("b").len(), 0);
        assert_eq!(store.peek("dead", 10).expect("dead").len(), 1, "b's stays");
        // Without users, everything moves.
        let open = Service::open(store.clone());
        let all = open
            .redrive::<()>("dead", None, &crate::auth::Identity::anonymous())
            .expect("redrive");
        assert_eq!(all, 1);
        assert!(matches!(
            open.redrive::<()>("a", None, &crate::auth::Identity::anonymous()),
            Err(Manage::Refused(Refused::NotDeadLetterQueue(_)))
        ));
    }
}
