//! The typed client against a real 3-node cluster: every call, endpoint
//! failover when the preferred node is killed, and a watch stream that keeps
//! delivering every revision in order while its node dies.

mod common;

use std::time::Duration;

use anyhow::Context;
use anyhow::ensure;
use common::Cluster;
use futures_util::StreamExt;
use kvserver::client::Client;
use kvserver::client::ClientError;
use kvserver::model::Compare;
use kvserver::model::CompareTarget;
use kvserver::model::Consistency;
use kvserver::model::ListQuery;
use kvserver::model::Operation;
use kvserver::model::OperationResult;
use kvserver::model::PutRequest;
use kvserver::model::TxnRequest;
use serde_json::json;

fn put(v: &str) -> PutRequest {
    PutRequest {
        value: v.into(),
        ..Default::default()
    }
}

async fn client_calls(c: &mut Cluster) -> anyhow::Result<()> {
    let leader = c.form(3).await?;
    // The preferred (first) endpoint is a follower that will be killed later.
    let victim = (1..=3).find(|id| *id != leader).context("follower")?;
    let mut endpoints = vec![c.nodes[&victim].api.to_string()];
    endpoints.extend(
        (1..=3)
            .filter(|id| *id != victim)
            .map(|id| c.nodes[&id].api.to_string()),
    );
    // `host:port` endpoints with TLS settings mean https://.
    let client = c
        .access()
        .builder(endpoints)
        .backoff(Duration::from_millis(50))
        .build()?;

    let info = client.cluster().await?;
    ensure!(
        info.members.len() == 3 && info.leader_id == Some(leader),
        "cluster: {info:?}"
    );
    let p = client.put("app/a", &put("1")).await?;
    ensure!(p.created && p.kv.version == 1, "put: {p:?}");
    let g = client
        .get("app/a", Consistency::Linearizable)
        .await?
        .context("present")?;
    // The preferred endpoint (a follower) serves the linearizable read itself,
    // after a read index from the leader.
    ensure!(
        g.kv.value.as_deref() == Some("1") && g.node_id == victim,
        "get: {g:?}"
    );
    ensure!(
        client.get("nope", Consistency::Stale).await?.is_none(),
        "missing key is None"
    );
    let err = client
        .put(
            "app/a",
            &PutRequest {
                value: "2".into(),
                if_revision: Some(0),
                ttl_seconds: None,
            },
        )
        .await
        .err()
        .context("CAS must fail")?;
    ensure!(
        err.status() == Some(412) && err.code() == Some("revision_mismatch"),
        "cas: {err}"
    );
    client.put("app/b c", &put("2")).await?;
    let l = client
        .list(&ListQuery {
            prefix: "app/".into(),
            ..Default::default()
        })
        .await?;
    ensure!(l.count == 2 && l.kvs[1].key == "app/b c", "list: {l:?}");
    let b = client
        .batch_get(vec!["app/a".into(), "zz".into()], Consistency::Linearizable)
        .await?;
    ensure!(
        b.kvs.len() == 1 && b.missing == vec!["zz".to_string()],
        "batch: {b:?}"
    );
    let t = client
        .txn(&TxnRequest {
            compare: vec![Compare {
                key: "app/a".into(),
                target: CompareTarget::Value,
                op: "==".into(),
                value: json!("1"),
            }],
            success: vec![Operation::Put {
                key: "app/a".into(),
                value: "3".into(),
                ttl_seconds: None,
            }],
            failure: vec![],
        })
        .await?;
    ensure!(
        t.succeeded
            && matches!(&t.results[0], OperationResult::Put { kv, .. } if kv.value.as_deref() == Some("3")),
        "txn: {t:?}"
    );
    ensure!(
        client.delete("app/b c", None).await?.is_some()
            && client.delete("app/b c", None).await?.is_none(),
        "delete twice"
    );
    let d = client.delete_prefix("app/").await?;
    ensure!(d.deleted == 1, "prefix delete: {d:?}");

    // A watch on the preferred endpoint, then that node dies mid-stream.
    let start = d.revision;
    let mut stream = Box::pin(client.watch("w/", Some(start)));
    let writer = {
        let client = client.clone();
        tokio::spawn(async move {
            let (mut acked, mut unknown) = (0u64, 0u64);
            for i in 0..120 {
                // Writes retry only when certainly not applied; an error after sending
                // (the node died mid-request) leaves the outcome unknown.
                match client.put(&format!("w/{i}"), &put("x")).await {
                    Ok(_) => acked += 1,
                    Err(_) => unknown += 1,
                }
            }
            (acked, unknown)
        })
    };
    let mut seen = Vec::new();
    while seen.len() < 30 {
        let ev = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await?
            .context("stream ended")??;
        seen.push(ev.revision);
    }
    c.kill(victim);
    let (acked, unknown) = writer.await?;
    // The revision after the last write, read linearizably through the leader.
    let end = client.put("w/end", &put("x")).await?.revision - 1;
    while seen.last().copied().unwrap_or(0) < end {
        let ev = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await?
            .context("stream ended")??;
        seen.push(ev.revision);
    }
    let want: Vec<u64> = (start + 1..=end).collect();
    ensure!(
        seen == want,
        "watch across a node death: got {} revisions, want {}",
        seen.len(),
        want.len()
    );
    let n = want.len() as u64;
    ensure!(
        acked <= n && n <= acked + unknown,
        "revisions {n} vs {acked} acknowledged (+{unknown} unknown) writes"
    );
    // Reads keep working with the first endpoint dead.
    ensure!(
        client
            .get("w/0", Consistency::Linearizable)
            .await?
            .is_some(),
        "failover read"
    );
    let err: ClientError = Client::new(["127.0.0.1:1"])?
        .cluster()
        .await
        .err()
        .context("dead endpoint")?;
    ensure!(
        matches!(err, ClientError::Transport { .. }),
        "transport error: {err}"
    );
    eprintln!(
        "client: watch delivered {} revisions in order across the death of its node; {acked} writes acked",
        seen.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_client_fails_over_and_watch_resumes() {
    let mut c = Cluster::new(&[]);
    if let Err(e) = client_calls(&mut c).await {
        c.fail(e);
    }
}
