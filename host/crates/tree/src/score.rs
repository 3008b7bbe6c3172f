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

/// Plugin failures per plugin name (and "sampler" for model failures during generation).
pub type ErrorCounts = BTreeMap<String, u64>;

pub(crate) fn count(errors: &mut ErrorCounts, who: &str, n: usize) {
    if n > 0 {
        *errors.entry(who.to_owned()).or_default() += n as u64;
    }
}

/// (Re)computes `answer`, `reward` and `score_error` of every node without a generation
/// error. Returns the number of nodes that failed to score.
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
            n.reward = None;
            n.score_error = None;
        }
        if todo.is_empty() {
            continue;
        }
        let plugin = agent.plugin.as_str();
        let fail = |tree: &mut Tree, idx: &[usize], msg: &str| {
            for &i in idx {
                tree.nodes[i].score_error = Some(msg.to_owned());
            }
        };

        let reqs: Vec<ExtractRequest> = todo
            .iter()
            .map(|&i| ExtractRequest {
                output: &tree.nodes[i].output,
                choices: &tree.example.choices,
            })
            .collect();
        let answers = match scorer.extract(plugin, &reqs) {
            Ok(a) if a.len() == todo.len() => Ok(a),
            Ok(a) => Err(format!(
                "extract: plugin returned {} results for {}",
                a.len(),
                todo.len()
            )),
            Err(e) => Err(format!("extract: {e}")),
        };
        let answers = match answers {
            Ok(a) => a,
            Err(msg) => {
                fail(tree, &todo, &msg);
                count(errors, plugin, todo.len());
                failed += todo.len();
                continue;
            }
        };

        // An item that failed extraction is not graded; its error is recorded on the node.
        let mut graded: Vec<usize> = Vec::with_capacity(todo.len());
        let mut kept: Vec<Option<String>> = Vec::with_capacity(todo.len());
        for (&i, answer) in todo.iter().zip(answers) {
            match answer {
                Ok(a) => {
                    graded.push(i);
                    kept.push(a);
                }
                Err(e) => {
                    tree.nodes[i].score_error = Some(format!("extract: {e}"));
                    count(errors, plugin, 1);
                    failed += 1;
                }
            }
        }
        if graded.is_empty() {
            continue;
        }
        let reqs: Vec<GradeRequest> = kept
            .iter()
            .map(|a| GradeRequest {
                answer: a.as_deref(),
                gold: &tree.example.gold,
            })
            .collect();
        let grades = match scorer.grade(plugin, &reqs) {
            Ok(g) if g.len() == graded.len() => Ok(g),
            Ok(g) => Err(format!(
                "grade: plugin returned {} results for {}",
                g.len(),
                graded.len()
            )),
            Err(e) => Err(format!("grade: {e}")),
        };
        let grades = match grades {
            Ok(g) => g,
            Err(msg) => {
                fail(tree, &graded, &msg);
                count(errors, plugin, graded.len());
                failed += graded.len();
                continue;
            }
        };
        for ((&i, answer), grade) in graded.iter().zip(kept).zip(grades) {
            let n = &mut tree.nodes[i];
            n.answer = answer;
            match grade {
                Ok(grade) if (0.0..=1.0).contains(&grade.reward) => n.reward = Some(grade.reward),
                Ok(grade) => {
                    n.score_error = Some(format!(
                        "grade: reward {} outside [0, 1] ({})",
                        grade.reward, grade.reason
                    ));
                    count(errors, plugin, 1);
                    failed += 1;
                }
                Err(e) => {
                    n.score_error = Some(format!("grade: {e}"));
                    count(errors, plugin, 1);
                    failed += 1;
                }
            }
        }
    }
    failed
}
