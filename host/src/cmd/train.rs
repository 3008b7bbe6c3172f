//! `malt train CONFIG [--agent NAME] [--resume]`: run each agent's training schedule on the
//! datasets of the run directory (written by `malt generate` and `malt credit`).

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Run config (TOML).
    config: PathBuf,
    /// Train only this agent.
    #[arg(long)]
    agent: Option<String>,
    /// Continue from the last checkpoint of an interrupted run (phases already complete are skipped).
    #[arg(long)]
    resume: bool,
    #[command(flatten)]
    model: super::ModelFlags,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    args.model.install()?;
    let cfg = malt_config::Config::load(&args.config)?;
    let (model, id) = malt::session::load_model(&cfg)?;
    let reports = malt::train::train_agents(
        &cfg,
        &cfg.run.dir,
        &model,
        &id,
        args.agent.as_deref(),
        args.resume,
    )?;
    for r in &reports {
        println!("{}", serde_json::to_string(r)?);
    }
    Ok(())
}
