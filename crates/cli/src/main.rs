//! The `shieldwall` command-line tool.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// mimalloc instead of the system allocator: the replicas allocate per message and per request,
/// and glibc's malloc and free were 16% of a loaded machine (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench;
mod client;
mod gateway;
mod health;
mod keygen;
mod local;
mod node;
mod sim;
mod status;

#[derive(Debug, Parser)]
#[command(
    name = "shieldwall",
    version,
    about = "Byzantine-fault-tolerant state machine replication",
    long_about = "Byzantine-fault-tolerant state machine replication.\n\n\
                  Start with `shieldwall local`: a 4-replica cluster on this machine with a \
                  Redis-protocol front that redis-cli can use."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a whole cluster on this machine, serving Redis clients (Ctrl-C stops it).
    Local(local::LocalArgs),
    /// Write a cluster file and the key files of every replica and client key.
    Keygen(keygen::KeygenArgs),
    /// Run one replica.
    Node(node::NodeArgs),
    /// Run the Redis-protocol (RESP2) front of the key-value service.
    KvGateway(gateway::GatewayArgs),
    /// Run one key-value command against the cluster (`set k v`, `get k`, ...).
    Client(client::ClientArgs),
    /// Show every replica's view, leader and progress; exits non-zero without a quorum.
    Status(status::StatusArgs),
    /// Ask one replica whether it is ready (GET /ready); exits 0 if it is (for health checks).
    Health(health::HealthArgs),
    /// Run the deterministic cluster simulator.
    Sim(sim::SimArgs),
    /// Measure throughput and latency: a load generator against a local cluster it starts
    /// (or a running one), with results as a table, CSV, JSON and plots.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Sim(_) => {}
        // Warnings only, so that log lines do not break up the progress display.
        Command::Bench(_) => init_logs("warn"),
        _ => init_logs("info"),
    }
    let result = match cli.command {
        Command::Sim(args) => return sim::sim(args),
        Command::Local(args) => local::run(args).map(|()| true),
        Command::Keygen(args) => keygen::keygen(&args).map(|g| {
            if g.kept {
                println!(
                    "kept {} (replicas {}, client keys {}): --keep-existing",
                    g.cluster_file.display(),
                    g.cluster.n(),
                    g.cluster.clients.len()
                );
                return true;
            }
            println!(
                "wrote {} and the key files of {} replicas and {} client keys in {}",
                g.cluster_file.display(),
                g.cluster.n(),
                g.cluster.clients.len(),
                args.out.display()
            );
            true
        }),
        Command::Node(args) => node::run(args).map(|()| true),
        Command::KvGateway(args) => gateway::run(args).map(|()| true),
        Command::Client(args) => client::run(args),
        Command::Status(args) => status::run(args),
        Command::Bench(args) => bench::run(args).map(|()| true),
        Command::Health(args) => health::run(args),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr; `RUST_LOG` overrides the default level.
fn init_logs(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .try_init();
}

/// A multi-threaded tokio runtime for the commands that need one.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// Completes at SIGINT (Ctrl-C) or SIGTERM.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// `250ms`, `30s`, `5m`, `2h`, or a plain number of seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 500ms, 30s, 5m)"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (ms, s, m, h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("`{s}` is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
