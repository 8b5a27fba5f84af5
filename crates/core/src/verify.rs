//! Signature and structure checks that need no replica state.
//!
//! These are pure functions of the configuration, the keys and the message, so the runtime runs
//! them on a pool of threads before a message reaches the engine. They check every signature a
//! message carries (including the votes inside certificates), digests against batches, sizes,
//! and the quorum size and signer distinctness of certificates. The engine then checks what
//! depends on its state (view, watermarks, duplicates).
//!
//! Crash mode trusts replicas (a faulty replica only stops): [`verify_message`] checks the
//! structure of their messages but not the signatures and client authenticators they carry.
//! The runtime must then bind a message's sender to the authenticated link it came on.

use std::collections::BTreeSet;

use crate::auth::{Authenticator, VerifyItem};
use crate::config::{Config, FaultModel};
use crate::message::{
    batch_digest_of, commit_mac_bytes, request_digest, vote_signing_bytes, CheckpointCert,
    CommittedBatch, Message, Phase, PrePrepare, PreparedCert, RequestAuth, Signable, Signed,
    SignedRequest, ViewChange, Vote,
};
use crate::types::{Principal, ReplicaId, View};

/// Why a message or request was rejected; `as_str` names the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reject {
    /// Sender index out of range.
    UnknownSender,
    /// Outer signature does not verify.
    BadSignature,
    /// A replica message's MAC entry for this replica does not verify.
    BadReplicaMac,
    /// A signature inside a certificate does not verify.
    BadCertificateSignature,
    /// Batch digest does not match the batch.
    DigestMismatch,
    /// A request in a batch has a bad client authenticator.
    BadClientAuth,
    /// A request's MAC entry for this replica does not verify. The leader cannot check the
    /// other replicas' entries, so this does not blame it.
    BadClientMac,
    /// Too many requests or bytes.
    TooLarge,
    /// The same request twice in one batch.
    DuplicateRequest,
    /// A certificate has too few distinct valid signers or mismatching votes.
    BadCertificate,
    /// A message from a replica that is not the leader of its view claims to lead.
    NotLeader,
    /// View or sequence number outside the accepted window.
    OutOfWindow,
    /// A message for an older view.
    StaleView,
    /// A second, different vote or proposal from one replica for one slot.
    Conflicting,
    /// A vote already counted.
    Duplicate,
    /// A NEW-VIEW whose proposals differ from the recomputation.
    BadNewView,
    /// A state-transfer reply that does not match its certificates.
    BadStateTransfer,
    /// A client exceeded its pending-request bound.
    ClientOverLimit,
    /// Total pending requests at the bound.
    PendingFull,
    /// A message the replica is not in a state to use (e.g. votes while recovering).
    Unexpected,
}

impl Reject {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::UnknownSender => "unknown_sender",
            Reject::BadSignature => "bad_signature",
            Reject::BadReplicaMac => "bad_replica_mac",
            Reject::BadCertificateSignature => "bad_certificate_signature",
            Reject::DigestMismatch => "digest_mismatch",
            Reject::BadClientAuth => "bad_client_auth",
            Reject::BadClientMac => "bad_client_mac",
            Reject::TooLarge => "too_large",
            Reject::DuplicateRequest => "duplicate_request",
            Reject::BadCertificate => "bad_certificate",
            Reject::NotLeader => "not_leader",
            Reject::OutOfWindow => "out_of_window",
            Reject::StaleView => "stale_view",
            Reject::Conflicting => "conflicting",
            Reject::Duplicate => "duplicate",
            Reject::BadNewView => "bad_new_view",
            Reject::BadStateTransfer => "bad_state_transfer",
            Reject::ClientOverLimit => "client_over_limit",
            Reject::PendingFull => "pending_full",
            Reject::Unexpected => "unexpected",
        }
    }
}

/// A rejected message, and whom its valid signature proves faulty, if anyone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// Why.
    pub reason: Reject,
    /// `(signer, view)` when the signer's valid signature covers the invalid content; feed it
    /// to the engine as [`crate::Event::ProvenFault`].
    pub blame: Option<(ReplicaId, View)>,
}

impl From<Reject> for Rejection {
    fn from(reason: Reject) -> Self {
        Rejection {
            reason,
            blame: None,
        }
    }
}

/// Check a client request's size and authenticator.
pub fn verify_request(
    config: &Config,
    auth: &dyn Authenticator,
    request: &SignedRequest,
) -> Result<(), Reject> {
    if request.request.op.len() > config.request_bytes_max as usize {
        return Err(Reject::TooLarge);
    }
    let bytes = request.request.signing_bytes();
    let client = Principal::Client(request.request.client);
    match &request.auth {
        // Only a crash-mode leader relays requests, and only inside its batches.
        RequestAuth::Relayed => Err(Reject::BadClientAuth),
        RequestAuth::Signature(sig) if auth.verify(client, &bytes, sig) => Ok(()),
        RequestAuth::Signature(_) => Err(Reject::BadClientAuth),
        RequestAuth::Macs(_) if !config.request_macs => Err(Reject::BadClientAuth),
        RequestAuth::Macs(_) if own_mac_verifies(config, auth, request, &bytes) => Ok(()),
        RequestAuth::Macs(_) => Err(Reject::BadClientMac),
    }
}

/// Whether this replica's entry of `request`'s MAC vector verifies over `bytes` (the
/// request's signing bytes). False for a malformed vector, or when `auth` is not a replica's.
fn own_mac_verifies(
    config: &Config,
    auth: &dyn Authenticator,
    request: &SignedRequest,
    bytes: &[u8],
) -> bool {
    let Principal::Replica(me) = auth.me() else {
        return false;
    };
    match request.auth.mac_for(me, config.n) {
        Some(tag) => auth.verify_mac(Principal::Client(request.request.client), bytes, tag),
        None => false,
    }
}

/// Whether this replica's entry of a COMMIT's MAC vector verifies. False for a malformed
/// vector, or when `auth` is not a replica's (crash mode's trusting authenticator accepts any
/// tag, so an empty vector passes there).
fn own_replica_mac_verifies(
    config: &Config,
    auth: &dyn Authenticator,
    m: &crate::message::Authenticated<Vote>,
) -> bool {
    let Principal::Replica(me) = auth.me() else {
        return false;
    };
    let tag = m.mac_for(me, config.n).unwrap_or_default();
    auth.verify_mac(
        Principal::Replica(m.from),
        &commit_mac_bytes(m.from, &m.body),
        tag,
    )
}

/// Check a replica message completely except for state-dependent rules.
///
/// In crash mode replicas are trusted: every structural rule is checked (sizes, digests,
/// quorums, leaders), but no signature or client authenticator the message carries (the
/// sender relays only requests it checked itself). The caller must have bound
/// `message.from()` to the authenticated peer it came from.
pub fn verify_message(
    config: &Config,
    auth: &dyn Authenticator,
    message: &Message,
) -> Result<(), Rejection> {
    match config.fault_model {
        FaultModel::Byzantine => verify_message_with(config, auth, message),
        FaultModel::Crash => verify_message_with(config, &TrustedReplicas(auth), message),
    }
}

/// Crash mode's view of what a replica sends: every signature and MAC verifies.
#[derive(Debug)]
struct TrustedReplicas<'a>(&'a dyn Authenticator);

impl Authenticator for TrustedReplicas<'_> {
    fn me(&self) -> Principal {
        self.0.me()
    }
    fn sign(&self, bytes: &[u8]) -> Vec<u8> {
        self.0.sign(bytes)
    }
    fn verify(&self, _: Principal, _: &[u8], _: &[u8]) -> bool {
        true
    }
    fn verify_batch(&self, _: &[VerifyItem<'_>]) -> bool {
        true
    }
    fn mac(&self, peer: Principal, bytes: &[u8]) -> [u8; 32] {
        self.0.mac(peer, bytes)
    }
    fn verify_mac(&self, _: Principal, _: &[u8], _: &[u8]) -> bool {
        true
    }
}

fn verify_message_with(
    config: &Config,
    auth: &dyn Authenticator,
    message: &Message,
) -> Result<(), Rejection> {
    let from = message.from();
    if from >= config.n {
        return Err(Reject::UnknownSender.into());
    }
    match message.signature() {
        Some(sig) => {
            if !auth.verify(Principal::Replica(from), &message.signing_bytes(), sig) {
                return Err(Reject::BadSignature.into());
            }
        }
        None => {
            let Message::Commit(m) = message else {
                return Err(Reject::BadSignature.into());
            };
            if !own_replica_mac_verifies(config, auth, m) {
                return Err(Reject::BadReplicaMac.into());
            }
        }
    }
    match message {
        Message::PrePrepare(m) => {
            if config.leader(m.body.view) != from {
                return Err(Reject::NotLeader.into());
            }
            check_batch(config, auth, &m.body, Macs::Own).map_err(|reason| Rejection {
                reason,
                // The leader signed the digest; a digest that does not match the batch may be
                // tampering in transit, and the leader cannot check our MAC entries; anything
                // else the leader signed itself.
                blame: (reason != Reject::DigestMismatch && reason != Reject::BadClientMac)
                    .then_some((from, m.body.view)),
            })
        }
        Message::Prepare(m) => {
            if config.leader(m.body.view) == from {
                // PBFT 4.2: the leader's pre-prepare is its prepare; it sends no PREPARE.
                return Err(Reject::NotLeader.into());
            }
            Ok(())
        }
        Message::Commit(_) | Message::Checkpoint(_) | Message::Fetch(_) => Ok(()),
        Message::ViewChange(m) => Ok(check_view_change(config, auth, &m.body)?),
        Message::NewView(m) => {
            let nv = &m.body;
            if config.leader(nv.view) != from {
                return Err(Reject::NotLeader.into());
            }
            let mut senders = BTreeSet::new();
            for vc in &nv.view_changes {
                if vc.body.new_view != nv.view || vc.from >= config.n || !senders.insert(vc.from) {
                    return Err(Reject::BadNewView.into());
                }
                if !auth.verify(
                    Principal::Replica(vc.from),
                    &vc.body.signing_bytes(),
                    &vc.sig,
                ) {
                    return Err(Reject::BadCertificateSignature.into());
                }
                check_view_change(config, auth, &vc.body)?;
            }
            if senders.len() < config.quorum() {
                return Err(Reject::BadNewView.into());
            }
            for pp in &nv.pre_prepares {
                if pp.body.view != nv.view || pp.from != from {
                    return Err(Reject::BadNewView.into());
                }
                if !auth.verify(Principal::Replica(from), &pp.body.signing_bytes(), &pp.sig) {
                    return Err(Reject::BadCertificateSignature.into());
                }
                // The engine checks these proposals against the prepared certificates of
                // the view changes, so a quorum vouched for their requests already.
                check_batch(config, auth, &pp.body, Macs::Certified)?;
            }
            Ok(())
        }
        Message::Forward(m) => Ok(check_requests(config, auth, &m.body.requests, Macs::Own)?),
        Message::FetchChunk(_) => Ok(()),
        Message::Chunk(m) => {
            if m.body.bytes.len() > config.chunk() {
                return Err(Reject::TooLarge.into());
            }
            Ok(())
        }
        Message::FetchReply(m) => {
            let r = &m.body;
            if let Some(s) = &r.snapshot {
                check_checkpoint_cert(config, auth, &s.checkpoint)?;
                if !s.is_valid(config.chunk()) {
                    return Err(Reject::BadStateTransfer.into());
                }
            }
            if r.batches.len() > config.fetch_batches_max as usize
                || r.digests.len() > config.fetch_batches_max as usize
            {
                return Err(Reject::TooLarge.into());
            }
            for b in &r.batches {
                check_committed_batch(config, auth, b)?;
            }
            Ok(())
        }
    }
}

/// Which MAC-vector entries a batch check verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Macs {
    /// A fresh proposal or relayed requests: this replica's entry of each MAC vector must
    /// verify.
    Own,
    /// A batch a quorum certified (a prepared certificate, a NEW-VIEW proposal recomputed from
    /// them, or a committed batch in state transfer, accepted once f + 1 peers agree on it):
    /// MAC vectors are not checked. Correct replicas accepted the
    /// batch on their own entries, and a replica whose entry a client corrupted must still be
    /// able to follow the batch once it is certified. Signatures are still checked.
    Certified,
}

/// Limits, digest, request authenticators and distinctness of a batch.
pub fn check_batch(
    config: &Config,
    auth: &dyn Authenticator,
    pp: &PrePrepare,
    macs: Macs,
) -> Result<(), Reject> {
    if pp.batch.len() > config.batch_requests_max as usize {
        return Err(Reject::TooLarge);
    }
    // Each request's signing bytes serve both its digest and its authenticator.
    let signed: Vec<Vec<u8>> = pp.batch.iter().map(|r| r.request.signing_bytes()).collect();
    if batch_digest_of(signed.iter().map(|b| request_digest(b))) != pp.batch_digest {
        return Err(Reject::DigestMismatch);
    }
    check_signed_requests(config, auth, &pp.batch, &signed, macs)
}

/// Limits, authenticators and distinctness of requests a replica proposes or relays: at most
/// a batch's worth, none read-only (reads are never ordered as such; a client's fallback
/// re-sends them as ordered), each signed by its client.
pub fn check_requests(
    config: &Config,
    auth: &dyn Authenticator,
    requests: &[SignedRequest],
    macs: Macs,
) -> Result<(), Reject> {
    if requests.len() > config.batch_requests_max as usize {
        return Err(Reject::TooLarge);
    }
    let signed: Vec<Vec<u8>> = requests.iter().map(|r| r.request.signing_bytes()).collect();
    check_signed_requests(config, auth, requests, &signed, macs)
}

/// [`check_requests`] with each request's signing bytes at hand (`signed`, in order).
fn check_signed_requests(
    config: &Config,
    auth: &dyn Authenticator,
    requests: &[SignedRequest],
    signed: &[Vec<u8>],
    macs: Macs,
) -> Result<(), Reject> {
    let mut bytes = 0usize;
    let mut seen = BTreeSet::new();
    for r in requests {
        bytes += r.request.size();
        if r.request.op.len() > config.request_bytes_max as usize {
            return Err(Reject::TooLarge);
        }
        if r.request.read_only {
            return Err(Reject::BadClientAuth);
        }
        if !seen.insert((r.request.client, r.request.req_seq)) {
            return Err(Reject::DuplicateRequest);
        }
    }
    if bytes > config.batch_bytes_max as usize {
        return Err(Reject::TooLarge);
    }
    let mut items: Vec<VerifyItem<'_>> = Vec::with_capacity(requests.len());
    for (r, bytes) in requests.iter().zip(signed) {
        match &r.auth {
            RequestAuth::Signature(sig) => items.push(VerifyItem {
                signer: Principal::Client(r.request.client),
                bytes,
                sig,
            }),
            RequestAuth::Macs(_) if !config.request_macs => return Err(Reject::BadClientAuth),
            RequestAuth::Macs(_) => {
                if macs == Macs::Own && !own_mac_verifies(config, auth, r, bytes) {
                    return Err(Reject::BadClientMac);
                }
            }
            // Crash mode trusts the leader that checked it (ADR 021); Byzantine mode
            // trusts no replica's word for a client's request.
            RequestAuth::Relayed if config.fault_model == FaultModel::Crash => {}
            RequestAuth::Relayed => return Err(Reject::BadClientAuth),
        }
    }
    if !items.is_empty() && !auth.verify_batch(&items) {
        return Err(Reject::BadClientAuth);
    }
    Ok(())
}

/// Signed PREPAREs matching `expected` from at least `need` distinct replicas other than
/// `exclude`.
fn check_prepares(
    config: &Config,
    auth: &dyn Authenticator,
    expected: &Vote,
    votes: &[Signed<Vote>],
    exclude: Option<ReplicaId>,
    need: usize,
) -> Result<(), Rejection> {
    let mut signers = BTreeSet::new();
    let bytes: Vec<Vec<u8>> = votes
        .iter()
        .map(|v| vote_signing_bytes(Phase::Prepare, &v.body))
        .collect();
    for v in votes {
        if v.body != *expected || v.from >= config.n || Some(v.from) == exclude {
            return Err(Reject::BadCertificate.into());
        }
        if !signers.insert(v.from) {
            return Err(Reject::BadCertificate.into());
        }
    }
    if signers.len() < need {
        return Err(Reject::BadCertificate.into());
    }
    let items: Vec<VerifyItem<'_>> = votes
        .iter()
        .zip(&bytes)
        .map(|(v, b)| VerifyItem {
            signer: Principal::Replica(v.from),
            bytes: b,
            sig: &v.sig,
        })
        .collect();
    if !auth.verify_batch(&items) {
        return Err(Reject::BadCertificateSignature.into());
    }
    Ok(())
}

/// A checkpoint certificate: genesis (seq 0, no proof) or a quorum of matching signatures.
pub fn check_checkpoint_cert(
    config: &Config,
    auth: &dyn Authenticator,
    cert: &CheckpointCert,
) -> Result<(), Rejection> {
    if cert.seq == 0 {
        return if cert.proof.is_empty() {
            Ok(())
        } else {
            Err(Reject::BadCertificate.into())
        };
    }
    if !cert.seq.is_multiple_of(config.checkpoint_interval) {
        return Err(Reject::BadCertificate.into());
    }
    let mut signers = BTreeSet::new();
    for c in &cert.proof {
        if c.body.seq != cert.seq
            || c.body.state_digest != cert.state_digest
            || c.from >= config.n
            || !signers.insert(c.from)
        {
            return Err(Reject::BadCertificate.into());
        }
    }
    if signers.len() < config.quorum() {
        return Err(Reject::BadCertificate.into());
    }
    let bytes: Vec<Vec<u8>> = cert.proof.iter().map(|c| c.body.signing_bytes()).collect();
    let items: Vec<VerifyItem<'_>> = cert
        .proof
        .iter()
        .zip(&bytes)
        .map(|(c, b)| VerifyItem {
            signer: Principal::Replica(c.from),
            bytes: b,
            sig: &c.sig,
        })
        .collect();
    if !auth.verify_batch(&items) {
        return Err(Reject::BadCertificateSignature.into());
    }
    Ok(())
}

/// A prepared certificate: a leader-signed pre-prepare with a valid batch and, in Byzantine
/// mode, quorum-1 matching prepares from other replicas.
pub fn check_prepared_cert(
    config: &Config,
    auth: &dyn Authenticator,
    cert: &PreparedCert,
) -> Result<(), Rejection> {
    let pp = &cert.pre_prepare;
    let leader = config.leader(pp.body.view);
    if pp.from != leader {
        return Err(Reject::BadCertificate.into());
    }
    if !auth.verify(
        Principal::Replica(leader),
        &pp.body.signing_bytes(),
        &pp.sig,
    ) {
        return Err(Reject::BadCertificateSignature.into());
    }
    check_batch(config, auth, &pp.body, Macs::Certified)?;
    let vote = Vote {
        view: pp.body.view,
        seq: pp.body.seq,
        batch_digest: pp.body.batch_digest,
    };
    let need = if config.has_prepare_phase() {
        config.quorum() - 1
    } else {
        0
    };
    check_prepares(config, auth, &vote, &cert.prepares, Some(leader), need)
}

/// A committed batch as its sender vouches for it: a valid batch (limits, digest, request
/// signatures). Whether it was committed is the engine's question: it accepts a batch that
/// [`Config::fetch_agreement`] replicas vouched for alike.
pub fn check_committed_batch(
    config: &Config,
    auth: &dyn Authenticator,
    b: &CommittedBatch,
) -> Result<(), Rejection> {
    Ok(check_batch(config, auth, &b.pre_prepare, Macs::Certified)?)
}

/// Every certificate in a view change, and its window rules.
pub fn check_view_change(
    config: &Config,
    auth: &dyn Authenticator,
    vc: &ViewChange,
) -> Result<(), Rejection> {
    check_checkpoint_cert(config, auth, &vc.checkpoint)?;
    let low = vc.checkpoint.seq;
    let mut seqs = BTreeSet::new();
    if vc.prepared.len() as u64 > config.watermark_window {
        return Err(Reject::TooLarge.into());
    }
    for p in &vc.prepared {
        let b = &p.pre_prepare.body;
        if b.view >= vc.new_view
            || b.seq <= low
            || b.seq > config.window_top(low)
            || !seqs.insert(b.seq)
        {
            return Err(Reject::BadCertificate.into());
        }
        check_prepared_cert(config, auth, p)?;
    }
    Ok(())
}
