//! `malt eval CONFIG`: evaluate the single agent, the untrained chain and the trained chain
//! (each with and without majority voting) on held-out questions; writes the run's report.

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Run config (TOML).
    config: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut session = malt::session::Session::open(&args.config)?;
    let (model, _) = malt::session::load_model(&session.config)?;
    let report = malt::evaluate::evaluate(&mut session, &model)?;
    print!("{}", malt_eval::render_markdown(&report));
    Ok(())
}
