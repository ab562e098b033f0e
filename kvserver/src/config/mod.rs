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
//! ([`ConfigLoader`]).

mod load;
#[cfg(test)]
mod tests;

pub use self::load::ConfigLoader;

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

/// PostgreSQL connection settings. The URL may carry the password and
/// `sslmode` (`disable`, `prefer`, `require`, `verify-ca`, `verify-full`); it is
/// never logged or printed.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// `postgres://user:password@host:5432/db?sslmode=require`.
    pub url: Option<String>,
    /// Schema owned by this node (created if missing). Default: `kv_<cluster_id>_<node_id>`.
    pub schema: Option<String>,
    /// Size of the read pool (writes use one dedicated connection).
    pub max_connections: u32,
    /// How long to wait for a pooled connection before failing a read with 503.
    pub acquire_timeout_ms: u64,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            url: None,
            schema: None,
            max_connections: 4,
            acquire_timeout_ms: 5_000,
        }
    }
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &self.url.as_deref().map(crate::store::redact_url))
            .field("schema", &self.schema)
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout_ms", &self.acquire_timeout_ms)
            .finish()
    }
}

impl PostgresConfig {
    /// Checks the settings a `postgres` backend needs.
    fn validate(&self) -> Result<(), ConfigError> {
        let url = self.url.as_deref().unwrap_or("");
        if url.is_empty() {
            return Err(field_err(
                "storage.postgres.url",
                "required when storage.backend is postgres",
            ));
        }
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(field_err(
                "storage.postgres.url",
                "must start with postgres:// or postgresql://",
            ));
        }
        if let Some(schema) = &self.schema {
            let ok = !schema.is_empty()
                && schema.len() <= 63
                && schema
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !ok {
                return Err(field_err(
                    "storage.postgres.schema",
                    "must be 1-63 characters of [a-z0-9_]",
                ));
            }
        }
        if self.max_connections == 0 {
            return Err(field_err("storage.postgres.max_connections", "must be > 0"));
        }
        if self.acquire_timeout_ms == 0 {
            return Err(field_err(
                "storage.postgres.acquire_timeout_ms",
                "must be > 0",
            ));
        }
        Ok(())
    }

    /// The schema for `node_id` of `cluster_id`: configured, or derived from both.
    pub fn schema_for(&self, cluster_id: &str, node_id: u64) -> String {
        self.schema.clone().unwrap_or_else(|| {
            let c: String = cluster_id
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_lowercase()
                    } else {
                        '_'
                    }
                })
                .collect();
            let mut s = format!("kv_{c}_{node_id}");
            s.truncate(63);
            s
        })
    }
}

/// A certificate, its key and a CA bundle, as PEM files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsFiles {
    /// Certificate chain (PEM), leaf first.
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM) of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// CA bundle (PEM).
    pub ca_file: Option<PathBuf>,
}

impl TlsFiles {
    fn is_empty(&self) -> bool {
        self.cert_file.is_none() && self.key_file.is_none() && self.ca_file.is_none()
    }

    /// The files, when a certificate and key are set.
    pub fn cert_files(&self) -> Option<crate::tls::CertFiles> {
        Some(crate::tls::CertFiles {
            cert: self.cert_file.clone()?,
            key: self.key_file.clone()?,
            ca: self.ca_file.clone(),
        })
    }
}

/// TLS on both ports (docs/security.md). Files are re-read every
/// `reload_interval_ms`; a rotated certificate is used without a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Mutual TLS on the Raft peer port: this member's certificate (with the URI SAN
    /// `kvcluster://<cluster_id>/node/<node_id>` and a DNS or IP SAN covering the host
    /// of `advertise_raft_addr`), its key, and the cluster's CA bundle, which every
    /// other member's certificate must chain to. All three, or none: without them the
    /// peer port is plaintext and anyone who can reach it can rewrite the log (local use only).
    pub peer: TlsFiles,
    /// HTTPS on the client port: certificate and key. `ca_file` verifies client
    /// certificates (see `client_auth`) and the other members' client ports when
    /// this node relays a request to the leader.
    pub client: TlsFiles,
    /// Client certificates on the client port: `none`, `optional` (verified when
    /// sent) or `require`. Anything but `none` needs `client.ca_file`.
    pub client_auth: crate::tls::ClientAuth,
    /// How often the certificate files are re-read, in ms.
    pub reload_interval_ms: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            peer: TlsFiles::default(),
            client: TlsFiles::default(),
            client_auth: crate::tls::ClientAuth::None,
            reload_interval_ms: 5_000,
        }
    }
}

impl TlsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let p = &self.peer;
        if !p.is_empty() {
            for (field, v) in [
                ("tls.peer.cert_file", &p.cert_file),
                ("tls.peer.key_file", &p.key_file),
                ("tls.peer.ca_file", &p.ca_file),
            ] {
                if v.is_none() {
                    return Err(field_err(
                        field,
                        "required with the other tls.peer files: peer TLS is mutual and needs a certificate, its key and the cluster CA",
                    ));
                }
            }
        }
        let c = &self.client;
        match (&c.cert_file, &c.key_file) {
            (Some(_), None) => {
                return Err(field_err(
                    "tls.client.key_file",
                    "required with tls.client.cert_file",
                ));
            }
            (None, Some(_)) => {
                return Err(field_err(
                    "tls.client.cert_file",
                    "required with tls.client.key_file",
                ));
            }
            (None, None) if c.ca_file.is_some() => {
                return Err(field_err(
                    "tls.client.cert_file",
                    "required with tls.client.ca_file: the client port serves HTTPS only with a certificate",
                ));
            }
            _ => {}
        }
        if self.client_auth != crate::tls::ClientAuth::None
            && (c.ca_file.is_none() || c.cert_file.is_none())
        {
            return Err(field_err(
                "tls.client_auth",
                "needs HTTPS on the client port (tls.client.cert_file, key_file) and the CA bundle of client certificates (tls.client.ca_file)",
            ));
        }
        if self.reload_interval_ms < 100 {
            return Err(field_err("tls.reload_interval_ms", "must be at least 100"));
        }
        Ok(())
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
    /// Largest accepted value in bytes.
    pub max_value_bytes: usize,
    /// How long SIGTERM waits for in-flight requests before exiting.
    pub shutdown_timeout_ms: u64,
    /// How often the leader deletes expired keys.
    pub ttl_reap_interval_ms: u64,
    pub log: LogConfig,
    pub raft: RaftConfig,
    pub storage: StorageConfig,
    pub watch: WatchConfig,
    pub tls: TlsConfig,
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
            max_value_bytes: 1024 * 1024,
            shutdown_timeout_ms: 10_000,
            ttl_reap_interval_ms: 1_000,
            log: LogConfig::default(),
            raft: RaftConfig::default(),
            storage: StorageConfig::default(),
            watch: WatchConfig::default(),
            tls: TlsConfig::default(),
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
        if !valid_id(&self.cluster_id) {
            return Err(field_err(
                "cluster_id",
                "must be 1-128 characters of [A-Za-z0-9._-]",
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
