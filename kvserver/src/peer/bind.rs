//! Which Raft group a peer connection serves: the cluster group's until the
//! dialer names another (`Request::Group`, once, first), and only a group this
//! node hosts. See `crate::group`.

use std::sync::Arc;

use super::PeerState;
use super::server::PeerServer;
use crate::group::CLUSTER_GROUP;
use crate::group::GroupId;
use crate::raft::KvRaft;
use crate::raft::initialized;

/// The Raft group a connection serves, with what the peer server keeps of it.
pub(super) struct Served {
    pub(super) group: GroupId,
    pub(super) raft: KvRaft,
    pub(super) state: Arc<PeerState>,
    pub(super) snapshot_dir: std::path::PathBuf,
}

/// Binds a connection serving `served` to `group`: once, first, and only to a
/// group this node hosts. A dialer that counts this node as a voter of a group
/// it holds nothing of is told, as for the cluster's group (see the hello).
pub(super) fn select(
    server: &PeerServer,
    served: &Served,
    group: GroupId,
    to_is_voter: bool,
) -> Result<Served, String> {
    if served.group != CLUSTER_GROUP || group == CLUSTER_GROUP {
        return Err("a connection names its group once, first, and not group 0".into());
    }
    let Some(g) = server.groups.get(group) else {
        server
            .metrics
            .peer_refused
            .with_label_values(&["no_group"])
            .inc();
        return Err(format!(
            "refused (no_group): node {} hosts no group {group}",
            server.node_id
        ));
    };
    if to_is_voter && !initialized(&g.raft) {
        server
            .metrics
            .peer_refused
            .with_label_values(&["lost_data"])
            .inc();
        return Err(format!(
            "refused (lost_data): node {} holds nothing of group {group} but is counted as its voter: its data was lost. \
             It will not vote or accept entries as a voter; remove it from the group's voters and add it back as a learner",
            server.node_id
        ));
    }
    Ok(Served {
        group,
        raft: g.raft.clone(),
        state: g.peer.clone(),
        snapshot_dir: g.store.snapshot_dir.clone(),
    })
}
