//! The engine workload shared by the criterion bench (`benches/engine.rs`) and the
//! instruction-count example (`examples/engine_instructions.rs`): a follower of a 4-replica
//! Byzantine cluster handling the pre-prepare, prepares and commits of consecutive slots, then
//! executing them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shieldwall_core::message::{
    batch_digest, commit_mac_bytes, vote_signing_bytes, Phase, Signable,
};
use shieldwall_core::{
    Action, Authenticated, Authenticator, Config, Event, FaultModel, Message, PrePrepare,
    Principal, Replica, Request, RequestAuth, Signed, SignedRequest, SimAuth, Vote,
};

const SEED: [u8; 32] = [3; 32];
pub const SLOTS: u64 = 256;

fn config() -> Config {
    let mut c = Config::for_replicas(4, FaultModel::Byzantine);
    c.checkpoint_interval = 1 << 20;
    c.watermark_window = 1 << 21;
    c.batch_requests_max = 1000;
    c.client_pending_max = 1 << 20;
    c
}

/// Pre-built messages for `SLOTS` consecutive slots, as a follower (replica 1) receives them.
pub fn messages(batch_size: usize) -> Vec<Vec<Event>> {
    let signer = |i: u32| SimAuth::new(Principal::Replica(i), SEED);
    let client = SimAuth::new(Principal::Client(1), SEED);
    let mut req_seq = 0;
    (1..=SLOTS)
        .map(|seq| {
            let batch: Vec<SignedRequest> = (0..batch_size)
                .map(|_| {
                    req_seq += 1;
                    let request = Request {
                        client: 1,
                        req_seq,
                        read_only: false,
                        op: vec![7; 64].into(),
                    };
                    let auth = RequestAuth::Signature(client.sign(&request.signing_bytes()).into());
                    SignedRequest { request, auth }
                })
                .collect();
            let body = PrePrepare {
                view: 0,
                seq,
                batch_digest: batch_digest(&batch),
                batch: batch.into(),
            };
            let vote = Vote {
                view: 0,
                seq,
                batch_digest: body.batch_digest,
            };
            let pp = Signed {
                from: 0,
                sig: signer(0).sign(&body.signing_bytes()),
                body,
            };
            let mut events = vec![Event::Message(Message::PrePrepare(pp))];
            for r in [2, 3] {
                let sig = signer(r).sign(&vote_signing_bytes(Phase::Prepare, &vote));
                events.push(Event::Message(Message::Prepare(Signed {
                    from: r,
                    body: vote,
                    sig,
                })));
            }
            for r in [0, 2, 3] {
                let bytes = commit_mac_bytes(r, &vote);
                let macs = (0..4)
                    .flat_map(|to| signer(r).mac(Principal::Replica(to), &bytes))
                    .collect();
                events.push(Event::Message(Message::Commit(Authenticated {
                    from: r,
                    body: vote,
                    macs,
                })));
            }
            events
        })
        .collect()
}

pub fn run(slots: &[Vec<Event>]) -> Duration {
    let auth: Arc<dyn Authenticator> = Arc::new(SimAuth::new(Principal::Replica(1), SEED));
    let mut replica = Replica::new(config(), 1, auth).expect("valid config");
    let mut out = Vec::with_capacity(64);
    // Clone outside the timed region: only the engine's own work is measured.
    let slots = slots.to_vec();
    let start = Instant::now();
    for events in slots {
        for e in events {
            replica.handle(0, e, &mut out);
        }
        for a in out.drain(..) {
            if let Action::Execute { seq, requests, .. } = a {
                let results = vec![Vec::new(); requests.len()];
                replica.handle(
                    0,
                    Event::Executed {
                        seq,
                        results,
                        snapshot: None,
                    },
                    &mut Vec::new(),
                );
            }
        }
    }
    let elapsed = start.elapsed();
    assert_eq!(replica.last_executed(), SLOTS, "every slot must execute");
    elapsed
}
