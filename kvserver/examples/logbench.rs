//! `logbench`: the Raft log engine (`kvserver::raftlog`) alone, closed loop:
//! `--writers` tasks append one entry each and wait until it is durable, spread
//! over `--groups` Raft groups sharing one log, as partitions will. Reports
//! appends/s, syncs/s, entries per sync and append latency, plus this disk's raw
//! `write + fdatasync` rate into a preallocated file measured in the same run
//! (the bound group commit works against).
//!
//!   cargo run --release -p kvserver --example logbench -- --groups 16 --writers 64

use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use clap::Parser;
use kvserver::raftlog::Engine;
use kvserver::raftlog::LogOptions;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 1)]
    groups: u64,
    #[arg(long, default_value_t = 64)]
    writers: usize,
    #[arg(long, default_value_t = 5.0)]
    duration_s: f64,
    /// Bytes per entry (a put of a 100-byte value encodes to about 200).
    #[arg(long, default_value_t = 200)]
    entry_bytes: usize,
    /// Directory for the log (default: a temporary one on the working directory's disk).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    #[arg(long)]
    json: bool,
}

/// `write(256 B) + fdatasync` per second into a preallocated file in `dir`.
fn fdatasync_rate(dir: &std::path::Path, secs: f64) -> anyhow::Result<f64> {
    use std::os::unix::fs::FileExt;
    let path = dir.join("probe");
    let f = std::fs::File::create(&path)?;
    f.write_all_at(&vec![0u8; 64 << 20], 0)?;
    f.sync_all()?;
    let buf = [7u8; 256];
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed().as_secs_f64() < secs {
        f.write_all_at(&buf, n * 256)?;
        f.sync_data()?;
        n += 1;
    }
    std::fs::remove_file(&path)?;
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tmp = match &args.dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir_in(".")?,
    };
    let fsyncs = fdatasync_rate(tmp.path(), 2.0)?;
    let engine = Engine::open(&tmp.path().join("log"), LogOptions::for_node("logbench", 1))?;
    // Next index per group, taken and appended under one lock so a group's entries
    // arrive in order whatever the number of writers.
    let next: Arc<Vec<tokio::sync::Mutex<u64>>> = Arc::new(
        (0..args.groups)
            .map(|_| tokio::sync::Mutex::new(1))
            .collect(),
    );
    let payload = Bytes::from(vec![b'x'; args.entry_bytes]);
    let deadline = Instant::now() + Duration::from_secs_f64(args.duration_s);
    let before = engine.stats();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..args.writers {
        let (engine, next, payload) = (engine.clone(), next.clone(), payload.clone());
        let group = w as u64 % args.groups;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                let (tx, rx) = tokio::sync::oneshot::channel();
                {
                    let mut n = next[group as usize].lock().await;
                    engine.append(
                        group,
                        vec![(*n, payload.clone())],
                        Box::new(move |r| {
                            let _ = tx.send(r);
                        }),
                    )?;
                    *n += 1;
                }
                rx.await??;
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
            anyhow::Ok(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    let after = engine.stats();
    engine.close();
    lat.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    let syncs = (after.syncs - before.syncs) as f64;
    let out = serde_json::json!({
        "groups": args.groups,
        "writers": args.writers,
        "appends_per_s": (lat.len() as f64 / secs).round(),
        "syncs_per_s": (syncs / secs).round(),
        "entries_per_sync": ((lat.len() as f64 / syncs.max(1.0)) * 10.0).round() / 10.0,
        "p50_ms": (q(0.5) * 1000.0).round() / 1000.0,
        "p99_ms": (q(0.99) * 1000.0).round() / 1000.0,
        "raw_fdatasync_per_s": fsyncs.round(),
    });
    if args.json {
        println!("{out}");
    } else {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}
