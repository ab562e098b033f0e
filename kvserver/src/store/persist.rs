//! The persister: writes what the state machine applied in memory (`overlay.rs`)
//! to the database, every batch queued since its last commit in one transaction
//! — the final row of each key, the watch events, the applied position — then
//! unpins the rows. One commit covers every batch applied while it lingered or
//! while the previous commit ran (etcd's backend commits its batch every 100 ms
//! or 10,000 writes; when this one commits: `overlay.rs`), and the write path
//! never waits for it.
//!
//! The writes are idempotent (upserts of final rows, events keyed by revision,
//! meta rows), so a commit whose outcome is unknown is simply written again. A
//! database that is down stalls the persister, not the writes, until the queue
//! reaches its bound (`overlay::MAX_PENDING_ENTRIES`); then applies wait and
//! writes time out with 503 as before. Nothing is ever dropped: the applied
//! position in the database only moves with the rows it covers.

use std::collections::BTreeMap;

use super::Durability;
use super::Store;
use super::StoreError;
use super::WriteBatch;
use super::batch;
use super::batch::Shapes;
use super::cache::Row;
use super::overlay::Pending;
use super::put_metas;
use super::script::Arg;
use crate::command::Change;
use crate::command::StoredKv;

static DELETE_KEYS: Shapes =
    Shapes::new(|n| format!("DELETE FROM kv WHERE key IN ({})", batch::params(n)));
static UPSERT_KV: Shapes = Shapes::new(|n| {
    format!(
        "INSERT INTO kv ({}) VALUES {} ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
         create_revision = excluded.create_revision, mod_revision = excluded.mod_revision, version = excluded.version, \
         expires_at_ms = excluded.expires_at_ms, created_at_ms = excluded.created_at_ms, updated_at_ms = excluded.updated_at_ms",
        super::KV_COLUMNS,
        batch::values(n, 8)
    )
});

/// Queues writes of `rows` (distinct keys) in as few statements as their count allows.
pub(crate) fn upsert_many(w: &mut WriteBatch, rows: &[&StoredKv]) {
    let mut rest = rows;
    for n in batch::insert_chunks(rows.len()) {
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        let mut args = Vec::with_capacity(8 * n);
        for kv in chunk {
            args.extend([
                Arg::Text(kv.key.clone()),
                Arg::Text(kv.value.clone()),
                Arg::Int(kv.create_revision as i64),
                Arg::Int(kv.mod_revision as i64),
                Arg::Int(kv.version as i64),
                Arg::OptInt(kv.expires_at_ms.map(|v| v as i64)),
                Arg::Int(kv.created_at_ms as i64),
                Arg::Int(kv.updated_at_ms as i64),
            ]);
        }
        w.push(UPSERT_KV.get(n), args);
    }
}

/// Queues deletes of `keys` in padded `IN` lists.
fn delete_many(w: &mut WriteBatch, keys: &[&str]) {
    for chunk in keys.chunks(batch::MAX_ROWS) {
        let shape = batch::padded(chunk.len());
        let args = (0..shape)
            .map(|i| Arg::Text(chunk[i.min(chunk.len() - 1)].to_string()))
            .collect();
        w.push(DELETE_KEYS.get(shape), args);
    }
}

/// Several queued batches as one write.
#[derive(Default)]
struct Merged<'a> {
    rows: BTreeMap<&'a str, &'a Row>,
    events: Vec<&'a Change>,
    meta: BTreeMap<&'static str, &'a [u8]>,
    compact_to: Option<u64>,
}

fn merge(batches: &[Pending]) -> Merged<'_> {
    let mut m = Merged::default();
    for b in batches {
        for (k, r) in &b.rows {
            m.rows.insert(k.as_str(), r);
        }
        m.events.extend(b.events.iter());
        for (name, value) in &b.meta {
            m.meta.insert(name, value.as_slice());
        }
        m.compact_to = m.compact_to.max(b.compact_to);
    }
    m
}

async fn write(store: &Store, m: &Merged<'_>) -> Result<(), StoreError> {
    // Derived from the durable log: see `Durability::Deferred`.
    let mut w = store.write_batch(Durability::Deferred, true).await?;
    let mut upserts = Vec::new();
    let mut deletes = Vec::new();
    for (k, r) in &m.rows {
        match r {
            Some(kv) => upserts.push(kv),
            None => deletes.push(*k),
        }
    }
    upsert_many(&mut w, &upserts);
    delete_many(&mut w, &deletes);
    let events: Vec<Change> = m.events.iter().map(|e| (*e).clone()).collect();
    super::watch::write_events(&mut w, &events, m.compact_to)?;
    let meta: Vec<(&str, Vec<u8>)> = m.meta.iter().map(|(n, v)| (*n, v.to_vec())).collect();
    put_metas(&mut w, &meta);
    w.commit().await
}

/// Runs until the overlay is closed and drained.
pub(crate) async fn run(store: Store) {
    while let Some(batches) = store.overlay.take().await {
        let started = std::time::Instant::now();
        let merged = merge(&batches);
        loop {
            match store
                .retrying("persist applied writes", || write(&store, &merged))
                .await
            {
                Ok(()) => break,
                // Shutting down with the database gone: the log still holds all of it.
                Err(StoreError::Closed) => return,
                Err(e) => {
                    // Acknowledged writes depend on this: never drop, keep trying.
                    store.set_healthy(false);
                    tracing::error!(error = %e, "persisting applied writes failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
        // The cache first: a reader that no longer finds a row in the overlay must
        // find the committed one (or nothing) in the cache, never an older row.
        store.rows.committed(
            merged
                .rows
                .iter()
                .map(|(k, r)| (k.to_string(), (*r).clone())),
        );
        drop(merged);
        store.overlay.persisted(&batches);
        store
            .metrics
            .storage_sync_seconds
            .observe(started.elapsed().as_secs_f64());
    }
}
