//! The state machine's record of one key ([`StoredKv`]): what apply outcomes,
//! watch history, Raft snapshots, the peer wire and backup files carry.
//!
//! It lives outside the `server` feature because backup files hold it too, and
//! `kvctl` reads, checks and composes those without the Raft and storage stacks.

use serde::Deserialize;
use serde::Serialize;

use crate::model::KeyValue;

/// A key as the state machine holds it: in apply outcomes, watch history,
/// snapshots and on the peer wire. Every field is always present, so it
/// encodes positionally (bincode); the HTTP API's `model::KeyValue` is made
/// from it at the API boundary, which is also where keys-only listings drop the
/// value. Its field order is the snapshot and watch-history record format:
/// changing it changes those files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredKv {
    pub key: String,
    /// Empty in keys-only listings (the value was not read).
    pub value: String,
    /// Revision at which the key was (last) created.
    pub create_revision: u64,
    /// Revision of the last modification.
    pub mod_revision: u64,
    /// Number of modifications since creation (1 after create).
    pub version: u64,
    /// Absolute expiry (unix ms), if the key has a TTL.
    pub expires_at_ms: Option<u64>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

impl StoredKv {
    /// The key as the API shows it.
    pub fn into_api(self) -> KeyValue {
        self.into_api_with(true)
    }

    /// The key as the API shows it, without its value when `with_value` is false
    /// (keys-only listings).
    pub fn into_api_with(self, with_value: bool) -> KeyValue {
        KeyValue {
            key: self.key,
            value: with_value.then_some(self.value),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            expires_at_ms: self.expires_at_ms,
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
        }
    }

    /// The record of a key the API showed with its value (a watch event's `kv`).
    pub fn from_api(kv: KeyValue) -> Self {
        Self {
            key: kv.key,
            value: kv.value.unwrap_or_default(),
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            expires_at_ms: kv.expires_at_ms,
            created_at_ms: kv.created_at_ms,
            updated_at_ms: kv.updated_at_ms,
        }
    }
}
