//! Node configuration: a YAML file, overridden by `KV_*` environment
//! variables, overridden by command-line flags, then validated.
//!
//! All three sources are merged as YAML values *before* deserializing, so a
//! single strict deserialization (unknown keys rejected) checks the result and
//! every error names the field by its dotted path and the source that set it.
//! Environment variables are read from a fixed table rather than by prefix
//! scan: Kubernetes injects `<SERVICE>_PORT`-style variables, and a cluster
//! named `kv` would otherwise feed `KV_PORT` into the config.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use serde::Serialize;
use serde_yaml::Mapping;
use serde_yaml::Value;

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

/// Storage backend selection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `sqlite` (embedded file in `data_dir`) or `postgres`.
    pub backend: String,
    /// Memory for caching recently read and written keys (0: no cache); point reads
    /// of cached keys do not touch the database.
    pub cache_bytes: usize,
    /// PostgreSQL settings (used when `backend: postgres`).
    pub postgres: PostgresConfig,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            backend: "sqlite".into(),
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
        }
    }
}

/// Whether an override value is taken verbatim as a string or parsed as a YAML scalar.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    Scalar,
}

/// Environment variables understood, and the config field each sets.
const ENV: &[(&str, &str, Kind)] = &[
    ("KV_NODE_ID", "node_id", Kind::Scalar),
    ("KV_CLUSTER_ID", "cluster_id", Kind::Str),
    ("KV_DATA_DIR", "data_dir", Kind::Str),
    ("KV_API_ADDR", "api_addr", Kind::Str),
    ("KV_RAFT_ADDR", "raft_addr", Kind::Str),
    ("KV_ADVERTISE_API_ADDR", "advertise_api_addr", Kind::Str),
    ("KV_ADVERTISE_RAFT_ADDR", "advertise_raft_addr", Kind::Str),
    ("KV_BOOTSTRAP", "bootstrap", Kind::Scalar),
    ("KV_MAX_VALUE_BYTES", "max_value_bytes", Kind::Scalar),
    (
        "KV_SHUTDOWN_TIMEOUT_MS",
        "shutdown_timeout_ms",
        Kind::Scalar,
    ),
    (
        "KV_TTL_REAP_INTERVAL_MS",
        "ttl_reap_interval_ms",
        Kind::Scalar,
    ),
    ("KV_LOG_FORMAT", "log.format", Kind::Str),
    ("KV_LOG_LEVEL", "log.level", Kind::Str),
    (
        "KV_RAFT_HEARTBEAT_INTERVAL_MS",
        "raft.heartbeat_interval_ms",
        Kind::Scalar,
    ),
    (
        "KV_RAFT_ELECTION_TIMEOUT_MIN_MS",
        "raft.election_timeout_min_ms",
        Kind::Scalar,
    ),
    (
        "KV_RAFT_ELECTION_TIMEOUT_MAX_MS",
        "raft.election_timeout_max_ms",
        Kind::Scalar,
    ),
    (
        "KV_RAFT_SNAPSHOT_AFTER_ENTRIES",
        "raft.snapshot_after_entries",
        Kind::Scalar,
    ),
    (
        "KV_RAFT_KEEP_ENTRIES_AFTER_SNAPSHOT",
        "raft.keep_entries_after_snapshot",
        Kind::Scalar,
    ),
    (
        "KV_RAFT_MAX_PAYLOAD_ENTRIES",
        "raft.max_payload_entries",
        Kind::Scalar,
    ),
    (
        "KV_WATCH_HISTORY_REVISIONS",
        "watch.history_revisions",
        Kind::Scalar,
    ),
    (
        "KV_WATCH_WATCHER_BUFFER",
        "watch.watcher_buffer",
        Kind::Scalar,
    ),
    (
        "KV_WATCH_FEED_CAPACITY",
        "watch.feed_capacity",
        Kind::Scalar,
    ),
    ("KV_STORAGE_BACKEND", "storage.backend", Kind::Str),
    (
        "KV_STORAGE_CACHE_BYTES",
        "storage.cache_bytes",
        Kind::Scalar,
    ),
    ("KV_STORAGE_POSTGRES_URL", "storage.postgres.url", Kind::Str),
    (
        "KV_STORAGE_POSTGRES_SCHEMA",
        "storage.postgres.schema",
        Kind::Str,
    ),
    (
        "KV_STORAGE_POSTGRES_MAX_CONNECTIONS",
        "storage.postgres.max_connections",
        Kind::Scalar,
    ),
    (
        "KV_STORAGE_POSTGRES_ACQUIRE_TIMEOUT_MS",
        "storage.postgres.acquire_timeout_ms",
        Kind::Scalar,
    ),
];

/// Fields whose overrides are strings even when they look like numbers.
fn kind_of(path: &str) -> Kind {
    ENV.iter()
        .find(|(_, p, _)| *p == path)
        .map(|(_, _, k)| *k)
        .unwrap_or(Kind::Scalar)
}

/// Builds a configuration from its layers.
#[derive(Default)]
pub struct ConfigLoader {
    file: Option<PathBuf>,
    env: BTreeMap<String, String>,
    overrides: Vec<(String, String, String)>,
}

impl ConfigLoader {
    pub fn new() -> Self {
        Self::default()
    }

    /// The YAML file (lowest layer above defaults).
    pub fn file(mut self, path: Option<PathBuf>) -> Self {
        self.file = path;
        self
    }

    /// Environment to read `KV_*` variables from (normally `std::env::vars()`).
    pub fn env(mut self, vars: impl IntoIterator<Item = (String, String)>) -> Self {
        self.env = vars
            .into_iter()
            .filter(|(k, _)| k.starts_with("KV_"))
            .collect();
        self
    }

    /// A flag-level override of `path` (dotted) with `value`; `origin` names the flag.
    pub fn set(mut self, path: &str, value: impl Into<String>, origin: &str) -> Self {
        self.overrides
            .push((path.to_string(), value.into(), origin.to_string()));
        self
    }

    /// A generic `key.path=value` override (the `--set` flag).
    pub fn set_pair(self, pair: &str) -> Result<Self, ConfigError> {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| ConfigError::BadOverride(pair.to_string()))?;
        if k.is_empty() {
            return Err(ConfigError::BadOverride(pair.to_string()));
        }
        Ok(self.set(k.trim(), v, "flag --set"))
    }

    /// Merges the layers, deserializes strictly and validates.
    pub fn load(self) -> Result<Config, ConfigError> {
        let mut origins: BTreeMap<String, String> = BTreeMap::new();
        let mut root = match &self.file {
            None => Value::Mapping(Mapping::new()),
            Some(path) => {
                let p = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: p.clone(),
                    source,
                })?;
                let v: Value = serde_yaml::from_str(&text).map_err(|source| ConfigError::Yaml {
                    path: p.clone(),
                    source,
                })?;
                match v {
                    Value::Null => Value::Mapping(Mapping::new()),
                    m @ Value::Mapping(_) => m,
                    _ => {
                        return Err(field_err(
                            "<root>",
                            format!("config file {p} must be a YAML mapping"),
                        ));
                    }
                }
            }
        };
        if let Some(path) = &self.file {
            collect_origins(&root, "", &format!("file {}", path.display()), &mut origins);
        }
        for (name, path, kind) in ENV {
            if let Some(raw) = self.env.get(*name) {
                set_path(&mut root, path, parse_value(raw, *kind))
                    .map_err(|m| field_err(path, m))?;
                origins.insert(path.to_string(), format!("env {name}"));
            }
        }
        for (path, raw, origin) in &self.overrides {
            set_path(&mut root, path, parse_value(raw, kind_of(path)))
                .map_err(|m| field_err(path, m))?;
            origins.insert(path.clone(), origin.clone());
        }
        let cfg: Config = serde_path_to_error::deserialize(root).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner().to_string();
            // serde reports unknown keys at the parent path; name the key itself.
            let field = match unknown_field_name(&inner) {
                Some(k) if field == "." => k,
                Some(k) => format!("{field}.{k}"),
                None => field,
            };
            let origin = origins
                .iter()
                .find(|(p, _)| field == **p || field.starts_with(&format!("{p}.")))
                .map(|(_, o)| format!(" (from {o})"))
                .unwrap_or_default();
            ConfigError::Field {
                field,
                origin,
                message: inner,
            }
        })?;
        cfg.validate().map_err(|e| match e {
            ConfigError::Field { field, message, .. } => {
                let origin = origins
                    .get(&field)
                    .map(|o| format!(" (from {o})"))
                    .unwrap_or_default();
                ConfigError::Field {
                    field,
                    origin,
                    message,
                }
            }
            other => other,
        })?;
        Ok(cfg)
    }
}

fn unknown_field_name(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("unknown field `")?;
    Some(rest.split('`').next()?.to_string())
}

fn collect_origins(v: &Value, prefix: &str, origin: &str, out: &mut BTreeMap<String, String>) {
    if let Value::Mapping(m) = v {
        for (k, v) in m {
            let key = k
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("{k:?}"));
            let path = if prefix.is_empty() {
                key
            } else {
                format!("{prefix}.{key}")
            };
            out.insert(path.clone(), origin.to_string());
            collect_origins(v, &path, origin, out);
        }
    }
}

fn parse_value(raw: &str, kind: Kind) -> Value {
    match kind {
        Kind::Str => Value::String(raw.to_string()),
        Kind::Scalar => match serde_yaml::from_str::<Value>(raw) {
            Ok(v @ (Value::Bool(_) | Value::Number(_) | Value::Null)) => v,
            _ => Value::String(raw.to_string()),
        },
    }
}

fn set_path(root: &mut Value, path: &str, value: Value) -> Result<(), String> {
    let parts: Vec<&str> = path.split('.').collect();
    let mut cur = root;
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() {
            return Err("empty path segment".into());
        }
        let Value::Mapping(m) = cur else {
            return Err(format!("`{}` is not a mapping", parts[..i].join(".")));
        };
        let key = Value::String(part.to_string());
        if i + 1 == parts.len() {
            m.insert(key, value);
            return Ok(());
        }
        cur = m
            .entry(key)
            .or_insert_with(|| Value::Mapping(Mapping::new()));
    }
    Ok(())
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
        match self.storage.backend.as_str() {
            "sqlite" => {}
            "postgres" => {
                let pg = &self.storage.postgres;
                let url = pg.url.as_deref().unwrap_or("");
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
                if let Some(schema) = &pg.schema {
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
                if pg.max_connections == 0 {
                    return Err(field_err("storage.postgres.max_connections", "must be > 0"));
                }
                if pg.acquire_timeout_ms == 0 {
                    return Err(field_err(
                        "storage.postgres.acquire_timeout_ms",
                        "must be > 0",
                    ));
                }
            }
            other => {
                return Err(field_err(
                    "storage.backend",
                    format!("unsupported backend {other:?}; supported: sqlite, postgres"),
                ));
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn loader() -> ConfigLoader {
        ConfigLoader::new().env(Vec::<(String, String)>::new())
    }

    #[test]
    fn defaults_are_valid() {
        let c = loader().load().expect("defaults load");
        assert_eq!(c.api_addr, "127.0.0.1:8080");
        assert_eq!(c.max_value_bytes, 1 << 20);
    }

    #[test]
    fn layers_override_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("c.yaml");
        std::fs::write(
            &f,
            "cluster_id: from-file\nraft:\n  heartbeat_interval_ms: 50\nmax_value_bytes: 10\n",
        )
        .expect("write");
        let c = ConfigLoader::new()
            .file(Some(f))
            .env(vec![
                ("KV_CLUSTER_ID".to_string(), "from-env".to_string()),
                ("KV_MAX_VALUE_BYTES".into(), "20".into()),
            ])
            .set("max_value_bytes", "30", "flag")
            .load()
            .expect("load");
        assert_eq!(c.cluster_id, "from-env");
        assert_eq!(c.raft.heartbeat_interval_ms, 50);
        assert_eq!(c.max_value_bytes, 30);
    }

    #[test]
    fn numeric_looking_strings_stay_strings() {
        let c = loader()
            .env(vec![("KV_CLUSTER_ID".into(), "123".into())])
            .load()
            .expect("load");
        assert_eq!(c.cluster_id, "123");
    }

    #[test]
    fn errors_name_the_field_and_source() {
        let e = loader()
            .env(vec![(
                "KV_RAFT_HEARTBEAT_INTERVAL_MS".into(),
                "fast".into(),
            )])
            .load()
            .expect_err("must be rejected");
        let s = e.to_string();
        assert!(
            s.contains("raft.heartbeat_interval_ms") && s.contains("KV_RAFT_HEARTBEAT_INTERVAL_MS"),
            "{s}"
        );

        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("c.yaml");
        std::fs::write(&f, "raft:\n  hearbeat_interval_ms: 5\n").expect("write");
        let s = loader()
            .file(Some(f))
            .load()
            .expect_err("must be rejected")
            .to_string();
        assert!(
            s.contains("raft.hearbeat_interval_ms") && s.contains("unknown field"),
            "{s}"
        );

        let s = loader()
            .set("api_addr", "nope", "flag --api-addr")
            .load()
            .expect_err("must be rejected")
            .to_string();
        assert!(s.contains("api_addr") && s.contains("--api-addr"), "{s}");

        let s = loader()
            .set("api_addr", "0.0.0.0:1", "flag")
            .load()
            .expect_err("must be rejected")
            .to_string();
        assert!(s.contains("advertise_api_addr"), "{s}");

        let s = loader()
            .set("raft.election_timeout_min_ms", "10", "flag")
            .load()
            .expect_err("must be rejected")
            .to_string();
        assert!(s.contains("raft.election_timeout_min_ms"), "{s}");

        let s = loader()
            .set("max_value_bytes", "-1", "flag")
            .load()
            .expect_err("must be rejected")
            .to_string();
        assert!(s.contains("max_value_bytes"), "{s}");

        let s = loader()
            .set("log.format", "xml", "flag")
            .load()
            .expect_err("must be rejected")
            .to_string();
        assert!(s.contains("log.format"), "{s}");
    }

    /// Config files of the wrong shape: each fails, and the message names the field
    /// (or, for YAML that does not parse, the file and position).
    #[test]
    fn config_files_of_wrong_shape_name_the_field() {
        let cases: &[(&str, &[&str])] = &[
            ("api_addr: [1, 2]\n", &["api_addr"]),
            (
                "raft:\n  heartbeat_interval_ms: fast\n",
                &["raft.heartbeat_interval_ms"],
            ),
            ("raft: 5\n", &["raft"]),
            (
                "raft:\n  election_timeout_min_ms: -3\n",
                &["raft.election_timeout_min_ms"],
            ),
            ("storage:\n  backend: 5\n", &["storage.backend"]),
            ("storage:\n  backend: mysql\n", &["storage.backend"]),
            ("storage:\n  backend: postgres\n", &["storage.postgres.url"]),
            (
                "storage:\n  postgres:\n    max_connections: many\n",
                &["storage.postgres.max_connections"],
            ),
            ("nodes: 3\n", &["nodes", "unknown field"]),
            (
                "watch:\n  history: 10\n",
                &["watch.history", "unknown field"],
            ),
            ("max_value_bytes: 1.5\n", &["max_value_bytes"]),
            ("bootstrap: maybe\n", &["bootstrap"]),
            ("log:\n  format: xml\n", &["log.format"]),
            ("node_id: -1\n", &["node_id"]),
            ("- a\n- b\n", &["c.yaml"]),
            ("api_addr: \"127.0.0.1:1\"\n  x: [\n", &["c.yaml"]),
        ];
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("c.yaml");
        for (yaml, needles) in cases {
            std::fs::write(&f, yaml).expect("write");
            let msg = match loader().file(Some(f.clone())).load() {
                Ok(_) => panic!("accepted {yaml:?}"),
                Err(e) => e.to_string(),
            };
            for n in *needles {
                assert!(msg.contains(n), "{yaml:?}: {msg:?} does not name {n:?}");
            }
        }
    }

    #[test]
    fn postgres_settings_are_validated_and_never_shown() {
        let s = loader()
            .set("storage.backend", "postgres", "flag")
            .load()
            .expect_err("url required")
            .to_string();
        assert!(s.contains("storage.postgres.url"), "{s}");
        let s = loader()
            .set("storage.backend", "postgres", "flag")
            .set("storage.postgres.url", "mysql://x", "flag")
            .load()
            .expect_err("scheme checked")
            .to_string();
        assert!(s.contains("storage.postgres.url"), "{s}");
        let s = loader()
            .env(vec![
                ("KV_STORAGE_BACKEND".into(), "postgres".into()),
                (
                    "KV_STORAGE_POSTGRES_URL".into(),
                    "postgres://u:pw@h/d".into(),
                ),
            ])
            .set("storage.postgres.schema", "Bad-Name", "flag")
            .load()
            .expect_err("schema checked")
            .to_string();
        assert!(s.contains("storage.postgres.schema"), "{s}");
        let c = loader()
            .env(vec![
                ("KV_STORAGE_BACKEND".into(), "postgres".into()),
                (
                    "KV_STORAGE_POSTGRES_URL".into(),
                    "postgres://u:hunter2@h/d?sslmode=require".into(),
                ),
            ])
            .load()
            .expect("valid postgres config");
        assert_eq!(
            c.storage.postgres.schema_for("My.Cluster", 2),
            "kv_my_cluster_2"
        );
        assert!(
            !format!("{c:?}").contains("hunter2"),
            "password must not appear in Debug output"
        );
        let s = loader()
            .set("storage.backend", "mongo", "flag")
            .load()
            .expect_err("backend checked")
            .to_string();
        assert!(s.contains("storage.backend"), "{s}");
    }

    #[test]
    fn node_id_from_ordinal() {
        assert_eq!(ordinal_of("orders-2"), Some(2));
        assert_eq!(ordinal_of("my-kv-cluster-10"), Some(10));
        assert_eq!(ordinal_of("laptop"), None);
        assert_eq!(ordinal_of("web-"), None);
        let c = Config::default();
        assert_eq!(c.resolve_node_id("orders-7").expect("ordinal"), 7);
        assert!(
            c.resolve_node_id("laptop")
                .expect_err("must be rejected")
                .to_string()
                .contains("node_id")
        );
        let c = Config {
            node_id: Some(3),
            ..Config::default()
        };
        assert_eq!(c.resolve_node_id("laptop").expect("configured"), 3);
    }
}
