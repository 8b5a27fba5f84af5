//! `shieldwall_wire::decode_frame` (one frame after its length field) and
//! `shieldwall_wire::decode_reply` (a MACed reply's body), on the same arbitrary bytes.
//!
//! Checks, besides never panicking: whatever decodes re-encodes to at most as many bytes, and
//! the re-encoding decodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shieldwall_wire::{decode_frame, decode_reply, encode_reply, frame_body};

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = decode_frame(data) {
        let encoded = frame.encode();
        let body = frame_body(&encoded);
        assert!(body.len() <= data.len());
        assert_eq!(decode_frame(&body), Ok(frame));
    }
    if let Ok(reply) = decode_reply(data) {
        let encoded = encode_reply(&reply);
        assert!(encoded.len() <= data.len());
        assert_eq!(decode_reply(&encoded), Ok(reply));
    }
});
