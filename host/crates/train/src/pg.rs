//! The clipped policy-gradient loss of on-policy training (PPO's surrogate, as GRPO uses it),
//! per completion token, with a KL penalty to a reference policy.
//!
//! For token `t` of a completion with advantage `A`, current log-prob `lp` (of the sampling
//! distribution: logits divided by the sampling temperature), log-prob `old` when the update
//! started and reference log-prob `ref`:
//!
//! ```text
//! r    = exp(lp - old)
//! loss = -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A) * w_is + beta * r * (exp(ref - lp) - (ref - lp) - 1)
//! ```
//!
//! the KL term being the `k3` estimator (Schulman) weighted by `r`, because the tokens were drawn
//! from the policy at the update's start, not the current one (TRL's GRPO computes exactly this
//! by default, `use_bias_correction_kl`; the gradient flows through both factors), and `w_is` the
//! optional truncated importance weight `min(exp(old - sampled), cap)` that corrects for an
//! engine whose sampling log-probs differ from the trainer's. The per-token losses of one
//! optimiser step are averaged by [`LossNorm`].
//!
//! The surrogate is built from detached masks, not from candle's `minimum`/`clamp` (whose
//! backward halves the gradient wherever the two operands tie, i.e. at `r = 1` on every token of
//! an update's first pass): where the unclipped term is the minimum the loss is `-A r` (gradient
//! `-A r` in `lp`), elsewhere a constant. This is PyTorch's gradient for TRL's expression
//! everywhere, ties included (its `minimum` splits a tie and its `clamp` passes the gradient
//! inside the range, so both halves reach `lp`).

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::batch::TokenBatch;
use crate::error::{Result, TrainError};

/// How the per-token losses of one optimiser step become one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossNorm {
    /// Sum over every completion token of the step, divided by their number (DAPO's
    /// token-level loss; TRL's `bnpo`/`dapo`). Every token weighs the same, so a long
    /// completion's tokens are not worth less than a short one's: a per-sequence mean makes a
    /// negative-advantage completion's loss smaller per token the longer it is, which rewards
    /// rambling when wrong (verl#7244, Dr. GRPO).
    #[default]
    Token,
    /// Each completion's token mean, then the mean over the step's completions (TRL's `grpo`).
    Sequence,
}

/// The `[online]` loss settings the trainer hands to [`token_losses`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PgSettings {
    /// Lower clip range: `r` below `1 - clip_low` stops a negative advantage's gradient.
    pub clip_low: f64,
    /// Upper clip range: `r` above `1 + clip_high` stops a positive advantage's gradient.
    pub clip_high: f64,
    /// Weight of the KL penalty to the reference policy; 0 leaves the reference unread.
    pub kl_beta: f64,
    /// The sampling temperature: log-probs are of `logits / temperature`, the distribution the
    /// tokens were drawn from.
    pub temperature: f64,
    pub norm: LossNorm,
    /// Cap of the truncated importance weight `exp(old - sampled)`; `None`: no correction.
    pub is_cap: Option<f64>,
}

impl Default for PgSettings {
    fn default() -> Self {
        PgSettings {
            clip_low: 0.2,
            clip_high: 0.2,
            kl_beta: 0.04,
            temperature: 1.0,
            norm: LossNorm::Token,
            is_cap: None,
        }
    }
}

impl PgSettings {
    /// Refuses settings under which the loss is undefined or silently does nothing.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(self.clip_low > 0.0 && self.clip_low < 1.0) {
            return Err(format!("clip_low = {} must be in (0, 1)", self.clip_low));
        }
        if !(self.clip_high > 0.0 && self.clip_high.is_finite()) {
            return Err(format!("clip_high = {} must be positive", self.clip_high));
        }
        if !(self.kl_beta >= 0.0 && self.kl_beta.is_finite()) {
            return Err(format!("kl_beta = {} must be >= 0", self.kl_beta));
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(format!(
                "temperature = {} must be positive (greedy sampling has no log-probs to train on)",
                self.temperature
            ));
        }
        if let Some(c) = self.is_cap {
            if !(c >= 1.0 && c.is_finite()) {
                return Err(format!("is_cap = {c} must be >= 1"));
            }
        }
        Ok(())
    }
}

/// The per-token inputs of one micro-batch, aligned with its `TokenBatch::targets`.
pub struct TokenInputs<'a> {
    /// Log-probs when the update started (detached).
    pub old: &'a [f32],
    /// The reference policy's log-probs; needed when `kl_beta > 0`.
    pub reference: Option<&'a [f32]>,
    /// The engine's sampling log-probs, for the importance weight (with `is_cap`).
    pub sampled: Option<&'a [f32]>,
    /// Advantage of each token's completion.
    pub advantages: &'a [f32],
    /// Weight of each token in the step's loss (see [`step_weights`]).
    pub weights: &'a [f32],
}

/// Sums over one micro-batch's tokens, for the step's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PgStats {
    pub tokens: usize,
    /// Tokens whose gradient the clip stopped.
    pub clipped: usize,
    /// Sum of the KL estimates `r k3` (0 when `kl_beta = 0` and no reference was given).
    pub kl_sum: f64,
    /// Sum of `r` (the ratio to the update's start).
    pub ratio_sum: f64,
    /// Sum of importance weights (tokens when there is no correction).
    pub is_weight_sum: f64,
}

impl PgStats {
    pub fn add(&mut self, o: &PgStats) {
        self.tokens += o.tokens;
        self.clipped += o.clipped;
        self.kl_sum += o.kl_sum;
        self.ratio_sum += o.ratio_sum;
        self.is_weight_sum += o.is_weight_sum;
    }
}

/// Each token's weight in the step's loss under `norm`, given every completion's token count in
/// the whole step (`step_lens`, of which this micro-batch holds the completions `rows`): token
/// norm `1 / sum(step_lens)`, sequence norm `1 / (len * completions)`. Micro-batch losses
/// weighted so add up to the loss of the step as one batch.
pub fn step_weights(
    batch: &TokenBatch,
    rows: &[usize],
    step_lens: &[usize],
    norm: LossNorm,
) -> Vec<f32> {
    let total: usize = step_lens.iter().sum();
    let completions = step_lens.iter().filter(|&&l| l > 0).count();
    batch
        .target_rows
        .iter()
        .map(|&r| match norm {
            LossNorm::Token => 1.0 / total.max(1) as f32,
            LossNorm::Sequence => {
                let len = step_lens[rows[r as usize]];
                1.0 / (len.max(1) * completions.max(1)) as f32
            }
        })
        .collect()
}

/// The weighted sum of one micro-batch's per-token losses (a scalar with the graph to `logps`)
/// and its statistics. `logps`: the policy's log-probs of the batch's targets at the sampling
/// temperature, shape `(n,)`.
pub fn micro_loss(
    logps: &Tensor,
    inputs: &TokenInputs,
    s: &PgSettings,
) -> Result<(Tensor, PgStats)> {
    let n = logps.dim(0)?;
    let check = |what: &str, len: usize| {
        if len == n {
            Ok(())
        } else {
            Err(TrainError::Internal(format!(
                "policy-gradient loss: {len} {what} for {n} tokens"
            )))
        }
    };
    check("old log-probs", inputs.old.len())?;
    check("advantages", inputs.advantages.len())?;
    check("weights", inputs.weights.len())?;
    let dev = logps.device().clone();
    let lp: Vec<f32> = logps.detach().to_dtype(DType::F32)?.to_vec1()?;
    let is_weights: Vec<f64> = match (inputs.sampled, s.is_cap) {
        (Some(sampled), Some(cap)) => {
            check("sampling log-probs", sampled.len())?;
            inputs
                .old
                .iter()
                .zip(sampled)
                .map(|(&o, &q)| ((o - q) as f64).exp().min(cap))
                .collect()
        }
        _ => vec![1.0; n],
    };
    let mut stats = PgStats {
        tokens: n,
        ..Default::default()
    };
    let (mut coef, mut constant) = (vec![0f32; n], vec![0f32; n]);
    for t in 0..n {
        let a = inputs.advantages[t] as f64;
        let r = ((lp[t] - inputs.old[t]) as f64).exp();
        stats.ratio_sum += r;
        stats.is_weight_sum += is_weights[t];
        let active = if a >= 0.0 {
            r <= 1.0 + s.clip_high
        } else {
            r >= 1.0 - s.clip_low
        };
        let w = inputs.weights[t] as f64 * is_weights[t];
        if active {
            coef[t] = (-a * w) as f32;
        } else {
            stats.clipped += 1;
            constant[t] = (-r.clamp(1.0 - s.clip_low, 1.0 + s.clip_high) * a * w) as f32;
        }
    }
    let old = Tensor::from_vec(inputs.old.to_vec(), n, &dev)?;
    let ratio = (logps - &old)?.exp()?;
    let surrogate =
        ((&ratio * Tensor::from_vec(coef, n, &dev)?)? + Tensor::from_vec(constant, n, &dev)?)?;
    let mut loss = surrogate.sum_all()?;
    if s.kl_beta > 0.0 {
        let Some(reference) = inputs.reference else {
            return Err(TrainError::Internal(
                "policy-gradient loss: kl_beta > 0 needs the reference log-probs".into(),
            ));
        };
        check("reference log-probs", reference.len())?;
        let d = (Tensor::from_vec(reference.to_vec(), n, &dev)? - logps)?;
        let kl = (ratio * ((d.exp()? - &d)? - 1.0)?)?;
        stats.kl_sum = kl
            .detach()
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        let weighted = (kl * (Tensor::from_vec(inputs.weights.to_vec(), n, &dev)? * s.kl_beta)?)?;
        loss = (loss + weighted.sum_all()?)?;
    } else if let Some(reference) = inputs.reference {
        check("reference log-probs", reference.len())?;
        stats.kl_sum = (0..n)
            .map(|t| {
                let d = (reference[t] - lp[t]) as f64;
                ((lp[t] - inputs.old[t]) as f64).exp() * (d.exp() - d - 1.0)
            })
            .sum();
    }
    Ok((loss, stats))
}

/// Log-probs of `targets` under `logits / temperature`: the distribution sampling drew from.
pub fn sampling_logprobs(logits: &Tensor, targets: &[u32], temperature: f64) -> Result<Tensor> {
    let scaled = if temperature == 1.0 {
        logits.clone()
    } else {
        (logits / temperature)?
    };
    crate::loss::token_logprobs(&scaled, targets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The loss written out with plain candle ops the way TRL writes it (min, clamp): its value
    /// and, away from ties, its gradient.
    fn trl_form(
        lp: &Tensor,
        old: &[f32],
        reference: &[f32],
        adv: &[f32],
        w: &[f32],
        s: &PgSettings,
    ) -> Tensor {
        let dev = lp.device();
        let n = old.len();
        let t = |v: &[f32]| Tensor::from_vec(v.to_vec(), n, dev).unwrap();
        let r = (lp - t(old)).unwrap().exp().unwrap();
        let a = t(adv);
        let l1 = (&r * &a).unwrap();
        let l2 = (r.clamp(1.0 - s.clip_low, 1.0 + s.clip_high).unwrap() * &a).unwrap();
        let pg = l1.minimum(&l2).unwrap().neg().unwrap();
        let d = (t(reference) - lp).unwrap();
        let kl = (&r * ((d.exp().unwrap() - &d).unwrap() - 1.0).unwrap()).unwrap();
        ((pg + (kl * s.kl_beta).unwrap()).unwrap() * t(w))
            .unwrap()
            .sum_all()
            .unwrap()
    }

    #[test]
    fn value_and_gradient_equal_the_clipped_objective() -> Result<()> {
        let dev = Device::Cpu;
        let s = PgSettings {
            kl_beta: 0.1,
            ..Default::default()
        };
        // Tokens: inside the range (+A, -A), above it with +A (clipped) and -A (not), below it
        // with -A (clipped) and +A (not).
        let lp0 = vec![-1.0f32, -2.0, -0.5, -0.6, -3.0, -2.5];
        let old = vec![-1.1f32, -1.9, -0.9, -1.0, -2.5, -2.0];
        let reference = vec![-1.2f32, -2.2, -0.7, -0.4, -2.9, -2.6];
        let adv = vec![1.0f32, -0.5, 2.0, -1.0, -1.5, 0.5];
        let w = vec![0.1f32, 0.2, 0.1, 0.3, 0.2, 0.1];
        let lp = Var::from_vec(lp0.clone(), 6, &dev)?;
        let inputs = TokenInputs {
            old: &old,
            reference: Some(&reference),
            sampled: None,
            advantages: &adv,
            weights: &w,
        };
        let (loss, stats) = micro_loss(lp.as_tensor(), &inputs, &s)?;
        let want = trl_form(lp.as_tensor(), &old, &reference, &adv, &w, &s);
        let (got_v, want_v) = (loss.to_scalar::<f32>()?, want.to_scalar::<f32>()?);
        assert!((got_v - want_v).abs() < 1e-6, "{got_v} vs {want_v}");
        assert_eq!(stats.clipped, 2);
        let g = loss
            .backward()?
            .get(lp.as_tensor())
            .unwrap()
            .to_vec1::<f32>()?;
        let gw = want
            .backward()?
            .get(lp.as_tensor())
            .unwrap()
            .to_vec1::<f32>()?;
        for (i, (a, b)) in g.iter().zip(&gw).enumerate() {
            assert!((a - b).abs() < 1e-6, "token {i}: {a} vs {b}");
        }
        // By hand for the clipped tokens: only the KL term's gradient is left,
        // beta w d/dlp [r k3] = beta w r (k3 + 1 - exp(ref - lp)) = -beta w r (ref - lp).
        for i in [2usize, 4] {
            let r = (lp0[i] - old[i]).exp();
            let want = -0.1 * w[i] * r * (reference[i] - lp0[i]);
            assert!((g[i] - want).abs() < 1e-6, "token {i}: {} vs {want}", g[i]);
        }
        Ok(())
    }

    #[test]
    fn at_the_updates_start_every_token_gets_the_full_gradient() -> Result<()> {
        // r = 1 exactly: candle's `minimum` would halve the gradient there (a tie); PyTorch's
        // minimum + clamp pass all of it, and so does this loss: d/dlp = -A w.
        let dev = Device::Cpu;
        let lp0 = vec![-1.0f32, -2.0];
        let lp = Var::from_vec(lp0.clone(), 2, &dev)?;
        let s = PgSettings {
            kl_beta: 0.0,
            ..Default::default()
        };
        let inputs = TokenInputs {
            old: &lp0,
            reference: None,
            sampled: None,
            advantages: &[1.5, -0.5],
            weights: &[0.5, 0.5],
        };
        let (loss, stats) = micro_loss(lp.as_tensor(), &inputs, &s)?;
        assert!((loss.to_scalar::<f32>()? - (-0.5)).abs() < 1e-6);
        let g = loss
            .backward()?
            .get(lp.as_tensor())
            .unwrap()
            .to_vec1::<f32>()?;
        assert_eq!(g, vec![-0.75, 0.25]);
        assert_eq!((stats.clipped, stats.ratio_sum), (0, 2.0));
        Ok(())
    }

    #[test]
    fn importance_weights_are_truncated() -> Result<()> {
        let dev = Device::Cpu;
        let lp0 = vec![-1.0f32, -1.0];
        let lp = Var::from_vec(lp0.clone(), 2, &dev)?;
        let s = PgSettings {
            kl_beta: 0.0,
            is_cap: Some(2.0),
            ..Default::default()
        };
        // exp(old - sampled) = exp(0.5) = 1.65 (kept) and exp(2) = 7.4 (capped at 2).
        let sampled = vec![-1.5f32, -3.0];
        let inputs = TokenInputs {
            old: &lp0,
            reference: None,
            sampled: Some(&sampled),
            advantages: &[1.0, 1.0],
            weights: &[1.0, 1.0],
        };
        let (loss, stats) = micro_loss(lp.as_tensor(), &inputs, &s)?;
        let g = loss
            .backward()?
            .get(lp.as_tensor())
            .unwrap()
            .to_vec1::<f32>()?;
        assert!(
            (g[0] + 0.5f32.exp()).abs() < 1e-6 && (g[1] + 2.0).abs() < 1e-6,
            "{g:?}"
        );
        assert!((stats.is_weight_sum - (0.5f64.exp() + 2.0)).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn step_weights_follow_the_norm() {
        use crate::batch::Sequence;
        let a = Sequence {
            ids: vec![1, 2, 3, 4],
            prompt_len: 2,
        };
        let b = Sequence {
            ids: vec![1, 2, 5],
            prompt_len: 2,
        };
        let batch = TokenBatch::new(&[&a, &b], 0);
        // This micro-batch holds completions 0 and 2 of a step whose completions have 2, 4, 1
        // tokens (this batch's targets: row 0 has 2, row 1 has 1).
        let lens = [2usize, 4, 1];
        let tok = step_weights(&batch, &[0, 2], &lens, LossNorm::Token);
        assert_eq!(tok, vec![1.0 / 7.0; 3]);
        let seq = step_weights(&batch, &[0, 2], &lens, LossNorm::Sequence);
        assert_eq!(seq, vec![1.0 / 6.0, 1.0 / 6.0, 1.0 / 3.0]);
    }

    #[test]
    fn bad_settings_are_refused() {
        let bad = [
            PgSettings {
                clip_low: 1.0,
                ..Default::default()
            },
            PgSettings {
                clip_high: 0.0,
                ..Default::default()
            },
            PgSettings {
                kl_beta: -0.1,
                ..Default::default()
            },
            PgSettings {
                temperature: 0.0,
                ..Default::default()
            },
            PgSettings {
                is_cap: Some(0.5),
                ..Default::default()
            },
        ];
        for s in bad {
            assert!(s.validate().is_err(), "{s:?}");
        }
        assert!(PgSettings::default().validate().is_ok());
    }
}
