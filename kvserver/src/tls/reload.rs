//! [`Reloading`]: a port's certificate, key and CA bundle, read from files and
//! re-read when they change. Kubernetes updates a mounted Secret by swapping a
//! symlink, so the files are polled (contents compared, a few KiB every few
//! seconds) rather than watched with inotify, which misses the swap.
//!
//! New material is checked before it is used: PEM parses, the key goes with the
//! certificate, the certificate is valid now, a member certificate names this
//! node and chains to the new CA bundle. Material that fails keeps the old one
//! in place; the failure is logged once per distinct content, counted in
//! `kv_tls_reloads_total{result="error"}`, flagged in `kv_tls_reload_failing`
//! and shown by `/readyz` until good files replace it. Connections pick up the
//! current material at their handshake, so connections opened before a rotation
//! carry on with the material they started with.

use std::hash::Hash;
use std::hash::Hasher;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::RwLock;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::server::ParsedCertificate;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use rustls_pki_types::UnixTime;
use serde::Deserialize;
use serde::Serialize;

use super::CertInfo;
use super::TlsError;
use super::cert::now_unix;
use super::pem;

/// Where a port's TLS material lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
}

/// Whether the client port asks clients for a certificate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No client certificates.
    #[default]
    None,
    /// A certificate is verified when a client sends one; clients without one are served.
    Optional,
    /// Every client must present a certificate signed by the CA bundle.
    Require,
}

/// What the material is for, which decides its checks and verifiers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A member on the peer port: the certificate must name this node of this
    /// cluster, be valid for `host` (of the advertised peer address, which the
    /// other members check it against) and chain to the CA bundle, which
    /// verifies the other members.
    Member {
        cluster_id: String,
        node_id: u64,
        host: String,
    },
    /// The client port.
    Api { client_auth: ClientAuth },
}

/// One consistent set of loaded material.
pub struct Material {
    pub key: Arc<CertifiedKey>,
    pub info: CertInfo,
    /// Verifies client certificates (members on the peer port; API clients when asked for).
    pub(crate) client_verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// Verifies servers against the CA bundle (the peer port's dialer; the HTTP relay).
    pub(crate) server_verifier: Option<Arc<dyn ServerCertVerifier>>,
    digest: u64,
}

struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Option<Vec<u8>>,
    digest: u64,
}

fn read_all(files: &CertFiles) -> Result<Contents, TlsError> {
    let cert = pem::read(&files.cert)?;
    let key = pem::read(&files.key)?;
    let ca = files.ca.as_deref().map(pem::read).transpose()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&cert, &key, &ca).hash(&mut h);
    Ok(Contents {
        cert,
        key,
        ca,
        digest: h.finish(),
    })
}

fn cert_err(path: &std::path::Path, message: impl Into<String>) -> TlsError {
    TlsError::Certificate {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn build(files: &CertFiles, role: &Role, c: Contents) -> Result<Material, TlsError> {
    let provider = super::provider();
    let chain = pem::certs(&c.cert, &files.cert)?;
    let key = pem::key(&c.key, &files.key)?;
    let info = super::inspect(&chain[0]).map_err(|m| cert_err(&files.cert, m))?;
    if let Some(problem) = info.validity_problem(now_unix()) {
        return Err(cert_err(&files.cert, problem));
    }
    let certified = CertifiedKey::from_der(chain.clone(), key, &provider).map_err(|e| {
        cert_err(
            &files.cert,
            format!("does not go with the key in {} ({e})", files.key.display()),
        )
    })?;
    let roots = match (&c.ca, &files.ca) {
        (Some(bytes), Some(path)) => Some(Arc::new(pem::roots(bytes, path)?)),
        _ => None,
    };
    let mut material = Material {
        key: Arc::new(certified),
        info,
        client_verifier: None,
        server_verifier: None,
        digest: c.digest,
    };
    let verifiers = |roots: &Arc<RootCertStore>, optional: bool| {
        let mut b = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
        if optional {
            b = b.allow_unauthenticated();
        }
        let client = b.build().map_err(|e| TlsError::Config(e.to_string()))?;
        let server = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok::<_, TlsError>((
            client as Arc<dyn ClientCertVerifier>,
            server as Arc<dyn ServerCertVerifier>,
        ))
    };
    match role {
        Role::Member {
            cluster_id,
            node_id,
            host,
        } => {
            let ca_path = files.ca.as_ref().ok_or_else(|| {
                TlsError::Config("peer TLS needs the cluster's CA bundle (ca_file)".into())
            })?;
            let roots = roots
                .as_ref()
                .ok_or_else(|| cert_err(ca_path, "not read"))?;
            match &material.info.node {
                Some((c, n)) if c == cluster_id && n == node_id => {}
                Some((c, n)) => {
                    return Err(cert_err(
                        &files.cert,
                        format!(
                            "names node {n} of cluster {c:?}, but this is node {node_id} of cluster {cluster_id:?}"
                        ),
                    ));
                }
                None => {
                    return Err(cert_err(
                        &files.cert,
                        format!(
                            "has no member identity: a member certificate carries the URI SAN {}",
                            super::node_uri(cluster_id, *node_id)
                        ),
                    ));
                }
            }
            if !super::valid_for_host(&chain[0], host) {
                return Err(cert_err(
                    &files.cert,
                    format!(
                        "is not valid for {host}, the host of this node's advertised peer address (add it as a DNS or IP SAN)"
                    ),
                ));
            }
            // A member certificate the bundle does not trust would be refused by
            // every other member: refuse it here, where the reason can be said.
            let end_entity = &chain[0];
            let parsed = ParsedCertificate::try_from(end_entity)
                .map_err(|e| cert_err(&files.cert, e.to_string()))?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &parsed,
                roots,
                &chain[1..],
                UnixTime::now(),
                provider.signature_verification_algorithms.all,
            )
            .map_err(|e| {
                cert_err(
                    &files.cert,
                    format!("is not signed by the CA bundle {} ({e})", ca_path.display()),
                )
            })?;
            let (client, server) = verifiers(roots, false)?;
            material.client_verifier = Some(client);
            material.server_verifier = Some(server);
        }
        Role::Api { client_auth } => {
            if let Some(roots) = &roots {
                let (client, server) = verifiers(roots, *client_auth == ClientAuth::Optional)?;
                if *client_auth != ClientAuth::None {
                    material.client_verifier = Some(client);
                }
                material.server_verifier = Some(server);
            } else if *client_auth != ClientAuth::None {
                return Err(TlsError::Config(
                    "client_auth needs the CA bundle that signs client certificates (ca_file)"
                        .into(),
                ));
            }
        }
    }
    Ok(material)
}

/// A port's TLS material, reloaded from its files.
pub struct Reloading {
    /// `peer` or `client`: the metric label and log field.
    pub port: &'static str,
    files: CertFiles,
    role: Role,
    current: RwLock<Arc<Material>>,
    /// The digest and reason of the newest files that failed to load.
    failed: Mutex<Option<(u64, String)>>,
}

impl std::fmt::Debug for Reloading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("port", &self.port)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl Reloading {
    /// Loads the material; at startup a failure is an error naming the file.
    pub fn load(port: &'static str, files: CertFiles, role: Role) -> Result<Arc<Self>, TlsError> {
        let material = build(&files, &role, read_all(&files)?)?;
        Ok(Arc::new(Self {
            port,
            files,
            role,
            current: RwLock::new(Arc::new(material)),
            failed: Mutex::new(None),
        }))
    }

    /// The material in use.
    pub fn current(&self) -> Arc<Material> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads the files. `Ok(true)`: new material is in use; `Ok(false)`:
    /// nothing changed (or the same bad files again); `Err`: new files are bad and
    /// the old material stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let contents = match read_all(&self.files) {
            Ok(c) => c,
            Err(e) => {
                self.set_failed(0, &e);
                return Err(e);
            }
        };
        let digest = contents.digest;
        if digest == self.current().digest {
            self.clear_failed();
            return Ok(false);
        }
        if self.failed_digest() == Some(digest) {
            return Ok(false);
        }
        match build(&self.files, &self.role, contents) {
            Ok(material) => {
                let material = Arc::new(material);
                match self.current.write() {
                    Ok(mut g) => *g = material,
                    Err(poisoned) => *poisoned.into_inner() = material,
                }
                self.clear_failed();
                Ok(true)
            }
            Err(e) => {
                self.set_failed(digest, &e);
                Err(e)
            }
        }
    }

    /// Why the port's material is not as it should be: the newest files failed to
    /// load, or the certificate in use is outside its validity window.
    pub fn problem(&self) -> Option<String> {
        let failed = self
            .failed
            .lock()
            .ok()
            .and_then(|g| g.as_ref().map(|(_, m)| m.clone()));
        if let Some(m) = failed {
            return Some(format!(
                "{} TLS reload failed, still serving the previous certificate: {m}",
                self.port
            ));
        }
        self.current()
            .info
            .validity_problem(now_unix())
            .map(|p| format!("{} TLS certificate {p}", self.port))
    }

    fn failed_digest(&self) -> Option<u64> {
        self.failed
            .lock()
            .ok()
            .and_then(|g| g.as_ref().map(|(d, _)| *d))
    }

    fn set_failed(&self, digest: u64, e: &TlsError) {
        if let Ok(mut g) = self.failed.lock() {
            *g = Some((digest, e.to_string()));
        }
    }

    fn clear_failed(&self) {
        if let Ok(mut g) = self.failed.lock() {
            *g = None;
        }
    }

    /// Polls the files every `every` until `stop`, keeping the port's metrics current.
    pub async fn watch(
        self: Arc<Self>,
        every: Duration,
        metrics: Arc<crate::metrics::Metrics>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        poll_files(self, every, stop, Self::reload, |this, result| {
            match result {
                Ok(Ok(true)) => {
                    let info = &this.current().info;
                    metrics
                        .tls_reloads
                        .with_label_values(&[this.port, "ok"])
                        .inc();
                    tracing::info!(port = this.port, subject = %info.subject, not_after = info.not_after, "TLS certificate reloaded");
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    metrics
                        .tls_reloads
                        .with_label_values(&[this.port, "error"])
                        .inc();
                    tracing::warn!(port = this.port, error = %e, "TLS reload failed; keeping the previous certificate");
                }
                Err(e) => tracing::warn!(port = this.port, error = %e, "TLS reload task failed"),
            }
            this.export(&metrics);
        })
        .await
    }

    /// Sets the port's expiry and failing gauges.
    pub fn export(&self, metrics: &crate::metrics::Metrics) {
        metrics
            .tls_cert_not_after
            .with_label_values(&[self.port])
            .set(self.current().info.not_after);
        metrics
            .tls_reload_failing
            .with_label_values(&[self.port])
            .set(i64::from(self.failed_digest().is_some()));
    }
}

impl rustls::server::ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current().key.clone())
    }
}

impl rustls::client::ResolvesClientCert for Reloading {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current().key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Calls `reload` on `this` every `every` until `stop`, on a blocking thread
/// (file reads and parsing), and hands each outcome to `outcome`: the one
/// polling loop of every file kvserver re-reads (certificates, token files).
/// Polling, because a Secret update swaps a symlink, which file notifications miss.
pub(crate) async fn poll_files<T, E>(
    this: Arc<T>,
    every: Duration,
    stop: impl std::future::Future<Output = ()>,
    reload: fn(&T) -> Result<bool, E>,
    mut outcome: impl FnMut(&T, Result<Result<bool, E>, tokio::task::JoinError>),
) where
    T: Send + Sync + 'static,
    E: Send + 'static,
{
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {}
        }
        let t = this.clone();
        let result = tokio::task::spawn_blocking(move || reload(&t)).await;
        outcome(&this, result);
    }
}
