//! Raft peer transport: a small binary protocol over mutual TLS (plain TCP
//! only for local use) on the peer port. Who may connect, and how that is
//! checked before any Raft message is read: [`server`].
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
//!
//! # Layout
//! - `admit`: who may connect, judged from this node's membership, and what a
//!   peer it cannot place yet (its membership may be stale) may ask.
//! - [`io`]: the connection's stream (TLS or plain) and the dialer, which checks
//!   that the far end is the member it meant to reach.
//! - [`wire`]: the hello, the request and response messages, and framing (with
//!   the decoder tests: everything here is bytes from the network).
//! - [`client`]: outbound connections: openraft's network (replication, votes,
//!   snapshots, leader transfer) and the calls of the router (read index,
//!   forwarded writes).
//! - [`server`]: inbound connections: the hello check and dispatch to Raft;
//!   `bind`: the group a connection serves (partitions); `forwarded`: a write a
//!   member handed over; `receive`: a snapshot streamed in, to a temporary file.

mod admit;
mod bind;
pub mod client;
mod forwarded;
pub mod io;
mod receive;
pub mod server;
pub mod wire;

pub use client::Link;
pub use client::NetworkFactory;
pub use client::PeerClient;
pub use io::Dialer;
pub use server::PeerServer;
pub use server::PeerState;
pub use server::serve;
pub use wire::WriteRejected;

use wire::MAX_FRAME;

/// Errors of the peer transport.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer frame of {0} bytes exceeds the limit (at most {MAX_FRAME} bytes)")]
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
