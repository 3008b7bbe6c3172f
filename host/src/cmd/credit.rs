//! `malt credit CONFIG`: recompute rewards, values, labels, per-agent SFT/DPO datasets and
//! statistics from the run's stored trees, with the current plugins and thresholds, without
//! touching the model. `--watch` recomputes on every valid change of the config or a plugin
//! file and prints positives and pairs per agent before and after.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use malt_tree::{
    AgentSpec, ChainSpec, CreditSettings, PairMode, Pooling, SamplingParams, Scorer, Stats,
};

#[derive(clap::Args)]
pub struct Args {
    /// Run config (TOML); its `[run] dir` holds the trees.
    config: PathBuf,
    /// Run directory, overriding the config's `[run] dir`.
    #[arg(long)]
    run: Option<PathBuf>,
    /// Keep the rewards stored at generation instead of re-grading with the current plugins.
    #[arg(long)]
    stored_rewards: bool,
    /// Recompute on every valid change of the config or a plugin file; print what changed.
    #[arg(long)]
    watch: bool,
    /// Polling interval of --watch, in milliseconds.
    #[arg(long, default_value_t = 500)]
    poll_ms: u64,
}

/// The chain of a config. Config validation already guarantees the invariants; the tree
/// engine checks them again so a library caller cannot bypass them.
pub fn chain_from_config(cfg: &malt_config::Config) -> anyhow::Result<ChainSpec> {
    let agents = cfg
        .agents
        .iter()
        .map(|a| AgentSpec {
            name: a.name.clone(),
            role: a.role.clone(),
            plugin: a.plugin.clone(),
            branches: a.branches,
            sampling: SamplingParams {
                temperature: a.temperature,
                top_p: a.top_p,
                top_k: a.top_k,
                max_new_tokens: a.max_new_tokens,
                stop: a.stop.clone(),
            },
            theta: Some(a.theta),
            answers: None,
        })
        .collect();
    ChainSpec::new(agents).with_context(|| format!("{}: [[agents]]", cfg.source.display()))
}

/// The `[credit]` section of a config.
pub fn credit_from_config(cfg: &malt_config::Config) -> anyhow::Result<CreditSettings> {
    let s = CreditSettings {
        theta: cfg.credit.theta,
        pooling: match cfg.credit.pooling {
            malt_config::Pooling::Global => Pooling::Global,
            malt_config::Pooling::Local => Pooling::Local,
        },
        pairs: match cfg.credit.pairs {
            malt_config::Pairs::All => PairMode::All,
            malt_config::Pairs::OnePerParent => PairMode::OnePerParent,
        },
    };
    s.validate()
        .with_context(|| format!("{}: [credit]", cfg.source.display()))?;
    Ok(s)
}

/// INTEGRATION POINT (plugins): a `malt_tree::Scorer` over the config's plugins, loaded
/// through malt-plugins (render/extract/grade/parse-records map one to one onto the WIT
/// `benchmark` interface; a trap is a `PluginError`). malt-plugins exposes no runtime API
/// yet, so this returns `None` and `malt credit` re-credits from the stored rewards.
fn plugin_scorer(_cfg: &malt_config::Config) -> anyhow::Result<Option<Box<dyn Scorer>>> {
    Ok(None)
}

fn credit_once(args: &Args, cfg: &malt_config::Config, print_table: bool) -> anyhow::Result<Stats> {
    let chain = chain_from_config(cfg)?;
    let settings = credit_from_config(cfg)?;
    let run_dir = args.run.clone().unwrap_or_else(|| cfg.run.dir.clone());
    let mut scorer = if args.stored_rewards {
        None
    } else {
        let s = plugin_scorer(cfg)?;
        if s.is_none() {
            tracing::warn!("plugin re-scoring is not wired yet; using the stored rewards");
        }
        s
    };
    let t = Instant::now();
    let report = malt_tree::recredit(
        &run_dir,
        &chain,
        &settings,
        scorer.as_mut().map(|s| s.as_mut() as &mut dyn Scorer),
    )?;
    if print_table {
        print!("{}", report.stats.table());
    }
    println!(
        "credited {} trees in {:.2} s (read {:.2}, score {:.2}, credit {:.2}, write {:.2}) -> {}",
        report.stats.trees,
        t.elapsed().as_secs_f64(),
        report.read_time.as_secs_f64(),
        report.score_time.as_secs_f64(),
        report.credit_time.as_secs_f64(),
        report.write_time.as_secs_f64(),
        run_dir.join("datasets").display()
    );
    Ok(report.stats)
}

/// Modification stamps of the files whose change triggers a recompute.
fn stamps(config: &Path, cfg: &malt_config::Config) -> Vec<Option<(SystemTime, u64)>> {
    let mut paths = vec![config.to_path_buf()];
    paths.extend(cfg.plugins.values().filter_map(|p| p.path.clone()));
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut cfg = malt_config::Config::load(&args.config)?;
    let mut stats = credit_once(&args, &cfg, true)?;
    if !args.watch {
        return Ok(());
    }
    // Polling keeps this dependency-free and robust to editors that replace files.
    let mut seen = stamps(&args.config, &cfg);
    eprintln!("watching {} (Ctrl-C to stop)", args.config.display());
    loop {
        std::thread::sleep(Duration::from_millis(args.poll_ms.max(50)));
        let now = stamps(&args.config, &cfg);
        if now == seen {
            continue;
        }
        seen = now;
        match malt_config::Config::load(&args.config) {
            Err(e) => eprintln!("config invalid, keeping the previous results:\n{e}"),
            Ok(new) => match credit_once(&args, &new, false) {
                Ok(s) => {
                    print!("{}", Stats::diff(&stats, &s));
                    stats = s;
                    cfg = new;
                    seen = stamps(&args.config, &cfg);
                }
                Err(e) => eprintln!("error: {e:#}"),
            },
        }
    }
}
