//! [`Authenticator`]: a request's credential to a [`Principal`].
//!
//! Credentials, in order: an `Authorization: Bearer <token>` header (a token
//! from the token files), else a client certificate the client port verified
//! (TLS with `tls.client_auth: optional | require`) whose common name or one of
//! whose DNS/URI SANs is bound to a role in `auth.client_certs`. A request that
//! sends a bearer token is judged by the token alone: a bad token is refused
//! even when a good certificate came with it, so a client never silently runs
//! as someone other than it asked to be.

use std::sync::Arc;

use super::Kind;
use super::Principal;
use super::tokens::Tokens;
use crate::config::AuthConfig;
use crate::config::CertBinding;

/// What the client port's TLS handshake proved about the client: the names of
/// the certificate it presented and the port verified against its CA bundle.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertIdentity {
    pub common_name: Option<String>,
    pub dns_names: Vec<String>,
    pub uris: Vec<String>,
}

impl CertIdentity {
    pub fn from_info(info: &crate::tls::CertInfo) -> Self {
        Self {
            common_name: info.common_name.clone(),
            dns_names: info.dns_names.clone(),
            uris: info.uris.clone(),
        }
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.common_name
            .iter()
            .chain(&self.dns_names)
            .chain(&self.uris)
            .map(String::as_str)
    }

    fn describe(&self) -> String {
        match &self.common_name {
            Some(cn) => format!("CN={cn}"),
            None => format!("with SANs {:?}", self.names().collect::<Vec<_>>()),
        }
    }
}

/// Why a request has no principal (HTTP 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unauthenticated {
    #[error(
        "this endpoint needs a credential: send `Authorization: Bearer <token>` (or a client certificate bound to a role)"
    )]
    Missing,
    #[error("the Authorization header must be `Bearer <token>`")]
    Malformed,
    #[error("the bearer token is not valid (unknown or revoked)")]
    BadToken,
    #[error("the client certificate ({0}) is not bound to a role (auth.client_certs)")]
    UnboundCertificate(String),
    #[error("ServiceAccount {0} is not bound to a role (auth.service_accounts.bindings)")]
    UnboundServiceAccount(String),
}

/// Why a request has no principal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// No usable credential: 401.
    #[error(transparent)]
    Unauthenticated(#[from] Unauthenticated),
    /// The credential could not be checked now (the Kubernetes API server did not
    /// answer a TokenReview): 503, worth a retry.
    #[error("the credential could not be checked right now ({0}); retry shortly")]
    Unavailable(String),
}

impl Unauthenticated {
    /// The `WWW-Authenticate` challenge (RFC 6750).
    pub fn challenge(&self) -> &'static str {
        match self {
            Unauthenticated::Malformed | Unauthenticated::BadToken => {
                r#"Bearer realm="kvcluster", error="invalid_token""#
            }
            _ => r#"Bearer realm="kvcluster""#,
        }
    }
}

/// Turns credentials into principals for one node.
pub struct Authenticator {
    enabled: bool,
    anonymous: Arc<Principal>,
    tokens: Option<Arc<Tokens>>,
    certs: Vec<CertBinding>,
    service_accounts: Option<super::serviceaccount::ServiceAccounts>,
}

impl Authenticator {
    /// From the `auth` settings; `tokens` holds the loaded token files (if any),
    /// `service_accounts` the TokenReview client (when `auth.service_accounts` is on).
    pub fn new(
        config: &AuthConfig,
        tokens: Option<Arc<Tokens>>,
        service_accounts: Option<super::serviceaccount::ServiceAccounts>,
    ) -> Self {
        Self {
            enabled: config.enabled,
            anonymous: Arc::new(Principal::anonymous()),
            tokens,
            certs: config.client_certs.clone(),
            service_accounts,
        }
    }

    /// Everyone is the anonymous admin: authentication is off.
    pub fn disabled() -> Self {
        Self::new(&AuthConfig::default(), None, None)
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn tokens(&self) -> Option<&Arc<Tokens>> {
        self.tokens.as_ref()
    }

    /// The principal of a request with this `Authorization` header value and
    /// verified client certificate.
    pub async fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        cert: Option<&CertIdentity>,
    ) -> Result<Arc<Principal>, AuthFailure> {
        if !self.enabled {
            return Ok(self.anonymous.clone());
        }
        if let Some(header) = authorization {
            let token = bearer(header).ok_or(Unauthenticated::Malformed)?;
            if let Some(p) = self.tokens.as_ref().and_then(|t| t.lookup(token)) {
                return Ok(p);
            }
            // Not one of ours: a ServiceAccount token, if it looks like one.
            return match &self.service_accounts {
                Some(sa) if super::serviceaccount::looks_like_jwt(token) => {
                    sa.authenticate(token).await.map_err(|r| match r {
                        super::serviceaccount::Refusal::Refused(u) => {
                            AuthFailure::Unauthenticated(u)
                        }
                        super::serviceaccount::Refusal::Unavailable(why) => {
                            AuthFailure::Unavailable(why)
                        }
                    })
                }
                _ => Err(Unauthenticated::BadToken.into()),
            };
        }
        if let Some(cert) = cert {
            return Ok(self.certificate(cert)?);
        }
        Err(Unauthenticated::Missing.into())
    }

    fn certificate(&self, cert: &CertIdentity) -> Result<Arc<Principal>, Unauthenticated> {
        let bound = self
            .certs
            .iter()
            .find(|b| cert.names().any(|n| n == b.subject));
        match bound {
            Some(b) => Ok(Arc::new(Principal {
                name: b.subject.clone(),
                kind: Kind::Certificate,
                role: b.role,
                prefixes: b.prefixes.clone(),
            })),
            None => Err(Unauthenticated::UnboundCertificate(cert.describe())),
        }
    }
}

/// The token of a `Bearer <token>` header value (the scheme is case-insensitive).
fn bearer(header: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(header).ok()?;
    let (scheme, token) = s.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_headers() {
        assert_eq!(bearer(b"Bearer abc"), Some("abc"));
        assert_eq!(bearer(b"bearer   abc "), Some("abc"));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Bearerabc"), None);
        assert_eq!(bearer(b"Bearer \xff"), None);
    }
}
