//! Test harness: real `kvserver` processes on 127.0.0.1 with free ports and
//! temporary data directories, plus polling helpers that wait on conditions
//! with deadlines. Everything started is killed and removed on drop; when a
//! test fails, the tail of every node's log is printed.

#![allow(dead_code)]

pub mod pg;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::bail;
use serde_json::Value;
use serde_json::json;

/// Configuration of an in-process node 1 on ephemeral loopback ports with its data in `dir`.
pub fn local_config(dir: &std::path::Path, bootstrap: bool) -> kvserver::Config {
    kvserver::Config {
        node_id: Some(1),
        data_dir: dir.join("data"),
        api_addr: "127.0.0.1:0".into(),
        raft_addr: "127.0.0.1:0".into(),
        bootstrap,
        ..kvserver::Config::default()
    }
}

/// A free loopback port not handed out before in this process (shared with kvchaos's harness).
pub fn free_port() -> u16 {
    kvchaos::cluster::free_port().expect("bind port 0")
}

/// Polls `f` every 50 ms until it yields `Some`, or fails after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    Ok(kvchaos::cluster::wait(timeout, what, f).await?)
}

/// Repeats a request until it answers `status` (within 20 s); returns the JSON body.
pub async fn wait_status(
    http: &reqwest::Client,
    what: &str,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
    status: u16,
) -> anyhow::Result<Value> {
    wait_for(what, Duration::from_secs(20), || {
        let mut req = http.request(method.clone(), url);
        if let Some(b) = &body {
            req = req.json(b);
        }
        async move {
            let r = req
                .send()
                .await
                .ok()
                .filter(|r| r.status().as_u16() == status)?;
            Some(r.json::<Value>().await.unwrap_or(Value::Null))
        }
    })
    .await
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .expect("http client")
}

/// What one background writer saw.
#[derive(Debug, Default)]
pub struct WriterReport {
    /// Keys whose PUT was acknowledged (2xx).
    pub acked: Vec<String>,
    /// Count of every HTTP status received.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that got no HTTP response at all (connection refused/reset, client timeout).
    pub transport_errors: u64,
    /// Every failure by what it was: `"<status> <error code>"`, or
    /// `"transport error to node <id>"` when no HTTP answer came.
    pub errors: BTreeMap<String, u64>,
}

/// Writers spread unique keys over all nodes until `stop` (at most 5000 each).
pub fn spawn_writers(
    c: &Cluster,
    writers: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<WriterReport>> {
    let all: Vec<u64> = c.nodes.keys().copied().collect();
    spawn_writers_to(c, &all, writers, stop)
}

/// Writers spread unique keys (`burst/<writer>/<n>`) over the nodes `targets`
/// until `stop` (at most 5000 each).
pub fn spawn_writers_to(
    c: &Cluster,
    targets: &[u64],
    writers: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<WriterReport>> {
    let urls: Vec<(u64, String)> = targets.iter().map(|id| (*id, c.url(*id, ""))).collect();
    (0..writers)
        .map(|w| {
            let http = c.http.clone();
            let urls = urls.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut report = WriterReport::default();
                let mut i = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 5000 {
                    let key = format!("burst/{w}/{i}");
                    let (node, base) = &urls[(w + i) % urls.len()];
                    let url = format!("{base}/v1/kv/{key}");
                    i += 1;
                    match http
                        .put(&url)
                        .timeout(Duration::from_secs(20))
                        .json(&json!({"value": key}))
                        .send()
                        .await
                    {
                        Ok(r) => {
                            let st = r.status().as_u16();
                            *report.statuses.entry(st).or_default() += 1;
                            if r.status().is_success() {
                                report.acked.push(key);
                                continue;
                            }
                            let body: Value = r.json().await.unwrap_or_default();
                            let code = body["error"]["code"].as_str().unwrap_or("?");
                            *report.errors.entry(format!("{st} {code}")).or_default() += 1;
                        }
                        // Failures during a crash window are expected; only acks count.
                        Err(_) => {
                            report.transport_errors += 1;
                            *report
                                .errors
                                .entry(format!("transport error to node {node}"))
                                .or_default() += 1;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                report
            })
        })
        .collect()
}

/// One node process (may be stopped and restarted on the same ports and data dir).
pub struct TestNode {
    pub id: u64,
    pub api_port: u16,
    pub raft_port: u16,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    pub child: Option<Child>,
}

impl TestNode {
    pub fn api(&self) -> String {
        format!("127.0.0.1:{}", self.api_port)
    }
    pub fn raft(&self) -> String {
        format!("127.0.0.1:{}", self.raft_port)
    }
}

/// A set of kvserver processes sharing a cluster id.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: BTreeMap<u64, TestNode>,
    pub http: reqwest::Client,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
    /// Unique per cluster, so clusters sharing a PostgreSQL server get their own schemas.
    pub cluster_id: String,
}

impl Cluster {
    /// `extra_args` are passed to every node (e.g. `--set raft.snapshot_after_entries=20`).
    pub fn new(extra_args: &[&str]) -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            nodes: BTreeMap::new(),
            http: client(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            cluster_id: format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
        }
    }

    /// A cluster whose nodes store their state in `pg` (one schema per node).
    /// The URL with its password goes through the environment, as in production.
    pub fn with_postgres(pg: &pg::Postgres, extra_args: &[&str]) -> Self {
        let mut c = Self::new(extra_args);
        c.extra_args
            .extend(["--set".to_string(), "storage.backend=postgres".to_string()]);
        c.env.push(("KV_STORAGE_POSTGRES_URL".into(), pg.url()));
        c
    }

    /// Creates node `id` (fresh ports and data dir) and starts it.
    pub fn add_node(&mut self, id: u64) -> anyhow::Result<()> {
        let data_dir = self.dir.path().join(format!("node-{id}"));
        let log_path = self.dir.path().join(format!("node-{id}.log"));
        let node = TestNode {
            id,
            api_port: free_port(),
            raft_port: free_port(),
            data_dir,
            log_path,
            child: None,
        };
        self.nodes.insert(id, node);
        self.start(id)
    }

    /// (Re)starts the process of node `id`.
    pub fn start(&mut self, id: u64) -> anyhow::Result<()> {
        let extra = self.extra_args.clone();
        let env = self.env.clone();
        let cluster_id = self.cluster_id.clone();
        let node = self.nodes.get_mut(&id).context("unknown node")?;
        if node.child.is_some() {
            bail!("node {id} is already running");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)?;
        let child = Command::new(env!("CARGO_BIN_EXE_kvserver"))
            .arg("--node-id")
            .arg(id.to_string())
            .arg("--cluster-id")
            .arg(&cluster_id)
            .arg("--data-dir")
            .arg(&node.data_dir)
            .arg("--api-addr")
            .arg(node.api())
            .arg("--raft-addr")
            .arg(node.raft())
            .arg("--log-format")
            .arg("json")
            .args(&extra)
            .env_remove("HOSTNAME")
            .envs(env)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning kvserver")?;
        node.child = Some(child);
        Ok(())
    }

    /// `kill -9`.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.nodes.get_mut(&id).and_then(|n| n.child.take()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `SIGSTOP` (`stop: true`) or `SIGCONT`: the process keeps its sockets and memory.
    pub fn freeze(&self, id: u64, stop: bool) -> anyhow::Result<()> {
        let child = self.nodes[&id].child.as_ref().context("node not running")?;
        kvchaos::cluster::signal(child.id(), if stop { "-STOP" } else { "-CONT" })?;
        Ok(())
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(
        &mut self,
        id: u64,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let node = self.nodes.get_mut(&id).context("unknown node")?;
        let mut child = node.child.take().context("node not running")?;
        let st = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()?;
        if !st.success() {
            bail!("kill -TERM failed");
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("node {id} did not exit within {timeout:?} after SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|n| n.child.is_some())
            .map(|n| n.id)
            .collect()
    }

    pub fn url(&self, id: u64, path: &str) -> String {
        format!("http://{}{}", self.nodes[&id].api(), path)
    }

    /// GET returning (status, json body).
    pub async fn get(&self, id: u64, path: &str) -> anyhow::Result<(u16, Value)> {
        let r = self.http.get(self.url(id, path)).send().await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    pub async fn post(&self, id: u64, path: &str, body: Value) -> anyhow::Result<(u16, Value)> {
        let r = self
            .http
            .post(self.url(id, path))
            .json(&body)
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    pub async fn put_kv(&self, id: u64, key: &str, value: &str) -> anyhow::Result<(u16, Value)> {
        let r = self
            .http
            .put(self.url(id, &format!("/v1/kv/{key}")))
            .json(&json!({"value": value}))
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    /// Node `id`'s committed index, as it reports it.
    pub async fn committed_index(&self, id: u64) -> anyhow::Result<u64> {
        self.cluster_info(id).await?["committed_index"]
            .as_u64()
            .context("committed")
    }

    /// Waits until `leader` has purged its log past `index` (behind a snapshot).
    pub async fn wait_purged_past(&self, leader: u64, index: u64) -> anyhow::Result<()> {
        wait_for(
            "leader purged the log behind a snapshot",
            Duration::from_secs(10),
            || async move {
                let info = self.cluster_info(leader).await.ok()?;
                (info["purged_index"].as_u64()? > index + 1).then_some(())
            },
        )
        .await
    }

    /// Node `id`'s Prometheus metrics text.
    pub async fn metrics_text(&self, id: u64) -> anyhow::Result<String> {
        Ok(self
            .http
            .get(self.url(id, "/metrics"))
            .send()
            .await?
            .text()
            .await?)
    }

    /// Reads a key; returns its value or None when 404.
    pub async fn read(&self, id: u64, key: &str, stale: bool) -> anyhow::Result<Option<String>> {
        let q = if stale { "?consistency=stale" } else { "" };
        let (st, body) = self.get(id, &format!("/v1/kv/{key}{q}")).await?;
        match st {
            200 => Ok(body["kv"]["value"].as_str().map(str::to_string)),
            404 => Ok(None),
            other => bail!("GET {key} on node {id}: {other} {body}"),
        }
    }

    pub async fn cluster_info(&self, id: u64) -> anyhow::Result<Value> {
        let (st, body) = self.get(id, "/v1/cluster").await?;
        if st != 200 {
            bail!("GET /v1/cluster on {id}: {st}");
        }
        Ok(body)
    }

    /// Waits until node `id` answers HTTP.
    pub async fn wait_up(&self, id: u64) -> anyhow::Result<()> {
        let url = self.url(id, "/healthz");
        let http = self.http.clone();
        wait_for(
            &format!("node {id} /healthz"),
            Duration::from_secs(20),
            || {
                let (http, url) = (http.clone(), url.clone());
                async move {
                    http.get(&url)
                        .send()
                        .await
                        .ok()
                        .filter(|r| r.status().is_success())
                        .map(|_| ())
                }
            },
        )
        .await
    }

    /// Waits until every running node reports the same leader, and returns it.
    pub async fn wait_leader(&self, timeout: Duration) -> anyhow::Result<u64> {
        self.wait_leader_among(&self.running(), timeout).await
    }

    /// Waits until the nodes `ids` report the same leader, and returns it.
    pub async fn wait_leader_among(&self, ids: &[u64], timeout: Duration) -> anyhow::Result<u64> {
        let running = ids.to_vec();
        wait_for("an agreed leader", timeout, || {
            let running = running.clone();
            async move {
                let mut leader = None;
                for id in &running {
                    let info = self.cluster_info(*id).await.ok()?;
                    let l = info["leader_id"].as_u64()?;
                    if leader.is_some_and(|x| x != l) {
                        return None;
                    }
                    leader = Some(l);
                }
                let l = leader?;
                let info = self.cluster_info(l).await.ok()?;
                (info["role"] == "leader").then_some(l)
            }
        })
        .await
    }

    /// Starts nodes `1..=n`, initializes the cluster on node 1, adds the others as
    /// learners and promotes them. Returns the leader id.
    pub async fn form(&mut self, n: u64) -> anyhow::Result<u64> {
        for id in 1..=n {
            self.add_node(id)?;
        }
        for id in 1..=n {
            self.wait_up(id).await?;
        }
        let (st, body) = self.post(1, "/v1/cluster/init", json!({})).await?;
        if st != 201 {
            bail!("init: {st} {body}");
        }
        self.wait_leader_among(&[1], Duration::from_secs(10))
            .await?;
        for id in 2..=n {
            self.join(id).await?;
        }
        self.wait_leader(Duration::from_secs(10)).await
    }

    /// Adds node `id` as a learner (waiting for catch-up) and promotes it, through node 1's API.
    pub async fn join(&self, id: u64) -> anyhow::Result<()> {
        let via = *self
            .running()
            .iter()
            .find(|x| **x != id)
            .context("no other node")?;
        let node = &self.nodes[&id];
        let (st, body) = self
            .post(
                via,
                "/v1/cluster/learners",
                json!({"id": id, "api_addr": node.api(), "raft_addr": node.raft(), "wait": true}),
            )
            .await?;
        if st != 200 {
            bail!("add learner {id}: {st} {body}");
        }
        let (st, body) = self
            .post(via, "/v1/cluster/membership", json!({"add_voters": [id]}))
            .await?;
        if st != 200 {
            bail!("promote {id}: {st} {body}");
        }
        Ok(())
    }

    /// Waits until node `id` has applied at least `index`.
    pub async fn wait_applied(&self, id: u64, index: u64, timeout: Duration) -> anyhow::Result<()> {
        wait_for(
            &format!("node {id} applied >= {index}"),
            timeout,
            || async move {
                let info = self.cluster_info(id).await.ok()?;
                (info["applied_index"].as_u64()? >= index).then_some(())
            },
        )
        .await
    }

    /// Fails unless node `id` (read locally) holds every key in `acked` under `prefix`.
    pub async fn ensure_all_present(
        &self,
        id: u64,
        prefix: &str,
        acked: &[String],
    ) -> anyhow::Result<()> {
        let (s, body) = self
            .get(
                id,
                &format!("/v1/kv?prefix={prefix}&keys_only=true&limit=10000&consistency=stale"),
            )
            .await?;
        if s != 200 {
            bail!("list on {id}: {s}");
        }
        let present: std::collections::HashSet<&str> = body["kvs"]
            .as_array()
            .context("kvs")?
            .iter()
            .filter_map(|k| k["key"].as_str())
            .collect();
        let lost: Vec<&String> = acked
            .iter()
            .filter(|k| !present.contains(k.as_str()))
            .collect();
        if !lost.is_empty() {
            bail!(
                "node {id} lost {} acknowledged writes, e.g. {:?}",
                lost.len(),
                &lost[..lost.len().min(5)]
            );
        }
        Ok(())
    }

    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.nodes[&id].log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Prints the tail of every node's log (for failed tests).
    pub fn dump_logs(&self) {
        for id in self.nodes.keys() {
            eprintln!("----- node {id} log tail -----\n{}", self.log_tail(*id, 60));
        }
    }

    /// Fails the test with `e`, after printing the node logs.
    pub fn fail(&self, e: anyhow::Error) -> ! {
        self.dump_logs();
        panic!("{e:#}");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        if std::thread::panicking() {
            self.dump_logs();
        }
        for id in ids {
            self.kill(id);
        }
    }
}

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
        let resp = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(2))
            .build()
            .unwrap_or_else(|_| http.clone())
            .get(url)
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
