//! A short fault-injection campaign on real kvserver processes (the long one is
//! `kvchaos campaign`, see docs/reliability.md): each run kills, pauses,
//! partitions, wipes and reconfigures a cluster under concurrent clients, then
//! checks that the recorded history is linearizable, that no acknowledged write
//! is lost, and that the cluster serves again within a bound after healing.
//!
//! The partitioned mode runs the same on a cluster of 4 partitions (seeds
//! `KV_CHAOS_PARTITIONED_SEED`, 2 runs from 101 by default).
//!
//! Seeds `KV_CHAOS_SEED..KV_CHAOS_SEED+KV_CHAOS_RUNS` (default 1..=3); a failing
//! run is replayed with `kvchaos run --seed N`, and its logs, data and history
//! are kept under `target/chaos-failed/`.

use std::path::PathBuf;
use std::time::Duration;

use kvchaos::campaign::RunConfig;
use kvchaos::campaign::Summary;
use kvchaos::campaign::run_one;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs seeds `first..first + runs` with `partitions` and asserts every run passed.
async fn campaign(first: u64, runs: u64, partitions: u32) {
    let keep = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/chaos-failed");
    let mut summary = Summary::default();
    let mut failures = Vec::new();
    let (mut named, mut unnamed) = (0, 0);
    for seed in first..first + runs {
        let mut cfg = RunConfig::new(seed, PathBuf::from(env!("CARGO_BIN_EXE_kvserver")));
        cfg.fault_time = Duration::from_secs(4);
        cfg.keep_failed = Some(keep.clone());
        cfg.partitions = partitions;
        let r = run_one(&cfg).await;
        eprintln!("{}", r.line());
        named += r.links_named;
        unnamed += r.links_unnamed;
        for f in &r.faults {
            eprintln!("    {f}");
        }
        if !r.passed() {
            let mut why = r.line();
            for (key, v) in &r.violations {
                why.push_str(&format!("\nviolation on {key}:\n{v}"));
            }
            if let Some(k) = &r.kept {
                why.push_str(&format!("\nlogs, data and history kept in {k}"));
            }
            failures.push(why);
        }
        summary.add(&r);
    }
    eprintln!("{}", summary.table());
    assert!(
        summary.faults >= runs,
        "every run injects at least one fault"
    );
    // The runs use TLS, whose bytes do not name the caller: the proxies must
    // still tell who calls (else no partition would cut anything).
    eprintln!("proxied connections: {named} named, {unnamed} not");
    assert!(
        named > 0 && unnamed * 50 <= named,
        "the proxies could not name the callers of {unnamed} of {} connections",
        named + unnamed
    );
    assert!(
        failures.is_empty(),
        "failed runs:\n{}",
        failures.join("\n\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_fault_campaign_is_linearizable_and_loses_nothing() {
    campaign(env_u64("KV_CHAOS_SEED", 1), env_u64("KV_CHAOS_RUNS", 3), 1).await;
}

/// The partitioned mode (issue 21): the same faults per node against a cluster of
/// 4 partitions, whose clients' keys land in different Raft groups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_fault_campaign_is_linearizable_and_loses_nothing() {
    campaign(
        env_u64("KV_CHAOS_PARTITIONED_SEED", 101),
        env_u64("KV_CHAOS_PARTITIONED_RUNS", 2),
        4,
    )
    .await;
}
