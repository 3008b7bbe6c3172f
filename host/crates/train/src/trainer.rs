//! The training loop (SFT and DPO share it), reference log-probs, and the per-agent
//! schedule.
//!
//! Run-directory layout:
//! - input:  `<run>/datasets/<agent>/{sft,dpo}.jsonl` (TRL formats)
//! - work:   `<run>/train/<agent>/<phase>/{metrics.jsonl, loss.svg, complete.json, checkpoints/}`
//! - output: `<run>/adapters/<agent>/<phase>/` (PEFT adapter, written atomically at the end)
//! - cache:  `<run>/datasets/<agent>/dpo.ref-<key>.safetensors` (+ `.json` description)

use std::path::{Path, PathBuf};
use std::time::Instant;

pub use crate::timings::PhaseTimings;

use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::batch::{Sequence, TokenBatch};
use crate::checkpoint::{self, TrainerState};
use crate::data::{self, DpoItem, SftItem};
use crate::error::{Result, TrainError};
use crate::loss;
use crate::metrics::{self, EvalMetrics, MetricsLog, StepMetrics};
use crate::optim::{self, AdamW, AdamWParams};
use crate::policy::{ChatTokenizer, Mode, PolicyModel};
use crate::reference::{
    compute_ref_logprobs, dpo_forward, load_ref_cache, ref_cache_path, save_ref_cache, RefLogprobs,
};
use crate::settings::{AgentPlan, DpoLossKind, DpoSettings, OptimSettings, Phase, RunOptions};

pub use crate::heldout::{evaluate_dpo, evaluate_sft, DpoEval};

/// Everything one training phase needs.
#[derive(Debug, Clone)]
pub struct PhaseSpec {
    pub agent: String,
    pub phase: Phase,
    pub dataset: PathBuf,
    /// Work directory (metrics, checkpoints).
    pub out_dir: PathBuf,
    /// Final PEFT adapter directory.
    pub adapter_out: PathBuf,
    /// Start from this adapter instead of a fresh one. For DPO it is also the frozen reference
    /// (MALT: the agent's SFT adapter); `None` = fresh adapter, reference = the base model.
    pub init_adapter: Option<PathBuf>,
    pub optim: OptimSettings,
    pub dpo: DpoSettings,
}

impl PhaseSpec {
    /// The standard layout under a run directory.
    pub fn in_run(run_dir: &Path, plan: &AgentPlan, phase: Phase, init: Option<PathBuf>) -> Self {
        PhaseSpec {
            agent: plan.name.clone(),
            phase,
            dataset: dataset_path(run_dir, &plan.name, phase),
            out_dir: malt_layout::RoundLayout::at(run_dir).train_phase(&plan.name, phase.name()),
            adapter_out: adapter_dir(run_dir, &plan.name, phase),
            init_adapter: init,
            optim: match phase {
                Phase::Sft => plan.sft.clone(),
                Phase::Dpo => plan.dpo.clone(),
            },
            dpo: plan.dpo_loss.clone(),
        }
    }
}

pub fn dataset_path(run_dir: &Path, agent: &str, phase: Phase) -> PathBuf {
    malt_layout::RoundLayout::at(run_dir).dataset(agent, phase.name())
}

pub fn adapter_dir(run_dir: &Path, agent: &str, phase: Phase) -> PathBuf {
    malt_layout::RoundLayout::at(run_dir).adapter(agent, phase.name())
}

/// The adapter inference should use for an agent: its last finished phase (dpo, else sft).
pub fn final_adapter_dir(run_dir: &Path, agent: &str) -> Option<PathBuf> {
    [Phase::Dpo, Phase::Sft]
        .into_iter()
        .map(|p| adapter_dir(run_dir, agent, p))
        .find(|d| d.join("adapter_config.json").exists())
}

/// Summary of one phase (also written as `complete.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseReport {
    pub agent: String,
    pub phase: Phase,
    pub steps: u64,
    pub total_steps: u64,
    pub last_loss: Option<f64>,
    pub eval: Option<EvalMetrics>,
    pub adapter_dir: PathBuf,
    /// false when `stop_after_steps` stopped the run early (no final adapter written).
    pub completed: bool,
    pub resumed_from: Option<u64>,
    pub train_examples: usize,
    pub eval_examples: usize,
    /// Where this run of the phase spent its time (zero for a phase reused as finished).
    #[serde(default)]
    pub timings: PhaseTimings,
}

/// sha256 over the adapter's variable names and f32 values: identifies a reference adapter.
pub fn adapter_hash(vars: &[(String, Var)]) -> Result<String> {
    let mut h = Sha256::new();
    for (name, v) in vars {
        h.update(name.as_bytes());
        h.update([0u8]);
        let data = v
            .as_tensor()
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        for x in data {
            h.update(x.to_le_bytes());
        }
    }
    Ok(hex::encode(h.finalize()))
}

pub(crate) fn sha_hex(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    hex::encode(h.finalize())
}

/// Per-micro-batch DPO statistics (sums, not means).
#[derive(Default, Clone, Copy)]
pub(crate) struct DpoStats {
    pub(crate) loss_sum: f64,
    pub(crate) chosen_sum: f64,
    pub(crate) rejected_sum: f64,
    pub(crate) correct: usize,
    pub(crate) pairs: usize,
}

/// DPO loss on a chunk: returns (sum of pair losses tensor, stats).
pub(crate) fn dpo_chunk_loss<M: PolicyModel>(
    model: &M,
    adapter: Option<&M::Adapter>,
    chunk: &[DpoItem],
    refs: &RefLogprobs,
    s: &DpoSettings,
    pad_id: u32,
    mode: Mode,
) -> Result<(Tensor, DpoStats)> {
    let (sums, counts, b) = dpo_forward(model, adapter, chunk, pad_id, mode)?;
    let dev = sums.device().clone();
    let ipo = s.loss == DpoLossKind::Ipo;
    let norm = |x: f32, c: u32| if ipo { x / (c.max(1) as f32) } else { x };
    let (rc, rr): (Vec<f32>, Vec<f32>) = chunk
        .iter()
        .map(|i| {
            (
                norm(refs.chosen[i.index], refs.chosen_tokens[i.index]),
                norm(refs.rejected[i.index], refs.rejected_tokens[i.index]),
            )
        })
        .unzip();
    let sums = if ipo {
        let c: Vec<f32> = counts.iter().map(|&c| c.max(1) as f32).collect();
        (sums / Tensor::from_vec(c, 2 * b, &dev)?)?
    } else {
        sums
    };
    let pi_c = sums.narrow(0, 0, b)?;
    let pi_r = sums.narrow(0, b, b)?;
    let t = loss::dpo_terms(
        &pi_c,
        &pi_r,
        &Tensor::from_vec(rc, b, &dev)?,
        &Tensor::from_vec(rr, b, &dev)?,
        s,
    )?;
    let cr: Vec<f32> = t.chosen_rewards.to_vec1()?;
    let rj: Vec<f32> = t.rejected_rewards.to_vec1()?;
    let loss_sum = t.losses.sum_all()?;
    let stats = DpoStats {
        loss_sum: loss_sum.to_dtype(DType::F64)?.to_scalar::<f64>()?,
        chosen_sum: cr.iter().map(|&x| x as f64).sum(),
        rejected_sum: rj.iter().map(|&x| x as f64).sum(),
        correct: cr.iter().zip(&rj).filter(|(c, r)| c > r).count(),
        pairs: b,
    };
    Ok((loss_sum, stats))
}

/// Tokenised data of a phase.
enum PhaseData {
    Sft(Vec<SftItem>),
    Dpo(Vec<DpoItem>, RefLogprobs),
}

impl PhaseData {
    fn len(&self) -> usize {
        match self {
            PhaseData::Sft(v) => v.len(),
            PhaseData::Dpo(v, _) => v.len(),
        }
    }
    fn id(&self, i: usize) -> String {
        match self {
            PhaseData::Sft(v) => v[i].id.clone(),
            PhaseData::Dpo(v, _) => v[i].id.clone(),
        }
    }
}

/// Trains one phase (SFT or DPO) of one agent. With `opts.resume`, continues from the newest
/// checkpoint in `spec.out_dir` (or returns the stored report if the phase already finished).
pub fn train_phase<M: PolicyModel>(
    model: &M,
    tok: &dyn ChatTokenizer,
    spec: &PhaseSpec,
    opts: &RunOptions,
) -> Result<PhaseReport> {
    let started = Instant::now();
    let mut timings = PhaseTimings::default();
    let o = &spec.optim;
    o.validate()?;
    if spec.phase == Phase::Dpo {
        spec.dpo.validate()?;
    }
    let complete_path = spec.out_dir.join("complete.json");
    let ckpt_root = spec.out_dir.join("checkpoints");
    if !opts.resume {
        // A fresh run must not pick up anything of an older one.
        for p in [ckpt_root.clone(), complete_path.clone()] {
            if p.is_dir() {
                std::fs::remove_dir_all(&p).map_err(|e| TrainError::io(&p, e))?;
            } else if p.exists() {
                std::fs::remove_file(&p).map_err(|e| TrainError::io(&p, e))?;
            }
        }
    }
    std::fs::create_dir_all(&spec.out_dir).map_err(|e| TrainError::io(&spec.out_dir, e))?;
    let pad_id = tok.eos_id();
    let msl = o.max_seq_len as usize;
    let mb = o.micro_batch as usize;

    // The adapter the phase starts from (and, for DPO, the reference).
    let init = match &spec.init_adapter {
        Some(dir) => Some(model.load_adapter(dir, &spec.agent)?),
        None => None,
    };
    let init_hash = match &init {
        Some(a) => adapter_hash(&model.trainable_vars(a))?,
        None => "base".to_string(),
    };

    let (data, dataset_sha) = match spec.phase {
        Phase::Sft => {
            let f = data::load_sft(&spec.dataset)?;
            (
                PhaseData::Sft(data::tokenize_sft(tok, &f.records, msl)?),
                f.sha256,
            )
        }
        Phase::Dpo => {
            let f = data::load_dpo(&spec.dataset)?;
            let items = data::tokenize_dpo(tok, &f.records, msl)?;
            let cache = ref_cache_path(
                &spec.dataset,
                &f.sha256,
                &init_hash,
                &tok.fingerprint(),
                o.max_seq_len,
            );
            let refs = match load_ref_cache(&cache, items.len())? {
                Some(r) => {
                    tracing::info!("reference log-probs from cache {}", cache.display());
                    r
                }
                None => {
                    let t = Instant::now();
                    tracing::info!("computing reference log-probs ({} pairs)", items.len());
                    let r = compute_ref_logprobs(model, init.as_ref(), &items, mb, pad_id)?;
                    let desc = serde_json::json!({
                        "dataset": spec.dataset, "dataset_sha256": f.sha256,
                        "reference_adapter": spec.init_adapter, "reference_adapter_sha256": init_hash,
                        "tokenizer": tok.fingerprint(), "max_seq_len": o.max_seq_len, "pairs": items.len(),
                    });
                    save_ref_cache(&cache, &r, &desc)?;
                    timings.reference_s = t.elapsed().as_secs_f64();
                    r
                }
            };
            (PhaseData::Dpo(items, refs), f.sha256)
        }
    };
    let n = data.len();
    let (train_idx, eval_idx) = data::split_indices(n, o.eval_ratio, o.seed);
    let n_train = train_idx.len();
    let per_step = mb * o.grad_accum as usize;
    let spe = n_train.div_ceil(per_step) as u64;
    let total = if o.max_steps > 0 {
        o.max_steps as u64
    } else {
        o.epochs as u64 * spe
    };
    let warmup = optim::warmup_steps(total, o.warmup_ratio);
    let fingerprint = {
        let mut fo = o.clone();
        fo.save_every = 0;
        fo.eval_every = 0;
        sha_hex(&[
            &dataset_sha,
            &serde_json::to_string(&fo)?,
            &serde_json::to_string(&spec.dpo)?,
            spec.phase.name(),
            &init_hash,
            &tok.fingerprint(),
        ])
    };

    // A finished phase is reused only for the same data and settings: `complete.json` carries
    // the fingerprint, like the checkpoints do.
    if opts.resume && spec.adapter_out.exists() {
        if let Some(done) = read_complete(&complete_path, &fingerprint)? {
            return Ok(done);
        }
    }

    // Policy adapter: the init adapter (continued), else fresh; replaced by the checkpoint's on resume.
    let mut adapter = match init {
        Some(a) => a,
        None => model.new_adapter(&spec.agent, data::mix_seed(o.seed, data::STREAM_INIT, 0))?,
    };
    let mut start_step = 0u64;
    let mut tokens_seen = 0u64;
    let mut last_loss = None;
    let mut resumed_from = None;
    let mut last_ckpt: Option<PathBuf> = None;
    let resume_ckpt = if opts.resume {
        checkpoint::latest_checkpoint(&ckpt_root)?
    } else {
        None
    };
    if let Some((step, dir)) = &resume_ckpt {
        let st = checkpoint::read_state(dir)?;
        if st.fingerprint != fingerprint {
            return Err(TrainError::Checkpoint {
                path: dir.clone(),
                msg: "dataset, settings, tokenizer or initial adapter differ from the checkpointed run; \
                      start without --resume"
                    .into(),
            });
        }
        adapter = model.load_adapter(&dir.join("adapter"), &spec.agent)?;
        start_step = *step;
        tokens_seen = st.tokens_seen;
        last_loss = st.last_loss;
        resumed_from = Some(*step);
        last_ckpt = Some(dir.clone());
    }
    let vars = model.trainable_vars(&adapter);
    let mut opt = AdamW::new(
        vars.clone(),
        AdamWParams {
            weight_decay: o.weight_decay,
            ..AdamWParams::default()
        },
    )?;
    if let Some((step, dir)) = &resume_ckpt {
        opt.load(&dir.join("optimizer.safetensors"), *step)?;
    }
    let mut log = MetricsLog::open(&spec.out_dir.join("metrics.jsonl"), resumed_from)?;

    let bar = if opts.progress {
        let b = indicatif::ProgressBar::new(total);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}",
        ) {
            b.set_style(style.progress_chars("=> "));
        }
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_prefix(format!("{} {}", spec.agent, spec.phase.name()));
    bar.set_position(start_step);

    let state_at = |step: u64, tokens_seen: u64, last_loss: Option<f64>| TrainerState {
        format: 1,
        agent: spec.agent.clone(),
        phase: spec.phase.name().into(),
        step,
        total_steps: total,
        steps_per_epoch: spe,
        next_epoch: step / spe.max(1),
        next_batch_in_epoch: step % spe.max(1),
        next_lr: optim::lr_at(o.schedule, o.lr, step, total, warmup),
        seed: o.seed,
        rng: "stateless: splitmix64(seed, stream, epoch|step*65536+micro)".into(),
        fingerprint: fingerprint.clone(),
        tokens_seen,
        last_loss,
    };
    let save_ckpt = |step: u64,
                     tokens_seen: u64,
                     last_loss: Option<f64>,
                     adapter: &M::Adapter,
                     opt: &AdamW| {
        checkpoint::write_checkpoint(&ckpt_root, &state_at(step, tokens_seen, last_loss), |tmp| {
            model.save_adapter(adapter, &tmp.join("adapter"), &opts.base_model)?;
            opt.save(&tmp.join("optimizer.safetensors"))
        })
    };
    let do_eval = |adapter: &M::Adapter, step: u64| -> Result<Option<EvalMetrics>> {
        if eval_idx.is_empty() {
            return Ok(None);
        }
        let epoch = step as f64 / spe.max(1) as f64;
        Ok(Some(match &data {
            PhaseData::Sft(items) => {
                let ev: Vec<SftItem> = eval_idx.iter().map(|&i| items[i].clone()).collect();
                EvalMetrics {
                    kind: "eval".into(),
                    step,
                    epoch,
                    eval_loss: evaluate_sft(model, Some(adapter), &ev, mb, pad_id)?,
                    examples: ev.len(),
                    reward_margin: None,
                    accuracy: None,
                    chosen_reward: None,
                    rejected_reward: None,
                }
            }
            PhaseData::Dpo(items, refs) => {
                let ev: Vec<DpoItem> = eval_idx.iter().map(|&i| items[i].clone()).collect();
                let e = evaluate_dpo(model, Some(adapter), &ev, refs, &spec.dpo, mb, pad_id)?;
                EvalMetrics {
                    kind: "eval".into(),
                    step,
                    epoch,
                    eval_loss: e.loss,
                    examples: ev.len(),
                    reward_margin: Some(e.reward_margin),
                    accuracy: Some(e.accuracy),
                    chosen_reward: Some(e.chosen_reward),
                    rejected_reward: Some(e.rejected_reward),
                }
            }
        }))
    };

    tracing::info!(
        "training {} {}: {} train / {} eval examples, {} steps ({} per epoch), starting at step {}",
        spec.agent,
        spec.phase.name(),
        n_train,
        eval_idx.len(),
        total,
        spe,
        start_step
    );
    let mut perm_cache: Option<(u64, Vec<usize>)> = None;
    let mut last_eval = None;
    let mut step = start_step;
    timings.setup_s = started.elapsed().as_secs_f64() - timings.reference_s;
    while step < total {
        let t0 = Instant::now();
        let epoch = step / spe;
        let bie = (step % spe) as usize;
        if perm_cache.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let p = data::epoch_permutation(n_train, o.seed, epoch);
            perm_cache = Some((epoch, p.into_iter().map(|i| train_idx[i]).collect()));
        }
        let order = &perm_cache
            .as_ref()
            .map(|(_, p)| p.as_slice())
            .unwrap_or(&[]);
        let ex: Vec<usize> = order[bie * per_step..((bie + 1) * per_step).min(n_train)].to_vec();
        let lr = optim::lr_at(o.schedule, o.lr, step, total, warmup);

        // Normaliser over the whole optimiser step so accumulated micro-batch gradients equal the
        // gradient of one big batch: SFT = token mean, DPO = pair mean.
        let denom = match &data {
            PhaseData::Sft(items) => ex
                .iter()
                .map(|&i| {
                    let s = &items[i].seq;
                    s.ids.len().saturating_sub(s.prompt_len.max(1))
                })
                .sum::<usize>(),
            PhaseData::Dpo(..) => ex.len(),
        }
        .max(1) as f64;
        let mut acc: Vec<Option<Tensor>> = vec![None; vars.len()];
        let mut step_loss = 0f64;
        let mut step_tokens = 0u64;
        let mut dstats = DpoStats::default();
        for (micro, chunk) in ex.chunks(mb).enumerate() {
            let mode = Mode::Train {
                dropout_seed: data::mix_seed(
                    o.seed,
                    data::STREAM_DROPOUT,
                    step * 65536 + micro as u64,
                ),
            };
            let loss_t = match &data {
                PhaseData::Sft(items) => {
                    let seqs: Vec<&Sequence> = chunk.iter().map(|&i| &items[i].seq).collect();
                    let batch = TokenBatch::new(&seqs, pad_id);
                    step_tokens += batch.num_tokens() as u64;
                    if batch.num_targets() == 0 {
                        continue;
                    }
                    let logits = model.target_logits(&batch, Some(&adapter), mode)?;
                    let lp = loss::token_logprobs(&logits, &batch.targets)?;
                    (lp.sum_all()?.neg()? / denom)?
                }
                PhaseData::Dpo(items, refs) => {
                    let its: Vec<DpoItem> = chunk.iter().map(|&i| items[i].clone()).collect();
                    step_tokens += its
                        .iter()
                        .map(|i| (i.chosen.ids.len() + i.rejected.ids.len()) as u64)
                        .sum::<u64>();
                    let (l, st) =
                        dpo_chunk_loss(model, Some(&adapter), &its, refs, &spec.dpo, pad_id, mode)?;
                    dstats.chosen_sum += st.chosen_sum;
                    dstats.rejected_sum += st.rejected_sum;
                    dstats.correct += st.correct;
                    dstats.pairs += st.pairs;
                    (l / denom)?
                }
            };
            let v = loss_t.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if !v.is_finite() {
                bar.abandon();
                return Err(TrainError::NonFinite {
                    what: "loss",
                    value: v,
                    step: step + 1,
                    micro,
                    examples: chunk.iter().map(|&i| data.id(i)).collect(),
                    last_checkpoint: last_ckpt,
                });
            }
            step_loss += v;
            let grads = loss_t.backward()?;
            for (slot, (_, var)) in acc.iter_mut().zip(&vars) {
                if let Some(g) = grads.get(var.as_tensor()) {
                    *slot = Some(match slot.take() {
                        Some(a) => (a + g)?,
                        None => g.clone(),
                    });
                }
            }
        }
        let mut grads: Vec<Tensor> = acc
            .into_iter()
            .zip(&vars)
            .map(|(g, (_, v))| match g {
                Some(g) => Ok(g),
                None => v.as_tensor().zeros_like(),
            })
            .collect::<candle_core::Result<_>>()?;
        let grad_norm = optim::clip_grad_norm(&mut grads, o.max_grad_norm)?;
        if !grad_norm.is_finite() {
            bar.abandon();
            return Err(TrainError::NonFinite {
                what: "gradient norm",
                value: grad_norm,
                step: step + 1,
                micro: 0,
                examples: ex.iter().map(|&i| data.id(i)).collect(),
                last_checkpoint: last_ckpt,
            });
        }
        opt.step(&grads, lr)?;
        if step == start_step {
            timings.first_step_s = t0.elapsed().as_secs_f64();
        } else {
            timings.later_steps_s += t0.elapsed().as_secs_f64();
            timings.later_steps += 1;
        }
        step += 1;
        tokens_seen += step_tokens;
        last_loss = Some(step_loss);
        let secs = t0.elapsed().as_secs_f64().max(1e-9);
        let tps = step_tokens as f64 / secs;
        let dp = (dstats.pairs > 0).then_some(dstats.pairs as f64);
        log.append(&StepMetrics {
            kind: "train".into(),
            step,
            epoch: step as f64 / spe as f64,
            loss: step_loss,
            lr,
            grad_norm,
            tokens: step_tokens,
            tokens_per_s: tps,
            reward_margin: dp.map(|p| (dstats.chosen_sum - dstats.rejected_sum) / p),
            accuracy: dp.map(|p| dstats.correct as f64 / p),
            chosen_reward: dp.map(|p| dstats.chosen_sum / p),
            rejected_reward: dp.map(|p| dstats.rejected_sum / p),
        })?;
        bar.set_message(format!("loss {step_loss:.4} lr {lr:.2e} {tps:.0} tok/s"));
        bar.set_position(step);

        let eval_due = if o.eval_every > 0 {
            step.is_multiple_of(o.eval_every as u64) || step == total
        } else {
            step.is_multiple_of(spe) || step == total
        };
        if eval_due {
            let t = Instant::now();
            if let Some(e) = do_eval(&adapter, step)? {
                log.append(&e)?;
                last_eval = Some(e);
            }
            timings.eval_s += t.elapsed().as_secs_f64();
        }
        if (o.save_every > 0 && step.is_multiple_of(o.save_every as u64)) || step == total {
            let t = Instant::now();
            last_ckpt = Some(save_ckpt(step, tokens_seen, last_loss, &adapter, &opt)?);
            timings.checkpoint_s += t.elapsed().as_secs_f64();
        }
        if opts.stop_after_steps.is_some_and(|k| step >= k) && step < total {
            bar.abandon();
            return Ok(PhaseReport {
                agent: spec.agent.clone(),
                phase: spec.phase,
                steps: step,
                total_steps: total,
                last_loss,
                eval: last_eval,
                adapter_dir: spec.adapter_out.clone(),
                completed: false,
                resumed_from,
                train_examples: n_train,
                eval_examples: eval_idx.len(),
                timings,
            });
        }
    }
    bar.finish();
    if last_eval.is_none() && !eval_idx.is_empty() {
        // Resumed at the very end, or total == 0: still report an eval.
        let t = Instant::now();
        last_eval = do_eval(&adapter, step)?;
        timings.eval_s += t.elapsed().as_secs_f64();
    }
    let finishing = Instant::now();
    checkpoint::write_dir_atomic(&spec.adapter_out, |tmp| {
        model.save_adapter(&adapter, tmp, &opts.base_model)
    })?;
    let (tr, ev) = metrics::read_metrics(&spec.out_dir.join("metrics.jsonl"))?;
    let svg = metrics::loss_svg(
        &format!("{} {} loss", spec.agent, spec.phase.name()),
        &tr.iter()
            .map(|m| (m.step as f64, m.loss))
            .collect::<Vec<_>>(),
        &ev.iter()
            .map(|m| (m.step as f64, m.eval_loss))
            .collect::<Vec<_>>(),
    );
    let svg_path = spec.out_dir.join("loss.svg");
    std::fs::write(&svg_path, svg).map_err(|e| TrainError::io(&svg_path, e))?;
    let report = PhaseReport {
        agent: spec.agent.clone(),
        phase: spec.phase,
        steps: step,
        total_steps: total,
        last_loss,
        eval: last_eval,
        adapter_dir: spec.adapter_out.clone(),
        completed: true,
        resumed_from,
        train_examples: n_train,
        eval_examples: eval_idx.len(),
        timings: PhaseTimings::default(),
    };
    let mut complete = serde_json::to_value(&report)?;
    complete["fingerprint"] = serde_json::Value::String(fingerprint.clone());
    std::fs::write(&complete_path, serde_json::to_string_pretty(&complete)?)
        .map_err(|e| TrainError::io(&complete_path, e))?;
    timings.finish_s = finishing.elapsed().as_secs_f64();
    timings.total_s = started.elapsed().as_secs_f64();
    tracing::info!(
        "trained {} {} ({} steps) in {}",
        spec.agent,
        spec.phase.name(),
        step - start_step,
        timings.summary()
    );
    Ok(PhaseReport { timings, ..report })
}

/// The report of a finished phase if `path` exists and was written for `fingerprint`. A phase
/// finished on other data or settings is logged and trained again (`None`).
fn read_complete(path: &Path, fingerprint: &str) -> Result<Option<PhaseReport>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(TrainError::io(path, e)),
    };
    let value: serde_json::Value = serde_json::from_str(&text)?;
    if value.get("fingerprint").and_then(|f| f.as_str()) != Some(fingerprint) {
        tracing::warn!(
            "{}: the phase finished on other data, settings or initial adapter; training it again",
            path.display()
        );
        return Ok(None);
    }
    Ok(Some(serde_json::from_value(value)?))
}

/// Runs one agent's schedule (`sft`, `dpo` or `sft-then-dpo`) on `<run>/datasets/<agent>/`.
/// DPO after SFT starts from, and uses as its frozen reference, the SFT adapter (MALT).
/// Stops after a phase that did not complete (`stop_after_steps`).
pub fn train_agent<M: PolicyModel>(
    model: &M,
    tok: &dyn ChatTokenizer,
    run_dir: &Path,
    plan: &AgentPlan,
    opts: &RunOptions,
) -> Result<Vec<PhaseReport>> {
    let mut out = vec![];
    let mut init: Option<PathBuf> = None;
    for &phase in plan.method.phases() {
        let spec = PhaseSpec::in_run(run_dir, plan, phase, init.clone());
        let rep = train_phase(model, tok, &spec, opts)?;
        let done = rep.completed;
        init = Some(rep.adapter_dir.clone());
        out.push(rep);
        if !done {
            break;
        }
    }
    Ok(out)
}

/// Runs every agent's schedule in order (or only `only_agent`).
pub fn run_schedule<M: PolicyModel>(
    model: &M,
    tok: &dyn ChatTokenizer,
    run_dir: &Path,
    plans: &[AgentPlan],
    only_agent: Option<&str>,
    opts: &RunOptions,
) -> Result<Vec<PhaseReport>> {
    if let Some(a) = only_agent {
        if !plans.iter().any(|p| p.name == a) {
            return Err(TrainError::Settings(format!(
                "unknown agent `{a}` (known: {})",
                plans
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    let mut out = vec![];
    for plan in plans
        .iter()
        .filter(|p| only_agent.is_none_or(|a| a == p.name))
    {
        let reps = train_agent(model, tok, run_dir, plan, opts)?;
        let stop = reps.iter().any(|r| !r.completed);
        out.extend(reps);
        if stop {
            break;
        }
    }
    Ok(out)
}
