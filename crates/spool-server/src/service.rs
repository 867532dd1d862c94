//! What every request of every front end shares: the store, who may do what ([`Auth`]) and
//! the server's policy. Cheap to clone (one `Arc`).

use std::sync::Arc;

use spool_engine::Store;

use crate::auth::Auth;
use crate::registry::Registry;

/// Server-wide rules for queues and topics.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Create a queue or topic on its first push or publish (as dsmq and psmq do). Off:
    /// writes to a missing one are `NOQUEUE`/`NOTOPIC`, create them with `QCREATE`/`TCREATE`.
    pub auto_create: bool,
    /// Queues at most (0: no limit); creating one more is `FULL`.
    pub max_queues: usize,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            auto_create: true,
            max_queues: 0,
        }
    }
}

/// The shared state of a server.
#[derive(Debug, Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    auth: Auth,
    policy: Policy,
    registry: Registry,
}

impl Service {
    /// A service over `store`.
    pub fn new(store: Store, auth: Auth, policy: Policy) -> Service {
        Service {
            inner: Arc::new(Inner {
                store,
                auth,
                policy,
                registry: Registry::default(),
            }),
        }
    }

    /// A service with no users and the default policy (tests, loopback use).
    pub fn open(store: Store) -> Service {
        Service::new(store, Auth::open(), Policy::default())
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn auth(&self) -> &Auth {
        &self.inner.auth
    }

    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    /// Subscribers and creation reservations (`registry.rs`).
    pub(crate) fn registry_ref(&self) -> &Registry {
        &self.inner.registry
    }
}
