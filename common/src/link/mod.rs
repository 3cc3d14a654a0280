//! The one-way link: which kind it is (`udp://…`, `serial://…`), how big its frames may be,
//! and the backends behind two small traits, [`FrameTx`] and [`FrameRx`].
//!
//! ```text
//!   LinkSpec::open_tx ─▶ Box<dyn FrameTx>   udp::UdpTx (GSO batches)   stream::StreamTx (COBS)
//!   LinkSpec::open_rx ─▶ Box<dyn FrameRx>   udp::UdpRx (recvmmsg+GRO)  stream::StreamRx (COBS)
//!                                                                      serial: a stream over a tty
//!   Links (one or more --link, udp://H:9000-9003) ─▶ multi::StripedTx, or each link apart
//!                                                    (Links::open_rx_each)
//! ```
//!
//! A backend is one file. The byte-stream backend frames with COBS over any
//! `AsyncRead`/`AsyncWrite` (serial uses it; a TCP or stdin link would too). Adding a link
//! means a new file, a variant in [`LinkSpec`] and its URL parser, and a line in each opener.
//!
//! The sender only ever writes and the receiver only ever reads: nothing here can put a byte
//! back on the wire, so a test over loopback proves the same property a fibre diode enforces.

mod multi;
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

pub use multi::{StripedTx, QUIET_LINK};
pub use serial::SerialRx;
pub use stream::{StreamRx, StreamTx};
pub use udp::{Gso, Sending, UdpRx, UdpTx};

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
    /// Sends every queued frame now (a link that sends from a thread of its own hands them to
    /// it; dropping such a link waits until that thread has sent everything).
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

    /// Datagrams the kernel dropped because the socket's receive buffer was full, since the
    /// socket was opened (UDP); `None` where the link cannot say.
    fn kernel_drops(&self) -> Option<u64> {
        None
    }
}

/// One link of several: what it brought so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkActivity {
    /// Its URL.
    pub name: String,
    /// Datagrams (or frames) it delivered.
    pub datagrams: u64,
    /// How long since it last had something; `None` before its first.
    pub quiet_for: Option<std::time::Duration>,
    /// Its last read failed: no longer read.
    pub failed: bool,
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
        self.open_tx_sending(Sending::Inline).await
    }

    /// [`open_tx`](Self::open_tx), a UDP link sending as `sending` says (one link of several
    /// sends from a thread of its own).
    pub async fn open_tx_sending(&self, sending: Sending) -> io::Result<Box<dyn FrameTx>> {
        Ok(match self {
            LinkSpec::Udp { address, .. } => {
                Box::new(UdpTx::open_with(address, sending, Gso::Auto).await?)
            }
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

/// The `--link` values: one link, or several used as one ([`StripedTx`], [`Links::open_rx_each`]):
/// `--link` given more than once, or a UDP port range (`udp://10.0.0.2:9000-9003`, one flow per
/// port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Links(Vec<LinkSpec>);

impl Links {
    /// Most links one run uses.
    pub const MAX: usize = 64;

    /// The links of `values`, each one link or a UDP port range.
    pub fn parse_all<S: AsRef<str>>(values: &[S]) -> Result<Links, LinkSpecError> {
        let mut specs = Vec::new();
        for value in values {
            specs.extend(value.as_ref().parse::<Links>()?.0);
        }
        let too_many = |why: String| LinkSpecError {
            value: values
                .iter()
                .map(|v| v.as_ref().to_string())
                .collect::<Vec<_>>()
                .join(" "),
            why,
        };
        if specs.is_empty() {
            return Err(too_many("no link".into()));
        }
        if specs.len() > Self::MAX {
            return Err(too_many(format!("more than {} links", Self::MAX)));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(twice) = specs.iter().find(|s| !seen.insert(s.to_string())) {
            return Err(too_many(format!("{twice} is given twice")));
        }
        Ok(Links(specs))
    }

    /// Every link.
    pub fn specs(&self) -> &[LinkSpec] {
        &self.0
    }

    /// Largest frame every link carries.
    pub fn max_frame_len(&self) -> usize {
        self.0
            .iter()
            .map(LinkSpec::max_frame_len)
            .min()
            .unwrap_or(0)
    }

    /// Bytes a link adds to each frame, for pacing: the most any of them adds.
    pub fn frame_overhead(&self) -> u32 {
        self.0
            .iter()
            .map(LinkSpec::frame_overhead)
            .max()
            .unwrap_or(0)
    }

    /// Pacing rate when `--rate` is not given: each serial line's capacity, and 100 MB/s per
    /// UDP destination host (several ports of one host are flows over one path).
    pub fn default_rate(&self) -> u64 {
        let mut hosts = std::collections::HashSet::new();
        self.0
            .iter()
            .filter(|spec| match spec {
                LinkSpec::Udp { address, .. } => hosts.insert(
                    address
                        .rsplit_once(':')
                        .map_or(address.as_str(), |(h, _)| h),
                ),
                LinkSpec::Serial { .. } => true,
            })
            .map(LinkSpec::default_rate)
            .sum()
    }

    /// Opens the links for sending: frames striped over them when there are several.
    pub async fn open_tx(&self) -> io::Result<Box<dyn FrameTx>> {
        match self.0.as_slice() {
            [one] => one.open_tx().await,
            several => Ok(Box::new(StripedTx::open(several).await?)),
        }
    }

    /// Opens every link for receiving on its own, each with its name (its URL): a receiver
    /// reads each on a task of its own (`sluice-recv` does, so each flow's frames are checked
    /// on its own core).
    pub async fn open_rx_each(&self) -> io::Result<Vec<(String, Box<dyn FrameRx>)>> {
        let mut links = Vec::with_capacity(self.0.len());
        for spec in &self.0 {
            links.push((spec.to_string(), spec.open_rx().await?));
        }
        Ok(links)
    }
}

impl From<LinkSpec> for Links {
    fn from(spec: LinkSpec) -> Self {
        Links(vec![spec])
    }
}

impl FromStr for Links {
    type Err = LinkSpecError;

    /// One link, or `udp://HOST:FIRST-LAST[?…]`: one link per port.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let range = value
            .strip_prefix("udp://")
            .map(|rest| rest.split_once('?').unwrap_or((rest, "")))
            .and_then(|(target, query)| {
                let (host, ports) = target.rsplit_once(':')?;
                let (first, last) = ports.split_once('-')?;
                Some((host, first, last, query))
            });
        let Some((host, first, last, query)) = range else {
            return Ok(Links(vec![value.parse()?]));
        };
        let err = |why: &str| LinkSpecError {
            value: value.to_string(),
            why: why.to_string(),
        };
        let (first, last) = match (first.parse::<u16>(), last.parse::<u16>()) {
            (Ok(a), Ok(b)) if a >= 1 && a <= b => (a, b),
            _ => return Err(err("a port range is FIRST-LAST, 1 ≤ FIRST ≤ LAST ≤ 65535")),
        };
        if usize::from(last - first) >= Self::MAX {
            return Err(err(&format!(
                "a port range spans at most {} ports",
                Self::MAX
            )));
        }
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        (first..=last)
            .map(|port| format!("udp://{host}:{port}{query}").parse())
            .collect::<Result<Vec<LinkSpec>, _>>()
            .map(Links)
    }
}

impl fmt::Display for Links {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, spec) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" + ")?;
            }
            write!(f, "{spec}")?;
        }
        Ok(())
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
    fn several_links_and_port_ranges_are_one_set() {
        let flows: Links = "udp://10.0.0.2:9000-9003?mtu=9000".parse().unwrap();
        assert_eq!(flows.specs().len(), 4);
        assert_eq!(flows.specs()[3].to_string(), "udp://10.0.0.2:9003?mtu=9000");
        assert_eq!(flows.max_frame_len(), 8972);
        // Four flows to one host are one path: one default rate.
        assert_eq!(flows.default_rate(), 100_000_000);
        let two =
            Links::parse_all(&["udp://10.0.0.2:9000", "udp://10.1.0.2:9000?mtu=1500"]).unwrap();
        assert_eq!(two.default_rate(), 200_000_000);
        assert_eq!(
            two.to_string(),
            "udp://10.0.0.2:9000?mtu=1500 + udp://10.1.0.2:9000?mtu=1500"
        );
        let mixed =
            Links::parse_all(&["udp://h:1?mtu=9000", "serial:///dev/ttyS0?frame=512"]).unwrap();
        assert_eq!((mixed.max_frame_len(), mixed.frame_overhead()), (512, 28));
        for bad in [
            "udp://h:9003-9000",
            "udp://h:0-3",
            "udp://h:1-100",
            "udp://h:a-b",
        ] {
            let err = bad.parse::<Links>().unwrap_err().to_string();
            assert!(err.contains("port range"), "{bad}: {err}");
        }
        let twice = Links::parse_all(&["udp://h:1-2", "udp://h:2"]).unwrap_err();
        assert!(twice.to_string().contains("twice"), "{twice}");
    }

    #[tokio::test]
    async fn frames_striped_over_several_links_all_arrive_a_third_on_each() {
        let rx_specs: Vec<LinkSpec> = (0..3)
            .map(|_| "udp://127.0.0.1:0".parse().unwrap())
            .collect();
        // Bound one by one to learn their ports, then gathered as one.
        let mut ports = Vec::new();
        let mut rxs = Vec::new();
        for spec in &rx_specs {
            let rx = spec.open_rx().await.unwrap();
            ports.push(rx.local_addr().unwrap().port());
            rxs.push(rx);
        }
        drop(rxs);
        let texts: Vec<String> = ports
            .iter()
            .map(|p| format!("udp://127.0.0.1:{p}"))
            .collect();
        let links = Links::parse_all(&texts).unwrap();
        let mut rxs = links.open_rx_each().await.unwrap();
        let mut tx = links.open_tx().await.unwrap();
        let frames: Vec<Vec<u8>> = (0..90u8).map(|i| vec![i; 700]).collect();
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        send_all(tx.as_mut(), &refs).await;
        // Shuffled rounds of one frame per link: each link carries exactly a third.
        let mut got = Vec::new();
        for (_, rx) in &mut rxs {
            got.extend(
                recv_count(rx.as_mut(), 30)
                    .await
                    .into_iter()
                    .map(Option::unwrap),
            );
        }
        got.sort();
        assert_eq!(got, frames);
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
    async fn without_gso_a_batch_goes_out_one_datagram_per_call_and_a_dropped_sender_sends_all() {
        // What a kernel or device without segmentation offload gets (and what a flow falls
        // back to when a GSO send is refused): the same frames, each its own datagram.
        let rx_spec: LinkSpec = "udp://127.0.0.1:0".parse().unwrap();
        let mut rx = rx_spec.open_rx().await.unwrap();
        let port = rx.local_addr().unwrap().port();
        let mut tx = UdpTx::open_with(&format!("127.0.0.1:{port}"), Sending::Thread, Gso::Off)
            .await
            .unwrap();
        let mut frames: Vec<Vec<u8>> = (0..150u8).map(|i| vec![i; 1200]).collect();
        frames.push(vec![0xCC; 17]);
        for frame in &frames {
            tx.frame_buf()[..frame.len()].copy_from_slice(frame);
            tx.commit(frame.len()).await.unwrap();
        }
        // No flush: dropping the link hands over the batch being filled and waits for the
        // flow's thread to send everything.
        drop(tx);
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
