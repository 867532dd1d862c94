//! The RESP listener: one tokio task per connection, each a thin loop over the codec and the
//! command layer. It reads what the socket has, decodes **every** complete request in the
//! buffer (pipelining), runs them in order and writes all their replies in one write.
//!
//! A request with an oversize argument is answered `-TOOBIG` and the connection goes on (the
//! decoder dropped the bytes); a malformed frame is answered `-ERR Protocol error: ...` and
//! that connection alone is closed. Over `max_connections`, a new connection gets Redis's
//! `-ERR max number of clients reached` and is closed.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use spool_resp::{encode, request_args, Decoder, Frame, Limits, Protocol};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::cmd::{execute, plain_push, start, ConnState, PushRun, Reply, Started};
use crate::service::Service;

/// Default [`ServerConfig::max_connections`]: far above what a host's workers open, far
/// below the file descriptors a process gets.
pub const MAX_CONNECTIONS_DEFAULT: usize = 10_000;
/// Default [`ServerConfig::write_timeout`]: far longer than any healthy client needs to take
/// a reply, short enough that a stuck one frees its slot.
pub const WRITE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Bytes a connection reads ahead while one of its requests runs (see `serve`).
const READ_AHEAD_MAX: usize = 1 << 20;
/// Bytes read from a socket at a time (and the read buffer's initial size).
const READ_CHUNK: usize = 16 << 10;
/// How long [`Server::shutdown`] lets connections finish the request they are running.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Writes of one connection started and not yet answered: bounds what a pipelining client
/// holds in memory (and in one group commit's wait).
const PENDING_MAX: usize = 1024;
/// Replies gathered before they are written out mid-burst: bounds the reply buffer of a
/// pipelined burst of large reads.
const OUT_FLUSH_BYTES: usize = 1 << 20;

/// What [`Server::start`] needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on (port 0: any free port; see [`Server::local_addr`]).
    pub bind: SocketAddr,
    /// Connections served at once; more are refused with an error reply.
    pub max_connections: usize,
    /// What a peer may send (the largest payload is `limits.bulk_max`).
    pub limits: Limits,
    /// How long a reply may take to be written: a client that stops reading (its socket
    /// buffer full) is disconnected after this, so it cannot hold a connection slot and its
    /// replies' memory forever. Default 30 s.
    pub write_timeout: Duration,
    /// A connection that sent nothing for this long while no request of it was running is
    /// closed. `None` (the default): never, as Redis's `timeout 0`: a worker blocked on
    /// its own work between two `QGET`s is not idle by any fault of its own, and the
    /// connection limit, not this, is what protects the server from hoarded connections.
    pub idle_timeout: Option<Duration>,
    /// TLS on every connection (`None`: plain TCP).
    pub tls: Option<crate::tls::Tls>,
}

impl ServerConfig {
    /// Defaults for `bind`.
    pub fn new(bind: SocketAddr) -> ServerConfig {
        ServerConfig {
            bind,
            max_connections: MAX_CONNECTIONS_DEFAULT,
            limits: Limits::default(),
            write_timeout: WRITE_TIMEOUT_DEFAULT,
            idle_timeout: None,
            tls: None,
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
    /// Binds `config.bind` and starts serving `svc` (on the current tokio runtime).
    pub async fn start(config: ServerConfig, svc: Service) -> Result<Server, ServerError> {
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
        let task = tokio::spawn(accept_loop(listener, config, svc, stopped));
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

    /// Stops accepting and closes every connection: idle ones at once, one running a request
    /// after it answered, or after a grace of 2 s (a `QGET ... WAIT`); then returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    config: ServerConfig,
    svc: Service,
    mut stopped: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let refusing = Arc::new(Semaphore::new(REFUSING_MAX));
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
            // The error goes out over TLS after the handshake when the listener speaks TLS;
            // a flood past the limit costs at most `REFUSING_MAX` refusals at a time.
            if let Ok(r) = refusing.clone().try_acquire_owned() {
                let tls = config.tls.clone();
                conns.spawn(async move {
                    match tls {
                        None => refuse(socket).await,
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(socket).await {
                                refuse(stream).await;
                            }
                        }
                    }
                    drop(r);
                });
            }
            continue;
        };
        let id = ids.fetch_add(1, Ordering::Relaxed);
        let svc = svc.clone();
        let stopped = stopped.clone();
        let limits = config.limits;
        let timeouts = Timeouts {
            write: config.write_timeout,
            idle: config.idle_timeout,
        };
        let tls = config.tls.clone();
        conns.spawn(async move {
            let served = match tls {
                None => serve(socket, svc, id, limits, timeouts, stopped).await,
                // A failed handshake ends this connection only.
                Some(tls) => match tls.accept(socket).await {
                    Ok(stream) => serve(stream, svc, id, limits, timeouts, stopped).await,
                    Err(e) => Err(e),
                },
            };
            if let Err(e) = served {
                tracing::debug!("connection {id} from {peer}: {e}");
            }
            drop(permit);
        });
    }
    drop(listener);
    // Idle connections end at once; one running a request gets a grace period to answer
    // (a push being made durable). A `QGET ... WAIT` may block for up to a minute: it is
    // cut off after the grace (its lease, if it takes one, expires after its VT).
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::info!(
            "{} connection(s) still busy after the grace: closed",
            conns.len()
        );
        conns.shutdown().await;
    }
}

/// Refusals being written at once; past this an over-limit connection is just closed.
const REFUSING_MAX: usize = 64;

/// Redis's own reply to a client past `maxclients`, then close.
async fn refuse<S: AsyncWrite + Unpin>(mut socket: S) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = socket
            .write_all(b"-ERR max number of clients reached\r\n")
            .await;
        let _ = socket.shutdown().await;
    })
    .await;
}

/// A connection's timeouts ([`ServerConfig::write_timeout`], [`ServerConfig::idle_timeout`]).
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    write: Duration,
    idle: Option<Duration>,
}

/// One connection (plain TCP or TLS): read, decode every complete request, run them, write
/// the replies.
async fn serve<S>(
    mut socket: S,
    svc: Service,
    id: u64,
    limits: Limits,
    timeouts: Timeouts,
    mut stopped: watch::Receiver<bool>,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let write_timeout = timeouts.write;
    let mut conn = ConnState::open(id, &svc);
    conn.arg_max = limits.bulk_max;
    let mut decoder = Decoder::new(limits);
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut out = BytesMut::new();
    // Writes started (applied) and not yet answered, in request order: a pipelined burst of
    // pushes is applied at once and shares one group commit; their replies follow in order.
    let mut pending = Pending::default();
    // Consecutive plain `QPUSH`es to one queue not applied yet: applied as one transaction
    // (`cmd/run.rs`) when something else comes, or the buffer has no more requests.
    let mut run: Option<PushRun> = None;
    loop {
        let mut close = false;
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => match request_args(frame) {
                    Ok(args) if plain_push(&args).is_some() => {
                        let rest = match run.as_mut() {
                            Some(r) => r.try_add(args).err(),
                            None => Some(args),
                        };
                        if let Some(args) = rest {
                            if let Some(full) = run.take() {
                                pending.push(full.start(&svc, &conn));
                            }
                            run = Some(PushRun::new(args));
                        }
                    }
                    Ok(args) => {
                        if let Some(r) = run.take() {
                            pending.push(r.start(&svc, &conn));
                        }
                        if let Some(d) = start(&svc, &conn, &args) {
                            pending.push(Started::Each(vec![d]));
                        } else {
                            // Everything else runs after the writes before it are durable.
                            pending.answer(conn.protocol, &mut out).await;
                            // While it runs (a blocking read may take a minute), the socket
                            // is watched: a client that went away cancels it, so a wait takes
                            // nothing for nobody. What the client sends meanwhile is kept.
                            let reply = {
                                let run_it = execute(&svc, &mut conn, args);
                                tokio::pin!(run_it);
                                loop {
                                    buf.reserve(READ_CHUNK);
                                    tokio::select! {
                                        biased;
                                        r = &mut run_it => break Some(r),
                                        r = socket.read_buf(&mut buf), if buf.len() < READ_AHEAD_MAX => {
                                            if matches!(r, Ok(0) | Err(_)) {
                                                break None;
                                            }
                                        }
                                    }
                                }
                            };
                            let Some(reply) = reply else {
                                tracing::debug!(
                                    "connection {id}: closed by the client during a request"
                                );
                                return Ok(());
                            };
                            encode(&reply, conn.protocol, &mut out);
                            if conn.closing {
                                close = true;
                                break;
                            }
                        }
                    }
                    Err(e) => {
                        if let Some(r) = run.take() {
                            pending.push(r.start(&svc, &conn));
                        }
                        pending.answer(conn.protocol, &mut out).await;
                        protocol_error(&e, conn.protocol, &mut out);
                        close = true;
                        break;
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    if let Some(r) = run.take() {
                        pending.push(r.start(&svc, &conn));
                    }
                    pending.answer(conn.protocol, &mut out).await;
                    protocol_error(&e, conn.protocol, &mut out);
                    close = true;
                    break;
                }
            }
            if pending.len >= PENDING_MAX {
                pending.answer(conn.protocol, &mut out).await;
            }
            if out.len() >= OUT_FLUSH_BYTES {
                write(&mut socket, &out, write_timeout).await?;
                out.clear();
            }
        }
        if let Some(r) = run.take() {
            pending.push(r.start(&svc, &conn));
        }
        pending.answer(conn.protocol, &mut out).await;
        if !out.is_empty() {
            write(&mut socket, &out, write_timeout).await?;
            out.clear();
        }
        if close {
            return socket.shutdown().await;
        }
        buf.reserve(READ_CHUNK);
        // Waiting here, the connection runs nothing: this is where it can be idle.
        let idle = async {
            match timeouts.idle {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        let n = tokio::select! {
            _ = stopped.changed() => return Ok(()),
            () = idle => {
                tracing::debug!("connection {id}: idle for the idle timeout: closed");
                return Ok(());
            }
            r = socket.read_buf(&mut buf) => r?,
        };
        if n == 0 {
            return Ok(());
        }
    }
}

/// Writes `out`, or fails once `timeout` passes (a client that does not read).
async fn write<S: AsyncWrite + Unpin>(
    socket: &mut S,
    out: &[u8],
    timeout: Duration,
) -> std::io::Result<()> {
    tokio::time::timeout(timeout, socket.write_all(out))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client did not read its replies within the write timeout",
            )
        })?
}

/// Writes started and not yet answered, in request order.
#[derive(Default)]
struct Pending {
    started: VecDeque<Started>,
    /// Requests in `started`.
    len: usize,
}

impl Pending {
    fn push(&mut self, s: Started) {
        self.len += match &s {
            Started::Batch(_, n) => *n,
            Started::Each(v) => v.len(),
        };
        self.started.push_back(s);
    }

    /// Waits for the started writes, in order, and encodes their replies.
    async fn answer(&mut self, proto: Protocol, out: &mut BytesMut) {
        let encode_all = |replies: Vec<Reply>, out: &mut BytesMut| {
            for r in &replies {
                encode(r, proto, out);
            }
        };
        while let Some(s) = self.started.pop_front() {
            match s {
                Started::Batch(f, _) => encode_all(f.await, out),
                Started::Each(v) => {
                    for d in v {
                        let reply = d.await;
                        encode(&reply, proto, out);
                    }
                }
            }
        }
        self.len = 0;
    }
}

fn protocol_error(e: &spool_resp::RespError, proto: Protocol, out: &mut BytesMut) {
    let reply = Frame::Error(Bytes::from(format!("ERR {e}")));
    encode(&reply, proto, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    fn req(words: &[&str]) -> Vec<u8> {
        let mut v = format!("*{}\r\n", words.len()).into_bytes();
        for w in words {
            v.extend_from_slice(format!("${}\r\n{w}\r\n", w.len()).as_bytes());
        }
        v
    }

    async fn server(max_connections: usize) -> Server {
        server_with(max_connections, WRITE_TIMEOUT_DEFAULT).await
    }

    async fn server_with(max_connections: usize, write_timeout: Duration) -> Server {
        let mut config = ServerConfig::new("127.0.0.1:0".parse().expect("addr"));
        config.max_connections = max_connections;
        config.write_timeout = write_timeout;
        let store = spool_engine::Store::in_memory().expect("store");
        Server::start(config, Service::open(store))
            .await
            .expect("start")
    }

    /// Reads `n` replies (RESP2).
    async fn replies(c: &mut TcpStream, n: usize) -> Vec<Frame> {
        let mut d = Decoder::new(Limits::default());
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        while got.len() < n {
            while let Some(f) = d.decode(&mut buf).expect("valid RESP") {
                got.push(f);
            }
            if got.len() < n {
                let k = c.read_buf(&mut buf).await.expect("read");
                assert!(k > 0, "closed after {} replies: {got:?}", got.len());
            }
        }
        got
    }

    #[tokio::test]
    async fn a_pipelined_burst_is_answered_in_order() {
        let s = server(10).await;
        let mut c = TcpStream::connect(s.local_addr()).await.expect("connect");
        let mut burst = Vec::new();
        for i in 0..100 {
            burst.extend(req(&["QPUSH", "q", &format!("m{i}")]));
        }
        burst.extend(req(&["QGET", "q", "COUNT", "1000"]));
        burst.extend(req(&["PING"]));
        c.write_all(&burst).await.expect("write");
        let got = replies(&mut c, 102).await;
        for (i, r) in got[..100].iter().enumerate() {
            assert_eq!(*r, Frame::Bulk(Bytes::from((i + 1).to_string())));
        }
        let Frame::Array(leased) = &got[100] else {
            panic!("QGET: {:?}", got[100]);
        };
        assert_eq!(
            leased.len(),
            100,
            "every push before the QGET is visible to it"
        );
        assert_eq!(got[101], Frame::Simple(Bytes::from_static(b"PONG")));
        s.shutdown().await;
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_and_a_busy_one_is_not() {
        let mut config = ServerConfig::new("127.0.0.1:0".parse().expect("addr"));
        config.idle_timeout = Some(Duration::from_millis(300));
        let store = spool_engine::Store::in_memory().expect("store");
        let s = Server::start(config, Service::open(store))
            .await
            .expect("start");
        // A request running longer than the idle timeout (a blocking read) is not idleness.
        let mut busy = TcpStream::connect(s.local_addr()).await.expect("connect");
        busy.write_all(&req(&["QGET", "q", "WAIT", "1000"]))
            .await
            .expect("write");
        assert_eq!(replies(&mut busy, 1).await.len(), 1);
        // Then silence: the server closes it (read returns end of stream).
        let mut rest = Vec::new();
        let n = busy.read_to_end(&mut rest).await.expect("read");
        assert_eq!(n, 0, "closed without a reply");
        s.shutdown().await;
    }

    fn bulk(s: &str) -> Frame {
        Frame::Bulk(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn code(f: &Frame) -> String {
        match f {
            Frame::Error(e) => String::from_utf8_lossy(e)
                .split(' ')
                .next()
                .unwrap_or_default()
                .to_string(),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    /// Consecutive pipelined QPUSHes are applied as one batch; when the batch would be
    /// refused as a whole, each gets the answer it would have had alone, in order.
    #[tokio::test]
    async fn a_pipelined_run_of_pushes_gets_each_its_own_answer() {
        let s = server(10).await;
        let mut c = TcpStream::connect(s.local_addr()).await.expect("connect");
        let mut setup = req(&["QCREATE", "small", "MAXLEN", "5"]);
        setup.extend(req(&["QCREATE", "tiny", "MAXSIZE", "4"]));
        c.write_all(&setup).await.expect("write");
        assert_eq!(replies(&mut c, 2).await, vec![Frame::Integer(1); 2]);

        let mut burst = Vec::new();
        for i in 0..8 {
            burst.extend(req(&["QPUSH", "small", &format!("m{i}")]));
        }
        for p in ["ok", "too long", "fine"] {
            burst.extend(req(&["QPUSH", "tiny", p]));
        }
        burst.extend(req(&["QPUSH", "bad name", "x"]));
        burst.extend(req(&["QPUSH", "other", "a"]));
        burst.extend(req(&["QPUSH", "other", "b"]));
        c.write_all(&burst).await.expect("write");
        let got = replies(&mut c, 14).await;
        // MAXLEN 5: the first five are stored, the rest are FULL, as one by one.
        for (i, r) in got[..5].iter().enumerate() {
            assert_eq!(*r, bulk(&(i + 1).to_string()), "push {i}");
        }
        for r in &got[5..8] {
            assert_eq!(code(r), "FULL");
        }
        // MAXSIZE 4: only the long payload is refused.
        assert!(matches!(got[8], Frame::Bulk(_)), "{:?}", got[8]);
        assert_eq!(code(&got[9]), "TOOBIG");
        assert!(matches!(got[10], Frame::Bulk(_)), "{:?}", got[10]);
        assert_eq!(code(&got[11]), "BADNAME");
        assert!(matches!(got[12], Frame::Bulk(_)) && matches!(got[13], Frame::Bulk(_)));

        c.write_all(&req(&["QPEEK", "small", "COUNT", "10"]))
            .await
            .expect("write");
        let Frame::Array(stored) = replies(&mut c, 1).await.remove(0) else {
            panic!("QPEEK");
        };
        let payloads: Vec<Frame> = stored
            .into_iter()
            .map(|r| match r {
                Frame::Array(mut f) => f.remove(2),
                other => panic!("{other:?}"),
            })
            .collect();
        let want: Vec<Frame> = (0..5).map(|i| bulk(&format!("m{i}"))).collect();
        assert_eq!(payloads, want, "in push order");
        s.shutdown().await;
    }

    /// A `QGET ... WAIT` whose client went away is cancelled: a message pushed afterwards is
    /// not leased to nobody.
    #[tokio::test]
    async fn a_wait_whose_client_left_takes_nothing() {
        let s = server(10).await;
        let mut waiter = TcpStream::connect(s.local_addr()).await.expect("connect");
        waiter
            .write_all(&req(&["QGET", "q", "WAIT", "60000"]))
            .await
            .expect("write");
        // Half-close: the server reads EOF, gives up the wait and closes its side, which
        // this client then sees (so the push below surely comes after).
        waiter.shutdown().await.expect("shutdown");
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(15), waiter.read_to_end(&mut rest))
            .await
            .expect("the server closed the connection")
            .expect("read");
        assert_eq!(n, 0, "no reply to a cancelled wait: {rest:?}");

        let mut c = TcpStream::connect(s.local_addr()).await.expect("connect");
        let mut burst = req(&["QPUSH", "q", "for someone"]);
        burst.extend(req(&["QSTATS", "q"]));
        c.write_all(&burst).await.expect("write");
        let got = replies(&mut c, 2).await;
        let Frame::Array(stats) = &got[1] else {
            panic!("QSTATS: {:?}", got[1]);
        };
        let field = |k: &str| {
            stats
                .chunks(2)
                .find(|kv| kv[0] == bulk(k))
                .map(|kv| kv[1].clone())
        };
        assert_eq!(field("leased"), Some(Frame::Integer(0)));
        assert_eq!(field("visible"), Some(Frame::Integer(1)));
        s.shutdown().await;
    }

    #[tokio::test]
    async fn connections_over_the_limit_are_refused_with_redis_wording() {
        let s = server(1).await;
        let mut first = TcpStream::connect(s.local_addr()).await.expect("connect");
        first.write_all(&req(&["PING"])).await.expect("write");
        replies(&mut first, 1).await;
        let mut second = TcpStream::connect(s.local_addr()).await.expect("connect");
        let mut text = String::new();
        second.read_to_string(&mut text).await.expect("read");
        assert_eq!(text, "-ERR max number of clients reached\r\n");
        // The first one is still served.
        first.write_all(&req(&["PING"])).await.expect("write");
        assert_eq!(
            replies(&mut first, 1).await,
            vec![Frame::Simple(Bytes::from_static(b"PONG"))]
        );
        s.shutdown().await;
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_disconnected_and_its_slot_freed() {
        let s = server_with(1, Duration::from_millis(200)).await;
        let mut c = TcpStream::connect(s.local_addr()).await.expect("connect");
        let big = "x".repeat(1 << 20);
        c.write_all(&req(&["QPUSH", "big", &big]))
            .await
            .expect("write");
        replies(&mut c, 1).await;
        // 64 MiB of replies asked for and never read: more than any socket buffers hold.
        let mut peeks = Vec::new();
        for _ in 0..64 {
            peeks.extend(req(&["QPEEK", "big"]));
        }
        c.write_all(&peeks).await.expect("write");
        // The slot comes back: a new client is served (not refused) once the server gave up.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let mut d = TcpStream::connect(s.local_addr()).await.expect("connect");
            d.write_all(&req(&["PING"])).await.expect("write");
            let mut buf = BytesMut::new();
            let _ = d.read_buf(&mut buf).await;
            if &buf[..] == b"+PONG\r\n" {
                break;
            }
            assert_eq!(&buf[..], b"-ERR max number of clients reached\r\n");
            assert!(
                tokio::time::Instant::now() < deadline,
                "the stuck client kept its slot"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(c);
        s.shutdown().await;
    }
}
