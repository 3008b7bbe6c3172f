//! [`malt_tree::Sampler`] over the embedded candle model.
//!
//! Siblings share their whole prompt: each request is prefilled once and forked into its n
//! branches. Across requests, the sampler keeps the most recent prompt caches and extends the one
//! with the longest common token prefix (same adapter), so the system prompt and the question are
//! not recomputed for every node of a level. All branches of one agent's requests decode as one
//! batch.

use std::collections::{BTreeMap, HashSet};

use malt_model::{Branch, Cache, LoraAdapter, Model};
use malt_tree::{
    Completion, FinishReason, RequestResult, SampleRequest, Sampler, SamplerError, SamplingParams,
};

use super::prefix_pool::PrefixPool;

/// Counters for the progress line and the benchmark.
#[derive(Debug, Default, Clone, Copy)]
pub struct SamplerStats {
    pub prompt_tokens: u64,
    pub prefill_computed: u64,
    /// Prompt tokens whose (adapter, token prefix) had no keys/values yet anywhere (an earlier
    /// prompt or an earlier completion): what a perfect prefix cache would compute.
    pub prefill_minimum: u64,
    pub generated_tokens: u64,
    pub sequences: u64,
}

pub struct ModelSampler<'m> {
    model: &'m Model,
    /// Per agent; an agent without an entry samples from the base model.
    adapters: BTreeMap<String, LoraAdapter>,
    pool: PrefixPool,
    /// (adapter uid, hash of a token prefix) computed so far, for `prefill_minimum`.
    known: HashSet<(u64, u64)>,
    pub stats: SamplerStats,
}

impl<'m> ModelSampler<'m> {
    pub fn new(model: &'m Model) -> Self {
        ModelSampler {
            model,
            adapters: BTreeMap::new(),
            pool: PrefixPool::default(),
            known: HashSet::new(),
            stats: SamplerStats::default(),
        }
    }

    /// Use `adapter` for `agent`'s turns (a trained chain).
    pub fn with_adapter(mut self, agent: &str, adapter: LoraAdapter) -> Self {
        self.adapters.insert(agent.to_owned(), adapter);
        self
    }

    /// A cache holding `tokens` under `adapter` from the prefix pool, counted.
    fn prompt_cache(
        &mut self,
        tokens: &[u32],
        adapter: Option<&LoraAdapter>,
    ) -> malt_model::Result<Cache> {
        self.stats.prefill_minimum += self.mark(adapter.map(|a| a.uid()), tokens) as u64;
        let before = self.model.decoder.prefill_tokens_computed();
        let cache = self.pool.prompt_cache(self.model, tokens, adapter)?;
        self.stats.prefill_computed +=
            (self.model.decoder.prefill_tokens_computed() - before) as u64;
        self.stats.prompt_tokens += tokens.len() as u64;
        Ok(cache)
    }
}

impl ModelSampler<'_> {
    /// Marks every prefix of `tokens` as computed under `adapter`; returns how many were new.
    fn mark(&mut self, adapter: Option<u64>, tokens: &[u32]) -> usize {
        let a = adapter.unwrap_or(0);
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        let mut new = 0;
        for &t in tokens {
            // FNV-1a over the token's bytes, chained through the prefix.
            for b in t.to_le_bytes() {
                h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
            }
            new += usize::from(self.known.insert((a, h)));
        }
        new
    }
}

/// The tree's record of a model completion: its text, every sampled id (the end-of-turn token
/// included) and why it stopped.
pub fn completion(c: malt_model::Completion) -> Completion {
    let token_ids = c.sampled_ids();
    let finish = match c.finish {
        malt_model::Finish::Eos(_) => Some(FinishReason::EndOfTurn),
        malt_model::Finish::StopString => Some(FinishReason::StopString),
        malt_model::Finish::Length => Some(FinishReason::Length),
        // Only a streaming observer cancels; the sampler's never does.
        malt_model::Finish::Cancelled => None,
    };
    let logprobs = (c.logprobs.len() == token_ids.len()).then_some(c.logprobs);
    Completion {
        text: c.text,
        token_ids: Some(token_ids),
        finish,
        logprobs,
    }
}

impl Sampler for ModelSampler<'_> {
    fn sample(
        &mut self,
        requests: &[SampleRequest<'_>],
    ) -> Result<Vec<RequestResult>, SamplerError> {
        let mut out: Vec<RequestResult> = vec![Ok(Vec::new()); requests.len()];
        // Requests of one agent share their sampling parameters and adapter: one decode batch.
        let mut by_agent: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, r) in requests.iter().enumerate() {
            by_agent.entry(r.agent).or_default().push(i);
        }
        for (agent, idx) in by_agent {
            // Take the adapter out while its requests run, so `self` stays borrowable.
            let adapter = self.adapters.remove(agent);
            let result = self.sample_agent(requests, agent, &idx, adapter.as_ref(), &mut out);
            if let Some(a) = adapter {
                self.adapters.insert(agent.to_owned(), a);
            }
            result?;
        }
        Ok(out)
    }
}

impl ModelSampler<'_> {
    /// Samples every request of one agent (`idx`) as one decode batch.
    fn sample_agent(
        &mut self,
        requests: &[SampleRequest<'_>],
        agent: &str,
        idx: &[usize],
        adapter: Option<&LoraAdapter>,
        out: &mut [RequestResult],
    ) -> Result<(), SamplerError> {
        let params = requests[idx[0]].params;
        let mut branches = Vec::new();
        let mut owners = Vec::new();
        let tp = std::time::Instant::now();
        for &i in idx {
            let r = &requests[i];
            let cache = self
                .model
                .encode_chat(r.messages, true)
                .and_then(|tokens| self.prompt_cache(&tokens, adapter));
            match cache {
                Ok(cache) => {
                    for &seed in r.seeds {
                        branches.push(Branch {
                            cache: cache.clone(),
                            seed,
                        });
                        owners.push(i);
                    }
                }
                // A prompt the model cannot take (e.g. longer than its context) fails only
                // its own nodes.
                Err(e) => out[i] = Err(format!("agent {agent}: {e}")),
            }
        }
        if branches.is_empty() {
            return Ok(());
        }
        if std::env::var_os("MALT_PROFILE_DECODE").is_some() {
            eprintln!(
                "prefill profile ({agent}, {} prompts): {:.3}s",
                idx.len(),
                tp.elapsed().as_secs_f64()
            );
        }
        let done = self
            .model
            .generate(branches, params, adapter)
            .map_err(|e| SamplerError(format!("agent {agent}: generation failed: {e}")))?;
        // The batch's decode steps reused each other's freed pages; the next batch has other
        // lengths, and what this one kept would only add to its peak.
        malt_model::process::release_freed();
        for (c, &i) in done.into_iter().zip(&owners) {
            self.mark(adapter.map(|a| a.uid()), c.cache.tokens());
            self.stats.generated_tokens += c.tokens.len() as u64;
            self.stats.sequences += 1;
            if let Ok(v) = &mut out[i] {
                v.push(completion(c));
            }
        }
        Ok(())
    }
}

/// One completion of `messages` with nothing shared: the prompt prefilled alone and one branch
/// decoded alone, as a sampler without batching or a prefix cache would. Returns the text and
/// the number of tokens generated. The benchmark's baseline for [`ModelSampler`].
pub fn sample_alone(
    model: &Model,
    messages: &[malt_tree::Message],
    params: &SamplingParams,
    seed: u64,
) -> malt_model::Result<(String, usize)> {
    let tokens = model.encode_chat(messages, true)?;
    let cache = model.prefill(&tokens, None)?;
    let mut out = model.generate(vec![Branch { cache, seed }], params, None)?;
    Ok(out
        .pop()
        .map(|c| (c.text, c.tokens.len()))
        .unwrap_or_default())
}
