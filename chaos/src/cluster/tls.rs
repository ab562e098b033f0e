//! Certificates of a test cluster, made the way the operator's `tls.mode: auto`
//! makes them (kvserver's issuing code): one CA per cluster, a member
//! certificate per node valid for 127.0.0.1 and naming the node, and a client
//! certificate for the harness. Files are replaced by write-then-rename, as the
//! kubelet swaps a Secret's files, so a rotation test sees what a pod sees.

use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use kvserver::tls::ClientTls;
use kvserver::tls::issue::Ca;
use kvserver::tls::issue::Issued;
use kvserver::tls::issue::Leaf;

use crate::ChaosError;

/// How long test certificates are valid.
const VALID_FOR: Duration = Duration::from_secs(24 * 3600);

fn tls_err(e: kvserver::tls::TlsError) -> ChaosError {
    ChaosError::Cluster(format!("test certificates: {e}"))
}

/// Writes `contents` to `path` by a rename, so a reader never sees half a file.
pub fn replace_file(path: &Path, contents: &str) -> Result<(), ChaosError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The certificates of one test cluster.
pub struct TestTls {
    dir: PathBuf,
    cluster_id: String,
    /// The CA that issues new certificates.
    pub ca: Ca,
}

impl TestTls {
    /// A new CA and the harness's client certificate, in `dir`.
    pub fn new(dir: &Path, cluster_id: &str) -> Result<Self, ChaosError> {
        std::fs::create_dir_all(dir)?;
        let ca = Ca::new(&format!("{cluster_id} test CA"), VALID_FOR).map_err(tls_err)?;
        let tls = Self {
            dir: dir.to_path_buf(),
            cluster_id: cluster_id.to_string(),
            ca,
        };
        tls.write_bundle(&[tls.ca.cert_pem()])?;
        let client = tls
            .ca
            .issue(&Leaf::client("kvchaos-harness", VALID_FOR))
            .map_err(tls_err)?;
        tls.write_pair(&tls.client_cert(), &tls.client_key(), &client)?;
        Ok(tls)
    }

    /// Issues member certificates for `cluster_id` from now on (a recovered
    /// cluster's new identity).
    pub fn set_cluster_id(&mut self, cluster_id: &str) {
        self.cluster_id = cluster_id.to_string();
    }

    /// The CA bundle every node and client trusts.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn node_cert(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}.pem"))
    }

    pub fn node_key(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}-key.pem"))
    }

    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("client.pem")
    }

    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client-key.pem")
    }

    fn write_pair(&self, cert: &Path, key: &Path, issued: &Issued) -> Result<(), ChaosError> {
        // Key first: a reader that sees the new certificate finds its key.
        replace_file(key, &issued.key_pem)?;
        replace_file(cert, &issued.cert_pem)
    }

    /// Replaces the CA bundle with `pems` (several during a CA rotation).
    pub fn write_bundle(&self, pems: &[&str]) -> Result<(), ChaosError> {
        replace_file(&self.ca_file(), &pems.concat())
    }

    /// A member certificate for node `id` from `ca` (default: the current CA).
    pub fn member(&self, id: u64, ca: Option<&Ca>) -> Result<Issued, ChaosError> {
        let leaf = Leaf::member(
            &self.cluster_id,
            id,
            &["127.0.0.1".to_string(), "localhost".to_string()],
            VALID_FOR,
        );
        ca.unwrap_or(&self.ca).issue(&leaf).map_err(tls_err)
    }

    /// Issues node `id` a new member certificate and writes it over its files.
    pub fn issue_node(&self, id: u64, ca: Option<&Ca>) -> Result<(), ChaosError> {
        let issued = self.member(id, ca)?;
        self.write_pair(&self.node_cert(id), &self.node_key(id), &issued)
    }

    /// Node `id`'s certificate and key as they are on disk now.
    pub fn node_files(&self, id: u64) -> Result<Issued, ChaosError> {
        Ok(Issued {
            cert_pem: std::fs::read_to_string(self.node_cert(id))?,
            key_pem: std::fs::read_to_string(self.node_key(id))?,
        })
    }

    /// Writes `issued` as node `id`'s certificate and key (a test's own, bad ones included).
    pub fn write_node(&self, id: u64, issued: &Issued) -> Result<(), ChaosError> {
        self.write_pair(&self.node_cert(id), &self.node_key(id), issued)
    }

    /// The environment that gives node `id` its certificate on both ports.
    pub fn node_env(&self, id: u64) -> Vec<(String, String)> {
        let s = |p: PathBuf| p.to_string_lossy().to_string();
        vec![
            ("KV_TLS_PEER_CERT_FILE".into(), s(self.node_cert(id))),
            ("KV_TLS_PEER_KEY_FILE".into(), s(self.node_key(id))),
            ("KV_TLS_PEER_CA_FILE".into(), s(self.ca_file())),
            ("KV_TLS_CLIENT_CERT_FILE".into(), s(self.node_cert(id))),
            ("KV_TLS_CLIENT_KEY_FILE".into(), s(self.node_key(id))),
            ("KV_TLS_CLIENT_CA_FILE".into(), s(self.ca_file())),
            // Tests rotate files and wait for the change: poll often.
            ("KV_TLS_RELOAD_INTERVAL_MS".into(), "200".into()),
        ]
    }

    /// What a client of the cluster needs (the bundle and the harness's certificate).
    pub fn client_tls(&self) -> ClientTls {
        ClientTls {
            ca_file: Some(self.ca_file()),
            cert_file: Some(self.client_cert()),
            key_file: Some(self.client_key()),
        }
    }
}
