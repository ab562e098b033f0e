//! A node's Raft log damaged on disk, started with the same `start_node()` the
//! binary uses: a torn last write (the tail of the last frame never reached the
//! disk) is cut off and the node serves what came before; flipped bytes before
//! the tail refuse the start with an error naming the file and the offset.

mod common;

use std::path::Path;
use std::path::PathBuf;

use anyhow::Context;
use anyhow::ensure;
use kvserver::raftlog::frame::FRAME_HEADER;
use kvserver::raftlog::segment;
use serde_json::json;

fn config(dir: &Path) -> kvserver::Config {
    kvserver::Config {
        cluster_id: "damage".into(),
        ..common::local_config(dir, true)
    }
}

async fn start(dir: &Path) -> anyhow::Result<(kvserver::NodeHandle, String)> {
    common::start_ready(config(dir)).await
}

/// The last segment of the node's log and its frames' offsets.
fn frames(dir: &Path) -> anyhow::Result<(PathBuf, Vec<u64>, u64)> {
    let log = dir.join("data").join(kvserver::raftlog::DIR);
    let n = *segment::list(&log)?.last().context("a segment")?;
    let path = segment::path(&log, n);
    let s = segment::scan(&path, None, true)?;
    let starts = s
        .frames
        .iter()
        .map(|f| f.payload_at - FRAME_HEADER as u64)
        .collect();
    Ok((path, starts, s.end))
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let dest = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &dest)?;
        } else {
            std::fs::copy(e.path(), dest)?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_is_cut_off_and_corruption_before_it_refuses_the_start() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (h, base) = start(dir.path()).await?;
    let http = common::client();
    for i in 0..40 {
        let r = http
            .put(format!("{base}/v1/kv/k{i}"))
            .json(&json!({"value": format!("v{i}")}))
            .send()
            .await?;
        ensure!(r.status().is_success(), "put k{i}: {}", r.status());
    }
    h.shutdown().await?;

    // A torn last write: the second half of the last frame is zeros.
    let torn = tempfile::tempdir()?;
    copy_dir(dir.path(), torn.path())?;
    let (path, starts, end) = frames(torn.path())?;
    let last = *starts.last().context("frames")?;
    let mut bytes = std::fs::read(&path)?;
    bytes[((last + end) / 2) as usize..end as usize].fill(0);
    std::fs::write(&path, &bytes)?;
    let (h, base) = start(torn.path()).await?;
    // Whatever the cut frame held was never acknowledged in real life; all before it is there.
    for i in 0..39 {
        let r = http.get(format!("{base}/v1/kv/k{i}")).send().await?;
        ensure!(
            r.status() == 200,
            "k{i} after the torn tail: {}",
            r.status()
        );
    }
    let r = http
        .put(format!("{base}/v1/kv/after"))
        .json(&json!({"value": "x"}))
        .send()
        .await?;
    ensure!(
        r.status().is_success(),
        "write after repair: {}",
        r.status()
    );
    h.shutdown().await?;

    // Flipped bytes in a frame with valid frames after it: refused, named.
    let (path, starts, _) = frames(dir.path())?;
    ensure!(starts.len() > 3, "enough frames: {}", starts.len());
    let victim = starts[starts.len() / 2];
    let mut bytes = std::fs::read(&path)?;
    bytes[(victim + FRAME_HEADER as u64 + 3) as usize] ^= 0x40;
    std::fs::write(&path, &bytes)?;
    let err = match kvserver::start_node(config(dir.path())).await {
        Ok(h) => {
            h.shutdown().await?;
            anyhow::bail!("a node started on a corrupt log");
        }
        Err(e) => e.to_string(),
    };
    ensure!(
        err.contains(&path.display().to_string()) && err.contains(&format!("offset {victim}")),
        "the error names file and offset: {err}"
    );
    Ok(())
}
