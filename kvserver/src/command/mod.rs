//! The Raft type configuration and the replicated command language.
//!
//! Everything that travels through the Raft log is defined here: the node
//! descriptor stored in the membership, the [`Command`]s a leader proposes and
//! the [`ApplyResult`] the state machine hands back to the proposer. Commands
//! are fully deterministic: anything time-dependent (TTL expiry, timestamps)
//! is decided by the leader *before* proposing and carried in the entry, so
//! every replica applies the same bytes to the same state and agrees.

mod check;

pub use check::Invalid;
pub use check::MAX_KEY_BYTES;
pub use check::MAX_TTL_SECONDS;
pub use check::MAX_TXN_ITEMS;
pub use check::check_key;

use std::fmt;

use serde::Deserialize;
use serde::Serialize;

pub use crate::model::NodeId;
pub use crate::record::StoredKv;

/// What the membership records about a node: where to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvNode {
    /// `host:port` of the client HTTP API (used to forward requests to the leader).
    pub api_addr: String,
    /// `host:port` of the Raft peer listener.
    pub raft_addr: String,
}

impl fmt::Display for KvNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "api={} raft={}", self.api_addr, self.raft_addr)
    }
}

openraft::declare_raft_types!(
    /// The openraft type configuration of kvserver.
    pub TypeConfig:
        D = Command,
        R = ApplyResult,
        NodeId = NodeId,
        Node = KvNode,
);

/// One replicated mutation. Applied atomically as one revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Create or replace a key.
    Put {
        key: String,
        value: String,
        /// Absolute expiry (unix ms), decided by the leader from the TTL.
        expires_at_ms: Option<u64>,
        /// Compare-and-set guard on the key's `mod_revision`; `Some(0)` = must not exist.
        if_revision: Option<u64>,
        /// Leader wall clock when proposed; used for timestamps and expiry checks.
        now_ms: u64,
    },
    /// Delete one key.
    Delete {
        key: String,
        if_revision: Option<u64>,
        now_ms: u64,
    },
    /// Delete every key that starts with `prefix`.
    DeletePrefix { prefix: String, now_ms: u64 },
    /// Remove keys whose expiry is at or before `now_ms` (proposed by the leader's reaper).
    Expire { keys: Vec<String>, now_ms: u64 },
    /// Compare, then apply `success` or `failure` atomically, as one revision.
    Txn {
        compare: Vec<Condition>,
        success: Vec<TxnStep>,
        failure: Vec<TxnStep>,
        now_ms: u64,
    },
    /// Replace the placement map (`crate::placement::map`) if `map` is its next
    /// epoch; proposed only by the placement driver on the cluster group's leader.
    /// Changes no key and no revision.
    Place {
        map: crate::placement::map::PlacementMap,
        now_ms: u64,
    },
}

impl Command {
    /// The leader clock the command carries (unix ms).
    pub fn now_ms(&self) -> u64 {
        match self {
            Command::Put { now_ms, .. }
            | Command::Delete { now_ms, .. }
            | Command::DeletePrefix { now_ms, .. }
            | Command::Expire { now_ms, .. }
            | Command::Txn { now_ms, .. }
            | Command::Place { now_ms, .. } => *now_ms,
        }
    }

    /// Moves the command's clock to `now_ms`: the time it was built at becomes `now_ms`
    /// and every absolute expiry moves by the same amount, so a TTL keeps its length.
    /// A leader applies this to writes a follower built (the leader's clock decides).
    pub fn restamp(&mut self, now_ms: u64) {
        let shift = |t: &mut u64, from: u64| *t = now_ms.saturating_add(t.saturating_sub(from));
        match self {
            Command::Put {
                expires_at_ms,
                now_ms: at,
                ..
            } => {
                if let Some(e) = expires_at_ms {
                    shift(e, *at);
                }
                *at = now_ms;
            }
            Command::Delete { now_ms: at, .. }
            | Command::DeletePrefix { now_ms: at, .. }
            | Command::Expire { now_ms: at, .. }
            | Command::Place { now_ms: at, .. } => *at = now_ms,
            Command::Txn {
                success,
                failure,
                now_ms: at,
                ..
            } => {
                for op in success.iter_mut().chain(failure.iter_mut()) {
                    if let TxnStep::Put {
                        expires_at_ms: Some(e),
                        ..
                    } = op
                    {
                        shift(e, *at);
                    }
                }
                *at = now_ms;
            }
        }
    }
}

/// One condition of a transaction (the API's `model::Compare`, validated),
/// checked against the live (unexpired) state of a key. A missing key has value
/// none, version/create_revision/mod_revision 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    pub key: String,
    pub op: ConditionOp,
    pub target: ConditionTarget,
}

/// Comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConditionOp {
    Eq,
    Ne,
    Lt,
    Gt,
}

/// What a comparison looks at, with the operand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConditionTarget {
    /// The value (a missing key compares false with every operator).
    Value(String),
    Version(u64),
    CreateRevision(u64),
    ModRevision(u64),
    /// Whether the key exists (only `Eq` / `Ne`).
    Exists(bool),
}

/// One step of a transaction branch (the API's `model::Operation`, validated,
/// its TTL resolved to an absolute expiry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnStep {
    Put {
        key: String,
        value: String,
        expires_at_ms: Option<u64>,
    },
    Delete {
        key: String,
    },
    Get {
        key: String,
    },
}

/// What one [`TxnStep`] did (the API answers it as `model::OperationResult`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepResult {
    Put {
        created: bool,
        kv: StoredKv,
        prev: Option<StoredKv>,
    },
    Delete {
        deleted: u64,
        prev: Option<StoredKv>,
    },
    Get {
        kv: Option<StoredKv>,
    },
}

/// Kind of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change of one key, as applied at `revision`: what the watch feed and
/// history carry (the API streams it as `model::WatchEventBody`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub revision: u64,
    pub kind: EventKind,
    pub key: String,
    /// The key after a put.
    pub kv: Option<StoredKv>,
    /// The key before the change (absent on creation).
    pub prev: Option<StoredKv>,
    /// Leader clock (unix ms) of the command that made the change: what a
    /// point-in-time restore to a time compares. `None` only in history written
    /// by releases before it was recorded, for changes other than puts.
    pub at_ms: Option<u64>,
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Put { key, .. } => write!(f, "put({key})"),
            Command::Delete { key, .. } => write!(f, "delete({key})"),
            Command::DeletePrefix { prefix, .. } => write!(f, "delete_prefix({prefix})"),
            Command::Expire { keys, .. } => write!(f, "expire({} keys)", keys.len()),
            Command::Place { map, .. } => write!(f, "place(epoch {})", map.epoch),
            Command::Txn {
                compare,
                success,
                failure,
                ..
            } => {
                write!(
                    f,
                    "txn({} cmp, {}/{} ops)",
                    compare.len(),
                    success.len(),
                    failure.len()
                )
            }
        }
    }
}

/// What applying one [`Command`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A put succeeded; `created` is true when the key did not exist.
    Put {
        created: bool,
        kv: StoredKv,
        prev: Option<StoredKv>,
    },
    /// Delete / prefix delete / expire: how many keys went away.
    Deleted { count: u64, prev: Option<StoredKv> },
    /// The CAS guard did not hold; nothing changed.
    PreconditionFailed { current: Option<StoredKv> },
    /// The key to delete did not exist; nothing changed.
    NotFound,
    /// A transaction ran; `succeeded` says which branch.
    Txn {
        succeeded: bool,
        results: Vec<StepResult>,
    },
    /// A placement map was proposed: `epoch` is the map's epoch after it, and
    /// `refused` says why the proposed map did not replace the current one.
    Placed { epoch: u64, refused: Option<String> },
}

/// The state machine's answer to an entry; `revision` is the cluster revision after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyResult {
    pub revision: u64,
    pub outcome: Option<Outcome>,
}

impl ApplyResult {
    /// Result of a blank or membership entry: no outcome.
    pub fn none(revision: u64) -> Self {
        Self {
            revision,
            outcome: None,
        }
    }
}

/// Wall clock in unix milliseconds (saturating at 0 for clocks before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restamp_moves_time_and_keeps_ttl_lengths() {
        let mut put = Command::Put {
            key: "k".into(),
            value: "v".into(),
            expires_at_ms: Some(1_000 + 30_000),
            if_revision: None,
            now_ms: 1_000,
        };
        put.restamp(5_000);
        assert!(matches!(
            put,
            Command::Put {
                expires_at_ms: Some(35_000),
                now_ms: 5_000,
                ..
            }
        ));
        let mut txn = Command::Txn {
            compare: vec![],
            success: vec![
                TxnStep::Put {
                    key: "a".into(),
                    value: "1".into(),
                    expires_at_ms: Some(10_000 + 7_000),
                },
                TxnStep::Delete { key: "b".into() },
            ],
            failure: vec![TxnStep::Put {
                key: "c".into(),
                value: "2".into(),
                expires_at_ms: None,
            }],
            now_ms: 10_000,
        };
        // A leader clock behind the follower's moves expiries back by the same amount.
        txn.restamp(9_000);
        let Command::Txn {
            success,
            failure,
            now_ms,
            ..
        } = txn
        else {
            unreachable!("still a txn")
        };
        assert_eq!(now_ms, 9_000);
        assert!(matches!(
            &success[0],
            TxnStep::Put {
                expires_at_ms: Some(16_000),
                ..
            }
        ));
        assert!(matches!(
            &failure[0],
            TxnStep::Put {
                expires_at_ms: None,
                ..
            }
        ));
        let mut del = Command::Delete {
            key: "k".into(),
            if_revision: Some(3),
            now_ms: 1,
        };
        del.restamp(2);
        assert_eq!(
            del,
            Command::Delete {
                key: "k".into(),
                if_revision: Some(3),
                now_ms: 2
            }
        );
    }
}
