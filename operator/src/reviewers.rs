//! Lets members check ServiceAccount tokens (`spec.auth.serviceAccounts`):
//! a member asks the API server about each client token with a TokenReview,
//! which its ServiceAccount (`<name>-kvserver`) may only do when bound to the
//! ClusterRole `system:auth-delegator`.
//!
//! One ClusterRoleBinding per operator install holds those subjects (its
//! name, `--reviewer-binding`, comes from the install: `manifests/` and the
//! chart create it without subjects). The operator only ever rewrites that
//! one binding's subject list, so its RBAC is two narrow rules — `patch` on
//! that binding by name and `bind` on `system:auth-delegator` — rather than
//! the power to create or delete any ClusterRoleBinding, which a per-cluster
//! binding would need (a cluster-scoped object also cannot be owned by a
//! KVCluster, so per-cluster bindings would outlive their clusters).
//!
//! The subject list is recomputed from every KVCluster the operator can see:
//! a reconcile does it when its own cluster's entry is missing or stale, and
//! [`sweep`] runs periodically, dropping clusters that were deleted.
//! Subjects the operator cannot account for (other kinds, other names,
//! namespaces it does not watch) are kept as they are.

use std::collections::BTreeSet;

use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use k8s_openapi::api::rbac::v1::Subject;
use kube::Api;
use kube::Client;
use kube::ResourceExt;
use kube::api::ListParams;
use kube::api::Patch;
use kube::api::PatchParams;

use crate::build::service_account_name;
use crate::crd::KVCluster;

/// The binding's name when the install does not say (`manifests/install.yaml`).
pub const DEFAULT_BINDING: &str = "kvcluster-operator-token-reviewers";
/// The ClusterRole members need.
pub const REVIEWER_ROLE: &str = "system:auth-delegator";
/// Suffix of the members' ServiceAccounts (`crate::build::service_account_name`).
const SUFFIX: &str = "-kvserver";

/// Why the binding could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum ReviewerError {
    #[error(
        "the ClusterRoleBinding {0} does not exist: members cannot check ServiceAccount tokens (install the operator with manifests/install.yaml, or the chart with rbac.tokenReviewers: true)"
    )]
    Missing(String),
    #[error(
        "the operator may not update the ClusterRoleBinding {0}: members cannot check ServiceAccount tokens (the install's RBAC lacks the token-reviewer rule)"
    )]
    Forbidden(String),
    #[error("ClusterRoleBinding {binding}: Kubernetes API: {source}")]
    Kube {
        binding: String,
        #[source]
        source: kube::Error,
    },
}

fn subject(ns: &str, name: &str) -> Subject {
    Subject {
        kind: "ServiceAccount".into(),
        api_group: None,
        name: name.into(),
        namespace: Some(ns.into()),
    }
}

/// The subject `kvc` needs when it takes ServiceAccount tokens.
pub fn wanted(kvc: &KVCluster) -> Option<Subject> {
    crate::auth::service_accounts(kvc)?;
    Some(subject(&kvc.namespace()?, &service_account_name(kvc)))
}

/// Whether `current` is right about `kvc`: its subject there exactly when wanted.
pub fn in_step(kvc: &KVCluster, current: &[Subject]) -> bool {
    let Some(ns) = kvc.namespace() else {
        return true;
    };
    let mine = subject(&ns, &service_account_name(kvc));
    let present = current.iter().any(|s| same(s, &mine));
    present == wanted(kvc).is_some()
}

fn same(a: &Subject, b: &Subject) -> bool {
    a.kind == b.kind && a.name == b.name && a.namespace == b.namespace
}

/// The subject list the binding should have, given what it holds now and the
/// KVClusters the operator sees (`watched`: the namespaces it sees them in,
/// `None` for all). Pure; sorted, without duplicates.
pub fn plan(current: &[Subject], kvcs: &[KVCluster], watched: Option<&[String]>) -> Vec<Subject> {
    let ours = |s: &Subject| {
        s.kind == "ServiceAccount"
            && s.name.ends_with(SUFFIX)
            && s.namespace
                .as_ref()
                .is_some_and(|ns| watched.is_none_or(|w| w.contains(ns)))
    };
    let mut out: Vec<Subject> = current.iter().filter(|s| !ours(s)).cloned().collect();
    out.extend(kvcs.iter().filter_map(wanted));
    let key = |s: &Subject| (s.kind.clone(), s.namespace.clone(), s.name.clone());
    out.sort_by_key(key);
    let mut seen = BTreeSet::new();
    out.retain(|s| seen.insert(key(s)));
    out
}

/// The subjects the binding holds now, and its resourceVersion.
pub async fn current(
    client: &Client,
    binding: &str,
) -> Result<(Vec<Subject>, Option<String>), ReviewerError> {
    let api: Api<ClusterRoleBinding> = Api::all(client.clone());
    match api.get_opt(binding).await {
        Ok(Some(b)) => Ok((b.subjects.unwrap_or_default(), b.metadata.resource_version)),
        Ok(None) => Err(ReviewerError::Missing(binding.into())),
        Err(e) => Err(classify(binding, e)),
    }
}

fn classify(binding: &str, e: kube::Error) -> ReviewerError {
    match &e {
        kube::Error::Api(s) if s.code == 403 => ReviewerError::Forbidden(binding.into()),
        kube::Error::Api(s) if s.code == 404 => ReviewerError::Missing(binding.into()),
        _ => ReviewerError::Kube {
            binding: binding.into(),
            source: e,
        },
    }
}

/// Every KVCluster in `watched` (all namespaces when `None`).
async fn all_clusters(
    client: &Client,
    watched: Option<&[String]>,
) -> Result<Vec<KVCluster>, kube::Error> {
    let lp = ListParams::default();
    match watched {
        None => Ok(Api::<KVCluster>::all(client.clone()).list(&lp).await?.items),
        Some(namespaces) => {
            let mut out = Vec::new();
            for ns in namespaces {
                out.extend(
                    Api::<KVCluster>::namespaced(client.clone(), ns)
                        .list(&lp)
                        .await?
                        .items,
                );
            }
            Ok(out)
        }
    }
}

/// Brings the binding's subjects up to date with every KVCluster; returns
/// how many subjects were added and removed (`None`: already right). The
/// write is a compare-and-swap on the binding's resourceVersion, so two
/// writers never lose each other's change (the loser retries next pass).
pub async fn sweep(
    client: &Client,
    binding: &str,
    watched: Option<&[String]>,
) -> Result<Option<(usize, usize)>, ReviewerError> {
    let (now, rv) = current(client, binding).await?;
    sweep_from(client, binding, watched, now, rv).await
}

/// [`sweep`] from a binding already read (`now` at resourceVersion `rv`).
pub async fn sweep_from(
    client: &Client,
    binding: &str,
    watched: Option<&[String]>,
    now: Vec<Subject>,
    rv: Option<String>,
) -> Result<Option<(usize, usize)>, ReviewerError> {
    let kvcs = all_clusters(client, watched)
        .await
        .map_err(|source| ReviewerError::Kube {
            binding: binding.into(),
            source,
        })?;
    let next = plan(&now, &kvcs, watched);
    let added = next
        .iter()
        .filter(|s| !now.iter().any(|c| same(c, s)))
        .count();
    let removed = now
        .iter()
        .filter(|c| !next.iter().any(|s| same(c, s)))
        .count();
    if added == 0 && removed == 0 {
        return Ok(None);
    }
    let patch = serde_json::json!({"metadata": {"resourceVersion": rv}, "subjects": next});
    Api::<ClusterRoleBinding>::all(client.clone())
        .patch(binding, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| classify(binding, e))?;
    tracing::info!(
        binding,
        added,
        removed,
        "updated the members' token-review binding"
    );
    Ok(Some((added, removed)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::AuthMode;
    use crate::crd::KVClusterSpec;
    use crate::crd::ServiceAccountAuthSpec;

    fn kvc(ns: &str, name: &str, reviews: bool) -> KVCluster {
        let spec: KVClusterSpec = serde_yaml::from_str("{}").unwrap_or_else(|e| panic!("{e}"));
        let mut k = KVCluster::new(name, spec);
        k.metadata.namespace = Some(ns.into());
        if reviews {
            k.spec.auth.service_accounts = Some(ServiceAccountAuthSpec::default());
        }
        k
    }

    fn names(s: &[Subject]) -> Vec<String> {
        s.iter()
            .map(|s| format!("{}/{}", s.namespace.clone().unwrap_or_default(), s.name))
            .collect()
    }

    #[test]
    fn clusters_taking_service_account_tokens_are_bound() {
        let kvcs = [
            kvc("shop", "orders", true),
            kvc("shop", "carts", false),
            kvc("bank", "ledger", true),
        ];
        let next = plan(&[], &kvcs, None);
        assert_eq!(
            names(&next),
            ["bank/ledger-kvserver", "shop/orders-kvserver"]
        );
        assert!(kvcs.iter().all(|k| in_step(k, &next)));
        // Turning it off (or auth off) drops the subject; deleting the cluster too.
        let mut off = kvc("shop", "orders", true);
        off.spec.auth.mode = AuthMode::Disabled;
        assert!(!in_step(&off, &next));
        let after = plan(&next, &[off.clone(), kvc("shop", "carts", false)], None);
        assert!(after.is_empty(), "{:?}", names(&after));
        assert!(in_step(&off, &after));
    }

    #[test]
    fn subjects_the_operator_cannot_account_for_are_kept() {
        let foreign = vec![
            subject("other", "orders-kvserver"),
            subject("shop", "monitoring"),
            Subject {
                kind: "User".into(),
                name: "alice".into(),
                api_group: Some("rbac.authorization.k8s.io".into()),
                namespace: None,
            },
            subject("shop", "gone-kvserver"),
        ];
        let watched = ["shop".to_string()];
        let next = plan(&foreign, &[kvc("shop", "orders", true)], Some(&watched));
        // `other` is not watched and `monitoring` is not a member account: kept;
        // `shop/gone-kvserver` has no cluster any more: dropped.
        assert_eq!(
            names(&next),
            [
                "other/orders-kvserver",
                "shop/monitoring",
                "shop/orders-kvserver",
                "/alice"
            ]
        );
        // Planning again changes nothing (and lists no subject twice).
        let again = plan(&next, &[kvc("shop", "orders", true)], Some(&watched));
        assert_eq!(names(&again), names(&next));
    }
}
