//! Where backups are kept, and how they are laid out there.
//!
//! A destination is a directory (`/backups/orders` or `file:///backups/orders`,
//! typically a mounted PersistentVolumeClaim) or an S3-compatible bucket
//! (`s3://bucket/optional/prefix`, with an endpoint for anything but AWS),
//! both through `object_store`: one API, multipart uploads for large backups,
//! and writes that appear whole or not at all (S3 objects by nature, local
//! files by write-then-rename). Credentials come from the environment
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, optionally
//! `AWS_SESSION_TOKEN`), in Kubernetes from a Secret, never from arguments.
//!
//! Layout under the destination, per cluster id (a restored cluster has a new
//! id, so its revisions, which continue from the backup's, never mix with the
//! old cluster's chain):
//! - `<cluster>/full/<revision:020>-<taken_at_ms:013>[-<label>].kvbak`: full backups
//!   (labelled when something other than the schedule asked for them);
//! - `<cluster>/segments/<after:020>-<upto:020>.kvseg`: continuous-backup segments;
//! - `<cluster>/position.json`: how far continuous backup is known complete.

use std::sync::Arc;

use futures_util::TryStreamExt;
use object_store::ObjectStore;
use object_store::ObjectStoreExt;
use object_store::PutPayload;
use object_store::path::Path;
use serde::Deserialize;
use serde::Serialize;

use super::BackupError;

/// How to reach an S3-compatible service.
#[derive(Clone, Default)]
pub struct S3Options {
    /// `http(s)://host:port` of the service; `None` = AWS itself.
    pub endpoint: Option<String>,
    /// Region (default `us-east-1`, which most S3-compatible servers accept).
    pub region: Option<String>,
    /// Access key id and secret; `None` = from the environment (`AWS_*`).
    pub credentials: Option<(String, String)>,
}

impl std::fmt::Debug for S3Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("credentials", &self.credentials.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// A full backup found in a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullEntry {
    pub name: String,
    pub revision: u64,
    pub taken_at_ms: u64,
    pub size: u64,
    /// What asked for it, when not the schedule (e.g. a `KVClusterBackup`'s name):
    /// retention leaves labelled backups to whoever made them.
    pub label: Option<String>,
}

/// A segment found in a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentEntry {
    pub name: String,
    pub after: u64,
    pub upto: u64,
}

/// How far continuous backup of a cluster is known to be complete.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Every revision up to this one is in a segment.
    pub upto: u64,
    /// Leader clock of that revision's change (unix ms).
    pub upto_at_ms: Option<u64>,
    /// A moment (unix ms) at which `upto` was known to be the cluster's newest
    /// revision: a restore to any time up to this one has every change it needs.
    pub complete_at_ms: Option<u64>,
}

/// A place to keep backups.
#[derive(Clone)]
pub struct Destination {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// For messages: the URL as given (no credentials are ever part of it).
    shown: String,
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Destination({})", self.shown)
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl Destination {
    /// Opens `url`: a directory path (created if missing) or `s3://bucket/prefix`.
    pub fn open(url: &str, s3: &S3Options) -> Result<Self, BackupError> {
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(BackupError::BadDestination(format!(
                    "{url:?}: no bucket (s3://bucket/prefix)"
                )));
            }
            // reqwest here is built without a default TLS provider (one provider for the
            // whole workspace, see Cargo.toml): make ring the process default.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let mut b = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_region(s3.region.clone().unwrap_or_else(|| "us-east-1".into()));
            if let Some((id, secret)) = &s3.credentials {
                b = b
                    .with_access_key_id(id.as_str())
                    .with_secret_access_key(secret.as_str());
            }
            if let Some(ep) = &s3.endpoint {
                let plain = ep.starts_with("http://");
                b = b
                    .with_endpoint(ep.trim_end_matches('/'))
                    .with_allow_http(plain)
                    .with_virtual_hosted_style_request(false);
                if plain {
                    // No TLS to verify: do not require the system's CA store (minimal
                    // images have none, and reqwest refuses to build without one).
                    b = b.with_client_options(
                        object_store::ClientOptions::new()
                            .with_allow_http(true)
                            .with_no_system_certificates(true),
                    );
                }
            }
            let store = b.build().map_err(|e| BackupError::Store {
                dest: url.to_string(),
                source: e,
            })?;
            return Ok(Self {
                store: Arc::new(store),
                prefix: Path::from(prefix.trim_matches('/')),
                shown: url.to_string(),
            });
        }
        let dir = url.strip_prefix("file://").unwrap_or(url);
        if dir.is_empty() || !dir.starts_with('/') {
            return Err(BackupError::BadDestination(format!(
                "{url:?}: use an absolute directory path or s3://bucket/prefix"
            )));
        }
        std::fs::create_dir_all(dir)?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir).map_err(|e| {
            BackupError::Store {
                dest: url.to_string(),
                source: e,
            }
        })?;
        Ok(Self {
            store: Arc::new(store),
            prefix: Path::default(),
            shown: url.to_string(),
        })
    }

    fn err(&self) -> impl Fn(object_store::Error) -> BackupError + '_ {
        move |source| match source {
            object_store::Error::NotFound { path, .. } => {
                BackupError::NotFound(format!("{}: no object {path}", self.shown))
            }
            source => BackupError::Store {
                dest: self.shown.clone(),
                source,
            },
        }
    }

    fn path(&self, name: &str) -> Path {
        let mut p = self.prefix.clone();
        for part in name.split('/').filter(|s| !s.is_empty()) {
            p = p.join(part);
        }
        p
    }

    /// Name of a full backup of `cluster` at `revision` read at `taken_at_ms`.
    pub fn full_name(cluster: &str, revision: u64, taken_at_ms: u64) -> String {
        format!("{cluster}/full/{revision:020}-{taken_at_ms:013}.kvbak")
    }

    /// [`Destination::full_name`] with a label (`[a-z0-9-]`, e.g. a resource's name).
    pub fn labelled_full_name(
        cluster: &str,
        revision: u64,
        taken_at_ms: u64,
        label: &str,
    ) -> String {
        format!("{cluster}/full/{revision:020}-{taken_at_ms:013}-{label}.kvbak")
    }

    /// Name of the segment of `cluster` covering `after+1..=upto`.
    pub fn segment_name(cluster: &str, after: u64, upto: u64) -> String {
        format!("{cluster}/segments/{after:020}-{upto:020}.kvseg")
    }

    fn position_name(cluster: &str) -> String {
        format!("{cluster}/position.json")
    }

    /// Stores `bytes` under `name` (whole or not at all).
    pub async fn put(&self, name: &str, bytes: Vec<u8>) -> Result<(), BackupError> {
        self.store
            .put(&self.path(name), PutPayload::from(bytes))
            .await
            .map_err(self.err())?;
        Ok(())
    }

    /// A writer for a large object (multipart); `shutdown` completes it, `abort` drops it.
    pub fn writer(&self, name: &str) -> object_store::buffered::BufWriter {
        object_store::buffered::BufWriter::new(self.store.clone(), self.path(name))
    }

    /// The whole object.
    pub async fn get(&self, name: &str) -> Result<Vec<u8>, BackupError> {
        let r = self.store.get(&self.path(name)).await.map_err(self.err())?;
        Ok(r.bytes().await.map_err(self.err())?.to_vec())
    }

    /// A buffered reader over the object.
    pub async fn reader(
        &self,
        name: &str,
    ) -> Result<object_store::buffered::BufReader, BackupError> {
        let meta = self
            .store
            .head(&self.path(name))
            .await
            .map_err(self.err())?;
        Ok(object_store::buffered::BufReader::with_capacity(
            self.store.clone(),
            &meta,
            1 << 20,
        ))
    }

    pub async fn delete(&self, name: &str) -> Result<(), BackupError> {
        match self.store.delete(&self.path(name)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err()(e)),
        }
    }

    /// Names (relative to the destination) and sizes under `dir`, sorted.
    async fn list(&self, dir: &str) -> Result<Vec<(String, u64)>, BackupError> {
        let base = self.path(dir);
        let metas: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&base))
            .try_collect()
            .await
            .map_err(self.err())?;
        let mut out: Vec<(String, u64)> = metas
            .into_iter()
            .filter_map(|m| {
                let name = m.location.filename()?.to_string();
                Some((format!("{dir}/{name}"), m.size))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Cluster ids with anything stored.
    pub async fn clusters(&self) -> Result<Vec<String>, BackupError> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let r = self
            .store
            .list_with_delimiter(prefix)
            .await
            .map_err(self.err())?;
        let mut out: Vec<String> = r
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Full backups of `cluster`, oldest first.
    pub async fn full_backups(&self, cluster: &str) -> Result<Vec<FullEntry>, BackupError> {
        let mut out = Vec::new();
        for (name, size) in self.list(&format!("{cluster}/full")).await? {
            let Some(stem) = name
                .rsplit('/')
                .next()
                .and_then(|f| f.strip_suffix(".kvbak"))
            else {
                continue;
            };
            let mut parts = stem.splitn(3, '-');
            let (Some(rev), Some(at)) = (parts.next(), parts.next()) else {
                continue;
            };
            let label = parts.next().map(str::to_string);
            if let (Ok(revision), Ok(taken_at_ms)) = (rev.parse(), at.parse()) {
                out.push(FullEntry {
                    name,
                    revision,
                    taken_at_ms,
                    size,
                    label,
                });
            }
        }
        out.sort_by_key(|f| (f.revision, f.taken_at_ms));
        Ok(out)
    }

    /// Segments of `cluster`, in order of where they start.
    pub async fn segments(&self, cluster: &str) -> Result<Vec<SegmentEntry>, BackupError> {
        let mut out = Vec::new();
        for (name, _) in self.list(&format!("{cluster}/segments")).await? {
            let Some(stem) = name
                .rsplit('/')
                .next()
                .and_then(|f| f.strip_suffix(".kvseg"))
            else {
                continue;
            };
            let Some((a, u)) = stem.split_once('-') else {
                continue;
            };
            if let (Ok(after), Ok(upto)) = (a.parse(), u.parse()) {
                out.push(SegmentEntry { name, after, upto });
            }
        }
        out.sort_by_key(|s| (s.after, s.upto));
        Ok(out)
    }

    pub async fn position(&self, cluster: &str) -> Result<Option<Position>, BackupError> {
        match self.get(&Self::position_name(cluster)).await {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| BackupError::Corrupt {
                        what: "position",
                        offset: 0,
                        detail: e.to_string(),
                    })
            }
            Err(BackupError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn set_position(&self, cluster: &str, p: &Position) -> Result<(), BackupError> {
        let bytes = serde_json::to_vec(p).map_err(|e| BackupError::Encode(e.to_string()))?;
        self.put(&Self::position_name(cluster), bytes).await
    }
}
