//! The `kvserver` binary: parse flags, load configuration, start the node,
//! and stop it cleanly on SIGTERM or Ctrl-C.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use kvserver::ConfigLoader;
use kvserver::config::LogFormat;

/// One node of a kvcluster: a Raft-replicated key-value store with an HTTP API.
///
/// Configuration layers, lowest first: defaults, the YAML file (--config),
/// KV_* environment variables, then these flags.
#[derive(Debug, Parser)]
#[command(name = "kvserver", version, about)]
struct Cli {
    /// YAML configuration file.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Raft node id (default: StatefulSet ordinal from the hostname).
    #[arg(long)]
    node_id: Option<u64>,
    /// Cluster identity recorded in the store.
    #[arg(long)]
    cluster_id: Option<String>,
    /// Directory for the database and snapshots.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Client API listen address (ip:port).
    #[arg(long)]
    api_addr: Option<String>,
    /// Raft peer listen address (ip:port).
    #[arg(long)]
    raft_addr: Option<String>,
    /// Client API address advertised to other nodes (host:port).
    #[arg(long)]
    advertise_api_addr: Option<String>,
    /// Raft address advertised to other nodes (host:port).
    #[arg(long)]
    advertise_raft_addr: Option<String>,
    /// Initialize a single-node cluster if the store is empty (local use).
    #[arg(long)]
    bootstrap: bool,
    /// Form the new cluster from this backup file (with --bootstrap, or when told to
    /// initialize); only into an empty data dir, under a new --cluster-id.
    #[arg(long, value_name = "FILE")]
    restore_from: Option<PathBuf>,
    /// Forced recovery: this node's data is of CLUSTER, whose majority is lost for
    /// good; form the new cluster --cluster-id from it (docs/backup.md).
    #[arg(long, value_name = "CLUSTER")]
    force_new_cluster_from: Option<String>,
    /// Log format: json or pretty.
    #[arg(long)]
    log_format: Option<String>,
    /// Log filter, e.g. info or kvserver=debug.
    #[arg(long)]
    log_level: Option<String>,
    /// Override any config field: --set raft.heartbeat_interval_ms=50 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Print the effective configuration as YAML and exit.
    #[arg(long)]
    print_config: bool,
    /// Print the OpenAPI document of the HTTP API and exit.
    #[arg(long)]
    print_openapi: bool,
}

fn load(cli: &Cli) -> anyhow::Result<kvserver::Config> {
    let mut l = ConfigLoader::new()
        .file(cli.config.clone())
        .env(std::env::vars());
    let flags: [(&str, Option<String>, &str); 11] = [
        (
            "node_id",
            cli.node_id.map(|v| v.to_string()),
            "flag --node-id",
        ),
        ("cluster_id", cli.cluster_id.clone(), "flag --cluster-id"),
        (
            "data_dir",
            cli.data_dir.as_ref().map(|p| p.display().to_string()),
            "flag --data-dir",
        ),
        ("api_addr", cli.api_addr.clone(), "flag --api-addr"),
        ("raft_addr", cli.raft_addr.clone(), "flag --raft-addr"),
        (
            "advertise_api_addr",
            cli.advertise_api_addr.clone(),
            "flag --advertise-api-addr",
        ),
        (
            "advertise_raft_addr",
            cli.advertise_raft_addr.clone(),
            "flag --advertise-raft-addr",
        ),
        (
            "restore_from",
            cli.restore_from.as_ref().map(|p| p.display().to_string()),
            "flag --restore-from",
        ),
        (
            "recovery.force_new_cluster_from",
            cli.force_new_cluster_from.clone(),
            "flag --force-new-cluster-from",
        ),
        ("log.format", cli.log_format.clone(), "flag --log-format"),
        ("log.level", cli.log_level.clone(), "flag --log-level"),
    ];
    for (path, value, origin) in flags {
        if let Some(v) = value {
            l = l.set(path, v, origin);
        }
    }
    if cli.bootstrap {
        l = l.set("bootstrap", "true", "flag --bootstrap");
    }
    for pair in &cli.set {
        l = l.set_pair(pair)?;
    }
    Ok(l.load()?)
}

fn init_logging(cfg: &kvserver::Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cfg.log.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Pretty => builder.init(),
    }
}

async fn shutdown_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::SignalKind;
    use tokio::signal::unix::signal;
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.print_openapi {
        println!("{}", kvserver::api::openapi::document());
        return Ok(());
    }
    let cfg = match load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kvserver: configuration error: {e:#}");
            std::process::exit(2);
        }
    };
    if cli.print_config {
        let mut shown = cfg.clone();
        shown.storage.postgres.url = shown
            .storage
            .postgres
            .url
            .as_deref()
            .map(kvserver::store::redact_url);
        print!("{}", serde_yaml::to_string(&shown)?);
        return Ok(());
    }
    init_logging(&cfg);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async move {
        let node = match kvserver::start_node(cfg).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "kvserver failed to start");
                eprintln!("kvserver: {e}");
                std::process::exit(1);
            }
        };
        let sig = shutdown_signal().await?;
        tracing::info!(signal = sig, "shutting down: draining in-flight requests");
        node.shutdown().await.context("shutdown")?;
        Ok(())
    })
}
