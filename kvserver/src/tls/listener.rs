//! [`HttpsListener`]: the client API over TLS, as an axum listener.
//!
//! Handshakes run in tasks of their own, so a client that opens a connection
//! and says nothing holds up nobody; each gets [`HANDSHAKE_TIMEOUT`], and at most
//! [`MAX_HANDSHAKES`] run at once (more wait in the kernel's accept queue). A
//! plain-HTTP request on this port gets `400 tls_required` with a JSON body, the
//! same shape as every other API error, instead of a TLS alert a person cannot
//! read. HTTP/2 is offered by ALPN next to HTTP/1.1 (axum serves both).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::NoServerSessionStorage;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::ClientAuth;
use super::Reloading;
use super::TlsError;
use super::verify::CurrentClientVerifier;

/// How long a client has to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once.
pub const MAX_HANDSHAKES: usize = 256;

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

/// The far end of an HTTPS connection: its address and the client certificate
/// it presented, verified against the port's CA bundle (only when
/// `tls.client_auth` asks for one).
#[derive(Debug, Clone)]
pub struct TlsPeer {
    pub addr: SocketAddr,
    pub client_cert: Option<super::CertInfo>,
}

/// Accepts TCP connections and hands axum those that completed a TLS handshake.
pub struct HttpsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, TlsPeer)>,
    local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl HttpsListener {
    pub fn new(tcp: TcpListener, config: rustls::ServerConfig) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let (tx, rx) = mpsc::channel(MAX_HANDSHAKES);
        let task = tokio::spawn(accept_loop(tcp, acceptor, tx));
        Ok(Self { rx, local, task })
    }
}

impl Drop for HttpsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, TlsPeer)>,
) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match tcp.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accept on the client port failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(stream, &acceptor)).await {
                Ok(Ok(Some(tls))) => {
                    // rustls verified the chain; what it names is read once per connection.
                    let client_cert = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| super::inspect(c).ok());
                    let _ = tx
                        .send((
                            tls,
                            TlsPeer {
                                addr: peer,
                                client_cert,
                            },
                        ))
                        .await;
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake on the client port failed")
                }
                Err(_) => tracing::debug!(%peer, "TLS handshake on the client port timed out"),
            }
        });
    }
}

/// A TLS handshake, or the `tls_required` answer to a plain-HTTP request (`None`).
async fn handshake(
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

impl axum::serve::Listener for HttpsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = TlsPeer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept loop only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(TlsPeer {
            addr: self.local,
            client_cert: None,
        })
    }
}
