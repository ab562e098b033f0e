//! Observe: the KVCluster's StatefulSet, pods and volumes, and the Raft view
//! each serving member reports, turned into the planner's [`Observed`] input.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Api;
use kube::Client;
use kube::ResourceExt;
use kube::api::ListParams;
use kvserver::client::Client as KvClient;
use kvserver::model::ClusterInfo;

use super::At;
use super::ReconcileError;
use crate::build;
use crate::crd::KVCluster;
use crate::crd::ReclaimPolicy;
use crate::membership::Observed;
use crate::membership::PodView;
use crate::membership::RaftView;

/// What observation found beyond the planner's input.
pub(super) struct Seen {
    pub obs: Observed,
    /// Pod ordinal → client URL (`http://<pod ip>:8080`) of serving pods.
    pub urls: BTreeMap<u64, String>,
    /// The leader's view, for status.
    pub info: Option<ClusterInfo>,
    /// Whether the StatefulSet exists yet.
    pub sts_exists: bool,
    /// Member volumes: name, resourceVersion, owner references.
    pub volumes: Vec<(String, Option<String>, Vec<OwnerReference>)>,
}

fn ordinal(pod: &Pod, sts: &str) -> Option<u64> {
    pod.name_any()
        .strip_prefix(&format!("{sts}-"))?
        .parse()
        .ok()
}

pub(super) async fn observe(
    kvc: &KVCluster,
    client: &Client,
    member_port: u16,
) -> Result<Seen, ReconcileError> {
    let ns = kvc.namespace().unwrap_or_default();
    let names = build::names(kvc);
    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let sts = sts_api
        .get_opt(&names.statefulset)
        .await
        .at("observe", format!("StatefulSet {}", names.statefulset))?;
    let sts_replicas = sts
        .as_ref()
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.replicas)
        .unwrap_or(0)
        .max(0) as u64;
    let selector = build::selector_string(kvc);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let mut obs = Observed {
        desired: kvc.spec.replicas.max(1) as u64,
        sts_replicas,
        formed_before: kvc.status.as_ref().is_some_and(|s| !s.members.is_empty()),
        reclaim_delete: kvc.spec.storage.reclaim_policy == ReclaimPolicy::Delete,
        ..Default::default()
    };
    let mut volumes = Vec::new();
    for pvc in pvcs
        .list(&ListParams::default().labels(&selector))
        .await
        .at("observe", format!("PersistentVolumeClaims {selector}"))?
    {
        volumes.push((
            pvc.name_any(),
            pvc.metadata.resource_version.clone(),
            pvc.metadata.owner_references.clone().unwrap_or_default(),
        ));
        if let Some(o) = pvc
            .name_any()
            .strip_prefix(&format!("data-{}-", names.statefulset))
            .and_then(|s| s.parse().ok())
        {
            obs.pvcs.insert(o);
        }
    }
    let http = KvClient::builder(["127.0.0.1:1"])
        .timeout(Duration::from_secs(3))
        .attempts(1)
        .build()
        .at("observe", "a client of the members")?;
    let mut urls = BTreeMap::new();
    let mut views: Vec<ClusterInfo> = Vec::new();
    for pod in pods
        .list(&ListParams::default().labels(&selector))
        .await
        .at("observe", format!("Pods {selector}"))?
    {
        let Some(id) = ordinal(&pod, &names.statefulset) else {
            continue;
        };
        let deleting = pod.metadata.deletion_timestamp.is_some();
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
        let mut view = PodView {
            exists: !deleting,
            ready,
            ..Default::default()
        };
        if let (Some(ip), false) = (ip, deleting) {
            let url = format!("http://{ip}:{member_port}");
            match http.cluster_at(&url).await {
                Ok(info) => {
                    view.serving = true;
                    view.uninitialized = !info.initialized;
                    urls.insert(id, url);
                    views.push(info);
                }
                Err(e) => {
                    tracing::debug!(pod = %pod.name_any(), error = %e, "member not answering")
                }
            }
        }
        obs.pods.insert(id, view);
    }
    // The leader's view is authoritative (it alone knows replication lag).
    let info = views
        .iter()
        .find(|v| v.role == "leader")
        .cloned()
        .or_else(|| views.iter().find(|v| v.initialized).cloned());
    obs.raft = info.as_ref().filter(|i| i.initialized).map(|i| RaftView {
        leader: i.leader_id,
        voters: i
            .members
            .iter()
            .filter(|m| m.role == "voter")
            .map(|m| m.id)
            .collect(),
        learners: i
            .members
            .iter()
            .filter(|m| m.role == "learner")
            .map(|m| m.id)
            .collect(),
        lag: i
            .members
            .iter()
            .filter_map(|m| m.lag.map(|l| (m.id, l)))
            .collect(),
        joint: i.joint,
    });
    Ok(Seen {
        obs,
        urls,
        info,
        sts_exists: sts.is_some(),
        volumes,
    })
}
