//! Pickles made by Python's own `pickle` module, every protocol: one whose `__reduce__` calls
//! `os.system` is refused, plain containers pass.

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use sluice_inspect::pickle::{scan, AllowList};
use sluice_inspect::policy::Policy;
use sluice_inspect::Refusal;

/// What the gate says of `bytes` named `weights.bin` (a name that says nothing).
fn gate(bytes: &[u8]) -> Result<Option<&'static str>, Refusal> {
    let policy = Policy::parse("quarantine = \"q\"\n").unwrap();
    policy.inspect(
        &mut std::io::Cursor::new(bytes.to_vec()),
        "weights.bin",
        bytes.len() as u64,
    )
}

/// Runs `script` with python3 and returns its stdout: one hex-encoded pickle per line.
fn python_pickles(script: &str) -> Vec<Vec<u8>> {
    let out = Command::new("python3")
        .args(["-c", script])
        .output()
        .unwrap_or_else(|e| panic!("python3 is needed (apt-get install python3): {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            (0..l.len() / 2)
                .map(|i| u8::from_str_radix(&l[2 * i..2 * i + 2], 16).unwrap())
                .collect()
        })
        .collect()
}

#[test]
#[ignore = "needs python3 (./test.sh installs it and runs this)"]
fn a_reduce_to_os_system_is_refused_in_every_protocol() {
    let pickles = python_pickles(
        "import os, pickle\n\
         class Evil:\n    def __reduce__(self):\n        return (os.system, ('id',))\n\
         for p in range(pickle.HIGHEST_PROTOCOL + 1):\n    print(pickle.dumps({'w': Evil()}, protocol=p).hex())\n",
    );
    assert!(pickles.len() >= 6, "protocols 0 to 5");
    for (protocol, bytes) in pickles.iter().enumerate() {
        match scan(&bytes[..], &AllowList::default()) {
            Err(Refusal::PickleImport(name)) => {
                assert!(name.ends_with(".system"), "protocol {protocol}: {name}")
            }
            other => panic!("protocol {protocol}: {other:?}"),
        }
        // And the gate finds it by its content, also without a PROTO opcode (protocols 0, 1).
        assert!(
            matches!(gate(bytes), Err(Refusal::PickleImport(_))),
            "protocol {protocol}: {:?}",
            gate(bytes)
        );
    }
}

#[test]
#[ignore = "needs python3 (./test.sh installs it and runs this)"]
fn plain_containers_pass_in_every_protocol() {
    let pickles = python_pickles(
        "import collections, pickle\n\
         state = collections.OrderedDict([('layer.weight', [0.5] * 3000), ('step', 7),\n\
         ('name', 'model'), ('shape', (3, 1000)), ('tags', {'a', 'b'}), ('raw', b'\\x00' * 300)])\n\
         for p in range(pickle.HIGHEST_PROTOCOL + 1):\n    print(pickle.dumps(state, protocol=p).hex())\n",
    );
    for (protocol, bytes) in pickles.iter().enumerate() {
        let scanned = scan(&bytes[..], &AllowList::default())
            .unwrap_or_else(|e| panic!("protocol {protocol}: {e}"));
        assert_eq!(scanned.pickles, 1);
        assert_eq!(gate(bytes).unwrap(), Some("pickle"), "protocol {protocol}");
        assert!(
            scanned
                .imports
                .iter()
                .any(|i| i == "collections.OrderedDict"),
            "protocol {protocol}: {:?}",
            scanned.imports
        );
    }
}
