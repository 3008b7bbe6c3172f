//! The two small traits the training loop is written against, so it runs on malt-model's decoder
//! (see `model_bridge`) and on tiny test models alike.

use std::path::Path;

use candle_core::{Tensor, Var};
use malt_base::Message;

use crate::batch::{Sequence, TokenBatch};
use crate::error::Result;

/// Forward mode. Dropout (if the model has any) is seeded per micro-batch so a resumed run
/// replays exactly the same masks as an uninterrupted one: no RNG state has to be saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Build the autograd graph; `dropout_seed` seeds this micro-batch's dropout masks (`None`:
    /// no dropout, as DPO trains by default).
    Train { dropout_seed: Option<u64> },
    /// No graph needed (reference log-probs, eval): the model should detach / skip dropout.
    Eval,
}

/// A causal LM with LoRA adapters, as training needs it.
pub trait PolicyModel {
    type Adapter;

    /// A fresh adapter whose output equals the base model (LoRA: A random, B zero).
    fn new_adapter(&self, name: &str, seed: u64) -> Result<Self::Adapter>;
    /// Loads an adapter saved by `save_adapter` (PEFT layout for malt-model).
    fn load_adapter(&self, dir: &Path, name: &str) -> Result<Self::Adapter>;
    /// Saves in PEFT format into `dir` (created if missing).
    fn save_adapter(&self, adapter: &Self::Adapter, dir: &Path, base_model: &str) -> Result<()>;
    /// The adapter's trainable variables with stable unique names, in a stable order.
    fn trainable_vars(&self, adapter: &Self::Adapter) -> Vec<(String, Var)>;
    /// Logits only at the batch's target positions (`batch.positions`, flat indices into the
    /// padded `(batch, seq_len)` grid), shape `(batch.num_targets(), vocab)`. Computing the LM
    /// head only there is the main memory/time saving for large vocabularies.
    /// `adapter = None` means the bare base model.
    fn target_logits(
        &self,
        batch: &TokenBatch,
        adapter: Option<&Self::Adapter>,
        mode: Mode,
    ) -> Result<Tensor>;

    /// `target_logits` of `seqs` when they all share one prompt (`ids[..prompt_len]`, siblings
    /// of a tree): the same rows, in the same order, as
    /// `target_logits(&TokenBatch::new(seqs, pad_id), adapter, mode)`, and in [`Mode::Train`]
    /// the same gradients. A model may compute the prompt once instead of once per sequence;
    /// this default computes each whole.
    fn shared_prompt_logits(
        &self,
        seqs: &[&Sequence],
        pad_id: u32,
        adapter: Option<&Self::Adapter>,
        mode: Mode,
    ) -> Result<Tensor> {
        self.target_logits(&TokenBatch::new(seqs, pad_id), adapter, mode)
    }
}

/// Renders TRL conversational records into token ids.
pub trait ChatTokenizer {
    /// The prompt messages rendered with the chat template and the generation prompt.
    fn prompt_ids(&self, messages: &[Message]) -> Result<Vec<u32>>;
    /// The assistant completion text, without special tokens (EOS is appended by the caller).
    fn completion_ids(&self, text: &str) -> Result<Vec<u32>>;
    /// The text of `ids`, special tokens left out: stored completion ids must spell their text.
    fn decode(&self, ids: &[u32]) -> Result<String>;
    /// Whether `id` ends a turn: sampled ids that end with one need no EOS appended.
    fn is_stop(&self, id: u32) -> bool;
    fn eos_id(&self) -> u32;
    /// Identifies tokenizer + template; part of the reference log-prob cache key.
    fn fingerprint(&self) -> String;
}
