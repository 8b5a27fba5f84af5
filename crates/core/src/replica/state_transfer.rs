//! State transfer (PBFT 5.3.2, simplified): a replica that is behind asks one peer at a time
//! for the state at its stable checkpoint and the committed batches after it, checks every
//! piece against its certificate (done by `verify`), and moves to the next peer when one does
//! not help in time.

use super::{FetchState, Replica};
use crate::client_table::ClientTable;
use crate::message::{Fetch, FetchReply, Message, Record, Signable, Signed, StateSnapshot};
use crate::types::{ReplicaId, Seq};
use crate::verify::Reject;
use crate::Action;

impl Replica {
    /// Others have committed or made stable up to `seq`.
    pub(crate) fn note_progress_hint(&mut self, seq: Seq) {
        self.fetch_target = self.fetch_target.max(seq);
    }

    /// Whether to fetch: others are ahead, or we are recovering (a passive replica polls its
    /// peers, which also tells it their views).
    fn behind(&self) -> bool {
        self.fetch_target > self.last_executed || self.recovery.is_some()
    }

    /// Ask the next peer for what we miss (all peers while recovering, to learn the view).
    pub(crate) fn start_fetch(&mut self) {
        if self.fetch.is_some() || !self.behind() {
            return;
        }
        let n = self.cfg.n;
        let mut peer = (self.last_fetch_peer + 1) % n;
        if peer == self.id {
            peer = (peer + 1) % n;
        }
        self.send_fetch(peer);
    }

    /// Ask `peer` (everyone while recovering) for what follows our last executed batch.
    pub(crate) fn send_fetch(&mut self, peer: ReplicaId) {
        self.last_fetch_peer = peer;
        let body = Fetch {
            executed: self.last_executed,
            view: self.view,
            nonce: self.recovery.as_ref().map_or(0, |r| r.nonce),
        };
        let sig = self.sign_bytes(&body.signing_bytes());
        let msg = Message::Fetch(Signed {
            from: self.id,
            body,
            sig,
        });
        if self.recovery.is_some() {
            self.broadcast(msg);
        } else {
            self.send(peer, msg);
        }
        self.fetch = Some(FetchState {
            peer,
            deadline_ms: self.now_ms + self.cfg.fetch_timeout_ms,
        });
    }

    pub(crate) fn fetch_deadline(&self) -> Option<u64> {
        if !self.behind() {
            return None;
        }
        Some(match self.fetch {
            Some(f) => f.deadline_ms,
            None => self.last_progress_ms + self.cfg.fetch_timeout_ms,
        })
    }

    pub(crate) fn tick_fetch(&mut self) {
        let Some(deadline) = self.fetch_deadline() else {
            return;
        };
        if self.now_ms >= deadline {
            self.fetch = None;
            self.start_fetch();
        }
    }

    pub(crate) fn maybe_finish_fetch(&mut self) {
        if !self.behind() {
            self.fetch = None;
        }
    }

    pub(crate) fn on_fetch(&mut self, f: Signed<Fetch>) {
        let to = f.from;
        if f.body.view < self.view {
            if let Some(nv) = self.new_view.clone().filter(|nv| nv.body.view == self.view) {
                self.send(to, Message::NewView(nv));
            }
        }
        let mut from = f.body.executed;
        let snapshot = match &self.stable_state {
            Some((service, clients)) if from < self.stable.seq => {
                from = self.stable.seq;
                Some(StateSnapshot {
                    checkpoint: self.stable.clone(),
                    service: service.clone(),
                    clients: clients.clone(),
                })
            }
            _ => None,
        };
        let batches = (from + 1..)
            .map_while(|s| self.slots.get(&s).and_then(|slot| slot.committed.clone()))
            .take(self.cfg.fetch_batches_max as usize)
            .collect();
        let body = FetchReply {
            view: self.view,
            nonce: f.body.nonce,
            snapshot,
            batches,
        };
        let sig = self.sign_bytes(&body.signing_bytes());
        self.send(
            to,
            Message::FetchReply(Signed {
                from: self.id,
                body,
                sig,
            }),
        );
    }

    pub(crate) fn on_fetch_reply(&mut self, r: Signed<FetchReply>) {
        let from = r.from;
        let reply = r.body;
        let quorum = self.cfg.quorum();
        if let Some(rec) = self.recovery.as_mut() {
            if reply.nonce == rec.nonce {
                rec.report(from, reply.view, quorum);
            }
        }
        let before = self.last_executed;
        if let Some(snap) = reply.snapshot {
            if snap.checkpoint.seq > self.last_executed {
                self.install_snapshot(snap);
            }
        }
        for b in reply.batches {
            let seq = b.pre_prepare.seq;
            // Certified batches we have not executed are useful up to the window's top, also
            // at or below a checkpoint that became stable while we lagged (we need them to
            // reach it; the checkpoint's snapshot may not be available yet).
            if seq <= self.last_executed || seq > self.cfg.window_top(self.stable.seq) {
                continue;
            }
            self.note_progress_hint(seq);
            let slot = self.slots.entry(seq).or_default();
            if slot.committed.is_none() {
                slot.committed = Some(b.clone());
                self.stats.batches_fetched += 1;
                self.persist(Record::Committed(b));
            }
        }
        self.try_execute();
        let useful = self.last_executed > before || self.in_flight.is_some();
        if !self.behind() {
            self.fetch = None;
        } else if useful && self.fetch.is_some_and(|f| f.peer == from) {
            // This peer helps: ask it for the next part right away.
            self.send_fetch(from);
        }
    }

    /// Replace our state with a certified snapshot (already checked against its certificate).
    fn install_snapshot(&mut self, snap: StateSnapshot) {
        let Ok(clients) = ClientTable::decode(&snap.clients) else {
            self.reject(Reject::BadStateTransfer);
            return;
        };
        let seq = snap.checkpoint.seq;
        self.clients = clients;
        self.last_executed = seq;
        self.last_progress_ms = self.now_ms;
        self.in_flight = None;
        self.stats.snapshots_installed += 1;
        self.out.push(Action::Restore {
            seq,
            service: snap.service.clone(),
        });
        self.own_checkpoints.insert(
            seq,
            (
                snap.checkpoint.state_digest,
                snap.service.clone(),
                snap.clients.clone(),
            ),
        );
        if seq > self.stable.seq {
            self.make_stable(snap.checkpoint);
        } else if seq == self.stable.seq {
            self.stable_state = Some((snap.service, snap.clients));
        }
        let stale: Vec<_> = self
            .pending
            .keys()
            .filter(|k| !self.clients.is_new(k.0, k.1))
            .copied()
            .collect();
        for k in stale {
            self.remove_pending(k);
        }
        if self.next_seq <= seq {
            self.next_seq = seq + 1;
        }
    }
}
