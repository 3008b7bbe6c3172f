//! `malt run`: generate -> credit -> train -> eval, each stage skipped when its record in
//! `<run>/stages/` says its outputs are current, resumed when it was interrupted, recomputed
//! when an input changed (see [`crate::stages`]). One table ([`TABLE`]) says how each stage is
//! judged (inputs, outputs, what goes stale) and run. Hot reload ([`crate::live_reload`])
//! applies new plugins between trees and questions and a new config at stage boundaries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use malt_config::DataSource;
use malt_layout::RoundLayout;
use malt_model::Model;
use malt_tree::Scorer;

use crate::live_reload::LiveReload;
use crate::session::{self, Session};
use crate::stages::{discard, file_hash, json_hash, tree_hash, Decision, Stage};

pub struct Options {
    pub config: PathBuf,
    /// Stop after this stage (one of [`STAGES`]).
    pub until: String,
    /// Watch the config and plugins and apply valid edits while running.
    pub hot_reload: bool,
}

/// The model, loaded the first time a stage needs it: a run whose stages are all current
/// never loads it.
struct LazyModel {
    model: Option<Model>,
}

impl LazyModel {
    fn get(&mut self, cfg: &malt_config::Config) -> anyhow::Result<&Model> {
        if self.model.is_none() {
            self.model = Some(session::load_model(cfg)?.0);
        }
        self.model
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("model not loaded"))
    }
}

fn insert(map: &mut BTreeMap<String, String>, key: impl Into<String>, value: String) {
    map.insert(key.into(), value);
}

/// What the questions are: `[dataset]` without its resolved path (moving the project must not
/// look like a new dataset), plus the dataset file's content.
fn dataset_inputs(s: &Session, map: &mut BTreeMap<String, String>) -> anyhow::Result<()> {
    let ds = &s.config.dataset;
    let source = match &ds.source {
        DataSource::File(path) => serde_json::json!({ "file_sha256": file_hash(path)? }),
        DataSource::Generate { seed, count } => {
            serde_json::json!({ "generate_seed": seed, "generate_count": count })
        }
    };
    let v = serde_json::json!({
        "plugin": ds.plugin, "train": ds.train, "test": ds.test, "source": source,
        "run_seed": s.config.run.seed,
    });
    insert(map, "config [dataset] and run seed", json_hash(&v));
    Ok(())
}

fn plugin_inputs(s: &Session, map: &mut BTreeMap<String, String>) {
    for (name, hash) in s.plugin_hashes() {
        insert(
            map,
            format!("plugin {name}"),
            crate::stages::sha256(hash.as_bytes()),
        );
    }
    insert(
        map,
        "config [plugins] options",
        json_hash(&s.config.plugins),
    );
}

fn generate_inputs(s: &Session) -> anyhow::Result<BTreeMap<String, String>> {
    let mut m = BTreeMap::new();
    insert(
        &mut m,
        "chain shape and sampling",
        crate::stages::sha256(s.chain.generation_fingerprint().as_bytes()),
    );
    insert(
        &mut m,
        "model",
        crate::stages::sha256(session::model_id(&s.config).as_bytes()),
    );
    dataset_inputs(s, &mut m)?;
    Ok(m)
}

fn credit_inputs(s: &Session, trees: String) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    insert(&mut m, "trees.jsonl", trees);
    insert(&mut m, "config [credit]", json_hash(&s.config.credit));
    let thetas: Vec<(&str, Option<f64>)> = s
        .chain
        .agents
        .iter()
        .map(|a| (a.name.as_str(), a.theta))
        .collect();
    insert(&mut m, "agents theta", json_hash(&thetas));
    plugin_inputs(s, &mut m);
    m
}

fn train_inputs(s: &Session, datasets: String) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    insert(&mut m, "datasets", datasets);
    for a in &s.config.agents {
        insert(
            &mut m,
            format!("config train of agent {}", a.name),
            json_hash(&a.train),
        );
    }
    insert(
        &mut m,
        "model",
        crate::stages::sha256(session::model_id(&s.config).as_bytes()),
    );
    insert(&mut m, "run seed", json_hash(&s.config.run.seed));
    m
}

fn eval_inputs(s: &Session, adapters: String) -> anyhow::Result<BTreeMap<String, String>> {
    let mut m = BTreeMap::new();
    insert(&mut m, "adapters", adapters);
    insert(&mut m, "config [eval]", json_hash(&s.config.eval));
    insert(
        &mut m,
        "chain shape and sampling",
        crate::stages::sha256(s.chain.generation_fingerprint().as_bytes()),
    );
    insert(
        &mut m,
        "model",
        crate::stages::sha256(session::model_id(&s.config).as_bytes()),
    );
    dataset_inputs(s, &mut m)?;
    plugin_inputs(s, &mut m);
    Ok(m)
}

fn trees_hash(run: &Path) -> anyhow::Result<String> {
    file_hash(&RoundLayout::at(run).trees())
}

/// The per-agent SFT/DPO sets (not the statistics, nor the trainer's reference caches).
fn datasets_hash(run: &Path) -> anyhow::Result<String> {
    tree_hash(&RoundLayout::at(run).datasets(), &|p: &Path| {
        matches!(
            p.file_name().and_then(|n| n.to_str()),
            Some("sft.jsonl" | "dpo.jsonl")
        )
    })
}

fn adapters_hash(run: &Path) -> anyhow::Result<String> {
    tree_hash(&RoundLayout::at(run).adapters(), &|_: &Path| true)
}

fn eval_hash(run: &Path) -> anyhow::Result<String> {
    tree_hash(&RoundLayout::at(run).eval(), &|_: &Path| true)
}

/// Refuses to mix trees of two question sets: every stored tree must belong to the current
/// training split (a different dataset, split size or seed selects other questions).
fn check_trees_match_split(s: &mut Session) -> anyhow::Result<()> {
    let run = s.config.run.dir.clone();
    let path = RoundLayout::at(&run).trees();
    if !path.exists() {
        return Ok(());
    }
    let stored = malt_tree::read_trees(&path)?;
    let split = s.questions()?;
    let train: std::collections::HashSet<&str> =
        split.train.iter().map(|e| e.id.as_str()).collect();
    let foreign: Vec<&str> = stored
        .trees
        .iter()
        .map(|t| t.question_id.as_str())
        .filter(|id| !train.contains(id))
        .collect();
    if let Some(first) = foreign.first() {
        anyhow::bail!(
            "{}: {} stored tree(s) (e.g. question {first:?}) are not in the training split of \
             {} ([dataset] or run seed changed since they were generated); refusing to mix two \
             question sets: use a new run directory ([run] dir) or restore the old [dataset]",
            path.display(),
            foreign.len(),
            s.config.source.display()
        );
    }
    Ok(())
}

/// At a stage boundary: apply a newer valid config and plugin set, if the reloader has one.
fn apply_reload(ctx: &mut Ctx, stage: &str) -> anyhow::Result<()> {
    if let Some(loaded) = ctx.live.as_ref().and_then(|l| l.at_stage(stage)) {
        ctx.s.apply(&loaded.config, loaded.plugins.clone())?;
    }
    Ok(())
}

/// What the stages share while the pipeline runs.
struct Ctx {
    s: Session,
    live: Option<Arc<LiveReload>>,
    model: LazyModel,
}

/// One row of the stage table: how `malt run` judges and runs a stage.
struct StageDef {
    name: &'static str,
    /// What the stage is computed from now; includes the previous stage's outputs.
    inputs: fn(&mut Ctx, &RoundLayout) -> anyhow::Result<BTreeMap<String, String>>,
    /// Hash of what the stage produced.
    outputs: fn(&RoundLayout) -> anyhow::Result<String>,
    /// Outputs that must not be reused when the stage is recomputed from other inputs (or from
    /// none on record): checkpoints, adapters, logged attempts.
    stale: fn(&RoundLayout) -> Vec<PathBuf>,
    /// Checks before the stage runs (not called when it is current).
    check: fn(&mut Ctx, &RoundLayout) -> anyhow::Result<()>,
    /// The work.
    run: fn(&mut Ctx, &RoundLayout) -> anyhow::Result<()>,
}

fn no_check(_: &mut Ctx, _: &RoundLayout) -> anyhow::Result<()> {
    Ok(())
}

/// The stages in order.
const TABLE: [StageDef; 4] = [
    StageDef {
        name: "generate",
        inputs: |ctx, _| generate_inputs(&ctx.s),
        outputs: |r| trees_hash(r.dir()),
        // Trees are never discarded: a run with other questions is refused instead.
        stale: |_| Vec::new(),
        check: |ctx, _| check_trees_match_split(&mut ctx.s),
        run: |ctx, _| {
            // The remote backend samples over HTTP: the model is not loaded for it.
            let model = &mut ctx.model;
            crate::generate::generate_configured(&mut ctx.s, move |cfg| {
                Ok((model.get(cfg)?, session::model_id(cfg)))
            })
            .map(drop)
        },
    },
    StageDef {
        name: "credit",
        inputs: |ctx, r| Ok(credit_inputs(&ctx.s, trees_hash(r.dir())?)),
        outputs: |r| datasets_hash(r.dir()),
        stale: |_| Vec::new(),
        check: no_check,
        run: |ctx, r| {
            let s = &mut ctx.s;
            let report = malt_tree::recredit(
                r.dir(),
                &s.chain,
                &s.credit,
                Some(&mut s.scorer as &mut dyn Scorer),
            )?;
            print!("{}", report.stats.table());
            Ok(())
        },
    },
    StageDef {
        name: "train",
        inputs: |ctx, r| Ok(train_inputs(&ctx.s, datasets_hash(r.dir())?)),
        outputs: |r| adapters_hash(r.dir()),
        // Checkpoints and adapters of other data or settings (or of unknown origin: a
        // standalone `malt train`) must not be resumed or evaluated.
        stale: |r| vec![r.train(), r.adapters()],
        check: no_check,
        run: |ctx, _| {
            let m = ctx.model.get(&ctx.s.config)?;
            let id = session::model_id(&ctx.s.config);
            crate::train::train_agents(&ctx.s.config, m, &id, None, true).map(drop)
        },
    },
    StageDef {
        name: "eval",
        inputs: |ctx, r| eval_inputs(&ctx.s, adapters_hash(r.dir())?),
        outputs: |r| eval_hash(r.dir()),
        // Logged attempts of other adapters, plugins or settings (or of unknown origin) would
        // be mixed into the report.
        stale: |r| vec![r.eval()],
        check: no_check,
        run: |ctx, _| {
            let m = ctx.model.get(&ctx.s.config)?;
            let report = crate::evaluate::evaluate(&mut ctx.s, m)?;
            print!("{}", malt_eval::render_markdown(&report));
            Ok(())
        },
    },
];

/// The stages in order, by name.
pub const STAGES: [&str; 4] = [TABLE[0].name, TABLE[1].name, TABLE[2].name, TABLE[3].name];

/// Judges one stage against its record and runs it unless it is current.
fn run_stage(ctx: &mut Ctx, def: &StageDef, round: &RoundLayout) -> anyhow::Result<()> {
    let stage = Stage::new(round.dir(), def.name, (def.inputs)(ctx, round)?);
    let decision = stage.decide(|| (def.outputs)(round))?;
    tracing::info!("{}: {decision}", stage.name);
    if decision == Decision::Current {
        return Ok(());
    }
    if matches!(decision, Decision::InputsChanged(_) | Decision::New) {
        for path in (def.stale)(round) {
            discard(&path)?;
        }
    }
    (def.check)(ctx, round)?;
    stage.begin()?;
    (def.run)(ctx, round)?;
    stage.finish((def.outputs)(round)?)
}

/// The whole pipeline.
pub fn run(opts: &Options) -> anyhow::Result<()> {
    let start = Instant::now();
    // One absolute path for the session and the reloader, so both resolve relative paths alike.
    let config_path = std::path::absolute(&opts.config)
        .with_context(|| format!("bad config path {}", opts.config.display()))?;
    let mut s = Session::open(&config_path)?;
    let live = if opts.hot_reload {
        let l = LiveReload::start(s.runtime.clone(), &config_path, &s.config)
            .context("starting hot reload (pass --no-reload to run without it)")?;
        s.scorer.follow(Some(l.clone()));
        s.live = Some(l.clone());
        Some(l)
    } else {
        None
    };
    if !STAGES.contains(&opts.until.as_str()) {
        anyhow::bail!(
            "unknown stage {:?} (stages: {})",
            opts.until,
            STAGES.join(", ")
        );
    }
    let round = RoundLayout::at(&s.config.run.dir);
    let mut ctx = Ctx {
        s,
        live,
        model: LazyModel { model: None },
    };
    for (i, def) in TABLE.iter().enumerate() {
        tracing::info!("== {} ({:.0} s)", def.name, start.elapsed().as_secs_f64());
        // The config the run started with applies to the first stage; edits from then on at
        // each boundary.
        if i > 0 {
            apply_reload(&mut ctx, def.name)?;
        }
        run_stage(&mut ctx, def, &round)?;
        if def.name == opts.until {
            return Ok(());
        }
    }
    tracing::info!(
        "done in {:.1} s; report in {}",
        start.elapsed().as_secs_f64(),
        round.eval().display()
    );
    Ok(())
}
