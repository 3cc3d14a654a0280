//! Several links used as one: two fibres on two NICs, or several UDP flows on one
//! (`udp://10.0.0.2:9000-9003`, four ports: four 4-tuples the kernel and the NIC can spread
//! over queues and cores).
//!
//! The sender stripes frames over the links ([`StripedTx`]): each round of one frame per link
//! goes out in a fresh random order of the links. Plain turns would alias with the send loop's
//! interleaving of blocks (eight blocks in turn over two links put every frame of a block on
//! the same link, so one link's death would take whole blocks); shuffled, every block's
//! symbols are spread over all links and the FEC covers the loss of a whole link as it covers
//! any other loss (with enough repair, or a later pass). The receiver gathers frames from all
//! of them ([`MergedRx`]), taking each link in turn so a busy one never starves the others,
//! and keeps per link what arrived and when, so the link task can say `link 2 down`. A link
//! that fails (a serial adapter unplugged) is set aside with a warning; the others go on.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{FrameRx, FrameTx, IoFuture, LinkActivity, LinkSpec, Received};

/// Frames out over several links, one after the other.
pub struct StripedTx {
    links: Vec<Box<dyn FrameTx>>,
    names: Vec<String>,
    /// This round's order of the links, and how far into it the next frame is.
    order: Vec<usize>,
    at: usize,
    /// The link the next frame goes to.
    next: usize,
    /// Links whose last send failed: skipped from then on.
    failed: Vec<bool>,
    /// Shuffles the rounds (xorshift64: no cryptography needed, only no pattern).
    rng: u64,
}

impl fmt::Debug for StripedTx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripedTx")
            .field("links", &self.names)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl StripedTx {
    /// Opens every link of `specs` for sending.
    pub async fn open(specs: &[LinkSpec]) -> io::Result<Self> {
        let mut links = Vec::with_capacity(specs.len());
        for spec in specs {
            links.push(spec.open_tx().await?);
        }
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9E37_79B9, |d| d.as_nanos() as u64);
        let mut striped = StripedTx {
            failed: vec![false; links.len()],
            names: specs.iter().map(ToString::to_string).collect(),
            order: (0..links.len()).collect(),
            at: 0,
            links,
            next: 0,
            rng: seed | 1,
        };
        striped.shuffle();
        striped.next = striped.order.first().copied().unwrap_or(0);
        Ok(striped)
    }

    /// A fresh random order of the links for the next round (Fisher–Yates).
    fn shuffle(&mut self) {
        for i in (1..self.order.len()).rev() {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            let j = (self.rng % (i as u64 + 1)) as usize;
            self.order.swap(i, j);
        }
    }

    /// Moves on to the next link of the round that has not failed, starting a new round when
    /// this one is over.
    fn advance(&mut self) {
        let n = self.order.len();
        for _ in 0..2 * n {
            self.at += 1;
            if self.at >= n {
                self.at = 0;
                self.shuffle();
            }
            let i = self.order.get(self.at).copied().unwrap_or(0);
            if !self.failed.get(i).copied().unwrap_or(true) {
                self.next = i;
                return;
            }
        }
    }

    /// Sets link `i` aside after `error`; an error only when no link is left.
    fn link_failed(&mut self, i: usize, error: io::Error) -> io::Result<()> {
        if let Some(failed) = self.failed.get_mut(i) {
            *failed = true;
        }
        let name = self.names.get(i).map_or("?", String::as_str);
        if self.failed.iter().all(|f| *f) {
            return Err(io::Error::new(
                error.kind(),
                format!("every link failed; the last, {name}: {error}"),
            ));
        }
        tracing::warn!(
            link = i + 1,
            "link {} down: {name}: {error}; sending on the others",
            i + 1
        );
        self.advance();
        Ok(())
    }
}

impl FrameTx for StripedTx {
    fn frame_buf(&mut self) -> &mut [u8] {
        let i = self.next;
        match self.links.get_mut(i) {
            Some(link) => link.frame_buf(),
            None => &mut [],
        }
    }

    fn commit(&mut self, len: usize) -> IoFuture<'_, ()> {
        Box::pin(async move {
            let i = self.next;
            let sent = match self.links.get_mut(i) {
                Some(link) => link.commit(len).await,
                None => Err(io::Error::other("no link")),
            };
            match sent {
                Ok(()) => {
                    self.advance();
                    Ok(())
                }
                Err(e) => self.link_failed(i, e),
            }
        })
    }

    fn flush(&mut self) -> IoFuture<'_, ()> {
        Box::pin(async move {
            for i in 0..self.links.len() {
                if self.failed.get(i).copied().unwrap_or(true) {
                    continue;
                }
                let flushed = match self.links.get_mut(i) {
                    Some(link) => link.flush().await,
                    None => Ok(()),
                };
                if let Err(e) = flushed {
                    self.link_failed(i, e)?;
                }
            }
            Ok(())
        })
    }
}

/// One link of a [`MergedRx`] and what it brought.
struct Member {
    link: Box<dyn FrameRx>,
    name: String,
    datagrams: u64,
    /// When it last had something.
    last: Option<Instant>,
    /// Its last wait failed: no longer read.
    failed: bool,
}

/// Frames in from several links, each taken in turn.
pub struct MergedRx {
    members: Vec<Member>,
    /// The link whose batch [`FrameRx::next_frame`] hands out.
    current: usize,
    /// The link asked first at the next wait (rotating: none starves).
    first: usize,
}

impl fmt::Debug for MergedRx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.members.iter().map(|m| m.name.as_str()).collect();
        f.debug_struct("MergedRx")
            .field("links", &names)
            .finish_non_exhaustive()
    }
}

impl MergedRx {
    /// Opens every link of `specs` for receiving.
    pub async fn open(specs: &[LinkSpec]) -> io::Result<Self> {
        let mut members = Vec::with_capacity(specs.len());
        for spec in specs {
            members.push(Member {
                link: spec.open_rx().await?,
                name: spec.to_string(),
                datagrams: 0,
                last: None,
                failed: false,
            });
        }
        Ok(MergedRx {
            members,
            current: 0,
            first: 0,
        })
    }
}

impl FrameRx for MergedRx {
    fn ready(&mut self) -> IoFuture<'_, ()> {
        Box::pin(async move {
            loop {
                let n = self.members.len();
                let first = self.first % n.max(1);
                // Asked from `first` on, wrapping: the order the futures are polled in.
                let (front, back) = self.members.split_at_mut(first);
                let waits: Vec<(usize, IoFuture<'_, ()>)> = back
                    .iter_mut()
                    .enumerate()
                    .map(|(i, m)| (first + i, m))
                    .chain(front.iter_mut().enumerate())
                    .filter(|(_, m)| !m.failed)
                    .map(|(i, m)| (i, m.link.ready()))
                    .collect();
                if waits.is_empty() {
                    return Err(io::Error::other("every link failed"));
                }
                let (indices, futures): (Vec<usize>, Vec<IoFuture<'_, ()>>) =
                    waits.into_iter().unzip();
                let (result, at, _) = futures::future::select_all(futures).await;
                let i = indices.get(at).copied().unwrap_or(0);
                match result {
                    Ok(()) => {
                        self.current = i;
                        self.first = i + 1;
                        if let Some(member) = self.members.get_mut(i) {
                            member.last = Some(Instant::now());
                        }
                        return Ok(());
                    }
                    Err(e) => {
                        let Some(member) = self.members.get_mut(i) else {
                            return Err(e);
                        };
                        member.failed = true;
                        tracing::warn!(
                            link = i + 1,
                            "link {} failed: {}: {e}; receiving on the others",
                            i + 1,
                            member.name
                        );
                    }
                }
            }
        })
    }

    fn next_frame(&mut self) -> Option<Received<'_>> {
        let member = self.members.get_mut(self.current)?;
        let received = member.link.next_frame();
        if let Some(Received::Frame(_)) = received {
            member.datagrams += 1;
        }
        received
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        self.members.first().and_then(|m| m.link.local_addr())
    }

    fn activity(&self) -> Vec<LinkActivity> {
        let now = Instant::now();
        self.members
            .iter()
            .map(|m| LinkActivity {
                name: m.name.clone(),
                datagrams: m.datagrams,
                quiet_for: m.last.map(|t| now.saturating_duration_since(t)),
                failed: m.failed,
            })
            .collect()
    }

    fn kernel_drops(&self) -> Option<u64> {
        self.members
            .iter()
            .filter_map(|m| m.link.kernel_drops())
            .fold(None, |sum, d| Some(sum.unwrap_or(0) + d))
    }
}

/// How long a link of several may bring nothing while another brings frames before it is
/// reported down.
pub const QUIET_LINK: Duration = Duration::from_secs(5);
