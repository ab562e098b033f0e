//! The "build" stage of reconcile: pure functions from a `KVCluster` (and the
//! StatefulSet size the membership stage decided) to the objects the operator
//! owns. No client, no I/O — every function here is unit-tested.
//!
//! Objects: a ConfigMap with the kvserver configuration, a headless peer
//! Service (`publishNotReadyAddresses`, so members find each other before they
//! are ready), a client Service, the StatefulSet and a quorum-safe
//! PodDisruptionBudget. All carry the same labels and a controller owner
//! reference, so deleting the KVCluster garbage-collects them.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::apps::v1::StatefulSetSpec;
use k8s_openapi::api::core::v1::Affinity;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::core::v1::ConfigMapVolumeSource;
use k8s_openapi::api::core::v1::Container;
use k8s_openapi::api::core::v1::ContainerPort;
use k8s_openapi::api::core::v1::EnvVar;
use k8s_openapi::api::core::v1::EnvVarSource;
use k8s_openapi::api::core::v1::HTTPGetAction;
use k8s_openapi::api::core::v1::ObjectFieldSelector;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::core::v1::PersistentVolumeClaimSpec;
use k8s_openapi::api::core::v1::PodAffinityTerm;
use k8s_openapi::api::core::v1::PodAntiAffinity;
use k8s_openapi::api::core::v1::PodSecurityContext;
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::api::core::v1::Probe;
use k8s_openapi::api::core::v1::SecretKeySelector;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::core::v1::ServicePort;
use k8s_openapi::api::core::v1::ServiceSpec;
use k8s_openapi::api::core::v1::Volume;
use k8s_openapi::api::core::v1::VolumeMount;
use k8s_openapi::api::core::v1::VolumeResourceRequirements;
use k8s_openapi::api::core::v1::WeightedPodAffinityTerm;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::policy::v1::PodDisruptionBudgetSpec;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use kube::ResourceExt;

use crate::crd::Backend;
use crate::crd::KVCluster;
use crate::crd::ReclaimPolicy;

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
    #[error("cannot render the kvserver configuration: {0}")]
    Config(String),
    #[error(
        "spec.storage.cacheSize: {0:?} is not a byte quantity of at most 1Ti (e.g. 64Mi, 256M, 0)"
    )]
    BadCacheSize(String),
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

fn meta(kvc: &KVCluster, name: String) -> Result<ObjectMeta, BuildError> {
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
/// KVCluster of the same name are refused by kvserver instead of being merged in.
pub fn cluster_id(kvc: &KVCluster) -> Result<String, BuildError> {
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
    let cfg = serde_json::json!({
        "cluster_id": cluster_id(kvc)?,
        "data_dir": DATA_DIR,
        "api_addr": format!("0.0.0.0:{API_PORT}"),
        "raft_addr": format!("0.0.0.0:{RAFT_PORT}"),
        "log": {"format": "json", "level": "info,openraft=warn,sqlx=warn"},
        "raft": raft_cfg,
        "storage": storage,
    });
    serde_yaml::to_string(&cfg).map_err(|e| BuildError::Config(e.to_string()))
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

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("api".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    }
}

/// The StatefulSet with `replicas` pods (decided by the membership stage, not the spec).
pub fn statefulset(kvc: &KVCluster, replicas: i32) -> Result<StatefulSet, BuildError> {
    let n = names(kvc);
    let ns = kvc
        .namespace()
        .ok_or(BuildError::MissingMeta("namespace"))?;
    let host = format!("$(POD_NAME).{}.{ns}.svc.cluster.local", n.peers);
    let mut envs = vec![
        EnvVar {
            name: "POD_NAME".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
        env("KV_ADVERTISE_API_ADDR", &format!("{host}:{API_PORT}")),
        env("KV_ADVERTISE_RAFT_ADDR", &format!("{host}:{RAFT_PORT}")),
    ];
    if let (Backend::Postgres, Some(pg)) = (kvc.spec.storage.backend, &kvc.spec.storage.postgres) {
        envs.push(EnvVar {
            name: "KV_STORAGE_POSTGRES_URL".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: pg.secret_name.clone(),
                    key: pg.secret_key.clone(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let container = Container {
        name: "kvserver".into(),
        image: Some(kvc.spec.image.clone()),
        image_pull_policy: Some(kvc.spec.image_pull_policy.clone()),
        args: Some(vec!["--config".into(), format!("{CONFIG_DIR}/config.yaml")]),
        env: Some(envs),
        ports: Some(vec![
            ContainerPort {
                name: Some("api".into()),
                container_port: API_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("raft".into()),
                container_port: RAFT_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]),
        // Ready = member, leader known, caught up: what the client Service should route on.
        readiness_probe: Some(http_probe("/readyz", 2, 2)),
        // Alive = serves HTTP; a cluster without quorum is not a reason to restart pods.
        liveness_probe: Some(http_probe("/healthz", 10, 6)),
        resources: kvc.spec.resources.clone(),
        volume_mounts: Some(vec![
            VolumeMount {
                name: VOLUME.into(),
                mount_path: DATA_DIR.into(),
                ..Default::default()
            },
            VolumeMount {
                name: "config".into(),
                mount_path: CONFIG_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
        ]),
        ..Default::default()
    };
    let overrides = kvc.spec.pod.clone().unwrap_or_default();
    let mut pod_labels = overrides.labels.clone();
    pod_labels.extend(labels(kvc));
    let mut annotations = overrides.annotations.clone();
    if kvc.spec.metrics.enabled {
        annotations.insert("prometheus.io/scrape".into(), "true".into());
        annotations.insert("prometheus.io/port".into(), API_PORT.to_string());
        annotations.insert("prometheus.io/path".into(), "/metrics".into());
    }
    // A config change must roll the pods: hash it into the template.
    let config_hash = config_yaml(kvc)?
        .bytes()
        .fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
        });
    annotations.insert(
        "kvcluster.io/config-hash".into(),
        format!("{config_hash:016x}"),
    );
    let affinity = overrides.affinity.clone().or_else(|| {
        Some(Affinity {
            pod_anti_affinity: Some(PodAntiAffinity {
                preferred_during_scheduling_ignored_during_execution: Some(vec![
                    WeightedPodAffinityTerm {
                        weight: 100,
                        pod_affinity_term: PodAffinityTerm {
                            label_selector: Some(LabelSelector {
                                match_labels: Some(selector_labels(kvc)),
                                ..Default::default()
                            }),
                            topology_key: "kubernetes.io/hostname".into(),
                            ..Default::default()
                        },
                    },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        })
    });
    let pvc = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(VOLUME.into()),
            labels: Some(selector_labels(kvc)),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: kvc.spec.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(kvc.spec.storage.size.clone()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    Ok(StatefulSet {
        metadata: meta(kvc, n.statefulset.clone())?,
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(n.peers.clone()),
            // Parallel: a crashed low ordinal must not block the others (membership is the
            // operator's job, not the StatefulSet's ordering).
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(kvc)),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(annotations),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    // Service links would inject KV_* variables for a Service named "kv".
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(30),
                    // The image runs as uid 10001: make the volume writable for it.
                    security_context: Some(PodSecurityContext {
                        fs_group: Some(10001),
                        ..Default::default()
                    }),
                    affinity,
                    tolerations: (!overrides.tolerations.is_empty())
                        .then(|| overrides.tolerations.clone()),
                    node_selector: (!overrides.node_selector.is_empty())
                        .then(|| overrides.node_selector.clone()),
                    topology_spread_constraints: (!overrides
                        .topology_spread_constraints
                        .is_empty())
                    .then(|| overrides.topology_spread_constraints.clone()),
                    volumes: Some(vec![Volume {
                        name: "config".into(),
                        config_map: Some(ConfigMapVolumeSource {
                            name: n.config.clone(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
            },
            volume_claim_templates: Some(vec![pvc]),
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

#[cfg(test)]
mod tests;
