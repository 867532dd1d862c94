//! One connection to the server, shared by every task that sends on it (pipelining).
//!
//! Two tasks own the socket, as in rumqttc and redis-rs's multiplexed connection:
//! - the **writer** takes requests from a channel, gathers every request already waiting into
//!   one buffer, hands their reply slots to the reader **before** writing them, and writes
//!   the buffer in one go, so concurrent pushes reach the server together and share its group
//!   commits;
//! - the **reader** decodes replies as they arrive and gives each to the oldest waiting slot
//!   (the server answers in request order). RESP3 push frames are not replies and are
//!   skipped. It reads even when nothing is pending, so a connection the server closed while
//!   idle is noticed at once and the next request goes to a new one.
//!
//! Reading and writing are separate so that a large pipelined burst cannot deadlock with the
//! server's replies (the server stops reading while its replies are not read).
//!
//! When the connection breaks (EOF, an I/O error, a frame that is not RESP), it is marked
//! down once, with the reason; then every request already handed to the reader fails with
//! [`Error::Disconnected`] `{ maybe_applied: true }` (it was written, or was being written),
//! and every request still in the channel with `{ maybe_applied: false }` (never written).

use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Bytes, BytesMut};
use spool_resp::{Decoder, Frame, Limits};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::Error;

/// Requests queued for the writer at most: senders wait beyond (back-pressure on a burst).
const QUEUE_MAX: usize = 4096;
/// Bytes of requests gathered into one write at most.
const WRITE_BATCH_MAX: usize = 1 << 20;
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 << 10;

/// The first bytes of the RESP2 and RESP3 types.
const REPLY_TYPES: &[u8] = b"+-:$*_#,(!=%~>";

type ReplySlot = oneshot::Sender<Result<Frame, Error>>;

struct Request {
    bytes: Bytes,
    reply: ReplySlot,
}

/// Whether the connection is down, and why.
struct Health {
    down: watch::Sender<bool>,
    reason: Mutex<Option<String>>,
}

impl Health {
    fn fail(&self, reason: String) {
        {
            let mut r = self.reason.lock().unwrap_or_else(PoisonError::into_inner);
            if r.is_none() {
                *r = Some(reason);
            }
        }
        self.down.send_replace(true);
    }

    fn is_down(&self) -> bool {
        *self.down.borrow()
    }

    fn reason(&self) -> String {
        self.reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or_else(|| "the connection was closed".to_owned())
    }
}

/// A handle on one connection; clones share it. The connection closes (after answering what
/// was sent) once every handle is dropped.
#[derive(Clone)]
pub(crate) struct Conn {
    tx: mpsc::Sender<Request>,
    health: Arc<Health>,
}

impl Conn {
    /// Starts the reader and writer tasks over the two halves of a connected stream.
    pub(crate) fn start<R, W>(read: R, write: W, limits: Limits) -> Conn
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(QUEUE_MAX);
        let (pending_tx, pending_rx) = mpsc::unbounded_channel();
        let health = Arc::new(Health {
            down: watch::channel(false).0,
            reason: Mutex::new(None),
        });
        tokio::spawn(writer(write, rx, pending_tx, health.clone()));
        tokio::spawn(reader(read, pending_rx, health.clone(), limits));
        Conn { tx, health }
    }

    /// Whether the connection still works (as far as anyone knows).
    pub(crate) fn is_up(&self) -> bool {
        !self.health.is_down() && !self.tx.is_closed()
    }

    /// Marks the connection down: requests in flight fail, the next call reconnects.
    pub(crate) fn close(&self, reason: &str) {
        self.health.fail(reason.to_owned());
    }

    /// Sends one encoded request and waits for its reply frame (an error reply is a frame
    /// too: the caller decides).
    pub(crate) async fn call(&self, bytes: Bytes) -> Result<Frame, Error> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Request { bytes, reply }).await.is_err() {
            return Err(Error::Disconnected {
                maybe_applied: false,
                reason: self.health.reason(),
            });
        }
        match rx.await {
            Ok(r) => r,
            // Both tasks answer every slot they hold; a slot dropped unanswered means a task
            // ended abnormally, after the request may have been written.
            Err(_) => Err(Error::Disconnected {
                maybe_applied: true,
                reason: self.health.reason(),
            }),
        }
    }
}

async fn writer<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::Receiver<Request>,
    pending: mpsc::UnboundedSender<ReplySlot>,
    health: Arc<Health>,
) {
    let mut down = health.down.subscribe();
    let mut buf = BytesMut::new();
    'run: loop {
        let first = tokio::select! {
            biased;
            _ = down.wait_for(|d| *d) => break 'run,
            r = rx.recv() => match r {
                Some(r) => r,
                // Every handle dropped: close our side; the reader answers what is in flight.
                None => break 'run,
            },
        };
        let mut next = Some(first);
        while let Some(req) = next {
            // The slot goes to the reader before the bytes go out: a reply cannot come first.
            if let Err(mpsc::error::SendError(slot)) = pending.send(req.reply) {
                // The reader is gone (the connection is down): never written.
                let _ = slot.send(Err(Error::Disconnected {
                    maybe_applied: false,
                    reason: health.reason(),
                }));
                break 'run;
            }
            buf.extend_from_slice(&req.bytes);
            next = if buf.len() < WRITE_BATCH_MAX {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        let written = tokio::select! {
            biased;
            _ = down.wait_for(|d| *d) => break 'run,
            r = async {
                w.write_all(&buf).await?;
                w.flush().await
            } => r,
        };
        buf.clear();
        if let Err(e) = written {
            health.fail(format!("writing to the server failed: {e}"));
            break 'run;
        }
    }
    // Nothing more is sent: what is still queued was never written.
    rx.close();
    while let Ok(req) = rx.try_recv() {
        let _ = req.reply.send(Err(Error::Disconnected {
            maybe_applied: false,
            reason: health.reason(),
        }));
    }
    let _ = w.shutdown().await;
}

async fn reader<R: AsyncRead + Unpin>(
    mut r: R,
    mut pending: mpsc::UnboundedReceiver<ReplySlot>,
    health: Arc<Health>,
    limits: Limits,
) {
    let mut down = health.down.subscribe();
    let mut decoder = Decoder::new(limits);
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let reason = 'run: loop {
        loop {
            // The decoder takes a line that is not RESP as an inline command (what a server
            // accepts from telnet); from a server it is garbage.
            if !decoder.in_frame() && buf.first().is_some_and(|b| !REPLY_TYPES.contains(b)) {
                break 'run format!(
                    "the server's reply is not valid RESP: it starts with {:?}",
                    char::from(buf[0])
                );
            }
            match decoder.decode(&mut buf) {
                // Out-of-band (RESP3): not the answer to a request.
                Ok(Some(Frame::Push(_))) => {}
                Ok(Some(frame)) => match pending.try_recv() {
                    Ok(slot) => {
                        // The caller may have given up waiting (its future dropped): fine.
                        let _ = slot.send(Ok(frame));
                    }
                    Err(_) => {
                        break 'run format!("the server sent a reply to no request: {frame:?}")
                    }
                },
                Ok(None) => break,
                Err(e) => break 'run format!("the server's reply is not valid RESP: {e}"),
            }
        }
        buf.reserve(READ_CHUNK);
        tokio::select! {
            biased;
            _ = down.wait_for(|d| *d) => break 'run health.reason(),
            n = r.read_buf(&mut buf) => match n {
                Ok(0) => break 'run "the server closed the connection".to_owned(),
                Ok(_) => {}
                Err(e) => break 'run format!("reading from the server failed: {e}"),
            },
        }
    };
    health.fail(reason);
    pending.close();
    while let Ok(slot) = pending.try_recv() {
        let _ = slot.send(Err(Error::Disconnected {
            maybe_applied: true,
            reason: health.reason(),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, DuplexStream};

    fn request(word: &str) -> Bytes {
        Bytes::from(format!("*1\r\n${}\r\n{word}\r\n", word.len()))
    }

    /// A connection over an in-memory pipe; the other end plays the server.
    fn pipe() -> (Conn, DuplexStream) {
        let (client, server) = duplex(1 << 16);
        let (r, w) = tokio::io::split(client);
        (Conn::start(r, w, Limits::default()), server)
    }

    /// Reads until `n` requests of `request`'s shape (three lines each) arrived.
    async fn read_requests(server: &mut DuplexStream, n: usize) -> String {
        let mut got = Vec::new();
        while got.windows(2).filter(|w| w == b"\r\n").count() < n * 3 {
            let mut buf = [0u8; 1024];
            let k = server.read(&mut buf).await.expect("read");
            assert!(k > 0, "the client closed");
            got.extend_from_slice(&buf[..k]);
        }
        String::from_utf8(got).expect("text")
    }

    #[tokio::test]
    async fn concurrent_calls_get_their_own_replies_in_order() {
        let (conn, mut server) = pipe();
        let calls: Vec<_> = ["A", "B", "C"]
            .iter()
            .map(|w| {
                let conn = conn.clone();
                let req = request(w);
                tokio::spawn(async move { conn.call(req).await })
            })
            .collect();
        let seen = read_requests(&mut server, 3).await;
        // Answer each request with its own word, in the order they arrived.
        let mut replies = Vec::new();
        for word in seen.lines().filter(|l| !l.starts_with(['*', '$'])) {
            replies.push(b'+');
            replies.extend_from_slice(word.as_bytes());
            replies.extend_from_slice(b"\r\n");
        }
        server.write_all(&replies).await.expect("write");
        for (call, word) in calls.into_iter().zip(["A", "B", "C"]) {
            let got = call.await.expect("task").expect("reply");
            assert_eq!(got, Frame::Simple(Bytes::from(word)));
        }
    }

    #[tokio::test]
    async fn a_request_after_the_break_was_not_applied() {
        let (conn, server) = pipe();
        drop(server);
        while conn.is_up() {
            tokio::task::yield_now().await;
        }
        let err = conn.call(request("PING")).await.expect_err("closed");
        assert!(
            matches!(
                err,
                Error::Disconnected {
                    maybe_applied: false,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_request_the_server_read_may_have_been_applied() {
        let (conn, mut server) = pipe();
        let call = {
            let conn = conn.clone();
            tokio::spawn(async move { conn.call(request("QPUSH")).await })
        };
        read_requests(&mut server, 1).await;
        drop(server);
        let err = call.await.expect("task").expect_err("no reply");
        assert!(
            matches!(
                err,
                Error::Disconnected {
                    maybe_applied: true,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(!conn.is_up());
    }

    #[tokio::test]
    async fn push_frames_are_not_replies() {
        let (conn, mut server) = pipe();
        let call = {
            let conn = conn.clone();
            tokio::spawn(async move { conn.call(request("PING")).await })
        };
        read_requests(&mut server, 1).await;
        server
            .write_all(b">2\r\n$7\r\nmessage\r\n$1\r\nx\r\n+PONG\r\n")
            .await
            .expect("write");
        assert_eq!(
            call.await.expect("task").expect("reply"),
            Frame::Simple(Bytes::from_static(b"PONG"))
        );
    }
}
