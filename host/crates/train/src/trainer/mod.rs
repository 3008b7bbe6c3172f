//! The training loop (SFT and DPO share it) and the per-agent schedule.
//!
//! `train_phase` reads top to bottom like nanoGPT's loop; its steps live in submodules:
//! `prepare` (the starting adapter, the data, DPO's reference log-probs), `schedule` (split,
//! step count, each step's examples and learning rate, when to evaluate and checkpoint, the
//! fingerprint), `resume` (start or resume, checkpoints, `complete.json`), `step` (one
//! optimiser step: micro-batches, loss, backward, gradient accumulation, clipping, AdamW),
//! `evaluate` and `finish` (the adapter, the loss plot, the report).
//!
//! Run-directory layout:
//! - input:  `<run>/datasets/<agent>/{sft,dpo}.jsonl` (TRL formats)
//! - work:   `<run>/train/<agent>/<phase>/{metrics.jsonl, loss.svg, complete.json, checkpoints/}`
//! - output: `<run>/adapters/<agent>/<phase>/` (PEFT adapter, written atomically at the end)
//! - cache:  `<run>/datasets/<agent>/dpo.ref-<key>.safetensors` (+ `.json` description)

mod evaluate;
mod finish;
mod prepare;
mod resume;
mod schedule;
mod step;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

pub use crate::fingerprint::adapter_hash;
pub use crate::heldout::{evaluate_dpo, evaluate_sft, DpoEval};
pub use crate::timings::PhaseTimings;

use crate::error::{Result, TrainError};
use crate::metrics::{EvalMetrics, MetricsLog, StepMetrics};
use crate::policy::{ChatTokenizer, PolicyModel};
use crate::settings::{AgentPlan, DpoSettings, OptimSettings, Phase, RunOptions};

use resume::TrainingState;
use schedule::{EpochOrder, Schedule};
pub use step::GradAccumulator;
use step::StepOutcome;

/// Everything one training phase needs.
#[derive(Debug, Clone)]
pub struct PhaseSpec {
    pub agent: String,
    pub phase: Phase,
    pub dataset: PathBuf,
    /// Work directory (metrics, checkpoints).
    pub out_dir: PathBuf,
    /// Final PEFT adapter directory.
    pub adapter_out: PathBuf,
    /// Start from this adapter instead of a fresh one. For DPO it is also the frozen reference
    /// (MALT: the agent's SFT adapter); `None` = fresh adapter, reference = the base model.
    pub init_adapter: Option<PathBuf>,
    pub optim: OptimSettings,
    pub dpo: DpoSettings,
}

impl PhaseSpec {
    /// The standard layout under a run directory.
    pub fn in_run(run_dir: &Path, plan: &AgentPlan, phase: Phase, init: Option<PathBuf>) -> Self {
        PhaseSpec {
            agent: plan.name.clone(),
            phase,
            dataset: dataset_path(run_dir, &plan.name, phase),
            out_dir: malt_layout::RoundLayout::at(run_dir).train_phase(&plan.name, phase.name()),
            adapter_out: adapter_dir(run_dir, &plan.name, phase),
            init_adapter: init,
            optim: match phase {
                Phase::Sft => plan.sft.clone(),
                Phase::Dpo => plan.dpo.clone(),
            },
            dpo: plan.dpo_loss.clone(),
        }
    }
}

pub fn dataset_path(run_dir: &Path, agent: &str, phase: Phase) -> PathBuf {
    malt_layout::RoundLayout::at(run_dir).dataset(agent, phase.name())
}

pub fn adapter_dir(run_dir: &Path, agent: &str, phase: Phase) -> PathBuf {
    malt_layout::RoundLayout::at(run_dir).adapter(agent, phase.name())
}

/// The adapter inference should use for an agent: its last finished phase (dpo, else sft).
pub fn final_adapter_dir(run_dir: &Path, agent: &str) -> Option<PathBuf> {
    [Phase::Dpo, Phase::Sft]
        .into_iter()
        .map(|p| adapter_dir(run_dir, agent, p))
        .find(|d| d.join("adapter_config.json").exists())
}

/// Each agent's final adapter in `run_dir` (see [`final_adapter_dir`]), loaded onto `model`, in
/// the order given; an agent without one is left out (it runs on the base weights).
pub fn load_final_adapters<'a>(
    model: &malt_model::Model,
    run_dir: &Path,
    agents: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<(String, malt_model::LoraAdapter)>> {
    let mut out = Vec::new();
    for agent in agents {
        if let Some(dir) = final_adapter_dir(run_dir, agent) {
            let adapter =
                model
                    .load_adapter(&dir, agent)
                    .map_err(|source| TrainError::Adapter {
                        path: dir.clone(),
                        source: Box::new(source),
                    })?;
            tracing::info!("agent {agent}: trained adapter {}", dir.display());
            out.push((agent.to_owned(), adapter));
        }
    }
    Ok(out)
}

/// Summary of one phase (also written as `complete.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseReport {
    pub agent: String,
    pub phase: Phase,
    pub steps: u64,
    pub total_steps: u64,
    pub last_loss: Option<f64>,
    pub eval: Option<EvalMetrics>,
    pub adapter_dir: PathBuf,
    /// false when `stop_after_steps` stopped the run early (no final adapter written).
    pub completed: bool,
    pub resumed_from: Option<u64>,
    pub train_examples: usize,
    pub eval_examples: usize,
    /// Where this run of the phase spent its time (zero for a phase reused as finished).
    #[serde(default)]
    pub timings: PhaseTimings,
}

/// Trains one phase (SFT or DPO) of one agent. With `opts.resume`, continues from the newest
/// checkpoint in `spec.out_dir` (or returns the stored report if the phase already finished).
///
/// The loop, top to bottom: prepare the data (and DPO's reference log-probs), plan the steps,
/// resume (or start), then per optimiser step: its examples, micro-batch losses and backward
/// passes, accumulated and clipped gradients, the AdamW update, the metrics record, an
/// evaluation and a checkpoint when due; finally the adapter and the report.
pub fn train_phase<M: PolicyModel>(
    model: &M,
    tok: &dyn ChatTokenizer,
    spec: &PhaseSpec,
    opts: &RunOptions,
) -> Result<PhaseReport> {
    let started = Instant::now();
    let mut timings = PhaseTimings::default();
    let optim = &spec.optim;
    optim.validate()?;
    if spec.phase == Phase::Dpo {
        spec.dpo.validate()?;
    }
    if !opts.resume {
        resume::clear_previous_run(spec)?;
    }
    std::fs::create_dir_all(&spec.out_dir).map_err(|e| TrainError::io(&spec.out_dir, e))?;
    let pad_id = tok.eos_id();

    // Prepare: the starting adapter, the data, the schedule.
    let init = prepare::initial_adapter(model, spec)?;
    let (data, dataset_sha) = prepare::load_data(model, tok, spec, &init, &mut timings)?;
    let schedule = Schedule::new(spec, tok, data.len(), &dataset_sha, &init.hash)?;

    // Resume: a finished phase is reused only for the same data and settings (`complete.json`
    // carries the fingerprint, like the checkpoints do).
    if opts.resume {
        if let Some(done) = resume::finished_report(spec, &schedule.fingerprint)? {
            return Ok(done);
        }
    }
    let mut state = resume::start_or_resume(model, spec, opts, &schedule, init.adapter)?;
    let start_step = state.step;
    let mut log = MetricsLog::open(&spec.out_dir.join("metrics.jsonl"), state.resumed_from)?;
    let bar = progress_bar(spec, opts, schedule.total_steps, start_step);
    tracing::info!(
        "training {} {}: {} train / {} eval examples, {} steps ({} per epoch), starting at step {}",
        spec.agent,
        spec.phase.name(),
        schedule.train_idx.len(),
        schedule.eval_idx.len(),
        schedule.total_steps,
        schedule.steps_per_epoch,
        start_step
    );
    timings.setup_s = started.elapsed().as_secs_f64() - timings.reference_s;

    let mut order = EpochOrder::new();
    let mut last_eval = None;
    let mut kept_pages = malt_model::process::ReleaseWhenGrown::default();
    while state.step < schedule.total_steps {
        // Step: micro-batches, loss, backward, accumulated and clipped gradients, AdamW.
        let step_started = Instant::now();
        let examples = order.examples(&schedule, optim.seed, state.step);
        let lr = schedule.lr_at(optim, state.step);
        let outcome = step::optimizer_step(model, spec, &data, &examples, &mut state, lr, pad_id)
            .inspect_err(|_| bar.abandon())?;
        kept_pages.after_unit();
        if state.step == start_step {
            timings.first_step_s = step_started.elapsed().as_secs_f64();
        } else {
            timings.later_steps_s += step_started.elapsed().as_secs_f64();
            timings.later_steps += 1;
        }
        state.step += 1;
        state.tokens_seen += outcome.tokens;
        state.last_loss = Some(outcome.loss);
        let secs = step_started.elapsed().as_secs_f64().max(1e-9);
        log.append(&step_metrics(&schedule, state.step, lr, &outcome, secs))?;
        bar.set_message(format!(
            "loss {:.4} lr {lr:.2e} {:.0} tok/s",
            outcome.loss,
            outcome.tokens as f64 / secs
        ));
        bar.set_position(state.step);

        // Evaluate.
        if schedule.eval_due(optim, state.step) {
            let t = Instant::now();
            let eval = evaluate::evaluate(
                model,
                spec,
                &data,
                &schedule,
                &state.adapter,
                state.step,
                pad_id,
            )?;
            if let Some(e) = eval {
                log.append(&e)?;
                last_eval = Some(e);
            }
            timings.eval_s += t.elapsed().as_secs_f64();
        }
        // Checkpoint.
        if schedule.checkpoint_due(optim, state.step) {
            let t = Instant::now();
            state.last_checkpoint = Some(resume::save_checkpoint(
                model, spec, opts, &schedule, &state,
            )?);
            timings.checkpoint_s += t.elapsed().as_secs_f64();
        }
        if opts.stop_after_steps.is_some_and(|k| state.step >= k)
            && state.step < schedule.total_steps
        {
            bar.abandon();
            return Ok(PhaseReport {
                completed: false,
                timings,
                ..report(spec, &schedule, &state, last_eval)
            });
        }
    }
    bar.finish();

    // Finish: a last evaluation if none ran, the adapter, the loss plot and the report.
    if last_eval.is_none() && !schedule.eval_idx.is_empty() {
        // Resumed at the very end, or total == 0: still report an eval.
        let t = Instant::now();
        last_eval = evaluate::evaluate(
            model,
            spec,
            &data,
            &schedule,
            &state.adapter,
            state.step,
            pad_id,
        )?;
        timings.eval_s += t.elapsed().as_secs_f64();
    }
    let finishing = Instant::now();
    let report = report(spec, &schedule, &state, last_eval);
    finish::finish_phase(
        model,
        spec,
        opts,
        &state.adapter,
        &report,
        &schedule.fingerprint,
    )?;
    timings.finish_s = finishing.elapsed().as_secs_f64();
    timings.total_s = started.elapsed().as_secs_f64();
    malt_model::process::release_freed();
    tracing::info!(
        "trained {} {} ({} steps) in {}",
        spec.agent,
        spec.phase.name(),
        state.step - start_step,
        timings.summary()
    );
    Ok(PhaseReport { timings, ..report })
}

/// The phase's report as of `state` (completed, timings left at zero: `complete.json` stores
/// no timings).
fn report<A>(
    spec: &PhaseSpec,
    schedule: &Schedule,
    state: &TrainingState<A>,
    eval: Option<EvalMetrics>,
) -> PhaseReport {
    PhaseReport {
        agent: spec.agent.clone(),
        phase: spec.phase,
        steps: state.step,
        total_steps: schedule.total_steps,
        last_loss: state.last_loss,
        eval,
        adapter_dir: spec.adapter_out.clone(),
        completed: true,
        resumed_from: state.resumed_from,
        train_examples: schedule.train_idx.len(),
        eval_examples: schedule.eval_idx.len(),
        timings: PhaseTimings::default(),
    }
}

/// The metrics record of the step that brought the phase to `step` completed steps.
fn step_metrics(
    schedule: &Schedule,
    step: u64,
    lr: f64,
    outcome: &StepOutcome,
    secs: f64,
) -> StepMetrics {
    let dpo = &outcome.dpo;
    let pairs = (dpo.pairs > 0).then_some(dpo.pairs as f64);
    StepMetrics {
        kind: "train".into(),
        step,
        epoch: step as f64 / schedule.steps_per_epoch as f64,
        loss: outcome.loss,
        lr,
        grad_norm: outcome.grad_norm,
        tokens: outcome.tokens,
        tokens_per_s: outcome.tokens as f64 / secs,
        reward_margin: pairs.map(|p| (dpo.chosen_sum - dpo.rejected_sum) / p),
        accuracy: pairs.map(|p| dpo.correct as f64 / p),
        chosen_reward: pairs.map(|p| dpo.chosen_sum / p),
        rejected_reward: pairs.map(|p| dpo.rejected_sum / p),
    }
}

fn progress_bar(
    spec: &PhaseSpec,
    opts: &RunOptions,
    total_steps: u64,
    position: u64,
) -> indicatif::ProgressBar {
    let bar = if opts.progress {
        let b = indicatif::ProgressBar::new(total_steps);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}",
        ) {
            b.set_style(style.progress_chars("=> "));
        }
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_prefix(format!("{} {}", spec.agent, spec.phase.name()));
    bar.set_position(position);
    bar
}

/// Runs one agent's schedule (`sft`, `dpo` or `sft-then-dpo`) on `<run>/datasets/<agent>/`.
/// DPO after SFT starts from, and uses as its frozen reference, the SFT adapter (MALT).
/// Stops after a phase that did not complete (`stop_after_steps`).
pub fn train_agent<M: PolicyModel>(
    model: &M,
    tok: &dyn ChatTokenizer,
    run_dir: &Path,
    plan: &AgentPlan,
    opts: &RunOptions,
) -> Result<Vec<PhaseReport>> {
    let mut out = vec![];
    let mut init: Option<PathBuf> = None;
    for &phase in plan.method.phases() {
        let spec = PhaseSpec::in_run(run_dir, plan, phase, init.clone());
        let rep = train_phase(model, tok, &spec, opts)?;
        let done = rep.completed;
        init = Some(rep.adapter_dir.clone());
        out.push(rep);
        if !done {
            break;
        }
    }
    Ok(out)
}

/// Runs every agent's schedule in order (or only `only_agent`).
pub fn run_schedule<M: PolicyModel>(
    model: &M,
    tok: &dyn ChatTokenizer,
    run_dir: &Path,
    plans: &[AgentPlan],
    only_agent: Option<&str>,
    opts: &RunOptions,
) -> Result<Vec<PhaseReport>> {
    if let Some(a) = only_agent {
        if !plans.iter().any(|p| p.name == a) {
            return Err(TrainError::Settings(format!(
                "unknown agent `{a}` (known: {})",
                plans
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    let mut out = vec![];
    for plan in plans
        .iter()
        .filter(|p| only_agent.is_none_or(|a| a == p.name))
    {
        let reps = train_agent(model, tok, run_dir, plan, opts)?;
        let stop = reps.iter().any(|r| !r.completed);
        out.extend(reps);
        if stop {
            break;
        }
    }
    Ok(out)
}
