//! Watch history and the live event feed.
//!
//! Every applied change is recorded in `kv_events` (one row per revision, in
//! the same transaction as the change) and, after the commit, published on a
//! bounded broadcast feed. A watcher subscribes to the feed first, then reads
//! the history up to the current revision, then follows the feed, skipping
//! what it already sent: that sequence has no gap and no duplicate. History
//! older than `watch_history_revisions` is compacted; a snapshot install
//! restarts it at the snapshot's revision (and tells live watchers, which must
//! resume elsewhere or re-list).

use std::sync::Arc;

use serde::Deserialize;
use serde::Serialize;
use sqlx::AnyConnection;
use sqlx::Row;

use super::Store;
use super::StoreError;
use super::WriteBatch;
use super::batch;
use super::batch::Shapes;
use super::decode;
use super::encode;
use super::get_meta;
use super::put_metas;
use super::script::Arg;
use crate::command::Change;
use crate::command::EventKind;
use crate::command::StoredKv;

pub(crate) const WATCH_COMPACTED: &str = "watch_compacted";

/// What the live feed carries.
#[derive(Debug, Clone)]
pub enum Feed {
    /// Events of one applied batch, in revision order.
    Events(Arc<Vec<Change>>),
    /// History was replaced by a snapshot at this revision; live watchers cannot continue.
    Reset { revision: u64 },
}

/// Storage form of an event (bincode needs every field present).
#[derive(Serialize, Deserialize)]
struct StoredEvent {
    kind: EventKind,
    key: String,
    kv: Option<StoredKv>,
    prev: Option<StoredKv>,
}

/// First 8 bytes of a history row written with its commit time: bincode's
/// fixed-width length of the earlier form (a bare `Vec<StoredEvent>`) can never
/// be `u64::MAX`, so the two forms are told apart without a schema change, and
/// rows written by earlier releases still read.
const TIMED: u64 = u64::MAX;

/// The stored group of one revision, with the leader clock of its command.
#[derive(Serialize, Deserialize)]
struct TimedGroup {
    marker: u64,
    at_ms: Option<u64>,
    events: Vec<StoredEvent>,
}

static INSERT_EVENTS: Shapes = Shapes::new(|n| {
    format!(
        "INSERT INTO kv_events (revision, events) VALUES {} \
         ON CONFLICT (revision) DO UPDATE SET events = excluded.events",
        batch::values(n, 2)
    )
});

/// The new compaction horizon after a batch that reached `rev`, given the current
/// one `compacted`, if it moves: history older than `keep` revisions behind `rev`
/// goes, in steps of `keep / 16` revisions (at least 1, at most 1,024), so a write
/// does not pay for a delete every time; between steps up to one step more than
/// `keep` revisions of history are kept.
pub(crate) fn horizon(rev: u64, keep: u64, compacted: u64) -> Option<u64> {
    let step = (keep / 16).clamp(1, 1024);
    (rev > keep && rev - keep >= compacted + step).then(|| rev - keep)
}

/// Writes events (grouped per revision) and deletes history at or below
/// `compact_to`.
pub(crate) fn write_events(
    w: &mut WriteBatch,
    events: &[Change],
    compact_to: Option<u64>,
) -> Result<(), StoreError> {
    let mut rows: Vec<(i64, Vec<u8>)> = Vec::new();
    let mut i = 0;
    while i < events.len() {
        let revision = events[i].revision;
        let mut group = Vec::new();
        let at_ms = events[i].at_ms;
        while i < events.len() && events[i].revision == revision {
            let e = &events[i];
            group.push(StoredEvent {
                kind: e.kind,
                key: e.key.clone(),
                kv: e.kv.clone(),
                prev: e.prev.clone(),
            });
            i += 1;
        }
        let timed = TimedGroup {
            marker: TIMED,
            at_ms,
            events: group,
        };
        rows.push((revision as i64, encode(&timed)?));
    }
    let mut rest = &rows[..];
    for n in batch::insert_chunks(rows.len()) {
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        let mut args = Vec::with_capacity(2 * n);
        for (revision, bytes) in chunk {
            args.extend([Arg::Int(*revision), Arg::Blob(bytes.clone())]);
        }
        w.push(INSERT_EVENTS.get(n), args);
    }
    if let Some(horizon) = compact_to {
        w.push(
            "DELETE FROM kv_events WHERE revision <= $1",
            vec![Arg::Int(horizon as i64)],
        );
    }
    Ok(())
}

/// Drops all history; the oldest watchable revision becomes `revision + 1`.
pub(crate) fn reset_history(w: &mut WriteBatch, revision: u64) -> Result<(), StoreError> {
    w.push("DELETE FROM kv_events", Vec::new());
    put_metas(w, &[(WATCH_COMPACTED, encode(&revision)?)]);
    Ok(())
}

/// The commit time and events of one stored revision, in either stored form.
fn decode_group(bytes: &[u8]) -> Result<(Option<u64>, Vec<StoredEvent>), StoreError> {
    if bytes.get(..8) == Some(&TIMED.to_le_bytes()[..]) {
        let timed: TimedGroup = decode("kv_events", bytes)?;
        return Ok((timed.at_ms, timed.events));
    }
    let group: Vec<StoredEvent> = decode("kv_events", bytes)?;
    // Written before commit times were kept: a put's own timestamp is its
    // command's clock; a revision of deletes only has none.
    let put_time = group
        .iter()
        .find_map(|e| e.kv.as_ref().map(|kv| kv.updated_at_ms));
    Ok((put_time, group))
}

fn decode_row(row: &sqlx::any::AnyRow) -> Result<Vec<Change>, StoreError> {
    let revision = row.try_get::<i64, _>(0)? as u64;
    let (at_ms, group) = decode_group(&row.try_get::<Vec<u8>, _>(1)?)?;
    Ok(group
        .into_iter()
        .map(|e| Change {
            revision,
            kind: e.kind,
            key: e.key,
            kv: e.kv,
            prev: e.prev,
            at_ms,
        })
        .collect())
}

/// Events with `after < revision <= upto`, in order.
pub(crate) async fn read_events(
    conn: &mut AnyConnection,
    after: u64,
    upto: u64,
) -> Result<Vec<Change>, StoreError> {
    let rows = sqlx::query("SELECT revision, events FROM kv_events WHERE revision > $1 AND revision <= $2 ORDER BY revision")
        .bind(after as i64)
        .bind(upto as i64)
        .fetch_all(conn)
        .await?;
    let mut out = Vec::new();
    for row in &rows {
        out.extend(decode_row(row)?);
    }
    Ok(out)
}

/// A page of history for a watcher.
pub struct History {
    /// Revisions at or below this are gone (0 = nothing compacted).
    pub compacted: u64,
    pub events: Vec<Change>,
}

impl Store {
    /// Subscribes to the live feed (do this *before* reading history).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Feed> {
        self.feed.subscribe()
    }

    pub(crate) fn publish(&self, events: Vec<Change>) {
        if !events.is_empty() {
            // No receivers is fine: nobody watches.
            let _ = self.feed.send(Feed::Events(Arc::new(events)));
        }
    }

    pub(crate) fn publish_reset(&self, revision: u64) {
        let _ = self.feed.send(Feed::Reset { revision });
    }

    /// History after `after` up to `upto` (at most `limit` revisions), and the compaction
    /// horizon, read in one transaction so both agree.
    pub async fn history(&self, after: u64, upto: u64, limit: u64) -> Result<History, StoreError> {
        self.caught_up().await?;
        let mut tx = self.reader.begin().await?;
        let compacted: u64 = get_meta(&mut tx, WATCH_COMPACTED).await?.unwrap_or(0);
        let events = if after < compacted {
            Vec::new()
        } else {
            read_events(&mut tx, after, upto.min(after.saturating_add(limit))).await?
        };
        tx.rollback().await?;
        Ok(History { compacted, events })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str) -> StoredKv {
        StoredKv {
            key: key.into(),
            value: "v".into(),
            create_revision: 3,
            mod_revision: 3,
            version: 1,
            expires_at_ms: None,
            created_at_ms: 500,
            updated_at_ms: 700,
        }
    }

    fn event(key: &str, put: bool) -> StoredEvent {
        StoredEvent {
            kind: if put {
                EventKind::Put
            } else {
                EventKind::Delete
            },
            key: key.into(),
            kv: put.then(|| kv(key)),
            prev: (!put).then(|| kv(key)),
        }
    }

    /// History rows written by releases before commit times were recorded still
    /// read (a put's time is its own timestamp, a delete's is unknown), and rows
    /// with the time read back with it.
    #[test]
    fn both_stored_forms_of_history_read() {
        let old = encode(&vec![event("a", true), event("b", false)]).expect("encode");
        let (at, group) = decode_group(&old).expect("old form");
        assert_eq!((at, group.len()), (Some(700), 2));
        let old_deletes = encode(&vec![event("b", false)]).expect("encode");
        assert_eq!(decode_group(&old_deletes).expect("old form").0, None);
        let new = encode(&TimedGroup {
            marker: TIMED,
            at_ms: Some(1234),
            events: vec![event("b", false)],
        })
        .expect("encode");
        let (at, group) = decode_group(&new).expect("new form");
        assert_eq!(
            (at, group.len(), group[0].key.as_str()),
            (Some(1234), 1, "b")
        );
    }
}
