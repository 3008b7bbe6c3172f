//! The training stage: each agent's schedule (`sft`, `dpo`, `sft-then-dpo`) on the round's
//! datasets, one PEFT adapter per agent and phase, each from the base model.

use std::path::PathBuf;

use malt_layout::RoundLayout;
use serde::Serialize;

use super::{adapters_hash, datasets_hash};
use super::{Env, Stage};
use crate::session::{ModelIdentity, Session};
use crate::train::AgentTraining;

pub struct Train;

#[derive(Debug, Clone, Serialize)]
pub struct Inputs {
    /// The credit stage's SFT and DPO sets.
    pub datasets: String,
    /// Each agent's `[train]` settings, in chain order.
    #[serde(rename = "config train of the agents")]
    pub agents: Vec<AgentTraining>,
    pub model: ModelIdentity,
    /// Seeds initialisation, shuffling, the eval split and dropout.
    #[serde(rename = "run seed")]
    pub seed: u64,
}

impl Stage for Train {
    const NAME: &'static str = "train";
    const VERSION: u32 = 1;
    type Inputs = Inputs;

    fn inputs(s: &mut Session, round: &RoundLayout) -> anyhow::Result<Inputs> {
        Ok(Inputs {
            datasets: datasets_hash(round)?,
            agents: AgentTraining::of(&s.config),
            model: s.model()?,
            seed: s.config.run.seed,
        })
    }

    fn outputs(round: &RoundLayout) -> anyhow::Result<String> {
        adapters_hash(round)
    }

    /// Checkpoints and adapters of other data or settings (or of unknown origin: a
    /// standalone `malt train --agent`) must not be resumed or evaluated.
    fn stale(round: &RoundLayout, _: &super::record::Decision) -> Vec<PathBuf> {
        vec![round.train(), round.adapters()]
    }

    fn run(inputs: &Inputs, env: &mut Env<'_>, round: &RoundLayout) -> anyhow::Result<()> {
        let model = env.models.get(&inputs.model)?;
        crate::train::train_agents(
            &inputs.agents,
            inputs.seed,
            round.dir(),
            model,
            &inputs.model.source,
            None,
            true,
            &env.tools.provenance,
        )?;
        Ok(())
    }
}
