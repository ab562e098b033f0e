//! Backups: the file formats, where backups are kept, continuous backup, and
//! composing the state at a chosen point from a full backup and segments.
//!
//! - [`format`]: a full backup (a consistent copy at one revision, checksummed).
//! - [`segment`]: a run of committed changes for point-in-time restore.
//! - [`dest`]: a destination (a directory, e.g. a mounted PVC, or an S3-compatible
//!   bucket) and the layout of backups in it, per cluster id.
//! - [`retention`]: which backups and segments to delete, by count and age.
//! - [`save`]: taking a full backup from a cluster into a file or a destination.
//! - [`follow`]: continuous backup: follows a cluster's watch feed and ships segments.
//! - [`point`]: composes a backup at a revision or time from a full backup plus segments,
//!   refusing any gap.
//!
//! None of this needs the Raft or storage stacks: `kvctl` runs all of it against a
//! cluster's HTTP API; the server only writes full backups ([`format::BackupWriter`]).

pub mod dest;
pub mod follow;
pub mod format;
pub mod point;
pub mod retention;
pub mod save;
pub mod segment;

pub use dest::Destination;
pub use format::BackupHeader;
pub use format::BackupReader;
pub use format::BackupSummary;
pub use format::BackupWriter;

/// Errors of reading, writing, storing and composing backups.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a {what} file (wrong magic bytes)")]
    NotA { what: &'static str },
    #[error(
        "{what} format {found} is not one this build reads (it reads up to {supported}): use the kvserver release that wrote it, or a newer one"
    )]
    NewerFormat {
        what: &'static str,
        found: u32,
        supported: u32,
    },
    #[error("damaged {what} at byte {offset}: {detail}")]
    Corrupt {
        what: &'static str,
        offset: u64,
        detail: String,
    },
    #[error("cannot encode backup record: {0}")]
    Encode(String),
    #[error("destination {dest}: {source}")]
    Store {
        dest: String,
        #[source]
        source: object_store::Error,
    },
    #[error("invalid destination {0}")]
    BadDestination(String),
    #[error("{0}")]
    NotFound(String),
    /// The chain of segments does not reach the requested point.
    #[error("{0}")]
    Gap(String),
    #[error("cluster: {0}")]
    Cluster(#[from] crate::client::ClientError),
}

#[cfg(test)]
mod tests;
