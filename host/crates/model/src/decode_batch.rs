//! Continuous batching: a decode batch that sequences join between steps, while the others are
//! mid-generation, and leave as soon as they finish.
//!
//! Every row's keys/values live in one buffer per layer, (rows, kv_heads, cap, head_dim); the
//! first `len` positions are in use and each step appends one at position `len`. A row's own
//! sequence occupies some of those positions in order; the others are holes, masked out of its
//! attention: the padding after a prompt shorter than the batch's `len` when it joined, and the
//! positions the batch grew by to fit a longer newcomer. A masked position adds exactly zero to
//! a row's softmax sums, so a row decodes the tokens it would decode alone; sampling follows
//! [`Model::generate_observed`] step for step (same RNG per seed, same stop rules). When rows
//! leave, positions no remaining row uses are compacted away.

use candle_core::Tensor;

use crate::decoder::{Ctx, Mode};
use crate::error::{ModelError, Result};
use crate::generate::{Finish, Step};
use crate::kv::Cache;
use crate::lora::LoraAdapter;
use crate::model::Model;
use crate::sampling::{rng_for, sample_with_logprob, SamplingParams};

/// Positions by which the buffers grow.
const CHUNK: usize = 64;

/// A sequence to add: its prompt cache (with pending logits), its seed and its sampling
/// settings. `id` is the caller's key, reported back in [`Step::branch`] and [`Finished::id`].
pub struct Joiner {
    pub id: usize,
    pub cache: Cache,
    pub seed: u64,
    pub params: SamplingParams,
}

/// A row that left the batch.
#[derive(Debug, Clone)]
pub struct Finished {
    pub id: usize,
    /// Generated tokens, without the final eos.
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish: Finish,
    /// The log-prob of each sampled id ([`Finished::sampled_ids`]) under
    /// `softmax(logits / temperature)`, as [`crate::Completion::logprobs`]; empty when greedy.
    pub logprobs: Vec<f32>,
}

impl Finished {
    /// Every token the model sampled: `tokens` plus the end-of-turn token that ended it, if any.
    pub fn sampled_ids(&self) -> Vec<u32> {
        crate::generate::sampled_ids(&self.tokens, self.finish)
    }
}

struct Row {
    id: usize,
    params: SamplingParams,
    rng: rand::rngs::StdRng,
    gen: Vec<u32>,
    text: String,
    logprobs: Vec<f32>,
    /// Logits predicting this row's next token.
    logits: Vec<f32>,
    /// Positions of the sequence so far (= the next token's RoPE position).
    seq_len: usize,
    /// Buffer ranges that are not this row's, in order.
    holes: Vec<(usize, usize)>,
}

/// See the module documentation. All rows share one adapter (`None`: the base model).
pub struct DecodeBatch<'m> {
    model: &'m Model,
    adapter_uid: Option<u64>,
    rows: Vec<Row>,
    /// Per layer (k, v), each (rows, kv_heads, cap, head_dim); empty when there are no rows.
    state: Vec<(Tensor, Tensor)>,
    len: usize,
    cap: usize,
}

impl<'m> DecodeBatch<'m> {
    pub fn new(model: &'m Model, adapter: Option<&LoraAdapter>) -> Self {
        DecodeBatch {
            model,
            adapter_uid: adapter.map(|a| a.uid()),
            rows: Vec::new(),
            state: Vec::new(),
            len: 0,
            cap: 0,
        }
    }

    /// Rows decoding.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// `LoraAdapter::uid` of the batch's adapter.
    pub fn adapter_uid(&self) -> Option<u64> {
        self.adapter_uid
    }

    /// Positions in use per row (for memory accounting and tests).
    pub fn positions(&self) -> usize {
        self.len
    }

    /// Adds sequences; they sample their first token at the next [`DecodeBatch::step`]. A
    /// sequence with `max_new_tokens = 0` finishes at once and is returned.
    pub fn add(&mut self, joiners: Vec<Joiner>) -> Result<Vec<Finished>> {
        let mut done = Vec::new();
        let mut fresh = Vec::new();
        for j in joiners {
            if j.cache.adapter != self.adapter_uid {
                return Err(ModelError::Invalid(format!(
                    "sequence {}: its cache was computed under a different adapter than the batch's",
                    j.id
                )));
            }
            let logits = j
                .cache
                .last_logits
                .as_ref()
                .ok_or_else(|| {
                    ModelError::Invalid(format!(
                        "sequence {}: cache has no pending logits (prefill it first)",
                        j.id
                    ))
                })?
                .to_vec1::<f32>()?;
            if j.params.max_new_tokens == 0 {
                done.push(Finished {
                    id: j.id,
                    tokens: vec![],
                    text: String::new(),
                    finish: Finish::Length,
                    logprobs: vec![],
                });
                continue;
            }
            fresh.push((j, logits));
        }
        if fresh.is_empty() {
            return Ok(done);
        }
        let longest = fresh.iter().map(|(j, _)| j.cache.len()).max().unwrap_or(0);
        if self.rows.is_empty() {
            self.state.clear();
            self.len = longest;
            self.cap = longest + CHUNK + 1;
        } else if longest > self.len {
            // The batch grows to fit the newcomer; for the rows already here the new positions
            // are holes.
            for r in &mut self.rows {
                push_hole(&mut r.holes, self.len, longest);
            }
            self.len = longest;
        }
        if self.len + 1 > self.cap {
            let grow = self.len + 1 + CHUNK - self.cap;
            self.grow(grow)?;
        }
        let n_layers = self.model.decoder.layers.len();
        let mut added: Vec<(Vec<Tensor>, Vec<Tensor>)> = vec![(vec![], vec![]); n_layers];
        for (j, logits) in fresh {
            let p = j.cache.len();
            for (l, (ks, vs)) in added.iter_mut().enumerate() {
                let (k, v) = &j.cache.kv[l];
                ks.push(k.pad_with_zeros(2, 0, self.cap - p)?);
                vs.push(v.pad_with_zeros(2, 0, self.cap - p)?);
            }
            let mut holes = Vec::new();
            push_hole(&mut holes, p, self.len);
            self.rows.push(Row {
                id: j.id,
                params: j.params,
                rng: rng_for(j.seed),
                gen: vec![],
                text: String::new(),
                logprobs: vec![],
                logits,
                seq_len: p,
                holes,
            });
        }
        let mut state = Vec::with_capacity(n_layers);
        for (l, (ks, vs)) in added.into_iter().enumerate() {
            let (mut ks, mut vs) = (ks, vs);
            if let Some((k, v)) = self.state.get(l) {
                ks.insert(0, k.clone());
                vs.insert(0, v.clone());
            }
            state.push((Tensor::cat(&ks, 0)?, Tensor::cat(&vs, 0)?));
        }
        self.state = state;
        Ok(done)
    }

    /// Samples one token for every row (calling `observe` with it; `false` cancels that row),
    /// retires the rows that finished and feeds the others their token. Returns the rows that
    /// left.
    pub fn step(
        &mut self,
        adapter: Option<&LoraAdapter>,
        observe: &mut dyn FnMut(&Step<'_>) -> bool,
    ) -> Result<Vec<Finished>> {
        if adapter.map(|a| a.uid()) != self.adapter_uid {
            return Err(ModelError::Invalid(
                "step: a different adapter than the batch was created with".into(),
            ));
        }
        let model = self.model;
        let mut keep = Vec::with_capacity(self.rows.len());
        let mut done = Vec::new();
        for (ri, row) in self.rows.iter_mut().enumerate() {
            let (tok, logprob) = sample_with_logprob(&row.logits, &row.params, &mut row.rng);
            row.logprobs.extend(logprob);
            let finish = model.accept_token(
                &row.params,
                tok,
                row.id,
                &mut row.gen,
                &mut row.text,
                observe,
            )?;
            match finish {
                None => keep.push(ri),
                Some(f) => done.push(Finished {
                    id: row.id,
                    tokens: std::mem::take(&mut row.gen),
                    text: std::mem::take(&mut row.text),
                    finish: f,
                    logprobs: std::mem::take(&mut row.logprobs),
                }),
            }
        }
        if keep.is_empty() {
            self.rows.clear();
            self.state.clear();
            self.len = 0;
            self.cap = 0;
            return Ok(done);
        }
        if keep.len() < self.rows.len() {
            let idx = Tensor::from_vec(
                keep.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                keep.len(),
                model.device(),
            )?;
            for kv in self.state.iter_mut() {
                *kv = (kv.0.index_select(&idx, 0)?, kv.1.index_select(&idx, 0)?);
            }
            let mut old: Vec<Option<Row>> = std::mem::take(&mut self.rows)
                .into_iter()
                .map(Some)
                .collect();
            self.rows = keep.iter().filter_map(|&i| old[i].take()).collect();
            self.compact()?;
        }
        if self.len + 1 > self.cap {
            self.grow(CHUNK + 1)?;
        }
        self.feed(adapter)?;
        Ok(done)
    }

    /// Feeds every row its last sampled token at position `len`.
    fn feed(&mut self, adapter: Option<&LoraAdapter>) -> Result<()> {
        let model = self.model;
        let b = self.rows.len();
        let last: Vec<u32> = self
            .rows
            .iter()
            .map(|r| *r.gen.last().unwrap_or(&0))
            .collect();
        let ids = Tensor::from_vec(last, (b, 1), model.device())?;
        let positions: Vec<usize> = self.rows.iter().map(|r| r.seq_len).collect();
        let (cos, sin) = model.decoder.rope_at(&positions)?;
        let total = self.len + 1;
        let mask = if self.rows.iter().all(|r| r.holes.is_empty()) {
            None
        } else {
            let mut m = vec![0f32; b * total];
            for (ri, r) in self.rows.iter().enumerate() {
                for &(a, z) in &r.holes {
                    m[ri * total + a..ri * total + z].fill(f32::NEG_INFINITY);
                }
            }
            Some(
                Tensor::from_vec(m, (b, 1, 1, 1, total), model.device())?
                    .to_dtype(model.decoder.activation_dtype())?,
            )
        };
        let ctx = Ctx {
            cos,
            sin,
            mask,
            past: Some(&self.state),
            past_len: Some(self.len),
            adapter,
            mode: Mode::Infer,
        };
        let x = model.decoder.embed(&ids)?;
        let (h, kvs) = crate::process::on_pool(|| model.decoder.run(x, &ctx))?;
        self.state = kvs;
        self.len += 1;
        let lg = crate::process::on_pool(|| model.decoder.logits(&h, Mode::Infer))?.squeeze(1)?;
        // The host needs each row's last logits to sample: one copy of (rows, vocab).
        let lg = lg.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?;
        for (r, logits) in self.rows.iter_mut().zip(lg) {
            r.logits = logits;
            r.seq_len += 1;
        }
        Ok(())
    }

    fn grow(&mut self, by: usize) -> Result<()> {
        for kv in self.state.iter_mut() {
            *kv = (
                kv.0.pad_with_zeros(2, 0, by)?,
                kv.1.pad_with_zeros(2, 0, by)?,
            );
        }
        self.cap += by;
        Ok(())
    }

    /// Drops the positions that are holes of every row and, once holes waste more than half of
    /// the buffer, re-lays each row out as its sequence followed by padding. Neither changes
    /// what a row attends to, nor the order of its positions.
    fn compact(&mut self) -> Result<()> {
        let longest = self.rows.iter().map(|r| r.seq_len).max().unwrap_or(0);
        if self.len <= 2 * longest + CHUNK {
            return Ok(());
        }
        let new_len = longest;
        let new_cap = new_len + CHUNK + 1;
        let mut state = Vec::with_capacity(self.state.len());
        for (k, v) in &self.state {
            let mut ks = Vec::with_capacity(self.rows.len());
            let mut vs = Vec::with_capacity(self.rows.len());
            for (ri, r) in self.rows.iter().enumerate() {
                let spans = kept_spans(&r.holes, self.len);
                let take = |x: &Tensor| -> Result<Tensor> {
                    let row = x.narrow(0, ri, 1)?;
                    let parts = spans
                        .iter()
                        .map(|&(a, z)| row.narrow(2, a, z - a))
                        .collect::<candle_core::Result<Vec<_>>>()?;
                    let seq = Tensor::cat(&parts, 2)?;
                    Ok(seq.pad_with_zeros(2, 0, new_cap - r.seq_len)?)
                };
                ks.push(take(k)?);
                vs.push(take(v)?);
            }
            state.push((Tensor::cat(&ks, 0)?, Tensor::cat(&vs, 0)?));
        }
        for r in &mut self.rows {
            r.holes.clear();
            push_hole(&mut r.holes, r.seq_len, new_len);
        }
        self.state = state;
        self.len = new_len;
        self.cap = new_cap;
        Ok(())
    }
}

/// Appends the hole `[a, z)` (nothing when empty), merging it with a hole ending at `a`.
fn push_hole(holes: &mut Vec<(usize, usize)>, a: usize, z: usize) {
    if a >= z {
        return;
    }
    match holes.last_mut() {
        Some(last) if last.1 == a => last.1 = z,
        _ => holes.push((a, z)),
    }
}

/// The ranges of `[0, len)` outside `holes`.
fn kept_spans(holes: &[(usize, usize)], len: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    for &(a, z) in holes {
        if a > at {
            out.push((at, a));
        }
        at = z;
    }
    if at < len {
        out.push((at, len));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;
    use crate::generate::Branch;
    use candle_core::Device;

    fn model() -> Model {
        let cfg = ModelConfig {
            max_position_embeddings: 512,
            eos_token_ids: vec![1],
            ..ModelConfig::llama(64, 32, 64, 2, 4, 2)
        };
        Model::random(cfg, &Device::Cpu).unwrap()
    }

    fn params(max_new_tokens: u32) -> SamplingParams {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            max_new_tokens,
            stop: vec![],
        }
    }

    fn alone(m: &Model, prompt: &[u32], seed: u64, p: &SamplingParams) -> Vec<u32> {
        let cache = m.prefill(prompt, None).unwrap();
        let mut out = m.generate(vec![Branch { cache, seed }], p, None).unwrap();
        out.pop().unwrap().tokens
    }

    #[test]
    fn holes_and_spans() {
        let mut h = vec![];
        push_hole(&mut h, 3, 5);
        push_hole(&mut h, 5, 9);
        push_hole(&mut h, 12, 12);
        push_hole(&mut h, 20, 22);
        assert_eq!(h, vec![(3, 9), (20, 22)]);
        assert_eq!(kept_spans(&h, 25), vec![(0, 3), (9, 20), (22, 25)]);
        assert_eq!(kept_spans(&[], 4), vec![(0, 4)]);
    }

    /// Sequences joining at different steps, longer and shorter than the batch, with their own
    /// sampling settings, decode exactly what each decodes alone.
    #[test]
    fn joining_mid_decode_changes_nothing_for_any_row() {
        let m = model();
        let prompts: Vec<Vec<u32>> = vec![
            vec![5, 6, 7],
            (2..40).collect(),
            vec![9, 10],
            (3..90).map(|t| t % 60 + 2).collect(),
            vec![11],
        ];
        let lengths = [40usize, 12, 70, 20, 30];
        let joins_at = [0usize, 3, 5, 30, 95];
        let mut want = Vec::new();
        for (i, p) in prompts.iter().enumerate() {
            let mut ps = params(lengths[i] as u32);
            ps.top_k = if i % 2 == 0 { 0 } else { 8 };
            want.push(alone(&m, p, 1000 + i as u64, &ps));
        }
        let mut batch = DecodeBatch::new(&m, None);
        let mut got: Vec<Option<Vec<u32>>> = vec![None; prompts.len()];
        let mut step = 0;
        loop {
            for (i, p) in prompts.iter().enumerate() {
                if joins_at[i] == step {
                    let mut ps = params(lengths[i] as u32);
                    ps.top_k = if i % 2 == 0 { 0 } else { 8 };
                    let j = Joiner {
                        id: i,
                        cache: m.prefill(p, None).unwrap(),
                        seed: 1000 + i as u64,
                        params: ps,
                    };
                    assert!(batch.add(vec![j]).unwrap().is_empty());
                }
            }
            if batch.is_empty() && joins_at.iter().all(|&s| s < step) {
                break;
            }
            for f in batch.step(None, &mut |_| true).unwrap() {
                got[f.id] = Some(f.tokens);
            }
            step += 1;
            assert!(step < 500);
        }
        for (i, w) in want.iter().enumerate() {
            assert_eq!(got[i].as_ref(), Some(w), "sequence {i}");
        }
    }

    /// A long prompt joins a short sequence and leaves: the positions only it used are
    /// compacted away, and the short sequence still decodes what it decodes alone.
    #[test]
    fn positions_of_departed_rows_are_compacted() {
        let m = model();
        let short: Vec<u32> = vec![3, 4, 5];
        let long: Vec<u32> = (0..100).map(|t| t % 60 + 2).collect();
        let want = alone(&m, &short, 7, &params(60));
        let mut batch = DecodeBatch::new(&m, None);
        let join = |id: usize, p: &[u32], n| Joiner {
            id,
            cache: m.prefill(p, None).unwrap(),
            seed: 7 + id as u64 * 10,
            params: params(n),
        };
        batch.add(vec![join(0, &short, 60)]).unwrap();
        let mut got = None;
        for step in 0..60 {
            if step == 2 {
                batch.add(vec![join(1, &long, 4)]).unwrap();
                assert!(batch.positions() >= 100);
            }
            for f in batch.step(None, &mut |_| true).unwrap() {
                if f.id == 1 {
                    // The long row left: only the short one's positions remain.
                    assert!(batch.positions() < 20, "{}", batch.positions());
                }
                if f.id == 0 {
                    got = Some(f.tokens);
                }
            }
        }
        assert_eq!(got, Some(want));
    }

    #[test]
    fn cancelled_rows_leave_and_zero_length_requests_finish_at_once() {
        let m = model();
        let mut batch = DecodeBatch::new(&m, None);
        let j = |id, n| Joiner {
            id,
            cache: m.prefill(&[4, 5, 6], None).unwrap(),
            seed: id as u64,
            params: params(n),
        };
        let done = batch.add(vec![j(0, 0), j(1, 50), j(2, 50)]).unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!((done[0].id, done[0].finish), (0, Finish::Length));
        let f = batch.step(None, &mut |s| s.branch != 1).unwrap();
        assert!(f.iter().any(|f| f.id == 1 && f.finish == Finish::Cancelled));
        assert_eq!(batch.len(), 1);
        let mut other = m.prefill(&[4], None).unwrap();
        other.adapter = Some(7);
        assert!(batch
            .add(vec![Joiner {
                id: 9,
                cache: other,
                seed: 0,
                params: params(3)
            }])
            .is_err());
    }
}
