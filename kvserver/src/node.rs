//! Starting and stopping one node: [`start_node`] wires configuration,
//! storage, Raft, the peer listener, the client API and background tasks, and
//! is the single entry point used by `main.rs` and by tests.
//!
//! Shutdown is two-phase: first the client API stops accepting and drains
//! in-flight requests (while Raft keeps running, so those requests can still
//! commit), then Raft, the peer listener and background tasks stop and the
//! database is closed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use openraft::ServerState;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api;
use crate::api::NodeState;
use crate::command::KvNode;
use crate::command::NodeId;
use crate::config::Config;
use crate::config::ConfigError;
use crate::config::StorageBackend;
use crate::config::hostname;
use crate::group;
use crate::group::CLUSTER_GROUP;
use crate::group::GroupCtx;
use crate::group::Groups;
use crate::group::Launched;
use crate::metrics::Metrics;
use crate::peer;
use crate::peer::Dialer;
use crate::raft;
use crate::raft::KvRaft;
use crate::raftlog::LogOptions;
use crate::store::Backend;
use crate::store::Store;
use crate::store::StoreError;
use crate::store::StoreOptions;
use crate::tls::PeerTls;
use crate::tls::Reloading;
use crate::tls::Role;

/// Errors while starting or stopping a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {field} {addr}: {source}")]
    Bind {
        field: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("raft: {0}")]
    Raft(String),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("http client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("config field `{field}`: {source}")]
    Tls {
        field: &'static str,
        source: crate::tls::TlsError,
    },
    #[error("config field `auth.token_files`: {0}")]
    Tokens(#[from] crate::auth::tokens::TokenError),
    #[error("config field `restore_from`: {0}")]
    Restore(#[from] crate::restore::InitError),
    #[error("config field `recovery`: {0}")]
    Recovery(#[from] crate::recover::RecoveryError),
    #[error("raft log: {0}")]
    Log(#[from] crate::raftlog::LogError),
    #[error(transparent)]
    Group(#[from] crate::group::GroupError),
}

fn tls_err(field: &'static str) -> impl Fn(crate::tls::TlsError) -> NodeError {
    move |source| NodeError::Tls { field, source }
}

/// A running node.
pub struct NodeHandle {
    pub id: NodeId,
    /// Bound client API address (the real port when configured with port 0).
    pub api_addr: SocketAddr,
    /// Bound Raft peer address.
    pub raft_addr: SocketAddr,
    pub raft: KvRaft,
    /// The partition groups this node hosts (issue 21).
    pub groups: Arc<Groups>,
    pub state: api::AppState,
    api_stop: watch::Sender<bool>,
    stop: watch::Sender<bool>,
    api_task: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
    store: Store,
    log: crate::raftlog::Engine,
    drain_timeout: Duration,
}

fn stopped(rx: &watch::Receiver<bool>) -> impl std::future::Future<Output = ()> + use<> {
    let mut rx = rx.clone();
    async move {
        let _ = rx.wait_for(|v| *v).await;
    }
}

async fn bind(field: &'static str, addr: &str) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind {
            field,
            addr: addr.to_string(),
            source,
        })
}

/// Starts a node from a validated configuration.
pub async fn start_node(config: Config) -> Result<NodeHandle, NodeError> {
    config.validate()?;
    let host = hostname();
    let id = match config.resolve_node_id(&host) {
        Ok(id) => id,
        Err(_) if config.bootstrap => {
            tracing::info!(hostname = %host, "no node_id and no ordinal in the hostname; bootstrap mode uses node id 1");
            1
        }
        Err(e) => return Err(e.into()),
    };
    let api_listener = bind("api_addr", &config.api_addr).await?;
    let raft_listener = bind("raft_addr", &config.raft_addr).await?;
    let api_addr = api_listener
        .local_addr()
        .map_err(|source| NodeError::Bind {
            field: "api_addr",
            addr: config.api_addr.clone(),
            source,
        })?;
    let raft_addr = raft_listener
        .local_addr()
        .map_err(|source| NodeError::Bind {
            field: "raft_addr",
            addr: config.raft_addr.clone(),
            source,
        })?;
    let advertise = KvNode {
        api_addr: config
            .advertise_api_addr
            .clone()
            .unwrap_or_else(|| api_addr.to_string()),
        raft_addr: config
            .advertise_raft_addr
            .clone()
            .unwrap_or_else(|| raft_addr.to_string()),
    };

    let metrics = Arc::new(Metrics::new()?);
    let peer_certs = config
        .tls
        .peer
        .cert_files()
        .map(|files| {
            Reloading::load(
                "peer",
                files,
                Role::Member {
                    cluster_id: config.cluster_id.clone(),
                    node_id: id,
                    host: crate::tls::host_of(&advertise.raft_addr).to_string(),
                },
            )
        })
        .transpose()
        .map_err(tls_err("tls.peer.cert_file"))?;
    let peer_tls = peer_certs
        .clone()
        .map(|c| PeerTls::new(c, &config.cluster_id).map(Arc::new))
        .transpose()
        .map_err(tls_err("tls.peer"))?;
    let api_certs = config
        .tls
        .client
        .cert_files()
        .map(|files| {
            Reloading::load(
                "client",
                files,
                Role::Api {
                    client_auth: config.tls.client_auth,
                },
            )
        })
        .transpose()
        .map_err(tls_err("tls.client.cert_file"))?;
    if peer_tls.is_none() && !config.bootstrap {
        tracing::warn!(
            "the peer port is plaintext (no tls.peer): anyone who can reach it can rewrite this node's log; use peer TLS outside local tests"
        );
    }
    let tls_certs: Vec<Arc<Reloading>> =
        peer_certs.iter().chain(api_certs.iter()).cloned().collect();
    for c in &tls_certs {
        c.export(&metrics);
    }
    let backend_of = |cluster_id: &str| match config.storage.backend {
        StorageBackend::Postgres => {
            let pg = &config.storage.postgres;
            Backend::Postgres {
                url: pg.connect_url().unwrap_or_default(),
                schema: pg.schema_for(cluster_id, id),
                max_connections: pg.max_connections,
                acquire_timeout: Duration::from_millis(pg.acquire_timeout_ms),
            }
        }
        StorageBackend::Sqlite => Backend::Sqlite,
    };
    let backend = backend_of(&config.cluster_id);
    tracing::info!(node_id = id, backend = ?backend, "opening storage");
    let store_opts = StoreOptions {
        data_dir: config.data_dir.clone(),
        node_id: id,
        cluster_id: config.cluster_id.clone(),
        backend,
        watch_history: config.watch.history_revisions,
        feed_capacity: config.watch.feed_capacity,
        cache_bytes: config.storage.cache_bytes,
    };
    // Forced recovery prepares the survivor's state before the new store opens.
    let recovered = match config.recovery.recovering(id) {
        Some(from) => {
            crate::recover::prepare(from, backend_of(from), &store_opts, metrics.clone()).await?
        }
        None => None,
    };
    let store = Store::open(&store_opts, metrics.clone()).await?;
    let log_opts = LogOptions {
        metrics: Some(metrics.raft_log.clone()),
        segment_bytes: config.raft.log_segment_bytes,
        ..LogOptions::for_node(&config.cluster_id, id)
    };
    let engine = crate::raftlog::migrate::open_for_node(&store, &config.data_dir, log_opts).await?;
    let cluster_id: Arc<str> = Arc::from(config.cluster_id.as_str());
    let dialer = Dialer {
        me: id,
        cluster_id: cluster_id.clone(),
        tls: peer_tls.clone(),
    };
    let group_ctx = GroupCtx {
        node_id: id,
        config: Arc::new(config.clone()),
        engine: engine.clone(),
        dialer: dialer.clone(),
    };
    let Launched {
        raft,
        peer: peer_state,
        restored: _,
    } = group::launch(&group_ctx, CLUSTER_GROUP, &store, &config.data_dir, None).await?;
    let groups = Groups::new(
        group_ctx,
        raft.clone(),
        store.clone(),
        store_opts.clone(),
        metrics.clone(),
    );
    let reopened = groups.reopen().await?;
    if !reopened.is_empty() {
        tracing::info!(groups = ?reopened, "reopened the partition groups this node hosts");
    }

    let (api_stop, api_stop_rx) = watch::channel(false);
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let peer_server = Arc::new(peer::PeerServer {
        raft: raft.clone(),
        node_id: id,
        cluster_id,
        snapshot_dir: store.snapshot_dir.clone(),
        state: peer_state.clone(),
        groups: groups.clone(),
        metrics: metrics.clone(),
        tls: peer_tls,
        max_value_bytes: config.max_value_bytes,
        auth_enabled: config.auth.enabled,
        limits: config.limits.clone(),
        leader_silence: Duration::from_millis(2 * config.raft.election_timeout_max_ms),
    });
    tasks.push(tokio::spawn(peer::serve(
        raft_listener,
        peer_server,
        stopped(&stop_rx),
    )));

    for c in &tls_certs {
        tasks.push(tokio::spawn(c.clone().watch(
            Duration::from_millis(config.tls.reload_interval_ms),
            metrics.clone(),
            stopped(&stop_rx),
        )));
    }
    let tokens = match config.auth.token_files.is_empty() {
        true => None,
        false => Some(crate::auth::tokens::Tokens::load(
            config.auth.token_files.clone(),
        )?),
    };
    if let Some(t) = &tokens {
        t.export(&metrics);
        tasks.push(tokio::spawn(t.clone().watch(
            Duration::from_millis(config.auth.reload_interval_ms),
            metrics.clone(),
            stopped(&stop_rx),
        )));
    }
    if !config.auth.enabled && !api_addr.ip().is_loopback() {
        tracing::warn!(api = %api_addr, "authentication is off (auth.enabled: false) on a port other hosts can reach: anyone who reaches it is an admin");
    }
    let service_accounts = config
        .auth
        .service_accounts
        .enabled()
        .then(|| {
            crate::auth::serviceaccount::ServiceAccounts::new(config.auth.service_accounts.clone())
        })
        .transpose()
        .map_err(tls_err("auth.service_accounts.ca_file"))?;
    let auth = Arc::new(crate::auth::Authenticator::new(
        &config.auth,
        tokens,
        service_accounts,
    ));
    // Relayed requests get a bound on the whole request; relayed streams (a
    // watch's parts) one on each read: three keep-alive intervals of silence
    // mean the node is gone.
    let relay_client = |whole: bool| -> Result<reqwest::Client, NodeError> {
        let mut http = crate::tls::http_builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(2))
            .pool_max_idle_per_host(64);
        http = if whole {
            http.timeout(api::WRITE_TIMEOUT * 4)
        } else {
            http.read_timeout(api::watch::KEEP_ALIVE * 3)
        };
        if let Some(certs) = &api_certs {
            let relay =
                crate::tls::relay_client_config(certs.clone()).map_err(tls_err("tls.client"))?;
            http = http.tls_backend_preconfigured(relay);
        }
        Ok(http.build()?)
    };
    let http = relay_client(true)?;
    let stream_http = relay_client(false)?;
    let gates = api::limits::Gates::new(&config.limits, &metrics);
    let state = Arc::new(NodeState {
        id,
        cluster_id: config.cluster_id.clone(),
        raft: raft.clone(),
        store: store.clone(),
        groups: groups.clone(),
        config: config.clone(),
        metrics,
        advertise: advertise.clone(),
        http,
        stream_http,
        started: Instant::now(),
        peer_state,
        follower_reads: crate::route::read_index::FollowerReads::new(crate::peer::Link::cluster(
            dialer.clone(),
            raft.clone(),
        )),
        writes: crate::route::forward::WriteForwarder::new(crate::peer::Link::cluster(
            dialer,
            raft.clone(),
        )),
        api_scheme: if api_certs.is_some() { "https" } else { "http" },
        auth,
        gates,
        backup_slot: Arc::default(),
        init_lock: Arc::default(),
        tls_certs,
        shutdown: api_stop_rx.clone(),
    });
    let app = api::router(state.clone());
    let api_shutdown = stopped(&api_stop_rx);
    let acceptor = api_certs
        .map(|certs| {
            crate::tls::api_server_config(certs, config.tls.client_auth)
                .map(|c| tokio_rustls::TlsAcceptor::from(Arc::new(c)))
        })
        .transpose()
        .map_err(tls_err("tls.client"))?;
    let api_task = tokio::spawn(api::serve::serve(
        api_listener,
        acceptor,
        app,
        config.limits.clone(),
        state.metrics.clone(),
        api_shutdown,
    ));
    tasks.push(tokio::spawn(group::driver::run(
        groups.clone(),
        store.clone(),
        stopped(&stop_rx),
    )));
    tasks.push(tokio::spawn(group::reap_expired(
        raft.clone(),
        store.clone(),
        config.ttl_reap_interval_ms,
        stopped(&stop_rx),
    )));

    if (config.bootstrap || recovered.is_some())
        && !raft
            .is_initialized()
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?
    {
        let restore_from = match &recovered {
            Some(r) => {
                tracing::warn!(
                    node_id = id,
                    entries_applied = r.entries_applied,
                    "forced recovery: forming the new cluster from the survivor's state"
                );
                Some((r.backup.as_path(), crate::store::Select::All))
            }
            None => {
                tracing::info!(
                    node_id = id,
                    "bootstrap: initializing a single-node cluster"
                );
                config
                    .restore_from
                    .as_deref()
                    .map(|p| (p, crate::restore::cluster_select(&config)))
            }
        };
        crate::restore::initialize(
            &raft,
            &store,
            &state.peer_state.catch_up,
            id,
            &config.cluster_id,
            BTreeMap::from([(id, advertise.clone())]),
            restore_from,
        )
        .await?;
    }
    // A restore whose seal a crash interrupted is sealed now (see `restore`).
    tasks.push(tokio::spawn(crate::restore::finish_interrupted(
        raft.clone(),
        store.clone(),
        id,
    )));
    tracing::info!(node_id = id, api = %api_addr, raft = %raft_addr, advertise = %advertise, cluster_id = %config.cluster_id, "kvserver started");
    Ok(NodeHandle {
        id,
        api_addr,
        raft_addr,
        raft,
        groups,
        state,
        api_stop,
        stop,
        api_task,
        tasks,
        store,
        log: engine,
        drain_timeout: Duration::from_millis(config.shutdown_timeout_ms),
    })
}

/// How long a stopping leader waits for a successor (and for the answers to the
/// writes it had in flight) before it stops anyway.
const HANDOFF_TIMEOUT: Duration = Duration::from_secs(5);

/// A stopping leader (of any group) hands leadership to its most caught-up voter, as etcd does,
/// instead of just going away. Otherwise every write it had taken (from its own
/// clients, or from followers over the peer port) lost its answer, and clients
/// waited out an election timeout for a new leader. openraft stops proposing once
/// asked, the successor takes over as soon as its log has the leader's last entry,
/// and it commits what the old leader proposed. The old leader keeps the callers of
/// those writes waiting and answers them when it applies the entries as a
/// follower, so it waits for that too. On timeout (no voter reachable) it stops
/// anyway, as before.
async fn hand_off_leadership(
    raft: &KvRaft,
    writes: &crate::route::forward::WriteForwarder,
    me: NodeId,
    timeout: Duration,
) {
    let m = raft::raft_metrics(raft);
    if m.state != ServerState::Leader {
        return;
    }
    let matched = m.replication.unwrap_or_default();
    let Some(to) = m
        .membership_config
        .membership()
        .voter_ids()
        .filter(|id| *id != me)
        .max_by_key(|id| matched.get(id).cloned().flatten().map(|l| l.index))
    else {
        return;
    };
    let started = Instant::now();
    let successor = match writes.hand_off(to, timeout).await {
        Ok(Some(successor)) => successor,
        Ok(None) => {
            tracing::warn!(
                to,
                timeout_ms = timeout.as_millis() as u64,
                "no voter took over leadership in time; stopping as leader"
            );
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not hand off leadership before stopping");
            return;
        }
    };
    // Everything this node proposed is at or below its last log index; the
    // successor's first entry commits it.
    let last = raft::raft_metrics(raft).last_log_index;
    let answered = raft
        .wait(Some(timeout.saturating_sub(started.elapsed())))
        .applied_index_at_least(last, "writes proposed before the hand-off")
        .await
        .is_ok();
    tracing::info!(
        to,
        leader = successor,
        elapsed_ms = started.elapsed().as_millis() as u64,
        in_flight_answered = answered,
        "leadership handed off before stopping"
    );
}

impl NodeHandle {
    /// Graceful stop: a leader first hands leadership to another voter, then the
    /// client API drains, then Raft stops and storage closes.
    pub async fn shutdown(self) -> Result<(), NodeError> {
        let timeout = HANDOFF_TIMEOUT.min(self.drain_timeout);
        // Every group this node leads hands over at once: the cluster group and
        // each partition's (a rolling restart must not make any of them wait out
        // an election).
        let partitions: Vec<_> = self
            .groups
            .ids()
            .into_iter()
            .filter_map(|id| self.groups.get(id))
            .collect();
        let hand_offs = partitions
            .iter()
            .map(|g| hand_off_leadership(&g.raft, &g.writes, self.id, timeout));
        tokio::join!(
            hand_off_leadership(&self.raft, &self.state.writes, self.id, timeout),
            futures_util::future::join_all(hand_offs),
        );
        let _ = self.api_stop.send(true);
        let mut api_task = self.api_task;
        if tokio::time::timeout(self.drain_timeout, &mut api_task)
            .await
            .is_err()
        {
            tracing::warn!(timeout = ?self.drain_timeout, "in-flight requests did not finish in time; closing them");
            api_task.abort();
        }
        let _ = self.stop.send(true);
        self.groups.shutdown().await;
        let raft_result = self.raft.shutdown().await;
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        let log = self.log;
        let _ = tokio::task::spawn_blocking(move || log.close()).await;
        self.store.close().await;
        raft_result.map_err(|e| NodeError::Raft(e.to_string()))?;
        tracing::info!(node_id = self.id, "kvserver stopped");
        Ok(())
    }
}
