//! Normal-case ordering (PBFT 4.2, Multi-Paxos phase 2): adaptive batching and pipelining at
//! the leader, pre-prepare / prepare / commit at every replica, in-order execution.

use std::collections::BTreeMap;

use super::{InFlight, Replica, Slot, Status};
use crate::config::FaultModel;
use crate::message::{
    batch_digest, commit_mac_bytes, vote_signing_bytes, Authenticated, CommittedBatch, Execution,
    Message, Phase, PrePrepare, PreparedCert, Record, Reply, RequestAuth, Signable, Signed,
    SignedRequest, Vote,
};
use crate::types::{ReplicaId, Seq, View};
use crate::verify::Reject;
use crate::Action;

/// Normal-case messages for views not yet entered are kept (bounded) and replayed on entry,
/// so a NEW-VIEW overtaken by the new leader's first proposals does not cost a view change.
const FUTURE_MESSAGES_MAX: usize = 1024;
/// How many views ahead such messages may be.
const FUTURE_VIEWS_MAX: View = 2;

/// What a slot keeps of a vote: the signed PREPARE (it goes into prepared certificates) or
/// the COMMIT's vote (checked by its MAC, it proves nothing to others).
trait VoteOf {
    fn vote(&self) -> &Vote;
}

impl VoteOf for Vote {
    fn vote(&self) -> &Vote {
        self
    }
}

impl VoteOf for Signed<Vote> {
    fn vote(&self) -> &Vote {
        &self.body
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Admit {
    Yes,
    No,
}

impl Replica {
    /// The accepted sequence-number window (h, h+L] (PBFT 4.2 watermarks).
    pub(crate) fn in_window(&self, seq: Seq) -> bool {
        seq > self.stable.seq && seq <= self.cfg.window_top(self.stable.seq)
    }

    /// PBFT 4.2: normal-case messages are accepted only in the replica's view, while it is not
    /// changing views, and inside the watermarks.
    fn admit(
        &mut self,
        from: ReplicaId,
        view: View,
        seq: Seq,
        message: impl FnOnce() -> Message,
    ) -> Admit {
        if view < self.view {
            self.reject(Reject::StaleView);
            return Admit::No;
        }
        if view == self.view && self.status == Status::ViewChanging {
            self.ask_for_new_view(from);
        }
        if view > self.view || self.status != Status::Normal {
            if view <= self.view + FUTURE_VIEWS_MAX {
                if self.future.len() >= FUTURE_MESSAGES_MAX {
                    self.future.pop_front();
                }
                self.future.push_back(message());
            } else {
                self.reject(Reject::OutOfWindow);
            }
            return Admit::No;
        }
        if !self.in_window(seq) {
            if seq > self.stable.seq {
                // Far ahead: others progressed without us; state transfer catches up.
                self.note_progress_hint(seq);
            }
            self.reject(Reject::OutOfWindow);
            return Admit::No;
        }
        Admit::Yes
    }

    /// Leader: propose batches while a pipeline slot is free and requests are pending. No batch
    /// timer: an idle leader sends a lone request at once; under load batches fill up while the
    /// pipeline is full.
    pub(crate) fn try_propose(&mut self) {
        if self.status != Status::Normal || !self.is_leader() || !self.may_vote() {
            return;
        }
        let window_top = self.cfg.window_top(self.stable.seq);
        loop {
            let in_flight = (self.next_seq - 1).saturating_sub(self.last_executed);
            let fill = in_flight.saturating_mul(u64::from(self.cfg.pipeline_fill));
            if self.queue.is_empty()
                || self.next_seq > window_top
                || in_flight >= u64::from(self.cfg.pipeline_window)
                || (self.queue.len() as u64) < fill
            {
                break;
            }
            let mut batch = Vec::new();
            let mut bytes = 0usize;
            // Crash mode: the followers trust this leader's check of each client's
            // authenticator and do not check it again, so the batch leaves it out (ADR 021).
            let relay = self.cfg.fault_model == FaultModel::Crash;
            while let Some(key) = self.queue.front().copied() {
                let Some(p) = self.pending.get(&key) else {
                    self.queue.pop_front();
                    continue;
                };
                if self.proposed.contains(&key) || !self.clients.is_new(key.0, key.1) {
                    self.queue.pop_front();
                    continue;
                }
                let size = p.request.request.size();
                if batch.len() >= self.cfg.batch_requests_max as usize
                    || (bytes + size > self.cfg.batch_bytes_max as usize && !batch.is_empty())
                {
                    break;
                }
                bytes += size;
                batch.push(if relay {
                    SignedRequest {
                        request: p.request.request.clone(),
                        auth: RequestAuth::Relayed,
                    }
                } else {
                    p.request.clone()
                });
                self.proposed.insert(key);
                self.queue.pop_front();
            }
            if batch.is_empty() {
                break;
            }
            let seq = self.next_seq.max(self.last_executed + 1);
            self.next_seq = seq + 1;
            let body = PrePrepare {
                view: self.view,
                seq,
                batch_digest: batch_digest(&batch),
                batch: batch.into(),
            };
            self.propose(body);
        }
    }

    /// Sign and broadcast a proposal, and record it as this leader's own pre-prepare.
    pub(crate) fn propose(&mut self, body: PrePrepare) {
        if self
            .slots
            .get(&body.seq)
            .is_some_and(|s| s.pre_prepare.is_some() || s.committed.is_some())
        {
            // Never two proposals for one (view, seq): that would be equivocation.
            self.reject(Reject::Conflicting);
            return;
        }
        let sig = self.sign_bytes(&body.signing_bytes());
        let signed = Signed {
            from: self.id,
            body,
            sig,
        };
        self.persist(|| Record::PrePrepare(signed.clone()));
        self.broadcast(Message::PrePrepare(signed.clone()));
        self.accept_pre_prepare(signed, false);
    }

    pub(crate) fn on_pre_prepare(&mut self, pp: Signed<PrePrepare>) {
        let (view, seq) = (pp.body.view, pp.body.seq);
        if pp.from != self.cfg.leader(view) {
            self.reject(Reject::NotLeader);
            return;
        }
        if self.admit(pp.from, view, seq, || Message::PrePrepare(pp.clone())) == Admit::No {
            return;
        }
        if let Some(existing) = self.slots.get(&seq).and_then(|s| s.pre_prepare.as_ref()) {
            if existing.body.batch_digest == pp.body.batch_digest {
                self.reject(Reject::Duplicate);
            } else {
                // Two signed proposals for one (view, seq): the leader equivocated.
                self.reject(Reject::Conflicting);
                self.start_view_change(self.view + 1);
            }
            return;
        }
        self.accept_pre_prepare(pp, true);
    }

    /// Record a pre-prepare of the current view and cast this replica's vote for it. `log`:
    /// durable mode logs it first (proposals and NEW-VIEW re-proposals are logged already).
    pub(crate) fn accept_pre_prepare(&mut self, pp: Signed<PrePrepare>, log: bool) {
        if log {
            self.persist(|| Record::PrePrepare(pp.clone()));
        }
        let vote = Vote {
            view: pp.body.view,
            seq: pp.body.seq,
            batch_digest: pp.body.batch_digest,
        };
        let leader = pp.from;
        for r in pp.body.batch.iter() {
            // Every replica tracks what is proposed so it does not time out on it twice and
            // a future leader does not re-propose it in the same view.
            self.proposed.insert((r.request.client, r.request.req_seq));
        }
        let slot = self.slots.entry(vote.seq).or_default();
        if !self.cfg.has_prepare_phase() {
            // Crash mode: an accepted proposal is this replica's "prepared" state (Paxos
            // acceptor), reported in view changes.
            slot.prepared_cert = Some(PreparedCert {
                pre_prepare: pp.clone(),
                prepares: Vec::new(),
            });
        }
        slot.pre_prepare = Some(pp);
        if self.may_vote() {
            if self.cfg.has_prepare_phase() {
                if leader != self.id {
                    self.cast(Phase::Prepare, vote);
                }
            } else {
                self.cast(Phase::Commit, vote);
            }
        }
        self.check_progress(vote.seq);
    }

    /// Authenticate, record and broadcast this replica's vote: a PREPARE is signed (it goes
    /// into prepared certificates), a COMMIT carries MACs (ADR 017).
    fn cast(&mut self, phase: Phase, vote: Vote) {
        match phase {
            Phase::Prepare => {
                let sig = self.sign_bytes(&vote_signing_bytes(phase, &vote));
                let signed = Signed {
                    from: self.id,
                    body: vote,
                    sig,
                };
                let slot = self.slots.entry(vote.seq).or_default();
                slot.prepares.insert(self.id, signed.clone());
                self.broadcast(Message::Prepare(signed));
            }
            Phase::Commit => {
                let slot = self.slots.entry(vote.seq).or_default();
                slot.sent_commit = true;
                slot.commits.insert(self.id, vote);
                let commit = self.commit_message(vote);
                self.broadcast(commit);
            }
        }
    }

    /// This replica's COMMIT for `vote`: in Byzantine mode a MAC for every peer over the
    /// vote's signing bytes; in crash mode none (links authenticate replicas).
    pub(crate) fn commit_message(&self, vote: Vote) -> Message {
        let macs = match self.cfg.fault_model {
            FaultModel::Byzantine => self
                .auth
                .mac_vector(self.cfg.n, &commit_mac_bytes(self.id, &vote)),
            FaultModel::Crash => Vec::new(),
        };
        Message::Commit(Authenticated {
            from: self.id,
            body: vote,
            macs,
        })
    }

    pub(crate) fn on_prepare(&mut self, v: Signed<Vote>) {
        if !self.cfg.has_prepare_phase() {
            self.reject(Reject::Unexpected);
            return;
        }
        if v.from == self.cfg.leader(v.body.view) {
            self.reject(Reject::NotLeader);
            return;
        }
        if self.admit(v.from, v.body.view, v.body.seq, || {
            Message::Prepare(v.clone())
        }) == Admit::No
        {
            return;
        }
        let (seq, from, vote) = (v.body.seq, v.from, v.body);
        if self.record_vote(from, vote, |slot| &mut slot.prepares, v) {
            self.check_progress(seq);
        }
    }

    pub(crate) fn on_commit(&mut self, v: Authenticated<Vote>) {
        if self.admit(v.from, v.body.view, v.body.seq, || {
            Message::Commit(v.clone())
        }) == Admit::No
        {
            return;
        }
        let (seq, from, vote) = (v.body.seq, v.from, v.body);
        if self.record_vote(from, vote, |slot| &mut slot.commits, vote) {
            self.check_progress(seq);
        }
    }

    /// Keep one vote per replica per slot and phase (in the map `votes` picks); a second,
    /// different vote is counted as conflicting and ignored.
    fn record_vote<T: VoteOf>(
        &mut self,
        from: ReplicaId,
        vote: Vote,
        votes: impl FnOnce(&mut Slot) -> &mut BTreeMap<ReplicaId, T>,
        kept: T,
    ) -> bool {
        let votes = votes(self.slots.entry(vote.seq).or_default());
        if let Some(old) = votes.get(&from) {
            let reason = if *old.vote() == vote {
                Reject::Duplicate
            } else {
                Reject::Conflicting
            };
            self.reject(reason);
            return false;
        }
        votes.insert(from, kept);
        true
    }

    /// PBFT 4.2: prepared = pre-prepare + quorum-1 matching prepares from others; committed =
    /// prepared + a quorum of matching commits. Crash mode skips the prepare phase.
    pub(crate) fn check_progress(&mut self, seq: Seq) {
        let quorum = self.cfg.quorum();
        let has_prepare = self.cfg.has_prepare_phase();
        let may_vote = self.may_vote();
        let Some(slot) = self.slots.get_mut(&seq) else {
            return;
        };
        let Some(pp) = slot.pre_prepare.as_ref() else {
            return;
        };
        let vote = Vote {
            view: pp.body.view,
            seq,
            batch_digest: pp.body.batch_digest,
        };
        fn matching<T: VoteOf>(votes: &BTreeMap<ReplicaId, T>, vote: &Vote) -> usize {
            votes.values().filter(|v| v.vote() == vote).count()
        }
        let prepared = !has_prepare || matching(&slot.prepares, &vote) + 1 >= quorum;
        if !prepared {
            return;
        }
        if has_prepare
            && slot
                .prepared_cert
                .as_ref()
                .is_none_or(|c| c.pre_prepare.body.view < vote.view)
        {
            let prepares: Vec<_> = slot
                .prepares
                .values()
                .filter(|v| v.body == vote)
                .take(quorum - 1)
                .cloned()
                .collect();
            let cert = PreparedCert {
                pre_prepare: pp.clone(),
                prepares,
            };
            self.persist(|| Record::Prepared(cert.clone()));
            if let Some(slot) = self.slots.get_mut(&seq) {
                slot.prepared_cert = Some(cert);
            }
        }
        let Some(slot) = self.slots.get_mut(&seq) else {
            return;
        };
        if has_prepare && !slot.sent_commit && may_vote {
            self.cast(Phase::Commit, vote);
        }
        let Some(slot) = self.slots.get_mut(&seq) else {
            return;
        };
        if slot.committed.is_none() && matching(&slot.commits, &vote) >= quorum {
            let Some(pp) = slot.pre_prepare.as_ref() else {
                return;
            };
            let batch = CommittedBatch {
                pre_prepare: pp.body.clone(),
            };
            self.persist(|| Record::Committed(batch.clone()));
            if let Some(slot) = self.slots.get_mut(&seq) {
                slot.committed = Some(batch);
            }
            self.note_progress_hint(seq);
            self.try_execute();
        }
    }

    /// Hand the next committed batch to the service. One batch executes at a time, so the
    /// exactly-once decisions below see the client table exactly as of the previous batch on
    /// every replica.
    pub(crate) fn try_execute(&mut self) {
        if self.in_flight.is_some() || self.replaying {
            return;
        }
        let seq = self.last_executed + 1;
        let Some(committed) = self.slots.get(&seq).and_then(|s| s.committed.as_ref()) else {
            return;
        };
        let view = committed.pre_prepare.view;
        let batch = &committed.pre_prepare.batch;
        let mut keys = Vec::with_capacity(batch.len());
        let mut run = Vec::with_capacity(batch.len());
        for (i, r) in batch.iter().enumerate() {
            let key = (r.request.client, r.request.req_seq);
            if self.clients.is_new(key.0, key.1) {
                keys.push(key);
                // Fits: a batch arrives in one frame, far below 2^32 requests.
                run.push(i as u32);
            }
        }
        // A checked batch never holds a request twice (`verify::check_requests`), but nothing
        // may execute twice whatever reached the engine: keep each key's first occurrence.
        // Sorting a copy finds repeats with fewer instructions than hashing every key.
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        if sorted.windows(2).any(|w| w[0] == w[1]) {
            let mut seen = std::collections::HashSet::with_capacity(keys.len());
            (keys, run) = keys
                .into_iter()
                .zip(run)
                .filter(|(k, _)| seen.insert(*k))
                .unzip();
        }
        let requests = Execution::new(batch.clone(), run);
        let snapshot = seq.is_multiple_of(self.cfg.checkpoint_interval);
        self.in_flight = Some(InFlight {
            seq,
            keys,
            snapshot,
        });
        self.out.push(Action::Execute {
            seq,
            view,
            requests,
            snapshot,
        });
    }

    pub(crate) fn on_executed(
        &mut self,
        seq: Seq,
        results: Vec<Vec<u8>>,
        snapshot: Option<Vec<bytes::Bytes>>,
    ) {
        let Some(flight) = self.in_flight.take_if(|f| f.seq == seq) else {
            // A batch superseded by a state transfer, or a runtime bug: either way not ours.
            if seq > self.last_executed {
                self.reject(Reject::Unexpected);
            }
            return;
        };
        let window = self.cfg.client_pending_max;
        let mut results = results.into_iter();
        let mut touched = Vec::new();
        for key in &flight.keys {
            let result = results.next().unwrap_or_default();
            self.clients.record(key.0, key.1, result.clone(), window);
            self.remove_pending(*key);
            touched.push(key.0);
            self.out.push(Action::Reply(Reply {
                view: self.view,
                replica: self.id,
                client: key.0,
                req_seq: key.1,
                read_only: false,
                result,
            }));
        }
        touched.sort_unstable();
        touched.dedup();
        for c in touched {
            self.purge_client(c);
        }
        self.stats.executed_batches += 1;
        self.stats.executed_requests += flight.keys.len() as u64;
        self.last_executed = seq;
        self.last_progress_ms = self.now_ms;
        if self.status == Status::Normal {
            // Progress in this view: the next view change starts from the base timeout.
            self.vc_timeout_ms = self.cfg.view_change_timeout_ms;
        }
        if flight.snapshot {
            if let Some(service) = snapshot {
                self.take_checkpoint(seq, service);
            }
        }
        self.maybe_finish_fetch();
        self.try_execute();
        self.try_propose();
    }

    pub(crate) fn on_proven_fault(&mut self, from: ReplicaId, view: View) {
        if self.status == Status::Normal && view == self.view && from == self.cfg.leader(view) {
            self.start_view_change(self.view + 1);
        }
    }

    /// Re-handle buffered messages of the view just entered; drop older ones.
    pub(crate) fn replay_future(&mut self) {
        let buffered: Vec<Message> = self.future.drain(..).collect();
        for m in buffered {
            let view = match &m {
                Message::PrePrepare(p) => p.body.view,
                Message::Prepare(v) => v.body.view,
                Message::Commit(v) => v.body.view,
                _ => continue,
            };
            if view > self.view {
                self.future.push_back(m);
            } else if view == self.view {
                match m {
                    Message::PrePrepare(p) => self.on_pre_prepare(p),
                    Message::Prepare(v) => self.on_prepare(v),
                    Message::Commit(v) => self.on_commit(v),
                    _ => {}
                }
            }
        }
    }
}
