//! What users write about backups: `spec.backup` and `spec.restore` of a
//! `KVCluster`, the `KVClusterBackup` resource (one on-demand backup), and what
//! the backup agent reports (`status.backup`).
//!
//! Every field carries a doc comment (`kubectl explain`); defaults live in the
//! schema so the API server fills them in.

// Several printcolumn(...) entries repeat `type_ = ...`, which clippy takes for duplicates.
#![allow(clippy::duplicated_attributes)]

use kube::CustomResource;
use schemars::JsonSchema;
use serde::Deserialize;
use serde::Serialize;

fn default_true() -> bool {
    true
}
fn default_flush_seconds() -> u32 {
    2
}
fn default_keep() -> u32 {
    7
}

/// Where backups are kept: exactly one of `volume` or `s3`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupDestination {
    /// A PersistentVolumeClaim in the cluster's namespace (created by you). It is
    /// mounted by the cluster's backup agent only, so ReadWriteOnce is enough.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeDestination>,
    /// An S3-compatible bucket (AWS S3, MinIO, Ceph RGW, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Destination>,
}

/// A PersistentVolumeClaim as a backup destination.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeDestination {
    /// Name of the PersistentVolumeClaim.
    pub claim_name: String,
    /// Directory inside the volume (default: the volume's root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// An S3-compatible bucket as a backup destination.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Destination {
    /// `http(s)://host:port` of the service; unset for AWS S3 itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Bucket name (the bucket must exist).
    pub bucket: String,
    /// Key prefix inside the bucket (default: `<namespace>/<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Region (default `us-east-1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Secret in the cluster's namespace with keys `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY` (and optionally `AWS_SESSION_TOKEN`).
    pub credentials_secret: String,
}

/// How many full backups to keep.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionSpec {
    /// Keep at most this many full backups (newest first); 0 = no count limit.
    #[serde(default = "default_keep")]
    pub keep: u32,
    /// Delete full backups older than this (`90m`, `36h`, `30d`); unset = no age limit.
    /// The newest full backup is never deleted. Continuous-backup segments older than
    /// the oldest kept full backup go with it (nothing can be restored from them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
}

impl Default for RetentionSpec {
    fn default() -> Self {
        Self {
            keep: default_keep(),
            max_age: None,
        }
    }
}

/// Backups of this cluster, taken by its backup agent (a Deployment of one pod,
/// `<name>-backup`, holding the destination and the cluster's admin credential).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// Where backups go.
    pub destination: BackupDestination,
    /// Full backups on this cron schedule (UTC; 5 fields, e.g. `0 */6 * * *`, or 6 with
    /// seconds first); unset = only
    /// on demand (`KVClusterBackup`) and the base continuous backup takes itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Which full backups to keep.
    #[serde(default)]
    pub retention: RetentionSpec,
    /// Ship every committed change to the destination (point-in-time restore to any
    /// revision or moment after the oldest kept full backup). Not yet for a
    /// partitioned cluster (`spec.partitions` > 1): set it to false there; its
    /// scheduled full backups hold every partition.
    #[serde(default = "default_true")]
    pub continuous: bool,
    /// Continuous backup ships changes at least this often: what a total loss of the
    /// cluster can lose, at most (the recovery point objective).
    #[serde(default = "default_flush_seconds")]
    #[schemars(range(min = 1, max = 300))]
    pub flush_interval_seconds: u32,
    /// Image of the backup agent (default: the operator's own image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_image: Option<String>,
}

/// Form this new cluster from a backup instead of empty. Only when the cluster is
/// first created: a cluster that has data is never overwritten.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSpec {
    /// A `KVClusterBackup` (in this namespace) to restore; with `toRevision` or
    /// `toTime`, the point is composed from its destination instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    /// A destination holding backups (e.g. the old cluster's `spec.backup.destination`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<BackupDestination>,
    /// The cluster id whose backups to use within the destination (default: the only
    /// one there; the old cluster's `status.backup.clusterId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// Restore the state at exactly this revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_revision: Option<u64>,
    /// Restore the state as of this moment (RFC 3339): every change made at or before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_time: Option<String>,
}

/// What to do with the backup in the destination when its `KVClusterBackup` is deleted.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep it (retention of the cluster's schedule still applies to it).
    #[default]
    Retain,
    /// Delete it with the resource.
    Delete,
}

/// One on-demand full backup of a KVCluster, taken by the cluster's backup agent
/// into the cluster's backup destination.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "kvcluster.io",
    version = "v1alpha1",
    kind = "KVClusterBackup",
    doc = "One on-demand full backup of a KVCluster, taken by the cluster's backup agent.",
    plural = "kvclusterbackups",
    singular = "kvclusterbackup",
    shortname = "kvcb",
    namespaced,
    status = "KVClusterBackupStatus",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.cluster"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Revision", type_ = "integer", json_path = ".status.revision"),
    printcolumn(name = "Size", type_ = "integer", json_path = ".status.sizeBytes"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct KVClusterBackupSpec {
    /// Name of the KVCluster (same namespace); it must have `spec.backup`.
    pub cluster: String,
    /// What deleting this resource does to the backup it made.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// Progress and result of one backup.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KVClusterBackupStatus {
    /// Pending, Running, Completed or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The cluster id the backup belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// Every change up to this revision is in the backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// Keys in the backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<u64>,
    /// Size of the backup file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// SHA-256 of the backup file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Where it is: the destination and the object's name in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// The object's name relative to the destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// The destination it is in (copied from the cluster's `spec.backup`, so a
    /// restore can find it after the cluster is gone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<BackupDestination>,
    /// When the agent started it (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// When it completed or failed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    /// Seconds it took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    /// Why it failed, or what it is waiting for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What the backup agent reports in the KVCluster's status.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    /// The cluster id backups are stored under (restores name it as `clusterId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// The last full backup that succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<BackupRecord>,
    /// Full backups or continuous-backup steps failed in a row (0 when the last worked).
    #[serde(default)]
    pub consecutive_failures: u32,
    /// The last failure's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Every revision up to this one is in the destination (continuous backup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shipped_revision: Option<u64>,
    /// Seconds since continuous backup last confirmed it was complete (its lag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuous_lag_seconds: Option<u64>,
    /// When the agent last reported (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_at: Option<String>,
}

/// One full backup.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRecord {
    /// When it was taken (RFC 3339).
    pub time: String,
    pub revision: u64,
    /// The object's name relative to the destination.
    pub object: String,
    pub size_bytes: u64,
}

/// How the restore of `spec.restore` went (written by the operator).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreStatus {
    /// Running, Completed, Failed or Refused.
    pub phase: String,
    /// What happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
