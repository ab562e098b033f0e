//! The catch-up guard: a node that started with an empty store neither
//! campaigns nor votes until its log holds an entry of the term of a leader
//! that replicated to it.
//!
//! Why: a member whose volume was wiped is added back as a learner, and when
//! the leader's log is not purged it replays that log from its first entry.
//! While it replays, the membership it believes in is the last one in its
//! partial log, which can be years out of date — the first entry of every
//! cluster makes node 1 its sole voter. A node that campaigned on such a
//! membership could elect itself alone, at a term above the real leader's,
//! and overwrite committed entries (the TLS chaos campaign's seeds 1045, 1081,
//! 1174 and 1192 reached the stall that exposes it; the regression test is
//! `tests/rejoin.rs::a_wiped_member_replaying_its_log_one_entry_at_a_time_rejoins`).
//! Once the node holds an entry of leader T's term, log matching gives it
//! everything before that entry, so every configuration it can act on is one
//! leader T held: it is then an ordinary lagging follower, which Raft handles.
//!
//! The guard survives restarts: it is a marker file in the data directory,
//! written (and synced) when the node opens an empty store and removed (and
//! the removal synced) only once the condition holds, or just before this node
//! forms a cluster itself. A crash mid-replay therefore restarts with the guard
//! on, though the log is no longer empty.
//!
//! While the guard is on, the peer server also treats this node's membership
//! as unknown (as on an empty store): it admits any peer whose certificate
//! names a node of this cluster, because the stale membership may not list
//! the current leader at all.

use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;

use crate::raft::KvRaft;

/// The marker file's name in the data directory.
const MARKER: &str = "catching-up";

/// The guard of one node (see the module doc).
#[derive(Debug)]
pub struct CatchUp {
    marker: PathBuf,
    active: AtomicBool,
    /// Serializes changes of the marker file.
    changing: tokio::sync::Mutex<()>,
}

impl CatchUp {
    /// Opens the guard of the node whose data directory is `data_dir`; with
    /// `empty_store`, turns it on (writing the marker). Errors name the file.
    pub fn open(data_dir: &Path, empty_store: bool) -> Result<CatchUp, std::io::Error> {
        let marker = data_dir.join(MARKER);
        if empty_store {
            write_synced(&marker)?;
        }
        let active = marker.try_exists().map_err(|e| named(&marker, e))?;
        if active {
            tracing::info!(
                "this node started with an empty store (or restarted before catching up): it will not campaign or vote until a leader has replicated an entry of its term to it"
            );
        }
        Ok(CatchUp {
            marker,
            active: AtomicBool::new(active),
            changing: tokio::sync::Mutex::new(()),
        })
    }

    /// Whether the guard is on: this node may hold a stale replay of the log.
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Whether elections may be enabled in openraft's configuration at start.
    pub fn may_elect(&self) -> bool {
        !self.active()
    }

    /// Called after this node durably accepted an append-entries of a leader of
    /// term `leader_term` whose last log id (its last entry, or its
    /// `prev_log_id` when it carried none) is of term `last_term`: turns the
    /// guard off when they are equal.
    pub async fn appended(&self, raft: &KvRaft, leader_term: u64, last_term: Option<u64>) {
        if !self.active() || last_term != Some(leader_term) {
            return;
        }
        let _changing = self.changing.lock().await;
        if !self.active() {
            return;
        }
        match remove_synced(self.marker.clone()).await {
            Ok(()) => {
                self.active.store(false, Ordering::Release);
                raft.runtime_config().elect(true);
                tracing::info!(
                    term = leader_term,
                    "caught up: this node holds an entry of the current leader's term; it campaigns and votes again"
                );
            }
            // Stays on: the next append retries. Off in memory only would lose it at a restart.
            Err(e) => tracing::error!(error = %e, "cannot remove the catch-up marker"),
        }
    }

    /// This node is about to form a cluster itself (its store is empty): the
    /// marker goes first, so a crash after forming cannot leave a sole voter
    /// that never campaigns. Elections stay off until [`CatchUp::formed`].
    pub async fn forming(&self) -> Result<(), std::io::Error> {
        let _changing = self.changing.lock().await;
        if self.active() {
            remove_synced(self.marker.clone()).await?;
        }
        Ok(())
    }

    /// After [`CatchUp::forming`]: `formed` says whether the cluster was formed.
    /// If not (a leader's append won the race, say), the marker is written back.
    pub async fn formed(&self, raft: &KvRaft, formed: bool) -> Result<(), std::io::Error> {
        let _changing = self.changing.lock().await;
        if !self.active() {
            return Ok(());
        }
        if formed {
            self.active.store(false, Ordering::Release);
            raft.runtime_config().elect(true);
            Ok(())
        } else {
            let marker = self.marker.clone();
            tokio::task::spawn_blocking(move || write_synced(&marker))
                .await
                .map_err(std::io::Error::other)?
        }
    }
}

fn named(path: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Creates `path` (empty) and syncs it and its directory.
fn write_synced(path: &Path) -> Result<(), std::io::Error> {
    let f = std::fs::File::create(path).map_err(|e| named(path, e))?;
    f.sync_all().map_err(|e| named(path, e))?;
    sync_parent(path)
}

async fn remove_synced(path: PathBuf) -> Result<(), std::io::Error> {
    tokio::task::spawn_blocking(move || {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(named(&path, e)),
        }
        sync_parent(&path)
    })
    .await
    .map_err(std::io::Error::other)?
}

fn sync_parent(path: &Path) -> Result<(), std::io::Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| named(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_is_on_for_an_empty_store_and_survives_a_restart() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        assert!(!CatchUp::open(dir.path(), false)?.active());
        assert!(CatchUp::open(dir.path(), true)?.active());
        // Restarted mid-replay: the log is not empty any more, the marker is there.
        assert!(CatchUp::open(dir.path(), false)?.active());
        Ok(())
    }
}
