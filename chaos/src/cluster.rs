//! Real kvserver processes for fault injection: each node runs the `kvserver`
//! binary on free loopback ports with its own data directory, advertising the
//! addresses of its two [`proxy`](crate::proxy) listeners so that every
//! node-to-node byte crosses a link the harness can cut. Faults act on the
//! processes themselves: `kill -9`, `SIGSTOP`/`SIGCONT`, and wiping the data
//! directory before a restart. Everything is stopped and removed on drop.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use serde_json::Value;
use serde_json::json;
use tokio::net::TcpListener;

use crate::ChaosError;
use crate::proxy;
use crate::proxy::Channel;
use crate::proxy::Links;

/// One kvserver process and its ports.
#[derive(Debug)]
pub struct Node {
    pub id: u64,
    /// Where the node listens (clients of the harness talk here directly).
    pub api: SocketAddr,
    pub raft: SocketAddr,
    /// What it advertises to other nodes (the proxies).
    pub proxy_api: SocketAddr,
    pub proxy_raft: SocketAddr,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

impl Node {
    pub fn url(&self) -> String {
        format!("http://{}", self.api)
    }
    pub fn running(&self) -> bool {
        self.child.is_some()
    }
    pub fn paused(&self) -> bool {
        self.paused
    }
}

/// A set of kvserver processes sharing a cluster id, with the proxies between them.
pub struct Cluster {
    dir: Option<tempfile::TempDir>,
    bin: PathBuf,
    pub cluster_id: String,
    pub nodes: BTreeMap<u64, Node>,
    pub links: Arc<Links>,
    pub http: reqwest::Client,
    proxies: Vec<tokio::task::JoinHandle<()>>,
    args: Vec<String>,
}

/// A loopback port that was free a moment ago and that this process has not handed out before
/// (two nodes must never share one). kvserver's test harness uses it too, so both draw from one
/// set.
///
/// Ports come from outside the kernel's ephemeral range: a port from `bind(":0")` is one the
/// kernel also hands to outgoing connections, and between its release here and the child's
/// bind a client connection (our own load, a proxy) took it often enough to fail 2 of 80 fault
/// campaign runs with "Address already in use". Below the range only an explicit bind can take
/// it. The scan starts at a per-process offset so that concurrent test processes rarely probe
/// the same ports.
pub fn free_port() -> std::io::Result<u16> {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut seen = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let candidates = fixed_port_range();
    if !candidates.is_empty() {
        let span = candidates.len() as u32;
        let start = std::process::id()
            .wrapping_mul(7919)
            .wrapping_add(seen.len() as u32 * 13);
        for i in 0..span {
            let port = candidates.start + ((start.wrapping_add(i)) % span) as u16;
            if seen.contains(&port) {
                continue;
            }
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                seen.push(port);
                return Ok(port);
            }
        }
    }
    // No room outside the ephemeral range (an unusual ip_local_port_range): ask the kernel.
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        if !seen.contains(&port) {
            seen.push(port);
            return Ok(port);
        }
    }
}

/// Ports from 10000 (above the well-known and most registered service ports) up to the start
/// of the kernel's ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`; Linux's default
/// 32768 when unreadable).
fn fixed_port_range() -> std::ops::Range<u16> {
    let first_ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    10000..first_ephemeral.max(10000)
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Sends `sig` (as `kill` spells it: `-STOP`, `-CONT`, ...) to process `pid`.
pub fn signal(pid: u32, sig: &str) -> Result<(), ChaosError> {
    let st = Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .status()?;
    if st.success() {
        Ok(())
    } else {
        Err(ChaosError::Cluster(format!("kill {sig} {pid} failed")))
    }
}

impl Cluster {
    /// Prepares nodes `ids` (not started). `args` go to every node.
    pub async fn new(bin: &Path, ids: &[u64], args: &[String]) -> Result<Self, ChaosError> {
        let dir = tempfile::Builder::new().prefix("kvchaos-").tempdir()?;
        let links = Arc::new(Links::default());
        let mut nodes = BTreeMap::new();
        let mut proxies = Vec::new();
        for &id in ids {
            let api = loopback(free_port()?);
            let raft = loopback(free_port()?);
            let pa = TcpListener::bind("127.0.0.1:0").await?;
            let pr = TcpListener::bind("127.0.0.1:0").await?;
            let proxy_api = pa.local_addr()?;
            let proxy_raft = pr.local_addr()?;
            proxies.push(tokio::spawn(proxy::serve(
                pa,
                id,
                api,
                Channel::Api,
                links.clone(),
            )));
            proxies.push(tokio::spawn(proxy::serve(
                pr,
                id,
                raft,
                Channel::Raft,
                links.clone(),
            )));
            nodes.insert(
                id,
                Node {
                    id,
                    api,
                    raft,
                    proxy_api,
                    proxy_raft,
                    data_dir: dir.path().join(format!("node-{id}")),
                    log: dir.path().join(format!("node-{id}.log")),
                    child: None,
                    paused: false,
                },
            );
        }
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(32)
            .build()?;
        let name = dir
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        Ok(Cluster {
            cluster_id: name.replace(['-', '_', '.'], "").to_lowercase(),
            dir: Some(dir),
            bin: bin.to_path_buf(),
            nodes,
            links,
            http,
            proxies,
            args: args.to_vec(),
        })
    }

    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_ref().map(|d| d.path())
    }

    /// Keeps the directory (logs, data) after drop, e.g. for a failing run; returns its path.
    pub fn keep(&mut self) -> Option<PathBuf> {
        self.dir.take().map(|d| d.keep())
    }

    fn node(&self, id: u64) -> Result<&Node, ChaosError> {
        self.nodes
            .get(&id)
            .ok_or_else(|| ChaosError::Cluster(format!("no node {id}")))
    }

    fn node_mut(&mut self, id: u64) -> Result<&mut Node, ChaosError> {
        self.nodes
            .get_mut(&id)
            .ok_or_else(|| ChaosError::Cluster(format!("no node {id}")))
    }

    /// Starts (or restarts) node `id` on its ports and data directory.
    pub fn start(&mut self, id: u64) -> Result<(), ChaosError> {
        let bin = self.bin.clone();
        let args = self.args.clone();
        let cluster_id = self.cluster_id.clone();
        let n = self.node_mut(id)?;
        if n.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)?;
        let child = Command::new(bin)
            .args(["--node-id", &id.to_string(), "--cluster-id", &cluster_id])
            .arg("--data-dir")
            .arg(&n.data_dir)
            .args([
                "--api-addr",
                &n.api.to_string(),
                "--raft-addr",
                &n.raft.to_string(),
            ])
            .args(["--advertise-api-addr", &n.proxy_api.to_string()])
            .args(["--advertise-raft-addr", &n.proxy_raft.to_string()])
            .args(["--log-format", "json"])
            .args(&args)
            .env_remove("HOSTNAME")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        n.child = Some(child);
        n.paused = false;
        Ok(())
    }

    /// `kill -9` (a paused process dies too).
    pub fn kill(&mut self, id: u64) -> Result<(), ChaosError> {
        let n = self.node_mut(id)?;
        if let Some(mut c) = n.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        n.paused = false;
        Ok(())
    }

    /// `SIGTERM`, as Kubernetes stops a pod, and waits up to `timeout` for the
    /// process to exit (then `kill -9`). Returns how long the graceful stop took,
    /// or `None` if it had to be killed.
    pub async fn terminate(
        &mut self,
        id: u64,
        timeout: Duration,
    ) -> Result<Option<Duration>, ChaosError> {
        let n = self.node_mut(id)?;
        let Some(mut c) = n.child.take() else {
            return Ok(Some(Duration::ZERO));
        };
        n.paused = false;
        let started = Instant::now();
        signal(c.id(), "-TERM")?;
        while started.elapsed() < timeout {
            if c.try_wait()?.is_some() {
                return Ok(Some(started.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = c.kill();
        let _ = c.wait();
        Ok(None)
    }

    /// `SIGSTOP`: the process keeps its sockets but does nothing.
    pub fn pause(&mut self, id: u64) -> Result<(), ChaosError> {
        let n = self.node_mut(id)?;
        if let Some(c) = &n.child {
            signal(c.id(), "-STOP")?;
            n.paused = true;
        }
        Ok(())
    }

    /// `SIGCONT`.
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

    pub fn url(&self, id: u64, path: &str) -> Result<String, ChaosError> {
        Ok(format!("{}{path}", self.node(id)?.url()))
    }

    /// `GET /v1/cluster` on node `id`.
    pub async fn info(&self, id: u64) -> Result<Value, ChaosError> {
        let r = self
            .http
            .get(self.url(id, "/v1/cluster")?)
            .timeout(Duration::from_secs(1))
            .send()
            .await?;
        Ok(r.json().await?)
    }

    /// POST a cluster API call to node `id`: (status, body).
    pub async fn post(&self, id: u64, path: &str, body: Value) -> Result<(u16, Value), ChaosError> {
        let r = self
            .http
            .post(self.url(id, path)?)
            .json(&body)
            .timeout(Duration::from_secs(35))
            .send()
            .await?;
        let st = r.status().as_u16();
        Ok((st, r.json().await.unwrap_or(Value::Null)))
    }

    /// Ids of nodes whose process runs and is not paused.
    pub fn live(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|n| n.running() && !n.paused)
            .map(|n| n.id)
            .collect()
    }

    /// The leader as named by a live node that is itself the leader (highest term wins).
    pub async fn leader(&self) -> Option<u64> {
        let mut best: Option<(u64, u64)> = None;
        for id in self.live() {
            if let Ok(info) = self.info(id).await
                && info["role"] == "leader"
            {
                let term = info["term"].as_u64().unwrap_or(0);
                if best.is_none_or(|(t, _)| term > t) {
                    best = Some((term, id));
                }
            }
        }
        best.map(|(_, id)| id)
    }

    /// Waits until some node leads.
    pub async fn wait_leader(&self, timeout: Duration) -> Result<u64, ChaosError> {
        wait(timeout, "a leader", || self.leader()).await
    }

    /// The leader's voters and learners.
    pub async fn members(&self) -> Result<(Vec<u64>, Vec<u64>), ChaosError> {
        let leader = self.wait_leader(Duration::from_secs(10)).await?;
        let info = self.info(leader).await?;
        let mut voters = Vec::new();
        let mut learners = Vec::new();
        for m in info["members"].as_array().into_iter().flatten() {
            let Some(id) = m["id"].as_u64() else { continue };
            if m["role"] == "voter" {
                voters.push(id);
            } else {
                learners.push(id);
            }
        }
        Ok((voters, learners))
    }

    /// Repeats a cluster API call through live nodes until it answers 200/201, or fails after `timeout`.
    pub async fn cluster_call(
        &self,
        path: &str,
        body: Value,
        timeout: Duration,
    ) -> Result<Value, ChaosError> {
        cluster_call(&self.http, self.live_urls(), path, body, timeout).await
    }

    /// Base URLs of the live nodes.
    pub fn live_urls(&self) -> Vec<String> {
        self.live()
            .iter()
            .filter_map(|id| self.url(*id, "").ok())
            .collect()
    }

    /// Adds `id` as a learner (waiting for it to catch up) and promotes it to voter.
    pub async fn join(&self, id: u64, timeout: Duration) -> Result<(), ChaosError> {
        let n = self.node(id)?;
        let learner = json!({"id": id, "api_addr": n.proxy_api.to_string(), "raft_addr": n.proxy_raft.to_string(), "wait": true});
        self.cluster_call("/v1/cluster/learners", learner, timeout)
            .await?;
        self.cluster_call(
            "/v1/cluster/membership",
            json!({"add_voters": [id]}),
            timeout,
        )
        .await?;
        Ok(())
    }

    /// Starts `voters`, initializes the cluster on the first and joins the others one by one.
    pub async fn form(&mut self, voters: &[u64]) -> Result<(), ChaosError> {
        for id in voters {
            self.start(*id)?;
        }
        for id in voters {
            let url = self.url(*id, "/healthz")?;
            let http = &self.http;
            wait(
                Duration::from_secs(15),
                &format!("node {id} up"),
                || async {
                    http.get(&url)
                        .send()
                        .await
                        .ok()
                        .filter(|r| r.status().is_success())
                        .map(|_| ())
                },
            )
            .await?;
        }
        let first = *voters
            .first()
            .ok_or_else(|| ChaosError::Cluster("no voters".into()))?;
        let (st, body) = self.post(first, "/v1/cluster/init", json!({})).await?;
        if st != 201 {
            return Err(ChaosError::Cluster(format!("init: {st} {body}")));
        }
        self.wait_leader(Duration::from_secs(10)).await?;
        for id in &voters[1..] {
            self.join(*id, Duration::from_secs(20)).await?;
        }
        Ok(())
    }

    /// The last lines of a node's log.
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let Ok(n) = self.node(id) else {
            return String::new();
        };
        let text = std::fs::read_to_string(&n.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
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

/// Repeats a cluster API call (`POST path`) through `urls` in turn (any node forwards to
/// the leader) until one answers 200/201, or fails after `timeout` with the last answer.
/// Takes no `&Cluster`, so it can run in a task while the cluster is being faulted.
pub async fn cluster_call(
    http: &reqwest::Client,
    urls: Vec<String>,
    path: &str,
    body: Value,
    timeout: Duration,
) -> Result<Value, ChaosError> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no node tried");
    let mut i = 0usize;
    loop {
        if let Some(url) = urls.get(i % urls.len().max(1)) {
            let sent = http
                .post(format!("{url}{path}"))
                .json(&body)
                .timeout(Duration::from_secs(35))
                .send()
                .await;
            match sent {
                Ok(r) => {
                    let st = r.status().as_u16();
                    let b: Value = r.json().await.unwrap_or(Value::Null);
                    if st == 200 || st == 201 {
                        return Ok(b);
                    }
                    last = format!("{st} {b}");
                }
                Err(e) => last = e.to_string(),
            }
        }
        i += 1;
        if Instant::now() >= deadline {
            return Err(ChaosError::Cluster(format!(
                "{path} {body}: last answer {last}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `f` every 50 ms until it yields `Some`, or fails after `timeout`.
pub async fn wait<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> Result<T, ChaosError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(ChaosError::Timeout(timeout, what.to_string()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
