//! Every client endpoint and every bad-input case, against an in-process node
//! started with the same `start_node()` the binary uses; plus startup
//! configuration errors and SIGTERM handling of the real binary.

mod common;

use std::time::Duration;

use anyhow::Context;
use anyhow::ensure;
use common::wait_for;
use common::wait_status;
use kvserver::Config;
use kvserver::NodeHandle;
use reqwest::Method;
use serde_json::Value;
use serde_json::json;

struct Node {
    handle: Option<NodeHandle>,
    base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Node {
    async fn start(bootstrap: bool, max_value_bytes: usize) -> anyhow::Result<Node> {
        let dir = tempfile::tempdir()?;
        let cfg = Config {
            max_value_bytes,
            ttl_reap_interval_ms: 100,
            ..common::local_config(dir.path(), bootstrap)
        };
        let handle = kvserver::start_node(cfg).await?;
        let node = Node {
            base: format!("http://{}", handle.api_addr),
            handle: Some(handle),
            http: common::client(),
            _dir: dir,
        };
        if bootstrap {
            let url = format!("{}/readyz", node.base);
            wait_status(
                &node.http,
                "single node ready",
                Method::GET,
                &url,
                None,
                200,
            )
            .await?;
        }
        Ok(node)
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&str>,
    ) -> anyhow::Result<(u16, Value, reqwest::header::HeaderMap)> {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let r = req.send().await?;
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await?;
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, v, headers))
    }

    async fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        let (s, v, _) = self.call(reqwest::Method::GET, path, None).await?;
        Ok((s, v))
    }
    async fn put(&self, path: &str, body: &str) -> anyhow::Result<(u16, Value)> {
        let (s, v, _) = self.call(reqwest::Method::PUT, path, Some(body)).await?;
        Ok((s, v))
    }
    async fn post(&self, path: &str, body: &str) -> anyhow::Result<(u16, Value)> {
        let (s, v, _) = self.call(reqwest::Method::POST, path, Some(body)).await?;
        Ok((s, v))
    }
    async fn delete(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        let (s, v, _) = self.call(reqwest::Method::DELETE, path, None).await?;
        Ok((s, v))
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(h) = self.handle.take() {
            h.shutdown().await?;
        }
        Ok(())
    }
}

/// Asserts a JSON error of the given status and code.
fn expect_error(what: &str, got: (u16, Value), status: u16, code: &str) -> anyhow::Result<()> {
    let (s, body) = got;
    ensure!(s == status, "{what}: expected {status}, got {s}: {body}");
    ensure!(
        body["error"]["code"] == code,
        "{what}: expected code {code}: {body}"
    );
    ensure!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: message: {body}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_endpoints_behave_as_documented() -> anyhow::Result<()> {
    let n = Node::start(true, 4096).await?;

    // Create, read, update.
    let (s, b) = n
        .put("/v1/kv/app/config/db", r#"{"value":"postgres://x"}"#)
        .await?;
    ensure!(
        s == 201 && b["created"] == true && b["kv"]["version"] == 1,
        "create: {s} {b}"
    );
    let r1 = b["revision"].as_u64().context("revision")?;
    ensure!(
        b["kv"]["create_revision"] == r1 && b["kv"]["mod_revision"] == r1,
        "revisions on create: {b}"
    );
    let (s, b) = n.get("/v1/kv/app/config/db").await?;
    ensure!(
        s == 200 && b["kv"]["value"] == "postgres://x" && b["node_id"] == 1,
        "get: {s} {b}"
    );
    let (s, b) = n
        .put("/v1/kv/app/config/db", r#"{"value":"postgres://y"}"#)
        .await?;
    ensure!(
        s == 200 && b["created"] == false && b["kv"]["version"] == 2,
        "update: {s} {b}"
    );
    ensure!(
        b["kv"]["create_revision"] == r1 && b["kv"]["mod_revision"].as_u64() == Some(r1 + 1),
        "revisions on update: {b}"
    );
    ensure!(b["prev_kv"]["value"] == "postgres://x", "prev_kv: {b}");
    let (s, b) = n.get("/v1/kv/app/config/db?consistency=stale").await?;
    ensure!(
        s == 200 && b["kv"]["value"] == "postgres://y",
        "stale get: {s} {b}"
    );
    // Unicode and URL-encoded keys.
    let (s, _) = n
        .put("/v1/kv/caf%C3%A9%20menu", r#"{"value":"☕"}"#)
        .await?;
    ensure!(s == 201, "unicode key put");
    let (s, b) = n.get("/v1/kv/caf%C3%A9%20menu").await?;
    ensure!(
        s == 200 && b["kv"]["key"] == "café menu" && b["kv"]["value"] == "☕",
        "unicode key get: {b}"
    );

    // Missing keys.
    expect_error(
        "get missing",
        n.get("/v1/kv/nope").await?,
        404,
        "key_not_found",
    )?;
    expect_error(
        "delete missing",
        n.delete("/v1/kv/nope").await?,
        404,
        "key_not_found",
    )?;

    // Compare-and-set.
    let (s, b) = n
        .put("/v1/kv/lock", r#"{"value":"me","if_revision":0}"#)
        .await?;
    ensure!(s == 201, "create-only on absent key: {s} {b}");
    let lock_rev = b["kv"]["mod_revision"].as_u64().context("mod_revision")?;
    let (s, b) = n
        .put("/v1/kv/lock", r#"{"value":"you","if_revision":0}"#)
        .await?;
    ensure!(
        s == 412 && b["error"]["code"] == "revision_mismatch",
        "create-only on existing key: {s} {b}"
    );
    ensure!(
        b["error"]["actual_revision"] == lock_rev && b["error"]["current"]["value"] == "me",
        "mismatch details: {b}"
    );
    let (s, b) = n
        .put(
            "/v1/kv/lock",
            &format!(r#"{{"value":"me2","if_revision":{}}}"#, lock_rev + 100),
        )
        .await?;
    ensure!(s == 412, "wrong revision: {s} {b}");
    let (s, b) = n
        .put(
            "/v1/kv/lock",
            &format!(r#"{{"value":"me2","if_revision":{lock_rev}}}"#),
        )
        .await?;
    ensure!(
        s == 200 && b["kv"]["value"] == "me2",
        "right revision: {s} {b}"
    );
    let cur = b["kv"]["mod_revision"].as_u64().context("rev")?;
    expect_error(
        "delete with stale revision",
        n.delete(&format!("/v1/kv/lock?if_revision={lock_rev}"))
            .await?,
        412,
        "revision_mismatch",
    )?;
    let (s, b) = n.delete(&format!("/v1/kv/lock?if_revision={cur}")).await?;
    ensure!(
        s == 200 && b["deleted"] == 1 && b["prev_kv"]["value"] == "me2",
        "guarded delete: {s} {b}"
    );
    // The failed guards changed nothing: the revision only moved for successful writes.
    let (_, b) = n.get("/v1/kv/app/config/db").await?;
    ensure!(
        b["revision"].as_u64() == Some(cur + 1),
        "revision after delete: {b}"
    );

    // TTL: the key disappears by itself, and a later put recreates it at version 1.
    let (s, b) = n
        .put("/v1/kv/session", r#"{"value":"s1","ttl_seconds":1}"#)
        .await?;
    ensure!(
        s == 201 && b["kv"]["expires_at_ms"].as_u64().is_some(),
        "ttl put: {s} {b}"
    );
    let url = format!("{}/v1/kv/session", n.base);
    wait_status(&n.http, "ttl expiry", Method::GET, &url, None, 404).await?;
    let (s, b) = n.put("/v1/kv/session", r#"{"value":"s2"}"#).await?;
    ensure!(
        s == 201 && b["kv"]["version"] == 1,
        "recreate after expiry: {s} {b}"
    );

    // Listing with pagination and keys-only.
    for i in 0..25 {
        let (s, _) = n
            .put(
                &format!("/v1/kv/list/{i:02}"),
                &format!(r#"{{"value":"v{i}"}}"#),
            )
            .await?;
        ensure!(s == 201);
    }
    n.put("/v1/kv/listx", r#"{"value":"outside"}"#).await?;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("/v1/kv?prefix=list/&limit=10&start_after={}", urlencode(c)),
            None => "/v1/kv?prefix=list/&limit=10".to_string(),
        };
        let (s, b) = n.get(&q).await?;
        ensure!(s == 200, "list: {s} {b}");
        for kv in b["kvs"].as_array().context("kvs")? {
            seen.push(kv["key"].as_str().context("key")?.to_string());
        }
        if b["more"] == true {
            cursor = b["next_start_after"].as_str().map(str::to_string);
        } else {
            break;
        }
    }
    let want: Vec<String> = (0..25).map(|i| format!("list/{i:02}")).collect();
    ensure!(seen == want, "paginated listing: {seen:?}");
    let (s, b) = n.get("/v1/kv?prefix=list/&keys_only=true&limit=3").await?;
    ensure!(
        s == 200 && b["kvs"][0].get("value").is_none() && b["kvs"][0]["version"] == 1,
        "keys_only: {b}"
    );

    // Batch get.
    let (s, b) = n
        .post(
            "/v1/batch/get",
            r#"{"keys":["list/00","nope","app/config/db"]}"#,
        )
        .await?;
    ensure!(
        s == 200
            && b["kvs"].as_array().map(|a| a.len()) == Some(2)
            && b["missing"] == json!(["nope"]),
        "batch get: {s} {b}"
    );

    // Prefix delete.
    let (s, b) = n.delete("/v1/kv?prefix=list/").await?;
    ensure!(s == 200 && b["deleted"] == 25, "prefix delete: {s} {b}");
    let (_, b) = n.get("/v1/kv?prefix=list").await?;
    ensure!(
        b["count"] == 1 && b["kvs"][0]["key"] == "listx",
        "after prefix delete: {b}"
    );

    // Request ids: echoed when given, generated when absent.
    let r = n
        .http
        .get(format!("{}/v1/kv/listx", n.base))
        .header("x-request-id", "abc-123")
        .send()
        .await?;
    ensure!(
        r.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            == Some("abc-123"),
        "request id echoed"
    );
    let r = n.http.get(format!("{}/v1/kv/listx", n.base)).send().await?;
    ensure!(
        r.headers()
            .get("x-request-id")
            .is_some_and(|v| v.len() >= 16),
        "request id generated"
    );
    n.stop().await
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_json_4xx_and_changes_nothing() -> anyhow::Result<()> {
    let n = Node::start(true, 1024).await?;
    n.put("/v1/kv/keep", r#"{"value":"original"}"#).await?;
    let (_, b) = n.get("/v1/kv/keep").await?;
    let rev = b["revision"].clone();

    expect_error(
        "malformed json",
        n.put("/v1/kv/keep", r#"{"value": "#).await?,
        400,
        "invalid_json",
    )?;
    expect_error(
        "empty body",
        n.put("/v1/kv/keep", "").await?,
        400,
        "invalid_json",
    )?;
    expect_error(
        "value not a string",
        n.put("/v1/kv/keep", r#"{"value": 5}"#).await?,
        400,
        "invalid_json",
    )?;
    // serde would read a struct from an array of its fields: not over HTTP.
    expect_error(
        "an array for an object",
        n.put("/v1/kv/keep", r#"["x"]"#).await?,
        400,
        "invalid_json",
    )?;
    expect_error(
        "an array for the init body",
        n.post("/v1/cluster/init", "[null]").await?,
        400,
        "invalid_json",
    )?;
    expect_error(
        "missing value",
        n.put("/v1/kv/keep", r#"{"ttl_seconds": 5}"#).await?,
        400,
        "invalid_json",
    )?;
    expect_error(
        "unknown field",
        n.put("/v1/kv/keep", r#"{"value":"x","colour":"red"}"#)
            .await?,
        400,
        "invalid_json",
    )?;
    expect_error(
        "negative if_revision",
        n.put("/v1/kv/keep", r#"{"value":"x","if_revision":-1}"#)
            .await?,
        400,
        "invalid_json",
    )?;
    expect_error(
        "ttl zero",
        n.put("/v1/kv/keep", r#"{"value":"x","ttl_seconds":0}"#)
            .await?,
        400,
        "invalid_ttl",
    )?;
    expect_error(
        "empty key",
        n.put("/v1/kv/", r#"{"value":"x"}"#).await?,
        400,
        "invalid_key",
    )?;
    expect_error("empty key get", n.get("/v1/kv/").await?, 400, "invalid_key")?;
    let long = "k".repeat(4097);
    expect_error(
        "long key",
        n.put(&format!("/v1/kv/{long}"), r#"{"value":"x"}"#).await?,
        400,
        "key_too_long",
    )?;
    let ok_key = "k".repeat(4096);
    let (s, b) = n
        .put(&format!("/v1/kv/{ok_key}"), r#"{"value":"x"}"#)
        .await?;
    ensure!(s == 201, "4096-byte key is accepted: {s} {b}");
    let big = "v".repeat(1025);
    let (s, b) = n
        .put("/v1/kv/keep", &format!(r#"{{"value":"{big}"}}"#))
        .await?;
    ensure!(
        s == 413 && b["error"]["code"] == "value_too_large" && b["error"]["limit"] == 1024,
        "value over limit: {s} {b}"
    );
    let huge = "v".repeat(100 * 1024);
    let (s, b) = n
        .put("/v1/kv/keep", &format!(r#"{{"value":"{huge}"}}"#))
        .await?;
    ensure!(
        s == 413 && b["error"]["code"] == "body_too_large",
        "body over limit is a JSON 413: {s} {b}"
    );
    expect_error(
        "unknown query param",
        n.get("/v1/kv/keep?consistncy=stale").await?,
        400,
        "invalid_parameter",
    )?;
    expect_error(
        "bad consistency",
        n.get("/v1/kv/keep?consistency=eventual").await?,
        400,
        "invalid_parameter",
    )?;
    expect_error(
        "bad limit",
        n.get("/v1/kv?limit=abc").await?,
        400,
        "invalid_parameter",
    )?;
    expect_error(
        "zero limit",
        n.get("/v1/kv?limit=0").await?,
        400,
        "invalid_parameter",
    )?;
    expect_error(
        "huge limit",
        n.get("/v1/kv?limit=1000000").await?,
        400,
        "invalid_parameter",
    )?;
    expect_error(
        "bad if_revision",
        n.delete("/v1/kv/keep?if_revision=x").await?,
        400,
        "invalid_parameter",
    )?;
    expect_error(
        "prefix delete without prefix",
        n.delete("/v1/kv").await?,
        400,
        "invalid_parameter",
    )?;
    expect_error(
        "prefix delete empty prefix",
        n.delete("/v1/kv?prefix=").await?,
        400,
        "invalid_parameter",
    )?;
    expect_error(
        "batch without keys",
        n.post("/v1/batch/get", r#"{"keys":[]}"#).await?,
        400,
        "invalid_parameter",
    )?;
    expect_error(
        "batch bad key",
        n.post("/v1/batch/get", r#"{"keys":[""]}"#).await?,
        400,
        "invalid_key",
    )?;
    expect_error(
        "unknown endpoint",
        n.get("/v2/everything").await?,
        404,
        "no_such_endpoint",
    )?;
    expect_error(
        "wrong method",
        n.post("/v1/kv/keep", r#"{"value":"x"}"#).await?,
        405,
        "method_not_allowed",
    )?;
    expect_error(
        "membership with two actions",
        n.post(
            "/v1/cluster/membership",
            r#"{"add_voters":[2],"remove_voters":[1]}"#,
        )
        .await?,
        400,
        "invalid_parameter",
    )?;
    expect_error(
        "promote unknown node",
        n.post("/v1/cluster/membership", r#"{"add_voters":[9]}"#)
            .await?,
        400,
        "learner_not_found",
    )?;
    expect_error(
        "remove last voter",
        n.post("/v1/cluster/membership", r#"{"remove_voters":[1]}"#)
            .await?,
        400,
        "empty_membership",
    )?;
    expect_error(
        "learner bad address",
        n.post(
            "/v1/cluster/learners",
            r#"{"id":2,"api_addr":"nohost","raft_addr":"x:1"}"#,
        )
        .await?,
        400,
        "invalid_parameter",
    )?;
    expect_error(
        "transfer to non-voter",
        n.post("/v1/cluster/transfer-leader", r#"{"to":7}"#).await?,
        400,
        "invalid_parameter",
    )?;
    expect_error(
        "init excluding self",
        n.post(
            "/v1/cluster/init",
            r#"{"members":{"5":{"api_addr":"a:1","raft_addr":"a:2"}}}"#,
        )
        .await?,
        400,
        "invalid_parameter",
    )?;
    let (s, b) = n.post("/v1/cluster/init", r#"{"members":{"1":{"api_addr":"a:1","raft_addr":"a:2"},"2":{"api_addr":"b:1","raft_addr":"b:2"}}}"#).await?;
    ensure!(
        s == 400
            && b["error"]["code"] == "invalid_parameter"
            && b["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("members.2")),
        "init naming other voters: {s} {b}"
    );

    // Nothing above changed the data or the revision.
    let (s, b) = n.get("/v1/kv/keep").await?;
    ensure!(
        s == 200 && b["kv"]["value"] == "original",
        "data intact: {b}"
    );
    let (_, list) = n.get("/v1/kv?prefix=&keys_only=true").await?;
    ensure!(list["count"] == 2, "only the two valid keys exist: {list}");
    ensure!(
        b["revision"].as_u64() == rev.as_u64().map(|r| r + 1),
        "only the one valid write moved the revision: {b}"
    );
    n.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_and_ops_endpoints() -> anyhow::Result<()> {
    let n = Node::start(true, 1024).await?;
    n.put("/v1/kv/a", r#"{"value":"1"}"#).await?;
    let (s, b) = n.get("/v1/cluster").await?;
    ensure!(
        s == 200 && b["role"] == "leader" && b["leader_id"] == 1 && b["initialized"] == true,
        "cluster: {b}"
    );
    ensure!(
        b["members"][0]["role"] == "voter" && b["members"][0]["lag"] == 0,
        "members: {b}"
    );
    ensure!(b["term"].as_u64() >= Some(1), "term: {b}");
    // The write was answered by the state machine; openraft publishes the applied
    // index just after, so the cluster view catches up a moment later.
    let nr = &n;
    wait_for(
        "applied index 2 in the cluster view",
        Duration::from_secs(5),
        || async move {
            let (_, b) = nr.get("/v1/cluster").await.ok()?;
            (b["applied_index"].as_u64() >= Some(2)).then_some(())
        },
    )
    .await?;
    let (s, b) = n.post("/v1/cluster/init", "").await?;
    ensure!(
        s == 200 && b["changed"] == false,
        "idempotent init: {s} {b}"
    );
    let (s, b) = n.post("/v1/cluster/transfer-leader", r#"{"to":1}"#).await?;
    ensure!(
        s == 200 && b["changed"] == false,
        "transfer to self is a no-op: {s} {b}"
    );
    let (s, b) = n
        .post("/v1/cluster/membership", r#"{"add_voters":[1]}"#)
        .await?;
    ensure!(
        s == 200 && b["changed"] == false,
        "promote existing voter is a no-op: {s} {b}"
    );

    let (s, b) = n.get("/healthz").await?;
    ensure!(s == 200 && b["status"] == "ok", "healthz: {b}");
    let (s, b) = n.get("/readyz").await?;
    ensure!(s == 200 && b["ready"] == true, "readyz: {b}");
    let (s, b) = n.get("/status").await?;
    ensure!(
        s == 200 && b["node_id"] == 1 && b["role"] == "leader" && b["version"].is_string(),
        "status: {b}"
    );
    ensure!(
        b["uptime_seconds"].is_u64()
            && b["keys"] == 1
            && b["timestamp_ms"].is_u64()
            && b["leader_id"] == 1,
        "status fields: {b}"
    );
    let r = n.http.get(format!("{}/metrics", n.base)).send().await?;
    ensure!(r.status() == 200, "metrics status");
    let text = r.text().await?;
    for m in [
        "kv_http_requests_total{",
        "kv_http_request_duration_seconds_bucket{",
        "kv_raft_term 1",
        "kv_raft_leader_id 1",
        "kv_raft_last_log_index",
        "kv_raft_committed_index",
        "kv_raft_applied_index",
        "kv_raft_replication_lag_entries{follower=\"1\"} 0",
        "kv_storage_sync_seconds_count",
        "kv_raft_log_sync_seconds_count",
        "kv_raft_log_written_bytes_total",
        "kv_raft_log_truncations_total 0",
        "kv_raft_log_segments 1",
        "kv_revision 1",
    ] {
        ensure!(text.contains(m), "metrics lack {m}:\n{text}");
    }
    ensure!(
        text.contains(r#"route="/v1/kv/{*key}",status="201""#),
        "per-route status counter:\n{text}"
    );
    n.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uninitialized_node_refuses_with_503() -> anyhow::Result<()> {
    let n = Node::start(false, 1024).await?;
    expect_error("get", n.get("/v1/kv/a").await?, 503, "not_initialized")?;
    expect_error(
        "stale get",
        n.get("/v1/kv/a?consistency=stale").await?,
        503,
        "not_initialized",
    )?;
    expect_error(
        "put",
        n.put("/v1/kv/a", r#"{"value":"x"}"#).await?,
        503,
        "not_initialized",
    )?;
    expect_error(
        "list",
        n.get("/v1/kv?prefix=a").await?,
        503,
        "not_initialized",
    )?;
    expect_error(
        "learners",
        n.post(
            "/v1/cluster/learners",
            r#"{"id":2,"api_addr":"a:1","raft_addr":"a:2"}"#,
        )
        .await?,
        503,
        "not_initialized",
    )?;
    let (s, b) = n.get("/v1/cluster").await?;
    ensure!(
        s == 200 && b["role"] == "uninitialized" && b["initialized"] == false,
        "cluster view: {b}"
    );
    let (s, b) = n.get("/readyz").await?;
    ensure!(s == 503 && b["ready"] == false, "readyz: {b}");
    let (s, _) = n.get("/healthz").await?;
    ensure!(s == 200, "healthz");
    // Now told to form a cluster, it does, once.
    let (s, b) = n.post("/v1/cluster/init", "{}").await?;
    ensure!(s == 201 && b["changed"] == true, "init: {s} {b}");
    let url = format!("{}/v1/kv/a", n.base);
    wait_status(
        &n.http,
        "writable after init",
        Method::PUT,
        &url,
        Some(json!({"value": "x"})),
        201,
    )
    .await?;
    n.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_restart_and_store_refuses_another_identity() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = |node_id: u64, cluster: &str| Config {
        node_id: Some(node_id),
        cluster_id: cluster.into(),
        ..common::local_config(dir.path(), true)
    };
    let h = kvserver::start_node(cfg(1, "one")).await?;
    let base = format!("http://{}", h.api_addr);
    let http = common::client();
    let url = format!("{base}/v1/kv/durable");
    wait_status(
        &http,
        "write",
        Method::PUT,
        &url,
        Some(json!({"value": "yes"})),
        201,
    )
    .await?;
    h.shutdown().await?;

    let e = kvserver::start_node(cfg(1, "two"))
        .await
        .err()
        .context("other cluster id must be refused")?;
    ensure!(
        e.to_string().contains("cluster_id"),
        "error names the field: {e}"
    );
    let e = kvserver::start_node(cfg(2, "one"))
        .await
        .err()
        .context("other node id must be refused")?;
    ensure!(
        e.to_string().contains("node_id"),
        "error names the field: {e}"
    );

    let h = kvserver::start_node(cfg(1, "one")).await?;
    let url = format!("http://{}/v1/kv/durable", h.api_addr);
    let v = wait_status(&http, "read after restart", Method::GET, &url, None, 200).await?;
    ensure!(
        v["kv"]["value"] == "yes" && v["kv"]["version"] == 1,
        "after restart: {v}"
    );
    h.shutdown().await?;
    Ok(())
}

#[test]
fn binary_reports_config_errors_naming_the_field() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let bin = env!("CARGO_BIN_EXE_kvserver");
    let run = |args: &[&str], env: &[(&str, &str)]| -> anyhow::Result<(i32, String)> {
        let out = std::process::Command::new(bin)
            .args(args)
            .envs(env.iter().copied())
            .output()?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    };
    let f = dir.path().join("bad.yaml");
    std::fs::write(&f, "raft:\n  heartbeat_interval_ms: soon\n")?;
    let (code, err) = run(&["--config", f.to_str().context("path")?], &[])?;
    ensure!(
        code == 2 && err.contains("raft.heartbeat_interval_ms"),
        "wrong type in file: {code} {err}"
    );
    std::fs::write(&f, "nodeid: 3\n")?;
    let (code, err) = run(&["--config", f.to_str().context("path")?], &[])?;
    ensure!(
        code == 2 && err.contains("nodeid") && err.contains("unknown field"),
        "unknown key: {code} {err}"
    );
    let (code, err) = run(&[], &[("KV_MAX_VALUE_BYTES", "lots")])?;
    ensure!(
        code == 2 && err.contains("max_value_bytes") && err.contains("KV_MAX_VALUE_BYTES"),
        "bad env: {code} {err}"
    );
    let (code, err) = run(&["--api-addr", "localhost"], &[])?;
    ensure!(
        code == 2 && err.contains("api_addr"),
        "bad flag: {code} {err}"
    );
    let (code, err) = run(&["--set", "raft.election_timeout_max_ms=1"], &[])?;
    ensure!(
        code == 2 && err.contains("raft.election_timeout_max_ms"),
        "bad relation: {code} {err}"
    );
    let (code, out) = {
        let o = std::process::Command::new(bin)
            .args(["--print-config", "--node-id", "4"])
            .output()?;
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    ensure!(
        code == 0 && out.contains("node_id: 4") && out.contains("heartbeat_interval_ms"),
        "print-config: {code} {out}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_zero() -> anyhow::Result<()> {
    let mut c = common::Cluster::new(&["--bootstrap"]);
    c.add_node(1)?;
    c.wait_up(1).await?;
    let cr = &c;
    wait_for("bootstrapped", Duration::from_secs(10), || async move {
        (cr.put_kv(1, "warm", "up").await.ok()?.0 == 201).then_some(())
    })
    .await?;
    // Writers keep going while SIGTERM arrives: every request that gets a response gets a
    // success (in-flight requests are finished, not failed). A request racing the close of
    // an idle keep-alive connection, or sent after the listener closed, gets no response
    // at all, which is the normal end of that writer.
    let mut writers = Vec::new();
    for w in 0..8 {
        let http = c.http.clone();
        let base = c.url(1, "");
        writers.push(tokio::spawn(async move {
            let mut ok = 0u32;
            for i in 0..200 {
                match http
                    .put(format!("{base}/v1/kv/w{w}/{i}"))
                    .json(&json!({"value": "x"}))
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => ok += 1,
                    Ok(r) => return Err(format!("writer {w}: status {}", r.status())),
                    Err(_) => break,
                }
            }
            Ok(ok)
        }));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    let status = c.terminate(1, Duration::from_secs(15)).await?;
    ensure!(
        status.code() == Some(0),
        "exit status after SIGTERM: {status:?}"
    );
    let mut total = 0;
    for w in writers {
        total += w.await?.map_err(anyhow::Error::msg)?;
    }
    ensure!(total > 0, "some writes completed before shutdown");
    // Every acknowledged write is there after restart.
    c.start(1)?;
    c.wait_up(1).await?;
    let cr = &c;
    let count = wait_for(
        "restarted node lists keys",
        Duration::from_secs(10),
        || async move {
            let (s, b) = cr
                .get(1, "/v1/kv?prefix=w&keys_only=true&limit=10000")
                .await
                .ok()?;
            (s == 200).then(|| b["count"].as_u64()).flatten()
        },
    )
    .await?;
    ensure!(
        count >= u64::from(total),
        "acknowledged {total}, found {count}"
    );
    Ok(())
}

/// Found by the API fuzzer: a learner that was never reached looked caught up, so
/// promoting it made a one-node cluster a two-voter cluster that could not commit.
/// Now the promotion is refused and the cluster keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_learner_is_not_promoted() -> anyhow::Result<()> {
    let n = Node::start(true, 1 << 20).await?;
    // A loopback port nobody listens on.
    let dead = common::free_port();
    let learner =
        format!(r#"{{"id":2,"api_addr":"127.0.0.1:{dead}","raft_addr":"127.0.0.1:{dead}"}}"#);
    let (s, b) = n.post("/v1/cluster/learners", &learner).await?;
    ensure!(s == 200, "learner added: {s} {b}");
    let (s, b) = n
        .post("/v1/cluster/membership", r#"{"add_voters":[2]}"#)
        .await?;
    ensure!(
        s == 409 && b["error"]["code"] == "learner_not_caught_up",
        "promotion of an unreachable learner refused: {s} {b}"
    );
    let (s, b) = n
        .put("/v1/kv/after", r#"{"value":"still serving"}"#)
        .await?;
    ensure!(s == 201, "writes still commit: {s} {b}");
    let (_, info) = n.get("/v1/cluster").await?;
    ensure!(
        info["joint"] == false
            && info["members"].as_array().is_some_and(|m| m
                .iter()
                .any(|m| m["id"] == 2 && m["role"] == "learner" && m["matched_index"].is_null())),
        "node 2 stays a learner that matched nothing: {info}"
    );
    n.stop().await
}
