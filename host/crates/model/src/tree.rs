//! Tree sampling for the agent chain: a node's prompt is prefilled once (reusing its parent's
//! keys/values for the common prefix when computed under the same adapter), forked into `n`
//! branches that decode as one batch, recursively. Branch `i` of the node at `path` samples with
//! `branch_seed(seed, path ++ [i])`, so results do not depend on batching or visiting order.

use crate::error::Result;
use crate::generate::{Branch, Completion};
use crate::kv::Cache;
use crate::lora::LoraAdapter;
use crate::model::Model;
use crate::sampling::{branch_seed, SamplingParams};
use std::collections::HashSet;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreeStats {
    /// Prompt tokens actually pushed through prefill.
    pub prefill_computed: usize,
    /// The unique-prefix minimum: prompt tokens whose (adapter, prefix) had no keys/values yet.
    pub prefill_minimum: usize,
    /// Tokens generated (including eos steps).
    pub generated: usize,
    pub nodes: usize,
    pub sequences: usize,
}

/// One node to expand in [`TreeSampler::sample_level`].
#[derive(Debug, Clone, Copy)]
pub struct NodeRequest<'a> {
    pub parent: Option<&'a Cache>,
    pub prompt: &'a [u32],
    pub n: usize,
    pub path: &'a [usize],
}

pub struct TreeSampler<'m> {
    model: &'m Model,
    /// The root seed of the trees it samples.
    seed: u64,
    /// (adapter uid, hash of a token prefix) whose keys/values exist somewhere in the tree.
    known: HashSet<(u64, u64)>,
    pub stats: TreeStats,
}

fn step_hash(h: u64, tok: u32) -> u64 {
    // FNV-1a style over the token's bytes, seeded with the previous prefix's hash.
    let mut h = h ^ 0xcbf2_9ce4_8422_2325;
    for b in tok.to_le_bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.rotate_left(17) ^ (tok as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl<'m> TreeSampler<'m> {
    /// A sampler of trees rooted at `seed`: child `i` of the node at `path` decodes with
    /// [`branch_seed`]`(seed, path ++ [i])`, whatever order or batch it is decoded in.
    pub fn new(model: &'m Model, seed: u64) -> Self {
        TreeSampler {
            model,
            seed,
            known: HashSet::new(),
            stats: TreeStats::default(),
        }
    }

    pub fn model(&self) -> &Model {
        self.model
    }

    /// Marks every prefix of `tokens` as available under `adapter`; returns how many were new.
    fn mark(&mut self, adapter: u64, tokens: &[u32]) -> usize {
        let mut h = 0u64;
        let mut new = 0;
        for &t in tokens {
            h = step_hash(h, t);
            if self.known.insert((adapter, h)) {
                new += 1;
            }
        }
        new
    }

    /// Samples `n` children of a node whose full prompt is `prompt` (tokens). `parent` is the cache
    /// of the sequence the prompt continues (e.g. the parent's completion), if any; its keys/values
    /// are reused for the common prefix when computed under the same adapter. `path` identifies the
    /// node (child indices from the root) for seeding. Each child's `cache` can be the `parent` of
    /// the next level.
    pub fn sample(
        &mut self,
        parent: Option<&Cache>,
        prompt: &[u32],
        adapter: Option<&LoraAdapter>,
        n: usize,
        params: &SamplingParams,
        path: &[usize],
    ) -> Result<Vec<Completion>> {
        let uid = adapter.map(|a| a.uid()).unwrap_or(0);
        self.stats.prefill_minimum += self.mark(uid, prompt);
        let before = self.model.decoder.prefill_tokens_computed();
        let empty = Cache::empty();
        let cache = self
            .model
            .extend(parent.unwrap_or(&empty), prompt, adapter)?;
        self.stats.prefill_computed += self.model.decoder.prefill_tokens_computed() - before;
        let branches = cache
            .fork(n)
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let mut p = path.to_vec();
                p.push(i);
                Branch {
                    cache: c,
                    seed: branch_seed(self.seed, &p),
                }
            })
            .collect();
        let out = self.model.generate(branches, params, adapter)?;
        for c in &out {
            self.mark(uid, c.cache.tokens());
            self.stats.generated +=
                c.tokens.len() + usize::from(matches!(c.finish, crate::generate::Finish::Eos(_)));
        }
        self.stats.nodes += 1;
        self.stats.sequences += n;
        Ok(out)
    }

    /// Expands several nodes that use the same adapter (typically one agent level) and decodes
    /// all their children as one batch: same results as calling [`Self::sample`] per node (same
    /// seeds), higher throughput. Returns the children per node, in order.
    pub fn sample_level(
        &mut self,
        nodes: &[NodeRequest],
        adapter: Option<&LoraAdapter>,
        params: &SamplingParams,
    ) -> Result<Vec<Vec<Completion>>> {
        let uid = adapter.map(|a| a.uid()).unwrap_or(0);
        let empty = Cache::empty();
        let mut branches = vec![];
        let tp = std::time::Instant::now();
        for node in nodes {
            self.stats.prefill_minimum += self.mark(uid, node.prompt);
            let before = self.model.decoder.prefill_tokens_computed();
            let cache = self
                .model
                .extend(node.parent.unwrap_or(&empty), node.prompt, adapter)?;
            self.stats.prefill_computed += self.model.decoder.prefill_tokens_computed() - before;
            for (i, c) in cache.fork(node.n).into_iter().enumerate() {
                let mut p = node.path.to_vec();
                p.push(i);
                branches.push(Branch {
                    cache: c,
                    seed: branch_seed(self.seed, &p),
                });
            }
        }
        if std::env::var_os("MALT_PROFILE_DECODE").is_some() {
            eprintln!(
                "prefill profile ({} nodes): {:.3}s",
                nodes.len(),
                tp.elapsed().as_secs_f64()
            );
        }
        let mut out = self.model.generate(branches, params, adapter)?.into_iter();
        let mut result = Vec::with_capacity(nodes.len());
        for node in nodes {
            let kids: Vec<Completion> = out.by_ref().take(node.n).collect();
            for c in &kids {
                self.mark(uid, c.cache.tokens());
                self.stats.generated += c.tokens.len()
                    + usize::from(matches!(c.finish, crate::generate::Finish::Eos(_)));
            }
            self.stats.nodes += 1;
            self.stats.sequences += node.n;
            result.push(kids);
        }
        Ok(result)
    }
}
