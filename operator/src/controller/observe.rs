//! Observe: the KVCluster's Secrets (certificates, PostgreSQL), StatefulSet,
//! pods and volumes, and the Raft view each serving member reports, turned into
//! the planner's [`Observed`] input.
//!
//! Members are reached by pod IP but called by their stable DNS names, which
//! their certificates name: the client resolves each name to the pod's IP.

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
use crate::membership::Partitioned;
use crate::membership::PodView;
use crate::membership::RaftView;

/// What observation found beyond the planner's input.
pub(super) struct Seen {
    pub obs: Observed,
    /// Pod ordinal → client URL (`https://<member DNS name>:8080`) of serving pods.
    pub urls: BTreeMap<u64, String>,
    /// Member DNS name → pod address, for the client.
    pub resolve: Vec<(String, std::net::SocketAddr)>,
    /// How the operator speaks to members (`None`: plain HTTP).
    pub tls: Option<crate::tls::OperatorTls>,
    /// The operator's admin token (`None`: auth disabled).
    pub token: Option<String>,
    /// The leader's view, for status.
    pub info: Option<ClusterInfo>,
    /// The leader's `/v1/partitions`, for status (`None`: not read).
    pub partitions: Option<kvserver::model::PartitionsInfo>,
    /// Whether the StatefulSet exists yet.
    pub sts_exists: bool,
    /// Member volumes: name, resourceVersion, owner references.
    pub volumes: Vec<(String, Option<String>, Vec<OwnerReference>)>,
}

impl Seen {
    /// A client of the serving members.
    pub fn client(&self, timeout: Duration, attempts: u32) -> Result<KvClient, ReconcileError> {
        member_client(
            self.urls.values().cloned().collect(),
            &self.resolve,
            self.tls.as_ref(),
            self.token.as_deref(),
            timeout,
            attempts,
        )
    }
}

fn member_client(
    endpoints: Vec<String>,
    resolve: &[(String, std::net::SocketAddr)],
    tls: Option<&crate::tls::OperatorTls>,
    token: Option<&str>,
    timeout: Duration,
    attempts: u32,
) -> Result<KvClient, ReconcileError> {
    let endpoints = if endpoints.is_empty() {
        vec!["127.0.0.1:1".to_string()]
    } else {
        endpoints
    };
    let mut b = KvClient::builder(endpoints)
        .timeout(timeout)
        .attempts(attempts);
    if let Some(t) = tls {
        let config =
            kvserver::tls::client::config_from_pem(&t.ca_pem, Some((&t.cert_pem, &t.key_pem)))
                .map_err(|e| ReconcileError::Build(crate::build::BuildError::Tls(e.to_string())))?;
        b = b.tls_config(config);
    }
    for (host, addr) in resolve {
        b = b.resolve(host, *addr);
    }
    if let Some(t) = token {
        b = b.token(t);
    }
    b.build().at("observe", "a client of the members")
}

/// The data of Secret `name`, if it exists.
pub(super) async fn secret_data(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<Option<crate::tls::Data>, ReconcileError> {
    let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), ns);
    Ok(api
        .get_opt(name)
        .await
        .at("observe", format!("Secret {name}"))?
        .as_ref()
        .map(crate::tls::data_of))
}

/// The Secrets `spec.tls` refers to.
pub(super) async fn observe_tls(
    kvc: &KVCluster,
    client: &Client,
) -> Result<crate::tls::Observed, ReconcileError> {
    let ns = kvc.namespace().unwrap_or_default();
    let mut seen = crate::tls::Observed {
        ca: secret_data(client, &ns, &crate::tls::ca_secret_name(kvc)).await?,
        peer: secret_data(client, &ns, &crate::tls::peer_secret_name(kvc)).await?,
        ..Default::default()
    };
    if let Some(name) = crate::tls::client_secret_name(kvc) {
        seen.client = secret_data(client, &ns, &name).await?;
    }
    if let Some(name) = &kvc.spec.tls.peer.ca_secret_name {
        seen.peer_ca = secret_data(client, &ns, name).await?;
    }
    Ok(seen)
}

/// A digest of the PostgreSQL Secrets the pods use: a changed one rolls them.
pub(super) async fn postgres_digest(
    kvc: &KVCluster,
    client: &Client,
) -> Result<Option<String>, ReconcileError> {
    let Some(pg) = kvc
        .spec
        .storage
        .postgres
        .as_ref()
        .filter(|_| kvc.spec.storage.backend == crate::crd::Backend::Postgres)
    else {
        return Ok(None);
    };
    let ns = kvc.namespace().unwrap_or_default();
    let mut all = String::new();
    for name in [
        Some(&pg.secret_name),
        pg.ca_secret_name.as_ref(),
        pg.client_cert_secret_name.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        let data = secret_data(client, &ns, name).await?.unwrap_or_default();
        all.push_str(&format!("{name}\n{data:?}\n"));
    }
    Ok(Some(format!("{:016x}", build::fnv(all.as_bytes()))))
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
    tls: Option<crate::tls::OperatorTls>,
    token: Option<String>,
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
    let scheme = if tls.is_some() { "https" } else { "http" };
    let listed = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .at("observe", format!("Pods {selector}"))?;
    let mut resolve = Vec::new();
    for pod in &listed {
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok());
        if let (Some(id), Some(ip)) = (ordinal(pod, &names.statefulset), ip) {
            resolve.push((
                build::member_host(kvc, id),
                std::net::SocketAddr::new(ip, member_port),
            ));
        }
    }
    let http = member_client(
        Vec::new(),
        &resolve,
        tls.as_ref(),
        token.as_deref(),
        Duration::from_secs(3),
        1,
    )?;
    let mut urls = BTreeMap::new();
    let mut views: Vec<ClusterInfo> = Vec::new();
    for pod in listed {
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
        if let (Some(_), false) = (ip, deleting) {
            let url = format!("{scheme}://{}:{member_port}", build::member_host(kvc, id));
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
    // Where the partitions are, from the leader (any member answers for all):
    // scale-in waits for it on a partitioned cluster.
    let mut partitions = None;
    if let Some(i) = info.as_ref().filter(|i| i.initialized) {
        let url = i
            .leader_id
            .and_then(|l| urls.get(&l))
            .or_else(|| urls.get(&i.node_id));
        obs.partitioned = match url {
            Some(url) => match http.partitions_at(url).await {
                Ok(p) if crate::partitions::is_partitioned(&p) => {
                    let hosting = crate::partitions::hosting(&p);
                    partitions = Some(p);
                    Partitioned::Hosting(hosting)
                }
                Ok(p) => {
                    partitions = Some(p);
                    Partitioned::No
                }
                // A release before partitions: one group.
                Err(kvserver::client::ClientError::Api { status: 404, .. }) => Partitioned::No,
                Err(e) => {
                    tracing::debug!(error = %e, "the partitions are not known this round");
                    partitioned_unknown(kvc)
                }
            },
            None => partitioned_unknown(kvc),
        };
    }
    Ok(Seen {
        obs,
        urls,
        resolve,
        tls,
        token,
        info,
        partitions,
        sts_exists: sts.is_some(),
        volumes,
    })
}

/// What is assumed of a cluster whose partitions could not be read: partitioned
/// (scale-in waits) if the spec or the last status says so, else one group.
fn partitioned_unknown(kvc: &KVCluster) -> Partitioned {
    let was = kvc.status.as_ref().is_some_and(|s| s.partitions.is_some());
    if kvc.spec.partitions > 1 || was {
        Partitioned::Unknown
    } else {
        Partitioned::No
    }
}
