//! Protocol messages and their canonical encoding.
//!
//! Every replica-to-replica message travels as [`Signed`]: the body, the sender and a signature
//! over the body's [`Signable::signing_bytes`]. Certificates (checkpoint, prepared, commit) are
//! lists of such signed votes, so they can be forwarded and checked by any replica.

use std::borrow::Cow;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::types::{ClientId, Digest, ReplicaId, Seq, View};

/// Largest encoded message accepted by [`decode`]; bounds the memory one frame can claim.
pub const MESSAGE_BYTES_MAX: usize = 64 << 20;

/// A client's operation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Request {
    /// The client that issued it.
    pub client: ClientId,
    /// The client's own sequence number; a client has at most one execution per number, and
    /// numbers it has moved past are never executed.
    pub req_seq: u64,
    /// Read-only requests may be answered from current state without ordering.
    pub read_only: bool,
    /// Opaque operation bytes for the service. Shared, not copied, when the request is
    /// cloned into a batch, a certificate or an execution.
    pub op: Bytes,
}

/// A request with its client's authenticator over [`Request::signing_bytes`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SignedRequest {
    /// The request.
    pub request: Request,
    /// The client's signature or MAC vector.
    pub auth: RequestAuth,
}

/// How a client authenticates a request (ADR 011).
///
/// A signature can be checked by anyone, so a request in a batch proves itself to every
/// replica. A MAC vector is PBFT's authenticator: entry `i` is the MAC of the request under
/// the key the client shares with replica `i`; replica `i` checks only its own entry, at a
/// cost of one keyed hash instead of a signature verification. A client that corrupts some
/// entries can make the batches carrying its request fail at the replicas whose entries are
/// bad (a liveness attack, not a safety one), which is why signatures stay the default.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RequestAuth {
    /// An Ed25519 signature (64 bytes).
    Signature(Bytes),
    /// [`MAC_BYTES`] bytes per replica, in replica order.
    Macs(Bytes),
    /// None: a crash-mode leader checked the client's authenticator when the request arrived
    /// and relays the request in its batch without it (ADR 021). Crash-mode replicas trust the
    /// leader and never check the authenticators in a batch; Byzantine mode rejects it
    /// everywhere, and no mode accepts it from a client.
    Relayed,
}

/// Bytes of one MAC in a MAC vector ([`RequestAuth::Macs`], [`Authenticated::macs`]).
pub const MAC_BYTES: usize = 32;

/// Entry `replica` of a MAC vector for `n` replicas, if the vector is well formed.
fn mac_entry(macs: &[u8], replica: ReplicaId, n: u32) -> Option<&[u8]> {
    if macs.len() != MAC_BYTES * n as usize || replica >= n {
        return None;
    }
    let at = MAC_BYTES * replica as usize;
    Some(&macs[at..at + MAC_BYTES])
}

impl RequestAuth {
    /// The MAC vector's entry for `replica`, if the vector is well formed for `n` replicas.
    pub fn mac_for(&self, replica: ReplicaId, n: u32) -> Option<&[u8]> {
        match self {
            RequestAuth::Macs(macs) => mac_entry(macs, replica, n),
            RequestAuth::Signature(_) | RequestAuth::Relayed => None,
        }
    }

    /// The bytes of the authenticator, whatever its kind (none for a relayed request).
    pub fn bytes(&self) -> &[u8] {
        match self {
            RequestAuth::Signature(b) | RequestAuth::Macs(b) => b,
            RequestAuth::Relayed => &[],
        }
    }

    /// Change the bytes of the authenticator (for tests and fault injection); a relayed
    /// request has none to change.
    pub fn edit_bytes(&mut self, edit: impl FnOnce(&mut Vec<u8>)) {
        if let RequestAuth::Signature(b) | RequestAuth::Macs(b) = self {
            let mut bytes = b.to_vec();
            edit(&mut bytes);
            *b = bytes.into();
        }
    }
}

impl Request {
    /// The bytes a client signs.
    pub fn signing_bytes(&self) -> Vec<u8> {
        // The encoding is the operation plus at most 26 bytes (two varints, a flag and the
        // operation's length).
        tagged_sized("request", self, self.op.len() + 26)
    }

    /// Digest identifying the request (auth excluded): [`request_digest`] of
    /// [`Request::signing_bytes`].
    pub fn digest(&self) -> Digest {
        // A leader digests every request it batches: encode into a stack buffer when the
        // request fits, rather than allocating its signing bytes.
        const TAG: &[u8] = b"request\0";
        let mut buf = [0u8; 256];
        buf[..TAG.len()].copy_from_slice(TAG);
        match postcard::to_slice(self, &mut buf[TAG.len()..]) {
            Ok(body) => {
                let end = TAG.len() + body.len();
                request_digest(&buf[..end])
            }
            Err(_) => request_digest(&self.signing_bytes()),
        }
    }

    /// Bytes this request counts against batch limits.
    pub fn size(&self) -> usize {
        self.op.len() + 32
    }
}

/// [`Request::digest`] of the request whose [`Request::signing_bytes`] are `signing_bytes`.
pub fn request_digest(signing_bytes: &[u8]) -> Digest {
    Digest::of("shieldwall request v1", signing_bytes)
}

/// Digest of a batch: over the digests of its requests, in order. The empty batch is the null
/// request of PBFT's view change.
pub fn batch_digest(batch: &[SignedRequest]) -> Digest {
    batch_digest_of(batch.iter().map(|r| r.request.digest()))
}

/// [`batch_digest`] from the digests of the batch's requests, in order.
pub fn batch_digest_of(digests: impl ExactSizeIterator<Item = Digest>) -> Digest {
    let mut h = blake3::Hasher::new_derive_key("shieldwall batch v1");
    h.update(&(digests.len() as u64).to_le_bytes());
    for d in digests {
        h.update(&d.0);
    }
    Digest(*h.finalize().as_bytes())
}

/// PBFT's PRE-PREPARE: the leader of `view` binds `batch` to `seq`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrePrepare {
    /// View the proposal belongs to.
    pub view: View,
    /// Sequence number assigned.
    pub seq: Seq,
    /// [`batch_digest`] of `batch`.
    pub batch_digest: Digest,
    /// The requests, in execution order. Shared: a replica holds one proposal as its
    /// pre-prepare, its prepared certificate and its committed batch, and clones of it cost a
    /// reference count, not a copy of every request (encoded as the plain sequence).
    pub batch: Batch,
}

/// The requests of a proposal, shared between the places that hold it ([`PrePrepare::batch`]).
/// `Arc::make_mut` gives a private copy to change (tests, fault injection).
pub type Batch = std::sync::Arc<Vec<SignedRequest>>;

/// The requests of a committed batch that execute ([`crate::Action::Execute`]): the batch as
/// the engine holds it, shared rather than copied, and the positions of the requests that are
/// new to the client table, in batch order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Execution {
    batch: Batch,
    run: Vec<u32>,
}

impl Execution {
    /// The requests of `batch` at positions `run` (each below the batch's length, increasing).
    pub(crate) fn new(batch: Batch, run: Vec<u32>) -> Execution {
        debug_assert!(run.windows(2).all(|w| w[0] < w[1]));
        debug_assert!(run.last().is_none_or(|&i| (i as usize) < batch.len()));
        Execution { batch, run }
    }

    /// The requests to run, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &Request> + '_ {
        self.run.iter().map(|&i| &self.batch[i as usize].request)
    }

    /// How many requests run.
    pub fn len(&self) -> usize {
        self.run.len()
    }

    /// Whether none does (every request of the batch executed before, or an empty batch).
    pub fn is_empty(&self) -> bool {
        self.run.is_empty()
    }
}

/// A vote for `(view, seq, batch_digest)`: PREPARE (Byzantine mode) or COMMIT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Vote {
    /// View of the vote.
    pub view: View,
    /// Sequence number.
    pub seq: Seq,
    /// Digest of the batch voted for.
    pub batch_digest: Digest,
}

/// CHECKPOINT: the sender's state digest after executing `seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Sequence number executed.
    pub seq: Seq,
    /// Digest of service state and client table at `seq`.
    pub state_digest: Digest,
}

/// A quorum of matching signed checkpoints; `seq == 0` with no proof is the genesis checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointCert {
    /// Checkpoint sequence number.
    pub seq: Seq,
    /// Agreed state digest.
    pub state_digest: Digest,
    /// The signed checkpoints.
    pub proof: Vec<Signed<Checkpoint>>,
}

/// Proof that a batch was prepared at the sender: the leader's pre-prepare and, in Byzantine
/// mode, prepares from a quorum minus one other replicas.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedCert {
    /// The signed pre-prepare (its signature covers view, seq and digest).
    pub pre_prepare: Signed<PrePrepare>,
    /// Matching prepares from distinct replicas other than the leader.
    pub prepares: Vec<Signed<Vote>>,
}

/// VIEW-CHANGE to `new_view`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewChange {
    /// The view the sender moves to.
    pub new_view: View,
    /// The sender's last stable checkpoint.
    pub checkpoint: CheckpointCert,
    /// Prepared certificates above the checkpoint, at most one per sequence number.
    pub prepared: Vec<PreparedCert>,
}

/// NEW-VIEW from the leader of `view`: the view changes it used and its re-proposals, which any
/// replica can recompute from the view changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewView {
    /// The new view.
    pub view: View,
    /// A quorum of view changes for `view` from distinct replicas.
    pub view_changes: Vec<Signed<ViewChange>>,
    /// Re-proposals for every sequence number between the chosen checkpoint and the highest
    /// prepared one (empty batches fill gaps), each signed by the new leader.
    pub pre_prepares: Vec<Signed<PrePrepare>>,
}

/// State-transfer request: send me what follows `executed` (the last sequence number I hold).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fetch {
    /// Last sequence number the requester executed.
    pub executed: Seq,
    /// Requester's current view (lets peers resend a newer NEW-VIEW).
    pub view: View,
    /// Echoed in the reply; a restarted replica uses it to ignore replies meant for its
    /// previous incarnation.
    pub nonce: u64,
    /// Send the committed batches' digests ([`FetchReply::digests`]) instead of the batches:
    /// the requester gets the batches from one of the peers it asks and only their digests,
    /// which vouch for them, from the others.
    pub digests_only: bool,
}

/// A committed batch's sequence number and digest: a peer's word for a batch whose body
/// another peer sends ([`Fetch::digests_only`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedDigest {
    /// The batch's sequence number.
    pub seq: Seq,
    /// Its [`PrePrepare::batch_digest`].
    pub batch_digest: Digest,
}

/// A batch its sender committed. COMMITs are authenticated by MACs, so no certificate comes
/// with it: a replica catching up accepts a batch once f + 1 replicas (one in crash mode)
/// vouched for it at a sequence number, by sending it or its digest (PBFT's state transfer;
/// ADR 017).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedBatch {
    /// The proposal.
    pub pre_prepare: PrePrepare,
}

/// A replica's state at a stable checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateSnapshot {
    /// The stable checkpoint certificate the state matches.
    pub checkpoint: CheckpointCert,
    /// The service's snapshot in the parts the state digest covers (see [`state_pieces`]);
    /// their concatenation is what the service restores. Shared, not copied, between the
    /// engine and the runtime.
    pub service: Vec<Bytes>,
    /// The encoded client table.
    pub clients: Bytes,
}

impl StateSnapshot {
    /// The state digest a checkpoint certifies for a service snapshot in `service` parts and
    /// the encoded client table `clients`: the digest of its manifest (the lengths and the
    /// digest of every piece, see [`state_pieces`]).
    pub fn state_digest(chunk: usize, service: &[Bytes], clients: &Bytes) -> Digest {
        let (service_len, pieces) = piece_infos(chunk, service, clients);
        manifest_digest(service_len, clients.len() as u64, &pieces)
    }

    /// The manifest a replica serving this state offers.
    pub fn manifest(&self, chunk: usize) -> SnapshotManifest {
        let (service_len, pieces) = piece_infos(chunk, &self.service, &self.clients);
        SnapshotManifest {
            checkpoint: self.checkpoint.clone(),
            service_len,
            clients_len: self.clients.len() as u64,
            pieces,
        }
    }

    /// The service snapshot in one buffer (copied only if it is in several parts).
    pub fn service_bytes(&self) -> Bytes {
        concat_bytes(&self.service)
    }

    /// The pieces whose concatenation is [`encode`]`(self)`, the state bytes borrowed rather
    /// than copied (a large state is written to disk without a second copy in memory).
    pub fn encoded_parts(&self) -> Vec<Cow<'_, [u8]>> {
        let mut parts = Vec::with_capacity(2 * self.service.len() + 3);
        let mut head = encode(&self.checkpoint);
        head.extend_from_slice(&encode(&(self.service.len() as u64)));
        parts.push(Cow::Owned(head));
        for part in &self.service {
            parts.push(Cow::Owned(encode(&(part.len() as u64))));
            parts.push(Cow::Borrowed(&part[..]));
        }
        parts.push(Cow::Owned(encode(&(self.clients.len() as u64))));
        parts.push(Cow::Borrowed(&self.clients[..]));
        parts
    }
}

/// `parts` in one buffer: the part itself if there is only one, else a copy.
pub fn concat_bytes(parts: &[Bytes]) -> Bytes {
    match parts {
        [] => Bytes::new(),
        [one] => one.clone(),
        many => many.concat().into(),
    }
}

/// The pieces a state is digested and transferred in: each of the service's snapshot parts,
/// then the encoded client table, cut into slices of at most `chunk` bytes (empty parts give
/// no piece). Slicing shares the buffers, so a part the service hands back unchanged at the
/// next checkpoint gives the same pieces, and the engine reuses their digests instead of
/// hashing the whole state again (ADR 012).
pub fn state_pieces(chunk: usize, service: &[Bytes], clients: &Bytes) -> Vec<Bytes> {
    cut_pieces(
        chunk,
        service.iter().chain(std::iter::once(clients)).cloned(),
    )
}

/// [`state_pieces`] of `parts` (the service's, then the client table), taken by value: a part
/// of at most `chunk` bytes becomes a piece as it is, without touching its reference count (at
/// tens of thousands of parts per checkpoint, each count is a cache miss).
pub(crate) fn cut_pieces(chunk: usize, parts: impl Iterator<Item = Bytes>) -> Vec<Bytes> {
    let chunk = chunk.max(1);
    let mut pieces = Vec::with_capacity(parts.size_hint().0);
    for part in parts {
        if part.len() <= chunk {
            if !part.is_empty() {
                pieces.push(part);
            }
            continue;
        }
        let mut start = 0;
        while start < part.len() {
            let end = part.len().min(start + chunk);
            pieces.push(part.slice(start..end));
            start = end;
        }
    }
    pieces
}

/// The service's length and every piece's entry, each piece hashed.
fn piece_infos(chunk: usize, service: &[Bytes], clients: &Bytes) -> (u64, Vec<PieceInfo>) {
    let pieces = state_pieces(chunk, service, clients);
    let service_len = service.iter().map(|p| p.len() as u64).sum();
    (
        service_len,
        pieces.iter().map(|p| PieceInfo::of(p)).collect(),
    )
}

/// The transfer units of a state: runs of consecutive pieces of at most `chunk` bytes in all
/// (greedy from the first; every piece fits, since none is longer than `chunk`). A state
/// transfer asks for one run at a time, so a state of many small pieces still travels in
/// messages of up to `chunk` bytes.
pub fn piece_groups(
    chunk: usize,
    lens: impl IntoIterator<Item = usize>,
) -> Vec<std::ops::Range<usize>> {
    let mut groups = Vec::new();
    let (mut start, mut bytes) = (0, 0usize);
    let mut count = 0;
    for (i, len) in lens.into_iter().enumerate() {
        if i > start && bytes + len > chunk {
            groups.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += len;
        count = i + 1;
    }
    if count > start {
        groups.push(start..count);
    }
    groups
}

fn piece_digest(bytes: &[u8]) -> Digest {
    Digest::of("shieldwall state piece v3", bytes)
}

/// One piece of a state as its manifest lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PieceInfo {
    /// Its length in bytes (1 to the chunk size).
    pub len: u32,
    /// Its digest.
    pub digest: Digest,
}

impl PieceInfo {
    /// The entry for `bytes`.
    pub fn of(bytes: &[u8]) -> PieceInfo {
        PieceInfo {
            len: bytes.len() as u32,
            digest: piece_digest(bytes),
        }
    }
}

pub(crate) fn manifest_digest(service_len: u64, clients_len: u64, pieces: &[PieceInfo]) -> Digest {
    // `Digest::of_parts` of the two lengths and the flat list of (length, digest) entries,
    // streamed through a buffer of 1,024 entries instead of building the list (36 bytes a
    // piece, most of a megabyte at every checkpoint of a large state); 36 KiB at a time keeps
    // blake3 hashing many of its 1 KiB chunks at once.
    let mut h = blake3::Hasher::new_derive_key("shieldwall state v3");
    for len in [service_len, clients_len] {
        h.update(&8u64.to_le_bytes());
        h.update(&len.to_le_bytes());
    }
    h.update(&((pieces.len() * 36) as u64).to_le_bytes());
    let mut flat = vec![0u8; 36 * 1024];
    for run in pieces.chunks(1024) {
        for (p, out) in run.iter().zip(flat.chunks_exact_mut(36)) {
            out[..4].copy_from_slice(&p.len.to_le_bytes());
            out[4..].copy_from_slice(&p.digest.0);
        }
        h.update(&flat[..run.len() * 36]);
    }
    Digest(*h.finalize().as_bytes())
}

/// What a state-transfer reply offers instead of a whole snapshot: the checkpoint, the lengths
/// and every piece's length and digest. Its digest is the certified state digest, so a replica
/// checks the manifest against the certificate, then each piece against the manifest, and can
/// fetch the pieces (in runs, see [`piece_groups`]) from several peers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotManifest {
    /// The stable checkpoint certificate the state matches.
    pub checkpoint: CheckpointCert,
    /// Bytes of the service snapshot (its pieces come first).
    pub service_len: u64,
    /// Bytes of the encoded client table (its pieces come after the service's).
    pub clients_len: u64,
    /// Every piece, in order.
    pub pieces: Vec<PieceInfo>,
}

impl SnapshotManifest {
    /// The state digest this manifest stands for.
    pub fn digest(&self) -> Digest {
        manifest_digest(self.service_len, self.clients_len, &self.pieces)
    }

    /// Whether the manifest is well formed for `chunk`-byte pieces (each piece 1 to `chunk`
    /// bytes, the service's pieces ending exactly at `service_len`, the lengths adding up) and
    /// matches its certificate.
    pub fn is_valid(&self, chunk: usize) -> bool {
        let Some(total) = self.service_len.checked_add(self.clients_len) else {
            return false;
        };
        let mut sum = 0u64;
        let mut service_boundary = self.service_len == 0;
        for p in &self.pieces {
            if p.len == 0 || p.len as usize > chunk {
                return false;
            }
            sum += u64::from(p.len);
            service_boundary |= sum == self.service_len;
        }
        sum == total && service_boundary && self.digest() == self.checkpoint.state_digest
    }

    /// The transfer units (see [`piece_groups`]).
    pub fn groups(&self, chunk: usize) -> Vec<std::ops::Range<usize>> {
        piece_groups(chunk, self.pieces.iter().map(|p| p.len as usize))
    }

    /// Whether `bytes` is the run of pieces `group` of this state.
    pub fn group_matches(&self, group: std::ops::Range<usize>, bytes: &[u8]) -> bool {
        let Some(pieces) = self.pieces.get(group) else {
            return false;
        };
        let mut rest = bytes;
        for p in pieces {
            let Some((piece, tail)) = rest.split_at_checked(p.len as usize) else {
                return false;
            };
            if piece_digest(piece) != p.digest {
                return false;
            }
            rest = tail;
        }
        rest.is_empty()
    }
}

/// State-transfer request for one run of pieces (see [`piece_groups`]) of the state at stable
/// checkpoint `seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchChunk {
    /// The checkpoint.
    pub seq: Seq,
    /// The run's index.
    pub index: u32,
}

/// One run of pieces of the state at stable checkpoint `seq` (each checked against the
/// manifest).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// The checkpoint.
    pub seq: Seq,
    /// The run's index.
    pub index: u32,
    /// Its pieces, concatenated.
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

/// State-transfer reply: the manifest of the sender's stable state if the requester is below
/// its stable checkpoint, then committed batches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchReply {
    /// Sender's view.
    pub view: View,
    /// The request's nonce.
    pub nonce: u64,
    /// Manifest of the state at the sender's stable checkpoint (pieces follow on request).
    /// Boxed: it is rare and large, and every message is as large as its largest kind.
    pub snapshot: Option<Box<SnapshotManifest>>,
    /// Committed batches in increasing sequence order (empty if the request asked for
    /// digests only).
    pub batches: Vec<CommittedBatch>,
    /// The digests of committed batches in increasing sequence order, if the request asked
    /// for digests only (else empty).
    pub digests: Vec<CommittedDigest>,
}

/// Client requests a follower relays to the leader of `view` because the leader has not
/// proposed them in time (PBFT 4.1: a backup relays a request to the primary before suspecting
/// it). Each request carries its client's signature; the leader admits them like requests
/// from their clients.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forward {
    /// The view whose leader the requests are for.
    pub view: View,
    /// The requests, within the batch limits.
    pub requests: Vec<SignedRequest>,
}

/// What a replica in durable mode must not forget, in the order the engine emitted them
/// ([`crate::Action::Persist`]). A restarted replica hands its records (and its newest saved
/// checkpoint) to [`crate::Replica::recover`], which rebuilds the state the votes it sent
/// depended on, so it never contradicts itself (ADR 008).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// This replica asked for a view change (its own signed VIEW-CHANGE): it takes no further
    /// part in lower views.
    ViewChange(Signed<ViewChange>),
    /// This replica entered `view` with this NEW-VIEW (sent as leader, or accepted); its
    /// re-proposals are this replica's accepted proposals of the view.
    NewView(Signed<NewView>),
    /// A proposal this replica accepted (or, as leader, made) in its view: its PREPARE (crash
    /// mode: its accept) for that sequence number went out after this.
    PrePrepare(Signed<PrePrepare>),
    /// A prepared certificate (Byzantine mode): this replica's COMMIT went out after this.
    Prepared(PreparedCert),
    /// A batch this replica committed (or accepted from f + 1 agreeing peers): executed, and
    /// replied to, after this.
    Committed(CommittedBatch),
}

impl Record {
    /// The sequence number the record is about; `None` for view records.
    pub fn seq(&self) -> Option<Seq> {
        match self {
            Record::ViewChange(_) | Record::NewView(_) => None,
            Record::PrePrepare(pp) => Some(pp.body.seq),
            Record::Prepared(c) => Some(c.pre_prepare.body.seq),
            Record::Committed(b) => Some(b.pre_prepare.seq),
        }
    }
}

/// A reply to a client (authenticated by the runtime with a MAC).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Reply {
    /// View the replica was in.
    pub view: View,
    /// Replying replica.
    pub replica: ReplicaId,
    /// The client.
    pub client: ClientId,
    /// The request's client sequence number.
    pub req_seq: u64,
    /// Whether the reply is to an unordered read.
    pub read_only: bool,
    /// The service's result.
    #[serde(with = "serde_bytes")]
    pub result: Vec<u8>,
}

/// A body signed by a replica.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Signed<T> {
    /// The signer.
    pub from: ReplicaId,
    /// The signed content.
    pub body: T,
    /// Signature over `body.signing_bytes()`.
    #[serde(with = "serde_bytes")]
    pub sig: Vec<u8>,
}

/// A body a replica authenticates with a MAC vector instead of a signature (PBFT's
/// authenticator; ADR 017): entry `i` is the MAC of the body's signing bytes under the key the
/// sender shares with replica `i`, and replica `i` checks only its own entry. Cheaper than a
/// signature by three orders of magnitude, but it convinces only its receiver: nothing built
/// from such messages can be shown to a third replica as proof.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Authenticated<T> {
    /// The sender.
    pub from: ReplicaId,
    /// The authenticated content.
    pub body: T,
    /// [`MAC_BYTES`] bytes per replica, in replica order (the sender's own entry is zeros).
    /// Empty in crash mode, where links authenticate replicas.
    #[serde(with = "serde_bytes")]
    pub macs: Vec<u8>,
}

impl<T> Authenticated<T> {
    /// The MAC vector's entry for `replica`, if the vector is well formed for `n` replicas.
    pub fn mac_for(&self, replica: ReplicaId, n: u32) -> Option<&[u8]> {
        mac_entry(&self.macs, replica, n)
    }
}

/// Content a replica signs, with a domain tag per message type.
pub trait Signable {
    /// The bytes covered by the signature.
    fn signing_bytes(&self) -> Vec<u8>;
}

fn tagged<T: Serialize>(tag: &str, body: &T) -> Vec<u8> {
    tagged_sized(tag, body, 64)
}

/// `tag`, a zero byte and `body`'s encoding, written into one buffer with room for
/// `body_bytes` (a hint: a larger body only costs a reallocation).
fn tagged_sized<T: Serialize>(tag: &str, body: &T, body_bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(tag.len() + 1 + body_bytes);
    out.extend_from_slice(tag.as_bytes());
    out.push(0);
    // Encoding into a Vec only fails on a serializer bug; fall back to an empty body, which
    // no honest signer produces, rather than panicking in the core.
    postcard::to_extend(body, out).unwrap_or_else(|_| {
        let mut out = tag.as_bytes().to_vec();
        out.push(0);
        out
    })
}

impl Signable for PrePrepare {
    fn signing_bytes(&self) -> Vec<u8> {
        tagged("pre-prepare", &(self.view, self.seq, self.batch_digest))
    }
}

/// Which phase a [`Vote`] belongs to; part of what is signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Phase {
    /// PBFT PREPARE.
    Prepare,
    /// PBFT COMMIT / Paxos accepted.
    Commit,
}

/// The bytes a COMMIT's MAC vector covers: the vote and its sender. Pairwise keys are
/// symmetric, so without the sender the MAC replica `a` computed for `b` would also pass as
/// `b`'s MAC for `a`, and a faulty replica could reflect `a`'s own vote back to it in `b`'s
/// name.
pub fn commit_mac_bytes(from: ReplicaId, vote: &Vote) -> Vec<u8> {
    tagged("commit-mac", &(from, vote))
}

/// Signing bytes for a vote in `phase`.
pub fn vote_signing_bytes(phase: Phase, vote: &Vote) -> Vec<u8> {
    match phase {
        Phase::Prepare => tagged("prepare", vote),
        Phase::Commit => tagged("commit", vote),
    }
}

impl Signable for Checkpoint {
    fn signing_bytes(&self) -> Vec<u8> {
        tagged("checkpoint", self)
    }
}

impl Signable for ViewChange {
    fn signing_bytes(&self) -> Vec<u8> {
        tagged("view-change", self)
    }
}

impl Signable for NewView {
    fn signing_bytes(&self) -> Vec<u8> {
        tagged("new-view", self)
    }
}

impl Signable for Fetch {
    fn signing_bytes(&self) -> Vec<u8> {
        tagged("fetch", self)
    }
}

impl Signable for Forward {
    fn signing_bytes(&self) -> Vec<u8> {
        // The requests are authenticated by their clients; the relayer binds view and digests.
        let digests: Vec<Digest> = self.requests.iter().map(|r| r.request.digest()).collect();
        tagged("forward", &(self.view, digests))
    }
}

impl Signable for FetchChunk {
    fn signing_bytes(&self) -> Vec<u8> {
        tagged("fetch_chunk", self)
    }
}

impl Signable for Chunk {
    fn signing_bytes(&self) -> Vec<u8> {
        // The bytes are checked against the manifest; the signature binds the sender to them.
        tagged(
            "chunk",
            &(self.seq, self.index, Digest::of("chunk", &self.bytes)),
        )
    }
}

impl Signable for FetchReply {
    fn signing_bytes(&self) -> Vec<u8> {
        // Replies are checked against the certificates they carry; the signature only binds
        // the sender, so sign a digest rather than re-encoding a large snapshot twice.
        let d = Digest::of("shieldwall fetch-reply v1", &tagged("fetch-reply", self));
        tagged("fetch-reply-digest", &d)
    }
}

/// Every replica-to-replica message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// PRE-PREPARE from the leader.
    PrePrepare(Signed<PrePrepare>),
    /// PREPARE (Byzantine mode only).
    Prepare(Signed<Vote>),
    /// COMMIT, authenticated by MACs (ADR 017).
    Commit(Authenticated<Vote>),
    /// CHECKPOINT.
    Checkpoint(Signed<Checkpoint>),
    /// VIEW-CHANGE.
    ViewChange(Signed<ViewChange>),
    /// NEW-VIEW.
    NewView(Signed<NewView>),
    /// State-transfer request.
    Fetch(Signed<Fetch>),
    /// State-transfer reply.
    FetchReply(Signed<FetchReply>),
    /// Client requests relayed to the leader.
    Forward(Signed<Forward>),
    /// State transfer: a request for one piece of a stable state.
    FetchChunk(Signed<FetchChunk>),
    /// State transfer: one piece of a stable state.
    Chunk(Signed<Chunk>),
}

impl Message {
    /// The replica that signed the message.
    pub fn from(&self) -> ReplicaId {
        match self {
            Message::PrePrepare(m) => m.from,
            Message::Prepare(m) => m.from,
            Message::Commit(m) => m.from,
            Message::Checkpoint(m) => m.from,
            Message::ViewChange(m) => m.from,
            Message::NewView(m) => m.from,
            Message::Fetch(m) => m.from,
            Message::FetchReply(m) => m.from,
            Message::Forward(m) => m.from,
            Message::FetchChunk(m) => m.from,
            Message::Chunk(m) => m.from,
        }
    }

    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::PrePrepare(_) => "pre_prepare",
            Message::Prepare(_) => "prepare",
            Message::Commit(_) => "commit",
            Message::Checkpoint(_) => "checkpoint",
            Message::ViewChange(_) => "view_change",
            Message::NewView(_) => "new_view",
            Message::Fetch(_) => "fetch",
            Message::FetchReply(_) => "fetch_reply",
            Message::Forward(_) => "forward",
            Message::FetchChunk(_) => "fetch_chunk",
            Message::Chunk(_) => "chunk",
        }
    }

    /// The bytes the outer signature (for a COMMIT, the MAC vector) covers.
    pub fn signing_bytes(&self) -> Vec<u8> {
        match self {
            Message::PrePrepare(m) => m.body.signing_bytes(),
            Message::Prepare(m) => vote_signing_bytes(Phase::Prepare, &m.body),
            Message::Commit(m) => commit_mac_bytes(m.from, &m.body),
            Message::Checkpoint(m) => m.body.signing_bytes(),
            Message::ViewChange(m) => m.body.signing_bytes(),
            Message::NewView(m) => m.body.signing_bytes(),
            Message::Fetch(m) => m.body.signing_bytes(),
            Message::FetchReply(m) => m.body.signing_bytes(),
            Message::Forward(m) => m.body.signing_bytes(),
            Message::FetchChunk(m) => m.body.signing_bytes(),
            Message::Chunk(m) => m.body.signing_bytes(),
        }
    }

    /// The outer signature; `None` for a message authenticated by MACs (COMMIT).
    pub fn signature(&self) -> Option<&[u8]> {
        Some(match self {
            Message::PrePrepare(m) => &m.sig,
            Message::Prepare(m) => &m.sig,
            Message::Commit(_) => return None,
            Message::Checkpoint(m) => &m.sig,
            Message::ViewChange(m) => &m.sig,
            Message::NewView(m) => &m.sig,
            Message::Fetch(m) => &m.sig,
            Message::FetchReply(m) => &m.sig,
            Message::Forward(m) => &m.sig,
            Message::FetchChunk(m) => &m.sig,
            Message::Chunk(m) => &m.sig,
        })
    }
}

/// Why bytes could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// More bytes than [`MESSAGE_BYTES_MAX`].
    #[error("message of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// Malformed encoding.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Bytes left after a complete message.
    #[error("{0} trailing bytes after message")]
    Trailing(usize),
}

/// Canonical encoding of a value (postcard).
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).unwrap_or_default()
}

/// Strict decoding: bounded size, no trailing bytes.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, DecodeError> {
    decode_limited(bytes, MESSAGE_BYTES_MAX)
}

/// [`decode`] with another size limit: for a replica's own checksummed files (a saved
/// checkpoint holds the whole service state, which may exceed what one message may carry).
pub fn decode_limited<'a, T: Deserialize<'a>>(
    bytes: &'a [u8],
    max: usize,
) -> Result<T, DecodeError> {
    if bytes.len() > max {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    let (value, rest) =
        postcard::take_from_bytes(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::Trailing(rest.len()));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_request() -> impl Strategy<Value = SignedRequest> {
        (
            any::<u64>(),
            any::<u64>(),
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 0..64),
            proptest::collection::vec(any::<u8>(), 0..64),
            0u8..3,
        )
            .prop_map(
                |(client, req_seq, read_only, op, auth, kind)| SignedRequest {
                    request: Request {
                        client,
                        req_seq,
                        read_only,
                        op: op.into(),
                    },
                    auth: match kind {
                        0 => RequestAuth::Signature(auth.into()),
                        1 => RequestAuth::Macs(auth.into()),
                        _ => RequestAuth::Relayed,
                    },
                },
            )
    }

    proptest! {
        /// Cutting parts taken by value gives the pieces `state_pieces` gives, and a part that
        /// fits in a chunk is its own piece, the very buffer (the engine recognises unchanged
        /// parts by address).
        #[test]
        fn pieces_of_owned_parts_are_the_same_and_keep_whole_parts(
            lens in proptest::collection::vec(0usize..70, 0..12),
            clients_len in 0usize..70,
            chunk in 1usize..40,
        ) {
            let parts: Vec<Bytes> = lens.iter().map(|&n| vec![n as u8; n].into()).collect();
            let clients: Bytes = vec![9; clients_len].into();
            let expected = state_pieces(chunk, &parts, &clients);
            let owned = cut_pieces(
                chunk,
                parts.clone().into_iter().chain(std::iter::once(clients.clone())),
            );
            prop_assert_eq!(&owned, &expected);
            let whole: Vec<*const u8> = parts
                .iter()
                .chain(std::iter::once(&clients))
                .filter(|p| !p.is_empty() && p.len() <= chunk)
                .map(|p| p.as_ptr())
                .collect();
            let kept = owned
                .iter()
                .filter(|p| whole.contains(&p.as_ptr()))
                .count();
            prop_assert_eq!(kept, whole.len());
        }

        #[test]
        fn snapshot_parts_concatenate_to_its_encoding(
            seq in any::<u64>(),
            service_len in prop_oneof![0usize..200, 16_000usize..17_000, 2_097_100usize..2_097_200],
            clients_len in 0usize..300,
        ) {
            let snap = StateSnapshot {
                checkpoint: CheckpointCert {
                    seq,
                    state_digest: Digest([7; 32]),
                    proof: Vec::new(),
                },
                service: vec![vec![1; service_len].into(), Bytes::new(), vec![3; service_len / 3].into()],
                clients: vec![2; clients_len].into(),
            };
            let parts: Vec<u8> = snap.encoded_parts().concat();
            prop_assert!(parts == encode(&snap));
            let back: StateSnapshot = decode_limited(&parts, usize::MAX).unwrap();
            prop_assert_eq!(back, snap);
        }

        /// Byte strings are written as byte arrays, which postcard lays out exactly like a
        /// sequence of `u8`: the change kept the wire format.
        #[test]
        fn byte_strings_keep_the_sequence_layout(op in proptest::collection::vec(any::<u8>(), 0..300)) {
            #[derive(Serialize)]
            struct AsSequence {
                client: ClientId,
                req_seq: u64,
                read_only: bool,
                op: Vec<u8>,
            }
            let request = Request { client: 3, req_seq: 9, read_only: false, op: op.clone().into() };
            let plain = AsSequence { client: 3, req_seq: 9, read_only: false, op };
            prop_assert!(encode(&request) == encode(&plain));
        }
    }

    fn arb_vote() -> impl Strategy<Value = Signed<Vote>> {
        (
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            any::<[u8; 32]>(),
            proptest::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|(from, view, seq, d, sig)| Signed {
                from,
                body: Vote {
                    view,
                    seq,
                    batch_digest: Digest(d),
                },
                sig,
            })
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (
                any::<u32>(),
                any::<u64>(),
                any::<u64>(),
                proptest::collection::vec(arb_request(), 0..4)
            )
                .prop_map(|(from, view, seq, batch)| Message::PrePrepare(Signed {
                    from,
                    body: PrePrepare {
                        view,
                        seq,
                        batch_digest: batch_digest(&batch),
                        batch: batch.into()
                    },
                    sig: vec![1; 64],
                })),
            arb_vote().prop_map(Message::Prepare),
            arb_vote().prop_map(|v| Message::Commit(Authenticated {
                from: v.from,
                body: v.body,
                macs: v.sig,
            })),
            (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(from, executed, view)| {
                Message::Fetch(Signed {
                    from,
                    body: Fetch {
                        executed,
                        view,
                        nonce: executed ^ view,
                        digests_only: view % 2 == 1,
                    },
                    sig: vec![],
                })
            }),
            (
                any::<u32>(),
                any::<u64>(),
                proptest::collection::vec(arb_vote(), 0..4)
            )
                .prop_map(|(from, view, commits)| Message::ViewChange(Signed {
                    from,
                    body: ViewChange {
                        new_view: view,
                        checkpoint: CheckpointCert {
                            seq: 0,
                            state_digest: Digest::default(),
                            proof: vec![]
                        },
                        prepared: vec![PreparedCert {
                            pre_prepare: Signed {
                                from,
                                body: PrePrepare {
                                    view,
                                    seq: 1,
                                    batch_digest: Digest::default(),
                                    batch: Default::default()
                                },
                                sig: vec![],
                            },
                            prepares: commits,
                        }],
                    },
                    sig: vec![7; 64],
                })),
        ]
    }

    proptest! {
        #[test]
        fn codec_round_trip(m in arb_message()) {
            let bytes = encode(&m);
            let back: Message = decode(&bytes).unwrap();
            prop_assert_eq!(back, m);
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Message>(&bytes);
        }

        #[test]
        fn truncation_is_an_error(m in arb_message(), cut in 1usize..16) {
            let bytes = encode(&m);
            let cut = cut.min(bytes.len());
            prop_assert!(decode::<Message>(&bytes[..bytes.len() - cut]).is_err());
        }
    }

    #[test]
    fn trailing_bytes_rejected() {
        let m = Message::Fetch(Signed {
            from: 1,
            body: Fetch {
                executed: 3,
                view: 0,
                nonce: 0,
                digests_only: false,
            },
            sig: vec![],
        });
        let mut bytes = encode(&m);
        bytes.push(0);
        assert_eq!(decode::<Message>(&bytes), Err(DecodeError::Trailing(1)));
    }

    proptest! {
        #[test]
        fn request_bytes_are_the_tag_and_the_encoding(r in arb_request()) {
            // The one-buffer encoding is byte for byte what signatures and digests always
            // covered, and a batch's digest is the same from either path.
            let mut expected = b"request\0".to_vec();
            expected.extend_from_slice(&postcard::to_allocvec(&r.request).unwrap());
            prop_assert_eq!(r.request.signing_bytes(), expected.clone());
            prop_assert_eq!(r.request.digest(), request_digest(&expected));
            // Operations too large for the stack buffer take the allocating path.
            let mut large = r.request.clone();
            large.op = vec![7u8; 200 + r.request.op.len() * 4].into();
            let mut expected_large = b"request\0".to_vec();
            expected_large.extend_from_slice(&postcard::to_allocvec(&large).unwrap());
            prop_assert_eq!(large.digest(), request_digest(&expected_large));
            let batch = vec![r.clone(), r];
            prop_assert_eq!(
                batch_digest(&batch),
                batch_digest_of([request_digest(&expected); 2].into_iter())
            );
        }
    }

    #[test]
    fn signing_bytes_separate_phases() {
        let v = Vote {
            view: 1,
            seq: 2,
            batch_digest: Digest([3; 32]),
        };
        assert_ne!(
            vote_signing_bytes(Phase::Prepare, &v),
            vote_signing_bytes(Phase::Commit, &v)
        );
    }

    /// The manifest digest is `Digest::of_parts` of the two lengths and the flat list of
    /// (length, digest) entries, whatever the number of pieces (the streamed computation cuts
    /// the list in runs of 1,024).
    #[test]
    fn manifest_digest_is_the_digest_of_the_flat_manifest() {
        for count in [0usize, 1, 1023, 1024, 1025, 3000] {
            let pieces: Vec<PieceInfo> = (0..count)
                .map(|i| PieceInfo {
                    len: i as u32 * 7 + 1,
                    digest: Digest([i as u8; 32]),
                })
                .collect();
            let flat: Vec<u8> = pieces
                .iter()
                .flat_map(|p| p.len.to_le_bytes().into_iter().chain(p.digest.0))
                .collect();
            let expected = Digest::of_parts(
                "shieldwall state v3",
                &[&5u64.to_le_bytes(), &9u64.to_le_bytes(), &flat],
            );
            assert_eq!(manifest_digest(5, 9, &pieces), expected, "{count} pieces");
        }
    }
}
