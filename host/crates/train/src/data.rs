//! TRL-format datasets (conversational prompt/completion and prompt/chosen/rejected JSONL), their
//! tokenisation, the deterministic eval split and per-epoch shuffles.
//!
//! Tokenisation: `prompt` is rendered with the chat template and the generation prompt; the
//! completion follows as the ids the model sampled when the record carries them
//! (`completion_ids`, `chosen_ids`, `rejected_ids`: malt writes them from the trees), else as
//! the completion text encoded on its own; EOS is appended unless the ids already end with a
//! stop token (a sampled end of turn) or the record marks the output as cut at the sampling
//! length limit (`completion_truncated`, `chosen_truncated`, `rejected_truncated`: malt writes
//! them for cut outputs kept by `[credit] truncated = "keep"`), since an EOS there would teach
//! the model to stop mid-solution. Stored ids must spell the completion text (their
//! decoding starts with it), which catches ids made by another tokenizer. When `prompt + completion` exceeds `max_seq_len`, tokens
//! are dropped from the LEFT of the prompt (the completion is what the loss is on, and the end
//! of the prompt is what it depends on most). If the completion alone does not fit, it is cut on
//! the right to `max_seq_len - 1` tokens (losing EOS) and one prompt token is kept, so there is
//! always a position that predicts the first completion token.

use std::path::Path;

use malt_base::Message;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Deserialize;

use crate::batch::Sequence;
use crate::error::{Result, TrainError};
use crate::policy::ChatTokenizer;

/// One SFT record: `{"prompt":[..], "completion":[{"role":"assistant",..}], "meta":{..}}`.
#[derive(Debug, Clone)]
pub struct SftRecord {
    /// `meta.id` if present, else `line N` (1-based), for error messages.
    pub id: String,
    pub prompt: Vec<Message>,
    pub completion: String,
    /// The sampled ids of `completion`, when the record carries them.
    pub completion_ids: Option<Vec<u32>>,
    /// The completion was cut at the sampling length limit: no EOS after it.
    pub completion_truncated: bool,
}

/// One DPO record: `{"prompt":[..], "chosen":[..], "rejected":[..], "meta":{..}}`.
#[derive(Debug, Clone)]
pub struct DpoRecord {
    pub id: String,
    pub prompt: Vec<Message>,
    pub chosen: String,
    pub rejected: String,
    pub chosen_ids: Option<Vec<u32>>,
    pub rejected_ids: Option<Vec<u32>>,
    pub chosen_truncated: bool,
    pub rejected_truncated: bool,
}

#[derive(Deserialize)]
struct RawRecord {
    prompt: Vec<Message>,
    #[serde(default)]
    completion: Option<Vec<Message>>,
    #[serde(default)]
    chosen: Option<Vec<Message>>,
    #[serde(default)]
    rejected: Option<Vec<Message>>,
    #[serde(default)]
    completion_ids: Option<Vec<u32>>,
    #[serde(default)]
    chosen_ids: Option<Vec<u32>>,
    #[serde(default)]
    rejected_ids: Option<Vec<u32>>,
    #[serde(default)]
    completion_truncated: bool,
    #[serde(default)]
    chosen_truncated: bool,
    #[serde(default)]
    rejected_truncated: bool,
    #[serde(default)]
    meta: Option<serde_json::Value>,
}

/// The dataset file and its sha256 (the reference-cache key part).
#[derive(Debug, Clone)]
pub struct DatasetFile<R> {
    pub records: Vec<R>,
    pub sha256: String,
}

fn record_id(meta: &Option<serde_json::Value>, line: usize) -> String {
    match meta.as_ref().and_then(|m| m.get("id")) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v @ serde_json::Value::Number(_)) => v.to_string(),
        _ => format!("line {line}"),
    }
}

/// The text of a one-message assistant turn (TRL conversational completion).
fn assistant_text(msgs: Option<Vec<Message>>, field: &str) -> std::result::Result<String, String> {
    let msgs = msgs.ok_or_else(|| format!("missing `{field}`"))?;
    match msgs.as_slice() {
        [m] if m.role == "assistant" => Ok(m.content.clone()),
        [m] => Err(format!(
            "`{field}` message has role `{}`, expected `assistant`",
            m.role
        )),
        _ => Err(format!(
            "`{field}` must hold exactly one assistant message, found {}",
            msgs.len()
        )),
    }
}

fn read_lines(path: &Path) -> Result<(String, String)> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let sha = malt_base::hash::sha256_hex(&bytes);
    let text = String::from_utf8(bytes).map_err(|e| TrainError::Dataset {
        path: path.to_path_buf(),
        line: 0,
        msg: format!("not UTF-8: {e}"),
    })?;
    Ok((text, sha))
}

fn parse_records<R>(
    path: &Path,
    mut f: impl FnMut(RawRecord, usize) -> std::result::Result<R, String>,
) -> Result<DatasetFile<R>> {
    let (text, sha256) = read_lines(path)?;
    let mut records = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let err = |msg: String| TrainError::Dataset {
            path: path.to_path_buf(),
            line: i + 1,
            msg,
        };
        let raw: RawRecord = serde_json::from_str(line).map_err(|e| err(e.to_string()))?;
        records.push(f(raw, i + 1).map_err(err)?);
    }
    if records.is_empty() {
        return Err(TrainError::EmptyDataset {
            path: path.to_path_buf(),
        });
    }
    Ok(DatasetFile { records, sha256 })
}

pub fn load_sft(path: &Path) -> Result<DatasetFile<SftRecord>> {
    parse_records(path, |r, line| {
        Ok(SftRecord {
            id: record_id(&r.meta, line),
            completion: assistant_text(r.completion, "completion")?,
            completion_ids: r.completion_ids,
            completion_truncated: r.completion_truncated,
            prompt: r.prompt,
        })
    })
}

pub fn load_dpo(path: &Path) -> Result<DatasetFile<DpoRecord>> {
    parse_records(path, |r, line| {
        Ok(DpoRecord {
            id: record_id(&r.meta, line),
            chosen: assistant_text(r.chosen, "chosen")?,
            rejected: assistant_text(r.rejected, "rejected")?,
            chosen_ids: r.chosen_ids,
            rejected_ids: r.rejected_ids,
            chosen_truncated: r.chosen_truncated,
            rejected_truncated: r.rejected_truncated,
            prompt: r.prompt,
        })
    })
}

/// Joins prompt and completion(+EOS) ids, truncating as the module docs say.
pub fn join_truncate(prompt: &[u32], completion: &[u32], max_seq_len: usize) -> Sequence {
    let max_seq_len = max_seq_len.max(2);
    let comp = &completion[..completion.len().min(max_seq_len - 1)];
    // >= 1 whenever the prompt is non-empty, because comp.len() <= max_seq_len - 1.
    let keep = (max_seq_len - comp.len()).min(prompt.len());
    let mut ids = prompt[prompt.len() - keep..].to_vec();
    ids.extend_from_slice(comp);
    // An empty prompt leaves the first completion token without a predicting position: it gets
    // no loss (TokenBatch starts targets at max(prompt_len, 1) - 1).
    Sequence {
        ids,
        prompt_len: keep,
    }
}

/// A completion as the loss sees it: the sampled `ids` when given (checked against the text),
/// else the text encoded; then EOS unless the ids end with a stop token already or the output
/// was cut at the length limit (`cut`). `what` names the record and field for errors.
pub fn completion_target(
    tok: &dyn ChatTokenizer,
    text: &str,
    ids: Option<&[u32]>,
    cut: bool,
    what: &str,
) -> Result<Vec<u32>> {
    let mut c = match ids {
        Some(ids) => {
            let spelled = tok.decode(ids)?;
            if !spelled.starts_with(text) {
                return Err(TrainError::Tokenizer(format!(
                    "{what}: the stored token ids decode to {:?}, which does not start with the                      completion text {:?}: they were sampled with another tokenizer. Regenerate                      the trees with this model (`malt run` recomputes them), or remove the                      `*_ids` fields to train on the text re-encoded",
                    excerpt(&spelled),
                    excerpt(text)
                )));
            }
            ids.to_vec()
        }
        None => tok.completion_ids(text)?,
    };
    if !cut && !c.last().is_some_and(|&t| tok.is_stop(t)) {
        c.push(tok.eos_id());
    }
    Ok(c)
}

fn excerpt(s: &str) -> String {
    match s.char_indices().nth(80) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

pub fn tokenize_pair(
    tok: &dyn ChatTokenizer,
    prompt: &[Message],
    completion: &str,
    completion_ids: Option<&[u32]>,
    cut: bool,
    max_seq_len: usize,
    what: &str,
) -> Result<Sequence> {
    let p = tok.prompt_ids(prompt)?;
    let c = completion_target(tok, completion, completion_ids, cut, what)?;
    Ok(join_truncate(&p, &c, max_seq_len))
}

/// A tokenised SFT example.
#[derive(Debug, Clone)]
pub struct SftItem {
    pub id: String,
    pub seq: Sequence,
}

/// A tokenised DPO pair; `index` is its position in the dataset file (reference-cache index).
#[derive(Debug, Clone)]
pub struct DpoItem {
    pub id: String,
    pub index: usize,
    pub chosen: Sequence,
    pub rejected: Sequence,
}

pub fn tokenize_sft(
    tok: &dyn ChatTokenizer,
    recs: &[SftRecord],
    max_seq_len: usize,
) -> Result<Vec<SftItem>> {
    recs.iter()
        .map(|r| {
            Ok(SftItem {
                id: r.id.clone(),
                seq: tokenize_pair(
                    tok,
                    &r.prompt,
                    &r.completion,
                    r.completion_ids.as_deref(),
                    r.completion_truncated,
                    max_seq_len,
                    &format!("record {} completion", r.id),
                )?,
            })
        })
        .collect()
}

pub fn tokenize_dpo(
    tok: &dyn ChatTokenizer,
    recs: &[DpoRecord],
    max_seq_len: usize,
) -> Result<Vec<DpoItem>> {
    recs.iter()
        .enumerate()
        .map(|(i, r)| {
            Ok(DpoItem {
                id: r.id.clone(),
                index: i,
                chosen: tokenize_pair(
                    tok,
                    &r.prompt,
                    &r.chosen,
                    r.chosen_ids.as_deref(),
                    r.chosen_truncated,
                    max_seq_len,
                    &format!("record {} chosen", r.id),
                )?,
                rejected: tokenize_pair(
                    tok,
                    &r.prompt,
                    &r.rejected,
                    r.rejected_ids.as_deref(),
                    r.rejected_truncated,
                    max_seq_len,
                    &format!("record {} rejected", r.id),
                )?,
            })
        })
        .collect()
}

/// The splitmix64 finaliser over (seed, stream, index): independent seeds, stable across rand
/// versions unlike `StdRng` streams; used only for seeding.
pub fn mix_seed(seed: u64, stream: u64, index: u64) -> u64 {
    malt_base::mix::finalize(
        seed ^ stream.wrapping_mul(malt_base::mix::GAMMA)
            ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03),
    )
}

pub(crate) const STREAM_SPLIT: u64 = 1;
pub(crate) const STREAM_SHUFFLE: u64 = 2;
pub(crate) const STREAM_DROPOUT: u64 = 3;
pub(crate) const STREAM_INIT: u64 = 4;

/// `(train, eval)` dataset indices: a seeded permutation, the first `round(n * ratio)` (at
/// least 1 when ratio > 0 and n >= 2, at most n - 1) are eval. Both lists are sorted so the
/// split does not depend on anything but (n, ratio, seed).
pub fn split_indices(n: usize, eval_ratio: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut idx: Vec<usize> = (0..n).collect();
    let n_eval = if eval_ratio > 0.0 && n >= 2 {
        ((n as f64 * eval_ratio).round() as usize).clamp(1, n - 1)
    } else {
        0
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(mix_seed(seed, STREAM_SPLIT, 0));
    idx.shuffle(&mut rng);
    let mut eval = idx[..n_eval].to_vec();
    let mut train = idx[n_eval..].to_vec();
    eval.sort_unstable();
    train.sort_unstable();
    (train, eval)
}

/// The order of `n` training items in `epoch`: a function of (seed, epoch) only, so resuming
/// needs no RNG state.
pub fn epoch_permutation(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(mix_seed(seed, STREAM_SHUFFLE, epoch));
    idx.shuffle(&mut rng);
    idx
}
