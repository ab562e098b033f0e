//! How the harness's clients reach a cluster's nodes: the TLS settings and
//! bearer token a typed client needs ([`ClientAccess`]), and the raw HTTP client
//! the tests assert with.

use std::time::Duration;

use super::auth;
use super::tls;
use crate::ChaosError;

/// What a client of the cluster needs: its TLS settings and a token.
#[derive(Debug, Clone, Default)]
pub struct ClientAccess {
    pub tls: Option<kvserver::tls::ClientTls>,
    pub token: Option<String>,
}

impl ClientAccess {
    /// A typed client of `endpoints` with these settings.
    pub fn builder<I, S>(&self, endpoints: I) -> kvserver::client::ClientBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut b = kvserver::client::Client::builder(endpoints);
        if let Some(t) = &self.tls {
            b = b.tls(t.clone());
        }
        if let Some(t) = &self.token {
            b = b.token(t.clone());
        }
        b
    }
}

/// The harness's HTTP client (HTTPS with the cluster's bundle and client
/// certificate; the admin token when nodes require one).
pub(super) fn http_client(
    timeout: Duration,
    tls: Option<&tls::TestTls>,
    auth: Option<&auth::TestAuth>,
) -> Result<reqwest::Client, ChaosError> {
    let mut b = kvserver::tls::http_builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(2))
        .timeout(timeout)
        .pool_max_idle_per_host(32);
    if let Some(auth) = auth {
        let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", auth.admin))
            .map_err(|e| ChaosError::Cluster(format!("admin token: {e}")))?;
        v.set_sensitive(true);
        b = b.default_headers(reqwest::header::HeaderMap::from_iter([(
            reqwest::header::AUTHORIZATION,
            v,
        )]));
    }
    if let Some(tls) = tls {
        let config = tls
            .client_tls()
            .rustls_config()
            .map_err(|e| ChaosError::Cluster(format!("client TLS: {e}")))?;
        b = b.tls_backend_preconfigured(config);
    }
    Ok(b.build()?)
}
