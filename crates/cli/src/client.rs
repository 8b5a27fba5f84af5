//! `shieldwall client`: one key-value command through the client library, printed like
//! redis-cli prints it.

use std::path::PathBuf;

use shieldwall_kv::{parse_command, KvCommand, KvReply};
use shieldwall_node::{Client, ClusterConfig};

use crate::gateway::ClientKeyArgs;

/// One command.
#[derive(Clone, Debug, clap::Args)]
pub struct ClientArgs {
    /// The cluster file.
    #[arg(long)]
    pub config: PathBuf,
    #[command(flatten)]
    pub client: ClientKeyArgs,
    /// The command and its arguments, as for redis-cli: `set k v`, `get k`, `incr n`, `keys '*'`.
    #[arg(required = true, num_args = 1.., trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// Run the command; `Ok(false)` when the service answered with an error.
pub fn run(args: ClientArgs) -> Result<bool, String> {
    let cluster = ClusterConfig::load(&args.config).map_err(|e| e.to_string())?;
    // Key 0 is the gateway's by convention; the command line uses key 1.
    let options = args.client.options(&cluster, 1)?;
    let command = parse_command(args.command.iter().map(|a| a.as_bytes().to_vec()).collect())?;
    let rt = crate::runtime()?;
    let bytes = rt.block_on(async {
        let mut options = options;
        options.lanes = 1;
        let client = Client::connect(&cluster, options)
            .await
            .map_err(|e| e.to_string())?;
        match command {
            KvCommand::Ordered(op) => client.invoke(op.encode()).await,
            KvCommand::Read(op) => client.invoke_read(op.encode()).await,
        }
        .map_err(|e| e.to_string())
    })?;
    let reply = KvReply::decode(&bytes).map_err(|e| format!("undecodable result: {e}"))?;
    print!("{}", format_reply(&reply));
    Ok(!matches!(reply, KvReply::Error(_)))
}

/// redis-cli's formatting of a reply.
pub fn format_reply(reply: &KvReply) -> String {
    fn quoted(b: &[u8]) -> String {
        let mut s = String::from("\"");
        for &c in b {
            match c {
                b'"' => s.push_str("\\\""),
                b'\\' => s.push_str("\\\\"),
                b'\n' => s.push_str("\\n"),
                b'\r' => s.push_str("\\r"),
                b'\t' => s.push_str("\\t"),
                0x20..=0x7e => s.push(c as char),
                _ => s.push_str(&format!("\\x{c:02x}")),
            }
        }
        s.push('"');
        s
    }
    match reply {
        KvReply::Ok => "OK\n".into(),
        KvReply::Nil => "(nil)\n".into(),
        KvReply::Int(i) => format!("(integer) {i}\n"),
        KvReply::Bulk(b) => format!("{}\n", quoted(b)),
        KvReply::Error(e) => format!("(error) {e}\n"),
        KvReply::Array(items) if items.is_empty() => "(empty array)\n".into(),
        KvReply::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Some(b) => format!("{}) {}\n", i + 1, quoted(b)),
                None => format!("{}) (nil)\n", i + 1),
            })
            .collect(),
        // One reply per pipelined command, in order.
        KvReply::Pipeline(replies) => replies.iter().map(format_reply).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_redis_cli() {
        assert_eq!(
            format_reply(&KvReply::Bulk(b"a\"b\x01".to_vec())),
            "\"a\\\"b\\x01\"\n"
        );
        assert_eq!(format_reply(&KvReply::Int(-3)), "(integer) -3\n");
        assert_eq!(
            format_reply(&KvReply::Array(vec![Some(b"x".to_vec()), None])),
            "1) \"x\"\n2) (nil)\n"
        );
        assert_eq!(format_reply(&KvReply::Array(vec![])), "(empty array)\n");
    }
}
