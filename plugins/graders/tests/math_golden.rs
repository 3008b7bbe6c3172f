//! MATH grading against hendrycks/math, openai/prm800k, Minerva and math-verify outputs
//! (../shared/golden/reference_graders.json, sections `math`, `boxed`, `minerva_extract`).
mod common;
use common::*;
use malt_graders::math::{self, hendrycks, prm800k, Mode};
use serde::Serialize;

#[derive(Serialize)]
struct MathRow {
    pred: String,
    gold: String,
    hendrycks_strip_pred: String,
    hendrycks_strip_gold: String,
    strip_agree: bool,
    hendrycks_ours: bool,
    hendrycks_ref: bool,
    hendrycks_agree: bool,
    prm800k_ours: bool,
    prm800k_reason: &'static str,
    prm800k_ref: bool,
    prm800k_agree: bool,
    math_verify_ref: bool,
    minerva_ref: bool,
}

fn math_rows() -> Vec<MathRow> {
    let golden = load("reference_graders.json");
    golden["math"]
        .as_array()
        .expect("math section")
        .iter()
        .map(|c| {
            let pred = s(c, "pred");
            let gold = s(c, "gold");
            let sp = hendrycks::strip_or_raw(pred);
            let sg = hendrycks::strip_or_raw(gold);
            let h = math::grade(Some(pred), gold, Mode::Hendrycks).reward == 1.0;
            let v = prm800k::grade_answer(pred, gold);
            let p = math::grade(Some(pred), gold, Mode::Prm800k).reward == 1.0;
            assert_eq!(p, v.correct());
            MathRow {
                strip_agree: sp == s(c, "hendrycks_strip_pred")
                    && sg == s(c, "hendrycks_strip_gold"),
                hendrycks_strip_pred: sp,
                hendrycks_strip_gold: sg,
                hendrycks_ours: h,
                hendrycks_ref: b(c, "hendrycks_is_equiv"),
                hendrycks_agree: h == b(c, "hendrycks_is_equiv"),
                prm800k_ours: p,
                prm800k_reason: v.reason(),
                prm800k_ref: b(c, "prm800k_grade"),
                prm800k_agree: p == b(c, "prm800k_grade"),
                math_verify_ref: b(c, "math_verify"),
                minerva_ref: b(c, "minerva_is_equiv"),
                pred: pred.to_string(),
                gold: gold.to_string(),
            }
        })
        .collect()
}

#[derive(Serialize)]
struct BoxedRow {
    text: String,
    last_boxed_ours: Option<String>,
    last_boxed_ref: Option<String>,
    remove_boxed_ours: Option<String>,
    /// "ASSERT" where hendrycks' remove_boxed fails its assertion.
    remove_boxed_ref: Option<String>,
    agree: bool,
    /// What the plugin extracts (handles `\fbox{}` too).
    plugin_extract: Option<String>,
}

fn boxed_rows() -> Vec<BoxedRow> {
    let golden = load("reference_graders.json");
    golden["boxed"]
        .as_array()
        .expect("boxed section")
        .iter()
        .map(|c| {
            let text = s(c, "text");
            let lb = math::last_boxed_only_string(text);
            let rb = lb
                .as_deref()
                .and_then(math::remove_boxed)
                .map(str::to_string);
            let lb_ref = opt(c, "last_boxed_only_string");
            let rb_ref = opt(c, "remove_boxed");
            let rb_ours_as_ref = match (&lb, &rb) {
                (Some(_), None) => Some("ASSERT".to_string()),
                _ => rb.clone(),
            };
            BoxedRow {
                agree: lb == lb_ref && rb_ours_as_ref == rb_ref,
                text: text.to_string(),
                last_boxed_ours: lb,
                last_boxed_ref: lb_ref,
                remove_boxed_ours: rb,
                remove_boxed_ref: rb_ref,
                plugin_extract: math::extract(text),
            }
        })
        .collect()
}

#[derive(Serialize)]
struct MinervaRow {
    text: String,
    minerva_extracted: String,
    minerva_normalized: String,
    plugin_extract: Option<String>,
}

fn minerva_rows() -> Vec<MinervaRow> {
    let golden = load("reference_graders.json");
    golden["minerva_extract"]
        .as_array()
        .expect("minerva_extract section")
        .iter()
        .map(|c| MinervaRow {
            text: s(c, "text").to_string(),
            minerva_extracted: s(c, "extracted").to_string(),
            minerva_normalized: s(c, "normalized").to_string(),
            plugin_extract: math::extract(s(c, "text")),
        })
        .collect()
}

#[test]
fn math_golden_table() {
    insta::assert_yaml_snapshot!("math_golden", math_rows());
}

#[test]
fn boxed_golden_table() {
    insta::assert_yaml_snapshot!("boxed_golden", boxed_rows());
}

#[test]
fn minerva_golden_table() {
    insta::assert_yaml_snapshot!("minerva_golden", minerva_rows());
}

/// `hendrycks` and `prm800k` claim to reproduce their references: every case must agree.
#[test]
fn math_modes_reproduce_reference() {
    let mut bad = Vec::new();
    for r in math_rows() {
        if !r.strip_agree {
            bad.push(format!(
                "hendrycks normalisation of {:?} / {:?}",
                r.pred, r.gold
            ));
        }
        if !r.hendrycks_agree {
            bad.push(format!("hendrycks on {:?} vs {:?}", r.pred, r.gold));
        }
        if !r.prm800k_agree {
            bad.push(format!("prm800k on {:?} vs {:?}", r.pred, r.gold));
        }
    }
    assert!(bad.is_empty(), "disagreements:\n{}", bad.join("\n"));
}

/// Hendrycks' `last_boxed_only_string` / `remove_boxed` reproduced on every case.
#[test]
fn boxed_reproduces_reference() {
    for r in boxed_rows() {
        assert!(r.agree, "boxed disagreement on {:?}", r.text);
    }
}
