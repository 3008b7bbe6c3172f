//! malt-train: LoRA SFT and DPO per agent.
//!
//! The loop (`trainer`) is written against two small traits (`policy::PolicyModel`,
//! `policy::ChatTokenizer`); `model_bridge` implements them for malt-model's `Model`.
//!
//! Entry points: `run_schedule` (all agents, or one: `malt train CONFIG [--agent NAME]`),
//! `train_agent` (one agent's `sft` / `dpo` / `sft-then-dpo`), `train_phase` (one phase),
//! `bench_train` (`malt bench train`).
//!
//! Files (see `trainer` for the layout):
//! - `<run>/datasets/<agent>/{sft,dpo}.jsonl`: TRL conversational input.
//! - `<run>/adapters/<agent>/{sft,dpo}/`: final PEFT adapters (`final_adapter_dir` picks dpo,
//!   else sft).
//! - `<run>/train/<agent>/<phase>/metrics.jsonl`: one JSON object per optimiser step
//!   (`"kind":"train"`: step, epoch, loss, lr, grad_norm, tokens, tokens_per_s and for DPO
//!   reward_margin, accuracy, chosen_reward, rejected_reward) and per eval (`"kind":"eval"`:
//!   step, epoch, eval_loss, examples and for DPO the reward fields).
//! - `<run>/train/<agent>/<phase>/loss.svg`, `complete.json` (the `PhaseReport` plus the
//!   `fingerprint` of its data and settings: resume reuses a finished phase only when it matches).
//! - `<run>/train/<agent>/<phase>/checkpoints/step-XXXXXXXX/{adapter/, optimizer.safetensors,
//!   state.json}` (see `checkpoint`), the newest two kept.
//! - `<run>/datasets/<agent>/dpo.ref-<key16>.safetensors` (`chosen_logps`, `rejected_logps` f32,
//!   `chosen_tokens`, `rejected_tokens` u32, indexed by dataset line) + `.json` description;
//!   key = sha256(dataset sha256, reference adapter sha256 or "base", model/tokenizer
//!   fingerprint, max_seq_len).

pub mod batch;
pub mod checkpoint;
pub mod curve;
pub mod data;
mod dpo;
pub mod error;
pub mod fingerprint;
pub mod heldout;
pub mod loss;
pub mod metrics;
pub mod model_bridge;
pub mod online;
pub mod optim;
pub mod pg;
pub mod policy;
pub mod reference;
pub mod settings;
mod timings;
pub mod trainer;

pub use batch::{Sequence, TokenBatch};
pub use error::{Result, TrainError};
pub use model_bridge::{lora_config, MaltPolicy, MaltTokenizer};
pub use policy::{ChatTokenizer, Mode, PolicyModel};
pub use settings::{
    AgentPlan, DpoLossKind, DpoSettings, Method, OptimSettings, Phase, RunOptions, ScheduleKind,
};
pub use trainer::{
    adapter_dir, final_adapter_dir, load_final_adapters, run_schedule, train_agent, train_phase,
    PhaseReport, PhaseSpec, PhaseTimings,
};
