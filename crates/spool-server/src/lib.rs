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
//! Commands: the connection commands, every work-queue operation of section 8.3 (messages
//! in `cmd/queue.rs`, management in `cmd/admin.rs`) and every topic operation of section 8.4
//! (`cmd/topic.rs`); the reference is `docs/server.md`. What requests share beyond the store
//! (topic subscribers, the policy's gate on creating queues) is `registry`.

pub mod auth;
mod cmd;
pub mod dsmq;
pub mod error;
pub mod http;
pub mod limits;
mod manage;
pub mod registry;
mod server;
mod service;
pub mod tls;
pub mod wait;

pub use cmd::{execute, start, ConnState, Durable, Reply, TopicCursors};
pub use manage::Manage;
pub use server::{
    Server, ServerConfig, ServerError, MAX_CONNECTIONS_DEFAULT, WRITE_TIMEOUT_DEFAULT,
};
pub use service::{Policy, Service};
