//! A simulated kvserver cluster: members answer the real cluster API on their
//! own loopback addresses, and the group flags every change a real cluster
//! would not survive.

use super::*;

/// One simulated kvserver member.
#[derive(Debug, Clone, Default)]
pub struct Member {
    /// The process runs and answers HTTP.
    pub up: bool,
    /// Its store holds no Raft state (a new or wiped volume).
    pub empty: bool,
}

/// The simulated Raft group and its members.
#[derive(Debug, Default)]
pub struct Sim {
    pub members: BTreeMap<u64, Member>,
    pub initialized: bool,
    pub voters: BTreeSet<u64>,
    pub learners: BTreeSet<u64>,
    pub leader: Option<u64>,
    pub term: u64,
    /// Entries a learner is behind; shrinks as the world ticks.
    pub lag: BTreeMap<u64, u64>,
    pub inits: u32,
    /// Cluster changes in the order the operator made them.
    pub changes: Vec<String>,
    /// Changes a real cluster would not have survived.
    pub violations: Vec<String>,
}

impl Sim {
    fn healthy_voters(&self, voters: &BTreeSet<u64>) -> usize {
        voters
            .iter()
            .filter(|v| self.members.get(v).is_some_and(|m| m.up && !m.empty))
            .count()
    }

    pub(super) fn leader_up(&self) -> bool {
        self.leader
            .and_then(|l| self.members.get(&l))
            .is_some_and(|m| m.up)
    }

    /// A leader elected among the healthy voters, when the old one is gone.
    pub fn elect(&mut self) {
        if !self.initialized || self.leader_up() {
            return;
        }
        let healthy = self.healthy_voters(&self.voters);
        self.leader = None;
        if healthy * 2 > self.voters.len() {
            self.leader = self
                .voters
                .iter()
                .copied()
                .find(|v| self.members.get(v).is_some_and(|m| m.up && !m.empty));
            self.term += 1;
        }
    }

    fn info(&self, id: u64) -> ClusterInfo {
        let member = self.members.get(&id).cloned().unwrap_or_default();
        let part_of = self.initialized && !member.empty;
        let is_leader = part_of && self.leader == Some(id);
        let members = if part_of {
            self.voters
                .iter()
                .map(|v| (*v, "voter"))
                .chain(self.learners.iter().map(|l| (*l, "learner")))
                .map(|(m, role)| {
                    let up = self.members.get(&m).is_some_and(|x| x.up && !x.empty);
                    let lag = if !up {
                        10_000
                    } else {
                        self.lag.get(&m).copied().unwrap_or(0)
                    };
                    MemberInfo {
                        id: m,
                        role: role.into(),
                        api_addr: format!("{NAME}-{m}:8080"),
                        raft_addr: format!("{NAME}-{m}:8081"),
                        matched_index: is_leader.then_some(100 - lag.min(100)),
                        lag: is_leader.then_some(lag),
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        let role = if !part_of {
            "uninitialized"
        } else if is_leader {
            "leader"
        } else if self.voters.contains(&id) {
            "follower"
        } else {
            "learner"
        };
        ClusterInfo {
            cluster_id: "orders-sim".into(),
            node_id: id,
            initialized: part_of,
            role: role.into(),
            term: self.term,
            leader_id: if part_of { self.leader } else { None },
            leader: None,
            last_log_index: Some(100),
            committed_index: Some(100),
            applied_index: Some(100),
            snapshot_index: None,
            purged_index: None,
            revision: 1,
            joint: false,
            membership_log_index: Some(1),
            members,
            // What a real empty store answers once the leader has dialed it as a voter.
            lost_data: !part_of && self.voters.contains(&id),
        }
    }
}

fn kv_error(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// The cluster API of member `id`, over the shared simulation.
pub(super) fn member_router(id: u64, sim: Arc<Mutex<Sim>>) -> Router {
    let guard = move |sim: &Arc<Mutex<Sim>>| -> Result<(), Response> {
        let s = sim.lock().expect("sim");
        if s.members.get(&id).is_some_and(|m| m.up) {
            Ok(())
        } else {
            Err(kv_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "member is down".into(),
            ))
        }
    };
    // Calls that need the leader: a real follower forwards them; here any
    // member serves them while the leader is up.
    fn with_leader(
        s: &mut MutexGuard<'_, Sim>,
        id: u64,
        f: impl FnOnce(&mut Sim) -> Result<ChangeResponse, Response>,
    ) -> Response {
        if s.members.get(&id).is_none_or(|m| m.empty) || !s.leader_up() {
            return kv_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_leader",
                "no leader".into(),
            );
        }
        match f(s) {
            Ok(r) => Json(r).into_response(),
            Err(e) => e,
        }
    }
    Router::new()
        .route(
            "/v1/cluster",
            axum::routing::get({
                let sim = sim.clone();
                move || async move {
                    if let Err(e) = guard(&sim) {
                        return e;
                    }
                    Json(sim.lock().expect("sim").info(id)).into_response()
                }
            }),
        )
        .route(
            "/v1/cluster/init",
            axum::routing::post({
                let sim = sim.clone();
                move |Json(req): Json<InitRequest>| async move {
                    if let Err(e) = guard(&sim) {
                        return e;
                    }
                    let mut s = sim.lock().expect("sim");
                    let wanted: BTreeSet<u64> = req
                        .members
                        .map(|m| m.keys().copied().collect())
                        .unwrap_or_else(|| BTreeSet::from([id]));
                    if s.initialized && !s.members[&id].empty {
                        if s.voters == wanted {
                            return Json(ChangeResponse {
                                changed: false,
                                cluster: None,
                                leader_id: None,
                            })
                            .into_response();
                        }
                        return kv_error(StatusCode::CONFLICT, "already_initialized", "".into());
                    }
                    if s.initialized {
                        s.violations
                            .push(format!("bootstrapped a second cluster on member {id}"));
                    }
                    s.initialized = true;
                    s.voters = wanted;
                    s.learners.clear();
                    s.leader = Some(id);
                    s.term = 1;
                    s.inits += 1;
                    if let Some(m) = s.members.get_mut(&id) {
                        m.empty = false;
                    }
                    s.changes.push(format!("init {id}"));
                    Json(ChangeResponse {
                        changed: true,
                        cluster: Some(s.info(id)),
                        leader_id: None,
                    })
                    .into_response()
                }
            }),
        )
        .route(
            "/v1/cluster/learners",
            axum::routing::post({
                let sim = sim.clone();
                move |Json(req): Json<LearnerRequest>| async move {
                    if let Err(e) = guard(&sim) {
                        return e;
                    }
                    let mut s = sim.lock().expect("sim");
                    with_leader(&mut s, id, |s| {
                        if s.voters.contains(&req.id) || s.learners.contains(&req.id) {
                            return Ok(ChangeResponse {
                                changed: false,
                                cluster: None,
                                leader_id: None,
                            });
                        }
                        s.learners.insert(req.id);
                        s.lag.insert(req.id, 500);
                        if let Some(m) = s.members.get_mut(&req.id) {
                            // Replication starts: the learner's store now holds the cluster.
                            m.empty = false;
                        }
                        s.changes.push(format!("learner {}", req.id));
                        Ok(ChangeResponse {
                            changed: true,
                            cluster: None,
                            leader_id: None,
                        })
                    })
                }
            }),
        )
        .route(
            "/v1/cluster/membership",
            axum::routing::post({
                let sim = sim.clone();
                move |Json(req): Json<MembershipRequest>| async move {
                    if let Err(e) = guard(&sim) {
                        return e;
                    }
                    let mut s = sim.lock().expect("sim");
                    with_leader(&mut s, id, |s| {
                        let mut changed = false;
                        for v in &req.add_voters {
                            if s.voters.contains(v) {
                                continue;
                            }
                            if !s.learners.contains(v) {
                                return Err(kv_error(
                                    StatusCode::CONFLICT,
                                    "not_a_learner",
                                    format!("{v} is not a learner"),
                                ));
                            }
                            if s.lag.get(v).copied().unwrap_or(0) > 100 {
                                s.violations.push(format!("promoted lagging learner {v}"));
                            }
                            s.learners.remove(v);
                            s.voters.insert(*v);
                            s.changes.push(format!("promote {v}"));
                            changed = true;
                        }
                        for v in req.remove_nodes.iter().chain(req.remove_voters.iter()) {
                            if !s.voters.contains(v) && !s.learners.contains(v) {
                                continue;
                            }
                            if s.leader == Some(*v) {
                                s.violations.push(format!("removed the leader {v}"));
                            }
                            let mut after = s.voters.clone();
                            after.remove(v);
                            if !after.is_empty() && s.healthy_voters(&after) < after.len() / 2 + 1 {
                                s.violations.push(format!(
                                    "removing {v} left {} healthy of {} voters",
                                    s.healthy_voters(&after),
                                    after.len()
                                ));
                            }
                            s.voters = after;
                            s.learners.remove(v);
                            s.lag.remove(v);
                            s.changes.push(format!("remove {v}"));
                            changed = true;
                        }
                        Ok(ChangeResponse {
                            changed,
                            cluster: None,
                            leader_id: None,
                        })
                    })
                }
            }),
        )
        .route(
            "/v1/cluster/transfer-leader",
            axum::routing::post({
                let sim = sim.clone();
                move |Json(req): Json<TransferRequest>| async move {
                    if let Err(e) = guard(&sim) {
                        return e;
                    }
                    let mut s = sim.lock().expect("sim");
                    with_leader(&mut s, id, |s| {
                        let target_ok = s.voters.contains(&req.to)
                            && s.members.get(&req.to).is_some_and(|m| m.up && !m.empty);
                        if !target_ok {
                            return Err(kv_error(
                                StatusCode::CONFLICT,
                                "not_a_voter",
                                format!("{} cannot lead", req.to),
                            ));
                        }
                        let changed = s.leader != Some(req.to);
                        if changed {
                            s.leader = Some(req.to);
                            s.term += 1;
                            s.changes.push(format!("lead {}", req.to));
                        }
                        Ok(ChangeResponse {
                            changed,
                            cluster: None,
                            leader_id: Some(req.to),
                        })
                    })
                }
            }),
        )
}
