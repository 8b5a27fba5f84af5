//! A [`Backend`] that batches concurrent writes of all connections into [`KvOp::Pipeline`]s.
//!
//! The gateway already coalesces the writes one connection pipelines; with many connections
//! that each have one command outstanding (`redis-benchmark -P 1 -c 50`) every write would
//! still be a request of the replication protocol of its own. [`BatchingBackend`] keeps at
//! most `lanes` calls of the inner backend in flight: a write that arrives while they are all
//! busy waits in a queue, and a lane that frees up takes every waiting write (up to the
//! limits) as one pipeline. Under light load a write goes at once, alone; under load batches
//! grow with the queue, as the replicas' own batching does.
//!
//! Only writes [`KvOp::pipelines`] accepts are batched; reads and other operations go to the
//! inner backend directly. The gateway starts a write only after the earlier conflicting
//! commands of its connection completed, so writes waiting here are independent of each
//! other and may go in any grouping; each is applied once, in the order of its pipeline.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::gateway::{Backend, BackendError, BackendFuture};
use crate::ops::{KvOp, KvReply, PIPELINE_OPS_MAX};

/// Settings of a [`BatchingBackend`]. Defaults in parentheses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchingOptions {
    /// Calls of the inner backend in flight at once, at least 1 (8). Fewer lanes make larger
    /// batches under load.
    pub lanes: usize,
    /// Most writes in one batch (64, at most [`PIPELINE_OPS_MAX`]).
    pub ops_max: usize,
    /// Most encoded bytes of writes in one batch (16 KiB; a larger write goes alone).
    pub bytes_max: usize,
}

impl Default for BatchingOptions {
    fn default() -> BatchingOptions {
        BatchingOptions {
            lanes: 8,
            ops_max: 64,
            bytes_max: 16 << 10,
        }
    }
}

type Answer = oneshot::Sender<Result<Vec<u8>, BackendError>>;

/// A write waiting for a lane.
struct Waiting {
    op: Vec<u8>,
    answer: Answer,
}

struct State {
    queue: VecDeque<Waiting>,
    /// Lanes driving batches.
    busy: usize,
}

struct Inner {
    backend: Arc<dyn Backend>,
    options: BatchingOptions,
    state: Mutex<State>,
}

/// Batches concurrent writes into pipelines over at most `lanes` calls of `backend` (see the
/// module docs). Needs a Tokio runtime: lanes run as tasks.
#[derive(Clone)]
pub struct BatchingBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for BatchingBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchingBackend")
            .field("options", &self.inner.options)
            .finish()
    }
}

impl BatchingBackend {
    /// Batch the writes sent to `backend`.
    pub fn new(backend: Arc<dyn Backend>, options: BatchingOptions) -> BatchingBackend {
        let options = BatchingOptions {
            lanes: options.lanes.max(1),
            ops_max: options.ops_max.clamp(1, PIPELINE_OPS_MAX),
            bytes_max: options.bytes_max,
        };
        BatchingBackend {
            inner: Arc::new(Inner {
                backend,
                options,
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    busy: 0,
                }),
            }),
        }
    }
}

impl Backend for BatchingBackend {
    fn invoke(&self, op: Vec<u8>) -> BackendFuture<'_> {
        let batchable = op.len() <= self.inner.options.bytes_max
            && KvOp::decode(&op).is_ok_and(|op| op.pipelines());
        if !batchable {
            return self.inner.backend.invoke(op);
        }
        let (answer, answered) = oneshot::channel();
        let start_lane = {
            let mut state = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
            state.queue.push_back(Waiting { op, answer });
            let free = state.busy < self.inner.options.lanes;
            if free {
                state.busy += 1;
            }
            free
        };
        if start_lane {
            tokio::spawn(drive_lane(self.inner.clone()));
        }
        Box::pin(async move {
            answered
                .await
                .unwrap_or_else(|_| Err(BackendError::new("the batching lane stopped")))
        })
    }

    fn invoke_read(&self, op: Vec<u8>) -> BackendFuture<'_> {
        self.inner.backend.invoke_read(op)
    }
}

/// One lane: send batches of waiting writes until none waits.
async fn drive_lane(inner: Arc<Inner>) {
    loop {
        let batch = {
            let mut state = inner.state.lock().unwrap_or_else(|e| e.into_inner());
            let batch = take_batch(&mut state.queue, &inner.options);
            if batch.is_empty() {
                state.busy -= 1;
                return;
            }
            batch
        };
        send_batch(inner.backend.as_ref(), batch).await;
    }
}

/// The oldest waiting writes that fit in one batch (at least one).
fn take_batch(queue: &mut VecDeque<Waiting>, options: &BatchingOptions) -> Vec<Waiting> {
    let mut batch: Vec<Waiting> = Vec::new();
    let mut bytes = 0;
    while let Some(next) = queue.front() {
        let fits = batch.len() < options.ops_max && bytes + next.op.len() <= options.bytes_max;
        if !batch.is_empty() && !fits {
            break;
        }
        bytes += next.op.len();
        batch.extend(queue.pop_front());
    }
    batch
}

/// Send one batch (a lone write as itself) and answer each write with its own result.
async fn send_batch(backend: &dyn Backend, mut batch: Vec<Waiting>) {
    if batch.len() == 1 {
        if let Some(one) = batch.pop() {
            let _ = one.answer.send(backend.invoke(one.op).await);
        }
        return;
    }
    let (ops, answers): (Vec<Vec<u8>>, Vec<Answer>) =
        batch.into_iter().map(|w| (w.op, w.answer)).unzip();
    let pipeline = KvOp::Pipeline { ops };
    let n = answers.len();
    let results: Vec<Result<Vec<u8>, BackendError>> = match backend.invoke(pipeline.encode()).await
    {
        Ok(bytes) => match KvReply::decode(&bytes).ok().and_then(|r| r.split(n)) {
            Some(replies) => replies.iter().map(|r| Ok(r.encode())).collect(),
            None => vec![
                Err(BackendError::new(
                    "the backend returned a malformed pipeline reply"
                ));
                n
            ],
        },
        Err(e) => vec![Err(e); n],
    };
    for (answer, result) in answers.into_iter().zip(results) {
        let _ = answer.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(len: usize) -> Waiting {
        Waiting {
            op: vec![0; len],
            answer: oneshot::channel().0,
        }
    }

    /// Records each call and answers it when the test says so.
    struct Manual {
        calls: tokio::sync::mpsc::UnboundedSender<(KvOp, Answer)>,
    }

    impl Backend for Manual {
        fn invoke(&self, op: Vec<u8>) -> BackendFuture<'_> {
            let (answer, answered) = oneshot::channel();
            let _ = self.calls.send((KvOp::decode(&op).unwrap(), answer));
            Box::pin(async move { answered.await.unwrap() })
        }

        fn invoke_read(&self, op: Vec<u8>) -> BackendFuture<'_> {
            self.invoke(op)
        }
    }

    fn incr(key: &str) -> KvOp {
        KvOp::IncrBy {
            key: key.as_bytes().to_vec(),
            delta: 1,
        }
    }

    #[test]
    fn writes_wait_for_a_lane_and_go_together() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (tx, mut calls) = tokio::sync::mpsc::unbounded_channel();
            let options = BatchingOptions {
                lanes: 1,
                ..BatchingOptions::default()
            };
            let backend = Arc::new(BatchingBackend::new(
                Arc::new(Manual { calls: tx }),
                options,
            ));
            let call = |op: KvOp| {
                let backend = backend.clone();
                tokio::spawn(async move { backend.invoke(op.encode()).await })
            };
            // The lane is free: the first write goes at once, alone.
            let a = call(incr("a"));
            let (op, first) = calls.recv().await.unwrap();
            assert_eq!(op, incr("a"));
            // While it is in flight, two writes and a read arrive: the read goes directly.
            let b = call(incr("b"));
            let c = call(incr("c"));
            let get = {
                let backend = backend.clone();
                let op = KvOp::Get { key: b"a".to_vec() }.encode();
                tokio::spawn(async move { backend.invoke_read(op).await })
            };
            let (op, read) = calls.recv().await.unwrap();
            assert_eq!(op, KvOp::Get { key: b"a".to_vec() });
            let _ = read.send(Ok(KvReply::Nil.encode()));
            assert_eq!(get.await.unwrap(), Ok(KvReply::Nil.encode()));
            let _ = first.send(Ok(KvReply::Int(1).encode()));
            assert_eq!(a.await.unwrap(), Ok(KvReply::Int(1).encode()));
            // The freed lane takes both waiting writes as one pipeline; each gets its reply.
            let (op, pipeline) = calls.recv().await.unwrap();
            assert_eq!(op, KvOp::pipeline(&[incr("b"), incr("c")]));
            let replies = KvReply::Pipeline(vec![KvReply::Int(5), KvReply::error("ERR no")]);
            let _ = pipeline.send(Ok(replies.encode()));
            assert_eq!(b.await.unwrap(), Ok(KvReply::Int(5).encode()));
            assert_eq!(c.await.unwrap(), Ok(KvReply::error("ERR no").encode()));
            // A failed batch fails each of its writes.
            let (d, e) = (call(incr("d")), call(incr("e")));
            let (op, failing) = calls.recv().await.unwrap();
            assert_eq!(op, KvOp::pipeline(&[incr("d"), incr("e")]));
            let _ = failing.send(Err(BackendError::new("timeout")));
            assert_eq!(d.await.unwrap(), Err(BackendError::new("timeout")));
            assert_eq!(e.await.unwrap(), Err(BackendError::new("timeout")));
        });
    }

    #[test]
    fn batches_take_the_oldest_writes_within_the_limits() {
        let options = BatchingOptions {
            lanes: 1,
            ops_max: 3,
            bytes_max: 100,
        };
        let mut queue: VecDeque<Waiting> = [10, 10, 10, 10, 90, 200, 5]
            .into_iter()
            .map(waiting)
            .collect();
        let sizes = |b: Vec<Waiting>| b.iter().map(|w| w.op.len()).collect::<Vec<_>>();
        assert_eq!(sizes(take_batch(&mut queue, &options)), vec![10, 10, 10]);
        assert_eq!(sizes(take_batch(&mut queue, &options)), vec![10, 90]);
        // Larger than the byte limit: alone.
        assert_eq!(sizes(take_batch(&mut queue, &options)), vec![200]);
        assert_eq!(sizes(take_batch(&mut queue, &options)), vec![5]);
        assert!(take_batch(&mut queue, &options).is_empty());
    }
}
