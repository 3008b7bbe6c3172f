//! What online training keeps on disk between steps: each step's trees, the metrics lines, and
//! the checkpoints a resume starts from (written whole into a temporary folder, then renamed).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use malt_train::optim::{AdamW, AdamWParams};
use malt_train::PolicyModel;
use malt_tree::Tree;
use serde::{Deserialize, Serialize};

use super::{Role, StepMetrics};

/// Checkpoints kept: the newest and the one before it.
const KEEP_CHECKPOINTS: usize = 2;

#[derive(Debug, Serialize, Deserialize)]
struct CheckpointState {
    /// The last finished step.
    step: u32,
    /// Optimiser steps per trained agent.
    optimizer_steps: BTreeMap<String, u64>,
}

pub(super) fn write_trees(path: &Path, trees: &[Tree]) -> anyhow::Result<()> {
    let mut text = String::new();
    for t in trees {
        text.push_str(&serde_json::to_string(t)?);
        text.push('\n');
    }
    malt_base::atomic::write_atomic(path, text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

pub(super) fn append_metrics(path: &Path, m: &StepMetrics) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    writeln!(f, "{}", serde_json::to_string(m)?)
        .and_then(|()| f.sync_data())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The metrics of every finished step, in step order, each step once as it was last run (a
/// resumed run may have logged a step before and after the interruption).
pub(crate) fn read_metrics(path: &Path) -> anyhow::Result<Vec<StepMetrics>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut steps: BTreeMap<u32, StepMetrics> = BTreeMap::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let m: StepMetrics = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a metrics line", path.display(), i + 1))?;
        steps.insert(m.step, m);
    }
    Ok(steps.into_values().collect())
}

/// Drops the metrics of steps after `step` (written before an interruption lost their
/// checkpoint) and a torn last line; returns the metrics kept.
pub(super) fn keep_metrics_through(path: &Path, step: u32) -> anyhow::Result<Vec<StepMetrics>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("cannot read {}", path.display())))
        }
    };
    let kept: Vec<(&str, StepMetrics)> = text
        .lines()
        .filter_map(|l| Some((l, serde_json::from_str::<StepMetrics>(l).ok()?)))
        .filter(|(_, m)| m.step <= step)
        .collect();
    let kept_text: String = kept.iter().map(|(l, _)| format!("{l}\n")).collect();
    if kept_text != text {
        malt_base::atomic::write_atomic(path, kept_text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(kept.into_iter().map(|(_, m)| m).collect())
}

fn step_dir(root: &Path, step: u32) -> PathBuf {
    root.join(format!("step-{step:08}"))
}

/// `checkpoints/`, in the online folder.
pub(super) const CHECKPOINTS: &str = "checkpoints";

/// A checkpoint folder's adapter of `agent`.
fn adapter_in(checkpoint: &Path, agent: &str) -> PathBuf {
    checkpoint.join(malt_layout::ADAPTERS).join(agent)
}

/// `<online>/checkpoints/step-XXXXXXXX/adapters/<agent>/`: the adapter `agent` had after
/// step `step` (the newest two steps' are kept).
pub fn checkpoint_adapter(online: &Path, step: u32, agent: &str) -> PathBuf {
    adapter_in(&step_dir(&online.join(CHECKPOINTS), step), agent)
}

/// The newest complete checkpoint (a folder is renamed into place only once complete).
pub(super) fn latest_checkpoint(root: &Path) -> anyhow::Result<Option<(u32, PathBuf)>> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("cannot read {}", root.display())))
        }
    };
    Ok(entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let step = e
                .file_name()
                .to_str()?
                .strip_prefix("step-")?
                .parse::<u32>()
                .ok()?;
            e.path()
                .join("state.json")
                .is_file()
                .then(|| (step, e.path()))
        })
        .max_by_key(|(s, _)| *s))
}

pub(super) fn checkpoint(
    roles: &[Role<'_>],
    root: &Path,
    step: u32,
    model_id: &str,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
    let dst = step_dir(root, step);
    let tmp = root.join(format!(".tmp-step-{step:08}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)
            .with_context(|| format!("cannot remove {}", tmp.display()))?;
    }
    let mut state = CheckpointState {
        step,
        optimizer_steps: BTreeMap::new(),
    };
    for role in roles {
        if let Some((adapter, optimizer, _)) = &role.trained {
            role.policy
                .save_adapter(adapter, &adapter_in(&tmp, &role.name), model_id)?;
            let opt = tmp.join("optimizer");
            std::fs::create_dir_all(&opt)
                .with_context(|| format!("cannot create {}", opt.display()))?;
            optimizer.save(&opt.join(format!("{}.safetensors", role.name)))?;
            state
                .optimizer_steps
                .insert(role.name.clone(), optimizer.step_count());
        }
    }
    malt_base::atomic::write_atomic(
        &tmp.join("state.json"),
        serde_json::to_string_pretty(&state)?.as_bytes(),
    )?;
    if dst.exists() {
        std::fs::remove_dir_all(&dst)
            .with_context(|| format!("cannot remove {}", dst.display()))?;
    }
    std::fs::rename(&tmp, &dst)
        .with_context(|| format!("cannot move {} into place", dst.display()))?;
    let mut steps: Vec<(u32, PathBuf)> = std::fs::read_dir(root)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            Some((
                e.file_name()
                    .to_str()?
                    .strip_prefix("step-")?
                    .parse()
                    .ok()?,
                e.path(),
            ))
        })
        .collect();
    steps.sort();
    for (_, p) in steps
        .iter()
        .take(steps.len().saturating_sub(KEEP_CHECKPOINTS))
    {
        std::fs::remove_dir_all(p).with_context(|| format!("cannot remove {}", p.display()))?;
    }
    Ok(())
}

/// Loads every trained agent's adapter and optimiser state from checkpoint `dir`.
pub(super) fn restore(roles: &mut [Role<'_>], dir: &Path) -> anyhow::Result<()> {
    let state: CheckpointState = serde_json::from_str(
        &std::fs::read_to_string(dir.join("state.json"))
            .with_context(|| format!("cannot read {}/state.json", dir.display()))?,
    )
    .with_context(|| format!("{}/state.json", dir.display()))?;
    for role in roles.iter_mut() {
        let Some((adapter, optimizer, _)) = &mut role.trained else {
            continue;
        };
        let Some(&steps) = state.optimizer_steps.get(&role.name) else {
            anyhow::bail!(
                "{}: agent {} trains online but the checkpoint has no state for it (was [online] \
                 train changed?); move {} away to start over",
                dir.display(),
                role.name,
                dir.parent().unwrap_or(dir).display()
            );
        };
        *adapter = role
            .policy
            .load_adapter(&adapter_in(dir, &role.name), &role.name)?;
        let mut fresh = AdamW::new(adapter.named_vars(), AdamWParams::default())?;
        fresh.load(
            &dir.join("optimizer")
                .join(format!("{}.safetensors", role.name)),
            steps,
        )?;
        *optimizer = fresh;
    }
    Ok(())
}
