//! What each workload must compute and move at least, and the time that takes on a device of a
//! given memory bandwidth and matrix rate: the floor a measurement is held against.
//!
//! Counts (the report carries these formulas as text, [`FORMULAS`]):
//! - `P` = parameters of the layers' seven projections (all layers), `V h` = the LM head.
//! - attention, forward, one causal sequence of `S` tokens: `4 L n_heads head_dim S (S + 1) / 2`
//!   (QK^T and AV over the causal pairs only; the masked half is not useful work).
//! - prefill of `T` tokens (batch 1): `2 P T + attention(T) + 2 V h` (logits of the last position
//!   only, as the model computes them).
//! - decode step of `b` rows at context `c`: FLOPs `b (2 P + 2 V h + 4 L n_heads head_dim c)`;
//!   bytes = the weight matrices once (`(P + V h) x weight bytes`) + the keys/values read, each
//!   stored position once (a shared prompt is read once for all rows).
//! - LoRA SFT step, `B` sequences of `S` tokens, `N` loss positions: the base is frozen, so its
//!   backward computes input gradients only: `4 P B S`; the adapters' forward and both backward
//!   products: `6 B S sum(r (in + out))`; attention forward + backward (2x forward):
//!   `3 B attention(S)`; the LM head at the loss positions, forward and input gradient:
//!   `4 V h N`. Gradient checkpointing's recomputation is not counted (MFU's convention).

use malt_model::{LoraConfig, ModelConfig, Proj};
use serde::Serialize;

/// The formulas above, for the report.
pub const FORMULAS: &[(&str, &str)] = &[
    ("attention(S)", "4 * L * n_heads * head_dim * S * (S + 1) / 2"),
    ("prefill", "2 * P * T + attention(T) + 2 * V * h"),
    (
        "decode_step",
        "flops = b * (2 * P + 2 * V * h + 4 * L * n_heads * head_dim * c); bytes = (P + V * h) * weight_bytes + kv_positions_read * 2 * L * kv_heads * head_dim * kv_bytes",
    ),
    (
        "sft_step",
        "4 * P * B * S + 6 * B * S * sum_targets(r * (in + out)) + 3 * B * attention(S) + 4 * V * h * N",
    ),
    ("floor", "max(bytes / bandwidth, flops / peak_flops)"),
    ("mfu", "flops / seconds / peak_flops"),
];

/// A device's two ceilings.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Roofline {
    /// Memory bandwidth, bytes per second.
    pub bandwidth_bytes_per_s: f64,
    /// Dense matrix rate in the weights' dtype, FLOP per second.
    pub peak_flops: f64,
}

impl Roofline {
    /// The least time `bytes` and `flops` take on this device.
    pub fn floor_s(&self, bytes: f64, flops: f64) -> f64 {
        (bytes / self.bandwidth_bytes_per_s).max(flops / self.peak_flops)
    }
}

/// Parameter counts of a model shape.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ModelCounts {
    /// Every parameter (embeddings, head, projections, norms).
    pub parameters: u64,
    /// `P`: the layers' projection matrices.
    pub projection_parameters: u64,
    /// `V h`: the LM head.
    pub head_parameters: u64,
}

impl ModelCounts {
    pub fn of(c: &ModelConfig) -> ModelCounts {
        let per_layer: u64 = Proj::ALL
            .iter()
            .map(|p| {
                let (o, i) = p.dims(c);
                (o * i) as u64
            })
            .sum();
        let projection = per_layer * c.num_hidden_layers as u64;
        let head = (c.vocab_size * c.hidden_size) as u64;
        let embed = if c.tie_word_embeddings { 0 } else { head };
        let norms = (c.hidden_size * (2 * c.num_hidden_layers + 1)) as u64;
        ModelCounts {
            parameters: projection + head + embed + norms,
            projection_parameters: projection,
            head_parameters: head,
        }
    }
}

fn attention_fwd(c: &ModelConfig, s: usize) -> f64 {
    let pairs = s as f64 * (s as f64 + 1.0) / 2.0;
    4.0 * (c.num_hidden_layers * c.num_attention_heads * c.head_dim) as f64 * pairs
}

/// FLOPs of a batch-1 prefill of `t` tokens.
pub fn prefill_flops(c: &ModelConfig, t: usize) -> f64 {
    let m = ModelCounts::of(c);
    2.0 * m.projection_parameters as f64 * t as f64
        + attention_fwd(c, t)
        + 2.0 * m.head_parameters as f64
}

/// Bytes of keys and values one stored position holds.
pub fn kv_bytes_per_position(c: &ModelConfig, kv_bytes: usize) -> f64 {
    (2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * kv_bytes) as f64
}

/// `(bytes, flops)` of one decode step of `rows` rows at mean context `context`, reading
/// `kv_positions` stored positions.
pub fn decode_step(
    c: &ModelConfig,
    weight_bytes: usize,
    kv_bytes: usize,
    rows: usize,
    context: f64,
    kv_positions: f64,
) -> (f64, f64) {
    let m = ModelCounts::of(c);
    let weights = (m.projection_parameters + m.head_parameters) as f64 * weight_bytes as f64;
    let bytes = weights + kv_positions * kv_bytes_per_position(c, kv_bytes);
    let attn = 4.0 * (c.num_hidden_layers * c.num_attention_heads * c.head_dim) as f64 * context;
    let flops = rows as f64 * (2.0 * (m.projection_parameters + m.head_parameters) as f64 + attn);
    (bytes, flops)
}

/// `(bytes, flops)` of decoding `new_tokens` tokens in each of `rows` rows that share a cached
/// prefix of `context` positions: the sum of its steps.
pub fn decode_run(
    c: &ModelConfig,
    weight_bytes: usize,
    kv_bytes: usize,
    rows: usize,
    context: usize,
    new_tokens: usize,
) -> (f64, f64) {
    (0..new_tokens).fold((0.0, 0.0), |(b, f), step| {
        let own = step as f64;
        let (sb, sf) = decode_step(
            c,
            weight_bytes,
            kv_bytes,
            rows,
            context as f64 + own,
            context as f64 + rows as f64 * own,
        );
        (b + sb, f + sf)
    })
}

/// FLOPs of one LoRA SFT step of `sequences` x `seq_len` tokens with `targets` loss positions.
pub fn sft_step_flops(
    c: &ModelConfig,
    lora: &LoraConfig,
    sequences: usize,
    seq_len: usize,
    targets: usize,
) -> f64 {
    let m = ModelCounts::of(c);
    let tokens = (sequences * seq_len) as f64;
    let lora_params: f64 = lora
        .targets
        .iter()
        .map(|p| {
            let (o, i) = p.dims(c);
            (lora.r * (i + o)) as f64
        })
        .sum::<f64>()
        * c.num_hidden_layers as f64;
    4.0 * m.projection_parameters as f64 * tokens
        + 6.0 * tokens * lora_params
        + 3.0 * sequences as f64 * attention_fwd(c, seq_len)
        + 4.0 * m.head_parameters as f64 * targets as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ModelConfig {
        ModelConfig {
            tie_word_embeddings: false,
            ..ModelConfig::llama(100, 8, 16, 2, 2, 1)
        }
    }

    #[test]
    fn counts_follow_the_projection_shapes() {
        // Per layer: q 8x8, k 4x8, v 4x8, o 8x8, gate/up 16x8 each, down 8x16 = 576.
        let m = ModelCounts::of(&cfg());
        assert_eq!(m.projection_parameters, 2 * 576);
        assert_eq!(m.head_parameters, 800);
        assert_eq!(m.parameters, 1152 + 800 + 800 + 8 * 5);
    }

    #[test]
    fn prefill_is_two_flops_per_parameter_and_token_plus_causal_attention() {
        let c = cfg();
        // attention(3) = 4 * 2 layers * 2 heads * 4 dims * 6 pairs.
        let expected = 2.0 * 1152.0 * 3.0 + 4.0 * 16.0 * 6.0 + 2.0 * 800.0;
        assert_eq!(prefill_flops(&c, 3), expected);
    }

    #[test]
    fn decode_reads_the_weights_once_per_step_whatever_the_batch() {
        let c = cfg();
        let (b1, f1) = decode_run(&c, 2, 2, 1, 10, 4);
        let (b9, f9) = decode_run(&c, 2, 2, 9, 10, 4);
        let weights = 4.0 * 1952.0 * 2.0;
        assert!(b1 > weights && b9 > b1);
        assert!(b9 - weights < 2.0 * (b1 - weights) * 9.0);
        assert!((f9 / f1 - 9.0).abs() < 1.0);
        let r = Roofline {
            bandwidth_bytes_per_s: 1e3,
            peak_flops: 1e12,
        };
        assert_eq!(r.floor_s(b1, f1), b1 / 1e3);
    }

    #[test]
    fn an_sft_step_without_adapters_or_attention_is_four_flops_per_parameter_and_token() {
        let c = ModelConfig {
            num_hidden_layers: 0,
            ..cfg()
        };
        let lora = LoraConfig {
            targets: vec![],
            ..LoraConfig::default()
        };
        assert_eq!(sft_step_flops(&c, &lora, 2, 5, 3), 4.0 * 800.0 * 3.0);
    }
}
