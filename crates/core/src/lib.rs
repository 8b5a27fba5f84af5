//! The shieldwall ordering engine: PBFT (Byzantine mode) and Multi-Paxos (crash mode) as one
//! deterministic, sans-IO state machine.
//!
//! A [`Replica`] takes [`Event`]s (a verified message, a client request, an execution result, a
//! clock tick) with the current time as an argument, and pushes [`Action`]s (send, broadcast,
//! execute, reply, restore a snapshot) for the caller to carry out. It never does IO, reads a
//! clock, spawns threads or draws OS randomness, so the same code runs under the real runtime
//! and the deterministic simulator.
//!
//! Signatures are checked outside the engine by [`verify::verify_message`] and
//! [`verify::verify_request`] (pure functions the runtime runs on a pool of threads); the engine
//! checks everything else (sender, view and sequence windows, digests, quorums, duplicates)
//! before a message touches its state, and counts what it rejects in [`Stats`].
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod auth;
pub mod client_table;
pub mod config;
pub mod message;
pub mod types;
pub mod verify;

mod replica;

pub use auth::{Authenticator, Ed25519Auth, SimAuth, VerifyItem};
pub use config::{leader_of, Config, ConfigError, Durability, FaultModel};
pub use message::{
    Authenticated, Batch, Checkpoint, CheckpointCert, CommittedBatch, CommittedDigest, Execution,
    Fetch, FetchReply, Forward, Message, NewView, PieceInfo, PrePrepare, PreparedCert, Record,
    Reply, Request, RequestAuth, Signed, SignedRequest, StateSnapshot, ViewChange, Vote, MAC_BYTES,
};
pub use replica::{compute_new_view, RecoverError, Replica, SettledVotes, Stats, Status};
pub use types::{ClientId, Digest, Principal, ReplicaId, Seq, View};

/// An input to [`Replica::handle`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A client request whose authenticator passed [`verify::verify_request`].
    Request(SignedRequest),
    /// A replica message that passed [`verify::verify_message`].
    Message(Message),
    /// A message validly signed by `from` for `view` proved that `from` misbehaved (for example
    /// a pre-prepare carrying a request with a bad client signature). If `from` leads the
    /// replica's current view, the replica starts a view change.
    ProvenFault {
        /// The misbehaving replica.
        from: ReplicaId,
        /// The view of the offending message.
        view: View,
    },
    /// The service executed the batch of an [`Action::Execute`]. Must arrive in the order the
    /// executes were emitted, with one result per executed request.
    Executed {
        /// The batch's sequence number.
        seq: Seq,
        /// One result per request of the batch, in order.
        results: Vec<Vec<u8>>,
        /// The service snapshot after the batch, present if and only if the action asked, in
        /// the service's parts (see `shieldwall_node::Service::snapshot`): the engine hashes
        /// only the parts it did not see at its previous checkpoint.
        snapshot: Option<Vec<bytes::Bytes>>,
    },
    /// Time passed: fire any timer due at `now_ms`. Call it at [`Replica::next_deadline`].
    Tick,
    /// Durable mode: every [`Action::Persist`] with a ticket up to `ticket` is on disk (a
    /// runtime that syncs a group of records at once reports the group's highest ticket).
    /// Outputs the engine held back for them are released.
    Persisted {
        /// The highest durable ticket.
        ticket: u64,
    },
}

/// An output of [`Replica::handle`], to be carried out by the caller in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send `message` to replica `to`.
    Send {
        /// Destination.
        to: ReplicaId,
        /// The message.
        message: Message,
    },
    /// Send `message` to every other replica.
    Broadcast {
        /// The message.
        message: Message,
    },
    /// Execute `requests` (already filtered for exactly-once) at `seq` on the service, then
    /// report [`Event::Executed`]; take a service snapshot afterwards if `snapshot` is set.
    Execute {
        /// Sequence number of the batch.
        seq: Seq,
        /// View of the batch's proposal (for a batch accepted in state transfer, the view one
        /// of the agreeing peers reported; informational, it does not decide what executes).
        view: View,
        /// Requests to run, in order.
        requests: crate::message::Execution,
        /// Whether to return a snapshot (checkpoint sequence numbers).
        snapshot: bool,
    },
    /// Run a read-only request against the current state and send the client a [`Reply`] with
    /// `read_only: true` and this `view`.
    ExecuteReadOnly {
        /// The request.
        request: Request,
        /// Current view.
        view: View,
    },
    /// Send a reply to its client.
    Reply(Reply),
    /// Durable mode: append `record` to the write-ahead log, then report
    /// [`Event::Persisted`] once it is durable. Tickets increase by one per record. Until then
    /// the engine emits nothing else but further `Persist` and [`Action::SaveCheckpoint`]
    /// actions: every send, execution and reply that follows waits, so nothing leaves the
    /// replica that depends on a record a crash could lose.
    Persist {
        /// The record's ticket.
        ticket: u64,
        /// The log may drop the record once a checkpoint at or above `key` is saved (records
        /// about a sequence number carry it; view records the stable checkpoint + 1 at the
        /// time, and the engine writes the current one again at every stable checkpoint).
        key: Seq,
        /// What to log.
        record: Record,
    },
    /// Durable mode: save this stable checkpoint's state (atomically, after the records
    /// already requested), then drop log records whose key is at or below its sequence number.
    /// A restarted replica passes the newest saved one to [`Replica::recover`].
    SaveCheckpoint(StateSnapshot),
    /// Replace the service state with `service` (state transfer); the engine's client table and
    /// sequence number already moved to `seq`.
    Restore {
        /// Sequence number the snapshot is at.
        seq: Seq,
        /// Service snapshot bytes (its parts concatenated).
        service: bytes::Bytes,
    },
}
