//! Install manifests, rendered from code: the operator's least-privilege RBAC
//! rules (the one source used by both `manifests/install.yaml` and the Helm
//! chart, which includes the generated `files/rbac-rules.yaml`), the plain
//! `kubectl apply` install bundle and the example KVClusters.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::apps::v1::DeploymentSpec;
use k8s_openapi::api::core::v1::Container;
use k8s_openapi::api::core::v1::ContainerPort;
use k8s_openapi::api::core::v1::EnvVar;
use k8s_openapi::api::core::v1::EnvVarSource;
use k8s_openapi::api::core::v1::HTTPGetAction;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::core::v1::ObjectFieldSelector;
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::api::core::v1::Probe;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::core::v1::ServicePort;
use k8s_openapi::api::core::v1::ServiceSpec;
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use k8s_openapi::api::rbac::v1::PolicyRule;
use k8s_openapi::api::rbac::v1::RoleRef;
use k8s_openapi::api::rbac::v1::Subject;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

/// Namespace of the plain-manifest install.
pub const NAMESPACE: &str = "kvcluster-system";
/// Name shared by the operator's objects.
pub const NAME: &str = "kvcluster-operator";
/// Default operator image.
pub const IMAGE: &str = concat!(
    "docker.io/kvcluster/kvcluster-operator:",
    env!("CARGO_PKG_VERSION")
);

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(groups.iter().map(|s| s.to_string()).collect()),
        resources: Some(resources.iter().map(|s| s.to_string()).collect()),
        verbs: verbs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Exactly what the controller does, nothing more.
pub fn rbac_rules() -> Vec<PolicyRule> {
    const OWN: &[&str] = &["get", "list", "watch", "create", "patch", "update"];
    vec![
        rule(
            &["kvcluster.io"],
            &["kvclusters"],
            &["get", "list", "watch"],
        ),
        rule(
            &["kvcluster.io"],
            &["kvclusters/status"],
            &["get", "patch", "update"],
        ),
        rule(&["apps"], &["statefulsets"], OWN),
        rule(&[""], &["services", "configmaps"], OWN),
        // Each cluster's backup agent (crate::backup): its Deployment, ConfigMap,
        // ServiceAccount, Role and RoleBinding, deleted when spec.backup goes. The
        // operator holds what the agent's Role grants (Kubernetes lets one grant
        // only rights one has): KVClusterBackups and their status.
        rule(
            &["apps"],
            &["deployments"],
            &["get", "create", "patch", "delete"],
        ),
        rule(
            &["rbac.authorization.k8s.io"],
            &["roles", "rolebindings"],
            &["get", "create", "patch", "delete"],
        ),
        rule(&[""], &["configmaps", "serviceaccounts"], &["delete"]),
        rule(
            &["kvcluster.io"],
            &["kvclusterbackups"],
            &["get", "list", "watch", "patch"],
        ),
        rule(
            &["kvcluster.io"],
            &["kvclusterbackups/status"],
            &["get", "patch"],
        ),
        // Certificates: the operator's CA and the member and client-port Secrets it
        // writes, its own token Secret (spec.auth), and the user's Secrets spec.tls,
        // spec.auth and spec.storage.postgres name (read).
        rule(&[""], &["secrets"], &["get", "create", "patch", "update"]),
        rule(&["policy"], &["poddisruptionbudgets"], OWN),
        // Each cluster's own ServiceAccount (no API access of its own) and its
        // NetworkPolicy fencing the peer port.
        rule(&[""], &["serviceaccounts"], OWN),
        rule(&["networking.k8s.io"], &["networkpolicies"], OWN),
        rule(&[""], &["pods"], &["get", "list", "watch"]),
        // Removed members' volumes are deleted per the cluster's reclaim policy, and
        // (policy Delete) owned by the KVCluster through an owner reference (patch).
        rule(
            &[""],
            &["persistentvolumeclaims"],
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        // spec.restore: the Job that writes the restore point into the first
        // member's volume (created before the StatefulSet, which adopts it).
        rule(&["batch"], &["jobs"], &["get", "create", "patch"]),
        rule(&["events.k8s.io"], &["events"], &["create", "patch"]),
        rule(
            &["coordination.k8s.io"],
            &["leases"],
            &["get", "list", "watch", "create", "update", "patch"],
        ),
    ]
}

/// What the operator needs to keep the members' token-review binding
/// (`crate::reviewers`): that one binding, by name, and binding nothing but
/// `system:auth-delegator`. Cluster-scoped, so in a ClusterRole even when the
/// rest of the operator's rights are namespaced.
pub fn reviewer_rules(binding: &str) -> Vec<PolicyRule> {
    vec![
        PolicyRule {
            resource_names: Some(vec![binding.into()]),
            ..rule(
                &["rbac.authorization.k8s.io"],
                &["clusterrolebindings"],
                &["get", "patch"],
            )
        },
        PolicyRule {
            resource_names: Some(vec![crate::reviewers::REVIEWER_ROLE.into()]),
            ..rule(&["rbac.authorization.k8s.io"], &["clusterroles"], &["bind"])
        },
    ]
}

/// The binding members review tokens through, created without subjects (the
/// operator fills them in; `kubectl apply` of this file again leaves them).
fn reviewer_binding(name: &str) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: meta(name, false),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: crate::reviewers::REVIEWER_ROLE.into(),
        },
        subjects: None,
    }
}

fn meta(name: &str, namespaced: bool) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespaced.then(|| NAMESPACE.to_string()),
        labels: Some(labels()),
        ..Default::default()
    }
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), NAME.to_string()),
        (
            "app.kubernetes.io/part-of".to_string(),
            "kvcluster".to_string(),
        ),
    ])
}

fn http_probe(path: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("metrics".into()),
            ..Default::default()
        }),
        period_seconds: Some(10),
        ..Default::default()
    }
}

fn deployment() -> Deployment {
    let selector = BTreeMap::from([("app.kubernetes.io/name".to_string(), NAME.to_string())]);
    let env_from_field = |name: &str, path: &str| EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    Deployment {
        metadata: meta(NAME, true),
        spec: Some(DeploymentSpec {
            // Two replicas: one leads (Lease), one stands by.
            replicas: Some(2),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels()),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(NAME.into()),
                    // The `restricted` Pod Security Standard (the image's user is 10001).
                    security_context: Some(k8s_openapi::api::core::v1::PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(10001),
                        run_as_group: Some(10001),
                        seccomp_profile: Some(k8s_openapi::api::core::v1::SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    containers: vec![Container {
                        security_context: Some(crate::build::statefulset::container_security()),
                        name: "operator".into(),
                        image: Some(IMAGE.into()),
                        image_pull_policy: Some("IfNotPresent".into()),
                        env: Some(vec![
                            env_from_field("POD_NAMESPACE", "metadata.namespace"),
                            env_from_field("HOSTNAME", "metadata.name"),
                        ]),
                        ports: Some(vec![ContainerPort {
                            name: Some("metrics".into()),
                            container_port: 8000,
                            ..Default::default()
                        }]),
                        liveness_probe: Some(http_probe("/healthz")),
                        readiness_probe: Some(http_probe("/healthz")),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn to_yaml<T: Serialize>(
    docs: &mut String,
    obj: &T,
    kind: &str,
    api_version: &str,
) -> Result<(), serde_yaml::Error> {
    let mut v = serde_yaml::to_value(obj)?;
    if let serde_yaml::Value::Mapping(m) = &mut v {
        m.insert("apiVersion".into(), api_version.into());
        m.insert("kind".into(), kind.into());
    }
    docs.push_str("---\n");
    docs.push_str(&serde_yaml::to_string(&v)?);
    Ok(())
}

/// `manifests/install.yaml`: CRD, namespace, RBAC, operator Deployment and metrics Service.
pub fn install_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::from(
        "# Generated by `cargo run -p kvcluster-operator --bin crdgen`; do not edit.\n# kubectl apply -f manifests/install.yaml\n",
    );
    out.push_str(
        crate::crdgen::render()?
            .trim_start_matches(|c| c != '\n')
            .trim_start_matches('\n')
            .trim_start_matches("---\n"),
    );
    let ns = Namespace {
        metadata: meta(NAMESPACE, false),
        ..Default::default()
    };
    to_yaml(&mut out, &ns, "Namespace", "v1")?;
    to_yaml(
        &mut out,
        &ServiceAccount {
            metadata: meta(NAME, true),
            ..Default::default()
        },
        "ServiceAccount",
        "v1",
    )?;
    let role = ClusterRole {
        metadata: meta(NAME, false),
        rules: Some(
            rbac_rules()
                .into_iter()
                .chain(reviewer_rules(crate::reviewers::DEFAULT_BINDING))
                .collect(),
        ),
        ..Default::default()
    };
    to_yaml(
        &mut out,
        &role,
        "ClusterRole",
        "rbac.authorization.k8s.io/v1",
    )?;
    let binding = ClusterRoleBinding {
        metadata: meta(NAME, false),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: NAME.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: NAME.into(),
            namespace: Some(NAMESPACE.into()),
            ..Default::default()
        }]),
    };
    to_yaml(
        &mut out,
        &binding,
        "ClusterRoleBinding",
        "rbac.authorization.k8s.io/v1",
    )?;
    to_yaml(
        &mut out,
        &reviewer_binding(crate::reviewers::DEFAULT_BINDING),
        "ClusterRoleBinding",
        "rbac.authorization.k8s.io/v1",
    )?;
    to_yaml(&mut out, &deployment(), "Deployment", "apps/v1")?;
    let svc = Service {
        metadata: meta(&format!("{NAME}-metrics"), true),
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([(
                "app.kubernetes.io/name".to_string(),
                NAME.to_string(),
            )])),
            ports: Some(vec![ServicePort {
                name: Some("metrics".into()),
                port: 8000,
                target_port: Some(IntOrString::String("metrics".into())),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    to_yaml(&mut out, &svc, "Service", "v1")?;
    Ok(out)
}

/// `charts/kvcluster-operator/files/rbac-rules.yaml`, included by the chart's ClusterRole.
pub fn rbac_rules_yaml() -> Result<String, serde_yaml::Error> {
    Ok(format!(
        "# Generated by `cargo run -p kvcluster-operator --bin crdgen`; do not edit.\n{}",
        serde_yaml::to_string(&rbac_rules())?
    ))
}

/// `manifests/examples/*.yaml`.
pub fn examples() -> Vec<(&'static str, String)> {
    let header = "# Generated by `cargo run -p kvcluster-operator --bin crdgen`; do not edit.\n";
    vec![
        (
            "manifests/examples/minimal.yaml",
            format!(
                "{header}# One member on SQLite: the smallest KVCluster (no fault tolerance).\napiVersion: kvcluster.io/v1alpha1\nkind: KVCluster\nmetadata:\n  name: demo\nspec:\n  replicas: 1\n"
            ),
        ),
        (
            "manifests/examples/sqlite-3-nodes.yaml",
            format!(
                "{header}# Three members on SQLite volumes: survives one member down.\napiVersion: kvcluster.io/v1alpha1\nkind: KVCluster\nmetadata:\n  name: orders\n  namespace: shop\nspec:\n  replicas: 3\n  storage:\n    backend: sqlite\n    size: 1Gi\n    reclaimPolicy: Delete\n    # Row cache per pod (the default); it counts against the memory limit below.\n    cacheSize: 64Mi\n  resources:\n    requests: {{cpu: 100m, memory: 64Mi}}\n    limits: {{memory: 256Mi}}\n"
            ),
        ),
        (
            "manifests/examples/postgres.yaml",
            format!(
                "{header}# Three members storing their state in PostgreSQL (one schema per member).\napiVersion: v1\nkind: Secret\nmetadata:\n  name: orders-pg\n  namespace: shop\nstringData:\n  url: postgres://kv:change-me@postgres.shop.svc:5432/kv?sslmode=prefer\n---\napiVersion: kvcluster.io/v1alpha1\nkind: KVCluster\nmetadata:\n  name: orders-pg\n  namespace: shop\nspec:\n  replicas: 3\n  storage:\n    backend: postgres\n    size: 256Mi\n    postgres:\n      secretName: orders-pg\n      secretKey: url\n"
            ),
        ),
    ]
}

/// Every generated file: path relative to the repository root, and contents.
pub fn generated_files() -> Result<Vec<(String, String)>, serde_yaml::Error> {
    let crd = crate::crdgen::render()?;
    let mut files: Vec<(String, String)> = crate::crdgen::CRD_FILES
        .iter()
        .map(|p| (p.to_string(), crd.clone()))
        .collect();
    files.push((
        "charts/kvcluster-operator/files/rbac-rules.yaml".into(),
        rbac_rules_yaml()?,
    ));
    files.push(("manifests/install.yaml".into(), install_yaml()?));
    files.extend(examples().into_iter().map(|(p, c)| (p.to_string(), c)));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::KVCluster;

    #[test]
    fn examples_are_valid_kvclusters() {
        for (path, yaml) in examples() {
            let kvc = yaml
                .split("\n---\n")
                .filter(|d| d.contains("kind: KVCluster"))
                .map(serde_yaml::from_str::<KVCluster>)
                .next()
                .unwrap_or_else(|| panic!("{path} has a KVCluster"));
            assert!(kvc.is_ok(), "{path}: {kvc:?}");
        }
    }

    #[test]
    fn rbac_is_least_privilege() {
        let rules = rbac_rules();
        // Read-only on pods; the only deletes are of PVCs; secrets only read and
        // written one by one by name (certificates): never listed, watched or deleted.
        for r in &rules {
            let res = r.resources.clone().unwrap_or_default();
            assert!(!res.iter().any(|x| x == "*"), "{r:?}");
            if res.iter().any(|x| x == "secrets") {
                assert_eq!(res, vec!["secrets".to_string()], "{r:?}");
                for v in &r.verbs {
                    assert!(
                        ["get", "create", "patch", "update"].contains(&v.as_str()),
                        "{r:?}"
                    );
                }
            }
            if r.verbs.iter().any(|v| v == "delete") {
                // Removed members' volumes, and a backup agent's objects.
                for x in &res {
                    assert!(
                        [
                            "persistentvolumeclaims",
                            "deployments",
                            "roles",
                            "rolebindings",
                            "configmaps",
                            "serviceaccounts"
                        ]
                        .contains(&x.as_str()),
                        "{r:?}"
                    );
                }
            }
        }
        assert!(rules.iter().any(|r| {
            r.resources
                .as_ref()
                .is_some_and(|x| x.contains(&"kvclusters/status".into()))
        }));
        // The cluster-scoped rights are pinned by name: one binding, one role
        // to bind; never create or delete of any binding.
        for r in reviewer_rules("b") {
            let names = r.resource_names.clone().unwrap_or_default();
            assert_eq!(names.len(), 1, "{r:?}");
            assert!(
                r.verbs
                    .iter()
                    .all(|v| ["get", "patch", "bind"].contains(&v.as_str())),
                "{r:?}"
            );
        }
    }

    #[test]
    fn install_bundle_contains_everything() {
        let y = install_yaml().expect("yaml");
        for kind in [
            "CustomResourceDefinition",
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "Service",
        ] {
            assert!(y.contains(&format!("kind: {kind}\n")), "{kind} missing");
        }
    }
}
