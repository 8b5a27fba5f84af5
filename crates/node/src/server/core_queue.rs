//! The core thread's input queue.
//!
//! Many producers (connection tasks, verify pool threads, the service and storage threads),
//! one consumer (the core thread). A channel such as crossbeam's spins and then yields the CPU
//! in a loop before it sleeps; on a host where the replicas share two cores, an idle core
//! thread that yields once per input (measured: about one `sched_yield` per request at one
//! client) stays runnable and competes with the threads that produce its next input, and when
//! that input comes it is not woken with a waking thread's priority. This queue's consumer
//! sleeps at once, and a producer pays for a wake-up only when the consumer sleeps.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The queue was closed: its consumer is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed;

/// An unbounded multi-producer, single-consumer queue whose consumer blocks without spinning.
/// Producers never block beyond a short critical section.
#[derive(Debug)]
pub(crate) struct CoreQueue<T> {
    inner: Mutex<Inner<T>>,
    ready: Condvar,
    /// Items queued, readable without the lock (metrics, the core's "anything waiting?").
    len: AtomicUsize,
}

#[derive(Debug)]
struct Inner<T> {
    items: VecDeque<T>,
    /// The consumer waits on `ready`: the next push must notify it.
    sleeping: bool,
    /// [`CoreQueue::wake`] was called since the consumer last waited.
    woken: bool,
    closed: bool,
}

impl<T> Default for CoreQueue<T> {
    fn default() -> Self {
        CoreQueue {
            inner: Mutex::new(Inner {
                items: VecDeque::new(),
                sleeping: false,
                woken: false,
                closed: false,
            }),
            ready: Condvar::new(),
            len: AtomicUsize::new(0),
        }
    }
}

impl<T> CoreQueue<T> {
    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        // No code panics while holding this lock (pushes and pops of a VecDeque).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue `item`, waking the consumer if it sleeps. `Err` once the queue is closed (the
    /// item is dropped).
    pub(crate) fn send(&self, item: T) -> Result<(), Closed> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(Closed);
        }
        inner.items.push_back(item);
        self.len.store(inner.items.len(), Ordering::Release);
        let wake = std::mem::take(&mut inner.sleeping);
        drop(inner);
        if wake {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// The next item if one is queued.
    pub(crate) fn try_recv(&self) -> Option<T> {
        if self.is_empty() {
            return None;
        }
        let mut inner = self.lock();
        let item = inner.items.pop_front();
        self.len.store(inner.items.len(), Ordering::Release);
        item
    }

    /// Wait until an item is queued, [`CoreQueue::wake`] is called, or `timeout` passes;
    /// takes nothing from the queue.
    pub(crate) fn wait(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut inner = self.lock();
        loop {
            if !inner.items.is_empty() || std::mem::take(&mut inner.woken) || inner.closed {
                return;
            }
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            inner.sleeping = true;
            inner = self
                .ready
                .wait_timeout(inner, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            inner.sleeping = false;
        }
    }

    /// End the consumer's current or next [`CoreQueue::wait`] without an item (it has
    /// something else to look at: an earlier timer).
    pub(crate) fn wake(&self) {
        let mut inner = self.lock();
        inner.woken = true;
        let wake = std::mem::take(&mut inner.sleeping);
        drop(inner);
        if wake {
            self.ready.notify_one();
        }
    }

    /// Every item queued now, without waiting.
    #[cfg(test)]
    pub(crate) fn drain(&self) -> Vec<T> {
        let mut inner = self.lock();
        self.len.store(0, Ordering::Release);
        inner.items.drain(..).collect()
    }

    /// Refuse further items and drop the queued ones: the consumer is gone.
    pub(crate) fn close(&self) {
        let dropped = {
            let mut inner = self.lock();
            inner.closed = true;
            self.len.store(0, Ordering::Release);
            std::mem::take(&mut inner.items)
        };
        // Dropped outside the lock: an item may hold a permit whose release wakes a task.
        drop(dropped);
    }

    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Spin (yielding) until the consumer sleeps in [`CoreQueue::wait`].
    fn until_sleeping<T>(q: &CoreQueue<T>) {
        while !q.lock().sleeping {
            std::thread::yield_now();
        }
    }

    #[test]
    fn items_come_out_in_order_and_an_empty_queue_times_out() {
        let q = CoreQueue::default();
        assert_eq!(q.try_recv(), None);
        for i in 0..5 {
            q.send(i).unwrap();
        }
        assert_eq!(q.len(), 5);
        assert_eq!(q.try_recv(), Some(0));
        assert_eq!(q.drain(), vec![1, 2, 3, 4]);
        assert!(q.is_empty());
        let started = Instant::now();
        q.wait(Duration::from_millis(20));
        assert!(started.elapsed() >= Duration::from_millis(20));
        assert_eq!(q.try_recv(), None);
    }

    /// A sleeping consumer is woken by every producer's push, and nothing is lost or
    /// reordered per producer, with producers racing the consumer going to sleep.
    #[test]
    fn a_sleeping_consumer_is_woken_and_nothing_is_lost() {
        const PRODUCERS: usize = 4;
        const EACH: usize = 20_000;
        let q = Arc::new(CoreQueue::default());
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let q = q.clone();
                std::thread::spawn(move || {
                    for i in 0..EACH {
                        q.send((p, i)).unwrap();
                        if i % 1000 == 0 {
                            // Let the consumer catch up and go to sleep, so pushes meet a
                            // sleeper as well as a busy consumer.
                            until_sleeping(&q);
                        }
                    }
                })
            })
            .collect();
        let mut next = [0usize; PRODUCERS];
        let mut got = 0;
        while got < PRODUCERS * EACH {
            let Some((p, i)) = q.try_recv() else {
                // A generous bound: a lost wake-up shows as a failure here, not a slow test.
                let started = Instant::now();
                q.wait(Duration::from_secs(10));
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "a push woke the consumer"
                );
                continue;
            };
            assert_eq!(i, next[p], "producer {p}'s items in order");
            next[p] += 1;
            got += 1;
        }
        for t in producers {
            t.join().unwrap();
        }
        assert!(q.is_empty());
    }

    #[test]
    fn wait_returns_for_an_item_or_a_wake_and_takes_nothing() {
        let q = Arc::new(CoreQueue::default());
        q.send(7).unwrap();
        q.wait(Duration::from_secs(10));
        assert_eq!(q.try_recv(), Some(7), "wait took nothing");
        assert_eq!(q.try_recv(), None);
        // A wake before the wait ends it at once; one after the consumer slept, too.
        q.wake();
        let started = Instant::now();
        q.wait(Duration::from_secs(10));
        assert!(started.elapsed() < Duration::from_secs(5));
        let waker = {
            let q = q.clone();
            std::thread::spawn(move || {
                // Wake only a sleeping consumer.
                until_sleeping(&q);
                q.wake();
            })
        };
        let started = Instant::now();
        q.wait(Duration::from_secs(10));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the wake ended the wait"
        );
        waker.join().unwrap();
        assert!(q.is_empty());
    }

    #[test]
    fn a_closed_queue_refuses_items_and_drops_what_it_held() {
        let q = CoreQueue::default();
        let held = Arc::new(());
        q.send(held.clone()).unwrap();
        assert_eq!(Arc::strong_count(&held), 2);
        q.close();
        assert_eq!(Arc::strong_count(&held), 1, "queued items are dropped");
        assert_eq!(q.send(held.clone()), Err(Closed));
        assert_eq!(Arc::strong_count(&held), 1, "a refused item is dropped");
        let started = Instant::now();
        q.wait(Duration::from_secs(10));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a closed queue is not waited on"
        );
        assert_eq!(q.try_recv(), None);
    }
}
