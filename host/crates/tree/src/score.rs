//! Extraction and grading of a tree's nodes through the `Scorer`: used by `generate` (first
//! scoring) and by `malt credit` (re-scoring with the current plugins).
//!
//! Leaves are always graded (their grade is the reward). Inner nodes are extracted and graded
//! only when their agent produces an answer, for the answer-flip statistics; a failure there
//! is recorded on the node but does not affect credit.
//!
//! An output cut at the length limit counts its answer only when the plugin found it by an
//! explicit final-answer marker: a fallback (the last number of the text, say) of a cut
//! solution is whatever number the text had reached, not an answer the model gave. Such an
//! answer is graded as no answer. Plugins of API 0.1.0 do not say how they found an answer,
//! so a cut output of theirs never counts one.

use std::collections::BTreeMap;

use crate::chain::ChainSpec;
use crate::scorer::{chain_identity, ExtractRequest, GradeRequest, Scorer};
use crate::tree::{level_offsets, Tree};
use crate::types::{AnswerSource, Example, Extracted, Grade};

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
        let items: Vec<ScoreItem> = todo
            .iter()
            .map(|&i| ScoreItem {
                output: &tree.nodes[i].output,
                example: &tree.example,
                cut: tree.nodes[i].is_truncated(),
            })
            .collect();
        let scored = extract_and_grade(scorer, plugin, &items);
        drop(items);
        for (&i, Scored { answer, grade, .. }) in todo.iter().zip(scored) {
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

/// One output to score: its text, its question, and whether sampling cut it at the length
/// limit (`max_new_tokens`).
#[derive(Debug, Clone, Copy)]
pub struct ScoreItem<'a> {
    pub output: &'a str,
    pub example: &'a Example,
    pub cut: bool,
}

/// An item of [`extract_and_grade`].
#[derive(Debug, Clone)]
pub struct Scored {
    /// The extracted answer with its voting key and how it was found (`None`: the output has
    /// none), or why extraction failed.
    pub answer: Result<Option<Extracted>, String>,
    /// The grade of the extracted answer, or why grading failed; `None` when extraction failed.
    pub grade: Option<Result<Grade, String>>,
    /// The output was cut and its answer was not found by a marker: the answer was dropped
    /// (`answer` is `Ok(None)`) and graded as no answer (see the module doc).
    pub dropped_cut: bool,
}

/// Extracts the answer of each item and grades it against the question's gold, one plugin call
/// of each kind (an output without an answer is graded too: the plugin decides what no answer
/// is worth); a cut output's answer counts only when found by a marker (module doc). An item
/// whose extraction failed is not graded. Failures stay per item, as "extract: ..." or
/// "grade: ..." messages. Shared by tree scoring and evaluation.
pub fn extract_and_grade(
    scorer: &mut dyn Scorer,
    plugin: &str,
    items: &[ScoreItem<'_>],
) -> Vec<Scored> {
    let failed = |msg: String| Scored {
        answer: Err(msg),
        grade: None,
        dropped_cut: false,
    };
    let reqs: Vec<ExtractRequest> = items
        .iter()
        .map(|item| ExtractRequest {
            output: item.output,
            choices: &item.example.choices,
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
        .zip(items)
        .map(|(a, item)| {
            let unmarked = |e: &Extracted| e.found_by != AnswerSource::Marker;
            let dropped_cut = item.cut && matches!(&a, Ok(Some(e)) if unmarked(e));
            Scored {
                answer: match a {
                    Ok(_) if dropped_cut => Ok(None),
                    a => a.map_err(|e| format!("extract: {e}")),
                },
                grade: None,
                dropped_cut,
            }
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
            gold: &items[i].example.gold,
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

    fn items_of<'a>(outputs: &[&'a str], examples: &'a [Example], cut: bool) -> Vec<ScoreItem<'a>> {
        outputs
            .iter()
            .zip(examples)
            .map(|(output, example)| ScoreItem {
                output,
                example,
                cut,
            })
            .collect()
    }

    /// A cut output counts an answer found by a marker, never one found by a fallback; a whole
    /// output counts both.
    #[test]
    fn a_cut_output_counts_only_a_marked_answer() {
        let examples = fake_examples(2);
        // Every fake example's gold is "1".
        let outputs = ["Final Answer: 1", "so the answer is 1"];
        let whole = extract_and_grade(
            &mut FakeScorer::default(),
            "fake",
            &items_of(&outputs, &examples, false),
        );
        let cut = extract_and_grade(
            &mut FakeScorer::default(),
            "fake",
            &items_of(&outputs, &examples, true),
        );
        let reward = |s: &Scored| s.grade.clone().unwrap().unwrap().reward;
        assert_eq!(
            (reward(&whole[0]), reward(&whole[1])),
            (1.0, 1.0),
            "{whole:?}"
        );
        assert_eq!((reward(&cut[0]), reward(&cut[1])), (1.0, 0.0), "{cut:?}");
        assert!(!cut[0].dropped_cut && cut[1].dropped_cut && !whole[1].dropped_cut);
        assert_eq!(cut[1].answer, Ok(None));
    }

    #[test]
    fn extract_and_grade_keeps_failures_per_item() {
        let examples = fake_examples(3);
        let outputs = ["Final Answer: 1", "no answer here", "Final Answer: 7"];
        let items = items_of(&outputs, &examples, false);
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
        let items = items_of(&["Final Answer: 1 "], &examples, false);
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
