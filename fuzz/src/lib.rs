//! Helpers shared by the fuzz targets in `fuzz_targets/` and the seed generator in
//! `examples/gen_seeds.rs`: how a target turns its first bytes into settings (limits, chunk
//! splits), and how `verify_message` repairs a decoded message's signatures, digests and
//! certificate bodies so that the fuzzer reaches the checks behind them.
//!
//! Everything here is deterministic: a crash input replays exactly.
#![forbid(unsafe_code)]

use shieldwall_core::message::{
    batch_digest, vote_signing_bytes, CheckpointCert, CommittedBatch, Phase, PrePrepare,
    PreparedCert, Signable, Signed, SnapshotManifest, ViewChange, Vote,
};
use shieldwall_core::{
    Authenticator, Config, FaultModel, Message, Principal, ReplicaId, RequestAuth, SimAuth,
};
use shieldwall_kv::resp::ParserLimits;
use shieldwall_kv::KvLimits;

/// The cluster seed of the [`SimAuth`] keys the `verify_message` target signs with.
pub const SIM_SEED: [u8; 32] = [7; 32];

/// The 4-replica configuration selected by `selector`: Byzantine (n=4, f=1) for even values,
/// crash (n=4, f=1) for odd ones.
pub fn four_replicas(selector: u8) -> Config {
    let model = if selector & 1 == 0 {
        FaultModel::Byzantine
    } else {
        FaultModel::Crash
    };
    Config::for_replicas(4, model)
}

/// A deterministic split of a stream into chunks, from one seed byte: mostly small chunks
/// (1 to 16 bytes) so that every header and line boundary gets cut, sometimes large ones.
#[derive(Clone, Debug)]
pub struct Chunks {
    state: u64,
}

impl Chunks {
    /// The split for `seed`.
    pub fn new(seed: u8) -> Chunks {
        Chunks {
            state: 0x9e37_79b9_7f4a_7c15 ^ (u64::from(seed) << 32 | u64::from(seed)),
        }
    }
}

impl Iterator for Chunks {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        // xorshift64: never reaches zero from a non-zero state.
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        let r = self.state >> 8;
        Some(if r & 3 == 0 {
            1 + (r >> 2) as usize % 512
        } else {
            1 + (r >> 2) as usize % 16
        })
    }
}

/// The parser limits selected by `selector`: the defaults for even values, small limits (so
/// that every limit is reachable by short inputs) for odd ones.
pub fn resp_limits(selector: u8) -> ParserLimits {
    if selector & 1 == 0 {
        return ParserLimits::default();
    }
    let s = usize::from(selector >> 1);
    ParserLimits {
        args_max: 1 + s % 8,
        bulk_bytes_max: 4 + (s >> 3) % 16,
        inline_bytes_max: 8 + s % 32,
        command_bytes_max: 8 + (s >> 2) % 64,
    }
}

/// The service limits selected by `selector`: the defaults for even values, tiny limits (so that
/// every limit error is reachable by short inputs) for odd ones.
pub fn kv_limits(selector: u8) -> KvLimits {
    if selector & 1 == 0 {
        return KvLimits::default();
    }
    KvLimits {
        key_bytes_max: 8,
        value_bytes_max: 16,
        result_bytes_max: 64,
        op_bytes_max: 96,
        state_bytes_max: 512,
    }
}

/// What [`repair`] fixes in a decoded message, from one flags byte.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Repair {
    /// Make certificate contents consistent: votes match the proposal they certify, checkpoint
    /// proofs match their certificate, NEW-VIEW parts carry its view and leader.
    pub align: bool,
    /// Set every batch digest (and snapshot state digest) to the digest of its content.
    pub digests: bool,
    /// Sign every request, vote, certificate part and the message itself with the [`SimAuth`]
    /// key of the principal it names.
    pub sign: bool,
}

impl Repair {
    /// Flags from the low three bits of `flags`: align, digests, sign.
    pub fn from_flags(flags: u8) -> Repair {
        Repair {
            align: flags & 1 != 0,
            digests: flags & 2 != 0,
            sign: flags & 4 != 0,
        }
    }

    /// Everything repaired (used to build valid seeds).
    pub fn all() -> Repair {
        Repair {
            align: true,
            digests: true,
            sign: true,
        }
    }
}

/// `bytes` signed by `principal` under [`SIM_SEED`].
pub fn sim_sign(principal: Principal, bytes: &[u8]) -> Vec<u8> {
    SimAuth::new(principal, SIM_SEED).sign(bytes)
}

fn sign_replica(from: ReplicaId, bytes: &[u8]) -> Vec<u8> {
    sim_sign(Principal::Replica(from), bytes)
}

fn repair_batch(pp: &mut PrePrepare, how: Repair) {
    if how.sign {
        for r in std::sync::Arc::make_mut(&mut pp.batch) {
            r.auth = RequestAuth::Signature(
                sim_sign(
                    Principal::Client(r.request.client),
                    &r.request.signing_bytes(),
                )
                .into(),
            );
        }
    }
    if how.digests {
        pp.batch_digest = batch_digest(&pp.batch);
    }
}

fn repair_pre_prepare(pp: &mut Signed<PrePrepare>, how: Repair) {
    repair_batch(&mut pp.body, how);
    if how.sign {
        pp.sig = sign_replica(pp.from, &pp.body.signing_bytes());
    }
}

fn vote_of(pp: &PrePrepare) -> Vote {
    Vote {
        view: pp.view,
        seq: pp.seq,
        batch_digest: pp.batch_digest,
    }
}

fn repair_prepares(votes: &mut [Signed<Vote>], expected: Vote, how: Repair) {
    for v in votes {
        if how.align {
            v.body = expected;
        }
        if how.sign {
            v.sig = sign_replica(v.from, &vote_signing_bytes(Phase::Prepare, &v.body));
        }
    }
}

fn repair_checkpoint_cert(cert: &mut CheckpointCert, how: Repair) {
    for c in &mut cert.proof {
        if how.align {
            c.body.seq = cert.seq;
            c.body.state_digest = cert.state_digest;
        }
        if how.sign {
            c.sig = sign_replica(c.from, &c.body.signing_bytes());
        }
    }
}

fn repair_prepared_cert(config: &Config, cert: &mut PreparedCert, how: Repair) {
    if how.align {
        cert.pre_prepare.from = config.leader(cert.pre_prepare.body.view);
    }
    repair_pre_prepare(&mut cert.pre_prepare, how);
    let expected = vote_of(&cert.pre_prepare.body);
    repair_prepares(&mut cert.prepares, expected, how);
}

fn repair_view_change(config: &Config, vc: &mut ViewChange, how: Repair) {
    repair_checkpoint_cert(&mut vc.checkpoint, how);
    for p in &mut vc.prepared {
        repair_prepared_cert(config, p, how);
    }
}

fn repair_committed_batch(b: &mut CommittedBatch, how: Repair) {
    repair_batch(&mut b.pre_prepare, how);
}

fn repair_manifest(config: &Config, s: &mut SnapshotManifest, how: Repair) {
    if how.digests {
        // Pieces of 1 to `chunk` bytes, the first half the service's, the rest the clients'.
        let chunk = config.chunk() as u32;
        s.pieces.truncate(1 << 16);
        for p in &mut s.pieces {
            p.len = p.len.clamp(1, chunk);
        }
        let half = s.pieces.len() / 2;
        let lens = |ps: &[shieldwall_core::PieceInfo]| ps.iter().map(|p| u64::from(p.len)).sum();
        s.service_len = lens(&s.pieces[..half]);
        s.clients_len = lens(&s.pieces[half..]);
        s.checkpoint.state_digest = s.digest();
    }
    repair_checkpoint_cert(&mut s.checkpoint, how);
}

/// Repairs `m` as `how` says, innermost parts first, the outer signature last, so that the
/// checks of `verify_message` behind the signature and digest checks are reached.
pub fn repair(config: &Config, m: &mut Message, how: Repair) {
    match m {
        Message::PrePrepare(s) => repair_batch(&mut s.body, how),
        Message::Prepare(_)
        | Message::Commit(_)
        | Message::Checkpoint(_)
        | Message::Fetch(_)
        | Message::FetchChunk(_)
        | Message::Chunk(_) => {}
        Message::ViewChange(s) => repair_view_change(config, &mut s.body, how),
        Message::NewView(s) => {
            let (view, from) = (s.body.view, s.from);
            for vc in &mut s.body.view_changes {
                if how.align {
                    vc.body.new_view = view;
                }
                repair_view_change(config, &mut vc.body, how);
                if how.sign {
                    vc.sig = sign_replica(vc.from, &vc.body.signing_bytes());
                }
            }
            for pp in &mut s.body.pre_prepares {
                if how.align {
                    pp.body.view = view;
                    pp.from = from;
                }
                repair_pre_prepare(pp, how);
            }
        }
        Message::FetchReply(s) => {
            if let Some(snapshot) = &mut s.body.snapshot {
                repair_manifest(config, snapshot, how);
            }
            for b in &mut s.body.batches {
                repair_committed_batch(b, how);
            }
        }
        Message::Forward(s) => {
            if how.sign {
                for r in &mut s.body.requests {
                    r.auth = RequestAuth::Signature(
                        sim_sign(
                            Principal::Client(r.request.client),
                            &r.request.signing_bytes(),
                        )
                        .into(),
                    );
                }
            }
        }
    }
    if how.sign {
        let (from, bytes) = (m.from(), m.signing_bytes());
        let sig = sign_replica(from, &bytes);
        match m {
            Message::PrePrepare(s) => s.sig = sig,
            Message::Prepare(s) => s.sig = sig,
            Message::Commit(s) => {
                s.macs = SimAuth::new(Principal::Replica(from), SIM_SEED).mac_vector(4, &bytes)
            }
            Message::Checkpoint(s) => s.sig = sig,
            Message::ViewChange(s) => s.sig = sig,
            Message::NewView(s) => s.sig = sig,
            Message::Fetch(s) => s.sig = sig,
            Message::FetchReply(s) => s.sig = sig,
            Message::Forward(s) => s.sig = sig,
            Message::FetchChunk(s) => s.sig = sig,
            Message::Chunk(s) => s.sig = sig,
        }
    }
}
