//! The protocol core's thread and the service's thread.
//!
//! The core thread owns the [`Replica`] engine: it takes verified inputs from one queue, calls
//! the engine with the current time, and carries out the actions: frames to peer queues
//! (`try_send`: a full queue drops the frame, the core never waits on a peer), batches to the
//! executor, replies to the client router. The executor thread owns the [`Service`] and runs
//! ordered batches, read-only requests and snapshot restores in the order the core emits them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use shieldwall_core::{Action, ClientId, Event, Replica, Reply, Request, SettledVotes, Status};
use shieldwall_wire::Frame;
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, error, info};

use super::conn::{ClientRouter, PeerLinks, SettledCell};
use super::storage::StorageJob;
use super::{ReplicaStatus, StatusCell};
use crate::metrics::Metrics;
use crate::outbox::Flush;
use crate::service::Service;

/// An input for the core thread.
#[derive(Debug)]
pub(crate) enum CoreInput {
    /// A verified event; the permit returns the sender's budget once handled.
    Event(Event, Option<OwnedSemaphorePermit>),
    /// Stop the thread.
    Shutdown,
}

/// A job for the service thread.
#[derive(Debug)]
pub(crate) enum ExecJob {
    Execute {
        seq: u64,
        requests: Vec<Request>,
        snapshot: bool,
    },
    Restore {
        seq: u64,
        service: bytes::Bytes,
    },
}

/// The service, shared by the core thread and the service thread, and how much ordered work
/// the service thread holds. Both execute ordered batches: the service thread normally, the
/// core thread itself when it has nothing else to do and the service thread holds no ordered
/// work (so the order is kept). At one client that saves two thread hand-offs per request (to
/// the service thread and back); under load the service thread executes while the core orders.
pub(crate) struct SharedService {
    service: std::sync::Mutex<Box<dyn Service>>,
    /// Ordered jobs sent to the service thread and not finished yet.
    pending: AtomicUsize,
}

impl SharedService {
    pub(crate) fn new(service: Box<dyn Service>) -> SharedService {
        SharedService {
            service: std::sync::Mutex::new(service),
            pending: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Box<dyn Service>> {
        // A panic inside the service ends its thread, which is fatal for the replica; the
        // lock is only ever poisoned on the way out.
        self.service.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Execute an ordered batch: the engine's `Executed` event.
fn execute(service: &mut dyn Service, seq: u64, requests: &[Request], snapshot: bool) -> Event {
    let results = requests
        .iter()
        .map(|r| service.execute(r.client, &r.op))
        .collect();
    let snapshot = snapshot.then(|| service.snapshot());
    Event::Executed {
        seq,
        results,
        snapshot,
    }
}

/// A read-only request for the service thread.
#[derive(Debug)]
pub(crate) struct ReadJob {
    pub request: Request,
    pub view: u64,
}

/// Wall-clock-anchored monotonic milliseconds: distinct across restarts (the engine uses the
/// start time to tell its own incarnation's state-transfer replies from stale ones), and never
/// going backwards within a run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    base_ms: u64,
    start: Instant,
}

impl Clock {
    pub(crate) fn new() -> Clock {
        let base_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Clock {
            base_ms,
            start: Instant::now(),
        }
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.base_ms + self.start.elapsed().as_millis() as u64
    }
}

/// Requests whose arrival time is remembered for the latency histogram, at most.
const LATENCY_TRACKED_MAX: usize = 100_000;
/// How often the core publishes its status and engine counters.
const PUBLISH_EVERY: Duration = Duration::from_millis(100);

pub(crate) struct CoreThread {
    pub replica: Replica,
    pub clock: Clock,
    pub rx: Receiver<CoreInput>,
    pub links: Arc<PeerLinks>,
    pub router: Arc<ClientRouter>,
    pub exec_tx: Sender<ExecJob>,
    pub service: Arc<SharedService>,
    pub read_tx: Sender<ReadJob>,
    /// Operation bytes of the read-only requests queued for the service.
    pub read_bytes: Arc<AtomicUsize>,
    pub read_bytes_max: usize,
    pub metrics: Arc<Metrics>,
    pub status: Arc<StatusCell>,
    /// Durable mode: the storage thread's queue (bounded; the core waits when it is full,
    /// since a record must never be dropped).
    pub storage_tx: Option<Sender<StorageJob>>,
    /// Actions to carry out before the first input ([`Replica::recover`]'s restore,
    /// re-executions and re-sent votes).
    pub initial: Vec<Action>,
    /// Where the verify pool reads which votes it may drop unchecked.
    pub settled: Arc<SettledCell>,
    /// Frames queued while carrying out the actions of one input, sent once they all are.
    pub flush: Flush,
}

impl CoreThread {
    pub(crate) fn run(mut self) {
        let mut actions = std::mem::take(&mut self.initial);
        let mut arrivals: HashMap<(ClientId, u64), Instant> = HashMap::new();
        let mut last_publish = Instant::now();
        let mut last_view = self.replica.view();
        let mut last_settled = SettledVotes::default();
        self.publish();
        loop {
            let now = self.clock.now_ms();
            if self.replica.next_deadline().is_some_and(|d| d <= now) {
                self.replica.handle(now, Event::Tick, &mut actions);
            }
            if actions.is_empty() {
                let input = match self.replica.next_deadline() {
                    Some(d) => match self
                        .rx
                        .recv_timeout(Duration::from_millis(d.saturating_sub(now).max(1)))
                    {
                        Ok(i) => Some(i),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => break,
                    },
                    None => match self.rx.recv_timeout(PUBLISH_EVERY) {
                        Ok(i) => Some(i),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => break,
                    },
                };
                match input {
                    Some(CoreInput::Event(event, permit)) => {
                        if let Event::Request(r) = &event {
                            if !r.request.read_only && arrivals.len() < LATENCY_TRACKED_MAX {
                                arrivals
                                    .entry((r.request.client, r.request.req_seq))
                                    .or_insert_with(Instant::now);
                            }
                        }
                        self.replica
                            .handle(self.clock.now_ms(), event, &mut actions);
                        drop(permit);
                    }
                    Some(CoreInput::Shutdown) => break,
                    None => {}
                }
            }
            // Carrying out an action can give the engine an event (a batch executed here),
            // whose actions are carried out in the next round.
            while !actions.is_empty() {
                for action in std::mem::take(&mut actions) {
                    self.act(action, &mut arrivals, &mut actions);
                }
            }
            // With nothing else to do the core writes its frames itself (no wake-up of a
            // writer task on their way out); with inputs waiting, the writer tasks coalesce.
            self.flush.run(self.rx.is_empty());
            let settled = self.replica.settled_votes();
            if settled != last_settled {
                last_settled = settled;
                self.settled.set(settled);
            }
            let view_changed = self.replica.view() != last_view;
            if view_changed {
                last_view = self.replica.view();
                info!(
                    view = last_view,
                    leader = self.replica.config().leader(last_view),
                    "entered view"
                );
            }
            // A new view is published at once (operators and tests watch for it).
            if view_changed || last_publish.elapsed() >= PUBLISH_EVERY {
                last_publish = Instant::now();
                self.publish();
                // Requests never answered here (stale, dropped) must not pin memory.
                arrivals.retain(|_, t| t.elapsed() < Duration::from_secs(60));
            }
        }
        self.publish();
        debug!("core thread stopped");
    }

    fn act(
        &mut self,
        action: Action,
        arrivals: &mut HashMap<(ClientId, u64), Instant>,
        next: &mut Vec<Action>,
    ) {
        match action {
            Action::Send { to, message } => {
                self.links
                    .send(to, Frame::Peer(message).encode(), &mut self.flush);
            }
            Action::Broadcast { message } => {
                // One encoding (and one signature, done by the engine) shared by every peer.
                let bytes = Frame::Peer(message).encode();
                self.links.broadcast(&bytes, &mut self.flush);
            }
            Action::Execute {
                seq,
                requests,
                snapshot,
                ..
            } => {
                // Pending work first, then the queue: the service thread queues a batch's
                // results before it stops counting the batch as pending.
                if self.service.pending.load(Ordering::Acquire) == 0 && self.rx.is_empty() {
                    // Idle, and the service thread holds no ordered work: execute here, once
                    // what earlier actions queued (replies, the next proposal) is on its way.
                    self.flush.run(true);
                    let event = execute(self.service.lock().as_mut(), seq, &requests, snapshot);
                    self.replica.handle(self.clock.now_ms(), event, next);
                } else {
                    self.to_executor(ExecJob::Execute {
                        seq,
                        requests,
                        snapshot,
                    });
                }
            }
            Action::ExecuteReadOnly { request, view } => {
                let len = request.op.len();
                let queued = self.read_bytes.load(Ordering::Relaxed);
                if queued + len > self.read_bytes_max
                    || self.read_tx.try_send(ReadJob { request, view }).is_err()
                {
                    // The client falls back to an ordered request.
                    self.metrics.drop_frame("read_only");
                } else {
                    self.read_bytes.fetch_add(len, Ordering::Relaxed);
                }
            }
            Action::Reply(reply) => {
                if let Some(t) = arrivals.remove(&(reply.client, reply.req_seq)) {
                    self.metrics
                        .request_latency
                        .observe(t.elapsed().as_secs_f64());
                }
                self.router.send(&reply, &mut self.flush);
            }
            Action::Restore { seq, service } => {
                info!(seq, "installing a snapshot from state transfer");
                self.to_executor(ExecJob::Restore { seq, service });
            }
            Action::Persist {
                ticket,
                key,
                record,
            } => self.to_storage(StorageJob::Append {
                ticket,
                key,
                record,
            }),
            Action::SaveCheckpoint(snapshot) => {
                self.to_storage(StorageJob::Checkpoint(Box::new(snapshot)))
            }
        }
    }

    /// Queue an ordered job for the service thread. If that thread is gone (it reported a
    /// fatal error), the job stays counted, so the core never executes on a service that
    /// missed it.
    fn to_executor(&self, job: ExecJob) {
        self.service.pending.fetch_add(1, Ordering::AcqRel);
        let _ = self.exec_tx.send(job);
    }

    /// Hand a job to the storage thread, waiting if its queue is full. If the thread is gone it
    /// has reported a fatal error and the process is stopping; the engine keeps its outputs
    /// held, so nothing that depends on the lost record leaves the replica.
    fn to_storage(&self, job: StorageJob) {
        match &self.storage_tx {
            Some(tx) => {
                if tx.send(job).is_err() {
                    error!("the storage thread stopped; durable outputs stay held");
                }
            }
            None => error!("durable-mode action in a memory-mode replica; ignored"),
        }
    }

    fn publish(&self) {
        let r = &self.replica;
        let m = &self.metrics;
        m.sync_engine(r.stats());
        m.view.set(r.view() as i64);
        m.leader.set(i64::from(r.config().leader(r.view())));
        m.last_executed.set(r.last_executed() as i64);
        m.stable_checkpoint.set(r.stable_checkpoint() as i64);
        m.pending_requests.set(r.pending_requests() as i64);
        m.held_outputs.set(r.held_outputs() as i64);
        let status = match r.status() {
            Status::Normal => 0,
            Status::ViewChanging => 1,
            Status::Recovering => 2,
        };
        m.status.set(status);
        let published = ReplicaStatus {
            id: r.id(),
            view: r.view(),
            leader: r.config().leader(r.view()),
            status: match r.status() {
                Status::Normal => "normal",
                Status::ViewChanging => "view-changing",
                Status::Recovering => "recovering",
            }
            .into(),
            last_executed: r.last_executed(),
            stable_checkpoint: r.stable_checkpoint(),
            pending_requests: r.pending_requests() as u64,
            peers_connected: self.links.connected() as u32,
            n: r.config().n,
            f: r.config().f,
            fault_model: r.config().fault_model.to_string(),
            known_committed: r.known_committed(),
            state_transfer: r.transferring_state(),
            quorum: r.config().quorum() as u32,
            lag_max: r.config().checkpoint_interval,
        };
        m.known_committed.set(published.known_committed as i64);
        m.ready.set(i64::from(published.readiness().is_ok()));
        self.status.set(published);
    }
}

/// Run the service: ordered batches (reported back to the core), read-only requests (answered
/// directly) and restores. A restore that fails is fatal: the replica would otherwise run on a
/// state it does not have.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_executor(
    id: u32,
    service: Arc<SharedService>,
    exec_rx: Receiver<ExecJob>,
    read_rx: Receiver<ReadJob>,
    read_bytes: Arc<AtomicUsize>,
    core_tx: Sender<CoreInput>,
    router: Arc<ClientRouter>,
    fatal: Sender<String>,
) {
    loop {
        // Ordered work first; reads in between.
        let job = match exec_rx.try_recv() {
            Ok(job) => job,
            Err(_) => {
                crossbeam_channel::select! {
                    recv(exec_rx) -> j => match j { Ok(j) => j, Err(_) => break },
                    recv(read_rx) -> r => {
                        match r {
                            Ok(r) => {
                                read_bytes.fetch_sub(r.request.op.len(), Ordering::Relaxed);
                                read(id, &service, r, &router)
                            }
                            Err(_) => break,
                        }
                        continue;
                    }
                }
            }
        };
        match job {
            ExecJob::Execute {
                seq,
                requests,
                snapshot,
            } => {
                let event = execute(service.lock().as_mut(), seq, &requests, snapshot);
                // The results are queued for the core before the job counts as finished: a
                // core that sees no pending work and an empty queue has handled them.
                if core_tx.send(CoreInput::Event(event, None)).is_err() {
                    break;
                }
                service.pending.fetch_sub(1, Ordering::AcqRel);
            }
            ExecJob::Restore {
                seq,
                service: bytes,
            } => {
                let restored = service.lock().restore(&bytes);
                if let Err(e) = restored {
                    // The restore stays counted as pending: the core must not execute on a
                    // state the service does not have while the process stops.
                    error!(seq, "{e}");
                    let _ = fatal.send(format!("restoring the snapshot at seq {seq}: {e}"));
                    break;
                }
                service.pending.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
    debug!("executor thread stopped");
}

fn read(id: u32, service: &SharedService, job: ReadJob, router: &ClientRouter) {
    let r = job.request;
    // The service is locked for the read only, not while the reply goes out.
    let result = service.lock().read(r.client, &r.op);
    let mut flush = Flush::default();
    router.send(
        &Reply {
            view: job.view,
            replica: id,
            client: r.client,
            req_seq: r.req_seq,
            read_only: true,
            result,
        },
        &mut flush,
    );
    // Reads are answered one at a time, as they come.
    flush.run(true);
}
