//! Kubernetes ServiceAccount tokens as principals: an in-cluster client sends
//! the token the kubelet projects into its pod (issued for the audience this
//! cluster names), and the node asks the Kubernetes API server whether it is
//! genuine (a TokenReview, the way kube-rbac-proxy and the kubelet do it), then
//! maps `system:serviceaccount:<namespace>:<name>` to a role through
//! `auth.service_accounts.bindings`. Clients need no shared secret at all.
//!
//! Reviews are cached by the token's SHA-256: a good answer for
//! `cache_ttl_ms` (never past the token's own expiry), a refusal for a few
//! seconds, so a client costs the API server one review a minute and a flood
//! of forged tokens a bounded number (at most [`MAX_REVIEWS`] at once; more
//! wait their turn for at most the review timeout). When the API server cannot
//! be reached the request gets 503 `auth_unavailable`, never a 401: the client's
//! token may well be good.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use serde::Deserialize;
use serde::Serialize;

use super::Kind;
use super::Principal;
use super::Role;
use super::authn::Unauthenticated;

/// Reviews in flight at once.
pub const MAX_REVIEWS: usize = 16;
/// How long a refusal is remembered.
const REFUSAL_TTL: Duration = Duration::from_secs(5);
/// Cached reviews kept; beyond this the cache starts over.
const MAX_CACHED: usize = 10_000;
/// Time a review may take.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);

/// A ServiceAccount bound to a role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceAccountBinding {
    pub namespace: String,
    pub name: String,
    pub role: Role,
    /// Keys the role is limited to; empty: all.
    #[serde(default)]
    pub prefixes: Vec<String>,
}

/// `auth.service_accounts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceAccountConfig {
    /// The audience clients' tokens must be issued for (their projected token's
    /// `audience`); empty: ServiceAccount tokens are not accepted.
    pub audience: String,
    /// The Kubernetes API server.
    pub api_server: String,
    /// CA bundle of the API server.
    pub ca_file: PathBuf,
    /// This node's own token, allowed to create TokenReviews
    /// (`system:auth-delegator`); re-read for every review (the kubelet rotates it).
    pub token_file: PathBuf,
    /// Which ServiceAccounts hold which role.
    pub bindings: Vec<ServiceAccountBinding>,
    /// How long a positive review is trusted, in ms (a deleted ServiceAccount's
    /// token keeps working at most this long).
    pub cache_ttl_ms: u64,
}

impl Default for ServiceAccountConfig {
    fn default() -> Self {
        Self {
            audience: String::new(),
            api_server: "https://kubernetes.default.svc".into(),
            ca_file: "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt".into(),
            token_file: "/var/run/secrets/kubernetes.io/serviceaccount/token".into(),
            bindings: Vec::new(),
            cache_ttl_ms: 60_000,
        }
    }
}

impl ServiceAccountConfig {
    pub fn enabled(&self) -> bool {
        !self.audience.is_empty()
    }
}

/// Why a ServiceAccount token did not authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The token is not good (or not for us, or its account has no role): 401.
    Refused(Unauthenticated),
    /// The API server could not say: 503.
    Unavailable(String),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Review<'a> {
    api_version: &'static str,
    kind: &'static str,
    spec: ReviewSpec<'a>,
}

#[derive(Serialize)]
struct ReviewSpec<'a> {
    token: &'a str,
    audiences: [&'a str; 1],
}

#[derive(Deserialize, Default)]
struct ReviewAnswer {
    #[serde(default)]
    status: ReviewStatus,
}

#[derive(Deserialize, Default)]
struct ReviewStatus {
    #[serde(default)]
    authenticated: bool,
    #[serde(default)]
    user: ReviewUser,
    #[serde(default)]
    audiences: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
struct ReviewUser {
    #[serde(default)]
    username: String,
}

type Digest = [u8; 32];

/// A review's outcome, and until when it holds.
type Cached = (Instant, Result<Arc<Principal>, Refusal>);

/// Checks ServiceAccount tokens for one node.
pub struct ServiceAccounts {
    config: ServiceAccountConfig,
    http: reqwest::Client,
    cache: Mutex<HashMap<Digest, Cached>>,
    gate: tokio::sync::Semaphore,
}

/// Whether `token` has the shape of a JWT (three base64url parts, a JSON header).
pub fn looks_like_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3
        && token.starts_with("eyJ")
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The `exp` claim of a JWT (unverified: used only to stop caching in time).
fn expiry(token: &str) -> Option<u64> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("exp")?.as_u64()
}

impl ServiceAccounts {
    pub fn new(config: ServiceAccountConfig) -> Result<Self, crate::tls::TlsError> {
        let tls = crate::tls::ClientTls {
            ca_file: Some(config.ca_file.clone()),
            cert_file: None,
            key_file: None,
        }
        .rustls_config()?;
        let http = crate::tls::http_builder()
            .no_proxy()
            .tls_backend_preconfigured(tls)
            .connect_timeout(Duration::from_secs(2))
            .timeout(REVIEW_TIMEOUT)
            .build()
            .map_err(|e| crate::tls::TlsError::Config(format!("the TokenReview client: {e}")))?;
        Ok(Self {
            config,
            http,
            cache: Mutex::new(HashMap::new()),
            gate: tokio::sync::Semaphore::new(MAX_REVIEWS),
        })
    }

    fn cached(&self, d: &Digest) -> Option<Result<Arc<Principal>, Refusal>> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(d)
            .filter(|(until, _)| Instant::now() < *until)
            .map(|(_, r)| r.clone())
    }

    fn remember(&self, d: Digest, until: Instant, r: &Result<Arc<Principal>, Refusal>) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED {
            let now = Instant::now();
            cache.retain(|_, (u, _)| *u > now);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(d, (until, r.clone()));
    }

    /// The principal `token` authenticates, asking the API server when the
    /// answer is not cached.
    pub async fn authenticate(&self, token: &str) -> Result<Arc<Principal>, Refusal> {
        let d = super::tokens::digest_of(token);
        if let Some(r) = self.cached(&d) {
            return r;
        }
        let _permit = tokio::time::timeout(REVIEW_TIMEOUT, self.gate.acquire())
            .await
            .map_err(|_| Refusal::Unavailable("too many token reviews in flight".into()))?
            .map_err(|_| Refusal::Unavailable("shutting down".into()))?;
        // Another request may have reviewed the same token meanwhile.
        if let Some(r) = self.cached(&d) {
            return r;
        }
        let r = self.review(token).await;
        let now = Instant::now();
        let until = match &r {
            Ok(_) => {
                let ttl = Duration::from_millis(self.config.cache_ttl_ms);
                let left = expiry(token).map(|exp| {
                    let now_s = crate::command::now_ms() / 1000;
                    Duration::from_secs(exp.saturating_sub(now_s))
                });
                now + left.map_or(ttl, |l| l.min(ttl))
            }
            Err(Refusal::Refused(_)) => now + REFUSAL_TTL,
            // Not remembered: the next request asks again.
            Err(Refusal::Unavailable(_)) => return r,
        };
        self.remember(d, until, &r);
        r
    }

    async fn review(&self, token: &str) -> Result<Arc<Principal>, Refusal> {
        let own = std::fs::read_to_string(&self.config.token_file).map_err(|e| {
            Refusal::Unavailable(format!(
                "cannot read this node's own token {}: {e}",
                self.config.token_file.display()
            ))
        })?;
        let url = format!(
            "{}/apis/authentication.k8s.io/v1/tokenreviews",
            self.config.api_server.trim_end_matches('/')
        );
        let body = Review {
            api_version: "authentication.k8s.io/v1",
            kind: "TokenReview",
            spec: ReviewSpec {
                token,
                audiences: [self.config.audience.as_str()],
            },
        };
        let resp = self
            .http
            .post(&url)
            .bearer_auth(own.trim())
            .json(&body)
            .send()
            .await
            .map_err(|e| Refusal::Unavailable(format!("TokenReview: {e}")))?;
        if !resp.status().is_success() {
            // 401/403 here are about this node's own credential, not the client's.
            return Err(Refusal::Unavailable(format!(
                "TokenReview answered {}",
                resp.status()
            )));
        }
        let answer: ReviewAnswer = resp
            .json()
            .await
            .map_err(|e| Refusal::Unavailable(format!("TokenReview answer: {e}")))?;
        self.principal(&answer.status)
    }

    /// The principal of a review's answer, or why there is none.
    fn principal(&self, s: &ReviewStatus) -> Result<Arc<Principal>, Refusal> {
        let ours = s
            .audiences
            .as_ref()
            .is_none_or(|a| a.contains(&self.config.audience));
        if !s.authenticated || !ours {
            return Err(Refusal::Refused(Unauthenticated::BadToken));
        }
        let Some(rest) = s.user.username.strip_prefix("system:serviceaccount:") else {
            return Err(Refusal::Refused(Unauthenticated::BadToken));
        };
        let Some((ns, name)) = rest.split_once(':') else {
            return Err(Refusal::Refused(Unauthenticated::BadToken));
        };
        let bound = self
            .config
            .bindings
            .iter()
            .find(|b| b.namespace == ns && b.name == name);
        match bound {
            Some(b) => Ok(Arc::new(Principal {
                name: format!("{ns}/{name}"),
                kind: Kind::ServiceAccount,
                role: b.role,
                prefixes: b.prefixes.clone(),
            })),
            None => Err(Refusal::Refused(Unauthenticated::UnboundServiceAccount(
                format!("{ns}/{name}"),
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwts_are_told_from_other_tokens() {
        assert!(looks_like_jwt("eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjF9.c2ln"));
        assert!(!looks_like_jwt("plain-token-0123456789"));
        assert!(!looks_like_jwt("eyJa.b"));
        assert!(!looks_like_jwt("eyJa..c"));
        assert!(!looks_like_jwt("eyJa.b c.d"));
        assert_eq!(
            expiry("eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjE3MDAwMDAwMDB9.c2ln"),
            Some(1_700_000_000)
        );
        assert_eq!(expiry("eyJhbGciOiJSUzI1NiJ9.bm9wZQ.c2ln"), None);
    }
}
