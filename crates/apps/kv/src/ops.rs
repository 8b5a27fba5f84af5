//! The operations the key-value service executes and the results it returns, and their byte
//! encoding (postcard via serde).
//!
//! These bytes are what travels through shieldwall: the gateway encodes a [`KvOp`], the
//! replicas decode it with [`KvOp::decode`] and answer with an encoded [`KvReply`]. Because the
//! variant index is part of the encoding, new variants are only ever appended at the end of
//! each enum: reordering them changes the meaning of bytes already in a replica's log.

use serde::{Deserialize, Serialize};

/// The condition under which `SET` writes (`NX` / `XX`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SetCondition {
    /// Plain `SET`: always write.
    #[default]
    Always,
    /// `SET ... NX`: write only if the key does not exist.
    IfAbsent,
    /// `SET ... XX`: write only if the key already exists.
    IfPresent,
}

/// One key-value operation: the Redis string commands the service implements.
///
/// Each variant's documentation gives the [`KvReply`] it produces on success; every operation
/// may also produce [`KvReply::Error`] (a limit was hit, an integer did not parse, ...).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KvOp {
    /// `GET key`: [`KvReply::Bulk`] with the value, or [`KvReply::Nil`] if absent.
    Get {
        /// The key to read.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// `SET key value [NX|XX] [GET]`: [`KvReply::Ok`] if written, [`KvReply::Nil`] if the
    /// condition failed; with `get`, the previous value (bulk or nil) in both cases.
    Set {
        /// The key to write.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The new value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// `NX` / `XX`.
        condition: SetCondition,
        /// `GET`: reply with the previous value instead of `OK` / nil.
        get: bool,
    },
    /// `DEL key [key ...]`: [`KvReply::Int`] with the number of keys removed.
    Del {
        /// The keys to remove (duplicates count once).
        #[serde(with = "byte_strings")]
        keys: Vec<Vec<u8>>,
    },
    /// `EXISTS key [key ...]`: [`KvReply::Int`] with the number of given keys that exist
    /// (a key named twice counts twice, as in Redis).
    Exists {
        /// The keys to look up.
        #[serde(with = "byte_strings")]
        keys: Vec<Vec<u8>>,
    },
    /// `INCR` / `INCRBY key delta`: [`KvReply::Int`] with the new value. A missing key counts
    /// as 0.
    IncrBy {
        /// The key holding a decimal integer.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The amount to add.
        delta: i64,
    },
    /// `DECR` / `DECRBY key delta`: [`KvReply::Int`] with the new value. Kept apart from
    /// [`KvOp::IncrBy`] because `DECRBY key -9223372036854775808` is an error of its own.
    DecrBy {
        /// The key holding a decimal integer.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The amount to subtract.
        delta: i64,
    },
    /// `APPEND key value`: [`KvReply::Int`] with the new length.
    Append {
        /// The key to append to (created if absent).
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The bytes to append.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// `STRLEN key`: [`KvReply::Int`] with the value's length (0 if absent).
    Strlen {
        /// The key to measure.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// `MGET key [key ...]`: [`KvReply::Array`] with one value or nil per key.
    MGet {
        /// The keys to read.
        #[serde(with = "byte_strings")]
        keys: Vec<Vec<u8>>,
    },
    /// `MSET key value [key value ...]`: [`KvReply::Ok`]; all pairs are written or none
    /// (a limit error leaves the state unchanged). A key given twice takes the later value.
    MSet {
        /// The (key, value) pairs, in command order.
        #[serde(with = "byte_pairs")]
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
    },
    /// `DBSIZE`: [`KvReply::Int`] with the number of keys.
    DbSize,
    /// `KEYS pattern`: [`KvReply::Array`] with the matching keys in ascending byte order
    /// (Redis returns them in hash order). See [`crate::glob`] for the pattern syntax.
    Keys {
        /// The glob pattern.
        #[serde(with = "serde_bytes")]
        pattern: Vec<u8>,
    },
    /// `FLUSHALL`: [`KvReply::Ok`]; removes every key.
    FlushAll,
    /// Several writes applied in order as one replicated operation: [`KvReply::Pipeline`]
    /// with one reply per operation. The gateway coalesces a connection's pipelined writes
    /// into one, so that they cost one request of the protocol instead of one each. Only
    /// operations [`KvOp::pipelines`] accepts may be inside, at most
    /// [`PIPELINE_OPS_MAX`]; anything else (or bytes that do not decode) fails the whole
    /// pipeline before any is applied.
    Pipeline {
        /// The operations, each encoded ([`KvOp::encode`]), in command order. Kept encoded so
        /// that the type is not recursive: decoding cannot nest without bound.
        #[serde(with = "byte_strings")]
        ops: Vec<Vec<u8>>,
    },
}

/// Most operations in one [`KvOp::Pipeline`].
pub const PIPELINE_OPS_MAX: usize = 256;

impl KvOp {
    /// The canonical bytes of the operation (what the gateway hands to a [`crate::Backend`]).
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Strictly decodes an operation: the whole input must be exactly one encoded [`KvOp`].
    ///
    /// # Errors
    /// [`DecodeError`] for malformed bytes or bytes left over after the operation.
    pub fn decode(bytes: &[u8]) -> Result<KvOp, DecodeError> {
        decode(bytes)
    }

    /// The [`KvOp::Pipeline`] of `ops`.
    pub fn pipeline(ops: &[KvOp]) -> KvOp {
        KvOp::Pipeline {
            ops: ops.iter().map(KvOp::encode).collect(),
        }
    }

    /// Whether the operation may be part of a [`KvOp::Pipeline`]: a write whose reply is
    /// small (`+OK`, nil, an integer or an error), so that a pipeline's reply is bounded.
    pub fn pipelines(&self) -> bool {
        match self {
            KvOp::Set { get, .. } => !get,
            KvOp::Pipeline { .. } => false,
            op => !op.is_read(),
        }
    }

    /// Whether the operation only reads (and may go through `invoke_read` / `Service::read`).
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            KvOp::Get { .. }
                | KvOp::Exists { .. }
                | KvOp::Strlen { .. }
                | KvOp::MGet { .. }
                | KvOp::DbSize
                | KvOp::Keys { .. }
        )
    }
}

/// The result of one operation: enough to express every supported command's Redis reply.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KvReply {
    /// The simple string `+OK`.
    Ok,
    /// The nil bulk string (`$-1`).
    Nil,
    /// An integer reply.
    Int(i64),
    /// A bulk string.
    Bulk(#[serde(with = "serde_bytes")] Vec<u8>),
    /// An array of bulk strings or nils.
    Array(#[serde(with = "optional_byte_strings")] Vec<Option<Vec<u8>>>),
    /// An error reply. The string is the whole Redis error line without the leading `-`,
    /// starting with its code: `ERR value is not an integer or out of range`.
    Error(String),
    /// The replies of a [`KvOp::Pipeline`], in order.
    Pipeline(Vec<KvReply>),
}

impl KvReply {
    /// The canonical bytes of the reply (what [`shieldwall_node::Service::execute`] returns).
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Strictly decodes a reply (the whole input must be exactly one [`KvReply`]).
    ///
    /// # Errors
    /// [`DecodeError`] for malformed bytes or bytes left over after the reply.
    pub fn decode(bytes: &[u8]) -> Result<KvReply, DecodeError> {
        decode(bytes)
    }

    /// An error reply with the given full error line (`"ERR syntax error"`).
    pub fn error(line: impl Into<String>) -> KvReply {
        KvReply::Error(line.into())
    }

    /// The replies of the `n` commands this reply answers: a [`KvReply::Pipeline`] of exactly
    /// `n`, a lone reply when `n` is 1, or an error, which a whole pipeline's failure is each
    /// command's. `None` if the reply does not fit `n`.
    pub fn split(self, n: usize) -> Option<Vec<KvReply>> {
        match self {
            KvReply::Pipeline(replies) if n > 1 && replies.len() == n => Some(replies),
            KvReply::Pipeline(_) => None,
            KvReply::Error(line) => Some(vec![KvReply::Error(line); n]),
            reply if n == 1 => Some(vec![reply]),
            _ => None,
        }
    }
}

/// Why bytes did not decode as an operation, a reply or a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not a valid encoding.
    #[error("malformed encoding: {0}")]
    Malformed(String),
    /// A complete value was followed by more bytes.
    #[error("{0} trailing bytes after the value")]
    Trailing(usize),
}

/// Canonical postcard encoding. Serialising these plain types cannot fail; the empty vector
/// fallback only exists to avoid a panic path.
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Sized first, so the bytes are written into one allocation of the right size rather than
    // a vector that doubles its way up (a client encodes every operation it sends).
    let size = postcard::experimental::serialized_size(value).unwrap_or(0);
    postcard::to_extend(value, Vec::with_capacity(size)).unwrap_or_default()
}

/// Strict postcard decoding: no bytes may follow the value.
pub(crate) fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, DecodeError> {
    let (value, rest) =
        postcard::take_from_bytes(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::Trailing(rest.len()));
    }
    Ok(value)
}

/// Parses a decimal integer exactly as Redis's `string2ll` does: an optional `-`, no `+`, no
/// leading zeros (except `0` itself), no spaces, at most 20 characters, within `i64`.
pub fn parse_integer(bytes: &[u8]) -> Option<i64> {
    const DIGITS_MAX: usize = 20;
    if bytes.is_empty() || bytes.len() > DIGITS_MAX {
        return None;
    }
    if bytes == b"0" {
        return Some(0);
    }
    let (negative, digits) = match bytes.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, bytes),
    };
    match digits.first() {
        Some(b'1'..=b'9') => {}
        _ => return None,
    }
    // Accumulate negatively so that i64::MIN, whose magnitude has no positive i64, parses.
    let mut value: i64 = 0;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return None;
        }
        value = value
            .checked_mul(10)?
            .checked_sub(i64::from(digit - b'0'))?;
    }
    if negative {
        Some(value)
    } else {
        value.checked_neg()
    }
}

/// The decimal representation of `value` (the inverse of [`parse_integer`]).
pub(crate) fn format_integer(value: i64) -> Vec<u8> {
    value.to_string().into_bytes()
}

/// Length in bytes of postcard's varint encoding of `value`.
pub(crate) fn varint_len(value: usize) -> usize {
    let bits = usize::BITS - value.leading_zeros();
    (bits.max(1) as usize).div_ceil(7)
}

// Byte strings are encoded as postcard byte arrays (length, then the bytes in one copy) rather
// than as sequences of `u8` (one call per byte); the encoding is the same, only faster.

mod byte_strings {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    pub fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|b| Bytes::new(b)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let v: Vec<ByteBuf> = Deserialize::deserialize(d)?;
        Ok(v.into_iter().map(ByteBuf::into_vec).collect())
    }
}

mod optional_byte_strings {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    pub fn serialize<S: Serializer>(v: &[Option<Vec<u8>>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|b| b.as_deref().map(Bytes::new)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Option<Vec<u8>>>, D::Error> {
        let v: Vec<Option<ByteBuf>> = Deserialize::deserialize(d)?;
        Ok(v.into_iter().map(|b| b.map(ByteBuf::into_vec)).collect())
    }
}

mod byte_pairs {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

    pub fn serialize<S: Serializer>(v: &[(Vec<u8>, Vec<u8>)], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|(k, v)| (Bytes::new(k), Bytes::new(v))))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Pairs, D::Error> {
        let v: Vec<(ByteBuf, ByteBuf)> = Deserialize::deserialize(d)?;
        Ok(v.into_iter()
            .map(|(k, v)| (k.into_vec(), v.into_vec()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_bytes() -> impl Strategy<Value = Vec<u8>> + Clone {
        proptest::collection::vec(any::<u8>(), 0..16)
    }

    fn arb_op() -> impl Strategy<Value = KvOp> {
        let condition = prop_oneof![
            Just(SetCondition::Always),
            Just(SetCondition::IfAbsent),
            Just(SetCondition::IfPresent)
        ];
        let keys = proptest::collection::vec(arb_bytes(), 0..4);
        prop_oneof![
            arb_bytes().prop_map(|key| KvOp::Get { key }),
            (arb_bytes(), arb_bytes(), condition, any::<bool>()).prop_map(
                |(key, value, condition, get)| KvOp::Set {
                    key,
                    value,
                    condition,
                    get
                }
            ),
            keys.clone().prop_map(|keys| KvOp::Del { keys }),
            keys.clone().prop_map(|keys| KvOp::Exists { keys }),
            (arb_bytes(), any::<i64>()).prop_map(|(key, delta)| KvOp::IncrBy { key, delta }),
            (arb_bytes(), any::<i64>()).prop_map(|(key, delta)| KvOp::DecrBy { key, delta }),
            (arb_bytes(), arb_bytes()).prop_map(|(key, value)| KvOp::Append { key, value }),
            arb_bytes().prop_map(|key| KvOp::Strlen { key }),
            keys.prop_map(|keys| KvOp::MGet { keys }),
            proptest::collection::vec((arb_bytes(), arb_bytes()), 0..4)
                .prop_map(|pairs| KvOp::MSet { pairs }),
            Just(KvOp::DbSize),
            arb_bytes().prop_map(|pattern| KvOp::Keys { pattern }),
            Just(KvOp::FlushAll),
        ]
    }

    fn arb_reply() -> impl Strategy<Value = KvReply> {
        prop_oneof![
            Just(KvReply::Ok),
            Just(KvReply::Nil),
            any::<i64>().prop_map(KvReply::Int),
            arb_bytes().prop_map(KvReply::Bulk),
            proptest::collection::vec(proptest::option::of(arb_bytes()), 0..4)
                .prop_map(KvReply::Array),
            ".{0,20}".prop_map(KvReply::Error),
        ]
    }

    proptest! {
        #[test]
        fn op_round_trips(op in arb_op()) {
            // Exactly postcard's bytes, in a vector of exactly their size.
            let bytes = op.encode();
            prop_assert_eq!(&bytes, &postcard::to_allocvec(&op).unwrap());
            prop_assert_eq!(bytes.capacity(), bytes.len());
            prop_assert_eq!(KvOp::decode(&bytes), Ok(op));
        }

        #[test]
        fn reply_round_trips(reply in arb_reply()) {
            prop_assert_eq!(KvReply::decode(&reply.encode()), Ok(reply));
        }

        #[test]
        fn op_with_trailing_bytes_is_rejected(op in arb_op(), extra in 1usize..8) {
            let mut bytes = op.encode();
            bytes.extend(std::iter::repeat_n(0u8, extra));
            prop_assert_eq!(KvOp::decode(&bytes), Err(DecodeError::Trailing(extra)));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = KvOp::decode(&bytes);
            let _ = KvReply::decode(&bytes);
        }

        #[test]
        fn integers_round_trip(value in any::<i64>()) {
            prop_assert_eq!(parse_integer(&format_integer(value)), Some(value));
        }

        #[test]
        fn varint_len_matches_postcard(value in any::<u64>()) {
            let value = value >> (value % 64);
            let encoded = postcard::to_allocvec(&(value as usize)).unwrap();
            prop_assert_eq!(varint_len(value as usize), encoded.len());
        }
    }

    #[test]
    fn empty_and_truncated_input_is_malformed() {
        assert!(matches!(KvOp::decode(&[]), Err(DecodeError::Malformed(_))));
        let bytes = KvOp::Get {
            key: b"abc".to_vec(),
        }
        .encode();
        assert!(matches!(
            KvOp::decode(&bytes[..bytes.len() - 1]),
            Err(DecodeError::Malformed(_))
        ));
        // A variant index past the last variant.
        assert!(matches!(
            KvOp::decode(&[99]),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn integers_parse_like_redis() {
        assert_eq!(parse_integer(b"0"), Some(0));
        assert_eq!(parse_integer(b"42"), Some(42));
        assert_eq!(parse_integer(b"-42"), Some(-42));
        assert_eq!(parse_integer(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_integer(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b""[..],
            b"-",
            b"+1",
            b"01",
            b"-0",
            b" 1",
            b"1 ",
            b"1.0",
            b"0x10",
            b"9223372036854775808",
            b"-9223372036854775809",
            b"99999999999999999999",
            b"000000000000000000001",
        ] {
            assert_eq!(
                parse_integer(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn read_ops_are_classified() {
        assert!(KvOp::Get { key: vec![] }.is_read());
        assert!(KvOp::Keys { pattern: vec![] }.is_read());
        assert!(KvOp::DbSize.is_read());
        assert!(!KvOp::FlushAll.is_read());
        assert!(!KvOp::Del { keys: vec![] }.is_read());
        assert!(!KvOp::IncrBy {
            key: vec![],
            delta: 1
        }
        .is_read());
    }
}
