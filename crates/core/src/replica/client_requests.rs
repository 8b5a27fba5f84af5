//! Client requests: admission with bounds, exactly-once filtering, cached replies, read-only
//! requests, and the timer that suspects a leader which does not order what we hold.

use std::collections::BTreeMap;

use super::{Pending, Replica, Status};
use crate::client_table::Lookup;
use crate::message::{Forward, Message, Reply, Signable, Signed, SignedRequest};
use crate::types::{ClientId, ReplicaId};
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
        // A client has at most W requests in flight, but a replica executing behind the
        // quorum may still hold the previous window's requests when the client sends the next
        // ones: dropping those at the leader stalled them until a retransmission.
        let window = self.cfg.client_pending_max.saturating_mul(2);
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
        // Arrival times never go back, even if the clock does.
        let now = self
            .arrivals
            .back()
            .map_or(self.now_ms, |a| a.1.max(self.now_ms));
        let arrival = self.next_arrival;
        self.next_arrival += 1;
        self.pending.insert(
            key,
            Pending {
                request: signed,
                arrived_ms: now,
                arrival,
            },
        );
        self.arrivals.push_back((arrival, now, key.0, key.1));
        *self.pending_per_client.entry(key.0).or_insert(0) += 1;
        if self.is_leader() {
            self.queue.push_back(key);
            self.try_propose();
        }
    }

    /// Forget a pending request (executed, or no longer executable).
    pub(crate) fn remove_pending(&mut self, key: (ClientId, u64)) {
        if self.pending.remove(&key).is_some() {
            if let Some(c) = self.pending_per_client.get_mut(&key.0) {
                *c -= 1;
                if *c == 0 {
                    self.pending_per_client.remove(&key.0);
                }
            }
            // Its entry in `arrivals` is now dead: drop the dead ones at the front, and compact
            // when dead entries outnumber live ones (amortised constant time per request).
            let pending = &self.pending;
            while self
                .arrivals
                .front()
                .is_some_and(|&entry| !arrival_live(pending, entry))
            {
                self.arrivals.pop_front();
            }
            if self.arrivals.len() > 2 * pending.len() + 64 {
                self.arrivals.retain(|&entry| arrival_live(pending, entry));
            }
        }
        self.proposed.remove(&key);
    }

    /// The live entries of `arrivals` that arrived after `after` (all of them for `None`),
    /// oldest first, as `(arrived_ms, client, req_seq)`.
    fn arrivals_after(
        &self,
        after: Option<u64>,
    ) -> impl Iterator<Item = (u64, ClientId, u64)> + '_ {
        let start = after.map_or(0, |t| self.arrivals.partition_point(|a| a.1 <= t));
        self.arrivals
            .range(start..)
            .filter(|&&a| arrival_live(&self.pending, a))
            .map(|&(_, t, c, s)| (t, c, s))
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
        let (_, arrived, _, _) = self.arrivals.front()?;
        Some((*arrived).max(self.view_start_ms) + self.cfg.request_timeout_ms)
    }

    /// How long a follower holds a request before relaying it to the leader: half the time
    /// after which it suspects the leader.
    fn forward_after_ms(&self) -> u64 {
        (self.cfg.request_timeout_ms / 2).max(1)
    }

    /// When the oldest pending request not yet relayed to this view's leader is due to be
    /// relayed (followers in a normal view only).
    pub(crate) fn forward_deadline(&self) -> Option<u64> {
        if self.status != Status::Normal || !self.may_vote() || self.is_leader() {
            return None;
        }
        let (arrived, _, _) = self.arrivals_after(self.forwarded_until).next()?;
        Some(arrived.max(self.view_start_ms) + self.forward_after_ms())
    }

    /// PBFT 4.1: relay to the leader the requests it has not proposed within half the request
    /// timeout, before suspecting it. A client that sends a request to every replica but the
    /// leader then costs a relay, not a view change; a leader that ignores relayed requests is
    /// still replaced when the full timeout passes.
    fn tick_forward(&mut self) {
        let Some(deadline) = self.forward_deadline() else {
            return;
        };
        if self.now_ms < deadline {
            return;
        }
        let cutoff = self.now_ms - self.forward_after_ms();
        let due: Vec<(ClientId, u64)> = self
            .arrivals_after(self.forwarded_until)
            .take_while(|&(t, _, _)| t <= cutoff)
            .map(|(_, c, s)| (c, s))
            .filter(|k| !self.proposed.contains(k))
            .collect();
        self.forwarded_until = Some(cutoff);
        let leader = self.cfg.leader(self.view);
        let (max_requests, max_bytes) = (
            self.cfg.batch_requests_max as usize,
            self.cfg.batch_bytes_max as usize,
        );
        let mut chunk: Vec<SignedRequest> = Vec::new();
        let mut bytes = 0;
        for key in due {
            let Some(request) = self.pending.get(&key).map(|p| p.request.clone()) else {
                continue;
            };
            let size = request.request.size();
            if !chunk.is_empty() && (chunk.len() >= max_requests || bytes + size > max_bytes) {
                self.send_forward(leader, std::mem::take(&mut chunk));
                bytes = 0;
            }
            bytes += size;
            chunk.push(request);
        }
        if !chunk.is_empty() {
            self.send_forward(leader, chunk);
        }
    }

    fn send_forward(&mut self, leader: ReplicaId, requests: Vec<SignedRequest>) {
        let body = Forward {
            view: self.view,
            requests,
        };
        let sig = self.sign_bytes(&body.signing_bytes());
        let from = self.id;
        self.send(leader, Message::Forward(Signed { from, body, sig }));
    }

    /// Requests a follower relayed: the leader of their view admits them like requests from
    /// their clients (the verify stage checked every client signature).
    pub(crate) fn on_forward(&mut self, f: Signed<Forward>) {
        if f.body.view < self.view {
            self.reject(Reject::StaleView);
            return;
        }
        if f.body.view > self.view || !self.is_leader() || self.status != Status::Normal {
            self.reject(Reject::Unexpected);
            return;
        }
        for r in f.body.requests {
            self.on_request(r);
        }
    }

    pub(crate) fn tick_requests(&mut self) {
        self.tick_forward();
        if let Some(deadline) = self.request_deadline() {
            if self.now_ms >= deadline {
                // A request we hold was not executed in time: the leader is faulty or cut off.
                self.start_view_change(self.view + 1);
            }
        }
    }
}

/// Whether an entry of [`Replica::arrivals`] stands for a request still pending.
fn arrival_live(
    pending: &BTreeMap<(ClientId, u64), Pending>,
    (n, _, c, s): (u64, u64, ClientId, u64),
) -> bool {
    pending.get(&(c, s)).is_some_and(|p| p.arrival == n)
}
