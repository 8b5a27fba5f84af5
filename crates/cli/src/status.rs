//! `shieldwall status`: ask every replica's HTTP endpoint how it is doing.

use std::path::PathBuf;
use std::time::Duration;

use shieldwall_node::{ClusterConfig, ReplicaStatus};

/// Which cluster to ask.
#[derive(Clone, Debug, clap::Args)]
pub struct StatusArgs {
    /// The cluster file.
    #[arg(long)]
    pub config: PathBuf,
    /// How long to wait for each replica, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
    /// Print one JSON object per replica instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Exit non-zero unless every replica is reachable and ready (in sync), not just a quorum.
    #[arg(long)]
    pub all_ready: bool,
}

/// Each replica's status, or why it could not be had (asked in parallel).
pub async fn query(
    cluster: &ClusterConfig,
    timeout: Duration,
) -> Vec<Result<ReplicaStatus, String>> {
    get_from_every_replica(cluster, "/status", timeout)
        .await
        .into_iter()
        .map(|body| {
            serde_json::from_str::<ReplicaStatus>(&body?).map_err(|e| format!("bad status: {e}"))
        })
        .collect()
}

/// `GET path` from every replica's HTTP endpoint, in parallel, in replica order: the body, or
/// why it could not be had.
pub async fn get_from_every_replica(
    cluster: &ClusterConfig,
    path: &'static str,
    timeout: Duration,
) -> Vec<Result<String, String>> {
    let handles: Vec<_> = cluster
        .replicas
        .iter()
        .map(|r| {
            let http = r.http.clone();
            tokio::spawn(async move {
                let Some(http) = http else {
                    return Err("no http address in the cluster file".to_string());
                };
                shieldwall_node::http::get(&http, path, timeout).await
            })
        })
        .collect();
    let mut results = Vec::with_capacity(handles.len());
    for h in handles {
        results.push(h.await.unwrap_or_else(|e| Err(e.to_string())));
    }
    results
}

/// Print the table; `Ok(true)` if a quorum answered.
pub fn run(args: StatusArgs) -> Result<bool, String> {
    let cluster = ClusterConfig::load(&args.config).map_err(|e| e.to_string())?;
    let rt = crate::runtime()?;
    let results = rt.block_on(query(&cluster, Duration::from_millis(args.timeout_ms)));
    let up = results.iter().filter(|r| r.is_ok()).count();
    // Readiness as `GET /ready` has it, with the peers' progress taken from this query.
    let readiness: Vec<Result<(), String>> = results
        .iter()
        .map(|r| {
            let s = r.as_ref().map_err(|_| "unreachable".to_string())?;
            let peers: Vec<u64> = results
                .iter()
                .flatten()
                .filter(|p| p.id != s.id)
                .map(|p| p.last_executed)
                .collect();
            s.readiness_with_peers(&peers)
        })
        .collect();
    let ready = readiness.iter().filter(|r| r.is_ok()).count();
    let quorum = cluster.protocol.quorum();
    if args.json {
        for ((r, entry), ready) in results.iter().zip(&cluster.replicas).zip(&readiness) {
            let v = match r {
                Ok(s) => serde_json::json!({
                    "reachable": true,
                    "address": entry.address,
                    "ready": ready.is_ok(),
                    "not_ready": ready.as_ref().err(),
                    "status": s,
                }),
                Err(e) => {
                    serde_json::json!({"reachable": false, "address": entry.address, "id": entry.id, "error": e})
                }
            };
            println!("{v}");
        }
    } else {
        println!(
            "{:<8} {:<22} {:<10} {:>6} {:>7} {:<14} {:>10} {:>10} {:>8}  ready",
            "replica",
            "address",
            "reachable",
            "view",
            "leader",
            "status",
            "executed",
            "stable",
            "peers",
        );
        for ((r, entry), ready) in results.iter().zip(&cluster.replicas).zip(&readiness) {
            match r {
                Ok(s) => println!(
                    "{:<8} {:<22} {:<10} {:>6} {:>7} {:<14} {:>10} {:>10} {:>8}  {}",
                    entry.id,
                    entry.address,
                    "yes",
                    s.view,
                    s.leader,
                    s.status,
                    s.last_executed,
                    s.stable_checkpoint,
                    format!("{}/{}", s.peers_connected, s.n.saturating_sub(1)),
                    match ready {
                        Ok(()) => "yes".to_string(),
                        Err(why) => format!("no ({why})"),
                    }
                ),
                Err(e) => println!("{:<8} {:<22} no ({e})", entry.id, entry.address),
            }
        }
        println!(
            "{up} of {} replicas answered; a quorum is {quorum}: {}",
            cluster.n(),
            if up >= quorum { "ok" } else { "NOT ENOUGH" }
        );
    }
    if args.all_ready {
        if !args.json {
            println!("{ready} of {} replicas are ready", cluster.n());
        }
        return Ok(ready == cluster.n() as usize);
    }
    Ok(up >= quorum)
}
