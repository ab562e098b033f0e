//! Feeding a watch from one group on this node: its history after the
//! watcher's position, page by page, then its live feed. The cluster's one
//! group feeds a whole stream; in a partitioned cluster each hosted partition
//! the watch spans is one such part (`super::merged`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;

use super::sink::Filter;
use super::sink::Sink;
use super::sink::bodies;
use crate::api::AppState;
use crate::command::Change;
use crate::group::Group;
use crate::store::Store;
use crate::store::watch::Feed;

/// History is read in pages of this many revisions.
const HISTORY_PAGE: u64 = 1000;

/// How often a partition's part checks that this node still hosts it.
const HOSTED_CHECK: Duration = Duration::from_secs(1);

/// Why a part stopped feeding its watch.
#[derive(Debug)]
pub(super) enum Ended {
    /// The watcher went away.
    Gone,
    /// The watch ends, for this reason (the node is stopping, the watcher is too
    /// slow, the history it needs was compacted).
    Stop(String),
    /// This source cannot go on (its replica moved away, it installed a snapshot,
    /// its node went away): a watch spanning partitions resumes the part
    /// elsewhere; a watch of the cluster's one group ends.
    Retry(String),
}

/// One group's changes, as a part of a watch.
pub(super) struct Source {
    pub store: Store,
    /// `None` for the cluster's group.
    pub partition: Option<u32>,
    /// The hosted partition group: the part ends once this node no longer
    /// hosts it (its replica moved away).
    pub group: Option<Arc<Group>>,
}

impl Source {
    fn still_hosted(&self, state: &AppState) -> bool {
        let Some(g) = &self.group else {
            return true;
        };
        let here = state.groups.get(g.id).is_some_and(|h| Arc::ptr_eq(&h, g));
        let placed = self.partition.is_none_or(|p| {
            state
                .store
                .placement()
                .of(p)
                .is_some_and(|a| a.hosts.contains(&state.id))
        });
        here && placed
    }
}

/// Feeds `sink` with `source`'s matching changes after `from`: first from
/// history up to `upto`, then live from `feed` (subscribed before `upto` was
/// read, so nothing between is missed), until the watch stops. Returns why it
/// ended and the last revision it passed on.
pub(super) async fn produce(
    state: AppState,
    source: Source,
    mut feed: tokio::sync::broadcast::Receiver<Feed>,
    filter: Arc<Filter>,
    (from, upto): (u64, u64),
    sink: Arc<Sink>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> (Ended, u64) {
    let part = source.partition;
    let mut sent = from;
    // Sends each revision's matching changes; `Err` once the watcher cannot take them.
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
                if group.is_empty() {
                    sink.skip_to(part, rev);
                } else {
                    sink.send(part, rev, bodies(&group, &filter, part))?;
                }
                *sent = rev;
            }
        }
        Ok(())
    };
    let sink_error = |r: &str| {
        if r.is_empty() {
            Ended::Gone
        } else {
            Ended::Stop(r.to_string())
        }
    };
    let mut cursor = from;
    while cursor < upto {
        match source.store.history(cursor, upto, HISTORY_PAGE).await {
            Ok(h) if h.compacted > cursor => {
                let msg = format!(
                    "history up to revision {} was compacted while reading it",
                    h.compacted
                );
                return (Ended::Stop(msg), sent);
            }
            Ok(h) => {
                if let Err(r) = emit(&h.events, &mut sent) {
                    return (sink_error(r), sent);
                }
                cursor = (cursor + HISTORY_PAGE).min(upto);
                sent = sent.max(cursor);
                sink.skip_to(part, sent);
            }
            Err(e) => return (Ended::Stop(format!("reading history failed: {e}")), sent),
        }
    }
    let mut tick = tokio::time::interval(HOSTED_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ended = loop {
        tokio::select! {
            _ = stop.wait_for(|v| *v) => break Ended::Stop("server shutting down".into()),
            // A watcher that disconnects from a quiet prefix is noticed here, not
            // at the next matching event, so its slot is freed.
            _ = sink.closed() => break Ended::Gone,
            _ = tick.tick(), if source.group.is_some() => {
                if !source.still_hosted(&state) {
                    break Ended::Retry(format!("node {} no longer hosts this partition", state.id));
                }
            }
            msg = feed.recv() => match msg {
                Ok(Feed::Events(batch)) => {
                    if let Err(r) = emit(&batch, &mut sent) {
                        break sink_error(r);
                    }
                }
                Ok(Feed::Reset { revision }) => {
                    break Ended::Retry(format!("this node installed a snapshot at revision {revision}; resume on another node or re-list"));
                }
                Err(RecvError::Lagged(n)) => break Ended::Stop(format!("slow consumer: fell {n} batches behind the feed")),
                Err(RecvError::Closed) => break Ended::Stop("server shutting down".into()),
            },
        }
    };
    (ended, sent)
}
