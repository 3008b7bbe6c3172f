//! The training stage: each agent's schedule from the config (`sft`, `dpo`, `sft-then-dpo`)
//! run on the datasets of the run directory, one PEFT adapter per agent and phase.

use std::path::Path;

use malt_config::{Config, TrainPlan};
use malt_model::Model;
use malt_train::{
    AgentPlan, DpoLossKind, DpoSettings, MaltPolicy, MaltTokenizer, Method, OptimSettings,
    PhaseReport, RunOptions, ScheduleKind,
};

fn optim(o: &malt_config::Optim, seed: u64) -> OptimSettings {
    OptimSettings {
        lr: o.lr,
        epochs: o.epochs,
        max_steps: o.max_steps,
        micro_batch: o.micro_batch,
        grad_accum: o.grad_accum,
        max_seq_len: o.max_seq_len,
        warmup_ratio: o.warmup_ratio,
        schedule: match o.schedule {
            malt_config::Schedule::Cosine => ScheduleKind::Cosine,
            malt_config::Schedule::Linear => ScheduleKind::Linear,
        },
        weight_decay: o.weight_decay,
        max_grad_norm: o.max_grad_norm,
        save_every: o.save_every,
        seed,
        ..OptimSettings::default()
    }
}

/// The trainer's plan for agent `name` with `[train]` settings `t`.
pub fn agent_plan(name: &str, t: &TrainPlan, seed: u64) -> AgentPlan {
    AgentPlan {
        name: name.to_owned(),
        method: match t.method {
            malt_config::Method::Sft => Method::Sft,
            malt_config::Method::Dpo => Method::Dpo,
            malt_config::Method::SftThenDpo => Method::SftThenDpo,
            malt_config::Method::None => Method::None,
        },
        sft: optim(&t.sft.optim, seed),
        dpo: optim(&t.dpo.optim, seed),
        dpo_loss: DpoSettings {
            beta: t.dpo.beta,
            label_smoothing: t.dpo.label_smoothing,
            loss: match t.dpo.loss {
                malt_config::DpoLoss::Sigmoid => DpoLossKind::Sigmoid,
                malt_config::DpoLoss::Ipo => DpoLossKind::Ipo,
            },
            lora_dropout: t.dpo.lora_dropout,
        },
    }
}

/// One agent's training settings, as the training stage's inputs hold them.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AgentTraining {
    pub name: String,
    pub plan: TrainPlan,
}

impl AgentTraining {
    /// Every agent of `config`, in chain order.
    pub fn of(config: &Config) -> Vec<AgentTraining> {
        config
            .agents
            .iter()
            .map(|a| AgentTraining {
                name: a.name.clone(),
                plan: a.train.clone(),
            })
            .collect()
    }
}

/// Number of records in a dataset file (0 when it does not exist).
fn records(path: &Path) -> anyhow::Result<usize> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.lines().filter(|l| !l.trim().is_empty()).count()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(anyhow::Error::new(e).context(format!("cannot read {}", path.display()))),
    }
}

/// The agent's method restricted to the phases that have data. With few questions or a hard
/// benchmark an agent may have no positives (no SFT set) or no mixed siblings (no DPO pairs):
/// that phase is skipped with a warning instead of failing the whole run, and an agent left
/// with nothing keeps the base model in the trained chain.
fn method_with_data(run_dir: &Path, agent: &str, method: Method) -> anyhow::Result<Method> {
    let layout = malt_layout::RoundLayout::at(run_dir);
    let sft = records(&layout.dataset(agent, "sft"))?;
    let dpo = records(&layout.dataset(agent, "dpo"))?;
    let wants_sft = matches!(method, Method::Sft | Method::SftThenDpo);
    let wants_dpo = matches!(method, Method::Dpo | Method::SftThenDpo);
    if wants_sft && sft == 0 {
        tracing::warn!(
            "agent {agent}: no positive examples in {}: SFT skipped",
            layout.dataset(agent, "sft").display()
        );
    }
    if wants_dpo && dpo == 0 {
        tracing::warn!(
            "agent {agent}: no preference pairs in {}: DPO skipped",
            layout.dataset(agent, "dpo").display()
        );
    }
    let (sft, dpo) = (wants_sft && sft > 0, wants_dpo && dpo > 0);
    let m = match (sft, dpo) {
        (true, true) => Method::SftThenDpo,
        (true, false) => Method::Sft,
        (false, true) => Method::Dpo,
        (false, false) => Method::None,
    };
    if m == Method::None {
        tracing::info!("agent {agent}: not trained (method {method:?}, nothing to train on)");
    }
    Ok(m)
}

/// Trains every agent of `agents` (or only `only_agent`) on the datasets of `run_dir` (the run
/// directory, or one round's). Each agent gets its own LoRA settings, so each runs with its own
/// policy. `provenance` puts the config text beside the phases' TensorBoard event files.
#[allow(clippy::too_many_arguments)]
pub fn train_agents(
    agents: &[AgentTraining],
    seed: u64,
    run_dir: &Path,
    model: &Model,
    model_id: &str,
    only_agent: Option<&str>,
    resume: bool,
    provenance: &crate::stage::Provenance,
) -> anyhow::Result<Vec<PhaseReport>> {
    if let Some(name) = only_agent {
        if !agents.iter().any(|a| a.name == name) {
            let known: Vec<&str> = agents.iter().map(|a| a.name.as_str()).collect();
            anyhow::bail!(
                "{}: no agent named `{name}` (agents: {})",
                provenance.config_path.display(),
                known.join(", ")
            );
        }
    }
    // The config beside the phases' TensorBoard event files (run "." of `<run>`).
    let tracked = std::fs::create_dir_all(&provenance.run_dir)
        .and_then(|()| crate::tracking::write_config(&provenance.run_dir, &provenance.config_text));
    if let Err(e) = tracked {
        tracing::warn!(
            "{}: no TensorBoard config text: {e}",
            provenance.run_dir.display()
        );
    }
    let tok = MaltTokenizer::new(model)?;
    let opts = RunOptions {
        resume,
        progress: true,
        stop_after_steps: None,
        base_model: model_id.to_owned(),
    };
    let mut reports = Vec::new();
    for agent in agents {
        if only_agent.is_some_and(|n| n != agent.name) {
            continue;
        }
        let mut plan = agent_plan(&agent.name, &agent.plan, seed);
        plan.method = method_with_data(run_dir, &agent.name, plan.method)?;
        if plan.method == Method::None {
            continue;
        }
        let l = &agent.plan.lora;
        let lora = malt_train::lora_config(l.rank, l.alpha, l.dropout, &l.targets)?;
        let policy = MaltPolicy::new(model, lora)
            .with_gradient_checkpointing(agent.plan.gradient_checkpointing);
        reports.extend(malt_train::run_schedule(
            &policy,
            &tok,
            run_dir,
            &[plan],
            None,
            &opts,
        )?);
    }
    Ok(reports)
}
