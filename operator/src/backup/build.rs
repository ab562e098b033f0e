//! Pure builders of the backup agent's objects: its ConfigMap (the agent's
//! configuration), ServiceAccount, Role and RoleBinding (only what the agent
//! does: serve its cluster's `KVClusterBackup`s and write its `status.backup`),
//! and the Deployment of one pod (`Recreate`: never two agents shipping the same
//! chain, and a ReadWriteOnce volume is released before the next pod mounts it).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::Role;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::ResourceExt;
use serde_json::json;

use super::config::AgentConfig;
use super::config::CA_DIR;
use super::config::CONFIG_DIR;
use super::config::SCRATCH_DIR;
use super::config::TOKEN_DIR;
use super::config::VOLUME_MOUNT;
use crate::build::BuildError;
use crate::build::meta;
use crate::crd::KVCluster;

/// The operator's own image, which the agent runs by default.
pub const DEFAULT_AGENT_IMAGE: &str = concat!(
    "docker.io/kvcluster/kvcluster-operator:",
    env!("CARGO_PKG_VERSION")
);
/// Port of the agent's `/metrics` and `/healthz`.
pub const AGENT_METRICS_PORT: i32 = 8000;

/// Name of every agent object of `kvc`.
pub fn agent_name(kvc: &KVCluster) -> String {
    format!("{}-backup", kvc.name_any())
}

/// Labels of the agent's pod (the NetworkPolicy admits them to the client port).
pub fn agent_labels(kvc: &KVCluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "kvcluster-backup".to_string(),
        ),
        ("app.kubernetes.io/instance".to_string(), kvc.name_any()),
    ])
}

/// Everything the agent needs to run.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentObjects {
    pub config_map: ConfigMap,
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
    pub deployment: Deployment,
}

fn from_json<T: serde::de::DeserializeOwned>(
    what: &str,
    v: serde_json::Value,
) -> Result<T, BuildError> {
    serde_json::from_value(v).map_err(|e| BuildError::Config(format!("{what}: {e}")))
}

/// The agent's objects, or `None` without `spec.backup`.
pub fn agent_objects(kvc: &KVCluster) -> Result<Option<AgentObjects>, BuildError> {
    let Some(cfg) = super::config::agent_config(kvc)? else {
        return Ok(None);
    };
    let Some(spec) = kvc.spec.backup.as_ref() else {
        return Ok(None);
    };
    let name = agent_name(kvc);
    let rendered =
        serde_json::to_string_pretty(&cfg).map_err(|e| BuildError::Config(e.to_string()))?;
    let mut config_map = ConfigMap {
        metadata: meta(kvc, name.clone())?,
        data: Some(BTreeMap::from([(
            "agent.json".to_string(),
            rendered.clone(),
        )])),
        ..Default::default()
    };
    config_map.metadata.labels = Some(labels(kvc));
    let service_account = ServiceAccount {
        metadata: meta(kvc, name.clone())?,
        ..Default::default()
    };
    let mut role: Role = from_json(
        "Role",
        json!({
            "rules": [
                {"apiGroups": ["kvcluster.io"], "resources": ["kvclusterbackups"],
                 "verbs": ["get", "list", "watch", "patch"]},
                {"apiGroups": ["kvcluster.io"], "resources": ["kvclusterbackups/status"],
                 "verbs": ["get", "patch"]},
                {"apiGroups": ["kvcluster.io"], "resources": ["kvclusters/status"],
                 "resourceNames": [kvc.name_any()], "verbs": ["get", "patch"]},
                {"apiGroups": ["events.k8s.io"], "resources": ["events"],
                 "verbs": ["create", "patch"]},
            ]
        }),
    )?;
    role.metadata = meta(kvc, name.clone())?;
    let mut role_binding: RoleBinding = from_json(
        "RoleBinding",
        json!({
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name,
                          "namespace": kvc.namespace().unwrap_or_default()}],
        }),
    )?;
    role_binding.metadata = meta(kvc, name.clone())?;
    let deployment = deployment(kvc, &cfg, &rendered, spec)?;
    Ok(Some(AgentObjects {
        config_map,
        service_account,
        role,
        role_binding,
        deployment,
    }))
}

fn labels(kvc: &KVCluster) -> BTreeMap<String, String> {
    let mut l = agent_labels(kvc);
    l.insert(
        "app.kubernetes.io/managed-by".into(),
        "kvcluster-operator".into(),
    );
    l.insert("app.kubernetes.io/component".into(), "backup".into());
    l
}

fn deployment(
    kvc: &KVCluster,
    cfg: &AgentConfig,
    rendered: &str,
    spec: &super::crd::BackupSpec,
) -> Result<Deployment, BuildError> {
    let name = agent_name(kvc);
    // The pod restarts when its configuration changes.
    let digest = ring::digest::digest(&ring::digest::SHA256, rendered.as_bytes());
    let digest: String = digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut volumes = vec![
        json!({"name": "config", "configMap": {"name": name}}),
        json!({"name": "scratch", "emptyDir": {}}),
    ];
    let mut mounts = vec![
        json!({"name": "config", "mountPath": CONFIG_DIR, "readOnly": true}),
        json!({"name": "scratch", "mountPath": SCRATCH_DIR}),
    ];
    if cfg.ca_file.is_some() {
        volumes
            .push(json!({"name": "ca", "configMap": {"name": crate::tls::ca_configmap_name(kvc)}}));
        mounts.push(json!({"name": "ca", "mountPath": CA_DIR, "readOnly": true}));
    }
    if cfg.token_file.is_some() {
        volumes.push(json!({"name": "token", "secret": {
            "secretName": crate::auth::operator_secret_name(kvc),
            "items": [{"key": "token", "path": "token"}]}}));
        mounts.push(json!({"name": "token", "mountPath": TOKEN_DIR, "readOnly": true}));
    }
    let mut env_from = Vec::new();
    if let Some(v) = &spec.destination.volume {
        volumes
            .push(json!({"name": "backup", "persistentVolumeClaim": {"claimName": v.claim_name}}));
        mounts.push(json!({"name": "backup", "mountPath": VOLUME_MOUNT}));
    }
    if let Some(s) = &spec.destination.s3 {
        env_from.push(json!({"secretRef": {"name": s.credentials_secret}}));
    }
    let image = spec
        .agent_image
        .clone()
        .unwrap_or_else(|| DEFAULT_AGENT_IMAGE.to_string());
    let pod_labels = agent_labels(kvc);
    let mut d: Deployment = from_json(
        "Deployment",
        json!({
            "spec": {
                "replicas": 1,
                "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": pod_labels},
                "template": {
                    "metadata": {
                        "labels": pod_labels,
                        "annotations": {"kvcluster.io/agent-config": digest},
                    },
                    "spec": {
                        "serviceAccountName": name,
                        "securityContext": crate::build::pod_security(),
                        "containers": [{
                            "name": "agent",
                            "image": image,
                            "imagePullPolicy": kvc.spec.image_pull_policy,
                            "args": ["--backup-agent", format!("{CONFIG_DIR}/agent.json"),
                                     "--metrics-addr", format!("0.0.0.0:{AGENT_METRICS_PORT}")],
                            "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                            "envFrom": env_from,
                            "ports": [{"name": "metrics", "containerPort": AGENT_METRICS_PORT}],
                            "readinessProbe": {"httpGet": {"path": "/healthz", "port": AGENT_METRICS_PORT}},
                            "livenessProbe": {"httpGet": {"path": "/healthz", "port": AGENT_METRICS_PORT},
                                              "periodSeconds": 20, "failureThreshold": 6},
                            "volumeMounts": mounts,
                            "securityContext": crate::build::container_security(),
                            "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
                        }],
                        "volumes": volumes,
                    }
                }
            }
        }),
    )?;
    d.metadata = meta(kvc, name)?;
    d.metadata.labels = Some(labels(kvc));
    Ok(d)
}
