//! The DPO loss of one micro-batch of pairs against their reference log-probs, shared by the
//! training step and the held-out evaluation.

use candle_core::{DType, Tensor};

use crate::data::DpoItem;
use crate::error::Result;
use crate::loss;
use crate::policy::{Mode, PolicyModel};
use crate::reference::{dpo_forward, RefLogprobs};
use crate::settings::{DpoLossKind, DpoSettings};

/// Per-micro-batch DPO statistics (sums, not means).
#[derive(Default, Clone, Copy)]
pub(crate) struct DpoStats {
    pub(crate) loss_sum: f64,
    pub(crate) chosen_sum: f64,
    pub(crate) rejected_sum: f64,
    pub(crate) correct: usize,
    pub(crate) pairs: usize,
}

impl DpoStats {
    /// Adds `other`'s sums into these.
    pub(crate) fn add(&mut self, other: &DpoStats) {
        self.loss_sum += other.loss_sum;
        self.chosen_sum += other.chosen_sum;
        self.rejected_sum += other.rejected_sum;
        self.correct += other.correct;
        self.pairs += other.pairs;
    }
}

/// DPO loss on a chunk: returns (sum of pair losses tensor, stats).
pub(crate) fn dpo_chunk_loss<M: PolicyModel>(
    model: &M,
    adapter: Option<&M::Adapter>,
    chunk: &[DpoItem],
    refs: &RefLogprobs,
    settings: &DpoSettings,
    pad_id: u32,
    mode: Mode,
) -> Result<(Tensor, DpoStats)> {
    let (sums, counts, pairs) = dpo_forward(model, adapter, chunk, pad_id, mode)?;
    let dev = sums.device().clone();
    let ipo = settings.loss == DpoLossKind::Ipo;
    // IPO compares per-token means, DPO sums.
    let per_token = |x: f32, c: u32| if ipo { x / (c.max(1) as f32) } else { x };
    let (ref_chosen, ref_rejected): (Vec<f32>, Vec<f32>) = chunk
        .iter()
        .map(|i| {
            (
                per_token(refs.chosen[i.index], refs.chosen_tokens[i.index]),
                per_token(refs.rejected[i.index], refs.rejected_tokens[i.index]),
            )
        })
        .unzip();
    let sums = if ipo {
        let c: Vec<f32> = counts.iter().map(|&c| c.max(1) as f32).collect();
        (sums / Tensor::from_vec(c, 2 * pairs, &dev)?)?
    } else {
        sums
    };
    let policy_chosen = sums.narrow(0, 0, pairs)?;
    let policy_rejected = sums.narrow(0, pairs, pairs)?;
    let terms = loss::dpo_terms(
        &policy_chosen,
        &policy_rejected,
        &Tensor::from_vec(ref_chosen, pairs, &dev)?,
        &Tensor::from_vec(ref_rejected, pairs, &dev)?,
        settings,
    )?;
    let chosen_rewards: Vec<f32> = terms.chosen_rewards.to_vec1()?;
    let rejected_rewards: Vec<f32> = terms.rejected_rewards.to_vec1()?;
    let loss_sum = terms.losses.sum_all()?;
    let stats = DpoStats {
        loss_sum: loss_sum.to_dtype(DType::F64)?.to_scalar::<f64>()?,
        chosen_sum: chosen_rewards.iter().map(|&x| x as f64).sum(),
        rejected_sum: rejected_rewards.iter().map(|&x| x as f64).sum(),
        correct: chosen_rewards
            .iter()
            .zip(&rejected_rewards)
            .filter(|(c, r)| c > r)
            .count(),
        pairs,
    };
    Ok((loss_sum, stats))
}
