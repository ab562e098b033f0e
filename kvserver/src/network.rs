//! Raft peer transport: a small binary protocol over TCP on the peer port.
//!
//! Each openraft network client owns one TCP connection to its target, opened
//! lazily and reused for every RPC until an error drops it; openraft keeps one
//! client per replication stream, so steady-state replication never reconnects.
//! Frames are `u32` big-endian length + bincode, bounded in size so a bad peer
//! cannot make us allocate without limit. A connection starts with a hello
//! naming cluster id and both node ids: a node of another cluster, or a stale
//! address now used by another node, is refused before any Raft message.
//! Snapshots are streamed from the snapshot file in chunks and written to a
//! temporary file on the receiver, so their size is not bounded by memory.
//!
//! **Lost data.** The hello also says whether the dialer counts the target as a
//! voter. A node whose store is empty (never initialized, or its volume was
//! wiped) refuses to take part as a voter: it answers no vote or pre-vote, and
//! accepts replication only from a leader that lists it as a learner. A voter
//! that forgot its log and vote could otherwise elect a leader lacking entries
//! it had acknowledged, and a committed write would be lost. The refusal is
//! visible as `lost_data` in `GET /v1/cluster`; the fix is to remove the member
//! from the voters and add it back as a learner (the operator does this).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::RPCTypes;
use openraft::Raft;
use openraft::RaftNetworkFactory;
use openraft::RaftNetworkV2;
use openraft::error::NetworkError;
use openraft::error::RPCError;
use openraft::error::ReplicationClosed;
use openraft::error::StreamingError;
use openraft::error::Timeout;
use openraft::error::Unreachable;
use openraft::network::RPCOption;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::SnapshotResponse;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::TransferLeaderResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use openraft::type_config::alias::SnapshotOf;
use openraft::type_config::alias::VoteOf;
use serde::Deserialize;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::io::BufReader;
use tokio::io::BufWriter;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::tcp::OwnedWriteHalf;

use crate::store::StateMachine;
use crate::store::snapshot::SnapshotFile;
use crate::store::snapshot::temp_path;
use crate::types::ApplyResult;
use crate::types::Command;
use crate::types::KvNode;
use crate::types::NodeId;
use crate::types::TypeConfig;

/// How long a write waits for a just-elected leader to be confirmed by a quorum
/// (one heartbeat round trip, normally).
pub const CONFIRM_WAIT: Duration = Duration::from_secs(1);

/// The Raft handle type of this crate.
pub type KvRaft = Raft<TypeConfig, StateMachine>;

/// A snapshot of this node's openraft metrics.
pub fn raft_metrics(raft: &KvRaft) -> openraft::RaftMetrics<TypeConfig> {
    use openraft::async_runtime::WatchReceiver;
    raft.metrics().borrow_watched().clone()
}

/// The Raft address of member `id` in `raft`'s current membership.
pub fn member_raft_addr(raft: &KvRaft, id: NodeId) -> Option<String> {
    use openraft::async_runtime::WatchReceiver;
    let metrics = raft.metrics();
    let m = metrics.borrow_watched();
    m.membership_config
        .membership()
        .get_node(&id)
        .map(|n| n.raft_addr.clone())
}

/// Largest frame accepted from a peer (entries batches are bounded by config far below this).
const MAX_FRAME: u32 = 256 * 1024 * 1024;
const SNAPSHOT_CHUNK: usize = 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors of the peer transport.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer frame of {0} bytes exceeds the {MAX_FRAME} byte limit")]
    FrameTooLarge(u32),
    #[error("peer message encoding: {0}")]
    Codec(#[from] bincode::Error),
    #[error("peer refused connection: {0}")]
    Refused(String),
    #[error("peer answered with an unexpected message")]
    Unexpected,
    #[error("remote error: {0}")]
    Remote(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    cluster_id: String,
    from: NodeId,
    to: NodeId,
    /// Whether the dialer's membership counts `to` as a voter.
    to_is_voter: bool,
}

/// What the peer server shares with the rest of the node.
#[derive(Debug, Default)]
pub struct PeerState {
    /// Wall-clock ms of the last accepted append-entries (for `/status`).
    pub last_append_ms: AtomicU64,
    /// Wall-clock ms of the last time a peer addressed this empty node as a voter (0: never).
    pub lost_data_ms: AtomicU64,
}

/// Whether `m` shows a membership (the node was initialized or joined a
/// cluster): false on an empty store.
pub fn has_membership(m: &openraft::RaftMetrics<TypeConfig>) -> bool {
    m.membership_config.membership().nodes().next().is_some()
}

/// Whether this node's Raft state holds a membership: false on an empty store.
pub fn initialized(raft: &KvRaft) -> bool {
    has_membership(&raft_metrics(raft))
}

/// Whether `m` is a leader that no quorum has acknowledged yet. openraft refuses
/// writes there (its lease check answers `ForwardToLeader` naming no leader); it
/// is the first milliseconds of every term, exactly when followers hand over the
/// writes they held during a leadership hand-off.
fn unconfirmed_leader(m: &openraft::RaftMetrics<TypeConfig>) -> bool {
    m.state == openraft::ServerState::Leader
        && m.last_quorum_acked.is_none()
        && m.membership_config
            .membership()
            .voter_ids()
            .any(|v| v != m.id)
}

/// Proposes `cmd`. A leader elected a moment ago first waits (at most `wait`)
/// for a quorum to acknowledge it, instead of refusing the write as "no leader".
pub async fn propose(
    raft: &KvRaft,
    cmd: Command,
    wait: Duration,
) -> Result<
    openraft::raft::ClientWriteResponse<TypeConfig>,
    openraft::error::RaftError<TypeConfig, openraft::error::ClientWriteError<TypeConfig>>,
> {
    use openraft::async_runtime::WatchReceiver;
    if unconfirmed_leader(&raft.metrics().borrow_watched()) {
        let _ = raft
            .wait(Some(wait))
            .metrics(
                |m| !unconfirmed_leader(m),
                "a quorum acknowledged the leader",
            )
            .await;
    }
    raft.client_write(cmd).await
}

#[derive(Debug, Serialize, Deserialize)]
enum Request {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<TypeConfig>),
    PreVote(VoteRequest<TypeConfig>),
    TransferLeader(TransferLeaderRequest<TypeConfig>),
    /// Starts a snapshot transfer; `Chunk`s follow, then `SnapshotEnd`.
    SnapshotBegin {
        vote: VoteOf<TypeConfig>,
        meta: openraft::type_config::alias::SnapshotMetaOf<TypeConfig>,
    },
    Chunk(Vec<u8>),
    SnapshotEnd,
    /// A follower asks the leader for a read index (follower reads, see `crate::read`).
    ReadIndex,
    /// Which of the requests after `ReadIndex` the server knows (a server that
    /// predates this message closes the connection instead of answering).
    Capabilities,
    /// A follower hands a client's write to the leader (see `crate::forward`).
    ClientWrite(Command),
}

#[derive(Debug, Serialize, Deserialize)]
enum Response {
    HelloOk,
    Append(Result<AppendEntriesResponse<TypeConfig>, String>),
    Vote(Result<VoteResponse<TypeConfig>, String>),
    TransferLeader(Result<TransferLeaderResponse<TypeConfig>, String>),
    Snapshot(Result<SnapshotResponse<TypeConfig>, String>),
    Error(String),
    /// The log index a read must see applied, confirmed by a quorum after the request arrived.
    ReadIndex(Result<u64, String>),
    Capabilities {
        client_write: bool,
    },
    /// The state machine's result of a forwarded write as JSON (its key-value type
    /// omits absent fields, which bincode cannot express), or why it was not
    /// proposed (`NotLeader`) or failed.
    ClientWrite(Result<Vec<u8>, WriteRejected>),
}

/// Why the leader did not apply a forwarded write.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WriteRejected {
    /// This node is not the leader (it names the one it knows): not proposed.
    NotLeader(Option<NodeId>),
    /// Proposing failed (the node is shutting down, storage failed, …): outcome unknown.
    Failed(String),
}

async fn write_frame<W: AsyncWriteExt + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), PeerError> {
    let bytes = bincode::serialize(msg)?;
    w.write_u32(bytes.len() as u32).await?;
    w.write_all(&bytes).await?;
    w.flush().await?;
    Ok(())
}

async fn read_frame<R: AsyncReadExt + Unpin, T: DeserializeOwned>(
    r: &mut R,
) -> Result<T, PeerError> {
    let len = r.read_u32().await?;
    if len > MAX_FRAME {
        return Err(PeerError::FrameTooLarge(len));
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf).await?;
    Ok(bincode::deserialize(&buf)?)
}

/// Creates network clients for openraft.
#[derive(Clone)]
pub struct NetworkFactory {
    pub node_id: NodeId,
    pub cluster_id: Arc<str>,
    /// This node's Raft handle, set once it exists (the factory is created first):
    /// the hello reads the current membership from it.
    pub raft: Arc<std::sync::OnceLock<KvRaft>>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &KvNode) -> PeerClient {
        PeerClient {
            me: self.node_id,
            target,
            addr: node.raft_addr.clone(),
            cluster_id: self.cluster_id.clone(),
            raft: self.raft.clone(),
            conn: None,
        }
    }
}

struct Conn {
    reader: BufReader<OwnedReadHalf>,
    writer: BufWriter<OwnedWriteHalf>,
}

/// A client for one target peer holding one reusable connection.
pub struct PeerClient {
    me: NodeId,
    target: NodeId,
    addr: String,
    cluster_id: Arc<str>,
    raft: Arc<std::sync::OnceLock<KvRaft>>,
    conn: Option<Conn>,
}

impl PeerClient {
    /// A client of `target` at `addr` outside openraft (follower reads, forwarded writes).
    pub(crate) fn new(
        me: NodeId,
        target: NodeId,
        addr: String,
        cluster_id: Arc<str>,
        raft: &KvRaft,
    ) -> Self {
        let handle = Arc::new(std::sync::OnceLock::new());
        let _ = handle.set(raft.clone());
        Self {
            me,
            target,
            addr,
            cluster_id,
            raft: handle,
            conn: None,
        }
    }

    /// Whether the target understands forwarded writes (one exchange, on connecting).
    pub(crate) async fn supports_client_write(&mut self, ttl: Duration) -> Result<bool, PeerError> {
        match self.call(&Request::Capabilities, ttl).await {
            Ok(Response::Capabilities { client_write }) => Ok(client_write),
            Ok(_) => Ok(false),
            // An older server closes the connection on a request it cannot decode.
            Err(PeerError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether the held connection is still usable: open, with nothing unread (a peer
    /// that closed it shows as end of file). Without a connection: false.
    pub(crate) fn is_open(&self) -> bool {
        let Some(conn) = &self.conn else {
            return false;
        };
        if !conn.reader.buffer().is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(conn.reader.get_ref().try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Whether a connection to the target is open (or can be opened now).
    pub(crate) async fn ensure_connected(&mut self) -> Result<(), PeerError> {
        self.connect().await.map(|_| ())
    }

    /// Hands `cmd` to the target (the leader) and waits for its result. A
    /// rejection comes with the command, for another try where the leader did not
    /// propose it. Any error here comes after the command may have been sent: its
    /// outcome is unknown.
    pub(crate) async fn client_write(
        &mut self,
        cmd: Command,
        ttl: Duration,
    ) -> Result<Result<ApplyResult, (WriteRejected, Command)>, PeerError> {
        let req = Request::ClientWrite(cmd);
        let resp = self.call(&req, ttl).await?;
        let Request::ClientWrite(cmd) = req else {
            return Err(PeerError::Unexpected);
        };
        match resp {
            Response::ClientWrite(Ok(json)) => serde_json::from_slice(&json)
                .map(Ok)
                .map_err(|e| PeerError::Remote(format!("undecodable write result: {e}"))),
            Response::ClientWrite(Err(rejected)) => Ok(Err((rejected, cmd))),
            Response::Error(e) => Err(PeerError::Remote(e)),
            _ => Err(PeerError::Unexpected),
        }
    }

    /// Asks the target (the leader) for a read index.
    pub(crate) async fn read_index(&mut self, ttl: Duration) -> Result<u64, PeerError> {
        match self.call(&Request::ReadIndex, ttl).await? {
            Response::ReadIndex(Ok(index)) => Ok(index),
            Response::ReadIndex(Err(e)) | Response::Error(e) => Err(PeerError::Remote(e)),
            _ => Err(PeerError::Unexpected),
        }
    }

    async fn connect(&mut self) -> Result<&mut Conn, PeerError> {
        if self.conn.is_none() {
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.addr))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
                })??;
            stream.set_nodelay(true)?;
            let (r, w) = stream.into_split();
            let mut conn = Conn {
                reader: BufReader::new(r),
                writer: BufWriter::new(w),
            };
            // Unknown (no Raft handle yet) counts as voter: the strict side of the check.
            let to_is_voter = self.raft.get().is_none_or(|raft| {
                raft_metrics(raft)
                    .membership_config
                    .membership()
                    .voter_ids()
                    .any(|v| v == self.target)
            });
            let hello = Hello {
                cluster_id: self.cluster_id.to_string(),
                from: self.me,
                to: self.target,
                to_is_voter,
            };
            write_frame(&mut conn.writer, &hello).await?;
            match read_frame::<_, Response>(&mut conn.reader).await? {
                Response::HelloOk => {}
                Response::Error(e) => return Err(PeerError::Refused(e)),
                _ => return Err(PeerError::Unexpected),
            }
            self.conn = Some(conn);
        }
        self.conn.as_mut().ok_or(PeerError::Unexpected)
    }

    /// Sends one request and waits for its response; any failure drops the connection.
    async fn call(&mut self, req: &Request, ttl: Duration) -> Result<Response, PeerError> {
        let fut = async {
            let conn = self.connect().await?;
            write_frame(&mut conn.writer, req).await?;
            read_frame::<_, Response>(&mut conn.reader).await
        };
        let res = match tokio::time::timeout(ttl, fut).await {
            Ok(r) => r,
            Err(_) => Err(PeerError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "rpc timed out",
            ))),
        };
        if res.is_err() {
            self.conn = None;
        }
        res
    }

    /// One request/response exchange; `pick` extracts the expected response variant.
    async fn rpc<T>(
        &mut self,
        req: Request,
        action: RPCTypes,
        ttl: Duration,
        pick: fn(Response) -> Option<Result<T, String>>,
    ) -> Result<T, RPCError<TypeConfig>> {
        let err = match self.call(&req, ttl).await {
            Ok(Response::Error(e)) => PeerError::Remote(e),
            Ok(resp) => match pick(resp) {
                Some(Ok(r)) => return Ok(r),
                Some(Err(e)) => PeerError::Remote(e),
                None => PeerError::Unexpected,
            },
            Err(e) => e,
        };
        Err(self.rpc_error(err, action, ttl))
    }

    fn rpc_error(
        &self,
        e: PeerError,
        action: openraft::RPCTypes,
        ttl: Duration,
    ) -> RPCError<TypeConfig> {
        match &e {
            PeerError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
                RPCError::Timeout(Timeout {
                    action,
                    id: self.me,
                    target: self.target,
                    timeout: ttl,
                })
            }
            PeerError::Io(io)
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::NotConnected
                        | std::io::ErrorKind::HostUnreachable
                        | std::io::ErrorKind::NetworkUnreachable
                ) =>
            {
                RPCError::Unreachable(Unreachable::new(&e))
            }
            PeerError::Refused(_) => RPCError::Unreachable(Unreachable::new(&e)),
            _ => RPCError::Network(NetworkError::new(&e)),
        }
    }

    async fn send_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, SnapshotFile>,
    ) -> Result<SnapshotResponse<TypeConfig>, PeerError> {
        let mut file = snapshot.snapshot.file;
        use tokio::io::AsyncSeekExt;
        file.seek(std::io::SeekFrom::Start(0)).await?;
        let conn = self.connect().await?;
        write_frame(
            &mut conn.writer,
            &Request::SnapshotBegin {
                vote,
                meta: snapshot.meta,
            },
        )
        .await?;
        let mut buf = vec![0u8; SNAPSHOT_CHUNK];
        loop {
            let n = file.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            write_frame(&mut conn.writer, &Request::Chunk(buf[..n].to_vec())).await?;
        }
        write_frame(&mut conn.writer, &Request::SnapshotEnd).await?;
        match read_frame::<_, Response>(&mut conn.reader).await? {
            Response::Snapshot(Ok(r)) => Ok(r),
            Response::Snapshot(Err(e)) | Response::Error(e) => Err(PeerError::Remote(e)),
            _ => Err(PeerError::Unexpected),
        }
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(
            Request::Append(rpc),
            RPCTypes::AppendEntries,
            option.hard_ttl(),
            |r| match r {
                Response::Append(r) => Some(r),
                _ => None,
            },
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(
            Request::Vote(rpc),
            RPCTypes::Vote,
            option.hard_ttl(),
            vote_response,
        )
        .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(
            Request::PreVote(rpc),
            RPCTypes::Vote,
            option.hard_ttl(),
            vote_response,
        )
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, SnapshotFile>,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let ttl = option.hard_ttl().max(Duration::from_secs(60));
        let res = tokio::select! {
            closed = cancel => {
                self.conn = None;
                return Err(StreamingError::Closed(closed));
            }
            r = tokio::time::timeout(ttl, self.send_snapshot(vote, snapshot)) => r,
        };
        match res {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.conn = None;
                Err(match self.rpc_error(e, RPCTypes::InstallSnapshot, ttl) {
                    RPCError::Timeout(t) => StreamingError::Timeout(t),
                    RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                    RPCError::Network(n) => StreamingError::Network(n),
                    RPCError::RemoteError(r) => StreamingError::Network(NetworkError::new(&r)),
                })
            }
            Err(_) => {
                self.conn = None;
                Err(StreamingError::Timeout(Timeout {
                    action: RPCTypes::InstallSnapshot,
                    id: self.me,
                    target: self.target,
                    timeout: ttl,
                }))
            }
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(
            Request::TransferLeader(req),
            RPCTypes::TransferLeader,
            option.hard_ttl(),
            |r| match r {
                Response::TransferLeader(r) => Some(r),
                _ => None,
            },
        )
        .await
    }
}

fn vote_response(r: Response) -> Option<Result<VoteResponse<TypeConfig>, String>> {
    match r {
        Response::Vote(r) => Some(r),
        _ => None,
    }
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
        let now = crate::types::now_ms();
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
                        .store(crate::types::now_ms(), Ordering::Relaxed);
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
            Request::Capabilities => Response::Capabilities { client_write: true },
            Request::ClientWrite(mut cmd) => {
                // Time is the leader's, as for writes it receives itself.
                cmd.restamp(crate::types::now_ms());
                Response::ClientWrite(match propose(raft, cmd, CONFIRM_WAIT).await {
                    Ok(r) => serde_json::to_vec(&r.data)
                        .map_err(|e| WriteRejected::Failed(format!("encoding the result: {e}"))),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_encoding_is_what_the_fault_proxy_parses() {
        // kvchaos's proxy names the dialing node from the first frame; keep the two in step.
        let hello = Hello {
            cluster_id: "orders".into(),
            from: 7,
            to: 2,
            to_is_voter: true,
        };
        let bytes = bincode::serialize(&hello).expect("encode");
        assert_eq!(kvchaos::proxy::hello_sender(&bytes), Some(7));
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Whatever a peer sends, decoding a frame returns a value or an error: no
        /// panic, no allocation beyond the frame (bincode bounds sequence preallocation).
        #[test]
        fn arbitrary_peer_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            let rt = rt();
            rt.block_on(async {
                let _ = read_frame::<_, Hello>(&mut bytes.as_slice()).await;
                let _ = read_frame::<_, Request>(&mut bytes.as_slice()).await;
                let _ = read_frame::<_, Response>(&mut bytes.as_slice()).await;
                // The same bytes behind a valid length prefix reach the decoder itself.
                let mut framed = (bytes.len() as u32).to_be_bytes().to_vec();
                framed.extend_from_slice(&bytes);
                let _ = read_frame::<_, Hello>(&mut framed.as_slice()).await;
                let _ = read_frame::<_, Request>(&mut framed.as_slice()).await;
                let _ = read_frame::<_, Response>(&mut framed.as_slice()).await;
            });
        }

        #[test]
        fn hello_roundtrips_and_any_truncation_fails(
            cluster_id in "[a-z0-9-]{0,40}",
            from in proptest::prelude::any::<u64>(),
            to in proptest::prelude::any::<u64>(),
            to_is_voter in proptest::prelude::any::<bool>(),
            cut in 0usize..64,
        ) {
            let rt = rt();
            rt.block_on(async {
                let mut w = Vec::new();
                write_frame(&mut w, &Hello { cluster_id: cluster_id.clone(), from, to, to_is_voter }).await.expect("encode");
                let back: Hello = read_frame(&mut w.as_slice()).await.expect("decode");
                assert_eq!((back.cluster_id, back.from, back.to, back.to_is_voter), (cluster_id, from, to, to_is_voter));
                let cut = cut.min(w.len() - 1);
                assert!(read_frame::<_, Hello>(&mut &w[..cut]).await.is_err());
            });
        }
    }

    #[test]
    fn decoders_reject_truncated_and_oversized_frames() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let hello = bincode::serialize(&Hello {
                cluster_id: "c".into(),
                from: 1,
                to: 2,
                to_is_voter: false,
            })
            .expect("encode");
            let mut framed = (hello.len() as u32).to_be_bytes().to_vec();
            framed.extend_from_slice(&hello);
            let ok: Hello = read_frame(&mut framed.as_slice())
                .await
                .expect("whole frame");
            assert_eq!((ok.from, ok.to), (1, 2));
            let cut = &framed[..framed.len() - 1];
            assert!(read_frame::<_, Hello>(&mut &cut[..]).await.is_err());
            let huge = (MAX_FRAME + 1).to_be_bytes();
            assert!(matches!(
                read_frame::<_, Hello>(&mut &huge[..]).await,
                Err(PeerError::FrameTooLarge(_))
            ));
        });
    }
}
