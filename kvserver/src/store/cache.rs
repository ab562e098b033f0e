//! In-memory cache of stored `kv` rows, shared by reads and the state machine.
//!
//! Profiles showed that a point read spent most of its time handing the query to
//! a SQLite reader thread and back, not in SQLite. This cache answers repeated
//! point reads from memory, and lets an apply batch skip reading rows it already
//! knows. It holds whole stored rows (expired ones included: readers filter by
//! their own clock) and known absences, bounded by bytes.
//!
//! Correctness rests on one rule: the state machine is the only writer of the
//! `kv` table, and after every committed batch (before the batch counts as
//! applied) it writes the final state of every key the batch touched into the
//! cache and bumps a generation number, both under the cache's lock. A reader
//! that missed the cache reads the database and fills the entry only if no batch
//! finished in between (same generation) and nobody filled it meanwhile, so a
//! row read before a commit can never be cached after that commit's update, and
//! an entry, once present, always equals the committed row. Anything else that
//! changes the table (a snapshot install, an apply retried after an unknown
//! commit outcome) clears the cache. While the database is unreachable, point
//! reads bypass the cache and fail like any other read (`Store::get`).

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus::IntCounter;
use prometheus::IntCounterVec;

use crate::command::StoredKv;

/// Bytes charged per entry on top of its strings (map slot, row fields, heap headers).
const ENTRY_OVERHEAD: usize = 160;

/// A stored row, or `None` for a key known to be absent.
pub(crate) type Row = Option<StoredKv>;

#[derive(Default)]
struct Inner {
    /// Bumped by every batch that finished and by every clear.
    generation: u64,
    rows: HashMap<String, Row>,
    bytes: usize,
}

/// The row cache of one node.
pub(crate) struct RowCache {
    inner: Mutex<Inner>,
    max_bytes: usize,
    hits: IntCounter,
    misses: IntCounter,
}

fn charge(key: &str, row: &Row) -> usize {
    ENTRY_OVERHEAD
        + key.len()
        + row
            .as_ref()
            .map(|kv| kv.key.len() + kv.value.len())
            .unwrap_or(0)
}

impl RowCache {
    /// A cache of at most `max_bytes` (0: disabled, every call misses), counting
    /// its lookups in `lookups` by `result`.
    pub fn new(max_bytes: usize, lookups: &IntCounterVec) -> Self {
        Self {
            inner: Mutex::default(),
            max_bytes,
            hits: lookups.with_label_values(&["hit"]),
            misses: lookups.with_label_values(&["miss"]),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-written entry (each
        // step is a single map operation), so the data stays usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The generation to pass to [`RowCache::fill`] for a read that starts now.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// The cached row of `key`: `Some(row)` on a hit (`row` may be `None`: absent).
    pub fn get(&self, key: &str) -> Option<Row> {
        if self.max_bytes == 0 {
            return None;
        }
        let row = self.lock().rows.get(key).cloned();
        match row {
            Some(_) => self.hits.inc(),
            None => self.misses.inc(),
        }
        row
    }

    /// Caches `row`, read from the database after [`RowCache::generation`] returned
    /// `generation`, unless a batch finished since then or the key is cached.
    pub fn fill(&self, generation: u64, key: &str, row: &Row) {
        if self.max_bytes == 0 {
            return;
        }
        let mut inner = self.lock();
        if inner.generation != generation || inner.rows.contains_key(key) {
            return;
        }
        inner.bytes += charge(key, row);
        inner.rows.insert(key.to_string(), row.clone());
        self.evict(&mut inner);
    }

    /// Records the final state of every key a committed batch touched.
    pub fn committed(&self, touched: impl IntoIterator<Item = (String, Row)>) {
        let mut inner = self.lock();
        inner.generation += 1;
        if self.max_bytes == 0 {
            return;
        }
        for (key, row) in touched {
            let added = charge(&key, &row);
            if let Some(old) = inner.rows.insert(key.clone(), row) {
                inner.bytes -= charge(&key, &old);
            }
            inner.bytes += added;
        }
        self.evict(&mut inner);
    }

    /// Forgets everything (the table changed in a way the cache did not see).
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.rows = HashMap::new();
        inner.bytes = 0;
    }

    /// Over budget: drop entries (in the map's arbitrary order) down to three quarters,
    /// so the next eviction is many inserts away.
    fn evict(&self, inner: &mut Inner) {
        if inner.bytes <= self.max_bytes {
            return;
        }
        let target = self.max_bytes / 4 * 3;
        let mut bytes = inner.bytes;
        inner.rows.retain(|key, row| {
            if bytes <= target {
                return true;
            }
            bytes -= charge(key, row);
            false
        });
        inner.bytes = bytes;
    }

    /// Entries and charged bytes (for metrics).
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.rows.len(), inner.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(max_bytes: usize) -> RowCache {
        let lookups =
            IntCounterVec::new(prometheus::Opts::new("t", "t"), &["result"]).expect("valid metric");
        RowCache::new(max_bytes, &lookups)
    }

    fn kv(key: &str, value: &str, rev: u64) -> StoredKv {
        StoredKv {
            key: key.into(),
            value: value.into(),
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            expires_at_ms: None,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    #[test]
    fn a_read_from_before_a_commit_is_not_cached_after_it() {
        let c = cache(1 << 20);
        // A reader misses and reads the old row from the database ...
        let generation = c.generation();
        let old = Some(kv("a", "old", 1));
        // ... a batch commits a new value and records it; eviction may drop it again ...
        c.committed([("a".to_string(), Some(kv("a", "new", 2)))]);
        c.clear();
        // ... the reader's late fill must not bring the old row back.
        c.fill(generation, "a", &old);
        assert_eq!(c.get("a"), None);
        // A read that started after the batch fills.
        let generation = c.generation();
        c.fill(generation, "a", &Some(kv("a", "new", 2)));
        assert_eq!(c.get("a"), Some(Some(kv("a", "new", 2))));
    }

    #[test]
    fn fill_never_overwrites_and_commits_always_do() {
        let c = cache(1 << 20);
        let g = c.generation();
        c.fill(g, "a", &Some(kv("a", "1", 1)));
        c.fill(g, "a", &Some(kv("a", "stale", 0)));
        assert_eq!(c.get("a"), Some(Some(kv("a", "1", 1))));
        c.committed([("a".to_string(), None)]);
        assert_eq!(c.get("a"), Some(None), "a delete caches the absence");
        c.committed([("a".to_string(), Some(kv("a", "3", 3)))]);
        assert_eq!(c.get("a"), Some(Some(kv("a", "3", 3))));
        assert_eq!(c.usage().0, 1);
    }

    #[test]
    fn stays_within_its_budget() {
        let max = 64 * 1024;
        let c = cache(max);
        for i in 0..10_000u64 {
            let key = format!("key-{i}");
            c.committed([(key.clone(), Some(kv(&key, &"v".repeat(100), i)))]);
            assert!(c.usage().1 <= max, "{:?} after {i}", c.usage());
        }
        let (entries, bytes) = c.usage();
        assert!(
            entries > 100 && bytes > max / 2,
            "{entries} entries, {bytes} bytes"
        );
        // Accounting matches the entries that remain.
        let inner = c.lock();
        let recount: usize = inner.rows.iter().map(|(k, r)| charge(k, r)).sum();
        assert_eq!(recount, inner.bytes);
    }

    #[test]
    fn disabled_cache_always_misses() {
        let c = cache(0);
        c.committed([("a".to_string(), Some(kv("a", "1", 1)))]);
        let g = c.generation();
        c.fill(g, "b", &None);
        assert_eq!(c.get("a"), None);
        assert_eq!(c.get("b"), None);
    }
}
