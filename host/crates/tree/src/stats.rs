//! Run statistics: value histograms per level, positives and pairs per agent, answer flips
//! between consecutive answering agents, plugin errors. Saved as `<run>/stats.json`, printed
//! as a table.
//!
//! Flips: the answering levels are those whose agent produces an answer
//! (`AgentSpec::produces_answer`: every role except verifier/critic by default) plus the leaf
//! level. For each pair of consecutive answering levels (a, b), every node at level b with a
//! grade, whose ancestor at level a also has a grade, counts once: right means grade > 0.5.
//! So in G-V-R 3-3-3 each tree contributes 27 generator->refiner flips.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::chain::ChainSpec;
use crate::credit::{Credit, Label};
use crate::datasets::AgentSets;
use crate::score::ErrorCounts;
use crate::tree::Tree;

pub const BINS: usize = 10;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LevelStats {
    pub agent: String,
    /// Counts of scored values in [0, 0.1), [0.1, 0.2), ..., [0.9, 1.0].
    pub histogram: [u64; BINS],
    pub scored: u64,
    pub unscored: u64,
    /// Mean of scored values (0 when none).
    pub mean_value: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentStats {
    pub agent: String,
    pub positives: u64,
    pub negatives: u64,
    pub unscored: u64,
    /// Records written to sft.jsonl (positives with a prompt).
    pub sft: u64,
    /// Records written to dpo.jsonl.
    pub pairs: u64,
    /// Outputs cut at the length limit (finish reason `length`), whatever their label.
    #[serde(default)]
    pub truncated: u64,
    /// Positives cut at the length limit: left out of sft.jsonl or kept there, marked, as
    /// `[credit] truncated` says.
    #[serde(default)]
    pub sft_truncated: u64,
    /// Sibling pairs with a cut side: left out of dpo.jsonl or kept, marked.
    #[serde(default)]
    pub pairs_truncated: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FlipStats {
    pub from: String,
    pub to: String,
    pub wrong_to_right: u64,
    pub right_to_wrong: u64,
    pub right_to_right: u64,
    pub wrong_to_wrong: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub trees: u64,
    pub nodes: u64,
    pub leaves: u64,
    pub errored_leaves: u64,
    pub unscored_inner: u64,
    pub levels: Vec<LevelStats>,
    pub agents: Vec<AgentStats>,
    pub flips: Vec<FlipStats>,
    /// Nodes whose plugin call failed, by plugin name ("sampler" for model failures).
    pub errors: BTreeMap<String, u64>,
}

impl Stats {
    pub fn new(chain: &ChainSpec) -> Self {
        let answering = answering_levels(chain);
        Stats {
            levels: chain
                .agents
                .iter()
                .map(|a| LevelStats {
                    agent: a.name.clone(),
                    ..Default::default()
                })
                .collect(),
            agents: chain
                .agents
                .iter()
                .map(|a| AgentStats {
                    agent: a.name.clone(),
                    ..Default::default()
                })
                .collect(),
            flips: answering
                .windows(2)
                .map(|w| FlipStats {
                    from: chain.agents[w[0]].name.clone(),
                    to: chain.agents[w[1]].name.clone(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    /// Adds one credited tree.
    pub fn add_tree(&mut self, chain: &ChainSpec, tree: &Tree, credit: &Credit) {
        let leaf = chain.len().saturating_sub(1);
        self.trees += 1;
        self.nodes += tree.nodes.len() as u64;
        self.errored_leaves += credit.errored_leaves as u64;
        self.unscored_inner += credit.unscored_inner as u64;
        for (i, node) in tree.nodes.iter().enumerate() {
            let l = node.level as usize;
            if l == leaf {
                self.leaves += 1;
            }
            let (lv, ag) = (&mut self.levels[l], &mut self.agents[l]);
            ag.truncated += u64::from(node.is_truncated());
            match credit.label[i] {
                Label::Positive => ag.positives += 1,
                Label::Negative => ag.negatives += 1,
                Label::Unscored => ag.unscored += 1,
            }
            match credit.value_of(i) {
                Some(v) => {
                    let bin = ((v * BINS as f64) as usize).min(BINS - 1);
                    lv.histogram[bin] += 1;
                    lv.mean_value += v; // a sum until `finish`
                    lv.scored += 1;
                }
                None => lv.unscored += 1,
            }
        }
        let answering = answering_levels(chain);
        for (f, w) in self.flips.iter_mut().zip(answering.windows(2)) {
            let (a, b) = (w[0], w[1]);
            for node in tree.nodes.iter().filter(|n| n.level as usize == b) {
                let mut anc = node;
                while anc.level as usize > a {
                    match anc.parent.and_then(|p| tree.nodes.get(p as usize)) {
                        Some(p) => anc = p,
                        None => break,
                    }
                }
                let (Some(ra), Some(rb)) = (anc.reward, node.reward) else {
                    continue;
                };
                match (ra > 0.5, rb > 0.5) {
                    (false, true) => f.wrong_to_right += 1,
                    (true, false) => f.right_to_wrong += 1,
                    (true, true) => f.right_to_right += 1,
                    (false, false) => f.wrong_to_wrong += 1,
                }
            }
        }
    }

    /// Adds another partial result (same chain, before `finish`).
    pub fn merge(&mut self, other: &Stats) {
        self.trees += other.trees;
        self.nodes += other.nodes;
        self.leaves += other.leaves;
        self.errored_leaves += other.errored_leaves;
        self.unscored_inner += other.unscored_inner;
        for (a, b) in self.levels.iter_mut().zip(&other.levels) {
            for (x, y) in a.histogram.iter_mut().zip(&b.histogram) {
                *x += y;
            }
            a.scored += b.scored;
            a.unscored += b.unscored;
            a.mean_value += b.mean_value;
        }
        for (a, b) in self.agents.iter_mut().zip(&other.agents) {
            a.positives += b.positives;
            a.negatives += b.negatives;
            a.unscored += b.unscored;
            a.truncated += b.truncated;
        }
        for (a, b) in self.flips.iter_mut().zip(&other.flips) {
            a.wrong_to_right += b.wrong_to_right;
            a.right_to_wrong += b.right_to_wrong;
            a.right_to_right += b.right_to_right;
            a.wrong_to_wrong += b.wrong_to_wrong;
        }
    }

    /// Records dataset sizes and errors, and turns value sums into means.
    pub fn finish(&mut self, sets: &[AgentSets], errors: &ErrorCounts) {
        for (a, set) in self.agents.iter_mut().zip(sets) {
            a.sft = set.sft_count;
            a.pairs = set.dpo_count;
            a.sft_truncated = set.sft_truncated;
            a.pairs_truncated = set.dpo_truncated;
        }
        for l in &mut self.levels {
            l.mean_value = if l.scored > 0 {
                l.mean_value / l.scored as f64
            } else {
                0.0
            };
        }
        self.errors = errors.clone();
    }

    /// A readable table of everything above.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "trees {}  nodes {}  leaves {}  errored leaves {}  unscored inner {}",
            self.trees, self.nodes, self.leaves, self.errored_leaves, self.unscored_inner
        );
        let _ = writeln!(
            s,
            "\n{:<16} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "agent",
            "positive",
            "negative",
            "unscored",
            "sft",
            "pairs",
            "cut",
            "cut pos",
            "cut pair"
        );
        for a in &self.agents {
            let _ = writeln!(
                s,
                "{:<16} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                a.agent,
                a.positives,
                a.negatives,
                a.unscored,
                a.sft,
                a.pairs,
                a.truncated,
                a.sft_truncated,
                a.pairs_truncated
            );
        }
        let _ = writeln!(
            s,
            "(cut: outputs stopped by max_new_tokens; cut pos / cut pair: positives and pairs \
             with a cut output, left out of the sets or kept as [credit] truncated says)"
        );
        let _ = writeln!(
            s,
            "\nvalue histogram (bins of 0.1)\n{:<16} {:>6} {}",
            "agent",
            "mean",
            (0..BINS)
                .map(|b| format!("{:>6}", format!("{:.1}", b as f64 / 10.0)))
                .collect::<String>()
        );
        for l in &self.levels {
            let _ = writeln!(
                s,
                "{:<16} {:>6.3} {}",
                l.agent,
                l.mean_value,
                l.histogram
                    .iter()
                    .map(|c| format!("{c:>6}"))
                    .collect::<String>()
            );
        }
        if !self.flips.is_empty() {
            let _ = writeln!(
                s,
                "\n{:<33} {:>11} {:>11} {:>11} {:>11}",
                "answer flips", "wrong>right", "right>wrong", "right>right", "wrong>wrong"
            );
            for f in &self.flips {
                let _ = writeln!(
                    s,
                    "{:<33} {:>11} {:>11} {:>11} {:>11}",
                    format!("{} -> {}", f.from, f.to),
                    f.wrong_to_right,
                    f.right_to_wrong,
                    f.right_to_right,
                    f.wrong_to_wrong
                );
            }
        }
        if !self.errors.is_empty() {
            let _ = writeln!(s, "\nplugin errors");
            for (k, v) in &self.errors {
                let _ = writeln!(s, "{k:<16} {v:>9}");
            }
        }
        s
    }

    /// What changed in positives and pairs per agent between two credit runs (for `--watch`).
    pub fn diff(before: &Stats, after: &Stats) -> String {
        let mut s = format!(
            "{:<16} {:>18} {:>18} {:>18}\n",
            "agent", "positives", "sft", "pairs"
        );
        for a in &after.agents {
            let b = before.agents.iter().find(|x| x.agent == a.agent);
            let cell = |old: Option<u64>, new: u64| match old {
                Some(o) if o == new => format!("{new}"),
                Some(o) => format!("{o} -> {new}"),
                None => format!("(new) {new}"),
            };
            let _ = writeln!(
                s,
                "{:<16} {:>18} {:>18} {:>18}",
                a.agent,
                cell(b.map(|x| x.positives), a.positives),
                cell(b.map(|x| x.sft), a.sft),
                cell(b.map(|x| x.pairs), a.pairs)
            );
        }
        s
    }
}

/// Levels whose nodes carry a graded answer: answering agents plus the leaf level.
pub fn answering_levels(chain: &ChainSpec) -> Vec<usize> {
    let last = chain.len().saturating_sub(1);
    (0..chain.len())
        .filter(|&l| l == last || chain.agents[l].produces_answer())
        .collect()
}
