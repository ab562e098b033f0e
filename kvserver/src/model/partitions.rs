//! The API's data types of partitioned clusters: `GET /v1/partitions`,
//! `GET /v1/partitions/key` and a node's share in `GET /status`.

use serde::Deserialize;
use serde::Serialize;
use utoipa::IntoParams;
use utoipa::ToSchema;

use super::NodeId;

/// One partition in `GET /v1/partitions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PartitionInfo {
    pub partition: u32,
    /// Its Raft group (0 in a cluster of one partition).
    pub group: u64,
    /// First and last XXH3-64 hash of the keys it holds, inclusive, as 16 hex digits.
    pub hash_first: String,
    pub hash_last: String,
    /// The nodes that host it (its leader first, when known).
    pub nodes: Vec<NodeId>,
    pub leader_id: Option<NodeId>,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// Whether its group was formed (placement, docs/partitions.md).
    pub formed: bool,
    /// Its revision (each partition counts its own), as its leader reports it.
    pub revision: Option<u64>,
    /// Keys it holds, as last counted on its leader (every few seconds; absent
    /// until counted, and in a cluster of one partition).
    #[serde(default)]
    pub keys: Option<u64>,
    /// Bytes of those keys and their values, counted with `keys`.
    #[serde(default)]
    pub bytes: Option<u64>,
}

/// Response of `GET /v1/partitions`: how the key space is split and where each
/// part lives, as the answering node knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PartitionsInfo {
    pub node_id: NodeId,
    /// The placement map's epoch (0: one partition, no map).
    pub epoch: u64,
    pub partitions: u32,
    pub replication_factor: u32,
    pub items: Vec<PartitionInfo>,
}

/// Query of `GET /v1/partitions/key`.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct KeyQuery {
    /// The key to place.
    pub key: String,
}

/// Response of `GET /v1/partitions/key`: where a key lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeyPlacement {
    pub key: String,
    /// Its XXH3-64 hash, 16 hex digits.
    pub hash: String,
    pub partition: u32,
    pub group: u64,
    /// The nodes that hold it, its partition's leader first when known.
    pub nodes: Vec<NodeId>,
    pub leader_id: Option<NodeId>,
    pub epoch: u64,
}

/// A node's share of a partitioned cluster (`GET /status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodePartitions {
    /// Partitions the cluster has.
    pub count: u32,
    /// Partitions this node holds a replica of, ascending.
    pub hosted: Vec<u32>,
    /// Partitions this node leads, ascending.
    pub led: Vec<u32>,
    /// Partitions whose replica here holds nothing yet: a copy about to start, or
    /// a replica whose data was lost, waiting to be replaced (ascending).
    pub empty: Vec<u32>,
    /// Keys in the replicas this node holds, as last counted.
    pub local_keys: u64,
    /// Bytes of those keys and their values.
    pub local_bytes: u64,
    /// Members of the cluster.
    pub cluster_nodes: usize,
}
