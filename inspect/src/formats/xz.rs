//! The dictionary every block of an xz file asks for, read before any block is decoded: the
//! xz decoder allocates a block's LZMA2 dictionary (up to 4 GiB) when the block starts, so
//! a hostile file could make the gate allocate that much. The blocks are found through each
//! stream's index, read from the file's end; a block header is believed only if its CRC-32
//! checks (an index that lies about where blocks are points at bytes that do not).
//!
//! ```text
//!  [stream header 12 | block … | index | stream footer 12] [padding] [stream …] …
//!  block = header (4 × (first byte + 1) bytes, CRC-32 last) │ data │ padding │ check
//! ```

use std::io::{self, Read, Seek, SeekFrom};

const HEADER_MAGIC: &[u8; 6] = b"\xfd7zXZ\0";
const FOOTER_MAGIC: &[u8; 2] = b"YZ";
/// Blocks a stream may have (`xz -T` cuts 24 MiB blocks at `-6`: a terabyte is 42 000).
const MAX_BLOCKS: u64 = 1 << 20;
/// The LZMA2 filter's id.
const LZMA2: u64 = 0x21;

/// Checks that no block of the xz file `r` asks for a dictionary over `max` bytes, and that
/// its streams, indexes and block headers are where they say.
pub fn check_dictionaries<R: Read + Seek + ?Sized>(r: &mut R, max: u32) -> Result<(), String> {
    let io_err = |e: io::Error| format!("unreadable ({e})");
    let mut end = r.seek(SeekFrom::End(0)).map_err(io_err)?;
    while end > 0 {
        // Stream padding: zeros, four at a time.
        let mut word = [0u8; 4];
        while end >= 4 {
            read_at(r, end - 4, &mut word).map_err(io_err)?;
            if word != [0; 4] {
                break;
            }
            end -= 4;
        }
        end = check_stream(r, end, u64::from(max))?;
    }
    Ok(())
}

/// Checks the stream that ends at `end`; where it starts.
fn check_stream<R: Read + Seek + ?Sized>(r: &mut R, end: u64, max: u64) -> Result<u64, String> {
    let io_err = |e: io::Error| format!("unreadable ({e})");
    let footer_at = end.checked_sub(12).ok_or("a stream without a footer")?;
    let mut footer = [0u8; 12];
    read_at(r, footer_at, &mut footer).map_err(io_err)?;
    if &footer[10..] != FOOTER_MAGIC || crc32(&footer[4..10]) != le32(&footer[0..4]) {
        return Err("a stream footer that does not check".into());
    }
    let index_len = (u64::from(le32(&footer[4..8])) + 1) * 4;
    let index_at = footer_at
        .checked_sub(index_len)
        .ok_or("an index larger than the stream")?;
    // First pass over the index: the blocks' total size, so where the stream starts.
    let mut blocks = 0u64;
    let mut count = 0u64;
    for_each_record(r, index_at, index_len, |unpadded, _| {
        blocks = blocks
            .checked_add(unpadded.div_ceil(4) * 4)
            .ok_or("block sizes overflow")?;
        count += 1;
        if count > MAX_BLOCKS {
            return Err(format!("more than {MAX_BLOCKS} blocks in a stream"));
        }
        Ok(())
    })?;
    let start = index_at
        .checked_sub(blocks)
        .and_then(|s| s.checked_sub(12))
        .ok_or("blocks larger than the stream")?;
    let mut header = [0u8; 12];
    read_at(r, start, &mut header).map_err(io_err)?;
    if &header[..6] != HEADER_MAGIC || header[6..8] != footer[8..10] {
        return Err("a stream header that does not match its footer".into());
    }
    // Second pass: every block header, where the index says it is.
    let mut at = start + 12;
    let mut positions = Vec::new();
    for_each_record(r, index_at, index_len, |unpadded, _| {
        positions.push(at);
        at += unpadded.div_ceil(4) * 4;
        Ok(())
    })?;
    debug_assert_eq!(positions.len() as u64, count);
    for block in positions {
        check_block_header(r, block, max)?;
    }
    Ok(start)
}

/// Calls `visit(unpadded size, uncompressed size)` for each record of the index at `at`.
fn for_each_record<R: Read + Seek + ?Sized>(
    r: &mut R,
    at: u64,
    len: u64,
    mut visit: impl FnMut(u64, u64) -> Result<(), String>,
) -> Result<(), String> {
    r.seek(SeekFrom::Start(at)).map_err(|e| e.to_string())?;
    let mut input = io::BufReader::new(&mut *r).take(len);
    let mut indicator = [0u8; 1];
    input
        .read_exact(&mut indicator)
        .map_err(|_| "a truncated index")?;
    if indicator[0] != 0 {
        return Err("an index that does not start where the footer says".into());
    }
    let records = varint(&mut input)?;
    for _ in 0..records {
        let unpadded = varint(&mut input)?;
        let uncompressed = varint(&mut input)?;
        visit(unpadded, uncompressed)?;
    }
    Ok(())
}

/// Checks the block header at `at`: its CRC-32, and each LZMA2 filter's dictionary.
fn check_block_header<R: Read + Seek + ?Sized>(r: &mut R, at: u64, max: u64) -> Result<(), String> {
    let mut size = [0u8; 1];
    read_at(r, at, &mut size).map_err(|e| e.to_string())?;
    if size[0] == 0 {
        return Err("an index where a block should be".into());
    }
    let len = (usize::from(size[0]) + 1) * 4;
    let mut header = vec![0u8; len];
    read_at(r, at, &mut header).map_err(|e| e.to_string())?;
    if crc32(&header[..len - 4]) != le32(&header[len - 4..]) {
        return Err("a block header that does not check (an index that lies?)".into());
    }
    let flags = header[1];
    let mut fields = &header[2..len - 4];
    if flags & 0x40 != 0 {
        varint(&mut fields)?;
    }
    if flags & 0x80 != 0 {
        varint(&mut fields)?;
    }
    for _ in 0..=(flags & 3) {
        let id = varint(&mut fields)?;
        let props_len = usize::try_from(varint(&mut fields)?).map_err(|_| "filter properties")?;
        let props = fields
            .get(..props_len)
            .ok_or("truncated filter properties")?;
        fields = &fields[props_len..];
        if id == LZMA2 {
            let code = *props.first().ok_or("LZMA2 without properties")?;
            let dictionary = match code {
                0..=39 => u64::from(2 | (code & 1)) << (code / 2 + 11),
                40 => u64::from(u32::MAX),
                _ => return Err("an LZMA2 dictionary code out of range".into()),
            };
            if dictionary > max {
                return Err(format!(
                    "a block asks for a {dictionary}-byte dictionary (at most {max})"
                ));
            }
        }
    }
    Ok(())
}

/// An xz variable-length integer (7 bits a byte, at most 9 bytes).
fn varint(r: &mut impl Read) -> Result<u64, String> {
    let mut value = 0u64;
    for i in 0..9 {
        let mut b = [0u8; 1];
        r.read_exact(&mut b).map_err(|_| "a truncated number")?;
        value |= u64::from(b[0] & 0x7f) << (7 * i);
        if b[0] & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("a number longer than 9 bytes".into())
}

fn read_at<R: Read + Seek + ?Sized>(r: &mut R, at: u64, buf: &mut [u8]) -> io::Result<()> {
    r.seek(SeekFrom::Start(at))?;
    r.read_exact(buf)
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}
