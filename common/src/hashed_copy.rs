//! Copying a file's content while hashing it, never more than one byte past what was expected:
//! the sender's held copies (what its checks read is what it sends) and the receiver's
//! release from the quarantine (what lands is what was refused) both read this way.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

use crate::service::Stage;

/// Bytes copied per watchdog step.
const CHUNK: usize = 1 << 20;

/// Copies `reader` into `to` while hashing it, up to `limit` bytes and one more (a size above
/// `limit` says the source grew); returns the size read and its SHA-256 (hex). One watchdog
/// step of `stage` per chunk.
pub fn copy_hashing(
    reader: &mut dyn Read,
    to: &mut dyn Write,
    limit: u64,
    stage: Option<&Stage>,
) -> io::Result<(u64, String)> {
    let mut reader = reader.take(limit.saturating_add(1));
    let mut hash = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let _step = stage.map(Stage::step);
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        to.write_all(&buf[..n])?;
        size += n as u64;
    }
    Ok((size, hex::encode(hash.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_and_hashes_up_to_one_byte_past_the_limit() {
        let data = vec![7u8; 3 << 20];
        let mut copy = Vec::new();
        let (size, sha) = copy_hashing(&mut data.as_slice(), &mut copy, 1 << 20, None).unwrap();
        assert_eq!(size, (1 << 20) + 1);
        assert_eq!(copy, data[..(1 << 20) + 1]);
        assert_eq!(sha, hex::encode(Sha256::digest(&copy)));
        let mut whole = Vec::new();
        let (size, _) = copy_hashing(&mut data.as_slice(), &mut whole, u64::MAX, None).unwrap();
        assert_eq!((size, whole), (data.len() as u64, data));
    }
}
