//! The forced-recovery gate of the pipeline (`spec.recovery`): observes what
//! [`crate::recovery::plan`] needs, carries out its step (deleting the other
//! members' volumes), records `status.recovery` and Events, and says whether the
//! StatefulSet waits and at what size.

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::Api;
use kube::ResourceExt;
use kube::api::DeleteParams;
use kube::runtime::events::EventType;

use super::At;
use super::Context;
use super::ReconcileError;
use super::observe::Seen;
use super::publish_event;
use crate::build;
use crate::crd::KVCluster;
use crate::recovery::RecoveryObs;
use crate::recovery::RecoveryStatus;
use crate::recovery::RecoveryStep;
use crate::recovery::cluster_id_at;

/// What the gate decided.
pub(super) struct Gate {
    /// The StatefulSet and membership steps wait.
    pub hold: bool,
    /// The StatefulSet's size while held (`None`: leave it).
    pub scale: Option<u64>,
    /// `status.recovery` to record (`None`: unchanged).
    pub status: Option<RecoveryStatus>,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub(super) async fn gate(
    kvc: &KVCluster,
    ctx: &Context,
    seen: &Seen,
) -> Result<Gate, ReconcileError> {
    let pass = Gate {
        hold: false,
        scale: None,
        status: None,
    };
    let Some(req) = kvc.spec.recovery.as_ref().map(|r| &r.force_new_cluster) else {
        return Ok(pass);
    };
    let base = build::base_cluster_id(kvc)?;
    let current = build::cluster_id(kvc)?;
    let quorum = match (&seen.obs.raft, &seen.info) {
        (Some(r), Some(i)) if r.leader.is_some() && i.cluster_id == current => {
            let serving = r
                .voters
                .iter()
                .filter(|v| {
                    seen.obs
                        .pods
                        .get(v)
                        .is_some_and(|p| p.exists && p.serving && !p.uninitialized)
                })
                .count();
            serving > r.voters.len() / 2
        }
        _ => false,
    };
    let obs = RecoveryObs {
        quorum,
        desired: seen.obs.desired,
        sts_replicas: seen.obs.sts_replicas,
        pods: seen.obs.pods.keys().copied().collect(),
        pvcs: seen.obs.pvcs.clone(),
        leader: seen
            .info
            .as_ref()
            .filter(|i| i.role == "leader")
            .map(|i| (i.cluster_id.clone(), i.node_id)),
    };
    let step = crate::recovery::plan(kvc, &base, &obs);
    let old = kvc
        .status
        .as_ref()
        .and_then(|s| s.recovery.clone())
        .unwrap_or_default();
    tracing::info!(kvcluster = %kvc.name_any(), step = ?step, "recovery planned");
    let mut st = old.clone();
    st.refused = None;
    let event = |type_, reason: &str, note: String| {
        publish_event(ctx, kvc, type_, reason.to_string(), note)
    };
    let gate = match step {
        RecoveryStep::Proceed => Gate {
            status: Some(st),
            ..pass
        },
        RecoveryStep::Refused(why) => {
            if old.refused.as_deref() != Some(why.as_str()) {
                event(EventType::Warning, "RecoveryRefused", why.clone()).await;
            }
            st.refused = Some(why);
            Gate {
                status: Some(st),
                ..pass
            }
        }
        RecoveryStep::Start => {
            let from = cluster_id_at(&base, crate::recovery::identity_epoch(kvc));
            let to = cluster_id_at(&base, req.epoch);
            event(
                EventType::Warning,
                "RecoveryStarted",
                format!(
                    "forced recovery {}: forming cluster {to} from member {}'s data (cluster {from}); every other member's volume will be deleted",
                    req.epoch, req.from_member
                ),
            )
            .await;
            st = RecoveryStatus {
                epoch: req.epoch,
                phase: "Stopping".into(),
                from_member: req.from_member,
                from_cluster_id: from,
                cluster_id: to,
                deleted_volumes: Vec::new(),
                started_at: Some(now()),
                completed_at: None,
                message: Some("stopping every member".into()),
                refused: None,
            };
            Gate {
                hold: true,
                scale: None,
                status: Some(st),
            }
        }
        RecoveryStep::Scale(n) => {
            st.message = Some(match n {
                0 => "stopping every member".into(),
                n => format!("starting {n} members: member {} recovers", req.from_member),
            });
            Gate {
                hold: true,
                scale: Some(n),
                status: Some(st),
            }
        }
        RecoveryStep::Wait(why) => {
            st.message = Some(why);
            Gate {
                hold: true,
                scale: None,
                status: Some(st),
            }
        }
        RecoveryStep::DeleteVolumes(ordinals) => {
            let ns = kvc.namespace().unwrap_or_default();
            let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
            let sts = build::names(kvc).statefulset;
            let mut deleted = Vec::new();
            for o in ordinals {
                let name = format!("data-{sts}-{o}");
                match pvcs.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => deleted.push(name),
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => {
                        return Err(e).at("recovery", format!("PersistentVolumeClaim {name}"));
                    }
                }
            }
            let fresh: Vec<String> = deleted
                .into_iter()
                .filter(|d| !st.deleted_volumes.contains(d))
                .collect();
            if !fresh.is_empty() {
                event(
                    EventType::Warning,
                    "RecoveryVolumesDeleted",
                    format!(
                        "deleted the volumes of the lost members: {}",
                        fresh.join(", ")
                    ),
                )
                .await;
                st.deleted_volumes.extend(fresh);
            }
            st.message = Some("deleting the other members' volumes".into());
            Gate {
                hold: true,
                scale: None,
                status: Some(st),
            }
        }
        RecoveryStep::StartMembers => {
            st.phase = "Starting".into();
            st.message = Some(format!(
                "starting the members: member {} forms cluster {}",
                req.from_member, st.cluster_id
            ));
            Gate {
                hold: true,
                scale: None,
                status: Some(st),
            }
        }
        RecoveryStep::Completed => {
            st.phase = "Completed".into();
            st.completed_at = Some(now());
            st.message = Some(format!(
                "member {} leads cluster {}; the other members join as learners",
                req.from_member, st.cluster_id
            ));
            event(
                EventType::Normal,
                "RecoveryCompleted",
                format!(
                    "member {} leads the recovered cluster {}",
                    req.from_member, st.cluster_id
                ),
            )
            .await;
            Gate {
                status: Some(st),
                ..pass
            }
        }
    };
    Ok(gate)
}
