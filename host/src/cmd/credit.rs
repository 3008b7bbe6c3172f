//! `malt credit CONFIG [--round K]`: recompute rewards, values, labels, per-agent SFT/DPO
//! datasets and statistics from the round's stored trees, with the current plugins and the
//! round's thresholds, without touching the model: `malt run`'s credit stage (skipped when
//! current). `--watch` stays running on the plugin host's hot reload: every valid edit of the
//! config or a plugin recomputes and prints positives and pairs per agent before and after; a
//! broken edit is reported and the previous results stay. `--watch`, `--run` and
//! `--stored-rewards` work outside the stage record (`malt run` judges the stage again).

use std::path::PathBuf;
use std::time::Instant;

use malt_config::Config;
use malt_plugins::reload::Reloader;
use malt_plugins::{PluginSet, Runtime};
use malt_tree::{Scorer, Stats};

use malt_engine::PluginScorer;
use malt_pipeline::engine_config::{chain_from_config, credit_from_config};

#[derive(clap::Args)]
pub struct Args {
    /// Run config (TOML); its `[run] dir` holds the trees.
    config: PathBuf,
    /// The round of `[rounds]` (default 1): its trees and its thresholds.
    #[arg(long)]
    round: Option<u32>,
    /// Run directory, overriding the config's `[run] dir` (round 1's trees there).
    #[arg(long)]
    run: Option<PathBuf>,
    /// Keep the rewards stored at generation instead of re-grading with the current plugins.
    #[arg(long)]
    stored_rewards: bool,
    /// Stay running: recompute on every valid change of the config or a plugin, print what changed.
    #[arg(long)]
    watch: bool,
}

fn credit_once(
    args: &Args,
    cfg: &Config,
    plugins: &PluginSet,
    print_table: bool,
) -> anyhow::Result<Stats> {
    let round = super::round_arg(cfg, args.round)?;
    let (chain, settings) = malt_pipeline::engine_config::round_credit_of(
        &chain_from_config(cfg)?,
        credit_from_config(cfg)?,
        &cfg.rounds,
        round.round(),
    );
    let run_dir = args
        .run
        .clone()
        .unwrap_or_else(|| round.dir().to_path_buf());
    let mut scorer = PluginScorer::new(plugins.clone());
    let t = Instant::now();
    let report = malt_tree::recredit(
        &run_dir,
        &chain,
        &settings,
        (!args.stored_rewards).then_some(&mut scorer as &mut dyn Scorer),
    )?;
    if print_table {
        print!("{}", report.stats.table());
    }
    println!(
        "credited {} trees ({} scored again) in {:.2} s (read {:.2}, score {:.2}, credit {:.2}, \
         write {:.2}) -> {}",
        report.stats.trees,
        report.rescored,
        t.elapsed().as_secs_f64(),
        report.read_time.as_secs_f64(),
        report.score_time.as_secs_f64(),
        report.credit_time.as_secs_f64(),
        report.write_time.as_secs_f64(),
        malt_layout::RoundLayout::at(run_dir).datasets().display()
    );
    Ok(report.stats)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if !args.watch && args.run.is_none() && !args.stored_rewards {
        let mut session = malt_pipeline::session::Session::open(&args.config)?;
        let round = super::round_arg(&session.config, args.round)?;
        malt_pipeline::stage::run_stage::<malt_pipeline::stage::credit::Credit>(
            &mut session,
            &mut malt_pipeline::stage::Models::new(),
            &round,
        )?;
        return Ok(());
    }
    if !args.watch {
        let cfg = Config::load(&args.config)?;
        let plugins = PluginSet::load(&Runtime::shared()?, &cfg)?;
        credit_once(&args, &cfg, &plugins, true)?;
        return Ok(());
    }
    let reloader = Reloader::start(Runtime::shared()?, &args.config)?;
    let events = reloader.subscribe();
    let loaded = reloader.current();
    let mut stats = credit_once(&args, &loaded.config, &loaded.plugins, true)?;
    eprintln!(
        "watching {} and its plugins (generation {}; Ctrl-C to stop)",
        args.config.display(),
        loaded.generation
    );
    for event in events {
        match event.result {
            Err(e) => eprintln!(
                "reload refused, keeping generation {}:\n{e}",
                event.generation
            ),
            Ok(()) => {
                let loaded = reloader.current();
                eprintln!("generation {}: recomputing", loaded.generation);
                match credit_once(&args, &loaded.config, &loaded.plugins, false) {
                    Ok(s) => {
                        print!("{}", Stats::diff(&stats, &s));
                        stats = s;
                    }
                    Err(e) => eprintln!("error: {e:#}"),
                }
            }
        }
    }
    Ok(())
}
