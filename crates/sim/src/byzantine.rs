//! Byzantine replicas: the real engine with its outbound traffic mutated or filtered.
//!
//! A Byzantine replica holds only its own key, so anything it re-signs is signed as itself;
//! "forged" messages claim another sender with a garbage signature.

use std::collections::VecDeque;
use std::sync::Arc;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use shieldwall_core::message::Signable;
use shieldwall_core::message::{batch_digest, encode};
use shieldwall_core::{
    Authenticator, CheckpointCert, ClientId, Digest, Message, ReplicaId, Reply, Request,
    RequestAuth, Signed, SignedRequest, ViewChange, MAC_BYTES,
};

use crate::service::{KvOp, KvService};

/// A Byzantine replica's behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaFault {
    /// As leader, sends half the followers a different batch (reordered or cut) for a sequence
    /// number, correctly signed.
    Equivocate,
    /// Sends prepares, commits and checkpoints for random digests to some peers, and wrong
    /// results to clients.
    ConflictingVotes,
    /// Sends every message two or three times.
    DuplicateVotes,
    /// Replays messages it sent earlier (old views and sequence numbers).
    ReplayVotes,
    /// Pre-prepares whose digest does not match the batch, votes for the empty batch's digest.
    WrongDigest,
    /// Messages claiming another replica as sender, or with a garbage signature.
    ForgeSignatures,
    /// Random, truncated and bit-flipped bytes.
    GarbageBytes,
    /// Drops everything it would send.
    Silent,
    /// Correct, but every link to or from it is slow (it is not counted as faulty).
    Slow,
    /// Drops requests from one client and never proposes them.
    CensorClient(ClientId),
    /// As leader, slips a request it made up (for client 0, with a garbage authenticator) into
    /// its batches, correctly digested and signed.
    ForgeRequest,
    /// Sends view changes claiming nothing prepared (and sometimes only the genesis
    /// checkpoint), spurious view changes for future views, and as leader NEW-VIEWs whose
    /// re-proposals differ from what the view changes dictate.
    LyingViewChange,
    /// Answers state transfer with forged snapshots and batches that do not match their
    /// certificates, and checkpoints for random state digests.
    LyingStateTransfer,
}

impl ReplicaFault {
    /// Whether the replica still follows the protocol (its executions are checked).
    pub fn is_honest(self) -> bool {
        self == ReplicaFault::Slow
    }
}

const REPLAY_BUFFER: usize = 64;

/// State of one Byzantine replica's mutator.
#[derive(Debug)]
pub struct Byzantine {
    fault: ReplicaFault,
    id: ReplicaId,
    n: u32,
    auth: Arc<dyn Authenticator>,
    rng: ChaCha8Rng,
    sent: VecDeque<Message>,
    max_view: u64,
}

fn view_of(message: &Message) -> Option<u64> {
    Some(match message {
        Message::PrePrepare(m) => m.body.view,
        Message::Prepare(m) => m.body.view,
        Message::Commit(m) => m.body.view,
        Message::ViewChange(m) => m.body.new_view,
        Message::NewView(m) => m.body.view,
        Message::Fetch(m) => m.body.view,
        Message::FetchReply(m) => m.body.view,
        Message::Forward(m) => m.body.view,
        Message::Checkpoint(_) | Message::FetchChunk(_) | Message::Chunk(_) => return None,
    })
}

fn genesis() -> CheckpointCert {
    CheckpointCert {
        seq: 0,
        state_digest: Digest::default(),
        proof: Vec::new(),
    }
}

fn set_sig(message: &mut Message, sig: Vec<u8>) {
    match message {
        Message::PrePrepare(m) => m.sig = sig,
        Message::Prepare(m) => m.sig = sig,
        Message::Commit(m) => m.macs = sig,
        Message::Checkpoint(m) => m.sig = sig,
        Message::ViewChange(m) => m.sig = sig,
        Message::NewView(m) => m.sig = sig,
        Message::Fetch(m) => m.sig = sig,
        Message::FetchReply(m) => m.sig = sig,
        Message::Forward(m) => m.sig = sig,
        Message::FetchChunk(m) => m.sig = sig,
        Message::Chunk(m) => m.sig = sig,
    }
}

fn set_from(message: &mut Message, from: ReplicaId) {
    match message {
        Message::PrePrepare(m) => m.from = from,
        Message::Prepare(m) => m.from = from,
        Message::Commit(m) => m.from = from,
        Message::Checkpoint(m) => m.from = from,
        Message::ViewChange(m) => m.from = from,
        Message::NewView(m) => m.from = from,
        Message::Fetch(m) => m.from = from,
        Message::FetchReply(m) => m.from = from,
        Message::Forward(m) => m.from = from,
        Message::FetchChunk(m) => m.from = from,
        Message::Chunk(m) => m.from = from,
    }
}

impl Byzantine {
    /// The mutator of replica `id` with behaviour `fault`.
    pub fn new(
        fault: ReplicaFault,
        id: ReplicaId,
        n: u32,
        auth: Arc<dyn Authenticator>,
        rng: ChaCha8Rng,
    ) -> Byzantine {
        Byzantine {
            fault,
            id,
            n,
            auth,
            rng,
            sent: VecDeque::new(),
            max_view: 0,
        }
    }

    /// The behaviour.
    pub fn fault(&self) -> ReplicaFault {
        self.fault
    }

    /// Authenticate `message` again as this replica: sign it, or for a COMMIT compute its
    /// MAC vector with this replica's pairwise keys.
    fn resign(&self, message: &mut Message) {
        let bytes = message.signing_bytes();
        let sig = match message {
            Message::Commit(_) => self.auth.mac_vector(self.n, &bytes),
            _ => self.auth.sign(&bytes),
        };
        set_sig(message, sig);
    }

    /// A write of "forged" to key k0 as client 0, with a random authenticator or none (a
    /// leader claiming to relay it, which only crash mode trusts, ADR 021): no correct replica
    /// can have executed it.
    fn forged_request(&mut self) -> SignedRequest {
        SignedRequest {
            request: Request {
                client: 0,
                req_seq: self.rng.gen_range(1..50),
                read_only: false,
                op: KvOp::Put(b"k0".to_vec(), b"forged".to_vec())
                    .encode()
                    .into(),
            },
            auth: match self.rng.gen_range(0..3) {
                0 => RequestAuth::Signature((0..64).map(|_| self.rng.gen()).collect()),
                1 => RequestAuth::Macs(
                    (0..MAC_BYTES * self.n as usize)
                        .map(|_| self.rng.gen())
                        .collect(),
                ),
                _ => RequestAuth::Relayed,
            },
        }
    }

    fn random_digest(&mut self) -> Digest {
        Digest(self.rng.gen())
    }

    /// Whether the replica drops an inbound request from `client`.
    pub fn drops_request_from(&self, client: ClientId) -> bool {
        self.fault == ReplicaFault::CensorClient(client)
    }

    /// The byte strings actually sent to `to` instead of `message`.
    pub fn outbound(&mut self, to: ReplicaId, message: &Message) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        if let Some(v) = view_of(message) {
            self.max_view = self.max_view.max(v);
        }
        match self.fault {
            ReplicaFault::ForgeRequest => {
                let mut m = message.clone();
                if let Message::PrePrepare(pp) = &mut m {
                    let forged = self.forged_request();
                    let at = self.rng.gen_range(0..=pp.body.batch.len());
                    Arc::make_mut(&mut pp.body.batch).insert(at, forged);
                    pp.body.batch_digest = batch_digest(&pp.body.batch);
                    self.resign(&mut m);
                }
                out.push(encode(&m));
            }
            ReplicaFault::LyingViewChange => {
                let mut m = message.clone();
                match &mut m {
                    Message::ViewChange(vc) => {
                        vc.body.prepared.clear();
                        if self.rng.gen_bool(0.5) {
                            vc.body.checkpoint = genesis();
                        }
                    }
                    Message::NewView(nv) if self.rng.gen_bool(0.7) => {
                        if let Some(pp) = nv.body.pre_prepares.last_mut() {
                            pp.body.batch = Default::default();
                            pp.body.batch_digest = batch_digest(&[]);
                            pp.sig = self.auth.sign(&pp.body.signing_bytes());
                        } else {
                            nv.body.view_changes.pop();
                        }
                    }
                    _ => {}
                }
                self.resign(&mut m);
                out.push(encode(&m));
                if self.rng.gen_bool(0.05) {
                    let mut vc = Message::ViewChange(Signed {
                        from: self.id,
                        body: ViewChange {
                            new_view: self.max_view + self.rng.gen_range(1..4),
                            checkpoint: genesis(),
                            prepared: Vec::new(),
                        },
                        sig: Vec::new(),
                    });
                    self.resign(&mut vc);
                    out.push(encode(&vc));
                }
            }
            ReplicaFault::LyingStateTransfer => {
                let mut m = message.clone();
                match &mut m {
                    Message::FetchReply(r) => {
                        if let Some(snap) = r.body.snapshot.as_mut() {
                            // A manifest that does not match its certificate.
                            if let Some(p) = snap.pieces.first_mut() {
                                p.digest = self.random_digest();
                            } else {
                                snap.service_len += 1;
                            }
                        }
                        // Batches it claims committed that no correct replica committed,
                        // consistent with their digests. Every batch but the last is the next
                        // one relabelled, and the digests the same way: the lie is the same at
                        // every liar, so f of them agree on it and only the f + 1 rule stops it.
                        // The last is a forged write slipped in, or the batch reordered and cut.
                        for i in 1..r.body.batches.len() {
                            let next = r.body.batches[i].pre_prepare.clone();
                            let b = &mut r.body.batches[i - 1].pre_prepare;
                            b.batch = next.batch;
                            b.batch_digest = next.batch_digest;
                        }
                        for i in 1..r.body.digests.len() {
                            r.body.digests[i - 1].batch_digest = r.body.digests[i].batch_digest;
                        }
                        let forge = self.rng.gen_bool(0.5);
                        let forged = self.forged_request();
                        if let Some(b) = r.body.batches.last_mut() {
                            let batch = Arc::make_mut(&mut b.pre_prepare.batch);
                            if forge || batch.is_empty() {
                                batch.insert(0, forged.clone());
                            } else {
                                batch.reverse();
                                batch.pop();
                            }
                            b.pre_prepare.batch_digest = batch_digest(batch);
                        }
                        // Asked for digests: vouches for a batch of its own making (the forged
                        // write alone) or for nothing any replica holds.
                        if let Some(d) = r.body.digests.last_mut() {
                            d.batch_digest = if forge {
                                batch_digest(&[forged])
                            } else {
                                self.random_digest()
                            };
                        }
                    }
                    Message::Checkpoint(c) if self.rng.gen_bool(0.5) => {
                        c.body.state_digest = self.random_digest();
                    }
                    Message::Chunk(c) => {
                        // A forged piece: a state where k0 holds "forged", cut like the real one.
                        let mut forged = KvService::new();
                        forged.apply(&KvOp::Put(b"k0".to_vec(), b"forged".to_vec()));
                        let bytes = forged.snapshot();
                        c.body.bytes = if self.rng.gen_bool(0.5) {
                            bytes.into_iter().take(c.body.bytes.len()).collect()
                        } else {
                            c.body.bytes.iter().map(|b| b ^ 1).collect()
                        };
                    }
                    _ => {}
                }
                self.resign(&mut m);
                out.push(encode(&m));
            }
            ReplicaFault::Slow | ReplicaFault::CensorClient(_) => out.push(encode(message)),
            ReplicaFault::Silent => {}
            ReplicaFault::Equivocate => {
                let mut m = message.clone();
                if let Message::PrePrepare(pp) = &mut m {
                    if to % 2 == 1 && !pp.body.batch.is_empty() {
                        let batch = Arc::make_mut(&mut pp.body.batch);
                        if batch.len() >= 2 {
                            batch.reverse();
                        } else {
                            batch.clear();
                        }
                        pp.body.batch_digest = batch_digest(&pp.body.batch);
                        self.resign(&mut m);
                    }
                }
                out.push(encode(&m));
            }
            ReplicaFault::ConflictingVotes => {
                let mut m = message.clone();
                let flip = self.rng.gen_bool(0.5);
                match &mut m {
                    Message::Prepare(v) if flip => v.body.batch_digest = self.random_digest(),
                    Message::Commit(v) if flip => v.body.batch_digest = self.random_digest(),
                    Message::Checkpoint(c) if flip => c.body.state_digest = self.random_digest(),
                    _ => {}
                }
                self.resign(&mut m);
                out.push(encode(&m));
            }
            ReplicaFault::DuplicateVotes => {
                let bytes = encode(message);
                let copies = self.rng.gen_range(2..=3);
                out.extend(std::iter::repeat_n(bytes, copies));
            }
            ReplicaFault::ReplayVotes => {
                out.push(encode(message));
                if !self.sent.is_empty() && self.rng.gen_bool(0.5) {
                    let i = self.rng.gen_range(0..self.sent.len());
                    out.push(encode(&self.sent[i]));
                }
                if self.rng.gen_bool(0.2) {
                    if self.sent.len() >= REPLAY_BUFFER {
                        self.sent.pop_front();
                    }
                    self.sent.push_back(message.clone());
                }
            }
            ReplicaFault::WrongDigest => {
                let mut m = message.clone();
                match &mut m {
                    Message::PrePrepare(pp) => {
                        pp.body.batch_digest = self.random_digest();
                    }
                    Message::Prepare(v) if self.rng.gen_bool(0.5) => {
                        v.body.batch_digest = batch_digest(&[]);
                    }
                    Message::Commit(v) if self.rng.gen_bool(0.5) => {
                        v.body.batch_digest = batch_digest(&[]);
                    }
                    _ => {}
                }
                self.resign(&mut m);
                out.push(encode(&m));
            }
            ReplicaFault::ForgeSignatures => {
                if self.rng.gen_bool(0.5) {
                    out.push(encode(message));
                }
                let mut m = message.clone();
                if self.rng.gen_bool(0.5) && self.n > 1 {
                    let other = (self.id + self.rng.gen_range(1..self.n)) % self.n;
                    set_from(&mut m, other);
                    if self.rng.gen_bool(0.5) {
                        // Another's name on its own authenticator.
                        out.push(encode(&m));
                        return out;
                    }
                }
                let len = match self.rng.gen_bool(0.8) {
                    true if matches!(m, Message::Commit(_)) => MAC_BYTES * self.n as usize,
                    true => 32,
                    false => self.rng.gen_range(0..80),
                };
                let sig: Vec<u8> = (0..len).map(|_| self.rng.gen()).collect();
                set_sig(&mut m, sig);
                out.push(encode(&m));
            }
            ReplicaFault::GarbageBytes => {
                if self.rng.gen_bool(0.5) {
                    out.push(encode(message));
                }
                let mut bytes = encode(message);
                match self.rng.gen_range(0..3) {
                    0 => {
                        let len = self.rng.gen_range(0..200);
                        bytes = (0..len).map(|_| self.rng.gen()).collect();
                    }
                    1 => {
                        for _ in 0..self.rng.gen_range(1..4) {
                            if bytes.is_empty() {
                                break;
                            }
                            let i = self.rng.gen_range(0..bytes.len());
                            bytes[i] ^= 1 << self.rng.gen_range(0..8);
                        }
                    }
                    _ => {
                        let keep = self.rng.gen_range(0..=bytes.len());
                        bytes.truncate(keep);
                    }
                }
                out.push(bytes);
            }
        }
        out
    }

    /// The bytes sent to a client instead of an encoded reply.
    pub fn reply_bytes(&mut self, bytes: Vec<u8>) -> Vec<u8> {
        if self.fault == ReplicaFault::GarbageBytes && self.rng.gen_bool(0.3) {
            let len = self.rng.gen_range(0..64);
            return (0..len).map(|_| self.rng.gen()).collect();
        }
        bytes
    }

    /// What replaces a reply to a client: `None` drops it.
    pub fn reply(&mut self, mut reply: Reply) -> Option<Reply> {
        match self.fault {
            ReplicaFault::Silent => None,
            ReplicaFault::ConflictingVotes
            | ReplicaFault::ForgeSignatures
            | ReplicaFault::WrongDigest => {
                if self.rng.gen_bool(0.5) {
                    reply.result = (0..8).map(|_| self.rng.gen()).collect();
                }
                Some(reply)
            }
            _ => Some(reply),
        }
    }
}
