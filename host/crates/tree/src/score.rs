//! Extraction and grading of a tree's nodes through the `Scorer`: used by `generate` (first
//! scoring) and by `malt credit` (re-scoring with the current plugins).
//!
//! Leaves are always graded (their grade is the reward). Inner nodes are extracted and graded
//! only when their agent produces an answer, for the answer-flip statistics; a failure there
//! is recorded on the node but does not affect credit.

use std::collections::BTreeMap;

use crate::chain::ChainSpec;
use crate::scorer::{chain_identity, ExtractRequest, GradeRequest, Scorer};
use crate::tree::{level_offsets, Tree};
use crate::types::{Example, Extracted, Grade};

/// Plugin failures per plugin name (and "sampler" for model failures during generation).
pub type ErrorCounts = BTreeMap<String, u64>;

pub(crate) fn count(errors: &mut ErrorCounts, who: &str, n: usize) {
    if n > 0 {
        *errors.entry(who.to_owned()).or_default() += n as u64;
    }
}

/// (Re)computes `answer` (with `answer_key` and `answer_source`), `reward` and `score_error` of
/// every node without a generation error. Returns the number of nodes that failed to score.
pub fn score_tree(
    tree: &mut Tree,
    chain: &ChainSpec,
    scorer: &mut dyn Scorer,
    errors: &mut ErrorCounts,
) -> usize {
    let offs = level_offsets(chain);
    let last = chain.len().saturating_sub(1);
    let mut failed = 0;
    tree.scored_with = chain_identity(chain, scorer);
    for (l, agent) in chain.agents.iter().enumerate() {
        let range = offs[l]..offs[l + 1].min(tree.nodes.len());
        let todo: Vec<usize> = range
            .filter(|&i| {
                let n = &tree.nodes[i];
                n.error.is_none() && (l == last || agent.produces_answer())
            })
            .collect();
        for &i in &todo {
            let n = &mut tree.nodes[i];
            n.answer = None;
            n.answer_key = None;
            n.answer_source = None;
            n.reward = None;
            n.score_error = None;
        }
        if todo.is_empty() {
            continue;
        }
        let plugin = agent.plugin.as_str();
        let items: Vec<(&str, &Example)> = todo
            .iter()
            .map(|&i| (tree.nodes[i].output.as_str(), &tree.example))
            .collect();
        let scored = extract_and_grade(scorer, plugin, &items);
        drop(items);
        for (&i, Scored { answer, grade }) in todo.iter().zip(scored) {
            let n = &mut tree.nodes[i];
            let error = match (answer, grade) {
                (Err(msg), _) => msg,
                (Ok(extracted), grade) => {
                    if let Some(e) = extracted {
                        n.answer = Some(e.answer);
                        n.answer_key = e.key;
                        n.answer_source = Some(e.found_by);
                    }
                    match grade {
                        Some(Ok(g)) if (0.0..=1.0).contains(&g.reward) => {
                            n.reward = Some(g.reward);
                            continue;
                        }
                        Some(Ok(g)) => {
                            format!("grade: reward {} outside [0, 1] ({})", g.reward, g.reason)
                        }
                        Some(Err(msg)) => msg,
                        None => "grade: plugin returned no result".to_owned(),
                    }
                }
            };
            n.score_error = Some(error);
            count(errors, plugin, 1);
            failed += 1;
        }
    }
    failed
}

/// An item of [`extract_and_grade`].
#[derive(Debug, Clone)]
pub struct Scored {
    /// The extracted answer with its voting key and how it was found (`None`: the output has
    /// none), or why extraction failed.
    pub answer: Result<Option<Extracted>, String>,
    /// The grade of the extracted answer, or why grading failed; `None` when extraction failed.
    pub grade: Option<Result<Grade, String>>,
}

/// Extracts the answer of each `(output, question)` and grades it against the question's gold,
/// one plugin call of each kind (an output without an answer is graded too: the plugin decides
/// what no answer is worth). An item whose extraction failed is not graded. Failures stay per
/// item, as "extract: ..." or "grade: ..." messages. Shared by tree scoring and evaluation.
pub fn extract_and_grade(
    scorer: &mut dyn Scorer,
    plugin: &str,
    items: &[(&str, &Example)],
) -> Vec<Scored> {
    let failed = |msg: String| Scored {
        answer: Err(msg),
        grade: None,
    };
    let reqs: Vec<ExtractRequest> = items
        .iter()
        .map(|(output, example)| ExtractRequest {
            output,
            choices: &example.choices,
        })
        .collect();
    let answers = match scorer.extract(plugin, &reqs) {
        Ok(a) if a.len() == items.len() => a,
        Ok(a) => {
            let msg = format!(
                "extract: plugin returned {} results for {}",
                a.len(),
                items.len()
            );
            return vec![failed(msg); items.len()];
        }
        Err(e) => return vec![failed(format!("extract: {e}")); items.len()],
    };
    let mut out: Vec<Scored> = answers
        .into_iter()
        .map(|a| Scored {
            answer: a.map_err(|e| format!("extract: {e}")),
            grade: None,
        })
        .collect();
    let graded: Vec<usize> = (0..out.len()).filter(|&i| out[i].answer.is_ok()).collect();
    if graded.is_empty() {
        return out;
    }
    let reqs: Vec<GradeRequest> = graded
        .iter()
        .map(|&i| GradeRequest {
            answer: out[i]
                .answer
                .as_ref()
                .ok()
                .and_then(|a| a.as_ref())
                .map(|e| e.answer.as_str()),
            gold: &items[i].1.gold,
        })
        .collect();
    let grades: Vec<Result<Grade, String>> = match scorer.grade(plugin, &reqs) {
        Ok(g) if g.len() == graded.len() => g
            .into_iter()
            .map(|g| g.map_err(|e| format!("grade: {e}")))
            .collect(),
        Ok(g) => {
            let msg = format!(
                "grade: plugin returned {} results for {}",
                g.len(),
                graded.len()
            );
            vec![Err(msg); graded.len()]
        }
        Err(e) => vec![Err(format!("grade: {e}")); graded.len()],
    };
    drop(reqs);
    for (i, grade) in graded.into_iter().zip(grades) {
        out[i].grade = Some(grade);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{fake_examples, FakeScorer};

    #[test]
    fn extract_and_grade_keeps_failures_per_item() {
        let examples = fake_examples(3);
        let outputs = ["Final Answer: 1", "no answer here", "Final Answer: 7"];
        let items: Vec<(&str, &Example)> = outputs.iter().copied().zip(&examples).collect();
        let scored = extract_and_grade(&mut FakeScorer::default(), "fake", &items);
        assert_eq!(scored.len(), 3);
        for s in &scored {
            assert!(s.answer.is_ok() && matches!(s.grade, Some(Ok(_))), "{s:?}");
        }
        let rewards: Vec<f64> = scored
            .iter()
            .map(|s| s.grade.clone().unwrap().unwrap().reward)
            .collect();
        assert_eq!(rewards[0], 1.0, "{scored:?}");
        assert_eq!(rewards[2], 0.0, "{scored:?}");
        assert_eq!(scored[1].answer, Ok(None), "graded too: {scored:?}");
        // A trap of the grading call fails the graded items, not their extracted answers.
        let mut trap = FakeScorer {
            trap_grade_on: Some("7".into()),
            ..Default::default()
        };
        let scored = extract_and_grade(&mut trap, "fake", &items);
        assert!(scored
            .iter()
            .all(|s| matches!(&s.grade, Some(Err(m)) if m.starts_with("grade: "))));
        let answer = scored[2].answer.clone().unwrap().unwrap();
        assert_eq!(answer.answer, "7");
    }

    /// The key and the source reach the node; trees stored before they existed still load.
    #[test]
    fn nodes_keep_the_key_and_source_and_old_nodes_load_without_them() {
        let examples = fake_examples(1);
        let items = [("Final Answer: 1 ", &examples[0])];
        let scored = extract_and_grade(&mut FakeScorer::default(), "fake", &items);
        let extracted = scored[0].answer.clone().unwrap().unwrap();
        assert_eq!(extracted.key.as_deref(), Some("1"));
        assert_eq!(extracted.found_by, crate::types::AnswerSource::Marker);

        let old = r#"{"agent":"g","level":0,"parent":null,"prompt":0,"seed":1,
            "output":"Final Answer: 1","answer":"1","reward":1.0}"#;
        let mut node: crate::tree::Node = serde_json::from_str(old).unwrap();
        assert_eq!(
            (node.answer_key.as_deref(), node.answer_source),
            (None, None)
        );
        assert!(!serde_json::to_string(&node).unwrap().contains("answer_"));
        node.answer_key = extracted.key;
        node.answer_source = Some(extracted.found_by);
        let text = serde_json::to_string(&node).unwrap();
        assert!(
            text.contains(r#""answer_key":"1","answer_source":"marker""#),
            "{text}"
        );
    }
}
