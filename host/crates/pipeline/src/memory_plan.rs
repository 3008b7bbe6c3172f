//! Predicted peak memory of each stage of a config on its device, before anything is loaded:
//! `malt check` prints it, and a run refuses to start a model whose predicted peak exceeds what
//! the device has free (an 8B model in f32 on a 24 GB CPU) instead of dying out of memory an
//! hour in. The formulas are in `malt_model::footprint`; this module applies them to the
//! config's stages.

use malt_config::{Backend, Config, Method};
use malt_model::candle_core::DType;
use malt_model::{footprint, DeviceMemory, ModelConfig, Proj};

/// Tokens assumed for a question and its template before the chain's own outputs: prompts are
/// not known before the dataset plugin renders them.
pub const PROMPT_ALLOWANCE: usize = 512;

/// Set to `off` to start a run whatever the prediction says.
pub const SKIP_ENV: &str = "MALT_MEMORY_CHECK";

#[derive(Debug, Clone)]
pub struct StagePeak {
    pub stage: String,
    pub bytes: u64,
    /// What the peak is made of, for the user to see which setting to change.
    pub parts: Vec<(String, u64)>,
}

/// What the prediction means for a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Fits,
    /// More than is free now, less than the device has.
    Tight(String),
    /// More than the device has at all.
    Refused(String),
}

#[derive(Debug, Clone)]
pub struct MemoryPlan {
    pub device: String,
    pub weights: DType,
    pub activations: DType,
    pub parameters: u64,
    pub stages: Vec<StagePeak>,
}

impl MemoryPlan {
    /// The stage with the largest predicted peak.
    pub fn peak(&self) -> Option<&StagePeak> {
        self.stages.iter().max_by_key(|s| s.bytes)
    }

    /// Whether the largest stage fits in the device's memory: refused when it exceeds what the
    /// device has at all (no amount of waiting makes it fit), a warning when it exceeds only
    /// what is free now (other processes may finish). The message says which stage, by how
    /// much, and what would make it fit.
    pub fn verdict(&self, memory: DeviceMemory) -> Verdict {
        let Some(peak) = self.peak() else {
            return Verdict::Fits;
        };
        let over = |limit: u64, what: &str| {
            format!(
                "predicted peak memory {} ({}) exceeds the {} {what} on {}; it needs {} more. \
                 Options: {}. ({}=off skips this check.)",
                gib(peak.bytes),
                peak.stage,
                gib(limit),
                self.device,
                gib(peak.bytes - limit),
                self.advice(peak).join("; "),
                SKIP_ENV
            )
        };
        if peak.bytes > memory.total {
            Verdict::Refused(over(memory.total, "it has in all"))
        } else if peak.bytes > memory.free {
            Verdict::Tight(over(memory.free, "free now"))
        } else {
            Verdict::Fits
        }
    }

    fn advice(&self, peak: &StagePeak) -> Vec<&'static str> {
        let mut advice = Vec::new();
        if self.device == "cpu" {
            advice.push("a GPU (`--device cuda:0`, with the CUDA build: scripts/cuda-build)");
            if self.weights == DType::F32 {
                advice.push("half-precision weights (`--dtype bf16`)");
            }
        }
        advice.push("a smaller model");
        if peak.stage.starts_with("train") {
            advice.push(
                "shorter `max_seq_len`, a smaller `micro_batch` or `gradient_checkpointing = true` in [train]",
            );
        } else {
            advice
                .push("fewer `branches` or `max_new_tokens`, or a smaller eval `batch_questions`");
        }
        advice
    }

    /// One line per stage: its peak and what it is made of.
    pub fn render(&self) -> String {
        let mut out = format!(
            "memory on {}: {:.2} B parameters, weights {}, activations {}\n",
            self.device,
            self.parameters as f64 / 1e9,
            dtype_name(self.weights),
            dtype_name(self.activations)
        );
        for s in &self.stages {
            let parts: Vec<String> = s
                .parts
                .iter()
                .map(|(what, b)| format!("{what} {}", gib(*b)))
                .collect();
            out.push_str(&format!(
                "  {:<36} {:>10}  = {}\n",
                s.stage,
                gib(s.bytes),
                parts.join(" + ")
            ));
        }
        out
    }
}

pub fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        DType::F32 => "f32",
        _ => "other",
    }
}

/// The dtype `[model] dtype` asks for on `device` (`auto`: see `malt_model::default_dtype`).
pub fn weight_dtype(config: &Config, stored: DType) -> anyhow::Result<DType> {
    let cpu = config.model.device == "cpu";
    Ok(match config.model.dtype.as_str() {
        "auto" => malt_model::default_dtype_for(cpu, stored),
        d => malt_model::parse_dtype(d)?,
    })
}

/// The plan of every stage `config` runs, for a model of shape `model` stored in `stored`.
pub fn plan(config: &Config, model: &ModelConfig, stored: DType) -> anyhow::Result<MemoryPlan> {
    let cpu = config.model.device == "cpu";
    let weights = weight_dtype(config, stored)?;
    let act = if cpu { DType::F32 } else { weights };
    let w = footprint::weight_bytes(model, weights, act);
    let parameters = footprint::weight_bytes(model, DType::U8, DType::U8);
    let mut stages = vec![StagePeak {
        stage: "load".into(),
        bytes: w + footprint::largest_tensor_bytes(model, stored),
        parts: vec![
            ("weights".into(), w),
            (
                "one tensor being converted".into(),
                footprint::largest_tensor_bytes(model, stored),
            ),
        ],
    }];
    let outputs: usize = config
        .agents
        .iter()
        .map(|a| a.max_new_tokens as usize)
        .sum();
    let context = PROMPT_ALLOWANCE + outputs;
    let prefill = footprint::prefill_bytes(model, context, act);
    if config.generation.backend == Backend::Embedded {
        // A tree decodes one level at a time; the deepest has every branch of every agent,
        // and the prefix pool keeps the earlier levels' keys and values.
        let (mut rows, mut pooled) = (1usize, 0usize);
        for a in &config.agents {
            pooled += rows;
            rows *= a.branches.max(1) as usize;
        }
        let decode = footprint::decode_bytes(model, rows, context, act);
        let pool = footprint::decode_bytes(model, pooled, context, act);
        stages.push(StagePeak {
            stage: "generate".into(),
            bytes: w + decode + pool + prefill,
            parts: vec![
                ("weights".into(), w),
                (
                    format!("{rows} rows x {context} positions decoding"),
                    decode,
                ),
                (format!("prefix pool of {pooled}"), pool),
                ("prefill".into(), prefill),
            ],
        });
    }
    for a in &config.agents {
        let plan = &a.train;
        let phases: &[(&str, bool)] = match plan.method {
            Method::Sft => &[("sft", false)],
            Method::Dpo => &[("dpo", true)],
            Method::SftThenDpo => &[("sft", false), ("dpo", true)],
            Method::None => &[],
        };
        let targets: Vec<Proj> = plan
            .lora
            .targets
            .iter()
            .filter_map(|t| Proj::ALL.into_iter().find(|p| p.hf_name() == t))
            .collect();
        let lora = footprint::lora_training_bytes(model, plan.lora.rank as usize, &targets);
        for &(phase, dpo) in phases {
            let optim = if dpo {
                &plan.dpo.optim
            } else {
                &plan.sft.optim
            };
            // DPO's policy pass holds the chosen and the rejected completion together.
            let rows = optim.micro_batch.max(1) as usize * if dpo { 2 } else { 1 };
            let seq = optim.max_seq_len as usize;
            let ckpt = plan.gradient_checkpointing;
            let path = footprint::TrainPath::of(cpu, act);
            let acts = footprint::train_activation_bytes(model, rows, seq, act, path, ckpt);
            stages.push(StagePeak {
                stage: format!(
                    "train {} {phase}{}",
                    a.name,
                    if ckpt { " (checkpointed)" } else { "" }
                ),
                bytes: w + lora + acts,
                parts: vec![
                    ("weights".into(), w),
                    ("LoRA + AdamW".into(), lora),
                    (format!("activations {rows} x {seq} tokens"), acts),
                ],
            });
        }
    }
    let rows = config.eval.batch_questions.max(1) * config.eval.majority_k.max(1) as usize;
    let decode = footprint::decode_bytes(model, rows, context, act);
    stages.push(StagePeak {
        stage: "eval".into(),
        bytes: w + decode + prefill,
        parts: vec![
            ("weights".into(), w),
            (
                format!("{rows} rows x {context} positions decoding"),
                decode,
            ),
            ("prefill".into(), prefill),
        ],
    });
    Ok(MemoryPlan {
        device: config.model.device.clone(),
        weights,
        activations: act,
        parameters,
        stages,
    })
}
