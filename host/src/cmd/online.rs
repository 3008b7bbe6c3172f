//! `malt online CONFIG`: on-policy training of the chain's adapters (`[online]`), as `malt
//! run`'s online stage: skipped when current, resumed from its last checkpoint after an
//! interruption (kill it at any point), recomputed when its inputs changed. Writes
//! `<run>/online/` (see `malt_layout::RoundLayout::online`).

use std::path::PathBuf;

use malt_pipeline::stage::online::Online;
use malt_pipeline::stage::{run_stage, Models};

#[derive(clap::Args)]
pub struct Args {
    /// Run config (TOML) with an `[online]` table.
    config: PathBuf,
    #[command(flatten)]
    model: super::ModelFlags,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    args.model.install()?;
    let mut session = malt_pipeline::session::Session::open(&args.config)?;
    let round = malt_layout::RunLayout::new(&session.config.run.dir).round(1);
    let mut models = Models::for_config(&session.config);
    run_stage::<Online>(&mut session, &mut models, &round)?;
    println!(
        "online: adapters in {}",
        round.online().join("adapters").display()
    );
    Ok(())
}
