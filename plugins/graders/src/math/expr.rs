//! A small exact evaluator standing in for PRM800K's `sympy.simplify(a - b) == 0`.
//!
//! It parses what PRM800K's normaliser leaves (`2sqrt(2)`, `x^2+2x+1`, `1/2`, `pi/4`) with
//! sympy's conventions (`^` is power, implicit multiplication, every letter a symbol, `pi` and
//! `sqrt` names) and evaluates both sides exactly on rationals at three fixed points for the
//! symbols (polynomial identity testing). Square roots of non-squares are evaluated in `f64`
//! and compared with a 1e-9 relative tolerance, and only when neither side has a decimal
//! literal (sympy's floats never simplify to exactly 0 against an irrational).
//! Anything else (functions, factorials, `=`, sets, tuples) is "cannot decide" => not equal.
//!
//! The parser is generic over an [`Algebra`]: evaluation at a point here, exact canonical forms
//! for voting keys in [`super::poly`]; both read an expression the same way.

use num_bigint::BigInt;
use num_rational::BigRational;
use num_traits::{One, Signed, ToPrimitive, Zero};

#[derive(Debug, Clone)]
enum V {
    Q(BigRational),
    F(f64),
}

const MAX_BITS: u64 = 4096;
const TRIALS: usize = 3;

impl V {
    fn f(&self) -> f64 {
        match self {
            V::Q(q) => q.to_f64().unwrap_or(f64::NAN),
            V::F(f) => *f,
        }
    }
}

fn check(q: BigRational) -> Option<V> {
    if q.numer().bits() > MAX_BITS || q.denom().bits() > MAX_BITS {
        None
    } else {
        Some(V::Q(q))
    }
}

fn finite(f: f64) -> Option<V> {
    f.is_finite().then_some(V::F(f))
}

fn add(a: V, b: V) -> Option<V> {
    match (a, b) {
        (V::Q(x), V::Q(y)) => check(x + y),
        (a, b) => finite(a.f() + b.f()),
    }
}

fn mul(a: V, b: V) -> Option<V> {
    match (a, b) {
        (V::Q(x), V::Q(y)) => check(x * y),
        (a, b) => finite(a.f() * b.f()),
    }
}

fn neg(a: V) -> V {
    match a {
        V::Q(x) => V::Q(-x),
        V::F(f) => V::F(-f),
    }
}

fn div(a: V, b: V) -> Option<V> {
    match (a, b) {
        (V::Q(x), V::Q(y)) => {
            if y.is_zero() {
                None
            } else {
                check(x / y)
            }
        }
        (a, b) => {
            let d = b.f();
            if d == 0.0 {
                None
            } else {
                finite(a.f() / d)
            }
        }
    }
}

fn isqrt_exact(n: &BigInt) -> Option<BigInt> {
    if n.is_negative() {
        return None;
    }
    let r = n.sqrt();
    (&r * &r == *n).then_some(r)
}

fn sqrt(a: V) -> Option<V> {
    match a {
        V::Q(q) => {
            if q.is_negative() {
                return None;
            }
            match (isqrt_exact(q.numer()), isqrt_exact(q.denom())) {
                (Some(n), Some(d)) => Some(V::Q(BigRational::new(n, d))),
                _ => finite(q.to_f64()?.sqrt()),
            }
        }
        V::F(f) => (f >= 0.0).then(|| V::F(f.sqrt())),
    }
}

fn pow(a: V, b: V) -> Option<V> {
    if let (V::Q(x), V::Q(e)) = (&a, &b) {
        if e.is_integer() {
            let n = e.to_integer().to_i64()?;
            if n.unsigned_abs() > 64 {
                return None;
            }
            if x.is_zero() && n < 0 {
                return None;
            }
            let mut r = BigRational::one();
            for _ in 0..n.unsigned_abs() {
                r *= x;
                if r.numer().bits() > MAX_BITS || r.denom().bits() > MAX_BITS {
                    return None;
                }
            }
            return Some(V::Q(if n < 0 { r.recip() } else { r }));
        }
    }
    let (x, e) = (a.f(), b.f());
    if x <= 0.0 {
        return None;
    }
    finite(x.powf(e))
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    Num(String),
    Sym(String),
    Sqrt,
    Op(char),
    Pow,
    LParen,
    RParen,
}

/// The tokens of `s`, and whether it has a decimal literal with a point; `None` on a character or
/// function name the evaluator does not know.
pub(crate) fn tokenize(s: &str) -> Option<(Vec<Tok>, bool)> {
    let mut toks = Vec::new();
    let mut has_float = false;
    let cs: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < cs.len() {
        if toks.len() > 400 {
            return None;
        }
        let c = cs[i];
        if c.is_ascii_digit() || (c == '.' && i + 1 < cs.len() && cs[i + 1].is_ascii_digit()) {
            let start = i;
            while i < cs.len() && cs[i].is_ascii_digit() {
                i += 1;
            }
            if i < cs.len() && cs[i] == '.' {
                has_float = true;
                i += 1;
                while i < cs.len() && cs[i].is_ascii_digit() {
                    i += 1;
                }
            }
            if i - start > 200 {
                return None;
            }
            toks.push(Tok::Num(cs[start..i].iter().collect()));
            continue;
        }
        if c.is_alphabetic() {
            let start = i;
            while i < cs.len() && cs[i].is_alphabetic() {
                i += 1;
            }
            let word: String = cs[start..i].iter().collect();
            match word.as_str() {
                "sqrt" => toks.push(Tok::Sqrt),
                "pi" => toks.push(Tok::Sym(word)),
                "sin" | "cos" | "tan" | "log" | "ln" | "exp" | "sec" | "csc" | "cot" | "arcsin"
                | "arccos" | "arctan" | "oo" | "lim" | "max" | "min" | "gcd" | "lcm" => {
                    return None
                }
                _ => {
                    for ch in word.chars() {
                        toks.push(Tok::Sym(ch.to_string()));
                    }
                }
            }
            continue;
        }
        match c {
            '+' | '-' | '/' => toks.push(Tok::Op(c)),
            '*' => {
                if i + 1 < cs.len() && cs[i + 1] == '*' {
                    toks.push(Tok::Pow);
                    i += 1;
                } else {
                    toks.push(Tok::Op('*'));
                }
            }
            '^' => toks.push(Tok::Pow),
            '(' => toks.push(Tok::LParen),
            ')' => toks.push(Tok::RParen),
            ' ' => {}
            _ => return None,
        }
        i += 1;
    }
    if toks.len() > 400 {
        return None;
    }
    Some((toks, has_float))
}

/// What the parser computes with; `None` where an operation is undefined or unsupported.
pub(crate) trait Algebra {
    type V;
    /// A decimal literal (`12`, `0.5`).
    fn number(&self, literal: &str) -> Option<Self::V>;
    /// A symbol: one letter, or `pi`.
    fn symbol(&self, name: &str) -> Option<Self::V>;
    fn add(&self, a: Self::V, b: Self::V) -> Option<Self::V>;
    fn neg(&self, a: Self::V) -> Self::V;
    fn mul(&self, a: Self::V, b: Self::V) -> Option<Self::V>;
    fn div(&self, a: Self::V, b: Self::V) -> Option<Self::V>;
    fn pow(&self, base: Self::V, exponent: Self::V) -> Option<Self::V>;
    fn sqrt(&self, a: Self::V) -> Option<Self::V>;
}

struct Parser<'a, A: Algebra> {
    toks: &'a [Tok],
    pos: usize,
    alg: &'a A,
    depth: usize,
}

impl<A: Algebra> Parser<'_, A> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn expr(&mut self) -> Option<A::V> {
        self.depth += 1;
        if self.depth > 100 {
            return None;
        }
        let mut v = self.term()?;
        while let Some(Tok::Op(c @ ('+' | '-'))) = self.peek().cloned() {
            self.pos += 1;
            let r = self.term()?;
            v = if c == '+' {
                self.alg.add(v, r)?
            } else {
                self.alg.add(v, self.alg.neg(r))?
            };
        }
        self.depth -= 1;
        Some(v)
    }

    fn starts_atom(&self) -> bool {
        matches!(
            self.peek(),
            Some(Tok::Num(_) | Tok::Sym(_) | Tok::Sqrt | Tok::LParen)
        )
    }

    fn term(&mut self) -> Option<A::V> {
        let mut v = self.factor()?;
        loop {
            match self.peek() {
                Some(Tok::Op('*')) => {
                    self.pos += 1;
                    let r = self.factor()?;
                    v = self.alg.mul(v, r)?;
                }
                Some(Tok::Op('/')) => {
                    self.pos += 1;
                    let r = self.factor()?;
                    v = self.alg.div(v, r)?;
                }
                _ if self.starts_atom() => {
                    let r = self.factor()?;
                    v = self.alg.mul(v, r)?;
                }
                _ => return Some(v),
            }
        }
    }

    fn factor(&mut self) -> Option<A::V> {
        self.depth += 1;
        if self.depth > 200 {
            return None;
        }
        let v = self.factor_inner();
        self.depth -= 1;
        v
    }

    fn factor_inner(&mut self) -> Option<A::V> {
        match self.peek() {
            Some(Tok::Op('-')) => {
                self.pos += 1;
                let v = self.factor()?;
                Some(self.alg.neg(v))
            }
            Some(Tok::Op('+')) => {
                self.pos += 1;
                self.factor()
            }
            _ => self.power(),
        }
    }

    fn power(&mut self) -> Option<A::V> {
        let base = self.atom()?;
        if let Some(Tok::Pow) = self.peek() {
            self.pos += 1;
            let e = self.factor()?;
            return self.alg.pow(base, e);
        }
        Some(base)
    }

    fn atom(&mut self) -> Option<A::V> {
        let t = self.peek()?.clone();
        self.pos += 1;
        match t {
            Tok::Num(n) => self.alg.number(&n),
            Tok::Sym(s) => self.alg.symbol(&s),
            Tok::Sqrt => {
                // The operand of an implicitly applied function (`sqrt(2)`, `sqrt 2`).
                let arg = self.power()?;
                self.alg.sqrt(arg)
            }
            Tok::LParen => {
                let v = self.expr()?;
                match self.peek() {
                    Some(Tok::RParen) => {
                        self.pos += 1;
                        Some(v)
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

/// Parses all of `toks` with `alg`; `None` when a token is left over or an operation fails.
pub(crate) fn parse<A: Algebra>(toks: &[Tok], alg: &A) -> Option<A::V> {
    let mut p = Parser {
        toks,
        pos: 0,
        alg,
        depth: 0,
    };
    let v = p.expr()?;
    (p.pos == toks.len()).then_some(v)
}

/// Evaluation with every symbol at a fixed rational point (one per trial).
struct Point(usize);

impl Algebra for Point {
    type V = V;
    fn number(&self, literal: &str) -> Option<V> {
        let d = crate::number::parse_decimal(literal)?;
        Some(V::Q(d.to_rational()))
    }
    fn symbol(&self, name: &str) -> Option<V> {
        Some(V::Q(var_value(name, self.0)))
    }
    fn add(&self, a: V, b: V) -> Option<V> {
        add(a, b)
    }
    fn neg(&self, a: V) -> V {
        neg(a)
    }
    fn mul(&self, a: V, b: V) -> Option<V> {
        mul(a, b)
    }
    fn div(&self, a: V, b: V) -> Option<V> {
        div(a, b)
    }
    fn pow(&self, base: V, exponent: V) -> Option<V> {
        pow(base, exponent)
    }
    fn sqrt(&self, a: V) -> Option<V> {
        sqrt(a)
    }
}

fn var_value(name: &str, trial: usize) -> BigRational {
    let h = crate::fnv1a64(name) ^ ((trial as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let num = (h % 9973) as i64 + 2;
    let den = ((h >> 20) % 89) as i64 + 3 + trial as i64;
    BigRational::new(BigInt::from(num), BigInt::from(den))
}

fn eval(toks: &[Tok], trial: usize) -> Option<V> {
    parse(toks, &Point(trial))
}

/// Whether the two normalised expressions denote the same value for every assignment of
/// their symbols, as far as this evaluator can tell. `false` when it cannot decide.
pub fn equal(a: &str, b: &str) -> bool {
    let (Some((ta, fa)), Some((tb, fb))) = (tokenize(a), tokenize(b)) else {
        return false;
    };
    if ta.is_empty() || tb.is_empty() {
        return false;
    }
    for trial in 0..TRIALS {
        let (Some(x), Some(y)) = (eval(&ta, trial), eval(&tb, trial)) else {
            return false;
        };
        let same = match (&x, &y) {
            (V::Q(p), V::Q(q)) => p == q,
            _ => {
                if fa || fb {
                    return false;
                }
                let (p, q) = (x.f(), y.f());
                (p - q).abs() <= 1e-9 * p.abs().max(q.abs()).max(1.0)
            }
        };
        if !same {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values() {
        assert!(equal("2sqrt(2)", "sqrt(8)"));
        assert!(equal("sqrt(3)/3", "1/sqrt(3)"));
        assert!(equal("x^2+2x+1", "(x+1)^2"));
        assert!(equal("(x+1)**2", "x**2+2*x+1"));
        assert!(equal("0.25", "1/4"));
        assert!(equal("a", "a"));
        assert!(equal("-2^2", "-4"));
        assert!(equal("2^-1", "1/2"));
        assert!(equal("pi/2", "1/2pi"));
        assert!(!equal("pi", "3.14159"));
        assert!(!equal("1.41421356237", "sqrt(2)"));
        assert!(!equal("x^2", "x"));
        assert!(!equal("1/0", "1/0"));
        assert!(!equal("sin(x)", "sin(x)"));
        assert!(!equal("3,5", "5,3"));
        assert!(!equal("", ""));
        assert!(!equal("2^999999", "2^999999"));
        assert!(!equal("((((((", "1"));
    }
}
