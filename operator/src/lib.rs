//! kvcluster-operator: reconciles `KVCluster` resources into StatefulSets of
//! kvserver pods and drives their Raft membership safely.
//!
//! # Layout
//! - [`crd`]: the `KVCluster` custom resource (spec, status), documented for `kubectl explain`.
//! - [`build`]: pure builders of the owned objects (ConfigMap, Services, StatefulSet, PDB,
//!   ServiceAccount, NetworkPolicy).
//! - [`backup`]: `spec.backup`, `spec.restore`, `KVClusterBackup`, and the backup agent.
//! - [`recovery`]: `spec.recovery`: forced recovery from permanent quorum loss (pure plan).
//! - [`auth`]: `spec.auth`: the operator's own admin token Secret and the members' token files.
//! - [`reviewers`]: the ClusterRoleBinding that lets members check ServiceAccount tokens.
//! - [`tls`]: the cluster's certificates (`spec.tls`): which to keep, issue or renew, as
//!   Secrets and the CA ConfigMap.
//! - [`membership`]: the pure membership state machine (next safe step from observed state).
//! - [`controller`]: the reconcile pipeline observe → plan → build → apply → membership step → status,
//!   one file per stage that talks to the world (`observe`, `apply`, `execute`, `status`).
//! - [`partitions`]: `spec.partitions`: the partitions' status, the Rebalancing condition and
//!   move Events (kvserver places and moves replicas itself).
//! - [`metrics`]: the operator's Prometheus metrics.
//! - [`manifests`]: RBAC rules, install bundle and examples (one source for manifests/ and the chart).
//! - [`crdgen`]: renders the CRD YAML (used by the `crdgen` binary and the drift test).

pub mod auth;
pub mod backup;
pub mod build;
pub mod controller;
pub mod crd;
pub mod crdgen;
pub mod manifests;
pub mod membership;
pub mod metrics;
pub mod partitions;
pub mod recovery;
pub mod reviewers;
pub mod tls;
