//! What the state machine has applied in memory and the database does not hold
//! yet: the changed rows, pinned here until the persister (`persist.rs`) has
//! committed them, and the batches waiting for it.
//!
//! A write is answered once its entry is committed in the Raft log and applied
//! here; its database writes follow in batches (the log is the durability
//! point, and a restarted node re-applies the log from the applied position the
//! database recorded). Every read looks here before the row cache and the
//! database, so a node's reads see every write it acknowledged. Reads that scan
//! the table (listings, history, backups) wait instead until the database holds
//! everything applied when they started ([`Overlay::wait_persisted`]): a batch is
//! normally a commit away.
//!
//! Order matters for readers that look here and then at the database: a row
//! leaves the overlay only after the commit that wrote it, so a reader that
//! misses it here finds it there.
//!
//! **When the persister commits.** Not after every batch: it lingers up to
//! [`LINGER`] after the first queued batch, so at low load one commit covers
//! many writes (etcd's backend does the same every 100 ms). Waking it per
//! batch cost two thread hand-offs per put per node and a SQLite commit each,
//! on the cores the write path needs (`bench/handoffs.sh`: sqlx's thread parked
//! 2.1 times per put on a 1-node cluster). It commits at once when the queue
//! reaches [`COMMIT_ENTRIES`] / [`COMMIT_BYTES`], when someone waits for the
//! database to catch up (a listing, a backup, a snapshot), and when closing.

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::time::Duration;

// tokio's clock, so a test can hold time still (`tokio::time::pause`).
use tokio::time::Instant;

use super::cache::Row;
use crate::command::Change;

/// Most applied log entries waiting for the persister before applies wait for it
/// (bounds memory, and lets a database outage stall writes instead of growing).
pub(crate) const MAX_PENDING_ENTRIES: u64 = 20_000;
/// Most row bytes waiting for the persister before applies wait for it.
pub(crate) const MAX_PENDING_BYTES: usize = 64 << 20;

/// How long the persister lets applied batches gather before it commits them.
pub(crate) const LINGER: Duration = Duration::from_millis(10);
/// Queued entries that make the persister commit without lingering.
pub(crate) const COMMIT_ENTRIES: u64 = 2_000;
/// Queued row bytes that make the persister commit without lingering.
pub(crate) const COMMIT_BYTES: usize = 8 << 20;

/// One applied batch, waiting to be written.
#[derive(Debug, Clone, Default)]
pub(crate) struct Pending {
    /// Numbers batches in apply order.
    pub seq: u64,
    /// One past the log index of the batch's last entry (so 0 means "nothing",
    /// while entry 0 exists).
    pub applied_index: u64,
    /// Final row of every key the batch changed.
    pub rows: Vec<(String, Row)>,
    pub events: Vec<Change>,
    /// `raft_meta` rows to write with the batch (applied position, revision, ...).
    pub meta: Vec<(&'static str, Vec<u8>)>,
    /// Watch history at or below this revision is to be deleted.
    pub compact_to: Option<u64>,
    /// Bytes of `rows` (for the backpressure bound).
    pub bytes: usize,
    /// Entries of the log the batch covers.
    pub entries: u64,
}

#[derive(Default)]
struct Inner {
    /// Latest unpersisted row per key, with the `seq` of the batch that wrote it.
    rows: BTreeMap<String, (Row, u64)>,
    queue: VecDeque<Pending>,
    queued_entries: u64,
    queued_bytes: usize,
    next_seq: u64,
    /// `applied_index` of the last batch pushed (one past its last entry).
    applied_index: u64,
    /// When the oldest batch of `queue` was pushed.
    queued_since: Option<Instant>,
    /// Callers waiting for the database to catch up: the persister does not linger.
    waiters: usize,
    closed: bool,
}

impl Inner {
    /// Whether the persister should commit what is queued now.
    fn due(&self) -> bool {
        self.closed
            || self.waiters > 0
            || self.queued_entries >= COMMIT_ENTRIES
            || self.queued_bytes >= COMMIT_BYTES
            || self.queued_since.is_some_and(|t| t.elapsed() >= LINGER)
    }
}

/// Counts a caller waiting for the database while it lives.
struct Waiter<'a>(&'a Overlay);

impl<'a> Waiter<'a> {
    fn new(o: &'a Overlay) -> Self {
        o.lock().waiters += 1;
        o.work.notify_one();
        Waiter(o)
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut i = self.0.lock();
        i.waiters = i.waiters.saturating_sub(1);
    }
}

/// The overlay of one node's state machine.
pub(crate) struct Overlay {
    inner: Mutex<Inner>,
    /// The database holds every entry below this log index.
    persisted: tokio::sync::watch::Sender<u64>,
    /// Wakes the persister.
    work: tokio::sync::Notify,
    /// Wakes applies waiting for room.
    room: tokio::sync::Notify,
}

impl Overlay {
    /// An empty overlay over a database that holds everything up to `persisted`.
    pub fn new(persisted: u64) -> Overlay {
        Overlay {
            inner: Mutex::new(Inner {
                next_seq: 1,
                applied_index: persisted,
                ..Inner::default()
            }),
            persisted: tokio::sync::watch::channel(persisted).0,
            work: tokio::sync::Notify::new(),
            room: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Sections below leave `Inner` consistent before anything can panic.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The unpersisted row of `key`: `Some(None)` when it was deleted, `None` when
    /// the overlay has nothing newer than the database.
    pub fn get(&self, key: &str) -> Option<Row> {
        self.lock().rows.get(key).map(|(r, _)| r.clone())
    }

    /// Unpersisted rows of keys starting with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: &str) -> Vec<(String, Row)> {
        self.lock()
            .rows
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (r, _))| (k.clone(), r.clone()))
            .collect()
    }

    /// Waits until the queue has room (see [`MAX_PENDING_ENTRIES`]).
    pub async fn wait_for_room(&self) {
        loop {
            let notified = self.room.notified();
            {
                let i = self.lock();
                if i.closed
                    || (i.queued_entries < MAX_PENDING_ENTRIES
                        && i.queued_bytes < MAX_PENDING_BYTES)
                {
                    return;
                }
            }
            notified.await;
        }
    }

    /// Pins a batch's rows and queues it for the persister.
    pub fn push(&self, mut p: Pending) {
        let wake = {
            let mut i = self.lock();
            // The persister waits without a deadline only while the queue is empty;
            // otherwise it wakes at its deadline and needs no hand-off per batch.
            let first = i.queue.is_empty();
            if first {
                i.queued_since = Some(Instant::now());
            }
            p.seq = i.next_seq;
            i.next_seq += 1;
            for (k, r) in &p.rows {
                i.rows.insert(k.clone(), (r.clone(), p.seq));
            }
            i.applied_index = i.applied_index.max(p.applied_index);
            i.queued_entries += p.entries;
            i.queued_bytes += p.bytes;
            i.queue.push_back(p);
            first || i.due()
        };
        if wake {
            self.work.notify_one();
        }
    }

    /// Takes every queued batch (persister) once they are due (see the module
    /// docs); waits while there is none. `None` once closed and drained.
    pub async fn take(&self) -> Option<Vec<Pending>> {
        loop {
            let notified = self.work.notified();
            let deadline = {
                let mut i = self.lock();
                if i.queue.is_empty() {
                    if i.closed {
                        return None;
                    }
                    None
                } else if i.due() {
                    i.queued_since = None;
                    return Some(i.queue.drain(..).collect());
                } else {
                    i.queued_since.map(|t| t + LINGER)
                }
            };
            match deadline {
                Some(at) => {
                    let _ = tokio::time::timeout_at(at, notified).await;
                }
                None => notified.await,
            }
        }
    }

    /// After the commit of `batches`: unpins their rows unless a later batch changed
    /// them again, and moves the persisted watermark. Returns the unpinned rows.
    pub fn persisted(&self, batches: &[Pending]) -> Vec<(String, Row)> {
        let mut done = Vec::new();
        let Some(last) = batches.last() else {
            return done;
        };
        {
            let mut i = self.lock();
            for b in batches {
                for (k, r) in &b.rows {
                    if i.rows.get(k).is_some_and(|(_, seq)| *seq == b.seq) {
                        i.rows.remove(k);
                        done.push((k.clone(), r.clone()));
                    }
                }
                i.queued_entries = i.queued_entries.saturating_sub(b.entries);
                i.queued_bytes = i.queued_bytes.saturating_sub(b.bytes);
            }
        }
        self.persisted
            .send_modify(|p| *p = (*p).max(last.applied_index));
        self.room.notify_waiters();
        done
    }

    /// One past the log index of the last batch applied (pushed).
    pub fn applied_index(&self) -> u64 {
        self.lock().applied_index
    }

    /// Waits until the database holds every entry below `index`; `false` if the
    /// overlay closed first.
    pub async fn wait_persisted(&self, index: u64) -> bool {
        let mut rx = self.persisted.subscribe();
        if *rx.borrow() >= index {
            return true;
        }
        let _waiting = Waiter::new(self);
        let reached = rx.wait_for(|p| *p >= index).await.is_ok();
        reached || *rx.borrow() >= index
    }

    /// Waits until the database holds everything applied so far.
    pub async fn drain(&self) -> bool {
        let target = self.applied_index();
        self.wait_persisted(target).await
    }

    /// Forgets everything (a snapshot replaced the table with every entry below
    /// `index`, after a drain).
    pub fn reset(&self, index: u64) {
        {
            let mut i = self.lock();
            i.rows.clear();
            i.queue.clear();
            i.queued_entries = 0;
            i.queued_bytes = 0;
            i.queued_since = None;
            i.applied_index = index;
        }
        self.persisted.send_replace(index);
        self.room.notify_waiters();
    }

    /// Stops the persister once the queue is empty.
    pub fn close(&self) {
        self.lock().closed = true;
        self.work.notify_waiters();
        self.work.notify_one();
        self.room.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::StoredKv;

    fn row(key: &str, rev: u64) -> (String, Row) {
        (
            key.to_string(),
            Some(StoredKv {
                key: key.into(),
                value: "v".into(),
                create_revision: rev,
                mod_revision: rev,
                version: 1,
                expires_at_ms: None,
                created_at_ms: 0,
                updated_at_ms: 0,
            }),
        )
    }

    fn batch(index: u64, rows: Vec<(String, Row)>) -> Pending {
        Pending {
            applied_index: index,
            rows,
            entries: 1,
            ..Pending::default()
        }
    }

    #[tokio::test]
    async fn rows_stay_pinned_until_their_own_batch_is_persisted() {
        let o = Overlay::new(0);
        o.push(batch(1, vec![row("a", 1), row("b", 1)]));
        o.push(batch(2, vec![row("a", 2), ("c".into(), None)]));
        assert_eq!(o.get("a"), Some(row("a", 2).1));
        assert_eq!(o.get("c"), Some(None), "a delete is pinned too");
        let taken = o.take().await.expect("batches");
        // The first batch alone commits: `a` was rewritten by the second, so it stays.
        let unpinned = o.persisted(&taken[..1]);
        assert_eq!(unpinned, vec![row("b", 1)]);
        assert_eq!(o.get("a"), Some(row("a", 2).1));
        assert_eq!(o.get("b"), None);
        assert!(o.wait_persisted(1).await);
        o.persisted(&taken[1..]);
        assert_eq!(o.get("a"), None);
        assert!(o.drain().await);
        assert_eq!(
            o.scan_prefix(""),
            Vec::<(String, Row)>::new(),
            "nothing left"
        );
    }

    #[tokio::test]
    async fn applies_wait_for_room_and_the_persister_stops_when_closed() {
        let o = std::sync::Arc::new(Overlay::new(0));
        o.push(Pending {
            applied_index: 1,
            entries: MAX_PENDING_ENTRIES,
            ..Pending::default()
        });
        let waiting = tokio::spawn({
            let o = o.clone();
            async move { o.wait_for_room().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let taken = o.take().await.expect("batch");
        o.persisted(&taken);
        waiting.await.expect("room");
        o.close();
        assert!(o.take().await.is_none());
    }

    /// The clock stands still here (`start_paused`): only the linger, a full queue,
    /// a waiter or closing can make the persister commit.
    #[tokio::test(start_paused = true)]
    async fn the_persister_lingers_unless_someone_waits_or_the_queue_is_full() {
        let o = std::sync::Arc::new(Overlay::new(0));
        let take = |o: &std::sync::Arc<Overlay>| {
            let o = o.clone();
            tokio::spawn(async move { o.take().await })
        };
        // Lingers: nothing is taken before LINGER has passed since the first batch.
        o.push(batch(1, vec![row("a", 1)]));
        let t = take(&o);
        tokio::time::sleep(LINGER / 2).await;
        o.push(batch(2, vec![row("b", 2)]));
        tokio::task::yield_now().await;
        assert!(!t.is_finished(), "taken before the linger ran out");
        tokio::time::sleep(LINGER / 2).await;
        let taken = t.await.expect("task").expect("batches");
        assert_eq!(taken.len(), 2, "one commit covers both batches");
        o.persisted(&taken);

        // A reader waiting for the database cuts the linger short.
        o.push(batch(3, vec![row("c", 3)]));
        let started = tokio::time::Instant::now();
        let t = take(&o);
        let reader = tokio::spawn({
            let o = o.clone();
            async move { o.wait_persisted(3).await }
        });
        let taken = t.await.expect("task").expect("batch");
        // Paused, the clock jumps to the next timer once every task waits: had the
        // reader not cut the linger short, the take would end LINGER later.
        assert!(
            started.elapsed() < LINGER,
            "the reader waited for the linger"
        );
        o.persisted(&taken);
        assert!(reader.await.expect("reader"));

        // So does a full queue.
        o.push(Pending {
            applied_index: 4,
            entries: COMMIT_ENTRIES,
            ..Pending::default()
        });
        let started = tokio::time::Instant::now();
        let taken = take(&o).await.expect("task").expect("batch");
        assert!(
            started.elapsed() < LINGER,
            "a full queue waited for the linger"
        );
        o.persisted(&taken);
    }
}
