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

/// Renders the events of one revision group, each with its size; the last one
/// carries the SSE id.
fn render(events: &[&Change], filter: &Filter) -> Vec<(Event, usize)> {
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
                time_ms: e.at_ms,
            };
            let data = serde_json::to_string(&body).unwrap_or_else(|_| "{}".into());
            let size = data.len();
            let ev = Event::default().event(body.kind).data(data);
            let ev = if i + 1 == n {
                ev.id(e.revision.to_string())
            } else {
                ev
            };
            (ev, size)
        })
        .collect()
}

/// Where one watcher's events go.
struct Sink {
    tx: mpsc::Sender<(Event, usize)>,
    queued: std::sync::Arc<Queued>,
    slot: super::limits::WatchSlot,
}

/// Bytes of events waiting in one watcher's buffer, against its limit
/// (`limits.watcher_buffer_bytes`): counted in when queued, out when the
/// stream hands them to the connection.
struct Queued {
    bytes: std::sync::atomic::AtomicUsize,
    max: usize,
    /// Bytes queued for every watcher of the node.
    node: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// `limits.watch_buffer_total_bytes`, shared out among the open watchers.
    node_max: usize,
    /// Watch streams open on the node.
    watchers: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// The least share a watcher gets: room for two of the largest events.
    floor: usize,
}

impl Queued {
    /// Counts `size` more bytes in, unless that passes this watcher's limit:
    /// its own (`limits.watcher_buffer_bytes`), or its share of the node's
    /// (`limits.watch_buffer_total_bytes` over the open watchers, at least
    /// `floor`). A watcher that keeps up never holds more than an event or two;
    /// stalled ones reach their share and are cut off, so they cannot use up
    /// the node's budget and starve the watchers that read.
    fn add(&self, size: usize) -> bool {
        use std::sync::atomic::Ordering;
        let open = self.watchers.load(Ordering::Relaxed).max(1);
        let share = (self.node_max / open).max(self.floor);
        if self.bytes.load(Ordering::Relaxed).saturating_add(size) > self.max.min(share) {
            return false;
        }
        self.bytes.fetch_add(size, Ordering::Relaxed);
        self.node.fetch_add(size, Ordering::Relaxed);
        true
    }

    fn sub(&self, size: usize) {
        use std::sync::atomic::Ordering;
        self.bytes.fetch_sub(size, Ordering::Relaxed);
        self.node.fetch_sub(size, Ordering::Relaxed);
    }
}

/// The receiving end of a watcher's buffer; events still queued when the
/// stream is dropped (the client went away) are counted out here.
struct Outbox {
    rx: mpsc::Receiver<(Event, usize)>,
    queued: std::sync::Arc<Queued>,
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.rx.close();
        while let Ok((_, size)) = self.rx.try_recv() {
            self.queued.sub(size);
        }
    }
}

/// Feeds `out` with matching events after `from`, first from history, then live.
/// Returns the revision a client should resume from, and why it stopped, if it did.
async fn produce(
    state: AppState,
    mut feed: tokio::sync::broadcast::Receiver<Feed>,
    filter: Filter,
    from: u64,
    upto: u64,
    sink: Sink,
) {
    // The slot is held while this watcher streams: the node's and the principal's
    // watcher counts.
    let Sink {
        tx: out,
        queued,
        slot: _slot,
    } = sink;
    let mut sent = from;
    let mut stop = state.shutdown.clone();
    // Sends one revision's events; false when the watcher is gone or too slow.
    let send =
        |events: Vec<&Change>, out: &mpsc::Sender<(Event, usize)>| -> Result<(), &'static str> {
            for (ev, size) in render(&events, &filter) {
                // One slot stays reserved for the final `dropped` event.
                if out.capacity() <= 1 || !queued.add(size) {
                    return Err("slow consumer: the watcher's buffer is full");
                }
                match out.try_send((ev, size)) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        queued.sub(size);
                        return Err("slow consumer: the watcher's buffer is full");
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        queued.sub(size);
                        return Err("");
                    }
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
            // A watcher that disconnects from a quiet prefix is noticed here, not
            // at the next matching event, so its slot is freed.
            _ = out.closed() => reason = Some(String::new()),
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
    let _ = out.try_send((Event::default().event("dropped").data(data), 0));
}

/// `GET /v1/watch`: streams changes as Server-Sent Events.
#[utoipa::path(
    get, path = "/v1/watch", tag = "watch",
    params(WatchQuery, ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this revision")),
    responses(
        (status = 200, description = "`text/event-stream`: events `put` / `delete` with WatchEventBody data, a final `dropped` with DroppedBody when the stream is cut", content_type = "text/event-stream", body = WatchEventBody),
        (status = 400, description = "Invalid parameters", body = crate::model::ErrorBody),
        (status = 410, description = "The requested revision was compacted; `oldest_revision` says where history starts", body = crate::model::ErrorBody),
        (status = 429, description = "The principal holds its limit of watch streams on this node (`too_many_watchers`)", body = crate::model::ErrorBody),
        (status = 503, description = "Node not initialized, or at its limit of watch streams (`overloaded`)", body = crate::model::ErrorBody),
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
    crate::route::unpartitioned(&state)?;
    if !state.initialized() {
        return Err(ApiError::NotInitialized);
    }
    let slot = state.gates.watchers.acquire(&state, &caller.name)?;
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
    let queued = std::sync::Arc::new(Queued {
        bytes: std::sync::atomic::AtomicUsize::new(0),
        max: state.config.limits.watcher_buffer_bytes,
        node: state.gates.watch_bytes.clone(),
        node_max: state.config.limits.watch_buffer_total_bytes,
        watchers: state.gates.watchers.count(),
        floor: 2 * (state.config.max_value_bytes + crate::command::MAX_KEY_BYTES),
    });
    tokio::spawn(produce(
        state.clone(),
        feed,
        filter,
        from,
        now,
        Sink {
            tx,
            queued: queued.clone(),
            slot,
        },
    ));
    let stream = events(rx, queued);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

fn events(
    rx: mpsc::Receiver<(Event, usize)>,
    queued: std::sync::Arc<Queued>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold(Outbox { rx, queued }, |mut out| async move {
        let (e, size) = out.rx.recv().await?;
        out.queued.sub(size);
        Some((Ok(e), out))
    })
}
