//! `GET /v1/watch`: a change feed as Server-Sent Events.
//!
//! Each event is one change of one key: `event: put|delete`, `data:` JSON
//! (`revision`, `type`, `key`, `kv`, `prev_kv`), and `id: <revision>` on the
//! last event of each revision, so `Last-Event-ID` (or `from_revision`) resumes
//! exactly after it. Events come from this node's applied log, which is the
//! same sequence on every node: a watcher keeps streaming through leader
//! changes, and one that reconnects elsewhere resumes without gap or
//! duplicate. A watcher is fed through a buffer bounded in events
//! (`watch.watcher_buffer`) and bytes (`limits.watcher_buffer_bytes`); one that
//! falls behind gets `event: dropped` (with the revision to resume from) and the
//! stream ends, so a stalled reader costs bounded memory and never slows
//! others. Watchers are counted per node and per principal (`limits.max_watchers*`).
//!
//! A partitioned cluster's watch merges its partitions' changes
//! ([`merged`]): each event names its partition, and the id is the stream's
//! position, one revision per partition (`model::WatchPosition`).
//!
//! # Layout
//! - [`sink`]: the watcher's bounded buffer, the ids, the final `dropped`.
//! - [`local`]: one group's history, then its live feed, on this node.
//! - [`merged`]: a watch spanning partitions: its parts here and on other
//!   nodes, resumed elsewhere when a replica moves.
//! - [`plan`]: which partitions such a watch spans, where it starts, and which
//!   node serves each part.

mod local;
mod merged;
mod plan;
mod sink;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::HeaderValue;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::response::sse::KeepAlive;
use axum::response::sse::Sse;

use super::ApiError;
use super::AppState;
use super::Q;
use super::Raw;
use crate::model::WATCH_FROM;
use crate::model::WatchQuery;
use sink::Filter;
use sink::Ids;

/// How often an idle stream sends a keep-alive comment (a relayed part reads
/// with a timeout of three of them, see `crate::node`).
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `GET /v1/watch`: streams changes as Server-Sent Events.
#[utoipa::path(
    get, path = "/v1/watch", tag = "watch",
    params(WatchQuery, ("Last-Event-ID" = Option<String>, Header, description = "Resume after this revision (a partitioned cluster: after this position, `p:rev,p:rev,…`, the id of the last event received)")),
    responses(
        (status = 200, description = "`text/event-stream`: events `put` / `delete` with WatchEventBody data, each revision's last carrying the id to resume from (the revision, or in a partitioned cluster the position `p:rev,…`), a final `dropped` with DroppedBody when the stream is cut. Header `x-kv-watch-from` says where the stream starts.", content_type = "text/event-stream", body = crate::model::WatchEventBody),
        (status = 400, description = "Invalid parameters", body = crate::model::ErrorBody),
        (status = 410, description = "The requested revision was compacted; `oldest_revision` says where history starts", body = crate::model::ErrorBody),
        (status = 429, description = "The principal holds its limit of watch streams on this node (`too_many_watchers`)", body = crate::model::ErrorBody),
        (status = 503, description = "Node not initialized, at its limit of watch streams (`overloaded`), or a partition is forming or has no reachable host", body = crate::model::ErrorBody),
    )
)]
pub async fn watch(
    State(state): State<AppState>,
    super::auth::Caller(caller): super::auth::Caller,
    headers: HeaderMap,
    Q(q): Q<WatchQuery>,
    raw: Raw,
) -> Result<Response, ApiError> {
    if let Some(k) = &q.key {
        super::kv::validate_key(k)?;
    }
    if q.key.is_some() && q.prefix.is_some() {
        return Err(ApiError::bad(
            "invalid_parameter",
            "give key or prefix, not both",
        ));
    }
    // A watch reaching outside the caller's grant is refused, never filtered.
    let access = match (&q.key, &q.prefix) {
        (Some(k), _) => crate::auth::Access::Read(k),
        (None, p) => crate::auth::Access::ReadPrefix(p.as_deref().unwrap_or("")),
    };
    crate::route::authorize(&state, &caller, &[access])?;
    if !state.initialized() {
        return Err(ApiError::NotInitialized);
    }
    let last_event_id = match headers.get("last-event-id").map(|v| v.to_str()) {
        None => None,
        Some(Ok(v)) => Some(v.trim().to_string()),
        Some(Err(_)) => {
            return Err(ApiError::bad(
                "invalid_parameter",
                "Last-Event-ID must be a revision number, or a position p:rev,p:rev",
            ));
        }
    };
    let filter = Arc::new(Filter {
        prefix: q.prefix.clone(),
        key: q.key.clone(),
        prev_kv: q.prev_kv.unwrap_or(true),
    });
    match crate::route::target::placement(&state)? {
        Some(map) => merged::open(state, raw, &q, last_event_id, filter, map).await,
        None => one_group(state, &caller.name, &q, last_event_id, filter).await,
    }
}

/// The watch of a cluster of one partition: its group's changes.
async fn one_group(
    state: AppState,
    principal: &str,
    q: &WatchQuery,
    last_event_id: Option<String>,
    filter: Arc<Filter>,
) -> Result<Response, ApiError> {
    if q.partition.is_some_and(|p| p != 0) || q.partitions.is_some() || q.from_revisions.is_some() {
        return Err(ApiError::bad(
            "invalid_parameter",
            "partition, partitions and from_revisions are for partitioned clusters; this one has one partition: use from_revision",
        ));
    }
    let last_event_id = match last_event_id {
        None => None,
        Some(v) => Some(v.parse::<u64>().map_err(|_| {
            ApiError::bad(
                "invalid_parameter",
                "Last-Event-ID must be a revision number",
            )
        })?),
    };
    let slot = state.gates.watchers.acquire(&state, principal)?;
    // Subscribe before reading the current revision: nothing applied after it can be missed.
    let feed = state.store.subscribe();
    let now = state.store.revision();
    let from = q.from_revision.or(last_event_id).unwrap_or(now);
    let first = state.store.history(from, from, 0).await?;
    if from < first.compacted {
        return Err(ApiError::Gone {
            requested: from,
            oldest: first.compacted + 1,
            revision: now,
        });
    }
    let (sink, outbox) = sink::channel(&state, Ids::Revision);
    let sink = Arc::new(sink);
    let source = local::Source {
        store: state.store.clone(),
        partition: None,
        group: None,
    };
    let stop = state.shutdown.clone();
    tokio::spawn(async move {
        // The slot is held while this watcher streams: the node's and the
        // principal's watcher counts.
        let _slot = slot;
        let (ended, sent) =
            local::produce(state, source, feed, filter, (from, now), sink.clone(), stop).await;
        match ended {
            local::Ended::Gone => {}
            local::Ended::Stop(r) | local::Ended::Retry(r) => sink.dropped(r, sent),
        }
    });
    Ok(stream_response(outbox, &from.to_string()))
}

/// The SSE answer streaming `outbox`, saying where it starts.
fn stream_response(outbox: sink::Outbox, from: &str) -> Response {
    let mut resp = Sse::new(outbox.stream())
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response();
    if let Ok(v) = HeaderValue::from_str(from) {
        resp.headers_mut().insert(WATCH_FROM, v);
    }
    resp
}
