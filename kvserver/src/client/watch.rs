//! [`Client::watch`]: a stream of changes that reconnects (to the next
//! endpoint when one fails) and resumes from the last revision it delivered,
//! without gaps or duplicates.

use std::collections::VecDeque;

use futures_util::Stream;

use super::Client;
use super::ClientError;
use super::decode;
use super::encode_key;
use crate::model::DroppedBody;
use crate::model::WatchEventBody;

impl Client {
    // ----- watch -----

    /// Streams changes of keys under `prefix` after `from_revision` (or from now).
    /// On a disconnect or a `dropped` event the stream reconnects (to the next endpoint
    /// when one fails) from the last revision it delivered; it ends with an error item
    /// when history was compacted (410) or the retries are exhausted.
    pub fn watch(
        &self,
        prefix: &str,
        from_revision: Option<u64>,
    ) -> impl Stream<Item = Result<WatchEventBody, ClientError>> + Send + 'static {
        use futures_util::StreamExt;
        self.watch_revisions(prefix, from_revision)
            .map(|r| r.map(|(ev, _)| ev))
    }

    /// [`Client::watch`], with each event saying whether it is the last of its
    /// revision (a transaction or prefix delete changes several keys in one): what a
    /// consumer needs to act on whole revisions only (continuous backup).
    pub fn watch_revisions(
        &self,
        prefix: &str,
        from_revision: Option<u64>,
    ) -> impl Stream<Item = Result<(WatchEventBody, bool), ClientError>> + Send + 'static {
        let state = WatchState {
            client: self.clone(),
            prefix: prefix.to_string(),
            from: from_revision,
            partial: None,
            skip: None,
            resp: None,
            buf: String::new(),
            pending: VecDeque::new(),
            failures: 0,
            done: false,
        };
        futures_util::stream::unfold(state, |mut st| async move {
            if st.done {
                return None;
            }
            let item = st.next().await;
            if item.is_err() {
                st.done = true;
            }
            Some((item, st))
        })
    }
}

struct WatchState {
    client: Client,
    prefix: String,
    /// Last revision whose events were all delivered (the resume point).
    from: Option<u64>,
    /// Events already delivered of the revision after `from` (a transaction or prefix
    /// delete spans several events of one revision).
    partial: Option<(u64, usize)>,
    /// After a reconnect: events of that revision to skip, already delivered.
    skip: Option<(u64, usize)>,
    resp: Option<(String, reqwest::Response)>,
    buf: String,
    /// Parsed events, each with whether it completes its revision.
    pending: VecDeque<(WatchEventBody, bool)>,
    failures: u32,
    done: bool,
}

impl WatchState {
    async fn connect(&mut self) -> Result<(), ClientError> {
        let endpoint = self.client.current();
        let mut url = format!(
            "{endpoint}/v1/watch?prefix={}",
            encode_key(&self.prefix).replace('/', "%2F")
        );
        if let Some(f) = self.from {
            url.push_str(&format!("&from_revision={f}"));
        }
        let req = self
            .client
            .inner
            .stream_http
            .get(&url)
            .header("accept", "text/event-stream");
        let resp = self
            .client
            .authorize(req)?
            .send()
            .await
            .map_err(|e| ClientError::transport(&endpoint, &e))?;
        if !resp.status().is_success() {
            return Err(decode::<serde_json::Value>(&endpoint, resp)
                .await
                .err()
                .unwrap_or(ClientError::Decode {
                    endpoint,
                    message: "unexpected success body".into(),
                }));
        }
        self.buf.clear();
        self.skip = self.partial;
        self.resp = Some((endpoint, resp));
        Ok(())
    }

    async fn next(&mut self) -> Result<(WatchEventBody, bool), ClientError> {
        loop {
            if let Some((ev, completes)) = self.pending.pop_front() {
                if completes {
                    self.from = Some(ev.revision);
                    self.partial = None;
                } else {
                    self.partial = match self.partial {
                        Some((r, n)) if r == ev.revision => Some((r, n + 1)),
                        _ => Some((ev.revision, 1)),
                    };
                }
                return Ok((ev, completes));
            }
            if self.resp.is_none() {
                match self.connect().await {
                    Ok(()) => {}
                    Err(e) if e.is_retryable() && self.failures < self.client.inner.attempts => {
                        self.failures += 1;
                        let ep = self.client.current();
                        self.client.rotate(&ep);
                        tokio::time::sleep(self.client.inner.backoff * self.failures).await;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let Some((endpoint, resp)) = self.resp.as_mut() else {
                continue;
            };
            match resp.chunk().await {
                Ok(Some(bytes)) => {
                    self.failures = 0;
                    self.buf.push_str(&String::from_utf8_lossy(&bytes));
                    let endpoint = endpoint.clone();
                    self.parse(&endpoint)?;
                }
                Ok(None) | Err(_) => {
                    // Disconnected: resume (elsewhere if this endpoint keeps failing).
                    let ep = endpoint.clone();
                    self.resp = None;
                    self.failures += 1;
                    if self.failures > 1 {
                        self.client.rotate(&ep);
                    }
                    if self.failures > self.client.inner.attempts {
                        return Err(ClientError::Transport {
                            endpoint: ep,
                            message: "watch stream keeps failing".into(),
                            connect: false,
                        });
                    }
                }
            }
        }
    }

    /// Moves complete SSE events from the buffer to `pending`; `dropped` forces a reconnect.
    fn parse(&mut self, endpoint: &str) -> Result<(), ClientError> {
        while let Some(end) = self.buf.find("\n\n") {
            let block: String = self.buf.drain(..end + 2).collect();
            let mut event = "message";
            let mut data = String::new();
            let mut completes = false;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = if v.trim() == "dropped" {
                        "dropped"
                    } else {
                        "change"
                    };
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                } else if line.starts_with("id:") {
                    // The server sets the id on the last event of each revision.
                    completes = true;
                }
            }
            match event {
                "change" => {
                    let ev: WatchEventBody =
                        serde_json::from_str(&data).map_err(|e| ClientError::Decode {
                            endpoint: endpoint.into(),
                            message: e.to_string(),
                        })?;
                    if self.from.is_some_and(|f| ev.revision <= f) {
                        continue;
                    }
                    // Part of this revision was delivered before a reconnect: skip that part.
                    if let Some((r, n)) = self.skip
                        && r == ev.revision
                        && n > 0
                    {
                        self.skip = Some((r, n - 1));
                        continue;
                    }
                    self.pending.push_back((ev, completes));
                }
                "dropped" => {
                    if let Ok(d) = serde_json::from_str::<DroppedBody>(&data) {
                        tracing::debug!(reason = d.reason, "watch dropped by the server; resuming");
                    }
                    self.resp = None;
                    return Ok(());
                }
                _ => {}
            }
        }
        Ok(())
    }
}
