//! Removing a partition group from a node that no longer hosts it: after the
//! placement driver moved the replica elsewhere (the group's membership no longer
//! names this node, and the placement map dropped it, see `super::driver`), the
//! node stops the group's Raft and deletes everything of it: its database (the
//! directory, or the PostgreSQL schema) and its records in the shared Raft log.
//!
//! Crash safety: the directory is first renamed to `<id>.removing`, which is the
//! point of no return. A node that stops after that finishes the removal when it
//! starts ([`Groups::reopen`] calls `sweep`) instead of reopening a group
//! whose database is half gone; one that stops before it still hosts the whole
//! group. Log records of a group without a directory are dropped on start for the
//! same reason: a group reopened later must start from an empty log, not from
//! the entries of a replica that was deleted.

use std::path::Path;
use std::path::PathBuf;

use super::CLUSTER_GROUP;
use super::GroupError;
use super::GroupId;
use super::Groups;
use crate::store::Backend;
use crate::store::Store;

/// Suffix of a group directory whose removal has started.
const REMOVING: &str = ".removing";

fn tombstone(dir: &Path) -> PathBuf {
    let mut name = dir.as_os_str().to_owned();
    name.push(REMOVING);
    PathBuf::from(name)
}

impl Groups {
    /// Stops group `id` on this node and deletes its data. Returns whether the
    /// node held anything of it.
    pub async fn remove(&self, id: GroupId) -> Result<bool, GroupError> {
        if id == CLUSTER_GROUP {
            return Err(GroupError::ClusterGroup(id));
        }
        // Serialized with `open`: a group is never opened while it is removed.
        let _opening = self.opening.lock().await;
        let hosted = match self.hosted.write() {
            Ok(mut h) => h.remove(&id),
            Err(_) => None,
        };
        if let Some(g) = &hosted {
            if let Err(e) = g.raft.shutdown().await {
                tracing::warn!(group = id, error = %e, "stopping a removed group's raft failed");
            }
            g.reaper.abort();
            g.store.close().await;
        }
        let opts = self.store_opts(id);
        let dir = opts.data_dir;
        let tomb = tombstone(&dir);
        let dir_err = |source| GroupError::Dir {
            group: id,
            path: dir.clone(),
            source,
        };
        let had_dir = match std::fs::rename(&dir, &tomb) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(dir_err(e)),
        };
        if let Some(parent) = dir.parent() {
            crate::raftlog::segment::sync_dir(parent)
                .map_err(|e| dir_err(std::io::Error::other(e.to_string())))?;
        }
        let had_log = self.ctx.engine.groups().contains(&id);
        self.finish_removal(id, &tomb, &opts.backend).await?;
        if hosted.is_some() || had_dir || had_log {
            tracing::info!(
                group = id,
                "removed a partition group this node no longer hosts"
            );
        }
        Ok(hosted.is_some() || had_dir || had_log)
    }

    async fn finish_removal(
        &self,
        id: GroupId,
        tomb: &Path,
        backend: &Backend,
    ) -> Result<(), GroupError> {
        Store::destroy_schema(backend)
            .await
            .map_err(|source| GroupError::Store { group: id, source })?;
        self.drop_log(id).await?;
        match std::fs::remove_dir_all(tomb) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(GroupError::Dir {
                group: id,
                path: tomb.to_path_buf(),
                source,
            }),
        }
    }

    /// Drops every record of group `id` from the node's shared Raft log.
    async fn drop_log(&self, id: GroupId) -> Result<(), GroupError> {
        self.ctx
            .engine
            .drop_group(id)
            .await
            .map_err(|e| GroupError::Raft {
                group: id,
                message: format!("dropping its log: {e}"),
            })
    }

    /// On start, before reopening: finishes removals a stop cut short, and drops
    /// the log records of groups that have no directory (`present`).
    pub(super) async fn sweep(&self, root: &Path, present: &[GroupId]) -> Result<(), GroupError> {
        let cut_short: Vec<(GroupId, PathBuf)> = std::fs::read_dir(root)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter_map(|e| {
                        let name = e.file_name().to_str()?.to_string();
                        let id = name.strip_suffix(REMOVING)?.parse().ok()?;
                        Some((id, e.path()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        for (id, tomb) in cut_short {
            tracing::info!(
                group = id,
                "finishing the removal of a group cut short by a stop"
            );
            let opts = self.store_opts(id);
            self.finish_removal(id, &tomb, &opts.backend).await?;
        }
        for id in self.ctx.engine.groups() {
            if id != CLUSTER_GROUP && !present.contains(&id) {
                tracing::info!(
                    group = id,
                    "dropping the log of a group this node no longer holds"
                );
                self.drop_log(id).await?;
            }
        }
        Ok(())
    }
}
