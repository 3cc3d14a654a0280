//! Frames as attacker B (a compromised low side holding `link.key`) makes them: any header,
//! valid or not, encoded and authenticated by hand, so a test can send what no honest sender
//! (and no `write_frame`, which validates) would.

use sluice_protocol::wire::{crc32c, Header, LinkKey, MAGIC, VERSION};

/// `"SL"`, version, postcard(`header`), `payload`, the link MAC, CRC-32C — whether or not the
/// header passes validation.
pub fn frame(header: &Header, payload: &[u8], key: &LinkKey) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.push(VERSION);
    out.extend(postcard::to_allocvec(header).expect("a header always encodes"));
    out.extend_from_slice(payload);
    let tag = key.tag(&out);
    out.extend_from_slice(&tag);
    let crc = crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}
