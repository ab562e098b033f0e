//! Prometheus metrics of one node, in a registry of its own (not the global
//! one) so several nodes can live in one process, as they do in tests.
//!
//! HTTP and storage metrics are recorded as events happen; Raft gauges are
//! refreshed from openraft's metrics at scrape time, which keeps them exact
//! without a background task.

use prometheus::Encoder;
use prometheus::HistogramOpts;
use prometheus::HistogramVec;
use prometheus::IntCounterVec;
use prometheus::IntGauge;
use prometheus::IntGaugeVec;
use prometheus::Opts;
use prometheus::Registry;
use prometheus::TextEncoder;

/// Buckets of the storage sync histograms: from 100 µs (a batch on a fast disk) up.
const SYNC_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
];

/// All metrics of one node.
pub struct Metrics {
    pub registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub storage_sync_seconds: prometheus::Histogram,
    /// What the Raft log records (its batches' write + sync, bytes, truncations, segments).
    pub raft_log: crate::raftlog::LogMetrics,
    pub backup_seconds: prometheus::Histogram,
    pub raft_term: IntGauge,
    pub raft_leader: IntGauge,
    pub raft_is_leader: IntGauge,
    pub raft_last_log_index: IntGauge,
    pub raft_committed_index: IntGauge,
    pub raft_applied_index: IntGauge,
    pub raft_snapshot_index: IntGauge,
    pub raft_replication_lag: IntGaugeVec,
    /// Per hosted partition (issue 21): 1 where this node leads it.
    pub partition_is_leader: IntGaugeVec,
    /// Per hosted partition: the leader's node id as this node knows it (-1: none).
    pub partition_leader: IntGaugeVec,
    /// Per hosted partition: the last log index this node applied.
    pub partition_applied_index: IntGaugeVec,
    /// Per hosted partition: the partition's revision on this node.
    pub partition_revision: IntGaugeVec,
    /// Per partition this node leads: entries each follower is behind.
    pub partition_replication_lag: IntGaugeVec,
    /// Per hosted partition: its keys on this node, as last counted.
    pub partition_keys: IntGaugeVec,
    /// Per hosted partition: the bytes of its keys and values, as last counted.
    pub partition_bytes: IntGaugeVec,
    pub kv_revision: IntGauge,
    pub peer_refused: IntCounterVec,
    /// Row cache lookups by `result` (`hit`, `miss`), counted by the cache itself.
    pub row_cache_lookups: IntCounterVec,
    pub row_cache_entries: IntGauge,
    /// Writes this node handed to the leader, by `via` (`peer`, `http`).
    pub forwarded_writes: IntCounterVec,
    pub row_cache_bytes: IntGauge,
    /// Unix seconds at which the certificate a port serves expires, by `port` (`peer`, `client`).
    pub tls_cert_not_after: IntGaugeVec,
    /// 1 while the newest certificate files of a port failed to load (the old ones serve on).
    pub tls_reload_failing: IntGaugeVec,
    /// Certificate reloads by `port` and `result` (`ok`, `error`).
    pub tls_reloads: IntCounterVec,
    /// Requests refused by authentication or authorization, by `reason`
    /// (`unauthenticated`, `forbidden`).
    pub auth_refused: IntCounterVec,
    /// Token file reloads by `result` (`ok`, `error`).
    pub auth_reloads: IntCounterVec,
    /// 1 while the newest token files failed to load (the previous tokens stay in force).
    pub auth_reload_failing: IntGauge,
    /// Bearer tokens in force.
    pub auth_tokens: IntGauge,
    /// Open connections on the client port.
    pub api_connections: IntGauge,
    /// Watch streams open on this node.
    pub watch_streams: IntGauge,
    /// Connections and requests turned away by a limit, by `limit`
    /// (`connections`, `concurrency`, `request_timeout`, `watchers`, `response_bytes`).
    pub api_limited: IntCounterVec,
}

fn gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, prometheus::Error> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
    let g = IntGauge::new(name, help)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let http_requests = counter_vec(
            &registry,
            "kv_http_requests_total",
            "HTTP requests by route, method and status",
            &["route", "method", "status"],
        )?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "kv_http_request_duration_seconds",
                "HTTP request latency by route and method",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["route", "method"],
        )?;
        registry.register(Box::new(http_duration.clone()))?;
        let storage_sync_seconds = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "kv_storage_sync_seconds",
                "Duration of database commits: the batched persistence of applied entries, and metadata writes",
            )
            .buckets(SYNC_BUCKETS.to_vec()),
        )?;
        registry.register(Box::new(storage_sync_seconds.clone()))?;
        let log_sync_seconds = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "kv_raft_log_sync_seconds",
                "Duration of one Raft log batch's write and fdatasync (one per batch, covering every entry and group in it)",
            )
            .buckets(SYNC_BUCKETS.to_vec()),
        )?;
        registry.register(Box::new(log_sync_seconds.clone()))?;
        let log_written_bytes = prometheus::IntCounter::new(
            "kv_raft_log_written_bytes_total",
            "Bytes written to Raft log segments (frames and segment headers)",
        )?;
        registry.register(Box::new(log_written_bytes.clone()))?;
        let log_truncations = prometheus::IntCounter::new(
            "kv_raft_log_truncations_total",
            "Raft log suffixes dropped: entries of a deposed leader that the new leader replaced",
        )?;
        registry.register(Box::new(log_truncations.clone()))?;
        let raft_log = crate::raftlog::LogMetrics {
            sync_seconds: log_sync_seconds,
            written_bytes: log_written_bytes,
            truncations: log_truncations,
            segments: gauge(
                &registry,
                "kv_raft_log_segments",
                "Raft log segment files on disk",
            )?,
        };
        let backup_seconds = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "kv_backup_seconds",
                "Time to take a full backup on this node (GET /v1/backup), before streaming it",
            )
            .buckets(vec![
                0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            ]),
        )?;
        registry.register(Box::new(backup_seconds.clone()))?;
        let raft_replication_lag = IntGaugeVec::new(
            Opts::new(
                "kv_raft_replication_lag_entries",
                "Entries a follower is behind the leader's last log (leader only)",
            ),
            &["follower"],
        )?;
        registry.register(Box::new(raft_replication_lag.clone()))?;
        let partition_is_leader = gauge_vec(
            &registry,
            "kv_partition_is_leader",
            "1 where this node leads the partition (partitions it hosts)",
            &["partition"],
        )?;
        let partition_leader = gauge_vec(
            &registry,
            "kv_partition_leader",
            "The partition's leader as this node knows it (-1: none), per partition it hosts",
            &["partition"],
        )?;
        let partition_applied_index = gauge_vec(
            &registry,
            "kv_partition_applied_index",
            "Last log index this node applied, per partition it hosts",
            &["partition"],
        )?;
        let partition_revision = gauge_vec(
            &registry,
            "kv_partition_revision",
            "The partition's revision on this node, per partition it hosts",
            &["partition"],
        )?;
        let partition_keys = gauge_vec(
            &registry,
            "kv_partition_keys",
            "Keys of the partition on this node (counted every 10 s), per partition it hosts",
            &["partition"],
        )?;
        let partition_bytes = gauge_vec(
            &registry,
            "kv_partition_bytes",
            "Bytes of the partition's keys and values on this node (counted every 10 s), per partition it hosts",
            &["partition"],
        )?;
        let partition_replication_lag = gauge_vec(
            &registry,
            "kv_partition_replication_lag_entries",
            "Entries a follower is behind, per partition this node leads",
            &["partition", "follower"],
        )?;
        let peer_refused = counter_vec(
            &registry,
            "kv_peer_refused_total",
            "Peer connections, requests or votes refused, by reason (tls, identity, not_member, unverified, hello, cluster_id, node_id, lost_data, empty_vote, catching_up)",
            &["reason"],
        )?;
        let row_cache_lookups = counter_vec(
            &registry,
            "kv_row_cache_lookups_total",
            "Key lookups in the row cache by reads and applies, by result (hit, miss)",
            &["result"],
        )?;
        let forwarded_writes = counter_vec(
            &registry,
            "kv_forwarded_writes_total",
            "Client writes this node handed to the leader, by path (peer: Raft peer port, http: replayed request)",
            &["via"],
        )?;
        let tls_cert_not_after = gauge_vec(
            &registry,
            "kv_tls_cert_not_after_seconds",
            "Unix time at which the certificate served on a port expires",
            &["port"],
        )?;
        let tls_reload_failing = gauge_vec(
            &registry,
            "kv_tls_reload_failing",
            "1 while the newest certificate files of a port failed to load (the previous certificate is still served)",
            &["port"],
        )?;
        let tls_reloads = counter_vec(
            &registry,
            "kv_tls_reloads_total",
            "Certificate reloads by port and result (ok, error)",
            &["port", "result"],
        )?;
        let auth_refused = counter_vec(
            &registry,
            "kv_auth_refused_total",
            "Client requests refused, by reason (unauthenticated: no or a bad credential, 401; forbidden: outside the principal's role or prefixes, 403)",
            &["reason"],
        )?;
        let auth_reloads = counter_vec(
            &registry,
            "kv_auth_reloads_total",
            "Token file reloads by result (ok, error)",
            &["result"],
        )?;
        let api_limited = counter_vec(
            &registry,
            "kv_api_limited_total",
            "Client connections and requests turned away by a limit, by limit (connections, concurrency, request_timeout, watchers, response_bytes)",
            &["limit"],
        )?;
        Ok(Self {
            api_limited,
            api_connections: gauge(
                &registry,
                "kv_api_connections",
                "Open connections on the client port",
            )?,
            watch_streams: gauge(
                &registry,
                "kv_watch_streams",
                "Watch streams open on this node",
            )?,
            auth_refused,
            auth_reloads,
            auth_reload_failing: gauge(
                &registry,
                "kv_auth_reload_failing",
                "1 while the newest token files failed to load (the previous tokens stay in force)",
            )?,
            auth_tokens: gauge(&registry, "kv_auth_tokens", "Bearer tokens in force")?,
            tls_cert_not_after,
            tls_reload_failing,
            tls_reloads,
            row_cache_entries: gauge(
                &registry,
                "kv_row_cache_entries",
                "Keys held by the row cache",
            )?,
            row_cache_bytes: gauge(
                &registry,
                "kv_row_cache_bytes",
                "Memory charged to the row cache (storage.cache_bytes is its limit)",
            )?,
            raft_term: gauge(&registry, "kv_raft_term", "Current Raft term")?,
            raft_leader: gauge(
                &registry,
                "kv_raft_leader_id",
                "Id of the known leader, -1 if none",
            )?,
            raft_is_leader: gauge(
                &registry,
                "kv_raft_is_leader",
                "1 if this node is the leader",
            )?,
            raft_last_log_index: gauge(
                &registry,
                "kv_raft_last_log_index",
                "Index of the last log entry",
            )?,
            raft_committed_index: gauge(
                &registry,
                "kv_raft_committed_index",
                "Index of the last committed entry",
            )?,
            raft_applied_index: gauge(
                &registry,
                "kv_raft_applied_index",
                "Index of the last applied entry",
            )?,
            raft_snapshot_index: gauge(
                &registry,
                "kv_raft_snapshot_index",
                "Last log index covered by the snapshot",
            )?,
            kv_revision: gauge(
                &registry,
                "kv_revision",
                "Cluster revision as applied on this node",
            )?,
            registry,
            http_requests,
            http_duration,
            storage_sync_seconds,
            raft_log,
            backup_seconds,
            raft_replication_lag,
            partition_is_leader,
            partition_leader,
            partition_applied_index,
            partition_revision,
            partition_replication_lag,
            partition_keys,
            partition_bytes,
            peer_refused,
            row_cache_lookups,
            forwarded_writes,
        })
    }

    /// Renders the registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}
