//! The restore gate of the pipeline (`spec.restore`): observes the restore
//! Job, follows `crate::backup::restore::plan`, creates the first member's
//! volume and the Job, and says whether the StatefulSet must wait.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::Api;
use kube::ResourceExt;
use kube::runtime::events::EventType;

use super::At;
use super::Context;
use super::ReconcileError;
use super::apply::apply;
use super::publish_event;
use crate::backup::crd::KVClusterBackup;
use crate::backup::crd::RestoreStatus;
use crate::backup::restore::JobState;
use crate::backup::restore::RestoreStep;
use crate::crd::KVCluster;

/// What the gate decided: hold the StatefulSet back, and the status to record.
pub(super) struct Gate {
    pub hold: bool,
    pub status: Option<RestoreStatus>,
}

fn job_state(job: Option<Job>) -> JobState {
    let Some(j) = job else {
        return JobState::Absent;
    };
    let st = j.status.unwrap_or_default();
    if st.succeeded.unwrap_or(0) > 0 {
        return JobState::Succeeded;
    }
    let failed = st
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Failed" && c.status == "True");
    match failed {
        Some(c) => JobState::Failed(format!(
            "restore Job failed ({}): see `kubectl logs job/{}`",
            c.message.unwrap_or_else(|| c.reason.unwrap_or_default()),
            j.metadata.name.unwrap_or_default()
        )),
        None => JobState::Running,
    }
}

pub(super) async fn gate(
    kvc: &KVCluster,
    ctx: &Context,
    cluster_exists: bool,
) -> Result<Gate, ReconcileError> {
    let Some(spec) = kvc.spec.restore.as_ref() else {
        return Ok(Gate {
            hold: false,
            status: None,
        });
    };
    let ns = kvc.namespace().unwrap_or_default();
    let recorded = kvc
        .status
        .as_ref()
        .and_then(|s| s.restore.as_ref())
        .map(|r| r.phase.clone());
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let name = crate::backup::restore::job_name(kvc);
    let job = jobs
        .get_opt(&name)
        .await
        .at("observe", format!("Job {name}"))?;
    let step = crate::backup::restore::plan(
        Some(spec),
        recorded.as_deref(),
        cluster_exists,
        &job_state(job),
    );
    let status = |phase: &str, message: String| RestoreStatus {
        phase: phase.into(),
        message: Some(message),
    };
    Ok(match step {
        RestoreStep::Proceed => Gate {
            hold: false,
            status: None,
        },
        RestoreStep::Refused(m) => {
            if recorded.as_deref() != Some("Refused") {
                publish_event(
                    ctx,
                    kvc,
                    EventType::Warning,
                    "RestoreRefused".into(),
                    m.clone(),
                )
                .await;
            }
            Gate {
                hold: false,
                status: Some(status("Refused", m)),
            }
        }
        RestoreStep::Start => {
            let backup = match &spec.backup {
                Some(b) => Api::<KVClusterBackup>::namespaced(ctx.client.clone(), &ns)
                    .get_opt(b)
                    .await
                    .at("observe", format!("KVClusterBackup {b}"))?,
                None => None,
            };
            let src = crate::backup::restore::source(kvc, backup.as_ref())?;
            apply::<PersistentVolumeClaim>(
                &ctx.client,
                &ns,
                &crate::backup::restore::first_volume(kvc)?,
            )
            .await?;
            apply::<Job>(&ctx.client, &ns, &crate::backup::restore::job(kvc, &src)?).await?;
            let m = format!(
                "restoring from {} (kvctl {})",
                src.url.0,
                src.args.join(" ")
            );
            publish_event(
                ctx,
                kvc,
                EventType::Normal,
                "RestoreStarted".into(),
                m.clone(),
            )
            .await;
            Gate {
                hold: true,
                status: Some(status("Running", m)),
            }
        }
        RestoreStep::Wait => Gate {
            hold: true,
            status: None,
        },
        RestoreStep::Failed(m) => {
            if recorded.as_deref() != Some("Failed") {
                publish_event(
                    ctx,
                    kvc,
                    EventType::Warning,
                    "RestoreFailed".into(),
                    m.clone(),
                )
                .await;
            }
            Gate {
                hold: true,
                status: Some(status("Failed", m)),
            }
        }
        RestoreStep::Completed => {
            let m =
                "the restore point is in the first member's volume; it forms the cluster from it"
                    .to_string();
            publish_event(
                ctx,
                kvc,
                EventType::Normal,
                "RestoreCompleted".into(),
                m.clone(),
            )
            .await;
            Gate {
                hold: false,
                status: Some(status("Completed", m)),
            }
        }
    })
}
