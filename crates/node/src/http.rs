//! A minimal HTTP/1.1 endpoint for operators: `GET /metrics` (Prometheus text format),
//! `GET /status` (JSON) and `GET /ready` (200 when the replica is ready, else 503 with the
//! reason). One request per connection, bounded request size and time.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::server::ReplicaStatus;

/// Largest request head accepted.
const REQUEST_BYTES_MAX: usize = 8 << 10;
/// Time a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What the endpoint serves; implemented by the replica server.
pub(crate) trait HttpContent: Send + Sync + 'static {
    /// Prometheus exposition.
    fn metrics(&self) -> String;
    /// Status as a JSON document.
    fn status_json(&self) -> String;
    /// The replica's latest status.
    fn status(&self) -> ReplicaStatus;
    /// The peers' HTTP addresses (`GET /ready` asks their `/status`).
    fn peers_http(&self) -> Vec<String>;
}

/// How long `GET /ready` waits for the peers' status.
const PEER_STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether the replica is ready ([`ReplicaStatus::readiness_with_peers`]; without peers'
/// HTTP addresses in the cluster file, [`ReplicaStatus::readiness`] alone).
async fn ready(content: &dyn HttpContent) -> Result<(), String> {
    let status = content.status();
    status.readiness()?;
    let peers = content.peers_http();
    if peers.is_empty() {
        return Ok(());
    }
    let mut asks = tokio::task::JoinSet::new();
    for address in peers {
        asks.spawn(async move {
            let body = get(&address, "/status", PEER_STATUS_TIMEOUT).await.ok()?;
            serde_json::from_str::<ReplicaStatus>(&body).ok()
        });
    }
    let mut executed = Vec::new();
    while let Some(answer) = asks.join_next().await {
        if let Ok(Some(peer)) = answer {
            executed.push(peer.last_executed);
        }
    }
    status.readiness_with_peers(&executed)
}

/// Serve until the listener fails.
pub(crate) async fn serve(listener: TcpListener, content: Arc<dyn HttpContent>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let content = content.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, content)).await;
        });
    }
}

async fn answer(mut stream: TcpStream, content: Arc<dyn HttpContent>) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() + n > REQUEST_BYTES_MAX {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (code, ctype, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            content.metrics(),
        ),
        ("GET", "/status") => ("200 OK", "application/json", content.status_json()),
        ("GET", "/ready") => match ready(content.as_ref()).await {
            Ok(()) => ("200 OK", "text/plain", "ready\n".into()),
            Err(why) => (
                "503 Service Unavailable",
                "text/plain",
                format!("not ready: {why}\n"),
            ),
        },
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "try /metrics, /status or /ready\n".into(),
        ),
        _ => ("405 Method Not Allowed", "text/plain", "GET only\n".into()),
    };
    let response = format!(
        "HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// `GET path` from `address` with a timeout; the body on status 200. Used by `shieldwall
/// status` and the tests.
pub async fn get(address: &str, path: &str, timeout: Duration) -> Result<String, String> {
    let (code, head, body) = get_response(address, path, timeout).await?;
    if code != 200 {
        return Err(head);
    }
    Ok(body)
}

/// `GET path` from `address` with a timeout: the status code, the status line and the body,
/// whatever the code. `Err` when no well-formed response came in time.
pub async fn get_response(
    address: &str,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String, String), String> {
    let run = async {
        let mut s = TcpStream::connect(address)
            .await
            .map_err(|e| e.to_string())?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| "malformed HTTP response".to_string())?;
        let line = head.lines().next().unwrap_or("").to_string();
        let code = line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| format!("malformed HTTP status line: {line}"))?;
        Ok((code, line, body.to_string()))
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}
