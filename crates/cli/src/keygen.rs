//! `shieldwall keygen`: a cluster file and the key files of every replica and client key.

use std::path::{Path, PathBuf};

use rand::RngCore;
use shieldwall_core::{Config, Durability, FaultModel, Principal};
use shieldwall_crypto::{client_id, KeyPair};
use shieldwall_node::{ClusterConfig, ProtocolOverrides, ReplicaEntry};

/// What `keygen` writes.
#[derive(Clone, Debug, clap::Args)]
pub struct KeygenArgs {
    /// Number of replicas.
    #[arg(long, default_value_t = 4)]
    pub replicas: u32,
    /// byzantine (n >= 3f+1) or crash (n >= 2f+1).
    #[arg(long, default_value = "byzantine")]
    pub fault_model: FaultModel,
    /// memory (state in RAM; a replica restarted alone recovers it from its peers) or durable
    /// (each replica keeps a write-ahead log and checkpoints in its data directory and
    /// recovers from them, so a cluster survives all of its replicas stopping at once).
    #[arg(long, default_value = "memory")]
    pub durability: Durability,
    /// Directory for cluster.toml and the key files (created if missing; existing files are
    /// never overwritten).
    #[arg(long)]
    pub out: PathBuf,
    /// Host name or IP of the replicas: once for all, or once per replica (comma-separated or
    /// repeated), e.g. `--host replica-0,replica-1,replica-2,replica-3`.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1")]
    pub host: Vec<String>,
    /// Port of replica 0; replica i listens on port + i.
    #[arg(long, default_value_t = 7000)]
    pub port: u16,
    /// HTTP (metrics, status) port of replica 0; replica i uses http_port + i. 0: no HTTP.
    #[arg(long, default_value_t = 9000)]
    pub http_port: u16,
    /// Client keys to generate (key 0 is meant for the RESP gateway, 1 for `shieldwall client`).
    #[arg(long, default_value_t = 4)]
    pub clients: u32,
    /// Explicit `host:port` of every replica (comma-separated, one per replica); overrides
    /// --host and --port.
    #[arg(long, value_delimiter = ',')]
    pub addresses: Vec<String>,
    /// Explicit HTTP `host:port` of every replica; overrides --http-port.
    #[arg(long, value_delimiter = ',')]
    pub http_addresses: Vec<String>,
    /// Protocol setting, `name=value` (any field of the `[protocol]` table), repeatable.
    #[arg(long = "protocol", value_name = "NAME=VALUE")]
    pub protocol: Vec<String>,
    /// If DIR already holds a cluster file for this many replicas and every key file, keep
    /// them and succeed (a one-shot keygen container that runs at every `compose up`).
    #[arg(long)]
    pub keep_existing: bool,
}

/// The files written.
#[derive(Debug)]
pub struct Generated {
    pub cluster_file: PathBuf,
    pub cluster: ClusterConfig,
    /// The files were there already (`--keep-existing`); nothing was written.
    pub kept: bool,
}

/// The cluster in `out` if its cluster file exists: checked to have `replicas` replicas and
/// every key file.
fn existing(out: &Path, replicas: u32) -> Result<Option<Generated>, String> {
    let cluster_file = out.join("cluster.toml");
    if !cluster_file.exists() {
        return Ok(None);
    }
    let cluster = ClusterConfig::load(&cluster_file).map_err(|e| e.to_string())?;
    if cluster.n() != replicas {
        return Err(format!(
            "{} has {} replicas, not {replicas}; remove it to generate a new cluster",
            cluster_file.display(),
            cluster.n()
        ));
    }
    let keys = (0..cluster.n())
        .map(|i| cluster.replica_key_path(i))
        .chain((0..cluster.clients.len() as u64).map(|j| cluster.client_key_path(j)));
    for key in keys {
        if !key.exists() {
            return Err(format!(
                "{} exists but {} is missing; remove the directory's files to start over",
                cluster_file.display(),
                key.display()
            ));
        }
    }
    Ok(Some(Generated {
        cluster_file,
        cluster,
        kept: true,
    }))
}

/// Generate keys and write the files.
pub fn keygen(args: &KeygenArgs) -> Result<Generated, String> {
    let n = args.replicas;
    if args.keep_existing {
        if let Some(g) = existing(&args.out, n)? {
            return Ok(g);
        }
    }
    if args.host.len() != 1 && args.host.len() != n as usize {
        return Err(format!(
            "--host: give one host for all replicas or one per replica ({n}), got {}",
            args.host.len()
        ));
    }
    let mut protocol = Config::for_replicas(n, args.fault_model);
    protocol.durability = args.durability;
    ProtocolOverrides::from_settings(&args.protocol)
        .map_err(|e| format!("--protocol: {e}"))?
        .apply(&mut protocol);
    protocol.validate().map_err(|e| e.to_string())?;
    if protocol.f == 0 && n > 1 {
        eprintln!(
            "warning: {n} replicas in {} mode tolerate no fault (f=0)",
            args.fault_model
        );
    }
    let port = |base: u16, i: u32| -> Result<u16, String> {
        u16::try_from(u32::from(base) + i).map_err(|_| format!("port {base} + {i} exceeds 65535"))
    };
    for (flag, list) in [
        ("--addresses", &args.addresses),
        ("--http-addresses", &args.http_addresses),
    ] {
        if !list.is_empty() && list.len() != n as usize {
            return Err(format!(
                "{flag}: give one address per replica ({n}), got {}",
                list.len()
            ));
        }
    }
    let mut addresses = Vec::with_capacity(n as usize);
    for i in 0..n {
        let host = &args.host[if args.host.len() == 1 { 0 } else { i as usize }];
        let address = match args.addresses.get(i as usize) {
            Some(a) => a.clone(),
            None => format!("{host}:{}", port(args.port, i)?),
        };
        let http = match args.http_addresses.get(i as usize) {
            Some(a) => Some(a.clone()),
            None => (args.http_port != 0)
                .then(|| port(args.http_port, i).map(|p| format!("{host}:{p}")))
                .transpose()?,
        };
        addresses.push((address, http));
    }
    generate(protocol, addresses, args.clients, &args.out)
}

/// Generate keys for replicas at `addresses` (peer address, HTTP address) and `clients` client
/// keys, and write the cluster file and key files into `out`.
pub fn generate(
    protocol: Config,
    addresses: Vec<(String, Option<String>)>,
    clients: u32,
    out: &Path,
) -> Result<Generated, String> {
    let replica_keys: Vec<KeyPair> = addresses.iter().map(|_| KeyPair::generate()).collect();
    let client_keys: Vec<KeyPair> = (0..clients).map(|_| KeyPair::generate()).collect();
    let mut cluster_id = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut cluster_id);
    let replicas = addresses
        .into_iter()
        .zip(&replica_keys)
        .enumerate()
        .map(|(i, ((address, http), k))| ReplicaEntry {
            id: i as u32,
            address,
            http,
            keys: k.public(),
        })
        .collect();
    let cluster = ClusterConfig {
        cluster_id,
        protocol,
        replicas,
        clients: client_keys.iter().map(KeyPair::public).collect(),
        dir: out.to_path_buf(),
    };
    // Validate what we are about to write by reading it back.
    ClusterConfig::parse(&cluster.to_toml(), out.to_path_buf())?;
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let cluster_file = out.join("cluster.toml");
    cluster.write(&cluster_file).map_err(|e| e.to_string())?;
    for (i, k) in replica_keys.iter().enumerate() {
        write_key(
            k,
            &cluster.replica_key_path(i as u32),
            Principal::Replica(i as u32),
        )?;
    }
    for (i, k) in client_keys.iter().enumerate() {
        let path = cluster.client_key_path(i as u64);
        write_key(k, &path, Principal::Client(client_id(i as u64, 0)))?;
    }
    Ok(Generated {
        cluster_file,
        cluster,
        kept: false,
    })
}

fn write_key(k: &KeyPair, path: &Path, p: Principal) -> Result<(), String> {
    k.write_file(path, p).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(out: &Path) -> KeygenArgs {
        KeygenArgs {
            replicas: 4,
            fault_model: FaultModel::Byzantine,
            durability: Durability::Memory,
            out: out.to_path_buf(),
            host: vec!["127.0.0.1".into()],
            port: 7000,
            http_port: 9000,
            clients: 2,
            addresses: vec![],
            http_addresses: vec![],
            protocol: vec![],
            keep_existing: false,
        }
    }

    #[test]
    fn writes_a_loadable_cluster_and_matching_keys() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(dir.path());
        a.protocol = vec!["batch_requests_max=7".into()];
        let g = keygen(&a).unwrap();
        let c = ClusterConfig::load(&g.cluster_file).unwrap();
        assert_eq!(c.protocol.batch_requests_max, 7);
        assert_eq!(c.replicas[3].address, "127.0.0.1:7003");
        assert_eq!(c.replicas[2].http.as_deref(), Some("127.0.0.1:9002"));
        for i in 0..4 {
            let k = KeyPair::read_file(&c.replica_key_path(i), Principal::Replica(i)).unwrap();
            assert_eq!(k.public(), c.replicas[i as usize].keys);
        }
        let k =
            KeyPair::read_file(&c.client_key_path(1), Principal::Client(client_id(1, 0))).unwrap();
        assert_eq!(k.public(), c.clients[1]);
        let err = keygen(&a).unwrap_err();
        assert!(err.contains("exists"), "never overwrites: {err}");
    }

    #[test]
    fn hosts_and_settings_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(dir.path());
        a.host = vec!["a".into(), "b".into()];
        assert!(keygen(&a).unwrap_err().contains("one per replica"));
        a.host = ["r0", "r1", "r2", "r3"].map(String::from).to_vec();
        a.protocol = vec!["nonsense=1".into()];
        assert!(keygen(&a).unwrap_err().contains("nonsense"));
        a.protocol = vec![];
        let g = keygen(&a).unwrap();
        assert_eq!(g.cluster.replicas[1].address, "r1:7001");
        a.replicas = 3;
        a.out = dir.path().join("x");
        a.host = vec!["h".into()];
        a.addresses = vec!["a:1".into(), "b:2".into()];
        assert!(keygen(&a).unwrap_err().contains("one address per replica"));
        a.addresses = vec!["a:1".into(), "b:2".into(), "c:3".into()];
        a.fault_model = FaultModel::Crash;
        let g = keygen(&a).unwrap();
        assert_eq!(g.cluster.protocol.f, 1);
        assert_eq!(g.cluster.replicas[2].address, "c:3");
        assert_eq!(g.cluster.protocol.durability, Durability::Memory);
        a.out = dir.path().join("y");
        a.durability = Durability::Durable;
        let g = keygen(&a).unwrap();
        let c = ClusterConfig::load(&g.cluster_file).unwrap();
        assert_eq!(c.protocol.durability, Durability::Durable);
    }

    #[test]
    fn keep_existing_reuses_a_complete_cluster_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(dir.path());
        a.keep_existing = true;
        a.host = ["replica0", "replica1", "replica2", "replica3"]
            .map(String::from)
            .to_vec();
        let first = keygen(&a).unwrap();
        assert!(!first.kept);
        assert_eq!(first.cluster.replicas[3].address, "replica3:7003");
        let again = keygen(&a).unwrap();
        assert!(again.kept);
        assert_eq!(again.cluster.cluster_id, first.cluster.cluster_id);
        a.replicas = 7;
        assert!(keygen(&a).unwrap_err().contains("not 7"));
        a.replicas = 4;
        std::fs::remove_file(first.cluster.client_key_path(1)).unwrap();
        assert!(keygen(&a).unwrap_err().contains("client-1.key"));
    }
}
