//! Held-out losses during training: the SFT token NLL and the DPO loss, reward margin and
//! preference accuracy, computed without a graph.

use candle_core::DType;

use crate::batch::{Sequence, TokenBatch};
use crate::data::{DpoItem, SftItem};
use crate::dpo::{dpo_chunk_loss, DpoStats};
use crate::error::Result;
use crate::loss;
use crate::policy::{Mode, PolicyModel};
use crate::reference::RefLogprobs;
use crate::settings::DpoSettings;

/// Mean token NLL of `items` under `adapter` (no graph): the SFT eval loss.
pub fn evaluate_sft<M: PolicyModel>(
    model: &M,
    adapter: Option<&M::Adapter>,
    items: &[SftItem],
    micro_batch: usize,
    pad_id: u32,
) -> Result<f64> {
    let (mut nll, mut n) = (0f64, 0usize);
    for chunk in items.chunks(micro_batch.max(1)) {
        let seqs: Vec<&Sequence> = chunk.iter().map(|i| &i.seq).collect();
        let batch = TokenBatch::new(&seqs, pad_id);
        if batch.num_targets() == 0 {
            continue;
        }
        let logits = model.target_logits(&batch, adapter, Mode::Eval)?;
        let lp = loss::token_logprobs(&logits, &batch.targets)?;
        nll -= lp.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        n += batch.num_targets();
    }
    Ok(if n == 0 { 0.0 } else { nll / n as f64 })
}

/// DPO eval: (mean loss, mean reward margin, preference accuracy, mean chosen, mean rejected).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpoEval {
    pub loss: f64,
    pub reward_margin: f64,
    pub accuracy: f64,
    pub chosen_reward: f64,
    pub rejected_reward: f64,
}

pub fn evaluate_dpo<M: PolicyModel>(
    model: &M,
    adapter: Option<&M::Adapter>,
    items: &[DpoItem],
    refs: &RefLogprobs,
    s: &DpoSettings,
    micro_batch: usize,
    pad_id: u32,
) -> Result<DpoEval> {
    let mut tot = DpoStats::default();
    for chunk in items.chunks(micro_batch.max(1)) {
        let (_, st) = dpo_chunk_loss(model, adapter, chunk, refs, s, pad_id, Mode::Eval)?;
        tot.add(&st);
    }
    let n = tot.pairs.max(1) as f64;
    Ok(DpoEval {
        loss: tot.loss_sum / n,
        reward_margin: (tot.chosen_sum - tot.rejected_sum) / n,
        accuracy: tot.correct as f64 / n,
        chosen_reward: tot.chosen_sum / n,
        rejected_reward: tot.rejected_sum / n,
    })
}
