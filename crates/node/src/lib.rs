//! The shieldwall runtime: the replica server that drives the ordering engine over TCP
//! ([`ReplicaServer`]), the async client library ([`Client`]), the cluster file
//! ([`ClusterConfig`]) and the [`Service`] contract applications implement.
//!
//! The process must ignore `SIGPIPE` (every Rust program does unless it changed that): sockets
//! are written with `writev`, which raises it when the peer has reset the connection.
#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod http;
pub mod metrics;
mod net;
mod outbox;
pub mod server;
pub mod service;

pub use client::{AuthMode, Client, ClientError, ClientOptions};
pub use config::{ClusterConfig, ConfigFileError, ProtocolOverrides, ReplicaEntry};
pub use net::NetError;
pub use server::{Limits, ReplicaOptions, ReplicaServer, ReplicaStatus, ServerError};
pub use service::{ClientId, RestoreError, Service};
