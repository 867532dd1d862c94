//! TLS to the server (feature `tls`): rustls with the `ring` provider, the server checked
//! against a CA file or a root store, an optional client certificate (mutual TLS).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::TlsConnector;

use crate::error::Error;

/// How to reach the server over TLS.
#[derive(Clone)]
#[must_use]
pub struct TlsOptions {
    roots: Roots,
    client_cert: Option<(PathBuf, PathBuf)>,
    server_name: Option<String>,
}

#[derive(Clone)]
enum Roots {
    CaFile(PathBuf),
    Store(Arc<rustls::RootCertStore>),
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let roots = match &self.roots {
            Roots::CaFile(p) => format!("ca_file {}", p.display()),
            Roots::Store(s) => format!("root store of {} certificates", s.len()),
        };
        f.debug_struct("TlsOptions")
            .field("roots", &roots)
            .field("client_cert", &self.client_cert)
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl TlsOptions {
    /// Trust the CA certificates of a PEM file (a private CA, or the server's self-signed
    /// certificate).
    pub fn ca_file(path: impl Into<PathBuf>) -> TlsOptions {
        TlsOptions {
            roots: Roots::CaFile(path.into()),
            client_cert: None,
            server_name: None,
        }
    }

    /// Trust the certificates of `roots` (for example the `webpki-roots` or the platform's).
    pub fn roots(roots: rustls::RootCertStore) -> TlsOptions {
        TlsOptions {
            roots: Roots::Store(Arc::new(roots)),
            client_cert: None,
            server_name: None,
        }
    }

    /// Present this certificate chain and private key (PEM files; PKCS#8, PKCS#1 or SEC1
    /// key) when the server asks for one (mutual TLS).
    pub fn client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> TlsOptions {
        self.client_cert = Some((cert.into(), key.into()));
        self
    }

    /// The name the server's certificate must carry. Default: the host of the address.
    pub fn server_name(mut self, name: impl Into<String>) -> TlsOptions {
        self.server_name = Some(name.into());
        self
    }

    /// The connector and the name to check, built once per client.
    pub(crate) fn connector(&self, host: &str) -> Result<Tls, Error> {
        let file_err =
            |path: &Path, e: &dyn std::fmt::Display| Error::Tls(format!("{}: {e}", path.display()));
        let roots = match &self.roots {
            Roots::Store(s) => Arc::clone(s),
            Roots::CaFile(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(path).map_err(|e| file_err(path, &e))? {
                    let cert = cert.map_err(|e| file_err(path, &e))?;
                    roots.add(cert).map_err(|e| file_err(path, &e))?;
                }
                if roots.is_empty() {
                    return Err(file_err(path, &"no certificate in the file"));
                }
                Arc::new(roots)
            }
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_root_certificates(roots);
        let config = match &self.client_cert {
            Some((cert, key)) => {
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                    .map_err(|e| file_err(cert, &e))?
                    .collect::<Result<_, _>>()
                    .map_err(|e| file_err(cert, &e))?;
                if chain.is_empty() {
                    return Err(file_err(cert, &"no certificate in the file"));
                }
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, &e))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| Error::Tls(format!("the client certificate: {e}")))?
            }
            None => builder.with_no_client_auth(),
        };
        let name = self.server_name.as_deref().unwrap_or(host).to_owned();
        let server_name = ServerName::try_from(name.clone()).map_err(|e| {
            Error::Tls(format!(
                "{name:?} is not a valid TLS server name ({e}); set TlsOptions::server_name"
            ))
        })?;
        Ok(Tls {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }
}

/// What a connection needs to start TLS.
#[derive(Clone)]
pub(crate) struct Tls {
    pub(crate) connector: TlsConnector,
    pub(crate) server_name: ServerName<'static>,
}
