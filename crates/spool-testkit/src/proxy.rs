//! A fault-injecting TCP proxy to put between an MQTT client and the broker.
//!
//! [`Proxy::start`] listens on a free port of 127.0.0.1 and forwards every connection it
//! accepts to the upstream address, one thread per direction (the testkit is dev-only: plain
//! blocking threads make the behaviour easy to reason about and need no runtime). A test
//! thread changes the behaviour at any moment while traffic flows:
//!
//! - [`Proxy::drop_connections`]: every current connection is cut at once, both sides, with
//!   an RST where the socket is still open (`SO_LINGER` 0), as when a NAT or a cellular link
//!   forgets a connection;
//! - [`Proxy::set_refusing`] / [`Proxy::refuse_for`]: new connections are accepted and reset
//!   at once (the client sees its connect fail), as when the broker is down;
//! - [`Proxy::set_stalled`]: nothing is forwarded in either direction, but every socket stays
//!   open: a half-open link that only the client's keepalive can detect. What arrives meanwhile
//!   is read and held (counted in [`Flow::received`], not in [`Flow::forwarded`]) and
//!   forwarded once the stall ends;
//! - [`Proxy::set_bandwidth`] / [`Proxy::set_latency`]: a slow link (bytes per second per
//!   direction, and a delay before each forwarded chunk);
//! - [`Proxy::stats`]: byte and connection counters, and [`Proxy::wait_until`] to wait (with a
//!   bound) for a condition on them instead of sleeping.
//!
//! Invariant: bytes are forwarded in order and unchanged; the proxy only delays, withholds
//! or cuts.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The largest chunk read and forwarded at once.
const CHUNK_BYTES: usize = 16 * 1024;
/// With a bandwidth limit, chunks are cut to about this much transfer time so that the rate
/// is smooth rather than one big burst followed by a long pause.
const SLOW_CHUNK_TIME: Duration = Duration::from_millis(50);
/// How long the proxy tries to reach the upstream for a new connection.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often [`Proxy::wait_until`] looks at the counters.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Bytes in one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// Read from the sending side (includes what a stall holds back).
    pub received: u64,
    /// Written to the receiving side.
    pub forwarded: u64,
}

/// The proxy's counters since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted and connected to the upstream.
    pub accepted: u64,
    /// Connections reset at once because the proxy was refusing.
    pub refused: u64,
    /// Connections reset because the upstream could not be reached.
    pub upstream_failed: u64,
    /// Connections cut by [`Proxy::drop_connections`].
    pub dropped: u64,
    /// Connections open now (both forwarding threads still running).
    pub open: u64,
    pub client_to_upstream: Flow,
    pub upstream_to_client: Flow,
}

impl ProxyStats {
    /// Bytes read but not (yet) forwarded, both directions: what a stall holds back, or what
    /// is on its way. Zero when the proxy is idle.
    pub fn held_bytes(&self) -> u64 {
        let flows = [self.client_to_upstream, self.upstream_to_client];
        flows.iter().map(|f| f.received - f.forwarded).sum()
    }
}

#[derive(Debug, Default)]
struct Control {
    stalled: bool,
    refusing: bool,
    refuse_until: Option<Instant>,
    bandwidth_bytes_per_sec: Option<u64>,
    latency: Duration,
}

impl Control {
    fn refusing_now(&self) -> bool {
        self.refusing
            || self
                .refuse_until
                .is_some_and(|until| Instant::now() < until)
    }
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    refused: AtomicU64,
    upstream_failed: AtomicU64,
    dropped: AtomicU64,
    open: AtomicU64,
    /// [client->upstream, upstream->client] x [received, forwarded]
    bytes: [[AtomicU64; 2]; 2],
}

struct Conn {
    client: TcpStream,
    upstream: TcpStream,
    closed: AtomicBool,
    /// Forwarding threads still running; the last one out unregisters the connection.
    pumps: AtomicU8,
}

impl Conn {
    /// Cuts both sockets: blocked reads return at once, the peers get an RST.
    fn cut(&self) {
        self.closed.store(true, Ordering::SeqCst);
        for stream in [&self.client, &self.upstream] {
            // Linger 0 turns the close into an RST; errors mean the socket is already gone.
            let _ = rustix::net::sockopt::set_socket_linger(stream, Some(Duration::ZERO));
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

struct Shared {
    upstream: SocketAddr,
    control: Mutex<Control>,
    /// Signalled on every control change, so held and sleeping forwarders react at once.
    changed: Condvar,
    counters: Counters,
    conns: Mutex<Vec<Arc<Conn>>>,
    stopping: AtomicBool,
}

impl Shared {
    fn control(&self) -> MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn conns(&self) -> MutexGuard<'_, Vec<Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits while the link is stalled. False if the connection was cut meanwhile.
    fn wait_while_stalled(&self, conn: &Conn) -> bool {
        let mut control = self.control();
        while control.stalled && !conn.closed.load(Ordering::SeqCst) {
            control = self
                .changed
                .wait(control)
                .unwrap_or_else(PoisonError::into_inner);
        }
        !conn.closed.load(Ordering::SeqCst)
    }

    /// Sleeps until `deadline` unless the connection is cut first. False if it was cut.
    fn sleep_until(&self, conn: &Conn, deadline: Instant) -> bool {
        let mut control = self.control();
        loop {
            if conn.closed.load(Ordering::SeqCst) {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            control = self
                .changed
                .wait_timeout(control, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// A running proxy. Dropping it cuts every connection and stops listening.
pub struct Proxy {
    shared: Arc<Shared>,
    local: SocketAddr,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1 and forwards every connection to `upstream`
    /// (connected when the client connects, so the upstream may come and go).
    pub fn start(upstream: SocketAddr) -> io::Result<Proxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let local = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            control: Mutex::new(Control::default()),
            changed: Condvar::new(),
            counters: Counters::default(),
            conns: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("proxy-accept".into())
                .spawn(move || accept_loop(&shared, &listener))?
        };
        Ok(Proxy {
            shared,
            local,
            acceptor: Some(acceptor),
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.local
    }

    pub fn port(&self) -> u16 {
        self.local.port()
    }

    /// Where connections are forwarded.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// Back to plain forwarding: no stall, no refusal, no bandwidth limit or latency.
    pub fn pass_through(&self) {
        self.update(|c| *c = Control::default());
    }

    /// Cuts every current connection (RST to both sides). Returns how many were cut.
    pub fn drop_connections(&self) -> usize {
        let conns: Vec<Arc<Conn>> = self.shared.conns().clone();
        for conn in &conns {
            if !conn.closed.load(Ordering::SeqCst) {
                conn.cut();
                self.shared.counters.dropped.fetch_add(1, Ordering::SeqCst);
            }
        }
        // Wake forwarders held by a stall or sleeping on a slow link.
        self.update(|_| {});
        conns.len()
    }

    /// While true, every new connection is reset as soon as it is accepted.
    pub fn set_refusing(&self, refusing: bool) {
        self.update(|c| {
            c.refusing = refusing;
            if !refusing {
                c.refuse_until = None;
            }
        });
    }

    /// Resets every new connection for `duration` from now.
    pub fn refuse_for(&self, duration: Duration) {
        self.update(|c| c.refuse_until = Some(Instant::now() + duration));
    }

    /// While true, nothing is forwarded in either direction and every socket stays open.
    pub fn set_stalled(&self, stalled: bool) {
        self.update(|c| c.stalled = stalled);
    }

    /// Limits each direction of each connection to about `bytes_per_sec` (None: no limit).
    pub fn set_bandwidth(&self, bytes_per_sec: Option<u64>) {
        assert!(
            bytes_per_sec != Some(0),
            "a bandwidth of 0 is a stall: use set_stalled"
        );
        self.update(|c| c.bandwidth_bytes_per_sec = bytes_per_sec);
    }

    /// Delays each forwarded chunk by `latency` (zero: no delay).
    pub fn set_latency(&self, latency: Duration) {
        self.update(|c| c.latency = latency);
    }

    pub fn stats(&self) -> ProxyStats {
        let c = &self.shared.counters;
        let flow = |dir: usize| Flow {
            received: c.bytes[dir][0].load(Ordering::SeqCst),
            forwarded: c.bytes[dir][1].load(Ordering::SeqCst),
        };
        ProxyStats {
            accepted: c.accepted.load(Ordering::SeqCst),
            refused: c.refused.load(Ordering::SeqCst),
            upstream_failed: c.upstream_failed.load(Ordering::SeqCst),
            dropped: c.dropped.load(Ordering::SeqCst),
            open: c.open.load(Ordering::SeqCst),
            client_to_upstream: flow(0),
            upstream_to_client: flow(1),
        }
    }

    /// Waits until `condition` holds for the counters, at most `timeout`. Returns the counters
    /// that satisfied it, or None (with the last counters dropped) on timeout.
    pub fn wait_until(
        &self,
        timeout: Duration,
        mut condition: impl FnMut(&ProxyStats) -> bool,
    ) -> Option<ProxyStats> {
        let deadline = Instant::now() + timeout;
        loop {
            let stats = self.stats();
            if condition(&stats) {
                return Some(stats);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    fn update(&self, change: impl FnOnce(&mut Control)) {
        change(&mut self.shared.control());
        self.shared.changed.notify_all();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the blocking accept; it sees `stopping` and returns.
        let _ = TcpStream::connect_timeout(&self.local, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        self.drop_connections();
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = stream else { continue };
        if shared.control().refusing_now() {
            reset(&client);
            shared.counters.refused.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        let Ok(upstream) = TcpStream::connect_timeout(&shared.upstream, UPSTREAM_CONNECT_TIMEOUT)
        else {
            reset(&client);
            let failed = &shared.counters.upstream_failed;
            failed.fetch_add(1, Ordering::SeqCst);
            continue;
        };
        if let Err(e) = start_connection(shared, client, upstream) {
            eprintln!("proxy: cannot start forwarding threads: {e}");
        }
    }
}

fn reset(stream: &TcpStream) {
    let _ = rustix::net::sockopt::set_socket_linger(stream, Some(Duration::ZERO));
}

fn start_connection(
    shared: &Arc<Shared>,
    client: TcpStream,
    upstream: TcpStream,
) -> io::Result<()> {
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let conn = Arc::new(Conn {
        client,
        upstream,
        closed: AtomicBool::new(false),
        pumps: AtomicU8::new(2),
    });
    shared.conns().push(Arc::clone(&conn));
    shared.counters.accepted.fetch_add(1, Ordering::SeqCst);
    shared.counters.open.fetch_add(1, Ordering::SeqCst);
    for dir in 0..2 {
        let (pump_shared, pump_conn) = (Arc::clone(shared), Arc::clone(&conn));
        let spawned = thread::Builder::new()
            .name(format!("proxy-pump-{dir}"))
            .spawn(move || pump(&pump_shared, &pump_conn, dir));
        if let Err(e) = spawned {
            conn.cut();
            // The forwarders that will never run leave now.
            for _ in dir..2 {
                pump_done(shared, &conn);
            }
            return Err(e);
        }
    }
    Ok(())
}

/// One forwarder of `conn` is done; the last one unregisters the connection.
fn pump_done(shared: &Shared, conn: &Arc<Conn>) {
    if conn.pumps.fetch_sub(1, Ordering::SeqCst) == 1 {
        shared.conns().retain(|c| !Arc::ptr_eq(c, conn));
        shared.counters.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Forwards one direction (0: client to upstream, 1: upstream to client) until EOF, an
/// error or a cut, then unregisters the connection if it was the last forwarder.
fn pump(shared: &Shared, conn: &Arc<Conn>, dir: usize) {
    let (mut from, mut to) = if dir == 0 {
        (&conn.client, &conn.upstream)
    } else {
        (&conn.upstream, &conn.client)
    };
    let counters = &shared.counters.bytes[dir];
    let mut buf = vec![0u8; CHUNK_BYTES];
    let clean_eof = loop {
        let (bandwidth, latency) = {
            let control = shared.control();
            (control.bandwidth_bytes_per_sec, control.latency)
        };
        let limit = bandwidth.map_or(CHUNK_BYTES, |bw| {
            let per_chunk = bw as f64 * SLOW_CHUNK_TIME.as_secs_f64();
            (per_chunk as usize).clamp(1, CHUNK_BYTES)
        });
        let n = match from.read(&mut buf[..limit]) {
            Ok(0) => break true,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break false,
        };
        counters[0].fetch_add(n as u64, Ordering::SeqCst);
        if !shared.wait_while_stalled(conn) {
            break false;
        }
        // The link settings may have changed while stalled: read them again.
        let (bandwidth, latency) = {
            let control = shared.control();
            (
                control.bandwidth_bytes_per_sec.or(bandwidth),
                control.latency.max(latency),
            )
        };
        let delay = latency
            + bandwidth.map_or(Duration::ZERO, |bw| {
                Duration::from_secs_f64(n as f64 / bw as f64)
            });
        if !delay.is_zero() && !shared.sleep_until(conn, Instant::now() + delay) {
            break false;
        }
        if to.write_all(&buf[..n]).is_err() {
            break false;
        }
        counters[1].fetch_add(n as u64, Ordering::SeqCst);
    };
    if clean_eof && !conn.closed.load(Ordering::SeqCst) {
        // Pass the half-close on; the other direction may still carry data.
        let _ = to.shutdown(Shutdown::Write);
    } else {
        conn.cut();
    }
    pump_done(shared, conn);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on a free port; returns its address.
    fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    loop {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if stream.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    const WAIT: Duration = Duration::from_secs(10);

    fn connect(proxy: &Proxy) -> TcpStream {
        let stream = TcpStream::connect(proxy.addr()).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream
    }

    fn echo(stream: &mut TcpStream, data: &[u8]) -> Vec<u8> {
        stream.write_all(data).unwrap();
        let mut back = vec![0u8; data.len()];
        stream.read_exact(&mut back).unwrap();
        back
    }

    #[test]
    fn passes_bytes_through_and_counts_them() {
        let proxy = Proxy::start(echo_server()).unwrap();
        let mut s = connect(&proxy);
        assert_eq!(echo(&mut s, b"hello"), b"hello");
        let stats = proxy
            .wait_until(WAIT, |s| s.upstream_to_client.forwarded == 5)
            .unwrap();
        assert_eq!(stats.accepted, 1);
        assert_eq!(stats.open, 1);
        assert_eq!(stats.client_to_upstream.forwarded, 5);
        drop(s);
        proxy.wait_until(WAIT, |s| s.open == 0).unwrap();
    }

    #[test]
    fn drop_cuts_the_connection_and_new_ones_work() {
        let proxy = Proxy::start(echo_server()).unwrap();
        let mut s = connect(&proxy);
        assert_eq!(echo(&mut s, b"a"), b"a");
        assert_eq!(proxy.drop_connections(), 1);
        let mut buf = [0u8; 1];
        let read = s.read(&mut buf);
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        proxy.wait_until(WAIT, |s| s.open == 0).unwrap();
        assert_eq!(proxy.stats().dropped, 1);
        let mut s = connect(&proxy);
        assert_eq!(echo(&mut s, b"b"), b"b");
    }

    #[test]
    fn refusing_resets_new_connections_until_turned_off() {
        let proxy = Proxy::start(echo_server()).unwrap();
        proxy.set_refusing(true);
        let mut s = connect(&proxy);
        let _ = s.write_all(b"x");
        let mut buf = [0u8; 1];
        let read = s.read(&mut buf);
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert_eq!(proxy.stats().refused, 1);
        assert_eq!(proxy.stats().accepted, 0);
        proxy.set_refusing(false);
        let mut s = connect(&proxy);
        assert_eq!(echo(&mut s, b"y"), b"y");
        // A timed refusal ends by itself, or when lifted.
        proxy.refuse_for(Duration::from_secs(3600));
        let mut s = connect(&proxy);
        let read = s.read(&mut buf);
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert_eq!(proxy.stats().refused, 2);
        proxy.set_refusing(false);
        let mut s = connect(&proxy);
        assert_eq!(echo(&mut s, b"z"), b"z");
    }

    #[test]
    fn stall_holds_bytes_with_the_socket_open_then_forwards_them() {
        let proxy = Proxy::start(echo_server()).unwrap();
        let mut s = connect(&proxy);
        assert_eq!(echo(&mut s, b"1"), b"1");
        proxy.set_stalled(true);
        s.write_all(b"2").unwrap();
        // The proxy has the byte but does not pass it on.
        let stats = proxy
            .wait_until(WAIT, |s| s.client_to_upstream.received == 2)
            .unwrap();
        assert_eq!(stats.client_to_upstream.forwarded, 1);
        assert_eq!(stats.open, 1);
        proxy.set_stalled(false);
        let mut back = [0u8; 1];
        s.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"2");
    }

    #[test]
    fn drop_during_a_stall_cuts_held_connections() {
        let proxy = Proxy::start(echo_server()).unwrap();
        let mut s = connect(&proxy);
        proxy.set_stalled(true);
        s.write_all(b"held").unwrap();
        proxy
            .wait_until(WAIT, |s| s.client_to_upstream.received == 4)
            .unwrap();
        proxy.drop_connections();
        proxy.wait_until(WAIT, |s| s.open == 0).unwrap();
    }

    #[test]
    fn a_slow_link_delivers_everything_in_order() {
        let proxy = Proxy::start(echo_server()).unwrap();
        proxy.set_bandwidth(Some(100_000));
        proxy.set_latency(Duration::from_millis(1));
        let mut s = connect(&proxy);
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(echo(&mut s, &data), data);
        proxy.pass_through();
        assert_eq!(echo(&mut s, b"fast"), b"fast");
    }

    #[test]
    fn an_unreachable_upstream_resets_the_client() {
        let upstream = {
            let l = TcpListener::bind(("127.0.0.1", 0)).unwrap();
            l.local_addr().unwrap()
        };
        let proxy = Proxy::start(upstream).unwrap();
        let mut s = connect(&proxy);
        let mut buf = [0u8; 1];
        let read = s.read(&mut buf);
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert_eq!(proxy.stats().upstream_failed, 1);
    }
}
