//! Credit assignment: leaf rewards -> node values -> labels -> sibling pairs.
//!
//! Leaf value = reward. Inner value = mean over its scored children of either the child's
//! value (global pooling, the paper's: a generator's value is the mean of its n^2 leaves
//! when branching is uniform) or the child's binarised label (local pooling: 1 if the child's
//! value > the child agent's theta). Label positive iff value > theta, strictly.
//! Errored leaves are excluded from the mean; a node with no scored child is itself unscored.
//!
//! Speed: nodes are in level order with each parent before its children, so one reverse pass
//! over flat arrays finishes every child before its parent is read. The buffers are reused
//! across trees; the hot loop allocates nothing.

use serde::{Deserialize, Serialize};

use crate::chain::{check_theta, ChainSpec};
use crate::error::{Result, TreeError};
use crate::tree::Tree;

/// Marks "no parent" (level-0 nodes) in [`CreditInput::parent`].
pub const NO_PARENT: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pooling {
    /// Inner value = mean of children's values (the paper).
    #[default]
    Global,
    /// Inner value = mean of children's labels (child value > child theta).
    Local,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PairMode {
    /// Every positive x negative combination among siblings.
    #[default]
    All,
    /// One pair per parent: highest-valued positive vs lowest-valued negative, ties broken
    /// by the lower node index, so the choice is deterministic.
    OnePerParent,
}

/// What the training sets do with an output cut at `max_new_tokens` (finish reason
/// `length`). Credit itself is unchanged: a cut node still has a value from its descendants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TruncatedPolicy {
    /// Left out of SFT positives and of DPO pairs (either side): training on a cut solution
    /// teaches the model to produce it, and its label says more about the length limit than
    /// about the reasoning.
    #[default]
    Exclude,
    /// Trained on like any other output, marked as cut so the trainer appends no EOS (which
    /// would teach the model to stop mid-solution).
    Keep,
}

/// The `[credit]` section: global threshold, pooling, pair mode, cut outputs. Per-agent thetas
/// live on [`crate::chain::AgentSpec::theta`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CreditSettings {
    pub theta: f64,
    #[serde(default)]
    pub pooling: Pooling,
    #[serde(default)]
    pub pairs: PairMode,
    #[serde(default)]
    pub truncated: TruncatedPolicy,
}

impl Default for CreditSettings {
    fn default() -> Self {
        CreditSettings {
            theta: 0.5,
            pooling: Pooling::Global,
            pairs: PairMode::All,
            truncated: TruncatedPolicy::Exclude,
        }
    }
}

impl CreditSettings {
    pub fn validate(&self) -> Result<()> {
        check_theta("[credit] theta", self.theta)
    }

    /// Effective theta per level: the agent's own, else the global one.
    pub fn thetas(&self, chain: &ChainSpec) -> Result<Vec<f64>> {
        self.validate()?;
        chain.validate()?;
        Ok(chain
            .agents
            .iter()
            .map(|a| a.theta.unwrap_or(self.theta))
            .collect())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Label {
    Positive,
    Negative,
    /// Errored, or no scored descendant.
    Unscored,
}

/// Struct-of-arrays view of one tree, all that credit needs. Reused across trees.
#[derive(Debug, Default, Clone)]
pub struct CreditInput {
    /// Parent index, [`NO_PARENT`] for level 0. Must satisfy parent < index.
    pub parent: Vec<u32>,
    pub level: Vec<u16>,
    /// Leaf reward (ignored for inner nodes).
    pub reward: Vec<f64>,
    /// Errored nodes (plugin or sampler failure, errored ancestor, missing reward on a leaf).
    pub errored: Vec<bool>,
    /// Index of the leaf level (chain length - 1).
    pub leaf_level: u16,
}

impl CreditInput {
    /// Refills from a stored tree without reallocating when capacity suffices.
    pub fn fill_from_tree(&mut self, tree: &Tree, chain: &ChainSpec) {
        self.parent.clear();
        self.level.clear();
        self.reward.clear();
        self.errored.clear();
        self.leaf_level = (chain.len().max(1) - 1) as u16;
        for n in &tree.nodes {
            self.parent.push(n.parent.unwrap_or(NO_PARENT));
            self.level.push(n.level);
            let is_leaf = n.level == self.leaf_level;
            let reward = if is_leaf { n.reward } else { Some(0.0) };
            self.reward.push(reward.unwrap_or(f64::NAN));
            // A leaf without a reward was never graded: treat it as errored, not as 0.
            let leaf_unscorable =
                is_leaf && (n.score_error.is_some() || reward.is_none_or(|r| r.is_nan()));
            self.errored.push(n.error.is_some() || leaf_unscorable);
        }
    }

    pub fn len(&self) -> usize {
        self.parent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.parent.is_empty()
    }
}

/// Values and labels of one tree. `value[i]` is NaN for unscored nodes.
#[derive(Debug, Default, Clone)]
pub struct Credit {
    pub value: Vec<f64>,
    pub label: Vec<Label>,
    /// Leaves excluded because they errored.
    pub errored_leaves: u32,
    /// Inner nodes left unscored (errored, or every child errored).
    pub unscored_inner: u32,
    sum: Vec<f64>,
    count: Vec<u32>,
}

impl Credit {
    pub fn value_of(&self, i: usize) -> Option<f64> {
        self.value.get(i).copied().filter(|v| !v.is_nan())
    }
}

/// Computes values and labels for `input` into `out` (buffers reused).
/// `thetas[l]` is the threshold of level l (see [`CreditSettings::thetas`]).
pub fn assign(input: &CreditInput, thetas: &[f64], pooling: Pooling, out: &mut Credit) {
    let n = input.len();
    out.value.clear();
    out.value.resize(n, f64::NAN);
    out.label.clear();
    out.label.resize(n, Label::Unscored);
    out.sum.clear();
    out.sum.resize(n, 0.0);
    out.count.clear();
    out.count.resize(n, 0);
    out.errored_leaves = 0;
    out.unscored_inner = 0;
    let leaf = input.leaf_level;
    for i in (0..n).rev() {
        let lvl = input.level[i];
        let v = if input.errored[i] {
            f64::NAN
        } else if lvl == leaf {
            input.reward[i]
        } else if out.count[i] > 0 {
            out.sum[i] / out.count[i] as f64
        } else {
            f64::NAN
        };
        if v.is_nan() {
            if lvl == leaf {
                out.errored_leaves += 1;
            } else {
                out.unscored_inner += 1;
            }
            continue;
        }
        out.value[i] = v;
        let theta = thetas[lvl as usize];
        let positive = v > theta;
        out.label[i] = if positive {
            Label::Positive
        } else {
            Label::Negative
        };
        let p = input.parent[i];
        if p != NO_PARENT {
            let p = p as usize;
            out.sum[p] += match pooling {
                Pooling::Global => v,
                Pooling::Local => positive as u8 as f64,
            };
            out.count[p] += 1;
        }
    }
}

/// Convenience: credit a stored tree in one call (allocates; use [`assign`] in loops).
pub fn credit_tree(tree: &Tree, chain: &ChainSpec, settings: &CreditSettings) -> Result<Credit> {
    let thetas = settings.thetas(chain)?;
    tree.check_shape(chain).map_err(TreeError::Config)?;
    let mut input = CreditInput::default();
    input.fill_from_tree(tree, chain);
    let mut out = Credit::default();
    assign(&input, &thetas, settings.pooling, &mut out);
    Ok(out)
}

/// The sibling groups of `input`: runs of consecutive nodes with one parent and one level (the
/// arena keeps a parent's children contiguous), as index ranges in arena order.
pub fn sibling_groups(input: &CreditInput) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let n = input.len();
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= n {
            return None;
        }
        let (p, l) = (input.parent[start], input.level[start]);
        let mut end = start + 1;
        while end < n && input.parent[end] == p && input.level[end] == l {
            end += 1;
        }
        let group = start..end;
        start = end;
        Some(group)
    })
}

/// DPO pairs (chosen, rejected) among siblings: nodes with the same parent, hence the same
/// input. Calls `emit` per pair in a deterministic order (sibling groups in arena order;
/// within a group positives by index, then negatives by index).
pub fn for_each_pair(
    input: &CreditInput,
    credit: &Credit,
    mode: PairMode,
    emit: impl FnMut(usize, usize),
) {
    for_each_pair_where(input, credit, mode, |_| true, emit)
}

/// [`for_each_pair`] among the nodes `eligible` admits: an inadmissible node is neither paired
/// nor chosen as a group's best or worst, so [`PairMode::OnePerParent`] picks the best
/// admissible pair rather than dropping the group's pair.
pub fn for_each_pair_where(
    input: &CreditInput,
    credit: &Credit,
    mode: PairMode,
    eligible: impl Fn(usize) -> bool,
    mut emit: impl FnMut(usize, usize),
) {
    for group in sibling_groups(input) {
        match mode {
            PairMode::All => {
                for c in group.clone() {
                    if credit.label[c] != Label::Positive || !eligible(c) {
                        continue;
                    }
                    for r in group.clone() {
                        if credit.label[r] == Label::Negative && eligible(r) {
                            emit(c, r);
                        }
                    }
                }
            }
            PairMode::OnePerParent => {
                let mut best: Option<usize> = None;
                let mut worst: Option<usize> = None;
                for i in group.filter(|&i| eligible(i)) {
                    match credit.label[i] {
                        Label::Positive => {
                            if best.is_none_or(|b| credit.value[i] > credit.value[b]) {
                                best = Some(i);
                            }
                        }
                        Label::Negative => {
                            if worst.is_none_or(|w| credit.value[i] < credit.value[w]) {
                                worst = Some(i);
                            }
                        }
                        Label::Unscored => {}
                    }
                }
                if let (Some(c), Some(r)) = (best, worst) {
                    emit(c, r);
                }
            }
        }
    }
}
