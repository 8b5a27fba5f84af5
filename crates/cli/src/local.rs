//! `shieldwall local`: a whole cluster on this machine: replicas as child processes, the RESP
//! gateway in this process, until Ctrl-C (or `--for`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use shieldwall_core::{Config, Durability, FaultModel};
use shieldwall_node::{ClientOptions, ClusterConfig, ProtocolOverrides};
use tokio::net::TcpListener;

/// How to run the local cluster.
#[derive(Clone, Debug, clap::Args)]
pub struct LocalArgs {
    /// Number of replicas.
    #[arg(long, default_value_t = 4)]
    pub replicas: u32,
    /// byzantine (n >= 3f+1) or crash (n >= 2f+1).
    #[arg(long, default_value = "byzantine")]
    pub fault_model: FaultModel,
    /// Address of the RESP (Redis protocol) front.
    #[arg(long, default_value = "127.0.0.1:6379")]
    pub resp: String,
    /// memory (default) or durable: each replica keeps a write-ahead log and checkpoints in
    /// `data-<id>` under the cluster's directory and recovers from them after a restart.
    #[arg(long)]
    pub durability: Option<Durability>,
    /// Keep the cluster file, keys, logs and the replicas' data in this directory instead of
    /// a temporary one that is removed at exit. A directory that already holds a durable
    /// cluster is reused as it is (same cluster file, keys and addresses; the replicas recover
    /// their state); a memory-mode cluster cannot be restarted.
    #[arg(long = "data", visible_alias = "dir")]
    pub dir: Option<PathBuf>,
    /// Stop by itself after this long (`90s`, `5m`, `500ms`); default: until Ctrl-C.
    #[arg(long = "for", value_parser = crate::parse_duration)]
    pub run_for: Option<Duration>,
    /// Protocol setting, `name=value`, repeatable (as for keygen).
    #[arg(long = "protocol", value_name = "NAME=VALUE")]
    pub protocol: Vec<String>,
}

/// Ports the OS says are free now (held briefly, then released for the replicas).
fn free_ports(count: usize) -> Result<Vec<u16>, String> {
    let held: Vec<std::net::TcpListener> = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot find free ports: {e}"))?;
    held.iter()
        .map(|l| l.local_addr().map(|a| a.port()).map_err(|e| e.to_string()))
        .collect()
}

struct Children {
    procs: Mutex<Vec<(u32, Child, bool)>>,
}

impl Children {
    /// Report replicas that exited on their own (once each).
    fn check(&self) {
        if let Ok(mut procs) = self.procs.lock() {
            for (id, child, reported) in procs.iter_mut() {
                if !*reported {
                    if let Ok(Some(status)) = child.try_wait() {
                        eprintln!("replica {id} exited ({status}); the cluster continues if a quorum is up");
                        *reported = true;
                    }
                }
            }
        }
    }

    /// SIGTERM every replica still running, wait up to `grace`, then SIGKILL; reaps them all.
    /// Only children not yet reaped are signalled (a reaped PID may belong to someone else).
    fn stop(&self, grace: Duration) {
        let Ok(mut procs) = self.procs.lock() else {
            return;
        };
        for (_, child, _) in procs.iter_mut() {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + grace;
        for (_, child, _) in procs.iter_mut() {
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        procs.clear();
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// What a local cluster is made of: used by `local` and by `bench`.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalSpec {
    /// Number of replicas (for a new cluster).
    pub replicas: u32,
    /// Fault model (for a new cluster).
    pub fault_model: FaultModel,
    /// Durability (for a new cluster; must match a reused one).
    pub durability: Option<Durability>,
    /// Keep everything in this directory (reused if it holds a durable cluster).
    pub dir: Option<PathBuf>,
    /// Protocol settings, `name=value`.
    pub protocol: Vec<String>,
    /// Client keys to generate for a new cluster.
    pub client_keys: u32,
}

/// Replica processes of this binary on free loopback ports, stopped (by PID) when dropped.
#[derive(Debug)]
pub struct LocalCluster {
    pub dir: PathBuf,
    pub cluster: ClusterConfig,
    pub config_path: PathBuf,
    /// Whether an existing durable cluster directory was reused.
    pub reused: bool,
    children: Arc<Children>,
    // Dropped after `children` (fields drop in order), so the replicas stop before their
    // directory goes.
    _temp: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for Children {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Children").finish_non_exhaustive()
    }
}

impl LocalCluster {
    /// Write (or reuse) the cluster file and keys, and start one `shieldwall node` process per
    /// replica. Does not wait for them: see [`LocalCluster::wait_ready`].
    pub fn start(spec: &LocalSpec) -> Result<LocalCluster, String> {
        let (dir, temp) = match &spec.dir {
            Some(d) => (d.clone(), None),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("shieldwall-local-")
                    .tempdir()
                    .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let existing = dir.join("cluster.toml");
        let (cluster, config_path, reused) = if existing.exists() {
            let cluster = ClusterConfig::load(&existing).map_err(|e| e.to_string())?;
            if cluster.protocol.durability != Durability::Durable {
                return Err(format!(
                    "{} already holds a memory-mode cluster, which cannot be restarted from it \
                     (choose a new directory)",
                    dir.display()
                ));
            }
            if let Some(d) = spec.durability.filter(|d| *d != Durability::Durable) {
                return Err(format!(
                    "{} holds a durable cluster; --durability {d} does not match it",
                    dir.display()
                ));
            }
            (cluster, existing, true)
        } else {
            let n = spec.replicas;
            let mut protocol = Config::for_replicas(n, spec.fault_model);
            protocol.durability = spec.durability.unwrap_or_default();
            ProtocolOverrides::from_settings(&spec.protocol)
                .map_err(|e| format!("--protocol: {e}"))?
                .apply(&mut protocol);
            protocol.validate().map_err(|e| e.to_string())?;
            let ports = free_ports(2 * n as usize)?;
            let addresses = (0..n as usize)
                .map(|i| {
                    (
                        format!("127.0.0.1:{}", ports[2 * i]),
                        Some(format!("127.0.0.1:{}", ports[2 * i + 1])),
                    )
                })
                .collect();
            let generated =
                crate::keygen::generate(protocol, addresses, spec.client_keys.max(1), &dir)?;
            (generated.cluster, generated.cluster_file, false)
        };
        let n = cluster.n();
        let exe = std::env::current_exe().map_err(|e| format!("cannot find my own binary: {e}"))?;

        let local = LocalCluster {
            dir,
            cluster,
            config_path,
            reused,
            children: Arc::new(Children {
                procs: Mutex::new(Vec::new()),
            }),
            _temp: temp,
        };
        for i in 0..n {
            let log_path = local.log_path(i);
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
            let err = log.try_clone().map_err(|e| e.to_string())?;
            // On error `local` is dropped, which stops the replicas already started.
            let child = Command::new(&exe)
                .arg("node")
                .arg("--config")
                .arg(&local.config_path)
                .arg("--id")
                .arg(i.to_string())
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(err)
                .spawn()
                .map_err(|e| format!("cannot start replica {i}: {e}"))?;
            if let Ok(mut p) = local.children.procs.lock() {
                p.push((i, child, false));
            }
        }
        Ok(local)
    }

    /// Replica `i`'s log file.
    pub fn log_path(&self, i: u32) -> PathBuf {
        self.dir.join(format!("replica-{i}.log"))
    }

    /// The process id of every replica still running, by replica id.
    pub fn pids(&self) -> Vec<(u32, u32)> {
        self.children
            .procs
            .lock()
            .map(|p| p.iter().map(|(id, child, _)| (*id, child.id())).collect())
            .unwrap_or_default()
    }

    /// Wait (up to 30 s) until every replica answers on its status endpoint; fails at once if
    /// one exits.
    pub async fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let statuses = crate::status::query(&self.cluster, Duration::from_millis(500)).await;
            if statuses.iter().all(Result::is_ok) {
                return Ok(());
            }
            if let Ok(mut procs) = self.children.procs.lock() {
                for (id, child, _) in procs.iter_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        return Err(format!(
                            "replica {id} exited during start-up ({status}); its log:\n{}",
                            tail(&self.dir.join(format!("replica-{id}.log")), 20)
                        ));
                    }
                }
            }
            if Instant::now() > deadline {
                return Err("the replicas did not all come up within 30 s".to_string());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Report replicas that exited on their own (once each).
    pub fn check(&self) {
        self.children.check();
    }

    /// Stop every replica (SIGTERM, then SIGKILL after `grace`).
    pub fn stop(&self, grace: Duration) {
        self.children.stop(grace);
    }
}

pub fn run(args: LocalArgs) -> Result<(), String> {
    let local = LocalCluster::start(&LocalSpec {
        replicas: args.replicas,
        fault_model: args.fault_model,
        durability: args.durability,
        dir: args.dir.clone(),
        protocol: args.protocol.clone(),
        client_keys: 4,
    })?;
    let cluster = &local.cluster;
    let config_path = &local.config_path;
    let dir = &local.dir;
    let n = cluster.n();
    let rt = crate::runtime()?;
    let result = rt.block_on(async {
        local.wait_ready().await?;
        let listener = TcpListener::bind(&args.resp).await.map_err(|e| {
            format!(
                "cannot listen on {} for the RESP front: {e} (is a redis-server running there? \
                 choose another address with --resp)",
                args.resp
            )
        })?;
        let resp = listener.local_addr().map_err(|e| e.to_string())?;
        let mut options = ClientOptions::from_key_file(cluster, 0).map_err(|e| e.to_string())?;
        options.auth_mode = crate::gateway::auth_mode(None, cluster.protocol.request_macs)?;
        let f = cluster.protocol.f;
        println!(
            "shieldwall: {n} replicas, {} mode (tolerates f={f}), {} durability",
            cluster.protocol.fault_model, cluster.protocol.durability
        );
        if local.reused {
            println!(
                "  reused the cluster in {} (its replicas recovered their saved state)",
                dir.display()
            );
        }
        println!(
            "  RESP front   {resp}      try: redis-cli -p {} set hello world",
            resp.port()
        );
        println!("  cluster file {}", config_path.display());
        println!("  replica logs {}/replica-*.log", dir.display());
        println!(
            "  status       shieldwall status --config {}",
            config_path.display()
        );
        println!(
            "  client       shieldwall client --config {} get hello",
            config_path.display()
        );
        match args.run_for {
            Some(d) => println!("Stops by itself in {d:?}; Ctrl-C stops it now."),
            None => println!("Ctrl-C stops the cluster."),
        }
        let watch = async {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                local.check();
            }
        };
        let shutdown = async {
            tokio::select! {
                _ = crate::shutdown_signal() => {}
                _ = async {
                    match args.run_for {
                        Some(d) => tokio::time::sleep(d).await,
                        None => std::future::pending().await,
                    }
                } => {}
                _ = watch => {}
            }
        };
        crate::gateway::serve(cluster, options, listener, shutdown).await
    });
    println!("stopping the replicas");
    local.stop(Duration::from_secs(5));
    if args.dir.is_some() {
        println!("kept {}", dir.display());
    }
    result
}
