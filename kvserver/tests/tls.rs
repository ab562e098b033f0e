//! TLS on a cluster of real processes: who the peer port lets in (each refusal
//! its own test, none of which changes any node's log or data), certificate
//! rotation under load (member certificates, then the CA itself through an
//! overlap bundle) with no failed request and no lost write, failed reloads that
//! keep the old certificate, plain HTTP on the HTTPS port, and client
//! certificates.

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::SystemTime;

use anyhow::Context;
use anyhow::ensure;
use common::Cluster;
use common::metric;
use common::wait_for;
use kvserver::command::Command;
use kvserver::peer::wire::Hello;
use kvserver::peer::wire::Request;
use kvserver::peer::wire::Response;
use kvserver::peer::wire::read_frame;
use kvserver::peer::wire::write_frame;
use kvserver::tls::issue::Ca;
use kvserver::tls::issue::Issued;
use kvserver::tls::issue::Leaf;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::ServerName;
use rustls_pki_types::pem::PemObject;
use serde_json::Value;
use tokio::net::TcpStream;

/// A rustls client trusting `ca_pem` and presenting `cert` (if any).
fn client_config(ca_pem: &str, cert: Option<&Issued>) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let b = rustls::ClientConfig::builder_with_provider(kvserver::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    Ok(match cert {
        Some(i) => b.with_client_auth_cert(
            CertificateDer::pem_slice_iter(i.cert_pem.as_bytes()).collect::<Result<_, _>>()?,
            PrivateKeyDer::from_pem_slice(i.key_pem.as_bytes())?,
        )?,
        None => b.with_no_client_auth(),
    })
}

/// What became of a connection attempt to a peer port.
#[derive(Debug, PartialEq)]
enum Attempt {
    /// The hello was accepted and the write below it answered.
    Admitted(String),
    /// The handshake or the hello failed, or the peer answered with a refusal.
    Refused(String),
}

/// Dials `addr` (with TLS from `tls`, or plain TCP), says hello as node `from`
/// to node `to` of `cluster_id`, and asks for a write of `key`: what a forged
/// member would do to put a command in the log.
async fn attempt(
    addr: std::net::SocketAddr,
    tls: Option<rustls::ClientConfig>,
    cluster_id: &str,
    from: u64,
    to: u64,
    key: &str,
) -> anyhow::Result<Attempt> {
    let admin = kvserver::auth::Principal {
        name: "forger".into(),
        kind: kvserver::auth::Kind::Token,
        role: kvserver::auth::Role::Admin,
        prefixes: vec![],
    };
    attempt_as(addr, tls, cluster_id, from, to, key, admin).await
}

/// [`attempt`], with the write forwarded on behalf of `principal`.
async fn attempt_as(
    addr: std::net::SocketAddr,
    tls: Option<rustls::ClientConfig>,
    cluster_id: &str,
    from: u64,
    to: u64,
    key: &str,
    principal: kvserver::auth::Principal,
) -> anyhow::Result<Attempt> {
    let tcp = TcpStream::connect(addr).await?;
    let hello = Hello {
        cluster_id: cluster_id.into(),
        from,
        to,
        to_is_voter: true,
    };
    let write = Request::WriteAs {
        command: Command::Put {
            key: key.into(),
            value: "forged".into(),
            expires_at_ms: None,
            if_revision: None,
            now_ms: 0,
        },
        principal,
    };
    async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        s: &mut S,
        hello: &Hello,
        write: &Request,
    ) -> Attempt {
        let mut s = tokio::io::BufStream::new(s);
        if let Err(e) = write_frame(&mut s, hello).await {
            return Attempt::Refused(format!("hello not sent: {e}"));
        }
        match read_frame::<_, Response>(&mut s).await {
            Ok(Response::HelloOk) => {}
            Ok(other) => return Attempt::Refused(format!("{other:?}")),
            Err(e) => return Attempt::Refused(format!("no answer to the hello: {e}")),
        }
        if let Err(e) = write_frame(&mut s, write).await {
            return Attempt::Refused(format!("write not sent: {e}"));
        }
        match read_frame::<_, Response>(&mut s).await {
            Ok(r) => Attempt::Admitted(format!("{r:?}")),
            Err(e) => Attempt::Refused(format!("no answer to the write: {e}")),
        }
    }
    let name = ServerName::try_from("127.0.0.1")?.to_owned();
    let outcome = async {
        match tls {
            None => {
                let mut tcp = tcp;
                exchange(&mut tcp, &hello, &write).await
            }
            Some(config) => {
                let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
                match connector.connect(name, tcp).await {
                    Ok(mut s) => exchange(&mut s, &hello, &write).await,
                    Err(e) => Attempt::Refused(format!("handshake: {e}")),
                }
            }
        }
    };
    Ok(tokio::time::timeout(Duration::from_secs(10), outcome).await?)
}

/// A formed 3-node TLS cluster and what the attacks must not change.
struct Scene {
    c: Cluster,
    leader: u64,
    before: Vec<(u64, u64, u64)>,
}

impl Scene {
    async fn new() -> anyhow::Result<Self> {
        let mut c = Cluster::new(&[]);
        let leader = c.form(3).await?;
        let (st, body) = c.put_kv(leader, "before", "x").await?;
        ensure!(st == 201, "{st} {body}");
        let target = c.committed_index(leader).await?;
        for id in [1, 2, 3] {
            c.wait_applied(id, target, Duration::from_secs(10)).await?;
        }
        let before = Self::logs(&c).await?;
        Ok(Self { c, leader, before })
    }

    /// (node, last log index, revision) of every node, once they agree.
    async fn logs(c: &Cluster) -> anyhow::Result<Vec<(u64, u64, u64)>> {
        let mut out = Vec::new();
        for id in [1, 2, 3] {
            let info = c.cluster_info(id).await?;
            out.push((
                id,
                info["last_log_index"].as_u64().unwrap_or(0),
                info["revision"].as_u64().unwrap_or(0),
            ));
        }
        Ok(out)
    }

    fn ca_pem(&self) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(self.tls()?.ca_file())?)
    }

    fn tls(&self) -> anyhow::Result<&kvchaos::cluster::tls::TestTls> {
        self.c.tls.as_ref().context("the cluster has TLS")
    }

    fn leader_peer(&self) -> anyhow::Result<std::net::SocketAddr> {
        Ok(self.c.node(self.leader)?.raft)
    }

    /// Fails unless the attack was refused for `reason` (as the leader counts it)
    /// and left every node's log, revision and data as they were.
    async fn refused(&self, got: Attempt, key: &str, reason: &str) -> anyhow::Result<()> {
        ensure!(matches!(got, Attempt::Refused(_)), "not refused: {got:?}");
        // The refusing node counts the refusal once its side of the handshake
        // ends, which can be just after the client read the alert (fresh-clone
        // run of 2026-12-04: UnknownCA seen, not yet counted): wait for it.
        let series = format!("kv_peer_refused_total{{reason=\"{reason}\"}}");
        let counted = common::wait_for(&series, std::time::Duration::from_secs(5), || async {
            let text = self.c.metrics_text(self.leader).await.ok()?;
            (metric(&text, &series) >= 1.0).then_some(())
        })
        .await;
        ensure!(counted.is_ok(), "{series} not counted: {got:?}");
        ensure!(
            Self::logs(&self.c).await? == self.before,
            "a node's log moved"
        );
        for id in [1, 2, 3] {
            ensure!(
                self.c.read(id, key, true).await?.is_none(),
                "{key} written on node {id}"
            );
        }
        Ok(())
    }
}

async fn scene() -> Scene {
    match Scene::new().await {
        Ok(s) => s,
        Err(e) => panic!("forming the cluster: {e:#}"),
    }
}

macro_rules! run {
    ($s:expr, $body:expr) => {
        if let Err(e) = $body.await {
            $s.c.fail(e);
        }
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_certificate_is_admitted_and_its_write_applied() {
    // The control for every refusal below: the same attempt with a member's own
    // certificate gets through, so the refusals are not an artefact of the test.
    let s = scene().await;
    run!(s, async {
        let tls = s.tls()?;
        let member = (1..=3).find(|id| *id != s.leader).context("follower")?;
        let issued = tls.node_files(member)?;
        let config = client_config(&s.ca_pem()?, Some(&issued))?;
        let got = attempt(
            s.leader_peer()?,
            Some(config),
            &s.c.cluster_id,
            member,
            s.leader,
            "through",
        )
        .await?;
        ensure!(
            matches!(&got, Attempt::Admitted(r) if r.starts_with("Write(Ok")),
            "{got:?}"
        );
        ensure!(s.c.read(s.leader, "through", false).await? == Some("forged".into()));
        // The leader checks a forwarded write against the principal it was made
        // for: one without the grant is refused, and so is a write without any
        // principal (the previous release's form) once clients must authenticate.
        let token = |name: &str, role, prefixes: &[&str]| kvserver::auth::Principal {
            name: name.into(),
            kind: kvserver::auth::Kind::Token,
            role,
            prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
        };
        for principal in [
            token("reader", kvserver::auth::Role::Read, &[]),
            token("scoped", kvserver::auth::Role::Readwrite, &["app/"]),
            kvserver::auth::Principal::anonymous(),
        ] {
            let config = client_config(&s.ca_pem()?, Some(&issued))?;
            let who = principal.name.clone();
            let got = attempt_as(
                s.leader_peer()?,
                Some(config),
                &s.c.cluster_id,
                member,
                s.leader,
                "denied",
                principal,
            )
            .await?;
            ensure!(
                matches!(&got, Attempt::Admitted(r) if r.starts_with("Write(Err(Forbidden")),
                "{who}: {got:?}"
            );
        }
        ensure!(
            s.c.read(s.leader, "denied", false).await?.is_none(),
            "a refused write landed"
        );
        Ok::<_, anyhow::Error>(())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_tcp_to_the_peer_port_is_refused() {
    let s = scene().await;
    run!(s, async {
        let got = attempt(
            s.leader_peer()?,
            None,
            &s.c.cluster_id,
            2,
            s.leader,
            "plain",
        )
        .await?;
        s.refused(got, "plain", "tls").await
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused() {
    let s = scene().await;
    run!(s, async {
        let other = Ca::new("another CA", Duration::from_secs(3600))?;
        let member = (1..=3).find(|id| *id != s.leader).context("follower")?;
        let forged = other.issue(&Leaf::member(
            &s.c.cluster_id,
            member,
            &["127.0.0.1".into()],
            Duration::from_secs(3600),
        ))?;
        let config = client_config(&s.ca_pem()?, Some(&forged))?;
        let got = attempt(
            s.leader_peer()?,
            Some(config),
            &s.c.cluster_id,
            member,
            s.leader,
            "other-ca",
        )
        .await?;
        s.refused(got, "other-ca", "tls").await
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_certificate_of_a_node_outside_the_membership_is_refused() {
    let s = scene().await;
    run!(s, async {
        let tls = s.tls()?;
        let outsider = tls.member(9, None)?;
        let config = client_config(&s.ca_pem()?, Some(&outsider))?;
        let got = attempt(
            s.leader_peer()?,
            Some(config),
            &s.c.cluster_id,
            9,
            s.leader,
            "outsider",
        )
        .await?;
        s.refused(got, "outsider", "not_member").await?;
        // The same certificate cannot pass for a member either.
        let config = client_config(&s.ca_pem()?, Some(&outsider))?;
        let member = (1..=3).find(|id| *id != s.leader).context("follower")?;
        let got = attempt(
            s.leader_peer()?,
            Some(config),
            &s.c.cluster_id,
            member,
            s.leader,
            "posing",
        )
        .await?;
        s.refused(got, "posing", "identity").await
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_refused() {
    let s = scene().await;
    run!(s, async {
        let tls = s.tls()?;
        let member = (1..=3).find(|id| *id != s.leader).context("follower")?;
        let mut leaf = Leaf::member(
            &s.c.cluster_id,
            member,
            &["127.0.0.1".into()],
            Duration::from_secs(60),
        );
        leaf.not_before = SystemTime::now() - Duration::from_secs(7200);
        leaf.not_after = SystemTime::now() - Duration::from_secs(3600);
        let expired = tls.ca.issue(&leaf)?;
        let config = client_config(&s.ca_pem()?, Some(&expired))?;
        let got = attempt(
            s.leader_peer()?,
            Some(config),
            &s.c.cluster_id,
            member,
            s.leader,
            "expired",
        )
        .await?;
        s.refused(got, "expired", "tls").await
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_being_added_is_admitted_and_a_removed_member_is_refused() {
    let mut s = scene().await;
    let result = async {
        // Node 4 joins: the leader dials it while it has no membership, and it
        // dials the leader as a learner the membership lists.
        s.c.add_node(4)?;
        s.c.join(4).await?;
        let (st, body) = s.c.put_kv(4, "via-learner", "x").await?;
        ensure!(st == 201, "write through node 4: {st} {body}");
        // Remove it; once that commits, its certificate no longer gets in.
        let leader = s.c.wait_leader(Duration::from_secs(10)).await?;
        let (st, body) =
            s.c.post(
                leader,
                "/v1/cluster/membership",
                serde_json::json!({"remove_nodes": [4]}),
            )
            .await?;
        ensure!(st == 200, "remove node 4: {st} {body}");
        let tls = s.tls()?;
        let issued = tls.node_files(4)?;
        let config = client_config(&s.ca_pem()?, Some(&issued))?;
        let addr = s.c.node(leader)?.raft;
        let got = attempt(addr, Some(config), &s.c.cluster_id, 4, leader, "removed").await?;
        ensure!(
            matches!(got, Attempt::Refused(_)),
            "removed member admitted: {got:?}"
        );
        let text = s.c.metrics_text(leader).await?;
        ensure!(metric(&text, "kv_peer_refused_total{reason=\"not_member\"}") >= 1.0);
        for id in [1, 2, 3] {
            ensure!(
                s.c.read(id, "removed", true).await?.is_none(),
                "removed member's write on {id}"
            );
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if let Err(e) = result {
        s.c.fail(e);
    }
}

/// The `kv_tls_reloads_total{result="ok"}` count of node `id`'s `port`.
async fn reloads(c: &Cluster, id: u64, port: &str) -> anyhow::Result<f64> {
    let text = c.metrics_text(id).await?;
    Ok(metric(
        &text,
        &format!("kv_tls_reloads_total{{port=\"{port}\",result=\"ok\"}}"),
    ))
}

/// Waits until node `id` has reloaded both ports since it had `before` reloads each.
async fn wait_reloaded(c: &Cluster, id: u64, before: (f64, f64)) -> anyhow::Result<()> {
    wait_for(
        "certificate reload",
        Duration::from_secs(15),
        || async move {
            let peer = reloads(c, id, "peer").await.ok()?;
            let client = reloads(c, id, "client").await.ok()?;
            (peer > before.0 && client > before.1).then_some(())
        },
    )
    .await
}

async fn reload_counts(c: &Cluster, id: u64) -> anyhow::Result<(f64, f64)> {
    Ok((
        reloads(c, id, "peer").await?,
        reloads(c, id, "client").await?,
    ))
}

/// Runs 8 writers while `rotate` runs, then checks: no failed request, every
/// acknowledged write on every node.
async fn under_load(
    c: &Cluster,
    rotate: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let writers = common::spawn_writers(c, 8, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rotated = rotate.await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        let r = w.await?;
        ensure!(
            r.errors.is_empty(),
            "failed requests during the rotation: {:?}",
            r.errors
        );
        acked.extend(r.acked);
    }
    rotated?;
    ensure!(
        acked.len() > 100,
        "too few writes to mean anything: {}",
        acked.len()
    );
    let leader = c.wait_leader(Duration::from_secs(10)).await?;
    let target = c.committed_index(leader).await?;
    for id in [1, 2, 3] {
        c.wait_applied(id, target, Duration::from_secs(10)).await?;
        c.ensure_all_present(id, "burst/", &acked).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_certificates_rotate_under_load_without_a_failed_request() {
    let mut c = Cluster::new(&[]);
    let result = async {
        c.form(3).await?;
        let rotate = async {
            let tls = c.tls.as_ref().context("tls")?;
            for id in [1, 2, 3] {
                let before = reload_counts(&c, id).await?;
                let old = std::fs::read_to_string(tls.node_cert(id))?;
                tls.issue_node(id, None)?;
                ensure!(std::fs::read_to_string(tls.node_cert(id))? != old);
                wait_reloaded(&c, id, before).await?;
            }
            Ok(())
        };
        under_load(&c, rotate).await?;
        // New connections get the new certificates: a fresh client still works
        // against every node, and the peers keep replicating.
        c.refresh_http()?;
        for id in [1, 2, 3] {
            let (st, body) = c.put_kv(id, &format!("after/{id}"), "x").await?;
            ensure!(st == 201, "{st} {body}");
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if let Err(e) = result {
        c.fail(e);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_rotates_through_an_overlap_bundle_under_load() {
    let mut c = Cluster::new(&[]);
    let result = async {
        c.form(3).await?;
        let new_ca = Ca::new("rotated CA", Duration::from_secs(24 * 3600))?;
        let old_pem = c.tls.as_ref().context("tls")?.ca.cert_pem().to_string();
        // Step 1: every node and client trusts both CAs.
        {
            let tls = c.tls.as_ref().context("tls")?;
            let before: Vec<_> = futures_join(&c, reload_counts).await?;
            tls.write_bundle(&[&old_pem, new_ca.cert_pem()])?;
            for (id, b) in [1u64, 2, 3].into_iter().zip(before) {
                wait_reloaded(&c, id, b).await?;
            }
        }
        c.refresh_http()?;
        let rotate = async {
            let tls = c.tls.as_ref().context("tls")?;
            // Step 2: members get certificates of the new CA.
            for id in [1, 2, 3] {
                let before = reload_counts(&c, id).await?;
                tls.issue_node(id, Some(&new_ca))?;
                wait_reloaded(&c, id, before).await?;
            }
            // Step 3: the old CA leaves the bundle.
            let before = futures_join(&c, reload_counts).await?;
            tls.write_bundle(&[new_ca.cert_pem()])?;
            for (id, b) in [1u64, 2, 3].into_iter().zip(before) {
                wait_reloaded(&c, id, b).await?;
            }
            Ok(())
        };
        under_load(&c, rotate).await?;
        // A certificate of the old CA no longer gets into the peer port.
        let leader = c.wait_leader(Duration::from_secs(10)).await?;
        let member = (1..=3).find(|id| *id != leader).context("follower")?;
        let tls = c.tls.as_ref().context("tls")?;
        let old_cert = tls.member(member, None)?;
        let config = client_config(new_ca.cert_pem(), Some(&old_cert))?;
        let got = attempt(
            c.node(leader)?.raft,
            Some(config),
            &c.cluster_id,
            member,
            leader,
            "old-ca",
        )
        .await?;
        ensure!(
            matches!(got, Attempt::Refused(_)),
            "old CA still admitted: {got:?}"
        );
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if let Err(e) = result {
        c.fail(e);
    }
}

/// `f` of nodes 1..=3, in order.
async fn futures_join<'a, F, Fut, T>(c: &'a Cluster, f: F) -> anyhow::Result<Vec<T>>
where
    F: Fn(&'a Cluster, u64) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut out = Vec::new();
    for id in [1, 2, 3] {
        out.push(f(c, id).await?);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_reload_keeps_the_old_certificate_and_says_why() {
    let mut c = Cluster::new(&[]);
    let result = async {
        c.form(3).await?;
        let tls = c.tls.as_ref().context("tls")?;
        let good = tls.node_files(2)?;
        let other_key = tls.member(2, None)?.key_pem;
        let mut leaf = Leaf::member(
            &c.cluster_id,
            2,
            &["127.0.0.1".into()],
            Duration::from_secs(60),
        );
        leaf.not_before = SystemTime::now() - Duration::from_secs(7200);
        leaf.not_after = SystemTime::now() - Duration::from_secs(3600);
        let expired = tls.ca.issue(&leaf)?;
        let wrong_node = tls.member(3, None)?;
        let bad = [
            (
                "garbage",
                Issued {
                    cert_pem: "not a certificate".into(),
                    key_pem: good.key_pem.clone(),
                },
            ),
            (
                "key mismatch",
                Issued {
                    cert_pem: good.cert_pem.clone(),
                    key_pem: other_key,
                },
            ),
            ("expired", expired),
            ("another node's", wrong_node),
        ];
        for (what, issued) in bad {
            tls.write_node(2, &issued)?;
            let failing = wait_for(what, Duration::from_secs(15), || async {
                let text = c.metrics_text(2).await.ok()?;
                (metric(&text, "kv_tls_reload_failing{port=\"peer\"}") == 1.0).then_some(text)
            })
            .await?;
            ensure!(
                metric(
                    &failing,
                    "kv_tls_reloads_total{port=\"peer\",result=\"error\"}"
                ) >= 1.0
            );
            let (st, ready) = c.get(2, "/readyz").await?;
            ensure!(
                st == 200,
                "{what}: a bad reload must not take the node out: {st} {ready}"
            );
            let warnings = ready["warnings"].to_string();
            ensure!(
                warnings.contains("reload failed"),
                "{what}: readyz says {ready}"
            );
            // Still serving with the old certificate: a new client, new connections.
            let fresh = c.access().builder([c.url(2, "")]).attempts(1).build()?;
            fresh
                .put(
                    &format!("during/{what}"),
                    &kvserver::model::PutRequest {
                        value: "x".into(),
                        ttl_seconds: None,
                        if_revision: None,
                    },
                )
                .await
                .with_context(|| format!("{what}: a write through a new connection"))?;
        }
        tls.write_node(2, &good)?;
        wait_for("reload recovered", Duration::from_secs(15), || async {
            let text = c.metrics_text(2).await.ok()?;
            (metric(&text, "kv_tls_reload_failing{port=\"peer\"}") == 0.0).then_some(())
        })
        .await?;
        let (_, ready) = c.get(2, "/readyz").await?;
        ensure!(ready.get("warnings").is_none(), "{ready}");
        let expiry = metric(
            &c.metrics_text(2).await?,
            "kv_tls_cert_not_after_seconds{port=\"peer\"}",
        );
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)?
            .as_secs() as f64;
        ensure!(expiry > now + 3600.0, "expiry metric {expiry}");
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if let Err(e) = result {
        c.fail(e);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_on_the_https_port_gets_a_json_400() {
    let mut c = Cluster::new(&[]);
    let result = async {
        c.form(1).await?;
        let plain = common::client();
        let url = c.url(1, "/v1/kv/x").replacen("https://", "http://", 1);
        let r = plain.get(&url).send().await?;
        ensure!(r.status().as_u16() == 400, "{}", r.status());
        let body: Value = r.json().await?;
        ensure!(body["error"]["code"] == "tls_required", "{body}");
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if let Err(e) = result {
        c.fail(e);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_client_certificates_are_required() {
    let mut c = Cluster::new(&["--set", "tls.client_auth=require"]);
    let result = async {
        c.form(3).await?;
        // The harness presents its client certificate: served.
        let (st, body) = c.put_kv(2, "with-cert", "x").await?;
        ensure!(st == 201, "{st} {body}");
        // Without one the handshake fails.
        let tls = c.tls.as_ref().context("tls")?;
        let anonymous = kvserver::tls::ClientTls {
            ca_file: Some(tls.ca_file()),
            ..Default::default()
        };
        let client = kvserver::client::Client::builder([c.url(2, "")])
            .tls(anonymous)
            .attempts(1)
            .build()?;
        let err = client
            .get("with-cert", kvserver::model::Consistency::Stale)
            .await;
        ensure!(err.is_err(), "served without a client certificate: {err:?}");
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if let Err(e) = result {
        c.fail(e);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_port_speaks_http2_when_asked() {
    let mut c = Cluster::new(&[]);
    let result = async {
        c.form(1).await?;
        let tls = c.tls.as_ref().context("tls")?;
        let mut config = tls.client_tls().rustls_config()?;
        // ALPN: h2 offered by the server next to http/1.1.
        config.alpn_protocols = vec![b"h2".to_vec()];
        let h2 = kvserver::tls::http_builder()
            .tls_backend_preconfigured(config)
            .http2_prior_knowledge()
            .build()?;
        let token = c.auth.as_ref().map(|a| a.admin.clone()).unwrap_or_default();
        let r = h2
            .get(c.url(1, "/v1/cluster"))
            .bearer_auth(token)
            .send()
            .await?;
        ensure!(r.status().as_u16() == 200, "{}", r.status());
        ensure!(r.version() == reqwest::Version::HTTP_2, "{:?}", r.version());
        // The default clients stay on HTTP/1.1.
        let r = c.http.get(c.url(1, "/v1/cluster")).send().await?;
        ensure!(
            r.version() == reqwest::Version::HTTP_11,
            "{:?}",
            r.version()
        );
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if let Err(e) = result {
        c.fail(e);
    }
}
