//! Inbound peer connections. Before a single Raft message is read, a
//! connection must pass, in order: the TLS handshake (with peer TLS: a client
//! certificate the cluster CA bundle trusts), the hello (size-capped, under a
//! deadline), and the admission check (`super::admit`): the certificate names
//! node `from` of this cluster, and `from` is in this node's membership with a
//! certificate valid for the host of its member address, or this node's
//! membership may be stale, and then `from` is served replication only until it
//! shows up in it. A member removed later is refused at its next request.
//! Refusals tell the peer a reason code only; the details go to this node's log
//! and `kv_peer_refused_total`. Then requests are dispatched to this node's
//! Raft; snapshots are received into a temporary file (`super::receive`).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::raft::AppendEntriesResponse;
use tokio::net::TcpListener;
use tokio::net::TcpStream;

use super::PeerError;
use super::admit::Refusal;
use super::admit::Standing;
use super::admit::admit;
use super::admit::is_replication;
use super::admit::refuse;
use super::admit::standing;
use super::bind::Served;
use super::bind::select;
use super::forwarded::forwarded_write;
use super::io::HELLO_TIMEOUT;
use super::io::PeerIo;
use super::io::PeerReader;
use super::wire::HELLO_MAX;
use super::wire::Hello;
use super::wire::Request;
use super::wire::Response;
use super::wire::WriteRejected;
use super::wire::read_frame;
use super::wire::read_frame_capped;
use super::wire::write_frame;
use crate::catchup::CatchUp;
use crate::command::NodeId;
use crate::group::CLUSTER_GROUP;
use crate::raft::KvRaft;
use crate::raft::initialized;

/// What the peer server shares with the rest of the node.
#[derive(Debug)]
pub struct PeerState {
    /// Wall-clock ms of the last accepted append-entries (for `/status`).
    pub last_append_ms: AtomicU64,
    /// Wall-clock ms of the last time a peer addressed this empty node as a voter (0: never).
    pub lost_data_ms: AtomicU64,
    /// Whether this node may hold a stale replay of the log (it started empty).
    pub catch_up: CatchUp,
    /// Wall-clock ms of the last accepted append-entries from a leader in this
    /// node's membership (see `admit`: until then, or long after, strangers are
    /// only unverified).
    pub member_leader_ms: AtomicU64,
}

impl PeerState {
    pub fn new(catch_up: CatchUp) -> PeerState {
        PeerState {
            last_append_ms: AtomicU64::new(0),
            lost_data_ms: AtomicU64::new(0),
            catch_up,
            member_leader_ms: AtomicU64::new(0),
        }
    }
}

/// What the peer server needs, shared by every connection.
pub struct PeerServer {
    pub raft: KvRaft,
    pub node_id: NodeId,
    pub cluster_id: Arc<str>,
    pub snapshot_dir: std::path::PathBuf,
    pub state: Arc<PeerState>,
    /// The partition groups this node hosts: a connection may bind to one.
    pub groups: Arc<crate::group::Groups>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Mutual TLS and member identities; `None`: plaintext (local use only).
    pub tls: Option<Arc<crate::tls::PeerTls>>,
    /// The value limit of forwarded writes (the API's `max_value_bytes`).
    pub max_value_bytes: usize,
    /// Whether client requests must authenticate (`auth.enabled`): then a
    /// forwarded write must name a real principal.
    pub auth_enabled: bool,
    /// `limits.peer_max_connections` and `limits.max_snapshot_bytes`.
    pub limits: crate::config::LimitsConfig,
    /// How long without word from a leader in this node's membership makes that
    /// membership possibly stale (see `admit`).
    pub leader_silence: Duration,
}

/// Serves the peer port until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    server: Arc<PeerServer>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    // Every connection, admitted or still saying hello, holds a slot: a flood of
    // connections costs refused connections, not memory or file descriptors.
    let slots = Arc::new(tokio::sync::Semaphore::new(
        server.limits.peer_max_connections,
    ));
    // Open connections close when the port does: a stopped node's connections
    // would otherwise keep answering "raft stopped", and a peer holding one would
    // never redial the node that restarts on the same port (tests/groups.rs).
    let (closing, closed) = tokio::sync::watch::channel(false);
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                let _ = closing.send(true);
                return;
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        server.metrics.peer_refused.with_label_values(&["connections"]).inc();
                        tracing::debug!(%peer, "peer connection refused: limits.peer_max_connections reached");
                        continue;
                    };
                    let server = server.clone();
                    let mut closed = closed.clone();
                    tokio::spawn(async move {
                        let _slot = slot;
                        let serving = serve_peer(stream, peer, &server);
                        tokio::select! {
                            _ = serving => {}
                            _ = closed.wait_for(|c| *c) => {}
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

/// One inbound connection, from its first byte to its close.
async fn serve_peer(stream: TcpStream, peer: std::net::SocketAddr, server: &PeerServer) {
    let opened = tokio::time::timeout(HELLO_TIMEOUT, open(stream, server)).await;
    let opened = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(Closed::Refused(refusal))) => {
            return server.refused(&peer.to_string(), refusal, false);
        }
        Ok(Err(Closed::Dropped(why))) => {
            return tracing::debug!(%peer, "peer connection closed before its hello: {why}");
        }
        Err(_) => {
            return server.refused(
                &peer.to_string(),
                refuse("hello", "no TLS handshake and hello within the deadline"),
                false,
            );
        }
    };
    if let Err(e) = serve_conn(opened, server).await {
        tracing::debug!(%peer, error = %e, "peer connection closed");
    }
}

impl PeerServer {
    fn refused(&self, peer: &str, r: Refusal, quiet: bool) {
        self.metrics
            .peer_refused
            .with_label_values(&[r.reason])
            .inc();
        if quiet {
            tracing::debug!(peer, reason = r.reason, "peer refused: {}", r.detail);
        } else {
            tracing::warn!(peer, reason = r.reason, "peer refused: {}", r.detail);
        }
    }
}

/// A connection that passed the handshake and read its hello.
struct Opened {
    reader: PeerReader,
    writer: super::io::PeerWriter,
    hello: Hello,
    /// The node the peer's certificate names (with TLS).
    cert_node: Option<(NodeId, rustls_pki_types::CertificateDer<'static>)>,
}

/// The TLS handshake and the hello, under [`HELLO_TIMEOUT`] (set by the caller).
/// Why a connection ended before it was admitted.
enum Closed {
    /// It broke a rule (counted and logged).
    Refused(Refusal),
    /// The dialer went away first — a dial its owner gave up on (an RPC that
    /// timed out while this node was starting, say): nothing to report.
    Dropped(String),
}

impl From<Refusal> for Closed {
    fn from(r: Refusal) -> Self {
        Closed::Refused(r)
    }
}

/// Whether an I/O error means the other side closed the connection (rather than
/// sent something wrong).
fn hung_up(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe
    )
}

async fn open(stream: TcpStream, server: &PeerServer) -> Result<Opened, Closed> {
    let _ = stream.set_nodelay(true);
    let (io, cert_node) = match &server.tls {
        None => (PeerIo::Plain(stream), None),
        Some(tls) => {
            let s = tls.accept(stream).await.map_err(|e| match hung_up(&e) {
                true => Closed::Dropped(format!("during the TLS handshake: {e}")),
                false => Closed::Refused(refuse("tls", format!("TLS handshake failed: {e}"))),
            })?;
            let certs = s.get_ref().1.peer_certificates();
            let id = tls
                .member_id(certs)
                .map_err(|why| refuse("identity", format!("the peer is not a member: {why}")))?;
            let cert = certs
                .and_then(|c| c.first())
                .map(|c| c.clone().into_owned())
                .ok_or_else(|| refuse("identity", "the peer presented no certificate"))?;
            (
                PeerIo::Tls(Box::new(tokio_rustls::TlsStream::Server(s))),
                Some((id, cert)),
            )
        }
    };
    let (mut reader, writer) = io.split();
    let hello: Hello = read_frame_capped(&mut reader, HELLO_MAX)
        .await
        .map_err(|e| match e {
            PeerError::Io(io) if hung_up(&io) => Closed::Dropped(format!("before its hello: {io}")),
            e => Closed::Refused(refuse("hello", format!("no valid hello: {e}"))),
        })?;
    Ok(Opened {
        reader,
        writer,
        hello,
        cert_node,
    })
}

async fn serve_conn(opened: Opened, server: &PeerServer) -> Result<(), PeerError> {
    let PeerServer {
        raft,
        node_id,
        cluster_id,
        snapshot_dir: _,
        state: peer_state,
        groups: _,
        metrics,
        tls: _,
        max_value_bytes: _,
        auth_enabled,
        limits: _,
        leader_silence,
    } = server;
    let node_id = *node_id;
    let Opened {
        mut reader,
        mut writer,
        hello,
        cert_node,
    } = opened;
    let mut quiet = false;
    // Whether the peer's certificate was checked against its member address.
    let mut verified = false;
    let refusal = if let Some((cert_id, _)) = cert_node.as_ref().filter(|(id, _)| *id != hello.from)
    {
        Some(refuse(
            "identity",
            format!(
                "the hello says node {} but the certificate names node {cert_id}",
                hello.from
            ),
        ))
    } else if *hello.cluster_id != **cluster_id {
        Some(refuse(
            "cluster_id",
            format!(
                "cluster id mismatch: peer {} is in {:?}, this node in {:?}",
                hello.from, hello.cluster_id, cluster_id
            ),
        ))
    } else if hello.to != node_id {
        Some(refuse(
            "node_id",
            format!(
                "node id mismatch: peer {} dialed node {} but this is node {}",
                hello.from, hello.to, node_id
            ),
        ))
    } else if let Some(Err(r)) = cert_node.as_ref().map(|(_, cert)| {
        let standing = standing(raft, peer_state, *leader_silence, hello.from);
        verified = matches!(standing, Standing::Member(_));
        admit(&standing, hello.from, cert)
    }) {
        Some(r)
    } else if hello.to_is_voter && !initialized(raft) {
        let now = crate::command::now_ms();
        let before = peer_state.lost_data_ms.swap(now, Ordering::Relaxed);
        // The leader redials every heartbeat: warn on the first refusal and then once a minute.
        quiet = now.saturating_sub(before) < 60_000;
        Some(refuse(
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
    if let Some(r) = refusal {
        // The peer learns the reason code; lost_data also its explanation, which
        // the operator shows (it names only node ids).
        let told = if r.reason == "lost_data" {
            format!("refused ({}): {}", r.reason, r.detail)
        } else {
            format!("refused ({})", r.reason)
        };
        let reason = r.reason;
        server.refused(&format!("node {}", hello.from), r, quiet);
        write_frame(&mut writer, &Response::Error(told)).await?;
        return Err(PeerError::Refused(reason.to_string()));
    }
    write_frame(&mut writer, &Response::HelloOk).await?;
    // The group the connection serves: the cluster's until it names another.
    let mut served = Served {
        group: CLUSTER_GROUP,
        raft: raft.clone(),
        state: peer_state.clone(),
        snapshot_dir: server.snapshot_dir.clone(),
    };
    loop {
        let req: Request = match read_frame(&mut reader).await {
            Ok(r) => r,
            Err(PeerError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        if let Some((_, cert)) = &cert_node {
            match standing(raft, peer_state, *leader_silence, hello.from) {
                // A member removed while connected is refused from its next request on.
                Standing::Stranger => {
                    let r = refuse(
                        "not_member",
                        format!("node {} is no longer a member", hello.from),
                    );
                    server.refused(&format!("node {}", hello.from), r, false);
                    write_frame(&mut writer, &Response::Error("refused (not_member)".into()))
                        .await?;
                    return Err(PeerError::Refused("not_member".into()));
                }
                // Admitted unverified, now in the membership: its certificate is checked once.
                s @ Standing::Member(_) if !verified => {
                    if let Err(r) = admit(&s, hello.from, cert) {
                        let told = format!("refused ({})", r.reason);
                        let reason = r.reason;
                        server.refused(&format!("node {}", hello.from), r, false);
                        write_frame(&mut writer, &Response::Error(told)).await?;
                        return Err(PeerError::Refused(reason.into()));
                    }
                    verified = true;
                }
                Standing::Unverified if !is_replication(&req) => {
                    metrics
                        .peer_refused
                        .with_label_values(&["unverified"])
                        .inc();
                    let msg = format!(
                        "node {node_id} cannot place node {} in its membership yet and serves it replication only",
                        hello.from
                    );
                    write_frame(&mut writer, &unverified_answer(&req, msg)).await?;
                    continue;
                }
                _ => {}
            }
        }
        let resp = match req {
            Request::Append(rpc) => {
                let leader_term = rpc.vote.leader_id().term;
                let last_term = rpc
                    .entries
                    .last()
                    .map(|e| &e.log_id)
                    .or(rpc.prev_log_id.as_ref())
                    .map(|l| l.leader_id.term);
                let r = served
                    .raft
                    .append_entries(rpc)
                    .await
                    .map_err(|e| e.to_string());
                // Only a sender this node accepts as leader counts as contact with one.
                if r.as_ref()
                    .is_ok_and(|r| !matches!(r, AppendEntriesResponse::HigherVote(_)))
                {
                    let now = crate::command::now_ms();
                    served.state.last_append_ms.store(now, Ordering::Relaxed);
                    // Contact with the cluster group's leader only: it is what says
                    // whether this node's membership is current (see `admit`).
                    if served.group == CLUSTER_GROUP
                        && let Standing::Member(_) =
                            standing(raft, peer_state, *leader_silence, hello.from)
                    {
                        peer_state.member_leader_ms.store(now, Ordering::Relaxed);
                    }
                }
                // `Success` is sent once the entries are flushed.
                if matches!(r, Ok(AppendEntriesResponse::Success)) {
                    served
                        .state
                        .catch_up
                        .appended(&served.raft, leader_term, last_term)
                        .await;
                }
                Response::Append(r)
            }
            // An empty store never votes: a wiped voter's vote could elect a leader
            // that lacks entries this node had acknowledged before it lost them. Nor
            // does one still replaying the log after starting empty (`crate::catchup`).
            Request::Vote(_) | Request::PreVote(_) | Request::TransferLeader(_)
                if !initialized(&served.raft) || served.state.catch_up.active() =>
            {
                let why = match initialized(&served.raft) {
                    false => "empty_vote",
                    true => "catching_up",
                };
                metrics.peer_refused.with_label_values(&[why]).inc();
                let msg = match why {
                    "empty_vote" => format!("node {node_id} has an empty store and does not vote"),
                    _ => format!(
                        "node {node_id} is catching up after starting empty and does not vote or lead yet"
                    ),
                };
                match req {
                    Request::TransferLeader(_) => Response::TransferLeader(Err(msg)),
                    _ => Response::Vote(Err(msg)),
                }
            }
            Request::Vote(rpc) => Response::Vote(served.raft.vote(rpc).await.map_err(|e| e.to_string())),
            Request::PreVote(rpc) => {
                Response::Vote(served.raft.pre_vote(rpc).await.map_err(|e| e.to_string()))
            }
            Request::TransferLeader(rpc) => Response::TransferLeader(
                served
                    .raft
                    .handle_transfer_leader(rpc)
                    .await
                    .map_err(|e| e.to_string()),
            ),
            Request::SnapshotBegin { vote, meta } => {
                Response::Snapshot(server.receive_snapshot(&served, &mut reader, vote, meta, None).await)
            }
            Request::SnapshotBegin2 { vote, meta, size } => Response::Snapshot(
                server
                    .receive_snapshot(&served, &mut reader, vote, meta, Some(size))
                    .await,
            ),
            Request::ReadIndex => Response::ReadIndex(
                served
                    .raft
                    .get_read_linearizer(openraft::ReadPolicy::ReadIndex)
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
            Request::Features2 => Response::Features2 { write_as: true },
            Request::Write(cmd) if !*auth_enabled => Response::Write(
                forwarded_write(
                    server,
                    &served.raft,
                    hello.from,
                    cmd,
                    &crate::auth::Principal::anonymous(),
                )
                    .await,
            ),
            // Not proposed, and said so in a form the previous release reads: its
            // client gets a 400 instead of an unknown outcome while the pods roll.
            Request::Write(_) => Response::Write(Err(WriteRejected::Invalid(
                crate::command::Invalid {
                    code: "auth_required".into(),
                    message: "the leader requires client authentication and the node that forwarded this write predates it; retry once every member runs the same release".into(),
                },
            ))),
            Request::WriteAs { command, principal } => {
                Response::Write(
                    forwarded_write(server, &served.raft, hello.from, command, &principal).await,
                )
            }
            Request::Group { group, to_is_voter } => match select(server, &served, group, to_is_voter) {
                Ok(s) => {
                    served = s;
                    Response::GroupOk
                }
                Err(why) => {
                    // The dialer redials; a refused group leaves nothing half-bound.
                    write_frame(&mut writer, &Response::Error(why)).await?;
                    return Ok(());
                }
            },
            Request::Groups => Response::Groups(server.groups.reports()),
            Request::Move(m) => Response::Moved(server.groups.carry_out(hello.from, m).await),
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

/// The answer to request `req` of an unverified peer (see `admit`), in the form
/// its caller expects.
fn unverified_answer(req: &Request, msg: String) -> Response {
    match req {
        Request::Vote(_) | Request::PreVote(_) => Response::Vote(Err(msg)),
        Request::TransferLeader(_) => Response::TransferLeader(Err(msg)),
        Request::ReadIndex => Response::ReadIndex(Err(msg)),
        Request::Write(_) | Request::WriteAs { .. } => {
            Response::Write(Err(WriteRejected::NotLeader(None)))
        }
        _ => Response::Error(msg),
    }
}
