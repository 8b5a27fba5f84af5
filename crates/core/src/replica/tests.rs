//! Engine tests: exact actions for single events, and small whole-cluster runs over a perfect
//! in-memory network (the seeded simulator in `shieldwall-sim` covers faults at scale).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use super::{Replica, SettledVotes, Status};
use crate::auth::{Authenticator, SimAuth};
use crate::config::{Config, FaultModel};
use crate::message::{
    batch_digest, vote_signing_bytes, CheckpointCert, Message, Phase, PrePrepare, Reply, Request,
    RequestAuth, Signable, Signed, SignedRequest, StateSnapshot, Vote, MAC_BYTES,
};
use crate::types::{Principal, ReplicaId};
use crate::verify::{verify_message, verify_request};
use crate::{Action, Event};

const SEED: [u8; 32] = [7; 32];

fn config(n: u32, model: FaultModel) -> Config {
    let mut c = Config::for_replicas(n, model);
    c.checkpoint_interval = 4;
    c.watermark_window = 8;
    c.pipeline_window = 2;
    c.pipeline_fill = 0;
    c.request_timeout_ms = 100;
    c.view_change_timeout_ms = 100;
    c.fetch_timeout_ms = 50;
    c
}

fn auth(p: Principal) -> Arc<dyn Authenticator> {
    Arc::new(SimAuth::new(p, SEED))
}

fn request(client: u64, req_seq: u64, op: &[u8]) -> SignedRequest {
    let request = Request {
        client,
        req_seq,
        read_only: false,
        op: op.to_vec().into(),
    };
    let sig = SimAuth::new(Principal::Client(client), SEED).sign(&request.signing_bytes());
    SignedRequest {
        request,
        auth: RequestAuth::Signature(sig.into()),
    }
}

/// A pre-prepare for (view 0, seq 1) signed by its leader, replica 0.
fn leader_pre_prepare(batch: Vec<SignedRequest>) -> Signed<PrePrepare> {
    leader_pre_prepare_at(1, batch)
}

/// A pre-prepare for (view 0, `seq`) signed by its leader, replica 0.
fn leader_pre_prepare_at(seq: u64, batch: Vec<SignedRequest>) -> Signed<PrePrepare> {
    let body = PrePrepare {
        view: 0,
        seq,
        batch_digest: batch_digest(&batch),
        batch: batch.into(),
    };
    let sig = SimAuth::new(Principal::Replica(0), SEED).sign(&body.signing_bytes());
    Signed { from: 0, body, sig }
}

/// A service whose state is the list of executed ops; results echo the op. Its snapshot is
/// one part per op (each encoded once, when executed), so unchanged parts are shared between
/// checkpoints the way a service with a part cache shares them.
#[derive(Default, Clone)]
struct Log(Vec<Vec<u8>>, Vec<bytes::Bytes>);

impl Log {
    fn push(&mut self, op: Vec<u8>) {
        self.1.push(crate::message::encode(&op).into());
        self.0.push(op);
    }

    fn restore(bytes: &[u8]) -> Log {
        let mut log = Log::default();
        let mut rest = bytes;
        while !rest.is_empty() {
            let (op, tail) = postcard::take_from_bytes::<Vec<u8>>(rest).unwrap();
            log.push(op);
            rest = tail;
        }
        log
    }
}

struct Cluster {
    cfg: Config,
    replicas: Vec<Replica>,
    services: Vec<Log>,
    up: Vec<bool>,
    net: VecDeque<(ReplicaId, Message)>,
    replies: Vec<Reply>,
    proposals: Vec<(ReplicaId, u64, u64, crate::types::Digest)>,
    /// (destination, message kind) pairs the network drops.
    drop: Vec<(ReplicaId, &'static str)>,
    executed: Vec<BTreeMap<u64, Vec<Vec<u8>>>>,
    now: u64,
    /// Durable mode: each replica's disk (records become durable at once unless `sync_held`).
    disks: Vec<Disk>,
    /// Replicas whose disk reports nothing durable until `sync`.
    sync_held: Vec<ReplicaId>,
    /// A replica whose state-transfer pieces are corrupted (and re-signed with its key).
    tamper_chunks: Option<ReplicaId>,
    /// Largest number of pieces one replica had asked for and not received, seen at any step.
    pieces_in_flight_max: usize,
}

/// A replica's disk in durable mode: the newest saved checkpoint and the log after it.
#[derive(Default, Clone)]
struct Disk {
    checkpoint: Option<crate::message::StateSnapshot>,
    /// (ticket, key, record, durable)
    log: Vec<(u64, u64, crate::message::Record, bool)>,
}

impl Cluster {
    fn new(n: u32, model: FaultModel) -> Cluster {
        let cfg = config(n, model);
        let replicas = (0..n)
            .map(|i| Replica::new(cfg.clone(), i, auth(Principal::Replica(i))).unwrap())
            .collect();
        Cluster {
            cfg,
            replicas,
            services: vec![Log::default(); n as usize],
            up: vec![true; n as usize],
            net: VecDeque::new(),
            replies: Vec::new(),
            proposals: Vec::new(),
            drop: Vec::new(),
            executed: vec![BTreeMap::new(); n as usize],
            now: 0,
            disks: vec![Disk::default(); n as usize],
            sync_held: Vec::new(),
            tamper_chunks: None,
            pieces_in_flight_max: 0,
        }
    }

    fn durable(n: u32, model: FaultModel) -> Cluster {
        let mut c = Cluster::new(n, model);
        c.reconfigure(|cfg| cfg.durability = crate::config::Durability::Durable);
        c
    }

    /// Change the configuration and start every replica afresh with it.
    fn reconfigure(&mut self, change: impl FnOnce(&mut Config)) {
        change(&mut self.cfg);
        self.replicas = (0..self.cfg.n)
            .map(|i| Replica::new(self.cfg.clone(), i, auth(Principal::Replica(i))).unwrap())
            .collect();
    }

    /// Replica `i` loses its memory and whatever its disk had not made durable, and restarts
    /// from its disk.
    fn crash_and_recover(&mut self, i: ReplicaId) -> Vec<Action> {
        let disk = &mut self.disks[i as usize];
        disk.log.retain(|e| e.3);
        let records: Vec<_> = disk.log.iter().map(|e| e.2.clone()).collect();
        let mut out = Vec::new();
        self.replicas[i as usize] = Replica::recover(
            self.cfg.clone(),
            i,
            auth(Principal::Replica(i)),
            self.now,
            disk.checkpoint.clone(),
            records,
            &mut out,
        )
        .unwrap();
        self.services[i as usize] = Log::default();
        self.executed[i as usize].clear();
        let actions = out.clone();
        self.carry_out(i, out, &mut VecDeque::new());
        actions
    }

    fn event(&mut self, to: ReplicaId, event: Event) {
        if !self.up[to as usize] {
            return;
        }
        let mut out = Vec::new();
        let mut queue = VecDeque::from([event]);
        while let Some(e) = queue.pop_front() {
            self.replicas[to as usize].handle(self.now, e, &mut out);
            let actions = std::mem::take(&mut out);
            self.carry_out(to, actions, &mut queue);
        }
    }

    fn carry_out(&mut self, to: ReplicaId, actions: Vec<Action>, queue: &mut VecDeque<Event>) {
        let first = queue.is_empty();
        {
            for a in actions {
                match a {
                    Action::Send { to: dst, message } => self.net.push_back((dst, message)),
                    Action::Broadcast { message } => {
                        if let Message::PrePrepare(p) = &message {
                            self.proposals
                                .push((to, p.body.view, p.body.seq, p.body.batch_digest));
                        }
                        if let Message::NewView(nv) = &message {
                            for p in &nv.body.pre_prepares {
                                self.proposals.push((
                                    to,
                                    p.body.view,
                                    p.body.seq,
                                    p.body.batch_digest,
                                ));
                            }
                        }
                        for dst in 0..self.cfg.n {
                            if dst != to {
                                self.net.push_back((dst, message.clone()));
                            }
                        }
                    }
                    Action::Execute {
                        seq,
                        requests,
                        snapshot,
                        ..
                    } => {
                        let svc = &mut self.services[to as usize];
                        let results: Vec<Vec<u8>> =
                            requests.iter().map(|r| r.op.to_vec()).collect();
                        for op in &results {
                            svc.push(op.clone());
                        }
                        self.executed[to as usize].insert(seq, results.clone());
                        let snapshot = snapshot.then(|| svc.1.clone());
                        queue.push_back(Event::Executed {
                            seq,
                            results,
                            snapshot,
                        });
                    }
                    Action::Restore { service, .. } => {
                        self.services[to as usize] = Log::restore(&service);
                    }
                    Action::Reply(r) => self.replies.push(r),
                    Action::ExecuteReadOnly { .. } => {}
                    Action::Persist {
                        ticket,
                        key,
                        record,
                    } => {
                        let durable = !self.sync_held.contains(&to);
                        self.disks[to as usize]
                            .log
                            .push((ticket, key, record, durable));
                        if durable {
                            queue.push_back(Event::Persisted { ticket });
                        }
                    }
                    Action::SaveCheckpoint(snap) => {
                        let disk = &mut self.disks[to as usize];
                        let seq = snap.checkpoint.seq;
                        disk.log.retain(|e| e.1 > seq);
                        disk.checkpoint = Some(snap);
                    }
                }
            }
        }
        if first && !queue.is_empty() {
            while let Some(e) = queue.pop_front() {
                let mut out = Vec::new();
                self.replicas[to as usize].handle(self.now, e, &mut out);
                self.carry_out(to, out, queue);
            }
        }
    }

    fn deliver_all(&mut self) {
        let mut steps = 0;
        while let Some((to, m)) = self.net.pop_front() {
            steps += 1;
            assert!(steps < 100_000, "no quiescence");
            let from = m.from();
            if !self.up[from as usize] || self.drop.contains(&(to, m.kind())) {
                continue;
            }
            let mut m = m;
            if let Message::Chunk(c) = &mut m {
                if self.tamper_chunks == Some(from) {
                    c.body.bytes.iter_mut().for_each(|b| *b ^= 0x55);
                    c.sig = auth(Principal::Replica(from)).sign(&c.body.signing_bytes());
                }
            }
            for r in &self.replicas {
                let asked = r.transfer.as_ref().map_or(0, |t| t.asked.len());
                self.pieces_in_flight_max = self.pieces_in_flight_max.max(asked);
            }
            let a = auth(Principal::Replica(to));
            match verify_message(&self.cfg, a.as_ref(), &m) {
                Ok(()) => self.event(to, Event::Message(m)),
                Err(r) => {
                    self.replicas[to as usize].note_rejected(r.reason);
                    if let Some((from, view)) = r.blame {
                        self.event(to, Event::ProvenFault { from, view });
                    }
                }
            }
        }
    }

    fn submit(&mut self, r: SignedRequest) {
        for i in 0..self.cfg.n {
            let a = auth(Principal::Replica(i));
            assert!(verify_request(&self.cfg, a.as_ref(), &r).is_ok());
            self.event(i, Event::Request(r.clone()));
        }
        self.deliver_all();
    }

    /// Advance time to `t`, ticking every replica at its deadlines.
    fn run_until(&mut self, t: u64) {
        loop {
            self.deliver_all();
            let next = (0..self.cfg.n)
                .filter(|i| self.up[*i as usize])
                .filter_map(|i| self.replicas[i as usize].next_deadline())
                .min();
            match next {
                Some(d) if d <= t => {
                    self.now = self.now.max(d);
                    for i in 0..self.cfg.n {
                        if self.replicas[i as usize]
                            .next_deadline()
                            .is_some_and(|d| d <= self.now)
                        {
                            self.event(i, Event::Tick);
                        }
                    }
                }
                _ => break,
            }
        }
        self.now = t;
    }

    fn replies_for(&self, client: u64, req_seq: u64) -> usize {
        self.replies
            .iter()
            .filter(|r| r.client == client && r.req_seq == req_seq)
            .count()
    }

    fn assert_agreement(&self) {
        let mut by_seq: BTreeMap<u64, &Vec<Vec<u8>>> = BTreeMap::new();
        for (i, log) in self.executed.iter().enumerate() {
            if !self.up[i] {
                continue;
            }
            for (seq, reqs) in log {
                if let Some(prev) = by_seq.insert(*seq, reqs) {
                    assert_eq!(prev, reqs, "disagreement at seq {seq}");
                }
            }
        }
    }
}

#[test]
fn one_request_commits_everywhere() {
    for (n, model) in [
        (4, FaultModel::Byzantine),
        (7, FaultModel::Byzantine),
        (3, FaultModel::Crash),
    ] {
        let mut c = Cluster::new(n, model);
        c.submit(request(1, 1, b"a"));
        assert_eq!(c.replies_for(1, 1), n as usize, "{model} n={n}");
        for r in &c.replicas {
            assert_eq!(r.last_executed(), 1);
        }
        c.assert_agreement();
    }
}

/// A crash-mode leader's batch leaves its clients' authenticators out: its followers trust its
/// check and never look at them (ADR 021). A Byzantine leader's batch keeps them for every
/// replica to check. (`one_request_commits_everywhere` runs relayed batches through the
/// followers' checks.)
#[test]
fn crash_mode_leaders_relay_requests_without_authenticators() {
    for (n, model, relays) in [
        (3, FaultModel::Crash, true),
        (4, FaultModel::Byzantine, false),
    ] {
        let mut r = Replica::new(config(n, model), 0, auth(Principal::Replica(0))).unwrap();
        let req = request(1, 1, b"x");
        let mut out = Vec::new();
        r.handle(0, Event::Request(req.clone()), &mut out);
        let batch = out
            .iter()
            .find_map(|a| match a {
                Action::Broadcast {
                    message: Message::PrePrepare(pp),
                } => Some(pp.body.batch.clone()),
                _ => None,
            })
            .expect("the leader proposes");
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].request, req.request);
        assert_eq!(batch[0].auth == RequestAuth::Relayed, relays, "{model}");
    }
}

/// A replica changing to a view that its peers already entered (it missed the NEW-VIEW) asks
/// each peer it hears from in that view, once, by re-sending its VIEW-CHANGE, which a peer in
/// the view answers with the NEW-VIEW.
#[test]
fn a_replica_that_missed_the_new_view_asks_the_peers_already_in_it() {
    let cfg = config(4, FaultModel::Byzantine);
    let mut r = Replica::new(cfg, 0, auth(Principal::Replica(0))).unwrap();
    let mut out = Vec::new();
    r.start_view_change(1);
    let own = r.latest_vc[&0].clone();
    assert_eq!(own.body.new_view, 1);
    r.out.clear();
    let vote = Vote {
        view: 1,
        seq: 1,
        batch_digest: Default::default(),
    };
    let asked = |out: &[Action], to: ReplicaId| {
        out.iter()
            .filter(|a| {
                matches!(a, Action::Send { to: t, message: Message::ViewChange(vc) }
                    if *t == to && *vc == own)
            })
            .count()
    };
    let prepare = |from| Event::Message(Message::Prepare(signed_vote(from, Phase::Prepare, vote)));
    r.handle(0, prepare(2), &mut out);
    assert_eq!(asked(&out, 2), 1, "{out:?}");
    r.handle(0, prepare(2), &mut out);
    r.handle(0, Event::Message(mac_commit(2, vote)), &mut out);
    assert_eq!(asked(&out, 2), 1, "once per peer and view");
    r.handle(0, Event::Message(mac_commit(3, vote)), &mut out);
    assert_eq!(asked(&out, 3), 1);
    // Messages of a later view than the one it is changing to say nothing about its NEW-VIEW.
    let later = Vote { view: 2, ..vote };
    out.clear();
    r.handle(0, Event::Message(mac_commit(2, later)), &mut out);
    assert!(
        !out.iter().any(|a| matches!(a, Action::Send { .. })),
        "{out:?}"
    );
}

#[test]
fn follower_prepares_a_valid_pre_prepare() {
    let cfg = config(4, FaultModel::Byzantine);
    let mut r = Replica::new(cfg, 1, auth(Principal::Replica(1))).unwrap();
    let batch = vec![request(1, 1, b"x")];
    let pp = leader_pre_prepare(batch);
    let body = pp.body.clone();
    let mut out = Vec::new();
    r.handle(0, Event::Message(Message::PrePrepare(pp)), &mut out);
    let vote = Vote {
        view: 0,
        seq: 1,
        batch_digest: body.batch_digest,
    };
    let me = SimAuth::new(Principal::Replica(1), SEED);
    let prepare = Signed {
        from: 1,
        body: vote,
        sig: me.sign(&vote_signing_bytes(Phase::Prepare, &vote)),
    };
    assert_eq!(
        out,
        vec![Action::Broadcast {
            message: Message::Prepare(prepare)
        }]
    );
}

/// The vote for `pp`'s proposal.
fn vote_for(pp: &Signed<PrePrepare>) -> Vote {
    Vote {
        view: pp.body.view,
        seq: pp.body.seq,
        batch_digest: pp.body.batch_digest,
    }
}

/// A vote signed by replica `from`.
fn signed_vote(from: ReplicaId, phase: Phase, vote: Vote) -> Signed<Vote> {
    let signer = SimAuth::new(Principal::Replica(from), SEED);
    Signed {
        from,
        body: vote,
        sig: signer.sign(&vote_signing_bytes(phase, &vote)),
    }
}

/// `from`'s COMMIT for `vote` in a cluster of four, with its MAC for every replica.
fn mac_commit(from: ReplicaId, vote: Vote) -> Message {
    let signer = SimAuth::new(Principal::Replica(from), SEED);
    let bytes = crate::message::commit_mac_bytes(from, &vote);
    Message::Commit(crate::message::Authenticated {
        from,
        body: vote,
        macs: (0..4)
            .flat_map(|to| signer.mac(Principal::Replica(to), &bytes))
            .collect(),
    })
}

#[test]
fn settled_votes_follow_prepared_and_committed_slots_and_change_nothing() {
    let cfg = config(4, FaultModel::Byzantine);
    let mut r = Replica::new(cfg, 1, auth(Principal::Replica(1))).unwrap();
    let pp = leader_pre_prepare(vec![request(1, 1, b"x")]);
    let vote = vote_for(&pp);
    let mut out = Vec::new();
    r.handle(0, Event::Message(Message::PrePrepare(pp)), &mut out);
    let none = SettledVotes::default();
    assert_eq!(r.settled_votes(), none);
    let prepare = |from| Message::Prepare(signed_vote(from, Phase::Prepare, vote));
    let commit = |from| mac_commit(from, vote);
    // Prepared: the pre-prepare and 2f = 2 prepares, this replica's own and one more.
    r.handle(0, Event::Message(prepare(2)), &mut out);
    let settled = r.settled_votes();
    assert_eq!((settled.prepared, settled.committed), (1, 0));
    assert!(settled.covers(&prepare(3)) && !settled.covers(&commit(3)));
    // Another view's votes and a later slot's are not covered.
    let other_view = Vote { view: 1, ..vote };
    assert!(!settled.covers(&Message::Prepare(signed_vote(
        2,
        Phase::Prepare,
        other_view
    ))));
    let later = Vote { seq: 2, ..vote };
    assert!(!settled.covers(&Message::Prepare(signed_vote(2, Phase::Prepare, later))));
    // The vote the runtime would drop changes nothing.
    out.clear();
    r.handle(0, Event::Message(prepare(3)), &mut out);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(r.settled_votes(), settled);

    // Committed: 2f + 1 = 3 commits, this replica's own (sent once prepared) and two more.
    r.handle(0, Event::Message(commit(2)), &mut out);
    assert_eq!(r.settled_votes(), settled, "two commits of three");
    r.handle(0, Event::Message(commit(3)), &mut out);
    assert!(
        out.iter()
            .any(|a| matches!(a, Action::Execute { seq: 1, .. })),
        "{out:?}"
    );
    let settled = r.settled_votes();
    assert_eq!((settled.prepared, settled.committed), (1, 1));
    assert!(settled.covers(&commit(0)));
    out.clear();
    r.handle(0, Event::Message(commit(0)), &mut out);
    assert!(out.is_empty(), "{out:?}");
    // Executed: commits stay settled, prepares do not (a new view's leader may re-propose
    // the slot, and this replica must prepare it again to send its commit).
    r.handle(
        0,
        Event::Executed {
            seq: 1,
            results: vec![b"ok".to_vec()],
            snapshot: None,
        },
        &mut out,
    );
    let settled = r.settled_votes();
    assert_eq!(settled.executed, 1);
    assert!(settled.covers(&commit(0)));
    assert!(!settled.covers(&prepare(3)));
}

/// Replica 1 of four (Byzantine) accepts `pp` from the leader and sees it prepared by replica 2
/// and committed by replicas 2 and 3: with its own votes, a quorum of each.
fn commit_at_replica_1(r: &mut Replica, pp: Signed<PrePrepare>, out: &mut Vec<Action>) {
    let vote = vote_for(&pp);
    r.handle(0, Event::Message(Message::PrePrepare(pp)), out);
    r.handle(
        0,
        Event::Message(Message::Prepare(signed_vote(2, Phase::Prepare, vote))),
        out,
    );
    for from in [2, 3] {
        r.handle(0, Event::Message(mac_commit(from, vote)), out);
    }
}

#[test]
fn a_request_twice_in_a_batch_executes_once() {
    // The engine is handed the batch directly, as if verification had let it through.
    let cfg = config(4, FaultModel::Byzantine);
    let mut r = Replica::new(cfg, 1, auth(Principal::Replica(1))).unwrap();
    let pp = leader_pre_prepare(vec![
        request(1, 1, b"x"),
        request(2, 1, b"y"),
        request(1, 1, b"x"),
    ]);
    let mut out = Vec::new();
    commit_at_replica_1(&mut r, pp, &mut out);
    let executed: Vec<(u64, u64)> = out
        .iter()
        .find_map(|a| match a {
            Action::Execute { requests, .. } => {
                Some(requests.iter().map(|q| (q.client, q.req_seq)).collect())
            }
            _ => None,
        })
        .expect("the batch executes");
    assert_eq!(executed, [(1, 1), (2, 1)]);
}

/// What a batch executes is picked out of the shared batch by position: a request an earlier
/// batch executed is skipped, and the ones after it still run, each with its own operation.
#[test]
fn a_batch_runs_exactly_its_requests_new_to_the_client_table() {
    let cfg = config(4, FaultModel::Byzantine);
    let mut r = Replica::new(cfg, 1, auth(Principal::Replica(1))).unwrap();
    let batches = [
        vec![request(1, 1, b"a"), request(2, 1, b"b")],
        vec![
            request(1, 1, b"a"),
            request(3, 1, b"c"),
            request(2, 1, b"b"),
            request(2, 2, b"d"),
        ],
    ];
    let mut out = Vec::new();
    let mut ran = Vec::new();
    for (seq, batch) in (1u64..).zip(batches) {
        commit_at_replica_1(&mut r, leader_pre_prepare_at(seq, batch), &mut out);
        let (count, ops): (usize, Vec<(u64, u64, Vec<u8>)>) = out
            .drain(..)
            .find_map(|a| match a {
                Action::Execute { requests, .. } => Some((
                    requests.len(),
                    requests
                        .iter()
                        .map(|q| (q.client, q.req_seq, q.op.to_vec()))
                        .collect(),
                )),
                _ => None,
            })
            .expect("the batch executes");
        assert_eq!(count, ops.len());
        let results = vec![Vec::new(); count];
        r.handle(
            0,
            Event::Executed {
                seq,
                results,
                snapshot: None,
            },
            &mut out,
        );
        ran.push(ops);
    }
    assert_eq!(
        ran,
        [
            vec![(1, 1, b"a".to_vec()), (2, 1, b"b".to_vec())],
            vec![(3, 1, b"c".to_vec()), (2, 2, b"d".to_vec())],
        ]
    );
}

#[test]
fn crash_mode_follower_commits_directly() {
    let cfg = config(3, FaultModel::Crash);
    let mut r = Replica::new(cfg, 2, auth(Principal::Replica(2))).unwrap();
    let batch = vec![request(1, 1, b"x")];
    let pp = leader_pre_prepare(batch);
    let mut out = Vec::new();
    r.handle(0, Event::Message(Message::PrePrepare(pp)), &mut out);
    assert_eq!(out.len(), 1);
    assert!(
        matches!(&out[0], Action::Broadcast { message: Message::Commit(v) } if v.body.seq == 1)
    );
}

#[test]
fn leader_batches_adaptively_within_the_pipeline() {
    let proposals = |fill: u32| {
        let mut c = Cluster::new(4, FaultModel::Byzantine);
        c.replicas[0] = Replica::new(
            Config {
                pipeline_fill: fill,
                ..c.cfg.clone()
            },
            0,
            auth(Principal::Replica(0)),
        )
        .unwrap();
        // Hold the network: requests arrive while batches are in flight (W=2).
        let mut out = Vec::new();
        for s in 1..=6 {
            c.replicas[0].handle(0, Event::Request(request(1, s, b"op")), &mut out);
        }
        out.iter()
            .filter_map(|a| match a {
                Action::Broadcast {
                    message: Message::PrePrepare(p),
                } => Some(p.body.batch.len()),
                _ => None,
            })
            .collect::<Vec<usize>>()
    };
    // Eager: the first request goes out alone at once, the second fills the second slot;
    // the rest wait for a free slot and will form one batch.
    assert_eq!(proposals(0), vec![1, 1]);
    // Adaptive: with one batch in flight, a second opens once 3 requests wait.
    assert_eq!(proposals(3), vec![1, 3]);
    // The default waits for more than 6 with a batch in flight: the pipeline stays at one.
    assert_eq!(
        proposals(Config::new(4, 1, FaultModel::Byzantine).pipeline_fill),
        vec![1]
    );
}

#[test]
fn retransmission_gets_cached_reply_not_a_second_execution() {
    let mut c = Cluster::new(4, FaultModel::Byzantine);
    c.submit(request(5, 1, b"inc"));
    let before = c.replicas[2].stats().executed_requests;
    c.replies.clear();
    c.submit(request(5, 1, b"inc"));
    assert_eq!(c.replicas[2].stats().executed_requests, before);
    assert_eq!(
        c.replies_for(5, 1),
        4,
        "every replica answers from its cache"
    );
    assert!(c.replies.iter().all(|r| r.result == b"inc"));
}

#[test]
fn checkpoints_become_stable_and_collect_garbage() {
    let mut c = Cluster::new(4, FaultModel::Byzantine);
    for s in 1..=10 {
        c.submit(request(1, s, b"w"));
    }
    for r in &c.replicas {
        assert_eq!(r.last_executed(), 10);
        assert_eq!(r.stable_checkpoint(), 8);
        assert!(r.slots.keys().all(|s| *s > 8));
        // What lies above the checkpoint stays: a view change must carry its certificates.
        for s in [9, 10] {
            assert!(
                r.slots
                    .get(&s)
                    .is_some_and(|slot| slot.prepared_cert.is_some()),
                "slot {s}"
            );
        }
        assert_eq!(r.checkpoint_voters(8), Vec::<ReplicaId>::new());
    }
}

#[test]
fn silent_leader_is_replaced_and_requests_complete() {
    for (n, model) in [
        (4, FaultModel::Byzantine),
        (3, FaultModel::Crash),
        (5, FaultModel::Crash),
    ] {
        let mut c = Cluster::new(n, model);
        c.submit(request(1, 1, b"a"));
        c.up[0] = false;
        c.submit(request(1, 2, b"b"));
        c.run_until(2_000);
        for i in 1..n as usize {
            assert_eq!(c.replicas[i].view(), 1, "{model} n={n} replica {i}");
            assert_eq!(c.replicas[i].status(), Status::Normal);
            assert_eq!(
                c.replicas[i].last_executed(),
                2,
                "{model} n={n} replica {i}"
            );
        }
        c.assert_agreement();
    }
}

#[test]
fn prepared_batch_survives_view_change() {
    // The leader's batch prepares at the followers but commits nowhere; then the leader dies.
    let mut c = Cluster::new(4, FaultModel::Byzantine);
    let mut out = Vec::new();
    c.replicas[0].handle(0, Event::Request(request(1, 1, b"keep")), &mut out);
    let Action::Broadcast { message } = &out[0] else {
        panic!()
    };
    c.up[0] = false;
    // Deliver the pre-prepare, then the prepares, dropping commits.
    for to in 1..4 {
        c.event(to, Event::Message(message.clone()));
    }
    let prepares: Vec<_> = c
        .net
        .drain(..)
        .filter(|(_, m)| matches!(m, Message::Prepare(_)))
        .collect();
    for (to, m) in prepares {
        c.event(to, Event::Message(m));
    }
    c.net.retain(|(_, m)| !matches!(m, Message::Commit(_)));
    for i in 1..4 {
        assert!(c.replicas[i].slots[&1].prepared_cert.is_some());
        assert_eq!(c.replicas[i].last_executed(), 0);
    }
    for i in 1..4 {
        c.event(i, Event::Request(request(1, 1, b"keep")));
    }
    c.run_until(2_000);
    for i in 1..4 {
        assert_eq!(c.replicas[i].view(), 1);
        assert_eq!(
            c.executed[i].get(&1),
            Some(&vec![b"keep".to_vec()]),
            "replica {i}"
        );
    }
}

#[test]
fn equivocating_leader_is_replaced() {
    let mut c = Cluster::new(4, FaultModel::Byzantine);
    c.up[0] = false;
    for (i, op) in [(1u32, b"x"), (2, b"y"), (3, b"y")] {
        let batch = vec![request(1, 1, op)];
        let pp = leader_pre_prepare(batch);
        c.event(i, Event::Message(Message::PrePrepare(pp.clone())));
        if i == 1 {
            // Replica 1 also sees the other version: proof of equivocation.
            let batch = vec![request(1, 1, b"y")];
            let pp2 = leader_pre_prepare(batch);
            c.event(i, Event::Message(Message::PrePrepare(pp2)));
        }
    }
    assert_eq!(c.replicas[1].stats().rejected.get("conflicting"), Some(&1));
    assert_eq!(c.replicas[1].status(), Status::ViewChanging);
    // The client's request reached every replica too, so the others time out on it.
    for i in 1..4 {
        c.event(i, Event::Request(request(1, 1, b"y")));
    }
    c.run_until(3_000);
    for i in 1..4 {
        assert_eq!(c.replicas[i].status(), Status::Normal);
        assert!(c.replicas[i].view() >= 1);
    }
    c.assert_agreement();
}

#[test]
fn lagging_replica_catches_up_by_state_transfer() {
    let mut c = Cluster::new(4, FaultModel::Byzantine);
    c.up[3] = false;
    for s in 1..=13 {
        c.submit(request(1, s, b"w"));
    }
    assert_eq!(c.replicas[0].stable_checkpoint(), 12);
    assert_eq!(c.replicas[0].known_committed(), 13);
    assert_eq!(c.replicas[3].known_committed(), 0, "it heard of nothing");
    c.up[3] = true;
    c.submit(request(1, 14, b"w"));
    c.run_until(1_000);
    assert_eq!(c.replicas[3].last_executed(), 14);
    assert_eq!(c.replicas[3].known_committed(), 14);
    assert!(!c.replicas[3].transferring_state());
    assert!(c.replicas[3].stats().snapshots_installed >= 1);
    assert_eq!(
        c.services[3].0, c.services[0].0,
        "same state after transfer"
    );
}

/// A FETCH-REPLY from `from` carrying `batches` as committed.
fn fetch_reply(from: ReplicaId, batches: &[&PrePrepare]) -> Event {
    signed_fetch_reply(
        from,
        batches
            .iter()
            .map(|pp| crate::message::CommittedBatch {
                pre_prepare: (*pp).clone(),
            })
            .collect(),
        Vec::new(),
    )
}

/// A FETCH-REPLY from `from` carrying only the digests of `batches`.
fn digest_reply(from: ReplicaId, batches: &[&PrePrepare]) -> Event {
    signed_fetch_reply(
        from,
        Vec::new(),
        batches
            .iter()
            .map(|pp| crate::message::CommittedDigest {
                seq: pp.seq,
                batch_digest: pp.batch_digest,
            })
            .collect(),
    )
}

fn signed_fetch_reply(
    from: ReplicaId,
    batches: Vec<crate::message::CommittedBatch>,
    digests: Vec<crate::message::CommittedDigest>,
) -> Event {
    let body = crate::message::FetchReply {
        view: 0,
        nonce: 0,
        snapshot: None,
        batches,
        digests,
    };
    let sig = SimAuth::new(Principal::Replica(from), SEED).sign(&body.signing_bytes());
    Event::Message(Message::FetchReply(Signed { from, body, sig }))
}

fn executed_seqs(out: &mut Vec<Action>) -> Vec<u64> {
    out.drain(..)
        .filter_map(|a| match a {
            Action::Execute { seq, .. } => Some(seq),
            _ => None,
        })
        .collect()
}

/// The peers `out` sends a FETCH to, sorted.
fn fetched_from(out: &mut Vec<Action>) -> Vec<ReplicaId> {
    fetches(out).into_iter().map(|(peer, _)| peer).collect()
}

/// Replica 1 of n = 4 (f = 1), behind by slot 1, having asked for it; the batch committed
/// there and one that was not.
fn lagging_replica() -> (Replica, u64, PrePrepare, PrePrepare) {
    let cfg = config(4, FaultModel::Byzantine);
    let timeout = cfg.fetch_timeout_ms;
    let mut r = Replica::new(cfg, 1, auth(Principal::Replica(1))).unwrap();
    let real = leader_pre_prepare(vec![request(1, 1, b"real")]).body;
    let lie = leader_pre_prepare(vec![request(1, 1, b"lie")]).body;
    r.note_progress_hint(1);
    r.start_fetch();
    (r, timeout, real, lie)
}

#[test]
fn a_fetched_batch_is_accepted_once_f_plus_1_peers_sent_it() {
    // n = 4, f = 1: two peers must agree. Replica 3 lies about slot 1.
    let (mut r, timeout, real, lie) = lagging_replica();
    let mut out = Vec::new();
    assert_eq!(fetched_from(&mut r.out), [2, 3]);
    r.handle(0, fetch_reply(0, &[&real]), &mut out);
    assert!(executed_seqs(&mut out).is_empty());
    assert!(
        r.vouched.is_empty(),
        "replica 0 was not asked: its offer is not kept"
    );
    r.handle(0, fetch_reply(3, &[&lie]), &mut out);
    assert!(
        executed_seqs(&mut out).is_empty(),
        "one peer's word is not enough"
    );
    r.handle(0, fetch_reply(3, &[&lie]), &mut out);
    assert!(
        executed_seqs(&mut out).is_empty(),
        "nor the same peer's twice"
    );
    r.handle(0, fetch_reply(2, &[&real]), &mut out);
    assert!(
        executed_seqs(&mut out).is_empty(),
        "two peers that disagree"
    );
    // No agreement in time: the next round starts after the batch sender (replica 3 for the
    // batches, replica 0 for digests); replica 2's earlier word is kept.
    r.handle(timeout, Event::Tick, &mut out);
    assert_eq!(fetched_from(&mut out), [0, 3]);
    r.handle(timeout, fetch_reply(0, &[&real]), &mut out);
    assert_eq!(
        executed_seqs(&mut out),
        [1],
        "two peers agree: one is correct"
    );
    assert_eq!(r.stats().batches_fetched, 1);
    let committed = r.slots.get(&1).and_then(|s| s.committed.clone()).unwrap();
    assert_eq!(committed.pre_prepare, real);
    // Nothing of the lie is kept once the slot executed.
    r.handle(
        timeout,
        Event::Executed {
            seq: 1,
            results: vec![vec![]],
            snapshot: None,
        },
        &mut out,
    );
    assert!(r.vouched.is_empty());
}

/// The FETCHes in `out`: (peer, digests only), sorted by peer.
fn fetches(out: &mut Vec<Action>) -> Vec<(ReplicaId, bool)> {
    let mut asked: Vec<(ReplicaId, bool)> = out
        .drain(..)
        .filter_map(|a| match a {
            Action::Send {
                to,
                message: Message::Fetch(f),
            } => Some((to, f.body.digests_only)),
            _ => None,
        })
        .collect();
    asked.sort_unstable();
    asked
}

#[test]
fn one_peer_sends_the_batches_and_the_others_their_digests() {
    // n = 4, f = 1: replica 1 asks replica 2 for batches and replica 3 for digests.
    let (mut r, timeout, real, lie) = lagging_replica();
    let mut out = Vec::new();
    assert_eq!(fetches(&mut r.out), [(2, false), (3, true)]);
    // Digests alone never make a batch, however many agree.
    r.handle(0, digest_reply(3, &[&real]), &mut out);
    r.handle(0, digest_reply(2, &[&real]), &mut out);
    assert!(executed_seqs(&mut out).is_empty(), "no peer sent the batch");
    // A batch whose digest no other peer vouched for is not accepted.
    r.handle(0, fetch_reply(2, &[&lie]), &mut out);
    assert!(
        executed_seqs(&mut out).is_empty(),
        "replica 3 vouched for another batch"
    );
    // Replica 2 repeating the digest of the batch it sent keeps the batch.
    r.handle(0, digest_reply(2, &[&lie]), &mut out);
    assert!(r.vouched[&1][&2].batch.is_some());
    assert!(executed_seqs(&mut out).is_empty());
    // The batch from one peer and its digest from another: accepted, and the same peers are
    // asked for what follows (the reply helped).
    r.handle(0, fetch_reply(2, &[&real]), &mut out);
    let committed = r.slots.get(&1).and_then(|s| s.committed.clone()).unwrap();
    assert_eq!(committed.pre_prepare, real);
    assert_eq!(fetches(&mut out.clone()), [(2, false), (3, true)]);
    assert_eq!(executed_seqs(&mut out), [1]);
    // A round that does not help in time: the next starts at the peer after the batch sender.
    r.note_progress_hint(2);
    r.handle(timeout, Event::Tick, &mut out);
    assert_eq!(fetches(&mut out), [(0, true), (3, false)]);
}

#[test]
fn every_peer_takes_its_turn_sending_the_batches() {
    // n = 7, f = 2: rounds that time out move the batch sender one peer on (skipping the
    // replica itself), so f faulty peers cannot keep that role; moving by whole groups of
    // f + 1 would ask only replicas 1 and 4 for batches, forever.
    let cfg = config(7, FaultModel::Byzantine);
    let timeout = cfg.fetch_timeout_ms;
    let mut r = Replica::new(cfg, 0, auth(Principal::Replica(0))).unwrap();
    r.note_progress_hint(1);
    r.start_fetch();
    let mut out = std::mem::take(&mut r.out);
    let mut senders = Vec::new();
    for round in 1..=7 {
        let asked = fetches(&mut out);
        assert_eq!(asked.len(), 3, "round {round}: f + 1 peers");
        senders.extend(asked.iter().filter(|(_, d)| !d).map(|(p, _)| *p));
        r.handle(round * timeout, Event::Tick, &mut out);
    }
    assert_eq!(senders, [1, 2, 3, 4, 5, 6, 1]);
}

#[test]
fn a_peer_asked_for_digests_sends_digests_only() {
    let mut r = Replica::new(
        config(4, FaultModel::Byzantine),
        1,
        auth(Principal::Replica(1)),
    )
    .unwrap();
    let batches: Vec<PrePrepare> = (1..=3)
        .map(|seq| {
            let mut pp = leader_pre_prepare(vec![request(1, seq, b"x")]).body;
            pp.seq = seq;
            pp
        })
        .collect();
    for pp in &batches {
        r.slots.entry(pp.seq).or_default().committed = Some(crate::message::CommittedBatch {
            pre_prepare: pp.clone(),
        });
    }
    let mut replies = Vec::new();
    for digests_only in [true, false] {
        let body = crate::message::Fetch {
            executed: 1,
            view: 0,
            nonce: 1,
            digests_only,
        };
        r.on_fetch(Signed {
            from: 2,
            body,
            sig: Vec::new(),
        });
        let mut out = Vec::new();
        r.release(&mut out);
        replies.extend(out.into_iter().filter_map(|a| match a {
            Action::Send {
                message: Message::FetchReply(reply),
                ..
            } => Some(reply.body),
            _ => None,
        }));
    }
    let [digests, full] = &replies[..] else {
        panic!("two replies: {replies:?}");
    };
    assert!(digests.batches.is_empty());
    assert_eq!(
        digests.digests,
        batches[1..]
            .iter()
            .map(|pp| crate::message::CommittedDigest {
                seq: pp.seq,
                batch_digest: pp.batch_digest
            })
            .collect::<Vec<_>>()
    );
    assert!(full.digests.is_empty());
    assert_eq!(
        full.batches
            .iter()
            .map(|b| b.pre_prepare.clone())
            .collect::<Vec<_>>(),
        batches[1..]
    );
}

#[test]
fn a_fetched_batch_beyond_one_reply_is_not_kept() {
    let mut cfg = config(4, FaultModel::Byzantine);
    cfg.fetch_batches_max = 4;
    let mut r = Replica::new(cfg, 1, auth(Principal::Replica(1))).unwrap();
    r.note_progress_hint(9);
    r.start_fetch();
    let mut out = Vec::new();
    let mut far = leader_pre_prepare(vec![request(1, 1, b"x")]).body;
    far.seq = 5;
    r.handle(0, fetch_reply(2, &[&far]), &mut out);
    assert!(r.vouched.is_empty(), "slot 5 is beyond executed (0) + 4");
    far.seq = 4;
    r.handle(0, fetch_reply(2, &[&far]), &mut out);
    assert_eq!(r.vouched.len(), 1);
}

#[test]
fn crash_mode_accepts_a_fetched_batch_from_one_peer() {
    let mut r = Replica::new(config(3, FaultModel::Crash), 1, auth(Principal::Replica(1))).unwrap();
    let pp = leader_pre_prepare(vec![request(1, 1, b"x")]).body;
    let mut out = Vec::new();
    r.note_progress_hint(1);
    r.start_fetch();
    assert_eq!(fetched_from(&mut r.out), [2]);
    r.handle(0, fetch_reply(2, &[&pp]), &mut out);
    assert_eq!(executed_seqs(&mut out), [1]);
}

#[test]
fn a_lagging_replica_asks_f_plus_1_peers_at_once() {
    for (n, model, asked) in [
        (4, FaultModel::Byzantine, vec![2, 3]),
        (7, FaultModel::Byzantine, vec![2, 3, 4]),
        (3, FaultModel::Crash, vec![2]),
    ] {
        let mut r = Replica::new(config(n, model), 1, auth(Principal::Replica(1))).unwrap();
        r.note_progress_hint(5);
        r.start_fetch();
        assert_eq!(fetched_from(&mut r.out), asked, "n={n} {model:?}");
    }
}

#[test]
fn restarted_replica_recovers_without_voting() {
    // n=7 (f=2): a recovering replica counts as faulty until a later view change, so the test
    // leaves room for a second fault (the leader) that forces one.
    let mut c = Cluster::new(7, FaultModel::Byzantine);
    for s in 1..=9 {
        c.submit(request(1, s, b"w"));
    }
    c.replicas[2] =
        Replica::restarted(c.cfg.clone(), 2, auth(Principal::Replica(2)), c.now).unwrap();
    c.services[2] = Log::default();
    c.executed[2].clear();
    c.run_until(500);
    c.submit(request(1, 10, b"w"));
    c.run_until(1_000);
    assert_eq!(c.replicas[2].status(), Status::Recovering);
    assert_eq!(c.replicas[2].last_executed(), 10);
    assert_eq!(c.services[2].0, c.services[0].0);
    // A later view change (the leader fails) ends recovery.
    c.up[0] = false;
    c.submit(request(1, 11, b"w"));
    c.run_until(5_000);
    assert_eq!(c.replicas[2].status(), Status::Normal);
    assert_eq!(c.replicas[2].last_executed(), 11);
    c.assert_agreement();
}

#[test]
fn client_bounds_are_enforced() {
    let mut cfg = config(4, FaultModel::Byzantine);
    cfg.client_pending_max = 2;
    let mut r = Replica::new(cfg, 1, auth(Principal::Replica(1))).unwrap();
    let mut out = Vec::new();
    // Twice the window W is kept per client (a lagging replica still holds the last window).
    for s in 1..=5 {
        r.handle(0, Event::Request(request(9, s, b"x")), &mut out);
    }
    assert_eq!(r.pending_requests(), 4);
    assert_eq!(r.stats().rejected.get("client_over_limit"), Some(&1));
    // A request far ahead (a restarted client starting from its clock) is admitted.
    r.handle(0, Event::Request(request(8, 1 << 60, b"x")), &mut out);
    assert_eq!(r.pending_requests(), 5);
}

#[test]
fn votes_are_counted_once_and_old_views_rejected() {
    let mut c = Cluster::new(4, FaultModel::Byzantine);
    c.submit(request(1, 1, b"a"));
    let vote = Vote {
        view: 0,
        seq: 1,
        batch_digest: Default::default(),
    };
    let before = c.replicas[1]
        .stats()
        .rejected
        .get("conflicting")
        .copied()
        .unwrap_or(0);
    c.event(1, Event::Message(mac_commit(2, vote)));
    assert_eq!(
        c.replicas[1].stats().rejected.get("conflicting"),
        Some(&(before + 1))
    );
}

#[test]
fn forged_and_garbage_messages_are_rejected_before_the_engine() {
    let cfg = config(4, FaultModel::Byzantine);
    let a = auth(Principal::Replica(1));
    let vote = Vote {
        view: 0,
        seq: 1,
        batch_digest: Default::default(),
    };
    let forged = Message::Prepare(Signed {
        from: 2,
        body: vote,
        sig: vec![0; 32],
    });
    assert_eq!(
        verify_message(&cfg, a.as_ref(), &forged)
            .unwrap_err()
            .reason,
        crate::verify::Reject::BadSignature
    );
    let out_of_range = Message::Prepare(Signed {
        from: 9,
        body: vote,
        sig: vec![],
    });
    assert_eq!(
        verify_message(&cfg, a.as_ref(), &out_of_range)
            .unwrap_err()
            .reason,
        crate::verify::Reject::UnknownSender
    );
    // A pre-prepare whose batch holds a badly signed request blames the leader.
    let mut bad = request(1, 1, b"x");
    bad.auth.edit_bytes(|b| b[0] ^= 1);
    let batch = vec![bad];
    let pp = Message::PrePrepare(leader_pre_prepare(batch));
    let rej = verify_message(&cfg, a.as_ref(), &pp).unwrap_err();
    assert_eq!(rej.blame, Some((0, 0)));
    // So does one that relays a request without its client's authenticator: only crash mode
    // takes a leader's word for a client (ADR 021).
    let mut relayed = request(1, 1, b"x");
    relayed.auth = RequestAuth::Relayed;
    let pp = Message::PrePrepare(leader_pre_prepare(vec![relayed.clone()]));
    let rej = verify_message(&cfg, a.as_ref(), &pp).unwrap_err();
    assert_eq!(rej.reason, crate::verify::Reject::BadClientAuth);
    assert_eq!(rej.blame, Some((0, 0)));
    assert_eq!(
        crate::verify::verify_request(&cfg, a.as_ref(), &relayed),
        Err(crate::verify::Reject::BadClientAuth)
    );
}

#[test]
fn crash_mode_trusts_replica_signatures_but_checks_structure() {
    let cfg = config(3, FaultModel::Crash);
    let a = auth(Principal::Replica(1));
    let vote = Vote {
        view: 0,
        seq: 1,
        batch_digest: Default::default(),
    };
    // Replicas are trusted: a vote's authenticator is not checked (the link names the
    // sender), and a COMMIT carries none.
    let unsigned = Message::Commit(crate::message::Authenticated {
        from: 2,
        body: vote,
        macs: vec![],
    });
    assert!(verify_message(&cfg, a.as_ref(), &unsigned).is_ok());
    // Nor a client's authenticator inside the leader's batch: the leader checked it.
    let mut relayed = request(1, 1, b"x");
    relayed.auth.edit_bytes(|b| b[0] ^= 1);
    let pp = Message::PrePrepare(leader_pre_prepare(vec![relayed]));
    assert!(verify_message(&cfg, a.as_ref(), &pp).is_ok());
    // Which is why the leader leaves it out (ADR 021); but a client must always bring one.
    let mut bare = request(1, 1, b"x");
    bare.auth = RequestAuth::Relayed;
    let left_out = Message::PrePrepare(leader_pre_prepare(vec![bare.clone()]));
    assert!(verify_message(&cfg, a.as_ref(), &left_out).is_ok());
    assert_eq!(
        crate::verify::verify_request(&cfg, a.as_ref(), &bare),
        Err(crate::verify::Reject::BadClientAuth)
    );
    // Structure still is: senders in range, leaders, digests.
    let out_of_range = Message::Commit(crate::message::Authenticated {
        from: 3,
        body: vote,
        macs: vec![],
    });
    assert_eq!(
        verify_message(&cfg, a.as_ref(), &out_of_range)
            .unwrap_err()
            .reason,
        crate::verify::Reject::UnknownSender
    );
    let Message::PrePrepare(mut not_leader) = pp.clone() else {
        unreachable!()
    };
    not_leader.from = 2;
    assert_eq!(
        verify_message(&cfg, a.as_ref(), &Message::PrePrepare(not_leader))
            .unwrap_err()
            .reason,
        crate::verify::Reject::NotLeader
    );
    let Message::PrePrepare(mut tampered) = pp else {
        unreachable!()
    };
    std::sync::Arc::make_mut(&mut tampered.body.batch)[0]
        .request
        .op = Bytes::from_static(b"y");
    assert_eq!(
        verify_message(&cfg, a.as_ref(), &Message::PrePrepare(tampered))
            .unwrap_err()
            .reason,
        crate::verify::Reject::DigestMismatch
    );
}

/// A request of `client` with a MAC vector for `n` replicas computed with `key`'s keys, its
/// entries for `corrupt` flipped.
fn mac_request(key: u64, client: u64, op: &[u8], n: u32, corrupt: &[ReplicaId]) -> SignedRequest {
    let request = Request {
        client,
        req_seq: 1,
        read_only: false,
        op: op.to_vec().into(),
    };
    let a = auth(Principal::Client(key));
    let bytes = request.signing_bytes();
    let mut macs = Vec::new();
    for r in 0..n {
        let mut tag = a.mac(Principal::Replica(r), &bytes);
        if corrupt.contains(&r) {
            tag[0] ^= 1;
        }
        macs.extend_from_slice(&tag);
    }
    SignedRequest {
        request,
        auth: RequestAuth::Macs(macs.into()),
    }
}

#[test]
fn mac_vectors_are_checked_on_each_replicas_own_entry() {
    use crate::verify::{check_committed_batch, Reject};
    let mut cfg = config(4, FaultModel::Byzantine);
    let good = mac_request(5, 5, b"x", 4, &[]);
    let bad_for_2 = mac_request(5, 5, b"x", 4, &[2]);
    let r = |i| auth(Principal::Replica(i));
    // Refused while the cluster does not accept MACs.
    assert_eq!(
        verify_request(&cfg, r(1).as_ref(), &good),
        Err(Reject::BadClientAuth)
    );
    cfg.request_macs = true;
    for i in 0..4 {
        assert_eq!(verify_request(&cfg, r(i).as_ref(), &good), Ok(()));
    }
    // Each replica reads only its own entry.
    assert_eq!(verify_request(&cfg, r(1).as_ref(), &bad_for_2), Ok(()));
    assert_eq!(
        verify_request(&cfg, r(2).as_ref(), &bad_for_2),
        Err(Reject::BadClientMac)
    );
    // A vector of the wrong length, and one made with another client's keys.
    let mut short = good.clone();
    short.auth.edit_bytes(|b| b.truncate(3 * MAC_BYTES));
    assert_eq!(
        verify_request(&cfg, r(0).as_ref(), &short),
        Err(Reject::BadClientMac)
    );
    let impostor = mac_request(6, 5, b"x", 4, &[]);
    assert_eq!(
        verify_request(&cfg, r(0).as_ref(), &impostor),
        Err(Reject::BadClientMac)
    );

    // In a fresh proposal: replica 2 rejects it without blaming the leader, who could not
    // have checked replica 2's entry; replica 1 accepts it.
    let pp = leader_pre_prepare(vec![bad_for_2.clone()]);
    let rej = verify_message(&cfg, r(2).as_ref(), &Message::PrePrepare(pp.clone())).unwrap_err();
    assert_eq!(rej.reason, Reject::BadClientMac);
    assert_eq!(rej.blame, None);
    assert!(verify_message(&cfg, r(1).as_ref(), &Message::PrePrepare(pp.clone())).is_ok());

    // A committed batch a peer sends in state transfer is not checked against MAC vectors
    // either: replica 2 accepts it once f + 1 peers sent it (the quorum that committed it
    // checked their entries).
    let committed = crate::message::CommittedBatch {
        pre_prepare: pp.body.clone(),
    };
    assert!(check_committed_batch(&cfg, r(2).as_ref(), &committed).is_ok());
    // ...but MAC vectors stay refused in a cluster that does not accept them.
    cfg.request_macs = false;
    assert_eq!(
        check_committed_batch(&cfg, r(2).as_ref(), &committed)
            .unwrap_err()
            .reason,
        Reject::BadClientAuth
    );
}

#[test]
fn ed25519_forgery_is_rejected() {
    use std::collections::HashMap;
    let cfg = config(4, FaultModel::Byzantine);
    let seeds: Vec<[u8; 32]> = (0..4).map(|i| [i as u8 + 10; 32]).collect();
    let public: HashMap<_, _> = seeds
        .iter()
        .enumerate()
        .map(|(i, s)| {
            (
                Principal::Replica(i as u32),
                crate::auth::Ed25519Auth::public_key(*s),
            )
        })
        .collect();
    let mk = |i: usize| {
        crate::auth::Ed25519Auth::new(
            Principal::Replica(i as u32),
            seeds[i],
            public.clone(),
            [0; 32],
        )
    };
    let (r1, r3) = (mk(1), mk(3));
    let vote = Vote {
        view: 0,
        seq: 1,
        batch_digest: Default::default(),
    };
    let bytes = vote_signing_bytes(Phase::Prepare, &vote);
    let genuine = Message::Prepare(Signed {
        from: 3,
        body: vote,
        sig: r3.sign(&bytes),
    });
    assert!(verify_message(&cfg, &r1, &genuine).is_ok());
    // Replica 3 signs, claiming to be replica 2.
    let forged = Message::Prepare(Signed {
        from: 2,
        body: vote,
        sig: r3.sign(&bytes),
    });
    assert_eq!(
        verify_message(&cfg, &r1, &forged).unwrap_err().reason,
        crate::verify::Reject::BadSignature
    );
    // COMMITs: replica 1 checks its own entry of the MAC vector, under the key it shares
    // with the named sender, over the vote and the sender's name.
    let macs = |by: &crate::auth::Ed25519Auth, from, vote: &Vote| -> Vec<u8> {
        let bytes = crate::message::commit_mac_bytes(from, vote);
        (0..4)
            .flat_map(|to| by.mac(Principal::Replica(to), &bytes))
            .collect()
    };
    let commit = |from, macs| {
        Message::Commit(crate::message::Authenticated {
            from,
            body: vote,
            macs,
        })
    };
    assert!(verify_message(&cfg, &r1, &commit(3, macs(&r3, 3, &vote))).is_ok());
    let mut wrong_entry = macs(&r3, 3, &vote);
    wrong_entry[MAC_BYTES] ^= 1;
    // Replica 1's own COMMIT carries, at replica 3's entry, the MAC of the pair (1, 3): moved
    // to replica 1's entry and sent back in replica 3's name, it must not pass as replica 3's
    // vote (the key is the same both ways; the sender's name in the MAC tells them apart).
    let own = macs(&r1, 1, &vote);
    let mut reflected = vec![0; 4 * MAC_BYTES];
    reflected[MAC_BYTES..2 * MAC_BYTES].copy_from_slice(&own[3 * MAC_BYTES..]);
    let other_vote = Vote { seq: 2, ..vote };
    for (case, m) in [
        ("in another's name", commit(2, macs(&r3, 3, &vote))),
        ("entry flipped", commit(3, wrong_entry)),
        (
            "short vector",
            commit(3, macs(&r3, 3, &vote)[..3 * MAC_BYTES].to_vec()),
        ),
        ("empty vector", commit(3, Vec::new())),
        ("another vote's MACs", commit(3, macs(&r3, 3, &other_vote))),
        ("own vote reflected", commit(3, reflected)),
    ] {
        assert_eq!(
            verify_message(&cfg, &r1, &m).unwrap_err().reason,
            crate::verify::Reject::BadReplicaMac,
            "{case}"
        );
    }
    // Another replica's entry of the same vector is not replica 1's business.
    let mut others_wrong = macs(&r3, 3, &vote);
    others_wrong[2 * MAC_BYTES] ^= 1;
    assert!(verify_message(&cfg, &r1, &commit(3, others_wrong)).is_ok());
}

#[test]
fn new_leader_behind_the_new_view_checkpoint_proposes_each_seq_once() {
    // Regression (simulator, crash n=3 `lossy` seed 454): a new leader whose own stable
    // checkpoint is older than the NEW-VIEW's, and which queued a request while changing views,
    // proposed with its old sequence counter while adopting the checkpoint, then proposed the
    // same sequence number again.
    for model in [FaultModel::Byzantine, FaultModel::Crash] {
        let n = if model == FaultModel::Byzantine { 4 } else { 3 };
        let mut c = Cluster::new(n, model);
        // Replica 1 executes everything but never sees the checkpoint votes for 8.
        c.drop.push((1, "checkpoint"));
        for s in 1..=9 {
            c.submit(request(1, s, b"w"));
        }
        assert_eq!(
            (
                c.replicas[1].last_executed(),
                c.replicas[1].stable_checkpoint()
            ),
            (8, 0)
        );
        c.drop.clear();
        c.up[0] = false;
        c.submit(request(2, 1, b"x"));
        // Everyone times out on it; hold the view changes in the network.
        c.now = c.cfg.request_timeout_ms + 1;
        for i in 1..n {
            c.event(i, Event::Tick);
        }
        assert_eq!(c.replicas[1].status(), Status::ViewChanging);
        // The new leader (1) gets a request while it waits for view changes.
        c.event(1, Event::Request(request(3, 1, b"y")));
        c.run_until(5_000);
        let mut seen = BTreeMap::new();
        for (from, view, seq, digest) in &c.proposals {
            if let Some(other) = seen.insert((*from, *view, *seq), *digest) {
                assert_eq!(
                    other, *digest,
                    "{model}: replica {from} proposed twice at v{view} s{seq}"
                );
            }
        }
        assert_eq!(c.replicas[1].view(), 1, "{model}");
        assert!(c.replies_for(3, 1) >= c.cfg.reply_quorum(), "{model}");
        c.assert_agreement();
    }
}

#[test]
fn a_lone_suspicious_replica_does_not_climb_views() {
    // Only one replica holds a request the leader never sees (its relay is lost too): it asks
    // for a view change but never gets a quorum, so it must stay at view 1 (re-sending), not
    // race ahead.
    let mut c = Cluster::new(4, FaultModel::Byzantine);
    c.drop.push((0, "forward"));
    c.event(3, Event::Request(request(1, 1, b"only-r3")));
    c.run_until(10_000);
    assert_eq!(c.replicas[3].view(), 1);
    assert_eq!(c.replicas[3].status(), Status::ViewChanging);
    for i in 0..3 {
        assert_eq!(c.replicas[i].view(), 0);
    }
}

/// A replica whose service lags behind its commits keeps the committed batches when their
/// checkpoint becomes stable, executes them itself, and asks no peer for state.
#[test]
fn lagging_execution_does_not_trigger_state_transfer() {
    let cfg = config(4, FaultModel::Byzantine);
    let mut r = Replica::new(cfg.clone(), 1, auth(Principal::Replica(1))).unwrap();
    let sign = |from: u32, bytes: &[u8]| SimAuth::new(Principal::Replica(from), SEED).sign(bytes);
    let mut out = Vec::new();
    let mut executes = Vec::new();
    for seq in 1..=4u64 {
        let pp = leader_pre_prepare_at(seq, vec![request(9, seq, b"op")]);
        let vote = vote_for(&pp);
        r.handle(0, Event::Message(Message::PrePrepare(pp)), &mut out);
        for from in [2, 3] {
            let sig = sign(from, &vote_signing_bytes(Phase::Prepare, &vote));
            r.handle(
                0,
                Event::Message(Message::Prepare(Signed {
                    from,
                    body: vote,
                    sig,
                })),
                &mut out,
            );
        }
        for from in [0, 2] {
            r.handle(0, Event::Message(mac_commit(from, vote)), &mut out);
        }
        executes.extend(
            out.drain(..)
                .filter(|a| matches!(a, Action::Execute { .. })),
        );
    }
    // Only batch 1 went to the service; it has not answered yet.
    assert_eq!(executes.len(), 1);
    // The others agree on checkpoint 4: it becomes stable here.
    let digest = crate::types::Digest([4; 32]);
    for from in [0, 2, 3] {
        let body = crate::message::Checkpoint {
            seq: 4,
            state_digest: digest,
        };
        let sig = sign(from, &body.signing_bytes());
        r.handle(
            0,
            Event::Message(Message::Checkpoint(Signed { from, body, sig })),
            &mut out,
        );
    }
    assert_eq!(r.stable_checkpoint(), 4);
    assert!(
        !out.iter().any(|a| matches!(
            a,
            Action::Send {
                message: Message::Fetch(_),
                ..
            } | Action::Broadcast {
                message: Message::Fetch(_)
            }
        )),
        "no state transfer: {out:?}"
    );
    out.clear();
    // The service catches up: batches 2..4 come from the kept log.
    for seq in 1..=4u64 {
        r.handle(
            1,
            Event::Executed {
                seq,
                results: vec![b"ok".to_vec()],
                snapshot: (seq == 4).then(|| vec![bytes::Bytes::from_static(b"state")]),
            },
            &mut out,
        );
    }
    assert_eq!(r.last_executed(), 4);
    assert!(!out.iter().any(|a| matches!(a, Action::Restore { .. })));
    // Long after, still nothing to fetch.
    r.handle(10_000, Event::Tick, &mut out);
    assert!(!out.iter().any(|a| matches!(
        a,
        Action::Send {
            message: Message::Fetch(_),
            ..
        }
    )));
}

/// A checkpoint that becomes stable after the replica executed past it keeps everything above
/// the checkpoint (the prepared certificates a view change must carry).
#[test]
fn a_late_stable_checkpoint_keeps_the_slots_above_it() {
    let mut c = Cluster::new(4, FaultModel::Byzantine);
    c.drop.push((1, "checkpoint"));
    for s in 1..=8 {
        c.submit(request(1, s, b"w"));
    }
    assert_eq!(c.replicas[1].last_executed(), 8);
    assert_eq!(c.replicas[1].stable_checkpoint(), 0);
    let digest = c.replicas[1].own_checkpoints[&4].digest;
    for from in [0, 2, 3] {
        let body = crate::message::Checkpoint {
            seq: 4,
            state_digest: digest,
        };
        let sig = SimAuth::new(Principal::Replica(from), SEED).sign(&body.signing_bytes());
        c.event(
            1,
            Event::Message(Message::Checkpoint(Signed { from, body, sig })),
        );
    }
    let r = &c.replicas[1];
    assert_eq!(r.stable_checkpoint(), 4);
    assert!(r.slots.keys().all(|s| *s > 4));
    for s in 5..=8 {
        assert!(
            r.slots
                .get(&s)
                .is_some_and(|slot| slot.prepared_cert.is_some()),
            "slot {s}"
        );
    }
}

/// Found by the `verify_message` fuzz target: a view change whose certificates sit at the top
/// of the sequence-number space must be rejected, not overflow.
#[test]
fn view_change_at_the_end_of_sequence_numbers_is_rejected_without_overflow() {
    use crate::message::{Checkpoint, CheckpointCert, PreparedCert, ViewChange};
    let cfg = Config::for_replicas(4, FaultModel::Byzantine);
    let low = u64::MAX - 63;
    assert_eq!(low % cfg.checkpoint_interval, 0);
    let digest = crate::types::Digest::default();
    let proof = (0..3)
        .map(|from| {
            let body = Checkpoint {
                seq: low,
                state_digest: digest,
            };
            let sig = SimAuth::new(Principal::Replica(from), SEED).sign(&body.signing_bytes());
            Signed { from, body, sig }
        })
        .collect();
    let pp = PrePrepare {
        view: 0,
        seq: u64::MAX,
        batch_digest: batch_digest(&[]),
        batch: Default::default(),
    };
    let body = ViewChange {
        new_view: 1,
        checkpoint: CheckpointCert {
            seq: low,
            state_digest: digest,
            proof,
        },
        prepared: vec![PreparedCert {
            pre_prepare: Signed {
                from: 0,
                sig: SimAuth::new(Principal::Replica(0), SEED).sign(&pp.signing_bytes()),
                body: pp,
            },
            prepares: vec![],
        }],
    };
    let signer = SimAuth::new(Principal::Replica(1), SEED);
    let msg = Message::ViewChange(Signed {
        from: 1,
        sig: signer.sign(&body.signing_bytes()),
        body,
    });
    assert!(verify_message(&cfg, &signer, &msg).is_err());
    assert_eq!(cfg.window_top(low), u64::MAX);
}

/// A client that sends its request to every replica but the leader: the followers relay it to
/// the leader after half the request timeout (PBFT 4.1) instead of suspecting the leader.
/// The arrival queue is cleaned lazily: the oldest pending request sets the deadlines, removals
/// in any order keep the queue within twice the pending requests (plus a constant), and a clock
/// that goes back does not reorder it.
#[test]
fn arrivals_follow_the_oldest_pending_request_and_stay_bounded() {
    let cfg = config(4, FaultModel::Byzantine);
    let (timeout, relay) = (cfg.request_timeout_ms, cfg.request_timeout_ms / 2);
    let mut r = Replica::new(cfg, 1, auth(Principal::Replica(1))).unwrap();
    let mut out = Vec::new();
    for c in 0..1000u64 {
        r.handle(c / 10, Event::Request(request(c, 1, b"x")), &mut out);
    }
    assert_eq!(r.pending_requests(), 1000);
    assert_eq!(r.request_deadline(), Some(timeout));
    assert_eq!(r.forward_deadline(), Some(relay));
    // Remove all but the oldest, newest first (no entry leaves from the front).
    for c in (1..1000u64).rev() {
        r.remove_pending((c, 1));
        assert!(
            r.arrivals.len() <= 2 * r.pending_requests() + 65,
            "{}",
            r.arrivals.len()
        );
    }
    assert_eq!(r.request_deadline(), Some(timeout));
    r.remove_pending((0, 1));
    assert!(r.arrivals.is_empty());
    assert_eq!((r.request_deadline(), r.forward_deadline()), (None, None));
    // Oldest first: the deadlines move to the next live request.
    r.handle(500, Event::Request(request(1, 2, b"x")), &mut out);
    r.handle(400, Event::Request(request(2, 2, b"x")), &mut out);
    r.handle(600, Event::Request(request(3, 2, b"x")), &mut out);
    assert_eq!(r.request_deadline(), Some(500 + timeout));
    r.remove_pending((2, 2));
    assert_eq!(
        r.request_deadline(),
        Some(500 + timeout),
        "arrived at 400, counted from 500"
    );
    r.remove_pending((1, 2));
    assert_eq!(r.request_deadline(), Some(600 + timeout));
    assert_eq!(r.forward_deadline(), Some(600 + relay));
    assert_eq!(r.arrivals.len(), 1);
}

#[test]
fn a_request_that_skips_the_leader_is_relayed_not_a_view_change() {
    let mut c = Cluster::new(4, FaultModel::Byzantine);
    let r = request(5, 1, b"skip");
    for i in 1..4 {
        c.event(i, Event::Request(r.clone()));
    }
    c.run_until(c.cfg.request_timeout_ms / 2 - 1);
    assert!(
        c.executed[1].is_empty(),
        "nothing relayed before half the timeout"
    );
    c.run_until(c.cfg.request_timeout_ms * 3);
    for i in 0..4 {
        assert_eq!(c.replicas[i].view(), 0, "replica {i} did not change views");
        assert_eq!(c.replicas[i].last_executed(), 1);
    }
    assert_eq!(c.replies_for(5, 1), 4);
    // Each follower relayed once; the leader admitted the first and ignored the copies.
    assert_eq!(c.replicas[0].stats().executed_requests, 1);
}

/// A leader that ignores relayed requests is still replaced at the full timeout.
#[test]
fn a_leader_that_ignores_relayed_requests_is_replaced() {
    let mut c = Cluster::new(4, FaultModel::Byzantine);
    c.drop.push((0, "forward"));
    let r = request(5, 1, b"skip");
    for i in 1..4 {
        c.event(i, Event::Request(r.clone()));
    }
    c.run_until(c.cfg.request_timeout_ms * 10);
    for i in 1..4 {
        assert!(c.replicas[i].view() >= 1, "replica {i} replaced the leader");
        assert_eq!(c.replicas[i].last_executed(), 1, "and the request executed");
    }
}

// ---- Durable mode (ADR 008) ----

#[test]
fn durable_follower_sends_its_vote_only_after_the_proposal_is_on_disk() {
    let mut cfg = config(4, FaultModel::Byzantine);
    cfg.durability = crate::config::Durability::Durable;
    let mut r = Replica::new(cfg, 1, auth(Principal::Replica(1))).unwrap();
    let pp = leader_pre_prepare(vec![request(1, 1, b"x")]);
    let mut out = Vec::new();
    r.handle(0, Event::Message(Message::PrePrepare(pp.clone())), &mut out);
    assert!(
        matches!(&out[..], [Action::Persist { ticket: 1, key: 1, record: crate::message::Record::PrePrepare(p) }] if *p == pp),
        "only the record goes out first: {out:?}"
    );
    assert_eq!(r.held_outputs(), 1);
    out.clear();
    r.handle(1, Event::Persisted { ticket: 1 }, &mut out);
    assert!(
        matches!(&out[..], [Action::Broadcast { message: Message::Prepare(v) }] if v.body.seq == 1),
        "the prepare follows the record: {out:?}"
    );
    assert_eq!(r.held_outputs(), 0);
}

#[test]
fn memory_mode_persists_nothing() {
    let mut c = Cluster::new(4, FaultModel::Byzantine);
    for i in 1..=10 {
        c.submit(request(1, i, b"m"));
    }
    assert!(c
        .disks
        .iter()
        .all(|d| d.log.is_empty() && d.checkpoint.is_none()));
}

#[test]
fn durable_cluster_survives_every_replica_restarting_at_once() {
    for (n, model) in [(4, FaultModel::Byzantine), (3, FaultModel::Crash)] {
        let mut c = Cluster::durable(n, model);
        for i in 1..=10 {
            c.submit(request(1, i, format!("w{i}").as_bytes()));
            assert_eq!(
                c.replies_for(1, i),
                n as usize,
                "{model}: write {i} acknowledged"
            );
        }
        let before = c.services[0].0.clone();
        assert_eq!(before.len(), 10);
        // Checkpoints were saved and the log compacted below them.
        assert!(c.disks.iter().all(|d| d.checkpoint.is_some()), "{model}");
        for i in 0..n {
            c.crash_and_recover(i);
        }
        c.deliver_all();
        for i in 0..n as usize {
            assert_eq!(
                c.services[i].0, before,
                "{model}: replica {i} recovered every write"
            );
        }
        c.submit(request(1, 11, b"after"));
        assert_eq!(
            c.replies_for(1, 11),
            n as usize,
            "{model}: live after restart"
        );
        // Exactly once across the restart: a retransmitted old request is not re-executed.
        c.submit(request(1, 10, b"w10"));
        for i in 0..n as usize {
            assert_eq!(c.services[i].0.len(), 11, "{model}: replica {i}");
        }
        c.assert_agreement();
    }
}

#[test]
fn durable_log_stays_bounded_by_checkpoints() {
    let mut c = Cluster::durable(4, FaultModel::Byzantine);
    for i in 1..=200 {
        c.submit(request(1, i, b"x"));
    }
    for (i, d) in c.disks.iter().enumerate() {
        let seq = d.checkpoint.as_ref().map(|s| s.checkpoint.seq).unwrap_or(0);
        assert!(seq >= 196, "replica {i} saved checkpoint {seq}");
        // Records above the checkpoint (at most a checkpoint interval of batches, each with a
        // proposal, a prepared certificate and a commit) plus the view record.
        assert!(
            d.log.len() <= 3 * 4 + 1,
            "replica {i} keeps {} records",
            d.log.len()
        );
    }
}

#[test]
fn restarted_durable_replica_does_not_vote_twice_for_one_slot() {
    let mut c = Cluster::durable(4, FaultModel::Byzantine);
    let pp = leader_pre_prepare(vec![request(1, 1, b"first")]);
    c.event(1, Event::Message(Message::PrePrepare(pp)));
    c.net.clear();
    let actions = c.crash_and_recover(1);
    // Its prepare for the slot is sent again (peers may have lost it) ...
    assert!(actions.iter().any(
        |a| matches!(a, Action::Broadcast { message: Message::Prepare(v) } if v.body.seq == 1)
    ));
    // ... and a conflicting proposal for the same slot gets no vote.
    let other = leader_pre_prepare(vec![request(2, 1, b"second")]);
    let mut out = Vec::new();
    c.replicas[1].handle(c.now, Event::Message(Message::PrePrepare(other)), &mut out);
    assert!(
        !out.iter().any(|a| matches!(
            a,
            Action::Broadcast {
                message: Message::Prepare(_)
            } | Action::Persist {
                record: crate::message::Record::PrePrepare(_),
                ..
            }
        )),
        "{out:?}"
    );
    assert_eq!(c.replicas[1].stats().rejected.get("conflicting"), Some(&1));
}

#[test]
fn a_record_lost_in_a_crash_was_never_acted_on() {
    // Replica 1's disk never syncs: it logs the proposal but its vote stays held; after a
    // crash that loses the record it has said nothing it could contradict.
    let mut c = Cluster::durable(4, FaultModel::Byzantine);
    c.sync_held.push(1);
    let pp = leader_pre_prepare(vec![request(1, 1, b"first")]);
    c.event(1, Event::Message(Message::PrePrepare(pp)));
    assert!(
        c.net.is_empty(),
        "nothing left replica 1 before its record was durable"
    );
    c.sync_held.clear();
    c.crash_and_recover(1);
    let other = leader_pre_prepare(vec![request(2, 1, b"second")]);
    c.event(1, Event::Message(Message::PrePrepare(other)));
    assert!(
        c.net
            .iter()
            .any(|(_, m)| matches!(m, Message::Prepare(v) if v.from == 1 && v.body.seq == 1)),
        "free to vote for the only proposal it ever voted on"
    );
}

#[test]
fn replica_restarted_during_a_view_change_asks_for_the_same_view_again() {
    let mut c = Cluster::durable(4, FaultModel::Byzantine);
    c.submit(request(1, 1, b"a"));
    c.up[0] = false; // the leader dies
    c.event(2, Event::Request(request(1, 2, b"b")));
    c.event(3, Event::Request(request(1, 2, b"b")));
    c.now += 150;
    c.event(2, Event::Tick);
    c.event(3, Event::Tick);
    assert_eq!(c.replicas[2].status(), Status::ViewChanging);
    c.net.clear();
    let actions = c.crash_and_recover(2);
    assert_eq!(c.replicas[2].view(), 1);
    assert_eq!(c.replicas[2].status(), Status::ViewChanging);
    assert!(actions.iter().any(
        |a| matches!(a, Action::Broadcast { message: Message::ViewChange(v) } if v.body.new_view == 1)
    ));
    c.run_until(c.now + 2_000);
    assert!(c.replicas[1..].iter().all(|r| r.last_executed() == 2));
    c.assert_agreement();
}

#[test]
fn a_snapshot_travels_in_checked_pieces_and_a_lying_peer_only_costs_retries() {
    let mut c = Cluster::new(4, FaultModel::Byzantine);
    c.reconfigure(|cfg| cfg.state_chunk_bytes = 8);
    // Replica 0 is the one replica 3 asks for the state (it offers the manifest), and it
    // forges every piece it sends.
    c.tamper_chunks = Some(0);
    c.up[3] = false;
    for s in 1..=13 {
        c.submit(request(1, s, b"some longer operation bytes"));
    }
    assert_eq!(c.replicas[0].stable_checkpoint(), 12);
    c.up[3] = true;
    c.submit(request(1, 14, b"w"));
    c.run_until(2_000);
    let r3 = &c.replicas[3];
    assert_eq!(r3.last_executed(), 14);
    assert_eq!(r3.stats().snapshots_installed, 1);
    assert!(
        r3.stats()
            .rejected
            .get("bad_state_transfer")
            .is_some_and(|n| *n >= 1),
        "replica 0's forged pieces were refused: {:?}",
        r3.stats().rejected
    );
    assert_eq!(
        c.services[3].0, c.services[0].0,
        "same state after transfer"
    );
    assert!(
        c.pieces_in_flight_max <= 4,
        "pieces in flight bounded: {}",
        c.pieces_in_flight_max
    );
}

#[test]
fn crash_mode_acceptor_state_of_an_older_view_survives_a_restart() {
    // Crash mode has no prepared certificates: an accepted proposal is the acceptor's state,
    // and a restarted replica must still report it in its view changes after it moved on.
    let mut c = Cluster::durable(3, FaultModel::Crash);
    let pp = leader_pre_prepare(vec![request(1, 1, b"accepted")]);
    c.event(1, Event::Message(Message::PrePrepare(pp.clone())));
    let mut out = Vec::new();
    c.replicas[1].start_view_change(1);
    c.replicas[1].release(&mut out);
    c.carry_out(1, out, &mut VecDeque::new());
    c.net.clear();
    c.crash_and_recover(1);
    assert_eq!(c.replicas[1].view(), 1);
    let mut out = Vec::new();
    c.replicas[1].start_view_change(2);
    c.replicas[1].release(&mut out);
    let vc = out
        .iter()
        .find_map(|a| match a {
            // Logged first, sent once durable: the record is the message.
            Action::Persist {
                record: crate::message::Record::ViewChange(vc),
                ..
            } => Some(vc.clone()),
            _ => None,
        })
        .expect("a view change for view 2");
    assert_eq!(vc.body.new_view, 2);
    assert_eq!(
        vc.body
            .prepared
            .iter()
            .map(|p| (p.pre_prepare.body.seq, p.pre_prepare.body.batch_digest))
            .collect::<Vec<_>>(),
        vec![(1, pp.body.batch_digest)],
        "the accepted proposal of view 0 is reported"
    );
}

#[test]
fn a_held_state_digests_and_offers_what_a_state_snapshot_would() {
    // Parts of every shape: empty, shorter and longer than a piece, many pieces long.
    let parts: Vec<bytes::Bytes> = [0usize, 5, 64, 1, 1000, 0, 130]
        .iter()
        .enumerate()
        .map(|(i, len)| {
            (0..*len)
                .map(|j| (i * 31 + j) as u8)
                .collect::<Vec<u8>>()
                .into()
        })
        .collect();
    let service: Vec<u8> = parts.concat();
    let clients = bytes::Bytes::from(vec![9u8; 37]);
    for chunk in [1, 7, 64, 1000, 1037, 4096] {
        let (held, hashed) = super::HeldState::new(
            chunk,
            parts.clone(),
            clients.clone(),
            None,
            &mut Default::default(),
        );
        assert_eq!(hashed, (service.len() + clients.len()) as u64);
        let digest = StateSnapshot::state_digest(chunk, &parts, &clients);
        assert_eq!(held.digest, digest, "chunk {chunk}");
        assert_eq!(held.service(), service);
        assert_eq!(held.clients(), clients);
        assert_eq!(held.service_pieces().concat(), service);
        let cert = CheckpointCert {
            seq: 8,
            state_digest: digest,
            proof: Vec::new(),
        };
        let manifest = held.manifest(cert);
        assert!(manifest.is_valid(chunk), "chunk {chunk}");
        let groups = manifest.groups(chunk);
        let mut all = Vec::new();
        for (index, group) in groups.iter().enumerate() {
            let mut run = held.piece(index as u32);
            assert!(run.len() <= chunk, "a run fits a message of one chunk");
            assert!(manifest.group_matches(group.clone(), &run));
            all.extend_from_slice(&run);
            run[0] ^= 1;
            assert!(
                !manifest.group_matches(group.clone(), &run),
                "a forged run is refused"
            );
            run.push(0);
            assert!(
                !manifest.group_matches(group.clone(), &run),
                "a longer run is refused"
            );
        }
        assert!(held.piece(groups.len() as u32).is_empty());
        assert_eq!(all, [&service[..], &clients[..]].concat());

        // The next checkpoint: one part changed, the client table re-encoded. Only those are
        // hashed again, and the digest is the one of a state digested from scratch.
        let mut next = parts.clone();
        next[4] = vec![7u8; 1000].into();
        let clients2 = bytes::Bytes::from(vec![9u8; 37]);
        let (again, hashed) = super::HeldState::new(
            chunk,
            next.clone(),
            clients2.clone(),
            Some(&held),
            &mut Default::default(),
        );
        assert_eq!(hashed, 1000 + 37, "chunk {chunk}");
        assert_eq!(
            again.digest,
            StateSnapshot::state_digest(chunk, &next, &clients2)
        );
        assert_ne!(again.digest, held.digest);
    }
}

#[test]
fn checkpoints_hash_only_the_state_that_changed() {
    // The test service hands back each op's encoding unchanged at every checkpoint: the
    // replicas hash each op's bytes once, not the whole log at every checkpoint.
    let mut c = Cluster::new(4, FaultModel::Byzantine);
    // Clients keep one result each: the client table stays small next to the ops.
    c.reconfigure(|cfg| cfg.client_pending_max = 1);
    let op = [7u8; 100];
    for s in 1..=16 {
        c.submit(request(1, s, &op));
    }
    for r in &c.replicas {
        assert_eq!(r.stable_checkpoint(), 16);
        assert_eq!(r.stats().stable_checkpoints, 4);
        let hashed = r.stats().state_bytes_hashed;
        // Four checkpoints of 4, 8, 12 and 16 ops, and the client table (re-encoded, so
        // hashed, each time; it only grew): from scratch the ops alone would be 40 x 101
        // bytes, 24 x 101 more than this bound.
        let table = r.clients.encode().len() as u64;
        assert!(
            hashed >= 16 * 101 && hashed <= 16 * 101 + 4 * table,
            "hashed {hashed}, table {table}"
        );
    }
}

#[test]
fn a_replica_whose_service_lags_reuses_the_digests_of_the_state_it_took_last() {
    // Checkpoint 8 becomes stable before this replica executed it: its state at 4 moved to
    // `previous_state` and it holds no other. Taking checkpoint 8 hashes only what changed.
    let mut r = Replica::new(
        config(4, FaultModel::Byzantine),
        1,
        auth(Principal::Replica(1)),
    )
    .unwrap();
    let mut parts: Vec<bytes::Bytes> = (0..8u8).map(|i| vec![i; 1000].into()).collect();
    r.take_checkpoint(4, parts.clone());
    let cert = |seq, state_digest| CheckpointCert {
        seq,
        state_digest,
        proof: Vec::new(),
    };
    let digest4 = r.own_checkpoints[&4].digest;
    r.make_stable(cert(4, digest4));
    r.make_stable(cert(8, crate::types::Digest([5; 32])));
    assert!(r.stable_state.is_none() && r.own_checkpoints.is_empty());
    assert!(r.previous_state.is_some());
    let before = r.stats().state_bytes_hashed;
    parts[3] = vec![9u8; 1000].into();
    r.take_checkpoint(8, parts);
    let table = r.clients.encode().len() as u64;
    assert_eq!(r.stats().state_bytes_hashed - before, 1000 + table);
}

#[test]
fn a_fetch_reply_stays_within_half_a_message() {
    // 40 committed batches of 1 MiB each would make a 40 MiB reply: it carries what fits in
    // half a message (and at least some batches).
    let mut r = Replica::new(
        config(4, FaultModel::Byzantine),
        1,
        auth(Principal::Replica(1)),
    )
    .unwrap();
    let big = SignedRequest {
        request: Request {
            client: 1,
            req_seq: 1,
            read_only: false,
            op: vec![0; 1 << 20].into(),
        },
        auth: RequestAuth::Signature(vec![0; 64].into()),
    };
    for seq in 1..=40 {
        r.slots.entry(seq).or_default().committed = Some(crate::message::CommittedBatch {
            pre_prepare: crate::message::PrePrepare {
                view: 0,
                seq,
                batch_digest: crate::types::Digest([0; 32]),
                batch: vec![big.clone()].into(),
            },
        });
    }
    let fetch = crate::message::Fetch {
        executed: 0,
        view: 0,
        nonce: 1,
        digests_only: false,
    };
    r.on_fetch(Signed {
        from: 2,
        body: fetch,
        sig: Vec::new(),
    });
    let mut out = Vec::new();
    r.release(&mut out);
    let reply = out
        .iter()
        .find_map(|a| match a {
            Action::Send {
                message: Message::FetchReply(reply),
                ..
            } => Some(reply.clone()),
            _ => None,
        })
        .expect("a fetch reply");
    let size = crate::message::encode(&reply).len();
    assert!(
        size <= crate::message::MESSAGE_BYTES_MAX / 2,
        "{size} bytes"
    );
    let batches = reply.body.batches.len();
    assert!((20..40).contains(&batches), "{batches} batches");
}
