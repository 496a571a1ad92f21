//! Go `time.ParseDuration`, the format of `metav1.Duration` fields such as `ttl: 1h30m`.

use std::time::Duration;

/// Parses a Go duration string (`"300ms"`, `"1.5h"`, `"2h45m"`, `"0"`). Negative durations are
/// refused: a TTL below zero has no meaning. Returns the reason on error.
pub fn parse_go_duration(input: &str) -> Result<Duration, &'static str> {
    let mut rest = input;
    if let Some(stripped) = rest.strip_prefix('+') {
        rest = stripped;
    } else if rest.starts_with('-') {
        if rest == "-0" {
            return Ok(Duration::ZERO);
        }
        return Err("negative durations are not allowed");
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err("invalid duration");
    }
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (int_part, after_int) = rest.split_at(int_len);
        let (frac_part, after_number) = match after_int.strip_prefix('.') {
            Some(after_dot) => {
                let frac_len = after_dot
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(after_dot.len());
                after_dot.split_at(frac_len)
            }
            None => ("", after_int),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err("invalid duration");
        }
        let unit_len = after_number
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after_number.len());
        let (unit, after_unit) = after_number.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            "" => return Err("missing unit in duration"),
            _ => return Err("unknown unit in duration"),
        };
        let int_value: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| "invalid duration")?
        };
        let mut nanos = int_value
            .checked_mul(unit_nanos)
            .ok_or("duration out of range")?;
        // Go keeps fractional digits to the nanosecond and drops the rest.
        let mut scale = unit_nanos;
        for digit in frac_part.bytes() {
            scale /= 10;
            if scale == 0 {
                break;
            }
            nanos += u128::from(digit - b'0') * scale;
        }
        total_nanos = total_nanos
            .checked_add(nanos)
            .ok_or("duration out of range")?;
        // Go's limit: an int64 of nanoseconds.
        if total_nanos > i64::MAX as u128 {
            return Err("duration out of range");
        }
        rest = after_unit;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| "duration out of range")?;
    // The remainder of a division by 10^9 always fits in u32.
    let subsec = (total_nanos % 1_000_000_000) as u32;
    Ok(Duration::new(secs, subsec))
}
