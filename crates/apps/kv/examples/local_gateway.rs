//! Serves an unreplicated, in-memory store over RESP2 so that Redis tools can be tried
//! against the gateway by hand:
//!
//! ```sh
//! cargo run --release -p shieldwall-kv --example local_gateway -- 6390
//! redis-cli -p 6390 SET greeting hello
//! redis-benchmark -p 6390 -t set,get -n 20000 -q -P 16
//! ```
//!
//! The first argument is the port (default 6390; 0 lets the OS choose, and the port is
//! printed). `RUST_LOG=debug` shows per-connection events. Ctrl-C stops it gracefully.

use std::sync::Arc;

use shieldwall_kv::{serve_with_shutdown, GatewayOptions, LocalBackend};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let port: u16 = match std::env::args().nth(1) {
        None => 6390,
        Some(arg) => arg.parse().map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("port {arg:?}: {e}"),
            )
        })?,
    };
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("serving RESP2 on {}", listener.local_addr()?);
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    serve_with_shutdown(
        listener,
        Arc::new(LocalBackend::new()),
        GatewayOptions::default(),
        shutdown,
    )
    .await
}
