//! Pods our cluster tests and benches run: workloads with a `csi.wimsey.dev` volume, as a user
//! would write them (non-root, restricted container, fsGroup).

use std::collections::BTreeMap;

use anyhow::Result;
use k8s_openapi::api::core::v1::{
    CSIVolumeSource, Capabilities, Container, EnvVar, Pod, PodSecurityContext, PodSpec,
    SecurityContext, Volume, VolumeMount,
};
use kube::api::ObjectMeta;

use crate::cluster::image;
use crate::wimsey::DRIVER;

/// Where a Workload API volume is mounted in our workload pods.
pub const SOCKET_DIR: &str = "/spiffe-workload-api";

/// A read-only `csi.wimsey.dev` volume named `spiffe` in `mode`.
pub fn csi_volume(mode: &str) -> Volume {
    Volume {
        name: "spiffe".into(),
        csi: Some(CSIVolumeSource {
            driver: DRIVER.into(),
            read_only: Some(true),
            volume_attributes: Some(BTreeMap::from([("mode".to_string(), mode.to_string())])),
            ..CSIVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// The restricted Pod Security Standard for a container.
pub fn restricted() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        ..SecurityContext::default()
    }
}

/// A pod of one container and one volume, running as 65532 with that fsGroup.
pub fn pod(name: &str, container: Container, volume: Volume) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(vec![volume]),
            termination_grace_period_seconds: Some(2),
            // the plugin gives the files' group to the pod's fsGroup (keys are 0640, not world-readable)
            security_context: Some(PodSecurityContext {
                run_as_user: Some(65532),
                run_as_group: Some(65532),
                fs_group: Some(65532),
                ..PodSecurityContext::default()
            }),
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

/// A pod running `spiffe-probe watch` (our go-spiffe client) on a Workload API volume.
pub fn probe_pod(name: &str) -> Result<Pod> {
    let container = Container {
        name: "probe".into(),
        image: Some(image("spiffe-probe")?),
        image_pull_policy: Some("Never".into()),
        args: Some(vec!["watch".into()]),
        env: Some(vec![EnvVar {
            name: "SPIFFE_ENDPOINT_SOCKET".into(),
            value: Some(format!("unix://{SOCKET_DIR}/socket")),
            ..EnvVar::default()
        }]),
        security_context: Some(restricted()),
        volume_mounts: Some(vec![VolumeMount {
            name: "spiffe".into(),
            mount_path: SOCKET_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };
    Ok(pod(name, container, csi_volume("workload-api")))
}
