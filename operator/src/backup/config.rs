//! The backup agent's configuration, rendered from a `KVCluster` (pure) and
//! handed to the agent as a JSON file in its ConfigMap; and `spec.backup` /
//! `spec.restore` validation, with errors that name the field.

use kube::ResourceExt;
use serde::Deserialize;
use serde::Serialize;

use super::crd::BackupDestination;
use crate::build::BuildError;
use crate::crd::KVCluster;

/// Where the agent mounts a volume destination.
pub const VOLUME_MOUNT: &str = "/backup";
/// Where the agent finds the cluster's CA bundle (client port TLS).
pub const CA_DIR: &str = "/etc/kvcluster/ca";
/// Where the agent finds the admin token.
pub const TOKEN_DIR: &str = "/etc/kvcluster/token";
/// Scratch space for downloads before upload.
pub const SCRATCH_DIR: &str = "/scratch";
/// Where the agent reads this configuration.
pub const CONFIG_DIR: &str = "/etc/kvcluster/backup";

/// Everything the agent needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentConfig {
    pub namespace: String,
    /// The KVCluster's name.
    pub cluster: String,
    /// Destination URL (a directory or `s3://bucket/prefix`).
    pub destination: String,
    /// The destination as the spec says (recorded in `KVClusterBackup` statuses).
    pub destination_spec: BackupDestination,
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    /// The cluster's client Service.
    pub endpoints: Vec<String>,
    pub ca_file: Option<String>,
    pub token_file: Option<String>,
    /// Cron schedule of full backups (UTC).
    pub schedule: Option<String>,
    pub retention_keep: u32,
    pub retention_max_age_ms: Option<u64>,
    pub continuous: bool,
    pub flush_interval_ms: u64,
    pub scratch: String,
}

/// Parses a backup schedule: 5 cron fields, or 6 with seconds first (UTC).
pub fn parse_schedule(s: &str) -> Result<croner::Cron, croner::errors::CronError> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(s)
}

fn invalid(field: &str, msg: impl std::fmt::Display) -> BuildError {
    BuildError::Invalid(format!("{field}: {msg}"))
}

/// The destination as a URL the backup code opens, plus S3 endpoint and region;
/// `field` names the spec field in errors.
pub fn destination_url(
    kvc: &KVCluster,
    d: &BackupDestination,
    field: &str,
) -> Result<(String, Option<String>, Option<String>), BuildError> {
    match (&d.volume, &d.s3) {
        (Some(v), None) => {
            if v.claim_name.is_empty() {
                return Err(invalid(&format!("{field}.volume.claimName"), "must be set"));
            }
            let sub = v.path.as_deref().unwrap_or("").trim_matches('/');
            if sub.split('/').any(|p| p == "..") {
                return Err(invalid(
                    &format!("{field}.volume.path"),
                    "must not contain `..`",
                ));
            }
            let url = match sub {
                "" => VOLUME_MOUNT.to_string(),
                s => format!("{VOLUME_MOUNT}/{s}"),
            };
            Ok((url, None, None))
        }
        (None, Some(s)) => {
            if s.bucket.is_empty() || s.bucket.contains('/') {
                return Err(invalid(
                    &format!("{field}.s3.bucket"),
                    "must be a bucket name",
                ));
            }
            if s.credentials_secret.is_empty() {
                return Err(invalid(
                    &format!("{field}.s3.credentialsSecret"),
                    "must be set",
                ));
            }
            if let Some(ep) = &s.endpoint
                && !(ep.starts_with("http://") || ep.starts_with("https://"))
            {
                return Err(invalid(
                    &format!("{field}.s3.endpoint"),
                    "must start with http:// or https://",
                ));
            }
            let prefix = match &s.prefix {
                Some(p) => p.trim_matches('/').to_string(),
                None => format!("{}/{}", kvc.namespace().unwrap_or_default(), kvc.name_any()),
            };
            Ok((
                format!("s3://{}/{prefix}", s.bucket),
                s.endpoint.clone(),
                s.region.clone(),
            ))
        }
        _ => Err(invalid(field, "set exactly one of `volume` or `s3`")),
    }
}

/// The agent's configuration for `kvc`, or `None` without `spec.backup`.
pub fn agent_config(kvc: &KVCluster) -> Result<Option<AgentConfig>, BuildError> {
    let Some(b) = &kvc.spec.backup else {
        return Ok(None);
    };
    let (destination, s3_endpoint, s3_region) =
        destination_url(kvc, &b.destination, "spec.backup.destination")?;
    if let Some(s) = &b.schedule {
        s.parse::<croner::Cron>().map_err(|e| {
            invalid(
                "spec.backup.schedule",
                format!("{s:?} is not a cron schedule: {e}"),
            )
        })?;
    }
    let retention_max_age_ms = b
        .retention
        .max_age
        .as_deref()
        .map(kvserver::backup::retention::parse_age)
        .transpose()
        .map_err(|e| invalid("spec.backup.retention.maxAge", e))?;
    let ns = kvc.namespace().unwrap_or_default();
    let tls = crate::build::client_tls_enabled(kvc);
    Ok(Some(AgentConfig {
        namespace: ns.clone(),
        cluster: kvc.name_any(),
        destination,
        destination_spec: b.destination.clone(),
        s3_endpoint,
        s3_region,
        endpoints: vec![format!(
            "{}://{}.{ns}.svc:{}",
            if tls { "https" } else { "http" },
            crate::build::names(kvc).client,
            crate::build::API_PORT
        )],
        ca_file: tls.then(|| format!("{CA_DIR}/ca.crt")),
        token_file: crate::auth::enabled(kvc).then(|| format!("{TOKEN_DIR}/token")),
        schedule: b.schedule.clone(),
        retention_keep: b.retention.keep,
        retention_max_age_ms,
        continuous: b.continuous,
        flush_interval_ms: u64::from(b.flush_interval_seconds.max(1)) * 1000,
        scratch: SCRATCH_DIR.into(),
    }))
}
