//! Linearizable reads: confirmed here by ReadIndex when this node leads, by a
//! read index fetched from the leader when it follows ([`super::read_index`]),
//! or, when neither works in time, served by the leader itself.

use openraft::ReadPolicy;
use openraft::error::LinearizableReadError;
use openraft::error::RaftError;

use super::Routed;
use super::WRITE_TIMEOUT;
use super::leader::relay;
use crate::api::ApiError;
use crate::api::AppState;
use crate::api::Raw;
use crate::api::error::read_error;
use crate::auth::Access;
use crate::model::Consistency;

/// Makes a local read of what `access` names (checked against the caller's
/// principal first) that follows linearizable (`Routed::Local`), or has the
/// leader serve it (`Routed::Relayed`). Stale reads are always local.
pub async fn read(
    state: &AppState,
    target: &super::Target,
    raw: &Raw,
    access: &[Access<'_>],
    consistency: Consistency,
) -> Result<Routed<()>, ApiError> {
    super::authorize(state, &raw.principal, access)?;
    if !state.initialized() || !target.initialized() {
        return Err(ApiError::NotInitialized);
    }
    if consistency == Consistency::Stale {
        return Ok(Routed::Local(()));
    }
    // A leader change (a hand-off for balance takes milliseconds, an election
    // about one election timeout) holds a read this long rather than failing it,
    // as it holds a write (`super::write`). Found by tests/partitions.rs: after a
    // kill, the placement driver's leadership transfers made a read right after
    // a write answer 503 `no_leader`.
    let hold = std::time::Duration::from_millis(state.config.raft.election_timeout_max_ms);
    let mut retried = false;
    loop {
        let res = tokio::time::timeout(
            WRITE_TIMEOUT,
            target.raft.ensure_linearizable(ReadPolicy::ReadIndex),
        )
        .await
        .map_err(|_| ApiError::Unavailable {
            code: "read_timeout",
            message: "could not confirm leadership with a quorum in time".into(),
            retry: true,
        })?;
        match res {
            Ok(_) => return Ok(Routed::Local(())),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                // Waited for also when another node forwarded the read here: it is
                // then served here on the new leader's read index, never sent on
                // (the chaos campaign's partitioned mode, seed 102: a read forwarded
                // to a leader that had just handed its leadership over got 503).
                let leader = match f.leader_id {
                    Some(l) => Some(l),
                    None => target.writes.leader_elsewhere(hold).await,
                };
                // The leadership came to this node while it waited: confirm it here.
                if leader.is_none()
                    && !retried
                    && crate::raft::raft_metrics(&target.raft).current_leader == Some(state.id)
                {
                    retried = true;
                    continue;
                }
                // Served here once this node has applied the leader's read index; if
                // that fails (leader moved, this node lags), the leader serves it instead.
                if let Some(leader) = leader {
                    match target.reads.barrier(leader).await {
                        Ok(()) => return Ok(Routed::Local(())),
                        Err(e) => tracing::debug!(error = %e, "follower read: forwarding instead"),
                    }
                }
                return Ok(Routed::Relayed(relay(state, raw, leader).await?));
            }
            Err(e) => return Err(read_error(e)),
        }
    }
}
