//! Zips made by Python's own `zipfile`, the way PyTorch checkpoints and NumPy `.npz` files
//! are laid out: stored and deflated, written to a file and to a pipe (data descriptors
//! after each member), with ZIP64 local headers — all pass the layout checks. And the
//! polyglot of issue 25 as Python makes it (a zip appended to a pickle, which `zipfile` then
//! reads as a zip and `pickle` as a pickle) is refused.

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use sluice_inspect::policy::Policy;

/// What the gate says of the file at `path`.
fn gate(path: &Path) -> Result<Vec<&'static str>, String> {
    let policy = Policy::parse("quarantine = \"q\"\n").unwrap();
    let bytes = std::fs::read(path).unwrap();
    policy
        .inspect_all(
            &mut std::io::Cursor::new(&bytes),
            &path.file_name().unwrap().to_string_lossy(),
            bytes.len() as u64,
        )
        .map_err(|e| e.to_string())
}

/// A fresh directory under the system's temporary directory, removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("sluice-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `script` with python3 in `dir` (as the current directory).
fn python(dir: &Path, script: &str) {
    let out = Command::new("python3")
        .args(["-c", script])
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("python3 is needed (apt-get install python3): {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What every script starts with: a plain state dict, an evil object, a `.npy` writer.
const PRELUDE: &str = r#"
import collections, io, os, pickle, struct, zipfile
class Evil:
    def __reduce__(self):
        return (os.system, ('id',))
STATE = collections.OrderedDict(step=7, lr=0.1)
def npy(n):
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d,), }" % n
    header += ' ' * (63 - (10 + len(header)) % 64) + '\n'
    return b'\x93NUMPY\x01\x00' + struct.pack('<H', len(header)) + header.encode() + bytes(4 * n)
def checkpoint(z, obj):
    z.writestr('archive/data.pkl', pickle.dumps(obj, protocol=2))
    z.writestr('archive/byteorder', 'little')
    z.writestr('archive/data/0', bytes(range(256)) * 64)
    z.writestr('archive/version', '3\n')
class Pipe(io.RawIOBase):
    """An unseekable output: zipfile writes a data descriptor after each member."""
    def __init__(self, path):
        self.f = open(path, 'wb')
    def writable(self):
        return True
    def write(self, b):
        return self.f.write(b)
    def close(self):
        self.f.close()
        super().close()
"#;

#[test]
#[ignore = "needs python3 (./test.sh installs it and runs this)"]
fn zips_as_python_writes_them_pass() {
    let dir = TempDir::new("python-zips");
    python(
        dir.path(),
        &format!(
            "{PRELUDE}
for method, name in [(zipfile.ZIP_STORED, 'stored.pt'), (zipfile.ZIP_DEFLATED, 'deflated.pt')]:
    with zipfile.ZipFile(name, 'w', method) as z:
        checkpoint(z, STATE)
pipe = Pipe('piped.pt')
with zipfile.ZipFile(pipe, 'w', zipfile.ZIP_DEFLATED) as z:
    checkpoint(z, STATE)
pipe.close()
with zipfile.ZipFile('zip64.pt', 'w', zipfile.ZIP_STORED) as z:
    for name, data in [('archive/data.pkl', pickle.dumps(STATE, protocol=2)), ('archive/data/0', bytes(1000))]:
        with z.open(name, 'w', force_zip64=True) as f:
            f.write(data)
with zipfile.ZipFile('arrays.npz', 'w', zipfile.ZIP_STORED) as z:
    z.writestr('a.npy', npy(1000))
    z.writestr('b.npy', npy(3))
with zipfile.ZipFile('compressed.npz', 'w', zipfile.ZIP_DEFLATED) as z:
    z.writestr('a.npy', npy(100000))
assert open('piped.pt', 'rb').read().count(b'PK\\x07\\x08') == 4
"
        ),
    );
    for name in [
        "stored.pt",
        "deflated.pt",
        "piped.pt",
        "zip64.pt",
        "arrays.npz",
        "compressed.npz",
    ] {
        assert_eq!(gate(&dir.path().join(name)), Ok(vec!["zip"]), "{name}");
    }
}

#[test]
#[ignore = "needs python3 (./test.sh installs it and runs this)"]
fn a_zip_python_appends_to_a_pickle_is_refused() {
    let dir = TempDir::new("python-polyglot");
    // zipfile in append mode on a file that is not a zip writes the archive after it, with
    // offsets from the file's start; concatenating a zip gives offsets from its own start.
    // Python reads both as zips, and the same bytes as a harmless pickle.
    python(
        dir.path(),
        &format!(
            "{PRELUDE}
harmless = pickle.dumps({{'a': 1}}, protocol=2)
with open('appended.pt', 'wb') as f:
    f.write(harmless)
with zipfile.ZipFile('appended.pt', 'a') as z:
    checkpoint(z, {{'w': Evil()}})
with zipfile.ZipFile('evil.pt', 'w') as z:
    checkpoint(z, {{'w': Evil()}})
with open('glued.pt', 'wb') as f:
    f.write(harmless + open('evil.pt', 'rb').read())
for name in ['appended.pt', 'glued.pt']:
    assert pickle.loads(open(name, 'rb').read()) == {{'a': 1}}
    assert 'archive/data.pkl' in zipfile.ZipFile(name).namelist()
"
        ),
    );
    let prefix = 17; // pickle.dumps({'a': 1}, protocol=2)
    for name in ["appended.pt", "glued.pt"] {
        assert_eq!(
            gate(&dir.path().join(name)),
            Err(format!(
                "archive refused: {name}: a zip that does not start at byte 0 ({prefix} bytes before it: a prefixed or polyglot file)"
            )),
        );
    }
    assert!(gate(&dir.path().join("evil.pt"))
        .unwrap_err()
        .contains("evil.pt!archive/data.pkl: pickle imports posix.system"));
}
