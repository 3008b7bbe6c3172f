//! `malt eval CONFIG`: evaluate the single agent, the untrained chain and the trained chain
//! (each with and without majority voting) on held-out questions; writes the run's report.

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Run config (TOML).
    config: PathBuf,
    /// Only report the seeds already complete in the run's results log (into
    /// `<run>/eval/partial/`), without loading the model: for watching a long evaluation, also
    /// while `malt run` or `malt eval` is still running it.
    #[arg(long)]
    partial: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut session = malt::session::Session::open(&args.config)?;
    if args.partial {
        let report = malt::evaluate::partial_report(&mut session)?;
        print!("{}", malt_eval::render_markdown(&report));
        return Ok(());
    }
    let (model, _) = malt::session::load_model(&session.config)?;
    let report = malt::evaluate::evaluate(&mut session, &model)?;
    print!("{}", malt_eval::render_markdown(&report));
    Ok(())
}
