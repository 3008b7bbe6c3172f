//! GSM8K extraction and grading against lm-evaluation-harness outputs
//! (../shared/golden/reference_graders.json, section `gsm8k`).
mod common;
use common::*;
use malt_graders::gsm8k::{self, Mode};
use serde::Serialize;

#[derive(Serialize)]
struct Side {
    ours_extract: Option<String>,
    ref_extract: Option<String>,
    ours_em: bool,
    ref_em: bool,
    agree: bool,
}

#[derive(Serialize)]
struct Row {
    pred: String,
    gold: String,
    numeric_extract: Option<String>,
    numeric_reward: f64,
    numeric_reason: &'static str,
    strict_match: Side,
    flexible_extract: Side,
    cot_strict_match: Side,
}

fn side(pred: &str, gold: &str, mode: Mode, case: &serde_json::Value, ex: &str, em: &str) -> Side {
    let ours_extract = gsm8k::extract(pred, mode);
    let ours_em = gsm8k::grade(ours_extract.as_deref(), gold, mode).reward == 1.0;
    let ref_extract = lm(case, ex);
    let ref_em = b(case, em);
    Side {
        agree: ours_extract == ref_extract && ours_em == ref_em,
        ours_extract,
        ref_extract,
        ours_em,
        ref_em,
    }
}

fn rows() -> Vec<Row> {
    let golden = load("reference_graders.json");
    let cases = golden["gsm8k"].as_array().expect("gsm8k section");
    assert!(!cases.is_empty());
    cases
        .iter()
        .map(|c| {
            let pred = s(c, "pred");
            let gold = s(c, "ref_final");
            let numeric_extract = gsm8k::extract(pred, Mode::Numeric);
            let g = gsm8k::grade(numeric_extract.as_deref(), gold, Mode::Numeric);
            Row {
                pred: pred.to_string(),
                gold: gold.to_string(),
                numeric_extract,
                numeric_reward: g.reward,
                numeric_reason: g.reason,
                strict_match: side(
                    pred,
                    gold,
                    Mode::StrictMatch,
                    c,
                    "strict_extract",
                    "strict_em",
                ),
                flexible_extract: side(
                    pred,
                    gold,
                    Mode::FlexibleExtract,
                    c,
                    "flex_extract",
                    "flex_em",
                ),
                cot_strict_match: side(
                    pred,
                    gold,
                    Mode::CotStrictMatch,
                    c,
                    "cot_strict_extract",
                    "cot_strict_em",
                ),
            }
        })
        .collect()
}

#[test]
fn gsm8k_golden_table() {
    insta::assert_yaml_snapshot!("gsm8k_golden", rows());
}

/// The modes that claim to reproduce lm-eval must agree on every golden case.
#[test]
fn gsm8k_lm_eval_modes_reproduce_reference() {
    let mut bad = Vec::new();
    for r in rows() {
        for (name, side) in [
            ("strict-match", &r.strict_match),
            ("flexible-extract", &r.flexible_extract),
            ("cot-strict-match", &r.cot_strict_match),
        ] {
            if !side.agree {
                bad.push(format!(
                    "{name} on {:?}: ours {:?}/{} vs reference {:?}/{}",
                    r.pred, side.ours_extract, side.ours_em, side.ref_extract, side.ref_em
                ));
            }
        }
    }
    assert!(bad.is_empty(), "disagreements:\n{}", bad.join("\n"));
}
