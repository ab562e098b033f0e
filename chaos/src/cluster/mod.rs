//! The one process harness: real kvserver processes on free loopback ports,
//! each with its own data directory and log file, used by kvserver's tests,
//! the fault campaign and the benchmark (`kvchaos cluster`).
//!
//! With proxies on (the campaign), each node advertises the addresses of its
//! two [`proxy`](crate::proxy) listeners, so that every node-to-node byte
//! crosses a link the harness can cut. Faults act on the processes themselves:
//! `kill -9`, `SIGSTOP`/`SIGCONT`, `SIGTERM`, and wiping the data directory
//! before a restart. Everything is stopped and removed on drop (a failing run
//! may [`Cluster::keep`] its directory).
//!
//! With TLS on (the tests' default), the cluster has its own CA and every node
//! serves both ports with a member certificate ([`tls`]); the harness's clients
//! speak HTTPS with the CA bundle and a client certificate. With auth on, every
//! node requires a credential and the harness's clients send an admin token
//! from the cluster's token file ([`auth`]).
//!
//! Layout: this file holds the nodes and their processes; [`ports`] free ports
//! and signals; [`api`] what the harness asks of a running cluster through the
//! typed client (views, leaders, forming, joining, convergence); [`tls`] the
//! cluster's certificates; [`auth`] its bearer tokens; `client` how the
//! harness's clients reach the nodes (TLS settings, the admin token).

pub mod api;
pub mod auth;
mod client;
pub mod ports;
pub mod tls;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::ExitStatus;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

pub use self::api::ClusterCall;
pub use self::api::cluster_call;
pub use self::client::ClientAccess;
use self::client::http_client;
pub use self::ports::free_port;
pub use self::ports::signal;
use crate::ChaosError;
use crate::proxy;
use crate::proxy::Channel;
use crate::proxy::Links;

/// One kvserver process and its ports.
#[derive(Debug)]
pub struct Node {
    pub id: u64,
    /// Where the node listens (the harness's own clients talk here directly).
    pub api: SocketAddr,
    pub raft: SocketAddr,
    /// What it advertises to other nodes: its proxies when proxies are on, else
    /// the addresses above.
    pub advertised_api: SocketAddr,
    pub advertised_raft: SocketAddr,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// `https` when the cluster has TLS.
    pub scheme: &'static str,
    child: Option<Child>,
    paused: bool,
}

impl Node {
    /// Base URL of the node's client API (`http(s)://127.0.0.1:<port>`).
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.api)
    }
    /// Whether its process runs (paused or not).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }
    pub fn paused(&self) -> bool {
        self.paused
    }
    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// How to build a [`Cluster`].
pub struct ClusterBuilder {
    bin: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    proxies: bool,
    cluster_id: Option<String>,
    http_timeout: Duration,
    dump_logs_on_panic: bool,
    tls: bool,
    auth: bool,
}

impl ClusterBuilder {
    /// Every node requires a bearer token (a token file of the cluster's own);
    /// the harness's clients send an admin token.
    pub fn auth(mut self, on: bool) -> Self {
        self.auth = on;
        self
    }

    /// TLS on both ports of every node (a CA of the cluster's own, member
    /// certificates) and HTTPS for the harness's clients.
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
    }

    /// Arguments for every node (after the harness's own: ids, addresses, data dir).
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// An environment variable for every node (e.g. a PostgreSQL URL, which
    /// carries a password and so never goes on a command line).
    pub fn env(mut self, name: &str, value: impl Into<String>) -> Self {
        self.env.push((name.to_string(), value.into()));
        self
    }

    /// Puts a fault-injecting proxy in front of each node's two ports.
    pub fn proxies(mut self, on: bool) -> Self {
        self.proxies = on;
        self
    }

    /// The cluster id (default: unique, from the temporary directory's name).
    pub fn cluster_id(mut self, id: impl Into<String>) -> Self {
        self.cluster_id = Some(id.into());
        self
    }

    /// Timeout of the harness's HTTP client ([`Cluster::http`]).
    pub fn http_timeout(mut self, t: Duration) -> Self {
        self.http_timeout = t;
        self
    }

    /// Prints the tail of every node's log when the cluster is dropped during a
    /// panic (a failing test).
    pub fn dump_logs_on_panic(mut self, on: bool) -> Self {
        self.dump_logs_on_panic = on;
        self
    }

    /// A cluster without nodes yet ([`Cluster::add_node`]).
    pub fn build(self) -> Result<Cluster, ChaosError> {
        let dir = tempfile::Builder::new().prefix("kvchaos-").tempdir()?;
        let cluster_id = self.cluster_id.unwrap_or_else(|| {
            dir.path()
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default()
                .replace(['-', '_', '.'], "")
                .to_lowercase()
        });
        let tls = if self.tls {
            Some(tls::TestTls::new(&dir.path().join("tls"), &cluster_id)?)
        } else {
            None
        };
        let auth = if self.auth {
            Some(auth::TestAuth::new(&dir.path().join("auth"))?)
        } else {
            None
        };
        let http = http_client(self.http_timeout, tls.as_ref(), auth.as_ref())?;
        Ok(Cluster {
            tls,
            auth,
            http_timeout: self.http_timeout,
            dir: Some(dir),
            bin: self.bin,
            cluster_id,
            nodes: BTreeMap::new(),
            links: Arc::new(Links::default()),
            http,
            proxied: self.proxies,
            proxies: Vec::new(),
            args: self.args,
            env: self.env,
            dump_logs_on_panic: self.dump_logs_on_panic,
        })
    }
}

/// A set of kvserver processes sharing a cluster id (and, optionally, the proxies between them).
pub struct Cluster {
    dir: Option<tempfile::TempDir>,
    /// The cluster's certificates, when it has TLS.
    pub tls: Option<tls::TestTls>,
    /// The cluster's token file, when nodes require a credential.
    pub auth: Option<auth::TestAuth>,
    http_timeout: Duration,
    bin: PathBuf,
    pub cluster_id: String,
    pub nodes: BTreeMap<u64, Node>,
    /// The proxies' link table (cut links are partitions); unused without proxies.
    pub links: Arc<Links>,
    pub http: reqwest::Client,
    proxied: bool,
    proxies: Vec<tokio::task::JoinHandle<()>>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    dump_logs_on_panic: bool,
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A proxy listener on a fresh loopback port, as a tokio listener (needs a runtime).
fn proxy_listener() -> Result<tokio::net::TcpListener, ChaosError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    l.set_nonblocking(true)?;
    Ok(tokio::net::TcpListener::from_std(l)?)
}

impl Cluster {
    /// A harness for the kvserver binary `bin`.
    pub fn builder(bin: impl Into<PathBuf>) -> ClusterBuilder {
        ClusterBuilder {
            bin: bin.into(),
            args: Vec::new(),
            env: Vec::new(),
            proxies: false,
            cluster_id: None,
            http_timeout: Duration::from_secs(5),
            dump_logs_on_panic: false,
            tls: false,
            auth: false,
        }
    }

    /// More arguments for every node started from now on (settings that need
    /// files made after the cluster, e.g. from its CA).
    pub fn add_args<I, S>(&mut self, args: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
    }

    /// What the harness's typed clients use: TLS settings and the admin token.
    pub fn access(&self) -> ClientAccess {
        ClientAccess {
            tls: self.client_tls(),
            token: self.auth.as_ref().map(|a| a.admin.clone()),
        }
    }

    /// What the cluster's clients need for HTTPS (`None` without TLS).
    pub fn client_tls(&self) -> Option<kvserver::tls::ClientTls> {
        self.tls.as_ref().map(tls::TestTls::client_tls)
    }

    /// Rebuilds [`Cluster::http`] from the certificate files as they are now (after
    /// a test changed the CA bundle clients trust).
    pub fn refresh_http(&mut self) -> Result<(), ChaosError> {
        self.http = http_client(self.http_timeout, self.tls.as_ref(), self.auth.as_ref())?;
        Ok(())
    }

    /// Gives the cluster a new id (forced recovery forms a new cluster): nodes
    /// started from now on run under it, with member certificates reissued for it.
    pub fn set_cluster_id(&mut self, cluster_id: &str) -> Result<(), ChaosError> {
        self.cluster_id = cluster_id.to_string();
        if let Some(tls) = &mut self.tls {
            tls.set_cluster_id(cluster_id);
            for id in self.nodes.keys() {
                tls.issue_node(*id, None)?;
            }
        }
        Ok(())
    }

    /// Prepares node `id` (fresh ports, its proxies, a data directory path); not started.
    pub fn add_node(&mut self, id: u64) -> Result<(), ChaosError> {
        if self.nodes.contains_key(&id) {
            return Err(ChaosError::Cluster(format!("node {id} exists already")));
        }
        let dir = self
            .dir()
            .ok_or_else(|| ChaosError::Cluster("the cluster's directory was kept".into()))?
            .to_path_buf();
        let api = loopback(free_port()?);
        let raft = loopback(free_port()?);
        let (advertised_api, advertised_raft) = if self.proxied {
            let pa = proxy_listener()?;
            let pr = proxy_listener()?;
            let addrs = (pa.local_addr()?, pr.local_addr()?);
            let links = self.links.clone();
            self.proxies.push(tokio::spawn(proxy::serve(
                pa,
                id,
                api,
                Channel::Api,
                links.clone(),
            )));
            self.proxies.push(tokio::spawn(proxy::serve(
                pr,
                id,
                raft,
                Channel::Raft,
                links,
            )));
            addrs
        } else {
            (api, raft)
        };
        if let Some(tls) = &self.tls {
            tls.issue_node(id, None)?;
        }
        self.nodes.insert(
            id,
            Node {
                id,
                api,
                raft,
                advertised_api,
                advertised_raft,
                data_dir: dir.join(format!("node-{id}")),
                log: dir.join(format!("node-{id}.log")),
                scheme: if self.tls.is_some() { "https" } else { "http" },
                child: None,
                paused: false,
            },
        );
        Ok(())
    }

    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_ref().map(|d| d.path())
    }

    /// Keeps the directory (logs, data) after drop, e.g. for a failing run; returns its path.
    pub fn keep(&mut self) -> Option<PathBuf> {
        self.dir.take().map(|d| d.keep())
    }

    pub fn node(&self, id: u64) -> Result<&Node, ChaosError> {
        self.nodes
            .get(&id)
            .ok_or_else(|| ChaosError::Cluster(format!("no node {id}")))
    }

    fn node_mut(&mut self, id: u64) -> Result<&mut Node, ChaosError> {
        self.nodes
            .get_mut(&id)
            .ok_or_else(|| ChaosError::Cluster(format!("no node {id}")))
    }

    /// Starts (or restarts) node `id` on its ports and data directory; a running node is left alone.
    pub fn start(&mut self, id: u64) -> Result<(), ChaosError> {
        let bin = self.bin.clone();
        let args = self.args.clone();
        let env = self.env.clone();
        let cluster_id = self.cluster_id.clone();
        let tls_env = self
            .tls
            .as_ref()
            .map(|t| t.node_env(id))
            .unwrap_or_default();
        let auth_env = self
            .auth
            .as_ref()
            .map(auth::TestAuth::node_env)
            .unwrap_or_default();
        let n = self.node_mut(id)?;
        if n.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)?;
        let mut cmd = Command::new(bin);
        cmd.args(["--node-id", &id.to_string(), "--cluster-id", &cluster_id])
            .arg("--data-dir")
            .arg(&n.data_dir)
            .args(["--api-addr", &n.api.to_string()])
            .args(["--raft-addr", &n.raft.to_string()]);
        if n.advertised_api != n.api {
            cmd.args(["--advertise-api-addr", &n.advertised_api.to_string()])
                .args(["--advertise-raft-addr", &n.advertised_raft.to_string()]);
        }
        let child = cmd
            .args(["--log-format", "json"])
            .args(&args)
            .env_remove("HOSTNAME")
            .envs(env)
            .envs(tls_env)
            .envs(auth_env)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| ChaosError::Cluster(format!("spawning kvserver: {e}")))?;
        let pid = child.id();
        n.child = Some(child);
        n.paused = false;
        self.links.callers.register(pid, id);
        Ok(())
    }

    /// `kill -9` (a paused process dies too).
    pub fn kill(&mut self, id: u64) -> Result<(), ChaosError> {
        let n = self.node_mut(id)?;
        let mut pid = None;
        if let Some(mut c) = n.child.take() {
            pid = Some(c.id());
            let _ = c.kill();
            let _ = c.wait();
        }
        n.paused = false;
        if let Some(pid) = pid {
            self.links.callers.forget(pid);
        }
        Ok(())
    }

    /// `SIGTERM`, as Kubernetes stops a pod, and waits up to `timeout` for the
    /// process to exit. Returns its exit status and how long the graceful stop
    /// took, or `None` if it had to be killed (`kill -9`) after `timeout`. A node
    /// that was not running counts as stopped at once.
    pub async fn terminate(
        &mut self,
        id: u64,
        timeout: Duration,
    ) -> Result<Option<(Option<ExitStatus>, Duration)>, ChaosError> {
        let n = self.node_mut(id)?;
        let Some(mut c) = n.child.take() else {
            return Ok(Some((None, Duration::ZERO)));
        };
        n.paused = false;
        let started = Instant::now();
        let pid = c.id();
        signal(pid, "-TERM")?;
        // A stopping node still dials its peers (a leader hands off): it stays
        // known to the proxies until it has exited.
        let mut exited = None;
        while started.elapsed() < timeout {
            if let Some(status) = c.try_wait()? {
                exited = Some(status);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if exited.is_none() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.links.callers.forget(pid);
        Ok(exited.map(|status| (Some(status), started.elapsed())))
    }

    /// `SIGSTOP`: the process keeps its sockets and memory but does nothing.
    pub fn pause(&mut self, id: u64) -> Result<(), ChaosError> {
        let n = self.node_mut(id)?;
        if let Some(c) = &n.child {
            signal(c.id(), "-STOP")?;
            n.paused = true;
        }
        Ok(())
    }

    /// `SIGCONT` to a paused node.
    pub fn resume(&mut self, id: u64) -> Result<(), ChaosError> {
        let n = self.node_mut(id)?;
        if let (Some(c), true) = (&n.child, n.paused) {
            signal(c.id(), "-CONT")?;
        }
        n.paused = false;
        Ok(())
    }

    /// Kills node `id` and deletes its data directory (a lost volume).
    pub fn wipe(&mut self, id: u64) -> Result<(), ChaosError> {
        self.kill(id)?;
        let dir = self.node(id)?.data_dir.clone();
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        Ok(())
    }

    /// `http(s)://<node id's API><path>`.
    pub fn url(&self, id: u64, path: &str) -> Result<String, ChaosError> {
        Ok(format!("{}{path}", self.node(id)?.url()))
    }

    /// Ids of nodes whose process runs and is not paused.
    pub fn live(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|n| n.running() && !n.paused)
            .map(|n| n.id)
            .collect()
    }

    /// Ids of nodes whose process runs (paused ones included).
    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|n| n.running())
            .map(|n| n.id)
            .collect()
    }

    /// Base URLs of the live nodes.
    pub fn live_urls(&self) -> Vec<String> {
        self.live()
            .iter()
            .filter_map(|id| self.url(*id, "").ok())
            .collect()
    }

    /// The last `lines` lines of a node's log.
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let Ok(n) = self.node(id) else {
            return String::new();
        };
        let text = std::fs::read_to_string(&n.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Prints the tail of every node's log (for a failed test or run).
    pub fn dump_logs(&self) {
        for id in self.nodes.keys() {
            eprintln!("----- node {id} log tail -----\n{}", self.log_tail(*id, 60));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.dump_logs_on_panic && std::thread::panicking() {
            self.dump_logs();
        }
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            let _ = self.resume(id);
            let _ = self.kill(id);
        }
        for p in &self.proxies {
            p.abort();
        }
    }
}
