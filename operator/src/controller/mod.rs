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
//!
//! Layout: this file holds the pipeline itself ([`reconcile`]); each stage
//! that talks to the world has its own file: `observe` (objects, pods, the
//! members' Raft view), `apply` (server-side apply), `execute` (one membership
//! step), `status` (conditions and the status subresource, pure); the gates
//! `restore` (spec.restore) and `recovery` (spec.recovery) hold the StatefulSet
//! back while they work.

mod apply;
mod execute;
mod observe;
mod recovery;
mod restore;
mod status;

use self::apply::apply;
use self::apply::apply_pdb;
use self::execute::execute;
use self::observe::observe;
use self::status::status_of;

use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Api;
use kube::Client;
use kube::Resource;
use kube::ResourceExt;
use kube::api::Patch;
use kube::api::PatchParams;
use kube::runtime::controller::Action;
use kube::runtime::events::Event;
use kube::runtime::events::EventType;
use kube::runtime::events::Recorder;
use kvserver::client::ClientError;

use crate::build;
use crate::build::BuildError;
use crate::crd::KVCluster;
use crate::membership;
use crate::membership::Step;
use crate::metrics::Metrics;

/// The one field manager of every object the operator writes.
pub const FIELD_MANAGER: &str = "kvcluster-operator";

/// Errors at the reconcile boundary. Each says at which stage of the pipeline
/// (observe, apply, membership, status) it happened and on which object, so a
/// `reconcile failed` log line is enough to find the step; [`Self::kind`] stays
/// the metric label.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("{stage} {object}: Kubernetes API: {source}")]
    Kube {
        stage: &'static str,
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error("invalid KVCluster: {0}")]
    Build(#[from] BuildError),
    #[error("{stage} ({what}): kvserver cluster API: {source}")]
    KvServer {
        stage: &'static str,
        what: String,
        #[source]
        source: ClientError,
    },
    #[error("{stage} {object}: serializing: {source}")]
    Json {
        stage: &'static str,
        object: String,
        #[source]
        source: serde_json::Error,
    },
}

impl ReconcileError {
    /// Label for the errors metric.
    pub fn kind(&self) -> &'static str {
        match self {
            ReconcileError::Kube { .. } => "kube",
            ReconcileError::Build(_) => "spec",
            ReconcileError::KvServer { .. } => "kvserver",
            ReconcileError::Json { .. } => "serialize",
        }
    }
}

/// Names the stage and object of a failed call: `api.get(..).await.at("observe", "StatefulSet orders")?`.
pub(crate) trait At<T> {
    fn at(self, stage: &'static str, object: impl std::fmt::Display) -> Result<T, ReconcileError>;
}

impl<T> At<T> for Result<T, kube::Error> {
    fn at(self, stage: &'static str, object: impl std::fmt::Display) -> Result<T, ReconcileError> {
        self.map_err(|source| ReconcileError::Kube {
            stage,
            object: object.to_string(),
            source,
        })
    }
}

impl<T> At<T> for Result<T, ClientError> {
    fn at(self, stage: &'static str, what: impl std::fmt::Display) -> Result<T, ReconcileError> {
        self.map_err(|source| ReconcileError::KvServer {
            stage,
            what: what.to_string(),
            source,
        })
    }
}

impl<T> At<T> for Result<T, serde_json::Error> {
    fn at(self, stage: &'static str, object: impl std::fmt::Display) -> Result<T, ReconcileError> {
        self.map_err(|source| ReconcileError::Json {
            stage,
            object: object.to_string(),
            source,
        })
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
    /// The operator's own namespace (`POD_NAMESPACE`), which the clusters'
    /// NetworkPolicies admit to the client port; unknown: any namespace.
    pub operator_namespace: Option<String>,
    /// The namespaces the operator watches (`--watch-namespaces`); `None`: all.
    pub watched: Option<Vec<String>>,
    /// The ClusterRoleBinding that lets members review ServiceAccount tokens
    /// (`crate::reviewers`).
    pub reviewer_binding: String,
    /// Each partitioned cluster's placement as last observed (by uid), to
    /// report each partition whose replicas moved (`crate::partitions::moves`).
    /// In memory: after an operator restart the first observation sets it.
    pub placements:
        std::sync::Mutex<std::collections::HashMap<String, crate::partitions::Placement>>,
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
            operator_namespace: std::env::var("POD_NAMESPACE")
                .ok()
                .filter(|n| !n.is_empty()),
            watched: None,
            reviewer_binding: crate::reviewers::DEFAULT_BINDING.into(),
            placements: Default::default(),
        }
    }
}

/// Clusters whose placement is remembered at most (see [`partition_moves`]).
const MAX_REMEMBERED: usize = 4096;

/// The partitions whose replicas moved since this cluster was last observed
/// (one note each, see `crate::partitions::moves`), remembering this observation.
fn partition_moves(
    ctx: &Context,
    kvc: &KVCluster,
    seen: Option<&kvserver::model::PartitionsInfo>,
) -> Vec<String> {
    let Some(info) = seen.filter(|p| crate::partitions::is_partitioned(p)) else {
        return Vec::new();
    };
    let now = crate::partitions::placement_of(info);
    let uid = kvc.uid().unwrap_or_default();
    let mut all = ctx.placements.lock().unwrap_or_else(|p| p.into_inner());
    // Deleted clusters are never seen again (their objects are collected by
    // owner references, with no hook here): bound what they leave behind.
    if all.len() >= MAX_REMEMBERED && !all.contains_key(&uid) {
        all.clear();
    }
    let notes = all
        .get(&uid)
        .map(|before| crate::partitions::moves(before, &now))
        .unwrap_or_default();
    all.insert(uid, now);
    notes
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

/// Brings the token-review binding in step with this cluster (its members may
/// review ServiceAccount tokens exactly when `spec.auth.serviceAccounts` is
/// set). A binding the operator cannot update is the install's problem, not
/// the cluster's: said in a Warning event when this cluster needs it, and the
/// reconcile goes on (its members answer ServiceAccount tokens with 503).
async fn review_binding(kvc: &KVCluster, ctx: &Context) {
    let binding = ctx.reviewer_binding.as_str();
    let result = match crate::reviewers::current(&ctx.client, binding).await {
        Ok((subjects, _)) if crate::reviewers::in_step(kvc, &subjects) => Ok(None),
        Ok((subjects, rv)) => {
            let watched = ctx.watched.as_deref();
            crate::reviewers::sweep_from(&ctx.client, binding, watched, subjects, rv).await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(_) => {}
        Err(e) if crate::reviewers::wanted(kvc).is_some() => {
            tracing::warn!(kvcluster = %kvc.name_any(), error = %e, "token reviews unavailable");
            publish_event(
                ctx,
                kvc,
                EventType::Warning,
                "TokenReviewsUnavailable".into(),
                e.to_string(),
            )
            .await;
        }
        Err(e) => tracing::debug!(error = %e, "token-review binding not checked"),
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
    // observe (the certificates first: they say how to reach the members)
    let tls_seen = observe::observe_tls(kvc, &ctx.client).await?;
    let ordinals: Vec<u64> = (0..crate::tls::MAX_MEMBERS).collect();
    let certs = crate::tls::plan(kvc, &tls_seen, &ordinals, std::time::SystemTime::now())?;
    let secrets_digest = observe::postgres_digest(kvc, &ctx.client).await?;
    // A LoadBalancer without TLS and auth is refused before anything is applied.
    build::check_exposure(kvc)?;
    crate::recovery::check(kvc)?;
    let auth_stored = match crate::auth::enabled(kvc) {
        true => {
            observe::secret_data(&ctx.client, &ns, &crate::auth::operator_secret_name(kvc)).await?
        }
        false => None,
    };
    let fresh = crate::auth::new_token()?;
    let auth = crate::auth::plan(kvc, auth_stored.as_ref(), || fresh)?;
    let seen = observe(
        kvc,
        &ctx.client,
        ctx.member_port,
        certs.operator.clone(),
        auth.token.clone(),
    )
    .await?;
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
        build::statefulset(kvc, sts_size as i32, secrets_digest.as_deref())?,
        build::pdb(kvc, voters)?,
        build::service_account(kvc)?,
        build::network_policy(kvc, ctx.operator_namespace.as_deref())?,
    );
    let backup_agent = crate::backup::build::agent_objects(kvc)?;
    // apply: certificates before the pods that mount them
    apply::<Secret>(&ctx.client, &ns, &certs.ca_secret).await?;
    apply::<Secret>(&ctx.client, &ns, &certs.peer_secret).await?;
    if let Some(s) = &certs.client_secret {
        apply::<Secret>(&ctx.client, &ns, s).await?;
    }
    if let Some(cm) = &certs.ca_configmap {
        apply::<ConfigMap>(&ctx.client, &ns, cm).await?;
    }
    if !certs.issued.is_empty() {
        publish_event(
            ctx,
            kvc,
            EventType::Normal,
            "CertificatesIssued".into(),
            certs.issued.join("; "),
        )
        .await;
    }
    if let Some(s) = &auth.secret {
        apply::<Secret>(&ctx.client, &ns, s).await?;
        if auth.issued {
            publish_event(
                ctx,
                kvc,
                EventType::Normal,
                "TokenIssued".into(),
                format!(
                    "made the operator's admin token (Secret {})",
                    crate::auth::operator_secret_name(kvc)
                ),
            )
            .await;
        }
    }
    apply::<ServiceAccount>(&ctx.client, &ns, &objects.5).await?;
    review_binding(kvc, ctx).await;
    if let Some(np) = &objects.6 {
        apply::<NetworkPolicy>(&ctx.client, &ns, np).await?;
    }
    apply::<ConfigMap>(&ctx.client, &ns, &objects.0).await?;
    apply::<Service>(&ctx.client, &ns, &objects.1).await?;
    apply::<Service>(&ctx.client, &ns, &objects.2).await?;
    // A restore (spec.restore) fills the first member's volume before any member starts.
    let cluster_exists =
        seen.obs.sts_replicas > 0 || seen.obs.formed_before || seen.obs.raft.is_some();
    let gate = restore::gate(kvc, ctx, cluster_exists).await?;
    if gate.hold {
        let mut status = status_of(kvc, &seen, &step, None);
        status.phase = Some("Restoring".into());
        if gate.status.is_some() {
            status.restore = gate.status;
        }
        write_status(ctx, kvc, &status).await?;
        return Ok(Action::requeue(Duration::from_secs(3)));
    }
    // A forced recovery (spec.recovery) stops and restarts the members itself.
    let recovery = recovery::gate(kvc, ctx, &seen).await?;
    if recovery.hold {
        if let Some(n) = recovery.scale {
            let sts = build::statefulset(kvc, n as i32, secrets_digest.as_deref())?;
            apply::<StatefulSet>(&ctx.client, &ns, &sts).await?;
        }
        let mut status = status_of(kvc, &seen, &step, None);
        status.phase = Some("Recovering".into());
        status.recovery = recovery.status;
        write_status(ctx, kvc, &status).await?;
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    apply::<StatefulSet>(&ctx.client, &ns, &objects.3).await?;
    let pdb_problem = apply_pdb(&ctx.client, &ns, &objects.4).await?;
    match &backup_agent {
        Some(a) => {
            apply::<ConfigMap>(&ctx.client, &ns, &a.config_map).await?;
            apply::<ServiceAccount>(&ctx.client, &ns, &a.service_account).await?;
            apply::<k8s_openapi::api::rbac::v1::Role>(&ctx.client, &ns, &a.role).await?;
            apply::<k8s_openapi::api::rbac::v1::RoleBinding>(&ctx.client, &ns, &a.role_binding)
                .await?;
            apply::<k8s_openapi::api::apps::v1::Deployment>(&ctx.client, &ns, &a.deployment)
                .await?;
        }
        None => {
            apply::remove_backup_agent(&ctx.client, &ns, &crate::backup::build::agent_name(kvc))
                .await?
        }
    }
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    for (name, rv, refs) in &seen.volumes {
        if let Some(refs) = build::pvc_owner_references(kvc, refs)? {
            // resourceVersion makes it a compare-and-swap of the list.
            let patch =
                serde_json::json!({"metadata": {"resourceVersion": rv, "ownerReferences": refs}});
            pvcs.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .at(
                    "apply",
                    format!("owner references of PersistentVolumeClaim {name}"),
                )?;
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
    let mut status = status_of(kvc, &seen, &step, pdb_problem.as_deref());
    if gate.status.is_some() {
        status.restore = gate.status;
    }
    if recovery.status.is_some() {
        status.recovery = recovery.status;
    }
    if let Some(p) = &status.partitions
        && let Some((reason, note)) =
            crate::partitions::moved(kvc.status.as_ref().and_then(|s| s.partitions.as_ref()), p)
    {
        publish_event(ctx, kvc, EventType::Normal, reason, note).await;
    }
    for note in partition_moves(ctx, kvc, seen.partitions.as_ref()) {
        publish_event(ctx, kvc, EventType::Normal, "ReplicaMoved".into(), note).await;
    }
    // kvserver moves replicas on its own: while it does, look again soon.
    let rebalancing = status
        .partitions
        .as_ref()
        .is_some_and(|p| crate::partitions::rebalancing(p).0);
    write_status(ctx, kvc, &status).await?;
    Ok(match step {
        Step::Idle if rebalancing => Action::requeue(Duration::from_secs(2)),
        Step::Idle => Action::requeue(Duration::from_secs(30)),
        // Refusals are re-checked every 10 s (and at once on any pod change): no
        // retry storm, but a transient refusal does not stall a resize for long.
        Step::Blocked(_) => Action::requeue(Duration::from_secs(10)),
        Step::Wait(_) => Action::requeue(Duration::from_secs(2)),
        _ => Action::requeue(Duration::from_millis(500)),
    })
}

async fn write_status(
    ctx: &Context,
    kvc: &KVCluster,
    status: &crate::crd::KVClusterStatus,
) -> Result<(), ReconcileError> {
    let api: Api<KVCluster> =
        Api::namespaced(ctx.client.clone(), &kvc.namespace().unwrap_or_default());
    let patch = serde_json::json!({"apiVersion": "kvcluster.io/v1alpha1", "kind": "KVCluster", "status": status});
    api.patch_status(
        &kvc.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .at("status", format!("KVCluster {}", kvc.name_any()))?;
    Ok(())
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

    /// A failed reconcile says where: the stage and the object or call, with the
    /// metric label unchanged.
    #[test]
    fn errors_name_their_stage_and_object() {
        let e = Err::<(), _>(ClientError::Config("no endpoint".into()))
            .at("membership", "promote member 3")
            .expect_err("an error");
        let text = e.to_string();
        assert!(text.starts_with("membership (promote member 3)"), "{text}");
        assert!(text.contains("no endpoint"), "{text}");
        assert_eq!(e.kind(), "kvserver");
        let e = serde_json::from_str::<u8>("x")
            .at("apply", "PodDisruptionBudget orders")
            .expect_err("an error");
        assert!(
            e.to_string()
                .starts_with("apply PodDisruptionBudget orders")
        );
        assert_eq!(e.kind(), "serialize");
    }
}
