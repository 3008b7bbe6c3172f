//! `PolicyModel` / `ChatTokenizer` for malt-model's `Model` (decoder + tokenizer + template).
//!
//! Training forwards use `Mode::Train` (differentiable ops, frozen-weight matmuls, frozen LM head)
//! and compute the LM head only at completion positions; reference log-probs and eval use the
//! fused inference path (`Mode::Infer`, no graph).
//!
//! With `gradient_checkpointing`, training forwards go through
//! `Decoder::forward_hidden_checkpointed` (each layer recomputed in the backward).
//!
//! LoRA dropout masks come from the per-micro-batch seed this crate passes
//! (`Mode::Train { dropout_seed }`), so a resumed run repeats an uninterrupted one bit for bit,
//! dropout or not.

use std::path::Path;

use candle_core::{Tensor, Var};
use malt_model::{LoraAdapter, LoraConfig, Message, Model};
use sha2::{Digest, Sha256};

use crate::batch::{Sequence, TokenBatch};
use crate::error::{Result, TrainError};
use crate::policy::{ChatTokenizer, Mode, PolicyModel};

/// A malt-model `Model` with the LoRA shape new adapters get.
pub struct MaltPolicy<'m> {
    pub model: &'m Model,
    /// Rank, alpha, dropout and targets of fresh adapters (loaded ones keep their own).
    pub lora: LoraConfig,
    /// Training forwards keep only each layer's input and the backward recomputes the layer
    /// (`[train] gradient_checkpointing`): the same gradients in a fraction of the activation
    /// memory, for about one more forward pass of time. A property of how the policy runs, not
    /// of what it learns, so it is not part of a phase's fingerprint.
    pub gradient_checkpointing: bool,
}

impl<'m> MaltPolicy<'m> {
    pub fn new(model: &'m Model, lora: LoraConfig) -> Self {
        MaltPolicy {
            model,
            lora,
            gradient_checkpointing: false,
        }
    }

    /// The same policy with gradient checkpointing on or off.
    pub fn with_gradient_checkpointing(self, on: bool) -> Self {
        MaltPolicy {
            gradient_checkpointing: on,
            ..self
        }
    }
}

impl PolicyModel for MaltPolicy<'_> {
    type Adapter = LoraAdapter;

    fn new_adapter(&self, name: &str, seed: u64) -> Result<LoraAdapter> {
        self.model
            .new_adapter(name, self.lora.clone(), seed)
            .map_err(TrainError::model)
    }

    fn load_adapter(&self, dir: &Path, name: &str) -> Result<LoraAdapter> {
        self.model
            .load_adapter(dir, name)
            .map_err(TrainError::model)
    }

    fn save_adapter(&self, adapter: &LoraAdapter, dir: &Path, base_model: &str) -> Result<()> {
        let base = if base_model.is_empty() {
            self.model.source.as_str()
        } else {
            base_model
        };
        adapter.save_peft(dir, base).map_err(TrainError::model)
    }

    fn trainable_vars(&self, adapter: &LoraAdapter) -> Vec<(String, Var)> {
        adapter.named_vars()
    }

    fn target_logits(
        &self,
        batch: &TokenBatch,
        adapter: Option<&LoraAdapter>,
        mode: Mode,
    ) -> Result<Tensor> {
        let dev = self.model.device();
        let m = match mode {
            Mode::Train { dropout_seed } => malt_model::Mode::Train { dropout_seed },
            Mode::Eval => malt_model::Mode::Infer,
        };
        let d = &self.model.decoder;
        let ids = batch.ids_tensor(dev)?;
        let h = match m {
            malt_model::Mode::Train { dropout_seed } if self.gradient_checkpointing => {
                d.forward_hidden_checkpointed(&ids, adapter, dropout_seed)
            }
            _ => d.forward_hidden(&ids, adapter, m),
        }
        .map_err(TrainError::model)?;
        let hs = h.dim(2)?;
        let h = h.reshape((batch.batch * batch.seq_len, hs))?;
        let sel = h.index_select(&batch.positions_tensor(dev)?, 0)?;
        let logits = d.logits(&sel, m).map_err(TrainError::model)?;
        Ok(match mode {
            Mode::Eval => logits.detach(),
            Mode::Train { .. } => logits,
        })
    }

    /// The prompt's keys and values computed once, then every continuation after them in one
    /// batch: siblings of a tree share a few-shot prompt several times longer than their own
    /// outputs. In training the continuations' graph reaches the prompt's adapter products
    /// through its keys/values (broadcast to every row, whose backward sums the rows'
    /// gradients), so the gradients are those of each sequence run whole. Dropout and gradient
    /// checkpointing take the whole-sequence path: a shared prompt would share one dropout mask
    /// among the rows, and checkpointed layers recompute from a single input.
    fn shared_prompt_logits(
        &self,
        seqs: &[&Sequence],
        pad_id: u32,
        adapter: Option<&LoraAdapter>,
        mode: Mode,
    ) -> Result<Tensor> {
        let whole = || self.target_logits(&TokenBatch::new(seqs, pad_id), adapter, mode);
        let m = match mode {
            Mode::Eval => malt_model::Mode::Infer,
            Mode::Train { dropout_seed: None } if !self.gradient_checkpointing => {
                malt_model::Mode::Train { dropout_seed: None }
            }
            Mode::Train { .. } => return whole(),
        };
        let Some(first) = seqs.first() else {
            return whole();
        };
        let p = first.prompt_len;
        let prompt = &first.ids[..p.min(first.ids.len())];
        let shared = p > 0
            && seqs
                .iter()
                .all(|s| s.prompt_len == p && s.ids.len() > p && s.ids[..p] == *prompt);
        if !shared {
            return whole();
        }
        let d = &self.model.decoder;
        let dev = self.model.device();
        let (hp, kv) = d
            .forward_hidden_after(
                &Tensor::from_vec(prompt.to_vec(), (1, p), dev)?,
                0,
                None,
                adapter,
                m,
            )
            .map_err(TrainError::model)?;
        let hs = hp.dim(2)?;
        let mut rows = vec![hp.narrow(1, p - 1, 1)?.reshape((1, hs))?];
        // Each continuation is fed all but its last token (which only is predicted).
        let b = seqs.len();
        let width = seqs.iter().map(|s| s.ids.len() - p - 1).max().unwrap_or(0);
        let mut positions = Vec::new();
        for (r, s) in seqs.iter().enumerate() {
            positions.push(0u32);
            positions.extend((0..s.ids.len() - p - 1).map(|j| (1 + r * width + j) as u32));
        }
        if width > 0 {
            let mut ids = vec![pad_id; b * width];
            for (r, s) in seqs.iter().enumerate() {
                let fed = &s.ids[p..s.ids.len() - 1];
                ids[r * width..r * width + fed.len()].copy_from_slice(fed);
            }
            let past = kv
                .iter()
                .map(|(k, v)| {
                    let (_, heads, len, dim) = k.dims4()?;
                    let shape = (b, heads, len, dim);
                    Ok((
                        k.broadcast_as(shape)?.contiguous()?,
                        v.broadcast_as(shape)?.contiguous()?,
                    ))
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            let (hc, _) = d
                .forward_hidden_after(
                    &Tensor::from_vec(ids, (b, width), dev)?,
                    p,
                    Some(&past),
                    adapter,
                    m,
                )
                .map_err(TrainError::model)?;
            rows.push(hc.reshape((b * width, hs))?);
        }
        let all = Tensor::cat(&rows, 0)?;
        let n = positions.len();
        let sel = all.index_select(&Tensor::from_vec(positions, n, dev)?, 0)?;
        let logits = d.logits(&sel, m).map_err(TrainError::model)?;
        Ok(match mode {
            Mode::Eval => logits.detach(),
            Mode::Train { .. } => logits,
        })
    }
}

/// The model's chat template (with generation prompt) and tokenizer. EOS is the tokenizer's
/// `eos_token` (for ChatML instruct models `<|im_end|>`, which also ends an assistant turn),
/// else the first stop id.
pub struct MaltTokenizer<'m> {
    pub model: &'m Model,
    eos: u32,
    fingerprint: String,
}

impl<'m> MaltTokenizer<'m> {
    pub fn new(model: &'m Model) -> Result<Self> {
        let eos = model
            .tokenizer
            .eos_token
            .as_deref()
            .and_then(|t| model.tokenizer.token_to_id(t))
            .or_else(|| model.stop_ids.first().copied())
            .ok_or_else(|| TrainError::Tokenizer("the model defines no EOS / stop token".into()))?;
        // Identifies base weights' source, architecture, template and vocabulary: everything the
        // cached reference log-probs depend on besides the dataset and the adapter.
        let mut h = Sha256::new();
        h.update(model.source.as_bytes());
        // The ids the tokenizer gives (its fix changed them with the same vocabulary size).
        h.update(
            model
                .tokenizer_fingerprint()
                .map_err(|e| TrainError::Tokenizer(e.to_string()))?
                .as_bytes(),
        );
        h.update(model.config().to_hf_json().to_string().as_bytes());
        h.update(model.chat.source.as_bytes());
        h.update(model.tokenizer.vocab_size().to_le_bytes());
        h.update(eos.to_le_bytes());
        Ok(MaltTokenizer {
            model,
            eos,
            fingerprint: hex::encode(h.finalize()),
        })
    }
}

impl ChatTokenizer for MaltTokenizer<'_> {
    fn prompt_ids(&self, messages: &[Message]) -> Result<Vec<u32>> {
        self.model
            .encode_chat(messages, true)
            .map_err(|e| TrainError::Tokenizer(e.to_string()))
    }

    fn completion_ids(&self, text: &str) -> Result<Vec<u32>> {
        self.model
            .tokenizer
            .encode(text, false)
            .map_err(|e| TrainError::Tokenizer(e.to_string()))
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        self.model
            .tokenizer
            .decode(ids, true)
            .map_err(|e| TrainError::Tokenizer(e.to_string()))
    }

    fn is_stop(&self, id: u32) -> bool {
        id == self.eos || self.model.stop_ids.contains(&id)
    }

    fn eos_id(&self) -> u32 {
        self.eos
    }

    fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }
}

/// Builds malt-model's `LoraConfig` from the config crate's `[train.lora]` values
/// (`rank`, `alpha`, `dropout`, `targets` as PEFT module names, or `["all-linear"]`).
pub fn lora_config(rank: u32, alpha: f64, dropout: f64, targets: &[String]) -> Result<LoraConfig> {
    let targets = if targets.iter().any(|t| t == "all-linear") {
        malt_model::Proj::ALL.to_vec()
    } else {
        targets
            .iter()
            .map(|t| {
                malt_model::Proj::from_name(t).ok_or_else(|| {
                    TrainError::Settings(format!(
                        "unknown LoRA target `{t}` (expected q_proj, k_proj, v_proj, o_proj, \
                         gate_proj, up_proj, down_proj or all-linear)"
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?
    };
    if rank == 0 || targets.is_empty() || !(0.0..1.0).contains(&dropout) {
        return Err(TrainError::Settings(
            "LoRA needs rank >= 1, at least one target and dropout in [0, 1)".into(),
        ));
    }
    Ok(LoraConfig {
        r: rank as usize,
        alpha,
        dropout: dropout as f32,
        targets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use malt_model::candle_core::{DType, Device};
    use malt_model::ModelConfig;

    /// A random two-layer model small enough for exact comparisons.
    fn random_model(seed: u64) -> Model {
        let cfg = ModelConfig {
            max_position_embeddings: 128,
            ..ModelConfig::llama(96, 32, 64, 2, 4, 2)
        };
        Model::random_seeded(
            cfg,
            &Device::Cpu,
            DType::F32,
            seed,
            malt_model::random::DrawOn::Host,
        )
        .unwrap()
    }

    fn lora() -> LoraConfig {
        crate::lora_config(4, 8.0, 0.0, &["all-linear".to_string()]).unwrap()
    }

    fn max_abs(t: &Tensor) -> f32 {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Siblings: one prompt, each of `completions` after it.
    fn siblings(prompt: std::ops::Range<u32>, completions: &[&[u32]]) -> Vec<Sequence> {
        let prompt: Vec<u32> = prompt.collect();
        completions
            .iter()
            .map(|c| Sequence {
                ids: [prompt.as_slice(), c].concat(),
                prompt_len: prompt.len(),
            })
            .collect()
    }

    /// An adapter that is not the base model's (B != 0), so the LoRA products matter.
    fn perturbed_adapter(policy: &MaltPolicy<'_>, seed: u64) -> LoraAdapter {
        let adapter = policy.new_adapter("a", seed).unwrap();
        for (_, v) in adapter.named_vars() {
            let t = v.as_tensor();
            v.set(&(t + Tensor::randn(0f32, 0.3, t.shape(), &Device::Cpu).unwrap()).unwrap())
                .unwrap();
        }
        adapter
    }

    /// Siblings scored with their prompt computed once get the logits of each scored whole,
    /// under an adapter that is not the base (B != 0) and under none, completions of every
    /// length down to a single token.
    #[test]
    fn shared_prompt_logits_equal_each_sequence_scored_whole() {
        let model = random_model(9);
        let policy = MaltPolicy::new(&model, lora());
        let adapter = perturbed_adapter(&policy, 3);
        let seqs = siblings(10..30, &[&[40, 41, 42, 43, 44], &[50], &[60, 61, 62]]);
        let refs: Vec<&Sequence> = seqs.iter().collect();
        for a in [Some(&adapter), None] {
            let whole = policy
                .target_logits(&TokenBatch::new(&refs, 0), a, Mode::Eval)
                .unwrap();
            model.decoder.reset_prefill_counter();
            let shared = policy
                .shared_prompt_logits(&refs, 0, a, Mode::Eval)
                .unwrap();
            // The prompt once (20 tokens), then 3 rows of the longest continuation but its last.
            assert_eq!(model.decoder.prefill_tokens_computed(), 20 + 3 * 4);
            assert_eq!(whole.dims(), shared.dims());
            let diff = max_abs(&(whole - shared).unwrap());
            assert!(diff < 1e-4, "shared-prompt logits differ by {diff}");
        }
    }

    /// The training pass with the prompt computed once gives each sequence's logits and, through
    /// the prompt's keys/values shared by every row, the LoRA gradients of the sequences run
    /// whole: the gradients that reach the prompt from every continuation are summed.
    #[test]
    fn shared_prompt_training_pass_gives_the_whole_sequences_gradients() {
        let model = random_model(5);
        let policy = MaltPolicy::new(&model, lora());
        let adapter = perturbed_adapter(&policy, 7);
        let seqs = siblings(
            20..44,
            &[&[50, 51, 52, 53], &[60], &[70, 71, 72, 73, 74, 75]],
        );
        let refs: Vec<&Sequence> = seqs.iter().collect();
        let batch = TokenBatch::new(&refs, 0);
        let train = Mode::Train { dropout_seed: None };
        // A loss that weighs every target's log-prob differently, as the policy gradient does.
        let weights = Tensor::randn(0f32, 1.0, batch.targets.len(), &Device::Cpu).unwrap();
        let grads = |logits: Tensor| {
            let lp = crate::loss::token_logprobs(&logits, &batch.targets).unwrap();
            let loss = (lp * &weights).unwrap().sum_all().unwrap();
            let g = loss.backward().unwrap();
            adapter
                .named_vars()
                .into_iter()
                .map(|(name, v)| (name, g.get(v.as_tensor()).expect("a gradient").clone()))
                .collect::<Vec<_>>()
        };
        let whole = grads(policy.target_logits(&batch, Some(&adapter), train).unwrap());
        let shared = grads(
            policy
                .shared_prompt_logits(&refs, 0, Some(&adapter), train)
                .unwrap(),
        );
        let mut largest = 0f32;
        for ((name, a), (_, b)) in whole.iter().zip(&shared) {
            let scale = max_abs(a);
            let diff = max_abs(&(a - b).unwrap());
            assert!(scale > 0.0, "{name}: no gradient");
            assert!(
                diff <= 1e-4 * scale.max(1.0),
                "{name}: {diff} (scale {scale})"
            );
            largest = largest.max(diff / scale);
        }
        assert!(!whole.is_empty());
        eprintln!("largest relative gradient difference {largest:e}");
    }
}
