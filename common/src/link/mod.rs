//! The one-way link: which kind it is (`udp://…`, `serial://…`), how big its frames may be,
//! and the backends behind two small traits, [`FrameTx`] and [`FrameRx`].
//!
//! ```text
//!   LinkSpec::open_tx ─▶ Box<dyn FrameTx>   udp::UdpTx (GSO batches)   stream::StreamTx (COBS)
//!   LinkSpec::open_rx ─▶ Box<dyn FrameRx>   udp::UdpRx (recvmmsg+GRO)  stream::StreamRx (COBS)
//!                                                                      serial: a stream over a tty
//! ```
//!
//! A backend is one file. The byte-stream backend frames with COBS over any
//! `AsyncRead`/`AsyncWrite` (serial uses it; a TCP or stdin link would too). Adding a link
//! means a new file, a variant in [`LinkSpec`] and its URL parser, and a line in each opener.
//!
//! The sender only ever writes and the receiver only ever reads: nothing here can put a byte
//! back on the wire, so a test over loopback proves the same property a fibre diode enforces.

mod serial;
mod stream;
mod udp;

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;

use sluice_protocol::counters::DropReason;
use sluice_protocol::framing::encoded_len;
use sluice_protocol::wire::MAX_FRAME_LEN;

pub use serial::SerialRx;
pub use stream::{StreamRx, StreamTx};
pub use udp::{UdpRx, UdpTx};

/// IPv4 + UDP header bytes around each datagram.
const UDP_IP_OVERHEAD: usize = 28;
/// IPv6 + UDP header bytes around each datagram.
const UDP_IP6_OVERHEAD: usize = 48;
/// Default frame size on serial: small frames lose little to a line error.
const SERIAL_DEFAULT_FRAME: usize = 1024;

/// What link I/O returns: boxed so that backends sit behind `dyn` traits.
pub type IoFuture<'a, T> = Pin<Box<dyn Future<Output = io::Result<T>> + Send + 'a>>;

/// The sending end of a link. Frames are written in place into the backend's own buffer
/// ([`frame_buf`](Self::frame_buf)), so it can batch them (UDP segmentation offload) or frame
/// them (COBS) without another copy.
pub trait FrameTx: Send + fmt::Debug {
    /// Where the next frame goes: at least [`MAX_FRAME_LEN`] bytes.
    fn frame_buf(&mut self) -> &mut [u8];
    /// Takes the `len`-byte frame just written into [`frame_buf`](Self::frame_buf); may send it
    /// (and frames queued before it) now, or keep it for a batch.
    fn commit(&mut self, len: usize) -> IoFuture<'_, ()>;
    /// Sends every queued frame and waits until it has left this process.
    fn flush(&mut self) -> IoFuture<'_, ()>;
}

/// The receiving end of a link: wait with [`ready`](Self::ready), then take what arrived with
/// [`next_frame`](Self::next_frame) until it returns `None`.
pub trait FrameRx: Send + fmt::Debug {
    /// Waits until something new arrived (on UDP a batch of up to 32 datagrams, on a stream
    /// whatever one read returned). Cancel-safe: dropping the future loses nothing.
    fn ready(&mut self) -> IoFuture<'_, ()>;
    /// The next frame (or deframing drop) of what arrived; `None` once it is used up.
    fn next_frame(&mut self) -> Option<Received<'_>>;
    /// The bound local address (UDP), e.g. to learn an ephemeral port.
    fn local_addr(&self) -> Option<SocketAddr> {
        None
    }
}

/// What a [`FrameRx`] hands over.
#[derive(Debug, PartialEq, Eq)]
pub enum Received<'a> {
    /// One frame's bytes, not yet checked.
    Frame(&'a [u8]),
    /// Deframing dropped something (garbage, an over-long or broken frame).
    Dropped(DropReason),
}

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

impl LinkSpec {
    /// Opens the link for sending.
    pub async fn open_tx(&self) -> io::Result<Box<dyn FrameTx>> {
        Ok(match self {
            LinkSpec::Udp { address, .. } => Box::new(UdpTx::open(address).await?),
            LinkSpec::Serial { path, baud, .. } => Box::new(serial::open_tx(path, *baud)?),
        })
    }

    /// Opens the link for receiving: binds the UDP address, or opens the serial device.
    pub async fn open_rx(&self) -> io::Result<Box<dyn FrameRx>> {
        Ok(match self {
            LinkSpec::Udp { address, .. } => Box::new(UdpRx::open(address).await?),
            LinkSpec::Serial { path, baud, .. } => Box::new(serial::open_rx(path, *baud)?),
        })
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

    /// Sends `frames` through `tx`, one commit each, then flushes.
    async fn send_all(tx: &mut dyn FrameTx, frames: &[&[u8]]) {
        for frame in frames {
            tx.frame_buf()[..frame.len()].copy_from_slice(frame);
            tx.commit(frame.len()).await.unwrap();
        }
        tx.flush().await.unwrap();
    }

    /// Receives until `count` frames or drops arrived (`None` for a drop).
    async fn recv_count(rx: &mut dyn FrameRx, count: usize) -> Vec<Option<Vec<u8>>> {
        let mut got = Vec::new();
        while got.len() < count {
            rx.ready().await.unwrap();
            while let Some(r) = rx.next_frame() {
                got.push(match r {
                    Received::Frame(f) => Some(f.to_vec()),
                    Received::Dropped(_) => None,
                });
            }
        }
        got
    }

    #[tokio::test]
    async fn udp_carries_one_frame_per_datagram_batched_or_not() {
        let rx_spec: LinkSpec = "udp://127.0.0.1:0".parse().unwrap();
        let mut rx = rx_spec.open_rx().await.unwrap();
        let port = rx.local_addr().unwrap().port();
        let tx_spec: LinkSpec = format!("udp://127.0.0.1:{port}").parse().unwrap();
        let mut tx = tx_spec.open_tx().await.unwrap();
        // Equal frames go out in GSO batches, a shorter one ends a batch, a longer one starts
        // a new one: each still arrives as its own datagram, in order.
        let mut frames: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 1000]).collect();
        frames.push(vec![0xAA; 300]);
        frames.push(vec![0xBB; 1200]);
        frames.push(b"second".to_vec());
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        send_all(tx.as_mut(), &refs).await;
        let expected: Vec<Option<Vec<u8>>> = frames.into_iter().map(Some).collect();
        assert_eq!(recv_count(rx.as_mut(), expected.len()).await, expected);
    }

    #[tokio::test]
    async fn a_byte_stream_carries_cobs_frames_and_resyncs_after_garbage() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut tx = StreamTx::new(a);
        let mut rx = StreamRx::new(b);
        send_all(&mut tx, &[b"one", &[0u8, 1, 0, 2][..], b"three"]).await;
        let got = recv_count(&mut rx, 3).await;
        let expected = [b"one".to_vec(), vec![0, 1, 0, 2], b"three".to_vec()];
        assert_eq!(got, expected.map(Some));
        // Raw garbage up to a delimiter is one counted drop; the next frame still arrives.
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut raw = a;
        let mut rx = StreamRx::new(b);
        tokio::io::AsyncWriteExt::write_all(&mut raw, &[0xFF, 0xFF, 0xFF, 0x00])
            .await
            .unwrap();
        let mut tx = StreamTx::new(raw);
        send_all(&mut tx, &[b"after"]).await;
        assert_eq!(
            recv_count(&mut rx, 2).await,
            [None, Some(b"after".to_vec())]
        );
    }
}
