//! COBS stream framing for serial links.
//!
//! A serial line is a byte stream with no packet boundaries. Each frame is COBS-encoded, so it
//! contains no `0x00`, and followed by one `0x00` delimiter:
//!
//! ```text
//!   ... 0x00 | cobs(frame 1) | 0x00 | cobs(frame 2) | 0x00 | ...
//! ```
//!
//! [`CobsAccumulator::feed`] takes whatever bytes the UART produced, in any chunking, and
//! hands back one frame at a time with the input it did not consume yet. Garbage, a dropped
//! byte or an over-long frame spoils at most the frames it touches: the next `0x00` always
//! resynchronises. Memory is the fixed `N`-byte buffer; nothing is allocated.

/// Why a delimited frame was dropped while deframing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FramingError {
    /// The bytes between two delimiters are not valid COBS.
    Cobs,
    /// More bytes than the accumulator holds arrived before a delimiter.
    Oversize,
}

/// Result of one [`CobsAccumulator::feed`] call.
#[derive(Debug, PartialEq, Eq)]
pub enum Feed<'buf, 'input> {
    /// Every input byte was taken; no frame is complete yet.
    Consumed,
    /// A frame was completed. Feed `rest` next.
    Frame {
        /// The decoded frame, valid until the next call.
        frame: &'buf [u8],
        /// Input after the frame's delimiter.
        rest: &'input [u8],
    },
    /// A delimited frame was dropped. Feed `rest` next.
    Dropped {
        /// Why it was dropped.
        error: FramingError,
        /// Input after the dropped frame's delimiter.
        rest: &'input [u8],
    },
}

/// Reassembles COBS frames from a byte stream into a fixed `N`-byte buffer.
///
/// `N` bounds the encoded frame length; use [`encoded_len`] of the largest frame.
#[derive(Debug)]
pub struct CobsAccumulator<const N: usize> {
    buf: [u8; N],
    len: usize,
    /// Bytes of the current frame were discarded: drop it when its delimiter arrives.
    overflowed: bool,
}

impl<const N: usize> Default for CobsAccumulator<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> CobsAccumulator<N> {
    /// An empty accumulator.
    pub const fn new() -> Self {
        CobsAccumulator {
            buf: [0; N],
            len: 0,
            overflowed: false,
        }
    }

    /// Bytes of a partial frame held now.
    pub fn pending(&self) -> usize {
        self.len
    }

    /// Takes bytes up to and including the next delimiter that ends a non-empty frame.
    ///
    /// Call again with `rest` until it returns [`Feed::Consumed`].
    pub fn feed<'a, 'i>(&'a mut self, mut input: &'i [u8]) -> Feed<'a, 'i> {
        loop {
            let Some(pos) = input.iter().position(|b| *b == 0) else {
                self.append(input);
                return Feed::Consumed;
            };
            let (chunk, rest) = (&input[..pos], &input[pos + 1..]);
            self.append(chunk);
            if self.overflowed {
                self.reset();
                return Feed::Dropped {
                    error: FramingError::Oversize,
                    rest,
                };
            }
            if self.len == 0 {
                // Back-to-back delimiters: an idle line or a resync marker, not a frame.
                input = rest;
                continue;
            }
            let encoded_len = self.len;
            self.len = 0;
            return match cobs::decode_in_place(&mut self.buf[..encoded_len]) {
                Ok(n) if n > 0 => Feed::Frame {
                    frame: &self.buf[..n],
                    rest,
                },
                _ => Feed::Dropped {
                    error: FramingError::Cobs,
                    rest,
                },
            };
        }
    }

    fn append(&mut self, bytes: &[u8]) {
        if self.overflowed {
            return;
        }
        match self.buf.get_mut(self.len..self.len + bytes.len()) {
            Some(slot) => {
                slot.copy_from_slice(bytes);
                self.len += bytes.len();
            }
            None => {
                self.overflowed = true;
                self.len = 0;
            }
        }
    }

    fn reset(&mut self) {
        self.len = 0;
        self.overflowed = false;
    }
}

/// Bytes a frame of `frame_len` bytes takes on the line, delimiter included.
pub const fn encoded_len(frame_len: usize) -> usize {
    cobs::max_encoding_length(frame_len) + 1
}

/// Writes `frame` COBS-encoded plus its `0x00` delimiter into `out`; returns bytes written.
pub fn encode_frame(frame: &[u8], out: &mut [u8]) -> Result<usize, FramingError> {
    let n = cobs::try_encode(frame, out).map_err(|_| FramingError::Oversize)?;
    let delimiter = out.get_mut(n).ok_or(FramingError::Oversize)?;
    *delimiter = 0;
    Ok(n + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(frames: &[&[u8]]) -> std::vec::Vec<u8> {
        let mut line = std::vec::Vec::new();
        for f in frames {
            let mut buf = [0u8; 512];
            let n = encode_frame(f, &mut buf).unwrap();
            line.extend_from_slice(&buf[..n]);
        }
        line
    }

    /// Feeds `line` in `chunk`-byte pieces; returns frames and drop errors in order.
    fn run<const N: usize>(
        acc: &mut CobsAccumulator<N>,
        line: &[u8],
        chunk: usize,
    ) -> (
        std::vec::Vec<std::vec::Vec<u8>>,
        std::vec::Vec<FramingError>,
    ) {
        let (mut frames, mut errors) = (std::vec::Vec::new(), std::vec::Vec::new());
        for piece in line.chunks(chunk.max(1)) {
            let mut input = piece;
            loop {
                match acc.feed(input) {
                    Feed::Consumed => break,
                    Feed::Frame { frame, rest } => {
                        frames.push(frame.to_vec());
                        input = rest;
                    }
                    Feed::Dropped { error, rest } => {
                        errors.push(error);
                        input = rest;
                    }
                }
            }
        }
        (frames, errors)
    }

    #[test]
    fn frames_survive_any_chunking() {
        let frames: [&[u8]; 3] = [b"\x00\x01\x00", b"hello", &[0u8; 300]];
        let line = encoded(&frames);
        for chunk in [1, 2, 7, 64, line.len()] {
            let mut acc = CobsAccumulator::<512>::new();
            let (got, errors) = run(&mut acc, &line, chunk);
            assert_eq!(got, frames.map(|f| f.to_vec()).to_vec(), "chunk {chunk}");
            assert!(errors.is_empty());
        }
    }

    #[test]
    fn oversize_frame_is_dropped_and_next_frame_survives() {
        let mut line = std::vec![0x55u8; 100];
        line.push(0);
        line.extend(encoded(&[b"ok"]));
        let mut acc = CobsAccumulator::<32>::new();
        let (got, errors) = run(&mut acc, &line, 9);
        assert_eq!(got, std::vec![b"ok".to_vec()]);
        assert_eq!(errors, std::vec![FramingError::Oversize]);
    }

    #[test]
    fn invalid_cobs_is_dropped_and_resynchronises() {
        // 0x05 promises four more non-zero bytes but the delimiter comes after one.
        let mut line = std::vec![0x05u8, 0x11, 0x00];
        line.extend(encoded(&[b"next"]));
        let mut acc = CobsAccumulator::<64>::new();
        let (got, errors) = run(&mut acc, &line, 3);
        assert_eq!(got, std::vec![b"next".to_vec()]);
        assert_eq!(errors, std::vec![FramingError::Cobs]);
    }

    #[test]
    fn idle_delimiters_are_not_frames() {
        let mut line = std::vec![0u8; 5];
        line.extend(encoded(&[b"x"]));
        let mut acc = CobsAccumulator::<64>::new();
        let (got, errors) = run(&mut acc, &line, 1);
        assert_eq!(got, std::vec![b"x".to_vec()]);
        assert!(errors.is_empty());
    }

    #[test]
    fn encode_refuses_small_buffer() {
        let mut out = [0u8; 4];
        assert_eq!(
            encode_frame(b"hello", &mut out),
            Err(FramingError::Oversize)
        );
        let mut exact = [0u8; encoded_len(5)];
        assert_eq!(encode_frame(b"hello", &mut exact), Ok(7));
    }
}
