//! Operations endpoints: liveness, readiness, status and Prometheus metrics.
//!
//! `/healthz` only says the process serves HTTP (a liveness probe must not
//! restart a node just because the cluster lost quorum); `/readyz` says the
//! node is a member, is in contact with a leader (or, as leader, with a quorum)
//! and has applied what it knows committed, which is what a Service should
//! route on.

use std::sync::atomic::Ordering;

use crate::model::HealthResponse;
use crate::model::ReadyResponse;
use crate::model::StatusResponse;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::response::Response;
use openraft::ServerState;

use super::AppState;
use super::NodeState;
use super::Q;
use super::cluster::role_name;
use super::kv::NoParams;
use crate::command::TypeConfig;
use crate::command::now_ms;

/// `GET /healthz`: liveness.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "The process serves HTTP", body = HealthResponse)))]
pub async fn healthz(State(state): State<AppState>) -> Json<HealthResponse> {
    Json(HealthResponse {
        status: "ok".into(),
        node_id: state.id,
    })
}

/// `GET /readyz`: readiness.
#[utoipa::path(
    get, path = "/readyz", tag = "ops",
    responses(
        (status = 200, description = "Ready", body = ReadyResponse),
        (status = 400, description = "Unknown parameter", body = crate::model::ErrorBody),
        (status = 503, description = "Not ready; `reasons` says why", body = ReadyResponse),
    )
)]
pub async fn readyz(State(state): State<AppState>, Q(_params): Q<NoParams>) -> Response {
    let m = crate::raft::raft_metrics(&state.raft);
    let membership = m.membership_config.membership();
    let mut reasons = Vec::new();
    if membership.nodes().next().is_none() {
        reasons.push("not initialized: not a member of any cluster yet".to_string());
    } else if membership.get_node(&state.id).is_none() {
        reasons.push("not a member of the cluster's current membership".to_string());
    }
    match (m.current_leader, leader_contact_ms(&state, &m)) {
        (None, _) => reasons.push("no known leader".to_string()),
        // openraft keeps the last leader it knew (and restores it after a failed
        // pre-vote), so a known leader alone does not mean one is reachable: a node
        // cut off from it, or a leader cut off from its quorum, must stop taking
        // traffic well before an election settles the question.
        (Some(leader), None) => reasons.push(format!("no contact with leader {leader} yet")),
        (Some(leader), Some(ms)) if ms > contact_limit_ms(&state) => reasons.push(format!(
            "no contact with leader {leader} for {ms} ms{}",
            if leader == state.id {
                " (no quorum acknowledged this leader)"
            } else {
                ""
            }
        )),
        (Some(_), Some(_)) => {}
    }
    let committed = m.local_committed.as_ref().map(|l| l.index).unwrap_or(0);
    let applied = m.last_applied.as_ref().map(|l| l.index).unwrap_or(0);
    // One metrics snapshot often shows the last entry or batch committed but not
    // yet applied: openraft answers the writer from the state machine before it
    // publishes `last_applied`, and a busy leader always has a batch in flight.
    // Unready means "still catching up", so only a lag that outlasts a short
    // wait counts; otherwise a leader under load would flap out of its Service.
    if applied < committed
        && state
            .raft
            .wait(Some(APPLY_GRACE))
            .applied_index_at_least(Some(committed), "readiness")
            .await
            .is_err()
    {
        let now = crate::raft::raft_metrics(&state.raft)
            .last_applied
            .map(|l| l.index)
            .unwrap_or(0);
        reasons.push(format!(
            "applying: applied index {now} behind committed {committed} after {} ms",
            APPLY_GRACE.as_millis()
        ));
    }
    if !state.store.ping(std::time::Duration::from_secs(1)).await {
        reasons.push(format!("{} storage unreachable", state.store.backend()));
    }
    if m.state == ServerState::Shutdown {
        reasons.push("shutting down".into());
    }
    // A failed reload leaves the previous certificate serving: worth a warning,
    // not an outage (a bad Secret reaches every pod at once). A certificate
    // outside its validity window fails every handshake: not ready.
    let mut warnings = Vec::new();
    for certs in &state.tls_certs {
        let expired = certs
            .current()
            .info
            .validity_problem(crate::command::now_ms() as i64 / 1000);
        if let Some(p) = expired {
            reasons.push(format!("{} TLS certificate {p}", certs.port));
        } else if let Some(p) = certs.problem() {
            warnings.push(p);
        }
    }
    // The same for token files: the previous tokens stay in force.
    if let Some(e) = state.auth.tokens().and_then(|t| t.failing()) {
        warnings.push(format!(
            "token reload failed, previous tokens in force: {e}"
        ));
    }
    let ready = reasons.is_empty();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(ReadyResponse {
            ready,
            node_id: state.id,
            reasons,
            warnings,
        }),
    )
        .into_response()
}

/// How long `/readyz` lets the state machine reach the commit index it saw before
/// calling the node behind. Well under the probe's 2 s timeout (the storage ping
/// may take 1 s more), far above the milliseconds a normal apply takes.
const APPLY_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Milliseconds since this node last had evidence of a working leader: as leader,
/// since a quorum acknowledged it (always fresh when it is the only voter);
/// otherwise since it accepted an append (a heartbeat at least) from one. `None`:
/// never.
fn leader_contact_ms(state: &NodeState, m: &openraft::RaftMetrics<TypeConfig>) -> Option<u64> {
    if m.state == ServerState::Leader {
        let voters: Vec<_> = m.membership_config.membership().voter_ids().collect();
        if voters == [state.id] {
            return Some(0);
        }
        m.last_quorum_acked.as_ref().map(|i| {
            use openraft::Instant;
            i.elapsed().as_millis() as u64
        })
    } else {
        let last = state.peer_state.last_append_ms.load(Ordering::Relaxed);
        (last > 0).then(|| now_ms().saturating_sub(last))
    }
}

/// Contact older than this makes a node unready: twice the longest election
/// timeout, so that heartbeats delayed by a busy machine do not flap readiness,
/// while a node cut off from its leader drops out within seconds.
fn contact_limit_ms(state: &NodeState) -> u64 {
    state.config.raft.election_timeout_max_ms.saturating_mul(2)
}

/// `GET /status`: node status.
#[utoipa::path(
    get, path = "/status", tag = "ops",
    responses(
        (status = 200, description = "Status", body = StatusResponse),
        (status = 400, description = "Unknown parameter", body = crate::model::ErrorBody),
        (status = 503, description = "Storage unavailable", body = crate::model::ErrorBody),
    )
)]
pub async fn status(
    State(state): State<AppState>,
    Q(_params): Q<NoParams>,
) -> Result<Json<StatusResponse>, super::ApiError> {
    let m = crate::raft::raft_metrics(&state.raft);
    let initialized = crate::raft::has_membership(&m);
    let now = now_ms();
    let since_heartbeat_ms = leader_contact_ms(&state, &m);
    let keys = state.store.key_count().await?;
    Ok(Json(StatusResponse {
        version: env!("CARGO_PKG_VERSION").into(),
        node_id: state.id,
        cluster_id: state.cluster_id.clone(),
        role: role_name(m.state, initialized).into(),
        term: m.current_term,
        leader_id: m.current_leader,
        millis_since_heartbeat: since_heartbeat_ms,
        uptime_seconds: state.started.elapsed().as_secs(),
        revision: state.store.revision(),
        keys,
        storage: state.store.backend().into(),
        applied_index: m.last_applied.as_ref().map(|l| l.index),
        api_addr: state.advertise.api_addr.clone(),
        raft_addr: state.advertise.raft_addr.clone(),
        timestamp_ms: now,
        partitions: node_partitions(&state),
    }))
}

/// This node's share of a partitioned cluster (`None`: one partition).
fn node_partitions(state: &AppState) -> Option<crate::model::NodePartitions> {
    let map = state.store.placement();
    if map.epoch == 0 {
        return None;
    }
    let mut out = crate::model::NodePartitions {
        count: map.partitions,
        hosted: Vec::new(),
        led: Vec::new(),
        empty: Vec::new(),
        local_keys: 0,
        local_bytes: 0,
        cluster_nodes: state.groups.members().len(),
    };
    for id in state.groups.ids() {
        let (Some(g), Some(p)) = (state.groups.get(id), crate::group::group_partition(id)) else {
            continue;
        };
        out.hosted.push(p);
        let m = crate::raft::raft_metrics(&g.raft);
        if m.current_leader == Some(state.id) {
            out.led.push(p);
        }
        if !crate::raft::has_membership(&m) {
            out.empty.push(p);
        }
        if let Some((keys, bytes)) = g.stats.get() {
            out.local_keys += keys;
            out.local_bytes += bytes;
        }
    }
    Some(out)
}

/// The per-partition gauges, from the Raft metrics of every hosted partition
/// group (reset first: a partition that moved away leaves no stale series).
fn partition_metrics(state: &AppState) {
    let g = &state.metrics;
    for v in [
        &g.partition_is_leader,
        &g.partition_leader,
        &g.partition_applied_index,
        &g.partition_revision,
        &g.partition_replication_lag,
        &g.partition_keys,
        &g.partition_bytes,
    ] {
        v.reset();
    }
    for id in state.groups.ids() {
        let (Some(group), Some(p)) = (state.groups.get(id), crate::group::group_partition(id))
        else {
            continue;
        };
        let p = p.to_string();
        let m = crate::raft::raft_metrics(&group.raft);
        g.partition_is_leader
            .with_label_values(&[&p])
            .set(i64::from(m.state == ServerState::Leader));
        g.partition_leader
            .with_label_values(&[&p])
            .set(m.current_leader.map(|l| l as i64).unwrap_or(-1));
        g.partition_applied_index
            .with_label_values(&[&p])
            .set(m.last_applied.as_ref().map(|l| l.index).unwrap_or(0) as i64);
        g.partition_revision
            .with_label_values(&[&p])
            .set(group.store.revision() as i64);
        if let Some((keys, bytes)) = group.stats.get() {
            g.partition_keys.with_label_values(&[&p]).set(keys as i64);
            g.partition_bytes.with_label_values(&[&p]).set(bytes as i64);
        }
        if let Some(rep) = &m.replication {
            let last = m.last_log_index.unwrap_or(0);
            for (follower, matched) in rep.iter().filter(|(f, _)| **f != m.id) {
                let mi = matched.as_ref().map(|l| l.index).unwrap_or(0);
                g.partition_replication_lag
                    .with_label_values(&[&p, &follower.to_string()])
                    .set(last.saturating_sub(mi) as i64);
            }
        }
    }
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let m = crate::raft::raft_metrics(&state.raft);
    let g = &state.metrics;
    g.raft_term.set(m.current_term as i64);
    g.raft_leader
        .set(m.current_leader.map(|l| l as i64).unwrap_or(-1));
    g.raft_is_leader
        .set(i64::from(m.state == ServerState::Leader));
    g.raft_last_log_index
        .set(m.last_log_index.unwrap_or(0) as i64);
    g.raft_committed_index
        .set(m.local_committed.as_ref().map(|l| l.index).unwrap_or(0) as i64);
    g.raft_applied_index
        .set(m.last_applied.as_ref().map(|l| l.index).unwrap_or(0) as i64);
    g.raft_snapshot_index
        .set(m.snapshot.as_ref().map(|l| l.index).unwrap_or(0) as i64);
    g.kv_revision.set(state.store.revision() as i64);
    let (entries, bytes) = state.store.rows.usage();
    g.row_cache_entries.set(entries as i64);
    g.row_cache_bytes.set(bytes as i64);
    g.raft_replication_lag.reset();
    if let Some(rep) = &m.replication {
        let last = m.last_log_index.unwrap_or(0);
        for (id, matched) in rep {
            let mi = matched.as_ref().map(|l| l.index).unwrap_or(0);
            g.raft_replication_lag
                .with_label_values(&[&id.to_string()])
                .set(last.saturating_sub(mi) as i64);
        }
    }
    partition_metrics(&state);
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], g.render()).into_response()
}
