//! Authentication as a trait, so the runtime supplies real crypto and the simulator a fast
//! deterministic stand-in.

use std::collections::HashMap;
use std::fmt;

use ed25519_zebra::{Signature, SigningKey, VerificationKey};
use rand_chacha::rand_core::SeedableRng;

use crate::types::{Digest, Principal, ReplicaId};

/// One item of a batch verification.
#[derive(Clone, Copy, Debug)]
pub struct VerifyItem<'a> {
    /// Claimed signer.
    pub signer: Principal,
    /// Signed bytes.
    pub bytes: &'a [u8],
    /// Signature.
    pub sig: &'a [u8],
}

/// Signing, verification and MACs for one principal.
///
/// Contract: `verify` and `verify_batch` must agree (a batch verifies if and only if every item
/// verifies singly), because correct replicas must agree on which messages are valid. All
/// methods are pure functions of their inputs and the keys: they may be called from any thread.
pub trait Authenticator: Send + Sync + fmt::Debug {
    /// Who signs with this authenticator.
    fn me(&self) -> Principal;
    /// Sign `bytes` as [`Authenticator::me`].
    fn sign(&self, bytes: &[u8]) -> Vec<u8>;
    /// Whether `sig` is `signer`'s signature over `bytes`. Unknown signers do not verify.
    fn verify(&self, signer: Principal, bytes: &[u8], sig: &[u8]) -> bool;
    /// Whether every item verifies. Implementations may use batch verification.
    fn verify_batch(&self, items: &[VerifyItem<'_>]) -> bool {
        items.iter().all(|i| self.verify(i.signer, i.bytes, i.sig))
    }
    /// A MAC over `bytes` with the key shared between `me` and `peer`.
    fn mac(&self, peer: Principal, bytes: &[u8]) -> [u8; 32];
    /// A MAC vector over `bytes` for a cluster of `n` replicas: [`crate::MAC_BYTES`] per
    /// replica in replica order, each under the key shared with that replica; a replica's own
    /// entry is zeros (nobody checks it).
    fn mac_vector(&self, n: u32, bytes: &[u8]) -> Vec<u8> {
        let mut macs = Vec::with_capacity(crate::MAC_BYTES * n as usize);
        for r in 0..n {
            let peer = Principal::Replica(r);
            match peer == self.me() {
                true => macs.extend_from_slice(&[0; crate::MAC_BYTES]),
                false => macs.extend_from_slice(&self.mac(peer, bytes)),
            }
        }
        macs
    }
    /// Whether `tag` is the MAC `peer` computed over `bytes` for `me`.
    fn verify_mac(&self, peer: Principal, bytes: &[u8], tag: &[u8]) -> bool {
        // Both sides derive the same pairwise key, so the expected tag is our own MAC.
        let expected = self.mac(peer, bytes);
        tag.len() == 32 && constant_time_eq(&expected, tag)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Ed25519 signatures (`ed25519-consensus`, whose single and batch verification agree) with
/// blake3 keyed MACs.
///
/// The pairwise MAC key here is derived from both public keys and a cluster secret; the runtime
/// replaces it with X25519-derived keys.
pub struct Ed25519Auth {
    me: Principal,
    key: SigningKey,
    public: HashMap<Principal, VerificationKey>,
    mac_secret: [u8; 32],
}

impl fmt::Debug for Ed25519Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ed25519Auth")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

impl Ed25519Auth {
    /// An authenticator for `me` with its 32-byte secret `seed`, knowing `public` keys.
    pub fn new(
        me: Principal,
        seed: [u8; 32],
        public: HashMap<Principal, VerificationKey>,
        mac_secret: [u8; 32],
    ) -> Ed25519Auth {
        Ed25519Auth {
            me,
            key: SigningKey::from(seed),
            public,
            mac_secret,
        }
    }

    /// The verification key of a seed.
    pub fn public_key(seed: [u8; 32]) -> VerificationKey {
        SigningKey::from(seed).verification_key()
    }
}

impl Authenticator for Ed25519Auth {
    fn me(&self) -> Principal {
        self.me
    }

    fn sign(&self, bytes: &[u8]) -> Vec<u8> {
        self.key.sign(bytes).to_bytes().to_vec()
    }

    fn verify(&self, signer: Principal, bytes: &[u8], sig: &[u8]) -> bool {
        let Some(vk) = self.public.get(&signer) else {
            return false;
        };
        let Ok(sig) = <[u8; 64]>::try_from(sig) else {
            return false;
        };
        vk.verify(&Signature::from(sig), bytes).is_ok()
    }

    fn verify_batch(&self, items: &[VerifyItem<'_>]) -> bool {
        let mut batch = ed25519_zebra::batch::Verifier::new();
        // The random linear combination's scalars come from a ChaCha stream seeded with a
        // digest of the whole batch (the core may not read OS randomness): a forger cannot
        // choose signatures after the scalars, because the scalars depend on the signatures.
        let mut transcript = blake3::Hasher::new_derive_key("shieldwall batch verify v1");
        for i in items {
            transcript.update(&(i.bytes.len() as u64).to_le_bytes());
            transcript.update(i.bytes);
            transcript.update(i.sig);
        }
        let rng = rand_chacha::ChaCha20Rng::from_seed(*transcript.finalize().as_bytes());
        for i in items {
            let Some(vk) = self.public.get(&i.signer) else {
                return false;
            };
            let Ok(sig) = <[u8; 64]>::try_from(i.sig) else {
                return false;
            };
            batch.queue((
                ed25519_zebra::VerificationKeyBytes::from(*vk),
                Signature::from(sig),
                &i.bytes,
            ));
        }
        batch.verify(rng).is_ok()
    }

    fn mac(&self, peer: Principal, bytes: &[u8]) -> [u8; 32] {
        blake3::keyed_hash(&pair_key(&self.mac_secret, self.me, peer), bytes).into()
    }
}

fn pair_key(secret: &[u8; 32], a: Principal, b: Principal) -> [u8; 32] {
    let (lo, hi) = if principal_order(a) <= principal_order(b) {
        (a, b)
    } else {
        (b, a)
    };
    Digest::of_parts(
        "shieldwall pair key v1",
        &[
            secret,
            &principal_order(lo).to_le_bytes(),
            &principal_order(hi).to_le_bytes(),
        ],
    )
    .0
}

fn principal_order(p: Principal) -> u128 {
    match p {
        Principal::Replica(r) => u128::from(r),
        Principal::Client(c) => (1u128 << 64) | u128::from(c),
    }
}

/// A fast authenticator for the simulator and tests: a "signature" is a blake3 keyed hash under
/// a per-principal key derived from a cluster seed.
///
/// Not secure (anyone with the seed can sign as anyone); it exists so simulations run millions
/// of messages. Forgery tests still work: a Byzantine actor that does not use another
/// principal's key cannot produce its tag.
#[derive(Clone, Debug)]
pub struct SimAuth {
    me: Principal,
    seed: [u8; 32],
}

impl SimAuth {
    /// The authenticator of `me` in the cluster with `seed`.
    pub fn new(me: Principal, seed: [u8; 32]) -> SimAuth {
        SimAuth { me, seed }
    }

    fn key_of(&self, p: Principal) -> [u8; 32] {
        Digest::of_parts(
            "shieldwall sim key v1",
            &[&self.seed, &principal_order(p).to_le_bytes()],
        )
        .0
    }
}

impl Authenticator for SimAuth {
    fn me(&self) -> Principal {
        self.me
    }

    fn sign(&self, bytes: &[u8]) -> Vec<u8> {
        blake3::keyed_hash(&self.key_of(self.me), bytes)
            .as_bytes()
            .to_vec()
    }

    fn verify(&self, signer: Principal, bytes: &[u8], sig: &[u8]) -> bool {
        let expected = blake3::keyed_hash(&self.key_of(signer), bytes);
        constant_time_eq(expected.as_bytes(), sig)
    }

    fn mac(&self, peer: Principal, bytes: &[u8]) -> [u8; 32] {
        blake3::keyed_hash(&pair_key(&self.seed, self.me, peer), bytes).into()
    }
}

/// Replica principal shorthand.
pub fn replica(id: ReplicaId) -> Principal {
    Principal::Replica(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(n: u32) -> Vec<Ed25519Auth> {
        let seeds: Vec<[u8; 32]> = (0..n).map(|i| [i as u8 + 1; 32]).collect();
        let public: HashMap<_, _> = seeds
            .iter()
            .enumerate()
            .map(|(i, s)| (Principal::Replica(i as u32), Ed25519Auth::public_key(*s)))
            .collect();
        seeds
            .iter()
            .enumerate()
            .map(|(i, s)| {
                Ed25519Auth::new(Principal::Replica(i as u32), *s, public.clone(), [9; 32])
            })
            .collect()
    }

    #[test]
    fn ed25519_signs_and_rejects_forgeries() {
        let c = cluster(4);
        let sig = c[1].sign(b"hello");
        assert!(c[0].verify(Principal::Replica(1), b"hello", &sig));
        assert!(
            !c[0].verify(Principal::Replica(2), b"hello", &sig),
            "wrong signer"
        );
        assert!(
            !c[0].verify(Principal::Replica(1), b"hellp", &sig),
            "wrong bytes"
        );
        let mut forged = sig.clone();
        forged[3] ^= 1;
        assert!(!c[0].verify(Principal::Replica(1), b"hello", &forged));
        assert!(
            !c[0].verify(Principal::Replica(1), b"hello", &sig[..63]),
            "short signature"
        );
        assert!(
            !c[0].verify(Principal::Replica(9), b"hello", &sig),
            "unknown signer"
        );
    }

    #[test]
    fn ed25519_batch_agrees_with_single() {
        let c = cluster(4);
        let msgs: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 10]).collect();
        let sigs: Vec<Vec<u8>> = (0..4).map(|i| c[i].sign(&msgs[i])).collect();
        let items: Vec<VerifyItem<'_>> = (0..4)
            .map(|i| VerifyItem {
                signer: Principal::Replica(i as u32),
                bytes: &msgs[i],
                sig: &sigs[i],
            })
            .collect();
        assert!(c[0].verify_batch(&items));
        let mut bad = items.clone();
        bad[2].signer = Principal::Replica(3);
        assert!(!c[0].verify_batch(&bad));
    }

    #[test]
    fn macs_are_pairwise() {
        let c = cluster(3);
        let tag = c[0].mac(Principal::Replica(2), b"m");
        assert!(c[2].verify_mac(Principal::Replica(0), b"m", &tag));
        assert!(!c[1].verify_mac(Principal::Replica(0), b"m", &tag));
    }

    #[test]
    fn sim_auth_rejects_forgery() {
        let a = SimAuth::new(Principal::Replica(0), [1; 32]);
        let b = SimAuth::new(Principal::Replica(1), [1; 32]);
        let sig = a.sign(b"x");
        assert!(b.verify(Principal::Replica(0), b"x", &sig));
        assert!(!b.verify(Principal::Replica(1), b"x", &sig));
        let other_cluster = SimAuth::new(Principal::Replica(0), [2; 32]);
        assert!(!b.verify(Principal::Replica(0), b"x", &other_cluster.sign(b"x")));
    }
}
