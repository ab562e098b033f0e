//! Property test of the HTTP API's request decoding: arbitrary bytes and
//! arbitrary JSON (with the API's own field names mixed in, so decoders see
//! near-misses: wrong types, missing and unknown fields, odd nesting) sent to
//! every endpoint of a real node. Every answer must be below 500, and every
//! 4xx must carry the JSON error body with a `code`. The schema-driven fuzz
//! (schemathesis against the OpenAPI document) is `scripts/fuzz_api.sh`.
//!
//! Strings never contain `:`, so no generated learner address is valid and the
//! node never dials or resolves an invented peer.

mod common;

use std::time::Duration;

use proptest::prelude::*;
use serde_json::Value;

const FIELDS: &[&str] = &[
    "value",
    "ttl_seconds",
    "if_revision",
    "keys",
    "consistency",
    "compare",
    "success",
    "failure",
    "op",
    "key",
    "target",
    "id",
    "api_addr",
    "raft_addr",
    "wait",
    "add_voters",
    "remove_voters",
    "remove_nodes",
    "retain",
    "to",
    "members",
    "prefix",
    "limit",
];

fn text() -> impl Strategy<Value = String> {
    "[a-z0-9/ _.\\-é]{0,12}"
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e20f64..1e20).prop_map(Value::from),
        text().prop_map(Value::from),
        prop::sample::select(vec![
            "==",
            "!=",
            "<",
            ">",
            "put",
            "get",
            "delete",
            "value",
            "version",
            "exists",
            "stale",
            "linearizable"
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
            prop::collection::vec(
                (
                    prop_oneof![
                        prop::sample::select(FIELDS.to_vec()).prop_map(String::from),
                        text()
                    ],
                    inner
                ),
                0..6
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

#[derive(Debug, Clone)]
enum Body {
    None,
    Bytes(Vec<u8>),
    Json(Value),
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        1 => Just(Body::None),
        2 => prop::collection::vec(any::<u8>(), 0..200).prop_map(Body::Bytes),
        6 => json().prop_map(Body::Json),
    ]
}

fn query() -> impl Strategy<Value = String> {
    prop::collection::vec(
        (
            prop::sample::select(vec![
                "prefix",
                "limit",
                "keys_only",
                "consistency",
                "start_after",
                "if_revision",
                "bogus",
            ]),
            prop_oneof![
                text(),
                any::<i64>().prop_map(|i| i.to_string()),
                Just("stale".to_string()),
                Just("true".into())
            ],
        ),
        0..3,
    )
    .prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(k, v)| format!("{k}={}", v.replace(' ', "%20").replace('é', "%C3%A9")))
            .collect::<Vec<_>>()
            .join("&")
    })
}

const ENDPOINTS: &[(&str, &str)] = &[
    ("PUT", "/v1/kv/{key}"),
    ("GET", "/v1/kv/{key}"),
    ("DELETE", "/v1/kv/{key}"),
    ("GET", "/v1/kv"),
    ("DELETE", "/v1/kv"),
    ("POST", "/v1/batch/get"),
    ("POST", "/v1/txn"),
    ("POST", "/v1/cluster/init"),
    ("POST", "/v1/cluster/learners"),
    ("POST", "/v1/cluster/membership"),
    ("POST", "/v1/cluster/transfer-leader"),
    ("GET", "/v1/cluster"),
    ("PATCH", "/v1/kv/{key}"),
];

#[test]
fn arbitrary_requests_never_get_a_5xx_and_errors_are_json() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // reqwest arms its timeouts when a request is sent: do that inside the runtime.
    let _guard = rt.enter();
    let dir = tempfile::tempdir().expect("tempdir");
    let node = rt
        .block_on(kvserver::start_node(common::local_config(dir.path(), true)))
        .expect("node");
    let base = format!("http://{}", node.api_addr);
    let http = common::client();
    rt.block_on(common::wait_status(
        &http,
        "leader",
        reqwest::Method::GET,
        &format!("{base}/readyz"),
        None,
        200,
    ))
    .expect("ready");

    let config = ProptestConfig {
        cases: 400,
        // A failure prints the minimal request; there is no source file to persist it next to.
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let seen = std::sync::Mutex::new(std::collections::BTreeMap::<u16, u32>::new());
    let strategy = (0..ENDPOINTS.len(), "[a-z0-9/_.é\\-]{1,20}", query(), body());
    let result = runner.run(&strategy, |(e, key, q, b)| {
        let (method, path) = ENDPOINTS[e];
        let key = key.replace('é', "%C3%A9");
        let mut url = format!("{base}{}", path.replace("{key}", &key));
        if !q.is_empty() {
            url = format!("{url}?{q}");
        }
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = http
            .request(method.clone(), &url)
            .timeout(Duration::from_secs(20));
        req = match &b {
            Body::None => req,
            Body::Bytes(bytes) => req
                .header("content-type", "application/json")
                .body(bytes.clone()),
            Body::Json(v) => req.json(v),
        };
        let (status, text) = rt.block_on(async {
            let r = req.send().await.expect("the node answers");
            let st = r.status().as_u16();
            (st, r.text().await.unwrap_or_default())
        });
        *seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(status)
            .or_default() += 1;
        prop_assert!(status < 500, "{method} {url} {b:?} -> {status} {text}");
        if status >= 400 {
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            prop_assert!(
                v["error"]["code"].is_string(),
                "{method} {url} -> {status} without a JSON error: {text}"
            );
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let seen = seen.into_inner().unwrap_or_else(|e| e.into_inner());
    eprintln!("statuses: {seen:?}");
    // The generator must reach both the handlers' success paths and their refusals.
    assert!(
        seen.keys().any(|s| *s < 300) && seen.keys().any(|s| *s >= 400),
        "{seen:?}"
    );
    let still = rt
        .block_on(http.get(format!("{base}/healthz")).send())
        .expect("alive");
    assert!(still.status().is_success());
    rt.block_on(node.shutdown()).expect("clean shutdown");
}
