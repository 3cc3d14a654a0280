//! The UDP backend: one frame per datagram. Sending batches equal-length frames into one
//! system call with UDP segmentation offload (GSO); receiving takes up to 32 datagrams per
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

/// Sends frames as datagrams to one address.
#[derive(Debug)]
pub struct UdpTx {
    socket: tokio::net::UdpSocket,
    state: quinn_udp::UdpSocketState,
    target: SocketAddr,
    /// Committed frames, back to back, all `frame_len` long but possibly the last; the next
    /// frame is written right after them.
    buf: Vec<u8>,
    len: usize,
    frame_len: usize,
    count: usize,
    /// Frames of `frame_len` one GSO send takes.
    limit: usize,
}

impl UdpTx {
    /// Room for one GSO send (at most 64 KiB of datagrams) plus the frame being written.
    const CAPACITY: usize = (64 << 10) + MAX_FRAME_LEN;

    /// A socket bound to any local address, sending to `address` (`HOST:PORT`).
    pub async fn open(address: &str) -> io::Result<Self> {
        let target = resolve(address).await?;
        let socket = socket(&target)?;
        let _ = socket.set_send_buffer_size(SEND_BUFFER);
        let any: SocketAddr = if target.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        socket.bind(&any.into())?;
        let state = quinn_udp::UdpSocketState::new((&socket).into())?;
        Ok(UdpTx {
            socket: tokio::net::UdpSocket::from_std(socket.into())?,
            state,
            target,
            buf: vec![0; Self::CAPACITY],
            len: 0,
            frame_len: 0,
            count: 0,
            limit: 1,
        })
    }

    /// How many `frame_len`-byte frames one GSO send may carry.
    fn batch_limit(&self, frame_len: usize) -> usize {
        self.state
            .max_gso_segments()
            .min(GSO_MAX_BYTES / frame_len.max(1))
            .max(1)
    }

    /// Sends `buf[..end]`: datagrams of `frame_len` bytes (the last may be shorter).
    async fn send(&mut self, end: usize) -> io::Result<()> {
        let (socket, state, contents) = (&self.socket, &self.state, &self.buf[..end]);
        if contents.len() <= self.frame_len {
            return ignore_refused(socket.send_to(contents, self.target).await.map(drop));
        }
        let transmit = quinn_udp::Transmit {
            destination: self.target,
            ecn: None,
            contents,
            segment_size: Some(self.frame_len),
            src_ip: None,
        };
        let sent = socket
            .async_io(tokio::io::Interest::WRITABLE, || {
                state.try_send(quinn_udp::UdpSockRef::from(socket), &transmit)
            })
            .await;
        ignore_refused(sent)
    }
}

impl FrameTx for UdpTx {
    fn frame_buf(&mut self) -> &mut [u8] {
        &mut self.buf[self.len..self.len + MAX_FRAME_LEN]
    }

    fn commit(&mut self, len: usize) -> IoFuture<'_, ()> {
        Box::pin(async move {
            if self.count > 0 && len > self.frame_len {
                // Longer than the batch's frames: send those, then start over with this one.
                self.send(self.len).await?;
                self.buf.copy_within(self.len..self.len + len, 0);
                self.len = 0;
                self.count = 0;
            }
            if self.count == 0 {
                self.frame_len = len;
                self.limit = self.batch_limit(len);
            }
            self.len += len;
            self.count += 1;
            // A shorter frame can only end a batch.
            if len < self.frame_len
                || self.count >= self.limit
                || self.len + MAX_FRAME_LEN > self.buf.len()
            {
                self.send(self.len).await?;
                self.len = 0;
                self.count = 0;
            }
            Ok(())
        })
    }

    fn flush(&mut self) -> IoFuture<'_, ()> {
        Box::pin(async move {
            if self.count > 0 {
                self.send(self.len).await?;
                self.len = 0;
                self.count = 0;
            }
            Ok(())
        })
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
