//! Certificates of a KVCluster: what `spec.tls` asks for, turned into Secrets
//! and the CA ConfigMap (docs/security.md).
//!
//! - `<name>-tls-ca` (Secret, never mounted in pods): the operator's CA for the
//!   cluster and the operator's own client certificate.
//! - `<name>-peer-tls` (Secret, mounted in every pod): `ca.crt` (the bundle
//!   members trust), `issuer.crt` (the CA the leaves below came from) and, per
//!   member, `<pod>.crt` / `<pod>.key` naming its pod DNS name and node id. One
//!   Secret because a StatefulSet mounts the same volumes in every pod; each pod
//!   picks its own files by name.
//! - `<name>-client-tls` (Secret, `mode: auto`): the client port's certificate,
//!   shared by the members (it names the Services, not a member).
//! - `<name>-ca` (ConfigMap): `ca.crt`, what clients need to trust the client port.
//!
//! Certificates are issued only when missing, unreadable, about to expire
//! ([`RENEW_BEFORE`]), naming the wrong hosts, or issued by another CA; otherwise
//! the existing ones are applied again unchanged. Nothing here restarts a pod:
//! kubelet updates the mounted files and kvserver reloads them.
//!
//! Pure except for key generation: the decisions are functions of the observed
//! Secrets and the clock, tested below.

use std::collections::BTreeMap;
use std::time::Duration;
use std::time::SystemTime;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kvserver::tls::issue::Ca;
use kvserver::tls::issue::Issued;
use kvserver::tls::issue::Leaf;

use crate::build;
use crate::build::BuildError;
use crate::crd::KVCluster;
use crate::crd::TlsMode;

/// Member certificates are issued for every ordinal a cluster may have (the
/// CRD's `replicas` maximum), so scaling out never waits for one.
pub const MAX_MEMBERS: u64 = 9;

/// How long issued leaf certificates are valid.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// Leaves are renewed when they have less than this left.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long the operator's CA is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Secret and ConfigMap names of a cluster.
pub fn ca_secret_name(kvc: &KVCluster) -> String {
    format!("{}-tls-ca", kvc.name_any())
}
pub fn peer_secret_name(kvc: &KVCluster) -> String {
    format!("{}-peer-tls", kvc.name_any())
}
pub fn client_secret_name(kvc: &KVCluster) -> Option<String> {
    match kvc.spec.tls.client.mode {
        TlsMode::Auto => Some(format!("{}-client-tls", kvc.name_any())),
        TlsMode::Secret => kvc.spec.tls.client.secret_name.clone(),
        TlsMode::Disabled => None,
    }
}
pub fn ca_configmap_name(kvc: &KVCluster) -> String {
    format!("{}-ca", kvc.name_any())
}

/// The text data of a Secret.
pub type Data = BTreeMap<String, String>;

/// The data of `secret` as text (PEM is text).
pub fn data_of(secret: &Secret) -> Data {
    secret
        .data
        .iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), String::from_utf8(v.0.clone()).ok()?)))
        .collect()
}

/// The Secrets the certificates depend on, as observed.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    pub ca: Option<Data>,
    pub peer: Option<Data>,
    /// `<name>-client-tls` in `auto` mode, the user's Secret in `secret` mode.
    pub client: Option<Data>,
    /// The user's CA Secret for members (`peer.mode: secret`).
    pub peer_ca: Option<Data>,
}

/// What to apply, and what the operator itself uses.
#[derive(Debug, Clone)]
pub struct Planned {
    pub ca_secret: Secret,
    pub peer_secret: Secret,
    /// `auto` client mode only.
    pub client_secret: Option<Secret>,
    /// When the client port has TLS.
    pub ca_configmap: Option<ConfigMap>,
    /// How the operator talks to members: the client port's CA bundle and its own
    /// client certificate (`None`: plain HTTP).
    pub operator: Option<OperatorTls>,
    /// What was issued, for Events.
    pub issued: Vec<String>,
}

/// The operator's client TLS material.
#[derive(Clone, PartialEq, Eq)]
pub struct OperatorTls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for OperatorTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorTls").finish_non_exhaustive()
    }
}

fn tls_err(e: kvserver::tls::TlsError) -> BuildError {
    BuildError::Tls(e.to_string())
}

/// Whether the leaf `cert_pem` is good for another while: readable, issued by
/// `issuer_pem`'s CA (recorded next to it), naming `hosts` and `uri`, and not
/// within [`RENEW_BEFORE`] of its end.
fn still_good(
    cert_pem: Option<&String>,
    hosts: &[String],
    uri: Option<&str>,
    now: SystemTime,
) -> bool {
    let Some(pem) = cert_pem else {
        return false;
    };
    let Ok(der) = rustls_pki_types_der(pem) else {
        return false;
    };
    let Ok(info) = kvserver::tls::inspect(&der) else {
        return false;
    };
    let now_s = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let names_ok = hosts
        .iter()
        .filter(|h| h.parse::<std::net::IpAddr>().is_err())
        .all(|h| info.dns_names.contains(h));
    let uri_ok = uri.is_none_or(|u| info.uris.iter().any(|x| x == u));
    names_ok
        && uri_ok
        && info.valid_at(now_s)
        && info.not_after - now_s > RENEW_BEFORE.as_secs() as i64
}

fn rustls_pki_types_der(pem: &str) -> Result<kvserver::tls::CertDer, kvserver::tls::TlsError> {
    kvserver::tls::pem::certs(pem.as_bytes(), std::path::Path::new("<secret>"))?
        .into_iter()
        .next()
        .ok_or_else(|| kvserver::tls::TlsError::Config("no certificate".into()))
}

fn secret(kvc: &KVCluster, name: String, data: &Data) -> Result<Secret, BuildError> {
    Ok(Secret {
        metadata: build::meta(kvc, name)?,
        type_: Some("Opaque".into()),
        data: Some(
            data.iter()
                .map(|(k, v)| (k.clone(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    })
}

/// The operator's CA: the stored one, or a new one when there is none (or it is unreadable).
fn operator_ca(
    kvc: &KVCluster,
    stored: Option<&Data>,
    issued: &mut Vec<String>,
) -> Result<(Ca, Data), BuildError> {
    if let Some(d) = stored
        && let (Some(cert), Some(key)) = (d.get("ca.crt"), d.get("ca.key"))
        && let Ok(ca) = Ca::from_pem(cert, key)
    {
        return Ok((ca, d.clone()));
    }
    let ca = Ca::new(
        &format!("kvcluster {} CA", build::cluster_id(kvc)?),
        CA_VALIDITY,
    )
    .map_err(tls_err)?;
    issued.push("created the cluster's CA".into());
    let data = Data::from([
        ("ca.crt".to_string(), ca.cert_pem().to_string()),
        ("ca.key".to_string(), ca.key_pem()),
    ]);
    Ok((ca, data))
}

/// Plans every certificate of `kvc` for members with ordinals `ordinals`.
pub fn plan(
    kvc: &KVCluster,
    seen: &Observed,
    ordinals: &[u64],
    now: SystemTime,
) -> Result<Planned, BuildError> {
    let mut issued = Vec::new();
    let cluster_id = build::cluster_id(kvc)?;
    let (ca, mut ca_data) = operator_ca(kvc, seen.ca.as_ref(), &mut issued)?;
    // The operator's own client certificate.
    if !still_good(ca_data.get("operator.crt"), &[], None, now) {
        let op = ca
            .issue(&Leaf::client("kvcluster-operator", LEAF_VALIDITY))
            .map_err(tls_err)?;
        ca_data.insert("operator.crt".into(), op.cert_pem);
        ca_data.insert("operator.key".into(), op.key_pem);
    }

    // Members: from the operator's CA, or the user's.
    let (member_ca, mut bundle) = match kvc.spec.tls.peer.mode {
        TlsMode::Auto => (None, ca.cert_pem().to_string()),
        TlsMode::Secret => {
            let name = kvc
                .spec
                .tls
                .peer
                .ca_secret_name
                .clone()
                .ok_or(BuildError::Tls(
                    "spec.tls.peer.caSecretName is required with mode: secret".into(),
                ))?;
            let d = seen.peer_ca.as_ref().ok_or_else(|| {
                BuildError::Tls(format!(
                    "Secret {name} (spec.tls.peer.caSecretName) not found"
                ))
            })?;
            let (Some(cert), Some(key)) = (d.get("tls.crt"), d.get("tls.key")) else {
                return Err(BuildError::Tls(format!(
                    "Secret {name} needs tls.crt and tls.key (the CA)"
                )));
            };
            let user = Ca::from_pem(cert, key)
                .map_err(|e| BuildError::Tls(format!("Secret {name}: {e}")))?;
            let mut bundle = cert.clone();
            if let Some(extra) = d.get("ca.crt").filter(|e| !cert.contains(e.trim())) {
                bundle.push_str(extra);
            }
            (Some(user), bundle)
        }
        TlsMode::Disabled => {
            return Err(BuildError::Tls(
                "spec.tls.peer.mode: disabled is refused: members always use mutual TLS".into(),
            ));
        }
    };
    let issuer = member_ca.as_ref().unwrap_or(&ca);
    let mut peer = Data::new();
    let prev = seen.peer.clone().unwrap_or_default();
    let same_issuer = prev.get("issuer.crt").map(String::as_str) == Some(issuer.cert_pem());
    for &ordinal in ordinals {
        let pod = format!("{}-{ordinal}", build::names(kvc).statefulset);
        let hosts = vec![build::member_host(kvc, ordinal)];
        let uri = kvserver::tls::node_uri(&cluster_id, ordinal);
        let (crt, key) = (format!("{pod}.crt"), format!("{pod}.key"));
        if same_issuer
            && prev.contains_key(&key)
            && still_good(prev.get(&crt), &hosts, Some(&uri), now)
        {
            peer.insert(crt.clone(), prev[&crt].clone());
            peer.insert(key.clone(), prev[&key].clone());
        } else {
            let Issued { cert_pem, key_pem } = issuer
                .issue(&Leaf::member(&cluster_id, ordinal, &hosts, LEAF_VALIDITY))
                .map_err(tls_err)?;
            peer.insert(crt, cert_pem);
            peer.insert(key, key_pem);
            issued.push(format!("issued the member certificate of {pod}"));
        }
    }
    peer.insert("issuer.crt".into(), issuer.cert_pem().to_string());
    if !bundle.ends_with('\n') {
        bundle.push('\n');
    }
    peer.insert("ca.crt".into(), bundle);

    // The client port.
    let ns = kvc.namespace().unwrap_or_default();
    let name = kvc.name_any();
    let (client_secret, client_ca) = match kvc.spec.tls.client.mode {
        TlsMode::Disabled => (None, None),
        TlsMode::Auto => {
            let hosts = vec![
                name.clone(),
                format!("{name}.{ns}"),
                format!("{name}.{ns}.svc"),
                format!("{name}.{ns}.svc.cluster.local"),
                format!("*.{}.{ns}.svc.cluster.local", build::names(kvc).peers),
                "localhost".to_string(),
                "127.0.0.1".to_string(),
            ];
            let prev = seen.client.clone().unwrap_or_default();
            let same = prev.get("ca.crt").map(String::as_str) == Some(ca.cert_pem());
            let data = if same
                && prev.contains_key("tls.key")
                && still_good(prev.get("tls.crt"), &hosts, None, now)
            {
                prev
            } else {
                let mut leaf = Leaf::member(&cluster_id, 0, &hosts, LEAF_VALIDITY);
                leaf.common_name = format!("{name}.{ns}.svc");
                leaf.uris.clear();
                let Issued { cert_pem, key_pem } = ca.issue(&leaf).map_err(tls_err)?;
                issued.push("issued the client port's certificate".into());
                Data::from([
                    ("tls.crt".to_string(), cert_pem),
                    ("tls.key".to_string(), key_pem),
                    ("ca.crt".to_string(), ca.cert_pem().to_string()),
                ])
            };
            let ca_pem = data["ca.crt"].clone();
            (
                Some(secret(kvc, format!("{name}-client-tls"), &data)?),
                Some(ca_pem),
            )
        }
        TlsMode::Secret => {
            let sname = kvc
                .spec
                .tls
                .client
                .secret_name
                .clone()
                .ok_or(BuildError::Tls(
                    "spec.tls.client.secretName is required with mode: secret".into(),
                ))?;
            let d = seen.client.as_ref().ok_or_else(|| {
                BuildError::Tls(format!(
                    "Secret {sname} (spec.tls.client.secretName) not found"
                ))
            })?;
            let ca_pem = d
                .get("ca.crt")
                .cloned()
                .ok_or_else(|| BuildError::Tls(format!("Secret {sname} has no ca.crt")))?;
            if !d.contains_key("tls.crt") || !d.contains_key("tls.key") {
                return Err(BuildError::Tls(format!(
                    "Secret {sname} needs tls.crt and tls.key"
                )));
            }
            (None, Some(ca_pem))
        }
    };
    let ca_configmap = match &client_ca {
        Some(pem) => Some(ConfigMap {
            metadata: build::meta(kvc, ca_configmap_name(kvc))?,
            data: Some(BTreeMap::from([("ca.crt".to_string(), pem.clone())])),
            ..Default::default()
        }),
        None => None,
    };
    let operator = client_ca.map(|ca_pem| OperatorTls {
        ca_pem,
        cert_pem: ca_data["operator.crt"].clone(),
        key_pem: ca_data["operator.key"].clone(),
    });
    Ok(Planned {
        ca_secret: secret(kvc, ca_secret_name(kvc), &ca_data)?,
        peer_secret: secret(kvc, peer_secret_name(kvc), &peer)?,
        client_secret,
        ca_configmap,
        operator,
        issued,
    })
}

#[cfg(test)]
mod tests;
