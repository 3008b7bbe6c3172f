//! `malt train CONFIG [--round K] [--agent NAME]`: each agent's training schedule on the
//! round's datasets (written by `malt generate` and `malt credit`), as `malt run`'s training
//! stage: skipped when current, resumed after an interruption, recomputed when its inputs
//! changed.

use std::path::PathBuf;

use malt_pipeline::stage::train::Train;
use malt_pipeline::stage::{run_stage, Models, Provenance, Stage};

#[derive(clap::Args)]
pub struct Args {
    /// Run config (TOML).
    config: PathBuf,
    /// The round of `[rounds]` (default 1).
    #[arg(long)]
    round: Option<u32>,
    /// Train only this agent (outside the stage record: `malt run` retrains the stage).
    #[arg(long)]
    agent: Option<String>,
    /// With --agent: continue from its last checkpoint. The whole stage always resumes.
    #[arg(long)]
    resume: bool,
    #[command(flatten)]
    model: super::ModelFlags,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    args.model.install()?;
    let mut session = malt_pipeline::session::Session::open(&args.config)?;
    let round = super::round_arg(&session.config, args.round)?;
    let mut models = Models::for_config(&session.config);
    let Some(agent) = &args.agent else {
        run_stage::<Train>(&mut session, &mut models, &round)?;
        return Ok(());
    };
    let inputs = Train::inputs(&mut session, &round)?;
    let model = models.get(&inputs.model)?;
    let reports = malt_pipeline::train::train_agents(
        &inputs.agents,
        inputs.seed,
        round.dir(),
        model,
        &inputs.model.source,
        Some(agent),
        args.resume,
        &Provenance::of(&session),
    )?;
    for r in &reports {
        println!("{}", serde_json::to_string(r)?);
    }
    Ok(())
}
