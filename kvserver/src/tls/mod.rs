//! TLS for every connection kvserver takes or makes (threat model and the
//! certificate life cycle: `docs/security.md`). rustls with the ring provider
//! throughout: no OpenSSL, and no aws-lc (whose build needs cmake).
//!
//! Layout:
//! - [`pem`]: certificates, keys and CA bundles from PEM files (servers and clients);
//! - [`client`]: [`ClientTls`], the rustls configuration of an API client (kvctl,
//!   kvbench, the operator, the node's own HTTP relay);
//! - `cert` (server, `ca`): what a certificate says — validity, names, the node identity;
//! - `reload` (server): [`Reloading`], serving material re-read from its files when
//!   they change, keeping the old material when the new one is bad;
//! - `verify` (server): verifiers that always use the current CA bundle;
//! - `peer` (server): [`PeerTls`], the mutual-TLS configurations of the Raft port;
//! - `listener` (server): TLS of the client port (configurations, the handshake);
//! - `issue` (feature `ca`): a CA issuing member and client certificates (the
//!   operator's `mode: auto`, and test clusters).
//!
//! A member's identity is the URI SAN `kvcluster://<cluster_id>/node/<node_id>`
//! ([`node_uri`]) plus a DNS or IP SAN covering the host of its advertised peer
//! address. The URI binds the certificate to one node of one cluster, so a CA
//! shared between clusters (one cert-manager issuer, say) cannot make a member of
//! one cluster a member of another.

pub mod client;
pub mod pem;

#[cfg(any(feature = "server", feature = "ca"))]
mod cert;
#[cfg(feature = "ca")]
pub mod issue;
#[cfg(feature = "server")]
mod listener;
#[cfg(feature = "server")]
mod peer;
#[cfg(feature = "server")]
mod reload;
#[cfg(feature = "server")]
mod verify;

pub use client::ClientTls;
pub use client::http_builder;
pub use client::install_provider;

#[cfg(any(feature = "server", feature = "ca"))]
pub use cert::CertInfo;
#[cfg(any(feature = "server", feature = "ca"))]
pub use cert::inspect;
#[cfg(feature = "server")]
pub use listener::HANDSHAKE_TIMEOUT;
#[cfg(feature = "server")]
pub use listener::api_server_config;
#[cfg(feature = "server")]
pub use listener::handshake;
#[cfg(feature = "server")]
pub use listener::relay_client_config;
#[cfg(feature = "server")]
pub use peer::PeerTls;
#[cfg(feature = "server")]
pub use peer::host_of;
#[cfg(feature = "server")]
pub use peer::valid_for_host;
#[cfg(feature = "server")]
pub use reload::CertFiles;
#[cfg(feature = "server")]
pub use reload::ClientAuth;
#[cfg(feature = "server")]
pub use reload::Reloading;
#[cfg(feature = "server")]
pub use reload::Role;
#[cfg(feature = "server")]
pub(crate) use reload::poll_files;

use std::path::PathBuf;
use std::sync::Arc;

/// Errors loading or using TLS material. They name the file, never its content.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Certificate { path: PathBuf, message: String },
    #[error("{0}")]
    Config(String),
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A DER certificate.
pub type CertDer = rustls_pki_types::CertificateDer<'static>;

/// The one crypto provider of every TLS configuration here.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The URI SAN naming node `node_id` of cluster `cluster_id`.
pub fn node_uri(cluster_id: &str, node_id: u64) -> String {
    format!("kvcluster://{cluster_id}/node/{node_id}")
}

/// The (cluster id, node id) a [`node_uri`] names.
pub fn parse_node_uri(uri: &str) -> Option<(&str, u64)> {
    let rest = uri.strip_prefix("kvcluster://")?;
    let (cluster, id) = rest.split_once("/node/")?;
    if cluster.is_empty() || id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((cluster, id.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_uris_roundtrip_and_reject_lookalikes() {
        assert_eq!(parse_node_uri(&node_uri("orders", 3)), Some(("orders", 3)));
        for bad in [
            "kvcluster://orders/node/",
            "kvcluster:///node/1",
            "kvcluster://orders/node/1x",
            "kvcluster://orders/node/-1",
            "https://orders/node/1",
            "kvcluster://orders/client/1",
            "kvcluster://orders/node/99999999999999999999999",
        ] {
            assert_eq!(parse_node_uri(bad), None, "{bad}");
        }
    }
}
