//! The client HTTP API (axum): the router, per-request observability, and
//! request extraction with JSON errors. Handlers only validate, build the
//! command, route it and map the outcome to HTTP.
//!
//! Any node accepts any request: where it is served (here, or by the leader
//! over the peer port or as a relayed HTTP request) is `crate::route`'s job.

pub mod auth;
pub mod backup;
pub mod cluster;
pub mod error;
pub mod kv;
pub mod limits;
pub mod merge;
pub mod openapi;
pub mod ops;
pub mod partitions;
pub mod range;
pub mod serve;
pub mod txn;
pub mod watch;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::FromRequest;
use axum::extract::FromRequestParts;
use axum::extract::MatchedPath;
use axum::extract::Request;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::HeaderValue;
use axum::http::Method;
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::get;
use axum::routing::post;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use tower_http::catch_panic::CatchPanicLayer;

pub use self::error::ApiError;
use crate::command::KvNode;
use crate::command::NodeId;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::raft::KvRaft;
pub use crate::route::WRITE_TIMEOUT;
use crate::store::Store;

/// Header marking a request forwarded by another node (value: that node's id).
pub const FORWARDED_BY: &str = "x-kv-forwarded-by";
/// Header naming the node that served a response.
pub const SERVED_BY: &str = "x-kv-served-by";
pub const REQUEST_ID: &str = "x-request-id";

/// Everything a handler needs; shared by all requests of one node.
pub struct NodeState {
    pub id: NodeId,
    pub cluster_id: String,
    pub raft: KvRaft,
    pub store: Store,
    /// The partition groups this node hosts (`crate::group`).
    pub groups: Arc<crate::group::Groups>,
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub advertise: KvNode,
    pub http: reqwest::Client,
    /// For relayed streams (a watch's parts on other nodes): a timeout on each
    /// read instead of on the whole request.
    pub stream_http: reqwest::Client,
    pub started: Instant,
    /// Unix ms of the last AppendEntries accepted from a leader (followers' heartbeat clock).
    pub peer_state: Arc<crate::peer::PeerState>,
    /// Linearizable reads on this node while it follows.
    pub follower_reads: Arc<crate::route::read_index::FollowerReads>,
    /// Hands writes to the leader over the peer port.
    pub writes: Arc<crate::route::forward::WriteForwarder>,
    /// Becomes true when the API starts draining (long-lived streams end then).
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// `https` when the client port serves TLS (the scheme of every member's client port).
    pub api_scheme: &'static str,
    /// The certificates this node serves, for `/readyz`.
    pub tls_certs: Vec<Arc<crate::tls::Reloading>>,
    /// Credentials to principals (`crate::auth`).
    pub auth: Arc<crate::auth::Authenticator>,
    /// Requests and watch streams in progress, against their limits.
    pub gates: limits::Gates,
    /// Held while a backup is taken (one at a time per node).
    pub backup_slot: Arc<tokio::sync::Mutex<()>>,
    /// Held while the cluster is being formed here: a repeated init (a client that
    /// timed out while a large backup was restored) waits, then finds it done.
    pub init_lock: Arc<tokio::sync::Mutex<()>>,
}

pub type AppState = Arc<NodeState>;

/// The body limit in force, exposed to extractors for error messages.
#[derive(Clone, Copy)]
struct BodyLimit(usize);

/// Builds the router of the client API.
pub fn router(state: AppState) -> Router {
    // JSON may escape a value up to 6x (\u00XX); the exact limit is checked on the decoded value.
    let body_limit = state
        .config
        .max_value_bytes
        .saturating_mul(6)
        .saturating_add(64 * 1024);
    Router::new()
        .route("/v1/kv", get(range::list).delete(range::delete_prefix))
        .route(
            "/v1/kv/",
            get(kv::empty_key).put(kv::empty_key).delete(kv::empty_key),
        )
        .route(
            "/v1/kv/{*key}",
            get(kv::get_key).put(kv::put_key).delete(kv::delete_key),
        )
        .route("/v1/batch/get", post(range::batch_get))
        .route("/v1/txn", post(txn::txn))
        .route("/v1/watch", get(watch::watch))
        .route("/v1/cluster", get(cluster::info))
        .route("/v1/partitions", get(partitions::list))
        .route("/v1/partitions/key", get(partitions::key))
        .route("/v1/backup", get(backup::backup))
        .route("/v1/cluster/init", post(cluster::init))
        .route("/v1/cluster/learners", post(cluster::add_learner))
        .route("/v1/cluster/membership", post(cluster::change_membership))
        .route(
            "/v1/cluster/transfer-leader",
            post(cluster::transfer_leader),
        )
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/status", get(ops::status))
        .route("/metrics", get(ops::metrics))
        .route("/v1/openapi.json", get(openapi::openapi_json))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::Extension(BodyLimit(body_limit)))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limits::limit,
        ))
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound {
        code: "no_such_endpoint",
        message: "no such endpoint; see README for the API".into(),
    }
}

async fn method_not_allowed(method: Method) -> Response {
    let body = serde_json::json!({"error": {"code": "method_not_allowed", "message": format!("method {method} is not allowed on this path")}});
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response()
}

fn panic_response(err: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = err
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into());
    tracing::error!(panic = %detail, "handler panicked");
    ApiError::Internal("the request handler panicked; the error was logged".into()).into_response()
}

/// A request id unique across nodes and restarts: a random per-process prefix and a
/// counter. (A UUID per request cost a `getrandom` system call on every request.)
fn new_request_id() -> String {
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| uuid::Uuid::new_v4().simple().to_string()[..16].to_string());
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{n:x}")
}

/// Request id, latency, metrics and one log line per request.
async fn observe(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(new_request_id);
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        req.headers_mut().insert(REQUEST_ID, v);
    }
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let forwarded_by = req
        .headers()
        .get(FORWARDED_BY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut resp = next.run(req).await;
    let principal = resp
        .extensions_mut()
        .remove::<auth::CallerName>()
        .map(|c| c.0);
    let status = resp.status();
    let elapsed = started.elapsed();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    if !resp.headers().contains_key(SERVED_BY) {
        resp.headers_mut()
            .insert(SERVED_BY, HeaderValue::from(state.id));
    }
    state
        .metrics
        .http_requests
        .with_label_values(&[&route, method.as_str(), status.as_str()])
        .inc();
    state
        .metrics
        .http_duration
        .with_label_values(&[&route, method.as_str()])
        .observe(elapsed.as_secs_f64());
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    if route == "/metrics" || route == "/healthz" || route == "/readyz" {
        tracing::debug!(request_id, %method, path, status = status.as_u16(), latency_ms, "request");
    } else {
        // Key names are data: the path (which holds them) only at debug; the
        // route pattern says which endpoint it was.
        tracing::info!(request_id, %method, route, status = status.as_u16(), latency_ms, forwarded_by, principal, "request");
        tracing::debug!(request_id, path, "request path");
    }
    resp
}

/// Most of a refused request's body read (and dropped) before the refusal goes
/// out, so the client, still sending it, reads the answer instead of a reset
/// connection, and the connection stays usable; a larger body closes it.
const DRAIN_BYTES: usize = 256 * 1024;

/// `err` as the answer to `req`, whose body nothing has read yet.
pub(crate) async fn refuse_unread(req: Request, err: ApiError) -> Response {
    let drained = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        axum::body::to_bytes(req.into_body(), DRAIN_BYTES),
    )
    .await;
    let mut resp = err.into_response();
    if !matches!(drained, Ok(Ok(_))) {
        resp.headers_mut().insert(
            axum::http::header::CONNECTION,
            HeaderValue::from_static("close"),
        );
    }
    resp
}

/// The raw request, kept so it can be replayed against the leader, and its
/// authenticated caller.
pub struct Raw {
    pub method: Method,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub principal: Arc<crate::auth::Principal>,
}

impl Raw {
    /// Whether another node already forwarded this request here.
    pub fn forwarded(&self) -> bool {
        self.headers.contains_key(FORWARDED_BY)
    }

    /// Parses the body as JSON into `T`, with errors naming the offending field.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        if self.body.is_empty() {
            return Err(ApiError::bad(
                "invalid_json",
                "request body is empty; a JSON object is required",
            ));
        }
        // serde reads a struct from a JSON array too (its fields in order), so
        // `[null]` would pass as `{}`: every body here is an object, and anything
        // else is refused (schemathesis found `POST /v1/cluster/init` taking `[null]`).
        if self
            .body
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b != b'{')
        {
            return Err(ApiError::bad(
                "invalid_json",
                "the request body must be a JSON object",
            ));
        }
        let de = &mut serde_json::Deserializer::from_slice(&self.body);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let msg = if path == "." || path.is_empty() {
                format!("invalid JSON body: {inner}")
            } else {
                format!("invalid JSON body at `{path}`: {inner}")
            };
            ApiError::bad("invalid_json", msg)
        })
    }

    /// Like [`Raw::json`], but an empty body yields `T::default()`.
    pub fn json_or_default<T: DeserializeOwned + Default>(&self) -> Result<T, ApiError> {
        if self.body.iter().all(|b| b.is_ascii_whitespace()) {
            Ok(T::default())
        } else {
            self.json()
        }
    }
}

impl<S: Send + Sync> FromRequest<S> for Raw {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let method = req.method().clone();
        let path_and_query = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let headers = req.headers().clone();
        // Fails closed: no principal, no request.
        let principal = req
            .extensions()
            .get::<auth::Caller>()
            .map(|c| c.0.clone())
            .ok_or(ApiError::Unauthenticated(
                crate::auth::Unauthenticated::Missing,
            ))?;
        let req_limit = req.extensions().get::<BodyLimit>().map(|l| l.0);
        let body = Bytes::from_request(req, state).await.map_err(|rej| {
            if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                let limit = req_limit.unwrap_or(0);
                ApiError::BodyTooLarge { limit }
            } else {
                ApiError::bad("invalid_body", rej.body_text())
            }
        })?;
        Ok(Raw {
            method,
            path_and_query,
            headers,
            body,
            principal,
        })
    }
}

/// Query-string extractor with strict fields and JSON errors.
pub struct Q<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| Q(q.0))
            .map_err(|e| {
                ApiError::bad(
                    "invalid_parameter",
                    format!("invalid query string: {}", e.body_text()),
                )
            })
    }
}

impl NodeState {
    /// Whether this node has a membership (was initialized or joined a cluster).
    pub fn initialized(&self) -> bool {
        crate::raft::initialized(&self.raft)
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::body::to_bytes;
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn a_panicking_handler_becomes_a_json_500() -> Result<(), Box<dyn std::error::Error>> {
        async fn boom() -> &'static str {
            panic!("boom")
        }
        let app = Router::new()
            .route("/boom", get(boom))
            .layer(CatchPanicLayer::custom(panic_response));
        let resp = app
            .oneshot(Request::builder().uri("/boom").body(Body::empty())?)
            .await?;
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body: serde_json::Value =
            serde_json::from_slice(&to_bytes(resp.into_body(), 1 << 20).await?)?;
        assert_eq!(body["error"]["code"], "internal");
        Ok(())
    }
}
