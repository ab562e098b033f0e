//! The API's data types of `GET /v1/watch`: its query, the events' data, and
//! the position a watch of a partitioned cluster resumes from.
//!
//! A partitioned cluster has one revision sequence per partition and no order
//! across them, so a watch spanning partitions cannot resume from one number:
//! its position is one revision per partition, written `p:rev,p:rev,…`
//! ([`WatchPosition`]). It is the SSE `id` of the stream's events, so a client
//! that reconnects with `Last-Event-ID` resumes every partition exactly after
//! the last revision it received of it.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::Serialize;
use utoipa::IntoParams;
use utoipa::ToSchema;

use super::KeyValue;

/// Response header of a watch: where it starts (the revision, or in a
/// partitioned cluster the position), so a client that is cut off before the
/// first event resumes from there.
pub const WATCH_FROM: &str = "x-kv-watch-from";

/// Query of `GET /v1/watch`.
#[derive(Debug, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WatchQuery {
    /// Only keys starting with this prefix (default: all keys).
    #[serde(default)]
    pub prefix: Option<String>,
    /// Only this exact key.
    #[serde(default)]
    pub key: Option<String>,
    /// Start after this revision (default: now). The `Last-Event-ID` header works
    /// too. In a partitioned cluster only for a watch of one partition (`key=` or
    /// `partition=`); a watch of several resumes with `from_revisions`.
    #[serde(default)]
    pub from_revision: Option<u64>,
    /// Partitioned clusters: start each partition after its revision here,
    /// `p:rev,p:rev,…` (the SSE `id` of the last event received; partitions not
    /// named start now). The `Last-Event-ID` header works too.
    #[serde(default)]
    pub from_revisions: Option<String>,
    /// Partitioned clusters: watch only this partition.
    #[serde(default)]
    pub partition: Option<u32>,
    /// Partitioned clusters: watch only these partitions (comma-separated).
    #[serde(default)]
    pub partitions: Option<String>,
    /// Include the previous version of the key in each event (default true).
    #[serde(default)]
    pub prev_kv: Option<bool>,
}

/// The JSON `data` of one watch event (`event: put` or `event: delete`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WatchEventBody {
    /// The revision of the change: the cluster's, or in a partitioned cluster
    /// its partition's.
    pub revision: u64,
    /// `put` or `delete`.
    #[serde(rename = "type")]
    pub kind: String,
    pub key: String,
    /// The key after a put.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv: Option<KeyValue>,
    /// The key before the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_kv: Option<KeyValue>,
    /// When the change was made (unix ms, the leader's clock): what continuous
    /// backup records so a restore can stop at a point in time. Absent only for
    /// deletes older than the release that started recording it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_ms: Option<u64>,
    /// The partition of the key (partitioned clusters only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<u32>,
}

/// The JSON `data` of the final `event: dropped` of a watch stream.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DroppedBody {
    pub reason: String,
    /// Reconnect with `from_revision` set to this to continue without a gap (in a
    /// partitioned cluster: the highest of `resume_from_revisions`).
    pub resume_from_revision: u64,
    /// Partitioned clusters: reconnect with `from_revisions` (or `Last-Event-ID`)
    /// set to this to continue every partition without a gap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_from_revisions: Option<String>,
}

/// Where a watch of a partitioned cluster stands: the last revision delivered
/// (or skipped as not matching) of each partition. Written `p:rev,p:rev,…` in
/// partition order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchPosition(pub BTreeMap<u32, u64>);

impl WatchPosition {
    /// Reads `p:rev,p:rev,…`; a partition named twice, or anything else, is an
    /// error that says what is wrong.
    pub fn parse(s: &str) -> Result<WatchPosition, String> {
        let mut out = BTreeMap::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (p, r) = part
                .split_once(':')
                .ok_or_else(|| format!("`{part}` is not partition:revision"))?;
            let p: u32 = p
                .trim()
                .parse()
                .map_err(|_| format!("`{p}` in `{part}` is not a partition number"))?;
            let r: u64 = r
                .trim()
                .parse()
                .map_err(|_| format!("`{r}` in `{part}` is not a revision"))?;
            if out.insert(p, r).is_some() {
                return Err(format!("partition {p} is named twice"));
            }
        }
        Ok(WatchPosition(out))
    }

    /// The highest revision of any partition (0 when empty).
    pub fn highest(&self) -> u64 {
        self.0.values().copied().max().unwrap_or(0)
    }
}

impl std::fmt::Display for WatchPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (p, r)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{p}:{r}")?;
        }
        Ok(())
    }
}

/// Reads a comma-separated list of partition numbers (`partitions=`).
pub fn parse_partition_list(s: &str) -> Result<Vec<u32>, String> {
    let mut out: Vec<u32> = Vec::new();
    for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let p: u32 = p
            .parse()
            .map_err(|_| format!("`{p}` is not a partition number"))?;
        if !out.contains(&p) {
            out.push(p);
        }
    }
    if out.is_empty() {
        return Err("names no partition".into());
    }
    out.sort_unstable();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_reads_back_what_it_writes() {
        let p = WatchPosition::parse("3:40, 0:7,15:0").expect("valid");
        assert_eq!(p.to_string(), "0:7,3:40,15:0");
        assert_eq!(p.highest(), 40);
        assert_eq!(
            WatchPosition::parse("").expect("valid"),
            WatchPosition::default()
        );
    }

    #[test]
    fn a_bad_position_says_what_is_wrong() {
        assert!(
            WatchPosition::parse("3")
                .expect_err("refused")
                .contains("partition:revision")
        );
        assert!(
            WatchPosition::parse("x:1")
                .expect_err("refused")
                .contains("partition number")
        );
        assert!(
            WatchPosition::parse("1:-4")
                .expect_err("refused")
                .contains("revision")
        );
        assert!(
            WatchPosition::parse("1:2,1:3")
                .expect_err("refused")
                .contains("twice")
        );
        assert_eq!(parse_partition_list("5,1,5").expect("valid"), vec![1, 5]);
        assert!(parse_partition_list(",").is_err());
        assert!(parse_partition_list("1,a").is_err());
    }
}
