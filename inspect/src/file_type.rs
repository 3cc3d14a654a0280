//! What a file is, as approval rules by type (`approvals.toml`'s `types`) match it: what the
//! content gate would claim it is, whatever its name.

use std::io;

use crate::formats::pickle;
use crate::inspector::{self, ReadSeek};
use crate::sniff::Kind;

/// [`inspector::file_kinds`] (its first bytes, and a zip by its end), and a pickle also when
/// the pickle inspector claims one without a `PROTO` opcode (protocols 0 and 1), as the gate
/// and Python's unpickler read it; by [`Kind::name`].
pub fn file_types(r: &mut dyn ReadSeek) -> io::Result<Vec<&'static str>> {
    let (mut kinds, head) = inspector::file_kinds_and_head(r)?;
    if !kinds.has(Kind::Zip) && pickle::looks_like_pickle(&head) {
        kinds = kinds.with(Kind::Pickle);
    }
    Ok(kinds.names())
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    /// What a rule by type sees: a protocol 1 pickle (no `PROTO`) is a pickle, and a
    /// safetensors file whose header length spells a zip's magic is safetensors as well.
    #[test]
    fn types_for_approval_rules_are_what_the_gate_would_claim() {
        let pickle = b"}q\x00(X\x01\x00\x00\x00aq\x01K\x01u.".to_vec();
        assert_eq!(file_types(&mut Cursor::new(pickle)).unwrap(), ["pickle"]);
        let mut tricky = 0x0403_4B50u64.to_le_bytes().to_vec();
        tricky.push(b'{');
        tricky.resize(0x0403_4B50 + 8 + 16, b' ');
        let types = file_types(&mut Cursor::new(tricky)).unwrap();
        assert!(
            types.contains(&"safetensors") && types.contains(&"zip"),
            "{types:?}"
        );
    }
}
