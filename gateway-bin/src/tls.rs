//! TLS for the listeners that take it (`--tls-cert`, `--tls-key`): the certificate chain and
//! key read from PEM files into a rustls server configuration (ring provider, TLS 1.2 and 1.3,
//! no client certificates). Owns reading the files; it never touches a connection.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, ensure};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The acceptor for the chain in `cert` and the key in `key`.
pub fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading --tls-cert {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing --tls-cert {}", cert.display()))?;
    ensure!(
        !chain.is_empty(),
        "--tls-cert {} holds no certificate",
        cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading --tls-key {}", key.display()))?;
    let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the TLS certificate and key do not go together")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
