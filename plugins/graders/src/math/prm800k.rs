//! PRM800K's `grader.grade_answer` (openai/prm800k `grader.py` + `math_normalize.py`),
//! reproduced step by step; `sympy.simplify` is replaced by [`super::expr::equal`] and
//! pylatexenc by [`super::latex::latex_to_text`].

use super::{expr, hendrycks, latex};

const UNITS: &[&str] = &[
    "degree",
    "cm",
    "centimeter",
    "meter",
    "mile",
    "second",
    "minute",
    "hour",
    "day",
    "week",
    "month",
    "year",
    "foot",
    "feet",
    "inch",
    "yard",
];

/// `^\\text\{(?P<text>.+?)\}$` on the whole string: the inner text when it matches.
fn enclosing_text(s: &str) -> Option<&str> {
    let inner = s.strip_prefix("\\text{")?.strip_suffix('}')?;
    (!inner.is_empty() && !inner.contains('\n')).then_some(inner)
}

/// `math_normalize.normalize_answer`.
pub fn normalize_answer_mathd(answer: &str) -> String {
    let mut a = answer.trim();
    if let Some(t) = enclosing_text(a) {
        a = t.trim();
    }
    hendrycks::strip_string(a).unwrap_or_else(|_| a.to_string())
}

/// `re.sub(f"{unit}(es)?(s)? *(\^[0-9]+)?", "", expr)`.
fn remove_unit(s: &str, unit: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(p) = rest.find(unit) {
        out.push_str(&rest[..p]);
        let mut r = &rest[p + unit.len()..];
        if let Some(x) = r.strip_prefix("es") {
            r = x;
        }
        if let Some(x) = r.strip_prefix('s') {
            r = x;
        }
        r = r.trim_start_matches(' ');
        if let Some(x) = r.strip_prefix('^') {
            let n = x.bytes().take_while(|b| b.is_ascii_digit()).count();
            if n > 0 {
                r = &x[n..];
            }
        }
        rest = r;
    }
    out.push_str(rest);
    out
}

/// `re.sub(pat + " *" + tail, with, s)` for a fixed `pat` followed by spaces and a fixed tail.
fn replace_with_spaces(s: &str, head: &str, tail: &str, with: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(p) = rest.find(head) {
        let after = rest[p + head.len()..].trim_start_matches(' ');
        if let Some(r) = after.strip_prefix(tail) {
            out.push_str(&rest[..p]);
            out.push_str(with);
            rest = r;
        } else {
            out.push_str(&rest[..p + head.len()]);
            rest = &rest[p + head.len()..];
        }
    }
    out.push_str(rest);
    out
}

/// Python `float(s)` succeeds.
fn py_float(s: &str) -> Option<f64> {
    let t = s.trim();
    if t.contains('_') {
        return None; // Python accepts `1_000`; such answers do not occur
    }
    t.parse::<f64>().ok()
}

fn is_int_f(x: f64) -> bool {
    x.is_finite() && (x - x.round()).abs() <= 1e-7
}

fn int_string(x: f64) -> String {
    let r = x.round();
    if r == 0.0 {
        "0".to_string()
    } else {
        format!("{r:.0}")
    }
}

/// `_strip_properly_formatted_commas`: `(\d)(,)(\d\d\d)($|\D)` -> `\1\3\4` until stable.
pub fn strip_properly_formatted_commas(expr: &str) -> String {
    let mut cur: Vec<char> = expr.chars().collect();
    loop {
        let mut next = Vec::with_capacity(cur.len());
        let mut i = 0;
        let d = |c: char| c.is_ascii_digit();
        while i < cur.len() {
            if i + 4 < cur.len()
                && d(cur[i])
                && cur[i + 1] == ','
                && d(cur[i + 2])
                && d(cur[i + 3])
                && d(cur[i + 4])
                && (i + 5 == cur.len() || !d(cur[i + 5]))
            {
                next.push(cur[i]);
                next.extend_from_slice(&cur[i + 2..i + 5]);
                if i + 5 < cur.len() {
                    next.push(cur[i + 5]);
                    i += 6;
                } else {
                    i += 5;
                }
            } else {
                next.push(cur[i]);
                i += 1;
            }
        }
        if next == cur {
            return next.into_iter().collect();
        }
        cur = next;
    }
}

pub(crate) fn str_is_int(x: &str) -> bool {
    py_float(&strip_properly_formatted_commas(x)).is_some_and(is_int_f)
}

fn str_to_int(x: &str) -> Option<String> {
    let f = py_float(&x.replace(',', ""))?;
    let t = f.trunc(); // int(float) truncates
    Some(if t == 0.0 {
        "0".to_string()
    } else {
        format!("{t:.0}")
    })
}

/// `_inject_implicit_mixed_number`: `([0-9]) +([0-9])` -> `\1+\2`.
fn inject_mixed(s: &str) -> String {
    let cs: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len() + 4);
    let mut i = 0;
    while i < cs.len() {
        if cs[i].is_ascii_digit() {
            let mut j = i + 1;
            while j < cs.len() && cs[j] == ' ' {
                j += 1;
            }
            if j > i + 1 && j < cs.len() && cs[j].is_ascii_digit() {
                out.push(cs[i]);
                out.push('+');
                out.push(cs[j]);
                i = j + 1;
                continue;
            }
        }
        out.push(cs[i]);
        i += 1;
    }
    out
}

fn parse_latex(expr: &str) -> String {
    let e = expr
        .replace("\\tfrac", "\\frac")
        .replace("\\dfrac", "\\frac");
    let e = e.replace("\\frac", " \\frac");
    let e = latex::latex_to_text(&e);
    let e = e
        .replace('√', "sqrt")
        .replace('π', "pi")
        .replace('∞', "inf")
        .replace('∪', "U")
        .replace(['·', '×'], "*");
    e.trim().to_string()
}

/// `grader._normalize`.
pub fn normalize(expr: &str) -> String {
    let mut e = match enclosing_text(expr) {
        Some(t) => t.to_string(),
        None => expr.to_string(),
    };
    e = e
        .replace("\\%", "%")
        .replace("\\$", "$")
        .replace(['$', '%'], "");
    e = e.replace(" or ", " , ").replace(" and ", " , ");
    e = e
        .replace("million", "*10^6")
        .replace("billion", "*10^9")
        .replace("trillion", "*10^12");
    for unit in UNITS {
        e = remove_unit(&e, unit);
    }
    e = replace_with_spaces(&e, "^", "\\circ", "");
    if e.len() > 1 && e.starts_with('{') && e.ends_with('}') {
        e = e[1..e.len() - 1].to_string();
    } else if e == "{" {
        // expr[0] == "{" and expr[-1] == "}" is false for "{"; nothing to do
    }
    e = replace_with_spaces(&e, ",\\!", "", "");
    if let Some(f) = py_float(&e) {
        if is_int_f(f) {
            e = int_string(f);
        }
    }
    if e.contains('\\') {
        e = parse_latex(&e);
    }
    // `re.sub("- *", "-", expr)`: the minus stays, only the spaces after it go.
    e = replace_with_spaces(&e, "-", "", "-");
    e = inject_mixed(&e);
    e = e.replace(' ', "");
    e = e.replace(['{', '}'], "");
    e = e.to_lowercase();
    if str_is_int(&e) {
        if let Some(i) = str_to_int(&e) {
            e = i;
        }
    }
    e
}

fn count_unknown_letters(expr: &str) -> usize {
    let e = expr.replace("sqrt", "").replace("frac", "");
    let mut seen: Vec<char> = e.chars().filter(|c| c.is_alphabetic()).collect();
    seen.sort_unstable();
    seen.dedup();
    seen.len()
}

pub(crate) fn should_allow_eval(expr: &str) -> bool {
    if count_unknown_letters(expr) > 2 {
        return false;
    }
    if expr.contains("^{") || expr.contains("^(") {
        return false;
    }
    // BAD_REGEXES: `\^[0-9]+\^` and `\^[0-9][0-9]+`
    let b = expr.as_bytes();
    for (i, _) in expr.match_indices('^') {
        let n = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if n >= 2 || (n >= 1 && b.get(i + 1 + n) == Some(&b'^')) {
            return false;
        }
    }
    true
}

fn are_equal_under_sympy(gt: &str, given: &str) -> bool {
    let joint = format!("({gt})-({given})");
    should_allow_eval(&joint) && expr::equal(gt, given)
}

/// `_is_frac`: `^-?[0-9]+.?/0*[1-9][0-9]*.?$` (`.` is any character but `\n`; `$` also
/// matches before a final newline).
pub(crate) fn is_frac(e: &str) -> bool {
    let cs: Vec<char> = e.chars().collect();
    let digits = |s: &[char]| !s.is_empty() && s.iter().all(|c| c.is_ascii_digit());
    // `X.?` where X must match `pred`: X itself, or X plus one non-newline character.
    let with_opt = |s: &[char], pred: &dyn Fn(&[char]) -> bool| {
        pred(s) || (s.len() >= 2 && s[s.len() - 1] != '\n' && pred(&s[..s.len() - 1]))
    };
    let left_ok = |l: &[char]| {
        let l = l.strip_prefix(&['-']).unwrap_or(l);
        with_opt(l, &digits)
    };
    let den = |r: &[char]| {
        let z = r.iter().take_while(|c| **c == '0').count();
        let r = &r[z..];
        !r.is_empty() && ('1'..='9').contains(&r[0]) && r[1..].iter().all(|c| c.is_ascii_digit())
    };
    let right_ok = |r: &[char]| {
        let r2 = r.strip_suffix(&['\n']).unwrap_or(r);
        with_opt(r, &den) || with_opt(r2, &den)
    };
    cs.iter()
        .enumerate()
        .filter(|(_, c)| **c == '/')
        .any(|(k, _)| left_ok(&cs[..k]) && right_ok(&cs[k + 1..]))
}

/// `split_tuple`.
pub(crate) fn split_tuple(expr: &str) -> Vec<String> {
    let e = strip_properly_formatted_commas(expr);
    if e.is_empty() {
        return Vec::new();
    }
    let cs: Vec<char> = e.chars().collect();
    let tuple_char = |c: char| "()[]".contains(c);
    if cs.len() > 2
        && tuple_char(cs[0])
        && tuple_char(cs[cs.len() - 1])
        && !cs[1..cs.len() - 1].iter().any(|c| tuple_char(*c))
    {
        let inner: String = cs[1..cs.len() - 1].iter().collect();
        inner.split(',').map(|x| x.trim().to_string()).collect()
    } else {
        vec![e]
    }
}

/// Why `grade_answer` decided as it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    MathdMatch,
    NormalizedMatch,
    ElementsEqual,
    EmptyAnswer,
    TupleBracketsDiffer,
    ElementCountDiffers,
    FractionsDiffer,
    IntegerMismatch,
    NotEqual,
}

impl Verdict {
    pub fn correct(self) -> bool {
        matches!(
            self,
            Verdict::MathdMatch | Verdict::NormalizedMatch | Verdict::ElementsEqual
        )
    }

    pub fn reason(self) -> &'static str {
        match self {
            Verdict::MathdMatch => "equal after MATH normalisation",
            Verdict::NormalizedMatch => "equal after PRM800K normalisation",
            Verdict::ElementsEqual => "equal values",
            Verdict::EmptyAnswer => "empty answer",
            Verdict::TupleBracketsDiffer => "tuple or interval brackets differ",
            Verdict::ElementCountDiffers => "different number of elements",
            Verdict::FractionsDiffer => "fractions differ (unreduced fractions are not accepted)",
            Verdict::IntegerMismatch => "an integer answer is required",
            Verdict::NotEqual => "not equal",
        }
    }
}

/// `grade_answer(given_answer, ground_truth)`.
pub fn grade_answer(given: &str, gt: &str) -> Verdict {
    if normalize_answer_mathd(gt) == normalize_answer_mathd(given) {
        return Verdict::MathdMatch;
    }
    let gt_n = normalize(gt);
    let given_n = normalize(given);
    if gt_n == given_n {
        return Verdict::NormalizedMatch;
    }
    if given_n.is_empty() {
        return Verdict::EmptyAnswer;
    }
    let gt_elems = split_tuple(&gt_n);
    let given_elems = split_tuple(&given_n);
    if gt_elems.len() > 1
        && (gt_n.chars().next() != given_n.chars().next()
            || gt_n.chars().last() != given_n.chars().last())
    {
        return Verdict::TupleBracketsDiffer;
    }
    if gt_elems.len() != given_elems.len() {
        return Verdict::ElementCountDiffers;
    }
    for (g, a) in gt_elems.iter().zip(&given_elems) {
        if is_frac(g) && is_frac(a) {
            if g != a {
                return Verdict::FractionsDiffer;
            }
        } else if str_is_int(g) != str_is_int(a) {
            return Verdict::IntegerMismatch;
        } else if !are_equal_under_sympy(g, a) {
            return Verdict::NotEqual;
        }
    }
    if gt_elems.is_empty() {
        // Python leaves `is_correct` unbound here; only reachable when both are empty,
        // which returned earlier.
        return Verdict::NotEqual;
    }
    Verdict::ElementsEqual
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise() {
        assert_eq!(normalize("1,000"), "1000");
        assert_eq!(normalize("1,\\!000"), "1000");
        assert_eq!(normalize("5.0"), "5");
        // units are cut before `\\text{}` is rendered, so `^2` survives (the MATH match saves it)
        assert_eq!(normalize("10 \\text{ cm}^2"), "10^2");
        assert_eq!(normalize("7 \\frac{3}{4}"), "7+3/4");
        assert_eq!(normalize("\\text{(A)}"), "(a)");
        assert_eq!(normalize("2\\sqrt{2}"), "2sqrt(2)");
        assert_eq!(normalize("\\frac{2}{4}"), "2/4");
        assert_eq!(normalize("4.99999999"), "5");
        // `_str_to_int` truncates: a quirk we keep
        assert_eq!(normalize("1,004.99999999"), "1004");
        assert_eq!(normalize("- 5"), "-5");
        assert_eq!(normalize("-\\frac{2}{3}"), "-2/3");
        assert_eq!(normalize("3 - x"), "3-x");
        assert_eq!(strip_properly_formatted_commas("1,000,000"), "1000000");
        assert_eq!(strip_properly_formatted_commas("(1,234,5)"), "(1234,5)");
    }

    #[test]
    fn grades() {
        assert!(grade_answer("\\frac{1}{2}", "0.5").correct());
        assert!(!grade_answer("\\frac{2}{4}", "\\frac{1}{2}").correct());
        assert!(!grade_answer("\\frac{10}{4}", "\\frac{5}{2}").correct());
        assert!(grade_answer("0.25", "\\frac14").correct());
        assert!(!grade_answer("10/2", "5").correct());
        assert!(grade_answer("7\\frac{3}{4}", "\\frac{31}{4}").correct());
        assert!(grade_answer("(1, 2)", "(1,2)").correct());
        assert!(!grade_answer("[1, 2)", "(1,2)").correct());
        assert!(grade_answer("\\left( \\frac12, 3\\right)", "(0.5, 3)").correct());
        assert!(!grade_answer("", "5").correct());
        assert!(grade_answer("x^{2}", "x^2+0").correct());
        assert!(!grade_answer("x^2", "x^3").correct());
        assert!(!grade_answer("-5", "5").correct());
        assert!(!grade_answer("-\\frac{2}{3}", "\\frac{2}{3}").correct());
    }
}
