//! `malt run CONFIG`: the whole pipeline, generate -> credit -> train -> star -> eval for each
//! round of `[rounds]`. Each stage is
//! skipped when its record in `<run>/stages/` shows its outputs are current, resumed after a
//! crash or Ctrl-C, and recomputed when an input changed (see `malt_pipeline::pipeline`). Edits of the
//! config or a plugin while it runs are hot-reloaded at safe points.

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Run config (TOML).
    config: PathBuf,
    /// Stop after this stage: generate, credit, train, star or eval (of round 1), or STAGE@K
    /// (of round K of `[rounds]`).
    #[arg(long, value_name = "STAGE[@ROUND]")]
    until: Option<String>,
    /// Do not watch the config and plugins for edits while running.
    #[arg(long)]
    no_reload: bool,
    #[command(flatten)]
    model: super::ModelFlags,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    args.model.install()?;
    malt_pipeline::pipeline::run(&malt_pipeline::pipeline::Options {
        config: args.config,
        until: args.until,
        hot_reload: !args.no_reload,
    })
}
