//! Tests of the backup builders and validation.

use super::build::agent_objects;
use super::config::agent_config;
use crate::crd::KVCluster;

fn kvc(backup: &str) -> KVCluster {
    let mut k: KVCluster = serde_yaml::from_str(&format!(
        "apiVersion: kvcluster.io/v1alpha1\nkind: KVCluster\nmetadata: {{name: orders, namespace: shop, uid: 0123456789abcdef}}\nspec:\n  backup: {backup}\n"
    ))
    .expect("kvc");
    k.metadata.uid = Some("0123456789abcdef".into());
    k
}

#[test]
fn volume_destination_mounts_the_claim_and_s3_takes_credentials_from_the_secret() {
    let k = kvc(
        "{destination: {volume: {claimName: orders-backups, path: prod}}, schedule: '0 * * * *'}",
    );
    let cfg = agent_config(&k).expect("config").expect("some");
    assert_eq!(cfg.destination, "/backup/prod");
    assert_eq!(
        cfg.endpoints,
        vec!["https://orders.shop.svc:8080".to_string()]
    );
    assert_eq!(
        (cfg.continuous, cfg.flush_interval_ms, cfg.retention_keep),
        (true, 2000, 7)
    );
    let objs = agent_objects(&k).expect("build").expect("some");
    let pod = objs
        .deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("pod");
    let vols = serde_json::to_string(&pod.volumes).expect("json");
    assert!(
        vols.contains("orders-backups") && vols.contains("orders-auth-operator"),
        "{vols}"
    );
    assert_eq!(pod.service_account_name.as_deref(), Some("orders-backup"));
    let strategy = objs
        .deployment
        .spec
        .as_ref()
        .and_then(|s| s.strategy.clone())
        .and_then(|s| s.type_);
    assert_eq!(strategy.as_deref(), Some("Recreate"));

    let k = kvc(
        "{destination: {s3: {bucket: kvb, endpoint: 'http://minio:9000', credentialsSecret: s3-creds}}}",
    );
    let cfg = agent_config(&k).expect("config").expect("some");
    assert_eq!(cfg.destination, "s3://kvb/shop/orders");
    assert_eq!(cfg.s3_endpoint.as_deref(), Some("http://minio:9000"));
    let objs = agent_objects(&k).expect("build").expect("some");
    let c = &objs
        .deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("pod")
        .containers[0];
    let env = serde_json::to_string(&c.env_from).expect("json");
    assert!(env.contains("s3-creds"), "{env}");
    // The Role is only what the agent does.
    let rules = serde_json::to_string(&objs.role.rules).expect("json");
    assert!(
        !rules.contains("secrets") && !rules.contains("\"*\""),
        "{rules}"
    );
}

#[test]
fn invalid_backup_specs_name_the_field() {
    for (spec, field) in [
        ("{destination: {}}", "spec.backup.destination"),
        (
            "{destination: {volume: {claimName: a}, s3: {bucket: b, credentialsSecret: c}}}",
            "spec.backup.destination",
        ),
        (
            "{destination: {volume: {claimName: a, path: '../x'}}}",
            "spec.backup.destination.volume.path",
        ),
        (
            "{destination: {s3: {bucket: 'a/b', credentialsSecret: c}}}",
            "spec.backup.destination.s3.bucket",
        ),
        (
            "{destination: {s3: {bucket: b, credentialsSecret: c, endpoint: 'minio:9000'}}}",
            "spec.backup.destination.s3.endpoint",
        ),
        (
            "{destination: {volume: {claimName: a}}, schedule: 'every hour'}",
            "spec.backup.schedule",
        ),
        (
            "{destination: {volume: {claimName: a}}, retention: {maxAge: '3 weeks'}}",
            "spec.backup.retention.maxAge",
        ),
    ] {
        let e = agent_config(&kvc(spec)).expect_err(spec).to_string();
        assert!(e.starts_with(field), "{spec}: {e}");
    }
    assert!(agent_config(&kvc("null")).expect("none").is_none());
}

#[test]
fn the_network_policy_admits_the_agent_only_with_backups() {
    let with = crate::build::network_policy(&kvc("{destination: {volume: {claimName: a}}}"), None)
        .expect("np")
        .expect("some");
    let without = crate::build::network_policy(&kvc("null"), None)
        .expect("np")
        .expect("some");
    let s = |np: &k8s_openapi::api::networking::v1::NetworkPolicy| {
        serde_json::to_string(np).expect("json")
    };
    assert!(s(&with).contains("kvcluster-backup"));
    assert!(!s(&without).contains("kvcluster-backup"));
}
