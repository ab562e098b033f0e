//! Outbound peer connections: openraft's network (one [`PeerClient`] per
//! replication stream, holding one reusable connection) and the calls the
//! router makes of the leader (read index, forwarded writes).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use openraft::RPCTypes;
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
use tokio::io::AsyncBufReadExt;
use tokio::io::AsyncReadExt;

use super::PeerError;
use super::io::Dialer;
use super::io::PeerReader;
use super::io::PeerWriter;
use super::wire::Hello;
use super::wire::Request;
use super::wire::Response;
use super::wire::WriteRejected;
use super::wire::read_frame;
use super::wire::write_frame;
use crate::command::ApplyResult;
use crate::command::Command;
use crate::command::KvNode;
use crate::command::NodeId;
use crate::command::TypeConfig;
use crate::raft::KvRaft;
use crate::raft::raft_metrics;
use crate::store::snapshot::SnapshotFile;

const SNAPSHOT_CHUNK: usize = 1024 * 1024;

/// Creates network clients for openraft.
#[derive(Clone)]
pub struct NetworkFactory {
    pub dialer: Dialer,
    /// This node's Raft handle, set once it exists (the factory is created first):
    /// the hello reads the current membership from it.
    pub raft: Arc<std::sync::OnceLock<KvRaft>>,
    /// The group this factory's Raft is (`crate::group`); 0: the cluster's.
    pub group: u64,
    /// For a partition's group: the cluster group's Raft, whose membership the
    /// hello speaks of.
    pub cluster: Option<KvRaft>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &KvNode) -> PeerClient {
        PeerClient {
            dialer: self.dialer.clone(),
            target,
            addr: node.raft_addr.clone(),
            raft: self.raft.clone(),
            group: self.group,
            cluster: self.cluster.clone(),
            conn: None,
        }
    }
}

struct Conn {
    reader: PeerReader,
    writer: PeerWriter,
}

/// What a router of this node needs to reach another member's Raft group: the
/// dialer, the group's Raft here (its membership names the members' addresses),
/// and which group (for a partition's, the cluster group's Raft too, whose
/// membership the hello speaks of).
#[derive(Clone)]
pub struct Link {
    pub dialer: Dialer,
    pub raft: KvRaft,
    pub group: u64,
    pub cluster: Option<KvRaft>,
}

impl Link {
    /// The cluster group's link.
    pub fn cluster(dialer: Dialer, raft: KvRaft) -> Link {
        Link {
            dialer,
            raft,
            group: 0,
            cluster: None,
        }
    }

    /// A client of member `target` at `addr` for this link's group.
    pub(crate) fn client(&self, target: NodeId, addr: String) -> PeerClient {
        PeerClient::new(self.dialer.clone(), target, addr, &self.raft)
            .in_group(self.group, self.cluster.clone())
    }
}

/// A client for one target peer holding one reusable connection.
pub struct PeerClient {
    dialer: Dialer,
    target: NodeId,
    addr: String,
    raft: Arc<std::sync::OnceLock<KvRaft>>,
    /// The group whose requests this client carries (0: the cluster's).
    group: u64,
    /// The cluster group's Raft when `group` is a partition's.
    cluster: Option<KvRaft>,
    conn: Option<Conn>,
}

impl PeerClient {
    /// A client of `target` at `addr` outside openraft (follower reads, forwarded writes).
    pub(crate) fn new(dialer: Dialer, target: NodeId, addr: String, raft: &KvRaft) -> Self {
        let handle = Arc::new(std::sync::OnceLock::new());
        let _ = handle.set(raft.clone());
        Self {
            dialer,
            target,
            addr,
            raft: handle,
            group: 0,
            cluster: None,
            conn: None,
        }
    }

    /// The same client for Raft group `group` (a partition's, `crate::group`),
    /// whose hello speaks of `cluster`, the cluster group's Raft.
    pub(crate) fn in_group(mut self, group: u64, cluster: Option<KvRaft>) -> Self {
        self.group = group;
        self.cluster = cluster;
        self
    }

    /// Whether the target takes forwarded writes (one exchange, on connecting).
    pub(crate) async fn supports_write(&mut self, ttl: Duration) -> Result<bool, PeerError> {
        match self.call(&Request::Features2, ttl).await {
            Ok(Response::Features2 { write_as }) => Ok(write_as),
            Ok(_) => Ok(false),
            // An older server closes the connection on a request it cannot decode.
            Err(PeerError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether the held connection is still usable: open, with nothing unread (a peer
    /// that closed it shows as end of file). Without a connection: false.
    pub(crate) fn is_open(&mut self) -> bool {
        let Some(conn) = &mut self.conn else {
            return false;
        };
        // Polled once without waiting: pending means open and quiet. End of file, or
        // bytes nobody asked for, mean the connection is of no further use. (TLS
        // records that carry no data, such as session tickets, are consumed here.)
        conn.reader.fill_buf().now_or_never().is_none()
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
        principal: &crate::auth::Principal,
        ttl: Duration,
    ) -> Result<Result<ApplyResult, (WriteRejected, Command)>, PeerError> {
        let req = Request::WriteAs {
            command: cmd,
            principal: principal.clone(),
        };
        let resp = self.call(&req, ttl).await?;
        let Request::WriteAs { command: cmd, .. } = req else {
            return Err(PeerError::Unexpected);
        };
        match resp {
            Response::Write(Ok(result)) => Ok(Ok(result)),
            Response::Write(Err(rejected)) => Ok(Err((rejected, cmd))),
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

    /// What the target knows of the groups it hosts.
    pub(crate) async fn groups(
        &mut self,
        ttl: Duration,
    ) -> Result<Vec<crate::group::GroupReport>, PeerError> {
        match self.call(&Request::Groups, ttl).await? {
            Response::Groups(r) => Ok(r),
            Response::Error(e) => Err(PeerError::Remote(e)),
            _ => Err(PeerError::Unexpected),
        }
    }

    /// Asks the target, a partition's leader, to carry out a placement move.
    pub(crate) async fn carry_out(
        &mut self,
        m: crate::placement::Move,
        ttl: Duration,
    ) -> Result<bool, PeerError> {
        match self.call(&Request::Move(m), ttl).await? {
            Response::Moved(Ok(changed)) => Ok(changed),
            Response::Moved(Err(e)) | Response::Error(e) => Err(PeerError::Remote(e)),
            _ => Err(PeerError::Unexpected),
        }
    }

    async fn connect(&mut self) -> Result<&mut Conn, PeerError> {
        if self.conn.is_none() {
            let (reader, writer) = self.dialer.dial(self.target, &self.addr).await?.split();
            let mut conn = Conn { reader, writer };
            let target = self.target;
            let voter = |raft: &KvRaft| {
                raft_metrics(raft)
                    .membership_config
                    .membership()
                    .voter_ids()
                    .any(|v| v == target)
            };
            // Unknown (no Raft handle yet) counts as voter: the strict side of the check.
            let own = self.raft.get().is_none_or(voter);
            let hello = Hello {
                cluster_id: self.dialer.cluster_id.to_string(),
                from: self.dialer.me,
                to: target,
                to_is_voter: self.cluster.as_ref().map_or(own, voter),
            };
            write_frame(&mut conn.writer, &hello).await?;
            match read_frame::<_, Response>(&mut conn.reader).await? {
                Response::HelloOk => {}
                Response::Error(e) => return Err(PeerError::Refused(e)),
                _ => return Err(PeerError::Unexpected),
            }
            if self.group != 0 {
                let select = Request::Group {
                    group: self.group,
                    to_is_voter: own,
                };
                write_frame(&mut conn.writer, &select).await?;
                match read_frame::<_, Response>(&mut conn.reader).await? {
                    Response::GroupOk => {}
                    Response::Error(e) => return Err(PeerError::Refused(e)),
                    _ => return Err(PeerError::Unexpected),
                }
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
                    id: self.dialer.me,
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
        let size = file.seek(std::io::SeekFrom::End(0)).await?;
        file.seek(std::io::SeekFrom::Start(0)).await?;
        // A server of this release takes the size up front; one of the previous
        // release closes the connection on the probe and gets the old form.
        let announce = matches!(
            self.call(&Request::Features2, Duration::from_secs(5)).await,
            Ok(Response::Features2 { .. })
        );
        let begin = match announce {
            true => Request::SnapshotBegin2 {
                vote,
                meta: snapshot.meta,
                size,
            },
            false => Request::SnapshotBegin {
                vote,
                meta: snapshot.meta,
            },
        };
        let conn = self.connect().await?;
        write_frame(&mut conn.writer, &begin).await?;
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
                    id: self.dialer.me,
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
