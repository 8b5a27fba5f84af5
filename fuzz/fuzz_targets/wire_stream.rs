//! `shieldwall_wire::Decoder::decode` on an arbitrary byte stream, as a connection reads it.
//!
//! Input: `[limit selector, chunk seed, stream...]`.
//!
//! Checks, besides never panicking:
//! - a complete frame consumes exactly its length field plus 4 bytes, never more than the
//!   limit; an incomplete one consumes nothing;
//! - the frames and the final error are the same however the stream is cut into reads;
//! - every decoded frame re-encodes to at most the bytes it was decoded from, and the
//!   re-encoding decodes to the same frame (and re-encodes to itself).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use shieldwall_fuzz::Chunks;
use shieldwall_wire::{Decoder, Frame, WireError};

/// Frames decoded from the stream, then the error that closed it, if any.
type Outcome = (Vec<(Frame, usize)>, Option<WireError>);

/// Decode whatever `buf` holds, as a reader does after each read.
fn drain(decoder: &Decoder, buf: &mut BytesMut, out: &mut Outcome) -> bool {
    loop {
        let before = buf.len();
        let len_field = buf
            .get(..4)
            .map(|h| u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize);
        match decoder.decode(buf) {
            Ok(Some(frame)) => {
                let consumed = before - buf.len();
                assert_eq!(Some(consumed), len_field.map(|l| l + 4));
                assert!(consumed <= decoder.max_frame_bytes());
                out.0.push((frame, consumed));
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "an incomplete frame consumed bytes");
                return true;
            }
            Err(e) => {
                out.1 = Some(e);
                return false;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [limit, seed, stream @ ..] = data else {
        return;
    };
    let decoder = Decoder::new(match limit % 4 {
        0 => 0, // raised to the header size
        1 => 64,
        2 => 4096,
        _ => 1 << 20,
    });

    let mut whole: Outcome = Default::default();
    drain(&decoder, &mut BytesMut::from(stream), &mut whole);

    let mut split: Outcome = Default::default();
    let mut buf = BytesMut::new();
    let mut rest = stream;
    for n in Chunks::new(*seed) {
        if rest.is_empty() {
            break;
        }
        let (chunk, tail) = rest.split_at(n.min(rest.len()));
        rest = tail;
        buf.extend_from_slice(chunk);
        if !drain(&decoder, &mut buf, &mut split) {
            break;
        }
    }
    assert_eq!(whole, split, "decoding depends on how the stream is split");

    let reference = Decoder::new(usize::MAX);
    for (frame, consumed) in &whole.0 {
        let encoded = frame.encode();
        assert!(
            encoded.len() <= *consumed,
            "{} frame re-encodes to {} bytes, decoded from {consumed}",
            frame.name(),
            encoded.len()
        );
        let mut again = BytesMut::from(&encoded[..]);
        let back = reference.decode(&mut again);
        assert_eq!(
            back.as_ref(),
            Ok(&Some(frame.clone())),
            "re-encoding does not decode back"
        );
        assert!(again.is_empty());
        assert_eq!(frame.encode(), encoded);
    }
});
