//! The cluster file: who the replicas are, where they listen, their public keys, the client
//! keys, and the protocol settings. `shieldwall keygen` writes it; every replica and client
//! reads the same file.
//!
//! ```toml
//! cluster_id = "9f3c…"          # 64 hex digits; connections between clusters are refused
//! fault_model = "byzantine"     # or "crash"
//! durability = "durable"        # optional: "memory" (default) or "durable" (write-ahead log
//!                               # and checkpoints in each replica's data directory)
//!
//! [protocol]                    # optional; any field of shieldwall_core::Config but n and f
//! batch_requests_max = 1024
//!
//! [[replica]]
//! id = 0
//! address = "10.0.0.1:7000"     # host:port for peers and clients; hostnames allowed
//! http = "10.0.0.1:9000"        # optional: /metrics (Prometheus) and /status
//! ed25519 = "…"                 # public keys, hex
//! x25519 = "…"
//!
//! [[client]]                    # client keys, by index from 0
//! ed25519 = "…"
//! x25519 = "…"
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use shieldwall_core::{Config, Durability, FaultModel, ReplicaId};
use shieldwall_crypto::{Keyring, PublicKeys};

/// Why a cluster file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file could not be read or written.
    #[error("cluster file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file is not a valid cluster file.
    #[error("cluster file {path}: {why}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
}

/// One replica's entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaEntry {
    /// Index, `0..n`.
    pub id: ReplicaId,
    /// `host:port` peers and clients connect to.
    pub address: String,
    /// `host:port` of the HTTP endpoint (`/metrics`, `/status`), if any.
    pub http: Option<String>,
    /// Public keys.
    pub keys: PublicKeys,
}

/// A parsed and validated cluster file.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Identifies the cluster in handshakes.
    pub cluster_id: [u8; 32],
    /// Protocol configuration (n, f, limits, timeouts), validated.
    pub protocol: Config,
    /// The replicas, in id order.
    pub replicas: Vec<ReplicaEntry>,
    /// Client public keys, by key index.
    pub clients: Vec<PublicKeys>,
    /// The directory the file was read from (key files are looked up there by default).
    pub dir: PathBuf,
}

/// Declares [`ProtocolOverrides`] and its conversions from one list of fields, so a new
/// protocol setting is added in one place.
macro_rules! protocol_overrides {
    ($($field:ident: $ty:ty),* $(,)?) => {
        /// Protocol settings a cluster file may override (`n` and `f` follow from the replicas
        /// and the fault model).
        #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct ProtocolOverrides {
            $(
                #[serde(skip_serializing_if = "Option::is_none")]
                $field: Option<$ty>,
            )*
        }

        impl ProtocolOverrides {
            /// Set the overridden fields of `c`.
            pub fn apply(&self, c: &mut Config) {
                $( if let Some(v) = self.$field { c.$field = v; } )*
            }

            /// The overrides that turn `Config::for_replicas(n, model)` into `c`.
            fn diff(c: &Config) -> ProtocolOverrides {
                let d = Config::for_replicas(c.n, c.fault_model);
                ProtocolOverrides { $( $field: (c.$field != d.$field).then_some(c.$field), )* }
            }
        }
    };
}

protocol_overrides!(
    batch_requests_max: u32,
    batch_bytes_max: u32,
    request_bytes_max: u32,
    pipeline_window: u32,
    watermark_window: u64,
    checkpoint_interval: u64,
    request_timeout_ms: u64,
    view_change_timeout_ms: u64,
    view_change_timeout_max_ms: u64,
    fetch_timeout_ms: u64,
    client_pending_max: u32,
    pending_max: u32,
    fetch_batches_max: u32,
    state_chunk_bytes: u32,
    request_macs: bool,
    pipeline_fill: u32,
);

impl ProtocolOverrides {
    /// Parse `name=value` settings (the `[protocol]` table's names and types).
    pub fn from_settings(settings: &[String]) -> Result<ProtocolOverrides, String> {
        let mut table = String::new();
        for s in settings {
            let (k, v) = s
                .split_once('=')
                .ok_or_else(|| format!("`{s}`: expected NAME=VALUE"))?;
            table.push_str(&format!("{} = {}\n", k.trim(), v.trim()));
        }
        toml::from_str(&table).map_err(|e| e.to_string())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileReplica {
    id: ReplicaId,
    address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    http: Option<String>,
    ed25519: String,
    x25519: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileClient {
    ed25519: String,
    x25519: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    cluster_id: String,
    fault_model: FaultModel,
    #[serde(default, skip_serializing_if = "is_memory")]
    durability: Durability,
    #[serde(default, skip_serializing_if = "is_default")]
    protocol: ProtocolOverrides,
    #[serde(rename = "replica")]
    replicas: Vec<FileReplica>,
    #[serde(default, rename = "client")]
    clients: Vec<FileClient>,
}

fn is_default(p: &ProtocolOverrides) -> bool {
    *p == ProtocolOverrides::default()
}

fn is_memory(d: &Durability) -> bool {
    *d == Durability::Memory
}

impl ClusterConfig {
    /// Read and validate a cluster file.
    pub fn load(path: &Path) -> Result<ClusterConfig, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        ClusterConfig::parse(&text, dir).map_err(|why| ConfigFileError::Invalid {
            path: path.display().to_string(),
            why,
        })
    }

    /// Parse and validate the text of a cluster file; `dir` is where key files are found.
    pub fn parse(text: &str, dir: PathBuf) -> Result<ClusterConfig, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let cluster_id = hex::decode(file.cluster_id.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
            .ok_or("cluster_id must be 64 hex digits")?;
        if file.replicas.is_empty() {
            return Err("no [[replica]] entries".into());
        }
        let mut replicas = Vec::with_capacity(file.replicas.len());
        for (i, r) in file.replicas.iter().enumerate() {
            if r.id as usize != i {
                return Err(format!(
                    "replica entries must be listed by id from 0: entry {i} has id {}",
                    r.id
                ));
            }
            check_address(&r.address).map_err(|why| format!("replica {i} address: {why}"))?;
            if let Some(h) = &r.http {
                check_address(h).map_err(|why| format!("replica {i} http: {why}"))?;
            }
            let keys = PublicKeys::parse(&r.ed25519, &r.x25519)
                .map_err(|e| format!("replica {i}: {e}"))?;
            replicas.push(ReplicaEntry {
                id: r.id,
                address: r.address.clone(),
                http: r.http.clone(),
                keys,
            });
        }
        let clients = file
            .clients
            .iter()
            .enumerate()
            .map(|(i, c)| {
                PublicKeys::parse(&c.ed25519, &c.x25519).map_err(|e| format!("client {i}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut protocol = Config::for_replicas(replicas.len() as u32, file.fault_model);
        protocol.durability = file.durability;
        file.protocol.apply(&mut protocol);
        protocol.validate().map_err(|e| e.to_string())?;
        Ok(ClusterConfig {
            cluster_id,
            protocol,
            replicas,
            clients,
            dir,
        })
    }

    /// The file's text for this configuration.
    pub fn to_toml(&self) -> String {
        let file = File {
            cluster_id: hex::encode(self.cluster_id),
            fault_model: self.protocol.fault_model,
            durability: self.protocol.durability,
            protocol: ProtocolOverrides::diff(&self.protocol),
            replicas: self
                .replicas
                .iter()
                .map(|r| FileReplica {
                    id: r.id,
                    address: r.address.clone(),
                    http: r.http.clone(),
                    ed25519: r.keys.ed25519_hex(),
                    x25519: r.keys.x25519_hex(),
                })
                .collect(),
            clients: self
                .clients
                .iter()
                .map(|c| FileClient {
                    ed25519: c.ed25519_hex(),
                    x25519: c.x25519_hex(),
                })
                .collect(),
        };
        format!(
            "# shieldwall cluster file: public, the same for every replica and client\n{}",
            toml::to_string(&file).unwrap_or_default()
        )
    }

    /// Write the file (fails if it exists).
    pub fn write(&self, path: &Path) -> Result<(), ConfigFileError> {
        let io = |source| ConfigFileError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(io)?;
        std::io::Write::write_all(&mut f, self.to_toml().as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)
    }

    /// Number of replicas.
    pub fn n(&self) -> u32 {
        self.protocol.n
    }

    /// The public keys of every principal.
    pub fn keyring(&self) -> Arc<Keyring> {
        Arc::new(Keyring::new(
            self.replicas.iter().map(|r| r.keys).collect(),
            self.clients.clone(),
        ))
    }

    /// Where `replica`'s key file is by default: `replica-<id>.key` next to the cluster file.
    pub fn replica_key_path(&self, replica: ReplicaId) -> PathBuf {
        self.dir.join(format!("replica-{replica}.key"))
    }

    /// Where client key `index`'s file is by default: `client-<index>.key` next to the
    /// cluster file.
    pub fn client_key_path(&self, index: u64) -> PathBuf {
        self.dir.join(format!("client-{index}.key"))
    }
}

/// `host:port` with a numeric port; the host may be a name or an IP address.
fn check_address(a: &str) -> Result<(), String> {
    let (host, port) = a
        .rsplit_once(':')
        .ok_or_else(|| format!("`{a}` is not host:port"))?;
    if host.is_empty() {
        return Err(format!("`{a}` has no host"));
    }
    port.parse::<u16>()
        .map_err(|_| format!("`{a}` has no valid port"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shieldwall_crypto::KeyPair;

    fn sample(n: u32, model: FaultModel) -> ClusterConfig {
        let mut protocol = Config::for_replicas(n, model);
        protocol.batch_requests_max = 77;
        ClusterConfig {
            cluster_id: [7; 32],
            protocol,
            replicas: (0..n)
                .map(|i| ReplicaEntry {
                    id: i,
                    address: format!("node-{i}.example:7000"),
                    http: (i % 2 == 0).then(|| format!("127.0.0.1:{}", 9000 + i)),
                    keys: KeyPair::generate().public(),
                })
                .collect(),
            clients: (0..3).map(|_| KeyPair::generate().public()).collect(),
            dir: PathBuf::from("/tmp"),
        }
    }

    #[test]
    fn round_trips_through_toml() {
        for (n, model) in [(4, FaultModel::Byzantine), (3, FaultModel::Crash)] {
            let mut c = sample(n, model);
            if model == FaultModel::Crash {
                c.protocol.durability = Durability::Durable;
            }
            let text = c.to_toml();
            let back = ClusterConfig::parse(&text, PathBuf::from("/tmp")).unwrap();
            assert_eq!(back.protocol, c.protocol);
            assert_eq!(back.replicas, c.replicas);
            assert_eq!(back.clients, c.clients);
            assert_eq!(back.cluster_id, c.cluster_id);
            assert!(text.contains("batch_requests_max = 77"), "{text}");
            assert_eq!(
                text.contains("durability = \"durable\""),
                model == FaultModel::Crash,
                "memory mode, the default, stays implicit: {text}"
            );
            assert!(
                !text.contains("checkpoint_interval"),
                "defaults stay implicit"
            );
        }
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let good = sample(4, FaultModel::Byzantine).to_toml();
        let cases = [
            (
                good.replace("fault_model = \"byzantine\"", "fault_model = \"odd\""),
                "odd",
            ),
            (good.replacen("id = 1", "id = 5", 1), "listed by id"),
            (
                good.replacen("node-2.example:7000", "node-2.example", 1),
                "host:port",
            ),
            (
                good.replacen("node-1.example:7000", "x:99999", 1),
                "valid port",
            ),
            (
                good.replace("cluster_id = \"07", "cluster_id = \"zz"),
                "cluster_id",
            ),
            (format!("{good}\nbogus = 1\n"), "bogus"),
            (
                good.replace(
                    "fault_model = \"byzantine\"",
                    "fault_model = \"byzantine\"\ndurability = \"disk\"",
                ),
                "unknown variant `disk`",
            ),
            (
                good.replace("batch_requests_max = 77", "watermark_window = 3"),
                "watermark_window",
            ),
        ];
        for (text, expect) in cases {
            let err = ClusterConfig::parse(&text, PathBuf::from(".")).unwrap_err();
            assert!(err.contains(expect), "expected `{expect}` in: {err}");
        }
        // n=3 byzantine tolerates f=0: allowed (f follows from n), and crash n=1 too.
        let c = sample(3, FaultModel::Byzantine);
        let back = ClusterConfig::parse(&c.to_toml(), PathBuf::from(".")).unwrap();
        assert_eq!(back.protocol.f, 0);
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let err = ClusterConfig::load(Path::new("/nonexistent/cluster.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/cluster.toml"), "{err}");
    }
}
