//! The `BackupFailing` condition, derived (purely) from what the backup agent
//! reports in `status.backup`: failures in a row, or an agent that stopped
//! reporting.

use super::crd::BackupSpec;
use super::crd::BackupStatus;

/// How long without a report before the agent counts as not working.
pub const REPORT_STALE_MS: u64 = 120_000;

/// `(failing, reason, message)` of `BackupFailing`; `None` without `spec.backup`.
pub fn backup_failing(
    spec: Option<&BackupSpec>,
    status: Option<&BackupStatus>,
    now_ms: u64,
) -> Option<(bool, &'static str, String)> {
    spec?;
    let Some(s) = status else {
        return Some((
            false,
            "NotYetReported",
            "the backup agent has not reported yet".into(),
        ));
    };
    let reported = s
        .reported_at
        .as_deref()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp_millis().max(0) as u64);
    match reported {
        Some(at) if now_ms.saturating_sub(at) > REPORT_STALE_MS => Some((
            true,
            "AgentNotReporting",
            format!(
                "the backup agent last reported {} s ago (is its pod, <cluster>-backup, running?)",
                now_ms.saturating_sub(at) / 1000
            ),
        )),
        _ if s.consecutive_failures > 0 => Some((
            true,
            "BackupErrors",
            format!(
                "{} failures in a row; last: {}",
                s.consecutive_failures,
                s.last_error.as_deref().unwrap_or("unknown")
            ),
        )),
        _ => Some((
            false,
            "BackupsHealthy",
            match (&s.last_success, s.shipped_revision) {
                (Some(l), Some(r)) => format!(
                    "last full backup at revision {} ({}); continuous backup at revision {r}",
                    l.revision, l.time
                ),
                (Some(l), None) => {
                    format!("last full backup at revision {} ({})", l.revision, l.time)
                }
                (None, Some(r)) => format!("continuous backup at revision {r}"),
                (None, None) => "no backup taken yet".into(),
            },
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(failures: u32, reported: &str) -> BackupStatus {
        BackupStatus {
            consecutive_failures: failures,
            last_error: (failures > 0).then(|| "destination: access denied".into()),
            reported_at: Some(reported.into()),
            ..Default::default()
        }
    }

    #[test]
    fn failing_when_errors_repeat_or_reports_stop() {
        let spec = BackupSpec::default();
        let t = chrono::DateTime::parse_from_rfc3339("2026-12-03T07:00:00.000Z")
            .expect("time")
            .timestamp_millis() as u64;
        assert_eq!(backup_failing(None, None, t), None);
        assert_eq!(
            backup_failing(Some(&spec), None, t).map(|c| c.0),
            Some(false)
        );
        let ok = status(0, "2026-12-03T07:00:00.000Z");
        assert_eq!(
            backup_failing(Some(&spec), Some(&ok), t + 1000).map(|c| c.1),
            Some("BackupsHealthy")
        );
        let bad = status(3, "2026-12-03T07:00:00.000Z");
        let c = backup_failing(Some(&spec), Some(&bad), t + 1000).expect("condition");
        assert!(
            c.0 && c.1 == "BackupErrors" && c.2.contains("access denied"),
            "{c:?}"
        );
        let c = backup_failing(Some(&spec), Some(&ok), t + REPORT_STALE_MS + 1).expect("condition");
        assert!(c.0 && c.1 == "AgentNotReporting", "{c:?}");
    }
}
