//! Predicted memory of the model's work, from its shape alone: what `malt check` reports per
//! stage and what a run checks before it loads 16 GB it cannot hold.
//!
//! Every figure counts the tensors this crate keeps alive, element by element, not a rule of
//! thumb; the formulas sit beside each function. They are upper bounds for the paths they
//! describe: candle frees an intermediate as soon as nothing refers to it, and sequences are
//! counted at their longest (`max_seq_len`).

use crate::config::ModelConfig;
use crate::lora::Proj;
use candle_core::DType;

/// Bytes of the weights held in `dtype` (matrices) with norms and biases in `act`.
pub fn weight_bytes(cfg: &ModelConfig, dtype: DType, act: DType) -> u64 {
    let (w, a) = (dtype.size_in_bytes() as u64, act.size_in_bytes() as u64);
    let h = cfg.hidden_size as u64;
    let matrices: u64 = Proj::ALL
        .iter()
        .map(|&p| {
            let (o, i) = p.dims(cfg);
            (o * i) as u64
        })
        .sum::<u64>()
        * cfg.num_hidden_layers as u64;
    let embed = cfg.vocab_size as u64 * h;
    let head = if cfg.tie_word_embeddings { 0 } else { embed };
    let qkv = (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) as u64 * cfg.head_dim as u64;
    let per_layer_small = 2 * h
        + if cfg.qkv_bias { qkv } else { 0 }
        + if cfg.o_bias { h } else { 0 }
        + if cfg.qk_norm {
            2 * cfg.head_dim as u64
        } else {
            0
        };
    (matrices + embed + head) * w + (per_layer_small * cfg.num_hidden_layers as u64 + h) * a
}

/// Bytes of the largest single weight (the embeddings, as stored): what loading holds beside
/// the converted weights at its peak (see `weights.rs`: one tensor at a time).
pub fn largest_tensor_bytes(cfg: &ModelConfig, stored: DType) -> u64 {
    let embed = (cfg.vocab_size * cfg.hidden_size) as u64;
    let mlp = (cfg.intermediate_size * cfg.hidden_size) as u64;
    // A GGUF tensor is dequantised to f32 before its conversion.
    embed.max(mlp) * stored.size_in_bytes().max(4) as u64
}

/// Keys and values of one token in every layer, in the activations' dtype.
pub fn kv_bytes_per_token(cfg: &ModelConfig, act: DType) -> u64 {
    2 * (cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim) as u64
        * act.size_in_bytes() as u64
}

/// Trainable LoRA parameters of rank `rank` on `targets` in every layer.
pub fn lora_params(cfg: &ModelConfig, rank: usize, targets: &[Proj]) -> u64 {
    targets
        .iter()
        .map(|&p| {
            let (o, i) = p.dims(cfg);
            (rank * (o + i)) as u64
        })
        .sum::<u64>()
        * cfg.num_hidden_layers as u64
}

/// Bytes a LoRA training keeps for its parameters beyond the base: the f32 parameters, their
/// gradient, the accumulated gradient and AdamW's two moments.
pub fn lora_training_bytes(cfg: &ModelConfig, rank: usize, targets: &[Proj]) -> u64 {
    5 * 4 * lora_params(cfg, rank, targets)
}

/// How a training forward computes: which intermediates it keeps for the backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainPath {
    /// f32 on the CPU: `crate::kernels::fused`'s ops keep their inputs only.
    Fused,
    /// Any other device or dtype: candle's composed ops keep every intermediate.
    Composed,
}

impl TrainPath {
    /// The path a training forward takes on a device (`cpu`) with activations `act`.
    pub fn of(cpu: bool, act: DType) -> TrainPath {
        if cpu && act == DType::F32 {
            TrainPath::Fused
        } else {
            TrainPath::Composed
        }
    }

    /// Elements kept per token and layer (H hidden, K the keys' and values' width, I
    /// intermediate, n heads, s sequence length), counted from `Decoder::run` in training mode
    /// with LoRA dropout on:
    /// - fused: the residual stream and both norms' outputs (3H + the residual sums 2H), one
    ///   dropout mask per projection input (5H + I), q/k/v, their head-major copies and the
    ///   rotated q/k (3H + 5K), the attention output and its row-major copy (2H), the o/down
    ///   outputs (2H), gate, up and their SwiGLU (3I), scores and probabilities (2ns):
    ///   17H + 5K + 4I + 2ns;
    /// - composed: besides, every RMSNorm keeps its square and normalised input (+2H each),
    ///   each LoRA projection its base, update and sum (3x the output width), RoPE its products
    ///   and rotated half (5x width), the softmax its scaled, masked, shifted and exponentiated
    ///   scores (6ns in all), SwiGLU its sigmoid: 39H + 11K + 11I + 6ns.
    fn per_token_layer(self, h: u64, k: u64, i: u64, ns: u64) -> u64 {
        match self {
            TrainPath::Fused => 17 * h + 5 * k + 4 * i + 2 * ns,
            TrainPath::Composed => 39 * h + 11 * k + 11 * i + 6 * ns,
        }
    }
}

/// The activations one training forward keeps for its backward, for `rows` sequences of
/// `seq` tokens, activations in `act` (see [`TrainPath::per_token_layer`] for the count). The
/// logits and their f32 log-softmax add about `rows * seq * vocab * (act + 12)` bytes (an upper
/// bound: only completion positions get logits). With gradient checkpointing only each
/// layer's input (H) stays for the whole step, and one layer's activations at a time are
/// rebuilt.
pub fn train_activation_bytes(
    cfg: &ModelConfig,
    rows: usize,
    seq: usize,
    act: DType,
    path: TrainPath,
    checkpointing: bool,
) -> u64 {
    let a = act.size_in_bytes() as u64;
    let tokens = (rows * seq) as u64;
    let h = cfg.hidden_size as u64;
    let k = (cfg.num_key_value_heads * cfg.head_dim) as u64;
    let i = cfg.intermediate_size as u64;
    let ns = (cfg.num_attention_heads * seq) as u64;
    let per_layer = path.per_token_layer(h, k, i, ns);
    let layers = cfg.num_hidden_layers as u64;
    let kept = if checkpointing {
        tokens * (layers * h + per_layer) * a
    } else {
        tokens * layers * per_layer * a
    };
    kept + tokens * cfg.vocab_size as u64 * (a + 12)
}

/// Working memory of one inference forward over `tokens` positions of one sequence (a
/// prefill): a layer's temporaries at a time (about 4H + 3I per token, the n x s x s scores
/// and probabilities in f32) and the last position's logits.
pub fn prefill_bytes(cfg: &ModelConfig, tokens: usize, act: DType) -> u64 {
    let a = act.size_in_bytes() as u64;
    let t = tokens as u64;
    let h = cfg.hidden_size as u64;
    let i = cfg.intermediate_size as u64;
    t * (4 * h + 3 * i) * a
        + 2 * (cfg.num_attention_heads as u64) * t * t * 4
        + cfg.vocab_size as u64 * 4
}

/// Bytes of a batched decode of `rows` sequences with room for `context` positions each:
/// their keys and values (buffers grow in steps of 128 positions) and every row's f32 logits
/// twice (the logits and the sampler's probabilities).
pub fn decode_bytes(cfg: &ModelConfig, rows: usize, context: usize, act: DType) -> u64 {
    let cap = context.div_ceil(128) * 128;
    rows as u64 * cap as u64 * kv_bytes_per_token(cfg, act)
        + rows as u64 * cfg.vocab_size as u64 * 4 * 2
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Llama-3.1-8B's published shape.
    fn llama8b() -> ModelConfig {
        ModelConfig {
            tie_word_embeddings: false,
            ..ModelConfig::llama(128256, 4096, 14336, 32, 32, 8)
        }
    }

    #[test]
    fn llama8b_has_its_published_parameter_count() {
        // 8,030,261,248 parameters (the model card's 8.03B): bf16 weights 16.06 GB.
        let cfg = llama8b();
        assert_eq!(
            weight_bytes(&cfg, DType::BF16, DType::BF16),
            2 * 8_030_261_248
        );
        assert_eq!(
            weight_bytes(&cfg, DType::F32, DType::F32),
            4 * 8_030_261_248
        );
        // 128 KiB of keys and values per token in bf16 (32 layers x 8 heads x 128 x 2 x 2 B).
        assert_eq!(kv_bytes_per_token(&cfg, DType::BF16), 131_072);
    }

    #[test]
    fn lora_counts_rank_times_both_sides() {
        let cfg = llama8b();
        // q: 8 x (4096 + 4096); k and v: 8 x (1024 + 4096); o like q; per layer 8 x 30720.
        let attn = lora_params(&cfg, 8, &[Proj::Q, Proj::K, Proj::V, Proj::O]);
        assert_eq!(attn, 32 * 8 * (8192 + 5120 + 5120 + 8192));
    }

    #[test]
    fn checkpointing_keeps_a_fraction_of_the_activations() {
        let cfg = llama8b();
        let c = TrainPath::Composed;
        let full = train_activation_bytes(&cfg, 1, 2048, DType::BF16, c, false);
        let ckpt = train_activation_bytes(&cfg, 1, 2048, DType::BF16, c, true);
        assert!(ckpt * 8 < full, "{ckpt} vs {full}");
        // Twice the rows, twice the memory.
        assert_eq!(
            train_activation_bytes(&cfg, 2, 2048, DType::BF16, c, false),
            2 * full
        );
    }
}
