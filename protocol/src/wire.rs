//! Wire format v2: the bytes of one frame, as they cross the link.
//!
//! One frame is one UDP datagram, or one COBS-delimited frame on a serial line
//! ([`crate::framing`]). `SPEC.md` is the normative description; this module implements it.
//!
//! ```text
//!  0      2     3                  3+H                 n-20           n-4        n
//!  +------+-----+-------------------+-------------------+--------------+----------+
//!  | "SL" | 0x02| header (postcard) | payload           | MAC, 16 B    | CRC-32C  |
//!  +------+-----+-------------------+-------------------+--------------+----------+
//!  magic   ver   H ≤ 64 bytes        symbol_size bytes    POLYVAL-AES    LE, over
//!                                    (0 for control)      over [0,n-20)  [0,n-4)
//! ```
//!
//! Checks run cheapest first and stop at the first failure: length, magic, version, CRC,
//! MAC, header decoding, then header validation (geometry, payload length). A forged frame
//! therefore costs the receiver one CRC and one keyed hash over at most [`MAX_FRAME_LEN`]
//! bytes, no allocation and no state. After [`parse_frame`] returns `Ok`, every field is
//! within the limits of SPEC.md and no accessor can panic.

use serde::{Deserialize, Serialize};

use crate::fec::{Geometry, GeometryError};

/// First two bytes of every frame.
pub const MAGIC: [u8; 2] = *b"SL";
/// Wire format version carried in byte 2 (2: POLYVAL-AES link MAC, data blocks carry their
/// segment size; 3: the sender's audit-log head, frame kind 3).
pub const VERSION: u8 = 3;
/// Magic and version.
pub const PREFIX_LEN: usize = 3;
/// Length of the truncated link MAC.
pub const MAC_LEN: usize = 16;
/// Length of the CRC-32C trailer.
pub const CRC_LEN: usize = 4;
/// MAC and CRC.
pub const TRAILER_LEN: usize = MAC_LEN + CRC_LEN;
/// Longest header a valid frame may carry.
pub const MAX_HEADER_LEN: usize = 64;
/// Longest frame accepted or produced (fits a 9000-byte MTU datagram).
pub const MAX_FRAME_LEN: usize = 9216;
/// Shortest possible frame: prefix, a one-byte header, trailer.
pub const MIN_FRAME_LEN: usize = PREFIX_LEN + 1 + TRAILER_LEN;
/// Bytes a frame adds around a symbol, at most: what to subtract from a datagram size.
pub const MAX_OVERHEAD: usize = PREFIX_LEN + MAX_HEADER_LEN + TRAILER_LEN;
/// Largest object id: bounds its varint to 5 bytes (34 billion objects per session).
pub const MAX_OBJECT_ID: u64 = (1 << 35) - 1;
/// Largest block index: bounds its varint to 3 bytes (2 Mi segments per object).
pub const MAX_BLOCK_INDEX: u32 = (1 << 21) - 1;
/// Longest symbol header the limits allow (varint bytes): kind 1, session 10, object 5,
/// block kind 1, index 3, geometry k 3 + R 3 + symbol size 2 + block_len 4, symbol id 3,
/// segment size 4.
pub const MAX_SYMBOL_HEADER_LEN: usize = 39;
/// Smallest plaintext segment a data block may carry (its `segment_size`).
pub const MIN_SEGMENT_SIZE: u32 = 64 << 10;
/// Largest plaintext segment a data block may carry.
pub const MAX_SEGMENT_SIZE: u32 = 8 << 20;
/// Bytes a symbol frame adds around its symbol, at most.
pub const MAX_SYMBOL_OVERHEAD: usize = PREFIX_LEN + MAX_SYMBOL_HEADER_LEN + TRAILER_LEN;

/// Largest valid symbol size whose frames fit in `max_frame_len` bytes (0 if none does).
pub fn max_symbol_size(max_frame_len: usize) -> u16 {
    let room = max_frame_len
        .min(MAX_FRAME_LEN)
        .saturating_sub(MAX_SYMBOL_OVERHEAD);
    let align = usize::from(crate::fec::SYMBOL_ALIGN);
    let size = (room / align * align).min(usize::from(crate::fec::MAX_SYMBOL_SIZE));
    u16::try_from(size).unwrap_or(0)
}

/// Labels for deriving the two frame-MAC keys from the shared link key (domain separation:
/// the raw link secret is never used as a key itself).
const MAC_HASH_LABEL: &[u8] = b"sluice v2 2026-11 frame authentication: polyval";
const MAC_PRF_LABEL: &[u8] = b"sluice v2 2026-11 frame authentication: aes-256";

#[cfg(not(feature = "std"))]
const CASTAGNOLI: crc::Crc<u32, crc::Table<16>> =
    crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISCSI);

/// CRC-32C (Castagnoli) of `bytes`, as carried in the frame trailer: the SSE4.2 / ARMv8 CRC
/// instruction on hosts (selected at run time), a 16-table lookup without `std`.
pub fn crc32c(bytes: &[u8]) -> u32 {
    #[cfg(feature = "std")]
    {
        crc32c::crc32c(bytes)
    }
    #[cfg(not(feature = "std"))]
    {
        CASTAGNOLI.checksum(bytes)
    }
}

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// HMAC-SHA-256 of `label` under a 32-byte key: the key derivation. HMAC zero-pads keys shorter
/// than the 64-byte block, so padding here gives the same result as any HMAC-SHA-256, without a
/// fallible call.
fn derive(secret: &[u8; 32], label: &[u8]) -> [u8; 32] {
    use hmac::digest::KeyInit;
    use hmac::Mac;
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(secret);
    let mut mac = <HmacSha256 as KeyInit>::new(&block.into());
    mac.update(label);
    mac.finalize().into_bytes().into()
}

/// The 32-byte secret both ends of a link share; frames are authenticated with keys derived
/// from it, so a frame injected without it never reaches the FEC decoder.
///
/// The tag is `AES-256(k_prf, POLYVAL(k_hash, frame ‖ zero padding ‖ bit length))`: a
/// universal hash under a pseudorandom permutation (the construction of AES-GCM-SIV's tag,
/// without its nonce). It needs no nonce, so nothing — not a sender restart, not a relay that
/// cannot keep state — can break it by repeating one. Chosen over HMAC-SHA-256 (wire v1) on
/// measurement: 0.30 µs against 1.28 µs per 1452-byte frame (AES-NI, PCLMULQDQ, SHA-NI)
/// (`benches/mac.rs`, protocol/BENCHMARKS.md). SPEC.md §5 has the security argument.
#[derive(Clone)]
pub struct LinkKey {
    /// POLYVAL keyed with `k_hash` (its key powers computed once).
    hash: polyval::Polyval,
    /// AES-256 keyed with `k_prf`.
    prf: aes::Aes256,
}

impl LinkKey {
    /// Derives the frame-authentication keys from the raw shared secret:
    /// `k_hash = HMAC-SHA-256(secret, MAC_HASH_LABEL)[..16]`,
    /// `k_prf = HMAC-SHA-256(secret, MAC_PRF_LABEL)`.
    pub fn new(secret: &[u8; 32]) -> Self {
        use aes::cipher::KeyInit as _;
        let hash_key = derive(secret, MAC_HASH_LABEL);
        let mut k_hash = [0u8; 16];
        k_hash.copy_from_slice(&hash_key[..16]);
        LinkKey {
            hash: polyval::Polyval::new(&k_hash.into()),
            prf: aes::Aes256::new(&derive(secret, MAC_PRF_LABEL).into()),
        }
    }

    /// The 16-byte tag of `authenticated` (everything before the MAC field).
    pub fn tag(&self, authenticated: &[u8]) -> [u8; MAC_LEN] {
        use aes::cipher::BlockEncrypt;
        use polyval::universal_hash::UniversalHash;
        let mut hash = self.hash.clone();
        hash.update_padded(authenticated);
        let mut lengths = [0u8; 16];
        lengths[..8].copy_from_slice(&(authenticated.len() as u64 * 8).to_le_bytes());
        hash.update(&[lengths.into()]);
        let digest: [u8; 16] = hash.finalize().into();
        let mut block = aes::Block::from(digest);
        self.prf.encrypt_block(&mut block);
        block.into()
    }

    /// Whether `tag` authenticates `authenticated`, compared in constant time.
    pub fn verify(&self, authenticated: &[u8], tag: &[u8]) -> bool {
        if tag.len() != MAC_LEN {
            return false;
        }
        let expected = self.tag(authenticated);
        let difference = expected
            .iter()
            .zip(tag)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        core::hint::black_box(difference) == 0
    }
}

impl core::fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("LinkKey(..)")
    }
}

/// Random per sender start; lets the receiver tell transfers of different runs apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionId(pub u64);

/// Objects are numbered from 0 within a session; a `u64` never wraps in a session's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectId(pub u64);

/// What a block of an object holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum BlockKind {
    /// One encrypted segment of the object's content, numbered from 0.
    Data,
    /// The object's encrypted, signed manifest (always block index 0).
    Manifest,
}

/// Names one FEC block on the link: the unit the receiver assembles and decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BlockKey {
    /// Sender run the block belongs to.
    pub session: SessionId,
    /// Object within the session.
    pub object: ObjectId,
    /// Segment data or manifest.
    pub kind: BlockKind,
    /// Segment number within the object (0 for the manifest).
    pub index: u32,
}

/// Header of a frame carrying one FEC symbol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SymbolHeader {
    /// The block this symbol belongs to.
    pub block: BlockKey,
    /// How the block was encoded; the same in every symbol of the block.
    pub geometry: Geometry,
    /// Encoding symbol id: `0..k` are source symbols, `k..k+R` repair symbols.
    pub symbol: u16,
    /// Plaintext bytes per segment of the object, for a data block (segment `i` starts at
    /// plaintext offset `i × segment_size`, so a receiver can place it before the manifest
    /// arrives); 0 for a manifest block.
    pub segment_size: u32,
}

/// Sent while idle and periodically while busy, so the receiver can tell "link down" from
/// "nothing to send".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Sender run.
    pub session: SessionId,
    /// Counts heartbeats of this session from 0.
    pub seq: u64,
    /// Frames the sender has put on the link this session, heartbeats included.
    pub frames_sent: u64,
    /// The sender's pacing rate in bytes per second (0 when unpaced).
    pub rate: u64,
    /// Objects of this session with a symbol on the link: ids `0..objects` (the sender sends
    /// objects in id order). A receiver that has seen nothing of an id below it knows the
    /// object was lost whole, or that the sender could not read it and said so.
    pub objects: u64,
}

/// Counters a protocol-break relay between the two ends reports about itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayStatus {
    /// Counts status frames from 0 since the relay started.
    pub seq: u32,
    /// Frames forwarded to the high side.
    pub forwarded: u32,
    /// Bytes of frames forwarded.
    pub forwarded_bytes: u64,
    /// Deframing failures (bad COBS, over-long frames).
    pub dropped_framing: u32,
    /// Frames that failed a check before the MAC (length, magic, version, CRC, header).
    pub dropped_invalid: u32,
    /// Frames whose MAC did not verify (only when the relay holds the link key).
    pub dropped_mac: u32,
    /// Frames over the configured rate ceiling.
    pub dropped_rate: u32,
}

/// The head of the sender's tamper-evident audit log: its last durable record. The receiver
/// records the heads it sees in its own audit log, so a low-side log rewritten afterwards no
/// longer contains them (`sluice-audit verify --against`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHead {
    /// Sender run.
    pub session: SessionId,
    /// Sequence number of the record.
    pub seq: u64,
    /// SHA-256 of the record's line.
    pub hash: [u8; 32],
}

/// Every frame kind of wire format v3. The postcard discriminant is the frame kind byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Header {
    /// Kind 0: one FEC symbol of a block.
    Symbol(SymbolHeader),
    /// Kind 1: sender liveness.
    Heartbeat(Heartbeat),
    /// Kind 2: protocol-break relay counters.
    RelayStatus(RelayStatus),
    /// Kind 3: the sender's audit-log head.
    AuditHead(AuditHead),
}

impl Header {
    /// Payload length this header requires.
    pub fn payload_len(&self) -> usize {
        match self {
            Header::Symbol(s) => usize::from(s.geometry.symbol_size),
            Header::Heartbeat(_) | Header::RelayStatus(_) | Header::AuditHead(_) => 0,
        }
    }

    /// Checks the header's own limits (see SPEC.md, "Validation").
    pub fn validate(&self) -> Result<(), GeometryError> {
        match self {
            Header::Symbol(s) => {
                if s.block.object.0 > MAX_OBJECT_ID || s.block.index > MAX_BLOCK_INDEX {
                    return Err(GeometryError::IdOutOfRange);
                }
                s.geometry.validate()?;
                if u32::from(s.symbol) >= s.geometry.total_symbols() {
                    return Err(GeometryError::SymbolOutOfRange);
                }
                if s.block.kind == BlockKind::Manifest && s.block.index != 0 {
                    return Err(GeometryError::ManifestIndex);
                }
                check_segment_size(s.block.kind, s.segment_size)
            }
            Header::Heartbeat(_) | Header::RelayStatus(_) | Header::AuditHead(_) => Ok(()),
        }
    }
}

/// The segment-size rule: a data block's within `MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE`, a
/// manifest block's 0.
pub fn check_segment_size(kind: BlockKind, segment_size: u32) -> Result<(), GeometryError> {
    let ok = match kind {
        BlockKind::Data => (MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&segment_size),
        BlockKind::Manifest => segment_size == 0,
    };
    ok.then_some(()).ok_or(GeometryError::SegmentSize)
}

/// Why a byte string is not a valid frame. Variants follow the order the checks run in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseError {
    /// Shorter than [`MIN_FRAME_LEN`].
    TooShort,
    /// Longer than [`MAX_FRAME_LEN`].
    TooLong,
    /// First two bytes are not [`MAGIC`].
    BadMagic,
    /// Byte 2 is not [`VERSION`].
    BadVersion,
    /// CRC-32C trailer does not match: corrupted on the line.
    BadCrc,
    /// MAC does not verify: not sent by a holder of the link key.
    BadMac,
    /// Header does not decode (unknown kind, truncated or over-long).
    BadHeader,
    /// Payload length differs from what the header requires.
    BadLength,
    /// Header decodes but breaks a limit.
    BadGeometry(GeometryError),
}

/// Why a frame could not be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// The output buffer cannot hold the frame.
    BufferTooSmall,
    /// The frame would exceed [`MAX_FRAME_LEN`].
    FrameTooLong,
    /// The header does not fit in [`MAX_HEADER_LEN`] bytes.
    HeaderTooLong,
    /// Payload length differs from what the header requires.
    PayloadLength,
    /// The header breaks a limit; a receiver would drop the frame.
    BadGeometry(GeometryError),
}

/// A frame that passed every check. Borrowed from the buffer it was parsed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The decoded, validated header.
    pub header: Header,
    /// Exactly [`Header::payload_len`] bytes.
    pub payload: &'a [u8],
    /// The MAC field as received (already verified by [`parse_frame`]).
    pub tag: [u8; MAC_LEN],
}

/// Parses and fully verifies one frame: structure, CRC and link MAC.
pub fn parse_frame<'a>(bytes: &'a [u8], key: &LinkKey) -> Result<Frame<'a>, ParseError> {
    check_envelope(bytes)?;
    let mac_start = bytes.len() - TRAILER_LEN;
    if !key.verify(&bytes[..mac_start], &bytes[mac_start..mac_start + MAC_LEN]) {
        return Err(ParseError::BadMac);
    }
    decode_body(bytes)
}

/// Parses a frame checking everything except the MAC: for a relay that does not hold the
/// link key. The receiver must never use this.
pub fn parse_frame_unauthenticated(bytes: &[u8]) -> Result<Frame<'_>, ParseError> {
    check_envelope(bytes)?;
    decode_body(bytes)
}

/// Length, magic, version and CRC: the checks that need no key and no decoding.
fn check_envelope(bytes: &[u8]) -> Result<(), ParseError> {
    if bytes.len() < MIN_FRAME_LEN {
        return Err(ParseError::TooShort);
    }
    if bytes.len() > MAX_FRAME_LEN {
        return Err(ParseError::TooLong);
    }
    if bytes[..2] != MAGIC {
        return Err(ParseError::BadMagic);
    }
    if bytes[2] != VERSION {
        return Err(ParseError::BadVersion);
    }
    let crc_start = bytes.len() - CRC_LEN;
    let mut crc = [0u8; CRC_LEN];
    crc.copy_from_slice(&bytes[crc_start..]);
    if crc32c(&bytes[..crc_start]) != u32::from_le_bytes(crc) {
        return Err(ParseError::BadCrc);
    }
    Ok(())
}

/// Header decoding and validation; `bytes` already passed [`check_envelope`].
fn decode_body(bytes: &[u8]) -> Result<Frame<'_>, ParseError> {
    let mac_start = bytes.len() - TRAILER_LEN;
    let body = &bytes[PREFIX_LEN..mac_start];
    let (header, payload) =
        postcard::take_from_bytes::<Header>(body).map_err(|_| ParseError::BadHeader)?;
    let header_len = body.len() - payload.len();
    if header_len > MAX_HEADER_LEN {
        return Err(ParseError::BadHeader);
    }
    // postcard also decodes over-long varints; accept only the canonical encoding so a frame
    // has one byte form and a relay that re-encodes what it parsed reproduces it exactly.
    let mut canonical = [0u8; MAX_HEADER_LEN];
    match postcard::to_slice(&header, &mut canonical) {
        Ok(encoded) if encoded[..] == body[..header_len] => {}
        _ => return Err(ParseError::BadHeader),
    }
    header.validate().map_err(ParseError::BadGeometry)?;
    if payload.len() != header.payload_len() {
        return Err(ParseError::BadLength);
    }
    let mut tag = [0u8; MAC_LEN];
    tag.copy_from_slice(&bytes[mac_start..mac_start + MAC_LEN]);
    Ok(Frame {
        header,
        payload,
        tag,
    })
}

/// Writes a complete frame (prefix, header, payload, MAC, CRC) into `out`; returns its length.
pub fn write_frame(
    header: &Header,
    payload: &[u8],
    key: &LinkKey,
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    let mac_start = write_body(header, payload, out)?;
    let tag = key.tag(&out[..mac_start]);
    Ok(finish(out, mac_start, &tag))
}

/// Writes a frame with a MAC computed elsewhere: how a relay without the link key re-emits a
/// frame it parsed. The receiver's MAC check still covers the re-encoded bytes, so a relay
/// that changed anything produces a frame the receiver drops.
pub fn write_frame_with_tag(
    header: &Header,
    payload: &[u8],
    tag: &[u8; MAC_LEN],
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    let mac_start = write_body(header, payload, out)?;
    Ok(finish(out, mac_start, tag))
}

/// Writes prefix, header and payload; returns where the MAC goes.
fn write_body(header: &Header, payload: &[u8], out: &mut [u8]) -> Result<usize, EncodeError> {
    header.validate().map_err(EncodeError::BadGeometry)?;
    if payload.len() != header.payload_len() {
        return Err(EncodeError::PayloadLength);
    }
    if out.len() < PREFIX_LEN {
        return Err(EncodeError::BufferTooSmall);
    }
    out[..2].copy_from_slice(&MAGIC);
    out[2] = VERSION;
    let mut header_buf = [0u8; MAX_HEADER_LEN];
    let header_len = postcard::to_slice(header, &mut header_buf)
        .map_err(|_| EncodeError::HeaderTooLong)?
        .len();
    let payload_start = PREFIX_LEN + header_len;
    let mac_start = payload_start + payload.len();
    let frame_len = mac_start + TRAILER_LEN;
    if frame_len > MAX_FRAME_LEN {
        return Err(EncodeError::FrameTooLong);
    }
    if out.len() < frame_len {
        return Err(EncodeError::BufferTooSmall);
    }
    out[PREFIX_LEN..payload_start].copy_from_slice(&header_buf[..header_len]);
    out[payload_start..mac_start].copy_from_slice(payload);
    Ok(mac_start)
}

/// Appends MAC and CRC after the body; returns the frame length.
fn finish(out: &mut [u8], mac_start: usize, tag: &[u8; MAC_LEN]) -> usize {
    let crc_start = mac_start + MAC_LEN;
    out[mac_start..crc_start].copy_from_slice(tag);
    let crc = crc32c(&out[..crc_start]);
    out[crc_start..crc_start + CRC_LEN].copy_from_slice(&crc.to_le_bytes());
    crc_start + CRC_LEN
}

/// Frame length for a header and its payload, without writing anything.
pub fn frame_len(header: &Header) -> Result<usize, EncodeError> {
    let mut header_buf = [0u8; MAX_HEADER_LEN];
    let header_len = postcard::to_slice(header, &mut header_buf)
        .map_err(|_| EncodeError::HeaderTooLong)?
        .len();
    Ok(PREFIX_LEN + header_len + header.payload_len() + TRAILER_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex16(hex: &str) -> [u8; 16] {
        core::array::from_fn(|i| u8::from_str_radix(&hex[2 * i..][..2], 16).unwrap())
    }

    #[test]
    fn link_mac_matches_an_independent_implementation() {
        // Tags from an independent Python implementation (RFC 8452 POLYVAL, checked against the
        // RFC's Appendix A vector, and `cryptography`'s AES-256), secret = bytes 0..32:
        // k_hash = HMAC-SHA-256(secret, MAC_HASH_LABEL)[..16], k_prf = HMAC(secret, MAC_PRF_LABEL),
        // tag = AES-256(k_prf, POLYVAL(k_hash, msg ‖ pad ‖ le64(bits) ‖ 0^64)).
        let key = LinkKey::new(&core::array::from_fn(|i| i as u8));
        let forty: [u8; 40] = core::array::from_fn(|i| i as u8);
        for (message, expected) in [
            (&b""[..], "611e6c594fca5768ac9ac35881ece4aa"),
            (&b"abc"[..], "b85b351a777cf504dfd94514254a2b0b"),
            (&forty[..], "e06796daedbbc772da0ef5c1eb1fa893"),
        ] {
            let expected = hex16(expected);
            assert_eq!(key.tag(message), expected, "message of {}", message.len());
            assert!(key.verify(message, &expected));
        }
        let abc = hex16("b85b351a777cf504dfd94514254a2b0b");
        assert!(!key.verify(b"abd", &abc));
        assert!(!key.verify(b"abc", &abc[..15]));
        // A trailing zero byte changes the length block, so padding is not ambiguous.
        assert!(!key.verify(b"abc\0", &abc));
    }

    fn worst_symbol_header() -> Header {
        Header::Symbol(SymbolHeader {
            block: BlockKey {
                session: SessionId(u64::MAX),
                object: ObjectId(MAX_OBJECT_ID),
                kind: BlockKind::Manifest,
                index: 0,
            },
            geometry: Geometry {
                source_symbols: 32768,
                repair_symbols: 32768,
                symbol_size: 64,
                block_len: 32768 * 64,
            },
            symbol: 65535,
            segment_size: 0,
        })
    }

    #[test]
    fn worst_case_symbol_header_fits_the_documented_bound() {
        let mut header = worst_symbol_header();
        if let Header::Symbol(s) = &mut header {
            s.block.kind = BlockKind::Data;
            s.block.index = MAX_BLOCK_INDEX;
            s.geometry.symbol_size = crate::fec::MAX_SYMBOL_SIZE;
            s.geometry.block_len = crate::fec::MAX_BLOCK_BYTES;
            s.segment_size = MAX_SEGMENT_SIZE;
        }
        let mut buf = [0u8; MAX_HEADER_LEN];
        let len = postcard::to_slice(&header, &mut buf).unwrap().len();
        assert_eq!(len, MAX_SYMBOL_HEADER_LEN);
    }

    #[test]
    fn symbol_sizes_for_common_links() {
        assert_eq!(max_symbol_size(1500 - 28), 1408);
        assert_eq!(max_symbol_size(9000 - 28), 8896);
        assert_eq!(max_symbol_size(10), 0);
        let size = max_symbol_size(1500 - 28);
        let mut header = worst_symbol_header();
        if let Header::Symbol(s) = &mut header {
            s.geometry = Geometry::new(u32::from(size) * 100, size, 10).unwrap();
            s.symbol = 0;
            s.block.kind = BlockKind::Data;
            s.block.index = MAX_BLOCK_INDEX;
            s.segment_size = MAX_SEGMENT_SIZE;
        }
        assert!(frame_len(&header).unwrap() <= 1500 - 28);
    }

    #[test]
    fn ids_beyond_limits_are_refused() {
        let mut header = worst_symbol_header();
        if let Header::Symbol(s) = &mut header {
            s.block.object = ObjectId(MAX_OBJECT_ID + 1);
        }
        assert_eq!(header.validate(), Err(GeometryError::IdOutOfRange));
    }

    #[test]
    fn segment_sizes_follow_the_block_kind() {
        let mut header = worst_symbol_header();
        assert_eq!(header.validate(), Ok(()));
        for (kind, size, ok) in [
            (BlockKind::Manifest, 1, false),
            (BlockKind::Data, 0, false),
            (BlockKind::Data, MIN_SEGMENT_SIZE - 1, false),
            (BlockKind::Data, MIN_SEGMENT_SIZE, true),
            (BlockKind::Data, MAX_SEGMENT_SIZE, true),
            (BlockKind::Data, MAX_SEGMENT_SIZE + 1, false),
        ] {
            assert_eq!(
                check_segment_size(kind, size).is_ok(),
                ok,
                "{kind:?} {size}"
            );
        }
        if let Header::Symbol(s) = &mut header {
            s.segment_size = 1;
        }
        assert_eq!(header.validate(), Err(GeometryError::SegmentSize));
    }
}
