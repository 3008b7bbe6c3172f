//! The evaluation stage: every system (single agent, untrained chain, trained chain; each also
//! with majority voting over k attempts) on seeded subsets of the held-out questions, with the
//! same prompts for every system. Writes `<run>/eval/{results.jsonl, report.md, report.json,
//! accuracy.svg, per_turn.svg}`; resumable through `results.jsonl`.

use anyhow::Context;
use malt_eval::{EvalPlan, Report, Variant};
use malt_model::Model;

use crate::backend::ModelChainRunner;
use crate::session::Session;

/// Evaluates the systems of `session` on its held-out split.
pub fn evaluate(session: &mut Session, model: &Model) -> anyhow::Result<Report> {
    let split = session.questions()?;
    let run_dir = session.config.run.dir.clone();
    let eval = session.config.eval.clone();
    let mut adapters = Vec::new();
    for agent in &session.config.agents {
        if let Some(dir) = malt_train::final_adapter_dir(&run_dir, &agent.name) {
            tracing::info!("agent {}: trained adapter {}", agent.name, dir.display());
            adapters.push((agent.name.clone(), model.load_adapter(&dir, &agent.name)?));
        }
    }
    let plan = plan_for(session, split.test.len(), !adapters.is_empty())?;
    let manifest = manifest_of(session);
    let chain = session.chain.clone();
    let live = session.live.clone();
    let subsets = plan.subsets()?;
    let runner = ModelChainRunner::new(
        model,
        chain,
        split.test,
        eval.majority_k,
        &mut session.scorer,
        adapters,
    )
    .with_batches(&subsets, eval.batch_questions);
    let out = malt_layout::RoundLayout::at(&run_dir).eval();
    // Hot-reloaded plugins apply between questions, never inside one.
    let mut runner = crate::live_reload::QuestionBoundaries::new(runner, live.as_deref());
    let report = malt_eval::run_evaluation(&mut runner, &plan, &out, manifest, true)?;
    tracing::info!("report: {}", out.join("report.md").display());
    Ok(report)
}

/// The plan of `session`'s evaluation over a held-out split of `pool` questions.
fn plan_for(session: &Session, pool: usize, trained: bool) -> anyhow::Result<EvalPlan> {
    let run_dir = &session.config.run.dir;
    let eval = &session.config.eval;
    let mut variants = vec![Variant::Single, Variant::UntrainedChain];
    if trained {
        variants.push(Variant::TrainedChain);
    } else {
        tracing::warn!(
            "no trained adapters in {}: the trained chain is left out of the report \
             (run `malt train` first)",
            malt_layout::RoundLayout::at(run_dir).adapters().display()
        );
    }
    if eval.questions > pool {
        anyhow::bail!(
            "{}: [eval] questions = {} but the held-out split has {} ([dataset] test); \
             lower eval.questions or raise dataset.test",
            session.config.source.display(),
            eval.questions,
            pool
        );
    }
    Ok(EvalPlan {
        pool_size: pool,
        questions: eval.questions,
        seeds: eval.seeds.clone(),
        majority_k: eval.majority_k,
        variants,
    })
}

fn manifest_of(session: &Session) -> serde_json::Value {
    match std::fs::read(malt_layout::RoundLayout::at(&session.config.run.dir).manifest()) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        Err(_) => serde_json::json!({ "config_text": session.config_text }),
    }
}

/// The report over the evaluation seeds already complete in `<run>/eval/results.jsonl`, written
/// to `<run>/eval/partial/`; loads no model and runs nothing, so it can watch an evaluation that
/// is still running in another process.
pub fn partial_report(session: &mut Session) -> anyhow::Result<Report> {
    let pool = session.questions()?.test.len();
    let run_dir = session.config.run.dir.clone();
    let trained = session
        .config
        .agents
        .iter()
        .any(|a| malt_train::final_adapter_dir(&run_dir, &a.name).is_some());
    let plan = plan_for(session, pool, trained)?;
    let out = malt_layout::RoundLayout::at(&run_dir).eval();
    let report = malt_eval::report_complete_seeds(&plan, &out, manifest_of(session))
        .with_context(|| format!("no evaluation seed is complete yet in {}", out.display()))?;
    tracing::info!(
        "partial report: {}",
        out.join(malt_eval::PARTIAL_DIR).join("report.md").display()
    );
    Ok(report)
}
