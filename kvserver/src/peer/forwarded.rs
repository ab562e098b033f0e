//! A client write another member handed to this node (the leader) over the peer
//! port (`Request::WriteAs`): checked again here, then proposed.

use super::server::PeerServer;
use super::wire::WriteRejected;
use crate::command::NodeId;
use crate::raft::CONFIRM_WAIT;
use crate::raft::KvRaft;
use crate::raft::propose;

/// Proposes a write follower `from` forwarded on behalf of `principal`, after the
/// checks the follower ran: the command's rules and the principal's grant. A
/// refusal here means the two nodes disagree (a token file not yet reloaded, a
/// different configuration), and is logged.
pub(super) async fn forwarded_write(
    server: &PeerServer,
    raft: &KvRaft,
    from: NodeId,
    mut cmd: crate::command::Command,
    principal: &crate::auth::Principal,
) -> Result<crate::command::ApplyResult, WriteRejected> {
    // Time is the leader's, as for writes it receives itself.
    cmd.restamp(crate::command::now_ms());
    if let Err(invalid) = cmd.check(server.max_value_bytes) {
        server
            .metrics
            .peer_refused
            .with_label_values(&["invalid_write"])
            .inc();
        tracing::warn!(peer = from, error = %invalid, "refused a forwarded write that breaks the command rules");
        return Err(WriteRejected::Invalid(invalid));
    }
    let allowed = match principal.kind {
        crate::auth::Kind::Anonymous if server.auth_enabled => Err(crate::auth::Forbidden(
            "this leader requires client authentication; the forwarding node sent none (is auth enabled on every member?)".into(),
        )),
        _ => crate::auth::check_command(principal, &cmd),
    };
    if let Err(forbidden) = allowed {
        server
            .metrics
            .peer_refused
            .with_label_values(&["forbidden_write"])
            .inc();
        // The refusal names keys: those go to debug only.
        tracing::warn!(peer = from, principal = %principal.name, "refused a forwarded write its principal may not make");
        tracing::debug!(peer = from, error = %forbidden, "forwarded write refused");
        return Err(WriteRejected::Forbidden(forbidden));
    }
    match propose(raft, cmd, CONFIRM_WAIT).await {
        Ok(r) => Ok(r.data),
        Err(openraft::error::RaftError::APIError(
            openraft::error::ClientWriteError::ForwardToLeader(f),
        )) => Err(WriteRejected::NotLeader(f.leader_id)),
        Err(e) => Err(WriteRejected::Failed(e.to_string())),
    }
}
