//! The held-out evaluation during a phase, as a metrics record.

use crate::data::{DpoItem, SftItem};
use crate::error::Result;
use crate::heldout::{evaluate_dpo, evaluate_sft};
use crate::metrics::EvalMetrics;
use crate::policy::PolicyModel;

use super::prepare::PhaseData;
use super::schedule::Schedule;
use super::PhaseSpec;

/// The eval record of `adapter` after `step` completed steps; `None` without held-out examples.
pub(super) fn evaluate<M: PolicyModel>(
    model: &M,
    spec: &PhaseSpec,
    data: &PhaseData,
    schedule: &Schedule,
    adapter: &M::Adapter,
    step: u64,
    pad_id: u32,
) -> Result<Option<EvalMetrics>> {
    if schedule.eval_idx.is_empty() {
        return Ok(None);
    }
    let micro_batch = spec.optim.micro_batch as usize;
    let epoch = schedule.epoch(step);
    Ok(Some(match data {
        PhaseData::Sft(items) => {
            let held_out: Vec<SftItem> = schedule
                .eval_idx
                .iter()
                .map(|&i| items[i].clone())
                .collect();
            EvalMetrics {
                kind: "eval".into(),
                step,
                epoch,
                eval_loss: evaluate_sft(model, Some(adapter), &held_out, micro_batch, pad_id)?,
                examples: held_out.len(),
                reward_margin: None,
                accuracy: None,
                chosen_reward: None,
                rejected_reward: None,
            }
        }
        PhaseData::Dpo(items, refs) => {
            let held_out: Vec<DpoItem> = schedule
                .eval_idx
                .iter()
                .map(|&i| items[i].clone())
                .collect();
            let e = evaluate_dpo(
                model,
                Some(adapter),
                &held_out,
                refs,
                &spec.dpo,
                micro_batch,
                pad_id,
            )?;
            EvalMetrics {
                kind: "eval".into(),
                step,
                epoch,
                eval_loss: e.loss,
                examples: held_out.len(),
                reward_margin: Some(e.reward_margin),
                accuracy: Some(e.accuracy),
                chosen_reward: Some(e.chosen_reward),
                rejected_reward: Some(e.rejected_reward),
            }
        }
    }))
}
