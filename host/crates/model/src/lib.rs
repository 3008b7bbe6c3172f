//! The model layer of malt: a Llama / Qwen2 / Qwen3 decoder on candle with an inference path and
//! a differentiable training path over one frozen base, per-agent LoRA adapters (PEFT format),
//! forkable KV caches, batched and tree sampling, chat templates, and the embedded default model.
//!
//! Typical use by the tree engine:
//! ```no_run
//! # fn main() -> malt_model::Result<()> {
//! use malt_model::{Model, Message, SamplingParams, TreeSampler, parse_device};
//! let model = Model::load("smollm2-135m-instruct", &parse_device("cpu")?)?;
//! let prompt = model.encode_chat(&[Message::user("2+2?")], true)?;
//! let mut tree = TreeSampler::new(&model, 7);
//! let params = SamplingParams { temperature: 0.3, max_new_tokens: 64, ..Default::default() };
//! let gens = tree.sample(None, &prompt, None, 3, &params, &[])?;
//! # let _ = gens; Ok(()) }
//! ```

mod arena;
pub mod chat;
pub mod config;
#[cfg(feature = "cuda")]
mod cuda;
pub mod decode_batch;
pub mod decoder;
pub mod device;
mod dropout;
pub mod error;
pub mod fetch;
pub mod footprint;
pub mod generate;
pub mod gguf_tokenizer;
mod grad_checkpoint;
pub mod kernels;
pub mod kv;
pub mod layer;
pub mod lora;
mod mode_ops;
pub mod model;
pub mod process;
pub mod random;
pub mod sampling;
pub mod tokenizer;
pub mod tree;
pub mod weights;

pub use chat::{ChatTemplate, Message};
pub use config::{Arch, ModelConfig};
pub use decode_batch::{DecodeBatch, Finished, Joiner};
pub use decoder::{activation_dtype, Decoder, Mode};
pub use device::{device_memory, parse_device, DeviceMemory};
pub use error::{ModelError, Result};
pub use generate::{Branch, Completion, Finish, Step};
pub use kv::Cache;
pub use lora::{LoraAdapter, LoraConfig, Proj};
pub use model::{default_dtype, default_dtype_for, parse_dtype, parse_dtype_or_auto, Model};
pub use sampling::{branch_seed, SamplingParams};
pub use tokenizer::Tokenizer;
pub use tree::{NodeRequest, TreeSampler, TreeStats};

pub use candle_core;
pub use tokenizers;
