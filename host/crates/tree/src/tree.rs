//! The tree of one question: a flat arena of nodes in level order.
//!
//! Level l holds prod(n_0..=n_l) nodes; the children of a node are contiguous and appear in
//! the order of their parents, so node k of level l has parent k / n_l of level l-1. This
//! fixed layout means credit assignment is one reverse pass over a Vec, with no per-node
//! allocation and no pointer chasing. A node whose generation failed still gets its full
//! subtree of placeholder nodes (marked errored), so every tree of a chain has the same shape
//! and the error counts are exact.

use serde::{Deserialize, Serialize};

use crate::chain::ChainSpec;
use crate::sampler::FinishReason;
use crate::types::{AnswerSource, Example, Message};

/// One node: one sampled output of one agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Agent name (redundant with `level`, kept so the file reads on its own).
    pub agent: String,
    /// 0-based level = position of the agent in the chain.
    pub level: u16,
    /// Index of the parent in `Tree::nodes`; `None` for level 0 (children of the question).
    pub parent: Option<u32>,
    /// Index into `Tree::prompts` of the chat messages this node was sampled from; siblings
    /// share one prompt. `None` when rendering failed.
    pub prompt: Option<u32>,
    /// Sampling seed of this node (53 bits, so JSON readers that use doubles keep it exact).
    pub seed: u64,
    /// Raw model output ("" when errored).
    #[serde(default)]
    pub output: String,
    /// The sampled token ids of `output`, exactly as sampled (see
    /// [`crate::sampler::Completion::token_ids`]): what SFT and DPO train on. Absent in trees
    /// sampled before malt stored them, and when a remote engine returned no ids and no
    /// tokenizer was at hand to re-encode the text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<u32>>,
    /// Why sampling stopped; absent where unknown (older trees).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish: Option<FinishReason>,
    /// Per-token log-probs of the sampling distribution (`softmax(logits / temperature)`),
    /// one per token id, as the sampler drew them: the embedded sampler records them when it
    /// samples at a temperature > 0; remote engines do not yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<f32>>,
    /// Extracted final answer (`None` when extraction found nothing or was not run).
    #[serde(default)]
    pub answer: Option<String>,
    /// The plugin's voting key of `answer` (e.g. `0.5` for `\dfrac{1}{2}`); absent when the
    /// plugin gives none (API 0.1.0) and in trees scored before keys existed: `answer` trimmed
    /// then votes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_key: Option<String>,
    /// How the plugin found `answer`: after an explicit final-answer marker or by a fallback
    /// (`unknown` from API 0.1.0 plugins); absent when there is no answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_source: Option<AnswerSource>,
    /// Grade of `answer` in [0, 1]: the leaf reward for leaves; for inner answering nodes it
    /// only feeds the answer-flip statistics. `None` when not graded.
    #[serde(default)]
    pub reward: Option<f64>,
    /// Why this node has no usable output or reward (plugin error, sampler error, errored
    /// ancestor). Errored nodes are excluded from credit, never scored 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why extraction or grading of this node failed (plugin trap, reward outside [0, 1]).
    /// Kept apart from `error` because `malt credit` re-scores and overwrites it, while a
    /// generation error is permanent. An errored leaf is excluded from credit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_error: Option<String>,
}

impl Node {
    /// Whether sampling stopped at the length limit (`max_new_tokens`) rather than at a stop
    /// token or string: the output may be cut mid-solution.
    pub fn is_truncated(&self) -> bool {
        self.finish == Some(FinishReason::Length)
    }

    /// Generation failed for this node or an ancestor: it has no output.
    pub fn is_errored(&self) -> bool {
        self.error.is_some()
    }
}

/// One finished tree, as stored in `trees.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tree {
    pub question_id: String,
    pub example: Example,
    /// Distinct prompts, each the full chat input of a sibling group.
    pub prompts: Vec<Vec<Message>>,
    pub nodes: Vec<Node>,
    /// The chain's plugins that extracted and graded the nodes ([`crate::scorer::chain_identity`]);
    /// absent when unknown. Credit re-scores the tree only when they changed since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scored_with: Option<String>,
}

/// Start index of each level in the arena, plus the total at the end.
pub fn level_offsets(chain: &ChainSpec) -> Vec<usize> {
    let mut offs = Vec::with_capacity(chain.len() + 1);
    let mut at = 0;
    offs.push(0);
    for size in chain.level_sizes() {
        at += size;
        offs.push(at);
    }
    offs
}

impl Tree {
    /// Checks that the tree has exactly the chain's layout, so credit can trust indices.
    /// Returns a human-readable reason on mismatch.
    pub fn check_shape(&self, chain: &ChainSpec) -> Result<(), String> {
        let offs = level_offsets(chain);
        let total = *offs.last().unwrap_or(&0);
        if self.nodes.len() != total {
            return Err(format!(
                "tree has {} nodes but the chain ({}) needs {total}; was it generated with other branches?",
                self.nodes.len(),
                chain
                    .agents
                    .iter()
                    .map(|a| a.branches.to_string())
                    .collect::<Vec<_>>()
                    .join("-")
            ));
        }
        if self.question_id != self.example.id {
            return Err(format!(
                "question_id {:?} differs from example.id {:?}",
                self.question_id, self.example.id
            ));
        }
        for (l, agent) in chain.agents.iter().enumerate() {
            let n = agent.branches as usize;
            for i in offs[l]..offs[l + 1] {
                let node = &self.nodes[i];
                let want_parent = if l == 0 {
                    None
                } else {
                    Some((offs[l - 1] + (i - offs[l]) / n) as u32)
                };
                if node.level as usize != l || node.parent != want_parent {
                    return Err(format!(
                        "node {i}: level {} parent {:?}, expected level {l} parent {want_parent:?}",
                        node.level, node.parent
                    ));
                }
                if node.agent != agent.name {
                    return Err(format!(
                        "node {i}: agent {:?} but the chain's level {l} is {:?}",
                        node.agent, agent.name
                    ));
                }
                if let Some(p) = node.prompt {
                    if p as usize >= self.prompts.len() {
                        return Err(format!("node {i}: prompt index {p} out of range"));
                    }
                }
                if let Some(r) = node.reward {
                    if !(0.0..=1.0).contains(&r) {
                        return Err(format!("node {i}: reward {r} outside [0, 1]"));
                    }
                }
            }
        }
        Ok(())
    }

    /// Prompt messages of a node, if it was rendered.
    pub fn prompt_of(&self, i: usize) -> Option<&[Message]> {
        let p = self.nodes.get(i)?.prompt?;
        self.prompts.get(p as usize).map(|v| v.as_slice())
    }
}
