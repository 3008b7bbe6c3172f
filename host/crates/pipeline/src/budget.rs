//! Each evaluated system's training budget (see [`malt_eval::budget`]), measured from the round's
//! files: the token ids the trees (or STaR's own samples) store, and the trainer's metrics and
//! `complete.json` of every phase the system's adapters went through.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use malt_config::{EvalSystem, StarData, SystemKind};
use malt_eval::SystemBudget;
use malt_layout::RoundLayout;

/// What one trained phase cost.
#[derive(Debug, Clone, Copy, Default)]
struct PhaseCost {
    tokens: u64,
    steps: u64,
    examples: u64,
}

/// The cost of the phase whose work directory is `dir` (`None`: it never finished).
fn phase_cost(dir: &Path) -> anyhow::Result<Option<PhaseCost>> {
    let complete = dir.join("complete.json");
    let text = match std::fs::read_to_string(&complete) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", complete.display())),
    };
    let report: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", complete.display()))?;
    let metrics = dir.join("metrics.jsonl");
    let (steps, _) = malt_train::metrics::read_metrics(&metrics)
        .with_context(|| format!("reading {}", metrics.display()))?;
    // A resumed phase may have logged a step twice (before and after the kill): count each
    // step once, as it was last run.
    let per_step: BTreeMap<u64, u64> = steps.iter().map(|s| (s.step, s.tokens)).collect();
    Ok(Some(PhaseCost {
        tokens: per_step.values().sum(),
        steps: report["steps"].as_u64().unwrap_or(0),
        examples: report["train_examples"].as_u64().unwrap_or(0),
    }))
}

/// Tokens the trees of `file` sampled, from the ids each node stores (trees sampled before malt
/// stored ids count 0 rather than a guess from their text).
fn sampled_tokens(file: &Path) -> anyhow::Result<u64> {
    if !file.exists() {
        return Ok(0);
    }
    let trees = malt_tree::read_trees(file)?.trees;
    Ok(trees
        .iter()
        .flat_map(|t| &t.nodes)
        .map(|n| n.token_ids.as_ref().map_or(0, |ids| ids.len() as u64))
        .sum())
}

/// What `malt online` spent, from its metrics (each step counted once).
#[derive(Debug, Default)]
struct OnlineCost {
    sampled: u64,
    trained: u64,
    /// Optimiser steps over every trained agent.
    steps: u64,
    /// Nodes trained on.
    examples: u64,
    updates: u64,
}

fn online_cost(metrics: &Path) -> anyhow::Result<OnlineCost> {
    let steps = crate::online::read_metrics(metrics)?;
    let mut c = OnlineCost {
        updates: steps.len() as u64,
        ..Default::default()
    };
    for m in &steps {
        for a in &m.agents {
            c.sampled += a.tokens_sampled;
            c.trained += a.tokens_trained;
            c.steps += a.optimizer_steps;
            c.examples += a.trained_completions as u64;
        }
    }
    Ok(c)
}

/// The budget of every system of `systems` in `round`; `agents` the chain's agent names in
/// order, `star` the `[star] data` setting.
pub fn budgets(
    systems: &[EvalSystem],
    agents: &[String],
    round: &RoundLayout,
    star: StarData,
) -> anyhow::Result<Vec<SystemBudget>> {
    let trees = sampled_tokens(&round.trees())?;
    let mut phases: BTreeMap<(String, &str), Option<PhaseCost>> = BTreeMap::new();
    for a in agents {
        for p in ["sft", "dpo"] {
            phases.insert((a.clone(), p), phase_cost(&round.train_phase(a, p))?);
        }
    }
    let malt_phases = |names: &[String], only_sft: bool| -> Vec<(String, &'static str)> {
        names
            .iter()
            .flat_map(|a| {
                ["sft", "dpo"]
                    .into_iter()
                    .filter(move |p| !(only_sft && *p == "dpo"))
                    .map(move |p| (a.clone(), p))
            })
            .collect()
    };
    let mut out = Vec::new();
    for s in systems {
        let mut b = SystemBudget {
            system: s.id.clone(),
            ..Default::default()
        };
        let mut add = |name: String, cost: Option<PhaseCost>| {
            if let Some(c) = cost {
                b.trained_tokens += c.tokens;
                b.optimizer_steps += c.steps;
                b.train_examples += c.examples;
                b.phases.push(name);
            }
        };
        let used: Vec<(String, &str)> = match &s.kind {
            SystemKind::Single | SystemKind::Untrained => Vec::new(),
            SystemKind::Star => {
                let first = agents.first().cloned().unwrap_or_default();
                let star_dir = round.star();
                add(
                    format!("STaR {first}/sft"),
                    phase_cost(&star_dir.train_phase(&first, "sft"))?,
                );
                b.sampled_tokens = match star {
                    StarData::Trees => trees,
                    StarData::Sample => sampled_tokens(&star_dir.trees())?,
                };
                Vec::new()
            }
            SystemKind::StarChain => malt_phases(agents, true),
            SystemKind::Malt => malt_phases(agents, false),
            SystemKind::Online => {
                let c = online_cost(&round.online().join("metrics.jsonl"))?;
                let cost = PhaseCost {
                    tokens: c.trained,
                    steps: c.steps,
                    examples: c.examples,
                };
                add(format!("online ({} steps)", c.updates), Some(cost));
                // Online training samples its own trees, at every step.
                b.sampled_tokens = c.sampled;
                Vec::new()
            }
            SystemKind::Trained { trained, .. } => malt_phases(trained, false),
        };
        if !used.is_empty() {
            b.sampled_tokens = trees;
        }
        for (a, p) in used {
            let cost = phases.get(&(a.clone(), p)).copied().flatten();
            add(format!("{a}/{p}"), cost);
        }
        out.push(b);
    }
    Ok(out)
}
