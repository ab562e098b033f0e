//! The Raft groups a node hosts. Group 0 is the cluster's own group: its
//! membership is the cluster's membership (who may connect to the peer port is
//! judged against it, see `crate::peer::server`), and with one partition it holds
//! all the data, exactly as before partitions existed. Every other group is one
//! partition's replica on this node (issue 21): its own openraft `Raft`, its own
//! state machine database, and its own records in the node's one shared Raft log
//! (`crate::raftlog` keys every record by group and syncs once per batch for all
//! of them, so sixteen groups cost one `fdatasync` per batch, not sixteen).
//!
//! [`launch`] starts the Raft of any group on a store that is already open; it is
//! the one way a group starts, for group 0 in `crate::node` and for partitions in
//! [`Groups::open`]. A partition's files live in `<data_dir>/groups/<id>/` (its
//! SQLite database, snapshots and catch-up marker) or, on PostgreSQL, in the
//! node's schema with `_g<id>` appended; a node reopens every group directory it
//! finds when it starts, so a restarted node serves the replicas it held.

pub mod driver;
mod form;
pub mod moves;
mod reap;
pub mod rebalance;
mod remove;
mod report;

pub use reap::reap_expired;
pub use report::GroupReport;
pub use report::GroupStats;

use std::collections::BTreeMap;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::RwLock;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::catchup::CatchUp;
use crate::command::NodeId;
use crate::config::Config;
use crate::peer::Dialer;
use crate::peer::NetworkFactory;
use crate::peer::PeerState;
use crate::raft;
use crate::raft::KvRaft;
use crate::raftlog::Engine;
use crate::raftlog::RaftLog;
use crate::store::Backend;
use crate::store::StateMachine;
use crate::store::Store;
use crate::store::StoreError;
use crate::store::StoreOptions;

/// A Raft group's id: 0 is the cluster's group, partition `p` is group `p + 1`.
pub type GroupId = u64;

/// The cluster's own group (see the module docs).
pub const CLUSTER_GROUP: GroupId = 0;

/// The group that holds partition `p` when a cluster has more than one.
pub fn partition_group(p: u32) -> GroupId {
    u64::from(p) + 1
}

/// How long gathered group reports are reused.
pub const REPORTS_FRESH: Duration = Duration::from_millis(250);

/// How long a member has to answer a `Groups` request.
const REPORT_TTL: Duration = Duration::from_secs(2);

/// How long forming a group waits for this node to lead it.
const FORM_TIMEOUT: Duration = Duration::from_secs(10);

/// The partition group `id` holds (`None`: the cluster group).
pub fn group_partition(id: GroupId) -> Option<u32> {
    id.checked_sub(1).and_then(|p| u32::try_from(p).ok())
}

/// Errors while starting, opening or stopping a group.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("storage of group {group}: {source}")]
    Store { group: GroupId, source: StoreError },
    #[error("raft of group {group}: {message}")]
    Raft { group: GroupId, message: String },
    #[error("group {group}: the catch-up marker: {source}")]
    CatchUp {
        group: GroupId,
        source: std::io::Error,
    },
    #[error("group {group}: its directory {path}: {source}")]
    Dir {
        group: GroupId,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("group {0} is the cluster's group: it is started with the node, not opened")]
    ClusterGroup(GroupId),
    #[error("the node is stopping: group {0} is not opened")]
    Stopping(GroupId),
}

/// What every group of a node is started with.
#[derive(Clone)]
pub struct GroupCtx {
    pub node_id: NodeId,
    pub config: Arc<Config>,
    /// The node's shared Raft log.
    pub engine: Engine,
    pub dialer: Dialer,
}

/// A group's Raft, started by [`launch`].
pub struct Launched {
    pub raft: KvRaft,
    /// The peer server's view of the group (catch-up guard, last contact).
    pub peer: Arc<PeerState>,
    /// Whether the group's log held entries (or a purge marker): it was formed before.
    pub restored: bool,
}

/// Starts group `id`'s Raft on `store` (already open), its log in the node's
/// shared log and its catch-up marker in `dir`. `cluster` is group 0's Raft, for a
/// partition's group: its peer connections say hello as members of the cluster.
pub async fn launch(
    ctx: &GroupCtx,
    id: GroupId,
    store: &Store,
    dir: &Path,
    cluster: Option<KvRaft>,
) -> Result<Launched, GroupError> {
    let raft_err = |e: String| GroupError::Raft {
        group: id,
        message: e,
    };
    let mut log_store = RaftLog::new(ctx.engine.clone(), id, store.clone());
    // A store with log entries (or a purge marker) holds a membership: its first
    // entry is one, or a snapshot carrying one was installed before the purge.
    let restored = openraft::storage::RaftLogStorage::get_log_state(&mut log_store)
        .await
        .map_err(|e| raft_err(e.to_string()))?
        .last_log_id
        .is_some();
    let sm = StateMachine::new(store.clone())
        .await
        .map_err(|source| GroupError::Store { group: id, source })?;
    let catch_up = CatchUp::open(dir, !restored)
        .map_err(|source| GroupError::CatchUp { group: id, source })?;
    let mut raft_config =
        raft::openraft_config(&ctx.config).map_err(|e| raft_err(e.to_string()))?;
    raft_config.enable_elect = catch_up.may_elect();
    let cell = Arc::new(std::sync::OnceLock::new());
    let factory = NetworkFactory {
        dialer: ctx.dialer.clone(),
        raft: cell.clone(),
        group: id,
        cluster,
    };
    let raft = KvRaft::new(ctx.node_id, Arc::new(raft_config), factory, log_store, sm)
        .await
        .map_err(|e| raft_err(e.to_string()))?;
    let _ = cell.set(raft.clone());
    if restored {
        // openraft publishes the state it loaded only from its first core loop; until
        // then its metrics show an empty membership. Peers and clients must not see
        // that: the peer server would refuse the leader as "empty store, data lost"
        // and the API would answer `not_initialized`. So serve nothing before then.
        let loaded = raft
            .wait(Some(Duration::from_secs(10)))
            .metrics(raft::has_membership, "loaded membership")
            .await;
        if let Err(e) = loaded {
            tracing::warn!(group = id, error = %e, "the restored membership did not show in Raft metrics");
        }
    }
    Ok(Launched {
        raft,
        peer: Arc::new(PeerState::new(catch_up)),
        restored,
    })
}

/// One hosted partition group.
pub struct Group {
    pub id: GroupId,
    pub raft: KvRaft,
    pub store: Store,
    pub peer: Arc<PeerState>,
    /// Writes handed to the group's leader over the peer port.
    pub writes: Arc<crate::route::forward::WriteForwarder>,
    /// Read indexes fetched from the group's leader (follower reads).
    pub reads: Arc<crate::route::read_index::FollowerReads>,
    /// Its keys and bytes, as last counted.
    pub stats: Arc<GroupStats>,
    reaper: JoinHandle<()>,
}

/// The partition groups this node hosts (group 0 is the node's own, see
/// `crate::node`). Look-ups are synchronous (the peer server does one per
/// connection); opening is serialized, so a group is never started twice.
pub struct Groups {
    ctx: GroupCtx,
    /// Group 0's Raft and store.
    cluster: KvRaft,
    cluster_store: Store,
    /// The node's own store options (group 0's), from which each group's derive.
    store_opts: StoreOptions,
    metrics: Arc<crate::metrics::Metrics>,
    hosted: RwLock<BTreeMap<GroupId, Arc<Group>>>,
    /// Read indexes of the cluster group, for a barrier before acting on the map.
    cluster_reads: Arc<crate::route::read_index::FollowerReads>,
    /// What the last round of moves waited on, logged when it changes.
    last_waits: std::sync::Mutex<String>,
    /// The last gathered cluster reports (see [`Groups::cluster_reports`]).
    last_reports: tokio::sync::Mutex<Option<(std::time::Instant, Arc<Vec<GroupReport>>)>>,
    opening: tokio::sync::Mutex<bool>,
    stop: watch::Sender<bool>,
}

/// Where group `id`'s files live under the node's data directory.
pub fn group_dir(data_dir: &Path, id: GroupId) -> PathBuf {
    data_dir.join("groups").join(id.to_string())
}

/// Group `id`'s PostgreSQL schema: the node's, with `_g<id>` appended (kept
/// within PostgreSQL's 63-byte identifiers).
pub fn group_schema(node_schema: &str, id: GroupId) -> String {
    let suffix = format!("_g{id}");
    let keep = 63usize.saturating_sub(suffix.len()).min(node_schema.len());
    format!("{}{suffix}", &node_schema[..keep])
}

impl Groups {
    pub fn new(
        ctx: GroupCtx,
        cluster: KvRaft,
        cluster_store: Store,
        store_opts: StoreOptions,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Groups> {
        let cluster_reads = crate::route::read_index::FollowerReads::new(
            crate::peer::Link::cluster(ctx.dialer.clone(), cluster.clone()),
        );
        Arc::new(Groups {
            last_waits: std::sync::Mutex::new(String::new()),
            cluster_reads,
            ctx,
            cluster,
            cluster_store,
            store_opts,
            metrics,
            hosted: RwLock::new(BTreeMap::new()),
            last_reports: tokio::sync::Mutex::new(None),
            opening: tokio::sync::Mutex::new(false),
            stop: watch::channel(false).0,
        })
    }

    /// The hosted group `id`, if this node has opened it.
    pub fn get(&self, id: GroupId) -> Option<Arc<Group>> {
        self.hosted.read().ok()?.get(&id).cloned()
    }

    /// A report of every hosted group, the cluster's first.
    pub fn reports(&self) -> Vec<GroupReport> {
        let me = self.ctx.node_id;
        let mut out = vec![GroupReport::of(
            CLUSTER_GROUP,
            me,
            &self.cluster,
            None,
            None,
        )];
        let hosted: Vec<Arc<Group>> = match self.hosted.read() {
            Ok(h) => h.values().cloned().collect(),
            Err(_) => Vec::new(),
        };
        out.extend(
            hosted.iter().map(|g| {
                GroupReport::of(g.id, me, &g.raft, Some(g.store.revision()), g.stats.get())
            }),
        );
        out
    }

    /// What every member of the cluster reports of its groups (this node's own
    /// included; a member that does not answer in time is left out). One
    /// gathering at a time, reused for [`REPORTS_FRESH`]: `GET /v1/partitions`
    /// is open to every authenticated caller, and a flood of it must not turn
    /// into a flood of peer calls (each asks every member).
    pub async fn cluster_reports(&self) -> Arc<Vec<GroupReport>> {
        let mut slot = self.last_reports.lock().await;
        if let Some((at, r)) = &*slot
            && at.elapsed() < REPORTS_FRESH
        {
            return r.clone();
        }
        let r = Arc::new(self.gather_reports().await);
        *slot = Some((std::time::Instant::now(), r.clone()));
        r
    }

    async fn gather_reports(&self) -> Vec<GroupReport> {
        let me = self.ctx.node_id;
        let mut out = self.reports();
        let others = self.members().into_iter().filter(|(n, _)| *n != me);
        let asks = others.map(|(n, k)| {
            let addr = k.raft_addr;
            let mut c =
                crate::peer::PeerClient::new(self.ctx.dialer.clone(), n, addr, &self.cluster);
            async move { (n, c.groups(REPORT_TTL).await) }
        });
        for (n, r) in futures_util::future::join_all(asks).await {
            match r {
                Ok(r) => out.extend(r.into_iter().filter(|r| r.node == n)),
                Err(e) => tracing::debug!(node = n, error = %e, "no group report from a member"),
            }
        }
        out
    }

    /// The cluster's members (the cluster group's membership) and their addresses.
    pub fn members(&self) -> BTreeMap<NodeId, crate::command::KvNode> {
        raft::raft_metrics(&self.cluster)
            .membership_config
            .membership()
            .nodes()
            .map(|(n, k)| (*n, k.clone()))
            .collect()
    }

    /// Returns once this node has applied everything the cluster group had
    /// committed when it was called (the map it then holds is current).
    pub async fn cluster_barrier(&self) -> Result<(), String> {
        let m = raft::raft_metrics(&self.cluster);
        match m.current_leader {
            Some(l) if l == self.ctx.node_id => self
                .cluster
                .ensure_linearizable(openraft::ReadPolicy::ReadIndex)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Some(l) => self
                .cluster_reads
                .barrier(l)
                .await
                .map_err(|e| e.to_string()),
            None => Err("the cluster group has no leader".into()),
        }
    }

    /// The cluster group's revision on this node (0: it never held a key).
    pub fn cluster_revision(&self) -> u64 {
        self.cluster_store.revision()
    }

    /// Counts the keys and bytes of every hosted group (see [`GroupStats`]).
    pub async fn count(&self) {
        for id in self.ids() {
            let Some(g) = self.get(id) else { continue };
            match g.store.key_stats().await {
                Ok((keys, bytes)) => g.stats.set(keys, bytes),
                Err(e) => tracing::debug!(group = id, error = %e, "counting a group's keys"),
            }
        }
    }

    /// The ids of the hosted groups, ascending.
    pub fn ids(&self) -> Vec<GroupId> {
        self.hosted
            .read()
            .map(|h| h.keys().copied().collect())
            .unwrap_or_default()
    }

    fn store_opts(&self, id: GroupId) -> StoreOptions {
        let mut o = self.store_opts.clone();
        o.data_dir = group_dir(&self.store_opts.data_dir, id);
        if let Backend::Postgres { schema, .. } = &mut o.backend {
            *schema = group_schema(schema, id);
        }
        o
    }

    /// Opens group `id` on this node (creating its store if new) and starts its
    /// Raft; a group already open is returned as it is. A new group's store is
    /// empty: it neither campaigns nor votes until a leader replicates to it, or
    /// until this node forms it ([`Groups::form`]).
    pub async fn open(&self, id: GroupId) -> Result<Arc<Group>, GroupError> {
        if id == CLUSTER_GROUP {
            return Err(GroupError::ClusterGroup(id));
        }
        let stopping = self.opening.lock().await;
        if let Some(g) = self.get(id) {
            return Ok(g);
        }
        if *stopping {
            return Err(GroupError::Stopping(id));
        }
        let opts = self.store_opts(id);
        let store = Store::open(&opts, self.metrics.clone())
            .await
            .map_err(|source| GroupError::Store { group: id, source })?;
        let launched = match launch(
            &self.ctx,
            id,
            &store,
            &opts.data_dir,
            Some(self.cluster.clone()),
        )
        .await
        {
            Ok(l) => l,
            Err(e) => {
                store.close().await;
                return Err(e);
            }
        };
        let reaper = tokio::spawn(reap_expired(
            launched.raft.clone(),
            store.clone(),
            self.ctx.config.ttl_reap_interval_ms,
            stopped(&self.stop.subscribe()),
        ));
        let link = crate::peer::Link {
            dialer: self.ctx.dialer.clone(),
            raft: launched.raft.clone(),
            group: id,
            cluster: Some(self.cluster.clone()),
        };
        let group = Arc::new(Group {
            id,
            writes: crate::route::forward::WriteForwarder::new(link.clone()),
            reads: crate::route::read_index::FollowerReads::new(link),
            stats: Arc::new(GroupStats::default()),
            raft: launched.raft,
            store,
            peer: launched.peer,
            reaper,
        });
        if let Ok(mut h) = self.hosted.write() {
            h.insert(id, group.clone());
        }
        tracing::info!(
            group = id,
            restored = launched.restored,
            "opened a partition group"
        );
        Ok(group)
    }

    /// Reopens every group whose directory is under the node's data directory
    /// (a restarted node serves the replicas it held), after finishing removals
    /// a stop cut short (`remove.rs`). Returns their ids.
    pub async fn reopen(&self) -> Result<Vec<GroupId>, GroupError> {
        let root = self.store_opts.data_dir.join("groups");
        let mut ids: Vec<GroupId> = match std::fs::read_dir(&root) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .filter(|id| *id != CLUSTER_GROUP)
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(GroupError::Dir {
                    group: CLUSTER_GROUP,
                    path: root,
                    source,
                });
            }
        };
        ids.sort_unstable();
        self.sweep(&root, &ids).await?;
        for id in &ids {
            self.open(*id).await?;
        }
        Ok(ids)
    }

    /// Stops every hosted group: no group opens after this.
    pub async fn shutdown(&self) {
        *self.opening.lock().await = true;
        let _ = self.stop.send(true);
        let groups: Vec<Arc<Group>> = match self.hosted.write() {
            Ok(mut h) => std::mem::take(&mut *h).into_values().collect(),
            Err(_) => Vec::new(),
        };
        for g in groups {
            if let Err(e) = g.raft.shutdown().await {
                tracing::warn!(group = g.id, error = %e, "stopping a group's raft failed");
            }
            g.reaper.abort();
            g.store.close().await;
        }
    }
}

fn stopped(rx: &watch::Receiver<bool>) -> impl std::future::Future<Output = ()> + use<> {
    let mut rx = rx.clone();
    async move {
        let _ = rx.wait_for(|v| *v).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_groups_follow_the_cluster_group() {
        assert_eq!(partition_group(0), 1);
        assert_eq!(partition_group(15), 16);
        assert_ne!(partition_group(0), CLUSTER_GROUP);
        assert_eq!(group_partition(partition_group(7)), Some(7));
        assert_eq!(group_partition(CLUSTER_GROUP), None);
    }

    #[test]
    fn group_schemas_stay_within_postgres_identifiers() {
        assert_eq!(group_schema("kv_orders_1", 3), "kv_orders_1_g3");
        let long = "k".repeat(63);
        let s = group_schema(&long, 1024);
        assert_eq!(s.len(), 63);
        assert!(s.ends_with("_g1024"));
        assert_ne!(group_schema(&long, 1), group_schema(&long, 2));
    }
}
