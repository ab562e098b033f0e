//! A certificate authority for one cluster: the operator's `tls.mode: auto`
//! keeps one per KVCluster in a Secret, and test clusters make one per run.
//! Built on `rcgen` (ECDSA P-256 keys, signed with ring): writing DER by hand
//! is exactly the kind of code that should come from a crate made for it.

use std::net::IpAddr;
use std::time::Duration;
use std::time::SystemTime;

use rcgen::BasicConstraints;
use rcgen::CertificateParams;
use rcgen::DnType;
use rcgen::ExtendedKeyUsagePurpose;
use rcgen::IsCa;
use rcgen::Issuer;
use rcgen::KeyPair;
use rcgen::KeyUsagePurpose;
use rcgen::SanType;

use super::TlsError;

fn rc(e: rcgen::Error) -> TlsError {
    TlsError::Config(format!("issuing a certificate: {e}"))
}

/// A certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Issued").finish_non_exhaustive()
    }
}

/// What a leaf certificate says.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub common_name: String,
    /// DNS names and IP addresses (as text; IPs become IP SANs).
    pub hosts: Vec<String>,
    pub uris: Vec<String>,
    /// Usable as a TLS server certificate.
    pub server: bool,
    /// Usable as a TLS client certificate.
    pub client: bool,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Leaf {
    /// A member certificate of node `node_id` of `cluster_id`: server and client
    /// (members dial each other), naming the node's hosts and its identity URI.
    pub fn member(cluster_id: &str, node_id: u64, hosts: &[String], valid_for: Duration) -> Self {
        let now = SystemTime::now();
        Self {
            common_name: format!("{cluster_id}-node-{node_id}"),
            hosts: hosts.to_vec(),
            uris: vec![super::node_uri(cluster_id, node_id)],
            server: true,
            client: true,
            // A minute of slack for clocks that disagree a little.
            not_before: now - Duration::from_secs(60),
            not_after: now + valid_for,
        }
    }

    /// A client certificate named `common_name`.
    pub fn client(common_name: &str, valid_for: Duration) -> Self {
        let now = SystemTime::now();
        Self {
            common_name: common_name.to_string(),
            hosts: Vec::new(),
            uris: Vec::new(),
            server: false,
            client: true,
            not_before: now - Duration::from_secs(60),
            not_after: now + valid_for,
        }
    }
}

/// A CA that can issue certificates.
pub struct Ca {
    cert_pem: String,
    key: KeyPair,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// A new self-signed CA named `common_name`, valid for `valid_for`.
    pub fn new(common_name: &str, valid_for: Duration) -> Result<Self, TlsError> {
        Self::new_between(
            common_name,
            SystemTime::now() - Duration::from_secs(60),
            SystemTime::now() + valid_for,
        )
    }

    /// A new self-signed CA valid from `not_before` to `not_after`.
    pub fn new_between(
        common_name: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Self, TlsError> {
        let key = KeyPair::generate().map_err(rc)?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let cert = params.self_signed(&key).map_err(rc)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key,
        })
    }

    /// A CA kept as PEM (the operator's Secret).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let key = KeyPair::from_pem(key_pem).map_err(rc)?;
        // Parse once here so a bad stored CA fails now, not at the first issue.
        Issuer::from_ca_cert_pem(cert_pem, &key).map_err(rc)?;
        Ok(Self {
            cert_pem: cert_pem.to_string(),
            key,
        })
    }

    /// The CA certificate (what clients and members trust).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Issues `leaf` with a fresh key.
    pub fn issue(&self, leaf: &Leaf) -> Result<Issued, TlsError> {
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key).map_err(rc)?;
        let key = KeyPair::generate().map_err(rc)?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, leaf.common_name.as_str());
        for host in &leaf.hosts {
            params.subject_alt_names.push(match host.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(host.as_str().try_into().map_err(rc)?),
            });
        }
        for uri in &leaf.uris {
            params
                .subject_alt_names
                .push(SanType::URI(uri.as_str().try_into().map_err(rc)?));
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        if leaf.server {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if leaf.client {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        params.use_authority_key_identifier_extension = true;
        params.not_before = leaf.not_before.into();
        params.not_after = leaf.not_after.into();
        let cert = params.signed_by(&key, &issuer).map_err(rc)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}
