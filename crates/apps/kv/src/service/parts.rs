//! The snapshot in parts (ADR 012), so a checkpoint costs what changed since the last one, not
//! the size of the state.
//!
//! The entries, in key order, are cut into parts by a rule that depends only on the entries:
//! a part starts at the first key or right after a cut, and is cut after the first key that is
//! a *boundary* (one key in 16, by a fixed hash of the key) once the part holds at least
//! [`PART_BYTES_MIN`] encoded bytes; the last part ends with the last key. Two replicas with the
//! same entries therefore cut the same parts, whatever writes led there. Each part's encoding
//! is kept until the next snapshot finds a write in its key range ([`PartCache`]); the others
//! are handed back as the very buffers of the previous snapshot, which the engine recognises
//! and does not hash again.
//!
//! Keys chosen so that none is a boundary make one large part (each snapshot then re-encodes
//! it, the cost of a snapshot without parts); the minimum size bounds the number of parts, and
//! so the size of a state-transfer manifest, for any choice of keys.

use std::ops::Bound::{Excluded, Included, Unbounded};

use bytes::Bytes;

use super::{Key, Store};
use crate::ops::varint_len;

/// A part is cut only once it holds this many encoded bytes (then at the next boundary key).
const PART_BYTES_MIN: usize = 1 << 10;

/// One key in `2^BOUNDARY_BITS` is a boundary.
const BOUNDARY_BITS: u32 = 4;

/// Whether a part may end with `key` (a fixed function of the key: FNV-1a, then a 64-bit
/// finaliser so that the top bits depend on every byte).
fn is_boundary(key: &[u8]) -> bool {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h >> (64 - BOUNDARY_BITS) == 0
}

/// Postcard's varint (LEB128) of `value`.
fn put_varint(out: &mut Vec<u8>, mut value: usize) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// The cut rule, applied entry by entry from a part's first: the one definition both the
/// encoder and `restore`'s check use.
#[derive(Default)]
struct Cut {
    /// Encoded bytes of the entries so far.
    size: usize,
}

impl Cut {
    /// Whether the part ends after this entry.
    fn after(&mut self, key: &[u8], value: &[u8]) -> bool {
        self.size += varint_len(key.len()) + key.len() + varint_len(value.len()) + value.len();
        self.size >= PART_BYTES_MIN && is_boundary(key)
    }
}

/// A kept part: its last key, whether it was cut there (else it ran to the end of the map and
/// grows with any key added after it) and its encoding.
#[derive(Clone, Debug)]
struct Part {
    last: Key,
    cut: bool,
    bytes: Bytes,
}

/// The encodings of the parts cut at the last snapshot, and the keys written since.
///
/// A write only notes its key (no search). The next snapshot sorts the noted keys and walks the
/// kept parts, which covered every key back to back, alongside them: a kept part is reused when
/// it starts right after the previous part and no noted key lies between the end of the
/// previous part and its own end (nor, for the last part, anywhere after it); everything else
/// is encoded again from the map.
#[derive(Clone, Debug, Default)]
pub(super) struct PartCache {
    /// In key order: first key and part.
    parts: Vec<(Key, Part)>,
    /// Keys written since the last snapshot, in write order.
    written: Vec<Key>,
    /// Their bytes.
    written_bytes: usize,
    /// An empty vector with room for the parts: the next snapshot builds its list in it and
    /// the previous list's becomes the spare. At half a million keys the list is 1.7 MB, and
    /// allocating it afresh at every checkpoint cost page faults and zeroing.
    spare: Vec<(Key, Part)>,
}

/// Noted keys (after removing repeats) or bytes of noted keys beyond which the kept parts are
/// dropped instead (a store that is written but seldom snapshotted keeps bounded memory; its
/// next snapshot encodes everything).
pub(super) const WRITTEN_MAX: usize = 1 << 18;
const WRITTEN_BYTES_MAX: usize = 64 << 20;

impl PartCache {
    /// `key` is being written (set, changed or deleted).
    pub(super) fn touch(&mut self, key: &[u8]) {
        if self.parts.is_empty() {
            // Nothing kept: the next snapshot encodes everything anyway.
            return;
        }
        if self.written.len() >= WRITTEN_MAX.max(self.parts.len()) {
            // Many writes to few keys are fine: drop the repeats first.
            self.written.sort_unstable();
            self.written.dedup();
            self.written_bytes = self.written.iter().map(|k| k.len()).sum();
            if self.written.len() >= WRITTEN_MAX.max(self.parts.len()) / 2 {
                self.clear();
                return;
            }
        }
        if self.written_bytes + key.len() > WRITTEN_BYTES_MAX {
            self.clear();
            return;
        }
        self.written_bytes += key.len();
        self.written.push(Key::from(key));
    }

    /// Forget every part (the map was replaced or cleared).
    pub(super) fn clear(&mut self) {
        self.parts.clear();
        self.written.clear();
        self.written_bytes = 0;
    }

    /// The parts of `map` in key order: kept ones as they are, the others encoded (and kept).
    /// Returns the parts and the bytes encoded.
    pub(super) fn parts(&mut self, map: &Store) -> (Vec<Bytes>, usize) {
        // Both vectors keep their room for the next snapshot.
        let mut written_keys = std::mem::take(&mut self.written);
        self.written_bytes = 0;
        written_keys.sort_unstable();
        written_keys.dedup();
        let mut written = written_keys.iter().peekable();
        let mut previous = std::mem::take(&mut self.parts);
        let mut kept = previous.drain(..).peekable();
        let mut parts = std::mem::take(&mut self.spare);
        parts.clear();
        parts.reserve(kept.len() + 1);
        let mut encoded = 0;
        // Whether the last part was reused (so the next kept part starts right after it)
        // rather than encoded (its end may have moved).
        let mut after_kept = true;
        loop {
            let cursor = parts.last().map(|(_, p)| p.last.as_slice());
            // Kept parts that start inside what was emitted are no longer parts; written keys
            // there are dealt with.
            while kept
                .next_if(|(f, _)| cursor.is_some_and(|c| &f[..] <= c))
                .is_some()
            {}
            while written
                .next_if(|k| cursor.is_some_and(|c| &k[..] <= c))
                .is_some()
            {}
            let next_written: Option<&Key> = written.peek().copied();
            // No write since the cursor, up to the part's end (or at all, for an uncut one).
            let untouched = |p: &Part| match next_written {
                None => true,
                Some(k) => p.cut && *k > p.last,
            };
            if let Some(part) = kept.next_if(|(_, p)| after_kept && untouched(p)) {
                parts.push(part);
                continue;
            }
            let next = match cursor {
                None => map.from(Unbounded).next(),
                Some(c) => map.from(Excluded(c)).next(),
            }
            .map(|(k, _)| k);
            let Some(first) = next else {
                break;
            };
            if let Some(part) = kept.next_if(|(f, p)| f == first && untouched(p)) {
                // The encoded part ended where a kept one starts: back in step.
                parts.push(part);
                after_kept = true;
                continue;
            }
            let part = encode_part(map, first);
            encoded += part.bytes.len();
            parts.push((first.clone(), part));
            after_kept = false;
        }
        drop(kept);
        let out = parts.iter().map(|(_, p)| p.bytes.clone()).collect();
        self.parts = parts;
        self.spare = previous;
        written_keys.clear();
        self.written = written_keys;
        (out, encoded)
    }
}

/// The part of `map` that starts at `first`: postcard's encoding of a sequence of (key, value)
/// byte-string pairs.
fn encode_part(map: &Store, first: &[u8]) -> Part {
    let mut entries = Vec::new();
    let mut rule = Cut::default();
    let mut cut = false;
    for (key, value) in map.from(Included(first)) {
        entries.push((key, value));
        if rule.after(key, value) {
            cut = true;
            break;
        }
    }
    // Postcard's layout, written by hand: through `postcard::to_extend` a from-scratch
    // snapshot of the bench's state measured 42 ms against 36-39 ms this way (`cargo bench -p
    // shieldwall-kv --bench snapshot`). The size counted is exactly the encoding.
    let mut bytes = Vec::with_capacity(rule.size + varint_len(entries.len()));
    put_varint(&mut bytes, entries.len());
    for (key, value) in &entries {
        put_varint(&mut bytes, key.len());
        bytes.extend_from_slice(key);
        put_varint(&mut bytes, value.len());
        bytes.extend_from_slice(value);
    }
    Part {
        last: entries
            .last()
            .map(|(k, _)| (*k).clone())
            .unwrap_or_default(),
        cut,
        bytes: bytes.into(),
    }
}

/// Whether `entries`, one decoded part, is cut where the rule cuts it: at its first boundary key
/// past the minimum size, which must be its last entry unless `last_part`.
pub(super) fn is_canonical_part(
    entries: &[(impl AsRef<[u8]>, impl AsRef<[u8]>)],
    last_part: bool,
) -> bool {
    let mut rule = Cut::default();
    for (i, (key, value)) in entries.iter().enumerate() {
        if rule.after(key.as_ref(), value.as_ref()) {
            return i + 1 == entries.len();
        }
    }
    last_part && !entries.is_empty()
}
