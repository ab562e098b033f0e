//! Receiving a snapshot on the peer port: the leader streams it after
//! `SnapshotBegin(2)` in chunks, which are written to a temporary file (so a
//! snapshot's size is bounded by `limits.max_snapshot_bytes`, not by memory),
//! synced, and installed.

use openraft::raft::SnapshotResponse;
use openraft::type_config::alias::SnapshotOf;
use openraft::type_config::alias::VoteOf;
use tokio::io::AsyncWriteExt;
use tokio::io::BufWriter;

use super::io::PeerReader;
use super::server::PeerServer;
use super::wire::Request;
use super::wire::read_frame;
use crate::command::TypeConfig;
use crate::raft::KvRaft;
use crate::store::snapshot::SnapshotFile;
use crate::store::snapshot::temp_path;

impl PeerServer {
    /// Receives a snapshot the leader streams after `SnapshotBegin(2)` and installs
    /// it; `announced` is its size when the leader said it.
    pub(super) async fn receive_snapshot(
        &self,
        served: &super::bind::Served,
        reader: &mut PeerReader,
        vote: VoteOf<TypeConfig>,
        meta: openraft::type_config::alias::SnapshotMetaOf<TypeConfig>,
        announced: Option<u64>,
    ) -> Result<SnapshotResponse<TypeConfig>, String> {
        receive_snapshot(
            reader,
            &served.raft,
            &served.snapshot_dir,
            vote,
            meta,
            announced,
            self.limits.max_snapshot_bytes,
        )
        .await
    }
}

async fn receive_snapshot(
    reader: &mut PeerReader,
    raft: &KvRaft,
    dir: &std::path::Path,
    vote: VoteOf<TypeConfig>,
    meta: openraft::type_config::alias::SnapshotMetaOf<TypeConfig>,
    announced: Option<u64>,
    max_bytes: u64,
) -> Result<SnapshotResponse<TypeConfig>, String> {
    // Refused before a byte is written; the connection then starts over (the
    // stream still holds the chunks), as after any failed transfer.
    if let Some(size) = announced.filter(|s| *s > max_bytes) {
        return Err(format!(
            "snapshot of {size} bytes is over this node's limit of {max_bytes} (limits.max_snapshot_bytes)"
        ));
    }
    let cap = announced.unwrap_or(max_bytes);
    let path = temp_path(dir);
    let result = async {
        let mut received = 0u64;
        let mut out = BufWriter::new(
            tokio::fs::File::create(&path)
                .await
                .map_err(|e| e.to_string())?,
        );
        loop {
            match read_frame::<_, Request>(reader)
                .await
                .map_err(|e| e.to_string())?
            {
                Request::Chunk(bytes) => {
                    received = received.saturating_add(bytes.len() as u64);
                    if received > cap {
                        return Err(match announced {
                            Some(a) => format!("snapshot sent more than the {a} bytes it announced"),
                            None => format!("snapshot is over this node's limit of {max_bytes} bytes (limits.max_snapshot_bytes)"),
                        });
                    }
                    out.write_all(&bytes).await.map_err(|e| e.to_string())?
                }
                Request::SnapshotEnd => break,
                _ => return Err("unexpected message inside a snapshot transfer".to_string()),
            }
        }
        out.flush().await.map_err(|e| e.to_string())?;
        let file = out.into_inner();
        file.sync_all().await.map_err(|e| e.to_string())?;
        drop(file);
        let snapshot = SnapshotFile::open(&path).await.map_err(|e| e.to_string())?;
        raft.install_full_snapshot(
            vote,
            SnapshotOf::<TypeConfig, SnapshotFile> { meta, snapshot },
        )
        .await
        .map_err(|e| e.to_string())
    }
    .await;
    // On success the state machine moved the file to its final name; anything left is debris.
    if tokio::fs::metadata(&path).await.is_ok() {
        let _ = tokio::fs::remove_file(&path).await;
    }
    result
}
