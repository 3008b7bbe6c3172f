//! CommonsenseQA letter extraction beside simple-evals / lm-eval conventions
//! (../shared/golden/csqa_letter_extraction.json).
mod common;
use common::*;
use malt_graders::csqa;
use serde::Serialize;

/// A sample choice list, to show the exact-choice-text mapping.
const CHOICES: &[(&str, &str)] = &[
    ("A", "bank"),
    ("B", "library"),
    ("C", "department store"),
    ("D", "mall"),
    ("E", "new york"),
];

#[derive(Serialize)]
struct Row {
    text: String,
    ours: Option<String>,
    ours_with_choices: Option<String>,
    simple_evals_ref: Option<String>,
    simple_evals_reproduced: Option<String>,
    simple_evals_agree: bool,
    simple_evals_after_normalize_ref: Option<String>,
    lmeval_mmlu_pro_style_first_ref: Option<String>,
    /// Ours vs simple-evals, case-folded: where we differ on purpose.
    same_as_simple_evals: bool,
}

fn rows() -> Vec<Row> {
    load("csqa_letter_extraction.json")
        .as_array()
        .expect("a list of cases")
        .iter()
        .map(|c| {
            let text = s(c, "text");
            let ours = csqa::extract(text, &[]);
            let se = opt(c, "simple_evals");
            let rep = csqa::simple_evals(text).map(|ch| ch.to_string());
            Row {
                same_as_simple_evals: ours.as_deref().map(str::to_ascii_uppercase)
                    == se.as_deref().map(str::to_ascii_uppercase),
                text: text.to_string(),
                ours_with_choices: csqa::extract(text, CHOICES),
                ours,
                simple_evals_agree: rep == se,
                simple_evals_reproduced: rep,
                simple_evals_ref: se,
                simple_evals_after_normalize_ref: opt(c, "simple_evals_after_normalize_response"),
                lmeval_mmlu_pro_style_first_ref: opt(c, "lmeval_mmlu_pro_style_first"),
            }
        })
        .collect()
}

#[test]
fn csqa_golden_table() {
    insta::assert_yaml_snapshot!("csqa_golden", rows());
}

/// Our reproduction of simple-evals' regex must match the reference on every case.
#[test]
fn csqa_simple_evals_reproduced() {
    for r in rows() {
        assert!(
            r.simple_evals_agree,
            "simple-evals disagreement on {:?}",
            r.text
        );
    }
}

/// Every case that any reference convention parses, we parse too (to some letter).
#[test]
fn csqa_we_parse_what_references_parse() {
    for r in rows() {
        let any_ref = r.simple_evals_ref.is_some()
            || r.simple_evals_after_normalize_ref.is_some()
            || r.lmeval_mmlu_pro_style_first_ref.is_some();
        if any_ref {
            assert!(r.ours.is_some(), "we found no letter in {:?}", r.text);
        }
    }
}
