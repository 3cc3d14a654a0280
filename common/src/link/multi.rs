//! Several links used as one: two fibres on two NICs, or several UDP flows on one
//! (`udp://10.0.0.2:9000-9003`, four ports: four 4-tuples the kernel and the NIC can spread
//! over queues and cores).
//!
//! The sender stripes frames over the links ([`StripedTx`]): each round of one frame per link
//! goes out in a fresh random order of the links. Plain turns would alias with the send loop's
//! interleaving of blocks (eight blocks in turn over two links put every frame of a block on
//! the same link, so one link's death would take whole blocks); shuffled, every block's
//! symbols are spread over all links and the FEC covers the loss of a whole link as it covers
//! any other loss (with enough repair, or a later pass). The receiver reads each link on its
//! own ([`Links::open_rx_each`](super::Links::open_rx_each)). A link the sender cannot send
//! on (a serial adapter unplugged) is set aside with a warning; the others go on.

use std::fmt;
use std::io;
use std::time::Duration;

use super::{FrameTx, IoFuture, LinkSpec, Sending};

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
            // Each flow makes its system calls on a thread of its own.
            links.push(spec.open_tx_sending(Sending::Thread).await?);
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

/// How long a link of several may bring nothing while another brings frames before it is
/// reported down.
pub const QUIET_LINK: Duration = Duration::from_secs(5);
