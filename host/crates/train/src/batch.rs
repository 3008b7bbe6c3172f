//! Padded token batches with the positions where a loss is taken.

use candle_core::{Device, Tensor};

use crate::error::Result;

/// One tokenised example: `ids = prompt ++ completion`, loss only on the completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequence {
    pub ids: Vec<u32>,
    /// Prompt tokens kept; 0 only for an empty prompt (then the first completion token has no
    /// preceding position and carries no loss).
    pub prompt_len: usize,
}

impl Sequence {
    pub fn completion_len(&self) -> usize {
        self.ids.len() - self.prompt_len
    }
}

/// A right-padded batch. Right padding needs no attention mask in a causal model: pad tokens sit
/// after every real token of their row, so no real position attends to them, and no loss is taken
/// on them.
#[derive(Debug, Clone)]
pub struct TokenBatch {
    /// `batch * seq_len` ids, row-major, padded with `pad_id`.
    pub ids: Vec<u32>,
    pub batch: usize,
    pub seq_len: usize,
    pub lens: Vec<usize>,
    pub prompt_lens: Vec<usize>,
    /// Flat index `row * seq_len + t` of every position whose next token is a completion token.
    pub positions: Vec<u32>,
    /// The token predicted at each position (`ids[row][t + 1]`).
    pub targets: Vec<u32>,
    /// Row of each target.
    pub target_rows: Vec<u32>,
}

impl TokenBatch {
    pub fn new(seqs: &[&Sequence], pad_id: u32) -> TokenBatch {
        let batch = seqs.len();
        let seq_len = seqs.iter().map(|s| s.ids.len()).max().unwrap_or(0);
        let mut ids = vec![pad_id; batch * seq_len];
        let (mut positions, mut targets, mut target_rows) = (vec![], vec![], vec![]);
        for (r, s) in seqs.iter().enumerate() {
            ids[r * seq_len..r * seq_len + s.ids.len()].copy_from_slice(&s.ids);
            for t in s.prompt_len.saturating_sub(1)..s.ids.len().saturating_sub(1) {
                positions.push((r * seq_len + t) as u32);
                targets.push(s.ids[t + 1]);
                target_rows.push(r as u32);
            }
        }
        TokenBatch {
            ids,
            batch,
            seq_len,
            lens: seqs.iter().map(|s| s.ids.len()).collect(),
            prompt_lens: seqs.iter().map(|s| s.prompt_len).collect(),
            positions,
            targets,
            target_rows,
        }
    }

    pub fn num_targets(&self) -> usize {
        self.targets.len()
    }

    /// Non-pad tokens (what tokens/s counts).
    pub fn num_tokens(&self) -> usize {
        self.lens.iter().sum()
    }

    /// `(batch, seq_len)` u32.
    pub fn ids_tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_vec(
            self.ids.clone(),
            (self.batch, self.seq_len),
            device,
        )?)
    }

    /// `(num_targets,)` u32 flat positions.
    pub fn positions_tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_vec(
            self.positions.clone(),
            self.positions.len(),
            device,
        )?)
    }

    /// `(batch, num_targets)` f32 with 1 where target j belongs to row r: multiplying per-token
    /// log-probs by it gives per-sequence sums with a plain (differentiable) matmul.
    pub fn row_indicator(&self, device: &Device) -> Result<Tensor> {
        let n = self.num_targets();
        let mut m = vec![0f32; self.batch * n];
        for (j, &r) in self.target_rows.iter().enumerate() {
            m[r as usize * n + j] = 1.0;
        }
        Ok(Tensor::from_vec(m, (self.batch, n), device)?)
    }
}
