//! DPO reference log-probs: computed once per dataset without a graph, from the frozen
//! reference adapter (the agent's SFT adapter when SFT ran first, else the base model), and
//! cached beside the dataset keyed by dataset, reference adapter, model and sequence length.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use malt_base::atomic::{write_atomic, write_atomic_with};

use crate::batch::{Sequence, TokenBatch};
use crate::data::DpoItem;
use crate::error::{Result, TrainError};
use crate::fingerprint::sha_hex;
use crate::loss;
use crate::policy::{Mode, PolicyModel};

/// Reference log-probs for every pair of a DPO dataset: sums over completion tokens and the
/// token counts (IPO uses the per-token mean).
#[derive(Debug, Clone, PartialEq)]
pub struct RefLogprobs {
    pub chosen: Vec<f32>,
    pub rejected: Vec<f32>,
    pub chosen_tokens: Vec<u32>,
    pub rejected_tokens: Vec<u32>,
}

/// Cache key: dataset hash, reference adapter hash, tokenizer and truncation (all change the
/// numbers).
pub fn ref_cache_path(
    dataset: &Path,
    dataset_sha: &str,
    ref_hash: &str,
    tok_fp: &str,
    max_seq_len: u32,
) -> PathBuf {
    let key = sha_hex(&[dataset_sha, ref_hash, tok_fp, &max_seq_len.to_string()]);
    let stem = dataset
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "dpo".into());
    dataset.with_file_name(format!("{stem}.ref-{}.safetensors", &key[..16]))
}

pub(crate) fn load_ref_cache(path: &Path, n: usize) -> Result<Option<RefLogprobs>> {
    if !path.exists() {
        return Ok(None);
    }
    let mut m = candle_core::safetensors::load(path, &Device::Cpu)?;
    let mut f = |k: &str| -> Option<Tensor> { m.remove(k) };
    let (Some(c), Some(r), Some(ct), Some(rt)) = (
        f("chosen_logps"),
        f("rejected_logps"),
        f("chosen_tokens"),
        f("rejected_tokens"),
    ) else {
        return Ok(None);
    };
    let out = RefLogprobs {
        chosen: c.to_vec1()?,
        rejected: r.to_vec1()?,
        chosen_tokens: ct.to_vec1()?,
        rejected_tokens: rt.to_vec1()?,
    };
    // A cache of the wrong length (hash collision on the 16-hex prefix, hand edits) is ignored.
    Ok((out.chosen.len() == n && out.rejected.len() == n).then_some(out))
}

pub(crate) fn save_ref_cache(path: &Path, r: &RefLogprobs, desc: &serde_json::Value) -> Result<()> {
    let n = r.chosen.len();
    let dev = Device::Cpu;
    let map = std::collections::HashMap::from([
        (
            "chosen_logps".to_string(),
            Tensor::from_vec(r.chosen.clone(), n, &dev)?,
        ),
        (
            "rejected_logps".to_string(),
            Tensor::from_vec(r.rejected.clone(), n, &dev)?,
        ),
        (
            "chosen_tokens".to_string(),
            Tensor::from_vec(r.chosen_tokens.clone(), n, &dev)?,
        ),
        (
            "rejected_tokens".to_string(),
            Tensor::from_vec(r.rejected_tokens.clone(), n, &dev)?,
        ),
    ]);
    write_atomic_with(path, |tmp| {
        candle_core::safetensors::save(&map, tmp).map_err(std::io::Error::other)
    })
    .map_err(|e| TrainError::io(path, e))?;
    let jp = path.with_extension("json");
    write_atomic(&jp, serde_json::to_string_pretty(desc)?.as_bytes())
        .map_err(|e| TrainError::io(&jp, e))
}

/// Computes reference log-probs without a graph (`Mode::Eval`).
pub fn compute_ref_logprobs<M: PolicyModel>(
    model: &M,
    adapter: Option<&M::Adapter>,
    items: &[DpoItem],
    micro_batch: usize,
    pad_id: u32,
) -> Result<RefLogprobs> {
    let mut out = RefLogprobs {
        chosen: vec![0.0; items.len()],
        rejected: vec![0.0; items.len()],
        chosen_tokens: vec![0; items.len()],
        rejected_tokens: vec![0; items.len()],
    };
    for chunk in items.chunks(micro_batch.max(1)) {
        let (sums, counts, b) = dpo_forward(model, adapter, chunk, pad_id, Mode::Eval)?;
        let sums: Vec<f32> = sums.to_vec1()?;
        for (j, it) in chunk.iter().enumerate() {
            out.chosen[it.index] = sums[j];
            out.rejected[it.index] = sums[b + j];
            out.chosen_tokens[it.index] = counts[j] as u32;
            out.rejected_tokens[it.index] = counts[b + j] as u32;
        }
    }
    Ok(out)
}

/// One forward over `chosen ++ rejected`: per-row log-prob sums `(2b,)`, per-row token counts.
pub(crate) fn dpo_forward<M: PolicyModel>(
    model: &M,
    adapter: Option<&M::Adapter>,
    chunk: &[DpoItem],
    pad_id: u32,
    mode: Mode,
) -> Result<(Tensor, Vec<usize>, usize)> {
    let b = chunk.len();
    let seqs: Vec<&Sequence> = chunk
        .iter()
        .map(|i| &i.chosen)
        .chain(chunk.iter().map(|i| &i.rejected))
        .collect();
    let batch = TokenBatch::new(&seqs, pad_id);
    let logits = model.target_logits(&batch, adapter, mode)?;
    let lp = loss::token_logprobs(&logits, &batch.targets)?;
    let sums = loss::sequence_sums(&batch, &lp)?;
    let sums = if matches!(mode, Mode::Eval) {
        sums.detach()
    } else {
        sums
    };
    Ok((sums, loss::row_target_counts(&batch), b))
}
