//! `malt bench online`: where an online training step's time goes, on a workload config's sizes
//! (default `configs/online.toml`, the embedded default), and each part against the same work
//! done alone in the same run:
//! - sampling: the last step's trees sampled again by a plain [`ModelSampler`] holding the
//!   adapters that step sampled with (from the previous step's checkpoint) and the same seeds,
//!   outside the loop: the loop's tokens/s over the plain sampler's (goal >= 0.95), and whether
//!   the trees came out the same;
//! - training: each trained agent's forward and backward passes and optimiser steps against the
//!   same rollouts trained by a plain token-NLL loss, one optimiser step (what `malt bench
//!   train` measures; whole sequences in micro-batches of the same size): tokens/s in the
//!   update over the plain pass's (goal >= 0.9); the update's passes without a graph (the
//!   reference model's log-probs) are printed apart, as the policy-gradient loss's own cost.
//!
//! Adapter sync is the time the step spent loading its adapters into the remote servers: 0 with
//! the embedded backend, whose sampler shares the trainer's weights; with a workload whose
//! `[generation]` is remote (its servers running), the loop's sampling is the servers'.
//!
//! The online run writes into a temporary folder; nothing of the workload's run is touched.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use malt_engine::ModelSampler;
use malt_layout::RoundLayout;
use malt_pipeline::online::{checkpoint_adapter, rollouts, run_online, tree_seed, StepMetrics};
use malt_pipeline::session::Session;
use malt_pipeline::stage::online::Online;
use malt_pipeline::stage::{Env, Models, Provenance, Stage, Tools};
use malt_train::optim::{AdamW, AdamWParams};
use malt_train::{
    pg, ChatTokenizer, MaltPolicy, MaltTokenizer, Mode, PolicyModel, Sequence, TokenBatch,
};

#[derive(clap::Args)]
pub struct Args {
    /// A run config with an `[online]` table: its chain, sampling, LoRA shape and `[online]`
    /// settings are measured.
    #[arg(long, default_value = "configs/online.toml")]
    workload: PathBuf,
    /// Online steps to run (each samples and updates).
    #[arg(long, default_value_t = 2)]
    steps: u32,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut session = Session::open(&args.workload)?;
    let tmp = tempfile::tempdir().context("creating a temporary run folder")?;
    session.config.run.dir = tmp.path().to_path_buf();
    let round = RoundLayout::at(tmp.path());
    let mut inputs = Online::inputs(&mut session, &round)?;
    inputs.online.steps = args.steps;
    let mut models = Models::new();
    let provenance = Provenance::of(&session);
    println!(
        "[online] {}: {} steps of {} questions, agents trained: {}",
        args.workload.display(),
        args.steps,
        inputs.online.questions_per_step,
        inputs.online.train.join(", ")
    );
    {
        let mut env = Env {
            models: &mut models,
            tools: Tools {
                scorer: &mut session.scorer,
                live: None,
                provenance,
            },
        };
        run_online(&inputs, &mut env, &round)?;
    }
    let metrics: Vec<StepMetrics> = std::fs::read_to_string(round.online().join("metrics.jsonl"))?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    for m in &metrics {
        let sampled: u64 = m.agents.iter().map(|a| a.tokens_sampled).sum();
        println!(
            "[online] step {}: sample + score {:.1}s ({sampled} tokens, {:.1} tok/s), update {:.1}s, checkpoint {:.2}s, adapter sync {:.2}s",
            m.step,
            m.sample_s,
            sampled as f64 / m.sample_s.max(1e-9),
            m.update_s,
            m.checkpoint_s,
            m.sync_s
        );
        for a in m.agents.iter().filter(|a| a.trained) {
            println!(
                "[online]   {}: log-prob passes {:.1}s, forward + backward {:.1}s, optimiser {:.2}s; {} tokens trained ({:.1} tok/s in forward + backward + optimiser)",
                a.agent,
                a.logprob_s,
                a.train_s,
                a.optimizer_s,
                a.tokens_trained,
                a.tokens_trained as f64 / (a.train_s + a.optimizer_s).max(1e-9)
            );
        }
    }
    let Some(first) = metrics.first() else {
        anyhow::bail!("the online run wrote no step")
    };

    // Sampling alone: the last step's questions and seeds, a plain sampler holding the adapters
    // that step sampled with (the previous step's checkpoint; fresh ones for step 1, where the
    // loop also paid the first use of every buffer), after the loop, so both are warm.
    let model = models.get(&inputs.model)?;
    let last = metrics.last().expect("metrics has a first step");
    let trees_of = |step: u32| -> anyhow::Result<Vec<malt_tree::Tree>> {
        std::fs::read_to_string(
            round
                .online()
                .join("trees")
                .join(format!("step-{step:08}.jsonl")),
        )?
        .lines()
        .map(|l| serde_json::from_str(l).map_err(anyhow::Error::from))
        .collect::<anyhow::Result<_>>()
        .with_context(|| format!("reading step {step}'s trees"))
    };
    let want = trees_of(last.step)?;
    let mut sampler = ModelSampler::new(model);
    for (l, agent) in inputs.chain.agents.iter().enumerate() {
        if !inputs.online.train.contains(&agent.name) {
            continue;
        }
        let adapter = if last.step > 1 {
            let dir = checkpoint_adapter(&round.online(), last.step - 1, &agent.name);
            model.load_adapter(&dir, &agent.name)?
        } else {
            let lora = &inputs.agents[l].plan.lora;
            MaltPolicy::new(
                model,
                malt_train::lora_config(lora.rank, lora.alpha, lora.dropout, &lora.targets)?,
            )
            .new_adapter(
                &agent.name,
                malt_train::data::mix_seed(inputs.seed, 0x1a, l as u64),
            )?
        };
        sampler = sampler.with_adapter(&agent.name, adapter);
    }
    let mut errors = malt_tree::score::ErrorCounts::default();
    let t = Instant::now();
    let mut same = 0;
    for w in &want {
        let (tree, _) = malt_tree::generate_tree(
            &inputs.chain,
            &w.example,
            tree_seed(inputs.seed, last.step),
            &mut sampler,
            &mut session.scorer,
            &mut errors,
        )?;
        same += tree
            .nodes
            .iter()
            .zip(&w.nodes)
            .filter(|(a, b)| a.token_ids == b.token_ids)
            .count();
    }
    let alone_s = t.elapsed().as_secs_f64();
    let nodes: usize = want.iter().map(|t| t.nodes.len()).sum();
    let sampled: u64 = last.agents.iter().map(|a| a.tokens_sampled).sum();
    let (in_loop, alone) = (
        sampled as f64 / last.sample_s.max(1e-9),
        sampled as f64 / alone_s.max(1e-9),
    );
    println!(
        "[online] sampling step {}'s trees alone with its adapters: {alone_s:.1}s = {alone:.1} tok/s; in the loop {in_loop:.1} tok/s = {:.2}x (goal >= 0.95{}); {same}/{nodes} nodes sampled the same tokens",
        last.step,
        in_loop / alone,
        if last.step == 1 { "; step 1 includes the loop's first use of every buffer: run --steps 2" } else { "" }
    );

    // Training alone: step 1's rollouts, a plain token-NLL pass, whole sequences in
    // micro-batches of the same size.
    let step1 = trees_of(1)?;
    let thetas = inputs.credit.thetas(&inputs.chain)?;
    let trained: Vec<bool> = inputs
        .chain
        .agents
        .iter()
        .map(|a| inputs.online.train.contains(&a.name))
        .collect();
    let (rows, _) = rollouts(
        &step1,
        &inputs.chain,
        &thetas,
        inputs.credit,
        &inputs.online,
        &trained,
        model,
    )?;
    let pad = MaltTokenizer::new(model)?.eos_id();
    for (l, agent) in inputs.chain.agents.iter().enumerate() {
        let Some(m) = first
            .agents
            .iter()
            .find(|a| a.agent == agent.name && a.trained)
        else {
            continue;
        };
        let lora = &inputs.agents[l].plan.lora;
        let policy = MaltPolicy::new(
            model,
            malt_train::lora_config(lora.rank, lora.alpha, lora.dropout, &lora.targets)?,
        );
        let adapter = policy.new_adapter(&agent.name, 0)?;
        let mut opt = AdamW::new(adapter.named_vars(), AdamWParams::default())?;
        let vars = opt.vars().to_vec();
        let seqs: Vec<&Sequence> = rows[l].iter().map(|r| &r.seq).collect();
        let tokens: usize = seqs.iter().map(|s| s.completion_len()).sum();
        let t = Instant::now();
        let mut sums = malt_train::trainer::GradAccumulator::new(vars.len());
        for chunk in seqs.chunks(inputs.online.micro_batch.max(1) as usize) {
            let batch = TokenBatch::new(chunk, pad);
            let logits =
                policy.target_logits(&batch, Some(&adapter), Mode::Train { dropout_seed: None })?;
            let lp = pg::sampling_logprobs(&logits, &batch.targets, agent.sampling.temperature)?;
            let loss = (lp.sum_all()?.neg()? / tokens.max(1) as f64)?;
            sums.add(&loss.backward()?, &vars)?;
        }
        let grads = sums.into_grads(&vars)?;
        opt.step(&grads, 1e-5)?;
        let plain_s = t.elapsed().as_secs_f64();
        let plain = tokens as f64 / plain_s.max(1e-9);
        let epochs = inputs.online.epochs.max(1) as f64;
        let update = m.tokens_trained as f64 / (m.train_s + m.optimizer_s).max(1e-9);
        println!(
            "[online] {}: {} completions, {tokens} tokens: a plain token-NLL epoch {plain_s:.1}s = {plain:.1} tok/s; the update's {epochs} epochs {update:.1} tok/s = {:.2}x (goal >= 0.9); with its log-prob passes {:.1} tok/s = {:.2}x",
            agent.name,
            seqs.len(),
            update / plain,
            m.tokens_trained as f64 / (m.train_s + m.optimizer_s + m.logprob_s).max(1e-9),
            m.tokens_trained as f64 / (m.train_s + m.optimizer_s + m.logprob_s).max(1e-9) / plain
        );
    }
    Ok(())
}
