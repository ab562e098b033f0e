//! Helpers of the end-to-end suite (`tests/suite.rs`): a Kubernetes client
//! from `KUBECONFIG`, `kubectl` and real Helm (`scripts/helm.py`) as a user
//! would run them, condition waits with timeouts, and `kvctl` pods that read
//! and write through a KVCluster's client Service from inside the cluster.
//!
//! # Layout
//! - [`Ctx`]: the cluster under test and the tools to drive it.
//! - [`Ctx::wait_for`]: every wait polls a condition until a deadline (no bare sleeps).
//! - [`Ctx::kvctl`] / [`Ctx::start_kvctl`] / [`Ctx::finish_kvctl`]: client pods.
//! - [`Report`]: phase timings and measurements, printed as `E2E-REPORT` lines.
//! - `kvctl`: the client pods' spec, and the [`Credential`] they authenticate with.

mod kvctl;

pub use kvctl::Credential;
use kvctl::kvctl_pod;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use anyhow::bail;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::Client;
use kube::api::DeleteParams;
use kube::api::ListParams;
use kube::api::LogParams;
use kube::api::PostParams;
use operator::crd::KVCluster;
use serde_json::Value;
use serde_json::json;

/// The kvserver image under test (it also carries `kvctl`).
pub const KVSERVER_IMAGE: &str = operator::crd::DEFAULT_IMAGE;

/// The cluster under test.
pub struct Ctx {
    pub client: Client,
    /// Repository root (charts, manifests, scripts).
    pub root: PathBuf,
    /// `kubectl` to run (env `KUBECTL`, default `kubectl`).
    pub kubectl: String,
    pub report: Report,
}

/// Measurements of the run, printed as they are made.
#[derive(Default)]
pub struct Report {
    pub entries: Vec<(String, Value)>,
}

impl Report {
    pub fn add(&mut self, name: &str, value: Value) {
        println!("E2E-REPORT {}", json!({"name": name, "value": value}));
        self.entries.push((name.into(), value));
    }
}

impl Ctx {
    /// Connects with `KUBECONFIG` (required: the suite never guesses a cluster).
    pub async fn from_env() -> anyhow::Result<Ctx> {
        let kubeconfig = std::env::var("KUBECONFIG").context(
            "KUBECONFIG is not set: bring a cluster up with e2e/local/run.sh or e2e/kind/run.sh",
        )?;
        anyhow::ensure!(
            std::path::Path::new(&kubeconfig).exists(),
            "KUBECONFIG={kubeconfig} does not exist"
        );
        let client = Client::try_default()
            .await
            .context("connecting with KUBECONFIG")?;
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("repository root")?
            .to_path_buf();
        Ok(Ctx {
            client,
            root,
            kubectl: std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()),
            report: Report::default(),
        })
    }

    async fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = tokio::process::Command::new(program)
            .args(args)
            .current_dir(&self.root)
            .output()
            .await
            .with_context(|| format!("running {program}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        if !out.status.success() {
            bail!(
                "{program} {} failed ({}): {}{}",
                args.join(" "),
                out.status,
                stdout,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(stdout)
    }

    /// Runs `kubectl ARGS`; fails with its output when it fails.
    pub async fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.run(&self.kubectl, args).await
    }

    /// Runs real Helm through `scripts/helm.py ARGS`.
    pub async fn helm(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["scripts/helm.py"];
        all.extend_from_slice(args);
        self.run("python3", &all).await
    }

    /// Polls `check` every 500 ms until it returns `Some`, or fails after `timeout`
    /// with the last state `check` saw. Returns the value and how long it took.
    pub async fn wait_for<T, F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: F,
    ) -> anyhow::Result<(T, Duration)>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Result<T, String>>>,
    {
        // The project's one polling loop (kvchaos::wait), at the pace of a Kubernetes API.
        let waited = kvchaos::wait::wait_state(what, timeout, Duration::from_millis(500), || {
            let fut = check();
            async move { fut.await.unwrap_or_else(|e| Err(format!("error: {e:#}"))) }
        })
        .await?;
        Ok(waited)
    }

    /// Creates a namespace (deleting a leftover of an earlier run first).
    pub async fn fresh_namespace(&self, ns: &str) -> anyhow::Result<()> {
        self.delete_namespace(ns).await?;
        let api: Api<Namespace> = Api::all(self.client.clone());
        let obj: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
        api.create(&PostParams::default(), &obj).await?;
        Ok(())
    }

    /// Deletes a namespace and waits until it is gone.
    pub async fn delete_namespace(&self, ns: &str) -> anyhow::Result<()> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        match api.delete(ns, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        self.wait_for(
            &format!("namespace {ns} deleted"),
            Duration::from_secs(180),
            || async {
                Ok(match api.get_opt(ns).await? {
                    None => Ok(()),
                    Some(n) => Err(format!("phase {:?}", n.status.and_then(|s| s.phase))),
                })
            },
        )
        .await?;
        Ok(())
    }

    pub async fn kvc(&self, ns: &str, name: &str) -> anyhow::Result<KVCluster> {
        Ok(Api::<KVCluster>::namespaced(self.client.clone(), ns)
            .get(name)
            .await?)
    }

    /// Waits until the KVCluster has `n` voters, all ready, a leader, `Available`
    /// and not `Progressing`.
    pub async fn wait_converged(
        &self,
        ns: &str,
        name: &str,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        let (_, took) = self
            .wait_for(
                &format!("{ns}/{name} converged at {n} voters"),
                timeout,
                || async {
                    let kvc = self.kvc(ns, name).await?;
                    let st = kvc.status.clone().unwrap_or_default();
                    let voters = st.members.iter().filter(|m| m.role == "voter").count();
                    let all_ready = st.members.iter().all(|m| m.ready);
                    let ok = voters == n
                        && st.members.len() == n
                        && all_ready
                        && st.ready_replicas == n as i32
                        && st.leader.is_some()
                        && condition(&kvc, "Available").0 == "True"
                        && condition(&kvc, "Progressing").0 == "False"
                        && st.observed_generation == kvc.metadata.generation;
                    Ok(if ok {
                        Ok(())
                    } else {
                        Err(format!(
                            "phase {:?}, {} members ({} voters), ready {}, leader {:?}, operation {:?}",
                            st.phase,
                            st.members.len(),
                            voters,
                            st.ready_replicas,
                            st.leader,
                            st.operation
                        ))
                    })
                },
            )
            .await?;
        Ok(took)
    }

    /// Starts a pod running `kvctl --endpoints https://<service>:8080 ARGS`, as an
    /// in-cluster client does: with the CA the operator publishes in the ConfigMap
    /// `<service>-ca` mounted. A cluster without one (client TLS disabled) is
    /// called over plain HTTP.
    pub async fn start_kvctl(
        &self,
        ns: &str,
        pod: &str,
        service: &str,
        args: &[&str],
    ) -> anyhow::Result<()> {
        let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
        let ca = format!("{service}-ca");
        let tls = cms.get_opt(&ca).await?.is_some();
        self.start_kvctl_with(ns, pod, service, args, tls.then_some(ca.as_str()))
            .await
    }

    /// [`Ctx::start_kvctl_as`] with the operator's admin token when the cluster has one.
    pub async fn start_kvctl_with(
        &self,
        ns: &str,
        pod: &str,
        service: &str,
        args: &[&str],
        ca: Option<&str>,
    ) -> anyhow::Result<()> {
        let secrets: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(self.client.clone(), ns);
        let token = format!("{service}-auth-operator");
        let auth = secrets.get_opt(&token).await?.is_some();
        let cred = auth.then_some(Credential::Secret(token.as_str()));
        self.start_kvctl_as(ns, pod, service, args, ca, cred).await
    }

    /// [`Ctx::start_kvctl`] with the TLS and credential choices made by the caller:
    /// `ca` names the ConfigMap with the CA bundle (`https://`), `None` means plain
    /// `http://`; `cred` is what the pod authenticates with (`None`: nothing).
    pub async fn start_kvctl_as(
        &self,
        ns: &str,
        pod: &str,
        service: &str,
        args: &[&str],
        ca: Option<&str>,
        cred: Option<Credential<'_>>,
    ) -> anyhow::Result<()> {
        let obj = kvctl_pod(pod, service, args, ca, cred);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        api.create(&PostParams::default(), &obj).await?;
        Ok(())
    }

    /// Runs kvctl as a Job (what an application's batch client is), with the
    /// pod [`Ctx::start_kvctl_as`] would start as its template; waits for it to
    /// finish and returns whether it succeeded and its pod's logs. The Job and
    /// its pod are deleted afterwards.
    pub async fn run_kvctl_job(
        &self,
        ns: &str,
        name: &str,
        service: &str,
        args: &[&str],
        ca: Option<&str>,
        cred: Option<Credential<'_>>,
    ) -> anyhow::Result<(bool, String)> {
        use k8s_openapi::api::batch::v1::Job;
        use k8s_openapi::api::batch::v1::JobSpec;
        use k8s_openapi::api::core::v1::PodTemplateSpec;
        let pod = kvctl_pod(name, service, args, ca, cred);
        let job = Job {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(JobSpec {
                backoff_limit: Some(0),
                template: PodTemplateSpec {
                    metadata: Some(kube::api::ObjectMeta {
                        labels: pod.metadata.labels.clone(),
                        ..Default::default()
                    }),
                    spec: pod.spec,
                },
                ..Default::default()
            }),
            ..Default::default()
        };
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), ns);
        jobs.create(&PostParams::default(), &job).await?;
        let (ok, _) = self
            .wait_for(
                &format!("job {ns}/{name} finished"),
                Duration::from_secs(180),
                || async {
                    let st = jobs.get(name).await?.status.unwrap_or_default();
                    Ok(match (st.succeeded.unwrap_or(0), st.failed.unwrap_or(0)) {
                        (s, _) if s > 0 => Ok(true),
                        (_, f) if f > 0 => Ok(false),
                        _ => Err(format!("active {:?}", st.active)),
                    })
                },
            )
            .await?;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let mut logs = String::new();
        for p in pods
            .list(&ListParams::default().labels(&format!("job-name={name}")))
            .await?
            .items
        {
            if let Some(n) = p.metadata.name {
                logs.push_str(&pods.logs(&n, &LogParams::default()).await?);
            }
        }
        let background = DeleteParams {
            propagation_policy: Some(kube::api::PropagationPolicy::Background),
            ..Default::default()
        };
        jobs.delete(name, &background).await?;
        Ok((ok, logs))
    }

    /// Waits for a kvctl pod to finish; returns whether it succeeded and the
    /// last JSON line it printed. The pod is deleted afterwards.
    pub async fn finish_kvctl(
        &self,
        ns: &str,
        pod: &str,
        timeout: Duration,
    ) -> anyhow::Result<(bool, Value)> {
        let (ok, logs) = self.finish_pod(ns, pod, timeout).await?;
        let last = logs
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<Value>(l).ok())
            .unwrap_or(Value::Null);
        if !ok && last.is_null() {
            bail!("pod {ns}/{pod} failed: {logs}");
        }
        Ok((ok, last))
    }

    /// Waits for a pod to finish; returns whether it succeeded and its logs. The
    /// pod is deleted afterwards.
    pub async fn finish_pod(
        &self,
        ns: &str,
        pod: &str,
        timeout: Duration,
    ) -> anyhow::Result<(bool, String)> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let (phase, _) = self
            .wait_for(&format!("pod {ns}/{pod} finished"), timeout, || async {
                let p = api.get(pod).await?;
                let phase = p.status.and_then(|s| s.phase).unwrap_or_default();
                Ok(match phase.as_str() {
                    "Succeeded" | "Failed" => Ok(phase),
                    other => Err(other.to_string()),
                })
            })
            .await?;
        let logs = api.logs(pod, &LogParams::default()).await?;
        api.delete(pod, &DeleteParams::default()).await?;
        Ok((phase == "Succeeded", logs))
    }

    /// Runs a kvctl pod to completion: `(succeeded, last JSON line)`.
    pub async fn kvctl(
        &self,
        ns: &str,
        pod: &str,
        service: &str,
        args: &[&str],
    ) -> anyhow::Result<(bool, Value)> {
        self.start_kvctl(ns, pod, service, args).await?;
        self.finish_kvctl(ns, pod, Duration::from_secs(180)).await
    }

    /// Waits until a pod is running (a background writer has started).
    /// The message of a Warning event with `reason` in `ns` (about the object named
    /// `object`, when given), if there is one.
    pub async fn warning_event(
        &self,
        ns: &str,
        reason: &str,
        object: Option<&str>,
    ) -> anyhow::Result<Option<String>> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), ns);
        Ok(events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.type_.as_deref() == Some("Warning")
                    && object.is_none_or(|o| e.involved_object.name.as_deref() == Some(o))
            })
            .map(|e| e.message.unwrap_or_default()))
    }

    pub async fn wait_running(&self, ns: &str, pod: &str) -> anyhow::Result<()> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        self.wait_for(
            &format!("pod {ns}/{pod} running"),
            Duration::from_secs(120),
            || async {
                let phase = api
                    .get(pod)
                    .await?
                    .status
                    .and_then(|s| s.phase)
                    .unwrap_or_default();
                Ok(if phase == "Running" {
                    Ok(())
                } else {
                    Err(phase)
                })
            },
        )
        .await?;
        Ok(())
    }
}

/// `(status, reason)` of a KVCluster condition (empty strings when absent).
pub fn condition(kvc: &KVCluster, type_: &str) -> (String, String) {
    kvc.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .map(|c| (c.status.clone(), c.reason.clone()))
        .unwrap_or_default()
}

/// A KVCluster manifest.
pub fn kvcluster(ns: &str, name: &str, replicas: i32, storage: Value) -> anyhow::Result<KVCluster> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "kvcluster.io/v1alpha1",
        "kind": "KVCluster",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": replicas,
            "storage": storage,
            "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"memory": "256Mi"}},
        }
    }))?)
}
