//! The bearer token a client sends: a fixed string, or a file re-read now and
//! then — a Kubernetes projected ServiceAccount token, or a token Secret
//! mounted into the pod, is replaced in place while the client runs.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use reqwest::header::HeaderValue;

use super::ClientError;

/// How often a token file is read again.
const REREAD: Duration = Duration::from_secs(10);

/// Where the client's bearer token comes from.
pub(super) enum Credential {
    Token(HeaderValue),
    File {
        path: PathBuf,
        /// The header made from the file, and when it was read.
        cached: Mutex<Option<(Instant, HeaderValue)>>,
    },
}

/// `Bearer <token>`, marked sensitive (kept out of reqwest's debug output).
pub(super) fn header(token: &str) -> Result<HeaderValue, ClientError> {
    let token = token.trim();
    if token.is_empty() {
        return Err(ClientError::Config("the bearer token is empty".into()));
    }
    let mut v = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
        ClientError::Config("the bearer token holds characters a header cannot carry".into())
    })?;
    v.set_sensitive(true);
    Ok(v)
}

fn read(path: &PathBuf) -> Result<HeaderValue, ClientError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ClientError::Config(format!("cannot read token file {}: {e}", path.display()))
    })?;
    header(&text).map_err(|e| ClientError::Config(format!("token file {}: {e}", path.display())))
}

impl Credential {
    pub(super) fn file(path: PathBuf) -> Result<Self, ClientError> {
        let first = read(&path)?;
        Ok(Credential::File {
            path,
            cached: Mutex::new(Some((Instant::now(), first))),
        })
    }

    /// The `Authorization` value to send now.
    pub(super) fn value(&self) -> Result<HeaderValue, ClientError> {
        match self {
            Credential::Token(v) => Ok(v.clone()),
            Credential::File { path, cached } => {
                let mut c = cached.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((at, v)) = c.as_ref()
                    && at.elapsed() < REREAD
                {
                    return Ok(v.clone());
                }
                // A file briefly missing while a Secret is swapped: the last token
                // read stays in use until the next read succeeds.
                match (read(path), c.as_ref()) {
                    (Ok(v), _) => {
                        *c = Some((Instant::now(), v.clone()));
                        Ok(v)
                    }
                    (Err(_), Some((_, old))) => Ok(old.clone()),
                    (Err(e), None) => Err(e),
                }
            }
        }
    }
}
