//! `GET /v1/watch`: a change feed as Server-Sent Events.
//!
//! Each event is one change of one key: `event: put|delete`, `data:` JSON
//! (`revision`, `type`, `key`, `kv`, `prev_kv`), and `id: <revision>` on the
//! last event of each revision, so `Last-Event-ID` (or `from_revision`) resumes
//! exactly after it. Events come from this node's applied log, which is the
//! same sequence on every node: a watcher keeps streaming through leader
//! changes, and one that reconnects elsewhere resumes without gap or
//! duplicate. A watcher is fed through a bounded buffer; one that falls behind
//! gets `event: dropped` (with the revision to resume from) and the stream ends,
//! so a stalled reader costs bounded memory and never slows others.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::response::sse::Event;
use axum::response::sse::KeepAlive;
use axum::response::sse::Sse;
use futures_util::Stream;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use super::ApiError;
use super::AppState;
use super::Q;
use crate::command::Change;
use crate::command::EventKind;
use crate::command::StoredKv;
use crate::model::DroppedBody;
use crate::model::WatchEventBody;
use crate::model::WatchQuery;
use crate::store::watch::Feed;

/// History is read in pages of this many revisions.
const HISTORY_PAGE: u64 = 1000;

struct Filter {
    prefix: Option<String>,
    key: Option<String>,
    prev_kv: bool,
}

impl Filter {
    fn matches(&self, e: &Change) -> bool {
        self.key.as_ref().is_none_or(|k| *k == e.key)
            && self
                .prefix
                .as_ref()
                .is_none_or(|p| e.key.starts_with(p.as_str()))
    }
}

/// Renders the events of one revision group; the last one carries the SSE id.
fn render(events: &[&Change], filter: &Filter) -> Vec<Event> {
    let n = events.len();
    events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let body = WatchEventBody {
                revision: e.revision,
                kind: match e.kind {
                    EventKind::Put => "put".into(),
                    EventKind::Delete => "delete".into(),
                },
                key: e.key.clone(),
                kv: e.kv.clone().map(StoredKv::into_api),
                prev_kv: if filter.prev_kv {
                    e.prev.clone().map(StoredKv::into_api)
                } else {
                    None
                },
            };
            let data = serde_json::to_string(&body).unwrap_or_else(|_| "{}".into());
            let ev = Event::default().event(body.kind).data(data);
            if i + 1 == n {
                ev.id(e.revision.to_string())
            } else {
                ev
            }
        })
        .collect()
}

/// Feeds `out` with matching events after `from`, first from history, then live.
/// Returns the revision a client should resume from, and why it stopped, if it did.
async fn produce(
    state: AppState,
    mut feed: tokio::sync::broadcast::Receiver<Feed>,
    filter: Filter,
    from: u64,
    upto: u64,
    out: mpsc::Sender<Event>,
) {
    let mut sent = from;
    let mut stop = state.shutdown.clone();
    // Sends one revision's events; false when the watcher is gone or too slow.
    let send = |events: Vec<&Change>, out: &mpsc::Sender<Event>| -> Result<(), &'static str> {
        for ev in render(&events, &filter) {
            // One slot stays reserved for the final `dropped` event.
            if out.capacity() <= 1 {
                return Err("slow consumer: the watcher's buffer is full");
            }
            match out.try_send(ev) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Err("slow consumer: the watcher's buffer is full");
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(""),
            }
        }
        Ok(())
    };
    let emit = |batch: &[Change], sent: &mut u64| -> Result<(), &'static str> {
        let mut i = 0;
        while i < batch.len() {
            let rev = batch[i].revision;
            let mut group = Vec::new();
            while i < batch.len() && batch[i].revision == rev {
                if rev > *sent && filter.matches(&batch[i]) {
                    group.push(&batch[i]);
                }
                i += 1;
            }
            if rev > *sent {
                if !group.is_empty() {
                    send(group, &out)?;
                }
                *sent = rev;
            }
        }
        Ok(())
    };
    // History first, page by page, then the live feed (subscribed before `upto` was read).
    let mut cursor = from;
    let mut reason: Option<String> = None;
    while cursor < upto && reason.is_none() {
        match state.store.history(cursor, upto, HISTORY_PAGE).await {
            Ok(h) if h.compacted > cursor => {
                reason = Some(format!(
                    "history up to revision {} was compacted while reading it",
                    h.compacted
                ));
            }
            Ok(h) => {
                if let Err(r) = emit(&h.events, &mut sent) {
                    reason = Some(r.to_string());
                }
                cursor = (cursor + HISTORY_PAGE).min(upto);
                sent = sent.max(cursor);
            }
            Err(e) => reason = Some(format!("reading history failed: {e}")),
        }
    }
    while reason.is_none() {
        tokio::select! {
            _ = stop.wait_for(|v| *v) => reason = Some("server shutting down".into()),
            msg = feed.recv() => match msg {
                Ok(Feed::Events(batch)) => {
                    if let Err(r) = emit(&batch, &mut sent) {
                        reason = Some(r.to_string());
                    }
                }
                Ok(Feed::Reset { revision }) => {
                    reason = Some(format!("this node installed a snapshot at revision {revision}; resume on another node or re-list"));
                }
                Err(RecvError::Lagged(n)) => reason = Some(format!("slow consumer: fell {n} batches behind the feed")),
                Err(RecvError::Closed) => reason = Some("server shutting down".into()),
            },
        }
    }
    let reason = reason.unwrap_or_default();
    if reason.is_empty() {
        return; // the watcher went away
    }
    tracing::info!(reason, resume_from = sent, "watch stream dropped");
    let body = DroppedBody {
        reason,
        resume_from_revision: sent,
    };
    let data = serde_json::to_string(&body).unwrap_or_else(|_| "{}".into());
    // The reserved slot holds the final event even when the watcher stopped reading.
    let _ = out.try_send(Event::default().event("dropped").data(data));
}

/// `GET /v1/watch`: streams changes as Server-Sent Events.
#[utoipa::path(
    get, path = "/v1/watch", tag = "watch",
    params(WatchQuery, ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this revision")),
    responses(
        (status = 200, description = "`text/event-stream`: events `put` / `delete` with WatchEventBody data, a final `dropped` with DroppedBody when the stream is cut", content_type = "text/event-stream", body = WatchEventBody),
        (status = 400, description = "Invalid parameters", body = crate::model::ErrorBody),
        (status = 410, description = "The requested revision was compacted; `oldest_revision` says where history starts", body = crate::model::ErrorBody),
        (status = 503, description = "Node not initialized", body = crate::model::ErrorBody),
    )
)]
pub async fn watch(
    State(state): State<AppState>,
    super::auth::Caller(caller): super::auth::Caller,
    headers: HeaderMap,
    Q(q): Q<WatchQuery>,
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
    let last_event_id = match headers
        .get("last-event-id")
        .map(|v| v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()))
    {
        None => None,
        Some(Some(v)) => Some(v),
        Some(None) => {
            return Err(ApiError::bad(
                "invalid_parameter",
                "Last-Event-ID must be a revision number",
            ));
        }
    };
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
    let filter = Filter {
        prefix: q.prefix,
        key: q.key,
        prev_kv: q.prev_kv.unwrap_or(true),
    };
    let (tx, rx) = mpsc::channel(state.config.watch.watcher_buffer + 1);
    tokio::spawn(produce(state.clone(), feed, filter, from, now, tx));
    let stream = events(rx);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

fn events(rx: mpsc::Receiver<Event>) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
    )
}
