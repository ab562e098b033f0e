//! The kvctl client pods of the suite: `kvctl` from the kvserver image against
//! a KVCluster's Service, with the cluster's CA and a credential mounted the
//! way an application would mount them.

use k8s_openapi::api::core::v1::ConfigMapVolumeSource;
use k8s_openapi::api::core::v1::Container;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::api::core::v1::Volume;
use k8s_openapi::api::core::v1::VolumeMount;

use crate::KVSERVER_IMAGE;

/// What a kvctl pod authenticates with.
#[derive(Debug, Clone, Copy)]
pub enum Credential<'a> {
    /// A Secret whose key `token` is the bearer token.
    Secret(&'a str),
    /// The pod runs as this ServiceAccount and sends the token the kubelet
    /// projects for `audience` (`spec.auth.serviceAccounts`).
    ServiceAccount { name: &'a str, audience: &'a str },
}

/// The pod that runs `kvctl --endpoints <scheme>://<service>:8080 ARGS` as
/// [`Ctx::start_kvctl_as`] describes.
pub(crate) fn kvctl_pod(
    pod: &str,
    service: &str,
    args: &[&str],
    ca: Option<&str>,
    cred: Option<Credential<'_>>,
) -> Pod {
    let scheme = if ca.is_some() { "https" } else { "http" };
    let mut command = vec![
        "/usr/local/bin/kvctl".to_string(),
        "--endpoints".into(),
        format!("{scheme}://{service}:8080"),
    ];
    if ca.is_some() {
        command.extend([
            "--cacert".to_string(),
            "/etc/kvcluster-ca/ca.crt".to_string(),
        ]);
    }
    if cred.is_some() {
        command.extend([
            "--token-file".to_string(),
            "/etc/kvcluster-auth/token".to_string(),
        ]);
    }
    command.extend(args.iter().map(|s| s.to_string()));
    // The CA bundle (a ConfigMap) and the token (a Secret), each read-only at `dir`.
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    let mut mount = |volume: Volume, dir: &str| {
        mounts.push(VolumeMount {
            name: volume.name.clone(),
            mount_path: dir.into(),
            read_only: Some(true),
            ..Default::default()
        });
        volumes.push(volume);
    };
    if let Some(name) = ca {
        let source = ConfigMapVolumeSource {
            name: name.into(),
            ..Default::default()
        };
        mount(
            Volume {
                name: "ca".into(),
                config_map: Some(source),
                ..Default::default()
            },
            "/etc/kvcluster-ca",
        );
    }
    let mut service_account = None;
    match cred {
        Some(Credential::Secret(name)) => {
            let source = k8s_openapi::api::core::v1::SecretVolumeSource {
                secret_name: Some(name.into()),
                ..Default::default()
            };
            mount(
                Volume {
                    name: "token".into(),
                    secret: Some(source),
                    ..Default::default()
                },
                "/etc/kvcluster-auth",
            );
        }
        Some(Credential::ServiceAccount { name, audience }) => {
            use k8s_openapi::api::core::v1::ProjectedVolumeSource;
            use k8s_openapi::api::core::v1::ServiceAccountTokenProjection;
            use k8s_openapi::api::core::v1::VolumeProjection;
            let token = VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(audience.into()),
                    expiration_seconds: Some(3600),
                    path: "token".into(),
                }),
                ..Default::default()
            };
            mount(
                Volume {
                    name: "token".into(),
                    projected: Some(ProjectedVolumeSource {
                        sources: Some(vec![token]),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                "/etc/kvcluster-auth",
            );
            service_account = Some(name.to_string());
        }
        None => {}
    }
    let (volumes, mounts) = (Some(volumes), Some(mounts));
    Pod {
        metadata: kube::api::ObjectMeta {
            name: Some(pod.into()),
            labels: Some([("app.kubernetes.io/name".to_string(), "kvctl".to_string())].into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            // No API token but the one a ServiceAccount credential asks for.
            automount_service_account_token: Some(false),
            service_account_name: service_account,
            containers: vec![Container {
                name: "kvctl".into(),
                image: Some(KVSERVER_IMAGE.into()),
                image_pull_policy: Some("IfNotPresent".into()),
                command: Some(command),
                volume_mounts: mounts,
                ..Default::default()
            }],
            volumes,
            ..Default::default()
        }),
        ..Default::default()
    }
}
