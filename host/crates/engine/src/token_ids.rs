//! Token ids for every completion of a sampler that may not return them (the remote backend):
//! an engine's ids are kept when they spell its text under the local tokenizer, otherwise the
//! text is encoded locally. Training then always has ids; how many came from where is counted
//! and logged, since a re-encoding is not necessarily what the engine sampled.

use malt_model::Tokenizer;
use malt_tree::{RequestResult, SampleRequest, Sampler, SamplerError};

/// Where the ids of the completions came from.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TokenIdStats {
    /// Completions whose engine ids were kept.
    pub from_engine: u64,
    /// ... of which the local tokenizer encodes the text differently (the engine sampled a
    /// non-canonical tokenization; the sampled ids are what training uses).
    pub non_canonical: u64,
    /// Completions the engine returned no ids for: the text encoded locally.
    pub reencoded: u64,
    /// Engine ids whose decoding is not the text: another tokenizer than the local model's.
    /// The text was encoded locally instead.
    pub mismatched: u64,
}

impl TokenIdStats {
    /// The end-of-stage log line (a warning when ids had to be made up locally).
    pub fn log(&self) {
        let total = self.from_engine + self.reencoded + self.mismatched;
        if total == 0 {
            return;
        }
        let line = format!(
            "token ids: {} of {total} completions as the engine sampled them ({} of those not \
             the canonical encoding of their text), {} re-encoded locally because the engine \
             returned none, {} re-encoded because the engine's ids did not decode to its text \
             with the local tokenizer",
            self.from_engine, self.non_canonical, self.reencoded, self.mismatched
        );
        if self.reencoded + self.mismatched > 0 {
            tracing::warn!(
                "{line}; training uses the re-encodings, which may differ from what was sampled"
            );
        } else {
            tracing::info!("{line}");
        }
    }
}

/// A [`Sampler`] whose every completion carries token ids.
pub struct WithTokenIds<'t, S> {
    pub inner: S,
    tokenizer: &'t Tokenizer,
    pub stats: TokenIdStats,
}

impl<'t, S: Sampler> WithTokenIds<'t, S> {
    pub fn new(inner: S, tokenizer: &'t Tokenizer) -> Self {
        WithTokenIds {
            inner,
            tokenizer,
            stats: TokenIdStats::default(),
        }
    }

    fn fill(&mut self, c: &mut malt_tree::Completion) -> Result<(), String> {
        let encode = |t: &str| {
            self.tokenizer
                .encode(t, false)
                .map_err(|e| format!("encoding a completion: {e}"))
        };
        match &c.token_ids {
            Some(ids) => {
                let spelled = self
                    .tokenizer
                    .decode(ids, true)
                    .map_err(|e| format!("decoding a completion's token ids: {e}"))?;
                if spelled.starts_with(&c.text) {
                    self.stats.from_engine += 1;
                    let canonical = encode(&c.text)?;
                    if !ids.starts_with(&canonical) {
                        self.stats.non_canonical += 1;
                    }
                } else {
                    self.stats.mismatched += 1;
                    tracing::debug!(
                        "engine ids decode to {spelled:?}, the engine's text is {:?}",
                        c.text
                    );
                    c.token_ids = Some(encode(&c.text)?);
                    // They were the engine's tokens' log-probs, not these.
                    c.logprobs = None;
                }
            }
            None => {
                self.stats.reencoded += 1;
                c.token_ids = Some(encode(&c.text)?);
                c.logprobs = None;
            }
        }
        Ok(())
    }
}

impl<S: Sampler> Sampler for WithTokenIds<'_, S> {
    fn sample(
        &mut self,
        requests: &[SampleRequest<'_>],
    ) -> Result<Vec<RequestResult>, SamplerError> {
        let mut out = self.inner.sample(requests)?;
        for r in out.iter_mut() {
            let Ok(completions) = r else { continue };
            let filled: Result<(), String> = completions.iter_mut().try_for_each(|c| self.fill(c));
            if let Err(e) = filled {
                *r = Err(e);
            }
        }
        Ok(out)
    }
}
