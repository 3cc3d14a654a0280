//! Puts memory.x where the linker finds it, and provisions the link key at build time:
//! `SLUICE_LINK_KEY_HEX` (64 hex digits, the content of link.key) makes the relay check frame
//! MACs and send status frames; without it the relay checks everything but the MAC.

use std::env;
use std::fs;
use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::copy("memory.x", out.join("memory.x")).expect("copying memory.x");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rerun-if-env-changed=SLUICE_LINK_KEY_HEX");

    let key = match env::var("SLUICE_LINK_KEY_HEX") {
        Ok(hex) => {
            let hex = hex.trim();
            assert!(
                hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()),
                "SLUICE_LINK_KEY_HEX must be 64 hex digits (the content of link.key)"
            );
            let bytes: Vec<String> = (0..32)
                .map(|i| format!("0x{}", &hex[2 * i..2 * i + 2]))
                .collect();
            format!("Some([{}])", bytes.join(", "))
        }
        Err(_) => "None".to_string(),
    };
    fs::write(
        out.join("link_key.rs"),
        format!("/// Provisioned at build time from SLUICE_LINK_KEY_HEX.\npub const LINK_KEY: Option<[u8; 32]> = {key};\n"),
    )
    .expect("writing link_key.rs");
}
