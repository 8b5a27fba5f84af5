//! View change (PBFT 4.4): suspecting the leader, VIEW-CHANGE with checkpoint and prepared
//! certificates, NEW-VIEW with re-proposals that every replica recomputes, doubling timeouts,
//! and the f+1 join rule. Crash mode runs the same steps with accepted proposals in place of
//! prepared certificates and majority quorums (Multi-Paxos phase 1).

use std::collections::{BTreeMap, BTreeSet};

use super::{Replica, Status};
use crate::config::Config;
use crate::message::{
    batch_digest, CheckpointCert, Message, NewView, PrePrepare, PreparedCert, Record, Signable,
    Signed, ViewChange,
};
use crate::types::{ReplicaId, Seq, View};
use crate::verify::Reject;

/// The checkpoint and re-proposals a NEW-VIEW for `view` must carry, given its view changes
/// (PBFT 4.4): start from the highest checkpoint any of them proves; for every later sequence
/// number up to the highest prepared one, re-propose the batch prepared in the highest view,
/// or an empty (null) batch if none was prepared.
pub fn compute_new_view(
    config: &Config,
    view: View,
    view_changes: &[Signed<ViewChange>],
) -> (CheckpointCert, Vec<PrePrepare>) {
    let mut checkpoint = CheckpointCert {
        seq: 0,
        state_digest: Default::default(),
        proof: Vec::new(),
    };
    for vc in view_changes {
        if vc.body.checkpoint.seq > checkpoint.seq {
            checkpoint = vc.body.checkpoint.clone();
        }
    }
    let low = checkpoint.seq;
    let mut best: BTreeMap<Seq, &PreparedCert> = BTreeMap::new();
    for vc in view_changes {
        for cert in &vc.body.prepared {
            let b = &cert.pre_prepare.body;
            if b.seq <= low || b.seq > config.window_top(low) {
                continue;
            }
            let better = match best.get(&b.seq) {
                None => true,
                Some(cur) => {
                    let c = &cur.pre_prepare.body;
                    (b.view, std::cmp::Reverse(b.batch_digest))
                        > (c.view, std::cmp::Reverse(c.batch_digest))
                }
            };
            if better {
                best.insert(b.seq, cert);
            }
        }
    }
    let high = best.keys().next_back().copied().unwrap_or(low);
    let proposals = (low + 1..=high)
        .map(|seq| match best.get(&seq) {
            Some(cert) => PrePrepare {
                view,
                seq,
                batch_digest: cert.pre_prepare.body.batch_digest,
                batch: cert.pre_prepare.body.batch.clone(),
            },
            None => PrePrepare {
                view,
                seq,
                batch_digest: batch_digest(&[]),
                batch: Default::default(),
            },
        })
        .collect();
    (checkpoint, proposals)
}

impl Replica {
    /// Stop accepting normal-case messages and ask to move to `target`.
    pub(crate) fn start_view_change(&mut self, target: View) {
        if target <= self.view || !self.may_vote() {
            return;
        }
        self.view = target;
        self.status = Status::ViewChanging;
        self.stats.view_changes_started += 1;
        self.queue.clear();
        let low = self.stable.seq;
        let top = self.cfg.window_top(low);
        let prepared: Vec<PreparedCert> = self
            .slots
            .range(low + 1..=top)
            .filter_map(|(_, s)| s.prepared_cert.clone())
            .collect();
        let body = ViewChange {
            new_view: target,
            checkpoint: self.stable.clone(),
            prepared,
        };
        let sig = self.sign_bytes(&body.signing_bytes());
        let signed = Signed {
            from: self.id,
            body,
            sig,
        };
        self.latest_vc.insert(self.id, signed.clone());
        self.persist(|| Record::ViewChange(signed.clone()));
        self.broadcast(Message::ViewChange(signed));
        self.vc_deadline_ms = Some(self.now_ms + self.vc_timeout_ms);
        self.try_send_new_view();
    }

    pub(crate) fn tick_view_change(&mut self) {
        let Some(deadline) = self.vc_deadline_ms else {
            return;
        };
        if self.status != Status::ViewChanging || self.now_ms < deadline {
            return;
        }
        let asking = self
            .latest_vc
            .values()
            .filter(|v| v.body.new_view >= self.view)
            .count();
        if asking >= self.cfg.quorum() {
            // PBFT 4.5.2: a quorum wanted this view and its leader did not deliver; move on,
            // and wait twice as long for the next one.
            self.vc_timeout_ms = (self.vc_timeout_ms * 2).min(self.cfg.view_change_timeout_max_ms);
            self.start_view_change(self.view + 1);
        } else {
            // Too few replicas want this view for it to form: do not climb alone (a lone
            // replica racing ahead would be sidelined for good). Re-send our request, which
            // may have been lost, and keep waiting; f+1 others moving on pull us along.
            if let Some(own) = self.latest_vc.get(&self.id).cloned() {
                self.broadcast(Message::ViewChange(own));
            }
            // Meanwhile the others may be executing without us: stay current by state
            // transfer, so clients still get our replies.
            self.note_progress_hint(self.last_executed + 1);
            self.start_fetch();
            self.vc_deadline_ms = Some(self.now_ms + self.vc_timeout_ms);
        }
    }

    pub(crate) fn on_view_change(&mut self, vc: Signed<ViewChange>) {
        let (from, target) = (vc.from, vc.body.new_view);
        if target > self.view && self.status == Status::Normal && from == self.cfg.leader(self.view)
        {
            // The leader of our view asked to leave it: it will not propose again, so the view
            // is dead for everyone (the simulator found clusters stuck behind such a leader
            // while nothing was pending anywhere else to time out on).
            self.start_view_change(self.view + 1);
        }
        if let Some(old) = self.latest_vc.get(&from) {
            if old.body.new_view > target {
                self.reject(Reject::StaleView);
                return;
            }
            if old.body.new_view == target {
                let reason = if *old == vc {
                    Reject::Duplicate
                } else {
                    Reject::Conflicting
                };
                self.reject(reason);
                self.help_straggler(from, target);
                return;
            }
        }
        self.latest_vc.insert(from, vc);
        if target < self.view || (target == self.view && self.status == Status::Normal) {
            self.help_straggler(from, target);
            return;
        }
        if target > self.view {
            // PBFT 4.5.2: f+1 replicas ahead include a correct one; join the smallest view.
            let mut ahead: Vec<View> = self
                .latest_vc
                .iter()
                .filter(|(r, v)| **r != self.id && v.body.new_view > self.view)
                .map(|(_, v)| v.body.new_view)
                .collect();
            if ahead.len() >= self.cfg.weak_quorum() {
                ahead.sort_unstable();
                self.start_view_change(ahead[0]);
            }
        }
        self.try_send_new_view();
    }

    /// `from` sends normal-case messages of the view this replica is still changing to, so it
    /// entered that view and its NEW-VIEW exists: this replica missed it (lost while it was
    /// cut off, say). Re-send our VIEW-CHANGE to `from`, once per peer and view; a peer in that
    /// view answers a repeated VIEW-CHANGE with its NEW-VIEW (`help_straggler`). Without this
    /// the replica waited out its timer and, having seen a quorum ask for the view, climbed to
    /// the next one alone, where nobody followed (a container test found an old leader stuck
    /// so after a partition healed).
    pub(crate) fn ask_for_new_view(&mut self, from: ReplicaId) {
        if self.asked_new_view.0 != self.view {
            self.asked_new_view = (self.view, BTreeSet::new());
        }
        if from == self.id || !self.asked_new_view.1.insert(from) {
            return;
        }
        if let Some(own) = (self.latest_vc.get(&self.id))
            .filter(|vc| vc.body.new_view == self.view)
            .cloned()
        {
            self.send(from, Message::ViewChange(own));
        }
    }

    /// A replica still asking for a view we already entered missed the NEW-VIEW: resend it.
    fn help_straggler(&mut self, to: crate::types::ReplicaId, their_view: View) {
        if self.status != Status::Normal || their_view > self.view {
            return;
        }
        if let Some(nv) = self.new_view.clone().filter(|nv| nv.body.view == self.view) {
            self.send(to, Message::NewView(nv));
        }
    }

    /// New leader: once a quorum of view changes for our view is in, send NEW-VIEW.
    fn try_send_new_view(&mut self) {
        if self.status != Status::ViewChanging
            || self.cfg.leader(self.view) != self.id
            || self.sent_new_view == Some(self.view)
        {
            return;
        }
        let view = self.view;
        let vcs: Vec<Signed<ViewChange>> = self
            .latest_vc
            .values()
            .filter(|v| v.body.new_view == view)
            .take(self.cfg.quorum())
            .cloned()
            .collect();
        if vcs.len() < self.cfg.quorum() {
            return;
        }
        let (checkpoint, proposals) = compute_new_view(&self.cfg, view, &vcs);
        let pre_prepares = proposals
            .into_iter()
            .map(|body| {
                let sig = self.sign_bytes(&body.signing_bytes());
                Signed {
                    from: self.id,
                    body,
                    sig,
                }
            })
            .collect();
        let body = NewView {
            view,
            view_changes: vcs,
            pre_prepares,
        };
        let sig = self.sign_bytes(&body.signing_bytes());
        let nv = Signed {
            from: self.id,
            body,
            sig,
        };
        self.sent_new_view = Some(view);
        self.persist(|| Record::NewView(nv.clone()));
        self.broadcast(Message::NewView(nv.clone()));
        self.enter_view(nv, checkpoint);
    }

    pub(crate) fn on_new_view(&mut self, nv: Signed<NewView>) {
        let view = nv.body.view;
        if view < self.view {
            self.reject(Reject::StaleView);
            return;
        }
        if view == self.view && self.status == Status::Normal {
            self.reject(Reject::Duplicate);
            return;
        }
        // PBFT 4.4: verify NEW-VIEW by recomputing its proposals from its view changes.
        let (checkpoint, expected) = compute_new_view(&self.cfg, view, &nv.body.view_changes);
        let matches = expected.len() == nv.body.pre_prepares.len()
            && expected
                .iter()
                .zip(&nv.body.pre_prepares)
                .all(|(e, p)| *e == p.body);
        if !matches {
            self.reject(Reject::BadNewView);
            if view == self.view {
                self.start_view_change(view + 1);
            }
            return;
        }
        if self
            .recovery
            .as_ref()
            .and_then(|r| r.floor)
            .is_some_and(|floor| view > floor)
        {
            // Amnesia recovery ends: this view's NEW-VIEW was formed from other replicas'
            // certificates, so it carries everything we may have voted for and forgotten. (In
            // durable mode nothing was logged while recovering: the log starts here.)
            self.recovery = None;
        }
        self.persist(|| Record::NewView(nv.clone()));
        self.enter_view(nv, checkpoint);
    }

    /// Enter the view of a valid NEW-VIEW: adopt its checkpoint, reset per-view slot state,
    /// accept its re-proposals, and resume.
    pub(crate) fn enter_view(&mut self, nv: Signed<NewView>, checkpoint: CheckpointCert) {
        let view = nv.body.view;
        self.view = view;
        // Stay out of Normal until the re-proposals are in place: adopting the checkpoint must
        // not let the leader propose with the old view's sequence counter.
        self.status = Status::ViewChanging;
        self.vc_deadline_ms = None;
        self.view_start_ms = self.now_ms;
        // Relay to this view's leader whatever it has not proposed.
        self.forwarded_until = None;
        self.stats.views_entered += 1;
        self.make_stable(checkpoint);
        for slot in self.slots.values_mut() {
            slot.pre_prepare = None;
            slot.prepares.clear();
            slot.commits.clear();
            slot.sent_commit = false;
        }
        self.proposed.clear();
        self.queue.clear();
        self.status = Status::Normal;
        let mut high = self.stable.seq;
        for pp in &nv.body.pre_prepares {
            high = high.max(pp.body.seq);
        }
        for pp in nv.body.pre_prepares.iter().cloned() {
            if self.in_window(pp.body.seq) {
                self.accept_pre_prepare(pp, false);
            }
        }
        self.next_seq = high.max(self.last_executed) + 1;
        self.new_view = Some(nv);
        if self.is_leader() {
            let mut order: Vec<(u64, (u64, u64))> = self
                .pending
                .iter()
                .filter(|(k, _)| !self.proposed.contains(k))
                .map(|(k, p)| (p.arrived_ms, *k))
                .collect();
            order.sort_unstable();
            self.queue = order.into_iter().map(|(_, k)| k).collect();
        }
        self.replay_future();
        self.try_execute();
        self.try_propose();
    }
}
