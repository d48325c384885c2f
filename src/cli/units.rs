//! Times on the command line and in what r2 prints: decimal seconds read
//! and written with integers (no floating point, whose parsing and
//! printing cost the static binary some 15 KiB).

use super::{Error, Result};
use std::time::Duration;

/// The most seconds an option takes (about 115 days).
const MAX_SECONDS: u64 = 9_999_999;

/// Decimal seconds (`2`, `0.5`, `.25`, `1.`) as milliseconds; digits past
/// the third decimal are ignored. None if it is not such a number.
pub fn parse_ms(v: &str) -> Option<u64> {
    let (whole, frac) = v.split_once('.').unwrap_or((v, ""));
    if whole.is_empty() && frac.is_empty() {
        return None;
    }
    if !whole.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: u64 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
    if whole > MAX_SECONDS {
        return None;
    }
    let ms = frac.bytes().chain(std::iter::repeat(b'0')).take(3).fold(0, |n, b| n * 10 + u64::from(b - b'0'));
    Some(whole * 1000 + ms)
}

/// Positive seconds (fractional allowed) as milliseconds, at least 1.
pub fn seconds(v: &str, what: &str) -> Result<u64> {
    let exact_zero = |v: &str| v.bytes().all(|b| b == b'0' || b == b'.');
    match parse_ms(v) {
        Some(ms) if !exact_zero(v) => Ok(ms.max(1)),
        _ => Err(Error::Usage(format!("{what}: {v:?} is not a positive number of seconds"))),
    }
}

/// Milliseconds as seconds with three decimals: `1.250`.
pub fn ms3(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// Microseconds as milliseconds with three decimals: `0.412`.
pub fn us_as_ms3(us: u64) -> String {
    format!("{}.{:03}", us / 1000, us % 1000)
}

/// A duration as seconds with one decimal: `3.6`.
pub fn secs1(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    format!("{}.{}", ms / 1000, ms % 1000 / 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_decimal_seconds() {
        for (v, ms) in
            [("2", 2000), ("0.5", 500), (".25", 250), ("1.", 1000), ("1.2345", 1234), ("0", 0), ("0.0001", 0)]
        {
            assert_eq!(parse_ms(v), Some(ms), "{v}");
        }
        for v in ["", ".", "-1", "1e3", "inf", "NaN", "1.2.3", " 1", "1 ", "+1", "99999999999999999999"] {
            assert_eq!(parse_ms(v), None, "{v:?}");
        }
        assert_eq!(seconds("0.0001", "-W"), Ok(1));
        assert_eq!(seconds("1.5", "-W"), Ok(1500));
        assert!(matches!(seconds("0", "-W"), Err(Error::Usage(_))));
        assert!(matches!(seconds("0.000", "-W"), Err(Error::Usage(_))));
        assert!(matches!(seconds("x", "-W"), Err(Error::Usage(m)) if m.contains("-W")));
    }

    #[test]
    fn writes_decimal_seconds() {
        assert_eq!(ms3(1250), "1.250");
        assert_eq!(ms3(5), "0.005");
        assert_eq!(us_as_ms3(412), "0.412");
        assert_eq!(us_as_ms3(12_345), "12.345");
        assert_eq!(secs1(Duration::from_millis(3650)), "3.6");
        assert_eq!(secs1(Duration::from_millis(60_000)), "60.0");
    }
}
