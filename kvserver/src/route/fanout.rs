//! Requests that span every partition (listing, prefix delete, batch get): the
//! scope a request asks for, and running one sub-request per partition where
//! the partition is. A sub-request is the client's request narrowed to one
//! partition with `partition=<p>` (and, for a batch get, only that partition's
//! keys): served here when this node hosts the partition, else relayed as HTTP
//! to a host (marked `x-kv-routed-by` and carrying the client's credential,
//! which the host authenticates and authorizes again, as for a single key). The
//! handler merges the answers (`crate::api::range`).
//!
//! What a spanning request guarantees: each partition's part is what a request
//! to that partition alone would give (linearizable by default, atomic within
//! the partition for a prefix delete); the parts are not one snapshot across
//! partitions (docs/partitions.md).

use std::sync::Arc;

use axum::body::Bytes;
use axum::response::Response;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use super::target::Located;
use super::target::Target;
use super::target::locate_partition;
use crate::api::ApiError;
use crate::api::AppState;
use crate::api::Raw;
use crate::placement::PartitionId;
use crate::placement::map::PlacementMap;

/// Sub-requests in flight at once for one spanning request.
const CONCURRENCY: usize = 16;

/// What a request spans.
pub enum Scope {
    /// One group: a cluster of one partition, or the partition `partition=`
    /// names (served here, or already answered by the host it was relayed to).
    One(Located),
    /// Every partition of a partitioned cluster.
    All(Arc<PlacementMap>),
}

/// What a request that names `partition` (or not) asks for, checked.
enum Asked {
    /// The cluster's one group (a cluster of one partition).
    Cluster,
    /// Partition `p` of a partitioned cluster.
    One(Arc<PlacementMap>, PartitionId),
    /// Every partition.
    All(Arc<PlacementMap>),
}

fn asked(state: &AppState, partition: Option<u32>) -> Result<Asked, ApiError> {
    match (super::target::placement(state)?, partition) {
        (None, None | Some(0)) => Ok(Asked::Cluster),
        (None, Some(p)) => Err(ApiError::bad(
            "invalid_parameter",
            format!("partition: {p} is not a partition of this cluster, which has one (0)"),
        )),
        (Some(map), Some(p)) if p >= map.partitions => Err(ApiError::bad(
            "invalid_parameter",
            format!(
                "partition: {p} is not a partition of this cluster (0..{})",
                map.partitions
            ),
        )),
        (Some(map), Some(p)) => Ok(Asked::One(map, p)),
        (Some(map), None) => Ok(Asked::All(map)),
    }
}

/// The scope of a request that names `partition` (or not).
pub async fn scope(state: &AppState, raw: &Raw, partition: Option<u32>) -> Result<Scope, ApiError> {
    Ok(match asked(state, partition)? {
        Asked::Cluster => Scope::One(Located::Here(Target::cluster(state))),
        Asked::One(map, p) => Scope::One(locate_partition(state, raw, &map, p).await?),
        Asked::All(map) => Scope::All(map),
    })
}

/// Where a request for a group's whole state (a backup) is served: it is
/// never relayed buffered, so it says where instead of answering.
pub enum Whole {
    /// By this group, on this node: the cluster's, or a partition's it hosts.
    Group(Target),
    /// Partition `p`, by a node that hosts it.
    Relay(PartitionId, Arc<PlacementMap>),
    /// Every partition.
    All(Arc<PlacementMap>),
}

/// The scope of a request for a whole state that names `partition` (or not).
pub fn whole(state: &AppState, raw: &Raw, partition: Option<u32>) -> Result<Whole, ApiError> {
    Ok(match asked(state, partition)? {
        Asked::Cluster => Whole::Group(Target::cluster(state)),
        Asked::One(map, p) => match super::target::here(state, raw, &map, p) {
            Some(t) => Whole::Group(t),
            None if super::target::routed(raw) => {
                return Err(super::target::wrong_node(state, &map, p));
            }
            None => Whole::Relay(p, map),
        },
        Asked::All(map) => Whole::All(map),
    })
}

/// One partition's part, served on this node.
pub enum Part<T> {
    Done(T),
    /// Answered by another node (the partition's leader, through the relay of
    /// `super::read` or `super::write`): decoded like a relayed part.
    Answer(Response),
}

/// Why a spanning request failed: an error of this node, or a part's answer
/// that is not a success (returned to the client as it is: it names the
/// partition's problem, e.g. a 503 while it elects).
pub enum Failed {
    Api(ApiError),
    Answer(Response),
}

impl From<ApiError> for Failed {
    fn from(e: ApiError) -> Self {
        Failed::Api(e)
    }
}

/// `path_and_query` with `partition=p` added (it holds none: the request spans
/// every partition).
pub fn narrowed(path_and_query: &str, p: PartitionId) -> String {
    let sep = if path_and_query.contains('?') {
        '&'
    } else {
        '?'
    };
    format!("{path_and_query}{sep}partition={p}")
}

/// Runs one sub-request per entry of `parts` (partition, and the body its
/// sub-request carries) and returns the parts' answers in the order given.
/// `here` serves a part on this node given its group.
pub async fn each<T, F, Fut>(
    state: &AppState,
    raw: &Raw,
    map: &PlacementMap,
    parts: Vec<(PartitionId, Bytes)>,
    here: F,
) -> Result<Vec<(PartitionId, T)>, Failed>
where
    T: DeserializeOwned,
    F: Fn(PartitionId, Target, Raw) -> Fut,
    Fut: std::future::Future<Output = Result<Part<T>, ApiError>>,
{
    let here = &here;
    let results: Vec<Result<(PartitionId, T), Failed>> = futures_util::stream::iter(parts)
        .map(|(p, body)| async move {
            let sub = Raw {
                method: raw.method.clone(),
                path_and_query: narrowed(&raw.path_and_query, p),
                headers: raw.headers.clone(),
                body,
                principal: raw.principal.clone(),
            };
            let answer = match locate_partition(state, &sub, map, p).await? {
                Located::Here(target) => match here(p, target, sub).await? {
                    Part::Done(t) => return Ok((p, t)),
                    Part::Answer(resp) => resp,
                },
                Located::Relayed(resp) => resp,
            };
            decode(answer).await.map(|t| (p, t))
        })
        .buffered(CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect()
}

/// A part answered by another node: its JSON if it succeeded.
async fn decode<T: DeserializeOwned>(resp: Response) -> Result<T, Failed> {
    if !resp.status().is_success() {
        return Err(Failed::Answer(resp));
    }
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .map_err(|e| ApiError::Internal(format!("a partition's answer was cut: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        Failed::Api(ApiError::Internal(format!(
            "a partition's answer does not decode: {e}"
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_narrowed_request_names_its_partition() {
        assert_eq!(narrowed("/v1/kv", 3), "/v1/kv?partition=3");
        assert_eq!(
            narrowed("/v1/kv?prefix=a%2F&limit=5", 0),
            "/v1/kv?prefix=a%2F&limit=5&partition=0"
        );
        assert_eq!(narrowed("/v1/batch/get", 15), "/v1/batch/get?partition=15");
    }
}
