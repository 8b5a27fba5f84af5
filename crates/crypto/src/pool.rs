//! A pool of worker threads that handles jobs in batches.
//!
//! Workers take the first queued job and then whatever else is queued, up to `batch_max`, and
//! hand the batch to the handler: under load, signature checks are batch-verified; when idle, a
//! lone job runs at once. The runtime uses it so verification never runs on the protocol core's
//! thread.
//!
//! Bounds: the queue itself does not refuse jobs; producers bound it by admission (the runtime
//! admits a frame only within its connection's byte budget, released when the core is done with
//! the message), and [`BatchPool::queued`] meters it.

use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

/// The pool was shut down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("worker pool is shut down")]
pub struct PoolClosed;

/// Worker threads that run a handler on batches of queued jobs.
pub struct BatchPool<T: Send + 'static> {
    /// The only sender; submitters share it, so shutting down closes the queue for everyone.
    tx: Arc<RwLock<Option<Sender<T>>>>,
    rx: Receiver<T>,
    workers: Vec<JoinHandle<()>>,
}

impl<T: Send + 'static> std::fmt::Debug for BatchPool<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchPool")
            .field("workers", &self.workers.len())
            .field("queued", &self.rx.len())
            .finish()
    }
}

impl<T: Send + 'static> BatchPool<T> {
    /// Start `threads` workers (at least one) named `name-N`, each calling `handler` with
    /// batches of 1 to `batch_max` jobs.
    pub fn new<F>(name: &str, threads: usize, batch_max: usize, handler: F) -> BatchPool<T>
    where
        F: Fn(Vec<T>) + Send + Sync + 'static,
    {
        let (tx, rx) = crossbeam_channel::unbounded::<T>();
        let handler = Arc::new(handler);
        let batch_max = batch_max.max(1);
        let workers = (0..threads.max(1))
            .map(|i| {
                let rx = rx.clone();
                let handler = handler.clone();
                std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || {
                        while let Ok(first) = rx.recv() {
                            let mut batch = Vec::with_capacity(batch_max.min(64));
                            batch.push(first);
                            while batch.len() < batch_max {
                                match rx.try_recv() {
                                    Ok(job) => batch.push(job),
                                    Err(_) => break,
                                }
                            }
                            handler(batch);
                        }
                    })
                    .unwrap_or_else(|e| panic!("cannot start worker thread {name}-{i}: {e}"))
            })
            .collect();
        BatchPool {
            tx: Arc::new(RwLock::new(Some(tx))),
            rx,
            workers,
        }
    }

    /// Queue a job; never blocks.
    pub fn submit(&self, job: T) -> Result<(), PoolClosed> {
        send(&self.tx, job)
    }

    /// A handle that queues jobs from other threads.
    pub fn submitter(&self) -> Submitter<T> {
        Submitter {
            tx: self.tx.clone(),
        }
    }

    /// Jobs waiting for a worker.
    pub fn queued(&self) -> usize {
        self.rx.len()
    }

    /// Stop accepting jobs, let the workers finish what is queued, and wait for them.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Ok(mut tx) = self.tx.write() {
            *tx = None;
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl<T: Send + 'static> Drop for BatchPool<T> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Queues jobs into a [`BatchPool`] from any thread.
#[derive(Debug)]
pub struct Submitter<T> {
    tx: Arc<RwLock<Option<Sender<T>>>>,
}

impl<T> Clone for Submitter<T> {
    fn clone(&self) -> Self {
        Submitter {
            tx: self.tx.clone(),
        }
    }
}

impl<T> Submitter<T> {
    /// Queue a job; never blocks.
    pub fn submit(&self, job: T) -> Result<(), PoolClosed> {
        send(&self.tx, job)
    }

    /// Jobs waiting for a worker.
    pub fn queued(&self) -> usize {
        self.tx
            .read()
            .ok()
            .and_then(|tx| tx.as_ref().map(Sender::len))
            .unwrap_or(0)
    }
}

fn send<T>(tx: &RwLock<Option<Sender<T>>>, job: T) -> Result<(), PoolClosed> {
    match tx.read().as_deref() {
        Ok(Some(tx)) => tx.send(job).map_err(|_| PoolClosed),
        _ => Err(PoolClosed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    #[test]
    fn every_job_runs_once_in_batches() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let batches = Arc::new(AtomicUsize::new(0));
        let (s, b) = (seen.clone(), batches.clone());
        let pool = BatchPool::new("test", 2, 8, move |jobs: Vec<u32>| {
            assert!((1..=8).contains(&jobs.len()));
            b.fetch_add(1, Ordering::Relaxed);
            s.lock().unwrap().extend(jobs);
        });
        let sub = pool.submitter();
        for i in 0..1000 {
            sub.submit(i).unwrap();
        }
        pool.shutdown();
        let mut seen = seen.lock().unwrap().clone();
        seen.sort_unstable();
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
        assert!(batches.load(Ordering::Relaxed) >= 1000 / 8);
        assert_eq!(sub.submit(1), Err(PoolClosed));
    }
}
