//! What every stage of a run starts from: the loaded config, its plugins, the agent chain and
//! the credit settings, plus the question split. The CLI commands and `malt run` share it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use malt_config::{Config, DataSource};
use malt_plugins::{PluginSet, Runtime};
use malt_records::Position;
use malt_tree::{ChainSpec, CreditSettings, Example, Scorer};

use malt_engine::PluginScorer;

use crate::engine_config::{chain_from_config, credit_from_config, round_credit_of};

/// A config with its plugins loaded.
pub struct Session {
    pub config: Config,
    pub config_text: String,
    pub runtime: Arc<Runtime>,
    pub scorer: PluginScorer,
    pub chain: ChainSpec,
    pub credit: CreditSettings,
    /// Hot reload of `malt run` (None elsewhere): marks item boundaries, supplies new plugins.
    pub live: Option<Arc<crate::live_reload::LiveReload>>,
    /// Tokenizer fingerprints by model source, computed once each (see [`Session::model`]).
    fingerprints: std::sync::Mutex<BTreeMap<String, Option<String>>>,
    /// The question split, read once per config and plugin set (see [`Session::questions`]).
    split: Option<Split>,
}

impl Session {
    /// The chain and credit settings of `round` ([`round_credit_of`]).
    pub fn round_credit(&self, round: &malt_layout::RoundLayout) -> (ChainSpec, CreditSettings) {
        round_credit_of(&self.chain, self.credit, &self.config.rounds, round.round())
    }

    /// Loads and validates `path`, builds (when stale) and loads every plugin it names.
    pub fn open(path: &Path) -> anyhow::Result<Session> {
        let config = Config::load(path)?;
        for w in &config.warnings {
            tracing::warn!("{w}");
        }
        let config_text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let runtime = Runtime::shared()?;
        let plugins = PluginSet::load(&runtime, &config)
            .with_context(|| format!("{}: loading plugins", path.display()))?;
        let chain = chain_from_config(&config)?;
        let credit = credit_from_config(&config)?;
        Ok(Session {
            config,
            config_text,
            runtime,
            scorer: PluginScorer::new(plugins),
            chain,
            credit,
            live: None,
            fingerprints: Default::default(),
            split: None,
        })
    }

    /// [`malt_model::tokenizer::fingerprint`] of the config's model, read once per model source;
    /// `None` (with a warning) when its tokenizer cannot be read.
    pub fn tokenizer_fingerprint(&self) -> Option<String> {
        let source = model_id(&self.config);
        let mut cache = self.fingerprints.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .entry(source.clone())
            .or_insert_with(|| tokenizer_fingerprint(&source, &self.config.source))
            .clone()
    }

    /// Switches to a reloaded config and its plugins (at a stage boundary of `malt run`).
    pub fn apply(&mut self, config: &Config, plugins: PluginSet) -> anyhow::Result<()> {
        let chain = chain_from_config(config)?;
        let credit = credit_from_config(config)?;
        self.config_text = std::fs::read_to_string(&config.source)
            .with_context(|| format!("cannot read {}", config.source.display()))?;
        self.config = config.clone();
        self.chain = chain;
        self.credit = credit;
        self.scorer.replace(plugins);
        self.split = None;
        Ok(())
    }

    /// Content hash of every loaded plugin, by name, for the run manifest.
    pub fn plugin_hashes(&self) -> BTreeMap<String, String> {
        self.scorer
            .plugins()
            .iter()
            .map(|(name, p)| {
                (
                    name.clone(),
                    format!("{}@{} sha256:{}", p.info().name, p.version(), p.hash()),
                )
            })
            .collect()
    }

    /// The training and held-out questions of the config.
    ///
    /// Every question is read (or generated), then shuffled with a seeded Fisher-Yates
    /// (splitmix64 of `run.seed`) so that a file sorted by topic or difficulty still gives
    /// representative splits; the first `dataset.train` train and the next `dataset.test` test.
    /// With `dataset.test_path` the test split is that whole file, in file order (evaluation
    /// draws its seeded subsets from it), and a question in both is refused
    /// (see [`malt_tree::overlap`]).
    /// The split is read once and kept until a reload applies another config or plugin set.
    pub fn questions(&mut self) -> anyhow::Result<Split> {
        if let Some(split) = &self.split {
            return Ok(split.clone());
        }
        let split = self.read_questions()?;
        self.split = Some(split.clone());
        Ok(split)
    }

    fn read_questions(&mut self) -> anyhow::Result<Split> {
        let ds = self.config.dataset.clone();
        let plugin = ds.plugin.clone();
        let mut all: Vec<(Example, Option<Position>)> = match &ds.source {
            DataSource::File(path) => malt_tree::load_located(path, &plugin, &mut self.scorer)?
                .into_iter()
                .map(|(e, at)| (e, Some(at)))
                .collect(),
            DataSource::Generate { seed, count } => self
                .scorer
                .generate_examples(&plugin, *seed, *count)
                .map_err(|e| anyhow::anyhow!("plugin `{plugin}`: generate: {e}"))?
                .map_err(|e| anyhow::anyhow!("plugin `{plugin}` cannot generate examples: {e}"))?
                .into_iter()
                .map(|e| (e, None))
                .collect(),
        };
        if let Some(test_path) = &ds.test_source {
            let test = malt_tree::load_located(test_path, &plugin, &mut self.scorer)?;
            let overlap = malt_tree::find_overlap(&all, &test);
            if !overlap.is_empty() {
                anyhow::bail!(overlap_message(&self.config, test_path, &test, &overlap));
            }
            if all.len() < ds.train {
                anyhow::bail!(
                    "{}: [dataset] asks for train = {} questions but {} has {}; lower \
                     dataset.train or provide more data",
                    self.config.source.display(),
                    ds.train,
                    source_name(&ds.source),
                    all.len()
                );
            }
            shuffle(&mut all, self.config.run.seed);
            all.truncate(ds.train);
            return Ok(Split {
                train: all.into_iter().map(|(e, _)| e).collect(),
                test: test.into_iter().map(|(e, _)| e).collect(),
            });
        }
        let need = ds.train + ds.test;
        if all.len() < need {
            anyhow::bail!(
                "{}: [dataset] asks for train = {} + test = {} questions but the dataset has {}; \
                 lower the counts or provide more data",
                self.config.source.display(),
                ds.train,
                ds.test,
                all.len()
            );
        }
        let mut all: Vec<Example> = all.into_iter().map(|(e, _)| e).collect();
        shuffle(&mut all, self.config.run.seed);
        let test = all.split_off(ds.train).into_iter().take(ds.test).collect();
        Ok(Split { train: all, test })
    }
}

/// The training source, for messages.
fn source_name(source: &DataSource) -> String {
    match source {
        DataSource::File(p) => p.display().to_string(),
        DataSource::Generate { .. } => "the generated set (dataset.generate)".into(),
    }
}

/// Why a run with overlapping splits is refused, with the first few shared questions.
fn overlap_message(
    config: &Config,
    test_path: &Path,
    test: &[(Example, Position)],
    overlap: &[malt_tree::Overlap],
) -> String {
    const SHOWN: usize = 5;
    let train_name = source_name(&config.dataset.source);
    let mut msg = format!(
        "{}: {} of the {} questions of dataset.test_path ({}) are also training questions \
         ({train_name}): malt refuses to evaluate on questions it trains on. Same question = same \
         id, or the same text after lower-casing and collapsing whitespace. Remove them from one \
         file; the first {}:",
        config.source.display(),
        overlap.len(),
        test.len(),
        test_path.display(),
        overlap.len().min(SHOWN)
    );
    for o in overlap.iter().take(SHOWN) {
        let (j, at) = o.test;
        let train_at = match (&config.dataset.source, o.train.1) {
            (DataSource::File(p), Some(at)) => at.locate(p),
            _ => format!("generated question {}", o.train.0),
        };
        msg += &format!(
            "\n  {} = {train_at} (same {}; id {:?})",
            at.locate(test_path),
            o.by,
            test[j].0.id
        );
    }
    msg
}

/// Training and held-out questions.
#[derive(Debug, Clone)]
pub struct Split {
    pub train: Vec<Example>,
    pub test: Vec<Example>,
}

/// The question split's shuffle ([`malt_base::mix::shuffle`] from `seed` and its own stream).
fn shuffle<T>(items: &mut [T], seed: u64) {
    malt_base::mix::shuffle(items, seed ^ 0x6d61_6c74_2d73_706c); // "malt-spl"
}

/// The model identity of a config: the name or path it gives.
pub fn model_id(cfg: &Config) -> String {
    match &cfg.model.source {
        malt_config::ModelSource::Named(name) => name.clone(),
        malt_config::ModelSource::Path(p) => p.display().to_string(),
    }
}

/// [`malt_model::tokenizer::fingerprint`] of `source`'s tokenizer, or `None` (with a warning
/// naming `config`) when it cannot be read.
fn tokenizer_fingerprint(source: &str, config: &Path) -> Option<String> {
    let fp = malt_model::Model::load_tokenizer(source)
        .and_then(|(tok, chat)| malt_model::tokenizer::fingerprint(&tok, &chat));
    match fp {
        Ok(fp) => Some(fp),
        Err(e) => {
            tracing::warn!(
                "{}: [model] source = {source:?}: cannot read its tokenizer ({e}); the model is \
                 identified by its source only",
                config.display()
            );
            None
        }
    }
}

/// The git commit the `malt` binary was built from (`-dirty` with uncommitted changes).
pub const MALT_COMMIT: &str = env!("MALT_GIT_COMMIT");

/// sha256 of a file, remembered in `<cache>/sha256/` by path, size and modification time: the
/// weights of an 8B model would otherwise be read again (16 GB) at every `malt run`.
fn memoised_sha256_file(path: &Path) -> anyhow::Result<String> {
    use malt_base::hash::{sha256_file, sha256_hex};
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let stamp = format!(
        "{} {} {:?}",
        std::path::absolute(path)
            .unwrap_or_else(|_| path.to_owned())
            .display(),
        meta.len(),
        meta.modified().ok()
    );
    let memo = malt_model::fetch::cache_dir()
        .join("sha256")
        .join(sha256_hex(stamp.as_bytes()));
    if let Ok(known) = std::fs::read_to_string(&memo) {
        if known.len() == 64 && known.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(known);
        }
    }
    let sha = sha256_file(path).with_context(|| format!("cannot read {}", path.display()))?;
    // A memo that cannot be written only costs the hash again next time.
    if let Some(dir) = memo.parent() {
        if std::fs::create_dir_all(dir).is_ok() {
            let _ = malt_base::atomic::write_atomic(&memo, sha.as_bytes());
        }
    }
    Ok(sha)
}

/// sha256 of the model the config names, as stored: the GGUF file, or for a Hugging Face
/// directory the sha256 of its listing `<sha256> <name>` of every `.json`, `.safetensors` and
/// `.model` file, sorted by name. `None` when the file is not there (yet).
pub fn model_sha256(cfg: &Config) -> anyhow::Result<Option<String>> {
    let path = match &cfg.model.source {
        malt_config::ModelSource::Named(n)
            if n.eq_ignore_ascii_case(malt_model::fetch::DEFAULT_MODEL) =>
        {
            malt_model::fetch::smollm2_path()
        }
        malt_config::ModelSource::Named(_) => return Ok(None),
        malt_config::ModelSource::Path(p) => p.clone(),
    };
    if path.is_file() {
        return memoised_sha256_file(&path).map(Some);
    }
    if !path.is_dir() {
        return Ok(None);
    }
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(&path)
        .with_context(|| format!("cannot list {}", path.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("json" | "safetensors" | "model")
                )
        })
        .collect();
    files.sort();
    let mut listing = String::new();
    for f in &files {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        listing.push_str(&format!("{} {name}\n", memoised_sha256_file(f)?));
    }
    Ok(Some(malt_base::hash::sha256_hex(listing.as_bytes())))
}

/// The model a stage computes with, as its inputs name it: another checkpoint, `--dtype`,
/// `--device` or a tokenizer fix each change it, and with it every stage that uses the model.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModelIdentity {
    /// The source the config names: the embedded default's name, a directory or a .gguf.
    pub source: String,
    /// sha256 of the stored weights ([`model_sha256`]); `None` for a name malt cannot resolve
    /// to a file.
    pub weights_sha256: Option<String>,
    /// What the weights are held in ("f32", "bf16", "f16"), `auto` resolved for the device.
    pub dtype: String,
    /// "cpu", "cuda:0", ...
    pub device: String,
    /// [`malt_model::tokenizer::fingerprint`] of its tokenizer and chat template.
    pub tokenizer: Option<String>,
}

/// `f32`, `bf16` or `f16`.
fn dtype_name(d: malt_model::candle_core::DType) -> String {
    use malt_model::candle_core::DType;
    match d {
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        _ => "f32",
    }
    .to_owned()
}

impl Session {
    /// The identity of the config's model (reads its header, tokenizer and the weights' hash,
    /// cached; fetches the embedded default on first use).
    pub fn model(&self) -> anyhow::Result<ModelIdentity> {
        let cfg = &self.config;
        let source = model_id(cfg);
        let at = || format!("{}: [model]", cfg.source.display());
        // The tokenizer first: it fetches the embedded default when it is not there yet.
        let tokenizer = self.tokenizer_fingerprint();
        let device = cfg.model.device.trim().to_ascii_lowercase();
        let cpu = malt_model::parse_device(&device).with_context(at)?.is_cpu();
        let dtype = match cfg.model.dtype.as_str() {
            "auto" => {
                let stored = malt_model::Model::inspect(&source)
                    .with_context(at)?
                    .map(|(_, stored)| stored)
                    .unwrap_or(malt_model::candle_core::DType::F32);
                dtype_name(malt_model::default_dtype_for(cpu, stored))
            }
            d => dtype_name(malt_model::parse_dtype(d).with_context(at)?),
        };
        Ok(ModelIdentity {
            weights_sha256: model_sha256(cfg)?,
            source,
            dtype,
            device,
            tokenizer,
        })
    }
}

/// Loads the model `id` names, on its device, in its dtype.
pub fn load_identity(id: &ModelIdentity) -> anyhow::Result<malt_model::Model> {
    let device = malt_model::parse_device(&id.device)?;
    let dtype = malt_model::parse_dtype(&id.dtype)?;
    let t = std::time::Instant::now();
    let model = malt_model::Model::load_as(&id.source, &device, Some(dtype))
        .with_context(|| format!("loading model {}", id.source))?;
    tracing::info!(
        "weights held in {:?}, computing in {:?}",
        model.decoder.dtype(),
        model.decoder.activation_dtype()
    );
    tracing::info!(
        "loaded model {} in {:.1} s",
        id.source,
        t.elapsed().as_secs_f64()
    );
    Ok(model)
}

/// Refuses (before loading) a model whose predicted peak memory exceeds what the config's
/// device has: the check [`load_model`] makes, for callers that load by identity.
pub fn check_memory(cfg: &Config) -> anyhow::Result<()> {
    let device = malt_model::parse_device(&cfg.model.device)
        .with_context(|| format!("{}: [model] device", cfg.source.display()))?;
    refuse_what_cannot_fit(cfg, &model_id(cfg), &device)
}

/// Loads the config's base model on its device. Returns the model and its identity for the
/// run manifest (the name or path the config gives: a resumed run must use the same one).
pub fn load_model(cfg: &Config) -> anyhow::Result<(malt_model::Model, String)> {
    let id = model_id(cfg);
    let device = malt_model::parse_device(&cfg.model.device)
        .with_context(|| format!("{}: [model] device", cfg.source.display()))?;
    // "auto": the checkpoint's own dtype on a GPU, f32 on a CPU (see `malt_model::default_dtype`).
    let dtype = match cfg.model.dtype.as_str() {
        "auto" => None,
        d => Some(
            malt_model::parse_dtype(d)
                .with_context(|| format!("{}: [model] dtype", cfg.source.display()))?,
        ),
    };
    refuse_what_cannot_fit(cfg, &id, &device)?;
    let t = std::time::Instant::now();
    let model = malt_model::Model::load_as(&id, &device, dtype)
        .with_context(|| format!("{}: [model] source = {id:?}", cfg.source.display()))?;
    tracing::info!(
        "weights held in {:?}, computing in {:?}",
        model.decoder.dtype(),
        model.decoder.activation_dtype()
    );
    tracing::info!("loaded model {id} in {:.1} s", t.elapsed().as_secs_f64());
    Ok((model, id))
}

/// The memory plan of `cfg`'s stages, from the model's config and headers (no weights read).
/// None when the embedded default is not fetched yet.
pub fn memory_plan(cfg: &Config) -> anyhow::Result<Option<crate::memory_plan::MemoryPlan>> {
    let id = model_id(cfg);
    let Some((shape, stored)) = malt_model::Model::inspect(&id)
        .with_context(|| format!("{}: [model] source = {id:?}", cfg.source.display()))?
    else {
        return Ok(None);
    };
    crate::memory_plan::plan(cfg, &shape, stored).map(Some)
}

/// Refuses to load a model whose predicted peak (see [`crate::memory_plan`]) exceeds the free
/// memory `device` has at all (and warns when it exceeds what is free now), unless
/// `MALT_MEMORY_CHECK=off`.
fn refuse_what_cannot_fit(
    cfg: &Config,
    id: &str,
    device: &malt_model::candle_core::Device,
) -> anyhow::Result<()> {
    if std::env::var(crate::memory_plan::SKIP_ENV).is_ok_and(|v| v == "off") {
        return Ok(());
    }
    let (Some(plan), Some(memory)) = (memory_plan(cfg)?, malt_model::device_memory(device)) else {
        return Ok(());
    };
    if let Some(peak) = plan.peak() {
        tracing::info!(
            "predicted peak memory {} ({}); {} free of {} on {}",
            crate::memory_plan::gib(peak.bytes),
            peak.stage,
            crate::memory_plan::gib(memory.free),
            crate::memory_plan::gib(memory.total),
            plan.device
        );
    }
    match plan.verdict(memory) {
        crate::memory_plan::Verdict::Fits => Ok(()),
        crate::memory_plan::Verdict::Tight(why) => {
            tracing::warn!("{why}");
            Ok(())
        }
        crate::memory_plan::Verdict::Refused(why) => Err(anyhow::anyhow!(
            "{}: model {id}: {why}\n{}",
            cfg.source.display(),
            plan.render()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_is_a_deterministic_permutation() {
        let mut a: Vec<u32> = (0..100).collect();
        let mut b = a.clone();
        shuffle(&mut a, 7);
        shuffle(&mut b, 7);
        assert_eq!(a, b);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_ne!(a, (0..100).collect::<Vec<_>>());
        let mut c: Vec<u32> = (0..100).collect();
        shuffle(&mut c, 8);
        assert_ne!(a, c);
    }
}
