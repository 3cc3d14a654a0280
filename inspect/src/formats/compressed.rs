//! Compressed files: gzip, zlib, bzip2, xz, lzma and zstd. Loaders decompress by magic, not
//! by name — `joblib.load` (gzip, zlib, bz2, xz, lzma), `tarfile.open` (`r:*`), pandas,
//! `datasets` — so the gate inspects what a compressed file holds, as a member of it, with
//! every rule (a `.tar.gz` is a tar, a gzip'd joblib dump a pickle).
//!
//! - Every stream is read, as those readers do: gzip members, bzip2, xz and zstd streams,
//!   and zlib and lzma streams back to back. Data that does not decompress is refused (a
//!   streaming loader would have unpickled what came before the damage).
//! - Bounded: the content may not expand beyond what the file's archives may
//!   (`bounds::Budget`, by the file's real size); decoders' memory is bounded (an xz or lzma
//!   dictionary over [`MAX_DICTIONARY`] is refused before it is allocated; zstd windows are
//!   capped by the decoder at 100 MiB). A compressed file within another is a level of
//!   nesting.
//! - LZ4 frames are recognised and refused: nothing here decompresses them.
//!
//! The content is read twice — once to learn its size, once to inspect it — so the file
//! must seek: a compressed archive member is held in memory first (at most 64 MiB).

use std::io::{self, BufRead, BufReader, Read, SeekFrom};

use crate::bounds::{refused, MAX_NESTED_ZIP};
use crate::inspector::{Inspector, Nested, ReadSeek};
use crate::refusal::Refusal;
use crate::sniff::{Compression, Kind, Kinds};

use super::xz;

/// Largest LZMA dictionary (xz, lzma) a stream may ask for: what `xz -9` uses.
pub const MAX_DICTIONARY: u32 = 64 << 20;

/// What a file compressed with `format` holds, and how to read it.
trait Decompress {
    /// The name of what `name`, compressed this way, holds: `a.tar.gz` → `a.tar`, `a.tgz` →
    /// `a.tar`; a name without the format's suffix is kept (a gzip'd `.joblib`).
    fn inner_name(self, name: &str) -> String;
    fn decoder<'r>(self, input: &'r mut dyn Read) -> io::Result<Box<dyn Read + 'r>>;
}

impl Decompress for Compression {
    fn inner_name(self, name: &str) -> String {
        let suffixes: &[(&str, &str)] = match self {
            Compression::Gzip => &[(".tgz", ".tar"), (".gz", "")],
            Compression::Zlib => &[(".zlib", ""), (".z", "")],
            Compression::Bzip2 => &[(".tbz2", ".tar"), (".tbz", ".tar"), (".bz2", "")],
            Compression::Xz => &[(".txz", ".tar"), (".xz", "")],
            Compression::Lzma => &[(".lzma", "")],
            Compression::JoblibZfile => &[],
            Compression::Zstd => &[(".tzst", ".tar"), (".zst", "")],
            Compression::Lz4 => &[(".lz4", "")],
        };
        for (suffix, replacement) in suffixes {
            if let Some(stem) = name.strip_suffix(suffix).filter(|s| !s.is_empty()) {
                return format!("{stem}{replacement}");
            }
        }
        name.to_string()
    }

    fn decoder<'r>(self, input: &'r mut dyn Read) -> io::Result<Box<dyn Read + 'r>> {
        let buffered = BufReader::with_capacity(64 << 10, input);
        Ok(match self {
            Compression::Gzip
            | Compression::Zlib
            | Compression::JoblibZfile
            | Compression::Lzma
            | Compression::Zstd => Box::new(Streams::new(self, buffered)),
            Compression::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(buffered)),
            Compression::Xz => Box::new(lzma_rust2::XzReader::new(buffered, true)),
            Compression::Lz4 => {
                return Err(io::Error::other("lz4 is not decompressed by the gate"));
            }
        })
    }
}

/// The streams of a file one after another, as Python's readers take them: gzip members
/// (zero bytes between and after them skipped, as `gzip` does), zlib and zstd streams back to
/// back (zstd's skippable frames skipped), one lzma stream (the decoder here cannot tell
/// where a stream of known size ends, so bytes after one are refused), joblib's `ZF` header
/// then one zlib stream. Each decoder owns the input while its stream runs and hands it
/// back at the stream's end, where the next starts.
struct Streams<R: BufRead> {
    format: Compression,
    state: Stream<R>,
    streams: u64,
}

enum Stream<R: BufRead> {
    Between(R),
    Gzip(flate2::bufread::GzDecoder<R>),
    Zlib(flate2::bufread::ZlibDecoder<R>),
    Lzma(Box<lzma_rust2::LzmaReader<R>>),
    Zstd(Box<ruzstd::decoding::StreamingDecoder<R, ruzstd::decoding::FrameDecoder>>),
    Broken,
}

impl<R: BufRead> Streams<R> {
    fn new(format: Compression, input: R) -> Self {
        Streams {
            format,
            state: Stream::Between(input),
            streams: 0,
        }
    }
}

impl<R: BufRead> Read for Streams<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let n = match &mut self.state {
                Stream::Gzip(d) => d.read(buf)?,
                Stream::Zlib(d) => d.read(buf)?,
                Stream::Lzma(d) => d.read(buf)?,
                Stream::Zstd(d) => d.read(buf)?,
                Stream::Between(input) => {
                    if !next_stream_begins(self.format, input, self.streams)? {
                        return Ok(0);
                    }
                    let Stream::Between(input) = std::mem::replace(&mut self.state, Stream::Broken)
                    else {
                        return Err(io::Error::other("decoder state lost"));
                    };
                    self.state = start(self.format, input)?;
                    self.streams += 1;
                    continue;
                }
                Stream::Broken => return Err(io::Error::other("a stream failed before")),
            };
            if n > 0 {
                return Ok(n);
            }
            // This stream ended: its decoder hands the input back for the next one.
            self.state = match std::mem::replace(&mut self.state, Stream::Broken) {
                Stream::Gzip(d) => Stream::Between(d.into_inner()),
                Stream::Zlib(d) => Stream::Between(d.into_inner()),
                Stream::Lzma(d) => Stream::Between(d.into_inner()),
                Stream::Zstd(d) => Stream::Between(d.into_inner()),
                other => other,
            };
        }
    }
}

/// Whether another stream starts at `input`, after what readers skip there; an error for
/// bytes they would not take.
fn next_stream_begins<R: BufRead>(
    format: Compression,
    input: &mut R,
    streams: u64,
) -> io::Result<bool> {
    loop {
        let buf = input.fill_buf()?;
        if buf.is_empty() {
            return Ok(false);
        }
        match format {
            // Zero padding after a gzip member.
            Compression::Gzip if streams > 0 && buf[0] == 0 => {
                let zeros = buf.iter().take_while(|b| **b == 0).count();
                input.consume(zeros);
            }
            // A skippable frame: magic 0x184D2A5? and a length, then that many bytes.
            Compression::Zstd if is_skippable(buf) => {
                let mut header = [0u8; 8];
                input.read_exact(&mut header)?;
                let len = u64::from(u32::from_le_bytes([
                    header[4], header[5], header[6], header[7],
                ]));
                if io::copy(&mut input.take(len), &mut io::sink())? != len {
                    return Err(io::Error::other("a truncated zstd skippable frame"));
                }
            }
            Compression::Lzma | Compression::JoblibZfile if streams > 0 => {
                return Err(io::Error::other("bytes after the stream"));
            }
            _ => return Ok(true),
        }
    }
}

/// Whether `buf` starts with a zstd skippable frame's magic (`0x184D2A50` to `…5F`).
fn is_skippable(buf: &[u8]) -> bool {
    matches!(buf, [0x50..=0x5f, 0x2a, 0x4d, 0x18, ..])
}

/// A decoder of the one stream starting at `input`.
fn start<R: BufRead>(format: Compression, mut input: R) -> io::Result<Stream<R>> {
    Ok(match format {
        Compression::Gzip => Stream::Gzip(flate2::bufread::GzDecoder::new(input)),
        Compression::Zlib => Stream::Zlib(flate2::bufread::ZlibDecoder::new(input)),
        Compression::JoblibZfile => {
            // `ZF`, the length in hex padded to 19 characters, then zlib.
            let mut header = [0u8; JOBLIB_ZFILE_HEADER];
            input.read_exact(&mut header)?;
            Stream::Zlib(flate2::bufread::ZlibDecoder::new(input))
        }
        // The dictionary size is in the header: refused before it is allocated.
        Compression::Lzma => Stream::Lzma(Box::new(
            lzma_rust2::LzmaReader::new_mem_limit(input, MAX_DICTIONARY / 1024 + 4096, None)
                .map_err(|e| io::Error::other(format!("lzma header: {e}")))?,
        )),
        Compression::Zstd => Stream::Zstd(Box::new(
            ruzstd::decoding::StreamingDecoder::new(input)
                .map_err(|e| io::Error::other(format!("zstd frame: {e}")))?,
        )),
        _ => return Err(io::Error::other("not a stream-at-a-time format")),
    })
}

/// joblib's old compressed format: `ZF`, then `hex(len)` padded to `len(hex(2**64))`.
const JOBLIB_ZFILE_HEADER: usize = 2 + 19;

/// Compressed files: their content inspected as a member.
#[derive(Debug)]
pub struct CompressedInspector;

impl Inspector for CompressedInspector {
    fn name(&self) -> &'static str {
        "compressed"
    }

    fn claims(&self, kinds: Kinds, _head: &[u8], _path: &str) -> bool {
        kinds.has(Kind::Compressed)
    }

    fn seeks(&self) -> bool {
        true
    }

    fn inspect(
        &self,
        file: &mut dyn Read,
        path: &str,
        size: u64,
        nested: &mut Nested<'_>,
    ) -> Result<(), Refusal> {
        // Only a seekable file reaches here (`seeks`), but a stream is held if it must be.
        if size > MAX_NESTED_ZIP {
            return Err(refused(
                path,
                "compressed and larger than 64 MiB inside an archive",
            ));
        }
        let mut held = Vec::new();
        file.take(size).read_to_end(&mut held)?;
        self.inspect_file(&mut io::Cursor::new(held), path, size, nested)
    }

    fn inspect_file(
        &self,
        file: &mut dyn ReadSeek,
        path: &str,
        _size: u64,
        nested: &mut Nested<'_>,
    ) -> Result<(), Refusal> {
        nested.check_depth(path)?;
        let mut head = [0u8; 8];
        let got = read_up_to(&mut *file, &mut head)?;
        let Some(format) = Compression::of(&head[..got]) else {
            return Ok(());
        };
        let undecodable = |e: io::Error| {
            refused(
                path,
                &format!("{} data that does not decompress ({e})", format.name()),
            )
        };
        if format == Compression::Lz4 {
            return Err(refused(
                path,
                "compressed with lz4, which the gate does not decompress",
            ));
        }
        if format == Compression::Lzma {
            // The header's dictionary size, refused here rather than taken for "not lzma".
            let dictionary = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
            if dictionary > MAX_DICTIONARY {
                return Err(refused(
                    path,
                    &format!("lzma: a {dictionary}-byte dictionary (at most {MAX_DICTIONARY})"),
                ));
            }
        }
        if format == Compression::Xz {
            file.seek(SeekFrom::Start(0))?;
            xz::check_dictionaries(&mut *file, MAX_DICTIONARY)
                .map_err(|why| refused(path, &format!("xz: {why}")))?;
        }
        // Once to learn the size, within what the file's members may still expand to...
        let limit = nested.expansion_left();
        file.seek(SeekFrom::Start(0))?;
        let mut size = 0u64;
        let mut decoder = format.decoder(&mut *file).map_err(undecodable)?;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match decoder.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => size += n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(undecodable(e)),
            }
            nested.clock().check(path)?;
            if size > limit {
                return Err(refused(
                    path,
                    &format!("{} content expands beyond {limit} bytes", format.name()),
                ));
            }
        }
        drop(decoder);
        // ...then as a member, by every rule.
        file.seek(SeekFrom::Start(0))?;
        let mut decoder = format.decoder(&mut *file).map_err(undecodable)?;
        let name = format.inner_name(path.rsplit('!').next().unwrap_or(path));
        let shown = format!("{path}!{name}");
        nested.member(&mut decoder, &shown, &name, size)
    }
}

/// Reads into `buf` until it is full or the input ends; how many bytes.
fn read_up_to(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;

    fn gate(bytes: &[u8], name: &str) -> Result<Vec<&'static str>, String> {
        let policy = Policy::parse("quarantine = \"q\"\n").map_err(|e| e.to_string())?;
        policy
            .inspect_all(
                &mut io::Cursor::new(bytes.to_vec()),
                name,
                bytes.len() as u64,
            )
            .map_err(|e| e.to_string())
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
    }

    const EVIL: &[u8] = b"\x80\x02cos\ngetcwd\n)R.";
    const BENIGN: &[u8] = b"\x80\x02}q\x00.";

    #[test]
    fn zstd_frames_are_read_one_after_another() {
        let err = gate(&zstd(EVIL), "w.joblib").unwrap_err();
        assert!(
            err.contains("w.joblib!w.joblib: pickle imports os.getcwd"),
            "{err}"
        );
        // A benign pickle in the first frame, the malicious one in the second.
        let mut two = zstd(BENIGN);
        two.extend_from_slice(&zstd(EVIL));
        let err = gate(&two, "w.zst").unwrap_err();
        assert!(err.contains("w.zst!w: pickle imports os.getcwd"), "{err}");
        assert_eq!(
            gate(&zstd(b"a,b\n1,2\n"), "t.csv.zst"),
            Ok(vec!["compressed"])
        );
    }

    #[test]
    fn what_is_not_decompressed_is_refused_or_is_not_compression() {
        let err = gate(b"\x04\x22\x4d\x18rest of a frame", "w.lz4").unwrap_err();
        assert!(
            err.contains("lz4, which the gate does not decompress"),
            "{err}"
        );
        // A zstd magic followed by junk: refused (a strong magic is no coincidence).
        assert!(gate(b"\x28\xb5\x2f\xfd\xff\xff\xff\xff", "x").is_err());
        // joblib reads a file starting `x^` as zlib: one that does not decompress is refused
        // (text rarely starts so; a safetensors header of such a length is safetensors).
        let err = gate(b"x^ marks the spot\n", "notes.txt").unwrap_err();
        assert!(err.contains("zlib data that does not decompress"), "{err}");
    }

    #[test]
    fn names_lose_their_compression_suffix() {
        assert_eq!(Compression::Gzip.inner_name("d/m.tar.gz"), "d/m.tar");
        assert_eq!(Compression::Gzip.inner_name("m.tgz"), "m.tar");
        assert_eq!(
            Compression::Xz.inner_name("m.safetensors.xz"),
            "m.safetensors"
        );
        assert_eq!(Compression::Zlib.inner_name("w.joblib"), "w.joblib");
        assert_eq!(Compression::Gzip.inner_name(".gz"), ".gz");
    }
}
