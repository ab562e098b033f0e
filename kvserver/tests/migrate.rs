//! A data directory written by the release before the Raft log moved out of
//! the database (`tests/fixtures/v1-datadir.tar.gz`, made by
//! `fixtures/make-v1-datadir.sh`: one node, 450 puts, 40 deletes, 20 overwrites,
//! log purged to 279 behind a snapshot at 299, entries 280..=511 in the old
//! `raft_log` table) opens with this build: every key and revision is there,
//! the log moved to `raftlog/` and left the database, writes go on, and the
//! next start (no migration any more) sees all of it.

mod common;

use std::path::Path;

use anyhow::Context;
use anyhow::ensure;
use serde_json::Value;
use serde_json::json;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/v1-datadir.tar.gz"
);

fn unpack(into: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(into)?;
    let out = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(FIXTURE)
        .arg("-C")
        .arg(into)
        .output()
        .context("run tar")?;
    ensure!(
        out.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn config(dir: &Path) -> kvserver::Config {
    kvserver::Config {
        cluster_id: "fixture-v1".into(),
        ..common::local_config(dir, false)
    }
}

async fn get(http: &reqwest::Client, base: &str, key: &str) -> anyhow::Result<(u16, Value)> {
    let r = http.get(format!("{base}/v1/kv/{key}")).send().await?;
    Ok((r.status().as_u16(), r.json().await.unwrap_or(Value::Null)))
}

/// Every key the fixture's history leaves, with its value.
fn expected() -> Vec<(String, String)> {
    (41..=450)
        .map(|i| {
            let v = if (100..=119).contains(&i) {
                format!("again{i}")
            } else {
                format!("v{i}")
            };
            (format!("fixture/k{i}"), v)
        })
        .collect()
}

async fn check_all(http: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    for i in [1u64, 40] {
        let (status, _) = get(http, base, &format!("fixture/k{i}")).await?;
        ensure!(status == 404, "fixture/k{i} was deleted, got {status}");
    }
    let r: Value = http
        .get(format!("{base}/v1/kv?prefix=fixture/&limit=1000"))
        .send()
        .await?
        .json()
        .await?;
    let items = r["kvs"].as_array().context("kvs")?;
    let mut got: Vec<(String, String)> = items
        .iter()
        .map(|kv| {
            (
                kv["key"].as_str().unwrap_or_default().to_string(),
                kv["value"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    got.sort();
    let mut want = expected();
    want.sort();
    ensure!(got == want, "{} keys, expected {}", got.len(), want.len());
    Ok(())
}

async fn start(dir: &Path) -> anyhow::Result<(kvserver::NodeHandle, String)> {
    common::start_ready(config(dir)).await
}

async fn old_log_rows(db: &Path) -> anyhow::Result<(i64, i64)> {
    use sqlx::ConnectOptions;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .read_only(true)
        .connect()
        .await?;
    let entries: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM raft_log")
        .fetch_one(&mut conn)
        .await?;
    let metas: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM raft_meta WHERE name IN ('vote', 'committed', 'last_purged')",
    )
    .fetch_one(&mut conn)
    .await?;
    Ok((entries, metas))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_of_the_release_before_opens_and_its_log_moves_out() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    unpack(&data)?;
    ensure!(
        old_log_rows(&data.join("kvserver.db")).await? == (232, 3),
        "fixture as made"
    );

    let (h, base) = start(dir.path()).await?;
    let http = common::client();
    check_all(&http, &base).await?;
    let info: Value = http
        .get(format!("{base}/v1/cluster"))
        .send()
        .await?
        .json()
        .await?;
    ensure!(info["revision"] == 510, "revision carried over: {info}");
    ensure!(
        info["purged_index"] == 279,
        "purge marker carried over: {info}"
    );
    ensure!(info["term"].as_u64() >= Some(1), "{info}");
    ensure!(
        data.join("raftlog").is_dir() && !data.join("raftlog.migrating").exists(),
        "the log lives in raftlog/"
    );
    let r = http
        .put(format!("{base}/v1/kv/after/migration"))
        .json(&json!({"value": "yes"}))
        .send()
        .await?;
    ensure!(
        r.status().as_u16() == 201,
        "write after migration: {}",
        r.status()
    );
    let body: Value = r.json().await?;
    ensure!(body["revision"].as_u64() > Some(510), "{body}");
    h.shutdown().await?;
    ensure!(
        old_log_rows(&data.join("kvserver.db")).await? == (0, 0),
        "the old log left the database"
    );

    // The next start replays the new log only.
    let (h, base) = start(dir.path()).await?;
    check_all(&http, &base).await?;
    let (status, v) = get(&http, &base, "after/migration").await?;
    ensure!(status == 200 && v["kv"]["value"] == "yes", "{status} {v}");
    // And the log keeps working through snapshots and purges of its own.
    for i in 0..50 {
        let r = http
            .put(format!("{base}/v1/kv/more/{i}"))
            .json(&json!({"value": i.to_string()}))
            .send()
            .await?;
        ensure!(r.status().is_success(), "put more/{i}: {}", r.status());
    }
    h.shutdown().await?;
    Ok(())
}
