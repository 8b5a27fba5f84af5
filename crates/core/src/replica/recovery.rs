//! Durable mode (ADR 008): what a replica logs, and how a restarted replica rebuilds its state
//! from its newest saved checkpoint and the records after it.
//!
//! Recovery replays the records through the same code paths that produced them, with
//! persistence, execution and sending switched off; the rebuilt replica therefore holds the
//! view, the accepted proposals and the prepared certificates its votes were based on, and
//! never votes against them.

use thiserror::Error;

use super::{HeldState, Replica, Status};
use crate::client_table::ClientTable;
use crate::config::{ConfigError, Durability};
use crate::message::{Message, Record, StateSnapshot};
use crate::types::{ReplicaId, Seq};
use crate::Action;

/// Why a replica's saved state cannot be recovered.
#[derive(Debug, Error)]
pub enum RecoverError {
    /// The configuration or replica id is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The saved checkpoint does not match its own certificate or does not decode.
    #[error("saved checkpoint {seq}: {why}")]
    BadCheckpoint {
        /// Its sequence number.
        seq: Seq,
        /// What is wrong.
        why: String,
    },
    /// A log record was written by another replica (a data directory of another replica).
    #[error("log record signed by replica {found}, this is replica {expected}")]
    ForeignRecord {
        /// The record's signer.
        found: ReplicaId,
        /// This replica.
        expected: ReplicaId,
    },
}

impl Replica {
    /// A replica restarted in durable mode from its own disk: `checkpoint` is the newest stable
    /// checkpoint it saved ([`Action::SaveCheckpoint`]) and `records` every record it logged
    /// after that ([`Action::Persist`]), in log order. The actions to carry out first (restore
    /// the checkpoint into the service, re-execute the committed batches after it, and re-send
    /// this replica's votes of its current view, which peers may have lost) are appended to
    /// `out`. The replica votes at once: it remembers everything it voted for.
    pub fn recover(
        config: crate::Config,
        id: ReplicaId,
        auth: std::sync::Arc<dyn crate::Authenticator>,
        now_ms: u64,
        checkpoint: Option<StateSnapshot>,
        records: impl IntoIterator<Item = Record>,
        out: &mut Vec<Action>,
    ) -> Result<Replica, RecoverError> {
        let mut r = Replica::new(config, id, auth)?;
        r.now_ms = now_ms;
        r.last_progress_ms = now_ms;
        r.view_start_ms = now_ms;
        r.checkpoint_resend_ms = now_ms;
        r.replaying = true;
        let mut restore = None;
        if let Some(snap) = checkpoint {
            let seq = snap.checkpoint.seq;
            let (state, _) = HeldState::new(
                r.cfg.chunk(),
                snap.service.clone(),
                snap.clients.clone(),
                None,
                &mut r.known_pieces,
            );
            if state.digest != snap.checkpoint.state_digest {
                return Err(RecoverError::BadCheckpoint {
                    seq,
                    why: "state digest does not match the certificate".into(),
                });
            }
            r.clients =
                ClientTable::decode(&snap.clients).map_err(|e| RecoverError::BadCheckpoint {
                    seq,
                    why: format!("client table: {e}"),
                })?;
            r.last_executed = seq;
            r.next_seq = seq + 1;
            r.own_checkpoints.insert(seq, state.clone());
            r.stable_state = Some(state);
            let service = snap.service_bytes();
            r.stable = snap.checkpoint;
            r.saved_checkpoint = seq;
            restore = Some(Action::Restore { seq, service });
        }
        // View records first: the log holds a slot's records before the view record written
        // again at a later checkpoint, and the slots need the view they belong to. Each slot
        // record names its view, so replaying them after the final view is equivalent.
        let (views, slots): (Vec<Record>, Vec<Record>) =
            records.into_iter().partition(|rec| rec.seq().is_none());
        for record in views.into_iter().chain(slots) {
            r.replay(record)?;
            r.out.clear();
        }
        r.replaying = false;
        r.fetch = None;
        r.next_seq = r
            .slots
            .iter()
            .filter(|(_, s)| s.pre_prepare.is_some() || s.committed.is_some())
            .map(|(seq, _)| seq + 1)
            .max()
            .unwrap_or(0)
            .max(r.next_seq)
            .max(r.last_executed + 1);
        r.resend_own_votes();
        let resent = std::mem::take(&mut r.out);
        r.out.extend(restore);
        r.out.extend(resent);
        r.try_execute();
        r.release(out);
        Ok(r)
    }

    /// Apply one logged record (persistence, execution and sending are off).
    fn replay(&mut self, record: Record) -> Result<(), RecoverError> {
        let own = |from: ReplicaId| {
            if from == self.id {
                Ok(())
            } else {
                Err(RecoverError::ForeignRecord {
                    found: from,
                    expected: self.id,
                })
            }
        };
        match record {
            Record::ViewChange(vc) => {
                own(vc.from)?;
                let target = vc.body.new_view;
                if target > self.view {
                    self.view = target;
                    self.status = Status::ViewChanging;
                    self.queue.clear();
                    self.vc_deadline_ms = Some(self.now_ms + self.vc_timeout_ms);
                }
                if target >= self.view {
                    self.latest_vc.insert(self.id, vc);
                }
            }
            Record::NewView(nv) => {
                let view = nv.body.view;
                if view > self.view || (view == self.view && self.status != Status::Normal) {
                    let (checkpoint, _) =
                        super::compute_new_view(&self.cfg, view, &nv.body.view_changes);
                    if self.cfg.leader(view) == self.id {
                        self.sent_new_view = Some(view);
                    }
                    self.enter_view(nv, checkpoint);
                }
            }
            Record::PrePrepare(pp) => {
                let seq = pp.body.seq;
                if !self.cfg.has_prepare_phase() && seq > self.stable.seq {
                    // Crash mode: an accepted proposal is this acceptor's state, reported in
                    // its view changes whatever view it came from (the newest one wins).
                    let slot = self.slots.entry(seq).or_default();
                    if slot
                        .prepared_cert
                        .as_ref()
                        .is_none_or(|c| c.pre_prepare.body.view <= pp.body.view)
                    {
                        slot.prepared_cert = Some(crate::message::PreparedCert {
                            pre_prepare: pp.clone(),
                            prepares: Vec::new(),
                        });
                    }
                }
                let fresh = self.slots.get(&seq).is_none_or(|s| s.pre_prepare.is_none());
                if pp.body.view == self.view
                    && self.status == Status::Normal
                    && self.in_window(seq)
                    && fresh
                {
                    self.accept_pre_prepare(pp, false);
                }
            }
            Record::Prepared(cert) => {
                let (view, seq) = (cert.pre_prepare.body.view, cert.pre_prepare.body.seq);
                if seq > self.stable.seq {
                    let slot = self.slots.entry(seq).or_default();
                    if slot
                        .prepared_cert
                        .as_ref()
                        .is_none_or(|c| c.pre_prepare.body.view <= view)
                    {
                        slot.prepared_cert = Some(cert.clone());
                    }
                    if view == self.view {
                        for p in cert.prepares {
                            slot.prepares.entry(p.from).or_insert(p);
                        }
                        self.check_progress(seq);
                    }
                }
            }
            Record::Committed(batch) => {
                let seq = batch.pre_prepare.seq;
                if seq > self.last_executed {
                    let slot = self.slots.entry(seq).or_default();
                    if slot.committed.is_none() {
                        slot.committed = Some(batch);
                    }
                    self.note_progress_hint(seq);
                }
            }
        }
        Ok(())
    }

    /// After a restart: send again this replica's view change, or its proposals and votes of
    /// the current view (peers restarted at the same time lost what they had received).
    fn resend_own_votes(&mut self) {
        if self.status == Status::ViewChanging {
            if let Some(vc) = self.latest_vc.get(&self.id).cloned() {
                self.broadcast(Message::ViewChange(vc));
            }
            return;
        }
        let mut messages = Vec::new();
        for slot in self.slots.values() {
            if let Some(pp) = slot.pre_prepare.as_ref().filter(|pp| pp.from == self.id) {
                messages.push(Message::PrePrepare(pp.clone()));
            }
            if let Some(v) = slot.prepares.get(&self.id) {
                messages.push(Message::Prepare(v.clone()));
            }
            if let Some(v) = slot.commits.get(&self.id) {
                messages.push(self.commit_message(*v));
            }
        }
        for m in messages {
            self.broadcast(m);
        }
    }

    /// Durable mode, at the end of a step: once this replica holds the state of its stable
    /// checkpoint, save it, after writing the current view record again under the new key (so
    /// the log can drop everything at or below the checkpoint).
    pub(crate) fn save_stable_checkpoint(&mut self) {
        if self.cfg.durability != Durability::Durable
            || self.replaying
            || self.recovery.is_some()
            || self.saved_checkpoint >= self.stable.seq
        {
            return;
        }
        let Some(state) = self.stable_state.as_ref() else {
            return;
        };
        let (service, clients) = (state.service_pieces(), state.clients());
        self.saved_checkpoint = self.stable.seq;
        let view_record = match self.status {
            Status::ViewChanging => self
                .latest_vc
                .get(&self.id)
                .filter(|vc| vc.body.new_view == self.view)
                .cloned()
                .map(Record::ViewChange),
            _ => self
                .new_view
                .clone()
                .filter(|nv| nv.body.view == self.view)
                .map(Record::NewView),
        };
        if let Some(record) = view_record {
            self.persist(|| record);
        }
        self.out.push(Action::SaveCheckpoint(StateSnapshot {
            checkpoint: self.stable.clone(),
            service,
            clients,
        }));
    }
}
