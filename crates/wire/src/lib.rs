//! The byte layout of everything shieldwall sends over a connection.
//!
//! A connection carries frames:
//!
//! ```text
//! +----------------+---------+------+----------------------+
//! | length: u32 LE | version | kind | body (length-2 bytes) |
//! +----------------+---------+------+----------------------+
//! ```
//!
//! `length` counts the version byte, the kind byte and the body. The body is the postcard
//! encoding of the frame's content (the same canonical encoding the core signs). Decoding is
//! strict: a frame longer than the decoder's limit is refused from its header, before any byte
//! of it is buffered; the version must be [`VERSION`]; the kind must be known; the body must
//! decode completely with no trailing bytes. Every failure is a typed [`WireError`]; after one,
//! the connection is closed (framing can no longer be trusted).
//!
//! A connection starts with a handshake. Both sides send [`Frame::Hello`] (cluster, claimed
//! principal, a fresh random nonce). The side that dialled then sends [`Frame::Proof`]: its
//! signature over [`handshake_signing_bytes`], which binds the cluster, both principals, both
//! nonces and the prover's [`Role`]. The accepting side checks it and only then sends its own
//! proof (so it never signs anything for an unproven dialer: a relay between two replicas gets
//! nothing to forward); the dialer checks that and answers [`Frame::Accepted`]. A side that
//! refuses sends [`Frame::Refused`] with the reason instead and closes; each side knows the
//! outcome when its handshake ends.

#![forbid(unsafe_code)]

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use shieldwall_core::message::{self, Message};
use shieldwall_core::{Principal, SignedRequest};

/// The protocol version this build speaks. 4: reply MACs are byte strings, crash-mode batches
/// relay requests without authenticators (ADR 021).
pub const VERSION: u8 = 4;
/// Bytes before the body: length (4), version (1), kind (1).
pub const HEADER_BYTES: usize = 6;
/// The smallest value of the length field (version and kind, empty body).
const LENGTH_MIN: u32 = 2;

/// The first frame on a connection, from each side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Identifies the cluster (from the cluster file); peers of another cluster are refused.
    pub cluster: [u8; 32],
    /// Who the sender claims to be (proved by the following [`Proof`]).
    pub principal: Principal,
    /// A fresh random value the other side must sign.
    pub nonce: [u8; 32],
}

/// The second frame on a connection: proof of the principal claimed in [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// Signature over [`handshake_signing_bytes`].
    #[serde(with = "serde_bytes")]
    pub sig: Vec<u8>,
}

/// Why a side refused a connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    /// A human-readable reason.
    pub reason: String,
}

/// A reply to a client, MACed with the key the replica shares with the client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MacedReply {
    /// The encoded [`shieldwall_core::Reply`]; the MAC covers exactly these bytes, so the
    /// client checks it before decoding anything.
    #[serde(with = "serde_bytes")]
    pub reply: Vec<u8>,
    /// blake3 keyed hash of `reply` under the pairwise key. A byte string (its length, then the
    /// bytes): postcard writes a plain array one element at a time, which cost a replica 3% of
    /// its samples in a reply-heavy profile (docs/benchmarks.md, twelfth round).
    #[serde(with = "serde_bytes")]
    pub mac: [u8; 32],
}

/// Everything a connection carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Handshake: who I am, and a nonce for you to sign.
    Hello(Hello),
    /// Handshake: my signature over your nonce.
    Proof(Proof),
    /// Handshake refused.
    Refused(Refused),
    /// Handshake accepted: the other side's proof checked out.
    Accepted,
    /// A replica-to-replica protocol message.
    Peer(Message),
    /// A client request.
    Request(SignedRequest),
    /// A reply to a client.
    Reply(MacedReply),
}

/// Frame kinds on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    Hello = 1,
    Proof = 2,
    Refused = 3,
    Peer = 4,
    Request = 5,
    Reply = 6,
    Accepted = 7,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Hello,
            2 => Kind::Proof,
            3 => Kind::Refused,
            4 => Kind::Peer,
            5 => Kind::Request,
            6 => Kind::Reply,
            7 => Kind::Accepted,
            _ => return None,
        })
    }
}

impl Frame {
    fn kind(&self) -> Kind {
        match self {
            Frame::Hello(_) => Kind::Hello,
            Frame::Proof(_) => Kind::Proof,
            Frame::Refused(_) => Kind::Refused,
            Frame::Peer(_) => Kind::Peer,
            Frame::Request(_) => Kind::Request,
            Frame::Reply(_) => Kind::Reply,
            Frame::Accepted => Kind::Accepted,
        }
    }

    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "hello",
            Frame::Proof(_) => "proof",
            Frame::Refused(_) => "refused",
            Frame::Peer(_) => "peer",
            Frame::Request(_) => "request",
            Frame::Reply(_) => "reply",
            Frame::Accepted => "accepted",
        }
    }

    /// The encoded frame, header included.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(128);
        self.encode_into(&mut out);
        out.freeze()
    }

    /// Append the encoded frame to `out`.
    pub fn encode_into(&self, out: &mut BytesMut) {
        let start = out.len();
        out.put_u32_le(0);
        out.put_u8(VERSION);
        out.put_u8(self.kind() as u8);
        let res = match self {
            Frame::Hello(v) => append(v, out),
            Frame::Proof(v) => append(v, out),
            Frame::Refused(v) => append(v, out),
            Frame::Peer(v) => append(v, out),
            Frame::Request(v) => append(v, out),
            Frame::Reply(v) => append(v, out),
            Frame::Accepted => append(&(), out),
        };
        // Serialising these types into memory cannot fail; should it, the frame is cut back to
        // its header rather than sent half written (and earlier frames in `out` are kept).
        if res.is_err() {
            out.truncate(start + HEADER_BYTES);
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    }
}

/// Postcard's encoding of `value` appended to `out`.
///
/// Postcard's own `to_extend` feeds a `BytesMut` one byte at a time (its `Extend` impl checks
/// capacity per byte): encoding a 100-request PRE-PREPARE took 66 µs that way against 13 µs to
/// decode it. This flavor copies each field's bytes in one call.
fn append<T: Serialize + ?Sized>(value: &T, out: &mut BytesMut) -> postcard::Result<()> {
    postcard::serialize_with_flavor(value, Appender(out))
}

/// A postcard output that appends to a `BytesMut` slice by slice.
struct Appender<'a>(&'a mut BytesMut);

impl postcard::ser_flavors::Flavor for Appender<'_> {
    type Output = ();

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.put_u8(data);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Why bytes could not be decoded into a frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The length field exceeds the decoder's limit.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Claimed length.
        len: u64,
        /// Limit.
        max: u64,
    },
    /// The length field is smaller than a header.
    #[error("frame length {0} is shorter than a frame header")]
    TooShort(u32),
    /// A version this build does not speak.
    #[error("unsupported protocol version {0} (this build speaks {VERSION})")]
    Version(u8),
    /// An unknown frame kind.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The body does not decode as its kind.
    #[error("malformed {kind} frame: {reason}")]
    Malformed {
        /// Frame kind name.
        kind: &'static str,
        /// Decoder message.
        reason: String,
    },
}

impl WireError {
    /// Metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            WireError::TooLarge { .. } => "frame_too_large",
            WireError::TooShort(_) => "frame_too_short",
            WireError::Version(_) => "bad_version",
            WireError::UnknownKind(_) => "unknown_frame_kind",
            WireError::Malformed { .. } => "malformed_frame",
        }
    }
}

/// Splits a byte stream into frames, refusing any frame larger than `max_frame_bytes`.
#[derive(Clone, Copy, Debug)]
pub struct Decoder {
    max_frame_bytes: usize,
}

impl Decoder {
    /// A decoder for frames of at most `max_frame_bytes` bytes (header included).
    pub fn new(max_frame_bytes: usize) -> Decoder {
        Decoder {
            max_frame_bytes: max_frame_bytes.max(HEADER_BYTES),
        }
    }

    /// The limit.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// The size of the frame at the front of `buf`, once its header is there: lets a reader
    /// reserve exactly what the frame needs (never more than the limit) or refuse it early.
    pub fn frame_len(&self, buf: &[u8]) -> Result<Option<usize>, WireError> {
        let Some(header) = buf.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        if len < LENGTH_MIN {
            return Err(WireError::TooShort(len));
        }
        let total = 4 + len as u64;
        if total > self.max_frame_bytes as u64 {
            return Err(WireError::TooLarge {
                len: total,
                max: self.max_frame_bytes as u64,
            });
        }
        Ok(Some(total as usize))
    }

    /// Take one frame off the front of `buf`: `Ok(None)` if it is not complete yet (the caller
    /// reads more and calls again). The caller must not let `buf` grow past
    /// [`Decoder::max_frame_bytes`] plus its read size.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        let Some(total) = self.frame_len(buf)? else {
            return Ok(None);
        };
        if buf.len() < total {
            return Ok(None);
        }
        let frame = buf.split_to(total);
        decode_frame(&frame[4..]).map(Some)
    }
}

/// Decode one frame from its bytes after the length field (version, kind, body).
pub fn decode_frame(bytes: &[u8]) -> Result<Frame, WireError> {
    let (&version, rest) = bytes.split_first().ok_or(WireError::TooShort(0))?;
    if version != VERSION {
        return Err(WireError::Version(version));
    }
    let (&kind, body) = rest.split_first().ok_or(WireError::TooShort(1))?;
    let kind = Kind::from_byte(kind).ok_or(WireError::UnknownKind(kind))?;
    fn body_of<'a, T: Deserialize<'a>>(kind: &'static str, body: &'a [u8]) -> Result<T, WireError> {
        message::decode(body).map_err(|e| WireError::Malformed {
            kind,
            reason: e.to_string(),
        })
    }
    Ok(match kind {
        Kind::Hello => Frame::Hello(body_of("hello", body)?),
        Kind::Proof => Frame::Proof(body_of("proof", body)?),
        Kind::Refused => Frame::Refused(body_of("refused", body)?),
        Kind::Peer => Frame::Peer(body_of("peer", body)?),
        Kind::Request => Frame::Request(body_of("request", body)?),
        Kind::Reply => Frame::Reply(body_of("reply", body)?),
        Kind::Accepted => {
            body_of::<()>("accepted", body)?;
            Frame::Accepted
        }
    })
}

/// Decode a [`shieldwall_core::Reply`] from the bytes of a [`MacedReply`] (after its MAC
/// verified).
pub fn decode_reply(bytes: &[u8]) -> Result<shieldwall_core::Reply, WireError> {
    message::decode(bytes).map_err(|e| WireError::Malformed {
        kind: "reply body",
        reason: e.to_string(),
    })
}

/// Encode a reply for a [`MacedReply`].
pub fn encode_reply(reply: &shieldwall_core::Reply) -> Vec<u8> {
    message::encode(reply)
}

/// Which side of a connection a handshake proof comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// The side that opened the connection.
    Dialer,
    /// The side that accepted it.
    Acceptor,
}

/// What the connection's `prover` side signs: the cluster, both principals in their roles and
/// both nonces.
pub fn handshake_signing_bytes(
    cluster: &[u8; 32],
    prover: Role,
    dialer: Principal,
    acceptor: Principal,
    dialer_nonce: &[u8; 32],
    acceptor_nonce: &[u8; 32],
) -> Vec<u8> {
    let mut out = b"shieldwall handshake v2\0".to_vec();
    out.extend_from_slice(cluster);
    out.extend_from_slice(&message::encode(&(prover, dialer, acceptor)));
    out.extend_from_slice(dialer_nonce);
    out.extend_from_slice(acceptor_nonce);
    out
}

/// Skip the length field of an encoded frame (for tests and fuzzing of [`decode_frame`]).
pub fn frame_body(encoded: &Bytes) -> Bytes {
    let mut b = encoded.clone();
    b.advance(4.min(b.len()));
    b
}

#[cfg(test)]
mod tests;
