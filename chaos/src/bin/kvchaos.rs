//! `kvchaos`: run one seeded fault-injection run, or a campaign of them, against
//! real kvserver processes on this machine, and report what the checks found;
//! or (`kvchaos cluster`) start a cluster through the same harness and keep it
//! up for another program, as `bench/compare.sh` does.

use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use clap::Subcommand;
use kvchaos::campaign::RunConfig;
use kvchaos::campaign::Summary;
use kvchaos::campaign::run_one;
use kvchaos::cluster::Cluster;

#[derive(Debug, Parser)]
#[command(
    name = "kvchaos",
    about = "Fault injection + linearizability checking for kvserver clusters"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, clap::Args)]
struct Common {
    /// The kvserver binary (default: `kvserver` next to this binary).
    #[arg(long)]
    kvserver: Option<PathBuf>,
    /// Voters per cluster (3 or 5); default: drawn from each run's seed.
    #[arg(long)]
    nodes: Option<usize>,
    /// Seconds of faults per run.
    #[arg(long, default_value_t = 5.0)]
    fault_secs: f64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 6)]
    clients: usize,
    /// Keep logs, data and the history of failed runs here (default: a new
    /// `kvchaos-failed-*` directory under the system temp dir, created only when a
    /// run fails: the evidence of a rare failure must not depend on a flag).
    #[arg(long)]
    keep_failed: Option<PathBuf>,
    /// Clients read with consistency=stale: not linearizable, so the checker must
    /// report violations (a check of the checker, not of kvserver).
    #[arg(long)]
    stale_reads: bool,
    /// Plaintext ports (TLS, as in Kubernetes, is the default).
    #[arg(long)]
    no_tls: bool,
    /// Partitions of the key space, each its own Raft group (1: one group).
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// No client authentication (a bearer token on every request, as in
    /// Kubernetes, is the default).
    #[arg(long)]
    no_auth: bool,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// One run, reproducible from its seed.
    Run {
        #[arg(long)]
        seed: u64,
        #[command(flatten)]
        common: Common,
    },
    /// Checks a recorded history (the `history.json` a failed run keeps).
    Check {
        file: PathBuf,
        /// Search step budget per key.
        #[arg(long, default_value_t = 50_000_000)]
        budget: u64,
    },
    /// `runs` runs with seeds `seed..seed+runs`; exits 1 if any failed.
    Campaign {
        #[arg(long, default_value_t = 20)]
        runs: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Write every run's report and the summary as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        #[command(flatten)]
        common: Common,
    },
    /// Writes a CA and certificates for servers outside the harness (etcd in
    /// bench/compare.sh): `ca.pem`; `<name>.pem` and `<name>-key.pem` for each name
    /// (server and client use, valid for `--hosts`); `client.pem` and `client-key.pem`.
    Certs {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, value_delimiter = ',')]
        names: Vec<String>,
        #[arg(long, value_delimiter = ',', default_value = "127.0.0.1,localhost")]
        hosts: Vec<String>,
    },
    /// Forms a cluster of kvserver processes (free loopback ports, a temporary data
    /// directory), writes `endpoints=` and `pids=` lines to `--ready-file` once
    /// every node is ready, and keeps it up until SIGTERM or SIGINT, then stops
    /// the nodes and removes their data.
    Cluster {
        /// The kvserver binary (default: `kvserver` next to this binary).
        #[arg(long)]
        kvserver: Option<PathBuf>,
        /// Voters (node ids 1..=N).
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Cluster id (default: unique).
        #[arg(long)]
        cluster_id: Option<String>,
        /// Where to write the endpoints and process ids (written whole, once ready).
        /// With `--tls` also `ca=`, `cert=` and `key=`: the CA bundle and a client
        /// certificate for the cluster's clients.
        #[arg(long)]
        ready_file: PathBuf,
        /// TLS on both ports: a CA of the cluster's own, peer mTLS, HTTPS endpoints.
        #[arg(long)]
        tls: bool,
        /// Nodes require a bearer token; the ready file gains `token_file=`, a file
        /// holding an admin token.
        #[arg(long)]
        auth: bool,
        /// Arguments for every node, after `--` (e.g. `-- --log-level warn`).
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn kvserver_bin(given: &Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let kvserver = match given {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("kvserver"),
    };
    anyhow::ensure!(
        kvserver.is_file(),
        "kvserver binary not found at {} (build it with `cargo build --release -p kvserver`, or pass --kvserver)",
        kvserver.display()
    );
    Ok(kvserver)
}

/// `kvchaos cluster`: up until SIGTERM/SIGINT.
async fn serve_cluster(
    kvserver: PathBuf,
    nodes: u64,
    cluster_id: Option<String>,
    ready_file: PathBuf,
    tls: bool,
    auth: bool,
    args: Vec<String>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::SignalKind;
    use tokio::signal::unix::signal;
    anyhow::ensure!((1..=9).contains(&nodes), "--nodes must be between 1 and 9");
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut builder = Cluster::builder(kvserver)
        .args(args)
        .tls(tls)
        .auth(auth)
        .dump_logs_on_panic(true);
    if let Some(id) = cluster_id {
        builder = builder.cluster_id(id);
    }
    let mut cluster = builder.build()?;
    let ids: Vec<u64> = (1..=nodes).collect();
    let formed = async {
        cluster.form(&ids).await?;
        for id in &ids {
            let client = cluster.client(*id, Duration::from_secs(2))?;
            let url = cluster.url(*id, "")?;
            kvchaos::wait::wait(
                Duration::from_secs(30),
                &format!("node {id} ready"),
                || async { client.ready_at(&url).await.ok()?.ready.then_some(()) },
            )
            .await?;
        }
        anyhow::Ok(())
    };
    if let Err(e) = formed.await {
        cluster.dump_logs();
        return Err(e);
    }
    let endpoints: Vec<String> = cluster.nodes.values().map(|n| n.api.to_string()).collect();
    let pids: Vec<String> = cluster
        .nodes
        .values()
        .filter_map(|n| n.pid())
        .map(|p| p.to_string())
        .collect();
    let mut ready = format!(
        "endpoints={}\npids={}\n",
        endpoints.join(","),
        pids.join(",")
    );
    if let Some(t) = &cluster.tls {
        ready.push_str(&format!(
            "ca={}\ncert={}\nkey={}\n",
            t.ca_file().display(),
            t.client_cert().display(),
            t.client_key().display()
        ));
    }
    if let Some(a) = &cluster.auth {
        // The token file, not the token: the ready file may be printed.
        ready.push_str(&format!("token_file={}\n", a.admin_file()?.display()));
    }
    let tmp = ready_file.with_extension("partial");
    std::fs::write(&tmp, ready).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &ready_file)
        .with_context(|| format!("writing {}", ready_file.display()))?;
    eprintln!("cluster {} up: {}", cluster.cluster_id, endpoints.join(","));
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    drop(cluster);
    Ok(())
}

fn config(seed: u64, c: &Common) -> anyhow::Result<RunConfig> {
    let kvserver = kvserver_bin(&c.kvserver)?;
    anyhow::ensure!(
        c.nodes.is_none_or(|n| n == 3 || n == 5),
        "--nodes must be 3 or 5"
    );
    anyhow::ensure!(
        c.fault_secs > 0.0 && c.fault_secs <= 600.0,
        "--fault-secs must be in (0, 600]"
    );
    let mut cfg = RunConfig::new(seed, kvserver);
    cfg.nodes = c.nodes;
    cfg.fault_time = Duration::from_secs_f64(c.fault_secs);
    cfg.workload.clients = c.clients.max(1);
    cfg.keep_failed = Some(c.keep_failed.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!(
            "kvchaos-failed-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        ))
    }));
    cfg.workload.stale_reads = c.stale_reads;
    cfg.tls = !c.no_tls;
    cfg.auth = !c.no_auth;
    anyhow::ensure!(
        (1..=64).contains(&c.partitions),
        "--partitions must be between 1 and 64"
    );
    cfg.partitions = c.partitions;
    Ok(cfg)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run { seed, common } => {
            let r = run_one(&config(seed, &common)?).await;
            println!("{}", r.line());
            for f in &r.faults {
                println!("  fault: {f}");
            }
            for (key, why) in &r.violations {
                println!("VIOLATION on {key}:\n{why}");
            }
            if let Some(k) = &r.kept {
                println!("kept: {k}");
            }
            if !r.passed() {
                std::process::exit(1);
            }
        }
        Cmd::Check { file, budget } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let ops: Vec<kvchaos::history::Op> =
                serde_json::from_slice(&bytes).with_context(|| {
                    format!(
                        "{} is not a history (JSON list of operations)",
                        file.display()
                    )
                })?;
            let r = kvchaos::checker::check(&ops, budget);
            println!(
                "{} operations on {} keys, {} search steps",
                r.ops, r.keys, r.steps
            );
            for (key, why) in &r.violations {
                println!("VIOLATION on {key}:\n{why}");
            }
            for key in &r.undecided {
                println!("undecided (budget exhausted): {key}");
            }
            if !r.linearizable() {
                std::process::exit(1);
            }
            println!("linearizable");
        }
        Cmd::Campaign {
            runs,
            seed,
            json,
            common,
        } => {
            let t0 = Instant::now();
            let mut summary = Summary::default();
            let mut reports = Vec::new();
            for s in seed..seed + runs {
                let r = run_one(&config(s, &common)?).await;
                println!("{}", r.line());
                for (key, why) in &r.violations {
                    println!("VIOLATION on {key}:\n{why}");
                }
                if let Some(k) = &r.kept {
                    println!("kept: {k}");
                }
                summary.add(&r);
                reports.push(r);
            }
            summary.wall_s = t0.elapsed().as_secs();
            println!("\n{}", summary.table());
            if let Some(path) = json {
                let doc = serde_json::json!({"summary": summary, "runs": reports});
                std::fs::write(&path, serde_json::to_vec_pretty(&doc)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if summary.passed != summary.runs {
                std::process::exit(1);
            }
        }
        Cmd::Certs { dir, names, hosts } => {
            use kvserver::tls::issue::Ca;
            use kvserver::tls::issue::Leaf;
            let day = Duration::from_secs(24 * 3600);
            std::fs::create_dir_all(&dir)?;
            let ca = Ca::new("kvchaos certs CA", day)?;
            let write = |name: &str, pem: &str| {
                std::fs::write(dir.join(name), pem).with_context(|| format!("writing {name}"))
            };
            write("ca.pem", ca.cert_pem())?;
            for name in &names {
                let mut leaf = Leaf::member("certs", 0, &hosts, day);
                leaf.uris.clear();
                leaf.common_name = name.clone();
                let issued = ca.issue(&leaf)?;
                write(&format!("{name}.pem"), &issued.cert_pem)?;
                write(&format!("{name}-key.pem"), &issued.key_pem)?;
            }
            let client = ca.issue(&Leaf::client("kvbench", day))?;
            write("client.pem", &client.cert_pem)?;
            write("client-key.pem", &client.key_pem)?;
        }
        Cmd::Cluster {
            kvserver,
            nodes,
            cluster_id,
            ready_file,
            tls,
            auth,
            args,
        } => {
            serve_cluster(
                kvserver_bin(&kvserver)?,
                nodes,
                cluster_id,
                ready_file,
                tls,
                auth,
                args,
            )
            .await?
        }
    }
    Ok(())
}
