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

use crate::batch::TokenBatch;
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
