//! TLS settings of the two ports: certificate, key and CA files, client
//! certificate verification on the client port, and how often files are re-read.

use std::path::PathBuf;

use serde::Deserialize;
use serde::Serialize;

use super::ConfigError;
use super::field_err;

/// A certificate, its key and a CA bundle, as PEM files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsFiles {
    /// Certificate chain (PEM), leaf first.
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM) of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// CA bundle (PEM).
    pub ca_file: Option<PathBuf>,
}

impl TlsFiles {
    fn is_empty(&self) -> bool {
        self.cert_file.is_none() && self.key_file.is_none() && self.ca_file.is_none()
    }

    /// The files, when a certificate and key are set.
    pub fn cert_files(&self) -> Option<crate::tls::CertFiles> {
        Some(crate::tls::CertFiles {
            cert: self.cert_file.clone()?,
            key: self.key_file.clone()?,
            ca: self.ca_file.clone(),
        })
    }
}

/// TLS on both ports (docs/security.md). Files are re-read every
/// `reload_interval_ms`; a rotated certificate is used without a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Mutual TLS on the Raft peer port: this member's certificate (with the URI SAN
    /// `kvcluster://<cluster_id>/node/<node_id>` and a DNS or IP SAN covering the host
    /// of `advertise_raft_addr`), its key, and the cluster's CA bundle, which every
    /// other member's certificate must chain to. All three, or none: without them the
    /// peer port is plaintext and anyone who can reach it can rewrite the log (local use only).
    pub peer: TlsFiles,
    /// HTTPS on the client port: certificate and key. `ca_file` verifies client
    /// certificates (see `client_auth`) and the other members' client ports when
    /// this node relays a request to the leader.
    pub client: TlsFiles,
    /// Client certificates on the client port: `none`, `optional` (verified when
    /// sent) or `require`. Anything but `none` needs `client.ca_file`.
    pub client_auth: crate::tls::ClientAuth,
    /// How often the certificate files are re-read, in ms.
    pub reload_interval_ms: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            peer: TlsFiles::default(),
            client: TlsFiles::default(),
            client_auth: crate::tls::ClientAuth::None,
            reload_interval_ms: 5_000,
        }
    }
}

impl TlsConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let p = &self.peer;
        if !p.is_empty() {
            for (field, v) in [
                ("tls.peer.cert_file", &p.cert_file),
                ("tls.peer.key_file", &p.key_file),
                ("tls.peer.ca_file", &p.ca_file),
            ] {
                if v.is_none() {
                    return Err(field_err(
                        field,
                        "required with the other tls.peer files: peer TLS is mutual and needs a certificate, its key and the cluster CA",
                    ));
                }
            }
        }
        let c = &self.client;
        match (&c.cert_file, &c.key_file) {
            (Some(_), None) => {
                return Err(field_err(
                    "tls.client.key_file",
                    "required with tls.client.cert_file",
                ));
            }
            (None, Some(_)) => {
                return Err(field_err(
                    "tls.client.cert_file",
                    "required with tls.client.key_file",
                ));
            }
            (None, None) if c.ca_file.is_some() => {
                return Err(field_err(
                    "tls.client.cert_file",
                    "required with tls.client.ca_file: the client port serves HTTPS only with a certificate",
                ));
            }
            _ => {}
        }
        if self.client_auth != crate::tls::ClientAuth::None
            && (c.ca_file.is_none() || c.cert_file.is_none())
        {
            return Err(field_err(
                "tls.client_auth",
                "needs HTTPS on the client port (tls.client.cert_file, key_file) and the CA bundle of client certificates (tls.client.ca_file)",
            ));
        }
        if self.reload_interval_ms < 100 {
            return Err(field_err("tls.reload_interval_ms", "must be at least 100"));
        }
        Ok(())
    }
}
