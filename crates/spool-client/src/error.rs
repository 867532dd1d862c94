//! The client's error: one variant per error code of the queue-semantics research, section 8.5
//! (each carrying the server's message), and the failures of the connection itself.

use std::time::Duration;

/// What went wrong with a request.
///
/// The server's refusals (`NoQueue` to `NoPerm`, `Server`) leave the connection usable and
/// mean the request was **not** applied. [`Error::Disconnected`] says whether a request whose
/// connection broke may have been applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `NOQUEUE`: the queue does not exist (and the server does not create queues on write, or
    /// the operation is a management one).
    #[error("NOQUEUE {0}")]
    NoQueue(String),
    /// `NOTOPIC`: the topic does not exist.
    #[error("NOTOPIC {0}")]
    NoTopic(String),
    /// `BADNAME`: a queue or topic name is not 1-128 characters of `A-Z a-z 0-9 . _ -`
    /// starting with a letter or digit.
    #[error("BADNAME {0}")]
    BadName(String),
    /// `TOOBIG`: the payload is larger than the queue's or the server's limit (named in the
    /// message).
    #[error("TOOBIG {0}")]
    TooBig(String),
    /// `BADARG`: a malformed or out-of-range argument (the message names it and the range).
    #[error("BADARG {0}")]
    BadArg(String),
    /// `NOTFOUND`: the message is not there (acked, expired, purged, never existed). An ack
    /// answered `NotFound` after a retry usually means the first attempt succeeded.
    #[error("NOTFOUND {0}")]
    NotFound(String),
    /// `LEASELOST`: the receipt is stale: the message was leased again or released (nack)
    /// since. Another worker owns it now; do not ack it.
    #[error("LEASELOST {0}")]
    LeaseLost(String),
    /// `EXISTS`: the queue or topic exists with a different configuration (change it with
    /// [`Client::configure`](crate::Client::configure)).
    #[error("EXISTS {0}")]
    Exists(String),
    /// `NODLQ`: the queue has no dead-letter queue.
    #[error("NODLQ {0}")]
    NoDlq(String),
    /// `FULL`: the queue is at its `MAXLEN`, or the server at a memory or disk limit.
    #[error("FULL {0}")]
    Full(String),
    /// `NOAUTH`: the server requires authentication: set
    /// [`Options::user`](crate::Options::user) and [`Options::password`](crate::Options::password).
    #[error("NOAUTH {0}")]
    NoAuth(String),
    /// `WRONGPASS`: wrong user name or password.
    #[error("WRONGPASS {0}")]
    WrongPass(String),
    /// `NOPERM`: the user may not do this on this queue or topic.
    #[error("NOPERM {0}")]
    NoPerm(String),
    /// Any other error reply (`ERR ...`), as the server wrote it.
    #[error("the server answered: {0}")]
    Server(String),
    /// Connecting failed (refused, unreachable, name not resolved). The request was not sent.
    #[error("cannot connect to {addr}: {source}")]
    Io {
        /// The address of [`Options::addr`](crate::Options::addr).
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server's reply is not what the command returns (a client/server version mismatch).
    /// The connection itself is still in step.
    #[error("unexpected reply from the server: {0}; is the server a spool of the same version?")]
    Protocol(String),
    /// The client was closed with [`Client::close`](crate::Client::close).
    #[error("the client was closed; create a new one with Client::connect")]
    Closed,
    /// The connection broke before the reply came. When `maybe_applied` is `false` the
    /// request was never written: retrying it is safe. When `true` it was sent and the server
    /// may have applied it: a retried push may store the message twice (delivery is
    /// at-least-once anyway), a retried ack may answer `NotFound`.
    #[error("{}", disconnected(*.maybe_applied, .reason))]
    Disconnected {
        /// Whether the server may have applied the request.
        maybe_applied: bool,
        /// What broke the connection.
        reason: String,
    },
    /// Connecting (TCP, TLS and the `HELLO`/`AUTH` handshake) took longer than
    /// [`Options::connect_timeout`](crate::Options::connect_timeout).
    #[error(
        "connecting to {addr} took longer than {after:?}; is the server running and reachable?"
    )]
    Timeout {
        /// The address.
        addr: String,
        /// The timeout.
        after: Duration,
    },
    /// The TLS options could not be used (a certificate or key file, the server name), or
    /// the TLS handshake failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// The options are not usable (an address without a port, ...).
    #[error("invalid client options: {0}")]
    Config(String),
}

fn disconnected(maybe_applied: bool, reason: &str) -> String {
    if maybe_applied {
        format!(
            "the connection to the server was lost ({reason}) after the request was sent: \
             it may have been applied; check before retrying it"
        )
    } else {
        format!(
            "the connection to the server was lost ({reason}) before the request was sent: \
             it was not applied and can be retried"
        )
    }
}

impl Error {
    /// The error of an error reply `CODE message` (`-` stripped).
    pub(crate) fn from_reply(text: &[u8]) -> Error {
        let text = String::from_utf8_lossy(text).into_owned();
        let (code, msg) = match text.split_once(' ') {
            Some((c, m)) => (c, m.to_owned()),
            None => (text.as_str(), String::new()),
        };
        match code {
            "NOQUEUE" => Error::NoQueue(msg),
            "NOTOPIC" => Error::NoTopic(msg),
            "BADNAME" => Error::BadName(msg),
            "TOOBIG" => Error::TooBig(msg),
            "BADARG" => Error::BadArg(msg),
            "NOTFOUND" => Error::NotFound(msg),
            "LEASELOST" => Error::LeaseLost(msg),
            "EXISTS" => Error::Exists(msg),
            "NODLQ" => Error::NoDlq(msg),
            "FULL" => Error::Full(msg),
            "NOAUTH" => Error::NoAuth(msg),
            "WRONGPASS" => Error::WrongPass(msg),
            "NOPERM" => Error::NoPerm(msg),
            _ => Error::Server(text),
        }
    }

    /// The section 8.5 code of a server refusal (`"LEASELOST"`, ...; `"ERR"` and the like for
    /// [`Error::Server`]), `None` for a failure of the connection or the client.
    pub fn code(&self) -> Option<&str> {
        Some(match self {
            Error::NoQueue(_) => "NOQUEUE",
            Error::NoTopic(_) => "NOTOPIC",
            Error::BadName(_) => "BADNAME",
            Error::TooBig(_) => "TOOBIG",
            Error::BadArg(_) => "BADARG",
            Error::NotFound(_) => "NOTFOUND",
            Error::LeaseLost(_) => "LEASELOST",
            Error::Exists(_) => "EXISTS",
            Error::NoDlq(_) => "NODLQ",
            Error::Full(_) => "FULL",
            Error::NoAuth(_) => "NOAUTH",
            Error::WrongPass(_) => "WRONGPASS",
            Error::NoPerm(_) => "NOPERM",
            Error::Server(text) => text.split(' ').next().unwrap_or_default(),
            _ => return None,
        })
    }

    /// Whether the server refused the request (it was not applied; the connection is fine).
    pub fn is_refusal(&self) -> bool {
        self.code().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_maps_to_its_variant_with_the_message() {
        for code in [
            "NOQUEUE",
            "NOTOPIC",
            "BADNAME",
            "TOOBIG",
            "BADARG",
            "NOTFOUND",
            "LEASELOST",
            "EXISTS",
            "NODLQ",
            "FULL",
            "NOAUTH",
            "WRONGPASS",
            "NOPERM",
        ] {
            let e = Error::from_reply(format!("{code} some words").as_bytes());
            assert_eq!(e.code(), Some(code));
            assert_eq!(e.to_string(), format!("{code} some words"));
            assert!(!matches!(e, Error::Server(_)), "{code}");
        }
    }

    #[test]
    fn other_errors_keep_the_whole_text() {
        let e = Error::from_reply(b"ERR unknown command 'X'");
        assert!(matches!(&e, Error::Server(t) if t == "ERR unknown command 'X'"));
        assert_eq!(e.code(), Some("ERR"));
        let e = Error::from_reply(b"");
        assert!(matches!(&e, Error::Server(t) if t.is_empty()));
    }

    #[test]
    fn disconnected_says_whether_a_retry_is_safe() {
        let sent = Error::Disconnected {
            maybe_applied: true,
            reason: "reset".into(),
        };
        assert!(sent.to_string().contains("may have been applied"));
        let not_sent = Error::Disconnected {
            maybe_applied: false,
            reason: "reset".into(),
        };
        assert!(not_sent.to_string().contains("can be retried"));
        assert_eq!(not_sent.code(), None);
    }
}
