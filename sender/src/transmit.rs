//! The paced send loop: blocks from the encoder into the scheduler, frames out on the link at
//! the scheduler's pace, heartbeats while idle, and a short tail of heartbeats at the end so the
//! receiver sees the sender finish rather than vanish.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use sluice_common::link::{LinkSender, LinkSpec};
use sluice_common::logging::LogFormat;
use sluice_common::units::Bytes;
use sluice_protocol::tx::{OutgoingBlock, Scheduler, Transmit, TxConfig};
use sluice_protocol::wire::{LinkKey, SessionId, MAX_FRAME_LEN};
use tokio::sync::mpsc;

use crate::encode::Produced;

/// Send-loop settings.
#[derive(Debug)]
pub(crate) struct Settings {
    pub link: LinkSpec,
    pub rate: u64,
    pub interleave: usize,
    pub session: SessionId,
    pub link_key: LinkKey,
    pub heartbeat_interval: Duration,
    /// Heartbeats keep going this long after the last symbol.
    pub linger: Duration,
    /// Show a progress bar over this many plaintext bytes.
    pub progress_total: Option<u64>,
}

/// What a run sent.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Summary {
    pub objects_queued: u64,
    pub objects_failed: u64,
    pub objects_refused: u64,
    /// Plaintext bytes of the objects, counted once (not per pass).
    pub bytes: u64,
    pub frames_sent: u64,
    /// Frame bytes.
    pub frame_bytes: u64,
    /// Frame bytes plus the link's per-frame overhead (IP/UDP headers, COBS).
    pub link_bytes: u64,
    pub symbols: u64,
    pub heartbeats: u64,
    pub blocks: u64,
    pub passes: u16,
    /// From start to the last symbol frame (the trailing heartbeats are not counted).
    pub elapsed: Duration,
}

impl Summary {
    fn goodput(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// One JSON object with every counter.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "summary": {
                "program": "sluice-send",
                "objects_queued": self.objects_queued,
                "objects_failed": self.objects_failed,
                "objects_refused": self.objects_refused,
                "bytes": self.bytes,
                "frames_sent": self.frames_sent,
                "frame_bytes": self.frame_bytes,
                "link_bytes": self.link_bytes,
                "symbols": self.symbols,
                "heartbeats": self.heartbeats,
                "blocks": self.blocks,
                "passes": self.passes,
                "elapsed_s": self.elapsed.as_secs_f64(),
                "goodput_mb_s": self.goodput(),
            }
        })
    }

    /// Prints the summary on stderr: a JSON line, or a short block for people.
    pub fn print(&self, format: LogFormat) {
        match format {
            LogFormat::Json => eprintln!("{}", self.to_json()),
            LogFormat::Human => eprintln!(
                "sluice-send summary: {} objects sent ({} failed, {} refused), {} in {:.2} s \
                 ({:.1} MB/s of file data)\n  frames: {} ({} symbols, {} heartbeats), {} on the \
                 link, {} blocks over {} pass(es)",
                self.objects_queued,
                self.objects_failed,
                self.objects_refused,
                Bytes(self.bytes),
                self.elapsed.as_secs_f64(),
                self.goodput(),
                self.frames_sent,
                self.symbols,
                self.heartbeats,
                Bytes(self.link_bytes),
                self.blocks,
                self.passes
            ),
        }
    }
}

fn progress_bar(total: Option<u64>) -> ProgressBar {
    match total {
        None => ProgressBar::hidden(),
        Some(total) => {
            let bar = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
            ) {
                bar.set_style(style);
            }
            bar
        }
    }
}

/// Runs until the encoder is done, every frame is out and the linger time has passed.
pub(crate) async fn send_loop(
    settings: Settings,
    mut link: LinkSender,
    mut blocks: mpsc::Receiver<Produced>,
) -> std::io::Result<Summary> {
    let start = Instant::now();
    let tokio_start = tokio::time::Instant::from_std(start);
    let overhead = settings.link.frame_overhead();
    let wire_frame = (settings.link.max_frame_len() + overhead as usize) as u64;
    // The timer wakes us about once a millisecond: the bucket must hold a couple of
    // milliseconds of line rate or sleeping would cap the rate below --rate.
    let burst = (2 * wire_frame).max(settings.rate / 500);
    let config = TxConfig {
        rate: settings.rate,
        burst,
        frame_overhead: overhead,
        interleave: settings.interleave,
        heartbeat_interval: settings.heartbeat_interval,
    };
    let mut scheduler = Scheduler::new(
        config,
        settings.session,
        settings.link_key.clone(),
        sluice_common::instant_since(start),
    );
    let bar = progress_bar(settings.progress_total);
    let mut summary = Summary::default();
    let mut pending: Option<OutgoingBlock> = None;
    let mut encoder_done = false;
    let mut finish_at: Option<sluice_protocol::time::Instant> = None;
    let mut drained_after: Option<Duration> = None;
    // The scheduler writes each frame straight into the batch that goes to the link: consecutive
    // frames of equal length leave in one system call (UDP segmentation offload).
    let mut batch = Batch::new();

    loop {
        // Feed the scheduler as far as it has room.
        loop {
            if let Some(block) = pending.take() {
                if let Err(block) = scheduler.push_block(block) {
                    pending = Some(block);
                    break;
                }
            }
            if encoder_done {
                break;
            }
            match blocks.try_recv() {
                Ok(item) => absorb(item, &mut pending, &mut summary, &bar),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => encoder_done = true,
            }
        }

        let now = sluice_common::instant_since(start);
        let wait_until = match scheduler
            .poll_transmit(now, batch.slot())
            .map_err(|e| std::io::Error::other(format!("frame encoding: {e:?}")))?
        {
            Transmit::Frame(len) => {
                batch.commit(len, &mut link).await?;
                continue;
            }
            Transmit::WaitUntil(at) => at,
        };
        batch.flush(&mut link).await?;
        let idle = encoder_done && pending.is_none() && scheduler.is_drained();
        let deadline = if idle {
            drained_after.get_or_insert_with(|| start.elapsed());
            let end = *finish_at.get_or_insert(now + settings.linger);
            if now >= end {
                break;
            }
            wait_until.min(end)
        } else {
            wait_until
        };
        let sleep =
            tokio::time::sleep_until(tokio_start + Duration::from_micros(deadline.as_micros()));
        if pending.is_none() && !encoder_done {
            tokio::select! {
                item = blocks.recv() => match item {
                    Some(item) => absorb(item, &mut pending, &mut summary, &bar),
                    None => encoder_done = true,
                },
                () = sleep => {}
            }
        } else {
            sleep.await;
        }
    }
    batch.flush(&mut link).await?;
    link.flush().await?;
    bar.finish_and_clear();
    let stats = scheduler.stats();
    summary.frames_sent = stats.frames;
    summary.frame_bytes = stats.bytes;
    summary.link_bytes = stats.bytes + stats.frames * u64::from(overhead);
    summary.symbols = stats.symbols;
    summary.heartbeats = stats.heartbeats;
    summary.blocks = stats.blocks;
    summary.elapsed = drained_after.unwrap_or_else(|| start.elapsed());
    Ok(summary)
}

/// Frames waiting to go out together: all `frame_len` long except possibly the last, back to
/// back in one buffer that the scheduler writes into directly (no copy per frame).
#[derive(Debug)]
struct Batch {
    buf: Vec<u8>,
    /// Bytes of committed frames at the start of `buf`.
    len: usize,
    frame_len: usize,
    count: usize,
    limit: usize,
}

impl Batch {
    /// Room for one GSO send (at most 64 KiB of datagrams) plus the frame being written.
    const CAPACITY: usize = (64 << 10) + MAX_FRAME_LEN;

    fn new() -> Self {
        Batch {
            buf: vec![0; Self::CAPACITY],
            len: 0,
            frame_len: 0,
            count: 0,
            limit: 1,
        }
    }

    /// Where the next frame goes: after the committed ones, always room for the largest frame.
    fn slot(&mut self) -> &mut [u8] {
        &mut self.buf[self.len..self.len + MAX_FRAME_LEN]
    }

    /// Takes the `len`-byte frame just written into [`slot`](Self::slot); sends the batch when
    /// it is full or the frame cannot join it.
    async fn commit(&mut self, len: usize, link: &mut LinkSender) -> std::io::Result<()> {
        if self.count > 0 && len > self.frame_len {
            // Longer than the batch's frames: send those, then start over with this one.
            link.send_batch(&self.buf[..self.len], self.frame_len)
                .await?;
            self.buf.copy_within(self.len..self.len + len, 0);
            self.len = 0;
            self.count = 0;
        }
        if self.count == 0 {
            self.frame_len = len;
            self.limit = link.batch_limit(len);
        }
        self.len += len;
        self.count += 1;
        // A shorter frame can only end a batch.
        if len < self.frame_len
            || self.count >= self.limit
            || self.len + MAX_FRAME_LEN > self.buf.len()
        {
            self.flush(link).await?;
        }
        Ok(())
    }

    async fn flush(&mut self, link: &mut LinkSender) -> std::io::Result<()> {
        if self.count > 0 {
            link.send_batch(&self.buf[..self.len], self.frame_len)
                .await?;
            self.len = 0;
            self.count = 0;
        }
        Ok(())
    }
}

fn absorb(
    item: Produced,
    pending: &mut Option<OutgoingBlock>,
    summary: &mut Summary,
    bar: &ProgressBar,
) {
    match item {
        Produced::Block { block, plain_bytes } => {
            bar.inc(plain_bytes);
            *pending = Some(block);
        }
        Produced::ObjectQueued {
            path,
            size,
            sha256,
            segments,
        } => {
            summary.objects_queued += 1;
            summary.bytes += size;
            bar.set_message(path.clone());
            tracing::info!(
                path = %path,
                size,
                sha256 = %hex(&sha256),
                segments,
                "object queued"
            );
        }
        Produced::ObjectFailed { path, reason } => {
            summary.objects_failed += 1;
            tracing::error!(path = %path, reason = %reason, "object not sent: {reason}");
        }
        Produced::PassQueued(pass) => {
            tracing::debug!(pass, "pass queued");
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
