//! Applying commands to the `kv` table inside the state machine's transaction:
//! the etcd-like revision rules, compare-and-set, transactions, expiry, and
//! the watch events each change produces.
//!
//! A command changes the store at most once per revision: every write of one
//! command (a put, a prefix delete, all writes of a transaction) carries the
//! same new revision, and a command that changes nothing (failed guard, delete
//! of a missing key, read-only transaction) leaves the revision where it was.

use sqlx::Any;
use sqlx::Transaction;

use super::KV_BY_KEY;
use super::StoreError;
use super::is_expired;
use super::row_to_kv;
use crate::types::Cmp;
use crate::types::CmpOp;
use crate::types::CmpTarget;
use crate::types::Command;
use crate::types::EventKind;
use crate::types::KeyValue;
use crate::types::Outcome;
use crate::types::TxnOp;
use crate::types::TxnOpResult;
use crate::types::WatchEvent;

/// State threaded through the application of one batch.
pub(crate) struct ApplyCtx<'t, 'c> {
    pub tx: &'t mut Transaction<'c, Any>,
    /// Revision after the last applied command.
    pub rev: u64,
    /// Changes made so far in this batch, in order.
    pub events: Vec<WatchEvent>,
}

async fn load(
    tx: &mut Transaction<'_, Any>,
    key: &str,
    now_ms: u64,
) -> Result<Option<KeyValue>, StoreError> {
    let row = sqlx::query(KV_BY_KEY)
        .bind(key)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row
        .map(|r| row_to_kv(&r, true))
        .transpose()?
        .filter(|kv| !is_expired(kv, now_ms)))
}

pub(crate) async fn upsert(tx: &mut Transaction<'_, Any>, kv: &KeyValue) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO kv (key, value, create_revision, mod_revision, version, expires_at_ms, created_at_ms, updated_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
         create_revision = excluded.create_revision, mod_revision = excluded.mod_revision, version = excluded.version, \
         expires_at_ms = excluded.expires_at_ms, created_at_ms = excluded.created_at_ms, updated_at_ms = excluded.updated_at_ms",
    )
    .bind(kv.key.clone())
    .bind(kv.value.clone().unwrap_or_default())
    .bind(kv.create_revision as i64)
    .bind(kv.mod_revision as i64)
    .bind(kv.version as i64)
    .bind(kv.expires_at_ms.map(|v| v as i64))
    .bind(kv.created_at_ms as i64)
    .bind(kv.updated_at_ms as i64)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn delete_row(tx: &mut Transaction<'_, Any>, key: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM kv WHERE key = $1")
        .bind(key)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

impl ApplyCtx<'_, '_> {
    /// Writes `key` at revision `at` given its live previous state.
    async fn put(
        &mut self,
        at: u64,
        key: String,
        value: String,
        expires_at_ms: Option<u64>,
        live: Option<KeyValue>,
        now_ms: u64,
    ) -> Result<(bool, KeyValue, Option<KeyValue>), StoreError> {
        let kv = KeyValue {
            key,
            value: Some(value),
            create_revision: live.as_ref().map(|k| k.create_revision).unwrap_or(at),
            mod_revision: at,
            version: live.as_ref().map(|k| k.version + 1).unwrap_or(1),
            expires_at_ms,
            created_at_ms: live.as_ref().map(|k| k.created_at_ms).unwrap_or(now_ms),
            updated_at_ms: now_ms,
        };
        upsert(self.tx, &kv).await?;
        self.events.push(WatchEvent {
            revision: at,
            kind: EventKind::Put,
            key: kv.key.clone(),
            kv: Some(kv.clone()),
            prev: live.clone(),
        });
        Ok((live.is_none(), kv, live))
    }

    /// Deletes the live key `prev` at revision `at`.
    async fn delete(&mut self, at: u64, prev: KeyValue) -> Result<(), StoreError> {
        delete_row(self.tx, &prev.key).await?;
        self.events.push(WatchEvent {
            revision: at,
            kind: EventKind::Delete,
            key: prev.key.clone(),
            kv: None,
            prev: Some(prev),
        });
        Ok(())
    }

    /// The live value of `key` if the CAS guard holds, else the `PreconditionFailed` outcome.
    async fn guarded(
        &mut self,
        key: &str,
        if_revision: Option<u64>,
        now_ms: u64,
    ) -> Result<Result<Option<KeyValue>, Outcome>, StoreError> {
        let live = load(self.tx, key, now_ms).await?;
        Ok(if guard_holds(&live, if_revision) {
            Ok(live)
        } else {
            Err(Outcome::PreconditionFailed { current: live })
        })
    }

    /// Applies one command; bumps the revision once if (and only if) it changed anything.
    pub async fn command(&mut self, cmd: Command) -> Result<Outcome, StoreError> {
        let at = self.rev + 1;
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
                self.delete(at, prev.clone()).await?;
                self.rev = at;
                Ok(Outcome::Deleted {
                    count: 1,
                    prev: Some(prev),
                })
            }
            Command::DeletePrefix { prefix, now_ms } => {
                // Keys with the prefix are contiguous from the prefix on, in byte order.
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {} FROM kv WHERE key >= $1 ORDER BY key",
                    super::KV_COLUMNS
                )))
                .bind(prefix.clone())
                .fetch_all(&mut **self.tx)
                .await?;
                let mut doomed = Vec::new();
                for row in &rows {
                    let kv = row_to_kv(row, true)?;
                    if !kv.key.starts_with(&prefix) {
                        break;
                    }
                    if !is_expired(&kv, now_ms) {
                        doomed.push(kv);
                    }
                }
                let count = doomed.len() as u64;
                for prev in doomed {
                    self.delete(at, prev).await?;
                }
                if count > 0 {
                    self.rev = at;
                }
                Ok(Outcome::Deleted { count, prev: None })
            }
            Command::Expire { keys, now_ms } => {
                let mut count = 0;
                for key in keys {
                    let row = sqlx::query(KV_BY_KEY)
                        .bind(key.clone())
                        .fetch_optional(&mut **self.tx)
                        .await?;
                    if let Some(kv) = row.map(|r| row_to_kv(&r, true)).transpose()? {
                        // Re-checked here: the key may have been rewritten since the reaper saw it.
                        if is_expired(&kv, now_ms) {
                            self.delete(at, kv).await?;
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
                    let live = load(self.tx, &c.key, now_ms).await?;
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
                        TxnOp::Put {
                            key,
                            value,
                            expires_at_ms,
                        } => {
                            let live = load(self.tx, &key, now_ms).await?;
                            let (created, kv, prev) = self
                                .put(at, key, value, expires_at_ms, live, now_ms)
                                .await?;
                            wrote = true;
                            TxnOpResult::Put { created, kv, prev }
                        }
                        TxnOp::Delete { key } => match load(self.tx, &key, now_ms).await? {
                            Some(prev) => {
                                self.delete(at, prev.clone()).await?;
                                wrote = true;
                                TxnOpResult::Delete {
                                    deleted: 1,
                                    prev: Some(prev),
                                }
                            }
                            None => TxnOpResult::Delete {
                                deleted: 0,
                                prev: None,
                            },
                        },
                        TxnOp::Get { key } => TxnOpResult::Get {
                            kv: load(self.tx, &key, now_ms).await?,
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

/// The guard of a CAS: the live key's `mod_revision` (0 when absent) must equal `want`.
fn guard_holds(live: &Option<KeyValue>, want: Option<u64>) -> bool {
    want.is_none_or(|w| live.as_ref().map(|k| k.mod_revision).unwrap_or(0) == w)
}

fn ordered<T: Ord>(op: CmpOp, have: T, want: T) -> bool {
    match op {
        CmpOp::Eq => have == want,
        CmpOp::Ne => have != want,
        CmpOp::Lt => have < want,
        CmpOp::Gt => have > want,
    }
}

/// Evaluates one transaction comparison against the live state of its key.
pub(crate) fn compare_holds(c: &Cmp, live: Option<&KeyValue>) -> bool {
    match &c.target {
        CmpTarget::Value(want) => match live.and_then(|k| k.value.as_deref()) {
            Some(have) => ordered(c.op, have, want.as_str()),
            None => false,
        },
        CmpTarget::Version(want) => ordered(c.op, live.map(|k| k.version).unwrap_or(0), *want),
        CmpTarget::CreateRevision(want) => {
            ordered(c.op, live.map(|k| k.create_revision).unwrap_or(0), *want)
        }
        CmpTarget::ModRevision(want) => {
            ordered(c.op, live.map(|k| k.mod_revision).unwrap_or(0), *want)
        }
        CmpTarget::Exists(want) => ordered(c.op, live.is_some(), *want),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(value: &str, version: u64, rev: u64) -> KeyValue {
        KeyValue {
            key: "k".into(),
            value: Some(value.into()),
            create_revision: 1,
            mod_revision: rev,
            version,
            expires_at_ms: None,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    fn cmp(op: CmpOp, target: CmpTarget) -> Cmp {
        Cmp {
            key: "k".into(),
            op,
            target,
        }
    }

    #[test]
    fn comparisons() {
        let live = kv("b", 3, 7);
        assert!(compare_holds(
            &cmp(CmpOp::Eq, CmpTarget::Value("b".into())),
            Some(&live)
        ));
        assert!(compare_holds(
            &cmp(CmpOp::Gt, CmpTarget::Value("a".into())),
            Some(&live)
        ));
        assert!(!compare_holds(
            &cmp(CmpOp::Lt, CmpTarget::Value("a".into())),
            Some(&live)
        ));
        assert!(compare_holds(
            &cmp(CmpOp::Ne, CmpTarget::Version(2)),
            Some(&live)
        ));
        assert!(compare_holds(
            &cmp(CmpOp::Eq, CmpTarget::ModRevision(7)),
            Some(&live)
        ));
        assert!(compare_holds(
            &cmp(CmpOp::Lt, CmpTarget::CreateRevision(2)),
            Some(&live)
        ));
        assert!(compare_holds(
            &cmp(CmpOp::Eq, CmpTarget::Exists(true)),
            Some(&live)
        ));
        // A missing key: value comparisons are false, counters are 0.
        assert!(!compare_holds(
            &cmp(CmpOp::Ne, CmpTarget::Value("x".into())),
            None
        ));
        assert!(compare_holds(
            &cmp(CmpOp::Eq, CmpTarget::ModRevision(0)),
            None
        ));
        assert!(compare_holds(
            &cmp(CmpOp::Eq, CmpTarget::Exists(false)),
            None
        ));
        assert!(guard_holds(&None, Some(0)));
        assert!(!guard_holds(&Some(live.clone()), Some(0)));
        assert!(guard_holds(&Some(live), None));
    }
}
