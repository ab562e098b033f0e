//! The Raft log and vote of a node, in a purpose-built log beside the database
//! (`<data_dir>/raftlog/`), as etcd keeps its WAL beside bbolt and rqlite its
//! Raft log beside SQLite: the key-value data stays in SQLite or PostgreSQL.
//!
//! Why our own and not a crate: the log is shared by every Raft group of the node
//! (partitions run 16 or more per pod) so that one `fdatasync` covers a batch of
//! all of them; `raft-log` and `raft-wal` are one log per instance, which would
//! cost one sync per group per batch. The format is small (frames of records,
//! CRC-32 each, `frame.rs`), segments are preallocated (`segment.rs`), and the
//! engine (`engine.rs`) is one writer thread doing group commit.
//!
//! Parts: [`frame`] the format, [`segment`] files and start-up checks, [`group`]
//! one group's in-memory log, `replay` rebuilding it on start, [`engine`] the
//! shared log, `writer` its writer thread,
//! [`storage`] openraft's log storage for one group on top of it, [`migrate`]
//! moving the log of a data directory written before out of its database.

pub mod engine;
pub mod frame;
pub mod group;
pub mod migrate;
mod replay;
pub mod segment;
pub mod storage;
#[cfg(test)]
mod tests;
mod writer;

use std::path::Path;
use std::path::PathBuf;

pub use self::engine::Engine;
pub use self::storage::RaftLog;

/// Where the log lives in a data directory.
pub const DIR: &str = "raftlog";

/// Errors of the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("raft log I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "raft log corrupt: {file} at offset {offset}: {detail}; refusing to start (restore this member from a backup or remove its volume so it rejoins from the leader)"
    )]
    Corrupt {
        file: PathBuf,
        offset: u64,
        detail: String,
    },
    #[error(
        "raft log belongs to {stored:?} but this node is {configured:?}; refusing to start (point data_dir at this node's own volume)"
    )]
    Identity { stored: String, configured: String },
    #[error(
        "raft log: entry {got} of group {group} does not continue the log (expected {expected})"
    )]
    Hole { group: u64, expected: u64, got: u64 },
    #[error("raft log stopped after a write error: {0}")]
    Failed(String),
    #[error(
        "raft log {0} is in use by another process (or another node of this one); refusing to open it twice"
    )]
    Locked(PathBuf),
    #[error("raft log is closed")]
    Closed,
    #[error("raft log record: {0}")]
    Codec(String),
    #[error("moving the raft log out of the database: {0}")]
    Migrate(String),
}

impl LogError {
    /// Wraps an I/O error on `path`.
    pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
        move |source| LogError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl From<LogError> for std::io::Error {
    fn from(e: LogError) -> Self {
        match e {
            LogError::Io { source, .. } => source,
            other => std::io::Error::other(other.to_string()),
        }
    }
}

/// The identity recorded in the log in `dir` (its first segment's header), if
/// there is a log there.
pub fn stored_identity(dir: &Path) -> Result<Option<String>, LogError> {
    if !dir.exists() {
        return Ok(None);
    }
    let Some(first) = segment::list(dir)?.first().copied() else {
        return Ok(None);
    };
    let path = segment::path(dir, first);
    let scanned = segment::scan_first(&path)?;
    let Some(payload) = scanned else {
        return Ok(None);
    };
    let recs = frame::records(&payload).map_err(|at| LogError::Corrupt {
        file: path.clone(),
        offset: (frame::FRAME_HEADER + at) as u64,
        detail: "malformed header record".into(),
    })?;
    Ok(recs
        .iter()
        .find(|r| r.kind == frame::Kind::Identity)
        .map(|r| String::from_utf8_lossy(r.bytes).into_owned()))
}

/// How the log is opened.
#[derive(Clone)]
pub struct LogOptions {
    /// Size segments are preallocated to.
    pub segment_bytes: u64,
    /// Bytes of recent entries each group keeps in memory (beyond those not yet written).
    pub cache_bytes_per_group: usize,
    /// Who owns the log (checked against every segment's header).
    pub identity: String,
    /// The node's metrics of the log, when measured.
    pub metrics: Option<LogMetrics>,
}

/// Metrics the log records as it works (the node registers them; tests leave them out).
#[derive(Clone)]
pub struct LogMetrics {
    /// Time of each batch's write + `fdatasync` (one per batch, for every group).
    pub sync_seconds: prometheus::Histogram,
    /// Bytes written to segments (frames and segment headers).
    pub written_bytes: prometheus::IntCounter,
    /// Suffixes dropped (a deposed leader's entries the new leader replaced).
    pub truncations: prometheus::IntCounter,
    /// Segment files on disk.
    pub segments: prometheus::IntGauge,
}

impl LogOptions {
    /// The identity recorded for node `node_id` of `cluster_id`.
    pub fn identity_of(cluster_id: &str, node_id: u64) -> String {
        format!("kvcluster raft log; cluster {cluster_id}; node {node_id}")
    }

    /// Defaults for a node: 64 MiB segments (as etcd), 2 MiB of cached entries per group (replication reads only need the recent tail; 8 MiB was more than they use, though lowering it did not move peak RSS in compare.sh: docs/performance.md).
    pub fn for_node(cluster_id: &str, node_id: u64) -> LogOptions {
        LogOptions {
            segment_bytes: 64 << 20,
            cache_bytes_per_group: 2 << 20,
            identity: Self::identity_of(cluster_id, node_id),
            metrics: None,
        }
    }
}
