//! The contract between the replication runtime and the application it replicates.

use std::fmt;

/// A client identity as the service sees it: the client's key index and lane (see
/// `shieldwall_crypto::client_key_index`); services may use it for per-client state.
pub type ClientId = u64;

/// Why a snapshot could not be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot restore snapshot: {0}")]
pub struct RestoreError(pub String);

/// A deterministic state machine replicated by shieldwall.
///
/// To ensure correctness, an implementation must be **deterministic**: the result bytes of
/// [`Service::execute`] and the state it leaves must depend only on the state before the call
/// and on the arguments (no clock, no randomness, no iteration over a hash map's order, no
/// floating-point differences between hosts). Replicas that diverge are detected at the next
/// checkpoint (their state digests differ) and outvoted, but a bug that makes every replica
/// diverge halts progress.
///
/// Calls come one at a time, in the agreed order, but not always from the same thread (the
/// runtime executes on its core thread when that is idle, on its service thread otherwise;
/// hence `Send`).
pub trait Service: Send + 'static {
    /// Execute an ordered operation issued by `client` and return the result bytes sent back
    /// to the client. Must not panic on any input: a Byzantine client can sign any bytes;
    /// answer garbage with an error result instead.
    fn execute(&mut self, client: ClientId, op: &[u8]) -> Vec<u8>;

    /// Answer a read-only operation from the current state without changing it. Called for
    /// unordered reads; a client accepts the answer only if a quorum of replicas returns the
    /// same bytes, and otherwise re-sends the operation through [`Service::execute`]. An
    /// operation that is not a read should return an error result.
    fn read(&self, client: ClientId, op: &[u8]) -> Vec<u8>;

    /// The whole state as bytes, in parts whose concatenation [`Service::restore`] takes.
    /// Called at every checkpoint (each `checkpoint_interval` batches).
    ///
    /// Must be canonical, parts included: two services in the same state return the same
    /// parts with the same bytes, however they reached that state (checkpoints compare
    /// digests of the parts across replicas, and a replica restored from a snapshot must
    /// produce the parts of the replicas that executed their way there).
    ///
    /// The runtime hashes only parts it has not seen: a part returned again as the very same
    /// buffer (a clone of a [`bytes::Bytes`] kept from an earlier call) costs nothing. A
    /// service with a large state should therefore cut it into parts that writes leave
    /// untouched (ranges of keys, say), keep each part's encoding, and re-encode only the
    /// parts written since. One part holding everything is correct, just slower to checkpoint
    /// as the state grows.
    fn snapshot(&mut self) -> Vec<bytes::Bytes>;

    /// Replace the whole state with one produced by [`Service::snapshot`] (state transfer),
    /// given as its parts concatenated. The bytes were certified by a quorum of replicas, so
    /// an error means a bug or a version mismatch; the runtime stops the replica with the
    /// error rather than run on a state it does not have.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError>;
}

impl fmt::Debug for dyn Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("dyn Service")
    }
}
