//! Control-plane tier: needs only etcd and kube-apiserver (`CLUSTER_LEVEL=control-plane` or `node`).
//! Runs with `make e2e`; skipped (with the reason printed) by a plain `cargo test`.

use std::collections::BTreeMap;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::authentication::v1::{
    TokenRequest, TokenRequestSpec, TokenReview, TokenReviewSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use kube::Api;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use wimsey_kind_tests::{Cluster, TestNamespace};

const AUDIENCE: &str = "wimsey-e2e";

#[tokio::test]
async fn api_server_crud() -> Result<()> {
    let Some(cluster) = Cluster::connect("api_server_crud").await? else {
        return Ok(());
    };
    let ns = TestNamespace::create(&cluster, "crud").await?;
    let result = crud(&ns).await;
    ns.finish(result).await
}

async fn crud(ns: &TestNamespace) -> Result<()> {
    let cms: Api<ConfigMap> = ns.api();
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("settings".into()),
            labels: Some(BTreeMap::from([("app".into(), "crud".into())])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([("color".into(), "blue".into())])),
        ..ConfigMap::default()
    };
    // create
    let created = cms
        .create(&PostParams::default(), &cm)
        .await
        .context("create")?;
    ensure!(created.metadata.uid.is_some(), "created object has a uid");
    // a duplicate create is a conflict
    let dup = cms.create(&PostParams::default(), &cm).await;
    ensure!(
        matches!(dup, Err(kube::Error::Api(ref e)) if e.code == 409),
        "duplicate create: {dup:?}"
    );
    // read + list by label
    let got = cms.get("settings").await.context("get")?;
    ensure!(
        got.data
            .as_ref()
            .and_then(|d| d.get("color"))
            .map(String::as_str)
            == Some("blue")
    );
    let listed = cms
        .list(&ListParams::default().labels("app=crud"))
        .await
        .context("list")?;
    ensure!(
        listed.items.len() == 1,
        "list by label found {}",
        listed.items.len()
    );
    // update with server-side apply, as the operator will
    let patch = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "settings" },
        "data": { "color": "green", "size": "L" }
    });
    let applied = cms
        .patch(
            "settings",
            &PatchParams::apply("wimsey-e2e").force(),
            &Patch::Apply(&patch),
        )
        .await
        .context("server-side apply")?;
    let data = applied.data.unwrap_or_default();
    ensure!(
        data.get("color").map(String::as_str) == Some("green") && data.contains_key("size"),
        "{data:?}"
    );
    // delete
    cms.delete("settings", &DeleteParams::default())
        .await
        .context("delete")?;
    ensure!(
        cms.get_opt("settings").await?.is_none(),
        "configmap still there after delete"
    );
    Ok(())
}

#[tokio::test]
async fn token_request_and_token_review() -> Result<()> {
    let Some(cluster) = Cluster::connect("token_request_and_token_review").await? else {
        return Ok(());
    };
    let ns = TestNamespace::create(&cluster, "tokens").await?;
    let result = tokens(&cluster, &ns).await;
    ns.finish(result).await
}

async fn tokens(cluster: &Cluster, ns: &TestNamespace) -> Result<()> {
    let sas: Api<ServiceAccount> = ns.api();
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("workload".into()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    sas.create(&PostParams::default(), &sa)
        .await
        .context("create service account")?;
    let tr = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![AUDIENCE.into()],
            expiration_seconds: Some(600),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let issued = sas
        .create_token_request("workload", &PostParams::default(), &tr)
        .await
        .context("TokenRequest")?;
    let token = issued.status.context("TokenRequest has no status")?.token;
    ensure!(token.split('.').count() == 3, "token is a JWT");

    let review = token_review(cluster, &token, AUDIENCE).await?;
    let status = review.status.context("TokenReview has no status")?;
    ensure!(
        status.authenticated == Some(true),
        "token not authenticated: {:?}",
        status.error
    );
    let user = status.user.context("no user")?;
    let want = format!("system:serviceaccount:{}:workload", ns.name());
    ensure!(
        user.username.as_deref() == Some(want.as_str()),
        "username {:?}, want {want}",
        user.username
    );
    ensure!(status.audiences.unwrap_or_default() == vec![AUDIENCE.to_string()]);

    // the same token for another audience is rejected
    let wrong = token_review(cluster, &token, "someone-else").await?;
    ensure!(
        wrong.status.and_then(|s| s.authenticated) != Some(true),
        "token accepted for a wrong audience"
    );
    Ok(())
}

async fn token_review(cluster: &Cluster, token: &str, audience: &str) -> Result<TokenReview> {
    let reviews: Api<TokenReview> = Api::all(cluster.client());
    let tr = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.into()),
            audiences: Some(vec![audience.into()]),
        },
        ..TokenReview::default()
    };
    reviews
        .create(&PostParams::default(), &tr)
        .await
        .context("TokenReview")
}
