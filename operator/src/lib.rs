//! kvcluster-operator: reconciles `KVCluster` resources into StatefulSets of
//! kvserver pods and drives their Raft membership safely.
//!
//! # Layout
//! - [`crd`]: the `KVCluster` custom resource (spec, status), documented for `kubectl explain`.
//! - [`build`]: pure builders of the owned objects (ConfigMap, Services, StatefulSet, PDB).
//! - [`membership`]: the pure membership state machine (next safe step from observed state).
//! - [`crdgen`]: renders the CRD YAML (used by the `crdgen` binary and the drift test).

pub mod build;
pub mod crd;
pub mod crdgen;
pub mod membership;
