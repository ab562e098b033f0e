//! TLS of the client port: its rustls configuration, the relay's client
//! configuration, and the [`handshake`] the accept loop (`crate::api::serve`)
//! runs in each connection's task, so a client that opens a connection and says
//! nothing holds up nobody; each gets [`HANDSHAKE_TIMEOUT`]. A plain-HTTP request
//! on this port gets `400 tls_required` with a JSON body, the same shape as
//! every other API error, instead of a TLS alert a person cannot read. HTTP/2 is
//! offered by ALPN next to HTTP/1.1.

use std::sync::Arc;
use std::time::Duration;

use rustls::server::NoServerSessionStorage;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::ClientAuth;
use super::Reloading;
use super::TlsError;
use super::verify::CurrentClientVerifier;

/// How long a client has to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The rustls configuration of the client port.
pub fn api_server_config(
    certs: Arc<Reloading>,
    client_auth: ClientAuth,
) -> Result<rustls::ServerConfig, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()?;
    let builder = match client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Optional | ClientAuth::Require => {
            builder.with_client_cert_verifier(Arc::new(CurrentClientVerifier {
                certs: certs.clone(),
                mandatory: client_auth == ClientAuth::Require,
            }))
        }
    };
    let mut config = builder.with_cert_resolver(certs);
    // Resumed sessions skip client-certificate verification against the current bundle.
    if client_auth != ClientAuth::None {
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The client config a node uses to relay a request to another member's
/// client port: the port's CA bundle (current), and its own certificate.
pub fn relay_client_config(certs: Arc<Reloading>) -> Result<rustls::ClientConfig, TlsError> {
    let mut config = rustls::ClientConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(super::verify::CurrentServerVerifier {
            certs: certs.clone(),
        }))
        .with_client_cert_resolver(certs);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A TLS handshake, or the `tls_required` answer to a plain-HTTP request (`None`).
pub async fn handshake(
    mut stream: TcpStream,
    acceptor: &TlsAcceptor,
) -> std::io::Result<Option<TlsStream<TcpStream>>> {
    let _ = stream.set_nodelay(true);
    let mut first = [0u8; 1];
    let n = stream.peek(&mut first).await?;
    // A TLS connection starts with a handshake record (0x16); an HTTP/1 request
    // with a method name in capitals.
    if n == 1 && first[0].is_ascii_uppercase() {
        let body = r#"{"error":{"code":"tls_required","message":"this port serves HTTPS only: use https:// and the cluster's CA bundle"}}"#;
        let response = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        return Ok(None);
    }
    acceptor.accept(stream).await.map(Some)
}
