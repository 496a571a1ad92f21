//! What one pod may ask of its Workload API socket: every bound is a named setting (a flag with
//! an environment fallback) with a default, and the checks here are plain functions over the
//! request's values.
//!
//! - Streams: at most [`WorkloadApiLimits::max_streams_per_connection`] per HTTP/2 connection
//!   (advertised in SETTINGS, enforced by h2) and [`WorkloadApiLimits::max_streams_per_pod`] over
//!   all connections to the socket; the excess call gets `RESOURCE_EXHAUSTED`.
//! - Request size: a message over [`WorkloadApiLimits::max_request_bytes`] is refused with
//!   `RESOURCE_EXHAUSTED` as soon as its length prefix is read ([`MessageLengthGuard`]).
//! - Field sizes: JWT audiences per request and per audience, and the token and audience of
//!   `ValidateJWTSVID`, answered with `INVALID_ARGUMENT` (spiffe-specs §4.2: a request the client
//!   should not retry as is).

use super::error::WorkloadApiError;
use crate::socket::authority::FrontLimits;

pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 16;
/// Room for clients that open stream after stream: a stream the client has dropped holds its
/// permit until the server has processed the reset, so 100 such clients can briefly hold ~200.
pub const DEFAULT_MAX_STREAMS_PER_POD: usize = 512;
/// Every Workload API request is a few short strings; the largest legitimate one is a
/// `ValidateJWTSVID` carrying a token of up to [`DEFAULT_MAX_JWT_SVID_BYTES`].
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 64 * 1024;
pub const DEFAULT_MAX_JWT_AUDIENCES: usize = 32;
/// The spec's bound for hints (§8), applied to audiences as well.
pub const DEFAULT_MAX_AUDIENCE_BYTES: usize = 1024;
/// JWT-SVIDs are a few hundred bytes to a few KiB; core refuses anything over 64 KiB anyway.
pub const DEFAULT_MAX_JWT_SVID_BYTES: usize = 16 * 1024;
pub const DEFAULT_MAX_CACHED_JWT_SVIDS_PER_POD: usize = 64;

/// The bounds on one pod's Workload API server.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct WorkloadApiLimits {
    /// Concurrent streams per HTTP/2 connection to a pod's Workload API socket
    /// (SETTINGS_MAX_CONCURRENT_STREAMS).
    #[arg(
        long = "workload-api-max-streams-per-connection",
        env = "WIMSEY_WORKLOAD_API_MAX_STREAMS_PER_CONNECTION",
        default_value_t = DEFAULT_MAX_STREAMS_PER_CONNECTION,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_streams_per_connection: u32,
    /// Concurrent calls (streams) over all connections to one pod's socket; the excess call
    /// gets RESOURCE_EXHAUSTED.
    #[arg(
        long = "workload-api-max-streams-per-pod",
        env = "WIMSEY_WORKLOAD_API_MAX_STREAMS_PER_POD",
        default_value_t = DEFAULT_MAX_STREAMS_PER_POD,
        value_parser = at_least_one
    )]
    pub max_streams_per_pod: usize,
    /// Largest request message in bytes; a larger one gets RESOURCE_EXHAUSTED.
    #[arg(
        long = "workload-api-max-request-bytes",
        env = "WIMSEY_WORKLOAD_API_MAX_REQUEST_BYTES",
        default_value_t = DEFAULT_MAX_REQUEST_BYTES,
        value_parser = at_least_one
    )]
    pub max_request_bytes: usize,
    /// Audiences in one FetchJWTSVID request.
    #[arg(
        long = "workload-api-max-jwt-audiences",
        env = "WIMSEY_WORKLOAD_API_MAX_JWT_AUDIENCES",
        default_value_t = DEFAULT_MAX_JWT_AUDIENCES,
        value_parser = at_least_one
    )]
    pub max_jwt_audiences: usize,
    /// Bytes in one audience (FetchJWTSVID and ValidateJWTSVID).
    #[arg(
        long = "workload-api-max-audience-bytes",
        env = "WIMSEY_WORKLOAD_API_MAX_AUDIENCE_BYTES",
        default_value_t = DEFAULT_MAX_AUDIENCE_BYTES,
        value_parser = at_least_one
    )]
    pub max_audience_bytes: usize,
    /// Bytes in the token of a ValidateJWTSVID request.
    #[arg(
        long = "workload-api-max-jwt-svid-bytes",
        env = "WIMSEY_WORKLOAD_API_MAX_JWT_SVID_BYTES",
        default_value_t = DEFAULT_MAX_JWT_SVID_BYTES,
        value_parser = at_least_one
    )]
    pub max_jwt_svid_bytes: usize,
    /// Minted JWT-SVIDs kept per pod (per identity and audience set) until their half-life;
    /// the oldest is dropped first.
    #[arg(
        long = "workload-api-max-cached-jwt-svids",
        env = "WIMSEY_WORKLOAD_API_MAX_CACHED_JWT_SVIDS",
        default_value_t = DEFAULT_MAX_CACHED_JWT_SVIDS_PER_POD,
        value_parser = at_least_one
    )]
    pub max_cached_jwt_svids: usize,
    /// What the `:authority` front accepts in HTTP/2 header blocks (flags of their own in main).
    #[arg(skip)]
    pub front: FrontLimits,
}

impl Default for WorkloadApiLimits {
    fn default() -> Self {
        Self {
            max_streams_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION,
            max_streams_per_pod: DEFAULT_MAX_STREAMS_PER_POD,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_jwt_audiences: DEFAULT_MAX_JWT_AUDIENCES,
            max_audience_bytes: DEFAULT_MAX_AUDIENCE_BYTES,
            max_jwt_svid_bytes: DEFAULT_MAX_JWT_SVID_BYTES,
            max_cached_jwt_svids: DEFAULT_MAX_CACHED_JWT_SVIDS_PER_POD,
            front: FrontLimits::default(),
        }
    }
}

/// A count or size of at least 1: a limit of 0 would refuse every call.
fn at_least_one(raw: &str) -> Result<usize, String> {
    match raw.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(value) => Ok(value),
        Err(e) => Err(e.to_string()),
    }
}

impl WorkloadApiLimits {
    /// The audience list of a FetchJWTSVID request: at most `max_jwt_audiences` values of at
    /// most `max_audience_bytes` each (emptiness is `responses::check_audience`'s job).
    pub fn check_jwt_audiences(&self, audience: &[String]) -> Result<(), WorkloadApiError> {
        if audience.len() > self.max_jwt_audiences {
            return Err(WorkloadApiError::TooManyAudiences {
                max: self.max_jwt_audiences,
            });
        }
        audience
            .iter()
            .try_for_each(|value| self.check_audience_len(value))
    }

    /// The audience and token of a ValidateJWTSVID request.
    pub fn check_validate_request(
        &self,
        audience: &str,
        svid: &str,
    ) -> Result<(), WorkloadApiError> {
        self.check_audience_len(audience)?;
        if svid.len() > self.max_jwt_svid_bytes {
            return Err(WorkloadApiError::SvidTooLong {
                max: self.max_jwt_svid_bytes,
            });
        }
        Ok(())
    }

    fn check_audience_len(&self, audience: &str) -> Result<(), WorkloadApiError> {
        if audience.len() > self.max_audience_bytes {
            return Err(WorkloadApiError::AudienceTooLong {
                max: self.max_audience_bytes,
            });
        }
        Ok(())
    }
}

/// The length a gRPC message prefix announces is over the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageTooLarge {
    pub len: usize,
}

/// Length of the gRPC message prefix: a compressed flag and a big-endian u32 length.
const PREFIX_LEN: usize = 5;

/// Follows the gRPC message framing (5-byte prefix, then the message) through a request body
/// delivered in chunks of any size, and reports the first message whose prefix announces more
/// than `max` bytes, before any of that message is buffered.
#[derive(Debug, Clone)]
pub struct MessageLengthGuard {
    max: usize,
    prefix: [u8; PREFIX_LEN],
    prefix_len: usize,
    /// Bytes of the current message still to pass.
    message_left: usize,
}

impl MessageLengthGuard {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            prefix: [0; PREFIX_LEN],
            prefix_len: 0,
            message_left: 0,
        }
    }

    /// Takes the next chunk of the body.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<(), MessageTooLarge> {
        loop {
            let skip = self.message_left.min(chunk.len());
            self.message_left -= skip;
            chunk = &chunk[skip..];
            if chunk.is_empty() {
                return Ok(());
            }
            let take = (PREFIX_LEN - self.prefix_len).min(chunk.len());
            self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&chunk[..take]);
            self.prefix_len += take;
            chunk = &chunk[take..];
            if self.prefix_len < PREFIX_LEN {
                return Ok(());
            }
            let [_, b1, b2, b3, b4] = self.prefix;
            // A u32 always fits a usize on the 32- and 64-bit targets we build for.
            let len = usize::try_from(u32::from_be_bytes([b1, b2, b3, b4])).unwrap_or(usize::MAX);
            if len > self.max {
                return Err(MessageTooLarge { len });
            }
            self.prefix_len = 0;
            self.message_left = len;
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn framed(len: u32) -> Vec<u8> {
        let mut frame = vec![0u8];
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend(std::iter::repeat_n(7u8, len as usize));
        frame
    }

    #[test]
    fn messages_within_the_limit_pass_in_any_chunking() {
        let mut body = framed(10);
        body.extend(framed(0));
        body.extend(framed(100));
        for chunk_size in [1, 2, 4, 5, 6, 7, 64, body.len()] {
            let mut guard = MessageLengthGuard::new(100);
            for chunk in body.chunks(chunk_size) {
                assert_eq!(guard.feed(chunk), Ok(()), "chunk size {chunk_size}");
            }
        }
    }

    #[test]
    fn an_oversized_prefix_is_refused_before_its_message_arrives() {
        for chunk_size in [1, 3, 5, 1000] {
            let mut guard = MessageLengthGuard::new(100);
            let mut body = framed(100);
            // The second message's prefix only: no byte of the message itself is needed.
            body.extend_from_slice(&[0, 0, 0, 0, 101]);
            let refused = body
                .chunks(chunk_size)
                .map(|chunk| guard.feed(chunk))
                .find(Result::is_err);
            assert_eq!(
                refused,
                Some(Err(MessageTooLarge { len: 101 })),
                "chunk size {chunk_size}"
            );
        }
        let mut guard = MessageLengthGuard::new(usize::MAX >> 40);
        assert_eq!(
            guard.feed(&[1, 0xff, 0xff, 0xff, 0xff]),
            Err(MessageTooLarge {
                len: u32::MAX as usize
            })
        );
    }

    #[test]
    fn audience_and_token_bounds_have_specific_messages() {
        let limits = WorkloadApiLimits {
            max_jwt_audiences: 2,
            max_audience_bytes: 4,
            max_jwt_svid_bytes: 8,
            ..WorkloadApiLimits::default()
        };
        let audiences =
            |values: &[&str]| values.iter().map(|v| (*v).to_owned()).collect::<Vec<_>>();
        assert!(
            limits
                .check_jwt_audiences(&audiences(&["a", "bbbb"]))
                .is_ok()
        );
        let too_many = limits
            .check_jwt_audiences(&audiences(&["a", "b", "c"]))
            .expect_err("three audiences");
        assert_eq!(too_many.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            too_many.to_string(),
            "too many audiences: at most 2 per request"
        );
        let too_long = limits
            .check_jwt_audiences(&audiences(&["a", "bbbbb"]))
            .expect_err("five bytes");
        assert_eq!(too_long.code(), tonic::Code::InvalidArgument);
        assert_eq!(too_long.to_string(), "audience too long: at most 4 bytes");

        assert!(limits.check_validate_request("aud", "12345678").is_ok());
        let svid = limits
            .check_validate_request("aud", "123456789")
            .expect_err("nine bytes");
        assert_eq!(svid.code(), tonic::Code::InvalidArgument);
        assert_eq!(svid.to_string(), "svid too long: at most 8 bytes");
        assert_eq!(
            limits
                .check_validate_request("audie", "1")
                .expect_err("long audience")
                .to_string(),
            "audience too long: at most 4 bytes"
        );
    }

    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        limits: WorkloadApiLimits,
    }

    #[test]
    fn flags_default_to_the_named_defaults_and_refuse_zero() {
        let flags = Flags::try_parse_from(["test"]).expect("defaults");
        assert_eq!(flags.limits, WorkloadApiLimits::default());
        let flags = Flags::try_parse_from([
            "test",
            "--workload-api-max-streams-per-pod",
            "3",
            "--workload-api-max-request-bytes",
            "2048",
        ])
        .expect("flags");
        assert_eq!(flags.limits.max_streams_per_pod, 3);
        assert_eq!(flags.limits.max_request_bytes, 2048);
        for flag in [
            "--workload-api-max-streams-per-connection",
            "--workload-api-max-streams-per-pod",
            "--workload-api-max-cached-jwt-svids",
        ] {
            assert!(
                Flags::try_parse_from(["test", flag, "0"]).is_err(),
                "{flag} 0"
            );
        }
    }
}
