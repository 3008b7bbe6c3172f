//! Exact canonical forms of the expressions [`super::expr`] reads, for voting keys: two
//! expressions that are the same polynomial get the same text (`x^2+2x+1` and `(x+1)^2`,
//! `2sqrt(2)` and `sqrt(8)`, `sqrt(3)/3` and `1/sqrt(3)`, `0.25` and `1/4`).
//!
//! A value is a sum of terms `c * sqrt(r) * x^a * y^b ...` with `c` rational, `r` a square-free
//! integer and integer exponents (negative ones from dividing by a single term). Square roots
//! are taken of non-negative rational constants only, division only by a single term, powers
//! only to integer constants: what these rules cannot bring to one form (`1/(1+sqrt(2))`,
//! `sqrt(x)`) has no canonical form here, and its key falls back to its text.

use std::collections::BTreeMap;

use num_bigint::BigInt;
use num_rational::BigRational;
use num_traits::{One, Signed, ToPrimitive, Zero};

use super::expr::{self, Algebra};

/// Bounds that keep a hostile answer cheap: coefficient size, term count, exponents, radicands.
const MAX_BITS: u64 = 4096;
const MAX_TERMS: usize = 64;
const MAX_EXP: i64 = 64;
/// Radicands are factored by trial division up to their cube root.
const MAX_RADICAND: u64 = 1_000_000_000_000;

/// One monomial: symbols with non-zero exponents (sorted by name) and a square-free radicand
/// (1: no root).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Mono {
    vars: Vec<(String, i64)>,
    rad: u64,
}

impl Mono {
    fn one() -> Mono {
        Mono {
            vars: Vec::new(),
            rad: 1,
        }
    }

    fn is_one(&self) -> bool {
        self.vars.is_empty() && self.rad == 1
    }
}

/// A canonical polynomial: monomial -> non-zero coefficient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poly(BTreeMap<Mono, BigRational>);

fn small(q: &BigRational) -> bool {
    q.numer().bits() <= MAX_BITS && q.denom().bits() <= MAX_BITS
}

impl Poly {
    fn constant(q: BigRational) -> Option<Poly> {
        let mut m = BTreeMap::new();
        if !q.is_zero() {
            if !small(&q) {
                return None;
            }
            m.insert(Mono::one(), q);
        }
        Some(Poly(m))
    }

    /// The value when it is a rational constant.
    pub fn as_rational(&self) -> Option<BigRational> {
        match self.0.len() {
            0 => Some(BigRational::zero()),
            1 => self
                .0
                .iter()
                .next()
                .filter(|(m, _)| m.is_one())
                .map(|(_, c)| c.clone()),
            _ => None,
        }
    }

    /// Whether some term has a square root of a non-square.
    pub fn has_root(&self) -> bool {
        self.0.keys().any(|m| m.rad > 1)
    }

    fn single_term(&self) -> Option<(&Mono, &BigRational)> {
        (self.0.len() == 1).then(|| self.0.iter().next()).flatten()
    }

    /// The text of the form: terms from the highest monomial down, `c*sqrt(r)*x^a*y`, with the
    /// coefficient as [`crate::number::rational_key`] writes numbers. Equal polynomials, equal
    /// text; different ones, different text.
    pub fn key(&self) -> String {
        if self.0.is_empty() {
            return "0".into();
        }
        let mut out = String::new();
        for (i, (m, c)) in self.0.iter().rev().enumerate() {
            if c.is_negative() {
                out.push('-');
            } else if i > 0 {
                out.push('+');
            }
            let mag = c.abs();
            let mut factors: Vec<String> = Vec::new();
            if !mag.is_one() || m.is_one() {
                factors.push(crate::number::rational_key(&mag));
            }
            if m.rad > 1 {
                factors.push(format!("sqrt({})", m.rad));
            }
            for (v, e) in &m.vars {
                factors.push(if *e == 1 {
                    v.clone()
                } else {
                    format!("{v}^{e}")
                });
            }
            out.push_str(&factors.join("*"));
        }
        out
    }
}

/// `n = s^2 * r` with `r` square-free, by trial division up to the cube root of `n`: what is left
/// then has at most two prime factors, so it is either a square or square-free.
fn square_free(n: u64) -> (u64, u64) {
    let (mut s, mut r, mut m) = (1u64, 1u64, n);
    let mut p = 2u64;
    while p.saturating_mul(p).saturating_mul(p) <= m {
        let mut k = 0;
        while m % p == 0 {
            m /= p;
            k += 1;
        }
        for _ in 0..k / 2 {
            s *= p;
        }
        if k % 2 == 1 {
            r *= p;
        }
        p += if p == 2 { 1 } else { 2 };
    }
    let q = m.isqrt();
    if q * q == m {
        s *= q;
    } else {
        r *= m;
    }
    (s, r)
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

fn mul_mono(a: &Mono, b: &Mono) -> Option<(Mono, u64)> {
    let mut vars: BTreeMap<String, i64> = a.vars.iter().cloned().collect();
    for (v, e) in &b.vars {
        *vars.entry(v.clone()).or_default() += e;
    }
    if vars.values().any(|e| e.abs() > MAX_EXP * MAX_EXP) {
        return None;
    }
    // Both radicands are square-free: with g = gcd, sqrt(a)*sqrt(b) = g*sqrt((a/g)*(b/g)), and
    // the two cofactors are coprime and square-free, so their product is too.
    let g = gcd(a.rad, b.rad);
    let rad = (a.rad / g).checked_mul(b.rad / g)?;
    if rad > MAX_RADICAND {
        return None;
    }
    Some((
        Mono {
            vars: vars.into_iter().filter(|(_, e)| *e != 0).collect(),
            rad,
        },
        g,
    ))
}

/// Canonical forms: the [`Algebra`] of [`Poly`].
struct Exact;

impl Exact {
    fn insert(out: &mut BTreeMap<Mono, BigRational>, m: Mono, c: BigRational) -> Option<()> {
        let e = out.entry(m).or_insert_with(BigRational::zero);
        *e += c;
        if !small(e) {
            return None;
        }
        out.retain(|_, c| !c.is_zero());
        (out.len() <= MAX_TERMS).then_some(())
    }

    /// The inverse of a single non-zero term: 1/(c*sqrt(r)*m) = sqrt(r)/(c*r) * m^-1.
    fn invert(&self, a: &Poly) -> Option<Poly> {
        let (m, c) = a.single_term()?;
        let inv = Mono {
            vars: m.vars.iter().map(|(v, e)| (v.clone(), -e)).collect(),
            rad: m.rad,
        };
        let coef = (c * BigRational::from_integer(BigInt::from(m.rad))).recip();
        let mut out = BTreeMap::new();
        Self::insert(&mut out, inv, coef)?;
        Some(Poly(out))
    }
}

impl Algebra for Exact {
    type V = Poly;

    fn number(&self, literal: &str) -> Option<Poly> {
        Poly::constant(crate::number::parse_decimal(literal)?.to_rational())
    }

    fn symbol(&self, name: &str) -> Option<Poly> {
        let mut m = BTreeMap::new();
        m.insert(
            Mono {
                vars: vec![(name.to_string(), 1)],
                rad: 1,
            },
            BigRational::one(),
        );
        Some(Poly(m))
    }

    fn add(&self, a: Poly, b: Poly) -> Option<Poly> {
        let mut out = a.0;
        for (m, c) in b.0 {
            Self::insert(&mut out, m, c)?;
        }
        Some(Poly(out))
    }

    fn neg(&self, a: Poly) -> Poly {
        Poly(a.0.into_iter().map(|(m, c)| (m, -c)).collect())
    }

    fn mul(&self, a: Poly, b: Poly) -> Option<Poly> {
        let mut out = BTreeMap::new();
        for (ma, ca) in &a.0 {
            for (mb, cb) in &b.0 {
                let (m, g) = mul_mono(ma, mb)?;
                let c = ca * cb * BigRational::from_integer(BigInt::from(g));
                Self::insert(&mut out, m, c)?;
            }
        }
        Some(Poly(out))
    }

    fn div(&self, a: Poly, b: Poly) -> Option<Poly> {
        let inv = self.invert(&b)?;
        self.mul(a, inv)
    }

    fn pow(&self, base: Poly, exponent: Poly) -> Option<Poly> {
        let e = exponent.as_rational()?;
        if !e.is_integer() {
            return None;
        }
        let n = e.to_integer().to_i64()?;
        if n.abs() > MAX_EXP {
            return None;
        }
        let base = if n < 0 { self.invert(&base)? } else { base };
        let mut r = Poly::constant(BigRational::one())?;
        for _ in 0..n.unsigned_abs() {
            r = self.mul(r, base.clone())?;
        }
        Some(r)
    }

    fn sqrt(&self, a: Poly) -> Option<Poly> {
        let q = a.as_rational()?;
        if q.is_negative() {
            return None;
        }
        // sqrt(p/d) = sqrt(p*d)/d
        let pd = (q.numer() * q.denom()).to_u64()?;
        if pd > MAX_RADICAND {
            return None;
        }
        let (s, r) = square_free(pd);
        let c = BigRational::new(BigInt::from(s), q.denom().clone());
        let mut out = BTreeMap::new();
        if !c.is_zero() {
            Self::insert(
                &mut out,
                Mono {
                    vars: vec![],
                    rad: r,
                },
                c,
            )?;
        }
        Some(Poly(out))
    }
}

/// The canonical form of a normalised expression (as PRM800K's normaliser leaves it), `None`
/// when it has none here. A decimal literal beside a square root has none either: sympy's
/// floats never simplify to exactly 0 against an irrational, so such answers equal nothing
/// but themselves.
pub fn canonical(s: &str) -> Option<Poly> {
    let (toks, has_float) = expr::tokenize(s)?;
    if toks.is_empty() {
        return None;
    }
    let p = expr::parse(&toks, &Exact)?;
    (!(has_float && p.has_root())).then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Option<String> {
        canonical(s).map(|p| p.key())
    }

    #[test]
    fn forms() {
        assert_eq!(key("x^2+2x+1"), key("(x+1)^2"));
        assert_eq!(key("(x+1)^2").as_deref(), Some("x^2+2*x+1"));
        assert_eq!(key("2sqrt(2)"), key("sqrt(8)"));
        assert_eq!(key("sqrt(8)").as_deref(), Some("2*sqrt(2)"));
        assert_eq!(key("sqrt(3)/3"), key("1/sqrt(3)"));
        assert_eq!(key("1/sqrt(3)").as_deref(), Some("1/3*sqrt(3)"));
        assert_eq!(key("sqrt(2)*sqrt(6)").as_deref(), Some("2*sqrt(3)"));
        assert_eq!(key("0.25"), key("1/4"));
        assert_eq!(key("pi/2"), key("1/2pi"));
        assert_eq!(key("x/x").as_deref(), Some("1"));
        assert_eq!(key("2^-1").as_deref(), Some("0.5"));
        assert_eq!(key("-2^2").as_deref(), Some("-4"));
        assert_eq!(key("3-x").as_deref(), Some("-x+3"));
        assert_eq!(key("sqrt(1/4)").as_deref(), Some("0.5"));
        assert_eq!(key("sqrt(0)").as_deref(), Some("0"));
        assert_eq!(key("x-x").as_deref(), Some("0"));
        assert_ne!(key("pi"), key("3.14159"));
        assert_ne!(key("x^2"), key("x"));
        assert_ne!(key("x+1"), key("x-1"));
        // No canonical form here: the key falls back to the text.
        assert_eq!(key("1.5sqrt(2)"), None);
        assert_eq!(key("1/(1+sqrt(2))"), None);
        assert_eq!(key("sqrt(x)"), None);
        assert_eq!(key("sqrt(-1)"), None);
        assert_eq!(key("1/0"), None);
        assert_eq!(key("2^999999"), None);
        assert_eq!(key("3,5"), None);
        assert_eq!(key(""), None);
        assert_eq!(key("sin(x)"), None);
    }

    #[test]
    fn square_free_parts() {
        assert_eq!(square_free(8), (2, 2));
        assert_eq!(square_free(72), (6, 2));
        assert_eq!(square_free(1), (1, 1));
        assert_eq!(square_free(0), (0, 1));
        assert_eq!(square_free(999_966_000_289), (999_983, 1));
        assert_eq!(square_free(2 * 999_983 * 999_983), (999_983, 2));
    }
}
