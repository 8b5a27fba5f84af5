//! `shieldwall kv-gateway`: the RESP2 front of the key-value service.

use std::path::PathBuf;
use std::sync::Arc;

use shieldwall_kv::{serve_with_shutdown, BatchingBackend, BatchingOptions, GatewayOptions};
use shieldwall_node::{AuthMode, Client, ClientOptions, ClusterConfig};
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
    /// Request authentication: signature (Ed25519) or mac (one MAC per replica, far cheaper;
    /// the cluster must have `request_macs = true`). Default: mac when the cluster accepts
    /// it, else signature.
    #[arg(long, value_enum)]
    pub auth: Option<AuthArg>,
}

/// `--auth` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthArg {
    /// An Ed25519 signature per request.
    Signature,
    /// A MAC per replica (needs `request_macs = true` in the cluster file).
    Mac,
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
        o.auth_mode = auth_mode(self.auth, cluster.protocol.request_macs)?;
        Ok(o)
    }
}

/// The authentication a client uses: what was asked for, else MACs where the cluster accepts
/// them.
pub(crate) fn auth_mode(
    asked: Option<AuthArg>,
    cluster_accepts_macs: bool,
) -> Result<AuthMode, String> {
    match (asked, cluster_accepts_macs) {
        (Some(AuthArg::Mac), false) => Err("--auth mac: the cluster does not accept \
             MAC-authenticated requests (request_macs = true in its [protocol] table)"
            .into()),
        (Some(AuthArg::Mac), true) | (None, true) => Ok(AuthMode::Mac),
        (Some(AuthArg::Signature), _) | (None, false) => Ok(AuthMode::Signature),
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
    // Writes of all connections are batched into pipelines: one protocol request each.
    let backend = BatchingBackend::new(Arc::new(client), BatchingOptions::default());
    serve_with_shutdown(
        listener,
        Arc::new(backend),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_defaults_to_macs_where_the_cluster_accepts_them() {
        assert_eq!(auth_mode(None, true), Ok(AuthMode::Mac));
        assert_eq!(auth_mode(None, false), Ok(AuthMode::Signature));
        assert_eq!(
            auth_mode(Some(AuthArg::Signature), true),
            Ok(AuthMode::Signature)
        );
        assert!(auth_mode(Some(AuthArg::Mac), false)
            .unwrap_err()
            .contains("request_macs = true"));
    }
}
