//! Expiry, per group: the leader of each group proposes the deletion of its
//! expired keys.

use std::time::Duration;

use openraft::ServerState;

use crate::command::Command;
use crate::command::now_ms;
use crate::raft::KvRaft;
use crate::store::Store;

/// A group's leader periodically proposes deletion of expired keys, so expiry is
/// a replicated event that every replica applies at the same log position.
pub async fn reap_expired(
    raft: KvRaft,
    store: Store,
    interval_ms: u64,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(Duration::from_millis(interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {}
        }
        if crate::raft::raft_metrics(&raft).state != ServerState::Leader {
            continue;
        }
        let now = now_ms();
        match store.expired_keys(now, 1000).await {
            Ok(keys) if !keys.is_empty() => {
                if let Err(e) = raft
                    .client_write(Command::Expire { keys, now_ms: now })
                    .await
                {
                    tracing::debug!(error = %e, "expiry proposal failed; will retry");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "scanning expired keys failed"),
        }
    }
}
