//! The shapes a device check runs: the model and the sizes of each speed workload.

use malt_model::config::Llama3RopeScaling;
use malt_model::{LoraConfig, ModelConfig, Proj};
use serde::Serialize;

use malt_train::error::{Result, TrainError};

/// A model shape with the sizes of the workloads measured on it.
#[derive(Debug, Clone, Serialize)]
pub struct Shape {
    pub name: String,
    #[serde(serialize_with = "model_json")]
    pub model: ModelConfig,
    /// Prompt tokens of the prefill measurement (batch 1).
    pub prefill_tokens: usize,
    /// Tokens already in the cache when decoding starts.
    pub decode_context: usize,
    /// New tokens per decoded sequence.
    pub decode_tokens: usize,
    /// Batch sizes of the decode measurements.
    pub decode_batches: Vec<usize>,
    /// The agent tree: branching factor and depth (3-3-3: 3 + 9 + 27 = 39 sequences).
    pub tree_branching: usize,
    pub tree_depth: usize,
    /// Root prompt tokens, and tokens each level adds after its parent's completion.
    pub tree_root_prompt: usize,
    pub tree_level_prompt: usize,
    pub tree_new_tokens: usize,
    /// One LoRA SFT step: sequences x (prompt + completion) tokens, loss on the completion.
    pub sft_sequences: usize,
    pub sft_prompt: usize,
    pub sft_completion: usize,
    /// The adapter of the SFT step.
    #[serde(serialize_with = "lora_json")]
    pub lora: LoraConfig,
}

/// The fields a PyTorch `LlamaConfig` of the same shape is built from (gpu-check compares them).
fn model_json<S: serde::Serializer>(c: &ModelConfig, s: S) -> Result<S::Ok, S::Error> {
    serde_json::json!({
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "rope_theta": c.rope_theta,
        "rope_llama3": c.rope_scaling.is_some(),
        "max_position_embeddings": c.max_position_embeddings,
        "tie_word_embeddings": c.tie_word_embeddings,
    })
    .serialize(s)
}

fn lora_json<S: serde::Serializer>(l: &LoraConfig, s: S) -> Result<S::Ok, S::Error> {
    serde_json::json!({
        "rank": l.r,
        "alpha": l.alpha,
        "dropout": l.dropout,
        "targets": l.targets.iter().map(|p| p.hf_name()).collect::<Vec<_>>(),
    })
    .serialize(s)
}

/// `[train.lora]` of `configs/gsm8k-llama8b.toml` (the paper's setting): rank 8, alpha 16,
/// dropout 0.05 on all seven projections. A test in the host crate checks the two agree.
pub fn paper_lora() -> LoraConfig {
    LoraConfig {
        r: 8,
        alpha: 16.0,
        dropout: 0.05,
        targets: Proj::ALL.to_vec(),
    }
}

/// Llama-3.1-8B(-Instruct)'s config.json: hidden 4096, 32 layers, 32 heads / 8 KV heads, MLP
/// 14336, vocab 128256, RoPE theta 500 000 with Llama-3 scaling, untied embeddings.
pub fn llama31_8b() -> ModelConfig {
    ModelConfig {
        rope_theta: 500_000.0,
        rope_scaling: Some(Llama3RopeScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        }),
        max_position_embeddings: 131_072,
        tie_word_embeddings: false,
        ..ModelConfig::llama(128_256, 4096, 14_336, 32, 32, 8)
    }
}

/// The tiny model the correctness checks compare on (device against CPU): Llama-3's layout
/// (GQA, untied head, theta 500 000) at a size where the CPU reference takes milliseconds.
pub fn correctness_model() -> ModelConfig {
    ModelConfig {
        rope_theta: 500_000.0,
        tie_word_embeddings: false,
        max_position_embeddings: 256,
        ..ModelConfig::llama(512, 64, 176, 2, 4, 2)
    }
}

impl Shape {
    /// `tiny` (a smoke test of every code path: seconds on a CPU) or `llama8b` (the paper's
    /// model and workload sizes: minutes on an H200).
    pub fn named(name: &str) -> Result<Shape> {
        match name {
            "tiny" => Ok(Shape {
                name: name.into(),
                model: ModelConfig {
                    rope_theta: 500_000.0,
                    tie_word_embeddings: false,
                    max_position_embeddings: 1024,
                    ..ModelConfig::llama(2048, 128, 352, 2, 4, 2)
                },
                prefill_tokens: 256,
                decode_context: 64,
                decode_tokens: 8,
                decode_batches: vec![1, 27],
                tree_branching: 3,
                tree_depth: 3,
                tree_root_prompt: 32,
                tree_level_prompt: 16,
                tree_new_tokens: 8,
                sft_sequences: 8,
                sft_prompt: 32,
                sft_completion: 32,
                lora: paper_lora(),
            }),
            "llama8b" => Ok(Shape {
                name: name.into(),
                model: llama31_8b(),
                prefill_tokens: 2048,
                decode_context: 512,
                decode_tokens: 64,
                decode_batches: vec![1, 27],
                tree_branching: 3,
                tree_depth: 3,
                tree_root_prompt: 256,
                tree_level_prompt: 128,
                tree_new_tokens: 64,
                sft_sequences: 8,
                sft_prompt: 512,
                sft_completion: 512,
                lora: paper_lora(),
            }),
            other => Err(TrainError::Settings(format!(
                "unknown shape `{other}` (expected tiny or llama8b)"
            ))),
        }
    }

    /// Sequences of the agent tree (3-3-3: 39).
    pub fn tree_sequences(&self) -> usize {
        (1..=self.tree_depth)
            .map(|d| self.tree_branching.pow(d as u32))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama8b_has_eight_billion_parameters_and_a_39_sequence_tree() {
        let s = Shape::named("llama8b").unwrap();
        let p = crate::device_check::roofline::ModelCounts::of(&s.model).parameters;
        // Llama-3.1-8B: 8.03e9 parameters.
        assert!((8.0e9..8.1e9).contains(&(p as f64)), "{p}");
        assert_eq!(s.tree_sequences(), 39);
        assert!(Shape::named("huge").is_err());
    }
}
