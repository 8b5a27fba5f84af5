//! The load generator: key-value SET/GET operations through the client library, with the
//! latency of every operation measured at the client.
//!
//! Closed loop: every client runs `depth` workers, each waiting for its operation's result
//! before it sends the next. Open loop: every client is offered `rate / clients` operations per
//! second at fixed intended start times, whatever happened to earlier ones, and latency counts
//! from the intended start, so a stalled cluster shows as latency rather than as fewer samples
//! (no coordinated omission); `depth` still bounds the client's operations in flight, and
//! operations waiting for a slot wait on the clock.
//!
//! An operation is measured if it (intendedly) started inside the window; the warm-up before
//! it is run but not measured, and operations still in flight at its end are waited for.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shieldwall_kv::{KvOp, KvReply, SetCondition};
use shieldwall_node::Client;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Keys each stream of operations cycles through (its writes overwrite them in turn).
pub const KEYS_PER_STREAM: u64 = 1024;
/// Open loop: operations one client may have waiting or in flight; beyond it, new ones are
/// shed and counted as errors (the cluster is far behind the offered rate).
pub const OPEN_LOOP_BACKLOG_MAX: usize = 65_536;

/// What to send.
#[derive(Clone, Debug)]
pub struct Workload {
    pub payload: usize,
    pub read_ratio: f64,
    /// Closed loop: workers per client. Open loop: operations in flight per client.
    pub depth: u32,
    /// Open loop: operations per second over all clients; `None`: closed loop.
    pub rate: Option<f64>,
    pub seed: u64,
    /// How long to wait for the operations in flight after the window ends.
    pub drain: Duration,
}

/// When operations are measured: those (intendedly) started in `[start, end)`.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    /// When the load starts (the warm-up begins).
    pub load_start: Instant,
    pub start: Instant,
    pub end: Instant,
}

impl Window {
    fn measures(&self, started: Instant) -> bool {
        started >= self.start && started < self.end
    }
}

/// Counters of every operation, warm-up included, for the progress display.
#[derive(Debug, Default)]
pub struct Live {
    pub completed: AtomicU64,
    pub errors: AtomicU64,
}

/// The measured operations.
#[derive(Clone, Debug)]
pub struct Tally {
    /// Latency in microseconds of every successful measured operation.
    pub hist: Histogram<u64>,
    pub reads: u64,
    pub writes: u64,
    pub errors: u64,
    pub first_error: Option<String>,
}

impl Tally {
    /// An empty tally recording into a copy of `template`.
    pub fn new(template: &Histogram<u64>) -> Tally {
        let mut hist = template.clone();
        hist.reset();
        Tally {
            hist,
            reads: 0,
            writes: 0,
            errors: 0,
            first_error: None,
        }
    }

    /// Successful operations.
    pub fn ops(&self) -> u64 {
        self.reads + self.writes
    }

    /// One measured operation.
    pub fn record(&mut self, latency: Duration, read: bool, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => {
                let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                // Saturates at the histogram's top (an hour) instead of failing.
                self.hist.saturating_record(us.max(1));
                if read {
                    self.reads += 1;
                } else {
                    self.writes += 1;
                }
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }
}

/// The operations of one stream: writes cycle through the stream's own keys, reads pick one
/// of the keys it already wrote.
#[derive(Debug)]
pub struct OpGen {
    prefix: String,
    written: u64,
    next: u64,
    rng: StdRng,
    value: Vec<u8>,
    read_ratio: f64,
}

impl OpGen {
    /// Stream `stream` of client `client`.
    pub fn new(w: &Workload, client: u32, stream: u32) -> OpGen {
        OpGen {
            prefix: format!("bench:{client}:{stream}:"),
            written: 0,
            next: 0,
            rng: StdRng::seed_from_u64(
                w.seed ^ (u64::from(client) << 32) ^ u64::from(stream) ^ 0x5eed,
            ),
            value: vec![b'v'; w.payload],
            read_ratio: w.read_ratio,
        }
    }

    /// The key of `slot`: the stream's prefix and the slot number.
    fn key(&self, slot: u64) -> Vec<u8> {
        use std::io::Write as _;
        let mut key = Vec::with_capacity(self.prefix.len() + 20);
        key.extend_from_slice(self.prefix.as_bytes());
        // Writing into a vector cannot fail.
        let _ = write!(key, "{slot}");
        key
    }

    /// The next operation (encoded) and whether it is a read.
    pub fn next_op(&mut self) -> (Vec<u8>, bool) {
        let read = self.read_ratio > 0.0 && self.rng.gen_bool(self.read_ratio.min(1.0));
        if read {
            let slot = if self.written == 0 {
                0
            } else {
                self.rng.gen_range(0..self.written)
            };
            (
                KvOp::Get {
                    key: self.key(slot),
                }
                .encode(),
                true,
            )
        } else {
            let slot = self.next % KEYS_PER_STREAM;
            self.next += 1;
            self.written = self.written.max(slot + 1);
            // Each value differs from the last in its first bytes, at the payload's size.
            let stamp = self.next.to_le_bytes();
            let n = stamp.len().min(self.value.len());
            self.value[..n].copy_from_slice(&stamp[..n]);
            let op = KvOp::Set {
                key: self.key(slot),
                value: self.value.clone(),
                condition: SetCondition::Always,
                get: false,
            };
            (op.encode(), false)
        }
    }
}

/// Whether the service's result is what a SET or GET returns on success.
pub fn check_reply(read: bool, bytes: &[u8]) -> Result<(), String> {
    match KvReply::decode(bytes) {
        Ok(KvReply::Error(e)) => Err(format!("error reply: {e}")),
        Ok(KvReply::Ok) if !read => Ok(()),
        Ok(KvReply::Bulk(_) | KvReply::Nil) if read => Ok(()),
        Ok(other) => Err(format!("unexpected reply {other:?}")),
        Err(e) => Err(format!("undecodable reply: {e}")),
    }
}

async fn invoke(client: &Client, op: Vec<u8>, read: bool) -> Result<(), String> {
    let result = if read {
        client.invoke_read(op).await
    } else {
        client.invoke(op).await
    };
    result
        .map_err(|e| e.to_string())
        .and_then(|bytes| check_reply(read, &bytes))
}

fn count(live: &Live, ok: bool) {
    if ok {
        live.completed.fetch_add(1, Ordering::Relaxed);
    } else {
        live.errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// Run the load on `clients` until the window ends, then wait (at most `w.drain`) for the
/// measured operations still in flight. Operations that did not finish by then are not
/// counted.
pub async fn run(
    clients: Vec<Client>,
    w: Workload,
    window: Window,
    live: Arc<Live>,
    template: Histogram<u64>,
) -> Tally {
    let tally = Arc::new(Mutex::new(Tally::new(&template)));
    let mut tasks = JoinSet::new();
    let n_clients = clients.len();
    for (c, client) in clients.into_iter().enumerate() {
        let c = c as u32;
        match w.rate {
            None => {
                for d in 0..w.depth {
                    let gen = OpGen::new(&w, c, d);
                    tasks.spawn(closed_worker(
                        client.clone(),
                        gen,
                        window,
                        live.clone(),
                        tally.clone(),
                    ));
                }
            }
            Some(rate) => {
                let per_client = rate / n_clients as f64;
                // Clients are staggered so that their schedules interleave evenly.
                let offset = Duration::from_secs_f64(f64::from(c) / rate);
                tasks.spawn(open_dispatcher(
                    client,
                    OpGen::new(&w, c, 0),
                    per_client,
                    offset,
                    w.depth,
                    window,
                    live.clone(),
                    tally.clone(),
                ));
            }
        }
    }
    let deadline = tokio::time::Instant::from_std(window.end + w.drain);
    while let Ok(Some(_)) = tokio::time::timeout_at(deadline, tasks.join_next()).await {}
    tasks.abort_all();
    let tally = tally.lock().map(|t| t.clone());
    tally.unwrap_or_else(|_| Tally::new(&template))
}

/// One closed-loop stream. Every stream records into the one shared tally (as the open loop
/// does): a histogram of its own per stream was 188 KiB each, 96 MiB at 16 clients x 32 and
/// a cache miss per record.
async fn closed_worker(
    client: Client,
    mut gen: OpGen,
    window: Window,
    live: Arc<Live>,
    tally: Arc<Mutex<Tally>>,
) {
    loop {
        let start = Instant::now();
        if start >= window.end {
            break;
        }
        let (op, read) = gen.next_op();
        let outcome = invoke(&client, op, read).await;
        let latency = start.elapsed();
        count(&live, outcome.is_ok());
        if window.measures(start) {
            if let Ok(mut t) = tally.lock() {
                t.record(latency, read, outcome);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn open_dispatcher(
    client: Client,
    mut gen: OpGen,
    rate: f64,
    offset: Duration,
    depth: u32,
    window: Window,
    live: Arc<Live>,
    tally: Arc<Mutex<Tally>>,
) {
    let slots = Arc::new(Semaphore::new(depth as usize));
    let backlog = Arc::new(AtomicUsize::new(0));
    let mut ops = JoinSet::new();
    let start = window.load_start + offset;
    for k in 0u64.. {
        let intended = start + Duration::from_secs_f64(k as f64 / rate);
        if intended >= window.end {
            break;
        }
        tokio::time::sleep_until(tokio::time::Instant::from_std(intended)).await;
        while ops.try_join_next().is_some() {}
        let (op, read) = gen.next_op();
        if backlog.load(Ordering::Relaxed) >= OPEN_LOOP_BACKLOG_MAX {
            count(&live, false);
            if window.measures(intended) {
                if let Ok(mut t) = tally.lock() {
                    t.record(
                        Duration::ZERO,
                        read,
                        Err(format!(
                            "open loop backlog of {OPEN_LOOP_BACKLOG_MAX} operations full"
                        )),
                    );
                }
            }
            continue;
        }
        backlog.fetch_add(1, Ordering::Relaxed);
        let (client, slots, backlog, live, tally) = (
            client.clone(),
            slots.clone(),
            backlog.clone(),
            live.clone(),
            tally.clone(),
        );
        ops.spawn(async move {
            let outcome = match slots.acquire_owned().await {
                Ok(_permit) => invoke(&client, op, read).await,
                Err(_) => Err("closed".to_string()),
            };
            // From the intended start: time spent waiting for a slot counts.
            let latency = intended.elapsed();
            backlog.fetch_sub(1, Ordering::Relaxed);
            count(&live, outcome.is_ok());
            if window.measures(intended) {
                if let Ok(mut t) = tally.lock() {
                    t.record(latency, read, outcome);
                }
            }
        });
    }
    while ops.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(read_ratio: f64) -> Workload {
        Workload {
            payload: 64,
            read_ratio,
            depth: 1,
            rate: None,
            seed: 7,
            drain: Duration::from_secs(1),
        }
    }

    #[test]
    fn ops_have_the_payload_size_and_the_read_ratio() {
        let mut gen = OpGen::new(&workload(0.25), 3, 1);
        let (mut reads, mut writes) = (0, 0);
        for _ in 0..4000 {
            let (bytes, read) = gen.next_op();
            match KvOp::decode(&bytes).unwrap() {
                KvOp::Get { key } => {
                    assert!(read);
                    assert!(key.starts_with(b"bench:3:1:"));
                    reads += 1;
                }
                KvOp::Set { key, value, .. } => {
                    assert!(!read);
                    assert!(key.starts_with(b"bench:3:1:"));
                    assert_eq!(value.len(), 64);
                    writes += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!((800..1200).contains(&reads), "{reads} reads");
        assert_eq!(reads + writes, 4000);
        let mut only_writes = OpGen::new(&workload(0.0), 0, 0);
        assert!((0..100).all(|_| !only_writes.next_op().1));
    }

    #[test]
    fn keys_are_the_prefix_and_the_slot_in_decimal() {
        let gen = OpGen::new(&workload(0.0), 3, 1);
        for slot in [0, 7, 10, 99, 1023, 123_456_789, u64::MAX] {
            assert_eq!(gen.key(slot), format!("bench:3:1:{slot}").into_bytes());
        }
    }

    #[test]
    fn writes_cycle_through_the_stream_keys() {
        let mut gen = OpGen::new(&workload(0.0), 0, 0);
        let keys: std::collections::BTreeSet<Vec<u8>> = (0..3 * KEYS_PER_STREAM)
            .map(|_| match KvOp::decode(&gen.next_op().0).unwrap() {
                KvOp::Set { key, .. } => key,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(keys.len() as u64, KEYS_PER_STREAM);
    }

    #[test]
    fn replies_are_checked() {
        assert!(check_reply(false, &KvReply::Ok.encode()).is_ok());
        assert!(check_reply(true, &KvReply::Nil.encode()).is_ok());
        assert!(check_reply(true, &KvReply::Bulk(b"x".to_vec()).encode()).is_ok());
        assert!(check_reply(false, &KvReply::error("ERR no").encode()).is_err());
        assert!(check_reply(false, &KvReply::Nil.encode()).is_err());
        assert!(check_reply(true, b"\xff\xff").is_err());
    }

    #[test]
    fn tally_counts() {
        let template = crate::bench::report::new_histogram().unwrap();
        let mut a = Tally::new(&template);
        a.record(Duration::from_millis(2), false, Ok(()));
        a.record(Duration::from_millis(4), true, Ok(()));
        a.record(Duration::from_millis(9), true, Err("timeout".into()));
        a.record(Duration::from_millis(6), false, Ok(()));
        a.record(Duration::ZERO, false, Err("other".into()));
        assert_eq!((a.reads, a.writes, a.errors, a.ops()), (1, 2, 2, 3));
        assert_eq!(a.hist.len(), 3);
        assert_eq!(a.first_error.as_deref(), Some("timeout"));
        assert!(a.hist.max() >= 6000 && a.hist.max() < 6010);
    }

    #[test]
    fn window_bounds() {
        let now = Instant::now();
        let w = Window {
            load_start: now,
            start: now + Duration::from_secs(1),
            end: now + Duration::from_secs(2),
        };
        assert!(!w.measures(now));
        assert!(w.measures(now + Duration::from_secs(1)));
        assert!(!w.measures(now + Duration::from_secs(2)));
    }
}
