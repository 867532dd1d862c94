//! TLS for the server's listeners (rustls, ring provider): a certificate chain and key from
//! PEM files, and optionally a CA whose client certificates are required or accepted
//! (mutual TLS).
//!
//! - The RESP listener takes a [`Tls`] in [`crate::ServerConfig::tls`]; each connection's
//!   handshake runs in that connection's own task, bounded by [`HANDSHAKE_TIMEOUT`].
//! - The HTTP listener takes a [`TlsListener`], which implements axum 0.8's
//!   `axum::serve::Listener`: `axum::serve(TlsListener::bind(addr, tls).await?, router)`.
//!   Handshakes run in tasks of their own, so a slow or silent client cannot hold up the
//!   others' connections.
//!
//! A failed handshake (a plain-text client, an untrusted or missing client certificate)
//! closes that connection only; it is logged at debug level.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client may take to complete the handshake before its connection is closed
/// (a healthy one needs a few round trips; this frees the slot of one that sends nothing).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections whose handshake is done, waiting for the HTTP server to take them.
const ACCEPTED_QUEUE: usize = 64;

/// Whether clients must present a certificate signed by the client CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No certificate, no connection.
    Required,
    /// A certificate is checked when sent; clients without one are let in (and then
    /// authenticate with a password or token).
    Optional,
}

/// Where the PEM files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain (leaf first).
    pub cert: PathBuf,
    /// The server's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates for client certificates; `None`: no client certificates asked for.
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: required or optional.
    pub client_auth: ClientAuth,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("TLS file {}: {reason}; give a PEM file", path.display())]
    File { path: PathBuf, reason: String },
    #[error("TLS setup: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}; pick another address")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A ready TLS server configuration (cheap to clone).
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Tls")
    }
}

fn file_err(path: &Path, e: &dyn fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(path, &e))?;
    if certs.is_empty() {
        return Err(file_err(path, &"no certificate in the file"));
    }
    Ok(certs)
}

impl Tls {
    /// Reads and checks the files.
    pub fn load(files: &TlsFiles) -> Result<Tls, TlsError> {
        let chain = certs(&files.cert)?;
        let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| file_err(&files.key, &e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &files.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in certs(ca)? {
                    roots.add(c).map_err(|e| file_err(ca, &e))?;
                }
                let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let v = match files.client_auth {
                    ClientAuth::Required => v,
                    ClientAuth::Optional => v.allow_unauthenticated(),
                };
                builder.with_client_cert_verifier(
                    v.build().map_err(|e| TlsError::Config(e.to_string()))?,
                )
            }
        };
        let config = builder
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::Config(format!("certificate and key do not fit: {e}")))?;
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// The handshake on an accepted socket, bounded by [`HANDSHAKE_TIMEOUT`].
    pub async fn accept(&self, socket: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(socket))
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the TLS handshake did not complete in time",
                )
            })?
    }
}

/// A TLS listener for axum 0.8 (`axum::serve::Listener`): accepts TCP connections, runs
/// each handshake in its own task, and hands out the connections whose handshake succeeded.
/// Dropping it stops accepting.
#[derive(Debug)]
pub struct TlsListener {
    local_addr: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsListener {
    /// Binds `addr` (port 0: any free port).
    pub async fn bind(addr: SocketAddr, tls: Tls) -> Result<TlsListener, TlsError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| TlsError::Bind { addr, source })?;
        TlsListener::from_tcp(listener, tls)
    }

    /// Over a bound listener.
    pub fn from_tcp(listener: TcpListener, tls: Tls) -> Result<TlsListener, TlsError> {
        let local_addr = listener.local_addr().map_err(|source| TlsError::Bind {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
        let (tx, ready) = mpsc::channel(ACCEPTED_QUEUE);
        let task = tokio::spawn(async move {
            loop {
                let (socket, peer) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let tls = tls.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tls.accept(socket).await {
                        Ok(stream) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Err(e) => tracing::debug!("TLS handshake with {peer} failed: {e}"),
                    }
                });
            }
        });
        Ok(TlsListener {
            local_addr,
            ready,
            task,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(x) => x,
            // The accept task is gone (only when the runtime shuts down): wait forever, as
            // a listener that has no more connections.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use spool_testkit::certs::{CertFiles, Pki};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::TlsConnector;

    fn files(pki: &Pki, client_ca: Option<ClientAuth>) -> TlsFiles {
        TlsFiles {
            cert: pki.server.cert.clone(),
            key: pki.server.key.clone(),
            client_ca: client_ca.map(|_| pki.ca.cert.clone()),
            client_auth: client_ca.unwrap_or(ClientAuth::Required),
        }
    }

    fn connector(pki: &Pki, client: Option<&CertFiles>) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        for c in certs(&pki.ca.cert).expect("ca") {
            roots.add(c).expect("add");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let b = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
        let config = match client {
            Some(c) => b
                .with_client_auth_cert(
                    certs(&c.cert).expect("cert"),
                    PrivateKeyDer::from_pem_file(&c.key).expect("key"),
                )
                .expect("client cert"),
            None => b.with_no_client_auth(),
        };
        TlsConnector::from(Arc::new(config))
    }

    async fn resp_server(tls: Tls) -> crate::Server {
        let mut config = crate::ServerConfig::new("127.0.0.1:0".parse().expect("addr"));
        config.tls = Some(tls);
        let store = spool_engine::Store::in_memory().expect("store");
        crate::Server::start(config, crate::Service::open(store))
            .await
            .expect("start")
    }

    /// PING over TLS: `Some(reply)`, or `None` when the handshake or the read failed.
    async fn ping(addr: SocketAddr, c: &TlsConnector) -> Option<String> {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::try_from("localhost").expect("name");
        let mut s = c.connect(name, tcp).await.ok()?;
        s.write_all(b"*1\r\n$4\r\nPING\r\n").await.ok()?;
        let mut buf = vec![0u8; 64];
        let n = s.read(&mut buf).await.ok()?;
        (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    #[tokio::test]
    async fn resp_over_tls_and_a_plain_client_does_not_stop_it() {
        let pki = Pki::generate().expect("pki");
        let s = resp_server(Tls::load(&files(&pki, None)).expect("tls")).await;
        // A plain-text client: its handshake fails, its connection alone ends.
        let mut plain = TcpStream::connect(s.local_addr()).await.expect("connect");
        plain
            .write_all(b"*1\r\n$4\r\nPING\r\n")
            .await
            .expect("write");
        let mut junk = Vec::new();
        let _ = plain.read_to_end(&mut junk).await;
        assert!(!String::from_utf8_lossy(&junk).contains("PONG"));
        assert_eq!(
            ping(s.local_addr(), &connector(&pki, None))
                .await
                .as_deref(),
            Some("+PONG\r\n")
        );
        s.shutdown().await;
    }

    #[tokio::test]
    async fn over_tls_a_connection_past_the_limit_gets_the_error_over_tls() {
        let pki = Pki::generate().expect("pki");
        let mut config = crate::ServerConfig::new("127.0.0.1:0".parse().expect("addr"));
        config.tls = Some(Tls::load(&files(&pki, None)).expect("tls"));
        config.max_connections = 1;
        let store = spool_engine::Store::in_memory().expect("store");
        let s = crate::Server::start(config, crate::Service::open(store))
            .await
            .expect("start");
        let c = connector(&pki, None);
        let tcp = TcpStream::connect(s.local_addr()).await.expect("connect");
        let name = ServerName::try_from("localhost").expect("name");
        let mut first = c.connect(name.clone(), tcp).await.expect("handshake");
        first
            .write_all(b"*1\r\n$4\r\nPING\r\n")
            .await
            .expect("write");
        let mut buf = vec![0u8; 64];
        let n = first.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"+PONG\r\n");
        let tcp = TcpStream::connect(s.local_addr()).await.expect("connect");
        let mut second = c.connect(name, tcp).await.expect("handshake");
        let mut text = Vec::new();
        let _ = second.read_to_end(&mut text).await;
        assert_eq!(
            String::from_utf8_lossy(&text),
            "-ERR max number of clients reached\r\n"
        );
        s.shutdown().await;
    }

    #[tokio::test]
    async fn mutual_tls_required_and_optional() {
        let pki = Pki::generate().expect("pki");
        let s =
            resp_server(Tls::load(&files(&pki, Some(ClientAuth::Required))).expect("tls")).await;
        let with = connector(&pki, Some(&pki.client));
        assert_eq!(
            ping(s.local_addr(), &with).await.as_deref(),
            Some("+PONG\r\n")
        );
        assert_eq!(ping(s.local_addr(), &connector(&pki, None)).await, None);
        let stranger = connector(&pki, Some(&pki.other_client));
        assert_eq!(ping(s.local_addr(), &stranger).await, None);
        s.shutdown().await;

        let s =
            resp_server(Tls::load(&files(&pki, Some(ClientAuth::Optional))).expect("tls")).await;
        assert_eq!(
            ping(s.local_addr(), &connector(&pki, None))
                .await
                .as_deref(),
            Some("+PONG\r\n")
        );
        assert_eq!(ping(s.local_addr(), &stranger).await, None);
        s.shutdown().await;
    }

    #[tokio::test]
    async fn bad_files_are_named() {
        let pki = Pki::generate().expect("pki");
        let mut f = files(&pki, None);
        f.key = pki.dir().join("missing.key");
        let e = Tls::load(&f).expect_err("missing key").to_string();
        assert!(e.contains("missing.key"), "{e}");
        let mut f = files(&pki, None);
        f.key = pki.client.key.clone();
        let e = Tls::load(&f).expect_err("key of another cert").to_string();
        assert!(e.contains("do not fit"), "{e}");
    }

    /// The HTTP front end itself over TLS (`HttpConfig::tls`, what `spool serve` sets from
    /// `[tls]`): a push and a health check answered over HTTPS.
    #[tokio::test]
    async fn the_http_front_end_serves_https() {
        let pki = Pki::generate().expect("pki");
        let tls = Tls::load(&files(&pki, None)).expect("tls");
        let mut config = crate::http::HttpConfig::new("127.0.0.1:0".parse().expect("addr"));
        config.tls = Some(tls);
        let store = spool_engine::Store::in_memory().expect("store");
        let server = crate::http::HttpServer::start(config, crate::Service::open(store.clone()))
            .await
            .expect("start");
        let tcp = TcpStream::connect(server.local_addr())
            .await
            .expect("connect");
        let mut s = connector(&pki, None)
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .expect("handshake");
        s.write_all(
            b"POST /v1/queues/jobs/messages HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        )
        .await
        .expect("write");
        let mut body = Vec::new();
        let _ = s.read_to_end(&mut body).await;
        let text = String::from_utf8_lossy(&body);
        assert!(text.starts_with("HTTP/1.1 20"), "{text}");
        assert_eq!(
            store.stats("jobs").expect("stats").messages,
            1,
            "pushed over HTTPS"
        );
        // Plain HTTP on the same port gets no answer.
        let mut plain = TcpStream::connect(server.local_addr())
            .await
            .expect("connect");
        plain
            .write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut junk = Vec::new();
        let _ = plain.read_to_end(&mut junk).await;
        assert!(
            !String::from_utf8_lossy(&junk).contains("200"),
            "plain HTTP refused"
        );
        server.shutdown().await;
    }

    #[tokio::test]
    async fn axum_serves_over_the_tls_listener() {
        let pki = Pki::generate().expect("pki");
        let tls = Tls::load(&files(&pki, None)).expect("tls");
        let listener = TlsListener::bind("127.0.0.1:0".parse().expect("addr"), tls)
            .await
            .expect("bind");
        let addr = axum::serve::Listener::local_addr(&listener).expect("addr");
        let router = axum::Router::new().route("/", axum::routing::get(|| async { "hello tls" }));
        let server = tokio::spawn(async move { axum::serve(listener, router).await });
        // A failed handshake first: the listener goes on.
        let mut plain = TcpStream::connect(addr).await.expect("connect");
        plain
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let mut junk = Vec::new();
        let _ = plain.read_to_end(&mut junk).await;
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let mut s = connector(&pki, None)
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .expect("handshake");
        s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut body = Vec::new();
        let _ = s.read_to_end(&mut body).await;
        let text = String::from_utf8_lossy(&body);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.ends_with("hello tls"), "{text}");
        server.abort();
    }
}
