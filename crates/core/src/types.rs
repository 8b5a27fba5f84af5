//! Identifiers and digests shared by every message.

use serde::{Deserialize, Serialize};

/// Index of a replica, `0..n`.
pub type ReplicaId = u32;
/// Identifier of a client, unique in a deployment.
pub type ClientId = u64;
/// View number; the leader of view `v` is replica `v mod n`.
pub type View = u64;
/// Sequence number of an ordered batch; the first batch is 1, 0 is the genesis checkpoint.
pub type Seq = u64;

/// A 32-byte blake3 digest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Digest of `bytes` under a domain-separation `context`.
    pub fn of(context: &str, bytes: &[u8]) -> Digest {
        let mut h = blake3::Hasher::new_derive_key(context);
        h.update(bytes);
        Digest(*h.finalize().as_bytes())
    }

    /// Digest of several byte strings, each length-prefixed so the split is unambiguous.
    pub fn of_parts(context: &str, parts: &[&[u8]]) -> Digest {
        let mut h = blake3::Hasher::new_derive_key(context);
        for p in parts {
            h.update(&(p.len() as u64).to_le_bytes());
            h.update(p);
        }
        Digest(*h.finalize().as_bytes())
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Who signed or MACed a piece of data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Principal {
    /// A replica, by index.
    Replica(ReplicaId),
    /// A client, by id.
    Client(ClientId),
}
