//! Node tier: needs a kubelet and containerd (`CLUSTER_LEVEL=node`, what `make test` brings up).
//! On a control-plane-only cluster each test prints why it is skipped.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{
    Container, HTTPGetAction, HostPathVolumeSource, Pod, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ProjectedVolumeSource, SecurityContext, Service,
    ServiceAccountTokenProjection, ServicePort, ServiceSpec, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Api;
use kube::api::{ListParams, ObjectMeta, PostParams};
use wimsey_kind_tests::cluster::image;
use wimsey_kind_tests::exec::{exec, exec_ok};
use wimsey_kind_tests::wait::{deployment_ready, pod_ready, poll_until, wait_for};
use wimsey_kind_tests::{Cluster, TestNamespace};

const READY_TIMEOUT: Duration = Duration::from_secs(120);
const APP: &str = "/wimsey-test-app";

/// A container of our test-app image: non-root, read-only, with a readiness probe on /readyz.
fn test_app(mounts: Vec<VolumeMount>) -> Result<Container> {
    Ok(Container {
        name: "app".into(),
        image: Some(image("test-app")?),
        image_pull_policy: Some("Never".into()),
        args: Some(vec!["serve".into(), "--port".into(), "8080".into()]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/readyz".into()),
                port: IntOrString::Int(8080),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(1),
            ..Probe::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            ..SecurityContext::default()
        }),
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
        ..Container::default()
    })
}

fn pod(name: &str, container: Container, volumes: Vec<Volume>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: (!volumes.is_empty()).then_some(volumes),
            termination_grace_period_seconds: Some(5),
            security_context: Some(PodSecurityContext {
                run_as_user: Some(65532),
                ..PodSecurityContext::default()
            }),
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

#[tokio::test]
async fn deployment_of_test_image_becomes_ready() -> Result<()> {
    let Some(cluster) = Cluster::connect_node("deployment_of_test_image_becomes_ready").await?
    else {
        return Ok(());
    };
    let ns = TestNamespace::create(&cluster, "deploy").await?;
    let result = deployment(&ns).await;
    ns.finish(result).await
}

async fn deployment(ns: &TestNamespace) -> Result<()> {
    let labels = BTreeMap::from([("app".to_string(), "test-app".to_string())]);
    let template = pod("unused", test_app(vec![])?, vec![]);
    let d = Deployment {
        metadata: ObjectMeta {
            name: Some("test-app".into()),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(2),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: template.spec,
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    };
    let deployments: Api<Deployment> = ns.api();
    deployments
        .create(&PostParams::default(), &d)
        .await
        .context("create deployment")?;
    wait_for(
        &deployments,
        "test-app",
        "deployment Ready",
        READY_TIMEOUT,
        deployment_ready(),
    )
    .await?;

    // Its pods really run our image: exec the binary inside one of them.
    let pods: Api<Pod> = ns.api();
    let list = pods
        .list(&ListParams::default().labels("app=test-app"))
        .await?;
    ensure!(
        list.items.len() == 2,
        "want 2 pods, have {}",
        list.items.len()
    );
    let name = list.items[0].metadata.name.clone().context("pod name")?;
    let hostname = exec_ok(&pods, &name, None, &[APP, "cat", "/etc/hostname"]).await?;
    ensure!(
        hostname.trim() == name,
        "hostname {hostname:?} in pod {name}"
    );
    Ok(())
}

#[tokio::test]
async fn projected_service_account_token_passes_token_review() -> Result<()> {
    let test = "projected_service_account_token_passes_token_review";
    let Some(cluster) = Cluster::connect_node(test).await? else {
        return Ok(());
    };
    let ns = TestNamespace::create(&cluster, "psat").await?;
    let result = projected_token(&cluster, &ns).await;
    ns.finish(result).await
}

async fn projected_token(cluster: &Cluster, ns: &TestNamespace) -> Result<()> {
    const AUDIENCE: &str = "wimsey-e2e";
    let volume = Volume {
        name: "token".into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(AUDIENCE.into()),
                    expiration_seconds: Some(600),
                    path: "token".into(),
                }),
                ..VolumeProjection::default()
            }]),
            ..ProjectedVolumeSource::default()
        }),
        ..Volume::default()
    };
    let mount = VolumeMount {
        name: "token".into(),
        mount_path: "/var/run/secrets/tokens".into(),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    let pods: Api<Pod> = ns.api();
    let created = pods
        .create(
            &PostParams::default(),
            &pod("psat", test_app(vec![mount])?, vec![volume]),
        )
        .await?;
    let uid = created.metadata.uid.context("pod uid")?;
    wait_for(&pods, "psat", "pod Ready", READY_TIMEOUT, pod_ready()).await?;

    let token = exec_ok(
        &pods,
        "psat",
        None,
        &[APP, "cat", "/var/run/secrets/tokens/token"],
    )
    .await?;
    let reviews: Api<TokenReview> = Api::all(cluster.client());
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.trim().into()),
            audiences: Some(vec![AUDIENCE.into()]),
        },
        ..TokenReview::default()
    };
    let status = reviews
        .create(&PostParams::default(), &review)
        .await?
        .status
        .context("no status")?;
    ensure!(
        status.authenticated == Some(true),
        "projected token not authenticated: {:?}",
        status.error
    );
    let user = status.user.context("no user")?;
    let want = format!("system:serviceaccount:{}:default", ns.name());
    ensure!(
        user.username.as_deref() == Some(want.as_str()),
        "username {:?}, want {want}",
        user.username
    );
    // The token is bound to this pod (what k8s_psat attestation and the CSI plugin rely on).
    let extra = user.extra.unwrap_or_default();
    let first = |k: &str| extra.get(k).and_then(|v| v.first()).cloned();
    ensure!(
        first("authentication.kubernetes.io/pod-name").as_deref() == Some("psat"),
        "extra: {extra:?}"
    );
    ensure!(
        first("authentication.kubernetes.io/pod-uid") == Some(uid),
        "extra: {extra:?}"
    );

    // The API-access token every pod gets (kube-api-access-*) is valid for the API server's audience.
    let api_token = exec_ok(
        &pods,
        "psat",
        None,
        &[
            APP,
            "cat",
            "/var/run/secrets/kubernetes.io/serviceaccount/token",
        ],
    )
    .await?;
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(api_token.trim().into()),
            audiences: None,
        },
        ..TokenReview::default()
    };
    let status = reviews
        .create(&PostParams::default(), &review)
        .await?
        .status
        .context("no status")?;
    ensure!(
        status.authenticated == Some(true),
        "API token not authenticated: {:?}",
        status.error
    );
    Ok(())
}

#[tokio::test]
async fn pod_reads_file_from_host_path() -> Result<()> {
    let Some(cluster) = Cluster::connect_node("pod_reads_file_from_host_path").await? else {
        return Ok(());
    };
    let ns = TestNamespace::create(&cluster, "hostpath").await?;
    let dir = format!("/var/lib/wimsey-e2e/hostpath/{}", ns.name());
    let result = host_path(&cluster, &ns, &dir).await;
    cluster.remove_node_dir(Path::new(&dir));
    ns.finish(result).await
}

async fn host_path(cluster: &Cluster, ns: &TestNamespace, dir: &str) -> Result<()> {
    let message = format!("hello from the node to {}\n", ns.name());
    cluster.write_node_file(&Path::new(dir).join("message.txt"), message.as_bytes())?;
    let volume = Volume {
        name: "host".into(),
        host_path: Some(HostPathVolumeSource {
            path: dir.into(),
            type_: Some("Directory".into()),
        }),
        ..Volume::default()
    };
    let mount = VolumeMount {
        name: "host".into(),
        mount_path: "/host".into(),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    let pods: Api<Pod> = ns.api();
    pods.create(
        &PostParams::default(),
        &pod("reader", test_app(vec![mount])?, vec![volume]),
    )
    .await?;
    wait_for(&pods, "reader", "pod Ready", READY_TIMEOUT, pod_ready()).await?;
    let got = exec_ok(&pods, "reader", None, &[APP, "cat", "/host/message.txt"]).await?;
    ensure!(got == message, "read {got:?}, want {message:?}");
    Ok(())
}

#[tokio::test]
async fn cluster_ip_services_route_to_pods_and_the_api_server() -> Result<()> {
    let test = "cluster_ip_services_route_to_pods_and_the_api_server";
    let Some(cluster) = Cluster::connect_node(test).await? else {
        return Ok(());
    };
    let ns = TestNamespace::create(&cluster, "svc").await?;
    let result = services(&cluster, &ns).await;
    ns.finish(result).await
}

async fn services(cluster: &Cluster, ns: &TestNamespace) -> Result<()> {
    let mut server = pod("server", test_app(vec![])?, vec![]);
    server.metadata.labels = Some(BTreeMap::from([("app".to_string(), "server".to_string())]));
    let pods: Api<Pod> = ns.api();
    pods.create(&PostParams::default(), &server).await?;
    pods.create(
        &PostParams::default(),
        &pod("client", test_app(vec![])?, vec![]),
    )
    .await?;
    let svc = Service {
        metadata: ObjectMeta {
            name: Some("server".into()),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([("app".to_string(), "server".to_string())])),
            ports: Some(vec![ServicePort {
                port: 80,
                target_port: Some(IntOrString::Int(8080)),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let services: Api<Service> = ns.api();
    let created = services.create(&PostParams::default(), &svc).await?;
    let ip = created
        .spec
        .and_then(|s| s.cluster_ip)
        .context("no cluster IP")?;
    wait_for(
        &pods,
        "server",
        "server pod Ready",
        READY_TIMEOUT,
        pod_ready(),
    )
    .await?;
    wait_for(
        &pods,
        "client",
        "client pod Ready",
        READY_TIMEOUT,
        pod_ready(),
    )
    .await?;

    // pod -> Service ClusterIP -> pod. kube-proxy programs the rule shortly after the endpoints appear.
    let url = format!("http://{ip}:80/readyz");
    let body = poll_until("the Service to route", Duration::from_secs(60), || async {
        let out = exec(&pods, "client", None, &[APP, "get", &url]).await?;
        Ok(out.success().then_some(out.stdout))
    })
    .await?;
    ensure!(body == "ok\n", "GET {url}: {body:?}");

    // pod -> the `kubernetes` Service (what in-cluster clients use) -> the API server on the node.
    let kubernetes: Api<Service> = Api::namespaced(cluster.client(), "default");
    let api_ip = kubernetes
        .get("kubernetes")
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .context("no cluster IP")?;
    exec_ok(
        &pods,
        "client",
        None,
        &[APP, "connect", &format!("{api_ip}:443")],
    )
    .await?;
    Ok(())
}
