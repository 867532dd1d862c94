//! Waiting without blocking a thread and without a runtime: a [`Watch`] is taken on a queue or
//! topic, then the caller tries its read; when the read finds nothing, the caller awaits
//! [`Watch::changed`] (a plain future, woken by the writer thread after a commit that touched
//! the queue or topic) together with its own timer for [`Watch::due_in`] (the next delayed
//! message or lease to come due: time passing is not a commit, so the engine cannot wake for
//! it) and its deadline. Then it takes a new watch and tries again.
//!
//! Taking the watch *before* the read means a commit between the two is never missed (it
//! makes `changed` ready at once). Dropping a waiting `changed` future leaves nothing behind:
//! a wait given up (a client that disconnected) takes nothing, unlike a blocking
//! [`Store::lease_wait`] on a thread, which leases whatever arrives before its timeout.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::name;
use crate::signal::Signal;
use crate::store::Store;

/// A snapshot of a queue's or topic's change counter; see the module docs.
#[derive(Debug, Clone)]
pub struct Watch {
    signal: Arc<Signal>,
    seen: u64,
    due_in: Option<Duration>,
    exists: bool,
}

impl Watch {
    /// Ready once anything was committed to the queue or topic since the watch was taken (or,
    /// when it did not exist, once any queue or topic was created). Runtime-agnostic.
    pub fn changed(&self) -> Changed<'_> {
        Changed {
            watch: self,
            registered: None,
        }
    }

    /// How long until a delayed message or an expired lease of the queue becomes visible, as
    /// of when the watch was taken (`None`: nothing is due; always `None` for topics).
    pub fn due_in(&self) -> Option<Duration> {
        self.due_in
    }

    /// Whether the queue or topic existed when the watch was taken.
    pub fn exists(&self) -> bool {
        self.exists
    }
}

/// The future of [`Watch::changed`].
#[derive(Debug)]
pub struct Changed<'a> {
    watch: &'a Watch,
    registered: Option<Waker>,
}

impl Future for Changed<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let r = self.watch.signal.poll_changed(self.watch.seen, cx);
        self.registered = match r {
            Poll::Pending => Some(cx.waker().clone()),
            Poll::Ready(()) => None,
        };
        r
    }
}

impl Drop for Changed<'_> {
    fn drop(&mut self) {
        if let Some(w) = self.registered.take() {
            self.watch.signal.forget(&w);
        }
    }
}

impl Store {
    /// A [`Watch`] on `queue`. A queue that does not exist yet is watched for creation when
    /// the store auto-creates queues; otherwise it is [`Error::UnknownQueue`].
    pub fn queue_watch(&self, queue: &str) -> Result<Watch> {
        name::validate(queue)?;
        let auto_create = self.shared().options.auto_create;
        let now = self.now();
        let core = self.shared().lock_core();
        if let Some(cause) = &core.poisoned {
            return Err(Error::Poisoned {
                cause: cause.clone(),
            });
        }
        match core.state.queue_by_name(queue) {
            Some(q) => Ok(Watch {
                signal: q.signal.clone(),
                seen: q.signal.version(),
                due_in: q
                    .next_due()
                    .map(|at| Duration::from_millis(at.saturating_sub(now))),
                exists: true,
            }),
            None if auto_create => Ok(Watch {
                signal: core.state.created.clone(),
                seen: core.state.created.version(),
                due_in: None,
                exists: false,
            }),
            None => Err(Error::UnknownQueue {
                name: queue.to_string(),
            }),
        }
    }

    /// A [`Watch`] on `topic`; a topic that does not exist yet is watched for creation.
    pub fn topic_watch(&self, topic: &str) -> Result<Watch> {
        name::validate(topic)?;
        let core = self.shared().lock_core();
        if let Some(cause) = &core.poisoned {
            return Err(Error::Poisoned {
                cause: cause.clone(),
            });
        }
        Ok(match core.state.topic_by_name(topic) {
            Some(t) => Watch {
                signal: t.signal.clone(),
                seen: t.signal.version(),
                due_in: None,
                exists: true,
            },
            None => Watch {
                signal: core.state.created.clone(),
                seen: core.state.created.version(),
                due_in: None,
                exists: false,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use super::*;
    use crate::clock::ManualClock;
    use crate::options::Options;
    use crate::vfs::MemVfs;
    use crate::Push;

    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll(f: &mut Pin<&mut Changed<'_>>, count: &Arc<Count>) -> Poll<()> {
        let waker = Waker::from(count.clone());
        f.as_mut().poll(&mut Context::from_waker(&waker))
    }

    /// The writer thread wakes waiters before it answers the committers: once a write call
    /// returned, the watch is ready.
    fn ready_now(f: &mut Pin<&mut Changed<'_>>, count: &Arc<Count>) {
        assert!(poll(f, count).is_ready(), "not woken by the commit");
    }

    fn store_at(ms: u64) -> (Store, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(ms));
        let options = Options {
            clock: clock.clone(),
            ..Options::default()
        };
        let store = Store::open_with_vfs(Arc::new(MemVfs::new()), "/s", options).expect("open");
        (store, clock)
    }

    #[test]
    fn a_push_wakes_a_watch_taken_before_it_and_only_then() {
        let (store, _) = store_at(1_000);
        store.push("q", Push::new("a")).expect("push");
        let watch = store.queue_watch("q").expect("watch");
        assert!(watch.exists());
        let count = Arc::new(Count::default());
        let mut f = std::pin::pin!(watch.changed());
        assert!(poll(&mut f, &count).is_pending(), "nothing committed since");
        store.push("other", Push::new("x")).expect("push");
        assert!(
            poll(&mut f, &count).is_pending(),
            "a commit to another queue"
        );
        store.push("q", Push::new("b")).expect("push");
        ready_now(&mut f, &count);
        assert!(count.0.load(Ordering::SeqCst) >= 1, "the waker was woken");
    }

    #[test]
    fn a_push_between_the_watch_and_the_wait_is_not_missed() {
        let (store, _) = store_at(1_000);
        store.push("q", Push::new("a")).expect("push");
        store.lease("q", 1, None).expect("lease");
        let watch = store.queue_watch("q").expect("watch");
        assert!(store.lease("q", 1, None).expect("lease").is_empty());
        // A producer commits after the read found nothing, before the waiter awaits.
        store.push("q", Push::new("b")).expect("push");
        let count = Arc::new(Count::default());
        let mut f = std::pin::pin!(watch.changed());
        ready_now(&mut f, &count);
    }

    #[test]
    fn a_given_up_wait_leaves_no_waker_behind() {
        let (store, _) = store_at(1_000);
        store.push("q", Push::new("a")).expect("push");
        let watch = store.queue_watch("q").expect("watch");
        for _ in 0..100 {
            let count = Arc::new(Count::default());
            let mut f = std::pin::pin!(watch.changed());
            assert!(poll(&mut f, &count).is_pending());
        }
        assert_eq!(watch.signal.wakers(), 0);
    }

    #[test]
    fn due_in_is_the_next_delay_or_lease_to_expire() {
        let (store, clock) = store_at(10_000);
        store
            .push("q", Push::new("later").delay(Duration::from_secs(5)))
            .expect("push");
        assert_eq!(
            store.queue_watch("q").expect("watch").due_in(),
            Some(Duration::from_secs(5))
        );
        clock.advance(5_000);
        let got = store
            .lease("q", 1, Some(Duration::from_secs(2)))
            .expect("lease");
        assert_eq!(got.len(), 1);
        assert_eq!(
            store.queue_watch("q").expect("watch").due_in(),
            Some(Duration::from_secs(2)),
            "the lease's end"
        );
        store.push("q2", Push::new("now")).expect("push");
        assert_eq!(store.queue_watch("q2").expect("watch").due_in(), None);
    }

    #[test]
    fn a_missing_queue_or_topic_is_watched_for_creation() {
        let (store, _) = store_at(1_000);
        let wq = store.queue_watch("later").expect("watch");
        let wt = store.topic_watch("news").expect("watch");
        assert!(!wq.exists() && !wt.exists());
        let count = Arc::new(Count::default());
        let mut fq = std::pin::pin!(wq.changed());
        let mut ft = std::pin::pin!(wt.changed());
        assert!(poll(&mut fq, &count).is_pending());
        assert!(poll(&mut ft, &count).is_pending());
        store.push("later", Push::new("x")).expect("push");
        ready_now(&mut fq, &count);
        ready_now(&mut ft, &count);
        assert!(matches!(
            store.queue_watch("bad name"),
            Err(Error::InvalidName { .. })
        ));
    }

    #[test]
    fn a_publish_wakes_a_topic_watch() {
        let (store, _) = store_at(1_000);
        store.publish("news", "a").expect("publish");
        let w = store.topic_watch("news").expect("watch");
        let count = Arc::new(Count::default());
        let mut f = std::pin::pin!(w.changed());
        assert!(poll(&mut f, &count).is_pending());
        store.publish("news", "b").expect("publish");
        ready_now(&mut f, &count);
    }
}
