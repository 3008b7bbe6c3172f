//! One optimiser step: the step's examples in micro-batches, each one's loss (scaled so that
//! the accumulated gradients equal those of one big batch) and backward pass, the gradients
//! summed per variable, clipped, and applied by AdamW.

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use crate::batch::{Sequence, TokenBatch};
use crate::data::{self, DpoItem};
use crate::dpo::{dpo_chunk_loss, DpoStats};
use crate::error::{Result, TrainError};
use crate::loss;
use crate::optim;
use crate::policy::{Mode, PolicyModel};

use super::prepare::PhaseData;
use super::resume::TrainingState;
use super::PhaseSpec;

/// What one optimiser step measured.
pub(super) struct StepOutcome {
    /// The step's loss: SFT mean token NLL, DPO mean pair loss.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Non-pad tokens the step processed.
    pub tokens: u64,
    /// DPO reward statistics (empty for SFT).
    pub dpo: DpoStats,
}

/// Runs the optimiser step that follows `state.step` on the dataset examples `examples` at
/// learning rate `lr`. Does not advance `state.step` (the caller's loop does).
pub(super) fn optimizer_step<M: PolicyModel>(
    model: &M,
    spec: &PhaseSpec,
    data: &PhaseData,
    examples: &[usize],
    state: &mut TrainingState<M::Adapter>,
    lr: f64,
    pad_id: u32,
) -> Result<StepOutcome> {
    let optim = &spec.optim;
    let step = state.step;
    let denominator = loss_denominator(data, examples);
    let mut grads = GradAccumulator::new(state.vars.len());
    let mut outcome = StepOutcome {
        loss: 0.0,
        grad_norm: 0.0,
        tokens: 0,
        dpo: DpoStats::default(),
    };
    for (micro, chunk) in examples.chunks(optim.micro_batch as usize).enumerate() {
        // DPO's reference log-probs come from a pass without dropout; a policy pass with it
        // would compare log-probs of two different functions, so it is off unless asked for
        // (TRL turns dropout off in DPO too).
        let dropout = !matches!(data, PhaseData::Dpo(..)) || spec.dpo.lora_dropout;
        let dropout_seed = dropout.then(|| {
            data::mix_seed(
                optim.seed,
                data::STREAM_DROPOUT,
                step * 65536 + micro as u64,
            )
        });
        let mode = Mode::Train { dropout_seed };
        let micro_loss = match data {
            PhaseData::Sft(items) => {
                let seqs: Vec<&Sequence> = chunk.iter().map(|&i| &items[i].seq).collect();
                let batch = TokenBatch::new(&seqs, pad_id);
                outcome.tokens += batch.num_tokens() as u64;
                if batch.num_targets() == 0 {
                    continue;
                }
                let logits = model.target_logits(&batch, Some(&state.adapter), mode)?;
                let logprobs = loss::token_logprobs(&logits, &batch.targets)?;
                (logprobs.sum_all()?.neg()? / denominator)?
            }
            PhaseData::Dpo(items, refs) => {
                let pairs: Vec<DpoItem> = chunk.iter().map(|&i| items[i].clone()).collect();
                outcome.tokens += pairs
                    .iter()
                    .map(|i| (i.chosen.ids.len() + i.rejected.ids.len()) as u64)
                    .sum::<u64>();
                let adapter = Some(&state.adapter);
                let (loss_sum, stats) =
                    dpo_chunk_loss(model, adapter, &pairs, refs, &spec.dpo, pad_id, mode)?;
                outcome.dpo.chosen_sum += stats.chosen_sum;
                outcome.dpo.rejected_sum += stats.rejected_sum;
                outcome.dpo.correct += stats.correct;
                outcome.dpo.pairs += stats.pairs;
                (loss_sum / denominator)?
            }
        };
        let value = micro_loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !value.is_finite() {
            return Err(TrainError::NonFinite {
                what: "loss",
                value,
                step: step + 1,
                micro,
                examples: chunk.iter().map(|&i| data.id(i)).collect(),
                last_checkpoint: state.last_checkpoint.clone(),
            });
        }
        outcome.loss += value;
        grads.add(&micro_loss.backward()?, &state.vars)?;
    }
    let mut grads = grads.into_grads(&state.vars)?;
    outcome.grad_norm = optim::clip_grad_norm(&mut grads, optim.max_grad_norm)?;
    if !outcome.grad_norm.is_finite() {
        return Err(TrainError::NonFinite {
            what: "gradient norm",
            value: outcome.grad_norm,
            step: step + 1,
            micro: 0,
            examples: examples.iter().map(|&i| data.id(i)).collect(),
            last_checkpoint: state.last_checkpoint.clone(),
        });
    }
    state.optimizer.step(&grads, lr)?;
    Ok(outcome)
}

/// The normaliser over the whole optimiser step, so that accumulated micro-batch gradients
/// equal the gradient of one big batch: SFT = completion tokens (token mean), DPO = pairs.
fn loss_denominator(data: &PhaseData, examples: &[usize]) -> f64 {
    let n = match data {
        PhaseData::Sft(items) => examples
            .iter()
            .map(|&i| {
                let s = &items[i].seq;
                s.ids.len().saturating_sub(s.prompt_len.max(1))
            })
            .sum::<usize>(),
        PhaseData::Dpo(..) => examples.len(),
    };
    n.max(1) as f64
}

/// Sums each trainable variable's gradient over the micro-batches of one optimiser step.
pub struct GradAccumulator {
    sums: Vec<Option<Tensor>>,
}

impl GradAccumulator {
    pub fn new(vars: usize) -> Self {
        GradAccumulator {
            sums: vec![None; vars],
        }
    }

    /// Adds one backward pass's gradients of `vars` (a variable it did not reach adds nothing).
    pub fn add(&mut self, grads: &GradStore, vars: &[(String, Var)]) -> Result<()> {
        for (sum, (_, var)) in self.sums.iter_mut().zip(vars) {
            if let Some(g) = grads.get(var.as_tensor()) {
                *sum = Some(match sum.take() {
                    Some(s) => (s + g)?,
                    None => g.clone(),
                });
            }
        }
        Ok(())
    }

    /// The sums in `vars` order, zeros for a variable no pass reached.
    pub fn into_grads(self, vars: &[(String, Var)]) -> Result<Vec<Tensor>> {
        Ok(self
            .sums
            .into_iter()
            .zip(vars)
            .map(|(g, (_, v))| match g {
                Some(g) => Ok(g),
                None => v.as_tensor().zeros_like(),
            })
            .collect::<candle_core::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn accumulated_gradients_are_per_variable_sums_and_zeros_where_unreached() -> Result<()> {
        let dev = Device::Cpu;
        let a = Var::from_vec(vec![1f32, 2.0], 2, &dev)?;
        let b = Var::from_vec(vec![3f32], 1, &dev)?;
        let unused = Var::from_vec(vec![5f32, 6.0, 7.0], 3, &dev)?;
        let vars = vec![
            ("a".to_string(), a.clone()),
            ("b".to_string(), b.clone()),
            ("unused".to_string(), unused),
        ];
        let mut acc = GradAccumulator::new(vars.len());
        // d/da sum(a * a) = 2a; d/db (3b) = 3.
        let first = (a.as_tensor().sqr()?.sum_all()? + (b.as_tensor() * 3.0)?.sum_all()?)?;
        acc.add(&first.backward()?, &vars)?;
        // A second micro-batch reaching only `a`: d/da sum(a) = 1.
        acc.add(&a.as_tensor().sum_all()?.backward()?, &vars)?;
        let grads = acc.into_grads(&vars)?;
        assert_eq!(grads[0].to_vec1::<f32>()?, vec![3.0, 5.0]);
        assert_eq!(grads[1].to_vec1::<f32>()?, vec![3.0]);
        assert_eq!(grads[2].to_vec1::<f32>()?, vec![0.0, 0.0, 0.0]);
        Ok(())
    }
}
