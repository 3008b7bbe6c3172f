//! Exact number parsing and comparison for numeric answers ("72", "-1,000", "$18.50",
//! "72.00", ".5", "3/4"). Decimals compare as exact rationals without allocating
//! (`72.00` == `72`); fractions go through `BigRational`.

use num_bigint::BigInt;
use num_rational::BigRational;
use num_traits::{Pow, Zero};

/// A decimal number as written: sign, integer digits (may contain commas between digits)
/// and fraction digits. At least one digit in total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decimal<'a> {
    pub neg: bool,
    pub int: &'a str,
    pub frac: &'a str,
}

/// A parsed numeric answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Num<'a> {
    Dec(Decimal<'a>),
    Frac(Decimal<'a>, Decimal<'a>),
}

fn int_digits<'a>(d: &Decimal<'a>) -> impl Iterator<Item = u8> + 'a + Clone {
    let int = d.int;
    int.bytes()
        .filter(|b| *b != b',')
        .skip_while(|b| *b == b'0')
}

fn frac_digits<'a>(d: &Decimal<'a>) -> &'a str {
    d.frac.trim_end_matches('0')
}

impl Decimal<'_> {
    pub fn is_zero(&self) -> bool {
        int_digits(self).next().is_none() && frac_digits(self).is_empty()
    }

    pub fn is_integer(&self) -> bool {
        frac_digits(self).is_empty()
    }

    /// Exact value.
    pub fn to_rational(&self) -> BigRational {
        let mut digits: Vec<u8> = int_digits(self).collect();
        let frac = frac_digits(self);
        digits.extend_from_slice(frac.as_bytes());
        let mut n = if digits.is_empty() {
            BigInt::zero()
        } else {
            BigInt::parse_bytes(&digits, 10).unwrap_or_default()
        };
        if self.neg {
            n = -n;
        }
        let d: BigInt = BigInt::from(10u32).pow(frac.len() as u32);
        BigRational::new(n, d)
    }

    /// Canonical text: no commas, no leading zeros, no trailing fraction zeros, no "-0".
    pub fn canonical(&self) -> String {
        let mut s = String::new();
        if self.neg && !self.is_zero() {
            s.push('-');
        }
        let int: Vec<u8> = int_digits(self).collect();
        if int.is_empty() {
            s.push('0');
        } else {
            s.push_str(std::str::from_utf8(&int).unwrap_or("0"));
        }
        let frac = frac_digits(self);
        if !frac.is_empty() {
            s.push('.');
            s.push_str(frac);
        }
        s
    }
}

/// Exact equality of two decimals, without allocating.
pub fn decimal_eq(a: &Decimal, b: &Decimal) -> bool {
    let (az, bz) = (a.is_zero(), b.is_zero());
    if az || bz {
        return az && bz;
    }
    a.neg == b.neg && int_digits(a).eq(int_digits(b)) && frac_digits(a) == frac_digits(b)
}

/// Parses the body of a decimal: digits with commas between digits, optional `.digits`.
/// Returns the decimal and the number of bytes consumed (0 when there is no number).
pub fn scan_decimal(s: &str, neg: bool) -> Option<(Decimal<'_>, usize)> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len()
        && (b[i].is_ascii_digit()
            || (b[i] == b','
                && i > 0
                && b[i - 1].is_ascii_digit()
                && i + 1 < b.len()
                && b[i + 1].is_ascii_digit()))
    {
        i += 1;
    }
    let int_end = i;
    let mut frac = "";
    if i < b.len() && b[i] == b'.' {
        let mut j = i + 1;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        if j > i + 1 {
            frac = &s[i + 1..j];
            i = j;
        }
    }
    if int_end == 0 && frac.is_empty() {
        return None;
    }
    Some((
        Decimal {
            neg,
            int: &s[..int_end],
            frac,
        },
        i,
    ))
}

/// Parses one signed decimal filling all of `s` (after trimming; a leading `$`, a trailing
/// `.` and surrounding whitespace are allowed).
pub fn parse_decimal(s: &str) -> Option<Decimal<'_>> {
    let s = s.trim();
    let s = s.strip_suffix('.').unwrap_or(s);
    let (neg, rest) = strip_sign_and_dollar(s);
    let (d, used) = scan_decimal(rest, neg)?;
    (used == rest.len()).then_some(d)
}

fn strip_sign_and_dollar(s: &str) -> (bool, &str) {
    let mut rest = s;
    let mut neg = false;
    let mut seen_sign = false;
    for _ in 0..2 {
        if let Some(r) = rest.strip_prefix('$') {
            rest = r;
        }
        if !seen_sign {
            if let Some(r) = rest
                .strip_prefix('-')
                .or_else(|| rest.strip_prefix('\u{2212}'))
            {
                neg = true;
                seen_sign = true;
                rest = r;
            } else if let Some(r) = rest.strip_prefix('+') {
                seen_sign = true;
                rest = r;
            }
        }
    }
    (neg, rest)
}

/// Parses a numeric answer: a decimal or a fraction `a/b` of decimals.
pub fn parse_number(s: &str) -> Option<Num<'_>> {
    let t = s.trim();
    let t = t.strip_suffix('.').unwrap_or(t);
    if let Some((a, b)) = t.split_once('/') {
        let a = parse_decimal(a)?;
        let b = parse_decimal(b)?;
        if b.neg {
            return None;
        }
        return Some(Num::Frac(a, b));
    }
    parse_decimal(t).map(Num::Dec)
}

impl Num<'_> {
    pub fn to_rational(&self) -> Option<BigRational> {
        match self {
            Num::Dec(d) => Some(d.to_rational()),
            Num::Frac(a, b) => {
                if b.is_zero() {
                    None
                } else {
                    Some(a.to_rational() / b.to_rational())
                }
            }
        }
    }

    /// Canonical text ("72.00" -> "72", "$1,000" -> "1000", "3/4" stays "3/4").
    pub fn canonical(&self) -> String {
        match self {
            Num::Dec(d) => d.canonical(),
            Num::Frac(a, b) => format!("{}/{}", a.canonical(), b.canonical()),
        }
    }
}

/// Exact equality (`72.00` == `72`, `0.75` == `3/4`); a zero denominator equals nothing.
pub fn num_eq(a: &Num, b: &Num) -> bool {
    match (a, b) {
        (Num::Dec(x), Num::Dec(y)) => decimal_eq(x, y),
        _ => match (a.to_rational(), b.to_rational()) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        },
    }
}

/// The voting key of an exact number, the same for every way of writing it: its shortest
/// decimal when it has one (`72`, `-0.5`, `0.375`: `72.00`, `-1/2` and `3/8` write the same
/// numbers), else its reduced fraction (`1/3`, `-7/6`). Decimals keep keys readable beside the
/// answers, and a terminating value has exactly one shortest decimal, so the key stays exact.
pub fn rational_key(q: &BigRational) -> String {
    /// Past this many decimals the fraction is shorter anyway.
    const MAX_DECIMALS: u32 = 40;
    if q.is_integer() {
        return q.numer().to_string();
    }
    // q is reduced: it terminates iff its denominator is 2^a * 5^b, after max(a, b) decimals.
    let mut d = q.denom().clone();
    let (two, five) = (BigInt::from(2u32), BigInt::from(5u32));
    let (mut a, mut b) = (0u32, 0u32);
    while (&d % &two).is_zero() && a <= MAX_DECIMALS {
        d /= &two;
        a += 1;
    }
    while (&d % &five).is_zero() && b <= MAX_DECIMALS {
        d /= &five;
        b += 1;
    }
    let k = a.max(b);
    if d != BigInt::from(1u32) || k > MAX_DECIMALS {
        return format!("{}/{}", q.numer(), q.denom());
    }
    let scaled = (q * BigRational::from_integer(BigInt::from(10u32).pow(k))).to_integer();
    let digits = scaled.magnitude().to_string();
    let k = k as usize;
    let padded = format!("{digits:0>width$}", width = k + 1);
    let (int, frac) = padded.split_at(padded.len() - k);
    let sign = if q < &BigRational::zero() { "-" } else { "" };
    format!("{sign}{int}.{frac}")
}

/// Digits are bounded so a 100 KB digit string cannot make grading slow.
pub const MAX_DIGITS: usize = 200;

/// True when the number is short enough to handle (see [`MAX_DIGITS`]).
pub fn reasonable(s: &str) -> bool {
    s.len() <= MAX_DIGITS * 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eq(a: &str, b: &str) -> bool {
        num_eq(&parse_number(a).unwrap(), &parse_number(b).unwrap())
    }

    #[test]
    fn decimals() {
        assert!(eq("72", "72.00"));
        assert!(eq("1,000", "1000"));
        assert!(eq("$1,000.", "1000"));
        assert!(eq("-5", "-5.0"));
        assert!(eq("-0", "0"));
        assert!(eq(".5", "0.50"));
        assert!(eq("007", "7"));
        assert!(!eq("72", "720"));
        assert!(!eq("-5", "5"));
        assert!(!eq("0.5", "5"));
        assert!(eq("3/4", "0.75"));
        assert!(eq("6/8", "3/4"));
        assert!(!eq("1/0", "1/0"));
        assert!(parse_number("").is_none());
        assert!(parse_number("abc").is_none());
        assert!(parse_number(".").is_none());
        assert!(parse_number("1e3").is_none());
        assert_eq!(parse_number("$-1,234.50").unwrap().canonical(), "-1234.5");
        assert_eq!(parse_number("-$3").unwrap().canonical(), "-3");
        assert_eq!(parse_number("0.000").unwrap().canonical(), "0");
    }

    #[test]
    fn rational_keys() {
        let key = |s: &str| rational_key(&parse_number(s).unwrap().to_rational().unwrap());
        assert_eq!(key("72.00"), "72");
        assert_eq!(key("-0"), "0");
        assert_eq!(key("1/2"), "0.5");
        assert_eq!(key(".5"), "0.5");
        assert_eq!(key("-1/2"), "-0.5");
        assert_eq!(key("3/8"), "0.375");
        assert_eq!(key("1/1024"), "0.0009765625");
        assert_eq!(key("-1/40"), "-0.025");
        assert_eq!(key("1/3"), "1/3");
        assert_eq!(key("-14/12"), "-7/6");
        assert_eq!(key("1,000"), "1000");
        assert_eq!(key("12.50"), "12.5");
    }
}
