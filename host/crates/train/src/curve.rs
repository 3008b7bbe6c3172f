//! A LoRA SFT loss curve: the same adapter initialisation, batches, dropout seeds and
//! optimiser steps whatever the base model, so two loads of one checkpoint (f32 and bf16
//! weights) can be compared step by step (`malt bench dtype`).

use std::time::Instant;

use candle_core::DType;
use malt_model::{LoraConfig, Model};

use crate::batch::{Sequence, TokenBatch};
use crate::error::{Result, TrainError};
use crate::loss;
use crate::model_bridge::MaltPolicy;
use crate::optim::{AdamW, AdamWParams};
use crate::policy::{Mode, PolicyModel};

#[derive(Debug, Clone)]
pub struct CurveSettings {
    pub steps: usize,
    /// Sequences per step, taken in order from the data (wrapping around).
    pub micro_batch: usize,
    pub lr: f64,
    pub lora: LoraConfig,
    pub seed: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Curve {
    /// Mean token loss of each step, before its update.
    pub losses: Vec<f64>,
    /// Target tokens summed over every step.
    pub tokens: usize,
    /// Wall seconds of every step after the first (the first also builds caches).
    pub later_steps_s: f64,
}

impl Curve {
    /// Trained tokens per second over the steps after the first.
    pub fn tokens_per_s(&self, steps: usize) -> f64 {
        let per_step = self.tokens as f64 / self.losses.len().max(1) as f64;
        per_step * (steps.saturating_sub(1)) as f64 / self.later_steps_s.max(1e-12)
    }
}

/// Trains a fresh adapter (seeded by `s.seed`) on `data` for `s.steps` SFT steps.
pub fn sft_curve(
    model: &Model,
    data: &[Sequence],
    s: &CurveSettings,
    pad_id: u32,
) -> Result<Curve> {
    if data.is_empty() || s.steps == 0 || s.micro_batch == 0 {
        return Err(TrainError::Settings(
            "loss curve: needs data, steps >= 1 and micro_batch >= 1".into(),
        ));
    }
    let policy = MaltPolicy::new(model, s.lora.clone());
    let adapter = policy.new_adapter("curve", s.seed)?;
    let mut opt = AdamW::new(policy.trainable_vars(&adapter), AdamWParams::default())?;
    let vars = opt.vars().to_vec();
    let mut curve = Curve {
        losses: Vec::with_capacity(s.steps),
        tokens: 0,
        later_steps_s: 0.0,
    };
    for step in 0..s.steps {
        let t0 = Instant::now();
        let seqs: Vec<&Sequence> = (0..s.micro_batch)
            .map(|i| &data[(step * s.micro_batch + i) % data.len()])
            .collect();
        let batch = TokenBatch::new(&seqs, pad_id);
        let mode = Mode::Train {
            dropout_seed: Some(s.seed.wrapping_add(step as u64)),
        };
        let logits = policy.target_logits(&batch, Some(&adapter), mode)?;
        let lp = loss::token_logprobs(&logits, &batch.targets)?;
        let l = (lp.sum_all()?.neg()? / batch.num_targets() as f64)?;
        curve
            .losses
            .push(l.to_dtype(DType::F64)?.to_scalar::<f64>()?);
        curve.tokens += batch.num_targets();
        let g = l.backward()?;
        let grads = vars
            .iter()
            .map(|(_, v)| match g.get(v.as_tensor()) {
                Some(t) => Ok(t.clone()),
                None => v.as_tensor().zeros_like(),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        opt.step(&grads, s.lr)?;
        if step > 0 {
            curve.later_steps_s += t0.elapsed().as_secs_f64();
        }
    }
    Ok(curve)
}

/// The largest relative difference between two curves' losses, step by step.
pub fn max_relative_gap(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / x.abs().max(1e-12))
        .fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gap_is_relative_to_the_first_curve() {
        assert_eq!(max_relative_gap(&[2.0, 4.0], &[2.0, 4.0]), 0.0);
        assert!((max_relative_gap(&[2.0, 4.0], &[2.02, 3.0]) - 0.25).abs() < 1e-12);
    }
}
