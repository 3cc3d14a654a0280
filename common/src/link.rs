//! The one-way link: which kind it is (`udp://…`, `serial://…`), how big its frames may be,
//! and the two I/O backends behind one send side and one receive side.
//!
//! The sender only ever writes and the receiver only ever reads: nothing here can put a byte
//! back on the wire, so a test over loopback proves the same property a fibre diode enforces.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use sluice_protocol::counters::DropReason;
use sluice_protocol::framing::{encode_frame, encoded_len, CobsAccumulator, Feed};
use sluice_protocol::wire::MAX_FRAME_LEN;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// IPv4 + UDP header bytes around each datagram.
const UDP_IP_OVERHEAD: usize = 28;
/// IPv6 + UDP header bytes around each datagram.
const UDP_IP6_OVERHEAD: usize = 48;
/// Default frame size on serial: small frames lose little to a line error.
const SERIAL_DEFAULT_FRAME: usize = 1024;
const SERIAL_ACCUMULATOR: usize = encoded_len(MAX_FRAME_LEN);
/// Receive buffer asked for on UDP; the kernel caps it at `net.core.rmem_max`.
const UDP_RECV_BUFFER: usize = 64 << 20;
/// Datagrams fetched per `recvmmsg` call.
const UDP_RECV_BATCH: usize = 32;
/// Send buffer asked for on UDP (`net.core.wmem_max`).
const UDP_SEND_BUFFER: usize = 8 << 20;

/// A `--link` value that does not parse.
#[derive(Debug, Clone, thiserror::Error)]
#[error("--link {value:?}: {why}; expected udp://HOST:PORT[?mtu=1500] or serial:///dev/ttyX[?baud=115200&frame=1024]")]
pub struct LinkSpecError {
    value: String,
    why: String,
}

/// Where frames go, and in what shape.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkSpec {
    /// One frame per UDP datagram.
    Udp {
        /// `HOST:PORT` as given (resolved when the link opens).
        address: String,
        /// IP MTU of the path; frames fill a datagram that fits it.
        mtu: usize,
    },
    /// COBS-framed frames on a serial line, 8N1, no flow control.
    Serial {
        path: PathBuf,
        baud: u32,
        /// Largest frame before COBS.
        frame: usize,
    },
}

impl FromStr for LinkSpec {
    type Err = LinkSpecError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let err = |why: &str| LinkSpecError {
            value: value.to_string(),
            why: why.to_string(),
        };
        let (scheme, rest) = value.split_once("://").ok_or_else(|| err("no scheme"))?;
        let (target, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut params = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| err("query parameters are key=value"))?;
            params.push((k, v));
        }
        let number = |key: &str, default: u64, min: u64, max: u64| -> Result<u64, LinkSpecError> {
            match params.iter().find(|(k, _)| *k == key) {
                None => Ok(default),
                Some((_, v)) => v
                    .parse::<u64>()
                    .ok()
                    .filter(|n| (min..=max).contains(n))
                    .ok_or_else(|| err(&format!("{key} must be a number in {min}..={max}"))),
            }
        };
        match scheme {
            "udp" => {
                if let Some((k, _)) = params.iter().find(|(k, _)| *k != "mtu") {
                    return Err(err(&format!("unknown parameter {k:?}")));
                }
                let (host, port) = target
                    .rsplit_once(':')
                    .ok_or_else(|| err("missing :PORT"))?;
                if host.is_empty() || port.parse::<u16>().is_err() {
                    return Err(err("HOST:PORT with a port in 0..=65535"));
                }
                let mtu = number("mtu", 1500, 576, (MAX_FRAME_LEN + UDP_IP6_OVERHEAD) as u64)?;
                Ok(LinkSpec::Udp {
                    address: target.to_string(),
                    mtu: mtu as usize,
                })
            }
            "serial" => {
                if let Some((k, _)) = params.iter().find(|(k, _)| *k != "baud" && *k != "frame") {
                    return Err(err(&format!("unknown parameter {k:?}")));
                }
                if target.is_empty() {
                    return Err(err("missing device path"));
                }
                let baud = number("baud", 115_200, 300, 50_000_000)?;
                let frame = number(
                    "frame",
                    SERIAL_DEFAULT_FRAME as u64,
                    256,
                    MAX_FRAME_LEN as u64,
                )?;
                Ok(LinkSpec::Serial {
                    path: PathBuf::from(target),
                    baud: baud as u32,
                    frame: frame as usize,
                })
            }
            _ => Err(err("scheme must be udp or serial")),
        }
    }
}

impl fmt::Display for LinkSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkSpec::Udp { address, mtu } => write!(f, "udp://{address}?mtu={mtu}"),
            LinkSpec::Serial { path, baud, frame } => {
                write!(f, "serial://{}?baud={baud}&frame={frame}", path.display())
            }
        }
    }
}

impl LinkSpec {
    fn is_ipv6(&self) -> bool {
        matches!(self, LinkSpec::Udp { address, .. } if address.starts_with('['))
    }

    /// Largest frame this link carries.
    pub fn max_frame_len(&self) -> usize {
        match self {
            LinkSpec::Udp { mtu, .. } => {
                let ip = if self.is_ipv6() {
                    UDP_IP6_OVERHEAD
                } else {
                    UDP_IP_OVERHEAD
                };
                mtu.saturating_sub(ip).min(MAX_FRAME_LEN)
            }
            LinkSpec::Serial { frame, .. } => *frame,
        }
    }

    /// Bytes the link adds to each frame, for pacing (IP/UDP headers; COBS and delimiter).
    pub fn frame_overhead(&self) -> u32 {
        match self {
            LinkSpec::Udp { .. } if self.is_ipv6() => UDP_IP6_OVERHEAD as u32,
            LinkSpec::Udp { .. } => UDP_IP_OVERHEAD as u32,
            LinkSpec::Serial { frame, .. } => (encoded_len(*frame) - frame) as u32,
        }
    }

    /// Pacing rate when `--rate` is not given, in link bytes per second: 100 MB/s on UDP
    /// (below 1 GbE's ≈122 MB/s of IP bytes, leaving room for other traffic), and the line's
    /// capacity on serial (8N1 puts 10 bits on the wire per byte).
    pub fn default_rate(&self) -> u64 {
        match self {
            LinkSpec::Udp { .. } => 100_000_000,
            LinkSpec::Serial { baud, .. } => u64::from(*baud) / 10,
        }
    }
}

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

fn udp_socket(addr: &SocketAddr) -> io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(*addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

fn open_serial(path: &std::path::Path, baud: u32) -> io::Result<tokio_serial::SerialStream> {
    let builder = tokio_serial::new(path.to_string_lossy(), baud)
        .data_bits(tokio_serial::DataBits::Eight)
        .parity(tokio_serial::Parity::None)
        .stop_bits(tokio_serial::StopBits::One)
        .flow_control(tokio_serial::FlowControl::None);
    tokio_serial::SerialStream::open(&builder).map_err(io::Error::from)
}

/// The sending end of a link.
#[derive(Debug)]
pub struct LinkSender {
    inner: TxInner,
}

#[derive(Debug)]
enum TxInner {
    Udp {
        socket: tokio::net::UdpSocket,
        state: quinn_udp::UdpSocketState,
        target: SocketAddr,
    },
    Serial {
        port: tokio_serial::SerialStream,
        encoded: Vec<u8>,
    },
}

/// Largest UDP payload one GSO send may carry (the kernel's limit for a UDP datagram).
const GSO_MAX_BYTES: usize = 65_507;

impl LinkSender {
    /// Opens the link for sending.
    pub async fn open(spec: &LinkSpec) -> io::Result<Self> {
        let inner = match spec {
            LinkSpec::Udp { address, .. } => {
                let target = resolve(address).await?;
                let socket = udp_socket(&target)?;
                let _ = socket.set_send_buffer_size(UDP_SEND_BUFFER);
                let any: SocketAddr = if target.is_ipv6() {
                    "[::]:0".parse().map_err(io::Error::other)?
                } else {
                    "0.0.0.0:0".parse().map_err(io::Error::other)?
                };
                socket.bind(&any.into())?;
                let state = quinn_udp::UdpSocketState::new((&socket).into())?;
                let socket = tokio::net::UdpSocket::from_std(socket.into())?;
                TxInner::Udp {
                    socket,
                    state,
                    target,
                }
            }
            LinkSpec::Serial { path, baud, frame } => TxInner::Serial {
                port: open_serial(path, *baud)?,
                encoded: vec![0; encoded_len(*frame).max(encoded_len(MAX_FRAME_LEN))],
            },
        };
        Ok(LinkSender { inner })
    }

    /// Sends one frame. On UDP a refused datagram (ICMP from a loopback receiver that is not
    /// up yet) is not an error: a real diode never reports one either.
    pub async fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        match &mut self.inner {
            TxInner::Udp { socket, target, .. } => match socket.send_to(frame, *target).await {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(()),
                Err(e) => Err(e),
            },
            TxInner::Serial { port, encoded } => {
                let n = encode_frame(frame, encoded)
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too long"))?;
                port.write_all(&encoded[..n]).await
            }
        }
    }

    /// How many equal-length frames [`send_batch`](Self::send_batch) takes at once for frames
    /// of `frame_len` bytes: UDP segmentation offload (GSO) hands the kernel up to this many
    /// datagrams in one system call; serial writes one frame at a time.
    pub fn batch_limit(&self, frame_len: usize) -> usize {
        match &self.inner {
            TxInner::Udp { state, .. } => state
                .max_gso_segments()
                .min(GSO_MAX_BYTES / frame_len.max(1))
                .max(1),
            TxInner::Serial { .. } => 1,
        }
    }

    /// Sends `frames`: consecutive frames of `frame_len` bytes each (the last may be shorter),
    /// at most [`batch_limit`](Self::batch_limit) of them. On UDP each still leaves as its own
    /// datagram; GSO only saves the per-datagram trips through the network stack.
    pub async fn send_batch(&mut self, frames: &[u8], frame_len: usize) -> io::Result<()> {
        if frames.len() <= frame_len {
            return self.send(frames).await;
        }
        match &mut self.inner {
            TxInner::Udp {
                socket,
                state,
                target,
            } => {
                let transmit = quinn_udp::Transmit {
                    destination: *target,
                    ecn: None,
                    contents: frames,
                    segment_size: Some(frame_len),
                    src_ip: None,
                };
                let sent = socket
                    .async_io(tokio::io::Interest::WRITABLE, || {
                        state.try_send(quinn_udp::UdpSockRef::from(&*socket), &transmit)
                    })
                    .await;
                match sent {
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(()),
                    other => other,
                }
            }
            TxInner::Serial { .. } => {
                for frame in frames.chunks(frame_len) {
                    self.send(frame).await?;
                }
                Ok(())
            }
        }
    }

    /// Waits until everything written has left this process (serial: the UART driver).
    pub async fn flush(&mut self) -> io::Result<()> {
        match &mut self.inner {
            TxInner::Udp { .. } => Ok(()),
            TxInner::Serial { port, .. } => port.flush().await,
        }
    }
}

/// What [`LinkReceiver::recv`] got.
#[derive(Debug, PartialEq, Eq)]
pub enum Received<'a> {
    /// One frame's bytes, not yet checked.
    Frame(&'a [u8]),
    /// Serial deframing dropped something (garbage, an over-long or broken frame).
    Dropped(DropReason),
}

/// The receiving end of a link.
#[derive(Debug)]
pub struct LinkReceiver {
    inner: RxInner,
}

#[derive(Debug)]
enum RxInner {
    Udp {
        socket: tokio::net::UdpSocket,
        state: quinn_udp::UdpSocketState,
        /// One buffer per datagram of a `recvmmsg` batch; GRO may coalesce up to 64 KiB.
        bufs: Vec<Vec<u8>>,
        metas: Vec<quinn_udp::RecvMeta>,
        /// Datagram buffers filled by the last batch, and how far `recv` has handed them out.
        filled: usize,
        cursor: (usize, usize),
    },
    Serial {
        port: tokio_serial::SerialStream,
        accumulator: Box<CobsAccumulator<SERIAL_ACCUMULATOR>>,
        input: Vec<u8>,
        start: usize,
        end: usize,
        frame: Vec<u8>,
    },
}

impl LinkReceiver {
    /// Opens the link for receiving: binds the UDP address, or opens the serial device.
    pub async fn open(spec: &LinkSpec) -> io::Result<Self> {
        let inner = match spec {
            LinkSpec::Udp { address, .. } => {
                let local = resolve(address).await?;
                let socket = udp_socket(&local)?;
                let _ = socket.set_recv_buffer_size(UDP_RECV_BUFFER);
                let granted = socket.recv_buffer_size().unwrap_or(0);
                if granted < UDP_RECV_BUFFER {
                    tracing::info!(
                        granted,
                        wanted = UDP_RECV_BUFFER,
                        "UDP receive buffer is smaller than asked; raise net.core.rmem_max to absorb bursts"
                    );
                }
                socket.bind(&local.into())?;
                let state = quinn_udp::UdpSocketState::new((&socket).into())?;
                RxInner::Udp {
                    socket: tokio::net::UdpSocket::from_std(socket.into())?,
                    state,
                    bufs: vec![vec![0; 65_536]; UDP_RECV_BATCH],
                    metas: vec![quinn_udp::RecvMeta::default(); UDP_RECV_BATCH],
                    filled: 0,
                    cursor: (0, 0),
                }
            }
            LinkSpec::Serial { path, baud, .. } => RxInner::Serial {
                port: open_serial(path, *baud)?,
                accumulator: Box::new(CobsAccumulator::new()),
                input: vec![0; 64 * 1024],
                start: 0,
                end: 0,
                frame: Vec::with_capacity(MAX_FRAME_LEN),
            },
        };
        Ok(LinkReceiver { inner })
    }

    /// The bound local address (UDP), e.g. to learn an ephemeral port.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &self.inner {
            RxInner::Udp { socket, .. } => socket.local_addr().ok(),
            RxInner::Serial { .. } => None,
        }
    }

    /// Waits for the next frame or deframing drop. Cancel-safe: dropping the future loses no
    /// bytes already read.
    pub async fn recv(&mut self) -> io::Result<Received<'_>> {
        match &mut self.inner {
            RxInner::Udp {
                socket,
                state,
                bufs,
                metas,
                filled,
                cursor,
            } => loop {
                if let Some((msg, start, end)) = next_datagram(metas, bufs, *filled, cursor) {
                    return Ok(Received::Frame(&bufs[msg][start..end]));
                }
                *filled = recv_batch(socket, state, bufs, metas).await?;
                *cursor = (0, 0);
            },
            RxInner::Serial {
                port,
                accumulator,
                input,
                start,
                end,
                frame,
            } => loop {
                if *start < *end {
                    let pending = &input[*start..*end];
                    let before = pending.len();
                    let (outcome, rest_len) = match accumulator.feed(pending) {
                        Feed::Consumed => (None, 0),
                        Feed::Frame { frame: f, rest } => {
                            frame.clear();
                            frame.extend_from_slice(f);
                            (Some(Ok(())), rest.len())
                        }
                        Feed::Dropped { error, rest } => (Some(Err(error)), rest.len()),
                    };
                    *start += before - rest_len;
                    match outcome {
                        Some(Ok(())) => return Ok(Received::Frame(frame)),
                        Some(Err(error)) => return Ok(Received::Dropped(error.into())),
                        None => {}
                    }
                }
                let n = port.read(input).await?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "serial line closed",
                    ));
                }
                *start = 0;
                *end = n;
            },
        }
    }
}

/// The next datagram of the current batch as (buffer, start, end), advancing `cursor`
/// (buffer index, offset). A GRO buffer holds several datagrams of `stride` bytes each.
fn next_datagram(
    metas: &[quinn_udp::RecvMeta],
    bufs: &[Vec<u8>],
    filled: usize,
    cursor: &mut (usize, usize),
) -> Option<(usize, usize, usize)> {
    while cursor.0 < filled {
        let (msg, offset) = *cursor;
        let meta = metas.get(msg)?;
        let len = meta.len.min(bufs.get(msg)?.len());
        if offset < len {
            let end = (offset + meta.stride.max(1)).min(len);
            cursor.1 = end;
            return Some((msg, offset, end));
        }
        *cursor = (msg + 1, 0);
    }
    None
}

/// One `recvmmsg` (with GRO) into `bufs`; returns how many buffers were filled.
async fn recv_batch(
    socket: &tokio::net::UdpSocket,
    state: &quinn_udp::UdpSocketState,
    bufs: &mut [Vec<u8>],
    metas: &mut [quinn_udp::RecvMeta],
) -> io::Result<usize> {
    let mut slices: Vec<io::IoSliceMut<'_>> =
        bufs.iter_mut().map(|b| io::IoSliceMut::new(b)).collect();
    socket
        .async_io(tokio::io::Interest::READABLE, || {
            state.recv(quinn_udp::UdpSockRef::from(socket), &mut slices, metas)
        })
        .await
}

impl LinkReceiver {
    /// Waits for traffic, then hands every frame (or deframing drop) that is ready to `each`:
    /// on UDP up to 32 datagrams per `recvmmsg`, each GRO-coalesced buffer split back into its
    /// datagrams; on serial whatever one read delivered. Returns how many it handed over.
    pub async fn recv_many(&mut self, mut each: impl FnMut(Received<'_>)) -> io::Result<usize> {
        match &mut self.inner {
            RxInner::Udp {
                socket,
                state,
                bufs,
                metas,
                filled,
                cursor,
            } => {
                if next_datagram(metas, bufs, *filled, &mut cursor.clone()).is_none() {
                    *filled = recv_batch(socket, state, bufs, metas).await?;
                    *cursor = (0, 0);
                }
                let mut frames = 0;
                while let Some((msg, start, end)) = next_datagram(metas, bufs, *filled, cursor) {
                    each(Received::Frame(&bufs[msg][start..end]));
                    frames += 1;
                }
                Ok(frames)
            }
            RxInner::Serial { .. } => {
                each(self.recv().await?);
                Ok(1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_links() {
        let udp: LinkSpec = "udp://127.0.0.1:9000".parse().unwrap();
        assert_eq!(udp.max_frame_len(), 1472);
        assert_eq!(udp.frame_overhead(), 28);
        let jumbo: LinkSpec = "udp://gw:9000?mtu=9000".parse().unwrap();
        assert_eq!(jumbo.max_frame_len(), 8972);
        let v6: LinkSpec = "udp://[::1]:9000".parse().unwrap();
        assert_eq!(v6.max_frame_len(), 1452);
        let serial: LinkSpec = "serial:///dev/ttyUSB0?baud=921600".parse().unwrap();
        assert_eq!(
            serial,
            LinkSpec::Serial {
                path: "/dev/ttyUSB0".into(),
                baud: 921_600,
                frame: 1024
            }
        );
        assert_eq!(serial.default_rate(), 92_160);
        assert_eq!(serial.to_string().parse::<LinkSpec>().unwrap(), serial);
    }

    #[test]
    fn bad_links_name_the_accepted_form() {
        for bad in [
            "127.0.0.1:9000",
            "tcp://x:1",
            "udp://host",
            "udp://host:99999",
            "udp://h:1?mtu=100",
            "udp://h:1?speed=3",
            "serial://?baud=9600",
            "serial:///dev/x?baud=fast",
        ] {
            let err = bad.parse::<LinkSpec>().unwrap_err().to_string();
            assert!(err.contains("udp://HOST:PORT"), "{bad}: {err}");
        }
    }

    #[tokio::test]
    async fn udp_carries_one_frame_per_datagram() {
        let rx_spec: LinkSpec = "udp://127.0.0.1:0".parse().unwrap();
        let mut rx = LinkReceiver::open(&rx_spec).await.unwrap();
        let port = rx.local_addr().unwrap().port();
        let tx_spec: LinkSpec = format!("udp://127.0.0.1:{port}").parse().unwrap();
        let mut tx = LinkSender::open(&tx_spec).await.unwrap();
        tx.send(b"first frame").await.unwrap();
        tx.send(b"second").await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), Received::Frame(b"first frame"));
        assert_eq!(rx.recv().await.unwrap(), Received::Frame(b"second"));

        // A GSO batch of equal frames (the last shorter) arrives as separate frames, in order.
        let frame_len = 1000;
        let limit = tx.batch_limit(frame_len);
        assert!(limit >= 1);
        let count = limit.clamp(1, 10);
        let mut batch = Vec::new();
        for i in 0..count {
            let len = if i + 1 == count { 300 } else { frame_len };
            batch.extend(std::iter::repeat_n(i as u8, len));
        }
        tx.send_batch(&batch, frame_len).await.unwrap();
        let mut got: Vec<Vec<u8>> = Vec::new();
        while got.len() < count {
            rx.recv_many(|r| {
                if let Received::Frame(f) = r {
                    got.push(f.to_vec());
                }
            })
            .await
            .unwrap();
        }
        let expected: Vec<Vec<u8>> = batch.chunks(frame_len).map(<[u8]>::to_vec).collect();
        assert_eq!(got, expected);
    }
}
