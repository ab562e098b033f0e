//! Tests of the pure builders: every object, label, port, probe and limit.

use super::*;
use crate::crd::KVClusterSpec;
use crate::crd::PostgresSpec;
use crate::crd::RaftSpec;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

fn kvc(spec_yaml: &str) -> KVCluster {
    let spec: KVClusterSpec = serde_yaml::from_str(spec_yaml).expect("spec");
    let mut k = KVCluster::new("orders", spec);
    k.metadata.namespace = Some("shop".into());
    k.metadata.uid = Some("0123456789abcdef".into());
    k
}

#[test]
fn defaults_from_an_empty_spec() {
    let k = kvc("{}");
    assert_eq!(k.spec.replicas, 3);
    assert_eq!(k.spec.storage.size, "1Gi");
    assert_eq!(k.spec.service.type_, "ClusterIP");
    assert!(k.spec.metrics.enabled);
}

#[test]
fn labels_selectors_and_owner() {
    let k = kvc("replicas: 3");
    let sts = statefulset(&k, 3, None).expect("sts");
    let sel = sts
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .expect("selector");
    assert_eq!(sel, selector_labels(&k));
    let tpl_labels = sts
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .expect("labels");
    assert!(
        sel.iter().all(|(key, v)| tpl_labels.get(key) == Some(v)),
        "template labels include the selector"
    );
    let owner = &sts.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("KVCluster", "orders", Some(true))
    );
    assert_eq!(
        selector_string(&k),
        "app.kubernetes.io/instance=orders,app.kubernetes.io/name=kvserver"
    );
    for m in [
        config_map(&k).expect("cm").metadata,
        peer_service(&k).expect("svc").metadata,
        pdb(&k, 3).expect("pdb").metadata,
    ] {
        assert_eq!(m.namespace.as_deref(), Some("shop"));
        assert!(m.owner_references.is_some_and(|o| o.len() == 1));
    }
    let mut no_uid = k.clone();
    no_uid.metadata.uid = None;
    assert_eq!(
        config_map(&no_uid).err(),
        Some(BuildError::MissingMeta("uid"))
    );
}

#[test]
fn pdb_keeps_a_quorum() {
    assert_eq!([1, 3, 5, 7].map(tolerated_failures), [0, 1, 2, 3]);
    assert_eq!([2, 4, 6].map(tolerated_failures), [0, 1, 2]);
    let p = pdb(&kvc("{}"), 5).expect("pdb");
    assert_eq!(
        p.spec.and_then(|s| s.max_unavailable),
        Some(IntOrString::Int(2))
    );
}

#[test]
fn services_ports_and_dns() {
    let k = kvc("{}");
    let peers = peer_service(&k).expect("peers").spec.expect("spec");
    assert_eq!(peers.cluster_ip.as_deref(), Some("None"));
    assert_eq!(peers.publish_not_ready_addresses, Some(true));
    assert_eq!(peers.ports.map(|p| p.len()), Some(2));
    let client = client_service(&k).expect("client").spec.expect("spec");
    assert_eq!(
        client
            .ports
            .map(|p| p.iter().map(|p| p.port).collect::<Vec<_>>()),
        Some(vec![API_PORT])
    );
    assert_eq!(
        member_api(&k, 2),
        "orders-2.orders-peers.shop.svc.cluster.local:8080"
    );
    assert_eq!(
        member_raft(&k, 0),
        "orders-0.orders-peers.shop.svc.cluster.local:8081"
    );
    assert_eq!(pvc_name(&k, 4), "data-orders-4");
}

#[test]
fn statefulset_pod_template() {
    let k = kvc(
        "replicas: 5\nstorage: {size: 5Gi, storageClassName: fast}\npod: {nodeSelector: {disk: ssd}}",
    );
    let sts = statefulset(&k, 2, None).expect("sts");
    let spec = sts.spec.expect("spec");
    assert_eq!(
        spec.replicas,
        Some(2),
        "size comes from the membership stage, not spec.replicas"
    );
    assert_eq!(spec.service_name.as_deref(), Some("orders-peers"));
    assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
    let pvc = &spec.volume_claim_templates.expect("pvc")[0];
    let pvc_spec = pvc.spec.as_ref().expect("pvc spec");
    assert_eq!(pvc_spec.storage_class_name.as_deref(), Some("fast"));
    assert_eq!(
        pvc_spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage")),
        Some(&Quantity("5Gi".into()))
    );
    let pod = spec.template.spec.expect("pod");
    assert_eq!(pod.enable_service_links, Some(false));
    assert_eq!(
        pod.security_context.as_ref().and_then(|c| c.fs_group),
        Some(10001)
    );
    assert_eq!(
        pod.node_selector
            .and_then(|n| n.get("disk").cloned())
            .as_deref(),
        Some("ssd")
    );
    let c = &pod.containers[0];
    assert_eq!(
        c.readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.as_deref()),
        Some("/readyz")
    );
    assert_eq!(
        c.liveness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.as_deref()),
        Some("/healthz")
    );
    let env: BTreeMap<String, Option<String>> = c
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.name, e.value))
        .collect();
    assert_eq!(
        env["KV_ADVERTISE_RAFT_ADDR"].as_deref(),
        Some("$(POD_NAME).orders-peers.shop.svc.cluster.local:8081")
    );
    assert!(!env.contains_key("KV_STORAGE_POSTGRES_URL"));
    assert!(
        pod.affinity.is_some_and(|a| a.pod_anti_affinity.is_some()),
        "spread over nodes by default"
    );
}

#[test]
fn postgres_and_config() {
    let mut k = kvc("storage: {backend: postgres}");
    assert_eq!(config_map(&k).err(), Some(BuildError::MissingPostgres));
    k.spec.storage.postgres = Some(PostgresSpec {
        secret_name: "pg".into(),
        secret_key: "url".into(),
        ssl_mode: None,
        ca_secret_name: None,
        client_cert_secret_name: None,
    });
    let cfg = config_yaml(&k).expect("config");
    assert!(
        cfg.contains("backend: postgres") && cfg.contains("cluster_id: orders-01234567"),
        "{cfg}"
    );
    assert!(!cfg.contains("postgres://"), "the URL stays in the Secret");
    let sts = statefulset(&k, 3, None).expect("sts");
    let env = sts
        .spec
        .and_then(|s| s.template.spec)
        .map(|p| p.containers[0].env.clone().unwrap_or_default())
        .unwrap_or_default();
    let url = env
        .iter()
        .find(|e| e.name == "KV_STORAGE_POSTGRES_URL")
        .expect("url env");
    assert_eq!(
        url.value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .map(|s| s.name.as_str()),
        Some("pg")
    );
    k.spec.raft = Some(RaftSpec {
        heartbeat_interval_ms: Some(200),
        election_timeout_min_ms: Some(100),
        ..Default::default()
    });
    assert_eq!(config_yaml(&k).err(), Some(BuildError::BadRaftTiming));
}

#[test]
fn cache_size_quantities() {
    for (q, bytes) in [
        ("0", Some(0)),
        ("512", Some(512)),
        ("64Mi", Some(64 << 20)),
        ("1Gi", Some(1 << 30)),
        ("256M", Some(256_000_000)),
        ("2k", Some(2_000)),
        ("", None),
        ("Mi", None),
        ("1.5Gi", None),
        ("-1", None),
        ("64MiB", None),
        ("99999999999999999999Ti", None),
    ] {
        assert_eq!(parse_bytes(q), bytes, "{q:?}");
    }
    let mut k = kvc("storage: {cacheSize: 256Mi}");
    let cfg = config_yaml(&k).expect("config");
    assert!(cfg.contains("cache_bytes: 268435456"), "{cfg}");
    assert!(
        !config_yaml(&kvc("{}"))
            .expect("config")
            .contains("cache_bytes"),
        "unset: kvserver's default"
    );
    for bad in ["lots", "2Ti"] {
        k.spec.storage.cache_size = Some(bad.into());
        assert_eq!(
            config_map(&k).err(),
            Some(BuildError::BadCacheSize(bad.into()))
        );
    }
}

#[test]
fn config_changes_roll_pods() {
    let a = kvc("{}");
    let mut b = a.clone();
    b.spec.raft = Some(RaftSpec {
        heartbeat_interval_ms: Some(50),
        ..Default::default()
    });
    let hash = |k: &KVCluster| {
        statefulset(k, 3, None)
            .expect("sts")
            .spec
            .and_then(|s| s.template.metadata)
            .and_then(|m| m.annotations)
            .and_then(|a| a.get("kvcluster.io/config-hash").cloned())
    };
    assert_ne!(hash(&a), hash(&b));
    assert_eq!(hash(&a), hash(&a.clone()));
}

#[test]
fn volumes_are_owned_only_under_the_delete_policy() {
    let mut k = kvc("{}");
    k.spec.storage.reclaim_policy = ReclaimPolicy::Delete;
    let other = OwnerReference {
        api_version: "apps/v1".into(),
        kind: "StatefulSet".into(),
        name: "x".into(),
        uid: "other".into(),
        ..Default::default()
    };
    let refs = pvc_owner_references(&k, std::slice::from_ref(&other))
        .expect("refs")
        .expect("a change");
    assert_eq!(refs.len(), 2);
    assert_eq!(refs[0], other, "others' references are kept");
    assert_eq!(refs[1].kind, "KVCluster");
    assert_eq!(refs[1].controller, None);
    // Already owned: nothing to do.
    assert_eq!(pvc_owner_references(&k, &refs).expect("refs"), None);
    // Retain: our reference is dropped, others stay.
    k.spec.storage.reclaim_policy = ReclaimPolicy::Retain;
    assert_eq!(
        pvc_owner_references(&k, &refs).expect("refs"),
        Some(vec![other.clone()])
    );
    assert_eq!(pvc_owner_references(&k, &[other]).expect("refs"), None);
}

#[test]
fn pods_mount_their_certificates_and_probe_over_https() {
    let k = kvc("replicas: 3");
    let sts = statefulset(&k, 3, Some("abc")).expect("sts");
    let tpl = sts
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .expect("template");
    let pod = tpl.spec.expect("pod");
    let c = &pod.containers[0];
    let env: BTreeMap<String, String> = c
        .env
        .iter()
        .flatten()
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .collect();
    assert_eq!(
        env["KV_TLS_PEER_CERT_FILE"],
        "/etc/kvserver/tls/peer/$(POD_NAME).crt"
    );
    assert_eq!(
        env["KV_TLS_PEER_KEY_FILE"],
        "/etc/kvserver/tls/peer/$(POD_NAME).key"
    );
    let secrets: Vec<String> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.secret.as_ref()?.secret_name.clone())
        .collect();
    assert_eq!(secrets, ["orders-peer-tls", "orders-client-tls"]);
    let probe = c
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .expect("probe");
    assert_eq!(probe.scheme.as_deref(), Some("HTTPS"));
    let annotations = tpl
        .metadata
        .and_then(|m| m.annotations)
        .expect("annotations");
    assert_eq!(annotations["kvcluster.io/secrets-hash"], "abc");
    let cfg: serde_yaml::Value =
        serde_yaml::from_str(&config_yaml(&k).expect("config")).expect("yaml");
    assert_eq!(
        cfg["tls"]["peer"]["ca_file"],
        "/etc/kvserver/tls/peer/ca.crt"
    );
    assert_eq!(
        cfg["tls"]["client"]["cert_file"],
        "/etc/kvserver/tls/client/tls.crt"
    );

    // Client TLS disabled: plain probes, no client certificate, peers still mutual TLS.
    let k = kvc("tls: {client: {mode: disabled}}");
    let sts = statefulset(&k, 3, None).expect("sts");
    let pod = sts.spec.and_then(|s| s.template.spec).expect("pod");
    let probe = pod.containers[0]
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .expect("probe");
    assert_eq!(probe.scheme, None);
    let cfg: serde_yaml::Value =
        serde_yaml::from_str(&config_yaml(&k).expect("config")).expect("yaml");
    assert!(cfg["tls"]["client"].is_null());
    assert_eq!(
        cfg["tls"]["peer"]["ca_file"],
        "/etc/kvserver/tls/peer/ca.crt"
    );
}

#[test]
fn postgres_tls_settings_become_files_and_config() {
    let k = kvc(
        "storage: {backend: postgres, postgres: {secretName: pg, sslMode: verify-full, caSecretName: pg-ca, clientCertSecretName: pg-client}}",
    );
    let cfg: serde_yaml::Value =
        serde_yaml::from_str(&config_yaml(&k).expect("config")).expect("yaml");
    let pg = &cfg["storage"]["postgres"];
    assert_eq!(pg["sslmode"], "verify-full");
    assert_eq!(pg["ca_file"], "/etc/kvserver/tls/postgres-ca/ca.crt");
    assert_eq!(pg["key_file"], "/etc/kvserver/tls/postgres-client/tls.key");
    let sts = statefulset(&k, 3, Some("d1")).expect("sts");
    let pod = sts.spec.and_then(|s| s.template.spec).expect("pod");
    let secrets: Vec<String> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.secret.as_ref()?.secret_name.clone())
        .collect();
    assert!(
        secrets.contains(&"pg-ca".to_string()) && secrets.contains(&"pg-client".to_string()),
        "{secrets:?}"
    );
    let bad = kvc("storage: {backend: postgres, postgres: {secretName: pg, sslMode: sometimes}}");
    assert!(matches!(config_yaml(&bad), Err(BuildError::Tls(m)) if m.contains("sslMode")));
}

#[test]
fn auth_settings_become_kvserver_config() {
    let cfg = |spec: &str| -> serde_yaml::Value {
        serde_yaml::from_str(&config_yaml(&kvc(spec)).expect("config")).expect("yaml")
    };
    let on = cfg(
        "{auth: {tokenSecretName: app-tokens, clientCertificates: [{subject: billing, role: readwrite, prefixes: [billing/]}]}}",
    );
    assert_eq!(on["auth"]["enabled"], true);
    assert_eq!(
        on["auth"]["token_files"],
        serde_yaml::to_value([
            "/etc/kvserver/auth/operator.yaml",
            "/etc/kvserver/auth/user.yaml"
        ])
        .expect("v")
    );
    assert_eq!(on["auth"]["client_certs"][0]["role"], "readwrite");
    assert_eq!(on["tls"]["client_auth"], "optional");
    let default = cfg("{}");
    assert_eq!(default["auth"]["enabled"], true, "on unless disabled");
    assert_eq!(
        default["auth"]["token_files"],
        serde_yaml::to_value(["/etc/kvserver/auth/operator.yaml"]).expect("v")
    );
    assert_eq!(cfg("{auth: {mode: disabled}}")["auth"]["enabled"], false);
    let err = config_yaml(&kvc(
        "{tls: {client: {mode: disabled}}, auth: {clientCertificates: [{subject: x, role: read}]}}",
    ));
    assert!(matches!(err, Err(BuildError::Auth(_))), "{err:?}");
}

/// `spec.auth.serviceAccounts`: the bindings (namespace defaulted), a per-cluster
/// audience, and the members' own review credential, which only these clusters
/// mount.
#[test]
fn service_account_auth_becomes_config_and_a_review_credential() {
    let k = kvc(
        "{auth: {serviceAccounts: {bindings: [{name: checkout, role: readwrite, prefixes: [orders/]}, {name: audit, namespace: ops, role: read}]}}}",
    );
    let cfg: serde_yaml::Value =
        serde_yaml::from_str(&config_yaml(&k).expect("config")).expect("yaml");
    let sa = &cfg["auth"]["service_accounts"];
    assert_eq!(sa["audience"], "kvcluster.io/shop/orders");
    assert_eq!(sa["api_server"], "https://kubernetes.default.svc");
    assert_eq!(sa["bindings"][0]["namespace"], "shop");
    assert_eq!(sa["bindings"][0]["prefixes"][0], "orders/");
    assert_eq!(sa["bindings"][1]["namespace"], "ops");
    assert_eq!(sa["bindings"][1]["role"], "read");
    let reviewer = |k: &KVCluster| {
        let sts = statefulset(k, 3, None).expect("sts");
        let pod = sts.spec.expect("spec").template.spec.expect("pod");
        let volume = pod
            .volumes
            .unwrap_or_default()
            .into_iter()
            .find(|v| v.name == "reviewer");
        let mounted = pod.containers[0]
            .volume_mounts
            .clone()
            .unwrap_or_default()
            .iter()
            .any(|m| m.name == "reviewer" && m.read_only == Some(true));
        (volume, mounted, pod.automount_service_account_token)
    };
    let (volume, mounted, automount) = reviewer(&k);
    let sources = volume
        .and_then(|v| v.projected)
        .and_then(|p| p.sources)
        .expect("a projected reviewer volume");
    assert!(mounted && automount == Some(false));
    assert!(sources.iter().any(|s| {
        s.service_account_token
            .as_ref()
            .is_some_and(|t| t.audience.is_none() && t.expiration_seconds == Some(3600))
    }));
    assert!(sources.iter().any(|s| {
        s.config_map
            .as_ref()
            .is_some_and(|c| c.name == "kube-root-ca.crt")
    }));
    // A chosen audience is kept; without serviceAccounts (or with auth off) no
    // token is mounted and nothing is configured.
    let chosen = kvc("{auth: {serviceAccounts: {audience: payments, bindings: []}}}");
    let cfg: serde_yaml::Value =
        serde_yaml::from_str(&config_yaml(&chosen).expect("config")).expect("yaml");
    assert_eq!(cfg["auth"]["service_accounts"]["audience"], "payments");
    for spec in [
        "{}",
        "{auth: {mode: disabled, serviceAccounts: {bindings: [{name: a, role: read}]}}}",
    ] {
        let k = kvc(spec);
        assert!(reviewer(&k).0.is_none(), "{spec}");
        let cfg: serde_yaml::Value =
            serde_yaml::from_str(&config_yaml(&k).expect("config")).expect("yaml");
        assert!(cfg["auth"]["service_accounts"].is_null(), "{spec}");
    }
    // Bad names, empty prefixes and double bindings name the field.
    for (spec, field) in [
        ("[{name: Checkout, role: read}]", "bindings[0].name"),
        (
            "[{name: a, namespace: 'x.y', role: read}]",
            "bindings[0].namespace",
        ),
        (
            "[{name: a, role: read, prefixes: ['']}]",
            "bindings[0].prefixes",
        ),
        (
            "[{name: a, role: read}, {name: a, namespace: shop, role: admin}]",
            "bindings[1]",
        ),
    ] {
        let k = kvc(&format!(
            "{{auth: {{serviceAccounts: {{bindings: {spec}}}}}}}"
        ));
        let err = config_yaml(&k);
        assert!(
            matches!(&err, Err(BuildError::Auth(m)) if m.contains(field)),
            "{spec}: {err:?}"
        );
    }
}

#[test]
fn partitions_reach_the_members_config_and_scaling_restarts_nobody() {
    let yaml = |spec: &str| -> serde_yaml::Value {
        serde_yaml::from_str(&config_yaml(&kvc(spec)).expect("config")).expect("yaml")
    };
    // One partition (the default): the config is what it was before partitions.
    let one = yaml("replicas: 3");
    assert!(one.get("partitions").is_none() && one.get("initial_nodes").is_none());
    let five = yaml("{replicas: 5, partitions: 16}");
    assert_eq!(five["partitions"], 16);
    assert_eq!(five["replication_factor"], 3);
    assert_eq!(five["initial_nodes"], 5);
    // The first placement's wait is left out of the pods' config hash: scaling
    // 5 → 7 changes it and must not roll every pod.
    let seven = kvc("{replicas: 7, partitions: 16}");
    assert_eq!(
        config_for_hash(&kvc("{replicas: 5, partitions: 16}")).expect("hash"),
        config_for_hash(&seven).expect("hash")
    );
    assert_eq!(
        config_yaml(&kvc("{replicas: 2, partitions: 4, replicationFactor: 3}")).err(),
        Some(BuildError::ReplicationFactor {
            factor: 3,
            replicas: 2
        })
    );
    // With one partition the factor is not used, and not checked.
    assert!(config_yaml(&kvc("{replicas: 1}")).is_ok());
    // Point-in-time backup of a partitioned cluster is refused, by field;
    // scheduled full backups are taken.
    let s3 = "destination: {s3: {bucket: b, credentialsSecret: s}}";
    let e = config_yaml(&kvc(&format!(
        "{{replicas: 3, partitions: 4, backup: {{{s3}}}}}"
    )))
    .expect_err("continuous is on by default");
    assert!(e.to_string().starts_with("spec.backup.continuous"), "{e}");
    assert!(
        config_yaml(&kvc(&format!(
            "{{replicas: 3, partitions: 4, backup: {{{s3}, continuous: false}}}}"
        )))
        .is_ok()
    );
}
