//! Tests of the configuration: layering, strict parsing, validation messages.

use super::*;

fn loader() -> ConfigLoader {
    ConfigLoader::new().env(Vec::<(String, String)>::new())
}

#[test]
fn defaults_are_valid() {
    let c = loader().load().expect("defaults load");
    assert_eq!(c.api_addr, "127.0.0.1:8080");
    assert_eq!(c.max_value_bytes, 1 << 20);
}

#[test]
fn layers_override_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("c.yaml");
    std::fs::write(
        &f,
        "cluster_id: from-file\nraft:\n  heartbeat_interval_ms: 50\nmax_value_bytes: 10\n",
    )
    .expect("write");
    let c = ConfigLoader::new()
        .file(Some(f))
        .env(vec![
            ("KV_CLUSTER_ID".to_string(), "from-env".to_string()),
            ("KV_MAX_VALUE_BYTES".into(), "20".into()),
        ])
        .set("max_value_bytes", "30", "flag")
        .load()
        .expect("load");
    assert_eq!(c.cluster_id, "from-env");
    assert_eq!(c.raft.heartbeat_interval_ms, 50);
    assert_eq!(c.max_value_bytes, 30);
}

#[test]
fn numeric_looking_strings_stay_strings() {
    let c = loader()
        .env(vec![("KV_CLUSTER_ID".into(), "123".into())])
        .load()
        .expect("load");
    assert_eq!(c.cluster_id, "123");
}

#[test]
fn errors_name_the_field_and_source() {
    let e = loader()
        .env(vec![(
            "KV_RAFT_HEARTBEAT_INTERVAL_MS".into(),
            "fast".into(),
        )])
        .load()
        .expect_err("must be rejected");
    let s = e.to_string();
    assert!(
        s.contains("raft.heartbeat_interval_ms") && s.contains("KV_RAFT_HEARTBEAT_INTERVAL_MS"),
        "{s}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("c.yaml");
    std::fs::write(&f, "raft:\n  hearbeat_interval_ms: 5\n").expect("write");
    let s = loader()
        .file(Some(f))
        .load()
        .expect_err("must be rejected")
        .to_string();
    assert!(
        s.contains("raft.hearbeat_interval_ms") && s.contains("unknown field"),
        "{s}"
    );

    let s = loader()
        .set("api_addr", "nope", "flag --api-addr")
        .load()
        .expect_err("must be rejected")
        .to_string();
    assert!(s.contains("api_addr") && s.contains("--api-addr"), "{s}");

    let s = loader()
        .set("api_addr", "0.0.0.0:1", "flag")
        .load()
        .expect_err("must be rejected")
        .to_string();
    assert!(s.contains("advertise_api_addr"), "{s}");

    let s = loader()
        .set("raft.election_timeout_min_ms", "10", "flag")
        .load()
        .expect_err("must be rejected")
        .to_string();
    assert!(s.contains("raft.election_timeout_min_ms"), "{s}");

    let s = loader()
        .set("max_value_bytes", "-1", "flag")
        .load()
        .expect_err("must be rejected")
        .to_string();
    assert!(s.contains("max_value_bytes"), "{s}");

    let s = loader()
        .set("log.format", "xml", "flag")
        .load()
        .expect_err("must be rejected")
        .to_string();
    assert!(s.contains("log.format"), "{s}");
}

/// Config files of the wrong shape: each fails, and the message names the field
/// (or, for YAML that does not parse, the file and position).
#[test]
fn config_files_of_wrong_shape_name_the_field() {
    let cases: &[(&str, &[&str])] = &[
        ("api_addr: [1, 2]\n", &["api_addr"]),
        (
            "raft:\n  heartbeat_interval_ms: fast\n",
            &["raft.heartbeat_interval_ms"],
        ),
        ("raft: 5\n", &["raft"]),
        (
            "raft:\n  election_timeout_min_ms: -3\n",
            &["raft.election_timeout_min_ms"],
        ),
        ("storage:\n  backend: 5\n", &["storage.backend"]),
        ("storage:\n  backend: mysql\n", &["storage.backend"]),
        ("storage:\n  backend: postgres\n", &["storage.postgres.url"]),
        (
            "storage:\n  postgres:\n    max_connections: many\n",
            &["storage.postgres.max_connections"],
        ),
        ("nodes: 3\n", &["nodes", "unknown field"]),
        (
            "watch:\n  history: 10\n",
            &["watch.history", "unknown field"],
        ),
        ("max_value_bytes: 1.5\n", &["max_value_bytes"]),
        ("bootstrap: maybe\n", &["bootstrap"]),
        ("log:\n  format: xml\n", &["log.format"]),
        ("node_id: -1\n", &["node_id"]),
        ("- a\n- b\n", &["c.yaml"]),
        ("api_addr: \"127.0.0.1:1\"\n  x: [\n", &["c.yaml"]),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("c.yaml");
    for (yaml, needles) in cases {
        std::fs::write(&f, yaml).expect("write");
        let msg = match loader().file(Some(f.clone())).load() {
            Ok(_) => panic!("accepted {yaml:?}"),
            Err(e) => e.to_string(),
        };
        for n in *needles {
            assert!(msg.contains(n), "{yaml:?}: {msg:?} does not name {n:?}");
        }
    }
}

#[test]
fn postgres_settings_are_validated_and_never_shown() {
    let s = loader()
        .set("storage.backend", "postgres", "flag")
        .load()
        .expect_err("url required")
        .to_string();
    assert!(s.contains("storage.postgres.url"), "{s}");
    let s = loader()
        .set("storage.backend", "postgres", "flag")
        .set("storage.postgres.url", "mysql://x", "flag")
        .load()
        .expect_err("scheme checked")
        .to_string();
    assert!(s.contains("storage.postgres.url"), "{s}");
    let s = loader()
        .env(vec![
            ("KV_STORAGE_BACKEND".into(), "postgres".into()),
            (
                "KV_STORAGE_POSTGRES_URL".into(),
                "postgres://u:pw@h/d".into(),
            ),
        ])
        .set("storage.postgres.schema", "Bad-Name", "flag")
        .load()
        .expect_err("schema checked")
        .to_string();
    assert!(s.contains("storage.postgres.schema"), "{s}");
    let c = loader()
        .env(vec![
            ("KV_STORAGE_BACKEND".into(), "postgres".into()),
            (
                "KV_STORAGE_POSTGRES_URL".into(),
                "postgres://u:hunter2@h/d?sslmode=require".into(),
            ),
        ])
        .load()
        .expect("valid postgres config");
    assert_eq!(
        c.storage.postgres.schema_for("My.Cluster", 2),
        "kv_my_cluster_2"
    );
    assert!(
        !format!("{c:?}").contains("hunter2"),
        "password must not appear in Debug output"
    );
    let s = loader()
        .set("storage.backend", "mongo", "flag")
        .load()
        .expect_err("backend checked")
        .to_string();
    assert!(s.contains("storage.backend"), "{s}");
}

#[test]
fn node_id_from_ordinal() {
    assert_eq!(ordinal_of("orders-2"), Some(2));
    assert_eq!(ordinal_of("my-kv-cluster-10"), Some(10));
    assert_eq!(ordinal_of("laptop"), None);
    assert_eq!(ordinal_of("web-"), None);
    let c = Config::default();
    assert_eq!(c.resolve_node_id("orders-7").expect("ordinal"), 7);
    assert!(
        c.resolve_node_id("laptop")
            .expect_err("must be rejected")
            .to_string()
            .contains("node_id")
    );
    let c = Config {
        node_id: Some(3),
        ..Config::default()
    };
    assert_eq!(c.resolve_node_id("laptop").expect("configured"), 3);
}

#[test]
fn tls_settings_come_whole_or_are_refused_by_name() {
    let err = |sets: &[(&str, &str)]| {
        let mut l = loader();
        for (k, v) in sets {
            l = l.set(k, *v, "flag");
        }
        l.load().err().map(|e| e.to_string()).unwrap_or_default()
    };
    let e = err(&[("tls.peer.cert_file", "/c.pem")]);
    assert!(e.contains("tls.peer.key_file"), "{e}");
    let e = err(&[
        ("tls.peer.cert_file", "/c.pem"),
        ("tls.peer.key_file", "/k.pem"),
    ]);
    assert!(e.contains("tls.peer.ca_file"), "{e}");
    let e = err(&[("tls.client.cert_file", "/c.pem")]);
    assert!(e.contains("tls.client.key_file"), "{e}");
    let e = err(&[("tls.client_auth", "require")]);
    assert!(e.contains("tls.client_auth"), "{e}");
    let e = err(&[("tls.client_auth", "sometimes")]);
    assert!(e.contains("tls.client_auth"), "{e}");
    let e = err(&[("tls.reload_interval_ms", "5")]);
    assert!(e.contains("tls.reload_interval_ms"), "{e}");
    let c = loader()
        .env(vec![
            ("KV_TLS_PEER_CERT_FILE".to_string(), "/p.pem".to_string()),
            ("KV_TLS_PEER_KEY_FILE".into(), "/pk.pem".into()),
            ("KV_TLS_PEER_CA_FILE".into(), "/ca.pem".into()),
            ("KV_TLS_CLIENT_CERT_FILE".into(), "/c.pem".into()),
            ("KV_TLS_CLIENT_KEY_FILE".into(), "/ck.pem".into()),
            ("KV_TLS_CLIENT_CA_FILE".into(), "/ca.pem".into()),
            ("KV_TLS_CLIENT_AUTH".into(), "optional".into()),
        ])
        .load()
        .expect("complete TLS settings load");
    assert_eq!(c.tls.client_auth, crate::tls::ClientAuth::Optional);
    assert!(c.tls.peer.cert_files().is_some());
}

#[test]
fn postgres_tls_becomes_url_parameters() {
    let mut pg = PostgresConfig {
        url: Some("postgres://kv:pw@db:5432/kv?sslmode=prefer&application_name=kv".into()),
        ..PostgresConfig::default()
    };
    // Without TLS settings the URL is used as given.
    assert_eq!(pg.connect_url().as_deref(), pg.url.as_deref());
    // A CA means verify-full, and the URL's own sslmode gives way.
    pg.ca_file = Some("/etc/kv/pg ca.pem".into());
    assert_eq!(
        pg.connect_url().as_deref(),
        Some(
            "postgres://kv:pw@db:5432/kv?application_name=kv&sslmode=verify-full&sslrootcert=/etc/kv/pg%20ca.pem"
        )
    );
    pg.sslmode = Some(PgSslMode::VerifyCa);
    pg.cert_file = Some("/c.pem".into());
    pg.key_file = Some("/k.pem".into());
    let url = pg.connect_url().unwrap_or_default();
    assert!(
        url.contains(
            "sslmode=verify-ca&sslrootcert=/etc/kv/pg%20ca.pem&sslcert=/c.pem&sslkey=/k.pem"
        ),
        "{url}"
    );
    // Verifying needs the CA; a certificate needs its key.
    let c = |pg: PostgresConfig| Config {
        storage: StorageConfig {
            backend: StorageBackend::Postgres,
            postgres: pg,
            ..StorageConfig::default()
        },
        ..Config::default()
    };
    let no_ca = PostgresConfig {
        url: Some("postgres://db/kv".into()),
        sslmode: Some(PgSslMode::VerifyFull),
        ..PostgresConfig::default()
    };
    let e = c(no_ca)
        .validate()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("storage.postgres.ca_file"), "{e}");
    let no_key = PostgresConfig {
        url: Some("postgres://db/kv".into()),
        cert_file: Some("/c.pem".into()),
        ..PostgresConfig::default()
    };
    let e = c(no_key)
        .validate()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("storage.postgres.key_file"), "{e}");
}

#[test]
fn forced_recovery_needs_a_new_cluster_id() {
    let c = loader()
        .env(vec![
            ("KV_CLUSTER_ID".into(), "orders-1a2b3c4d-r1".into()),
            (
                "KV_RECOVERY_FORCE_NEW_CLUSTER_FROM".into(),
                "orders-1a2b3c4d".into(),
            ),
            ("KV_RECOVERY_NODE_ID".into(), "0".into()),
        ])
        .load()
        .expect("load");
    assert_eq!(c.recovery.recovering(0), Some("orders-1a2b3c4d"));
    assert_eq!(c.recovery.recovering(1), None);
    let e = loader()
        .set("recovery.force_new_cluster_from", "kvcluster", "flag")
        .load()
        .expect_err("the same id")
        .to_string();
    assert!(e.contains("recovery.force_new_cluster_from"), "{e}");
    let e = loader()
        .set("recovery.node_id", "2", "flag")
        .load()
        .expect_err("node without cluster")
        .to_string();
    assert!(e.contains("recovery.node_id"), "{e}");
    // Not for a partitioned cluster: its partitions' groups would be lost.
    let e = loader()
        .set("recovery.force_new_cluster_from", "orders-old", "flag")
        .set("partitions", "4", "flag")
        .load()
        .expect_err("partitioned")
        .to_string();
    assert!(
        e.contains("recovery.force_new_cluster_from") && e.contains("partitioned"),
        "{e}"
    );
}
