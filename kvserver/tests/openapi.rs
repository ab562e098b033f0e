//! The OpenAPI document: the served document equals the committed
//! `docs/openapi.json`, and a walk over the document calls every operation
//! (with the documented example bodies) and checks that each answers with a
//! documented status, the documented content type and a body carrying the
//! documented required fields.

mod common;

use std::time::Duration;

use anyhow::Context;
use anyhow::bail;
use anyhow::ensure;
use serde_json::Value;
use serde_json::json;

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
    {
        Some(name) => &doc["components"]["schemas"][name],
        None => schema,
    }
}

/// Checks `body` against the documented schema: type object, required fields present.
fn check_body(doc: &Value, schema: &Value, body: &Value, what: &str) -> anyhow::Result<()> {
    let schema = resolve(doc, schema);
    if schema["type"] == "object" {
        ensure!(body.is_object(), "{what}: expected an object, got {body}");
        for req in schema["required"].as_array().into_iter().flatten() {
            let field = req.as_str().context("required name")?;
            ensure!(
                body.get(field).is_some(),
                "{what}: required field `{field}` missing in {body}"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_answers_as_documented() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (node, base) = common::start_ready(common::local_config(dir.path(), true)).await?;
    let http = common::client();

    // The served document is the committed one.
    let doc: Value = http
        .get(format!("{base}/v1/openapi.json"))
        .send()
        .await?
        .json()
        .await?;
    let committed: Value = serde_json::from_str(&std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/openapi.json"
    ))?)?;
    ensure!(
        doc == committed,
        "docs/openapi.json is out of date: regenerate with `cargo run -p kvserver --bin kvserver -- --print-openapi > docs/openapi.json`"
    );

    let put = http
        .put(format!("{base}/v1/kv/openapi/probe"))
        .json(&json!({"value": "v"}))
        .send()
        .await?;
    ensure!(put.status() == 201, "seed key");
    let raft_addr = node.raft_addr.to_string();
    let api_addr = node.api_addr.to_string();

    let mut calls = Vec::new();
    for (path, item) in doc["paths"].as_object().context("paths")? {
        for (method, op) in item.as_object().context("path item")? {
            calls.push((path.clone(), method.clone(), op.clone()));
        }
    }
    // Deletions last, so reads find the seeded key.
    calls.sort_by_key(|(p, m, _)| (m == "delete", p == "/v1/kv"));
    let mut walked = 0;
    for (path, method, op) in calls {
        let url_path = path.replace("{key}", "openapi/probe");
        let query = match (path.as_str(), method.as_str()) {
            ("/v1/kv", "delete") => "?prefix=openapi/",
            ("/v1/kv", "get") => "?prefix=openapi/&limit=10",
            _ => "",
        };
        let body = if let Some(rb) = op.get("requestBody") {
            let schema = resolve(&doc, &rb["content"]["application/json"]["schema"]);
            let mut example = schema
                .get("example")
                .cloned()
                .with_context(|| format!("{method} {path}: request schema has no example"))?;
            // Examples name cluster-internal hosts; aim at this node so no traffic leaves loopback.
            if path == "/v1/cluster/learners" {
                example = json!({"id": 1, "api_addr": api_addr, "raft_addr": raft_addr});
            }
            if path == "/v1/cluster/transfer-leader" || path == "/v1/cluster/membership" {
                example = if path.ends_with("membership") {
                    json!({"add_voters": [1]})
                } else {
                    json!({"to": 1})
                };
            }
            Some(example)
        } else {
            None
        };
        let url = format!("{base}{url_path}{query}");
        let mut req = http.request(method.to_uppercase().parse()?, &url);
        if let Some(b) = &body {
            req = req.json(b);
        }
        let what = format!("{} {}{}", method.to_uppercase(), url_path, query);
        let resp = if path == "/v1/watch" {
            // A stream: only the head is checked.
            tokio::time::timeout(Duration::from_secs(10), req.send())
                .await
                .context("watch head")??
        } else {
            req.send().await?
        };
        let status = resp.status().as_u16().to_string();
        let Some(documented) = op["responses"].get(&status) else {
            bail!(
                "{what}: status {status} is not documented (documented: {:?})",
                op["responses"]
                    .as_object()
                    .map(|o| o.keys().collect::<Vec<_>>())
            );
        };
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let (doc_ctype, schema) = documented["content"]
            .as_object()
            .and_then(|c| c.iter().next())
            .context("documented content")?;
        ensure!(
            ctype.starts_with(doc_ctype.as_str()),
            "{what}: content-type {ctype:?}, documented {doc_ctype:?}"
        );
        if doc_ctype == "application/json" {
            let body: Value = resp
                .json()
                .await
                .with_context(|| format!("{what}: body is not JSON"))?;
            check_body(&doc, &schema["schema"], &body, &what)?;
        }
        walked += 1;
        eprintln!("openapi: {what} -> {status} as documented");
    }
    ensure!(walked >= 17, "walked {walked} operations");
    node.shutdown().await?;
    Ok(())
}
