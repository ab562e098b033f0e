//! The reconcile pipeline for one `KVCluster`:
//! observe (objects, pods, volumes, the Raft view from the members) →
//! plan (the pure [`crate::membership::plan`]) → build (pure
//! [`crate::build`]) → apply (server-side apply, one field manager) →
//! membership step (through the kvserver cluster API) → status.
//!
//! Each pass performs at most one membership step, records it in
//! `status.operation`, emits an Event for it (and for every refusal), and
//! requeues: quickly while work is in flight, slowly when converged or
//! blocked, so a blocked cluster does not cause a retry storm.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::Client;
use kube::Resource;
use kube::ResourceExt;
use kube::api::ApiResource;
use kube::api::DeleteParams;
use kube::api::DynamicObject;
use kube::api::ListParams;
use kube::api::Patch;
use kube::api::PatchParams;
use kube::runtime::controller::Action;
use kube::runtime::events::Event;
use kube::runtime::events::EventType;
use kube::runtime::events::Recorder;
use kvserver::client::Client as KvClient;
use kvserver::client::ClientError;
use kvserver::model::ClusterInfo;
use kvserver::model::InitRequest;
use kvserver::model::LearnerRequest;
use kvserver::model::MemberSpec;
use kvserver::model::MembershipRequest;
use serde::Serialize;

use crate::build;
use crate::build::BuildError;
use crate::crd::KVCluster;
use crate::crd::KVClusterStatus;
use crate::crd::MemberStatus;
use crate::crd::MembershipOperation;
use crate::crd::ReclaimPolicy;
use crate::membership;
use crate::membership::Observed;
use crate::membership::PodView;
use crate::membership::RaftView;
use crate::membership::Step;
use crate::metrics::Metrics;

/// The one field manager of every object the operator writes.
pub const FIELD_MANAGER: &str = "kvcluster-operator";

/// Errors at the reconcile boundary.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("invalid KVCluster: {0}")]
    Build(#[from] BuildError),
    #[error("kvserver cluster API: {0}")]
    KvServer(#[from] ClientError),
    #[error("serializing an object: {0}")]
    Json(#[from] serde_json::Error),
}

impl ReconcileError {
    /// Label for the errors metric.
    pub fn kind(&self) -> &'static str {
        match self {
            ReconcileError::Kube(_) => "kube",
            ReconcileError::Build(_) => "spec",
            ReconcileError::KvServer(_) => "kvserver",
            ReconcileError::Json(_) => "serialize",
        }
    }
}

/// Shared by all reconciles.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Port of the kvserver client API on pod IPs: [`build::API_PORT`] in a
    /// cluster; tests that stand in fake members on loopback use free ports.
    pub member_port: u16,
}

impl Context {
    /// The context of one operator instance: events are reported as
    /// [`FIELD_MANAGER`] from `instance` (the pod name).
    pub fn new(client: Client, instance: String, metrics: Arc<Metrics>, member_port: u16) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            kube::runtime::events::Reporter {
                controller: FIELD_MANAGER.into(),
                instance: Some(instance),
            },
        );
        Context {
            client,
            recorder,
            metrics,
            member_port,
        }
    }
}

/// What observation found beyond the planner's input.
struct Seen {
    obs: Observed,
    /// Pod ordinal → client URL (`http://<pod ip>:8080`) of serving pods.
    urls: BTreeMap<u64, String>,
    /// The leader's view, for status.
    info: Option<ClusterInfo>,
    /// Whether the StatefulSet exists yet.
    sts_exists: bool,
    /// Member volumes: name, resourceVersion, owner references.
    volumes: Vec<(String, Option<String>, Vec<OwnerReference>)>,
}

fn ordinal(pod: &Pod, sts: &str) -> Option<u64> {
    pod.name_any()
        .strip_prefix(&format!("{sts}-"))?
        .parse()
        .ok()
}

async fn observe(
    kvc: &KVCluster,
    client: &Client,
    member_port: u16,
) -> Result<Seen, ReconcileError> {
    let ns = kvc.namespace().unwrap_or_default();
    let names = build::names(kvc);
    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let sts = sts_api.get_opt(&names.statefulset).await?;
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
    for pvc in pvcs.list(&ListParams::default().labels(&selector)).await? {
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
        .build()?;
    let mut urls = BTreeMap::new();
    let mut views: Vec<ClusterInfo> = Vec::new();
    for pod in pods.list(&ListParams::default().labels(&selector)).await? {
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

async fn apply<T>(client: &Client, ns: &str, obj: &T) -> Result<(), ReconcileError>
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
    .await?;
    Ok(())
}

/// Applies the PDB as policy/v1, or as policy/v1beta1 on clusters that lack v1 (1.20).
/// Returns a degradation message when neither works.
async fn apply_pdb(
    client: &Client,
    ns: &str,
    pdb: &PodDisruptionBudget,
) -> Result<Option<String>, ReconcileError> {
    match apply(client, ns, pdb).await {
        Ok(()) => Ok(None),
        Err(ReconcileError::Kube(kube::Error::Api(e))) if e.code == 404 => {
            let ar = ApiResource {
                group: "policy".into(),
                version: "v1beta1".into(),
                api_version: "policy/v1beta1".into(),
                kind: "PodDisruptionBudget".into(),
                plural: "poddisruptionbudgets".into(),
            };
            let mut value = serde_json::to_value(pdb)?;
            value["apiVersion"] = "policy/v1beta1".into();
            value["kind"] = "PodDisruptionBudget".into();
            let obj: DynamicObject = serde_json::from_value(value)?;
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

/// Executes one membership step. Returns the event reason/note to publish.
async fn execute(
    kvc: &KVCluster,
    client: &Client,
    seen: &Seen,
    step: &Step,
) -> Result<Option<(String, String)>, ReconcileError> {
    let endpoints: Vec<String> = seen.urls.values().cloned().collect();
    let kv = || {
        KvClient::builder(endpoints.clone())
            .timeout(Duration::from_secs(20))
            .attempts(3)
            .build()
    };
    let spec = |id: u64| MemberSpec {
        api_addr: build::member_api(kvc, id),
        raft_addr: build::member_raft(kvc, id),
    };
    Ok(match step {
        Step::Bootstrap(id) => {
            let url = seen.urls.get(id).cloned().unwrap_or_default();
            kv()?
                .init_at(
                    &url,
                    &InitRequest {
                        members: Some(BTreeMap::from([(*id, spec(*id))])),
                    },
                )
                .await?;
            Some((
                "Bootstrapped".into(),
                format!("initialized the Raft cluster on member {id}"),
            ))
        }
        Step::AddLearner(id) => {
            let s = spec(*id);
            kv()?
                .add_learner(&LearnerRequest {
                    id: *id,
                    api_addr: s.api_addr,
                    raft_addr: s.raft_addr,
                    wait: false,
                })
                .await?;
            Some((
                "LearnerAdded".into(),
                format!("added member {id} as a learner"),
            ))
        }
        Step::Promote(id) => {
            kv()?
                .change_membership(&MembershipRequest {
                    add_voters: vec![*id],
                    ..Default::default()
                })
                .await?;
            Some((
                "MemberPromoted".into(),
                format!("promoted member {id} to voter"),
            ))
        }
        Step::TransferLeader { from, to } => {
            kv()?.transfer_leader(*to).await?;
            Some((
                "LeadershipTransferred".into(),
                format!("moved leadership from {from} to {to} before removing {from}"),
            ))
        }
        Step::RemoveMember { id, replace } => {
            kv()?
                .change_membership(&MembershipRequest {
                    remove_nodes: vec![*id],
                    ..Default::default()
                })
                .await?;
            let why = if *replace {
                "it lost its data; it rejoins as a learner"
            } else {
                "scale-in"
            };
            Some((
                "MemberRemoved".into(),
                format!("removed member {id} from the Raft group ({why})"),
            ))
        }
        Step::ReclaimVolume(id) => {
            let api: Api<PersistentVolumeClaim> =
                Api::namespaced(client.clone(), &kvc.namespace().unwrap_or_default());
            match api
                .delete(&build::pvc_name(kvc, *id), &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
            Some((
                "VolumeReclaimed".into(),
                format!("deleted the volume of removed member {id}"),
            ))
        }
        Step::ScaleStatefulSet(n) if *n != seen.obs.sts_replicas && seen.sts_exists => Some((
            "StatefulSetScaled".into(),
            format!("StatefulSet replicas {} → {n}", seen.obs.sts_replicas),
        )),
        Step::Blocked(reason) => Some(("ScalingBlocked".into(), reason.clone())),
        _ => None,
    })
}

fn condition(
    old: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let prev = old.iter().find(|c| c.type_ == type_);
    let since = match prev {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Time(Timestamp::now()),
    };
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.chars().take(1000).collect(),
        last_transition_time: since,
        observed_generation: generation,
    }
}

fn status_of(
    kvc: &KVCluster,
    seen: &Seen,
    step: &Step,
    pdb_problem: Option<&str>,
) -> KVClusterStatus {
    let old = kvc.status.clone().unwrap_or_default();
    let gen_ = kvc.metadata.generation;
    let raft = seen.obs.raft.as_ref();
    let voters: BTreeSet<u64> = raft.map(|r| r.voters.clone()).unwrap_or_default();
    let ready_voters = voters
        .iter()
        .filter(|v| seen.obs.pods.get(v).is_some_and(|p| p.ready))
        .count();
    let available = raft.is_some_and(|r| r.leader.is_some())
        && ready_voters >= membership::quorum(voters.len().max(1));
    let members = seen
        .info
        .as_ref()
        .map(|i| {
            i.members
                .iter()
                .map(|m| MemberStatus {
                    id: m.id as i64,
                    role: m.role.clone(),
                    ready: seen.obs.pods.get(&m.id).is_some_and(|p| p.ready),
                    lag: m.lag.map(|l| l as i64),
                })
                .collect()
        })
        .unwrap_or(old.members.clone());
    let in_flight = !matches!(step, Step::Idle | Step::Blocked(_));
    let phase = match step {
        Step::Blocked(_) => "Blocked",
        _ if raft.is_none() => "Bootstrapping",
        _ if in_flight
            && (seen.obs.desired != voters.len() as u64 || !matches!(step, Step::Wait(_))) =>
        {
            "Scaling"
        }
        _ if !available || ready_voters < voters.len() => "Degraded",
        _ => "Running",
    };
    let operation = step.operation_kind(&seen.obs).map(|kind| {
        let (node, step_name) = match step {
            Step::Bootstrap(i) => (*i, "Bootstrap"),
            Step::AddLearner(i) => (*i, "AddLearner"),
            Step::Promote(i) => (*i, "Promote"),
            Step::TransferLeader { from, .. } => (*from, "TransferLeader"),
            Step::RemoveMember { id, .. } => (*id, "RemoveVoter"),
            Step::ReclaimVolume(i) => (*i, "ReclaimVolume"),
            Step::ScaleStatefulSet(n) => (n.saturating_sub(1), "ScaleStatefulSet"),
            _ => (0, "Wait"),
        };
        let started_at = old
            .operation
            .as_ref()
            .filter(|o| o.kind == kind && o.node_id == node as i64)
            .and_then(|o| o.started_at.clone());
        MembershipOperation {
            kind: kind.into(),
            node_id: node as i64,
            step: step_name.into(),
            started_at: started_at.or(Some(Timestamp::now().to_string())),
        }
    });
    let blocked_reason = match step {
        Step::Blocked(r) => r.clone(),
        _ => String::new(),
    };
    let progress_msg = match step {
        Step::Wait(r) => r.clone(),
        Step::Idle => "converged".into(),
        other => format!("{other:?}"),
    };
    let mut conditions = vec![
        condition(
            &old.conditions,
            "Available",
            available,
            if available {
                "QuorumHealthy"
            } else {
                "NoQuorum"
            },
            &format!(
                "{ready_voters} of {} voters ready, leader {:?}",
                voters.len(),
                raft.and_then(|r| r.leader)
            ),
            gen_,
        ),
        condition(
            &old.conditions,
            "Progressing",
            in_flight,
            if in_flight {
                "MembershipChanging"
            } else {
                "Converged"
            },
            &progress_msg,
            gen_,
        ),
        condition(
            &old.conditions,
            "Degraded",
            ready_voters < voters.len() || pdb_problem.is_some(),
            if pdb_problem.is_some() {
                "PodDisruptionBudgetUnavailable"
            } else if ready_voters < voters.len() {
                "MembersNotReady"
            } else {
                "AllReady"
            },
            &pdb_problem
                .map(str::to_string)
                .unwrap_or_else(|| format!("{ready_voters} of {} voters ready", voters.len())),
            gen_,
        ),
        condition(
            &old.conditions,
            "ScalingBlocked",
            !blocked_reason.is_empty(),
            if blocked_reason.is_empty() {
                "NotBlocked"
            } else {
                "WouldLoseQuorumOrData"
            },
            // Never an empty message: some API servers (1.20) read "" as null here.
            if blocked_reason.is_empty() {
                "no membership step is refused"
            } else {
                &blocked_reason
            },
            gen_,
        ),
    ];
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    KVClusterStatus {
        observed_generation: gen_,
        phase: Some(phase.into()),
        replicas: voters.len() as i32,
        ready_replicas: ready_voters as i32,
        leader: raft.and_then(|r| r.leader).map(|l| l as i64),
        term: seen.info.as_ref().map(|i| i.term as i64),
        selector: Some(build::selector_string(kvc)),
        members,
        operation,
        conditions,
    }
}

/// Records an event on the KVCluster (`kubectl describe kvc`); a failure to record
/// it is logged, never a reason to fail the reconcile.
async fn publish_event(
    ctx: &Context,
    kvc: &KVCluster,
    type_: EventType,
    reason: String,
    note: String,
) {
    let ev = Event {
        type_,
        reason,
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &kvc.object_ref(&())).await {
        tracing::warn!(error = %e, "could not publish an event");
    }
}

/// One reconcile pass.
pub async fn reconcile(kvc: Arc<KVCluster>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let started = Instant::now();
    let result = reconcile_inner(&kvc, &ctx).await;
    ctx.metrics
        .reconcile_seconds
        .observe(started.elapsed().as_secs_f64());
    let label = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics.reconciles.with_label_values(&[label]).inc();
    if let Err(ReconcileError::Build(e)) = &result {
        // A spec the operator cannot render is the user's to fix, and nothing was
        // applied: say so where `kubectl describe kvc` shows it, not only in our log.
        publish_event(
            &ctx,
            &kvc,
            EventType::Warning,
            "InvalidSpec".into(),
            e.to_string(),
        )
        .await;
    }
    result
}

async fn reconcile_inner(kvc: &KVCluster, ctx: &Context) -> Result<Action, ReconcileError> {
    let ns = kvc.namespace().unwrap_or_default();
    // observe
    let seen = observe(kvc, &ctx.client, ctx.member_port).await?;
    let step = membership::plan(&seen.obs);
    tracing::info!(kvcluster = %kvc.name_any(), namespace = %ns, step = ?step, "planned");
    // build
    let sts_size = match step {
        Step::ScaleStatefulSet(n) => n,
        _ => seen.obs.sts_replicas,
    };
    let voters = seen
        .obs
        .raft
        .as_ref()
        .map(|r| r.voters.len())
        .unwrap_or(1)
        .max(1) as i32;
    let objects = (
        build::config_map(kvc)?,
        build::peer_service(kvc)?,
        build::client_service(kvc)?,
        build::statefulset(kvc, sts_size as i32)?,
        build::pdb(kvc, voters)?,
    );
    // apply
    apply::<ConfigMap>(&ctx.client, &ns, &objects.0).await?;
    apply::<Service>(&ctx.client, &ns, &objects.1).await?;
    apply::<Service>(&ctx.client, &ns, &objects.2).await?;
    apply::<StatefulSet>(&ctx.client, &ns, &objects.3).await?;
    let pdb_problem = apply_pdb(&ctx.client, &ns, &objects.4).await?;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    for (name, rv, refs) in &seen.volumes {
        if let Some(refs) = build::pvc_owner_references(kvc, refs)? {
            // resourceVersion makes it a compare-and-swap of the list.
            let patch =
                serde_json::json!({"metadata": {"resourceVersion": rv, "ownerReferences": refs}});
            pvcs.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
    }
    // membership step
    let event = execute(kvc, &ctx.client, &seen, &step).await?;
    if let Some((reason, note)) = event {
        if let Some(kind) = step.operation_kind(&seen.obs) {
            ctx.metrics
                .membership_operations
                .with_label_values(&[kind, &reason])
                .inc();
        }
        let type_ = if matches!(step, Step::Blocked(_)) {
            EventType::Warning
        } else {
            EventType::Normal
        };
        publish_event(ctx, kvc, type_, reason, note).await;
    }
    if let Some(p) = &pdb_problem {
        tracing::warn!(problem = %p, "degraded");
    }
    // status
    let status = status_of(kvc, &seen, &step, pdb_problem.as_deref());
    let api: Api<KVCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = serde_json::json!({"apiVersion": "kvcluster.io/v1alpha1", "kind": "KVCluster", "status": status});
    api.patch_status(
        &kvc.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(match step {
        Step::Idle => Action::requeue(Duration::from_secs(30)),
        // Refusals are re-checked every 10 s (and at once on any pod change): no
        // retry storm, but a transient refusal does not stall a resize for long.
        Step::Blocked(_) => Action::requeue(Duration::from_secs(10)),
        Step::Wait(_) => Action::requeue(Duration::from_secs(2)),
        _ => Action::requeue(Duration::from_millis(500)),
    })
}

/// Requeue with backoff on errors (the controller's own backoff applies on top).
pub fn error_policy(kvc: Arc<KVCluster>, err: &ReconcileError, ctx: Arc<Context>) -> Action {
    ctx.metrics.errors.with_label_values(&[err.kind()]).inc();
    tracing::warn!(kvcluster = %kvc.name_any(), error = %err, "reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::KVClusterSpec;

    fn kvc() -> KVCluster {
        let mut k = KVCluster::new(
            "orders",
            KVClusterSpec {
                ..serde_yaml::from_str("{}").expect("spec")
            },
        );
        k.metadata.namespace = Some("shop".into());
        k.metadata.uid = Some("0123456789".into());
        k.metadata.generation = Some(4);
        k
    }

    fn seen(voters: &[u64], ready: &[u64], leader: Option<u64>) -> Seen {
        let mut obs = Observed {
            desired: 3,
            sts_replicas: 3,
            ..Default::default()
        };
        for id in 0..3 {
            obs.pods.insert(
                id,
                PodView {
                    exists: true,
                    serving: true,
                    ready: ready.contains(&id),
                    uninitialized: false,
                },
            );
        }
        obs.raft = Some(RaftView {
            leader,
            voters: voters.iter().copied().collect(),
            ..Default::default()
        });
        Seen {
            obs,
            urls: BTreeMap::new(),
            info: None,
            sts_exists: true,
            volumes: Vec::new(),
        }
    }

    fn cond<'a>(s: &'a KVClusterStatus, t: &str) -> &'a Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == t)
            .expect("condition")
    }

    #[test]
    fn status_running_degraded_blocked() {
        let k = kvc();
        let s = status_of(
            &k,
            &seen(&[0, 1, 2], &[0, 1, 2], Some(0)),
            &Step::Idle,
            None,
        );
        assert_eq!(s.phase.as_deref(), Some("Running"));
        // 1.20 API servers read an empty string as null and refuse the status.
        assert!(s.conditions.iter().all(|c| !c.message.is_empty()), "{s:?}");
        assert_eq!(
            (
                s.replicas,
                s.ready_replicas,
                s.leader,
                s.observed_generation
            ),
            (3, 3, Some(0), Some(4))
        );
        assert_eq!(cond(&s, "Available").status, "True");
        assert_eq!(cond(&s, "ScalingBlocked").status, "False");
        assert_eq!(
            s.selector.as_deref(),
            Some("app.kubernetes.io/instance=orders,app.kubernetes.io/name=kvserver")
        );

        let s = status_of(
            &k,
            &seen(&[0, 1, 2], &[0, 1], Some(0)),
            &Step::Wait("1 not ready".into()),
            None,
        );
        assert_eq!(s.phase.as_deref(), Some("Degraded"));
        assert_eq!(cond(&s, "Degraded").status, "True");
        assert_eq!(
            cond(&s, "Available").status,
            "True",
            "2 of 3 is still a quorum"
        );

        let s = status_of(
            &k,
            &seen(&[0, 1, 2], &[0], Some(0)),
            &Step::Blocked("would lose quorum".into()),
            None,
        );
        assert_eq!(s.phase.as_deref(), Some("Blocked"));
        assert_eq!(cond(&s, "ScalingBlocked").status, "True");
        assert_eq!(cond(&s, "ScalingBlocked").message, "would lose quorum");
        assert_eq!(cond(&s, "Available").status, "False");

        let s = status_of(
            &k,
            &seen(&[0, 1, 2], &[0, 1, 2], Some(0)),
            &Step::Idle,
            Some("no PDB API"),
        );
        assert_eq!(
            cond(&s, "Degraded").reason,
            "PodDisruptionBudgetUnavailable"
        );
    }

    #[test]
    fn operation_in_flight_is_recorded_and_keeps_its_start() {
        let mut k = kvc();
        let mut sn = seen(&[0, 1], &[0, 1], Some(0));
        sn.obs.desired = 3;
        let s = status_of(&k, &sn, &Step::AddLearner(2), None);
        let op = s.operation.clone().expect("operation");
        assert_eq!(
            (op.kind.as_str(), op.node_id, op.step.as_str()),
            ("ScaleOut", 2, "AddLearner")
        );
        assert_eq!(s.phase.as_deref(), Some("Scaling"));
        assert_eq!(cond(&s, "Progressing").status, "True");
        // The next pass of the same operation keeps started_at; the transition time of an
        // unchanged condition is kept too.
        k.status = Some(s.clone());
        let s2 = status_of(&k, &sn, &Step::Promote(2), None);
        assert_eq!(
            s2.operation.as_ref().and_then(|o| o.started_at.clone()),
            op.started_at
        );
        assert_eq!(
            cond(&s2, "Progressing").last_transition_time,
            cond(&s, "Progressing").last_transition_time
        );
        let s3 = status_of(
            &k,
            &seen(&[0, 1, 2], &[0, 1, 2], Some(0)),
            &Step::Idle,
            None,
        );
        assert!(s3.operation.is_none());
    }
}
