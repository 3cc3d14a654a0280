//! NumPy `.npy` headers: an array of Python objects (`dtype=object`) is stored as a pickle
//! after the header, so it gets the pickle rule; every other dtype is plain data.
//!
//! ```text
//!  \x93NUMPY | major | minor | header length (u16 LE in v1, u32 LE in v2 and v3) | header
//!  header = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }" padded with spaces
//! ```

use std::io::Read;

use super::pickle::PickleInspector;
use super::pyliteral::{self, Literal};
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
        let header = Header::read(&mut *file)?;
        nested.note(
            path,
            "numpy",
            serde_json::json!({"object_array": header.holds_objects}),
        );
        if header.holds_objects {
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
        // NumPy decodes versions 1 and 2 as Latin-1, 3 as UTF-8, then reads a Python literal.
        let text: String = if fixed[6] == 3 {
            String::from_utf8(header).map_err(|_| Refusal::NumpyMalformed("header not UTF-8"))?
        } else {
            header.iter().map(|b| char::from(*b)).collect()
        };
        let dict = pyliteral::parse(&text)
            .map_err(|_| Refusal::NumpyMalformed("header is not a Python literal"))?;
        let mut keys = dict
            .keys()
            .ok_or(Refusal::NumpyMalformed("header is not a dict"))?;
        keys.sort_unstable();
        if keys != ["descr", "fortran_order", "shape"] {
            return Err(Refusal::NumpyMalformed(
                "header keys are not descr, fortran_order and shape",
            ));
        }
        let holds_objects = dict.get("descr").is_none_or(may_hold_objects);
        Ok(Header {
            holds_objects,
            data_offset: prefix + len,
        })
    }
}

/// Whether a dtype description (`descr`, as `numpy.lib.format.descr_to_dtype` reads it) may
/// hold Python objects: allow-list first — a type string is plain only if it is one of
/// NumPy's plain types; anything else (an object code in any spelling, a type string this
/// does not know, a shape we cannot read) counts as objects, whose data must then scan as a
/// pickle.
fn may_hold_objects(descr: &Literal) -> bool {
    match descr {
        Literal::Str(text) => !top_level_parts(text).all(is_plain_type),
        // (base, shape): a subarray of base.
        Literal::Tuple(items) if items.len() == 2 => may_hold_objects(&items[0]),
        // Fields: (name, descr) or (name, descr, shape); a name may be (title, name).
        Literal::List(fields) => fields.iter().any(|field| match field {
            Literal::Tuple(parts) | Literal::List(parts) if (2..=3).contains(&parts.len()) => {
                may_hold_objects(&parts[1])
            }
            _ => true,
        }),
        _ => true,
    }
}

/// The comma-separated parts of a dtype string, commas inside a shape `(2,3)` kept.
fn top_level_parts(text: &str) -> impl Iterator<Item = &str> {
    let mut depth = 0i32;
    let mut start = 0;
    let mut parts = Vec::new();
    for (i, c) in text.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts.into_iter()
}

/// Whether `text` (one type of a comma-separated dtype string, e.g. `<f4`, `(2,3)i8`, `S5`,
/// `datetime64[ns]`) is a NumPy type that holds no Python object.
fn is_plain_type(text: &str) -> bool {
    let mut t = text.trim();
    // A leading shape makes a subarray of the type: `(2,3)f4`, `3i4`.
    if let Some(rest) = t.strip_prefix('(') {
        match rest.split_once(')') {
            Some((shape, rest))
                if shape
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == ',' || c == ' ') =>
            {
                t = rest.trim_start();
            }
            _ => return false,
        }
    }
    t = t.trim_start_matches(|c: char| c.is_ascii_digit());
    let t = t.strip_prefix(['<', '>', '|', '=', '!']).unwrap_or(t);
    // Dates and durations carry a unit: `M8[ns]`, `datetime64[25s]`.
    let t = match t.split_once('[') {
        Some((base, unit)) => {
            let unit_ok = unit.strip_suffix(']').is_some_and(|u| {
                u.trim_start_matches(|c: char| c.is_ascii_digit())
                    .chars()
                    .all(|c| c.is_ascii_alphabetic())
            });
            if !unit_ok || !matches!(base, "M8" | "m8" | "M" | "m" | "datetime64" | "timedelta64") {
                return false;
            }
            return true;
        }
        None => t,
    };
    const CODES: &str = "?bBhHiIlLqQpPefdgFDGSUVaMm";
    const NAMES: &[&str] = &[
        "bool",
        "bool_",
        "bool8",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
        "float96",
        "float128",
        "complex64",
        "complex128",
        "complex192",
        "complex256",
        "half",
        "single",
        "double",
        "longdouble",
        "csingle",
        "cdouble",
        "clongdouble",
        "byte",
        "ubyte",
        "short",
        "ushort",
        "intc",
        "uintc",
        "int",
        "uint",
        "long",
        "ulong",
        "longlong",
        "ulonglong",
        "intp",
        "uintp",
        "float",
        "complex",
        "str",
        "str_",
        "bytes",
        "bytes_",
        "unicode",
        "void",
        "datetime64",
        "timedelta64",
        "int_",
        "float_",
        "complex_",
        "string_",
        "unicode_",
    ];
    if NAMES.contains(&t) {
        return true;
    }
    let mut chars = t.chars();
    match chars.next() {
        Some(code) if CODES.contains(code) => chars.all(|c| c.is_ascii_digit()),
        _ => false,
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
        // Every spelling NumPy reads as objects, and the literal as Python reads it.
        for descr in [
            "'O'",
            "'<O'",
            "'=O'",
            "'O8'",
            "'object'",
            "\"|O\"",
            "'\\x4f'",
            "'|' 'O'",
            "'f4, O'",
            "('O', (2,))",
            "[('a', '<f4'), ('b', [('c', '|O')])]",
            "'weird'",
        ] {
            assert!(
                Header::read(&mut &npy(descr)[..]).unwrap().holds_objects,
                "{descr}"
            );
        }
        for descr in [
            "'<f4'",
            "'|b1'",
            "'<M8[ns]'",
            "'S5'",
            "'(2,3)<i8'",
            "[('x', '<f8', (2,))]",
        ] {
            assert!(
                !Header::read(&mut &npy(descr)[..]).unwrap().holds_objects,
                "{descr}"
            );
        }
        let twice = b"{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'descr': '|O'}";
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(twice.len() as u16).to_le_bytes());
        bytes.extend_from_slice(twice);
        assert!(
            Header::read(&mut &bytes[..]).unwrap().holds_objects,
            "the last descr wins"
        );
        assert!(Header::read(&mut &b"\x93NUMPY\x09\x00"[..]).is_err());
        assert!(Header::read(&mut &b"\x93NUMPY\x01\x00\xff\x00{"[..]).is_err());
    }
}
