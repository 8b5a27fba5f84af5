//! Bounded outbound queues with direct writes: one per replica's peer link and client
//! connection, and one per client library's link to a replica.
//!
//! A thread queues the frames it has for a connection and then flushes. A flush asked to be
//! direct, finding no write in flight, writes the queued frames itself (one non-blocking
//! vectored write): the frame goes on the wire without waking the connection's writer task,
//! one thread hand-off (tens of microseconds on a 2-vCPU machine) less per message. Everything
//! else (what the socket did not take, flushes that are not direct, frames queued while a write
//! is in flight or the link is down) is left to the writer task, which coalesces what is queued
//! into writes of up to [`COALESCE_BYTES`]. Either way frames leave in queue order.
//!
//! Bounds: at most `frames_max` frames and `bytes_max` bytes wait; a frame that does not fit is
//! refused and the caller counts the drop, so a pusher never waits on a slow connection.

use std::collections::VecDeque;
use std::io::{ErrorKind, IoSlice};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;

use prometheus_client::metrics::counter::Counter;

use crate::net::{NetError, WRITE_TIMEOUT};

/// The most bytes the writer task puts in one write.
const COALESCE_BYTES: usize = 256 << 10;
/// The most frames one direct write takes (a vectored write; the rest waits for the writer).
const DIRECT_FRAMES_MAX: usize = 64;

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Bytes>,
    bytes: usize,
    /// The writer task holds frames it took from the queue and has not finished writing.
    writing: bool,
    /// The current connection, for direct writes (none while the link is down).
    direct: Option<Arc<OwnedWriteHalf>>,
    /// The receiving end is gone.
    closed: bool,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    wake: Notify,
    frames_max: usize,
    bytes_max: usize,
    /// Counts the bytes written, if given.
    bytes_out: Option<Counter>,
}

impl State {
    /// Forget the first `n` queued bytes (written directly).
    fn consume(&mut self, mut n: usize) {
        self.bytes -= n;
        while n > 0 {
            let Some(front) = self.frames.front_mut() else {
                return;
            };
            if front.len() <= n {
                n -= front.len();
                self.frames.pop_front();
            } else {
                *front = front.slice(n..);
                n = 0;
            }
        }
    }

    /// Take up to [`COALESCE_BYTES`] of queued frames (at least one) as one buffer and mark a
    /// write in flight; with nothing queued, clear the mark and return `None`.
    fn take(&mut self, out: &mut BytesMut) -> Option<Bytes> {
        let Some(first) = self.frames.pop_front() else {
            self.writing = false;
            return None;
        };
        self.writing = true;
        let batch = if self.frames.is_empty() {
            first
        } else {
            out.clear();
            out.extend_from_slice(&first);
            while out.len() < COALESCE_BYTES {
                match self.frames.pop_front() {
                    Some(more) => out.extend_from_slice(&more),
                    None => break,
                }
            }
            out.split().freeze()
        };
        self.bytes -= batch.len();
        Some(batch)
    }
}

impl Shared {
    fn written(&self, n: usize) {
        if let Some(c) = &self.bytes_out {
            c.inc_by(n as u64);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the queue consistent (every change is a
        // single push or pop), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The sending end: cheap to clone, usable from any thread.
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    shared: Arc<Shared>,
}

/// The receiving end, for the connection's writer task. Dropping it closes the outbox.
#[derive(Debug)]
pub(crate) struct OutboxReceiver {
    shared: Arc<Shared>,
}

impl Outbox {
    /// An outbox holding at most `frames_max` frames and `bytes_max` bytes; `bytes_out`
    /// counts what is written.
    pub(crate) fn new(
        frames_max: usize,
        bytes_max: usize,
        bytes_out: Option<Counter>,
    ) -> (Outbox, OutboxReceiver) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            frames_max: frames_max.max(1),
            bytes_max,
            bytes_out,
        });
        (
            Outbox {
                shared: shared.clone(),
            },
            OutboxReceiver { shared },
        )
    }

    /// Queue `frame` and send what is queued ([`Outbox::flush`] with `direct`); `false` if it
    /// does not fit (or the outbox is closed).
    pub(crate) fn send(&self, frame: Bytes, direct: bool) -> bool {
        let queued = self.queue(frame);
        if queued {
            self.flush(direct);
        }
        queued
    }

    /// Queue `frame` without sending it yet: a thread with more frames to send queues them all
    /// and flushes each outbox once ([`Flush`]). `false` if it does not fit (or the outbox is
    /// closed).
    pub(crate) fn queue(&self, frame: Bytes) -> bool {
        let mut s = self.shared.lock();
        if s.closed
            || s.frames.len() >= self.shared.frames_max
            || s.bytes + frame.len() > self.shared.bytes_max
        {
            return false;
        }
        s.bytes += frame.len();
        s.frames.push_back(frame);
        true
    }

    /// Send what is queued. With `direct`, and no write in flight, this thread writes as much
    /// as the socket takes at once (one vectored write) and leaves the rest to the writer task;
    /// without, the writer task is woken to write it all (it coalesces, which suits a thread
    /// that has more work waiting).
    pub(crate) fn flush(&self, direct: bool) {
        let mut s = self.shared.lock();
        if s.frames.is_empty() {
            return;
        }
        if direct && !s.writing {
            if let Some(w) = s.direct.clone() {
                let mut io = [IoSlice::new(&[]); DIRECT_FRAMES_MAX];
                let k = s.frames.len().min(DIRECT_FRAMES_MAX);
                for (slot, f) in io.iter_mut().zip(&s.frames) {
                    *slot = IoSlice::new(f);
                }
                // A full socket buffer leaves everything to the writer task; any other error
                // the writer task meets again and reports as the connection's end.
                if let Ok(n) = w.try_write_vectored(&io[..k]) {
                    self.shared.written(n);
                    s.consume(n);
                    if s.frames.is_empty() {
                        return;
                    }
                }
            }
        }
        drop(s);
        self.shared.wake.notify_one();
    }

    pub(crate) fn queued_frames(&self) -> usize {
        self.shared.lock().frames.len()
    }

    pub(crate) fn queued_bytes(&self) -> usize {
        self.shared.lock().bytes
    }
}

/// Outboxes a thread queued frames into and has not flushed yet.
#[derive(Debug, Default)]
pub(crate) struct Flush(Vec<Outbox>);

impl Flush {
    /// Queue `frame` in `out`, to be sent at the next [`Flush::run`]; `false` if it does not
    /// fit.
    pub(crate) fn queue(&mut self, out: &Outbox, frame: Bytes) -> bool {
        if !out.queue(frame) {
            return false;
        }
        if !self.0.iter().any(|o| Arc::ptr_eq(&o.shared, &out.shared)) {
            self.0.push(out.clone());
        }
        true
    }

    /// Flush every outbox queued into since the last run ([`Outbox::flush`] with `direct`).
    pub(crate) fn run(&mut self, direct: bool) {
        for out in self.0.drain(..) {
            out.flush(direct);
        }
    }
}

impl OutboxReceiver {
    /// Write queued frames into `w` until a write fails; the caller ends it (drops the
    /// future) when the connection ends otherwise. While it runs, pushers may write into `w`
    /// directly; once it returns or is dropped, they queue.
    pub(crate) async fn write_into(&mut self, w: OwnedWriteHalf) -> Result<(), NetError> {
        /// Withdraws the connection from the pushers, however the writer ends.
        struct Detach<'a>(&'a Shared);
        impl Drop for Detach<'_> {
            fn drop(&mut self) {
                let mut s = self.0.lock();
                s.direct = None;
                s.writing = false;
            }
        }
        let w = Arc::new(w);
        self.shared.lock().direct = Some(w.clone());
        let _detach = Detach(&self.shared);
        let mut out = BytesMut::new();
        loop {
            let lone = {
                let s = self.shared.lock();
                s.frames.len() == 1 && !s.writing
            };
            if lone {
                // Let the tasks that are ready run first: whatever they queue for this
                // connection goes out in the same write (one system call for many frames under
                // load; with nothing else ready this returns at once).
                tokio::task::yield_now().await;
            }
            let batch = self.shared.lock().take(&mut out);
            let Some(batch) = batch else {
                self.shared.wake.notified().await;
                continue;
            };
            write_all(&w, &batch).await?;
            self.shared.written(batch.len());
        }
    }

    /// Drop everything queued (the link went down: those frames are stale); returns how many.
    pub(crate) fn clear(&mut self) -> usize {
        let mut s = self.shared.lock();
        s.bytes = 0;
        s.writing = false;
        let dropped = s.frames.len();
        s.frames.clear();
        dropped
    }

    /// Every sending end is gone.
    pub(crate) fn is_closed(&self) -> bool {
        Arc::strong_count(&self.shared) == 1
    }
}

impl Drop for OutboxReceiver {
    fn drop(&mut self) {
        let mut s = self.shared.lock();
        s.closed = true;
        s.direct = None;
        s.frames.clear();
        s.bytes = 0;
    }
}

/// Write all of `buf`, failing if the socket accepts nothing for [`WRITE_TIMEOUT`].
async fn write_all(w: &OwnedWriteHalf, buf: &[u8]) -> Result<(), NetError> {
    let mut written = 0;
    while written < buf.len() {
        match tokio::time::timeout(WRITE_TIMEOUT, w.writable()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                return Err(NetError::Io(std::io::Error::new(
                    ErrorKind::TimedOut,
                    "write made no progress",
                )))
            }
        }
        match w.try_write(&buf[written..]) {
            Ok(0) => return Err(NetError::Truncated),
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    fn outbox(frames: usize, bytes: usize) -> (Outbox, OutboxReceiver) {
        Outbox::new(frames, bytes, None)
    }

    async fn pair() -> (OwnedWriteHalf, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a.into_split().1, b)
    }

    /// Frame `i` of `len` bytes: its index, then filler.
    fn frame(i: u32, len: usize) -> Bytes {
        let mut f = vec![(i % 251) as u8; len];
        f[..4].copy_from_slice(&i.to_be_bytes());
        f.into()
    }

    #[test]
    fn a_full_queue_refuses_frames_and_counts_nothing_twice() {
        let (out, mut rx) = outbox(2, 100);
        assert!(out.queue(frame(0, 40)));
        assert!(out.queue(frame(1, 40)));
        assert!(!out.queue(frame(2, 4)), "frame limit");
        assert_eq!((out.queued_frames(), out.queued_bytes()), (2, 80));
        assert_eq!(rx.clear(), 2);
        assert!(out.queue(frame(3, 60)));
        assert!(!out.queue(frame(4, 41)), "byte limit");
        assert!(out.queue(frame(5, 40)));
        assert_eq!(out.queued_bytes(), 100);
        assert!(!rx.is_closed());
        drop(rx);
        assert!(!out.queue(frame(6, 4)), "closed");
    }

    // One runtime thread: the writer task runs only while this test awaits, so a frame that
    // is gone from the queue right after its push went out directly.
    #[tokio::test(flavor = "current_thread")]
    async fn frames_arrive_whole_and_in_order_however_they_are_written() {
        // Far more than the socket buffers hold while nobody reads: the first frames go out
        // directly, one is cut short by a full buffer and its rest queued, the others queue
        // behind it; the writer task sends them once the reader drains the socket.
        let (w, mut r) = pair().await;
        let (out, mut rx) = outbox(10_000, 1 << 30);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let writer = tokio::spawn(async move {
            tokio::select! {
                r = rx.write_into(w) => panic!("the writer ended: {r:?}"),
                _ = stopped => rx,
            }
        });
        while out.shared.lock().direct.is_none() {
            tokio::task::yield_now().await;
        }
        let probe = frame(0, 8);
        assert!(out.queue(probe.clone()));
        out.flush(true);
        assert_eq!(out.queued_frames(), 0, "written directly");
        let mut got = vec![0u8; 8];
        r.read_exact(&mut got).await.unwrap();
        assert_eq!(got, probe);
        const N: u32 = 400;
        const LEN: usize = 50_000;
        let pusher = {
            let out = out.clone();
            // In turns of one to three frames, as a core thread flushes after each input.
            std::thread::spawn(move || {
                let mut flush = Flush::default();
                (1..=N).all(|i| {
                    let queued = flush.queue(&out, frame(i, LEN));
                    if i % 3 == 0 || i == N {
                        flush.run(true);
                    }
                    queued
                })
            })
        };
        assert!(tokio::task::spawn_blocking(move || pusher.join().unwrap())
            .await
            .unwrap());
        assert!(out.queued_frames() > 0, "the socket buffers filled up");
        let mut buf = vec![0u8; LEN];
        for i in 1..=N {
            r.read_exact(&mut buf).await.unwrap();
            assert_eq!(buf, frame(i, LEN), "frame {i}");
        }
        assert_eq!(out.queued_bytes(), 0);
        stop.send(()).unwrap();
        let mut rx = writer.await.unwrap();
        // Detached: frames queue until the next connection.
        assert!(out.queue(frame(N + 1, 10)));
        out.flush(true);
        assert_eq!(out.queued_frames(), 1);
        assert_eq!(rx.clear(), 1);
    }
}
