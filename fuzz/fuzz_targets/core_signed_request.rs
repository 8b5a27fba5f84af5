//! `shieldwall_core::message::decode::<SignedRequest>` on arbitrary bytes (a client frame's
//! body).
//!
//! Checks, besides never panicking: a decoded request re-encodes to at most as many bytes, the
//! re-encoding decodes to the same request, and its signing bytes and digest are computable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shieldwall_core::message::{decode, encode};
use shieldwall_core::SignedRequest;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = decode::<SignedRequest>(data) else {
        return;
    };
    let encoded = encode(&request);
    assert!(encoded.len() <= data.len());
    assert_eq!(decode::<SignedRequest>(&encoded).as_ref(), Ok(&request));
    let _ = request.request.digest();
    let _ = request.request.size();
});
