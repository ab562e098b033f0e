//! The restore gate of the pipeline (`spec.restore`): observes the restore
//! Job, follows `crate::backup::restore::plan`, creates the first member's
//! volume and the Job, and says whether the StatefulSet must wait.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use kube::ResourceExt;
use kube::api::ListParams;
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

/// Why the restore Job's last pod failed: its termination message (kvctl's
/// error, by `FallbackToLogsOnError`), if the pod is still there.
async fn failure_reason(ctx: &Context, ns: &str, job: &str) -> Option<String> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(&format!("job-name={job}")))
        .await
        .ok()?;
    let mut failed: Vec<(Option<Time>, String)> = list
        .items
        .into_iter()
        .flat_map(|p| {
            p.status
                .and_then(|s| s.container_statuses)
                .unwrap_or_default()
        })
        .filter_map(|c| c.state.and_then(|s| s.terminated))
        .filter(|t| t.exit_code != 0)
        .filter_map(|t| Some((t.finished_at, t.message?)))
        .collect();
    failed.sort_by(|a, b| a.0.cmp(&b.0));
    let (_, message) = failed.pop()?;
    Some(condense(&message))
}

/// kvctl's `Error: …` and its causes on one line (earlier lines are its log).
fn condense(message: &str) -> String {
    let lines: Vec<&str> = message.lines().map(str::trim).collect();
    let from = lines
        .iter()
        .rposition(|l| l.starts_with("Error: "))
        .unwrap_or_else(|| lines.len().saturating_sub(1));
    let text = lines[from..]
        .iter()
        .filter(|l| !l.is_empty() && **l != "Caused by:")
        .map(|l| l.trim_start_matches("Error: "))
        .collect::<Vec<_>>()
        .join(": ");
    text.chars().take(512).collect()
}

fn job_state(job: Option<Job>, reason: Option<String>) -> JobState {
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
            "restore Job failed ({}): {}",
            c.message.unwrap_or_else(|| c.reason.unwrap_or_default()),
            reason.unwrap_or_else(|| format!(
                "see `kubectl logs job/{}`",
                j.metadata.name.unwrap_or_default()
            ))
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
    let reason = match &job {
        Some(j) if j.status.as_ref().and_then(|s| s.failed).unwrap_or(0) > 0 => {
            failure_reason(ctx, &ns, &name).await
        }
        _ => None,
    };
    let step = crate::backup::restore::plan(
        Some(spec),
        recorded.as_deref(),
        cluster_exists,
        &job_state(job, reason),
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

#[cfg(test)]
mod tests {
    #[test]
    fn kvctl_errors_are_condensed_to_one_line() {
        let m = "2026-12-03T10:00:00Z INFO composing\nError: restore point\n\nCaused by:\n    0: no full backup at or before revision 41\n";
        assert_eq!(
            super::condense(m),
            "restore point: 0: no full backup at or before revision 41"
        );
        assert_eq!(super::condense("panic\n"), "panic");
        assert_eq!(super::condense(""), "");
    }
}
