//! `malt bench train`: tokens/s and peak memory of LoRA SFT and DPO steps on a malt-model
//! `Model`, against plain candle autograd on the same weights and adapter, in the same run.
//!
//! - malt: `Mode::Train` decoder (frozen-weight matmul whose backward skips the weight gradient,
//!   differentiable norms/rope/softmax), LM head only at completion positions, fused
//!   log-softmax-gather with analytic backward.
//! - plain-candle: the same decoder written with plain candle ops: `matmul` (its backward always
//!   computes both operand gradients), `repeat_kv` materialised, logits at every position,
//!   composed `log_softmax` + `gather` cross-entropy.
//!
//! - malt-checkpointed: malt with gradient checkpointing (each layer's forward recomputed in
//!   the backward, only layer inputs kept): the same loss, less memory, more time.
//!
//! A step = forward + loss + backward + AdamW update; all rows of a phase use the same weights,
//! adapter init and synthetic batch, and report the first step's loss (they must agree).
//!
//! Peak memory: exact per phase only in a fresh process, so the CLI should run each
//! (phase, implementation) through `bench_phase` in a child process (`malt bench train` re-exec'ing
//! itself; the ignored test `bench_real_model` does exactly that with the test binary) and read
//! `VmHWM` there. In-process (`bench_train`), before each phase `5` is written to
//! `/proc/self/clear_refs`, which resets the kernel's RSS high-water mark (`VmHWM`) to the
//! current RSS (Linux >= 4.0); `VmHWM` after the phase is then its peak and `peak_delta_mib`
//! subtracts the RSS at its start (weights etc.). Memory the allocator keeps for reuse can still
//! blur in-process deltas. Where the reset is refused the row says
//! `vmhwm-cumulative` (process-wide maxima).

use std::time::Instant;

use candle_core::{DType, Device, Tensor, D};
use malt_model::decoder::Decoder;
use malt_model::{LoraAdapter, LoraConfig, Model, Proj};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use malt_train::batch::{Sequence, TokenBatch};
use malt_train::error::{Result, TrainError};
use malt_train::loss;
use malt_train::model_bridge::MaltPolicy;
use malt_train::optim::{AdamW, AdamWParams};
use malt_train::policy::{Mode, PolicyModel};
use malt_train::settings::DpoSettings;

/// The learning rate of every bench step (the PyTorch peer's too).
pub const LR: f64 = 1e-4;

#[derive(Debug, Clone)]
pub struct BenchSettings {
    /// Sequences per SFT step (pairs per DPO step: 2x sequences).
    pub micro_batch: usize,
    pub prompt_len: usize,
    pub completion_len: usize,
    /// Timed steps per phase, after `warmup` untimed ones.
    pub steps: usize,
    pub warmup: usize,
    pub lora: LoraConfig,
    pub seed: u64,
    /// Also measure the plain-candle baseline.
    pub baseline: bool,
    /// Also measure malt with gradient checkpointing (`malt-checkpointed`).
    pub gradient_checkpointing: bool,
}

impl Default for BenchSettings {
    fn default() -> Self {
        BenchSettings {
            micro_batch: 1,
            prompt_len: 192,
            completion_len: 64,
            steps: 2,
            warmup: 0,
            lora: LoraConfig {
                dropout: 0.0,
                ..LoraConfig::default()
            },
            seed: 0,
            baseline: true,
            gradient_checkpointing: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct BenchRow {
    /// `sft` or `dpo`.
    pub phase: String,
    /// `malt`, `malt-checkpointed`, `plain-candle` or `torch-peft` (`malt bench train --torch`).
    pub implementation: String,
    pub steps: usize,
    pub tokens_per_step: usize,
    /// Mean wall time of the timed steps.
    pub secs_per_step: f64,
    /// Each timed step's wall time, for medians over repeated measurements.
    #[serde(default)]
    pub step_secs: Vec<f64>,
    /// CPU time (user + system, all threads) per timed step: unlike wall time it hardly moves
    /// when other processes share the cores, so it is the figure to compare across runs.
    #[serde(default)]
    pub cpu_secs_per_step: Option<f64>,
    pub tokens_per_s: f64,
    /// VmHWM after the phase (MiB).
    pub peak_rss_mib: Option<f64>,
    /// VmHWM after minus RSS before the phase (MiB).
    pub peak_delta_mib: Option<f64>,
    /// `clear_refs-reset` or `vmhwm-cumulative`.
    pub memory_method: String,
    /// Loss of the first step (both implementations must agree).
    pub first_loss: f64,
}

/// User + system CPU seconds of this process so far (`/proc/self/stat`, 100 ticks per second,
/// the Linux ABI value of `CLK_TCK`).
fn cpu_secs() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn status_kib(field: &str) -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn reset_hwm() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Plain candle autograd forward of `d` with `adapter`: logits at every position (b, s, vocab).
pub fn plain_forward(d: &Decoder, ids: &Tensor, adapter: &LoraAdapter) -> Result<Tensor> {
    let c = &d.cfg;
    let dev = ids.device();
    let (b, s) = ids.dims2()?;
    let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
    let n_rep = c.n_rep();
    let eps = c.rms_norm_eps as f32;
    let inv = c.rope_inv_freq();
    let half = inv.len();
    let inv = Tensor::from_vec(inv, (1, half), dev)?;
    let pos = Tensor::arange(0u32, s as u32, dev)?
        .to_dtype(DType::F32)?
        .reshape((s, 1))?;
    let freqs = pos.matmul(&inv)?;
    let cos =
        Tensor::cat(&[&freqs.cos()?, &freqs.cos()?], D::Minus1)?.reshape((1, 1, s, 2 * half))?;
    let sin =
        Tensor::cat(&[&freqs.sin()?, &freqs.sin()?], D::Minus1)?.reshape((1, 1, s, 2 * half))?;
    let mask: Vec<f32> = (0..s)
        .flat_map(|i| (0..s).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    let mask = Tensor::from_vec(mask, (1, 1, s, s), dev)?;
    let rope = |x: &Tensor| -> candle_core::Result<Tensor> {
        let x1 = x.narrow(D::Minus1, 0, hd / 2)?;
        let x2 = x.narrow(D::Minus1, hd / 2, hd - hd / 2)?;
        let rot = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        x.broadcast_mul(&cos)? + rot.broadcast_mul(&sin)?
    };
    let scale = adapter.scale();
    let lin = |x: &Tensor, layer: usize, p: Proj| -> candle_core::Result<Tensor> {
        let l = d.layers[layer].proj(p);
        let dims = x.dims().to_vec();
        let n: usize = dims[..dims.len() - 1].iter().product();
        let x2 = x.reshape((n, dims[dims.len() - 1]))?;
        let mut y = x2.matmul(&l.w.t()?)?;
        if let Some(bias) = &l.b {
            y = y.broadcast_add(bias)?;
        }
        if let Some(pair) = adapter.get(layer, p) {
            let delta = x2
                .matmul(&pair.a.as_tensor().t()?)?
                .matmul(&pair.b.as_tensor().t()?)?;
            y = (y + (delta * scale)?)?;
        }
        let mut out = dims;
        let last = out.len() - 1;
        out[last] = y.dim(1)?;
        y.reshape(out)
    };
    let repeat_kv = |x: Tensor| -> candle_core::Result<Tensor> {
        if n_rep == 1 {
            Ok(x)
        } else {
            Tensor::cat(&vec![&x; n_rep], 2)?.reshape((b, nkv * n_rep, s, hd))
        }
    };
    let mut x = d.embed(ids).map_err(TrainError::model)?;
    for (i, layer) in d.layers.iter().enumerate() {
        let h = candle_nn::ops::rms_norm_slow(&x, &layer.input_norm, eps)?;
        let mut q = lin(&h, i, Proj::Q)?
            .reshape((b, s, nh, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let mut k = lin(&h, i, Proj::K)?
            .reshape((b, s, nkv, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let v = lin(&h, i, Proj::V)?
            .reshape((b, s, nkv, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
            q = candle_nn::ops::rms_norm_slow(&q, qn, eps)?;
            k = candle_nn::ops::rms_norm_slow(&k, kn, eps)?;
        }
        let q = rope(&q)?;
        let k = repeat_kv(rope(&k)?)?;
        let v = repeat_kv(v)?;
        let att = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?.broadcast_add(&mask)?;
        let att = candle_nn::ops::softmax(&att, D::Minus1)?;
        let o = att.matmul(&v)?.transpose(1, 2)?.reshape((b, s, nh * hd))?;
        x = (x + lin(&o, i, Proj::O)?)?;
        let h = candle_nn::ops::rms_norm_slow(&x, &layer.post_norm, eps)?;
        let m = (candle_nn::ops::silu(&lin(&h, i, Proj::Gate)?)? * lin(&h, i, Proj::Up)?)?;
        x = (x + lin(&m, i, Proj::Down)?)?;
    }
    let x = candle_nn::ops::rms_norm_slow(&x, &d.norm, eps)?;
    let hs = c.hidden_size;
    Ok(x.reshape((b * s, hs))?
        .matmul(&d.lm_head.t()?)?
        .reshape((b, s, c.vocab_size))?)
}

/// Per-token log-probs at the batch's targets, plain candle: full logits, composed CE.
fn plain_token_logprobs(d: &Decoder, batch: &TokenBatch, adapter: &LoraAdapter) -> Result<Tensor> {
    let dev = d.device();
    let logits = plain_forward(d, &batch.ids_tensor(dev)?, adapter)?;
    let v = logits.dim(2)?;
    let lsm = candle_nn::ops::log_softmax(
        &logits.reshape((batch.batch * batch.seq_len, v))?,
        D::Minus1,
    )?;
    let sel = lsm.index_select(&batch.positions_tensor(dev)?, 0)?;
    let n = batch.num_targets();
    let idx = Tensor::from_vec(batch.targets.clone(), (n, 1), dev)?;
    Ok(sel.gather(&idx, 1)?.reshape(n)?)
}

fn synthetic(s: &BenchSettings, vocab: usize, n: usize, salt: u64) -> Vec<Sequence> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(s.seed ^ salt);
    (0..n)
        .map(|_| Sequence {
            ids: (0..s.prompt_len + s.completion_len)
                .map(|_| rng.random_range(0..vocab as u32))
                .collect(),
            prompt_len: s.prompt_len,
        })
        .collect()
}

/// The batch of a `phase` step (`sft`: `micro_batch` sequences; `dpo`: `micro_batch` chosen then
/// as many rejected), the same for every implementation: `malt bench train --torch` hands these
/// ids to the PyTorch peer.
pub fn synthetic_batch(s: &BenchSettings, vocab: usize, phase: &str) -> Vec<Sequence> {
    let n = if phase == "dpo" {
        2 * s.micro_batch
    } else {
        s.micro_batch
    };
    synthetic(s, vocab, n, 0x5eed)
}

fn check(s: &BenchSettings) -> Result<()> {
    if s.micro_batch == 0 || s.steps == 0 || s.prompt_len == 0 || s.completion_len == 0 {
        return Err(TrainError::Settings(
            "bench: micro_batch, steps, prompt_len and completion_len must be >= 1".into(),
        ));
    }
    Ok(())
}

/// Runs every phase (`sft`, `dpo`) for `malt` (and `malt-checkpointed` when
/// `s.gradient_checkpointing`, `plain-candle` when `s.baseline`) in this process. See the
/// module docs for the memory method.
pub fn bench_train(model: &Model, s: &BenchSettings) -> Result<Vec<BenchRow>> {
    check(s)?;
    let mut impls = vec!["malt"];
    if s.gradient_checkpointing {
        impls.push("malt-checkpointed");
    }
    if s.baseline {
        impls.push("plain-candle");
    }
    let mut rows = vec![];
    for phase in ["sft", "dpo"] {
        for imp in &impls {
            rows.push(bench_phase(model, s, phase, imp)?);
        }
    }
    Ok(rows)
}

/// One (phase, implementation) measurement: `phase` is `sft` or `dpo`, `implementation` is
/// `malt`, `malt-checkpointed` or `plain-candle`. Run it in a fresh child process for an exact
/// peak.
pub fn bench_phase(
    model: &Model,
    s: &BenchSettings,
    phase: &str,
    implementation: &str,
) -> Result<BenchRow> {
    check(s)?;
    let known = ["malt", "malt-checkpointed", "plain-candle"];
    if !matches!(phase, "sft" | "dpo") || !known.contains(&implementation) {
        return Err(TrainError::Settings(format!(
            "bench: unknown phase `{phase}` or implementation `{implementation}` \
             (sft|dpo, malt|malt-checkpointed|plain-candle)"
        )));
    }
    let policy = MaltPolicy::new(model, s.lora.clone())
        .with_gradient_checkpointing(implementation == "malt-checkpointed");
    let d = &model.decoder;
    let vocab = model.config().vocab_size;
    let dpo = DpoSettings::default();
    let seqs = synthetic_batch(s, vocab, phase);
    let refs: Vec<&Sequence> = seqs.iter().collect();
    let batch = TokenBatch::new(&refs, 0);
    let tokens = batch.num_tokens();
    // The same fresh adapter (seeded) for both implementations.
    let adapter = policy.new_adapter("bench", s.seed)?;
    let mut opt = AdamW::new(policy.trainable_vars(&adapter), AdamWParams::default())?;
    let vars = opt.vars().to_vec();
    let memory_ok = reset_hwm();
    let rss0 = status_kib("VmRSS:");
    let mut first_loss = f64::NAN;
    let mut timed = Vec::with_capacity(s.steps);
    let mut cpu = Some(0f64);
    let total = s.steps + s.warmup;
    for k in 0..total {
        let t0 = Instant::now();
        let c0 = cpu_secs();
        let lp = if implementation != "plain-candle" {
            let mode = Mode::Train {
                dropout_seed: Some(k as u64),
            };
            let logits = policy.target_logits(&batch, Some(&adapter), mode)?;
            loss::token_logprobs(&logits, &batch.targets)?
        } else {
            plain_token_logprobs(d, &batch, &adapter)?
        };
        let l = if phase == "sft" {
            (lp.sum_all()?.neg()? / batch.num_targets() as f64)?
        } else {
            let sums = loss::sequence_sums(&batch, &lp)?;
            let b = s.micro_batch;
            let zeros = Tensor::zeros(b, DType::F32, &Device::Cpu)?.to_device(sums.device())?;
            let (c, r) = (sums.narrow(0, 0, b)?, sums.narrow(0, b, b)?);
            loss::dpo_terms(&c, &r, &zeros, &zeros, &dpo)?
                .losses
                .mean_all()?
        };
        if k == 0 {
            first_loss = l.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        }
        let g = l.backward()?;
        let grads: Vec<Tensor> = vars
            .iter()
            .map(|(_, v)| match g.get(v.as_tensor()) {
                Some(t) => Ok(t.clone()),
                None => v.as_tensor().zeros_like(),
            })
            .collect::<candle_core::Result<_>>()?;
        opt.step(&grads, LR)?;
        if k >= s.warmup {
            timed.push(t0.elapsed().as_secs_f64());
            cpu = cpu.zip(cpu_secs().zip(c0)).map(|(c, (b, a))| c + b - a);
        }
    }
    let hwm = status_kib("VmHWM:");
    let spp = timed.iter().sum::<f64>() / s.steps as f64;
    Ok(BenchRow {
        phase: phase.into(),
        implementation: implementation.into(),
        steps: s.steps,
        tokens_per_step: tokens,
        secs_per_step: spp,
        step_secs: timed,
        cpu_secs_per_step: cpu.map(|c| c / s.steps as f64),
        tokens_per_s: tokens as f64 / spp.max(1e-12),
        peak_rss_mib: hwm.map(|k| k / 1024.0),
        peak_delta_mib: hwm.zip(rss0).map(|(h, r)| (h - r) / 1024.0),
        memory_method: if memory_ok {
            "clear_refs-reset"
        } else {
            "vmhwm-cumulative"
        }
        .into(),
        first_loss,
    })
}
