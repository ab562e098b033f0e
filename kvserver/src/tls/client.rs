//! [`ClientTls`]: what an API client needs to speak HTTPS to kvserver — the CA
//! bundle it trusts and, when the server asks for one, its client certificate.
//! Used by `kvserver::client` (and so kvctl and the operator), kvbench, and a
//! node relaying a request to the leader's client port.

use std::path::PathBuf;
use std::sync::Arc;

use super::TlsError;
use super::pem;

/// TLS settings of an API client. A client without them speaks plain HTTP.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// CA bundle (PEM) that signed the servers' certificates. Required: kvserver's
    /// certificates come from a cluster's own CA, never from the public web PKI.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM), sent when the server asks for one.
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM) of `cert_file`.
    pub key_file: Option<PathBuf>,
}

impl ClientTls {
    /// Whether any TLS setting is given.
    pub fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }

    /// The rustls configuration (HTTP/1.1 over TLS 1.2 or 1.3).
    pub fn rustls_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let ca = self.ca_file.as_ref().ok_or_else(|| {
            TlsError::Config(
                "TLS needs the CA bundle that signed the servers' certificates (ca file)".into(),
            )
        })?;
        let roots = pem::roots(&pem::read(ca)?, ca)?;
        let builder = rustls::ClientConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let mut config = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                let chain = pem::certs(&pem::read(cert)?, cert)?;
                let key_der = pem::key(&pem::read(key)?, key)?;
                builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                    TlsError::Certificate {
                        path: cert.clone(),
                        message: format!("does not go with the key in {} ({e})", key.display()),
                    }
                })?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(TlsError::Config(
                    "a client certificate needs both its certificate and its key file".into(),
                ));
            }
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    /// The same, shared.
    pub fn shared_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        self.rustls_config().map(Arc::new)
    }
}

/// The rustls configuration of an API client from PEM held in memory (the
/// operator reads its CA bundle and client certificate from Secrets).
pub fn config_from_pem(
    ca_pem: &str,
    client: Option<(&str, &str)>,
) -> Result<rustls::ClientConfig, TlsError> {
    let here = std::path::Path::new("<memory>");
    let roots = pem::roots(ca_pem.as_bytes(), here)?;
    let builder = rustls::ClientConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                pem::certs(cert.as_bytes(), here)?,
                pem::key(key.as_bytes(), here)?,
            )
            .map_err(|e| TlsError::Config(format!("client certificate: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Installs ring as the process's default rustls provider (once; later calls do
/// nothing). reqwest is built without a provider of its own, so that no aws-lc
/// is compiled, and needs a default one even for plain-HTTP clients.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// `reqwest::Client::builder()`, after [`install_provider`]: the one way this
/// workspace makes HTTP clients. Its TLS trusts nothing until a CA bundle is given
/// (`tls_backend_preconfigured` with a [`ClientTls`] configuration replaces it):
/// kvserver's certificates come from a cluster's own CA, never from the public
/// web PKI — and reqwest's default would look for system roots, which the
/// container images do not carry (the operator's `--check` failed on that in the
/// e2e run of 2026-12-02: "No CA certificates were loaded from the system").
pub fn http_builder() -> reqwest::ClientBuilder {
    install_provider();
    let builder = reqwest::Client::builder();
    match rustls::ClientConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()
    {
        Ok(b) => builder.tls_backend_preconfigured(
            b.with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        ),
        Err(_) => builder,
    }
}
