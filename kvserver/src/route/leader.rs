//! Calls only the leader serves (cluster changes), and the HTTP relay: the way
//! to the leader for those calls, and for writes and reads when the peer-port
//! paths are not available. A relayed request carries `x-kv-forwarded-by`; a
//! node receiving one that is not the leader answers 503 `no_leader` instead of
//! relaying again, so there are no loops. A relayed request carries the
//! client's `Authorization` header and the leader authenticates it anew.

use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::Response;
use openraft::ServerState;
use openraft::error::ClientWriteError;
use openraft::error::RaftError;

use super::Routed;
use super::WRITE_TIMEOUT;
use crate::api::ApiError;
use crate::api::AppState;
use crate::api::FORWARDED_BY;
use crate::api::NodeState;
use crate::api::REQUEST_ID;
use crate::api::Raw;
use crate::api::SERVED_BY;
use crate::api::error::write_error;
use crate::command::NodeId;
use crate::command::TypeConfig;
use crate::raft;

/// A call only the leader serves: `Local` when this node leads, else the
/// leader's answer (or `NotInitialized` / `no_leader`).
pub async fn leader_only(state: &AppState, raw: &Raw) -> Result<Routed<()>, ApiError> {
    super::authorize(state, &raw.principal, &[crate::auth::Access::Admin])?;
    if !state.initialized() {
        return Err(ApiError::NotInitialized);
    }
    let m = raft::raft_metrics(&state.raft);
    if m.state == ServerState::Leader {
        return Ok(Routed::Local(()));
    }
    Ok(Routed::Relayed(relay(state, raw, m.current_leader).await?))
}

/// Runs the membership change `op` here (this node leads) or relays `raw` to
/// the leader that `op`'s refusal names; a change that does not commit in time
/// is a 503 the operator may simply repeat (every cluster call is idempotent).
pub async fn membership<F, Fut>(state: &AppState, raw: &Raw, op: F) -> Result<Routed<()>, ApiError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<
            Output = Result<(), RaftError<TypeConfig, ClientWriteError<TypeConfig>>>,
        >,
{
    let res = tokio::time::timeout(WRITE_TIMEOUT * 3, op()).await.map_err(|_| ApiError::Unavailable {
        code: "commit_timeout",
        message: "membership change not committed in time; check GET /v1/cluster and repeat (it is idempotent)".into(),
        retry: true,
    })?;
    match res {
        Ok(_) => Ok(Routed::Local(())),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            Ok(Routed::Relayed(relay(state, raw, f.leader_id).await?))
        }
        Err(e) => Err(write_error(e)),
    }
}

/// Replays `raw` once against the leader `leader_id`'s client API (or answers
/// why it cannot): the way to the leader for cluster calls, and for writes and
/// reads when the peer-port paths are not available.
pub async fn relay(
    state: &NodeState,
    raw: &Raw,
    leader_id: Option<NodeId>,
) -> Result<Response, ApiError> {
    if !state.initialized() {
        return Err(ApiError::NotInitialized);
    }
    let Some(leader_id) = leader_id.filter(|l| *l != state.id) else {
        return Err(ApiError::NoLeader { leader_hint: None });
    };
    if raw.forwarded() {
        // Already forwarded once: the cluster's view of the leader is moving; let the client retry.
        return Err(ApiError::NoLeader {
            leader_hint: Some(leader_id),
        });
    }
    relay_to(state, raw, leader_id, FORWARDED_BY).await
}

/// Replays `raw` once against node `to`'s client API, marked with header
/// `mark` (this node's id): to the leader (`x-kv-forwarded-by`), or to a node
/// hosting the key's partition (`x-kv-routed-by`, see `super::target`).
pub async fn relay_to(
    state: &NodeState,
    raw: &Raw,
    leader_id: NodeId,
    mark: &'static str,
) -> Result<Response, ApiError> {
    let (req, addr) = relay_request(
        state,
        &state.http,
        raw,
        leader_id,
        mark,
        &raw.path_and_query,
    )?;
    let resp = req
        .body(raw.body.clone())
        .send()
        .await
        .map_err(|e| ApiError::Unavailable {
            code: "leader_unreachable",
            message: format!("could not forward to leader {leader_id} at {addr}: {e}"),
            retry: true,
        })?;
    into_response(resp, leader_id).await
}

/// A relayed answer as this node's answer: its status, body and the headers a
/// client reads (the body buffered: relayed answers are a page at most).
pub async fn into_response(
    resp: reqwest::Response,
    leader_id: NodeId,
) -> Result<Response, ApiError> {
    let status = resp.status();
    let mut headers = HeaderMap::new();
    for name in [
        axum::http::header::CONTENT_TYPE,
        axum::http::header::RETRY_AFTER,
    ] {
        if let Some(v) = resp.headers().get(&name) {
            headers.insert(name, v.clone());
        }
    }
    for name in [SERVED_BY, super::target::PARTITION] {
        if let Some(v) = resp.headers().get(name) {
            headers.insert(name, v.clone());
        }
    }
    let body = resp.bytes().await.map_err(|e| ApiError::Unavailable {
        code: "leader_unreachable",
        message: format!("node {leader_id}'s response was cut: {e}"),
        retry: true,
    })?;
    let mut out = Response::new(Body::from(body));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    Ok(out)
}

/// A request to node `to`'s client API at `path_and_query` on `http`, carrying
/// `raw`'s credential and marked with `mark`, and the address it goes to; the
/// caller adds the body and sends it.
fn relay_request(
    state: &NodeState,
    http: &reqwest::Client,
    raw: &Raw,
    to: NodeId,
    mark: &'static str,
    path_and_query: &str,
) -> Result<(reqwest::RequestBuilder, String), ApiError> {
    if raw.principal.kind == crate::auth::Kind::Certificate {
        // The node asked authenticates a relayed request by the client's own
        // credential, and a client certificate cannot be passed on: the client
        // goes to that node itself (the client library follows `leader_hint`).
        return Err(ApiError::NoLeader {
            leader_hint: Some(to),
        });
    }
    let node = {
        let m = raft::raft_metrics(&state.raft);
        m.membership_config.membership().get_node(&to).cloned()
    };
    let Some(node) = node else {
        return Err(ApiError::NoLeader {
            leader_hint: Some(to),
        });
    };
    let url = format!("{}://{}{}", state.api_scheme, node.api_addr, path_and_query);
    let mut req = http
        .request(raw.method.clone(), &url)
        .header(mark, state.id.to_string());
    // The client's credential goes along, and the node asked authenticates it
    // itself: nothing this node says about the caller is taken on trust.
    for name in [
        axum::http::header::CONTENT_TYPE,
        axum::http::header::ACCEPT,
        axum::http::header::AUTHORIZATION,
    ] {
        if let Some(v) = raw.headers.get(&name) {
            req = req.header(name, v.clone());
        }
    }
    if let Some(v) = raw.headers.get(REQUEST_ID) {
        req = req.header(REQUEST_ID, v.clone());
    }
    Ok((req, node.api_addr))
}

/// Opens `path_and_query` on node `to` for `raw`'s caller as a stream (on
/// `stream_http`, which limits each read rather than the whole request), marked
/// as routed; the answer's body is read by the caller as it comes.
pub async fn relay_stream(
    state: &NodeState,
    raw: &Raw,
    to: NodeId,
    path_and_query: &str,
    last_event_id: Option<String>,
) -> Result<reqwest::Response, ApiError> {
    let (mut req, addr) = relay_request(
        state,
        &state.stream_http,
        raw,
        to,
        super::target::ROUTED_BY,
        path_and_query,
    )?;
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    req.send().await.map_err(|e| ApiError::Unavailable {
        code: "node_unreachable",
        message: format!("could not reach node {to} at {addr}: {e}"),
        retry: true,
    })
}
