//! Reading PEM files: a certificate chain, a private key, a CA bundle. Errors
//! name the file and what was wrong with it, never the bytes.

use std::path::Path;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

use super::TlsError;

/// The bytes of `path`.
pub fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn pem_err(path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::Pem {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Every certificate in `pem` (read from `path`); at least one.
pub fn certs(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(path, format!("not valid PEM certificates ({e})")))?;
    if certs.is_empty() {
        return Err(pem_err(path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// The private key in `pem` (PKCS#8, PKCS#1 or SEC1).
pub fn key(pem: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => pem_err(path, "holds no PEM private key"),
        e => pem_err(path, format!("not a valid PEM private key ({e})")),
    })
}

/// A trust store of every certificate in the bundle `pem`.
pub fn roots(pem: &[u8], path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certs(pem, path)? {
        store
            .add(cert)
            .map_err(|e| pem_err(path, format!("a CA certificate is not usable ({e})")))?;
    }
    Ok(store)
}
