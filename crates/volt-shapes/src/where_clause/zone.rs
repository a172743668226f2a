//! `timezone(zone, ts)` and `ts AT TIME ZONE zone`: converting between UTC instants and the
//! wall-clock time of a named IANA zone, as Postgres's `timestamp_zone`/`timestamptz_zone` do.

use std::collections::HashMap;
use std::sync::OnceLock;

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Offset, TimeZone};
use chrono_tz::{TZ_VARIANTS, Tz};

use super::datetime::{self, USECS_PER_DAY};

/// Names without a `/` that Postgres also reads, all as UTC. Every other name without a `/`
/// is refused: Postgres looks a zone up among its time-zone abbreviations first, and several
/// of those share a zone's name with another meaning (`CET` is a fixed +1 as an abbreviation
/// but has summer time as a zone).
const UTC_NAMES: &[&str] = &[
    "utc",
    "gmt",
    "uct",
    "ut",
    "z",
    "zulu",
    "universal",
    "greenwich",
    "gmt0",
    "gmt+0",
    "gmt-0",
    "etc/utc",
];

/// chrono-tz lists transitions up to 2099; Postgres extends the last rule of the zone
/// forever. Later years are read in the year of the 2072-2099 span with the same calendar
/// (leap or not, same weekday on 1 January), where that rule gives the same transitions.
const LAST_LISTED_YEAR: i32 = 2099;
const FIRST_REPEAT_YEAR: i32 = 2072;

/// A zone a where clause can name; Err is the reason it cannot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Zone {
    Utc,
    Named(Tz),
}

fn by_lower_name() -> &'static HashMap<String, Tz> {
    static NAMES: OnceLock<HashMap<String, Tz>> = OnceLock::new();
    NAMES.get_or_init(|| {
        TZ_VARIANTS
            .iter()
            .map(|tz| (tz.name().to_ascii_lowercase(), *tz))
            .collect()
    })
}

/// Postgres compares zone names case-insensitively.
pub(crate) fn lookup(name: &str) -> Result<Zone, String> {
    let lower = name.to_ascii_lowercase();
    if UTC_NAMES.contains(&lower.as_str()) {
        return Ok(Zone::Utc);
    }
    if lower.contains('/')
        && let Some(tz) = by_lower_name().get(&lower)
    {
        return Ok(Zone::Named(*tz));
    }
    if by_lower_name().contains_key(&lower) || !lower.contains('/') {
        return Err(format!(
            "time zone \"{name}\" is not supported in where clauses: use a region name such as 'Europe/Paris', or 'UTC'"
        ));
    }
    Err(format!("time zone \"{name}\" not recognized"))
}

fn same_calendar_year(year: i32) -> i32 {
    let leap = NaiveDate::from_ymd_opt(year, 2, 29).is_some();
    let weekday = NaiveDate::from_ymd_opt(year, 1, 1).map(|d| d.weekday());
    (FIRST_REPEAT_YEAR..=LAST_LISTED_YEAR)
        .find(|y| {
            NaiveDate::from_ymd_opt(*y, 2, 29).is_some() == leap
                && NaiveDate::from_ymd_opt(*y, 1, 1).map(|d| d.weekday()) == weekday
        })
        .unwrap_or(LAST_LISTED_YEAR)
}

/// `t` moved into a year chrono-tz lists transitions for, if it is beyond them.
fn listed(t: NaiveDateTime) -> NaiveDateTime {
    if t.year() <= LAST_LISTED_YEAR {
        return t;
    }
    t.with_year(same_calendar_year(t.year())).unwrap_or(t)
}

const OUT_OF_RANGE: &str = "timestamp out of range";

fn naive(t: i64) -> Result<NaiveDateTime, String> {
    DateTime::from_timestamp_micros(t)
        .map(|d| d.naive_utc())
        .ok_or_else(|| OUT_OF_RANGE.to_string())
}

/// UTC offset in microseconds of `tz` at the UTC instant `utc`.
fn offset_at_utc(tz: Tz, utc: NaiveDateTime) -> i64 {
    let secs = tz
        .offset_from_utc_datetime(&listed(utc))
        .fix()
        .local_minus_utc();
    i64::from(secs) * 1_000_000
}

fn checked(t: i64) -> Result<i64, String> {
    if datetime::timestamp_in_range(t) {
        Ok(t)
    } else {
        Err(OUT_OF_RANGE.into())
    }
}

/// `timezone(zone, timestamptz)`: the wall-clock time in `zone` at instant `t`.
pub(crate) fn to_local(zone: Zone, t: i64) -> Result<i64, String> {
    if datetime::timestamp_is_infinite(t) {
        return Ok(t);
    }
    let Zone::Named(tz) = zone else {
        return Ok(t);
    };
    let off = offset_at_utc(tz, naive(t)?);
    checked(t.checked_add(off).ok_or(OUT_OF_RANGE)?)
}

/// `timezone(zone, timestamp)`: the instant at which the wall clock in `zone` shows `t`.
/// A time skipped by a spring-forward transition is read with the offset from before it,
/// a time repeated by a fall-back transition with the offset from after it, as Postgres's
/// `DetermineTimeZoneOffset` does.
pub(crate) fn to_utc(zone: Zone, t: i64) -> Result<i64, String> {
    if datetime::timestamp_is_infinite(t) {
        return Ok(t);
    }
    let Zone::Named(tz) = zone else {
        return Ok(t);
    };
    let local = naive(t)?;
    let secs = match tz.offset_from_local_datetime(&listed(local)) {
        chrono::LocalResult::Single(o) => o.fix().local_minus_utc(),
        // The later instant is the one read with the offset after the transition.
        chrono::LocalResult::Ambiguous(a, b) => {
            let (a, b) = (a.fix().local_minus_utc(), b.fix().local_minus_utc());
            a.min(b)
        }
        // Postgres takes the offset in force a day before, which no transition is closer to.
        chrono::LocalResult::None => {
            let before = local - chrono::Duration::microseconds(USECS_PER_DAY);
            tz.offset_from_utc_datetime(&listed(before))
                .fix()
                .local_minus_utc()
        }
    };
    checked(
        t.checked_sub(i64::from(secs) * 1_000_000)
            .ok_or(OUT_OF_RANGE)?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> i64 {
        match datetime::parse_timestamp(s, false) {
            Some(t) => t,
            None => panic!("bad timestamp {s}"),
        }
    }

    fn show(t: i64) -> String {
        datetime::format_timestamp(t, false)
    }

    fn ny() -> Zone {
        match lookup("america/NEW_york") {
            Ok(z) => z,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn zone_names_are_case_insensitive_and_abbreviations_refused() {
        assert_eq!(lookup("UTC"), Ok(Zone::Utc));
        assert!(matches!(lookup("Europe/Paris"), Ok(Zone::Named(_))));
        assert!(lookup("CET").is_err());
        assert_eq!(
            lookup("Mars/Olympus"),
            Err("time zone \"Mars/Olympus\" not recognized".into())
        );
    }

    #[test]
    fn dst_gaps_and_overlaps_resolve_like_postgres() {
        // Spring forward: 02:30 does not exist and is read as EST.
        assert_eq!(
            show(to_utc(ny(), ts("2024-03-10 02:30:00")).unwrap_or(0)),
            "2024-03-10 07:30:00"
        );
        // Fall back: 01:30 happens twice and is read as EST, the offset after.
        assert_eq!(
            show(to_utc(ny(), ts("2024-11-03 01:30:00")).unwrap_or(0)),
            "2024-11-03 06:30:00"
        );
        assert_eq!(
            show(to_local(ny(), ts("2024-07-01 12:00:00")).unwrap_or(0)),
            "2024-07-01 08:00:00"
        );
        // Beyond the listed transitions the zone's last rule still applies.
        assert_eq!(
            show(to_local(ny(), ts("2150-07-01 12:00:00")).unwrap_or(0)),
            "2150-07-01 08:00:00"
        );
        assert_eq!(
            show(to_local(ny(), ts("2150-01-01 12:00:00")).unwrap_or(0)),
            "2150-01-01 07:00:00"
        );
    }
}
