//! The evaluation stage: every system of `[eval] systems` (single agent, untrained chain, STaR,
//! MALT, ablations; each also with majority voting over k attempts) on seeded subsets of the
//! held-out questions, with the same prompts and sampling seeds for every system. Writes
//! `<round>/eval/{results.jsonl, report.md, report.json, *.svg}`; resumable through
//! `results.jsonl`.

use std::path::Path;

use anyhow::Context;
use malt_config::{Config, EvalSystem, SystemKind};
use malt_eval::{EvalPlan, Report, ReportContext, RoundContext, RoundSummary, System, Table};
use malt_layout::{RoundLayout, RunLayout};
use malt_tree::ChainSpec;

use crate::session::ModelIdentity;
use crate::stage::Provenance;
use malt_engine::chain_runner::{Adapters, SystemSetup, TurnPlan, Weights};
use malt_engine::ModelChainRunner;

/// What system `s` runs, by position in the chain of `agents` (names, in order). `sft_apart`
/// lists the agents whose SFT adapter is not their final one (a DPO phase followed it): the
/// multi-agent STaR runs those on their SFT adapter and the others on their only adapter,
/// which is then the same turn as MALT's. `online` lists the agents with an online adapter.
pub fn system_setup(
    agents: &[String],
    s: &EvalSystem,
    sft_apart: &[String],
    online: &[String],
) -> SystemSetup {
    let n = agents.len();
    let turns = match &s.kind {
        SystemKind::Single => vec![TurnPlan::Run(Weights::Base)],
        SystemKind::Star => vec![TurnPlan::Run(Weights::Star)],
        SystemKind::Untrained => vec![TurnPlan::Run(Weights::Base); n],
        SystemKind::Malt => vec![TurnPlan::Run(Weights::Malt); n],
        SystemKind::Online => agents
            .iter()
            .map(|a| match online.contains(a) {
                true => TurnPlan::Run(Weights::Online),
                false => TurnPlan::Run(Weights::Base),
            })
            .collect(),
        SystemKind::StarChain => agents
            .iter()
            .map(|a| match sft_apart.contains(a) {
                true => TurnPlan::Run(Weights::Sft),
                false => TurnPlan::Run(Weights::Malt),
            })
            .collect(),
        SystemKind::Trained { trained, skip } => agents
            .iter()
            .map(|a| {
                if skip.contains(a) {
                    TurnPlan::Skip
                } else if trained.contains(a) {
                    TurnPlan::Run(Weights::Malt)
                } else {
                    TurnPlan::Run(Weights::Base)
                }
            })
            .collect(),
    };
    SystemSetup {
        id: s.id.clone(),
        turns,
    }
}

/// The report row of a configured system.
fn plan_system(s: &EvalSystem) -> System {
    let table = match s.kind {
        SystemKind::Trained { .. } => Table::Ablation,
        _ => Table::Main,
    };
    let system = System::new(&s.id, &s.label, table);
    if s.kind == SystemKind::Malt {
        system.reference()
    } else {
        system
    }
}

/// Which trained adapters a round has.
struct Available {
    /// Agents with a final adapter (DPO's, else SFT's).
    malt: Vec<String>,
    /// Agents with an SFT adapter.
    sft: Vec<String>,
    /// Agents whose SFT adapter is not their final one.
    sft_apart: Vec<String>,
    star: bool,
    /// Agents with an adapter from `malt online`.
    online: Vec<String>,
}

fn available(agents: &[String], round: &RoundLayout) -> Available {
    let has = |phase: malt_train::Phase| -> Vec<String> {
        agents
            .iter()
            .filter(|a| {
                malt_train::trainer::adapter_dir(round.dir(), a, phase)
                    .join("adapter_config.json")
                    .exists()
            })
            .cloned()
            .collect()
    };
    let malt = agents
        .iter()
        .filter(|a| malt_train::final_adapter_dir(round.dir(), a).is_some())
        .cloned()
        .collect();
    let sft = has(malt_train::Phase::Sft);
    let dpo = has(malt_train::Phase::Dpo);
    let sft_apart = sft.iter().filter(|a| dpo.contains(a)).cloned().collect();
    let star = agents
        .first()
        .is_some_and(|a| malt_train::final_adapter_dir(round.star().dir(), a).is_some());
    let online = agents
        .iter()
        .filter(|a| round.online_adapter(a).join("adapter_config.json").exists())
        .cloned()
        .collect();
    Available {
        malt,
        sft,
        sft_apart,
        star,
        online,
    }
}

/// Why system `s` cannot run on this round's adapters: the agents it runs trained that have no
/// adapter. A system never runs an untrained agent under a trained label; its row says why it
/// is missing instead.
fn missing(
    s: &EvalSystem,
    agents: &[String],
    round: &RoundLayout,
    have: &Available,
) -> Option<String> {
    let lacking = |need: &[String], have: &[String]| -> Vec<String> {
        need.iter().filter(|a| !have.contains(a)).cloned().collect()
    };
    let (lack, what) = match &s.kind {
        SystemKind::Single | SystemKind::Untrained => return None,
        SystemKind::Star => {
            return (!have.star).then(|| {
                format!(
                    "no STaR adapter in {} (the STaR stage trained none: see its log)",
                    round.star().adapters().display()
                )
            })
        }
        SystemKind::Malt => (lacking(agents, &have.malt), "trained adapter"),
        SystemKind::Online => {
            return have.online.is_empty().then(|| {
                format!(
                    "no online adapter in {} (run `malt online CONFIG` first)",
                    round.online().join(malt_layout::ADAPTERS).display()
                )
            })
        }
        SystemKind::StarChain => (lacking(agents, &have.sft), "SFT adapter"),
        SystemKind::Trained { trained, .. } => (lacking(trained, &have.malt), "trained adapter"),
    };
    (!lack.is_empty()).then(|| {
        format!(
            "no {what} for {} in {} (an agent with no positive example, or no pair, is not \
             trained: see stats.json and the training log)",
            lack.join(", "),
            round.adapters().display()
        )
    })
}

/// The systems of the config that this round can run, and those it cannot with why.
fn runnable(
    eval: &malt_config::Eval,
    agents: &[String],
    round: &RoundLayout,
    have: &Available,
) -> (Vec<EvalSystem>, Vec<malt_eval::NotRun>) {
    let (mut run, mut not_run) = (Vec::new(), Vec::new());
    for s in &eval.systems {
        match missing(s, agents, round, have) {
            None => run.push(s.clone()),
            Some(why) => {
                tracing::warn!("system `{}` is not evaluated: {why}", s.id);
                not_run.push(malt_eval::NotRun {
                    system: s.id.clone(),
                    label: s.label.clone(),
                    reason: why,
                });
            }
        }
    }
    (run, not_run)
}

/// What an evaluation and its partial report both start from: the chain's agents, the
/// round's adapters, the systems it can run (and those it cannot, with why) and their plan.
struct RoundPlan {
    agents: Vec<String>,
    have: Available,
    systems: Vec<EvalSystem>,
    not_run: Vec<malt_eval::NotRun>,
    plan: EvalPlan,
}

fn round_plan(inputs: &EvalInputs, round: &RoundLayout) -> RoundPlan {
    let agents: Vec<String> = inputs.chain.agents.iter().map(|a| a.name.clone()).collect();
    let have = available(&agents, round);
    let (systems, not_run) = runnable(&inputs.eval, &agents, round, &have);
    let plan = plan_for(inputs, &systems);
    RoundPlan {
        agents,
        have,
        systems,
        not_run,
        plan,
    }
}

fn plan_for(inputs: &EvalInputs, systems: &[EvalSystem]) -> EvalPlan {
    let eval = &inputs.eval;
    EvalPlan {
        pool_size: inputs.questions.len(),
        questions: eval.questions,
        seeds: eval.seeds.clone(),
        majority_k: eval.majority_k,
        systems: systems.iter().map(plan_system).collect(),
        std: eval.std,
    }
}

/// Refuses an evaluation that asks for more questions than the held-out split has.
pub fn check_pool(inputs: &EvalInputs, config: &Path) -> anyhow::Result<()> {
    let (pool, eval) = (inputs.questions.len(), &inputs.eval);
    if eval.questions > pool {
        let fix = match &inputs.test_file {
            Some(p) => format!("{} has {pool} questions; lower eval.questions", p.display()),
            None => format!(
                "the held-out split has {pool} ([dataset] test); lower eval.questions or raise \
                 dataset.test"
            ),
        };
        anyhow::bail!(
            "{}: [eval] questions = {}, but {fix}",
            config.display(),
            eval.questions,
        );
    }
    Ok(())
}

/// Provenance of a report: the run's manifest (config text and sha256, plugin hashes, model
/// identity, seed, chain) plus the resolved config hash, the model's sha256, the malt commit
/// and the round.
fn report_manifest(
    p: &Provenance,
    model: &ModelIdentity,
    round: &RoundLayout,
) -> serde_json::Value {
    let run = RunLayout::new(&p.run_dir).round(1);
    let mut m = match std::fs::read(run.manifest()) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        Err(_) => serde_json::Value::Null,
    };
    if !m.is_object() {
        // No trees generated here (a standalone `malt eval`): the same facts from the session.
        m = serde_json::json!({
            "config_text": p.config_text,
            "config_sha256": malt_base::hash::sha256_hex(p.config_text.as_bytes()),
            "plugins": p.plugins,
            "model": model.source,
        });
    }
    if let Some(obj) = m.as_object_mut() {
        obj.insert("config_hash".into(), p.config_hash.clone().into());
        obj.insert(
            "plugin_hashes".into(),
            serde_json::to_value(&p.plugins).unwrap_or_default(),
        );
        obj.insert("model_sha256".into(), model.weights_sha256.clone().into());
        obj.insert("malt_commit".into(), crate::session::MALT_COMMIT.into());
        obj.insert("round".into(), round.round().into());
    }
    m
}

/// Where a report sits among the rounds: its round, theta and the earlier rounds' summaries
/// (read from their reports). `None` for a run of one round.
fn round_context(
    rounds: Option<&RoundsInputs>,
    p: &Provenance,
    round: &RoundLayout,
) -> anyhow::Result<Option<RoundContext>> {
    let Some(rounds) = rounds else {
        return Ok(None);
    };
    let run = RunLayout::new(&p.run_dir);
    let theta = |k: u32| {
        rounds
            .thetas
            .get(k as usize - 1)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let mut earlier = Vec::new();
    for k in 1..round.round() {
        let path = run.round(k).eval().join(malt_eval::report::REPORT_JSON);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading round {k}'s report {}", path.display()))?;
        let report: Report = serde_json::from_str(&text)
            .with_context(|| format!("parsing round {k}'s report {}", path.display()))?;
        earlier.push(RoundSummary::of(&report, k, theta(k)));
    }
    Ok(Some(RoundContext {
        round: round.round(),
        theta: theta(round.round()),
        earlier,
    }))
}

/// The credit theta of round `k` (the config's own when `[rounds] theta` is not given).
pub fn round_theta(cfg: &Config, k: u32) -> f64 {
    cfg.rounds.theta_of(k).unwrap_or(cfg.credit.theta)
}

/// Copies round 1's attempts of the systems that run no adapter (single agent, untrained
/// chain) into this round's log: they are the same in every round (same weights, prompts and
/// sampling seeds), so later rounds do not sample them again.
fn reuse_round_one(
    run_dir: &Path,
    round: &RoundLayout,
    systems: &[EvalSystem],
) -> anyhow::Result<()> {
    if round.round() == 1 {
        return Ok(());
    }
    let fixed: Vec<&str> = systems
        .iter()
        .filter(|s| !s.kind.uses_adapters())
        .map(|s| s.id.as_str())
        .collect();
    let first = RunLayout::new(run_dir).round(1).eval_results();
    if fixed.is_empty() || !first.exists() {
        return Ok(());
    }
    let records = malt_eval::results::read_records(&first)?;
    std::fs::create_dir_all(round.eval())
        .with_context(|| format!("cannot create {}", round.eval().display()))?;
    let mut log = malt_eval::ResultLog::open(round.eval_results())?;
    let mut copied = 0;
    for rec in records.into_values() {
        if fixed.contains(&rec.system.as_str()) && !log.contains(&rec.key()) {
            log.append(rec)?;
            copied += 1;
        }
    }
    if copied > 0 {
        tracing::info!(
            "reused {copied} attempts of round 1 ({}): they run no adapter",
            fixed.join(", ")
        );
    }
    Ok(())
}

/// What the evaluation stage computes from: its stage inputs (see
/// [`crate::stage::eval`]).
#[derive(Debug, Clone, serde::Serialize)]
pub struct EvalInputs {
    /// The round's trained adapters.
    pub adapters: String,
    /// Hashed without `std`, which `report` holds.
    #[serde(rename = "config [eval]", serialize_with = "eval_without_std")]
    pub eval: malt_config::Eval,
    /// What only the report reads: when nothing else changed, the stage re-aggregates the
    /// logged attempts instead of discarding them (see [`crate::stage::eval::Eval`]'s `stale`).
    pub report: ReportInputs,
    /// The agents as sampling sees them (thresholds apart).
    #[serde(rename = "chain shape and sampling")]
    pub chain: ChainSpec,
    pub model: ModelIdentity,
    /// The held-out questions, in order.
    #[serde(rename = "test questions")]
    pub questions: Vec<malt_tree::Example>,
    /// The chain's plugins, which render, extract and grade every turn: name -> hash.
    pub plugins: std::collections::BTreeMap<String, String>,
    #[serde(rename = "config [plugins] options")]
    pub plugin_options:
        std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
    /// With a STaR system: what STaR produced and how (for its row and the report's note).
    #[serde(rename = "STaR", skip_serializing_if = "Option::is_none")]
    pub star: Option<StarOutputs>,
    /// With `[rounds]`: the thresholds of every round and the earlier rounds' reports.
    #[serde(rename = "rounds", skip_serializing_if = "Option::is_none")]
    pub rounds: Option<RoundsInputs>,
    /// With an online system: what `malt online` left (its adapters and metrics).
    #[serde(rename = "online", skip_serializing_if = "Option::is_none")]
    pub online: Option<String>,
    /// For messages only: the held-out file, when the split is one.
    #[serde(skip)]
    pub test_file: Option<std::path::PathBuf>,
}

/// The inputs of the report alone.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReportInputs {
    /// `[eval] std`.
    pub std: malt_eval::StdConvention,
    /// The layout of `report.json` ([`malt_eval::figures::REPORT_FORMAT`]): a new one
    /// aggregates the logged attempts again.
    pub format: u32,
    /// With an online system: `[online]` in words, beside its training curve.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub online_settings: Option<String>,
}

/// `[eval]` as the stage record hashes it: every key but `std` (an input of the report alone,
/// in [`ReportInputs`]), so that the hash of a config without `std` is what it was before the
/// key existed.
fn eval_without_std<S: serde::Serializer>(
    eval: &malt_config::Eval,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::Serialize;
    let mut v = serde_json::to_value(eval).map_err(serde::ser::Error::custom)?;
    if let Some(fields) = v.as_object_mut() {
        fields.remove("std");
    }
    v.serialize(s)
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct StarOutputs {
    /// The STaR stage's samples, SFT set and adapter.
    pub outputs: String,
    pub setup: malt_config::Star,
    pub chain: ChainSpec,
    /// Samples one MALT tree holds (the report says STaR drew as many).
    pub tree_samples: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RoundsInputs {
    /// Round k's threshold at index k - 1.
    pub thetas: Vec<f64>,
    /// The earlier rounds' `report.json` contents.
    pub earlier: String,
}

/// Evaluates the systems of `inputs` on its held-out questions with `round`'s adapters.
pub fn evaluate(
    inputs: &EvalInputs,
    env: &mut crate::stage::Env<'_>,
    round: &RoundLayout,
) -> anyhow::Result<Report> {
    let RoundPlan {
        agents,
        have,
        systems,
        not_run,
        plan,
    } = round_plan(inputs, round);
    let model = env.models.get(&inputs.model)?;
    let mut adapters = Adapters {
        malt: malt_train::load_final_adapters(
            model,
            round.dir(),
            agents.iter().map(String::as_str),
        )?,
        ..Default::default()
    };
    if systems.iter().any(|s| s.kind == SystemKind::StarChain) {
        for agent in &have.sft_apart {
            let dir = malt_train::trainer::adapter_dir(round.dir(), agent, malt_train::Phase::Sft);
            let a = model
                .load_adapter(&dir, agent)
                .with_context(|| format!("loading {agent}'s SFT adapter {}", dir.display()))?;
            adapters.sft.push((agent.clone(), a));
        }
    }
    if systems.iter().any(|s| s.kind == SystemKind::Online) {
        for agent in &have.online {
            let dir = round.online_adapter(agent);
            let a = model
                .load_adapter(&dir, agent)
                .with_context(|| format!("loading {agent}'s online adapter {}", dir.display()))?;
            adapters.online.push((agent.clone(), a));
        }
    }
    if systems.iter().any(|s| s.kind == SystemKind::Star) {
        let first = agents.first().map(String::as_str);
        adapters.star = malt_train::load_final_adapters(model, round.star().dir(), first)?
            .pop()
            .map(|(_, a)| a);
    }
    let p = env.tools.provenance.clone();
    reuse_round_one(&p.run_dir, round, &systems)?;
    let star = match (
        &inputs.star,
        systems.iter().any(|s| s.kind == SystemKind::Star),
    ) {
        (Some(s), true) => Some(crate::star::summary(
            &s.setup,
            &s.chain,
            s.tree_samples,
            round,
        )?),
        _ => None,
    };
    let ctx = ReportContext {
        manifest: report_manifest(&p, &inputs.model, round),
        star,
        round: round_context(inputs.rounds.as_ref(), &p, round)?,
        budgets: crate::budget::budgets(&systems, &agents, round, star_data(inputs))?,
        training: training_curves(&systems, round, inputs)?,
        not_run,
    };
    let setups = systems
        .iter()
        .map(|s| system_setup(&agents, s, &have.sft_apart, &have.online))
        .collect();
    let live = env.tools.live.clone();
    let subsets = plan.subsets()?;
    let runner = ModelChainRunner::new(
        model,
        inputs.chain.clone(),
        inputs.questions.clone(),
        inputs.eval.majority_k,
        &mut *env.tools.scorer,
        adapters,
        setups,
    )
    .with_batches(&subsets, inputs.eval.batch_questions);
    let out = round.eval();
    // Hot-reloaded plugins apply between questions, never inside one.
    let mut runner = crate::live_reload::QuestionBoundaries::new(runner, live.as_deref());
    let report = malt_eval::run_evaluation(&mut runner, &plan, &out, &ctx, true)?;
    tracing::info!("report: {}", out.join("report.md").display());
    if let Err(e) = crate::tracking::write_report(&out, &report, &p.config_text) {
        tracing::warn!("{}: no TensorBoard event file: {e}", out.display());
    }
    Ok(report)
}

/// The training curve of each online system (`malt online`'s metrics of `round`).
fn training_curves(
    systems: &[EvalSystem],
    round: &RoundLayout,
    inputs: &EvalInputs,
) -> anyhow::Result<Vec<malt_eval::TrainingCurve>> {
    let settings = inputs.report.online_settings.as_deref().unwrap_or_default();
    let metrics = round.online().join("metrics.jsonl");
    let mut out = Vec::new();
    for s in systems.iter().filter(|s| s.kind == SystemKind::Online) {
        out.extend(crate::online::training_curve(&s.id, settings, &metrics)?);
    }
    Ok(out)
}

/// The report over the evaluation seeds already complete in `<round>/eval/results.jsonl`,
/// written to `<round>/eval/partial/`; loads no model and runs nothing, so it can watch an
/// evaluation that is still running in another process.
pub fn partial_report(
    inputs: &EvalInputs,
    p: &Provenance,
    round: &RoundLayout,
) -> anyhow::Result<Report> {
    let RoundPlan {
        agents,
        systems,
        not_run,
        plan,
        ..
    } = round_plan(inputs, round);
    let out = round.eval();
    let ctx = ReportContext {
        manifest: report_manifest(p, &inputs.model, round),
        star: None,
        round: round_context(inputs.rounds.as_ref(), p, round)?,
        budgets: crate::budget::budgets(&systems, &agents, round, star_data(inputs))?,
        training: training_curves(&systems, round, inputs)?,
        not_run,
    };
    let report = malt_eval::report_complete_seeds(&plan, &out, &ctx)
        .with_context(|| format!("no evaluation seed is complete yet in {}", out.display()))?;
    tracing::info!(
        "partial report: {}",
        out.join(malt_eval::PARTIAL_DIR).join("report.md").display()
    );
    Ok(report)
}

/// `[star] data` as the inputs hold it (the default when no STaR system is evaluated).
fn star_data(inputs: &EvalInputs) -> malt_config::StarData {
    inputs
        .star
        .as_ref()
        .map_or(malt_config::StarData::Trees, |s| s.setup.data)
}

/// The round `malt eval` works on: `--round K`, else the last round with adapters.
pub fn round_of(cfg: &Config, round: Option<u32>) -> anyhow::Result<RoundLayout> {
    let run = RunLayout::new(&cfg.run.dir);
    match round {
        None => Ok(run.latest_trained_round()),
        Some(k) if k >= 1 && k <= cfg.rounds.count => Ok(run.round(k)),
        Some(k) => anyhow::bail!(
            "{}: --round {k}: the config has rounds 1 to {} ([rounds] count)",
            cfg.source.display(),
            cfg.rounds.count
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sys(kind: SystemKind) -> EvalSystem {
        EvalSystem {
            id: "s".into(),
            label: "S".into(),
            kind,
        }
    }

    /// What each kind of system runs at each position: multi-agent STaR takes an agent's SFT
    /// adapter where a DPO phase followed it and MALT's (the same adapter) where none did;
    /// removed agents are skipped, untrained ones run the base model.
    #[test]
    fn systems_run_the_weights_their_labels_say() {
        let agents: Vec<String> = ["g", "v", "r"].map(String::from).to_vec();
        let apart = vec!["v".to_string(), "r".to_string()];
        let turns = |kind| system_setup(&agents, &sys(kind), &apart, &[]).turns;
        use TurnPlan::{Run, Skip};
        use Weights::{Base, Malt, Sft, Star};
        assert_eq!(
            turns(SystemKind::StarChain),
            [Run(Malt), Run(Sft), Run(Sft)]
        );
        assert_eq!(turns(SystemKind::Malt), [Run(Malt); 3]);
        assert_eq!(turns(SystemKind::Star), [Run(Star)]);
        assert_eq!(turns(SystemKind::Single), [Run(Base)]);
        let trained = |t: &[&str], s: &[&str]| SystemKind::Trained {
            trained: t.iter().map(|x| x.to_string()).collect(),
            skip: s.iter().map(|x| x.to_string()).collect(),
        };
        assert_eq!(
            turns(trained(&["v", "r"], &[])),
            [Run(Base), Run(Malt), Run(Malt)]
        );
        assert_eq!(turns(trained(&["g"], &["v", "r"])), [Run(Malt), Skip, Skip]);
        assert_eq!(
            turns(trained(&["g", "v"], &["r"])),
            [Run(Malt), Run(Malt), Skip]
        );
    }
}
