//! `shieldwall node`: run one replica of the key-value service until SIGINT or SIGTERM.

use std::path::{Path, PathBuf};
use std::time::Duration;

use shieldwall_core::Principal;
use shieldwall_crypto::KeyPair;
use shieldwall_kv::KvService;
use shieldwall_node::{ClusterConfig, ReplicaOptions, ReplicaServer};
use tracing::info;

/// How to run a replica.
#[derive(Clone, Debug, clap::Args)]
pub struct NodeArgs {
    /// The cluster file.
    #[arg(long)]
    pub config: PathBuf,
    /// This replica's id in the cluster file.
    #[arg(long)]
    pub id: u32,
    /// This replica's key file (default: replica-<id>.key next to the cluster file).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Directory for this replica's files (default: data-<id> next to the cluster file).
    /// It holds a marker that tells a restart from the cluster's first start; in durable mode
    /// also the write-ahead log (`wal/`) and the stable checkpoints (`snapshots/`), from which
    /// a restarted replica recovers. A replica that ran before but has no saved state (memory
    /// mode, or a wiped disk) recovers its state from its peers before it votes again.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Listen on this address instead of the cluster file's (e.g. 0.0.0.0:7000).
    #[arg(long)]
    pub listen: Option<String>,
    /// Serve HTTP (/metrics, /status) on this address instead of the cluster file's.
    #[arg(long)]
    pub http_listen: Option<String>,
    /// Signature-verification threads (default: number of CPUs).
    #[arg(long)]
    pub verify_threads: Option<usize>,
}

/// Whether this replica ran before (its marker exists); creates the marker.
fn restarted(data: &Path) -> Result<bool, String> {
    std::fs::create_dir_all(data)
        .map_err(|e| format!("cannot create data directory {}: {e}", data.display()))?;
    let marker = data.join("incarnation");
    let existed = marker.exists();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let write = || -> std::io::Result<()> {
        let f = std::fs::File::create(&marker)?;
        std::io::Write::write_all(&mut &f, format!("started {now}\n").as_bytes())?;
        f.sync_all()?;
        std::fs::File::open(data)?.sync_all()
    };
    write().map_err(|e| format!("cannot write {}: {e}", marker.display()))?;
    Ok(existed)
}

pub fn run(args: NodeArgs) -> Result<(), String> {
    let cluster = ClusterConfig::load(&args.config).map_err(|e| e.to_string())?;
    let key_path = args
        .key
        .clone()
        .unwrap_or_else(|| cluster.replica_key_path(args.id));
    let keys =
        KeyPair::read_file(&key_path, Principal::Replica(args.id)).map_err(|e| e.to_string())?;
    let data = args
        .data
        .clone()
        .unwrap_or_else(|| cluster.dir.join(format!("data-{}", args.id)));
    let mut options = ReplicaOptions::new(args.id, keys);
    options.restarted = restarted(&data)?;
    options.data_dir = Some(data.clone());
    options.listen = args.listen.clone();
    options.http_listen = args.http_listen.clone();
    if let Some(t) = args.verify_threads {
        options.verify_threads = t;
    }
    if options.restarted {
        info!(data = %data.display(), durability = %cluster.protocol.durability, "this replica ran before");
    }
    let server = ReplicaServer::start(&cluster, options, Box::new(KvService::new()))
        .map_err(|e| e.to_string())?;
    let stop = stop_signal()?;
    loop {
        server
            .wait(Some(Duration::from_millis(100)))
            .map_err(|e| e.to_string())?;
        if stop.try_recv().is_ok() {
            info!("stopping");
            server.stop();
            return Ok(());
        }
    }
}

/// A channel that receives once SIGINT or SIGTERM arrives.
fn stop_signal() -> Result<std::sync::mpsc::Receiver<()>, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            rt.block_on(async {
                crate::shutdown_signal().await;
                let _ = tx.send(());
            })
        })
        .map_err(|e| e.to_string())?;
    Ok(rx)
}
