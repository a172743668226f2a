//! Typed values: reading Postgres text output, printing it back, comparing and casting.

use std::cmp::Ordering;

use super::array::{self, Array};
use super::datetime;
use super::interval::{self, Interval};
use super::numeric::{Numeric, NumericError};
use super::types::{CastTarget, SqlType, Typmod};

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Bool(bool),
    /// Every integer type; the static type says which range applies.
    Int(i64),
    /// float8, and float4 widened exactly from its f32 value.
    Float(f64),
    Numeric(Numeric),
    /// Every string type, and the text output of columns of `Other` types.
    Text(String),
    Uuid(u128),
    /// Days since 1970-01-01.
    Date(i32),
    /// Microseconds since midnight.
    Time(i64),
    /// Microseconds since 1970-01-01 00:00 (UTC for timestamptz).
    Timestamp(i64),
    Interval(Interval),
    Array(Box<Array>),
}

fn syntax(ty: SqlType, input: &str) -> String {
    format!("invalid syntax for type {}: {input}", ty.name())
}

fn parse_int(ty: SqlType, input: &str) -> Result<i64, String> {
    let s = input.trim_matches(|c: char| c.is_ascii_whitespace());
    let (neg, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(syntax(ty, input));
    }
    let out_of_range = || format!("value {input} is out of range for type {}", ty.name());
    let mut v: i128 = 0;
    for b in digits.bytes() {
        v = v * 10 + i128::from(b - b'0');
        if v > i128::from(u64::MAX) {
            return Err(out_of_range());
        }
    }
    let v = if neg { -v } else { v };
    let (lo, hi) = ty.int_range();
    if v < i128::from(lo) || v > i128::from(hi) {
        return Err(out_of_range());
    }
    Ok(v as i64)
}

fn parse_float(ty: SqlType, input: &str) -> Result<f64, String> {
    let s = input.trim_matches(|c: char| c.is_ascii_whitespace());
    // Rust also accepts forms Postgres does not ("inf" alone is fine in both, "1_0" is not).
    let plain = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    if !plain || s.is_empty() {
        return Err(syntax(ty, input));
    }
    let out_of_range = || format!("\"{input}\" is out of range for type {}", ty.name());
    let named_special = s.bytes().any(|b| matches!(b, b'i' | b'I' | b'n' | b'N'));
    if ty == SqlType::Float4 {
        let v: f32 = s.parse().map_err(|_| syntax(ty, input))?;
        if v.is_infinite() && !named_special {
            return Err(out_of_range());
        }
        return Ok(f64::from(v));
    }
    let v: f64 = s.parse().map_err(|_| syntax(ty, input))?;
    if v.is_infinite() && !named_special {
        return Err(out_of_range());
    }
    Ok(v)
}

fn parse_bool(input: &str) -> Option<bool> {
    let s = input.trim().to_ascii_lowercase();
    match s.as_str() {
        "" => None,
        "1" => Some(true),
        "0" => Some(false),
        "on" => Some(true),
        "of" | "off" => Some(false),
        s if "true".starts_with(s) || "yes".starts_with(s) => Some(true),
        s if "false".starts_with(s) || "no".starts_with(s) => Some(false),
        _ => None,
    }
}

/// Postgres's `uuid_in`: optional braces, 32 hex digits, a hyphen allowed after any group of four.
fn parse_uuid(input: &str) -> Option<u128> {
    let inner = match input.strip_prefix('{') {
        Some(rest) => rest.strip_suffix('}')?,
        None => input,
    };
    let mut v: u128 = 0;
    let mut count = 0;
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        v = (v << 4) | u128::from(c.to_digit(16)?);
        count += 1;
        if count % 4 == 0 && count < 32 && chars.peek() == Some(&'-') {
            chars.next();
        }
    }
    (count == 32).then_some(v)
}

/// Parse Postgres text input for `ty`. Err is the user-facing reason.
pub(crate) fn parse_input(ty: SqlType, input: &str) -> Result<Value, String> {
    let bad = || syntax(ty, input);
    Ok(match ty {
        SqlType::Bool => Value::Bool(parse_bool(input).ok_or_else(bad)?),
        SqlType::Int2 | SqlType::Int4 | SqlType::Int8 => Value::Int(parse_int(ty, input)?),
        SqlType::Float4 | SqlType::Float8 => Value::Float(parse_float(ty, input)?),
        SqlType::Numeric => Value::Numeric(Numeric::parse(input).map_err(|e| match e {
            NumericError::Overflow => "value overflows numeric format".to_string(),
            _ => bad(),
        })?),
        SqlType::Text
        | SqlType::Varchar
        | SqlType::Bpchar
        | SqlType::Name
        | SqlType::Unknown
        | SqlType::Other
        | SqlType::Enum(_) => Value::Text(input.to_string()),
        SqlType::Uuid => Value::Uuid(parse_uuid(input).ok_or_else(bad)?),
        SqlType::Date => Value::Date(datetime::parse_date(input).ok_or_else(bad)?),
        SqlType::Time => Value::Time(datetime::parse_time(input).ok_or_else(bad)?),
        SqlType::Timestamp => {
            Value::Timestamp(datetime::parse_timestamp(input, false).ok_or_else(bad)?)
        }
        SqlType::Timestamptz => {
            Value::Timestamp(datetime::parse_timestamp(input, true).ok_or_else(bad)?)
        }
        SqlType::Interval => Value::Interval(interval::parse(input).map_err(|e| match e {
            Some(reason) => reason,
            None => bad(),
        })?),
        SqlType::Array(elem) => {
            Value::Array(Box::new(array::parse(input, |s| parse_input(*elem, s))?))
        }
    })
}

/// Postgres's shortest-exact float output (`extra_float_digits = 1`, the default since 12).
pub(crate) fn format_float(v: f64, is_float4: bool) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let sci = if is_float4 {
        format!("{:e}", v as f32)
    } else {
        format!("{v:e}")
    };
    let Some((mantissa, exp)) = sci.split_once('e') else {
        return sci;
    };
    let exp: i32 = exp.parse().unwrap_or(0);
    let sign = if mantissa.starts_with('-') { "-" } else { "" };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let threshold = if is_float4 { 6 } else { 15 };
    if exp < -4 || exp >= threshold {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{first}{frac}e{esign}{:02}", exp.unsigned_abs());
    }
    if exp < 0 {
        let zeros = "0".repeat(exp.unsigned_abs() as usize - 1);
        return format!("{sign}0.{zeros}{digits}");
    }
    let int_len = exp as usize + 1;
    if digits.len() <= int_len {
        let zeros = "0".repeat(int_len - digits.len());
        format!("{sign}{digits}{zeros}")
    } else {
        let (int, frac) = digits.split_at(int_len);
        format!("{sign}{int}.{frac}")
    }
}

fn format_uuid(v: u128) -> String {
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Postgres's text output of a value of type `ty`.
pub(crate) fn output(ty: SqlType, v: &Value) -> String {
    match v {
        Value::Bool(b) => if *b { "t" } else { "f" }.into(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => format_float(*f, ty == SqlType::Float4),
        Value::Numeric(n) => n.to_string(),
        Value::Text(s) => s.clone(),
        Value::Uuid(u) => format_uuid(*u),
        Value::Date(d) => datetime::format_date(*d),
        Value::Time(t) => datetime::format_time(*t),
        Value::Timestamp(t) => datetime::format_timestamp(*t, ty == SqlType::Timestamptz),
        Value::Interval(i) => interval::format(i),
        Value::Array(a) => {
            let elem = ty.element().unwrap_or(SqlType::Text);
            array::format(a, |v| output(elem, v))
        }
    }
}

/// Postgres float order: NaN equals NaN and sorts above everything; -0 equals 0.
fn cmp_float(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// `character(n)` ignores trailing spaces when compared.
fn bpchar_trim(s: &str) -> &str {
    s.trim_end_matches(' ')
}

/// Compare two values of the same static type `ty`; None if their representations differ,
/// which type checking rules out.
pub(crate) fn compare(ty: SqlType, a: &Value, b: &Value) -> Option<Ordering> {
    Some(match (a, b) {
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Int(x), Value::Int(y)) => x.cmp(y),
        (Value::Float(x), Value::Float(y)) => cmp_float(*x, *y),
        (Value::Numeric(x), Value::Numeric(y)) => x.total_cmp(y),
        (Value::Text(x), Value::Text(y)) if ty == SqlType::Bpchar => {
            bpchar_trim(x).as_bytes().cmp(bpchar_trim(y).as_bytes())
        }
        (Value::Text(x), Value::Text(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Value::Uuid(x), Value::Uuid(y)) => x.cmp(y),
        (Value::Date(x), Value::Date(y)) => x.cmp(y),
        (Value::Time(x), Value::Time(y)) => x.cmp(y),
        (Value::Timestamp(x), Value::Timestamp(y)) => datetime::cmp_ts(*x, *y),
        (Value::Interval(x), Value::Interval(y)) => interval::compare(x, y),
        (Value::Array(x), Value::Array(y)) => {
            let elem = ty.element()?;
            array::compare(x, y, |a, b| compare(elem, a, b))?
        }
        _ => return None,
    })
}

pub(crate) fn check_int_range(ty: SqlType, v: i64) -> Result<i64, String> {
    let (lo, hi) = ty.int_range();
    if v < lo || v > hi {
        Err(format!("{} out of range", ty.int_label()))
    } else {
        Ok(v)
    }
}

/// Float arithmetic results are checked as Postgres does: a finite input must not give an
/// infinite result, and a product or quotient must not underflow to zero.
pub(crate) fn check_float(ty: SqlType, v: f64, inputs_finite: bool) -> Result<f64, String> {
    let v = if ty == SqlType::Float4 {
        f64::from(v as f32)
    } else {
        v
    };
    if v.is_infinite() && inputs_finite {
        return Err("value out of range: overflow".into());
    }
    Ok(v)
}

fn truncate_chars(s: &str, n: u32) -> &str {
    match s.char_indices().nth(n as usize) {
        Some((idx, _)) => &s[..idx],
        None => s,
    }
}

fn numeric_error(e: NumericError) -> String {
    match e {
        NumericError::DivisionByZero => "division by zero".into(),
        NumericError::Overflow => "numeric field overflow".into(),
        NumericError::Syntax => "invalid numeric value".into(),
        NumericError::ZeroToNegativePower => "zero raised to a negative power is undefined".into(),
        NumericError::ComplexPower => {
            "a negative number raised to a non-integer power yields a complex result".into()
        }
        NumericError::PowerTooLarge => {
            "numeric ^ result has too many digits for a where clause".into()
        }
        NumericError::NonIntegerPower => {
            "numeric ^ with an exponent that is not an integer is not supported (cast to float8)"
                .into()
        }
    }
}

fn float_to_int(v: f64, to: SqlType) -> Result<i64, String> {
    // Postgres rounds with rint(), i.e. half to even.
    let r = v.round_ties_even();
    let (lo, hi) = to.int_range();
    if r.is_nan() || r < lo as f64 || r >= -(lo as f64) || r > hi as f64 {
        return Err(format!("{} out of range", to.int_label()));
    }
    Ok(r as i64)
}

/// Convert `v` of type `from` as `CAST(v AS to)` does; None where Postgres yields NULL
/// (an infinite timestamp cast to time). Err is the user-facing reason.
pub(crate) fn cast(v: Value, from: SqlType, to: CastTarget) -> Result<Option<Value>, String> {
    if let (Value::Array(arr), Some(from_elem), Some(to_elem)) = (&v, from.element(), to.element())
    {
        // Element by element, each through the element cast; a NULL stays NULL.
        let items = arr
            .items
            .iter()
            .map(|item| match item {
                None => Ok(None),
                Some(x) => cast(x.clone(), from_elem, to_elem),
            })
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Some(Value::Array(Box::new(Array {
            dims: arr.dims.clone(),
            items,
        }))));
    }
    if let (Value::Timestamp(t), SqlType::Time) = (&v, to.ty)
        && (*t == datetime::TS_POS_INF || *t == datetime::TS_NEG_INF)
    {
        return Ok(None);
    }
    let converted = convert(v, from, to.ty)?;
    apply_typmod(converted, to).map(Some)
}

fn convert(v: Value, from: SqlType, to: SqlType) -> Result<Value, String> {
    use SqlType as T;
    if from == to {
        return Ok(v);
    }
    if to.is_string() {
        let text = match (&v, from) {
            // bool::text spells the words out, unlike bool's output function.
            (Value::Bool(b), _) => if *b { "true" } else { "false" }.to_string(),
            (Value::Text(s), T::Bpchar) => bpchar_trim(s).to_string(),
            (Value::Text(s), _) => s.clone(),
            _ => output(from, &v),
        };
        return Ok(Value::Text(text));
    }
    Ok(match v {
        Value::Text(s) => {
            let s = if from == T::Bpchar {
                bpchar_trim(&s)
            } else {
                &s
            };
            return parse_input(to, s);
        }
        Value::Int(i) => match to {
            T::Int2 | T::Int4 | T::Int8 => Value::Int(check_int_range(to, i)?),
            T::Float4 => Value::Float(f64::from(i as f32)),
            T::Float8 => Value::Float(i as f64),
            T::Numeric => Value::Numeric(Numeric::from_i64(i)),
            T::Bool => Value::Bool(i != 0),
            _ => return Err(no_cast(from, to)),
        },
        Value::Float(f) => match to {
            T::Int2 | T::Int4 | T::Int8 => Value::Int(float_to_int(f, to)?),
            T::Float4 => {
                let narrowed = f as f32;
                if narrowed.is_infinite() && f.is_finite() {
                    return Err("value out of range: overflow".into());
                }
                if narrowed == 0.0 && f != 0.0 {
                    return Err("value out of range: underflow".into());
                }
                Value::Float(f64::from(narrowed))
            }
            T::Float8 => Value::Float(f),
            T::Numeric => {
                let digits = if from == T::Float4 { 6 } else { 15 };
                Value::Numeric(Numeric::from_f64(f, digits))
            }
            _ => return Err(no_cast(from, to)),
        },
        Value::Numeric(n) => match to {
            T::Int2 | T::Int4 | T::Int8 => {
                let out_of_range = || format!("{} out of range", to.int_label());
                let Numeric::Finite(d) = &n else {
                    return Err(format!("cannot convert {n} to {}", to.int_label()));
                };
                Value::Int(check_int_range(
                    to,
                    d.to_i64_rounded().ok_or_else(out_of_range)?,
                )?)
            }
            // Through the text form and float8in/float4in, which refuse what does not fit.
            T::Float4 | T::Float8 => {
                let (v, label) = if to == T::Float4 {
                    (f64::from(n.to_f32()), "real")
                } else {
                    (n.to_f64(), "double precision")
                };
                if n.is_nonzero_finite() && (v.is_infinite() || v == 0.0) {
                    return Err(format!("\"{n}\" is out of range for type {label}"));
                }
                Value::Float(v)
            }
            _ => return Err(no_cast(from, to)),
        },
        Value::Bool(b) if to == T::Int4 => Value::Int(i64::from(b)),
        Value::Date(d) if matches!(to, T::Timestamp | T::Timestamptz) => Value::Timestamp(
            datetime::date_to_timestamp(d)
                .ok_or_else(|| "date out of range for timestamp".to_string())?,
        ),
        Value::Timestamp(t) => match to {
            // Timestamps without a zone are read in the session zone, pinned to UTC.
            T::Timestamp | T::Timestamptz => Value::Timestamp(t),
            T::Date => Value::Date(
                datetime::timestamp_to_date(t).ok_or_else(|| "date out of range".to_string())?,
            ),
            T::Time => Value::Time(t.rem_euclid(datetime::USECS_PER_DAY)),
            _ => return Err(no_cast(from, to)),
        },
        _ => return Err(no_cast(from, to)),
    })
}

fn no_cast(from: SqlType, to: SqlType) -> String {
    format!("cannot cast type {} to {}", from.name(), to.name())
}

fn apply_typmod(v: Value, to: CastTarget) -> Result<Value, String> {
    Ok(match (to.typmod, v) {
        (Typmod::None, v) => v,
        (_, Value::Array(mut arr)) => {
            let Some(elem) = to.element() else {
                return Ok(Value::Array(arr));
            };
            for item in arr.items.iter_mut() {
                if let Some(x) = item.take() {
                    *item = Some(apply_typmod(x, elem)?);
                }
            }
            Value::Array(arr)
        }
        (Typmod::Length(n), Value::Text(s)) if to.ty == SqlType::Varchar => {
            Value::Text(truncate_chars(&s, n).to_string())
        }
        (Typmod::Length(n), Value::Text(s)) => {
            let t = truncate_chars(&s, n);
            let pad = (n as usize).saturating_sub(t.chars().count());
            Value::Text(format!("{t}{}", " ".repeat(pad)))
        }
        (Typmod::Numeric { precision, scale }, Value::Numeric(n)) => {
            Value::Numeric(n.apply_typmod(precision, scale).map_err(numeric_error)?)
        }
        (_, v) => v,
    })
}

/// Case mapping as Postgres does it with a libc locale: one character at a time with the
/// simple Unicode mapping (no final-sigma rule, no expansions such as ß → SS), or ASCII only
/// under the "C" collation (the collation of `name` values).
pub(crate) fn change_case(s: &str, upper: bool, c_collation: bool) -> String {
    // ASCII maps the same under both rules, and the byte-wise mapping is far cheaper.
    if c_collation || s.is_ascii() {
        return if upper {
            s.to_ascii_uppercase()
        } else {
            s.to_ascii_lowercase()
        };
    }
    s.chars()
        .map(|c| {
            if upper {
                let mut mapped = c.to_uppercase();
                match (mapped.len(), mapped.next()) {
                    (1, Some(one)) => one,
                    _ => c,
                }
            } else {
                // İ lowers to "i̇" in full mapping; its simple mapping is the plain i.
                c.to_lowercase().next().unwrap_or(c)
            }
        })
        .collect()
}

pub(crate) fn numeric_op_error(e: NumericError) -> String {
    match e {
        NumericError::Overflow => "value overflows numeric format".into(),
        other => numeric_error(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_postgres() {
        let cases = [
            (1.0, "1"),
            (1.5, "1.5"),
            (0.1, "0.1"),
            (-0.0, "-0"),
            (1e15, "1e+15"),
            (123456789012345.0, "123456789012345"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1.2345678901234568e17, "1.2345678901234568e+17"),
            (1e100, "1e+100"),
            (f64::INFINITY, "Infinity"),
        ];
        for (v, want) in cases {
            assert_eq!(format_float(v, false), want, "{v}");
        }
        assert_eq!(format_float(f64::from(0.1f32), true), "0.1");
        assert_eq!(format_float(1e6, true), "1e+06");
        assert_eq!(format_float(123456.0, true), "123456");
    }

    #[test]
    fn booleans_accept_postgres_spellings() {
        for t in ["t", "TRUE", " yes ", "on", "1", "tr", "y"] {
            assert_eq!(parse_bool(t), Some(true), "{t}");
        }
        for f in ["f", "false", "no", "off", "of", "0", "n"] {
            assert_eq!(parse_bool(f), Some(false), "{f}");
        }
        for bad in ["", "o", "maybe", "2"] {
            assert_eq!(parse_bool(bad), None, "{bad}");
        }
    }

    #[test]
    fn uuids_accept_postgres_spellings_and_print_lowercase() {
        let want = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
        for s in [
            "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
            "{a0eebc99-9c0b4ef8-bb6d6bb9-bd380a11}",
            "a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
        ] {
            assert_eq!(parse_uuid(s).map(format_uuid).as_deref(), Some(want), "{s}");
        }
        for bad in [
            "a0eebc99",
            "{a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "-a0eebc999c0b4ef8bb6d6bb9bd380a11",
        ] {
            assert_eq!(parse_uuid(bad), None, "{bad}");
        }
    }

    #[test]
    fn integers_check_their_type_range() {
        assert_eq!(parse_int(SqlType::Int2, "32767"), Ok(32767));
        assert!(parse_int(SqlType::Int2, "32768").is_err());
        assert_eq!(
            parse_int(SqlType::Int8, " -9223372036854775808 "),
            Ok(i64::MIN)
        );
        assert!(parse_int(SqlType::Int8, "9223372036854775808").is_err());
        assert_eq!(
            parse_int(SqlType::Int4, "abc"),
            Err("invalid syntax for type int4: abc".to_string())
        );
    }

    #[test]
    fn case_mapping_is_per_character_like_libc() {
        assert_eq!(change_case("École ΑΣ", false, false), "école ασ");
        assert_eq!(change_case("straße", true, false), "STRAßE");
        assert_eq!(change_case("İ", false, false), "i");
        assert_eq!(change_case("Éa", false, true), "Éa");
        assert_eq!(change_case("éa", true, true), "éA");
    }

    #[test]
    fn float_to_int_rounds_half_to_even() {
        assert_eq!(float_to_int(2.5, SqlType::Int4), Ok(2));
        assert_eq!(float_to_int(3.5, SqlType::Int4), Ok(4));
        assert!(float_to_int(f64::NAN, SqlType::Int4).is_err());
        assert!(float_to_int(9.3e18, SqlType::Int8).is_err());
    }
}
