//! API versioning: a plugin built against `malt:plugin@0.3.0` (tests/fixtures/v030, a copy of
//! the 0.2.0 WIT with the version bumped) is refused before linking, with the versions named;
//! a 0.1.0 component (tests/fixtures/hostile) still loads, and its answers, which carry no key,
//! vote as they are written, trimmed; a 0.2.0 plugin (the bundled math plugin) keys its answers.

mod common;

use std::collections::BTreeMap;

use malt_eval::{majority_vote, Outcome};
use malt_plugins::{AnswerSource, ExtractRequest, Extracted, Plugin, PluginError, Sandbox};

fn extract(p: &Plugin, outputs: &[&str]) -> Vec<Extracted> {
    let reqs: Vec<ExtractRequest> = outputs
        .iter()
        .map(|o| ExtractRequest {
            output: o.to_string(),
            choices: vec![],
        })
        .collect();
    p.extract(&reqs)
        .into_iter()
        .map(|r| r.expect("extract").expect("an answer"))
        .collect()
}

/// The index of the winning answer, voting as evaluation does (`Outcome::vote_key`).
fn winner(answers: &[Extracted]) -> Option<usize> {
    let outcomes: Vec<Outcome> = answers
        .iter()
        .map(|e| Outcome::Answer {
            answer: e.answer.clone(),
            key: e.key.clone(),
            correct: false,
        })
        .collect();
    let votes: Vec<Option<&str>> = outcomes.iter().map(Outcome::vote_key).collect();
    majority_vote(&votes)
}

#[test]
fn api_0_1_components_still_load_and_vote_on_their_trimmed_answers() {
    let p = Plugin::load(
        &common::runtime(),
        "hostile",
        &common::hostile(),
        &BTreeMap::new(),
        &Sandbox::default(),
    )
    .unwrap();
    assert_eq!(p.api_version().to_string(), "0.1.0");
    let answers = extract(&p, &["\\frac12", "\\dfrac{1}{2} ", "3", "3\n"]);
    for a in &answers {
        assert_eq!(
            (&a.key, a.found_by),
            (&None, AnswerSource::Unknown),
            "{a:?}"
        );
    }
    // No key: the two halves differ as written, the two 3s are one answer once trimmed.
    assert_eq!(winner(&answers), Some(2));
}

#[test]
fn api_0_2_plugins_key_their_answers_and_say_how_they_found_them() {
    let p = malt_plugins::load_named(
        &common::runtime(),
        "math",
        &BTreeMap::new(),
        &Sandbox::default(),
    )
    .unwrap();
    assert_eq!(p.api_version().to_string(), "0.2.0");
    let answers = extract(
        &p,
        &[
            "so $\\boxed{3}$",
            "Final Answer: $\\frac12$",
            "hence \\boxed{\\dfrac{1}{2}}.",
        ],
    );
    let keys: Vec<Option<&str>> = answers.iter().map(|a| a.key.as_deref()).collect();
    assert_eq!(keys, [Some("3"), Some("0.5"), Some("0.5")]);
    assert!(answers.iter().all(|a| a.found_by == AnswerSource::Marker));
    assert_eq!(answers[2].answer, "\\dfrac{1}{2}");
    assert_eq!(winner(&answers), Some(1));

    let gsm8k = malt_plugins::load_named(
        &common::runtime(),
        "gsm8k",
        &BTreeMap::new(),
        &Sandbox::default(),
    )
    .unwrap();
    let answers = extract(&gsm8k, &["#### 1,000", "I got 72.00 apples"]);
    let found: Vec<(Option<&str>, AnswerSource)> = answers
        .iter()
        .map(|a| (a.key.as_deref(), a.found_by))
        .collect();
    assert_eq!(
        found,
        [
            (Some("1000"), AnswerSource::Marker),
            (Some("72"), AnswerSource::Fallback)
        ]
    );
}

#[test]
fn future_api_version_is_refused() {
    let wasm = common::fixture("v030");
    let e = Plugin::load(
        &common::runtime(),
        "future-api",
        &wasm,
        &BTreeMap::new(),
        &Sandbox::default(),
    )
    .unwrap_err();
    assert!(matches!(e, PluginError::UnsupportedApi { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(
            "targets malt:plugin@0.3.0; this host supports malt:plugin@0.2.0, malt:plugin@0.1.0"
        ),
        "{msg}"
    );
}

#[test]
fn garbage_is_not_a_component() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("junk.wasm");
    std::fs::write(&p, b"\0asm garbage").unwrap();
    let e = Plugin::load(
        &common::runtime(),
        "junk",
        &p,
        &BTreeMap::new(),
        &Sandbox::default(),
    )
    .unwrap_err();
    assert!(matches!(e, PluginError::Invalid { .. }), "{e}");
    assert!(e.to_string().starts_with("plugin `junk`: "), "{e}");
}

#[test]
fn precompiled_cache_is_reused() {
    let wasm = common::hostile();
    let dir = tempfile::tempdir().unwrap();
    let rt = malt_plugins::Runtime::new(Some(dir.path().to_path_buf())).unwrap();
    let a = Plugin::load(&rt, "h", &wasm, &BTreeMap::new(), &Sandbox::default()).unwrap();
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(
        files[0].file_name().unwrap().to_string_lossy(),
        format!("{}.cwasm", a.hash())
    );
    let t = std::time::Instant::now();
    let _b = Plugin::load(&rt, "h", &wasm, &BTreeMap::new(), &Sandbox::default()).unwrap();
    assert!(t.elapsed() < std::time::Duration::from_secs(1));
}
