//! A minimal Server-Sent Events reader for the watch tests, over the
//! library's own event parser.

use std::time::Duration;
use std::time::Instant;

use anyhow::bail;
pub use kvserver::client::sse::SseEvent;
use kvserver::client::sse::SseParser;
use serde_json::Value;

/// The JSON data of an event.
pub fn json(ev: &SseEvent) -> Value {
    serde_json::from_str(&ev.data).unwrap_or(Value::Null)
}

/// Minimal SSE reader over a streaming HTTP response.
pub struct SseReader {
    resp: reqwest::Response,
    parser: SseParser,
    /// Where the server said the stream starts (`x-kv-watch-from`).
    pub from: Option<String>,
}

impl SseReader {
    /// Opens a stream; on a non-200 answer returns the status and JSON body instead.
    pub async fn open(
        http: &reqwest::Client,
        url: &str,
    ) -> anyhow::Result<Result<SseReader, (u16, Value)>> {
        Self::resume(http, url, None).await
    }

    /// [`Self::open`], resuming after `last_event_id` (sent as `Last-Event-ID`).
    pub async fn resume(
        http: &reqwest::Client,
        url: &str,
        last_event_id: Option<&str>,
    ) -> anyhow::Result<Result<SseReader, (u16, Value)>> {
        // A stream outlives the client's request timeout: this one request gets an
        // hour (reqwest lets a request's timeout replace the client's).
        let mut req = http.get(url).timeout(Duration::from_secs(3600));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.send().await?;
        if resp.status().as_u16() != 200 {
            let status = resp.status().as_u16();
            return Ok(Err((status, resp.json().await.unwrap_or(Value::Null))));
        }
        let from = resp
            .headers()
            .get(kvserver::model::WATCH_FROM)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Ok(Ok(SseReader {
            resp,
            parser: SseParser::default(),
            from,
        }))
    }

    /// The next event (comments skipped); `None` when the server closed the stream.
    pub async fn next(&mut self, timeout: Duration) -> anyhow::Result<Option<SseEvent>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(ev) = self.parser.next_event() {
                return Ok(Some(ev));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no SSE event within {timeout:?}");
            }
            match tokio::time::timeout(left, self.resp.chunk()).await {
                Err(_) => bail!("no SSE event within {timeout:?}"),
                Ok(Err(e)) => return Err(e.into()),
                Ok(Ok(None)) => return Ok(None),
                Ok(Ok(Some(bytes))) => self.parser.push(&bytes, 64 << 20)?,
            }
        }
    }
}
