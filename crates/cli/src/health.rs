//! `shieldwall health`: ask one replica whether it is ready (`GET /ready`); exit 0 if it is.
//! Meant for container health checks: the image needs nothing but this binary.

use std::time::Duration;

/// Which replica to ask.
#[derive(Clone, Debug, clap::Args)]
pub struct HealthArgs {
    /// The replica's HTTP address (`host:port`, e.g. `127.0.0.1:9000`).
    pub http: String,
    /// Only check that the replica answers (`GET /status`), not that it is ready.
    #[arg(long)]
    pub live: bool,
    /// How long to wait for the answer, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
}

/// Prints the replica's answer; `Ok(true)` if it is ready (or, with `--live`, answers).
pub fn run(args: HealthArgs) -> Result<bool, String> {
    let rt = crate::runtime()?;
    let timeout = Duration::from_millis(args.timeout_ms);
    let path = if args.live { "/status" } else { "/ready" };
    let (code, line, body) = rt.block_on(shieldwall_node::http::get_response(
        &args.http, path, timeout,
    ))?;
    if args.live {
        println!(
            "{}: {}",
            args.http,
            if code == 200 { "live" } else { &line }
        );
    } else {
        println!("{}: {}", args.http, body.trim());
    }
    Ok(code == 200)
}
