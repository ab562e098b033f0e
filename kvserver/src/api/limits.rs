//! Request-level limits of the client port (`limits.*`, docs/security.md):
//! how many requests run at once and for how long, and how many watch streams
//! a node and a principal may hold. Over a limit the answer comes at once — 503
//! `overloaded` or 429 `too_many_watchers`, with `Retry-After` — never a queue.
//! Probes (`/healthz`, `/readyz`) and `/metrics` pass every gate: an overloaded
//! node must still be seen as alive and measurable.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::MatchedPath;
use axum::extract::Request;
use axum::extract::State;
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::response::Response;
use tokio::sync::Semaphore;

use super::ApiError;
use super::AppState;
use super::NodeState;
use crate::config::LimitsConfig;

/// The node's request and watcher counts.
pub struct Gates {
    requests: Arc<Semaphore>,
    pub watchers: Watchers,
    /// Bytes of events buffered for all watchers (`limits.watch_buffer_total_bytes`).
    pub watch_bytes: Arc<std::sync::atomic::AtomicUsize>,
}

impl Gates {
    pub fn new(limits: &LimitsConfig, metrics: &crate::metrics::Metrics) -> Self {
        Self {
            requests: Arc::new(Semaphore::new(limits.max_concurrent_requests)),
            watchers: Watchers {
                max: limits.max_watchers,
                per_principal: limits.max_watchers_per_principal,
                open: Arc::new(Mutex::new(Open::default())),
                count: Arc::default(),
                gauge: metrics.watch_streams.clone(),
            },
            watch_bytes: Arc::default(),
        }
    }
}

/// The middleware: the concurrency limit and the request timeout.
pub(super) async fn limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str());
    match route {
        Some("/healthz" | "/readyz" | "/metrics") => return next.run(req).await,
        // A stream lives as long as the client wants: watchers have their own caps.
        Some("/v1/watch") => return next.run(req).await,
        // Takes as long as the data needs; one at a time per node (`api::backup`).
        Some("/v1/backup") => return next.run(req).await,
        _ => {}
    }
    let Ok(_permit) = state.gates.requests.clone().try_acquire_owned() else {
        state
            .metrics
            .api_limited
            .with_label_values(&["concurrency"])
            .inc();
        // Not drained: an overloaded node reads no more than it must.
        let mut resp = ApiError::Unavailable {
            code: "overloaded",
            message: format!(
                "this node is serving its limit of {} requests at once; retry shortly",
                state.config.limits.max_concurrent_requests
            ),
            retry: true,
        }
        .into_response();
        resp.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
        return resp;
    };
    let timeout = Duration::from_millis(state.config.limits.request_timeout_ms);
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            state
                .metrics
                .api_limited
                .with_label_values(&["request_timeout"])
                .inc();
            ApiError::Unavailable {
                code: "request_timeout",
                message: format!(
                    "the request took longer than {timeout:?} (limits.request_timeout_ms); a write's outcome is unknown"
                ),
                retry: false,
            }
            .into_response()
        }
    }
}

#[derive(Default)]
struct Open {
    total: usize,
    by_principal: HashMap<String, usize>,
}

/// Watch streams open on this node, in all and by principal.
pub struct Watchers {
    max: usize,
    per_principal: usize,
    open: Arc<Mutex<Open>>,
    /// `open.total`, readable without the lock.
    count: Arc<AtomicUsize>,
    gauge: prometheus::IntGauge,
}

impl Watchers {
    /// The count of open streams, kept current.
    pub fn count(&self) -> Arc<AtomicUsize> {
        self.count.clone()
    }

    fn lock(open: &Mutex<Open>) -> std::sync::MutexGuard<'_, Open> {
        open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for one more watch stream of `principal`, or why not.
    pub fn acquire(&self, state: &NodeState, principal: &str) -> Result<WatchSlot, ApiError> {
        let mut open = Self::lock(&self.open);
        let mine = open.by_principal.get(principal).copied().unwrap_or(0);
        let refused = if open.total >= self.max {
            Some(ApiError::Unavailable {
                code: "overloaded",
                message: format!(
                    "this node serves its limit of {} watch streams; retry shortly or watch on another node",
                    self.max
                ),
                retry: true,
            })
        } else if mine >= self.per_principal {
            Some(ApiError::TooMany {
                code: "too_many_watchers",
                message: format!(
                    "{principal} holds its limit of {} watch streams on this node; close one first",
                    self.per_principal
                ),
            })
        } else {
            None
        };
        if let Some(e) = refused {
            state
                .metrics
                .api_limited
                .with_label_values(&["watchers"])
                .inc();
            return Err(e);
        }
        open.total += 1;
        *open.by_principal.entry(principal.to_string()).or_default() += 1;
        self.gauge.set(open.total as i64);
        self.count.store(open.total, Ordering::Relaxed);
        Ok(WatchSlot {
            open: self.open.clone(),
            principal: principal.to_string(),
            count: self.count.clone(),
            gauge: self.gauge.clone(),
        })
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        Self::lock(&self.open).total
    }
}

/// One open watch stream; released when dropped.
pub struct WatchSlot {
    open: Arc<Mutex<Open>>,
    principal: String,
    count: Arc<AtomicUsize>,
    gauge: prometheus::IntGauge,
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut open = Watchers::lock(&self.open);
        open.total = open.total.saturating_sub(1);
        self.gauge.set(open.total as i64);
        self.count.store(open.total, Ordering::Relaxed);
        if let Some(n) = open.by_principal.get_mut(&self.principal) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.by_principal.remove(&self.principal);
            }
        }
    }
}
