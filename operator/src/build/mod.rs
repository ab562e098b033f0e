//! The "build" stage of reconcile: pure functions from a `KVCluster` (and the
//! StatefulSet size the membership stage decided) to the objects the operator
//! owns. No client, no I/O — every function here is unit-tested.
//!
//! Objects: a ConfigMap with the kvserver configuration, a headless peer
//! Service (`publishNotReadyAddresses`, so members find each other before they
//! are ready), a client Service, the StatefulSet and a quorum-safe
//! PodDisruptionBudget; the cluster's ServiceAccount and NetworkPolicy
//! (`policy`). All carry the same labels and a controller owner reference, so
//! deleting the KVCluster garbage-collects them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::core::v1::ServicePort;
use k8s_openapi::api::core::v1::ServiceSpec;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::policy::v1::PodDisruptionBudgetSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use kube::ResourceExt;

use crate::crd::Backend;
use crate::crd::KVCluster;
use crate::crd::ReclaimPolicy;

mod policy;

pub use self::policy::check_exposure;
pub use self::policy::network_policy;
pub use self::policy::service_account;
pub use self::policy::service_account_name;

pub const API_PORT: i32 = 8080;
pub const RAFT_PORT: i32 = 8081;
pub const DATA_DIR: &str = "/var/lib/kvserver";
pub const CONFIG_DIR: &str = "/etc/kvserver";
const VOLUME: &str = "data";

/// Errors of the build stage: a spec that cannot be turned into objects.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    #[error("the KVCluster has no {0} (not yet stored by the API server?)")]
    MissingMeta(&'static str),
    #[error("spec.storage.postgres is required when spec.storage.backend is postgres")]
    MissingPostgres,
    #[error(
        "spec.raft: electionTimeoutMinMs must exceed heartbeatIntervalMs and electionTimeoutMaxMs must exceed electionTimeoutMinMs"
    )]
    BadRaftTiming,
    #[error(
        "spec.replicationFactor ({factor}) exceeds spec.replicas ({replicas}): each partition's replicas live on distinct pods"
    )]
    ReplicationFactor { factor: i32, replicas: i32 },
    #[error("cannot render the kvserver configuration: {0}")]
    Config(String),
    #[error(
        "spec.storage.cacheSize: {0:?} is not a byte quantity of at most 1Ti (e.g. 64Mi, 256M, 0)"
    )]
    BadCacheSize(String),
    #[error("certificates: {0}")]
    Tls(String),
    #[error(
        "spec.service.type: LoadBalancer exposes the client port beyond the cluster; it needs client TLS (spec.tls.client not disabled) and auth (spec.auth.mode: enabled)"
    )]
    UnsafeExposure,
    #[error("spec.auth.{0}")]
    Auth(String),
    /// A field of the spec is invalid; the message starts with the field's path.
    #[error("{0}")]
    Invalid(String),
}

/// Whether the client port serves HTTPS.
pub fn client_tls_enabled(kvc: &KVCluster) -> bool {
    kvc.spec.tls.client.mode != crate::crd::TlsMode::Disabled
}

/// Bytes in a Kubernetes quantity without fractions (`512`, `64Mi`, `1G`, `0`),
/// the form memory sizes take in practice; `None` for anything else.
pub fn parse_bytes(q: &str) -> Option<u64> {
    const SUFFIXES: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    let (digits, unit) = SUFFIXES
        .iter()
        .find_map(|(suffix, unit)| q.strip_suffix(suffix).map(|d| (d, *unit)))
        .unwrap_or((q, 1));
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(unit)
}

/// FNV-1a of `bytes`: the digests in pod template annotations (not a security
/// function: they only make a change visible to the StatefulSet).
pub fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

/// Names of the owned objects.
pub struct Names {
    pub statefulset: String,
    pub peers: String,
    pub client: String,
    pub config: String,
    pub pdb: String,
}

pub fn names(kvc: &KVCluster) -> Names {
    let n = kvc.name_any();
    Names {
        statefulset: n.clone(),
        peers: format!("{n}-peers"),
        client: n.clone(),
        config: format!("{n}-config"),
        pdb: n,
    }
}

/// Labels that select the pods of one cluster.
pub fn selector_labels(kvc: &KVCluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "kvserver".to_string()),
        ("app.kubernetes.io/instance".to_string(), kvc.name_any()),
    ])
}

/// Labels on every owned object.
pub fn labels(kvc: &KVCluster) -> BTreeMap<String, String> {
    let mut l = selector_labels(kvc);
    l.insert(
        "app.kubernetes.io/managed-by".into(),
        "kvcluster-operator".into(),
    );
    l.insert("app.kubernetes.io/component".into(), "kvstore".into());
    l
}

/// `key=value,...` form of the selector (status.selector, for the scale subresource).
pub fn selector_string(kvc: &KVCluster) -> String {
    selector_labels(kvc)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The owner references a member volume should carry: with `reclaimPolicy:
/// Delete` the KVCluster owns its volumes (deleting the KVCluster deletes
/// them, as it does its other objects); with `Retain` it does not (they outlive
/// it). Returns the new list when it differs from `current`, else `None`.
/// Owner references of others (if any) are kept.
pub fn pvc_owner_references(
    kvc: &KVCluster,
    current: &[OwnerReference],
) -> Result<Option<Vec<OwnerReference>>, BuildError> {
    let uid = kvc.uid().ok_or(BuildError::MissingMeta("uid"))?;
    let mut refs: Vec<OwnerReference> = current.iter().filter(|o| o.uid != uid).cloned().collect();
    if kvc.spec.storage.reclaim_policy == ReclaimPolicy::Delete {
        refs.push(OwnerReference {
            // Not the controller: the StatefulSet controller may own it too.
            controller: None,
            ..kvc
                .controller_owner_ref(&())
                .ok_or(BuildError::MissingMeta("uid"))?
        });
    }
    Ok((refs.as_slice() != current).then_some(refs))
}

pub(crate) fn meta(kvc: &KVCluster, name: String) -> Result<ObjectMeta, BuildError> {
    let owner: OwnerReference = kvc
        .controller_owner_ref(&())
        .ok_or(BuildError::MissingMeta("uid"))?;
    Ok(ObjectMeta {
        name: Some(name),
        namespace: Some(
            kvc.namespace()
                .ok_or(BuildError::MissingMeta("namespace"))?,
        ),
        labels: Some(labels(kvc)),
        owner_references: Some(vec![owner]),
        ..Default::default()
    })
}

/// The Raft cluster identity: name plus UID, so volumes left over from a deleted
/// KVCluster of the same name are refused by kvserver instead of being merged in;
/// after a forced recovery, `-r<epoch>` too (`crate::recovery`).
pub fn cluster_id(kvc: &KVCluster) -> Result<String, BuildError> {
    Ok(crate::recovery::cluster_id_at(
        &base_cluster_id(kvc)?,
        crate::recovery::identity_epoch(kvc),
    ))
}

/// The cluster id as first formed (name plus UID).
pub fn base_cluster_id(kvc: &KVCluster) -> Result<String, BuildError> {
    let uid = kvc.uid().ok_or(BuildError::MissingMeta("uid"))?;
    Ok(format!("{}-{}", kvc.name_any(), &uid[..uid.len().min(8)]))
}

/// Stable DNS name of member `ordinal` behind the peer Service.
pub fn member_host(kvc: &KVCluster, ordinal: u64) -> String {
    let n = names(kvc);
    format!(
        "{}-{ordinal}.{}.{}.svc.cluster.local",
        n.statefulset,
        n.peers,
        kvc.namespace().unwrap_or_default()
    )
}

/// Client API address of member `ordinal` (what the operator calls).
pub fn member_api(kvc: &KVCluster, ordinal: u64) -> String {
    format!("{}:{API_PORT}", member_host(kvc, ordinal))
}

/// Raft address of member `ordinal`.
pub fn member_raft(kvc: &KVCluster, ordinal: u64) -> String {
    format!("{}:{RAFT_PORT}", member_host(kvc, ordinal))
}

/// How many voters may be down while a quorum remains: the PDB's maxUnavailable.
pub fn tolerated_failures(voters: i32) -> i32 {
    if voters <= 0 {
        0
    } else {
        voters - (voters / 2 + 1)
    }
}

/// The kvserver configuration file (env adds per-pod identity and secrets).
pub fn config_yaml(kvc: &KVCluster) -> Result<String, BuildError> {
    let mut cfg = config_value(kvc)?;
    if let Some((from, member)) = crate::recovery::in_progress(kvc) {
        // Read by members when they start during a forced recovery; left out of
        // the pods' config hash, so dropping it afterwards restarts nobody.
        cfg["recovery"] = serde_json::json!({"force_new_cluster_from": from, "node_id": member});
    }
    if kvc.spec.partitions > 1 {
        // How many members the first placement waits for, so a new cluster's
        // partitions are spread over all its pods at once. Read only before the
        // first placement: left out of the config hash, so scaling restarts nobody.
        cfg["initial_nodes"] = kvc.spec.replicas.into();
    }
    serde_yaml::to_string(&cfg).map_err(|e| BuildError::Config(e.to_string()))
}

/// The part of the configuration that, when it changes, must restart the pods.
pub fn config_for_hash(kvc: &KVCluster) -> Result<String, BuildError> {
    serde_yaml::to_string(&config_value(kvc)?).map_err(|e| BuildError::Config(e.to_string()))
}

fn config_value(kvc: &KVCluster) -> Result<serde_json::Value, BuildError> {
    let raft = kvc.spec.raft.clone().unwrap_or_default();
    let hb = raft.heartbeat_interval_ms.unwrap_or(100);
    let emin = raft.election_timeout_min_ms.unwrap_or(500.max(hb * 5));
    let emax = raft.election_timeout_max_ms.unwrap_or(emin * 2);
    if emin <= hb || emax <= emin {
        return Err(BuildError::BadRaftTiming);
    }
    let mut raft_cfg = serde_yaml::Mapping::new();
    raft_cfg.insert("heartbeat_interval_ms".into(), hb.into());
    raft_cfg.insert("election_timeout_min_ms".into(), emin.into());
    raft_cfg.insert("election_timeout_max_ms".into(), emax.into());
    if let Some(s) = raft.snapshot_after_entries {
        raft_cfg.insert("snapshot_after_entries".into(), s.into());
    }
    let backend = match kvc.spec.storage.backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => {
            kvc.spec
                .storage
                .postgres
                .as_ref()
                .ok_or(BuildError::MissingPostgres)?;
            "postgres"
        }
    };
    let mut storage = serde_json::json!({"backend": backend});
    if let Some(q) = &kvc.spec.storage.cache_size {
        // Same bound kvserver enforces at start-up, checked here so a bad value is a
        // status condition on the KVCluster instead of pods that crash-loop.
        let bytes = parse_bytes(q)
            .filter(|b| *b <= 1 << 40)
            .ok_or_else(|| BuildError::BadCacheSize(q.clone()))?;
        storage["cache_bytes"] = bytes.into();
    }
    if let (Backend::Postgres, Some(pg)) = (kvc.spec.storage.backend, &kvc.spec.storage.postgres) {
        let dir = statefulset::TLS_DIR;
        let pg_cfg = &mut storage["postgres"];
        *pg_cfg = serde_json::json!({});
        if let Some(mode) = &pg.ssl_mode {
            const MODES: [&str; 6] = [
                "disable",
                "allow",
                "prefer",
                "require",
                "verify-ca",
                "verify-full",
            ];
            if !MODES.contains(&mode.as_str()) {
                return Err(BuildError::Tls(format!(
                    "spec.storage.postgres.sslMode: {mode:?} is not one of {}",
                    MODES.join(", ")
                )));
            }
            pg_cfg["sslmode"] = mode.clone().into();
        }
        if pg.ca_secret_name.is_some() {
            pg_cfg["ca_file"] = format!("{dir}/postgres-ca/ca.crt").into();
        }
        if pg.client_cert_secret_name.is_some() {
            pg_cfg["cert_file"] = format!("{dir}/postgres-client/tls.crt").into();
            pg_cfg["key_file"] = format!("{dir}/postgres-client/tls.key").into();
        }
    }
    // Members' certificates (the pod's own cert and key come from its environment).
    let dir = statefulset::TLS_DIR;
    let mut tls = serde_json::json!({"peer": {"ca_file": format!("{dir}/peer/ca.crt")}});
    if kvc.spec.tls.client.mode != crate::crd::TlsMode::Disabled {
        tls["client"] = serde_json::json!({
            "cert_file": format!("{dir}/client/tls.crt"),
            "key_file": format!("{dir}/client/tls.key"),
            "ca_file": format!("{dir}/client/ca.crt"),
        });
    }
    let mut auth = serde_json::json!({"enabled": crate::auth::enabled(kvc)});
    if crate::auth::enabled(kvc) {
        auth["token_files"] = crate::auth::token_files(kvc).into();
        let certs = &kvc.spec.auth.client_certificates;
        if !certs.is_empty() {
            if kvc.spec.tls.client.mode == crate::crd::TlsMode::Disabled {
                return Err(BuildError::Auth(
                    "clientCertificates needs client TLS (spec.tls.client.mode not disabled)"
                        .into(),
                ));
            }
            tls["client_auth"] = "optional".into();
            auth["client_certs"] = certs
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    if b.subject.is_empty() || b.prefixes.iter().any(String::is_empty) {
                        return Err(BuildError::Auth(format!(
                            "clientCertificates[{i}]: subject and prefixes must not be empty"
                        )));
                    }
                    Ok(serde_json::json!({
                        "subject": b.subject,
                        "role": serde_json::to_value(b.role).unwrap_or_default(),
                        "prefixes": b.prefixes,
                    }))
                })
                .collect::<Result<Vec<_>, _>>()?
                .into();
        }
        if let Some(sa) = crate::auth::service_accounts_config(kvc)? {
            auth["service_accounts"] = sa;
        }
    }
    let mut cfg = serde_json::json!({
        "cluster_id": cluster_id(kvc)?,
        "tls": tls,
        "auth": auth,
        "data_dir": DATA_DIR,
        "api_addr": format!("0.0.0.0:{API_PORT}"),
        "raft_addr": format!("0.0.0.0:{RAFT_PORT}"),
        "log": {"format": "json", "level": "info,openraft=warn,sqlx=warn"},
        "raft": raft_cfg,
        "storage": storage,
    });
    if kvc.spec.partitions > 1 {
        if kvc.spec.replication_factor > kvc.spec.replicas {
            return Err(BuildError::ReplicationFactor {
                factor: kvc.spec.replication_factor,
                replicas: kvc.spec.replicas,
            });
        }
        if kvc.spec.backup.as_ref().is_some_and(|b| b.continuous) {
            return Err(BuildError::Invalid(
                "spec.backup.continuous: point-in-time backup of a partitioned cluster (spec.partitions > 1) is not built yet; scheduled full backups are".into(),
            ));
        }
        cfg["partitions"] = kvc.spec.partitions.into();
        cfg["replication_factor"] = kvc.spec.replication_factor.into();
    }
    if kvc.spec.restore.is_some() {
        // Written by the restore Job into the first member's volume; used only when
        // that member forms the cluster (crate::backup::restore).
        cfg["restore_from"] = crate::backup::restore::RESTORE_FILE.into();
    }
    Ok(cfg)
}

pub fn config_map(kvc: &KVCluster) -> Result<ConfigMap, BuildError> {
    Ok(ConfigMap {
        metadata: meta(kvc, names(kvc).config)?,
        data: Some(BTreeMap::from([(
            "config.yaml".to_string(),
            config_yaml(kvc)?,
        )])),
        ..Default::default()
    })
}

fn port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        // Explicit: server-side apply on Kubernetes < 1.21 refuses list items
        // without their key fields (port + protocol), defaults notwithstanding.
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

/// Headless Service giving each member a stable DNS name, published before readiness.
pub fn peer_service(kvc: &KVCluster) -> Result<Service, BuildError> {
    Ok(Service {
        metadata: meta(kvc, names(kvc).peers)?,
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(kvc)),
            ports: Some(vec![port("api", API_PORT), port("raft", RAFT_PORT)]),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The Service clients use; routes to ready members only.
pub fn client_service(kvc: &KVCluster) -> Result<Service, BuildError> {
    let mut m = meta(kvc, names(kvc).client)?;
    if !kvc.spec.service.annotations.is_empty() {
        m.annotations = Some(kvc.spec.service.annotations.clone());
    }
    Ok(Service {
        metadata: m,
        spec: Some(ServiceSpec {
            type_: Some(kvc.spec.service.type_.clone()),
            selector: Some(selector_labels(kvc)),
            ports: Some(vec![port("api", API_PORT)]),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// A PDB allowing voluntary disruption of at most the failures a quorum tolerates.
pub fn pdb(kvc: &KVCluster, voters: i32) -> Result<PodDisruptionBudget, BuildError> {
    Ok(PodDisruptionBudget {
        metadata: meta(kvc, names(kvc).pdb)?,
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(tolerated_failures(voters))),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(kvc)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Name of the PVC of member `ordinal` (StatefulSet naming: `<template>-<sts>-<ordinal>`).
pub fn pvc_name(kvc: &KVCluster, ordinal: u64) -> String {
    format!("{VOLUME}-{}-{ordinal}", names(kvc).statefulset)
}

pub mod statefulset;
#[cfg(test)]
mod tests;

pub(crate) use statefulset::container_security;
pub(crate) use statefulset::pod_security;
pub use statefulset::statefulset;
