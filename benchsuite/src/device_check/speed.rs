//! Speed on random weights of a shape in bf16, drawn on the device itself: prefill, decode at
//! each batch size, the agent tree and one LoRA SFT step, each with its time floor
//! ([`super::roofline`]) and peak memory ([`super::memory`]).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use malt_model::random::DrawOn;
use malt_model::{Branch, Model, SamplingParams};
use serde::Serialize;

use super::memory::{MemoryProbe, Peak};
use super::roofline::{self, ModelCounts, Roofline};
use super::shape::Shape;
use super::tree::{sample_tree, synthetic_tokens, TreeSpec};
use malt_train::batch::{Sequence, TokenBatch};
use malt_train::error::{Result, TrainError};
use malt_train::loss;
use malt_train::model_bridge::MaltPolicy;
use malt_train::optim::{AdamW, AdamWParams};
use malt_train::policy::{Mode, PolicyModel};

/// A measured section, or why it could not run (the others still do).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Section<T> {
    Done(T),
    Failed { error: String },
}

impl<T> Section<T> {
    fn of(r: Result<T>) -> Self {
        match r {
            Ok(t) => Section::Done(t),
            Err(e) => Section::Failed {
                error: e.to_string(),
            },
        }
    }

    pub fn done(&self) -> Option<&T> {
        match self {
            Section::Done(t) => Some(t),
            Section::Failed { .. } => None,
        }
    }
}

/// Seconds of every timed repeat and their median.
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    pub median_s: f64,
    pub runs_s: Vec<f64>,
}

impl Timing {
    fn of(runs: Vec<f64>) -> Timing {
        let mut sorted = runs.clone();
        sorted.sort_by(f64::total_cmp);
        let median_s = sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN);
        Timing {
            median_s,
            runs_s: runs,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Prefill {
    pub tokens: usize,
    pub timing: Timing,
    pub tokens_per_s: f64,
    pub flops: f64,
    pub achieved_flops_per_s: f64,
    pub mfu: f64,
    pub memory: Peak,
}

#[derive(Debug, Clone, Serialize)]
pub struct Decode {
    pub batch: usize,
    pub context: usize,
    pub new_tokens: usize,
    pub timing: Timing,
    /// All rows together.
    pub tokens_per_s: f64,
    /// One decode step (a token in every row).
    pub ms_per_step: f64,
    pub bytes_moved: f64,
    pub flops: f64,
    pub floor_s: f64,
    /// `bandwidth` or `compute`: which ceiling sets the floor.
    pub bound: String,
    pub roofline_tokens_per_s: f64,
    /// Achieved tokens/s over the roofline's.
    pub roofline_fraction: f64,
    pub memory: Peak,
}

#[derive(Debug, Clone, Serialize)]
pub struct Tree {
    pub sequences: usize,
    pub new_tokens_each: usize,
    pub seconds: f64,
    pub generated_tokens: usize,
    pub tokens_per_s: f64,
    pub prefill_computed: usize,
    pub prefill_minimum: usize,
    /// Approximate floor: each level's decode (weights once per step, one shared prefix) plus
    /// the computed prefill tokens at `2 P` FLOPs each.
    pub floor_s: f64,
    pub roofline_fraction: f64,
    pub memory: Peak,
}

#[derive(Debug, Clone, Serialize)]
pub struct SftStep {
    pub sequences: usize,
    pub seq_len: usize,
    pub loss_positions: usize,
    pub timing: Timing,
    pub tokens_per_s: f64,
    pub losses: Vec<f64>,
    pub flops: f64,
    pub achieved_flops_per_s: f64,
    pub mfu: f64,
    pub memory: Peak,
}

#[derive(Debug, Clone, Serialize)]
pub struct Speed {
    pub shape: Shape,
    pub weights_dtype: String,
    pub parameters: u64,
    pub weight_bytes: u64,
    /// Seconds to draw the random weights on the device.
    pub setup_s: f64,
    pub memory_method: String,
    /// After the weights exist, before any section.
    pub memory_after_setup_mib: f64,
    pub prefill: Option<Section<Prefill>>,
    pub decode: Vec<Section<Decode>>,
    pub sft_step: Option<Section<SftStep>>,
    pub tree: Option<Section<Tree>>,
}

pub struct SpeedSettings {
    pub roofline: Roofline,
    /// Timed repeats of prefill, decode and the SFT step (each after one untimed warm-up).
    pub repeats: usize,
    pub seed: u64,
}

/// Builds the shape's model on `device` and measures every section in turn; `progress` sees
/// the report after each (so a run stopped by a time limit still leaves its figures).
pub fn measure(
    device: &Device,
    shape: &Shape,
    s: &SpeedSettings,
    progress: &mut dyn FnMut(&Speed),
) -> Result<Speed> {
    let probe = MemoryProbe::for_device(device);
    let t = Instant::now();
    let model = Model::random_seeded(
        shape.model.clone(),
        device,
        DType::BF16,
        s.seed,
        DrawOn::Device,
    )
    .map_err(TrainError::model)?;
    device.synchronize()?;
    let setup_s = t.elapsed().as_secs_f64();
    let counts = ModelCounts::of(&shape.model);
    let mut report = Speed {
        shape: shape.clone(),
        weights_dtype: "bf16".into(),
        parameters: counts.parameters,
        weight_bytes: counts.parameters * 2,
        setup_s,
        memory_method: probe.method(),
        memory_after_setup_mib: probe.start(),
        prefill: None,
        decode: vec![],
        sft_step: None,
        tree: None,
    };
    progress(&report);
    let m = Bench {
        model: &model,
        shape,
        s,
        probe: &probe,
    };
    report.prefill = Some(Section::of(m.prefill()));
    progress(&report);
    for &b in &shape.decode_batches {
        report.decode.push(Section::of(m.decode(b)));
        progress(&report);
    }
    report.sft_step = Some(Section::of(m.sft_step()));
    progress(&report);
    report.tree = Some(Section::of(m.tree()));
    progress(&report);
    Ok(report)
}

struct Bench<'a> {
    model: &'a Model,
    shape: &'a Shape,
    s: &'a SpeedSettings,
    probe: &'a MemoryProbe,
}

impl Bench<'_> {
    fn sync(&self) -> Result<()> {
        Ok(self.model.device().synchronize()?)
    }

    /// One untimed warm-up, then `repeats` timed runs of `f`, each ended by a device sync.
    fn timed(&self, mut f: impl FnMut(usize) -> Result<()>) -> Result<Timing> {
        f(0)?;
        self.sync()?;
        let mut runs = vec![];
        for k in 0..self.s.repeats.max(1) {
            let t = Instant::now();
            f(k + 1)?;
            self.sync()?;
            runs.push(t.elapsed().as_secs_f64());
        }
        Ok(Timing::of(runs))
    }

    fn vocab(&self) -> usize {
        self.shape.model.vocab_size
    }

    fn prefill(&self) -> Result<Prefill> {
        let n = self.shape.prefill_tokens;
        let tokens = synthetic_tokens(n, 1, self.vocab());
        let start = self.probe.start();
        let timing = self.timed(|_| {
            self.model
                .prefill(&tokens, None)
                .map_err(TrainError::model)?;
            Ok(())
        })?;
        let flops = roofline::prefill_flops(&self.shape.model, n);
        let rate = flops / timing.median_s;
        Ok(Prefill {
            tokens: n,
            tokens_per_s: n as f64 / timing.median_s,
            flops,
            achieved_flops_per_s: rate,
            mfu: rate / self.s.roofline.peak_flops,
            memory: self.probe.peak(start),
            timing,
        })
    }

    fn decode(&self, batch: usize) -> Result<Decode> {
        let ctx = self.shape.decode_context;
        let n = self.shape.decode_tokens;
        let start = self.probe.start();
        let cache = self
            .model
            .prefill(&synthetic_tokens(ctx, 2, self.vocab()), None)
            .map_err(TrainError::model)?;
        let params = |new: usize| SamplingParams {
            temperature: 0.7,
            max_new_tokens: new as u32,
            ..Default::default()
        };
        let branches = |k: usize| -> Vec<Branch> {
            cache
                .fork(batch)
                .into_iter()
                .enumerate()
                .map(|(i, c)| Branch {
                    cache: c,
                    seed: (k * 1000 + i) as u64,
                })
                .collect()
        };
        let timing = self.timed(|k| {
            // The warm-up decodes a few tokens only: it is there for allocation and kernel load.
            let new = if k == 0 { n.min(4) } else { n };
            self.model
                .generate(branches(k), &params(new), None)
                .map_err(TrainError::model)?;
            Ok(())
        })?;
        let d = &self.model.decoder;
        let (bytes, flops) = roofline::decode_run(
            &self.shape.model,
            d.dtype().size_in_bytes(),
            d.activation_dtype().size_in_bytes(),
            batch,
            ctx,
            n,
        );
        let r = &self.s.roofline;
        let floor_s = r.floor_s(bytes, flops);
        let tokens = (batch * n) as f64;
        let tokens_per_s = tokens / timing.median_s;
        Ok(Decode {
            batch,
            context: ctx,
            new_tokens: n,
            ms_per_step: timing.median_s / n as f64 * 1e3,
            tokens_per_s,
            bytes_moved: bytes,
            flops,
            floor_s,
            bound: if bytes / r.bandwidth_bytes_per_s >= flops / r.peak_flops {
                "bandwidth".into()
            } else {
                "compute".into()
            },
            roofline_tokens_per_s: tokens / floor_s,
            roofline_fraction: tokens_per_s * floor_s / tokens,
            memory: self.probe.peak(start),
            timing,
        })
    }

    fn tree(&self) -> Result<Tree> {
        let sh = self.shape;
        let spec = TreeSpec {
            branching: sh.tree_branching,
            depth: sh.tree_depth,
            root_prompt: sh.tree_root_prompt,
            level_prompt: sh.tree_level_prompt,
            new_tokens: sh.tree_new_tokens,
            seed: self.s.seed,
        };
        let start = self.probe.start();
        let t = Instant::now();
        let out = sample_tree(self.model, &spec)?;
        self.sync()?;
        let seconds = t.elapsed().as_secs_f64();
        let d = &self.model.decoder;
        let r = &self.s.roofline;
        let mut floor_s = 0.0;
        for prompts in &out.level_prompts {
            let rows = prompts.len() * sh.tree_branching;
            let mean_prompt = prompts.iter().sum::<usize>() / prompts.len().max(1);
            let (b, f) = roofline::decode_run(
                &sh.model,
                d.dtype().size_in_bytes(),
                d.activation_dtype().size_in_bytes(),
                rows,
                mean_prompt,
                sh.tree_new_tokens,
            );
            floor_s += r.floor_s(b, f);
        }
        let p = ModelCounts::of(&sh.model).projection_parameters as f64;
        floor_s += 2.0 * p * out.stats.prefill_computed as f64 / r.peak_flops;
        let generated: usize = out.sequences.iter().map(Vec::len).sum();
        Ok(Tree {
            sequences: out.sequences.len(),
            new_tokens_each: sh.tree_new_tokens,
            seconds,
            generated_tokens: generated,
            tokens_per_s: generated as f64 / seconds,
            prefill_computed: out.stats.prefill_computed,
            prefill_minimum: out.stats.prefill_minimum,
            floor_s,
            roofline_fraction: floor_s / seconds,
            memory: self.probe.peak(start),
        })
    }

    /// One LoRA SFT step as the trainer takes it: logits at the completion positions only, the
    /// fused token log-prob, mean NLL, backward, AdamW.
    fn sft_step(&self) -> Result<SftStep> {
        let sh = self.shape;
        let seq_len = sh.sft_prompt + sh.sft_completion;
        let seqs: Vec<Sequence> = (0..sh.sft_sequences)
            .map(|i| Sequence {
                ids: synthetic_tokens(seq_len, 100 + i as u64, self.vocab()),
                prompt_len: sh.sft_prompt,
            })
            .collect();
        let batch = TokenBatch::new(&seqs.iter().collect::<Vec<_>>(), 0);
        let start = self.probe.start();
        let policy = MaltPolicy::new(self.model, sh.lora.clone());
        let adapter = policy.new_adapter("sft-step", self.s.seed)?;
        let mut opt = AdamW::new(policy.trainable_vars(&adapter), AdamWParams::default())?;
        let vars = opt.vars().to_vec();
        let mut losses = vec![];
        let timing = self.timed(|k| {
            let logits = policy.target_logits(
                &batch,
                Some(&adapter),
                Mode::Train {
                    dropout_seed: Some(k as u64),
                },
            )?;
            let lp = loss::token_logprobs(&logits, &batch.targets)?;
            let l = (lp.sum_all()?.neg()? / batch.num_targets() as f64)?;
            let g = l.backward()?;
            let grads = vars
                .iter()
                .map(|(_, v)| match g.get(v.as_tensor()) {
                    Some(t) => Ok(t.clone()),
                    None => v.as_tensor().zeros_like(),
                })
                .collect::<candle_core::Result<Vec<Tensor>>>()?;
            opt.step(&grads, 1e-4)?;
            losses.push(l.to_dtype(DType::F64)?.to_scalar::<f64>()?);
            Ok(())
        })?;
        let flops = roofline::sft_step_flops(
            &sh.model,
            &sh.lora,
            sh.sft_sequences,
            seq_len,
            batch.num_targets(),
        );
        let rate = flops / timing.median_s;
        Ok(SftStep {
            sequences: sh.sft_sequences,
            seq_len,
            loss_positions: batch.num_targets(),
            tokens_per_s: batch.num_tokens() as f64 / timing.median_s,
            losses,
            flops,
            achieved_flops_per_s: rate,
            mfu: rate / self.s.roofline.peak_flops,
            memory: self.probe.peak(start),
            timing,
        })
    }
}
