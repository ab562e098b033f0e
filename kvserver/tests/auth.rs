//! Authentication and authorization on a real 3-node cluster (TLS, token files):
//! every route × every kind of caller, on the leader and on a follower (whose
//! writes the leader checks again), with the data and revision unchanged by
//! every refusal; token rotation while clients run; client-certificate
//! principals; bad token files at startup and at reload.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use anyhow::ensure;
use common::Cluster;
use reqwest::Method;
use serde_json::Value;
use serde_json::json;

/// A caller of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    Nobody,
    WrongToken,
    Malformed,
    /// `read` on `app/`.
    Reader,
    /// `readwrite` on `app/`.
    Writer,
    /// `admin` on `app/`: cluster calls, keys under `app/` only.
    ScopedAdmin,
    /// `admin` on every key (the harness's token).
    Admin,
}

const CALLERS: [Who; 7] = [
    Who::Nobody,
    Who::WrongToken,
    Who::Malformed,
    Who::Reader,
    Who::Writer,
    Who::ScopedAdmin,
    Who::Admin,
];

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    /// Anyone at all.
    Open,
    /// Any principal.
    Principal,
    /// Read access to what it names, `inside` the `app/` grant or not.
    Read {
        inside: bool,
    },
    Write {
        inside: bool,
    },
    Admin,
}

struct Case {
    name: &'static str,
    method: Method,
    path: String,
    body: Option<Value>,
    needs: Needs,
    /// Whether an allowed call changes data (those run after the refusal phase).
    mutates: bool,
}

fn case(
    name: &'static str,
    method: Method,
    path: &str,
    body: Option<Value>,
    needs: Needs,
    mutates: bool,
) -> Case {
    Case {
        name,
        method,
        path: path.to_string(),
        body,
        needs,
        mutates,
    }
}

/// Every route, in and out of the `app/` grant.
fn cases() -> Vec<Case> {
    use Method as M;
    use Needs::*;
    let txn = |compare_key: &str, put_key: &str| {
        json!({
            "compare": [{"key": compare_key, "target": "exists", "value": true}],
            "success": [{"op": "put", "key": put_key, "value": "t"}, {"op": "get", "key": "app/seed"}],
            "failure": [{"op": "get", "key": "app/seed"}]
        })
    };
    let read_txn = |key: &str| {
        json!({
            "compare": [{"key": key, "target": "exists", "value": true}],
            "success": [{"op": "get", "key": key}], "failure": []
        })
    };
    vec![
        case("healthz", M::GET, "/healthz", None, Open, false),
        case("readyz", M::GET, "/readyz", None, Open, false),
        case("metrics", M::GET, "/metrics", None, Open, false),
        case("openapi", M::GET, "/v1/openapi.json", None, Open, false),
        case("status", M::GET, "/status", None, Principal, false),
        case(
            "cluster info",
            M::GET,
            "/v1/cluster",
            None,
            Principal,
            false,
        ),
        case("unknown path", M::GET, "/v1/nope", None, Principal, false),
        case(
            "get",
            M::GET,
            "/v1/kv/app/seed",
            None,
            Read { inside: true },
            false,
        ),
        case(
            "get stale",
            M::GET,
            "/v1/kv/app/seed?consistency=stale",
            None,
            Read { inside: true },
            false,
        ),
        case(
            "get outside",
            M::GET,
            "/v1/kv/other/seed",
            None,
            Read { inside: false },
            false,
        ),
        case(
            "get outside stale",
            M::GET,
            "/v1/kv/other/seed?consistency=stale",
            None,
            Read { inside: false },
            false,
        ),
        case(
            "list",
            M::GET,
            "/v1/kv?prefix=app/",
            None,
            Read { inside: true },
            false,
        ),
        case(
            "list all",
            M::GET,
            "/v1/kv",
            None,
            Read { inside: false },
            false,
        ),
        case(
            "list around the grant",
            M::GET,
            "/v1/kv?prefix=ap",
            None,
            Read { inside: false },
            false,
        ),
        case(
            "batch get",
            M::POST,
            "/v1/batch/get",
            Some(json!({"keys": ["app/seed", "app/none"]})),
            Read { inside: true },
            false,
        ),
        case(
            "batch get one outside",
            M::POST,
            "/v1/batch/get",
            Some(json!({"keys": ["app/seed", "other/seed"]})),
            Read { inside: false },
            false,
        ),
        case(
            "watch",
            M::GET,
            "/v1/watch?prefix=app/",
            None,
            Read { inside: true },
            false,
        ),
        case(
            "watch key outside",
            M::GET,
            "/v1/watch?key=other/seed",
            None,
            Read { inside: false },
            false,
        ),
        case(
            "watch everything",
            M::GET,
            "/v1/watch",
            None,
            Read { inside: false },
            false,
        ),
        case(
            "read-only txn",
            M::POST,
            "/v1/txn",
            Some(read_txn("app/seed")),
            Read { inside: true },
            false,
        ),
        case(
            "read-only txn outside",
            M::POST,
            "/v1/txn",
            Some(read_txn("other/seed")),
            Read { inside: false },
            false,
        ),
        case(
            "put",
            M::PUT,
            "/v1/kv/app/new",
            Some(json!({"value": "n"})),
            Write { inside: true },
            true,
        ),
        case(
            "put outside",
            M::PUT,
            "/v1/kv/other/new",
            Some(json!({"value": "n"})),
            Write { inside: false },
            true,
        ),
        case(
            "delete",
            M::DELETE,
            "/v1/kv/app/gone",
            None,
            Write { inside: true },
            true,
        ),
        case(
            "delete outside",
            M::DELETE,
            "/v1/kv/other/seed",
            None,
            Write { inside: false },
            true,
        ),
        case(
            "prefix delete",
            M::DELETE,
            "/v1/kv?prefix=app/tmp/",
            None,
            Write { inside: true },
            true,
        ),
        case(
            "prefix delete outside",
            M::DELETE,
            "/v1/kv?prefix=other/",
            None,
            Write { inside: false },
            true,
        ),
        case(
            "txn",
            M::POST,
            "/v1/txn",
            Some(txn("app/seed", "app/t")),
            Write { inside: true },
            true,
        ),
        case(
            "txn compares outside",
            M::POST,
            "/v1/txn",
            Some(txn("other/seed", "app/t")),
            Write { inside: false },
            true,
        ),
        case(
            "txn writes outside",
            M::POST,
            "/v1/txn",
            Some(txn("app/seed", "other/t")),
            Write { inside: false },
            true,
        ),
        // Allowed cluster calls get bodies the handler refuses (400): the call
        // passed authorization without changing the cluster.
        case(
            "init",
            M::POST,
            "/v1/cluster/init",
            Some(json!({"members": {"77": {"api_addr": "x", "raft_addr": "y"}}})),
            Admin,
            false,
        ),
        case(
            "add learner",
            M::POST,
            "/v1/cluster/learners",
            Some(json!({"id": 9})),
            Admin,
            false,
        ),
        case(
            "membership",
            M::POST,
            "/v1/cluster/membership",
            Some(json!({"bogus": 1})),
            Admin,
            false,
        ),
        case(
            "transfer leader",
            M::POST,
            "/v1/cluster/transfer-leader",
            Some(json!({})),
            Admin,
            false,
        ),
    ]
}

/// The status class a caller must get: 401, 403, or `None` (allowed).
fn expected(who: Who, needs: Needs) -> Option<u16> {
    use Needs::*;
    let authenticated = !matches!(who, Who::Nobody | Who::WrongToken | Who::Malformed);
    match needs {
        Open => None,
        _ if !authenticated => Some(401),
        Principal => None,
        Read { inside } => (!inside && who != Who::Admin).then_some(403),
        Write { inside } => match who {
            Who::Reader => Some(403),
            Who::Admin => None,
            _ => (!inside).then_some(403),
        },
        Admin => (!matches!(who, Who::ScopedAdmin | Who::Admin)).then_some(403),
    }
}

struct Callers {
    http: reqwest::Client,
    tokens: BTreeMap<Who, String>,
}

impl Callers {
    async fn call(
        &self,
        c: &Cluster,
        node: u64,
        who: Who,
        k: &Case,
    ) -> anyhow::Result<(u16, Option<String>, Value)> {
        let mut req = self
            .http
            .request(k.method.clone(), c.url(node, &k.path))
            .timeout(Duration::from_secs(20));
        match who {
            Who::Nobody => {}
            Who::Malformed => req = req.header("authorization", "Basic a2V5OnZhbHVl"),
            other => req = req.bearer_auth(&self.tokens[&other]),
        }
        if let Some(b) = &k.body {
            req = req.json(b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let challenge = resp
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // A watch that was let in streams forever: its status is the answer.
        let body = if status == 200 && k.path.starts_with("/v1/watch") {
            Value::Null
        } else {
            let text = resp.text().await?;
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((status, challenge, body))
    }
}

/// Every key and value, and the revision, as the admin sees them.
async fn snapshot(c: &Cluster, node: u64) -> anyhow::Result<(u64, Value)> {
    let (s, info) = c.get(node, "/v1/cluster").await?;
    ensure!(s == 200, "cluster info: {s} {info}");
    let (s, list) = c.get(node, "/v1/kv").await?;
    ensure!(s == 200, "list: {s} {list}");
    Ok((
        info["revision"].as_u64().context("revision")?,
        list["kvs"].clone(),
    ))
}

async fn route_role_matrix(c: &mut Cluster) -> anyhow::Result<()> {
    let leader = c.form(3).await?;
    let follower = (1..=3).find(|id| *id != leader).context("a follower")?;
    let auth = c.auth.as_ref().context("the cluster has auth")?;
    let mut tokens = BTreeMap::new();
    tokens.insert(Who::Reader, auth.add("reader", "read", &["app/"])?);
    tokens.insert(Who::Writer, auth.add("writer", "readwrite", &["app/"])?);
    tokens.insert(
        Who::ScopedAdmin,
        auth.add("scoped-admin", "admin", &["app/"])?,
    );
    tokens.insert(Who::Admin, auth.admin.clone());
    tokens.insert(Who::WrongToken, kvchaos::cluster::auth::random_token()?);
    for (k, v) in [
        ("app/seed", "s"),
        ("app/gone", "g"),
        ("app/tmp/1", "t"),
        ("other/seed", "o"),
    ] {
        let (s, b) = c.put_kv(leader, k, v).await?;
        ensure!(s == 200 || s == 201, "seed {k}: {s} {b}");
    }
    let tls = c.client_tls().context("tls")?;
    let http = kvserver::tls::http_builder()
        .tls_backend_preconfigured(tls.rustls_config()?)
        .build()?;
    let callers = Callers { http, tokens };
    // The new tokens are in force once every node has re-read the file.
    for node in 1..=3 {
        common::wait_for(
            "the new tokens on every node",
            Duration::from_secs(20),
            || {
                let callers = &callers;
                let c = &*c;
                async move {
                    let k = case(
                        "get",
                        Method::GET,
                        "/v1/kv/app/seed",
                        None,
                        Needs::Read { inside: true },
                        false,
                    );
                    let (s, _, _) = callers.call(c, node, Who::ScopedAdmin, &k).await.ok()?;
                    (s == 200).then_some(())
                }
            },
        )
        .await?;
    }

    let cases = cases();
    let before = snapshot(c, leader).await?;
    let mut table: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    // Phase 1: every refusal, on the leader and on a follower. Nothing may change.
    for k in &cases {
        for who in CALLERS {
            let want = expected(who, k.needs);
            for node in [leader, follower] {
                if want.is_none() {
                    continue;
                }
                let (status, challenge, body) = callers.call(c, node, who, k).await?;
                ensure!(
                    Some(status) == want,
                    "{} as {who:?} on node {node}: want {want:?}, got {status} {body}",
                    k.name
                );
                let code = body["error"]["code"].as_str().unwrap_or_default();
                match status {
                    401 => ensure!(
                        code == "unauthenticated"
                            && challenge
                                .as_deref()
                                .is_some_and(|h| h.starts_with("Bearer realm=\"kvcluster\"")),
                        "{} as {who:?}: 401 needs a JSON body and a challenge: {body} {challenge:?}",
                        k.name
                    ),
                    _ => ensure!(code == "forbidden", "{} as {who:?}: {body}", k.name),
                }
            }
        }
    }
    let after = snapshot(c, leader).await?;
    ensure!(
        before == after,
        "a refusal changed the data: {before:?} -> {after:?}"
    );

    // Phase 2: everything allowed, reads first, then each write by each caller
    // allowed to make it (writes are repeatable: puts, deletes of absent keys).
    for mutating in [false, true] {
        for k in cases.iter().filter(|k| k.mutates == mutating) {
            for who in CALLERS {
                if expected(who, k.needs).is_some() {
                    continue;
                }
                for node in [leader, follower] {
                    let (status, _, body) = callers.call(c, node, who, k).await?;
                    let ok = match k.needs {
                        Needs::Admin => status == 400 || status == 409,
                        _ if k.name == "unknown path" => status == 404,
                        _ => (200..300).contains(&status) || status == 404,
                    };
                    ensure!(
                        ok,
                        "{} as {who:?} on node {node}: got {status} {body}",
                        k.name
                    );
                    table.entry(k.name).or_default().push(format!(
                        "{who:?}@{}",
                        if node == leader { "L" } else { "F" }
                    ));
                }
            }
        }
    }
    // The writes phase 2 allowed did land; nothing outside `app/` was touched
    // except by the admin's own calls.
    let (s, b) = c.get(leader, "/v1/kv/app/new").await?;
    ensure!(s == 200, "app/new: {s} {b}");
    let (s, b) = c.get(leader, "/v1/kv/app/tmp/1").await?;
    ensure!(s == 404, "the prefix delete ran: {s} {b}");

    // Refusals are counted.
    let m = c.metrics_text(follower).await?;
    ensure!(
        kvchaos::metrics::value(&m, "kv_auth_refused_total{reason=\"forbidden\"}") > 0.0
            && kvchaos::metrics::value(&m, "kv_auth_refused_total{reason=\"unauthenticated\"}")
                > 0.0,
        "refusals are counted"
    );
    for (name, allowed) in &table {
        eprintln!("matrix: {name:<26} allowed for {}", allowed.join(" "));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_callers_outside_their_role_and_prefixes() {
    let mut c = Cluster::new(&[]);
    if let Err(e) = route_role_matrix(&mut c).await {
        c.fail(e);
    }
}

/// One request of the rotation test's writers.
struct Sent {
    old_token: bool,
    done: std::time::Instant,
    status: u16,
}

async fn rotation_under_load(c: &mut Cluster) -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicBool;
    use std::sync::atomic::Ordering;
    c.form(3).await?;
    let auth = c.auth.as_ref().context("auth")?;
    let old = auth.add("app", "readwrite", &["rot/"])?;
    let tls = c.client_tls().context("tls")?;
    let http = kvserver::tls::http_builder()
        .tls_backend_preconfigured(tls.rustls_config()?)
        .timeout(Duration::from_secs(10))
        .build()?;
    let status_with = |node: u64, token: String| {
        let req = http.get(c.url(node, "/v1/kv/rot/none")).bearer_auth(token);
        async move { req.send().await.ok().map(|r| r.status().as_u16()) }
    };
    for node in 1..=3 {
        common::wait_for(
            "the first token on every node",
            Duration::from_secs(20),
            || {
                let f = status_with(node, old.clone());
                async move { (f.await? == 404).then_some(()) }
            },
        )
        .await?;
    }
    // Writers on every node, each request with whatever token is current.
    let current = Arc::new(Mutex::new(old.clone()));
    let sent = Arc::new(Mutex::new(Vec::<Sent>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let urls: Vec<String> = (1..=3).map(|id| c.url(id, "")).collect();
    let mut writers = Vec::new();
    for w in 0..3 {
        let (http, current, sent, stop, urls, old) = (
            http.clone(),
            current.clone(),
            sent.clone(),
            stop.clone(),
            urls.clone(),
            old.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let token = current.lock().map(|t| t.clone()).unwrap_or_default();
                let url = format!("{}/v1/kv/rot/{w}/{n}", urls[(n % 3) as usize]);
                let status = http
                    .put(url)
                    .bearer_auth(&token)
                    .json(&json!({"value": "v"}))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                if let Ok(mut s) = sent.lock() {
                    s.push(Sent {
                        old_token: token == old,
                        done: std::time::Instant::now(),
                        status,
                    });
                }
                n += 1;
            }
        }));
    }
    let count = |sent: &Arc<Mutex<Vec<Sent>>>| sent.lock().map(|s| s.len()).unwrap_or(0);
    common::wait_for(
        "writes with the first token",
        Duration::from_secs(20),
        || {
            let n = count(&sent);
            async move { (n >= 60).then_some(()) }
        },
    )
    .await?;
    // Rotation as an operator does it: add the new token under the same name,
    // move the clients, then drop the old one.
    let new = auth.add("app", "readwrite", &["rot/"])?;
    for node in 1..=3 {
        common::wait_for(
            "the new token on every node",
            Duration::from_secs(20),
            || {
                let f = status_with(node, new.clone());
                async move { (f.await? == 404).then_some(()) }
            },
        )
        .await?;
    }
    if let Ok(mut t) = current.lock() {
        *t = new.clone();
    }
    let revoked = std::time::Instant::now();
    auth.revoke(&old)?;
    let mut delays = Vec::new();
    for node in 1..=3 {
        common::wait_for(
            "the old token refused on every node",
            Duration::from_secs(20),
            || {
                let f = status_with(node, old.clone());
                async move { (f.await? == 401).then_some(()) }
            },
        )
        .await?;
        delays.push(revoked.elapsed());
    }
    let before = count(&sent);
    common::wait_for("writes with the new token", Duration::from_secs(20), || {
        let n = count(&sent);
        async move { (n >= before + 60).then_some(()) }
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await?;
    }
    let sent = std::mem::take(&mut *sent.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    let new_failed: Vec<u16> = sent
        .iter()
        .filter(|s| !s.old_token && !(200..300).contains(&s.status))
        .map(|s| s.status)
        .collect();
    ensure!(
        new_failed.is_empty(),
        "writes with the new token failed: {new_failed:?}"
    );
    let old_failed: Vec<u16> = sent
        .iter()
        .filter(|s| s.old_token && s.done < revoked && !(200..300).contains(&s.status))
        .map(|s| s.status)
        .collect();
    ensure!(
        old_failed.is_empty(),
        "writes with the old token failed before it was revoked: {old_failed:?}"
    );
    let max = delays.iter().max().copied().unwrap_or_default();
    // Nodes poll the file every 200 ms here (auth.reload_interval_ms; 5 s by default).
    ensure!(
        max < Duration::from_secs(3),
        "the old token lived {max:?} after revocation"
    );
    eprintln!(
        "rotation: {} writes, {} with the old token, {} with the new; old token refused on all nodes {:?} after revocation",
        sent.len(),
        sent.iter().filter(|s| s.old_token).count(),
        sent.iter().filter(|s| !s.old_token).count(),
        max
    );

    // A token file that stops parsing keeps the tokens in force, and says so.
    auth.write_raw("tokens: [")?;
    common::wait_for(
        "the failed reload in /readyz",
        Duration::from_secs(20),
        || async {
            let (s, r) = c.get(2, "/readyz").await.ok()?;
            (s == 200 && r["warnings"].to_string().contains("token reload failed")).then_some(())
        },
    )
    .await?;
    ensure!(
        status_with(2, new.clone()).await == Some(404),
        "the new token stopped working"
    );
    let m = c.metrics_text(2).await?;
    ensure!(
        kvchaos::metrics::value(&m, "kv_auth_reload_failing") == 1.0,
        "failing gauge"
    );
    ensure!(!m.contains(&new), "a token in the metrics");
    auth.restore()?;
    common::wait_for("the warning gone", Duration::from_secs(20), || async {
        let (s, r) = c.get(2, "/readyz").await.ok()?;
        (s == 200 && !r["warnings"].to_string().contains("token")).then_some(())
    })
    .await?;
    let logs: String = (1..=3).map(|id| c.log_tail(id, 5000)).collect();
    ensure!(
        !logs.contains(&old) && !logs.contains(&new),
        "a token in the logs"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_rotate_without_a_restart_and_bad_files_keep_the_old_ones() {
    let mut c = Cluster::new(&[]);
    if let Err(e) = rotation_under_load(&mut c).await {
        c.fail(e);
    }
}

async fn certificate_principals(c: &mut Cluster) -> anyhow::Result<()> {
    let leader = c.form(3).await?;
    let follower = (1..=3).find(|id| *id != leader).context("a follower")?;
    let tls = c.tls.as_ref().context("tls")?;
    // The harness's client certificate (CN kvchaos-harness) is bound to
    // readwrite on `cert/`; no token is sent.
    let cert = kvchaos::cluster::ClientAccess {
        tls: Some(tls.client_tls()),
        token: None,
    };
    for node in [leader, follower] {
        let client = cert.builder([c.url(node, "")]).attempts(1).build()?;
        let put = kvserver::model::PutRequest {
            value: "c".into(),
            ttl_seconds: None,
            if_revision: None,
        };
        client.put(&format!("cert/{node}"), &put).await?;
        let err = client.put("other/x", &put).await.err();
        ensure!(
            err.as_ref().and_then(|e| e.code()) == Some("forbidden"),
            "outside the binding: {err:?}"
        );
        let info = client.cluster().await?;
        ensure!(
            info.members.len() == 3,
            "cluster info as a certificate principal: {info:?}"
        );
    }
    // A certificate of the same CA that no binding names: 401.
    let stranger = tls.ca.issue(&kvserver::tls::issue::Leaf::client(
        "stranger",
        Duration::from_secs(3600),
    ))?;
    let dir = tempfile::tempdir()?;
    let (crt, key) = (dir.path().join("s.crt"), dir.path().join("s.key"));
    std::fs::write(&crt, &stranger.cert_pem)?;
    std::fs::write(&key, &stranger.key_pem)?;
    let client = kvserver::client::Client::builder([c.url(leader, "")])
        .tls(kvserver::tls::ClientTls {
            ca_file: Some(tls.ca_file()),
            cert_file: Some(crt),
            key_file: Some(key),
        })
        .attempts(1)
        .build()?;
    let err = client
        .get("cert/1", kvserver::model::Consistency::Stale)
        .await
        .err();
    ensure!(
        err.as_ref().and_then(|e| e.status()) == Some(401)
            && err
                .as_ref()
                .is_some_and(|e| e.to_string().contains("not bound")),
        "an unbound certificate: {err:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_bound_to_roles_are_principals() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("auth.yaml");
    std::fs::write(
        &config,
        "auth:\n  client_certs:\n    - subject: kvchaos-harness\n      role: readwrite\n      prefixes: [\"cert/\"]\n",
    )
    .expect("config file");
    let config = config.to_string_lossy().to_string();
    let mut c = Cluster::new(&["--config", &config, "--set", "tls.client_auth=optional"]);
    if let Err(e) = certificate_principals(&mut c).await {
        c.fail(e);
    }
}

#[tokio::test]
async fn bad_auth_settings_stop_the_node_with_the_field_named() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(
        &tokens,
        "tokens:\n  - {name: a, token: do-not-print-me-0123, role: owner}\n",
    )?;
    let mut cfg = common::local_config(dir.path(), true);
    cfg.auth.enabled = true;
    cfg.auth.token_files = vec![tokens];
    let err = kvserver::start_node(cfg.clone())
        .await
        .err()
        .map(|e| e.to_string());
    let err = err.unwrap_or_default();
    ensure!(
        err.contains("auth.token_files")
            && err.contains("tokens[0].role")
            && !err.contains("do-not-print-me"),
        "{err}"
    );
    cfg.auth.token_files.clear();
    let err = kvserver::start_node(cfg.clone())
        .await
        .err()
        .map(|e| e.to_string());
    ensure!(
        err.as_deref()
            .is_some_and(|e| e.contains("auth.token_files")),
        "{err:?}"
    );
    cfg.auth.client_certs = vec![kvserver::config::CertBinding {
        subject: "x".into(),
        role: kvserver::auth::Role::Read,
        prefixes: vec![],
    }];
    let err = kvserver::start_node(cfg).await.err().map(|e| e.to_string());
    ensure!(
        err.as_deref()
            .is_some_and(|e| e.contains("auth.client_certs")),
        "{err:?}"
    );
    Ok(())
}
