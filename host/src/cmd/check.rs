//! `malt check CONFIG...`: validate each config, build/load every plugin it names and run the
//! conformance battery on each; exit non-zero on any failure. A missing dataset file is a
//! warning (datasets are often user-provided and fetched later).

use std::path::PathBuf;

use anyhow::Context;
use malt_config::{Config, DataSource};
use malt_plugins::{conformance, PluginSet, Runtime};

#[derive(clap::Args)]
pub struct Args {
    /// Config files to check.
    #[arg(required = true)]
    configs: Vec<PathBuf>,
    /// Only validate the configs and load the plugins; skip the conformance battery.
    #[arg(long)]
    no_battery: bool,
}

/// Up to `n` records of a dataset file (JSONL, JSON array or parquet), when it exists and reads.
pub fn sample_records(source: &DataSource, n: usize) -> Vec<String> {
    match source {
        DataSource::File(p) => malt_records::read_records(p)
            .map(|rs| rs.into_iter().take(n).map(|r| r.text).collect())
            .unwrap_or_default(),
        DataSource::Generate { .. } => Vec::new(),
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let runtime = Runtime::shared()?;
    let mut failed = Vec::new();
    for path in &args.configs {
        println!("== {}", path.display());
        let config = match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                println!("{e}");
                failed.push(path.display().to_string());
                continue;
            }
        };
        for w in &config.warnings {
            println!("warning: {w}");
        }
        println!(
            "config ok: run `{}`, {} agents ({}), hash {}",
            config.run.name,
            config.agents.len(),
            config
                .agents
                .iter()
                .map(|a| a.name.as_str())
                .collect::<Vec<_>>()
                .join(" -> "),
            &config.config_hash()[..16]
        );
        let set = match PluginSet::load(&runtime, &config)
            .with_context(|| format!("{}: loading plugins", path.display()))
        {
            Ok(s) => s,
            Err(e) => {
                println!("error: {e:#}");
                failed.push(path.display().to_string());
                continue;
            }
        };
        if args.no_battery {
            continue;
        }
        for (name, plugin) in set.iter() {
            let records = if *name == config.dataset.plugin {
                sample_records(&config.dataset.source, 20)
            } else {
                Vec::new()
            };
            let report = conformance::run(plugin, &records);
            println!("{report}");
            if !report.passed() {
                failed.push(format!("{} (plugin {name})", path.display()));
            }
        }
    }
    if failed.is_empty() {
        println!("all checks passed");
        Ok(())
    } else {
        anyhow::bail!("check failed: {}", failed.join(", "))
    }
}
