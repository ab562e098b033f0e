//! `spec.restore`: forming a new KVCluster from a backup.
//!
//! How: before the StatefulSet exists, the operator creates the first
//! member's volume (`data-<name>-0`, as the StatefulSet would) and a Job that
//! writes the restore point into it (`kvctl backup restore-point`, or the
//! named `KVClusterBackup`'s object as is). Once the Job succeeded, the
//! StatefulSet is created as usual; every member's configuration names the
//! file (`restore_from`), and the member that forms the cluster restores it
//! (kvserver checks it again, installs it in one transaction and seals it with
//! a snapshot so the others receive it when they join). Why a Job writing
//! into the volume rather than the member fetching it: the source may be a
//! ReadWriteOnce volume, which a StatefulSet's pods cannot all mount, and the
//! members never hold object-storage credentials.
//!
//! [`plan`] is pure: what to do given the spec, what the status recorded, and
//! what exists. A cluster that exists (or existed) is never restored over.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::ResourceExt;
use serde_json::json;

use super::crd::BackupDestination;
use super::crd::KVClusterBackup;
use super::crd::RestoreSpec;
use crate::build::BuildError;
use crate::build::meta;
use crate::crd::KVCluster;

/// Where the restore point goes in the first member's volume.
pub const RESTORE_FILE: &str = "/var/lib/kvserver/restore.kvbak";

/// What the restore Job's pod is doing, as far as the operator can see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    Absent,
    Running,
    Succeeded,
    Failed(String),
}

/// The next restore step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreStep {
    /// No restore (none asked, or it completed): reconcile as usual.
    Proceed,
    /// Create the first member's volume and the Job.
    Start,
    /// The Job runs: hold the StatefulSet back.
    Wait,
    /// It finished: record it, then proceed.
    Completed,
    /// The Job failed: hold back and say why (delete the Job to try again).
    Failed(String),
    /// A restore was asked of a cluster that has (or had) data.
    Refused(String),
}

/// Decides the restore step (pure).
pub fn plan(
    spec: Option<&RestoreSpec>,
    recorded_phase: Option<&str>,
    cluster_exists: bool,
    job: &JobState,
) -> RestoreStep {
    if spec.is_none() || recorded_phase == Some("Completed") {
        return RestoreStep::Proceed;
    }
    if cluster_exists && recorded_phase.is_none() {
        return RestoreStep::Refused(
            "spec.restore: this cluster already exists; a restore forms a new cluster: create a new KVCluster with spec.restore".into(),
        );
    }
    match job {
        JobState::Absent => RestoreStep::Start,
        JobState::Running => RestoreStep::Wait,
        JobState::Succeeded => RestoreStep::Completed,
        JobState::Failed(m) => RestoreStep::Failed(m.clone()),
    }
}

pub fn job_name(kvc: &KVCluster) -> String {
    format!("{}-restore", kvc.name_any())
}

/// The volume the StatefulSet will adopt as its first member's.
pub fn first_volume(kvc: &KVCluster) -> Result<PersistentVolumeClaim, BuildError> {
    let sts = crate::build::statefulset(kvc, 1, None)?;
    let template = sts
        .spec
        .and_then(|s| s.volume_claim_templates)
        .and_then(|mut t| t.pop())
        .ok_or_else(|| BuildError::Config("the StatefulSet has no volume template".into()))?;
    let tname = template.metadata.name.clone().unwrap_or_default();
    let mut pvc = PersistentVolumeClaim {
        metadata: meta(
            kvc,
            format!("{tname}-{}-0", crate::build::names(kvc).statefulset),
        )?,
        spec: template.spec,
        ..Default::default()
    };
    // Owned like any member volume: by the StatefulSet's rules, not by the KVCluster.
    pvc.metadata.owner_references = None;
    pvc.metadata.labels = Some(crate::build::selector_labels(kvc));
    Ok(pvc)
}

/// Where to read from, as the Job sees it: the destination and what to compose.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub destination: BackupDestination,
    /// The destination URL as mounted in the Job, S3 endpoint and region.
    pub url: (String, Option<String>, Option<String>),
    pub args: Vec<String>,
}

/// Resolves `spec.restore` (with the named `KVClusterBackup`, when it names one).
pub fn source(kvc: &KVCluster, backup: Option<&KVClusterBackup>) -> Result<Source, BuildError> {
    let r = kvc
        .spec
        .restore
        .as_ref()
        .ok_or_else(|| BuildError::Invalid("spec.restore: not set".into()))?;
    if r.to_revision.is_some() && r.to_time.is_some() {
        return Err(BuildError::Invalid(
            "spec.restore: set toRevision or toTime, not both".into(),
        ));
    }
    let point: Vec<String> = match (r.to_revision, &r.to_time) {
        (Some(rev), _) => vec!["--to-revision".into(), rev.to_string()],
        (None, Some(t)) => {
            let ms = chrono::DateTime::parse_from_rfc3339(t)
                .map_err(|e| {
                    BuildError::Invalid(format!("spec.restore.toTime: {t:?} is not RFC 3339: {e}"))
                })?
                .timestamp_millis();
            vec!["--to-time-ms".into(), ms.max(0).to_string()]
        }
        (None, None) => Vec::new(),
    };
    let (destination, cluster_id, object) = match (&r.backup, &r.destination) {
        (Some(name), None) => {
            let b = backup.ok_or_else(|| {
                BuildError::Invalid(format!(
                    "spec.restore.backup: KVClusterBackup {name} not found"
                ))
            })?;
            let st = b.status.clone().unwrap_or_default();
            if st.phase.as_deref() != Some("Completed") {
                return Err(BuildError::Invalid(format!(
                    "spec.restore.backup: KVClusterBackup {name} has not completed (phase {:?})",
                    st.phase
                )));
            }
            let dest = st.destination.clone().ok_or_else(|| {
                BuildError::Invalid(format!(
                    "spec.restore.backup: KVClusterBackup {name} does not say where it is"
                ))
            })?;
            (dest, st.cluster_id.clone(), st.object.clone())
        }
        (None, Some(d)) => (d.clone(), r.cluster_id.clone(), None),
        _ => {
            return Err(BuildError::Invalid(
                "spec.restore: set exactly one of `backup` or `destination`".into(),
            ));
        }
    };
    let url = super::config::destination_url(kvc, &destination, "spec.restore.destination")?;
    let mut args = vec!["backup".to_string()];
    match (object, point.is_empty()) {
        // The backup itself, exactly.
        (Some(obj), true) => args.extend(["fetch".into(), "--object".into(), obj]),
        _ => {
            args.push("restore-point".into());
            if let Some(c) = cluster_id {
                args.extend(["--cluster".into(), c]);
            }
            args.extend(point);
        }
    }
    args.extend(["--dest".into(), url.0.clone()]);
    if let Some(ep) = &url.1 {
        args.extend(["--s3-endpoint".into(), ep.clone()]);
    }
    if let Some(region) = &url.2 {
        args.extend(["--s3-region".into(), region.clone()]);
    }
    args.extend(["--out".into(), RESTORE_FILE.into()]);
    Ok(Source {
        destination,
        url,
        args,
    })
}

/// The Job writing the restore point into the first member's volume.
pub fn job(kvc: &KVCluster, src: &Source) -> Result<Job, BuildError> {
    let volume = first_volume(kvc)?;
    let mut volumes = vec![
        json!({"name": "data", "persistentVolumeClaim": {"claimName": volume.metadata.name}}),
        json!({"name": "tmp", "emptyDir": {}}),
    ];
    let mut mounts = vec![
        json!({"name": "data", "mountPath": crate::build::DATA_DIR}),
        json!({"name": "tmp", "mountPath": "/tmp"}),
    ];
    let mut env_from = Vec::new();
    if let Some(v) = &src.destination.volume {
        volumes.push(json!({"name": "backup", "persistentVolumeClaim": {"claimName": v.claim_name, "readOnly": true}}));
        mounts.push(
            json!({"name": "backup", "mountPath": super::config::VOLUME_MOUNT, "readOnly": true}),
        );
    }
    if let Some(s) = &src.destination.s3 {
        env_from.push(json!({"secretRef": {"name": s.credentials_secret}}));
    }
    let labels = BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "kvcluster-restore".to_string(),
        ),
        ("app.kubernetes.io/instance".to_string(), kvc.name_any()),
    ]);
    let mut j: Job = serde_json::from_value(json!({
        "spec": {
            "backoffLimit": 2,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": false,
                    "securityContext": crate::build::pod_security(),
                    "containers": [{
                        "name": "restore",
                        "image": kvc.spec.image,
                        "imagePullPolicy": kvc.spec.image_pull_policy,
                        "command": ["/usr/local/bin/kvctl"],
                        "args": src.args,
                        // kvctl's error becomes the termination message, which
                        // the operator copies into status.restore.message.
                        "terminationMessagePolicy": "FallbackToLogsOnError",
                        "envFrom": env_from,
                        "volumeMounts": mounts,
                        "securityContext": crate::build::container_security(),
                    }],
                    "volumes": volumes,
                }
            }
        }
    }))
    .map_err(|e| BuildError::Config(format!("restore Job: {e}")))?;
    j.metadata = meta(kvc, job_name(kvc))?;
    Ok(j)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_with_data_is_never_restored_over() {
        let spec = RestoreSpec::default();
        assert_eq!(
            plan(None, None, true, &JobState::Absent),
            RestoreStep::Proceed
        );
        assert!(matches!(
            plan(Some(&spec), None, true, &JobState::Absent),
            RestoreStep::Refused(_)
        ));
        assert_eq!(
            plan(Some(&spec), None, false, &JobState::Absent),
            RestoreStep::Start
        );
        // Once started, the StatefulSet it holds back may exist (a restarted operator).
        assert_eq!(
            plan(Some(&spec), Some("Running"), true, &JobState::Running),
            RestoreStep::Wait
        );
        assert_eq!(
            plan(Some(&spec), Some("Running"), false, &JobState::Succeeded),
            RestoreStep::Completed
        );
        assert_eq!(
            plan(Some(&spec), Some("Completed"), true, &JobState::Absent),
            RestoreStep::Proceed
        );
        assert_eq!(
            plan(
                Some(&spec),
                Some("Running"),
                false,
                &JobState::Failed("x".into())
            ),
            RestoreStep::Failed("x".into())
        );
    }

    fn kvc(restore: &str) -> KVCluster {
        let mut k: KVCluster = serde_yaml::from_str(&format!(
            "apiVersion: kvcluster.io/v1alpha1\nkind: KVCluster\nmetadata: {{name: orders2, namespace: shop}}\nspec:\n  restore: {restore}\n"
        ))
        .expect("kvc");
        k.metadata.uid = Some("0123456789abcdef".into());
        k
    }

    #[test]
    fn the_job_composes_the_point_from_the_destination() {
        let k = kvc(
            "{destination: {s3: {bucket: b, prefix: shop/orders, endpoint: 'http://s3:9000', credentialsSecret: c}}, toRevision: 41230, clusterId: orders-01234567}",
        );
        let src = source(&k, None).expect("source");
        assert_eq!(
            src.args.join(" "),
            "backup restore-point --cluster orders-01234567 --to-revision 41230 --dest s3://b/shop/orders --s3-endpoint http://s3:9000 --out /var/lib/kvserver/restore.kvbak"
        );
        let j = job(&k, &src).expect("job");
        let s = serde_json::to_string(&j).expect("json");
        assert!(s.contains("data-orders2-0") && s.contains("\"c\""), "{s}");
        let k = kvc("{destination: {volume: {claimName: v}}, toTime: '2026-12-03T07:00:00Z'}");
        let src = source(&k, None).expect("source");
        assert!(
            src.args.contains(&"1796281200000".to_string()),
            "{:?}",
            src.args
        );
        for (bad, field) in [
            (
                "{destination: {volume: {claimName: v}}, toTime: 'yesterday'}",
                "spec.restore.toTime",
            ),
            (
                "{destination: {volume: {claimName: v}}, toTime: '2026-12-03T07:00:00Z', toRevision: 3}",
                "spec.restore",
            ),
            ("{}", "spec.restore"),
            ("{backup: x}", "spec.restore.backup"),
        ] {
            let e = source(&kvc(bad), None).expect_err(bad).to_string();
            assert!(e.starts_with(field), "{bad}: {e}");
        }
    }
}
