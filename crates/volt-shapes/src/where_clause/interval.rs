//! Postgres intervals: months, days and microseconds kept apart (a month is not a fixed
//! number of days until it is added to a date), read from the common text forms and printed
//! with `IntervalStyle = postgres`.

use std::cmp::Ordering;

use super::datetime::USECS_PER_DAY;

const USECS_PER_HOUR: i64 = 3_600_000_000;
const USECS_PER_MINUTE: i64 = 60_000_000;
const USECS_PER_SEC: i64 = 1_000_000;
const DAYS_PER_MONTH: i64 = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Interval {
    pub months: i32,
    pub days: i32,
    pub micros: i64,
}

pub(crate) const OUT_OF_RANGE: &str = "interval out of range";

impl Interval {
    /// The span Postgres sorts and compares intervals by: 30-day months, 24-hour days.
    fn span(&self) -> i128 {
        i128::from(self.micros)
            + i128::from(self.days) * i128::from(USECS_PER_DAY)
            + i128::from(self.months) * i128::from(DAYS_PER_MONTH * USECS_PER_DAY)
    }

    fn from_parts(months: i128, days: i128, micros: i128) -> Result<Interval, String> {
        Ok(Interval {
            months: i32::try_from(months).map_err(|_| OUT_OF_RANGE.to_string())?,
            days: i32::try_from(days).map_err(|_| OUT_OF_RANGE.to_string())?,
            micros: i64::try_from(micros).map_err(|_| OUT_OF_RANGE.to_string())?,
        })
    }

    pub(crate) fn add(&self, o: &Interval) -> Result<Interval, String> {
        Interval::from_parts(
            i128::from(self.months) + i128::from(o.months),
            i128::from(self.days) + i128::from(o.days),
            i128::from(self.micros) + i128::from(o.micros),
        )
    }

    pub(crate) fn neg(&self) -> Result<Interval, String> {
        Interval::from_parts(
            -i128::from(self.months),
            -i128::from(self.days),
            -i128::from(self.micros),
        )
    }

    pub(crate) fn sub(&self, o: &Interval) -> Result<Interval, String> {
        self.add(&o.neg()?)
    }
}

/// Postgres's `TSROUND`: to the nearest microsecond's worth of the unit, so that a product
/// like `0.1 * 30` comes out whole.
fn ts_round(v: f64) -> f64 {
    (v * 1e6).round_ties_even() / 1e6
}

/// C's conversion of a double to int32 after Postgres's range check.
fn to_i32(v: f64) -> Result<i32, String> {
    if v.is_nan() || v > f64::from(i32::MAX) || v < f64::from(i32::MIN) {
        return Err(OUT_OF_RANGE.into());
    }
    Ok(v as i32)
}

/// `interval_mul` (and, with `divide`, `interval_div`): months and days are scaled on their
/// own and their fractions cascade down (a month as 30 days, a day as 24 hours), never up.
pub(crate) fn scale(i: &Interval, factor: f64, divide: bool) -> Result<Interval, String> {
    if divide && factor == 0.0 {
        return Err("division by zero".into());
    }
    let apply = |v: f64| if divide { v / factor } else { v * factor };
    let months_f = apply(f64::from(i.months));
    let days_f = apply(f64::from(i.days));
    let months = to_i32(months_f)?;
    let mut days = to_i32(days_f)?;
    let month_remainder_days = ts_round((months_f - f64::from(months)) * DAYS_PER_MONTH as f64);
    let whole_remainder_days = month_remainder_days.trunc();
    let mut sec_remainder = ts_round(
        (days_f - f64::from(days) + month_remainder_days - whole_remainder_days) * 86_400.0,
    );
    if sec_remainder.abs() >= 86_400.0 {
        let carried = (sec_remainder / 86_400.0).trunc();
        days = days
            .checked_add(carried as i32)
            .ok_or_else(|| OUT_OF_RANGE.to_string())?;
        sec_remainder -= carried * 86_400.0;
    }
    days = days
        .checked_add(to_i32(whole_remainder_days)?)
        .ok_or_else(|| OUT_OF_RANGE.to_string())?;
    let micros = (apply(i.micros as f64) + sec_remainder * USECS_PER_SEC as f64).round_ties_even();
    // FLOAT8_FITS_IN_INT64: [-2^63, 2^63).
    let limit = 2f64.powi(63);
    if micros.is_nan() || !(-limit..limit).contains(&micros) {
        return Err(OUT_OF_RANGE.into());
    }
    Ok(Interval {
        months,
        days,
        micros: micros as i64,
    })
}

/// `interval_cmp`: by the 30-day-month span, so `'1 mon' = '30 days'`.
pub(crate) fn compare(a: &Interval, b: &Interval) -> Ordering {
    a.span().cmp(&b.span())
}

/// `justify_hours`: whole 24-hour periods of the time part become days.
pub(crate) fn justify_hours(i: &Interval) -> Result<Interval, String> {
    let mut days = i128::from(i.days) + i128::from(i.micros / USECS_PER_DAY);
    let mut micros = i128::from(i.micros % USECS_PER_DAY);
    if days > 0 && micros < 0 {
        micros += i128::from(USECS_PER_DAY);
        days -= 1;
    } else if days < 0 && micros > 0 {
        micros -= i128::from(USECS_PER_DAY);
        days += 1;
    }
    Interval::from_parts(i128::from(i.months), days, micros)
}

/// `justify_days`: whole 30-day periods become months.
pub(crate) fn justify_days(i: &Interval) -> Result<Interval, String> {
    let mut months = i128::from(i.months) + i128::from(i.days) / i128::from(DAYS_PER_MONTH);
    let mut days = i128::from(i.days) % i128::from(DAYS_PER_MONTH);
    if months > 0 && days < 0 {
        days += i128::from(DAYS_PER_MONTH);
        months -= 1;
    } else if months < 0 && days > 0 {
        days -= i128::from(DAYS_PER_MONTH);
        months += 1;
    }
    Interval::from_parts(months, days, i128::from(i.micros))
}

/// `justify_interval`: both, with the signs of all parts made to agree.
pub(crate) fn justify_interval(i: &Interval) -> Result<Interval, String> {
    let mut months = i128::from(i.months);
    let mut days = i128::from(i.days);
    let mut micros = i128::from(i.micros);
    days += micros / i128::from(USECS_PER_DAY);
    micros %= i128::from(USECS_PER_DAY);
    months += days / i128::from(DAYS_PER_MONTH);
    days %= i128::from(DAYS_PER_MONTH);
    if months > 0 && (days < 0 || (days == 0 && micros < 0)) {
        days += i128::from(DAYS_PER_MONTH);
        months -= 1;
    } else if months < 0 && (days > 0 || (days == 0 && micros > 0)) {
        days -= i128::from(DAYS_PER_MONTH);
        months += 1;
    }
    if days > 0 && micros < 0 {
        micros += i128::from(USECS_PER_DAY);
        days -= 1;
    } else if days < 0 && micros > 0 {
        micros -= i128::from(USECS_PER_DAY);
        days += 1;
    }
    Interval::from_parts(months, days, micros)
}

/// Accumulates the parts of a written interval; fractions of a unit spill into smaller
/// units as Postgres's `DecodeInterval` does.
#[derive(Default)]
struct Parts {
    months: f64,
    days: f64,
    micros: f64,
}

impl Parts {
    fn add_days(&mut self, v: f64) {
        let whole = v.trunc();
        self.days += whole;
        self.micros += (v - whole) * USECS_PER_DAY as f64;
    }

    fn add_months(&mut self, v: f64) {
        let whole = v.trunc();
        self.months += whole;
        self.add_days((v - whole) * DAYS_PER_MONTH as f64);
    }
}

fn unit_of(word: &str) -> Option<(&'static str, f64)> {
    Some(match word {
        "microsecond" | "microseconds" | "us" | "usec" | "usecs" => ("us", 1.0),
        "millisecond" | "milliseconds" | "ms" | "msec" | "msecs" => ("us", 1000.0),
        "second" | "seconds" | "s" | "sec" | "secs" => ("us", USECS_PER_SEC as f64),
        "minute" | "minutes" | "m" | "min" | "mins" => ("us", USECS_PER_MINUTE as f64),
        "hour" | "hours" | "h" | "hr" | "hrs" => ("us", USECS_PER_HOUR as f64),
        "day" | "days" | "d" => ("day", 1.0),
        "week" | "weeks" | "w" => ("day", 7.0),
        "month" | "months" | "mon" | "mons" => ("mon", 1.0),
        "year" | "years" | "y" | "yr" | "yrs" => ("year", 12.0),
        "decade" | "decades" => ("year", 120.0),
        "century" | "centuries" => ("year", 1200.0),
        "millennium" | "millennia" => ("year", 12000.0),
        _ => return None,
    })
}

/// `[+-]HH:MM[:SS[.frac]]` as signed microseconds.
fn clock(token: &str) -> Option<f64> {
    let (neg, body) = match token.as_bytes().first() {
        Some(b'-') => (true, &token[1..]),
        Some(b'+') => (false, &token[1..]),
        _ => (false, token),
    };
    let mut parts = body.split(':');
    let h: f64 = digits(parts.next()?)?.parse().ok()?;
    let m: f64 = digits(parts.next()?)?.parse().ok()?;
    let s: f64 = match parts.next() {
        Some(sec) => {
            let (int, frac) = sec.split_once('.').unwrap_or((sec, ""));
            if !frac.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            format!("{}.{frac}0", digits(int)?).parse().ok()?
        }
        None => 0.0,
    };
    if parts.next().is_some() || m >= 60.0 || s >= 60.0 {
        return None;
    }
    let v = (h * 3600.0 + m * 60.0 + s) * USECS_PER_SEC as f64;
    Some(if neg { -v } else { v })
}

fn digits(s: &str) -> Option<&str> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then_some(s)
}

fn number(s: &str) -> Option<f64> {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let plain = !body.is_empty()
        && body.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && body.bytes().filter(|b| *b == b'.').count() <= 1
        && body != ".";
    if !plain {
        return None;
    }
    s.parse().ok()
}

/// One whitespace-separated piece of a written interval, as Postgres's `ParseDateTime`
/// classifies it (`1day` is two fields).
enum Field<'a> {
    /// `[+-]HH:MM[:SS[.frac]]`.
    Clock(&'a str),
    /// SQL's years-months `[+-]Y-M`, as months; the sign applies to both parts.
    YearMonth(f64),
    Number(f64),
    Word(&'a str),
}

fn fields(lowered: &str) -> Option<Vec<Field<'_>>> {
    let mut out = Vec::new();
    for tok in lowered.split_ascii_whitespace() {
        if tok == "@" {
            continue;
        }
        if tok.contains(':') {
            out.push(Field::Clock(tok));
            continue;
        }
        let split = tok
            .find(|c: char| c.is_ascii_alphabetic())
            .unwrap_or(tok.len());
        let (num, word) = tok.split_at(split);
        if !num.is_empty() {
            let body = num.strip_prefix(['+', '-']).unwrap_or(num);
            if let Some((y, m)) = body.split_once('-') {
                let (y, m): (f64, f64) = (digits(y)?.parse().ok()?, digits(m)?.parse().ok()?);
                if m >= 12.0 {
                    return None;
                }
                let months = y * 12.0 + m;
                out.push(Field::YearMonth(if num.starts_with('-') {
                    -months
                } else {
                    months
                }));
            } else {
                out.push(Field::Number(number(num)?));
            }
        }
        if !word.is_empty() {
            out.push(Field::Word(word));
        }
    }
    Some(out)
}

/// Bits of the units already given, as `DecodeInterval`'s `fmask`: a unit given twice
/// (`1 day 2 days`, or two bare numbers, both seconds) is a syntax error.
fn unit_bit(kind: &str, scale: f64) -> u32 {
    match (kind, scale as i64) {
        ("us", 1) => 1,
        ("us", 1000) => 1 << 1,
        ("us", 1_000_000) => 1 << 2,
        ("us", 60_000_000) => 1 << 3,
        ("us", _) => 1 << 4,
        ("day", 1) => 1 << 5,
        ("day", _) => 1 << 6,
        ("mon", _) => 1 << 7,
        ("year", 12) => 1 << 8,
        ("year", 120) => 1 << 9,
        ("year", 1200) => 1 << 10,
        _ => 1 << 11,
    }
}

const CLOCK_BITS: u32 = (1 << 2) | (1 << 3) | (1 << 4);

/// `interval_in` for the forms people write: `[@] N unit [N unit ...] [ago]`, a clock
/// `[D] HH:MM[:SS]` (a bare number before it counts days), SQL's years-months `Y-M`, a bare
/// number of seconds, and ISO 8601 `P1DT2H`. Fields are read right to left as Postgres's
/// `DecodeInterval` does: a unit names the number before it. Err(None) is a syntax error,
/// Err(Some) another reason.
pub(crate) fn parse(input: &str) -> Result<Interval, Option<String>> {
    let lowered = input.to_ascii_lowercase();
    if let Some(parts) = parse_iso(lowered.trim()) {
        return finish(parts, 1.0, input);
    }
    let fields = fields(&lowered).ok_or(None)?;
    if fields.is_empty() {
        return Err(None);
    }
    let mut parts = Parts::default();
    let mut ago = false;
    let mut mask = 0u32;
    // The unit of the next number to the left; None: seconds.
    let mut unit: Option<(&'static str, f64)> = None;
    let mut claim = |bits: u32| {
        if mask & bits != 0 {
            return Err(None);
        }
        mask |= bits;
        Ok(())
    };
    for field in fields.iter().rev() {
        match field {
            Field::Clock(tok) => {
                claim(CLOCK_BITS)?;
                parts.micros += clock(tok).ok_or(None)?;
                unit = Some(("day", 1.0));
            }
            Field::YearMonth(months) => {
                claim(unit_bit("mon", 1.0))?;
                parts.months += months;
                unit = Some(("mon", 1.0));
            }
            Field::Number(v) => {
                let (kind, scale) = unit.unwrap_or(("us", USECS_PER_SEC as f64));
                let mut bits = unit_bit(kind, scale);
                if kind == "us" && scale == USECS_PER_SEC as f64 && v.fract() != 0.0 {
                    bits |= 0b11;
                }
                claim(bits)?;
                match kind {
                    "us" => parts.micros += v * scale,
                    "day" => parts.add_days(v * scale),
                    "mon" => parts.add_months(*v),
                    // Fractional years round to whole months.
                    _ => parts.months += (v * scale).round_ties_even(),
                }
            }
            Field::Word("ago") if !ago => ago = true,
            Field::Word(w) => unit = Some(unit_of(w).ok_or(None)?),
        }
    }
    if mask == 0 {
        return Err(None);
    }
    finish(parts, if ago { -1.0 } else { 1.0 }, input)
}

fn finish(parts: Parts, sign: f64, input: &str) -> Result<Interval, Option<String>> {
    let fits = |v: f64, max: f64| v.is_finite() && v.abs() <= max;
    let (months, days, micros) = (
        (parts.months * sign).trunc(),
        (parts.days * sign).trunc(),
        (parts.micros * sign).round_ties_even(),
    );
    if !fits(months, f64::from(i32::MAX))
        || !fits(days, f64::from(i32::MAX))
        || !fits(micros, 9.2e18)
    {
        return Err(Some(format!(
            "interval field value out of range: \"{input}\""
        )));
    }
    Ok(Interval {
        months: months as i32,
        days: days as i32,
        micros: micros as i64,
    })
}

fn iso_part(out: &mut String, value: i64, unit: char) {
    if value != 0 {
        out.push_str(&format!("{value}{unit}"));
    }
}

/// `interval_out` with `IntervalStyle = iso_8601`, the style volt's sessions (like
/// Electric's) use, so replicated values and `::text` in the snapshot query print this way:
/// `P1Y2M-3DT4H5M6.5S`, `PT0S` for zero.
pub(crate) fn format(i: &Interval) -> String {
    let t = i.micros;
    let (hours, minutes) = (t / USECS_PER_HOUR, t / USECS_PER_MINUTE % 60);
    let (secs, frac) = (t / USECS_PER_SEC % 60, t % USECS_PER_SEC);
    let months = i64::from(i.months);
    if months == 0 && i.days == 0 && t == 0 {
        return "PT0S".into();
    }
    let mut out = String::from("P");
    iso_part(&mut out, months / 12, 'Y');
    iso_part(&mut out, months % 12, 'M');
    iso_part(&mut out, i64::from(i.days), 'D');
    if t != 0 {
        out.push('T');
    }
    iso_part(&mut out, hours, 'H');
    iso_part(&mut out, minutes, 'M');
    if secs != 0 || frac != 0 {
        if secs < 0 || frac < 0 {
            out.push('-');
        }
        out.push_str(&secs.unsigned_abs().to_string());
        if frac != 0 {
            let f = format!(".{:06}", frac.unsigned_abs());
            out.push_str(f.trim_end_matches('0'));
        }
        out.push('S');
    }
    out
}

/// The ISO 8601 "format with designators": `P[nY][nM][nW][nD][T[nH][nM][nS]]`, each number
/// signed and possibly fractional.
fn parse_iso(s: &str) -> Option<Parts> {
    let body = s.strip_prefix('p')?;
    let mut parts = Parts::default();
    let mut in_time = false;
    let mut num = String::new();
    let mut any = false;
    for c in body.chars() {
        match c {
            't' if num.is_empty() && !in_time => in_time = true,
            '0'..='9' | '.' | '-' | '+' => num.push(c),
            unit => {
                let v = number(&num)?;
                num.clear();
                any = true;
                match (in_time, unit) {
                    (false, 'y') => parts.months += (v * 12.0).round_ties_even(),
                    (false, 'm') => parts.add_months(v),
                    (false, 'w') => parts.add_days(v * 7.0),
                    (false, 'd') => parts.add_days(v),
                    (true, 'h') => parts.micros += v * USECS_PER_HOUR as f64,
                    (true, 'm') => parts.micros += v * USECS_PER_MINUTE as f64,
                    (true, 's') => parts.micros += v * USECS_PER_SEC as f64,
                    _ => return None,
                }
            }
        }
    }
    (num.is_empty() && any).then_some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(input: &str) -> String {
        match parse(input) {
            Ok(i) => format(&i),
            Err(e) => format!("error {e:?}"),
        }
    }

    #[test]
    fn intervals_read_and_print_like_postgres() {
        for (input, want) in [
            ("1 day", "P1D"),
            ("-1 day", "P-1D"),
            ("1 year 2 months 3 days 04:05:06.5", "P1Y2M3DT4H5M6.5S"),
            ("1.5 days", "P1DT12H"),
            ("1.5 months", "P1M15D"),
            ("1.5 years", "P1Y6M"),
            ("@ 1 hour ago", "PT-1H"),
            ("-1 day +02:00", "P-1DT2H"),
            ("90 minutes", "PT1H30M"),
            ("10", "PT10S"),
            ("0 days", "PT0S"),
            ("-1.5 seconds", "PT-1.5S"),
            ("2 weeks", "P14D"),
            ("P1Y2M-3DT4H5M6.5S", "P1Y2M-3DT4H5M6.5S"),
            ("PT-1M-0.25S", "PT-1M-0.25S"),
            ("pt0s", "PT0S"),
            ("1-2", "P1Y2M"),
            ("-1-2", "P-1Y-2M"),
            ("1-2 3 4:05:06", "P1Y2M3DT4H5M6S"),
            ("1 2:03:04", "P1DT2H3M4S"),
            ("1 day 2", "P1DT2S"),
            ("3 4:05", "P3DT4H5M"),
        ] {
            assert_eq!(show(input), want, "{input}");
        }
        for bad in [
            "",
            "day",
            "1 fortnight",
            "1:2:3:4",
            "ago",
            "P",
            "P1",
            "PT1D",
            "P1X",
            "1-12",
            "1 day 2 days",
            "1 2",
            "1:00 2:00",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn intervals_compare_with_thirty_day_months() {
        let (Ok(a), Ok(b)) = (parse("1 mon"), parse("30 days")) else {
            panic!("parse")
        };
        assert_eq!(compare(&a, &b), Ordering::Equal);
        let (Ok(a), Ok(b)) = (parse("1 day"), parse("23 hours")) else {
            panic!("parse")
        };
        assert_eq!(compare(&a, &b), Ordering::Greater);
    }

    #[test]
    fn justify_moves_whole_days_and_months() {
        let show = |f: fn(&Interval) -> Result<Interval, String>, s: &str| match parse(s) {
            Ok(i) => f(&i).map(|r| format(&r)).unwrap_or_else(|e| e),
            Err(_) => "bad".into(),
        };
        assert_eq!(show(justify_hours, "27 hours"), "P1DT3H");
        assert_eq!(show(justify_days, "35 days"), "P1M5D");
        assert_eq!(show(justify_interval, "1 mon -1 hour"), "P29DT23H");
    }
}
