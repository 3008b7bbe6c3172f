//! `malt online`: on-policy training of the chain's adapters on trees sampled with them.
//!
//! ```text
//! for step in (last finished step + 1)..=steps:
//!     questions = the next questions_per_step training questions (a seeded order per pass)
//!     trees     = one tree per question, every trained agent sampling with its adapter as it is
//!     credit    = leaf rewards from the plugins, values propagated up (offline MALT's credit)
//!     advantage = each node's value against its siblings' ([online] advantage)
//!     for each trained agent: one update of its adapter on its nodes (malt_train::online)
//!     write the step's trees and metrics, then a checkpoint (adapters, optimiser, step)
//! ```
//!
//! Nothing is random outside the seeds: a step's trees are sampled with seeds mixed from the run
//! seed and the step, the question order of each pass over the training split from the run seed
//! and the pass. A checkpoint therefore holds all the state there is (adapters, optimiser
//! moments and step counts, the step), and a run killed at any point resumes after its last
//! checkpoint with exactly the results an uninterrupted run has (`tests/online.rs`).
//!
//! Agents not in `[online] train` sample from the base model and are never updated. A node cut
//! at `max_new_tokens` keeps its value (its siblings' baseline needs it) but is trained only
//! under `[credit] truncated = "keep"`, as the offline datasets do.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use malt_config::{Advantage, LossNorm, Online};
use malt_engine::ModelSampler;
use malt_layout::RoundLayout;
use malt_model::{LoraAdapter, Model};
use malt_train::online::{Rollout, UpdateSettings, UpdateStats};
use malt_train::optim::{AdamW, AdamWParams};
use malt_train::pg::{self, PgSettings};
use malt_train::{ChatTokenizer, MaltPolicy, MaltTokenizer, PolicyModel, Sequence};
use malt_tree::advantage::{self, AdvantageStats, Estimator};
use malt_tree::credit::{assign, Credit, CreditInput};
use malt_tree::{ChainSpec, Example, Tree, TruncatedPolicy};
use serde::{Deserialize, Serialize};

use crate::session::ModelIdentity;
use crate::stage::Env;
use crate::train::AgentTraining;

mod curve;
mod files;
pub use curve::{settings_line, training_curve};
pub use files::checkpoint_adapter;
pub(crate) use files::read_metrics;
mod plots;
mod remote;
use files::{
    append_metrics, checkpoint, keep_metrics_through, latest_checkpoint, restore, write_trees,
};
use plots::{tensorboard, write_rewards};

/// Seeds of online training's streams (see `malt_train::data::mix_seed`).
const STREAM_TREES: u64 = 0x6f6e_6c69_6e65_0001; // "online" 1
const STREAM_ORDER: u64 = 0x6f6e_6c69_6e65_0002;

/// Everything online training reads (the online stage's inputs, see [`crate::stage::online`]).
#[derive(Debug, Clone, Serialize)]
pub struct OnlineInputs {
    #[serde(rename = "config [online]")]
    pub online: Online,
    /// The agents as sampling and credit see them (branches, sampling, thetas).
    #[serde(rename = "chain shape and sampling")]
    pub chain: ChainSpec,
    #[serde(rename = "config [credit]")]
    pub credit: malt_tree::CreditSettings,
    /// Each agent's `[train]` settings (their LoRA shape).
    #[serde(rename = "config train of the agents")]
    pub agents: Vec<AgentTraining>,
    pub model: ModelIdentity,
    /// The training questions, in the split's order.
    #[serde(rename = "train questions")]
    pub questions: Vec<Example>,
    /// The chain's plugins (render, extract, grade): name -> hash.
    pub plugins: BTreeMap<String, String>,
    #[serde(rename = "config [plugins] options")]
    pub plugin_options: BTreeMap<String, BTreeMap<String, String>>,
    /// Seeds the adapters' initialisation, the question order and the trees: `[online] seed`,
    /// else the run seed.
    #[serde(rename = "run seed")]
    pub seed: u64,
    /// With `[generation] backend = "remote"`: the servers that sample the trees, each trained
    /// agent on its adapter's latest version loaded into them (absent: the embedded model).
    #[serde(rename = "remote generation", skip_serializing_if = "Option::is_none")]
    pub remote: Option<crate::stage::generate::RemoteBackend>,
}

/// One line of `online/metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepMetrics {
    pub step: u32,
    pub questions: Vec<String>,
    /// Per agent, in chain order.
    pub agents: Vec<AgentMetrics>,
    /// Seconds: sampling and scoring the trees, then every agent's update, then the checkpoint.
    pub sample_s: f64,
    pub update_s: f64,
    pub checkpoint_s: f64,
    /// Seconds loading the adapters the step samples with into the remote servers (0 with the
    /// embedded backend, whose sampler shares the trainer's weights).
    #[serde(default)]
    pub sync_s: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AgentMetrics {
    pub agent: String,
    pub trained: bool,
    /// Mean value (credit) of the agent's scored nodes. With global pooling and the same
    /// branching everywhere it is the leaves' mean at every level; `mean_reward` tells roles apart.
    pub mean_value: f64,
    /// Mean grade of the agent's own answers (nodes the plugin graded): for the last agent the
    /// leaf reward; absent for roles that give no answer (a verifier).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_reward: Option<f64>,
    pub nodes: usize,
    pub advantage_mean: f64,
    pub advantage_std: f64,
    /// Sibling groups with no spread (every advantage 0).
    pub flat_groups: usize,
    /// Completion tokens the agent sampled, and those its update trained on (every epoch).
    pub tokens_sampled: u64,
    pub tokens_trained: u64,
    /// Completions its update trained on, and its optimiser steps.
    #[serde(default)]
    pub trained_completions: usize,
    #[serde(default)]
    pub optimizer_steps: u64,
    pub loss: f64,
    pub kl: f64,
    pub clip_fraction: f64,
    pub entropy: f64,
    pub grad_norm: f64,
    /// Mean |sampling log-prob - the update's recomputed log-prob| per token (the engine's
    /// distribution against the trainer's); absent when the sampler recorded none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprob_mismatch: Option<f64>,
    /// The update's seconds: log-prob passes without a graph (old, reference), forward and
    /// backward passes, optimiser steps.
    #[serde(default)]
    pub logprob_s: f64,
    #[serde(default)]
    pub train_s: f64,
    #[serde(default)]
    pub optimizer_s: f64,
}

/// What the run did.
#[derive(Debug, Clone, Default)]
pub struct OnlineSummary {
    pub first_step: u32,
    pub last_step: u32,
    pub adapters: PathBuf,
}

/// One agent of the chain in the loop.
pub(crate) struct Role<'m> {
    name: String,
    policy: MaltPolicy<'m>,
    /// `Some` for trained agents.
    trained: Option<(LoraAdapter, AdamW, UpdateSettings)>,
}

/// Runs online training from its last checkpoint in `round`'s `online/`.
pub fn run_online(
    inputs: &OnlineInputs,
    env: &mut Env<'_>,
    round: &RoundLayout,
) -> anyhow::Result<OnlineSummary> {
    let online = inputs.online.clone();
    let (chain, credit, seed) = (&inputs.chain, inputs.credit, inputs.seed);
    let thetas = credit.thetas(chain)?;
    let model_id = inputs.model.source.as_str();
    let dir = round.online();
    std::fs::create_dir_all(dir.join("trees"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let questions = &inputs.questions;
    anyhow::ensure!(
        !questions.is_empty(),
        "{}: [dataset] gives no training questions for [online]",
        env.tools.provenance.config_path.display()
    );
    let model = env.models.get(&inputs.model)?;
    let tok = MaltTokenizer::new(model)?;

    let mut roles = Vec::new();
    for (level, (agent, plan)) in chain.agents.iter().zip(&inputs.agents).enumerate() {
        let l = &plan.plan.lora;
        let lora = malt_train::lora_config(l.rank, l.alpha, l.dropout, &l.targets)?;
        let policy = MaltPolicy::new(model, lora);
        let trained = if online.train.contains(&agent.name) {
            let adapter = policy.new_adapter(
                &agent.name,
                malt_train::data::mix_seed(seed, 0x1a, level as u64),
            )?;
            let optimizer = AdamW::new(adapter.named_vars(), AdamWParams::default())?;
            let settings = update_settings(&online, agent.sampling.temperature);
            Some((adapter, optimizer, settings))
        } else {
            None
        };
        roles.push(Role {
            name: agent.name.clone(),
            policy,
            trained,
        });
    }

    let ckpt_root = dir.join(files::CHECKPOINTS);
    let start = match latest_checkpoint(&ckpt_root)? {
        Some((step, path)) => {
            restore(&mut roles, &path)?;
            tracing::info!("online: resuming after step {step} from {}", path.display());
            step
        }
        None => 0,
    };
    let kept = keep_metrics_through(&dir.join("metrics.jsonl"), start)?;
    // TensorBoard's file is rewritten: the kept steps first, then each new one.
    let mut events = malt_base::tfevents::EventFile::create(&dir.join("tensorboard"))
        .inspect_err(|e| {
            tracing::warn!("{}/tensorboard: no TensorBoard events: {e}", dir.display())
        })
        .ok();
    if let Some(ev) = &mut events {
        for m in &kept {
            tensorboard(ev, m);
        }
    }
    let mut history = kept;
    if !history.is_empty() {
        write_rewards(&dir, &history);
    }
    let mut summary = OnlineSummary {
        first_step: start + 1,
        last_step: start,
        adapters: dir.join(malt_layout::ADAPTERS),
    };
    let tokenizer;
    let mut remote = match &inputs.remote {
        None => None,
        Some(r) => {
            tokenizer = malt_model::Model::load_tokenizer(&r.setup.tokenizer_source)
                .with_context(|| {
                    format!(
                        "online training with remote generation needs the tokenizer of [model] \
                         source = {:?} for the completions' token ids",
                        r.setup.tokenizer_source
                    )
                })?
                .0;
            let run_dir = env.tools.provenance.run_dir.clone();
            Some(remote::Served::start(r, &tokenizer, chain, run_dir)?)
        }
    };
    let bar = indicatif::ProgressBar::new(online.steps as u64);
    bar.set_position(start as u64);
    for step in start + 1..=online.steps {
        let t = Instant::now();
        let mut sync_s = 0.0;
        let picked = step_questions(questions, step, online.questions_per_step, seed);
        let trees = match &mut remote {
            None => {
                let mut sampler = embedded_sampler(model, &roles);
                sample_trees(env.tools.scorer, chain, &mut sampler, &picked, seed, step)?
            }
            Some(served) => {
                served.serve_version(step - 1, &roles, &dir, model_id)?;
                sync_s = t.elapsed().as_secs_f64();
                sample_trees(
                    env.tools.scorer,
                    chain,
                    served.sampler(),
                    &picked,
                    seed,
                    step,
                )?
            }
        };
        let sample_s = t.elapsed().as_secs_f64() - sync_s;

        let t = Instant::now();
        let trained: Vec<bool> = roles.iter().map(|r| r.trained.is_some()).collect();
        let (rollouts, mut agents) =
            rollouts(&trees, chain, &thetas, credit, &online, &trained, model)?;
        for (role, (rows, m)) in roles.iter_mut().zip(rollouts.iter().zip(agents.iter_mut())) {
            let Some((adapter, optimizer, settings)) = &mut role.trained else {
                continue;
            };
            let stats = malt_train::online::update(
                &role.policy,
                adapter,
                optimizer,
                rows,
                settings,
                tok.eos_id(),
            )
            .with_context(|| format!("online step {step}: updating agent {}", role.name))?;
            record_update(m, &stats);
        }
        let update_s = t.elapsed().as_secs_f64();

        let t = Instant::now();
        write_trees(
            &dir.join("trees").join(format!("step-{step:08}.jsonl")),
            &trees,
        )?;
        let mut metrics = StepMetrics {
            step,
            questions: picked.iter().map(|q| q.id.clone()).collect(),
            agents,
            sample_s,
            update_s,
            checkpoint_s: 0.0,
            sync_s,
        };
        checkpoint(&roles, &ckpt_root, step, model_id)?;
        metrics.checkpoint_s = t.elapsed().as_secs_f64();
        // After the checkpoint: a step is in the metrics only once it is safe.
        append_metrics(&dir.join("metrics.jsonl"), &metrics)?;
        if let Some(ev) = &mut events {
            tensorboard(ev, &metrics);
        }
        history.push(metrics.clone());
        write_rewards(&dir, &history);
        log_step(&metrics, online.steps);
        bar.set_position(step as u64);
        summary.last_step = step;
        malt_model::process::release_freed();
    }
    bar.finish_and_clear();
    if let Some(served) = &mut remote {
        served.release();
    }
    // The adapters as the last finished step left them.
    for role in &roles {
        if let Some((adapter, _, _)) = &role.trained {
            let out = round.online_adapter(&role.name);
            role.policy.save_adapter(adapter, &out, model_id)?;
        }
    }
    Ok(summary)
}

fn update_settings(o: &Online, temperature: f64) -> UpdateSettings {
    UpdateSettings {
        pg: PgSettings {
            clip_low: o.clip_low,
            clip_high: o.clip_high,
            kl_beta: o.kl_beta,
            temperature,
            norm: match o.loss_norm {
                LossNorm::Token => pg::LossNorm::Token,
                LossNorm::Sequence => pg::LossNorm::Sequence,
            },
            is_cap: o.importance_cap,
        },
        epochs: o.epochs,
        micro_batch: o.micro_batch as usize,
        lr: o.lr,
        max_grad_norm: o.max_grad_norm,
    }
}

/// The questions of `step` (1-based): consecutive slices of a seeded permutation of the
/// training split, a new permutation for each pass over it.
fn step_questions(questions: &[Example], step: u32, per_step: u32, seed: u64) -> Vec<Example> {
    let n = questions.len() as u64;
    // Each pass over the split has its own order, shuffled once however many questions of the
    // step fall in it.
    let mut order: Option<(u64, Vec<usize>)> = None;
    (0..per_step as u64)
        .map(|j| {
            let k = (step as u64 - 1) * per_step as u64 + j;
            let (pass, at) = (k / n, k % n);
            if order.as_ref().is_none_or(|(p, _)| *p != pass) {
                let mut o: Vec<usize> = (0..questions.len()).collect();
                malt_base::mix::shuffle(
                    &mut o,
                    malt_train::data::mix_seed(seed, STREAM_ORDER, pass),
                );
                order = Some((pass, o));
            }
            let (_, o) = order.as_ref().expect("set above");
            questions[o[at as usize]].clone()
        })
        .collect()
}

/// The seed step `step`'s trees derive their node seeds from.
pub fn tree_seed(run_seed: u64, step: u32) -> u64 {
    malt_train::data::mix_seed(run_seed, STREAM_TREES, step as u64)
}

/// The embedded sampler of a step: every trained agent on a fresh handle of its adapter (a new
/// cache identity: nothing computed before the last update is reused).
fn embedded_sampler<'m>(model: &'m Model, roles: &[Role<'_>]) -> ModelSampler<'m> {
    let mut sampler = ModelSampler::new(model);
    for role in roles {
        if let Some((adapter, _, _)) = &role.trained {
            sampler = sampler.with_adapter(&role.name, adapter.handle());
        }
    }
    sampler
}

/// One tree per question of step `step`.
fn sample_trees(
    scorer: &mut malt_engine::PluginScorer,
    chain: &ChainSpec,
    sampler: &mut dyn malt_tree::Sampler,
    questions: &[Example],
    seed: u64,
    step: u32,
) -> anyhow::Result<Vec<Tree>> {
    let tree_seed = tree_seed(seed, step);
    let mut errors = malt_tree::score::ErrorCounts::default();
    let mut trees = Vec::with_capacity(questions.len());
    for q in questions {
        let (tree, _) = malt_tree::generate_tree(chain, q, tree_seed, sampler, scorer, &mut errors)
            .with_context(|| format!("online step {step}: sampling the tree of {}", q.id))?;
        trees.push(tree);
    }
    Ok(trees)
}

/// Every agent's rollouts (its trainable nodes with their advantages) and its metrics so far.
///
/// `trained[l]`: whether level `l`'s agent trains (the others get no rollouts).
#[allow(clippy::type_complexity)]
pub fn rollouts(
    trees: &[Tree],
    chain: &ChainSpec,
    thetas: &[f64],
    credit: malt_tree::CreditSettings,
    online: &Online,
    trained: &[bool],
    model: &Model,
) -> anyhow::Result<(Vec<Vec<Rollout>>, Vec<AgentMetrics>)> {
    let estimator = match online.advantage {
        Advantage::Centered => Estimator::Centered,
        Advantage::Normalized => Estimator::Normalized,
        Advantage::LeaveOneOut => Estimator::LeaveOneOut,
    };
    let levels = chain.len();
    let mut out: Vec<Vec<Rollout>> = vec![Vec::new(); levels];
    let mut adv_stats = vec![AdvantageStats::default(); levels];
    let mut value_sum = vec![(0f64, 0usize); levels];
    let mut sampled = vec![0u64; levels];
    let mut reward_sum = vec![(0f64, 0usize); levels];
    let (mut input, mut cr) = (CreditInput::default(), Credit::default());
    for tree in trees {
        input.fill_from_tree(tree, chain);
        assign(&input, thetas, credit.pooling, &mut cr);
        let (adv, per_level) = advantage::advantages(&input, &cr, estimator);
        for (sum, one) in adv_stats.iter_mut().zip(&per_level) {
            sum.add(one);
        }
        for (i, node) in tree.nodes.iter().enumerate() {
            let l = node.level as usize;
            sampled[l] += node.token_ids.as_ref().map_or(0, |t| t.len() as u64);
            if let (Some(r), None) = (node.reward, &node.error) {
                reward_sum[l].0 += r;
                reward_sum[l].1 += 1;
            }
            if let Some(v) = cr.value_of(i) {
                value_sum[l].0 += v;
                value_sum[l].1 += 1;
            }
            let Some(a) = adv[i] else { continue };
            if !trained[l] || (node.is_truncated() && credit.truncated == TruncatedPolicy::Exclude)
            {
                continue;
            }
            let (Some(ids), Some(messages)) = (&node.token_ids, tree.prompt_of(i)) else {
                continue;
            };
            if ids.is_empty() {
                continue;
            }
            let mut seq = model.encode_chat(messages, true)?;
            let prompt_len = seq.len();
            seq.extend_from_slice(ids);
            out[l].push(Rollout {
                seq: Sequence {
                    ids: seq,
                    prompt_len,
                },
                advantage: a as f32,
                sampled: node.logprobs.clone().filter(|l| l.len() == ids.len()),
                id: format!("{} node {i}", tree.question_id),
            });
        }
    }
    let metrics = (0..levels)
        .map(|l| AgentMetrics {
            agent: chain.agents[l].name.clone(),
            trained: trained[l],
            mean_value: value_sum[l].0 / value_sum[l].1.max(1) as f64,
            mean_reward: (reward_sum[l].1 > 0).then(|| reward_sum[l].0 / reward_sum[l].1 as f64),
            nodes: value_sum[l].1,
            advantage_mean: adv_stats[l].mean(),
            advantage_std: adv_stats[l].std(),
            flat_groups: adv_stats[l].flat_groups,
            tokens_sampled: sampled[l],
            // The update's figures, filled in after it (`record_update`).
            ..AgentMetrics::default()
        })
        .collect();
    Ok((out, metrics))
}

fn record_update(m: &mut AgentMetrics, s: &UpdateStats) {
    let tokens = s.pg.tokens.max(1) as f64;
    m.tokens_trained = s.tokens as u64 * s.optimizer_steps as u64;
    m.trained_completions = s.completions;
    m.optimizer_steps = s.optimizer_steps as u64;
    m.loss = s.loss;
    m.kl = s.pg.kl_sum / tokens;
    m.clip_fraction = s.pg.clipped as f64 / tokens;
    m.entropy = s.entropy;
    m.grad_norm = s.grad_norm;
    m.logprob_mismatch = s.logprob_mismatch;
    m.logprob_s = s.logprob_s;
    m.train_s = s.train_s;
    m.optimizer_s = s.optimizer_s;
}

fn log_step(m: &StepMetrics, steps: u32) {
    let per_agent: Vec<String> = m
        .agents
        .iter()
        .map(|a| {
            format!(
                "{} {}{}",
                a.agent,
                match a.mean_reward {
                    Some(r) => format!("reward {r:.3}"),
                    None => format!("value {:.3}", a.mean_value),
                },
                if a.trained {
                    format!(
                        " kl {:.4} clip {:.3} loss {:.4}",
                        a.kl, a.clip_fraction, a.loss
                    )
                } else {
                    " (frozen)".into()
                }
            )
        })
        .collect();
    tracing::info!(
        "online step {}/{steps}: {}; sample {:.1}s, update {:.1}s",
        m.step,
        per_agent.join(", "),
        m.sample_s,
        m.update_s
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use malt_model::candle_core::{DType, Device, Tensor};
    use malt_model::{ModelConfig, SamplingParams};
    use malt_train::{Mode, TokenBatch};
    use malt_tree::{Message, SampleRequest, Sampler};

    /// The log-probs the embedded sampler records while sampling (with an adapter whose B is
    /// not zero) equal the ones the update recomputes from the same ids (f32, 1e-4).
    #[test]
    fn sampling_logprobs_equal_the_updates_recomputation() {
        let cfg = ModelConfig {
            max_position_embeddings: 256,
            ..ModelConfig::llama(128, 32, 64, 2, 4, 2)
        };
        let model = Model::random_seeded(
            cfg,
            &Device::Cpu,
            DType::F32,
            5,
            malt_model::random::DrawOn::Host,
        )
        .unwrap();
        let lora = malt_train::lora_config(4, 8.0, 0.0, &["all-linear".to_string()]).unwrap();
        let policy = MaltPolicy::new(&model, lora);
        let adapter = policy.new_adapter("g", 1).unwrap();
        for (_, v) in adapter.named_vars() {
            let t = v.as_tensor();
            v.set(&(t + Tensor::randn(0f32, 0.2, t.shape(), &Device::Cpu).unwrap()).unwrap())
                .unwrap();
        }
        let mut sampler = ModelSampler::new(&model).with_adapter("g", adapter.handle());
        let messages = vec![Message::user("t3 t4 t5 t9")];
        let params = SamplingParams {
            temperature: 0.8,
            max_new_tokens: 12,
            ..Default::default()
        };
        let seeds = [1u64, 2, 3];
        let out = sampler
            .sample(&[SampleRequest {
                agent: "g",
                messages: &messages,
                params: &params,
                seeds: &seeds,
            }])
            .unwrap()
            .remove(0)
            .unwrap();
        let prompt = model.encode_chat(&messages, true).unwrap();
        let mut recorded = Vec::new();
        let seqs: Vec<Sequence> = out
            .iter()
            .map(|c| {
                let ids = c.token_ids.clone().unwrap();
                let lp = c.logprobs.clone().expect("the sampler records log-probs");
                assert_eq!(lp.len(), ids.len());
                recorded.extend(lp);
                Sequence {
                    ids: [prompt.clone(), ids].concat(),
                    prompt_len: prompt.len(),
                }
            })
            .collect();
        // As the update recomputes them: the siblings together, their prompt computed once, in
        // the first epoch's training pass.
        let refs: Vec<&Sequence> = seqs.iter().collect();
        let batch = TokenBatch::new(&refs, 0);
        let logits = policy
            .shared_prompt_logits(&refs, 0, Some(&adapter), Mode::Train { dropout_seed: None })
            .unwrap();
        let again: Vec<f32> = pg::sampling_logprobs(&logits, &batch.targets, 0.8)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(recorded.len(), again.len());
        let mut worst = 0f32;
        for (a, b) in recorded.iter().zip(&again) {
            worst = worst.max((a - b).abs());
        }
        assert!(
            worst < 1e-4,
            "sampled vs recomputed log-probs differ by {worst}"
        );
    }
}
