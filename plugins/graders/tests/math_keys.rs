//! Voting keys of MATH answers (`math::key`): real answer forms, pairs that must and must not
//! merge, and every pair of ../shared/golden/reference_graders.json `math`: the math plugin's
//! keys follow its grading mode, so in `prm800k` mode (the default) two answers share a key
//! exactly when `prm800k_grade` calls them equal, and in `hendrycks` mode exactly when
//! `hendrycks_is_equiv` does. (Minerva's verdicts cannot be keyed at all: they call `\{1,2\}`
//! different from itself.)
mod common;
use common::*;
use malt_graders::math::{self, hendrycks, key::key, prm800k, Mode};
use malt_graders::FoundBy;
use serde::Serialize;

/// Real MATH / MATH-500 answer forms, several per value, and near misses beside them.
const FORMS: &[&str] = &[
    // one half
    "\\frac12",
    "\\frac{1}{2}",
    "\\dfrac{1}{2}",
    "\\tfrac12",
    "0.5",
    ".5",
    "0.50",
    "1/2",
    "\\boxed{\\frac{1}{2}}",
    "\\left(\\frac{1}{2}\\right)",
    "\\frac{2}{4}",
    "2/4",
    // three halves, mixed numbers
    "\\frac{3}{2}",
    "\\dfrac32",
    "1\\frac{1}{2}",
    "1.5",
    "3/2",
    // negative fractions
    "-\\frac{2}{3}",
    "-\\frac23",
    "\\frac{-2}{3}",
    "-2/3",
    "\\frac{2}{3}",
    // thirds and other non-terminating values
    "\\frac{1}{3}",
    "0.333",
    // tuples and intervals
    "(1,2)",
    "(1, 2)",
    "\\left(1,2\\right)",
    "\\left( 1, 2 \\right)",
    "(2,1)",
    "[1,2]",
    "1,2",
    "[-2,7]",
    "[-2, 7]",
    "\\left[ -2, 7 \\right]",
    "[-2,7)",
    "(-2,7)",
    "\\left( 3, \\frac{\\pi}{2} \\right)",
    "(3, \\pi/2)",
    "(3, \\frac12\\pi)",
    // degrees, units, percent, money
    "10^\\circ",
    "10^{\\circ}",
    "10 degrees",
    "10",
    "10\\%",
    "10.0",
    "5\\text{ cm}",
    "5 \\text{ cm}",
    "\\text{5 cm}",
    "5 \\text{ inches}",
    "5",
    "5.0",
    "5.00",
    "x=5",
    "k = 5",
    "2+3",
    "\\sqrt{25}",
    "\\frac{10}{2}",
    "-5",
    "- 5",
    "\\$32,348",
    "32,348",
    "32348",
    "1,\\!000",
    "1{,}000",
    "1000",
    // roots
    "2\\sqrt{2}",
    "2\\sqrt2",
    "\\sqrt{8}",
    "\\sqrt{2}",
    "\\sqrt2",
    "1.414",
    "\\frac{\\sqrt{3}}{3}",
    "\\frac{\\sqrt3}{3}",
    "\\frac{1}{\\sqrt{3}}",
    "\\sqrt{3}",
    "11\\sqrt2",
    "\\sqrt{242}",
    // pi
    "\\frac{\\pi}{2}",
    "\\pi/2",
    "\\frac12\\pi",
    "1.5708",
    "\\pi",
    "3.14159",
    // polynomials, complex numbers
    "x^2+7x+10",
    "x^2 + 7x + 10",
    "(x+5)(x+2)",
    "(x+5)(x-2)",
    "p - q",
    "-q+p",
    "q - p",
    "6 - 5i",
    "-5i + 6",
    "6 + 5i",
    // text and choices
    "\\text{Evelyn}",
    "Evelyn",
    "\\text{evelyn}",
    "\\text{(C)}",
    "(C)",
    "C",
    "\\text{(D)}",
    // zero, infinity
    "0",
    "0.0",
    "-0",
    "\\infty",
];

#[derive(Serialize)]
struct KeyRow {
    answer: &'static str,
    prm800k: String,
    hendrycks: String,
}

/// The keys of every form, in both modes.
#[test]
fn keys_of_real_answer_forms() {
    let rows: Vec<KeyRow> = FORMS
        .iter()
        .map(|&answer| KeyRow {
            answer,
            prm800k: key(answer, Mode::Prm800k),
            hendrycks: key(answer, Mode::Hendrycks),
        })
        .collect();
    insta::assert_yaml_snapshot!("math_keys", rows);
}

fn same(a: &str, b: &str) -> bool {
    key(a, Mode::Prm800k) == key(b, Mode::Prm800k)
}

/// Pairs the default (`prm800k`) grader calls equal, which must vote together.
const MUST_MERGE: &[(&str, &str)] = &[
    ("\\frac12", "\\dfrac{1}{2}"),
    ("\\frac12", "0.5"),
    ("\\frac12", "1/2"),
    ("\\frac12", ".5"),
    ("\\frac12", "\\boxed{\\frac{1}{2}}"),
    ("\\frac{3}{2}", "1\\frac{1}{2}"),
    ("\\frac{3}{2}", "1.5"),
    ("-\\frac{2}{3}", "\\frac{-2}{3}"),
    ("\\left(1,2\\right)", "(1, 2)"),
    ("\\left[ -2, 7 \\right]", "[-2,7]"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)"),
    ("10^\\circ", "10"),
    ("10 degrees", "10"),
    ("10\\%", "10"),
    ("5\\text{ cm}", "5"),
    ("\\text{5 cm}", "5"),
    ("5.0", "5"),
    ("x=5", "5"),
    ("\\$32,348", "32348"),
    ("1,\\!000", "1000"),
    ("2\\sqrt{2}", "\\sqrt{8}"),
    ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}"),
    ("11\\sqrt2", "\\sqrt{242}"),
    ("\\frac{\\pi}{2}", "\\frac12\\pi"),
    ("x^2+7x+10", "(x+5)(x+2)"),
    ("p - q", "-q+p"),
    ("6 - 5i", "-5i + 6"),
    ("\\text{Evelyn}", "evelyn"),
    ("\\text{(C)}", "C"),
    ("0", "-0"),
];

/// Pairs the grader calls different, which must never vote together.
const MUST_NOT_MERGE: &[(&str, &str)] = &[
    ("\\frac12", "\\frac{2}{4}"),
    ("\\frac{2}{3}", "-\\frac{2}{3}"),
    ("-5", "5"),
    ("\\frac{1}{3}", "0.333"),
    ("(1,2)", "(2,1)"),
    ("(1,2)", "[1,2]"),
    ("(1,2)", "1,2"),
    ("[-2,7]", "[-2,7)"),
    ("5", "2+3"),
    ("5", "\\sqrt{25}"),
    ("5", "\\frac{10}{2}"),
    ("\\sqrt{2}", "1.414"),
    ("\\pi", "3.14159"),
    ("\\frac{\\pi}{2}", "1.5708"),
    ("x^2+7x+10", "(x+5)(x-2)"),
    ("p - q", "q - p"),
    ("6 - 5i", "6 + 5i"),
    ("\\text{(C)}", "\\text{(D)}"),
    ("0", "\\infty"),
];

#[test]
fn must_merge_and_must_not_merge() {
    for (a, b) in MUST_MERGE {
        assert!(prm800k::grade_answer(a, b).correct(), "grader: {a} vs {b}");
        assert!(same(a, b), "{a:?} and {b:?} must share a key");
    }
    for (a, b) in MUST_NOT_MERGE {
        assert!(!prm800k::grade_answer(a, b).correct(), "grader: {a} vs {b}");
        assert!(!same(a, b), "{a:?} and {b:?} must not share a key");
    }
}

/// Every golden pair: same key exactly when the mode's reference grader calls them equal.
#[test]
fn golden_pairs_share_a_key_exactly_when_the_graders_call_them_equal() {
    let golden = load("reference_graders.json");
    let cases = golden["math"].as_array().expect("math section");
    assert!(cases.len() >= 30, "golden math section shrank");
    let mut bad = Vec::new();
    for c in cases {
        let (pred, gold) = (s(c, "pred"), s(c, "gold"));
        for (mode, verdict) in [
            (Mode::Prm800k, "prm800k_grade"),
            (Mode::Hendrycks, "hendrycks_is_equiv"),
        ] {
            let (kp, kg) = (key(pred, mode), key(gold, mode));
            if (kp == kg) != b(c, verdict) {
                bad.push(format!(
                    "{}: {pred:?} -> {kp:?}, {gold:?} -> {kg:?}, {verdict} = {}",
                    mode.name(),
                    b(c, verdict)
                ));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "keys disagree with the graders:\n{}",
        bad.join("\n")
    );
}

/// Over every form and golden answer, grouped by key: PRM800K's grader is not transitive
/// (`x=5` and `5.0` both equal `5`, but not each other), so no key can keep every merged pair
/// equal while merging the golden pairs it accepts. What a key does promise: each group has a
/// member that the grader calls equal to every other member, whichever of the two is the gold
/// (the grader is not symmetric either). In `hendrycks` mode, whose grader is an equivalence,
/// every merged pair is equal.
#[test]
fn a_key_never_merges_what_the_grader_calls_different() {
    let golden = load("reference_graders.json");
    let mut all: Vec<String> = FORMS.iter().map(|s| s.to_string()).collect();
    for c in golden["math"].as_array().expect("math section") {
        all.push(s(c, "pred").to_string());
        all.push(s(c, "gold").to_string());
    }
    all.sort();
    all.dedup();
    let equal = |a: &str, b: &str| {
        prm800k::grade_answer(a, b).correct() && prm800k::grade_answer(b, a).correct()
    };
    let mut groups: std::collections::BTreeMap<String, Vec<&str>> = Default::default();
    for a in &all {
        groups.entry(key(a, Mode::Prm800k)).or_default().push(a);
    }
    let mut bad = Vec::new();
    for (k, members) in &groups {
        let centre = members.iter().find(|m| members.iter().all(|a| equal(a, m)));
        if centre.is_none() {
            bad.push(format!("prm800k key {k:?}: {members:?}"));
        }
    }
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            if key(a, Mode::Hendrycks) == key(b, Mode::Hendrycks) && !hendrycks::is_equiv(a, b) {
                bad.push(format!("hendrycks: {a:?} ~ {b:?}"));
            }
        }
    }
    assert!(
        groups.len() > 50,
        "too few groups to mean anything: {}",
        groups.len()
    );
    assert!(
        bad.is_empty(),
        "merged but graded different:\n{}",
        bad.join("\n")
    );
}

/// The plugin's extraction carries the key of its mode; both MATH cues are markers.
#[test]
fn extraction_carries_the_key() {
    let e = math::extract_answer("so $\\boxed{\\dfrac{1}{2}}$.", Mode::Prm800k).unwrap();
    assert_eq!(
        (e.answer.as_str(), e.key.as_str(), e.found_by),
        ("\\dfrac{1}{2}", "0.5", FoundBy::Marker)
    );
    let e = math::extract_answer("Final Answer: $0.5$", Mode::Hendrycks).unwrap();
    assert_eq!(e.key, "\\frac{1}{2}");
    assert_eq!(math::extract_answer("no answer here", Mode::Prm800k), None);
}
