//! Test helpers: clusters of real `kvserver` processes through kvchaos's process
//! harness (free loopback ports, temporary data directories, everything killed
//! and removed on drop, log tails printed when a test fails), the raw HTTP
//! helpers the tests assert with, background writers, and polling helpers that
//! wait on conditions with deadlines.

#![allow(dead_code)]

pub mod backup;
pub mod inproc;
pub mod pg;
pub mod s3;
pub mod sse;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

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

/// Starts an in-process node with `start_node()` and waits until it is ready;
/// returns it with its `http://` base URL.
pub async fn start_ready(cfg: kvserver::Config) -> anyhow::Result<(kvserver::NodeHandle, String)> {
    let h = kvserver::start_node(cfg).await?;
    let base = format!("http://{}", h.api_addr);
    wait_status(
        &client(),
        "node ready",
        reqwest::Method::GET,
        &format!("{base}/readyz"),
        None,
        200,
    )
    .await?;
    Ok((h, base))
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
    Ok(kvchaos::wait::wait(timeout, what, f).await?)
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
    kvserver::tls::http_builder()
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

/// A cluster of real kvserver processes: kvchaos's process harness (the one the
/// fault campaign and the benchmark use, here without proxies), plus the raw
/// HTTP helpers tests assert with. Harness methods (`form`, `join`, `start`,
/// `wait_applied`, `wait_leader`, …) come through `Deref`.
pub struct Cluster {
    inner: kvchaos::cluster::Cluster,
}

impl std::ops::Deref for Cluster {
    type Target = kvchaos::cluster::Cluster;
    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl std::ops::DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
}

impl Cluster {
    /// Every multi-process test runs with TLS on both ports (peer mTLS with member
    /// identities, HTTPS for clients) and a bearer token on every request, as
    /// every cluster in Kubernetes does.
    fn builder(extra_args: &[&str]) -> kvchaos::cluster::ClusterBuilder {
        kvchaos::cluster::Cluster::builder(env!("CARGO_BIN_EXE_kvserver"))
            .tls(true)
            .auth(true)
            .args(extra_args.iter().copied())
            .http_timeout(Duration::from_secs(30))
            .dump_logs_on_panic(true)
    }

    /// `extra_args` are passed to every node (e.g. `--set raft.snapshot_after_entries=20`).
    pub fn new(extra_args: &[&str]) -> Self {
        Self {
            inner: Self::builder(extra_args).build().expect("cluster harness"),
        }
    }

    /// A cluster whose node-to-node links run through kvchaos's proxies, so a test can
    /// cut them (`links.partition`) while it still reaches every node directly.
    pub fn partitionable(extra_args: &[&str]) -> Self {
        Self {
            inner: Self::builder(extra_args)
                .proxies(true)
                .build()
                .expect("cluster harness"),
        }
    }

    /// A cluster with plaintext ports, for tests that speak raw HTTP over their own
    /// sockets (what they test is not the transport).
    pub fn plaintext(extra_args: &[&str]) -> Self {
        Self {
            inner: Self::builder(extra_args)
                .tls(false)
                .build()
                .expect("cluster harness"),
        }
    }

    /// A cluster whose nodes store their state in `pg` (one schema per node).
    /// The URL with its password goes through the environment, as in production.
    pub fn with_postgres(pg: &pg::Postgres, extra_args: &[&str]) -> Self {
        let inner = Self::builder(extra_args)
            .args(["--set", "storage.backend=postgres"])
            .env("KV_STORAGE_POSTGRES_URL", pg.url())
            .build()
            .expect("cluster harness");
        Self { inner }
    }

    /// A cluster with its own `cluster_id` (a restored cluster, say), on `pg` when given.
    pub fn with_id(cluster_id: &str, pg: Option<&pg::Postgres>, extra_args: &[&str]) -> Self {
        let mut b = Self::builder(extra_args).cluster_id(cluster_id);
        if let Some(pg) = pg {
            b = b
                .args(["--set", "storage.backend=postgres"])
                .env("KV_STORAGE_POSTGRES_URL", pg.url());
        }
        Self {
            inner: b.build().expect("cluster harness"),
        }
    }

    /// Creates node `id` (fresh ports and data dir) and starts it.
    pub fn add_node(&mut self, id: u64) -> anyhow::Result<()> {
        self.inner.add_node(id)?;
        Ok(self.inner.start(id)?)
    }

    /// Starts nodes `1..=n`, initializes the cluster on node 1, adds the others as
    /// learners and promotes them. Returns the leader id.
    pub async fn form(&mut self, n: u64) -> anyhow::Result<u64> {
        let ids: Vec<u64> = (1..=n).collect();
        Ok(self.inner.form(&ids).await?)
    }

    /// Adds node `id` as a learner (waiting for catch-up) and promotes it.
    pub async fn join(&self, id: u64) -> anyhow::Result<()> {
        Ok(self.inner.join(id, Duration::from_secs(20)).await?)
    }

    /// `kill -9`.
    pub fn kill(&mut self, id: u64) {
        let _ = self.inner.kill(id);
    }

    /// `SIGSTOP` (`stop: true`) or `SIGCONT`: the process keeps its sockets and memory.
    pub fn freeze(&mut self, id: u64, stop: bool) -> anyhow::Result<()> {
        if stop {
            self.inner.pause(id)?;
        } else {
            self.inner.resume(id)?;
        }
        Ok(())
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(
        &mut self,
        id: u64,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        match self.inner.terminate(id, timeout).await? {
            Some((Some(status), _)) => Ok(status),
            Some((None, _)) => bail!("node {id} was not running"),
            None => bail!("node {id} did not exit within {timeout:?} after SIGTERM"),
        }
    }

    /// Waits until node `id` answers HTTP.
    pub async fn wait_up(&self, id: u64) -> anyhow::Result<()> {
        Ok(self.inner.wait_up(id, Duration::from_secs(20)).await?)
    }

    pub fn url(&self, id: u64, path: &str) -> String {
        self.inner.url(id, path).unwrap_or_else(|e| panic!("{e}"))
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
        Ok(self.inner.committed_index(id).await?)
    }

    /// Waits until `leader` has purged its log past `index` (behind a snapshot).
    pub async fn wait_purged_past(&self, leader: u64, index: u64) -> anyhow::Result<()> {
        Ok(self.inner.wait_purged_past(leader, index).await?)
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

    /// `GET /v1/cluster` as JSON, for assertions on the API's own shape.
    pub async fn cluster_info(&self, id: u64) -> anyhow::Result<Value> {
        let (st, body) = self.get(id, "/v1/cluster").await?;
        if st != 200 {
            bail!("GET /v1/cluster on {id}: {st}");
        }
        Ok(body)
    }

    /// Waits until every running node reports the same leader, and returns it.
    pub async fn wait_leader(&self, timeout: Duration) -> anyhow::Result<u64> {
        Ok(self.inner.wait_leader(timeout).await?)
    }

    /// Waits until the nodes `ids` report the same leader, and returns it.
    pub async fn wait_leader_among(&self, ids: &[u64], timeout: Duration) -> anyhow::Result<u64> {
        Ok(self.inner.wait_leader_among(ids, timeout).await?)
    }

    /// Waits until node `id` has applied at least `index`.
    pub async fn wait_applied(&self, id: u64, index: u64, timeout: Duration) -> anyhow::Result<()> {
        Ok(self.inner.wait_applied(id, index, timeout).await?)
    }

    /// Fails unless node `id` (read locally) holds every key in `acked` under `prefix`.
    pub async fn ensure_all_present(
        &self,
        id: u64,
        prefix: &str,
        acked: &[String],
    ) -> anyhow::Result<()> {
        let lost = self.inner.missing(id, prefix, acked).await?;
        if !lost.is_empty() {
            bail!(
                "node {id} lost {} acknowledged writes, e.g. {:?}",
                lost.len(),
                &lost[..lost.len().min(5)]
            );
        }
        Ok(())
    }

    /// Fails the test with `e`, after printing the node logs.
    pub fn fail(&self, e: anyhow::Error) -> ! {
        self.dump_logs();
        panic!("{e:#}");
    }
}

/// The value of a Prometheus series in a metrics page (kvchaos's, shared with e2e).
#[allow(unused_imports)] // not every test binary reads metrics
pub use kvchaos::metrics::value as metric;
