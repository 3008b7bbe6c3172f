//! One on-policy update of one role's adapter from the completions it sampled (a "rollout"),
//! each with its advantage: the policy-gradient loss of [`crate::pg`] over `epochs` passes.
//!
//! ```text
//! ref = log-probs of every sampled token under the base model (when the KL penalty is on)
//! for each epoch:
//!     for each micro-batch: lp = log-probs with graph
//!                           old = lp's values (first epoch: the adapter as the update found it)
//!                           loss = pg::micro_loss(lp, old, ref, advantages)
//!                           gradients += d loss
//!     clip the gradients' global norm; AdamW step
//! ```
//!
//! Micro-batches hold siblings of one tree node, so every pass computes their shared prompt
//! once (`PolicyModel::shared_prompt_logits`). The optimiser steps only after an epoch, so the
//! first epoch runs the adapter as it was when the update started: its log-probs are the
//! ratio's denominator (no separate pass), its ratio is exactly 1 and later epochs are where
//! the clip acts. Completions whose advantage is 0 (a flat sibling group) still carry the KL
//! term and count in the token norm, as in TRL.

use candle_core::{DType, Tensor};

use crate::batch::{Sequence, TokenBatch};
use crate::error::{Result, TrainError};
use crate::optim::{self, AdamW};
use crate::pg::{self, PgSettings, PgStats, TokenInputs};
use crate::policy::{Mode, PolicyModel};
use crate::trainer::GradAccumulator;

/// One sampled completion to learn from: the prompt's ids and the ids exactly as sampled.
#[derive(Debug, Clone)]
pub struct Rollout {
    pub seq: Sequence,
    pub advantage: f32,
    /// The sampler's log-prob of each completion token (one per id after the prompt), when it
    /// recorded them: the mismatch metric, and the importance weights with `pg.is_cap`.
    pub sampled: Option<Vec<f32>>,
    /// Names it in errors (question id and node).
    pub id: String,
}

/// How a role's adapter is updated each step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpdateSettings {
    pub pg: PgSettings,
    /// Passes over the step's rollouts, one optimiser step each.
    pub epochs: u32,
    /// Completions per forward pass.
    pub micro_batch: usize,
    pub lr: f64,
    /// Global gradient-norm clip (0: none).
    pub max_grad_norm: f64,
}

/// What one update measured (sums over the last epoch where not said otherwise).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct UpdateStats {
    pub completions: usize,
    /// Completion tokens trained on (per epoch).
    pub tokens: usize,
    /// The last epoch's loss.
    pub loss: f64,
    /// The last epoch's gradient norm before clipping.
    pub grad_norm: f64,
    pub pg: PgStats,
    /// Mean entropy of the sampling distribution over the trained tokens (nats), from the
    /// first epoch's pass (the adapter as the update found it).
    pub entropy: f64,
    /// Mean `|old - sampled|` over the tokens whose sampling log-prob was recorded (`None`:
    /// none was): how far the sampler's probabilities are from the trainer's.
    pub logprob_mismatch: Option<f64>,
    /// Seconds: the passes without a graph (the reference's log-probs), the forward and
    /// backward passes of every epoch, and the optimiser steps (clip included).
    pub logprob_s: f64,
    pub train_s: f64,
    pub optimizer_s: f64,
    pub optimizer_steps: u32,
}

/// Updates `adapter` (whose variables `optimizer` holds) on `rollouts`.
pub fn update<M: PolicyModel>(
    model: &M,
    adapter: &M::Adapter,
    optimizer: &mut AdamW,
    rollouts: &[Rollout],
    s: &UpdateSettings,
    pad_id: u32,
) -> Result<UpdateStats> {
    s.pg.validate().map_err(TrainError::Settings)?;
    let micro = s.micro_batch.max(1);
    let lens: Vec<usize> = rollouts.iter().map(|r| r.seq.completion_len()).collect();
    let mut stats = UpdateStats {
        completions: rollouts.len(),
        tokens: lens.iter().sum(),
        ..Default::default()
    };
    if rollouts.is_empty() || stats.tokens == 0 {
        return Ok(stats);
    }
    // Micro-batches of siblings (the same prompt), so every pass computes their prompt once.
    // The loss weights are the step's, so how rows are grouped changes no gradient.
    let seqs_of =
        |rows: &[usize]| -> Vec<&Sequence> { rows.iter().map(|&i| &rollouts[i].seq).collect() };
    let chunks: Vec<(Vec<usize>, TokenBatch)> = sibling_groups(rollouts)
        .iter()
        .flat_map(|group| group.chunks(micro))
        .map(|rows| (rows.to_vec(), TokenBatch::new(&seqs_of(rows), pad_id)))
        .collect();

    let t = std::time::Instant::now();
    // The reference's log-probs, per rollout (the KL penalty's fixed input).
    let n = rollouts.len();
    let mut ref_of = vec![Vec::new(); n];
    if s.pg.kl_beta > 0.0 {
        for (rows, batch) in &chunks {
            let base = model.shared_prompt_logits(&seqs_of(rows), pad_id, None, Mode::Eval)?;
            let r = pg::sampling_logprobs(&base, &batch.targets, s.pg.temperature)?;
            split_rows(&r.to_vec1::<f32>()?, rows, &lens, &mut ref_of);
        }
    }
    // By micro-batch, whose targets are its rows' completion tokens in order.
    let concat =
        |rows: &[usize], of: &[Vec<f32>]| rows.iter().flat_map(|&i| of[i].clone()).collect();
    let reference: Vec<Option<Vec<f32>>> = chunks
        .iter()
        .map(|(rows, _)| (s.pg.kl_beta > 0.0).then(|| concat(rows, &ref_of)))
        .collect();
    let sampled: Vec<Option<Vec<f32>>> = chunks
        .iter()
        .map(|(rows, _)| {
            rows.iter()
                .map(|&i| {
                    rollouts[i]
                        .sampled
                        .as_deref()
                        .filter(|q| q.len() == lens[i])
                })
                .collect::<Option<Vec<&[f32]>>>()
                .map(|v| v.concat())
        })
        .collect();
    stats.logprob_s = t.elapsed().as_secs_f64();

    // The log-probs at the update's start are the first epoch's own: the optimiser steps only
    // after each epoch, so that pass runs the adapter as it was when the update started (as
    // TRL takes them from its forward pass when it does not reuse a generation's).
    let mut old: Vec<Vec<f32>> = vec![Vec::new(); chunks.len()];
    let mut entropy_sum = 0f64;
    let vars = optimizer.vars().to_vec();
    for epoch in 0..s.epochs.max(1) {
        let t = std::time::Instant::now();
        let mut grads = GradAccumulator::new(vars.len());
        let (mut loss, mut pg_stats) = (0f64, PgStats::default());
        for (c, (rows, batch)) in chunks.iter().enumerate() {
            let logits = model.shared_prompt_logits(
                &seqs_of(rows),
                pad_id,
                Some(adapter),
                Mode::Train { dropout_seed: None },
            )?;
            let lp = pg::sampling_logprobs(&logits, &batch.targets, s.pg.temperature)?;
            if epoch == 0 {
                old[c] = lp.to_vec1::<f32>()?;
                entropy_sum += entropy_sum_of(&(logits.detach() / s.pg.temperature)?)?;
            }
            let advantages: Vec<f32> = batch
                .target_rows
                .iter()
                .map(|&r| rollouts[rows[r as usize]].advantage)
                .collect();
            let weights = pg::step_weights(batch, rows, &lens, s.pg.norm);
            let inputs = TokenInputs {
                old: &old[c],
                reference: reference[c].as_deref(),
                sampled: sampled[c].as_deref(),
                advantages: &advantages,
                weights: &weights,
            };
            let (l, st) = pg::micro_loss(&lp, &inputs, &s.pg)?;
            let value = l.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if !value.is_finite() {
                return Err(TrainError::NonFinite {
                    what: "policy-gradient loss",
                    value,
                    step: optimizer.step_count() + 1,
                    micro: c,
                    examples: rows.iter().map(|&i| rollouts[i].id.clone()).collect(),
                    last_checkpoint: None,
                });
            }
            loss += value;
            pg_stats.add(&st);
            grads.add(&l.backward()?, &vars)?;
        }
        let mut grads = grads.into_grads(&vars)?;
        stats.train_s += t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        let norm = optim::clip_grad_norm(&mut grads, s.max_grad_norm)?;
        if !norm.is_finite() {
            return Err(TrainError::NonFinite {
                what: "gradient norm",
                value: norm,
                step: optimizer.step_count() + 1,
                micro: 0,
                examples: rollouts.iter().map(|r| r.id.clone()).collect(),
                last_checkpoint: None,
            });
        }
        optimizer.step(&grads, s.lr)?;
        stats.optimizer_s += t.elapsed().as_secs_f64();
        stats.optimizer_steps = epoch + 1;
        stats.loss = loss;
        stats.grad_norm = norm;
        stats.pg = pg_stats;
    }

    stats.entropy = entropy_sum / stats.tokens as f64;
    let mut old_of = vec![Vec::new(); n];
    for ((rows, _), o) in chunks.iter().zip(&old) {
        split_rows(o, rows, &lens, &mut old_of);
    }
    let (mut mismatch, mut mismatch_n) = (0f64, 0usize);
    for (r, o) in rollouts.iter().zip(&old_of) {
        if let Some(q) = r.sampled.as_deref().filter(|q| q.len() == o.len()) {
            mismatch += o
                .iter()
                .zip(q)
                .map(|(a, b)| (a - b).abs() as f64)
                .sum::<f64>();
            mismatch_n += o.len();
        }
    }
    stats.logprob_mismatch = (mismatch_n > 0).then(|| mismatch / mismatch_n as f64);
    Ok(stats)
}

/// The rollouts grouped by prompt (siblings of a tree), groups in order of first appearance.
fn sibling_groups(rollouts: &[Rollout]) -> Vec<Vec<usize>> {
    let mut index: std::collections::HashMap<&[u32], usize> = Default::default();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, r) in rollouts.iter().enumerate() {
        let g = *index
            .entry(&r.seq.ids[..r.seq.prompt_len])
            .or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
        groups[g].push(i);
    }
    groups
}

/// Cuts a pass's per-token values (its rows' completion tokens in order) into `out[row]`.
fn split_rows(values: &[f32], rows: &[usize], lens: &[usize], out: &mut [Vec<f32>]) {
    let mut at = 0;
    for &i in rows {
        out[i] = values[at..at + lens[i]].to_vec();
        at += lens[i];
    }
}

/// Sum over rows of the entropy of `softmax(scaled)` (nats).
fn entropy_sum_of(scaled: &Tensor) -> Result<f64> {
    let lsm = candle_nn::ops::log_softmax(&scaled.to_dtype(DType::F32)?, candle_core::D::Minus1)?;
    let h = (lsm.exp()? * &lsm)?.sum_all()?.neg()?;
    Ok(h.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}
