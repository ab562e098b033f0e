//! Which Raft group serves a request: the cluster's own group (one partition),
//! or the group of the key's partition (`crate::placement`), and whether that
//! group is on this node. A request for a partition this node does not host is
//! relayed as HTTP to a node that hosts it (marked `x-kv-routed-by`); that node
//! serves it as its own client's request (handing a write to the group's
//! leader over the peer port if it follows), so any node answers any key. A
//! node that receives a routed request for a partition it does not host says
//! so (`wrong_node`, with its map's epoch) instead of passing it on: one of the
//! two maps is stale, and the client's retry finds the partition once it has
//! moved. Nothing is ever applied to another partition's group: the data of
//! partition `p` exists only in group `p + 1`.

use std::sync::Arc;

use axum::http::HeaderValue;
use axum::response::Response;

use crate::api::ApiError;
use crate::api::AppState;
use crate::api::Raw;
use crate::command::NodeId;
use crate::group::CLUSTER_GROUP;
use crate::group::GroupId;
use crate::group::partition_group;
use crate::placement::PartitionId;
use crate::placement::hash::partition_of;
use crate::raft::KvRaft;
use crate::route::forward::WriteForwarder;
use crate::route::read_index::FollowerReads;
use crate::store::Store;

/// The partition a response was served by (absent in a cluster of one partition).
pub const PARTITION: &str = "x-kv-partition";
/// Marks a request relayed to a node that hosts the key's partition (its value
/// is the relaying node's id).
pub const ROUTED_BY: &str = "x-kv-routed-by";

/// The group a request is served by on this node.
pub struct Target {
    pub group: GroupId,
    /// `None` in a cluster of one partition.
    pub partition: Option<PartitionId>,
    pub raft: KvRaft,
    pub store: Store,
    pub writes: Arc<WriteForwarder>,
    pub reads: Arc<FollowerReads>,
}

impl Target {
    /// The cluster's own group.
    pub fn cluster(state: &AppState) -> Target {
        Target {
            group: CLUSTER_GROUP,
            partition: None,
            raft: state.raft.clone(),
            store: state.store.clone(),
            writes: state.writes.clone(),
            reads: state.follower_reads.clone(),
        }
    }

    /// Whether the group holds a membership on this node.
    pub fn initialized(&self) -> bool {
        crate::raft::initialized(&self.raft)
    }

    /// `resp` with the partition that served it named.
    pub fn tag(&self, mut resp: Response) -> Response {
        if let Some(p) = self.partition {
            resp.headers_mut().insert(PARTITION, HeaderValue::from(p));
        }
        resp
    }
}

/// Where a request is served.
pub enum Located {
    /// By this node, in this group.
    Here(Target),
    /// By a node that hosts the partition: its answer.
    Relayed(Response),
}

/// Whether the cluster is split into partitions (its map is placed), or is to be
/// (then nothing is served until it is: a key written to the cluster group now
/// would vanish behind the map).
pub(crate) fn placement(
    state: &AppState,
) -> Result<Option<Arc<crate::placement::map::PlacementMap>>, ApiError> {
    let map = state.store.placement();
    if map.epoch > 0 {
        return Ok(Some(map));
    }
    if state.config.partitions > 1 && state.store.revision() == 0 {
        return Err(ApiError::Unavailable {
            code: "placement_pending",
            message: format!(
                "the {} partitions are not placed yet: they are once {} nodes are members (initial_nodes, at least replication_factor)",
                state.config.partitions,
                state
                    .config
                    .initial_nodes
                    .max(state.config.replication_factor)
            ),
            retry: true,
        });
    }
    Ok(None)
}

/// The group of `key`: here, or relayed to a node hosting its partition.
pub async fn locate(state: &AppState, raw: &Raw, key: &str) -> Result<Located, ApiError> {
    let Some(map) = placement(state)? else {
        return Ok(Located::Here(Target::cluster(state)));
    };
    let p = partition_of(key.as_bytes(), map.partitions);
    locate_partition(state, raw, &map, p).await
}

/// The group of a request touching `keys` (a transaction): they must all be in
/// one partition (atomic transactions across partitions are a later step), then
/// as [`locate`]; no keys at all are served by the group of the empty key.
pub async fn locate_keys(state: &AppState, raw: &Raw, keys: &[&str]) -> Result<Located, ApiError> {
    let Some(map) = placement(state)? else {
        return Ok(Located::Here(Target::cluster(state)));
    };
    let parts: std::collections::BTreeSet<PartitionId> = keys
        .iter()
        .map(|k| partition_of(k.as_bytes(), map.partitions))
        .collect();
    if parts.len() > 1 {
        return Err(ApiError::bad(
            "cross_shard_txn",
            format!(
                "the transaction's keys are in partitions {parts:?}; a transaction must stay within one partition (GET /v1/partitions/key?key= tells where a key is)"
            ),
        ));
    }
    let p = parts
        .into_iter()
        .next()
        .unwrap_or_else(|| partition_of(b"", map.partitions));
    locate_partition(state, raw, &map, p).await
}

/// The group of partition `p` under `map`: here, or relayed to a node hosting it.
pub async fn locate_partition(
    state: &AppState,
    raw: &Raw,
    map: &crate::placement::map::PlacementMap,
    p: PartitionId,
) -> Result<Located, ApiError> {
    let hosts: Vec<NodeId> = map.of(p).map(|a| a.hosts.clone()).unwrap_or_default();
    if !map.of(p).is_some_and(|a| a.formed) {
        return Err(ApiError::Unavailable {
            code: "partition_forming",
            message: format!("partition {p} is being formed; retry shortly"),
            retry: true,
        });
    }
    if let Some(t) = here(state, raw, map, p) {
        return Ok(Located::Here(t));
    }
    if routed(raw) {
        return Err(wrong_node(state, map, p));
    }
    let mut last = None;
    for host in hosts.iter().filter(|h| **h != state.id) {
        match super::leader::relay_to(state, raw, *host, ROUTED_BY).await {
            Ok(resp) => return Ok(Located::Relayed(resp)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or(ApiError::Unavailable {
        code: "no_host",
        message: format!("no node hosting partition {p} is reachable"),
        retry: true,
    }))
}

/// Whether another node routed `raw` here (or forwarded it to this node as
/// the leader): it is served here or refused, never passed on again.
pub(crate) fn routed(raw: &Raw) -> bool {
    raw.headers.contains_key(ROUTED_BY) || raw.forwarded()
}

/// Partition `p`'s group on this node, if it serves `raw` here: it hosts the
/// partition under `map`, and votes in its group (a replica still being copied
/// here serves nothing while a voter can: a stale read of it could miss keys
/// written long ago; the chaos campaign's partitioned mode, seed 200, listed a
/// learner's partial copy) or the request was routed here (served regardless,
/// rather than passed on again).
pub(crate) fn here(
    state: &AppState,
    raw: &Raw,
    map: &crate::placement::map::PlacementMap,
    p: PartitionId,
) -> Option<Target> {
    let id = partition_group(p);
    let hosted = map.of(p).is_some_and(|a| a.hosts.contains(&state.id));
    let g = state
        .groups
        .get(id)
        .filter(|g| hosted && (routed(raw) || voter_here(state, g)))?;
    Some(Target {
        group: id,
        partition: Some(p),
        raft: g.raft.clone(),
        store: g.store.clone(),
        writes: g.writes.clone(),
        reads: g.reads.clone(),
    })
}

/// The refusal of a routed request for partition `p`, which this node does not
/// host: one of the two maps is stale, and the client's retry finds it.
pub(crate) fn wrong_node(
    state: &AppState,
    map: &crate::placement::map::PlacementMap,
    p: PartitionId,
) -> ApiError {
    let hosts: Vec<NodeId> = map.of(p).map(|a| a.hosts.clone()).unwrap_or_default();
    ApiError::Unavailable {
        code: "wrong_node",
        message: format!(
            "node {} does not host partition {p} at placement epoch {} (its hosts: {hosts:?}); retry",
            state.id, map.epoch
        ),
        retry: true,
    }
}

/// Whether this node's replica of `g` votes: only then does it serve a client
/// that could be served elsewhere (see [`locate_partition`]).
pub(crate) fn voter_here(state: &AppState, g: &crate::group::Group) -> bool {
    crate::raft::raft_metrics(&g.raft)
        .membership_config
        .membership()
        .voter_ids()
        .any(|v| v == state.id)
}
