//! Where a phase starts: from scratch (the initial adapter, or a fresh one), or from its newest
//! checkpoint (adapter, optimiser moments, step and counters); and saving the checkpoints that
//! a later run resumes from.

use std::path::{Path, PathBuf};

use candle_core::Var;

use crate::checkpoint::{self, TrainerState};
use crate::data;
use crate::error::{Result, TrainError};
use crate::optim::{AdamW, AdamWParams};
use crate::policy::PolicyModel;
use crate::settings::RunOptions;

use super::schedule::Schedule;
use super::{PhaseReport, PhaseSpec};

/// What a training phase carries from step to step, and what a checkpoint restores.
pub(super) struct TrainingState<A> {
    pub adapter: A,
    /// The adapter's trainable variables, in the optimiser's order.
    pub vars: Vec<(String, Var)>,
    pub optimizer: AdamW,
    /// Completed optimiser steps.
    pub step: u64,
    pub tokens_seen: u64,
    pub last_loss: Option<f64>,
    /// The step of the checkpoint this run resumed from.
    pub resumed_from: Option<u64>,
    pub last_checkpoint: Option<PathBuf>,
}

fn checkpoints_dir(spec: &PhaseSpec) -> PathBuf {
    spec.out_dir.join("checkpoints")
}

fn complete_path(spec: &PhaseSpec) -> PathBuf {
    spec.out_dir.join("complete.json")
}

/// A fresh run must not pick up anything of an older one: removes its checkpoints and
/// `complete.json`.
pub(super) fn clear_previous_run(spec: &PhaseSpec) -> Result<()> {
    for p in [checkpoints_dir(spec), complete_path(spec)] {
        if p.is_dir() {
            std::fs::remove_dir_all(&p).map_err(|e| TrainError::io(&p, e))?;
        } else if p.exists() {
            std::fs::remove_file(&p).map_err(|e| TrainError::io(&p, e))?;
        }
    }
    Ok(())
}

/// The report of the phase if it already finished on the same data and settings.
pub(super) fn finished_report(spec: &PhaseSpec, fingerprint: &str) -> Result<Option<PhaseReport>> {
    if !spec.adapter_out.exists() {
        return Ok(None);
    }
    read_complete(&complete_path(spec), fingerprint)
}

/// The report of a finished phase if `path` exists and was written for `fingerprint`. A phase
/// finished on other data or settings is logged and trained again (`None`).
fn read_complete(path: &Path, fingerprint: &str) -> Result<Option<PhaseReport>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(TrainError::io(path, e)),
    };
    let value: serde_json::Value = serde_json::from_str(&text)?;
    if value.get("fingerprint").and_then(|f| f.as_str()) != Some(fingerprint) {
        tracing::warn!(
            "{}: the phase finished on other data, settings or initial adapter; training it again",
            path.display()
        );
        return Ok(None);
    }
    Ok(Some(serde_json::from_value(value)?))
}

/// `complete.json`: the report plus the fingerprint it was trained for.
pub(super) fn write_complete(
    spec: &PhaseSpec,
    report: &PhaseReport,
    fingerprint: &str,
) -> Result<()> {
    let path = complete_path(spec);
    let mut complete = serde_json::to_value(report)?;
    complete["fingerprint"] = serde_json::Value::String(fingerprint.to_owned());
    std::fs::write(&path, serde_json::to_string_pretty(&complete)?)
        .map_err(|e| TrainError::io(&path, e))
}

/// The state the phase's first step starts from: the newest checkpoint's with `opts.resume`
/// (refused if it was written for another fingerprint), else step 0 with `initial` (the
/// initial adapter) or a fresh adapter seeded from the phase's seed.
pub(super) fn start_or_resume<M: PolicyModel>(
    model: &M,
    spec: &PhaseSpec,
    opts: &RunOptions,
    schedule: &Schedule,
    initial: Option<M::Adapter>,
) -> Result<TrainingState<M::Adapter>> {
    let newest = if opts.resume {
        checkpoint::latest_checkpoint(&checkpoints_dir(spec))?
    } else {
        None
    };
    let optimizer_params = AdamWParams {
        weight_decay: spec.optim.weight_decay,
        ..AdamWParams::default()
    };
    let Some((step, dir)) = newest else {
        let adapter = match initial {
            Some(a) => a,
            None => {
                let seed = data::mix_seed(spec.optim.seed, data::STREAM_INIT, 0);
                model.new_adapter(&spec.agent, seed)?
            }
        };
        let vars = model.trainable_vars(&adapter);
        return Ok(TrainingState {
            optimizer: AdamW::new(vars.clone(), optimizer_params)?,
            adapter,
            vars,
            step: 0,
            tokens_seen: 0,
            last_loss: None,
            resumed_from: None,
            last_checkpoint: None,
        });
    };
    let saved = checkpoint::read_state(&dir)?;
    if saved.fingerprint != schedule.fingerprint {
        return Err(TrainError::Checkpoint {
            path: dir,
            msg:
                "dataset, settings, tokenizer or initial adapter differ from the checkpointed run; \
                  start without --resume"
                    .into(),
        });
    }
    let adapter = model.load_adapter(&dir.join("adapter"), &spec.agent)?;
    let vars = model.trainable_vars(&adapter);
    let mut optimizer = AdamW::new(vars.clone(), optimizer_params)?;
    optimizer.load(&dir.join("optimizer.safetensors"), step)?;
    Ok(TrainingState {
        adapter,
        vars,
        optimizer,
        step,
        tokens_seen: saved.tokens_seen,
        last_loss: saved.last_loss,
        resumed_from: Some(step),
        last_checkpoint: Some(dir),
    })
}

/// Writes a checkpoint of `state` (adapter, optimiser, counters) and returns its directory.
pub(super) fn save_checkpoint<M: PolicyModel>(
    model: &M,
    spec: &PhaseSpec,
    opts: &RunOptions,
    schedule: &Schedule,
    state: &TrainingState<M::Adapter>,
) -> Result<PathBuf> {
    let step = state.step;
    let steps_per_epoch = schedule.steps_per_epoch;
    let trainer_state = TrainerState {
        format: 1,
        agent: spec.agent.clone(),
        phase: spec.phase.name().into(),
        step,
        total_steps: schedule.total_steps,
        steps_per_epoch,
        next_epoch: step / steps_per_epoch.max(1),
        next_batch_in_epoch: step % steps_per_epoch.max(1),
        next_lr: schedule.lr_at(&spec.optim, step),
        seed: spec.optim.seed,
        rng: "stateless: splitmix64(seed, stream, epoch|step*65536+micro)".into(),
        fingerprint: schedule.fingerprint.clone(),
        tokens_seen: state.tokens_seen,
        last_loss: state.last_loss,
    };
    checkpoint::write_checkpoint(&checkpoints_dir(spec), &trainer_state, |tmp| {
        model.save_adapter(&state.adapter, &tmp.join("adapter"), &opts.base_model)?;
        state.optimizer.save(&tmp.join("optimizer.safetensors"))
    })
}
