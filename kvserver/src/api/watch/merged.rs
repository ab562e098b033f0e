//! A watch of a partitioned cluster: one stream merging the changes of every
//! partition it spans (all, `partitions=`, `partition=`, or the one `key=` is
//! in). Each event names its partition and revision; there is no order across
//! partitions, so the stream's SSE id is its position, the last revision of
//! each partition (`p:rev,…`), and a client resuming with it (as
//! `Last-Event-ID` or `from_revisions`) gets every partition from exactly there.
//!
//! Where the parts come from: a partition this node hosts (as a voter) is fed
//! from its own group (`super::local`); the others are relayed from nodes that
//! host them, one stream per node covering all its partitions the watch needs
//! (`partitions=…`, marked `x-kv-routed-by`, with the client's credential,
//! which that node authenticates and authorizes again). So a merged watch
//! holds one watcher slot on this node and one on each node it relays from,
//! never one per partition, and every part sends into one bounded buffer.
//!
//! When a part cannot go on (its replica moved away, its node stopped or
//! installed a snapshot), the part is opened again from the stream's position
//! on another host, so a watch rides through rebalancing and pod restarts
//! without gap or duplicate; only history compacted past the position, a
//! watcher too slow for its buffer, or parts that keep failing end the stream
//! with `event: dropped` and the position to resume from.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use axum::response::Response;
use tokio::sync::broadcast;
use tokio::task::JoinSet;

use super::local;
use super::local::Ended;
use super::local::Source;
use super::plan::Spec;
use super::plan::plan;
use super::plan::spanned;
use super::plan::start;
use super::sink::Filter;
use super::sink::Ids;
use super::sink::Sink;
use super::stream_response;
use crate::api::ApiError;
use crate::api::AppState;
use crate::api::Raw;
use crate::api::limits::WatchSlot;
use crate::client::sse::SseParser;
use crate::command::NodeId;
use crate::group::Group;
use crate::model::DroppedBody;
use crate::model::WATCH_FROM;
use crate::model::WatchEventBody;
use crate::model::WatchPosition;
use crate::model::WatchQuery;
use crate::placement::PartitionId;
use crate::placement::map::PlacementMap;
use crate::route::target::ROUTED_BY;
use crate::store::watch::Feed;

/// Parts opened again in a row, each ending within [`STEADY`], before the
/// watch gives up and drops.
const MAX_REOPENS: u32 = 8;
/// A part that ran this long before ending resets the count of re-opens.
const STEADY: Duration = Duration::from_secs(30);
/// The wait before a part is opened again, times the re-opens in a row.
const REOPEN_BACKOFF: Duration = Duration::from_millis(200);

/// What the watch asked for, kept to open parts again.
struct Ask {
    prefix: Option<String>,
    key: Option<String>,
    prev_kv: Option<bool>,
    /// The client's request: its credential goes along to other nodes.
    raw: Raw,
    /// Another node relayed this watch here: every part must be local, and a
    /// part that ends ends the stream (the relaying node resumes it elsewhere).
    routed: bool,
}

/// A local part already subscribed: its feed and the revisions it starts
/// after and reads history up to.
type LocalStart = (broadcast::Receiver<Feed>, u64, u64);

/// A part opened by the handler before the stream was answered (so a
/// refusal is the client's answer), or opened by the part itself later.
enum Opened {
    Local(Option<LocalStart>),
    Remote(Option<reqwest::Response>),
}

/// How a part ended.
struct PartEnd {
    node: NodeId,
    partitions: Vec<PartitionId>,
    ended: Ended,
    ran: Duration,
}

/// `GET /v1/watch` on a partitioned cluster (see the module docs): opens every
/// part, so a refusal (410 for compacted history, 403, 429) is the client's
/// answer, then streams.
pub(super) async fn open(
    state: AppState,
    raw: Raw,
    q: &WatchQuery,
    last_event_id: Option<String>,
    filter: Arc<Filter>,
    map: Arc<PlacementMap>,
) -> Result<Response, ApiError> {
    let routed = raw.headers.contains_key(ROUTED_BY);
    let parts = spanned(q, &map)?;
    let mut position = start(q, last_event_id, &parts)?;
    let slot = state.gates.watchers.acquire(&state, &raw.principal.name)?;
    let specs = plan(&state, &map, &parts, routed, &BTreeMap::new())?;
    let ask = Arc::new(Ask {
        prefix: q.prefix.clone(),
        key: q.key.clone(),
        prev_kv: q.prev_kv,
        raw,
        routed,
    });
    let mut opened = Vec::new();
    for spec in specs {
        match spec {
            Spec::Local(p, g) => {
                let from = position.0.get(&p).copied();
                let s = subscribe(&g, p, from).await?;
                position.0.insert(p, s.1);
                opened.push((Spec::Local(p, g), Opened::Local(Some(s))));
            }
            Spec::Remote(n, ps) => {
                let resp = match open_remote(&state, &ask, n, &ps, &position).await {
                    Ok(r) => r,
                    Err(Refused::Api(e)) => return Err(e),
                    Err(Refused::Answer(resp)) => {
                        return crate::route::leader::into_response(resp, n).await;
                    }
                    Err(Refused::Retry(m)) => {
                        return Err(ApiError::Unavailable {
                            code: "node_unreachable",
                            message: m,
                            retry: true,
                        });
                    }
                };
                if let Some(from) = resp
                    .headers()
                    .get(WATCH_FROM)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| WatchPosition::parse(v).ok())
                {
                    for p in &ps {
                        if let Some(r) = from.0.get(p) {
                            position.0.entry(*p).or_insert(*r);
                        }
                    }
                }
                opened.push((Spec::Remote(n, ps), Opened::Remote(Some(resp))));
            }
        }
    }
    let from = position.to_string();
    let (sink, outbox) = super::sink::channel(&state, Ids::Position(Mutex::new(position)));
    tokio::spawn(supervise(state, ask, filter, Arc::new(sink), opened, slot));
    Ok(stream_response(outbox, &from))
}

/// Why a part could not be opened.
enum Refused {
    /// This node's error.
    Api(ApiError),
    /// The answer of the node asked (not a stream).
    Answer(reqwest::Response),
    /// The node could not be asked.
    Retry(String),
}

/// Subscribes to hosted partition `p`'s changes after `from` (default: now).
async fn subscribe(g: &Group, p: PartitionId, from: Option<u64>) -> Result<LocalStart, ApiError> {
    // Subscribe before reading the current revision: nothing applied after it can be missed.
    let feed = g.store.subscribe();
    let now = g.store.revision();
    let from = from.unwrap_or(now);
    let first = g.store.history(from, from, 0).await?;
    if from < first.compacted {
        tracing::debug!(partition = p, from, "watch position compacted");
        return Err(ApiError::Gone {
            requested: from,
            oldest: first.compacted + 1,
            revision: now,
        });
    }
    Ok((feed, from, now))
}

/// Opens partitions `ps` on node `n` after `position`.
async fn open_remote(
    state: &AppState,
    ask: &Ask,
    n: NodeId,
    ps: &[PartitionId],
    position: &WatchPosition,
) -> Result<reqwest::Response, Refused> {
    let list: Vec<String> = ps.iter().map(|p| p.to_string()).collect();
    let sub = WatchQuery {
        prefix: ask.prefix.clone(),
        key: ask.key.clone(),
        prev_kv: ask.prev_kv,
        partitions: Some(list.join(",")),
        ..WatchQuery::default()
    };
    let from = WatchPosition(
        ps.iter()
            .filter_map(|p| position.0.get(p).map(|r| (*p, *r)))
            .collect(),
    );
    let from = (!from.0.is_empty()).then(|| from.to_string());
    let path = format!("/v1/watch{}", crate::client::query(&sub));
    match crate::route::leader::relay_stream(state, &ask.raw, n, &path, from).await {
        Ok(resp) if resp.status().is_success() => Ok(resp),
        Ok(resp) => Err(Refused::Answer(resp)),
        Err(e @ ApiError::NoLeader { .. }) => Err(Refused::Api(e)),
        Err(e) => Err(Refused::Retry(e.to_string())),
    }
}

/// Runs the parts, opens again the ones that end while the watch goes on, and
/// ends the stream when it cannot.
async fn supervise(
    state: AppState,
    ask: Arc<Ask>,
    filter: Arc<Filter>,
    sink: Arc<Sink>,
    first: Vec<(Spec, Opened)>,
    slot: WatchSlot,
) {
    // The slot is held while the stream lasts: one watcher, however many parts.
    let _slot = slot;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut shutdown = state.shutdown.clone();
    let mut parts = JoinSet::new();
    let spawn = |parts: &mut JoinSet<PartEnd>, spec: Spec, opened: Opened| {
        parts.spawn(run(
            state.clone(),
            ask.clone(),
            filter.clone(),
            sink.clone(),
            spec,
            opened,
            stop.clone(),
        ));
    };
    for (spec, opened) in first {
        spawn(&mut parts, spec, opened);
    }
    let mut reopens = 0u32;
    let reason: String = loop {
        let end = tokio::select! {
            _ = shutdown.wait_for(|v| *v) => break "server shutting down".into(),
            _ = sink.closed() => break String::new(),
            end = parts.join_next() => end,
        };
        let end = match end {
            Some(Ok(end)) => end,
            Some(Err(e)) => break format!("a part of the watch failed: {e}"),
            None => break "no part of the watch is left".into(),
        };
        let reason = match end.ended {
            Ended::Gone => break String::new(),
            Ended::Stop(r) => break r,
            Ended::Retry(r) if ask.routed => break r,
            Ended::Retry(r) => r,
        };
        if end.ran >= STEADY {
            reopens = 0;
        }
        reopens += 1;
        if reopens > MAX_REOPENS {
            break format!(
                "partitions {:?} could not be resumed {MAX_REOPENS} times in a row: {reason}",
                end.partitions
            );
        }
        tracing::debug!(partitions = ?end.partitions, node = end.node, reason, "resuming part of a watch");
        let wait = tokio::time::sleep(REOPEN_BACKOFF * reopens);
        tokio::select! {
            _ = wait => {}
            _ = sink.closed() => break String::new(),
            _ = shutdown.wait_for(|v| *v) => break "server shutting down".into(),
        }
        let avoid: BTreeMap<PartitionId, NodeId> =
            end.partitions.iter().map(|p| (*p, end.node)).collect();
        match plan(
            &state,
            &state.store.placement(),
            &end.partitions,
            false,
            &avoid,
        ) {
            Ok(specs) => {
                for spec in specs {
                    let opened = match spec {
                        Spec::Local(..) => Opened::Local(None),
                        Spec::Remote(..) => Opened::Remote(None),
                    };
                    spawn(&mut parts, spec, opened);
                }
            }
            // Not placed right now (forming, no host known): tried again after the
            // next back-off, within the same count of re-opens.
            Err(e) => {
                let msg = e.to_string();
                let partitions = end.partitions.clone();
                let node = end.node;
                parts.spawn(async move {
                    PartEnd {
                        node,
                        partitions,
                        ended: Ended::Retry(msg),
                        ran: Duration::ZERO,
                    }
                });
            }
        }
    };
    let _ = stop_tx.send(true);
    parts.abort_all();
    if !reason.is_empty() {
        sink.dropped(reason, 0);
    }
}

/// One part: opens it if the handler did not, and feeds the sink until it ends.
async fn run(
    state: AppState,
    ask: Arc<Ask>,
    filter: Arc<Filter>,
    sink: Arc<Sink>,
    spec: Spec,
    opened: Opened,
    stop: tokio::sync::watch::Receiver<bool>,
) -> PartEnd {
    let began = Instant::now();
    let (node, partitions, ended) = match (spec, opened) {
        (Spec::Local(p, g), opened) => {
            let start = match opened {
                Opened::Local(Some(s)) => Ok(s),
                _ => {
                    let from = sink.position().and_then(|pos| pos.0.get(&p).copied());
                    subscribe(&g, p, from).await.map_err(Refused::Api)
                }
            };
            let ended = match start {
                Ok((feed, from, upto)) => {
                    let source = Source {
                        store: g.store.clone(),
                        partition: Some(p),
                        group: Some(g),
                    };
                    local::produce(
                        state.clone(),
                        source,
                        feed,
                        filter,
                        (from, upto),
                        sink,
                        stop,
                    )
                    .await
                    .0
                }
                Err(r) => refused(r, state.id),
            };
            (state.id, vec![p], ended)
        }
        (Spec::Remote(n, ps), opened) => {
            let resp = match opened {
                Opened::Remote(Some(r)) => Ok(r),
                _ => {
                    let position = sink.position().unwrap_or_default();
                    open_remote(&state, &ask, n, &ps, &position).await
                }
            };
            let ended = match resp {
                Ok(resp) => relay(&state, n, &ps, resp, &sink).await,
                Err(r) => refused(r, n),
            };
            (n, ps, ended)
        }
    };
    PartEnd {
        node,
        partitions,
        ended,
        ran: began.elapsed(),
    }
}

/// How a part that could not be opened ends: history compacted past the
/// position, or a refusal of the caller, ends the watch; anything else is
/// tried again.
fn refused(r: Refused, node: NodeId) -> Ended {
    match r {
        Refused::Api(e @ (ApiError::Gone { .. } | ApiError::Forbidden(_))) => {
            Ended::Stop(format!("resuming on node {node}: {e}"))
        }
        Refused::Api(e) => Ended::Retry(e.to_string()),
        Refused::Retry(m) => Ended::Retry(m),
        Refused::Answer(resp) => {
            let s = resp.status();
            let msg = format!("node {node} answered {s} to resuming the watch");
            if s == reqwest::StatusCode::GONE
                || s == reqwest::StatusCode::FORBIDDEN
                || s == reqwest::StatusCode::UNAUTHORIZED
                || s == reqwest::StatusCode::BAD_REQUEST
            {
                Ended::Stop(msg)
            } else {
                Ended::Retry(msg)
            }
        }
    }
}

/// Feeds the sink with the events node `n` streams for partitions `ps`, one
/// whole revision at a time (the last event of each carries an id): a
/// revision cut off by a disconnect is never half delivered, and is read
/// again from the position when the part is opened again.
async fn relay(
    state: &AppState,
    n: NodeId,
    ps: &[PartitionId],
    mut resp: reqwest::Response,
    sink: &Sink,
) -> Ended {
    // An event is a key and two values, JSON-escaped at most six times over.
    let max = 13 * state.config.max_value_bytes + (64 << 10);
    let mut parser = SseParser::default();
    let mut pending: Vec<WatchEventBody> = Vec::new();
    loop {
        let chunk = tokio::select! {
            _ = sink.closed() => return Ended::Gone,
            c = resp.chunk() => c,
        };
        let bytes = match chunk {
            Ok(Some(b)) => b,
            Ok(None) => return Ended::Retry(format!("node {n} ended the stream")),
            Err(e) => return Ended::Retry(format!("node {n}: {e}")),
        };
        if let Err(e) = parser.push(&bytes, max) {
            return Ended::Retry(format!("node {n}: {e}"));
        }
        while let Some(ev) = parser.next_event() {
            match ev.event.as_str() {
                "put" | "delete" => {
                    let body: WatchEventBody = match serde_json::from_str(&ev.data) {
                        Ok(b) => b,
                        Err(e) => {
                            return Ended::Retry(format!(
                                "node {n} sent an event that does not decode: {e}"
                            ));
                        }
                    };
                    let Some(p) = body.partition.filter(|p| ps.contains(p)) else {
                        return Ended::Retry(format!(
                            "node {n} sent an event of partition {:?}, not asked for",
                            body.partition
                        ));
                    };
                    if pending.first().is_some_and(|f| {
                        f.partition != body.partition || f.revision != body.revision
                    }) {
                        return Ended::Retry(format!(
                            "node {n} interleaved the events of two revisions"
                        ));
                    }
                    let revision = body.revision;
                    pending.push(body);
                    if ev.id.is_some()
                        && let Err(r) = sink.send(Some(p), revision, std::mem::take(&mut pending))
                    {
                        return if r.is_empty() {
                            Ended::Gone
                        } else {
                            Ended::Stop(r.to_string())
                        };
                    }
                }
                "dropped" => {
                    let reason = serde_json::from_str::<DroppedBody>(&ev.data)
                        .map(|d| d.reason)
                        .unwrap_or_else(|_| ev.data.clone());
                    return Ended::Retry(format!("node {n} dropped its part: {reason}"));
                }
                _ => {}
            }
        }
    }
}
