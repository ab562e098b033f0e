//! Applying commands to the key-value state in memory: the etcd-like revision
//! rules, compare-and-set, transactions, expiry, and the watch events each
//! change produces. Rows are read through the overlay of applied but not yet
//! persisted rows, then the row cache, then the database; the batch's changes
//! go to the overlay and from there to the database (`persist.rs`).
//!
//! A command changes the store at most once per revision: every write of one
//! command (a put, a prefix delete, all writes of a transaction) carries the
//! same new revision, and a command that changes nothing (failed guard, delete
//! of a missing key, read-only transaction) leaves the revision where it was.

use std::collections::BTreeSet;
use std::collections::HashMap;

use sqlx::AnyConnection;

use super::KV_COLUMNS;
use super::Store;
use super::StoreError;
use super::batch;
use super::batch::Shapes;
use super::cache::Row;
use super::is_expired;
use super::row_to_kv;
use crate::command::Change;
use crate::command::Command;
use crate::command::Condition;
use crate::command::ConditionOp;
use crate::command::ConditionTarget;
use crate::command::EventKind;
use crate::command::Outcome;
use crate::command::StepResult;
use crate::command::StoredKv;
use crate::command::TxnStep;

static SELECT_KEYS: Shapes = Shapes::new(|n| {
    format!(
        "SELECT {KV_COLUMNS} FROM kv WHERE key IN ({})",
        batch::params(n)
    )
});
/// Runs the query `statement` (an `IN` list of keys) over `keys` in padded chunks.
async fn for_keys_in(
    conn: &mut AnyConnection,
    statement: &'static Shapes,
    keys: &[&str],
    mut on_row: impl FnMut(&sqlx::any::AnyRow) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    for chunk in keys.chunks(batch::MAX_ROWS) {
        let shape = batch::padded(chunk.len());
        let mut q = sqlx::query(statement.get(shape));
        for i in 0..shape {
            q = q.bind(chunk[i.min(chunk.len() - 1)]);
        }
        for row in q.fetch_all(&mut *conn).await? {
            on_row(&row)?;
        }
    }
    Ok(())
}

/// State threaded through the application of one batch.
///
/// The batch's keys are read up front ([`ApplyCtx::prefetch`]: overlay, row
/// cache, then a few multi-row statements for the rest), commands then work on
/// the batch's own map, and [`ApplyCtx::finish`] hands over the changed rows.
pub(crate) struct ApplyCtx<'t> {
    store: &'t Store,
    /// Revision after the last applied command.
    pub rev: u64,
    /// Leader clock of the command being applied (stamped on its changes).
    now_ms: u64,
    /// Changes made so far in this batch, in order.
    pub events: Vec<Change>,
    /// Stored row of every key read or written so far (`None`: absent), as the batch
    /// has left it; expired rows included (readers filter by their own time).
    cache: HashMap<String, Option<StoredKv>>,
    /// Keys the batch changed.
    dirty: BTreeSet<String>,
    /// The placement map, if the batch replaced it.
    pub placement: Option<crate::placement::map::PlacementMap>,
}

impl<'t> ApplyCtx<'t> {
    pub fn new(store: &'t Store, rev: u64) -> Self {
        Self {
            store,
            rev,
            now_ms: 0,
            events: Vec::new(),
            cache: HashMap::new(),
            dirty: BTreeSet::new(),
            placement: None,
        }
    }

    /// The row of `k` if the overlay or the row cache knows it.
    fn known(&self, k: &str) -> Option<Row> {
        self.store.overlay.get(k).or_else(|| self.store.rows.get(k))
    }

    /// Reads `keys` from the database (committed state), filling the row cache.
    async fn fetch(&mut self, keys: &[&str]) -> Result<(), StoreError> {
        let generation = self.store.rows.generation();
        let mut conn = self.store.reader.acquire().await?;
        let mut found = HashMap::with_capacity(keys.len());
        for_keys_in(&mut conn, &SELECT_KEYS, keys, |row| {
            let kv = row_to_kv(row, true)?;
            found.insert(kv.key.clone(), kv);
            Ok(())
        })
        .await?;
        // Only the state machine (this batch) adds rows to the overlay, and `keys`
        // were not there: the table's rows are current.
        for k in keys {
            let row = found.remove(*k);
            self.store.rows.fill(generation, k, &row);
            self.cache.insert(k.to_string(), row);
        }
        Ok(())
    }

    /// Reads the stored rows of `cmds`' keys that are not known yet.
    pub async fn prefetch(&mut self, cmds: &[&Command]) -> Result<(), StoreError> {
        let mut keys: Vec<&str> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for cmd in cmds {
            for_each_key(cmd, |k| {
                if !self.cache.contains_key(k) && seen.insert(k) {
                    match self.known(k) {
                        Some(row) => {
                            self.cache.insert(k.to_string(), row);
                        }
                        None => keys.push(k),
                    }
                }
            });
        }
        if keys.is_empty() {
            return Ok(());
        }
        self.fetch(&keys).await
    }

    /// The stored row of `key` (expired or not).
    async fn row(&mut self, key: &str) -> Result<Option<StoredKv>, StoreError> {
        if let Some(row) = self.cache.get(key) {
            return Ok(row.clone());
        }
        if let Some(row) = self.known(key) {
            self.cache.insert(key.to_string(), row.clone());
            return Ok(row);
        }
        self.fetch(&[key]).await?;
        Ok(self.cache.get(key).cloned().flatten())
    }

    /// The live (stored and not expired at `now_ms`) value of `key`.
    async fn load(&mut self, key: &str, now_ms: u64) -> Result<Option<StoredKv>, StoreError> {
        Ok(self.row(key).await?.filter(|kv| !is_expired(kv, now_ms)))
    }

    fn stage(&mut self, key: String, row: Option<StoredKv>) {
        self.dirty.insert(key.clone());
        self.cache.insert(key, row);
    }

    /// The batch's revision and events, and the final row of every key it changed.
    pub fn finish(mut self) -> (u64, Vec<Change>, Vec<(String, Row)>) {
        let changed = std::mem::take(&mut self.dirty)
            .into_iter()
            .map(|k| {
                let row = self.cache.remove(&k).flatten();
                (k, row)
            })
            .collect();
        (self.rev, self.events, changed)
    }

    /// Replaces the placement map if `map` is its next epoch (a compare-and-set:
    /// of two drivers, an old leader's and a new one's, only one map lands).
    fn place(&mut self, map: crate::placement::map::PlacementMap) -> Outcome {
        let current = match &self.placement {
            Some(p) => p.clone(),
            None => (*self.store.placement()).clone(),
        };
        let refused = match current.check_successor(&map) {
            Err(e) => Some(e.to_string()),
            Ok(()) if map.epoch != current.epoch + 1 => Some(format!(
                "the next epoch is {}, the map says {}",
                current.epoch + 1,
                map.epoch
            )),
            Ok(()) => None,
        };
        match refused {
            None => {
                let epoch = map.epoch;
                self.placement = Some(map);
                Outcome::Placed {
                    epoch,
                    refused: None,
                }
            }
            Some(why) => Outcome::Placed {
                epoch: current.epoch,
                refused: Some(why),
            },
        }
    }

    /// Writes `key` at revision `at` given its live previous state.
    async fn put(
        &mut self,
        at: u64,
        key: String,
        value: String,
        expires_at_ms: Option<u64>,
        live: Option<StoredKv>,
        now_ms: u64,
    ) -> Result<(bool, StoredKv, Option<StoredKv>), StoreError> {
        let kv = StoredKv {
            key,
            value,
            create_revision: live.as_ref().map(|k| k.create_revision).unwrap_or(at),
            mod_revision: at,
            version: live.as_ref().map(|k| k.version + 1).unwrap_or(1),
            expires_at_ms,
            created_at_ms: live.as_ref().map(|k| k.created_at_ms).unwrap_or(now_ms),
            updated_at_ms: now_ms,
        };
        self.stage(kv.key.clone(), Some(kv.clone()));
        self.events.push(Change {
            revision: at,
            kind: EventKind::Put,
            key: kv.key.clone(),
            kv: Some(kv.clone()),
            prev: live.clone(),
            at_ms: Some(self.now_ms),
        });
        Ok((live.is_none(), kv, live))
    }

    /// Deletes the live key `prev` at revision `at`.
    fn delete(&mut self, at: u64, prev: StoredKv) {
        self.stage(prev.key.clone(), None);
        self.events.push(Change {
            revision: at,
            kind: EventKind::Delete,
            key: prev.key.clone(),
            kv: None,
            prev: Some(prev),
            at_ms: Some(self.now_ms),
        });
    }

    /// The live value of `key` if the CAS guard holds, else the `PreconditionFailed` outcome.
    async fn guarded(
        &mut self,
        key: &str,
        if_revision: Option<u64>,
        now_ms: u64,
    ) -> Result<Result<Option<StoredKv>, Outcome>, StoreError> {
        let live = self.load(key, now_ms).await?;
        Ok(if guard_holds(&live, if_revision) {
            Ok(live)
        } else {
            Err(Outcome::PreconditionFailed { current: live })
        })
    }

    /// Applies one command; bumps the revision once if (and only if) it changed anything.
    pub async fn command(&mut self, cmd: Command) -> Result<Outcome, StoreError> {
        let at = self.rev + 1;
        self.now_ms = cmd.now_ms();
        match cmd {
            Command::Put {
                key,
                value,
                expires_at_ms,
                if_revision,
                now_ms,
            } => {
                let live = match self.guarded(&key, if_revision, now_ms).await? {
                    Ok(live) => live,
                    Err(failed) => return Ok(failed),
                };
                let (created, kv, prev) = self
                    .put(at, key, value, expires_at_ms, live, now_ms)
                    .await?;
                self.rev = at;
                Ok(Outcome::Put { created, kv, prev })
            }
            Command::Delete {
                key,
                if_revision,
                now_ms,
            } => {
                let live = match self.guarded(&key, if_revision, now_ms).await? {
                    Ok(live) => live,
                    Err(failed) => return Ok(failed),
                };
                let Some(prev) = live else {
                    return Ok(Outcome::NotFound);
                };
                self.delete(at, prev.clone());
                self.rev = at;
                Ok(Outcome::Deleted {
                    count: 1,
                    prev: Some(prev),
                })
            }
            Command::DeletePrefix { prefix, now_ms } => {
                let mut doomed = Vec::new();
                // `scan_prefix` already lays this batch's own changes over the table.
                for (_, row) in self.scan_prefix(&prefix).await? {
                    if let Some(kv) = row.filter(|kv| !is_expired(kv, now_ms)) {
                        doomed.push(kv);
                    }
                }
                let count = doomed.len() as u64;
                for prev in doomed {
                    self.delete(at, prev);
                }
                if count > 0 {
                    self.rev = at;
                }
                Ok(Outcome::Deleted { count, prev: None })
            }
            Command::Place { map, .. } => Ok(self.place(map)),
            Command::Expire { keys, now_ms } => {
                let mut count = 0;
                for key in keys {
                    if let Some(kv) = self.row(&key).await? {
                        // Re-checked here: the key may have been rewritten since the reaper saw it.
                        if is_expired(&kv, now_ms) {
                            self.delete(at, kv);
                            count += 1;
                        }
                    }
                }
                if count > 0 {
                    self.rev = at;
                }
                Ok(Outcome::Deleted { count, prev: None })
            }
            Command::Txn {
                compare,
                success,
                failure,
                now_ms,
            } => {
                let mut succeeded = true;
                for c in &compare {
                    let live = self.load(&c.key, now_ms).await?;
                    if !compare_holds(c, live.as_ref()) {
                        succeeded = false;
                        break;
                    }
                }
                let ops = if succeeded { success } else { failure };
                let mut results = Vec::with_capacity(ops.len());
                let mut wrote = false;
                for op in ops {
                    results.push(match op {
                        TxnStep::Put {
                            key,
                            value,
                            expires_at_ms,
                        } => {
                            let live = self.load(&key, now_ms).await?;
                            let (created, kv, prev) = self
                                .put(at, key, value, expires_at_ms, live, now_ms)
                                .await?;
                            wrote = true;
                            StepResult::Put { created, kv, prev }
                        }
                        TxnStep::Delete { key } => match self.load(&key, now_ms).await? {
                            Some(prev) => {
                                self.delete(at, prev.clone());
                                wrote = true;
                                StepResult::Delete {
                                    deleted: 1,
                                    prev: Some(prev),
                                }
                            }
                            None => StepResult::Delete {
                                deleted: 0,
                                prev: None,
                            },
                        },
                        TxnStep::Get { key } => StepResult::Get {
                            kv: self.load(&key, now_ms).await?,
                        },
                    });
                }
                if wrote {
                    self.rev = at;
                }
                Ok(Outcome::Txn { succeeded, results })
            }
        }
    }
}

impl ApplyCtx<'_> {
    /// Every key with `prefix` as the state stands before this batch, with its row
    /// (`None`: deleted, still pinned in the overlay), in key order, plus keys only
    /// this batch knows. The overlay is read before the table: a row leaves the
    /// overlay only after its commit, and nothing else applies while this runs, so
    /// every key is in one or the other.
    async fn scan_prefix(&mut self, prefix: &str) -> Result<Vec<(String, Row)>, StoreError> {
        use futures_util::TryStreamExt;
        let pinned = self.store.overlay.scan_prefix(prefix);
        // Keys with the prefix are contiguous from the prefix on, in byte order: the
        // rows are streamed and the scan stops at the first key without the prefix
        // (fetching them all read the whole rest of the table).
        let mut rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {KV_COLUMNS} FROM kv WHERE key >= $1 ORDER BY key"
        )))
        .bind(prefix.to_string())
        .fetch(&self.store.reader);
        let mut all: std::collections::BTreeMap<String, Row> = std::collections::BTreeMap::new();
        while let Some(row) = rows.try_next().await? {
            let kv = row_to_kv(&row, true)?;
            if !kv.key.starts_with(prefix) {
                break;
            }
            all.insert(kv.key.clone(), Some(kv));
        }
        drop(rows);
        all.extend(pinned);
        for (k, row) in &self.cache {
            if k.starts_with(prefix) {
                all.insert(k.clone(), row.clone());
            }
        }
        Ok(all.into_iter().collect())
    }
}

/// Calls `f` with every key `cmd` reads or writes by name (not prefix scans).
fn for_each_key<'a>(cmd: &'a Command, mut f: impl FnMut(&'a str)) {
    match cmd {
        Command::Put { key, .. } | Command::Delete { key, .. } => f(key),
        Command::Expire { keys, .. } => keys.iter().for_each(|k| f(k)),
        Command::Txn {
            compare,
            success,
            failure,
            ..
        } => {
            compare.iter().for_each(|c| f(&c.key));
            for op in success.iter().chain(failure) {
                match op {
                    TxnStep::Put { key, .. } | TxnStep::Delete { key } | TxnStep::Get { key } => {
                        f(key)
                    }
                }
            }
        }
        Command::DeletePrefix { .. } | Command::Place { .. } => {}
    }
}

/// The guard of a CAS: the live key's `mod_revision` (0 when absent) must equal `want`.
fn guard_holds(live: &Option<StoredKv>, want: Option<u64>) -> bool {
    want.is_none_or(|w| live.as_ref().map(|k| k.mod_revision).unwrap_or(0) == w)
}

fn ordered<T: Ord>(op: ConditionOp, have: T, want: T) -> bool {
    match op {
        ConditionOp::Eq => have == want,
        ConditionOp::Ne => have != want,
        ConditionOp::Lt => have < want,
        ConditionOp::Gt => have > want,
    }
}

/// Evaluates one transaction comparison against the live state of its key.
pub(crate) fn compare_holds(c: &Condition, live: Option<&StoredKv>) -> bool {
    match &c.target {
        ConditionTarget::Value(want) => match live.map(|k| k.value.as_str()) {
            Some(have) => ordered(c.op, have, want.as_str()),
            None => false,
        },
        ConditionTarget::Version(want) => {
            ordered(c.op, live.map(|k| k.version).unwrap_or(0), *want)
        }
        ConditionTarget::CreateRevision(want) => {
            ordered(c.op, live.map(|k| k.create_revision).unwrap_or(0), *want)
        }
        ConditionTarget::ModRevision(want) => {
            ordered(c.op, live.map(|k| k.mod_revision).unwrap_or(0), *want)
        }
        ConditionTarget::Exists(want) => ordered(c.op, live.is_some(), *want),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(value: &str, version: u64, rev: u64) -> StoredKv {
        StoredKv {
            key: "k".into(),
            value: value.into(),
            create_revision: 1,
            mod_revision: rev,
            version,
            expires_at_ms: None,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    fn cmp(op: ConditionOp, target: ConditionTarget) -> Condition {
        Condition {
            key: "k".into(),
            op,
            target,
        }
    }

    #[test]
    fn comparisons() {
        let live = kv("b", 3, 7);
        assert!(compare_holds(
            &cmp(ConditionOp::Eq, ConditionTarget::Value("b".into())),
            Some(&live)
        ));
        assert!(compare_holds(
            &cmp(ConditionOp::Gt, ConditionTarget::Value("a".into())),
            Some(&live)
        ));
        assert!(!compare_holds(
            &cmp(ConditionOp::Lt, ConditionTarget::Value("a".into())),
            Some(&live)
        ));
        assert!(compare_holds(
            &cmp(ConditionOp::Ne, ConditionTarget::Version(2)),
            Some(&live)
        ));
        assert!(compare_holds(
            &cmp(ConditionOp::Eq, ConditionTarget::ModRevision(7)),
            Some(&live)
        ));
        assert!(compare_holds(
            &cmp(ConditionOp::Lt, ConditionTarget::CreateRevision(2)),
            Some(&live)
        ));
        assert!(compare_holds(
            &cmp(ConditionOp::Eq, ConditionTarget::Exists(true)),
            Some(&live)
        ));
        // A missing key: value comparisons are false, counters are 0.
        assert!(!compare_holds(
            &cmp(ConditionOp::Ne, ConditionTarget::Value("x".into())),
            None
        ));
        assert!(compare_holds(
            &cmp(ConditionOp::Eq, ConditionTarget::ModRevision(0)),
            None
        ));
        assert!(compare_holds(
            &cmp(ConditionOp::Eq, ConditionTarget::Exists(false)),
            None
        ));
        assert!(guard_holds(&None, Some(0)));
        assert!(!guard_holds(&Some(live.clone()), Some(0)));
        assert!(guard_holds(&Some(live), None));
    }
}
