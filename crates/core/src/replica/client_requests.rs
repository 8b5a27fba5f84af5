//! Client requests: admission with bounds, exactly-once filtering, cached replies, read-only
//! requests, and the timer that suspects a leader which does not order what we hold.

use super::{Pending, Replica, Status};
use crate::client_table::Lookup;
use crate::message::{Reply, SignedRequest};
use crate::types::ClientId;
use crate::verify::Reject;
use crate::Action;

impl Replica {
    pub(crate) fn on_request(&mut self, signed: SignedRequest) {
        let r = &signed.request;
        if r.read_only {
            // DESIGN 4: reads are answered from current state; the client needs a larger
            // matching quorum and falls back to an ordered request if it does not get one.
            if self.status == Status::Normal && self.may_vote() {
                self.out.push(Action::ExecuteReadOnly {
                    request: signed.request,
                    view: self.view,
                });
            }
            return;
        }
        let window = self.cfg.client_pending_max;
        match self.clients.lookup(r.client, r.req_seq) {
            Lookup::Executed(result) => {
                // A retransmission: answer from the cache, never execute twice.
                let reply = Reply {
                    view: self.view,
                    replica: self.id,
                    client: r.client,
                    req_seq: r.req_seq,
                    read_only: false,
                    result: result.to_vec(),
                };
                self.out.push(Action::Reply(reply));
                return;
            }
            Lookup::Stale => return,
            Lookup::New => {}
        }
        let key = (r.client, r.req_seq);
        if self.pending.contains_key(&key) {
            return;
        }
        let per_client = self.pending_per_client.get(&r.client).copied().unwrap_or(0);
        if per_client >= window {
            self.reject(Reject::ClientOverLimit);
            return;
        }
        if self.pending.len() >= self.cfg.pending_max as usize {
            self.reject(Reject::PendingFull);
            return;
        }
        let now = self.now_ms;
        self.pending.insert(
            key,
            Pending {
                request: signed,
                arrived_ms: now,
            },
        );
        self.arrivals.insert((now, key.0, key.1));
        *self.pending_per_client.entry(key.0).or_insert(0) += 1;
        if self.is_leader() {
            self.queue.push_back(key);
            self.try_propose();
        }
    }

    /// Forget a pending request (executed, or no longer executable).
    pub(crate) fn remove_pending(&mut self, key: (ClientId, u64)) {
        if let Some(p) = self.pending.remove(&key) {
            self.arrivals.remove(&(p.arrived_ms, key.0, key.1));
            if let Some(c) = self.pending_per_client.get_mut(&key.0) {
                *c -= 1;
                if *c == 0 {
                    self.pending_per_client.remove(&key.0);
                }
            }
        }
        self.proposed.remove(&key);
    }

    /// Drop pending requests of `client` that can no longer execute (the client table's floor
    /// moved past them).
    pub(crate) fn purge_client(&mut self, client: ClientId) {
        let stale: Vec<_> = self
            .pending
            .range((client, 0)..=(client, u64::MAX))
            .filter(|(k, _)| !self.clients.is_new(k.0, k.1))
            .map(|(k, _)| *k)
            .collect();
        for k in stale {
            self.remove_pending(k);
        }
    }

    /// When the oldest pending request times out. The clock of a request starts when it
    /// arrived or when the current view started, whichever is later (PBFT 4.4: the timer
    /// restarts in a new view).
    pub(crate) fn request_deadline(&self) -> Option<u64> {
        if self.status != Status::Normal || !self.may_vote() {
            return None;
        }
        let (arrived, _, _) = self.arrivals.first()?;
        Some((*arrived).max(self.view_start_ms) + self.cfg.request_timeout_ms)
    }

    pub(crate) fn tick_requests(&mut self) {
        if let Some(deadline) = self.request_deadline() {
            if self.now_ms >= deadline {
                // A request we hold was not executed in time: the leader is faulty or cut off.
                self.start_view_change(self.view + 1);
            }
        }
    }
}
