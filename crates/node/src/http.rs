//! A minimal HTTP/1.1 endpoint for operators: `GET /metrics` (Prometheus text format) and
//! `GET /status` (JSON). One request per connection, bounded request size and time.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "try /metrics or /status\n".into(),
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
        if !head.starts_with("HTTP/1.1 200") {
            return Err(head.lines().next().unwrap_or("").to_string());
        }
        Ok(body.to_string())
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}
