//! `malt run CONFIG`: the whole pipeline, generate -> credit -> train -> eval. Every stage is
//! resumable, so `malt run` after a crash or Ctrl-C continues where it stopped: generation skips
//! the questions whose trees are stored, credit is recomputed from the stored trees (seconds),
//! training resumes from its last checkpoint and skips finished phases, evaluation skips the
//! attempts already in its log.

use std::path::PathBuf;
use std::time::Instant;

use malt_tree::Scorer;

#[derive(clap::Args)]
pub struct Args {
    /// Run config (TOML).
    config: PathBuf,
    /// Stop after this stage.
    #[arg(long, value_parser = ["generate", "credit", "train", "eval"], default_value = "eval")]
    until: String,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut session = malt::session::Session::open(&args.config)?;
    let (model, model_id) = malt::session::load_model(&session.config)?;
    let run_dir = session.config.run.dir.clone();
    let stage = |name: &str| tracing::info!("== {name} ({:.0} s)", start.elapsed().as_secs_f64());

    stage("generate");
    malt::generate::generate_trees(&mut session, &model, &model_id)?;
    if args.until == "generate" {
        return Ok(());
    }

    stage("credit");
    let report = malt_tree::recredit(
        &run_dir,
        &session.chain,
        &session.credit,
        Some(&mut session.scorer as &mut dyn Scorer),
    )?;
    print!("{}", report.stats.table());
    if args.until == "credit" {
        return Ok(());
    }

    stage("train");
    malt::train::train_agents(&session.config, &model, &model_id, None, true)?;
    if args.until == "train" {
        return Ok(());
    }

    stage("eval");
    let report = malt::evaluate::evaluate(&mut session, &model)?;
    print!("{}", malt_eval::render_markdown(&report));
    tracing::info!(
        "done in {:.0} s; report in {}",
        start.elapsed().as_secs_f64(),
        run_dir.join("eval").display()
    );
    Ok(())
}
