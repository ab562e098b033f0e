//! The end-to-end suite: the operator and kvserver on a real Kubernetes
//! (whatever `KUBECONFIG` points at: the local cluster of `e2e/local/run.sh`
//! in CI, kind through `e2e/kind/run.sh`). Scenarios run in order on one
//! cluster; each one's duration and measurements are printed as `E2E-REPORT`
//! lines. What each scenario proves: docs/e2e.md.
//!
//! Ignored by a plain `cargo test`: it needs a cluster, the images loaded into
//! it, and `E2E_PG_URL` (a PostgreSQL URL reachable from pods).

#[path = "suite/backup.rs"]
mod backup;
#[path = "suite/partitions.rs"]
mod partitions;
#[path = "suite/recovery.rs"]
mod recovery;

use std::time::Duration;
use std::time::Instant;

use anyhow::Context as _;
use e2e::Credential;
use e2e::Ctx;
use e2e::condition;
use e2e::kvcluster;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::DeleteParams;
use kube::api::ListParams;
use kube::api::PostParams;
use kvchaos::metrics::value as metric;
use operator::crd::KVCluster;
use serde_json::Value;
use serde_json::json;

const NS: &str = "kvc-e2e";
const OPERATOR_NS: &str = "kvc-system";
/// A namespace the namespace-scoped operator (scenario 1b) does not watch.
const UNWATCHED_NS: &str = "kvc-e2e-unwatched";
/// The audience of `orders`' ServiceAccount tokens (the operator's default).
const ORDERS_AUDIENCE: &str = "kvcluster.io/kvc-e2e/orders";
const MIN: Duration = Duration::from_secs(60);

fn u64s(v: &Value) -> Vec<u64> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default()
}

fn skip_arg(failed: &[u64]) -> String {
    failed
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Stops a background writer (through its stop key), then checks that every
/// write it had acknowledged is readable. Returns the writer's summary.
async fn stop_writer_and_verify(
    ctx: &mut Ctx,
    svc: &str,
    writer: &str,
    prefix: &str,
    stop_key: &str,
) -> anyhow::Result<Value> {
    let (ok, put) = ctx
        .kvctl(NS, &format!("{writer}-stop"), svc, &["put", stop_key, "1"])
        .await?;
    anyhow::ensure!(ok, "could not write the stop key: {put}");
    let (_, summary) = ctx.finish_kvctl(NS, writer, 3 * MIN).await?;
    anyhow::ensure!(summary["kind"] == "load", "no load summary: {summary}");
    let attempted = summary["attempted"].as_u64().unwrap_or(0);
    let failed = u64s(&summary["failed"]);
    anyhow::ensure!(
        summary["acked"].as_u64().unwrap_or(0) > 0,
        "writer acknowledged nothing: {summary}"
    );
    let count = attempted.to_string();
    let skip = skip_arg(&failed);
    let mut args = vec!["verify", "--prefix", prefix, "--count", &count];
    if !skip.is_empty() {
        args.extend(["--skip", &skip]);
    }
    let (ok, verify) = ctx
        .kvctl(NS, &format!("{writer}-verify"), svc, &args)
        .await?;
    anyhow::ensure!(
        ok && verify["missing"].as_array().is_some_and(|m| m.is_empty()),
        "acknowledged writes lost: {verify}"
    );
    Ok(summary)
}

/// Writes keys `<prefix>1..=count` with 8 writers through `svc`; all must be acknowledged.
async fn write_keys(
    ctx: &Ctx,
    pod: &str,
    svc: &str,
    prefix: &str,
    count: u64,
) -> anyhow::Result<Value> {
    let n = count.to_string();
    let (ok, load) = ctx
        .kvctl(
            NS,
            pod,
            svc,
            &[
                "load",
                "--prefix",
                prefix,
                "--count",
                &n,
                "--concurrency",
                "8",
            ],
        )
        .await?;
    anyhow::ensure!(
        ok && load["acked"] == count,
        "{count} writes to {svc}: {load}"
    );
    Ok(load)
}

/// Reads keys `<prefix>1..=count` back linearizably through `svc`; none may be missing.
async fn read_keys(
    ctx: &Ctx,
    pod: &str,
    svc: &str,
    prefix: &str,
    count: u64,
) -> anyhow::Result<Value> {
    let n = count.to_string();
    let (ok, verify) = ctx
        .kvctl(NS, pod, svc, &["verify", "--prefix", prefix, "--count", &n])
        .await?;
    anyhow::ensure!(ok, "{count} keys {prefix}* read back from {svc}: {verify}");
    Ok(verify)
}

async fn operator_available(ctx: &Ctx, ns: &str, name: &str) -> anyhow::Result<Duration> {
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let (_, took) = ctx
        .wait_for(
            &format!("deployment {ns}/{name} available"),
            3 * MIN,
            || async {
                let d = api.get(name).await?;
                let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                let ready = d
                    .status
                    .as_ref()
                    .and_then(|s| s.ready_replicas)
                    .unwrap_or(0);
                Ok(if ready >= want {
                    Ok(())
                } else {
                    Err(format!("{ready}/{want} ready"))
                })
            },
        )
        .await?;
    Ok(took)
}

/// `kubectl auth can-i VERB WHAT -n NS --as WHO`: whether the API server says
/// yes (it answers `no` with a non-zero status, which is a no here too).
async fn can_i(ctx: &Ctx, who: &str, verb: &str, what: &str, ns: &str) -> bool {
    ctx.kubectl(&["auth", "can-i", verb, what, "-n", ns, "--as", who])
        .await
        .is_ok_and(|out| out.trim() == "yes")
}

async fn create_kvc(ctx: &Ctx, kvc: &KVCluster) -> anyhow::Result<()> {
    let ns = kvc.metadata.namespace.as_deref().context("namespace")?;
    Api::<KVCluster>::namespaced(ctx.client.clone(), ns)
        .create(&PostParams::default(), kvc)
        .await?;
    Ok(())
}

/// Scenario 1a: `kubectl apply -f manifests/install.yaml`, a 1-member cluster
/// works, everything is removed with `kubectl delete -f`.
async fn install_with_manifests(ctx: &mut Ctx) -> anyhow::Result<()> {
    let started = Instant::now();
    ctx.kubectl(&["apply", "-f", "manifests/install.yaml"])
        .await?;
    operator_available(ctx, "kvcluster-system", "kvcluster-operator").await?;
    // `kubectl explain` reads well: every field typed and described.
    for path in [
        "kvc.spec",
        "kvc.spec.storage",
        "kvc.spec.raft",
        "kvc.status",
    ] {
        let (text, _) = ctx
            .wait_for(&format!("kubectl explain {path}"), MIN, || async {
                Ok(Ok(ctx.kubectl(&["explain", path]).await?))
            })
            .await?;
        anyhow::ensure!(
            text.contains("DESCRIPTION") && !text.contains("<>") && !text.contains("<empty>"),
            "kubectl explain {path} lacks types or descriptions:\n{text}"
        );
    }
    let ns = "kvc-e2e-manifests";
    ctx.fresh_namespace(ns).await?;
    create_kvc(ctx, &kvcluster(ns, "mini", 1, json!({}))?).await?;
    ctx.wait_converged(ns, "mini", 1, 3 * MIN).await?;
    let (ok, put) = ctx
        .kvctl(ns, "mini-put", "mini", &["put", "hello", "world"])
        .await?;
    anyhow::ensure!(ok, "put through the manifests-installed cluster: {put}");
    let (ok, got) = ctx.kvctl(ns, "mini-get", "mini", &["get", "hello"]).await?;
    anyhow::ensure!(ok && got["kv"]["value"] == "world", "read back: {got}");
    ctx.delete_namespace(ns).await?;
    ctx.kubectl(&["delete", "-f", "manifests/install.yaml", "--wait=true"])
        .await?;
    ctx.report.add(
        "scenario 1a: install.yaml, 1-member cluster, uninstall",
        json!({"seconds": started.elapsed().as_secs()}),
    );
    Ok(())
}

/// Scenario 1b: Helm install in the chart's namespace-scoped mode (Roles in
/// the one watched namespace, no cluster-wide rights but the token-review
/// binding) and `helm test`. Every later scenario runs under it.
async fn install_with_helm(ctx: &mut Ctx) -> anyhow::Result<()> {
    let started = Instant::now();
    // The Roles go into the watched namespace, so it exists first.
    ctx.fresh_namespace(NS).await?;
    ctx.fresh_namespace(UNWATCHED_NS).await?;
    ctx.helm(&[
        "install",
        "kvc",
        "charts/kvcluster-operator",
        "--namespace",
        OPERATOR_NS,
        "--set",
        &format!("watchNamespaces=[\"{NS}\"]"),
    ])
    .await?;
    let cluster_wide = ctx
        .kubectl(&[
            "get",
            "clusterrole",
            "kvc-kvcluster-operator",
            "--ignore-not-found",
            "-o",
            "name",
        ])
        .await?;
    anyhow::ensure!(
        cluster_wide.trim().is_empty(),
        "a namespace-scoped install made a ClusterRole: {cluster_wide}"
    );
    let operator = "system:serviceaccount:kvc-system:kvc-kvcluster-operator";
    anyhow::ensure!(
        can_i(ctx, operator, "patch", "statefulsets", NS).await
            && !can_i(ctx, operator, "patch", "statefulsets", UNWATCHED_NS).await
            && !can_i(ctx, operator, "get", "secrets", UNWATCHED_NS).await,
        "the operator's rights reach beyond {NS}"
    );
    operator_available(ctx, OPERATOR_NS, "kvc-kvcluster-operator").await?;
    ctx.helm(&["test", "kvc", "--namespace", OPERATOR_NS])
        .await
        .context("helm test")?;
    ctx.report.add(
        "scenario 1b: helm install (namespace-scoped) + helm test",
        json!({"seconds": started.elapsed().as_secs()}),
    );
    Ok(())
}

/// Scenario 2: a 3-member SQLite cluster; 1,000 keys written and read back in-cluster.
async fn three_members_sqlite(ctx: &mut Ctx) -> anyhow::Result<()> {
    // (NS was made by scenario 1b: the operator's Roles live in it.)
    // The users' tokens (scenario 2c): one app limited to `app/`.
    put_token_secret(ctx, "orders-tokens", "app", APP_TOKEN).await?;
    // ServiceAccounts as clients (scenario 2c): one bound, one not.
    for sa in ["orders-app", "orders-stranger"] {
        ctx.kubectl(&["-n", NS, "create", "serviceaccount", sa])
            .await?;
    }
    // A cluster where the operator does not look: never built.
    create_kvc(ctx, &kvcluster(UNWATCHED_NS, "ignored", 1, json!({}))?).await?;
    let mut orders = kvcluster(
        NS,
        "orders",
        3,
        json!({"reclaimPolicy": "Delete", "cacheSize": "32Mi"}),
    )?;
    orders.spec.auth.token_secret_name = Some("orders-tokens".into());
    orders.spec.auth.service_accounts = Some(serde_json::from_value(json!({
        "bindings": [{"name": "orders-app", "role": "readwrite", "prefixes": ["app/"]}]
    }))?);
    create_kvc(ctx, &orders).await?;
    // A spec the operator cannot render: nothing is created, a Warning event says why.
    create_kvc(
        ctx,
        &kvcluster(NS, "typo", 1, json!({"cacheSize": "lots"}))?,
    )
    .await?;
    let took = ctx.wait_converged(NS, "orders", 3, 4 * MIN).await?;
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), NS);
    let cfg = cms
        .get("orders-config")
        .await?
        .data
        .and_then(|d| d.get("config.yaml").cloned())
        .unwrap_or_default();
    anyhow::ensure!(
        cfg.contains("cache_bytes: 33554432"),
        "cacheSize not rendered: {cfg}"
    );
    let (invalid, _) = ctx
        .wait_for("InvalidSpec event for KVCluster typo", MIN, || async {
            let found = ctx.warning_event(NS, "InvalidSpec", Some("typo")).await?;
            Ok(found.ok_or_else(|| "no such event yet".to_string()))
        })
        .await?;
    anyhow::ensure!(
        invalid.contains("spec.storage.cacheSize"),
        "event names the field: {invalid}"
    );
    let sts: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), NS);
    anyhow::ensure!(
        sts.get_opt("typo").await?.is_none(),
        "nothing built from an invalid spec"
    );
    ctx.kubectl(&["-n", NS, "delete", "kvc", "typo", "--wait=true"])
        .await?;
    // A quorum-safe PodDisruptionBudget (policy/v1, or v1beta1 on old servers).
    let max_unavailable = ctx
        .kubectl(&[
            "-n",
            NS,
            "get",
            "pdb",
            "orders",
            "-o",
            "jsonpath={.spec.maxUnavailable}",
        ])
        .await?;
    anyhow::ensure!(
        max_unavailable.trim() == "1",
        "PDB maxUnavailable {max_unavailable:?}"
    );
    let load = write_keys(ctx, "load-a", "orders", "a/", 1000).await?;
    let verify = read_keys(ctx, "verify-a", "orders", "a/", 1000).await?;
    // The unwatched namespace's cluster: no status, nothing built.
    let ignored = ctx.kvc(UNWATCHED_NS, "ignored").await?;
    let built = Api::<StatefulSet>::namespaced(ctx.client.clone(), UNWATCHED_NS)
        .get_opt("ignored")
        .await?;
    anyhow::ensure!(
        ignored.status.is_none() && built.is_none(),
        "the namespace-scoped operator touched {UNWATCHED_NS}: {:?}",
        ignored.status
    );
    ctx.delete_namespace(UNWATCHED_NS).await?;
    ctx.report.add(
        "scenario 2: 3-member SQLite cluster",
        json!({"available_after_s": took.as_secs(), "writes_per_s": load["writes_per_s"], "verify": verify,
               "invalid_spec_event": invalid}),
    );
    Ok(())
}

/// The app's first token and its replacement (test values, not secrets).
const APP_TOKEN: &str = "e2e-app-token-0123456789abcdef";
const APP_TOKEN_2: &str = "e2e-app-token-rotated-fedcba9876";

/// A Secret `name` of the kvserver token-file format with one principal, `principal`
/// (readwrite on `app/`), plus its bare `token` (what `start_kvctl_as` mounts).
async fn put_token_secret(
    ctx: &Ctx,
    name: &str,
    principal: &str,
    token: &str,
) -> anyhow::Result<()> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), NS);
    let file = format!(
        "tokens:\n  - {{name: {principal}, token: \"{token}\", role: readwrite, prefixes: [app/]}}\n"
    );
    let body = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": NS},
        "stringData": {"tokens.yaml": file, "token": token},
    });
    secrets
        .patch(
            name,
            &kube::api::PatchParams::apply("kvcluster-e2e").force(),
            &kube::api::Patch::Apply(body),
        )
        .await?;
    Ok(())
}

/// Runs kvctl `args` against `orders` with the token in Secret `token` (or none);
/// whether it succeeded, and its output.
async fn kvctl_as(
    ctx: &Ctx,
    pod: &str,
    cred: Option<Credential<'_>>,
    args: &[&str],
) -> anyhow::Result<(bool, String)> {
    ctx.start_kvctl_as(NS, pod, "orders", args, Some("orders-ca"), cred)
        .await?;
    ctx.finish_pod(NS, pod, 2 * MIN).await
}

/// Scenario 2c: authentication and the hardened pods. Without a token the API
/// refuses (401); the app's token works under its prefix and is refused (403)
/// outside it; a ServiceAccount bound in `spec.auth.serviceAccounts` does the
/// same with its projected token, while a token for another audience or an
/// unbound account's is refused (401); the app's token is rotated in its
/// Secret and the new one works, the old one stops, without a pod restart. The
/// pods run as non-root under the `restricted` profile with their own
/// ServiceAccount (no automounted token; the only token is the review
/// credential, and the account may only review tokens), and a NetworkPolicy
/// fences the peer port (rendered and checked here: the local cluster's
/// network plugin does not enforce NetworkPolicy).
async fn auth_and_hardening(ctx: &mut Ctx) -> anyhow::Result<()> {
    let started = Instant::now();
    let (ok, out) = kvctl_as(ctx, "anon", None, &["put", "app/anon", "x"]).await?;
    anyhow::ensure!(!ok && out.contains("unauthenticated"), "no token: {out}");
    let (ok, out) = kvctl_as(
        ctx,
        "app-in",
        Some(Credential::Secret("orders-tokens")),
        &["put", "app/in", "x"],
    )
    .await?;
    anyhow::ensure!(ok, "the app's token under app/: {out}");
    let (ok, out) = kvctl_as(
        ctx,
        "app-out",
        Some(Credential::Secret("orders-tokens")),
        &["put", "other/out", "x"],
    )
    .await?;
    anyhow::ensure!(
        !ok && out.contains("forbidden"),
        "the app's token outside app/: {out}"
    );
    let (ok, out) = kvctl_as(
        ctx,
        "app-admin",
        Some(Credential::Secret("orders-tokens")),
        &["cluster"],
    )
    .await?;
    anyhow::ensure!(ok, "cluster info for any principal: {out}");

    // ServiceAccount tokens: no shared secret. The bound account's projected
    // token works under its prefix and is refused (403) outside it; the same
    // account's token for another audience, and an unbound account's, are 401.
    let sa = |name: &'static str, audience: &'static str| {
        Some(Credential::ServiceAccount { name, audience })
    };
    // An application's batch client: a Job running as the bound account.
    let (ok, out) = ctx
        .run_kvctl_job(
            NS,
            "sa-job",
            "orders",
            &["put", "app/from-sa", "x"],
            Some("orders-ca"),
            sa("orders-app", ORDERS_AUDIENCE),
        )
        .await?;
    anyhow::ensure!(ok, "a Job as the bound ServiceAccount, under app/: {out}");
    let (ok, out) = kvctl_as(
        ctx,
        "sa-out",
        sa("orders-app", ORDERS_AUDIENCE),
        &["put", "other/from-sa", "x"],
    )
    .await?;
    anyhow::ensure!(
        !ok && out.contains("forbidden"),
        "the bound ServiceAccount outside app/: {out}"
    );
    for (pod, cred) in [
        (
            "sa-audience",
            sa("orders-app", "kvcluster.io/kvc-e2e/elsewhere"),
        ),
        ("sa-unbound", sa("orders-stranger", ORDERS_AUDIENCE)),
    ] {
        let (ok, out) = kvctl_as(ctx, pod, cred, &["get", "app/from-sa"]).await?;
        anyhow::ensure!(
            !ok && out.contains("unauthenticated"),
            "{pod}: refused as unauthenticated: {out}"
        );
    }
    // The members' ServiceAccount may review tokens and do nothing else.
    let members = "system:serviceaccount:kvc-e2e:orders-kvserver";
    anyhow::ensure!(
        can_i(
            ctx,
            members,
            "create",
            "tokenreviews.authentication.k8s.io",
            NS
        )
        .await
            && !can_i(ctx, members, "get", "secrets", NS).await
            && !can_i(ctx, members, "list", "pods", NS).await,
        "orders-kvserver's rights are not exactly token reviews"
    );

    // Rotation: the old token kept in a Secret of its own, the app's Secret
    // switched to the new one; no pod restarts.
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), NS);
    let uids = |list: &[Pod]| -> Vec<(String, i32)> {
        list.iter()
            .map(|p| {
                let restarts = p
                    .status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .map(|c| c.iter().map(|c| c.restart_count).sum())
                    .unwrap_or(0);
                (p.metadata.uid.clone().unwrap_or_default(), restarts)
            })
            .collect()
    };
    let selector = ListParams::default().labels("app.kubernetes.io/instance=orders");
    let before = uids(&pods.list(&selector).await?.items);
    put_token_secret(ctx, "old-app-token", "app", APP_TOKEN).await?;
    let rotated = Instant::now();
    put_token_secret(ctx, "orders-tokens", "app", APP_TOKEN_2).await?;
    // Each member sees the Secret change when its kubelet syncs the volume
    // (typically within a minute) and re-reads the file within 5 s: checked on
    // every member directly.
    let attempt = std::cell::Cell::new(0);
    let c: &Ctx = ctx;
    let mut old_refused = Vec::new();
    for member in 0..3 {
        let host = format!("orders-{member}.orders-peers.{NS}.svc.cluster.local");
        let host = host.as_str();
        let (_, waited) = c
            .wait_for(
                &format!("orders-{member} takes the new token and refuses the old"),
                4 * MIN,
                || {
                    attempt.set(attempt.get() + 1);
                    let n = attempt.get();
                    async move {
                        c.start_kvctl_as(
                            NS,
                            &format!("old-{n}"),
                            host,
                            &["get", "app/in"],
                            Some("orders-ca"),
                            Some(Credential::Secret("old-app-token")),
                        )
                        .await?;
                        let (old_ok, old_out) =
                            c.finish_pod(NS, &format!("old-{n}"), 2 * MIN).await?;
                        c.start_kvctl_as(
                            NS,
                            &format!("new-{n}"),
                            host,
                            &["put", "app/rotated", "x"],
                            Some("orders-ca"),
                            Some(Credential::Secret("orders-tokens")),
                        )
                        .await?;
                        let (new_ok, new_out) =
                            c.finish_pod(NS, &format!("new-{n}"), 2 * MIN).await?;
                        Ok(
                            if !old_ok && old_out.contains("unauthenticated") && new_ok {
                                Ok(())
                            } else {
                                Err(format!("old: {old_out}; new: {new_out}"))
                            },
                        )
                    }
                },
            )
            .await?;
        old_refused.push(waited.as_secs());
    }
    let took = rotated.elapsed();
    let after = uids(&pods.list(&selector).await?.items);
    anyhow::ensure!(
        before == after,
        "pods restarted for a token change: {before:?} -> {after:?}"
    );

    // The pods: restricted profile, their own ServiceAccount, no API token.
    let pod = pods.get("orders-0").await?;
    let spec = pod.spec.clone().context("pod spec")?;
    let psc = spec.security_context.clone().unwrap_or_default();
    anyhow::ensure!(
        psc.run_as_non_root == Some(true)
            && psc.seccomp_profile.map(|p| p.type_) == Some("RuntimeDefault".into()),
        "pod securityContext: {:?}",
        spec.security_context
    );
    for c in &spec.containers {
        let sc = c.security_context.clone().unwrap_or_default();
        anyhow::ensure!(
            sc.allow_privilege_escalation == Some(false)
                && sc.read_only_root_filesystem == Some(true)
                && sc.capabilities.and_then(|c| c.drop) == Some(vec!["ALL".to_string()]),
            "container {} securityContext: {:?}",
            c.name,
            c.security_context
        );
    }
    anyhow::ensure!(
        spec.service_account_name.as_deref() == Some("orders-kvserver")
            && spec.automount_service_account_token == Some(false),
        "service account: {:?} automount {:?}",
        spec.service_account_name,
        spec.automount_service_account_token
    );
    // The one API token in the pod is the projected review credential.
    let api_tokens: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| {
            v.name.starts_with("kube-api-access")
                || v.name.contains("token-")
                || v.projected.as_ref().is_some_and(|p| {
                    p.sources
                        .iter()
                        .flatten()
                        .any(|s| s.service_account_token.is_some())
                })
        })
        .map(|v| v.name.as_str())
        .collect();
    anyhow::ensure!(
        api_tokens == ["reviewer"],
        "API tokens mounted: {api_tokens:?} of {:?}",
        spec.volumes
            .iter()
            .flatten()
            .map(|v| &v.name)
            .collect::<Vec<_>>()
    );
    let running_as = ctx
        .kubectl(&[
            "-n",
            NS,
            "get",
            "pod",
            "orders-0",
            "-o",
            "jsonpath={.status.phase}",
        ])
        .await?;
    anyhow::ensure!(running_as.trim() == "Running", "orders-0 is {running_as}");
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(ctx.client.clone(), NS);
    let sa = sas.get("orders-kvserver").await?;
    anyhow::ensure!(sa.automount_service_account_token == Some(false), "{sa:?}");
    let nps: Api<k8s_openapi::api::networking::v1::NetworkPolicy> =
        Api::namespaced(ctx.client.clone(), NS);
    let np = nps.get("orders").await?;
    let np_spec = np.spec.clone().context("policy spec")?;
    let selected = np_spec
        .pod_selector
        .clone()
        .and_then(|s| s.match_labels)
        .unwrap_or_default();
    anyhow::ensure!(
        selected
            .get("app.kubernetes.io/instance")
            .map(String::as_str)
            == Some("orders"),
        "policy selects {selected:?}"
    );
    let peer_rules: Vec<_> = np_spec
        .ingress
        .iter()
        .flatten()
        .filter(|r| {
            r.ports.iter().flatten().any(|p| {
                p.port == Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(8081))
            })
        })
        .collect();
    anyhow::ensure!(
        !peer_rules.is_empty()
            && peer_rules.iter().all(|r| r.from.as_ref().is_some_and(|f| {
                f.iter().all(|p| {
                    p.namespace_selector.is_none()
                        && p.ip_block.is_none()
                        && p.pod_selector.clone().and_then(|s| s.match_labels).as_ref()
                            == Some(&selected)
                })
            })),
        "the peer port is open beyond the members: {peer_rules:?}"
    );
    ctx.report.add(
        "scenario 2c: auth and hardening",
        json!({"seconds": started.elapsed().as_secs(), "rotation_done_on_every_member_after_s": took.as_secs(),
               "rotation_by_member_s": old_refused, "pods_restarted": false,
               "network_policy_enforced_by_cni": false}),
    );
    Ok(())
}

/// A pod's Prometheus metrics through the API server's proxy (HTTPS to the pod,
/// which the proxy does not verify; the point is the number, not the channel).
async fn pod_metrics(ctx: &Ctx, pod: &str) -> anyhow::Result<String> {
    ctx.kubectl(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/{NS}/pods/https:{pod}:8080/proxy/metrics"),
    ])
    .await
}

/// Scenario 2b: TLS as users meet it. The clients of scenario 2 spoke HTTPS with
/// the CA the operator publishes (`orders-ca`); here plain HTTP is refused, a
/// member certificate is rotated under write load without losing a write or
/// restarting a pod, and a cluster runs from user-provided Secrets (`mode: secret`).
async fn tls_everywhere(ctx: &mut Ctx) -> anyhow::Result<()> {
    let started = Instant::now();
    // Plain HTTP on the client port: a clear 400, nothing served.
    ctx.start_kvctl_with(NS, "plain-http", "orders", &["get", "a/1"], None)
        .await?;
    let (ok, logs) = ctx.finish_pod(NS, "plain-http", 2 * MIN).await?;
    anyhow::ensure!(
        !ok && logs.contains("tls_required"),
        "plain HTTP was not refused as tls_required: {logs}"
    );

    // Rotate orders-1's member certificate mid-load: take it out of the Secret, the
    // operator issues a new one, kubelet updates the pod's files, kvserver reloads.
    ctx.start_kvctl(
        NS,
        "writer-rotate",
        "orders",
        &[
            "load",
            "--prefix",
            "rot/",
            "--stop-key",
            "control/stop-rotate",
            "--concurrency",
            "4",
            "--interval-ms",
            "5",
        ],
    )
    .await?;
    ctx.wait_running(NS, "writer-rotate").await?;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), NS);
    let restarts = |p: &Pod| -> i32 {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map(|c| c.iter().map(|c| c.restart_count).sum())
            .unwrap_or(0)
    };
    let pod_before = pods.get("orders-1").await?;
    let reloads_before = metric(
        &pod_metrics(ctx, "orders-1").await?,
        "kv_tls_reloads_total{port=\"peer\",result=\"ok\"}",
    );
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), NS);
    let cert_of = |s: &Secret| {
        s.data
            .as_ref()
            .and_then(|d| d.get("orders-1.crt"))
            .map(|b| b.0.clone())
    };
    let old = cert_of(&secrets.get("orders-peer-tls").await?).context("orders-1.crt")?;
    secrets
        .patch(
            "orders-peer-tls",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"data": {"orders-1.crt": null, "orders-1.key": null}})),
        )
        .await?;
    let (_, reissued) = ctx
        .wait_for(
            "the operator reissues orders-1's certificate",
            2 * MIN,
            || async {
                let now = cert_of(&secrets.get("orders-peer-tls").await?);
                Ok(match now {
                    Some(c) if c != old => Ok(()),
                    _ => Err("not yet".to_string()),
                })
            },
        )
        .await?;
    let (_, reloaded) = ctx
        .wait_for(
            "orders-1 reloads its member certificate",
            4 * MIN,
            || async {
                let n = metric(
                    &pod_metrics(ctx, "orders-1").await?,
                    "kv_tls_reloads_total{port=\"peer\",result=\"ok\"}",
                );
                Ok(if n > reloads_before {
                    Ok(())
                } else {
                    Err(format!("{n} reloads"))
                })
            },
        )
        .await?;
    let summary = stop_writer_and_verify(
        ctx,
        "orders",
        "writer-rotate",
        "rot/",
        "control/stop-rotate",
    )
    .await?;
    let pod_after = pods.get("orders-1").await?;
    anyhow::ensure!(
        pod_after.metadata.uid == pod_before.metadata.uid
            && restarts(&pod_after) == restarts(&pod_before),
        "the rotation restarted orders-1"
    );

    // mode: secret — the member CA and the client port's certificate are the user's.
    let user_ca =
        kvserver::tls::issue::Ca::new("e2e user CA", 30 * 24 * 3600 * Duration::from_secs(1))?;
    let mut leaf = kvserver::tls::issue::Leaf::member(
        "user",
        0,
        &[
            "sec".into(),
            format!("sec.{NS}"),
            format!("sec.{NS}.svc"),
            format!("sec.{NS}.svc.cluster.local"),
            format!("*.sec-peers.{NS}.svc.cluster.local"),
        ],
        30 * 24 * 3600 * Duration::from_secs(1),
    );
    leaf.uris.clear();
    let served = user_ca.issue(&leaf)?;
    let secret = |name: &str, data: Value| -> anyhow::Result<Secret> {
        Ok(serde_json::from_value(
            json!({"metadata": {"name": name, "namespace": NS}, "stringData": data}),
        )?)
    };
    secrets
        .create(
            &PostParams::default(),
            &secret(
                "sec-user-ca",
                json!({"tls.crt": user_ca.cert_pem(), "tls.key": user_ca.key_pem()}),
            )?,
        )
        .await?;
    secrets
        .create(
            &PostParams::default(),
            &secret("sec-user-tls", json!({"tls.crt": served.cert_pem, "tls.key": served.key_pem, "ca.crt": user_ca.cert_pem()}))?,
        )
        .await?;
    let mut kvc = kvcluster(NS, "sec", 1, json!({"reclaimPolicy": "Delete"}))?;
    kvc.spec.tls = serde_json::from_value(json!({
        "peer": {"mode": "secret", "caSecretName": "sec-user-ca"},
        "client": {"mode": "secret", "secretName": "sec-user-tls"},
    }))?;
    create_kvc(ctx, &kvc).await?;
    let took = ctx.wait_converged(NS, "sec", 1, 4 * MIN).await?;
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), NS);
    let published = cms
        .get("sec-ca")
        .await?
        .data
        .and_then(|d| d.get("ca.crt").cloned())
        .unwrap_or_default();
    anyhow::ensure!(
        published == user_ca.cert_pem(),
        "sec-ca does not publish the user's CA"
    );
    let issuer = secrets
        .get("sec-peer-tls")
        .await?
        .data
        .and_then(|d| {
            d.get("issuer.crt")
                .map(|b| String::from_utf8_lossy(&b.0).to_string())
        })
        .unwrap_or_default();
    anyhow::ensure!(
        issuer == user_ca.cert_pem(),
        "members' certificates are not from the user's CA"
    );
    write_keys(ctx, "load-sec", "sec", "sec/", 200).await?;
    read_keys(ctx, "verify-sec", "sec", "sec/", 200).await?;
    ctx.kubectl(&["-n", NS, "delete", "kvc", "sec", "--wait=true"])
        .await?;
    ctx.report.add(
        "scenario 2b: TLS",
        json!({"seconds": started.elapsed().as_secs(), "plain_http": "refused (tls_required)",
               "rotation": {"reissued_after_s": reissued.as_secs_f64(), "reloaded_after_s": reloaded.as_secs_f64(),
                            "writer": summary, "pod_restarted": false},
               "secret_mode_available_after_s": took.as_secs()}),
    );
    Ok(())
}

async fn pvc_names(ctx: &Ctx, instance: &str) -> anyhow::Result<Vec<String>> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), NS);
    let mut names: Vec<String> = api
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={instance}")))
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.name)
        .collect();
    names.sort();
    Ok(names)
}

/// Scenario 3: `kubectl scale` 3→5→3 under a continuous writer.
async fn scale_under_load(ctx: &mut Ctx) -> anyhow::Result<()> {
    let started = Instant::now();
    ctx.start_kvctl(
        NS,
        "writer-scale",
        "orders",
        &[
            "load",
            "--prefix",
            "s/",
            "--stop-key",
            "control/stop-scale",
            "--concurrency",
            "2",
            "--interval-ms",
            "10",
        ],
    )
    .await?;
    ctx.wait_running(NS, "writer-scale").await?;
    let mut steps = Vec::new();
    for n in [5usize, 3] {
        ctx.kubectl(&["-n", NS, "scale", "kvc/orders", &format!("--replicas={n}")])
            .await?;
        let took = ctx.wait_converged(NS, "orders", n, 6 * MIN).await?;
        let expect: Vec<String> = (0..n).map(|i| format!("data-orders-{i}")).collect();
        let (_, pvc_took) = ctx
            .wait_for(
                &format!("PVCs of {n} members (policy Delete)"),
                2 * MIN,
                || async {
                    let names = pvc_names(ctx, "orders").await?;
                    Ok(if names == expect {
                        Ok(())
                    } else {
                        Err(format!("{names:?}"))
                    })
                },
            )
            .await?;
        let kvc = ctx.kvc(NS, "orders").await?;
        let st = kvc.status.clone().unwrap_or_default();
        anyhow::ensure!(st.replicas == n as i32, "status.replicas {}", st.replicas);
        anyhow::ensure!(
            condition(&kvc, "ScalingBlocked").0 == "False",
            "ScalingBlocked set"
        );
        steps.push(
            json!({"to": n, "converged_s": took.as_secs_f64(), "pvcs_s": pvc_took.as_secs_f64()}),
        );
    }
    // Refusals seen on the way (a safe resize should need none; reported to explain slow steps).
    let events: Api<Event> = Api::namespaced(ctx.client.clone(), NS);
    let refusals: Vec<String> = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("ScalingBlocked"))
        .filter_map(|e| e.message)
        .collect();
    let summary =
        stop_writer_and_verify(ctx, "orders", "writer-scale", "s/", "control/stop-scale").await?;
    let failed = u64s(&summary["failed"]);
    let window = summary["failure_window_ms"].as_u64().unwrap_or(0);
    anyhow::ensure!(
        failed.is_empty() || window <= 10_000,
        "failed writes spread over {window} ms (more than a leader change): {summary}"
    );
    ctx.report.add(
        "scenario 3: scale 3→5→3 under load",
        json!({"seconds": started.elapsed().as_secs(), "steps": steps,
               "writes_acked": summary["acked"], "writes_failed": failed.len(),
               "failure_window_ms": summary["failure_window_ms"],
               "max_ack_gap_ms": summary["max_ack_gap_ms"], "lost": 0,
               "refusals_on_the_way": refusals}),
    );
    Ok(())
}

async fn delete_pod(ctx: &Ctx, ns: &str, name: &str) -> anyhow::Result<()> {
    Api::<Pod>::namespaced(ctx.client.clone(), ns)
        .delete(name, &DeleteParams::default())
        .await?;
    Ok(())
}

/// Scenario 4 (and 6's failover): delete the leader pod under a writer; a new
/// leader within seconds, the pod returns and rejoins as a follower.
async fn leader_pod_deleted(
    ctx: &mut Ctx,
    name: &str,
    prefix: &str,
    label: &str,
) -> anyhow::Result<()> {
    let writer = format!("writer-failover-{name}");
    let stop = format!("control/stop-failover-{name}");
    ctx.start_kvctl(
        NS,
        &writer,
        name,
        &[
            "load",
            "--prefix",
            prefix,
            "--stop-key",
            &stop,
            "--concurrency",
            "2",
            "--interval-ms",
            "10",
        ],
    )
    .await?;
    ctx.wait_running(NS, &writer).await?;
    let kvc_api: Api<KVCluster> = Api::namespaced(ctx.client.clone(), NS);
    let old = ctx
        .kvc(NS, name)
        .await?
        .status
        .and_then(|s| s.leader)
        .context("no leader before the fault")?;
    delete_pod(ctx, NS, &format!("{name}-{old}")).await?;
    let (new, elected) = ctx
        .wait_for("a new leader in status", 2 * MIN, || async {
            let l = kvc_api.get(name).await?.status.and_then(|s| s.leader);
            Ok(match l {
                Some(l) if l != old => Ok(l),
                other => Err(format!("leader {other:?}")),
            })
        })
        .await?;
    let rejoined = ctx.wait_converged(NS, name, 3, 4 * MIN).await?;
    let leader_now = ctx.kvc(NS, name).await?.status.and_then(|s| s.leader);
    anyhow::ensure!(
        leader_now != Some(old),
        "the returned pod {old} should rejoin as a follower, but leads"
    );
    let summary = stop_writer_and_verify(ctx, name, &writer, prefix, &stop).await?;
    let window = summary["failure_window_ms"].as_u64().unwrap_or(0);
    anyhow::ensure!(
        window <= 15_000,
        "failed writes spread over {window} ms, longer than a leader change: {summary}"
    );
    ctx.report.add(
        label,
        json!({"old_leader": old, "new_leader": new,
               "new_leader_in_status_s": elected.as_secs_f64(),
               "rejoined_as_follower_s": elected.as_secs_f64() + rejoined.as_secs_f64(),
               "leader_change_window_ms (longest stretch without an acknowledged write)": summary["max_ack_gap_ms"],
               "failure_window_ms": summary["failure_window_ms"],
               "writes_acked": summary["acked"], "writes_failed": u64s(&summary["failed"]).len(),
               "first_errors": summary["errors"].as_array().map(|e| e.iter().take(3).cloned().collect::<Vec<_>>()),
               "lost": 0}),
    );
    Ok(())
}

/// Scenario 5: with two members down, scaling to 1 is refused (ScalingBlocked,
/// a Warning event, membership unchanged); once they are back it proceeds.
async fn unsafe_scale_in_refused(ctx: &mut Ctx) -> anyhow::Result<()> {
    let started = Instant::now();
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let node_names: Vec<String> = nodes
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    let leader = ctx
        .kvc(NS, "orders")
        .await?
        .status
        .and_then(|s| s.leader)
        .context("leader")?;
    // Keep two members down: no node may take their pods back.
    for n in &node_names {
        ctx.kubectl(&["cordon", n]).await?;
    }
    let result = async {
        for id in (0..3).filter(|i| *i != leader) {
            delete_pod(ctx, NS, &format!("orders-{id}")).await?;
        }
        ctx.kubectl(&["-n", NS, "scale", "kvc/orders", "--replicas=1"])
            .await?;
        let (reason, took) = ctx
            .wait_for("ScalingBlocked", 2 * MIN, || async {
                let kvc = ctx.kvc(NS, "orders").await?;
                let (status, reason) = condition(&kvc, "ScalingBlocked");
                Ok(if status == "True" {
                    Ok(reason)
                } else {
                    Err(format!(
                        "ScalingBlocked={status} phase {:?}",
                        kvc.status.and_then(|s| s.phase)
                    ))
                })
            })
            .await?;
        let kvc = ctx.kvc(NS, "orders").await?;
        let st = kvc.status.clone().unwrap_or_default();
        anyhow::ensure!(
            st.members.len() == 3,
            "membership changed: {:?}",
            st.members
        );
        let warned = ctx
            .warning_event(NS, "ScalingBlocked", None)
            .await?
            .is_some();
        anyhow::ensure!(warned, "no Warning event ScalingBlocked");
        Ok::<_, anyhow::Error>((reason, took))
    }
    .await;
    for n in &node_names {
        ctx.kubectl(&["uncordon", n]).await?;
    }
    let (reason, took) = result?;
    let converged = ctx.wait_converged(NS, "orders", 1, 6 * MIN).await?;
    read_keys(ctx, "verify-a-after-block", "orders", "a/", 1000).await?;
    ctx.report.add(
        "scenario 5: unsafe scale-in refused",
        json!({"seconds": started.elapsed().as_secs(), "blocked_after_s": took.as_secs_f64(),
               "reason": reason, "scaled_to_1_after_recovery_s": converged.as_secs_f64()}),
    );
    Ok(())
}

/// Scenario 6: a PostgreSQL-backed cluster (E2E_PG_URL reachable from pods).
async fn postgres_backed(ctx: &mut Ctx) -> anyhow::Result<()> {
    let started = Instant::now();
    let url = std::env::var("E2E_PG_URL")
        .context("E2E_PG_URL (a PostgreSQL URL reachable from pods) is required")?;
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "orders-pg", "namespace": NS},
        "stringData": {"url": url},
    }))?;
    Api::<Secret>::namespaced(ctx.client.clone(), NS)
        .create(&PostParams::default(), &secret)
        .await?;
    create_kvc(
        ctx,
        &kvcluster(
            NS,
            "orders-pg",
            3,
            json!({"backend": "postgres", "size": "64Mi",
                   "postgres": {"secretName": "orders-pg", "secretKey": "url"}}),
        )?,
    )
    .await?;
    let took = ctx.wait_converged(NS, "orders-pg", 3, 4 * MIN).await?;
    let load = write_keys(ctx, "load-pg", "orders-pg", "pg/", 500).await?;
    leader_pod_deleted(
        ctx,
        "orders-pg",
        "pgf/",
        "scenario 6: PostgreSQL-backed, leader pod deleted",
    )
    .await?;
    read_keys(ctx, "verify-pg", "orders-pg", "pg/", 500).await?;
    ctx.report.add(
        "scenario 6: PostgreSQL-backed cluster",
        json!({"seconds": started.elapsed().as_secs(), "available_after_s": took.as_secs_f64(),
               "writes_per_s": load["writes_per_s"]}),
    );
    Ok(())
}

/// Scenario 7: deleting KVClusters garbage-collects what they own (volumes
/// too, under policy Delete); the operator uninstalls cleanly.
async fn delete_and_uninstall(ctx: &mut Ctx) -> anyhow::Result<()> {
    let started = Instant::now();
    let kvcs: Api<KVCluster> = Api::namespaced(ctx.client.clone(), NS);
    for name in ["orders", "orders-pg", "orders-restored"] {
        kvcs.delete(name, &DeleteParams::default()).await?;
    }
    let sts: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), NS);
    let svcs: Api<Service> = Api::namespaced(ctx.client.clone(), NS);
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), NS);
    let (_, gc) = ctx
        .wait_for("owned objects and volumes collected", 3 * MIN, || async {
            let sel =
                ListParams::default().labels("app.kubernetes.io/managed-by=kvcluster-operator");
            let left = (
                sts.list(&sel).await?.items.len(),
                svcs.list(&sel).await?.items.len(),
                cms.list(&sel).await?.items.len(),
                pvc_names(ctx, "orders").await?.len()
                    + pvc_names(ctx, "orders-pg").await?.len()
                    + pvc_names(ctx, "orders-restored").await?.len(),
                kvcs.list(&ListParams::default()).await?.items.len(),
            );
            Ok(if left == (0, 0, 0, 0, 0) {
                Ok(())
            } else {
                Err(format!(
                    "statefulsets, services, configmaps, pvcs, kvclusters left: {left:?}"
                ))
            })
        })
        .await?;
    // The deleted cluster's members lose the right to review tokens (the
    // operator's periodic sweep; a ClusterRoleBinding has no owner to follow).
    let bindings: Api<k8s_openapi::api::rbac::v1::ClusterRoleBinding> =
        Api::all(ctx.client.clone());
    let (_, unbound) = ctx
        .wait_for(
            "orders-kvserver dropped from the token-review binding",
            3 * MIN,
            || async {
                let b = bindings
                    .get("kvc-kvcluster-operator-token-reviewers")
                    .await?;
                let left: Vec<String> = b
                    .subjects
                    .unwrap_or_default()
                    .into_iter()
                    .map(|s| format!("{}/{}", s.namespace.unwrap_or_default(), s.name))
                    .collect();
                Ok(if left.is_empty() {
                    Ok(())
                } else {
                    Err(format!("subjects {left:?}"))
                })
            },
        )
        .await?;
    ctx.delete_namespace(NS).await?;
    ctx.helm(&["uninstall", "kvc", "--namespace", OPERATOR_NS])
        .await?;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), OPERATOR_NS);
    // Helm keeps the finished `helm test` pod (hook); every operator pod must go.
    ctx.wait_for("operator pods gone", 2 * MIN, || async {
        let live: Vec<String> = pods
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|p| {
                !matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded")
                )
            })
            .filter_map(|p| p.metadata.name)
            .collect();
        Ok(if live.is_empty() {
            Ok(())
        } else {
            Err(format!("{live:?}"))
        })
    })
    .await?;
    // Helm never deletes CRDs; the suite leaves the cluster as it found it.
    ctx.kubectl(&[
        "delete",
        "crd",
        "kvclusters.kvcluster.io",
        "kvclusterbackups.kvcluster.io",
        "--ignore-not-found",
    ])
    .await?;
    ctx.delete_namespace(OPERATOR_NS).await?;
    ctx.report.add(
        "scenario 7: delete KVClusters, uninstall",
        json!({"seconds": started.elapsed().as_secs(), "collected_after_s": gc.as_secs_f64(),
               "review_binding_swept_after_s": unbound.as_secs()}),
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster with the images loaded: run e2e/local/run.sh (or e2e/kind/run.sh)"]
async fn e2e_suite() -> anyhow::Result<()> {
    let mut ctx = Ctx::from_env().await?;
    let started = Instant::now();
    install_with_manifests(&mut ctx).await?;
    install_with_helm(&mut ctx).await?;
    three_members_sqlite(&mut ctx).await?;
    tls_everywhere(&mut ctx).await?;
    auth_and_hardening(&mut ctx).await?;
    scale_under_load(&mut ctx).await?;
    partitions::scale_partitioned(&mut ctx).await?;
    leader_pod_deleted(&mut ctx, "orders", "f/", "scenario 4: leader pod deleted").await?;
    unsafe_scale_in_refused(&mut ctx).await?;
    postgres_backed(&mut ctx).await?;
    backup::backups(&mut ctx).await?;
    recovery::quorum_loss(&mut ctx, backup::KEYS).await?;
    delete_and_uninstall(&mut ctx).await?;
    ctx.report
        .add("suite", json!({"seconds": started.elapsed().as_secs()}));
    Ok(())
}
