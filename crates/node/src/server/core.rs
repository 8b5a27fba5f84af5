//! The protocol core and the service's thread.
//!
//! The core ([`CoreHandle`]) holds the [`Replica`] engine: it takes verified inputs one at a
//! time, calls the engine with the current time, and carries out the actions: frames to peer
//! and client queues (a full queue drops the frame, the core never waits on a peer), batches to
//! the service thread (or executed in place when that thread is idle), replies to the client
//! router. It runs on the core thread, or on the thread that brings an input when it is idle
//! (ADR 016). The service thread runs ordered batches, read-only requests and snapshot restores
//! in the order the core emits them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};
use shieldwall_core::{
    Action, ClientId, Event, Execution, Replica, Reply, Request, SettledVotes, Status,
};
use shieldwall_wire::Frame;
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, error, info};

use super::conn::{ClientRouter, PeerLinks, SettledCell};
use super::core_queue::CoreQueue;
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
        requests: Execution,
        snapshot: bool,
    },
    Restore {
        seq: u64,
        service: bytes::Bytes,
    },
}

/// The service, shared by the core and the service thread, and how much ordered work the
/// service thread holds. Both execute ordered batches: the service thread normally, the core
/// itself (on whichever thread runs it) when it has nothing else to do and the service thread
/// holds no ordered work (so the order is kept). At one client that saves two thread hand-offs per request (to
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
fn execute(service: &mut dyn Service, seq: u64, requests: &Execution, snapshot: bool) -> Event {
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
/// Room an input handled in place needs in the storage queue (its records, generously).
const STORAGE_ROOM_PER_INPUT: usize = 64;
/// How often the core publishes its status and engine counters.
const PUBLISH_EVERY: Duration = Duration::from_millis(100);

/// The parts of the protocol core: the engine and what carries out its actions.
pub(crate) struct CoreParts {
    pub replica: Replica,
    pub clock: Clock,
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
    /// since a record must never be dropped; only the core thread runs the core then).
    pub storage_tx: Option<Sender<StorageJob>>,
    /// Actions to carry out before the first input ([`Replica::recover`]'s restore,
    /// re-executions and re-sent votes).
    pub initial: Vec<Action>,
    /// Where the verify pool reads which votes it may drop unchecked.
    pub settled: Arc<SettledCell>,
}

/// The protocol core and the one place that runs it. Inputs are handled one at a time, in
/// the order they are queued, by whichever thread holds the core's lock: the core thread, or,
/// when the core is idle and nothing is queued, the thread that brings the input
/// ([`CoreHandle::deliver`]: a connection task or a verify pool thread). At one client that
/// saves a thread wake-up per message (tens of microseconds on a host whose cores are shared);
/// under load inputs queue up and the core thread takes them in turn, as before.
pub(crate) struct CoreHandle {
    queue: Arc<CoreQueue<CoreInput>>,
    /// `None` until [`CoreHandle::install`], and again once the core thread has stopped.
    core: Mutex<Option<Core>>,
    /// When the core thread next looks at the engine's timers, in the engine's milliseconds: an
    /// input handled elsewhere that sets an earlier timer wakes it.
    wake_at_ms: AtomicU64,
}

impl CoreHandle {
    pub(crate) fn new(queue: Arc<CoreQueue<CoreInput>>) -> CoreHandle {
        CoreHandle {
            queue,
            core: Mutex::new(None),
            wake_at_ms: AtomicU64::new(0),
        }
    }

    /// Give the handle its core; inputs delivered before are queued.
    pub(crate) fn install(&self, parts: CoreParts) {
        let mut core = Core {
            last_view: parts.replica.view(),
            actions: Vec::new(),
            arrivals: HashMap::new(),
            last_settled: SettledVotes::default(),
            last_publish: Instant::now(),
            flush: Flush::default(),
            runner: Runner::CoreThread,
            running: false,
            queue: self.queue.clone(),
            parts,
        };
        core.actions = std::mem::take(&mut core.parts.initial);
        *self.core.lock().unwrap_or_else(|e| e.into_inner()) = Some(core);
    }

    /// Hand the core a verified input: handled here and now if the core is idle and nothing is
    /// queued before it, else queued for the core thread. Handled here, the work is bounded:
    /// the input, any timer due, at most one batch executed (none that ends with a snapshot),
    /// and in durable mode only while the storage queue has room (a full one would make this
    /// thread wait for the disk).
    pub(crate) fn deliver(&self, event: Event, permit: Option<OwnedSemaphorePermit>) {
        if self.queue.is_empty() {
            // Only the lock holder takes inputs from the queue: holding it and finding the
            // queue empty, no queued input is overtaken.
            if let Ok(mut guard) = self.core.try_lock() {
                if let Some(core) = guard
                    .as_mut()
                    .filter(|c| c.running && c.storage_has_room() && self.queue.is_empty())
                {
                    core.runner = Runner::Delivering { may_execute: true };
                    core.housekeeping();
                    core.input(event, permit);
                    core.settle();
                    let wake_at = self.wake_at_ms.load(Ordering::Acquire);
                    if core
                        .parts
                        .replica
                        .next_deadline()
                        .is_some_and(|d| d < wake_at)
                    {
                        self.queue.wake();
                    }
                    return;
                }
            }
        }
        let _ = self.queue.send(CoreInput::Event(event, permit));
    }

    /// Let inputs be handled on the delivering thread without a core thread having started.
    #[cfg(test)]
    pub(crate) fn mark_running(&self) {
        if let Some(core) = self.core.lock().unwrap().as_mut() {
            core.running = true;
        }
    }

    /// The engine's count of pending requests (tests look at where an input was handled).
    #[cfg(test)]
    pub(crate) fn pending_requests(&self) -> usize {
        self.core
            .lock()
            .unwrap()
            .as_ref()
            .map_or(0, |c| c.parts.replica.pending_requests())
    }

    /// Poison the core's lock, as a panic while running the core would.
    #[cfg(test)]
    pub(crate) fn poison(self: &Arc<Self>) {
        let me = self.clone();
        let _ = std::thread::spawn(move || {
            let _guard = me.core.lock();
            panic!("a panic while holding the core (test)");
        })
        .join();
    }

    /// The core thread: queued inputs, timers, periodic status, until [`CoreInput::Shutdown`].
    /// A poisoned lock (a panic while some thread ran the core) ends it, which the server
    /// reports as fatal. However it ends, the core is dropped with it: its queues to the
    /// service and storage threads close, so those threads end and the server can stop.
    pub(crate) fn run(&self) {
        let _stopped = Stopped(self);
        let Ok(mut guard) = self.core.lock() else {
            return;
        };
        let Some(core) = guard.as_mut() else {
            error!("the core thread started without a core");
            return;
        };
        core.publish();
        core.runner = Runner::CoreThread;
        // The recovered state's actions go out before any input is handled.
        core.settle();
        core.running = true;
        loop {
            let Some(core) = guard.as_mut() else {
                return;
            };
            core.runner = Runner::CoreThread;
            // Timers and status are looked at between any two inputs: a steady stream of
            // inputs must not starve them.
            core.housekeeping();
            match self.queue.try_recv() {
                Some(CoreInput::Event(event, permit)) => {
                    core.input(event, permit);
                    core.settle();
                    continue;
                }
                Some(CoreInput::Shutdown) => {
                    core.publish();
                    *guard = None;
                    debug!("core thread stopped");
                    return;
                }
                None => {}
            }
            let now = core.parts.clock.now_ms();
            let wait = core
                .parts
                .replica
                .next_deadline()
                .map_or(PUBLISH_EVERY, |d| {
                    Duration::from_millis(d.saturating_sub(now).max(1))
                })
                .min(PUBLISH_EVERY);
            self.wake_at_ms
                .store(now + wait.as_millis() as u64, Ordering::Release);
            drop(guard);
            self.queue.wait(wait);
            guard = match self.core.lock() {
                Ok(g) => g,
                Err(_) => {
                    error!("the core panicked on another thread");
                    return;
                }
            };
        }
    }
}

/// When the core thread ends, by return or by panic, poisoned lock or not: drops the core
/// (closing its queues to the service and storage threads), then closes the input queue (the
/// producers learn that the core is gone).
struct Stopped<'a>(&'a CoreHandle);

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        let core = self.0.core.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(core);
        self.0.queue.close();
    }
}

/// Which thread runs the core in the current round.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Runner {
    /// The core thread: it may execute any number of batches in place.
    CoreThread,
    /// A connection task or verify pool thread, which must not be held up long: one batch
    /// at most, and none that ends with a snapshot.
    Delivering { may_execute: bool },
}

/// The core and the state of its current round of work.
struct Core {
    parts: CoreParts,
    queue: Arc<CoreQueue<CoreInput>>,
    /// Actions still to carry out.
    actions: Vec<Action>,
    /// Arrival times of requests, for the latency histogram.
    arrivals: HashMap<(ClientId, u64), Instant>,
    last_publish: Instant,
    last_view: u64,
    last_settled: SettledVotes,
    /// Frames queued while carrying out the actions of one input, sent once they all are.
    flush: Flush,
    runner: Runner,
    /// The core thread has carried out the recovered state's actions: other threads may run
    /// the core.
    running: bool,
}

impl Core {
    /// Fire the engine's timers if one is due; publish the status if it is time.
    fn housekeeping(&mut self) {
        let now = self.parts.clock.now_ms();
        if self.parts.replica.next_deadline().is_some_and(|d| d <= now) {
            self.input(Event::Tick, None);
            self.settle();
        }
        if self.last_publish.elapsed() >= PUBLISH_EVERY {
            self.publish();
            // Requests never answered here (stale, dropped) must not pin memory.
            self.arrivals
                .retain(|_, t| t.elapsed() < Duration::from_secs(60));
        }
    }

    /// Whether the runner may execute a batch (ending with a snapshot or not) here; counts it.
    fn may_execute_in_place(&mut self, snapshot: bool) -> bool {
        match &mut self.runner {
            Runner::CoreThread => true,
            Runner::Delivering { may_execute } => {
                let yes = *may_execute && !snapshot;
                *may_execute &= !yes;
                yes
            }
        }
    }

    /// Whether the storage queue (durable mode) can take an input's records without waiting.
    fn storage_has_room(&self) -> bool {
        self.parts.storage_tx.as_ref().is_none_or(|tx| {
            tx.capacity()
                .is_none_or(|cap| tx.len() + STORAGE_ROOM_PER_INPUT <= cap)
        })
    }

    fn input(&mut self, event: Event, permit: Option<OwnedSemaphorePermit>) {
        if let Event::Request(r) = &event {
            if !r.request.read_only && self.arrivals.len() < LATENCY_TRACKED_MAX {
                self.arrivals
                    .entry((r.request.client, r.request.req_seq))
                    .or_insert_with(Instant::now);
            }
        }
        let now = self.parts.clock.now_ms();
        self.parts.replica.handle(now, event, &mut self.actions);
        drop(permit);
    }

    /// Carry out the actions of the last input and what they lead to; send the frames.
    fn settle(&mut self) {
        // Carrying out an action can give the engine an event (a batch executed here),
        // whose actions are carried out in the next round.
        while !self.actions.is_empty() {
            for action in std::mem::take(&mut self.actions) {
                self.act(action);
            }
        }
        // With nothing else to do the core writes its frames itself (no wake-up of a writer
        // task on their way out); with inputs waiting, the writer tasks coalesce.
        self.flush.run(self.queue.is_empty());
        let settled = self.parts.replica.settled_votes();
        if settled != self.last_settled {
            self.last_settled = settled;
            self.parts.settled.set(settled);
        }
        let view = self.parts.replica.view();
        if view != self.last_view {
            self.last_view = view;
            info!(
                view,
                leader = self.parts.replica.config().leader(view),
                "entered view"
            );
            // A new view is published at once (operators and tests watch for it).
            self.publish();
        }
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Send { to, message } => {
                self.parts
                    .links
                    .send(to, Frame::Peer(message).encode(), &mut self.flush);
            }
            Action::Broadcast { message } => {
                // One encoding (and one signature, done by the engine) shared by every peer.
                let bytes = Frame::Peer(message).encode();
                self.parts.links.broadcast(&bytes, &mut self.flush);
            }
            Action::Execute {
                seq,
                requests,
                snapshot,
                ..
            } => {
                // Pending work first, then the queue: the service thread queues a batch's
                // results before it stops counting the batch as pending.
                if self.parts.service.pending.load(Ordering::Acquire) == 0
                    && self.queue.is_empty()
                    && self.may_execute_in_place(snapshot)
                {
                    // Idle, and the service thread holds no ordered work: execute here, once
                    // what earlier actions queued (replies, the next proposal) is on its way
                    // (on a delivering thread one batch at most, and none that ends with a
                    // snapshot: a connection task or verify thread is not held up that long).
                    self.flush.run(true);
                    let event =
                        execute(self.parts.service.lock().as_mut(), seq, &requests, snapshot);
                    self.parts
                        .replica
                        .handle(self.parts.clock.now_ms(), event, &mut self.actions);
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
                let queued = self.parts.read_bytes.load(Ordering::Relaxed);
                if queued + len > self.parts.read_bytes_max
                    || self
                        .parts
                        .read_tx
                        .try_send(ReadJob { request, view })
                        .is_err()
                {
                    // The client falls back to an ordered request.
                    self.parts.metrics.drop_frame("read_only");
                } else {
                    self.parts.read_bytes.fetch_add(len, Ordering::Relaxed);
                }
            }
            Action::Reply(reply) => {
                if let Some(t) = self.arrivals.remove(&(reply.client, reply.req_seq)) {
                    self.parts
                        .metrics
                        .request_latency
                        .observe(t.elapsed().as_secs_f64());
                }
                self.parts.router.send(&reply, &mut self.flush);
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
        self.parts.service.pending.fetch_add(1, Ordering::AcqRel);
        let _ = self.parts.exec_tx.send(job);
    }

    /// Hand a job to the storage thread, waiting if its queue is full. If the thread is gone it
    /// has reported a fatal error and the process is stopping; the engine keeps its outputs
    /// held, so nothing that depends on the lost record leaves the replica.
    fn to_storage(&self, job: StorageJob) {
        match &self.parts.storage_tx {
            Some(tx) => {
                if tx.send(job).is_err() {
                    error!("the storage thread stopped; durable outputs stay held");
                }
            }
            None => error!("durable-mode action in a memory-mode replica; ignored"),
        }
    }

    fn publish(&mut self) {
        self.last_publish = Instant::now();
        let r = &self.parts.replica;
        let m = &self.parts.metrics;
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
            peers_connected: self.parts.links.connected() as u32,
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
        self.parts.status.set(published);
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
    core_tx: Arc<CoreQueue<CoreInput>>,
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
