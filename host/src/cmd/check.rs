//! `malt check CONFIG...`: validate each config, build/load every plugin it names and run the
//! conformance battery on each; exit non-zero on any failure. A missing dataset file is a
//! warning (datasets are often user-provided and fetched later).

use std::path::PathBuf;

use anyhow::Context;
use malt_config::{Config, DataSource};
use malt_pipeline::memory_plan::{gib, Verdict};
use malt_plugins::{conformance, PluginSet, Runtime};

#[derive(clap::Args)]
pub struct Args {
    /// Config files to check.
    #[arg(required = true)]
    configs: Vec<PathBuf>,
    /// Only validate the configs and load the plugins; skip the conformance battery.
    #[arg(long)]
    no_battery: bool,
    /// Judge the memory prediction against a device of this many GiB instead of the local one
    /// (e.g. `--memory 80` for an 80 GB GPU, from a machine without it).
    #[arg(long, value_name = "GIB")]
    memory: Option<f64>,
    #[command(flatten)]
    model: super::ModelFlags,
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
    args.model.install()?;
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
        if !memory_fits(&config, args.memory) {
            failed.push(format!("{} (memory)", path.display()));
        }
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

/// Prints the device, dtype and predicted peak memory of each stage, and whether the largest
/// fits in the device's memory (or in `assumed_gib`, `--memory`). False only when that memory in
/// all is less than the run's predicted peak (a GPU config checked on a machine without one is
/// reported, not failed; one that exceeds only what is free now is a warning).
fn memory_fits(config: &Config, assumed_gib: Option<f64>) -> bool {
    let plan = match malt_pipeline::session::memory_plan(config) {
        Ok(Some(plan)) => plan,
        Ok(None) => {
            println!(
                "memory: not predicted: the embedded default model is fetched on first use \
                 (`malt run` fetches it, then `malt check` predicts)"
            );
            return true;
        }
        Err(e) => {
            println!("memory: not predicted: {e:#}");
            return true;
        }
    };
    print!("{}", plan.render());
    let Some(peak) = plan.peak() else {
        return true;
    };
    if let Some(gib_size) = assumed_gib {
        let bytes = (gib_size * (1u64 << 30) as f64) as u64;
        let memory = malt_model::DeviceMemory {
            free: bytes,
            total: bytes,
        };
        return report_verdict(
            &plan,
            memory,
            &format!("a {gib_size} GiB device (--memory)"),
        );
    }
    if std::env::var(malt_pipeline::memory_plan::SKIP_ENV).is_ok_and(|v| v == "off") {
        println!(
            "memory: not checked against this machine ({}=off)",
            malt_pipeline::memory_plan::SKIP_ENV
        );
        return true;
    }
    let device = match malt_model::parse_device(&config.model.device) {
        Ok(d) => d,
        Err(e) => {
            println!(
                "memory: the run needs {} free on {}; this machine cannot provide it: {e}",
                gib(peak.bytes),
                config.model.device
            );
            return true;
        }
    };
    match malt_model::device_memory(&device) {
        None => {
            println!("memory: free memory of {} unknown", config.model.device);
            true
        }
        Some(memory) => report_verdict(&plan, memory, &config.model.device),
    }
}

/// Prints the plan's verdict for `memory`; false when it does not fit at all.
fn report_verdict(
    plan: &malt_pipeline::memory_plan::MemoryPlan,
    memory: malt_model::DeviceMemory,
    on: &str,
) -> bool {
    let peak = plan.peak().map_or(0, |p| p.bytes);
    match plan.verdict(memory) {
        Verdict::Fits => {
            println!(
                "memory: fits on {on} ({} predicted, {} free of {})",
                gib(peak),
                gib(memory.free),
                gib(memory.total)
            );
            true
        }
        Verdict::Tight(why) => {
            println!("memory: fits on {on}, but not in what is free now: {why}");
            true
        }
        Verdict::Refused(why) => {
            println!("memory: does not fit on {on}: {why}");
            false
        }
    }
}
