//! Exact decimal arithmetic with Postgres `numeric` semantics.
//!
//! Values are kept as base-10 digit vectors so comparisons are exact at any size
//! (`'1.10' = '1.1'`), and the display scale is kept because Postgres prints it
//! (`'1.10'::numeric::text` is `1.10`) and uses it to pick a division's result scale.

use std::cmp::Ordering;

/// Postgres's `NUMERIC_MAX_DISPLAY_SCALE`.
const MAX_DISPLAY_SCALE: u32 = 1000;
/// Postgres's `NUMERIC_MIN_SIG_DIGITS`: a quotient has at least this many significant digits.
const MIN_SIG_DIGITS: i64 = 16;
/// Postgres stores numerics in base 10000; division scale selection depends on that grouping.
const DEC_DIGITS: i64 = 4;
/// Postgres's `NUMERIC_DSCALE_MAX`.
const MAX_STORED_SCALE: u32 = 0x3FFF;
/// Postgres accepts exponents up to this size in numeric input.
const MAX_INPUT_EXPONENT: i64 = 1000;
/// The most significant digits `pow_int` computes.
const MAX_POWER_DIGITS: i64 = 10_000;
/// Postgres allows up to 131072 digits before the point and 16383 after.
const MAX_DIGITS: usize = 131_072 + 16_383;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Numeric {
    NaN,
    PosInf,
    NegInf,
    Finite(Decimal),
}

/// `±digits × 10^-scale`; `digits` is big-endian with no leading zeros, empty for zero.
/// Trailing zeros are significant for display only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decimal {
    neg: bool,
    digits: Vec<u8>,
    scale: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NumericError {
    Syntax,
    Overflow,
    DivisionByZero,
    ZeroToNegativePower,
    ComplexPower,
    /// A power whose result needs more than `MAX_POWER_DIGITS` digits.
    PowerTooLarge,
    /// A power with an exponent that is not an integer (Postgres computes those through
    /// logarithms, which volt does not).
    NonIntegerPower,
}

impl Decimal {
    fn zero(scale: u32) -> Decimal {
        Decimal {
            neg: false,
            digits: Vec::new(),
            scale,
        }
    }

    fn new(neg: bool, mut digits: Vec<u8>, scale: u32) -> Result<Decimal, NumericError> {
        let lead = digits.iter().take_while(|d| **d == 0).count();
        digits.drain(..lead);
        if digits.len() > MAX_DIGITS {
            return Err(NumericError::Overflow);
        }
        let neg = neg && !digits.is_empty();
        Ok(Decimal { neg, digits, scale })
    }

    pub(crate) fn from_i64(v: i64) -> Decimal {
        let digits = if v == 0 {
            Vec::new()
        } else {
            v.unsigned_abs()
                .to_string()
                .bytes()
                .map(|b| b - b'0')
                .collect()
        };
        Decimal {
            neg: v < 0,
            digits,
            scale: 0,
        }
    }

    fn is_zero(&self) -> bool {
        self.digits.is_empty()
    }

    /// The digit at decimal exponent `exp` (10^exp place).
    fn digit_at(&self, exp: i64) -> u8 {
        // digits[i] sits at exponent len - 1 - i - scale.
        let idx = self.digits.len() as i64 - 1 - self.scale as i64 - exp;
        if idx < 0 || idx >= self.digits.len() as i64 {
            0
        } else {
            self.digits[idx as usize]
        }
    }

    /// Decimal exponent of the leading digit; None for zero.
    fn lead_exp(&self) -> Option<i64> {
        if self.is_zero() {
            None
        } else {
            Some(self.digits.len() as i64 - 1 - self.scale as i64)
        }
    }

    fn cmp_abs(&self, other: &Decimal) -> Ordering {
        match (self.lead_exp(), other.lead_exp()) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Less,
            (Some(_), None) => Ordering::Greater,
            (Some(a), Some(b)) if a != b => a.cmp(&b),
            (Some(top), Some(_)) => {
                let low = -(self.scale.max(other.scale) as i64);
                let mut exp = top;
                while exp >= low {
                    match self.digit_at(exp).cmp(&other.digit_at(exp)) {
                        Ordering::Equal => exp -= 1,
                        ord => return ord,
                    }
                }
                Ordering::Equal
            }
        }
    }

    fn cmp_value(&self, other: &Decimal) -> Ordering {
        match (self.neg, other.neg) {
            (false, true) => Ordering::Greater,
            (true, false) => Ordering::Less,
            (false, false) => self.cmp_abs(other),
            (true, true) => other.cmp_abs(self),
        }
    }

    /// The unscaled digits at `scale` (which must be >= self.scale), little-endian.
    fn scaled_le(&self, scale: u32) -> Vec<u8> {
        let mut out = vec![0u8; (scale - self.scale) as usize];
        out.extend(self.digits.iter().rev());
        out
    }

    fn add_signed(&self, other: &Decimal, negate_other: bool) -> Result<Decimal, NumericError> {
        let scale = self.scale.max(other.scale);
        let a = self.scaled_le(scale);
        let b = other.scaled_le(scale);
        let other_neg = other.neg != negate_other && !other.is_zero();
        if self.neg == other_neg {
            return Decimal::new(self.neg, reversed(add_le(&a, &b)), scale);
        }
        match cmp_le(&a, &b) {
            Ordering::Equal => Ok(Decimal::zero(scale)),
            Ordering::Greater => Decimal::new(self.neg, reversed(sub_le(&a, &b)), scale),
            Ordering::Less => Decimal::new(other_neg, reversed(sub_le(&b, &a)), scale),
        }
    }

    fn mul(&self, other: &Decimal) -> Result<Decimal, NumericError> {
        let scale = self.scale + other.scale;
        if self.digits.len() + other.digits.len() > MAX_DIGITS {
            return Err(NumericError::Overflow);
        }
        let a: Vec<u8> = self.digits.iter().rev().copied().collect();
        let b: Vec<u8> = other.digits.iter().rev().copied().collect();
        let mut acc = vec![0u64; a.len() + b.len() + 1];
        for (i, &x) in a.iter().enumerate() {
            for (j, &y) in b.iter().enumerate() {
                acc[i + j] += u64::from(x) * u64::from(y);
            }
        }
        let mut out = Vec::with_capacity(acc.len());
        let mut carry = 0u64;
        for v in acc {
            let t = v + carry;
            out.push((t % 10) as u8);
            carry = t / 10;
        }
        while carry > 0 {
            out.push((carry % 10) as u8);
            carry /= 10;
        }
        let product = Decimal::new(self.neg != other.neg, reversed(out), scale)?;
        // Postgres rounds a product whose scale exceeds the storable maximum.
        Ok(if scale > MAX_STORED_SCALE {
            product.round(MAX_STORED_SCALE)
        } else {
            product
        })
    }

    /// Base-10000 weight and first base-10000 digit, as Postgres's `select_div_scale` sees them.
    fn nbase_head(&self) -> (i64, u32) {
        let Some(exp) = self.lead_exp() else {
            return (0, 0);
        };
        let weight = exp.div_euclid(DEC_DIGITS);
        let mut first = 0u32;
        let mut e = exp;
        while e >= weight * DEC_DIGITS {
            first = first * 10 + u32::from(self.digit_at(e));
            e -= 1;
        }
        (weight, first)
    }

    fn div(&self, other: &Decimal) -> Result<Decimal, NumericError> {
        if other.is_zero() {
            return Err(NumericError::DivisionByZero);
        }
        let (w1, f1) = self.nbase_head();
        let (w2, f2) = other.nbase_head();
        let mut qweight = w1 - w2;
        if f1 <= f2 {
            qweight -= 1;
        }
        let rscale = (MIN_SIG_DIGITS - qweight * DEC_DIGITS)
            .max(i64::from(self.scale))
            .max(i64::from(other.scale))
            .clamp(0, i64::from(MAX_DISPLAY_SCALE));
        self.div_scaled(other, rscale as u32)
    }

    /// The quotient rounded half away from zero to `rscale` digits (`div_var` with rounding).
    fn div_scaled(&self, other: &Decimal, rscale: u32) -> Result<Decimal, NumericError> {
        if other.is_zero() {
            return Err(NumericError::DivisionByZero);
        }
        let rscale = i64::from(rscale);
        // q = round(A × 10^(rscale + s2 - s1) / B), computed with one extra digit to round half away from zero.
        let shift = rscale + i64::from(other.scale) - i64::from(self.scale) + 1;
        let mut num = self.digits.clone();
        let mut den = other.digits.clone();
        if shift >= 0 {
            num.extend(std::iter::repeat_n(0, shift as usize));
        } else {
            den.extend(std::iter::repeat_n(0, (-shift) as usize));
        }
        if num.len() > MAX_DIGITS * 2 {
            return Err(NumericError::Overflow);
        }
        let q10 = long_div(&num, &den);
        // floor((floor(10x) + 5) / 10) rounds x half away from zero.
        let plus_half = add_le(&reversed(q10), &[5]);
        let q_le = plus_half.get(1..).unwrap_or_default().to_vec();
        Decimal::new(self.neg != other.neg, reversed(q_le), rscale as u32)
    }

    /// Postgres's base-10000 weight (0 for zero).
    fn weight(&self) -> i64 {
        self.nbase_head().0
    }

    /// Whether the value has no fractional part.
    fn is_integral(&self) -> bool {
        let frac = (self.scale as usize).min(self.digits.len());
        self.digits[self.digits.len() - frac..]
            .iter()
            .all(|d| *d == 0)
    }

    /// `base ~= f * 10^p` from the first four base-10000 digits, as `power_var_int` estimates
    /// a power's size; returns log10 of that.
    fn log10_estimate(&self) -> f64 {
        let weight = self.weight();
        let mut f = 0f64;
        let mut p = weight * DEC_DIGITS;
        for group in 0..4 {
            let g = weight - group;
            let mut v = 0u32;
            for e in (g * DEC_DIGITS..(g + 1) * DEC_DIGITS).rev() {
                v = v * 10 + u32::from(self.digit_at(e));
            }
            f = f * 10000.0 + f64::from(v);
            if group > 0 {
                p -= DEC_DIGITS;
            }
        }
        f.log10() + p as f64
    }

    fn one() -> Decimal {
        Decimal::from_i64(1)
    }

    /// Postgres 15's `power_var_int`: repeated squaring, each product rounded to enough
    /// digits for `rscale` (so large exponents stay cheap), a negative exponent by dividing
    /// one by the result.
    fn pow_int(&self, exp: i32, rscale: u32) -> Result<Decimal, NumericError> {
        match exp {
            0 => return Ok(Decimal::one().round(rscale)),
            1 => return Ok(self.round(rscale)),
            -1 => return Decimal::one().div_scaled(self, rscale),
            2 => return Ok(self.mul(self)?.round(rscale)),
            _ => {}
        }
        if self.is_zero() {
            if exp < 0 {
                return Err(NumericError::DivisionByZero);
            }
            return Ok(Decimal::zero(rscale));
        }
        let f = f64::from(exp) * self.log10_estimate();
        if f > f64::from(3 * i16::MAX as i32 * DEC_DIGITS as i32) {
            return Err(NumericError::Overflow);
        }
        if f + 1.0 < -f64::from(rscale) || f + 1.0 < -f64::from(MAX_DISPLAY_SCALE) {
            return Ok(Decimal::zero(rscale));
        }
        let mut sig_digits = 1 + i64::from(rscale) + f as i64;
        sig_digits += f64::from(exp).abs().ln() as i64 + 8;
        // Multiplication here is quadratic in the digits: a huge power evaluated for every
        // replicated row would stall the stream, so it is refused instead.
        if sig_digits > MAX_POWER_DIGITS {
            return Err(NumericError::PowerTooLarge);
        }
        let neg = exp < 0;
        let mut mask = exp.unsigned_abs();
        let mut base_prod = self.clone();
        let mut result = if mask & 1 == 1 {
            self.clone()
        } else {
            Decimal::one()
        };
        let local = |v: i64, cap: i64| v.min(cap).max(0) as u32;
        loop {
            mask >>= 1;
            if mask == 0 {
                break;
            }
            let scale = local(
                sig_digits - 2 * base_prod.weight() * DEC_DIGITS,
                2 * i64::from(base_prod.scale),
            );
            base_prod = base_prod.mul(&base_prod)?.round(scale);
            if mask & 1 == 1 {
                let scale = local(
                    sig_digits - (base_prod.weight() + result.weight()) * DEC_DIGITS,
                    i64::from(base_prod.scale) + i64::from(result.scale),
                );
                result = base_prod.mul(&result)?.round(scale);
            }
            if base_prod.weight() > i64::from(i16::MAX) || result.weight() > i64::from(i16::MAX) {
                if !neg {
                    return Err(NumericError::Overflow);
                }
                return Ok(Decimal::zero(rscale));
            }
        }
        if neg {
            Decimal::one().div_scaled(&result, rscale)
        } else {
            Ok(result.round(rscale))
        }
    }

    /// Round half away from zero to `scale` digits after the point.
    pub(crate) fn round(&self, scale: u32) -> Decimal {
        if scale >= self.scale {
            let mut digits = self.digits.clone();
            if !digits.is_empty() {
                digits.extend(std::iter::repeat_n(0, (scale - self.scale) as usize));
            }
            return Decimal {
                neg: self.neg,
                digits,
                scale,
            };
        }
        let drop = (self.scale - scale) as usize;
        if drop > self.digits.len() {
            return Decimal::zero(scale);
        }
        let keep = self.digits.len() - drop;
        let round_up = self.digits.get(keep).is_some_and(|d| *d >= 5);
        let mut le: Vec<u8> = self.digits[..keep].iter().rev().copied().collect();
        if round_up {
            le = add_le(&le, &[1]);
        }
        // Rounding cannot grow past MAX_DIGITS by more than one digit; keep the invariant anyway.
        Decimal::new(self.neg, reversed(le), scale).unwrap_or_else(|_| Decimal::zero(scale))
    }

    /// Integer value after rounding half away from zero, if it fits in i64.
    pub(crate) fn to_i64_rounded(&self) -> Option<i64> {
        let r = self.round(0);
        if r.digits.len() > 19 {
            return None;
        }
        let mut v: i128 = 0;
        for d in &r.digits {
            v = v * 10 + i128::from(*d);
        }
        if r.neg {
            v = -v;
        }
        i64::try_from(v).ok()
    }

    /// Number of digits before the decimal point (0 for |x| < 1).
    fn int_digits(&self) -> usize {
        self.digits.len().saturating_sub(self.scale as usize)
    }
}

impl Numeric {
    pub(crate) fn parse(input: &str) -> Result<Numeric, NumericError> {
        let s = input.trim_matches(|c: char| c.is_ascii_whitespace());
        let lower = s.to_ascii_lowercase();
        match lower.as_str() {
            "nan" => return Ok(Numeric::NaN),
            "infinity" | "+infinity" | "inf" | "+inf" => return Ok(Numeric::PosInf),
            "-infinity" | "-inf" => return Ok(Numeric::NegInf),
            _ => {}
        }
        let bytes = s.as_bytes();
        let mut i = 0;
        let mut neg = false;
        if let Some(&c) = bytes.first()
            && (c == b'+' || c == b'-')
        {
            neg = c == b'-';
            i = 1;
        }
        let mut digits = Vec::new();
        let mut scale: i64 = 0;
        let mut seen_digit = false;
        let mut seen_point = false;
        while i < bytes.len() {
            let c = bytes[i];
            if c.is_ascii_digit() {
                digits.push(c - b'0');
                seen_digit = true;
                if seen_point {
                    scale += 1;
                }
            } else if c == b'.' && !seen_point {
                seen_point = true;
            } else if c == b'_' && seen_digit && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
                // Postgres 16+ accepts underscores between digits.
            } else {
                break;
            }
            i += 1;
        }
        if !seen_digit {
            return Err(NumericError::Syntax);
        }
        if i < bytes.len() {
            if bytes[i] != b'e' && bytes[i] != b'E' {
                return Err(NumericError::Syntax);
            }
            let rest = &s[i + 1..];
            let exp_digits = rest.strip_prefix(['+', '-']).unwrap_or(rest);
            if exp_digits.is_empty() || !exp_digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(NumericError::Syntax);
            }
            // Digits that do not fit in an i64 are certainly beyond the exponent limit.
            let exp: i64 = rest.parse().map_err(|_| NumericError::Overflow)?;
            if exp.abs() > MAX_INPUT_EXPONENT {
                return Err(NumericError::Overflow);
            }
            scale -= exp;
        }
        if scale < 0 {
            digits.extend(std::iter::repeat_n(0, (-scale) as usize));
            scale = 0;
        }
        let scale = u32::try_from(scale).map_err(|_| NumericError::Overflow)?;
        Ok(Numeric::Finite(Decimal::new(neg, digits, scale)?))
    }

    pub(crate) fn from_i64(v: i64) -> Numeric {
        Numeric::Finite(Decimal::from_i64(v))
    }

    /// Postgres's float8 → numeric: the value printed with 15 significant digits (`%.15g`).
    pub(crate) fn from_f64(v: f64, sig_digits: usize) -> Numeric {
        if v.is_nan() {
            return Numeric::NaN;
        }
        if v.is_infinite() {
            return if v > 0.0 {
                Numeric::PosInf
            } else {
                Numeric::NegInf
            };
        }
        let text = format!("{:.*e}", sig_digits.saturating_sub(1), v);
        let Some((mantissa, exp)) = text.split_once('e') else {
            return Numeric::NaN;
        };
        // %g drops trailing zeros of the mantissa, which sets the display scale.
        let mantissa = if mantissa.contains('.') {
            mantissa.trim_end_matches('0').trim_end_matches('.')
        } else {
            mantissa
        };
        Numeric::parse(&format!("{mantissa}e{exp}")).unwrap_or(Numeric::NaN)
    }

    pub(crate) fn to_f64(&self) -> f64 {
        match self {
            Numeric::NaN => f64::NAN,
            Numeric::PosInf => f64::INFINITY,
            Numeric::NegInf => f64::NEG_INFINITY,
            Numeric::Finite(d) => {
                let text = format!(
                    "{}{}e-{}",
                    if d.neg { "-" } else { "" },
                    if d.digits.is_empty() {
                        "0".to_string()
                    } else {
                        d.digits.iter().map(|b| char::from(b'0' + b)).collect()
                    },
                    d.scale
                );
                text.parse().unwrap_or(f64::NAN)
            }
        }
    }

    /// Postgres converts numeric to float4 from the decimal text, rounding once.
    pub(crate) fn to_f32(&self) -> f32 {
        self.to_string().parse().unwrap_or(f32::NAN)
    }

    pub(crate) fn is_nan(&self) -> bool {
        matches!(self, Numeric::NaN)
    }

    /// Postgres orders NaN above every other value and equal to itself.
    pub(crate) fn total_cmp(&self, other: &Numeric) -> Ordering {
        fn rank(n: &Numeric) -> u8 {
            match n {
                Numeric::NegInf => 0,
                Numeric::Finite(_) => 1,
                Numeric::PosInf => 2,
                Numeric::NaN => 3,
            }
        }
        match (self, other) {
            (Numeric::Finite(a), Numeric::Finite(b)) => a.cmp_value(b),
            _ => rank(self).cmp(&rank(other)),
        }
    }

    pub(crate) fn add(&self, other: &Numeric) -> Result<Numeric, NumericError> {
        self.add_signed(other, false)
    }

    pub(crate) fn sub(&self, other: &Numeric) -> Result<Numeric, NumericError> {
        self.add_signed(other, true)
    }

    fn add_signed(&self, other: &Numeric, negate: bool) -> Result<Numeric, NumericError> {
        let other_sign = |n: &Numeric| -> Numeric {
            match (n, negate) {
                (Numeric::PosInf, true) => Numeric::NegInf,
                (Numeric::NegInf, true) => Numeric::PosInf,
                (n, _) => n.clone(),
            }
        };
        match (self, other) {
            (Numeric::Finite(a), Numeric::Finite(b)) => {
                Ok(Numeric::Finite(a.add_signed(b, negate)?))
            }
            (Numeric::NaN, _) | (_, Numeric::NaN) => Ok(Numeric::NaN),
            (Numeric::Finite(_), o) => Ok(other_sign(o)),
            (s, Numeric::Finite(_)) => Ok(s.clone()),
            (s, o) => {
                let o = other_sign(o);
                Ok(if *s == o { o } else { Numeric::NaN })
            }
        }
    }

    pub(crate) fn mul(&self, other: &Numeric) -> Result<Numeric, NumericError> {
        match (self, other) {
            (Numeric::Finite(a), Numeric::Finite(b)) => Ok(Numeric::Finite(a.mul(b)?)),
            (Numeric::NaN, _) | (_, Numeric::NaN) => Ok(Numeric::NaN),
            _ => {
                let (Some(a), Some(b)) = (self.signum(), other.signum()) else {
                    return Ok(Numeric::NaN);
                };
                // Infinity times zero is NaN; otherwise the signs decide.
                Ok(match a * b {
                    0 => Numeric::NaN,
                    s if s > 0 => Numeric::PosInf,
                    _ => Numeric::NegInf,
                })
            }
        }
    }

    pub(crate) fn div(&self, other: &Numeric) -> Result<Numeric, NumericError> {
        match (self, other) {
            (Numeric::NaN, _) | (_, Numeric::NaN) => Ok(Numeric::NaN),
            (Numeric::Finite(a), Numeric::Finite(b)) => Ok(Numeric::Finite(a.div(b)?)),
            (Numeric::Finite(_), _) => Ok(Numeric::Finite(Decimal::zero(0))),
            (_, Numeric::Finite(b)) => {
                if b.is_zero() {
                    return Err(NumericError::DivisionByZero);
                }
                let pos = matches!(self, Numeric::PosInf) != b.neg;
                Ok(if pos {
                    Numeric::PosInf
                } else {
                    Numeric::NegInf
                })
            }
            _ => Ok(Numeric::NaN),
        }
    }

    /// `numeric_power` (Postgres 15): POSIX's rules for NaN and infinities, then an integer
    /// exponent through `pow_int` at a scale of at least 16 digits; other exponents are
    /// `NonIntegerPower`.
    pub(crate) fn pow(&self, exp: &Numeric) -> Result<Numeric, NumericError> {
        let one = || Numeric::Finite(Decimal::one());
        let is_one = |n: &Numeric| matches!(n, Numeric::Finite(d) if !d.neg && d.cmp_abs(&Decimal::one()) == Ordering::Equal);
        if self.is_nan() {
            return Ok(if exp.signum() == Some(0) && !exp.is_special() {
                one()
            } else {
                Numeric::NaN
            });
        }
        if exp.is_nan() {
            return Ok(if is_one(self) { one() } else { Numeric::NaN });
        }
        let (sign1, sign2) = (self.signum().unwrap_or(0), exp.signum().unwrap_or(0));
        if sign1 == 0 && sign2 < 0 {
            return Err(NumericError::ZeroToNegativePower);
        }
        let (base, e) = match (self, exp) {
            (Numeric::Finite(b), Numeric::Finite(e)) => (b, e),
            _ => return Ok(self.pow_special(exp, sign2)),
        };
        if e.is_integral()
            && let Some(n) = e.to_i64_rounded().and_then(|n| i32::try_from(n).ok())
        {
            let rscale = (base.scale.max(MIN_SIG_DIGITS as u32)).min(MAX_DISPLAY_SCALE);
            return base.pow_int(n, rscale).map(Numeric::Finite);
        }
        if base.is_zero() {
            return Ok(Numeric::Finite(Decimal::zero(MIN_SIG_DIGITS as u32)));
        }
        if base.neg && !e.is_integral() {
            return Err(NumericError::ComplexPower);
        }
        Err(NumericError::NonIntegerPower)
    }

    /// NaN, an infinity, or an integer that fits int4: the exponents `pow` computes.
    pub(crate) fn is_int32_or_special(&self) -> bool {
        match self {
            Numeric::Finite(d) => {
                d.is_integral() && d.to_i64_rounded().is_some_and(|n| i32::try_from(n).is_ok())
            }
            _ => true,
        }
    }

    pub(crate) fn is_nonzero_finite(&self) -> bool {
        matches!(self, Numeric::Finite(d) if !d.is_zero())
    }

    fn is_special(&self) -> bool {
        !matches!(self, Numeric::Finite(_))
    }

    /// The infinity cases of `numeric_power`, for non-NaN operands one of which is infinite.
    fn pow_special(&self, exp: &Numeric, sign2: i8) -> Numeric {
        let one = Numeric::Finite(Decimal::one());
        let zero = Numeric::Finite(Decimal::zero(0));
        if let Numeric::Finite(b) = self
            && !b.neg
            && b.cmp_abs(&Decimal::one()) == Ordering::Equal
        {
            return one;
        }
        if let Numeric::Finite(e) = exp
            && e.is_zero()
        {
            return one;
        }
        if self.signum() == Some(0) && sign2 > 0 {
            return zero;
        }
        if matches!(exp, Numeric::PosInf | Numeric::NegInf) {
            let abs_gt_one = match self {
                Numeric::Finite(b) => {
                    if b.neg && b.cmp_abs(&Decimal::one()) == Ordering::Equal {
                        return one;
                    }
                    b.cmp_abs(&Decimal::one()) == Ordering::Greater
                }
                _ => true,
            };
            return if abs_gt_one == (sign2 > 0) {
                Numeric::PosInf
            } else {
                zero
            };
        }
        if matches!(self, Numeric::PosInf) {
            return if sign2 > 0 { Numeric::PosInf } else { zero };
        }
        // -Infinity to a finite power.
        if sign2 < 0 {
            return zero;
        }
        match exp {
            Numeric::Finite(e) if e.is_integral() && e.digit_at(0) % 2 == 1 => Numeric::NegInf,
            _ => Numeric::PosInf,
        }
    }

    pub(crate) fn neg(&self) -> Numeric {
        match self {
            Numeric::NaN => Numeric::NaN,
            Numeric::PosInf => Numeric::NegInf,
            Numeric::NegInf => Numeric::PosInf,
            Numeric::Finite(d) => Numeric::Finite(Decimal {
                neg: !d.neg && !d.is_zero(),
                digits: d.digits.clone(),
                scale: d.scale,
            }),
        }
    }

    fn signum(&self) -> Option<i8> {
        match self {
            Numeric::NaN => None,
            Numeric::PosInf => Some(1),
            Numeric::NegInf => Some(-1),
            Numeric::Finite(d) if d.is_zero() => Some(0),
            Numeric::Finite(d) => Some(if d.neg { -1 } else { 1 }),
        }
    }

    /// Apply a `numeric(precision, scale)` type modifier as Postgres does on a cast.
    pub(crate) fn apply_typmod(&self, precision: u32, scale: i32) -> Result<Numeric, NumericError> {
        let Numeric::Finite(d) = self else {
            // Postgres rejects infinities for constrained numerics but keeps NaN.
            return if self.is_nan() {
                Ok(Numeric::NaN)
            } else {
                Err(NumericError::Overflow)
            };
        };
        let rounded = if scale >= 0 {
            d.round(scale as u32)
        } else {
            // A negative scale rounds to the left of the point, then shows no fraction.
            let shift = scale.unsigned_abs();
            let mut r = Decimal {
                neg: d.neg,
                digits: d.digits.clone(),
                scale: d.scale + shift,
            }
            .round(0);
            if !r.is_zero() {
                r.digits.extend(std::iter::repeat_n(0, shift as usize));
            }
            r
        };
        let max_int_digits = i64::from(precision) - i64::from(scale);
        if !rounded.is_zero() && rounded.int_digits() as i64 > max_int_digits {
            return Err(NumericError::Overflow);
        }
        Ok(Numeric::Finite(rounded))
    }
}

impl std::fmt::Display for Numeric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = match self {
            Numeric::NaN => return f.write_str("NaN"),
            Numeric::PosInf => return f.write_str("Infinity"),
            Numeric::NegInf => return f.write_str("-Infinity"),
            Numeric::Finite(d) => d,
        };
        if d.neg {
            f.write_str("-")?;
        }
        let scale = d.scale as usize;
        let len = d.digits.len();
        let as_char = |b: &u8| char::from(b'0' + b);
        if len > scale {
            let int: String = d.digits[..len - scale].iter().map(as_char).collect();
            f.write_str(&int)?;
        } else {
            f.write_str("0")?;
        }
        if scale > 0 {
            f.write_str(".")?;
            let frac: String = std::iter::repeat_n(&0u8, scale.saturating_sub(len))
                .chain(d.digits[len.saturating_sub(scale)..].iter())
                .map(as_char)
                .collect();
            f.write_str(&frac)?;
        }
        Ok(())
    }
}

fn reversed(mut le: Vec<u8>) -> Vec<u8> {
    le.reverse();
    le
}

fn add_le(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(a.len().max(b.len()) + 1);
    let mut carry = 0;
    for i in 0..a.len().max(b.len()) {
        let s = a.get(i).copied().unwrap_or(0) + b.get(i).copied().unwrap_or(0) + carry;
        out.push(s % 10);
        carry = s / 10;
    }
    if carry > 0 {
        out.push(carry);
    }
    out
}

/// a - b for |a| >= |b|.
fn sub_le(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(a.len());
    let mut borrow = 0i8;
    for (i, &x) in a.iter().enumerate() {
        let mut d = x as i8 - b.get(i).copied().unwrap_or(0) as i8 - borrow;
        borrow = 0;
        if d < 0 {
            d += 10;
            borrow = 1;
        }
        out.push(d as u8);
    }
    out
}

fn cmp_le(a: &[u8], b: &[u8]) -> Ordering {
    let len = a.len().max(b.len());
    for i in (0..len).rev() {
        match a.get(i).unwrap_or(&0).cmp(b.get(i).unwrap_or(&0)) {
            Ordering::Equal => {}
            ord => return ord,
        }
    }
    Ordering::Equal
}

/// Integer quotient of big-endian digit strings (truncated), big-endian. `den` must not be zero.
fn long_div(num: &[u8], den: &[u8]) -> Vec<u8> {
    let mut den_le: Vec<u8> = den.iter().rev().copied().collect();
    while den_le.last() == Some(&0) {
        den_le.pop();
    }
    if den_le.is_empty() {
        return Vec::new();
    }
    let mut rem_le: Vec<u8> = Vec::new();
    let mut quotient = Vec::with_capacity(num.len());
    for &d in num {
        rem_le.insert(0, d);
        while rem_le.last() == Some(&0) {
            rem_le.pop();
        }
        let mut q = 0u8;
        while cmp_le(&rem_le, &den_le) != Ordering::Less {
            rem_le = sub_le(&rem_le, &den_le);
            while rem_le.last() == Some(&0) {
                rem_le.pop();
            }
            q += 1;
        }
        quotient.push(q);
    }
    quotient
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Numeric {
        match Numeric::parse(s) {
            Ok(v) => v,
            Err(e) => panic!("{s}: {e:?}"),
        }
    }

    #[test]
    fn numeric_equality_ignores_trailing_zeros() {
        assert_eq!(n("1.10").total_cmp(&n("1.1")), Ordering::Equal);
        assert_eq!(n("0.050").total_cmp(&n("5e-2")), Ordering::Equal);
        assert_eq!(n("-0").total_cmp(&n("0.000")), Ordering::Equal);
    }

    #[test]
    fn numeric_ordering_is_exact_beyond_float_precision() {
        assert_eq!(
            n("12345678901234567890.000000000000000001").total_cmp(&n("12345678901234567890")),
            Ordering::Greater
        );
        assert_eq!(n("-2.5").total_cmp(&n("-2.45")), Ordering::Less);
        assert_eq!(n("0.05").total_cmp(&n("0.5")), Ordering::Less);
        assert_eq!(n("NaN").total_cmp(&n("Infinity")), Ordering::Greater);
        assert_eq!(n("-Infinity").total_cmp(&n("-1e1000")), Ordering::Less);
    }

    #[test]
    fn numeric_display_keeps_scale() {
        assert_eq!(n("1.10").to_string(), "1.10");
        assert_eq!(n("  -0.050 ").to_string(), "-0.050");
        assert_eq!(n("1e3").to_string(), "1000");
        assert_eq!(n("1.5e-3").to_string(), "0.0015");
        assert_eq!(n("-0").to_string(), "0");
        assert_eq!(n(".5").to_string(), "0.5");
    }

    #[test]
    fn numeric_rejects_bad_input() {
        for bad in [
            "", "abc", "1.2.3", "1e", "1e+", "1e5x", "--1", "1 2", "e5", "+",
        ] {
            assert!(Numeric::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Numeric::parse("1e1001"), Err(NumericError::Overflow));
    }

    #[test]
    fn numeric_arithmetic_is_exact() {
        assert_eq!(
            n("0.1").add(&n("0.2")).map(|v| v.to_string()),
            Ok("0.3".into())
        );
        assert_eq!(
            n("1.50").sub(&n("2")).map(|v| v.to_string()),
            Ok("-0.50".into())
        );
        assert_eq!(
            n("1.5").mul(&n("-0.20")).map(|v| v.to_string()),
            Ok("-0.300".into())
        );
        assert_eq!(
            n("5").sub(&n("5.00")).map(|v| v.to_string()),
            Ok("0.00".into())
        );
    }

    #[test]
    fn numeric_division_uses_postgres_result_scale() {
        // Values checked against Postgres 16.
        assert_eq!(
            n("1").div(&n("3")).map(|v| v.to_string()),
            Ok("0.33333333333333333333".into())
        );
        assert_eq!(
            n("10").div(&n("4")).map(|v| v.to_string()),
            Ok("2.5000000000000000".into())
        );
        assert_eq!(
            n("2").div(&n("3")).map(|v| v.to_string()),
            Ok("0.66666666666666666667".into())
        );
        assert_eq!(
            n("-2").div(&n("3")).map(|v| v.to_string()),
            Ok("-0.66666666666666666667".into())
        );
        assert_eq!(
            n("123456").div(&n("7")).map(|v| v.to_string()),
            Ok("17636.571428571429".into())
        );
        assert_eq!(
            n("1.000").div(&n("0.5")).map(|v| v.to_string()),
            Ok("2.0000000000000000".into())
        );
        assert_eq!(Numeric::from_i64(0).total_cmp(&n("0")), Ordering::Equal);
        assert_eq!(
            n("1").div(&Numeric::from_i64(0)),
            Err(NumericError::DivisionByZero)
        );
        assert_eq!(n("1").div(&n("0")), Err(NumericError::DivisionByZero));
    }

    #[test]
    fn numeric_rounds_half_away_from_zero() {
        let Numeric::Finite(d) = n("2.5") else {
            panic!()
        };
        assert_eq!(d.to_i64_rounded(), Some(3));
        let Numeric::Finite(d) = n("-2.5") else {
            panic!()
        };
        assert_eq!(d.to_i64_rounded(), Some(-3));
        assert_eq!(
            n("1.005").apply_typmod(5, 2).map(|v| v.to_string()),
            Ok("1.01".into())
        );
        assert_eq!(n("123.4").apply_typmod(3, 1), Err(NumericError::Overflow));
        assert_eq!(
            n("1234").apply_typmod(4, -2).map(|v| v.to_string()),
            Ok("1200".into())
        );
    }

    #[test]
    fn float_to_numeric_uses_fifteen_digits() {
        assert_eq!(Numeric::from_f64(0.1, 15).to_string(), "0.1");
        assert_eq!(
            Numeric::from_f64(1.0 / 3.0, 15).to_string(),
            "0.333333333333333"
        );
        assert_eq!(
            Numeric::from_f64(1e20, 15).to_string(),
            "100000000000000000000"
        );
    }
}
