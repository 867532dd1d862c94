//! TLS and mutual TLS: the client through a TLS-terminating proxy (rustls, the test's own
//! certificates) in front of the real server, until the server terminates TLS itself.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use spool_client::{Client, Error, LeaseOptions, Options, TlsOptions};
use spool_testkit::certs::Pki;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::Fixture;

/// A proxy that requires a client certificate signed by the test CA and forwards the
/// plaintext to `backend`.
async fn mtls_proxy(pki: &Pki, backend: SocketAddr) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pki.server.cert)
        .expect("server cert")
        .collect::<Result<_, _>>()
        .expect("server cert");
    let key = PrivateKeyDer::from_pem_file(&pki.server.key).expect("server key");
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&pki.ca.cert).expect("ca"))
        .expect("ca");
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("client verifier");
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .expect("server config");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                let Ok(mut plain) = TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn mutual_tls_round_trip() {
    let pki = Pki::generate().expect("certificates");
    let f = Fixture::start().await;
    let proxy = mtls_proxy(&pki, f.server.local_addr()).await;
    let tls = TlsOptions::ca_file(&pki.ca.cert).client_cert(&pki.client.cert, &pki.client.key);
    let c = Client::connect_with(Options::new(proxy.to_string()).tls(tls).resp3())
        .await
        .expect("connect over mTLS");
    let id = c.push("secure", "secret").await.expect("push");
    let got = c
        .lease("secure", LeaseOptions::default())
        .await
        .expect("lease");
    assert_eq!(got[0].id, id);
    assert_eq!(&got[0].payload[..], b"secret");
    f.server.shutdown().await;
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_refused() {
    let pki = Pki::generate().expect("certificates");
    let f = Fixture::start().await;
    let proxy = mtls_proxy(&pki, f.server.local_addr()).await;
    let tls =
        TlsOptions::ca_file(&pki.other_ca.cert).client_cert(&pki.client.cert, &pki.client.key);
    let err = Client::connect_with(Options::new(proxy.to_string()).tls(tls))
        .await
        .expect_err("untrusted server");
    assert!(
        matches!(&err, Error::Tls(m) if m.contains("handshake")),
        "{err:?}"
    );
    f.server.shutdown().await;
}

#[tokio::test]
async fn unreadable_tls_files_are_reported_with_their_path() {
    let err = Client::connect_with(
        Options::new("127.0.0.1:1").tls(TlsOptions::ca_file("/nonexistent/ca.pem")),
    )
    .await
    .expect_err("no CA file");
    assert!(
        matches!(&err, Error::Tls(m) if m.contains("/nonexistent/ca.pem")),
        "{err:?}"
    );
}
