//! Clients that load the cluster while faults happen and record every
//! operation into the history: linearizable reads, writes and value-CAS on a
//! few shared register keys (so operations overlap and conflict), plus inserts
//! of unique keys that are never overwritten (so a lost acknowledged write
//! shows up by name). Each client is a closed loop against a random node, and
//! every value it writes is unique, which makes the checker's job sharp.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use serde_json::Value;
use serde_json::json;

use crate::history::Call;
use crate::history::Op;
use crate::history::Ret;
use crate::rng::Rng;

/// Shape of the load.
#[derive(Debug, Clone)]
pub struct Workload {
    pub clients: usize,
    /// Number of shared register keys.
    pub keys: usize,
    /// Percentages of reads, writes and CAS; the rest are unique inserts.
    pub read_pct: u64,
    pub write_pct: u64,
    pub cas_pct: u64,
    /// Client-side deadline of one request; beyond it the outcome is unknown.
    pub op_timeout: Duration,
    /// Read with `consistency=stale` (served locally, may lag). Not linearizable by
    /// design: used to show that the checker catches what it must.
    pub stale_reads: bool,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            clients: 6,
            keys: 4,
            read_pct: 45,
            write_pct: 25,
            cas_pct: 20,
            op_timeout: Duration::from_secs(3),
            stale_reads: false,
        }
    }
}

/// Everything the clients observed.
#[derive(Debug, Default)]
pub struct Recorded {
    pub ops: Vec<Op>,
    /// Unique keys whose insert was acknowledged.
    pub unique_acked: Vec<String>,
    /// Requests by outcome: ok, definite failure, unknown.
    pub ok: u64,
    pub failed: u64,
    pub unknown: u64,
}

/// Shared recorder; times are microseconds since `start`.
#[derive(Debug)]
pub struct Recorder {
    pub start: Instant,
    inner: Mutex<Recorded>,
}

impl Recorder {
    pub fn new(start: Instant) -> Self {
        Recorder {
            start,
            inner: Mutex::new(Recorded::default()),
        }
    }

    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn record(&self, op: Op, outcome: Outcome) {
        let mut r = self.lock();
        match outcome {
            Outcome::Ok => r.ok += 1,
            Outcome::Failed => {
                r.failed += 1;
                return;
            }
            Outcome::Unknown => r.unknown += 1,
        }
        // Reads without an answer change nothing: leave them out.
        if op.call == Call::Read && op.ret == Ret::Unknown {
            return;
        }
        r.ops.push(op);
    }

    pub fn unique_acked(&self, key: String) {
        let mut r = self.lock();
        r.ok += 1;
        r.unique_acked.push(key);
    }

    pub fn count(&self, outcome: Outcome) {
        let mut r = self.lock();
        match outcome {
            Outcome::Ok => r.ok += 1,
            Outcome::Failed => r.failed += 1,
            Outcome::Unknown => r.unknown += 1,
        }
    }

    pub fn take(&self) -> Recorded {
        std::mem::take(&mut *self.lock())
    }

    /// The acknowledged unique inserts so far.
    pub fn acked_unique(&self) -> Vec<String> {
        self.lock().unique_acked.clone()
    }
}

/// How a request ended, from the client's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Definitely not applied.
    Failed,
    /// May or may not have been applied.
    Unknown,
}

/// Error answers that prove nothing was proposed (see `history`).
pub fn definite_failure(status: u16, code: &str) -> bool {
    (400..500).contains(&status)
        || (status == 503 && matches!(code, "no_leader" | "not_initialized" | "shutting_down"))
}

/// A request's answer: status and JSON body, or the transport error kind.
enum Answer {
    Http(u16, Value),
    /// The connection could not be made: the request never reached a node.
    NotSent,
    /// Sent (or maybe sent) but no answer: timeout, reset.
    Lost,
}

async fn send(req: reqwest::RequestBuilder) -> Answer {
    match req.send().await {
        Ok(r) => {
            let st = r.status().as_u16();
            match r.json::<Value>().await {
                Ok(v) => Answer::Http(st, v),
                Err(_) => Answer::Lost,
            }
        }
        Err(e) if e.is_connect() => Answer::NotSent,
        Err(_) => Answer::Lost,
    }
}

/// The register key `i`.
pub fn key(i: usize) -> String {
    format!("r/{i}")
}

/// Reads `key` linearizably through `url`: `Some(value)` on an answer.
pub async fn read(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    timeout: Duration,
) -> Option<Option<String>> {
    match send(http.get(format!("{url}/v1/kv/{key}")).timeout(timeout)).await {
        Answer::Http(200, v) => v["kv"]["value"].as_str().map(|s| Some(s.to_string())),
        Answer::Http(404, v) if v["error"]["code"] == "key_not_found" => Some(None),
        _ => None,
    }
}

/// One client: until `stop`, picks a node and an operation and records it.
#[allow(clippy::too_many_arguments)]
pub async fn client(
    idx: usize,
    mut rng: Rng,
    http: reqwest::Client,
    nodes: Vec<(u64, String)>,
    w: Workload,
    rec: Arc<Recorder>,
    stop: Arc<AtomicBool>,
) {
    let mut seq = 0u64;
    // The last value this client saw per key: what its CAS expects.
    let mut seen: Vec<Option<String>> = vec![None; w.keys];
    while !stop.load(Ordering::Relaxed) {
        let Some((node, url)) = rng.pick(&nodes).cloned() else {
            return;
        };
        let k = rng.below(w.keys as u64) as usize;
        let roll = rng.below(100);
        seq += 1;
        let value = format!("c{idx}-{seq}");
        let invoke = rec.now_us();
        let (call, answer) = if roll < w.read_pct {
            let q = if w.stale_reads {
                "?consistency=stale"
            } else {
                ""
            };
            let a = send(
                http.get(format!("{url}/v1/kv/{}{q}", key(k)))
                    .timeout(w.op_timeout),
            )
            .await;
            (Call::Read, a)
        } else if roll < w.read_pct + w.write_pct {
            let req = http
                .put(format!("{url}/v1/kv/{}", key(k)))
                .json(&json!({"value": value}));
            (
                Call::Write {
                    value: value.clone(),
                },
                send(req.timeout(w.op_timeout)).await,
            )
        } else if roll < w.read_pct + w.write_pct + w.cas_pct {
            let expect = seen[k].clone();
            let compare = match &expect {
                Some(v) => json!({"key": key(k), "target": "value", "op": "==", "value": v}),
                None => json!({"key": key(k), "target": "exists", "op": "==", "value": false}),
            };
            let body = json!({"compare": [compare], "success": [{"op": "put", "key": key(k), "value": value}]});
            let req = http
                .post(format!("{url}/v1/txn"))
                .json(&body)
                .timeout(w.op_timeout);
            (
                Call::Cas {
                    expect,
                    new: value.clone(),
                },
                send(req).await,
            )
        } else {
            let ukey = format!("u/{value}");
            let req = http
                .put(format!("{url}/v1/kv/{ukey}"))
                .json(&json!({"value": "1"}))
                .timeout(w.op_timeout);
            let outcome = match send(req).await {
                Answer::Http(200 | 201, _) => {
                    rec.unique_acked(ukey);
                    continue;
                }
                Answer::Http(st, v)
                    if definite_failure(st, v["error"]["code"].as_str().unwrap_or("")) =>
                {
                    Outcome::Failed
                }
                Answer::NotSent => Outcome::Failed,
                _ => Outcome::Unknown,
            };
            rec.count(outcome);
            backoff(outcome).await;
            continue;
        };
        let complete = rec.now_us();
        let (ret, outcome) = match (&call, answer) {
            (Call::Read, Answer::Http(200, v)) => match v["kv"]["value"].as_str() {
                Some(s) => (
                    Ret::Read {
                        value: Some(s.to_string()),
                    },
                    Outcome::Ok,
                ),
                None => (Ret::Unknown, Outcome::Unknown),
            },
            (Call::Read, Answer::Http(404, v)) if v["error"]["code"] == "key_not_found" => {
                (Ret::Read { value: None }, Outcome::Ok)
            }
            (Call::Write { .. }, Answer::Http(200 | 201, _)) => (Ret::Write, Outcome::Ok),
            (Call::Cas { .. }, Answer::Http(200, v)) if v["succeeded"].is_boolean() => (
                Ret::Cas {
                    ok: v["succeeded"] == true,
                },
                Outcome::Ok,
            ),
            (_, Answer::Http(st, v))
                if definite_failure(st, v["error"]["code"].as_str().unwrap_or("")) =>
            {
                (Ret::Unknown, Outcome::Failed)
            }
            (_, Answer::NotSent) => (Ret::Unknown, Outcome::Failed),
            _ => (Ret::Unknown, Outcome::Unknown),
        };
        match (&call, &ret) {
            (_, Ret::Read { value }) => seen[k] = value.clone(),
            (Call::Write { value }, Ret::Write) => seen[k] = Some(value.clone()),
            (Call::Cas { new, .. }, Ret::Cas { ok: true }) => seen[k] = Some(new.clone()),
            _ => {}
        }
        let complete_us = if outcome == Outcome::Unknown {
            u64::MAX
        } else {
            complete
        };
        rec.record(
            Op {
                client: idx,
                key: key(k),
                call,
                ret,
                invoke_us: invoke,
                complete_us,
                node,
            },
            outcome,
        );
        backoff(outcome).await;
    }
}

/// Like a real client, pause briefly after an error instead of hammering a node
/// that answers "no leader" in microseconds.
async fn backoff(outcome: Outcome) {
    if outcome != Outcome::Ok {
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
