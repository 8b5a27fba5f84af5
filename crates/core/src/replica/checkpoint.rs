//! Checkpoints (PBFT 4.3): every K sequence numbers each replica signs its state digest; a
//! quorum of matching digests makes the checkpoint stable, which garbage-collects the log and
//! advances the watermarks. A replica that sees others stable beyond what it executed fetches
//! state.

use super::{HeldState, Replica};
use crate::message::{Checkpoint, CheckpointCert, Message, Signable, Signed};
#[cfg(test)]
use crate::types::ReplicaId;
use crate::types::{Digest, Seq};
use crate::verify::Reject;

impl Replica {
    /// After executing checkpoint `seq`: record the state and vote for its digest.
    pub(crate) fn take_checkpoint(&mut self, seq: Seq, service: Vec<bytes::Bytes>) {
        let clients = self.clients.encode();
        // The newest state this replica holds: an unstable checkpoint (above the stable one),
        // the stable state, or, for a replica whose service lags (the checkpoint became stable
        // before it executed it), the state it took last, kept as the previous one.
        let previous = (self.own_checkpoints.values().next_back())
            .or(self.stable_state.as_ref())
            .or(self.previous_state.as_ref().map(|(_, state)| state));
        let (state, hashed) = HeldState::new(
            self.cfg.chunk(),
            service,
            clients.into(),
            previous,
            &mut self.known_pieces,
        );
        self.stats.state_bytes_hashed += hashed;
        let digest = state.digest;
        if seq == self.stable.seq && digest == self.stable.state_digest {
            // The checkpoint became stable before we executed it: now we can serve its state.
            self.stable_state = Some(state.clone());
        }
        self.own_checkpoints.insert(seq, state);
        if self.may_vote() {
            let body = Checkpoint {
                seq,
                state_digest: digest,
            };
            let sig = self.sign_bytes(&body.signing_bytes());
            let signed = Signed {
                from: self.id,
                body,
                sig,
            };
            self.checkpoint_votes
                .entry(seq)
                .or_default()
                .insert(self.id, signed.clone());
            self.broadcast(Message::Checkpoint(signed));
            self.checkpoint_resend_ms = self.now_ms + self.cfg.fetch_timeout_ms;
        }
        self.check_stable(seq);
    }

    pub(crate) fn on_checkpoint(&mut self, c: Signed<Checkpoint>) {
        let seq = c.body.seq;
        if !seq.is_multiple_of(self.cfg.checkpoint_interval) || seq == 0 {
            self.reject(Reject::OutOfWindow);
            return;
        }
        if seq <= self.stable.seq {
            // Old news; harmless (retransmissions).
            return;
        }
        if seq > self.cfg.window_top(self.stable.seq) {
            // Beyond what we track: remember only the sender's highest claim (bounded), and
            // fetch once f+1 replicas (at least one correct) are that far ahead.
            let e = self.ahead_checkpoints.entry(c.from).or_insert(0);
            *e = (*e).max(seq);
            let mut ahead: Vec<Seq> = self.ahead_checkpoints.values().copied().collect();
            ahead.sort_unstable_by(|a, b| b.cmp(a));
            if let Some(&s) = ahead.get(self.cfg.weak_quorum() - 1) {
                self.note_progress_hint(s);
                self.start_fetch();
            }
            return;
        }
        let votes = self.checkpoint_votes.entry(seq).or_default();
        if let Some(old) = votes.get(&c.from) {
            let reason = if old.body == c.body {
                Reject::Duplicate
            } else {
                Reject::Conflicting
            };
            self.reject(reason);
            return;
        }
        votes.insert(c.from, c);
        self.check_stable(seq);
    }

    /// Make checkpoint `seq` stable if a quorum signed one digest.
    fn check_stable(&mut self, seq: Seq) {
        if seq <= self.stable.seq {
            return;
        }
        let Some(votes) = self.checkpoint_votes.get(&seq) else {
            return;
        };
        let mut by_digest: std::collections::BTreeMap<Digest, Vec<&Signed<Checkpoint>>> =
            std::collections::BTreeMap::new();
        for v in votes.values() {
            by_digest.entry(v.body.state_digest).or_default().push(v);
        }
        let quorum = self.cfg.quorum();
        let Some((digest, proof)) = by_digest.into_iter().find(|(_, v)| v.len() >= quorum) else {
            return;
        };
        let cert = CheckpointCert {
            seq,
            state_digest: digest,
            proof: proof.into_iter().take(quorum).cloned().collect(),
        };
        self.make_stable(cert);
    }

    /// Adopt a stable checkpoint certificate: advance the low watermark, discard the log and
    /// votes below it, and fetch state if we have not executed that far.
    pub(crate) fn make_stable(&mut self, cert: CheckpointCert) {
        if cert.seq <= self.stable.seq {
            return;
        }
        let seq = cert.seq;
        // Keep serving the state we leave behind to transfers already under way.
        self.previous_state = self
            .stable_state
            .take()
            .map(|state| (self.stable.seq, state));
        self.stable_manifest = None;
        self.stable_state = self
            .own_checkpoints
            .get(&seq)
            .filter(|state| state.digest == cert.state_digest)
            .cloned();
        self.stable = cert;
        self.stats.stable_checkpoints += 1;
        // PBFT 4.3 discards the log up to the stable checkpoint. A replica whose service lags
        // behind its own commits (the usual case for a busy leader) keeps the committed batches
        // it has not executed yet: it needs them, and fetching them from a peer would cost a
        // snapshot transfer for work it is about to do.
        let executable = (self.last_executed + 1..=seq).all(|s| {
            self.slots
                .get(&s)
                .is_some_and(|slot| slot.committed.is_some())
        });
        let keep_from = if executable {
            (self.last_executed + 1).min(seq + 1)
        } else {
            seq + 1
        };
        self.slots = self.slots.split_off(&keep_from);
        self.checkpoint_votes = self.checkpoint_votes.split_off(&(seq + 1));
        self.own_checkpoints = self.own_checkpoints.split_off(&(seq + 1));
        self.ahead_checkpoints.retain(|_, s| *s > seq);
        if self.next_seq <= seq {
            self.next_seq = seq + 1;
        }
        if self.last_executed < seq && !executable {
            // PBFT 4.3 / 5.3: others have a stable state we do not: transfer it, right away
            // from a replica that signed the checkpoint (it holds the state). A fetch sent
            // before the checkpoint was stable may have asked a peer that had nothing yet;
            // waiting for its timeout would stall a lagging leader for the whole cluster.
            self.note_progress_hint(seq);
            let signer = self
                .stable
                .proof
                .iter()
                .map(|c| c.from)
                .filter(|&p| p != self.id)
                .min_by_key(|&p| (p + self.cfg.n - self.last_fetch_peer - 1) % self.cfg.n);
            match signer {
                Some(peer) if self.recovery.is_none() => {
                    self.fetch = None;
                    self.send_fetch(peer);
                }
                _ => self.start_fetch(),
            }
        }
        self.try_propose();
    }

    /// When own checkpoint votes above the stable one should be re-sent (they may have been
    /// lost, and the window cannot advance without them).
    pub(crate) fn checkpoint_resend_deadline(&self) -> Option<u64> {
        if !self.may_vote() {
            return None;
        }
        self.own_checkpoints.keys().next_back()?;
        Some(self.checkpoint_resend_ms)
    }

    pub(crate) fn tick_checkpoints(&mut self) {
        let Some(deadline) = self.checkpoint_resend_deadline() else {
            return;
        };
        if self.now_ms < deadline {
            return;
        }
        self.checkpoint_resend_ms = self.now_ms + self.cfg.fetch_timeout_ms;
        let own: Option<Signed<Checkpoint>> = self
            .own_checkpoints
            .keys()
            .next_back()
            .and_then(|s| self.checkpoint_votes.get(s))
            .and_then(|v| v.get(&self.id))
            .cloned();
        if let Some(c) = own {
            self.broadcast(Message::Checkpoint(c));
        }
    }

    /// Number of distinct replicas whose checkpoint votes we hold for `seq` (for tests).
    #[cfg(test)]
    pub(crate) fn checkpoint_voters(&self, seq: Seq) -> Vec<ReplicaId> {
        self.checkpoint_votes
            .get(&seq)
            .map(|v| v.keys().copied().collect())
            .unwrap_or_default()
    }
}
