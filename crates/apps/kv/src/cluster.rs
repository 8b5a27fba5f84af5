//! The gateway's production backend (the replicated cluster through the client library) and
//! the command-line parsing of key-value commands.

use std::time::Duration;

use shieldwall_node::Client;

use crate::command::{dispatch, Action, ServerStatus, Session};
use crate::gateway::{Backend, BackendError, BackendFuture};
use crate::ops::KvOp;

impl Backend for Client {
    fn invoke(&self, op: Vec<u8>) -> BackendFuture<'_> {
        let call = Client::invoke(self, op);
        Box::pin(async move { call.await.map_err(|e| BackendError::new(e.to_string())) })
    }

    fn invoke_read(&self, op: Vec<u8>) -> BackendFuture<'_> {
        let call = Client::invoke_read(self, op);
        Box::pin(async move { call.await.map_err(|e| BackendError::new(e.to_string())) })
    }
}

/// A key-value command from a command line, ready for the client library.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvCommand {
    /// A write: send with [`Client::invoke`].
    Ordered(KvOp),
    /// A read: send with [`Client::invoke_read`].
    Read(KvOp),
}

/// Parse Redis-style arguments (`["SET", "k", "v"]`) into a key-value operation, with the same
/// rules and error messages as the RESP gateway. Connection commands (`PING`, `HELLO`, ...)
/// are not key-value operations and are refused.
pub fn parse_command(args: Vec<Vec<u8>>) -> Result<KvCommand, String> {
    let mut session = Session::new(0, String::new(), String::new());
    let server = ServerStatus {
        connected_clients: 0,
        connections_max: 0,
        tcp_port: 0,
        uptime: Duration::ZERO,
    };
    match dispatch(args, &mut session, &server) {
        Action::Ordered(op) => Ok(KvCommand::Ordered(op)),
        Action::Read(op) => Ok(KvCommand::Read(op)),
        Action::Reply(bytes) | Action::Close(bytes) => {
            let text = String::from_utf8_lossy(&bytes).trim_end().to_string();
            match text.strip_prefix('-') {
                Some(err) => Err(err.to_string()),
                None => Err(
                    "not a key-value command (use redis-cli against the RESP gateway for \
                             connection commands)"
                        .into(),
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<Vec<u8>> {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    #[test]
    fn parses_like_the_gateway() {
        assert!(matches!(
            parse_command(args(&["set", "k", "v"])),
            Ok(KvCommand::Ordered(KvOp::Set { .. }))
        ));
        assert!(matches!(
            parse_command(args(&["GET", "k"])),
            Ok(KvCommand::Read(KvOp::Get { .. }))
        ));
        let err = parse_command(args(&["get"])).unwrap_err();
        assert!(err.contains("wrong number of arguments"), "{err}");
        let err = parse_command(args(&["frob", "x"])).unwrap_err();
        assert!(err.contains("unknown command"), "{err}");
        let err = parse_command(args(&["ping"])).unwrap_err();
        assert!(err.contains("not a key-value command"), "{err}");
    }
}
