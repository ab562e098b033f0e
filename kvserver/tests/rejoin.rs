//! Members that come back behind the membership: a member whose volume was
//! wiped (it must stay out until re-added as a learner, then replay the log
//! without acting on the stale memberships in it), and a follower that was down
//! while the node that now leads was added (it must accept that leader's
//! replication although its own membership does not list it). Real `kvserver`
//! processes with peer TLS, as in Kubernetes.

mod common;

use std::time::Duration;

use anyhow::Context;
use anyhow::ensure;
use common::Cluster;
use common::wait_for;
use serde_json::json;

/// A leader whose data dir is wiped comes back empty: it must neither vote nor
/// quietly refill as a voter (its forgotten acknowledgements could let a leader
/// without them be elected). It reports `lost_data`, the cluster keeps serving,
/// and removing it and re-adding it as a learner brings it back with all data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_member_stays_out_until_readded_as_learner() {
    let mut c = Cluster::new(&[]);
    if let Err(e) = wiped_member(&mut c).await {
        c.fail(e);
    }
}

/// The same, with the leader sending one entry per append: the wiped node replays the
/// log from its first entry, whose membership names node 1 its sole voter and lists
/// none of the others. Before `kvserver::catchup`, with peer TLS it refused the leader
/// as "not a member" and never caught up; admitted, it elected itself alone from that
/// entry and overwrote committed entries (TLS campaign seeds 1045, 1081, 1174, 1192).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_member_replaying_its_log_one_entry_at_a_time_rejoins() {
    let mut c = Cluster::new(&["--set", "raft.max_payload_entries=1"]);
    if let Err(e) = wiped_member(&mut c).await {
        c.fail(e);
    }
}

async fn wiped_member(c: &mut Cluster) -> anyhow::Result<()> {
    let leader = c.form(3).await?;
    let mut acked = Vec::new();
    for i in 0..30 {
        let key = format!("w/{i}");
        let (st, body) = c.put_kv(1 + (i % 3), &key, "v").await?;
        ensure!(st == 201, "put {key}: {st} {body}");
        acked.push(key);
    }
    c.kill(leader);
    std::fs::remove_dir_all(&c.nodes[&leader].data_dir)?;
    c.start(leader)?;
    c.wait_up(leader).await?;
    let others: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let new_leader = c
        .wait_leader_among(&others, Duration::from_secs(10))
        .await?;

    let cr = &*c;
    let info = wait_for(
        "the wiped node to report lost_data",
        Duration::from_secs(10),
        || async move {
            let info = cr.cluster_info(leader).await.ok()?;
            (info["lost_data"] == true).then_some(info)
        },
    )
    .await?;
    ensure!(
        info["initialized"] == false && info["role"] == "uninitialized",
        "the wiped node stays out of the cluster: {info}"
    );
    let metrics = c.metrics_text(leader).await?;
    ensure!(
        metrics.contains("kv_peer_refused_total{reason=\"lost_data\"}"),
        "refusals are counted"
    );
    // The two others keep serving.
    for i in 30..40 {
        let key = format!("w/{i}");
        let (st, body) = c.put_kv(new_leader, &key, "v").await?;
        ensure!(st == 201, "put {key} without the wiped member: {st} {body}");
        acked.push(key);
    }
    let info = c.cluster_info(leader).await?;
    ensure!(
        info["initialized"] == false,
        "still out after more writes: {info}"
    );

    // Recovery through the cluster API: remove, add back as learner, promote.
    let (st, body) = c
        .post(
            new_leader,
            "/v1/cluster/membership",
            json!({"remove_nodes": [leader]}),
        )
        .await?;
    ensure!(st == 200, "remove the wiped member: {st} {body}");
    c.join(leader).await?;
    let info = c.cluster_info(new_leader).await?;
    let role = info["members"]
        .as_array()
        .context("members")?
        .iter()
        .find(|m| m["id"] == leader)
        .map(|m| m["role"].clone());
    ensure!(
        role == Some(json!("voter")),
        "the member is a voter again: {info}"
    );
    let target = info["committed_index"].as_u64().context("committed")?;
    c.wait_applied(leader, target, Duration::from_secs(15))
        .await?;
    c.ensure_all_present(leader, "w/", &acked).await?;
    let info = c.cluster_info(leader).await?;
    ensure!(
        info["lost_data"] == false && info["role"] == "follower",
        "rejoined as a follower: {info}"
    );
    Ok(())
}

/// A follower stopped while node 4 joins and takes the lead comes back holding a
/// membership without node 4. With peer TLS it refused node 4 as "not a member"
/// on every request and never caught up (TLS campaign seed 1091): its membership
/// was stale, and it had no way to learn that from the one node that could tell
/// it. Now a node that hears from no leader it knows serves replication from a
/// node it cannot place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_missed_the_new_leaders_addition_catches_up_from_it() {
    let mut c = Cluster::new(&[]);
    if let Err(e) = missed_addition(&mut c).await {
        c.fail(e);
    }
}

async fn missed_addition(c: &mut Cluster) -> anyhow::Result<()> {
    let leader = c.form(3).await?;
    let behind = (1..=3).find(|id| *id != leader).context("a follower")?;
    c.terminate(behind, Duration::from_secs(10)).await?;
    c.add_node(4)?;
    c.join(4).await?;
    let (st, body) = c
        .post(leader, "/v1/cluster/transfer-leader", json!({"to": 4}))
        .await?;
    ensure!(st == 200, "transfer leadership to node 4: {st} {body}");
    let mut acked = Vec::new();
    for i in 0..20 {
        let key = format!("m/{i}");
        let (st, body) = c.put_kv(4, &key, "v").await?;
        ensure!(st == 201, "put {key}: {st} {body}");
        acked.push(key);
    }
    c.start(behind)?;
    c.wait_up(behind).await?;
    let target = c.committed_index(4).await?;
    c.wait_applied(behind, target, Duration::from_secs(15))
        .await?;
    c.ensure_all_present(behind, "m/", &acked).await?;
    let info = c.cluster_info(4).await?;
    ensure!(
        info["leader_id"] == 4,
        "node 4 led throughout, so the follower caught up from a node it could not place: {info}"
    );
    Ok(())
}
