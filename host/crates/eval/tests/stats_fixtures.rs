//! The sign test, Holm's correction and the distinct-question pooling against scipy's
//! `binomtest` and statsmodels' `multipletests` on the same counts: `fixtures/stats.json`,
//! written by `scripts/stats_fixtures.py` (see there for what each entry is).

use std::path::Path;

use malt_eval::significance::{holm, question_test, sign_test};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixtures {
    sign_test: Vec<SignCase>,
    holm: Vec<HolmCase>,
    families: Vec<Family>,
}

#[derive(Deserialize)]
struct SignCase {
    b: u64,
    c: u64,
    p: f64,
}

#[derive(Deserialize)]
struct HolmCase {
    p: Vec<f64>,
    adjusted: Vec<f64>,
}

#[derive(Deserialize)]
struct Family {
    rows: Vec<Row>,
}

#[derive(Deserialize)]
struct Row {
    /// `(question, reference right, row right)` per (seed, question) pair.
    pairs: Vec<(usize, bool, bool)>,
    questions: usize,
    reference_wins: usize,
    row_wins: usize,
    p: f64,
    holm_p: f64,
}

fn fixtures() -> Fixtures {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stats.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (scripts/stats_fixtures.py)", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Equal to 1e-12 relative (the fixtures' p-values reach 1e-60).
fn close(ours: f64, theirs: f64) -> bool {
    (ours - theirs).abs() <= 1e-12 * theirs.abs()
}

#[test]
fn sign_test_matches_scipy_binomtest() {
    let f = fixtures();
    assert!(f.sign_test.len() >= 30);
    for case in &f.sign_test {
        let p = sign_test(case.b, case.c);
        assert!(
            close(p, case.p),
            "b = {}, c = {}: malt {p:e}, scipy {:e}",
            case.b,
            case.c,
            case.p
        );
    }
    // The cases reach both ends: p = 1 and a tail far below double-precision epsilon.
    assert!(f.sign_test.iter().any(|c| c.p == 1.0));
    assert!(f.sign_test.iter().any(|c| c.p < 1e-50));
}

#[test]
fn holm_matches_statsmodels_multipletests() {
    let f = fixtures();
    for case in &f.holm {
        let adjusted = holm(&case.p);
        assert_eq!(adjusted.len(), case.adjusted.len());
        for (ours, theirs) in adjusted.iter().zip(&case.adjusted) {
            assert!(
                close(*ours, *theirs),
                "{:?}: malt {adjusted:?}, statsmodels {:?}",
                case.p,
                case.adjusted
            );
        }
    }
}

#[test]
fn distinct_question_test_matches_the_pooled_counts_and_scipy() {
    let f = fixtures();
    let mut repeated = 0;
    for (fi, family) in f.families.iter().enumerate() {
        let tests: Vec<_> = family
            .rows
            .iter()
            .map(|r| question_test(r.pairs.iter().copied()))
            .collect();
        let adjusted = holm(&tests.iter().map(|t| t.p).collect::<Vec<_>>());
        for (ri, ((row, t), h)) in family.rows.iter().zip(&tests).zip(&adjusted).enumerate() {
            let at = format!("family {fi}, row {ri}");
            assert_eq!(
                (t.questions, t.reference_wins, t.row_wins),
                (row.questions, row.reference_wins, row.row_wins),
                "{at}"
            );
            assert!(close(t.p, row.p), "{at}: malt {}, scipy {}", t.p, row.p);
            assert!(
                close(*h, row.holm_p),
                "{at}: malt {h}, statsmodels {}",
                row.holm_p
            );
            repeated += row.pairs.len() - row.questions;
        }
    }
    // The fixtures would not test the pooling if no question repeated across seeds.
    assert!(repeated > 0);
}
