//! The deterministic key-value state machine that shieldwall replicates.
//!
//! State is a map from keys to values (ordered, so `KEYS` and snapshots do not depend on
//! insertion order or a hash seed, and indexed by hash for point reads and writes, see `store`;
//! short keys are kept inline, see `key`) plus a byte count derived from it. Every input is bounded by
//! [`KvLimits`]; an operation that would break a limit returns an error result and leaves the
//! state unchanged, the same way on every replica.

use std::collections::BTreeMap;

use bytes::Bytes;
use shieldwall_node::{ClientId, RestoreError, Service};

use crate::glob::Glob;
use crate::ops::{format_integer, parse_integer, varint_len};
use crate::ops::{KvOp, KvReply, SetCondition, PIPELINE_OPS_MAX};

mod key;
mod parts;
mod store;

use key::Key;
use parts::PartCache;
use store::Store;

/// The error lines the service returns, as Redis 7 words them where Redis has the error.
pub mod errors {
    /// A value that must be an integer is not one (or does not fit in `i64`).
    pub const NOT_INTEGER: &str = "ERR value is not an integer or out of range";
    /// `INCR`/`INCRBY`/`DECR`/`DECRBY` would leave `i64`.
    pub const OVERFLOW: &str = "ERR increment or decrement would overflow";
    /// `DECRBY key -9223372036854775808`: the decrement itself cannot be negated.
    pub const DECREMENT_OVERFLOW: &str = "ERR decrement would overflow";
    /// A value (after `SET`, `MSET` or `APPEND`) would exceed [`super::KvLimits::value_bytes_max`].
    pub const VALUE_TOO_LARGE: &str = "ERR string exceeds maximum allowed size (value_bytes_max)";
    /// A key exceeds [`super::KvLimits::key_bytes_max`].
    pub const KEY_TOO_LARGE: &str = "ERR key exceeds maximum allowed size (key_bytes_max)";
    /// The reply would exceed [`super::KvLimits::result_bytes_max`].
    pub const RESULT_TOO_LARGE: &str = "ERR reply exceeds maximum allowed size (result_bytes_max)";
    /// The state would exceed [`super::KvLimits::state_bytes_max`] (Redis's `maxmemory` error).
    pub const OUT_OF_MEMORY: &str = "OOM command not allowed when used memory > 'maxmemory'.";
    /// The operation bytes exceed [`super::KvLimits::op_bytes_max`].
    pub const OP_TOO_LARGE: &str = "ERR operation exceeds maximum allowed size (op_bytes_max)";
    /// The operation bytes do not decode as a [`crate::KvOp`].
    pub const MALFORMED_OP: &str = "ERR malformed operation";
    /// A write operation was sent as a read ([`shieldwall_node::Service::read`]).
    pub const NOT_READ_ONLY: &str = "ERR operation is not read-only";
    /// A [`crate::KvOp::Pipeline`] holds an operation that may not be pipelined, or too many.
    pub const BAD_PIPELINE: &str = "ERR invalid pipeline operation";
}

/// Bytes charged per key on top of its key and value lengths in
/// [`KvLimits::state_bytes_max`]: a rough cost of the key's B-tree entry, its hash-table entry
/// and its value's slot (see `store`), so that millions of empty keys cannot hide from the
/// limit.
pub const ENTRY_OVERHEAD_BYTES: u64 = 128;

/// The snapshot format version (first field of every snapshot). Version 2 cuts the entries in
/// parts (see `parts`); version 1 held them in one sequence.
const SNAPSHOT_VERSION: u32 = 2;

/// Bounds on what the service accepts and returns. Every replica must run with the same
/// limits: they decide which operations fail, so they are part of the replicated behaviour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvLimits {
    /// Longest key, in bytes (default 64 KiB). Longer keys in a write are an error
    /// ([`errors::KEY_TOO_LARGE`]); reads of longer keys simply find nothing.
    pub key_bytes_max: usize,
    /// Longest value, in bytes (default 512 KiB). A `SET`/`MSET` value or an `APPEND` result
    /// above it is an error ([`errors::VALUE_TOO_LARGE`]).
    pub value_bytes_max: usize,
    /// Largest encoded result of one operation, in bytes (default 1 MiB). A `KEYS`, `MGET` or
    /// `GET` whose reply would be larger returns [`errors::RESULT_TOO_LARGE`] instead; the
    /// service stops building the reply as soon as it knows, so it never holds more than
    /// about this much. Keep it above `value_bytes_max` so that any stored value can be read.
    pub result_bytes_max: usize,
    /// Largest encoded operation, in bytes (default 5 MiB): larger operation bytes are
    /// rejected ([`errors::OP_TOO_LARGE`]) before decoding.
    pub op_bytes_max: usize,
    /// Largest state, in bytes: the sum over all keys of key length + value length +
    /// [`ENTRY_OVERHEAD_BYTES`] (default 1 GiB). A write that would grow the state past it is
    /// refused with [`errors::OUT_OF_MEMORY`]; writes that shrink the state always pass.
    pub state_bytes_max: u64,
}

impl Default for KvLimits {
    fn default() -> KvLimits {
        KvLimits {
            key_bytes_max: 64 << 10,
            value_bytes_max: 512 << 10,
            result_bytes_max: 1 << 20,
            op_bytes_max: 5 << 20,
            state_bytes_max: 1 << 30,
        }
    }
}

/// The key-value service: a [`Service`] whose operations are [`KvOp`]s and results
/// [`KvReply`]s, both postcard-encoded.
#[derive(Clone, Debug, Default)]
pub struct KvService {
    map: Store,
    /// Derived from `map` (see [`KvLimits::state_bytes_max`]); not part of the snapshot.
    state_bytes: u64,
    limits: KvLimits,
    /// The snapshot's parts no write touched since the last snapshot (a cache, not state).
    parts: PartCache,
}

/// Two services are equal when their state and limits are (whatever their part caches hold).
impl PartialEq for KvService {
    fn eq(&self, other: &KvService) -> bool {
        self.map == other.map
            && self.state_bytes == other.state_bytes
            && self.limits == other.limits
    }
}

impl Eq for KvService {}

fn entry_bytes(key: &[u8], value: &[u8]) -> u64 {
    key.len() as u64 + value.len() as u64 + ENTRY_OVERHEAD_BYTES
}

/// The state's byte count after a write that removes `removed` and adds `added` bytes, or the
/// error if that would break [`KvLimits::state_bytes_max`] (a write that shrinks the state is
/// always allowed).
fn state_after(
    limits: &KvLimits,
    state_bytes: u64,
    removed: u64,
    added: u64,
) -> Result<u64, KvReply> {
    let after = state_bytes - removed + added;
    if added > removed && after > limits.state_bytes_max {
        return Err(KvReply::error(errors::OUT_OF_MEMORY));
    }
    Ok(after)
}

/// The encoded size of `KvReply::Bulk(value)`: variant index, length, bytes.
fn bulk_reply_bytes(value_len: usize) -> usize {
    1 + varint_len(value_len) + value_len
}

/// The encoded size of one element of `KvReply::Array`.
fn array_element_bytes(element: Option<&[u8]>) -> usize {
    match element {
        None => 1,
        Some(bytes) => 1 + varint_len(bytes.len()) + bytes.len(),
    }
}

impl KvService {
    /// An empty store with the default [`KvLimits`].
    pub fn new() -> KvService {
        KvService::default()
    }

    /// An empty store with the given limits.
    pub fn with_limits(limits: KvLimits) -> KvService {
        KvService {
            limits,
            ..KvService::default()
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &KvLimits {
        &self.limits
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The state size as [`KvLimits::state_bytes_max`] counts it.
    pub fn state_bytes(&self) -> u64 {
        self.state_bytes
    }

    /// The value of `key`, if any.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.map.get(key).map(Vec::as_slice)
    }

    /// Executes any operation (reads too) and returns its result. Deterministic; never panics.
    /// On an error result the state is unchanged.
    pub fn apply(&mut self, op: KvOp) -> KvReply {
        match op {
            KvOp::Set {
                key,
                value,
                condition,
                get,
            } => self.set(key, value, condition, get),
            KvOp::Del { keys } => {
                let mut removed = 0;
                for key in &keys {
                    if let Some(value) = self.map.remove(key.as_slice()) {
                        self.parts.touch(key);
                        self.state_bytes -= entry_bytes(key, &value);
                        removed += 1;
                    }
                }
                KvReply::Int(removed)
            }
            KvOp::IncrBy { key, delta } => self.incr_by(key, delta),
            KvOp::DecrBy { key, delta } => match delta.checked_neg() {
                Some(delta) => self.incr_by(key, delta),
                None => KvReply::error(errors::DECREMENT_OVERFLOW),
            },
            KvOp::Append { key, value } => self.append(key, value),
            KvOp::MSet { pairs } => self.mset(pairs),
            KvOp::FlushAll => {
                self.map.clear();
                self.parts.clear();
                self.state_bytes = 0;
                KvReply::Ok
            }
            KvOp::Pipeline { ops } => {
                if ops.len() > PIPELINE_OPS_MAX {
                    return KvReply::error(errors::BAD_PIPELINE);
                }
                let decoded: Option<Vec<KvOp>> = ops
                    .iter()
                    .map(|bytes| KvOp::decode(bytes).ok().filter(KvOp::pipelines))
                    .collect();
                match decoded {
                    Some(ops) => {
                        KvReply::Pipeline(ops.into_iter().map(|op| self.apply(op)).collect())
                    }
                    None => KvReply::error(errors::BAD_PIPELINE),
                }
            }
            read => self.query(&read),
        }
    }

    /// Answers a read-only operation ([`KvOp::is_read`]) from the current state. A write
    /// returns [`errors::NOT_READ_ONLY`].
    pub fn query(&self, op: &KvOp) -> KvReply {
        match op {
            KvOp::Get { key } => match self.map.get(key.as_slice()) {
                None => KvReply::Nil,
                Some(value) if bulk_reply_bytes(value.len()) > self.limits.result_bytes_max => {
                    KvReply::error(errors::RESULT_TOO_LARGE)
                }
                Some(value) => KvReply::Bulk(value.clone()),
            },
            KvOp::Exists { keys } => {
                let found = keys
                    .iter()
                    .filter(|k| self.map.contains_key(k.as_slice()))
                    .count();
                KvReply::Int(found as i64)
            }
            KvOp::Strlen { key } => KvReply::Int(
                self.map
                    .get(key.as_slice())
                    .map_or(0, |value| value.len() as i64),
            ),
            KvOp::MGet { keys } => self.bounded_array(
                keys.len(),
                keys.iter()
                    .map(|key| self.map.get(key.as_slice()).map(Vec::as_slice)),
            ),
            KvOp::DbSize => KvReply::Int(self.map.len() as i64),
            KvOp::Keys { pattern } => self.keys(pattern),
            _ => KvReply::error(errors::NOT_READ_ONLY),
        }
    }

    /// Builds an array reply from `elements`, or [`errors::RESULT_TOO_LARGE`] as soon as the
    /// encoded reply is known to exceed the limit. `count_hint` is the number of elements when
    /// known up front (for the length prefix); otherwise the exact total is checked at the end.
    fn bounded_array<'a>(
        &self,
        count_hint: usize,
        elements: impl Iterator<Item = Option<&'a [u8]>>,
    ) -> KvReply {
        let limit = self.limits.result_bytes_max;
        // Variant index, then the element count.
        let mut total = 1 + varint_len(count_hint);
        let mut out = Vec::new();
        for element in elements {
            total += array_element_bytes(element);
            if total > limit {
                return KvReply::error(errors::RESULT_TOO_LARGE);
            }
            out.push(element.map(<[u8]>::to_vec));
        }
        let total = total - varint_len(count_hint) + varint_len(out.len());
        if total > limit {
            return KvReply::error(errors::RESULT_TOO_LARGE);
        }
        KvReply::Array(out)
    }

    fn keys(&self, pattern: &[u8]) -> KvReply {
        let glob = Glob::new(pattern);
        let prefix = glob.literal_prefix();
        let matching = self
            .map
            .from(std::ops::Bound::Included(prefix.as_slice()))
            .map(|(key, _)| key)
            .take_while(|key| key.starts_with(&prefix))
            .filter(|key| glob.matches(key))
            .map(|key| Some(key.as_slice()));
        self.bounded_array(0, matching)
    }

    fn check_key(&self, key: &[u8]) -> Result<(), KvReply> {
        if key.len() > self.limits.key_bytes_max {
            return Err(KvReply::error(errors::KEY_TOO_LARGE));
        }
        Ok(())
    }

    fn check_value(&self, value_len: usize) -> Result<(), KvReply> {
        if value_len > self.limits.value_bytes_max {
            return Err(KvReply::error(errors::VALUE_TOO_LARGE));
        }
        Ok(())
    }

    /// Checks that replacing `removed` bytes of state with `added` bytes keeps within the
    /// state limit (shrinking is always allowed) and returns the new state size.
    fn check_state(&self, removed: u64, added: u64) -> Result<u64, KvReply> {
        state_after(&self.limits, self.state_bytes, removed, added)
    }

    /// Stores `value` under `key` after the limits were checked.
    fn store(&mut self, key: Vec<u8>, value: Vec<u8>, state_bytes: u64) {
        self.state_bytes = state_bytes;
        self.parts.touch(&key);
        self.map.insert(&key, value);
    }

    fn set(&mut self, key: Vec<u8>, value: Vec<u8>, condition: SetCondition, get: bool) -> KvReply {
        if let Err(e) = self.check_key(&key).and(self.check_value(value.len())) {
            return e;
        }
        // One search of the index: the write goes to the slot it found.
        let slot = self.map.slot(&key);
        let old = slot.map(|slot| self.map.value(slot));
        let reply_if_done = match (get, old) {
            (false, _) => KvReply::Ok,
            (true, None) => KvReply::Nil,
            (true, Some(old)) => KvReply::Bulk(old.clone()),
        };
        let write = match condition {
            SetCondition::Always => true,
            SetCondition::IfAbsent => old.is_none(),
            SetCondition::IfPresent => old.is_some(),
        };
        if !write {
            // With GET, Redis still answers the old value when the condition fails.
            return if get { reply_if_done } else { KvReply::Nil };
        }
        let removed = old.map_or(0, |old| entry_bytes(&key, old));
        let after = match self.check_state(removed, entry_bytes(&key, &value)) {
            Ok(after) => after,
            Err(e) => return e,
        };
        match slot {
            Some(slot) => {
                self.state_bytes = after;
                self.parts.touch(&key);
                self.map.replace(slot, value);
            }
            None => self.store(key, value, after),
        }
        reply_if_done
    }

    fn incr_by(&mut self, key: Vec<u8>, delta: i64) -> KvReply {
        if let Err(e) = self.check_key(&key) {
            return e;
        }
        let old = self.map.get(key.as_slice());
        let current = match old {
            None => 0,
            Some(bytes) => match parse_integer(bytes) {
                Some(n) => n,
                None => return KvReply::error(errors::NOT_INTEGER),
            },
        };
        let Some(new) = current.checked_add(delta) else {
            return KvReply::error(errors::OVERFLOW);
        };
        let value = format_integer(new);
        let removed = old.map_or(0, |old| entry_bytes(&key, old));
        // An integer is at most 20 bytes; only the value limit of a tiny configuration or a
        // full state can refuse it.
        if let Err(e) = self.check_value(value.len()) {
            return e;
        }
        match self.check_state(removed, entry_bytes(&key, &value)) {
            Ok(after) => {
                self.store(key, value, after);
                KvReply::Int(new)
            }
            Err(e) => e,
        }
    }

    fn append(&mut self, key: Vec<u8>, value: Vec<u8>) -> KvReply {
        if let Err(e) = self.check_key(&key) {
            return e;
        }
        let old_len = self.map.get(key.as_slice()).map(Vec::len);
        let new_len = old_len.unwrap_or(0).saturating_add(value.len());
        if let Err(e) = self.check_value(new_len) {
            return e;
        }
        let removed = old_len.map_or(0, |len| {
            key.len() as u64 + len as u64 + ENTRY_OVERHEAD_BYTES
        });
        let added = key.len() as u64 + new_len as u64 + ENTRY_OVERHEAD_BYTES;
        let after = match self.check_state(removed, added) {
            Ok(after) => after,
            Err(e) => return e,
        };
        self.state_bytes = after;
        self.parts.touch(&key);
        match self.map.get_mut(key.as_slice()) {
            Some(existing) => existing.extend_from_slice(&value),
            None => {
                self.map.insert(&key, value);
            }
        }
        KvReply::Int(new_len as i64)
    }

    fn mset(&mut self, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> KvReply {
        for (key, value) in &pairs {
            if let Err(e) = self.check_key(key).and(self.check_value(value.len())) {
                return e;
            }
        }
        // The final value of each key (a later pair wins), to charge the state exactly once
        // per key before writing anything: MSET is all or nothing.
        let mut last: BTreeMap<&[u8], &[u8]> = BTreeMap::new();
        for (key, value) in &pairs {
            last.insert(key, value);
        }
        let (mut removed, mut added) = (0u64, 0u64);
        for (key, value) in &last {
            if let Some(old) = self.map.get(key) {
                removed += entry_bytes(key, old);
            }
            added += entry_bytes(key, value);
        }
        let after = match self.check_state(removed, added) {
            Ok(after) => after,
            Err(e) => return e,
        };
        for (key, value) in pairs {
            self.parts.touch(&key);
            self.map.insert(&key, value);
        }
        self.state_bytes = after;
        KvReply::Ok
    }

    /// Decodes operation bytes with the size limit applied first.
    fn decode_op(&self, op: &[u8]) -> Result<KvOp, KvReply> {
        if op.len() > self.limits.op_bytes_max {
            return Err(KvReply::error(errors::OP_TOO_LARGE));
        }
        KvOp::decode(op).map_err(|_| KvReply::error(errors::MALFORMED_OP))
    }
}

type Entries = Vec<(serde_bytes::ByteBuf, serde_bytes::ByteBuf)>;

impl Service for KvService {
    /// Decodes `op` (size-checked first) and applies it. Undecodable or oversized bytes get an
    /// error result ([`errors::MALFORMED_OP`], [`errors::OP_TOO_LARGE`]) and change nothing.
    fn execute(&mut self, _client: ClientId, op: &[u8]) -> Vec<u8> {
        match self.decode_op(op) {
            Ok(op) => self.apply(op).encode(),
            Err(e) => e.encode(),
        }
    }

    /// Answers read operations; a write gets [`errors::NOT_READ_ONLY`], garbage the same
    /// errors as [`Service::execute`].
    fn read(&self, _client: ClientId, op: &[u8]) -> Vec<u8> {
        match self.decode_op(op) {
            Ok(op) if op.is_read() => self.query(&op).encode(),
            Ok(_) => KvReply::error(errors::NOT_READ_ONLY).encode(),
            Err(e) => e.encode(),
        }
    }

    /// The postcard encoding of `version: u32` as the first part, then each part of the
    /// entries in ascending key order as a sequence of (key, value) byte strings, cut by a rule
    /// that depends only on the entries (`parts`): equal maps give equal parts. Parts no
    /// write touched since the previous call are the buffers returned then.
    fn snapshot(&mut self) -> Vec<Bytes> {
        let (parts, _) = self.parts.parts(&self.map);
        let mut all = Vec::with_capacity(parts.len() + 1);
        // Postcard's varint of a version below 128 is that one byte; a static buffer is the
        // same buffer at every call.
        static HEADER: [u8; 1] = [SNAPSHOT_VERSION as u8];
        const _: () = assert!(SNAPSHOT_VERSION < 128);
        all.push(Bytes::from_static(&HEADER));
        all.extend(parts);
        all
    }

    /// Replaces the state with a snapshot. Rejects (leaving the state unchanged) bytes that
    /// are not exactly one snapshot, an unknown version, a part not cut where the rule cuts it
    /// or keys out of strictly ascending order (a non-canonical snapshot), and entries or a
    /// total beyond this service's [`KvLimits`] (a replica configured with other limits would
    /// diverge).
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        let malformed = |e: postcard::Error| RestoreError(format!("malformed snapshot: {e}"));
        let (version, mut rest): (u32, &[u8]) =
            postcard::take_from_bytes(snapshot).map_err(malformed)?;
        if version != SNAPSHOT_VERSION {
            return Err(RestoreError(format!(
                "unknown snapshot version {version} (expected {SNAPSHOT_VERSION})"
            )));
        }
        let mut entries = Entries::new();
        while !rest.is_empty() {
            let (part, tail): (Entries, &[u8]) =
                postcard::take_from_bytes(rest).map_err(malformed)?;
            if !parts::is_canonical_part(&part, tail.is_empty()) {
                return Err(RestoreError(format!(
                    "the part starting at entry {} is not cut where snapshots cut",
                    entries.len()
                )));
            }
            entries.extend(part);
            rest = tail;
        }
        let mut state_bytes: u64 = 0;
        for (i, (key, value)) in entries.iter().enumerate() {
            if i > 0 && entries[i - 1].0 >= *key {
                return Err(RestoreError(format!(
                    "entry {i}: keys are not in strictly ascending order"
                )));
            }
            if key.len() > self.limits.key_bytes_max || value.len() > self.limits.value_bytes_max {
                return Err(RestoreError(format!(
                    "entry {i}: key or value exceeds this replica's limits"
                )));
            }
            state_bytes += entry_bytes(key, value);
        }
        if state_bytes > self.limits.state_bytes_max {
            return Err(RestoreError(format!(
                "state of {state_bytes} bytes exceeds state_bytes_max {}",
                self.limits.state_bytes_max
            )));
        }
        // Sorted input: the map is built in one pass.
        self.map = entries
            .into_iter()
            .map(|(k, v)| (k.into_vec(), v.into_vec()))
            .collect();
        self.state_bytes = state_bytes;
        self.parts.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests;
