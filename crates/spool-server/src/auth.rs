//! Who may do what. Every front end authenticates a connection or request into an
//! [`Identity`] and asks [`Auth::check`] before each operation on a queue or topic.
//!
//! With no users configured ([`Auth::open`]) everyone may do everything: the server then
//! listens on loopback only, unless started with `--allow-unauthenticated`.
//!
//! With users ([`Auth::new`]), a connection authenticates with a password (`AUTH`,
//! `HELLO ... AUTH`) or a bearer token (HTTP). Secrets are never stored, only hashes:
//!
//! - passwords as argon2id PHC strings (`$argon2id$v=19$...`, made by
//!   `spool serve hash-password`): a slow, salted hash, because people choose passwords
//!   that can be guessed, and a leaked configuration must not give them away;
//! - tokens as the hex SHA-256 of the token (made by `spool serve new-token`). A token is
//!   32 random bytes, so there is nothing to guess and no dictionary to slow down: a fast
//!   hash is as safe as a slow one, and an HTTP server checks a token on every request, where
//!   argon2 would cost tens of milliseconds of CPU each time.
//!
//! Hashes are compared in constant time (`subtle`; argon2's own verification is constant
//! time too).
//!
//! Permissions are rules `{pattern, access}` on queue and topic names; a pattern is a glob
//! (`*` any run of characters, `?` one character). The access levels are ordered:
//! **admin implies write, write implies read**. A user may do `access` on `name` when one of
//! their rules matches the name with that access or a higher one. Server-wide operations are
//! checked against the name `""` (matched by `*`).

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What an operation needs on a name. Ordered: `Admin` > `Write` > `Read`, and a higher
/// access includes the lower ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Access {
    /// Reading without consuming: peek, stats, list, topic reads.
    Read,
    /// Changing messages: push, lease, ack, nack, pop, publish.
    Write,
    /// Changing queues and topics themselves: create, config, drop, purge, redrive,
    /// and server operations (dsmq's `shutdown`).
    Admin,
}

impl Access {
    /// The word used in configuration files and messages: `read`, `write`, `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::Admin => "admin",
        }
    }

    /// Parses `read`, `write` or `admin` (any case).
    pub fn parse(s: &str) -> Option<Access> {
        match s.to_ascii_lowercase().as_str() {
            "read" => Some(Access::Read),
            "write" => Some(Access::Write),
            "admin" => Some(Access::Admin),
            _ => None,
        }
    }
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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
    #[error("user {user} has no {access} permission on {name:?}; ask an administrator to add a rule for it to the user's permissions")]
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

/// A mistake in the configured users, found by [`Auth::new`].
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthConfigError {
    #[error("user {user:?}: password_hash is not an argon2 PHC string ({reason}); make one with `spool serve hash-password`")]
    BadPasswordHash { user: String, reason: String },
    #[error("user {user:?}: token hash {index} is not 64 hex digits (a SHA-256); make one with `spool serve new-token`")]
    BadTokenHash { user: String, index: usize },
    #[error("user {user:?} is configured twice; give each user one entry")]
    Duplicate { user: String },
    #[error("a user has an empty name; give it a name")]
    EmptyName,
    #[error("user {user:?} has neither a password_hash nor a token, so nobody can log in as it; add one or remove the user")]
    NoCredential { user: String },
    #[error("user {user:?}: permission pattern is empty; use \"*\" for every name")]
    EmptyPattern { user: String },
    #[error("could not hash the password: {reason}")]
    Hashing { reason: String },
}

/// One permission rule: `access` (and everything below it) on names matching `pattern`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    /// A glob on queue and topic names: `*` any run of characters, `?` one character.
    pub pattern: String,
    /// The highest access granted.
    pub access: Access,
}

/// One configured user, as read from the configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserConfig {
    /// The name given to `AUTH user password` (`default` for `AUTH password`).
    pub name: String,
    /// An argon2 PHC string; `None`: this user logs in with tokens only.
    pub password_hash: Option<String>,
    /// Hex SHA-256 hashes of the user's bearer tokens.
    pub token_hashes: Vec<String>,
    /// What the user may do; no rule: nothing.
    pub permissions: Vec<Permission>,
}

#[derive(Debug)]
struct User {
    name: Arc<str>,
    /// Checked to parse in [`Auth::new`]; kept as text (`PasswordHash` borrows).
    password_hash: Option<String>,
    tokens: Vec<[u8; 32]>,
    permissions: Vec<Permission>,
}

/// The server's users and their permissions.
#[derive(Debug, Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    required: bool,
    users: Vec<User>,
}

impl Auth {
    /// No users: everyone may do everything.
    pub fn open() -> Auth {
        Auth {
            inner: Arc::new(Inner {
                required: false,
                users: Vec::new(),
            }),
        }
    }

    /// The configured users; authentication is required from then on. An empty list is
    /// [`Auth::open`].
    pub fn new(users: Vec<UserConfig>) -> Result<Auth, AuthConfigError> {
        if users.is_empty() {
            return Ok(Auth::open());
        }
        let mut out: Vec<User> = Vec::with_capacity(users.len());
        for u in users {
            if u.name.is_empty() {
                return Err(AuthConfigError::EmptyName);
            }
            if out.iter().any(|o| *o.name == *u.name) {
                return Err(AuthConfigError::Duplicate { user: u.name });
            }
            if let Some(h) = &u.password_hash {
                PasswordHash::new(h).map_err(|e| AuthConfigError::BadPasswordHash {
                    user: u.name.clone(),
                    reason: e.to_string(),
                })?;
            }
            let mut tokens = Vec::with_capacity(u.token_hashes.len());
            for (index, t) in u.token_hashes.iter().enumerate() {
                tokens.push(
                    parse_sha256_hex(t).ok_or_else(|| AuthConfigError::BadTokenHash {
                        user: u.name.clone(),
                        index,
                    })?,
                );
            }
            if u.password_hash.is_none() && tokens.is_empty() {
                return Err(AuthConfigError::NoCredential { user: u.name });
            }
            if u.permissions.iter().any(|p| p.pattern.is_empty()) {
                return Err(AuthConfigError::EmptyPattern { user: u.name });
            }
            out.push(User {
                name: Arc::from(u.name.as_str()),
                password_hash: u.password_hash,
                tokens,
                permissions: u.permissions,
            });
        }
        Ok(Auth {
            inner: Arc::new(Inner {
                required: true,
                users: out,
            }),
        })
    }

    /// Whether requests must authenticate.
    pub fn is_required(&self) -> bool {
        self.inner.required
    }

    /// `AUTH user password` (Redis's `AUTH password` is the user `default`). With no users
    /// configured every login succeeds as anonymous (as a Redis without passwords answers
    /// `AUTH` for `default`); otherwise [`AuthError::WrongPass`] unless the password matches.
    ///
    /// Verifying an argon2 hash takes tens of milliseconds of CPU: async callers run this
    /// on the blocking pool.
    pub fn login(&self, user: &str, password: &[u8]) -> Result<Identity, AuthError> {
        if !self.inner.required {
            return Ok(Identity::anonymous());
        }
        let found = self.inner.users.iter().find(|u| &*u.name == user);
        let Some((u, hash)) = found.and_then(|u| u.password_hash.as_ref().map(|h| (u, h))) else {
            // An unknown user costs the same as a wrong password (one argon2 verification
            // against some configured hash, result ignored), so that the time taken does
            // not tell which user names exist.
            if let Some(Ok(h)) = self
                .inner
                .users
                .iter()
                .find_map(|u| u.password_hash.as_deref())
                .map(PasswordHash::new)
            {
                let _ = Argon2::default().verify_password(password, &h);
            }
            return Err(AuthError::WrongPass);
        };
        let Ok(parsed) = PasswordHash::new(hash) else {
            return Err(AuthError::WrongPass);
        };
        Argon2::default()
            .verify_password(password, &parsed)
            .map_err(|_| AuthError::WrongPass)?;
        Ok(Identity {
            user: Some(Arc::clone(&u.name)),
        })
    }

    /// The identity of the configured user `name`, for listeners whose clients cannot log in
    /// (dsmq's client sends no credentials: its listener acts as one configured user).
    pub fn identity_of(&self, name: &str) -> Option<Identity> {
        self.inner
            .users
            .iter()
            .find(|u| &*u.name == name)
            .map(|u| Identity {
                user: Some(Arc::clone(&u.name)),
            })
    }

    /// An HTTP `Authorization: Bearer <token>`: the user the token belongs to, or
    /// [`AuthError::WrongPass`].
    pub fn bearer(&self, token: &str) -> Result<Identity, AuthError> {
        if !self.inner.required {
            return Ok(Identity::anonymous());
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Every stored hash is compared, in constant time, so the time taken does not say
        // which user or how many bytes matched.
        let mut found: Option<&User> = None;
        for u in &self.inner.users {
            for t in &u.tokens {
                if bool::from(t.ct_eq(&digest)) {
                    found = Some(u);
                }
            }
        }
        found
            .map(|u| Identity {
                user: Some(Arc::clone(&u.name)),
            })
            .ok_or(AuthError::WrongPass)
    }

    /// Whether `who` may do `access` on the queue or topic `name` (for server-wide
    /// operations, `name` is `""`).
    pub fn check(&self, who: &Identity, access: Access, name: &str) -> Result<(), AuthError> {
        if !self.inner.required {
            return Ok(());
        }
        let Some(user) = who.user() else {
            return Err(AuthError::Required);
        };
        if self.may(who, access, name) {
            Ok(())
        } else {
            Err(AuthError::Denied {
                user: user.to_owned(),
                access,
                name: name.to_owned(),
            })
        }
    }

    /// [`Auth::check`] as a yes or no: for filtering lists (`QLIST`, `TLIST`) to the names
    /// `who` may read.
    pub fn may(&self, who: &Identity, access: Access, name: &str) -> bool {
        if !self.inner.required {
            return true;
        }
        let Some(user) = who.user() else {
            return false;
        };
        self.inner
            .users
            .iter()
            .find(|u| &*u.name == user)
            .is_some_and(|u| {
                u.permissions
                    .iter()
                    .any(|p| p.access >= access && glob(p.pattern.as_bytes(), name.as_bytes()))
            })
    }
}

/// 64 hex digits into 32 bytes.
fn parse_sha256_hex(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// An argon2id PHC string for `password` (argon2's default, OWASP-recommended parameters:
/// 19 MiB, 2 passes), with a random 16-byte salt: what `password_hash` holds.
pub fn hash_password(password: &[u8]) -> Result<String, AuthConfigError> {
    let salt: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt).map_err(|e| AuthConfigError::Hashing {
        reason: e.to_string(),
    })?;
    Argon2::default()
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthConfigError::Hashing {
            reason: e.to_string(),
        })
}

/// A new bearer token: 32 random bytes (from the OS-seeded generator) as 64 hex digits.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    hex(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The hex SHA-256 of a token: what the configuration stores for it.
pub fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// Glob match: `*` any run of bytes (also none), `?` exactly one byte, anything else itself.
/// Iterative, with one backtrack point (the last `*`), so it is linear in practice and never
/// recursive on hostile patterns.
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, n));
            p += 1;
        } else if let Some((sp, sn)) = star {
            p = sp + 1;
            n = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(pw: &str) -> String {
        hash_password(pw.as_bytes()).expect("hash")
    }

    fn perm(pattern: &str, access: Access) -> Permission {
        Permission {
            pattern: pattern.into(),
            access,
        }
    }

    fn auth() -> Auth {
        Auth::new(vec![
            UserConfig {
                name: "alice".into(),
                password_hash: Some(hash("s3cret")),
                token_hashes: vec![token_hash("tok-alice")],
                permissions: vec![perm("jobs.*", Access::Write), perm("audit", Access::Read)],
            },
            UserConfig {
                name: "root".into(),
                password_hash: Some(hash("rootpw")),
                token_hashes: vec![],
                permissions: vec![perm("*", Access::Admin)],
            },
            UserConfig {
                name: "bot".into(),
                password_hash: None,
                token_hashes: vec![token_hash("tok-bot")],
                permissions: vec![perm("q?", Access::Read)],
            },
        ])
        .expect("valid users")
    }

    #[test]
    fn glob_patterns() {
        assert!(glob(b"*", b""));
        assert!(glob(b"*", b"anything"));
        assert!(glob(b"jobs.*", b"jobs."));
        assert!(glob(b"jobs.*", b"jobs.email"));
        assert!(!glob(b"jobs.*", b"jobs"));
        assert!(!glob(b"jobs.*", b"xjobs.a"));
        assert!(glob(b"q?", b"q1"));
        assert!(!glob(b"q?", b"q"));
        assert!(!glob(b"q?", b"q12"));
        assert!(glob(b"*.dead", b"orders.dead"));
        assert!(glob(b"a*b*c", b"aXXbYYbc"));
        assert!(!glob(b"a*b*c", b"aXXbYYb"));
        assert!(glob(b"exact", b"exact"));
        assert!(!glob(b"exact", b"exactly"));
    }

    #[test]
    fn open_allows_everything_and_requires_nothing() {
        let a = Auth::open();
        assert!(!a.is_required());
        let anon = Identity::anonymous();
        assert_eq!(a.check(&anon, Access::Admin, "x"), Ok(()));
        assert!(a.may(&anon, Access::Admin, ""));
        assert!(!Auth::new(vec![]).expect("empty").is_required());
    }

    #[test]
    fn login_right_and_wrong() {
        let a = auth();
        assert!(a.is_required());
        let id = a.login("alice", b"s3cret").expect("right password");
        assert_eq!(id.user(), Some("alice"));
        assert_eq!(a.login("alice", b"wrong"), Err(AuthError::WrongPass));
        assert_eq!(a.login("nobody", b"s3cret"), Err(AuthError::WrongPass));
        // A token-only user cannot log in with a password.
        assert_eq!(a.login("bot", b"tok-bot"), Err(AuthError::WrongPass));
    }

    #[test]
    fn tokens() {
        let a = auth();
        assert_eq!(a.bearer("tok-alice").expect("token").user(), Some("alice"));
        assert_eq!(a.bearer("tok-bot").expect("token").user(), Some("bot"));
        assert_eq!(a.bearer("tok-nobody"), Err(AuthError::WrongPass));
        assert_eq!(a.bearer(""), Err(AuthError::WrongPass));
    }

    #[test]
    fn access_levels_and_patterns() {
        let a = auth();
        let alice = a.login("alice", b"s3cret").expect("login");
        // write on jobs.* implies read, not admin.
        assert_eq!(a.check(&alice, Access::Write, "jobs.email"), Ok(()));
        assert_eq!(a.check(&alice, Access::Read, "jobs.email"), Ok(()));
        let e = a
            .check(&alice, Access::Admin, "jobs.email")
            .expect_err("no admin");
        assert_eq!(e.code(), "NOPERM");
        assert_eq!(
            e.to_string().split(';').next(),
            Some("user alice has no admin permission on \"jobs.email\"")
        );
        // read only on audit.
        assert_eq!(a.check(&alice, Access::Read, "audit"), Ok(()));
        assert!(a.check(&alice, Access::Write, "audit").is_err());
        // nothing elsewhere, nor server-wide.
        assert!(!a.may(&alice, Access::Read, "orders"));
        assert!(!a.may(&alice, Access::Read, ""));
        // admin on * implies everything, server-wide included.
        let root = a.login("root", b"rootpw").expect("login");
        for acc in [Access::Read, Access::Write, Access::Admin] {
            assert!(a.may(&root, acc, "anything"));
            assert!(a.may(&root, acc, ""));
        }
        // anonymous: NOAUTH.
        assert_eq!(
            a.check(&Identity::anonymous(), Access::Read, "audit"),
            Err(AuthError::Required)
        );
        assert!(!a.may(&Identity::anonymous(), Access::Read, "audit"));
    }

    #[test]
    fn bad_configuration_is_refused() {
        let bad_hash = Auth::new(vec![UserConfig {
            name: "u".into(),
            password_hash: Some("plaintext".into()),
            ..UserConfig::default()
        }]);
        assert!(matches!(
            bad_hash,
            Err(AuthConfigError::BadPasswordHash { .. })
        ));
        let bad_token = Auth::new(vec![UserConfig {
            name: "u".into(),
            token_hashes: vec!["abc".into()],
            ..UserConfig::default()
        }]);
        assert!(matches!(
            bad_token,
            Err(AuthConfigError::BadTokenHash { .. })
        ));
        let none = Auth::new(vec![UserConfig {
            name: "u".into(),
            ..UserConfig::default()
        }]);
        assert!(matches!(none, Err(AuthConfigError::NoCredential { .. })));
        let twice = Auth::new(vec![
            UserConfig {
                name: "u".into(),
                token_hashes: vec![token_hash("a")],
                ..UserConfig::default()
            },
            UserConfig {
                name: "u".into(),
                token_hashes: vec![token_hash("b")],
                ..UserConfig::default()
            },
        ]);
        assert!(matches!(twice, Err(AuthConfigError::Duplicate { .. })));
    }

    #[test]
    fn made_hashes_and_tokens_work() {
        let h = hash("pw");
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert_ne!(h, hash("pw"), "a fresh salt each time");
        let t = new_token();
        assert_eq!(t.len(), 64);
        assert_ne!(t, new_token());
        let a = Auth::new(vec![UserConfig {
            name: "u".into(),
            password_hash: Some(h),
            token_hashes: vec![token_hash(&t)],
            permissions: vec![],
        }])
        .expect("valid");
        assert!(a.login("u", b"pw").is_ok());
        assert!(a.bearer(&t).is_ok());
        // No rules: authenticated, allowed nothing.
        let u = a.bearer(&t).expect("token");
        assert_eq!(
            a.check(&u, Access::Read, "q").map_err(|e| e.code()),
            Err("NOPERM")
        );
    }

    #[test]
    fn access_parse_and_order() {
        assert_eq!(Access::parse("ADMIN"), Some(Access::Admin));
        assert_eq!(Access::parse("read"), Some(Access::Read));
        assert_eq!(Access::parse("rw"), None);
        assert!(Access::Admin > Access::Write && Access::Write > Access::Read);
    }
}
