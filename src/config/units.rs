//! Durations (`"250ms"`, `"30s"`, `"5m"`) and byte sizes (`"32KiB"`, `"100MiB"`) as written in the
//! routes file.
//!
//! Pure string parsing, no I/O, so every accepted and rejected form is pinned by a table test.
//! Sizes follow nginx's habit of accepting bare numbers (bytes) and IEC/SI suffixes; we read
//! `k`/`K`/`KB` as 1000 and `KiB` as 1024 because the example file uses `KiB` and an operator who
//! writes `KB` after reading a disk label deserves the number on the label.

use std::time::Duration;

/// Parses `"250ms"`, `"30s"`, `"5m"`, `"1h"`, `"1d"`, or `"0"` (disabled where a key allows it).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("`{t}` has no unit: write it as \"{t}s\" or \"{t}ms\""))?;
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!("`{t}` does not start with a number"));
    }
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{num}` is not a number"))?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{t}`: use ms, s, m, h or d"
            ));
        }
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > 10.0 * 365.0 * 86400.0 {
        return Err(format!("`{t}` is too long"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses `"32KiB"`, `"100MiB"`, `"1GiB"`, `"512"` (bytes), `"10MB"` (decimal).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!("`{t}` does not start with a number"));
    }
    let value: u64 = num
        .parse()
        .map_err(|_| format!("`{num}` is not a whole number"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "k" | "K" | "KB" | "kB" => 1000,
        "KiB" => 1024,
        "M" | "MB" => 1000 * 1000,
        "MiB" => 1024 * 1024,
        "G" | "GB" => 1000 * 1000 * 1000,
        "GiB" => 1024 * 1024 * 1024,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{t}`: use B, KiB, MiB or GiB"
            ));
        }
    };
    value
        .checked_mul(scale)
        .ok_or_else(|| format!("`{t}` is too large"))
}

/// Formats a duration the way the config file writes it, for `check` output and `/config`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0".into()
    } else if ms % 1000 != 0 {
        format!("{ms}ms")
    } else if ms % 3_600_000 == 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 {
        format!("{}m", ms / 60_000)
    } else {
        format!("{}s", ms / 1000)
    }
}

/// Formats a size the way the config file writes it.
pub fn format_size(n: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (scale, unit) in UNITS {
        if n >= scale && n % scale == 0 {
            return format!("{}{unit}", n / scale);
        }
    }
    format!("{n}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_the_documented_units() {
        let cases = [
            ("250ms", Duration::from_millis(250)),
            ("30s", Duration::from_secs(30)),
            ("5m", Duration::from_secs(300)),
            ("1h", Duration::from_secs(3600)),
            ("1d", Duration::from_secs(86400)),
            ("1.5s", Duration::from_millis(1500)),
            ("0", Duration::ZERO),
            (" 10s ", Duration::from_secs(10)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn durations_reject_missing_or_unknown_units() {
        for text in ["30", "s", "10 years", "ten seconds", "", "-1s", "1e400s"] {
            assert!(parse_duration(text).is_err(), "{text} should be rejected");
        }
    }

    #[test]
    fn a_bare_number_duration_error_says_how_to_fix_it() {
        let err = parse_duration("30").unwrap_err();
        assert!(err.contains("\"30s\""), "{err}");
    }

    #[test]
    fn sizes_accept_binary_and_decimal_units() {
        let cases = [
            ("32KiB", 32 * 1024),
            ("100MiB", 100 * 1024 * 1024),
            ("1GiB", 1 << 30),
            ("512", 512),
            ("512B", 512),
            ("10MB", 10_000_000),
            ("8k", 8000),
        ];
        for (text, want) in cases {
            assert_eq!(parse_size(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn sizes_reject_fractions_units_and_overflow() {
        for text in ["1.5MiB", "10 parsecs", "MiB", "", "99999999999999999999GiB"] {
            assert!(parse_size(text).is_err(), "{text} should be rejected");
        }
    }

    #[test]
    fn formatting_round_trips() {
        for text in ["250ms", "30s", "5m", "1h"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
        for text in ["32KiB", "100MiB", "1GiB", "1000B"] {
            assert_eq!(format_size(parse_size(text).unwrap()), text);
        }
    }
}
