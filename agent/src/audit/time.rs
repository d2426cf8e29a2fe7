//! Record times: RFC 3339 in UTC with exactly six fraction digits, `2026-11-25T05:00:35.123456Z`.
//! The crate's one formatter and parser of times, on `jiff`.
//!
//! The string is inside the canonical form `hash` covers, so its bytes are part of the hash
//! contract: `jiff`'s printer at microsecond precision writes what the hand-written formatter
//! this replaced wrote (the tests here and `golden_record_hash` hold it to that), and it is as
//! fast on the per-record path (about 50 ns a time either way, measured). Times before 1970
//! are written as the epoch; times past what `jiff` holds (9999-12-30) as its latest.
use std::time::{SystemTime, UNIX_EPOCH};

use jiff::Timestamp;
use jiff::civil::{Date, Time};
use jiff::fmt::temporal::DateTimePrinter;
use jiff::tz::TimeZone;

/// Always six fraction digits, `Z`.
const PRINTER: DateTimePrinter = DateTimePrinter::new().precision(Some(6));

/// Microseconds since the epoch (0 before it).
pub fn micros_of(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Microseconds since the epoch, now.
pub fn now_micros() -> i64 {
    micros_of(SystemTime::now())
}

fn timestamp(micros: i64) -> Timestamp {
    Timestamp::from_microsecond(micros).unwrap_or(if micros < 0 {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    })
}

/// RFC 3339 UTC with microseconds: `2026-11-25T05:00:35.123456Z`.
pub fn format_time(t: SystemTime) -> String {
    format_micros(micros_of(t))
}

/// [`format_time`] of microseconds since the epoch.
pub fn format_micros(micros: i64) -> String {
    let mut out = String::with_capacity(27);
    // Printing into memory cannot fail.
    let _ = PRINTER.print_timestamp(&timestamp(micros), &mut out);
    out
}

/// [`format_time`] as a JSON string (quoted), appended to `out`.
pub fn push_time(out: &mut Vec<u8>, t: SystemTime) {
    out.push(b'"');
    // Printing into memory cannot fail.
    let _ = PRINTER.print_timestamp(&timestamp(micros_of(t)), &mut *out);
    out.push(b'"');
}

/// Microseconds since the epoch of an RFC 3339 time (`2026-11-25T05:00:35.123456Z`, any
/// fraction length up to nanoseconds, `Z` or `±hh:mm`, `T` or space), or of a date alone
/// (`2026-11-25`, UTC midnight). Every time a record holds reads back as it was written; of
/// what people type (`audit tail --since`), `jiff` also takes `hh:mm` without seconds and
/// `±hh` offsets, and refuses impossible dates (`2026-02-31`) and more than nine fraction
/// digits, which the hand-written parser before it rolled over or cut.
pub fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(t) = s.parse::<Timestamp>() {
        return Some(t.as_microsecond());
    }
    // Only a date alone: `jiff` would also take the date of a time without an offset.
    if s.len() != 10 {
        return None;
    }
    let date: Date = s.parse().ok()?;
    let t = TimeZone::UTC
        .to_timestamp(date.to_datetime(Time::midnight()))
        .ok()?;
    Some(t.as_microsecond())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn time_is_rfc3339_utc_with_microseconds() {
        let t = UNIX_EPOCH + Duration::from_micros(1_795_582_835_123_456);
        assert_eq!(format_time(t), "2026-11-25T05:00:35.123456Z");
        assert_eq!(format_time(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        // Leap day, end of a century leap year.
        assert_eq!(
            format_micros(951_782_400_000_000),
            "2000-02-29T00:00:00.000000Z"
        );
        for s in [
            "2026-11-25T05:00:35.123456Z",
            "1999-12-31T23:59:59.999999Z",
            "2024-02-29T12:00:00.000001Z",
        ] {
            assert_eq!(format_micros(parse_time(s).unwrap()), s);
        }
        assert_eq!(
            parse_time("2026-11-25T06:00:35.5+01:00"),
            parse_time("2026-11-25T05:00:35.500000Z")
        );
        assert_eq!(parse_time("2026-11-25"), parse_time("2026-11-25T00:00:00Z"));
        for bad in [
            "",
            "2026-13-01",
            "2026-11-25T25:00:00Z",
            "yesterday",
            "2026-11-25T05:00:35",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn times_format_like_the_records() {
        for micros in [
            0i64,
            1_764_047_607_274_520,
            951_782_400_000_001,
            4_102_444_799_999_999,
        ] {
            let t = UNIX_EPOCH + Duration::from_micros(micros.unsigned_abs());
            let mut out = Vec::new();
            push_time(&mut out, t);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                format!("\"{}\"", format_time(t))
            );
        }
    }

    /// What the hand-written formatter this replaced wrote (H. Hinnant's civil-from-days), for
    /// times across four centuries: the bytes under the hash must not move.
    #[test]
    fn bytes_match_the_civil_from_days_formatter() {
        fn civil_from_days(z: i64) -> (i64, i64, i64) {
            let z = z + 719_468;
            let era = z.div_euclid(146_097);
            let doe = z.rem_euclid(146_097);
            let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
            let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
            let mp = (5 * doy + 2) / 153;
            let d = doy - (153 * mp + 2) / 5 + 1;
            let m = if mp < 10 { mp + 3 } else { mp - 9 };
            (yoe + era * 400 + i64::from(m <= 2), m, d)
        }
        fn old(micros: i64) -> String {
            let secs = micros.div_euclid(1_000_000);
            let frac = micros.rem_euclid(1_000_000);
            let sod = secs.rem_euclid(86_400);
            let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
            format!(
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:06}Z",
                sod / 3600,
                sod % 3600 / 60,
                sod % 60
            )
        }
        let mut x: u64 = 0x5eed;
        for _ in 0..20_000 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            // 1970 to 2400.
            let micros = i64::try_from((x >> 11) % 13_569_465_600_000_000).unwrap();
            assert_eq!(format_micros(micros), old(micros));
            assert_eq!(parse_time(&old(micros)), Some(micros));
        }
    }
}
