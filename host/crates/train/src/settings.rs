//! Plain settings structs. Key names mirror the config crate's `[train.sft]` / `[train.dpo]`
//! tables so the CLI can copy them field by field.

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// Learning-rate schedule after warmup (HF `get_{linear,cosine}_schedule_with_warmup`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    Cosine,
    Linear,
    Constant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DpoLossKind {
    /// `-log sigmoid(beta * h)` (with cDPO label smoothing when `label_smoothing > 0`).
    Sigmoid,
    /// `(h - 1/(2 beta))^2` on length-normalised log-probs (as TRL does for IPO).
    Ipo,
}

/// Per-agent training method, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    Sft,
    Dpo,
    SftThenDpo,
    None,
}

/// Which training phase (decides the dataset file and the output directory name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Sft,
    Dpo,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Sft => "sft",
            Phase::Dpo => "dpo",
        }
    }
}

impl Method {
    pub fn phases(self) -> &'static [Phase] {
        match self {
            Method::Sft => &[Phase::Sft],
            Method::Dpo => &[Phase::Dpo],
            Method::SftThenDpo => &[Phase::Sft, Phase::Dpo],
            Method::None => &[],
        }
    }
}

/// Optimiser and loop settings shared by SFT and DPO (`[train.sft]`, `[train.dpo]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OptimSettings {
    pub lr: f64,
    pub epochs: u32,
    /// 0 = run `epochs` epochs; otherwise exactly this many optimiser steps (wrapping epochs).
    pub max_steps: u32,
    /// Sequences (SFT) or pairs (DPO) per forward pass.
    pub micro_batch: u32,
    /// Micro-batches per optimiser step.
    pub grad_accum: u32,
    pub max_seq_len: u32,
    pub warmup_ratio: f64,
    pub schedule: ScheduleKind,
    pub weight_decay: f64,
    /// 0 disables clipping.
    pub max_grad_norm: f64,
    /// Checkpoint every N optimiser steps (0 = only at the end).
    pub save_every: u32,
    /// Seeds the eval split, the per-epoch shuffles, fresh adapters and dropout.
    pub seed: u64,
    /// Fraction of the dataset held out for eval (deterministic by `seed`); 0 disables eval.
    pub eval_ratio: f64,
    /// Evaluate every N steps (0 = at the end of each epoch and at the end of the run).
    pub eval_every: u32,
}

impl Default for OptimSettings {
    fn default() -> Self {
        OptimSettings {
            lr: 2e-4,
            epochs: 1,
            max_steps: 0,
            micro_batch: 1,
            grad_accum: 8,
            max_seq_len: 1024,
            warmup_ratio: 0.1,
            schedule: ScheduleKind::Cosine,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            save_every: 50,
            seed: 0,
            eval_ratio: 0.05,
            eval_every: 0,
        }
    }
}

impl OptimSettings {
    /// The DPO defaults of the config crate (lower learning rate).
    pub fn dpo_default() -> Self {
        OptimSettings {
            lr: 5e-5,
            ..OptimSettings::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(TrainError::Settings(m.to_string()));
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return bad("lr must be a finite number >= 0");
        }
        if self.micro_batch == 0 || self.grad_accum == 0 {
            return bad("micro_batch and grad_accum must be >= 1");
        }
        if self.max_seq_len < 2 {
            return bad("max_seq_len must be >= 2");
        }
        if self.epochs == 0 && self.max_steps == 0 {
            return bad("one of epochs or max_steps must be > 0");
        }
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            return bad("warmup_ratio must be in [0, 1]");
        }
        if !(0.0..1.0).contains(&self.eval_ratio) {
            return bad("eval_ratio must be in [0, 1)");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight_decay must be >= 0");
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm >= 0.0) {
            return bad("max_grad_norm must be >= 0");
        }
        Ok(())
    }
}

/// DPO-specific settings (`[train.dpo]`: beta, label_smoothing, loss).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DpoSettings {
    /// Default 0.1 (TRL); the MALT paper used 0.2.
    pub beta: f64,
    /// cDPO: the preference label is flipped with this probability (0 = plain DPO).
    pub label_smoothing: f64,
    pub loss: DpoLossKind,
    /// LoRA dropout in the policy's DPO passes. Off by default: the reference pass has none,
    /// and TRL disables dropout for DPO.
    #[serde(default)]
    pub lora_dropout: bool,
}

impl Default for DpoSettings {
    fn default() -> Self {
        DpoSettings {
            beta: 0.1,
            label_smoothing: 0.0,
            loss: DpoLossKind::Sigmoid,
            lora_dropout: false,
        }
    }
}

impl DpoSettings {
    pub fn validate(&self) -> Result<()> {
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return Err(TrainError::Settings("dpo beta must be > 0".into()));
        }
        if !(0.0..0.5).contains(&self.label_smoothing) {
            return Err(TrainError::Settings(
                "dpo label_smoothing must be in [0, 0.5)".into(),
            ));
        }
        Ok(())
    }
}

/// One agent's training plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentPlan {
    pub name: String,
    pub method: Method,
    #[serde(default)]
    pub sft: OptimSettings,
    #[serde(default = "OptimSettings::dpo_default")]
    pub dpo: OptimSettings,
    #[serde(default)]
    pub dpo_loss: DpoSettings,
}

/// How a run is executed (not part of the training result).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Continue from the newest complete checkpoint of each phase; finished phases are skipped.
    pub resume: bool,
    /// Show an indicatif progress bar on stderr.
    pub progress: bool,
    /// Test hook that simulates a kill: return after this many optimiser steps of a phase
    /// (checkpoints are written as usual, the final adapter is not).
    pub stop_after_steps: Option<u64>,
    /// Written into the PEFT `adapter_config.json` (`base_model_name_or_path`).
    pub base_model: String,
}
