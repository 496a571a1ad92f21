//! Prometheus metrics of the operator.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FetchLabels {
    trust_domain: String,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TrustDomainLabels {
    trust_domain: String,
}

fn phase_histogram() -> Histogram {
    // 50 µs .. ~1.6 s
    Histogram::new(exponential_buckets(0.00005, 2.0, 16))
}

/// Every metric, registered once per process (or per test instance).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconcile_duration: Family<PhaseLabels, Histogram, fn() -> Histogram>,
    entries: Family<StateLabels, Gauge>,
    render_failures: Family<ReasonLabels, Counter>,
    queue_depth: Gauge,
    is_leader: Gauge,
    authority_replacements: Family<KindLabels, Counter>,
    authority_secret_unreadable: Gauge,
    authority_secret_errors: Family<ReasonLabels, Counter>,
    upstream_ca_unusable: Gauge,
    upstream_ca_errors: Family<ReasonLabels, Counter>,
    federation_fetches: Family<FetchLabels, Counter>,
    federation_bundle_age: Family<TrustDomainLabels, Gauge>,
    /// Unix seconds of each federated trust domain's last good fetch; the age is computed
    /// from it at every scrape, so it grows while the endpoint is down.
    federation_last_success: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("wimsey_operator");
        let reconcile_duration =
            Family::<PhaseLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                phase_histogram as fn() -> Histogram,
            );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent per reconcile phase (events, render, status)",
            reconcile_duration.clone(),
        );
        let entries = Family::<StateLabels, Gauge>::default();
        registry.register(
            "entries",
            "Registration entries by state: set (in the store), masked, failed (render failures)",
            entries.clone(),
        );
        let render_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "render_failures",
            "Pod entry render failures, by error",
            render_failures.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Pods and resource sets waiting to be reconciled",
            queue_depth.clone(),
        );
        let is_leader = Gauge::default();
        registry.register(
            "is_leader",
            "1 while this replica holds the Lease (and writes status)",
            is_leader.clone(),
        );
        let authority_replacements = Family::<KindLabels, Counter>::default();
        registry.register(
            "authority_replacements",
            "Signing keys activated at once because no usable key was left (e.g. after an outage longer than the CA lifetime), by kind",
            authority_replacements.clone(),
        );
        let authority_secret_unreadable = Gauge::default();
        registry.register(
            "authority_secret_unreadable",
            "1 while the authority Secret cannot be read; the last good keys keep signing",
            authority_secret_unreadable.clone(),
        );
        let authority_secret_errors = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "authority_secret_errors",
            "Authority Secret reads that failed, by error",
            authority_secret_errors.clone(),
        );
        let upstream_ca_unusable = Gauge::default();
        registry.register(
            "upstream_ca_unusable",
            "1 while the upstream CA Secret cannot be used; the last good upstream CA keeps signing",
            upstream_ca_unusable.clone(),
        );
        let upstream_ca_errors = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "upstream_ca_errors",
            "Upstream CA Secret reads that found it unusable, by error",
            upstream_ca_errors.clone(),
        );
        let federation_fetches = Family::<FetchLabels, Counter>::default();
        registry.register(
            "federation_fetches",
            "Bundle endpoint fetches of federated trust domains, by result (ok, or the error)",
            federation_fetches.clone(),
        );
        let federation_bundle_age = Family::<TrustDomainLabels, Gauge>::default();
        registry.register(
            "federation_bundle_age_seconds",
            "Seconds since the federated trust domain's bundle was last fetched successfully",
            federation_bundle_age.clone(),
        );
        Self {
            registry,
            federation_fetches,
            federation_bundle_age,
            federation_last_success: std::sync::Mutex::default(),
            authority_replacements,
            authority_secret_unreadable,
            authority_secret_errors,
            upstream_ca_unusable,
            upstream_ca_errors,
            reconcile_duration,
            entries,
            render_failures,
            queue_depth,
            is_leader,
        }
    }

    pub fn observe_phase(&self, phase: &'static str, seconds: f64) {
        self.reconcile_duration
            .get_or_create(&PhaseLabels { phase })
            .observe(seconds);
    }

    pub fn set_entries(&self, set: i64, masked: i64, failed: i64) {
        for (state, value) in [("set", set), ("masked", masked), ("failed", failed)] {
            self.entries
                .get_or_create(&StateLabels { state })
                .set(value);
        }
    }

    pub fn count_render_failure(&self, reason: &'static str, count: u64) {
        self.render_failures
            .get_or_create(&ReasonLabels { reason })
            .inc_by(count);
    }

    pub fn set_queue_depth(&self, depth: usize) {
        self.queue_depth
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    pub fn set_leader(&self, leader: bool) {
        self.is_leader.set(i64::from(leader));
    }

    pub fn count_authority_replacement(&self, kind: &'static str) {
        self.authority_replacements
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    /// Records whether the authority Secret could be read, and why not.
    pub fn set_authority_secret_error(&self, error: Option<&'static str>) {
        self.authority_secret_unreadable
            .set(i64::from(error.is_some()));
        if let Some(reason) = error {
            self.authority_secret_errors
                .get_or_create(&ReasonLabels { reason })
                .inc();
        }
    }

    /// Records whether the upstream CA Secret is usable, and why not.
    pub fn set_upstream_ca_error(&self, error: Option<&'static str>) {
        self.upstream_ca_unusable.set(i64::from(error.is_some()));
        if let Some(reason) = error {
            self.upstream_ca_errors
                .get_or_create(&ReasonLabels { reason })
                .inc();
        }
    }

    /// Counts one fetch of `trust_domain`'s bundle endpoint; `error` is None on success.
    pub fn count_federation_fetch(&self, trust_domain: &str, error: Option<&'static str>) {
        self.federation_fetches
            .get_or_create(&FetchLabels {
                trust_domain: trust_domain.to_owned(),
                result: error.unwrap_or("ok"),
            })
            .inc();
        if error.is_none() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            self.federation_last_success
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(trust_domain.to_owned(), now);
        }
    }

    /// Records a last good fetch known from the status (after a restart or failover), unless
    /// this replica has fetched since.
    pub fn seed_federation_success(&self, trust_domain: &str, unix_seconds: u64) {
        self.federation_last_success
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(trust_domain.to_owned())
            .or_insert(unix_seconds);
    }

    /// Stops reporting a trust domain whose relationship is gone (or no longer ours to poll).
    pub fn forget_federation(&self, trust_domain: &str) {
        self.federation_last_success
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(trust_domain);
        self.federation_bundle_age.remove(&TrustDomainLabels {
            trust_domain: trust_domain.to_owned(),
        });
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        for (trust_domain, at) in self
            .federation_last_success
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            self.federation_bundle_age
                .get_or_create(&TrustDomainLabels {
                    trust_domain: trust_domain.clone(),
                })
                .set(i64::try_from(now.saturating_sub(*at)).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
