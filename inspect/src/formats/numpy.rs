//! NumPy `.npy` headers: an array of Python objects (`dtype=object`) is stored as a pickle
//! after the header, so it gets the pickle rule; every other dtype is plain data.
//!
//! ```text
//!  \x93NUMPY | major | minor | header length (u16 LE in v1, u32 LE in v2 and v3) | header
//!  header = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }" padded with spaces
//! ```

use std::io::Read;

use super::pickle::PickleInspector;
use crate::inspector::{Inspector, Nested};
use crate::refusal::Refusal;
use crate::sniff::{Kind, Kinds};

/// NumPy `.npy` arrays: an object array's data is a pickle, checked by `pickle`'s rule.
#[derive(Debug)]
pub struct NumpyInspector {
    pub pickle: PickleInspector,
}

impl Inspector for NumpyInspector {
    fn name(&self) -> &'static str {
        "numpy"
    }

    fn claims(&self, kinds: Kinds, _head: &[u8], _path: &str) -> bool {
        kinds.has(Kind::Numpy)
    }

    fn inspect(
        &self,
        file: &mut dyn Read,
        path: &str,
        size: u64,
        nested: &mut Nested<'_>,
    ) -> Result<(), Refusal> {
        // Right after the header comes the data: for objects, a pickle.
        if Header::read(&mut *file)?.holds_objects {
            self.pickle.inspect(file, path, size, nested)?;
        }
        Ok(())
    }
}

/// Longest header read (NumPy itself writes a few hundred bytes; structured dtypes more).
const MAX_HEADER_LEN: u64 = 1 << 20;

/// What the gate needs from a `.npy` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The dtype holds Python objects (type code `O`, also inside a structured dtype).
    pub holds_objects: bool,
    /// Where the array data starts.
    pub data_offset: u64,
}

impl Header {
    /// Reads the header of the `.npy` stream `reader` (positioned at its start).
    pub fn read(reader: &mut (impl Read + ?Sized)) -> Result<Header, Refusal> {
        let mut fixed = [0u8; 8];
        reader
            .read_exact(&mut fixed)
            .map_err(|_| Refusal::NumpyMalformed("shorter than its magic"))?;
        if &fixed[..6] != b"\x93NUMPY" {
            return Err(Refusal::NumpyMalformed("no magic"));
        }
        let (len, prefix) = match fixed[6] {
            1 => {
                let mut b = [0u8; 2];
                reader
                    .read_exact(&mut b)
                    .map_err(|_| Refusal::NumpyMalformed("truncated"))?;
                (u64::from(u16::from_le_bytes(b)), 10)
            }
            2 | 3 => {
                let mut b = [0u8; 4];
                reader
                    .read_exact(&mut b)
                    .map_err(|_| Refusal::NumpyMalformed("truncated"))?;
                (u64::from(u32::from_le_bytes(b)), 12)
            }
            _ => return Err(Refusal::NumpyMalformed("unknown format version")),
        };
        if len > MAX_HEADER_LEN {
            return Err(Refusal::NumpyMalformed("header longer than 1 MiB"));
        }
        let mut header = Vec::new();
        reader.take(len).read_to_end(&mut header)?;
        if header.len() as u64 != len {
            return Err(Refusal::NumpyMalformed("truncated header"));
        }
        let text = String::from_utf8_lossy(&header);
        let descr = text
            .split_once("'descr':")
            .map(|(_, rest)| rest.split("'fortran_order'").next().unwrap_or(rest))
            .ok_or(Refusal::NumpyMalformed("no descr"))?;
        // The object type code appears as 'O' or '|O' (alone or as a field's type);
        // conservative: any quoted code ending in O counts.
        let holds_objects = descr.contains("'O'") || descr.contains("|O'");
        Ok(Header {
            holds_objects,
            data_offset: prefix + len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str) -> Vec<u8> {
        let header = format!("{{'descr': {descr}, 'fortran_order': False, 'shape': (2,), }}    \n");
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        bytes
    }

    #[test]
    fn object_arrays_are_told_apart_from_plain_ones() {
        let plain = npy("'<f4'");
        let h = Header::read(&mut &plain[..]).unwrap();
        assert!(!h.holds_objects);
        assert_eq!(h.data_offset, plain.len() as u64);
        assert!(Header::read(&mut &npy("'|O'")[..]).unwrap().holds_objects);
        assert!(
            Header::read(&mut &npy("[('a', '<f4'), ('b', 'O')]")[..])
                .unwrap()
                .holds_objects
        );
        assert!(Header::read(&mut &b"\x93NUMPY\x09\x00"[..]).is_err());
        assert!(Header::read(&mut &b"\x93NUMPY\x01\x00\xff\x00{"[..]).is_err());
    }
}
