//! Test doubles for the reconcile tests: an in-memory Kubernetes API server
//! (enough of the REST surface the controller uses: get, list by label,
//! server-side apply, status apply, delete, events) and a simulated kvserver
//! cluster whose members answer the real cluster API (`/v1/cluster`, init,
//! learners, membership, transfer-leader) on their own loopback addresses.
//!
//! The [`World`] also plays the StatefulSet controller and the kubelet: it
//! creates and deletes pods and PVCs to match the StatefulSet's replicas and
//! reports pod readiness the way kvserver's `/readyz` would. The simulated
//! Raft group records every change the operator makes and flags any change
//! that a real cluster would not survive (a removal that leaves fewer healthy
//! voters than a quorum, removing the leader, promoting a lagging learner, a
//! second bootstrap).

#![allow(dead_code)]
// Handlers return a ready HTTP error response as their Err: boxing it buys nothing in a test double.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::Query;
use axum::extract::State;
use axum::http::Method;
use axum::http::StatusCode;
use axum::http::Uri;
use axum::response::IntoResponse;
use axum::response::Response;
use kube::runtime::controller::Action;
use kvserver::model::ChangeResponse;
use kvserver::model::ClusterInfo;
use kvserver::model::InitRequest;
use kvserver::model::LearnerRequest;
use kvserver::model::MemberInfo;
use kvserver::model::MembershipRequest;
use kvserver::model::TransferRequest;
use operator::controller;
use operator::crd::KVCluster;
use operator::metrics::Metrics;
use serde_json::Value;
use serde_json::json;

pub const NS: &str = "shop";
pub const NAME: &str = "orders";
/// Ordinals the simulated members can take (the CRD allows up to 9 replicas).
pub const MAX_MEMBERS: u64 = 9;

/// Pod IP of ordinal `i`: each member has its own loopback address, so the
/// controller reaches it exactly as it reaches a pod IP.
pub fn member_ip(i: u64) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 10 + i as u8)
}

fn not_found(what: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": format!("{what} not found"), "reason": "NotFound", "code": 404}),
        ),
    )
        .into_response()
}

fn matches_selector(obj: &Value, selector: Option<&String>) -> bool {
    let Some(sel) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    sel.split(',').all(|kv| {
        let Some((k, v)) = kv.split_once('=') else {
            return false;
        };
        obj["metadata"]["labels"][k].as_str() == Some(v)
    })
}

/// The in-memory API server's state. Objects are keyed by
/// `(collection, name)` where the collection is the API path without the
/// namespace (`apis/apps/v1/statefulsets`), all in namespace [`NS`].
#[derive(Default)]
pub struct ApiState {
    pub objects: BTreeMap<(String, String), Value>,
    pub events: Vec<Value>,
    /// Collections that answer 404 as if the API did not exist (old Kubernetes).
    pub missing_apis: BTreeSet<String>,
    /// Every write, in order (`PATCH apis/apps/v1/statefulsets/orders`), for assertions.
    pub writes: Vec<String>,
    next_rv: u64,
}

impl ApiState {
    fn stamp(&mut self, obj: &mut Value, name: &str, fresh: bool) {
        self.next_rv += 1;
        let meta = &mut obj["metadata"];
        meta["resourceVersion"] = self.next_rv.to_string().into();
        meta["name"] = name.into();
        meta["namespace"] = NS.into();
        if fresh {
            meta["uid"] = format!("uid-{name}-{:08}", self.next_rv).into();
            meta["generation"] = 1.into();
            meta["creationTimestamp"] = "2026-11-22T00:00:00Z".into();
        }
    }

    pub fn get(&self, coll: &str, name: &str) -> Option<&Value> {
        self.objects.get(&(coll.to_string(), name.to_string()))
    }

    pub fn names(&self, coll: &str) -> Vec<String> {
        self.objects
            .keys()
            .filter(|(c, _)| c == coll)
            .map(|(_, n)| n.clone())
            .collect()
    }

    pub fn put(&mut self, coll: &str, name: &str, mut obj: Value) {
        let fresh = !self.objects.contains_key(&(coll.into(), name.into()));
        if !fresh {
            let old = &self.objects[&(coll.to_string(), name.to_string())];
            obj["metadata"]["uid"] = old["metadata"]["uid"].clone();
            obj["metadata"]["generation"] = old["metadata"]["generation"].clone();
            obj["metadata"]["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
        }
        self.stamp(&mut obj, name, fresh);
        self.objects.insert((coll.into(), name.into()), obj);
    }

    pub fn remove(&mut self, coll: &str, name: &str) -> Option<Value> {
        self.objects.remove(&(coll.to_string(), name.to_string()))
    }

    /// Server-side apply, simplified: the applied object's top-level fields
    /// replace the stored ones (one field manager owns everything here), labels,
    /// annotations and owner references are taken from the applied object, and
    /// the generation moves when the spec changes.
    fn apply(&mut self, coll: &str, name: &str, body: Value, status_only: bool) -> Value {
        let key = (coll.to_string(), name.to_string());
        let mut obj = match self.objects.get(&key) {
            Some(o) => o.clone(),
            None if status_only => return not_found_value(),
            None => {
                let mut o = json!({"metadata": {}});
                self.stamp(&mut o, name, true);
                o
            }
        };
        if status_only {
            obj["status"] = body["status"].clone();
        } else {
            let Value::Object(fields) = &body else {
                return obj;
            };
            for (k, v) in fields {
                if k == "metadata" {
                    for m in ["labels", "annotations", "ownerReferences"] {
                        if !v[m].is_null() {
                            obj["metadata"][m] = v[m].clone();
                        }
                    }
                } else if k != "status" {
                    if k == "spec" && obj.get("spec").is_some_and(|s| s != v) {
                        let g = obj["metadata"]["generation"].as_i64().unwrap_or(1);
                        obj["metadata"]["generation"] = (g + 1).into();
                    }
                    obj[k] = v.clone();
                }
            }
        }
        self.stamp(&mut obj, name, false);
        self.objects.insert(key, obj.clone());
        obj
    }
}

fn not_found_value() -> Value {
    Value::Null
}

/// Splits `/api/v1/namespaces/shop/pods/orders-0/status` into
/// (`api/v1/pods`, Some(`orders-0`), Some(`status`)).
fn route(path: &str) -> Option<(String, Option<String>, Option<String>)> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let ns_at = parts.iter().position(|p| *p == "namespaces")?;
    if parts.get(ns_at + 1) != Some(&NS) {
        return None;
    }
    let prefix = parts[..ns_at].join("/");
    let coll = format!("{prefix}/{}", parts.get(ns_at + 2)?);
    Some((
        coll,
        parts.get(ns_at + 3).map(|s| s.to_string()),
        parts.get(ns_at + 4).map(|s| s.to_string()),
    ))
}

async fn api_handler(
    State(state): State<Arc<Mutex<ApiState>>>,
    method: Method,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let Some((coll, name, sub)) = route(uri.path()) else {
        return not_found(uri.path());
    };
    let mut st = state.lock().expect("api state");
    if st.missing_apis.iter().any(|m| coll.starts_with(m.as_str())) {
        return not_found(&coll);
    }
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return (StatusCode::BAD_REQUEST, format!("bad body: {e}")).into_response();
            }
        }
    };
    if method != Method::GET {
        st.writes.push(format!(
            "{method} {coll}/{}{}",
            name.clone().unwrap_or_default(),
            sub.as_ref().map(|s| format!("/{s}")).unwrap_or_default()
        ));
    }
    let kind_list = |coll: &str| {
        let kind = match coll.rsplit('/').next() {
            Some("pods") => "PodList",
            Some("persistentvolumeclaims") => "PersistentVolumeClaimList",
            _ => "List",
        };
        kind.to_string()
    };
    match (method, name) {
        (Method::GET, None) => {
            let items: Vec<Value> = st
                .objects
                .iter()
                .filter(|((c, _), o)| *c == coll && matches_selector(o, q.get("labelSelector")))
                .map(|(_, o)| o.clone())
                .collect();
            Json(json!({"apiVersion": "v1", "kind": kind_list(&coll),
                        "metadata": {"resourceVersion": st.next_rv.to_string()}, "items": items}))
            .into_response()
        }
        (Method::GET, Some(n)) => match st.get(&coll, &n) {
            Some(o) => Json(o.clone()).into_response(),
            None => not_found(&n),
        },
        (Method::POST, None) if coll.ends_with("/events") => {
            let mut ev = body;
            let n = ev["metadata"]["name"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("ev-{}", st.events.len()));
            ev["metadata"]["name"] = n.into();
            st.events.push(ev.clone());
            (StatusCode::CREATED, Json(ev)).into_response()
        }
        (Method::PATCH, Some(n)) if coll.ends_with("/events") => {
            // A repeated event: the recorder patches its series count.
            let mut ev = body;
            ev["metadata"]["name"] = n.into();
            ev["repeat"] = true.into();
            st.events.push(ev.clone());
            Json(ev).into_response()
        }
        (Method::PATCH, Some(n)) => {
            let obj = st.apply(&coll, &n, body, sub.as_deref() == Some("status"));
            if obj.is_null() {
                not_found(&n)
            } else {
                Json(obj).into_response()
            }
        }
        (Method::DELETE, Some(n)) => match st.remove(&coll, &n) {
            Some(o) => Json(o).into_response(),
            None => not_found(&n),
        },
        (m, _) => (
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{m} not supported by the fake API server"),
        )
            .into_response(),
    }
}

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

    fn leader_up(&self) -> bool {
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
fn member_router(id: u64, sim: Arc<Mutex<Sim>>) -> Router {
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

/// The fake API server, the simulated members, and the world that ties them.
pub struct World {
    pub api: Arc<Mutex<ApiState>>,
    pub sim: Arc<Mutex<Sim>>,
    pub api_url: String,
    pub member_port: u16,
    /// Ordinals whose pods the "kubelet" keeps from coming back.
    pub held_down: BTreeSet<u64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for World {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

pub const STS: &str = "apis/apps/v1/statefulsets";
pub const PODS: &str = "api/v1/pods";
pub const PVCS: &str = "api/v1/persistentvolumeclaims";
pub const KVCS: &str = "apis/kvcluster.io/v1alpha1/kvclusters";

impl World {
    /// Starts the API server and one listener per possible member, all on loopback.
    pub async fn start(spec: Value) -> World {
        let api = Arc::new(Mutex::new(ApiState::default()));
        let sim = Arc::new(Mutex::new(Sim::default()));
        let mut tasks = Vec::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind api");
        let api_url = format!("http://{}", listener.local_addr().expect("addr"));
        let app = Router::new().fallback(api_handler).with_state(api.clone());
        tasks.push(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }));
        // One port for every member address: take a free one on the first
        // address and retry while any other address has it taken.
        let (member_port, listeners) = 'found: {
            for _ in 0..50 {
                let first = tokio::net::TcpListener::bind(SocketAddr::from((member_ip(0), 0)))
                    .await
                    .expect("bind member 0");
                let port = first.local_addr().expect("addr").port();
                let mut ls = vec![first];
                for i in 1..MAX_MEMBERS {
                    match tokio::net::TcpListener::bind(SocketAddr::from((member_ip(i), port)))
                        .await
                    {
                        Ok(l) => ls.push(l),
                        Err(_) => break,
                    }
                }
                if ls.len() == MAX_MEMBERS as usize {
                    break 'found (port, ls);
                }
            }
            panic!("no port free on all member addresses");
        };
        for (i, l) in listeners.into_iter().enumerate() {
            let app = member_router(i as u64, sim.clone());
            tasks.push(tokio::spawn(async move {
                let _ = axum::serve(l, app).await;
            }));
        }
        let mut kvc = json!({
            "apiVersion": "kvcluster.io/v1alpha1", "kind": "KVCluster",
            "metadata": {"name": NAME, "namespace": NS},
            "spec": spec,
        });
        if kvc["spec"]["replicas"].is_null() {
            kvc["spec"]["replicas"] = 1.into();
        }
        api.lock().expect("api").put(KVCS, NAME, kvc);
        World {
            api,
            sim,
            api_url,
            member_port,
            held_down: BTreeSet::new(),
            tasks,
        }
    }

    pub fn api(&self) -> MutexGuard<'_, ApiState> {
        self.api.lock().expect("api")
    }

    pub fn sim(&self) -> MutexGuard<'_, Sim> {
        self.sim.lock().expect("sim")
    }

    /// `kubectl scale kvc orders --replicas=n`.
    pub fn scale(&self, n: i64) {
        let mut api = self.api();
        let mut kvc = api.get(KVCS, NAME).cloned().expect("kvc");
        kvc["spec"]["replicas"] = n.into();
        let g = kvc["metadata"]["generation"].as_i64().unwrap_or(1);
        kvc["metadata"]["generation"] = (g + 1).into();
        api.put(KVCS, NAME, kvc);
    }

    pub fn kvc(&self) -> Value {
        self.api().get(KVCS, NAME).cloned().expect("kvc")
    }

    pub fn condition(&self, type_: &str) -> (String, String) {
        let kvc = self.kvc();
        let c = kvc["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == type_).cloned())
            .unwrap_or_default();
        (
            c["status"].as_str().unwrap_or("").into(),
            c["reason"].as_str().unwrap_or("").into(),
        )
    }

    pub fn sts_replicas(&self) -> Option<i64> {
        self.api()
            .get(STS, NAME)
            .and_then(|s| s["spec"]["replicas"].as_i64())
    }

    pub fn pvc_ordinals(&self) -> BTreeSet<u64> {
        self.api()
            .names(PVCS)
            .iter()
            .filter_map(|n| n.strip_prefix(&format!("data-{NAME}-"))?.parse().ok())
            .collect()
    }

    pub fn event_reasons(&self) -> Vec<String> {
        self.api()
            .events
            .iter()
            .filter(|e| e["repeat"].is_null())
            .filter_map(|e| e["reason"].as_str().map(str::to_string))
            .collect()
    }

    /// The StatefulSet controller and the kubelet: pods and PVCs follow the
    /// StatefulSet's replicas, members start (empty on a new volume), learners
    /// catch up, a leader is elected if needed, and pod readiness is what
    /// kvserver's `/readyz` would say.
    pub fn tick(&mut self) {
        let replicas = self.sts_replicas().unwrap_or(0).max(0) as u64;
        let labels = self
            .api()
            .get(STS, NAME)
            .map(|s| s["spec"]["selector"]["matchLabels"].clone())
            .unwrap_or(Value::Null);
        let mut api = self.api.lock().expect("api");
        let mut sim = self.sim.lock().expect("sim");
        for i in 0..MAX_MEMBERS {
            let pod_name = format!("{NAME}-{i}");
            let pvc_name = format!("data-{NAME}-{i}");
            let wanted = i < replicas && !self.held_down.contains(&i);
            if !wanted {
                if api.remove(PODS, &pod_name).is_some()
                    && let Some(m) = sim.members.get_mut(&i)
                {
                    m.up = false;
                }
                continue;
            }
            if api.get(PVCS, &pvc_name).is_none() {
                api.put(
                    PVCS,
                    &pvc_name,
                    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                           "metadata": {"labels": labels}}),
                );
                sim.members.insert(
                    i,
                    Member {
                        up: false,
                        empty: true,
                    },
                );
            }
            let m = sim.members.entry(i).or_default();
            m.up = true;
        }
        for lag in sim.lag.values_mut() {
            *lag = lag.saturating_sub(250);
        }
        sim.elect();
        for i in 0..MAX_MEMBERS {
            let pod_name = format!("{NAME}-{i}");
            let Some(m) = sim.members.get(&i).cloned() else {
                continue;
            };
            if !m.up {
                continue;
            }
            let member = sim.voters.contains(&i) || sim.learners.contains(&i);
            let ready = m.up && !m.empty && member && sim.leader_up();
            api.put(
                PODS,
                &pod_name,
                json!({"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"labels": labels},
                       "status": {"podIP": member_ip(i).to_string(),
                                  "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}}),
            );
        }
    }

    /// A fresh operator (new client, recorder and metrics: nothing carried
    /// over from an earlier pass, as after a restart) reconciles once.
    pub async fn reconcile(&self) -> Result<Action, controller::ReconcileError> {
        let config = kube::Config::new(self.api_url.parse().expect("api url"));
        let client = kube::Client::try_from(config).expect("kube client");
        let ctx = Arc::new(controller::Context::new(
            client.clone(),
            "test".into(),
            Arc::new(Metrics::new().expect("metrics")),
            self.member_port,
        ));
        let api: kube::Api<KVCluster> = kube::Api::namespaced(client, NS);
        let kvc = api.get(NAME).await.expect("get kvc");
        tokio::time::timeout(
            Duration::from_secs(30),
            controller::reconcile(Arc::new(kvc), ctx),
        )
        .await
        .expect("reconcile finished in time")
    }

    /// Ticks and reconciles until `done` holds (or fails after `max` passes),
    /// checking after every pass that no unsafe change was made.
    pub async fn run_until(&mut self, max: usize, what: &str, done: impl Fn(&World) -> bool) {
        for _ in 0..max {
            self.tick();
            if let Err(e) = self.reconcile().await {
                panic!("reconcile failed while waiting for {what}: {e}");
            }
            self.tick();
            let v = self.sim().violations.clone();
            assert!(v.is_empty(), "unsafe changes: {v:?}");
            if done(self) {
                return;
            }
        }
        panic!(
            "{what} not reached after {max} passes; sim {:?}; status {}",
            self.sim(),
            self.kvc()["status"]
        );
    }

    /// Voters, no learners, StatefulSet and status all at `n`, phase Running.
    pub fn converged(&self, n: u64) -> bool {
        let sim = self.sim();
        let kvc = self.kvc();
        sim.voters == (0..n).collect::<BTreeSet<_>>()
            && sim.learners.is_empty()
            && self.sts_replicas() == Some(n as i64)
            && kvc["status"]["phase"] == "Running"
            && kvc["status"]["readyReplicas"] == n
            && kvc["status"]["members"].as_array().map(|m| m.len()) == Some(n as usize)
    }
}
