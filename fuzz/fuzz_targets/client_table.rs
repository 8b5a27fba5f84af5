//! `shieldwall_core::client_table::ClientTable::decode` on arbitrary bytes (the client table of
//! a state-transfer snapshot).
//!
//! Input: `[window, client, req_seq (8 bytes LE), table...]`.
//!
//! Checks, besides never panicking: a decoded table re-encodes to bytes that decode to the
//! same table, and using it as the engine does after a state transfer (look up a request,
//! record an execution with a window of at least 1, as `Config::validate` guarantees) does not
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shieldwall_core::client_table::{ClientTable, Lookup};

fuzz_target!(|data: &[u8]| {
    let Some((head, bytes)) = data.split_at_checked(10) else {
        return;
    };
    let Ok(mut table) = ClientTable::decode(bytes) else {
        return;
    };
    let encoded = table.encode();
    assert_eq!(ClientTable::decode(&encoded).as_ref(), Ok(&table));
    assert_eq!(table.encode(), encoded);

    let window = u32::from(head[0]).max(1);
    let client = u64::from(head[1] % 4);
    let mut req_seq = [0u8; 8];
    req_seq.copy_from_slice(&head[2..10]);
    let req_seq = u64::from_le_bytes(req_seq);
    let new = table.is_new(client, req_seq);
    assert_eq!(new, table.lookup(client, req_seq) == Lookup::New);
    if new {
        table.record(client, req_seq, b"reply".to_vec(), window);
        // Executed now, or already below the raised floor: never executable twice.
        assert!(!table.is_new(client, req_seq));
    }
});
