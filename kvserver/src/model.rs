//! The HTTP API's data types: request bodies, query parameters and responses.
//!
//! Shared by the server (which serializes them and documents them in the
//! OpenAPI document) and by the typed [`crate::client`] (which deserializes
//! them), so both sides of the wire use one definition. This module depends on
//! serde and utoipa only: it builds without the Raft and storage stacks.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::Serialize;
use utoipa::IntoParams;
use utoipa::ToSchema;

mod partitions;
mod watch;

pub use self::partitions::*;
pub use self::watch::*;

/// Node id (the StatefulSet ordinal in Kubernetes).
pub type NodeId = u64;

/// A stored key with its etcd-style revision bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeyValue {
    pub key: String,
    /// Omitted in keys-only listings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Revision at which the key was (last) created.
    pub create_revision: u64,
    /// Revision of the last modification.
    pub mod_revision: u64,
    /// Number of modifications since creation (1 after create).
    pub version: u64,
    /// Absolute expiry time in unix milliseconds, if the key has a TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// Unix milliseconds of creation.
    pub created_at_ms: u64,
    /// Unix milliseconds of the last modification.
    pub updated_at_ms: u64,
}

/// Read consistency.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// Confirmed with a quorum (ReadIndex) and served by the leader.
    #[default]
    Linearizable,
    /// Served from the receiving node's applied state without coordination; may lag.
    Stale,
}

/// Query of single-key reads.
#[derive(Debug, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReadQuery {
    /// `linearizable` (default) or `stale`.
    #[serde(default)]
    pub consistency: Consistency,
}

/// Body of `PUT /v1/kv/{key}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"value": "postgres://db:5432", "ttl_seconds": 60}))]
pub struct PutRequest {
    /// New value (UTF-8 string, up to the configured limit, 1 MiB by default).
    pub value: String,
    /// Time to live in seconds; the key disappears after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    /// Compare-and-set: the key's current `mod_revision` must equal this; 0 = the key must not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_revision: Option<u64>,
}

/// Query of `DELETE /v1/kv/{key}`.
#[derive(Debug, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Compare-and-delete: the key's current `mod_revision` must equal this.
    #[serde(default)]
    pub if_revision: Option<u64>,
}

/// Query of `GET /v1/kv` (listing).
#[derive(Debug, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only keys starting with this (default: all keys).
    #[serde(default)]
    pub prefix: String,
    /// Continue after this key (the `next_start_after` of the previous page).
    #[serde(default)]
    pub start_after: Option<String>,
    /// Page size, 1..=10000 (default 1000).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Leave values out.
    #[serde(default)]
    pub keys_only: bool,
    /// `linearizable` (default) or `stale`.
    #[serde(default)]
    pub consistency: Consistency,
    /// Only this partition's keys (0-based). With more than one partition a
    /// listing without it spans every partition, merged in key order.
    #[serde(default)]
    pub partition: Option<u32>,
}

/// Query of `DELETE /v1/kv` (prefix delete).
#[derive(Debug, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PrefixDeleteQuery {
    /// Delete every key starting with this (required, non-empty).
    pub prefix: Option<String>,
    /// Only in this partition (0-based). With more than one partition a prefix
    /// delete without it deletes in every partition, each atomically.
    #[serde(default)]
    pub partition: Option<u32>,
}

/// Query of `POST /v1/batch/get`.
#[derive(Debug, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct BatchGetQuery {
    /// The keys all belong to this partition (0-based); refused if one does
    /// not. Without it, keys are grouped by partition and each group is read
    /// from its partition.
    #[serde(default)]
    pub partition: Option<u32>,
}

/// Body of `POST /v1/batch/get`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"keys": ["app/db/url", "app/feature/x"]}))]
pub struct BatchGetRequest {
    /// 1..=10000 keys; a key named twice is answered once. The keys found may
    /// hold at most `limits.max_response_bytes` (else 413 `response_too_large`).
    pub keys: Vec<String>,
    #[serde(default)]
    pub consistency: Consistency,
}

/// Response of `GET /v1/kv/{key}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GetResponse {
    /// Cluster revision of the state read.
    pub revision: u64,
    /// Node that served the read.
    pub node_id: NodeId,
    pub kv: KeyValue,
}

/// Response of `PUT /v1/kv/{key}` (201 when created, 200 when replaced).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PutResponse {
    pub revision: u64,
    pub node_id: NodeId,
    pub created: bool,
    pub kv: KeyValue,
    pub prev_kv: Option<KeyValue>,
}

/// Response of `DELETE /v1/kv/{key}` and `DELETE /v1/kv?prefix=`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeleteResponse {
    pub revision: u64,
    pub node_id: NodeId,
    /// Keys deleted.
    pub deleted: u64,
    /// The key before deletion (single-key delete only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_kv: Option<KeyValue>,
    /// A prefix delete across partitions: each partition's revision after its
    /// delete (`revision` is then the highest of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revisions: Option<std::collections::BTreeMap<u32, u64>>,
}

/// Response of `GET /v1/kv`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ListResponse {
    pub revision: u64,
    pub node_id: NodeId,
    pub count: usize,
    pub kvs: Vec<KeyValue>,
    /// More keys follow; pass `next_start_after` as `start_after`.
    pub more: bool,
    pub next_start_after: Option<String>,
    /// A listing across partitions: the revision each partition was read at
    /// (`revision` is then the highest of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revisions: Option<std::collections::BTreeMap<u32, u64>>,
}

/// Response of `POST /v1/batch/get`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchGetResponse {
    pub revision: u64,
    pub node_id: NodeId,
    /// The keys found, each once, in the order first asked for.
    pub kvs: Vec<KeyValue>,
    /// Requested keys that do not exist, each once.
    pub missing: Vec<String>,
    /// Keys of several partitions: the revision each partition was read at
    /// (`revision` is then the highest of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revisions: Option<std::collections::BTreeMap<u32, u64>>,
}

/// Where a node can be reached.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberSpec {
    /// `host:port` of the client API.
    pub api_addr: String,
    /// `host:port` of the Raft peer port.
    pub raft_addr: String,
}

/// Body of `POST /v1/cluster/init` (optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({}))]
pub struct InitRequest {
    /// This node's entry (its id → the addresses to advertise). Default: this node with its
    /// configured addresses. Only this node may be named: the others join as learners and
    /// are promoted, because an empty store never starts as a voter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<BTreeMap<NodeId, MemberSpec>>,
}

/// Body of `POST /v1/cluster/learners`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"id": 3, "api_addr": "orders-3.orders-peers.shop.svc.cluster.local:8080", "raft_addr": "orders-3.orders-peers.shop.svc.cluster.local:8081", "wait": false}))]
pub struct LearnerRequest {
    pub id: NodeId,
    pub api_addr: String,
    pub raft_addr: String,
    /// Wait until the learner has caught up with the leader's log.
    #[serde(default)]
    pub wait: bool,
}

/// Body of `POST /v1/cluster/membership`: exactly one of the lists, non-empty.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"add_voters": [3]}))]
pub struct MembershipRequest {
    /// Promote these learners to voters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add_voters: Vec<NodeId>,
    /// Remove these voters from the cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_voters: Vec<NodeId>,
    /// Remove these nodes (learners or voters) from the cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_nodes: Vec<NodeId>,
    /// With `remove_voters`: keep them as learners.
    #[serde(default)]
    pub retain: bool,
}

/// Body of `POST /v1/cluster/transfer-leader`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"to": 2}))]
pub struct TransferRequest {
    /// The voter that should lead.
    pub to: NodeId,
}

/// One member as seen by the answering node.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MemberInfo {
    pub id: NodeId,
    /// `voter` or `learner`.
    pub role: String,
    pub api_addr: String,
    pub raft_addr: String,
    /// Last log index known replicated to it (leader's view only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched_index: Option<u64>,
    /// Entries behind the leader's last log (leader's view only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
}

/// Response of `GET /v1/cluster`: the answering node's view.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClusterInfo {
    pub cluster_id: String,
    pub node_id: NodeId,
    pub initialized: bool,
    /// `leader`, `follower`, `candidate`, `learner`, `shutdown` or `uninitialized`.
    pub role: String,
    pub term: u64,
    pub leader_id: Option<NodeId>,
    pub leader: Option<MemberSpec>,
    pub last_log_index: Option<u64>,
    pub committed_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    pub revision: u64,
    /// True while a joint (two-phase) membership change is in progress.
    pub joint: bool,
    pub membership_log_index: Option<u64>,
    pub members: Vec<MemberInfo>,
    /// True when this node's store is empty but a peer counts it as a voter: its data
    /// was lost (e.g. a wiped volume). It takes no part in Raft until it is removed
    /// from the voters and added back as a learner.
    #[serde(default)]
    pub lost_data: bool,
}

/// Response of the cluster-changing calls. `changed: false` means the requested
/// state was already in place (calls are idempotent).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChangeResponse {
    pub changed: bool,
    /// The cluster after the change (init, learners, membership).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterInfo>,
    /// The leader after a transfer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_id: Option<NodeId>,
}

/// Response of `GET /healthz`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HealthResponse {
    pub status: String,
    pub node_id: NodeId,
}

/// Response of `GET /readyz` (200 when ready, 503 otherwise).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReadyResponse {
    pub ready: bool,
    pub node_id: NodeId,
    /// Why the node is not ready (empty when ready).
    pub reasons: Vec<String>,
    /// What needs attention without making the node unready, such as certificate
    /// files that failed to reload while the previous certificate still serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Response of `GET /status`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StatusResponse {
    pub version: String,
    pub node_id: NodeId,
    pub cluster_id: String,
    pub role: String,
    pub term: u64,
    pub leader_id: Option<NodeId>,
    /// Leader: since a quorum last acknowledged it; others: since the last append from a leader.
    pub millis_since_heartbeat: Option<u64>,
    pub uptime_seconds: u64,
    pub revision: u64,
    /// Live keys stored on this node.
    pub keys: u64,
    /// `sqlite` or `postgres`.
    pub storage: String,
    pub applied_index: Option<u64>,
    pub api_addr: String,
    pub raft_addr: String,
    pub timestamp_ms: u64,
    /// With more than one partition: what this node holds of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<NodePartitions>,
}

/// The JSON shape of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// `error` of [`ErrorBody`]: a stable `code`, a human `message`, and details that
/// depend on the code (`current` for `revision_mismatch`, `oldest_revision` for
/// `compacted`, `leader_hint` for `no_leader`, `limit` for `value_too_large`, ...).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// What a transaction comparison looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CompareTarget {
    Value,
    Version,
    CreateRevision,
    ModRevision,
    Exists,
}

/// One comparison: `<target of key> <op> <value>`. A missing key has no value
/// (value comparisons are false) and version/revisions 0.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Compare {
    pub key: String,
    pub target: CompareTarget,
    /// `==` (default), `!=`, `<`, `>`; `exists` takes only `==` / `!=`.
    #[serde(default = "default_op")]
    pub op: String,
    /// A string for `value`, a non-negative integer for the counters, a bool for `exists`.
    #[schema(value_type = Object)]
    pub value: serde_json::Value,
}

fn default_op() -> String {
    "==".into()
}

/// One operation of a transaction branch.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Operation {
    Put {
        key: String,
        value: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_seconds: Option<u64>,
    },
    Delete {
        key: String,
    },
    Get {
        key: String,
    },
}

/// Body of `POST /v1/txn`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "compare": [{"key": "lock", "target": "exists", "value": false}],
    "success": [{"op": "put", "key": "lock", "value": "me", "ttl_seconds": 30}],
    "failure": [{"op": "get", "key": "lock"}]
}))]
pub struct TxnRequest {
    /// All must hold for `success` to run; otherwise `failure` runs. Empty = success.
    #[serde(default)]
    pub compare: Vec<Compare>,
    #[serde(default)]
    pub success: Vec<Operation>,
    #[serde(default)]
    pub failure: Vec<Operation>,
}

/// The result of one transaction operation, in branch order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OperationResult {
    Put {
        created: bool,
        kv: KeyValue,
        prev_kv: Option<KeyValue>,
    },
    Delete {
        deleted: u64,
        prev_kv: Option<KeyValue>,
    },
    Get {
        kv: Option<KeyValue>,
    },
}

/// Response of `POST /v1/txn`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TxnResponse {
    /// Cluster revision after the transaction (unchanged if it wrote nothing).
    pub revision: u64,
    pub node_id: NodeId,
    /// True when every comparison held and `success` ran.
    pub succeeded: bool,
    pub results: Vec<OperationResult>,
}

/// Query of `GET /v1/backup`.
#[derive(Debug, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct BackupQuery {
    /// Partitioned clusters: back up only this partition (a backup of one
    /// partition, format 1, at the partition's revision).
    #[serde(default)]
    pub partition: Option<u32>,
}
