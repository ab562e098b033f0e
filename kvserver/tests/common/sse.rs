//! A minimal Server-Sent Events reader for the watch tests.

use std::time::Duration;
use std::time::Instant;

use anyhow::bail;
use serde_json::Value;

/// One Server-Sent Event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
    pub id: Option<String>,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or(Value::Null)
    }
}

/// Minimal SSE reader over a streaming HTTP response.
pub struct SseReader {
    resp: reqwest::Response,
    buf: String,
}

impl SseReader {
    /// Opens a stream; on a non-200 answer returns the status and JSON body instead.
    pub async fn open(
        http: &reqwest::Client,
        url: &str,
    ) -> anyhow::Result<Result<SseReader, (u16, Value)>> {
        // A stream outlives the client's request timeout: this one request gets an
        // hour (reqwest lets a request's timeout replace the client's).
        let resp = http
            .get(url)
            .timeout(Duration::from_secs(3600))
            .send()
            .await?;
        if resp.status().as_u16() != 200 {
            let status = resp.status().as_u16();
            return Ok(Err((status, resp.json().await.unwrap_or(Value::Null))));
        }
        Ok(Ok(SseReader {
            resp,
            buf: String::new(),
        }))
    }

    /// The next event (comments skipped); `None` when the server closed the stream.
    pub async fn next(&mut self, timeout: Duration) -> anyhow::Result<Option<SseEvent>> {
        let deadline = Instant::now() + timeout;
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = SseEvent {
                    event: "message".into(),
                    data: String::new(),
                    id: None,
                };
                let mut any = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        ev.event = v.trim().to_string();
                        any = true;
                    } else if let Some(v) = line.strip_prefix("data:") {
                        if !ev.data.is_empty() {
                            ev.data.push('\n');
                        }
                        ev.data.push_str(v.trim_start());
                        any = true;
                    } else if let Some(v) = line.strip_prefix("id:") {
                        ev.id = Some(v.trim().to_string());
                    }
                }
                if any {
                    return Ok(Some(ev));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no SSE event within {timeout:?}");
            }
            match tokio::time::timeout(left, self.resp.chunk()).await {
                Err(_) => bail!("no SSE event within {timeout:?}"),
                Ok(Err(e)) => return Err(e.into()),
                Ok(Ok(None)) => return Ok(None),
                Ok(Ok(Some(bytes))) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
            }
        }
    }
}
