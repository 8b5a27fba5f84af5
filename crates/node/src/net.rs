//! Connection plumbing shared by the replica server and the client library: bounded frame
//! reading, the authenticated handshake, and a writer that coalesces queued frames into few
//! syscalls.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rand::RngCore;
use shieldwall_core::{Authenticator, Principal};
use shieldwall_wire::{handshake_signing_bytes, Decoder, Frame, Hello, Proof, Refused, WireError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Largest frame accepted during a handshake (hello, proof, refusal).
pub(crate) const HANDSHAKE_FRAME_BYTES: usize = 4096;
/// How long a handshake may take.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A write that makes no progress this long means the peer is gone or stuck.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes a writer gathers from its queue into one write.
const COALESCE_BYTES: usize = 256 << 10;
/// Bytes read per syscall (at most).
const READ_CHUNK: usize = 64 << 10;

/// Why a connection ended or was refused.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Socket error.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The peer sent bytes that are not a valid frame.
    #[error("{0}")]
    Wire(#[from] WireError),
    /// The connection closed in the middle of a frame.
    #[error("connection closed mid-frame")]
    Truncated,
    /// The handshake did not complete in time.
    #[error("handshake timed out")]
    HandshakeTimeout,
    /// The other side refused the handshake.
    #[error("refused by peer: {0}")]
    Refused(String),
    /// The other side failed the handshake.
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// A frame of a kind this connection does not carry.
    #[error("unexpected {0} frame")]
    Unexpected(&'static str),
}

impl NetError {
    /// Metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            NetError::Io(_) => "io",
            NetError::Wire(w) => w.as_str(),
            NetError::Truncated => "truncated",
            NetError::HandshakeTimeout => "handshake_timeout",
            NetError::Refused(_) => "refused",
            NetError::Handshake(_) => "bad_handshake",
            NetError::Unexpected(_) => "unexpected_frame",
        }
    }
}

/// Reads frames from a stream; the buffer never holds more than one maximal frame plus one
/// read chunk.
#[derive(Debug)]
pub(crate) struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    decoder: Decoder,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(inner: R, max_frame_bytes: usize) -> FrameReader<R> {
        FrameReader {
            inner,
            buf: BytesMut::with_capacity(8 << 10),
            decoder: Decoder::new(max_frame_bytes),
        }
    }

    /// Change the frame limit (after the handshake).
    pub(crate) fn set_max_frame_bytes(&mut self, max: usize) {
        self.decoder = Decoder::new(max);
    }

    /// The next frame and its size in bytes; `None` at a clean end of stream.
    pub(crate) async fn next(&mut self) -> Result<Option<(Frame, usize)>, NetError> {
        loop {
            let need = match self.decoder.frame_len(&self.buf)? {
                Some(total) if self.buf.len() >= total => {
                    let frame = self.decoder.decode(&mut self.buf)?;
                    return Ok(frame.map(|f| (f, total)));
                }
                Some(total) => total - self.buf.len(),
                None => 4,
            };
            self.buf.reserve(need.clamp(1, READ_CHUNK));
            let read = self.inner.read_buf(&mut self.buf).await?;
            if read == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(NetError::Truncated)
                };
            }
        }
    }

    pub(crate) fn into_inner(self) -> R {
        self.inner
    }
}

/// Write one frame now.
pub(crate) async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    frame: &Frame,
) -> Result<(), NetError> {
    w.write_all(&frame.encode()).await?;
    Ok(())
}

/// What one side of a handshake knows.
pub(crate) struct Handshake<'a> {
    pub cluster: [u8; 32],
    pub me: Principal,
    pub auth: &'a dyn Authenticator,
}

/// Run the handshake (both sides run the same steps) and return the proven principal of the
/// other side. `accept` decides whether the claimed principal may connect; a refusal is sent
/// to the other side with the reason before the error is returned.
pub(crate) async fn handshake<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut W,
    hs: &Handshake<'_>,
    accept: impl Fn(Principal) -> Result<(), String>,
) -> Result<Principal, NetError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let run = async {
        let mut nonce = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut nonce);
        write_frame(
            writer,
            &Frame::Hello(Hello {
                cluster: hs.cluster,
                principal: hs.me,
                nonce,
            }),
        )
        .await?;
        let hello = match reader.next().await? {
            Some((Frame::Hello(h), _)) => h,
            Some((Frame::Refused(r), _)) => return Err(NetError::Refused(r.reason)),
            Some((f, _)) => return Err(NetError::Unexpected(f.name())),
            None => return Err(NetError::Truncated),
        };
        let check = if hello.cluster != hs.cluster {
            Err("the peer belongs to another cluster (cluster_id differs)".to_string())
        } else {
            accept(hello.principal)
        };
        if let Err(why) = check {
            let _ = write_frame(
                writer,
                &Frame::Refused(Refused {
                    reason: why.clone(),
                }),
            )
            .await;
            return Err(NetError::Handshake(why));
        }
        let peer = hello.principal;
        let sig = hs.auth.sign(&handshake_signing_bytes(
            &hs.cluster,
            hs.me,
            peer,
            &hello.nonce,
        ));
        write_frame(writer, &Frame::Proof(Proof { sig })).await?;
        let proof = match reader.next().await? {
            Some((Frame::Proof(p), _)) => p,
            Some((Frame::Refused(r), _)) => return Err(NetError::Refused(r.reason)),
            Some((f, _)) => return Err(NetError::Unexpected(f.name())),
            None => return Err(NetError::Truncated),
        };
        let signed = handshake_signing_bytes(&hs.cluster, peer, hs.me, &nonce);
        if !hs.auth.verify(peer, &signed, &proof.sig) {
            let why = format!("{peer:?} did not prove its identity (bad signature)");
            let _ = write_frame(
                writer,
                &Frame::Refused(Refused {
                    reason: why.clone(),
                }),
            )
            .await;
            return Err(NetError::Handshake(why));
        }
        write_frame(writer, &Frame::Accepted).await?;
        match reader.next().await? {
            Some((Frame::Accepted, _)) => Ok(peer),
            Some((Frame::Refused(r), _)) => Err(NetError::Refused(r.reason)),
            Some((f, _)) => Err(NetError::Unexpected(f.name())),
            None => Err(NetError::Truncated),
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, run)
        .await
        .map_err(|_| NetError::HandshakeTimeout)?
}

/// Write queued frames until the queue closes or a write fails; frames waiting in the queue
/// are gathered into one write of up to a few hundred KiB. A write that makes no progress for
/// [`WRITE_TIMEOUT`] fails the connection (a stuck peer must not hold its queue forever).
pub(crate) async fn write_loop<W: AsyncWrite + Unpin>(
    w: &mut W,
    rx: &mut mpsc::Receiver<Bytes>,
    mut on_written: impl FnMut(usize),
) -> Result<(), NetError> {
    let mut out = BytesMut::with_capacity(COALESCE_BYTES);
    while let Some(first) = rx.recv().await {
        let frame = if rx.is_empty() {
            first
        } else {
            out.clear();
            out.extend_from_slice(&first);
            while out.len() < COALESCE_BYTES {
                match rx.try_recv() {
                    Ok(more) => out.extend_from_slice(&more),
                    Err(_) => break,
                }
            }
            out.split().freeze()
        };
        tokio::time::timeout(WRITE_TIMEOUT, w.write_all(&frame))
            .await
            .map_err(|_| {
                NetError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "write made no progress",
                ))
            })??;
        on_written(frame.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shieldwall_core::SimAuth;

    #[tokio::test]
    async fn handshake_proves_both_sides_and_refuses_impostors() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (ar, mut aw) = tokio::io::split(a);
        let (br, mut bw) = tokio::io::split(b);
        let auth_a = SimAuth::new(Principal::Replica(0), [1; 32]);
        let auth_b = SimAuth::new(Principal::Replica(1), [1; 32]);
        let hs_a = Handshake {
            cluster: [9; 32],
            me: Principal::Replica(0),
            auth: &auth_a,
        };
        let hs_b = Handshake {
            cluster: [9; 32],
            me: Principal::Replica(1),
            auth: &auth_b,
        };
        let mut ra = FrameReader::new(ar, HANDSHAKE_FRAME_BYTES);
        let mut rb = FrameReader::new(br, HANDSHAKE_FRAME_BYTES);
        let (x, y) = tokio::join!(
            handshake(&mut ra, &mut aw, &hs_a, |_| Ok(())),
            handshake(&mut rb, &mut bw, &hs_b, |_| Ok(()))
        );
        assert_eq!(x.unwrap(), Principal::Replica(1));
        assert_eq!(y.unwrap(), Principal::Replica(0));

        // An impostor claims to be replica 2 with replica 1's key.
        let (a, b) = tokio::io::duplex(1 << 16);
        let (ar, mut aw) = tokio::io::split(a);
        let (br, mut bw) = tokio::io::split(b);
        let liar = Handshake {
            cluster: [9; 32],
            me: Principal::Replica(2),
            auth: &auth_b,
        };
        let mut ra = FrameReader::new(ar, HANDSHAKE_FRAME_BYTES);
        let mut rb = FrameReader::new(br, HANDSHAKE_FRAME_BYTES);
        let (x, y) = tokio::join!(
            handshake(&mut ra, &mut aw, &hs_a, |_| Ok(())),
            handshake(&mut rb, &mut bw, &liar, |_| Ok(()))
        );
        assert!(matches!(x, Err(NetError::Handshake(_))), "{x:?}");
        assert!(matches!(y, Err(NetError::Refused(_))), "{y:?}");

        // Another cluster is refused with the reason.
        let (a, b) = tokio::io::duplex(1 << 16);
        let (ar, mut aw) = tokio::io::split(a);
        let (br, mut bw) = tokio::io::split(b);
        let other = Handshake {
            cluster: [8; 32],
            me: Principal::Replica(1),
            auth: &auth_b,
        };
        let mut ra = FrameReader::new(ar, HANDSHAKE_FRAME_BYTES);
        let mut rb = FrameReader::new(br, HANDSHAKE_FRAME_BYTES);
        let (_, y) = tokio::join!(
            handshake(&mut ra, &mut aw, &hs_a, |_| Ok(())),
            handshake(&mut rb, &mut bw, &other, |_| Ok(()))
        );
        // Both sides notice (each sees the other's cluster id); either way the reason is given.
        match y {
            Err(NetError::Refused(why) | NetError::Handshake(why)) => {
                assert!(why.contains("another cluster"), "{why}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn reader_refuses_oversized_frames_before_buffering_them() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut r = FrameReader::new(a, 1000);
        b.write_all(&(1u32 << 30).to_le_bytes()).await.unwrap();
        let err = r.next().await.unwrap_err();
        assert!(matches!(err, NetError::Wire(WireError::TooLarge { .. })));
        assert!(r.buf.capacity() < 64 << 10);
    }
}
