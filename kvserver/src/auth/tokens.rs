//! Bearer tokens from files: in Kubernetes, Secrets projected into the pod
//! (the user's, and the operator's own admin token).
//!
//! A file is YAML:
//! ```yaml
//! tokens:
//!   - name: billing            # shown in logs and errors
//!     token: "<at least 16 printable characters>"
//!     role: readwrite          # read | readwrite | admin
//!     prefixes: ["billing/"]   # optional; empty or absent: every key
//! ```
//! Only SHA-256 digests of the tokens are kept in memory, and a presented token
//! is looked up by its digest. A name may appear with several tokens: that is how
//! a token is rotated without a gap (add the new one, move clients, drop the old).
//!
//! The files are re-read every `auth.reload_interval_ms` (polling, because a
//! Secret update swaps a symlink, which file notifications miss). A change that
//! does not parse keeps the previous tokens in force, is logged once per
//! distinct content, and shows in `kv_auth_reload_failing` and `/readyz`
//! warnings; error messages name the file and the entry, never a token.

use std::collections::HashMap;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::RwLock;
use std::time::Duration;

use ring::digest::SHA256;
use ring::digest::digest;
use serde::Deserialize;

use super::Kind;
use super::Principal;
use super::Role;

/// Shortest token accepted: shorter ones are guessable.
pub const MIN_TOKEN_BYTES: usize = 16;
/// Longest token accepted (it travels in an HTTP header).
pub const MAX_TOKEN_BYTES: usize = 1024;
/// Largest token file read.
const MAX_FILE_BYTES: u64 = 4 << 20;

/// A token file that cannot be used. Messages never carry a token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read token file {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("token file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("token file {path}: tokens[{index}] ({name}): {message}")]
    Entry {
        path: PathBuf,
        index: usize,
        name: String,
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    tokens: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    token: String,
    role: Role,
    #[serde(default)]
    prefixes: Vec<String>,
}

type Digest = [u8; 32];

fn sha256(bytes: &[u8]) -> Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

/// SHA-256 of a presented token: what tables and caches are keyed by.
pub fn digest_of(token: &str) -> [u8; 32] {
    sha256(token.as_bytes())
}

/// Whether `name` is a usable principal name (it shows in logs and headers).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | ':' | '/'))
}

/// Checks a grant's prefixes: each is a valid key (non-empty, bounded, no NUL).
pub fn check_prefixes(prefixes: &[String]) -> Result<(), String> {
    for (i, p) in prefixes.iter().enumerate() {
        crate::command::check_key(p).map_err(|e| format!("prefixes[{i}]: {}", e.message))?;
    }
    Ok(())
}

/// Parses one token file into (digest, principal) pairs.
fn parse(path: &Path, bytes: &[u8]) -> Result<Vec<(Digest, Principal)>, TokenError> {
    let de = serde_yaml::Deserializer::from_slice(bytes);
    let file: File = serde_path_to_error::deserialize(de).map_err(|e| {
        let at = e.path().to_string();
        // serde's messages quote the offending value; for the token field that
        // value is (a piece of) a secret.
        let message = if at.ends_with(".token") {
            format!("{at}: must be a string")
        } else {
            format!("{at}: {}", e.into_inner())
        };
        TokenError::Parse {
            path: path.to_path_buf(),
            message,
        }
    })?;
    let mut out = Vec::with_capacity(file.tokens.len());
    for (index, e) in file.tokens.into_iter().enumerate() {
        let entry_err = |message: String| TokenError::Entry {
            path: path.to_path_buf(),
            index,
            name: e.name.clone(),
            message,
        };
        if !valid_name(&e.name) {
            return Err(entry_err(
                "name must be 1-253 characters of [A-Za-z0-9._@:/-]".into(),
            ));
        }
        let t = e.token.as_bytes();
        if t.len() < MIN_TOKEN_BYTES
            || t.len() > MAX_TOKEN_BYTES
            || !t.iter().all(|b| (0x21..=0x7e).contains(b))
        {
            return Err(entry_err(format!(
                "token must be {MIN_TOKEN_BYTES}-{MAX_TOKEN_BYTES} printable ASCII characters without spaces"
            )));
        }
        check_prefixes(&e.prefixes).map_err(entry_err)?;
        out.push((
            sha256(t),
            Principal {
                name: e.name,
                kind: Kind::Token,
                role: e.role,
                prefixes: e.prefixes,
            },
        ));
    }
    Ok(out)
}

/// Reads and parses every file into one table; a token listed twice is an error.
fn load(files: &[PathBuf]) -> Result<HashMap<Digest, Arc<Principal>>, TokenError> {
    let mut table = HashMap::new();
    for path in files {
        let bytes = read(path)?;
        for (d, p) in parse(path, &bytes)? {
            if table.insert(d, Arc::new(p)).is_some() {
                return Err(TokenError::Parse {
                    path: path.clone(),
                    message: "the same token is listed twice (each token names one principal)"
                        .into(),
                });
            }
        }
    }
    Ok(table)
}

fn read(path: &Path) -> Result<Vec<u8>, TokenError> {
    use std::io::Read;
    let err = |e: std::io::Error| TokenError::Read {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut buf = Vec::new();
    std::fs::File::open(path)
        .map_err(err)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(err)?;
    if buf.len() as u64 > MAX_FILE_BYTES {
        return Err(TokenError::Read {
            path: path.to_path_buf(),
            message: format!("larger than {MAX_FILE_BYTES} bytes"),
        });
    }
    Ok(buf)
}

/// Digest of the files' current contents (what a reload compares).
fn contents_digest(files: &[PathBuf]) -> Digest {
    let mut all = Vec::new();
    for path in files {
        all.extend_from_slice(path.as_os_str().as_encoded_bytes());
        all.push(0);
        match read(path) {
            Ok(b) => all.extend_from_slice(&sha256(&b)),
            Err(e) => all.extend_from_slice(e.to_string().as_bytes()),
        }
        all.push(0);
    }
    sha256(&all)
}

struct State {
    table: Arc<HashMap<Digest, Arc<Principal>>>,
    /// Digest of the contents `table` came from.
    digest: Digest,
    /// Digest and error of the newest contents, when they failed.
    failed: Option<(Digest, String)>,
}

/// The bearer tokens in force, re-read from their files.
pub struct Tokens {
    files: Vec<PathBuf>,
    state: RwLock<State>,
}

impl Tokens {
    /// Loads `files`; any problem is an error (at startup, a node refuses to run on
    /// a token file it cannot read).
    pub fn load(files: Vec<PathBuf>) -> Result<Arc<Self>, TokenError> {
        let digest = contents_digest(&files);
        let table = load(&files)?;
        Ok(Arc::new(Self {
            files,
            state: RwLock::new(State {
                table: Arc::new(table),
                digest,
                failed: None,
            }),
        }))
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The principal `token` authenticates, if any.
    pub fn lookup(&self, token: &str) -> Option<Arc<Principal>> {
        let d = sha256(token.as_bytes());
        let table = self.read_state().table.clone();
        table.get(&d).cloned()
    }

    /// Tokens in force.
    pub fn len(&self) -> usize {
        self.read_state().table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Why the newest files are not in force, while they are not.
    pub fn failing(&self) -> Option<String> {
        self.read_state().failed.as_ref().map(|(_, e)| e.clone())
    }

    /// Re-reads the files: `Ok(true)` when new tokens are in force, `Ok(false)`
    /// when nothing changed (or the same bad contents were already reported).
    pub fn reload(&self) -> Result<bool, TokenError> {
        let digest = contents_digest(&self.files);
        {
            let s = self.read_state();
            if s.failed.as_ref().is_some_and(|(d, _)| *d == digest) {
                return Ok(false);
            }
            if s.digest == digest && s.failed.is_none() {
                return Ok(false);
            }
        }
        if self.read_state().digest == digest {
            // Back to the contents in force (a bad change was undone): nothing fails.
            self.state.write().unwrap_or_else(|p| p.into_inner()).failed = None;
            return Ok(false);
        }
        let result = load(&self.files);
        let mut s = self.state.write().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(table) => {
                s.table = Arc::new(table);
                s.digest = digest;
                s.failed = None;
                Ok(true)
            }
            Err(e) => {
                s.failed = Some((digest, e.to_string()));
                Err(e)
            }
        }
    }

    /// Re-reads the files every `every` until `stop`.
    pub async fn watch(
        self: Arc<Self>,
        every: Duration,
        metrics: Arc<crate::metrics::Metrics>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        crate::tls::poll_files(self, every, stop, Self::reload, |this, result| {
            match result {
                Ok(Ok(true)) => {
                    metrics.auth_reloads.with_label_values(&["ok"]).inc();
                    tracing::info!(tokens = this.len(), "token files reloaded");
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    metrics.auth_reloads.with_label_values(&["error"]).inc();
                    tracing::warn!(error = %e, "token reload failed; the previous tokens stay in force");
                }
                Err(e) => tracing::warn!(error = %e, "token reload task failed"),
            }
            this.export(&metrics);
        })
        .await
    }

    /// Sets the token gauges.
    pub fn export(&self, metrics: &crate::metrics::Metrics) {
        metrics.auth_tokens.set(self.len() as i64);
        metrics
            .auth_reload_failing
            .set(i64::from(self.failing().is_some()));
    }
}
