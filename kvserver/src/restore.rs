//! Forming a cluster on this node, from nothing or from a backup
//! (`restore_from`).
//!
//! Restoring is part of initializing, never of starting: a node configured
//! with `restore_from` waits uninitialized like any other, and only when it is
//! told to form the cluster (`POST /v1/cluster/init`, or `--bootstrap`) does it
//! check the backup, install it into its empty store, and initialize itself as
//! the single voter of a new cluster. A member that comes back with an empty
//! volume under the same settings is therefore never turned into a second
//! cluster: it waits, and the operator adds it back as a learner.
//!
//! The restored keys are not in the Raft log, so a learner that replayed the
//! log from its start would miss them. Right after initializing, the node
//! snapshots and purges its log: every member that joins later receives the
//! snapshot, which carries the restored keys.
//!
//! A partitioned cluster (`partitions > 1`) is restored group by group: the
//! cluster's own group starts empty (it holds the map), the restoring node
//! places every partition on itself alone (`crate::group::driver`), and forms
//! each partition's group with the backup's keys of that partition
//! ([`Select`]), sealed the same way; the placement driver then copies the
//! replicas to the members as they join, and balances them. Any backup
//! restores into any partition count: keys are placed by hash on the way in.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use openraft::error::InitializeError;
use openraft::error::RaftError;

use crate::backup::BackupSummary;
use crate::catchup::CatchUp;
use crate::command::KvNode;
use crate::command::NodeId;
use crate::command::TypeConfig;
use crate::raft::KvRaft;
use crate::store::Select;
use crate::store::Store;
use crate::store::StoreError;

/// How long sealing a restore may take (snapshotting the restored state included).
const SEAL_TIMEOUT: Duration = Duration::from_secs(300);

/// Errors of forming a cluster.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Restore(#[from] StoreError),
    #[error(transparent)]
    Raft(#[from] RaftError<TypeConfig, InitializeError<TypeConfig>>),
    #[error("the restored cluster was formed but could not be sealed: {0}")]
    Seal(String),
    #[error("the catch-up marker: {0}")]
    Guard(std::io::Error),
}

/// Initializes `members` (this node alone) as a new cluster; with `restore_from`,
/// from the keys of that backup it selects. Returns the backup installed, if
/// any. The catch-up guard of the empty store is lifted around it (see
/// [`CatchUp::forming`]).
pub async fn initialize(
    raft: &KvRaft,
    store: &Store,
    catch_up: &CatchUp,
    id: NodeId,
    cluster_id: &str,
    members: BTreeMap<NodeId, KvNode>,
    restore_from: Option<(&Path, Select)>,
) -> Result<Option<BackupSummary>, InitError> {
    let restored = match restore_from {
        Some((path, select)) => {
            let s = store.restore_from(path, cluster_id, select).await?;
            tracing::info!(
                backup_cluster = %s.header.cluster_id,
                revision = s.header.revision,
                keys = s.keys,
                sha256 = %s.sha256,
                ?select,
                "restored the state machine from a backup"
            );
            Some(s)
        }
        None => None,
    };
    catch_up.forming().await.map_err(InitError::Guard)?;
    let formed = raft.initialize(members).await;
    catch_up
        .formed(raft, formed.is_ok())
        .await
        .map_err(InitError::Guard)?;
    formed?;
    if restored.is_some() {
        seal(raft, id).await.map_err(InitError::Seal)?;
    }
    Ok(restored)
}

/// What the cluster's own group takes of a backup: every key, or none when
/// the cluster is partitioned (its partitions' groups take them).
pub fn cluster_select(config: &crate::config::Config) -> Select {
    if config.partitions > 1 {
        Select::Nothing
    } else {
        Select::All
    }
}

/// Seals a restored cluster whose seal was interrupted (a crash between forming
/// it and purging its log): once this node leads it, before members join.
pub async fn finish_interrupted(raft: KvRaft, store: Store, id: NodeId) {
    match store.restored_from().await {
        Ok(Some(_)) => {}
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read whether this store was restored");
            return;
        }
    }
    let m = crate::raft::raft_metrics(&raft);
    if !crate::raft::has_membership(&m) || m.purged.is_some() {
        return;
    }
    let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
    if voters != [id] {
        return;
    }
    if let Err(e) = seal(&raft, id).await {
        tracing::error!(error = %e, "could not seal the restored cluster: members that join now would miss the restored keys");
    }
}

/// Snapshots the restored state and purges the log behind it (see the module docs).
async fn seal(raft: &KvRaft, id: NodeId) -> Result<(), String> {
    let m = raft
        .wait(Some(SEAL_TIMEOUT))
        .metrics(
            |m| m.current_leader == Some(id) && m.last_applied.map(|l| l.index) >= m.last_log_index,
            "leader of the restored cluster with its log applied",
        )
        .await
        .map_err(|e| e.to_string())?;
    let applied = m.last_applied.ok_or("nothing applied")?;
    raft.trigger().snapshot().await.map_err(|e| e.to_string())?;
    raft.wait(Some(SEAL_TIMEOUT))
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= applied.index),
            "snapshot of the restored state",
        )
        .await
        .map_err(|e| e.to_string())?;
    raft.trigger()
        .purge_log(applied.index)
        .await
        .map_err(|e| e.to_string())?;
    raft.wait(Some(SEAL_TIMEOUT))
        .metrics(
            |m| m.purged.is_some_and(|p| p.index >= applied.index),
            "log purged behind the snapshot",
        )
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(
        index = applied.index,
        "restored cluster sealed: members that join get its snapshot"
    );
    Ok(())
}
