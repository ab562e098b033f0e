//! The Raft handle of this node and what the rest of the crate asks of it:
//! the openraft `Config` built from ours, metrics and membership look-ups, and
//! [`propose`], the one way a command enters the log on this node.
//!
//! Everything here is local to the node: reaching another node's Raft is the
//! peer transport's job (`crate::peer`), and deciding *whether* a request is
//! served here or by the leader is the router's (`crate::route`).

use std::time::Duration;

use openraft::Raft;
use openraft::SnapshotPolicy;

use crate::command::Command;
use crate::command::NodeId;
use crate::command::TypeConfig;
use crate::config::Config;
use crate::store::StateMachine;

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

/// Whether `m` shows a membership (the node was initialized or joined a
/// cluster): false on an empty store.
pub fn has_membership(m: &openraft::RaftMetrics<TypeConfig>) -> bool {
    m.membership_config.membership().nodes().next().is_some()
}

/// Whether this node's Raft state holds a membership: false on an empty store.
pub fn initialized(raft: &KvRaft) -> bool {
    has_membership(&raft_metrics(raft))
}

/// Waits (at most `timeout`) until this leader has replicated its whole log to
/// each of `nodes`: a learner is promoted only then. Promoting one that holds
/// nothing yet would make an empty voter, which refuses to take part (see
/// `crate::peer`), and openraft's blocking `add_learner` can return before the
/// learner's first append is acknowledged.
pub async fn caught_up(
    raft: &KvRaft,
    nodes: &[NodeId],
    timeout: Duration,
) -> Result<(), openraft::metrics::WaitError> {
    raft.wait(Some(timeout))
        .metrics(
            |m| {
                let Some(last) = m.last_log_index else {
                    return false;
                };
                let matched = m.replication.as_ref();
                nodes.iter().all(|n| {
                    matched
                        .and_then(|r| r.get(n).cloned().flatten())
                        .is_some_and(|l| l.index >= last)
                })
            },
            "learners caught up",
        )
        .await
        .map(|_| ())
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

/// The openraft configuration of a node configured with `config`; errors name
/// what openraft refused.
pub fn openraft_config(config: &Config) -> Result<openraft::Config, openraft::ConfigError> {
    let rc = &config.raft;
    openraft::Config {
        cluster_name: config.cluster_id.clone(),
        heartbeat_interval: rc.heartbeat_interval_ms,
        election_timeout_min: rc.election_timeout_min_ms,
        election_timeout_max: rc.election_timeout_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(rc.snapshot_after_entries),
        max_in_snapshot_log_to_keep: rc.keep_entries_after_snapshot,
        max_payload_entries: rc.max_payload_entries,
        install_snapshot_timeout: 30_000,
        // A restarted leader must win a new election (and commit a blank entry of its
        // new term) before it leads again. openraft's default resumes the old term at
        // once, which is only safe when the committed index is persisted on every
        // commit; ours is advisory (written with the next apply, see
        // `LogStore::save_committed`). A leader killed after committing an entry, but
        // before applying it, came back leading with a stale commit index and served
        // linearizable reads (and read indexes to followers) that missed that entry:
        // the fault campaign caught it (seeds 9005 and 9009).
        enable_leader_restore: Some(false),
        ..Default::default()
    }
    .validate()
}
