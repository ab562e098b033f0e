//! Forced recovery from permanent quorum loss, on real processes: a 3-node
//! cluster under 8 writers loses two volumes for good; the survivor alone
//! cannot take writes; started with `--force-new-cluster-from` it forms a new
//! cluster (new id, certificates reissued for it) holding every acknowledged
//! write, the other two come back empty and join as learners, every member
//! serves exactly the writers' acknowledged state, revisions continue, and a
//! restart with the same settings changes nothing. SQLite and PostgreSQL.
//!
//! The expected state comes from the writers' acknowledgements, never from the
//! recovery code under test.

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::ensure;
use common::Cluster;
use common::backup::*;
use kvserver::model::PutRequest;
use kvserver::record::StoredKv;

async fn recover_from_the_survivor(c: &mut Cluster, sqlite: bool) -> anyhow::Result<()> {
    c.form(3).await?;
    let client = typed_client(c, &[1, 2, 3])?;
    let history = Arc::new(History::default());
    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_writers(&client, 8, history.clone(), stop.clone());
    common::wait_for("400 acknowledged writes", Duration::from_secs(60), || {
        let n = history.all().len();
        async move { (n >= 400).then_some(()) }
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await??;
    }
    let last = history.last_revision();
    let mut want = history.state_at(last);
    // Node 1 is the most up-to-date survivor: it applied everything committed.
    let leader = c.wait_leader(Duration::from_secs(10)).await?;
    let committed = c.committed_index(leader).await?;
    c.wait_applied(1, committed, Duration::from_secs(20))
        .await?;

    // Two of three volumes are lost for good: node 1 alone has no quorum.
    c.wipe(2)?;
    c.wipe(3)?;
    let lone = c
        .access()
        .builder([c.url(1, "")])
        .timeout(Duration::from_secs(2))
        .build()?;
    let refused = lone
        .put(
            "after/loss",
            &PutRequest {
                value: "x".into(),
                ..Default::default()
            },
        )
        .await;
    ensure!(
        refused.is_err(),
        "a lone member of three took a write: {refused:?}"
    );

    // Forced recovery from node 1, under a new cluster id.
    let old = c.cluster_id.clone();
    let new = format!("{old}-r1");
    c.kill(1);
    c.set_cluster_id(&new)?;
    c.add_args([
        "--force-new-cluster-from",
        old.as_str(),
        "--set",
        "recovery.node_id=1",
    ]);
    c.start(1)?;
    c.wait_leader(Duration::from_secs(30)).await?;
    let mut got = list_all(&typed_client(c, &[1])?).await?;
    // The write refused above may be in the survivor's log (when node 1 led, it
    // appended it before failing to replicate it): recovery applies every entry
    // of that log, as etcd's --force-new-cluster does. Its client was told the
    // outcome was unknown, never that it failed, so keeping it breaks no promise.
    let mut last = last;
    if let Some(kv) = got.remove("after/loss") {
        ensure!(kv.value == "x", "after/loss: {kv:?}");
        ensure!(
            kv.mod_revision == last + 1,
            "after/loss at {}",
            kv.mod_revision
        );
        last += 1;
        want.insert("after/loss".into(), kv.clone());
        got.insert("after/loss".into(), kv);
    }
    same_state("the survivor after recovery", &got, &want)?;
    // The members that lost their volumes come back empty and join the new cluster.
    for id in [2, 3] {
        c.start(id)?;
        c.join(id).await?;
    }
    let client = typed_client(c, &[1, 2, 3])?;
    let after = client
        .put(
            "after/recovery",
            &PutRequest {
                value: "new".into(),
                ..Default::default()
            },
        )
        .await?;
    ensure!(
        after.revision == last + 1,
        "revisions continue after recovery: {} after {last}",
        after.revision
    );
    want.insert("after/recovery".into(), StoredKv::from_api(after.kv));
    let check_all = |c: &Cluster, ids: Vec<u64>| {
        let want = want.clone();
        let clients: anyhow::Result<Vec<_>> = ids
            .iter()
            .map(|id| typed_client(c, &[*id]).map(|cl| (*id, cl)))
            .collect();
        async move {
            for (id, cl) in clients? {
                same_state(&format!("member {id}"), &list_all(&cl).await?, &want)?;
            }
            anyhow::Ok(())
        }
    };
    let leader = c.wait_leader(Duration::from_secs(10)).await?;
    let committed = c.committed_index(leader).await?;
    for id in 1..=3 {
        c.wait_applied(id, committed, Duration::from_secs(20))
            .await?;
    }
    check_all(c, vec![1, 2, 3]).await?;

    // Restarting the survivor with the recovery settings still set changes nothing.
    c.kill(1);
    c.start(1)?;
    c.wait_up(1).await?;
    c.wait_applied(1, committed, Duration::from_secs(20))
        .await?;
    check_all(c, vec![1]).await?;
    let (voters, _) = c.members().await?;
    ensure!(voters.len() == 3, "voters after the restart: {voters:?}");
    // The old cluster's store was kept, never deleted.
    let aside = c.node(1)?.data_dir.join("recovery");
    ensure!(aside.join(format!("{old}.kvbak")).is_file());
    if sqlite {
        ensure!(aside.join(format!("{old}-store/kvserver.db")).is_file());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forced_recovery_from_one_survivor_sqlite() {
    let mut c = Cluster::new(&[]);
    if let Err(e) = recover_from_the_survivor(&mut c, true).await {
        c.fail(e);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forced_recovery_from_one_survivor_postgres() {
    let pg = common::pg::Postgres::start().expect("postgres");
    let mut c = Cluster::with_postgres(&pg, &[]);
    if let Err(e) = recover_from_the_survivor(&mut c, false).await {
        eprintln!("----- postgres log tail -----\n{}", pg.log_tail());
        c.fail(e);
    }
}
