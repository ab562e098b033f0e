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

/// A node started in-process on `pg` with these TLS settings.
async fn node_on(
    pg: &Postgres,
    dir: &std::path::Path,
    host: &str,
    sslmode: Option<kvserver::config::PgSslMode>,
    ca: Option<std::path::PathBuf>,
) -> Result<kvserver::NodeHandle, kvserver::NodeError> {
    let mut cfg = common::local_config(dir, true);
    cfg.cluster_id = format!("pgtls{}", uuid::Uuid::new_v4().simple());
    cfg.storage.backend = kvserver::config::StorageBackend::Postgres;
    cfg.storage.postgres.url = Some(pg.url_on(host));
    cfg.storage.postgres.sslmode = sslmode;
    cfg.storage.postgres.ca_file = ca;
    cfg.storage.postgres.acquire_timeout_ms = 3_000;
    kvserver::start_node(cfg).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_verify_the_postgres_server_certificate() -> anyhow::Result<()> {
    use kvserver::config::PgSslMode;
    use kvserver::tls::issue::Ca;
    use kvserver::tls::issue::Leaf;
    let ca = Ca::new("pg test CA", Duration::from_secs(3600))?;
    let mut leaf = Leaf::member("pg", 0, &["127.0.0.1".into()], Duration::from_secs(3600));
    leaf.uris.clear();
    let server = ca.issue(&leaf)?;
    let pg = Postgres::start_tls(&server.cert_pem, &server.key_pem)?;
    let dir = tempfile::tempdir()?;
    let ca_file = dir.path().join("pg-ca.pem");
    std::fs::write(&ca_file, ca.cert_pem())?;
    let other = Ca::new("another CA", Duration::from_secs(3600))?;
    let other_file = dir.path().join("other-ca.pem");
    std::fs::write(&other_file, other.cert_pem())?;

    // A CA given means verify-full: the server's certificate checks out.
    let node = node_on(
        &pg,
        &dir.path().join("a"),
        "127.0.0.1",
        None,
        Some(ca_file.clone()),
    )
    .await?;
    node.shutdown().await?;
    // A server whose certificate another CA signed is refused.
    let e = node_on(
        &pg,
        &dir.path().join("b"),
        "127.0.0.1",
        None,
        Some(other_file),
    )
    .await
    .err()
    .context("a node trusted a certificate of another CA")?;
    ensure!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    // verify-full also checks the name: the certificate names 127.0.0.1, not localhost ...
    let e = node_on(
        &pg,
        &dir.path().join("c"),
        "localhost",
        None,
        Some(ca_file.clone()),
    )
    .await
    .err()
    .context("verify-full accepted a certificate for another host")?;
    ensure!(
        e.to_string().to_lowercase().contains("certificate") || e.to_string().contains("name"),
        "{e}"
    );
    // ... which verify-ca does not.
    let node = node_on(
        &pg,
        &dir.path().join("d"),
        "localhost",
        Some(PgSslMode::VerifyCa),
        Some(ca_file),
    )
    .await?;
    node.shutdown().await?;
    Ok(())
}
