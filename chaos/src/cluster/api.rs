//! What the harness asks of a running cluster, through kvserver's typed client
//! (`kvserver::client`): one node's view, who leads, forming a cluster and
//! joining members, waiting until a member has applied an index, and which
//! acknowledged keys a member lacks.

use std::collections::HashSet;
use std::time::Duration;
use std::time::Instant;

use kvserver::client::Client;
use kvserver::model::ChangeResponse;
use kvserver::model::ClusterInfo;
use kvserver::model::Consistency;
use kvserver::model::InitRequest;
use kvserver::model::LearnerRequest;
use kvserver::model::ListQuery;
use kvserver::model::MembershipRequest;

use super::ClientAccess;
use super::Cluster;
use crate::ChaosError;
use crate::wait::wait;

/// How long one cluster-changing call may take (a learner catching up, a joint change).
const CALL_TIMEOUT: Duration = Duration::from_secs(35);

/// A cluster-changing call, repeated by [`cluster_call`] until it succeeds.
#[derive(Debug, Clone)]
pub enum ClusterCall {
    AddLearner(LearnerRequest),
    ChangeMembership(MembershipRequest),
}

/// A client of one node: one attempt per call (the harness decides what to repeat).
fn one_node(url: &str, timeout: Duration, access: &ClientAccess) -> Result<Client, ChaosError> {
    access
        .builder([url])
        .timeout(timeout)
        .attempts(1)
        .build()
        .map_err(|e| ChaosError::Cluster(format!("client of {url}: {e}")))
}

/// Repeats `call` through `urls` in turn (any node forwards it to the leader)
/// until one node accepts it, or fails after `timeout` with the last answer.
/// Takes no `&Cluster`, so it can run in a task while the cluster is faulted.
pub async fn cluster_call(
    urls: Vec<String>,
    access: ClientAccess,
    call: &ClusterCall,
    timeout: Duration,
) -> Result<ChangeResponse, ChaosError> {
    let clients = urls
        .iter()
        .map(|u| one_node(u, CALL_TIMEOUT, &access))
        .collect::<Result<Vec<_>, _>>()?;
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no node tried");
    let mut i = 0usize;
    loop {
        if let Some(client) = clients.get(i % clients.len().max(1)) {
            let answer = match call {
                ClusterCall::AddLearner(r) => client.add_learner(r).await,
                ClusterCall::ChangeMembership(r) => client.change_membership(r).await,
            };
            match answer {
                Ok(r) => return Ok(r),
                Err(e) => last = e.to_string(),
            }
        }
        i += 1;
        if Instant::now() >= deadline {
            return Err(ChaosError::Cluster(format!("{call:?}: last answer {last}")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Cluster {
    /// A client of node `id` alone that gives up after `timeout`.
    pub fn client(&self, id: u64, timeout: Duration) -> Result<Client, ChaosError> {
        one_node(&self.url(id, "")?, timeout, &self.access())
    }

    /// `GET /v1/cluster` on node `id`, answered within `timeout`.
    pub async fn info_within(&self, id: u64, timeout: Duration) -> Result<ClusterInfo, ChaosError> {
        self.client(id, timeout)?
            .cluster()
            .await
            .map_err(|e| ChaosError::Cluster(format!("GET /v1/cluster on node {id}: {e}")))
    }

    /// `GET /v1/cluster` on node `id`.
    pub async fn info(&self, id: u64) -> Result<ClusterInfo, ChaosError> {
        self.info_within(id, Duration::from_secs(5)).await
    }

    /// The leader as named by a live node that is itself the leader (highest term
    /// wins): during a partition an old leader may still think it leads.
    pub async fn leader(&self) -> Option<u64> {
        let mut best: Option<(u64, u64)> = None;
        for id in self.live() {
            if let Ok(info) = self.info_within(id, Duration::from_secs(1)).await
                && info.role == "leader"
                && best.is_none_or(|(t, _)| info.term > t)
            {
                best = Some((info.term, id));
            }
        }
        best.map(|(_, id)| id)
    }

    /// Waits until some live node leads ([`Self::leader`]).
    pub async fn wait_any_leader(&self, timeout: Duration) -> Result<u64, ChaosError> {
        wait(timeout, "a leader", || self.leader()).await
    }

    /// Waits until every running node names the same leader, which says it leads.
    pub async fn wait_leader(&self, timeout: Duration) -> Result<u64, ChaosError> {
        self.wait_leader_among(&self.running(), timeout).await
    }

    /// Waits until the nodes `ids` name the same leader, which says it leads.
    pub async fn wait_leader_among(
        &self,
        ids: &[u64],
        timeout: Duration,
    ) -> Result<u64, ChaosError> {
        wait(timeout, "an agreed leader", || async move {
            let mut leader = None;
            for id in ids {
                let l = self.info(*id).await.ok()?.leader_id?;
                if leader.is_some_and(|x| x != l) {
                    return None;
                }
                leader = Some(l);
            }
            let l = leader?;
            (self.info(l).await.ok()?.role == "leader").then_some(l)
        })
        .await
    }

    /// The leader's voters and learners.
    pub async fn members(&self) -> Result<(Vec<u64>, Vec<u64>), ChaosError> {
        let leader = self.wait_any_leader(Duration::from_secs(10)).await?;
        let info = self.info(leader).await?;
        let (voters, learners) = info
            .members
            .iter()
            .partition::<Vec<_>, _>(|m| m.role == "voter");
        Ok((
            voters.iter().map(|m| m.id).collect(),
            learners.iter().map(|m| m.id).collect(),
        ))
    }

    /// Waits until node `id` answers `/healthz`.
    pub async fn wait_up(&self, id: u64, timeout: Duration) -> Result<(), ChaosError> {
        let url = self.url(id, "/healthz")?;
        wait(timeout, &format!("node {id} /healthz"), || async {
            let r = self.http.get(&url).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await
    }

    /// Node `id`'s committed index, as it reports it.
    pub async fn committed_index(&self, id: u64) -> Result<u64, ChaosError> {
        self.info(id)
            .await?
            .committed_index
            .ok_or_else(|| ChaosError::Cluster(format!("node {id} reports no committed index")))
    }

    /// Waits until node `id` has applied at least `index`.
    pub async fn wait_applied(
        &self,
        id: u64,
        index: u64,
        timeout: Duration,
    ) -> Result<(), ChaosError> {
        wait(
            timeout,
            &format!("node {id} applied >= {index}"),
            || async move { (self.info(id).await.ok()?.applied_index? >= index).then_some(()) },
        )
        .await
    }

    /// Waits until `leader` has purged its log past `index` (behind a snapshot).
    pub async fn wait_purged_past(&self, leader: u64, index: u64) -> Result<(), ChaosError> {
        wait(
            Duration::from_secs(10),
            "leader purged the log behind a snapshot",
            || async move { (self.info(leader).await.ok()?.purged_index? > index + 1).then_some(()) },
        )
        .await
    }

    /// [`cluster_call`] through the live nodes.
    pub async fn cluster_call(
        &self,
        call: &ClusterCall,
        timeout: Duration,
    ) -> Result<ChangeResponse, ChaosError> {
        cluster_call(self.live_urls(), self.access(), call, timeout).await
    }

    /// The request that adds node `id` as a learner at its advertised addresses,
    /// answered once it has caught up.
    pub fn learner_request(&self, id: u64) -> Result<LearnerRequest, ChaosError> {
        let n = self.node(id)?;
        Ok(LearnerRequest {
            id,
            api_addr: n.advertised_api.to_string(),
            raft_addr: n.advertised_raft.to_string(),
            wait: true,
        })
    }

    /// Adds `id` as a learner (waiting for it to catch up) and promotes it to voter,
    /// through any other live node.
    pub async fn join(&self, id: u64, timeout: Duration) -> Result<(), ChaosError> {
        let learner = ClusterCall::AddLearner(self.learner_request(id)?);
        let promote = ClusterCall::ChangeMembership(MembershipRequest {
            add_voters: vec![id],
            ..Default::default()
        });
        let others: Vec<String> = self
            .live()
            .into_iter()
            .filter(|x| *x != id)
            .filter_map(|x| self.url(x, "").ok())
            .collect();
        cluster_call(others.clone(), self.access(), &learner, timeout).await?;
        cluster_call(others, self.access(), &promote, timeout).await?;
        Ok(())
    }

    /// Starts `voters` (adding the nodes that do not exist yet), initializes the
    /// cluster on the first and joins the others one by one. Returns the leader
    /// they agree on.
    pub async fn form(&mut self, voters: &[u64]) -> Result<u64, ChaosError> {
        for id in voters {
            if !self.nodes.contains_key(id) {
                self.add_node(*id)?;
            }
            self.start(*id)?;
        }
        for id in voters {
            self.wait_up(*id, Duration::from_secs(20)).await?;
        }
        let first = *voters
            .first()
            .ok_or_else(|| ChaosError::Cluster("no voters".into()))?;
        let init = self
            .client(first, Duration::from_secs(10))?
            .init_at(&self.url(first, "")?, &InitRequest::default())
            .await
            .map_err(|e| ChaosError::Cluster(format!("init on node {first}: {e}")))?;
        if !init.changed {
            return Err(ChaosError::Cluster(format!(
                "init on node {first}: it was initialized already"
            )));
        }
        self.wait_leader_among(&[first], Duration::from_secs(10))
            .await?;
        for id in &voters[1..] {
            self.join(*id, Duration::from_secs(20)).await?;
        }
        self.wait_leader_among(voters, Duration::from_secs(10))
            .await
    }

    /// Waits until node `id` holds a whole replica of every partition it hosts (none
    /// empty) and no partition is moving a replica (no learner, voters = hosts).
    pub async fn wait_replicas_whole(&self, id: u64, timeout: Duration) -> Result<(), ChaosError> {
        let url = self.url(id, "")?;
        let client = self.client(id, Duration::from_secs(2))?;
        wait(
            timeout,
            &format!("node {id}'s partition replicas whole"),
            || {
                let (client, url) = (client.clone(), url.clone());
                async move {
                    let status = client.status_at(&url).await.ok()?;
                    let share = status.partitions?;
                    let parts = client.partitions().await.ok()?;
                    let settled = parts.items.iter().all(|i| {
                        let mut voters = i.voters.clone();
                        let mut hosts = i.nodes.clone();
                        voters.sort_unstable();
                        hosts.sort_unstable();
                        i.learners.is_empty() && voters == hosts && i.leader_id.is_some()
                    });
                    (share.empty.is_empty() && !share.hosted.is_empty() && settled).then_some(())
                }
            },
        )
        .await
    }

    /// Every key under `prefix` on node `id`, read locally (stale) page by page.
    pub async fn keys(&self, id: u64, prefix: &str) -> Result<HashSet<String>, ChaosError> {
        let client = self.client(id, Duration::from_secs(10))?;
        let mut keys = HashSet::new();
        let mut after: Option<String> = None;
        loop {
            let page = client
                .list(&ListQuery {
                    prefix: prefix.to_string(),
                    start_after: after.take(),
                    limit: Some(10_000),
                    keys_only: true,
                    consistency: Consistency::Stale,
                    partition: None,
                })
                .await
                .map_err(|e| ChaosError::Cluster(format!("listing {prefix} on node {id}: {e}")))?;
            keys.extend(page.kvs.into_iter().map(|kv| kv.key));
            match page.next_start_after {
                Some(next) if page.more => after = Some(next),
                _ => return Ok(keys),
            }
        }
    }

    /// The keys of `acked` (all under `prefix`) that node `id` lacks.
    pub async fn missing(
        &self,
        id: u64,
        prefix: &str,
        acked: &[String],
    ) -> Result<Vec<String>, ChaosError> {
        let present = self.keys(id, prefix).await?;
        Ok(acked
            .iter()
            .filter(|k| !present.contains(k.as_str()))
            .cloned()
            .collect())
    }
}
