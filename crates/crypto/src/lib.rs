//! Cryptography for the shieldwall runtime.
//!
//! - [`keys`]: long-term key pairs (an Ed25519 signing key and an X25519 key per principal), the
//!   key files `shieldwall keygen` writes, and their public halves as they appear in a cluster
//!   file.
//! - [`auth`]: [`NodeAuth`], the production [`shieldwall_core::Authenticator`]: Ed25519
//!   signatures (`ed25519-zebra`: ZIP 215 rules, so single and batch verification agree), batch
//!   verification, and blake3 keyed MACs under pairwise keys derived by X25519.
//! - [`pool`]: a pool of worker threads that takes jobs in batches, so signature checks run in
//!   parallel, off the protocol core's thread, and can use batch verification.
//!
//! This crate knows nothing of protocol messages beyond "bytes to sign".

#![forbid(unsafe_code)]

pub mod auth;
pub mod deferred;
pub mod keys;
pub mod pool;

pub use auth::{Keyring, NodeAuth};
pub use deferred::{RecordedSig, Recorder, VerifiedCache};
pub use keys::{
    client_id, client_key_index, client_lane, KeyError, KeyPair, PublicKeys, CLIENT_LANES,
};
pub use pool::{BatchPool, PoolClosed};
