//! Bounds on what a node API client can make the operator do: connections, streams, request
//! sizes and counts, and the rate of unauthenticated `Attest` calls (each costs a TokenReview).

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use wimsey_core::token_bucket::{KeyedTokenBuckets, Refusal, TokenBucket};

use super::NodeApiError;

fn parse_duration(value: &str) -> Result<Duration, String> {
    wimsey_core::entries::parse_go_duration(value).map_err(|reason| format!("{value:?}: {reason}"))
}

fn parse_rate(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate >= 0.0 => Ok(rate),
        _ => Err(format!(
            "{value:?}: a rate is a non-negative number per second"
        )),
    }
}

/// Node API limits, flattened into [`super::NodeApiArgs`]. The defaults fit a cluster of
/// thousands of nodes with one plugin (one connection, one stream per pod) each.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct NodeApiLimits {
    /// Open connections beyond this many are closed as soon as they are accepted.
    #[arg(
        long = "node-api-max-connections",
        env = "WIMSEY_NODE_API_MAX_CONNECTIONS",
        default_value_t = DEFAULT_MAX_CONNECTIONS
    )]
    pub max_connections: usize,
    /// A connection with no call in progress for this long is closed (from its accept on).
    #[arg(long = "node-api-idle-timeout", env = "WIMSEY_NODE_API_IDLE_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Time for the TLS handshake, and for a request's whole body, before the call is dropped.
    #[arg(long = "node-api-read-timeout", env = "WIMSEY_NODE_API_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub read_timeout: Duration,
    /// HTTP/2 PING interval on idle connections.
    #[arg(long = "node-api-keepalive-interval", env = "WIMSEY_NODE_API_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub keepalive_interval: Duration,
    /// A connection whose PING is not answered within this is closed.
    #[arg(long = "node-api-keepalive-timeout", env = "WIMSEY_NODE_API_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub keepalive_timeout: Duration,
    /// HTTP/2 streams (calls, WatchPod streams) open at once on one connection.
    #[arg(
        long = "node-api-max-concurrent-streams",
        env = "WIMSEY_NODE_API_MAX_CONCURRENT_STREAMS",
        default_value_t = DEFAULT_MAX_CONCURRENT_STREAMS
    )]
    pub max_concurrent_streams: u32,
    /// Largest request (encoded message) in bytes; larger ones get RESOURCE_EXHAUSTED.
    #[arg(
        long = "node-api-max-request-bytes",
        env = "WIMSEY_NODE_API_MAX_REQUEST_BYTES",
        default_value_t = DEFAULT_MAX_REQUEST_BYTES
    )]
    pub max_request_bytes: usize,
    /// CSRs in one SignX509SVIDs request.
    #[arg(
        long = "node-api-max-csrs",
        env = "WIMSEY_NODE_API_MAX_CSRS",
        default_value_t = DEFAULT_MAX_CSRS
    )]
    pub max_csrs: usize,
    /// Audiences in one MintJWTSVID request.
    #[arg(
        long = "node-api-max-jwt-audiences",
        env = "WIMSEY_NODE_API_MAX_JWT_AUDIENCES",
        default_value_t = DEFAULT_MAX_JWT_AUDIENCES
    )]
    pub max_jwt_audiences: usize,
    /// Bytes in one JWT audience.
    #[arg(
        long = "node-api-max-jwt-audience-bytes",
        env = "WIMSEY_NODE_API_MAX_JWT_AUDIENCE_BYTES",
        default_value_t = DEFAULT_MAX_JWT_AUDIENCE_BYTES
    )]
    pub max_jwt_audience_bytes: usize,
    /// Attest calls a second, all sources together (refill rate).
    #[arg(long = "node-api-attest-rate", env = "WIMSEY_NODE_API_ATTEST_RATE", default_value = "50", value_parser = parse_rate)]
    pub attest_rate: f64,
    /// Attest calls at once above the rate, all sources together.
    #[arg(
        long = "node-api-attest-burst",
        env = "WIMSEY_NODE_API_ATTEST_BURST",
        default_value_t = DEFAULT_ATTEST_BURST
    )]
    pub attest_burst: u32,
    /// Attest calls a second from one source address.
    #[arg(long = "node-api-attest-rate-per-source", env = "WIMSEY_NODE_API_ATTEST_RATE_PER_SOURCE", default_value = "1", value_parser = parse_rate)]
    pub attest_rate_per_source: f64,
    /// Attest calls at once above the per-source rate.
    #[arg(
        long = "node-api-attest-burst-per-source",
        env = "WIMSEY_NODE_API_ATTEST_BURST_PER_SOURCE",
        default_value_t = DEFAULT_ATTEST_BURST_PER_SOURCE
    )]
    pub attest_burst_per_source: u32,
    /// Source addresses whose Attest rate is tracked at once; beyond, new sources are refused
    /// until tracked ones have been quiet long enough to be forgotten.
    #[arg(
        long = "node-api-attest-max-sources",
        env = "WIMSEY_NODE_API_ATTEST_MAX_SOURCES",
        default_value_t = DEFAULT_ATTEST_MAX_SOURCES
    )]
    pub attest_max_sources: usize,
}

pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 1024;
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 256 * 1024;
pub const DEFAULT_MAX_CSRS: usize = 64;
pub const DEFAULT_MAX_JWT_AUDIENCES: usize = 32;
pub const DEFAULT_MAX_JWT_AUDIENCE_BYTES: usize = 1024;
pub const DEFAULT_ATTEST_BURST: u32 = 200;
pub const DEFAULT_ATTEST_BURST_PER_SOURCE: u32 = 10;
pub const DEFAULT_ATTEST_MAX_SOURCES: usize = 16_384;

impl Default for NodeApiLimits {
    /// The same values as the flags' defaults.
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout: Duration::from_secs(300),
            read_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_csrs: DEFAULT_MAX_CSRS,
            max_jwt_audiences: DEFAULT_MAX_JWT_AUDIENCES,
            max_jwt_audience_bytes: DEFAULT_MAX_JWT_AUDIENCE_BYTES,
            attest_rate: 50.0,
            attest_burst: DEFAULT_ATTEST_BURST,
            attest_rate_per_source: 1.0,
            attest_burst_per_source: DEFAULT_ATTEST_BURST_PER_SOURCE,
            attest_max_sources: DEFAULT_ATTEST_MAX_SOURCES,
        }
    }
}

/// SignX509SVIDs: at most `max` CSRs.
pub fn check_csr_count(count: usize, max: usize) -> Result<(), NodeApiError> {
    if count > max {
        return Err(NodeApiError::OverLimit(format!(
            "{count} CSRs in one request; at most {max}"
        )));
    }
    Ok(())
}

/// MintJWTSVID: at most `max_count` audiences of at most `max_bytes` each.
pub fn check_audiences(
    audiences: &[String],
    max_count: usize,
    max_bytes: usize,
) -> Result<(), NodeApiError> {
    if audiences.len() > max_count {
        return Err(NodeApiError::OverLimit(format!(
            "{} audiences in one request; at most {max_count}",
            audiences.len()
        )));
    }
    if let Some(long) = audiences.iter().find(|a| a.len() > max_bytes) {
        return Err(NodeApiError::OverLimit(format!(
            "an audience of {} bytes; at most {max_bytes}",
            long.len()
        )));
    }
    Ok(())
}

/// The Attest rate limit: a bucket per source address, then one for everybody. Checked before
/// anything else an Attest does, so a flood costs neither TokenReviews nor CSR parsing.
#[derive(Debug)]
pub struct AttestRateLimit {
    global: Mutex<TokenBucket>,
    per_source: Mutex<KeyedTokenBuckets<IpAddr>>,
}

impl AttestRateLimit {
    pub fn new(limits: &NodeApiLimits, now: Instant) -> Self {
        Self {
            global: Mutex::new(TokenBucket::new(
                limits.attest_rate,
                limits.attest_burst,
                now,
            )),
            per_source: Mutex::new(KeyedTokenBuckets::new(
                limits.attest_rate_per_source,
                limits.attest_burst_per_source,
                limits.attest_max_sources,
            )),
        }
    }

    /// One Attest from `source` (`None`: the address is unknown, only the global limit applies).
    pub fn check(&self, source: Option<IpAddr>, now: Instant) -> Result<(), NodeApiError> {
        if let Some(source) = source {
            // Both maps hold whole values between calls; a poisoned lock is still consistent.
            let mut per_source = self.per_source.lock().unwrap_or_else(|e| e.into_inner());
            match per_source.try_take(&source, now) {
                Ok(()) => {}
                Err(Refusal::KeyRateExceeded) => {
                    return Err(NodeApiError::ResourceExhausted(format!(
                        "too many Attest calls from {source}; retry later"
                    )));
                }
                Err(Refusal::TooManyKeys) => {
                    return Err(NodeApiError::ResourceExhausted(
                        "too many sources are attesting at once; retry later".into(),
                    ));
                }
            }
        }
        let mut global = self.global.lock().unwrap_or_else(|e| e.into_inner());
        if !global.try_take(now) {
            return Err(NodeApiError::ResourceExhausted(
                "too many Attest calls; retry later".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use tonic::Code;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        limits: NodeApiLimits,
    }

    #[test]
    fn flag_defaults_equal_default() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(cli.limits, NodeApiLimits::default());
    }

    #[test]
    fn every_limit_has_a_flag() {
        let cli = Cli::try_parse_from([
            "x",
            "--node-api-max-connections=3",
            "--node-api-idle-timeout=1m",
            "--node-api-read-timeout=2s",
            "--node-api-keepalive-interval=5s",
            "--node-api-keepalive-timeout=1s",
            "--node-api-max-concurrent-streams=7",
            "--node-api-max-request-bytes=1000",
            "--node-api-max-csrs=2",
            "--node-api-max-jwt-audiences=4",
            "--node-api-max-jwt-audience-bytes=8",
            "--node-api-attest-rate=0.5",
            "--node-api-attest-burst=9",
            "--node-api-attest-rate-per-source=0.1",
            "--node-api-attest-burst-per-source=2",
            "--node-api-attest-max-sources=11",
        ])
        .unwrap();
        let l = cli.limits;
        assert_eq!(l.max_connections, 3);
        assert_eq!(l.idle_timeout, Duration::from_secs(60));
        assert_eq!(l.read_timeout, Duration::from_secs(2));
        assert_eq!(l.keepalive_interval, Duration::from_secs(5));
        assert_eq!(l.keepalive_timeout, Duration::from_secs(1));
        assert_eq!(l.max_concurrent_streams, 7);
        assert_eq!(l.max_request_bytes, 1000);
        assert_eq!(l.max_csrs, 2);
        assert_eq!(l.max_jwt_audiences, 4);
        assert_eq!(l.max_jwt_audience_bytes, 8);
        assert!((l.attest_rate - 0.5).abs() < f64::EPSILON);
        assert_eq!(l.attest_burst, 9);
        assert!((l.attest_rate_per_source - 0.1).abs() < f64::EPSILON);
        assert_eq!(l.attest_burst_per_source, 2);
        assert_eq!(l.attest_max_sources, 11);
        for bad in [
            "--node-api-attest-rate=-1",
            "--node-api-attest-rate=NaN",
            "--node-api-idle-timeout=300",
        ] {
            assert!(Cli::try_parse_from(["x", bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn csr_count_is_capped() {
        assert!(check_csr_count(64, 64).is_ok());
        let err = check_csr_count(65, 64).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.to_string().contains("65 CSRs"), "{err}");
    }

    #[test]
    fn audiences_are_capped_in_number_and_length() {
        let ok = vec!["a".repeat(8); 4];
        assert!(check_audiences(&ok, 4, 8).is_ok());
        let many = vec!["a".to_owned(); 5];
        let err = check_audiences(&many, 4, 8).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.to_string().contains("5 audiences"), "{err}");
        let long = vec!["a".repeat(9)];
        let err = check_audiences(&long, 4, 8).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.to_string().contains("9 bytes"), "{err}");
    }

    #[test]
    fn attest_rate_is_limited_per_source_then_globally() {
        let t0 = Instant::now();
        let limits = NodeApiLimits {
            attest_rate: 1.0,
            attest_burst: 3,
            attest_rate_per_source: 1.0,
            attest_burst_per_source: 2,
            ..NodeApiLimits::default()
        };
        let limit = AttestRateLimit::new(&limits, t0);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(limit.check(Some(a), t0).is_ok());
        assert!(limit.check(Some(a), t0).is_ok());
        let err = limit.check(Some(a), t0).unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted);
        assert!(err.to_string().contains("10.0.0.1"), "{err}");
        // b has its own bucket, but only one global token is left.
        assert!(limit.check(Some(b), t0).is_ok());
        let err = limit.check(Some(b), t0).unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted);
        assert!(limit.check(None, t0).is_err(), "no global token left");
        // A second later one global token is back.
        let t1 = t0 + Duration::from_secs(1);
        assert!(limit.check(None, t1).is_ok());
        assert!(limit.check(None, t1).is_err());
    }

    #[test]
    fn attest_sources_tracked_are_capped() {
        let t0 = Instant::now();
        let limits = NodeApiLimits {
            attest_max_sources: 2,
            ..NodeApiLimits::default()
        };
        let limit = AttestRateLimit::new(&limits, t0);
        for i in 1..=2u8 {
            assert!(limit.check(Some(IpAddr::from([10, 0, 0, i])), t0).is_ok());
        }
        let err = limit
            .check(Some(IpAddr::from([10, 0, 0, 3])), t0)
            .unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted);
    }
}
