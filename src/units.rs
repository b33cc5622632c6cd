//! Units people read and write: `1.5GiB`, `3m4s`, and durations like `7d` in specs (pure).

use jiff::SignedDuration;

/// Parses a duration like `7d`, `12h`, `30m`, `90s`, `2w`.
pub fn parse_duration(s: &str) -> Result<SignedDuration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: i64 = num
        .parse()
        .map_err(|_| format!("invalid duration '{s}': expected a number then s, m, h, d or w"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => {
            return Err(format!(
                "invalid duration '{s}': unknown unit '{unit}' (use s, m, h, d or w)"
            ))
        }
    };
    if n <= 0 {
        return Err(format!("invalid duration '{s}': must be positive"));
    }
    Ok(SignedDuration::from_secs(n * secs))
}

/// Parses a byte count: `20Gi`, `20GiB`, `512Mi`, `1.5Ti`, `10G` (powers of 1000, as
/// Kubernetes quantities), or plain bytes.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| {
        format!("invalid size '{s}': expected a number then a unit such as Mi, Gi or Ti")
    })?;
    let mult: u64 = match unit.trim_end_matches('B') {
        "" => 1,
        "K" | "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => {
            return Err(format!(
                "invalid size '{s}': unknown unit '{unit}' (use Ki, Mi, Gi, Ti, K, M, G, T or none for bytes)"
            ))
        }
    };
    let bytes = n * mult as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(format!("invalid size '{s}': must be at least one byte"));
    }
    Ok(bytes as u64)
}

/// `1h2m`, `3m4s`, `5.2s`: short durations for the printer column.
pub fn human_duration(d: jiff::SignedDuration) -> String {
    let ms = d.as_millis().max(0) as u64;
    let s = ms / 1000;
    if s >= 3600 {
        format!("{}h{}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{}.{}s", s, (ms % 1000) / 100)
    }
}

/// `1.5GiB`, `12.0MiB`, `512B`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units_read_like_kubectl_columns() {
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(1536 * 1024 * 1024), "1.5GiB");
        assert_eq!(
            human_duration(jiff::SignedDuration::from_millis(5200)),
            "5.2s"
        );
        assert_eq!(human_duration(jiff::SignedDuration::from_secs(184)), "3m4s");
        assert_eq!(
            human_duration(jiff::SignedDuration::from_secs(3720)),
            "1h2m"
        );
    }

    #[test]
    fn sizes_parse_with_binary_and_decimal_units_and_reject_the_rest() {
        assert_eq!(parse_bytes("20Gi").unwrap(), 20 << 30);
        assert_eq!(parse_bytes("20GiB").unwrap(), 20 << 30);
        assert_eq!(parse_bytes("1.5Ti").unwrap(), 3 << 39);
        assert_eq!(parse_bytes("512Mi").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("10G").unwrap(), 10_000_000_000);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert!(parse_bytes("20Xi").unwrap_err().contains("unknown unit"));
        assert!(parse_bytes("Gi").is_err());
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("-1Gi").is_err());
    }

    #[test]
    fn durations_parse_with_units_and_reject_the_rest() {
        assert_eq!(
            parse_duration("7d").unwrap(),
            SignedDuration::from_hours(168)
        );
        assert_eq!(
            parse_duration("90s").unwrap(),
            SignedDuration::from_secs(90)
        );
        assert!(parse_duration("7x").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("0h").is_err());
    }
}
