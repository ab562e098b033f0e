//! What a certificate says, read with `x509-parser`: its validity window (for
//! the load-time checks and the expiry metric), its subject and names (for
//! logs and client principals, `crate::auth`), and the node
//! identity URI a member certificate carries.

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

/// The parts of a certificate kvserver looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// The subject, as text (`CN=...`).
    pub subject: String,
    /// The subject's common name, when it has one.
    pub common_name: Option<String>,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// URI SANs.
    pub uris: Vec<String>,
    /// The member identity among the URI SANs: (cluster id, node id).
    pub node: Option<(String, u64)>,
}

impl CertInfo {
    /// Whether `now` (unix seconds) lies inside the validity window.
    pub fn valid_at(&self, now: i64) -> bool {
        self.not_before <= now && now <= self.not_after
    }

    /// Why the certificate is not usable at `now`, if it is not.
    pub fn validity_problem(&self, now: i64) -> Option<String> {
        if now > self.not_after {
            Some(format!(
                "expired {} s ago (not after {})",
                now - self.not_after,
                self.not_after
            ))
        } else if now < self.not_before {
            Some(format!(
                "not valid for another {} s (not before {})",
                self.not_before - now,
                self.not_before
            ))
        } else {
            None
        }
    }
}

/// Reads `der`.
pub fn inspect(der: &CertificateDer<'_>) -> Result<CertInfo, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("not a valid X.509 certificate ({e})"))?;
    let validity = cert.validity();
    let mut info = CertInfo {
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        subject: cert.subject().to_string(),
        common_name: cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string),
        dns_names: Vec::new(),
        uris: Vec::new(),
        node: None,
    };
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("its subject alternative names are malformed ({e})"))?;
    for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
        match name {
            GeneralName::DNSName(d) => info.dns_names.push(d.to_string()),
            GeneralName::URI(u) => {
                if let Some((cluster, id)) = super::parse_node_uri(u) {
                    if info.node.is_some() {
                        return Err("it names more than one node".into());
                    }
                    info.node = Some((cluster.to_string(), id));
                }
                info.uris.push(u.to_string());
            }
            _ => {}
        }
    }
    Ok(info)
}

/// Unix seconds now.
#[cfg(feature = "server")]
pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
