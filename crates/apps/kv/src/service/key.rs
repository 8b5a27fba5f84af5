//! The map's key type: a byte string kept inside the map's own node when it is short.
//!
//! A `Vec<u8>` key is a pointer to a separate allocation, so every comparison on the way down
//! the B-tree loads another cache line: at half a million keys, searching the map was the
//! largest single cost of a `SET` (`memcmp` at 9-11% of a replica's CPU under `shieldwall
//! bench`). Keys of up to [`INLINE`] bytes, the common case, are stored in the key itself.
//! Keys order, compare and hash exactly as their bytes do, so the map can be searched with a
//! `&[u8]`.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

/// Longest key stored inline (the key type is then 24 bytes, as a `Vec<u8>` is).
pub(super) const INLINE: usize = 22;

/// A key of the map.
#[derive(Clone)]
pub(crate) enum Key {
    /// At most [`INLINE`] bytes: `bytes[..len]`; the bytes after them are zero (`Ord` relies
    /// on it).
    Inline { len: u8, bytes: [u8; INLINE] },
    /// Longer keys.
    Heap(Box<[u8]>),
}

impl Key {
    /// The key's bytes.
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Key::Heap(bytes) => bytes,
        }
    }
}

impl Default for Key {
    /// The empty key.
    fn default() -> Key {
        Key::from(&[][..])
    }
}

impl From<&[u8]> for Key {
    fn from(key: &[u8]) -> Key {
        if key.len() <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..key.len()].copy_from_slice(key);
            Key::Inline {
                len: key.len() as u8,
                bytes,
            }
        } else {
            Key::Heap(key.into())
        }
    }
}

impl From<Vec<u8>> for Key {
    fn from(key: Vec<u8>) -> Key {
        if key.len() <= INLINE {
            Key::from(key.as_slice())
        } else {
            Key::Heap(key.into_boxed_slice())
        }
    }
}

impl Deref for Key {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    /// The order of the bytes. Two inline keys compare as two 16-byte and two 6-byte big-endian
    /// integers, then by length, without a call to `memcmp`: inserting into a map of half a
    /// million keys spends most of its time comparing keys. This is the bytes' order because
    /// an inline key's bytes past its length are zero: where the padded arrays first differ,
    /// either both keys have bytes there, or the one with a zero there ended before it and is
    /// a prefix of the other (so it is the smaller); arrays that do not differ hold keys of
    /// which one is the other followed by zeros, which the length orders.
    fn cmp(&self, other: &Key) -> Ordering {
        fn head(bytes: &[u8; INLINE]) -> u128 {
            let mut word = [0u8; 16];
            word.copy_from_slice(&bytes[..16]);
            u128::from_be_bytes(word)
        }
        fn tail(bytes: &[u8; INLINE]) -> u64 {
            let mut word = [0u8; 8];
            word[..INLINE - 16].copy_from_slice(&bytes[16..]);
            u64::from_be_bytes(word)
        }
        match (self, other) {
            (Key::Inline { len: la, bytes: a }, Key::Inline { len: lb, bytes: b }) => head(a)
                .cmp(&head(b))
                .then_with(|| tail(a).cmp(&tail(b)))
                .then(la.cmp(lb)),
            _ => self.as_slice().cmp(other.as_slice()),
        }
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state);
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_slice().escape_ascii().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn short_keys_are_inline_and_long_ones_are_not() {
        assert_eq!(std::mem::size_of::<Key>(), std::mem::size_of::<Vec<u8>>());
        for len in [0, 1, INLINE - 1, INLINE] {
            let key = Key::from(vec![7; len]);
            assert!(matches!(key, Key::Inline { .. }), "{len}");
            assert_eq!(key.as_slice(), &vec![7; len][..]);
        }
        for len in [INLINE + 1, 1000] {
            let key = Key::from(&vec![7; len][..]);
            assert!(matches!(key, Key::Heap(_)), "{len}");
            assert_eq!(key.as_slice(), &vec![7; len][..]);
        }
    }

    /// Inline keys that differ only by trailing zeros, or past the first 16 bytes, order as
    /// their bytes (the padding is zeros too).
    #[test]
    fn trailing_zeros_and_late_differences_order_as_bytes() {
        let mut keys: Vec<Vec<u8>> = vec![b"ab".to_vec(), b"ab\0".to_vec(), b"ab\0\0".to_vec()];
        keys.push(b"ab\x01".to_vec());
        keys.push(vec![]);
        keys.push(vec![0]);
        for len in [15, 16, 17, 21, 22, 23] {
            keys.push(vec![5; len]);
            let mut zeros = vec![5; len];
            zeros.push(0);
            keys.push(zeros);
            let mut late = vec![5; len];
            late[len - 1] = 6;
            keys.push(late);
        }
        for a in &keys {
            for b in &keys {
                assert_eq!(
                    Key::from(&a[..]).cmp(&Key::from(&b[..])),
                    a.cmp(b),
                    "{a:?} {b:?}"
                );
            }
        }
    }

    proptest! {
        /// Keys compare as their bytes do across the inline limit (the map is searched by
        /// `&[u8]`, so any other order would lose keys).
        #[test]
        fn keys_order_as_their_bytes(
            a in proptest::collection::vec(0u8..4, 0..2 * INLINE),
            b in proptest::collection::vec(0u8..4, 0..2 * INLINE),
        ) {
            let (ka, kb) = (Key::from(a.clone()), Key::from(&b[..]));
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
            prop_assert_eq!(ka == kb, a == b);
            prop_assert_eq!(&*ka, &a[..]);
        }
    }
}
