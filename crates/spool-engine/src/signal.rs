//! Wake-ups without polling. Each queue and topic has a [`Signal`]; the writer thread bumps it
//! after a frame that touched the queue is committed, which wakes blocked `lease_wait` and
//! topic `wait` calls (and async wakers). A waiter reads the version while it still holds the
//! store lock after finding nothing, so a commit that lands in between cannot be missed.

use std::sync::{Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

#[derive(Debug, Default)]
pub(crate) struct Signal {
    inner: Mutex<SignalState>,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct SignalState {
    version: u64,
    wakers: Vec<Waker>,
}

impl Signal {
    pub(crate) fn version(&self) -> u64 {
        self.lock().version
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SignalState> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn notify(&self) {
        let wakers = {
            let mut s = self.lock();
            s.version += 1;
            std::mem::take(&mut s.wakers)
        };
        self.cv.notify_all();
        for w in wakers {
            w.wake();
        }
    }

    /// Waits until the version differs from `seen` or `deadline` passes. Returns whether it
    /// changed.
    pub(crate) fn wait(&self, seen: u64, deadline: Instant) -> bool {
        let mut s = self.lock();
        loop {
            if s.version != seen {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            s = self
                .cv
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Ready once the version differs from `seen`; otherwise registers the task's waker
    /// (once per task) and is pending.
    pub(crate) fn poll_changed(&self, seen: u64, cx: &Context<'_>) -> Poll<()> {
        let mut s = self.lock();
        if s.version != seen {
            return Poll::Ready(());
        }
        if !s.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            s.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Forgets a waker registered by [`Signal::poll_changed`] (a wait given up before the
    /// signal fired), so that waits that time out on a quiet queue do not pile up wakers.
    pub(crate) fn forget(&self, waker: &Waker) {
        self.lock().wakers.retain(|w| !w.will_wake(waker));
    }

    #[cfg(test)]
    pub(crate) fn wakers(&self) -> usize {
        self.lock().wakers.len()
    }
}
