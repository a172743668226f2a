//! Dates and times as Postgres prints them with `DateStyle = ISO` and `TimeZone = UTC`
//! (the service pins both), and the ISO 8601 forms users write in literals.
//!
//! Values are kept as integers so comparisons do not depend on how the text was spelled:
//! dates as days since 1970-01-01, times and timestamps as microseconds.

use std::cmp::Ordering;

pub(crate) const USECS_PER_DAY: i64 = 86_400_000_000;
/// Postgres's `DATEVAL_NOBEGIN`/`DATEVAL_NOEND` and `DT_NOBEGIN`/`DT_NOEND`.
pub(crate) const DATE_NEG_INF: i32 = i32::MIN;
pub(crate) const DATE_POS_INF: i32 = i32::MAX;
pub(crate) const TS_NEG_INF: i64 = i64::MIN;
pub(crate) const TS_POS_INF: i64 = i64::MAX;

/// Earliest supported year (4713 BC, astronomical numbering) for dates and timestamps.
const MIN_YEAR: i64 = -4712;
const MAX_DATE_YEAR: i64 = 5_874_897;
const MAX_TIMESTAMP_YEAR: i64 = 294_276;

pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub(crate) fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

pub(crate) fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn digits(&mut self, max: usize) -> Option<(i64, usize)> {
        let start = self.i;
        let mut v: i64 = 0;
        while let Some(c) = self.peek() {
            if !c.is_ascii_digit() || self.i - start >= max {
                break;
            }
            v = v * 10 + i64::from(c - b'0');
            self.i += 1;
        }
        (self.i > start).then_some((v, self.i - start))
    }

    fn skip_spaces(&mut self) {
        while self.peek() == Some(b' ') {
            self.i += 1;
        }
    }

    fn rest_is(&self, word: &str) -> bool {
        self.s[self.i..].eq_ignore_ascii_case(word.as_bytes())
    }

    fn done(&self) -> bool {
        self.i == self.s.len()
    }
}

/// `Y-M-D`, returning the astronomical year, month and day (validated).
fn parse_ymd(c: &mut Cursor<'_>, max_year: i64) -> Option<(i64, i64, i64)> {
    let (y, _) = c.digits(9)?;
    if !c.eat(b'-') {
        return None;
    }
    let (m, _) = c.digits(2)?;
    if !c.eat(b'-') {
        return None;
    }
    let (d, _) = c.digits(2)?;
    if !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) || y < 1 || y > max_year {
        return None;
    }
    Some((y, m, d))
}

/// A trailing ` BC` turns year N into astronomical year 1 - N.
fn apply_era(c: &mut Cursor<'_>, y: i64, m: i64, d: i64) -> Option<i64> {
    c.skip_spaces();
    let y = if c.rest_is("BC") {
        c.i += 2;
        1 - y
    } else {
        if c.rest_is("AD") {
            c.i += 2;
        }
        y
    };
    if y < MIN_YEAR || (y == MIN_YEAR && m < 11) || (y == MIN_YEAR && m == 11 && d < 24) {
        return None;
    }
    Some(y)
}

/// Microseconds from a fractional-seconds digit string, rounded half to even like Postgres's `rint`.
fn fraction_usecs(frac: &[u8]) -> i64 {
    let mut v: i64 = 0;
    for i in 0..6 {
        v = v * 10 + frac.get(i).map_or(0, |c| i64::from(c - b'0'));
    }
    let rest = frac.get(6..).unwrap_or_default();
    match rest.first() {
        Some(c) if *c > b'5' => v + 1,
        Some(b'5') if rest[1..].iter().any(|c| *c != b'0') || v % 2 == 1 => v + 1,
        _ => v,
    }
}

/// `HH:MM[:SS[.frac]]` as microseconds since midnight; 24:00:00 is allowed as Postgres does.
fn parse_clock(c: &mut Cursor<'_>) -> Option<i64> {
    let (h, _) = c.digits(2)?;
    if !c.eat(b':') {
        return None;
    }
    let (m, _) = c.digits(2)?;
    let mut s = 0;
    let mut frac = 0;
    if c.eat(b':') {
        s = c.digits(2)?.0;
        if c.eat(b'.') {
            let start = c.i;
            while c.peek().is_some_and(|b| b.is_ascii_digit()) {
                c.i += 1;
            }
            frac = fraction_usecs(&c.s[start..c.i]);
        }
    }
    if h > 24 || m > 59 || s > 60 {
        return None;
    }
    let total = ((h * 60 + m) * 60 + s) * 1_000_000 + frac;
    (total <= USECS_PER_DAY).then_some(total)
}

/// `Z`, `UTC`, `+HH`, `+HHMM`, `+HH:MM`, `+HH:MM:SS` as seconds east of UTC; None if absent.
fn parse_zone(c: &mut Cursor<'_>) -> Result<Option<i64>, ()> {
    let save = c.i;
    c.skip_spaces();
    if c.eat(b'Z') || c.eat(b'z') {
        return Ok(Some(0));
    }
    for name in ["UTC", "GMT"] {
        if c.s.len() >= c.i + 3 && c.s[c.i..c.i + 3].eq_ignore_ascii_case(name.as_bytes()) {
            c.i += 3;
            return Ok(Some(0));
        }
    }
    let sign = match c.peek() {
        Some(b'+') => 1,
        Some(b'-') => -1,
        _ => {
            c.i = save;
            return Ok(None);
        }
    };
    c.i += 1;
    let (first, len) = c.digits(4).ok_or(())?;
    let (h, mut m) = if len > 2 {
        (first / 100, first % 100)
    } else {
        (first, 0)
    };
    let mut s = 0;
    if len <= 2 && c.eat(b':') {
        m = c.digits(2).ok_or(())?.0;
        if c.eat(b':') {
            s = c.digits(2).ok_or(())?.0;
        }
    }
    // Postgres allows offsets up to 15:59:59.
    if h > 15 || m > 59 || s > 59 {
        return Err(());
    }
    Ok(Some(sign * (h * 3600 + m * 60 + s)))
}

fn special(s: &str) -> Option<i8> {
    match s.to_ascii_lowercase().as_str() {
        "infinity" | "+infinity" => Some(1),
        "-infinity" => Some(-1),
        "epoch" => Some(0),
        _ => None,
    }
}

/// A date or timestamp as written: an infinity/epoch keyword (sign), or the day, the time of
/// day and the zone offset in seconds if one was given.
enum Written {
    Special(i8),
    Instant {
        days: i64,
        usecs: i64,
        offset: Option<i64>,
    },
}

fn parse_written(input: &str, max_year: i64) -> Option<Written> {
    let s = input.trim();
    if let Some(sign) = special(s) {
        return Some(Written::Special(sign));
    }
    let mut c = Cursor {
        s: s.as_bytes(),
        i: 0,
    };
    let (y, m, d) = parse_ymd(&mut c, max_year)?;
    let mut usecs = 0;
    let mut offset = None;
    let time_follows = c.eat(b'T') || c.eat(b't') || {
        let save = c.i;
        c.skip_spaces();
        let digit = c.peek().is_some_and(|b| b.is_ascii_digit());
        if !digit {
            c.i = save;
        }
        digit
    };
    if time_follows {
        usecs = parse_clock(&mut c)?;
        offset = parse_zone(&mut c).ok()?;
    }
    let y = apply_era(&mut c, y, m, d)?;
    if !c.done() {
        return None;
    }
    Some(Written::Instant {
        days: days_from_civil(y, m, d),
        usecs,
        offset,
    })
}

/// A date; like Postgres, a time of day and zone after it are accepted and ignored.
pub(crate) fn parse_date(input: &str) -> Option<i32> {
    match parse_written(input, MAX_DATE_YEAR)? {
        Written::Special(1) => Some(DATE_POS_INF),
        Written::Special(-1) => Some(DATE_NEG_INF),
        Written::Special(_) => Some(0),
        Written::Instant { days, .. } => i32::try_from(days).ok(),
    }
}

pub(crate) fn parse_time(input: &str) -> Option<i64> {
    let mut c = Cursor {
        s: input.trim().as_bytes(),
        i: 0,
    };
    let t = parse_clock(&mut c)?;
    c.done().then_some(t)
}

/// A timestamp; `with_tz` converts a written offset to UTC, otherwise an offset is ignored
/// (as Postgres does for `timestamp without time zone`). No offset means UTC, the session zone.
pub(crate) fn parse_timestamp(input: &str, with_tz: bool) -> Option<i64> {
    match parse_written(input, MAX_TIMESTAMP_YEAR)? {
        Written::Special(1) => Some(TS_POS_INF),
        Written::Special(-1) => Some(TS_NEG_INF),
        Written::Special(_) => Some(0),
        Written::Instant {
            days,
            usecs,
            offset,
        } => {
            let mut ts = days.checked_mul(USECS_PER_DAY)?.checked_add(usecs)?;
            if with_tz && let Some(off) = offset {
                ts = ts.checked_sub(off * 1_000_000)?;
            }
            Some(ts)
        }
    }
}

fn year_text(y: i64) -> (String, bool) {
    if y <= 0 {
        (format!("{:04}", 1 - y), true)
    } else {
        (format!("{y:04}"), false)
    }
}

pub(crate) fn format_date(days: i32) -> String {
    match days {
        DATE_POS_INF => return "infinity".into(),
        DATE_NEG_INF => return "-infinity".into(),
        _ => {}
    }
    let (y, m, d) = civil_from_days(i64::from(days));
    let (year, bc) = year_text(y);
    format!("{year}-{m:02}-{d:02}{}", if bc { " BC" } else { "" })
}

pub(crate) fn format_time(usecs: i64) -> String {
    let secs = usecs / 1_000_000;
    let frac = usecs % 1_000_000;
    let mut out = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    if frac != 0 {
        let f = format!(".{frac:06}");
        out.push_str(f.trim_end_matches('0'));
    }
    out
}

pub(crate) fn format_timestamp(ts: i64, with_tz: bool) -> String {
    match ts {
        TS_POS_INF => return "infinity".into(),
        TS_NEG_INF => return "-infinity".into(),
        _ => {}
    }
    let days = ts.div_euclid(USECS_PER_DAY);
    let (y, m, d) = civil_from_days(days);
    let (year, bc) = year_text(y);
    format!(
        "{year}-{m:02}-{d:02} {}{}{}",
        format_time(ts.rem_euclid(USECS_PER_DAY)),
        if with_tz { "+00" } else { "" },
        if bc { " BC" } else { "" }
    )
}

/// None for dates past the end of the timestamp range (`date2timestamp`'s error).
pub(crate) fn date_to_timestamp(days: i32) -> Option<i64> {
    match days {
        DATE_POS_INF => Some(TS_POS_INF),
        DATE_NEG_INF => Some(TS_NEG_INF),
        d => i64::from(d)
            .checked_mul(USECS_PER_DAY)
            .filter(|t| timestamp_in_range(*t)),
    }
}

pub(crate) fn timestamp_to_date(ts: i64) -> Option<i32> {
    match ts {
        TS_POS_INF => Some(DATE_POS_INF),
        TS_NEG_INF => Some(DATE_NEG_INF),
        t => i32::try_from(t.div_euclid(USECS_PER_DAY)).ok(),
    }
}

pub(crate) fn date_is_infinite(d: i32) -> bool {
    d == DATE_NEG_INF || d == DATE_POS_INF
}

pub(crate) fn timestamp_is_infinite(t: i64) -> bool {
    t == TS_NEG_INF || t == TS_POS_INF
}

/// 4714-11-24 BC to 5874897-12-31, Postgres's date range.
pub(crate) fn date_in_range(d: i32) -> bool {
    let d = i64::from(d);
    d >= days_from_civil(MIN_YEAR - 1, 11, 24) && d <= days_from_civil(MAX_DATE_YEAR, 12, 31)
}

/// From 4714-11-24 BC to the end of the year 294276, as far as i64 microseconds since 1970 reach.
pub(crate) fn timestamp_in_range(t: i64) -> bool {
    let min = days_from_civil(MIN_YEAR - 1, 11, 24) * USECS_PER_DAY;
    let max = days_from_civil(MAX_TIMESTAMP_YEAR + 1, 1, 1).saturating_mul(USECS_PER_DAY);
    t >= min && t < max && !timestamp_is_infinite(t)
}

/// Infinity sentinels sit at the integer extremes, so plain integer order is Postgres's order.
pub(crate) fn cmp_ts(a: i64, b: i64) -> Ordering {
    a.cmp(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_through_postgres_text() {
        for s in [
            "2024-02-29",
            "1970-01-01",
            "0001-01-01",
            "0044-03-15 BC",
            "9999-12-31",
        ] {
            let d = parse_date(s).unwrap_or_else(|| panic!("{s}"));
            assert_eq!(format_date(d), s);
        }
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(
            parse_date("2024-1-5").map(format_date),
            Some("2024-01-05".into())
        );
        assert_eq!(parse_date("infinity"), Some(DATE_POS_INF));
        assert_eq!(
            parse_date("2024-01-01 23:30:00-05"),
            parse_date("2024-01-01")
        );
    }

    #[test]
    fn invalid_dates_are_rejected() {
        for s in [
            "2023-02-29",
            "2024-13-01",
            "2024-00-10",
            "abc",
            "2024-01-01x",
            "",
        ] {
            assert_eq!(parse_date(s), None, "{s}");
        }
    }

    #[test]
    fn timestamptz_offsets_convert_to_utc() {
        let a = parse_timestamp("2024-01-01 12:00:00+00", true);
        assert!(a.is_some());
        assert_eq!(parse_timestamp("2024-01-01T14:30:00+02:30", true), a);
        assert_eq!(parse_timestamp("2024-01-01T12:00:00Z", true), a);
        assert_eq!(parse_timestamp("2024-01-01 07:00-05", true), a);
        // Without a time zone type the offset is ignored, as in Postgres.
        assert_eq!(parse_timestamp("2024-01-01 12:00:00-05", false), a);
    }

    #[test]
    fn timestamps_format_like_postgres() {
        let t = parse_timestamp("2024-03-01 01:02:03.450", true).unwrap_or_default();
        assert_eq!(format_timestamp(t, true), "2024-03-01 01:02:03.45+00");
        assert_eq!(format_timestamp(t, false), "2024-03-01 01:02:03.45");
        let d = parse_timestamp("2024-03-01", false).unwrap_or_default();
        assert_eq!(format_timestamp(d, false), "2024-03-01 00:00:00");
        let bc = parse_timestamp("0001-01-01 00:00:00+00 BC", true).unwrap_or_default();
        assert_eq!(format_timestamp(bc, true), "0001-01-01 00:00:00+00 BC");
    }

    #[test]
    fn fractional_seconds_round_half_even_to_microseconds() {
        assert_eq!(parse_time("00:00:00.0000005"), Some(0));
        assert_eq!(parse_time("00:00:00.0000015"), Some(2));
        assert_eq!(parse_time("00:00:00.00000051"), Some(1));
        assert_eq!(parse_time("24:00:00"), Some(USECS_PER_DAY));
        assert_eq!(parse_time("24:00:01"), None);
        assert_eq!(
            parse_time("12:30").map(format_time),
            Some("12:30:00".into())
        );
    }
}
