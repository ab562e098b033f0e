//! What fences a cluster's pods: their own ServiceAccount (no API access, no
//! token mounted), a NetworkPolicy admitting the peer port only from the
//! cluster's own pods, and the rule that a LoadBalancer Service needs client
//! TLS and auth. Pure, like the rest of `build`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::networking::v1::NetworkPolicyIngressRule;
use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use k8s_openapi::api::networking::v1::NetworkPolicyPort;
use k8s_openapi::api::networking::v1::NetworkPolicySpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::API_PORT;
use super::BuildError;
use super::RAFT_PORT;
use super::meta;
use super::selector_labels;
use crate::crd::KVCluster;
use crate::crd::TlsMode;

/// The pods' ServiceAccount: `<name>-kvserver`.
pub fn service_account_name(kvc: &KVCluster) -> String {
    format!("{}-kvserver", kvc.name_any())
}

/// A ServiceAccount of the cluster's own, bound to no role: kvserver needs no
/// Kubernetes API access, so its pods neither share the namespace's `default`
/// account nor mount a token.
pub fn service_account(kvc: &KVCluster) -> Result<ServiceAccount, BuildError> {
    Ok(ServiceAccount {
        metadata: meta(kvc, service_account_name(kvc))?,
        automount_service_account_token: Some(false),
        ..Default::default()
    })
}

/// Labels of the operator's own pods (`crate::manifests`).
fn operator_labels() -> BTreeMap<String, String> {
    BTreeMap::from([(
        "app.kubernetes.io/name".to_string(),
        crate::manifests::NAME.to_string(),
    )])
}

fn tcp(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

/// The NetworkPolicy of the cluster's pods (`None` with `spec.network.policy: false`):
/// - the peer port only from the cluster's own pods (with the client port, which
///   members use to relay requests to the leader);
/// - the client port from the operator's pods (in `operator_namespace` when it is
///   known, else in any namespace), the cluster's backup agent, and from
///   `spec.network.allowedClients`, or from anywhere when that is unset.
pub fn network_policy(
    kvc: &KVCluster,
    operator_namespace: Option<&str>,
) -> Result<Option<NetworkPolicy>, BuildError> {
    if kvc.spec.network.policy == Some(false) {
        return Ok(None);
    }
    let members = NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(selector_labels(kvc)),
            ..Default::default()
        }),
        ..Default::default()
    };
    let operator = NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(operator_labels()),
            ..Default::default()
        }),
        namespace_selector: Some(LabelSelector {
            match_labels: operator_namespace.map(|ns| {
                BTreeMap::from([("kubernetes.io/metadata.name".to_string(), ns.to_string())])
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut ingress = vec![
        NetworkPolicyIngressRule {
            from: Some(vec![members]),
            ports: Some(vec![tcp(RAFT_PORT), tcp(API_PORT)]),
        },
        NetworkPolicyIngressRule {
            from: Some(vec![operator]),
            ports: Some(vec![tcp(API_PORT)]),
        },
    ];
    if kvc.spec.backup.is_some() {
        // The cluster's backup agent (crate::backup) reads backups and the watch feed.
        ingress.push(NetworkPolicyIngressRule {
            from: Some(vec![NetworkPolicyPeer {
                pod_selector: Some(LabelSelector {
                    match_labels: Some(crate::backup::build::agent_labels(kvc)),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ports: Some(vec![tcp(API_PORT)]),
        });
    }
    // `from` absent admits every source; an empty list would admit none.
    match &kvc.spec.network.allowed_clients {
        None => ingress.push(NetworkPolicyIngressRule {
            from: None,
            ports: Some(vec![tcp(API_PORT)]),
        }),
        Some(peers) if peers.is_empty() => {}
        Some(peers) => ingress.push(NetworkPolicyIngressRule {
            from: Some(peers.clone()),
            ports: Some(vec![tcp(API_PORT)]),
        }),
    }
    Ok(Some(NetworkPolicy {
        metadata: meta(kvc, kvc.name_any())?,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(kvc)),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(ingress),
            ..Default::default()
        }),
    }))
}

/// A LoadBalancer Service reaches beyond the cluster: refused unless the client
/// port has TLS and requires credentials.
pub fn check_exposure(kvc: &KVCluster) -> Result<(), BuildError> {
    let exposed = kvc.spec.service.type_ == "LoadBalancer";
    let protected = kvc.spec.tls.client.mode != TlsMode::Disabled && crate::auth::enabled(kvc);
    if exposed && !protected {
        return Err(BuildError::UnsafeExposure);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The pods against the `restricted` Pod Security Standard, the
    //! NetworkPolicy reviewed rule by rule (the local test cluster's network
    //! plugin does not enforce NetworkPolicy, so its rules are proven here), and
    //! the exposure rule.

    use k8s_openapi::api::core::v1::PodSpec;

    use super::*;
    use crate::crd::KVClusterSpec;

    fn kvc(spec_yaml: &str) -> KVCluster {
        let spec: KVClusterSpec = serde_yaml::from_str(spec_yaml).unwrap_or_else(|e| panic!("{e}"));
        let mut k = KVCluster::new("orders", spec);
        k.metadata.namespace = Some("shop".into());
        k.metadata.uid = Some("0123456789abcdef".into());
        k
    }

    fn pod(k: &KVCluster) -> PodSpec {
        super::super::statefulset(k, 3, None)
            .ok()
            .and_then(|s| s.spec)
            .and_then(|s| s.template.spec)
            .unwrap_or_else(|| panic!("a pod template"))
    }

    #[test]
    fn pods_pass_the_restricted_pod_security_standard() {
        for spec in [
            "{}",
            "{auth: {mode: disabled}, tls: {client: {mode: disabled}}}",
            "{storage: {backend: postgres, postgres: {secretName: pg, secretKey: url, caSecretName: pg-ca}}}",
        ] {
            let p = pod(&kvc(spec));
            let sc = p.security_context.clone().unwrap_or_default();
            assert_eq!(sc.run_as_non_root, Some(true), "{spec}");
            assert!(sc.run_as_user.is_some_and(|u| u != 0), "{spec}");
            assert_eq!(
                sc.seccomp_profile.map(|s| s.type_),
                Some("RuntimeDefault".into())
            );
            assert!(
                p.host_network != Some(true)
                    && p.host_pid != Some(true)
                    && p.host_ipc != Some(true)
            );
            // The cluster's own account, and no Kubernetes API token in the pod.
            assert_eq!(p.service_account_name.as_deref(), Some("orders-kvserver"));
            assert_eq!(p.automount_service_account_token, Some(false));
            for c in p
                .containers
                .iter()
                .chain(p.init_containers.iter().flatten())
            {
                let sc = c.security_context.clone().unwrap_or_default();
                assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
                assert_ne!(sc.privileged, Some(true));
                let caps = sc.capabilities.unwrap_or_default();
                assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
                assert!(caps.add.unwrap_or_default().is_empty());
                assert_eq!(sc.read_only_root_filesystem, Some(true));
                assert!(c.ports.iter().flatten().all(|p| p.host_port.is_none()));
                let requests = c
                    .resources
                    .clone()
                    .and_then(|r| r.requests)
                    .unwrap_or_default();
                assert!(requests.contains_key("cpu") && requests.contains_key("memory"));
            }
            // Volume types the restricted profile allows.
            for v in p.volumes.iter().flatten() {
                assert!(
                    v.config_map.is_some()
                        || v.secret.is_some()
                        || v.projected.is_some()
                        || v.empty_dir.is_some()
                        || v.persistent_volume_claim.is_some(),
                    "volume {} of a type restricted forbids",
                    v.name
                );
                assert!(v.host_path.is_none());
            }
        }
    }

    #[test]
    fn the_auth_volume_carries_both_token_files() {
        let p = pod(&kvc("{auth: {tokenSecretName: app-tokens}}"));
        let auth = p
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "auth")
            .and_then(|v| v.projected.clone())
            .unwrap_or_else(|| panic!("an auth volume"));
        let sources: Vec<(String, String)> = auth
            .sources
            .iter()
            .flatten()
            .filter_map(|s| s.secret.as_ref())
            .map(|s| {
                let path = s.items.iter().flatten().map(|i| i.path.clone()).collect();
                (s.name.clone(), path)
            })
            .collect();
        assert_eq!(
            sources,
            [
                (
                    "orders-auth-operator".to_string(),
                    "operator.yaml".to_string()
                ),
                ("app-tokens".to_string(), "user.yaml".to_string())
            ]
        );
        assert!(
            pod(&kvc("{auth: {mode: disabled}}"))
                .volumes
                .iter()
                .flatten()
                .all(|v| v.name != "auth")
        );
    }

    fn rules(np: &NetworkPolicy) -> Vec<NetworkPolicyIngressRule> {
        np.spec.clone().and_then(|s| s.ingress).unwrap_or_default()
    }

    fn ports(r: &NetworkPolicyIngressRule) -> Vec<i32> {
        r.ports
            .iter()
            .flatten()
            .filter_map(|p| match &p.port {
                Some(IntOrString::Int(n)) => Some(*n),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_network_policy_fences_the_peer_port_to_members() {
        let k = kvc("{}");
        let np = network_policy(&k, Some("kvcluster-system"))
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("a policy"));
        println!(
            "{}",
            serde_yaml::to_string(&np).unwrap_or_else(|e| panic!("{e}"))
        );
        let spec = np.spec.clone().unwrap_or_default();
        assert_eq!(
            spec.pod_selector.and_then(|s| s.match_labels),
            Some(selector_labels(&k)),
            "it selects this cluster's pods"
        );
        assert_eq!(spec.policy_types, Some(vec!["Ingress".to_string()]));
        let rules = rules(&np);
        // The peer port: only in the rule whose sources are this cluster's pods.
        for r in &rules {
            if ports(r).contains(&RAFT_PORT) {
                let from = r
                    .from
                    .clone()
                    .unwrap_or_else(|| panic!("peer port open to all"));
                assert_eq!(from.len(), 1);
                assert!(from[0].namespace_selector.is_none() && from[0].ip_block.is_none());
                assert_eq!(
                    from[0].pod_selector.clone().and_then(|s| s.match_labels),
                    Some(selector_labels(&k))
                );
            }
            assert!(r.ports.is_some(), "every rule names its ports");
        }
        // The operator, from its namespace, on the client port only.
        let op = rules
            .iter()
            .find(|r| {
                r.from.iter().flatten().any(|p| {
                    p.pod_selector.clone().and_then(|s| s.match_labels) == Some(operator_labels())
                })
            })
            .unwrap_or_else(|| panic!("an operator rule"));
        assert_eq!(ports(op), [API_PORT]);
        let ns = op
            .from
            .iter()
            .flatten()
            .find_map(|p| p.namespace_selector.clone());
        assert_eq!(
            ns.and_then(|s| s.match_labels),
            Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                "kvcluster-system".to_string()
            )]))
        );
        // allowedClients unset: the client port (only) is open to every source.
        let open: Vec<_> = rules.iter().filter(|r| r.from.is_none()).collect();
        assert_eq!(open.len(), 1);
        assert_eq!(ports(open[0]), [API_PORT]);
    }

    #[test]
    fn allowed_clients_replace_the_open_client_rule() {
        let k = kvc("{network: {allowedClients: [{podSelector: {matchLabels: {app: billing}}}]}}");
        let np = network_policy(&k, None)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("a policy"));
        let rules = rules(&np);
        assert!(
            rules.iter().all(|r| r.from.is_some()),
            "nothing open to all"
        );
        let clients = rules
            .iter()
            .find(|r| {
                r.from.iter().flatten().any(|p| {
                    p.pod_selector.clone().and_then(|s| s.match_labels)
                        == Some(BTreeMap::from([("app".to_string(), "billing".to_string())]))
                })
            })
            .unwrap_or_else(|| panic!("the clients' rule"));
        assert_eq!(ports(clients), [API_PORT]);
        // No operator namespace known: the operator's pods in any namespace.
        let op = rules
            .iter()
            .flat_map(|r| r.from.iter().flatten())
            .find(|p| {
                p.pod_selector.clone().and_then(|s| s.match_labels) == Some(operator_labels())
            })
            .unwrap_or_else(|| panic!("an operator peer"));
        assert_eq!(op.namespace_selector, Some(LabelSelector::default()));
        // An empty list: only members and the operator.
        let closed = kvc("{network: {allowedClients: []}}");
        let np = network_policy(&closed, None)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("a policy"));
        assert_eq!(np.spec.and_then(|s| s.ingress).map(|i| i.len()), Some(2));
        // Opted out: no policy.
        assert!(
            network_policy(&kvc("{network: {policy: false}}"), None)
                .ok()
                .flatten()
                .is_none()
        );
    }

    #[test]
    fn load_balancers_need_client_tls_and_auth() {
        assert!(check_exposure(&kvc("{service: {type: LoadBalancer}}")).is_ok());
        for unsafe_spec in [
            "{service: {type: LoadBalancer}, auth: {mode: disabled}}",
            "{service: {type: LoadBalancer}, tls: {client: {mode: disabled}}}",
        ] {
            assert_eq!(
                check_exposure(&kvc(unsafe_spec)),
                Err(BuildError::UnsafeExposure)
            );
        }
        assert!(
            check_exposure(&kvc("{service: {type: NodePort}, auth: {mode: disabled}}")).is_ok()
        );
    }

    #[test]
    fn the_service_account_has_no_token() {
        let sa = service_account(&kvc("{}")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sa.metadata.name.as_deref(), Some("orders-kvserver"));
        assert_eq!(sa.automount_service_account_token, Some(false));
    }
}
