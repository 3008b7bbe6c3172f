//! The TOML as written (every key optional where it has a default), and its resolution into
//! [`Config`].
//!
//! [`resolve`] goes section by section, in file order. Each section's `resolve_*` fills in the
//! defaults and makes paths absolute, then its `check_*` validates the resolved values and
//! points each finding at the key's position in the file. The sections live in submodules:
//! `setup` ([run], [model], [plugins], [sandbox]), `dataset`, `chain` ([credit], [[agents]],
//! [train]), `evaluation` ([eval]) and `scale_out` ([generation], [serve]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::locate::{Locator, Seg};
use crate::types::*;
use crate::Diagnostic;

mod chain;
mod dataset;
mod evaluation;
mod online;
mod scale_out;
mod setup;
mod study;
use online::{resolve_online, RawOnline};
use scale_out::{resolve_generation, resolve_serve};
pub use study::default_systems;
use study::{resolve_rounds, resolve_star, resolve_systems, RawRounds, RawStar};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    run: RawRun,
    #[serde(default)]
    model: RawModel,
    dataset: RawDataset,
    #[serde(default)]
    plugins: BTreeMap<String, RawPlugin>,
    #[serde(default)]
    sandbox: RawSandbox,
    #[serde(default)]
    agents: Vec<RawAgent>,
    #[serde(default)]
    credit: RawCredit,
    #[serde(default)]
    train: RawTrain,
    #[serde(default)]
    eval: RawEval,
    #[serde(default)]
    star: RawStar,
    #[serde(default)]
    rounds: RawRounds,
    online: Option<RawOnline>,
    #[serde(default)]
    generation: RawGeneration,
    #[serde(default)]
    serve: RawServe,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServe {
    addr: Option<String>,
    allow_remote: Option<bool>,
    max_n: Option<usize>,
    max_tokens: Option<usize>,
    max_body_bytes: Option<usize>,
    max_queue: Option<usize>,
    request_timeout_s: Option<f64>,
    batch: Option<bool>,
    api_key_env: Option<String>,
    continuous: Option<bool>,
    max_batch: Option<usize>,
    read_timeout_s: Option<f64>,
    keep_alive_s: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRun {
    name: Option<String>,
    seed: Option<u64>,
    dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    source: Option<String>,
    device: Option<String>,
    dtype: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGenerate {
    #[serde(default)]
    seed: u64,
    count: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDataset {
    plugin: String,
    path: Option<PathBuf>,
    generate: Option<RawGenerate>,
    test_path: Option<PathBuf>,
    train: Option<usize>,
    test: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlugin {
    path: Option<PathBuf>,
    #[serde(default)]
    options: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSandbox {
    timeout_ms: Option<u64>,
    per_item_us: Option<u64>,
    memory_mib: Option<u64>,
    max_output_kib: Option<u64>,
    stderr_kib: Option<u64>,
    workers: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    name: String,
    role: Option<String>,
    plugin: Option<String>,
    branches: Option<u32>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<u32>,
    max_new_tokens: Option<u32>,
    stop: Option<Vec<String>>,
    theta: Option<f64>,
    train: Option<RawTrain>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrain {
    method: Option<Method>,
    gradient_checkpointing: Option<bool>,
    lora: Option<RawLora>,
    sft: Option<RawSft>,
    dpo: Option<RawDpo>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLora {
    rank: Option<u32>,
    alpha: Option<f64>,
    dropout: Option<f64>,
    targets: Option<Vec<String>>,
}

macro_rules! optim_table {
    ($name:ident { $($extra:ident : $ety:ty),* $(,)? }) => {
        #[derive(Debug, Default, Clone, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct $name {
            $($extra: Option<$ety>,)*
            lr: Option<f64>,
            epochs: Option<u32>,
            max_steps: Option<u32>,
            micro_batch: Option<u32>,
            grad_accum: Option<u32>,
            max_seq_len: Option<u32>,
            warmup_ratio: Option<f64>,
            schedule: Option<Schedule>,
            weight_decay: Option<f64>,
            max_grad_norm: Option<f64>,
            save_every: Option<u32>,
        }
        impl $name {
            fn apply_optim(&self, o: &mut Optim) {
                if let Some(v) = self.lr { o.lr = v; }
                if let Some(v) = self.epochs { o.epochs = v; }
                if let Some(v) = self.max_steps { o.max_steps = v; }
                if let Some(v) = self.micro_batch { o.micro_batch = v; }
                if let Some(v) = self.grad_accum { o.grad_accum = v; }
                if let Some(v) = self.max_seq_len { o.max_seq_len = v; }
                if let Some(v) = self.warmup_ratio { o.warmup_ratio = v; }
                if let Some(v) = self.schedule { o.schedule = v; }
                if let Some(v) = self.weight_decay { o.weight_decay = v; }
                if let Some(v) = self.max_grad_norm { o.max_grad_norm = v; }
                if let Some(v) = self.save_every { o.save_every = v; }
            }
        }
    };
}

optim_table!(RawSft {});
optim_table!(RawDpo {
    beta: f64,
    label_smoothing: f64,
    loss: DpoLoss,
    lora_dropout: bool
});

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredit {
    theta: Option<f64>,
    pooling: Option<Pooling>,
    pairs: Option<Pairs>,
    truncated: Option<Truncated>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEval {
    questions: Option<usize>,
    seeds: Option<Vec<u64>>,
    majority_k: Option<u32>,
    batch_questions: Option<usize>,
    std: Option<malt_base::StdConvention>,
    /// Strings and tables: parsed in `study` for messages that point at the entry.
    systems: Option<Vec<toml::Value>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGeneration {
    backend: Option<Backend>,
    #[serde(default)]
    endpoints: Vec<RawEndpoint>,
    model: Option<String>,
    #[serde(default)]
    models: BTreeMap<String, String>,
    retries: Option<u32>,
    backoff_ms: Option<u64>,
    max_backoff_s: Option<f64>,
    max_wait_s: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    url: String,
    api_key_env: Option<String>,
    /// Accepted only to refuse it with a pointer to `api_key_env`: a key in a config file ends
    /// up in run manifests and version control.
    api_key: Option<toml::Value>,
    max_concurrency: Option<usize>,
    timeout_s: Option<f64>,
    connect_timeout_s: Option<f64>,
    malt_seeds: Option<bool>,
    engine: Option<EngineKind>,
    adapter_root: Option<String>,
}

fn resolve_path(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

struct Checker<'a, 't> {
    loc: &'a Locator<'t>,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

impl Checker<'_, '_> {
    fn err(&mut self, path: &[Seg<'_>], message: impl Into<String>) {
        self.errors.push(Diagnostic {
            location: self.loc.at(path),
            message: message.into(),
        });
    }
    fn warn(&mut self, path: &[Seg<'_>], message: impl Into<String>) {
        self.warnings.push(Diagnostic {
            location: self.loc.at(path),
            message: message.into(),
        });
    }
    fn range(&mut self, path: &[Seg<'_>], name: &str, v: f64, lo: f64, hi: f64) {
        if !(v.is_finite() && v >= lo && v <= hi) {
            self.err(
                path,
                format!("{name} = {v} is out of range: expected a value in [{lo}, {hi}]"),
            );
        }
    }
    /// A credit threshold: in [0, 1], and below 1. A node is positive when its value is
    /// greater than theta and values never exceed 1, so theta = 1 would leave every node
    /// negative and every agent untrained, which must not pass silently as a trained run.
    fn theta(&mut self, path: &[Seg<'_>], name: &str, key: &str, v: f64) {
        if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
            self.range(path, name, v, 0.0, 1.0);
        } else if v >= 1.0 {
            self.err(
                path,
                format!(
                    "{key} = {v} labels no node positive: a node is positive when its value is \
                     greater than theta, and values never exceed 1, so no agent would be trained; \
                     use a value below 1 (the paper uses 0.5; [rounds] theta may rise towards 1 \
                     but stay below it)"
                ),
            );
        }
    }
    fn positive<T: PartialEq + Default + std::fmt::Display>(
        &mut self,
        path: &[Seg<'_>],
        name: &str,
        v: T,
    ) {
        if v == T::default() {
            self.err(path, format!("{name} must be at least 1"));
        }
    }
}

pub(crate) fn resolve(raw: RawConfig, path: &Path, loc: &Locator<'_>) -> (Config, Vec<Diagnostic>) {
    let mut c = Checker {
        loc,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let base_dir = config_dir(path);
    let run = setup::resolve_run(raw.run, path, &base_dir, &mut c);
    let model = setup::resolve_model(raw.model, &base_dir, &mut c);
    let plugins = setup::resolve_plugins(raw.plugins, &base_dir, &mut c);
    let dataset = dataset::resolve_dataset(raw.dataset, &plugins, &base_dir, &mut c);
    let sandbox = setup::resolve_sandbox(raw.sandbox, &mut c);
    let credit = chain::resolve_credit(raw.credit, &mut c);
    let agents = chain::resolve_agents(raw.agents, &raw.train, &dataset, &plugins, &credit, &mut c);
    let star = resolve_star(raw.star, &mut c);
    let eval = evaluation::resolve_eval(raw.eval, &agents, star.data, &mut c);
    let generation = resolve_generation(raw.generation, &agents, &mut c);
    let serve = resolve_serve(raw.serve, &mut c);
    let rounds = resolve_rounds(raw.rounds, credit.theta, &generation, &mut c);
    let online = resolve_online(raw.online, &agents, &generation, rounds.count, &mut c);
    if online.is_none() {
        if let Some(i) = eval
            .systems
            .iter()
            .position(|s| s.kind == SystemKind::Online)
        {
            c.err(
                &[Seg::Key("eval"), Seg::Key("systems"), Seg::Index(i)],
                "eval.systems has \"online\" but the config has no [online] table: add one \
                 (and run `malt online` before the evaluation)",
            );
        }
    }

    let config = Config {
        source: path.to_path_buf(),
        base_dir,
        warnings: c.warnings,
        run,
        model,
        dataset,
        plugins,
        sandbox,
        agents,
        credit,
        eval,
        star,
        rounds,
        online,
        generation,
        serve,
    };
    (config, c.errors)
}

/// The absolute directory of the config file: relative paths in it resolve against this.
fn config_dir(path: &Path) -> PathBuf {
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let dir = if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir
    };
    std::path::absolute(&dir).unwrap_or(dir)
}

fn unknown_plugin(name: &str, plugins: &BTreeMap<String, PluginSpec>) -> String {
    let known: Vec<&str> = plugins.keys().map(String::as_str).collect();
    format!(
        "unknown plugin `{name}`: declare it with a [plugins.{name}] table (declared: {})",
        if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        }
    )
}
