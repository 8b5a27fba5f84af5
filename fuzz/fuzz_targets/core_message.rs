//! `shieldwall_core::message::decode::<Message>` on arbitrary bytes (a peer frame's body).
//!
//! Checks, besides never panicking: a decoded message re-encodes to at most as many bytes, the
//! re-encoding decodes to the same message, and computing what the engine computes from an
//! unverified message (sender, kind, signing bytes) does not panic either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shieldwall_core::message::{decode, encode};
use shieldwall_core::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(message) = decode::<Message>(data) else {
        return;
    };
    let encoded = encode(&message);
    assert!(encoded.len() <= data.len());
    assert_eq!(decode::<Message>(&encoded).as_ref(), Ok(&message));
    let _ = (message.from(), message.kind(), message.signature());
    let _ = message.signing_bytes();
});
