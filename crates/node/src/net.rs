//! Connection plumbing shared by the replica server and the client library: bounded frame
//! reading, the authenticated handshake, and a writer that coalesces queued frames into few
//! syscalls.

use std::time::Duration;

use bytes::BytesMut;
use rand::RngCore;
use shieldwall_core::{Authenticator, Principal};
use shieldwall_wire::{
    handshake_signing_bytes, Decoder, Frame, Hello, Proof, Refused, Role, WireError,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame accepted during a handshake (hello, proof, refusal).
pub(crate) const HANDSHAKE_FRAME_BYTES: usize = 4096;
/// How long a new connection may take to send its first frame.
pub(crate) const HELLO_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a handshake may take.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A write that makes no progress this long means the peer is gone or stuck.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time to establish a TCP connection (the kernel retries a SYN to a vanished host for
/// minutes otherwise).
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A connection whose other end stops acknowledging (a host that crashed or was partitioned
/// away without closing its sockets) is closed after about this long, whether it carries data
/// (`TCP_USER_TIMEOUT`) or is idle (keepalive probes): links notice, report themselves down
/// and redial, resolving the peer's name again.
pub(crate) const DEAD_PEER_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes read per syscall (at most).
const READ_CHUNK: usize = 64 << 10;

/// Connect to `address` (`host:port`, resolved on every call) within [`CONNECT_TIMEOUT`], and
/// [`tune`] the connection.
pub(crate) async fn connect(address: &str) -> std::io::Result<tokio::net::TcpStream> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(address))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {CONNECT_TIMEOUT:?}"),
            )
        })??;
    tune(&stream);
    Ok(stream)
}

/// No Nagle delay, and a dead other end is noticed within about [`DEAD_PEER_TIMEOUT`]. Best
/// effort: an option the system refuses leaves the kernel's default.
pub(crate) fn tune(stream: &tokio::net::TcpStream) {
    let _ = stream.set_nodelay(true);
    let socket = socket2::SockRef::from(stream);
    let probes = 3;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(DEAD_PEER_TIMEOUT / 2)
        .with_interval(DEAD_PEER_TIMEOUT / (2 * probes))
        .with_retries(probes);
    let _ = socket.set_tcp_keepalive(&keepalive);
    let _ = socket.set_tcp_user_timeout(Some(DEAD_PEER_TIMEOUT));
}

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

    /// The next frame, read only once `admit` granted its size (e.g. a byte budget): at most a
    /// header and one read chunk are buffered before that. `admit` returning `None` ends the
    /// stream.
    pub(crate) async fn next_admitted<P, Fut>(
        &mut self,
        admit: impl FnOnce(usize) -> Fut,
    ) -> Result<Option<(Frame, usize, P)>, NetError>
    where
        Fut: std::future::Future<Output = Option<P>>,
    {
        let total = loop {
            if let Some(total) = self.decoder.frame_len(&self.buf)? {
                break total;
            }
            self.buf.reserve(READ_CHUNK);
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(NetError::Truncated)
                };
            }
        };
        let Some(permit) = admit(total).await else {
            return Ok(None);
        };
        match self.next().await? {
            Some((frame, size)) => Ok(Some((frame, size, permit))),
            None => Err(NetError::Truncated),
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
    /// Whether this side opened the connection.
    pub role: Role,
}

/// The next handshake frame; a refusal becomes the error it announces.
async fn expect<R: AsyncRead + Unpin>(reader: &mut FrameReader<R>) -> Result<Frame, NetError> {
    match reader.next().await? {
        Some((Frame::Refused(r), _)) => Err(NetError::Refused(r.reason)),
        Some((f, _)) => Ok(f),
        None => Err(NetError::Truncated),
    }
}

/// Send a refusal (best effort) and return the error.
async fn refuse<W: AsyncWrite + Unpin>(writer: &mut W, why: String) -> NetError {
    let _ = write_frame(
        writer,
        &Frame::Refused(Refused {
            reason: why.clone(),
        }),
    )
    .await;
    NetError::Handshake(why)
}

/// Run the handshake (see `shieldwall_wire` for the steps) and return the proven principal of
/// the other side. `accept` decides whether the claimed principal may connect; a refusal is
/// sent to the other side with the reason before the error is returned. The other side's first
/// frame must arrive within [`HELLO_TIMEOUT`], the whole handshake within
/// [`HANDSHAKE_TIMEOUT`].
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
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, expect(reader)).await {
            Err(_) => return Err(NetError::HandshakeTimeout),
            Ok(Ok(Frame::Hello(h))) => h,
            Ok(Ok(f)) => return Err(NetError::Unexpected(f.name())),
            Ok(Err(e)) => return Err(e),
        };
        let check = if hello.cluster != hs.cluster {
            Err("the peer belongs to another cluster (cluster_id differs)".to_string())
        } else {
            accept(hello.principal)
        };
        if let Err(why) = check {
            return Err(refuse(writer, why).await);
        }
        let peer = hello.principal;
        let (dialer, acceptor, dialer_nonce, acceptor_nonce) = match hs.role {
            Role::Dialer => (hs.me, peer, nonce, hello.nonce),
            Role::Acceptor => (peer, hs.me, hello.nonce, nonce),
        };
        let bytes = |prover| {
            handshake_signing_bytes(
                &hs.cluster,
                prover,
                dialer,
                acceptor,
                &dialer_nonce,
                &acceptor_nonce,
            )
        };
        let my_proof = Frame::Proof(Proof {
            sig: hs.auth.sign(&bytes(hs.role)),
        });
        let their_role = match hs.role {
            Role::Dialer => Role::Acceptor,
            Role::Acceptor => Role::Dialer,
        };
        if hs.role == Role::Dialer {
            write_frame(writer, &my_proof).await?;
        }
        let proof = match expect(reader).await? {
            Frame::Proof(p) => p,
            f => return Err(NetError::Unexpected(f.name())),
        };
        if !hs.auth.verify(peer, &bytes(their_role), &proof.sig) {
            let why = format!("{peer:?} did not prove its identity (bad signature)");
            return Err(refuse(writer, why).await);
        }
        match hs.role {
            Role::Dialer => {
                write_frame(writer, &Frame::Accepted).await?;
                Ok(peer)
            }
            Role::Acceptor => {
                // Only now, with the dialer proven, does this side sign anything for it.
                write_frame(writer, &my_proof).await?;
                match expect(reader).await? {
                    Frame::Accepted => Ok(peer),
                    f => Err(NetError::Unexpected(f.name())),
                }
            }
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, run)
        .await
        .map_err(|_| NetError::HandshakeTimeout)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use shieldwall_core::SimAuth;

    /// Run both sides of a handshake over an in-memory pipe.
    async fn run_pair(
        a: &Handshake<'_>,
        b: &Handshake<'_>,
    ) -> (Result<Principal, NetError>, Result<Principal, NetError>) {
        let (x, y) = tokio::io::duplex(1 << 16);
        let (xr, mut xw) = tokio::io::split(x);
        let (yr, mut yw) = tokio::io::split(y);
        let mut xr = FrameReader::new(xr, HANDSHAKE_FRAME_BYTES);
        let mut yr = FrameReader::new(yr, HANDSHAKE_FRAME_BYTES);
        tokio::join!(
            handshake(&mut xr, &mut xw, a, |_| Ok(())),
            handshake(&mut yr, &mut yw, b, |_| Ok(()))
        )
    }

    #[tokio::test]
    async fn handshake_proves_both_sides_and_refuses_impostors() {
        let auth_a = SimAuth::new(Principal::Replica(0), [1; 32]);
        let auth_b = SimAuth::new(Principal::Replica(1), [1; 32]);
        let side = |cluster, me, auth, role| Handshake {
            cluster,
            me,
            auth,
            role,
        };
        let hs_a = side([9; 32], Principal::Replica(0), &auth_a, Role::Acceptor);
        let hs_b = side([9; 32], Principal::Replica(1), &auth_b, Role::Dialer);
        let (x, y) = run_pair(&hs_a, &hs_b).await;
        assert_eq!(x.unwrap(), Principal::Replica(1));
        assert_eq!(y.unwrap(), Principal::Replica(0));

        // An impostor claims to be replica 2 with replica 1's key.
        let liar = side([9; 32], Principal::Replica(2), &auth_b, Role::Dialer);
        let (x, y) = run_pair(&hs_a, &liar).await;
        assert!(matches!(x, Err(NetError::Handshake(_))), "{x:?}");
        assert!(matches!(y, Err(NetError::Refused(_))), "{y:?}");

        // Another cluster is refused with the reason. Both sides notice (each sees the other's
        // cluster id); either way the reason is given.
        let other = side([8; 32], Principal::Replica(1), &auth_b, Role::Dialer);
        let (_, y) = run_pair(&hs_a, &other).await;
        match y {
            Err(NetError::Refused(why) | NetError::Handshake(why)) => {
                assert!(why.contains("another cluster"), "{why}")
            }
            other => panic!("{other:?}"),
        }
    }

    /// Review finding: with proofs that bound neither roles nor both nonces, an outsider could
    /// dial replicas A and B, pose as each to the other, and relay their proofs. Now the
    /// acceptor signs nothing before the dialer proved itself, so there is nothing to relay.
    #[tokio::test(start_paused = true)]
    async fn a_relay_between_two_replicas_gets_nothing_to_forward() {
        let auth_a = SimAuth::new(Principal::Replica(0), [1; 32]);
        let auth_b = SimAuth::new(Principal::Replica(1), [1; 32]);
        let acceptor = |me, auth| Handshake {
            cluster: [9; 32],
            me,
            auth,
            role: Role::Acceptor,
        };
        let (hs_a, hs_b) = (
            acceptor(Principal::Replica(0), &auth_a),
            acceptor(Principal::Replica(1), &auth_b),
        );
        let (a, to_a) = tokio::io::duplex(1 << 16);
        let (b, to_b) = tokio::io::duplex(1 << 16);
        let attacker = async move {
            let (ar, mut aw) = tokio::io::split(to_a);
            let (br, mut bw) = tokio::io::split(to_b);
            let mut ar = FrameReader::new(ar, HANDSHAKE_FRAME_BYTES);
            let mut br = FrameReader::new(br, HANDSHAKE_FRAME_BYTES);
            let Some((Frame::Hello(ha), _)) = ar.next().await.unwrap() else {
                panic!()
            };
            let Some((Frame::Hello(hb), _)) = br.next().await.unwrap() else {
                panic!()
            };
            // Pose as B to A and as A to B, with the other's nonce.
            write_frame(
                &mut aw,
                &Frame::Hello(Hello {
                    nonce: hb.nonce,
                    ..hb
                }),
            )
            .await
            .unwrap();
            write_frame(
                &mut bw,
                &Frame::Hello(Hello {
                    nonce: ha.nonce,
                    ..ha
                }),
            )
            .await
            .unwrap();
            // Whatever either side sends next is forwarded to the other.
            let mut forwarded = 0;
            loop {
                tokio::select! {
                    f = ar.next() => match f {
                        Ok(Some((f, _))) => { forwarded += 1; let _ = write_frame(&mut bw, &f).await; }
                        _ => break,
                    },
                    f = br.next() => match f {
                        Ok(Some((f, _))) => { forwarded += 1; let _ = write_frame(&mut aw, &f).await; }
                        _ => break,
                    },
                }
            }
            forwarded
        };
        async fn side(
            stream: tokio::io::DuplexStream,
            hs: &Handshake<'_>,
        ) -> Result<Principal, NetError> {
            let (r, mut w) = tokio::io::split(stream);
            let mut r = FrameReader::new(r, HANDSHAKE_FRAME_BYTES);
            handshake(&mut r, &mut w, hs, |_| Ok(())).await
        }
        let (x, y, forwarded) = tokio::join!(side(a, &hs_a), side(b, &hs_b), attacker);
        assert!(matches!(x, Err(NetError::HandshakeTimeout)), "{x:?}");
        assert!(matches!(y, Err(NetError::HandshakeTimeout)), "{y:?}");
        assert_eq!(forwarded, 0, "neither replica signed anything");
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
