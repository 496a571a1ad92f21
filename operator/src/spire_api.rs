//! What the clients of the SPIRE Server's APIs (entries, federation relationships) share: the
//! lazily connected channel to its admin Unix socket, batch sizes, the error of a call, and
//! sending items in batches with one result per item.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

/// How many items one call carries and one page holds. SPIRE takes any batch size; smaller
/// batches keep each datastore transaction, and what a failure retries, short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub create: usize,
    pub update: usize,
    pub delete: usize,
    pub page: i32,
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self {
            create: 50,
            update: 50,
            delete: 200,
            page: 1000,
        }
    }
}

/// A call must answer within this; SPIRE answers in milliseconds unless its datastore is stuck.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum SpireApiError {
    #[error("SPIRE Server {call}: {}: {}", code_name(status.code()), status.message())]
    Call {
        call: &'static str,
        status: tonic::Status,
    },
    #[error("SPIRE Server {call} answered {got} results for {sent} items")]
    ResultCount {
        call: &'static str,
        sent: usize,
        got: usize,
    },
}

/// The gRPC code as its name (`Unavailable`), which reads better than tonic's description.
fn code_name(code: Code) -> String {
    format!("{code:?}")
}

impl SpireApiError {
    pub fn label(&self) -> &'static str {
        match self {
            SpireApiError::Call { .. } => "call",
            SpireApiError::ResultCount { .. } => "result_count",
        }
    }

    /// Whether the server is away (restarting, socket gone): retry later, nothing was refused.
    pub fn is_unavailable(&self) -> bool {
        match self {
            SpireApiError::Call { status, .. } => {
                matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded)
            }
            SpireApiError::ResultCount { .. } => false,
        }
    }
}

/// A channel to the socket at `path`, connected lazily: a missing or refusing socket shows up as
/// an Unavailable call (see [`SpireApiError::is_unavailable`]), and the channel reconnects by
/// itself when the server is back.
pub fn admin_channel(path: &Path) -> Channel {
    let socket = path.to_path_buf();
    // The URI is not used: every connection goes to the socket.
    let endpoint = Endpoint::from_static("http://spire-server.local")
        .timeout(CALL_TIMEOUT)
        .connect_timeout(Duration::from_secs(5));
    endpoint.connect_with_connector_lazy(tower::service_fn(move |_| {
        let socket = socket.clone();
        async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
    }))
}

pub(crate) fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// `items` sent `size` at a time through `call`, the outcomes in order. SPIRE answers one result
/// per item; a batch answered otherwise is an error, never outcomes paired with the wrong items.
pub(crate) async fn in_batches<T, R, F, Fut>(
    items: Vec<T>,
    size: usize,
    name: &'static str,
    mut call: F,
) -> Result<Vec<R>, SpireApiError>
where
    T: Clone,
    F: FnMut(Vec<T>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<R>, tonic::Status>>,
{
    let mut outcomes = Vec::with_capacity(items.len());
    for chunk in items.chunks(size.max(1)) {
        let results = call(chunk.to_vec())
            .await
            .map_err(|status| SpireApiError::Call { call: name, status })?;
        check_count(name, chunk.len(), results.len())?;
        outcomes.extend(results);
    }
    Ok(outcomes)
}

/// SPIRE answers one result per item; anything else would pair outcomes with the wrong items.
pub(crate) fn check_count(
    call: &'static str,
    sent: usize,
    got: usize,
) -> Result<(), SpireApiError> {
    if sent == got {
        Ok(())
    } else {
        Err(SpireApiError::ResultCount { call, sent, got })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_answer_is_an_error_not_a_misattribution() {
        assert!(check_count("BatchCreateEntry", 3, 3).is_ok());
        let error = check_count("BatchCreateEntry", 3, 2).unwrap_err();
        assert_eq!(error.label(), "result_count");
        assert!(!error.is_unavailable());
    }
}
