//! Tests of the recovery plan: the spec checks, and property tests that run
//! the plan against simulated clusters (pods that take a while to stop, volumes
//! with or without data) until the survivor leads the new cluster.

use super::*;
use crate::crd::KVClusterSpec;
use proptest::prelude::*;

fn kvc(replicas: u32, recovery: Option<(u32, u32, &str)>) -> KVCluster {
    let mut spec: KVClusterSpec = serde_yaml::from_str("{}").expect("spec");
    spec.replicas = replicas as i32;
    spec.recovery = recovery.map(|(from_member, epoch, confirm)| RecoverySpec {
        force_new_cluster: ForceNewCluster {
            from_member,
            epoch,
            confirm: confirm.into(),
        },
    });
    let mut k = KVCluster::new("orders", spec);
    k.metadata.namespace = Some("shop".into());
    k.metadata.uid = Some("0123456789abcdef".into());
    k
}

fn with_status(mut k: KVCluster, st: RecoveryStatus) -> KVCluster {
    k.status.get_or_insert_with(Default::default).recovery = Some(st);
    k
}

#[test]
fn the_spec_is_checked_before_anything_changes() {
    assert!(check(&kvc(3, None)).is_ok());
    assert!(check(&kvc(3, Some((0, 1, "orders")))).is_ok());
    for (bad, field) in [
        (kvc(3, Some((0, 1, "orderz"))), "confirm"),
        (kvc(3, Some((3, 1, "orders"))), "fromMember"),
        (kvc(3, Some((0, 2, "orders"))), "epoch"),
        (kvc(3, Some((0, 0, "orders"))), "epoch"),
    ] {
        let e = check(&bad).expect_err(field).to_string();
        assert!(
            e.contains(&format!("spec.recovery.forceNewCluster.{field}")),
            "{e}"
        );
    }
    // After recovery 1 the field stays (the id depends on it); 2 may follow.
    let done = RecoveryStatus {
        epoch: 1,
        phase: "Completed".into(),
        ..Default::default()
    };
    assert!(check(&with_status(kvc(3, None), done.clone())).is_err());
    assert!(check(&with_status(kvc(3, Some((1, 1, "x"))), done.clone())).is_ok());
    assert!(check(&with_status(kvc(3, Some((1, 2, "orders"))), done.clone())).is_ok());
    assert_eq!(
        crate::build::cluster_id(&with_status(kvc(3, None), done)).expect("id"),
        "orders-01234567-r1"
    );
}

#[test]
fn a_refused_request_changes_no_identity() {
    // A healthy cluster: refused, and the id stays.
    let k = kvc(3, Some((0, 1, "orders")));
    let obs = RecoveryObs {
        desired: 3,
        sts_replicas: 3,
        pods: [0, 1, 2].into(),
        pvcs: [0, 1, 2].into(),
        leader: Some(("orders-01234567".into(), 1)),
        quorum: true,
    };
    assert!(matches!(
        plan(&k, "orders-01234567", &obs),
        RecoveryStep::Refused(_)
    ));
    assert_eq!(crate::build::cluster_id(&k).expect("id"), "orders-01234567");
    assert!(in_progress(&k).is_none());
    // The survivor has no volume: refused.
    let obs = RecoveryObs {
        pvcs: [1, 2].into(),
        quorum: false,
        ..obs
    };
    assert!(matches!(
        plan(&k, "orders-01234567", &obs),
        RecoveryStep::Refused(_)
    ));
    // A leader that lost its majority (it may still call itself leader): go.
    let obs = RecoveryObs {
        pvcs: [0, 1, 2].into(),
        ..obs
    };
    assert_eq!(plan(&k, "orders-01234567", &obs), RecoveryStep::Start);
}

/// A simulated cluster the plan's steps act on.
#[derive(Debug, Clone)]
struct Sim {
    desired: u64,
    survivor: u64,
    sts: u64,
    /// Ordinal → reconciles left before a stopping pod is gone.
    pods: std::collections::BTreeMap<u64, u32>,
    pvcs: BTreeSet<u64>,
    stop_delay: u32,
    leader: Option<(String, u64)>,
    status: Option<RecoveryStatus>,
    /// Volumes deleted while a pod still existed, or the survivor's.
    violations: Vec<String>,
}

impl Sim {
    fn kvc(&self) -> KVCluster {
        let k = kvc(
            self.desired as u32,
            Some((self.survivor as u32, 1, "orders")),
        );
        match &self.status {
            Some(s) => with_status(k, s.clone()),
            None => k,
        }
    }

    fn obs(&self) -> RecoveryObs {
        RecoveryObs {
            desired: self.desired,
            sts_replicas: self.sts,
            pods: self.pods.keys().copied().collect(),
            pvcs: self.pvcs.clone(),
            leader: self.leader.clone(),
            quorum: false,
        }
    }

    /// Carries out `step` as the gate does, then lets the world move.
    fn act(&mut self, step: &RecoveryStep) {
        let st = self.status.get_or_insert_with(Default::default);
        match step {
            RecoveryStep::Start => {
                *st = RecoveryStatus {
                    epoch: 1,
                    phase: "Stopping".into(),
                    from_member: self.survivor as u32,
                    from_cluster_id: "orders-01234567".into(),
                    cluster_id: "orders-01234567-r1".into(),
                    ..Default::default()
                }
            }
            RecoveryStep::Scale(n) => self.sts = *n,
            RecoveryStep::DeleteVolumes(os) => {
                for o in os {
                    if self.pods.contains_key(o) || *o == self.survivor {
                        self.violations.push(format!("deleted volume {o}"));
                    }
                    self.pvcs.remove(o);
                }
            }
            RecoveryStep::StartMembers => st.phase = "Starting".into(),
            RecoveryStep::Completed => st.phase = "Completed".into(),
            RecoveryStep::Wait(_) | RecoveryStep::Proceed | RecoveryStep::Refused(_) => {}
        }
        // Pods above the StatefulSet's size stop after a while; those below start.
        for o in 0..self.desired.max(self.sts) {
            if o >= self.sts {
                if let Some(left) = self.pods.get_mut(&o) {
                    if *left == 0 {
                        self.pods.remove(&o);
                    } else {
                        *left -= 1;
                    }
                }
            } else if !self.pods.contains_key(&o) {
                self.pods.insert(o, self.stop_delay);
                self.pvcs.insert(o);
                // The survivor forms the new cluster when started with the settings.
                if o == self.survivor && self.status.as_ref().is_some_and(|s| s.phase == "Starting")
                {
                    self.leader = Some(("orders-01234567-r1".into(), o));
                }
            }
        }
    }
}

proptest! {
    #[test]
    fn recovery_converges_and_never_deletes_what_it_must_keep(
        desired in 1u64..=9,
        survivor_pick in 0u64..9,
        live in proptest::collection::btree_set(0u64..9, 0..9),
        lost_volumes in proptest::collection::btree_set(0u64..9, 0..9),
        stop_delay in 0u32..4,
        sts_off in 0u64..3,
    ) {
        let survivor = survivor_pick % desired;
        let mut pvcs: BTreeSet<u64> = (0..desired).filter(|o| !lost_volumes.contains(o)).collect();
        pvcs.insert(survivor);
        let mut sim = Sim {
            desired,
            survivor,
            sts: desired.saturating_sub(sts_off),
            pods: live.iter().filter(|o| **o < desired).map(|o| (*o, stop_delay)).collect(),
            pvcs,
            stop_delay,
            leader: None,
            status: None,
            violations: Vec::new(),
        };
        let mut steps = Vec::new();
        let mut done = false;
        for _ in 0..60 {
            let k = sim.kvc();
            prop_assert!(check(&k).is_ok());
            let step = plan(&k, "orders-01234567", &sim.obs());
            steps.push(step.clone());
            sim.act(&step);
            if step == RecoveryStep::Completed {
                done = true;
                break;
            }
            // While it runs, the members' config names the lost cluster and the survivor.
            if let Some(s) = &sim.status && s.phase != "Completed" {
                prop_assert_eq!(
                    in_progress(&sim.kvc()),
                    Some(("orders-01234567".to_string(), survivor))
                );
            }
        }
        prop_assert!(done, "no completion: {:?}", steps);
        prop_assert!(sim.violations.is_empty(), "{:?} after {:?}", sim.violations, steps);
        prop_assert!(sim.pvcs.contains(&survivor));
        let k = sim.kvc();
        prop_assert_eq!(crate::build::cluster_id(&k).expect("id"), "orders-01234567-r1");
        prop_assert!(in_progress(&k).is_none());
        // Afterwards: nothing more to do, and the id stays.
        prop_assert_eq!(plan(&k, "orders-01234567", &sim.obs()), RecoveryStep::Proceed);
    }
}

#[test]
fn members_get_the_recovery_settings_only_while_it_runs_and_never_restart_for_them() {
    let running = with_status(
        kvc(3, Some((2, 1, "orders"))),
        RecoveryStatus {
            epoch: 1,
            phase: "Starting".into(),
            from_member: 2,
            from_cluster_id: "orders-01234567".into(),
            cluster_id: "orders-01234567-r1".into(),
            ..Default::default()
        },
    );
    let cfg: serde_yaml::Value =
        serde_yaml::from_str(&crate::build::config_yaml(&running).expect("config")).expect("yaml");
    assert_eq!(cfg["cluster_id"].as_str(), Some("orders-01234567-r1"));
    assert_eq!(
        cfg["recovery"]["force_new_cluster_from"].as_str(),
        Some("orders-01234567")
    );
    assert_eq!(cfg["recovery"]["node_id"].as_u64(), Some(2));
    let mut done = running.clone();
    if let Some(r) = done.status.as_mut().and_then(|s| s.recovery.as_mut()) {
        r.phase = "Completed".into();
    }
    let cfg: serde_yaml::Value =
        serde_yaml::from_str(&crate::build::config_yaml(&done).expect("config")).expect("yaml");
    assert!(cfg.get("recovery").is_none(), "{cfg:?}");
    let hash = |k: &KVCluster| {
        crate::build::statefulset(k, 3, None)
            .expect("sts")
            .spec
            .and_then(|s| s.template.metadata)
            .and_then(|m| m.annotations)
            .and_then(|a| a.get("kvcluster.io/config-hash").cloned())
    };
    assert_eq!(hash(&running), hash(&done));
}
