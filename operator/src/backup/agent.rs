//! The backup agent: one pod per KVCluster with `spec.backup`
//! (`kvcluster-operator --backup-agent CONFIG`), holding the destination (a
//! mounted volume or S3 credentials) and the cluster's admin token.
//!
//! Why a pod of its own and not the operator or the members: a
//! ReadWriteOnce volume can be mounted by one pod only, and leadership moves
//! between members; object-storage credentials stay out of the members and out
//! of the operator (which serves every namespace); and continuous backup needs
//! a long-lived watch stream per cluster. Why not Jobs: continuous backup is
//! not a job, and Jobs on a ReadWriteOnce volume would contend with it.
//!
//! It does four things, concurrently:
//! - continuous backup (`kvserver::backup::follow`), restarted if it stops;
//! - full backups on `schedule` (cron, UTC), then retention;
//! - on-demand backups: the `KVClusterBackup` resources naming its cluster
//!   (phase, revision, size, location, duration in their status; Events; a
//!   finalizer deletes the object with `deletionPolicy: Delete`);
//! - reports: `status.backup` of the KVCluster (server-side apply, its own field
//!   manager, so it never touches the operator's fields) and `/metrics`.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use kube::Api;
use kube::Resource;
use kube::ResourceExt;
use kube::api::Patch;
use kube::api::PatchParams;
use kube::runtime::WatchStreamExt;
use kube::runtime::events::Event;
use kube::runtime::events::EventType;
use kube::runtime::events::Recorder;
use kube::runtime::events::Reporter;
use kube::runtime::watcher;
use kvserver::backup::Destination;
use kvserver::backup::follow::FollowOptions;
use kvserver::backup::follow::FollowStatus;
use prometheus::Encoder;

use super::config::AgentConfig;
use super::crd::BackupRecord;
use super::crd::BackupStatus;
use super::crd::DeletionPolicy;
use super::crd::KVClusterBackup;
use super::crd::KVClusterBackupStatus;
use crate::crd::KVCluster;

/// The field manager of everything the agent writes.
pub const FIELD_MANAGER: &str = "kvcluster-backup-agent";
/// Finalizer on `KVClusterBackup`s whose backup is deleted with them.
pub const FINALIZER: &str = "kvcluster.io/delete-backup";

/// What the agent knows, for reports.
#[derive(Default)]
struct State {
    cluster_id: Option<String>,
    last_success: Option<BackupRecord>,
    failures: u32,
    last_error: Option<String>,
    follow: FollowStatus,
}

struct Agent {
    cfg: AgentConfig,
    kv: kvserver::client::Client,
    dest: Destination,
    kube: kube::Client,
    state: Mutex<State>,
    metrics: Metrics,
    recorder: Recorder,
}

struct Metrics {
    registry: prometheus::Registry,
    last_success: prometheus::Gauge,
    failures: prometheus::IntCounter,
    lag: prometheus::Gauge,
    shipped: prometheus::IntGauge,
}

impl Metrics {
    fn new() -> anyhow::Result<Self> {
        let registry = prometheus::Registry::new();
        let last_success = prometheus::Gauge::new(
            "kvc_backup_last_success_timestamp_seconds",
            "Unix time of the last full backup that succeeded",
        )?;
        let failures = prometheus::IntCounter::new(
            "kvc_backup_failures_total",
            "Full backups and continuous-backup steps that failed",
        )?;
        let lag = prometheus::Gauge::new(
            "kvc_backup_continuous_lag_seconds",
            "Seconds since continuous backup last shipped or confirmed it was complete",
        )?;
        let shipped = prometheus::IntGauge::new(
            "kvc_backup_shipped_revision",
            "Every revision up to this one is in the destination",
        )?;
        registry.register(Box::new(last_success.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(lag.clone()))?;
        registry.register(Box::new(shipped.clone()))?;
        Ok(Self {
            registry,
            last_success,
            failures,
            lag,
            shipped,
        })
    }

    fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn rfc3339(ms: u64) -> String {
    kvserver::backup::point::show_ms(ms)
}

/// Runs the agent until the process is stopped.
pub async fn run(cfg: AgentConfig, metrics_addr: &str) -> anyhow::Result<()> {
    let kube = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let mut b = kvserver::client::Client::builder(cfg.endpoints.clone())
        .timeout(Duration::from_secs(30))
        .attempts(6);
    if let Some(ca) = &cfg.ca_file {
        b = b.tls(kvserver::tls::ClientTls {
            ca_file: Some(ca.into()),
            cert_file: None,
            key_file: None,
        });
    }
    if let Some(t) = &cfg.token_file {
        b = b.token_file(t.clone());
    }
    let kv = b.build().context("the cluster's client")?;
    let dest = Destination::open(
        &cfg.destination,
        &kvserver::backup::dest::S3Options {
            endpoint: cfg.s3_endpoint.clone(),
            region: cfg.s3_region.clone(),
            credentials: None,
        },
    )
    .context("opening the backup destination")?;
    let recorder = Recorder::new(
        kube.clone(),
        Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    let agent = Arc::new(Agent {
        cfg,
        kv,
        dest,
        kube,
        state: Mutex::new(State::default()),
        metrics: Metrics::new()?,
        recorder,
    });
    tracing::info!(cluster = %agent.cfg.cluster, dest = %agent.dest, "backup agent started");
    let http = {
        let a = agent.clone();
        let app = axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let a = a.clone();
                    async move { a.metrics.render() }
                }),
            )
            .route("/healthz", axum::routing::get(|| async { "ok" }));
        let listener = tokio::net::TcpListener::bind(metrics_addr)
            .await
            .with_context(|| format!("listening on {metrics_addr}"))?;
        tokio::spawn(async move { axum::serve(listener, app).await })
    };
    let tasks = vec![
        tokio::spawn(agent.clone().continuous()),
        tokio::spawn(agent.clone().scheduled()),
        tokio::spawn(agent.clone().on_demand()),
        tokio::spawn(agent.clone().report()),
    ];
    for t in tasks {
        t.await.context("agent task")?;
    }
    http.abort();
    Ok(())
}

impl Agent {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn failed(&self, what: &str, e: &dyn std::fmt::Display) {
        tracing::warn!(error = %e, "{what} failed");
        self.metrics.failures.inc();
        let mut s = self.lock();
        s.failures += 1;
        s.last_error = Some(format!("{what}: {e}"));
    }

    async fn continuous(self: Arc<Self>) {
        if !self.cfg.continuous {
            return;
        }
        let mut backoff = Duration::from_secs(1);
        loop {
            let (_stop_tx, stop) = tokio::sync::watch::channel(false);
            let (status_tx, mut status) = tokio::sync::watch::channel(FollowStatus::default());
            let me = self.clone();
            let watcher = tokio::spawn(async move {
                while status.changed().await.is_ok() {
                    let st = status.borrow_and_update().clone();
                    me.metrics.shipped.set(st.shipped as i64);
                    if let Some(e) = &st.last_error
                        && st.failures == 1
                    {
                        me.failed("continuous backup", e);
                    }
                    let mut s = me.lock();
                    s.cluster_id = Some(st.cluster_id.clone());
                    s.follow = st;
                }
            });
            let r = kvserver::backup::follow::follow(
                self.kv.clone(),
                self.dest.clone(),
                FollowOptions {
                    flush_interval: Duration::from_millis(self.cfg.flush_interval_ms),
                    scratch: self.cfg.scratch.clone().into(),
                    ..Default::default()
                },
                stop,
                status_tx,
            )
            .await;
            watcher.abort();
            if let Err(e) = r {
                self.failed("continuous backup", &e);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(60));
        }
    }

    async fn scheduled(self: Arc<Self>) {
        let Some(schedule) = self.cfg.schedule.clone() else {
            return;
        };
        let cron: croner::Cron = match super::config::parse_schedule(&schedule) {
            Ok(c) => c,
            Err(e) => {
                self.failed("schedule", &e);
                return;
            }
        };
        loop {
            let now = chrono::Utc::now();
            let next = match cron.find_next_occurrence(&now, false) {
                Ok(n) => n,
                Err(e) => {
                    self.failed("schedule", &e);
                    return;
                }
            };
            let wait = (next - now).to_std().unwrap_or(Duration::ZERO);
            tokio::time::sleep(wait).await;
            match self.full_backup(None).await {
                Ok(_) => self.prune().await,
                Err(e) => self.failed("scheduled backup", &e),
            }
        }
    }

    /// Takes a full backup (labelled for on-demand ones) and records it.
    async fn full_backup(
        &self,
        label: Option<&str>,
    ) -> Result<(String, kvserver::backup::BackupSummary), kvserver::backup::BackupError> {
        let (name, s) = kvserver::backup::save::save_labelled(
            &self.kv,
            &self.dest,
            std::path::Path::new(&self.cfg.scratch),
            label,
        )
        .await?;
        tracing::info!(
            name,
            revision = s.header.revision,
            keys = s.keys,
            bytes = s.bytes,
            "full backup stored"
        );
        self.metrics
            .last_success
            .set(s.header.taken_at_ms as f64 / 1000.0);
        let mut st = self.lock();
        st.cluster_id = Some(s.header.cluster_id.clone());
        st.failures = 0;
        st.last_error = None;
        st.last_success = Some(BackupRecord {
            time: rfc3339(s.header.taken_at_ms),
            revision: s.header.revision,
            object: name.clone(),
            size_bytes: s.bytes,
        });
        Ok((name, s))
    }

    async fn prune(&self) {
        let Some(cluster) = self.lock().cluster_id.clone() else {
            return;
        };
        let r = async {
            let plan = kvserver::backup::retention::plan(
                &self.dest.full_backups(&cluster).await?,
                &self.dest.segments(&cluster).await?,
                kvserver::backup::retention::Retention {
                    keep: self.cfg.retention_keep,
                    max_age_ms: self.cfg.retention_max_age_ms,
                },
                now_ms(),
            );
            for name in plan.segments.iter().chain(&plan.full) {
                self.dest.delete(name).await?;
            }
            if !plan.full.is_empty() {
                tracing::info!(deleted = ?plan.full, segments = plan.segments.len(), "retention");
            }
            Ok::<_, kvserver::backup::BackupError>(())
        }
        .await;
        if let Err(e) = r {
            self.failed("retention", &e);
        }
    }

    /// Serves the `KVClusterBackup`s of this cluster, one at a time.
    async fn on_demand(self: Arc<Self>) {
        let api: Api<KVClusterBackup> = Api::namespaced(self.kube.clone(), &self.cfg.namespace);
        let mut stream = watcher::watcher(api.clone(), watcher::Config::default())
            .default_backoff()
            .boxed();
        // Backups this process took (by uid): the watch delivers our own status
        // updates back, and a `Running` we wrote is not an earlier agent's
        // interrupted run to take again.
        let mut taken = std::collections::HashSet::new();
        while let Some(ev) = stream.next().await {
            let objs = match ev {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => vec![o],
                Ok(_) => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "KVClusterBackup watch");
                    continue;
                }
            };
            for b in objs
                .into_iter()
                .filter(|b| b.spec.cluster == self.cfg.cluster)
            {
                let done = matches!(
                    b.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Completed" | "Failed")
                );
                if b.metadata.deletion_timestamp.is_none()
                    && !done
                    && !taken.insert(b.uid().unwrap_or_default())
                {
                    continue;
                }
                if let Err(e) = self.serve_request(&api, &b).await {
                    tracing::warn!(backup = %b.name_any(), error = %e, "KVClusterBackup");
                }
            }
        }
    }

    async fn serve_request(
        &self,
        api: &Api<KVClusterBackup>,
        b: &KVClusterBackup,
    ) -> Result<(), kube::Error> {
        let name = b.name_any();
        let phase = b.status.as_ref().and_then(|s| s.phase.as_deref());
        if b.metadata.deletion_timestamp.is_some() {
            if b.finalizers().iter().any(|f| f == FINALIZER) {
                if let Some(obj) = b.status.as_ref().and_then(|s| s.object.clone())
                    && b.spec.deletion_policy == DeletionPolicy::Delete
                {
                    if let Err(e) = self.dest.delete(&obj).await {
                        self.event(b, EventType::Warning, "DeleteFailed", format!("{obj}: {e}"))
                            .await;
                        return Ok(());
                    }
                    self.event(b, EventType::Normal, "BackupDeleted", obj).await;
                }
                let keep: Vec<String> = b
                    .finalizers()
                    .iter()
                    .filter(|f| *f != FINALIZER)
                    .cloned()
                    .collect();
                api.patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({"metadata": {"finalizers": keep}})),
                )
                .await?;
            }
            return Ok(());
        }
        if matches!(phase, Some("Completed" | "Failed")) {
            return Ok(());
        }
        // New, or Running when an earlier agent died mid-way: (re)take it.
        if b.spec.deletion_policy == DeletionPolicy::Delete
            && !b.finalizers().iter().any(|f| f == FINALIZER)
        {
            let mut f = b.finalizers().to_vec();
            f.push(FINALIZER.into());
            api.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"metadata": {"finalizers": f}})),
            )
            .await?;
        }
        let started = now_ms();
        let mut status = KVClusterBackupStatus {
            phase: Some("Running".into()),
            start_time: Some(rfc3339(started)),
            ..Default::default()
        };
        self.set_backup_status(api, &name, &status).await?;
        let label = sanitize_label(&name);
        match self.full_backup(Some(&label)).await {
            Ok((object, s)) => {
                let done = now_ms();
                status.phase = Some("Completed".into());
                status.cluster_id = Some(s.header.cluster_id.clone());
                status.revision = Some(s.header.revision);
                status.keys = Some(s.keys);
                status.size_bytes = Some(s.bytes);
                status.sha256 = Some(s.sha256.clone());
                status.location = Some(format!("{}/{object}", self.dest));
                status.object = Some(object.clone());
                status.destination = Some(self.cfg.destination_spec.clone());
                status.completion_time = Some(rfc3339(done));
                status.duration_seconds = Some(done.saturating_sub(started) as f64 / 1000.0);
                self.set_backup_status(api, &name, &status).await?;
                self.event(
                    b,
                    EventType::Normal,
                    "BackupCompleted",
                    format!(
                        "revision {}, {} keys, {} bytes: {object}",
                        s.header.revision, s.keys, s.bytes
                    ),
                )
                .await;
            }
            Err(e) => {
                self.failed("on-demand backup", &e);
                status.phase = Some("Failed".into());
                status.message = Some(e.to_string());
                status.completion_time = Some(rfc3339(now_ms()));
                self.set_backup_status(api, &name, &status).await?;
                self.event(b, EventType::Warning, "BackupFailed", e.to_string())
                    .await;
            }
        }
        Ok(())
    }

    async fn set_backup_status(
        &self,
        api: &Api<KVClusterBackup>,
        name: &str,
        status: &KVClusterBackupStatus,
    ) -> Result<(), kube::Error> {
        api.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": status})),
        )
        .await
        .map(|_| ())
    }

    async fn event(&self, b: &KVClusterBackup, type_: EventType, reason: &str, note: String) {
        let r = self
            .recorder
            .publish(
                &Event {
                    type_,
                    reason: reason.into(),
                    note: Some(note),
                    action: reason.into(),
                    secondary: None,
                },
                &b.object_ref(&()),
            )
            .await;
        if let Err(e) = r {
            tracing::debug!(error = %e, "publishing an event");
        }
    }

    /// Writes `status.backup` of the KVCluster: at once when a full backup or a
    /// failure happened, else every 10 s (the operator counts an agent silent for
    /// 2 min as failing). Every write wakes the operator's reconcile of the cluster,
    /// so not more often.
    async fn report(self: Arc<Self>) {
        let api: Api<KVCluster> = Api::namespaced(self.kube.clone(), &self.cfg.namespace);
        let mut last: Option<(BackupStatus, std::time::Instant)> = None;
        loop {
            let status = {
                let s = self.lock();
                let lag = (s.follow.shipped_at_ms > 0)
                    .then(|| now_ms().saturating_sub(s.follow.shipped_at_ms) / 1000);
                if let Some(l) = lag {
                    self.metrics.lag.set(l as f64);
                }
                BackupStatus {
                    cluster_id: s.cluster_id.clone(),
                    last_success: s.last_success.clone(),
                    consecutive_failures: s.failures,
                    last_error: s.last_error.clone(),
                    shipped_revision: (s.follow.shipped > 0).then_some(s.follow.shipped),
                    continuous_lag_seconds: lag,
                    reported_at: Some(rfc3339(now_ms())),
                }
            };
            // Failures and full backups are reported at once; continuous backup's
            // progress (which moves every flush under load) every 10 s.
            let unchanged = last.as_ref().is_some_and(|(prev, at)| {
                let mut p = prev.clone();
                p.reported_at.clone_from(&status.reported_at);
                p.continuous_lag_seconds = status.continuous_lag_seconds;
                p.shipped_revision = status.shipped_revision;
                p == status && at.elapsed() < Duration::from_secs(10)
            });
            if unchanged {
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
            let patch = serde_json::json!({
                "apiVersion": "kvcluster.io/v1alpha1",
                "kind": "KVCluster",
                "status": {"backup": status},
            });
            if let Err(e) = api
                .patch_status(
                    &self.cfg.cluster,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&patch),
                )
                .await
            {
                tracing::debug!(error = %e, "reporting status.backup");
            } else {
                last = Some((status, std::time::Instant::now()));
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
}

/// A resource name as an object-name label (`[a-z0-9-]`).
fn sanitize_label(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}
