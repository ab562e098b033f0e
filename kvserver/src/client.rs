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

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::Stream;
use reqwest::Method;
use reqwest::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::model::BatchGetRequest;
use crate::model::BatchGetResponse;
use crate::model::ChangeResponse;
use crate::model::ClusterInfo;
use crate::model::Consistency;
use crate::model::DeleteResponse;
use crate::model::DroppedBody;
use crate::model::ErrorBody;
use crate::model::GetResponse;
use crate::model::InitRequest;
use crate::model::LearnerRequest;
use crate::model::ListQuery;
use crate::model::ListResponse;
use crate::model::MembershipRequest;
use crate::model::NodeId;
use crate::model::PutRequest;
use crate::model::PutResponse;
use crate::model::ReadyResponse;
use crate::model::StatusResponse;
use crate::model::TransferRequest;
use crate::model::TxnRequest;
use crate::model::TxnResponse;
use crate::model::WatchEventBody;

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
    timeout: Duration,
    attempts: u32,
    backoff: Duration,
}

impl ClientBuilder {
    /// Per-request timeout (default 30 s; watch streams have none).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
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
        let endpoints = self
            .endpoints
            .into_iter()
            .map(normalize)
            .collect::<Vec<_>>();
        let mk = |timeout: Option<Duration>| {
            let mut b = reqwest::Client::builder()
                .no_proxy()
                .connect_timeout(Duration::from_secs(3))
                .pool_max_idle_per_host(32);
            if let Some(t) = timeout {
                b = b.timeout(t);
            }
            b.build().map_err(|e| ClientError::Config(e.to_string()))
        };
        Ok(Client {
            inner: Arc::new(Inner {
                http: mk(Some(self.timeout))?,
                stream_http: mk(None)?,
                endpoints: Mutex::new(endpoints.into()),
                attempts: self.attempts,
                backoff: self.backoff,
            }),
        })
    }
}

fn normalize(e: String) -> String {
    let e = e.trim_end_matches('/').to_string();
    if e.starts_with("http://") || e.starts_with("https://") {
        e
    } else {
        format!("http://{e}")
    }
}

struct Inner {
    http: reqwest::Client,
    stream_http: reqwest::Client,
    /// Front = preferred endpoint.
    endpoints: Mutex<VecDeque<String>>,
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

fn query<T: Serialize>(q: &T) -> String {
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
            timeout: Duration::from_secs(30),
            attempts: 6,
            backoff: Duration::from_millis(100),
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
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| ClientError::Transport {
            endpoint: endpoint.into(),
            message: e.to_string(),
            connect: e.is_connect(),
        })?;
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
        self.once(&normalize(endpoint.to_string()), method, path, body)
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
                Some(m) => self.prefer(normalize(m.api_addr.clone())),
                None => self.rotate(asked),
            },
            Err(_) => self.rotate(asked),
        }
    }

    // ----- KV -----

    /// Reads a key; `None` when it does not exist.
    pub async fn get(
        &self,
        key: &str,
        consistency: Consistency,
    ) -> Result<Option<GetResponse>, ClientError> {
        let q = if consistency == Consistency::Stale {
            "?consistency=stale"
        } else {
            ""
        };
        absent_is_none(
            self.call::<(), GetResponse>(
                Method::GET,
                &format!("/v1/kv/{}{q}", encode_key(key)),
                None,
                Retry::Idempotent,
            )
            .await,
        )
    }

    /// Creates or replaces a key. A failed `if_revision` guard is `Api { status: 412 }`.
    pub async fn put(&self, key: &str, req: &PutRequest) -> Result<PutResponse, ClientError> {
        self.call(
            Method::PUT,
            &format!("/v1/kv/{}", encode_key(key)),
            Some(req),
            Retry::Write,
        )
        .await
    }

    /// Deletes a key; `None` when it did not exist.
    pub async fn delete(
        &self,
        key: &str,
        if_revision: Option<u64>,
    ) -> Result<Option<DeleteResponse>, ClientError> {
        let q = if_revision
            .map(|r| format!("?if_revision={r}"))
            .unwrap_or_default();
        absent_is_none(
            self.call::<(), DeleteResponse>(
                Method::DELETE,
                &format!("/v1/kv/{}{q}", encode_key(key)),
                None,
                Retry::Write,
            )
            .await,
        )
    }

    /// One page of keys.
    pub async fn list(&self, q: &ListQuery) -> Result<ListResponse, ClientError> {
        self.call::<(), _>(
            Method::GET,
            &format!("/v1/kv{}", query(q)),
            None,
            Retry::Idempotent,
        )
        .await
    }

    /// Deletes every key with `prefix`.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<DeleteResponse, ClientError> {
        let path = format!("/v1/kv?prefix={}", encode_key(prefix).replace('/', "%2F"));
        self.call::<(), _>(Method::DELETE, &path, None, Retry::Write)
            .await
    }

    /// Reads several keys from one consistent view.
    pub async fn batch_get(
        &self,
        keys: Vec<String>,
        consistency: Consistency,
    ) -> Result<BatchGetResponse, ClientError> {
        self.call(
            Method::POST,
            "/v1/batch/get",
            Some(&BatchGetRequest { keys, consistency }),
            Retry::Idempotent,
        )
        .await
    }

    /// Runs a transaction.
    pub async fn txn(&self, req: &TxnRequest) -> Result<TxnResponse, ClientError> {
        self.call(Method::POST, "/v1/txn", Some(req), Retry::Write)
            .await
    }

    // ----- cluster -----

    /// The cluster as seen by the preferred endpoint.
    pub async fn cluster(&self) -> Result<ClusterInfo, ClientError> {
        self.call::<(), _>(Method::GET, "/v1/cluster", None, Retry::Idempotent)
            .await
    }

    /// The cluster as seen by one particular node (`host:port` or URL).
    pub async fn cluster_at(&self, endpoint: &str) -> Result<ClusterInfo, ClientError> {
        self.at::<(), _>(endpoint, &Method::GET, "/v1/cluster", None)
            .await
    }

    /// Initializes a cluster on one particular node (never sent anywhere else).
    pub async fn init_at(
        &self,
        endpoint: &str,
        req: &InitRequest,
    ) -> Result<ChangeResponse, ClientError> {
        self.at(endpoint, &Method::POST, "/v1/cluster/init", Some(req))
            .await
    }

    pub async fn add_learner(&self, req: &LearnerRequest) -> Result<ChangeResponse, ClientError> {
        self.call(
            Method::POST,
            "/v1/cluster/learners",
            Some(req),
            Retry::Idempotent,
        )
        .await
    }

    pub async fn change_membership(
        &self,
        req: &MembershipRequest,
    ) -> Result<ChangeResponse, ClientError> {
        self.call(
            Method::POST,
            "/v1/cluster/membership",
            Some(req),
            Retry::Idempotent,
        )
        .await
    }

    pub async fn transfer_leader(&self, to: NodeId) -> Result<ChangeResponse, ClientError> {
        self.call(
            Method::POST,
            "/v1/cluster/transfer-leader",
            Some(&TransferRequest { to }),
            Retry::Idempotent,
        )
        .await
    }

    /// `/status` of one particular node.
    pub async fn status_at(&self, endpoint: &str) -> Result<StatusResponse, ClientError> {
        self.at::<(), _>(endpoint, &Method::GET, "/status", None)
            .await
    }

    /// `/readyz` of one particular node (`ready: false` rather than an error when not ready).
    pub async fn ready_at(&self, endpoint: &str) -> Result<ReadyResponse, ClientError> {
        let endpoint = normalize(endpoint.to_string());
        let resp = self
            .inner
            .http
            .get(format!("{endpoint}/readyz"))
            .send()
            .await
            .map_err(|e| ClientError::Transport {
                endpoint: endpoint.clone(),
                message: e.to_string(),
                connect: e.is_connect(),
            })?;
        if resp.status() == StatusCode::SERVICE_UNAVAILABLE {
            return resp.json().await.map_err(|e| ClientError::Decode {
                endpoint,
                message: e.to_string(),
            });
        }
        decode(&endpoint, resp).await
    }

    // ----- watch -----

    /// Streams changes of keys under `prefix` after `from_revision` (or from now).
    /// On a disconnect or a `dropped` event the stream reconnects (to the next endpoint
    /// when one fails) from the last revision it delivered; it ends with an error item
    /// when history was compacted (410) or the retries are exhausted.
    pub fn watch(
        &self,
        prefix: &str,
        from_revision: Option<u64>,
    ) -> impl Stream<Item = Result<WatchEventBody, ClientError>> + Send + 'static {
        let state = WatchState {
            client: self.clone(),
            prefix: prefix.to_string(),
            from: from_revision,
            partial: None,
            skip: None,
            resp: None,
            buf: String::new(),
            pending: VecDeque::new(),
            failures: 0,
            done: false,
        };
        futures_util::stream::unfold(state, |mut st| async move {
            if st.done {
                return None;
            }
            let item = st.next().await;
            if item.is_err() {
                st.done = true;
            }
            Some((item, st))
        })
    }
}

struct WatchState {
    client: Client,
    prefix: String,
    /// Last revision whose events were all delivered (the resume point).
    from: Option<u64>,
    /// Events already delivered of the revision after `from` (a transaction or prefix
    /// delete spans several events of one revision).
    partial: Option<(u64, usize)>,
    /// After a reconnect: events of that revision to skip, already delivered.
    skip: Option<(u64, usize)>,
    resp: Option<(String, reqwest::Response)>,
    buf: String,
    /// Parsed events, each with whether it completes its revision.
    pending: VecDeque<(WatchEventBody, bool)>,
    failures: u32,
    done: bool,
}

impl WatchState {
    async fn connect(&mut self) -> Result<(), ClientError> {
        let endpoint = self.client.current();
        let mut url = format!(
            "{endpoint}/v1/watch?prefix={}",
            encode_key(&self.prefix).replace('/', "%2F")
        );
        if let Some(f) = self.from {
            url.push_str(&format!("&from_revision={f}"));
        }
        let resp = self
            .client
            .inner
            .stream_http
            .get(&url)
            .header("accept", "text/event-stream")
            .send()
            .await
            .map_err(|e| ClientError::Transport {
                endpoint: endpoint.clone(),
                message: e.to_string(),
                connect: e.is_connect(),
            })?;
        if !resp.status().is_success() {
            return Err(decode::<serde_json::Value>(&endpoint, resp)
                .await
                .err()
                .unwrap_or(ClientError::Decode {
                    endpoint,
                    message: "unexpected success body".into(),
                }));
        }
        self.buf.clear();
        self.skip = self.partial;
        self.resp = Some((endpoint, resp));
        Ok(())
    }

    async fn next(&mut self) -> Result<WatchEventBody, ClientError> {
        loop {
            if let Some((ev, completes)) = self.pending.pop_front() {
                if completes {
                    self.from = Some(ev.revision);
                    self.partial = None;
                } else {
                    self.partial = match self.partial {
                        Some((r, n)) if r == ev.revision => Some((r, n + 1)),
                        _ => Some((ev.revision, 1)),
                    };
                }
                return Ok(ev);
            }
            if self.resp.is_none() {
                match self.connect().await {
                    Ok(()) => {}
                    Err(e) if e.is_retryable() && self.failures < self.client.inner.attempts => {
                        self.failures += 1;
                        let ep = self.client.current();
                        self.client.rotate(&ep);
                        tokio::time::sleep(self.client.inner.backoff * self.failures).await;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let Some((endpoint, resp)) = self.resp.as_mut() else {
                continue;
            };
            match resp.chunk().await {
                Ok(Some(bytes)) => {
                    self.failures = 0;
                    self.buf.push_str(&String::from_utf8_lossy(&bytes));
                    let endpoint = endpoint.clone();
                    self.parse(&endpoint)?;
                }
                Ok(None) | Err(_) => {
                    // Disconnected: resume (elsewhere if this endpoint keeps failing).
                    let ep = endpoint.clone();
                    self.resp = None;
                    self.failures += 1;
                    if self.failures > 1 {
                        self.client.rotate(&ep);
                    }
                    if self.failures > self.client.inner.attempts {
                        return Err(ClientError::Transport {
                            endpoint: ep,
                            message: "watch stream keeps failing".into(),
                            connect: false,
                        });
                    }
                }
            }
        }
    }

    /// Moves complete SSE events from the buffer to `pending`; `dropped` forces a reconnect.
    fn parse(&mut self, endpoint: &str) -> Result<(), ClientError> {
        while let Some(end) = self.buf.find("\n\n") {
            let block: String = self.buf.drain(..end + 2).collect();
            let mut event = "message";
            let mut data = String::new();
            let mut completes = false;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = if v.trim() == "dropped" {
                        "dropped"
                    } else {
                        "change"
                    };
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                } else if line.starts_with("id:") {
                    // The server sets the id on the last event of each revision.
                    completes = true;
                }
            }
            match event {
                "change" => {
                    let ev: WatchEventBody =
                        serde_json::from_str(&data).map_err(|e| ClientError::Decode {
                            endpoint: endpoint.into(),
                            message: e.to_string(),
                        })?;
                    if self.from.is_some_and(|f| ev.revision <= f) {
                        continue;
                    }
                    // Part of this revision was delivered before a reconnect: skip that part.
                    if let Some((r, n)) = self.skip
                        && r == ev.revision
                        && n > 0
                    {
                        self.skip = Some((r, n - 1));
                        continue;
                    }
                    self.pending.push_back((ev, completes));
                }
                "dropped" => {
                    if let Ok(d) = serde_json::from_str::<DroppedBody>(&data) {
                        tracing::debug!(reason = d.reason, "watch dropped by the server; resuming");
                    }
                    self.resp = None;
                    return Ok(());
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(normalize("10.0.0.1:8080/".into()), "http://10.0.0.1:8080");
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
