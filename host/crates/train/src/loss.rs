//! Losses. Per-token log-probs come from a fused log-softmax-gather op with an analytic backward
//! (`g * (onehot - softmax)`): the composed candle version materialises several vocab-sized
//! intermediates per step and backpropagates through each (notes/candle.md: ~25 % of a step).

use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use crate::batch::TokenBatch;
use crate::error::Result;
use crate::settings::{DpoLossKind, DpoSettings};

struct TokenLogprob {
    targets: Vec<u32>,
    /// Each row's `log sum exp`, kept by the forward for the backward's softmax.
    lse: OnceLock<Vec<f64>>,
}

impl CustomOp1 for TokenLogprob {
    fn name(&self) -> &'static str {
        "token-logprob"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, v) = layout.shape().dims2()?;
        let data = match storage {
            CpuStorage::F32(d) => d,
            _ => candle_core::bail!("token-logprob: only f32"),
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("token-logprob: logits must be contiguous")
        };
        let data = &data[start..end];
        if self.targets.len() != n {
            candle_core::bail!("token-logprob: {} targets for {n} rows", self.targets.len());
        }
        if let Some(&t) = self.targets.iter().find(|&&t| t as usize >= v) {
            candle_core::bail!("token-logprob: target {t} outside vocab {v}")
        }
        // Rows in parallel: on one thread this loop was a serial tenth of a second per step.
        let (out, lse): (Vec<f32>, Vec<f64>) = data
            .par_chunks(v)
            .zip(self.targets.par_iter())
            .map(|(row, &t)| {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                // f64 accumulation: the sum of up to 152k exponentials.
                let sum: f64 = row.iter().map(|&y| ((y - max) as f64).exp()).sum();
                let lse = max as f64 + sum.ln();
                (((row[t as usize] - max) as f64 - sum.ln()) as f32, lse)
            })
            .unzip();
        // A second forward of the same op (never made) would compute the same sums.
        let _ = self.lse.set(lse);
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    /// `g_i * (onehot(t_i) - softmax(x_i))` in one pass over the logits, into one buffer: the
    /// composed form (softmax, a one-hot scatter, a difference, a product) allocated four
    /// logits-sized tensors, 100 MB each at 512 targets of a 49k vocabulary, at the step's peak.
    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (n, v) = arg.dims2()?;
        let Some(lse) = self.lse.get() else {
            candle_core::bail!("token-logprob: backward before forward")
        };
        let g = grad_res.detach().to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let x = arg.detach().contiguous()?;
        let (storage, layout) = x.storage_and_layout();
        let (candle_core::Storage::Cpu(CpuStorage::F32(data)), Some((start, end))) =
            (&*storage, layout.contiguous_offsets())
        else {
            candle_core::bail!("token-logprob: backward takes contiguous f32 logits on the cpu")
        };
        let data = &data[start..end];
        let mut dx = vec![0f32; n * v];
        dx.par_chunks_mut(v)
            .zip(data.par_chunks(v))
            .enumerate()
            .for_each(|(i, (d, row))| {
                let (gi, lse) = (g[i], lse[i]);
                for (d, &y) in d.iter_mut().zip(row) {
                    *d = -gi * ((y as f64 - lse) as f32).exp();
                }
                d[self.targets[i] as usize] += gi;
            });
        drop(storage);
        Ok(Some(Tensor::from_vec(dx, (n, v), arg.device())?))
    }
}

/// `log softmax(logits)[i, targets[i]]`, shape `(n,)`, fused on CPU f32. `TokenLogprob` has a
/// CPU forward only and is reached only here, behind the device test; other devices and dtypes
/// take [`token_logprobs_composed`] (logged once: it keeps vocab-sized intermediates).
pub fn token_logprobs(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    if logits.device().is_cpu() && logits.dtype() == DType::F32 {
        Ok(logits.contiguous()?.apply_op1(TokenLogprob {
            targets: targets.to_vec(),
            lse: OnceLock::new(),
        })?)
    } else {
        malt_model::kernels::composed::warn_once(
            "token-logprob (log-softmax-gather)",
            logits.device(),
        );
        token_logprobs_composed(logits, targets)
    }
}

/// The plain candle-autograd version (baseline for the benchmark and a cross-check in tests).
pub fn token_logprobs_composed(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    let n = targets.len();
    let idx = Tensor::from_vec(targets.to_vec(), (n, 1), logits.device())?;
    let lsm = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
    Ok(lsm.gather(&idx, 1)?.reshape(n)?)
}

/// Per-row sums of per-token log-probs: `(batch,)`.
pub fn sequence_sums(batch: &TokenBatch, token_lp: &Tensor) -> Result<Tensor> {
    let ind = batch.row_indicator(token_lp.device())?;
    let n = batch.num_targets();
    Ok(ind
        .matmul(&token_lp.reshape((n, 1))?)?
        .reshape(batch.batch)?)
}

/// Number of loss tokens per row.
pub fn row_target_counts(batch: &TokenBatch) -> Vec<usize> {
    let mut c = vec![0usize; batch.batch];
    for &r in &batch.target_rows {
        c[r as usize] += 1;
    }
    c
}

/// `log sigmoid(x) = min(x, 0) - log(1 + exp(-|x|))`, differentiable and stable, with
/// `min(x, 0) = (x - |x|) / 2` so that both kinks use the same `|x|` and their subgradients at
/// 0 cancel: the gradient is `sigmoid(-x)` everywhere, 0.5 at 0. (Spelled with `relu`, the
/// gradient at exactly 0 was 1.5: DPO's first step, where the policy equals its reference and
/// `h` is exactly 0 for many pairs, weighted those pairs three times.)
pub fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    let abs = x.abs()?;
    let min0 = ((x - &abs)? * 0.5)?;
    let soft = abs.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    Ok((min0 - soft)?)
}

/// DPO outputs for a set of pairs (all `(pairs,)`).
pub struct DpoTerms {
    /// Per-pair loss (not yet averaged).
    pub losses: Tensor,
    /// `beta * (pi_c - ref_c)` and `beta * (pi_r - ref_r)`.
    pub chosen_rewards: Tensor,
    pub rejected_rewards: Tensor,
}

/// The DPO family of losses from policy and reference (sequence) log-probs.
///
/// sigmoid (cDPO when `label_smoothing = eps > 0`):
///   `h = (pi_c - pi_r) - (ref_c - ref_r)`,
///   `loss = -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)`.
/// ipo: `loss = (h - 1 / (2 beta))^2` with length-normalised log-probs (the caller passes
///   per-token means for IPO, as TRL does).
pub fn dpo_terms(
    pi_c: &Tensor,
    pi_r: &Tensor,
    ref_c: &Tensor,
    ref_r: &Tensor,
    s: &DpoSettings,
) -> Result<DpoTerms> {
    let chosen_lr = (pi_c - ref_c)?;
    let rejected_lr = (pi_r - ref_r)?;
    let h = (&chosen_lr - &rejected_lr)?;
    let losses = match s.loss {
        DpoLossKind::Sigmoid => {
            let bh = (&h * s.beta)?;
            let pos = log_sigmoid(&bh)?;
            if s.label_smoothing > 0.0 {
                let neg = log_sigmoid(&bh.neg()?)?;
                ((pos * -(1.0 - s.label_smoothing))? - (neg * s.label_smoothing)?)?
            } else {
                pos.neg()?
            }
        }
        DpoLossKind::Ipo => (h - 1.0 / (2.0 * s.beta))?.sqr()?,
    };
    Ok(DpoTerms {
        losses,
        chosen_rewards: (chosen_lr.detach() * s.beta)?,
        rejected_rewards: (rejected_lr.detach() * s.beta)?,
    })
}
