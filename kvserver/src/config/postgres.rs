//! PostgreSQL settings: where the database is, the node's schema, pool sizes,
//! and TLS to the server (`sslmode` and the certificate files), which become
//! parameters of the connection URL sqlx is given.

use std::path::PathBuf;

use serde::Deserialize;
use serde::Serialize;

use super::ConfigError;
use super::field_err;

/// How kvserver's connections to PostgreSQL use TLS (libpq's `sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PgSslMode {
    /// Plaintext only.
    Disable,
    /// Plaintext, or TLS if the server insists.
    Allow,
    /// TLS if the server offers it, else plaintext; verifies nothing.
    Prefer,
    /// TLS, without verifying the server's certificate.
    Require,
    /// TLS with a certificate signed by `ca_file`.
    VerifyCa,
    /// TLS with a certificate signed by `ca_file` and naming the URL's host.
    VerifyFull,
}

impl PgSslMode {
    fn as_str(self) -> &'static str {
        match self {
            PgSslMode::Disable => "disable",
            PgSslMode::Allow => "allow",
            PgSslMode::Prefer => "prefer",
            PgSslMode::Require => "require",
            PgSslMode::VerifyCa => "verify-ca",
            PgSslMode::VerifyFull => "verify-full",
        }
    }
}

/// PostgreSQL connection settings. The URL may carry the password (and TLS
/// parameters, which the fields below override); it is never logged or printed.
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
    /// TLS to the server. Default: `verify-full` when `ca_file` is set; otherwise the
    /// URL's `sslmode`, or `prefer` without one (which falls back to plaintext and
    /// verifies nothing: set `ca_file` outside local tests).
    pub sslmode: Option<PgSslMode>,
    /// CA bundle (PEM) that signed the server's certificate (libpq's `sslrootcert`).
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM), for servers that authenticate clients by certificate.
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM) of `cert_file`.
    pub key_file: Option<PathBuf>,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            url: None,
            schema: None,
            max_connections: 4,
            acquire_timeout_ms: 5_000,
            sslmode: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
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
            .field("sslmode", &self.sslmode)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish()
    }
}

impl PostgresConfig {
    /// Checks the settings a `postgres` backend needs.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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
        if matches!(
            self.effective_sslmode(),
            Some(PgSslMode::VerifyCa | PgSslMode::VerifyFull)
        ) && self.ca_file.is_none()
        {
            return Err(field_err(
                "storage.postgres.ca_file",
                "required to verify the server's certificate (sslmode verify-ca or verify-full)",
            ));
        }
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => {
                return Err(field_err(
                    "storage.postgres.key_file",
                    "required with storage.postgres.cert_file",
                ));
            }
            (None, Some(_)) => {
                return Err(field_err(
                    "storage.postgres.cert_file",
                    "required with storage.postgres.key_file",
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// The `sslmode` these settings ask for (`None`: the URL decides).
    pub fn effective_sslmode(&self) -> Option<PgSslMode> {
        self.sslmode
            .or(self.ca_file.as_ref().map(|_| PgSslMode::VerifyFull))
    }

    /// The URL sqlx connects with: the configured one, its TLS parameters replaced
    /// by the fields above where they are set.
    pub fn connect_url(&self) -> Option<String> {
        let url = self.url.as_deref()?;
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut params: Vec<(String, String)> = Vec::new();
        let mut set = |name: &str, value: String| params.push((name.to_string(), value));
        if let Some(mode) = self.effective_sslmode() {
            set("sslmode", mode.as_str().to_string());
        }
        let path = |p: &PathBuf| percent_encode(&p.to_string_lossy());
        if let Some(p) = &self.ca_file {
            set("sslrootcert", path(p));
        }
        if let Some(p) = &self.cert_file {
            set("sslcert", path(p));
        }
        if let Some(p) = &self.key_file {
            set("sslkey", path(p));
        }
        let kept = query.split('&').filter(|kv| {
            let name = kv.split_once('=').map_or(*kv, |(n, _)| n);
            !kv.is_empty() && !params.iter().any(|(p, _)| p == name)
        });
        let all: Vec<String> = kept
            .map(str::to_string)
            .chain(params.iter().map(|(n, v)| format!("{n}={v}")))
            .collect();
        Some(if all.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", all.join("&"))
        })
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

/// Percent-encodes a URL query value (file paths).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
