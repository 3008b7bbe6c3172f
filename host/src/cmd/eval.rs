//! `malt eval CONFIG`: evaluate every system of `[eval] systems` (single agent, untrained
//! chain, STaR, MALT, ablations; each with and without majority voting) on held-out questions;
//! writes the round's report.

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
    /// The round of `[rounds]` to evaluate (default: the last one with trained adapters).
    #[arg(long)]
    round: Option<u32>,
    #[command(flatten)]
    model: super::ModelFlags,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    args.model.install()?;
    let mut session = malt::session::Session::open(&args.config)?;
    let round = malt::evaluate::round_of(&session.config, args.round)?;
    if args.partial {
        let report = malt::evaluate::partial_report(&mut session, &round)?;
        print!("{}", malt_eval::render_markdown(&report));
        return Ok(());
    }
    let (model, _) = malt::session::load_model(&session.config)?;
    let report = malt::evaluate::evaluate(&mut session, &model, &round)?;
    print!("{}", malt_eval::render_markdown(&report));
    Ok(())
}
