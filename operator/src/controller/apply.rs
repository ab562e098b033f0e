//! Apply: server-side apply of the built objects with the one field manager,
//! the PodDisruptionBudget's fallback to `policy/v1beta1` (Kubernetes 1.20),
//! and the owner references of member volumes.

use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Api;
use kube::Client;
use kube::Resource;
use kube::api::ApiResource;
use kube::api::DynamicObject;
use kube::api::Patch;
use kube::api::PatchParams;
use serde::Serialize;

use super::At;
use super::FIELD_MANAGER;
use super::ReconcileError;

pub(super) async fn apply<T>(client: &Client, ns: &str, obj: &T) -> Result<(), ReconcileError>
where
    T: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Serialize
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    let api: Api<T> = Api::namespaced(client.clone(), ns);
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .at("apply", format!("{} {name}", T::kind(&())))?;
    Ok(())
}

/// Applies the PDB as policy/v1, or as policy/v1beta1 on clusters that lack v1 (1.20).
/// Returns a degradation message when neither works.
pub(super) async fn apply_pdb(
    client: &Client,
    ns: &str,
    pdb: &PodDisruptionBudget,
) -> Result<Option<String>, ReconcileError> {
    match apply(client, ns, pdb).await {
        Ok(()) => Ok(None),
        Err(ReconcileError::Kube {
            source: kube::Error::Api(e),
            ..
        }) if e.code == 404 => {
            let ar = ApiResource {
                group: "policy".into(),
                version: "v1beta1".into(),
                api_version: "policy/v1beta1".into(),
                kind: "PodDisruptionBudget".into(),
                plural: "poddisruptionbudgets".into(),
            };
            let mut value = serde_json::to_value(pdb).at("apply", "PodDisruptionBudget")?;
            value["apiVersion"] = "policy/v1beta1".into();
            value["kind"] = "PodDisruptionBudget".into();
            let obj: DynamicObject =
                serde_json::from_value(value).at("apply", "PodDisruptionBudget")?;
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
            let name = obj.metadata.name.clone().unwrap_or_default();
            match api
                .patch(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&obj),
                )
                .await
            {
                Ok(_) => Ok(None),
                Err(e) => Ok(Some(format!(
                    "PodDisruptionBudget could not be applied as policy/v1 nor policy/v1beta1: {e}"
                ))),
            }
        }
        Err(e) => Err(e),
    }
}

/// Deletes the backup agent's objects named `name` (`spec.backup` was removed);
/// nothing to do when its Deployment is absent.
pub(super) async fn remove_backup_agent(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<(), ReconcileError> {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::Role;
    use k8s_openapi::api::rbac::v1::RoleBinding;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    if deployments
        .get_opt(name)
        .await
        .at("apply", format!("Deployment {name}"))?
        .is_none()
    {
        return Ok(());
    }
    let dp = kube::api::DeleteParams::default();
    let gone = |r: Result<_, kube::Error>| match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    };
    gone(deployments.delete(name, &dp).await.map(|_| ()))
        .at("apply", format!("deleting Deployment {name}"))?;
    gone(
        Api::<RoleBinding>::namespaced(client.clone(), ns)
            .delete(name, &dp)
            .await
            .map(|_| ()),
    )
    .at("apply", format!("deleting RoleBinding {name}"))?;
    gone(
        Api::<Role>::namespaced(client.clone(), ns)
            .delete(name, &dp)
            .await
            .map(|_| ()),
    )
    .at("apply", format!("deleting Role {name}"))?;
    gone(
        Api::<ServiceAccount>::namespaced(client.clone(), ns)
            .delete(name, &dp)
            .await
            .map(|_| ()),
    )
    .at("apply", format!("deleting ServiceAccount {name}"))?;
    gone(
        Api::<ConfigMap>::namespaced(client.clone(), ns)
            .delete(name, &dp)
            .await
            .map(|_| ()),
    )
    .at("apply", format!("deleting ConfigMap {name}"))?;
    Ok(())
}
