//! Writes that land on a follower, handed to the leader over the Raft peer port.
//!
//! Two thirds of a spread-out client load lands on followers. Replaying each
//! such write as HTTP made the leader parse, route and serialize it a second
//! time (leader-only load cost ~15 % less CPU per put in `bench/compare.sh`
//! runs). Instead the follower sends the command it built (validated, TTL
//! resolved) as one binary frame on a pooled peer connection; the leader moves
//! the command's clock to its own (`Command::restamp`), checks it against the
//! client's principal, which travels with it, proposes it and sends
//! back the state machine's result, which the follower turns into the same
//! HTTP answer the leader would have given.
//!
//! Outcomes are kept apart the way clients rely on: a leader that is no longer
//! leader did not propose, so the command goes to the next leader once (after
//! that: `no_leader`, safe to retry); a connection that fails before the command
//! was sent changes nothing and the caller falls back to HTTP forwarding;
//! anything that fails after sending is an unknown outcome. A leader
//! running an older version (mid rolling upgrade) does not understand the
//! request: a new connection first asks what the server supports, and such a
//! leader gets HTTP forwarding for a minute before the next try.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use openraft::async_runtime::WatchReceiver;

use crate::command::ApplyResult;
use crate::command::Command;
use crate::command::NodeId;
use crate::command::TypeConfig;
use crate::peer::PeerClient;
use crate::peer::WriteRejected;

/// Idle connections kept to the leader.
const MAX_IDLE: usize = 64;
/// How long a leader that does not take forwarded writes is left alone.
const RECHECK_AFTER: Duration = Duration::from_secs(60);
/// How long a write refused by a leader that names no successor waits for one
/// before it is offered to the same leader again: a few heartbeats.
const LEASE_RETRY: Duration = Duration::from_millis(300);
/// Connect + capability exchange.
const SETUP_TIMEOUT: Duration = Duration::from_secs(2);

/// What became of a forwarded write.
#[derive(Debug)]
pub enum Forwarded {
    /// The leader applied it; its state machine's result.
    Applied(ApplyResult),
    /// The node asked is not the leader (any more, or it is handing leadership
    /// over) and did not propose it; it names the leader it knows. The command
    /// comes back for the next leader.
    NotLeader(Command, Option<NodeId>),
    /// The leader failed to propose it (shutting down, storage failed): the
    /// outcome is unknown.
    Failed(String),
    /// Nothing was sent (no address, no connection, an older leader): the command
    /// comes back for another way to the leader.
    NotSent(Command, String),
    /// Sent, then the connection failed or timed out: the outcome is unknown.
    Unknown(String),
    /// The leader refused the command as invalid: not proposed.
    Invalid(crate::command::Invalid),
    /// The leader refused the command for its principal: not proposed.
    Forbidden(crate::auth::Forbidden),
}

#[derive(Default)]
struct Pool {
    /// The leader (id, Raft address) the idle connections go to.
    target: Option<(NodeId, String)>,
    idle: Vec<PeerClient>,
    /// The target does not take forwarded writes; ask again after this.
    unsupported_until: Option<Instant>,
}

/// Forwarded-write connections of one node.
pub struct WriteForwarder {
    me: NodeId,
    /// The group the writes are for, and how to reach its members.
    link: crate::peer::Link,
    pool: Mutex<Pool>,
    /// This node (the leader) is handing leadership over: openraft refuses new
    /// writes until the successor leads, so they wait for it here.
    handing_off: AtomicBool,
}

impl WriteForwarder {
    pub fn new(link: crate::peer::Link) -> Arc<Self> {
        Arc::new(Self {
            me: link.dialer.me,
            link,
            pool: Mutex::default(),
            handing_off: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands leadership from this node (the leader) to voter `to` and waits up to
    /// `timeout` until another node leads; returns that node (`None`: no one took
    /// over in time). Writes arriving meanwhile wait for the successor (see
    /// [`Self::leader_elsewhere`]) instead of being refused by openraft, which
    /// stops proposing once asked to transfer.
    pub async fn hand_off(
        &self,
        to: NodeId,
        timeout: Duration,
    ) -> Result<Option<NodeId>, openraft::error::Fatal<TypeConfig>> {
        self.handing_off.store(true, Ordering::Relaxed);
        let moved = async {
            self.link.raft.trigger().transfer_leader(to).await?;
            let m = self.leader_other_than(self.me, timeout).await;
            Ok(m.and_then(|m| m.current_leader))
        }
        .await;
        self.handing_off.store(false, Ordering::Relaxed);
        moved
    }

    /// Waits up to `timeout` until a node other than `old` leads; the metrics
    /// that show it.
    async fn leader_other_than(
        &self,
        old: NodeId,
        timeout: Duration,
    ) -> Option<openraft::RaftMetrics<TypeConfig>> {
        self.link
            .raft
            .wait(Some(timeout))
            .metrics(
                |m| m.current_leader.is_some_and(|l| l != old),
                "a new leader",
            )
            .await
            .ok()
    }

    /// The leader, if it is another node. When no leader is known (an election is
    /// running, e.g. right after a hand-off) a member waits up to `timeout` for
    /// one; a node outside the membership (removed) would wait in vain. A leader
    /// handing over waits for its successor.
    pub async fn leader_elsewhere(&self, timeout: Duration) -> Option<NodeId> {
        let now = self.link.raft.metrics().borrow_watched().current_leader;
        let leader = match now {
            Some(l) if l == self.me && self.handing_off.load(Ordering::Relaxed) => {
                self.leader_other_than(self.me, timeout)
                    .await?
                    .current_leader
            }
            Some(l) => Some(l),
            None => {
                let member = {
                    let m = self.link.raft.metrics();
                    let m = m.borrow_watched();
                    m.membership_config
                        .membership()
                        .get_node(&self.me)
                        .is_some()
                };
                if !member {
                    return None;
                }
                self.link
                    .raft
                    .wait(Some(timeout))
                    .metrics(|m| m.current_leader.is_some(), "a known leader")
                    .await
                    .ok()?
                    .current_leader
            }
        };
        leader.filter(|l| *l != self.me)
    }

    /// Where a write goes after `old` refused it as "not leader" (not proposed),
    /// naming `hint`: the next leader (this node, possibly), or `None` to give up.
    /// A leader that hands over or steps down names its successor or none, and
    /// the change shows here within milliseconds (a hand-off) or an election
    /// timeout. A leader that names no one may also still lead, having only gone
    /// a lease period without a quorum acknowledgement: after a short wait it
    /// gets the write once more.
    pub async fn next_leader(
        &self,
        old: NodeId,
        hint: Option<NodeId>,
        timeout: Duration,
    ) -> Option<NodeId> {
        let wait = match hint {
            Some(_) => timeout,
            None => timeout.min(LEASE_RETRY),
        };
        match self.leader_other_than(old, wait).await {
            Some(m) => m.current_leader,
            None => {
                let still = self.link.raft.metrics().borrow_watched().current_leader;
                (hint.is_none() && still == Some(old)).then_some(old)
            }
        }
    }

    /// Sends `cmd`, made on behalf of `principal`, to `leader` and waits up to
    /// `ttl` for its result.
    pub async fn write(
        &self,
        leader: NodeId,
        cmd: Command,
        principal: &crate::auth::Principal,
        ttl: Duration,
    ) -> Forwarded {
        let Some(addr) = crate::raft::member_raft_addr(&self.link.raft, leader) else {
            return Forwarded::NotSent(cmd, format!("leader {leader} is not in the membership"));
        };
        let pooled = {
            let mut pool = self.lock();
            if pool.target.as_ref() != Some(&(leader, addr.clone())) {
                *pool = Pool {
                    target: Some((leader, addr.clone())),
                    ..Pool::default()
                };
            }
            if pool.unsupported_until.is_some_and(|t| Instant::now() < t) {
                return Forwarded::NotSent(
                    cmd,
                    format!("leader {leader} takes no forwarded writes"),
                );
            }
            // A connection the leader closed while idle (e.g. it restarted) would turn
            // the write into an unknown outcome: skip those.
            let mut found = None;
            while let Some(mut c) = pool.idle.pop() {
                if c.is_open() {
                    found = Some(c);
                    break;
                }
            }
            found
        };
        let mut client = match pooled {
            Some(c) => c,
            None => {
                let mut c = self.link.client(leader, addr);
                let setup = async {
                    c.ensure_connected().await?;
                    c.supports_write(SETUP_TIMEOUT).await
                };
                match tokio::time::timeout(SETUP_TIMEOUT, setup).await {
                    Ok(Ok(true)) => c,
                    Ok(Ok(false)) => {
                        self.lock().unsupported_until = Some(Instant::now() + RECHECK_AFTER);
                        return Forwarded::NotSent(
                            cmd,
                            format!("leader {leader} takes no forwarded writes"),
                        );
                    }
                    Ok(Err(e)) => return Forwarded::NotSent(cmd, e.to_string()),
                    Err(_) => {
                        return Forwarded::NotSent(
                            cmd,
                            "connecting to the leader timed out".into(),
                        );
                    }
                }
            }
        };
        let result = client.client_write(cmd, principal, ttl).await;
        match result {
            Ok(answer) => {
                let mut pool = self.lock();
                if pool.target.as_ref().is_some_and(|(id, _)| *id == leader)
                    && pool.idle.len() < MAX_IDLE
                {
                    pool.idle.push(client);
                }
                match answer {
                    Ok(r) => Forwarded::Applied(r),
                    Err((WriteRejected::NotLeader(hint), cmd)) => Forwarded::NotLeader(cmd, hint),
                    Err((WriteRejected::Failed(e), _)) => Forwarded::Failed(e),
                    Err((WriteRejected::Invalid(e), _)) => Forwarded::Invalid(e),
                    Err((WriteRejected::Forbidden(e), _)) => Forwarded::Forbidden(e),
                }
            }
            Err(e) => Forwarded::Unknown(e.to_string()),
        }
    }
}
