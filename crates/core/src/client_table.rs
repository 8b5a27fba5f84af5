//! Per-client execution record: what executed, and the cached replies that answer
//! retransmissions without executing twice.
//!
//! Client contract (the window rule): a client with window `W` sends request `s` only once
//! every one of its requests numbered `s - W` or lower has completed. A completed request was
//! ordered before `s` was even sent, so when `s` executes at a replica, everything at or below
//! `s - W` has executed there too. The table therefore keeps, per client, the replies of the
//! requests above `floor = highest executed - W` (at most `W` of them), and a request executes
//! if and only if it is above the floor and not among those: memory per client is bounded, a
//! retransmission never runs twice, and a delayed request inside the window still runs. A
//! client that breaks the rule only loses its own requests.
//!
//! Numbers need not be dense. As with PBFT's client timestamps, a client may jump ahead: a
//! restarted client starts from its clock (nanoseconds), so it never reuses a number its previous
//! incarnation used and needs no stored counter. Executing a number raises the floor to it minus
//! `W`, so whatever the previous incarnation left in flight below that is abandoned, never run
//! late.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::message::{decode, encode, DecodeError};
use crate::types::ClientId;

/// One client's record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientEntry {
    /// Every request at or below `floor` has executed or can no longer execute.
    pub floor: u64,
    /// Replies of executed requests above `floor`.
    #[serde(with = "reply_map")]
    pub replies: BTreeMap<u64, Vec<u8>>,
}

/// Replies encoded as byte arrays (one copy each) rather than sequences of `u8`; the bytes are
/// the same.
mod reply_map {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    pub fn serialize<S: Serializer>(m: &BTreeMap<u64, Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(m.iter().map(|(k, v)| (k, Bytes::new(v))))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<u64, Vec<u8>>, D::Error> {
        let m: BTreeMap<u64, ByteBuf> = Deserialize::deserialize(d)?;
        Ok(m.into_iter().map(|(k, v)| (k, v.into_vec())).collect())
    }
}

/// What the table says about a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// Not executed yet and executable.
    New,
    /// Executed; here is the cached reply.
    Executed(&'a [u8]),
    /// At or below the floor without a cached reply: ignore.
    Stale,
}

/// The client table; part of the checkpointed state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientTable {
    entries: BTreeMap<ClientId, ClientEntry>,
}

impl ClientTable {
    /// Classify `(client, req_seq)`.
    pub fn lookup(&self, client: ClientId, req_seq: u64) -> Lookup<'_> {
        let Some(e) = self.entries.get(&client) else {
            return Lookup::New;
        };
        if let Some(r) = e.replies.get(&req_seq) {
            return Lookup::Executed(r);
        }
        if req_seq <= e.floor {
            return Lookup::Stale;
        }
        Lookup::New
    }

    /// Whether `(client, req_seq)` would execute now.
    pub fn is_new(&self, client: ClientId, req_seq: u64) -> bool {
        match self.entries.get(&client) {
            None => true,
            Some(e) => req_seq > e.floor && !e.replies.contains_key(&req_seq),
        }
    }

    /// Record an execution and its reply; raise the floor to `highest executed - window` and
    /// drop the replies at or below it.
    pub fn record(&mut self, client: ClientId, req_seq: u64, reply: Vec<u8>, window: u32) {
        let e = self.entries.entry(client).or_default();
        e.replies.insert(req_seq, reply);
        let top = e.replies.keys().next_back().copied().unwrap_or(req_seq);
        e.floor = e.floor.max(top.saturating_sub(u64::from(window)));
        // Drop from the front (amortised O(log n) per call; `split_off` moved the whole tail).
        while let Some(oldest) = e.replies.first_entry() {
            if *oldest.key() > e.floor {
                break;
            }
            oldest.remove();
        }
    }

    /// Number of clients known.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no client is known.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Canonical encoding (part of the checkpoint digest).
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Decode an encoding produced by [`ClientTable::encode`].
    pub fn decode(bytes: &[u8]) -> Result<ClientTable, DecodeError> {
        decode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executes_once_and_caches() {
        let mut t = ClientTable::default();
        assert_eq!(t.lookup(7, 1), Lookup::New);
        t.record(7, 1, b"r1".to_vec(), 4);
        assert_eq!(t.lookup(7, 1), Lookup::Executed(b"r1"));
        assert!(!t.is_new(7, 1));
        assert!(
            t.is_new(7, 3),
            "out of order within the window still executes"
        );
    }

    #[test]
    fn window_bounds_memory_and_raises_floor() {
        let mut t = ClientTable::default();
        for s in 1..=10 {
            t.record(1, s, vec![s as u8], 4);
        }
        let e = &t.entries[&1];
        assert_eq!(e.replies.len(), 4);
        assert_eq!(e.floor, 6);
        assert_eq!(t.lookup(1, 5), Lookup::Stale);
        assert!(!t.is_new(1, 6));
        assert_eq!(t.lookup(1, 7), Lookup::Executed(&[7]));
    }

    #[test]
    fn a_restarted_client_jumps_ahead_and_abandons_the_old_numbers() {
        let mut t = ClientTable::default();
        for s in 1..=3 {
            t.record(1, s, vec![s as u8], 4);
        }
        // A new incarnation starts from its clock; a first request anywhere is new.
        let start = 1_700_000_000_000_000_000;
        assert_eq!(t.lookup(1, start), Lookup::New);
        assert_eq!(t.lookup(2, start), Lookup::New);
        t.record(1, start, b"new".to_vec(), 4);
        assert_eq!(t.lookup(1, 3), Lookup::Stale, "old numbers never run late");
        assert_eq!(t.lookup(1, start - 4), Lookup::Stale);
        assert_eq!(t.lookup(1, start - 3), Lookup::New, "inside the window");
        assert_eq!(t.entries[&1].replies.len(), 1);
        t.record(2, u64::MAX, vec![], 4);
        assert_eq!(t.lookup(2, u64::MAX), Lookup::Executed(&[]));
    }

    #[test]
    fn a_delayed_request_inside_the_window_still_executes() {
        // Window 4: request 8 is delayed while 9, 10, 11 complete (the client may not send 12
        // before 8 completes). 8 must still be new.
        let mut t = ClientTable::default();
        for s in (1..=7).chain(9..=11) {
            t.record(1, s, vec![s as u8], 4);
        }
        assert!(t.is_new(1, 8));
        assert_eq!(t.lookup(1, 8), Lookup::New);
        t.record(1, 8, vec![8], 4);
        assert_eq!(t.lookup(1, 8), Lookup::Executed(&[8]));
        assert!(!t.is_new(1, 9), "9 executed and is remembered");
    }

    #[test]
    fn encoding_is_canonical() {
        let mut a = ClientTable::default();
        let mut b = ClientTable::default();
        a.record(1, 1, vec![1], 4);
        a.record(2, 1, vec![2], 4);
        b.record(2, 1, vec![2], 4);
        b.record(1, 1, vec![1], 4);
        assert_eq!(a.encode(), b.encode());
        assert_eq!(ClientTable::decode(&a.encode()).unwrap(), a);
    }
}
