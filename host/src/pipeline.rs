//! `malt run`: generate -> credit -> train -> star -> eval, for each round of `[rounds]`; each
//! stage skipped when its record in `<round>/stages/` says its outputs are current, resumed when
//! it was interrupted, recomputed when an input changed (see [`crate::stages`]). One table
//! ([`TABLE`]) says how each stage is judged and run. Hot reload ([`crate::live_reload`])
//! applies new plugins between trees and questions and a new config at stage boundaries.
//!
//! Round k (>= 2) samples its trees with round k-1's adapters and trains fresh adapters from the
//! base model on them (as STaR restarts from the base model each iteration); its STaR samples
//! come from round k-1's STaR model. Every round keeps its own trees, datasets, adapters and
//! report (`malt_layout`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use malt_config::DataSource;
use malt_layout::{RoundLayout, RunLayout};
use malt_model::Model;
use malt_tree::Scorer;

use crate::live_reload::LiveReload;
use crate::session::{self, Session};
use crate::stages::{discard, file_hash, json_hash, tree_hash, Decision, Stage};

pub struct Options {
    pub config: PathBuf,
    /// Stop after this stage: `STAGE` (one of [`STAGES`], round 1) or `STAGE@K` (round K).
    pub until: Option<String>,
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

/// The input naming the model: its source and tokenizer fingerprint.
const MODEL_INPUT: &str = "model";

fn insert(map: &mut BTreeMap<String, String>, key: impl Into<String>, value: String) {
    map.insert(key.into(), value);
}

/// What the questions are: `[dataset]` without its resolved paths (moving the project must not
/// look like a new dataset), plus the dataset files' contents.
fn dataset_inputs(s: &Session, map: &mut BTreeMap<String, String>) -> anyhow::Result<()> {
    let ds = &s.config.dataset;
    let source = match &ds.source {
        DataSource::File(path) => serde_json::json!({ "file_sha256": file_hash(path)? }),
        DataSource::Generate { seed, count } => {
            serde_json::json!({ "generate_seed": seed, "generate_count": count })
        }
    };
    let mut v = serde_json::json!({
        "plugin": ds.plugin, "train": ds.train, "test": ds.test, "source": source,
        "run_seed": s.config.run.seed,
    });
    // Only present with a test file, so runs without one keep their recorded inputs.
    if let Some(test) = &ds.test_source {
        v["test_file_sha256"] = serde_json::Value::String(file_hash(test)?);
    }
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
        MODEL_INPUT,
        crate::stages::sha256(s.model_identity().as_bytes()),
    );
    dataset_inputs(s, &mut m)?;
    Ok(m)
}

fn credit_inputs(s: &Session, round: &RoundLayout, trees: String) -> BTreeMap<String, String> {
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
    if let Some(theta) = s.config.rounds.theta_of(round.round()) {
        insert(&mut m, "round theta", json_hash(&theta));
    }
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
        MODEL_INPUT,
        crate::stages::sha256(s.model_identity().as_bytes()),
    );
    insert(&mut m, "run seed", json_hash(&s.config.run.seed));
    m
}

fn star_inputs(s: &Session, round: &RoundLayout) -> anyhow::Result<BTreeMap<String, String>> {
    let cfg = &s.config;
    let mut m = BTreeMap::new();
    insert(&mut m, "config [star]", json_hash(&cfg.star));
    let chain = crate::star::star_chain(cfg, &s.chain)?;
    insert(
        &mut m,
        "STaR chain and sampling",
        crate::stages::sha256(chain.generation_fingerprint().as_bytes()),
    );
    if let Some(first) = cfg.agents.first() {
        insert(
            &mut m,
            "config train of the first agent",
            json_hash(&first.train),
        );
    }
    insert(
        &mut m,
        MODEL_INPUT,
        crate::stages::sha256(s.model_identity().as_bytes()),
    );
    insert(
        &mut m,
        "round seed",
        json_hash(&round_seed(cfg.run.seed, round.round())),
    );
    insert(
        &mut m,
        "optimiser steps",
        json_hash(&crate::star::star_steps(cfg, round)?),
    );
    match cfg.star.data {
        malt_config::StarData::Trees => insert(&mut m, "trees.jsonl", trees_hash(round.dir())?),
        malt_config::StarData::Sample if round.round() > 1 => {
            let prev = RunLayout::new(&cfg.run.dir).round(round.round() - 1).star();
            insert(
                &mut m,
                "previous round's STaR adapter",
                tree_hash(&prev.adapters(), &|_: &Path| true)?,
            );
        }
        malt_config::StarData::Sample => {}
    }
    dataset_inputs(s, &mut m)?;
    plugin_inputs(s, &mut m);
    Ok(m)
}

fn eval_inputs(
    s: &Session,
    round: &RoundLayout,
    adapters: String,
) -> anyhow::Result<BTreeMap<String, String>> {
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
        MODEL_INPUT,
        crate::stages::sha256(s.model_identity().as_bytes()),
    );
    if uses_star(s) {
        insert(
            &mut m,
            "STaR adapter",
            tree_hash(&round.star().adapters(), &|_: &Path| true)?,
        );
    }
    if s.config.rounds.count > 1 {
        // The by-round table reads the earlier rounds' reports.
        let run = RunLayout::new(&s.config.run.dir);
        let mut earlier = String::new();
        for k in 1..round.round() {
            earlier.push_str(&file_hash(
                &run.round(k).eval().join(malt_eval::report::REPORT_JSON),
            )?);
        }
        insert(
            &mut m,
            "earlier rounds' reports",
            crate::stages::sha256(earlier.as_bytes()),
        );
        insert(&mut m, "config [rounds]", json_hash(&s.config.rounds));
    }
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

/// What STaR produced: its samples, its SFT set and its adapter.
fn star_hash(round: &RoundLayout) -> anyhow::Result<String> {
    tree_hash(round.star().dir(), &|p: &Path| {
        p.starts_with(malt_layout::ADAPTERS)
            || p == Path::new(malt_layout::TREES)
            || p.file_name().and_then(|n| n.to_str()) == Some("sft.jsonl")
    })
}

/// Whether the config evaluates STaR (and so trains it).
fn uses_star(s: &Session) -> bool {
    s.config
        .eval
        .systems
        .iter()
        .any(|x| x.kind == malt_config::SystemKind::Star)
}

/// The seed round `k`'s trees derive from: the run seed for round 1, a hash of it and `k` after
/// (each round samples its trees afresh, with the previous round's adapters).
pub fn round_seed(run_seed: u64, k: u32) -> u64 {
    if k <= 1 {
        run_seed
    } else {
        malt_tree::node_seed(run_seed, "malt/round", &[k])
    }
}

/// The chain and credit settings of round `k`: `[rounds] theta` replaces `[credit] theta` and
/// every agent's theta.
fn round_credit(
    s: &Session,
    round: &RoundLayout,
) -> (malt_tree::ChainSpec, malt_tree::CreditSettings) {
    let mut chain = s.chain.clone();
    let mut credit = s.credit;
    if let Some(theta) = s.config.rounds.theta_of(round.round()) {
        credit.theta = theta;
        for a in &mut chain.agents {
            a.theta = Some(theta);
        }
    }
    (chain, credit)
}

/// The previous round's MALT adapters and their identity, for sampling round `round`'s trees.
fn previous_adapters(
    s: &Session,
    model: &Model,
    round: &RoundLayout,
) -> anyhow::Result<(Vec<(String, malt_model::LoraAdapter)>, String)> {
    let prev = RunLayout::new(&s.config.run.dir).round(round.round() - 1);
    let mut adapters = Vec::new();
    for a in &s.config.agents {
        if let Some(dir) = malt_train::final_adapter_dir(prev.dir(), &a.name) {
            adapters.push((a.name.clone(), model.load_adapter(&dir, &a.name)?));
        }
    }
    let id = format!(
        "{} + adapters of round {} sha256:{}",
        session::model_id(&s.config),
        prev.round(),
        adapters_hash(prev.dir())?
    );
    Ok((adapters, id))
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

/// One row of the stage table: how `malt run` judges and runs a stage of a round.
struct StageDef {
    name: &'static str,
    /// Whether the config asks for this stage at all (STaR only with a STaR system).
    wanted: fn(&Session) -> bool,
    /// What the stage is computed from now; includes the previous stage's outputs.
    inputs: fn(&mut Ctx, &RoundLayout) -> anyhow::Result<BTreeMap<String, String>>,
    /// Hash of what the stage produced.
    outputs: fn(&RoundLayout) -> anyhow::Result<String>,
    /// Outputs that must not be reused when the stage is recomputed from other inputs (or from
    /// none on record), given why it is recomputed: checkpoints, adapters, logged attempts,
    /// later rounds' trees, trees of another model.
    stale: fn(&RoundLayout, &Decision) -> Vec<PathBuf>,
    /// Checks before the stage runs (not called when it is current).
    check: fn(&mut Ctx, &RoundLayout) -> anyhow::Result<()>,
    /// The work.
    run: fn(&mut Ctx, &RoundLayout) -> anyhow::Result<()>,
}

fn always(_: &Session) -> bool {
    true
}

fn no_check(_: &mut Ctx, _: &RoundLayout) -> anyhow::Result<()> {
    Ok(())
}

fn generate_stage(ctx: &mut Ctx, round: &RoundLayout) -> anyhow::Result<()> {
    if round.round() == 1 {
        // The remote backend samples over HTTP: the model is not loaded for it.
        let model = &mut ctx.model;
        return crate::generate::generate_configured(&mut ctx.s, move |cfg| {
            Ok((model.get(cfg)?, session::model_id(cfg)))
        })
        .map(drop);
    }
    let model = ctx.model.get(&ctx.s.config)?;
    let (adapters, model_id) = previous_adapters(&ctx.s, model, round)?;
    let (chain, credit) = round_credit(&ctx.s, round);
    tracing::info!(
        "round {}: sampling the trees with round {}'s adapters ({})",
        round.round(),
        round.round() - 1,
        adapters
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let target = crate::generate::TreeTarget {
        dir: round.dir(),
        chain: &chain,
        credit,
        seed: round_seed(ctx.s.config.run.seed, round.round()),
        model_id,
        tokenizer: ctx.s.tokenizer_fingerprint(),
    };
    crate::generate::generate_embedded(&mut ctx.s, model, adapters, &target).map(drop)
}

/// The stages of a round, in order.
const TABLE: [StageDef; 5] = [
    StageDef {
        name: "generate",
        wanted: always,
        inputs: |ctx, r| {
            let mut m = generate_inputs(&ctx.s)?;
            if r.round() > 1 {
                let prev = RunLayout::new(&ctx.s.config.run.dir).round(r.round() - 1);
                insert(
                    &mut m,
                    "previous round's adapters",
                    adapters_hash(prev.dir())?,
                );
                insert(&mut m, "round", r.round().to_string());
            }
            Ok(m)
        },
        outputs: |r| trees_hash(r.dir()),
        // A later round's trees derive from the previous round's adapters. Round 1's are
        // discarded only when they were sampled with another model or tokenization (a run with
        // other questions or another chain is refused instead, keeping what it cost).
        stale: |r, decision| {
            let other_model = matches!(decision, Decision::InputsChanged(what)
                if what.iter().any(|w| w == MODEL_INPUT));
            if r.round() > 1 || other_model {
                vec![r.trees(), r.manifest()]
            } else {
                Vec::new()
            }
        },
        check: |ctx, _| check_trees_match_split(&mut ctx.s),
        run: generate_stage,
    },
    StageDef {
        name: "credit",
        wanted: always,
        inputs: |ctx, r| Ok(credit_inputs(&ctx.s, r, trees_hash(r.dir())?)),
        outputs: |r| datasets_hash(r.dir()),
        stale: |_, _| Vec::new(),
        check: no_check,
        run: |ctx, r| {
            let (chain, credit) = round_credit(&ctx.s, r);
            let report = malt_tree::recredit(
                r.dir(),
                &chain,
                &credit,
                Some(&mut ctx.s.scorer as &mut dyn Scorer),
            )?;
            print!("{}", report.stats.table());
            Ok(())
        },
    },
    StageDef {
        name: "train",
        wanted: always,
        inputs: |ctx, r| Ok(train_inputs(&ctx.s, datasets_hash(r.dir())?)),
        outputs: |r| adapters_hash(r.dir()),
        // Checkpoints and adapters of other data or settings (or of unknown origin: a
        // standalone `malt train`) must not be resumed or evaluated.
        stale: |r, _| vec![r.train(), r.adapters()],
        check: no_check,
        run: |ctx, r| {
            let m = ctx.model.get(&ctx.s.config)?;
            let id = session::model_id(&ctx.s.config);
            crate::train::train_agents(&ctx.s.config, r.dir(), m, &id, None, true).map(drop)
        },
    },
    StageDef {
        name: "star",
        wanted: uses_star,
        inputs: |ctx, r| star_inputs(&ctx.s, r),
        outputs: star_hash,
        // Samples of another model or settings, their SFT set and adapter.
        stale: |r, _| vec![r.star().dir().to_path_buf()],
        check: no_check,
        run: |ctx, r| {
            let seed = round_seed(ctx.s.config.run.seed, r.round());
            let m = ctx.model.get(&ctx.s.config)?;
            crate::star::run_star(&mut ctx.s, m, r, seed)
        },
    },
    StageDef {
        name: "eval",
        wanted: always,
        inputs: |ctx, r| eval_inputs(&ctx.s, r, adapters_hash(r.dir())?),
        outputs: |r| eval_hash(r.dir()),
        // Logged attempts of other adapters, plugins or settings (or of unknown origin) would
        // be mixed into the report.
        stale: |r, _| vec![r.eval()],
        check: no_check,
        run: |ctx, r| {
            let m = ctx.model.get(&ctx.s.config)?;
            let report = crate::evaluate::evaluate(&mut ctx.s, m, r)?;
            print!("{}", malt_eval::render_markdown(&report));
            Ok(())
        },
    },
];

/// The stages of a round in order, by name.
pub const STAGES: [&str; 5] = [
    TABLE[0].name,
    TABLE[1].name,
    TABLE[2].name,
    TABLE[3].name,
    TABLE[4].name,
];

/// Judges one stage against its record and runs it unless it is current.
fn run_stage(ctx: &mut Ctx, def: &StageDef, round: &RoundLayout) -> anyhow::Result<()> {
    let stage = Stage::new(round.dir(), def.name, (def.inputs)(ctx, round)?);
    let decision = stage.decide(|| (def.outputs)(round))?;
    tracing::info!("{}: {decision}", stage.name);
    if decision == Decision::Current {
        return Ok(());
    }
    if matches!(decision, Decision::InputsChanged(_) | Decision::New) {
        for path in (def.stale)(round, &decision) {
            discard(&path)?;
        }
    }
    (def.check)(ctx, round)?;
    stage.begin()?;
    (def.run)(ctx, round)?;
    stage.finish((def.outputs)(round)?)
}

/// `--until STAGE[@ROUND]`: the stage and round to stop after (round 1 when not given).
pub fn parse_until(until: &str) -> anyhow::Result<(String, u32)> {
    let (stage, round) = match until.split_once('@') {
        Some((s, r)) => (
            s,
            r.parse::<u32>().ok().filter(|&r| r >= 1).ok_or_else(|| {
                anyhow::anyhow!("--until {until:?}: expected STAGE or STAGE@ROUND with ROUND >= 1")
            })?,
        ),
        None => (until, 1),
    };
    if !STAGES.contains(&stage) {
        anyhow::bail!(
            "unknown stage {stage:?} (stages: {}; STAGE@K for round K)",
            STAGES.join(", ")
        );
    }
    Ok((stage.to_owned(), round))
}

/// The whole pipeline: every stage of round 1, then of round 2, ... (`[rounds] count`).
pub fn run(opts: &Options) -> anyhow::Result<()> {
    let start = Instant::now();
    let until = opts.until.as_deref().map(parse_until).transpose()?;
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
    let mut ctx = Ctx {
        s,
        live,
        model: LazyModel { model: None },
    };
    let mut k = 1;
    let mut first = true;
    // The round count is read again after every reload: an edit may add rounds.
    while k <= ctx.s.config.rounds.count {
        let round = RunLayout::new(&ctx.s.config.run.dir).round(k);
        for def in &TABLE {
            if first {
                // The config the run started with applies to the first stage; edits from then
                // on at each boundary.
                first = false;
            } else {
                apply_reload(&mut ctx, def.name)?;
            }
            if (def.wanted)(&ctx.s) {
                let label = if ctx.s.config.rounds.count > 1 {
                    format!("{} (round {k})", def.name)
                } else {
                    def.name.to_owned()
                };
                tracing::info!("== {label} ({:.0} s)", start.elapsed().as_secs_f64());
                run_stage(&mut ctx, def, &round)?;
            }
            if until.as_ref() == Some(&(def.name.to_owned(), k)) {
                return Ok(());
            }
        }
        k += 1;
    }
    let last = RunLayout::new(&ctx.s.config.run.dir).round(ctx.s.config.rounds.count);
    tracing::info!(
        "done in {:.1} s; report in {}",
        start.elapsed().as_secs_f64(),
        last.eval().display()
    );
    Ok(())
}
