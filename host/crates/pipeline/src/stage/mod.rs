//! The stage contract of a round: generate -> credit -> train -> star -> online -> eval.
//!
//! Each stage (one module each) declares everything its work reads as one typed value,
//! [`Stage::Inputs`]: the config sections it uses, resolved (the chain, the credit settings,
//! each agent's training plan, ...), the model it computes with ([`ModelIdentity`]: source,
//! weights, dtype, device, tokenizer), the plugins' hashes, the upstream stages' outputs (as
//! hashes of their files) and the stage's own [`Stage::VERSION`]. [`Stage::run`] receives that
//! value and an [`Env`] (the plugins, the model named by an identity, the run's provenance),
//! never the config or the session: whatever a stage reads must be part of its inputs, or its
//! code does not compile. The stage record ([`record`]) keeps one hash per field of the inputs,
//! named as the field serialises, so a log line such as "generate: inputs changed (model),
//! recomputing" names what changed, and no list of inputs is kept by hand.
//!
//! `malt run` ([`crate::pipeline`]) and the standalone commands (`malt generate`, `credit`,
//! `train --round K`, `eval --round K`) run the same stage values through [`run_stage`], so they
//! judge and compute alike.

pub mod credit;
pub mod eval;
pub mod generate;
pub mod online;
pub mod record;
pub mod star;
pub mod train;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use malt_layout::RoundLayout;
use malt_model::Model;
use serde::Serialize;

use crate::live_reload::LiveReload;
use crate::session::{ModelIdentity, Session};
use malt_engine::PluginScorer;
use malt_tree::ChainSpec;
use record::{discard, tree_hash, Decision};

/// One stage of a round.
pub trait Stage {
    /// The name in logs, `--until` and `<round>/stages/<NAME>.json`.
    const NAME: &'static str;
    /// Bumped whenever the stage's code would compute other outputs from the same inputs: it is
    /// one of the inputs, so outputs of the old code are recomputed.
    const VERSION: u32;
    /// Everything [`Stage::run`] reads besides the files of the upstream stages, whose hashes
    /// it holds. Each field's serialised form is hashed into the stage record under the
    /// field's (serialised) name.
    type Inputs: Serialize;

    /// Whether the config asks for the stage at all (STaR only with a STaR system).
    fn wanted(_session: &Session) -> bool {
        true
    }

    /// The inputs now: what the config, the model, the plugins and the upstream outputs say.
    fn inputs(session: &mut Session, round: &RoundLayout) -> anyhow::Result<Self::Inputs>;

    /// Hash of what the stage produced.
    fn outputs(round: &RoundLayout) -> anyhow::Result<String>;

    /// Outputs that must not be reused when the stage is recomputed for `decision` (other
    /// inputs, or none on record): checkpoints, adapters, logged attempts, trees of another
    /// model.
    fn stale(_round: &RoundLayout, _decision: &Decision) -> Vec<PathBuf> {
        Vec::new()
    }

    /// Refusals before the stage runs (not called when it is current).
    fn check(_inputs: &Self::Inputs, _round: &RoundLayout) -> anyhow::Result<()> {
        Ok(())
    }

    /// The work, from its inputs alone.
    fn run(inputs: &Self::Inputs, env: &mut Env<'_>, round: &RoundLayout) -> anyhow::Result<()>;
}

/// What a stage's work may use besides its inputs: capabilities, not settings.
pub struct Env<'a> {
    /// The model a stage names by identity, loaded once.
    pub models: &'a mut Models,
    pub tools: Tools<'a>,
}

/// The plugins and the record-keeping a stage's work uses (apart from [`Models`], so that a
/// stage can hold its model and lend these out).
pub struct Tools<'a> {
    /// The plugins (hot-reloaded between trees and questions under `malt run`).
    pub scorer: &'a mut PluginScorer,
    pub live: Option<Arc<LiveReload>>,
    /// Written into manifests and reports for the record; never what a result is computed from.
    pub provenance: Provenance,
}

/// Facts a stage writes beside its results (manifests, reports, TensorBoard) so that they say
/// where they came from. Not part of any stage's inputs: an edited comment in the config must
/// not recompute anything.
#[derive(Debug, Clone)]
pub struct Provenance {
    /// The config file as given.
    pub config_path: PathBuf,
    /// Its text, verbatim.
    pub config_text: String,
    /// Its semantic hash (`Config::config_hash`).
    pub config_hash: String,
    /// Every loaded plugin: name -> "name@version sha256:HASH".
    pub plugins: BTreeMap<String, String>,
    /// The run directory (round 1's).
    pub run_dir: PathBuf,
}

impl Provenance {
    pub fn of(session: &Session) -> Provenance {
        Provenance {
            config_path: session.config.source.clone(),
            config_text: session.config_text.clone(),
            config_hash: session.config.config_hash(),
            plugins: session.plugin_hashes(),
            run_dir: session.config.run.dir.clone(),
        }
    }
}

/// The model of a run, loaded the first time a stage asks for it (a run whose stages are all
/// current never loads it) and again only when a stage names another identity.
#[derive(Default)]
pub struct Models {
    loaded: Option<(ModelIdentity, Model)>,
    /// Checked before the first load: the predicted peak memory of the config's stages.
    config: Option<malt_config::Config>,
}

impl Models {
    /// Models loaded without a memory check.
    pub fn new() -> Self {
        Self::default()
    }

    /// Models for the stages of `config`, whose memory plan is checked before a model loads.
    pub fn for_config(config: &malt_config::Config) -> Self {
        Models {
            loaded: None,
            config: Some(config.clone()),
        }
    }

    /// The model `id` names, on its device, in its dtype.
    pub fn get(&mut self, id: &ModelIdentity) -> anyhow::Result<&Model> {
        if self.loaded.as_ref().is_none_or(|(have, _)| have != id) {
            // The old one goes first: two models need not fit at once.
            self.loaded = None;
            if let Some(cfg) = &self.config {
                crate::session::check_memory(cfg)?;
            }
            let model = crate::session::load_identity(id)?;
            self.loaded = Some((id.clone(), model));
        }
        match &self.loaded {
            Some((_, m)) => Ok(m),
            None => anyhow::bail!("model not loaded"),
        }
    }
}

/// The stage record's inputs: one hash per field of `inputs` (under the field's serialised
/// name) and the stage's version.
pub fn named_hashes<T: Serialize>(
    inputs: &T,
    version: u32,
) -> anyhow::Result<BTreeMap<String, String>> {
    let v = serde_json::to_value(inputs)?;
    let serde_json::Value::Object(fields) = v else {
        anyhow::bail!("stage inputs must serialise to an object, got {v}");
    };
    let mut m: BTreeMap<String, String> = fields
        .into_iter()
        .map(|(k, v)| (k, malt_base::hash::sha256_hex(v.to_string().as_bytes())))
        .collect();
    m.insert("stage version".into(), version.to_string());
    Ok(m)
}

/// Judges stage `S` of `round` against its record and runs it unless it is current. Returns
/// the decision (for callers that report it).
pub fn run_stage<S: Stage>(
    session: &mut Session,
    models: &mut Models,
    round: &RoundLayout,
) -> anyhow::Result<Decision> {
    let inputs = S::inputs(session, round)?;
    let stage = record::StageRecord::new(round.dir(), S::NAME, named_hashes(&inputs, S::VERSION)?);
    let decision = stage.decide(|| S::outputs(round))?;
    tracing::info!("{}: {decision}", S::NAME);
    if decision == Decision::Current {
        return Ok(decision);
    }
    if matches!(decision, Decision::InputsChanged(_) | Decision::New) {
        for path in S::stale(round, &decision) {
            discard(&path)?;
        }
    }
    S::check(&inputs, round)?;
    stage.begin()?;
    let mut env = Env {
        tools: Tools {
            provenance: Provenance::of(session),
            live: session.live.clone(),
            scorer: &mut session.scorer,
        },
        models,
    };
    S::run(&inputs, &mut env, round)?;
    stage.finish(S::outputs(round)?)?;
    Ok(decision)
}

/// The hashes of the plugins `chain` uses.
pub fn chain_plugins(session: &Session, chain: &ChainSpec) -> BTreeMap<String, String> {
    let hashes = session.plugin_hashes();
    chain
        .agents
        .iter()
        .filter_map(|a| Some((a.plugin.clone(), hashes.get(&a.plugin)?.clone())))
        .collect()
}

/// The per-agent SFT/DPO sets (not the statistics, nor the trainer's reference caches).
pub fn datasets_hash(round: &RoundLayout) -> anyhow::Result<String> {
    tree_hash(&round.datasets(), &|p| {
        matches!(
            p.file_name().and_then(|n| n.to_str()),
            Some("sft.jsonl" | "dpo.jsonl")
        )
    })
}

/// The round's trained adapters.
pub fn adapters_hash(round: &RoundLayout) -> anyhow::Result<String> {
    tree_hash(&round.adapters(), &|_| true)
}

/// Every `[plugins.NAME]` table's options, by name (not its path: moving the project changes
/// no result).
pub fn plugin_options(cfg: &malt_config::Config) -> BTreeMap<String, BTreeMap<String, String>> {
    cfg.plugins
        .iter()
        .map(|(name, spec)| (name.clone(), spec.options.clone()))
        .collect()
}

/// The stage record's name for the model input (see [`ModelIdentity`]).
pub const MODEL_INPUT: &str = "model";
