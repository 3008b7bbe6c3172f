//! The tree case of `malt bench generate` on a run config's real workload: the config's plugins
//! render every agent's prompts, its sampling parameters and stop rules apply, and the trees are
//! sampled by the same `ModelSampler` the generation stage uses (batched levels, prefix pool).
//! The first trees' sequences are then sampled again one at a time (each prompt prefilled alone,
//! one branch decoded alone), so the report shows what batching and prefix sharing buy on what
//! users actually run.

use anyhow::Context;
use malt_engine::model_sampler::{sample_alone, ModelSampler, SamplerStats};
use malt_model::Model;
use malt_pipeline::session::Session;
use malt_tree::{generate_tree, Message, SampleRequest, Sampler, SamplerError, SamplingParams};
use std::path::Path;
use std::time::Instant;

/// One request the tree made, with what it got back.
struct Recorded {
    agent: String,
    messages: Vec<Message>,
    params: SamplingParams,
    seeds: Vec<u64>,
}

/// The generation stage's sampler, recording each request of the trees chosen for replay.
struct Recorder<'a, 'm> {
    inner: &'a mut ModelSampler<'m>,
    record: bool,
    requests: Vec<Recorded>,
}

impl Sampler for Recorder<'_, '_> {
    fn sample(
        &mut self,
        requests: &[SampleRequest<'_>],
    ) -> Result<Vec<malt_tree::RequestResult>, SamplerError> {
        if self.record {
            self.requests.extend(requests.iter().map(|r| Recorded {
                agent: r.agent.to_owned(),
                messages: r.messages.to_vec(),
                params: r.params.clone(),
                seeds: r.seeds.to_vec(),
            }));
        }
        self.inner.sample(requests)
    }
}

/// Samples `trees` trees of `config`'s training questions with `model`, then the first
/// `independent` trees' sequences one at a time, and prints both.
pub fn run(
    label: &str,
    model: &Model,
    model_arg: &str,
    config: &Path,
    trees: usize,
    independent: usize,
) -> anyhow::Result<()> {
    let mut session = Session::open(config)
        .with_context(|| format!("loading the workload config {}", config.display()))?;
    let named = malt_pipeline::session::model_id(&session.config);
    if named != model_arg {
        println!(
            "[{label}] note: {} names model {named}, measuring {model_arg}",
            config.display()
        );
    }
    let split = session.questions()?;
    let questions: Vec<_> = split.train.into_iter().take(trees).collect();
    if questions.is_empty() {
        anyhow::bail!("{}: no training questions to sample", config.display());
    }
    let chain = session.chain.clone();
    let shape: Vec<String> = chain
        .agents
        .iter()
        .map(|a| format!("{} x{}", a.name, a.branches))
        .collect();
    let first = &chain.agents[0].sampling;
    println!(
        "[{label}] workload {}: {} trees of {} (max_new_tokens {}, temperature {}, stop {:?})",
        config.display(),
        questions.len(),
        shape.join(" -> "),
        first.max_new_tokens,
        first.temperature,
        first.stop
    );
    let mut sampler = ModelSampler::new(model);
    let mut rec = Recorder {
        inner: &mut sampler,
        record: true,
        requests: vec![],
    };
    let mut errors = Default::default();
    let mut per_tree = vec![];
    let mut replay_wall = 0.0;
    let mut replay_tokens = 0u64;
    let start = Instant::now();
    for (i, q) in questions.iter().enumerate() {
        rec.record = i < independent;
        let before = rec.inner.stats;
        let t = Instant::now();
        generate_tree(
            &chain,
            q,
            session.config.run.seed,
            &mut rec,
            &mut session.scorer,
            &mut errors,
        )?;
        let s = t.elapsed().as_secs_f64();
        let gen = rec.inner.stats.generated_tokens - before.generated_tokens;
        if i < independent {
            replay_wall += s;
            replay_tokens += gen;
        }
        println!(
            "[{label}]   tree {}: {s:.1}s, {gen} tokens generated = {:.1} tok/s",
            i + 1,
            gen as f64 / s
        );
        per_tree.push(s);
    }
    let wall = start.elapsed().as_secs_f64();
    let st: SamplerStats = rec.inner.stats;
    let mut sorted = per_tree.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "[{label}] workload trees: {} sequences, {} tokens generated in {wall:.1}s = {:.1} tok/s; wall per tree median {:.1}s (min {:.1}, max {:.1})",
        st.sequences,
        st.generated_tokens,
        st.generated_tokens as f64 / wall,
        sorted[sorted.len() / 2],
        sorted[0],
        sorted[sorted.len() - 1]
    );
    println!(
        "[{label}] workload prefill: {} prompt tokens, computed {} vs unique-prefix minimum {} = {:.3}x",
        st.prompt_tokens,
        st.prefill_computed,
        st.prefill_minimum,
        st.prefill_computed as f64 / st.prefill_minimum.max(1) as f64
    );
    if rec.requests.is_empty() {
        return Ok(());
    }
    // The same requests, every sequence alone (no batch, no prefix reuse).
    let requests = std::mem::take(&mut rec.requests);
    let t = Instant::now();
    let mut tokens = 0u64;
    let mut seqs = 0usize;
    for r in &requests {
        for &seed in &r.seeds {
            let (_, n) = sample_alone(model, &r.messages, &r.params, seed)
                .with_context(|| format!("agent {}: sampling alone", r.agent))?;
            tokens += n as u64;
            seqs += 1;
        }
    }
    let alone = t.elapsed().as_secs_f64();
    println!(
        "[{label}] workload, first {} tree(s) again with each of their {seqs} sequences sampled alone: {alone:.1}s ({tokens} tokens) vs {replay_wall:.1}s as trees ({replay_tokens} tokens) = trees {:.2}x faster",
        independent.min(questions.len()),
        alone / replay_wall.max(1e-9)
    );
    Ok(())
}
