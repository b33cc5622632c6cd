//! The name of a point's directory: `@GMT-%Y.%m.%d-%H.%M.%S` in UTC, the form Samba's
//! `shadow_copy2` (and Windows "Previous Versions") reads a snapshot's time from.

use jiff::{fmt::strtime, tz::TimeZone, Timestamp};

/// The strftime format of a point's directory name (also Samba's `shadow:format`).
pub const GMT_FORMAT: &str = "@GMT-%Y.%m.%d-%H.%M.%S";

/// `@GMT-2026.12.01-03.10.00` for a point taken at 2026-12-01T03:10:00Z (sub-seconds dropped).
pub fn gmt_name(time: Timestamp) -> String {
    time.strftime(GMT_FORMAT).to_string()
}

/// The time a point directory's name stands for, or None when it is not such a name.
pub fn parse_gmt_name(name: &str) -> Option<Timestamp> {
    // strtime accepts fields of fewer digits; a name this module wrote has exactly 24 bytes.
    if name.len() != "@GMT-2026.12.01-03.10.00".len() {
        return None;
    }
    let dt = strtime::parse(GMT_FORMAT, name).ok()?.to_datetime().ok()?;
    Some(dt.to_zoned(TimeZone::UTC).ok()?.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_points_directory_is_named_for_its_utc_second_and_read_back() {
        let cases = [
            ("2026-12-01T03:10:00Z", "@GMT-2026.12.01-03.10.00"),
            ("2026-01-09T23:59:59.999Z", "@GMT-2026.01.09-23.59.59"),
            ("2026-06-30T12:00:00+02:00", "@GMT-2026.06.30-10.00.00"),
        ];
        for (at, want) in cases {
            let t: Timestamp = at.parse().unwrap();
            assert_eq!(gmt_name(t), want, "{at}");
            let back = parse_gmt_name(want).unwrap();
            assert_eq!(back.as_second(), t.as_second(), "{at}");
        }
    }

    #[test]
    fn other_names_are_not_points() {
        for n in [
            "",
            ".snapback",
            "vdb",
            "@GMT-2026.12.01-03.10",
            "@GMT-2026.13.01-03.10.00",
            "@GMT-2026.1.01-03.10.000",
            "GMT-2026.12.01-03.10.00x",
        ] {
            assert_eq!(parse_gmt_name(n), None, "{n}");
        }
    }
}
