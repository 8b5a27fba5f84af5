//! Verifying the signatures of many messages in one batch.
//!
//! Protocol code checks a message with a function that calls [`Authenticator::verify`] for each
//! signature it carries. To verify the signatures of many messages together, run that function
//! with a [`Recorder`]: it answers "valid" to every signature and records it. The message is
//! valid if the function succeeded *and* every recorded signature verifies; the caller verifies
//! all recorded signatures of all messages in one batch ([`NodeAuth::verify_each`]) and, for a
//! message that failed either way, runs the function again with the real authenticator to learn
//! the exact reason (the slow path, for faulty input only).
//!
//! [`VerifiedCache`] remembers signatures that verified, so a signature seen twice (a client
//! request, then the same request inside a leader's batch; a vote, then the same vote inside a
//! certificate) is checked once.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use shieldwall_core::{Authenticator, Principal, VerifyItem};

use crate::auth::NodeAuth;

/// A signature recorded for later verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedSig {
    /// Claimed signer.
    pub signer: Principal,
    /// Signed bytes.
    pub bytes: Vec<u8>,
    /// Signature.
    pub sig: Vec<u8>,
}

impl RecordedSig {
    /// As a batch item.
    pub fn item(&self) -> VerifyItem<'_> {
        VerifyItem {
            signer: self.signer,
            bytes: &self.bytes,
            sig: &self.sig,
        }
    }

    /// A digest naming this exact (signer, bytes, signature) triple.
    pub fn key(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key("shieldwall verified signature v1");
        h.update(&shieldwall_core::message::encode(&self.signer));
        h.update(&(self.bytes.len() as u64).to_le_bytes());
        h.update(&self.bytes);
        h.update(&self.sig);
        *h.finalize().as_bytes()
    }
}

/// An authenticator that accepts every signature and records it. Signing and MACs are the
/// inner authenticator's.
#[derive(Debug)]
pub struct Recorder<'a> {
    inner: &'a NodeAuth,
    seen: Mutex<Vec<RecordedSig>>,
}

impl<'a> Recorder<'a> {
    /// A recorder in front of `inner`.
    pub fn new(inner: &'a NodeAuth) -> Recorder<'a> {
        Recorder {
            inner,
            seen: Mutex::new(Vec::new()),
        }
    }

    /// The signatures recorded so far (and forget them).
    pub fn take(&self) -> Vec<RecordedSig> {
        self.seen
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default()
    }

    fn record(&self, signer: Principal, bytes: &[u8], sig: &[u8]) {
        if let Ok(mut s) = self.seen.lock() {
            s.push(RecordedSig {
                signer,
                bytes: bytes.to_vec(),
                sig: sig.to_vec(),
            });
        }
    }
}

impl Authenticator for Recorder<'_> {
    fn me(&self) -> Principal {
        self.inner.me()
    }

    fn sign(&self, bytes: &[u8]) -> Vec<u8> {
        self.inner.sign(bytes)
    }

    fn verify(&self, signer: Principal, bytes: &[u8], sig: &[u8]) -> bool {
        self.record(signer, bytes, sig);
        true
    }

    fn verify_batch(&self, items: &[VerifyItem<'_>]) -> bool {
        for i in items {
            self.record(i.signer, i.bytes, i.sig);
        }
        true
    }

    fn mac(&self, peer: Principal, bytes: &[u8]) -> [u8; 32] {
        self.inner.mac(peer, bytes)
    }

    fn verify_mac(&self, peer: Principal, bytes: &[u8], tag: &[u8]) -> bool {
        self.inner.verify_mac(peer, bytes, tag)
    }
}

/// Keys of remembered signatures, and their insertion order (for eviction).
type Remembered = (HashSet<[u8; 32]>, VecDeque<[u8; 32]>);

/// A bounded set of signatures known to verify (oldest forgotten first).
#[derive(Debug)]
pub struct VerifiedCache {
    capacity: usize,
    inner: Mutex<Remembered>,
}

impl VerifiedCache {
    /// A cache of at most `capacity` signatures.
    pub fn new(capacity: usize) -> VerifiedCache {
        VerifiedCache {
            capacity,
            inner: Mutex::new((
                HashSet::with_capacity(capacity),
                VecDeque::with_capacity(capacity),
            )),
        }
    }

    /// Verify every signature (batch-verified, cached ones skipped); one verdict per signature.
    pub fn verify_each(&self, auth: &NodeAuth, sigs: &[RecordedSig]) -> Vec<bool> {
        self.verify_each_counted(auth, sigs).0
    }

    /// [`VerifiedCache::verify_each`], and how many signatures were verified (not found in
    /// the cache), i.e. the size of the batch handed to the verifier.
    pub fn verify_each_counted(&self, auth: &NodeAuth, sigs: &[RecordedSig]) -> (Vec<bool>, usize) {
        let keys: Vec<[u8; 32]> = sigs.iter().map(RecordedSig::key).collect();
        let mut verdicts = vec![false; sigs.len()];
        let mut todo = Vec::with_capacity(sigs.len());
        if let Ok(guard) = self.inner.lock() {
            for (i, k) in keys.iter().enumerate() {
                if guard.0.contains(k) {
                    verdicts[i] = true;
                } else {
                    todo.push(i);
                }
            }
        }
        let items: Vec<VerifyItem<'_>> = todo.iter().map(|&i| sigs[i].item()).collect();
        let verified = items.len();
        let fresh = auth.verify_each(&items);
        if let Ok(mut guard) = self.inner.lock() {
            let (set, order) = &mut *guard;
            for (&i, ok) in todo.iter().zip(fresh) {
                verdicts[i] = ok;
                if ok && self.capacity > 0 && set.insert(keys[i]) {
                    order.push_back(keys[i]);
                    if order.len() > self.capacity {
                        if let Some(old) = order.pop_front() {
                            set.remove(&old);
                        }
                    }
                }
            }
        }
        (verdicts, verified)
    }

    /// Signatures remembered.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|g| g.1.len()).unwrap_or(0)
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::keys::KeyPair;
    use crate::Keyring;

    fn auths() -> (NodeAuth, NodeAuth) {
        let a = KeyPair::from_seed([1; 32]);
        let b = KeyPair::from_seed([2; 32]);
        let ring = Arc::new(Keyring::new(vec![a.public(), b.public()], vec![]));
        (
            NodeAuth::new(Principal::Replica(0), a, ring.clone()),
            NodeAuth::new(Principal::Replica(1), b, ring),
        )
    }

    #[test]
    fn recorder_accepts_and_records() {
        let (a, b) = auths();
        let rec = Recorder::new(&a);
        assert!(rec.verify(Principal::Replica(1), b"x", b"not a signature"));
        let sig = b.sign(b"y");
        assert!(rec.verify_batch(&[VerifyItem {
            signer: Principal::Replica(1),
            bytes: b"y",
            sig: &sig,
        }]));
        let seen = rec.take();
        assert_eq!(seen.len(), 2);
        assert!(rec.take().is_empty());
        let cache = VerifiedCache::new(10);
        assert_eq!(cache.verify_each(&a, &seen), vec![false, true]);
        assert_eq!(cache.len(), 1, "only valid signatures are remembered");
    }

    #[test]
    fn cache_is_bounded_and_exact() {
        let (a, b) = auths();
        let cache = VerifiedCache::new(3);
        let sigs: Vec<RecordedSig> = (0..5u8)
            .map(|i| RecordedSig {
                signer: Principal::Replica(1),
                bytes: vec![i],
                sig: b.sign(&[i]),
            })
            .collect();
        assert_eq!(cache.verify_each_counted(&a, &sigs), (vec![true; 5], 5));
        assert_eq!(cache.len(), 3);
        assert_eq!(
            cache.verify_each_counted(&a, &sigs[2..]),
            (vec![true; 3], 0),
            "the three newest are cached: nothing verified"
        );
        // A cached triple with one byte changed is not a hit.
        let mut forged = sigs[4].clone();
        forged.bytes = vec![99];
        assert_eq!(cache.verify_each(&a, &[forged]), vec![false]);
        let mut other_signer = sigs[4].clone();
        other_signer.signer = Principal::Replica(0);
        assert_eq!(cache.verify_each(&a, &[other_signer]), vec![false]);
    }
}
