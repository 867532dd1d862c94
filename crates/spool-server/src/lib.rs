//! spool's queue server: the engine's queues on the network, over the Redis protocol (RESP2,
//! RESP3 after `HELLO 3`), so that any Redis client can use them (`redis-cli`, redis-py's
//! `execute_command`). Design: `shared/design/server.md`; commands, arguments, replies and
//! error codes: the queue-semantics research, section 8.
//!
//! The split is mini-redis's: the socket loop (`server`) decodes requests with `spool-resp`
//! and hands each one to the command layer (`cmd`, no sockets), which calls the engine and
//! builds the reply. The engine is synchronous; the command layer reaches it through its
//! future-returning calls (a push is answered once it is durable) or tokio's blocking pool.
//!
//! This is the first slice: connection commands and the work-queue core (`QPUSH`,
//! `QPUSHMANY`, `QGET`, `QACK`, `QNACK`, `QPOP`, `QPEEK`, `QSTATS`, `QLIST`). Topics, queue
//! management, authentication, TLS and the HTTP front end come next.

pub mod auth;
mod cmd;
pub mod error;
pub mod http;
pub mod limits;
mod server;
mod service;
pub mod wait;

pub use cmd::{execute, start, ConnState, Durable, Reply};
pub use server::{
    Server, ServerConfig, ServerError, MAX_CONNECTIONS_DEFAULT, WRITE_TIMEOUT_DEFAULT,
};
pub use service::{Policy, Service};
