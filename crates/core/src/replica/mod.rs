//! The replica state machine. One module per subprotocol; they all extend [`Replica`].

mod checkpoint;
mod client_requests;
mod normal_case;
mod recovery;
mod state_transfer;
#[cfg(test)]
mod tests;
mod view_change;

pub use recovery::RecoverError;
pub use view_change::compute_new_view;

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::sync::Arc;

use crate::auth::Authenticator;
use crate::client_table::ClientTable;
use crate::config::{Config, ConfigError, FaultModel};
use crate::message::{
    Checkpoint, CheckpointCert, Message, NewView, PieceInfo, PrePrepare, PreparedCert, Signed,
    SignedRequest, SnapshotManifest, ViewChange, Vote,
};
use crate::types::{ClientId, Digest, ReplicaId, Seq, View};
use crate::verify::Reject;
use crate::{Action, Event};

/// What a replica is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Ordering requests in its view.
    Normal,
    /// Waiting for NEW-VIEW of its (new) view.
    ViewChanging,
    /// Restarted without state: catching up from peers, casting no vote until a view change
    /// after its restart (see `docs/adr/002-amnesia-recovery.md`).
    Recovering,
}

/// Counters a runtime exports as metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Batches executed (including null batches).
    pub executed_batches: u64,
    /// Requests executed.
    pub executed_requests: u64,
    /// Views this replica entered after view 0.
    pub views_entered: u64,
    /// View changes this replica started.
    pub view_changes_started: u64,
    /// Snapshots installed by state transfer.
    pub snapshots_installed: u64,
    /// Batches received by state transfer.
    pub batches_fetched: u64,
    /// Stable checkpoints reached.
    pub stable_checkpoints: u64,
    /// Bytes of state hashed for checkpoints (pieces the service handed back unchanged since
    /// the previous checkpoint are not hashed again).
    pub state_bytes_hashed: u64,
    /// Rejected inputs by reason label.
    pub rejected: BTreeMap<&'static str, u64>,
}

/// One sequence number's agreement state in the current view.
#[derive(Clone, Debug, Default)]
pub(crate) struct Slot {
    /// The accepted pre-prepare of the current view.
    pub(crate) pre_prepare: Option<Signed<PrePrepare>>,
    /// Prepares of the current view, one per replica.
    pub(crate) prepares: BTreeMap<ReplicaId, Signed<Vote>>,
    /// Commits of the current view, one per replica (each checked by its MAC, ADR 017).
    pub(crate) commits: BTreeMap<ReplicaId, Vote>,
    /// Whether this replica sent its commit in the current view.
    pub(crate) sent_commit: bool,
    /// The highest-view prepared certificate this replica holds (survives view changes).
    pub(crate) prepared_cert: Option<PreparedCert>,
    /// The committed batch, once committed.
    pub(crate) committed: Option<crate::message::CommittedBatch>,
}

/// Which votes can no longer change anything at a replica: PREPAREs of `view` for sequence
/// numbers in `executed + 1 ..= prepared` (those slots are prepared in `view`: the replica
/// has cast its commit), and COMMITs of `view` up to `committed` (those slots are committed or
/// executed here; a commit only ever counts towards this replica's own commit decision). The
/// runtime drops them before checking their signatures or MACs ([`Replica::settled_votes`]);
/// the engine would only store them.
///
/// PREPAREs for executed slots are not covered: after a view change the new leader
/// re-proposes slots above the stable checkpoint, and a replica that executed one must
/// prepare it again in the new view to send the commit the others may need.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SettledVotes {
    /// The replica's current view.
    pub view: View,
    /// Its last executed sequence number.
    pub executed: Seq,
    /// Every slot in `executed + 1 ..= prepared` is prepared in `view`.
    pub prepared: Seq,
    /// Every slot up to this one is committed or executed.
    pub committed: Seq,
}

impl SettledVotes {
    /// Whether `message` is a vote these settle (it cannot change the replica's state).
    pub fn covers(&self, message: &Message) -> bool {
        match message {
            Message::Prepare(v) => {
                v.body.view == self.view
                    && v.body.seq > self.executed
                    && v.body.seq <= self.prepared
            }
            Message::Commit(v) => v.body.view == self.view && v.body.seq <= self.committed,
            _ => false,
        }
    }
}

/// A pending client request.
#[derive(Clone, Debug)]
pub(crate) struct Pending {
    pub(crate) request: SignedRequest,
    pub(crate) arrived_ms: u64,
    /// Its number in arrival order: its entry in [`Replica::arrivals`] is the one with this
    /// number (older entries for the same request are stale).
    pub(crate) arrival: u64,
}

/// The batch handed to the service and not yet reported executed.
#[derive(Clone, Debug)]
pub(crate) struct InFlight {
    pub(crate) seq: Seq,
    pub(crate) keys: Vec<(ClientId, u64)>,
    pub(crate) snapshot: bool,
}

/// Amnesia recovery state (ADR 002).
#[derive(Clone, Debug)]
pub(crate) struct Recovery {
    /// Echoed by fetch replies to this incarnation's requests (stale replies are ignored).
    pub(crate) nonce: u64,
    /// The view each peer reported in a fresh reply, until a quorum answered.
    pub(crate) views: BTreeMap<ReplicaId, View>,
    /// The highest view of the first quorum of fresh replies, fixed once known (later, higher
    /// reports would only postpone the end of recovery).
    pub(crate) floor: Option<View>,
}

impl Recovery {
    /// The highest view reported by a quorum of peers, once a quorum has answered. Any view
    /// the previous incarnation voted in was entered by a quorum, which intersects this one in
    /// a correct replica whose view is at least that high.
    pub(crate) fn report(&mut self, from: ReplicaId, view: View, quorum: usize) {
        if self.floor.is_none() {
            self.views.insert(from, view);
            if self.views.len() >= quorum {
                self.floor = self.views.values().copied().max();
            }
        }
    }
}

/// A replica's state at a checkpoint: its pieces (the service snapshot's, then the encoded
/// client table's, see [`crate::message::state_pieces`]), each piece's length and digest, and
/// the runs of pieces a transfer asks for. Cloning shares the bytes: the checkpoint records,
/// the state served to peers and the snapshot saved to disk are one copy, and pieces a
/// service hands back unchanged are shared with the previous checkpoint too.
#[derive(Clone, Debug)]
pub(crate) struct HeldState {
    pub(crate) digest: Digest,
    service_len: u64,
    /// How many of `pieces` are the service's.
    service_pieces: usize,
    // `Arc<Vec<_>>` rather than `Arc<[_]>`: a state of tens of thousands of pieces is taken at
    // every checkpoint, and turning a `Vec` into an `Arc<[_]>` copies it into a fresh
    // allocation (page faults and zeroing of a few MB per checkpoint under load).
    pieces: Arc<Vec<bytes::Bytes>>,
    infos: Arc<Vec<PieceInfo>>,
    groups: Arc<Vec<std::ops::Range<usize>>>,
}

/// The pieces of the newest state a replica took, by buffer address and length, for
/// [`HeldState::new`]. The table is kept between checkpoints so that its room is reused: at
/// tens of thousands of pieces a fresh table per checkpoint cost page faults and zeroing.
#[derive(Debug, Default)]
pub(crate) struct KnownPieces {
    table: std::collections::HashMap<(usize, usize), PieceInfo, BuildAddressHasher>,
}

impl Clone for KnownPieces {
    /// A scratch table: a clone starts empty (it only saves allocations).
    fn clone(&self) -> KnownPieces {
        KnownPieces::default()
    }
}

impl HeldState {
    /// The state of a service snapshot in `service` parts and an encoded client table. Pieces
    /// that are the very buffers of a piece of `previous` (the service returned a part it had
    /// not changed) keep that piece's digest: only new bytes are hashed. Returns the state and
    /// the number of bytes hashed.
    pub(crate) fn new(
        chunk: usize,
        service: Vec<bytes::Bytes>,
        clients: bytes::Bytes,
        previous: Option<&HeldState>,
        known: &mut KnownPieces,
    ) -> (HeldState, u64) {
        let service_len: u64 = service.iter().map(|p| p.len() as u64).sum();
        let clients_len = clients.len() as u64;
        let pieces =
            crate::message::cut_pieces(chunk, service.into_iter().chain(std::iter::once(clients)));
        // Entries of an earlier state may name buffers freed since: start afresh.
        let known = &mut known.table;
        known.clear();
        if let Some(p) = previous {
            known.extend(
                p.pieces
                    .iter()
                    .zip(p.infos.iter())
                    .map(|(b, info)| ((b.as_ptr() as usize, b.len()), *info)),
            );
        }
        let mut hashed = 0;
        let infos: Vec<PieceInfo> = pieces
            .iter()
            .map(|b| {
                // Sound: `previous` keeps its buffers alive and they never change, so a live
                // buffer at the same address and length holds the same bytes.
                known
                    .get(&(b.as_ptr() as usize, b.len()))
                    .copied()
                    .unwrap_or_else(|| {
                        hashed += b.len() as u64;
                        PieceInfo::of(b)
                    })
            })
            .collect();
        let state = HeldState::from_pieces(chunk, service_len, clients_len, pieces, infos);
        (state, hashed)
    }

    /// A state from pieces already checked against `infos` (a state transfer's).
    pub(crate) fn from_pieces(
        chunk: usize,
        service_len: u64,
        clients_len: u64,
        pieces: Vec<bytes::Bytes>,
        infos: Vec<PieceInfo>,
    ) -> HeldState {
        let mut sum = 0u64;
        let service_pieces = pieces
            .iter()
            .take_while(|p| {
                sum += p.len() as u64;
                sum <= service_len
            })
            .count();
        let groups = crate::message::piece_groups(chunk, infos.iter().map(|p| p.len as usize));
        HeldState {
            digest: crate::message::manifest_digest(service_len, clients_len, &infos),
            service_len,
            service_pieces,
            pieces: Arc::new(pieces),
            infos: Arc::new(infos),
            groups: Arc::new(groups),
        }
    }

    /// Run `index` of pieces, concatenated (empty past the end).
    pub(crate) fn piece(&self, index: u32) -> Vec<u8> {
        self.groups
            .get(index as usize)
            .map(|g| self.pieces[g.clone()].concat())
            .unwrap_or_default()
    }

    /// The service's pieces.
    pub(crate) fn service_pieces(&self) -> Vec<bytes::Bytes> {
        self.pieces[..self.service_pieces].to_vec()
    }

    /// The service snapshot in one buffer.
    pub(crate) fn service(&self) -> bytes::Bytes {
        crate::message::concat_bytes(&self.pieces[..self.service_pieces])
    }

    /// The encoded client table in one buffer.
    pub(crate) fn clients(&self) -> bytes::Bytes {
        crate::message::concat_bytes(&self.pieces[self.service_pieces..])
    }

    /// The manifest of this state under `checkpoint`.
    pub(crate) fn manifest(&self, checkpoint: CheckpointCert) -> SnapshotManifest {
        let total: u64 = self.infos.iter().map(|p| u64::from(p.len)).sum();
        SnapshotManifest {
            checkpoint,
            service_len: self.service_len,
            clients_len: total - self.service_len,
            pieces: self.infos.to_vec(),
        }
    }
}

/// Hashes buffer addresses and lengths for [`HeldState::new`]'s table of known pieces: a
/// multiply per word instead of SipHash (nothing here is chosen by a peer, and the table is
/// only searched, never iterated, so its order cannot leak into what the engine does). With
/// tens of thousands of pieces per checkpoint, SipHash and the table's growth were a few per
/// cent of a replica's CPU under load.
type BuildAddressHasher = std::hash::BuildHasherDefault<AddressHasher>;

#[derive(Default)]
struct AddressHasher(u64);

impl std::hash::Hasher for AddressHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(26) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        // Addresses are aligned: their low bits are zero, and so are a product's. The table
        // takes its bucket from the low bits: fold the well-mixed high bits down.
        self.0 ^ (self.0 >> 32)
    }
}

/// A snapshot being fetched piece by piece (checked against its manifest).
#[derive(Clone, Debug)]
pub(crate) struct Transfer {
    pub(crate) manifest: crate::message::SnapshotManifest,
    /// The runs of pieces asked for one at a time (see `crate::message::piece_groups`).
    pub(crate) groups: Vec<std::ops::Range<usize>>,
    /// Each run once received and checked.
    pub(crate) pieces: Vec<Option<Vec<u8>>>,
    pub(crate) missing: usize,
    /// Runs asked for: from whom, and until when.
    pub(crate) asked: BTreeMap<u32, (ReplicaId, u64)>,
    /// Peers that offered this state (they hold it): pieces are asked of them in turn.
    pub(crate) sources: Vec<ReplicaId>,
    /// Turns taken among the sources, and among every peer for pieces that failed once.
    pub(crate) turn: usize,
    /// Pieces that timed out or failed their check: asked of every peer in turn from then on.
    pub(crate) failed: std::collections::BTreeSet<u32>,
    pub(crate) last_progress_ms: u64,
}

/// An outstanding state-transfer request.
#[derive(Clone, Debug)]
pub(crate) struct FetchState {
    /// The peers asked ([`Config::fetch_agreement`] of them); the first for the batches, the
    /// others for their digests.
    pub(crate) peers: Vec<ReplicaId>,
    pub(crate) deadline_ms: u64,
}

/// One peer's word for a slot in state transfer: the digest of the batch it committed there
/// and, if it was asked for batches, the batch.
#[derive(Clone, Debug)]
pub(crate) struct Vouch {
    pub(crate) digest: Digest,
    pub(crate) batch: Option<crate::message::CommittedBatch>,
}

/// A PBFT / Multi-Paxos replica. See the crate documentation for the event/action contract.
pub struct Replica {
    pub(crate) cfg: Config,
    pub(crate) id: ReplicaId,
    pub(crate) auth: Arc<dyn Authenticator>,
    pub(crate) now_ms: u64,

    pub(crate) view: View,
    pub(crate) status: Status,
    /// While set, the replica is recovering from amnesia (ADR 002): it casts no vote until it
    /// enters a view above every view a quorum of peers reported after its restart.
    pub(crate) recovery: Option<Recovery>,

    // Normal case.
    pub(crate) slots: BTreeMap<Seq, Slot>,
    pub(crate) next_seq: Seq,
    pub(crate) last_executed: Seq,
    pub(crate) in_flight: Option<InFlight>,
    pub(crate) last_progress_ms: u64,
    pub(crate) future: VecDeque<Message>,

    // Clients.
    pub(crate) clients: ClientTable,
    pub(crate) pending: BTreeMap<(ClientId, u64), Pending>,
    /// Pending requests in arrival order: `(arrival number, arrived_ms, client, req_seq)`,
    /// times non-decreasing. Removal is lazy: an entry is live while the request is pending
    /// with that arrival number; the front is always live (or the queue empty), and the queue
    /// is compacted when dead entries outnumber live ones (see `remove_pending`).
    pub(crate) arrivals: VecDeque<(u64, u64, ClientId, u64)>,
    /// Number of the next arrival.
    pub(crate) next_arrival: u64,
    pub(crate) pending_per_client: BTreeMap<ClientId, u32>,
    pub(crate) queue: VecDeque<(ClientId, u64)>,
    /// Pending requests this leader proposed in this view (only searched, never iterated: a
    /// hash set with a fixed hasher).
    pub(crate) proposed: HashSet<(ClientId, u64), foldhash::fast::FixedState>,
    /// Followers: pending requests that arrived at or before this time were relayed to the
    /// leader of the current view (`None`: none yet; reset on entering a view).
    pub(crate) forwarded_until: Option<u64>,

    // Checkpoints.
    pub(crate) stable: CheckpointCert,
    pub(crate) stable_state: Option<HeldState>,
    pub(crate) own_checkpoints: BTreeMap<Seq, HeldState>,
    pub(crate) checkpoint_votes: BTreeMap<Seq, BTreeMap<ReplicaId, Signed<Checkpoint>>>,
    pub(crate) ahead_checkpoints: BTreeMap<ReplicaId, Seq>,
    pub(crate) checkpoint_resend_ms: u64,

    // View change.
    pub(crate) view_start_ms: u64,
    pub(crate) vc_timeout_ms: u64,
    pub(crate) vc_deadline_ms: Option<u64>,
    pub(crate) latest_vc: BTreeMap<ReplicaId, Signed<ViewChange>>,
    /// Peers asked for the NEW-VIEW of the view this replica is changing to (that view, and
    /// who): see `ask_for_new_view`.
    pub(crate) asked_new_view: (View, BTreeSet<ReplicaId>),
    pub(crate) new_view: Option<Signed<NewView>>,
    pub(crate) sent_new_view: Option<View>,

    // State transfer.
    pub(crate) fetch: Option<FetchState>,
    pub(crate) fetch_target: Seq,
    /// The peer the last FETCH asked for the batches (the next round starts after it).
    pub(crate) last_fetch_peer: ReplicaId,
    /// What peers vouched for in fetch replies and is not yet accepted: per sequence number,
    /// each peer's batch digest and, from the peer asked for batches, the batch itself (one
    /// entry per peer, so a liar holds at most one per slot of the window). A batch is
    /// accepted once [`Config::fetch_agreement`] peers sent its digest and one sent the batch.
    pub(crate) vouched: BTreeMap<Seq, BTreeMap<ReplicaId, Vouch>>,
    /// A snapshot being fetched in pieces.
    pub(crate) transfer: Option<Transfer>,
    /// The manifest of the stable state (computed on the first request for it).
    pub(crate) stable_manifest: Option<crate::message::SnapshotManifest>,
    /// The previous stable state, still served to transfers that started before the last
    /// checkpoint became stable.
    pub(crate) previous_state: Option<(Seq, HeldState)>,
    /// Scratch room for taking checkpoints (see [`KnownPieces`]).
    pub(crate) known_pieces: KnownPieces,

    // Durable mode (ADR 007).
    /// Tickets handed out by `persist`.
    pub(crate) tickets_issued: u64,
    /// The highest ticket the runtime reported durable.
    pub(crate) tickets_persisted: u64,
    /// The highest ticket handed to the caller: outputs after it wait for it.
    pub(crate) tickets_emitted: u64,
    /// Outputs waiting for their ticket to be durable, in emission order.
    pub(crate) held: VecDeque<(u64, Action)>,
    /// While rebuilding state from the log in `recover`: persist nothing, execute nothing.
    pub(crate) replaying: bool,
    /// The newest stable checkpoint handed out in [`Action::SaveCheckpoint`].
    pub(crate) saved_checkpoint: Seq,

    pub(crate) stats: Stats,
    pub(crate) out: Vec<Action>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("id", &self.id)
            .field("view", &self.view)
            .field("status", &self.status)
            .field("last_executed", &self.last_executed)
            .field("stable", &self.stable.seq)
            .finish_non_exhaustive()
    }
}

impl Replica {
    /// A replica starting a fresh cluster (view 0, genesis state).
    pub fn new(
        config: Config,
        id: ReplicaId,
        auth: Arc<dyn Authenticator>,
    ) -> Result<Replica, ConfigError> {
        config.validate()?;
        if id >= config.n {
            return Err(ConfigError::Invalid {
                field: "id",
                why: format!("{id} >= n={}", config.n),
            });
        }
        let vc_timeout_ms = config.view_change_timeout_ms;
        Ok(Replica {
            cfg: config,
            id,
            auth,
            now_ms: 0,
            view: 0,
            status: Status::Normal,
            recovery: None,
            slots: BTreeMap::new(),
            next_seq: 1,
            last_executed: 0,
            in_flight: None,
            last_progress_ms: 0,
            future: VecDeque::new(),
            clients: ClientTable::default(),
            pending: BTreeMap::new(),
            arrivals: VecDeque::new(),
            next_arrival: 0,
            pending_per_client: BTreeMap::new(),
            queue: VecDeque::new(),
            proposed: HashSet::default(),
            forwarded_until: None,
            stable: CheckpointCert {
                seq: 0,
                state_digest: Digest::default(),
                proof: Vec::new(),
            },
            stable_state: None,
            own_checkpoints: BTreeMap::new(),
            checkpoint_votes: BTreeMap::new(),
            ahead_checkpoints: BTreeMap::new(),
            checkpoint_resend_ms: 0,
            view_start_ms: 0,
            vc_timeout_ms,
            vc_deadline_ms: None,
            latest_vc: BTreeMap::new(),
            asked_new_view: (0, BTreeSet::new()),
            new_view: None,
            sent_new_view: None,
            fetch: None,
            fetch_target: 0,
            last_fetch_peer: id,
            vouched: BTreeMap::new(),
            transfer: None,
            stable_manifest: None,
            previous_state: None,
            known_pieces: KnownPieces::default(),
            tickets_issued: 0,
            tickets_persisted: 0,
            tickets_emitted: 0,
            held: VecDeque::new(),
            replaying: false,
            saved_checkpoint: 0,
            stats: Stats::default(),
            out: Vec::new(),
        })
    }

    /// A replica restarted without its state (memory mode): it catches up from peers and casts no
    /// vote until it has entered a view newer than any it may have voted in before.
    pub fn restarted(
        config: Config,
        id: ReplicaId,
        auth: Arc<dyn Authenticator>,
        now_ms: u64,
    ) -> Result<Replica, ConfigError> {
        let mut r = Replica::new(config, id, auth)?;
        // The restart time tells this incarnation's fetches from its predecessor's.
        r.recovery = Some(Recovery {
            nonce: now_ms.wrapping_add(1),
            views: BTreeMap::new(),
            floor: None,
        });
        r.now_ms = now_ms;
        // Ask the peers at the first tick.
        r.last_progress_ms = now_ms.saturating_sub(r.cfg.fetch_timeout_ms);
        r.fetch_target = 1;
        Ok(r)
    }

    /// Feed one event at time `now_ms` (monotonic milliseconds); actions are appended to `out`.
    pub fn handle(&mut self, now_ms: u64, event: Event, out: &mut Vec<Action>) {
        self.now_ms = self.now_ms.max(now_ms);
        match event {
            Event::Request(r) => self.on_request(r),
            Event::Message(m) => self.on_message(m),
            Event::ProvenFault { from, view } => self.on_proven_fault(from, view),
            Event::Executed {
                seq,
                results,
                snapshot,
            } => self.on_executed(seq, results, snapshot),
            Event::Tick => self.on_tick(),
            Event::Persisted { ticket } => {
                self.tickets_persisted =
                    self.tickets_persisted.max(ticket.min(self.tickets_issued));
            }
        }
        self.save_stable_checkpoint();
        self.release(out);
    }

    /// Hand this step's actions to the caller, holding back (in order) every output that
    /// follows a record not yet durable. Memory mode never persists, so nothing waits.
    fn release(&mut self, out: &mut Vec<Action>) {
        while let Some((ticket, _)) = self.held.front() {
            if *ticket > self.tickets_persisted {
                break;
            }
            if let Some((_, action)) = self.held.pop_front() {
                out.push(action);
            }
        }
        for action in self.out.drain(..) {
            match action {
                Action::Persist { ticket, .. } => {
                    self.tickets_emitted = ticket;
                    out.push(action);
                }
                Action::SaveCheckpoint(_) => out.push(action),
                _ if self.held.is_empty() && self.tickets_emitted <= self.tickets_persisted => {
                    out.push(action);
                }
                _ => self.held.push_back((self.tickets_emitted, action)),
            }
        }
    }

    /// Durable mode: log `record` before anything that depends on it leaves the replica.
    ///
    /// Nothing is logged during amnesia recovery (a durable replica that lost its disk): a
    /// log written then would let a second restart recover from it and vote at once, although
    /// the votes of the incarnation before the loss are unknown. The log starts with the
    /// NEW-VIEW that ends the recovery.
    /// `record` is built only when it is logged: memory mode (the hot path) copies nothing.
    pub(crate) fn persist(&mut self, record: impl FnOnce() -> crate::message::Record) {
        if self.cfg.durability != crate::config::Durability::Durable
            || self.replaying
            || self.recovery.is_some()
        {
            return;
        }
        let record = record();
        self.tickets_issued += 1;
        let key = record.seq().unwrap_or(self.stable.seq.saturating_add(1));
        self.out.push(Action::Persist {
            ticket: self.tickets_issued,
            key,
            record,
        });
    }

    /// The votes that can no longer change this replica's state (see [`SettledVotes`]): of
    /// the slots after the last executed one, the contiguous run prepared in the current view
    /// and the contiguous run committed. Costs a walk over those runs.
    pub fn settled_votes(&self) -> SettledVotes {
        let mut settled = SettledVotes {
            view: self.view,
            executed: self.last_executed,
            prepared: self.last_executed,
            committed: self.last_executed,
        };
        let (mut preparing, mut committing) = (true, true);
        for (&seq, slot) in self.slots.range(self.last_executed + 1..) {
            preparing &= seq == settled.prepared + 1
                && slot
                    .prepared_cert
                    .as_ref()
                    .is_some_and(|c| c.pre_prepare.body.view == self.view);
            committing &= seq == settled.committed + 1 && slot.committed.is_some();
            if preparing {
                settled.prepared = seq;
            }
            if committing {
                settled.committed = seq;
            }
            if !preparing && !committing {
                break;
            }
        }
        settled
    }

    /// Outputs waiting for records to become durable (for metrics; bounded by what arrives
    /// while one group of records syncs).
    pub fn held_outputs(&self) -> usize {
        self.held.len()
    }

    /// Count an input the caller rejected before it reached the engine (for [`Stats`]).
    pub fn note_rejected(&mut self, reason: Reject) {
        self.reject(reason);
    }

    /// The earliest time at which [`Event::Tick`] has work to do.
    pub fn next_deadline(&self) -> Option<u64> {
        [
            self.request_deadline(),
            self.forward_deadline(),
            self.vc_deadline_ms,
            self.fetch_deadline(),
            self.transfer_deadline(),
            self.checkpoint_resend_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// This replica's index.
    pub fn id(&self) -> ReplicaId {
        self.id
    }
    /// Current view.
    pub fn view(&self) -> View {
        self.view
    }
    /// Current status.
    pub fn status(&self) -> Status {
        if self.recovery.is_some() {
            Status::Recovering
        } else {
            self.status
        }
    }
    /// Whether this replica leads its current view.
    pub fn is_leader(&self) -> bool {
        self.cfg.leader(self.view) == self.id
    }
    /// Last sequence number executed (reported by [`Event::Executed`] or installed).
    pub fn last_executed(&self) -> Seq {
        self.last_executed
    }
    /// Sequence number of the last stable checkpoint.
    pub fn stable_checkpoint(&self) -> Seq {
        self.stable.seq
    }
    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }
    /// Requests held and not yet executed.
    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }
    /// The highest sequence number this replica knows to be committed: its own committed
    /// slots and stable checkpoint, and what peers showed it (checkpoints of f+1 replicas
    /// beyond its window, batches accepted in state transfer). A replica whose
    /// [`Replica::last_executed`] is far below it is behind.
    pub fn known_committed(&self) -> Seq {
        let own = self
            .slots
            .iter()
            .rev()
            .find(|(_, slot)| slot.committed.is_some())
            .map_or(0, |(seq, _)| *seq);
        own.max(self.fetch_target)
            .max(self.stable.seq)
            .max(self.last_executed)
    }
    /// Whether a state transfer is under way (committed batches or a snapshot being fetched).
    pub fn transferring_state(&self) -> bool {
        self.fetch.is_some() || self.transfer.is_some()
    }

    pub(crate) fn reject(&mut self, reason: Reject) {
        *self.stats.rejected.entry(reason.as_str()).or_insert(0) += 1;
    }

    /// Whether this replica may cast votes (not recovering from amnesia).
    pub(crate) fn may_vote(&self) -> bool {
        self.recovery.is_none()
    }

    /// This replica's signature over `bytes`; none in crash mode, where replicas are trusted
    /// and their signatures are never checked (`verify::verify_message`).
    pub(crate) fn sign_bytes(&self, bytes: &[u8]) -> Vec<u8> {
        match self.cfg.fault_model {
            FaultModel::Byzantine => self.auth.sign(bytes),
            FaultModel::Crash => Vec::new(),
        }
    }

    pub(crate) fn broadcast(&mut self, message: Message) {
        self.out.push(Action::Broadcast { message });
    }

    pub(crate) fn send(&mut self, to: ReplicaId, message: Message) {
        self.out.push(Action::Send { to, message });
    }

    fn on_message(&mut self, m: Message) {
        if m.from() >= self.cfg.n || m.from() == self.id {
            self.reject(Reject::UnknownSender);
            return;
        }
        match m {
            Message::PrePrepare(pp) => self.on_pre_prepare(pp),
            Message::Prepare(v) => self.on_prepare(v),
            Message::Commit(v) => self.on_commit(v),
            Message::Checkpoint(c) => self.on_checkpoint(c),
            Message::ViewChange(vc) => self.on_view_change(vc),
            Message::NewView(nv) => self.on_new_view(nv),
            Message::Fetch(f) => self.on_fetch(f),
            Message::FetchReply(r) => self.on_fetch_reply(r),
            Message::Forward(f) => self.on_forward(f),
            Message::FetchChunk(f) => self.on_fetch_chunk(f),
            Message::Chunk(c) => self.on_chunk(c),
        }
    }

    fn on_tick(&mut self) {
        self.tick_view_change();
        self.tick_requests();
        self.tick_fetch();
        self.tick_transfer();
        self.tick_checkpoints();
    }
}
