//! Sampling trees into a run directory: one tree per question through the embedded model or the
//! remote backend, each finished tree appended durably (resumable: finished questions are
//! skipped). The generation stage ([`crate::stage::generate`]) and STaR's own samples
//! ([`crate::star`]) use it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use malt_model::{LoraAdapter, Model};
use malt_tree::{
    ChainSpec, CreditSettings, Example, GenerateSummary, Manifest, RunWriter, Sampler,
};

use crate::stage::Tools;
use malt_engine::ModelSampler;

/// Where a set of trees goes and what it is sampled with.
pub struct TreeTarget<'a> {
    /// The run (or round, or STaR) directory.
    pub dir: &'a Path,
    pub chain: &'a ChainSpec,
    /// Recorded in the manifest (informative: thresholds do not change trees).
    pub credit: CreditSettings,
    /// Node seeds derive from it.
    pub seed: u64,
    /// The model's identity in the manifest (a resumed run must match it).
    pub model_id: String,
    /// The fingerprint of the tokenizer the trees are sampled with (a resumed run must match
    /// it: trees of another tokenization are refused, never mixed).
    pub tokenizer: Option<String>,
}

/// Generates the trees of `questions` not yet in `target` through the embedded `model`, each
/// agent named in `adapters` on its adapter (a later round samples with the previous round's
/// adapters).
pub fn generate_embedded(
    env: &mut Tools<'_>,
    questions: &[Example],
    model: &Model,
    adapters: Vec<(String, LoraAdapter)>,
    target: &TreeTarget<'_>,
) -> anyhow::Result<GenerateSummary> {
    let mut sampler = ModelSampler::new(model);
    for (agent, a) in adapters {
        sampler = sampler.with_adapter(&agent, a);
    }
    let summary = generate_with(env, questions, &mut sampler, target)?;
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

/// How the remote backend reaches its servers: `[generation]` and the local model whose
/// tokenizer checks (or supplies) the completions' token ids. Not part of what the trees are
/// (remote servers reproduce the embedded sampler seed for seed), so not a stage input.
#[derive(Debug, Clone)]
pub struct RemoteSetup {
    pub generation: malt_config::Generation,
    /// The config's `[model] source`: its tokenizer gives every completion token ids.
    pub tokenizer_source: String,
    /// For messages.
    pub config_path: PathBuf,
}

/// Generates the trees through `[[generation.endpoints]]`, each agent of `adapters` on its
/// adapter loaded into the servers for the run (a later round); the local model is not loaded.
pub fn generate_remote(
    env: &mut Tools<'_>,
    questions: &[Example],
    remote: &RemoteSetup,
    target: &TreeTarget<'_>,
    adapters: &[malt_remote::AdapterVersion],
) -> anyhow::Result<GenerateSummary> {
    let config = &remote.config_path;
    let mut sampler = malt_engine::remote::remote_sampler(&remote.generation, config, false)?;
    let uses_top_k = target.chain.agents.iter().any(|a| a.sampling.top_k > 0);
    malt_engine::remote::announce_engines(config, uses_top_k, &mut sampler)?;
    sampler
        .swap_adapters(adapters)
        .map_err(|e| anyhow::anyhow!(e.0))
        .with_context(|| format!("{}: [[generation.endpoints]]", config.display()))?;
    // The local model's tokenizer gives every completion token ids: the engine's when they
    // spell its text, else the text encoded (training needs ids; see backend::token_ids).
    let source = &remote.tokenizer_source;
    let (summary, s) = match malt_model::Model::load_tokenizer(source) {
        Ok((tokenizer, _)) => {
            let mut with_ids = malt_engine::WithTokenIds::new(sampler, &tokenizer);
            let summary = generate_with(env, questions, &mut with_ids, target)?;
            with_ids.inner.release_adapters();
            with_ids.stats.log();
            (summary, with_ids.inner.stats)
        }
        Err(e) => {
            tracing::warn!(
                "{}: [model] source = {source:?}: cannot load its tokenizer ({e}); completions \
                 keep only the ids the engine returns, and training re-encodes the others",
                remote.config_path.display()
            );
            let summary = generate_with(env, questions, &mut sampler, target)?;
            sampler.release_adapters();
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

/// The sampling itself, over any sampler.
fn generate_with(
    env: &mut Tools<'_>,
    questions: &[Example],
    sampler: &mut dyn Sampler,
    target: &TreeTarget<'_>,
) -> anyhow::Result<GenerateSummary> {
    let dir = target.dir;
    let manifest = Manifest::new(
        &env.provenance.config_text,
        env.provenance.plugins.clone(),
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
        questions.len(),
        per_tree,
        dir.display()
    );
    let bar = ProgressBar::new(questions.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} questions  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let live = env.live.clone();
    let summary = malt_tree::generate_run(
        &mut run,
        target.chain,
        questions,
        sampler,
        env.scorer,
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
