//! `shieldwall_kv::KvOp::decode` on arbitrary bytes (the operation of a client request, which a
//! Byzantine client can sign whatever it is).
//!
//! Checks, besides never panicking: a decoded operation re-encodes to at most as many bytes and
//! the re-encoding decodes to the same operation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shieldwall_kv::KvOp;

fuzz_target!(|data: &[u8]| {
    let Ok(op) = KvOp::decode(data) else {
        return;
    };
    let encoded = op.encode();
    assert!(encoded.len() <= data.len());
    assert_eq!(KvOp::decode(&encoded).as_ref(), Ok(&op));
    let _ = op.is_read();
});
