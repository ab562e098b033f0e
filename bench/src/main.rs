//! `kvbench`: a closed-loop load generator over keep-alive HTTP/1.1 with
//! exactly N connections (one per worker, spread over the endpoints). It
//! speaks kvserver's API and etcd's v3 JSON gateway, so both stores are
//! driven by the same code, plus a `fixed` target (any server answering
//! `GET /`) to measure this machine's loopback HTTP floor.
//!
//! Reports throughput, p50/p99/p99.9 latency, errors by kind, and — given the
//! server PIDs — their CPU time per operation and peak RSS, as one JSON line
//! (`--json`) or a readable summary.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use clap::Parser;
use clap::ValueEnum;
use http_body_util::BodyExt;
use http_body_util::Full;
use hyper::Method;
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use serde_json::Value;
use serde_json::json;
use tokio::net::TcpStream;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Target {
    /// kvserver's `/v1/kv` API.
    Kv,
    /// etcd's v3 JSON gateway (`/v3/kv/...`).
    Etcd,
    /// Any HTTP server answering `GET /` (the floor: no store at all).
    Fixed,
}

#[derive(Parser, Debug)]
#[command(
    name = "kvbench",
    version,
    about = "Closed-loop HTTP load generator for kvserver and etcd"
)]
struct Cli {
    #[arg(long, value_enum, default_value = "kv")]
    target: Target,
    /// `host:port` of each node; connections are spread over them.
    #[arg(long, value_delimiter = ',', required_unless_present = "serve_fixed")]
    endpoints: Vec<String>,
    /// Instead of generating load, serve the `fixed` target on this address until
    /// killed: every request gets the same small JSON answer (the HTTP floor).
    #[arg(long, value_name = "ADDR")]
    serve_fixed: Option<String>,
    /// put | get | stale-get | cas | mixed:<percent puts>
    #[arg(long, default_value = "put")]
    workload: String,
    #[arg(long, default_value_t = 16)]
    connections: usize,
    #[arg(long, default_value_t = 10.0)]
    duration_s: f64,
    #[arg(long, default_value_t = 2.0)]
    warmup_s: f64,
    /// Size of the key space (`bench-000000` ...).
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Write every key once before measuring (with all connections).
    #[arg(long)]
    preload: bool,
    /// Server process ids whose CPU time and peak RSS to report.
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
    /// CA bundle (PEM) of the servers: connect with TLS (so its cost is measured).
    #[arg(long)]
    cacert: Option<std::path::PathBuf>,
    /// Client certificate (PEM), for servers that require one.
    #[arg(long, requires = "key")]
    cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of `--cert`.
    #[arg(long, requires = "cert")]
    key: Option<std::path::PathBuf>,
    /// File holding a bearer token, sent on every request (servers with auth on).
    #[arg(long)]
    token_file: Option<std::path::PathBuf>,
}

/// How connections reach the servers: plain TCP, or TLS with this connector.
type Tls = Option<tokio_rustls::TlsConnector>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Put,
    Get,
    StaleGet,
    Cas,
    Fixed,
}

fn parse_workload(w: &str, target: Target) -> anyhow::Result<(u8, Op)> {
    if target == Target::Fixed {
        return Ok((0, Op::Fixed));
    }
    Ok(match w {
        "put" => (100, Op::Put),
        "get" => (0, Op::Get),
        "stale-get" => (0, Op::StaleGet),
        "cas" => (100, Op::Cas),
        m if m.starts_with("mixed:") => {
            let p: u8 = m["mixed:".len()..]
                .parse()
                .ok()
                .filter(|p| *p <= 100)
                .context("mixed:<percent puts 0..100>")?;
            (p, Op::Get)
        }
        other => anyhow::bail!("unknown workload {other:?} (put, get, stale-get, cas, mixed:N)"),
    })
}

/// One connection's state.
struct Conn {
    addr: String,
    tls: Tls,
    /// `Bearer <token>`, when the servers want one.
    auth: Option<Arc<str>>,
    sender: Option<SendRequest<Full<Bytes>>>,
}

/// An HTTP/1.1 connection over `io`, driven by its own task.
async fn handshake<I>(io: I) -> anyhow::Result<SendRequest<Full<Bytes>>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

impl Conn {
    async fn sender(&mut self) -> anyhow::Result<&mut SendRequest<Full<Bytes>>> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = TcpStream::connect(&self.addr).await?;
            stream.set_nodelay(true)?;
            let sender = match &self.tls {
                None => handshake(stream).await?,
                Some(connector) => {
                    let host = self
                        .addr
                        .rsplit_once(':')
                        .map_or(self.addr.as_str(), |(h, _)| h);
                    let name = rustls_pki_types::ServerName::try_from(host.to_string())?;
                    handshake(connector.connect(name, stream).await?).await?
                }
            };
            self.sender = Some(sender);
        }
        self.sender.as_mut().context("connection")
    }

    /// Sends one request; returns status and body.
    async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<(u16, Bytes)> {
        let host = self.addr.clone();
        let auth = self.auth.clone();
        let sender = self.sender().await?;
        sender.ready().await?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", host);
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        if let Some(a) = &auth {
            req = req.header("authorization", a.as_ref());
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let resp = match sender.send_request(req).await {
            Ok(r) => r,
            Err(e) => {
                self.sender = None;
                return Err(e.into());
            }
        };
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

/// What one operation came to.
enum Outcome {
    Ok,
    /// A CAS that lost its race (a correct answer, counted apart).
    Conflict,
    Error(String),
}

fn key(k: u64) -> String {
    format!("bench-{k:06}")
}

async fn one_op(
    conn: &mut Conn,
    target: Target,
    op: Op,
    k: u64,
    value: &str,
) -> anyhow::Result<Outcome> {
    let ok_or = |status: u16, accept: &[u16]| {
        if accept.contains(&status) {
            Outcome::Ok
        } else {
            Outcome::Error(format!("http {status}"))
        }
    };
    let key = key(k);
    Ok(match (target, op) {
        (Target::Fixed, _) | (_, Op::Fixed) => {
            let (s, _) = conn.call(Method::GET, "/", None).await?;
            ok_or(s, &[200])
        }
        (Target::Kv, Op::Put) => {
            let body = serde_json::to_vec(&json!({"value": value}))?;
            let (s, _) = conn
                .call(Method::PUT, &format!("/v1/kv/{key}"), Some(body))
                .await?;
            ok_or(s, &[200, 201])
        }
        (Target::Kv, Op::Get) => ok_or(
            conn.call(Method::GET, &format!("/v1/kv/{key}"), None)
                .await?
                .0,
            &[200, 404],
        ),
        (Target::Kv, Op::StaleGet) => ok_or(
            conn.call(
                Method::GET,
                &format!("/v1/kv/{key}?consistency=stale"),
                None,
            )
            .await?
            .0,
            &[200, 404],
        ),
        (Target::Kv, Op::Cas) => {
            let (s, b) = conn
                .call(Method::GET, &format!("/v1/kv/{key}"), None)
                .await?;
            let rev = match s {
                200 => serde_json::from_slice::<Value>(&b)?["kv"]["mod_revision"]
                    .as_u64()
                    .unwrap_or(0),
                404 => 0,
                other => return Ok(Outcome::Error(format!("http {other}"))),
            };
            let body = serde_json::to_vec(&json!({"value": value, "if_revision": rev}))?;
            match conn
                .call(Method::PUT, &format!("/v1/kv/{key}"), Some(body))
                .await?
                .0
            {
                200 | 201 => Outcome::Ok,
                409 | 412 => Outcome::Conflict,
                other => Outcome::Error(format!("http {other}")),
            }
        }
        (Target::Etcd, Op::Put) => {
            let body =
                serde_json::to_vec(&json!({"key": B64.encode(&key), "value": B64.encode(value)}))?;
            ok_or(
                conn.call(Method::POST, "/v3/kv/put", Some(body)).await?.0,
                &[200],
            )
        }
        (Target::Etcd, Op::Get | Op::StaleGet) => {
            let body = serde_json::to_vec(
                &json!({"key": B64.encode(&key), "serializable": op == Op::StaleGet}),
            )?;
            ok_or(
                conn.call(Method::POST, "/v3/kv/range", Some(body)).await?.0,
                &[200],
            )
        }
        (Target::Etcd, Op::Cas) => {
            let body = serde_json::to_vec(&json!({"key": B64.encode(&key)}))?;
            let (s, b) = conn.call(Method::POST, "/v3/kv/range", Some(body)).await?;
            if s != 200 {
                return Ok(Outcome::Error(format!("http {s}")));
            }
            let v: Value = serde_json::from_slice(&b)?;
            // The gateway renders int64 as strings and omits zero values.
            let rev = v["kvs"][0]["mod_revision"]
                .as_str()
                .and_then(|r| r.parse::<u64>().ok())
                .unwrap_or(0);
            let txn = json!({
                "compare": [{"key": B64.encode(&key), "target": "MOD", "result": "EQUAL", "mod_revision": rev.to_string()}],
                "success": [{"request_put": {"key": B64.encode(&key), "value": B64.encode(value)}}],
            });
            let (s, b) = conn
                .call(Method::POST, "/v3/kv/txn", Some(serde_json::to_vec(&txn)?))
                .await?;
            if s != 200 {
                return Ok(Outcome::Error(format!("http {s}")));
            }
            if serde_json::from_slice::<Value>(&b)?["succeeded"] == true {
                Outcome::Ok
            } else {
                Outcome::Conflict
            }
        }
    })
}

#[derive(Default)]
struct WorkerStats {
    lat_us: Vec<u32>,
    conflicts: u64,
    errors: BTreeMap<String, u64>,
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// CPU seconds (user + system) and peak RSS in KiB of a process.
fn proc_usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(((utime + stime) / 100.0, hwm))
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

async fn run_phase(
    cli: &Cli,
    put_pct: u8,
    base_op: Op,
    duration: Duration,
    warmup: Duration,
    preload: bool,
) -> anyhow::Result<(Vec<WorkerStats>, Duration)> {
    let value = Arc::new("v".repeat(cli.value_size));
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let next_key = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let tls: Tls = match &cli.cacert {
        None => None,
        Some(ca) => {
            let settings = kvserver::tls::ClientTls {
                ca_file: Some(ca.clone()),
                cert_file: cli.cert.clone(),
                key_file: cli.key.clone(),
            };
            Some(tokio_rustls::TlsConnector::from(settings.shared_config()?))
        }
    };
    let auth: Option<Arc<str>> = match &cli.token_file {
        None => None,
        Some(path) => {
            let token = std::fs::read_to_string(path)
                .with_context(|| format!("reading the token file {}", path.display()))?;
            Some(format!("Bearer {}", token.trim()).into())
        }
    };
    let mut tasks = Vec::new();
    for w in 0..cli.connections.max(1) {
        let addr = cli.endpoints[w % cli.endpoints.len()].clone();
        let tls = tls.clone();
        let auth = auth.clone();
        let (value, next_key, target, keys) =
            (value.clone(), next_key.clone(), cli.target, cli.keys);
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn {
                addr,
                tls,
                auth,
                sender: None,
            };
            let mut stats = WorkerStats::default();
            let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ ((w as u64 + 1) * 0x2545_F491_4F6C_DD1D);
            loop {
                let (op, k) = if preload {
                    let k = next_key.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if k >= keys {
                        break;
                    }
                    (Op::Put, k)
                } else {
                    if Instant::now() >= end {
                        break;
                    }
                    let r = xorshift(&mut rng);
                    let op = if base_op == Op::Get && (r % 100) < put_pct as u64 {
                        Op::Put
                    } else {
                        base_op
                    };
                    (op, (r >> 8) % keys)
                };
                let t0 = Instant::now();
                let outcome = match one_op(&mut conn, target, op, k, &value).await {
                    Ok(o) => o,
                    Err(e) => Outcome::Error(format!(
                        "io: {}",
                        e.to_string().chars().take(60).collect::<String>()
                    )),
                };
                if preload || t0 >= measure_from {
                    match outcome {
                        Outcome::Ok => stats
                            .lat_us
                            .push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32),
                        Outcome::Conflict => {
                            stats.conflicts += 1;
                            stats
                                .lat_us
                                .push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        }
                        Outcome::Error(e) => *stats.errors.entry(e).or_default() += 1,
                    }
                }
            }
            stats
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.push(t.await.context("worker panicked")?);
    }
    let measured = if preload {
        start.elapsed()
    } else {
        Instant::now().saturating_duration_since(measure_from)
    };
    Ok((all, measured))
}

/// The floor: a keep-alive HTTP/1.1 server (hyper on the same runtime as kvserver's
/// axum) that answers every request with one fixed JSON body the size of a small
/// key-value response, doing no other work.
async fn serve_fixed(addr: &str) -> anyhow::Result<()> {
    const BODY: &[u8] = br#"{"revision":1,"node_id":1,"kv":{"key":"bench-000000","value":"fixed","create_revision":1,"mod_revision":1,"version":1,"created_at_ms":0,"updated_at_ms":0}}"#;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|_req| async {
                hyper::Response::builder()
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from_static(BODY)))
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            // A client closing its connection ends this task; nothing to report.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(addr) = &cli.serve_fixed {
        return serve_fixed(addr).await;
    }
    anyhow::ensure!(cli.keys > 0, "--keys must be > 0");
    let (put_pct, op) = parse_workload(&cli.workload, cli.target)?;
    if cli.preload && cli.target != Target::Fixed {
        let (stats, took) =
            run_phase(&cli, 100, Op::Put, Duration::ZERO, Duration::ZERO, true).await?;
        let errors: u64 = stats.iter().flat_map(|s| s.errors.values()).sum();
        anyhow::ensure!(
            errors == 0,
            "preload failed: {:?}",
            stats.iter().map(|s| &s.errors).collect::<Vec<_>>()
        );
        eprintln!("preloaded {} keys in {:.1}s", cli.keys, took.as_secs_f64());
    }
    let before: Vec<Option<(f64, u64)>> = cli.pids.iter().map(|p| proc_usage(*p)).collect();
    let (stats, measured) = run_phase(
        &cli,
        put_pct,
        op,
        Duration::from_secs_f64(cli.duration_s),
        Duration::from_secs_f64(cli.warmup_s),
        false,
    )
    .await?;
    let after: Vec<Option<(f64, u64)>> = cli.pids.iter().map(|p| proc_usage(*p)).collect();
    let mut lat: Vec<u32> = stats
        .iter()
        .flat_map(|s| s.lat_us.iter().copied())
        .collect();
    lat.sort_unstable();
    let ops = lat.len() as u64;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for s in &stats {
        for (k, v) in &s.errors {
            *errors.entry(k.clone()).or_default() += v;
        }
    }
    let conflicts: u64 = stats.iter().map(|s| s.conflicts).sum();
    let cpu_s: f64 = before
        .iter()
        .zip(&after)
        .filter_map(|(b, a)| Some(a.as_ref()?.0 - b.as_ref()?.0))
        .sum();
    let peak_rss_kib = after.iter().filter_map(|a| a.map(|a| a.1)).max();
    let secs = measured.as_secs_f64().max(1e-9);
    let report = json!({
        "target": format!("{:?}", cli.target).to_lowercase(),
        "workload": cli.workload,
        "connections": cli.connections,
        "ops": ops,
        "ops_per_s": (ops as f64 / secs).round(),
        "p50_ms": percentile(&lat, 0.50),
        "p99_ms": percentile(&lat, 0.99),
        "p999_ms": percentile(&lat, 0.999),
        "errors": errors,
        "cas_conflicts": conflicts,
        "server_cpu_s": cpu_s,
        "server_cpu_us_per_op": if ops > 0 && !cli.pids.is_empty() { Some((cpu_s * 1e6 / ops as f64).round()) } else { None },
        "server_peak_rss_mib": peak_rss_kib.map(|k| (k as f64 / 1024.0 * 10.0).round() / 10.0),
        "seconds": secs,
    });
    if cli.json {
        println!("{report}");
    } else {
        println!(
            "{} {} c={}: {} ops/s, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, errors {:?}, server CPU {} µs/op, peak RSS {} MiB",
            report["target"],
            cli.workload,
            cli.connections,
            report["ops_per_s"],
            report["p50_ms"].as_f64().unwrap_or(0.0),
            report["p99_ms"].as_f64().unwrap_or(0.0),
            report["p999_ms"].as_f64().unwrap_or(0.0),
            errors,
            report["server_cpu_us_per_op"],
            report["server_peak_rss_mib"]
        );
    }
    Ok(())
}
