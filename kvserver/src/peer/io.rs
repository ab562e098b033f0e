//! The byte stream of a peer connection — TLS when the node has peer TLS
//! (always in Kubernetes), plaintext TCP otherwise — and [`Dialer`], which
//! opens outbound connections and checks that the far end is the member it
//! meant to reach.

use std::pin::Pin;
use std::sync::Arc;
use std::task::Context;
use std::task::Poll;
use std::time::Duration;

use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::io::BufReader;
use tokio::io::BufWriter;
use tokio::io::ReadBuf;
use tokio::io::ReadHalf;
use tokio::io::WriteHalf;
use tokio::net::TcpStream;

use super::PeerError;
use crate::command::NodeId;
use crate::tls::PeerTls;

/// How long connecting (TCP, then the TLS handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an inbound connection has for its TLS handshake and hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// A peer connection's stream.
pub enum PeerIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

pub type PeerReader = BufReader<ReadHalf<PeerIo>>;
pub type PeerWriter = BufWriter<WriteHalf<PeerIo>>;

impl PeerIo {
    /// Buffered halves for frame reading and writing.
    pub fn split(self) -> (PeerReader, PeerWriter) {
        let (r, w) = tokio::io::split(self);
        (BufReader::new(r), BufWriter::new(w))
    }
}

impl AsyncRead for PeerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            PeerIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            PeerIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PeerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            PeerIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            PeerIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            PeerIo::Plain(s) => Pin::new(s).poll_flush(cx),
            PeerIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            PeerIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            PeerIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

fn timed_out(what: &str) -> PeerError {
    PeerError::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what} timed out"),
    ))
}

/// Opens this node's outbound peer connections.
#[derive(Clone)]
pub struct Dialer {
    pub me: NodeId,
    pub cluster_id: Arc<str>,
    pub tls: Option<Arc<PeerTls>>,
}

impl Dialer {
    /// Connects to member `target` at `addr` (its advertised peer address). With
    /// TLS, the far end must prove it is `target`: a certificate the cluster CA
    /// signed, valid for the host of `addr`, naming node `target` of this cluster.
    pub async fn dial(&self, target: NodeId, addr: &str) -> Result<PeerIo, PeerError> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| timed_out("connect"))??;
        tcp.set_nodelay(true)?;
        let Some(tls) = &self.tls else {
            return Ok(PeerIo::Plain(tcp));
        };
        let host = crate::tls::host_of(addr);
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, tls.connect(tcp, host))
            .await
            .map_err(|_| timed_out("TLS handshake"))??;
        match tls.member_id(stream.get_ref().1.peer_certificates()) {
            Ok(id) if id == target => {}
            Ok(id) => {
                return Err(PeerError::Refused(format!(
                    "the peer at {addr} is node {id}, not node {target}"
                )));
            }
            Err(why) => return Err(PeerError::Refused(format!("the peer at {addr}: {why}"))),
        }
        Ok(PeerIo::Tls(Box::new(tokio_rustls::TlsStream::Client(
            stream,
        ))))
    }
}
