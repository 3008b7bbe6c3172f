//! Voting keys of MATH answers. Majority voting groups answers by key, so the key follows the
//! plugin's grading mode: answers the mode's grader calls equal share a key, and answers it
//! calls different never do.
//!
//! - `hendrycks`: `is_equiv` is string equality after `_strip_string`, so the key is that
//!   string (`\dfrac12`, `1/2`, `0.5` -> `\frac{1}{2}`; `5.0` and `5` stay apart, as they grade).
//!   Where normalisation raises, `is_equiv` compares the raw strings: the key is then the raw
//!   answer behind `raised: ` (a space, which a normalised string never holds).
//! - `prm800k` (the default): the answer goes through the grader's own two normalisations in
//!   turn (the MATH one, then PRM800K's: `\boxed`, `\left`/`\right`, `\dfrac`/`\tfrac`,
//!   `\frac12`, spacing, `^\circ`, `\%`, `\$`, units, `\text{}`, `x=`, thousands commas, `5.0`),
//!   is split into tuple elements as the grader splits it, and each element gets a canonical
//!   form that mirrors the grader's element rule:
//!   - an integer (`5`, `1,000`) -> its value (`5`);
//!   - a fraction `a/b` in lowest terms -> its value as [`crate::number::rational_key`] writes
//!     it (`1/2` -> `0.5`, `1/3` -> `1/3`), the same key as `0.5` or `.5`, which the grader calls
//!     equal; any other fraction (`2/4`, `10/2`) keeps its text behind `frac:`, since the grader
//!     compares two fractions literally and rejects an integer answer written as a fraction;
//!   - any other expression -> its canonical polynomial ([`super::poly`]: `(x+1)^2` and
//!     `x^2+2x+1`, `2sqrt(2)` and `sqrt(8)`), behind `expr:` when that is an integer (the
//!     grader never lets `2+3` equal the integer `5`); with none, its text behind `text:`.
//!
//!   A tuple or interval keeps its brackets and its elements' order; a one-element tuple is its
//!   element, as the grader treats it.
//!
//! PRM800K's grader is not an equivalence relation (`0.5` equals both `1/2` and `2/4`, which
//! differ), so no key can merge every pair it accepts. These keys never merge a pair the
//! grader rejects, and merge every pair of the reference golden file it accepts
//! (tests/math_keys.rs checks both against every pair, in both modes).

use super::{hendrycks, poly, prm800k, Mode};
use crate::number;

/// Answers longer than this are graded wrong whatever they say; their key is their text.
const MAX_LEN: usize = 10_000;

/// The voting key of an extracted MATH answer under `mode`.
pub fn key(answer: &str, mode: Mode) -> String {
    if answer.len() > MAX_LEN {
        return format!("text:{}", answer.trim());
    }
    match mode {
        Mode::Hendrycks => hendrycks_key(answer),
        Mode::Prm800k => prm800k_key(answer),
    }
}

fn hendrycks_key(answer: &str) -> String {
    hendrycks::strip_string(answer).unwrap_or_else(|_| format!("raised: {answer}"))
}

fn prm800k_key(answer: &str) -> String {
    let normalised = prm800k::normalize(&prm800k::normalize_answer_mathd(answer));
    let elems = prm800k::split_tuple(&normalised);
    match elems.as_slice() {
        [] => "text:".to_string(),
        [one] => element_key(one),
        many => {
            let open = normalised.chars().next().unwrap_or('(');
            let close = normalised.chars().last().unwrap_or(')');
            let keys: Vec<String> = many.iter().map(|e| element_key(e)).collect();
            format!("{open}{}{close}", keys.join(","))
        }
    }
}

/// `a/b` with `a` and `b` coprime integers written without leading zeros and `b > 1`.
fn reduced_fraction(e: &str) -> Option<num_rational::BigRational> {
    let (a, b) = e.split_once('/')?;
    let canonical =
        |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()) && !s.starts_with('0');
    if !canonical(a.strip_prefix('-').unwrap_or(a)) || !canonical(b) {
        return None;
    }
    let n = num_bigint::BigInt::parse_bytes(a.as_bytes(), 10)?;
    let d = num_bigint::BigInt::parse_bytes(b.as_bytes(), 10)?;
    let q = num_rational::BigRational::new(n.clone(), d.clone());
    // `new` reduces: the text was in lowest terms when nothing changed.
    (q.denom() == &d && q.numer() == &n && !q.is_integer()).then_some(q)
}

fn element_key(e: &str) -> String {
    if e.is_empty() {
        return "text:".to_string();
    }
    if prm800k::is_frac(e) {
        return match reduced_fraction(e) {
            Some(q) => number::rational_key(&q),
            None => format!("frac:{e}"),
        };
    }
    if prm800k::str_is_int(e) {
        let digits = prm800k::strip_properly_formatted_commas(e);
        return match number::parse_decimal(&digits) {
            Some(d) if d.is_integer() => number::rational_key(&d.to_rational()),
            // Within the grader's 1e-7 of an integer but not one: equal only to the same value
            // written another way, never to the integer itself.
            Some(d) => format!("int:{}", number::rational_key(&d.to_rational())),
            None => format!("text:{e}"),
        };
    }
    if prm800k::should_allow_eval(e) {
        if let Some(p) = poly::canonical(e) {
            return match p.as_rational() {
                Some(q) if q.is_integer() => format!("expr:{}", number::rational_key(&q)),
                Some(q) => number::rational_key(&q),
                None => p.key(),
            };
        }
    }
    format!("text:{e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let k = |s: &str| key(s, Mode::Prm800k);
        assert_eq!(k("\\frac12"), "0.5");
        assert_eq!(k("\\dfrac{1}{2}"), "0.5");
        assert_eq!(k("0.5"), "0.5");
        assert_eq!(k("\\frac{2}{4}"), "frac:2/4");
        assert_eq!(k("\\left( 1, 2 \\right)"), "(1,2)");
        assert_eq!(k("[1, 2)"), "[1,2)");
        assert_eq!(k("(5)"), "5");
        assert_eq!(k("-5"), "-5");
        assert_eq!(k("\\sqrt{2}+3"), "sqrt(2)+3");
        assert_eq!(k("\\text{Devon}"), "text:devon");
        assert_eq!(k("2+3"), "expr:5");
        assert_eq!(k(""), "text:");
        let h = |s: &str| key(s, Mode::Hendrycks);
        assert_eq!(h("\\dfrac12"), "\\frac{1}{2}");
        assert_eq!(h("5.0"), "5.0");
        assert_eq!(h("\\frac"), "raised: \\frac");
    }

    #[test]
    fn reduced_fractions() {
        assert!(reduced_fraction("1/2").is_some());
        assert!(reduced_fraction("-3/4").is_some());
        assert!(reduced_fraction("2/4").is_none());
        assert!(reduced_fraction("4/2").is_none());
        assert!(reduced_fraction("3/1").is_none());
        assert!(reduced_fraction("01/2").is_none());
        assert!(reduced_fraction("1/02").is_none());
        assert!(reduced_fraction("1/2.").is_none());
    }
}
