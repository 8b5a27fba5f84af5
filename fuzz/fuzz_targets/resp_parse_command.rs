//! `shieldwall_kv::resp::parse_command`, the stateless RESP2 parser of the KV gateway, on
//! arbitrary bytes.
//!
//! Input: `[limits selector, buffer...]` (default limits, or small ones so that every limit is
//! reachable, see `shieldwall_fuzz::resp_limits`).
//!
//! Checks, besides never panicking: a command is non-empty, uses a non-empty prefix of the
//! buffer and respects the limits; encoded as a client would send it (a multibulk array), it
//! parses back to the same command, consuming exactly its encoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shieldwall_fuzz::resp_limits;
use shieldwall_kv::resp::{encode_command, parse_command, ParserLimits};

fuzz_target!(|data: &[u8]| {
    let [selector, buf @ ..] = data else {
        return;
    };
    let limits = resp_limits(*selector);
    let Ok(Some((command, consumed))) = parse_command(buf, &limits) else {
        return;
    };
    assert!(
        consumed > 0 && consumed <= buf.len(),
        "consumed {consumed} of {}",
        buf.len()
    );
    assert!(!command.is_empty());
    assert!(command.len() <= limits.args_max);
    let total: usize = command.iter().map(Vec::len).sum();
    assert!(total <= limits.command_bytes_max.max(limits.inline_bytes_max));

    let mut encoded = Vec::new();
    encode_command(&mut encoded, &command);
    let back = parse_command(&encoded, &ParserLimits::default());
    assert_eq!(back, Ok(Some((command, encoded.len()))));
});
