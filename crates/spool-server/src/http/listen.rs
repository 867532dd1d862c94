//! The HTTP listener's connections: our own accept loop over hyper's HTTP/1.1 connection
//! instead of `axum::serve`, because `axum::serve` sets none of the limits a server facing
//! the network needs (it uses hyper's defaults and no timer):
//!
//! - a connection limit: past [`HttpConfig::max_connections`] a connection gets
//!   `503 BUSY` (with `Retry-After`) and is closed;
//! - a header-size limit ([`HttpConfig::header_max`]): hyper answers `431` above it;
//! - a header timeout ([`HttpConfig::header_timeout`]): a client must send a request's
//!   headers within it, counted from when the connection is ready for a request, so it is
//!   also how long an idle keep-alive connection stays open;
//! - a slow-client (write) timeout ([`HttpConfig::write_timeout`]): [`Timed`] fails a
//!   write still pending after it, so a client that stops reading a reply or an SSE stream
//!   frees its connection slot and the memory of its replies;
//! - the body timeout is `body()`'s ([`HttpConfig::body_timeout`], `408`).
//!
//! Shutdown: stop accepting, ask every connection to close after its running request
//! (`graceful_shutdown`), cut off what is still running after the grace.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Sleep;

use super::HttpConfig;

/// How long shutdown lets running requests finish (a long-poll, an SSE stream are cut after
/// it).
pub(super) const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Refusals (`503 BUSY`) being written at once; past this an over-limit connection is just
/// closed (a flood must not cost more than the limit it hit).
const REFUSING_MAX: usize = 64;

/// How long a refused client has to send its request's head before the `503` goes out
/// anyway (reading it first lets the client see the reply instead of a reset).
const REFUSE_READ: Duration = Duration::from_millis(500);

/// Serves `app` on every connection `listener` hands out until `stopped` turns true.
pub(super) async fn serve<L>(
    mut listener: L,
    app: Router,
    config: HttpConfig,
    mut stopped: watch::Receiver<bool>,
) where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let refusing = Arc::new(Semaphore::new(REFUSING_MAX));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_header_size(config.header_max)
        // hyper's read buffer must hold the largest head; it never holds less than 8 KiB.
        .max_buf_size(config.header_max.max(8192) + 1024);
    let mut conns = JoinSet::new();
    loop {
        let (io, peer) = tokio::select! {
            _ = stopped.wait_for(|s| *s) => break,
            c = listener.accept() => c,
        };
        while conns.try_join_next().is_some() {}
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            if let Ok(r) = refusing.clone().try_acquire_owned() {
                let max = config.max_connections;
                conns.spawn(async move {
                    refuse(io, max).await;
                    drop(r);
                });
            }
            continue;
        };
        let io = TokioIo::new(Timed::new(io, config.write_timeout));
        let service = TowerToHyperService::new(app.clone());
        let conn = builder.serve_connection(io, service);
        let mut stopped = stopped.clone();
        conns.spawn(async move {
            tokio::pin!(conn);
            let done = tokio::select! {
                r = conn.as_mut() => Some(r),
                _ = stopped.wait_for(|s| *s) => None,
            };
            let r = if let Some(r) = done {
                r
            } else {
                conn.as_mut().graceful_shutdown();
                conn.await
            };
            if let Err(e) = r {
                tracing::debug!("HTTP connection from {peer}: {e}");
            }
            drop(permit);
        });
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::info!(
            "{} HTTP connection(s) still busy after the grace: closed",
            conns.len()
        );
        conns.shutdown().await;
    }
}

/// `503 BUSY` to a connection past the limit, after reading (briefly) what it sent.
async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(mut io: S, max: usize) {
    let mut head = Vec::new();
    let _ = tokio::time::timeout(REFUSE_READ, async {
        let mut buf = [0u8; 4096];
        while head.len() < 64 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let body = serde_json::json!({
        "error": "BUSY",
        "message": format!(
            "the server has {max} HTTP connections open, its limit ([http] max_connections); retry later"
        ),
    })
    .to_string();
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSE_READ, async {
        let _ = io.write_all(reply.as_bytes()).await;
        let _ = io.shutdown().await;
    })
    .await;
}

/// A connection whose writes fail once one has been pending (the client not reading) for
/// longer than the write timeout. Reads pass through.
pub(crate) struct Timed<S> {
    io: S,
    timeout: Duration,
    /// Started when a write or flush first returned `Pending`; cleared on progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> Timed<S> {
    pub(crate) fn new(io: S, timeout: Duration) -> Timed<S> {
        Timed {
            io,
            timeout,
            stalled: None,
        }
    }

    /// A write is pending: `Pending` until the timeout, then the error.
    fn stall<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let timeout = self.timeout;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the client read nothing of its reply for {timeout:?} ([http] write_timeout)"
                ),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<T>(&mut self, r: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => self.stall(cx),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Timed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Timed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.progress(r, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.progress(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.progress(r, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_shutdown(cx);
        self.progress(r, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that never takes a byte (a client that stopped reading).
    struct Stuck;

    impl AsyncWrite for Stuck {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Pending
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncRead for Stuck {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_pending_past_the_timeout_fails() {
        let mut t = Timed::new(Stuck, Duration::from_secs(30));
        let start = tokio::time::Instant::now();
        let e = t
            .write_all(b"reply")
            .await
            .expect_err("a stuck write must fail");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(
            start.elapsed() >= Duration::from_secs(30),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn progress_restarts_the_clock() {
        let (client, server) = tokio::io::duplex(16);
        let mut t = Timed::new(server, Duration::from_secs(10));
        let reader = tokio::spawn(async move {
            let mut client = client;
            let mut got = Vec::new();
            let mut buf = [0u8; 16];
            // Reads 16 bytes every 6 s: slower than the writer, never 10 s silent.
            while got.len() < 64 {
                tokio::time::sleep(Duration::from_secs(6)).await;
                let n = client.read(&mut buf).await.expect("read");
                got.extend_from_slice(&buf[..n]);
            }
            got
        });
        t.write_all(&[7u8; 64])
            .await
            .expect("a slow reader is not a stuck one");
        assert_eq!(reader.await.expect("reader"), vec![7u8; 64]);
    }

    // ---- the limits, over real sockets --------------------------------------------------

    use crate::http::{HttpConfig, HttpServer};
    use crate::Service;
    use spool_engine::{Store, TopicConfig};
    use tokio::net::TcpStream;

    async fn server(f: impl FnOnce(&mut HttpConfig)) -> (HttpServer, Store) {
        let store = Store::in_memory().expect("store");
        let mut config = HttpConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
        f(&mut config);
        let s = HttpServer::start(config, Service::open(store.clone()))
            .await
            .expect("start");
        (s, store)
    }

    /// Sends `request` on `c` and reads one reply head and its `content-length` body.
    async fn exchange(c: &mut TcpStream, request: &str) -> (u16, String) {
        c.write_all(request.as_bytes()).await.expect("send");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().expect("length"));
                if got.len() >= end + 4 + len {
                    let status = head[9..12].parse().expect("status");
                    let body = String::from_utf8_lossy(&got[end + 4..end + 4 + len]).into_owned();
                    return (status, body);
                }
            }
            let n = c.read(&mut buf).await.expect("read");
            assert!(
                n > 0,
                "closed before a whole reply: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
    }

    const GET_LIVE: &str = "GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n";

    /// Waits (up to 20 s) for the peer to close `c`, reading whatever it still sends.
    async fn closed(c: &mut TcpStream) -> bool {
        let mut buf = vec![0u8; 65536];
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match c.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    }

    #[tokio::test]
    async fn past_max_connections_a_client_gets_busy_and_a_slot_frees_on_close() {
        let (s, _store) = server(|c| c.max_connections = 2).await;
        let addr = s.local_addr();
        let mut a = TcpStream::connect(addr).await.expect("a");
        let mut b = TcpStream::connect(addr).await.expect("b");
        assert_eq!(exchange(&mut a, GET_LIVE).await.0, 200);
        assert_eq!(exchange(&mut b, GET_LIVE).await.0, 200);
        let mut c = TcpStream::connect(addr).await.expect("c");
        let (status, body) = exchange(&mut c, GET_LIVE).await;
        assert_eq!(status, 503, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["error"], "BUSY");
        assert!(
            v["message"]
                .as_str()
                .expect("message")
                .contains("max_connections"),
            "{v}"
        );
        assert!(closed(&mut c).await, "a refused connection is closed");
        // The two served connections are still good; once one closes, a new one is served.
        assert_eq!(exchange(&mut a, GET_LIVE).await.0, 200);
        drop(b);
        let mut served = false;
        for _ in 0..100 {
            let mut d = TcpStream::connect(addr).await.expect("d");
            if exchange(&mut d, GET_LIVE).await.0 == 200 {
                served = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(served, "a closed connection gives its slot back");
        s.shutdown().await;
    }

    #[tokio::test]
    async fn a_head_over_header_max_is_431_and_one_under_is_served() {
        let (s, _store) = server(|c| c.header_max = 2048).await;
        let mut c = TcpStream::connect(s.local_addr()).await.expect("connect");
        let small = format!(
            "GET /health/live HTTP/1.1\r\nhost: x\r\nx-pad: {}\r\n\r\n",
            "a".repeat(1500)
        );
        assert_eq!(exchange(&mut c, &small).await.0, 200);
        let mut c = TcpStream::connect(s.local_addr()).await.expect("connect");
        let big = format!(
            "GET /health/live HTTP/1.1\r\nhost: x\r\nx-pad: {}\r\n\r\n",
            "a".repeat(4000)
        );
        assert_eq!(exchange(&mut c, &big).await.0, 431);
        s.shutdown().await;
    }

    #[tokio::test]
    async fn a_client_that_sends_half_a_head_or_idles_is_disconnected_after_header_timeout() {
        let (s, _store) = server(|c| c.header_timeout = Duration::from_millis(300)).await;
        let mut c = TcpStream::connect(s.local_addr()).await.expect("connect");
        c.write_all(b"GET /health/live HTTP/1.1\r\nhost:")
            .await
            .expect("send");
        assert!(closed(&mut c).await, "a half-sent head is cut off");
        // An idle keep-alive connection too.
        let mut c = TcpStream::connect(s.local_addr()).await.expect("connect");
        assert_eq!(exchange(&mut c, GET_LIVE).await.0, 200);
        assert!(
            closed(&mut c).await,
            "an idle keep-alive connection is closed"
        );
        s.shutdown().await;
    }

    #[tokio::test]
    async fn a_body_that_does_not_arrive_in_body_timeout_is_408() {
        let (s, _store) = server(|c| c.body_timeout = Duration::from_millis(300)).await;
        let mut c = TcpStream::connect(s.local_addr()).await.expect("connect");
        let (status, body) = exchange(
            &mut c,
            "POST /v1/queues/q/messages HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nonly part",
        )
        .await;
        assert_eq!(status, 408, "{body}");
        assert!(body.contains("body_timeout"), "{body}");
        s.shutdown().await;
    }

    /// `spool_http_waiting` of `/metrics`.
    async fn waiting(addr: SocketAddr) -> u64 {
        let mut c = TcpStream::connect(addr).await.expect("connect");
        let (_, body) = exchange(&mut c, "GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n").await;
        body.lines()
            .find_map(|l| l.strip_prefix("spool_http_waiting "))
            .and_then(|v| v.trim().parse().ok())
            .expect("spool_http_waiting in /metrics")
    }

    #[tokio::test]
    async fn an_sse_client_that_stops_reading_is_disconnected_after_write_timeout() {
        let (s, store) = server(|c| c.write_timeout = Duration::from_millis(300)).await;
        store
            .create_topic("t", TopicConfig::default())
            .expect("topic");
        let addr = s.local_addr();
        // A small receive window, so that the server's writes stall soon.
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.set_recv_buffer_size(4096).expect("rcvbuf");
        let mut c = sock.connect(addr).await.expect("connect");
        c.write_all(b"GET /v1/topics/t/stream HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("send");
        let mut head = [0u8; 64];
        let n = c.read(&mut head).await.expect("head");
        assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));
        assert_eq!(waiting(addr).await, 1, "the stream is open");
        // Far more than the socket buffers hold; the client reads none of it.
        for _ in 0..48 {
            store.publish("t", vec![b'x'; 256 * 1024]).expect("publish");
        }
        let mut gone = false;
        for _ in 0..400 {
            if waiting(addr).await == 0 {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(gone, "the stream of a client that stopped reading must end");
        s.shutdown().await;
    }
}
