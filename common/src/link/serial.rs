//! The serial backend: a [`stream`](super::stream) link over a tty, 8N1, no flow control.
//! The baud rate is set on the port; a pty ignores it, so pacing stays the sender's job.
//!
//! The receiving end outlives its device: when the line goes away (a USB-UART unplugged, the
//! other end of a pty closed) it logs the loss and reopens the device with a growing backoff
//! (0.1 s to 5 s) until it is back, keeping everything the receiver holds.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::stream::{StreamRx, StreamTx};
use super::{FrameRx, IoFuture, Received};

/// First and longest wait between two attempts to reopen a lost serial device.
const REOPEN_FIRST: Duration = Duration::from_millis(100);
const REOPEN_MAX: Duration = Duration::from_secs(5);

fn open(path: &Path, baud: u32) -> io::Result<tokio_serial::SerialStream> {
    let builder = tokio_serial::new(path.to_string_lossy(), baud)
        .data_bits(tokio_serial::DataBits::Eight)
        .parity(tokio_serial::Parity::None)
        .stop_bits(tokio_serial::StopBits::One)
        .flow_control(tokio_serial::FlowControl::None);
    tokio_serial::SerialStream::open(&builder).map_err(io::Error::from)
}

/// The sending end on the tty at `path`.
pub(super) fn open_tx(path: &Path, baud: u32) -> io::Result<StreamTx<tokio_serial::SerialStream>> {
    Ok(StreamTx::new(open(path, baud)?))
}

/// The receiving end on the tty at `path`: it must open now (a wrong path is a start-up
/// error); later losses are survived.
pub(super) fn open_rx(path: &Path, baud: u32) -> io::Result<SerialRx> {
    Ok(SerialRx {
        path: path.to_path_buf(),
        baud,
        line: Some(StreamRx::new(open(path, baud)?)),
    })
}

/// A serial receiving end that reopens its device when it goes away.
#[derive(Debug)]
pub struct SerialRx {
    path: PathBuf,
    baud: u32,
    /// `None` while the device is gone.
    line: Option<StreamRx<tokio_serial::SerialStream>>,
}

impl SerialRx {
    /// Reopens the device, waiting longer after each failure.
    async fn reopen(&mut self) {
        let mut wait = REOPEN_FIRST;
        loop {
            match open(&self.path, self.baud) {
                Ok(port) => {
                    tracing::info!(device = %self.path.display(), "serial link reopened");
                    self.line = Some(StreamRx::new(port));
                    return;
                }
                Err(e) => {
                    tracing::debug!(device = %self.path.display(), "cannot reopen yet: {e}");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(REOPEN_MAX);
                }
            }
        }
    }
}

impl FrameRx for SerialRx {
    fn ready(&mut self) -> IoFuture<'_, ()> {
        Box::pin(async move {
            loop {
                let Some(line) = self.line.as_mut() else {
                    self.reopen().await;
                    continue;
                };
                match line.ready().await {
                    Ok(()) => return Ok(()),
                    Err(e) => {
                        tracing::warn!(
                            device = %self.path.display(),
                            "serial link lost ({e}); reopening until it is back"
                        );
                        self.line = None;
                    }
                }
            }
        })
    }

    fn next_frame(&mut self) -> Option<Received<'_>> {
        self.line.as_mut()?.next_frame()
    }
}
