//! shieldwall-kv: a replicated key-value store that speaks the Redis protocol.
//!
//! Two halves:
//! - **The service** ([`KvService`]): a deterministic state machine implementing
//!   [`shieldwall_node::Service`]. Operations ([`KvOp`]) and results ([`KvReply`]) are
//!   postcard bytes; the commands are Redis's string commands (`GET`, `SET` with `NX`/`XX`/`GET`,
//!   `DEL`, `EXISTS`, `INCR[BY]`, `DECR[BY]`, `APPEND`, `STRLEN`, `MGET`, `MSET`, `DBSIZE`,
//!   `KEYS`, `FLUSHALL`) with Redis 7's semantics and error strings. Every input is bounded by
//!   [`KvLimits`]; bytes that do not decode (a Byzantine client can sign anything) get an
//!   error result, never a panic.
//! - **The gateway** ([`serve`], [`serve_with_shutdown`]): a TCP server that speaks RESP2 to
//!   unmodified Redis clients (`redis-cli`, `redis-benchmark`, client libraries) and forwards
//!   each key-value command to a [`Backend`]: the replicated cluster in production, a
//!   [`LocalBackend`] in tests. Writes go through [`Backend::invoke`], reads through
//!   [`Backend::invoke_read`]; the connection handshake (`HELLO`, `CLIENT`, `COMMAND`,
//!   `CONFIG GET`, `INFO`, `PING`, `SELECT 0`, ...) is answered by the gateway itself.
//!
//! The RESP2 codec ([`resp`]) is pure and bounded: [`resp::RespParser`] parses a stream
//! incrementally within [`resp::ParserLimits`], recovers from protocol errors, and
//! [`resp::parse_command`] is its stateless entry point for fuzzing.
//!
//! See `README.md` in this crate for the supported commands and how they differ from Redis.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod batching;
mod cluster;
mod command;
pub mod gateway;
pub mod glob;
pub mod ops;
pub mod resp;
pub mod service;

pub use batching::{BatchingBackend, BatchingOptions};
pub use cluster::{parse_command, KvCommand};
pub use command::{errors as gateway_errors, write_kv_reply, REDIS_VERSION};
pub use gateway::{
    serve, serve_with_shutdown, Backend, BackendError, BackendFuture, GatewayOptions, LocalBackend,
};
pub use ops::{DecodeError, KvOp, KvReply, SetCondition, PIPELINE_OPS_MAX};
pub use service::{KvLimits, KvService};
