//! Execute: performs the one membership step the planner chose, through the
//! kvserver cluster API (or the Kubernetes API for volumes), and says what to
//! record as an Event.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::Api;
use kube::Client;
use kube::ResourceExt;
use kube::api::DeleteParams;
use kvserver::model::InitRequest;
use kvserver::model::LearnerRequest;
use kvserver::model::MemberSpec;
use kvserver::model::MembershipRequest;

use super::At;
use super::ReconcileError;
use super::observe::Seen;
use crate::build;
use crate::crd::KVCluster;
use crate::membership::Step;

/// Executes one membership step. Returns the event reason/note to publish.
pub(super) async fn execute(
    kvc: &KVCluster,
    client: &Client,
    seen: &Seen,
    step: &Step,
) -> Result<Option<(String, String)>, ReconcileError> {
    let kv = || seen.client(Duration::from_secs(20), 3);
    let spec = |id: u64| MemberSpec {
        api_addr: build::member_api(kvc, id),
        raft_addr: build::member_raft(kvc, id),
    };
    Ok(match step {
        Step::Bootstrap(id) => {
            let url = seen.urls.get(id).cloned().unwrap_or_default();
            kv()?
                .init_at(
                    &url,
                    &InitRequest {
                        members: Some(BTreeMap::from([(*id, spec(*id))])),
                    },
                )
                .await
                .at(
                    "membership",
                    format!("initialize the cluster on member {id}"),
                )?;
            Some((
                "Bootstrapped".into(),
                format!("initialized the Raft cluster on member {id}"),
            ))
        }
        Step::AddLearner(id) => {
            let s = spec(*id);
            kv()?
                .add_learner(&LearnerRequest {
                    id: *id,
                    api_addr: s.api_addr,
                    raft_addr: s.raft_addr,
                    wait: false,
                })
                .await
                .at("membership", format!("add member {id} as a learner"))?;
            Some((
                "LearnerAdded".into(),
                format!("added member {id} as a learner"),
            ))
        }
        Step::Promote(id) => {
            kv()?
                .change_membership(&MembershipRequest {
                    add_voters: vec![*id],
                    ..Default::default()
                })
                .await
                .at("membership", format!("promote member {id}"))?;
            Some((
                "MemberPromoted".into(),
                format!("promoted member {id} to voter"),
            ))
        }
        Step::TransferLeader { from, to } => {
            kv()?
                .transfer_leader(*to)
                .await
                .at("membership", format!("move leadership from {from} to {to}"))?;
            Some((
                "LeadershipTransferred".into(),
                format!("moved leadership from {from} to {to} before removing {from}"),
            ))
        }
        Step::Demote(id) => {
            kv()?
                .change_membership(&MembershipRequest {
                    remove_voters: vec![*id],
                    retain: true,
                    ..Default::default()
                })
                .await
                .at("membership", format!("demote member {id} to a learner"))?;
            Some((
                "MemberDemoted".into(),
                format!(
                    "made member {id} a learner: its partition replicas move to the other pods before it is removed"
                ),
            ))
        }
        Step::RemoveMember { id, replace } => {
            kv()?
                .change_membership(&MembershipRequest {
                    remove_nodes: vec![*id],
                    ..Default::default()
                })
                .await
                .at("membership", format!("remove member {id}"))?;
            let why = if *replace {
                "it lost its data; it rejoins as a learner"
            } else {
                "scale-in"
            };
            Some((
                "MemberRemoved".into(),
                format!("removed member {id} from the Raft group ({why})"),
            ))
        }
        Step::ReclaimVolume(id) => {
            let api: Api<PersistentVolumeClaim> =
                Api::namespaced(client.clone(), &kvc.namespace().unwrap_or_default());
            match api
                .delete(&build::pvc_name(kvc, *id), &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => {
                    return Err(e).at(
                        "membership",
                        format!("PersistentVolumeClaim {}", build::pvc_name(kvc, *id)),
                    );
                }
            }
            Some((
                "VolumeReclaimed".into(),
                format!("deleted the volume of removed member {id}"),
            ))
        }
        Step::ScaleStatefulSet(n) if *n != seen.obs.sts_replicas && seen.sts_exists => Some((
            "StatefulSetScaled".into(),
            format!("StatefulSet replicas {} → {n}", seen.obs.sts_replicas),
        )),
        Step::Blocked(reason) => Some(("ScalingBlocked".into(), reason.clone())),
        _ => None,
    })
}
