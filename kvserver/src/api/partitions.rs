//! The partition endpoints of the ClusterKit seed: `GET /v1/partitions` (how
//! the key space is split and where each partition lives) and
//! `GET /v1/partitions/key?key=` (which partition and nodes hold a key, its
//! leader first). Both answer from the placement map this node applied and from
//! what the members report of their groups (their leaders, voters and
//! revisions), so any node answers for every partition. A cluster of one
//! partition shows one partition, the cluster's own group, covering every key.
//!
//! Who may call: any authenticated caller (`crate::api::auth`), as for
//! `GET /v1/cluster`: they name nodes and hash ranges, never keys or values
//! (the key lookup only hashes the key the caller sent).

use axum::Json;
use axum::extract::State;

use super::ApiError;
use super::AppState;
use super::Q;
use super::kv::NoParams;
use crate::command::NodeId;
use crate::group::CLUSTER_GROUP;
use crate::group::GroupReport;
use crate::group::partition_group;
use crate::model::KeyPlacement;
use crate::model::KeyQuery;
use crate::model::PartitionInfo;
use crate::model::PartitionsInfo;
use crate::placement::hash;

fn hex(h: u64) -> String {
    format!("{h:016x}")
}

/// The view of partition `p` (group `group`, hosted by `hosts`) from `reports`:
/// the leader's report decides, else any host's.
fn partition_info(
    p: u32,
    partitions: u32,
    group: u64,
    hosts: &[NodeId],
    formed: bool,
    reports: &[GroupReport],
) -> PartitionInfo {
    let mine: Vec<&GroupReport> = reports.iter().filter(|r| r.group == group).collect();
    let best = mine
        .iter()
        .find(|r| r.leader == Some(r.node))
        .or_else(|| mine.iter().max_by_key(|r| r.term))
        .copied();
    let leader = best.and_then(|r| r.leader);
    let mut nodes: Vec<NodeId> = leader.into_iter().collect();
    nodes.extend(hosts.iter().filter(|n| Some(**n) != leader));
    let (first, last) = hash::hash_range(p, partitions);
    PartitionInfo {
        partition: p,
        group,
        hash_first: hex(first),
        hash_last: hex(last),
        nodes,
        leader_id: leader,
        voters: best.map(|r| r.voters.clone()).unwrap_or_default(),
        learners: best.map(|r| r.learners.clone()).unwrap_or_default(),
        formed,
        revision: best
            .filter(|r| r.leader == Some(r.node))
            .and_then(|r| r.revision),
        // As last counted on the leader (or, without one, on a replica).
        keys: best.and_then(|r| r.keys),
        bytes: best.and_then(|r| r.bytes),
    }
}

/// Every partition as this node knows it (asking the members for their groups).
async fn partitions(state: &AppState) -> PartitionsInfo {
    let map = state.store.placement();
    let reports = state.groups.cluster_reports().await;
    if map.epoch == 0 {
        let hosts: Vec<NodeId> = state.groups.members().into_keys().collect();
        let mut one = partition_info(0, 1, CLUSTER_GROUP, &hosts, true, &reports);
        // The cluster's group is this node's own: its revision is known here.
        if one.revision.is_none() && one.leader_id == Some(state.id) {
            one.revision = Some(state.store.revision());
        }
        return PartitionsInfo {
            node_id: state.id,
            epoch: 0,
            partitions: 1,
            replication_factor: hosts.len() as u32,
            items: vec![one],
        };
    }
    let items = map
        .assigned
        .iter()
        .enumerate()
        .map(|(p, a)| {
            let p = p as u32;
            partition_info(
                p,
                map.partitions,
                partition_group(p),
                &a.hosts,
                a.formed,
                &reports,
            )
        })
        .collect();
    PartitionsInfo {
        node_id: state.id,
        epoch: map.epoch,
        partitions: map.partitions,
        replication_factor: map.replication_factor,
        items,
    }
}

/// `GET /v1/partitions`: every partition, its hash range, nodes and leader.
#[utoipa::path(
    get, path = "/v1/partitions", tag = "partitions",
    responses(
        (status = 200, description = "The partitions", body = PartitionsInfo),
        (status = 400, description = "Unknown parameter", body = crate::model::ErrorBody),
        (status = 503, description = "Not initialized", body = crate::model::ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    Q(_params): Q<NoParams>,
) -> Result<Json<PartitionsInfo>, ApiError> {
    if !state.initialized() {
        return Err(ApiError::NotInitialized);
    }
    Ok(Json(partitions(&state).await))
}

/// `GET /v1/partitions/key?key=`: the partition and nodes of a key, leader first.
#[utoipa::path(
    get, path = "/v1/partitions/key", tag = "partitions",
    params(KeyQuery),
    responses(
        (status = 200, description = "Where the key lives", body = KeyPlacement),
        (status = 400, description = "Missing or invalid key, or an unknown parameter", body = crate::model::ErrorBody),
        (status = 503, description = "Not initialized", body = crate::model::ErrorBody),
    )
)]
pub async fn key(
    State(state): State<AppState>,
    Q(q): Q<KeyQuery>,
) -> Result<Json<KeyPlacement>, ApiError> {
    super::kv::validate_key(&q.key)?;
    if !state.initialized() {
        return Err(ApiError::NotInitialized);
    }
    let all = partitions(&state).await;
    let h = hash::key_hash(q.key.as_bytes());
    let p = hash::partition_of_hash(h, all.partitions);
    let info = all
        .items
        .into_iter()
        .find(|i| i.partition == p)
        .ok_or_else(|| ApiError::Unavailable {
            code: "no_placement",
            message: format!("partition {p} is not in this node's placement map"),
            retry: true,
        })?;
    Ok(Json(KeyPlacement {
        key: q.key,
        hash: hex(h),
        partition: p,
        group: info.group,
        nodes: info.nodes,
        leader_id: info.leader_id,
        epoch: all.epoch,
    }))
}
