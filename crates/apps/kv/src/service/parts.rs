//! The snapshot in parts (ADR 012), so a checkpoint costs what changed since the last one, not
//! the size of the state.
//!
//! The entries, in key order, are cut into parts by a rule that depends only on the entries:
//! a part starts at the first key or right after a cut, and is cut after the first key that is
//! a *boundary* (one key in 64, by a fixed hash of the key) once the part holds at least
//! [`PART_BYTES_MIN`] encoded bytes; the last part ends with the last key. Two replicas with the
//! same entries therefore cut the same parts, whatever writes led there. Each part's encoding
//! is kept (keyed by its first key) until a write lands in its key range; the next snapshot
//! re-encodes only such parts and hands back the kept buffers of the others, which the engine
//! recognises and does not hash again.
//!
//! Keys chosen so that none is a boundary make one large part (each snapshot then re-encodes
//! it, the cost of a snapshot without parts); the minimum size bounds the number of parts, and
//! so the size of a state-transfer manifest, for any choice of keys.

use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Included, Unbounded};

use bytes::Bytes;

use crate::ops::varint_len;

/// A part is cut only once it holds this many encoded bytes (then at the next boundary key).
pub(super) const PART_BYTES_MIN: usize = 4 << 10;

/// One key in `2^BOUNDARY_BITS` is a boundary.
const BOUNDARY_BITS: u32 = 6;

/// Whether a part may end with `key` (a fixed function of the key: FNV-1a, then a 64-bit
/// finaliser so that the top bits depend on every byte).
pub(super) fn is_boundary(key: &[u8]) -> bool {
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

/// Bytes of one entry in a part's encoding.
pub(super) fn entry_encoded_len(key: &[u8], value: &[u8]) -> usize {
    varint_len(key.len()) + key.len() + varint_len(value.len()) + value.len()
}

fn put_varint(out: &mut Vec<u8>, mut value: usize) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A kept part: its last key, whether it was cut there (else it ran to the end of the map and
/// grows with any key added after it) and its encoding.
#[derive(Clone, Debug)]
struct Part {
    last: Vec<u8>,
    cut: bool,
    bytes: Bytes,
}

/// The kept encodings of the parts no write touched since they were encoded.
#[derive(Clone, Debug, Default)]
pub(super) struct PartCache {
    /// By first key.
    parts: BTreeMap<Vec<u8>, Part>,
}

impl PartCache {
    /// `key` is being written (set, changed or deleted): drop the part it falls in, or the last
    /// part if the key extends it.
    pub(super) fn touch(&mut self, key: &[u8]) {
        let hit = self
            .parts
            .range::<[u8], _>((Unbounded, Included(key)))
            .next_back()
            .filter(|(_, p)| key <= &p.last[..] || !p.cut)
            .map(|(first, _)| first.clone());
        if let Some(first) = hit {
            self.parts.remove(&first);
        }
    }

    /// Forget every part (the map was replaced or cleared).
    pub(super) fn clear(&mut self) {
        self.parts.clear();
    }

    /// The parts of `map` in key order: kept ones as they are, the others encoded (and kept).
    /// Returns the parts and the bytes encoded.
    pub(super) fn parts(&mut self, map: &BTreeMap<Vec<u8>, Vec<u8>>) -> (Vec<Bytes>, usize) {
        let mut out = Vec::new();
        let mut encoded = 0;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let next = match &after {
                None => map.keys().next(),
                Some(last) => map
                    .range::<[u8], _>((Excluded(&last[..]), Unbounded))
                    .next()
                    .map(|(k, _)| k),
            };
            let Some(first) = next else {
                break;
            };
            if let Some(part) = self.parts.get(first) {
                out.push(part.bytes.clone());
                after = Some(part.last.clone());
                continue;
            }
            let part = encode_part(map, first);
            encoded += part.bytes.len();
            // Parts kept from before that start inside this one are no longer parts.
            let stale: Vec<Vec<u8>> = self
                .parts
                .range::<[u8], _>((Excluded(&first[..]), Included(&part.last[..])))
                .map(|(k, _)| k.clone())
                .collect();
            for k in stale {
                self.parts.remove(&k);
            }
            out.push(part.bytes.clone());
            after = Some(part.last.clone());
            self.parts.insert(first.clone(), part);
        }
        (out, encoded)
    }
}

/// The part of `map` that starts at `first`: postcard's encoding of a sequence of (key, value)
/// byte-string pairs.
fn encode_part(map: &BTreeMap<Vec<u8>, Vec<u8>>, first: &[u8]) -> Part {
    let mut entries = Vec::new();
    let mut size = 0;
    let mut cut = false;
    for (key, value) in map.range::<[u8], _>((Included(first), Unbounded)) {
        entries.push((key, value));
        size += entry_encoded_len(key, value);
        if size >= PART_BYTES_MIN && is_boundary(key) {
            cut = true;
            break;
        }
    }
    let mut bytes = Vec::with_capacity(size + varint_len(entries.len()));
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
    let mut size = 0;
    for (i, (key, value)) in entries.iter().enumerate() {
        size += entry_encoded_len(key.as_ref(), value.as_ref());
        if size >= PART_BYTES_MIN && is_boundary(key.as_ref()) {
            return i + 1 == entries.len();
        }
    }
    last_part && !entries.is_empty()
}
