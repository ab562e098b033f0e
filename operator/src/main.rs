//! `kvcluster-operator`: runs the KVCluster controller behind leader election
//! on a Lease (so two replicas can run), and serves `/metrics`, `/healthz`
//! and `/readyz` (ready = leading or standing by with a working API client).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;

use anyhow::Context as _;
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::Client;
use kube::runtime::Controller;
use kube::runtime::watcher;
use kube_lease_manager::LeaseManagerBuilder;
use operator::controller;
use operator::crd::KVCluster;
use operator::metrics::Metrics;

/// Kubernetes operator for kvcluster.
#[derive(Parser, Debug)]
#[command(name = "kvcluster-operator", version, about)]
struct Cli {
    /// Listen address of /metrics, /healthz, /readyz.
    #[arg(long, env = "OPERATOR_METRICS_ADDR", default_value = "0.0.0.0:8000")]
    metrics_addr: String,
    /// Namespace holding the leader-election Lease (default: the pod's namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "OPERATOR_LEASE_NAME",
        default_value = "kvcluster-operator"
    )]
    lease_name: String,
    /// Watch only these namespaces (comma-separated; the chart's
    /// namespace-scoped install). Unset: every namespace.
    #[arg(long, env = "OPERATOR_WATCH_NAMESPACES", value_delimiter = ',')]
    watch_namespaces: Vec<String>,
    /// The ClusterRoleBinding (to `system:auth-delegator`) whose subjects the
    /// operator keeps: the ServiceAccounts of clusters that take ServiceAccount tokens.
    #[arg(
        long,
        env = "OPERATOR_REVIEWER_BINDING",
        default_value = operator::reviewers::DEFAULT_BINDING
    )]
    reviewer_binding: String,
    /// Log format: json or pretty.
    #[arg(long, env = "OPERATOR_LOG_FORMAT", default_value = "json")]
    log_format: String,
    /// Run as a cluster's backup agent with this configuration file (JSON, from the
    /// agent's ConfigMap) instead of as the operator.
    #[arg(long, env = "KVC_BACKUP_AGENT", value_name = "FILE")]
    backup_agent: Option<std::path::PathBuf>,
    /// Check the operator serving at this base URL (`/healthz` answers, `/metrics`
    /// has the operator's metrics) and exit: the chart's `helm test` runs this.
    #[arg(long, value_name = "URL")]
    check: Option<String>,
}

/// `--check`: exit status 0 when the operator at `base` is healthy and exports its metrics.
async fn check(base: &str) -> anyhow::Result<()> {
    let http = kvserver::tls::http_builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()?;
    let base = base.trim_end_matches('/');
    let health = http.get(format!("{base}/healthz")).send().await?;
    anyhow::ensure!(
        health.status().is_success(),
        "/healthz answered {}",
        health.status()
    );
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    for family in [
        "kvc_operator_reconcile_duration_seconds",
        "kvc_operator_leading",
    ] {
        anyhow::ensure!(metrics.contains(family), "/metrics lacks {family}");
    }
    println!("operator at {base}: healthy, metrics exported");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(url) = &cli.check {
        return check(url).await;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube=warn".into());
    if cli.log_format == "pretty" {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_env_filter(filter)
            .init();
    }
    if let Some(file) = &cli.backup_agent {
        let text = std::fs::read_to_string(file).with_context(|| {
            format!(
                "reading the backup agent's configuration {}",
                file.display()
            )
        })?;
        let cfg: operator::backup::config::AgentConfig = serde_json::from_str(&text)
            .with_context(|| format!("the backup agent's configuration {}", file.display()))?;
        return operator::backup::agent::run(cfg, &cli.metrics_addr).await;
    }
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let metrics = Arc::new(Metrics::new()?);
    let leading = Arc::new(AtomicBool::new(false));

    let http = {
        let (metrics, leading) = (metrics.clone(), leading.clone());
        let app = axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let m = metrics.clone();
                    async move { m.render() }
                }),
            )
            .route("/healthz", axum::routing::get(|| async { "ok" }))
            .route(
                "/readyz",
                axum::routing::get(move || {
                    let l = leading.load(Ordering::Relaxed);
                    async move { if l { "leading" } else { "standby" } }
                }),
            );
        let listener = tokio::net::TcpListener::bind(&cli.metrics_addr)
            .await
            .with_context(|| format!("binding {}", cli.metrics_addr))?;
        tokio::spawn(async move { axum::serve(listener, app).await })
    };

    let identity = std::env::var("HOSTNAME").unwrap_or_else(|_| "kvcluster-operator".into());
    let manager = LeaseManagerBuilder::new(client.clone(), &cli.lease_name)
        .with_namespace(&cli.lease_namespace)
        .with_identity(&identity)
        .build()
        .await
        .context("creating the leader-election lease manager")?;
    let (mut lock, lease_task) = manager.watch().await;
    tracing::info!(identity, "waiting for leadership");
    // A standby must stop promptly on SIGTERM too (rollouts, uninstall), not
    // only once it leads.
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    while !*lock.borrow_and_update() {
        tokio::select! {
            changed = lock.changed() => changed.context("lease manager stopped")?,
            _ = sigterm.recv() => {
                tracing::info!(identity, "SIGTERM while standing by: exiting");
                drop(lock);
                let _ = lease_task.await;
                http.abort();
                return Ok(());
            }
        }
    }
    leading.store(true, Ordering::Relaxed);
    metrics.leading.set(1);
    tracing::info!(identity, "leading: starting the controller");

    let watched: Option<Vec<String>> = {
        let list: Vec<String> = cli
            .watch_namespaces
            .iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect();
        (!list.is_empty()).then_some(list)
    };
    let mut ctx = controller::Context::new(
        client.clone(),
        identity,
        metrics,
        operator::build::API_PORT as u16,
    );
    ctx.watched = watched.clone();
    ctx.reviewer_binding = cli.reviewer_binding.clone();
    let ctx = Arc::new(ctx);
    tracing::info!(namespaces = ?watched, "watching");
    // Deleted clusters leave the token-review binding here (reconciles see
    // only live ones).
    let sweeper = {
        let (client, binding, watched) = (
            client.clone(),
            cli.reviewer_binding.clone(),
            watched.clone(),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tick.tick().await;
                if let Err(e) =
                    operator::reviewers::sweep(&client, &binding, watched.as_deref()).await
                {
                    tracing::debug!(error = %e, "token-review binding sweep");
                }
            }
        })
    };
    let scopes: Vec<Option<String>> = match &watched {
        None => vec![None],
        Some(list) => list.iter().cloned().map(Some).collect(),
    };
    let run = futures::stream::select_all(
        scopes
            .iter()
            .map(|ns| controller_for(&client, ns.as_deref(), ctx.clone()).boxed()),
    )
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "reconcile stream item");
        }
    });
    tokio::select! {
        _ = run => tracing::info!("controller stopped"),
        _ = lock.changed() => tracing::warn!("lost leadership; exiting so a standby takes over"),
    }
    sweeper.abort();
    drop(lock);
    let _ = lease_task.await;
    http.abort();
    Ok(())
}

/// An API over one namespace, or all.
fn scoped<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The controller over one namespace (`None`: all): KVClusters, the
/// StatefulSets and Services they own, and their pods.
fn controller_for(
    client: &Client,
    ns: Option<&str>,
    ctx: Arc<controller::Context>,
) -> impl futures::Stream<
    Item = Result<
        (
            kube::runtime::reflector::ObjectRef<KVCluster>,
            kube::runtime::controller::Action,
        ),
        kube::runtime::controller::Error<controller::ReconcileError, kube::runtime::watcher::Error>,
    >,
> {
    let selector = "app.kubernetes.io/managed-by=kvcluster-operator";
    Controller::new(scoped::<KVCluster>(client, ns), watcher::Config::default())
        .owns(
            scoped::<StatefulSet>(client, ns),
            watcher::Config::default().labels(selector),
        )
        .owns(
            scoped::<Service>(client, ns),
            watcher::Config::default().labels(selector),
        )
        .watches(
            scoped::<Pod>(client, ns),
            watcher::Config::default().labels("app.kubernetes.io/name=kvserver"),
            |pod| {
                let owner = pod
                    .metadata
                    .labels
                    .as_ref()?
                    .get("app.kubernetes.io/instance")?
                    .clone();
                Some(
                    kube::runtime::reflector::ObjectRef::new(&owner)
                        .within(pod.metadata.namespace.as_deref()?),
                )
            },
        )
        .shutdown_on_signal()
        .run(controller::reconcile, controller::error_policy, ctx)
}
