//! Tests of the certificate planner: what is issued, kept, renewed, and refused.

use super::*;
use crate::crd::KVClusterSpec;

fn kvc(spec_yaml: &str) -> KVCluster {
    let spec: KVClusterSpec = serde_yaml::from_str(spec_yaml).expect("spec");
    let mut k = KVCluster::new("orders", spec);
    k.metadata.namespace = Some("shop".into());
    k.metadata.uid = Some("0123456789abcdef".into());
    k
}

fn data(s: &Secret) -> Data {
    data_of(s)
}

fn info(pem: &str) -> kvserver::tls::CertInfo {
    kvserver::tls::inspect(&rustls_pki_types_der(pem).expect("der")).expect("cert")
}

const DAY: Duration = Duration::from_secs(24 * 3600);

#[test]
fn a_new_cluster_gets_a_ca_member_and_client_certificates() {
    let k = kvc("{}");
    let p = plan(&k, &Observed::default(), &[0, 1, 2], SystemTime::now()).expect("plan");
    let peer = data(&p.peer_secret);
    for ordinal in 0..3u64 {
        let i = info(&peer[&format!("orders-{ordinal}.crt")]);
        assert_eq!(i.node, Some(("orders-01234567".to_string(), ordinal)));
        assert_eq!(
            i.dns_names,
            [format!(
                "orders-{ordinal}.orders-peers.shop.svc.cluster.local"
            )]
        );
        assert!(peer.contains_key(&format!("orders-{ordinal}.key")));
    }
    let ca = data(&p.ca_secret);
    assert_eq!(peer["ca.crt"].trim(), ca["ca.crt"].trim());
    let client = data(p.client_secret.as_ref().expect("client secret"));
    let ci = info(&client["tls.crt"]);
    assert!(ci.dns_names.contains(&"orders.shop.svc".to_string()));
    assert!(
        ci.dns_names
            .contains(&"*.orders-peers.shop.svc.cluster.local".to_string())
    );
    assert_eq!(
        ci.node, None,
        "the client port's certificate is no member's"
    );
    let cm = p.ca_configmap.expect("CA ConfigMap");
    assert_eq!(cm.metadata.name.as_deref(), Some("orders-ca"));
    assert_eq!(cm.data.expect("data")["ca.crt"], ca["ca.crt"]);
    assert!(p.operator.is_some());
    assert!(p.issued.len() >= 5, "{:?}", p.issued);
}

#[test]
fn good_certificates_are_kept_and_expiring_ones_renewed() {
    let k = kvc("{}");
    let first = plan(&k, &Observed::default(), &[0, 1], SystemTime::now()).expect("plan");
    let seen = Observed {
        ca: Some(data(&first.ca_secret)),
        peer: Some(data(&first.peer_secret)),
        client: first.client_secret.as_ref().map(data),
        peer_ca: None,
    };
    let again = plan(&k, &seen, &[0, 1], SystemTime::now()).expect("plan");
    assert!(again.issued.is_empty(), "{:?}", again.issued);
    assert_eq!(data(&again.peer_secret), data(&first.peer_secret));
    assert_eq!(
        again.client_secret.as_ref().map(data),
        first.client_secret.as_ref().map(data)
    );
    assert_eq!(data(&again.ca_secret), data(&first.ca_secret));
    // 61 days later every leaf has less than RENEW_BEFORE left: all renewed, same CA.
    let later = SystemTime::now() + 61 * DAY;
    let renewed = plan(&k, &seen, &[0, 1], later).expect("plan");
    let (old, new) = (data(&first.peer_secret), data(&renewed.peer_secret));
    assert_ne!(old["orders-0.crt"], new["orders-0.crt"]);
    assert_ne!(old["orders-1.key"], new["orders-1.key"]);
    assert_eq!(old["ca.crt"], new["ca.crt"], "renewal keeps the CA");
    assert!(renewed.issued.iter().any(|i| i.contains("client port")));
    // A new ordinal gets its certificate, the others are kept.
    let grown = plan(&k, &seen, &[0, 1, 2], SystemTime::now()).expect("plan");
    assert_eq!(grown.issued, ["issued the member certificate of orders-2"]);
}

#[test]
fn a_user_ca_issues_the_members_and_is_checked() {
    let user = Ca::new("user CA", 365 * DAY).expect("ca");
    let k = kvc(
        "tls: {peer: {mode: secret, caSecretName: my-ca}, client: {mode: secret, secretName: my-tls}}",
    );
    let missing = plan(&k, &Observed::default(), &[0], SystemTime::now());
    assert!(matches!(missing, Err(BuildError::Tls(m)) if m.contains("my-ca")));
    let served = user
        .issue(&Leaf::client("orders.shop.svc", 90 * DAY))
        .expect("leaf");
    let seen = Observed {
        peer_ca: Some(Data::from([
            ("tls.crt".into(), user.cert_pem().to_string()),
            ("tls.key".into(), user.key_pem()),
        ])),
        client: Some(Data::from([
            ("tls.crt".into(), served.cert_pem.clone()),
            ("tls.key".into(), served.key_pem.clone()),
            ("ca.crt".into(), user.cert_pem().to_string()),
        ])),
        ..Default::default()
    };
    let p = plan(&k, &seen, &[0], SystemTime::now()).expect("plan");
    let peer = data(&p.peer_secret);
    assert_eq!(peer["issuer.crt"], user.cert_pem());
    assert!(peer["ca.crt"].contains(user.cert_pem().trim()));
    assert!(
        p.client_secret.is_none(),
        "the user's Secret serves the client port"
    );
    assert_eq!(
        p.ca_configmap.expect("cm").data.expect("data")["ca.crt"],
        user.cert_pem()
    );
    // Without the CA's key the operator cannot issue: refused by name.
    let no_key = Observed {
        peer_ca: Some(Data::from([(
            "tls.crt".into(),
            user.cert_pem().to_string(),
        )])),
        ..seen
    };
    assert!(
        matches!(plan(&k, &no_key, &[0], SystemTime::now()), Err(BuildError::Tls(m)) if m.contains("tls.key"))
    );
}

#[test]
fn peers_without_tls_are_refused_and_a_plain_client_port_has_no_ca_configmap() {
    let k = kvc("tls: {peer: {mode: disabled}}");
    assert!(
        matches!(plan(&k, &Observed::default(), &[0], SystemTime::now()), Err(BuildError::Tls(m)) if m.contains("mutual TLS"))
    );
    let k = kvc("tls: {client: {mode: disabled}}");
    let p = plan(&k, &Observed::default(), &[0], SystemTime::now()).expect("plan");
    assert!(p.ca_configmap.is_none() && p.client_secret.is_none() && p.operator.is_none());
}
