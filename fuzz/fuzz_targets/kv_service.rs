//! `KvService` through the `shieldwall_node::Service` trait: `execute` and `read` on arbitrary
//! operation bytes and `restore` on arbitrary snapshot bytes, in any sequence.
//!
//! Input: `[limits selector, record...]`, a record being `[kind, length (u16 LE), bytes...]`
//! with kind 0 or 3 = execute, 1 = read, 2 = restore. The limits are the defaults or tiny ones
//! (see `shieldwall_fuzz::kv_limits`) so that every limit error is reachable.
//!
//! Checks, besides never panicking:
//! - every result decodes as a `KvReply`;
//! - an error result leaves the state unchanged, and so does a refused restore;
//! - a read operation gives the same result through `read` and `execute`, and `execute` of a
//!   read changes nothing;
//! - after every step the state is within its limits and its byte count is what its snapshot
//!   says;
//! - the final state's snapshot restores to an equal service.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shieldwall_fuzz::kv_limits;
use shieldwall_kv::service::ENTRY_OVERHEAD_BYTES;
use shieldwall_kv::{KvLimits, KvOp, KvReply, KvService};
use shieldwall_node::Service;

const CLIENT: u64 = 1;

/// The entries of a snapshot in the layout `KvService::snapshot` documents: a version, then
/// parts, each a sequence of entries.
fn snapshot_entries(service: &mut KvService) -> Vec<(Vec<u8>, Vec<u8>)> {
    let bytes = service.snapshot().concat();
    let (version, mut rest): (u32, &[u8]) =
        postcard::take_from_bytes(&bytes).expect("own snapshot decodes");
    assert_eq!(version, 2);
    let mut entries = Vec::new();
    while !rest.is_empty() {
        let (part, tail): (Vec<(Vec<u8>, Vec<u8>)>, &[u8]) =
            postcard::take_from_bytes(rest).expect("own snapshot part decodes");
        assert!(!part.is_empty(), "empty snapshot part");
        entries.extend(part);
        rest = tail;
    }
    entries
}

fn check_state(service: &mut KvService, limits: &KvLimits) {
    let entries = snapshot_entries(service);
    assert_eq!(entries.len(), service.len());
    let mut bytes = 0u64;
    for (i, (key, value)) in entries.iter().enumerate() {
        assert!(
            i == 0 || entries[i - 1].0 < *key,
            "snapshot keys out of order"
        );
        assert!(
            key.len() <= limits.key_bytes_max,
            "key of {} bytes",
            key.len()
        );
        assert!(
            value.len() <= limits.value_bytes_max,
            "value of {} bytes",
            value.len()
        );
        bytes += key.len() as u64 + value.len() as u64 + ENTRY_OVERHEAD_BYTES;
    }
    assert_eq!(service.state_bytes(), bytes, "state byte count drifted");
    assert!(
        bytes <= limits.state_bytes_max,
        "state of {bytes} bytes over the limit"
    );
}

fuzz_target!(|data: &[u8]| {
    let [selector, records @ ..] = data else {
        return;
    };
    let mut records = records;
    let limits = kv_limits(*selector);
    let mut service = KvService::with_limits(limits.clone());
    while let &[kind, lo, hi, ref rest @ ..] = records {
        let len = usize::from(u16::from_le_bytes([lo, hi])).min(rest.len());
        let (bytes, tail) = rest.split_at(len);
        records = tail;
        let before = service.clone();
        match kind % 4 {
            1 => {
                let result = service.read(CLIENT, bytes);
                assert!(KvReply::decode(&result).is_ok());
            }
            2 => {
                if service.restore(bytes).is_err() {
                    assert_eq!(service, before, "a refused restore changed the state");
                }
            }
            _ => {
                let read = service.read(CLIENT, bytes);
                let result = service.execute(CLIENT, bytes);
                let reply = KvReply::decode(&result).expect("execute result decodes");
                if matches!(reply, KvReply::Error(_)) {
                    assert_eq!(service, before, "an error result changed the state");
                }
                if KvOp::decode(bytes).is_ok_and(|op| op.is_read()) {
                    assert_eq!(read, result, "read and execute disagree on a read");
                    assert_eq!(service, before, "a read changed the state");
                }
            }
        }
        check_state(&mut service, &limits);
    }
    let parts = service.snapshot();
    let mut restored = KvService::with_limits(limits);
    restored
        .restore(&parts.concat())
        .expect("own snapshot restores");
    assert_eq!(restored, service);
    // The parts kept across the writes are the parts cut from scratch.
    assert_eq!(restored.snapshot(), parts, "kept snapshot parts differ");
});
