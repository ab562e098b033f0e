//! Writes: where a command the handler built is proposed, and what comes back.
//!
//! A follower that knows the leader hands the command over the peer port
//! ([`super::forward`]); a request another node forwarded here is proposed here
//! or refused, never sent on. A leader change holds the write (at most one
//! election timeout) instead of failing it. Which failures leave the outcome
//! unknown (503 `write_outcome_unknown`) and which are safe to retry
//! (`no_leader`) is decided here, once, for every write route.

use openraft::error::ClientWriteError;
use openraft::error::RaftError;

use super::Routed;
use super::WRITE_TIMEOUT;
use super::forward::Forwarded;
use super::leader::relay;
use crate::api::ApiError;
use crate::api::AppState;
use crate::api::Raw;
use crate::api::error::write_error;
use crate::command::ApplyResult;
use crate::command::Command;
use crate::raft;

/// Serves the write `cmd` (validated and built by the handler): proposed here
/// when this node leads, handed to the leader over the peer port when another
/// node does, or (a leader that takes no forwarded writes) relayed as HTTP.
pub async fn write(
    state: &AppState,
    target: &super::Target,
    raw: &Raw,
    cmd: Command,
) -> Result<Routed<ApplyResult>, ApiError> {
    super::authorize_command(state, raw, &cmd)?;
    if !state.initialized() || !target.initialized() {
        return Err(ApiError::NotInitialized);
    }
    // The handler checked already, with its precise errors; this is the check the
    // leader also runs on forwarded writes (`crate::command::check`).
    cmd.check(state.config.max_value_bytes)?;
    // A follower that knows the leader hands the command over the peer port
    // (`super::forward`); a request another node forwarded here is not sent on.
    let mut cmd = cmd;
    // A leader change (a hand-off takes milliseconds, an election about one
    // election timeout) holds a write this long rather than failing it; longer,
    // and a 503 tells the client more than waiting does.
    let hold = std::time::Duration::from_millis(state.config.raft.election_timeout_max_ms);
    let mut to = match raw.forwarded() {
        true => None,
        false => target.writes.leader_elsewhere(hold).await,
    };
    let mut redirected = false;
    while let Some(leader) = to {
        let unknown = |message: String| ApiError::Unavailable {
            code: "write_outcome_unknown",
            message,
            retry: false,
        };
        match target
            .writes
            .write(leader, cmd, &raw.principal, WRITE_TIMEOUT)
            .await
        {
            Forwarded::Applied(r) => {
                state
                    .metrics
                    .forwarded_writes
                    .with_label_values(&["peer"])
                    .inc();
                return Ok(Routed::Local(r));
            }
            // Not proposed: the leader is stepping down or handing leadership over
            // (a rolling restart stops every leader once). Its successor gets the
            // command, once, instead of the client getting a 503.
            Forwarded::NotLeader(back, hint) => {
                if redirected {
                    return Err(ApiError::NoLeader { leader_hint: hint });
                }
                redirected = true;
                cmd = back;
                match target.writes.next_leader(leader, hint, hold).await {
                    // This node was elected: it proposes the write itself.
                    Some(next) if next == state.id => to = None,
                    Some(next) => to = Some(next),
                    None => return Err(ApiError::NoLeader { leader_hint: hint }),
                }
            }
            Forwarded::Failed(e) => {
                return Err(unknown(format!(
                    "leader {leader} failed the write ({e}); its outcome is unknown"
                )));
            }
            Forwarded::Unknown(e) => {
                return Err(unknown(format!(
                    "lost leader {leader} after handing it the write ({e}); its outcome is unknown"
                )));
            }
            Forwarded::Invalid(e) => return Err(e.into()),
            Forwarded::Forbidden(e) => return Err(ApiError::Forbidden(e)),
            Forwarded::NotSent(back, why) => {
                tracing::debug!(leader, reason = %why, "peer forwarding unavailable; replaying over HTTP");
                cmd = back;
                break;
            }
        }
    }
    let res = tokio::time::timeout(
        WRITE_TIMEOUT,
        raft::propose(&target.raft, cmd, raft::CONFIRM_WAIT),
    )
    .await
    .map_err(|_| ApiError::Unavailable {
        code: "commit_timeout",
        message: format!(
            "write not committed within {WRITE_TIMEOUT:?} (no quorum?); its outcome is unknown"
        ),
        retry: false,
    })?;
    match res {
        Ok(r) => Ok(Routed::Local(r.data)),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            let served = relay(state, raw, f.leader_id).await?;
            state
                .metrics
                .forwarded_writes
                .with_label_values(&["http"])
                .inc();
            Ok(Routed::Relayed(served))
        }
        Err(e) => Err(write_error(e)),
    }
}
