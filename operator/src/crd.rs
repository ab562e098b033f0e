//! The `KVCluster` custom resource (`kvcluster.io/v1alpha1`): what users
//! write (spec) and what the operator reports (status).
//!
//! Every field carries a doc comment: kube/schemars turn them into the
//! OpenAPI descriptions `kubectl explain kvcluster.spec...` prints. Defaults
//! and bounds live in the schema too, so the API server fills and checks them.

// Several printcolumn(...) entries repeat `type_ = ...`, which clippy takes for duplicates.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::api::core::v1::Affinity;
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::api::core::v1::TopologySpreadConstraint;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::Deserialize;
use serde::Serialize;
use std::collections::BTreeMap;

/// Default kvserver image; the operator's own version.
pub const DEFAULT_IMAGE: &str = concat!("docker.io/kvcluster/kvserver:", env!("CARGO_PKG_VERSION"));

fn default_replicas() -> i32 {
    3
}
fn default_partitions() -> i32 {
    1
}
fn default_replication_factor() -> i32 {
    3
}
fn default_image() -> String {
    DEFAULT_IMAGE.to_string()
}
fn default_pull_policy() -> String {
    "IfNotPresent".into()
}
fn default_size() -> String {
    "1Gi".into()
}
fn default_true() -> bool {
    true
}
fn default_secret_key() -> String {
    "url".into()
}

/// A replicated, strongly consistent key-value store: a Raft group of kvserver pods.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "kvcluster.io",
    version = "v1alpha1",
    kind = "KVCluster",
    doc = "A replicated, strongly consistent key-value store: a Raft group of kvserver pods managed by kvcluster-operator.",
    plural = "kvclusters",
    singular = "kvcluster",
    shortname = "kvc",
    namespaced,
    status = "KVClusterStatus",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".spec.replicas",
        description = "Desired members"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Ready voting members"
    ),
    printcolumn(
        name = "Leader",
        type_ = "integer",
        json_path = ".status.leader",
        description = "Node id of the Raft leader"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct KVClusterSpec {
    /// Number of voting members (Raft nodes). Odd sizes tolerate the most failures per node:
    /// 3 survives 1 down, 5 survives 2. Scaling changes membership one node at a time and is
    /// refused (condition ScalingBlocked) when it would leave fewer healthy voters than a quorum.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 9))]
    pub replicas: i32,
    /// Partitions the keyspace is split into, each its own Raft group replicated on
    /// `replicationFactor` pods and placed, moved and rebalanced by kvserver as pods
    /// come and go (docs/partitions.md). 1 (default): one group on every pod.
    /// Fixed when the cluster is created: a different count later is refused
    /// (condition Degraded, reason PartitionsFixed) and the cluster keeps its own.
    #[serde(default = "default_partitions")]
    #[schemars(range(min = 1, max = 1024))]
    pub partitions: i32,
    /// Replicas of each partition when `partitions` is above 1: each lives on this
    /// many distinct pods (at most `replicas`). Default 3.
    #[serde(default = "default_replication_factor")]
    #[schemars(range(min = 1, max = 9))]
    pub replication_factor: i32,
    /// kvserver container image.
    #[serde(default = "default_image")]
    pub image: String,
    /// Image pull policy: Always, IfNotPresent or Never.
    #[serde(default = "default_pull_policy")]
    pub image_pull_policy: String,
    /// CPU and memory requests and limits of each kvserver container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Where each node keeps its Raft log and state.
    #[serde(default)]
    pub storage: StorageSpec,
    /// Raft timing and log compaction; defaults suit most clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft: Option<RaftSpec>,
    /// Scheduling and metadata overrides for the kvserver pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodSpecOverrides>,
    /// The client Service (clients connect to `<name>.<namespace>.svc:8080`).
    #[serde(default)]
    pub service: ServiceSpec,
    /// Prometheus scraping of `/metrics` on the client port.
    #[serde(default)]
    pub metrics: MetricsSpec,
    /// TLS of both ports: mutual TLS between members (always), HTTPS for clients
    /// (unless disabled). Certificates are renewed without restarting pods.
    #[serde(default)]
    pub tls: TlsSpec,
    /// Who may call the client API: every request but the health probes needs a
    /// credential, and its role and key prefixes decide what it may do. Enabled
    /// by default; the operator holds an admin token of its own.
    #[serde(default)]
    pub auth: AuthSpec,
    /// Network fencing: a NetworkPolicy admits the peer port only from the
    /// cluster's own pods, and the client port from the operator and the clients
    /// listed here.
    #[serde(default)]
    pub network: NetworkSpec,
    /// Backups: full backups on a schedule and on demand (`KVClusterBackup`), and
    /// continuous backup for point-in-time restore, to a volume or S3-compatible
    /// storage (docs/backup.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<crate::backup::crd::BackupSpec>,
    /// Form this new cluster from a backup (at a chosen revision or time) instead of
    /// empty; refused for a cluster that has data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<crate::backup::crd::RestoreSpec>,
    /// Forced recovery from permanent quorum loss: form a new cluster from one
    /// surviving member (docs/backup.md). Never automatic; leave it in place after
    /// the recovery completed (the cluster's id depends on it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<crate::recovery::RecoverySpec>,
}

/// Whether the client API requires credentials.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Every request but `/healthz`, `/readyz`, `/metrics` and `/v1/openapi.json`
    /// needs a bearer token (or a bound client certificate).
    #[default]
    Enabled,
    /// Anyone who reaches the client port is an admin (development only).
    Disabled,
}

/// A role a principal holds.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AuthRole {
    /// Get, list, batch get, watch; transactions of compares and gets only.
    Read,
    /// `read` plus put, delete, prefix delete, any transaction.
    Readwrite,
    /// `readwrite` plus the cluster calls.
    Admin,
}

/// A client certificate bound to a role.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateBinding {
    /// The certificate's common name, or one of its DNS or URI SANs.
    pub subject: String,
    /// The role it grants.
    pub role: AuthRole,
    /// Keys the role is limited to (those starting with one of these); empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefixes: Vec<String>,
}

/// Authentication and authorization of clients.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// `enabled` (default) or `disabled`.
    #[serde(default)]
    pub mode: AuthMode,
    /// A Secret of bearer tokens, key `tokens.yaml`:
    /// `tokens: [{name, token, role, prefixes}]` (roles `read`, `readwrite`,
    /// `admin`; `prefixes` optional). Changes reach every member within seconds,
    /// without restarting pods: add a new token, move clients, drop the old one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_name: Option<String>,
    /// Client certificates bound to roles. Needs client TLS (`spec.tls.client`
    /// not `disabled`); members then ask clients for a certificate (optional) and
    /// verify it against the client port's CA.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_certificates: Vec<CertificateBinding>,
    /// Kubernetes ServiceAccounts as clients: an in-cluster client sends the
    /// token its pod gets from a projected `serviceAccountToken` volume issued
    /// for this cluster's audience, and needs no shared secret. Members check
    /// each token with a TokenReview (cached for a minute), so the operator
    /// lets their own ServiceAccount create TokenReviews (the ClusterRole
    /// `system:auth-delegator`, through the binding the operator's install
    /// provides) and projects a token for that into the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_accounts: Option<ServiceAccountAuthSpec>,
}

/// ServiceAccount tokens as credentials.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountAuthSpec {
    /// The audience clients' tokens must be issued for (the `audience` of
    /// their projected token). Default `kvcluster.io/<namespace>/<name>`: one
    /// per cluster, so a token sent to one cluster is worthless to another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Which ServiceAccounts hold which role; any other ServiceAccount's token
    /// is refused (401). A change rolls the pods (it is part of their configuration).
    #[serde(default)]
    pub bindings: Vec<ServiceAccountBinding>,
}

/// A ServiceAccount bound to a role.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountBinding {
    /// The ServiceAccount's name.
    pub name: String,
    /// Its namespace; default: the KVCluster's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The role it grants.
    pub role: AuthRole,
    /// Keys the role is limited to (those starting with one of these); empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefixes: Vec<String>,
}

/// Network fencing of the cluster's pods.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSpec {
    /// Create a NetworkPolicy for the pods (default true). It takes effect only
    /// where the cluster's network plugin enforces NetworkPolicy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<bool>,
    /// Who may reach the client port besides the operator: NetworkPolicy peers
    /// (pod and namespace selectors, IP blocks). Unset: everyone (with auth on,
    /// every request still needs a credential).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_clients: Option<Vec<k8s_openapi::api::networking::v1::NetworkPolicyPeer>>,
}

/// Where the certificates of a port come from.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// The operator keeps a CA for the cluster (Secret `<name>-tls-ca`) and issues
    /// and renews the certificates itself.
    #[default]
    Auto,
    /// From Secrets you provide (e.g. written by cert-manager): see the fields of each port.
    Secret,
    /// Plain HTTP. Client port only: the peer port is always mutual TLS.
    Disabled,
}

/// TLS settings.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// The peer port (member to member): mutual TLS, each member presenting a
    /// certificate that names its pod DNS name and node id.
    #[serde(default)]
    pub peer: PeerTlsSpec,
    /// The client port (clients, the operator, and members relaying to the leader).
    #[serde(default)]
    pub client: ClientTlsSpec,
}

/// TLS of the peer port.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerTlsSpec {
    /// `auto` (default): the operator's CA. `secret`: member certificates are issued
    /// from the CA in `caSecretName`. `disabled` is refused.
    #[serde(default)]
    pub mode: TlsMode,
    /// With `mode: secret`: a Secret holding the CA that signs member certificates,
    /// as `tls.crt` and `tls.key` (cert-manager's CA Certificate writes exactly that),
    /// and optionally `ca.crt`, a bundle members trust besides it (during a CA change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_name: Option<String>,
}

/// TLS of the client port.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientTlsSpec {
    /// `auto` (default): the operator's CA issues the serving certificate. `secret`:
    /// from `secretName`. `disabled`: plain HTTP (clients' traffic is readable by
    /// anyone on the pod network).
    #[serde(default)]
    pub mode: TlsMode,
    /// With `mode: secret`: a Secret with `tls.crt`, `tls.key` and `ca.crt` (a
    /// cert-manager Certificate's Secret). The certificate must name the client
    /// Service (`<name>.<namespace>.svc`) and `*.<name>-peers.<namespace>.svc.cluster.local`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
}

/// Storage backend.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Embedded SQLite file on each pod's PersistentVolume.
    #[default]
    Sqlite,
    /// A PostgreSQL database (one schema per node), URL from a Secret.
    Postgres,
}

/// What happens to a removed member's PersistentVolumeClaim on scale-in.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ReclaimPolicy {
    /// Delete it once the member has left the Raft group and its pod is gone, so a later
    /// scale-out starts that ordinal from an empty volume.
    #[default]
    Delete,
    /// Keep it (for inspection); a later scale-out wipes nothing, the member rejoins as a learner.
    Retain,
}

/// Storage settings.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// `sqlite` (default) or `postgres`.
    #[serde(default)]
    pub backend: Backend,
    /// Size of each pod's volume (SQLite data, snapshots), e.g. `1Gi`.
    #[serde(default = "default_size")]
    pub size: String,
    /// StorageClass of the volumes; empty = the cluster default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// What to do with a removed member's volume on scale-in.
    #[serde(default)]
    pub reclaim_policy: ReclaimPolicy,
    /// PostgreSQL connection, required when `backend: postgres`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresSpec>,
    /// Memory each pod spends on caching recently read and written keys, as a
    /// quantity (`64Mi` when unset, `0` turns the cache off). Point reads of cached
    /// keys skip the database; the cache counts against the pod's memory limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_size: Option<String>,
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            backend: Backend::Sqlite,
            size: default_size(),
            storage_class_name: None,
            reclaim_policy: ReclaimPolicy::Delete,
            postgres: None,
            cache_size: None,
        }
    }
}

/// PostgreSQL settings.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostgresSpec {
    /// Secret (same namespace) holding the connection URL, e.g.
    /// `postgres://kv:password@db:5432/kv?sslmode=require`.
    pub secret_name: String,
    /// Key of the URL in the Secret.
    #[serde(default = "default_secret_key")]
    pub secret_key: String,
    /// TLS to PostgreSQL: `disable`, `allow`, `prefer`, `require`, `verify-ca` or
    /// `verify-full`. Default: `verify-full` when `caSecretName` is set, otherwise
    /// what the URL says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_mode: Option<String>,
    /// Secret holding `ca.crt`, the CA bundle that signed the server's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_name: Option<String>,
    /// Secret holding `tls.crt` and `tls.key`, a client certificate for servers that
    /// authenticate clients by certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_secret_name: Option<String>,
}

/// Raft tuning.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RaftSpec {
    /// Leader heartbeat interval in milliseconds (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 10000))]
    pub heartbeat_interval_ms: Option<u64>,
    /// Lower bound of the election timeout in milliseconds (default 500); must exceed the heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 50, max = 60000))]
    pub election_timeout_min_ms: Option<u64>,
    /// Upper bound of the election timeout in milliseconds (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 120000))]
    pub election_timeout_max_ms: Option<u64>,
    /// Take a snapshot after this many log entries (default 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100))]
    pub snapshot_after_entries: Option<u64>,
}

/// Pod scheduling and metadata overrides.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodSpecOverrides {
    /// Affinity rules (by default the operator prefers spreading members over nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Tolerations of the kvserver pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Node selector of the kvserver pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Topology spread constraints of the kvserver pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// Extra pod labels (the operator's own labels win on conflict).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Extra pod annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The client Service.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Service type: ClusterIP (default), NodePort or LoadBalancer. LoadBalancer
    /// (reachable from outside the cluster) is refused unless client TLS and auth
    /// are both on.
    #[serde(default = "default_service_type", rename = "type")]
    pub type_: String,
    /// Extra Service annotations (e.g. for a cloud load balancer).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

fn default_service_type() -> String {
    "ClusterIP".into()
}

impl Default for ServiceSpec {
    fn default() -> Self {
        Self {
            type_: default_service_type(),
            annotations: BTreeMap::new(),
        }
    }
}

/// Metrics settings.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricsSpec {
    /// Annotate pods for Prometheus scraping of `/metrics` (default true).
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for MetricsSpec {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// Observed state, written by the operator.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KVClusterStatus {
    /// The spec generation this status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pending, Bootstrapping, Running, Scaling, Degraded or Blocked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Current voting members (the scale subresource's status replicas).
    #[serde(default)]
    pub replicas: i32,
    /// Voting members whose pod is ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Node id of the current Raft leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<i64>,
    /// Current Raft term.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<i64>,
    /// Label selector of the pods (for the scale subresource and HPA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Raft members as the leader sees them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatus>,
    /// The membership change in flight, if any; a restarted operator resumes it from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<MembershipOperation>,
    /// Available, Progressing, Degraded, ScalingBlocked, BackupFailing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Backups, as the backup agent reports them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<crate::backup::crd::BackupStatus>,
    /// The restore of `spec.restore`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<crate::backup::crd::RestoreStatus>,
    /// The forced recovery of `spec.recovery`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<crate::recovery::RecoveryStatus>,
    /// The partitions, when `spec.partitions` is above 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<crate::partitions::PartitionsStatus>,
}

/// One Raft member.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// Node id (= pod ordinal).
    pub id: i64,
    /// `voter` or `learner`.
    pub role: String,
    /// Whether its pod is ready.
    pub ready: bool,
    /// Log entries behind the leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
}

/// A membership change in progress (one at a time).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MembershipOperation {
    /// `ScaleOut`, `ScaleIn` or `ReplaceMember`.
    pub kind: String,
    /// The node being added, removed or replaced.
    pub node_id: i64,
    /// The step reached: e.g. `AddLearner`, `CatchUp`, `Promote`, `TransferLeader`, `RemoveVoter`, `ShrinkStatefulSet`, `ReclaimVolume`.
    pub step: String,
    /// When the operation started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
}
