//! The deterministic world: one thread, one seeded RNG per component, a simulated clock and an
//! event queue ordered by (time, insertion counter).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;

use ed25519_zebra::VerificationKey;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shieldwall_core::message::{decode, encode};
use shieldwall_core::verify::{verify_message, verify_request};
use shieldwall_core::{
    Action, Authenticator, ClientId, Config, Digest, Durability, Ed25519Auth, Event, Message,
    Principal, Record, Replica, ReplicaId, Reply, Request, SignedRequest, SimAuth, StateSnapshot,
    Status,
};

use crate::byzantine::{Byzantine, ReplicaFault};
use crate::checker::{check_linearizability, Checker};
use crate::client::{Client, ClientOut, ClientParams};
use crate::scenario::{plan, Plan, Scenario};
use crate::service::{KvOp, KvService};
use crate::{Injection, RunReport, SimParams};

/// What happens at a point in simulated time.
#[derive(Debug)]
enum Payload {
    /// Encoded `Message` bytes for a replica.
    Peer {
        to: ReplicaId,
        bytes: Vec<u8>,
    },
    /// Encoded `SignedRequest` bytes from a client.
    Request {
        to: ReplicaId,
        bytes: Vec<u8>,
    },
    /// Encoded `Reply` bytes from replica `from`.
    Reply {
        to: ClientId,
        from: ReplicaId,
        bytes: Vec<u8>,
    },
    Tick {
        replica: ReplicaId,
        incarnation: u32,
    },
    ClientWake {
        client: ClientId,
    },
    CrashLeader,
    Crash {
        victim: Option<ReplicaId>,
        down_ms: u64,
    },
    Restart(ReplicaId),
    /// A simulated group sync of `replica`'s disk completes.
    Synced {
        replica: ReplicaId,
        incarnation: u32,
    },
    /// Every replica crashes; each restarts after its downtime.
    CrashAll(Vec<u64>),
    EndFaults,
}

#[derive(Debug)]
struct Queued {
    at_ms: u64,
    order: u64,
    payload: Payload,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at_ms, self.order) == (other.at_ms, other.order)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at_ms, self.order).cmp(&(other.at_ms, other.order))
    }
}

#[derive(Debug)]
struct Node {
    replica: Option<Replica>,
    service: KvService,
    incarnation: u32,
    tick_at: Option<u64>,
    byzantine: Option<Byzantine>,
    honest: bool,
    slow: bool,
    auth: Arc<dyn Authenticator>,
    /// Stats of earlier incarnations, folded in at crash time.
    views_entered: u64,
    /// Durable mode: what survives a crash.
    disk: SimDisk,
    /// Restarted without its state (memory mode or a lost disk): until it has fetched the
    /// state back, it counts against f (see `World::faulty`).
    amnesiac: bool,
}

impl Node {
    /// Whether the replica counts against f: Byzantine, down, recovering from amnesia
    /// (ADR 002), or restarted without its state and still fetching it. A replica that lost
    /// its state holds nothing for its peers until the transfer completes; crashing another
    /// meanwhile could leave no correct replica holding the stable checkpoint's state (sim
    /// finding 12).
    fn counts_against_f(&self) -> bool {
        !self.honest
            || self.replica.as_ref().is_none_or(|r| {
                r.status() == Status::Recovering || (self.amnesiac && r.transferring_state())
            })
    }
}

/// A replica's simulated disk (durable mode): records become durable when a simulated group
/// sync completes; a crash loses the rest, as a torn tail would.
#[derive(Debug, Default)]
struct SimDisk {
    /// The newest saved checkpoint.
    checkpoint: Option<StateSnapshot>,
    /// (ticket, key, record, synced)
    log: Vec<(u64, u64, Record, bool)>,
    /// A checkpoint save waiting for the records logged before it (lands with their sync).
    pending_save: Option<StateSnapshot>,
    /// Whether a sync is scheduled.
    sync_scheduled: bool,
}

impl SimDisk {
    fn save(&mut self, snapshot: StateSnapshot) {
        let seq = snapshot.checkpoint.seq;
        self.log.retain(|e| e.1 > seq);
        self.checkpoint = Some(snapshot);
    }

    /// Everything logged so far is now durable; the highest ticket (taken before a pending
    /// save compacts the log, which may drop the newest records).
    fn sync(&mut self) -> Option<u64> {
        self.sync_scheduled = false;
        let highest = self.log.iter().map(|e| e.0).max();
        for e in &mut self.log {
            e.3 = true;
        }
        if let Some(snap) = self.pending_save.take() {
            self.save(snap);
        }
        highest
    }

    fn crash(&mut self) {
        self.log.retain(|e| e.3);
        self.pending_save = None;
        self.sync_scheduled = false;
    }
}

#[derive(Debug)]
pub(crate) struct World {
    cfg: Config,
    params: SimParams,
    plan: Plan,
    now_ms: u64,
    order: u64,
    queue: BinaryHeap<Reverse<Queued>>,
    net_rng: ChaCha8Rng,
    nodes: Vec<Node>,
    clients: Vec<Client>,
    checker: Checker,
    clean: bool,
    steps: u64,
    decode_errors: u64,
    client_requests_sent: u64,
    rejected: BTreeMap<&'static str, u64>,
}

/// Every principal's authenticator: fast keyed hashes, or real Ed25519 signatures.
struct Keys {
    cluster_seed: [u8; 32],
    ed25519: Option<HashMap<Principal, VerificationKey>>,
}

impl Keys {
    fn secret(cluster_seed: [u8; 32], p: Principal) -> [u8; 32] {
        let tag = match p {
            Principal::Replica(r) => u128::from(r),
            Principal::Client(c) => (1u128 << 64) | u128::from(c),
        };
        Digest::of_parts(
            "shieldwall sim ed25519 v1",
            &[&cluster_seed, &tag.to_le_bytes()],
        )
        .0
    }

    fn new(cluster_seed: [u8; 32], n: u32, clients: u64, ed25519: bool) -> Keys {
        let ed25519 = ed25519.then(|| {
            (0..n)
                .map(Principal::Replica)
                .chain((0..clients).map(Principal::Client))
                .map(|p| (p, Ed25519Auth::public_key(Keys::secret(cluster_seed, p))))
                .collect()
        });
        Keys {
            cluster_seed,
            ed25519,
        }
    }

    fn auth(&self, p: Principal) -> Arc<dyn Authenticator> {
        match &self.ed25519 {
            None => Arc::new(SimAuth::new(p, self.cluster_seed)),
            Some(public) => Arc::new(Ed25519Auth::new(
                p,
                Keys::secret(self.cluster_seed, p),
                public.clone(),
                self.cluster_seed,
            )),
        }
    }
}

/// The simulator's timing and bounds.
pub(crate) fn sim_config(n: u32, model: shieldwall_core::FaultModel) -> Config {
    let mut cfg = Config::for_replicas(n, model);
    cfg.request_timeout_ms = 200;
    cfg.view_change_timeout_ms = 200;
    cfg.view_change_timeout_max_ms = 3_200;
    cfg.fetch_timeout_ms = 100;
    cfg.checkpoint_interval = 8;
    cfg.watermark_window = 32;
    cfg.pipeline_window = 4;
    // Eager pipelining by default (`SimParams::pipeline_fill`): the light simulated load
    // would otherwise keep one batch in flight, and view changes must meet several prepared
    // slots.
    cfg.pipeline_fill = 0;
    cfg.batch_requests_max = 16;
    cfg.client_pending_max = 8;
    // Small enough that the client-flood scenario fills it.
    cfg.pending_max = 32;
    cfg.fetch_batches_max = 16;
    // Small pieces, so every snapshot transfer spans several (and liars can corrupt some).
    cfg.state_chunk_bytes = 64;
    cfg
}

fn sub_rng(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

impl World {
    pub(crate) fn new(scenario: Scenario, params: SimParams) -> Result<World, String> {
        let mut cfg = sim_config(params.n, params.fault_model);
        if params.durable || scenario.forces_durable() {
            cfg.durability = Durability::Durable;
        }
        cfg.request_macs = params.request_macs;
        cfg.pipeline_fill = params.pipeline_fill;
        cfg.validate().map_err(|e| format!("configuration: {e}"))?;
        let mut plan_rng = sub_rng(params.seed, 1);
        let plan = plan(
            scenario,
            &cfg,
            params.clients,
            params.ops_per_client,
            &mut plan_rng,
        );
        let mut cluster_seed = [0u8; 32];
        cluster_seed[..8].copy_from_slice(&params.seed.to_le_bytes());
        let mut nodes = Vec::new();
        let keys = Keys::new(
            cluster_seed,
            cfg.n,
            plan.clients.len() as u64,
            params.ed25519,
        );
        for id in 0..cfg.n {
            let auth = keys.auth(Principal::Replica(id));
            let replica = Replica::new(cfg.clone(), id, auth.clone())
                .map_err(|e| format!("replica {id}: {e}"))?;
            let fault = plan
                .byzantine
                .iter()
                .find(|(r, _)| *r == id)
                .map(|(_, f)| *f);
            let byzantine = fault.map(|f| {
                Byzantine::new(
                    f,
                    id,
                    cfg.n,
                    auth.clone(),
                    sub_rng(params.seed, 100 + u64::from(id)),
                )
            });
            nodes.push(Node {
                replica: Some(replica),
                service: KvService::new(),
                incarnation: 0,
                tick_at: None,
                honest: fault.is_none_or(ReplicaFault::is_honest),
                slow: fault == Some(ReplicaFault::Slow),
                byzantine,
                auth,
                views_entered: 0,
                disk: SimDisk::default(),
                amnesiac: false,
            });
        }
        let client_params = |ops| ClientParams {
            ops,
            window: params.client_window.max(1),
            table_window: u64::from(cfg.client_pending_max),
            read_only: params.read_only,
            retransmit_ms: 300,
            read_timeout_ms: 150,
            n: cfg.n,
            f: cfg.f,
            macs: params.request_macs,
            reply_quorum: cfg.reply_quorum(),
            read_quorum: cfg.read_quorum(),
            leader_first: cfg.fault_model == shieldwall_core::FaultModel::Crash,
        };
        let clients = plan
            .clients
            .iter()
            .enumerate()
            .map(|(i, (kind, ops))| {
                Client::new(
                    i as ClientId,
                    *kind,
                    keys.auth(Principal::Client(i as ClientId)),
                    client_params(*ops),
                    sub_rng(params.seed, 1000 + i as u64),
                )
            })
            .collect();
        let mut world = World {
            cfg,
            params,
            plan,
            now_ms: 0,
            order: 0,
            queue: BinaryHeap::new(),
            net_rng: sub_rng(params.seed, 2),
            nodes,
            clients,
            checker: Checker::new(),
            clean: false,
            steps: 0,
            decode_errors: 0,
            client_requests_sent: 0,
            rejected: BTreeMap::new(),
        };
        if params.trace {
            eprintln!("plan: {:?}", world.plan);
        }
        world.schedule_plan();
        Ok(world)
    }

    fn push(&mut self, at_ms: u64, payload: Payload) {
        self.order += 1;
        self.queue.push(Reverse(Queued {
            at_ms,
            order: self.order,
            payload,
        }));
    }

    fn schedule_plan(&mut self) {
        let plan = self.plan.clone();
        for t in &plan.crash_leader_at {
            self.push(*t, Payload::CrashLeader);
        }
        for c in &plan.crashes {
            self.push(
                c.at_ms,
                Payload::Crash {
                    victim: c.victim,
                    down_ms: c.down_ms,
                },
            );
        }
        for (t, downs) in &plan.crash_all {
            self.push(*t, Payload::CrashAll(downs.clone()));
        }
        self.push(plan.fault_end_ms, Payload::EndFaults);
        for c in 0..self.clients.len() {
            let mut out = Vec::new();
            self.clients[c].start(0, &mut out);
            self.client_out(c as ClientId, out);
        }
        for r in 0..self.cfg.n {
            self.reschedule_tick(r);
        }
    }

    // ---- network -------------------------------------------------------------------------

    fn partitioned(&self, a: ReplicaId, b: ReplicaId) -> bool {
        !self.clean
            && self.plan.partitions.iter().any(|p| {
                p.start_ms <= self.now_ms
                    && self.now_ms < p.end_ms
                    && p.side.get(a as usize) != p.side.get(b as usize)
            })
    }

    /// Put `payload` on the wire between replica `replica` (one end) and the other end.
    fn transmit(&mut self, replica: ReplicaId, peer: Option<ReplicaId>, payload: Payload) {
        if let Some(peer) = peer {
            if self.partitioned(replica, peer) {
                return;
            }
        }
        if !self.clean && self.plan.loss > 0.0 && self.net_rng.gen_bool(self.plan.loss) {
            return;
        }
        let slow = self.nodes.get(replica as usize).is_some_and(|n| n.slow)
            || peer.is_some_and(|p| self.nodes.get(p as usize).is_some_and(|n| n.slow));
        let delay = |rng: &mut ChaCha8Rng| {
            let (lo, hi) = if self.clean {
                (1, 5)
            } else {
                self.plan.delay_ms
            };
            let mut d = rng.gen_range(lo..=hi);
            if !self.clean && self.plan.tail > 0.0 && rng.gen_bool(self.plan.tail) {
                // A heavy tail: the occasional message arrives very late.
                d += rng.gen_range(100..=1000);
            }
            if slow {
                d += rng.gen_range(self.plan.slow_extra_ms.0..=self.plan.slow_extra_ms.1);
            }
            d
        };
        let d1 = delay(&mut self.net_rng);
        let dup = !self.clean && self.net_rng.gen_bool(self.plan.duplicate);
        if dup {
            let d2 = delay(&mut self.net_rng);
            let copy = match &payload {
                Payload::Peer { to, bytes } => Payload::Peer {
                    to: *to,
                    bytes: bytes.clone(),
                },
                Payload::Request { to, bytes } => Payload::Request {
                    to: *to,
                    bytes: bytes.clone(),
                },
                Payload::Reply { to, from, bytes } => Payload::Reply {
                    to: *to,
                    from: *from,
                    bytes: bytes.clone(),
                },
                _ => return,
            };
            self.push(self.now_ms + d2, copy);
        }
        self.push(self.now_ms + d1, payload);
    }

    fn send_peer(&mut self, from: ReplicaId, to: ReplicaId, message: &Message, encoded: &[u8]) {
        let copies = match self.nodes[from as usize].byzantine.as_mut() {
            Some(b) => b.outbound(to, message),
            None => vec![encoded.to_vec()],
        };
        for bytes in copies {
            self.transmit(from, Some(to), Payload::Peer { to, bytes });
        }
    }

    fn send_reply(&mut self, from: ReplicaId, reply: Reply) {
        let to = reply.client;
        let reply = match self.nodes[from as usize].byzantine.as_mut() {
            Some(b) => match b.reply(reply) {
                Some(r) => r,
                None => return,
            },
            None => reply,
        };
        let mut bytes = encode(&reply);
        if let Some(b) = self.nodes[from as usize].byzantine.as_mut() {
            bytes = b.reply_bytes(bytes);
        }
        if (to as usize) < self.clients.len() {
            self.transmit(from, None, Payload::Reply { to, from, bytes });
        }
    }

    // ---- replicas ------------------------------------------------------------------------

    fn reschedule_tick(&mut self, r: ReplicaId) {
        let now = self.now_ms;
        let node = &mut self.nodes[r as usize];
        let Some(replica) = node.replica.as_ref() else {
            return;
        };
        let Some(deadline) = replica.next_deadline() else {
            return;
        };
        let at = if deadline <= now { now + 1 } else { deadline };
        if node.tick_at.is_some_and(|t| t <= at && t > now) {
            return;
        }
        node.tick_at = Some(at);
        let incarnation = node.incarnation;
        self.push(
            at,
            Payload::Tick {
                replica: r,
                incarnation,
            },
        );
    }

    fn replica_event(&mut self, r: ReplicaId, event: Event) {
        let now = self.now_ms;
        let Some(replica) = self.nodes[r as usize].replica.as_mut() else {
            return;
        };
        let mut actions = Vec::new();
        replica.handle(now, event, &mut actions);
        self.run_actions(r, actions);
        self.reschedule_tick(r);
    }

    fn run_actions(&mut self, r: ReplicaId, actions: Vec<Action>) {
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Send { to, message } => {
                    if to < self.cfg.n && to != r {
                        let bytes = encode(&message);
                        self.send_peer(r, to, &message, &bytes);
                    }
                }
                Action::Broadcast { message } => {
                    let bytes = encode(&message);
                    for to in (0..self.cfg.n).filter(|&to| to != r) {
                        self.send_peer(r, to, &message, &bytes);
                    }
                }
                Action::Execute {
                    seq,
                    view: _,
                    requests,
                    snapshot,
                } => {
                    let more = self.execute(r, seq, &requests, snapshot);
                    queue.extend(more);
                }
                Action::ExecuteReadOnly { request, view } => {
                    let result = self.nodes[r as usize].service.read(&request.op);
                    let reply = Reply {
                        view,
                        replica: r,
                        client: request.client,
                        req_seq: request.req_seq,
                        read_only: true,
                        result,
                    };
                    self.send_reply(r, reply);
                }
                Action::Reply(reply) => self.send_reply(r, reply),
                Action::Restore { seq, service } => self.restore(r, seq, &service),
                Action::Persist {
                    ticket,
                    key,
                    record,
                } => {
                    let node = &mut self.nodes[r as usize];
                    node.disk.log.push((ticket, key, record, false));
                    if !node.disk.sync_scheduled {
                        // A group sync: everything logged until it completes goes with it.
                        node.disk.sync_scheduled = true;
                        let incarnation = node.incarnation;
                        let at = self.now_ms + self.net_rng.gen_range(1..=3);
                        self.push(
                            at,
                            Payload::Synced {
                                replica: r,
                                incarnation,
                            },
                        );
                    }
                }
                Action::SaveCheckpoint(snapshot) => {
                    let disk = &mut self.nodes[r as usize].disk;
                    if disk.log.iter().any(|e| !e.3) {
                        // Saved after the records requested before it.
                        disk.pending_save = Some(snapshot);
                    } else {
                        disk.save(snapshot);
                    }
                }
            }
        }
    }

    fn execute(
        &mut self,
        r: ReplicaId,
        seq: u64,
        requests: &shieldwall_core::Execution,
        snapshot: bool,
    ) -> Vec<Action> {
        let now = self.now_ms;
        let inject = self.params.inject;
        let node = &mut self.nodes[r as usize];
        let process = (r, node.incarnation);
        if self.params.trace {
            let reqs: Vec<String> = requests
                .iter()
                .map(|q| format!("{}:{}", q.client, q.req_seq))
                .collect();
            eprintln!("{now:>6} r{r} EXECUTE seq {seq} [{}]", reqs.join(","));
        }
        if node.honest {
            let mut seen: Vec<Request> = requests.iter().cloned().collect();
            if inject == Some(Injection::DivergentExecution { replica: r }) && !seen.is_empty() {
                seen.pop();
            }
            self.checker.executed(process, seq, &seen);
        }
        let node = &mut self.nodes[r as usize];
        let corrupt = inject == Some(Injection::CorruptService { replica: r });
        let results: Vec<Vec<u8>> = requests
            .iter()
            .map(|req| {
                if corrupt {
                    node.service
                        .apply(&KvOp::Put(b"k0".to_vec(), b"corrupt".to_vec()));
                }
                node.service.execute(&req.op)
            })
            .collect();
        let parts = node.service.snapshot_parts();
        let honest = node.honest;
        if honest {
            self.checker.state(
                process,
                seq,
                Digest::of("shieldwall sim state", &parts.concat()),
            );
        }
        let event = Event::Executed {
            seq,
            results,
            snapshot: snapshot.then_some(parts),
        };
        let mut more = Vec::new();
        if let Some(replica) = self.nodes[r as usize].replica.as_mut() {
            replica.handle(now, event, &mut more);
        }
        more
    }

    fn restore(&mut self, r: ReplicaId, seq: u64, bytes: &[u8]) {
        let node = &mut self.nodes[r as usize];
        let process = (r, node.incarnation);
        match KvService::restore(bytes) {
            Ok(service) => {
                if self.params.trace {
                    eprintln!("{:>6} r{r} RESTORE seq {seq}", self.now_ms);
                }
                let snap = service.snapshot();
                node.service = service;
                if node.honest {
                    self.checker.restored(process, seq);
                    self.checker
                        .state(process, seq, Digest::of("shieldwall sim state", &snap));
                }
            }
            Err(e) => {
                if node.honest {
                    self.checker.report(format!(
                        "restore: replica {r} was told to restore an undecodable snapshot at \
                         seq {seq}: {e}"
                    ));
                }
            }
        }
    }

    fn deliver_peer(&mut self, to: ReplicaId, bytes: &[u8]) {
        let Some(node) = self.nodes.get_mut(to as usize) else {
            return;
        };
        let Some(replica) = node.replica.as_mut() else {
            return;
        };
        let message = match decode::<Message>(bytes) {
            Ok(m) => m,
            Err(_) => {
                self.decode_errors += 1;
                return;
            }
        };
        // As the runtime's verify pool does: votes that can no longer change anything are
        // dropped before their signature is checked.
        if replica.settled_votes().covers(&message) {
            return;
        }
        match verify_message(&self.cfg, node.auth.as_ref(), &message) {
            Ok(()) => {
                if self.params.trace {
                    eprintln!("{:>6} r{to} <- {}", self.now_ms, summary(&message));
                }
                self.replica_event(to, Event::Message(message))
            }
            Err(rejection) => {
                replica.note_rejected(rejection.reason);
                if let Some((from, view)) = rejection.blame {
                    self.replica_event(to, Event::ProvenFault { from, view });
                }
            }
        }
    }

    fn deliver_request(&mut self, to: ReplicaId, bytes: &[u8]) {
        let Some(node) = self.nodes.get_mut(to as usize) else {
            return;
        };
        let Some(replica) = node.replica.as_mut() else {
            return;
        };
        let request = match decode::<SignedRequest>(bytes) {
            Ok(m) => m,
            Err(_) => {
                self.decode_errors += 1;
                return;
            }
        };
        if node
            .byzantine
            .as_ref()
            .is_some_and(|b| b.drops_request_from(request.request.client))
        {
            return;
        }
        match verify_request(&self.cfg, node.auth.as_ref(), &request) {
            Ok(()) => self.replica_event(to, Event::Request(request)),
            Err(reason) => replica.note_rejected(reason),
        }
    }

    fn crash(&mut self, r: ReplicaId) {
        if self.params.trace {
            eprintln!("{:>6} r{r} CRASH", self.now_ms);
        }
        let Some(node) = self.nodes.get_mut(r as usize) else {
            return;
        };
        if let Some(replica) = node.replica.take() {
            node.views_entered += replica.stats().views_entered;
            for (k, v) in &replica.stats().rejected {
                *self.rejected.entry(k).or_insert(0) += v;
            }
        }
        node.incarnation += 1;
        node.tick_at = None;
        node.service = KvService::new();
        node.disk.crash();
        if self.params.inject == Some(Injection::LyingDisks) {
            node.disk = SimDisk::default();
        }
    }

    fn restart(&mut self, r: ReplicaId) {
        let now = self.now_ms;
        let cfg = self.cfg.clone();
        let Some(node) = self.nodes.get_mut(r as usize) else {
            return;
        };
        if node.replica.is_some() {
            return;
        }
        let auth = node.auth.clone();
        let mut actions = Vec::new();
        let on_disk = node.disk.checkpoint.is_some() || !node.disk.log.is_empty();
        let amnesiac = !(cfg.durability == Durability::Durable && on_disk);
        node.amnesiac = amnesiac;
        let replica = if !amnesiac {
            let records: Vec<Record> = node.disk.log.iter().map(|e| e.2.clone()).collect();
            Replica::recover(
                cfg,
                r,
                auth,
                now,
                node.disk.checkpoint.clone(),
                records,
                &mut actions,
            )
            .map_err(|e| e.to_string())
        } else {
            Replica::restarted(cfg, r, auth, now).map_err(|e| e.to_string())
        };
        match replica {
            Ok(replica) => {
                if self.params.trace {
                    eprintln!(
                        "{now:>6} r{r} RESTART{}",
                        if actions.is_empty() { "" } else { " from disk" }
                    );
                }
                node.replica = Some(replica);
                node.service = KvService::new();
                self.run_actions(r, actions);
                self.reschedule_tick(r);
            }
            Err(e) => self
                .checker
                .report(format!("restart of replica {r} failed: {e}")),
        }
    }

    /// Replicas that count against f ([`Node::counts_against_f`]).
    fn faulty(&self) -> usize {
        self.nodes.iter().filter(|n| n.counts_against_f()).count()
    }

    /// Crash `r` if that keeps the faulty replicas within f; whether it crashed.
    fn crash_within_budget(&mut self, r: ReplicaId) -> bool {
        let already = self
            .nodes
            .get(r as usize)
            .is_none_or(Node::counts_against_f);
        if !already && self.faulty() < self.cfg.f as usize {
            self.crash(r);
            return true;
        }
        false
    }

    /// The leader of the highest view a live correct replica is in.
    fn current_leader(&self) -> ReplicaId {
        let view = self
            .nodes
            .iter()
            .filter(|n| n.honest)
            .filter_map(|n| n.replica.as_ref())
            .map(|r| r.view())
            .max()
            .unwrap_or(0);
        self.cfg.leader(view)
    }

    // ---- clients -------------------------------------------------------------------------

    fn client_out(&mut self, c: ClientId, out: Vec<ClientOut>) {
        for o in out {
            match o {
                ClientOut::Send {
                    to,
                    bytes,
                    submitted,
                } => {
                    if let Some(req) = submitted {
                        self.checker.submitted(&req);
                    }
                    self.client_requests_sent += 1;
                    self.transmit(to, None, Payload::Request { to, bytes });
                }
                ClientOut::Wake(at) => {
                    self.push(at.max(self.now_ms), Payload::ClientWake { client: c })
                }
            }
        }
    }

    fn deliver_reply(&mut self, c: ClientId, from: ReplicaId, bytes: &[u8]) {
        let now = self.now_ms;
        let Some(client) = self.clients.get_mut(c as usize) else {
            return;
        };
        let reply = match decode::<Reply>(bytes) {
            Ok(r) => r,
            Err(_) => {
                client.bad_replies += 1;
                return;
            }
        };
        let mut out = Vec::new();
        client.on_reply(now, from, reply, &mut out);
        self.client_out(c, out);
    }

    // ---- main loop -----------------------------------------------------------------------

    fn correct_clients_done(&self) -> bool {
        self.clients
            .iter()
            .filter(|c| c.is_correct())
            .all(Client::done)
    }

    fn step(&mut self, q: Queued) {
        self.now_ms = self.now_ms.max(q.at_ms);
        self.steps += 1;
        match q.payload {
            Payload::Peer { to, bytes } => self.deliver_peer(to, &bytes),
            Payload::Request { to, bytes } => self.deliver_request(to, &bytes),
            Payload::Reply { to, from, bytes } => self.deliver_reply(to, from, &bytes),
            Payload::Tick {
                replica,
                incarnation,
            } => {
                let node = &mut self.nodes[replica as usize];
                if node.incarnation == incarnation && node.tick_at == Some(q.at_ms) {
                    node.tick_at = None;
                    self.replica_event(replica, Event::Tick);
                }
            }
            Payload::ClientWake { client } => {
                let now = self.now_ms;
                let mut out = Vec::new();
                if let Some(c) = self.clients.get_mut(client as usize) {
                    c.wake(now, &mut out);
                }
                self.client_out(client, out);
            }
            Payload::CrashLeader => {
                self.crash_within_budget(self.current_leader());
            }
            Payload::Crash { victim, down_ms } => {
                let victim = victim.unwrap_or_else(|| self.current_leader());
                if self.crash_within_budget(victim) {
                    if self.cfg.durability == Durability::Durable && self.net_rng.gen_bool(0.3) {
                        // The disk is lost too: the replica restarts as an amnesiac.
                        if self.params.trace {
                            eprintln!("{:>6} r{victim} DISK WIPED", self.now_ms);
                        }
                        self.nodes[victim as usize].disk = SimDisk::default();
                    }
                    self.push(self.now_ms + down_ms, Payload::Restart(victim));
                }
            }
            Payload::Restart(r) => self.restart(r),
            Payload::Synced {
                replica,
                incarnation,
            } => {
                let node = &mut self.nodes[replica as usize];
                if node.incarnation == incarnation {
                    if let Some(ticket) = node.disk.sync() {
                        self.replica_event(replica, Event::Persisted { ticket });
                    }
                }
            }
            Payload::CrashAll(downs) => {
                for (r, down_ms) in downs.into_iter().enumerate() {
                    let r = r as ReplicaId;
                    if self.nodes[r as usize].replica.is_some() {
                        self.crash(r);
                        self.push(self.now_ms + down_ms, Payload::Restart(r));
                    }
                }
            }
            Payload::EndFaults => {
                self.clean = true;
                for c in &mut self.clients {
                    c.stop_issuing();
                }
                let crashed: Vec<ReplicaId> = (0..self.cfg.n)
                    .filter(|&r| self.nodes[r as usize].replica.is_none())
                    .collect();
                // Crash-restart victims come back; crashed leaders stay down (f of them).
                if !self.plan.crashes.is_empty() {
                    for r in crashed {
                        self.restart(r);
                    }
                }
            }
        }
    }

    pub(crate) fn run(mut self) -> RunReport {
        let deadline_ms = self.plan.fault_end_ms + self.params.liveness_ms;
        let mut timed_out = false;
        while let Some(Reverse(q)) = self.queue.pop() {
            if q.at_ms > deadline_ms {
                timed_out = true;
                break;
            }
            self.step(q);
            if self.correct_clients_done() {
                break;
            }
            if self.steps >= self.params.max_steps {
                self.checker.report(format!(
                    "step budget of {} exhausted at {} ms",
                    self.params.max_steps, self.now_ms
                ));
                break;
            }
        }
        if !self.correct_clients_done() {
            let why = if timed_out {
                "deadline passed"
            } else {
                "event queue drained"
            };
            let mut stuck = Vec::new();
            for c in self.clients.iter().filter(|c| c.is_correct() && !c.done()) {
                stuck.push(format!(
                    "client {} outstanding {:?}",
                    c.id(),
                    c.outstanding()
                ));
            }
            let replicas: Vec<String> = self
                .nodes
                .iter()
                .enumerate()
                .map(|(i, n)| match &n.replica {
                    Some(r) => format!(
                        "r{i}: view {} {:?} executed {} stable {}",
                        r.view(),
                        r.status(),
                        r.last_executed(),
                        r.stable_checkpoint()
                    ),
                    None => format!("r{i}: down"),
                })
                .collect();
            self.checker.report(format!(
                "liveness: {why} at {} ms with requests incomplete ({}); {}",
                self.now_ms,
                stuck.join("; "),
                replicas.join(", ")
            ));
        }
        let history: Vec<_> = self
            .clients
            .iter()
            .filter(|c| c.is_correct())
            .flat_map(|c| c.history().iter().cloned())
            .collect();
        for v in check_linearizability(self.checker.committed(), &history) {
            self.checker.report(v);
        }
        let mut rejected = self.rejected.clone();
        let mut view_changes = 0;
        for n in self.nodes.iter().filter(|n| n.honest) {
            let mut views = n.views_entered;
            if let Some(r) = &n.replica {
                views += r.stats().views_entered;
                for (k, v) in &r.stats().rejected {
                    *rejected.entry(k).or_insert(0) += v;
                }
            }
            view_changes = view_changes.max(views);
        }
        if let Some(max) = self.plan.view_changes_max {
            if view_changes > max {
                self.checker.report(format!(
                    "{view_changes} view changes where at most {max} may happen (no replica \
                     is faulty: a client alone made the followers suspect the leader)"
                ));
            }
        }
        RunReport {
            steps: self.steps,
            commits: self.checker.commits() as u64,
            view_changes,
            completed_ops: history.len() as u64,
            sim_time_ms: self.now_ms,
            decode_errors: self.decode_errors,
            client_requests_sent: self.client_requests_sent,
            rejected: rejected
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            violations: self.checker.violations(),
        }
    }
}

/// One line describing a message, for traces.
fn summary(m: &Message) -> String {
    let reqs = |b: &[SignedRequest]| {
        b.iter()
            .map(|r| format!("{}:{}", r.request.client, r.request.req_seq))
            .collect::<Vec<_>>()
            .join(",")
    };
    match m {
        Message::PrePrepare(p) => format!(
            "PRE-PREPARE from {} v{} s{} {:?} [{}]",
            p.from,
            p.body.view,
            p.body.seq,
            p.body.batch_digest,
            reqs(&p.body.batch)
        ),
        Message::Prepare(v) => {
            format!(
                "PREPARE from {} v{} s{} {:?}",
                v.from, v.body.view, v.body.seq, v.body.batch_digest
            )
        }
        Message::Commit(v) => {
            format!(
                "COMMIT from {} v{} s{} {:?}",
                v.from, v.body.view, v.body.seq, v.body.batch_digest
            )
        }
        Message::Checkpoint(c) => format!("CHECKPOINT from {} s{}", c.from, c.body.seq),
        Message::ViewChange(vc) => format!(
            "VIEW-CHANGE from {} to v{} ckpt {} prepared [{}]",
            vc.from,
            vc.body.new_view,
            vc.body.checkpoint.seq,
            vc.body
                .prepared
                .iter()
                .map(|p| format!(
                    "s{}v{}{:?}",
                    p.pre_prepare.body.seq,
                    p.pre_prepare.body.view,
                    p.pre_prepare.body.batch_digest
                ))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        Message::NewView(nv) => format!(
            "NEW-VIEW from {} v{} vcs {} proposals [{}]",
            nv.from,
            nv.body.view,
            nv.body.view_changes.len(),
            nv.body
                .pre_prepares
                .iter()
                .map(|p| {
                    format!(
                        "s{}{:?}[{}]",
                        p.body.seq,
                        p.body.batch_digest,
                        reqs(&p.body.batch)
                    )
                })
                .collect::<Vec<_>>()
                .join(" ")
        ),
        Message::Fetch(f) => format!(
            "FETCH from {} executed {} v{}{}",
            f.from,
            f.body.executed,
            f.body.view,
            if f.body.digests_only {
                " digests only"
            } else {
                ""
            }
        ),
        Message::FetchReply(r) => format!(
            "FETCH-REPLY from {} v{} snapshot {:?} batches [{}] digests [{}]",
            r.from,
            r.body.view,
            r.body.snapshot.as_ref().map(|s| s.checkpoint.seq),
            r.body
                .batches
                .iter()
                .map(|b| format!("s{}", b.pre_prepare.seq))
                .collect::<Vec<_>>()
                .join(","),
            r.body
                .digests
                .iter()
                .map(|d| format!("s{}", d.seq))
                .collect::<Vec<_>>()
                .join(",")
        ),
        Message::Forward(f) => format!(
            "FORWARD from {} v{} [{}]",
            f.from,
            f.body.view,
            reqs(&f.body.requests)
        ),
        Message::FetchChunk(f) => format!(
            "FETCH-CHUNK from {} s{} #{}",
            f.from, f.body.seq, f.body.index
        ),
        Message::Chunk(c) => format!(
            "CHUNK from {} s{} #{} ({} bytes)",
            c.from,
            c.body.seq,
            c.body.index,
            c.body.bytes.len()
        ),
    }
}
