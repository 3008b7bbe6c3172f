//! `malt eval CONFIG [--round K]`: evaluate every system of `[eval] systems` (single agent,
//! untrained chain, STaR, MALT, ablations; each with and without majority voting) on held-out
//! questions and write the round's report, as `malt run`'s evaluation stage (skipped when
//! current: the report is printed as it stands).

use std::path::PathBuf;

use malt_pipeline::stage::eval::Eval;
use malt_pipeline::stage::record::Decision;
use malt_pipeline::stage::{run_stage, Models, Provenance};

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
    let mut session = malt_pipeline::session::Session::open(&args.config)?;
    let round = malt_pipeline::evaluate::round_of(&session.config, args.round)?;
    if args.partial {
        let inputs = Eval::inputs_of(&mut session, &round)?;
        let report =
            malt_pipeline::evaluate::partial_report(&inputs, &Provenance::of(&session), &round)?;
        print!("{}", malt_eval::render_markdown(&report));
        return Ok(());
    }
    let mut models = Models::for_config(&session.config);
    if run_stage::<Eval>(&mut session, &mut models, &round)? == Decision::Current {
        // Nothing to compute: the report as it stands.
        let path = round.eval().join("report.md");
        match std::fs::read_to_string(&path) {
            Ok(text) => print!("{text}"),
            Err(e) => tracing::warn!("{}: {e}", path.display()),
        }
    }
    Ok(())
}
