//! TLS for SIP (RFC 3261 §26.2.1, RFC 5630 §3): the rustls server and client
//! configurations built from `[sip] tls_*`. The connections themselves are
//! the TCP ones (`server::tcp`) with a TLS stream in between: framing,
//! connection reuse and idleness are the same.
//!
//! Peers are verified against `tls_ca`: servers we connect to always
//! (by the IP address we connect to, which their certificate must name, as
//! an iPAddress subjectAltName), clients that connect to us only with
//! `tls_verify_clients` (mutual TLS for peering, RFC 5922's model).

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::{self, pki_types, RootCertStore};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::SipConfig;

/// Why TLS could not be set up from a profile.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A PEM file holds nothing usable.
    #[error("{0}")]
    Pem(String),
    /// rustls refused the certificates or key.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// A verifier could not be built.
    #[error("TLS client verification: {0}")]
    Verifier(String),
}

/// Both halves: accept as a server, connect as a client.
#[derive(Clone)]
pub(crate) struct Tls {
    /// Accepts connections on `tls_listen`.
    pub(crate) acceptor: TlsAcceptor,
    /// Opens connections to peers; `None` without `tls_ca` (nothing to verify
    /// a server against, and connecting unverified is not offered).
    pub(crate) connector: Option<TlsConnector>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("connector", &self.connector.is_some())
            .finish()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn certs(path: &Path) -> Result<Vec<pki_types::CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError::Pem(format!(
            "{}: no CERTIFICATE in it",
            path.display()
        )));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<pki_types::PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| TlsError::Pem(format!("{}: {e}", path.display())))?
        .ok_or_else(|| TlsError::Pem(format!("{}: no PRIVATE KEY in it", path.display())))
}

fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for c in certs(path)? {
        store.add(c)?;
    }
    Ok(store)
}

impl Tls {
    /// Build from `[sip]`; `None` when `tls_listen` is not set.
    pub(crate) fn from_config(sip: &SipConfig) -> Result<Option<Tls>, TlsError> {
        if sip.tls_listen.is_none() {
            return Ok(None);
        }
        let (Some(cert), Some(key_path)) = (&sip.tls_cert, &sip.tls_key) else {
            return Err(TlsError::Pem(
                "sip.tls_listen needs sip.tls_cert and sip.tls_key".into(),
            ));
        };
        let chain = certs(cert)?;
        let key = key(key_path)?;
        let roots = sip.tls_ca.as_deref().map(roots).transpose()?.map(Arc::new);
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?;
        let builder = match (&roots, sip.tls_verify_clients) {
            (Some(roots), true) => {
                let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    roots.clone(),
                    provider(),
                )
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?;
                builder.with_client_cert_verifier(v)
            }
            (None, true) => {
                return Err(TlsError::Pem(
                    "sip.tls_verify_clients needs sip.tls_ca".into(),
                ))
            }
            (_, false) => builder.with_no_client_auth(),
        };
        let server = builder.with_single_cert(chain.clone(), key.clone_key())?;
        let connector = match roots {
            Some(roots) => {
                let client = rustls::ClientConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(roots);
                // Our certificate goes to servers that ask (mutual TLS peering).
                let client = client.with_client_auth_cert(chain, key)?;
                Some(TlsConnector::from(Arc::new(client)))
            }
            None => None,
        };
        Ok(Some(Tls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector,
        }))
    }
}
