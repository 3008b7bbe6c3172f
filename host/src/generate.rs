//! The generation stage: sample one tree per training question through the embedded model or
//! the remote backend (`[generation] backend`), and append each finished tree to the run
//! directory (resumable: finished questions are skipped).

use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use malt_model::{LoraAdapter, Model};
use malt_tree::{ChainSpec, CreditSettings, GenerateSummary, Manifest, RunWriter, Sampler};

use crate::backend::ModelSampler;
use crate::session::Session;

/// Where a set of trees goes and what it is sampled with.
pub struct TreeTarget<'a> {
    /// The run (or round, or STaR) directory.
    pub dir: &'a Path,
    pub chain: &'a ChainSpec,
    pub credit: CreditSettings,
    /// Node seeds derive from it.
    pub seed: u64,
    /// The model's identity in the manifest (a resumed run must match it).
    pub model_id: String,
    /// The fingerprint of the tokenizer the trees are sampled with (a resumed run must match
    /// it: trees of another tokenization are refused, never mixed).
    pub tokenizer: Option<String>,
}

/// Generates the trees of every training question of `session` not yet in its run directory,
/// through the embedded `model`.
pub fn generate_trees(
    session: &mut Session,
    model: &Model,
    model_id: &str,
) -> anyhow::Result<GenerateSummary> {
    let dir = session.config.run.dir.clone();
    let chain = session.chain.clone();
    let target = TreeTarget {
        dir: &dir,
        chain: &chain,
        credit: session.credit,
        seed: session.config.run.seed,
        model_id: model_id.to_owned(),
        tokenizer: session.tokenizer_fingerprint(),
    };
    generate_embedded(session, model, Vec::new(), &target)
}

/// Generates into `target` through the embedded `model`, each agent named in `adapters` on its
/// adapter (a later round samples with the previous round's adapters).
pub fn generate_embedded(
    session: &mut Session,
    model: &Model,
    adapters: Vec<(String, LoraAdapter)>,
    target: &TreeTarget<'_>,
) -> anyhow::Result<GenerateSummary> {
    let mut sampler = ModelSampler::new(model);
    for (agent, a) in adapters {
        sampler = sampler.with_adapter(&agent, a);
    }
    let summary = generate_with(session, &mut sampler, target)?;
    let s = sampler.stats;
    tracing::info!(
        "generated {} trees ({} skipped as already done), {} samples, {} errored nodes, {} scoring failures; \
         prefill computed {} of {} prompt tokens (unique-prefix minimum {}), {} tokens generated",
        summary.generated,
        summary.skipped,
        summary.samples,
        summary.errored_nodes,
        summary.score_failures,
        s.prefill_computed,
        s.prompt_tokens,
        s.prefill_minimum,
        s.generated_tokens
    );
    Ok(summary)
}

/// Generates the trees through the config's `[[generation.endpoints]]`; the local model is
/// not loaded.
pub fn generate_remote(session: &mut Session) -> anyhow::Result<GenerateSummary> {
    let mut sampler = crate::backend::remote::remote_sampler(&session.config)?;
    crate::backend::remote::announce_engines(&session.config, &mut sampler)?;
    let model_id = crate::backend::remote::remote_model_id(&session.config);
    let dir = session.config.run.dir.clone();
    let chain = session.chain.clone();
    let target = TreeTarget {
        dir: &dir,
        chain: &chain,
        credit: session.credit,
        seed: session.config.run.seed,
        model_id,
        tokenizer: session.tokenizer_fingerprint(),
    };
    // The local model's tokenizer gives every completion token ids: the engine's when they
    // spell its text, else the text encoded (training needs ids; see backend::token_ids).
    let source = crate::session::model_id(&session.config);
    let (summary, s) = match malt_model::Model::load_tokenizer(&source) {
        Ok((tokenizer, _)) => {
            let mut with_ids = crate::backend::WithTokenIds::new(sampler, &tokenizer);
            let summary = generate_with(session, &mut with_ids, &target)?;
            with_ids.stats.log();
            (summary, with_ids.inner.stats)
        }
        Err(e) => {
            tracing::warn!(
                "{}: [model] source = {source:?}: cannot load its tokenizer ({e}); completions \
                 keep only the ids the engine returns, and training re-encodes the others",
                session.config.source.display()
            );
            let summary = generate_with(session, &mut sampler, &target)?;
            (summary, sampler.stats)
        }
    };
    tracing::info!(
        "generated {} trees ({} skipped as already done), {} samples, {} errored nodes, {} scoring failures; \
         {} HTTP attempts, {} retried, {} follow-ups for missing choices, {} refused",
        summary.generated,
        summary.skipped,
        summary.samples,
        summary.errored_nodes,
        summary.score_failures,
        s.attempts,
        s.retries,
        s.follow_ups,
        s.refused
    );
    Ok(summary)
}

/// Generates with the backend the config selects; `model` (the loaded model and its identity)
/// is called only for the embedded one.
pub fn generate_configured<'m>(
    session: &mut Session,
    model: impl FnOnce(&malt_config::Config) -> anyhow::Result<(&'m Model, String)>,
) -> anyhow::Result<GenerateSummary> {
    match session.config.generation.backend {
        malt_config::Backend::Remote => generate_remote(session),
        malt_config::Backend::Embedded => {
            let (m, id) = model(&session.config)?;
            generate_trees(session, m, &id)
        }
    }
}

/// The stage itself, over any sampler.
fn generate_with(
    session: &mut Session,
    sampler: &mut dyn Sampler,
    target: &TreeTarget<'_>,
) -> anyhow::Result<GenerateSummary> {
    let split = session.questions()?;
    let dir = target.dir;
    let manifest = Manifest::new(
        &session.config_text,
        session.plugin_hashes(),
        &target.model_id,
        target.seed,
        target.chain.clone(),
        target.credit,
    )
    .with_tokenizer(target.tokenizer.clone());
    let mut run = RunWriter::open(dir, manifest)?;
    let per_tree: u64 = target
        .chain
        .agents
        .iter()
        .scan(1u64, |width, a| {
            *width *= a.branches as u64;
            Some(*width)
        })
        .sum();
    tracing::info!(
        "generating {} trees ({} samples each) into {}",
        split.train.len(),
        per_tree,
        dir.display()
    );
    let bar = ProgressBar::new(split.train.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} questions  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let live = session.live.clone();
    let summary = malt_tree::generate_run(
        &mut run,
        target.chain,
        &split.train,
        sampler,
        &mut session.scorer,
        &mut |p| {
            // A tree is finished: hot-reloaded plugins may apply from the next one on.
            if let Some(l) = &live {
                l.mark_boundary();
            }
            bar.set_position(p.questions_done as u64);
            let eta = p
                .eta()
                .map(|d| format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60))
                .unwrap_or_else(|| "?".into());
            bar.set_message(format!("{:.1} samples/s  ETA {eta}", p.samples_per_sec()));
            // About ten lines per run for logs (the bar is hidden when stderr is not a terminal).
            let step = (p.questions_total / 10).max(1);
            if p.questions_done > p.questions_skipped && p.questions_done % step == 0 {
                tracing::info!(
                    "{}/{} trees, {:.1} samples/s, ETA {eta}",
                    p.questions_done,
                    p.questions_total,
                    p.samples_per_sec()
                );
            }
        },
    )?;
    bar.finish();
    Ok(summary)
}
