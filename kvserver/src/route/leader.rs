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
    if raw.principal.kind == crate::auth::Kind::Certificate {
        // The leader authenticates a relayed request by the client's own
        // credential, and a client certificate cannot be passed on: the client
        // goes to the leader itself (the client library follows `leader_hint`).
        return Err(ApiError::NoLeader {
            leader_hint: Some(leader_id),
        });
    }
    let leader = {
        let m = raft::raft_metrics(&state.raft);
        m.membership_config
            .membership()
            .get_node(&leader_id)
            .cloned()
    };
    let Some(leader) = leader else {
        return Err(ApiError::NoLeader {
            leader_hint: Some(leader_id),
        });
    };
    let url = format!(
        "{}://{}{}",
        state.api_scheme, leader.api_addr, raw.path_and_query
    );
    let mut req = state
        .http
        .request(raw.method.clone(), &url)
        .header(mark, state.id.to_string())
        .body(raw.body.clone());
    // The client's credential goes along, and the leader authenticates it
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
    let resp = req.send().await.map_err(|e| ApiError::Unavailable {
        code: "leader_unreachable",
        message: format!(
            "could not forward to leader {leader_id} at {}: {e}",
            leader.api_addr
        ),
        retry: true,
    })?;
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
        message: format!("leader {leader_id} response was cut: {e}"),
        retry: true,
    })?;
    let mut out = Response::new(Body::from(body));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    Ok(out)
}
