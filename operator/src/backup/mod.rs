//! Backups of KVClusters: what users write (`spec.backup`, `spec.restore`,
//! `KVClusterBackup`), the backup agent that takes them, and the objects the
//! operator builds for it.
//!
//! - [`crd`]: the types (documented for `kubectl explain`).
//! - [`config`]: the agent's configuration rendered from a KVCluster, with validation.
//! - [`agent`]: the agent itself (`kvcluster-operator --backup-agent`).
//! - [`build`]: the agent's objects (ConfigMap, ServiceAccount, Role, RoleBinding, Deployment).
//! - [`restore`]: `spec.restore`: the plan, the first member's volume and the restore Job.
//! - [`health`]: the `BackupFailing` condition, from what the agent reports.

pub mod agent;
pub mod build;
pub mod config;
pub mod crd;
pub mod health;
pub mod restore;

#[cfg(test)]
mod tests;
