//! The prompt caches kept across requests, so that prompts sharing a prefix (the system prompt,
//! the question, an earlier agent's turn) are not prefilled again: one policy for the tree
//! sampler and for `malt serve`.

use malt_model::{Cache, LoraAdapter, Model};

/// How many prompt caches to keep. A 135M model holds ~46 KB of keys/values per token, so 32
/// prompts of 500 tokens cost well under 1 GB.
const CAPACITY: usize = 32;

/// The most recent prompt caches, oldest first.
#[derive(Default)]
pub struct PrefixPool {
    caches: Vec<Cache>,
}

impl PrefixPool {
    /// A cache holding `tokens` under `adapter`: the pooled cache of the same adapter that
    /// shares the longest prefix with them, extended, or a fresh prefill. The result joins the
    /// pool (the oldest leaves it when full).
    pub fn prompt_cache(
        &mut self,
        model: &Model,
        tokens: &[u32],
        adapter: Option<&LoraAdapter>,
    ) -> malt_model::Result<Cache> {
        let uid = adapter.map(|a| a.uid());
        let best = self
            .caches
            .iter()
            .filter(|c| c.adapter_uid() == uid)
            .max_by_key(|c| common_prefix(c.tokens(), tokens));
        let cache = match best {
            Some(base) => model.extend(base, tokens, adapter)?,
            None => model.prefill(tokens, adapter)?,
        };
        if self.caches.len() == CAPACITY {
            self.caches.remove(0);
        }
        self.caches.push(cache.clone());
        Ok(cache)
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
