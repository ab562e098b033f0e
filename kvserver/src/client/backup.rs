//! [`Client::backup`]: a full backup (`GET /v1/backup`) as a byte stream, from
//! the first member that answers.

use super::Client;
use super::ClientError;
use super::decode;

/// A backup being downloaded: what the serving node announced, and the bytes.
pub struct BackupDownload {
    /// The endpoint that serves it.
    pub endpoint: String,
    /// `x-kv-revision`: the revision the backup holds.
    pub revision: Option<u64>,
    /// `x-kv-backup-sha256`: the checksum the file ends with.
    pub sha256: Option<String>,
    /// Size in bytes, when announced.
    pub size: Option<u64>,
    response: reqwest::Response,
}

impl BackupDownload {
    /// The next chunk of the body; `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<bytes::Bytes>, ClientError> {
        self.response
            .chunk()
            .await
            .map_err(|e| ClientError::transport(&self.endpoint, &e))
    }
}

impl Client {
    /// Starts downloading a full backup. Endpoints are tried in turn while they
    /// cannot be reached or answer a retryable error; the stream itself is not
    /// resumed (a broken download is started again by the caller).
    pub async fn backup(&self) -> Result<BackupDownload, ClientError> {
        let mut last = None;
        let mut delay = self.inner.backoff;
        for _ in 0..self.inner.attempts.max(1) {
            let endpoint = self.current();
            let req = self.inner.stream_http.get(format!("{endpoint}/v1/backup"));
            let sent = self.authorize(req)?.send().await;
            let resp = match sent {
                Ok(r) if r.status().is_success() => r,
                Ok(r) => match decode::<serde_json::Value>(&endpoint, r).await {
                    Err(e) if e.is_retryable() => {
                        self.rotate(&endpoint);
                        last = Some(e);
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(std::time::Duration::from_secs(2));
                        continue;
                    }
                    Err(e) => return Err(e),
                    Ok(_) => {
                        return Err(ClientError::Decode {
                            endpoint,
                            message: "unexpected JSON body instead of a backup".into(),
                        });
                    }
                },
                Err(e) => {
                    let e = ClientError::transport(&endpoint, &e);
                    self.rotate(&endpoint);
                    last = Some(e);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(2));
                    continue;
                }
            };
            let header = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            return Ok(BackupDownload {
                revision: header("x-kv-revision").and_then(|v| v.parse().ok()),
                sha256: header("x-kv-backup-sha256"),
                size: resp.content_length(),
                endpoint,
                response: resp,
            });
        }
        Err(last.unwrap_or_else(|| ClientError::Config("no attempt made".into())))
    }
}
