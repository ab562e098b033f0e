//! Hostile clients and peers against real nodes (TLS, auth): slowloris, a flood
//! of idle connections, greedy batch gets and listings, a thousand stalled
//! watchers, a flood of peer connections. Each attack must be answered by its
//! limit (docs/security.md) while an honest client keeps being served; each
//! test prints the node's memory and the honest client's latency during the
//! attack (the figures of the closing note), and asserts only what must hold:
//! the refusals, bounded memory, and no failed or hung honest request.

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::ensure;
use common::Cluster;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;

/// Resident memory of node `id`'s process, in MiB.
fn rss_mib(c: &Cluster, id: u64) -> anyhow::Result<f64> {
    let pid = c.node(id)?.pid().context("node running")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")?;
    Ok(kib / 1024.0)
}

/// A client with a connection pool of its own (clones of `c.http` share one).
fn own_client(c: &Cluster) -> anyhow::Result<reqwest::Client> {
    Ok(kvserver::tls::http_builder()
        .tls_backend_preconfigured(c.client_tls().context("tls")?.rustls_config()?)
        .build()?)
}

/// An honest client: GETs of one key, back to back on one kept-alive
/// connection of its own, until `stop`; every answer must be 200 within 5 s.
fn honest(
    c: &Cluster,
    node: u64,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<anyhow::Result<Vec<Duration>>> {
    let http = own_client(c);
    let token = c.auth.as_ref().map(|a| a.admin.clone()).unwrap_or_default();
    let url = c.url(node, "/v1/kv/probe");
    tokio::spawn(async move {
        let http = http?;
        let mut lat = Vec::new();
        while !stop.load(Ordering::Relaxed) || lat.len() < 20 {
            let t = Instant::now();
            let r = http
                .get(&url)
                .bearer_auth(&token)
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .with_context(|| format!("honest request {} failed", lat.len()))?;
            ensure!(r.status().as_u16() == 200, "honest read: {}", r.status());
            // Read to the end, or the connection cannot be reused.
            r.bytes().await?;
            lat.push(t.elapsed());
        }
        Ok(lat)
    })
}

/// Scrapes node `node`'s metrics back to back on a connection of its own until
/// `stop`; the largest value of `gauge` seen and the last text.
fn scraper(
    c: &Cluster,
    node: u64,
    gauge: &'static str,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<(f64, String)>>> {
    let http = own_client(c)?;
    let url = c.url(node, "/metrics");
    Ok(tokio::spawn(async move {
        let mut max: f64 = 0.0;
        let mut last = String::new();
        while !stop.load(Ordering::Relaxed) || last.is_empty() {
            let text = http
                .get(&url)
                .timeout(Duration::from_secs(5))
                .send()
                .await?
                .text()
                .await?;
            max = max.max(kvchaos::metrics::value(&text, gauge));
            last = text;
        }
        Ok((max, last))
    }))
}

fn percentiles(mut lat: Vec<Duration>) -> String {
    lat.sort();
    let at = |q: f64| lat[((lat.len() as f64 - 1.0) * q) as usize];
    format!(
        "{} requests, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lat.len(),
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3
    )
}

/// A TLS connector trusting the cluster's CA (the harness's client certificate).
fn connector(c: &Cluster) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let config = c.client_tls().context("tls")?.rustls_config()?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

async fn tls_connect(
    c: &Cluster,
    addr: std::net::SocketAddr,
    recv_buffer: Option<u32>,
) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    if let Some(b) = recv_buffer {
        sock.set_recv_buffer_size(b)?;
    }
    let tcp = sock.connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1")?.to_owned();
    Ok(connector(c)?.connect(name, tcp).await?)
}

async fn seed_probe(c: &Cluster, node: u64) -> anyhow::Result<()> {
    let (s, b) = c.put_kv(node, "probe", "p").await?;
    ensure!(s == 200 || s == 201, "probe: {s} {b}");
    Ok(())
}

async fn slowloris(c: &mut Cluster) -> anyhow::Result<()> {
    c.form(1).await?;
    seed_probe(c, 1).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let prober = honest(c, 1, stop.clone());
    let mut attackers = Vec::new();
    for _ in 0..50 {
        let mut s = tls_connect(c, c.nodes[&1].api, None).await?;
        attackers.push(tokio::spawn(async move {
            let t = Instant::now();
            s.write_all(b"GET /v1/cluster HTTP/1.1\r\nHost: x\r\n")
                .await?;
            // One header line every 200 ms, never the blank line that ends them.
            for i in 0..200 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let line = format!("x-slow-{i}: y\r\n");
                if s.write_all(line.as_bytes()).await.is_err() || s.flush().await.is_err() {
                    return Ok::<_, anyhow::Error>(t.elapsed());
                }
                let mut buf = [0u8; 256];
                if let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await
                {
                    // The server answered (408/400) or closed: either way, done with us.
                    let _ = n;
                    return Ok(t.elapsed());
                }
            }
            anyhow::bail!("a slowloris connection stayed open for 40 s")
        }));
    }
    let mut closed_after = Vec::new();
    for a in attackers {
        closed_after.push(a.await??);
    }
    stop.store(true, Ordering::Relaxed);
    let lat = prober.await??;
    let max = closed_after.iter().max().copied().unwrap_or_default();
    ensure!(
        max < Duration::from_secs(10),
        "slowloris connections lived {max:?}"
    );
    eprintln!(
        "slowloris: 50 connections trickling headers closed after at most {max:?} (limits.header_read_timeout_ms = 1000); honest client: {}; node RSS {:.0} MiB",
        percentiles(lat),
        rss_mib(c, 1)?
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_after_the_header_timeout() {
    let mut c = Cluster::new(&["--set", "limits.header_read_timeout_ms=1000"]);
    if let Err(e) = slowloris(&mut c).await {
        c.fail(e);
    }
}

/// The soft limit on open files of this process.
fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

async fn idle_flood(c: &mut Cluster) -> anyhow::Result<()> {
    const FLOOD: usize = 10_000;
    let limit = open_files_limit();
    ensure!(
        limit >= FLOOD as u64 + 1000,
        "this test holds {FLOOD} sockets; the open-files limit is {limit} (scripts/test.sh raises it to the hard limit)"
    );
    c.form(1).await?;
    seed_probe(c, 1).await?;
    let before = rss_mib(c, 1)?;
    let stop = Arc::new(AtomicBool::new(false));
    let prober = honest(c, 1, stop.clone());
    let scrape = scraper(c, 1, "kv_api_connections", stop.clone())?;
    let addr = c.nodes[&1].api;
    let t = Instant::now();
    let mut held = Vec::with_capacity(FLOOD);
    let mut failed = 0usize;
    for _ in 0..FLOOD {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => held.push(s),
            Err(_) => failed += 1,
        }
    }
    let opened = t.elapsed();
    let during = rss_mib(c, 1)?;
    // The flood goes away; what the node still holds of it closes at once.
    drop(held);
    // Left: the honest client's, the scraper's and the harness's own.
    let closed = common::wait_for(
        "the flood's connections closed",
        Duration::from_secs(30),
        || async {
            let m = c.metrics_text(1).await.ok()?;
            (kvchaos::metrics::value(&m, "kv_api_connections") <= 8.0).then_some(())
        },
    )
    .await;
    if let Err(e) = closed {
        let m = c.metrics_text(1).await?;
        anyhow::bail!(
            "{e}: {} open",
            kvchaos::metrics::value(&m, "kv_api_connections")
        );
    }
    stop.store(true, Ordering::Relaxed);
    let lat = prober.await??;
    let (open_max, m) = scrape.await??;
    let refused = kvchaos::metrics::value(&m, "kv_api_limited_total{limit=\"connections\"}");
    ensure!(
        open_max <= 512.0,
        "{open_max} connections open over the cap of 512"
    );
    ensure!(refused > 0.0, "the cap refused nothing");
    let after = rss_mib(c, 1)?;
    ensure!(
        during - before < 256.0,
        "RSS grew from {before:.0} to {during:.0} MiB"
    );
    // New connections work again once the flood is gone.
    common::wait_for(
        "a new connection served",
        Duration::from_secs(20),
        || async {
            let (s, _) = c.get(1, "/v1/kv/probe").await.ok()?;
            (s == 200).then_some(())
        },
    )
    .await?;
    eprintln!(
        "idle flood: {FLOOD} connections opened in {opened:?} ({failed} failed to connect); at most {open_max} held by the node (cap 512), {refused} refused at once; node RSS {before:.0} -> {during:.0} -> {after:.0} MiB; honest client on its kept-alive connection: {}",
        percentiles(lat)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_are_capped() {
    let mut c = Cluster::new(&[
        "--set",
        "limits.max_connections=512",
        "--set",
        "limits.header_read_timeout_ms=2000",
    ]);
    if let Err(e) = idle_flood(&mut c).await {
        c.fail(e);
    }
}

async fn greedy_reads(c: &mut Cluster) -> anyhow::Result<()> {
    c.form(1).await?;
    seed_probe(c, 1).await?;
    let value = "x".repeat(1_000_000);
    for i in 0..20 {
        let (s, b) = c.put_kv(1, &format!("big/{i:02}"), &value).await?;
        ensure!(s == 201, "big/{i}: {s} {b}");
    }
    let before = rss_mib(c, 1)?;
    let stop = Arc::new(AtomicBool::new(false));
    let prober = honest(c, 1, stop.clone());
    // One 1 MB key asked for 10,000 times: ~10 GB if answered as asked.
    let keys: Vec<&str> = vec!["big/00"; 10_000];
    let t = Instant::now();
    let (s, b) = c.post(1, "/v1/batch/get", json!({ "keys": keys })).await?;
    let one_key = t.elapsed();
    ensure!(s == 200, "{s} {}", b["error"]);
    ensure!(
        b["kvs"].as_array().map(Vec::len) == Some(1),
        "one key, once"
    );
    // 20 distinct 1 MB keys against an 8 MiB answer: refused.
    let all: Vec<String> = (0..20).map(|i| format!("big/{i:02}")).collect();
    let (s, b) = c.post(1, "/v1/batch/get", json!({ "keys": all })).await?;
    ensure!(
        s == 413 && b["error"]["code"] == "response_too_large",
        "{s} {}",
        b["error"]
    );
    // A listing pages at the byte limit instead.
    let mut listed = 0;
    let mut pages = 0;
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            None => "/v1/kv?prefix=big/".to_string(),
            Some(a) => format!("/v1/kv?prefix=big/&start_after={a}"),
        };
        let (s, b) = c.get(1, &path).await?;
        ensure!(s == 200, "{s} {}", b["error"]);
        let n = b["count"].as_u64().context("count")?;
        ensure!(n <= 8, "a page of {n} MB over the 8 MiB limit");
        listed += n;
        pages += 1;
        if b["more"] != true {
            break;
        }
        after = b["next_start_after"].as_str().map(str::to_string);
    }
    ensure!(listed == 20, "listed {listed} of 20");
    stop.store(true, Ordering::Relaxed);
    let lat = prober.await??;
    let after_rss = rss_mib(c, 1)?;
    ensure!(
        after_rss - before < 256.0,
        "RSS grew from {before:.0} to {after_rss:.0} MiB"
    );
    eprintln!(
        "greedy reads: a batch get of one 1 MB key x 10,000 answered with it once in {one_key:?}; 20 MB of keys refused with 413; the listing took {pages} pages; node RSS {before:.0} -> {after_rss:.0} MiB; honest client: {}",
        percentiles(lat)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_batch_gets_and_listings_are_bounded() {
    let mut c = Cluster::new(&["--set", "limits.max_response_bytes=8388608"]);
    if let Err(e) = greedy_reads(&mut c).await {
        c.fail(e);
    }
}

/// Opens a watch as `token` on a socket that then stops reading; the status.
async fn stalled_watch(
    c: &Cluster,
    token: &str,
) -> anyhow::Result<(u16, tokio_rustls::client::TlsStream<tokio::net::TcpStream>)> {
    let mut s = tls_connect(c, c.nodes[&1].api, Some(4096)).await?;
    let req = format!(
        "GET /v1/watch?prefix=w/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") {
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut byte)).await??;
        head.push(byte[0]);
    }
    let status = String::from_utf8_lossy(&head)
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok((status, s))
}

async fn stalled_watchers(c: &mut Cluster) -> anyhow::Result<()> {
    c.form(1).await?;
    seed_probe(c, 1).await?;
    let auth = c.auth.as_ref().context("auth")?;
    let a = auth.add("watcher-a", "read", &[])?;
    let b = auth.add("watcher-b", "read", &[])?;
    common::wait_for("the watchers' tokens", Duration::from_secs(20), || async {
        let r = c
            .http
            .get(c.url(1, "/v1/kv/probe"))
            .bearer_auth(&b)
            .send()
            .await
            .ok()?;
        (r.status().as_u16() == 200).then_some(())
    })
    .await?;
    let mut healthy = common::sse::SseReader::open(&c.http, &c.url(1, "/v1/watch?prefix=w/"))
        .await?
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    // The healthy watcher reads as events come.
    let healthy = tokio::spawn(async move {
        let mut got = 0;
        while got < 200 {
            let ev = healthy
                .next(Duration::from_secs(60))
                .await?
                .context("healthy stream ended")?;
            ensure!(ev.event == "put", "healthy watcher got {ev:?}");
            got += 1;
        }
        Ok::<_, anyhow::Error>(got)
    });
    let before = rss_mib(c, 1)?;
    let mut held = Vec::new();
    let mut statuses = std::collections::BTreeMap::<(char, u16), usize>::new();
    for (who, token) in [('a', &a), ('b', &b)] {
        for _ in 0..500 {
            let (status, s) = stalled_watch(c, token).await?;
            *statuses.entry((who, status)).or_default() += 1;
            held.push(s);
        }
    }
    // A: 128 streams (its own cap), 372 refused 429; B: the node's remaining 71
    // of 200 (one is the healthy watcher), 429 refused 503.
    ensure!(
        statuses.get(&('a', 200)) == Some(&128)
            && statuses.get(&('a', 429)) == Some(&372)
            && statuses.get(&('b', 200)) == Some(&71)
            && statuses.get(&('b', 503)) == Some(&429),
        "statuses by principal: {statuses:?}"
    );
    // 200 revisions of 60 KB: ~12 MB each stalled watcher would buffer unbounded.
    let value = "v".repeat(60_000);
    let stop = Arc::new(AtomicBool::new(false));
    let prober = honest(c, 1, stop.clone());
    for i in 0..200 {
        let (s, body) = c.put_kv(1, &format!("w/{i}"), &value).await?;
        ensure!(s == 201, "w/{i}: {s} {body}");
    }
    let peak = rss_mib(c, 1)?;
    healthy.await??;
    // Every stalled watcher went over its 1 MiB buffer and was cut off.
    let left = common::wait_for(
        "every stalled watcher cut off",
        Duration::from_secs(30),
        || async {
            let m = c.metrics_text(1).await.ok()?;
            (kvchaos::metrics::value(&m, "kv_watch_streams") <= 1.0).then_some(())
        },
    )
    .await;
    if left.is_err() {
        let m = c.metrics_text(1).await?;
        anyhow::bail!(
            "stalled watchers not cut off: {} streams open",
            kvchaos::metrics::value(&m, "kv_watch_streams")
        );
    }
    stop.store(true, Ordering::Relaxed);
    let lat = prober.await??;
    // The stalled clients go away; their connections close and the events
    // queued for them are freed.
    drop(held);
    common::wait_for(
        "the stalled connections closed",
        Duration::from_secs(30),
        || async {
            let m = c.metrics_text(1).await.ok()?;
            (kvchaos::metrics::value(&m, "kv_api_connections") <= 8.0).then_some(())
        },
    )
    .await?;
    let after = rss_mib(c, 1)?;
    ensure!(
        peak - before < 256.0,
        "RSS grew from {before:.0} to {peak:.0} MiB"
    );
    eprintln!(
        "stalled watchers: 1000 opened by two principals: {statuses:?}; 199 stalled streams fed 200 x 60 KB, cut off at 1 MiB each and 32 MiB for all; node RSS {before:.0} -> {peak:.0} -> {after:.0} MiB (stalled clients gone); healthy watcher got all 200 events; honest client: {}",
        percentiles(lat)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_stalled_watchers_are_capped_and_cut_off() {
    let mut c = Cluster::new(&[
        "--set",
        "limits.max_watchers=200",
        "--set",
        "limits.max_watchers_per_principal=128",
        "--set",
        "limits.watcher_buffer_bytes=1048576",
        "--set",
        "limits.watch_buffer_total_bytes=33554432",
        "--set",
        "max_value_bytes=65536",
    ]);
    if let Err(e) = stalled_watchers(&mut c).await {
        c.fail(e);
    }
}

async fn peer_flood(c: &mut Cluster) -> anyhow::Result<()> {
    let leader = c.form(3).await?;
    seed_probe(c, leader).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let prober = honest(c, leader, stop.clone());
    // Writes through a follower cross the flooded leader's peer port on
    // connections opened before the flood.
    let follower = (1..=3).find(|id| *id != leader).context("follower")?;
    let (s, b) = c.put_kv(follower, "before", "x").await?;
    ensure!(s == 201, "write through a follower: {s} {b}");
    let addr = c.nodes[&leader].raft;
    let mut held = Vec::new();
    for _ in 0..2000 {
        if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
            held.push(s);
        }
    }
    let mut writes = Vec::new();
    for i in 0..50 {
        let t = Instant::now();
        let (s, b) = c.put_kv(follower, &format!("during/{i}"), "x").await?;
        ensure!(
            s == 201,
            "write through a follower during the flood: {s} {b}"
        );
        writes.push(t.elapsed());
    }
    let m = c.metrics_text(leader).await?;
    let refused = kvchaos::metrics::value(&m, "kv_peer_refused_total{reason=\"connections\"}");
    ensure!(refused > 0.0, "the peer cap refused nothing");
    drop(held);
    stop.store(true, Ordering::Relaxed);
    let lat = prober.await??;
    eprintln!(
        "peer flood: 2000 silent connections to the leader's peer port, {refused} refused at once (cap 64); writes through a follower: {}; honest reads on the leader: {}; leader RSS {:.0} MiB",
        percentiles(writes),
        percentiles(lat),
        rss_mib(c, leader)?
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_peer_connections_is_capped() {
    let mut c = Cluster::new(&["--set", "limits.peer_max_connections=64"]);
    if let Err(e) = peer_flood(&mut c).await {
        c.fail(e);
    }
}
