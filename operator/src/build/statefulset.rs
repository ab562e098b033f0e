//! The StatefulSet of kvserver pods: container, probes, environment (the
//! per-pod identity and secrets), volumes (data, configuration, certificates,
//! token files), the `restricted` security context, and scheduling.

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

/// The token files of `spec.auth` at `AUTH_DIR`: the operator's Secret as
/// `operator.yaml`, the user's (`tokenSecretName`) as `user.yaml`. One projected
/// volume, so both are files of one directory and a Secret update reaches the
/// pods (and is re-read by kvserver) without a restart.
fn auth_volume(kvc: &KVCluster) -> Option<(Volume, VolumeMount)> {
    use k8s_openapi::api::core::v1::KeyToPath;
    use k8s_openapi::api::core::v1::ProjectedVolumeSource;
    use k8s_openapi::api::core::v1::SecretProjection;
    use k8s_openapi::api::core::v1::VolumeProjection;
    if !crate::auth::enabled(kvc) {
        return None;
    }
    let project = |secret: String, file: &str| VolumeProjection {
        secret: Some(SecretProjection {
            name: secret,
            items: Some(vec![KeyToPath {
                key: "tokens.yaml".into(),
                path: file.into(),
                ..Default::default()
            }]),
            optional: Some(false),
        }),
        ..Default::default()
    };
    let mut sources = vec![project(
        crate::auth::operator_secret_name(kvc),
        "operator.yaml",
    )];
    if let Some(user) = &kvc.spec.auth.token_secret_name {
        sources.push(project(user.clone(), "user.yaml"));
    }
    Some((
        Volume {
            name: "auth".into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(sources),
                default_mode: Some(0o440),
            }),
            ..Default::default()
        },
        VolumeMount {
            name: "auth".into(),
            mount_path: crate::auth::AUTH_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        },
    ))
}

/// The members' own credential for TokenReviews, when the cluster takes
/// ServiceAccount tokens (`spec.auth.serviceAccounts`): a token of the pod's
/// ServiceAccount for the API server's audience, renewed by the kubelet, and
/// the API server's CA (`kube-root-ca.crt`, published in every namespace).
/// Only this volume holds an API token; the ServiceAccount may do nothing but
/// reviews, and automounting stays off.
fn reviewer_volume(kvc: &KVCluster) -> Option<(Volume, VolumeMount)> {
    use k8s_openapi::api::core::v1::ConfigMapProjection;
    use k8s_openapi::api::core::v1::KeyToPath;
    use k8s_openapi::api::core::v1::ProjectedVolumeSource;
    use k8s_openapi::api::core::v1::ServiceAccountTokenProjection;
    use k8s_openapi::api::core::v1::VolumeProjection;
    crate::auth::service_accounts(kvc)?;
    let sources = vec![
        VolumeProjection {
            service_account_token: Some(ServiceAccountTokenProjection {
                path: "token".into(),
                expiration_seconds: Some(crate::auth::REVIEWER_TOKEN_SECONDS),
                audience: None,
            }),
            ..Default::default()
        },
        VolumeProjection {
            config_map: Some(ConfigMapProjection {
                name: "kube-root-ca.crt".into(),
                items: Some(vec![KeyToPath {
                    key: "ca.crt".into(),
                    path: "ca.crt".into(),
                    ..Default::default()
                }]),
                optional: Some(false),
            }),
            ..Default::default()
        },
    ];
    Some((
        Volume {
            name: "reviewer".into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(sources),
                default_mode: Some(0o440),
            }),
            ..Default::default()
        },
        VolumeMount {
            name: "reviewer".into(),
            mount_path: crate::auth::REVIEWER_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        },
    ))
}

/// The uid and gid kvserver runs as (the image's user).
const KVSERVER_UID: i64 = 10001;

/// The `restricted` Pod Security Standard, pod level: non-root, the runtime's
/// default seccomp profile, and the volume group kvserver writes as.
pub(crate) fn pod_security() -> PodSecurityContext {
    use k8s_openapi::api::core::v1::SeccompProfile;
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(KVSERVER_UID),
        run_as_group: Some(KVSERVER_UID),
        fs_group: Some(KVSERVER_UID),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The `restricted` Pod Security Standard, container level: no privilege
/// escalation, no capabilities, and a read-only root filesystem (kvserver
/// writes only its data volume and `/tmp`).
pub(crate) fn container_security() -> k8s_openapi::api::core::v1::SecurityContext {
    use k8s_openapi::api::core::v1::Capabilities;
    k8s_openapi::api::core::v1::SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        ..Default::default()
    }
}

/// Requests a pod gets when `spec.resources` says nothing: enough for the
/// scheduler to place it sensibly (no limits: the user decides those).
fn default_resources() -> k8s_openapi::api::core::v1::ResourceRequirements {
    k8s_openapi::api::core::v1::ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("100m".into())),
            ("memory".to_string(), Quantity("128Mi".into())),
        ])),
        ..Default::default()
    }
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
    // Certificates, token files and /tmp, besides data and configuration.
    let mut mounted = tls_volumes(kvc);
    mounted.extend(auth_volume(kvc));
    mounted.extend(reviewer_volume(kvc));
    // SQLite's temporary files: the root filesystem is read-only.
    mounted.push((
        Volume {
            name: "tmp".into(),
            empty_dir: Some(k8s_openapi::api::core::v1::EmptyDirVolumeSource {
                size_limit: Some(Quantity("256Mi".into())),
                ..Default::default()
            }),
            ..Default::default()
        },
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        },
    ));
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
        resources: Some(kvc.spec.resources.clone().unwrap_or_else(default_resources)),
        security_context: Some(container_security()),
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
            .chain(mounted.iter().map(|(_, m)| m.clone()))
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
    let config_hash = fnv(super::config_for_hash(kvc)?.as_bytes());
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
                    security_context: Some(pod_security()),
                    service_account_name: Some(super::policy::service_account_name(kvc)),
                    automount_service_account_token: Some(false),
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
                        .chain(mounted.into_iter().map(|(v, _)| v))
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
