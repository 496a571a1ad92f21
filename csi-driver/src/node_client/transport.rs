//! How the plugin's connection to the node API behaves on the wire: `TCP_NODELAY` (small gRPC
//! requests otherwise wait out the peer's delayed ACK, about 40 ms, on every mint), HTTP/2
//! keepalive pings (a dead operator or a dropped path is noticed within seconds, not at the next
//! TCP retransmit timeout), and connect and per-request timeouts. Each is a named setting.

use std::time::Duration;

use tokio::net::TcpStream;
use tonic::transport::Endpoint;

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Attest waits on a TokenReview; 30 s leaves it room on a slow API server.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The node API connection's transport settings.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct NodeApiTransport {
    /// Time to establish the TCP connection to the node API (a Go duration, e.g. `10s`).
    #[arg(
        long = "node-api-connect-timeout",
        env = "WIMSEY_NODE_API_CONNECT_TIMEOUT",
        default_value = "10s",
        value_parser = parse_duration
    )]
    pub connect_timeout: Duration,
    /// Time for a node API call to get its response headers (a stream's later messages are not
    /// bounded by it).
    #[arg(
        long = "node-api-request-timeout",
        env = "WIMSEY_NODE_API_REQUEST_TIMEOUT",
        default_value = "30s",
        value_parser = parse_duration
    )]
    pub request_timeout: Duration,
    /// Interval of HTTP/2 keepalive pings on the node API connection.
    #[arg(
        long = "node-api-keepalive-interval",
        env = "WIMSEY_NODE_API_KEEPALIVE_INTERVAL",
        default_value = "30s",
        value_parser = parse_duration
    )]
    pub keepalive_interval: Duration,
    /// Time to wait for a keepalive ping's answer before the connection is closed.
    #[arg(
        long = "node-api-keepalive-timeout",
        env = "WIMSEY_NODE_API_KEEPALIVE_TIMEOUT",
        default_value = "10s",
        value_parser = parse_duration
    )]
    pub keepalive_timeout: Duration,
    /// Disable TCP_NODELAY on the node API connection (on by default).
    #[arg(long = "node-api-tcp-delay", env = "WIMSEY_NODE_API_TCP_DELAY")]
    pub tcp_delay: bool,
}

impl Default for NodeApiTransport {
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            tcp_delay: false,
        }
    }
}

impl NodeApiTransport {
    /// `endpoint` with the timeouts and keepalive settings. Pings run while idle too: the
    /// plugin's watch streams must not sit on a connection that died quietly.
    pub fn configure(&self, endpoint: Endpoint) -> Endpoint {
        endpoint
            .connect_timeout(self.connect_timeout)
            .timeout(self.request_timeout)
            .http2_keep_alive_interval(self.keepalive_interval)
            .keep_alive_timeout(self.keepalive_timeout)
            .keep_alive_while_idle(true)
            .tcp_nodelay(!self.tcp_delay)
    }

    /// Dials `address` (`host:port`) with `TCP_NODELAY` set as configured: the channel uses
    /// its own connector (for the SPIFFE TLS check), so the endpoint's setting never reaches
    /// this socket.
    pub async fn dial(&self, address: &str) -> std::io::Result<TcpStream> {
        let tcp = TcpStream::connect(address).await?;
        tcp.set_nodelay(!self.tcp_delay)?;
        Ok(tcp)
    }
}

/// A Go duration (`10s`, `1m30s`, `500ms`), as the operator's flags take them; more than zero.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let duration = wimsey_core::entries::parse_go_duration(raw)
        .map_err(|reason| format!("{raw:?}: {reason}"))?;
    if duration.is_zero() {
        return Err(format!("{raw:?}: must be more than zero"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        transport: NodeApiTransport,
    }

    #[test]
    fn flags_default_to_the_named_defaults() {
        let flags = Flags::try_parse_from(["test"]).expect("defaults");
        assert_eq!(flags.transport, NodeApiTransport::default());
        let flags = Flags::try_parse_from([
            "test",
            "--node-api-keepalive-interval",
            "500ms",
            "--node-api-request-timeout",
            "2m",
            "--node-api-tcp-delay",
        ])
        .expect("flags");
        assert_eq!(
            flags.transport.keepalive_interval,
            Duration::from_millis(500)
        );
        assert_eq!(flags.transport.request_timeout, Duration::from_secs(120));
        assert!(flags.transport.tcp_delay);
    }

    #[test]
    fn durations_need_a_unit_and_more_than_zero() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        for bad in ["0s", "s", "1x", "-1s", ""] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn dialled_connections_set_tcp_nodelay() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listen");
        let address = listener.local_addr().expect("address").to_string();
        let tcp = NodeApiTransport::default()
            .dial(&address)
            .await
            .expect("dial");
        assert!(tcp.nodelay().expect("nodelay"), "TCP_NODELAY on by default");
        let delayed = NodeApiTransport {
            tcp_delay: true,
            ..NodeApiTransport::default()
        };
        let tcp = delayed.dial(&address).await.expect("dial");
        assert!(!tcp.nodelay().expect("nodelay"));
    }
}
