//! Run tracking beside the JSONL and SVG outputs: TensorBoard event files. Training phases write
//! theirs as they go (malt-train's metrics log, `<run>/train/<agent>/<phase>/`); this module
//! writes the run's config as text (`<run>/`, run "." in TensorBoard) and each evaluation report
//! as scalars (`<run>/eval/`). `tensorboard --logdir runs/<name>` shows them all.

use std::path::Path;

use malt_base::tfevents::{config_markdown, EventFile};
use malt_eval::Report;

/// The config text as TensorBoard text (tag `config`), replacing the run's earlier one.
pub fn write_config(run_dir: &Path, config_text: &str) -> std::io::Result<()> {
    let mut f = EventFile::create(run_dir)?;
    f.text("config", 0, &config_markdown(config_text))?;
    f.flush()
}

/// An evaluation report as scalars, in `dir`: per system (`single`, `single_mv3`,
/// `trained_chain`, ...) `accuracy/<system>` at each seed's step (the seed) and
/// `accuracy_mean/<system>` at step 0; per chain turn `turn_accuracy/<system>` at the turn's
/// index (attempt 0, mean over seeds).
pub fn write_report(dir: &Path, report: &Report, config_text: &str) -> std::io::Result<()> {
    let mut f = EventFile::create(dir)?;
    f.text("config", 0, &config_markdown(config_text))?;
    for s in &report.systems {
        for seed in &s.per_seed {
            let step = i64::try_from(seed.seed).unwrap_or(i64::MAX);
            f.scalar(&format!("accuracy/{}", s.id), step, seed.accuracy_pct)?;
        }
        f.scalar(&format!("accuracy_mean/{}", s.id), 0, s.mean_pct)?;
    }
    for v in &report.per_turn {
        for t in &v.turns {
            if let Some(a) = &t.accuracy {
                f.scalar(
                    &format!("turn_accuracy/{}", v.system),
                    t.turn as i64,
                    a.mean_pct,
                )?;
            }
        }
    }
    f.flush()
}
