//! Human-friendly quantities on the command line: rates (`100MB`), sizes (`1MiB`) and ratios (`10%`).
//!
//! Decimal units are powers of 1000 and binary units powers of 1024, as `dd` and `iperf` users
//! expect; a bare number is bytes.

use std::fmt;

/// A value that does not parse, with the form that would have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not {expected}")]
pub struct UnitError {
    value: String,
    expected: &'static str,
}

const SIZE_FORM: &str = "a byte count with an optional unit (e.g. 1500, 500KB, 1MiB, 1.5GB)";
const RATIO_FORM: &str = "a percentage between 0% and 1000% (e.g. 10%, 12.5%)";

/// Parses `500KB`, `100MB`, `1.5GB`, `64KiB`, `1MiB` or a bare byte count into bytes.
///
/// Used for rates (bytes per second; a trailing `/s` is accepted) and sizes alike.
pub fn parse_bytes(text: &str) -> Result<u64, UnitError> {
    let err = || UnitError {
        value: text.to_string(),
        expected: SIZE_FORM,
    };
    let trimmed = text.trim();
    let trimmed = trimmed.strip_suffix("/s").unwrap_or(trimmed);
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return Err(err()),
    };
    if number.is_empty() || number.matches('.').count() > 1 {
        return Err(err());
    }
    let value: f64 = number.parse().map_err(|_| err())?;
    let bytes = value * multiplier as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(err());
    }
    Ok(bytes.round() as u64)
}

/// Parses a ratio such as `10%` or `12.5%` into per-mille (100 for 10%).
pub fn parse_permille(text: &str) -> Result<u32, UnitError> {
    let err = || UnitError {
        value: text.to_string(),
        expected: RATIO_FORM,
    };
    let number = text.trim().strip_suffix('%').ok_or_else(err)?.trim();
    if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(err());
    }
    let percent: f64 = number.parse().map_err(|_| err())?;
    if !(0.0..=1000.0).contains(&percent) {
        return Err(err());
    }
    Ok((percent * 10.0).round() as u32)
}

/// Formats a byte count for people: `1.50 GB`, `312 B`.
#[derive(Debug, Clone, Copy)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
        let mut value = self.0 as f64;
        let mut unit = 0;
        while value >= 1000.0 && unit + 1 < UNITS.len() {
            value /= 1000.0;
            unit += 1;
        }
        if unit == 0 {
            write!(f, "{} B", self.0)
        } else {
            write!(f, "{value:.2} {}", UNITS[unit])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_units() {
        assert_eq!(parse_bytes("1500"), Ok(1500));
        assert_eq!(parse_bytes("500KB"), Ok(500_000));
        assert_eq!(parse_bytes("100MB"), Ok(100_000_000));
        assert_eq!(parse_bytes("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_bytes("1MiB"), Ok(1 << 20));
        assert_eq!(parse_bytes("64 KiB"), Ok(64 << 10));
        assert_eq!(parse_bytes("10mb/s"), Ok(10_000_000));
    }

    #[test]
    fn bad_byte_values_name_the_form() {
        for bad in ["", "MB", "fast", "1.2.3MB", "-5MB", "10XB", "1e3"] {
            let err = parse_bytes(bad).unwrap_err();
            assert!(err.to_string().contains("500KB"), "{bad}: {err}");
        }
    }

    #[test]
    fn ratios() {
        assert_eq!(parse_permille("10%"), Ok(100));
        assert_eq!(parse_permille("12.5%"), Ok(125));
        assert_eq!(parse_permille("0%"), Ok(0));
        assert!(parse_permille("10").is_err());
        assert!(parse_permille("-1%").is_err());
        assert!(parse_permille("2000%").is_err());
    }

    #[test]
    fn display() {
        assert_eq!(Bytes(312).to_string(), "312 B");
        assert_eq!(Bytes(1_500_000_000).to_string(), "1.50 GB");
    }
}
