//! A link over any byte stream: each frame COBS-encoded and followed by a `0x00` delimiter.
//! The serial backend is this over a tty; a TCP or stdin link would be this over a socket or a
//! pipe. The receiving side resynchronises at the next delimiter after garbage or a lost byte.

use std::io;

use sluice_protocol::framing::{encode_frame, encoded_len, CobsAccumulator, Feed};
use sluice_protocol::wire::MAX_FRAME_LEN;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{FrameRx, FrameTx, IoFuture, Received};

const ACCUMULATOR: usize = encoded_len(MAX_FRAME_LEN);
/// Bytes asked of the stream per read.
const READ_BUFFER: usize = 64 * 1024;

/// Writes COBS frames to `W`, one write per frame (pacing is the sender's job, per frame).
#[derive(Debug)]
pub struct StreamTx<W> {
    writer: W,
    frame: Vec<u8>,
    encoded: Vec<u8>,
}

impl<W: AsyncWrite + Unpin + Send + std::fmt::Debug> StreamTx<W> {
    /// A sender over `writer`.
    pub fn new(writer: W) -> Self {
        StreamTx {
            writer,
            frame: vec![0; MAX_FRAME_LEN],
            encoded: vec![0; encoded_len(MAX_FRAME_LEN)],
        }
    }
}

impl<W: AsyncWrite + Unpin + Send + std::fmt::Debug> FrameTx for StreamTx<W> {
    fn frame_buf(&mut self) -> &mut [u8] {
        &mut self.frame
    }

    fn commit(&mut self, len: usize) -> IoFuture<'_, ()> {
        Box::pin(async move {
            let frame = self
                .frame
                .get(..len)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "frame too long"))?;
            let n = encode_frame(frame, &mut self.encoded)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too long"))?;
            self.writer.write_all(&self.encoded[..n]).await
        })
    }

    fn flush(&mut self) -> IoFuture<'_, ()> {
        Box::pin(async move { self.writer.flush().await })
    }
}

/// Reads COBS frames from `R`.
#[derive(Debug)]
pub struct StreamRx<R> {
    reader: R,
    accumulator: Box<CobsAccumulator<ACCUMULATOR>>,
    input: Vec<u8>,
    /// Unread bytes are `input[start..end]`.
    start: usize,
    end: usize,
}

impl<R: AsyncRead + Unpin + Send + std::fmt::Debug> StreamRx<R> {
    /// A receiver over `reader`.
    pub fn new(reader: R) -> Self {
        StreamRx {
            reader,
            accumulator: Box::new(CobsAccumulator::new()),
            input: vec![0; READ_BUFFER],
            start: 0,
            end: 0,
        }
    }
}

impl<R: AsyncRead + Unpin + Send + std::fmt::Debug> FrameRx for StreamRx<R> {
    fn ready(&mut self) -> IoFuture<'_, ()> {
        Box::pin(async move {
            if self.start < self.end {
                return Ok(());
            }
            let n = self.reader.read(&mut self.input).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the byte stream closed",
                ));
            }
            self.start = 0;
            self.end = n;
            Ok(())
        })
    }

    fn next_frame(&mut self) -> Option<Received<'_>> {
        if self.start >= self.end {
            return None;
        }
        let pending = &self.input[self.start..self.end];
        let before = pending.len();
        // `Consumed` means no delimiter in what is left: it is all inside the accumulator.
        match self.accumulator.feed(pending) {
            Feed::Consumed => {
                self.start = self.end;
                None
            }
            Feed::Frame { frame, rest } => {
                self.start += before - rest.len();
                Some(Received::Frame(frame))
            }
            Feed::Dropped { error, rest } => {
                self.start += before - rest.len();
                Some(Received::Dropped(error.into()))
            }
        }
    }
}
