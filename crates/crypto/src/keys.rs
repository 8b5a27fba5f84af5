//! Long-term keys and key files.
//!
//! Every principal (replica or client key) has two key pairs: Ed25519 for signatures and X25519
//! for deriving pairwise MAC keys. A key file holds the secret halves of both as hex in a small
//! TOML document:
//!
//! ```toml
//! # shieldwall secret key: keep it private
//! principal = "replica 0"
//! ed25519_secret = "…64 hex digits…"
//! x25519_secret = "…64 hex digits…"
//! ```
//!
//! Client identities: one client key serves [`CLIENT_LANES`] client ids ("lanes"), each with
//! its own request numbering and window, so one process can keep many requests in flight while
//! replicas keep one public key per client key. [`client_id`] and [`client_key_index`] convert.

use std::fmt;
use std::path::Path;

use ed25519_zebra::{SigningKey, VerificationKey};
use rand::rngs::OsRng;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use shieldwall_core::Principal;

/// Lanes (client ids) per client key.
pub const CLIENT_LANES: u64 = 64;

/// The client id of `lane` of client key `key_index`.
pub fn client_id(key_index: u64, lane: u64) -> u64 {
    key_index * CLIENT_LANES + lane % CLIENT_LANES
}

/// The client key a client id belongs to.
pub fn client_key_index(client: u64) -> u64 {
    client / CLIENT_LANES
}

/// The lane of a client id within its key.
pub fn client_lane(client: u64) -> u64 {
    client % CLIENT_LANES
}

/// Why a key or key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file is not a valid key file.
    #[error("key file {path}: {why}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// A public key in text form is malformed.
    #[error("bad public key `{text}`: {why}")]
    BadPublicKey {
        /// The text given.
        text: String,
        /// What is wrong.
        why: String,
    },
}

/// The secret keys of one principal.
#[derive(Clone)]
pub struct KeyPair {
    /// Ed25519 signing key seed.
    ed25519: [u8; 32],
    /// X25519 static secret.
    x25519: [u8; 32],
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public())
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    principal: String,
    ed25519_secret: String,
    x25519_secret: String,
}

impl KeyPair {
    /// Fresh keys from the operating system's randomness.
    pub fn generate() -> KeyPair {
        let mut ed25519 = [0u8; 32];
        let mut x25519 = [0u8; 32];
        OsRng.fill_bytes(&mut ed25519);
        OsRng.fill_bytes(&mut x25519);
        KeyPair { ed25519, x25519 }
    }

    /// Keys from fixed seeds (tests and the simulator; never for a deployment).
    pub fn from_seed(seed: [u8; 32]) -> KeyPair {
        let ed25519 = *blake3::Hasher::new_derive_key("shieldwall test ed25519 seed v1")
            .update(&seed)
            .finalize()
            .as_bytes();
        let x25519 = *blake3::Hasher::new_derive_key("shieldwall test x25519 seed v1")
            .update(&seed)
            .finalize()
            .as_bytes();
        KeyPair { ed25519, x25519 }
    }

    /// The public halves.
    pub fn public(&self) -> PublicKeys {
        let x = x25519_dalek::StaticSecret::from(self.x25519);
        PublicKeys {
            ed25519: SigningKey::from(self.ed25519).verification_key().into(),
            x25519: x25519_dalek::PublicKey::from(&x).to_bytes(),
        }
    }

    pub(crate) fn signing_key(&self) -> SigningKey {
        SigningKey::from(self.ed25519)
    }

    pub(crate) fn x25519_secret(&self) -> x25519_dalek::StaticSecret {
        x25519_dalek::StaticSecret::from(self.x25519)
    }

    /// Write the key file for `principal` at `path`, readable by its owner only. Fails if the
    /// file exists (keys are never overwritten by accident).
    pub fn write_file(&self, path: &Path, principal: Principal) -> Result<(), KeyError> {
        let io = |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        let body = KeyFile {
            principal: principal_name(principal),
            ed25519_secret: hex::encode(self.ed25519),
            x25519_secret: hex::encode(self.x25519),
        };
        let text = format!(
            "# shieldwall secret key: keep it private\n{}",
            toml::to_string(&body).map_err(|e| KeyError::Invalid {
                path: path.display().to_string(),
                why: e.to_string(),
            })?
        );
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(io)?;
        std::io::Write::write_all(&mut file, text.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)
    }

    /// Read a key file and check it belongs to `principal`.
    pub fn read_file(path: &Path, principal: Principal) -> Result<KeyPair, KeyError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: name.clone(),
            source,
        })?;
        let invalid = |why: String| KeyError::Invalid {
            path: name.clone(),
            why,
        };
        let file: KeyFile = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        if file.principal != principal_name(principal) {
            return Err(invalid(format!(
                "holds the key of `{}`, not of `{}`",
                file.principal,
                principal_name(principal)
            )));
        }
        let ed25519 =
            hex32(&file.ed25519_secret).map_err(|why| invalid(format!("ed25519_secret: {why}")))?;
        let x25519 =
            hex32(&file.x25519_secret).map_err(|why| invalid(format!("x25519_secret: {why}")))?;
        Ok(KeyPair { ed25519, x25519 })
    }
}

/// How a principal is named in key files: `replica 3`, `client 0` (clients by key index).
pub fn principal_name(p: Principal) -> String {
    match p {
        Principal::Replica(r) => format!("replica {r}"),
        Principal::Client(c) => format!("client {}", client_key_index(c)),
    }
}

fn hex32(text: &str) -> Result<[u8; 32], String> {
    let bytes = hex::decode(text.trim()).map_err(|e| e.to_string())?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("expected 32 bytes (64 hex digits), got {}", bytes.len()))
}

/// The public keys of one principal, as a cluster file lists them.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKeys {
    /// Ed25519 verification key.
    pub ed25519: [u8; 32],
    /// X25519 public key.
    pub x25519: [u8; 32],
}

impl fmt::Debug for PublicKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKeys({})", &hex::encode(self.ed25519)[..8])
    }
}

impl PublicKeys {
    /// Parse the two hex keys of a cluster file; the Ed25519 key must be a valid curve point.
    pub fn parse(ed25519: &str, x25519: &str) -> Result<PublicKeys, KeyError> {
        let bad = |text: &str, why: String| KeyError::BadPublicKey {
            text: text.to_string(),
            why,
        };
        let e = hex32(ed25519).map_err(|why| bad(ed25519, why))?;
        VerificationKey::try_from(e)
            .map_err(|_| bad(ed25519, "not a valid Ed25519 public key".into()))?;
        let x = hex32(x25519).map_err(|why| bad(x25519, why))?;
        Ok(PublicKeys {
            ed25519: e,
            x25519: x,
        })
    }

    /// The Ed25519 key as hex.
    pub fn ed25519_hex(&self) -> String {
        hex::encode(self.ed25519)
    }

    /// The X25519 key as hex.
    pub fn x25519_hex(&self) -> String {
        hex::encode(self.x25519)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_round_trip_and_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replica-2.key");
        let keys = KeyPair::generate();
        keys.write_file(&path, Principal::Replica(2)).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let back = KeyPair::read_file(&path, Principal::Replica(2)).unwrap();
        assert_eq!(back.public(), keys.public());
        let err = keys
            .write_file(&path, Principal::Replica(2))
            .unwrap_err()
            .to_string();
        assert!(err.contains("exists"), "{err}");
    }

    #[test]
    fn bad_key_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let err = KeyPair::read_file(&path, Principal::Replica(0))
            .unwrap_err()
            .to_string();
        assert!(err.contains("key file") && err.contains('k'), "{err}");

        KeyPair::generate()
            .write_file(&path, Principal::Replica(1))
            .unwrap();
        let err = KeyPair::read_file(&path, Principal::Replica(0))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`replica 1`, not of `replica 0`"),
            "wrong owner: {err}"
        );

        std::fs::write(
            &path,
            "principal = \"replica 0\"\ned25519_secret = \"abcd\"\nx25519_secret = \"00\"\n",
        )
        .unwrap();
        let err = KeyPair::read_file(&path, Principal::Replica(0))
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected 32 bytes"), "{err}");
        std::fs::write(&path, "garbage ==").unwrap();
        assert!(KeyPair::read_file(&path, Principal::Replica(0)).is_err());
    }

    #[test]
    fn public_keys_parse_strictly() {
        let k = KeyPair::generate().public();
        assert_eq!(
            PublicKeys::parse(&k.ed25519_hex(), &k.x25519_hex()).unwrap(),
            k
        );
        assert!(PublicKeys::parse("zz", &k.x25519_hex()).is_err());
        assert!(PublicKeys::parse(&k.ed25519_hex(), "00").is_err());
    }

    #[test]
    fn lanes_map_to_keys() {
        assert_eq!(client_key_index(client_id(3, 5)), 3);
        assert_eq!(client_lane(client_id(3, 5)), 5);
        assert_eq!(client_id(0, CLIENT_LANES), 0, "lanes wrap");
        assert_ne!(client_id(1, 0), client_id(0, 1));
    }
}
