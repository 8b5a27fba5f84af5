//! `shieldwall_core::verify::verify_message` on any decoded `Message`, with a `SimAuth`
//! authenticator and a 4-replica configuration. It runs on every peer message before the
//! engine sees it, so it must never panic.
//!
//! Input: `[flags, message...]`. Bit 3 of `flags` picks the configuration (Byzantine or crash,
//! n=4, f=1); bits 0-2 say what to repair in the decoded message before verifying it (see
//! `shieldwall_fuzz::Repair`): random bytes almost never carry valid signatures and digests,
//! and without repairs only the first checks would ever run.
//!
//! Checks, besides never panicking: a message with every signature repaired never fails for a
//! bad signature; verification is deterministic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shieldwall_core::message::decode;
use shieldwall_core::verify::{verify_message, Reject};
use shieldwall_core::{Message, Principal, SimAuth};
use shieldwall_fuzz::{four_replicas, repair, Repair, SIM_SEED};

fuzz_target!(|data: &[u8]| {
    let [flags, bytes @ ..] = data else {
        return;
    };
    let Ok(mut message) = decode::<Message>(bytes) else {
        return;
    };
    let config = four_replicas(flags >> 3);
    let how = Repair::from_flags(*flags);
    repair(&config, &mut message, how);
    let auth = SimAuth::new(Principal::Replica(0), SIM_SEED);
    let result = verify_message(&config, &auth, &message);
    if how.sign {
        if let Err(r) = result {
            assert_ne!(
                r.reason,
                Reject::BadSignature,
                "repaired signature rejected"
            );
        }
    }
    assert_eq!(result, verify_message(&config, &auth, &message));
});
