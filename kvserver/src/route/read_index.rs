//! Linearizable reads on followers (Raft "ReadIndex" from a follower).
//!
//! A follower that receives a linearizable read asks the leader, over the Raft
//! peer port, for a read index: the leader's commit index, confirmed by a quorum
//! heartbeat round that started after the request arrived. Once the follower's
//! state machine has applied that index, its local state contains every write
//! acknowledged before the read began, so it serves the read itself. This
//! replaces replaying the HTTP request to the leader, which profiles showed
//! doubled the HTTP work of every read that landed on a follower.
//!
//! Reads that arrive while a read-index request is in flight wait for the next
//! one (a request that started before them could have been answered before
//! their writes were acknowledged), so one round trip serves a whole burst. Any
//! failure (no leader, a leader that moved, a node that does not catch up in
//! time) is returned to the caller, which falls back to forwarding the request.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use tokio::sync::oneshot;

use crate::command::NodeId;
use crate::peer::PeerClient;
use crate::raft::KvRaft;

/// How long a read-index round trip to the leader may take.
const RPC_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a follower waits to apply up to the read index before giving up
/// (the caller then forwards the read to the leader instead).
const APPLY_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a follower read could not be served locally.
#[derive(Debug, thiserror::Error)]
pub enum FollowerReadError {
    #[error("leader {0} is not in this node's membership")]
    UnknownLeader(NodeId),
    #[error("read index from the leader failed: {0}")]
    Rpc(String),
    #[error("did not apply up to the read index {0} in time")]
    Behind(u64),
}

type Waiter = oneshot::Sender<Result<u64, String>>;

#[derive(Default)]
struct Queue {
    /// A task is fetching read indexes for queued waiters.
    running: bool,
    /// Waiting reads, by the leader they were sent to.
    waiters: Vec<(NodeId, Waiter)>,
}

/// Follower-read coordinator of one node.
pub struct FollowerReads {
    /// The group the reads are for, and how to reach its members.
    link: crate::peer::Link,
    queue: Mutex<Queue>,
    /// The connection to the current leader, kept between rounds.
    client: tokio::sync::Mutex<Option<(NodeId, String, PeerClient)>>,
}

impl FollowerReads {
    pub fn new(link: crate::peer::Link) -> Arc<Self> {
        Arc::new(Self {
            link,
            queue: Mutex::default(),
            client: tokio::sync::Mutex::new(None),
        })
    }

    /// Waits until this node may serve a linearizable read locally, given that
    /// `leader` leads. On error the caller forwards the read instead.
    pub async fn barrier(self: &Arc<Self>, leader: NodeId) -> Result<(), FollowerReadError> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.waiters.push((leader, tx));
            !std::mem::replace(&mut q.running, true)
        };
        if start {
            let this = self.clone();
            tokio::spawn(async move { this.drive().await });
        }
        let index = rx
            .await
            .map_err(|_| FollowerReadError::Rpc("read-index task ended".into()))?
            .map_err(FollowerReadError::Rpc)?;
        self.await_applied(index).await
    }

    /// Serves queued waiters round by round until none are left.
    async fn drive(self: Arc<Self>) {
        loop {
            let batch = {
                let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                if q.waiters.is_empty() {
                    q.running = false;
                    return;
                }
                std::mem::take(&mut q.waiters)
            };
            // Normally all name the same leader; a leader change mid-burst splits them.
            let mut batch = batch;
            while let Some(&(leader, _)) = batch.first() {
                let (mine, rest): (Vec<_>, Vec<_>) =
                    batch.into_iter().partition(|(l, _)| *l == leader);
                batch = rest;
                let result = self.fetch(leader).await;
                for (_, waiter) in mine {
                    // A waiter that gave up (client gone) is fine to miss.
                    let _ = waiter.send(result.clone());
                }
            }
        }
    }

    /// One read-index round trip to `leader`.
    async fn fetch(&self, leader: NodeId) -> Result<u64, String> {
        let addr = crate::raft::member_raft_addr(&self.link.raft, leader)
            .ok_or_else(|| FollowerReadError::UnknownLeader(leader).to_string())?;
        let mut slot = self.client.lock().await;
        let reuse = matches!(&*slot, Some((id, a, _)) if *id == leader && *a == addr);
        if !reuse {
            *slot = Some((leader, addr.clone(), self.link.client(leader, addr)));
        }
        let Some((_, _, client)) = slot.as_mut() else {
            return Err("no read-index client".into());
        };
        client
            .read_index(RPC_TIMEOUT)
            .await
            .map_err(|e| e.to_string())
    }

    /// Waits until the local state machine has applied `index`.
    async fn await_applied(&self, index: u64) -> Result<(), FollowerReadError> {
        let applied = |raft: &KvRaft| {
            raft.metrics()
                .borrow_watched()
                .last_applied
                .as_ref()
                .map(|l| l.index)
        };
        if applied(&self.link.raft).is_some_and(|a| a >= index) {
            return Ok(());
        }
        self.link
            .raft
            .wait(Some(APPLY_TIMEOUT))
            .applied_index_at_least(Some(index), "follower read")
            .await
            .map(|_| ())
            .map_err(|_| FollowerReadError::Behind(index))
    }
}
