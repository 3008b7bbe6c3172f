//! `malt online CONFIG`: on-policy training of the chain's adapters (`[online]`), resumed from
//! its last checkpoint; writes `<run>/online/` (see `malt_layout::RoundLayout::online`).

use std::path::PathBuf;

use malt_pipeline::online::{run_online, OnlineOptions};
use malt_pipeline::stage::Models;

#[derive(clap::Args)]
pub struct Args {
    /// Run config (TOML) with an `[online]` table.
    config: PathBuf,
    /// Stop after this many steps of this invocation (the next one resumes there).
    #[arg(long)]
    steps_now: Option<u32>,
    #[command(flatten)]
    model: super::ModelFlags,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    args.model.install()?;
    let mut session = malt_pipeline::session::Session::open(&args.config)?;
    let identity = session.model()?;
    let mut models = Models::for_config(&session.config);
    let model = models.get(&identity)?;
    let summary = run_online(
        &mut session,
        model,
        &identity.source,
        OnlineOptions {
            stop_after: args.steps_now,
        },
    )?;
    if summary.last_step >= summary.first_step {
        println!(
            "online steps {}-{} done; adapters in {}",
            summary.first_step,
            summary.last_step,
            summary.adapters.display()
        );
    } else {
        println!(
            "online: nothing to do (step {} of the config already done); adapters in {}",
            summary.last_step,
            summary.adapters.display()
        );
    }
    Ok(())
}
