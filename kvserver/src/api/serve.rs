//! The client port's accept loop: plain TCP or TLS, with the connection-level
//! limits `axum::serve` has no knobs for (`limits.*`, docs/security.md).
//!
//! - At most `max_connections` connections are open, TLS handshakes included;
//!   one more is closed at once (a plain-HTTP one gets a 503 `overloaded` first,
//!   written without waiting), so a flood costs a refused connection, never a
//!   queue the next honest client waits behind.
//! - A TLS handshake has [`crate::tls::HANDSHAKE_TIMEOUT`] or
//!   `header_read_timeout_ms`, whichever is shorter; a plain-HTTP request on the
//!   TLS port gets `400 tls_required`.
//! - HTTP/1.1 request headers must arrive within `header_read_timeout_ms`,
//!   counted from when the connection is ready for a request, so the same timer
//!   closes keep-alive connections idle that long (slowloris, idle floods).
//! - A connection with no bytes moving and no request in flight for
//!   `idle_timeout_ms` is closed (HTTP/2, which has no header timer, and a
//!   backstop for HTTP/1.1).
//! - Shutdown stops accepting, lets in-flight requests finish (HTTP/2 gets
//!   GOAWAY) and returns when every connection has closed; the node bounds the
//!   wait (`shutdown_timeout_ms`) and aborts this task, which ends them all.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::task::Context;
use std::task::Poll;
use std::time::Duration;
use std::time::Instant;

use axum::extract::ConnectInfo;
use hyper_util::rt::TokioExecutor;
use hyper_util::rt::TokioIo;
use hyper_util::rt::TokioTimer;
use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::io::ReadBuf;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::auth::ConnInfo;
use crate::auth::CertIdentity;
use crate::config::LimitsConfig;
use crate::metrics::Metrics;

/// What a plain-HTTP connection over the cap is told before it is closed.
const OVERLOADED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 92\r\n\r\n{\"error\":{\"code\":\"overloaded\",\"message\":\"too many connections to this node; retry shortly\"}}";

/// Serves `app` on `listener` (TLS when `tls` is given) until `shutdown`, then
/// drains.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: axum::Router,
    limits: LimitsConfig,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let (tcp, remote) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors, typically: back off instead of spinning.
                        tracing::warn!(error = %e, "accept on the client port failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    metrics.api_limited.with_label_values(&["connections"]).inc();
                    if tls.is_none() {
                        let _ = tcp.try_write(OVERLOADED);
                    }
                    continue;
                };
                let conn = Conn {
                    tcp,
                    remote,
                    tls: tls.clone(),
                    app: app.clone(),
                    limits: limits.clone(),
                    metrics: metrics.clone(),
                    stop: stop_rx.clone(),
                };
                conns.spawn(async move {
                    let _slot = slot;
                    conn.run().await
                });
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while conns.join_next().await.is_some() {}
}

/// One accepted connection.
struct Conn {
    tcp: TcpStream,
    remote: SocketAddr,
    tls: Option<TlsAcceptor>,
    app: axum::Router,
    limits: LimitsConfig,
    metrics: Arc<Metrics>,
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Conn {
    async fn run(self) {
        self.metrics.api_connections.inc();
        let metrics = self.metrics.clone();
        self.serve().await;
        metrics.api_connections.dec();
    }

    async fn serve(self) {
        let _ = self.tcp.set_nodelay(true);
        match self.tls.clone() {
            None => {
                let info = ConnInfo {
                    remote: self.remote,
                    cert: None,
                };
                let tcp = self.tcp;
                Self::http(tcp, info, self.app, self.limits, self.stop).await
            }
            Some(acceptor) => {
                let handshake = crate::tls::handshake(self.tcp, &acceptor);
                let deadline = crate::tls::HANDSHAKE_TIMEOUT
                    .min(Duration::from_millis(self.limits.header_read_timeout_ms));
                let tls = match tokio::time::timeout(deadline, handshake).await {
                    Ok(Ok(Some(tls))) => tls,
                    Ok(Ok(None)) => return,
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %self.remote, error = %e, "TLS handshake on the client port failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(peer = %self.remote, "TLS handshake on the client port timed out");
                        return;
                    }
                };
                // rustls verified the chain; what it names is read once per connection.
                let cert = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| crate::tls::inspect(c).ok())
                    .map(|info| Arc::new(CertIdentity::from_info(&info)));
                let info = ConnInfo {
                    remote: self.remote,
                    cert,
                };
                Self::http(tls, info, self.app, self.limits, self.stop).await
            }
        }
    }

    /// HTTP/1.1 or HTTP/2 (by ALPN or preface) on `io` until either side closes,
    /// the connection idles out, or the node drains.
    async fn http<I>(
        io: I,
        info: ConnInfo,
        app: axum::Router,
        limits: LimitsConfig,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(Tracked {
            inner: io,
            activity: activity.clone(),
        });
        let svc_activity = activity.clone();
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(info.clone()));
                let in_flight = InFlight::new(svc_activity.clone());
                let app = app.clone();
                async move {
                    let resp = tower::ServiceExt::oneshot(app, req).await;
                    drop(in_flight);
                    resp
                }
            });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            // The read buffer keeps hyper's default (~400 KiB): with less, a
            // request head past it is cut off before the client reads the 431
            // (an API fuzz run saw a 72 KB URL die that way).
            .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(128)
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10));
        let conn = builder.serve_connection(io, service);
        tokio::pin!(conn);
        let idle = Duration::from_millis(limits.idle_timeout_ms);
        let mut tick = tokio::time::interval((idle / 4).max(Duration::from_millis(250)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut closing = false;
        loop {
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "client connection ended with an error");
                    }
                    return;
                }
                _ = stop.changed(), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = tick.tick() => {
                    if !closing && activity.idle_for() >= idle {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    } else if closing && activity.idle_for() >= idle * 2 {
                        // A graceful close waits for the response in progress; one
                        // whose reader stopped reading (a stalled watch stream)
                        // never finishes: the connection is dropped.
                        return;
                    }
                }
            }
        }
    }
}

/// When bytes last moved on a connection, and how many requests are in flight.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long nothing has happened; zero while a request is in flight.
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// Counts a request in flight until dropped (the response's head is ready, or
/// the request was cancelled).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(a: Arc<Activity>) -> Self {
        a.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(a)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// An IO stream that records when bytes last moved.
struct Tracked<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_overloaded_answer_is_well_formed() -> Result<(), Box<dyn std::error::Error>> {
        let text = std::str::from_utf8(OVERLOADED)?;
        let (head, body) = text.split_once("\r\n\r\n").ok_or("no head")?;
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .ok_or("no length")?
            .parse()?;
        assert_eq!(len, body.len());
        let v: serde_json::Value = serde_json::from_str(body)?;
        assert_eq!(v["error"]["code"], "overloaded");
        Ok(())
    }
}
