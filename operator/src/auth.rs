//! The operator's side of client authentication (`spec.auth`): its own admin
//! token, and what the pods need to check credentials.
//!
//! - `<name>-auth-operator` (Secret): a token file holding one admin token,
//!   `kvcluster-operator`, made once by the operator and kept (`tokens.yaml` for
//!   the members, `token` alone for tools: `kubectl get secret` then
//!   `kvctl --token-file`). Members mount it next to the user's token Secret
//!   (`spec.auth.tokenSecretName`), so the operator never edits the user's
//!   Secret and the user never needs the operator's token.
//! - The kvserver configuration (`crate::build::config_yaml`) turns auth on,
//!   lists both token files, and binds `spec.auth.clientCertificates` and
//!   `spec.auth.serviceAccounts` ([`service_accounts_config`]).
//! - ServiceAccount tokens are checked by the members with TokenReviews: each
//!   pod gets a token of its own for that (projected at [`REVIEWER_DIR`] with
//!   the API server's CA) and `crate::reviewers` lets the cluster's
//!   ServiceAccount create reviews.
//!
//! Planning is pure: the one random input, a fresh token, is passed in.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

use crate::build;
use crate::build::BuildError;
use crate::crd::AuthMode;
use crate::crd::KVCluster;
use crate::crd::ServiceAccountAuthSpec;

/// Where the members find the token files.
pub const AUTH_DIR: &str = "/etc/kvserver/auth";
/// The operator's principal name.
pub const OPERATOR_PRINCIPAL: &str = "kvcluster-operator";

/// Whether the cluster's client API requires credentials.
pub fn enabled(kvc: &KVCluster) -> bool {
    kvc.spec.auth.mode == AuthMode::Enabled
}

pub fn operator_secret_name(kvc: &KVCluster) -> String {
    format!("{}-auth-operator", kvc.name_any())
}

/// The token files members read, in their pods.
pub fn token_files(kvc: &KVCluster) -> Vec<String> {
    let mut files = vec![format!("{AUTH_DIR}/operator.yaml")];
    if kvc.spec.auth.token_secret_name.is_some() {
        files.push(format!("{AUTH_DIR}/user.yaml"));
    }
    files
}

/// Where members find their own token for TokenReviews and the API server's CA.
pub const REVIEWER_DIR: &str = "/var/run/secrets/kvcluster.io/reviewer";
/// Lifetime of that token; the kubelet renews it at 80 % and kvserver re-reads
/// it for every review.
pub const REVIEWER_TOKEN_SECONDS: i64 = 3600;

/// `spec.auth.serviceAccounts`, when auth is on and it is set.
pub fn service_accounts(kvc: &KVCluster) -> Option<&ServiceAccountAuthSpec> {
    match enabled(kvc) {
        true => kvc.spec.auth.service_accounts.as_ref(),
        false => None,
    }
}

/// The audience clients' ServiceAccount tokens must carry: the one set, else
/// `kvcluster.io/<namespace>/<name>`.
pub fn audience(kvc: &KVCluster) -> Result<String, BuildError> {
    if let Some(a) = kvc
        .spec
        .auth
        .service_accounts
        .as_ref()
        .and_then(|s| s.audience.clone())
    {
        return Ok(a);
    }
    let ns = kvc
        .namespace()
        .ok_or(BuildError::MissingMeta("namespace"))?;
    Ok(format!("kvcluster.io/{ns}/{}", kvc.name_any()))
}

/// A DNS-1123 subdomain (ServiceAccount names) or label (namespaces).
fn dns_name(s: &str, max: usize, dots: bool) -> bool {
    let ok =
        |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (dots && b == b'.');
    !s.is_empty()
        && s.len() <= max
        && s.bytes().all(ok)
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
}

/// `auth.service_accounts` of the kvserver configuration, when the cluster
/// takes ServiceAccount tokens: the audience, the bindings (each namespace
/// filled in), and this pod's own review credential.
pub fn service_accounts_config(kvc: &KVCluster) -> Result<Option<serde_json::Value>, BuildError> {
    let Some(sa) = service_accounts(kvc) else {
        return Ok(None);
    };
    let audience = audience(kvc)?;
    if audience.trim().is_empty() || audience.len() > 256 || audience.chars().any(char::is_control)
    {
        return Err(BuildError::Auth(
            "serviceAccounts.audience: must be 1-256 printable characters".into(),
        ));
    }
    let own_ns = kvc
        .namespace()
        .ok_or(BuildError::MissingMeta("namespace"))?;
    let mut seen = std::collections::BTreeSet::new();
    let mut bindings = Vec::new();
    for (i, b) in sa.bindings.iter().enumerate() {
        let ns = b.namespace.clone().unwrap_or_else(|| own_ns.clone());
        let field = format!("serviceAccounts.bindings[{i}]");
        if !dns_name(&b.name, 253, true) {
            return Err(BuildError::Auth(format!(
                "{field}.name: {:?} is not a ServiceAccount name",
                b.name
            )));
        }
        if !dns_name(&ns, 63, false) {
            return Err(BuildError::Auth(format!(
                "{field}.namespace: {ns:?} is not a namespace name"
            )));
        }
        if b.prefixes.iter().any(String::is_empty) {
            return Err(BuildError::Auth(format!(
                "{field}.prefixes: must not be empty strings (leave the list out for all keys)"
            )));
        }
        if !seen.insert((ns.clone(), b.name.clone())) {
            return Err(BuildError::Auth(format!(
                "{field}: {ns}/{} is bound twice",
                b.name
            )));
        }
        bindings.push(serde_json::json!({
            "namespace": ns,
            "name": b.name,
            "role": serde_json::to_value(b.role).unwrap_or_default(),
            "prefixes": b.prefixes,
        }));
    }
    Ok(Some(serde_json::json!({
        "audience": audience,
        "api_server": "https://kubernetes.default.svc",
        "ca_file": format!("{REVIEWER_DIR}/ca.crt"),
        "token_file": format!("{REVIEWER_DIR}/token"),
        "bindings": bindings,
    })))
}

/// What auth needs applied, and the operator's own credential.
#[derive(Debug, Clone, Default)]
pub struct Planned {
    /// `<name>-auth-operator`, when auth is on.
    pub secret: Option<Secret>,
    /// The token the operator sends to members, when auth is on.
    pub token: Option<String>,
    /// Set when the operator made a new token this pass (an Event says so).
    pub issued: bool,
}

/// Whether `token` is one the members accept (`kvserver::auth::tokens`).
fn usable(token: &str) -> bool {
    (16..=1024).contains(&token.len()) && token.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// Plans the operator's token Secret: the stored token when there is a usable
/// one, else `fresh()`.
pub fn plan(
    kvc: &KVCluster,
    stored: Option<&crate::tls::Data>,
    fresh: impl FnOnce() -> String,
) -> Result<Planned, BuildError> {
    if !enabled(kvc) {
        return Ok(Planned::default());
    }
    let (token, issued) = match stored.and_then(|d| d.get("token")).filter(|t| usable(t)) {
        Some(t) => (t.clone(), false),
        None => (fresh(), true),
    };
    if !usable(&token) {
        return Err(BuildError::Config(
            "the operator's new token is unusable".into(),
        ));
    }
    let file = format!(
        "# Written by the kvcluster operator: its own admin token. Your tokens go in\n# the Secret named by spec.auth.tokenSecretName.\ntokens:\n  - name: {OPERATOR_PRINCIPAL}\n    token: \"{token}\"\n    role: admin\n"
    );
    let secret = Secret {
        metadata: build::meta(kvc, operator_secret_name(kvc))?,
        type_: Some("Opaque".into()),
        data: Some(
            [("tokens.yaml", file), ("token", token.clone())]
                .into_iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Default::default()
    };
    Ok(Planned {
        secret: Some(secret),
        token: Some(token),
        issued,
    })
}

/// A new random token: 32 bytes from the system's generator, hex.
pub fn new_token() -> Result<String, BuildError> {
    use ring::rand::SecureRandom;
    let mut buf = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| BuildError::Config("the system's random generator failed".into()))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kvc(mode: AuthMode) -> KVCluster {
        let spec: crate::crd::KVClusterSpec =
            serde_yaml::from_str("{}").unwrap_or_else(|e| panic!("{e}"));
        let mut k = KVCluster::new("orders", spec);
        k.metadata.namespace = Some("shop".into());
        k.metadata.uid = Some("uid-1".into());
        k.spec.auth.mode = mode;
        k
    }

    fn data(secret: &Secret) -> crate::tls::Data {
        crate::tls::data_of(secret)
    }

    #[test]
    fn the_operator_token_is_made_once_and_kept() -> Result<(), BuildError> {
        let k = kvc(AuthMode::Enabled);
        let first = plan(&k, None, || "a".repeat(64))?;
        assert!(first.issued);
        let secret = first
            .secret
            .as_ref()
            .ok_or(BuildError::MissingMeta("secret"))?;
        let stored = data(secret);
        assert_eq!(
            stored.get("token").map(String::as_str),
            Some("a".repeat(64).as_str())
        );
        let file = stored.get("tokens.yaml").cloned().unwrap_or_default();
        assert!(file.contains("role: admin") && file.contains(OPERATOR_PRINCIPAL));
        // Kept on the next pass: no new token, the same Secret.
        let again = plan(&k, Some(&stored), || unreachable!("a new token"))?;
        assert!(!again.issued);
        assert_eq!(again.token, first.token);
        // A damaged Secret gets a new token.
        let mut broken = stored.clone();
        broken.insert("token".into(), "short".into());
        let fixed = plan(&k, Some(&broken), || "b".repeat(64))?;
        assert!(fixed.issued && fixed.token == Some("b".repeat(64)));
        Ok(())
    }

    #[test]
    fn disabled_auth_plans_nothing() -> Result<(), BuildError> {
        let p = plan(&kvc(AuthMode::Disabled), None, || unreachable!())?;
        assert!(p.secret.is_none() && p.token.is_none());
        Ok(())
    }

    #[test]
    fn fresh_tokens_are_long_and_differ() -> Result<(), BuildError> {
        let (a, b) = (new_token()?, new_token()?);
        assert!(usable(&a) && a.len() == 64 && a != b);
        Ok(())
    }
}
