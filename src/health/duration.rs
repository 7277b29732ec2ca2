//! Go's duration syntax (`time.ParseDuration`), which Consul's definitions use: a sequence
//! of decimal numbers, each with an optional fraction and a unit, such as "300ms", "1.5h",
//! "1m30s". Units: ns, us (or µs/μs), ms, s, m, h. A bare "0" is zero. Negative durations
//! mean nothing for a check, so a sign is refused.

use std::time::Duration;

/// Parses `s` as a Go duration; the error says what is wrong in words.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let input = s;
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if s.starts_with('-') || s.starts_with('+') {
        return Err(format!("{input:?}: a duration has no sign"));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total_ns: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{input:?}: missing unit (ns, us, ms, s, m or h)"))?;
        let (number, after) = rest.split_at(digits_end);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(format!("{input:?}: expected a number before {after:?}"));
        }
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        let unit_ns: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            other => {
                return Err(format!(
                    "{input:?}: unknown unit {other:?} (use ns, us, ms, s, m or h)"
                ))
            }
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        // Each part is at most 20 digits so the arithmetic below cannot overflow u128.
        if whole.len() > 20 || fraction.len() > 20 {
            return Err(format!("{input:?}: number too long"));
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole
                .parse()
                .map_err(|_| format!("{input:?}: bad number"))?
        };
        let mut part_ns = whole * unit_ns;
        if !fraction.is_empty() {
            let numerator: u128 = fraction
                .parse()
                .map_err(|_| format!("{input:?}: bad number"))?;
            let denominator = 10u128.pow(fraction.len() as u32);
            part_ns += numerator * unit_ns / denominator;
        }
        total_ns = total_ns
            .checked_add(part_ns)
            .ok_or_else(|| format!("{input:?}: too long"))?;
        rest = next;
    }
    // Go's limit (int64 nanoseconds, about 292 years).
    if total_ns > i64::MAX as u128 {
        return Err(format!("{input:?}: too long"));
    }
    Ok(Duration::from_nanos(total_ns as u64))
}

#[cfg(test)]
mod tests {
    use super::parse_go_duration as parse;
    use std::time::Duration;

    #[test]
    fn go_durations_parse_as_go_parses_them() {
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse(".5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("1h2m3s4ms5us6ns"), Ok(Duration::new(3723, 4_005_006)));
        assert_eq!(parse("7µs"), Ok(Duration::from_micros(7)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn malformed_durations_are_refused_with_a_reason() {
        for bad in [
            "", "10", "s", "10x", "-1s", "+1s", "1..5s", "1s2", "1 s", ".s",
        ] {
            let err = parse(bad).expect_err(bad);
            assert!(!err.is_empty());
        }
        assert!(parse("10").unwrap_err().contains("missing unit"));
        assert!(parse("3d").unwrap_err().contains("unknown unit"));
        assert!(parse("3000000h").unwrap_err().contains("too long"));
    }
}
