//! Authentication settings of the client port: whether requests must
//! authenticate, where bearer tokens come from, which client certificates are
//! bound to which role, and which operational endpoints stay open.

use std::path::PathBuf;

use serde::Deserialize;
use serde::Serialize;

use super::ConfigError;
use super::field_err;
use crate::auth::Role;

/// A client certificate bound to a role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertBinding {
    /// Matches a certificate whose common name, or one of whose DNS or URI SANs,
    /// equals this; it is also the principal's name.
    pub subject: String,
    /// `read`, `readwrite` or `admin`.
    pub role: Role,
    /// Keys the role is limited to (those starting with one of these); empty: all.
    #[serde(default)]
    pub prefixes: Vec<String>,
}

/// Authentication and authorization (docs/security.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Require a credential on every route but `/healthz`, `/readyz` and
    /// `/v1/openapi.json` (and `/metrics`, `/status` when left open below).
    /// Off: every caller is an anonymous admin (local use only).
    pub enabled: bool,
    /// YAML files of bearer tokens (`tokens: [{name, token, role, prefixes}]`),
    /// re-read every `reload_interval_ms`.
    pub token_files: Vec<PathBuf>,
    /// Client certificates bound to roles; needs `tls.client_auth` `optional` or `require`.
    pub client_certs: Vec<CertBinding>,
    /// How often the token files are re-read, in ms (the longest a revoked token keeps working).
    pub reload_interval_ms: u64,
    /// `/metrics` without a credential (scrapers usually have none).
    pub open_metrics: bool,
    /// `/status` without a credential (it shows Raft state and member addresses).
    pub open_status: bool,
    /// Kubernetes ServiceAccount tokens as principals (a TokenReview per token,
    /// cached); on when `audience` is set.
    pub service_accounts: crate::auth::serviceaccount::ServiceAccountConfig,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            token_files: Vec::new(),
            client_certs: Vec::new(),
            reload_interval_ms: 5_000,
            open_metrics: true,
            open_status: false,
            service_accounts: Default::default(),
        }
    }
}

impl AuthConfig {
    pub(super) fn validate(&self, tls: &super::TlsConfig) -> Result<(), ConfigError> {
        let sa = &self.service_accounts;
        if self.enabled
            && self.token_files.is_empty()
            && self.client_certs.is_empty()
            && !sa.enabled()
        {
            return Err(field_err(
                "auth.token_files",
                "auth.enabled needs a way to authenticate: token files, auth.client_certs or auth.service_accounts",
            ));
        }
        if sa.enabled() {
            if !(sa.api_server.starts_with("https://")) {
                return Err(field_err(
                    "auth.service_accounts.api_server",
                    "must be an https:// URL",
                ));
            }
            if sa.cache_ttl_ms > 3_600_000 {
                return Err(field_err(
                    "auth.service_accounts.cache_ttl_ms",
                    "must be at most 3600000 (an hour)",
                ));
            }
            for (i, b) in sa.bindings.iter().enumerate() {
                if b.namespace.is_empty() || b.name.is_empty() {
                    return Err(field_err(
                        &format!("auth.service_accounts.bindings[{i}]"),
                        "namespace and name are required",
                    ));
                }
                crate::auth::tokens::check_prefixes(&b.prefixes)
                    .map_err(|m| field_err(&format!("auth.service_accounts.bindings[{i}]"), m))?;
            }
        }
        if !self.client_certs.is_empty() && tls.client_auth == crate::tls::ClientAuth::None {
            return Err(field_err(
                "auth.client_certs",
                "needs verified client certificates: tls.client_auth optional or require",
            ));
        }
        for (i, b) in self.client_certs.iter().enumerate() {
            if b.subject.is_empty() || b.subject.len() > 1024 {
                return Err(field_err(
                    &format!("auth.client_certs[{i}].subject"),
                    "must be 1-1024 characters",
                ));
            }
            crate::auth::tokens::check_prefixes(&b.prefixes)
                .map_err(|m| field_err(&format!("auth.client_certs[{i}]"), m))?;
        }
        if self.reload_interval_ms < 100 {
            return Err(field_err("auth.reload_interval_ms", "must be at least 100"));
        }
        Ok(())
    }
}
