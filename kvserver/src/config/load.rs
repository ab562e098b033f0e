//! [`ConfigLoader`]: merges the YAML file, the `KV_*` environment (a fixed
//! table, never a prefix scan) and flag overrides as YAML values, records which
//! source set each field, then deserializes strictly and validates, so every
//! error names the field and where its value came from.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_yaml::Mapping;
use serde_yaml::Value;

use super::Config;
use super::ConfigError;
use super::field_err;

/// Whether an override value is taken verbatim as a string or parsed as a YAML scalar.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    Scalar,
    /// Comma-separated strings (paths), a YAML sequence.
    List,
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
    (
        "KV_RECOVERY_FORCE_NEW_CLUSTER_FROM",
        "recovery.force_new_cluster_from",
        Kind::Str,
    ),
    ("KV_RECOVERY_NODE_ID", "recovery.node_id", Kind::Scalar),
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
    ("KV_PARTITIONS", "partitions", Kind::Scalar),
    ("KV_REPLICATION_FACTOR", "replication_factor", Kind::Scalar),
    ("KV_INITIAL_NODES", "initial_nodes", Kind::Scalar),
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
        "KV_RAFT_LOG_SEGMENT_BYTES",
        "raft.log_segment_bytes",
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
    (
        "KV_STORAGE_POSTGRES_SSLMODE",
        "storage.postgres.sslmode",
        Kind::Str,
    ),
    (
        "KV_STORAGE_POSTGRES_CA_FILE",
        "storage.postgres.ca_file",
        Kind::Str,
    ),
    (
        "KV_STORAGE_POSTGRES_CERT_FILE",
        "storage.postgres.cert_file",
        Kind::Str,
    ),
    (
        "KV_STORAGE_POSTGRES_KEY_FILE",
        "storage.postgres.key_file",
        Kind::Str,
    ),
    ("KV_TLS_PEER_CERT_FILE", "tls.peer.cert_file", Kind::Str),
    ("KV_TLS_PEER_KEY_FILE", "tls.peer.key_file", Kind::Str),
    ("KV_TLS_PEER_CA_FILE", "tls.peer.ca_file", Kind::Str),
    ("KV_TLS_CLIENT_CERT_FILE", "tls.client.cert_file", Kind::Str),
    ("KV_TLS_CLIENT_KEY_FILE", "tls.client.key_file", Kind::Str),
    ("KV_TLS_CLIENT_CA_FILE", "tls.client.ca_file", Kind::Str),
    ("KV_TLS_CLIENT_AUTH", "tls.client_auth", Kind::Str),
    (
        "KV_TLS_RELOAD_INTERVAL_MS",
        "tls.reload_interval_ms",
        Kind::Scalar,
    ),
    ("KV_AUTH_ENABLED", "auth.enabled", Kind::Scalar),
    ("KV_AUTH_TOKEN_FILES", "auth.token_files", Kind::List),
    (
        "KV_AUTH_RELOAD_INTERVAL_MS",
        "auth.reload_interval_ms",
        Kind::Scalar,
    ),
    ("KV_AUTH_OPEN_METRICS", "auth.open_metrics", Kind::Scalar),
    ("KV_AUTH_OPEN_STATUS", "auth.open_status", Kind::Scalar),
    (
        "KV_LIMITS_HEADER_READ_TIMEOUT_MS",
        "limits.header_read_timeout_ms",
        Kind::Scalar,
    ),
    (
        "KV_LIMITS_IDLE_TIMEOUT_MS",
        "limits.idle_timeout_ms",
        Kind::Scalar,
    ),
    (
        "KV_LIMITS_REQUEST_TIMEOUT_MS",
        "limits.request_timeout_ms",
        Kind::Scalar,
    ),
    (
        "KV_LIMITS_MAX_CONNECTIONS",
        "limits.max_connections",
        Kind::Scalar,
    ),
    (
        "KV_LIMITS_MAX_CONCURRENT_REQUESTS",
        "limits.max_concurrent_requests",
        Kind::Scalar,
    ),
    (
        "KV_LIMITS_MAX_RESPONSE_BYTES",
        "limits.max_response_bytes",
        Kind::Scalar,
    ),
    (
        "KV_LIMITS_MAX_WATCHERS",
        "limits.max_watchers",
        Kind::Scalar,
    ),
    (
        "KV_LIMITS_MAX_WATCHERS_PER_PRINCIPAL",
        "limits.max_watchers_per_principal",
        Kind::Scalar,
    ),
    (
        "KV_LIMITS_WATCHER_BUFFER_BYTES",
        "limits.watcher_buffer_bytes",
        Kind::Scalar,
    ),
    (
        "KV_LIMITS_WATCH_BUFFER_TOTAL_BYTES",
        "limits.watch_buffer_total_bytes",
        Kind::Scalar,
    ),
    (
        "KV_LIMITS_PEER_MAX_CONNECTIONS",
        "limits.peer_max_connections",
        Kind::Scalar,
    ),
    (
        "KV_LIMITS_MAX_SNAPSHOT_BYTES",
        "limits.max_snapshot_bytes",
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
        Kind::List => Value::Sequence(
            raw.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| Value::String(p.to_string()))
                .collect(),
        ),
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
