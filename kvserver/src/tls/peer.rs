//! [`PeerTls`]: mutual TLS on the Raft peer port. Both sides present their
//! member certificate and verify the other's against the cluster CA bundle
//! (TLS 1.3 only: every peer is a kvserver of this release or later). What a
//! verified certificate is then allowed to do — be a current member, or a
//! learner being added — is decided by `crate::peer::server`, which knows the
//! membership.
//!
//! Session resumption is off on both sides: a resumed session skips certificate
//! verification, and would let a certificate the current bundle no longer
//! trusts (after a CA rotation) back in. Peer connections are long-lived, so
//! full handshakes cost nothing measurable.

use std::sync::Arc;

use rustls::client::Resumption;
use rustls::server::NoServerSessionStorage;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::TlsConnector;

use super::Reloading;
use super::TlsError;
use super::verify::CurrentClientVerifier;
use super::verify::CurrentServerVerifier;

/// The peer port's TLS, shared by the server and every dialer of a node.
pub struct PeerTls {
    pub certs: Arc<Reloading>,
    pub cluster_id: String,
    acceptor: TlsAcceptor,
    connector: TlsConnector,
}

impl PeerTls {
    pub fn new(certs: Arc<Reloading>, cluster_id: &str) -> Result<Self, TlsError> {
        let provider = super::provider();
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(CurrentClientVerifier {
                certs: certs.clone(),
                mandatory: true,
            }))
            .with_cert_resolver(certs.clone());
        server.session_storage = Arc::new(NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(CurrentServerVerifier {
                certs: certs.clone(),
            }))
            .with_client_cert_resolver(certs.clone());
        client.resumption = Resumption::disabled();
        Ok(Self {
            certs,
            cluster_id: cluster_id.to_string(),
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
        })
    }

    /// The server side of the handshake (the client must present a certificate
    /// the bundle trusts).
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> std::io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        self.acceptor.accept(tcp).await
    }

    /// The client side: the server's certificate must be trusted by the bundle and
    /// valid for `host`, the host of the target's advertised peer address.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        host: &str,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = ServerName::try_from(host.to_string()).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("peer host {host:?} is not a DNS name or IP address ({e})"),
            )
        })?;
        self.connector.connect(name, tcp).await
    }

    /// The node id a verified peer certificate names in this cluster, or why it
    /// names none.
    pub fn member_id(&self, certs: Option<&[CertificateDer<'_>]>) -> Result<u64, String> {
        let end_entity = certs
            .and_then(|c| c.first())
            .ok_or_else(|| "presented no certificate".to_string())?;
        let info = super::inspect(end_entity)?;
        match info.node {
            Some((cluster, id)) if cluster == self.cluster_id => Ok(id),
            Some(_) => Err("its certificate names a node of another cluster".into()),
            None => Err("its certificate is not a member certificate".into()),
        }
    }
}

/// Whether the certificate `der` is valid for `host` (a DNS name, wildcards
/// included, or an IP address).
pub fn valid_for_host(der: &CertificateDer<'_>, host: &str) -> bool {
    let Ok(name) = ServerName::try_from(host) else {
        return false;
    };
    rustls::server::ParsedCertificate::try_from(der)
        .and_then(|parsed| rustls::client::verify_server_name(&parsed, &name))
        .is_ok()
}

/// The host part of a `host:port` address (`[::1]:7001` → `::1`).
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}
