//! `KvService::restore` (through `shieldwall_node::Service`) on arbitrary snapshot bytes.
//!
//! Arbitrary bytes can be a valid snapshot (`[2]` is the empty store), so the check is not
//! "always an error" but, besides never panicking: a refused snapshot leaves the state
//! unchanged, and an accepted one gives a state within the limits whose own snapshot restores
//! to an equal service (and is a fixed point of snapshot and restore).
//!
//! Input: `[limits selector, snapshot...]`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shieldwall_fuzz::kv_limits;
use shieldwall_kv::{KvOp, KvService, SetCondition};
use shieldwall_node::Service;

fuzz_target!(|data: &[u8]| {
    let [selector, snapshot @ ..] = data else {
        return;
    };
    let limits = kv_limits(*selector);
    let mut service = KvService::with_limits(limits.clone());
    // A non-empty state, so that "unchanged" means something.
    service.execute(
        1,
        &KvOp::Set {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            condition: SetCondition::Always,
            get: false,
        }
        .encode(),
    );
    let before = service.clone();
    if service.restore(snapshot).is_err() {
        assert_eq!(service, before, "a refused restore changed the state");
        return;
    }
    assert!(service.state_bytes() <= limits.state_bytes_max);
    let own = service.snapshot().concat();
    assert!(
        own.len() <= snapshot.len(),
        "canonical snapshot longer than the input"
    );
    let mut again = KvService::with_limits(limits);
    again.restore(&own).expect("own snapshot restores");
    assert_eq!(again, service);
    assert_eq!(again.snapshot().concat(), own);
});
