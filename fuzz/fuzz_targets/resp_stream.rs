//! The streaming RESP2 parser of the KV gateway, `shieldwall_kv::resp::RespParser`, fed an
//! arbitrary stream cut into arbitrary reads, as a connection does.
//!
//! Input: `[limits selector, chunk seed, stream...]`.
//!
//! Checks, besides never panicking:
//! - a call never consumes more than it was given;
//! - the parser makes progress: a bounded number of calls per byte;
//! - the commands and protocol errors, in order, and whether the parser ends mid-command, are
//!   the same however the stream is cut into reads (compared with a single read of it all);
//! - after `Ok(None)` the parser asks for more bytes: called again on what is left, it
//!   consumes nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shieldwall_fuzz::{resp_limits, Chunks};
use shieldwall_kv::resp::{Command, ParserLimits, ProtocolError, RespParser};

type Events = Vec<Result<Command, ProtocolError>>;

/// Parse what `pending` holds, as the gateway does after each read; consumed bytes are
/// removed from it.
fn drain(parser: &mut RespParser, pending: &mut Vec<u8>, events: &mut Events, calls: &mut usize) {
    loop {
        *calls += 1;
        let parsed = parser.parse(pending);
        assert!(
            parsed.consumed <= pending.len(),
            "consumed {} of {} bytes",
            parsed.consumed,
            pending.len()
        );
        pending.drain(..parsed.consumed);
        match parsed.result {
            Ok(Some(command)) => {
                assert!(!command.is_empty());
                events.push(Ok(command));
            }
            Err(e) => events.push(Err(e)),
            Ok(None) => {
                let again = parser.parse(pending);
                assert_eq!(again.consumed, 0, "Ok(None) but more input was usable");
                assert_eq!(again.result, Ok(None));
                return;
            }
        }
    }
}

fn run(
    limits: &ParserLimits,
    stream: &[u8],
    chunks: impl Iterator<Item = usize>,
) -> (Events, bool) {
    let mut parser = RespParser::new(limits.clone());
    let mut pending = Vec::new();
    let mut events = Events::new();
    let mut calls = 0;
    let mut rest = stream;
    for n in chunks {
        if rest.is_empty() {
            break;
        }
        let (chunk, tail) = rest.split_at(n.min(rest.len()));
        rest = tail;
        pending.extend_from_slice(chunk);
        drain(&mut parser, &mut pending, &mut events, &mut calls);
    }
    // A call returns a command (at least one byte each), an error (one that consumes nothing
    // leaves the parser skipping, and the next call consumes), or ends the read's drain: at
    // most 2 calls per byte plus one per read, so a parser that spins without progress fails.
    assert!(
        calls <= 3 * stream.len() + 2,
        "{calls} calls for {} bytes",
        stream.len()
    );
    (events, parser.is_mid_command())
}

fuzz_target!(|data: &[u8]| {
    let [selector, seed, stream @ ..] = data else {
        return;
    };
    let limits = resp_limits(*selector);
    let whole = run(&limits, stream, std::iter::once(stream.len().max(1)));
    let split = run(&limits, stream, Chunks::new(*seed));
    assert_eq!(whole, split, "parsing depends on how the stream is split");
});
