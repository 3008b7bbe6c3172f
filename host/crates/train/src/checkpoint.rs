//! Checkpoints: `<out>/checkpoints/step-XXXXXXXX/` holding
//! `adapter/` (PEFT), `optimizer.safetensors` (`m.<var>`, `v.<var>`) and `state.json`
//! (`TrainerState`). Each is written into `.tmp-step-XXXXXXXX` and renamed into place, so a
//! directory named `step-*` is always complete; a kill mid-write leaves only a `.tmp-*` that the
//! next save removes.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// Newest checkpoints kept (older ones are deleted after a successful save).
pub const KEEP_CHECKPOINTS: usize = 2;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    pub format: u32,
    pub agent: String,
    pub phase: String,
    /// Completed optimiser steps (= AdamW step count = schedule position).
    pub step: u64,
    pub total_steps: u64,
    pub steps_per_epoch: u64,
    /// Data position of the next step: epoch and step-within-epoch. The order inside an epoch is
    /// `epoch_permutation(n_train, seed, epoch)`, so this is all the data state there is.
    pub next_epoch: u64,
    pub next_batch_in_epoch: u64,
    /// Learning rate of the next step.
    pub next_lr: f64,
    /// RNG state: every random stream (split, shuffles, dropout, init) is derived statelessly
    /// from this seed and (epoch | step, micro-batch), so the seed is the whole RNG state.
    pub seed: u64,
    pub rng: String,
    /// Hash of dataset + settings + tokenizer + init adapter: resume refuses a different run.
    pub fingerprint: String,
    pub tokens_seen: u64,
    pub last_loss: Option<f64>,
}

pub fn step_dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// The newest complete checkpoint directory and its step.
pub fn latest_checkpoint(ckpt_root: &Path) -> Result<Option<(u64, PathBuf)>> {
    let rd = match std::fs::read_dir(ckpt_root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(TrainError::io(ckpt_root, e)),
    };
    let mut best: Option<(u64, PathBuf)> = None;
    for ent in rd {
        let ent = ent.map_err(|e| TrainError::io(ckpt_root, e))?;
        let name = ent.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_prefix("step-")
            .and_then(|s| s.parse::<u64>().ok())
        {
            if best.as_ref().is_none_or(|(b, _)| n > *b) {
                best = Some((n, ent.path()));
            }
        }
    }
    Ok(best)
}

/// Writes a checkpoint atomically; `fill` writes the files into the temp directory.
pub fn write_checkpoint(
    ckpt_root: &Path,
    state: &TrainerState,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    std::fs::create_dir_all(ckpt_root).map_err(|e| TrainError::io(ckpt_root, e))?;
    let name = step_dir_name(state.step);
    let tmp = ckpt_root.join(format!(".tmp-{name}"));
    let dst = ckpt_root.join(&name);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    fill(&tmp)?;
    let sp = tmp.join("state.json");
    std::fs::write(&sp, serde_json::to_string_pretty(state)?)
        .map_err(|e| TrainError::io(&sp, e))?;
    if dst.exists() {
        std::fs::remove_dir_all(&dst).map_err(|e| TrainError::io(&dst, e))?;
    }
    std::fs::rename(&tmp, &dst).map_err(|e| TrainError::io(&dst, e))?;
    prune(ckpt_root)?;
    Ok(dst)
}

fn prune(ckpt_root: &Path) -> Result<()> {
    let mut steps: Vec<(u64, PathBuf)> = std::fs::read_dir(ckpt_root)
        .map_err(|e| TrainError::io(ckpt_root, e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e
                .file_name()
                .to_string_lossy()
                .strip_prefix("step-")?
                .parse()
                .ok()?;
            Some((n, e.path()))
        })
        .collect();
    steps.sort();
    let excess = steps.len().saturating_sub(KEEP_CHECKPOINTS);
    for (_, p) in steps.into_iter().take(excess) {
        std::fs::remove_dir_all(&p).map_err(|e| TrainError::io(&p, e))?;
    }
    Ok(())
}

pub fn read_state(dir: &Path) -> Result<TrainerState> {
    let p = dir.join("state.json");
    let text = std::fs::read_to_string(&p).map_err(|e| TrainError::io(&p, e))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
        path: p,
        msg: e.to_string(),
    })
}

/// Replaces directory `dst` by the one `fill` writes, atomically (temp sibling + rename).
pub fn write_dir_atomic(dst: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = dst.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| TrainError::io(parent, e))?;
    let name = dst
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let tmp = parent.join(format!(".tmp-{name}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    fill(&tmp)?;
    if dst.exists() {
        std::fs::remove_dir_all(dst).map_err(|e| TrainError::io(dst, e))?;
    }
    std::fs::rename(&tmp, dst).map_err(|e| TrainError::io(dst, e))
}
