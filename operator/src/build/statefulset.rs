//! The StatefulSet of kvserver pods: container, probes, environment (the
//! per-pod identity and secrets), volumes (data, configuration, certificates)
//! and scheduling.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::apps::v1::StatefulSetSpec;
use k8s_openapi::api::core::v1::Affinity;
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
use k8s_openapi::api::core::v1::SecretVolumeSource;
use k8s_openapi::api::core::v1::Volume;
use k8s_openapi::api::core::v1::VolumeMount;
use k8s_openapi::api::core::v1::VolumeResourceRequirements;
use k8s_openapi::api::core::v1::WeightedPodAffinityTerm;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::*;
use crate::crd::Backend;
use crate::crd::KVCluster;
use crate::crd::TlsMode;

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32, https: bool) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            // The kubelet does not verify the certificate; it only needs the scheme.
            scheme: https.then(|| "HTTPS".into()),
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
/// Where the certificates and PostgreSQL files are mounted in the pods.
pub const TLS_DIR: &str = "/etc/kvserver/tls";

/// A read-only Secret volume and its mount at `TLS_DIR/<dir>`.
fn secret_volume(name: &str, secret: &str, dir: &str) -> (Volume, VolumeMount) {
    (
        Volume {
            name: name.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.into()),
                // Group-readable: the pod's fsGroup is kvserver's group.
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        },
        VolumeMount {
            name: name.into(),
            mount_path: format!("{TLS_DIR}/{dir}"),
            read_only: Some(true),
            ..Default::default()
        },
    )
}

/// The certificate volumes of the pods: the members' Secret, the client port's,
/// and the PostgreSQL CA and client certificate.
fn tls_volumes(kvc: &KVCluster) -> Vec<(Volume, VolumeMount)> {
    let mut v = vec![secret_volume(
        "peer-tls",
        &crate::tls::peer_secret_name(kvc),
        "peer",
    )];
    if let Some(name) = crate::tls::client_secret_name(kvc) {
        v.push(secret_volume("client-tls", &name, "client"));
    }
    if let (Backend::Postgres, Some(pg)) = (kvc.spec.storage.backend, &kvc.spec.storage.postgres) {
        if let Some(name) = &pg.ca_secret_name {
            v.push(secret_volume("postgres-ca", name, "postgres-ca"));
        }
        if let Some(name) = &pg.client_cert_secret_name {
            v.push(secret_volume("postgres-client", name, "postgres-client"));
        }
    }
    v
}

/// The StatefulSet with `replicas` pods (decided by the membership stage, not
/// the spec). `secrets_digest` changes when a Secret whose change needs a
/// restart changes (PostgreSQL's); certificates are reloaded instead.
pub fn statefulset(
    kvc: &KVCluster,
    replicas: i32,
    secrets_digest: Option<&str>,
) -> Result<StatefulSet, BuildError> {
    let n = names(kvc);
    let ns = kvc
        .namespace()
        .ok_or(BuildError::MissingMeta("namespace"))?;
    let host = format!("$(POD_NAME).{}.{ns}.svc.cluster.local", n.peers);
    let https = kvc.spec.tls.client.mode != TlsMode::Disabled;
    let tls = tls_volumes(kvc);
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
        // Each pod's own member certificate in the members' Secret.
        env(
            "KV_TLS_PEER_CERT_FILE",
            &format!("{TLS_DIR}/peer/$(POD_NAME).crt"),
        ),
        env(
            "KV_TLS_PEER_KEY_FILE",
            &format!("{TLS_DIR}/peer/$(POD_NAME).key"),
        ),
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
        readiness_probe: Some(http_probe("/readyz", 2, 2, https)),
        // Alive = serves HTTP; a cluster without quorum is not a reason to restart pods.
        liveness_probe: Some(http_probe("/healthz", 10, 6, https)),
        resources: kvc.spec.resources.clone(),
        volume_mounts: Some(
            [
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
            ]
            .into_iter()
            .chain(tls.iter().map(|(_, m)| m.clone()))
            .collect(),
        ),
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
    let config_hash = fnv(config_yaml(kvc)?.as_bytes());
    annotations.insert(
        "kvcluster.io/config-hash".into(),
        format!("{config_hash:016x}"),
    );
    if let Some(d) = secrets_digest {
        annotations.insert("kvcluster.io/secrets-hash".into(), d.to_string());
    }
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
                    volumes: Some(
                        std::iter::once(Volume {
                            name: "config".into(),
                            config_map: Some(ConfigMapVolumeSource {
                                name: n.config.clone(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        })
                        .chain(tls.into_iter().map(|(v, _)| v))
                        .collect(),
                    ),
                    ..Default::default()
                }),
            },
            volume_claim_templates: Some(vec![pvc]),
            ..Default::default()
        }),
        ..Default::default()
    })
}
