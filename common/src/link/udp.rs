//! The UDP backend: one frame per datagram. Sending batches equal-length frames into one
//! system call with UDP segmentation offload (GSO), made on the flow's own thread; receiving takes up to 32 datagrams per
//! `recvmmsg`, each possibly coalesced by GRO, and splits them back into frames. Both through
//! `quinn-udp`, which knows the platform's flags.

use std::io;
use std::net::SocketAddr;

use sluice_protocol::wire::MAX_FRAME_LEN;

use super::{FrameRx, FrameTx, IoFuture, Received};

/// Receive buffer asked for; the kernel caps it at `net.core.rmem_max`.
const RECV_BUFFER: usize = 64 << 20;
/// Datagrams fetched per `recvmmsg` call.
const RECV_BATCH: usize = 32;
/// Send buffer asked for (`net.core.wmem_max`).
const SEND_BUFFER: usize = 8 << 20;
/// Largest UDP payload one GSO send may carry (the kernel's limit for a UDP datagram).
const GSO_MAX_BYTES: usize = 65_507;
/// Most datagrams one GSO send may carry (Linux's `UDP_MAX_SEGMENTS`).
const GSO_MAX_SEGMENTS: usize = 64;

async fn resolve(address: &str) -> io::Result<SocketAddr> {
    tokio::net::lookup_host(address)
        .await?
        .next()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{address} resolves to no address"),
            )
        })
}

fn socket(addr: &SocketAddr) -> io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(*addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// A refused datagram (ICMP from a loopback receiver that is not up yet) is not an error: a
/// real diode never reports one either.
fn ignore_refused(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(()),
        other => other,
    }
}

/// Whether sends may use UDP segmentation offload (several datagrams per system call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gso {
    /// When the kernel has it (and not after the device refused a GSO send).
    Auto,
    /// One datagram per system call: what a kernel or device without GSO gets.
    Off,
}

/// Who makes a flow's system calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sending {
    /// The send loop itself: the cheapest for one flow (no thread to wake).
    Inline,
    /// A thread of the flow's own: with several flows, the kernel's per-datagram work (on
    /// loopback, the receiving socket's too) spreads over as many cores.
    Thread,
}

/// Batches handed to a flow's thread and not yet sent, at most; with the one being filled, the
/// flow's buffers.
const BATCHES_IN_FLIGHT: usize = 3;

/// A full batch: `buf[..len]`, datagrams of `segment` bytes, the last possibly shorter.
struct Batch {
    buf: Vec<u8>,
    len: usize,
    segment: usize,
}

/// Where full batches go.
#[derive(Debug)]
enum Out {
    Inline(Flow),
    Thread {
        to_flow: flume::Sender<Batch>,
        /// Buffers the flow's thread has sent and gives back.
        free: flume::Receiver<Vec<u8>>,
        /// Ends (with the error that stopped it, if any) when `to_flow` is dropped or a send
        /// fails.
        thread: Option<std::thread::JoinHandle<io::Result<()>>>,
    },
}

/// Sends frames as datagrams to one address. The send loop writes frames into a batch of equal
/// lengths; a full batch (or a shorter frame, or a flush) goes out as one GSO send where the
/// kernel has it, from the send loop or from the flow's own thread ([`Sending`]).
#[derive(Debug)]
pub struct UdpTx {
    /// The batch being filled: committed frames back to back, all `frame_len` long but
    /// possibly the last; the next frame is written right after them.
    buf: Vec<u8>,
    len: usize,
    frame_len: usize,
    count: usize,
    /// Frames of `frame_len` one batch takes.
    limit: usize,
    out: Out,
}

impl UdpTx {
    /// Room for one GSO send (at most 64 KiB of datagrams) plus the frame being written.
    const CAPACITY: usize = (64 << 10) + MAX_FRAME_LEN;

    /// A socket bound to any local address, sending to `address` (`HOST:PORT`) from the
    /// send loop.
    pub async fn open(address: &str) -> io::Result<Self> {
        Self::open_with(address, Sending::Inline, Gso::Auto).await
    }

    /// [`open`](Self::open), saying who sends and whether GSO may be used.
    pub async fn open_with(address: &str, sending: Sending, gso: Gso) -> io::Result<Self> {
        let target = resolve(address).await?;
        let socket = socket(&target)?;
        let _ = socket.set_send_buffer_size(SEND_BUFFER);
        let any: SocketAddr = if target.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        socket.bind(&any.into())?;
        // Sends block while the socket's buffer is full: the link's own backpressure (a UDP
        // socket's buffer drains at the device's rate, so never for long).
        socket.set_nonblocking(false)?;
        let state = quinn_udp::UdpSocketState::new((&socket).into())?;
        let flow = Flow {
            socket: socket.into(),
            gso: gso == Gso::Auto && state.max_gso_segments() > 1,
            state,
            target,
        };
        let out = match sending {
            Sending::Inline => Out::Inline(flow),
            Sending::Thread => {
                let (to_flow, batches) = flume::unbounded();
                let (give_back, free) = flume::bounded(BATCHES_IN_FLIGHT);
                for _ in 0..BATCHES_IN_FLIGHT {
                    let _ = give_back.try_send(vec![0; Self::CAPACITY]);
                }
                // Numbered, so tools that group threads by name (the bench's stages) see one
                // stage.
                static FLOWS: std::sync::atomic::AtomicUsize =
                    std::sync::atomic::AtomicUsize::new(0);
                let n = FLOWS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let thread = std::thread::Builder::new()
                    .name(format!("udp-tx-{n}"))
                    .spawn(move || flow.run(&batches, &give_back))?;
                Out::Thread {
                    to_flow,
                    free,
                    thread: Some(thread),
                }
            }
        };
        Ok(UdpTx {
            buf: vec![0; Self::CAPACITY],
            len: 0,
            frame_len: 0,
            count: 0,
            limit: 1,
            out,
        })
    }

    /// How many `frame_len`-byte frames one batch may carry: what one GSO send takes.
    fn batch_limit(frame_len: usize) -> usize {
        (GSO_MAX_BYTES / frame_len.max(1)).clamp(1, GSO_MAX_SEGMENTS)
    }

    /// Sends the batch (`buf[..self.len]`, datagrams of `frame_len` bytes, the last maybe
    /// shorter) or hands it to the flow's thread, taking a free buffer in its place (waiting
    /// for one while every other is being sent); the batch is empty after.
    async fn send_batch(&mut self) -> io::Result<()> {
        let len = std::mem::take(&mut self.len);
        self.count = 0;
        match &mut self.out {
            Out::Inline(flow) => flow.send(self.buf.get(..len).unwrap_or(&[]), self.frame_len),
            Out::Thread {
                to_flow,
                free,
                thread,
            } => {
                let Ok(spare) = free.recv_async().await else {
                    return Err(flow_error(thread));
                };
                let batch = Batch {
                    buf: std::mem::replace(&mut self.buf, spare),
                    len,
                    segment: self.frame_len,
                };
                to_flow.send(batch).map_err(|_| flow_error(thread))
            }
        }
    }
}

/// The error that ended a flow's thread (it only ends early on one).
fn flow_error(thread: &mut Option<std::thread::JoinHandle<io::Result<()>>>) -> io::Error {
    match thread.take().map(std::thread::JoinHandle::join) {
        Some(Ok(Err(e))) => e,
        Some(Err(_)) => io::Error::other("the link's send thread panicked"),
        _ => io::Error::other("the link's send thread ended"),
    }
}

impl Drop for UdpTx {
    /// Sends what was committed and not yet sent (a flow's thread is given the batch being
    /// filled, then waited for): nothing committed is lost when the sender exits.
    fn drop(&mut self) {
        match &mut self.out {
            Out::Inline(flow) => {
                if self.count > 0 {
                    let _ = flow.send(self.buf.get(..self.len).unwrap_or(&[]), self.frame_len);
                }
            }
            Out::Thread {
                to_flow, thread, ..
            } => {
                if self.count > 0 {
                    let _ = to_flow.send(Batch {
                        buf: std::mem::take(&mut self.buf),
                        len: self.len,
                        segment: self.frame_len,
                    });
                }
                let (closed, _) = flume::bounded(1);
                drop(std::mem::replace(to_flow, closed));
                if let Some(thread) = thread.take() {
                    let _ = thread.join();
                }
            }
        }
    }
}

impl FrameTx for UdpTx {
    fn frame_buf(&mut self) -> &mut [u8] {
        &mut self.buf[self.len..self.len + MAX_FRAME_LEN]
    }

    fn commit(&mut self, len: usize) -> IoFuture<'_, ()> {
        Box::pin(async move {
            if self.count > 0 && len > self.frame_len {
                // Longer than the batch's frames: send those, then start over with this one
                // (it moves to the front of the buffer, which may be a fresh one).
                let at = self.len;
                let frame = self.buf[at..at + len].to_vec();
                self.send_batch().await?;
                self.buf[..len].copy_from_slice(&frame);
            }
            if self.count == 0 {
                self.frame_len = len;
                self.limit = Self::batch_limit(len);
            }
            self.len += len;
            self.count += 1;
            // A shorter frame can only end a batch.
            if len < self.frame_len
                || self.count >= self.limit
                || self.len + MAX_FRAME_LEN > self.buf.len()
            {
                self.send_batch().await?;
            }
            Ok(())
        })
    }

    fn flush(&mut self) -> IoFuture<'_, ()> {
        Box::pin(async move {
            if self.count > 0 {
                self.send_batch().await?;
            }
            Ok(())
        })
    }
}

/// One flow's socket (blocking) and where it sends.
struct Flow {
    socket: std::net::UdpSocket,
    state: quinn_udp::UdpSocketState,
    target: SocketAddr,
    /// Batches go out as one GSO send; off when the kernel or the device has none, or
    /// refused one: then one datagram per call.
    gso: bool,
}

impl std::fmt::Debug for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flow")
            .field("target", &self.target)
            .field("gso", &self.gso)
            .finish_non_exhaustive()
    }
}

impl Flow {
    /// A flow's thread: sends each batch and gives its buffer back; returns when the sender
    /// drops its end, or with the first error.
    fn run(
        mut self,
        batches: &flume::Receiver<Batch>,
        give_back: &flume::Sender<Vec<u8>>,
    ) -> io::Result<()> {
        while let Ok(Batch { buf, len, segment }) = batches.recv() {
            self.send(buf.get(..len).unwrap_or(&buf), segment)?;
            // The sender may be gone already (it waits in `drop` for what is left).
            let _ = give_back.try_send(buf);
        }
        Ok(())
    }

    /// `contents` as datagrams of `segment` bytes (the last maybe shorter): one GSO send, or,
    /// without GSO, one call per datagram.
    fn send(&mut self, contents: &[u8], segment: usize) -> io::Result<()> {
        let segment = segment.max(1);
        if contents.is_empty() {
            return Ok(());
        }
        if self.gso && contents.len() > segment {
            let transmit = quinn_udp::Transmit {
                destination: self.target,
                ecn: None,
                contents,
                segment_size: Some(segment),
                src_ip: None,
            };
            match self
                .state
                .try_send(quinn_udp::UdpSockRef::from(&self.socket), &transmit)
            {
                Ok(()) => return Ok(()),
                // A device without segmentation offload refuses the send as a whole (quinn-udp
                // turns GSO off for the socket): send the same datagrams one by one, and
                // every later batch too.
                Err(e)
                    if matches!(
                        rustix::io::Errno::from_io_error(&e),
                        Some(rustix::io::Errno::IO | rustix::io::Errno::INVAL)
                    ) =>
                {
                    tracing::info!(
                        target = %self.target,
                        "UDP segmentation offload refused ({e}); one datagram per system call"
                    );
                    self.gso = false;
                }
                Err(e) => return ignore_refused(Err(e)),
            }
        }
        for datagram in contents.chunks(segment) {
            ignore_refused(self.socket.send_to(datagram, self.target).map(drop))?;
        }
        Ok(())
    }
}

/// Receives datagrams on a bound address.
#[derive(Debug)]
pub struct UdpRx {
    socket: tokio::net::UdpSocket,
    state: quinn_udp::UdpSocketState,
    /// One buffer per datagram of a `recvmmsg` batch; GRO may coalesce up to 64 KiB.
    bufs: Vec<Vec<u8>>,
    metas: Vec<quinn_udp::RecvMeta>,
    /// Buffers filled by the last batch, and how far they were handed out (buffer, offset).
    filled: usize,
    cursor: (usize, usize),
}

impl UdpRx {
    /// Binds `address` (`ADDR:PORT`) with a deep receive buffer.
    pub async fn open(address: &str) -> io::Result<Self> {
        let local = resolve(address).await?;
        let socket = socket(&local)?;
        let _ = socket.set_recv_buffer_size(RECV_BUFFER);
        let granted = socket.recv_buffer_size().unwrap_or(0);
        if granted < RECV_BUFFER {
            tracing::info!(
                granted,
                wanted = RECV_BUFFER,
                "UDP receive buffer is smaller than asked; raise net.core.rmem_max to absorb bursts"
            );
        }
        socket.bind(&local.into())?;
        let state = quinn_udp::UdpSocketState::new((&socket).into())?;
        Ok(UdpRx {
            socket: tokio::net::UdpSocket::from_std(socket.into())?,
            state,
            bufs: vec![vec![0; 65_536]; RECV_BATCH],
            metas: vec![quinn_udp::RecvMeta::default(); RECV_BATCH],
            filled: 0,
            cursor: (0, 0),
        })
    }

    /// The next datagram of the current batch as (buffer, start, end), advancing the cursor.
    /// A GRO buffer holds several datagrams of `stride` bytes each.
    fn next_datagram(&mut self) -> Option<(usize, usize, usize)> {
        while self.cursor.0 < self.filled {
            let (msg, offset) = self.cursor;
            let meta = self.metas.get(msg)?;
            let len = meta.len.min(self.bufs.get(msg)?.len());
            if offset < len {
                let end = (offset + meta.stride.max(1)).min(len);
                self.cursor.1 = end;
                return Some((msg, offset, end));
            }
            self.cursor = (msg + 1, 0);
        }
        None
    }

    /// One `recvmmsg` (with GRO) into the buffers.
    async fn recv_batch(&mut self) -> io::Result<()> {
        let (socket, state, metas) = (&self.socket, &self.state, &mut self.metas);
        let mut slices: Vec<io::IoSliceMut<'_>> = self
            .bufs
            .iter_mut()
            .map(|b| io::IoSliceMut::new(b))
            .collect();
        self.filled = socket
            .async_io(tokio::io::Interest::READABLE, || {
                state.recv(quinn_udp::UdpSockRef::from(socket), &mut slices, metas)
            })
            .await?;
        self.cursor = (0, 0);
        Ok(())
    }
}

impl FrameRx for UdpRx {
    fn ready(&mut self) -> IoFuture<'_, ()> {
        Box::pin(async move {
            if self.cursor.0 >= self.filled {
                self.recv_batch().await?;
            }
            Ok(())
        })
    }

    fn next_frame(&mut self) -> Option<Received<'_>> {
        let (msg, start, end) = self.next_datagram()?;
        Some(Received::Frame(&self.bufs[msg][start..end]))
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        self.socket.local_addr().ok()
    }

    fn kernel_drops(&self) -> Option<u64> {
        // The socket's inode names its line in /proc/net/udp{,6}, whose last column counts
        // what the kernel dropped for it (a full receive buffer, mostly).
        let inode = rustix::fs::fstat(&self.socket).ok()?.st_ino.to_string();
        ["/proc/net/udp", "/proc/net/udp6"]
            .iter()
            .find_map(|table| {
                let text = std::fs::read_to_string(table).ok()?;
                drops_of(&text, &inode)
            })
    }
}

/// The `drops` column of the line for socket `inode` in a `/proc/net/udp` table.
fn drops_of(table: &str, inode: &str) -> Option<u64> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
        (fields.get(9) == Some(&inode))
            .then(|| fields.get(12)?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drop_count_is_read_from_the_socket_s_own_line() {
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
             1: 0100007F:2328 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4711 2 0000000000000000 0\n\
             2: 0100007F:2329 00000000:0000 07 00000000:00300000 00:00000000 00000000     0        0 4712 2 0000000000000000 1234\n";
        assert_eq!(drops_of(table, "4712"), Some(1234));
        assert_eq!(drops_of(table, "4711"), Some(0));
        assert_eq!(drops_of(table, "99"), None);
    }

    #[tokio::test]
    async fn a_socket_finds_its_own_line() {
        let rx = UdpRx::open("127.0.0.1:0").await.unwrap();
        assert_eq!(rx.kernel_drops(), Some(0));
    }
}
