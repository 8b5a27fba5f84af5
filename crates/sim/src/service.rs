//! The test service: a deterministic key-value map.
//!
//! Operations and results travel as postcard bytes. Undecodable operations (a Byzantine client
//! may sign garbage) execute as a no-op that returns [`KvResult::BadOp`], so every replica
//! still agrees on the result.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shieldwall_core::message::{decode, encode, DecodeError};

/// Largest value the service keeps; appends beyond it are truncated (keeps runs bounded).
pub const VALUE_BYTES_MAX: usize = 4096;

/// A key-value operation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KvOp {
    /// Set `key` to `value`; returns the old value.
    Put(Vec<u8>, Vec<u8>),
    /// Read `key`.
    Get(Vec<u8>),
    /// Append `value` to `key`; returns the new value.
    Append(Vec<u8>, Vec<u8>),
}

impl KvOp {
    /// Canonical bytes of the operation.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Strictly decode an operation.
    pub fn decode(bytes: &[u8]) -> Result<KvOp, DecodeError> {
        decode(bytes)
    }

    /// Whether the operation leaves the state unchanged.
    pub fn is_read(&self) -> bool {
        matches!(self, KvOp::Get(_))
    }
}

/// The result of one operation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KvResult {
    /// The value the operation returns (absent key: `None`).
    Value(Option<Vec<u8>>),
    /// The operation bytes did not decode, or a read-only request carried a write.
    BadOp,
}

impl KvResult {
    /// Canonical bytes of the result.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }
}

/// The key-value state machine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvService {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl KvService {
    /// An empty map.
    pub fn new() -> KvService {
        KvService::default()
    }

    /// Apply a decoded operation.
    pub fn apply(&mut self, op: &KvOp) -> KvResult {
        match op {
            KvOp::Put(k, v) => {
                let mut v = v.clone();
                v.truncate(VALUE_BYTES_MAX);
                KvResult::Value(self.map.insert(k.clone(), v))
            }
            KvOp::Get(k) => KvResult::Value(self.map.get(k).cloned()),
            KvOp::Append(k, v) => {
                let cur = self.map.entry(k.clone()).or_default();
                let room = VALUE_BYTES_MAX.saturating_sub(cur.len());
                cur.extend_from_slice(&v[..v.len().min(room)]);
                KvResult::Value(Some(cur.clone()))
            }
        }
    }

    /// Execute operation bytes (ordered), returning encoded result bytes.
    pub fn execute(&mut self, op: &[u8]) -> Vec<u8> {
        match KvOp::decode(op) {
            Ok(op) => self.apply(&op).encode(),
            Err(_) => KvResult::BadOp.encode(),
        }
    }

    /// Evaluate a read-only request on the current state; writes are refused.
    pub fn read(&self, op: &[u8]) -> Vec<u8> {
        match KvOp::decode(op) {
            Ok(KvOp::Get(k)) => KvResult::Value(self.map.get(&k).cloned()).encode(),
            _ => KvResult::BadOp.encode(),
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&Vec<u8>> {
        self.map.get(key)
    }

    /// Canonical snapshot in parts, one per entry in key order (so state transfers in the
    /// simulator carry states of many pieces).
    pub fn snapshot_parts(&self) -> Vec<bytes::Bytes> {
        self.map.iter().map(|e| encode(&e).into()).collect()
    }

    /// The snapshot's parts concatenated (what [`KvService::restore`] takes).
    pub fn snapshot(&self) -> Vec<u8> {
        self.snapshot_parts().concat()
    }

    /// Rebuild from [`KvService::snapshot`] bytes: entries in strictly ascending key order.
    pub fn restore(bytes: &[u8]) -> Result<KvService, DecodeError> {
        let mut map = BTreeMap::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let ((key, value), tail): ((Vec<u8>, Vec<u8>), &[u8]) = postcard::take_from_bytes(rest)
                .map_err(|e| DecodeError::Malformed(e.to_string()))?;
            if map.last_key_value().is_some_and(|(last, _)| *last >= key) {
                return Err(DecodeError::Malformed("keys out of order".into()));
            }
            map.insert(key, value);
            rest = tail;
        }
        Ok(KvService { map })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_and_snapshots() {
        let mut s = KvService::new();
        let put = KvOp::Put(b"a".to_vec(), b"1".to_vec());
        assert_eq!(s.execute(&put.encode()), KvResult::Value(None).encode());
        let app = KvOp::Append(b"a".to_vec(), b"2".to_vec());
        assert_eq!(
            s.execute(&app.encode()),
            KvResult::Value(Some(b"12".to_vec())).encode()
        );
        let get = KvOp::Get(b"a".to_vec());
        assert_eq!(
            s.read(&get.encode()),
            KvResult::Value(Some(b"12".to_vec())).encode()
        );
        assert_eq!(s.read(&put.encode()), KvResult::BadOp.encode());
        assert_eq!(s.execute(&[0xff, 0xff, 0xff]), KvResult::BadOp.encode());
        let snap = s.snapshot();
        let back = KvService::restore(&snap).unwrap();
        assert_eq!(back, s);
        assert!(KvService::restore(&[9, 9]).is_err());
    }

    #[test]
    fn values_are_bounded() {
        let mut s = KvService::new();
        let big = KvOp::Append(b"k".to_vec(), vec![1; 3000]);
        s.execute(&big.encode());
        s.execute(&big.encode());
        assert_eq!(s.get(b"k").map(Vec::len), Some(VALUE_BYTES_MAX));
    }
}
