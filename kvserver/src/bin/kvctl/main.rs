//! `kvctl`: the command-line client of kvcluster, built on the crate's typed
//! client (endpoint failover, leader following). Besides single calls it has
//! the two jobs the end-to-end suite runs inside a cluster: `load` writes
//! numbered keys and reports exactly which writes were acknowledged and how
//! long the longest stretch without an acknowledgement lasted; `verify` reads
//! numbered keys back and reports any acknowledged key that is missing.
//! Output is JSON, one object per line, so a test can parse pod logs.
//! `kvctl backup ...` ([`backup`]) takes, checks and composes backups.

mod backup;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context as _;
use clap::Parser;
use clap::Subcommand;
use kvserver::client::Client;
use kvserver::model::Consistency;
use kvserver::model::PutRequest;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(name = "kvctl", version, about = "Command-line client of kvcluster")]
struct Cli {
    /// Client API endpoints (`host:port` or URLs), comma separated.
    #[arg(
        long,
        env = "KV_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:8080"
    )]
    endpoints: Vec<String>,
    /// Per-request timeout in milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// CA bundle (PEM) of the cluster's client port: turns on HTTPS.
    #[arg(long, env = "KV_CACERT")]
    cacert: Option<std::path::PathBuf>,
    /// Client certificate (PEM), for clusters that ask for one.
    #[arg(long, env = "KV_CERT", requires = "key")]
    cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of `--cert`.
    #[arg(long, env = "KV_KEY", requires = "cert")]
    key: Option<std::path::PathBuf>,
    /// Bearer token (prefer KV_TOKEN or --token-file: arguments show in `ps`).
    #[arg(
        long,
        env = "KV_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    token: Option<String>,
    /// File holding the bearer token, re-read while running: a token Secret, or in
    /// a pod its projected ServiceAccount token.
    #[arg(long, env = "KV_TOKEN_FILE")]
    token_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Debug)]
struct LoadOpts {
    #[arg(long)]
    prefix: String,
    #[arg(long)]
    count: Option<u64>,
    #[arg(long)]
    duration_s: Option<u64>,
    /// Stop once this key exists (checked every 500 ms).
    #[arg(long)]
    stop_key: Option<String>,
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Pause between two writes of one worker, in milliseconds.
    #[arg(long, default_value_t = 0)]
    interval_ms: u64,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Read a key (linearizable unless --stale).
    Get {
        key: String,
        #[arg(long)]
        stale: bool,
    },
    /// Write a key.
    Put {
        key: String,
        value: String,
        #[arg(long)]
        ttl_seconds: Option<u64>,
    },
    /// Delete a key.
    Delete { key: String },
    /// Delete every key that starts with PREFIX (non-empty).
    DeletePrefix { prefix: String },
    /// Show the cluster as the answering node sees it.
    Cluster,
    /// Show the partitions (hash range, nodes with the leader first, revision), or
    /// with --key where one key lives.
    Partitions {
        #[arg(long)]
        key: Option<String>,
    },
    /// Write keys `<prefix><n>` (n from 1, zero-padded) until --count is reached,
    /// --duration-s has passed, or the --stop-key exists.
    Load(LoadOpts),
    /// Check that keys `<prefix>1..=count` exist (except --skip) with a linearizable batch read.
    Verify {
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        count: u64,
        /// Numbers not expected (writes that were not acknowledged), comma separated.
        #[arg(long, value_delimiter = ',')]
        skip: Vec<u64>,
    },
    /// Backups: save, verify, inspect, continuous, list, restore-point.
    #[command(subcommand)]
    Backup(backup::BackupCmd),
}

fn key(prefix: &str, n: u64) -> String {
    format!("{prefix}{n:08}")
}

/// Results of a load run, shared by the workers.
#[derive(Default)]
struct LoadStats {
    failed: BTreeSet<u64>,
    errors: Vec<String>,
    /// Completion times (ms since start) of acknowledged writes.
    acks_ms: Vec<u64>,
    /// Start times (ms) of failed writes.
    failures_ms: Vec<u64>,
}

async fn load(client: Client, opts: LoadOpts) -> anyhow::Result<bool> {
    let LoadOpts {
        prefix,
        count,
        duration_s,
        stop_key,
        concurrency,
        value_size,
        interval_ms,
    } = opts;
    let duration = duration_s.map(Duration::from_secs);
    let interval = Duration::from_millis(interval_ms);
    anyhow::ensure!(
        count.is_some() || duration.is_some() || stop_key.is_some(),
        "load needs --count, --duration-s or --stop-key"
    );
    let client = Arc::new(client);
    let next = Arc::new(AtomicU64::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Mutex::new(LoadStats::default()));
    let started = Instant::now();
    let value = "v".repeat(value_size);
    if let Some(k) = stop_key.clone() {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(Some(_)) = client.get(&k, Consistency::Stale).await {
                    stop.store(true, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (client, next, stop, stats, value, prefix) = (
            client.clone(),
            next.clone(),
            stop.clone(),
            stats.clone(),
            value.clone(),
            prefix.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                if stop.load(Ordering::Relaxed) || duration.is_some_and(|d| started.elapsed() >= d)
                {
                    break;
                }
                let n = next.fetch_add(1, Ordering::Relaxed);
                if count.is_some_and(|c| n > c) {
                    break;
                }
                let t0 = started.elapsed().as_millis() as u64;
                let req = PutRequest {
                    value: value.clone(),
                    ..Default::default()
                };
                let result = client.put(&key(&prefix, n), &req).await;
                let t1 = started.elapsed().as_millis() as u64;
                {
                    let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
                    match result {
                        Ok(_) => s.acks_ms.push(t1),
                        Err(e) => {
                            s.failed.insert(n);
                            s.failures_ms.push(t0);
                            if s.errors.len() < 20 {
                                s.errors.push(format!("{n} at {t0} ms: {e}"));
                            }
                        }
                    }
                }
                if !interval.is_zero() {
                    tokio::time::sleep(interval).await;
                }
            }
        }));
    }
    for w in workers {
        w.await.context("load worker panicked")?;
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let s = stats.lock().unwrap_or_else(|e| e.into_inner());
    let mut acks = s.acks_ms.clone();
    acks.sort_unstable();
    // The longest stretch without an acknowledgement (a leader change shows up here).
    let max_gap = acks
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or(0)
        .max(acks.first().copied().unwrap_or(0));
    let attempted = next.load(Ordering::Relaxed).saturating_sub(1);
    let attempted = count.map_or(attempted, |c| attempted.min(c));
    // Numbers handed out after the last one attempted are not writes.
    let summary = json!({
        "kind": "load",
        "prefix": prefix,
        "attempted": attempted,
        "acked": s.acks_ms.len(),
        "failed": s.failed.iter().collect::<Vec<_>>(),
        "errors": s.errors,
        "failure_window_ms": s.failures_ms.first().zip(s.failures_ms.last()).map(|(a, b)| b - a),
        "max_ack_gap_ms": max_gap,
        "duration_ms": elapsed.as_millis() as u64,
        "writes_per_s": (s.acks_ms.len() as f64 / elapsed.as_secs_f64().max(0.001)).round(),
    });
    println!("{summary}");
    Ok(s.failed.is_empty())
}

async fn verify(
    client: Client,
    prefix: String,
    count: u64,
    skip: Vec<u64>,
) -> anyhow::Result<bool> {
    let skip: BTreeSet<u64> = skip.into_iter().collect();
    let wanted: Vec<u64> = (1..=count).filter(|n| !skip.contains(n)).collect();
    let mut missing = Vec::new();
    for chunk in wanted.chunks(500) {
        let keys = chunk.iter().map(|n| key(&prefix, *n)).collect();
        let resp = client
            .batch_get(keys, Consistency::Linearizable)
            .await
            .context("batch read")?;
        missing.extend(resp.missing);
    }
    println!(
        "{}",
        json!({"kind": "verify", "prefix": prefix, "checked": wanted.len(), "missing": missing})
    );
    Ok(missing.is_empty())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut builder =
        Client::builder(cli.endpoints.clone()).timeout(Duration::from_millis(cli.timeout_ms));
    let tls = kvserver::tls::ClientTls {
        ca_file: cli.cacert.clone(),
        cert_file: cli.cert.clone(),
        key_file: cli.key.clone(),
    };
    if tls.is_set() {
        builder = builder.tls(tls);
    }
    if let Some(t) = &cli.token {
        builder = builder.token(t.clone());
    }
    if let Some(f) = &cli.token_file {
        builder = builder.token_file(f.clone());
    }
    let client = builder.build().context("building the client")?;
    let ok = match cli.cmd {
        Cmd::Get { key, stale } => {
            let c = if stale {
                Consistency::Stale
            } else {
                Consistency::Linearizable
            };
            match client.get(&key, c).await? {
                Some(r) => {
                    println!("{}", serde_json::to_string(&r)?);
                    true
                }
                None => {
                    println!("{}", json!({"error": {"code": "not_found", "key": key}}));
                    false
                }
            }
        }
        Cmd::Put {
            key,
            value,
            ttl_seconds,
        } => {
            let r = client
                .put(
                    &key,
                    &PutRequest {
                        value,
                        ttl_seconds,
                        ..Default::default()
                    },
                )
                .await?;
            println!("{}", serde_json::to_string(&r)?);
            true
        }
        Cmd::Delete { key } => {
            let r = client.delete(&key, None).await?;
            println!("{}", serde_json::to_string(&r)?);
            true
        }
        Cmd::DeletePrefix { prefix } => {
            let r = client.delete_prefix(&prefix).await?;
            println!("{}", serde_json::to_string(&r)?);
            true
        }
        Cmd::Cluster => {
            println!("{}", serde_json::to_string(&client.cluster().await?)?);
            true
        }
        Cmd::Partitions { key: None } => {
            println!("{}", serde_json::to_string(&client.partitions().await?)?);
            true
        }
        Cmd::Partitions { key: Some(key) } => {
            println!(
                "{}",
                serde_json::to_string(&client.partition_of(&key).await?)?
            );
            true
        }
        Cmd::Load(opts) => load(client, opts).await?,
        Cmd::Verify {
            prefix,
            count,
            skip,
        } => verify(client, prefix, count, skip).await?,
        Cmd::Backup(cmd) => backup::run(client, cmd).await?,
    };
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}
