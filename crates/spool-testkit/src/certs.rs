//! Certificates made in the test, for TLS and mutual-TLS tests against a real broker.
//!
//! [`Pki::generate`] writes PEM files into a temporary directory (kept as long as the `Pki`
//! lives): a CA, a server certificate for `localhost` and `127.0.0.1` signed by it, a client
//! certificate for mutual TLS, a second, unrelated CA with its own client certificate (the
//! "wrong CA" and "wrong client certificate" cases), and **expired** server and client
//! certificates signed by the good CA (their validity ended in 2001).
//!
//! Keys are ECDSA P-256 in PKCS#8 PEM (`BEGIN PRIVATE KEY`), which OpenSSL (Mosquitto,
//! `mosquitto_pub`) and rustls both read. Every end-entity certificate carries subject
//! alternative names and the extended key usage of its role, as WebPKI verifiers require.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// The names the server certificates are valid for: what a test connects to.
pub const SERVER_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// Why the certificates could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("generating a certificate failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("writing {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// A certificate and its private key, as PEM files.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Every certificate a TLS test needs, as PEM files in a temporary directory.
#[derive(Debug)]
pub struct Pki {
    dir: tempfile::TempDir,
    /// The CA that signs `server`, `client`, `expired_server` and `expired_client`.
    pub ca: CertFiles,
    /// Signed by `ca`, valid for [`SERVER_NAMES`], extended key usage server auth.
    pub server: CertFiles,
    /// Signed by `ca`, common name `spool-test-client`, extended key usage client auth.
    pub client: CertFiles,
    /// A CA unrelated to `ca`: trusting it instead of `ca` must fail the handshake.
    pub other_ca: CertFiles,
    /// Signed by `other_ca`: a broker that trusts only `ca` must refuse it.
    pub other_client: CertFiles,
    /// Like `server` but its validity ended on 2001-01-01.
    pub expired_server: CertFiles,
    /// Like `client` but its validity ended on 2001-01-01.
    pub expired_client: CertFiles,
}

impl Pki {
    /// Generates the whole set into a new temporary directory.
    pub fn generate() -> Result<Pki, Error> {
        let dir = tempfile::Builder::new()
            .prefix("spool-pki-")
            .tempdir()
            .map_err(|source| Error::Io {
                path: std::env::temp_dir(),
                source,
            })?;
        let root = dir.path().to_path_buf();
        let write = |name: &str, cert: String, key: String| -> Result<CertFiles, Error> {
            let files = CertFiles {
                cert: root.join(format!("{name}.crt")),
                key: root.join(format!("{name}.key")),
            };
            write_file(&files.cert, &cert)?;
            write_file(&files.key, &key)?;
            Ok(files)
        };

        let ca = new_ca("spool test CA")?;
        let other_ca = new_ca("unrelated test CA")?;

        let server = leaf(&ca, &SERVER_NAMES, "localhost", Role::Server, false)?;
        let client = leaf(&ca, &[], "spool-test-client", Role::Client, false)?;
        let other_client = leaf(&other_ca, &[], "spool-test-client", Role::Client, false)?;
        let expired_server = leaf(&ca, &SERVER_NAMES, "localhost", Role::Server, true)?;
        let expired_client = leaf(&ca, &[], "spool-test-client", Role::Client, true)?;

        Ok(Pki {
            ca: write("ca", ca.pem(), ca.key().serialize_pem())?,
            other_ca: write("other-ca", other_ca.pem(), other_ca.key().serialize_pem())?,
            server: write("server", server.0, server.1)?,
            client: write("client", client.0, client.1)?,
            other_client: write("other-client", other_client.0, other_client.1)?,
            expired_server: write("expired-server", expired_server.0, expired_server.1)?,
            expired_client: write("expired-client", expired_client.0, expired_client.1)?,
            dir,
        })
    }

    /// The directory holding the PEM files (removed when the `Pki` is dropped).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

#[derive(Clone, Copy)]
enum Role {
    Server,
    Client,
}

fn new_ca(name: &str) -> Result<CertifiedIssuer<'static, KeyPair>, Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.remove(DnType::CommonName);
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?)
}

/// An end-entity certificate signed by `ca`: (certificate PEM, key PEM).
fn leaf(
    ca: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
    common_name: &str,
    role: Role,
    expired: bool,
) -> Result<(String, String), Error> {
    let names: Vec<String> = names.iter().map(|n| (*n).to_string()).collect();
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name.remove(DnType::CommonName);
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![match role {
        Role::Server => ExtendedKeyUsagePurpose::ServerAuth,
        Role::Client => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    params.use_authority_key_identifier_extension = true;
    if expired {
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    }
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write_file(path: &Path, contents: &str) -> Result<(), Error> {
    fs::write(path, contents).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_is_pem() {
        let pki = Pki::generate().unwrap();
        for files in [
            &pki.ca,
            &pki.server,
            &pki.client,
            &pki.other_ca,
            &pki.other_client,
            &pki.expired_server,
            &pki.expired_client,
        ] {
            let cert = fs::read_to_string(&files.cert).unwrap();
            let key = fs::read_to_string(&files.key).unwrap();
            assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
            assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
        }
    }
}
