//! A typed async client for the kvserver HTTP API, built on the shared
//! [`crate::model`] types; it needs neither openraft nor sqlx.
//!
//! A client knows several endpoints (any node can serve any request). Calls
//! that are safe to repeat — reads, watch reconnects and the idempotent
//! cluster calls — move to the next endpoint and retry with backoff on
//! transport errors and retryable 503s. Writes are repeated only when they
//! certainly did not run: the connection was refused, or the answer was
//! `no_leader` / `not_initialized` / `shutting_down`. When a node names the
//! leader (`leader_hint`), the client looks its address up and goes there.
//! [`Client::watch`] returns a `Stream` that resumes on another endpoint from
//! the last revision it delivered, without gaps or duplicates.
//!
//! Layout: this file holds the transport (endpoints, retries, leader hints,
//! errors); [`kv`] and [`cluster`] the calls, one method per API route;
//! [`watch`] the resuming watch stream; `credential` the bearer token sent;
//! `backup` (feature `backup`) downloading a full backup.

#[cfg(feature = "backup")]
mod backup;
mod cluster;
mod credential;
mod kv;
pub mod sse;
mod watch;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;

#[cfg(feature = "backup")]
pub use self::backup::BackupDownload;
use crate::model::ClusterInfo;
use crate::model::ErrorBody;
use crate::model::NodeId;

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error body.
    #[error("HTTP {status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        details: serde_json::Map<String, serde_json::Value>,
    },
    /// No HTTP answer (connection refused/reset, timeout); `connect` when it never got through.
    #[error("transport error talking to {endpoint}: {message}")]
    Transport {
        endpoint: String,
        message: String,
        connect: bool,
    },
    #[error("cannot decode the response from {endpoint}: {message}")]
    Decode { endpoint: String, message: String },
    #[error("invalid client configuration: {0}")]
    Config(String),
}

impl ClientError {
    /// No HTTP answer came from `endpoint` (refused, reset, timed out).
    fn transport(endpoint: &str, e: &reqwest::Error) -> Self {
        ClientError::Transport {
            endpoint: endpoint.to_string(),
            message: e.to_string(),
            connect: e.is_connect(),
        }
    }

    /// The API error code, if the server gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The HTTP status, if the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Worth retrying a read elsewhere: no answer, or a 503 meaning "not now".
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Transport { .. } => true,
            ClientError::Api {
                status: 503, code, ..
            } => code != "write_outcome_unknown" && code != "commit_timeout",
            _ => false,
        }
    }

    /// Certainly not applied: safe to repeat even a non-idempotent write.
    fn not_applied(&self) -> bool {
        match self {
            ClientError::Transport { connect, .. } => *connect,
            ClientError::Api {
                status: 503, code, ..
            } => matches!(
                code.as_str(),
                "no_leader" | "not_initialized" | "shutting_down"
            ),
            _ => false,
        }
    }

    fn leader_hint(&self) -> Option<NodeId> {
        match self {
            ClientError::Api { details, .. } => details.get("leader_hint").and_then(|v| v.as_u64()),
            _ => None,
        }
    }
}

/// How a request may be repeated.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Reads and idempotent calls: on any retryable error.
    Idempotent,
    /// Writes: only when certainly not applied.
    Write,
}

/// Builder for [`Client`].
pub struct ClientBuilder {
    endpoints: Vec<String>,
    tls: Option<crate::tls::ClientTls>,
    tls_config: Option<rustls::ClientConfig>,
    resolve: Vec<(String, std::net::SocketAddr)>,
    timeout: Duration,
    attempts: u32,
    backoff: Duration,
    token: Option<String>,
    token_file: Option<std::path::PathBuf>,
}

impl ClientBuilder {
    /// Sends `Authorization: Bearer <token>` on every request.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Sends the bearer token held in `path`, read again every few seconds (a
    /// projected ServiceAccount token or a mounted Secret changes in place).
    pub fn token_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.token_file = Some(path.into());
        self
    }

    /// Per-request timeout (default 30 s; watch streams have none).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// HTTPS with these settings (the CA bundle, and a client certificate when the
    /// cluster asks for one). Endpoints without a scheme then mean `https://`.
    pub fn tls(mut self, tls: crate::tls::ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// HTTPS with a ready rustls configuration (see `crate::tls::client::config_from_pem`).
    pub fn tls_config(mut self, config: rustls::ClientConfig) -> Self {
        self.tls_config = Some(config);
        self
    }

    /// Connects to `addr` for the host name `host`, which the server's certificate
    /// is still checked against (the operator reaches members by pod IP, while
    /// their certificates name their stable DNS names).
    pub fn resolve(mut self, host: &str, addr: std::net::SocketAddr) -> Self {
        self.resolve.push((host.to_string(), addr));
        self
    }

    /// Attempts per call across endpoints (default 6).
    pub fn attempts(mut self, n: u32) -> Self {
        self.attempts = n.max(1);
        self
    }

    /// First backoff between attempts, doubled up to 2 s (default 100 ms).
    pub fn backoff(mut self, d: Duration) -> Self {
        self.backoff = d;
        self
    }

    pub fn build(self) -> Result<Client, ClientError> {
        if self.endpoints.is_empty() {
            return Err(ClientError::Config(
                "at least one endpoint is needed".into(),
            ));
        }
        let tls = match (&self.tls, self.tls_config) {
            (_, Some(config)) => Some(config),
            (Some(t), None) => Some(
                t.rustls_config()
                    .map_err(|e| ClientError::Config(e.to_string()))?,
            ),
            (None, None) => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let endpoints = self
            .endpoints
            .into_iter()
            .map(|e| normalize(e, scheme))
            .collect::<Vec<_>>();
        if tls.is_none() && endpoints.iter().any(|e| e.starts_with("https://")) {
            return Err(ClientError::Config(
                "https:// endpoints need TLS settings: the CA bundle of the cluster (--cacert)"
                    .into(),
            ));
        }
        let mk = |timeout: Option<Duration>| {
            let mut b = crate::tls::http_builder()
                .no_proxy()
                .connect_timeout(Duration::from_secs(3))
                .pool_max_idle_per_host(32);
            if let Some(t) = timeout {
                b = b.timeout(t);
            }
            if let Some(config) = &tls {
                b = b.tls_backend_preconfigured(config.clone());
            }
            for (host, addr) in &self.resolve {
                b = b.resolve(host, *addr);
            }
            b.build().map_err(|e| ClientError::Config(e.to_string()))
        };
        let credential = match (self.token, self.token_file) {
            (Some(_), Some(_)) => {
                return Err(ClientError::Config(
                    "give a token or a token file, not both".into(),
                ));
            }
            (Some(t), None) => Some(credential::Credential::Token(credential::header(&t)?)),
            (None, Some(path)) => Some(credential::Credential::file(path)?),
            (None, None) => None,
        };
        Ok(Client {
            inner: Arc::new(Inner {
                credential,
                http: mk(Some(self.timeout))?,
                stream_http: mk(None)?,
                endpoints: Mutex::new(endpoints.into()),
                scheme,
                attempts: self.attempts,
                backoff: self.backoff,
            }),
        })
    }
}

/// `e` as a base URL: `scheme` (the client's) unless `e` names one.
fn normalize(e: String, scheme: &str) -> String {
    let e = e.trim_end_matches('/').to_string();
    if e.starts_with("http://") || e.starts_with("https://") {
        e
    } else {
        format!("{scheme}://{e}")
    }
}

struct Inner {
    credential: Option<credential::Credential>,
    http: reqwest::Client,
    stream_http: reqwest::Client,
    /// Front = preferred endpoint.
    endpoints: Mutex<VecDeque<String>>,
    /// `https` with TLS settings: the scheme of endpoints given as `host:port`.
    scheme: &'static str,
    attempts: u32,
    backoff: Duration,
}

/// A cheap-to-clone client for one kvcluster.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// Percent-encodes a key for use in a path (`/` is kept: keys may contain it).
fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(crate) fn query<T: Serialize>(q: &T) -> String {
    // serde_json → flat pairs; only scalar fields are used in our queries.
    let v = serde_json::to_value(q).unwrap_or_default();
    let pairs: Vec<String> = v
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| match v {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) => {
                Some(format!("{k}={}", encode_key(s).replace('/', "%2F")))
            }
            other => Some(format!("{k}={other}")),
        })
        .collect();
    if pairs.is_empty() {
        String::new()
    } else {
        format!("?{}", pairs.join("&"))
    }
}

/// 404 (`key_not_found`) becomes `None`.
fn absent_is_none<T>(r: Result<T, ClientError>) -> Result<Option<T>, ClientError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(ClientError::Api { status: 404, .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

async fn decode<T: DeserializeOwned>(
    endpoint: &str,
    resp: reqwest::Response,
) -> Result<T, ClientError> {
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| ClientError::Transport {
        endpoint: endpoint.into(),
        message: e.to_string(),
        connect: false,
    })?;
    if status.is_success() {
        return serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            endpoint: endpoint.into(),
            message: e.to_string(),
        });
    }
    match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(b) => Err(ClientError::Api {
            status: status.as_u16(),
            code: b.error.code,
            message: b.error.message,
            details: b.error.details,
        }),
        Err(_) => Err(ClientError::Api {
            status: status.as_u16(),
            code: "http_error".into(),
            message: String::from_utf8_lossy(&bytes).into_owned(),
            details: Default::default(),
        }),
    }
}

impl Client {
    /// A client over `endpoints` (`host:port` or URLs of any nodes).
    pub fn builder<I, S>(endpoints: I) -> ClientBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientBuilder {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            tls: None,
            tls_config: None,
            resolve: Vec::new(),
            timeout: Duration::from_secs(30),
            attempts: 6,
            backoff: Duration::from_millis(100),
            token: None,
            token_file: None,
        }
    }

    /// A client with default settings.
    pub fn new<I, S>(endpoints: I) -> Result<Self, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::builder(endpoints).build()
    }

    /// Adds the client's bearer token, if it has one.
    fn authorize(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, ClientError> {
        Ok(match &self.inner.credential {
            Some(c) => req.header(reqwest::header::AUTHORIZATION, c.value()?),
            None => req,
        })
    }

    fn current(&self) -> String {
        self.inner
            .endpoints
            .lock()
            .map(|e| e.front().cloned().unwrap_or_default())
            .unwrap_or_default()
    }

    /// Moves the failing endpoint to the back of the list.
    fn rotate(&self, failed: &str) {
        if let Ok(mut e) = self.inner.endpoints.lock()
            && e.front().is_some_and(|f| f == failed)
        {
            e.rotate_left(1);
        }
    }

    /// Puts `endpoint` first (adding it if it is new, e.g. a leader learned from a hint).
    fn prefer(&self, endpoint: String) {
        if let Ok(mut e) = self.inner.endpoints.lock() {
            e.retain(|x| *x != endpoint);
            e.push_front(endpoint);
        }
    }

    async fn once<B: Serialize, T: DeserializeOwned>(
        &self,
        endpoint: &str,
        method: &Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let mut req = self
            .inner
            .http
            .request(method.clone(), format!("{endpoint}{path}"));
        req = self.authorize(req)?;
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ClientError::transport(endpoint, &e))?;
        decode(endpoint, resp).await
    }

    /// One request to one particular node (`host:port` or URL), without failover.
    async fn at<B: Serialize, T: DeserializeOwned>(
        &self,
        endpoint: &str,
        method: &Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        self.once(
            &normalize(endpoint.to_string(), self.inner.scheme),
            method,
            path,
            body,
        )
        .await
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        retry: Retry,
    ) -> Result<T, ClientError> {
        let mut delay = self.inner.backoff;
        let mut last = None;
        for attempt in 0..self.inner.attempts {
            let endpoint = self.current();
            match self.once(&endpoint, &method, path, body).await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let again = match retry {
                        Retry::Idempotent => e.is_retryable(),
                        Retry::Write => e.not_applied(),
                    };
                    if !again || attempt + 1 == self.inner.attempts {
                        return Err(e);
                    }
                    match e.leader_hint() {
                        Some(id) => self.follow_hint(&endpoint, id).await,
                        None => self.rotate(&endpoint),
                    }
                    tracing::debug!(error = %e, attempt, "retrying on another endpoint");
                    last = Some(e);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Config("no attempt made".into())))
    }

    /// Looks up the hinted leader's API address and prefers it.
    async fn follow_hint(&self, asked: &str, leader: NodeId) {
        match self
            .once::<(), ClusterInfo>(asked, &Method::GET, "/v1/cluster", None)
            .await
        {
            Ok(info) => match info.members.iter().find(|m| m.id == leader) {
                Some(m) => self.prefer(normalize(m.api_addr.clone(), self.inner.scheme)),
                None => self.rotate(asked),
            },
            Err(_) => self.rotate(asked),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ListQuery;

    #[test]
    fn keys_and_queries_are_encoded() {
        assert_eq!(encode_key("a/b c%"), "a/b%20c%25");
        assert_eq!(encode_key("café"), "caf%C3%A9");
        let q = ListQuery {
            prefix: "a/b".into(),
            limit: Some(5),
            keys_only: true,
            ..Default::default()
        };
        let s = query(&q);
        assert!(
            s.starts_with('?')
                && s.contains("prefix=a%2Fb")
                && s.contains("limit=5")
                && s.contains("keys_only=true"),
            "{s}"
        );
        assert!(!s.contains("start_after"), "{s}");
        assert_eq!(
            normalize("10.0.0.1:8080/".into(), "http"),
            "http://10.0.0.1:8080"
        );
        assert_eq!(
            normalize("10.0.0.1:8080".into(), "https"),
            "https://10.0.0.1:8080"
        );
        assert_eq!(normalize("http://a:1".into(), "https"), "http://a:1");
    }

    #[test]
    fn retry_classes() {
        let api = |status: u16, code: &str| ClientError::Api {
            status,
            code: code.into(),
            message: String::new(),
            details: Default::default(),
        };
        assert!(api(503, "no_leader").is_retryable() && api(503, "no_leader").not_applied());
        assert!(!api(503, "write_outcome_unknown").is_retryable());
        assert!(!api(412, "revision_mismatch").is_retryable());
        let t = |connect| ClientError::Transport {
            endpoint: "x".into(),
            message: String::new(),
            connect,
        };
        assert!(t(true).not_applied() && !t(false).not_applied() && t(false).is_retryable());
    }
}
