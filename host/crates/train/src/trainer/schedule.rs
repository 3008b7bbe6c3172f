//! The shape of a phase: which examples train and which evaluate, how many optimiser steps
//! there are, which examples each step takes, its learning rate, when to evaluate and
//! checkpoint, and the fingerprint of everything that decides the result.

use crate::data;
use crate::error::Result;
use crate::fingerprint::sha_hex;
use crate::optim;
use crate::policy::ChatTokenizer;
use crate::settings::OptimSettings;

use super::PhaseSpec;

pub(super) struct Schedule {
    /// Dataset indices of the training and held-out examples.
    pub train_idx: Vec<usize>,
    pub eval_idx: Vec<usize>,
    /// `micro_batch * grad_accum`: examples per optimiser step (the last step of an epoch may
    /// take fewer).
    pub examples_per_step: usize,
    pub steps_per_epoch: u64,
    pub total_steps: u64,
    pub warmup_steps: u64,
    /// sha256 of the dataset, the settings that change the result, the phase, the initial
    /// adapter and the tokenizer: resume refuses a checkpoint or a finished phase without it.
    pub fingerprint: String,
}

impl Schedule {
    pub(super) fn new(
        spec: &PhaseSpec,
        tok: &dyn ChatTokenizer,
        examples: usize,
        dataset_sha: &str,
        init_hash: &str,
    ) -> Result<Self> {
        let optim = &spec.optim;
        let (train_idx, eval_idx) = data::split_indices(examples, optim.eval_ratio, optim.seed);
        let examples_per_step = optim.micro_batch as usize * optim.grad_accum as usize;
        let steps_per_epoch = train_idx.len().div_ceil(examples_per_step) as u64;
        let total_steps = if optim.max_steps > 0 {
            optim.max_steps as u64
        } else {
            optim.epochs as u64 * steps_per_epoch
        };
        let warmup_steps = optim::warmup_steps(total_steps, optim.warmup_ratio);
        // How often to save and evaluate does not change what is trained.
        let result_settings = OptimSettings {
            save_every: 0,
            eval_every: 0,
            ..optim.clone()
        };
        let fingerprint = sha_hex(&[
            dataset_sha,
            &serde_json::to_string(&result_settings)?,
            &serde_json::to_string(&spec.dpo)?,
            spec.phase.name(),
            init_hash,
            &tok.fingerprint(),
        ]);
        Ok(Schedule {
            train_idx,
            eval_idx,
            examples_per_step,
            steps_per_epoch,
            total_steps,
            warmup_steps,
            fingerprint,
        })
    }

    /// Learning rate of the optimiser step that follows `completed_steps`.
    pub(super) fn lr_at(&self, optim: &OptimSettings, completed_steps: u64) -> f64 {
        optim::lr_at(
            optim.schedule,
            optim.lr,
            completed_steps,
            self.total_steps,
            self.warmup_steps,
        )
    }

    /// Fractional epoch after `completed_steps`.
    pub(super) fn epoch(&self, completed_steps: u64) -> f64 {
        completed_steps as f64 / self.steps_per_epoch.max(1) as f64
    }

    /// Evaluate after this step: every `eval_every` steps, else at each epoch's end; and at
    /// the end of the run.
    pub(super) fn eval_due(&self, optim: &OptimSettings, completed_steps: u64) -> bool {
        let every = if optim.eval_every > 0 {
            optim.eval_every as u64
        } else {
            self.steps_per_epoch
        };
        completed_steps.is_multiple_of(every) || completed_steps == self.total_steps
    }

    /// Checkpoint after this step: every `save_every` steps (if set) and at the end.
    pub(super) fn checkpoint_due(&self, optim: &OptimSettings, completed_steps: u64) -> bool {
        (optim.save_every > 0 && completed_steps.is_multiple_of(optim.save_every as u64))
            || completed_steps == self.total_steps
    }
}

/// The examples of each step: epoch `e` visits the training examples in
/// `epoch_permutation(n, seed, e)` order, `examples_per_step` at a time. The permutation of the
/// current epoch is kept between steps.
pub(super) struct EpochOrder {
    epoch: Option<u64>,
    order: Vec<usize>,
}

impl EpochOrder {
    pub(super) fn new() -> Self {
        EpochOrder {
            epoch: None,
            order: Vec::new(),
        }
    }

    /// Dataset indices of the examples of step `step` (0-based).
    pub(super) fn examples(&mut self, schedule: &Schedule, seed: u64, step: u64) -> Vec<usize> {
        let epoch = step / schedule.steps_per_epoch;
        let n_train = schedule.train_idx.len();
        if self.epoch != Some(epoch) {
            let permutation = data::epoch_permutation(n_train, seed, epoch);
            self.order = permutation
                .into_iter()
                .map(|i| schedule.train_idx[i])
                .collect();
            self.epoch = Some(epoch);
        }
        let batch_in_epoch = (step % schedule.steps_per_epoch) as usize;
        let per_step = schedule.examples_per_step;
        let start = batch_in_epoch * per_step;
        self.order[start..(start + per_step).min(n_train)].to_vec()
    }
}
