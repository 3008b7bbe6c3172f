//! The single-agent STaR baseline: SFT of the chain's first agent on its positive outputs, for
//! as many optimiser steps as the MALT generator's SFT (`[star] steps`).
//!
//! STaR is a one-agent run of its own in `<round>/star/`, laid out like a round, whose SFT set
//! comes from one of two places:
//!
//! - `[star] data = "trees"` (the default; the paper's single-agent STaR, docs/paper.md): the
//!   first agent's outputs of the round's MALT trees whose propagated value exceeds theta,
//!   i.e. the MALT generator's own SFT set, trained for the generator's SFT steps. Its row then
//!   equals Table 5's "G only" (the MALT generator alone), as it does in the paper.
//! - `data = "sample"`: rejection sampling as Zelikman et al. ran it: its own samples from the
//!   single model (round k: round k-1's STaR model), at the first agent's temperature, as many
//!   per question as one MALT tree holds; a question's samples are one tree of a one-agent
//!   chain, so the tree store makes them durable and resumable, and credit with theta 0.5
//!   keeps the correct ones (reward > 0.5).
//!
//! The paper's multi-agent STaR (every agent SFT on its positives, no DPO) trains nothing
//! here: it is the MALT agents' SFT adapters (`SystemKind::StarChain`).

use std::path::Path;

use anyhow::Context;
use malt_config::{Config, StarData, StarSteps};
use malt_eval::StarSummary;
use malt_layout::{RoundLayout, RunLayout};
use malt_train::{MaltPolicy, MaltTokenizer, Method, RunOptions};
use malt_tree::{AgentSpec, ChainSpec, CreditSettings, PairMode, Pooling, TruncatedPolicy};

/// Samples one MALT tree holds: the sum of its level sizes.
pub fn tree_samples(chain: &ChainSpec) -> u64 {
    chain.level_sizes().iter().map(|&n| n as u64).sum()
}

/// Samples per question STaR draws.
pub fn samples_per_question(cfg: &Config, chain: &ChainSpec) -> u32 {
    match cfg.star.data {
        StarData::Trees => chain.agents.first().map_or(1, |a| a.branches),
        StarData::Sample if cfg.star.samples > 0 => cfg.star.samples,
        StarData::Sample => tree_samples(chain).min(u32::MAX as u64) as u32,
    }
}

/// The one-agent chain STaR samples and credits with: the first agent, its branching factor
/// the samples per question, theta 0.5 (a sample is kept when its reward exceeds 0.5: when it
/// is correct, for a binary grader).
pub fn star_chain(cfg: &Config, chain: &ChainSpec) -> anyhow::Result<ChainSpec> {
    let first = chain
        .agents
        .first()
        .ok_or_else(|| anyhow::anyhow!("the chain has no agent"))?;
    let agent = AgentSpec {
        branches: samples_per_question(cfg, chain),
        theta: Some(0.5),
        ..first.clone()
    };
    ChainSpec::new(vec![agent]).context("the STaR chain")
}

const STAR_CREDIT: CreditSettings = CreditSettings {
    theta: 0.5,
    pooling: Pooling::Global,
    pairs: PairMode::All,
    truncated: TruncatedPolicy::Exclude,
};

/// Seed of round `round`'s STaR samples: apart from the MALT trees' seeds.
pub fn star_seed(round_seed: u64) -> u64 {
    malt_tree::node_seed(round_seed, "malt/star", &[])
}

/// The optimiser steps STaR trains for in `round` (`None`: the first agent's own schedule).
pub fn star_steps(cfg: &Config, round: &RoundLayout) -> anyhow::Result<Option<u64>> {
    let steps_of = |path: &Path| -> anyhow::Result<Option<u64>> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let v: serde_json::Value = serde_json::from_str(&text)
                    .with_context(|| format!("parsing {}", path.display()))?;
                Ok(v.get("total_steps").and_then(|s| s.as_u64()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    };
    let first = cfg
        .agents
        .first()
        .ok_or_else(|| anyhow::anyhow!("the chain has no agent"))?;
    Ok(match cfg.star.steps {
        StarSteps::Fixed(n) => Some(n as u64),
        StarSteps::Generator => {
            steps_of(&round.train_phase(&first.name, "sft").join("complete.json"))?
        }
        StarSteps::Malt => {
            let mut total = 0;
            let mut any = false;
            for a in &cfg.agents {
                for phase in ["sft", "dpo"] {
                    if let Some(n) =
                        steps_of(&round.train_phase(&a.name, phase).join("complete.json"))?
                    {
                        total += n;
                        any = true;
                    }
                }
            }
            any.then_some(total)
        }
    })
}

/// The paper's STaR data: the first agent's SFT set of the round (its tree outputs whose
/// propagated value exceeds theta, as credit wrote them), copied as STaR's own.
fn copy_tree_positives(round: &RoundLayout, star: &RoundLayout, agent: &str) -> anyhow::Result<()> {
    let from = round.dataset(agent, "sft");
    let bytes = match std::fs::read(&from) {
        Ok(b) => b,
        // No positive at all: credit wrote no file; STaR then has nothing to train on.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", from.display())),
    };
    let to = star.dataset(agent, "sft");
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    malt_base::atomic::write_atomic(&to, &bytes)
        .with_context(|| format!("cannot write {}", to.display()))
}

/// What STaR computes from, as the STaR stage's inputs hold it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StarInputs {
    #[serde(rename = "config [star]")]
    pub star: malt_config::Star,
    /// The one-agent chain STaR samples and credits with ([`star_chain`]).
    #[serde(rename = "STaR chain and sampling")]
    pub chain: ChainSpec,
    /// The first agent's `[train]` settings (STaR trains it by SFT only).
    #[serde(rename = "config train of the first agent")]
    pub first: crate::train::AgentTraining,
    pub model: crate::session::ModelIdentity,
    /// Its samples' seeds derive from it ([`star_seed`]).
    #[serde(rename = "round seed")]
    pub round_seed: u64,
    /// Seeds its training.
    #[serde(rename = "run seed")]
    pub run_seed: u64,
    #[serde(rename = "optimiser steps")]
    pub steps: Option<u64>,
    /// `data = "trees"`: the first agent's SFT set of the round (its tree positives).
    #[serde(
        rename = "first agent's sft.jsonl",
        skip_serializing_if = "Option::is_none"
    )]
    pub trees: Option<String>,
    /// Round k >= 2 of `data = "sample"`: round k-1's STaR adapter, which samples.
    #[serde(
        rename = "previous round's STaR adapter",
        skip_serializing_if = "Option::is_none"
    )]
    pub previous: Option<String>,
    /// The training questions it samples (`data = "sample"`; none with `trees`).
    pub questions: Vec<malt_tree::Example>,
    /// The first agent's plugin, which renders, extracts and grades its samples (`data =
    /// "sample"`; none with `trees`): name -> hash.
    pub plugins: std::collections::BTreeMap<String, String>,
    #[serde(rename = "config [plugins] options")]
    pub plugin_options:
        std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
}

/// Everything STaR needs in `round`: its samples (drawn or taken from the trees), its SFT set
/// and its adapter. Resumable: finished questions, the SFT set and finished training phases
/// are kept.
pub fn run_star(
    inputs: &StarInputs,
    env: &mut crate::stage::Env<'_>,
    round: &RoundLayout,
) -> anyhow::Result<()> {
    let star = round.star();
    let chain = &inputs.chain;
    let first = chain.agents[0].name.clone();
    let model = env.models.get(&inputs.model)?;
    match inputs.star.data {
        StarData::Trees => copy_tree_positives(round, &star, &first)?,
        StarData::Sample => {
            let mut adapters = Vec::new();
            let mut model_id = inputs.model.source.clone();
            if let Some(hash) = &inputs.previous {
                let prev = RunLayout::new(&env.tools.provenance.run_dir)
                    .round(round.round() - 1)
                    .star();
                adapters = malt_train::load_final_adapters(model, prev.dir(), [first.as_str()])?;
                if !adapters.is_empty() {
                    model_id = format!(
                        "{model_id} + STaR adapter of round {} sha256:{hash}",
                        round.round() - 1,
                    );
                }
            }
            tracing::info!(
                "STaR: {} samples per training question into {}",
                chain.agents[0].branches,
                star.dir().display()
            );
            let target = crate::generate::TreeTarget {
                dir: star.dir(),
                chain,
                credit: STAR_CREDIT,
                seed: star_seed(inputs.round_seed),
                model_id,
                tokenizer: inputs.model.tokenizer.clone(),
            };
            crate::generate::generate_embedded(
                &mut env.tools,
                &inputs.questions,
                model,
                adapters,
                &target,
            )?;
        }
    }
    let kept = match inputs.star.data {
        StarData::Trees => lines(&star.dataset(&first, "sft"))? as u64,
        StarData::Sample => {
            let report = malt_tree::recredit(
                star.dir(),
                chain,
                &STAR_CREDIT,
                Some(&mut *env.tools.scorer as &mut dyn malt_tree::Scorer),
            )?;
            report.stats.agents.first().map_or(0, |a| a.sft)
        }
    };
    tracing::info!("STaR: {kept} positives to train on");

    let mut plan =
        crate::train::agent_plan(&inputs.first.name, &inputs.first.plan, inputs.run_seed);
    plan.method = Method::Sft;
    if let Some(steps) = inputs.steps {
        plan.sft.max_steps = steps.min(u32::MAX as u64) as u32;
    }
    if kept == 0 {
        tracing::warn!(
            "STaR: no correct sample in {}: not trained (the STaR row is left out)",
            star.dataset(&first, "sft").display()
        );
        return Ok(());
    }
    let l = &inputs.first.plan.lora;
    let lora = malt_train::lora_config(l.rank, l.alpha, l.dropout, &l.targets)?;
    let policy = MaltPolicy::new(model, lora)
        .with_gradient_checkpointing(inputs.first.plan.gradient_checkpointing);
    let tok = MaltTokenizer::new(model)?;
    let opts = RunOptions {
        resume: true,
        progress: true,
        stop_after_steps: None,
        base_model: inputs.model.source.clone(),
    };
    malt_train::train_agent(&policy, &tok, star.dir(), &plan, &opts)?;
    Ok(())
}

fn lines(path: &Path) -> anyhow::Result<usize> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(t.lines().filter(|l| !l.trim().is_empty()).count()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// What STaR was trained on in `round`, for the report: read back from its files.
pub fn summary(
    setup: &malt_config::Star,
    chain: &ChainSpec,
    tree_samples: u64,
    round: &RoundLayout,
) -> anyhow::Result<StarSummary> {
    let star = round.star();
    let agent = &chain.agents[0];
    // The first agent's outputs it chose from: its own samples, or the round's tree level 0.
    let trees = match setup.data {
        StarData::Sample => malt_tree::read_trees(&star.trees())?.trees,
        StarData::Trees => malt_tree::read_trees(&round.trees())?.trees,
    };
    let samples = trees
        .iter()
        .map(|t| {
            t.nodes
                .iter()
                .filter(|n| n.level == 0 && !n.is_errored())
                .count()
        })
        .sum();
    let kept = lines(&star.dataset(&agent.name, "sft"))?;
    let complete = star.train_phase(&agent.name, "sft").join("complete.json");
    let steps = std::fs::read_to_string(&complete)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("steps").and_then(|s| s.as_u64()))
        .unwrap_or(0);
    let model = if round.round() == 1 {
        "the base model".to_owned()
    } else {
        format!("round {}'s STaR model", round.round() - 1)
    };
    let (data, source) = match setup.data {
        StarData::Sample => (
            "sampled",
            format!(
                "{} samples per question from {model} at temperature {}, as many as one MALT \
                 tree holds ({})",
                agent.branches, agent.sampling.temperature, tree_samples
            ),
        ),
        StarData::Trees => (
            "trees",
            format!(
                "the {} outputs of the round's MALT trees whose propagated value exceeds theta \
                 (the MALT {}'s own SFT set)",
                agent.name, agent.name
            ),
        ),
    };
    Ok(StarSummary {
        data: data.to_owned(),
        source,
        questions: trees.len(),
        samples,
        kept,
        steps,
    })
}
