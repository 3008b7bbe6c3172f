//! The TOML as written (every key optional where it has a default), and its resolution into
//! [`Config`] with validation.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::locate::{Locator, Seg};
use crate::types::*;
use crate::Diagnostic;

mod scale_out;
mod study;
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
    loss: DpoLoss
});

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredit {
    theta: Option<f64>,
    pooling: Option<Pooling>,
    pairs: Option<Pairs>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEval {
    questions: Option<usize>,
    seeds: Option<Vec<u64>>,
    majority_k: Option<u32>,
    batch_questions: Option<usize>,
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
}

impl RawTrain {
    fn apply(&self, plan: &mut TrainPlan) {
        if let Some(m) = self.method {
            plan.method = m;
        }
        if let Some(l) = &self.lora {
            if let Some(v) = l.rank {
                plan.lora.rank = v;
            }
            if let Some(v) = l.alpha {
                plan.lora.alpha = v;
            }
            if let Some(v) = l.dropout {
                plan.lora.dropout = v;
            }
            if let Some(v) = &l.targets {
                plan.lora.targets = v.clone();
            }
        }
        if let Some(s) = &self.sft {
            s.apply_optim(&mut plan.sft.optim);
        }
        if let Some(d) = &self.dpo {
            d.apply_optim(&mut plan.dpo.optim);
            if let Some(v) = d.beta {
                plan.dpo.beta = v;
            }
            if let Some(v) = d.label_smoothing {
                plan.dpo.label_smoothing = v;
            }
            if let Some(v) = d.loss {
                plan.dpo.loss = v;
            }
        }
    }
}

/// The default training method of a prompt role, as in the MALT paper.
pub fn default_method(role: &str) -> Method {
    if role == "generator" {
        Method::Sft
    } else {
        Method::SftThenDpo
    }
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
    fn plan(&mut self, prefix: &[Seg<'static>], plan: &TrainPlan) {
        let p = |rest: &[&'static str]| -> Vec<Seg<'static>> {
            prefix
                .iter()
                .copied()
                .chain(rest.iter().map(|k| Seg::Key(k)))
                .collect()
        };
        self.positive(&p(&["lora", "rank"]), "lora.rank", plan.lora.rank);
        self.range(
            &p(&["lora", "dropout"]),
            "lora.dropout",
            plan.lora.dropout,
            0.0,
            0.99,
        );
        if !(plan.lora.alpha.is_finite() && plan.lora.alpha > 0.0) {
            self.err(&p(&["lora", "alpha"]), "lora.alpha must be > 0");
        }
        if plan.lora.targets.is_empty() {
            self.err(
                &p(&["lora", "targets"]),
                "lora.targets must name at least one module",
            );
        }
        for (table, o) in [("sft", &plan.sft.optim), ("dpo", &plan.dpo.optim)] {
            if !(o.lr.is_finite() && o.lr > 0.0 && o.lr < 1.0) {
                self.err(
                    &p(&[table, "lr"]),
                    format!("{table}.lr = {} is out of range: expected 0 < lr < 1", o.lr),
                );
            }
            self.positive(
                &p(&[table, "micro_batch"]),
                &format!("{table}.micro_batch"),
                o.micro_batch,
            );
            self.positive(
                &p(&[table, "grad_accum"]),
                &format!("{table}.grad_accum"),
                o.grad_accum,
            );
            self.positive(
                &p(&[table, "max_seq_len"]),
                &format!("{table}.max_seq_len"),
                o.max_seq_len,
            );
            if o.epochs == 0 && o.max_steps == 0 {
                self.err(
                    &p(&[table, "epochs"]),
                    format!("{table}: epochs and max_steps are both 0"),
                );
            }
            self.range(
                &p(&[table, "warmup_ratio"]),
                &format!("{table}.warmup_ratio"),
                o.warmup_ratio,
                0.0,
                1.0,
            );
            self.range(
                &p(&[table, "weight_decay"]),
                &format!("{table}.weight_decay"),
                o.weight_decay,
                0.0,
                1.0,
            );
            if !(o.max_grad_norm.is_finite() && o.max_grad_norm >= 0.0) {
                self.err(
                    &p(&[table, "max_grad_norm"]),
                    format!("{table}.max_grad_norm must be >= 0 (0 = no clipping)"),
                );
            }
        }
        if !(plan.dpo.beta.is_finite() && plan.dpo.beta > 0.0) {
            self.err(
                &p(&["dpo", "beta"]),
                format!("dpo.beta = {} must be > 0", plan.dpo.beta),
            );
        }
        self.range(
            &p(&["dpo", "label_smoothing"]),
            "dpo.label_smoothing",
            plan.dpo.label_smoothing,
            0.0,
            0.49,
        );
    }
}

pub(crate) fn resolve(raw: RawConfig, path: &Path, loc: &Locator<'_>) -> (Config, Vec<Diagnostic>) {
    use Seg::{Index as I, Key as K};
    let mut c = Checker {
        loc,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let base_dir = if base_dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        base_dir
    };
    let base_abs = std::path::absolute(&base_dir).unwrap_or(base_dir.clone());

    // [run]
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "run".into());
    let name = raw.run.name.unwrap_or(stem);
    if name.is_empty() || name.contains(['/', '\\']) {
        c.err(
            &[K("run"), K("name")],
            format!("run.name {name:?} must be non-empty and contain no path separator"),
        );
    }
    let run = Run {
        dir: match raw.run.dir {
            Some(d) => resolve_path(&base_abs, &d),
            None => PathBuf::from("runs").join(&name),
        },
        name,
        seed: raw.run.seed.unwrap_or(0),
    };

    // [model]
    let src = raw
        .model
        .source
        .unwrap_or_else(|| "smollm2-135m-instruct".into());
    let looks_like_path =
        src.contains(['/', '\\']) || src.ends_with(".gguf") || src.starts_with('.');
    let model = Model {
        source: if looks_like_path {
            ModelSource::Path(resolve_path(&base_abs, Path::new(&src)))
        } else {
            ModelSource::Named(src)
        },
        device: raw.model.device.unwrap_or_else(|| "cpu".into()),
        dtype: raw.model.dtype.unwrap_or_else(|| "f32".into()),
    };
    if !matches!(model.device.as_str(), "cpu" | "cuda" | "metal")
        && !model.device.starts_with("cuda:")
    {
        c.err(
            &[K("model"), K("device")],
            format!(
                "model.device {:?}: expected \"cpu\", \"cuda\", \"cuda:N\" or \"metal\"",
                model.device
            ),
        );
    }
    if !matches!(model.dtype.as_str(), "f32" | "f16" | "bf16") {
        c.err(
            &[K("model"), K("dtype")],
            format!(
                "model.dtype {:?}: expected \"f32\", \"f16\" or \"bf16\"",
                model.dtype
            ),
        );
    }

    // [plugins]
    let plugins: BTreeMap<String, PluginSpec> = raw
        .plugins
        .into_iter()
        .map(|(name, p)| {
            let spec = PluginSpec {
                name: name.clone(),
                path: p.path.map(|x| resolve_path(&base_abs, &x)),
                options: p.options,
            };
            (name, spec)
        })
        .collect();
    for (name, spec) in &plugins {
        if let Some(p) = &spec.path {
            if !p.exists() {
                c.warn(
                    &[K("plugins"), K(name), K("path")],
                    format!("plugin `{name}`: {} does not exist", p.display()),
                );
            }
        }
    }

    // [dataset]
    let d = raw.dataset;
    if !plugins.contains_key(&d.plugin) {
        c.err(
            &[K("dataset"), K("plugin")],
            unknown_plugin(&d.plugin, &plugins),
        );
    }
    let source = match (d.path, d.generate) {
        (Some(p), None) => {
            let p = resolve_path(&base_abs, &p);
            if !p.exists() {
                c.warn(
                    &[K("dataset"), K("path")],
                    format!("dataset file {} does not exist (yet)", p.display()),
                );
            }
            DataSource::File(p)
        }
        (None, Some(g)) => {
            if g.count == 0 {
                c.err(
                    &[K("dataset"), K("generate"), K("count")],
                    "dataset.generate.count must be at least 1",
                );
            }
            DataSource::Generate {
                seed: g.seed,
                count: g.count,
            }
        }
        (Some(_), Some(_)) => {
            c.err(
                &[K("dataset"), K("generate")],
                "dataset: give either `path` or `generate`, not both",
            );
            DataSource::Generate { seed: 0, count: 0 }
        }
        (None, None) => {
            c.err(
                &[K("dataset")],
                "dataset: give either `path` (a JSONL file) or `generate = { seed, count }`",
            );
            DataSource::Generate { seed: 0, count: 0 }
        }
    };
    let dataset = Dataset {
        plugin: d.plugin,
        source,
        train: d.train.unwrap_or(100),
        test: d.test.unwrap_or(100),
    };
    if let DataSource::Generate { count, .. } = dataset.source {
        if count > 0 && dataset.train + dataset.test > count as usize {
            c.err(
                &[K("dataset"), K("train")],
                format!(
                    "dataset: train ({}) + test ({}) exceeds generate.count ({count})",
                    dataset.train, dataset.test
                ),
            );
        }
    }
    if dataset.train == 0 && dataset.test == 0 {
        c.err(&[K("dataset")], "dataset: train and test are both 0");
    }

    // [sandbox]
    let dflt = Sandbox::default();
    let s = raw.sandbox;
    let sandbox = Sandbox {
        timeout_ms: s.timeout_ms.unwrap_or(dflt.timeout_ms),
        per_item_us: s.per_item_us.unwrap_or(dflt.per_item_us),
        memory_mib: s.memory_mib.unwrap_or(dflt.memory_mib),
        max_output_kib: s.max_output_kib.unwrap_or(dflt.max_output_kib),
        stderr_kib: s.stderr_kib.unwrap_or(dflt.stderr_kib),
        workers: s.workers.unwrap_or(dflt.workers),
    };
    c.positive(
        &[K("sandbox"), K("timeout_ms")],
        "sandbox.timeout_ms",
        sandbox.timeout_ms,
    );
    c.positive(
        &[K("sandbox"), K("max_output_kib")],
        "sandbox.max_output_kib",
        sandbox.max_output_kib,
    );
    c.positive(
        &[K("sandbox"), K("workers")],
        "sandbox.workers",
        sandbox.workers,
    );
    if !(1..=4096).contains(&sandbox.memory_mib) {
        c.err(
            &[K("sandbox"), K("memory_mib")],
            format!(
                "sandbox.memory_mib = {} is out of range: expected 1..=4096",
                sandbox.memory_mib
            ),
        );
    }

    // [credit]
    let credit = Credit {
        theta: raw.credit.theta.unwrap_or(0.5),
        pooling: raw.credit.pooling.unwrap_or(Pooling::Global),
        pairs: raw.credit.pairs.unwrap_or(Pairs::All),
    };
    c.range(
        &[K("credit"), K("theta")],
        "credit.theta",
        credit.theta,
        0.0,
        1.0,
    );

    // [[agents]]
    if raw.agents.is_empty() {
        c.err(
            &[K("agents")],
            "no agents: the chain needs at least one [[agents]] table",
        );
    }
    let mut seen = HashSet::new();
    let mut agents = Vec::new();
    for (i, a) in raw.agents.into_iter().enumerate() {
        let at = |k: &'static str| [K("agents"), I(i), K(k)];
        if a.name.is_empty() {
            c.err(&at("name"), "agent name must not be empty");
        } else if !seen.insert(a.name.clone()) {
            c.err(&at("name"), format!("duplicate agent name `{}`", a.name));
        }
        let role = a.role.unwrap_or_else(|| {
            a.name
                .trim_end_matches(|ch: char| ch.is_ascii_digit() || ch == '-')
                .to_string()
        });
        let plugin = a.plugin.unwrap_or_else(|| dataset.plugin.clone());
        if !plugins.contains_key(&plugin) && plugin != dataset.plugin {
            c.err(&at("plugin"), unknown_plugin(&plugin, &plugins));
        }
        let mut plan = TrainPlan {
            method: default_method(&role),
            lora: Lora::default(),
            sft: Sft::default(),
            dpo: Dpo::default(),
        };
        raw.train.apply(&mut plan);
        if let Some(t) = &a.train {
            t.apply(&mut plan);
        }
        let agent = Agent {
            name: a.name,
            role,
            plugin,
            branches: a.branches.unwrap_or(3),
            temperature: a.temperature.unwrap_or(0.3),
            top_p: a.top_p.unwrap_or(1.0),
            top_k: a.top_k.unwrap_or(0),
            max_new_tokens: a.max_new_tokens.unwrap_or(256),
            stop: a.stop.unwrap_or_default(),
            theta: a.theta.unwrap_or(credit.theta),
            train: plan,
        };
        c.positive(&at("branches"), "branches", agent.branches);
        c.positive(
            &at("max_new_tokens"),
            "max_new_tokens",
            agent.max_new_tokens,
        );
        c.range(
            &at("temperature"),
            "temperature",
            agent.temperature,
            0.0,
            5.0,
        );
        if !(agent.top_p.is_finite() && agent.top_p > 0.0 && agent.top_p <= 1.0) {
            c.err(
                &at("top_p"),
                format!(
                    "top_p = {} is out of range: expected 0 < top_p <= 1",
                    agent.top_p
                ),
            );
        }
        if a.theta.is_some() {
            c.range(&at("theta"), "theta", agent.theta, 0.0, 1.0);
        }
        if agent.role == "generator"
            && matches!(agent.train.method, Method::Dpo | Method::SftThenDpo)
        {
            c.warn(
                &[K("agents"), I(i), K("train"), K("method")],
                format!(
                    "agent `{}`: DPO on the generator differs from the MALT paper (generator: sft)",
                    agent.name
                ),
            );
        }
        if a.train.is_some() {
            c.plan(&[K("agents"), I(i), K("train")], &agent.train);
        } else {
            c.plan(&[K("train")], &agent.train);
        }
        agents.push(agent);
    }

    // [eval]
    let eval = Eval {
        questions: raw.eval.questions.unwrap_or(100),
        seeds: raw.eval.seeds.unwrap_or_else(|| vec![0, 1, 2, 3]),
        majority_k: raw.eval.majority_k.unwrap_or(3),
        batch_questions: raw.eval.batch_questions.unwrap_or(8),
        systems: resolve_systems(raw.eval.systems, &agents, &mut c),
    };
    c.positive(
        &[K("eval"), K("questions")],
        "eval.questions",
        eval.questions,
    );
    c.positive(
        &[K("eval"), K("majority_k")],
        "eval.majority_k",
        eval.majority_k,
    );
    c.positive(
        &[K("eval"), K("batch_questions")],
        "eval.batch_questions",
        eval.batch_questions,
    );
    if eval.seeds.is_empty() {
        c.err(
            &[K("eval"), K("seeds")],
            "eval.seeds must list at least one seed",
        );
    }

    let generation = resolve_generation(raw.generation, &agents, &mut c);
    let serve = resolve_serve(raw.serve, &mut c);
    let star = resolve_star(raw.star, &mut c);
    let rounds = resolve_rounds(raw.rounds, credit.theta, generation.backend, &mut c);

    let config = Config {
        source: path.to_path_buf(),
        base_dir: base_abs,
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
        generation,
        serve,
    };
    (config, c.errors)
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
