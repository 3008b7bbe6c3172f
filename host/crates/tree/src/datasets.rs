//! Per-agent training sets in the conversational formats TRL reads.
//!
//! SFT: `{"prompt": [messages], "completion": [{"role": "assistant", "content": output}],
//! "completion_ids": [..], "meta": {...}}` for every positive node. DPO: `{"prompt": [...],
//! "chosen": [...], "rejected": [...], "chosen_ids": [..], "rejected_ids": [..], "meta": {...}}`
//! for sibling pairs only (same parent, hence the same prompt). The `*_ids` fields are the
//! sampled token ids, present when the tree stores them; malt's trainer trains on them, TRL
//! ignores them as it ignores `meta`. Files: `<run>/datasets/<agent>/{sft,dpo}.jsonl`,
//! each replaced atomically.
//!
//! Outputs cut at `max_new_tokens` follow [`TruncatedPolicy`]: excluded by default; kept, they
//! carry `"completion_truncated": true` (`chosen_truncated`, `rejected_truncated`) so the
//! trainer appends no EOS to them.

use std::path::Path;

use serde::Serialize;

use crate::chain::ChainSpec;
use crate::credit::{for_each_pair_where, Credit, CreditInput, Label, PairMode, TruncatedPolicy};
use crate::error::{Result, TreeError};
use crate::store::par_map;
use crate::tree::{Node, Tree};

#[derive(Serialize)]
struct SftMeta<'a> {
    question_id: &'a str,
    agent: &'a str,
    node: usize,
    value: f64,
}

#[derive(Serialize)]
struct DpoMeta<'a> {
    question_id: &'a str,
    agent: &'a str,
    parent: Option<u32>,
    chosen_node: usize,
    rejected_node: usize,
    chosen_value: f64,
    rejected_value: f64,
}

/// Records are assembled from pre-serialised pieces: siblings share one prompt, which can be
/// several KB and appears in every SFT record and pair of the group, so it is serialised once
/// per tree instead of once per record.
fn json(out: &mut Vec<u8>, v: &impl Serialize) -> Result<()> {
    serde_json::to_writer(out, v)
        .map_err(|e| TreeError::Config(format!("serialising a dataset record: {e}")))
}

fn assistant(out: &mut Vec<u8>, content: &str) -> Result<()> {
    out.extend_from_slice(b"[{\"role\":\"assistant\",\"content\":");
    json(out, &content)?;
    out.extend_from_slice(b"}]");
    Ok(())
}

/// `,"<key>":[ids]` when the node stores its sampled token ids: the trainer trains on exactly
/// those (after the prompt's ids) instead of re-encoding the text.
fn ids(out: &mut Vec<u8>, key: &str, node: &Node) -> Result<()> {
    if let Some(ids) = &node.token_ids {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        json(out, ids)?;
    }
    Ok(())
}

/// `,"<key>":true` for an output cut at the length limit (kept by [`TruncatedPolicy::Keep`]).
fn cut_flag(out: &mut Vec<u8>, key: &str, node: &Node) {
    if node.is_truncated() {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":true");
    }
}

/// JSONL bytes and counts of one agent's two sets.
#[derive(Debug, Default, Clone)]
pub struct AgentSets {
    pub sft: Vec<u8>,
    pub dpo: Vec<u8>,
    pub sft_count: u64,
    pub dpo_count: u64,
    /// Positives cut at the length limit: left out ([`TruncatedPolicy::Exclude`]) or in the
    /// set, marked ([`TruncatedPolicy::Keep`]).
    pub sft_truncated: u64,
    /// Pairs with a cut side: left out, or in the set, marked (as `sft_truncated`).
    pub dpo_truncated: u64,
}

/// Accumulates the datasets of all agents over many trees.
#[derive(Debug, Clone)]
pub struct DatasetBuilder {
    agents: Vec<String>,
    sets: Vec<AgentSets>,
    mode: PairMode,
    truncated: TruncatedPolicy,
}

impl DatasetBuilder {
    pub fn new(chain: &ChainSpec, mode: PairMode, truncated: TruncatedPolicy) -> Self {
        DatasetBuilder {
            agents: chain.agents.iter().map(|a| a.name.clone()).collect(),
            sets: vec![AgentSets::default(); chain.len()],
            mode,
            truncated,
        }
    }

    /// Adds the positives and sibling pairs of one credited tree.
    pub fn add_tree(&mut self, tree: &Tree, input: &CreditInput, credit: &Credit) -> Result<()> {
        let cut = |i: usize| tree.nodes[i].is_truncated();
        let keep_cut = self.truncated == TruncatedPolicy::Keep;
        // The pairs with a cut side among all pairs: what exclusion leaves out (with
        // one-per-parent it picks the best uncut pair instead, so fewer may be lost).
        let mut cut_pairs = vec![0u64; self.sets.len()];
        let mut pairs = Vec::new();
        for_each_pair_where(
            input,
            credit,
            self.mode,
            |_| true,
            |c, r| {
                if cut(c) || cut(r) {
                    cut_pairs[tree.nodes[c].level as usize] += 1;
                }
                pairs.push((c, r));
            },
        );
        // Enumerated again without the cut nodes only when some pair had one: one-per-parent
        // then picks another pair, so dropping the cut pairs from the list would not do.
        if !keep_cut && cut_pairs.iter().any(|&n| n > 0) {
            pairs.clear();
            for_each_pair_where(
                input,
                credit,
                self.mode,
                |i| !cut(i),
                |c, r| pairs.push((c, r)),
            );
        }
        for (set, n) in self.sets.iter_mut().zip(cut_pairs) {
            set.dpo_truncated += n;
        }
        // Serialise each prompt that some record needs, once.
        let prompt_of = |i: usize| tree.nodes[i].prompt.map(|p| p as usize);
        let mut cache: Vec<Option<Vec<u8>>> = vec![None; tree.prompts.len()];
        let positives = (0..tree.nodes.len())
            .filter(|&i| credit.label[i] == Label::Positive && (keep_cut || !cut(i)));
        for i in positives.chain(pairs.iter().map(|&(c, _)| c)) {
            let Some(p) = prompt_of(i).filter(|&p| p < cache.len()) else {
                continue;
            };
            if cache[p].is_none() {
                let mut buf = Vec::new();
                json(&mut buf, &tree.prompts[p])?;
                cache[p] = Some(buf);
            }
        }
        let prompt_json = |i: usize| prompt_of(i).and_then(|p| cache.get(p)?.as_deref());
        for (i, node) in tree.nodes.iter().enumerate() {
            if credit.label[i] != Label::Positive {
                continue;
            }
            if cut(i) {
                self.sets[node.level as usize].sft_truncated += 1;
                if !keep_cut {
                    continue;
                }
            }
            let Some(prompt) = prompt_json(i) else {
                continue;
            };
            let out = &mut self.sets[node.level as usize];
            out.sft.extend_from_slice(b"{\"prompt\":");
            out.sft.extend_from_slice(prompt);
            out.sft.extend_from_slice(b",\"completion\":");
            assistant(&mut out.sft, &node.output)?;
            ids(&mut out.sft, "completion_ids", node)?;
            cut_flag(&mut out.sft, "completion_truncated", node);
            out.sft.extend_from_slice(b",\"meta\":");
            json(
                &mut out.sft,
                &SftMeta {
                    question_id: &tree.question_id,
                    agent: &node.agent,
                    node: i,
                    value: credit.value[i],
                },
            )?;
            out.sft.extend_from_slice(b"}\n");
            out.sft_count += 1;
        }
        for (c, r) in pairs {
            let (cn, rn) = (&tree.nodes[c], &tree.nodes[r]);
            let Some(prompt) = prompt_json(c) else {
                continue;
            };
            let out = &mut self.sets[cn.level as usize];
            out.dpo.extend_from_slice(b"{\"prompt\":");
            out.dpo.extend_from_slice(prompt);
            out.dpo.extend_from_slice(b",\"chosen\":");
            assistant(&mut out.dpo, &cn.output)?;
            out.dpo.extend_from_slice(b",\"rejected\":");
            assistant(&mut out.dpo, &rn.output)?;
            ids(&mut out.dpo, "chosen_ids", cn)?;
            ids(&mut out.dpo, "rejected_ids", rn)?;
            cut_flag(&mut out.dpo, "chosen_truncated", cn);
            cut_flag(&mut out.dpo, "rejected_truncated", rn);
            out.dpo.extend_from_slice(b",\"meta\":");
            json(
                &mut out.dpo,
                &DpoMeta {
                    question_id: &tree.question_id,
                    agent: &cn.agent,
                    parent: cn.parent,
                    chosen_node: c,
                    rejected_node: r,
                    chosen_value: credit.value[c],
                    rejected_value: credit.value[r],
                },
            )?;
            out.dpo.extend_from_slice(b"}\n");
            out.dpo_count += 1;
        }
        Ok(())
    }

    /// Appends another builder's records (same chain) after this one's; used to merge the
    /// results of parallel chunks in order.
    pub fn append(&mut self, other: DatasetBuilder) {
        for (a, b) in self.sets.iter_mut().zip(other.sets) {
            a.sft.extend_from_slice(&b.sft);
            a.dpo.extend_from_slice(&b.dpo);
            a.sft_count += b.sft_count;
            a.dpo_count += b.dpo_count;
            a.sft_truncated += b.sft_truncated;
            a.dpo_truncated += b.dpo_truncated;
        }
    }

    pub fn agents(&self) -> &[String] {
        &self.agents
    }

    pub fn sets(&self) -> &[AgentSets] {
        &self.sets
    }

    /// Writes `<run>/datasets/<agent>/{sft,dpo}.jsonl` atomically (files in parallel: the
    /// fsyncs dominate).
    pub fn write(&self, run_dir: &Path) -> Result<()> {
        let mut files: Vec<(std::path::PathBuf, &[u8])> = Vec::new();
        let layout = malt_layout::RoundLayout::at(run_dir);
        for (name, set) in self.agents.iter().zip(&self.sets) {
            let dir = layout.agent_datasets(name);
            std::fs::create_dir_all(&dir).map_err(|e| TreeError::io(&dir, e))?;
            files.push((layout.dataset(name, "sft"), &set.sft));
            files.push((layout.dataset(name, "dpo"), &set.dpo));
        }
        par_map(&files, |(path, bytes)| {
            malt_base::atomic::write_atomic(path, bytes).map_err(|e| TreeError::io(path, e))
        })
        .into_iter()
        .collect()
    }
}
