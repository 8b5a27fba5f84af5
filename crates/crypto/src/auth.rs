//! The production authenticator: Ed25519 signatures and X25519-derived pairwise MAC keys.

use std::sync::Arc;

use ed25519_zebra::{Signature, VerificationKey, VerificationKeyBytes};
use shieldwall_core::{Authenticator, Principal, VerifyItem};

use crate::keys::{client_key_index, KeyPair, PublicKeys};

/// The public keys of a cluster: replicas by index, client keys by key index.
#[derive(Clone, Debug, Default)]
pub struct Keyring {
    replicas: Vec<PublicKeys>,
    clients: Vec<PublicKeys>,
    replica_vks: Vec<Option<VerificationKey>>,
    client_vks: Vec<Option<VerificationKey>>,
}

impl Keyring {
    /// A keyring from the public keys of replicas `0..` and client keys `0..`.
    pub fn new(replicas: Vec<PublicKeys>, clients: Vec<PublicKeys>) -> Keyring {
        let vks = |keys: &[PublicKeys]| {
            keys.iter()
                .map(|k| VerificationKey::try_from(k.ed25519).ok())
                .collect()
        };
        Keyring {
            replica_vks: vks(&replicas),
            client_vks: vks(&clients),
            replicas,
            clients,
        }
    }

    /// The public keys of `p` (a client by its key index), if it is known.
    pub fn public(&self, p: Principal) -> Option<&PublicKeys> {
        match p {
            Principal::Replica(r) => self.replicas.get(r as usize),
            Principal::Client(c) => self.clients.get(usize::try_from(client_key_index(c)).ok()?),
        }
    }

    fn verification_key(&self, p: Principal) -> Option<&VerificationKey> {
        match p {
            Principal::Replica(r) => self.replica_vks.get(r as usize)?.as_ref(),
            Principal::Client(c) => self
                .client_vks
                .get(usize::try_from(client_key_index(c)).ok()?)?
                .as_ref(),
        }
    }

    /// Number of replicas.
    pub fn replicas(&self) -> usize {
        self.replicas.len()
    }

    /// Number of client keys.
    pub fn clients(&self) -> usize {
        self.clients.len()
    }
}

/// Signs as one principal and checks everyone else's signatures and MACs.
///
/// MAC keys are pairwise: `blake3::derive_key` over the X25519 shared secret of the two
/// principals and their names, computed once per peer at construction. Both sides derive the
/// same key; nobody else can. A peer whose X25519 key is a low-order point (no contributory
/// shared secret) gets no key: MACs with it never verify.
#[derive(Debug)]
pub struct NodeAuth {
    me: Principal,
    keys: KeyPair,
    signing: ed25519_zebra::SigningKey,
    keyring: Arc<Keyring>,
    replica_macs: Vec<Option<[u8; 32]>>,
    client_macs: Vec<Option<[u8; 32]>>,
}

impl NodeAuth {
    /// The authenticator of `me`, holding `keys`, in the cluster described by `keyring`.
    pub fn new(me: Principal, keys: KeyPair, keyring: Arc<Keyring>) -> NodeAuth {
        let secret = keys.x25519_secret();
        let derive = |peer: Principal, public: &PublicKeys| {
            let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(public.x25519));
            if !shared.was_contributory() {
                return None;
            }
            let (lo, hi) = ordered(me, peer);
            let mut h = blake3::Hasher::new_derive_key("shieldwall pairwise mac key v1");
            h.update(shared.as_bytes());
            h.update(&principal_bytes(lo));
            h.update(&principal_bytes(hi));
            Some(*h.finalize().as_bytes())
        };
        let replica_macs = (0..keyring.replicas.len())
            .map(|r| derive(Principal::Replica(r as u32), &keyring.replicas[r]))
            .collect();
        let client_macs = (0..keyring.clients.len())
            .map(|c| {
                derive(
                    Principal::Client(crate::keys::client_id(c as u64, 0)),
                    &keyring.clients[c],
                )
            })
            .collect();
        NodeAuth {
            me,
            signing: keys.signing_key(),
            keys,
            keyring,
            replica_macs,
            client_macs,
        }
    }

    /// The keyring.
    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.keyring
    }

    /// This principal's public keys.
    pub fn public(&self) -> PublicKeys {
        self.keys.public()
    }

    fn mac_key(&self, peer: Principal) -> Option<&[u8; 32]> {
        match peer {
            Principal::Replica(r) => self.replica_macs.get(r as usize)?.as_ref(),
            Principal::Client(c) => self
                .client_macs
                .get(usize::try_from(client_key_index(c)).ok()?)?
                .as_ref(),
        }
    }

    /// Check every item, using batch verification; returns one verdict per item. A batch that
    /// fails is split in halves until the bad items are found, so one forged signature does not
    /// make its neighbours fail.
    pub fn verify_each(&self, items: &[VerifyItem<'_>]) -> Vec<bool> {
        let mut out = vec![false; items.len()];
        self.verify_range(items, 0, &mut out);
        out
    }

    fn verify_range(&self, items: &[VerifyItem<'_>], offset: usize, out: &mut [bool]) {
        if items.is_empty() {
            return;
        }
        if items.len() <= 2 {
            for (i, item) in items.iter().enumerate() {
                out[offset + i] = self.verify(item.signer, item.bytes, item.sig);
            }
            return;
        }
        if self.verify_batch(items) {
            for v in &mut out[offset..offset + items.len()] {
                *v = true;
            }
            return;
        }
        let mid = items.len() / 2;
        self.verify_range(&items[..mid], offset, out);
        self.verify_range(&items[mid..], offset + mid, out);
    }
}

/// A principal's identity for key derivation: clients by key (all lanes share it).
fn principal_bytes(p: Principal) -> [u8; 9] {
    let mut out = [0u8; 9];
    match p {
        Principal::Replica(r) => out[1..5].copy_from_slice(&r.to_le_bytes()),
        Principal::Client(c) => {
            out[0] = 1;
            out[1..].copy_from_slice(&client_key_index(c).to_le_bytes());
        }
    }
    out
}

fn ordered(a: Principal, b: Principal) -> (Principal, Principal) {
    if principal_bytes(a) <= principal_bytes(b) {
        (a, b)
    } else {
        (b, a)
    }
}

impl Authenticator for NodeAuth {
    fn me(&self) -> Principal {
        self.me
    }

    fn sign(&self, bytes: &[u8]) -> Vec<u8> {
        self.signing.sign(bytes).to_bytes().to_vec()
    }

    fn verify(&self, signer: Principal, bytes: &[u8], sig: &[u8]) -> bool {
        let Some(vk) = self.keyring.verification_key(signer) else {
            return false;
        };
        let Ok(sig) = <[u8; 64]>::try_from(sig) else {
            return false;
        };
        vk.verify(&Signature::from(sig), bytes).is_ok()
    }

    fn verify_batch(&self, items: &[VerifyItem<'_>]) -> bool {
        if items.len() == 1 {
            return self.verify(items[0].signer, items[0].bytes, items[0].sig);
        }
        let mut batch = ed25519_zebra::batch::Verifier::new();
        for i in items {
            let Some(vk) = self.keyring.verification_key(i.signer) else {
                return false;
            };
            let Ok(sig) = <[u8; 64]>::try_from(i.sig) else {
                return false;
            };
            batch.queue((
                VerificationKeyBytes::from(*vk),
                Signature::from(sig),
                &i.bytes,
            ));
        }
        // Outside the core, the random scalars of the batch equation come from the OS.
        batch.verify(rand::thread_rng()).is_ok()
    }

    fn mac(&self, peer: Principal, bytes: &[u8]) -> [u8; 32] {
        match self.mac_key(peer) {
            Some(key) => blake3::keyed_hash(key, bytes).into(),
            // No key with this peer: a tag nobody can reproduce (the peer's MACs will not
            // verify either).
            None => blake3::keyed_hash(&[0xff; 32], &[bytes, &[0x5a]].concat()).into(),
        }
    }

    fn verify_mac(&self, peer: Principal, bytes: &[u8], tag: &[u8]) -> bool {
        let Some(key) = self.mac_key(peer) else {
            return false;
        };
        let expected = blake3::keyed_hash(key, bytes);
        // blake3::Hash compares in constant time.
        <[u8; 32]>::try_from(tag).is_ok_and(|t| expected == blake3::Hash::from(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::client_id;

    fn cluster(replicas: u32, clients: u64) -> (Vec<NodeAuth>, Vec<NodeAuth>) {
        let rk: Vec<KeyPair> = (0..replicas)
            .map(|i| KeyPair::from_seed([i as u8; 32]))
            .collect();
        let ck: Vec<KeyPair> = (0..clients)
            .map(|i| KeyPair::from_seed([100 + i as u8; 32]))
            .collect();
        let ring = Arc::new(Keyring::new(
            rk.iter().map(KeyPair::public).collect(),
            ck.iter().map(KeyPair::public).collect(),
        ));
        (
            rk.into_iter()
                .enumerate()
                .map(|(i, k)| NodeAuth::new(Principal::Replica(i as u32), k, ring.clone()))
                .collect(),
            ck.into_iter()
                .enumerate()
                .map(|(i, k)| {
                    NodeAuth::new(Principal::Client(client_id(i as u64, 0)), k, ring.clone())
                })
                .collect(),
        )
    }

    #[test]
    fn signatures_verify_only_for_their_signer() {
        let (r, c) = cluster(4, 2);
        let sig = r[1].sign(b"m");
        assert!(r[0].verify(Principal::Replica(1), b"m", &sig));
        assert!(!r[0].verify(Principal::Replica(2), b"m", &sig));
        assert!(!r[0].verify(Principal::Replica(1), b"n", &sig));
        assert!(!r[0].verify(Principal::Replica(9), b"m", &sig), "unknown");
        let csig = c[1].sign(b"op");
        for lane in [0, 5, 63] {
            assert!(
                r[2].verify(Principal::Client(client_id(1, lane)), b"op", &csig),
                "every lane of a client key verifies with that key"
            );
        }
        assert!(!r[2].verify(Principal::Client(client_id(0, 0)), b"op", &csig));
        assert!(!r[2].verify(Principal::Client(client_id(7, 0)), b"op", &csig));
    }

    #[test]
    fn macs_are_pairwise_and_symmetric() {
        let (r, c) = cluster(3, 2);
        let tag = r[0].mac(Principal::Client(client_id(1, 3)), b"reply");
        assert!(c[1].verify_mac(Principal::Replica(0), b"reply", &tag));
        assert!(!c[0].verify_mac(Principal::Replica(0), b"reply", &tag));
        assert!(!c[1].verify_mac(Principal::Replica(1), b"reply", &tag));
        assert!(!c[1].verify_mac(Principal::Replica(0), b"replz", &tag));
        let tag = r[1].mac(Principal::Replica(2), b"x");
        assert!(r[2].verify_mac(Principal::Replica(1), b"x", &tag));
        assert!(!r[0].verify_mac(Principal::Replica(1), b"x", &tag));
    }

    #[test]
    fn a_low_order_x25519_key_gets_no_mac_key() {
        let good = KeyPair::from_seed([1; 32]);
        let mut bad = KeyPair::from_seed([2; 32]).public();
        bad.x25519 = [0; 32];
        let ring = Arc::new(Keyring::new(vec![good.public(), bad], vec![]));
        let a = NodeAuth::new(Principal::Replica(0), good, ring);
        let tag = a.mac(Principal::Replica(1), b"x");
        assert!(!a.verify_mac(Principal::Replica(1), b"x", &tag));
    }

    #[test]
    fn batch_verification_finds_the_bad_items() {
        let (r, _) = cluster(4, 0);
        let msgs: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 8]).collect();
        let mut sigs: Vec<Vec<u8>> = msgs
            .iter()
            .enumerate()
            .map(|(i, m)| r[i % 4].sign(m))
            .collect();
        sigs[3][0] ^= 1;
        sigs[17] = vec![0; 10];
        let items: Vec<VerifyItem<'_>> = msgs
            .iter()
            .zip(&sigs)
            .enumerate()
            .map(|(i, (m, s))| VerifyItem {
                signer: Principal::Replica((i % 4) as u32),
                bytes: m,
                sig: s,
            })
            .collect();
        assert!(!r[0].verify_batch(&items));
        let verdicts = r[0].verify_each(&items);
        for (i, ok) in verdicts.iter().enumerate() {
            assert_eq!(*ok, i != 3 && i != 17, "item {i}");
        }
        assert!(r[0].verify_batch(&items[4..17]));
    }
}
