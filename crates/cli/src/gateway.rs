//! `shieldwall kv-gateway`: the RESP2 front of the key-value service.

use std::path::PathBuf;
use std::sync::Arc;

use shieldwall_kv::{serve_with_shutdown, GatewayOptions};
use shieldwall_node::{Client, ClientOptions, ClusterConfig};
use tokio::net::TcpListener;

/// How to run the gateway.
#[derive(Clone, Debug, clap::Args)]
pub struct GatewayArgs {
    /// The cluster file.
    #[arg(long)]
    pub config: PathBuf,
    /// Address Redis clients connect to.
    #[arg(long, default_value = "127.0.0.1:6379")]
    pub listen: String,
    #[command(flatten)]
    pub client: ClientKeyArgs,
}

/// Which client key to use.
#[derive(Clone, Debug, clap::Args)]
pub struct ClientKeyArgs {
    /// Client key index in the cluster file; one process per key at a time (default: 0 for
    /// the gateway, 1 for `client`).
    #[arg(long)]
    pub client_key: Option<u64>,
    /// The client key file (default: client-<index>.key next to the cluster file).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Operation timeout in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
}

impl ClientKeyArgs {
    /// Client options for the chosen key (`default_key` if none was given).
    pub fn options(
        &self,
        cluster: &ClusterConfig,
        default_key: u64,
    ) -> Result<ClientOptions, String> {
        let key = self.client_key.unwrap_or(default_key);
        let mut o = match &self.key {
            Some(path) => {
                let p = shieldwall_core::Principal::Client(shieldwall_crypto::client_id(key, 0));
                let keys =
                    shieldwall_crypto::KeyPair::read_file(path, p).map_err(|e| e.to_string())?;
                ClientOptions::new(key, keys)
            }
            None => ClientOptions::from_key_file(cluster, key).map_err(|e| e.to_string())?,
        };
        o.timeout = std::time::Duration::from_millis(self.timeout_ms);
        Ok(o)
    }
}

/// Connect to the cluster, then serve RESP on `listener` until `shutdown` completes.
pub async fn serve(
    cluster: &ClusterConfig,
    options: ClientOptions,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), String> {
    let mut options = options;
    options.lanes = 64;
    let client = Client::connect(cluster, options)
        .await
        .map_err(|e| e.to_string())?;
    serve_with_shutdown(
        listener,
        Arc::new(client),
        GatewayOptions::default(),
        shutdown,
    )
    .await
    .map_err(|e| e.to_string())
}

pub fn run(args: GatewayArgs) -> Result<(), String> {
    let cluster = ClusterConfig::load(&args.config).map_err(|e| e.to_string())?;
    let options = args.client.options(&cluster, 0)?;
    let key = options.key_index;
    let rt = crate::runtime()?;
    rt.block_on(async {
        let listener = TcpListener::bind(&args.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
        eprintln!("RESP gateway on {} (client key {})", args.listen, key);
        serve(&cluster, options, listener, crate::shutdown_signal()).await
    })
}
