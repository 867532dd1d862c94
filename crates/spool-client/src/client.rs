//! [`Client`]: connecting, the connection policy (one shared, pipelined connection; spare
//! connections for blocking reads; reconnect on the next request) and the typed operations.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use spool_resp::{encode, Frame, Limits, Protocol};
use tokio::net::TcpStream;

use crate::conn::Conn;
use crate::error::Error;
use crate::reply;
use crate::types::{
    ms, LeaseOptions, Message, NackOptions, QueueConfig, QueueStats, Receipt, TopicConfig,
    TopicMessage, TopicStats,
};

/// Default [`Options::connect_timeout`].
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Default [`Options::max_reply_bytes`]: 64 MiB, far above the server's default payload limit
/// (1 MiB) so that a server configured higher is still read.
pub const MAX_REPLY_BYTES_DEFAULT: usize = 64 << 20;
/// Idle connections kept for blocking reads (`lease` with a wait, topic `wait`): as many as
/// tasks usually block at once; more are opened when needed and closed after use.
const SPARE_MAX: usize = 16;

/// How to connect. `Options::new(addr)` gives the defaults; set fields or use the builder
/// methods.
#[derive(Clone)]
#[must_use]
pub struct Options {
    /// `host:port` of `spool serve`'s Redis-protocol listener (default port 7411).
    pub addr: String,
    /// The user for `AUTH` (Redis's `default` when only a password is set).
    pub user: Option<String>,
    /// The password for `AUTH`; `None`: no authentication.
    pub password: Option<String>,
    /// Ask for RESP3 replies (`HELLO 3`) instead of RESP2. The results are the same either
    /// way; RESP3 sends maps and nulls as such.
    pub resp3: bool,
    /// How long connecting (TCP, TLS, `HELLO`/`AUTH`) may take. Default 10 s.
    pub connect_timeout: Duration,
    /// The largest string accepted in a reply (a payload). A larger one is a protocol error
    /// that closes the connection. Default 64 MiB.
    pub max_reply_bytes: usize,
    /// TLS, `None` for plain TCP.
    #[cfg(feature = "tls")]
    pub tls: Option<crate::TlsOptions>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Options");
        d.field("addr", &self.addr)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("resp3", &self.resp3)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_reply_bytes", &self.max_reply_bytes);
        #[cfg(feature = "tls")]
        d.field("tls", &self.tls);
        d.finish()
    }
}

impl Options {
    /// The defaults for `addr` (`host:port`).
    pub fn new(addr: impl Into<String>) -> Options {
        Options {
            addr: addr.into(),
            user: None,
            password: None,
            resp3: false,
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
            max_reply_bytes: MAX_REPLY_BYTES_DEFAULT,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Authenticate as `user` with `password`.
    pub fn auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Options {
        self.user = Some(user.into());
        self.password = Some(password.into());
        self
    }

    /// RESP3 replies (`HELLO 3`).
    pub fn resp3(mut self) -> Options {
        self.resp3 = true;
        self
    }

    /// Connect within `timeout`.
    pub fn connect_timeout(mut self, timeout: Duration) -> Options {
        self.connect_timeout = timeout;
        self
    }

    /// Connect over TLS.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: crate::TlsOptions) -> Options {
        self.tls = Some(tls);
        self
    }

    fn limits(&self) -> Limits {
        Limits {
            bulk_max: self.max_reply_bytes,
            // Equal: a larger string is an error, not skipped (a reply cannot be dropped).
            bulk_discard_max: self.max_reply_bytes,
            ..Limits::default()
        }
    }
}

/// An async client of `spool serve` over the Redis protocol.
///
/// Cheap to clone; clones share the connection. Requests from concurrent tasks are pipelined
/// on one connection (concurrent pushes reach the server together and share its group
/// commits). Blocking reads ([`Client::lease`] with a wait, [`Client::wait`]) go over spare
/// connections instead, so they never hold up the requests of other tasks.
///
/// **Broken connections.** Requests in flight when a connection breaks fail with
/// [`Error::Disconnected`], whose `maybe_applied` says whether the request was sent (and may
/// have been applied) or not (safe to retry). Nothing is retried automatically. The next
/// request opens a new connection (one attempt, within [`Options::connect_timeout`]; an
/// [`Error::Io`] or [`Error::Timeout`] if it fails, and the request after tries again).
/// [`Client::reconnect`] does the same at once.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    opts: Options,
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::Tls>,
    /// The shared connection; `None` or down: the next request connects.
    main: Mutex<Option<Conn>>,
    /// Held while connecting the shared connection, so concurrent requests open one.
    connecting: tokio::sync::Mutex<()>,
    /// Idle connections for blocking reads.
    spare: Mutex<Vec<Conn>>,
    closed: AtomicBool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.inner.opts.addr)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A request: the command name and its arguments, as bulk strings.
struct Cmd(Vec<Frame>);

impl Cmd {
    fn new(name: &'static str) -> Cmd {
        Cmd(vec![Frame::Bulk(Bytes::from_static(name.as_bytes()))])
    }

    fn text(mut self, s: &str) -> Cmd {
        self.0
            .push(Frame::Bulk(Bytes::copy_from_slice(s.as_bytes())));
        self
    }

    fn word(mut self, s: &'static str) -> Cmd {
        self.0.push(Frame::Bulk(Bytes::from_static(s.as_bytes())));
        self
    }

    fn bytes(mut self, b: Bytes) -> Cmd {
        self.0.push(Frame::Bulk(b));
        self
    }

    fn num(self, n: impl ToString) -> Cmd {
        let s = n.to_string();
        self.text(&s)
    }

    /// `KEY value` when the value is set.
    fn opt(self, key: &'static str, n: Option<impl ToString>) -> Cmd {
        match n {
            Some(n) => self.word(key).num(n),
            None => self,
        }
    }

    fn encode(self) -> Bytes {
        let mut out = BytesMut::new();
        encode(&Frame::Array(self.0), Protocol::Resp2, &mut out);
        out.freeze()
    }
}

/// The host part of `host:port` (brackets of an IPv6 literal removed), for TLS.
#[cfg(feature = "tls")]
fn host_of(addr: &str) -> Result<&str, Error> {
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| {
        Error::Config(format!(
            "address {addr:?} has no port: write host:port, e.g. 127.0.0.1:7411"
        ))
    })?;
    if port.parse::<u16>().is_err() {
        return Err(Error::Config(format!(
            "address {addr:?}: {port:?} is not a port number"
        )));
    }
    Ok(host.trim_start_matches('[').trim_end_matches(']'))
}

impl Client {
    /// Connects to `addr` (`host:port`) with the default [`Options`].
    pub async fn connect(addr: impl Into<String>) -> Result<Client, Error> {
        Client::connect_with(Options::new(addr)).await
    }

    /// Connects with `opts`: the shared connection is opened (and authenticated) now, so a
    /// wrong address or password is reported here.
    pub async fn connect_with(opts: Options) -> Result<Client, Error> {
        #[cfg(feature = "tls")]
        let tls = match &opts.tls {
            Some(t) => Some(t.connector(host_of(&opts.addr)?)?),
            None => None,
        };
        let client = Client {
            inner: Arc::new(Inner {
                opts,
                #[cfg(feature = "tls")]
                tls,
                main: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
                spare: Mutex::new(Vec::new()),
                closed: AtomicBool::new(false),
            }),
        };
        client.main().await?;
        Ok(client)
    }

    /// The options it connects with.
    pub fn options(&self) -> &Options {
        &self.inner.opts
    }

    /// Opens a new shared connection now, in place of the current one (requests in flight
    /// on the old one still get their replies; it closes after them). Spare connections are
    /// closed too.
    pub async fn reconnect(&self) -> Result<(), Error> {
        self.check_open()?;
        let _g = self.inner.connecting.lock().await;
        let conn = self.open().await?;
        *lock(&self.inner.main) = Some(conn);
        lock(&self.inner.spare).clear();
        Ok(())
    }

    /// Closes the connections of this client and all its clones: requests in flight on the
    /// shared connection fail with [`Error::Disconnected`], later ones with [`Error::Closed`].
    /// A blocking read already under way keeps its own connection until it is answered.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        if let Some(c) = lock(&self.inner.main).take() {
            c.close("the client was closed");
        }
        for c in lock(&self.inner.spare).drain(..) {
            c.close("the client was closed");
        }
    }

    fn check_open(&self) -> Result<(), Error> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// A new connection: TCP (and TLS), then `HELLO 3` and/or `AUTH`, within the timeout.
    async fn open(&self) -> Result<Conn, Error> {
        let opts = &self.inner.opts;
        match tokio::time::timeout(opts.connect_timeout, self.open_inner()).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                addr: opts.addr.clone(),
                after: opts.connect_timeout,
            }),
        }
    }

    async fn open_inner(&self) -> Result<Conn, Error> {
        let opts = &self.inner.opts;
        let tcp = TcpStream::connect(opts.addr.as_str())
            .await
            .map_err(|source| Error::Io {
                addr: opts.addr.clone(),
                source,
            })?;
        // Requests are written whole; do not let Nagle hold the last segment back.
        let _ = tcp.set_nodelay(true);
        #[cfg(feature = "tls")]
        let conn = if let Some(tls) = &self.inner.tls {
            let stream = tls
                .connector
                .connect(tls.server_name.clone(), tcp)
                .await
                .map_err(|e| Error::Tls(format!("handshake with {}: {e}", opts.addr)))?;
            let (r, w) = tokio::io::split(stream);
            Conn::start(r, w, opts.limits())
        } else {
            let (r, w) = tcp.into_split();
            Conn::start(r, w, opts.limits())
        };
        #[cfg(not(feature = "tls"))]
        let conn = {
            let (r, w) = tcp.into_split();
            Conn::start(r, w, opts.limits())
        };
        if let Err(e) = self.handshake(&conn).await {
            conn.close("the handshake failed");
            return Err(e);
        }
        Ok(conn)
    }

    async fn handshake(&self, conn: &Conn) -> Result<(), Error> {
        let opts = &self.inner.opts;
        let user = opts.user.as_deref().unwrap_or("default");
        if opts.resp3 {
            let mut hello = Cmd::new("HELLO").word("3");
            if let Some(p) = &opts.password {
                hello = hello.word("AUTH").text(user).text(p);
            }
            reply::unit_reply(conn.call(hello.encode()).await?)
        } else if let Some(p) = &opts.password {
            let auth = Cmd::new("AUTH").text(user).text(p);
            reply::unit_reply(conn.call(auth.encode()).await?)
        } else {
            Ok(())
        }
    }

    /// The shared connection, connecting it if there is none or it broke.
    async fn main(&self) -> Result<Conn, Error> {
        self.check_open()?;
        if let Some(c) = lock(&self.inner.main).as_ref().filter(|c| c.is_up()) {
            return Ok(c.clone());
        }
        let _g = self.inner.connecting.lock().await;
        // Someone else may have connected while we waited.
        if let Some(c) = lock(&self.inner.main).as_ref().filter(|c| c.is_up()) {
            return Ok(c.clone());
        }
        let conn = self.open().await?;
        self.check_open()?;
        *lock(&self.inner.main) = Some(conn.clone());
        Ok(conn)
    }

    /// Sends `cmd` on the shared connection.
    async fn call(&self, cmd: Cmd) -> Result<Frame, Error> {
        let conn = self.main().await?;
        conn.call(cmd.encode()).await
    }

    /// Sends a blocking `cmd` on a connection of its own (a spare one, or a new one), so the
    /// shared connection's other requests do not wait behind it.
    async fn call_blocking(&self, cmd: Cmd) -> Result<Frame, Error> {
        self.check_open()?;
        let spare = {
            let mut spare = lock(&self.inner.spare);
            std::iter::from_fn(|| spare.pop()).find(Conn::is_up)
        };
        let conn = match spare {
            Some(c) => c,
            None => self.open().await?,
        };
        let r = conn.call(cmd.encode()).await;
        if conn.is_up() && !self.inner.closed.load(Ordering::SeqCst) {
            let mut spare = lock(&self.inner.spare);
            if spare.len() < SPARE_MAX {
                spare.push(conn);
            }
        }
        r
    }

    /// `PING`: checks the connection (reconnecting if it broke).
    pub async fn ping(&self) -> Result<(), Error> {
        reply::unit_reply(self.call(Cmd::new("PING")).await?)
    }

    // ---------------------------------------------------------------------------------
    // Work queues (research section 8.3)

    /// `QPUSH`: stores `payload` at the end of `queue` (created on first push unless the
    /// server is configured otherwise) and returns its id once it is durable. Set a priority,
    /// delay or TTL on the returned builder before awaiting it:
    /// `client.push("jobs", "x").priority(9).await?`.
    pub fn push(&self, queue: &str, payload: impl Into<Bytes>) -> Push {
        Push {
            client: self.clone(),
            queue: queue.to_owned(),
            payload: payload.into(),
            priority: None,
            delay: None,
            ttl: None,
        }
    }

    /// `QPUSHMANY`: stores every payload, atomically (all or none), and returns their ids in
    /// order. An empty list stores nothing and sends nothing.
    pub fn push_many<P: Into<Bytes>>(
        &self,
        queue: &str,
        payloads: impl IntoIterator<Item = P>,
    ) -> PushMany {
        PushMany {
            client: self.clone(),
            queue: queue.to_owned(),
            payloads: payloads.into_iter().map(Into::into).collect(),
            priority: None,
            delay: None,
        }
    }

    /// `QGET`: leases up to `opts.count` visible messages, highest priority first. Each
    /// comes with a [`Receipt`]: [`Client::ack`] it when done, or [`Client::nack`] it to hand
    /// it back; otherwise it is handed out again after the visibility timeout. An empty
    /// vector when there is nothing (after waiting up to `opts.wait`), also for a queue that
    /// does not exist yet.
    ///
    /// With a wait, the request goes over a connection of its own. Dropping the future while
    /// it waits closes that connection; a message the server leased for it in that instant
    /// comes back after its visibility timeout.
    pub async fn lease(&self, queue: &str, opts: LeaseOptions) -> Result<Vec<Message>, Error> {
        let wait = opts.wait.map(ms).filter(|&w| w > 0);
        let cmd = Cmd::new("QGET")
            .text(queue)
            .opt("VT", opts.visibility.map(ms))
            .word("COUNT")
            .num(opts.count)
            .opt("WAIT", wait);
        let f = if wait.is_some() {
            self.call_blocking(cmd).await?
        } else {
            self.call(cmd).await?
        };
        reply::messages_reply(f)
    }

    /// `QACK`: the message of this lease is done and deleted. [`Error::LeaseLost`] if the
    /// lease was lost (the message was handed to someone else); [`Error::NotFound`] if the
    /// message is gone, which after a retried ack usually means the first one succeeded.
    pub async fn ack(&self, queue: &str, receipt: Receipt) -> Result<(), Error> {
        let f = self.call(Cmd::new("QACK").text(queue).num(receipt)).await?;
        reply::ack_results(f, 1)?
            .pop()
            .unwrap_or_else(|| Err(Error::Protocol("no result for the receipt".into())))
    }

    /// `QACK` of several receipts in one request and one commit: one result per receipt, in
    /// order (some may fail while others succeed).
    pub async fn ack_many(
        &self,
        queue: &str,
        receipts: &[Receipt],
    ) -> Result<Vec<Result<(), Error>>, Error> {
        if receipts.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = Cmd::new("QACK").text(queue);
        for r in receipts {
            cmd = cmd.num(r);
        }
        reply::ack_results(self.call(cmd).await?, receipts.len())
    }

    /// `QNACK`: hands the message back now (or after `opts.delay`), optionally with a new
    /// priority. The receipt is no longer valid afterwards.
    pub async fn nack(
        &self,
        queue: &str,
        receipt: Receipt,
        opts: NackOptions,
    ) -> Result<(), Error> {
        let cmd = Cmd::new("QNACK")
            .text(queue)
            .num(receipt)
            .opt("DELAY", opts.delay.map(ms))
            .opt("PRI", opts.priority);
        reply::unit_reply(self.call(cmd).await?)
    }

    /// `QPOP`: removes and returns up to `count` messages, without receipts: at-most-once (a
    /// message is lost if the caller fails to process it).
    pub async fn pop(&self, queue: &str, count: u32) -> Result<Vec<Message>, Error> {
        let cmd = Cmd::new("QPOP").text(queue).word("COUNT").num(count);
        reply::messages_reply(self.call(cmd).await?)
    }

    /// `QPOP ... WAIT`: [`Client::pop`], waiting up to `wait` (at most 60 s) for a message;
    /// over a connection of its own, as [`Client::lease`] with a wait.
    pub async fn pop_wait(
        &self,
        queue: &str,
        count: u32,
        wait: Duration,
    ) -> Result<Vec<Message>, Error> {
        let cmd = Cmd::new("QPOP")
            .text(queue)
            .word("COUNT")
            .num(count)
            .word("WAIT")
            .num(ms(wait));
        reply::messages_reply(self.call_blocking(cmd).await?)
    }

    /// `QPEEK`: the next `count` visible messages in delivery order, unchanged.
    pub async fn peek(&self, queue: &str, count: u32) -> Result<Vec<Message>, Error> {
        let cmd = Cmd::new("QPEEK").text(queue).word("COUNT").num(count);
        reply::messages_reply(self.call(cmd).await?)
    }

    /// `QPEEK ... ID`: the message `id` in whatever state, or [`Error::NotFound`].
    pub async fn peek_id(&self, queue: &str, id: u64) -> Result<Message, Error> {
        let cmd = Cmd::new("QPEEK").text(queue).word("ID").num(id);
        reply::message(reply::ok(self.call(cmd).await?)?)
    }

    /// `QSTATS`: the queue's counts (and its configuration, from servers that report it).
    pub async fn stats(&self, queue: &str) -> Result<QueueStats, Error> {
        reply::queue_stats_reply(self.call(Cmd::new("QSTATS").text(queue)).await?, queue)
    }

    /// `QLIST`: the queues, sorted; `pattern` is a glob (`*`, `?`).
    pub async fn list(&self, pattern: Option<&str>) -> Result<Vec<String>, Error> {
        let mut cmd = Cmd::new("QLIST");
        if let Some(p) = pattern {
            cmd = cmd.text(p);
        }
        reply::names_reply(self.call(cmd).await?)
    }

    // ---------------------------------------------------------------------------------
    // Queue management (research section 8.3)

    /// `QCREATE`: `true` if created, `false` if it already exists with this configuration;
    /// [`Error::Exists`] if it exists with another one.
    pub async fn create_queue(&self, config: &QueueConfig) -> Result<bool, Error> {
        let mut cmd = Cmd::new("QCREATE").text(&config.name);
        for (k, v) in config.pairs() {
            cmd = cmd.word(k).text(&v);
        }
        reply::bool_reply(self.call(cmd).await?)
    }

    /// `QCONFIG`: changes the fields of `config` that are set, atomically.
    pub async fn configure(&self, config: &QueueConfig) -> Result<(), Error> {
        let mut cmd = Cmd::new("QCONFIG").text(&config.name);
        for (k, v) in config.pairs() {
            cmd = cmd.word(k).text(&v);
        }
        reply::unit_reply(self.call(cmd).await?)
    }

    /// `QCONFIG q`: the queue's configuration, every field set. [`Error::NoQueue`] if it does
    /// not exist.
    pub async fn queue_config(&self, queue: &str) -> Result<QueueConfig, Error> {
        reply::queue_config_reply(self.call(Cmd::new("QCONFIG").text(queue)).await?, queue)
    }

    /// `QDROP`: deletes the queue and its messages (its dead-letter queue stays); `false` if
    /// there was none.
    pub async fn drop_queue(&self, queue: &str) -> Result<bool, Error> {
        reply::bool_reply(self.call(Cmd::new("QDROP").text(queue)).await?)
    }

    /// `QPURGE`: deletes the messages, keeps the queue; returns how many were deleted.
    pub async fn purge(&self, queue: &str) -> Result<u64, Error> {
        reply::u64_reply(self.call(Cmd::new("QPURGE").text(queue)).await?)
    }

    /// `QEXTEND`: the lease now ends `visibility` from now (the receipt stays valid); returns
    /// the new end (Unix ms).
    pub async fn extend(
        &self,
        queue: &str,
        receipt: Receipt,
        visibility: Duration,
    ) -> Result<u64, Error> {
        let cmd = Cmd::new("QEXTEND")
            .text(queue)
            .num(receipt)
            .word("VT")
            .num(ms(visibility));
        reply::u64_reply(self.call(cmd).await?)
    }

    /// `QDEAD`: moves the leased message to the dead-letter queue now (beanstalkd's `bury`);
    /// returns its id there. [`Error::NoDlq`] if the queue has none.
    pub async fn dead(
        &self,
        queue: &str,
        receipt: Receipt,
        reason: Option<&str>,
    ) -> Result<u64, Error> {
        let mut cmd = Cmd::new("QDEAD").text(queue).num(receipt);
        if let Some(r) = reason {
            cmd = cmd.word("REASON").text(r);
        }
        reply::u64_reply(self.call(cmd).await?)
    }

    /// `QREDRIVE`: moves up to `count` messages (all when `None`) of the dead-letter queue
    /// `dlq` back to their queue; returns how many moved.
    pub async fn redrive(&self, dlq: &str, count: Option<u32>) -> Result<u64, Error> {
        let cmd = Cmd::new("QREDRIVE").text(dlq).opt("COUNT", count);
        reply::u64_reply(self.call(cmd).await?)
    }

    // ---------------------------------------------------------------------------------
    // Topics (research section 8.4)
    //
    // Reads take an explicit cursor (from `subscribe`, then each message's `next_cursor`):
    // the server's implicit per-connection cursor would not survive a reconnect, and the
    // shared connection is not one reader's.

    /// `TCREATE`: `true` if created, `false` if it already exists with this configuration;
    /// [`Error::Exists`] if it exists with another one.
    pub async fn create_topic(&self, config: &TopicConfig) -> Result<bool, Error> {
        let mut cmd = Cmd::new("TCREATE").text(&config.name);
        for (k, v) in config.pairs() {
            cmd = cmd.word(k).text(&v);
        }
        reply::bool_reply(self.call(cmd).await?)
    }

    /// `TCONFIG`: changes the fields of `config` that are set, atomically.
    pub async fn configure_topic(&self, config: &TopicConfig) -> Result<(), Error> {
        let mut cmd = Cmd::new("TCONFIG").text(&config.name);
        for (k, v) in config.pairs() {
            cmd = cmd.word(k).text(&v);
        }
        reply::unit_reply(self.call(cmd).await?)
    }

    /// `TCONFIG t`: the topic's configuration, every field set.
    pub async fn topic_config(&self, topic: &str) -> Result<TopicConfig, Error> {
        reply::topic_config_reply(self.call(Cmd::new("TCONFIG").text(topic)).await?, topic)
    }

    /// `TDROP`: deletes the topic and its messages; `false` if there was none.
    pub async fn drop_topic(&self, topic: &str) -> Result<bool, Error> {
        reply::bool_reply(self.call(Cmd::new("TDROP").text(topic)).await?)
    }

    /// `TPUB`: publishes `payload`; returns its sequence number.
    pub async fn publish(&self, topic: &str, payload: impl Into<Bytes>) -> Result<u64, Error> {
        let cmd = Cmd::new("TPUB").text(topic).bytes(payload.into());
        reply::u64_reply(self.call(cmd).await?)
    }

    /// `TSUB`: a cursor that reads what is published from now on.
    pub async fn subscribe(&self, topic: &str) -> Result<u64, Error> {
        reply::u64_reply(self.call(Cmd::new("TSUB").text(topic)).await?)
    }

    /// `TGET`: the oldest message at or after `cursor`, or `None`.
    pub async fn next(&self, topic: &str, cursor: u64) -> Result<Option<TopicMessage>, Error> {
        let cmd = Cmd::new("TGET").text(topic).word("CURSOR").num(cursor);
        reply::topic_message_reply(self.call(cmd).await?)
    }

    /// `TLATEST`: the newest message at or after `cursor` (older ones are skipped), or `None`.
    pub async fn latest(&self, topic: &str, cursor: u64) -> Result<Option<TopicMessage>, Error> {
        let cmd = Cmd::new("TLATEST").text(topic).word("CURSOR").num(cursor);
        reply::topic_message_reply(self.call(cmd).await?)
    }

    /// `TWAIT`: like [`Client::next`], waiting up to `timeout` (at most 60 s) for a message;
    /// over a connection of its own.
    pub async fn wait(
        &self,
        topic: &str,
        cursor: u64,
        timeout: Duration,
    ) -> Result<Option<TopicMessage>, Error> {
        let cmd = Cmd::new("TWAIT")
            .text(topic)
            .word("TIMEOUT")
            .num(ms(timeout))
            .word("CURSOR")
            .num(cursor);
        reply::topic_message_reply(self.call_blocking(cmd).await?)
    }

    /// `TSTATS`: the topic's counts.
    pub async fn topic_stats(&self, topic: &str) -> Result<TopicStats, Error> {
        reply::topic_stats_reply(self.call(Cmd::new("TSTATS").text(topic)).await?, topic)
    }

    /// `TLIST`: the topics, sorted; `pattern` is a glob (`*`, `?`).
    pub async fn topics(&self, pattern: Option<&str>) -> Result<Vec<String>, Error> {
        let mut cmd = Cmd::new("TLIST");
        if let Some(p) = pattern {
            cmd = cmd.text(p);
        }
        reply::names_reply(self.call(cmd).await?)
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A push being prepared ([`Client::push`]); sent when awaited.
#[derive(Debug)]
#[must_use = "a push is sent only when it is awaited"]
pub struct Push {
    client: Client,
    queue: String,
    payload: Bytes,
    priority: Option<u8>,
    delay: Option<Duration>,
    ttl: Option<Duration>,
}

impl Push {
    /// 0-255, **higher is served first** (the opposite of beanstalkd). Default 0.
    pub fn priority(mut self, priority: u8) -> Push {
        self.priority = Some(priority);
        self
    }

    /// Invisible for `delay` (up to 7 days). Default: the queue's delay (0 unless
    /// configured).
    pub fn delay(mut self, delay: Duration) -> Push {
        self.delay = Some(delay);
        self
    }

    /// Dropped once older than `ttl` (1 ms to 30 days). Default: the queue's retention.
    pub fn ttl(mut self, ttl: Duration) -> Push {
        self.ttl = Some(ttl);
        self
    }

    /// Sends it: the id, once the message is durable.
    pub async fn send(self) -> Result<u64, Error> {
        let cmd = Cmd::new("QPUSH")
            .text(&self.queue)
            .bytes(self.payload)
            .opt("PRI", self.priority)
            .opt("DELAY", self.delay.map(ms))
            .opt("TTL", self.ttl.map(ms));
        reply::u64_reply(self.client.call(cmd).await?)
    }
}

impl IntoFuture for Push {
    type Output = Result<u64, Error>;
    type IntoFuture = BoxFuture<Result<u64, Error>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}

/// A batch push being prepared ([`Client::push_many`]); sent when awaited.
#[derive(Debug)]
#[must_use = "a push is sent only when it is awaited"]
pub struct PushMany {
    client: Client,
    queue: String,
    payloads: Vec<Bytes>,
    priority: Option<u8>,
    delay: Option<Duration>,
}

impl PushMany {
    /// The priority of every message (see [`Push::priority`]).
    pub fn priority(mut self, priority: u8) -> PushMany {
        self.priority = Some(priority);
        self
    }

    /// The delay of every message (see [`Push::delay`]).
    pub fn delay(mut self, delay: Duration) -> PushMany {
        self.delay = Some(delay);
        self
    }

    /// Sends it: the ids in order, once all messages are durable.
    pub async fn send(self) -> Result<Vec<u64>, Error> {
        if self.payloads.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = Cmd::new("QPUSHMANY")
            .text(&self.queue)
            .opt("PRI", self.priority)
            .opt("DELAY", self.delay.map(ms))
            .word("--");
        for p in self.payloads {
            cmd = cmd.bytes(p);
        }
        reply::ids_reply(self.client.call(cmd).await?)
    }
}

impl IntoFuture for PushMany {
    type Output = Result<Vec<u64>, Error>;
    type IntoFuture = BoxFuture<Result<Vec<u64>, Error>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}
