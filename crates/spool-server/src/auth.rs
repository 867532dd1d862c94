//! Who may do what. Every front end authenticates a connection or request into an
//! [`Identity`] and asks [`Auth::check`] before each operation on a queue or topic.
//!
//! With no users configured ([`Auth::open`]) everyone may do everything: the server then
//! listens on loopback only, unless started with `--allow-unauthenticated`.

use std::sync::Arc;

/// What an operation needs on a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// Reading without consuming: peek, stats, list, topic reads.
    Read,
    /// Changing messages: push, lease, ack, nack, pop, publish.
    Write,
    /// Changing queues and topics themselves: create, config, drop, purge, redrive,
    /// and server operations (dsmq's `shutdown`).
    Admin,
}

/// Who a connection or request is: anonymous until it authenticates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    user: Option<Arc<str>>,
}

impl Identity {
    /// Not authenticated.
    pub fn anonymous() -> Identity {
        Identity::default()
    }

    /// The user's name, `None` when anonymous.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthError {
    /// Authentication is configured and the connection has not authenticated (`NOAUTH`,
    /// HTTP 401).
    #[error("Authentication required.")]
    Required,
    /// Wrong user name or password or token (`WRONGPASS`, HTTP 401).
    #[error("invalid username-password pair or user is disabled.")]
    WrongPass,
    /// Authenticated, without the access the operation needs (`NOPERM`, HTTP 403).
    #[error("user {user} has no {access:?} permission on {name:?}")]
    Denied {
        user: String,
        access: Access,
        name: String,
    },
}

impl AuthError {
    /// The reply code: `NOAUTH`, `WRONGPASS` or `NOPERM` (Redis's words for the same).
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Required => "NOAUTH",
            AuthError::WrongPass => "WRONGPASS",
            AuthError::Denied { .. } => "NOPERM",
        }
    }
}

/// The server's users and their permissions.
#[derive(Debug, Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    required: bool,
}

impl Auth {
    /// No users: everyone may do everything.
    pub fn open() -> Auth {
        Auth {
            inner: Arc::new(Inner { required: false }),
        }
    }

    /// Whether requests must authenticate.
    pub fn is_required(&self) -> bool {
        self.inner.required
    }

    /// `AUTH user password` (Redis's `AUTH password` is the user `default`). With no users
    /// configured every login succeeds as anonymous (as a Redis without passwords answers
    /// `AUTH` for `default`); otherwise [`AuthError::WrongPass`] unless the password matches.
    pub fn login(&self, user: &str, password: &[u8]) -> Result<Identity, AuthError> {
        let _ = (user, password);
        if !self.inner.required {
            return Ok(Identity::anonymous());
        }
        Err(AuthError::WrongPass)
    }

    /// An HTTP `Authorization: Bearer <token>`: the user the token belongs to, or
    /// [`AuthError::WrongPass`].
    pub fn bearer(&self, token: &str) -> Result<Identity, AuthError> {
        let _ = token;
        if !self.inner.required {
            return Ok(Identity::anonymous());
        }
        Err(AuthError::WrongPass)
    }

    /// Whether `who` may do `access` on the queue or topic `name` (for server-wide
    /// operations, `name` is `""`).
    pub fn check(&self, who: &Identity, access: Access, name: &str) -> Result<(), AuthError> {
        let _ = (who, access, name);
        if !self.inner.required {
            return Ok(());
        }
        Err(AuthError::Required)
    }
}
