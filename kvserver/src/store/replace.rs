//! Replacing the whole `kv` table with keys streamed in: installing a Raft
//! snapshot (`sm`) and restoring a backup (`backup`) share it.

use super::StoreError;
use super::WriteBatch;
use super::batch;
use super::persist::upsert_many;
use crate::command::StoredKv;

/// Replaces the whole `kv` table in `w`'s transaction with keys streamed in
/// (installing a snapshot, restoring a backup): the table is emptied, then
/// rows are sent per chunk, since the state may be larger than memory should
/// hold. Nothing is visible before the caller commits.
pub(crate) struct TableReplace<'w> {
    w: &'w mut WriteBatch,
    rows: Vec<StoredKv>,
}

impl<'w> TableReplace<'w> {
    pub fn new(w: &'w mut WriteBatch) -> Self {
        w.push("DELETE FROM kv", Vec::new());
        Self {
            w,
            rows: Vec::with_capacity(batch::MAX_ROWS),
        }
    }

    pub async fn push(&mut self, kv: StoredKv) -> Result<(), StoreError> {
        self.rows.push(kv);
        if self.rows.len() == batch::MAX_ROWS {
            self.send().await?;
        }
        Ok(())
    }

    async fn send(&mut self) -> Result<(), StoreError> {
        if !self.rows.is_empty() {
            upsert_many(self.w, &self.rows.iter().collect::<Vec<_>>());
            self.w.send().await?;
            self.rows.clear();
        }
        Ok(())
    }

    /// Sends the last chunk; the caller then adds its metadata and commits.
    pub async fn finish(mut self) -> Result<(), StoreError> {
        self.send().await
    }
}
