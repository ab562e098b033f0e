//! Inbound peer connections: the hello is checked (cluster id, node id, and
//! the lost-data rule) before any Raft message is read, then requests are
//! dispatched to this node's Raft; snapshots are received into a temporary file.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::raft::AppendEntriesResponse;
use openraft::raft::SnapshotResponse;
use openraft::type_config::alias::SnapshotOf;
use openraft::type_config::alias::VoteOf;
use tokio::io::AsyncWriteExt;
use tokio::io::BufReader;
use tokio::io::BufWriter;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

use super::PeerError;
use super::wire::Hello;
use super::wire::Request;
use super::wire::Response;
use super::wire::WriteRejected;
use super::wire::read_frame;
use super::wire::write_frame;
use crate::command::NodeId;
use crate::command::TypeConfig;
use crate::raft::CONFIRM_WAIT;
use crate::raft::KvRaft;
use crate::raft::initialized;
use crate::raft::propose;
use crate::store::snapshot::SnapshotFile;
use crate::store::snapshot::temp_path;

/// What the peer server shares with the rest of the node.
#[derive(Debug, Default)]
pub struct PeerState {
    /// Wall-clock ms of the last accepted append-entries (for `/status`).
    pub last_append_ms: AtomicU64,
    /// Wall-clock ms of the last time a peer addressed this empty node as a voter (0: never).
    pub lost_data_ms: AtomicU64,
}

/// What the peer server needs, shared by every connection.
pub struct PeerServer {
    pub raft: KvRaft,
    pub node_id: NodeId,
    pub cluster_id: Arc<str>,
    pub snapshot_dir: std::path::PathBuf,
    pub state: Arc<PeerState>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Serves the peer port until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    server: Arc<PeerServer>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let server = server.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve_conn(stream, &server).await {
                            tracing::debug!(%peer, error = %e, "peer connection closed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept on peer port failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

async fn serve_conn(stream: TcpStream, server: &PeerServer) -> Result<(), PeerError> {
    let PeerServer {
        raft,
        node_id,
        cluster_id,
        snapshot_dir,
        state: peer_state,
        metrics,
    } = server;
    let node_id = *node_id;
    stream.set_nodelay(true)?;
    let (r, w) = stream.into_split();
    let mut reader = BufReader::new(r);
    let mut writer = BufWriter::new(w);
    let hello: Hello = read_frame(&mut reader).await?;
    let mut quiet = false;
    let refusal = if *hello.cluster_id != **cluster_id {
        Some((
            "cluster_id",
            format!(
                "cluster id mismatch: peer {} is in {:?}, this node in {:?}",
                hello.from, hello.cluster_id, cluster_id
            ),
        ))
    } else if hello.to != node_id {
        Some((
            "node_id",
            format!(
                "node id mismatch: peer {} dialed node {} but this is node {}",
                hello.from, hello.to, node_id
            ),
        ))
    } else if hello.to_is_voter && !initialized(raft) {
        let now = crate::command::now_ms();
        let before = peer_state.lost_data_ms.swap(now, Ordering::Relaxed);
        // The leader redials every heartbeat: warn on the first refusal and then once a minute.
        quiet = now.saturating_sub(before) < 60_000;
        Some((
            "lost_data",
            format!(
                "node {node_id} has an empty store but peer {} counts it as a voter: its data was lost. \
                 It will not vote or accept entries as a voter; remove it from the voters and add it back as a learner",
                hello.from
            ),
        ))
    } else {
        None
    };
    if let Some((reason, msg)) = refusal {
        metrics.peer_refused.with_label_values(&[reason]).inc();
        if quiet {
            tracing::debug!(peer = hello.from, reason, "{msg}");
        } else {
            tracing::warn!(peer = hello.from, reason, "{msg}");
        }
        write_frame(&mut writer, &Response::Error(msg.clone())).await?;
        return Err(PeerError::Refused(msg));
    }
    write_frame(&mut writer, &Response::HelloOk).await?;
    loop {
        let req: Request = match read_frame(&mut reader).await {
            Ok(r) => r,
            Err(PeerError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        let resp = match req {
            Request::Append(rpc) => {
                let r = raft.append_entries(rpc).await.map_err(|e| e.to_string());
                // Only a sender this node accepts as leader counts as contact with one.
                if r.as_ref()
                    .is_ok_and(|r| !matches!(r, AppendEntriesResponse::HigherVote(_)))
                {
                    peer_state
                        .last_append_ms
                        .store(crate::command::now_ms(), Ordering::Relaxed);
                }
                Response::Append(r)
            }
            // An empty store never votes: a wiped voter's vote could elect a leader
            // that lacks entries this node had acknowledged before it lost them.
            Request::Vote(_) | Request::PreVote(_) if !initialized(raft) => {
                metrics
                    .peer_refused
                    .with_label_values(&["empty_vote"])
                    .inc();
                Response::Vote(Err(format!(
                    "node {node_id} has an empty store and does not vote"
                )))
            }
            Request::Vote(rpc) => Response::Vote(raft.vote(rpc).await.map_err(|e| e.to_string())),
            Request::PreVote(rpc) => {
                Response::Vote(raft.pre_vote(rpc).await.map_err(|e| e.to_string()))
            }
            Request::TransferLeader(rpc) => Response::TransferLeader(
                raft.handle_transfer_leader(rpc)
                    .await
                    .map_err(|e| e.to_string()),
            ),
            Request::SnapshotBegin { vote, meta } => Response::Snapshot(
                receive_snapshot(&mut reader, raft, snapshot_dir, vote, meta).await,
            ),
            Request::ReadIndex => Response::ReadIndex(
                raft.get_read_linearizer(openraft::ReadPolicy::ReadIndex)
                    .await
                    .map(|l| l.read_log_id().index())
                    .map_err(|e| e.to_string()),
            ),
            Request::CapabilitiesV1 => Response::CapabilitiesV1 {
                client_write: false,
            },
            Request::ClientWriteV1(_) => Response::Error(
                "forwarded writes of the previous release are not served; relay over HTTP".into(),
            ),
            Request::Features => Response::Features { write: true },
            Request::Write(mut cmd) => {
                // Time is the leader's, as for writes it receives itself.
                cmd.restamp(crate::command::now_ms());
                Response::Write(match propose(raft, cmd, CONFIRM_WAIT).await {
                    Ok(r) => Ok(r.data),
                    Err(openraft::error::RaftError::APIError(
                        openraft::error::ClientWriteError::ForwardToLeader(f),
                    )) => Err(WriteRejected::NotLeader(f.leader_id)),
                    Err(e) => Err(WriteRejected::Failed(e.to_string())),
                })
            }
            Request::Chunk(_) | Request::SnapshotEnd => {
                Response::Error("snapshot data outside a transfer".into())
            }
        };
        let failed_transfer = matches!(resp, Response::Snapshot(Err(_)));
        write_frame(&mut writer, &resp).await?;
        if failed_transfer {
            // The stream may still hold chunks of the aborted transfer: start over on a new connection.
            return Ok(());
        }
    }
}

async fn receive_snapshot(
    reader: &mut BufReader<OwnedReadHalf>,
    raft: &KvRaft,
    dir: &std::path::Path,
    vote: VoteOf<TypeConfig>,
    meta: openraft::type_config::alias::SnapshotMetaOf<TypeConfig>,
) -> Result<SnapshotResponse<TypeConfig>, String> {
    let path = temp_path(dir);
    let result = async {
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
                Request::Chunk(bytes) => out.write_all(&bytes).await.map_err(|e| e.to_string())?,
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
