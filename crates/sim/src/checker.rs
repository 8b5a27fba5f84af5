//! Safety checkers.
//!
//! [`Checker`] is fed every execution and restore of every correct replica as it happens and
//! checks, at each step: agreement (one batch per sequence number across correct replicas),
//! state agreement (one service state per sequence number), validity (only submitted requests
//! execute), exactly-once (a `(client, req_seq)` is ordered at most once) and prefix
//! consistency (each replica executes consecutive sequence numbers, jumping only by a restore).
//! [`check_linearizability`] checks the correct clients' histories against the committed order
//! at the end of a run.

use std::collections::{BTreeMap, HashMap, HashSet};

use shieldwall_core::{ClientId, Digest, ReplicaId, Request, Seq};

use crate::service::{KvOp, KvService};

/// One replica process: `(replica, incarnation)`. A restart starts a new incarnation.
pub type Process = (ReplicaId, u32);

/// The most violations a checker records (later ones are counted, not stored).
const VIOLATIONS_MAX: usize = 20;

#[derive(Clone, Debug)]
struct CommittedEntry {
    requests: Vec<Request>,
    first: Process,
}

#[derive(Clone, Debug, Default)]
struct ProcessLog {
    last: Seq,
}

/// Incremental safety checker over correct replicas' executions.
#[derive(Clone, Debug, Default)]
pub struct Checker {
    committed: BTreeMap<Seq, CommittedEntry>,
    states: HashMap<Seq, (Digest, Process)>,
    ordered_keys: HashMap<(ClientId, u64), Seq>,
    submitted: HashSet<Digest>,
    logs: HashMap<Process, ProcessLog>,
    violations: Vec<String>,
    violations_dropped: usize,
}

impl Checker {
    /// An empty checker.
    pub fn new() -> Checker {
        Checker::default()
    }

    fn violation(&mut self, v: String) {
        if self.violations.len() < VIOLATIONS_MAX {
            self.violations.push(v);
        } else {
            self.violations_dropped += 1;
        }
    }

    /// Record that a client issued `request` with a valid signature.
    pub fn submitted(&mut self, request: &Request) {
        self.submitted.insert(request.digest());
    }

    /// A correct process executed `requests` at `seq`.
    pub fn executed(&mut self, process: Process, seq: Seq, requests: &[Request]) {
        let log = self.logs.entry(process).or_default();
        let expected = log.last + 1;
        if seq != expected {
            let last = log.last;
            log.last = log.last.max(seq);
            self.violation(format!(
                "prefix: replica {} (incarnation {}) executed seq {seq} after {last}",
                process.0, process.1
            ));
        } else {
            log.last = seq;
        }
        for r in requests {
            if !self.submitted.contains(&r.digest()) {
                self.violation(format!(
                    "validity: replica {} executed unsubmitted request client {} req_seq {} at \
                     seq {seq}",
                    process.0, r.client, r.req_seq
                ));
            }
        }
        match self.committed.get(&seq) {
            Some(entry) => {
                if entry.requests != requests {
                    let first = entry.first;
                    self.violation(format!(
                        "agreement: seq {seq}: replica {} executed {} but replica {} executed {}",
                        first.0,
                        describe(&self.committed[&seq].requests),
                        process.0,
                        describe(requests)
                    ));
                }
            }
            None => {
                let mut seen = HashSet::new();
                for r in requests {
                    let key = (r.client, r.req_seq);
                    if !seen.insert(key) {
                        self.violation(format!(
                            "exactly-once: client {} req_seq {} twice in the batch at seq {seq}",
                            r.client, r.req_seq
                        ));
                    }
                    if let Some(prev) = self.ordered_keys.insert(key, seq) {
                        self.violation(format!(
                            "exactly-once: client {} req_seq {} executed at seq {prev} and {seq}",
                            r.client, r.req_seq
                        ));
                    }
                }
                self.committed.insert(
                    seq,
                    CommittedEntry {
                        requests: requests.to_vec(),
                        first: process,
                    },
                );
            }
        }
    }

    /// The service state of a correct process after `seq` (executed or restored) has
    /// `state_digest`.
    pub fn state(&mut self, process: Process, seq: Seq, state_digest: Digest) {
        match self.states.get(&seq) {
            Some(&(d, first)) if d != state_digest => self.violation(format!(
                "state agreement: seq {seq}: replica {} and replica {} hold different states",
                first.0, process.0
            )),
            Some(_) => {}
            None => {
                self.states.insert(seq, (state_digest, process));
            }
        }
    }

    /// A correct process replaced its state with a snapshot at `seq`.
    pub fn restored(&mut self, process: Process, seq: Seq) {
        let log = self.logs.entry(process).or_default();
        let last = log.last;
        log.last = last.max(seq);
        if seq < last {
            self.violation(format!(
                "prefix: replica {} (incarnation {}) restored seq {seq} after executing {last}",
                process.0, process.1
            ));
        }
    }

    /// Record a violation found outside the checker (e.g. liveness).
    pub fn report(&mut self, violation: String) {
        self.violation(violation);
    }

    /// The committed order known so far: each sequence number's batch.
    pub fn committed(&self) -> impl Iterator<Item = (Seq, &[Request])> {
        self.committed
            .iter()
            .map(|(s, e)| (*s, e.requests.as_slice()))
    }

    /// Number of sequence numbers committed by some correct replica.
    pub fn commits(&self) -> usize {
        self.committed.len()
    }

    /// Violations found so far.
    pub fn violations(&self) -> Vec<String> {
        let mut v = self.violations.clone();
        if self.violations_dropped > 0 {
            v.push(format!(
                "... and {} more violations",
                self.violations_dropped
            ));
        }
        v
    }
}

fn describe(requests: &[Request]) -> String {
    let items: Vec<String> = requests
        .iter()
        .map(|r| format!("{}:{}", r.client, r.req_seq))
        .collect();
    format!("[{}]", items.join(","))
}

/// One completed operation of a correct client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpRecord {
    /// The client.
    pub client: ClientId,
    /// The request number that completed (a read-only fallback gets a new one).
    pub req_seq: u64,
    /// The operation.
    pub op: KvOp,
    /// Whether it completed as an unordered read-only request.
    pub read_only: bool,
    /// When the client first issued it (simulated ms).
    pub invoke_ms: u64,
    /// When it accepted the result.
    pub response_ms: u64,
    /// The accepted result bytes.
    pub result: Vec<u8>,
}

/// Position in the committed order, op bytes, and the model's result.
type Placement<'a> = (usize, &'a [u8], Vec<u8>);
/// A key's values after each write: (position, value).
type Versions = Vec<(usize, Option<Vec<u8>>)>;

/// Check correct clients' completed operations against the committed order.
///
/// Replays the committed batches from sequence 1 on a model [`KvService`] (up to the first gap:
/// later operations cannot be checked and are skipped). Each ordered operation's result must
/// equal the model's at its position, and positions must respect real time (an operation that
/// completed before another was invoked is ordered first). A read-only result must be the
/// key's value in some state between the last ordered operation that completed before the read
/// began and the first one invoked after it ended.
pub fn check_linearizability<'a>(
    committed: impl IntoIterator<Item = (Seq, &'a [Request])>,
    ops: &[OpRecord],
) -> Vec<String> {
    let mut violations = Vec::new();
    let mut model = KvService::new();
    // (client, req_seq) -> where it was ordered and what the model returned.
    let mut positions: HashMap<(ClientId, u64), Placement<'a>> = HashMap::new();
    // key -> [(position, value after)]
    let mut versions: HashMap<Vec<u8>, Versions> = HashMap::new();
    let mut pos = 0usize;
    let mut complete = true;
    for (expected_seq, (seq, batch)) in (1..).zip(committed) {
        if seq != expected_seq {
            complete = false;
            break;
        }
        for r in batch {
            let result = model.execute(&r.op);
            if let Ok(op) = KvOp::decode(&r.op) {
                if !op.is_read() {
                    let key = match &op {
                        KvOp::Put(k, _) | KvOp::Append(k, _) | KvOp::Get(k) => k.clone(),
                    };
                    let value = model.get(&key).cloned();
                    versions.entry(key).or_default().push((pos, value));
                }
            }
            positions
                .entry((r.client, r.req_seq))
                .or_insert((pos, &r.op, result));
            pos += 1;
        }
    }

    // Ordered operations: results and real-time order.
    let mut placed: Vec<(usize, &OpRecord)> = Vec::new();
    for op in ops.iter().filter(|o| !o.read_only) {
        match positions.get(&(op.client, op.req_seq)) {
            Some((p, bytes, result)) => {
                if *bytes != op.op.encode().as_slice() {
                    violations.push(format!(
                        "linearizability: client {} req_seq {} committed with a different op",
                        op.client, op.req_seq
                    ));
                } else if *result != op.result {
                    violations.push(format!(
                        "linearizability: client {} req_seq {} ({:?}) got {:?}, the committed \
                         order gives {:?}",
                        op.client,
                        op.req_seq,
                        op.op,
                        String::from_utf8_lossy(&op.result),
                        String::from_utf8_lossy(result)
                    ));
                }
                placed.push((*p, op));
            }
            None if complete => violations.push(format!(
                "lost write: client {} req_seq {} completed at {} ms but no correct replica \
                 executed it",
                op.client, op.req_seq, op.response_ms
            )),
            None => {}
        }
    }
    placed.sort_by_key(|(p, _)| *p);
    let mut max_invoke: Option<(u64, &OpRecord)> = None;
    for (_, op) in &placed {
        if let Some((inv, earlier)) = max_invoke {
            if op.response_ms < inv {
                violations.push(format!(
                    "linearizability: client {} req_seq {} completed at {} ms before client {} \
                     req_seq {} was invoked at {} ms, but is ordered after it",
                    op.client, op.req_seq, op.response_ms, earlier.client, earlier.req_seq, inv
                ));
            }
        }
        if max_invoke.is_none_or(|(inv, _)| op.invoke_ms > inv) {
            max_invoke = Some((op.invoke_ms, op));
        }
    }

    // Read-only operations.
    for op in ops.iter().filter(|o| o.read_only) {
        let KvOp::Get(key) = &op.op else {
            violations.push(format!(
                "linearizability: client {} req_seq {} completed a write without ordering",
                op.client, op.req_seq
            ));
            continue;
        };
        // Lowest admissible state: after every ordered op that completed before the read began.
        let lo = placed
            .iter()
            .filter(|(_, o)| o.response_ms < op.invoke_ms)
            .map(|(p, _)| *p)
            .max();
        // Highest admissible state: before every ordered op invoked after the read ended.
        let hi = placed
            .iter()
            .filter(|(_, o)| o.invoke_ms > op.response_ms)
            .map(|(p, _)| *p)
            .min();
        if !complete && hi.is_none() {
            continue;
        }
        let history = versions.get(key).map(Vec::as_slice).unwrap_or(&[]);
        let value_at = |p: Option<usize>| -> Option<Vec<u8>> {
            let p = p?;
            history
                .iter()
                .rev()
                .find(|(vp, _)| *vp <= p)
                .and_then(|(_, v)| v.clone())
        };
        let mut candidates = vec![value_at(lo)];
        for (vp, v) in history {
            if lo.is_none_or(|l| *vp > l) && hi.is_none_or(|h| *vp < h) {
                candidates.push(v.clone());
            }
        }
        let ok = candidates
            .iter()
            .any(|c| crate::service::KvResult::Value(c.clone()).encode() == op.result);
        if !ok {
            violations.push(format!(
                "linearizability: read-only client {} req_seq {} of {:?} invoked at {} ms returned \
                 {:?}, not a value the key had between positions {lo:?} and {hi:?} (history: {})",
                op.client,
                op.req_seq,
                String::from_utf8_lossy(key),
                op.invoke_ms,
                String::from_utf8_lossy(&op.result),
                history
                    .iter()
                    .map(|(p, v)| format!(
                        "{p}:{:?}",
                        String::from_utf8_lossy(v.as_deref().unwrap_or_default())
                    ))
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
    }
    violations.truncate(VIOLATIONS_MAX);
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::KvResult;

    fn req(client: ClientId, req_seq: u64, op: &KvOp) -> Request {
        Request {
            client,
            req_seq,
            read_only: false,
            op: op.encode().into(),
        }
    }

    fn put(k: &str, v: &str) -> KvOp {
        KvOp::Put(k.as_bytes().to_vec(), v.as_bytes().to_vec())
    }

    fn value(v: Option<&str>) -> Vec<u8> {
        KvResult::Value(v.map(|s| s.as_bytes().to_vec())).encode()
    }

    fn checker_with(reqs: &[&Request]) -> Checker {
        let mut c = Checker::new();
        for r in reqs {
            c.submitted(r);
        }
        c
    }

    #[test]
    fn agreement_catches_divergent_batches() {
        let a = req(1, 1, &put("k", "a"));
        let b = req(2, 1, &put("k", "b"));
        let mut c = checker_with(&[&a, &b]);
        c.executed((0, 0), 1, std::slice::from_ref(&a));
        c.executed((1, 0), 1, std::slice::from_ref(&a));
        assert!(c.violations().is_empty());
        c.executed((2, 0), 1, std::slice::from_ref(&b));
        let v = c.violations();
        assert!(v.iter().any(|v| v.starts_with("agreement")), "{v:?}");
    }

    #[test]
    fn validity_catches_unsubmitted_requests() {
        let a = req(1, 1, &put("k", "a"));
        let forged = req(1, 2, &put("k", "forged"));
        let mut c = checker_with(&[&a]);
        c.executed((0, 0), 1, &[a, forged]);
        assert!(c.violations().iter().any(|v| v.starts_with("validity")));
    }

    #[test]
    fn exactly_once_catches_double_execution() {
        let a = req(1, 1, &put("k", "a"));
        let mut c = checker_with(&[&a]);
        c.executed((0, 0), 1, std::slice::from_ref(&a));
        c.executed((0, 0), 2, std::slice::from_ref(&a));
        assert!(c.violations().iter().any(|v| v.starts_with("exactly-once")));
        let mut c = checker_with(&[&a]);
        c.executed((0, 0), 1, &[a.clone(), a.clone()]);
        assert!(c.violations().iter().any(|v| v.starts_with("exactly-once")));
    }

    #[test]
    fn prefix_catches_gaps_and_rewinds() {
        let mut c = Checker::new();
        c.executed((0, 0), 1, &[]);
        c.executed((0, 0), 3, &[]);
        assert!(c.violations().iter().any(|v| v.starts_with("prefix")));
        let mut c = Checker::new();
        c.restored((0, 0), 8);
        c.executed((0, 0), 9, &[]);
        assert!(c.violations().is_empty());
        c.restored((0, 0), 4);
        assert!(c.violations().iter().any(|v| v.starts_with("prefix")));
        // A new incarnation starts from scratch.
        let mut c = Checker::new();
        c.executed((0, 0), 1, &[]);
        c.executed((0, 1), 1, &[]);
        assert!(c.violations().is_empty());
    }

    #[test]
    fn state_agreement_catches_divergent_states() {
        let mut c = Checker::new();
        c.state((0, 0), 4, Digest([1; 32]));
        c.state((1, 0), 4, Digest([1; 32]));
        assert!(c.violations().is_empty());
        c.state((2, 0), 4, Digest([2; 32]));
        assert!(c
            .violations()
            .iter()
            .any(|v| v.starts_with("state agreement")));
    }

    fn record(
        client: ClientId,
        req_seq: u64,
        op: KvOp,
        inv: u64,
        resp: u64,
        result: Vec<u8>,
    ) -> OpRecord {
        OpRecord {
            client,
            req_seq,
            op,
            read_only: false,
            invoke_ms: inv,
            response_ms: resp,
            result,
        }
    }

    #[test]
    fn linearizable_history_passes() {
        let order = [
            (1, vec![req(1, 1, &put("k", "a"))]),
            (2, vec![req(2, 1, &put("k", "b"))]),
        ];
        let ops = [
            record(1, 1, put("k", "a"), 0, 10, value(None)),
            record(2, 1, put("k", "b"), 5, 20, value(Some("a"))),
            OpRecord {
                read_only: true,
                ..record(3, 1, KvOp::Get(b"k".to_vec()), 12, 15, value(Some("a")))
            },
        ];
        let v = check_linearizability(order.iter().map(|(s, b)| (*s, b.as_slice())), &ops);
        assert!(v.is_empty(), "{v:?}");
    }

    #[test]
    fn wrong_result_is_caught() {
        let order = [
            (1, vec![req(1, 1, &put("k", "a"))]),
            (2, vec![req(2, 1, &put("k", "b"))]),
        ];
        let ops = [record(2, 1, put("k", "b"), 5, 20, value(None))];
        let v = check_linearizability(order.iter().map(|(s, b)| (*s, b.as_slice())), &ops);
        assert!(v.iter().any(|v| v.contains("got")), "{v:?}");
    }

    #[test]
    fn real_time_order_is_checked() {
        // Client 2's op completed before client 1's began, yet is ordered after it.
        let order = [(
            1,
            vec![req(1, 1, &put("k", "a")), req(2, 1, &put("j", "b"))],
        )];
        let ops = [
            record(1, 1, put("k", "a"), 50, 60, value(None)),
            record(2, 1, put("j", "b"), 0, 10, value(None)),
        ];
        let v = check_linearizability(order.iter().map(|(s, b)| (*s, b.as_slice())), &ops);
        assert!(v.iter().any(|v| v.contains("ordered after")), "{v:?}");
    }

    #[test]
    fn lost_and_stale_reads_are_caught() {
        let order = [(1, vec![req(1, 1, &put("k", "a"))])];
        let ops = [record(2, 7, put("k", "z"), 0, 10, value(None))];
        let v = check_linearizability(order.iter().map(|(s, b)| (*s, b.as_slice())), &ops);
        assert!(v.iter().any(|v| v.starts_with("lost write")), "{v:?}");

        let order = [
            (1, vec![req(1, 1, &put("k", "a"))]),
            (2, vec![req(1, 2, &put("k", "b"))]),
        ];
        let ops = [
            record(1, 1, put("k", "a"), 0, 10, value(None)),
            record(1, 2, put("k", "b"), 11, 20, value(Some("a"))),
            OpRecord {
                read_only: true,
                ..record(2, 1, KvOp::Get(b"k".to_vec()), 30, 40, value(Some("a")))
            },
        ];
        let v = check_linearizability(order.iter().map(|(s, b)| (*s, b.as_slice())), &ops);
        assert!(v.iter().any(|v| v.contains("read-only")), "{v:?}");
    }
}
