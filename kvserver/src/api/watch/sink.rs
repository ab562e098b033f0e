//! Where a watch's events go: the watcher's bounded buffer (in events and in
//! bytes, against its own limit and its share of the node's), the SSE ids that
//! let a client resume, and the final `dropped` event. One sink per watch
//! stream; the parts of a watch spanning partitions (`super::merged`) all send
//! into the same sink, so the stream counts once against the limits however
//! many partitions it spans.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;

use axum::response::sse::Event;
use futures_util::Stream;
use tokio::sync::mpsc;

use super::AppState;
use crate::command::Change;
use crate::command::EventKind;
use crate::command::StoredKv;
use crate::model::DroppedBody;
use crate::model::WatchEventBody;
use crate::model::WatchPosition;

/// Which changes a watcher asked for.
pub(super) struct Filter {
    pub prefix: Option<String>,
    pub key: Option<String>,
    pub prev_kv: bool,
}

impl Filter {
    pub fn matches(&self, e: &Change) -> bool {
        self.key.as_ref().is_none_or(|k| *k == e.key)
            && self
                .prefix
                .as_ref()
                .is_none_or(|p| e.key.starts_with(p.as_str()))
    }

    /// `e` as the API shows it, in `partition`.
    pub fn body(&self, e: &Change, partition: Option<u32>) -> WatchEventBody {
        WatchEventBody {
            revision: e.revision,
            kind: match e.kind {
                EventKind::Put => "put".into(),
                EventKind::Delete => "delete".into(),
            },
            key: e.key.clone(),
            kv: e.kv.clone().map(StoredKv::into_api),
            prev_kv: if self.prev_kv {
                e.prev.clone().map(StoredKv::into_api)
            } else {
                None
            },
            time_ms: e.at_ms,
            partition,
        }
    }
}

/// How a stream's events are numbered (their SSE `id`).
pub(super) enum Ids {
    /// By revision: the cluster's one group.
    Revision,
    /// By position, one revision per partition: a partitioned cluster.
    Position(Mutex<WatchPosition>),
}

/// Bytes of events waiting in one watcher's buffer, against its limit
/// (`limits.watcher_buffer_bytes`): counted in when queued, out when the
/// stream hands them to the connection.
struct Queued {
    bytes: AtomicUsize,
    max: usize,
    /// Bytes queued for every watcher of the node.
    node: Arc<AtomicUsize>,
    /// `limits.watch_buffer_total_bytes`, shared out among the open watchers.
    node_max: usize,
    /// Watch streams open on the node.
    watchers: Arc<AtomicUsize>,
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
        self.bytes.fetch_sub(size, Ordering::Relaxed);
        self.node.fetch_sub(size, Ordering::Relaxed);
    }
}

/// Why events could not be sent.
pub(super) const SLOW: &str = "slow consumer: the watcher's buffer is full";

/// The sending end of one watch stream.
pub(super) struct Sink {
    tx: mpsc::Sender<(Event, usize)>,
    queued: Arc<Queued>,
    ids: Ids,
}

/// The receiving end of a watcher's buffer; events still queued when the
/// stream is dropped (the client went away) are counted out here.
pub(super) struct Outbox {
    rx: mpsc::Receiver<(Event, usize)>,
    queued: Arc<Queued>,
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.rx.close();
        while let Ok((_, size)) = self.rx.try_recv() {
            self.queued.sub(size);
        }
    }
}

impl Outbox {
    /// The events, as the SSE response streams them.
    pub fn stream(self) -> impl Stream<Item = Result<Event, Infallible>> {
        futures_util::stream::unfold(self, |mut out| async move {
            let (e, size) = out.rx.recv().await?;
            out.queued.sub(size);
            Some((Ok(e), out))
        })
    }
}

/// A sink and its outbox for a new stream, under the node's limits.
pub(super) fn channel(state: &AppState, ids: Ids) -> (Sink, Outbox) {
    // One slot more than the buffer: it stays reserved for the final `dropped`.
    let (tx, rx) = mpsc::channel(state.config.watch.watcher_buffer + 1);
    let queued = Arc::new(Queued {
        bytes: AtomicUsize::new(0),
        max: state.config.limits.watcher_buffer_bytes,
        node: state.gates.watch_bytes.clone(),
        node_max: state.config.limits.watch_buffer_total_bytes,
        watchers: state.gates.watchers.count(),
        floor: 2 * (state.config.max_value_bytes + crate::command::MAX_KEY_BYTES),
    });
    (
        Sink {
            tx,
            queued: queued.clone(),
            ids,
        },
        Outbox { rx, queued },
    )
}

impl Sink {
    /// Sends the events of one revision (of `partition`), the last one carrying
    /// the SSE id that resumes after it. `Err` with why the watcher cannot take
    /// them: too slow ([`SLOW`]), or gone (`""`).
    pub fn send(
        &self,
        partition: Option<u32>,
        revision: u64,
        bodies: Vec<WatchEventBody>,
    ) -> Result<(), &'static str> {
        // The position is advanced and rendered under its lock, and the events are
        // queued before it is released: parts sending at once cannot interleave
        // one revision's events, and ids only ever grow along the stream.
        let mut position = match &self.ids {
            Ids::Position(p) => Some(p.lock().unwrap_or_else(|p| p.into_inner())),
            Ids::Revision => None,
        };
        let id = match (&mut position, partition) {
            (Some(pos), Some(p)) => {
                let r = pos.0.entry(p).or_insert(0);
                *r = (*r).max(revision);
                pos.to_string()
            }
            _ => revision.to_string(),
        };
        let n = bodies.len();
        for (i, body) in bodies.into_iter().enumerate() {
            let data = serde_json::to_string(&body).unwrap_or_else(|_| "{}".into());
            let size = data.len();
            let mut ev = Event::default().event(body.kind).data(data);
            if i + 1 == n {
                ev = ev.id(id.clone());
            }
            // One slot stays reserved for the final `dropped` event.
            if self.tx.capacity() <= 1 || !self.queued.add(size) {
                return Err(SLOW);
            }
            match self.tx.try_send((ev, size)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.queued.sub(size);
                    return Err(SLOW);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.queued.sub(size);
                    return Err("");
                }
            }
        }
        Ok(())
    }

    /// Records that `partition` has nothing for the watcher up to `revision`
    /// (its changes did not match), so a resume starts after it.
    pub fn skip_to(&self, partition: Option<u32>, revision: u64) {
        if let (Ids::Position(p), Some(part)) = (&self.ids, partition) {
            let mut pos = p.lock().unwrap_or_else(|p| p.into_inner());
            let r = pos.0.entry(part).or_insert(0);
            *r = (*r).max(revision);
        }
    }

    /// The position of a partitioned stream (`None` for the cluster's one group).
    pub fn position(&self) -> Option<WatchPosition> {
        match &self.ids {
            Ids::Position(p) => Some(p.lock().unwrap_or_else(|p| p.into_inner()).clone()),
            Ids::Revision => None,
        }
    }

    /// Resolves once the client went away.
    pub async fn closed(&self) {
        self.tx.closed().await
    }

    /// Ends the stream with `event: dropped`, saying why and where to resume
    /// (`sent`: the revision, for the cluster's one group).
    pub fn dropped(&self, reason: String, sent: u64) {
        let position = self.position();
        tracing::info!(
            reason,
            resume_from = sent,
            resume_from_revisions = position.as_ref().map(|p| p.to_string()),
            "watch stream dropped"
        );
        let body = DroppedBody {
            reason,
            resume_from_revision: position.as_ref().map_or(sent, WatchPosition::highest),
            resume_from_revisions: position.map(|p| p.to_string()),
        };
        let data = serde_json::to_string(&body).unwrap_or_else(|_| "{}".into());
        // The reserved slot holds the final event even when the watcher stopped reading.
        let _ = self
            .tx
            .try_send((Event::default().event("dropped").data(data), 0));
    }
}

/// Renders the changes of one revision that `filter` matches.
pub(super) fn bodies(
    events: &[&Change],
    filter: &Filter,
    partition: Option<u32>,
) -> Vec<WatchEventBody> {
    events.iter().map(|e| filter.body(e, partition)).collect()
}
