//! Simulated clients: correct ones (with a history for the linearizability checker) and
//! Byzantine ones (bad authenticators, reused request numbers, floods).

use std::collections::BTreeMap;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use shieldwall_core::message::encode;
use std::sync::Arc;

use shieldwall_core::{
    Authenticator, ClientId, ReplicaId, Reply, Request, RequestAuth, SignedRequest, MAC_BYTES,
};

use crate::checker::OpRecord;
use crate::service::KvOp;

/// How a client behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientKind {
    /// Follows the protocol; its history is checked and its requests must complete.
    Correct,
    /// Sends requests with bad authenticators, or claiming another client's identity.
    BadAuth,
    /// Signs two different operations under one request number and sends them to different
    /// replicas, and later replays request numbers with yet other operations.
    ReusedSeq,
    /// Sends bursts of requests well past the pending bounds, some far ahead of its window.
    Flood,
    /// Follows the protocol except that it never sends to the leader it believes in (the
    /// leader of the highest view its replies reported), as a Byzantine client trying to make
    /// the followers suspect an honest leader would. Its operations must still complete.
    SkipLeader,
}

/// Timing and load of a client.
#[derive(Clone, Copy, Debug)]
pub struct ClientParams {
    /// Operations to complete.
    pub ops: u32,
    /// Requests outstanding at once.
    pub window: usize,
    /// The replicas' client-table window W (`Config::client_pending_max`): the window rule lets
    /// a client send request `s` only once all its requests numbered `s - W` or lower completed.
    pub table_window: u64,
    /// Whether reads go out read-only (most of the time) or always ordered.
    pub read_only: bool,
    /// Retransmission period of ordered requests.
    pub retransmit_ms: u64,
    /// How long a read-only request waits before falling back to an ordered one.
    pub read_timeout_ms: u64,
    /// Replicas.
    pub n: u32,
    /// Faulty replicas tolerated.
    pub f: u32,
    /// Authenticate requests with MAC vectors instead of signatures.
    pub macs: bool,
    /// Matching replies for an ordered request.
    pub reply_quorum: usize,
    /// Matching replies for a read-only request.
    pub read_quorum: usize,
    /// Crash mode (ADR 019): once a completed request told the client a view, a correct client
    /// sends a new ordered request to that view's leader only; retransmissions go to everyone.
    pub leader_first: bool,
}

/// What a client asks the world to do.
#[derive(Clone, Debug)]
pub enum ClientOut {
    /// Send encoded `SignedRequest` bytes to a replica.
    Send {
        /// Destination replica.
        to: ReplicaId,
        /// Encoded request.
        bytes: Vec<u8>,
        /// The request, if validly signed (the validity checker counts it as submitted).
        submitted: Option<Request>,
    },
    /// Wake the client at this time.
    Wake(u64),
}

#[derive(Clone, Debug)]
struct Outstanding {
    op: KvOp,
    read_only: bool,
    invoke_ms: u64,
    bytes: Vec<u8>,
    replies: BTreeMap<ReplicaId, Vec<u8>>,
    retransmit_at: u64,
}

/// A simulated client.
#[derive(Debug)]
pub struct Client {
    id: ClientId,
    kind: ClientKind,
    auth: Arc<dyn Authenticator>,
    params: ClientParams,
    rng: ChaCha8Rng,
    next_req_seq: u64,
    ops_left: u32,
    next_issue_ms: u64,
    outstanding: BTreeMap<u64, Outstanding>,
    history: Vec<OpRecord>,
    /// The highest view replies reported (a skip-leader client avoids its leader).
    believed_view: u64,
    /// Whether a request completed, so that `believed_view` came from replies.
    view_known: bool,
    /// Replies that did not decode or did not match.
    pub bad_replies: u64,
    /// The first of the f replicas whose MAC entries a bad-auth client corrupts.
    mac_victim: u32,
}

const KEYS: u64 = 6;

impl Client {
    /// A client of `kind` signing with `auth` (its own key only).
    pub fn new(
        id: ClientId,
        kind: ClientKind,
        auth: Arc<dyn Authenticator>,
        params: ClientParams,
        mut rng: ChaCha8Rng,
    ) -> Client {
        // Drawn only with MACs, so signature-mode runs (and their regression seeds) keep
        // their random streams.
        let mac_victim = if params.macs {
            rng.gen_range(0..params.n.max(1))
        } else {
            0
        };
        Client {
            mac_victim,
            id,
            kind,
            auth,
            params,
            rng,
            next_req_seq: 1,
            ops_left: params.ops,
            next_issue_ms: 0,
            outstanding: BTreeMap::new(),
            history: Vec::new(),
            believed_view: 0,
            view_known: false,
            bad_replies: 0,
        }
    }

    /// The client's id.
    pub fn id(&self) -> ClientId {
        self.id
    }

    /// Whether the client follows the protocol.
    pub fn is_correct(&self) -> bool {
        matches!(self.kind, ClientKind::Correct | ClientKind::SkipLeader)
    }

    /// Whether every operation completed (correct clients) or every request went out.
    pub fn done(&self) -> bool {
        self.ops_left == 0 && (self.outstanding.is_empty() || !self.is_correct())
    }

    /// Completed operations.
    pub fn history(&self) -> &[OpRecord] {
        &self.history
    }

    /// Outstanding request numbers and their invocation times.
    pub fn outstanding(&self) -> Vec<(u64, u64)> {
        self.outstanding
            .iter()
            .map(|(s, o)| (*s, o.invoke_ms))
            .collect()
    }

    fn sign(&self, request: Request) -> SignedRequest {
        let bytes = request.signing_bytes();
        let auth = if self.params.macs {
            RequestAuth::Macs(self.macs(&bytes).into())
        } else {
            RequestAuth::Signature(self.auth.sign(&bytes).into())
        };
        SignedRequest { request, auth }
    }

    /// This client's MAC vector over `bytes`: one entry per replica.
    fn macs(&self, bytes: &[u8]) -> Vec<u8> {
        self.auth.mac_vector(self.params.n, bytes)
    }

    fn random_op(&mut self, req_seq: u64) -> KvOp {
        let key = format!("k{}", self.rng.gen_range(0..KEYS)).into_bytes();
        match self.rng.gen_range(0..100) {
            0..=29 => KvOp::Get(key),
            30..=64 => KvOp::Put(key, format!("c{}.{}", self.id, req_seq).into_bytes()),
            _ => KvOp::Append(key, format!("{}.{};", self.id, req_seq).into_bytes()),
        }
    }

    /// The leader of the view this client believes current.
    fn believed_leader(&self) -> ReplicaId {
        shieldwall_core::leader_of(self.believed_view, self.params.n)
    }

    fn send_all(&self, bytes: &[u8], submitted: Option<&Request>, out: &mut Vec<ClientOut>) {
        let skip = (self.kind == ClientKind::SkipLeader).then(|| self.believed_leader());
        for to in (0..self.params.n).filter(|to| Some(*to) != skip) {
            out.push(ClientOut::Send {
                to,
                bytes: bytes.to_vec(),
                submitted: submitted.cloned(),
            });
        }
    }

    /// Time passed: issue, retransmit, fall back.
    pub fn wake(&mut self, now_ms: u64, out: &mut Vec<ClientOut>) {
        match self.kind {
            ClientKind::Correct | ClientKind::SkipLeader => self.wake_correct(now_ms, out),
            ClientKind::BadAuth => self.wake_bad_auth(now_ms, out),
            ClientKind::ReusedSeq => self.wake_reused(now_ms, out),
            ClientKind::Flood => self.wake_flood(now_ms, out),
        }
    }

    fn issue(
        &mut self,
        now_ms: u64,
        op: KvOp,
        read_only: bool,
        invoke_ms: u64,
        out: &mut Vec<ClientOut>,
    ) {
        let req_seq = self.next_req_seq;
        self.next_req_seq += 1;
        let request = Request {
            client: self.id,
            req_seq,
            read_only,
            op: op.encode().into(),
        };
        let signed = self.sign(request.clone());
        let bytes = encode(&signed);
        if self.kind == ClientKind::Correct
            && self.params.leader_first
            && self.view_known
            && !read_only
        {
            out.push(ClientOut::Send {
                to: self.believed_leader(),
                bytes: bytes.clone(),
                submitted: Some(request),
            });
        } else {
            self.send_all(&bytes, Some(&request), out);
        }
        let wait = if read_only {
            self.params.read_timeout_ms
        } else {
            self.params.retransmit_ms
        };
        out.push(ClientOut::Wake(now_ms + wait));
        self.outstanding.insert(
            req_seq,
            Outstanding {
                op,
                read_only,
                invoke_ms,
                bytes,
                replies: BTreeMap::new(),
                retransmit_at: now_ms + wait,
            },
        );
    }

    fn wake_correct(&mut self, now_ms: u64, out: &mut Vec<ClientOut>) {
        // Retransmit ordered requests; turn timed-out reads into ordered requests.
        let due: Vec<u64> = self
            .outstanding
            .iter()
            .filter(|(_, o)| o.retransmit_at <= now_ms)
            .map(|(s, _)| *s)
            .collect();
        for req_seq in due {
            let may_send_next = self.may_send_next();
            let Some(o) = self.outstanding.get_mut(&req_seq) else {
                continue;
            };
            if o.read_only {
                if !may_send_next {
                    // The window rule holds the fallback back until older requests complete.
                    o.retransmit_at = now_ms + self.params.read_timeout_ms;
                    out.push(ClientOut::Wake(o.retransmit_at));
                    continue;
                }
                let Some(o) = self.outstanding.remove(&req_seq) else {
                    continue;
                };
                self.issue(now_ms, o.op, false, o.invoke_ms, out);
            } else {
                o.retransmit_at = now_ms + self.params.retransmit_ms;
                let bytes = o.bytes.clone();
                out.push(ClientOut::Wake(o.retransmit_at));
                self.send_all(&bytes, None, out);
            }
        }
        while self.ops_left > 0
            && self.outstanding.len() < self.params.window
            && self.next_issue_ms <= now_ms
            && self.may_send_next()
        {
            self.ops_left -= 1;
            let op = self.random_op(self.next_req_seq);
            // Reads go out read-only most of the time, ordered sometimes.
            let read_only = op.is_read() && self.rng.gen_bool(0.7) && self.params.read_only;
            self.issue(now_ms, op, read_only, now_ms, out);
            self.next_issue_ms = now_ms + self.rng.gen_range(0..20);
        }
        if self.ops_left > 0 && self.outstanding.len() < self.params.window {
            out.push(ClientOut::Wake(self.next_issue_ms.max(now_ms + 1)));
        }
    }

    /// The window rule: the next request number may go out only if every ordered request at or
    /// below `next - W` completed. Read-only requests never execute, so an abandoned one does
    /// not hold the window back.
    fn may_send_next(&self) -> bool {
        let oldest = self
            .outstanding
            .iter()
            .filter(|(_, o)| !o.read_only)
            .map(|(s, _)| *s)
            .next();
        oldest.is_none_or(|s| self.next_req_seq < s.saturating_add(self.params.table_window))
    }

    fn wake_bad_auth(&mut self, now_ms: u64, out: &mut Vec<ClientOut>) {
        if self.ops_left == 0 {
            return;
        }
        self.ops_left -= 1;
        let req_seq = self.next_req_seq;
        self.next_req_seq += 1;
        let op = self.random_op(req_seq);
        let victim = self.rng.gen_range(0..3);
        let client = if self.rng.gen_bool(0.5) {
            self.id
        } else {
            victim
        };
        let request = Request {
            client,
            req_seq,
            read_only: false,
            op: op.encode().into(),
        };
        let auth = match self.rng.gen_range(0..if self.params.macs { 5 } else { 3 }) {
            // A signature by this client, claiming to be `client` (bad unless client == id,
            // in which case corrupt it).
            0 => {
                let mut sig = self.auth.sign(&request.signing_bytes());
                if client == self.id {
                    if let Some(b) = sig.first_mut() {
                        *b ^= 1;
                    }
                }
                RequestAuth::Signature(sig.into())
            }
            1 => RequestAuth::Signature((0..32).map(|_| self.rng.gen()).collect()),
            2 => RequestAuth::Signature(Vec::new().into()),
            // This client's MAC vector with the entries of f replicas, always the same ones,
            // corrupted (all entries when it claims to be another client, whose keys it does
            // not have). Those replicas reject the batches carrying it without blaming the
            // leader and catch up on the certified batches; a leader among them cannot
            // propose it, so the others suspect it and a view change moves past it.
            // Corrupting more than f replicas' entries over its requests would let the
            // client stall every batch that carries them: that liveness attack is why
            // MAC vectors are off by default (ADR 011).
            3 => {
                let mut macs = self.macs(&request.signing_bytes());
                let f = self.params.f.max(1);
                for k in 0..f {
                    let r = ((self.mac_victim + k) % self.params.n) as usize;
                    macs[r * MAC_BYTES] ^= 1;
                }
                if client != self.id {
                    for b in &mut macs {
                        *b ^= 0x55;
                    }
                }
                RequestAuth::Macs(macs.into())
            }
            // A vector of the wrong length.
            _ => RequestAuth::Macs((0..MAC_BYTES).map(|_| self.rng.gen()).collect()),
        };
        // A MAC vector of this client's own that is good for some replicas authenticates the
        // request to them: it may execute (validly), so the checker counts it as submitted.
        let valid = matches!(auth, RequestAuth::Macs(_)) && client == self.id;
        let submitted = valid.then(|| request.clone());
        let bytes = encode(&SignedRequest { request, auth });
        self.send_all(&bytes, submitted.as_ref(), out);
        out.push(ClientOut::Wake(now_ms + self.rng.gen_range(5..40)));
    }

    fn wake_reused(&mut self, now_ms: u64, out: &mut Vec<ClientOut>) {
        if self.ops_left == 0 {
            return;
        }
        self.ops_left -= 1;
        // Mostly fresh numbers, sometimes an old one again with a new operation.
        let req_seq = if self.next_req_seq > 2 && self.rng.gen_bool(0.3) {
            self.rng.gen_range(1..self.next_req_seq)
        } else {
            self.next_req_seq += 1;
            self.next_req_seq - 1
        };
        let a = Request {
            client: self.id,
            req_seq,
            read_only: false,
            op: self.random_op(req_seq).encode().into(),
        };
        let mut b = a.clone();
        b.op = KvOp::Put(
            b"k0".to_vec(),
            format!("evil{}.{}", self.id, now_ms).into_bytes(),
        )
        .encode()
        .into();
        let (sa, sb) = (self.sign(a.clone()), self.sign(b.clone()));
        let (ba, bb) = (encode(&sa), encode(&sb));
        for to in 0..self.params.n {
            let (bytes, req) = if to % 2 == 0 { (&ba, &a) } else { (&bb, &b) };
            out.push(ClientOut::Send {
                to,
                bytes: bytes.clone(),
                submitted: Some(req.clone()),
            });
        }
        out.push(ClientOut::Wake(now_ms + self.rng.gen_range(10..60)));
    }

    fn wake_flood(&mut self, now_ms: u64, out: &mut Vec<ClientOut>) {
        if self.ops_left == 0 {
            return;
        }
        let burst = self.ops_left.min(40);
        self.ops_left -= burst;
        for _ in 0..burst {
            let req_seq = if self.rng.gen_bool(0.1) {
                self.next_req_seq + self.rng.gen_range(100..1_000_000)
            } else {
                self.next_req_seq += 1;
                self.next_req_seq - 1
            };
            let request = Request {
                client: self.id,
                req_seq,
                read_only: false,
                op: self.random_op(req_seq).encode().into(),
            };
            let bytes = encode(&self.sign(request.clone()));
            self.send_all(&bytes, Some(&request), out);
        }
        out.push(ClientOut::Wake(now_ms + self.rng.gen_range(100..400)));
    }

    /// A reply arrived from replica `from` (the simulated network authenticates the link).
    pub fn on_reply(
        &mut self,
        now_ms: u64,
        from: ReplicaId,
        reply: Reply,
        out: &mut Vec<ClientOut>,
    ) {
        if reply.client != self.id || reply.replica != from {
            self.bad_replies += 1;
            return;
        }
        if !self.is_correct() {
            return;
        }
        self.believed_view = self.believed_view.max(reply.view);
        let Some(o) = self.outstanding.get_mut(&reply.req_seq) else {
            return;
        };
        if o.read_only != reply.read_only {
            return;
        }
        o.replies.insert(from, reply.result);
        let quorum = if o.read_only {
            self.params.read_quorum
        } else {
            self.params.reply_quorum
        };
        let mut counts: BTreeMap<&[u8], usize> = BTreeMap::new();
        let mut accepted = None;
        for r in o.replies.values() {
            let c = counts.entry(r.as_slice()).or_insert(0);
            *c += 1;
            if *c >= quorum {
                accepted = Some(r.clone());
                break;
            }
        }
        let Some(result) = accepted else { return };
        let Some(o) = self.outstanding.remove(&reply.req_seq) else {
            return;
        };
        self.view_known = true;
        self.history.push(OpRecord {
            client: self.id,
            req_seq: reply.req_seq,
            op: o.op,
            read_only: o.read_only,
            invoke_ms: o.invoke_ms,
            response_ms: now_ms,
            result,
        });
        self.wake_correct(now_ms, out);
    }

    /// The client's first wake-up.
    pub fn start(&mut self, now_ms: u64, out: &mut Vec<ClientOut>) {
        out.push(ClientOut::Wake(now_ms + self.rng.gen_range(0..10)));
    }

    /// Stop issuing new operations (the run is ending).
    pub fn stop_issuing(&mut self) {
        if !self.is_correct() {
            self.ops_left = 0;
        }
    }
}
