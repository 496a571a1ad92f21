//! An in-memory stand-in for the few API server calls the authority and the node API make:
//! GET/POST/PUT of namespaced objects (the authority Secret, the bundle ConfigMap, the plugin's
//! Pod) and TokenReview, answered from a table of tokens. It counts TokenReviews, so a test can
//! show that a refused call cost none.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use kube::Client;
use serde_json::{Value, json};

#[derive(Debug, Default)]
pub(crate) struct FakeApi {
    /// Objects by their API path (`/api/v1/namespaces/<ns>/<plural>/<name>`).
    objects: Mutex<HashMap<String, Value>>,
    /// token -> TokenReview status.
    tokens: Mutex<HashMap<String, Value>>,
    resource_version: AtomicU64,
    reviews: AtomicUsize,
}

static TOKEN_SERIAL: AtomicU64 = AtomicU64::new(0);

impl FakeApi {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A client whose every request this fake answers.
    pub(crate) fn client(self: &Arc<Self>) -> Client {
        let api = self.clone();
        let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
            let api = api.clone();
            async move { Ok::<_, Infallible>(api.handle(request).await) }
        });
        Client::new(service, "default")
    }

    /// TokenReviews answered so far.
    pub(crate) fn reviews(&self) -> usize {
        self.reviews.load(Ordering::SeqCst)
    }

    /// A pod object that `GET` returns.
    pub(crate) fn add_pod(&self, namespace: &str, name: &str, uid: &str, sa: &str, node: &str) {
        self.objects.lock().unwrap().insert(
            format!("/api/v1/namespaces/{namespace}/pods/{name}"),
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace, "uid": uid},
                "spec": {"serviceAccountName": sa, "nodeName": node, "containers": []},
            }),
        );
    }

    /// A new JWT-shaped token (its `exp` bounds how long the node API caches the verdict) that
    /// TokenReview accepts for `audience` as service account `namespace/sa` bound to pod
    /// `pod`/`uid`.
    pub(crate) fn token(
        &self,
        audience: &str,
        namespace: &str,
        sa: &str,
        pod: &str,
        uid: &str,
    ) -> String {
        let exp = SystemTime::now() + Duration::from_secs(600);
        let claims = json!({
            "exp": exp.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            "serial": TOKEN_SERIAL.fetch_add(1, Ordering::SeqCst),
        });
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let token = format!(
            "{}.{}.sig",
            b64.encode(br#"{"alg":"RS256"}"#),
            b64.encode(claims.to_string())
        );
        self.tokens.lock().unwrap().insert(
            token.clone(),
            json!({
                "authenticated": true,
                "audiences": [audience],
                "user": {
                    "username": format!("system:serviceaccount:{namespace}:{sa}"),
                    "extra": {
                        "authentication.kubernetes.io/pod-name": [pod],
                        "authentication.kubernetes.io/pod-uid": [uid],
                    },
                },
            }),
        );
        token
    }

    async fn handle(
        &self,
        request: http::Request<kube::client::Body>,
    ) -> http::Response<Full<Bytes>> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let body = request.into_body().collect().await.unwrap().to_bytes();
        let body: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).unwrap()
        };
        if path.ends_with("/tokenreviews") {
            self.reviews.fetch_add(1, Ordering::SeqCst);
            let token = body["spec"]["token"].as_str().unwrap_or_default();
            let status = self
                .tokens
                .lock()
                .unwrap()
                .get(token)
                .cloned()
                .unwrap_or_else(|| json!({"authenticated": false}));
            let mut review = body.clone();
            review["status"] = status;
            return respond(201, &review);
        }
        let mut objects = self.objects.lock().unwrap();
        match method {
            http::Method::GET => match objects.get(&path) {
                Some(object) => respond(200, object),
                None => not_found(),
            },
            http::Method::POST | http::Method::PUT => {
                let mut object = body;
                let name = object["metadata"]["name"]
                    .as_str()
                    .unwrap_or("x")
                    .to_owned();
                let key = if method == http::Method::POST {
                    format!("{path}/{name}")
                } else {
                    path
                };
                if method == http::Method::POST && objects.contains_key(&key) {
                    return respond(409, &status(409, "AlreadyExists"));
                }
                let rv = self.resource_version.fetch_add(1, Ordering::SeqCst) + 1;
                object["metadata"]["resourceVersion"] = json!(rv.to_string());
                objects.insert(key, object.clone());
                respond(
                    if method == http::Method::POST {
                        201
                    } else {
                        200
                    },
                    &object,
                )
            }
            _ => not_found(),
        }
    }
}

fn status(code: u16, reason: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": reason, "reason": reason, "code": code,
    })
}

fn not_found() -> http::Response<Full<Bytes>> {
    respond(404, &status(404, "NotFound"))
}

fn respond(code: u16, body: &Value) -> http::Response<Full<Bytes>> {
    http::Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}
