//! The evaluation stage: every system of `[eval] systems` (single agent, untrained chain, STaR,
//! MALT, ablations; each also with majority voting over k attempts) on seeded subsets of the
//! held-out questions, with the same prompts and sampling seeds for every system. Writes
//! `<round>/eval/{results.jsonl, report.md, report.json, *.svg}`; resumable through
//! `results.jsonl`.

use anyhow::Context;
use malt_config::{Config, EvalSystem, SystemKind};
use malt_eval::{EvalPlan, Report, ReportContext, RoundContext, RoundSummary, System, Table};
use malt_layout::{RoundLayout, RunLayout};
use malt_model::Model;

use crate::backend::chain_runner::{Adapters, SystemSetup, TurnPlan, Weights};
use crate::backend::ModelChainRunner;
use crate::session::Session;

/// What the systems of a config run, by position in the chain.
pub fn system_setup(cfg: &Config, s: &EvalSystem) -> SystemSetup {
    let n = cfg.agents.len();
    let turns = match &s.kind {
        SystemKind::Single => vec![TurnPlan::Run(Weights::Base)],
        SystemKind::Star => vec![TurnPlan::Run(Weights::Star)],
        SystemKind::Untrained => vec![TurnPlan::Run(Weights::Base); n],
        SystemKind::Malt => vec![TurnPlan::Run(Weights::Malt); n],
        SystemKind::Trained { trained, skip } => cfg
            .agents
            .iter()
            .map(|a| {
                if skip.contains(&a.name) {
                    TurnPlan::Skip
                } else if trained.contains(&a.name) {
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
    malt: Vec<String>,
    star: bool,
}

fn available(cfg: &Config, round: &RoundLayout) -> Available {
    let malt = cfg
        .agents
        .iter()
        .filter(|a| malt_train::final_adapter_dir(round.dir(), &a.name).is_some())
        .map(|a| a.name.clone())
        .collect();
    let star = cfg
        .agents
        .first()
        .is_some_and(|a| malt_train::final_adapter_dir(round.star().dir(), &a.name).is_some());
    Available { malt, star }
}

/// The systems of the config that this round can run: one that needs adapters nobody trained
/// is left out with a warning (its row would only repeat the base model's).
fn runnable(cfg: &Config, round: &RoundLayout, have: &Available) -> Vec<EvalSystem> {
    cfg.eval
        .systems
        .iter()
        .filter(|s| {
            let (ok, why) = match &s.kind {
                SystemKind::Single | SystemKind::Untrained => (true, String::new()),
                SystemKind::Star => (
                    have.star,
                    format!("no STaR adapter in {}", round.star().adapters().display()),
                ),
                SystemKind::Malt => (
                    !have.malt.is_empty(),
                    format!(
                        "no trained adapters in {} (run `malt train` first)",
                        round.adapters().display()
                    ),
                ),
                SystemKind::Trained { trained, .. } => (
                    trained.is_empty() || trained.iter().any(|a| have.malt.contains(a)),
                    format!(
                        "none of its agents ({}) has a trained adapter in {}",
                        trained.join(", "),
                        round.adapters().display()
                    ),
                ),
            };
            if !ok {
                tracing::warn!("system `{}` is left out of the report: {why}", s.id);
            }
            ok
        })
        .cloned()
        .collect()
}

/// The plan of `session`'s evaluation of `systems` over a held-out split of `pool` questions.
fn plan_for(session: &Session, pool: usize, systems: &[EvalSystem]) -> anyhow::Result<EvalPlan> {
    let eval = &session.config.eval;
    if eval.questions > pool {
        let fix = match &session.config.dataset.test_source {
            Some(p) => format!("{} has {pool} questions; lower eval.questions", p.display()),
            None => format!(
                "the held-out split has {pool} ([dataset] test); lower eval.questions or raise \
                 dataset.test"
            ),
        };
        anyhow::bail!(
            "{}: [eval] questions = {}, but {fix}",
            session.config.source.display(),
            eval.questions,
        );
    }
    Ok(EvalPlan {
        pool_size: pool,
        questions: eval.questions,
        seeds: eval.seeds.clone(),
        majority_k: eval.majority_k,
        systems: systems.iter().map(plan_system).collect(),
    })
}

/// Provenance of a report: the run's manifest (config text and sha256, plugin hashes, model
/// identity, seed, chain) plus the resolved config hash, the model's sha256, the malt commit
/// and the round.
fn report_manifest(session: &Session, round: &RoundLayout) -> serde_json::Value {
    let run = RunLayout::new(&session.config.run.dir).round(1);
    let mut m = match std::fs::read(run.manifest()) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        Err(_) => serde_json::Value::Null,
    };
    if !m.is_object() {
        // No trees generated here (a standalone `malt eval`): the same facts from the session.
        m = serde_json::json!({
            "config_text": session.config_text,
            "config_sha256": malt_tree::store::sha256_hex(session.config_text.as_bytes()),
            "plugins": session.plugin_hashes(),
            "model": crate::session::model_id(&session.config),
        });
    }
    if let Some(obj) = m.as_object_mut() {
        obj.insert("config_hash".into(), session.config.config_hash().into());
        obj.insert(
            "plugin_hashes".into(),
            serde_json::to_value(session.plugin_hashes()).unwrap_or_default(),
        );
        let sha = crate::session::model_sha256(&session.config).unwrap_or_else(|e| {
            tracing::warn!("cannot hash the model: {e:#}");
            None
        });
        obj.insert("model_sha256".into(), sha.into());
        obj.insert("malt_commit".into(), crate::session::MALT_COMMIT.into());
        obj.insert("round".into(), round.round().into());
    }
    m
}

/// Where a report sits among the rounds: its round, theta and the earlier rounds' summaries
/// (read from their reports). `None` for a run of one round.
fn round_context(cfg: &Config, round: &RoundLayout) -> anyhow::Result<Option<RoundContext>> {
    if cfg.rounds.count <= 1 {
        return Ok(None);
    }
    let run = RunLayout::new(&cfg.run.dir);
    let mut earlier = Vec::new();
    for k in 1..round.round() {
        let path = run.round(k).eval().join(malt_eval::report::REPORT_JSON);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading round {k}'s report {}", path.display()))?;
        let report: Report = serde_json::from_str(&text)
            .with_context(|| format!("parsing round {k}'s report {}", path.display()))?;
        earlier.push(RoundSummary::of(&report, k, round_theta(cfg, k)));
    }
    Ok(Some(RoundContext {
        round: round.round(),
        theta: round_theta(cfg, round.round()),
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
    cfg: &Config,
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
    let first = RunLayout::new(&cfg.run.dir).round(1).eval_results();
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

/// Evaluates the systems of `session` on its held-out split with `round`'s adapters.
pub fn evaluate(
    session: &mut Session,
    model: &Model,
    round: &RoundLayout,
) -> anyhow::Result<Report> {
    let split = session.questions()?;
    let cfg = session.config.clone();
    let have = available(&cfg, round);
    let systems = runnable(&cfg, round, &have);
    let plan = plan_for(session, split.test.len(), &systems)?;
    let mut adapters = Adapters::default();
    for agent in &cfg.agents {
        if let Some(dir) = malt_train::final_adapter_dir(round.dir(), &agent.name) {
            tracing::info!("agent {}: trained adapter {}", agent.name, dir.display());
            adapters
                .malt
                .push((agent.name.clone(), model.load_adapter(&dir, &agent.name)?));
        }
    }
    if systems.iter().any(|s| s.kind == SystemKind::Star) {
        if let Some(first) = cfg.agents.first() {
            if let Some(dir) = malt_train::final_adapter_dir(round.star().dir(), &first.name) {
                tracing::info!("STaR: adapter {}", dir.display());
                adapters.star = Some(model.load_adapter(&dir, &first.name)?);
            }
        }
    }
    reuse_round_one(&cfg, round, &systems)?;
    let ctx = ReportContext {
        manifest: report_manifest(session, round),
        star: systems
            .iter()
            .any(|s| s.kind == SystemKind::Star)
            .then(|| crate::star::summary(session, round))
            .transpose()?,
        round: round_context(&cfg, round)?,
    };
    let setups = systems.iter().map(|s| system_setup(&cfg, s)).collect();
    let chain = session.chain.clone();
    let live = session.live.clone();
    let subsets = plan.subsets()?;
    let runner = ModelChainRunner::new(
        model,
        chain,
        split.test,
        cfg.eval.majority_k,
        &mut session.scorer,
        adapters,
        setups,
    )
    .with_batches(&subsets, cfg.eval.batch_questions);
    let out = round.eval();
    // Hot-reloaded plugins apply between questions, never inside one.
    let mut runner = crate::live_reload::QuestionBoundaries::new(runner, live.as_deref());
    let report = malt_eval::run_evaluation(&mut runner, &plan, &out, &ctx, true)?;
    tracing::info!("report: {}", out.join("report.md").display());
    if let Err(e) = crate::tracking::write_report(&out, &report, &session.config_text) {
        tracing::warn!("{}: no TensorBoard event file: {e}", out.display());
    }
    Ok(report)
}

/// The report over the evaluation seeds already complete in `<round>/eval/results.jsonl`,
/// written to `<round>/eval/partial/`; loads no model and runs nothing, so it can watch an
/// evaluation that is still running in another process.
pub fn partial_report(session: &mut Session, round: &RoundLayout) -> anyhow::Result<Report> {
    let pool = session.questions()?.test.len();
    let cfg = session.config.clone();
    let have = available(&cfg, round);
    let systems = runnable(&cfg, round, &have);
    let plan = plan_for(session, pool, &systems)?;
    let out = round.eval();
    let ctx = ReportContext {
        manifest: report_manifest(session, round),
        star: None,
        round: round_context(&cfg, round)?,
    };
    let report = malt_eval::report_complete_seeds(&plan, &out, &ctx)
        .with_context(|| format!("no evaluation seed is complete yet in {}", out.display()))?;
    tracing::info!(
        "partial report: {}",
        out.join(malt_eval::PARTIAL_DIR).join("report.md").display()
    );
    Ok(report)
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
