//! Cross-crate test support: a seeded lossy UDP relay ([`relay`]), helpers that build, run and
//! check the real `sluice-send` / `sluice-recv` binaries ([`binaries`], [`harness`]), and
//! seeded test trees with a byte-exact comparison ([`tree`]).
//!
//! The end-to-end tests in `tests/` and the `sluice-demo` binary are built on these.

// A test-support library: a broken expectation is a test failure, and panicking with a message
// that says which one is how a helper reports it.
#![allow(clippy::expect_used, clippy::unwrap_used)]

pub mod binaries;
pub mod harness;
pub mod qemu;
pub mod relay;
pub mod sweep;
pub mod tree;

/// Parses a size with a unit: `300MB`, `1.5GB`, `64MiB` (decimal and binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with a unit, like 300MB"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} (KB, MB, GB, KiB, MiB, GiB)"
            ))
        }
    };
    Ok((num * mult) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("300MB"), Ok(300_000_000));
        assert_eq!(parse_size("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert!(parse_size("12XB").is_err());
    }
}
