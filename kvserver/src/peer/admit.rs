//! Who may talk to this node over the peer port, judged from this node's own
//! membership, and what a peer it cannot place yet may ask.
//!
//! A peer whose certificate names node `from` of this cluster is one of:
//! - a **member**: `from` is a voter or learner of this node's membership, and
//!   its certificate must be valid for the host of the address held for it;
//! - a **stranger**: `from` is not in this node's membership, and that
//!   membership is current. Refused (`not_member`), at the hello and at every
//!   later request (a member removed while connected).
//! - **unverified**: `from` is not in this node's membership, but that
//!   membership may be stale. It then serves replication only (append-entries
//!   and snapshots), so a current leader this node has not heard of can bring it
//!   up to date; votes, leadership transfers, read indexes and forwarded writes
//!   are refused until `from` shows up in the membership.
//!
//! A membership may be stale when it is empty (the node waits to be added),
//! when the node is replaying the log after starting empty ([`crate::catchup`]),
//! or when no leader in it has been heard from lately (a follower that was down
//! or cut off while members were added; the leader is never stale). Refusing in
//! those cases stalled nodes for good: the TLS chaos campaign's seed 1091 had a
//! follower restarted across the addition of node 4, which then led; the
//! follower refused it as "not a member" on every request and never caught up.
//! etcd admits every peer its CA trusts unless it knows the member was removed;
//! this is stricter while a member leader is in contact, which is almost always.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::PeerState;
use super::wire::Request;
use crate::command::NodeId;
use crate::raft::KvRaft;

/// Why a connection or request is refused: a reason code (the metric label,
/// and all the peer is told) and the details for this node's log.
pub(super) struct Refusal {
    pub reason: &'static str,
    pub detail: String,
}

pub(super) fn refuse(reason: &'static str, detail: impl Into<String>) -> Refusal {
    Refusal {
        reason,
        detail: detail.into(),
    }
}

/// How this node places a peer (see the module doc).
pub(super) enum Standing {
    /// In the membership, with the peer address held for it.
    Member(String),
    Stranger,
    Unverified,
}

/// Where peer `from` stands with this node. `silence`: how long without word
/// from a leader in the membership makes the membership possibly stale.
pub(super) fn standing(
    raft: &KvRaft,
    state: &PeerState,
    silence: Duration,
    from: NodeId,
) -> Standing {
    use openraft::async_runtime::WatchReceiver;
    let metrics = raft.metrics();
    let m = metrics.borrow_watched();
    let membership = m.membership_config.membership();
    if let Some(node) = membership.get_node(&from) {
        return Standing::Member(node.raft_addr.clone());
    }
    if membership.nodes().next().is_none() || state.catch_up.active() {
        return Standing::Unverified;
    }
    if m.state == openraft::ServerState::Leader {
        return Standing::Stranger;
    }
    let heard = state.member_leader_ms.load(Ordering::Relaxed);
    let silent_ms = crate::command::now_ms().saturating_sub(heard);
    match u128::from(silent_ms) < silence.as_millis() {
        true => Standing::Stranger,
        false => Standing::Unverified,
    }
}

/// The hello's admission check of a peer whose certificate `cert` names `from`.
pub(super) fn admit(
    standing: &Standing,
    from: NodeId,
    cert: &rustls_pki_types::CertificateDer<'_>,
) -> Result<(), Refusal> {
    match standing {
        Standing::Unverified => Ok(()),
        Standing::Stranger => Err(refuse(
            "not_member",
            format!("node {from} is not a member of this cluster"),
        )),
        Standing::Member(addr) => {
            let host = crate::tls::host_of(addr);
            if crate::tls::valid_for_host(cert, host) {
                Ok(())
            } else {
                Err(refuse(
                    "identity",
                    format!(
                        "node {from}'s certificate is not valid for {host}, the host of its member address {addr}"
                    ),
                ))
            }
        }
    }
}

/// Whether `req` is replication, all an unverified peer may ask.
pub(super) fn is_replication(req: &Request) -> bool {
    matches!(
        req,
        Request::Append(_)
            | Request::SnapshotBegin { .. }
            | Request::SnapshotBegin2 { .. }
            | Request::Chunk(_)
            | Request::SnapshotEnd
            // Choosing which group's replication the connection carries.
            | Request::Group { .. }
    )
}
