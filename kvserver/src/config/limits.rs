//! Limits against clients and peers that are slow, numerous or greedy: what a
//! connection, a request, a response and a watcher may cost, and when the node
//! says "not now" (503 `overloaded` with `Retry-After`) instead of queueing.
//! Defaults and the attacks each one answers: `docs/security.md`.

use serde::Deserialize;
use serde::Serialize;

use super::ConfigError;
use super::field_err;

/// Limits of the client and peer ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Time a client has to send a request's headers, counted from when the
    /// connection is ready for a request; over HTTP/1.1 this also closes a
    /// keep-alive connection left idle this long (slowloris, idle floods).
    pub header_read_timeout_ms: u64,
    /// A connection with no bytes moving either way and no request in flight is
    /// closed after this long (HTTP/2 connections, and a backstop for HTTP/1.1).
    pub idle_timeout_ms: u64,
    /// Longest a request may take, body included (watch streams excepted);
    /// after it the client gets 503 `request_timeout`.
    pub request_timeout_ms: u64,
    /// Open client connections (TLS handshakes included); more are closed at once.
    pub max_connections: usize,
    /// Requests served at once (probes, metrics and watch streams excepted);
    /// more get 503 `overloaded` with `Retry-After`.
    pub max_concurrent_requests: usize,
    /// Bytes of keys and values one list page or batch get may return: a list
    /// page ends early (`more: true`), a batch get over it is 413.
    pub max_response_bytes: usize,
    /// Watch streams open on this node at once.
    pub max_watchers: usize,
    /// Watch streams one principal may hold open on this node.
    pub max_watchers_per_principal: usize,
    /// Bytes of events buffered for one watcher; a watcher further behind is
    /// cut off (it resumes from its last revision).
    pub watcher_buffer_bytes: usize,
    /// Bytes of events buffered for all watchers of the node together, shared
    /// out among the open watchers (each gets at least room for two of the
    /// largest events); a watcher over its share is cut off (it resumes).
    pub watch_buffer_total_bytes: usize,
    /// Open connections on the Raft peer port (members hold a few each).
    pub peer_max_connections: usize,
    /// Largest snapshot a member accepts from a leader, in bytes; a transfer
    /// announcing more, or sending more than it announced, is refused.
    pub max_snapshot_bytes: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            header_read_timeout_ms: 30_000,
            idle_timeout_ms: 120_000,
            request_timeout_ms: 60_000,
            max_connections: 4096,
            max_concurrent_requests: 512,
            max_response_bytes: 64 << 20,
            max_watchers: 1024,
            max_watchers_per_principal: 128,
            watcher_buffer_bytes: 8 << 20,
            watch_buffer_total_bytes: 256 << 20,
            peer_max_connections: 1024,
            max_snapshot_bytes: 64 << 30,
        }
    }
}

impl LimitsConfig {
    pub(super) fn validate(&self, max_value_bytes: usize) -> Result<(), ConfigError> {
        let at_least = |field: &str, v: u64, min: u64| {
            if v < min {
                Err(field_err(field, format!("must be at least {min}")))
            } else {
                Ok(())
            }
        };
        at_least(
            "limits.header_read_timeout_ms",
            self.header_read_timeout_ms,
            100,
        )?;
        at_least("limits.idle_timeout_ms", self.idle_timeout_ms, 1000)?;
        // A write waits up to 10 s for commit and a membership change 30 s.
        at_least("limits.request_timeout_ms", self.request_timeout_ms, 35_000)?;
        at_least("limits.max_connections", self.max_connections as u64, 16)?;
        at_least(
            "limits.max_concurrent_requests",
            self.max_concurrent_requests as u64,
            1,
        )?;
        // A response must hold at least one key at its largest.
        at_least(
            "limits.max_response_bytes",
            self.max_response_bytes as u64,
            (max_value_bytes + crate::command::MAX_KEY_BYTES) as u64 * 2,
        )?;
        at_least("limits.max_watchers", self.max_watchers as u64, 1)?;
        at_least(
            "limits.max_watchers_per_principal",
            self.max_watchers_per_principal as u64,
            1,
        )?;
        at_least(
            "limits.watcher_buffer_bytes",
            self.watcher_buffer_bytes as u64,
            (max_value_bytes as u64 + crate::command::MAX_KEY_BYTES as u64) * 4,
        )?;
        if self.watch_buffer_total_bytes < self.watcher_buffer_bytes {
            return Err(field_err(
                "limits.watch_buffer_total_bytes",
                "must be at least limits.watcher_buffer_bytes",
            ));
        }
        // Nine members, each with a replication stream, votes and a pool of
        // forwarded-write connections.
        at_least(
            "limits.peer_max_connections",
            self.peer_max_connections as u64,
            64,
        )?;
        at_least(
            "limits.max_snapshot_bytes",
            self.max_snapshot_bytes,
            1 << 20,
        )?;
        Ok(())
    }
}
