//! Test doubles for the reconcile tests (`api_server`: the fake Kubernetes API;
//! `raft_sim`: the simulated Raft group; this file: the [`World`] that ties
//! them to the controller): an in-memory Kubernetes API server
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

mod api_server;
mod raft_sim;

pub use self::api_server::*;
pub use self::raft_sim::*;

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
        // The simulated members speak plain HTTP (the reconcile logic is what is
        // tested here; TLS between real processes is kvserver's and e2e's). The
        // operator still plans and applies every certificate Secret.
        if kvc["spec"]["tls"].is_null() {
            kvc["spec"]["tls"] = json!({"client": {"mode": "disabled"}});
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
