//! The cluster file parser, `shieldwall_node::ClusterConfig::parse`, on arbitrary text, and
//! the public-key parser it uses, `shieldwall_crypto::PublicKeys::parse`, on the text's first
//! two lines. (`KeyPair::read_file` reads its TOML from a file only, so it is not covered.)
//!
//! The file is an operator's, not a network peer's, but every replica and client parses it and
//! a malformed one must be an error message, not a panic.
//!
//! Checks, besides never panicking: an accepted file's configuration is valid and round-trips
//! through `to_toml`.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use shieldwall_crypto::PublicKeys;
use shieldwall_node::ClusterConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (first, rest) = text.split_once('\n').unwrap_or((text, ""));
    let second = rest.split_once('\n').map_or(rest, |(line, _)| line);
    let _ = PublicKeys::parse(first, second);

    let Ok(config) = ClusterConfig::parse(text, PathBuf::from("/nonexistent")) else {
        return;
    };
    assert!(config.protocol.validate().is_ok());
    assert_eq!(config.replicas.len(), config.n() as usize);
    let toml = config.to_toml();
    let back = ClusterConfig::parse(&toml, PathBuf::from("/nonexistent"))
        .unwrap_or_else(|e| panic!("to_toml output does not parse: {e}\n{toml}"));
    assert_eq!(back.cluster_id, config.cluster_id);
    assert_eq!(back.protocol, config.protocol);
    assert_eq!(back.replicas, config.replicas);
    assert_eq!(back.clients, config.clients);
    assert_eq!(back.to_toml(), toml);
});
