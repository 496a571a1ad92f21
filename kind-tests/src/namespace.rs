//! A temporary namespace per test: created with a unique name, dumped (pods, events, logs) when the test
//! fails, and deleted when the test ends, whether it passed, failed or panicked.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::runtime::wait::conditions::is_created;
use kube::{Api, Client, Config};
use serde::de::DeserializeOwned;

use crate::cluster::{Cluster, Level};
use crate::diagnostics::dump_namespace;
use crate::wait::wait_for;

/// Label on every namespace the tests create (so leftovers are easy to find and delete).
pub const E2E_LABEL: &str = "wimsey.dev/e2e";

/// A namespace that lives as long as one test. Call [`TestNamespace::finish`] with the test's result;
/// if the test panics instead, `Drop` still deletes the namespace.
pub struct TestNamespace {
    name: String,
    client: Client,
    config: Config,
    finished: bool,
}

impl std::fmt::Debug for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNamespace")
            .field("name", &self.name)
            .field("finished", &self.finished)
            .finish()
    }
}

fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut n = nanos ^ (u128::from(std::process::id()) << 64);
    let mut s = String::new();
    for _ in 0..6 {
        let d = (n % 36) as u8;
        s.push(if d < 10 {
            (b'0' + d) as char
        } else {
            (b'a' + d - 10) as char
        });
        n /= 36;
    }
    s
}

fn sanitize(prefix: &str) -> String {
    let s: String = prefix
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    s.trim_matches('-').to_string()
}

impl TestNamespace {
    /// Creates `e2e-<prefix>-<random>`. On a node-level cluster it also waits for the namespace's
    /// `default` ServiceAccount, without which the ServiceAccount admission plugin rejects pods.
    pub async fn create(cluster: &Cluster, prefix: &str) -> Result<Self> {
        let client = cluster.client();
        let name = format!("e2e-{}-{}", sanitize(prefix), unique_suffix());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(BTreeMap::from([(
                    E2E_LABEL.to_string(),
                    "true".to_string(),
                )])),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        let this = Self {
            name,
            client: client.clone(),
            config: cluster.config().clone(),
            finished: false,
        };
        if cluster.level() == Level::Node {
            let sas: Api<ServiceAccount> = Api::namespaced(client, &this.name);
            wait_for(
                &sas,
                "default",
                "the namespace's default ServiceAccount",
                Duration::from_secs(60),
                is_created(),
            )
            .await?;
        }
        println!("test namespace: {}", this.name);
        Ok(this)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// An API handle for namespaced objects of kind `K` in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope> + DeserializeOwned,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Ends the test: on `Err`, prints pod status, events and logs of the namespace to stderr; then
    /// deletes the namespace (without waiting for it to go) and returns `result` unchanged.
    pub async fn finish<T>(mut self, result: Result<T>) -> Result<T> {
        if let Err(err) = &result {
            eprintln!("test in namespace {} failed: {err:#}", self.name);
            eprintln!("{}", dump_namespace(&self.client, &self.name).await);
        }
        self.finished = true;
        if let Err(err) = delete_namespace(&self.client, &self.name).await {
            eprintln!("warning: deleting namespace {}: {err:#}", self.name);
        }
        result
    }
}

async fn delete_namespace(client: &Client, name: &str) -> Result<()> {
    match Api::<Namespace>::all(client.clone())
        .delete(name, &DeleteParams::background())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // A panic skipped `finish`. The test's runtime may be the current-thread one we are blocking, so
        // delete from a fresh thread with its own runtime and client.
        let (name, config) = (self.name.clone(), self.config.clone());
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let client = Client::try_from(config)?;
                eprintln!("{}", dump_namespace(&client, &name).await);
                delete_namespace(&client, &name).await
            })
        });
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(err)) => eprintln!("warning: deleting namespace {}: {err:#}", self.name),
            Err(_) => eprintln!(
                "warning: deleting namespace {}: cleanup thread panicked",
                self.name
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_dns_labels() {
        let s = unique_suffix();
        assert_eq!(s.len(), 6);
        assert!(
            s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
        assert_eq!(sanitize("Token_Review!"), "token-review");
        let long = sanitize(&"x".repeat(100));
        assert!(format!("e2e-{long}-{s}").len() <= 63);
    }
}
