//! Node configuration: a YAML file, overridden by `KV_*` environment
//! variables, overridden by command-line flags, then validated.
//!
//! All three sources are merged as YAML values *before* deserializing, so a
//! single strict deserialization (unknown keys rejected) checks the result and
//! every error names the field by its dotted path and the source that set it.
//! Environment variables are read from a fixed table rather than by prefix
//! scan: Kubernetes injects `<SERVICE>_PORT`-style variables, and a cluster
//! named `kv` would otherwise feed `KV_PORT` into the config.
//!
//! This file holds the settings and their validation; `load` the layering
//! ([`ConfigLoader`]); `postgres`, `tls`, `auth` and `limits` the settings of those concerns.

mod auth;
mod limits;
mod load;
mod postgres;
mod recovery;
#[cfg(test)]
mod tests;
mod tls;

pub use self::auth::AuthConfig;
pub use self::auth::CertBinding;
pub use self::limits::LimitsConfig;
pub use self::load::ConfigLoader;
pub use self::postgres::PgSslMode;
pub use self::postgres::PostgresConfig;
pub use self::recovery::RecoveryConfig;
pub use self::tls::TlsConfig;
pub use self::tls::TlsFiles;

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use serde::Serialize;

/// A configuration problem, always naming the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid YAML: {source}")]
    Yaml {
        path: String,
        source: serde_yaml::Error,
    },
    #[error("config field `{field}`{origin}: {message}")]
    Field {
        field: String,
        origin: String,
        message: String,
    },
    #[error("invalid override {0:?}: expected key.path=value")]
    BadOverride(String),
}

fn field_err(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field: field.to_string(),
        origin: String::new(),
        message: message.into(),
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Logging settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `json` (one object per line, for collectors) or `pretty` (for terminals).
    pub format: LogFormat,
    /// tracing filter directive, e.g. `info` or `kvserver=debug,openraft=warn`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Json,
            level: "info,openraft=warn,sqlx=warn".into(),
        }
    }
}

/// Raft timing and log compaction.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftConfig {
    /// Leader heartbeat interval.
    pub heartbeat_interval_ms: u64,
    /// Lower bound of the randomized election timeout.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomized election timeout.
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many applied entries since the last one.
    pub snapshot_after_entries: u64,
    /// Entries kept in the log behind a snapshot (lets slightly lagging followers catch up without one).
    pub keep_entries_after_snapshot: u64,
    /// Most entries sent in one AppendEntries RPC.
    pub max_payload_entries: u64,
    /// Size of the Raft log's segment files (`<data_dir>/raftlog/`), preallocated;
    /// a segment is deleted once every entry in it is purged behind a snapshot.
    pub log_segment_bytes: u64,
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
            snapshot_after_entries: 10_000,
            keep_entries_after_snapshot: 1_000,
            max_payload_entries: 256,
            log_segment_bytes: 64 << 20,
        }
    }
}

/// Watch (change feed) settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchConfig {
    /// Revisions of change history kept for watchers resuming from the past; older ones answer 410.
    pub history_revisions: u64,
    /// Events buffered per watcher; a watcher that falls further behind is dropped (it can resume).
    pub watcher_buffer: usize,
    /// Applied batches buffered on the node's live feed.
    pub feed_capacity: usize,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            history_revisions: 10_000,
            watcher_buffer: 1024,
            feed_capacity: 1024,
        }
    }
}

/// Which database holds the node's state. An unknown name is refused when the
/// configuration is parsed (the error names `storage.backend`), so nothing
/// downstream falls back to a default silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// An embedded SQLite file in `data_dir`.
    #[default]
    Sqlite,
    /// A schema of a PostgreSQL database (`storage.postgres`).
    Postgres,
}

/// Storage backend selection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `sqlite` (embedded file in `data_dir`) or `postgres`.
    pub backend: StorageBackend,
    /// Memory for caching recently read and written keys (0: no cache); point reads
    /// of cached keys do not touch the database.
    pub cache_bytes: usize,
    /// PostgreSQL settings (used when `backend: postgres`).
    pub postgres: PostgresConfig,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            backend: StorageBackend::Sqlite,
            cache_bytes: 64 << 20,
            postgres: PostgresConfig::default(),
        }
    }
}

/// The whole node configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Raft node id. Default: the StatefulSet ordinal at the end of the hostname (`orders-2` → 2).
    pub node_id: Option<u64>,
    /// Cluster identity; written into the store on first start, checked on every start and on every peer connection.
    pub cluster_id: String,
    /// Directory holding the database and snapshots.
    pub data_dir: PathBuf,
    /// Listen address of the client HTTP API.
    pub api_addr: String,
    /// Listen address of Raft peer traffic.
    pub raft_addr: String,
    /// Address other nodes use to reach the client API (defaults to `api_addr` when that is a concrete IP).
    pub advertise_api_addr: Option<String>,
    /// Address other nodes use for Raft (defaults to `raft_addr` when that is a concrete IP).
    pub advertise_raft_addr: Option<String>,
    /// Initialize a single-node cluster if the store is empty (local use; never set in Kubernetes).
    pub bootstrap: bool,
    /// A backup file (`kvctl backup save`, or a restore point) this node restores when it
    /// forms a new cluster (`--bootstrap` or `POST /v1/cluster/init`): the new cluster
    /// starts with exactly the backup's keys and revision. Only into an empty store, and
    /// only under a `cluster_id` other than the backup's (docs/backup.md).
    pub restore_from: Option<PathBuf>,
    /// Forced recovery from permanent quorum loss (docs/backup.md). Never set in
    /// normal operation.
    pub recovery: RecoveryConfig,
    /// Largest accepted value in bytes.
    pub max_value_bytes: usize,
    /// How long SIGTERM waits for in-flight requests before exiting.
    pub shutdown_timeout_ms: u64,
    /// How often the leader deletes expired keys.
    pub ttl_reap_interval_ms: u64,
    /// Partitions the key space is split into, each its own Raft group (1: one
    /// group holds every key, as before partitions). Fixed for the cluster's
    /// life: the first placement records it, and a node configured otherwise
    /// refuses to serve keys (docs/partitions.md).
    pub partitions: u32,
    /// Replicas each partition keeps, on that many distinct nodes (with more
    /// than one partition).
    pub replication_factor: u32,
    /// With more than one partition: how many members the first placement waits
    /// for (0: `replication_factor`). A new cluster of N pods is best placed over
    /// all N at once (like etcd's initial cluster), instead of over the first
    /// `replication_factor` and then rebalanced.
    pub initial_nodes: u32,
    pub log: LogConfig,
    pub raft: RaftConfig,
    pub storage: StorageConfig,
    pub watch: WatchConfig,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_id: None,
            cluster_id: "kvcluster".into(),
            data_dir: PathBuf::from("./data"),
            api_addr: "127.0.0.1:8080".into(),
            raft_addr: "127.0.0.1:8081".into(),
            advertise_api_addr: None,
            advertise_raft_addr: None,
            bootstrap: false,
            restore_from: None,
            recovery: RecoveryConfig::default(),
            max_value_bytes: 1024 * 1024,
            shutdown_timeout_ms: 10_000,
            ttl_reap_interval_ms: 1_000,
            partitions: 1,
            replication_factor: 3,
            initial_nodes: 0,
            log: LogConfig::default(),
            raft: RaftConfig::default(),
            storage: StorageConfig::default(),
            watch: WatchConfig::default(),
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
        }
    }
}

fn parse_addr(field: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse::<SocketAddr>().map_err(|e| {
        field_err(
            field,
            format!("{s:?} is not an ip:port listen address ({e})"),
        )
    })
}

fn check_host_port(field: &str, s: &str) -> Result<(), ConfigError> {
    let ok = s
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
    if ok {
        Ok(())
    } else {
        Err(field_err(
            field,
            format!("{s:?} is not a host:port address"),
        ))
    }
}

impl Config {
    /// Checks ranges and relations between fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let valid_id = |s: &str| {
            !s.is_empty()
                && s.len() <= 128
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        // Checked here only when this start forms the cluster; otherwise at init (in
        // Kubernetes only the member that forms the cluster has the file).
        if let Some(p) = &self.restore_from
            && self.bootstrap
            && !p.is_file()
        {
            return Err(field_err(
                "restore_from",
                format!("{} is not a readable file", p.display()),
            ));
        }
        if !valid_id(&self.cluster_id) {
            return Err(field_err(
                "cluster_id",
                "must be 1-128 characters of [A-Za-z0-9._-]",
            ));
        }
        self.recovery.validate(&self.cluster_id)?;
        if self.recovery.force_new_cluster_from.is_some() && self.partitions > 1 {
            // Each partition's group can lose its quorum on its own; recovering
            // only the cluster's group would form a cluster without their keys.
            return Err(field_err(
                "recovery.force_new_cluster_from",
                "forced recovery of a partitioned cluster (partitions > 1) is not built yet; restore its latest backup into a new cluster instead",
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(field_err("data_dir", "must not be empty"));
        }
        let api = parse_addr("api_addr", &self.api_addr)?;
        let raft = parse_addr("raft_addr", &self.raft_addr)?;
        if api.port() != 0 && api == raft {
            return Err(field_err(
                "raft_addr",
                "must differ from api_addr: client and peer traffic use separate ports",
            ));
        }
        if let Some(a) = &self.advertise_api_addr {
            check_host_port("advertise_api_addr", a)?;
        } else if api.ip().is_unspecified() {
            return Err(field_err(
                "advertise_api_addr",
                "required when api_addr listens on all interfaces",
            ));
        }
        if let Some(a) = &self.advertise_raft_addr {
            check_host_port("advertise_raft_addr", a)?;
        } else if raft.ip().is_unspecified() {
            return Err(field_err(
                "advertise_raft_addr",
                "required when raft_addr listens on all interfaces",
            ));
        }
        if self.max_value_bytes == 0 || self.max_value_bytes > 64 * 1024 * 1024 {
            return Err(field_err(
                "max_value_bytes",
                "must be between 1 and 67108864",
            ));
        }
        if self.ttl_reap_interval_ms == 0 {
            return Err(field_err("ttl_reap_interval_ms", "must be > 0"));
        }
        let max = crate::placement::map::MAX_PARTITIONS;
        if self.partitions == 0 || self.partitions > max {
            return Err(field_err(
                "partitions",
                format!("must be between 1 and {max}"),
            ));
        }
        if self.replication_factor == 0 || self.replication_factor > 7 {
            return Err(field_err("replication_factor", "must be between 1 and 7"));
        }
        if self.initial_nodes > 1000 {
            return Err(field_err("initial_nodes", "must be at most 1000"));
        }
        let r = &self.raft;
        if r.heartbeat_interval_ms == 0 {
            return Err(field_err("raft.heartbeat_interval_ms", "must be > 0"));
        }
        if r.election_timeout_min_ms <= r.heartbeat_interval_ms {
            return Err(field_err(
                "raft.election_timeout_min_ms",
                "must be greater than raft.heartbeat_interval_ms",
            ));
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return Err(field_err(
                "raft.election_timeout_max_ms",
                "must be greater than raft.election_timeout_min_ms",
            ));
        }
        if r.snapshot_after_entries == 0 {
            return Err(field_err("raft.snapshot_after_entries", "must be > 0"));
        }
        if r.max_payload_entries == 0 {
            return Err(field_err("raft.max_payload_entries", "must be > 0"));
        }
        if !(64 << 10..=1 << 30).contains(&r.log_segment_bytes) {
            return Err(field_err(
                "raft.log_segment_bytes",
                "must be between 65536 (64 KiB) and 1073741824 (1 GiB)",
            ));
        }
        let w = &self.watch;
        if w.history_revisions == 0 {
            return Err(field_err("watch.history_revisions", "must be > 0"));
        }
        if w.watcher_buffer == 0 || w.watcher_buffer > 1_000_000 {
            return Err(field_err(
                "watch.watcher_buffer",
                "must be between 1 and 1000000",
            ));
        }
        if w.feed_capacity == 0 || w.feed_capacity > 1_000_000 {
            return Err(field_err(
                "watch.feed_capacity",
                "must be between 1 and 1000000",
            ));
        }
        if self.storage.cache_bytes > 1 << 40 {
            return Err(field_err(
                "storage.cache_bytes",
                "must be at most 1099511627776 (1 TiB)",
            ));
        }
        if self.storage.backend == StorageBackend::Postgres {
            self.storage.postgres.validate()?;
        }
        self.tls.validate()?;
        self.auth.validate(&self.tls)?;
        self.limits.validate(self.max_value_bytes)?;
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(field_err(
                "log.level",
                format!("{:?} is not a valid tracing filter", self.log.level),
            ));
        }
        Ok(())
    }

    /// The node id: configured, or the ordinal suffix of `hostname`.
    pub fn resolve_node_id(&self, hostname: &str) -> Result<u64, ConfigError> {
        if let Some(id) = self.node_id {
            return Ok(id);
        }
        ordinal_of(hostname).ok_or_else(|| {
            field_err(
                "node_id",
                format!("not set and hostname {hostname:?} has no StatefulSet ordinal suffix (-N); set node_id or KV_NODE_ID"),
            )
        })
    }
}

/// `orders-2` → 2.
pub fn ordinal_of(hostname: &str) -> Option<u64> {
    let (_, n) = hostname.rsplit_once('-')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// The machine's hostname (Kubernetes sets it to the pod name).
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default()
}
