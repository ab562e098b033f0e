//! [`Client::watch`]: a stream of changes that reconnects (to the next
//! endpoint when one fails) and resumes from the last revision it delivered,
//! without gaps or duplicates. In a partitioned cluster the stream merges every
//! partition's changes and the position is one revision per partition
//! ([`WatchPosition`]); the stream tracks it the same way.

use std::collections::VecDeque;

use futures_util::Stream;

use super::Client;
use super::ClientError;
use super::decode;
use super::encode_key;
use super::sse::SseParser;
use crate::model::DroppedBody;
use crate::model::WATCH_FROM;
use crate::model::WatchEventBody;
use crate::model::WatchPosition;

/// What a relayed or received stream may hold unparsed: an event is at most a
/// key and two values, JSON-escaped.
const MAX_EVENT_BYTES: usize = 512 << 20;

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
        self.watch_stream(prefix, from_revision, None)
    }

    /// [`Client::watch`] of a partitioned cluster, starting each partition after
    /// its revision in `from` (the id of an event received before, or a
    /// `resume_from_revisions`); partitions it does not name start now.
    pub fn watch_from_position(
        &self,
        prefix: &str,
        from: WatchPosition,
    ) -> impl Stream<Item = Result<WatchEventBody, ClientError>> + Send + 'static {
        use futures_util::StreamExt;
        self.watch_stream(prefix, None, Some(from))
            .map(|r| r.map(|(ev, _)| ev))
    }

    fn watch_stream(
        &self,
        prefix: &str,
        from_revision: Option<u64>,
        position: Option<WatchPosition>,
    ) -> impl Stream<Item = Result<(WatchEventBody, bool), ClientError>> + Send + 'static {
        let state = WatchState {
            client: self.clone(),
            prefix: prefix.to_string(),
            from: from_revision,
            position,
            partial: None,
            skip: None,
            resp: None,
            sse: SseParser::default(),
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
    /// A partitioned cluster's: the last revision of each partition whose events
    /// were all delivered (`None` until the server said it is partitioned).
    position: Option<WatchPosition>,
    /// Events already delivered of a revision (of a partition) not yet complete
    /// (a transaction or prefix delete spans several events of one revision).
    partial: Option<(Option<u32>, u64, usize)>,
    /// After a reconnect: events of that revision to skip, already delivered.
    skip: Option<(Option<u32>, u64, usize)>,
    resp: Option<(String, reqwest::Response)>,
    sse: SseParser,
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
        match (&self.position, self.from) {
            (Some(p), _) => url.push_str(&format!("&from_revisions={p}")),
            (None, Some(f)) => url.push_str(&format!("&from_revision={f}")),
            (None, None) => {}
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
        // Where the server started: resuming from there after a disconnect
        // misses nothing, even before the first event arrived.
        let start = resp
            .headers()
            .get(WATCH_FROM)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        match start {
            Some(s) if s.contains(':') => {
                let start = WatchPosition::parse(&s).map_err(|e| ClientError::Decode {
                    endpoint: endpoint.clone(),
                    message: format!("{WATCH_FROM}: {e}"),
                })?;
                let mut p = self.position.take().unwrap_or_default();
                for (part, rev) in start.0 {
                    p.0.entry(part).or_insert(rev);
                }
                self.position = Some(p);
            }
            Some(s) if self.from.is_none() => self.from = s.parse().ok(),
            _ => {}
        }
        self.sse.clear();
        self.skip = self.partial;
        self.resp = Some((endpoint, resp));
        Ok(())
    }

    /// The last revision of the event's partition delivered whole.
    fn delivered(&self, ev: &WatchEventBody) -> Option<u64> {
        match (ev.partition, &self.position) {
            (Some(p), Some(pos)) => pos.0.get(&p).copied(),
            (Some(_), None) => None,
            (None, _) => self.from,
        }
    }

    async fn next(&mut self) -> Result<(WatchEventBody, bool), ClientError> {
        loop {
            if let Some((ev, completes)) = self.pending.pop_front() {
                if completes {
                    match ev.partition {
                        Some(p) => {
                            self.position
                                .get_or_insert_with(WatchPosition::default)
                                .0
                                .insert(p, ev.revision);
                        }
                        None => self.from = Some(ev.revision),
                    }
                    self.partial = None;
                } else {
                    self.partial = match self.partial {
                        Some((p, r, n)) if p == ev.partition && r == ev.revision => {
                            Some((p, r, n + 1))
                        }
                        _ => Some((ev.partition, ev.revision, 1)),
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
                    let endpoint = endpoint.clone();
                    self.sse
                        .push(&bytes, MAX_EVENT_BYTES)
                        .map_err(|e| ClientError::Decode {
                            endpoint: endpoint.clone(),
                            message: e.to_string(),
                        })?;
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
        while let Some(sse) = self.sse.next_event() {
            // The server sets the id on the last event of each revision.
            let completes = sse.id.is_some();
            match sse.event.as_str() {
                "dropped" => {
                    if let Ok(d) = serde_json::from_str::<DroppedBody>(&sse.data) {
                        tracing::debug!(reason = d.reason, "watch dropped by the server; resuming");
                    }
                    self.resp = None;
                    return Ok(());
                }
                "put" | "delete" => {
                    let ev: WatchEventBody =
                        serde_json::from_str(&sse.data).map_err(|e| ClientError::Decode {
                            endpoint: endpoint.into(),
                            message: e.to_string(),
                        })?;
                    if self.delivered(&ev).is_some_and(|f| ev.revision <= f) {
                        continue;
                    }
                    // Part of this revision was delivered before a reconnect: skip that part.
                    if let Some((p, r, n)) = self.skip
                        && p == ev.partition
                        && r == ev.revision
                        && n > 0
                    {
                        self.skip = Some((p, r, n - 1));
                        continue;
                    }
                    self.pending.push_back((ev, completes));
                }
                _ => {}
            }
        }
        Ok(())
    }
}
