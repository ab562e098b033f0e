//! Cluster management endpoints: inspect, initialize, add a learner, change
//! the voter set and transfer leadership.
//!
//! Every call is idempotent: a request whose effect is already in place
//! answers success (`"changed": false`) without proposing anything, so an
//! operator that crashed mid-step can simply repeat it. Membership changes run
//! on the leader (requests are forwarded) and return once committed.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use openraft::ChangeMembers;
use openraft::ServerState;
use openraft::error::InitializeError;
use openraft::error::RaftError;

use super::ApiError;
use super::AppState;
use super::Q;
use super::Raw;
use super::kv::NoParams;
use crate::command::KvNode;
use crate::command::NodeId;
use crate::model::ChangeResponse;
use crate::model::ClusterInfo;
use crate::model::InitRequest;
use crate::model::LearnerRequest;
use crate::model::MemberInfo;
use crate::model::MemberSpec;
use crate::model::MembershipRequest;
use crate::model::TransferRequest;
use crate::restore::InitError;
use crate::route;
use crate::route::Routed;

pub fn role_name(state: ServerState, initialized: bool) -> &'static str {
    if !initialized {
        return "uninitialized";
    }
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

/// Builds the cluster view from this node's Raft metrics.
pub fn cluster_info(state: &AppState) -> ClusterInfo {
    let m = crate::raft::raft_metrics(&state.raft);
    let membership = m.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let initialized = crate::raft::has_membership(&m);
    let last = m.last_log_index;
    let members = membership
        .nodes()
        .map(|(id, node)| {
            // None until the member acknowledged an entry: an unreachable learner
            // must not look caught up.
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(id))
                .and_then(|l| l.as_ref().map(|l| l.index));
            MemberInfo {
                id: *id,
                role: if voters.contains(id) {
                    "voter".to_string()
                } else {
                    "learner".to_string()
                },
                api_addr: node.api_addr.clone(),
                raft_addr: node.raft_addr.clone(),
                matched_index: matched,
                lag: matched.map(|mi| last.unwrap_or(0).saturating_sub(mi)),
            }
        })
        .collect();
    ClusterInfo {
        cluster_id: state.cluster_id.clone(),
        node_id: state.id,
        initialized,
        role: role_name(m.state, initialized).to_string(),
        term: m.current_term,
        leader_id: m.current_leader,
        leader: m
            .current_leader
            .and_then(|l| membership.get_node(&l))
            .map(|n| MemberSpec {
                api_addr: n.api_addr.clone(),
                raft_addr: n.raft_addr.clone(),
            }),
        last_log_index: last,
        committed_index: m.local_committed.as_ref().map(|l| l.index),
        applied_index: m.last_applied.as_ref().map(|l| l.index),
        snapshot_index: m.snapshot.as_ref().map(|l| l.index),
        purged_index: m.purged.as_ref().map(|l| l.index),
        revision: state.store.revision(),
        joint: membership.get_joint_config().len() > 1,
        membership_log_index: m.membership_config.log_id().as_ref().map(|l| l.index),
        members,
        lost_data: !initialized
            && state
                .peer_state
                .lost_data_ms
                .load(std::sync::atomic::Ordering::Relaxed)
                != 0,
    }
}

/// The answer of a cluster-changing call: whether it changed anything, and the cluster now.
fn change_response(state: &AppState, changed: bool) -> Response {
    Json(ChangeResponse {
        changed,
        cluster: Some(cluster_info(state)),
        leader_id: None,
    })
    .into_response()
}

/// `GET /v1/cluster`: this node's view of the cluster.
#[utoipa::path(
    get, path = "/v1/cluster", tag = "cluster",
    responses((status = 200, description = "Cluster view", body = ClusterInfo), (status = 400, description = "Unknown parameter", body = crate::model::ErrorBody))
)]
pub async fn info(State(state): State<AppState>, Q(_params): Q<NoParams>) -> Json<ClusterInfo> {
    Json(cluster_info(&state))
}

fn node_spec(api_addr: String, raft_addr: String, field: &str) -> Result<KvNode, ApiError> {
    for (name, a) in [("api_addr", &api_addr), ("raft_addr", &raft_addr)] {
        let ok = a
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
        if !ok {
            return Err(ApiError::bad(
                "invalid_parameter",
                format!("{field}.{name}: {a:?} is not a host:port address"),
            ));
        }
    }
    Ok(KvNode {
        api_addr,
        raft_addr,
    })
}

/// `POST /v1/cluster/init`: forms a new single-voter cluster with this node.
#[utoipa::path(
    post, path = "/v1/cluster/init", tag = "cluster",
    request_body(content = InitRequest, description = "Optional; default: this node alone"),
    responses(
        (status = 200, description = "Already initialized with these members (`changed: false`)", body = ChangeResponse),
        (status = 201, description = "Cluster formed", body = ChangeResponse),
        (status = 400, description = "Invalid members", body = crate::model::ErrorBody),
        (status = 409, description = "Already part of a cluster with other members (`already_initialized`)", body = crate::model::ErrorBody),
    )
)]
pub async fn init(
    State(state): State<AppState>,
    Q(_params): Q<NoParams>,
    raw: Raw,
) -> Result<Response, ApiError> {
    crate::route::authorize(&state, &raw.principal, &[crate::auth::Access::Admin])?;
    let body: InitRequest = raw.json_or_default()?;
    let members: BTreeMap<NodeId, KvNode> = match body.members {
        None => BTreeMap::from([(state.id, state.advertise.clone())]),
        Some(m) => {
            let mut out = BTreeMap::new();
            for (id, spec) in m {
                out.insert(
                    id,
                    node_spec(spec.api_addr, spec.raft_addr, &format!("members.{id}"))?,
                );
            }
            out
        }
    };
    if !members.contains_key(&state.id) {
        return Err(ApiError::bad(
            "invalid_parameter",
            format!("members must include this node ({})", state.id),
        ));
    }
    // Other initial voters would start with empty stores, which is exactly what a
    // member that lost its volume looks like; empty stores never vote (see
    // `peer::server`), so every other node joins as a learner and is then promoted.
    if let Some(other) = members.keys().find(|id| **id != state.id) {
        return Err(ApiError::bad(
            "invalid_parameter",
            format!(
                "members.{other}: a cluster is initialized with this node ({}) alone; add other nodes with POST /v1/cluster/learners, then promote them with POST /v1/cluster/membership",
                state.id
            ),
        ));
    }
    let _forming = state.init_lock.lock().await;
    if state.initialized() {
        let info = cluster_info(&state);
        let current: BTreeSet<NodeId> = info.members.iter().map(|m| m.id).collect();
        if members.keys().all(|id| current.contains(id)) {
            return Ok(Json(ChangeResponse {
                changed: false,
                cluster: Some(info),
                leader_id: None,
            })
            .into_response());
        }
        return Err(ApiError::Conflict {
            code: "already_initialized",
            message: format!(
                "this node already belongs to a cluster with members {current:?}; add nodes with /v1/cluster/learners"
            ),
        });
    }
    match crate::restore::initialize(
        &state.raft,
        &state.store,
        &state.peer_state.catch_up,
        state.id,
        &state.cluster_id,
        members,
        state
            .config
            .restore_from
            .as_deref()
            .map(|p| (p, crate::restore::cluster_select(&state.config))),
    )
    .await
    {
        Ok(_) => {}
        Err(InitError::Raft(RaftError::APIError(InitializeError::NotAllowed(_)))) => {
            // Lost a race with another init or a leader's append: report the state as is.
            return Ok(change_response(&state, false));
        }
        Err(InitError::Raft(RaftError::APIError(InitializeError::NotInMembers(e)))) => {
            return Err(ApiError::bad("invalid_parameter", e.to_string()));
        }
        Err(InitError::Raft(RaftError::Fatal(f))) => return Err(f.into()),
        Err(InitError::Restore(e)) => {
            return Err(ApiError::Conflict {
                code: "restore_refused",
                message: e.to_string(),
            });
        }
        Err(e @ (InitError::Seal(_) | InitError::Guard(_))) => {
            return Err(ApiError::Internal(e.to_string()));
        }
    }
    tracing::info!(node_id = state.id, "cluster initialized");
    Ok((
        StatusCode::CREATED,
        Json(ChangeResponse {
            changed: true,
            cluster: Some(cluster_info(&state)),
            leader_id: None,
        }),
    )
        .into_response())
}

/// How far behind the leader's log a learner may be when it is promoted.
pub const PROMOTE_MAX_LAG: u64 = 100;

/// Waits briefly for learner `id` to be within [`PROMOTE_MAX_LAG`] of the leader's log
/// (the replication metrics trail the acknowledgements by a moment), else refuses.
async fn learner_caught_up(state: &AppState, id: NodeId) -> Result<(), ApiError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let lag = cluster_info(state)
            .members
            .into_iter()
            .find(|m| m.id == id)
            .and_then(|m| m.lag);
        match lag {
            Some(l) if l <= PROMOTE_MAX_LAG => return Ok(()),
            _ if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Some(l) => {
                return Err(ApiError::Conflict {
                    code: "learner_not_caught_up",
                    message: format!(
                        "learner {id} is {l} entries behind the leader; promote it once it is at most {PROMOTE_MAX_LAG} behind"
                    ),
                });
            }
            None => {
                return Err(ApiError::Conflict {
                    code: "learner_not_caught_up",
                    message: format!(
                        "learner {id} has not acknowledged any entry (is its raft_addr reachable?); add it with \"wait\": true and promote it once it has caught up"
                    ),
                });
            }
        }
    }
}

/// `POST /v1/cluster/learners`: adds (or confirms) a non-voting member.
#[utoipa::path(
    post, path = "/v1/cluster/learners", tag = "cluster",
    request_body = LearnerRequest,
    responses(
        (status = 200, description = "Learner added or already present", body = ChangeResponse),
        (status = 400, description = "Invalid request", body = crate::model::ErrorBody),
        (status = 409, description = "A voter with that id has other addresses, or a change is in progress", body = crate::model::ErrorBody),
        (status = 503, description = "Not initialized, no leader or commit timeout", body = crate::model::ErrorBody),
    )
)]
pub async fn add_learner(
    State(state): State<AppState>,
    Q(_params): Q<NoParams>,
    raw: Raw,
) -> Result<Response, ApiError> {
    let body: LearnerRequest = raw.json()?;
    let node = node_spec(body.api_addr, body.raft_addr, "learner")?;
    if let Routed::Relayed(resp) = route::leader_only(&state, &raw).await? {
        return Ok(resp);
    }
    let existing = cluster_info(&state)
        .members
        .into_iter()
        .find(|m| m.id == body.id);
    if let Some(m) = &existing {
        if m.api_addr == node.api_addr && m.raft_addr == node.raft_addr {
            return Ok(change_response(&state, false));
        }
        if m.role == "voter" {
            return Err(ApiError::Conflict {
                code: "node_exists",
                message: format!(
                    "node {} is a voter at {}/{}; remove it before re-adding with new addresses",
                    m.id, m.api_addr, m.raft_addr
                ),
            });
        }
    }
    let raft = state.raft.clone();
    let id = body.id;
    let wait = body.wait;
    let node2 = node.clone();
    let op = move || async move {
        if existing.is_some() {
            // A learner with new addresses: update its record in place.
            raft.change_membership(ChangeMembers::SetNodes(BTreeMap::from([(id, node2)])), true)
                .await
                .map(|_| ())
        } else {
            raft.add_learner(id, node2, wait).await.map(|_| ())
        }
    };
    if let Routed::Relayed(resp) = route::membership(&state, &raw, op).await? {
        return Ok(resp);
    }
    tracing::info!(learner = id, %node, "learner added");
    Ok(change_response(&state, true))
}

/// `POST /v1/cluster/membership`: promotes learners and/or removes members.
#[utoipa::path(
    post, path = "/v1/cluster/membership", tag = "cluster",
    request_body = MembershipRequest,
    responses(
        (status = 200, description = "Membership changed or already as requested", body = ChangeResponse),
        (status = 400, description = "Invalid request, unknown learner, or it would remove every voter", body = crate::model::ErrorBody),
        (status = 409, description = "Another membership change is in progress, or a learner to promote has not caught up (`learner_not_caught_up`)", body = crate::model::ErrorBody),
        (status = 503, description = "Not initialized, no leader or commit timeout", body = crate::model::ErrorBody),
    )
)]
pub async fn change_membership(
    State(state): State<AppState>,
    Q(_params): Q<NoParams>,
    raw: Raw,
) -> Result<Response, ApiError> {
    let body: MembershipRequest = raw.json()?;
    let actions = [
        !body.add_voters.is_empty(),
        !body.remove_voters.is_empty(),
        !body.remove_nodes.is_empty(),
    ];
    if actions.iter().filter(|a| **a).count() != 1 {
        return Err(ApiError::bad(
            "invalid_parameter",
            "give exactly one of add_voters, remove_voters, remove_nodes (one membership change at a time)",
        ));
    }
    if let Routed::Relayed(resp) = route::leader_only(&state, &raw).await? {
        return Ok(resp);
    }
    let info = cluster_info(&state);
    let voters: BTreeSet<NodeId> = info
        .members
        .iter()
        .filter(|m| m.role == "voter")
        .map(|m| m.id)
        .collect();
    let all: BTreeSet<NodeId> = info.members.iter().map(|m| m.id).collect();
    let (change, noop) = if !body.add_voters.is_empty() {
        let ids: BTreeSet<NodeId> = body.add_voters.iter().copied().collect();
        if let Some(missing) = ids.iter().find(|id| !all.contains(id)) {
            return Err(ApiError::bad(
                "learner_not_found",
                format!("node {missing} is not a member; add it as a learner first"),
            ));
        }
        // A voter that cannot keep up (or was never reached: a wrong address) would
        // count toward quorum without acknowledging anything: promoting it can stall
        // every write. Refuse until it has caught up, as etcd does for learners.
        for id in ids.difference(&voters) {
            learner_caught_up(&state, *id).await?;
        }
        let noop = ids.is_subset(&voters);
        (ChangeMembers::AddVoterIds(ids), noop)
    } else if !body.remove_voters.is_empty() {
        let ids: BTreeSet<NodeId> = body.remove_voters.iter().copied().collect();
        if voters.difference(&ids).next().is_none() {
            return Err(ApiError::bad(
                "empty_membership",
                "refusing to remove every voter",
            ));
        }
        let noop = ids.is_disjoint(&voters);
        (ChangeMembers::RemoveVoters(ids), noop)
    } else {
        let ids: BTreeSet<NodeId> = body.remove_nodes.iter().copied().collect();
        if voters.difference(&ids).next().is_none() {
            return Err(ApiError::bad(
                "empty_membership",
                "refusing to remove every voter",
            ));
        }
        let noop = ids.is_disjoint(&all);
        // Voters among them must leave the voter set first; openraft does both in one joint change.
        (ChangeMembers::RemoveNodes(ids), noop)
    };
    if noop && !info.joint {
        return Ok(Json(ChangeResponse {
            changed: false,
            cluster: Some(info),
            leader_id: None,
        })
        .into_response());
    }
    let raft = state.raft.clone();
    let retain = body.retain;
    let change_desc = format!("{change:?}");
    let op = move || async move {
        if let ChangeMembers::RemoveNodes(ids) = change {
            // openraft removes only learners with RemoveNodes: voters leave the voter set (and the
            // cluster, retain=false) first, then the remaining learners are dropped.
            let voters_leaving: BTreeSet<NodeId> = ids.intersection(&voters).copied().collect();
            let learners_leaving: BTreeSet<NodeId> = ids
                .difference(&voters)
                .filter(|id| all.contains(id))
                .copied()
                .collect();
            if !voters_leaving.is_empty() {
                raft.change_membership(ChangeMembers::RemoveVoters(voters_leaving), false)
                    .await?;
            }
            if !learners_leaving.is_empty() {
                raft.change_membership(ChangeMembers::RemoveNodes(learners_leaving), false)
                    .await?;
            }
            return Ok(());
        }
        raft.change_membership(change, retain).await.map(|_| ())
    };
    if let Routed::Relayed(resp) = route::membership(&state, &raw, op).await? {
        return Ok(resp);
    }
    tracing::info!(change = %change_desc, "membership changed");
    Ok(change_response(&state, true))
}

/// `POST /v1/cluster/transfer-leader`: hands leadership to a voter and waits until it leads.
#[utoipa::path(
    post, path = "/v1/cluster/transfer-leader", tag = "cluster",
    request_body = TransferRequest,
    responses(
        (status = 200, description = "The target leads (now or already)", body = ChangeResponse),
        (status = 400, description = "Target is not a voter", body = crate::model::ErrorBody),
        (status = 503, description = "Not initialized, or the transfer did not complete in time", body = crate::model::ErrorBody),
    )
)]
pub async fn transfer_leader(
    State(state): State<AppState>,
    Q(_params): Q<NoParams>,
    raw: Raw,
) -> Result<Response, ApiError> {
    let body: TransferRequest = raw.json()?;
    if !state.initialized() {
        return Err(ApiError::NotInitialized);
    }
    let info = cluster_info(&state);
    if info.leader_id == Some(body.to) {
        return Ok(Json(ChangeResponse {
            changed: false,
            cluster: None,
            leader_id: Some(body.to),
        })
        .into_response());
    }
    if !info
        .members
        .iter()
        .any(|m| m.id == body.to && m.role == "voter")
    {
        return Err(ApiError::bad(
            "invalid_parameter",
            format!("node {} is not a voter; only voters can lead", body.to),
        ));
    }
    if let Routed::Relayed(resp) = route::leader_only(&state, &raw).await? {
        return Ok(resp);
    }
    match state
        .writes
        .hand_off(body.to, Duration::from_secs(10))
        .await?
    {
        Some(leader) if leader == body.to => {
            tracing::info!(to = body.to, "leadership transferred");
            Ok(Json(ChangeResponse {
                changed: true,
                cluster: None,
                leader_id: Some(body.to),
            })
            .into_response())
        }
        other => Err(ApiError::Unavailable {
            code: "transfer_timeout",
            message: match other {
                Some(leader) => format!(
                    "leadership went to {leader} instead of {}; the target may be lagging or down",
                    body.to
                ),
                None => format!(
                    "leadership did not move to {} in time; the target may be lagging or down",
                    body.to
                ),
            },
            retry: true,
        }),
    }
}
