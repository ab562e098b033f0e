//! The reconcile pipeline against an in-memory API server and a simulated
//! kvserver cluster (see `common`): every pass is made by a freshly started
//! operator, so each scenario also proves that an operator restarted between
//! any two steps resumes from the cluster's state.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use kube::runtime::controller::Action;
use serde_json::json;

fn set(ids: impl IntoIterator<Item = u64>) -> BTreeSet<u64> {
    ids.into_iter().collect()
}

#[tokio::test]
async fn bootstrap_then_scale_1_3_5_3_1_with_volumes_deleted() {
    let mut w = World::start(json!({"replicas": 1, "storage": {"reclaimPolicy": "Delete"}})).await;
    w.run_until(20, "a 1-node cluster", |w| w.converged(1))
        .await;
    assert_eq!(w.sim().inits, 1);
    // The owned objects exist, with owner references to the KVCluster.
    {
        let api = w.api();
        for coll in [
            "api/v1/configmaps",
            "api/v1/services",
            STS,
            "apis/policy/v1/poddisruptionbudgets",
            "api/v1/serviceaccounts",
            "apis/networking.k8s.io/v1/networkpolicies",
        ] {
            let names = api.names(coll);
            assert!(!names.is_empty(), "{coll} not applied");
            for n in names {
                let o = api.get(coll, &n).expect("object");
                assert_eq!(
                    o["metadata"]["ownerReferences"][0]["kind"], "KVCluster",
                    "{coll}/{n} has no owner reference"
                );
            }
        }
        assert_eq!(
            api.names("api/v1/services").len(),
            2,
            "peer and client Services"
        );
        // Certificates: the operator's CA and the members' Secret (client TLS is off
        // in this world, so no client-port Secret and no CA ConfigMap); the
        // operator's admin token (auth is on by default).
        assert_eq!(
            api.names("api/v1/secrets"),
            ["orders-auth-operator", "orders-peer-tls", "orders-tls-ca"]
        );
    }
    let secret_data = |w: &World, name: &str| {
        w.api()
            .get("api/v1/secrets", name)
            .map(|s| s["data"].clone())
            .unwrap_or_default()
    };
    let peer_before = secret_data(&w, "orders-peer-tls");
    let ca_before = secret_data(&w, "orders-tls-ca");
    assert!(
        peer_before["orders-0.crt"].is_string() && peer_before["orders-8.key"].is_string(),
        "member certificates for every ordinal"
    );

    for n in [3u64, 5, 3, 1] {
        // Every pass is a fresh operator: certificates are reused, never re-issued.
        assert_eq!(secret_data(&w, "orders-peer-tls"), peer_before);
        assert_eq!(secret_data(&w, "orders-tls-ca"), ca_before);
        w.scale(n as i64);
        w.run_until(60, &format!("{n} voters"), |w| w.converged(n))
            .await;
        assert_eq!(
            w.pvc_ordinals(),
            (0..n).collect(),
            "PVCs at {n} (policy Delete)"
        );
        // Under Delete the KVCluster owns its volumes: deleting it deletes them.
        let names = w.api().names(PVCS);
        for pvc in names {
            let o = w.api().get(PVCS, &pvc).cloned().expect("pvc");
            assert_eq!(
                o["metadata"]["ownerReferences"][0]["kind"], "KVCluster",
                "{pvc}"
            );
        }
        let kvc = w.kvc();
        assert_eq!(kvc["status"]["replicas"], n);
        assert_eq!(kvc["status"]["leader"], json!(w.sim().leader));
        assert_eq!(w.condition("Available").0, "True");
        assert_eq!(w.condition("Progressing").0, "False");
        assert_eq!(w.condition("ScalingBlocked").0, "False");
        assert!(
            kvc["status"]["operation"].is_null(),
            "operation left in status: {kvc}"
        );
        // The PDB tolerates exactly the failures the voter count does.
        let pdb = w
            .api()
            .get("apis/policy/v1/poddisruptionbudgets", NAME)
            .cloned()
            .expect("pdb");
        assert_eq!(pdb["spec"]["maxUnavailable"], json!((n - 1) / 2));
    }
    assert_eq!(w.sim().inits, 1, "bootstrapped exactly once");
    let changes = w.sim().changes.clone();
    // Scale-out is learner first, then voter; scale-in removes the highest ordinal first.
    for id in 1..5u64 {
        let l = changes.iter().position(|c| *c == format!("learner {id}"));
        let p = changes.iter().position(|c| *c == format!("promote {id}"));
        assert!(l.is_some() && l < p, "{id}: {changes:?}");
    }
    let removals: Vec<&String> = changes.iter().filter(|c| c.starts_with("remove")).collect();
    assert_eq!(
        removals,
        ["remove 4", "remove 3", "remove 2", "remove 1"],
        "{changes:?}"
    );
    let reasons = w.event_reasons();
    for r in [
        "Bootstrapped",
        "StatefulSetScaled",
        "LearnerAdded",
        "MemberPromoted",
        "MemberRemoved",
        "VolumeReclaimed",
    ] {
        assert!(
            reasons.iter().any(|x| x == r),
            "no {r} event in {reasons:?}"
        );
    }
}

#[tokio::test]
async fn leadership_moves_off_a_leaving_member_and_volumes_are_retained() {
    let mut w = World::start(json!({"replicas": 3, "storage": {"reclaimPolicy": "Retain"}})).await;
    w.run_until(60, "3 voters", |w| w.converged(3)).await;
    // Make the highest ordinal the leader, as if an election had picked it.
    {
        let mut s = w.sim();
        s.leader = Some(2);
        s.term += 1;
    }
    w.scale(2);
    w.run_until(60, "2 voters", |w| w.converged(2)).await;
    let changes = w.sim().changes.clone();
    let lead = changes.iter().position(|c| c.starts_with("lead "));
    let remove = changes.iter().position(|c| c == "remove 2");
    assert!(lead.is_some() && lead < remove, "{changes:?}");
    assert_ne!(w.sim().leader, Some(2));
    assert!(
        w.event_reasons()
            .iter()
            .any(|r| r == "LeadershipTransferred")
    );
    // Policy Retain: the volume of the removed member stays, and no volume is
    // owned by the KVCluster (they outlive it).
    let names = w.api().names(PVCS);
    for pvc in names {
        let o = w.api().get(PVCS, &pvc).cloned().expect("pvc");
        assert!(o["metadata"]["ownerReferences"].is_null(), "{o}");
    }
    assert_eq!(w.pvc_ordinals(), set([0, 1, 2]));
    // Scaling out again: the member on the retained volume rejoins as a learner.
    w.scale(3);
    w.run_until(60, "3 voters again", |w| w.converged(3)).await;
    let changes = w.sim().changes.clone();
    assert_eq!(changes[changes.len() - 2..], ["learner 2", "promote 2"]);
    assert_eq!(w.sim().inits, 1);
}

#[tokio::test]
async fn unsafe_scale_in_is_refused_without_a_retry_storm() {
    let mut w = World::start(json!({"replicas": 3})).await;
    w.run_until(60, "3 voters", |w| w.converged(3)).await;
    let leader = w.sim().leader.expect("leader");
    // Two of three members down (their pods gone and kept away).
    let down: Vec<u64> = (0..3).filter(|i| *i != leader).collect();
    w.held_down.extend(down.iter().copied());
    w.tick();
    w.scale(1);
    let before = w.sim().changes.len();
    w.run_until(10, "ScalingBlocked", |w| {
        w.condition("ScalingBlocked").0 == "True"
    })
    .await;
    // Repeated passes change nothing and ask to come back slowly.
    for _ in 0..5 {
        w.tick();
        let action = w.reconcile().await.expect("reconcile");
        assert_eq!(action, Action::requeue(Duration::from_secs(10)));
    }
    assert_eq!(w.sim().changes.len(), before, "{:?}", w.sim().changes);
    assert_eq!(w.sim().voters, set([0, 1, 2]));
    assert_eq!(w.kvc()["status"]["phase"], "Blocked");
    assert_eq!(w.condition("ScalingBlocked").1, "WouldLoseQuorumOrData");
    assert_eq!(w.condition("Available").0, "False");
    let warnings: Vec<_> = w
        .api()
        .events
        .iter()
        .filter(|e| e["reason"] == "ScalingBlocked" && e["type"] == "Warning")
        .cloned()
        .collect();
    assert!(!warnings.is_empty(), "no Warning event for the refusal");
    // The members come back: the scale-in proceeds safely.
    w.held_down.clear();
    w.run_until(60, "1 voter", |w| w.converged(1)).await;
    assert_eq!(w.condition("ScalingBlocked").0, "False");
}

#[tokio::test]
async fn a_missing_pod_is_not_a_scale_in() {
    let mut w = World::start(json!({"replicas": 3})).await;
    w.run_until(60, "3 voters", |w| w.converged(3)).await;
    w.held_down.insert(2);
    for _ in 0..8 {
        w.tick();
        w.reconcile().await.expect("reconcile");
    }
    assert_eq!(w.sim().voters, set([0, 1, 2]), "{:?}", w.sim().changes);
    assert_eq!(w.sts_replicas(), Some(3));
    assert_eq!(w.kvc()["status"]["phase"], "Degraded");
    assert_eq!(w.condition("Degraded").0, "True");
    assert_eq!(w.condition("Available").0, "True", "2 of 3 is a quorum");
    w.held_down.clear();
    w.run_until(20, "3 ready voters", |w| w.converged(3)).await;
    assert!(
        !w.sim().changes.iter().any(|c| c.starts_with("remove")),
        "{:?}",
        w.sim().changes
    );
}

#[tokio::test]
async fn a_member_back_with_an_empty_volume_is_replaced_not_rebootstrapped() {
    let mut w = World::start(json!({"replicas": 3})).await;
    w.run_until(60, "3 voters", |w| w.converged(3)).await;
    let victim = (0..3)
        .find(|i| Some(*i) != w.sim().leader)
        .expect("follower");
    // Its volume is lost: the pod and PVC go, the pod comes back on a new, empty volume.
    {
        let mut api = w.api();
        api.remove(PODS, &format!("{NAME}-{victim}"));
        api.remove(PVCS, &format!("data-{NAME}-{victim}"));
    }
    w.run_until(60, "the member replaced", |w| {
        w.sim()
            .changes
            .iter()
            .any(|c| *c == format!("remove {victim}"))
            && w.converged(3)
    })
    .await;
    let changes = w.sim().changes.clone();
    let tail: Vec<&String> = changes
        .iter()
        .skip_while(|c| **c != format!("remove {victim}"))
        .collect();
    assert_eq!(
        tail,
        [
            &format!("remove {victim}"),
            &format!("learner {victim}"),
            &format!("promote {victim}")
        ]
    );
    assert_eq!(w.sim().inits, 1);
    assert!(w.event_reasons().iter().any(|r| r == "MemberRemoved"));
}

#[tokio::test]
async fn old_kubernetes_without_policy_v1_gets_a_v1beta1_pdb() {
    let mut w = World::start(json!({"replicas": 3})).await;
    w.api().missing_apis.insert("apis/policy/v1/".into());
    w.run_until(60, "3 voters", |w| w.converged(3)).await;
    assert!(
        w.api()
            .get("apis/policy/v1beta1/poddisruptionbudgets", NAME)
            .is_some()
    );
    assert_eq!(w.condition("Degraded").0, "False");

    // Neither version: the cluster still runs, the condition says why.
    let mut w = World::start(json!({"replicas": 1})).await;
    {
        let mut api = w.api();
        api.missing_apis.insert("apis/policy/".into());
    }
    w.run_until(20, "1 available voter", |w| {
        w.sim().voters == set([0]) && w.condition("Available").0 == "True"
    })
    .await;
    assert_eq!(
        w.condition("Degraded"),
        ("True".into(), "PodDisruptionBudgetUnavailable".into())
    );
}
