//! Prefill and batched decoding over forkable caches. Sequences of different lengths decode
//! together: their caches are right-padded to a common length and the padding is masked, new
//! tokens are appended after the padding at each row's own RoPE position.

use crate::decoder::{Ctx, Mode};
use crate::error::{ModelError, Result};
use crate::kv::Cache;
use crate::lora::LoraAdapter;
use crate::model::Model;
use crate::sampling::{rng_for, sample_with_logprob, SamplingParams};
use candle_core::Tensor;

/// Positions by which a decode batch's key/value buffers grow.
const DECODE_CHUNK: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// An end-of-turn / eos token, this one (not included in `tokens` nor in the text).
    Eos(u32),
    /// A stop string appeared; `text` is cut before it.
    StopString,
    /// `max_new_tokens` reached.
    Length,
    /// The step observer of [`Model::generate_observed`] asked to stop this branch.
    Cancelled,
}

/// What [`Model::generate_observed`] reports after each sampled token of a branch.
#[derive(Debug, Clone, Copy)]
pub struct Step<'a> {
    /// The branch's index in the input.
    pub branch: usize,
    /// The decoded text so far (cut before a stop string once one appeared).
    pub text: &'a str,
    /// Generated tokens so far (without a final eos).
    pub tokens: usize,
    /// Set on the branch's last step.
    pub finish: Option<Finish>,
}

#[derive(Debug, Clone)]
pub struct Completion {
    /// Generated tokens, without the final eos.
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish: Finish,
    /// Prompt + generated tokens whose keys/values were computed: the parent of the next agent.
    pub cache: Cache,
    /// The log-prob of each sampled id ([`Completion::sampled_ids`], the end-of-turn token
    /// included) under `softmax(logits / temperature)`, the distribution it was drawn from
    /// before any top-k / top-p truncation; empty when sampling was greedy.
    pub logprobs: Vec<f32>,
}

/// Every token a sequence sampled, in order: its `tokens` plus the end-of-turn token that ended
/// it, if one did.
pub(crate) fn sampled_ids(tokens: &[u32], finish: Finish) -> Vec<u32> {
    let mut ids = tokens.to_vec();
    if let Finish::Eos(t) = finish {
        ids.push(t);
    }
    ids
}

impl Completion {
    /// Every token the model sampled ([`sampled_ids`]).
    pub fn sampled_ids(&self) -> Vec<u32> {
        sampled_ids(&self.tokens, self.finish)
    }
}

/// One sequence to decode: its cache (with `last_logits`) and its RNG seed.
#[derive(Debug, Clone)]
pub struct Branch {
    pub cache: Cache,
    pub seed: u64,
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

struct Row {
    orig: usize,
    prompt_len: usize,
    rng: rand::rngs::StdRng,
    gen: Vec<u32>,
    text: String,
    logprobs: Vec<f32>,
}

impl Model {
    /// Appends a sampled token to row `branch`'s output, shows the step to `observe` and says
    /// whether the row is done: the stop token (not appended), a stop string (the text is cut
    /// before it), the length limit, or `observe` returning false. Every decode loop
    /// ([`Model::generate_observed`], [`crate::DecodeBatch`]) steps through this, so a sequence
    /// ends at the same token whichever loop decodes it.
    pub(crate) fn accept_token(
        &self,
        params: &SamplingParams,
        tok: u32,
        branch: usize,
        gen: &mut Vec<u32>,
        text: &mut String,
        observe: &mut dyn FnMut(&Step<'_>) -> bool,
    ) -> Result<Option<Finish>> {
        let finish = if self.stop_ids.contains(&tok) {
            Some(Finish::Eos(tok))
        } else {
            gen.push(tok);
            *text = self.tokenizer.decode(gen, true)?;
            let cut = params
                .stop
                .iter()
                .filter(|s| !s.is_empty())
                .filter_map(|s| text.find(s.as_str()))
                .min();
            if let Some(cut) = cut {
                text.truncate(cut);
                Some(Finish::StopString)
            } else {
                (gen.len() >= params.max_new_tokens as usize).then_some(Finish::Length)
            }
        };
        let step = Step {
            branch,
            text,
            tokens: gen.len(),
            finish,
        };
        if !observe(&step) && finish.is_none() {
            return Ok(Some(Finish::Cancelled));
        }
        Ok(finish)
    }

    /// Prefills `tokens` from scratch under `adapter`.
    pub fn prefill(&self, tokens: &[u32], adapter: Option<&LoraAdapter>) -> Result<Cache> {
        self.extend(&Cache::empty(), tokens, adapter)
    }

    /// A cache for `tokens` (the full sequence) that reuses `base`'s keys/values for their
    /// longest common prefix when `base` was computed under the same adapter; only the rest is
    /// prefilled. `base` is not modified (its storage is shared).
    pub fn extend(
        &self,
        base: &Cache,
        tokens: &[u32],
        adapter: Option<&LoraAdapter>,
    ) -> Result<Cache> {
        if tokens.is_empty() {
            return Err(ModelError::Invalid("cannot prefill an empty prompt".into()));
        }
        let uid = adapter.map(|a| a.uid());
        let mut lcp = if base.adapter == uid {
            common_prefix(&base.tokens, tokens)
        } else {
            0
        };
        if lcp == tokens.len() {
            if lcp == base.len() && base.last_logits.is_some() {
                return Ok(base.clone());
            }
            // The logits after the last token are needed: recompute that one token.
            lcp -= 1;
        }
        let prefix = base.truncate(lcp)?;
        let past = (lcp > 0).then_some(prefix.kv.as_slice());
        let (logits, kv) = self
            .decoder
            .forward_cached(&tokens[lcp..], lcp, past, adapter)?;
        Ok(Cache {
            kv,
            tokens: tokens.to_vec(),
            adapter: uid,
            last_logits: Some(logits),
        })
    }

    /// Decodes all branches together until each stops. Every branch's cache must have been
    /// computed under `adapter`. Results are in input order.
    pub fn generate(
        &self,
        branches: Vec<Branch>,
        params: &SamplingParams,
        adapter: Option<&LoraAdapter>,
    ) -> Result<Vec<Completion>> {
        self.generate_observed(branches, params, adapter, &mut |_| true)
    }

    /// [`Model::generate`] that calls `observe` after every sampled token of every branch (for
    /// token-by-token streaming). Returning `false` for an unfinished branch stops it with
    /// [`Finish::Cancelled`] (its client went away) without disturbing the other branches.
    pub fn generate_observed(
        &self,
        branches: Vec<Branch>,
        params: &SamplingParams,
        adapter: Option<&LoraAdapter>,
        observe: &mut dyn FnMut(&Step<'_>) -> bool,
    ) -> Result<Vec<Completion>> {
        let uid = adapter.map(|a| a.uid());
        let n = branches.len();
        let mut first_logits = Vec::with_capacity(n);
        for (i, b) in branches.iter().enumerate() {
            if b.cache.adapter != uid {
                return Err(ModelError::Invalid(format!(
                    "branch {i}: cache was computed under a different adapter"
                )));
            }
            let l = b.cache.last_logits.as_ref().ok_or_else(|| {
                ModelError::Invalid(format!(
                    "branch {i}: cache has no pending logits (prefill it first)"
                ))
            })?;
            first_logits.push(l.to_vec1::<f32>()?);
        }
        if params.max_new_tokens == 0 {
            return Ok(branches
                .into_iter()
                .map(|b| Completion {
                    tokens: vec![],
                    text: String::new(),
                    finish: Finish::Length,
                    cache: b.cache,
                    logprobs: vec![],
                })
                .collect());
        }
        let mut results: Vec<Option<Completion>> = vec![None; n];
        if n == 0 {
            return Ok(vec![]);
        }
        let caches: Vec<Cache> = branches.iter().map(|b| b.cache.clone()).collect();
        let mut rows: Vec<Row> = branches
            .into_iter()
            .enumerate()
            .map(|(i, b)| Row {
                orig: i,
                prompt_len: b.cache.len(),
                rng: rng_for(b.seed),
                gen: vec![],
                text: String::new(),
                logprobs: vec![],
            })
            .collect();
        let lmax = rows.iter().map(|r| r.prompt_len).max().unwrap_or(0);
        let n_layers = self.decoder.layers.len();
        // Batched state: per layer a buffer (b, kv_heads, cap, hd) whose first lmax + t
        // positions are valid; each step writes its keys/values in place. The capacity grows
        // by DECODE_CHUNK positions, so a large max_new_tokens reserves nothing up front.
        let t_setup0 = std::time::Instant::now();
        let mut cap = lmax + (params.max_new_tokens as usize).min(DECODE_CHUNK) + 1;
        let mut state: Vec<(Tensor, Tensor)> = Vec::with_capacity(n_layers);
        for l in 0..n_layers {
            let mut ks = Vec::with_capacity(n);
            let mut vs = Vec::with_capacity(n);
            for c in &caches {
                let (k, v) = &c.kv[l];
                let pad = cap - c.len();
                ks.push(k.pad_with_zeros(2, 0, pad)?);
                vs.push(v.pad_with_zeros(2, 0, pad)?);
            }
            state.push((Tensor::cat(&ks, 0)?, Tensor::cat(&vs, 0)?));
        }
        let mut logits: Vec<Vec<f32>> = first_logits;
        let mut t = 0usize; // tokens fed per row so far
        let prof = std::env::var_os("MALT_PROFILE_DECODE").is_some();
        let (mut t_sample, mut t_fwd, mut t_logits) = (0f64, 0f64, 0f64);
        let t_setup = t_setup0.elapsed().as_secs_f64();
        let mut t_compact = 0f64;
        loop {
            let ts = std::time::Instant::now();
            // Sample, then retire finished rows.
            let mut keep: Vec<usize> = vec![];
            for (ri, row) in rows.iter_mut().enumerate() {
                let (tok, logprob) = sample_with_logprob(&logits[ri], params, &mut row.rng);
                row.logprobs.extend(logprob);
                let finish =
                    self.accept_token(params, tok, row.orig, &mut row.gen, &mut row.text, observe)?;
                match finish {
                    None => keep.push(ri),
                    Some(f) => {
                        let cache = self.row_cache(&state, ri, row, &caches[row.orig], lmax, t)?;
                        results[row.orig] = Some(Completion {
                            tokens: std::mem::take(&mut row.gen),
                            text: std::mem::take(&mut row.text),
                            finish: f,
                            cache,
                            logprobs: std::mem::take(&mut row.logprobs),
                        });
                    }
                }
            }
            t_sample += ts.elapsed().as_secs_f64();
            if keep.is_empty() {
                break;
            }
            let tc = std::time::Instant::now();
            if keep.len() < rows.len() {
                // Compacted in place: each survivor beyond the new batch size moves into a
                // retired row's slot, so a retirement moves at most one row per layer and
                // allocates nothing (gathering every survivor into new buffers cost a tenth of
                // a 27-row decode in copies and page faults). Row order does not matter: each
                // row carries its own sampler state.
                let m = keep.len();
                let holes = (0..m).filter(|i| keep.binary_search(i).is_err());
                let movers = keep.iter().copied().filter(|&i| i >= m);
                let moves: Vec<(usize, usize)> = movers.zip(holes).collect();
                for kv in state.iter_mut() {
                    for &(from, to) in &moves {
                        for x in [&kv.0, &kv.1] {
                            x.slice_set(&x.narrow(0, from, 1)?.copy()?, 0, to)?;
                        }
                    }
                    *kv = (kv.0.narrow(0, 0, m)?, kv.1.narrow(0, 0, m)?);
                }
                for &(from, to) in &moves {
                    rows.swap(from, to);
                }
                rows.truncate(m);
            }
            if lmax + t + 1 > cap {
                let grow = DECODE_CHUNK.min(params.max_new_tokens as usize) + 1;
                for kv in state.iter_mut() {
                    *kv = (
                        kv.0.pad_with_zeros(2, 0, grow)?,
                        kv.1.pad_with_zeros(2, 0, grow)?,
                    );
                }
                cap += grow;
            }
            t_compact += tc.elapsed().as_secs_f64();
            // Feed each row's last token.
            let b = rows.len();
            let last: Vec<u32> = rows.iter().map(|r| *r.gen.last().unwrap_or(&0)).collect();
            let ids = Tensor::from_vec(last, (b, 1), self.device())?;
            let positions: Vec<usize> = rows.iter().map(|r| r.prompt_len + t).collect();
            let (cos, sin) = self.decoder.rope_at(&positions)?;
            let total = lmax + t + 1;
            let mask = if rows.iter().all(|r| r.prompt_len == lmax) {
                None
            } else {
                let mut m = vec![0f32; b * total];
                for (ri, r) in rows.iter().enumerate() {
                    for j in r.prompt_len..lmax {
                        m[ri * total + j] = f32::NEG_INFINITY;
                    }
                }
                Some(
                    Tensor::from_vec(m, (b, 1, 1, 1, total), self.device())?
                        .to_dtype(self.decoder.activation_dtype())?,
                )
            };
            let ctx = Ctx {
                cos,
                sin,
                mask,
                past: Some(&state),
                past_len: Some(lmax + t),
                adapter,
                mode: Mode::Infer,
            };
            let tf = std::time::Instant::now();
            let x = self.decoder.embed(&ids)?;
            let (h, kvs) = crate::process::on_pool(|| self.decoder.run(x, &ctx))?;
            t_fwd += tf.elapsed().as_secs_f64();
            let tl = std::time::Instant::now();
            state = kvs;
            t += 1;
            let lg =
                crate::process::on_pool(|| self.decoder.logits(&h, Mode::Infer))?.squeeze(1)?;
            // The host needs each row's last logits to sample: one copy of (rows, vocab).
            logits = lg.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?;
            t_logits += tl.elapsed().as_secs_f64();
        }
        if prof {
            eprintln!("decode profile (b={n}, lmax={lmax}, steps={t}): setup {t_setup:.3}s, sample+stop {t_sample:.3}s, compact+grow {t_compact:.3}s, layers {t_fwd:.3}s, lm_head+copy {t_logits:.3}s");
        }
        results
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                r.ok_or_else(|| ModelError::Invalid(format!("branch {i} did not finish")))
            })
            .collect()
    }

    /// The per-sequence cache of batch row `ri` after `t` fed tokens: its prompt part (without
    /// padding) followed by its generated part.
    fn row_cache(
        &self,
        state: &[(Tensor, Tensor)],
        ri: usize,
        row: &Row,
        orig: &Cache,
        lmax: usize,
        t: usize,
    ) -> Result<Cache> {
        if t == 0 {
            return Ok(orig.clone());
        }
        let take = |x: &Tensor| -> Result<Tensor> {
            let x = x.narrow(0, ri, 1)?;
            let p = x.narrow(2, 0, row.prompt_len)?;
            let g = x.narrow(2, lmax, t)?;
            Ok(Tensor::cat(&[&p, &g], 2)?)
        };
        let kv = state
            .iter()
            .map(|(k, v)| Ok((take(k)?, take(v)?)))
            .collect::<Result<Vec<_>>>()?;
        let mut tokens = orig.tokens.clone();
        tokens.extend_from_slice(&row.gen[..t]);
        Ok(Cache {
            kv,
            tokens,
            adapter: orig.adapter,
            last_logits: None,
        })
    }

    /// Prompt text -> one completion (used by `malt generate`): the branch `[0]` of a tree
    /// sampled with `seed`.
    pub fn complete(
        &self,
        prompt_tokens: &[u32],
        params: &SamplingParams,
        seed: u64,
        adapter: Option<&LoraAdapter>,
    ) -> Result<Completion> {
        let cache = self.prefill(prompt_tokens, adapter)?;
        let mut out = self.generate(
            vec![Branch {
                cache,
                seed: crate::sampling::branch_seed(seed, &[0]),
            }],
            params,
            adapter,
        )?;
        out.pop()
            .ok_or_else(|| ModelError::Invalid("no completion".into()))
    }
}
