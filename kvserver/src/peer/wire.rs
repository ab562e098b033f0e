//! The peer wire format: a connection opens with a [`Hello`], then carries
//! [`Request`]/[`Response`] pairs, each one frame of `u32` big-endian length +
//! bincode. Frames are bounded ([`MAX_FRAME`]) so a bad peer cannot make us
//! allocate without limit; every decoder here is fed untrusted bytes and is
//! property-tested for that below.
//!
//! Who may send these: every request is served only after the hello passed
//! (`super::server`), and is meant for members of the cluster — replication,
//! votes, snapshots and leader transfer from the leader or candidates, read
//! indexes and forwarded writes from followers. With TLS the hello is bound to
//! an authenticated member identity checked in `super::server`, the one place
//! every request passes. A forwarded write names the client principal the
//! follower authenticated; the leader authorizes the command against it again.

use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::SnapshotResponse;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::TransferLeaderResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use openraft::type_config::alias::VoteOf;
use serde::Deserialize;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;

use super::PeerError;
use crate::command::ApplyResult;
use crate::command::Command;
use crate::command::NodeId;
use crate::command::TypeConfig;

/// Largest frame accepted from a peer (entries batches are bounded by config far below this).
pub const MAX_FRAME: u32 = 256 * 1024 * 1024;
/// Largest hello accepted: it is read before the peer is admitted, so it may
/// not make this node allocate more than a few KiB.
pub const HELLO_MAX: u32 = 4096;

#[derive(Debug, Serialize, Deserialize)]
pub struct Hello {
    pub cluster_id: String,
    pub from: NodeId,
    pub to: NodeId,
    /// Whether the dialer's membership counts `to` as a voter.
    pub to_is_voter: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
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
    /// A follower asks the leader for a read index (follower reads, see `crate::route::read_index`).
    ReadIndex,
    /// The previous release's capability probe. Variants are encoded by their
    /// position, so retired ones keep their place: this one is answered
    /// `CapabilitiesV1 { client_write: false }`, which makes a follower of the
    /// previous release relay its writes over HTTP during a rolling upgrade.
    CapabilitiesV1,
    /// The previous release's forwarded write, whose result came back as JSON;
    /// refused (see `CapabilitiesV1`).
    ClientWriteV1(Command),
    /// Which requests after `ReadIndex` the server knows (a server that predates
    /// this message closes the connection instead of answering).
    Features,
    /// The previous release's forwarded write, without the client's principal:
    /// served only by a leader with authentication off.
    Write(Command),
    /// Which requests after `Write` the server knows (a server that predates this
    /// message closes the connection instead of answering).
    Features2,
    /// A follower hands a client's write to the leader (see `crate::route::forward`)
    /// with the principal it authenticated; the leader authorizes the command
    /// against it again (`crate::auth::check_command`).
    WriteAs {
        command: Command,
        principal: crate::auth::Principal,
    },
    /// `SnapshotBegin` with the snapshot's size announced: a receiver refuses a
    /// snapshot over its limit before any byte of it, and one longer than
    /// announced. Sent to servers that answer `Features2`.
    SnapshotBegin2 {
        vote: VoteOf<TypeConfig>,
        meta: openraft::type_config::alias::SnapshotMetaOf<TypeConfig>,
        size: u64,
    },
    /// Binds the connection to Raft group `group` (a partition, see
    /// `crate::group`): every later request on it is for that group. Sent once,
    /// first after the hello; a connection that never sends it is group 0's, so
    /// peers of earlier releases are unchanged. `to_is_voter`: whether the
    /// dialer's view of the group counts the target as a voter (the hello's
    /// `to_is_voter` is about the cluster's group). Answered `GroupOk`, or an
    /// error if the target does not host the group (yet).
    Group {
        group: u64,
        to_is_voter: bool,
    },
    /// What the node knows of each group it hosts (`crate::group::GroupReport`):
    /// the placement driver on the cluster group's leader asks every member.
    Groups,
    /// The placement driver asks a partition's leader to change the partition's
    /// membership or leadership (`crate::group::moves`); served only when the
    /// sender leads the cluster group as this node sees it. Answered `Moved`.
    Move(crate::placement::Move),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    HelloOk,
    Append(Result<AppendEntriesResponse<TypeConfig>, String>),
    Vote(Result<VoteResponse<TypeConfig>, String>),
    TransferLeader(Result<TransferLeaderResponse<TypeConfig>, String>),
    Snapshot(Result<SnapshotResponse<TypeConfig>, String>),
    Error(String),
    /// The log index a read must see applied, confirmed by a quorum after the request arrived.
    ReadIndex(Result<u64, String>),
    /// The answer to `Request::CapabilitiesV1` (always `false` now).
    CapabilitiesV1 {
        client_write: bool,
    },
    /// Retired with `Request::ClientWriteV1`; kept for its position.
    ClientWriteV1(Result<Vec<u8>, WriteRejected>),
    /// What the server takes: `write` is `Request::Write`.
    Features {
        write: bool,
    },
    /// The state machine's result of a forwarded write, or why it was not
    /// proposed (`NotLeader`) or failed.
    Write(Result<ApplyResult, WriteRejected>),
    /// What the server takes: `write_as` is `Request::WriteAs`.
    Features2 {
        write_as: bool,
    },
    /// The connection now serves the group `Request::Group` named.
    GroupOk,
    /// The answer to `Request::Groups`.
    Groups(Vec<crate::group::GroupReport>),
    /// The answer to `Request::Move`: whether it changed anything, or why not.
    Moved(Result<bool, String>),
}

/// Why the leader did not apply a forwarded write.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WriteRejected {
    /// This node is not the leader (it names the one it knows): not proposed.
    NotLeader(Option<NodeId>),
    /// Proposing failed (the node is shutting down, storage failed, …): outcome unknown.
    Failed(String),
    /// The command breaks a rule of `crate::command::check`: not proposed.
    Invalid(crate::command::Invalid),
    /// The principal may not do this (`crate::auth::check_command`): not proposed.
    Forbidden(crate::auth::Forbidden),
}

pub async fn write_frame<W: AsyncWriteExt + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), PeerError> {
    let bytes = bincode::serialize(msg)?;
    w.write_u32(bytes.len() as u32).await?;
    w.write_all(&bytes).await?;
    w.flush().await?;
    Ok(())
}

pub async fn read_frame<R: AsyncReadExt + Unpin, T: DeserializeOwned>(
    r: &mut R,
) -> Result<T, PeerError> {
    read_frame_capped(r, MAX_FRAME).await
}

/// [`read_frame`] with a smaller cap.
pub async fn read_frame_capped<R: AsyncReadExt + Unpin, T: DeserializeOwned>(
    r: &mut R,
    max: u32,
) -> Result<T, PeerError> {
    let len = r.read_u32().await?;
    if len > max {
        return Err(PeerError::FrameTooLarge(len));
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf).await?;
    Ok(bincode::deserialize(&buf)?)
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
    fn placement_moves_and_their_answers_travel_as_bincode() {
        use crate::placement::Move;
        let rt = rt();
        rt.block_on(async {
            for m in [
                Move::AddLearner {
                    partition: 3,
                    node: 7,
                },
                Move::Promote {
                    partition: 3,
                    node: 7,
                },
                Move::RemoveLearner {
                    partition: 1,
                    node: 2,
                },
                Move::RemoveVoter {
                    partition: 0,
                    node: 9,
                },
                Move::TransferLeader {
                    partition: 15,
                    to: 4,
                },
            ] {
                let mut w = Vec::new();
                write_frame(&mut w, &Request::Move(m))
                    .await
                    .expect("encode");
                match read_frame::<_, Request>(&mut w.as_slice())
                    .await
                    .expect("decode")
                {
                    Request::Move(back) => assert_eq!(back, m),
                    other => panic!("decoded {other:?}"),
                }
            }
            let mut w = Vec::new();
            write_frame(&mut w, &Response::Moved(Err("not_leader".into())))
                .await
                .expect("encode");
            let back = read_frame::<_, Response>(&mut w.as_slice())
                .await
                .expect("decode");
            assert!(matches!(back, Response::Moved(Err(e)) if e == "not_leader"));
        });
    }

    #[test]
    fn a_write_result_travels_as_bincode() {
        let rt = rt();
        rt.block_on(async {
            let kv = crate::command::StoredKv {
                key: "k".into(),
                value: String::new(),
                create_revision: 3,
                mod_revision: 4,
                version: 2,
                expires_at_ms: None,
                created_at_ms: 1,
                updated_at_ms: 2,
            };
            let result = ApplyResult {
                revision: 4,
                outcome: Some(crate::command::Outcome::Put {
                    created: false,
                    kv: kv.clone(),
                    prev: Some(kv),
                }),
            };
            let mut w = Vec::new();
            write_frame(&mut w, &Response::Write(Ok(result.clone())))
                .await
                .expect("encode");
            match read_frame::<_, Response>(&mut w.as_slice()).await {
                Ok(Response::Write(Ok(back))) => assert_eq!(back, result),
                other => panic!("decoded {other:?}"),
            }
        });
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
