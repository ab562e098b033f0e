//! The read path of the state machine: point reads (through the overlay of
//! applied rows not yet persisted, then the row cache), consistent batch reads,
//! paginated prefix listings, and the scans the node itself needs (expired
//! keys, key count). Reads that go to the database use the reader pool; the
//! ones that scan it first wait until it holds everything applied so far
//! (`Store::caught_up`), so they too see every acknowledged write.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::Store;
use super::StoreError;
use crate::command::StoredKv;

impl Store {
    /// Reads a key, hiding it when its expiry is at or before `now_ms`.
    pub async fn get(&self, key: &str, now_ms: u64) -> Result<Option<StoredKv>, StoreError> {
        // While the database is known to be down, reads answer 503 like uncached ones
        // (one behaviour for every key; the outage is visible to clients and probes).
        let cached = if self.healthy() {
            self.overlay.get(key).or_else(|| self.rows.get(key))
        } else {
            // Applied but not persisted: only here, whatever the database does.
            self.overlay.get(key)
        };
        let row = match cached {
            Some(row) => row,
            None => {
                let generation = self.rows.generation();
                let row = sqlx::query(KV_BY_KEY)
                    .bind(key)
                    .fetch_optional(&self.reader)
                    .await?
                    .map(|r| row_to_kv(&r, true))
                    .transpose()?;
                self.rows.fill(generation, key, &row);
                row
            }
        };
        Ok(row.filter(|kv| !is_expired(kv, now_ms)))
    }

    /// Reads several keys from one consistent view; returns found keys and missing
    /// names, each key once, or `None` once the found keys and values pass
    /// `max_bytes` (the read stops there: a greedy request costs at most that).
    pub async fn get_many(
        &self,
        keys: &[String],
        now_ms: u64,
        max_bytes: usize,
    ) -> Result<Option<(Vec<StoredKv>, Vec<String>)>, StoreError> {
        self.caught_up().await?;
        let mut tx = self.reader.begin().await?;
        let mut found = Vec::new();
        let mut missing = Vec::new();
        let mut seen = std::collections::HashSet::with_capacity(keys.len());
        let mut bytes = 0usize;
        for key in keys {
            if !seen.insert(key.as_str()) {
                continue;
            }
            let row = sqlx::query(KV_BY_KEY)
                .bind(key)
                .fetch_optional(&mut *tx)
                .await?;
            match row
                .map(|r| row_to_kv(&r, true))
                .transpose()?
                .filter(|kv| !is_expired(kv, now_ms))
            {
                Some(kv) => {
                    bytes = bytes.saturating_add(kv.key.len() + kv.value.len());
                    if bytes > max_bytes {
                        tx.rollback().await?;
                        return Ok(None);
                    }
                    found.push(kv)
                }
                None => missing.push(key.clone()),
            }
        }
        tx.rollback().await?;
        Ok(Some((found, missing)))
    }

    /// Lists keys with `prefix` in key order, strictly after `start_after`, at most
    /// `limit` of them and (beyond the first) at most `max_bytes` of keys and values.
    /// Returns the keys and whether more follow. Rows are read as a stream, so the
    /// page in memory is all a listing costs.
    pub async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        keys_only: bool,
        now_ms: u64,
        max_bytes: usize,
    ) -> Result<(Vec<StoredKv>, bool), StoreError> {
        use futures_util::TryStreamExt;
        self.caught_up().await?;
        // Keys with a common prefix are contiguous in key order, so the scan starts at the
        // prefix (or just after the cursor) and stops at the first key without it.
        let (op, from) = match start_after {
            Some(s) if s >= prefix => (">", s),
            _ => (">=", prefix),
        };
        let columns = if keys_only {
            KV_META_COLUMNS
        } else {
            KV_COLUMNS
        };
        let sql = format!(
            "SELECT {columns} FROM kv WHERE key {op} $1 AND (expires_at_ms IS NULL OR expires_at_ms > $2) \
             ORDER BY key LIMIT $3"
        );
        let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(from)
            .bind(now_ms as i64)
            .bind((limit + 1) as i64)
            .fetch(&self.reader);
        let mut out = Vec::new();
        let mut more = false;
        let mut bytes = 0usize;
        while let Some(row) = rows.try_next().await? {
            let kv = row_to_kv(&row, !keys_only)?;
            if !kv.key.starts_with(prefix) {
                break;
            }
            let size = kv.key.len() + kv.value.len();
            if out.len() == limit || (!out.is_empty() && bytes.saturating_add(size) > max_bytes) {
                more = true;
                break;
            }
            bytes += size;
            out.push(kv);
        }
        Ok((out, more))
    }

    /// Keys whose expiry is at or before `now_ms` (for the leader's reaper).
    pub async fn expired_keys(&self, now_ms: u64, limit: usize) -> Result<Vec<String>, StoreError> {
        self.caught_up().await?;
        let rows = sqlx::query(
            "SELECT key FROM kv WHERE expires_at_ms IS NOT NULL AND expires_at_ms <= $1 ORDER BY expires_at_ms LIMIT $2",
        )
        .bind(now_ms as i64)
        .bind(limit as i64)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>(0).map_err(StoreError::from))
            .collect()
    }

    /// Keys stored, and the bytes of their keys and values (per partition in
    /// `GET /v1/partitions` and the partition metrics). A full scan: called
    /// every few seconds in the background, never per request.
    pub async fn key_stats(&self) -> Result<(u64, u64), StoreError> {
        self.caught_up().await?;
        let size = if self.backend() == "postgres" {
            "OCTET_LENGTH(key) + OCTET_LENGTH(value)"
        } else {
            "LENGTH(CAST(key AS BLOB)) + LENGTH(CAST(value AS BLOB))"
        };
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*), COALESCE(SUM({size}), 0) FROM kv"
        )))
        .fetch_one(&self.reader)
        .await?;
        Ok((
            row.try_get::<i64, _>(0)? as u64,
            row.try_get::<i64, _>(1)? as u64,
        ))
    }

    /// Number of live keys (for `/status`).
    pub async fn key_count(&self) -> Result<u64, StoreError> {
        self.caught_up().await?;
        let row = sqlx::query("SELECT COUNT(*) FROM kv")
            .fetch_one(&self.reader)
            .await?;
        Ok(row.try_get::<i64, _>(0)? as u64)
    }
}

pub(crate) const KV_COLUMNS: &str = "key, value, create_revision, mod_revision, version, expires_at_ms, created_at_ms, updated_at_ms";
const KV_META_COLUMNS: &str = "key, NULL AS value, create_revision, mod_revision, version, expires_at_ms, created_at_ms, updated_at_ms";
pub(crate) const KV_BY_KEY: &str = "SELECT key, value, create_revision, mod_revision, version, expires_at_ms, created_at_ms, updated_at_ms \
     FROM kv WHERE key = $1";

pub(crate) fn row_to_kv(row: &AnyRow, with_value: bool) -> Result<StoredKv, StoreError> {
    let value: String = if with_value {
        row.try_get(1)?
    } else {
        String::new()
    };
    Ok(StoredKv {
        key: row.try_get(0)?,
        value,
        create_revision: row.try_get::<i64, _>(2)? as u64,
        mod_revision: row.try_get::<i64, _>(3)? as u64,
        version: row.try_get::<i64, _>(4)? as u64,
        expires_at_ms: row.try_get::<Option<i64>, _>(5)?.map(|v| v as u64),
        created_at_ms: row.try_get::<i64, _>(6)? as u64,
        updated_at_ms: row.try_get::<i64, _>(7)? as u64,
    })
}

pub(crate) fn is_expired(kv: &StoredKv, now_ms: u64) -> bool {
    matches!(kv.expires_at_ms, Some(t) if t <= now_ms)
}
