//! The RESP listener: one tokio task per connection, each a thin loop over the codec and the
//! command layer. It reads what the socket has, decodes **every** complete request in the
//! buffer (pipelining), runs them in order and writes all their replies in one write.
//!
//! A request with an oversize argument is answered `-TOOBIG` and the connection goes on (the
//! decoder dropped the bytes); a malformed frame is answered `-ERR Protocol error: ...` and
//! that connection alone is closed. Over `max_connections`, a new connection gets Redis's
//! `-ERR max number of clients reached` and is closed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use spool_engine::Store;
use spool_resp::{encode, request_args, Decoder, Frame, Limits, Protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::cmd::{execute, ConnState};

/// Default [`ServerConfig::max_connections`]: far above what a host's workers open, far
/// below the file descriptors a process gets.
pub const MAX_CONNECTIONS_DEFAULT: usize = 10_000;
/// Bytes read from a socket at a time (and the read buffer's initial size).
const READ_CHUNK: usize = 16 << 10;

/// What [`Server::start`] needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on (port 0: any free port; see [`Server::local_addr`]).
    pub bind: SocketAddr,
    /// Connections served at once; more are refused with an error reply.
    pub max_connections: usize,
    /// What a peer may send (the largest payload is `limits.bulk_max`).
    pub limits: Limits,
}

impl ServerConfig {
    /// Defaults for `bind`.
    pub fn new(bind: SocketAddr) -> ServerConfig {
        ServerConfig {
            bind,
            max_connections: MAX_CONNECTIONS_DEFAULT,
            limits: Limits::default(),
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}; pick another address with --bind")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running RESP server. Dropping it does not stop it: call [`Server::shutdown`].
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Binds `config.bind` and starts serving `store` (on the current tokio runtime).
    pub async fn start(config: ServerConfig, store: Store) -> Result<Server, ServerError> {
        let listener =
            TcpListener::bind(config.bind)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.bind,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: config.bind,
            source,
        })?;
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, config, store, stopped));
        Ok(Server {
            local_addr,
            stop,
            task,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, closes every connection (a request being run finishes first: a push
    /// being made durable is not cut in half) and waits for the tasks to end.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    config: ServerConfig,
    store: Store,
    mut stopped: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let ids = AtomicU64::new(1);
    let mut conns = JoinSet::new();
    loop {
        let (socket, peer) = tokio::select! {
            _ = stopped.changed() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: the listener itself is fine.
                    tracing::warn!("accept failed: {e}");
                    tokio::task::yield_now().await;
                    continue;
                }
            },
        };
        // Reap finished connections so the set does not grow.
        while conns.try_join_next().is_some() {}
        let _ = socket.set_nodelay(true);
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            conns.spawn(refuse(socket));
            continue;
        };
        let id = ids.fetch_add(1, Ordering::Relaxed);
        let store = store.clone();
        let stopped = stopped.clone();
        let limits = config.limits;
        conns.spawn(async move {
            if let Err(e) = serve(socket, store, id, limits, stopped).await {
                tracing::debug!("connection {id} from {peer}: {e}");
            }
            drop(permit);
        });
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

async fn refuse(mut socket: TcpStream) {
    let _ = socket
        .write_all(b"-ERR max number of clients reached\r\n")
        .await;
}

/// One connection: read, decode every complete request, run them, write the replies.
async fn serve(
    mut socket: TcpStream,
    store: Store,
    id: u64,
    limits: Limits,
    mut stopped: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut conn = ConnState::new(id);
    let mut decoder = Decoder::new(limits);
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut out = BytesMut::new();
    loop {
        let mut close = false;
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => match request_args(frame) {
                    Ok(args) => {
                        let reply = execute(&store, &mut conn, args).await;
                        encode(&reply, conn.protocol, &mut out);
                        if conn.closing {
                            close = true;
                            break;
                        }
                    }
                    Err(e) => {
                        protocol_error(&e, conn.protocol, &mut out);
                        close = true;
                        break;
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    protocol_error(&e, conn.protocol, &mut out);
                    close = true;
                    break;
                }
            }
        }
        if !out.is_empty() {
            socket.write_all(&out).await?;
            out.clear();
        }
        if close {
            return socket.shutdown().await;
        }
        buf.reserve(READ_CHUNK);
        let n = tokio::select! {
            _ = stopped.changed() => return Ok(()),
            r = socket.read_buf(&mut buf) => r?,
        };
        if n == 0 {
            return Ok(());
        }
    }
}

fn protocol_error(e: &spool_resp::RespError, proto: Protocol, out: &mut BytesMut) {
    let reply = Frame::Error(Bytes::from(format!("ERR {e}")));
    encode(&reply, proto, out);
}
