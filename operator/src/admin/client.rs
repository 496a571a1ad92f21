//! `wimsey-operator entries`: reads `/debug/entries` from a running operator and prints it.

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid admin address {0:?}: expected http://host:port")]
    Address(String),
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("building the request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("the operator answered {0}")]
    Status(hyper::StatusCode),
    #[error("the operator's answer is not JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl ClientError {
    pub fn label(&self) -> &'static str {
        match self {
            ClientError::Address(_) => "address",
            ClientError::Connect { .. } => "connect",
            ClientError::Http(_) => "http",
            ClientError::Request(_) => "request",
            ClientError::Status(_) => "status",
            ClientError::Json(_) => "json",
        }
    }
}

/// GETs `/debug/entries` with the given filters from `admin` (`http://host:port`).
pub async fn fetch_entries(
    admin: &str,
    pod: Option<&str>,
    node: Option<&str>,
) -> Result<Value, ClientError> {
    let mut url = url::Url::parse(admin).map_err(|_| ClientError::Address(admin.to_owned()))?;
    if url.scheme() != "http" {
        return Err(ClientError::Address(admin.to_owned()));
    }
    let host = url
        .host_str()
        .ok_or_else(|| ClientError::Address(admin.to_owned()))?
        .to_owned();
    let port = url.port_or_known_default().unwrap_or(80);
    url.set_path("/debug/entries");
    {
        let mut pairs = url.query_pairs_mut();
        pairs.clear();
        if let Some(pod) = pod {
            pairs.append_pair("pod", pod);
        }
        if let Some(node) = node {
            pairs.append_pair("node", node);
        }
    }
    let path = match url.query() {
        Some(q) if !q.is_empty() => format!("{}?{q}", url.path()),
        _ => url.path().to_owned(),
    };
    let addr = format!("{host}:{port}");
    let stream = tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|source| ClientError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, addr)
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    if !response.status().is_success() {
        return Err(ClientError::Status(response.status()));
    }
    let body = response.into_body().collect().await?.to_bytes();
    Ok(serde_json::from_slice(&body)?)
}

/// One line per entry: pod, node, entry ID, SPIFFE ID, parent ID, selectors.
pub fn entries_table(entries: &Value) -> String {
    let mut rows = vec![[
        "POD".to_owned(),
        "NODE".to_owned(),
        "ENTRY ID".to_owned(),
        "SPIFFE ID".to_owned(),
        "PARENT ID".to_owned(),
        "SELECTORS".to_owned(),
    ]];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let row = |pod: String, node: String, entry: &Value| {
        let selectors: Vec<String> = entry["selectors"]
            .as_array()
            .into_iter()
            .flatten()
            .map(text)
            .collect();
        [
            pod,
            node,
            text(&entry["id"]),
            text(&entry["spiffeID"]),
            text(&entry["parentID"]),
            selectors.join(","),
        ]
    };
    for pod in entries["pods"].as_array().into_iter().flatten() {
        let name = format!("{}/{}", text(&pod["namespace"]), text(&pod["name"]));
        for entry in pod["entries"].as_array().into_iter().flatten() {
            rows.push(row(name.clone(), text(&pod["nodeName"]), entry));
        }
    }
    for entry in entries["static"].as_array().into_iter().flatten() {
        let owner = format!("(static {})", text(&entry["owner"]["name"]));
        rows.push(row(owner, String::new(), entry));
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}
