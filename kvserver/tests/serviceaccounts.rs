//! Kubernetes ServiceAccount tokens as principals, against a stand-in for the
//! API server's TokenReview endpoint (HTTPS with the cluster's test CA, on
//! loopback): a bound account gets its role and prefixes, a token for another
//! audience and an unbound account are refused (401), reviews are cached, the
//! node presents its own token, and an API server that does not answer makes
//! the request a 503, not a 401. The e2e suite does the same with real
//! projected tokens.

mod common;

use std::sync::Arc;
use std::sync::Mutex;

use anyhow::Context;
use anyhow::ensure;
use common::Cluster;
use http_body_util::BodyExt;
use serde_json::Value;
use serde_json::json;

/// What the stand-in API server saw: (the reviewer's bearer token, the token reviewed).
type Seen = Arc<Mutex<Vec<(String, String)>>>;
/// Set: the stand-in API server fails every request (500), as one that is down
/// behind a load balancer does.
type Down = Arc<std::sync::atomic::AtomicBool>;

const OWN_TOKEN: &str = "node-own-token-for-reviews";
const AUDIENCE: &str = "kvcluster";
/// Tokens shaped like JWTs (the node sends only those for review).
const GOOD: &str = "eyJhbGciOiJSUzI1NiJ9.eyJnb29kIjoxfQ.c2ln";
const WRONG_AUDIENCE: &str = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJvdGhlciJ9.c2ln";
const UNBOUND: &str = "eyJhbGciOiJSUzI1NiJ9.eyJ1bmJvdW5kIjoxfQ.c2ln";
const LATE: &str = "eyJhbGciOiJSUzI1NiJ9.eyJsYXRlIjoxfQ.c2ln";

/// The answer to a TokenReview of `token`.
fn review(token: &str, audiences: &[String]) -> Value {
    let asked_ours = audiences.iter().any(|a| a == AUDIENCE);
    let (ok, user, aud) = match token {
        GOOD if asked_ours => (
            true,
            "system:serviceaccount:apps:billing",
            json!([AUDIENCE]),
        ),
        UNBOUND if asked_ours => (
            true,
            "system:serviceaccount:apps:stranger",
            json!([AUDIENCE]),
        ),
        // A token issued for another audience: the API server says it is not
        // authenticated for the audiences asked about.
        _ => (false, "", json!([])),
    };
    json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
           "status": {"authenticated": ok, "user": {"username": user}, "audiences": aud}})
}

/// Serves TokenReviews over HTTPS on a free loopback port until the task is aborted.
async fn fake_api_server(
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    seen: Seen,
    down: Down,
) -> anyhow::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let certs = kvserver::tls::pem::certs(&std::fs::read(&cert)?, &cert)?;
    let key = kvserver::tls::pem::key(&std::fs::read(&key)?, &key)?;
    let config = rustls::ServerConfig::builder_with_provider(kvserver::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            let down = down.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        let down = down.clone();
                        async move {
                            if down.load(std::sync::atomic::Ordering::Relaxed) {
                                let mut resp = hyper::Response::new(http_body_util::Full::new(
                                    bytes::Bytes::new(),
                                ));
                                *resp.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                                return Ok::<_, std::convert::Infallible>(resp);
                            }
                            let bearer = req
                                .headers()
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| v.strip_prefix("Bearer "))
                                .unwrap_or_default()
                                .to_string();
                            let path = req.uri().path().to_string();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                            let token = v["spec"]["token"].as_str().unwrap_or_default().to_string();
                            let audiences: Vec<String> =
                                serde_json::from_value(v["spec"]["audiences"].clone())
                                    .unwrap_or_default();
                            if let Ok(mut s) = seen.lock() {
                                s.push((bearer, token.clone()));
                            }
                            let answer = if path == "/apis/authentication.k8s.io/v1/tokenreviews" {
                                review(&token, &audiences).to_string()
                            } else {
                                "{}".to_string()
                            };
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from(answer)),
                            ))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Ok((addr, task))
}

async fn status_as(
    c: &Cluster,
    token: &str,
    method: reqwest::Method,
    path: &str,
) -> anyhow::Result<(u16, Value)> {
    let http = kvserver::tls::http_builder()
        .tls_backend_preconfigured(c.client_tls().context("tls")?.rustls_config()?)
        .build()?;
    let mut req = http
        .request(method.clone(), c.url(1, path))
        .bearer_auth(token);
    if method == reqwest::Method::PUT {
        req = req.json(&json!({"value": "v"}));
    }
    let r = req.send().await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await.unwrap_or(Value::Null)))
}

async fn service_account_tokens(c: &mut Cluster, seen: Seen, down: Down) -> anyhow::Result<()> {
    c.form(1).await?;
    let put = reqwest::Method::PUT;
    // The bound account: readwrite on `sa/`.
    let (s, b) = status_as(c, GOOD, put.clone(), "/v1/kv/sa/x").await?;
    ensure!(
        s == 201,
        "bound ServiceAccount writes under its prefix: {s} {b}"
    );
    let (s, b) = status_as(c, GOOD, put.clone(), "/v1/kv/other/x").await?;
    ensure!(
        s == 403
            && b["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("apps/billing")),
        "outside its prefix: {s} {b}"
    );
    // Reviewed once, then cached; the node presented its own token.
    let reviews = |t: &str| {
        seen.lock()
            .map(|s| s.iter().filter(|(_, x)| x == t).count())
            .unwrap_or(0)
    };
    ensure!(
        reviews(GOOD) == 1,
        "reviews of one token: {}",
        reviews(GOOD)
    );
    ensure!(
        seen.lock()
            .map(|s| s.iter().all(|(own, _)| own == OWN_TOKEN))
            .unwrap_or(false),
        "the node's own token on every review"
    );
    // Another audience, an unbound account, a token that is no JWT: 401.
    let (s, b) = status_as(c, WRONG_AUDIENCE, reqwest::Method::GET, "/v1/kv/sa/x").await?;
    ensure!(
        s == 401 && b["error"]["code"] == "unauthenticated",
        "another audience: {s} {b}"
    );
    let (s, b) = status_as(c, UNBOUND, reqwest::Method::GET, "/v1/kv/sa/x").await?;
    ensure!(
        s == 401
            && b["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("apps/stranger")),
        "unbound: {s} {b}"
    );
    let (s, _) = status_as(
        c,
        "not-a-jwt-and-not-a-token",
        reqwest::Method::GET,
        "/v1/kv/sa/x",
    )
    .await?;
    ensure!(s == 401, "neither a token nor a JWT: {s}");
    ensure!(
        reviews("not-a-jwt-and-not-a-token") == 0,
        "only JWTs are sent for review"
    );
    // The API server goes away: a token not yet reviewed cannot be checked (503),
    // one reviewed before still works from the cache.
    down.store(true, std::sync::atomic::Ordering::Relaxed);
    let (s, b) = status_as(c, LATE, reqwest::Method::GET, "/v1/kv/sa/x").await?;
    ensure!(
        s == 503 && b["error"]["code"] == "auth_unavailable",
        "API server down: {s} {b}"
    );
    let (s, b) = status_as(c, GOOD, reqwest::Method::GET, "/v1/kv/sa/x").await?;
    ensure!(s == 200, "a cached review: {s} {b}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_tokens_are_reviewed_and_bound_to_roles() {
    let dir = tempfile::tempdir().expect("temp dir");
    let seen: Seen = Arc::default();
    let down: Down = Arc::default();
    // The harness's CA issues the stand-in API server's certificate (node 99, 127.0.0.1).
    let mut c = Cluster::new(&[]);
    let tls = c.tls.as_ref().expect("tls");
    tls.issue_node(99, None).expect("a certificate");
    let (addr, _api) = fake_api_server(
        tls.node_cert(99),
        tls.node_key(99),
        seen.clone(),
        down.clone(),
    )
    .await
    .expect("API server");
    let own = dir.path().join("own.token");
    std::fs::write(&own, OWN_TOKEN).expect("own token");
    let config = dir.path().join("sa.yaml");
    std::fs::write(
        &config,
        format!(
            "auth:\n  service_accounts:\n    audience: {AUDIENCE}\n    api_server: https://127.0.0.1:{}\n    ca_file: {}\n    token_file: {}\n    bindings:\n      - {{namespace: apps, name: billing, role: readwrite, prefixes: [sa/]}}\n",
            addr.port(),
            tls.ca_file().display(),
            own.display()
        ),
    )
    .expect("config");
    let config = config.to_string_lossy().to_string();
    c.add_args(["--config", &config]);
    if let Err(e) = service_account_tokens(&mut c, seen, down).await {
        c.fail(e);
    }
}
