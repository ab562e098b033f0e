//! PostgreSQL-specific behaviour: the database server crashes under write
//! load and comes back. While it is gone nodes report not ready and requests
//! fail with 503 (never 500, never a hang); afterwards the cluster recovers by
//! itself and no acknowledged write is lost.

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::ensure;
use common::Cluster;
use common::pg::Postgres;
use common::wait_for;
use serde_json::json;

async fn outage_under_load(c: &mut Cluster, pg: &Postgres) -> anyhow::Result<()> {
    let leader = c.form(3).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let writers = common::spawn_writers(c, 4, stop.clone());
    let cr = &*c;
    wait_for(
        "writes flowing before the outage",
        Duration::from_secs(30),
        || async move {
            (cr.cluster_info(leader).await.ok()?["revision"].as_u64()? >= 150).then_some(())
        },
    )
    .await?;

    pg.kill_server()?;
    let down_at = Instant::now();
    // Every node notices and reports not ready.
    for id in 1..=3 {
        let cr = &*c;
        wait_for(
            &format!("node {id} not ready during the outage"),
            Duration::from_secs(10),
            || async move {
                let (s, b) = cr.get(id, "/readyz").await.ok()?;
                (s == 503 && b["reasons"].to_string().contains("storage")).then_some(())
            },
        )
        .await?;
    }
    // Reads and writes fail fast with 503 and a JSON code.
    let started = Instant::now();
    let (s, b) = c.get(leader, "/v1/kv/burst/0/0?consistency=stale").await?;
    ensure!(
        s == 503 && b["error"]["code"] == "storage_unavailable",
        "read during outage: {s} {b}"
    );
    ensure!(
        started.elapsed() < Duration::from_secs(8),
        "read during outage took {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    let r = c
        .http
        .put(c.url(leader, "/v1/kv/during-outage"))
        .json(&json!({"value": "x"}))
        .send()
        .await?;
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await.unwrap_or_default();
    ensure!(
        status == 503 && body["error"]["code"].is_string(),
        "write during outage: {status} {body}"
    );
    ensure!(
        started.elapsed() < Duration::from_secs(15),
        "write during outage took {:?}",
        started.elapsed()
    );
    eprintln!(
        "outage: write answered {status} {} after {:?}",
        body["error"]["code"],
        started.elapsed()
    );

    pg.start_server()?;
    eprintln!("outage: database down for {:?}", down_at.elapsed());
    let back_at = Instant::now();
    let cr = &*c;
    wait_for(
        "writes succeed after the database returns",
        Duration::from_secs(30),
        || async move {
            let leader = cr.wait_leader(Duration::from_secs(2)).await.ok()?;
            let (s, _) = cr.put_kv(leader, "after-outage", "ok").await.ok()?;
            (s == 200 || s == 201).then_some(())
        },
    )
    .await?;
    eprintln!(
        "outage: writes accepted again {:?} after the database returned",
        back_at.elapsed()
    );
    let cr = &*c;
    let rev = cr
        .cluster_info(cr.wait_leader(Duration::from_secs(5)).await?)
        .await?["revision"]
        .as_u64()
        .context("rev")?;
    wait_for(
        "load continues after recovery",
        Duration::from_secs(30),
        || async move {
            let l = cr.wait_leader(Duration::from_secs(2)).await.ok()?;
            (cr.cluster_info(l).await.ok()?["revision"].as_u64()? >= rev + 100).then_some(())
        },
    )
    .await?;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        let report = w.await?;
        ensure!(
            report.statuses.keys().all(|s| *s < 500 || *s == 503),
            "writers saw only 2xx and 503, never another 5xx: {:?}",
            report.statuses
        );
        acked.extend(report.acked);
    }

    let final_leader = c.wait_leader(Duration::from_secs(10)).await?;
    let target = c.committed_index(final_leader).await?;
    for id in 1..=3 {
        c.wait_applied(id, target, Duration::from_secs(30)).await?;
        let (s, b) = c.get(id, "/readyz").await?;
        ensure!(s == 200, "node {id} ready again: {b}");
        c.ensure_all_present(id, "burst/", &acked).await?;
    }
    eprintln!(
        "outage: {} acknowledged writes, all present on all 3 nodes",
        acked.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_under_load_loses_nothing_and_recovers() {
    let pg = Postgres::start().expect("private PostgreSQL server");
    let mut c = Cluster::with_postgres(&pg, &[]);
    if let Err(e) = outage_under_load(&mut c, &pg).await {
        eprintln!("----- postgres log tail -----\n{}", pg.log_tail());
        c.fail(e);
    }
}
