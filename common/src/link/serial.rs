//! The serial backend: a [`stream`](super::stream) link over a tty, 8N1, no flow control.
//! The baud rate is set on the port; a pty ignores it, so pacing stays the sender's job.

use std::io;
use std::path::Path;

use super::stream::{StreamRx, StreamTx};

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

/// The receiving end on the tty at `path`.
pub(super) fn open_rx(path: &Path, baud: u32) -> io::Result<StreamRx<tokio_serial::SerialStream>> {
    Ok(StreamRx::new(open(path, baud)?))
}
