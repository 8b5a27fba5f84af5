//! State transfer (PBFT 5.3.2, simplified): a replica that is behind asks f + 1 peers (one in
//! crash mode) for the committed batches it misses, or for the manifest of the peers' stable
//! state when it is below that checkpoint. COMMITs are authenticated by MACs (ADR 017), so a
//! committed batch carries no certificate: the replica accepts a batch once f + 1 peers
//! vouched for the same one at its sequence number, at least one of them correct. Only the
//! first peer asked sends the batches; the others send their digests (so a batch crosses the
//! network once, not f + 1 times). A snapshot is certified
//! by its signed checkpoint certificate instead, and travels in fixed-size pieces fetched from
//! all peers in turn, a few at a time, each checked against the manifest (whose digest is the
//! certified state digest), so memory holds the state being rebuilt plus a bounded number of
//! pieces in flight. Peers that do not help in time are replaced by the next ones, and a peer
//! that lies or stays silent only costs a retry elsewhere.

use super::{FetchState, HeldState, Replica, Transfer, Vouch};
use crate::client_table::ClientTable;
use crate::message::{
    CheckpointCert, Chunk, CommittedBatch, CommittedDigest, Fetch, FetchChunk, FetchReply, Message,
    Record, Signable, Signed, SnapshotManifest,
};
use crate::types::{Digest, ReplicaId, Seq};
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

    /// Ask the next peers for what we miss (all peers while recovering, to learn the view).
    pub(crate) fn start_fetch(&mut self) {
        if self.fetch.is_some() || !self.behind() {
            return;
        }
        self.send_fetch(self.last_fetch_peer + 1);
    }

    /// Ask [`crate::Config::fetch_agreement`] peers, the first at or after `first` in replica
    /// order and the others following it (everyone while recovering), for what follows our
    /// last executed batch: the first for the batches, the others for their digests. A round
    /// that does not help in time is followed by one starting at the next peer.
    pub(crate) fn send_fetch(&mut self, first: ReplicaId) {
        let n = self.cfg.n;
        let ask = match self.recovery {
            Some(_) => n as usize,
            None => self.cfg.fetch_agreement(),
        };
        let peers: Vec<ReplicaId> = (0..n)
            .map(|i| (first + i) % n)
            .filter(|&p| p != self.id)
            .take(ask)
            .collect();
        let Some(&batches_from) = peers.first() else {
            return;
        };
        // The next round starts after this round's batch sender, not after its last peer:
        // turn by turn every peer is asked for the batches, so f faulty ones cannot hold that
        // role forever (digests alone never make a batch).
        self.last_fetch_peer = batches_from;
        self.send(batches_from, self.fetch_message(false));
        if peers.len() > 1 {
            let msg = self.fetch_message(true);
            for &peer in &peers[1..] {
                self.send(peer, msg.clone());
            }
        }
        self.fetch = Some(FetchState {
            peers,
            deadline_ms: self.now_ms + self.cfg.fetch_timeout_ms,
        });
    }

    /// A signed FETCH for what follows our last executed batch: the batches, or their digests.
    fn fetch_message(&self, digests_only: bool) -> Message {
        let body = Fetch {
            executed: self.last_executed,
            view: self.view,
            nonce: self.recovery.as_ref().map_or(0, |r| r.nonce),
            digests_only,
        };
        let sig = self.sign_bytes(&body.signing_bytes());
        Message::Fetch(Signed {
            from: self.id,
            body,
            sig,
        })
    }

    pub(crate) fn fetch_deadline(&self) -> Option<u64> {
        if !self.behind() || self.transfer.is_some() {
            return None;
        }
        Some(match &self.fetch {
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
        // Vouches for executed slots are of no further use.
        self.vouched = self.vouched.split_off(&(self.last_executed + 1));
    }

    pub(crate) fn on_fetch(&mut self, f: Signed<Fetch>) {
        let to = f.from;
        if f.body.view < self.view {
            if let Some(nv) = self.new_view.clone().filter(|nv| nv.body.view == self.view) {
                self.send(to, Message::NewView(nv));
            }
        }
        let mut from = f.body.executed;
        let snapshot = if from < self.stable.seq {
            self.stable_manifest()
                .inspect(|_| from = self.stable.seq)
                .map(Box::new)
        } else {
            None
        };
        // The reply stays well within a message: a large state's manifest (37 bytes a piece)
        // leaves less room for batches.
        let mut room = (crate::message::MESSAGE_BYTES_MAX / 2).saturating_sub(
            snapshot
                .as_ref()
                .map_or(0, |m| m.pieces.len() * 37 + (64 << 10)),
        );
        let committed = (from + 1..)
            .map_while(|s| self.slots.get(&s).and_then(|slot| slot.committed.as_ref()))
            .take(self.cfg.fetch_batches_max as usize);
        let (batches, digests) = if f.body.digests_only {
            let digests = committed
                .map(|b| CommittedDigest {
                    seq: b.pre_prepare.seq,
                    batch_digest: b.pre_prepare.batch_digest,
                })
                .collect();
            (Vec::new(), digests)
        } else {
            let batches = committed
                .take_while(|b| {
                    let size = crate::message::encode(*b).len();
                    room = room.saturating_sub(size);
                    room > 0
                })
                .cloned()
                .collect();
            (batches, Vec::new())
        };
        let body = FetchReply {
            view: self.view,
            nonce: f.body.nonce,
            snapshot,
            batches,
            digests,
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
        let accepted_before = self.stats.batches_fetched;
        // Only the peers asked may vouch, and only for as many slots as one reply holds:
        // what a liar can make this replica keep is bounded by that (unsolicited offers are
        // dropped; a peer asked in an earlier round is asked again if it is needed).
        let asked = self.fetch.as_ref().is_some_and(|f| f.peers.contains(&from));
        let top = self
            .cfg
            .window_top(self.stable.seq)
            .min(self.last_executed + u64::from(self.cfg.fetch_batches_max));
        if let Some(manifest) = reply.snapshot {
            self.start_transfer(from, *manifest);
        }
        let vouches = reply
            .batches
            .into_iter()
            .map(|b| {
                let (seq, digest) = (b.pre_prepare.seq, b.pre_prepare.batch_digest);
                (seq, digest, Some(b))
            })
            .chain(
                reply
                    .digests
                    .into_iter()
                    .map(|d| (d.seq, d.batch_digest, None)),
            );
        for (seq, digest, batch) in vouches {
            // Batches we have not executed are useful, also at or below a checkpoint that
            // became stable while we lagged (we need them to reach it; the checkpoint's
            // snapshot may not be available yet).
            if !asked || seq <= self.last_executed || seq > top {
                continue;
            }
            if self.slots.get(&seq).is_some_and(|s| s.committed.is_some()) {
                continue;
            }
            self.vouch(from, seq, digest, batch);
        }
        self.try_execute();
        let useful = self.last_executed > before || self.stats.batches_fetched > accepted_before;
        if !self.behind() {
            self.fetch = None;
        } else if let Some(first) = self
            .fetch
            .as_ref()
            .filter(|f| useful && f.peers.contains(&from))
            .map(|f| f.peers[0])
        {
            // These peers help: ask them for the next part right away.
            self.send_fetch(first);
        }
    }

    /// `from` vouched that the batch with `digest` committed at `seq`, and sent it if `batch`
    /// (whose digest the verifier checked against its requests): accept the batch once enough
    /// peers vouched for the same digest and one of them sent it. A peer's later word for the
    /// same number replaces its earlier one, except that a digest repeating the batch it sent
    /// keeps the batch.
    fn vouch(&mut self, from: ReplicaId, seq: Seq, digest: Digest, batch: Option<CommittedBatch>) {
        let vouches = self.vouched.entry(seq).or_default();
        match vouches.get_mut(&from) {
            Some(v) if v.digest == digest && batch.is_none() => {}
            _ => {
                vouches.insert(from, Vouch { digest, batch });
            }
        }
        let agreeing = vouches.values().filter(|v| v.digest == digest).count();
        let sent = vouches
            .values()
            .any(|v| v.digest == digest && v.batch.is_some());
        if agreeing < self.cfg.fetch_agreement() || !sent {
            return;
        }
        let Some(batch) = self.vouched.remove(&seq).and_then(|v| {
            v.into_values()
                .filter(|v| v.digest == digest)
                .find_map(|v| v.batch)
        }) else {
            return;
        };
        self.note_progress_hint(seq);
        self.stats.batches_fetched += 1;
        self.persist(|| Record::Committed(batch.clone()));
        self.slots.entry(seq).or_default().committed = Some(batch);
    }

    /// The manifest of our stable state, if we hold that state (computed once per checkpoint).
    fn stable_manifest(&mut self) -> Option<SnapshotManifest> {
        if self.stable_manifest.is_none() {
            let state = self.stable_state.as_ref()?;
            self.stable_manifest = Some(state.manifest(self.stable.clone()));
        }
        self.stable_manifest.clone()
    }

    /// A peer offered the state at its stable checkpoint: fetch it piece by piece if it is
    /// ahead of us and of any transfer under way.
    fn start_transfer(&mut self, from: ReplicaId, manifest: SnapshotManifest) {
        let seq = manifest.checkpoint.seq;
        if let Some(t) = self.transfer.as_mut() {
            if t.manifest == manifest && !t.sources.contains(&from) {
                // Another peer holds the same state: spread the pieces over it too.
                t.sources.push(from);
            }
        }
        if seq <= self.last_executed
            || self
                .transfer
                .as_ref()
                .is_some_and(|t| t.manifest.checkpoint.seq >= seq)
        {
            return;
        }
        let groups = manifest.groups(self.cfg.chunk());
        let count = groups.len();
        self.transfer = Some(Transfer {
            manifest,
            groups,
            pieces: vec![None; count],
            missing: count,
            asked: Default::default(),
            sources: vec![from],
            turn: 0,
            failed: Default::default(),
            last_progress_ms: self.now_ms,
        });
        self.fetch = None;
        self.request_pieces();
    }

    /// Keep a few pieces in flight, each asked of the next peer in turn.
    fn request_pieces(&mut self) {
        const IN_FLIGHT: usize = 4;
        let (n, me, deadline) = (self.cfg.n, self.id, self.now_ms + self.cfg.fetch_timeout_ms);
        let Some(t) = self.transfer.as_mut() else {
            return;
        };
        if t.missing == 0 {
            self.finish_transfer();
            return;
        }
        let seq = t.manifest.checkpoint.seq;
        let mut asks = Vec::new();
        for index in 0..t.pieces.len() as u32 {
            if t.asked.len() >= IN_FLIGHT {
                break;
            }
            if t.pieces[index as usize].is_some() || t.asked.contains_key(&index) {
                continue;
            }
            // A piece goes to the peers that offered the state; once it failed (silence or a
            // bad piece), to every peer in turn.
            t.turn += 1;
            let peer = if t.failed.contains(&index) {
                let others: Vec<ReplicaId> = (0..n).filter(|p| *p != me).collect();
                others[t.turn % others.len()]
            } else {
                t.sources[t.turn % t.sources.len()]
            };
            t.asked.insert(index, (peer, deadline));
            asks.push((peer, index));
        }
        for (peer, index) in asks {
            let body = FetchChunk { seq, index };
            let sig = self.sign_bytes(&body.signing_bytes());
            let from = self.id;
            self.send(peer, Message::FetchChunk(Signed { from, body, sig }));
        }
    }

    pub(crate) fn transfer_deadline(&self) -> Option<u64> {
        let t = self.transfer.as_ref()?;
        let stalled = t.last_progress_ms + 4 * self.cfg.fetch_timeout_ms;
        Some(
            t.asked
                .values()
                .map(|(_, d)| *d)
                .min()
                .unwrap_or(stalled)
                .min(stalled),
        )
    }

    /// Pieces not delivered in time are asked of the next peer; a transfer that makes no
    /// progress at all (every peer moved past that checkpoint) starts over with a new fetch.
    pub(crate) fn tick_transfer(&mut self) {
        let now = self.now_ms;
        let Some(t) = self.transfer.as_mut() else {
            return;
        };
        if now >= t.last_progress_ms + 4 * self.cfg.fetch_timeout_ms {
            self.transfer = None;
            self.start_fetch();
            return;
        }
        let late: Vec<u32> = t
            .asked
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(index, _)| *index)
            .collect();
        for index in &late {
            t.asked.remove(index);
            t.failed.insert(*index);
        }
        if !late.is_empty() {
            self.request_pieces();
        }
    }

    pub(crate) fn on_fetch_chunk(&mut self, f: Signed<FetchChunk>) {
        let FetchChunk { seq, index } = f.body;
        // The stable state, the one before it, or our own state at that checkpoint if it is
        // not stable here yet (the requester checks every piece against its manifest, so a
        // state that differs only costs it a retry).
        let bytes = match (&self.stable_state, &self.previous_state) {
            (Some(state), _) if self.stable.seq == seq => state.piece(index),
            (_, Some((s, state))) if *s == seq => state.piece(index),
            _ => match self.own_checkpoints.get(&seq) {
                Some(state) => state.piece(index),
                None => return,
            },
        };
        let body = Chunk { seq, index, bytes };
        let sig = self.sign_bytes(&body.signing_bytes());
        let from = self.id;
        self.send(f.from, Message::Chunk(Signed { from, body, sig }));
    }

    pub(crate) fn on_chunk(&mut self, c: Signed<Chunk>) {
        let now = self.now_ms;
        let Some(t) = self.transfer.as_mut() else {
            return;
        };
        let Chunk { seq, index, bytes } = c.body;
        if seq != t.manifest.checkpoint.seq
            || t.pieces.get(index as usize).is_none_or(Option::is_some)
        {
            return;
        }
        if !t
            .manifest
            .group_matches(t.groups[index as usize].clone(), &bytes)
        {
            // A lying (or confused) peer: ask someone else at once.
            t.asked.remove(&index);
            t.failed.insert(index);
            self.reject(Reject::BadStateTransfer);
            self.request_pieces();
            return;
        }
        t.pieces[index as usize] = Some(bytes);
        t.missing -= 1;
        t.asked.remove(&index);
        t.last_progress_ms = now;
        self.request_pieces();
    }

    /// Every piece is in and checked: install the state.
    fn finish_transfer(&mut self) {
        let Some(t) = self.transfer.take() else {
            return;
        };
        if t.manifest.checkpoint.seq > self.last_executed {
            // Each run's buffer, cut (without copying) into the pieces the manifest lists.
            let mut pieces = Vec::with_capacity(t.manifest.pieces.len());
            for (group, run) in t.groups.iter().zip(t.pieces) {
                let run = bytes::Bytes::from(run.unwrap_or_default());
                let mut start = 0;
                for info in &t.manifest.pieces[group.clone()] {
                    let end = start + info.len as usize;
                    pieces.push(run.slice(start..end));
                    start = end;
                }
            }
            let m = t.manifest;
            let state = HeldState::from_pieces(
                self.cfg.chunk(),
                m.service_len,
                m.clients_len,
                pieces,
                m.pieces,
            );
            self.install_snapshot(m.checkpoint, state);
        }
        self.try_execute();
        if self.behind() {
            self.start_fetch();
        }
    }

    /// Replace our state with a certified snapshot (already checked against its certificate).
    fn install_snapshot(&mut self, checkpoint: CheckpointCert, state: HeldState) {
        let Ok(clients) = ClientTable::decode(&state.clients()) else {
            self.reject(Reject::BadStateTransfer);
            return;
        };
        let seq = checkpoint.seq;
        self.clients = clients;
        self.last_executed = seq;
        self.vouched = self.vouched.split_off(&(seq + 1));
        self.last_progress_ms = self.now_ms;
        self.in_flight = None;
        self.stats.snapshots_installed += 1;
        self.out.push(Action::Restore {
            seq,
            service: state.service(),
        });
        self.own_checkpoints.insert(seq, state.clone());
        if seq > self.stable.seq {
            self.make_stable(checkpoint);
        } else if seq == self.stable.seq {
            self.stable_state = Some(state);
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
        // The restored checkpoint retired what a leader had in flight: waiting requests may
        // now fill the pipeline (`Config::pipeline_fill`).
        self.try_propose();
    }
}
